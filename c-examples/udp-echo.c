/* udp-echo: get a UDP socket from sockpassd and answer one datagram.
 *
 *   udp-echo ADDRESS PORT
 *
 * Uses the process-wide default client (the broker at $SOCKPASS_SOCKET or
 * the default path). Prints "ready PORT" once the socket is bound, echoes
 * the first datagram back to its sender, releases the socket and exits. */
#define _GNU_SOURCE
#include <sockpass.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>

int main(int argc, char **argv) {
    char token[SOCKPASS_TOKEN_SIZE];
    struct sockaddr_storage peer;
    socklen_t peer_len = sizeof(peer);
    struct sockaddr_storage me;
    socklen_t me_len = sizeof(me);
    char buf[1500];
    ssize_t n;
    int fd, r, port;

    if (argc != 3) {
        fprintf(stderr, "usage: %s ADDRESS PORT\n", argv[0]);
        return 2;
    }
    fd = sockpass_request_socket_default(SOCKPASS_PROTO_UDP, argv[1], atoi(argv[2]),
                                         SOCKPASS_SHARE_NONE, "udp-echo",
                                         token, sizeof(token));
    if (fd < 0) {
        fprintf(stderr, "udp-echo: %s: %s\n", sockpass_strerror(fd),
                sockpass_last_error_message());
        return 1;
    }
    if (getsockname(fd, (struct sockaddr *)&me, &me_len) < 0) {
        perror("getsockname");
        return 1;
    }
    port = ntohs(me.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&me)->sin6_port
                                          : ((struct sockaddr_in *)&me)->sin_port);
    printf("ready %d\n", port);
    fflush(stdout);

    n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&peer, &peer_len);
    if (n < 0 || sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&peer, peer_len) != n) {
        perror("udp-echo");
        return 1;
    }
    /* Release by token (by fd works too: sockpass_release_fd_default). */
    r = sockpass_release_socket_default(token);
    if (r < 0) {
        fprintf(stderr, "udp-echo: release: %s\n", sockpass_strerror(r));
        return 1;
    }
    close(fd);
    return 0;
}
