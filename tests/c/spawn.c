/* Spawning with an fd plan from C, with real processes: /bin/sh gets a
 * socketpair end at fd 3 and an empty slot at 4, checks LISTEN_FDS,
 * LISTEN_PID and LISTEN_FDNAMES and that 4 is closed, and writes through
 * fd 3; a paused child runs only after resume; a missing program is
 * -SOCKPASS_E_CHILD_FAILED with no process left; a running child times
 * out, is killed and reaped; sockpass_spawn_add_fds takes a source, an
 * empty slot and an inherit slot (a CLOEXEC fd of ours at that number
 * arrives) in one call, all or nothing; waiting on a paused child resumes
 * it; every bad input gets its documented code (a dead pid -ESRCH) and
 * no fd leaks; as root, a child joins another process's network
 * namespace. Needs no broker. Run by meson test, under ASan/UBSan and
 * under valgrind by tests/parts/20-c.sh. */
#define _GNU_SOURCE
#include <sockpass.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "check.h"

static const char *script =
    "test \"$LISTEN_FDS\" = 2 && test \"$LISTEN_PID\" = $$ && "
    "test \"$LISTEN_FDNAMES\" = \"conn:spare\" && test \"$GREETING\" = hello && "
    "test -z \"$DROPPED\" && ! test -e /proc/self/fd/4 && echo \"$1\" >&3";

static void socket_activation(int paused) {
    sockpass_spawn *s = NULL;
    sockpass_child *c = NULL;
    char buf[32];
    int sp[2], pid, st = -1;
    ssize_t n;

    EXPECT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
    EXPECT(setenv("DROPPED", "x", 1), 0);
    EXPECT(sockpass_spawn_new("/bin/sh", &s), 0);
    EXPECT(sockpass_spawn_arg(s, "-c"), 0);
    EXPECT(sockpass_spawn_arg(s, script), 0);
    EXPECT(sockpass_spawn_arg(s, "sh"), 0);
    EXPECT(sockpass_spawn_arg(s, "through-fd-3"), 0);
    EXPECT(sockpass_spawn_setenv(s, "GREETING", "hello"), 0);
    EXPECT(sockpass_spawn_unsetenv(s, "DROPPED"), 0);
    EXPECT(sockpass_spawn_add_fd(s, sp[1], "conn"), 0);
    close(sp[1]); /* borrowed: the plan has its own copy */
    EXPECT(sockpass_spawn_add_empty(s, "spare"), 1);
    EXPECT(sockpass_spawn_set_paused(s, paused), 0);
    pid = sockpass_spawn_start(s, &c);
    EXPECT(pid > 0, 1);
    unsetenv("DROPPED");
    if (!c) {
        close(sp[0]);
        return;
    }
    EXPECT(sockpass_child_pid(c), pid);
    EXPECT(sockpass_child_ns_pid(c), pid);
    if (paused) {
        /* Nothing runs before resume. */
        EXPECT(sockpass_child_wait(c, 20, &st), 0);
        EXPECT(st, -1);
        EXPECT(sockpass_child_resume(c), 0);
    }
    n = read(sp[0], buf, sizeof(buf) - 1);
    EXPECT((int)n, 13);
    buf[n > 0 ? n : 0] = 0;
    EXPECT(strcmp(buf, "through-fd-3\n"), 0);
    EXPECT(sockpass_child_wait(c, -1, &st), 1);
    EXPECT(WIFEXITED(st) && WEXITSTATUS(st) == 0, 1);
    EXPECT(sockpass_child_wait(c, 0, &st), 1); /* again: same status */
    sockpass_child_free(c);
    close(sp[0]);
}

/* Slots from 7 (dash takes one-digit fds only): a socketpair end, an empty
 * slot (8 closed) and an inherit slot at 9, where this process holds a
 * CLOEXEC pipe end. */
static const char *fds_script =
    "test \"$LISTEN_FDS\" = 3 && test \"$LISTEN_FDS_FIRST_FD\" = 7 && "
    "test \"$LISTEN_FDNAMES\" = \"conn:empty:unknown\" && ! test -e /proc/self/fd/8 && "
    "echo via-7 >&7 && echo via-9 >&9";

