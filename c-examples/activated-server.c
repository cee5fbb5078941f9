/* A manager and the daemon it starts, in one program:
 *
 *   manager: binds a unix socket (sockpass_bind_in_namespace), makes an
 *            sd_notify readiness socket, and spawns this program again with
 *            the socket as fd 3 (LISTEN_FDS=1) and NOTIFY_SOCKET set; once
 *            the daemon says READY=1 it connects and prints the greeting.
 *   daemon:  adopts the activated socket (sockpass_server_adopt_activation),
 *            reports ready (sockpass_notify_ready), accepts one connection,
 *            greets the peer by its pid, and exits.
 *
 * Build: cc activated-server.c $(pkg-config --cflags --libs sockpass)
 * Run:   ./activated-server   (needs no broker) */
#define _GNU_SOURCE
#include <sockpass.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

static int fail(const char *what, int code) {
    fprintf(stderr, "%s: %s (%s)\n", what, sockpass_strerror(code), sockpass_last_error_message());
    return 1;
}

static int daemon_main(void) {
    sockpass_server *srv = NULL;
    sockpass_creds peer;
    char msg[64];
    int r, conn;

    r = sockpass_server_adopt_activation(SOCK_STREAM, 1, &srv);
    if (r <= 0) {
        return r == 0 ? fail("daemon: not socket-activated", -EINVAL) : fail("daemon: adopt", r);
    }
    if ((r = sockpass_notify_ready()) != 1) {
        sockpass_server_free(srv);
        return fail("daemon: notify", r < 0 ? r : -EINVAL);
    }
    conn = sockpass_server_accept(srv, &peer);
    sockpass_server_free(srv);
    if (conn < 0) {
        return fail("daemon: accept", conn);
    }
    snprintf(msg, sizeof(msg), "hello, pid %d\n", (int)peer.pid);
    r = write(conn, msg, strlen(msg)) == (ssize_t)strlen(msg) ? 0 : 1;
    close(conn);
    return r;
}

static int manager_main(const char *self) {
    char dir[] = "/tmp/sockpass-activated-XXXXXX", path[128], notify[256], msg[64], want[64];
    sockpass_readiness *ready = NULL;
    sockpass_spawn *sp = NULL;
    sockpass_child *child = NULL;
    struct sockaddr_un a;
    int lfd, r, unused, c, status = -1, ok = 0;
    ssize_t n;

    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(path, sizeof(path), "%s/greeter.sock", dir);
    lfd = sockpass_bind_in_namespace(0, path, strlen(path), 0600, SOCKPASS_OWNER_KEEP,
                                     SOCKPASS_OWNER_KEEP, -1);
    if (lfd < 0) {
        rmdir(dir);
        return fail("bind", lfd);
    }
    if ((r = sockpass_readiness_new("notify", &ready, &unused)) < 0 ||
        (r = sockpass_readiness_notify_socket(ready, notify, sizeof(notify))) < 0 ||
        (r = sockpass_spawn_new(self, &sp)) < 0 || (r = sockpass_spawn_arg(sp, "--daemon")) < 0 ||
        (r = sockpass_spawn_setenv(sp, "NOTIFY_SOCKET", notify)) < 0 ||
        (r = sockpass_spawn_add_fd(sp, lfd, "greeter")) < 0) {
        fail("prepare", r);
        goto out;
    }
    close(lfd); /* the plan holds its own copy */
    lfd = -1;
    r = sockpass_spawn_start(sp, &child); /* consumes sp */
    sp = NULL;
    if (r < 0) {
        fail("spawn", r);
        goto out;
    }
    /* sockpass_readiness_wait_child() would also notice the daemon dying
     * first; a plain wait with a timeout keeps this runnable under valgrind,
     * which lacks pidfd_open. */
    if ((r = sockpass_readiness_wait(ready, 30000)) < 0) {
        fail("readiness", r);
        goto out;
    }
    /* The path with its NUL must fit: say so rather than truncate it. */
    if (strlen(path) >= sizeof(a.sun_path)) {
        fprintf(stderr, "socket path too long: %s\n", path);
        goto out;
    }
    c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    memset(&a, 0, sizeof(a));
    a.sun_family = AF_UNIX;
    memcpy(a.sun_path, path, strlen(path) + 1);
    if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof(a)) != 0) {
        perror("connect");
    } else if ((n = read(c, msg, sizeof(msg) - 1)) > 0) {
        msg[n] = 0;
        printf("%s", msg);
        snprintf(want, sizeof(want), "hello, pid %d\n", (int)getpid());
        ok = strcmp(msg, want) == 0;
    }
    if (c >= 0) {
        close(c);
    }
out:
    if (child) {
        if (!ok) {
            sockpass_child_kill(child, SIGKILL);
        }
        sockpass_child_wait(child, -1, &status);
        ok = ok && WIFEXITED(status) && WEXITSTATUS(status) == 0;
        sockpass_child_free(child);
    }
    sockpass_spawn_free(sp);
    sockpass_readiness_free(ready);
    if (lfd >= 0) {
        close(lfd);
    }
    unlink(path);
    rmdir(dir);
    return ok ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--daemon") == 0) {
        return daemon_main();
    }
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0) {
        perror("readlink /proc/self/exe");
        return 1;
    }
    self[n] = 0;
    return manager_main(self);
}
