#!/bin/sh
# Three processes in the unit: this shell (the main process), a bystander, and a hog that starts
# allocating once /tmp/oomgroup.go exists. With memory.oom.group=1 the OOM kill takes all three;
# without it only the hog would die and this shell would go on waiting for the bystander.
sleep 100000 &
(
    while [ ! -e /tmp/oomgroup.go ]; do sleep 0.1; done
    exec tail /dev/zero
) &
echo "waiting for /tmp/oomgroup.go"
wait
