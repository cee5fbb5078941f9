/* sockpass_client_new only connects; against a broker at its connection
 * limit (run-example.py "limit2": --max-connections 2) the refusal comes
 * from sockpass_client_hello, or from the first request, as
 * -SOCKPASS_E_LIMIT_REACHED. Nothing leaks, and a place freed is usable. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <string.h>
#include <time.h>
#include <sockpass.h>
#include "check.h"

static int request(sockpass_client *c) {
    int fd = sockpass_client_request_socket(c, SOCKPASS_PROTO_UDP, "127.0.0.1", 0,
                                            SOCKPASS_SHARE_NONE, "limits", NULL, 0);
    if (fd >= 0) {
        close(fd);
        return 0;
    }
    return fd;
}

int main(void) {
    sockpass_client *a = NULL, *b = NULL, *c = NULL;
    int fds_before = count_fds();

    EXPECT(sockpass_client_new(NULL, &a), 0);
    EXPECT(sockpass_client_hello(a) > 0, 1);
    EXPECT(sockpass_client_new(NULL, &b), 0);
    EXPECT(sockpass_client_hello(b) > 0, 1);

    /* The third connection: connected, then refused at the handshake. */
    for (int i = 0; i < 3; i++) {
        EXPECT(sockpass_client_new(NULL, &c), 0);
        EXPECT(sockpass_client_hello(c), -SOCKPASS_E_LIMIT_REACHED);
        EXPECT(strstr(sockpass_last_error_message(), "connections") != NULL, 1);
        sockpass_client_free(c);
    }
    /* Without a handshake, the first request is refused the same way. */
    EXPECT(sockpass_client_new(NULL, &c), 0);
    EXPECT(request(c), -SOCKPASS_E_LIMIT_REACHED);
    sockpass_client_free(c);

    /* The default client: refused, and connected anew by the next call
     * (refused again, not "broker unavailable" from a dead connection). */
    for (int i = 0; i < 2; i++) {
        EXPECT(sockpass_request_socket_default(SOCKPASS_PROTO_UDP, "127.0.0.1", 0,
                                               SOCKPASS_SHARE_NONE, "limits", NULL, 0),
               -SOCKPASS_E_LIMIT_REACHED);
    }

    /* The clients inside the limit are served throughout. */
    EXPECT(request(a), 0);
    EXPECT(request(b), 0);

    /* A place freed is taken by the next client (the broker notices the
     * hang-up asynchronously: a bounded wait). */
    sockpass_client_free(b);
    int ok = 0;
    for (int i = 0; i < 500 && !ok; i++) {
        EXPECT(sockpass_client_new(NULL, &c), 0);
        ok = sockpass_client_hello(c) > 0;
        if (ok) {
            EXPECT(request(c), 0);
        } else {
            struct timespec t = {0, 20 * 1000 * 1000};
            nanosleep(&t, NULL);
        }
        sockpass_client_free(c);
    }
    EXPECT(ok, 1);
    /* The default client finds the freed place too. */
    ok = 0;
    for (int i = 0; i < 500 && !ok; i++) {
        int fd = sockpass_request_socket_default(SOCKPASS_PROTO_UDP, "127.0.0.1", 0,
                                                 SOCKPASS_SHARE_NONE, "limits", NULL, 0);
        ok = fd >= 0;
        if (ok) {
            EXPECT(sockpass_release_fd_default(fd), 0);
            close(fd);
        } else {
            EXPECT(fd, -SOCKPASS_E_LIMIT_REACHED);
            struct timespec t = {0, 20 * 1000 * 1000};
            nanosleep(&t, NULL);
        }
    }
    EXPECT(ok, 1);
    sockpass_client_free(a);
    /* The default client keeps its one connection. */
    EXPECT(count_fds(), fds_before + 1);
    if (failures) {
        fprintf(stderr, "limits: %d failure(s)\n", failures);
        return 1;
    }
    printf("limits: ok\n");
    return 0;
}
