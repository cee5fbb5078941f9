/* The B5 client's loop, for counting the pages and cache lines one
 * request touches (benches/pages/run): a cached request, close, and
 * release_many every 1,000, with a store to a marker page between
 * requests so that the trace can be cut into requests. With "floor" the
 * floor's client instead (B5f: a 1-byte request, one fd back by
 * SCM_RIGHTS from a forked server). Prints the marker's address. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "fdmsg.h"
#include "samples.h"
#include "sockpass.h"

static volatile char marker[8192] __attribute__((aligned(4096)));
static char tok[1000][SOCKPASS_TOKEN_SIZE];

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: loop SOCK PORT N | loop floor - N\n");
    return 2;
  }
  int n = atoi(argv[3]);
  uint64_t t = 0;
  if (!strcmp(argv[1], "floor")) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv)) return 1;
    if (fork() == 0) {
      close(sv[0]);
      int h = socket(AF_INET, SOCK_DGRAM, 0);
      char b;
      while (recv(sv[1], &b, 1, 0) == 1) send_fd(sv[1], h);
      _exit(0);
    }
    close(sv[1]);
    for (int i = 0; i < n; i++) {
      marker[4096] = 1;
      t += now_ns();
      char r = 'r';
      if (send(sv[0], &r, 1, 0) != 1) return 1;
      close(recv_fd(sv[0]));
    }
  } else {
    sockpass_client *c = NULL;
    if (sockpass_client_new(argv[1], &c)) return 1;
    int port = atoi(argv[2]);
    size_t held = 0;
    for (int i = 0; i < n; i++) {
      marker[4096] = 1;
      t += now_ns();
      int fd = sockpass_client_request_socket(c, SOCKPASS_PROTO_UDP, "127.0.0.1", port,
                                              SOCKPASS_SHARE_ANY, "bench", tok[held],
                                              SOCKPASS_TOKEN_SIZE);
      if (fd < 0) return 1;
      close(fd);
      if (++held == 1000) {
        static const char *p[1000];
        for (size_t j = 0; j < held; j++) p[j] = tok[j];
        sockpass_client_release_many(c, p, held, NULL);
        held = 0;
      }
    }
    sockpass_client_free(c);
  }
  printf("%llu %p\n", (unsigned long long)t, (void *)&marker[4096]);
  return 0;
}
