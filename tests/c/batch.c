/* Batch requests (sockpass_client_request_many) against a real broker at
 * $SOCKPASS_SOCKET: more sockets than one message carries, all or nothing on
 * a sharing conflict (nothing written, no fd left, the new socket closed),
 * and bad input. No fd leaks. Run by meson test, under valgrind by
 * tests/parts/20-c.sh. */
#define _GNU_SOURCE
#include <sockpass.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>

#include "check.h"

#define N 40

/* Can a UDP socket bind 127.0.0.1:port now (nobody holds it)? */
static int udp_free(int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), ok;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ok = s >= 0 && bind(s, (struct sockaddr *)&a, sizeof a) == 0;
    close(s);
    return ok;
}

int main(void) {
    sockpass_client *c = NULL, *anchor = NULL;
    static char specbuf[N][40], tokens[N * SOCKPASS_TOKEN_SIZE];
    const char *specs[N];
    int shares[N], fds[N], fds_before = count_fds(), i, distinct = 1, p, x;

    EXPECT(sockpass_client_new(NULL, &c), 0);
    EXPECT(sockpass_client_new(NULL, &anchor), 0);

    /* 1. N sockets (two messages), each with its fd and token. */
    for (i = 0; i < N; i++) {
        snprintf(specbuf[i], sizeof specbuf[i], "udp:127.0.0.1:%d", free_udp_port());
        specs[i] = specbuf[i];
        shares[i] = SOCKPASS_SHARE_ANY;
    }
    EXPECT(sockpass_client_request_many(c, specs, shares, NULL, N, fds, tokens, sizeof tokens), N);
    for (i = 0; i < N; i++) {
        if (fcntl(fds[i], F_GETFD) != FD_CLOEXEC || strlen(tokens + i * SOCKPASS_TOKEN_SIZE) != 48) {
            distinct = 0;
        }
        if (i > 0 && fds[i] == fds[i - 1]) {
            distinct = 0;
        }
    }
    EXPECT(distinct, 1);
    EXPECT(sockpass_client_release(c, tokens + 5 * SOCKPASS_TOKEN_SIZE), 0);
    EXPECT(sockpass_client_release_all(c), N - 1);
    for (i = 0; i < N; i++) {
        close(fds[i]);
    }

    /* 2. All or nothing: the second spec is held exclusively by another. */
    p = free_udp_port();
    while ((x = free_udp_port()) == p) {}
    snprintf(specbuf[0], sizeof specbuf[0], "udp:127.0.0.1:%d", p);
    snprintf(specbuf[1], sizeof specbuf[1], "udp:127.0.0.1:%d", x);
    i = sockpass_client_request_spec(anchor, specbuf[1], SOCKPASS_SHARE_NONE, "other", NULL, 0);
    EXPECT(i >= 0, 1);
    fds[0] = fds[1] = -7;
    tokens[0] = 'z';
    EXPECT(sockpass_client_request_many(c, specs, shares, NULL, 2, fds, tokens, sizeof tokens),
           -SOCKPASS_E_SHARE_CONFLICT);
    EXPECT(strncmp(sockpass_last_error_message(), "spec 1 of 2: ", 13), 0);
    EXPECT(fds[0] == -7 && fds[1] == -7 && tokens[0] == 'z', 1);
    EXPECT(udp_free(p), 1);
    EXPECT(sockpass_client_release_all(c), 0);
    close(i);

    /* 3. Bad input: refused before anything is sent. */
    EXPECT(sockpass_client_request_many(NULL, specs, shares, NULL, 1, fds, NULL, 0), -EFAULT);
    EXPECT(sockpass_client_request_many(c, NULL, shares, NULL, 1, fds, NULL, 0), -EFAULT);
    EXPECT(sockpass_client_request_many(c, specs, NULL, NULL, 1, fds, NULL, 0), -EFAULT);
    EXPECT(sockpass_client_request_many(c, specs, shares, NULL, 1, NULL, NULL, 0), -EFAULT);
    EXPECT(sockpass_client_request_many(c, specs, shares, NULL, 0, NULL, NULL, 0), 0);
    EXPECT(sockpass_client_request_many(c, specs, shares, NULL, 2, fds, tokens, 60), -ENOBUFS);
    specs[1] = "udp:nowhere";
    EXPECT(sockpass_client_request_many(c, specs, shares, NULL, 2, fds, NULL, 0), -EINVAL);
    EXPECT(strncmp(sockpass_last_error_message(), "spec 1 of 2: ", 13), 0);
    specs[1] = NULL;
    EXPECT(sockpass_client_request_many(c, specs, shares, NULL, 2, fds, NULL, 0), -EFAULT);
    specs[1] = specbuf[1];
    shares[1] = 9;
    EXPECT(sockpass_client_request_many(c, specs, shares, NULL, 2, fds, NULL, 0), -EINVAL);
    EXPECT(sockpass_client_release_all(c), 0);

    sockpass_client_free(c);
    sockpass_client_free(anchor);
    EXPECT(count_fds(), fds_before);
    if (failures) {
        fprintf(stderr, "batch: %d failure(s)\n", failures);
        return 1;
    }
    printf("batch: ok\n");
    return 0;
}
