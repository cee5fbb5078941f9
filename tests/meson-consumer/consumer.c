/* A downstream program: request a UDP socket, send a datagram to itself
 * through it, release it. The broker is at $SOCKPASS_SOCKET. */
#define _GNU_SOURCE
#include <sockpass.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(void) {
    char token[SOCKPASS_TOKEN_SIZE], buf[16];
    struct sockaddr_in me;
    socklen_t len = sizeof(me);
    sockpass_client *c = NULL;
    int fd, r = sockpass_client_new(NULL, &c);

    if (r < 0) {
        fprintf(stderr, "consumer: %s\n", sockpass_strerror(r));
        return 1;
    }
    fd = sockpass_client_request_socket(c, SOCKPASS_PROTO_UDP, "127.0.0.1", 0,
                                        SOCKPASS_SHARE_NONE, "consumer", token, sizeof(token));
    if (fd < 0 || getsockname(fd, (struct sockaddr *)&me, &len) < 0 ||
        sendto(fd, "ping", 4, 0, (struct sockaddr *)&me, len) != 4 ||
        recv(fd, buf, sizeof(buf), 0) != 4 || memcmp(buf, "ping", 4) != 0) {
        fprintf(stderr, "consumer: request or traffic failed: %s\n", sockpass_last_error_message());
        return 1;
    }
    r = sockpass_client_release(c, token);
    close(fd);
    sockpass_client_free(c);
    if (r != 0) {
        fprintf(stderr, "consumer: release: %s\n", sockpass_strerror(r));
        return 1;
    }
    printf("consumer: ok (sockpass %s)\n", sockpass_version());
    return 0;
}
