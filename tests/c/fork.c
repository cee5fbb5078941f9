/* The C client across fork(), after errors and with timeouts, against a
 * real broker at $SOCKPASS_SOCKET:
 * - preforked workers request and release concurrently through the default
 *   client (a lease of their own, every fd the right socket) and find an
 *   inherited explicit client refusing with ECHILD until they reconnect it;
 *   the parent's references are exact afterwards;
 * - a fork while other threads are inside calls (default and explicit
 *   client) leaves the child able to call at once (no hang: alarm);
 * - timeouts against a socket that accepts and never answers (explicit and
 *   default client), after which the connection is closed and reconnect
 *   works;
 * - EMFILE at RLIMIT_NOFILE leaves no reference on the broker (with a
 *   reply spin, which also ends in the timeout against the mute socket);
 *   ENAMETOOLONG for a too-long path; sockpass_strerror(INT_MIN).
 * Run by meson test, under ASan/UBSan and under valgrind (where the forked
 * children are checked too; valgrind keeps the kernel's RLIMIT_NOFILE, so
 * the EMFILE case is checked only outside it). */
#define _GNU_SOURCE
#include <sockpass.h>

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

#define WORKERS 4
#define ROUNDS 100

static int port;

/* The port a socket fd is bound to, or -1. */
static int bound_port(int fd) {
    struct sockaddr_in a;
    socklen_t n = sizeof a;
    int type = 0;
    socklen_t tn = sizeof type;
    if (getsockname(fd, (struct sockaddr *)&a, &n) || a.sin_family != AF_INET) {
        return -1;
    }
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tn) || type != SOCK_DGRAM) {
        return -2;
    }
    return ntohs(a.sin_port);
}

static void sleep_ms(int ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

/* The references on `port` the broker counts, learnt by taking one more on
 * `c` and releasing it: polled until it is `want` (the broker notices a
 * dead child's connection a moment later), within 20 s. */
static int refs_settle(sockpass_client *c, int want) {
    int left = -1, i;
    for (i = 0; i < 2000; i++) {
        char tok[SOCKPASS_TOKEN_SIZE];
        int fd = sockpass_client_request_socket(c, SOCKPASS_PROTO_UDP, "127.0.0.1", port,
                                                SOCKPASS_SHARE_ANY, "fork", tok, sizeof tok);
        if (fd < 0) {
            return fd;
        }
        close(fd);
        left = sockpass_client_release(c, tok);
        if (left == want) {
            return left;
        }
        sleep_ms(10);
    }
    return left;
}

/* A worker: default-client rounds (each fd checked: the right socket), the
 * inherited explicit client refused with ECHILD (and unable to release its
 * parent's references), then reconnected and used. Keeps two references
 * of its own, dropped when it exits. */
static int worker(sockpass_client *inherited, const char *parent_tok) {
    int k, fd;
    char tok[SOCKPASS_TOKEN_SIZE];
    /* A child reports its own failures (the parent reports the parent's). */
    failures = 0;
    alarm(120);
    for (k = 0; k < ROUNDS; k++) {
        fd = sockpass_request_socket_default(SOCKPASS_PROTO_UDP, "127.0.0.1", port, SOCKPASS_SHARE_ANY,
                                             "fork", tok, sizeof tok);
        EXPECT(fd >= 0, 1);
        if (fd < 0) {
            return 1;
        }
        EXPECT(bound_port(fd), port);
        EXPECT(sockpass_release_socket_default(tok) >= 1, 1);
        close(fd);
    }
    EXPECT(sockpass_client_request_socket(inherited, SOCKPASS_PROTO_UDP, "127.0.0.1", port,
                                          SOCKPASS_SHARE_ANY, "fork", NULL, 0),
           -SOCKPASS_E_BROKER_UNAVAILABLE);
    EXPECT(sockpass_last_error_errno(), ECHILD);
    EXPECT(sockpass_client_release(inherited, parent_tok), -SOCKPASS_E_BROKER_UNAVAILABLE);
    EXPECT(sockpass_client_release_all(inherited), -SOCKPASS_E_BROKER_UNAVAILABLE);
    EXPECT(sockpass_client_reconnect(inherited), 0);
    fd = sockpass_client_request_socket(inherited, SOCKPASS_PROTO_UDP, "127.0.0.1", port,
                                        SOCKPASS_SHARE_ANY, "fork", NULL, 0);
    EXPECT(bound_port(fd), port);
    /* Another worker's token is not ours on the new lease either. */
    EXPECT(sockpass_client_release(inherited, parent_tok), -SOCKPASS_E_UNKNOWN_TOKEN);
    fd = sockpass_request_socket_default(SOCKPASS_PROTO_UDP, "127.0.0.1", port, SOCKPASS_SHARE_ANY,
                                         "fork", NULL, 0);
    EXPECT(bound_port(fd), port);
    sockpass_client_free(inherited);
    return failures ? 1 : 0;
}

static void wait_ok(pid_t pid) {
    int st = 0;
    EXPECT(waitpid(pid, &st, 0), pid);
    EXPECT(WIFEXITED(st) && WEXITSTATUS(st) == 0, 1);
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
        fprintf(stderr, "child %d: status %#x\n", (int)pid, st);
    }
}

