/* Time whole processes: `spawnwait NAME N PORT PROGRAM [ARGS...]` runs
 * PROGRAM N times, each time (if PORT > 0) connecting to 127.0.0.1:PORT
 * until it accepts the connection attempt (systemd-socket-activate starts
 * its program on the first one), and waits for it to exit.
 * Prints: RESULT NAME median_ns=.. p99_ns=.. n=.. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "samples.h"

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: spawnwait NAME N PORT PROGRAM [ARGS...]\n");
    return 2;
  }
  struct rlimit r;
  if (getrlimit(RLIMIT_NOFILE, &r) == 0) { r.rlim_cur = r.rlim_max; setrlimit(RLIMIT_NOFILE, &r); }
  size_t n = atol(argv[2]);
  int port = atoi(argv[3]);
  uint64_t *s = malloc(n * sizeof *s);
  for (size_t i = 0; i < n; i++) {
    uint64_t t0 = now_ns();
    pid_t pid = fork();
    if (pid == 0) {
      execvp(argv[4], argv + 4);
      _exit(127);
    }
    if (port > 0) {
      struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      for (;;) {
        int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int ok = connect(c, (struct sockaddr *)&a, sizeof a) == 0;
        close(c);
        if (ok) break;
        if (waitpid(pid, NULL, WNOHANG) == pid) { fprintf(stderr, "spawnwait: %s exited before listening\n", argv[4]); return 1; }
      }
    }
    int st;
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st)) {
      fprintf(stderr, "spawnwait: %s failed (status %d)\n", argv[4], st);
      return 1;
    }
    s[i] = now_ns() - t0;
  }
  report(argv[1], s, n);
  return 0;
}
