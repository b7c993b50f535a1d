#!/bin/sh
# Instructions one input costs beside N disabled units (issue #22), counted by callgrind:
#   sudo bench/one_input_callgrind.sh BINARY [N] [start|stop]
# corral runs under callgrind with instrumentation off; once it answers, it is switched on
# for one `start` of one more disabled unit (the request, the spawn, the exec report, the
# answer: every turn of the loop until the answer), or for the `stop` of that unit once it runs
# (the SIGTERM, the reaping, its emptiness, the answer), then off and dumped. Prints the total and
# the inclusive count of `Supervisor::handle`. Needs valgrind and python3.
set -eu
bin=$1
n=${2:-10000}
verb=${3:-start}
work=$(mktemp -d /tmp/corral-cg-XXXXXX)
trap '[ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
mkdir "$work/units"
i=0
while [ "$i" -lt "$n" ]; do
    printf 'enabled = false\n[exec]\ncommand = ["sleep", "86400"]\n' >"$work/units/idle-$(printf %05d "$i").toml"
    i=$((i + 1))
done
ask() {
    python3 - "$(dirname "$0")" "$work/ctl.sock" "$1" <<'PY'
import json, sys
sys.path.insert(0, sys.argv[1])
import scale
reply, _ = scale.request(sys.argv[2], json.loads(sys.argv[3]))
print(json.loads(reply).get("ok"))
PY
}
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/cg.out" \
    "$bin" run "$work/units" --socket "$work/ctl.sock" --cgroup-root "/corral-cg-$$" \
    >"$work/log" 2>&1 &
pid=$!
until [ -S "$work/ctl.sock" ] && ask '{"verb":"status","units":["idle-00001"]}' >/dev/null 2>&1; do
    sleep 0.5
done
if [ "$verb" = stop ]; then
    ask '{"verb":"start","units":["idle-00000"]}' >/dev/null
fi
callgrind_control -i on "$pid" >/dev/null
ask "{\"verb\":\"$verb\",\"units\":[\"idle-00000\"]}"
callgrind_control -i off "$pid" >/dev/null
kill -TERM "$pid"
wait "$pid" || true
echo "$work" >&2
callgrind_annotate --inclusive=yes "$work/cg.out" 2>/dev/null |
    grep -E "${SHOW:-PROGRAM TOTALS|Supervisor::handle|Daemon::event_loop}" | head -${LINES_SHOWN:-5}
