/* Timing samples shared by the benchmark programs: a monotonic clock in ns,
 * and the RESULT line of a set of samples (median, 99th percentile). */
#ifndef SOCKPASS_BENCH_SAMPLES_H
#define SOCKPASS_BENCH_SAMPLES_H

/* unused: not every program that includes this calls everything. */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static __attribute__((unused)) uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static __attribute__((unused)) int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* Sorts `s`. Prints: RESULT NAME median_ns=.. p99_ns=.. n=.. */
static __attribute__((unused)) void report(const char *name, uint64_t *s, size_t n) {
  qsort(s, n, sizeof *s, cmp_u64);
  size_t p99 = n * 99 / 100;
  if (p99 >= n) p99 = n - 1;
  printf("RESULT %s median_ns=%llu p99_ns=%llu n=%zu\n", name,
         (unsigned long long)s[n / 2], (unsigned long long)s[p99], n);
  fflush(stdout);
}

#endif
