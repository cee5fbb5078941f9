/* Every documented error code of the C API, against a real broker at
 * $SOCKPASS_SOCKET: each bad input gets its code, writes no out-parameter,
 * holds no socket and leaks no fd. Run by meson test, under ASan/UBSan and
 * under valgrind by tests/parts/20-c.sh. */
#define _GNU_SOURCE
#include <sockpass.h>

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "check.h"

static int untouched(const char *buf, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) {
        if (buf[i] != 'X') {
            return 0;
        }
    }
    return 1;
}

int main(void) {
    sockpass_client *c = NULL, *other = NULL, *sentinel = (sockpass_client *)&failures;
    char token[SOCKPASS_TOKEN_SIZE], saved[SOCKPASS_TOKEN_SIZE], small[8];
    char *longstr = malloc(SOCKPASS_MAX_STRING + 10);
    char app[300];
    int fds_before, fd, r;

    /* The default client keeps one connection for the life of the process:
     * open it before the baseline. */
    fd = sockpass_request_socket_default(SOCKPASS_PROTO_UDP, "127.0.0.1", 0, SOCKPASS_SHARE_NONE,
                                         "t", token, sizeof(token));
    EXPECT(fd >= 0, 1);
    EXPECT(sockpass_release_fd_default(fd), 0);
    close(fd);
    fds_before = count_fds();
    if (!longstr) {
        return 1;
    }
    memset(longstr, 'a', SOCKPASS_MAX_STRING + 9);
    longstr[SOCKPASS_MAX_STRING + 9] = 0;
    memset(app, 'b', sizeof(app) - 1);
    app[sizeof(app) - 1] = 0;

    /* Connecting. */
    EXPECT(sockpass_client_new(NULL, NULL), -EFAULT);
    c = sentinel;
    EXPECT(sockpass_client_new("/nonexistent/sockpassd.sock", &c), -SOCKPASS_E_BROKER_UNAVAILABLE);
    EXPECT(c == sentinel, 1); /* out-parameter untouched on failure */
    EXPECT(sockpass_client_new(longstr, &c), -ENAMETOOLONG);
    EXPECT(strlen(sockpass_last_error_message()) > 0, 1);
    EXPECT(sockpass_client_new(NULL, &c), 0);
    EXPECT(strlen(sockpass_last_error_message()), 0);
    EXPECT(sockpass_client_new(NULL, &other), 0);
    sockpass_client_free(NULL); /* a no-op */
    {
        /* A path is bytes, UTF-8 or not: a symlink named "\xff.sock" to
         * the broker's socket leads to it. */
        char dir[] = "/tmp/sockpass-bytes.XXXXXX", link[64];
        const char *target = getenv("SOCKPASS_SOCKET");
        sockpass_client *b = NULL;
        EXPECT(target != NULL && mkdtemp(dir) != NULL, 1);
        snprintf(link, sizeof link, "%s/\xff.sock", dir);
        EXPECT(symlink(target, link), 0);
        EXPECT(sockpass_client_new(link, &b), 0);
        EXPECT(sockpass_client_hello(b) > 0, 1);
        sockpass_client_free(b);
        unlink(link);
        rmdir(dir);
    }

    /* The handshake: optional, the broker's pid. */
    EXPECT(sockpass_client_hello(NULL), -EFAULT);
    EXPECT(sockpass_client_hello(c) > 0, 1);
    EXPECT(sockpass_client_hello(c) == sockpass_client_hello(other), 1);

    /* Requests. */
    memset(token, 'X', sizeof(token));
    EXPECT(sockpass_client_request_socket(NULL, SOCKPASS_PROTO_UDP, "127.0.0.1", 0,
                                          SOCKPASS_SHARE_NONE, "t", token, sizeof(token)), -EFAULT);
    EXPECT(sockpass_client_request_socket(c, SOCKPASS_PROTO_UDP, NULL, 0,
                                          SOCKPASS_SHARE_NONE, "t", token, sizeof(token)), -EFAULT);
    EXPECT(sockpass_client_request_socket(c, 99, "127.0.0.1", 0,
                                          SOCKPASS_SHARE_NONE, "t", token, sizeof(token)), -EINVAL);
    EXPECT(sockpass_client_request_socket(c, -1, "127.0.0.1", 0,
                                          SOCKPASS_SHARE_NONE, "t", token, sizeof(token)), -EINVAL);
    EXPECT(sockpass_client_request_socket(c, SOCKPASS_PROTO_UDP, "127.0.0.1", 0,
                                          7, "t", token, sizeof(token)), -EINVAL);
    EXPECT(sockpass_client_request_socket(c, SOCKPASS_PROTO_UDP, "127.0.0.1", 65536,
                                          SOCKPASS_SHARE_NONE, "t", token, sizeof(token)), -EINVAL);
    EXPECT(sockpass_client_request_socket(c, SOCKPASS_PROTO_UDP, "127.0.0.1", -1,
                                          SOCKPASS_SHARE_NONE, "t", token, sizeof(token)), -EINVAL);
    EXPECT(sockpass_client_request_socket(c, SOCKPASS_PROTO_UDP, "300.1.1.1", 0,
                                          SOCKPASS_SHARE_NONE, "t", token, sizeof(token)), -EINVAL);
    EXPECT(sockpass_client_request_socket(c, SOCKPASS_PROTO_UDP, "127.0.0.1", 0,
                                          SOCKPASS_SHARE_NONE, "\xff\xfe", token, sizeof(token)), -EINVAL);
    EXPECT(sockpass_client_request_socket(c, SOCKPASS_PROTO_UDP, "127.0.0.1", 0,
                                          SOCKPASS_SHARE_NONE, app, token, sizeof(token)), -ENAMETOOLONG);
    EXPECT(sockpass_client_request_socket(c, SOCKPASS_PROTO_UDP, longstr, 0,
                                          SOCKPASS_SHARE_NONE, "t", token, sizeof(token)), -ENAMETOOLONG);
    EXPECT(sockpass_client_request_socket(c, SOCKPASS_PROTO_UDP, "127.0.0.1", 0,
                                          SOCKPASS_SHARE_NONE, "t", small, sizeof(small)), -ENOBUFS);
    EXPECT(sockpass_client_request_spec(c, "udp:127.0.0.1:0?nosuchoption=1",
                                        SOCKPASS_SHARE_NONE, "t", token, sizeof(token)), -EINVAL);
    EXPECT(sockpass_client_request_spec(c, NULL, SOCKPASS_SHARE_NONE, "t", token, sizeof(token)), -EFAULT);
    EXPECT(untouched(token, sizeof(token)), 1);
    EXPECT(sockpass_client_release_all(c), 0); /* nothing was granted */

    /* A real grant, then sharing conflicts and releases. */
    fd = sockpass_client_request_socket(c, SOCKPASS_PROTO_UDP, "127.0.0.1", 0,
                                        SOCKPASS_SHARE_NONE, NULL, token, sizeof(token));
    EXPECT(fd >= 0, 1);
    EXPECT((int)strlen(token), SOCKPASS_TOKEN_SIZE - 1);
    memcpy(saved, token, sizeof(token));
    r = sockpass_client_request_spec(c, "tcp:127.0.0.1:0?backlog=8", SOCKPASS_SHARE_NONE, "a",
                                     token, sizeof(token));
    EXPECT(r >= 0, 1);
    if (r >= 0) {
        /* Port 0 is never shared; a fixed port held NONE is. */
        char spec[64];
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        int r2;
        getsockname(r, (struct sockaddr *)&ss, &len);
        snprintf(spec, sizeof(spec), "tcp:127.0.0.1:%d",
                 ntohs(((struct sockaddr_in *)&ss)->sin_port));
        EXPECT(sockpass_client_release_fd(c, r), 0);
        close(r);
        r = sockpass_client_request_spec(c, spec, SOCKPASS_SHARE_NONE, "a", NULL, 0);
        EXPECT(r >= 0, 1);
        r2 = sockpass_client_request_spec(other, spec, SOCKPASS_SHARE_ANY, "b", NULL, 0);
        EXPECT(r2, -SOCKPASS_E_SHARE_CONFLICT);
        EXPECT(sockpass_client_release_fd(c, r), 0);
        close(r);
    }

    EXPECT(sockpass_client_release(c, NULL), -EFAULT);
    EXPECT(sockpass_client_release(c, "not-a-token"), -EINVAL);
    EXPECT(sockpass_client_release(c, "000000000000000000000000000000000000000000000000"),
           -SOCKPASS_E_UNKNOWN_TOKEN);
    EXPECT(sockpass_client_release(other, saved), -SOCKPASS_E_UNKNOWN_TOKEN); /* not its own */
    EXPECT(sockpass_client_release(NULL, saved), -EFAULT);
    EXPECT(sockpass_client_release_fd(NULL, 3), -EFAULT);
    EXPECT(sockpass_client_release_all(NULL), -EFAULT);
    EXPECT(sockpass_client_release_fd(c, -1), -EINVAL);
    EXPECT(sockpass_client_release_fd(c, 12345), -SOCKPASS_E_UNKNOWN_TOKEN);
    {
        /* release_many checks every token before sending any: a bad one
         * fails the call, releases nothing and writes no result. */
        const char *bad_null[] = {saved, NULL};
        const char *bad_form[] = {saved, "not-a-token"};
        int res[2] = {12345, 12345};
        EXPECT(sockpass_client_release_many(NULL, bad_form, 2, res), -EFAULT);
        EXPECT(sockpass_client_release_many(c, NULL, 2, res), -EFAULT);
        EXPECT(sockpass_client_release_many(c, bad_null, 2, res), -EFAULT);
        EXPECT(sockpass_client_release_many(c, bad_form, 2, res), -EINVAL);
        EXPECT(strstr(sockpass_last_error_message(), "tokens[1]") != NULL, 1);
        EXPECT(sockpass_client_release_many(c, NULL, 0, NULL), 0);
        EXPECT(res[0] == 12345 && res[1] == 12345, 1);
    }
    EXPECT(sockpass_client_release(c, saved), 0);
    EXPECT(sockpass_client_release(c, saved), -SOCKPASS_E_UNKNOWN_TOKEN); /* twice */
    close(fd);

    {
        /* Many references at once, pipelined: one result per token, in
         * order; an unknown token fails alone. Sending them all before
         * reading deadlocked at about 500. */
        enum { N = 1200 };
        static char toks[N][SOCKPASS_TOKEN_SIZE];
        static const char *ptrs[N + 1];
        static int res[N + 1];
        char spec[64];
        int i, ok = 1;
        snprintf(spec, sizeof(spec), "udp:127.0.0.1:%d", free_udp_port());
        for (i = 0; i < N; i++) {
            r = sockpass_client_request_spec(c, spec, SOCKPASS_SHARE_ANY, "m", toks[i], sizeof(toks[i]));
            if (r < 0) {
                EXPECT(r, 0);
                break;
            }
            close(r);
            ptrs[i] = toks[i];
        }
        if (i == N) {
            ptrs[N] = "000000000000000000000000000000000000000000000000";
            EXPECT(sockpass_client_release_many(c, ptrs, N + 1, res), N);
            for (i = 0; i < N; i++) {
                ok &= res[i] == N - 1 - i;
            }
            EXPECT(ok, 1);
            EXPECT(res[N], -SOCKPASS_E_UNKNOWN_TOKEN);
            EXPECT(sockpass_client_release_many(c, ptrs, 1, NULL), 0); /* already released */
        }
        EXPECT(sockpass_client_release_all(c), 0);
    }

    /* Reservations. */
    EXPECT(sockpass_client_reserve_spec(c, "udp:127.0.0.1:0", SOCKPASS_SHARE_NONE, "r", NULL, 0), -EFAULT);
    EXPECT(sockpass_client_reserve_spec(NULL, "udp:127.0.0.1:0", SOCKPASS_SHARE_NONE, "r", token,
                                        sizeof(token)), -EFAULT);
    EXPECT(sockpass_client_reserve_spec(c, NULL, SOCKPASS_SHARE_NONE, "r", token, sizeof(token)), -EFAULT);
    EXPECT(sockpass_client_pickup(NULL, saved), -EFAULT);
    EXPECT(sockpass_client_pickup(c, NULL), -EFAULT);
    EXPECT(sockpass_client_pickup(other, "000000000000000000000000000000000000000000000000"),
           -SOCKPASS_E_UNKNOWN_TOKEN);

    /* The default client and the error strings. */
    EXPECT(sockpass_request_socket_default(SOCKPASS_PROTO_TCP, "::1::", 0, SOCKPASS_SHARE_NONE,
                                           "t", token, sizeof(token)), -EINVAL);
    EXPECT(sockpass_release_socket_default("zz"), -EINVAL);
    EXPECT(sockpass_release_socket_default(NULL), -EFAULT);
    EXPECT(sockpass_request_socket_default(SOCKPASS_PROTO_UDP, NULL, 0, SOCKPASS_SHARE_NONE, "t", token,
                                           sizeof(token)), -EFAULT);
    EXPECT(sockpass_release_fd_default(-5), -EINVAL);
    EXPECT(strcmp(sockpass_strerror(-SOCKPASS_E_SHARE_CONFLICT), "sharing conflict"), 0);
    EXPECT(strlen(sockpass_strerror(-SOCKPASS_E_UNKNOWN_TOKEN)) > 0, 1);
    EXPECT(strlen(sockpass_strerror(-EINVAL)) > 0, 1);
    EXPECT(strlen(sockpass_strerror(-2147483647 - 1)) > 0, 1);
    EXPECT(strlen(sockpass_version()) > 0, 1);

    sockpass_client_free(c);
    sockpass_client_free(other);
    free(longstr);
    EXPECT(count_fds(), fds_before);
    if (failures) {
        fprintf(stderr, "bad_input: %d failure(s)\n", failures);
        return 1;
    }
    printf("bad_input: all checks passed\n");
    return 0;
}
