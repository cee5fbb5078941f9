/* sockpass benchmark client. Every sockpass measurement goes through the
 * public C API (sockpass.h); the s6 ones through s6_fdholder_* (libs6).
 * Each latency mode prints one line:
 *   RESULT <name> median_ns=<m> p99_ns=<p> n=<n>
 * and throughput mode prints: RESULT <name> ops_per_s=<x> clients=<k>
 * Usage: bench MODE ARGS... (see main). */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <liburing.h>
#include <sockpass.h>
#include <s6/fdholder.h>
#include <skalibs/tai.h>

#include "samples.h"
#include "fdmsg.h"

static void die(const char *what, int code) {
  fprintf(stderr, "bench: %s: %d (%s) %s\n", what, code,
          code < 0 ? sockpass_strerror(code) : strerror(code),
          code < 0 ? sockpass_last_error_message() : "");
  exit(1);
}

static void raise_nofile(void) {
  struct rlimit r;
  if (getrlimit(RLIMIT_NOFILE, &r) == 0) {
    r.rlim_cur = r.rlim_max;
    setrlimit(RLIMIT_NOFILE, &r);
  }
}

/* Fork a server child that dies with this process: a bench that exits on
 * an error leaves no server behind. */
static pid_t fork_server(void) {
  pid_t parent = getpid(), pid = fork();
  if (pid < 0) die("fork", errno);
  if (pid == 0 && (prctl(PR_SET_PDEATHSIG, SIGKILL) || getppid() != parent)) _exit(1);
  return pid;
}

/* A connected SOCK_SEQPACKET client of the unix socket at `a`. */
static int connect_un(const struct sockaddr_un *a) {
  int c = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (c < 0 || connect(c, (const struct sockaddr *)a, sizeof *a)) die("connect", errno);
  return c;
}

/* A listening SOCK_SEQPACKET socket at /tmp/sockpass-TAG.PID, its address
 * in *a (a floor server's; the bench unlinks it when done). */
static int listen_tmp(struct sockaddr_un *a, const char *tag, int flags, int backlog) {
  memset(a, 0, sizeof *a);
  a->sun_family = AF_UNIX;
  snprintf(a->sun_path, sizeof a->sun_path, "/tmp/sockpass-%s.%d", tag, (int)getpid());
  unlink(a->sun_path);
  int l = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | flags, 0);
  if (l < 0 || bind(l, (struct sockaddr *)a, sizeof *a) || listen(l, backlog)) die("listen", errno);
  return l;
}

/* The fd every server here hands over, s6's stored one included: a UDP
 * socket, as the one sockpassd caches for the benchmarks. */
static int handed_fd(void) {
  int u = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (u < 0) die("socket", errno);
  return u;
}

/* ---- B1: the floor. A forked server answers each 1-byte request with one
 * fd by SCM_RIGHTS over a SEQPACKET socketpair; the client closes it. */
/* The floor's server: a forked process answering each 1-byte request on a
 * SOCK_SEQPACKET socketpair with one fd. With `epoll` it first waits in
 * epoll_wait, as an event-loop broker must (B1e): what that costs is the part
 * of B2 - B1 no broker with one loop for many clients can avoid. Returns the
 * client's end. */
static int floor_server(int epoll, pid_t *pid) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv)) die("socketpair", errno);
  *pid = fork_server();
  if (*pid == 0) {
    close(sv[0]);
    int u = handed_fd(), ep = -1;
    struct epoll_event ev = {.events = EPOLLIN}, got[16];
    if (epoll && ((ep = epoll_create1(EPOLL_CLOEXEC)) < 0 ||
                  epoll_ctl(ep, EPOLL_CTL_ADD, sv[1], &ev)))
      _exit(1);
    char b;
    for (;;) {
      if (epoll && epoll_wait(ep, got, 16, -1) < 0 && errno != EINTR) break;
      if (recv(sv[1], &b, 1, 0) != 1 || send_fd(sv[1], u)) break;
    }
    _exit(0);
  }
  close(sv[1]);
  return sv[0];
}

/* B1u and B5u: the floor with an io_uring server, the other design an
 * event-loop broker could take. Each turn is one io_uring_enter: it submits
 * the replies (sendmsg with one fd; a success posts no completion) and the
 * next receives, and waits for a request. The epoll floor takes three
 * syscalls a request (epoll_wait, recv, sendmsg); this one takes one. */
static int uring_init(struct io_uring *r, unsigned entries) {
  int e = io_uring_queue_init(entries, r, IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN);
  if (e == -EINVAL) e = io_uring_queue_init(entries, r, 0); /* before Linux 6.1 */
  return e;
}

/* 0 if io_uring works here (it may be disabled by sysctl or seccomp). */
static int uring_probe(void) {
  struct io_uring r;
  int e = uring_init(&r, 8);
  if (e == 0) io_uring_queue_exit(&r);
  return e;
}

static struct io_uring_sqe *uring_sqe(struct io_uring *r) {
  struct io_uring_sqe *q = io_uring_get_sqe(r);
  if (!q) { /* the queue is full: submit what is in it */
    io_uring_submit(r);
    q = io_uring_get_sqe(r);
  }
  if (!q) _exit(4);
  return q;
}

#define URING_ACCEPT (1ULL << 40)
#define URING_SENT (1ULL << 41)

/* Serve 1-byte requests, each with one fd (u), on the connection `conn`
 * (until it hangs up) or on every connection accepted from `l` (until
 * killed). The server only counts requests, so all receives share one byte. */