static void add_fds(void) {
    sockpass_spawn *s = NULL;
    sockpass_child *c = NULL;
    int sp[2], p[2], fds[3], bad[3] = {0, SOCKPASS_SPAWN_EMPTY, 1000000}, st = -1;
    const char *names[3] = {"conn", NULL, NULL}, *inherit_named[1] = {"x"};
    int inherit_only[1] = {SOCKPASS_SPAWN_INHERIT};
    char buf[32];
    ssize_t n;

    EXPECT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
    EXPECT(pipe2(p, O_CLOEXEC), 0);
    EXPECT(fcntl(9, F_GETFD), -1); /* 9 is free here: ours to place */
    EXPECT(dup3(p[1], 9, O_CLOEXEC), 9);
    close(p[1]);
    fds[0] = sp[1];
    fds[1] = SOCKPASS_SPAWN_EMPTY;
    fds[2] = SOCKPASS_SPAWN_INHERIT;

    EXPECT(sockpass_spawn_new("/bin/sh", &s), 0);
    EXPECT(sockpass_spawn_arg(s, "-c"), 0);
    EXPECT(sockpass_spawn_arg(s, fds_script), 0);
    /* All or nothing: refused calls add no slot. */
    EXPECT(sockpass_spawn_add_fds(s, bad, 3, NULL), -EBADF);
    bad[2] = -3;
    EXPECT(sockpass_spawn_add_fds(s, bad, 3, NULL), -EBADF);
    EXPECT(sockpass_spawn_add_fds(s, inherit_only, 1, inherit_named), -EINVAL);
    EXPECT(sockpass_spawn_add_fds(s, NULL, 2, NULL), -EFAULT);
    EXPECT(sockpass_spawn_add_fds(s, NULL, 0, NULL), 0);
    EXPECT(sockpass_spawn_set_start(s, 7), 0);
    EXPECT(sockpass_spawn_add_fds(s, fds, 3, names), 0);
    close(sp[1]); /* borrowed: the plan has its own copy */
    EXPECT(sockpass_spawn_set_paused(s, 1), 0);
    EXPECT(sockpass_spawn_start(s, &c) > 0, 1);
    close(9); /* the child has its copy since the fork */
    if (c) {
        /* A wait without limit resumes a paused child: it runs. */
        EXPECT(sockpass_child_wait(c, -1, &st), 1);
        EXPECT(WIFEXITED(st) && WEXITSTATUS(st) == 0, 1);
        sockpass_child_free(c);
    }
    n = read(sp[0], buf, sizeof(buf) - 1);
    EXPECT((int)n, 6);
    buf[n > 0 ? n : 0] = 0;
    EXPECT(strcmp(buf, "via-7\n"), 0);
    n = read(p[0], buf, sizeof(buf) - 1);
    EXPECT((int)n, 6);
    buf[n > 0 ? n : 0] = 0;
    EXPECT(strcmp(buf, "via-9\n"), 0);
    close(sp[0]);
    close(p[0]);
}

static void exec_failure_and_kill(void) {
    sockpass_spawn *s = NULL;
    sockpass_child *c = NULL, *sentinel = (sockpass_child *)&failures;
    int pid, st = -1;

    c = sentinel;
    EXPECT(sockpass_spawn_new("/nonexistent/program", &s), 0);
    EXPECT(sockpass_spawn_start(s, &c), -SOCKPASS_E_CHILD_FAILED);
    EXPECT(sockpass_last_error_errno(), ENOENT); /* the failed step's errno (exec) */
    EXPECT(strstr(sockpass_last_error_message(), "exec") != NULL, 1);
    EXPECT(c == sentinel, 1);
    EXPECT(waitpid(-1, NULL, WNOHANG), -1); /* no child left behind */

    c = NULL;
    EXPECT(sockpass_spawn_new("sleep", &s), 0); /* looked up in PATH */
    EXPECT(sockpass_spawn_arg(s, "30"), 0);
    pid = sockpass_spawn_start(s, &c);
    EXPECT(pid > 0, 1);
    EXPECT(sockpass_child_wait(c, 20, &st), 0);
    EXPECT(st, -1);
    EXPECT(sockpass_child_kill(c, SIGKILL), 0);
    EXPECT(sockpass_child_wait(c, 30000, &st), 1);
    EXPECT(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, 1);
    EXPECT(sockpass_child_kill(c, SIGKILL), 0); /* reaped: a no-op */
    sockpass_child_free(c);
}

/* As root: a child joins the network namespace of another process (a
 * holder made here with unshare) and sees that namespace's inode. */
static void join_namespace(void) {
    sockpass_spawn *s = NULL;
    sockpass_child *c = NULL;
    char link[64], want[64];
    int p[2], st = -1;
    ssize_t n;
    pid_t holder;

    if (geteuid() != 0) {
        printf("spawn: join not checked: needs root\n");
        return;
    }
    EXPECT(pipe2(p, O_CLOEXEC), 0);
    fflush(stdout);
    holder = fork();
    if (holder == 0) {
        char ok = unshare(CLONE_NEWNET) == 0 ? 'y' : 'n';
        if (write(p[1], &ok, 1) != 1) {
            _exit(1);
        }
        pause();
        _exit(0);
    }
    close(p[1]);
    EXPECT((int)read(p[0], want, 1), 1);
    EXPECT(want[0], 'y');
    close(p[0]);
    snprintf(link, sizeof(link), "/proc/%d/ns/net", (int)holder);
    n = readlink(link, want, sizeof(want) - 1);
    EXPECT(n > 0, 1);
    want[n > 0 ? n : 0] = 0;

    EXPECT(sockpass_spawn_new("/bin/sh", &s), 0);
    EXPECT(sockpass_spawn_arg(s, "-c"), 0);
    EXPECT(sockpass_spawn_arg(s, "test \"$(readlink /proc/self/ns/net)\" = \"$1\""), 0);
    EXPECT(sockpass_spawn_arg(s, "sh"), 0);
    EXPECT(sockpass_spawn_arg(s, want), 0);
    EXPECT(sockpass_spawn_join(s, holder, "net"), 0);
    EXPECT(sockpass_spawn_start(s, &c) > 0, 1);
    if (c) {
        EXPECT(sockpass_child_wait(c, -1, &st), 1);
        EXPECT(WIFEXITED(st) && WEXITSTATUS(st) == 0, 1);
        sockpass_child_free(c);
    }
    kill(holder, SIGKILL);
    EXPECT(waitpid(holder, NULL, 0), holder);
}

