/* Supervising a program across restarts from C, with real processes: a
 * Python server takes a TCP listener at fd 3 (LISTEN_FDS), says READY=1 on
 * NOTIFY_SOCKET and answers each connection with its pid and the inode of
 * its fd 3. sockpass_supervisor_restart gives a new pid serving the same
 * socket, the old instance reaped; a new instance that exits 3 at start is
 * -SOCKPASS_E_CHILD_FAILED with status 3 and the old one serves on; one
 * never ready is -ETIMEDOUT, stopped by SIGTERM and reaped; terminate and
 * wait give the current instance's status; bad input gets its code; no fd
 * leaks. Needs no broker. Under valgrind (no pidfd_open) the supervisor
 * looks for exits with waitid. */
#define _GNU_SOURCE
#include <sockpass.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "check.h"

static const char *server =
    "import os, socket, sys\n"
    "mode = open(sys.argv[1]).read().strip()\n"
    "if mode == 'exit3': sys.exit(3)\n"
    "l = socket.socket(fileno=3)\n"
    "if mode != 'hang':\n"
    "    n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
    "    n.connect(os.environ['NOTIFY_SOCKET']); n.send(b'READY=1'); n.close()\n"
    "while True:\n"
    "    c, _ = l.accept()\n"
    "    c.sendall(('%d %d\\n' % (os.getpid(), os.fstat(3).st_ino)).encode())\n"
    "    c.close()\n";

static char mode_path[64];

static void set_mode(const char *m) {
    FILE *f = fopen(mode_path, "w");
    if (!f || fputs(m, f) < 0 || fclose(f)) {
        perror(mode_path);
        exit(1);
    }
}

/* Connect to the listener's port; the answering pid and inode. */
static int ask(int port, unsigned long *ino) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    char buf[64] = {0};
    int pid = -1, s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ssize_t n, got = 0;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a)) {
        perror("connect");
        exit(1);
    }
    while ((n = read(s, buf + got, sizeof buf - 1 - got)) > 0) {
        got += n;
    }
    close(s);
    if (sscanf(buf, "%d %lu", &pid, ino) != 2) {
        fprintf(stderr, "supervise: bad answer %s\n", buf);
        failures++;
    }
    return pid;
}

static int gone(int pid) {
    char p[32];
    snprintf(p, sizeof p, "/proc/%d", pid);
    return access(p, F_OK) != 0;
}

int main(void) {
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t alen = sizeof a;
    char dir[] = "/tmp/sockpass-supervise-XXXXXX";
    sockpass_spawn *s = NULL;
    sockpass_supervisor *sup = NULL;
    unsigned long ino = 0, ino2 = 0;
    int l, port, first, second, st = -1, fds0 = count_fds();

    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(mode_path, sizeof mode_path, "%s/mode", dir);
    set_mode("ok");
    l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 64) ||
        getsockname(l, (struct sockaddr *)&a, &alen)) {
        perror("listener");
        return 1;
    }
    port = ntohs(a.sin_port);

    EXPECT(sockpass_spawn_new("python3", &s), 0);
    EXPECT(sockpass_spawn_arg(s, "-S"), 0);
    EXPECT(sockpass_spawn_arg(s, "-c"), 0);
    EXPECT(sockpass_spawn_arg(s, server), 0);
    EXPECT(sockpass_spawn_arg(s, mode_path), 0);
    EXPECT(sockpass_spawn_add_fd(s, l, "web"), 0);
    close(l); /* the plan holds its own copy, for every instance */
    {
        /* A refused start consumes the plan and writes nothing. */
        sockpass_spawn *t = NULL;
        EXPECT(sockpass_spawn_new("true", &t), 0);
        EXPECT(sockpass_supervisor_start(t, "bogus", &sup), -EINVAL);
        EXPECT(sup == NULL, 1);
    }
    first = sockpass_supervisor_start(s, "notify", &sup);
    EXPECT(first > 0, 1);
    if (!sup) {
        return 1;
    }
    EXPECT(sockpass_supervisor_wait_ready(sup, 30000), 0);
    EXPECT(sockpass_supervisor_pid(sup), first);
    EXPECT(ask(port, &ino), first);
    EXPECT(sockpass_supervisor_failed_status(sup, &st), 0);

    /* A restart: a new pid on the same socket, the old one reaped. */
    second = sockpass_supervisor_restart(sup);
    EXPECT(second > 0 && second != first, 1);
    EXPECT(sockpass_supervisor_pid(sup), second);
    EXPECT(ask(port, &ino2), second);
    EXPECT(ino2 == ino, 1);
    EXPECT(gone(first), 1);

    /* A new instance that exits 3: the old one serves on. */
    set_mode("exit3");
    EXPECT(sockpass_supervisor_restart(sup), -SOCKPASS_E_CHILD_FAILED);
    EXPECT(sockpass_supervisor_failed_status(sup, &st), 1);
    EXPECT(WIFEXITED(st) && WEXITSTATUS(st) == 3, 1);
    EXPECT(sockpass_supervisor_pid(sup), second);
    EXPECT(ask(port, &ino2), second);

    /* One never ready: stopped after the ready timeout. */
    set_mode("hang");
    EXPECT(sockpass_supervisor_set_timeouts(sup, 500, -1, 5000), 0);
    EXPECT(sockpass_supervisor_restart(sup), -ETIMEDOUT);
    EXPECT(sockpass_supervisor_failed_status(sup, &st), 1);
    EXPECT(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM, 1);
    EXPECT(ask(port, &ino2), second);

    /* Bad input. */
    EXPECT(sockpass_supervisor_restart(NULL), -EFAULT);
    EXPECT(sockpass_supervisor_pid(NULL), -EFAULT);
    EXPECT(sockpass_supervisor_set_stop_signal(sup, 0), -EINVAL);
    EXPECT(sockpass_supervisor_failed_status(sup, NULL), -EFAULT);
    EXPECT(sockpass_supervisor_start(NULL, NULL, &sup), -EFAULT);
    sockpass_supervisor_free(NULL);

    /* Shut down: the current instance's status. */
    EXPECT(sockpass_supervisor_wait(sup, 0, &st), 0);
    EXPECT(sockpass_supervisor_terminate(sup, SIGTERM), 0);
    EXPECT(sockpass_supervisor_wait(sup, 30000, &st), 1);
    EXPECT(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM, 1);
    EXPECT(sockpass_supervisor_pid(sup), -ESRCH);
    set_mode("ok");
    EXPECT(sockpass_supervisor_restart(sup), -EINVAL);
    EXPECT(gone(second), 1);
    sockpass_supervisor_free(sup);

    EXPECT(count_fds(), fds0);
    unlink(mode_path);
    rmdir(dir);
    if (failures) {
        fprintf(stderr, "supervise: %d failure(s)\n", failures);
        return 1;
    }
    printf("supervise: all passed\n");
    return 0;
}
