/* The time of one bind() (B11b): `binds NAME N PORT` makes a TCP socket
 * with SO_REUSEADDR N times, times its bind() to 127.0.0.1:PORT and closes
 * it. Run as root binding itself, and as nobody under
 * `sockpass run --catch-bind`, where each bind is caught and answered with
 * a socket from the broker.
 * Prints: RESULT NAME median_ns=.. p99_ns=.. n=.. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "samples.h"

int main(int argc, char **argv) {
  if (argc != 4 || atol(argv[2]) <= 0) {
    fprintf(stderr, "usage: binds NAME N PORT\n");
    return 2;
  }
  size_t n = (size_t)atol(argv[2]);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[3]))};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  uint64_t *s = malloc(n * sizeof *s);
  if (!s) return 1;
  for (size_t i = 0; i < n; i++) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    if (fd < 0) return 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    uint64_t t0 = now_ns();
    int r = bind(fd, (struct sockaddr *)&a, sizeof a);
    s[i] = now_ns() - t0;
    if (r != 0) {
      fprintf(stderr, "binds: bind to port %s: %s\n", argv[3], strerror(errno));
      return 1;
    }
    close(fd);
  }
  report(argv[1], s, n);
  return 0;
}