static void preforked_workers(void) {
    char dtok[SOCKPASS_TOKEN_SIZE], ctok[SOCKPASS_TOKEN_SIZE];
    sockpass_client *c = NULL;
    pid_t pids[WORKERS];
    int dfd, cfd, i;

    EXPECT(sockpass_client_new(NULL, &c), 0);
    /* The parent holds one reference on each client. */
    dfd = sockpass_request_socket_default(SOCKPASS_PROTO_UDP, "127.0.0.1", port, SOCKPASS_SHARE_ANY,
                                          "fork", dtok, sizeof dtok);
    cfd = sockpass_client_request_socket(c, SOCKPASS_PROTO_UDP, "127.0.0.1", port, SOCKPASS_SHARE_ANY,
                                         "fork", ctok, sizeof ctok);
    EXPECT(dfd >= 0 && cfd >= 0, 1);
    for (i = 0; i < WORKERS; i++) {
        pids[i] = fork();
        if (pids[i] == 0) {
            _exit(worker(c, ctok));
        }
    }
    for (i = 0; i < WORKERS; i++) {
        wait_ok(pids[i]);
    }
    /* Exactly the parent's two are left: the workers' leases ended with
     * them, and nothing they did released the parent's. */
    EXPECT(refs_settle(c, 2), 2);
    EXPECT(sockpass_release_socket_default(dtok), 1);
    EXPECT(sockpass_client_release(c, ctok), 0);
    close(dfd);
    close(cfd);
    sockpass_client_free(c);
}

static volatile int stop_threads;
static sockpass_client *busy_client;

static void *busy(void *arg) {
    int on_default = arg != NULL;
    while (!stop_threads) {
        char tok[SOCKPASS_TOKEN_SIZE];
        int fd = on_default ? sockpass_request_socket_default(SOCKPASS_PROTO_UDP, "127.0.0.1", port,
                                                              SOCKPASS_SHARE_ANY, "fork", tok, sizeof tok)
                            : sockpass_client_request_socket(busy_client, SOCKPASS_PROTO_UDP, "127.0.0.1",
                                                             port, SOCKPASS_SHARE_ANY, "fork", tok, sizeof tok);
        if (fd >= 0) {
            if (on_default) {
                sockpass_release_socket_default(tok);
            } else {
                sockpass_client_release(busy_client, tok);
            }
            close(fd);
        }
    }
    return NULL;
}

/* Fork while two threads are inside calls, many times: each child calls
 * at once on both clients; alarm() kills a child that hangs. */
