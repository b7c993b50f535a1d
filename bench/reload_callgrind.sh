#!/bin/sh
# Instructions of one reload among N units with one file changed (issue #22), counted by
# callgrind:
#   sudo bench/reload_callgrind.sh BINARY [N]
# The units are bench/scale.py's (disabled, a description each, one in ten in a slice, one in
# five with limits). corral runs under callgrind with instrumentation off; once it answers, and
# the files are older than the cache's settle margin (src/unit/cache.rs, `SETTLE_MARGIN`), a
# first reload (not counted) reads again the files that start read too soon after their
# writes; then instrumentation is switched on, one file's description changes, and one
# `reload` request is counted to its answer (the watch's wake for the write included), then
# off and dumped. Prints the total and the inclusive counts of `Daemon::reload` and its
# parts; fails unless the counted reload updated the changed unit alone. KEEP=1 keeps the
# work directory (its cg.out) for callgrind_annotate. Needs valgrind and python3.
set -eu
bin=$1
n=${2:-10000}
work=$(mktemp -d /tmp/corral-cg-XXXXXX)
pid=
# A failure on the way leaves no corral behind (only the one this script started).
trap '[ -z "$pid" ] || kill -TERM "$pid" 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
mkdir "$work/units"
python3 - "$(dirname "$0")" "$work/units" "$n" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import scale
units = Path(sys.argv[2])
(units / "pool.toml").write_text('kind = "slice"\n')
for i in range(int(sys.argv[3])):
    (units / f"u{i:05d}.toml").write_text(scale.unit_text(False, i))
PY
ask() {
    python3 - "$(dirname "$0")" "$work/units" "$work/ctl.sock" "$1" <<'PY'
import json, os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import scale
if os.environ.get("CHANGE"):
    (Path(sys.argv[2]) / "u00001.toml").write_text(
        scale.unit_text(False, 1).replace("worker 1", "worker one"))
reply, _ = scale.request(sys.argv[3], json.loads(sys.argv[4]))
doc = json.loads(reply)
print("ok:", doc.get("ok"), "updated:", (doc.get("reload") or {}).get("updated", ""))
PY
}
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/cg.out" \
    "$bin" run "$work/units" --socket "$work/ctl.sock" --cgroup-root "/corral-cg-$$" \
    >"$work/log" 2>&1 &
pid=$!
until [ -S "$work/ctl.sock" ] && ask '{"verb":"status","units":["u00001"]}' >/dev/null 2>&1; do
    sleep 0.5
done
sleep 3
ask '{"verb":"reload"}' >/dev/null
callgrind_control -i on "$pid" >/dev/null
# The write and the request from one process, at once: the watch's debounced reload (100 ms,
# src/daemon/units_dir.rs) would otherwise come first under valgrind's slowness.
result=$(CHANGE=1 ask '{"verb":"reload"}')
callgrind_control -i off "$pid" >/dev/null
kill -TERM "$pid"
wait "$pid" || true
pid=
echo "$work" >&2
echo "$result"
case $result in
*"['u00001']"*) ;;
*) echo "the counted reload did not update u00001 alone" >&2; exit 1 ;;
esac
callgrind_annotate --inclusive=yes "$work/cg.out" 2>/dev/null |
    grep -E "${SHOW:-PROGRAM TOTALS|Daemon::(reload|load_units|apply_units) |Supervisor::reload}" |
    head -${LINES_SHOWN:-8}