static void uring_serve(int l, int conn, int u) {
  struct io_uring r;
  if (uring_init(&r, 4096)) _exit(3);
  static char in;
  struct fd_msg reply; /* the same reply for all, for as long as the ring lives */
  fd_msg_init(&reply, "x", 1, u);
  struct io_uring_sqe *q;
  if (l >= 0) {
    q = uring_sqe(&r);
    io_uring_prep_multishot_accept(q, l, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(q, URING_ACCEPT);
  }
  if (conn >= 0) {
    q = uring_sqe(&r);
    io_uring_prep_recv(q, conn, &in, 1, 0);
    io_uring_sqe_set_data64(q, conn);
  }
  for (int done = 0; !done;) {
    int e = io_uring_submit_and_wait(&r, 1);
    if (e < 0 && e != -EINTR) _exit(5);
    struct io_uring_cqe *cq;
    unsigned head, seen = 0;
    io_uring_for_each_cqe(&r, head, cq) {
      seen++;
      uint64_t d = cq->user_data;
      int fd = (int)d;
      if (d == URING_SENT) continue; /* a failed reply: its receive says why */
      if (d == URING_ACCEPT) {
        if (!(cq->flags & IORING_CQE_F_MORE)) { /* multishot ended: again */
          q = uring_sqe(&r);
          io_uring_prep_multishot_accept(q, l, NULL, NULL, SOCK_CLOEXEC);
          io_uring_sqe_set_data64(q, URING_ACCEPT);
        }
        if ((fd = cq->res) < 0) continue;
        struct ucred cr; /* as the B3f server: a broker knows its clients */
        socklen_t cl = sizeof cr;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl)) { close(fd); continue; }
      } else if (cq->res <= 0) {
        close(fd);
        done = fd == conn;
        continue;
      } else {
        q = uring_sqe(&r);
        io_uring_prep_sendmsg(q, fd, &reply.m, MSG_NOSIGNAL);
        q->flags |= IOSQE_CQE_SKIP_SUCCESS;
        io_uring_sqe_set_data64(q, URING_SENT);
      }
      q = uring_sqe(&r);
      io_uring_prep_recv(q, fd, &in, 1, 0);
      io_uring_sqe_set_data64(q, (uint64_t)fd);
    }
    io_uring_cq_advance(&r, seen);
  }
  io_uring_queue_exit(&r);
}

/* The B1u server on a socketpair; the client's end, -1 if io_uring does
 * not work here. */
static int uring_floor_server(pid_t *pid) {
  int e = uring_probe();
  if (e) {
    fprintf(stderr, "bench: io_uring: %s: the io_uring floor is not measured\n", strerror(-e));
    return -1;
  }
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv)) die("socketpair", errno);
  *pid = fork_server();
  if (*pid == 0) {
    close(sv[0]);
    uring_serve(-1, sv[1], handed_fd());
    _exit(0);
  }
  close(sv[1]);
  return sv[0];
}

static void floor_bench(size_t n) {
  pid_t pid;
  int fl = floor_server(0, &pid);
  uint64_t *s = malloc(n * sizeof *s);
  for (size_t i = 0; i < n + n / 10; i++) {
    uint64_t t0 = now_ns();
    char b = 'r';
    if (send(fl, &b, 1, 0) != 1) die("send", errno);
    int fd = recv_fd(fl);
    if (fd < 0) die("recv_fd", errno);
    close(fd);
    uint64_t t1 = now_ns();
    if (i >= n / 10) s[i - n / 10] = t1 - t0; /* first 10% warm up */
  }
  close(fl);
  waitpid(pid, NULL, 0);
  report("B1_floor", s, n);
}

/* ---- Same CPU and across CPUs (issue 25 item 4): B1e's floor with its
 * server pinned to CPU `scpu` (the client stays where taskset put it);
 * with `spin_us` the client first polls for the reply (recvmsg
 * MSG_DONTWAIT, sched_yield between tries) for up to that long, as the
 * library's clients do with SOCKPASS_SPIN_US. */
static void xcpu_floor(int scpu, size_t n, int spin_us, const char *name) {
  pid_t pid;
  cpu_set_t mine, srv;
  if (sched_getaffinity(0, sizeof mine, &mine)) die("sched_getaffinity", errno);
  CPU_ZERO(&srv);
  CPU_SET(scpu, &srv);
  /* the forked server inherits the CPU it is to run on */
  if (sched_setaffinity(0, sizeof srv, &srv)) die("sched_setaffinity", errno);
  int fl = floor_server(1, &pid);
  if (sched_setaffinity(0, sizeof mine, &mine)) die("sched_setaffinity", errno);
  uint64_t *s = malloc(n * sizeof *s);
  for (size_t i = 0; i < n + n / 10; i++) {
    uint64_t t0 = now_ns();
    char b = 'r';
    ssize_t got = -1;
    int fd = -1;
    if (send(fl, &b, 1, 0) != 1) die("send", errno);
    while (spin_us > 0) {
      fd = recv_msg_fd(fl, &b, 1, &got, MSG_DONTWAIT);
      if (got >= 0 || errno != EAGAIN || now_ns() - t0 >= (uint64_t)spin_us * 1000) break;
      sched_yield();
    }
    if (got < 0) fd = recv_msg_fd(fl, &b, 1, &got, 0);
    if (fd < 0 || got != 1) die("xcpu recv", errno);
    close(fd);
    if (i >= n / 10) s[i - n / 10] = now_ns() - t0;
  }
  close(fl);
  waitpid(pid, NULL, 0);
  report(name, s, n);
}

/* ---- in-process socket()+setsockopt()+bind() (B4's comparison) */
static void inproc_bench(size_t n) {
  uint64_t *s = malloc(n * sizeof *s);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  for (size_t i = 0; i < n; i++) {
    uint64_t t0 = now_ns();
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&a, sizeof a)) die("bind", errno);
    uint64_t t1 = now_ns();
    close(fd);
    s[i] = t1 - t0;
  }
  report("inproc_socket_bind", s, n);
}

/* ---- sockpass */
static sockpass_client *sp_connect(const char *path) {
  sockpass_client *c;
  int r = sockpass_client_new(path, &c);
  if (r) die("sockpass_client_new", r);
  return c;
}

/* Populate `count` cached sockets on 127.0.0.1 from `base` (ports already in
 * use by others are skipped); the fds are closed, the references kept. */
static int populate(sockpass_client *c, int base, int count) {
  int got = 0;
  for (int p = base; got < count && p < 65536; p++) {
    int fd = sockpass_client_request_socket(c, SOCKPASS_PROTO_UDP, "127.0.0.1", p,
                                            SOCKPASS_SHARE_ANY, "bench", NULL, 0);
    if (fd == -EADDRINUSE) continue;
    if (fd < 0) die("populate", fd);
    close(fd);
    got++;
  }
  return got;
}

#define BATCH 1000
/* B2 (and B6): cached request over a kept connection, client closes the fd.
 * References are released in batches, timed separately as B2r. */
