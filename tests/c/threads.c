/* The C API from many threads at once, against a real broker at
 * $SOCKPASS_SOCKET: one client shared by 16 threads, the process-wide
 * default client used by 16 threads, and a thread-local last error that
 * stays each thread's own. Reference counts are exact afterwards and no fd
 * leaks. Run by meson test, under ASan/UBSan and under valgrind by
 * tests/parts/20-c.sh. */
#define _GNU_SOURCE
#include <sockpass.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"

#define THREADS 16
#define ROUNDS 100
#define KEEP_MAX 4

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static sockpass_client *shared;
/* Holds one reference to the port for the whole test (see main). */
static sockpass_client *anchor;
static int port;

/* EXPECT's counter is not atomic; threads check with this instead. */
#define T_EXPECT(expr, want)                 \
    do {                                     \
        pthread_mutex_lock(&lock);           \
        EXPECT(expr, want);                  \
        pthread_mutex_unlock(&lock);         \
    } while (0)

struct kept {
    int n;
    int fds[KEEP_MAX];
    char tokens[KEEP_MAX][SOCKPASS_TOKEN_SIZE];
};

static struct kept kept[THREADS];

/* Request and release on the shared client, by token and by fd, plus an
 * unshared ephemeral socket each round; keep i % 4 references at the end. */
static void *on_shared_client(void *arg) {
    int i = (int)(long)arg, k;
    for (k = 0; k < ROUNDS; k++) {
        char tok[SOCKPASS_TOKEN_SIZE], tok2[SOCKPASS_TOKEN_SIZE];
        int fd = sockpass_client_request_socket(shared, SOCKPASS_PROTO_UDP, "127.0.0.1", port,
                                                SOCKPASS_SHARE_ANY, "threads", tok, sizeof tok);
        int fd2 = sockpass_client_request_socket(shared, SOCKPASS_PROTO_TCP, "127.0.0.1", 0,
                                                 SOCKPASS_SHARE_NONE, "threads", tok2, sizeof tok2);
        T_EXPECT(fd >= 0 && fd2 >= 0, 1);
        if (fd < 0 || fd2 < 0) {
            return NULL;
        }
        T_EXPECT(sockpass_client_release_fd(shared, fd2), 0);
        close(fd2);
        if (k >= ROUNDS - i % 4) {
            struct kept *kp = &kept[i];
            kp->fds[kp->n] = fd;
            memcpy(kp->tokens[kp->n++], tok, sizeof tok);
            continue;
        }
        /* Release before close, so the fd number is not reused meanwhile. */
        T_EXPECT(k % 2 ? sockpass_client_release(shared, tok) >= 0
                       : sockpass_client_release_fd(shared, fd) >= 0,
                 1);
        close(fd);
    }
    return NULL;
}

/* The same through the default client; keep i % 3 references. */
static void *on_default_client(void *arg) {
    int i = (int)(long)arg, k;
    for (k = 0; k < ROUNDS; k++) {
        char tok[SOCKPASS_TOKEN_SIZE];
        int fd = sockpass_request_socket_default(SOCKPASS_PROTO_UDP, "127.0.0.1", port,
                                                 SOCKPASS_SHARE_SAMEAPP, "threads", tok, sizeof tok);
        T_EXPECT(fd >= 0, 1);
        if (fd < 0) {
            return NULL;
        }
        if (k >= ROUNDS - i % 3) {
            struct kept *kp = &kept[i];
            kp->fds[kp->n] = fd;
            memcpy(kp->tokens[kp->n++], tok, sizeof tok);
            continue;
        }
        T_EXPECT(k % 2 ? sockpass_release_socket_default(tok) >= 0 : sockpass_release_fd_default(fd) >= 0, 1);
        close(fd);
    }
    return NULL;
}

static pthread_barrier_t both_failed_or_not;

/* Even threads fail (each with its own bad address), odd ones succeed;
 * after all have called, each thread's last error is still its own. */
