/* Readiness from C with real child processes: for each protocol (pipe,
 * s6's fd:N, sd_notify) a forked child reports ready with the library's
 * own sender and the parent's wait_child returns 0; a child that exits
 * first is -SOCKPASS_E_CHILD_FAILED; a child that never reports times out;
 * every bad input gets its documented code, writes no out-parameter and
 * leaks no fd. Needs no broker. Run by meson test, under ASan/UBSan and
 * under valgrind by tests/parts/20-c.sh. */
#define _GNU_SOURCE
#include <sockpass.h>

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>

#include "check.h"

/* How the child behaves. */
enum { REPORT, EXIT_EARLY, HANG };

/* Fork a child that reports readiness over `method` (or not), wait for it
 * (watching it with wait_child if it is not to report), and return what the
 * wait said; the child is always reaped. */
static int run_child(const char *method, int behaviour, int timeout_ms, int expected_no_pidfd) {
    sockpass_readiness *r = NULL;
    char env[256];
    int child_fd = -7, rc, st, n = -1;
    pid_t pid;

    EXPECT(sockpass_readiness_new(method, &r, &child_fd), 0);
    if (!r) {
        return -1;
    }
    if (strncmp(method, "fd:", 3) == 0) {
        n = atoi(method + 3);
    }
    env[0] = 0;
    if (strcmp(method, "notify") == 0) {
        EXPECT(child_fd, -1);
        EXPECT(sockpass_readiness_notify_socket(r, env, sizeof(env)) > 0, 1);
    }
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        int ok = 0;
        if (behaviour == EXIT_EARLY) {
            _exit(3);
        }
        if (behaviour == HANG) {
            pause();
            _exit(0);
        }
        if (n >= 0) {
            /* s6: the fd sits at number N in the child. */
            ok = dup2(child_fd, n) == n && sockpass_report_ready_fd(n) == 0;
        } else if (env[0]) {
            ok = setenv("NOTIFY_SOCKET", env, 1) == 0 && sockpass_notify_ready() == 1;
        } else {
            ok = sockpass_report_ready_fd(child_fd) == 0;
        }
        _exit(ok ? 0 : 1);
    }
    if (child_fd >= 0) {
        close(child_fd);
    }
    if (behaviour == REPORT) {
        rc = sockpass_readiness_wait(r, timeout_ms);
    } else {
        rc = sockpass_readiness_wait_child(r, pid, timeout_ms);
        /* Valgrind does not know pidfd_open (20-c.sh sets this there). */
        if (rc == -ENOSYS && getenv("SOCKPASS_TEST_NO_PIDFD")) {
            printf("readiness: wait_child not checked here: pidfd_open is not implemented\n");
            rc = expected_no_pidfd;
        }
    }
    if (behaviour == HANG) {
        kill(pid, SIGKILL);
    }
    EXPECT(waitpid(pid, &st, 0), pid);
    if (behaviour == REPORT) {
        EXPECT(WIFEXITED(st) && WEXITSTATUS(st) == 0, 1);
        EXPECT(sockpass_readiness_check(r), 1);
    }
    sockpass_readiness_free(r);
    return rc;
}

static void bad_input(void) {
    sockpass_readiness *sentinel = (sockpass_readiness *)&failures, *r = sentinel;
    char buf[8] = "XXXXXXX";
    int fd = -7;

    EXPECT(sockpass_readiness_new(NULL, &r, &fd), -EFAULT);
    EXPECT(sockpass_readiness_new("pipe", NULL, &fd), -EFAULT);
    EXPECT(sockpass_readiness_new("pipe", &r, NULL), -EFAULT);
    EXPECT(sockpass_readiness_new("smoke-signal", &r, &fd), -EINVAL);
    EXPECT(sockpass_readiness_new("fd:-1", &r, &fd), -EINVAL);
    EXPECT(sockpass_readiness_new("fd:", &r, &fd), -EINVAL);
    EXPECT(r == sentinel && fd == -7, 1);
    EXPECT(sockpass_readiness_fd(NULL), -EFAULT);
    EXPECT(sockpass_readiness_check(NULL), -EFAULT);
    EXPECT(sockpass_readiness_wait(NULL, 0), -EFAULT);
    EXPECT(sockpass_readiness_wait_child(NULL, 1, 0), -EFAULT);
    EXPECT(sockpass_readiness_notify_socket(NULL, buf, sizeof(buf)), -EFAULT);
    sockpass_readiness_free(NULL);

    r = NULL;
    EXPECT(sockpass_readiness_new("pipe", &r, &fd), 0);
    EXPECT(sockpass_readiness_fd(r) >= 0, 1);
    EXPECT(sockpass_readiness_notify_socket(r, buf, sizeof(buf)), -ENOENT);
    EXPECT(sockpass_readiness_wait_child(r, 0, 0), -EINVAL);
    EXPECT(sockpass_readiness_wait_child(r, -5, 0), -EINVAL);
    EXPECT(sockpass_readiness_wait(r, 0), -ETIMEDOUT);
    close(fd);
    sockpass_readiness_free(r);

    r = NULL;
    EXPECT(sockpass_readiness_new("notify", &r, &fd), 0);
    EXPECT(sockpass_readiness_notify_socket(r, buf, 2), -ENOBUFS);
    EXPECT(strcmp(buf, "XXXXXXX"), 0);
    EXPECT(sockpass_readiness_notify_socket(r, NULL, 100), -EFAULT);
    sockpass_readiness_free(r);

    EXPECT(sockpass_report_ready_fd(-1), -EBADF);
    EXPECT(sockpass_report_ready_fd(1000000), -EBADF);
    EXPECT(sockpass_notify_send(NULL, "READY=1", 7), -EFAULT);
    EXPECT(sockpass_notify_send("/nonexistent/x", NULL, 7), -EFAULT);
    EXPECT(sockpass_notify_send("/nonexistent/x", "READY=1", 5000), -EINVAL);
    EXPECT(sockpass_notify_send("/nonexistent/x", "READY=1", 7), -ENOENT);
    unsetenv("NOTIFY_SOCKET");
    EXPECT(sockpass_notify_ready(), 0);
}

int main(void) {
    int before = count_fds(), rc;

    EXPECT(run_child("pipe", REPORT, 30000, 0), 0);
    EXPECT(run_child("fd:5", REPORT, 30000, 0), 0);
    EXPECT(run_child("notify", REPORT, 30000, 0), 0);
    /* (pipe: a child closing its end is the signal, but the close that comes
     * with its exit is not: that is -SOCKPASS_E_CHILD_FAILED as well, which
     * rust/sockpassd/tests/readiness.rs checks through the same core code.) */
    /* fd:N: the fd closing without a newline and the exit race. */
    rc = run_child("fd:4", EXIT_EARLY, 30000, -SOCKPASS_E_CHILD_FAILED);
    EXPECT(rc == -SOCKPASS_E_NOT_READY || rc == -SOCKPASS_E_CHILD_FAILED, 1);
    EXPECT(run_child("notify", EXIT_EARLY, 30000, -SOCKPASS_E_CHILD_FAILED), -SOCKPASS_E_CHILD_FAILED);
    EXPECT(run_child("fd:4", HANG, 50, -ETIMEDOUT), -ETIMEDOUT);
    bad_input();
    EXPECT(count_fds(), before);
    if (failures) {
        fprintf(stderr, "readiness: %d failures\n", failures);
        return 1;
    }
    printf("readiness: ok\n");
    return 0;
}