static void sp_kept(const char *path, int port, size_t n, int cached, const char *name) {
  raise_nofile();
  sockpass_client *c = sp_connect(path);
  if (cached > 0) populate(c, port + 1, cached);
  if (cached < 0) { /* B6g: -cached sockets come and go before measuring */
    sockpass_client *p = sp_connect(path);
    populate(p, port + 1, -cached);
    sockpass_client_free(p); /* the broker closes them all */
  }
  static char tok[BATCH][SOCKPASS_TOKEN_SIZE];
  uint64_t *s = malloc(n * sizeof *s), *r = malloc(n * sizeof *r);
  size_t done = 0, rdone = 0;
  /* the socket itself stays cached while this reference lives */
  int keep = sockpass_client_request_socket(c, SOCKPASS_PROTO_UDP, "127.0.0.1", port,
                                            SOCKPASS_SHARE_ANY, "bench", NULL, 0);
  if (keep < 0) die("request", keep);
  close(keep);
  while (done < n) {
    size_t b = n - done < BATCH ? n - done : BATCH;
    for (size_t i = 0; i < b; i++) {
      uint64_t t0 = now_ns();
      int fd = sockpass_client_request_socket(c, SOCKPASS_PROTO_UDP, "127.0.0.1", port,
                                              SOCKPASS_SHARE_ANY, "bench", tok[i],
                                              SOCKPASS_TOKEN_SIZE);
      if (fd < 0) die("request", fd);
      close(fd);
      s[done++] = now_ns() - t0;
    }
    for (size_t i = 0; i < b; i++) {
      uint64_t t0 = now_ns();
      int x = sockpass_client_release(c, tok[i]);
      if (x < 0) die("release", x);
      r[rdone++] = now_ns() - t0;
    }
  }
  report(name, s, n);
  if (cached == 0) report("B2r_release", r, rdone);
  sockpass_client_free(c);
}

/* B3: connect + request + close (the broker drops the reference). */
static void sp_connect_bench(const char *path, int port, size_t n) {
  sockpass_client *holder = sp_connect(path); /* keeps the socket cached */
  int keep = sockpass_client_request_socket(holder, SOCKPASS_PROTO_UDP, "127.0.0.1", port,
                                            SOCKPASS_SHARE_ANY, "bench", NULL, 0);
  if (keep < 0) die("request", keep);
  close(keep);
  uint64_t *s = malloc(n * sizeof *s);
  for (size_t i = 0; i < n; i++) {
    uint64_t t0 = now_ns();
    sockpass_client *c = sp_connect(path);
    int fd = sockpass_client_request_socket(c, SOCKPASS_PROTO_UDP, "127.0.0.1", port,
                                            SOCKPASS_SHARE_ANY, "bench", NULL, 0);
    if (fd < 0) die("request", fd);
    close(fd);
    sockpass_client_free(c);
    s[i] = now_ns() - t0;
  }
  report("B3_connect_request_close", s, n);
  sockpass_client_free(holder);
}

/* B4 (and B6u): uncached request: a socket on 127.0.0.1:PORT that the
 * broker does not hold is created, bound and handed over; released untimed,
 * which closes it, so the next request misses the cache again. */
static void sp_uncached(const char *path, int port, size_t n, int cached, const char *name) {
  raise_nofile();
  sockpass_client *c = sp_connect(path);
  if (cached > 0) populate(c, port + 1, cached);
  uint64_t *s = malloc(n * sizeof *s);
  char tok[SOCKPASS_TOKEN_SIZE];
  for (size_t i = 0; i < n; i++) {
    uint64_t t0 = now_ns();
    int fd = sockpass_client_request_socket(c, SOCKPASS_PROTO_UDP, "127.0.0.1", port,
                                            SOCKPASS_SHARE_NONE, "bench", tok, sizeof tok);
    if (fd < 0) die("request", fd);
    close(fd);
    s[i] = now_ns() - t0;
    int x = sockpass_client_release(c, tok);
    if (x < 0) die("release", x);
  }
  report(name, s, n);
  sockpass_client_free(c);
}

/* B10: batch requests (sockpass_client_request_many). 64 cached sockets in
 * one call, 64 uncached (port 0: each created) in one call, and for
 * comparison the 64 cached ones by 64 single requests; each timed with the
 * closing of its fds, as B2 is; the references are released off the clock. */
#define B10N 64
/* B10f, the floor of B10: a forked server answering each 1-byte request with
 * 64 fds in one SCM_RIGHTS message; the client receives and closes them. */
static int floor64_server(pid_t *pid) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv)) die("socketpair", errno);
  *pid = fork_server();
  if (*pid == 0) {
    close(sv[0]);
    int u = handed_fd(), fds[B10N];
    for (int i = 0; i < B10N; i++) fds[i] = u;
    union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof fds)]; } cm;
    struct iovec iov = {"x", 1};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.buf,
                       .msg_controllen = sizeof cm.buf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(c), fds, sizeof fds);
    char b;
    while (recv(sv[1], &b, 1, 0) == 1 && sendmsg(sv[1], &m, MSG_NOSIGNAL) == 1) {}
    _exit(0);
  }
  close(sv[1]);
  return sv[0];
}

static void floor64_turn(int s) {
  char b = 'r';
  union { struct cmsghdr h; char buf[CMSG_SPACE(B10N * sizeof(int))]; } u;
  struct iovec iov = {&b, 1};
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                     .msg_controllen = sizeof u.buf};
  if (send(s, &b, 1, 0) != 1) die("send", errno);
  if (recvmsg(s, &m, MSG_CMSG_CLOEXEC) != 1 || (m.msg_flags & MSG_CTRUNC)) die("floor64 recv", errno);
  struct cmsghdr *c = CMSG_FIRSTHDR(&m);
  int fds[B10N];
  if (!c || c->cmsg_len != CMSG_LEN(sizeof fds)) die("floor64 fds", EPROTO);
  memcpy(fds, CMSG_DATA(c), sizeof fds);
  for (int i = 0; i < B10N; i++) close(fds[i]);
}

