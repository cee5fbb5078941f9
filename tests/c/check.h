/* Shared by the C tests: EXPECT(expr, want) counts a failure and prints
 * both codes with their messages; count_fds() counts this process's open
 * fds, for leak checks. Include after <sockpass.h>. */
#ifndef SOCKPASS_TEST_CHECK_H
#define SOCKPASS_TEST_CHECK_H

#include <dirent.h>
#include <stdio.h>

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

#endif