static void fork_during_calls(void) {
    pthread_t t1, t2;
    sockpass_client *anchor = NULL;
    int i, held;
    EXPECT(sockpass_client_new(NULL, &busy_client), 0);
    /* Held throughout: the socket never closes while threads race for it
     * (a thread releases before it closes its fd, so a socket made anew
     * meanwhile would find the port still bound). */
    EXPECT(sockpass_client_new(NULL, &anchor), 0);
    held = sockpass_client_request_socket(anchor, SOCKPASS_PROTO_UDP, "127.0.0.1", port, SOCKPASS_SHARE_ANY,
                                          "fork", NULL, 0);
    EXPECT(held >= 0, 1);
    stop_threads = 0;
    pthread_create(&t1, NULL, busy, (void *)1);
    pthread_create(&t2, NULL, busy, NULL);
    for (i = 0; i < 20; i++) {
        pid_t pid;
        sleep_ms(3);
        pid = fork();
        if (pid == 0) {
            int fd;
            alarm(120);
            fd = sockpass_request_socket_default(SOCKPASS_PROTO_UDP, "127.0.0.1", port, SOCKPASS_SHARE_ANY,
                                                 "fork", NULL, 0);
            if (bound_port(fd) != port) {
                _exit(2);
            }
            if (sockpass_client_request_socket(busy_client, SOCKPASS_PROTO_UDP, "127.0.0.1", port,
                                               SOCKPASS_SHARE_ANY, "fork", NULL, 0) != -SOCKPASS_E_BROKER_UNAVAILABLE) {
                _exit(3);
            }
            if (sockpass_client_reconnect(busy_client) != 0) {
                _exit(4);
            }
            fd = sockpass_client_request_socket(busy_client, SOCKPASS_PROTO_UDP, "127.0.0.1", port,
                                                SOCKPASS_SHARE_ANY, "fork", NULL, 0);
            _exit(bound_port(fd) == port ? 0 : 5);
        }
        wait_ok(pid);
    }
    stop_threads = 1;
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    /* The parent's clients still work, and only the anchor's is left. */
    EXPECT(refs_settle(busy_client, 1), 1);
    sockpass_client_free(busy_client);
    sockpass_client_free(anchor);
    close(held);
}

/* A unix seqpacket socket that accepts (the backlog) and never answers. */
static int mute_listener(char *path, size_t size) {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    snprintf(path, size, "/tmp/sockpass-mute-%d.sock", (int)getpid());
    unlink(path);
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 16)) {
        perror("mute_listener");
        exit(1);
    }
    return s;
}

static void timeouts(void) {
    char path[108];
    int l = mute_listener(path, sizeof path);
    sockpass_client *c = NULL;
    pid_t pid;
    EXPECT(sockpass_client_new(path, &c), 0);
    EXPECT(sockpass_client_set_timeout(c, 0), -EINVAL);
    EXPECT(sockpass_client_set_timeout(c, 200), 0);
    EXPECT(sockpass_client_request_socket(c, SOCKPASS_PROTO_UDP, "127.0.0.1", port, SOCKPASS_SHARE_ANY,
                                          "fork", NULL, 0),
           -ETIMEDOUT);
    /* The connection was closed: the late reply can never be misread. */
    EXPECT(sockpass_client_hello(c), -SOCKPASS_E_BROKER_UNAVAILABLE);
    EXPECT(sockpass_last_error_errno(), ENOTCONN);
    EXPECT(sockpass_client_reconnect(c), 0);
    EXPECT(sockpass_client_hello(c), -ETIMEDOUT);
    /* A reply spin is bounded: past it the wait blocks, and times out. */
    EXPECT(sockpass_client_reconnect(c), 0);
    EXPECT(sockpass_client_set_reply_spin(c, 1000000), 0);
    EXPECT(sockpass_client_hello(c), -ETIMEDOUT);
    sockpass_client_free(c);

    /* The default client, in a child pointed at the mute socket. */
    pid = fork();
    if (pid == 0) {
        failures = 0;
        alarm(120);
        setenv("SOCKPASS_SOCKET", path, 1);
        EXPECT(sockpass_set_default_timeout(200), 0);
        EXPECT(sockpass_request_socket_default(SOCKPASS_PROTO_UDP, "127.0.0.1", port, SOCKPASS_SHARE_ANY,
                                               "fork", NULL, 0),
               -ETIMEDOUT);
        EXPECT(sockpass_release_socket_default("00"), -EINVAL);
        _exit(failures ? 1 : 0);
    }
    wait_ok(pid);
    close(l);
    unlink(path);
}

