#!/bin/sh
# First run: grow without bound (busybox tail buffers a line of /dev/zero that never ends) until the
# kernel OOM-kills it at memory-max. Every later run stays up, so the restart is visible.
if [ ! -e /tmp/oomer.ran ]; then
    : >/tmp/oomer.ran
    echo "first run: allocating past memory-max"
    exec tail /dev/zero
fi
echo "run after the OOM kill: staying up"
exec sleep 100000
