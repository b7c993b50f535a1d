/* zprobe SUP_PID COUNT TIMEOUT_S: the observer of the PID-1 zombie burst in bench/.
 * Waits until COUNT processes named "zorphan" are children of SUP_PID (the PID 1 of a pid
 * namespace, seen from the host), opens each one's /proc/PID/stat, kills their process group
 * with one SIGKILL and then re-reads every stat file in a tight loop: 'Z' is a zombie not yet
 * reaped, ESRCH is reaped. Prints the time from the kill until the last one is reaped and the
 * most zombies seen in one pass. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int read_file(const char *path, char *buf, int size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    int n = 0, r;
    /* seq_file hands out about a page per read: read until EOF. */
    while (n < size - 1 && (r = read(fd, buf + n, size - 1 - n)) > 0) n += r;
    close(fd);
    buf[n] = 0;
    return n;
}

/* Children of every thread of sup that are named zorphan; returns how many were stored. */
static int orphans(int sup, int *out, int max) {
    char path[320], comm[32];
    static char buf[1 << 20];
    int found = 0;
    snprintf(path, sizeof path, "/proc/%d/task", sup);
    DIR *d = opendir(path);
    if (!d) return -1;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "/proc/%d/task/%s/children", sup, e->d_name);
        if (read_file(path, buf, sizeof buf) < 0) continue;
        for (char *p = strtok(buf, " \n"); p; p = strtok(NULL, " \n")) {
            snprintf(path, sizeof path, "/proc/%s/comm", p);
            if (read_file(path, comm, sizeof comm) > 0 && !strcmp(comm, "zorphan\n") && found < max)
                out[found++] = atoi(p);
        }
    }
    closedir(d);
    return found;
}

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    int sup = atoi(argv[1]), count = atoi(argv[2]);
    long long deadline = now_ns() + atoll(argv[3]) * 1000000000LL;
    int *pids = calloc(count, sizeof *pids), *fds = calloc(count, sizeof *fds);
    int n;
    while ((n = orphans(sup, pids, count)) < count) {
        if (n < 0 || now_ns() > deadline) {
            fprintf(stderr, "zprobe: only %d of %d orphans became children of %d\n", n, count, sup);
            return 1;
        }
        usleep(5000);
    }
    char path[64], buf[512];
    pid_t pgid = 0;
    for (int i = 0; i < count; i++) {
        snprintf(path, sizeof path, "/proc/%d/stat", pids[i]);
        fds[i] = open(path, O_RDONLY | O_CLOEXEC);
        if (fds[i] < 0) { fprintf(stderr, "zprobe: %s: %s\n", path, strerror(errno)); return 1; }
    }
    int len = pread(fds[0], buf, sizeof buf - 1, 0);
    if (len <= 0) return 1;
    buf[len] = 0;
    char *rp = strrchr(buf, ')');
    if (!rp || sscanf(rp + 2, "%*c %*d %d", &pgid) != 1 || pgid <= 1) return 1;
    int left = count, max_zombies = 0, passes = 0;
    long long t0 = now_ns();
    if (kill(-pgid, SIGKILL) < 0) { perror("zprobe: kill"); return 1; }
    while (left > 0) {
        int zombies = 0;
        passes++;
        for (int i = 0; i < count; i++) {
            if (fds[i] < 0) continue;
            len = pread(fds[i], buf, sizeof buf - 1, 0);
            if (len <= 0) { close(fds[i]); fds[i] = -1; left--; continue; }
            buf[len] = 0;
            rp = strrchr(buf, ')');
            if (rp && rp[2] == 'Z') zombies++;
        }
        if (zombies > max_zombies) max_zombies = zombies;
        /* A short breath between passes, so the observer does not take the CPU the reaper
         * and the dying processes need (2 cores). */
        if (left > 0) {
            struct timespec pause = {0, 100000};
            nanosleep(&pause, NULL);
        }
        if (now_ns() > deadline) {
            fprintf(stderr, "zprobe: %d orphans still not reaped\n", left);
            return 1;
        }
    }
    printf("reap_ns=%lld max_zombies=%d passes=%d\n", now_ns() - t0, max_zombies, passes);
    return 0;
}
