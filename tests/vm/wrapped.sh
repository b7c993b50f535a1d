#!/bin/sh
# A shell wrapper, the way many people write commands: the worker (busybox tail buffering a line
# of /dev/zero that never ends) is OOM-killed at memory-max on the first run, and this shell then
# exits with its status, 137. That run ended by OOM (docs/units.md, "OOM kills"), so on-oom
# restarts it; every later run stays up.
if [ ! -e /tmp/wrapped.ran ]; then
    : >/tmp/wrapped.ran
    echo "first run: the worker allocates past memory-max"
    tail /dev/zero
    exit $?
fi
echo "run after the OOM kill: staying up"
exec sleep 100000
