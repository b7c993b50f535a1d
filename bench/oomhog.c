/* oomhog: touches memory 1 MiB at a time until the kernel's OOM killer ends it. If nothing
 * stops it by 1 GiB the limit is not enforced: it says so and exits 3 rather than eat the
 * machine. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
    for (int mib = 0; mib < 1024; mib++) {
        char *p = malloc(1 << 20);
        if (!p) return 4;
        memset(p, 1, 1 << 20);
    }
    fputs("oomhog: 1 GiB allocated and no OOM kill: the memory limit is not enforced\n", stderr);
    return 3;
}