static void batch_bench(const char *path, int base, size_t n) {
  raise_nofile();
  pid_t fpid;
  int fl = floor64_server(&fpid);
  sockpass_client *holder = sp_connect(path), *c = sp_connect(path);
  static char specbuf[B10N][40];
  const char *specs[B10N], *uspecs[B10N];
  int shares[B10N], ushares[B10N], ports[B10N], fds[B10N], got = 0;
  for (int p = base; got < B10N && p < 65536; p++) {
    int fd = sockpass_client_request_socket(holder, SOCKPASS_PROTO_UDP, "127.0.0.1", p,
                                            SOCKPASS_SHARE_ANY, "bench", NULL, 0);
    if (fd == -EADDRINUSE) continue;
    if (fd < 0) die("b10 populate", fd);
    close(fd);
    snprintf(specbuf[got], sizeof specbuf[got], "udp:127.0.0.1:%d", p);
    specs[got] = specbuf[got];
    uspecs[got] = "udp:127.0.0.1:0";
    shares[got] = SOCKPASS_SHARE_ANY;
    ushares[got] = SOCKPASS_SHARE_NONE;
    ports[got++] = p;
  }
  if (got < B10N) die("b10: not enough free ports", -EADDRINUSE);
  size_t warm = n / 10;
  uint64_t *sc = malloc(n * sizeof *sc), *su = malloc(n * sizeof *su), *ss = malloc(n * sizeof *ss);
  uint64_t *sf = malloc(n * sizeof *sf), *si = malloc(n * sizeof *si);
  struct sockaddr_in ia = {.sin_family = AF_INET, .sin_port = 0};
  ia.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  for (size_t i = 0; i < n + warm; i++) {
    uint64_t f0 = now_ns();
    floor64_turn(fl);
    uint64_t t0 = now_ns(), t1, t2, t3;
    int r = sockpass_client_request_many(c, specs, shares, NULL, B10N, fds, NULL, 0);
    if (r != B10N) die("b10 cached batch", r < 0 ? r : -EPROTO);
    for (int j = 0; j < B10N; j++) close(fds[j]);
    t1 = now_ns();
    if ((r = sockpass_client_release_all(c)) != B10N) die("b10 release_all", r < 0 ? r : -EPROTO);
    t2 = now_ns();
    r = sockpass_client_request_many(c, uspecs, ushares, NULL, B10N, fds, NULL, 0);
    if (r != B10N) die("b10 uncached batch", r < 0 ? r : -EPROTO);
    for (int j = 0; j < B10N; j++) close(fds[j]);
    t3 = now_ns();
    if ((r = sockpass_client_release_all(c)) != B10N) die("b10 release_all", r < 0 ? r : -EPROTO);
    /* B10i: what a daemon pays making the 64 sockets itself, as the broker
     * does for the batch above: socket+setsockopt+bind (B4's comparison) 64
     * times in a row, all held; closed untimed. */
    uint64_t i0 = now_ns();
    for (int j = 0; j < B10N; j++) {
      int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
      int one = 1;
      if (fd < 0) die("b10i socket", errno);
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      if (bind(fd, (struct sockaddr *)&ia, sizeof ia)) die("b10i bind", errno);
      fds[j] = fd;
    }
    uint64_t i1 = now_ns();
    for (int j = 0; j < B10N; j++) close(fds[j]);
    uint64_t t4 = now_ns();
    for (int j = 0; j < B10N; j++) {
      int fd = sockpass_client_request_socket(c, SOCKPASS_PROTO_UDP, "127.0.0.1", ports[j],
                                              SOCKPASS_SHARE_ANY, "bench", NULL, 0);
      if (fd < 0) die("b10 single", fd);
      close(fd);
    }
    uint64_t t5 = now_ns();
    if ((r = sockpass_client_release_all(c)) != B10N) die("b10 release_all", r < 0 ? r : -EPROTO);
    if (i >= warm) {
      sc[i - warm] = t1 - t0;
      su[i - warm] = t3 - t2;
      ss[i - warm] = t5 - t4;
      sf[i - warm] = t0 - f0;
      si[i - warm] = i1 - i0;
    }
  }
  close(fl);
  waitpid(fpid, NULL, 0);
  report("B10f_floor_64", sf, n);
  report("B10_cached_64", sc, n);
  report("B10_uncached_64", su, n);
  report("B10s_cached_64_singles", ss, n);
  report("B10i_inproc_64", si, n);
  sockpass_client_free(c);
  sockpass_client_free(holder);
}

/* B7 helper: hold `sockets` cached sockets and `conns` idle connections,
 * print READY, then wait for stdin to close. */
static void hold(const char *path, int base, int sockets, int conns) {
  raise_nofile();
  sockpass_client *c = sp_connect(path);
  int got = populate(c, base, sockets);
  for (int i = 0; i < conns; i++) sp_connect(path);
  printf("READY %d %d\n", got, conns);
  fflush(stdout);
  char b;
  while (read(0, &b, 1) > 0) {}
}

/* ---- s6-fdholder */
static tain deadline;

static void s6_start(s6_fdholder_t *a, const char *path) {
  if (!s6_fdholder_start_g(a, path, &deadline)) die("s6_fdholder_start", errno);
}

static void s6_store(const char *path, const char *id) {
  s6_fdholder_t a = S6_FDHOLDER_ZERO;
  s6_start(&a, path);
  int u = handed_fd();
  if (!s6_fdholder_store_g(&a, u, id, &tain_infinite, &deadline)) die("s6_fdholder_store", errno);
  s6_fdholder_end(&a);
}

static void s6_kept(const char *path, const char *id, size_t n, const char *name) {
  s6_fdholder_t a = S6_FDHOLDER_ZERO;
  s6_start(&a, path);
  uint64_t *s = malloc(n * sizeof *s);
  for (size_t i = 0; i < n + n / 10; i++) {
    uint64_t t0 = now_ns();
    int fd = s6_fdholder_retrieve_g(&a, id, &deadline);
    if (fd < 0) die("s6_fdholder_retrieve", errno);
    close(fd);
    if (i >= n / 10) s[i - n / 10] = now_ns() - t0;
  }
  s6_fdholder_end(&a);
  report(name, s, n);
}

static void s6_connect_bench(const char *path, const char *id, size_t n) {
  uint64_t *s = malloc(n * sizeof *s);
  for (size_t i = 0; i < n; i++) {
    uint64_t t0 = now_ns();
    s6_fdholder_t a = S6_FDHOLDER_ZERO;
    s6_start(&a, path);
    int fd = s6_fdholder_retrieve_g(&a, id, &deadline);
    if (fd < 0) die("s6_fdholder_retrieve", errno);
    close(fd);
    s6_fdholder_end(&a);
    s[i] = now_ns() - t0;
  }
  report("s6_connect_retrieve_end", s, n);
}

/* ---- B5: K client processes, each on its own kept connection, requesting
 * without pause; total requests/s completed in a common window of `secs`
 * seconds. The window opens a fifth of `secs` after the common start and
 * every client keeps requesting a fifth of `secs` past its end, so that it
 * counts the steady state only: not the wake-up of K processes at the
 * start, nor the exits and connection teardowns of the first clients done
 * while others still count (at 1,000 clients a client makes only a few
 * dozen requests a slice, and those costs, which differ between kinds,
 * weighed in 0.5 s slices). */
