#!/bin/sh
# Grows by 1 MiB every 100 ms (shell variables, so the pages are written and charged) until
# something stops it. SIGTERM (corral's stop signal, sent to every process of the unit) runs the
# trap: a marker line in /tmp/$1.marker, then exit 0. A run that finds the marker stays small, so
# what follows a graceful restart is quiet.
marker=/tmp/$1.marker
if [ -e "$marker" ]; then
    trap 'exit 0' TERM
    echo "after the restart: staying small"
    while :; do sleep 1000; done
fi
# What corral hands a unit with pressure-threshold, as systemd's MemoryPressureWatch= does.
echo "$MEMORY_PRESSURE_WATCH $MEMORY_PRESSURE_WRITE" >"/tmp/$1.env"
echo "growing"
# The growth runs in a child. Above memory-high the kernel throttles the task that charges the
# pages, on every return to user space, killable only by a fatal signal (mm/memcontrol.c,
# mem_cgroup_handle_over_high); a shell that grew itself would run its trap only between two
# throttled copies, which under TCG outlasted the stop timeout. This shell only waits, so its
# trap runs as soon as SIGTERM comes (the child, with the default action, dies of it).
(
    chunk=$(head -c 1048576 /dev/zero | tr '\0' x)
    # One variable per MiB: each assignment copies the chunk once (a growing string would be
    # copied whole each time, which under TCG slows the growth as it goes).
    i=0
    while :; do
        i=$((i + 1))
        eval "v$i=\$chunk"
        sleep 0.1
    done
) &
trap 'echo graceful >>"$marker"; exit 0' TERM
wait
