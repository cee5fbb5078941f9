/* Time from start to first HTTP answer (B11): `firstanswer NAME N PORT
 * PROGRAM [ARGS...]` starts PROGRAM N times, each in a process group of its
 * own, and times from fork to the first `200` answer to `GET /` on
 * 127.0.0.1:PORT (connecting again every 0.2 ms while nothing listens); then SIGTERMs
 * the group, reaps PROGRAM and waits until the group is gone (SIGKILL
 * after 10 s). Each start waits first (up to 10 s) until nothing listens
 * on the port.
 * Prints: RESULT NAME median_ns=.. p99_ns=.. n=.. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "samples.h"

static struct sockaddr_in addr;

/* 1 when a 200 answer came, 0 when nothing answers yet. */
static int ask(void) {
  int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (c < 0) return 0;
  int ok = 0;
  if (connect(c, (struct sockaddr *)&addr, sizeof addr) == 0) {
    static const char req[] = "GET / HTTP/1.0\r\nHost: bench\r\n\r\n";
    char buf[64];
    struct pollfd p = {.fd = c, .events = POLLIN};
    ssize_t n;
    /* Accepted by the kernel before the program accepts: wait for it. */
    if (send(c, req, sizeof req - 1, MSG_NOSIGNAL) == (ssize_t)(sizeof req - 1) && poll(&p, 1, 10000) == 1 &&
        (n = recv(c, buf, sizeof buf, 0)) >= 12)
      ok = memcmp(buf + 9, "200", 3) == 0;
  }
  close(c);
  return ok;
}

/* Whether something listens on the port: a bind with SO_REUSEADDR fails
 * only then (connections in TIME_WAIT do not stop it). */
static int listened(void) {
  int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  int busy = bind(s, (struct sockaddr *)&addr, sizeof addr) != 0;
  close(s);
  return busy;
}

static void sleep_ms(long ms) {
  struct timespec d = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
  nanosleep(&d, NULL);
}

/* Wait until nothing listens on the port; 0 on success. */
static int port_free(void) {
  for (int i = 0; listened(); i++) {
    if (i > 1000) {
      fprintf(stderr, "firstanswer: port %d still listened on after 10 s\n", ntohs(addr.sin_port));
      return -1;
    }
    sleep_ms(10);
  }
  return 0;
}

/* SIGTERM the group, reap `pid`, wait for the group to be gone. 0 on
 * success. */
static int stop(pid_t pid) {
  kill(-pid, SIGTERM);
  int st;
  for (int i = 0; waitpid(pid, &st, WNOHANG) != pid; i++) {
    if (i == 1000) kill(-pid, SIGKILL);
    sleep_ms(10);
  }
  for (int i = 0; kill(-pid, 0) == 0; i++) {
    if (i == 1000) kill(-pid, SIGKILL);
    if (i > 2000) return -1;
    sleep_ms(10);
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: firstanswer NAME N PORT PROGRAM [ARGS...]\n");
    return 2;
  }
  size_t n = (size_t)atol(argv[2]);
  addr.sin_family = AF_INET;
  addr.sin_port = htons((uint16_t)atoi(argv[3]));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (n == 0) return 2;
  uint64_t *s = malloc(n * sizeof *s);
  for (size_t i = 0; i < n; i++) {
    if (port_free()) return 1;
    uint64_t t0 = now_ns();
    pid_t pid = fork();
    if (pid == 0) {
      setpgid(0, 0);
      execvp(argv[4], argv + 4);
      _exit(127);
    }
    setpgid(pid, pid);
    int up = 0;
    while (!(up = ask())) {
      if (waitpid(pid, NULL, WNOHANG) == pid) break;
      if (now_ns() - t0 > 60000000000ull) break;
      /* Not a busy loop: the program starting shares the CPUs. */
      struct timespec d = {.tv_nsec = 200000};
      nanosleep(&d, NULL);
    }
    s[i] = now_ns() - t0;
    if (!up) {
      fprintf(stderr, "firstanswer: %s gave no answer on port %d\n", argv[4], ntohs(addr.sin_port));
      stop(pid);
      return 1;
    }
    if (stop(pid)) return 1;
  }
  report(argv[1], s, n);
  return 0;
}
