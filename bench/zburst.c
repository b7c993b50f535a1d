/* zburst COUNT: the unit of the PID-1 zombie burst in bench/. Forks an intermediate that puts
 * itself in a new process group, forks COUNT children that pause(), and exits: the children
 * become orphans of PID 1. zburst itself stays (pause) so its supervisor keeps it running. The
 * bench then kills the whole group at once (one kill(-pgid, SIGKILL)) and watches PID 1 reap. */
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int count = argc > 1 ? atoi(argv[1]) : 2000;
    pid_t mid = fork();
    if (mid == 0) {
        setpgid(0, 0);
        for (int i = 0; i < count; i++)
            if (fork() == 0) {
                prctl(PR_SET_NAME, "zorphan");
                for (;;) pause();
            }
        _exit(0);
    }
    waitpid(mid, NULL, 0);
    for (;;) pause();
}