static pid_t connect_floor_server(struct sockaddr_un *a);
static pid_t connect_uring_server(struct sockaddr_un *a);

static void tput(const char *kind, const char *path, const char *arg, int k, double secs) {
  raise_nofile();
  int port = atoi(arg);
  int go[2], res[2], rdy[2];
  /* B5f, the floor: the B3f server (one epoll loop, one fd by SCM_RIGHTS
   * per 1-byte request) with the same client processes; B5u, the io_uring
   * floor's server (uring_serve) with them */
  int isuring = !strcmp(kind, "uring"), isfloor = isuring || !strcmp(kind, "floor");
  struct sockaddr_un fa;
  int ue = isuring ? uring_probe() : 0;
  if (ue) {
    fprintf(stderr, "bench: io_uring: %s: B5u is not measured\n", strerror(-ue));
    return;
  }
  pid_t fpid = isuring ? connect_uring_server(&fa) : isfloor ? connect_floor_server(&fa) : 0;
  if (pipe(go) || pipe(res) || pipe(rdy)) die("pipe", errno);
  /* the common start, written by the parent before it says go */
  volatile uint64_t *t0 = mmap(NULL, sizeof *t0, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (t0 == MAP_FAILED) die("mmap", errno);
  uint64_t edge = (uint64_t)(secs * 0.2e9), span = (uint64_t)(secs * 1e9);
  for (int i = 0; i < k; i++) {
    pid_t pid = fork();
    if (pid < 0) die("fork", errno);
    if (pid) continue;
    close(go[1]);
    close(res[0]);
    close(rdy[0]);
    sockpass_client *c = NULL;
    s6_fdholder_t a = S6_FDHOLDER_ZERO;
    int s6 = !strcmp(kind, "s6");
    int fc = -1;
    if (isfloor) fc = connect_un(&fa);
    else if (s6) s6_start(&a, path);
    else {
      c = sp_connect(path);
      /* sp50: B5 with the clients' reply spin on (50 µs, paced), for
       * reference against sp's default (off) */
      if (!strcmp(kind, "sp50")) sockpass_client_set_reply_spin(c, 50);
    }
    char b = 'c';
    /* connected: say so, and let go of the pipe, so that the parent's read
     * ends once every child has either said so or died */
    if (write(rdy[1], &b, 1) != 1) _exit(1);
    close(rdy[1]);
    if (read(go[0], &b, 1) < 0) _exit(1); /* start: the pipe closes */
    uint64_t from = *t0 + edge, end = from + span, stop = end + edge, ops = 0, t;
    static char tok[BATCH][SOCKPASS_TOKEN_SIZE];
    size_t held = 0;
    int done = 0;
    while ((t = now_ns()) < stop) {
      /* the request before this one ended at t: count it if within */
      if (done && t >= from && t < end) ops++;
      done = 1;
      int fd;
      if (isfloor) {
        char r = 'r';
        if (send(fc, &r, 1, 0) != 1) die("b5f send", errno);
        if ((fd = recv_fd(fc)) < 0) die("b5f recv_fd", errno);
        close(fd);
      } else if (s6) {
        fd = s6_fdholder_retrieve_g(&a, arg, &deadline);
        if (fd < 0) die("s6_fdholder_retrieve", errno);
        close(fd);
      } else {
        fd = sockpass_client_request_socket(c, SOCKPASS_PROTO_UDP, "127.0.0.1", port,
                                            SOCKPASS_SHARE_ANY, "bench", tok[held],
                                            SOCKPASS_TOKEN_SIZE);
        if (fd < 0) die("request", fd);
        close(fd);
        /* every BATCH requests, release them (release_many: 170 tokens a
         * message), on the clock: a sustained rate pays for its releases,
         * which s6 does not have */
        if (++held == BATCH) {
          static const char *ptr[BATCH];
          for (size_t j = 0; j < held; j++) ptr[j] = tok[j];
          int x = sockpass_client_release_many(c, ptr, held, NULL);
          if (x != (int)held) die("release_many", x < 0 ? x : -EPROTO);
          held = 0;
        }
      }
    }
    if (write(res[1], &ops, sizeof ops) != sizeof ops) _exit(1);
    _exit(0);
  }
  close(go[0]);
  close(res[1]);
  close(rdy[1]);
  /* start when every child is connected (a child that died is counted as
   * failed below), not after a guess at how long connecting takes */
  char rb[256];
  for (ssize_t r; (r = read(rdy[0], rb, sizeof rb)) != 0;)
    if (r < 0 && errno != EINTR) die("ready pipe", errno);
  close(rdy[0]);
  *t0 = now_ns();
  close(go[1]);
  uint64_t total = 0, ops;
  int got = 0;
  while (read(res[0], &ops, sizeof ops) == sizeof ops) { total += ops; got++; }
  if (isfloor) {
    kill(fpid, SIGKILL);
    waitpid(fpid, NULL, 0);
    unlink(fa.sun_path);
  }
  int st, bad = 0;
  while (wait(&st) > 0) if (!WIFEXITED(st) || WEXITSTATUS(st)) bad++;
  /* a failed child exits non-zero and reports nothing: count it once */
  int failed = bad > k - got ? bad : k - got;
  if (failed) { fprintf(stderr, "bench: %d of %d clients failed\n", failed, k); exit(1); }
  /* The broker drops the gone clients' connections and references after
   * they exit; a round trip on a new connection, queued behind those
   * hang-ups, waits for that, so the next slice (the floor's) does not
   * share its CPU with this slice's clean-up. */
  if (!isfloor && strcmp(kind, "s6")) {
    sockpass_client *q = sp_connect(path);
    int h = sockpass_client_hello(q);
    if (h < 0) die("hello after the slice", h);
    sockpass_client_free(q);
  }
  munmap((void *)t0, sizeof *t0);
  printf("RESULT B5_%s_c%d ops_per_s=%.0f clients=%d\n", kind, k, total / secs, k);
  fflush(stdout);
}

/* ---- Interleaved: the benchmarks whose ratios are bars run in turns, in
 * blocks of 500 iterations, so that a busy spell of a shared machine hits
 * them all alike. Same operations as floor/kept/s6kept/inproc/uncached. */
#define BLOCK 500
enum { M_FLOOR, M_FLOOR_EPOLL, M_FLOOR_URING, M_KEPT, M_S6, M_INPROC, M_UNCACHED, M_B2B, M_B2C, M_COUNT };
static const char *mixed_names[M_COUNT] = {
    "B1_floor",           "B1e_floor_epoll",       "B1u_floor_uring",       "B2_cached_kept",
    "s6_retrieve_kept",   "inproc_socket_bind",    "B4_uncached",           "B2b_broker_raw_client",
    "B2c_client_min_broker"};

/* Where B2's time goes, beyond B1e. B2b: sockpassd answering B2's request
 * from a raw C client (the request bytes of docs/PROTOCOL.md, one recvmsg);
 * B2c: the C API's request against a minimal C broker (epoll_wait, recvmsg
 * with room for fds, a 28-byte SOCKET reply with one fd). B2b - B1e is the
 * broker's own cost, B2c - B1e the client's. */
static size_t raw_request(unsigned char *q, uint32_t id, int port) {
  static const unsigned char tmpl[] = {1, 2, 0, 0, 0, 0, 0, 0,   /* header: REQUEST, id */
                                       2, 0, 5, 'b', 'e', 'n', 'c', 'h', /* ANY, no flags, app */
                                       1, 4, 0, 0, 127, 0, 0, 1, 0}; /* udp, IPv4, port, addr, no options */
  memcpy(q, tmpl, sizeof tmpl);
  for (int i = 0; i < 4; i++) q[4 + i] = (id >> (8 * i)) & 0xff; /* little-endian */
  q[18] = port & 0xff;
  q[19] = port >> 8;
  return sizeof tmpl;
}

static int recv_reply_fd(int s) {
  unsigned char b[64];
  ssize_t n;
  int fd = recv_msg_fd(s, b, sizeof b, &n, 0);
  if (fd >= 0 && (n != 36 || b[1] != 0x82)) {
    close(fd);
    return -1;
  }
  return fd;
}

/* Send B2's request (see raw_request) on s and take the reply's fd. */
static int raw_request_fd(int s, uint32_t id, int port) {
  unsigned char rq[64];
  size_t len = raw_request(rq, id, port);
  if (send(s, rq, len, MSG_NOSIGNAL) != (ssize_t)len) die("raw request send", errno);
  return recv_reply_fd(s);
}

static int connect_path(const char *path) {
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
  return connect_un(&a);
}

/* B2c's minimal broker: serves one connection on a listening path; a REQUEST
 * gets a SOCKET reply with one fd, a RELEASE_MANY has every token released,
 * a HELLO (which the client says before releasing more than 42 tokens) says
 * it takes 1024-byte packets, as the first brokers did. */
static pid_t min_broker(struct sockaddr_un *a) {
  int l = listen_tmp(a, "b2c", 0, 8);
  pid_t pid = fork_server();
  if (pid == 0) {
    int c = accept4(l, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    int u = handed_fd(), ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP}, got[16];
    if (c < 0 || u < 0 || ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev)) _exit(1);
    unsigned char q[1024], r[36] = {1, 0x82};
    uint64_t seq = 0;
    for (;;) {
      if (epoll_wait(ep, got, 16, -1) < 0) continue;
      ssize_t n;
      int in = recv_msg_fd(c, q, sizeof q, &n, MSG_DONTWAIT);
      if (in >= 0) close(in);
      if (n < 8) _exit(0);
      if (q[1] == 0x01) { /* HELLO: version 1, packets of 1024 bytes, pid */
        unsigned char h[20] = {1, 0x81, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0x00, 0x04, 0, 0};
        int32_t me = (int32_t)getpid();
        memcpy(h + 4, q + 4, 4);
        memcpy(h + 16, &me, 4);
        if (send(c, h, sizeof h, MSG_NOSIGNAL) < 0) _exit(0);
        continue;
      }
      if (q[1] == 0x07 && n >= 10) { /* RELEASE_MANY: every token released */
        unsigned char rm[8 + 2 + 42 * 8] = {1, 0x87};
        size_t k = q[8] | q[9] << 8;
        if (k > 42) _exit(1);
        memcpy(rm + 4, q + 4, 4);
        memcpy(rm + 8, q + 8, 2);
        if (send(c, rm, 10 + 8 * k, MSG_NOSIGNAL) < 0) _exit(0);
        continue;
      }
      memcpy(r + 4, q + 4, 4);
      seq++;
      memcpy(r + 24, &seq, 8); /* a fresh token each time (opaque bytes) */
      size_t at = 8 + 3 + q[10] + 2; /* the spec's port, after the app name */
      if (at + 2 > (size_t)n) _exit(1);
      r[32] = q[at], r[33] = q[at + 1], r[34] = 1; /* the port asked for; cached */
      if (send_msg_fd(c, r, sizeof r, u)) _exit(0);
    }
  }
  close(l);
  return pid;
}

