/* tcp-shared: two processes share one listening TCP socket from sockpassd.
 *
 *   tcp-shared ADDRESS PORT
 *
 * The parent and a forked child each connect to the broker with their own
 * client and request the same socket under SOCKPASS_SHARE_SAMEAPP with the
 * same application name, so the broker hands both the one cached socket.
 * Each accepts one connection and answers with its name ("parent" or
 * "child"). Prints "ready PORT" once both hold the socket. */
#define _GNU_SOURCE
#include <sockpass.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

static const char *APP = "tcp-shared";

/* Request the socket on a client of our own; returns the fd or -1. */
static int get_socket(sockpass_client **client, const char *addr, int port) {
    int r = sockpass_client_new(NULL, client);
    if (r < 0) {
        fprintf(stderr, "tcp-shared: connect: %s: %s\n", sockpass_strerror(r),
                sockpass_last_error_message());
        return -1;
    }
    r = sockpass_client_request_socket(*client, SOCKPASS_PROTO_TCP, addr, port,
                                       SOCKPASS_SHARE_SAMEAPP, APP, NULL, 0);
    if (r < 0) {
        fprintf(stderr, "tcp-shared: request: %s: %s\n", sockpass_strerror(r),
                sockpass_last_error_message());
        sockpass_client_free(*client);
        return -1;
    }
    return r;
}

static int serve_one(int fd, const char *name) {
    int c = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0) {
        perror("accept");
        return 1;
    }
    if (write(c, name, strlen(name)) < 0) {
        perror("write");
    }
    close(c);
    return 0;
}

int main(int argc, char **argv) {
    sockpass_client *client = NULL;
    int ready[2], status = 0, fd, rc;
    struct stat st;
    pid_t pid;
    char ok;

    if (argc != 3) {
        fprintf(stderr, "usage: %s ADDRESS PORT\n", argv[0]);
        return 2;
    }
    fd = get_socket(&client, argv[1], atoi(argv[2]));
    if (fd < 0) {
        return 1;
    }
    if (listen(fd, 16) < 0 || fstat(fd, &st) < 0 || pipe2(ready, O_CLOEXEC) < 0) {
        perror("tcp-shared");
        return 1;
    }
    pid = fork();
    if (pid < 0) {
        perror("fork");
        return 1;
    }
    if (pid == 0) {
        /* The child drops what it inherited and asks the broker itself. */
        sockpass_client *mine = NULL;
        struct stat st2;
        int fd2;
        close(fd);
        close(ready[0]);
        fd2 = get_socket(&mine, argv[1], atoi(argv[2]));
        if (fd2 < 0 || fstat(fd2, &st2) < 0 || st2.st_ino != st.st_ino) {
            fprintf(stderr, "tcp-shared: the child did not get the same socket\n");
            _exit(1);
        }
        if (write(ready[1], "x", 1) != 1) {
            _exit(1);
        }
        close(ready[1]);
        rc = serve_one(fd2, "child");
        close(fd2);
        sockpass_client_free(mine); /* drops the child's reference */
        _exit(rc);
    }
    close(ready[1]);
    if (read(ready[0], &ok, 1) != 1) {
        fprintf(stderr, "tcp-shared: the child failed\n");
        waitpid(pid, &status, 0);
        return 1;
    }
    close(ready[0]);
    printf("ready %s\n", argv[2]);
    fflush(stdout);
    rc = serve_one(fd, "parent");
    if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        rc = 1;
    }
    close(fd);
    sockpass_client_free(client);
    return rc;
}
