/* cgread: the floor of a `status` that shows live figures: open, read and close each cgroup
 * file named on stdin (one path per line), the files corral reads for each unit, and print
 * the wall time of each of ROUNDS passes in milliseconds. No parsing, no JSON, no socket.
 * cgread ROUNDS [openat] < paths
 * With `openat`, each file's directory is opened (O_PATH) before the timed passes and the file
 * opened relative to it: what holding a directory fd per unit cgroup would save of the path
 * walks (bench/analysis.md, "status"). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 2 && argc != 3) return 2;
    int rounds = atoi(argv[1]), relative = argc == 3 && !strcmp(argv[2], "openat");
    size_t cap = 1024, n = 0;
    char **paths = malloc(cap * sizeof *paths), line[4096];
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        if (n == cap) paths = realloc(paths, (cap *= 2) * sizeof *paths);
        paths[n++] = strdup(line);
    }
    int *dirs = calloc(n, sizeof *dirs);
    char **names = calloc(n, sizeof *names);
    for (size_t i = 0; relative && i < n; i++) {
        char *copy = strdup(paths[i]), *copy2 = strdup(paths[i]);
        dirs[i] = open(dirname(copy), O_PATH | O_DIRECTORY | O_CLOEXEC);
        names[i] = strdup(basename(copy2));
        if (dirs[i] < 0) return 1;
    }
    char buf[1024];
    for (int r = 0; r < rounds; r++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (size_t i = 0; i < n; i++) {
            int fd = relative ? openat(dirs[i], names[i], O_RDONLY | O_CLOEXEC)
                              : open(paths[i], O_RDONLY | O_CLOEXEC);
            if (fd < 0) return 1;
            while (read(fd, buf, sizeof buf) == sizeof buf) {}
            close(fd);
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        printf("%.3f\n", (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6);
    }
    return 0;
}
