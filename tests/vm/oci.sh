#!/bin/sh
# Sourced by scenario.sh (it uses its result, field, live and wait_for): corral as the process
# of an OCI container on cgroup v2, as tests/oci.rs runs it on cgroup v1. tests/vm.rs builds the
# bundles /oci/ro and /oci/rw: a busybox rootfs with corral and the units of tests/vm/oci-units,
# and `runc spec` edited for a private cgroup namespace and /sys/fs/cgroup mounted ro or rw.
# `oci_start MODE` runs one under Debian's runc in the VM's cgroup /oci-MODE; `oci_check MODE`
# checks from the VM: the units start, an orphan is reaped (no zombie in the container's
# cgroup), a killed unit restarts, the rung and the limits are what the ladder says
# (docs/container.md), and `runc kill TERM` stops app before db (it requires db), runc exits 0.
#
# The VM's root is the initramfs, which pivot_root(2) refuses to move (EINVAL, "the current root
# is on the rootfs"), so runc runs with --no-pivot (a move mount and chroot instead).

# The container's own corral, through its control socket in the rootfs.
oci_corral() { corral --socket "$OCI_SOCKET" "$@"; }
oci_status() { oci_corral status "$1" --json 2>&1; }
# All four units running: one status call (each client start is slow under TCG).
oci_all_running() {
    [ "$(oci_corral status --json 2>/dev/null | grep -o '"state":"running"' | wc -l)" = 4 ]
}
oci_in_log() { grep -q "$1" "$OCI_LOG"; }
oci_restarted() {
    st=$(oci_status flaky)
    [ "$(field "$st" state)" = running ] && [ "$(field "$st" restarts)" = 1 ]
}
# The line number in the container's log of the first JSON line with both strings.
oci_line() { grep -n "$1" "$OCI_LOG" | grep "$2" | head -n 1 | cut -d: -f1; }

# oci_start MODE: `runc run` of the bundle in the background; its pid in /tmp/oci-MODE.runc.
# Both containers start at once, early (scenario.sh): under TCG runc, a Go program, takes seconds.
oci_start() {
    date +%s >"/tmp/oci-$1.t0"
    runc run --no-pivot --bundle "/oci/$1" --pid-file "/oci/$1/pid" "oci-$1" >"/tmp/oci-$1.log" 2>&1 </dev/null &
    echo $! >"/tmp/oci-$1.runc"
}

# oci_check MODE: the checks, then `runc kill TERM` and runc's exit.
oci_check() {
    mode=$1
    id=oci-$mode
    bundle=/oci/$mode
    OCI_SOCKET=$bundle/rootfs/run/control.sock
    OCI_LOG=/tmp/$id.log
    C=$CG/$id
    t0=$(cat "/tmp/$id.t0")
    runc_pid=$(cat "/tmp/$id.runc")

    if wait_for 60 oci_all_running; then
        result "$id.units-start" PASS "runc started corral (pid $(cat "$bundle/pid") in the VM) in $(($(date +%s) - t0)) s; db, app, flaky and orphaner running"
    else
        result "$id.units-start" FAIL "runc pid $runc_pid live $(live $runc_pid); status: $(oci_corral status --json 2>&1 | head -c 600); log: $(tail -n 5 "$OCI_LOG")"
    fi

    pids=""
    for f in $(find "$C" -name cgroup.procs); do pids="$pids $(tr '\n' ' ' <"$f")"; done
    zombies=""
    for p in $pids; do
        [ "$(sed -E 's/^[0-9]+ \(.*\) (.).*/\1/' /proc/"$p"/stat 2>/dev/null)" = Z ] && zombies="$zombies $p"
    done
    if wait_for 10 oci_in_log '"message":"reaped: exited with code 7' && [ -z "$zombies" ] &&
        printf ' %s ' "$pids" | grep -q " $(cat "$bundle/pid") "; then
        result "$id.orphan-reaped" PASS "corral reaped the orphan's exit 7; no zombie among the container's processes$pids"
    else
        result "$id.orphan-reaped" FAIL "zombies:$zombies; pids in $C:$pids; reaped lines: $(grep -c reaped "$OCI_LOG")"
    fi

    out=$(oci_corral kill flaky --signal SIGKILL 2>&1)
    if wait_for 20 oci_restarted; then
        result "$id.restart" PASS "flaky killed by SIGKILL, running again: $(field "$(oci_status flaky)" last_exit)"
    else
        result "$id.restart" FAIL "kill: $out; $(oci_status flaky)"
    fi

    all=$(oci_corral status --json 2>&1)
    rung=$(field "$all" rung)
    db=$(oci_status db)
    if [ "$mode" = rw ]; then
        scope=$(cat "$C/corral.scope/cgroup.procs" 2>&1 | tr '\n' ' ')
        if [ "$rung" = writable ] && [ "$(field "$db" limits_enforced)" = true ] &&
            [ "$(cat "$C/db.service/memory.max" 2>&1)" = 33554432 ] &&
            [ "$(wc -l <"$C/db.service/cgroup.procs")" = 1 ] &&
            [ "$scope" = "$(cat "$bundle/pid") " ]; then
            result "$id.cgroups" PASS "rung writable; corral alone in $C/corral.scope; db's one process in $C/db.service, memory.max $(cat "$C/db.service/memory.max")"
        else
            result "$id.cgroups" FAIL "rung '$rung'; corral.scope procs '$scope' (corral $(cat "$bundle/pid")); db.service: $(ls "$C/db.service" 2>&1 | head -c 100) memory.max $(cat "$C/db.service/memory.max" 2>&1); db: $db"
        fi
    else
        reason=$(field "$db" limits_reason)
        if [ "$rung" = read-only ] && [ "$(field "$db" limits_enforced)" = false ] &&
            printf '%s' "$reason" | grep -q 'not enforced: memory-max' &&
            oci_in_log '"message":"not enforced: db: memory-max; to enforce them, '; then
            result "$id.cgroups" PASS "rung read-only; db: $reason"
        else
            result "$id.cgroups" FAIL "rung '$rung'; db: $db; warnings: $(grep -c 'not enforced' "$OCI_LOG")"
        fi
    fi

    t1=$(date +%s)
    out=$(runc kill "$id" TERM 2>&1)
    if wait_for 30 none_live $runc_pid; then
        wait $runc_pid
        code=$?
    else
        code="none (runc still runs)"
    fi
    app=$(oci_line '"unit":"app"' '"message":"stopped')
    db=$(oci_line '"unit":"db"' '"message":"stopped')
    if [ "$code" = 0 ] && [ -n "$app" ] && [ -n "$db" ] && [ "$app" -lt "$db" ] && wait_for 10 gone "$C"; then
        result "$id.stop" PASS "runc kill TERM: app stopped (log line $app) before db (line $db), runc exited 0 in $(($(date +%s) - t1)) s; $C removed; the whole run took $(($(date +%s) - t0)) s"
    else
        result "$id.stop" FAIL "runc kill: $out; exit $code; stopped at lines app '$app' db '$db'; cgroup $(ls -d "$C" 2>&1); log: $(tail -n 5 "$OCI_LOG")"
    fi
}
