/* A consumer of the systemd socket-activation protocol that is not ours:
 * libsystemd's sd_listen_fds_with_names(). Prints "N name:kind ..." where
 * kind is inet-listening, inet, unix or other, then exits 0. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>

int main(void) {
    char **names = NULL;
    int n = sd_listen_fds_with_names(0, &names), i;
    if (n < 0) {
        fprintf(stderr, "sd_listen_fds_with_names: %d\n", n);
        return 1;
    }
    printf("%d", n);
    for (i = 0; i < n; i++) {
        int fd = SD_LISTEN_FDS_START + i;
        const char *kind = sd_is_socket_inet(fd, 0, 0, 1, 0) > 0 ? "inet-listening"
                         : sd_is_socket_inet(fd, 0, 0, -1, 0) > 0 ? "inet"
                         : sd_is_socket_unix(fd, 0, -1, NULL, 0) > 0 ? "unix" : "other";
        printf(" %s:%s", names[i], kind);
        free(names[i]);
    }
    printf("\n");
    free(names);
    return 0;
}
