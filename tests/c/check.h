/* Shared by the C tests: EXPECT(expr, want) counts a failure and prints
 * both codes with their messages; count_fds() counts this process's open
 * fds, for leak checks; free_udp_port() picks a port nobody holds.
 * Include after <sockpass.h>. */
#ifndef SOCKPASS_TEST_CHECK_H
#define SOCKPASS_TEST_CHECK_H

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static int failures;

#define EXPECT(expr, want)                                                       \
    do {                                                                         \
        int got_ = (expr);                                                       \
        if (got_ != (want)) {                                                    \
            fprintf(stderr, "%s:%d: %s = %d (%s: %s), want %d (%s)\n", __FILE__,  \
                    __LINE__, #expr, got_, sockpass_strerror(got_),              \
                    sockpass_last_error_message(), (want), sockpass_strerror(want)); \
            failures++;                                                          \
        }                                                                        \
    } while (0)

static int count_fds(void) {
    int n = 0;
    struct dirent *e;
    DIR *d = opendir("/proc/self/fd");
    if (!d) {
        return -1;
    }
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] != '.') {
            n++;
        }
    }
    closedir(d);
    return n;
}

/* A UDP port on 127.0.0.1 that nobody holds now. */
static inline int free_udp_port(void) {
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t n = sizeof a;
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), p;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) || getsockname(s, (struct sockaddr *)&a, &n)) {
        perror("free_udp_port");
        exit(1);
    }
    p = ntohs(a.sin_port);
    close(s);
    return p;
}

#endif