static void mixed(const char *path, int port, int uport, const char *s6path, const char *id,
                  size_t n) {
  struct sockaddr_un ma;
  pid_t mpid = min_broker(&ma); /* first: its fork must not hold the others' fds */
  pid_t pid, epid, upid;
  int fl = floor_server(0, &pid), esv = floor_server(1, &epid), usv = uring_floor_server(&upid);
  sockpass_client *c = sp_connect(path), *cu = sp_connect(path);
  sockpass_client *cm = sp_connect(ma.sun_path);
  int raw = connect_path(path);
  uint32_t raw_id = 0;
  int keep = sockpass_client_request_socket(c, SOCKPASS_PROTO_UDP, "127.0.0.1", port,
                                            SOCKPASS_SHARE_ANY, "bench", NULL, 0);
  if (keep < 0) die("request", keep);
  close(keep);
  s6_fdholder_t a = S6_FDHOLDER_ZERO;
  s6_start(&a, s6path);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  uint64_t *smp[M_COUNT], *rel = malloc((n + BLOCK) * sizeof *rel), *urel = malloc((n + BLOCK) * sizeof *urel);
  uint64_t *relp = malloc((n / BLOCK + 1) * sizeof *relp);
  for (int m = 0; m < M_COUNT; m++) smp[m] = malloc((n + BLOCK) * sizeof(uint64_t));
  static char tok[BLOCK][SOCKPASS_TOKEN_SIZE];
  size_t done = 0, nrel = 0, nrelp = 0;
  for (int block = 0; done < n; block++) {
    for (int m = 0; m < M_COUNT; m++) {
      if (m == M_FLOOR_URING && usv < 0) continue;
      for (size_t i = 0; i < BLOCK; i++) {
        int fd, x;
        char b = 'r', utok[SOCKPASS_TOKEN_SIZE];
        uint64_t t0 = now_ns(), t1;
        switch (m) {
          case M_FLOOR:
          case M_FLOOR_EPOLL:
          case M_FLOOR_URING: {
            int s = m == M_FLOOR ? fl : m == M_FLOOR_EPOLL ? esv : usv;
            if (send(s, &b, 1, 0) != 1) die("send", errno);
            if ((fd = recv_fd(s)) < 0) die("recv_fd", errno);
            close(fd);
            t1 = now_ns();
            break;
          }
          case M_KEPT:
            fd = sockpass_client_request_socket(c, SOCKPASS_PROTO_UDP, "127.0.0.1", port,
                                                SOCKPASS_SHARE_ANY, "bench", tok[i],
                                                SOCKPASS_TOKEN_SIZE);
            if (fd < 0) die("request", fd);
            close(fd);
            t1 = now_ns();
            break;
          case M_S6:
            if ((fd = s6_fdholder_retrieve_g(&a, id, &deadline)) < 0) die("s6_fdholder_retrieve", errno);
            close(fd);
            t1 = now_ns();
            break;
          case M_INPROC: {
            fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
            int one = 1;
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            if (bind(fd, (struct sockaddr *)&sa, sizeof sa)) die("bind", errno);
            t1 = now_ns();
            close(fd);
            break;
          }
          case M_B2B: {
            if ((fd = raw_request_fd(raw, ++raw_id, port)) < 0) die("b2b reply", errno);
            close(fd);
            t1 = now_ns();
            break;
          }
          case M_B2C:
            fd = sockpass_client_request_socket(cm, SOCKPASS_PROTO_UDP, "127.0.0.1", port,
                                                SOCKPASS_SHARE_ANY, "bench", utok, sizeof utok);
            if (fd < 0) die("b2c request", fd);
            close(fd);
            t1 = now_ns();
            break;
          default:
            fd = sockpass_client_request_socket(cu, SOCKPASS_PROTO_UDP, "127.0.0.1", uport,
                                                SOCKPASS_SHARE_NONE, "bench", utok, sizeof utok);
            if (fd < 0) die("request", fd);
            close(fd);
            t1 = now_ns();
            /* B4r: the release closes the socket (off the loop, waited
             * for, so its port is free when the reply comes) */
            if ((x = sockpass_client_release(cu, utok)) < 0) die("release", x);
            if (block > 0) urel[done + i] = now_ns() - t1;
        }
        if (block > 0) smp[m][done + i] = t1 - t0; /* block 0 warms up */
      }
      if (m == M_B2C) { /* so the client tracks what B2's does, off the clock */
        int x = sockpass_client_release_all(cm);
        if (x != BLOCK) die("b2c release_all", x < 0 ? x : -EPROTO);
      }
      if (m == M_B2B) { /* its references go with the connection, off the clock */
        close(raw);
        raw = connect_path(path);
      }
      if (m == M_KEPT && block % 2) /* this block's references, off B2's clock: B2r */
        for (size_t i = 0; i < BLOCK; i++) {
          uint64_t t0 = now_ns();
          int x = sockpass_client_release(c, tok[i]);
          if (x < 0) die("release", x);
          rel[nrel++] = now_ns() - t0;
        }
      else if (m == M_KEPT) { /* B2rp: all at once, pipelined; the mean per release */
        static const char *ptr[BLOCK];
        for (size_t i = 0; i < BLOCK; i++) ptr[i] = tok[i];
        uint64_t t0 = now_ns();
        int x = sockpass_client_release_many(c, ptr, BLOCK, NULL);
        if (x != BLOCK) die("release_many", x < 0 ? x : -EPROTO);
        if (block > 0) relp[nrelp++] = (now_ns() - t0) / BLOCK;
      }
    }
    if (block > 0) done += BLOCK;
  }
  for (int m = 0; m < M_COUNT; m++)
    if (m != M_FLOOR_URING || usv >= 0) report(mixed_names[m], smp[m], done);
  report("B2r_release", rel, nrel);
  report("B2rp_release_many", relp, nrelp);
  report("B4r_release_uncached", urel, done);
  /* the last forked first: each server holds the client ends made before it */
  if (usv >= 0) {
    close(usv);
    waitpid(upid, NULL, 0);
  }
  close(esv);
  waitpid(epid, NULL, 0);
  close(fl);
  waitpid(pid, NULL, 0);
  s6_fdholder_end(&a);
  sockpass_client_free(c);
  sockpass_client_free(cu);
  sockpass_client_free(cm);
  close(raw);
  waitpid(mpid, NULL, 0);
  unlink(ma.sun_path);
}