static void *last_error_is_per_thread(void *arg) {
    int i = (int)(long)arg;
    char bad[32];
    snprintf(bad, sizeof bad, "not-an-address-%d", i);
    if (i % 2 == 0) {
        T_EXPECT(sockpass_client_request_socket(shared, SOCKPASS_PROTO_UDP, bad, 1, SOCKPASS_SHARE_ANY,
                                                "t", NULL, 0),
                 -EINVAL);
    } else {
        int fd = sockpass_client_request_socket(shared, SOCKPASS_PROTO_UDP, "127.0.0.1", 0,
                                                SOCKPASS_SHARE_NONE, "t", NULL, 0);
        T_EXPECT(fd >= 0, 1);
        T_EXPECT(sockpass_client_release_fd(shared, fd), 0);
        close(fd);
    }
    pthread_barrier_wait(&both_failed_or_not);
    const char *msg = sockpass_last_error_message();
    if (i % 2 == 0) {
        T_EXPECT(strstr(msg, bad) != NULL, 1);
    }
    /* No thread sees another's address in its message. */
    for (int j = 0; j < THREADS; j += 2) {
        char other[32];
        snprintf(other, sizeof other, "not-an-address-%d", j);
        if (j != i && strstr(msg, other) != NULL) {
            T_EXPECT(j, i);
        }
    }
    return NULL;
}

static void run_threads(void *(*f)(void *)) {
    pthread_t t[THREADS];
    long i;
    memset(kept, 0, sizeof kept);
    for (i = 0; i < THREADS; i++) {
        if (pthread_create(&t[i], NULL, f, (void *)i)) {
            perror("pthread_create");
            exit(1);
        }
    }
    for (i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
    }
}

int main(void) {
    int i, j, fds_before, want, fd, anchor_fd;
    char tok[SOCKPASS_TOKEN_SIZE];

    /* The default client's connection lives as long as the process: open it
     * before the fd baseline. */
    fd = sockpass_request_socket_default(SOCKPASS_PROTO_UDP, "127.0.0.1", 0, SOCKPASS_SHARE_NONE, "t",
                                         NULL, 0);
    EXPECT(fd >= 0, 1);
    EXPECT(sockpass_release_fd_default(fd), 0);
    close(fd);
    fds_before = count_fds();
    port = free_udp_port();
    EXPECT(sockpass_client_new(NULL, &shared), 0);
    /* Another client holds the port throughout, so the socket never closes
     * while threads race for it: UDP has SO_REUSEADDR off, so a socket
     * re-created while a thread still has the old one open (it releases
     * before it closes) would not bind. */
    EXPECT(sockpass_client_new(NULL, &anchor), 0);
    anchor_fd = sockpass_client_request_socket(anchor, SOCKPASS_PROTO_UDP, "127.0.0.1", port,
                                               SOCKPASS_SHARE_ANY, "threads", NULL, 0);
    EXPECT(anchor_fd >= 0, 1);

    /* 1. One client, 16 threads. */
    run_threads(on_shared_client);
    for (want = 0, i = 0; i < THREADS; i++) {
        want += i % 4;
    }
    /* One more reference, released: the broker tells how many are left. */
    fd = sockpass_client_request_socket(shared, SOCKPASS_PROTO_UDP, "127.0.0.1", port, SOCKPASS_SHARE_ANY,
                                        "threads", tok, sizeof tok);
    EXPECT(fd >= 0, 1);
    EXPECT(sockpass_client_release(shared, tok), want + 1); /* + the anchor's */
    close(fd);
    EXPECT(sockpass_client_release_all(shared), want);
    for (i = 0; i < THREADS; i++) {
        for (j = 0; j < kept[i].n; j++) {
            close(kept[i].fds[j]);
        }
    }

    /* 2. The default client, 16 threads. */
    run_threads(on_default_client);
    for (want = 0, i = 0; i < THREADS; i++) {
        want += i % 3;
    }
    fd = sockpass_request_socket_default(SOCKPASS_PROTO_UDP, "127.0.0.1", port, SOCKPASS_SHARE_SAMEAPP,
                                         "threads", tok, sizeof tok);
    EXPECT(fd >= 0, 1);
    EXPECT(sockpass_release_socket_default(tok), want + 1);
    close(fd);
    for (i = 0; i < THREADS; i++) {
        for (j = 0; j < kept[i].n; j++) {
            want--;
            EXPECT(sockpass_release_socket_default(kept[i].tokens[j]), want + 1);
            close(kept[i].fds[j]);
        }
    }
    EXPECT(sockpass_client_release_fd(anchor, anchor_fd), 0);
    close(anchor_fd);
    sockpass_client_free(anchor);

    /* 3. Each thread's last error is its own. */
    pthread_barrier_init(&both_failed_or_not, NULL, THREADS);
    run_threads(last_error_is_per_thread);
    pthread_barrier_destroy(&both_failed_or_not);

    sockpass_client_free(shared);
    EXPECT(count_fds(), fds_before);
    if (failures) {
        fprintf(stderr, "threads: %d failure(s)\n", failures);
        return 1;
    }
    printf("threads: ok\n");
    return 0;
}
