/* --catch-bind from C, with real processes: a python3 child started with
 * sockpass_spawn_catch_bind("inet", share any, app "ctest") binds a UDP
 * port itself, and the socket it holds is the broker's (a request for the
 * same spec with share any gets the same inode); a datagram sent to that
 * port reaches the child's socket; bad input gets its documented code and
 * starts nothing. Run by meson test against a real sockpassd. */
#define _GNU_SOURCE
#include <sockpass.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "check.h"

/* Binds UDP 127.0.0.1:PORT (argv[1]), reports its socket's inode on fd 3,
 * echoes one datagram, waits to be stopped. */
static const char *child_py =
    "import os, socket, sys, time\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.bind(('127.0.0.1', int(sys.argv[1])))\n"
    "os.write(3, b'%d\\n' % os.fstat(s.fileno()).st_ino)\n"
    "d, a = s.recvfrom(100)\n"
    "s.sendto(b'caught ' + d, a)\n"
    "time.sleep(60)\n";

static void caught_bind_is_the_brokers_socket(void) {
    sockpass_spawn *s = NULL;
    sockpass_child *c = NULL;
    char port_s[16], line[64] = {0}, token[SOCKPASS_TOKEN_SIZE], buf[64];
    int port = free_udp_port(), out[2], fd, st = -1, u;
    struct stat sb;
    struct sockaddr_in to = {.sin_family = AF_INET};
    ssize_t n;

    snprintf(port_s, sizeof port_s, "%d", port);
    EXPECT(pipe2(out, O_CLOEXEC), 0);
    EXPECT(sockpass_spawn_new("python3", &s), 0);
    EXPECT(sockpass_spawn_arg(s, "-c"), 0);
    EXPECT(sockpass_spawn_arg(s, child_py), 0);
    EXPECT(sockpass_spawn_arg(s, port_s), 0);
    EXPECT(sockpass_spawn_add_fd(s, out[1], "report"), 0);
    close(out[1]);
    EXPECT(sockpass_spawn_catch_bind(s, "inet", NULL, SOCKPASS_SHARE_ANY, "ctest"), 0);
    EXPECT(sockpass_spawn_start(s, &c) > 0, 1);
    if (!c) {
        close(out[0]);
        return;
    }
    n = read(out[0], line, sizeof line - 1);
    EXPECT(n > 1, 1);
    close(out[0]);
    /* The broker holds that socket: sharing it gives the same inode. */
    fd = sockpass_request_socket_default(SOCKPASS_PROTO_UDP, "127.0.0.1", port,
                                         SOCKPASS_SHARE_ANY, "ctest", token, sizeof token);
    EXPECT(fd >= 0, 1);
    if (fd >= 0) {
        EXPECT(fstat(fd, &sb), 0);
        EXPECT(strtoull(line, NULL, 10) == (unsigned long long)sb.st_ino, 1);
        EXPECT(sockpass_release_socket_default(token) >= 0, 1);
        close(fd);
    }
    /* And it is bound where the child asked: it answers there. */
    u = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    to.sin_port = htons(port);
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT((int)sendto(u, "hi", 2, 0, (struct sockaddr *)&to, sizeof to), 2);
    n = recv(u, buf, sizeof buf - 1, 0);
    buf[n > 0 ? n : 0] = 0;
    EXPECT(strcmp(buf, "caught hi"), 0);
    close(u);
    EXPECT(sockpass_child_kill(c, SIGTERM), 0);
    EXPECT(sockpass_child_wait(c, -1, &st), 1);
    EXPECT(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM, 1);
    sockpass_child_free(c);
}

static void bad_input(void) {
    sockpass_spawn *s = NULL;
    int before = count_fds();

    EXPECT(sockpass_spawn_catch_bind(NULL, NULL, NULL, SOCKPASS_SHARE_NONE, NULL), -EFAULT);
    EXPECT(sockpass_spawn_new("true", &s), 0);
    EXPECT(sockpass_spawn_catch_bind(s, "80-70", NULL, SOCKPASS_SHARE_NONE, NULL), -EINVAL);
    EXPECT(sockpass_spawn_catch_bind(s, "0", NULL, SOCKPASS_SHARE_NONE, NULL), -EINVAL);
    EXPECT(sockpass_spawn_catch_bind(s, "privileged", NULL, 7, NULL), -EINVAL);
    /* No broker there: the start fails, and nothing runs. */
    EXPECT(sockpass_spawn_catch_bind(s, NULL, "/nonexistent/sockpassd.sock", SOCKPASS_SHARE_NONE, NULL), 0);
    {
        sockpass_child *c = NULL;
        EXPECT(sockpass_spawn_start(s, &c), -SOCKPASS_E_BROKER_UNAVAILABLE);
        EXPECT(c == NULL, 1);
    }
    EXPECT(count_fds(), before);
}

int main(void) {
    caught_bind_is_the_brokers_socket();
    bad_input();
    if (failures) {
        fprintf(stderr, "%d failure(s)\n", failures);
        return 1;
    }
    printf("catch_bind: ok\n");
    return 0;
}