/* B3f, the floor of B3: a forked server on a listening SOCK_SEQPACKET path
 * doing only what any broker that knows its clients must per connection:
 * epoll_wait, accept4, SO_PEERCRED, EPOLL_CTL_ADD; recv, one fd by
 * SCM_RIGHTS; recv of the hang-up, close. The client connects, sends 1 byte,
 * receives the fd, closes it and the connection. */
static pid_t connect_floor_server(struct sockaddr_un *a) {
  int l = listen_tmp(a, "b3f", SOCK_NONBLOCK, 128);
  pid_t pid = fork_server();
  if (pid == 0) {
    int u = handed_fd(), ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = l}, got[256];
    if (u < 0 || ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev)) _exit(1);
    char b[64];
    for (;;) {
      int k = epoll_wait(ep, got, 256, -1);
      for (int i = 0; i < k; i++) {
        int fd = got[i].data.fd;
        if (fd == l) {
          int c = accept4(l, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
          if (c < 0) continue;
          struct ucred cr;
          socklen_t cl = sizeof cr;
          struct epoll_event e = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = c};
          if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cr, &cl) || epoll_ctl(ep, EPOLL_CTL_ADD, c, &e))
            close(c);
          continue;
        }
        ssize_t r = recv(fd, b, sizeof b, MSG_DONTWAIT);
        if (r == 0) close(fd);
        else if (r > 0 && send_fd(fd, u)) close(fd);
      }
    }
  }
  close(l);
  return pid;
}

/* B5u's server: uring_serve on a listening SOCK_SEQPACKET path (blocking:
 * io_uring waits for it, where a nonblocking socket would fail with EAGAIN). */
static pid_t connect_uring_server(struct sockaddr_un *a) {
  int l = listen_tmp(a, "b5u", 0, 128);
  pid_t pid = fork_server();
  if (pid == 0) {
    uring_serve(l, -1, handed_fd());
    _exit(0);
  }
  close(l);
  return pid;
}

