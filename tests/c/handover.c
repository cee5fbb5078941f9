/* A broker connection handed in by fd (sockpass_client_from_fd), per-worker
 * sockets in a reuseport group (sockpass_client_request_spec_flags) and an
 * in-place upgrade (sockpass_client_upgrade), against a real broker at
 * $SOCKPASS_SOCKET; each with its bad input. No fd leaks. Run by meson test,
 * under ASan/UBSan and under valgrind by tests/parts/20-c.sh. */
#define _GNU_SOURCE
#include <sockpass.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "check.h"

/* A connection to the broker, as a manager would make it for a container. */
static int connect_broker(void) {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    const char *path = getenv("SOCKPASS_SOCKET");
    int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (!path || strlen(path) >= sizeof a.sun_path || s < 0) {
        fprintf(stderr, "handover: no $SOCKPASS_SOCKET\n");
        exit(1);
    }
    strcpy(a.sun_path, path);
    if (connect(s, (struct sockaddr *)&a, sizeof a)) {
        perror("connect");
        exit(1);
    }
    return s;
}

static int is_open(int fd) { return fcntl(fd, F_GETFD) >= 0; }

static ino_t inode(int fd) {
    struct stat st;
    return fstat(fd, &st) == 0 ? st.st_ino : 0;
}

int main(void) {
    sockpass_client *mgr = NULL, *handed = NULL, *sentinel = (sockpass_client *)&failures;
    char token[SOCKPASS_TOKEN_SIZE], spec[64];
    int fds_before = count_fds(), fd, fd2, port, pipefd[2], r;

    EXPECT(sockpass_client_new(NULL, &mgr), 0);

    /* 1. A handed-in connection picks up what the manager reserved. */
    port = sockpass_client_reserve_spec(mgr, "udp:127.0.0.1:0", SOCKPASS_SHARE_NONE, "ctr", token,
                                        sizeof token);
    EXPECT(port > 0, 1);
    EXPECT(sockpass_client_from_fd(connect_broker(), &handed), 0);
    fd = sockpass_client_pickup(handed, token);
    EXPECT(fd >= 0, 1);
    EXPECT(sockpass_client_release_fd(handed, fd), 0);
    close(fd);
    sockpass_client_free(handed);
    /* Bad input: each fd is taken over and closed, the out-parameter untouched. */
    handed = sentinel;
    EXPECT(pipe2(pipefd, O_CLOEXEC), 0);
    EXPECT(sockpass_client_from_fd(pipefd[0], &handed), -ENOTSOCK);
    EXPECT(is_open(pipefd[0]), 0);
    close(pipefd[1]);
    EXPECT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pipefd), 0);
    EXPECT(sockpass_client_from_fd(pipefd[0], &handed), -EPROTOTYPE);
    EXPECT(is_open(pipefd[0]), 0);
    close(pipefd[1]);
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    EXPECT(sockpass_client_from_fd(fd, &handed), -SOCKPASS_E_BROKER_UNAVAILABLE);
    EXPECT(is_open(fd), 0);
    EXPECT(sockpass_client_from_fd(999, &handed), -EBADF);
    EXPECT(handed == sentinel, 1);
    fd = connect_broker();
    EXPECT(sockpass_client_from_fd(fd, NULL), -EFAULT);
    EXPECT(is_open(fd), 1); /* not taken: there was nowhere to put the client */
    close(fd);

    /* 2. Two workers, each with its own socket in one reuseport group. */
    port = free_udp_port();
    snprintf(spec, sizeof spec, "udp:127.0.0.1:%d?reuseport=1", port);
    fd = sockpass_client_request_spec_flags(mgr, spec, SOCKPASS_SHARE_SAMEAPP, "srv",
                                            SOCKPASS_REQUEST_PER_WORKER, NULL, 0);
    fd2 = sockpass_client_request_spec_flags(mgr, spec, SOCKPASS_SHARE_SAMEAPP, "srv",
                                             SOCKPASS_REQUEST_PER_WORKER, token, sizeof token);
    EXPECT(fd >= 0 && fd2 >= 0, 1);
    EXPECT(inode(fd) != inode(fd2), 1);
    EXPECT(sockpass_client_release(mgr, token), 0); /* its own socket: no one else on it */
    EXPECT(sockpass_client_request_spec_flags(mgr, spec, SOCKPASS_SHARE_SAMEAPP, "srv", 0x80, NULL, 0),
           -EINVAL);
    snprintf(spec, sizeof spec, "udp:127.0.0.1:%d", port);
    EXPECT(sockpass_client_request_spec_flags(mgr, spec, SOCKPASS_SHARE_SAMEAPP, "srv",
                                              SOCKPASS_REQUEST_PER_WORKER, NULL, 0),
           -EINVAL);
    EXPECT(sockpass_client_request_spec_flags(NULL, spec, 0, NULL, 0, NULL, 0), -EFAULT);
    close(fd2);

    /* 3. An upgrade in place keeps the first worker's socket and reference. */
    r = sockpass_client_upgrade(mgr, NULL);
    EXPECT(r > 0, 1);
    EXPECT(sockpass_client_upgrade(mgr, "relative/sockpassd"), -EINVAL);
    EXPECT(sockpass_client_upgrade(mgr, "/bin/true"), -ENOEXEC);
    EXPECT(sockpass_client_upgrade(NULL, NULL), -EFAULT);
    EXPECT(sockpass_client_release_fd(mgr, fd), 0);
    close(fd);

    sockpass_client_free(mgr);
    EXPECT(count_fds(), fds_before);
    if (failures) {
        fprintf(stderr, "handover: %d failure(s)\n", failures);
        return 1;
    }
    printf("handover: ok\n");
    return 0;
}
