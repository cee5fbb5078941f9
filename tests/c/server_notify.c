/* The server-socket handover API from C, over real unix sockets in a temp
 * dir: a manager makes the notifier pair and an unbound socket, the daemon
 * adopts both and may not accept until the manager binds, listens and
 * closes its end; an eagerly bound socket (sockpass_bind_in_namespace) is
 * adopted and accepts with the peer's credentials; every bad input gets its
 * documented code, writes no out-parameter and leaks no fd; the lazy
 * manager side (sockpass_lazy_server_*) binds after the daemon adopted, or
 * gives up, and the daemon is told either way. Needs no
 * broker. Run by meson test, under ASan/UBSan and under valgrind by
 * tests/parts/20-c.sh. */
#define _GNU_SOURCE
#include <sockpass.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "check.h"

/* A client connection to the unix socket at path, or -1. */
static int connect_to(const char *path) {
    struct sockaddr_un a;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    memset(&a, 0, sizeof(a));
    a.sun_family = AF_UNIX;
    strncpy(a.sun_path, path, sizeof(a.sun_path) - 1);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Lazy handover: accept is refused until the notifier fires. */
static void lazy(const char *path) {
    sockpass_server *s = NULL;
    struct sockaddr_un a;
    int pair[2], sock, peer, conn;
    char addr[256], want[300];

    EXPECT(sockpass_notifier_pair(pair), 0);
    sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    EXPECT(sockpass_server_adopt(sock, pair[0], SOCK_STREAM, &s), 0);
    close(pair[0]); /* borrowed: the server has its own copy */
    if (!s) {
        return;
    }
    EXPECT(sockpass_server_check(s), 0);
    EXPECT(sockpass_server_notifier_fd(s) >= 0, 1);
    EXPECT(sockpass_server_accept(s, NULL), -SOCKPASS_E_NOT_READY);
    EXPECT(sockpass_server_wait(s, 10), -ETIMEDOUT);
    EXPECT(sockpass_server_dbus_address(s, addr, sizeof(addr)), 0);
    EXPECT(addr[0], 0);

    /* The manager binds, listens, then closes its end. */
    memset(&a, 0, sizeof(a));
    a.sun_family = AF_UNIX;
    strncpy(a.sun_path, path, sizeof(a.sun_path) - 1);
    EXPECT(bind(sock, (struct sockaddr *)&a, sizeof(a)), 0);
    EXPECT(listen(sock, 8), 0);
    close(pair[1]);
    close(sock);
    EXPECT(sockpass_server_wait(s, 30000), 0);
    EXPECT(sockpass_server_check(s), 1);
    EXPECT(sockpass_server_notifier_fd(s), -ENOENT);
    snprintf(want, sizeof(want), "unix:path=%s", path);
    EXPECT(sockpass_server_dbus_address(s, addr, sizeof(addr)), (int)strlen(want));
    EXPECT(strcmp(addr, want), 0);

    peer = connect_to(path);
    EXPECT(peer >= 0, 1);
    conn = sockpass_server_accept(s, NULL);
    EXPECT(conn >= 0, 1);
    EXPECT(fcntl(conn, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
    EXPECT(write(peer, "x", 1), 1);
    EXPECT(read(conn, addr, 1), 1);
    close(peer);
    close(conn);
    sockpass_server_free(s);
    unlink(path);
}

/* The manager gives up before listening: the daemon is told, not hung. */
static void manager_gone(void) {
    sockpass_server *s = NULL;
    int pair[2], sock;

    EXPECT(sockpass_notifier_pair(pair), 0);
    sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    EXPECT(sockpass_server_adopt(sock, pair[0], 0, &s), 0);
    close(pair[0]);
    close(pair[1]);
    close(sock);
    EXPECT(sockpass_server_wait(s, 30000), -SOCKPASS_E_NOT_READY);
    EXPECT(sockpass_server_accept(s, NULL), -SOCKPASS_E_NOT_READY);
    sockpass_server_free(s);
}

/* Eager handover: bound and listening before the daemon sees it. */
static void eager(const char *path) {
    sockpass_server *s = NULL;
    sockpass_creds cr = {-1, 0, 0};
    struct stat st;
    int fd, peer, conn;

    fd = sockpass_bind_in_namespace(0, path, strlen(path), 0600, SOCKPASS_OWNER_KEEP,
                                    SOCKPASS_OWNER_KEEP, -1);
    EXPECT(fd >= 0, 1);
    EXPECT(stat(path, &st), 0);
    EXPECT((int)(st.st_mode & 07777), 0600);
    EXPECT(sockpass_server_adopt(fd, -1, 0, &s), 0);
    close(fd);
    if (!s) {
        return;
    }
    EXPECT(sockpass_server_fd(s) >= 0, 1);
    peer = connect_to(path);
    EXPECT(peer >= 0, 1);
    conn = sockpass_server_accept(s, &cr);
    EXPECT(conn >= 0, 1);
    EXPECT(cr.pid, (int)getpid());
    EXPECT((int)cr.uid, (int)geteuid());
    EXPECT((int)cr.gid, (int)getegid());
    close(peer);
    close(conn);
    sockpass_server_free(s);
    unlink(path);
}

/* Lazy handover through the library's manager side: the daemon gets the
 * socket and notifier first, then the manager binds; or gives up. */
static void lazy_manager(const char *path) {
    sockpass_server *s = NULL;
    sockpass_lazy_server *l = NULL;
    int sock = -1, notifier = -1, peer, conn;

    EXPECT(sockpass_lazy_server_new(0, 0, &l, &sock, &notifier), 0);
    EXPECT(sockpass_server_adopt(sock, notifier, 0, &s), 0);
    close(sock);
    close(notifier);
    EXPECT(sockpass_server_check(s), 0);
    EXPECT(sockpass_lazy_server_bind(l, 0, path, strlen(path), 0600, SOCKPASS_OWNER_KEEP,
                                     SOCKPASS_OWNER_KEEP, -1),
           0);
    EXPECT(sockpass_server_wait(s, 30000), 0);
    peer = connect_to(path);
    EXPECT(peer >= 0, 1);
    conn = sockpass_server_accept(s, NULL);
    EXPECT(conn >= 0, 1);
    close(peer);
    close(conn);
    sockpass_server_free(s);
    unlink(path);

    /* The manager gives up: the daemon is told. */
    s = NULL;
    EXPECT(sockpass_lazy_server_new(0, 0, &l, &sock, &notifier), 0);
    EXPECT(sockpass_server_adopt(sock, notifier, 0, &s), 0);
    close(sock);
    close(notifier);
    sockpass_lazy_server_free(l);
    EXPECT(sockpass_server_wait(s, 30000), -SOCKPASS_E_NOT_READY);
    sockpass_server_free(s);

    /* A bad path still consumes the handle, and the daemon is told. */
    s = NULL;
    EXPECT(sockpass_lazy_server_new(0, 0, &l, &sock, &notifier), 0);
    EXPECT(sockpass_server_adopt(sock, notifier, 0, &s), 0);
    close(sock);
    close(notifier);
    EXPECT(sockpass_lazy_server_bind(l, 0, "rel", 3, -1, SOCKPASS_OWNER_KEEP, SOCKPASS_OWNER_KEEP,
                                     -1),
           -EINVAL);
    EXPECT(sockpass_server_wait(s, 30000), -SOCKPASS_E_NOT_READY);
    sockpass_server_free(s);

    sock = notifier = -7;
    EXPECT(sockpass_lazy_server_new(0, 0, NULL, &sock, &notifier), -EFAULT);
    EXPECT(sockpass_lazy_server_new(0, 0, &l, NULL, &notifier), -EFAULT);
    EXPECT(sockpass_lazy_server_new(-2, 0, &l, &sock, &notifier), -EINVAL);
    EXPECT(sock == -7 && notifier == -7, 1);
    EXPECT(sockpass_lazy_server_bind(NULL, 0, path, strlen(path), -1, SOCKPASS_OWNER_KEEP,
                                     SOCKPASS_OWNER_KEEP, -1),
           -EFAULT);
    sockpass_lazy_server_free(NULL);
}

static void bad_input(const char *path) {
    sockpass_server *sentinel = (sockpass_server *)&failures, *s = sentinel;
    sockpass_creds cr = {-7, 7, 7};
    char small[4] = "XXX", longpath[200];
    int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int udp = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int unbound = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int sp[2], fd, pair[2];

    EXPECT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
    EXPECT(sockpass_server_adopt(-1, -1, 0, &s), -EBADF);
    EXPECT(sockpass_server_adopt(1000000, -1, 0, &s), -EBADF);
    EXPECT(sockpass_server_adopt(unbound, -2, 0, &s), -EBADF);
    EXPECT(sockpass_server_adopt(null_fd, -1, 0, &s), -ENOTSOCK);    /* not a socket */
    EXPECT(sockpass_server_adopt(udp, -1, 0, &s), -EPROTOTYPE);      /* not stream */
    EXPECT(sockpass_server_adopt(unbound, -1, 0, &s), -EINVAL);      /* not listening */
    EXPECT(sockpass_server_adopt(sp[0], -1, 0, &s), -EISCONN);       /* connected */
    EXPECT(sockpass_server_adopt(unbound, null_fd, 0, &s), -EINVAL); /* notifier not a pipe */
    EXPECT(sockpass_server_adopt(unbound, -1, SOCK_DGRAM, &s), -EINVAL);
    EXPECT(sockpass_server_adopt(unbound, -1, 12345, &s), -EINVAL);
    EXPECT(s == sentinel, 1);
    EXPECT(sockpass_server_adopt(unbound, -1, 0, NULL), -EFAULT);
    EXPECT(sockpass_server_adopt_activation(0, 0, NULL), -EFAULT);
    EXPECT(sockpass_server_adopt_activation(-3, 0, &s), -EINVAL);
    EXPECT(sockpass_server_adopt_activation(0, 0, &s), 0); /* no LISTEN_PID here */
    EXPECT(s == sentinel, 1);

    EXPECT(sockpass_server_fd(NULL), -EFAULT);
    EXPECT(sockpass_server_notifier_fd(NULL), -EFAULT);
    EXPECT(sockpass_server_check(NULL), -EFAULT);
    EXPECT(sockpass_server_wait(NULL, 0), -EFAULT);
    EXPECT(sockpass_server_accept(NULL, &cr), -EFAULT);
    EXPECT(cr.pid, -7);
    EXPECT(sockpass_server_dbus_address(NULL, small, sizeof(small)), -EFAULT);
    EXPECT(sockpass_notifier_pair(NULL), -EFAULT);
    sockpass_server_free(NULL);

    /* A too-small buffer is refused untouched. */
    fd = sockpass_bind_in_namespace(0, path, strlen(path), -1, SOCKPASS_OWNER_KEEP,
                                    SOCKPASS_OWNER_KEEP, 4);
    EXPECT(fd >= 0, 1);
    s = NULL;
    EXPECT(sockpass_server_adopt(fd, -1, 0, &s), 0);
    close(fd);
    EXPECT(sockpass_server_dbus_address(s, small, sizeof(small)), -ENOBUFS);
    EXPECT(strcmp(small, "XXX"), 0);
    EXPECT(sockpass_server_dbus_address(s, NULL, 100), -EFAULT);
    /* The same path again: in use. */
    EXPECT(sockpass_bind_in_namespace(0, path, strlen(path), -1, SOCKPASS_OWNER_KEEP,
                                      SOCKPASS_OWNER_KEEP, -1) < 0, 1);
    sockpass_server_free(s);
    unlink(path);

    /* Notifier pair sanity: read end first. */
    EXPECT(sockpass_notifier_pair(pair), 0);
    EXPECT(write(pair[1], "x", 1), 1);
    close(pair[0]);
    close(pair[1]);

    memset(longpath, '/', sizeof(longpath));
    EXPECT(sockpass_bind_in_namespace(0, NULL, 5, -1, SOCKPASS_OWNER_KEEP, SOCKPASS_OWNER_KEEP, -1),
           -EFAULT);
    EXPECT(sockpass_bind_in_namespace(0, longpath, sizeof(longpath), -1, SOCKPASS_OWNER_KEEP,
                                      SOCKPASS_OWNER_KEEP, -1),
           -EINVAL); /* over SOCKPASS_MAX_UNIX_PATH */
    EXPECT(sockpass_bind_in_namespace(0, path, 0, -1, SOCKPASS_OWNER_KEEP, SOCKPASS_OWNER_KEEP, -1),
           -EINVAL);
    EXPECT(sockpass_bind_in_namespace(0, "rel.sock", 8, -1, SOCKPASS_OWNER_KEEP,
                                      SOCKPASS_OWNER_KEEP, -1),
           -EINVAL);
    EXPECT(sockpass_bind_in_namespace(-4, path, strlen(path), -1, SOCKPASS_OWNER_KEEP,
                                      SOCKPASS_OWNER_KEEP, -1),
           -EINVAL);
    EXPECT(sockpass_bind_in_namespace(0, path, strlen(path), 010000, SOCKPASS_OWNER_KEEP,
                                      SOCKPASS_OWNER_KEEP, -1),
           -EINVAL);
    EXPECT(sockpass_bind_in_namespace(0, path, strlen(path), -1, SOCKPASS_OWNER_KEEP,
                                      SOCKPASS_OWNER_KEEP, -2),
           -EINVAL);
    EXPECT(access(path, F_OK), -1); /* nothing was bound by a refused call */

    close(null_fd);
    close(udp);
    close(unbound);
    close(sp[0]);
    close(sp[1]);
}

int main(void) {
    char dir[] = "/tmp/sockpass-c-notify-XXXXXX", path[128];
    int before;

    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(path, sizeof(path), "%s/s.sock", dir);
    before = count_fds();
    lazy(path);
    manager_gone();
    eager(path);
    lazy_manager(path);
    bad_input(path);
    EXPECT(count_fds(), before);
    rmdir(dir);
    if (failures) {
        fprintf(stderr, "server_notify: %d failures\n", failures);
        return 1;
    }
    printf("server_notify: ok\n");
    return 0;
}