/* The kernel's soft RLIMIT_NOFILE for this process, or -1. Under valgrind
 * it is higher than what setrlimit() set: valgrind keeps the kernel's limit
 * (its own fds live above the one it shows us) and refuses only the fds it
 * makes itself, not those received with SCM_RIGHTS. */
static long kernel_nofile(void) {
    char line[256];
    long cur = -1;
    FILE *f = fopen("/proc/self/limits", "re");
    if (!f) {
        return -1;
    }
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "Max open files %ld", &cur) == 1) {
            break;
        }
    }
    fclose(f);
    return cur;
}

/* At RLIMIT_NOFILE the reply's fd cannot be received: -EMFILE, and the
 * reference is given back (the count afterwards is the one we hold). */
static void emfile(void) {
    sockpass_client *c = NULL;
    char tok[SOCKPASS_TOKEN_SIZE];
    struct rlimit old, lim;
    int fd, fillers[64], n = 0, i;
    long kernel;
    EXPECT(sockpass_client_new(NULL, &c), 0);
    /* Replies caught by the spin are received as blocking ones are. */
    EXPECT(sockpass_client_set_reply_spin(c, 50), 0);
    fd = sockpass_client_request_socket(c, SOCKPASS_PROTO_UDP, "127.0.0.1", port, SOCKPASS_SHARE_ANY,
                                        "fork", tok, sizeof tok);
    EXPECT(fd >= 0, 1);
    getrlimit(RLIMIT_NOFILE, &old);
    lim = old;
    lim.rlim_cur = (rlim_t)count_fds() + 40;
    EXPECT(setrlimit(RLIMIT_NOFILE, &lim), 0);
    /* Skipped only where the kernel's limit is not the one set (valgrind). */
    kernel = kernel_nofile();
    if (kernel <= (long)lim.rlim_cur) {
        while (n < 64) {
            int f = dup(0);
            if (f < 0) {
                break;
            }
            fillers[n++] = f;
        }
        EXPECT(n < 64, 1);
        EXPECT(sockpass_client_request_socket(c, SOCKPASS_PROTO_UDP, "127.0.0.1", port,
                                              SOCKPASS_SHARE_ANY, "fork", NULL, 0),
               -EMFILE);
        for (i = 0; i < n; i++) {
            close(fillers[i]);
        }
    } else {
        printf("fork: EMFILE not checked here: the kernel's RLIMIT_NOFILE is %ld, not the %ld set "
               "(valgrind?)\n",
               kernel, (long)lim.rlim_cur);
    }
    EXPECT(setrlimit(RLIMIT_NOFILE, &old), 0);
    /* The client still works, and only our first reference is held. */
    EXPECT(refs_settle(c, 1), 1);
    EXPECT(sockpass_client_release(c, tok), 0);
    close(fd);
    sockpass_client_free(c);
}

static void bad_paths_and_codes(void) {
    char longpath[300];
    sockpass_client *c = NULL;
    memset(longpath, 'a', sizeof longpath - 1);
    longpath[0] = '/';
    longpath[sizeof longpath - 1] = 0;
    EXPECT(sockpass_client_new(longpath, &c), -ENAMETOOLONG);
    EXPECT(c == NULL, 1);
    EXPECT(strcmp(sockpass_strerror(INT_MIN), "unknown error code"), 0);
    EXPECT(sockpass_client_new("/nonexistent/sockpassd.sock", &c), -SOCKPASS_E_BROKER_UNAVAILABLE);
    EXPECT(sockpass_last_error_errno(), ENOENT);
    EXPECT(sockpass_client_set_timeout(NULL, 5), -EFAULT);
    EXPECT(sockpass_client_set_reply_spin(NULL, 5), -EFAULT);
    EXPECT(sockpass_client_reconnect(NULL), -EFAULT);
}

int main(void) {
    port = free_udp_port();
    bad_paths_and_codes();
    preforked_workers();
    fork_during_calls();
    timeouts();
    emfile();
    if (failures) {
        fprintf(stderr, "fork: %d failure(s)\n", failures);
        return 1;
    }
    printf("fork: all passed\n");
    return 0;
}
