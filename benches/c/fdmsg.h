/* One fd by SCM_RIGHTS in a message, both ways: the floors' servers and
 * clients of the benchmark programs (bench.c, pages/loop.c). unused: not
 * every program that includes this calls everything. */
#ifndef SOCKPASS_BENCH_FDMSG_H
#define SOCKPASS_BENCH_FDMSG_H

#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

/* A message of `len` bytes carrying one fd by SCM_RIGHTS. */
struct fd_msg {
  struct msghdr m;
  struct iovec iov;
  union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int))]; } cm;
};

static __attribute__((unused)) void fd_msg_init(struct fd_msg *f, const void *data, size_t len, int fd) {
  memset(f, 0, sizeof *f);
  f->iov = (struct iovec){(void *)data, len};
  f->m.msg_iov = &f->iov;
  f->m.msg_iovlen = 1;
  f->m.msg_control = f->cm.buf;
  f->m.msg_controllen = sizeof f->cm.buf;
  struct cmsghdr *c = CMSG_FIRSTHDR(&f->m);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c), &fd, sizeof fd);
}

/* One message of `len` bytes with one fd; 0 on success. */
static __attribute__((unused)) int send_msg_fd(int s, const void *data, size_t len, int fd) {
  struct fd_msg f;
  fd_msg_init(&f, data, len, fd);
  return sendmsg(s, &f.m, MSG_NOSIGNAL) == (ssize_t)len ? 0 : -1;
}

static __attribute__((unused)) int send_fd(int s, int fd) { return send_msg_fd(s, "x", 1, fd); }

/* One message into buf (its length in *got) with room for one fd (with
 * `flags`); the fd, -1 if none came. */
static __attribute__((unused)) int recv_msg_fd(int s, void *buf, size_t len, ssize_t *got, int flags) {
  struct iovec iov = {buf, len};
  union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int))]; } u;
  struct msghdr m = {0};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = u.buf;
  m.msg_controllen = sizeof u.buf;
  *got = recvmsg(s, &m, flags | MSG_CMSG_CLOEXEC);
  struct cmsghdr *c = *got >= 0 ? CMSG_FIRSTHDR(&m) : NULL;
  if (!c || c->cmsg_type != SCM_RIGHTS) return -1;
  int fd;
  memcpy(&fd, CMSG_DATA(c), sizeof fd);
  return fd;
}

static __attribute__((unused)) int recv_fd(int s) {
  char b;
  ssize_t n;
  int fd = recv_msg_fd(s, &b, 1, &n, 0);
  if (n != 1 && fd >= 0) close(fd);
  return n == 1 ? fd : -1;
}

#endif
