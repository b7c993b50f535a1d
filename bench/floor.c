/* floor: the least a supervisor can do, to show the physical limit in bench/.
 * floor N CMD [ARG...]   runs N copies of CMD, restarts each at once when it exits, reaps
 * every child (orphans too, as PID 1), and on SIGTERM/SIGINT terminates all and exits when no
 * child is left. No config, no logs, no cgroups: fork, exec, reap. */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static pid_t start(char **argv, sigset_t *none) {
    pid_t pid = fork();
    if (pid == 0) {
        sigprocmask(SIG_SETMASK, none, NULL);
        execvp(argv[0], argv);
        _exit(127);
    }
    return pid;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    int n = atoi(argv[1]), stopping = 0;
    pid_t *pids = calloc(n, sizeof *pids);
    sigset_t set, none;
    sigemptyset(&none);
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigprocmask(SIG_BLOCK, &set, NULL);
    for (int i = 0; i < n; i++) pids[i] = start(argv + 2, &none);
    for (;;) {
        int sig = sigwaitinfo(&set, NULL);
        if ((sig == SIGTERM || sig == SIGINT) && !stopping) {
            stopping = 1;
            for (int i = 0; i < n; i++) if (pids[i] > 0) kill(pids[i], SIGTERM);
        }
        pid_t pid;
        while ((pid = waitpid(-1, NULL, WNOHANG)) > 0)
            for (int i = 0; i < n; i++)
                if (pids[i] == pid) { pids[i] = stopping ? 0 : start(argv + 2, &none); break; }
        if (stopping && pid < 0 && errno == ECHILD) return 0;
    }
}
