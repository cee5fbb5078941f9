/* The cost of a syscall that is not bind() (B11s): `syscalls NAME BLOCKS`
 * times BLOCKS blocks of 10,000 getppid() calls (by syscall(2): libc may
 * cache others) and prints the median and p99 of the time a call, from the
 * blocks. Run plain and under `sockpass run --catch-bind`, whose seccomp
 * filter every syscall of the program passes.
 * Prints: RESULT NAME median_ns=.. p99_ns=.. n=BLOCKS */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "samples.h"

enum { CALLS = 10000 };

int main(int argc, char **argv) {
  if (argc != 3 || atol(argv[2]) <= 0) {
    fprintf(stderr, "usage: syscalls NAME BLOCKS\n");
    return 2;
  }
  size_t n = (size_t)atol(argv[2]);
  uint64_t *s = malloc(n * sizeof *s);
  if (!s) return 1;
  for (int i = 0; i < CALLS; i++) syscall(SYS_getppid); /* warm-up */
  for (size_t b = 0; b < n; b++) {
    uint64_t t0 = now_ns();
    for (int i = 0; i < CALLS; i++) syscall(SYS_getppid);
    /* In ns a call, rounded: a block is 10,000 calls. */
    s[b] = (now_ns() - t0 + CALLS / 2) / CALLS;
  }
  report(argv[1], s, n);
  return 0;
}