/* B3, its floor B3f, B3b (sockpassd answering B3's request from a raw C
 * client: connect, the request's bytes, one recvmsg, close) and s6's
 * connect + retrieve + end, interleaved in blocks of 50. B3b - B3f is the
 * broker's part of B3 - B3f, B3 - B3b the C API's. */
static void mixed_connect(const char *path, int port, const char *s6path, const char *id, size_t n) {
  sockpass_client *holder = sp_connect(path); /* keeps the socket cached */
  int keep = sockpass_client_request_socket(holder, SOCKPASS_PROTO_UDP, "127.0.0.1", port,
                                            SOCKPASS_SHARE_ANY, "bench", NULL, 0);
  if (keep < 0) die("request", keep);
  close(keep);
  struct sockaddr_un fa;
  pid_t fpid = connect_floor_server(&fa);
  uint64_t *s = malloc((n + 50) * sizeof *s), *q = malloc((n + 50) * sizeof *q);
  uint64_t *f = malloc((n + 50) * sizeof *f), *r = malloc((n + 50) * sizeof *r);
  size_t done = 0;
  for (int block = 0; done < n; block++) {
    for (size_t i = 0; i < 50; i++) {
      uint64_t t0 = now_ns();
      int c = connect_un(&fa);
      char b = 'r';
      if (send(c, &b, 1, 0) != 1) die("b3f send", errno);
      int fd = recv_fd(c);
      if (fd < 0) die("b3f recv_fd", errno);
      close(fd);
      close(c);
      if (block > 0) f[done + i] = now_ns() - t0;
    }
    for (size_t i = 0; i < 50; i++) {
      uint64_t t0 = now_ns();
      sockpass_client *c = sp_connect(path);
      int fd = sockpass_client_request_socket(c, SOCKPASS_PROTO_UDP, "127.0.0.1", port,
                                              SOCKPASS_SHARE_ANY, "bench", NULL, 0);
      if (fd < 0) die("request", fd);
      close(fd);
      sockpass_client_free(c);
      if (block > 0) s[done + i] = now_ns() - t0;
    }
    for (size_t i = 0; i < 50; i++) { /* B3b: B3's request from a raw C client */
      uint64_t t0 = now_ns();
      int c = connect_path(path);
      int fd = raw_request_fd(c, 1, port);
      if (fd < 0) die("b3b reply", errno);
      close(fd);
      close(c);
      if (block > 0) r[done + i] = now_ns() - t0;
    }
    for (size_t i = 0; i < 50; i++) {
      uint64_t t0 = now_ns();
      s6_fdholder_t a = S6_FDHOLDER_ZERO;
      s6_start(&a, s6path);
      int fd = s6_fdholder_retrieve_g(&a, id, &deadline);
      if (fd < 0) die("s6_fdholder_retrieve", errno);
      close(fd);
      s6_fdholder_end(&a);
      if (block > 0) q[done + i] = now_ns() - t0;
    }
    if (block > 0) done += 50;
  }
  report("B3_connect_request_close", s, done);
  report("s6_connect_retrieve_end", q, done);
  report("B3f_connect_floor", f, done);
  report("B3b_broker_raw_client", r, done);
  kill(fpid, SIGKILL);
  waitpid(fpid, NULL, 0);
  unlink(fa.sun_path);
  sockpass_client_free(holder);
}

int main(int argc, char **argv) {
  tain_now_set_stopwatch_g();
  tain_addsec_g(&deadline, 30);
  signal(SIGPIPE, SIG_IGN);
  if (argc < 3) {
    fprintf(stderr,
            "usage: bench floor N | inproc N | kept SOCK PORT N [CACHED NAME] |\n"
            "  connect SOCK PORT N | uncached SOCK PORT N [CACHED NAME] |\n"
            "  hold SOCK BASE SOCKETS CONNS | s6store S6SOCK ID | s6kept S6SOCK ID N [NAME] |\n"
            "  s6connect S6SOCK ID N | tput sp|sp50|s6|floor|uring SOCK PORT|ID K SECS |\n"
            "  mixed SOCK PORT UPORT S6SOCK ID N | mixedconnect SOCK PORT S6SOCK ID N |\n"
            "  xfloor SERVER_CPU N SPIN_US NAME\n");
    return 2;
  }
  const char *m = argv[1];
  if (!strcmp(m, "floor")) floor_bench(atol(argv[2]));
  else if (!strcmp(m, "inproc")) inproc_bench(atol(argv[2]));
  else if (!strcmp(m, "kept") && argc >= 5)
    sp_kept(argv[2], atoi(argv[3]), atol(argv[4]), argc > 5 ? atoi(argv[5]) : 0,
            argc > 6 ? argv[6] : "B2_cached_kept");
  else if (!strcmp(m, "connect") && argc == 5) sp_connect_bench(argv[2], atoi(argv[3]), atol(argv[4]));
  else if (!strcmp(m, "uncached") && argc >= 5)
    sp_uncached(argv[2], atoi(argv[3]), atol(argv[4]), argc > 5 ? atoi(argv[5]) : 0,
                argc > 6 ? argv[6] : "B4_uncached");
  else if (!strcmp(m, "batch") && argc == 5) batch_bench(argv[2], atoi(argv[3]), atol(argv[4]));
  else if (!strcmp(m, "hold") && argc == 6) hold(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
  else if (!strcmp(m, "s6store") && argc == 4) s6_store(argv[2], argv[3]);
  else if (!strcmp(m, "s6kept") && argc >= 5)
    s6_kept(argv[2], argv[3], atol(argv[4]), argc > 5 ? argv[5] : "s6_retrieve_kept");
  else if (!strcmp(m, "xfloor") && argc == 6) xcpu_floor(atoi(argv[2]), atol(argv[3]), atoi(argv[4]), argv[5]);
  else if (!strcmp(m, "s6connect") && argc == 5) s6_connect_bench(argv[2], argv[3], atol(argv[4]));
  else if (!strcmp(m, "mixed") && argc == 8)
    mixed(argv[2], atoi(argv[3]), atoi(argv[4]), argv[5], argv[6], atol(argv[7]));
  else if (!strcmp(m, "mixedconnect") && argc == 7)
    mixed_connect(argv[2], atoi(argv[3]), argv[4], argv[5], atol(argv[6]));
  else if (!strcmp(m, "tput") && argc == 7) tput(argv[2], argv[3], argv[4], atoi(argv[5]), atof(argv[6]));
  else { fprintf(stderr, "bench: bad arguments\n"); return 2; }
  return 0;
}