/* A pid that no longer exists: a child of ours, reaped. */
static int dead_pid(void) {
    pid_t p = fork();
    if (p == 0) {
        _exit(0);
    }
    EXPECT(waitpid(p, NULL, 0), p);
    return (int)p;
}

static void bad_input(void) {
    sockpass_spawn *sentinel = (sockpass_spawn *)&failures, *s = sentinel;
    sockpass_child *c = (sockpass_child *)&failures;
    char longname[300];

    memset(longname, 'n', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = 0;
    EXPECT(sockpass_spawn_new(NULL, &s), -EFAULT);
    EXPECT(sockpass_spawn_new("/bin/true", NULL), -EFAULT);
    EXPECT(s == sentinel, 1);
    EXPECT(sockpass_spawn_arg(NULL, "x"), -EFAULT);
    EXPECT(sockpass_spawn_start(NULL, &c), -EFAULT);
    EXPECT(sockpass_child_pid(NULL), -EFAULT);
    EXPECT(sockpass_child_wait(NULL, 0, NULL), -EFAULT);
    EXPECT(sockpass_child_resume(NULL), -EFAULT);
    EXPECT(sockpass_child_kill(NULL, SIGTERM), -EFAULT);
    sockpass_spawn_free(NULL);
    sockpass_child_free(NULL);

    s = NULL;
    EXPECT(sockpass_spawn_new("/bin/true", &s), 0);
    EXPECT(sockpass_spawn_arg(s, NULL), -EFAULT);
    EXPECT(sockpass_spawn_setenv(s, "A=B", "x"), -EINVAL);
    EXPECT(sockpass_spawn_setenv(s, "", "x"), -EINVAL);
    EXPECT(sockpass_spawn_setenv(s, "A", NULL), -EFAULT);
    EXPECT(sockpass_spawn_unsetenv(s, NULL), -EFAULT);
    EXPECT(sockpass_spawn_add_fd(s, -1, NULL), -EBADF);
    EXPECT(sockpass_spawn_add_fd(s, 1000000, NULL), -EBADF);
    EXPECT(sockpass_spawn_add_fd(s, 0, "a:b"), -EINVAL);
    EXPECT(sockpass_spawn_add_fd(s, 0, "é"), -EINVAL);  /* not ASCII ("" is valid, as in systemd) */
    EXPECT(sockpass_spawn_add_fd(s, 0, "tab\there"), -EINVAL);
    EXPECT(sockpass_spawn_add_fd(s, 0, longname), -ENAMETOOLONG);
    EXPECT(sockpass_spawn_add_empty(s, "x:y"), -EINVAL);
    EXPECT(sockpass_spawn_set_start(s, -1), -EINVAL);
    EXPECT(sockpass_spawn_join(s, 0, NULL), -EINVAL);
    EXPECT(sockpass_spawn_join(s, getpid(), "net,bogus"), -EINVAL);
    EXPECT(sockpass_spawn_join(s, dead_pid(), NULL), -ESRCH);
    /* Nothing refused was added: the first slot is still index 0. */
    EXPECT(sockpass_spawn_add_fd(s, 0, "stdin"), 0);
    EXPECT(sockpass_spawn_add_inherit(s), 1);
    sockpass_spawn_free(s); /* closes its copy of fd 0 */

    /* A NULL child_out still consumes the builder (no leak, no process). */
    s = NULL;
    EXPECT(sockpass_spawn_new("/bin/true", &s), 0);
    EXPECT(sockpass_spawn_add_fd(s, 0, NULL), 0);
    EXPECT(sockpass_spawn_start(s, NULL), -EFAULT);
    EXPECT(waitpid(-1, NULL, WNOHANG), -1);
}

int main(void) {
    int before = count_fds();

    socket_activation(0);
    socket_activation(1);
    exec_failure_and_kill();
    add_fds();
    join_namespace();
    bad_input();
    EXPECT(count_fds(), before);
    if (failures) {
        fprintf(stderr, "spawn: %d failures\n", failures);
        return 1;
    }
    printf("spawn: ok\n");
    return 0;
}
