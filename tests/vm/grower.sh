#!/bin/sh
# Grows by 1 MiB every 100 ms (shell variables, so the pages are written and charged) until
# something stops it. SIGTERM (corral's stop signal, sent to every process of the unit) runs the
# trap: a marker line in /tmp/$1.marker, then exit 0. A run that finds the marker stays small, so
# what follows a graceful restart is quiet.
marker=/tmp/$1.marker
trap 'echo graceful >>"$marker"; exit 0' TERM
if [ -e "$marker" ]; then
    echo "after the restart: staying small"
    while :; do sleep 1000; done
fi
# What corral hands a unit with pressure-threshold, as systemd's MemoryPressureWatch= does.
echo "$MEMORY_PRESSURE_WATCH $MEMORY_PRESSURE_WRITE" >"/tmp/$1.env"
echo "growing"
chunk=$(head -c 1048576 /dev/zero | tr '\0' x)
# One variable per MiB: each assignment copies the chunk once (a growing string would be copied
# whole each time, which under TCG slows the growth as it goes).
i=0
while :; do
    i=$((i + 1))
    eval "v$i=\$chunk"
    sleep 0.1
done
