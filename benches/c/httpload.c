/* A small HTTP/1.1 load generator (B11): `httpload NAME PORT CONNS SECONDS`
 * runs CONNS threads against 127.0.0.1:PORT, each on its own keep-alive
 * connection sending `GET /` and reading the whole answer (headers and a
 * Content-Length body) before the next, for SECONDS, once a first `200`
 * answer came (waited for up to 30 s: the server may be starting); a
 * connection the server closes is opened again (counted).
 * Prints: RESULT NAME ops_per_s=.. n=.. conns=.. reconnects=.. errors=..
 * Exits 1 when no answer came or a thread met an error it cannot go on
 * from (a refused connection, a non-200 answer). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int port;
static atomic_int stop;

struct worker {
  pthread_t t;
  uint64_t done, reconnects, errors;
};

static int dial(void) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (c < 0) return -1;
  int one = 1;
  setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  /* A bounded wait on each answer, so a wedged server ends the run. */
  struct timeval tv = {.tv_sec = 10};
  setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (connect(c, (struct sockaddr *)&a, sizeof a) != 0) {
    close(c);
    return -1;
  }
  return c;
}

/* One answer on `c`: 1 for a 200, 0 when the server closed the connection
 * before answering, -1 otherwise (one request is outstanding at a time, so
 * nothing past the answer is read). */
static int answer(int c) {
  char buf[16384];
  size_t have = 0;
  char *end = NULL;
  while (!end) {
    if (have == sizeof buf) return -1;
    ssize_t n = recv(c, buf + have, sizeof buf - have, 0);
    if (n == 0 && have == 0) return 0;
    if (n <= 0) return -1;
    have += (size_t)n;
    end = memmem(buf, have, "\r\n\r\n", 4);
  }
  size_t head = (size_t)(end - buf) + 4;
  if (have < 12 || memcmp(buf + 9, "200", 3) != 0) return -1;
  long body = 0;
  char *cl = memmem(buf, head, "\r\nContent-Length:", 17);
  if (cl) body = strtol(cl + 17, NULL, 10);
  long left = body - (long)(have - head);
  while (left > 0) {
    ssize_t n = recv(c, buf, sizeof buf < (size_t)left ? sizeof buf : (size_t)left, 0);
    if (n <= 0) return -1;
    left -= n;
  }
  return 1;
}

static void *run(void *arg) {
  struct worker *w = arg;
  static const char req[] = "GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
  int c = dial();
  while (c >= 0 && !atomic_load_explicit(&stop, memory_order_relaxed)) {
    int r = send(c, req, sizeof req - 1, MSG_NOSIGNAL) == (ssize_t)(sizeof req - 1) ? answer(c) : 0;
    if (r == 1) {
      w->done++;
      continue;
    }
    close(c);
    if (r < 0) {
      w->errors++;
      return NULL;
    }
    w->reconnects++;
    c = dial();
  }
  if (c < 0) w->errors++;
  else close(c);
  return NULL;
}

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: httpload NAME PORT CONNS SECONDS\n");
    return 2;
  }
  port = atoi(argv[2]);
  int conns = atoi(argv[3]);
  double secs = atof(argv[4]);
  if (port <= 0 || conns <= 0 || secs <= 0) {
    fprintf(stderr, "httpload: PORT, CONNS and SECONDS must be positive\n");
    return 2;
  }
  double up = now_s();
  for (;;) {
    int c = dial(), ok = 0;
    if (c >= 0) {
      static const char req[] = "GET / HTTP/1.0\r\nHost: bench\r\n\r\n";
      ok = send(c, req, sizeof req - 1, MSG_NOSIGNAL) == (ssize_t)(sizeof req - 1) && answer(c) == 1;
      close(c);
    }
    if (ok) break;
    if (now_s() - up > 30) {
      fprintf(stderr, "httpload: no answer on port %d within 30 s\n", port);
      return 1;
    }
    struct timespec d = {.tv_nsec = 1000000};
    nanosleep(&d, NULL);
  }
  struct worker *ws = calloc((size_t)conns, sizeof *ws);
  double t0 = now_s();
  for (int i = 0; i < conns; i++) pthread_create(&ws[i].t, NULL, run, &ws[i]);
  struct timespec d = {.tv_sec = (time_t)secs, .tv_nsec = (long)((secs - (time_t)secs) * 1e9)};
  nanosleep(&d, NULL);
  atomic_store(&stop, 1);
  uint64_t done = 0, rec = 0, err = 0;
  for (int i = 0; i < conns; i++) {
    pthread_join(ws[i].t, NULL);
    done += ws[i].done;
    rec += ws[i].reconnects;
    err += ws[i].errors;
  }
  double el = now_s() - t0;
  if (done == 0 || err) {
    fprintf(stderr, "httpload: %llu answers, %llu errors\n", (unsigned long long)done,
            (unsigned long long)err);
    return 1;
  }
  printf("RESULT %s ops_per_s=%.0f n=%llu conns=%d reconnects=%llu errors=%llu\n", argv[1],
         (double)done / el, (unsigned long long)done, conns, (unsigned long long)rec,
         (unsigned long long)err);
  return 0;
}
