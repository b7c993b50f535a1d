#!/usr/bin/env python3
"""corral's side-by-side benchmark: corral, its peers and a floor, in turns, on this machine.

Run it through `bench/run` (see bench/README.md). Standard library only; plots are drawn by
bench/plot.py with matplotlib in a separate interpreter.

Clocks: every time is CLOCK_MONOTONIC. Process starts and exits come from the kernel's proc
connector (netlink), whose events carry the kernel's own monotonic timestamp, so the
driver's polling never blurs a measurement; what the events say is checked in /proc.
"""

import argparse
import datetime
import errno
import json
import os
import platform
import random
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SLEEP_ARG = "86400"  # every workload is `sleep 86400`
PEER_PACKAGES = {  # peer -> (Debian package, binaries it must provide)
    "tini": ("tini", ["tini"]),
    "dumb-init": ("dumb-init", ["dumb-init"]),
    "supervisord": ("supervisor", ["supervisord"]),
    "runit": ("runit", ["runsvdir", "runsv"]),
    "s6": ("s6", ["s6-svscan", "s6-supervise"]),
}
SIGDEF = set(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}
CLEAN_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
}


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """A workload broke: the run fails (non-zero exit)."""


def mono_ns():
    return time.monotonic_ns()


# --------------------------------------------------------------------------------------------
# The kernel's proc connector: fork/exec/exit events with kernel timestamps.

PROC_EVENT_FORK, PROC_EVENT_EXEC, PROC_EVENT_EXIT = 0x1, 0x2, 0x80000000


class ProcEvents:
    def __init__(self):
        try:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 11)  # NETLINK_CONNECTOR
            s.setsockopt(socket.SOL_SOCKET, 33, 256 << 20)  # SO_RCVBUFFORCE: never drop
            s.bind((0, 1))  # CN_IDX_PROC
            op = struct.pack("=IIIIHHI", 1, 1, 0, 0, 4, 0, 1)  # cn_msg + PROC_CN_MCAST_LISTEN
            s.send(struct.pack("=IHHII", 16 + len(op), 3, 0, 0, 0) + op)
            s.setblocking(False)
        except OSError as e:
            raise BenchError(f"the proc connector (netlink) is needed and failed: {e}") from e
        self.sock = s
        self.trees = []

    def pump(self, timeout):
        """Waits up to `timeout` seconds for events, then hands every queued one out."""
        select.select([self.sock], [], [], timeout)
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    raise BenchError("proc connector overflowed: events were lost") from e
                raise
            off = 0
            while off + 16 <= len(data):
                (nlen,) = struct.unpack_from("=I", data, off)
                if nlen < 16:
                    break
                base = off + 16 + 20  # nlmsghdr + cn_msg
                if base + 16 <= off + nlen:
                    what, _cpu, ts = struct.unpack_from("=IIQ", data, base)
                    body = base + 16
                    if what == PROC_EVENT_FORK:
                        _pp, ptgid, cpid, ctgid = struct.unpack_from("=4I", data, body)
                        if cpid == ctgid:
                            for t in self.trees:
                                t.on_fork(ts, ptgid, ctgid)
                    elif what == PROC_EVENT_EXEC:
                        pid, tgid = struct.unpack_from("=2I", data, body)
                        if pid == tgid:
                            for t in self.trees:
                                t.on_exec(ts, tgid)
                    elif what == PROC_EVENT_EXIT:
                        pid, tgid, code = struct.unpack_from("=3I", data, body)
                        if pid == tgid:
                            for t in self.trees:
                                t.on_exit(ts, tgid, code)
                off += (nlen + 3) & ~3


def read_comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


class Tree:
    """Every process descended from `root`, from fork events, and when each exec'd and exited."""

    def __init__(self, events, workload_comm="sleep"):
        self.events = events
        self.comm = workload_comm
        self.root = None
        self.since = float("inf")  # nothing counts before set_root
        self.members = set()
        self.root_exec = None
        self.last_exec = {}
        self.workers = set()  # members whose program is the workload (sleep)
        self.worker_execs = []  # (ts, pid) in arrival order
        self.exits = {}  # pid -> (ts, raw exit code)
        self.last_exit = None
        self.last_worker_exit = None
        self.early = []  # events that came before the root was known
        events.trees.append(self)

    def set_root(self, pid, since):
        """`since`: a monotonic time taken before the spawn. Older events in the queue belong
        to earlier processes that had the same pids (pids wrap), and are ignored."""
        self.root = pid
        self.since = since
        self.members.add(pid)

    def close(self):
        if self in self.events.trees:
            self.events.trees.remove(self)

    def on_fork(self, ts, parent, child):
        if ts < self.since:
            return
        if parent in self.members:
            self.members.add(child)
            self.exits.pop(child, None)

    def on_exec(self, ts, pid):
        if ts < self.since or pid not in self.members:
            return
        if pid == self.root and self.root_exec is None:
            self.root_exec = ts
        self.last_exec[pid] = ts
        if read_comm(pid) == self.comm:
            self.workers.add(pid)
            self.worker_execs.append((ts, pid))
        else:
            self.workers.discard(pid)

    def on_exit(self, ts, pid, code):
        if ts < self.since:
            return
        if pid in self.workers:
            self.last_worker_exit = ts
        if pid in self.members:
            self.members.discard(pid)
            self.workers.discard(pid)
            self.exits[pid] = (ts, code)
            self.last_exit = ts


# --------------------------------------------------------------------------------------------
# /proc helpers


def children(pid):
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    out.extend(int(p) for p in f.read().split())
            except OSError:
                pass
    except OSError:
        pass
    return out


def descendants(pid):
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in children(p):
            if c not in seen:
                seen.append(c)
                todo.append(c)
    return seen


def start_time(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def snapshot(pid):
    """A process and its descendants, each with its start time (pids get reused)."""
    return {(p, start_time(p)) for p in [pid, *descendants(pid)]}


def survivors(snap):
    return [p for p, st in snap if st is not None and start_time(p) == st and alive(p)]


def proc_state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def alive(pid):
    return proc_state(pid) not in (None, "Z", "X")


def status_fields(pid, task=None):
    path = f"/proc/{pid}/task/{task}/status" if task else f"/proc/{pid}/status"
    out = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def proc_usage(pid):
    """(context switches of every thread, CPU ticks utime+stime, CPU ns from schedstat)."""
    ctx = 0
    cpu_ns = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            st = status_fields(pid, task)
            ctx += int(st["voluntary_ctxt_switches"]) + int(st["nonvoluntary_ctxt_switches"])
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                cpu_ns += int(f.read().split()[0])
        except OSError:
            pass
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ctx, ticks, cpu_ns


def proc_memory(pid):
    """(VmRSS kB, Pss kB, RssAnon kB)."""
    st = status_fields(pid)
    rss = int(st["VmRSS"].split()[0])
    anon = int(st["RssAnon"].split()[0])
    pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss, anon


# --------------------------------------------------------------------------------------------
# The supervisors under test. Each writes its own configuration for N units of `sleep`.


def write_exec(path, text):
    path.write_text(text)
    path.chmod(0o755)


class Floor:
    name = "floor"
    kind = "floor"
    stop_signal = signal.SIGTERM
    cannot = {}

    def __init__(self, tools):
        self.bin = tools["floor"]

    def argv(self, d, n, variant=None):
        return [self.bin, str(n), "sleep", SLEEP_ARG]

    def burst_argv(self, d, zburst, count):
        return [self.bin, "1", zburst, str(count)]

    def version(self):
        return "bench/floor.c (fork, exec, reap; sigwaitinfo loop)"


class Corral:
    name = "corral"
    kind = "corral"
    stop_signal = signal.SIGTERM
    cannot = {}

    def __init__(self, binary, cgroup_roots):
        self.bin = str(binary)
        self.cgroup_roots = cgroup_roots  # every --cgroup-root used, to check and clean

    def cgroup_root(self):
        root = f"/corral-bench-{os.getpid()}-{len(self.cgroup_roots)}"
        self.cgroup_roots.append(root)
        return root

    def unit(self, command, variant):
        text = (
            f"[exec]\ncommand = {json.dumps(command)}\n"
            '[restart]\npolicy = "always"\ndelay = "0"\nmax-delay = "0"\n'
            'start-limit-burst = 1000000\nstart-limit-interval = "1s"\n'
        )
        if variant == "limits":
            text += '[resources]\nmemory-max = "64M"\npids-max = 16\n'
        if variant == "oom":
            text += '[resources]\nmemory-max = "32M"\npids-max = 16\n'
        return text

    def argv(self, d, n, variant=None, command=None, extra=()):
        units = d / "units"
        units.mkdir()
        self.units_dir = units
        for i in range(n):
            (units / f"s{i:04d}.toml").write_text(
                self.unit(command or ["sleep", SLEEP_ARG], variant)
            )
        self.socket = d / "ctl.sock"
        return [self.bin, "run", str(units), "--socket", str(self.socket),
                "--cgroup-root", self.cgroup_root(), *extra]

    def burst_argv(self, d, zburst, count):
        units = d / "units"
        units.mkdir()
        (units / "z.toml").write_text(f'[exec]\ncommand = ["{zburst}", "{count}"]\n')
        return [self.bin, "run", str(units), "--socket", str(d / "ctl.sock"),
                "--cgroup-root", self.cgroup_root()]

    def version(self):
        out = subprocess.run([self.bin, "--version"], capture_output=True, text=True)
        return (out.stdout.strip() or "corral") + f" ({self.bin})"


def deb_version(pkg):
    out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True)
    return f"{pkg} {out.stdout.strip()} (Debian)" if out.returncode == 0 else f"{pkg} (not from dpkg)"


def one_child_script(n):
    return f'i=0; while [ "$i" -lt {n} ]; do sleep {SLEEP_ARG} & i=$((i+1)); done; wait'


class Tini:
    name = "tini"
    kind = "peer"
    stop_signal = signal.SIGTERM
    cannot = {"restart": "cannot: runs one child and never restarts it"}

    def argv(self, d, n, variant=None):
        # One child only: a shell starts the N sleeps; -g signals its whole process group.
        return ["tini", "-s", "-g", "--", "/bin/sh", "-c", one_child_script(n)]

    def burst_argv(self, d, zburst, count):
        return ["tini", "--", zburst, str(count)]

    def version(self):
        return deb_version("tini")


class DumbInit:
    name = "dumb-init"
    kind = "peer"
    stop_signal = signal.SIGTERM
    cannot = {"restart": "cannot: runs one child and never restarts it"}

    def argv(self, d, n, variant=None):
        return ["dumb-init", "/bin/sh", "-c", one_child_script(n)]

    def burst_argv(self, d, zburst, count):
        return ["dumb-init", zburst, str(count)]

    def version(self):
        return deb_version("dumb-init")


class Supervisord:
    name = "supervisord"
    kind = "peer"
    stop_signal = signal.SIGTERM
    cannot = {}

    def conf(self, d, programs):
        (d / "childlog").mkdir()
        text = (
            f"[supervisord]\nnodaemon=true\nuser=root\nlogfile={d}/supervisord.log\n"
            f"pidfile={d}/supervisord.pid\nchildlogdir={d}/childlog\n"
            f"[unix_http_server]\nfile={d}/supervisor.sock\n"
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
        )
        for name, command in programs:
            # startsecs=0: RUNNING at once; autorestart: restart on every exit, at once.
            text += (f"[program:{name}]\ncommand={command}\nautorestart=true\nstartsecs=0\n"
                     "startretries=1000000\n")
        (d / "supervisord.conf").write_text(text)
        self.socket = d / "supervisor.sock"
        return ["supervisord", "-n", "-c", str(d / "supervisord.conf")]

    def argv(self, d, n, variant=None):
        return self.conf(d, [(f"s{i:04d}", f"sleep {SLEEP_ARG}") for i in range(n)])

    def burst_argv(self, d, zburst, count):
        return self.conf(d, [("z", f"{zburst} {count}")])

    def version(self):
        return deb_version("supervisor")


class ServiceDirs:
    """runit and s6: one directory per service with an executable `run`."""

    kind = "peer"
    cannot = {}

    def dirs(self, root, services):
        root.mkdir()
        for name, command in services:
            (root / name).mkdir()
            write_exec(root / name / "run", self.run_script(command))
            self.extra(root / name)
        return root

    def run_script(self, command):
        return f"#!/bin/sh\nexec {command}\n"

    def extra(self, service_dir):
        pass

    def argv(self, d, n, variant=None):
        scan = self.dirs(d / "sv", [(f"s{i:04d}", f"sleep {SLEEP_ARG}") for i in range(n)])
        return [self.program, *self.options(n), str(scan)]

    def burst_argv(self, d, zburst, count):
        return [self.program, *self.options(1), str(self.dirs(d / "sv", [("z", f"{zburst} {count}")]))]

    def options(self, n):
        return []


class Runit(ServiceDirs):
    name = "runit"
    program = "runsvdir"
    # runsvdir exits at once on SIGTERM and leaves every runsv running; SIGHUP is its "stop
    # everything" (TERM to each runsv, which stops its service).
    stop_signal = signal.SIGHUP

    def version(self):
        return deb_version("runit")


class S6(ServiceDirs):
    name = "s6"
    program = "s6-svscan"
    stop_signal = signal.SIGTERM

    # s6-supervise pauses 1 s before every restart of a service that never said it was ready;
    # one ready for over 1 s restarts at once. So every service notifies readiness on fd 3.
    def run_script(self, command):
        return f"#!/bin/sh\necho >&3\nexec {command} 3>&-\n"

    def extra(self, service_dir):
        (service_dir / "notification-fd").write_text("3\n")

    def options(self, n):
        return ["-c", str(max(500, 2 * n))]  # s6-svscan supervises at most 500 by default

    def version(self):
        return deb_version("s6")


# --------------------------------------------------------------------------------------------
# The run


class Bench:
    def __init__(self, args):
        self.args = args
        self.tools = {}  # the C helpers by name, built by build_tools once the run starts
        self.smoke = args.smoke
        self.sizes = args.sizes
        self.started = []  # pids we spawned (each the leader of its own session)
        self.exited = {}  # pid -> wait status, from our own reaping
        self.cgroup_roots = []
        self.problems = []  # things in corral that looked wrong
        self.failures = []
        self.results = {
            "cold": {}, "restart": {}, "restart_from_kill": {}, "shutdown": {}, "shutdown_workers": {},
            "memory": {}, "idle": {}, "burst": {}, "status": {}, "oom": {}, "reload": None,
            "cannot": {}, "errors": [], "peer_notes": [], "reload_supported": True,
            "reloads": {},
        }
        self.work = Path(tempfile.mkdtemp(prefix="corral-bench-"))
        self.counter = 0

    # ---- processes -------------------------------------------------------------------------

    def spawn(self, argv, logfile, cwd):
        with open(logfile, "ab") as out, open(os.devnull, "rb") as null:
            pid = os.posix_spawnp(
                argv[0], argv, CLEAN_ENV,
                file_actions=[(os.POSIX_SPAWN_DUP2, null.fileno(), 0),
                              (os.POSIX_SPAWN_DUP2, out.fileno(), 1),
                              (os.POSIX_SPAWN_DUP2, out.fileno(), 2)],
                setsid=True,
                setsigdef=SIGDEF,
                setsigmask=set(),
            ) if cwd is None else self._spawn_cwd(argv, out, null, cwd)
        self.started.append(pid)
        # pids wrap: an exit we reaped from an earlier process with this pid is not this one's.
        self.exited.pop(pid, None)
        return pid

    def _spawn_cwd(self, argv, out, null, cwd):
        # posix_spawn has no chdir before Python 3.13; sh does it and execs.
        return os.posix_spawnp(
            "/bin/sh", ["/bin/sh", "-c", 'cd "$0" && exec "$@"', str(cwd), *argv], CLEAN_ENV,
            file_actions=[(os.POSIX_SPAWN_DUP2, null.fileno(), 0),
                          (os.POSIX_SPAWN_DUP2, out.fileno(), 1),
                          (os.POSIX_SPAWN_DUP2, out.fileno(), 2)],
            setsid=True,
            setsigdef=SIGDEF,
            setsigmask=set(),
        )

    def reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.exited[pid] = status

    def wait_until(self, cond, timeout, what, events=None):
        deadline = time.monotonic() + timeout
        while True:
            if events:
                events.pump(0.002)
            else:
                time.sleep(0.002)
            self.reap()
            if cond():
                return
            if time.monotonic() > deadline:
                raise BenchError(f"timed out after {timeout:g}s waiting for {what}")

    def settle(self, events, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            events.pump(max(0.0, min(0.005, end - time.monotonic())))
            self.reap()

    def kill_tree(self, pid):
        """SIGKILL a process we started and everything below it (they are ours too)."""
        for p in [pid, *descendants(pid)]:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self, pid, sig, timeout=20.0):
        """Ask a supervisor we started to stop; SIGKILL it and its tree when it does not."""
        if pid in self.exited:
            return True
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.reap()
            if pid in self.exited:
                return True
            time.sleep(0.005)
        self.kill_tree(pid)
        self.reap()
        return False

    def leftovers(self):
        """Every process still below the driver: none may survive a workload."""
        self.reap()
        left = [p for p in descendants(os.getpid()) if alive(p)]
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if left:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(alive(p) for p in left):
                self.reap()
                time.sleep(0.01)
        self.reap()
        return left

    def fresh_dir(self, label):
        self.counter += 1
        d = self.work / f"{self.counter:03d}-{label}"
        d.mkdir()
        return d

    # ---- cgroups ---------------------------------------------------------------------------

    @staticmethod
    def cgroup_mounts():
        mounts = []
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split()[0] in ("cgroup", "cgroup2"):
                    mounts.append(left.split()[4])
        return mounts

    def check_cgroups(self, root, label, report=True, log=None):
        """corral must remove its --cgroup-root; whatever it left is reported and removed."""
        left = []
        for mount in self.cgroup_mounts():
            top = Path(mount + root)
            if top.exists():
                left.append(str(top))
                for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda x: -len(x[0])):
                    try:
                        with open(Path(dirpath) / "cgroup.procs") as f:
                            for p in f.read().split():
                                os.kill(int(p), signal.SIGKILL)
                    except OSError:
                        pass
                for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda x: -len(x[0])):
                    for _ in range(100):
                        try:
                            os.rmdir(dirpath)
                            break
                        except OSError:
                            time.sleep(0.01)
        if left and report:
            hint = ""
            if log is not None and Path(log).exists():
                warns = [line.strip()[:300] for line in Path(log).read_text(errors="replace").splitlines()
                         if "WARN" in line or "ERROR" in line]
                if warns:
                    hint = " (its last warnings: " + " | ".join(warns[-3:]) + ")"
            self.problem(f"{label}: corral left its cgroup root behind: {', '.join(left)}{hint}")
        return left

    def note(self, sup, text):
        if sup.kind == "corral":
            self.problem(text)
        elif text not in self.results["peer_notes"]:
            self.results["peer_notes"].append(text)
            log(f"peer note: {text}")

    def problem(self, text):
        if text not in self.problems:
            self.problems.append(text)
            log(f"PROBLEM: {text}")

    # ---- one supervisor's life: cold start, restarts, status, shutdown ------------------------

    def lifecycle(self, events, sup, n, variant=None, kills=0, status=False):
        label = sup.name + (f"+{variant}" if variant else "")
        d = self.fresh_dir(f"{label}-{n}")
        argv = sup.argv(d, n, variant)
        tree = Tree(events)
        pid = None
        out = {}
        try:
            since = mono_ns()
            pid = self.spawn(argv, d / "out.log", d)
            tree.set_root(pid, since)
            self.wait_until(lambda: len(tree.workers) >= n, self.cold_timeout(n),
                            f"{label}: {n} sleeps running", events)
            self.settle(events, 0.05)
            live = [p for p in descendants(pid) if read_comm(p) == "sleep" and alive(p)]
            if len(live) < n:
                raise BenchError(f"{label}: /proc shows {len(live)} sleeps, expected {n}")
            starts = sorted(tree.last_exec[p] for p in tree.workers)
            out["cold"] = (starts[n - 1] - tree.root_exec) / 1e6
            if variant == "limits":
                self.check_limits(sup, n)
            if kills:
                out["restart"], out["restart_from_kill"] = self.restarts(events, tree, label, kills)
            if status:
                out["status"] = self.status_round_trips(sup, n)
            if sup.kind == "corral" and variant is None and self.results["reload_supported"]:
                out["reload"] = self.reloads(events, sup, tree, 1 if self.smoke else 3)
            t0 = mono_ns()
            os.kill(pid, sup.stop_signal)
            self.wait_until(lambda: not tree.members, 60, f"{label}: every process gone", events)
            out["shutdown"] = (tree.last_exit - t0) / 1e6
            out["shutdown_workers"] = (tree.last_worker_exit - t0) / 1e6
            self.wait_until(lambda: pid in self.exited, 10, f"{label}: exit", None)
        finally:
            tree.close()
            graceful = pid is None or pid in self.exited
            if not graceful:
                self.kill_tree(pid)
            left = self.leftovers()
            if left:
                self.note(sup, f"{label} N={n}: {len(left)} processes outlived the shutdown")
            if sup.kind == "corral":
                self.check_cgroups(self.cgroup_roots[-1], f"{label} N={n}", report=graceful,
                                   log=d / "out.log")
            shutil.rmtree(d, ignore_errors=True)
        if sup.kind == "corral" and self.exited.get(pid) != 0:
            self.problem(f"{label} N={n}: corral exited with wait status {self.exited.get(pid)}")
        return out

    def cold_timeout(self, n):
        return 30 + n * 0.05

    def check_limits(self, sup, n):
        root = self.cgroup_roots[-1]
        for mount in self.cgroup_mounts():
            mem = Path(mount + root) / "s0000.service" / "memory.limit_in_bytes"
            if mem.exists():
                if int(mem.read_text()) != 64 << 20:
                    raise BenchError(f"corral+limits: {mem} is {mem.read_text().strip()}")
                return
            mem = Path(mount + root) / "s0000.service" / "memory.max"
            if mem.exists():
                if mem.read_text().strip() != str(64 << 20):
                    raise BenchError(f"corral+limits: {mem} is {mem.read_text().strip()}")
                return
        raise BenchError("corral+limits: no memory limit file found for unit s0000")

    def restarts(self, events, tree, label, kills):
        lat, from_kill = [], []
        for _ in range(kills):
            # The sleep that has run longest, and for at least 1.1 s: runit and s6 hold a
            # restart back until a service has been up 1 s; nobody gets that penalty.
            def oldest():
                return min(tree.workers, key=lambda p: tree.last_exec[p])
            self.wait_until(lambda: tree.workers and
                            mono_ns() - tree.last_exec[oldest()] > 1.1e9,
                            10, f"{label}: a sleep running for 1.1 s", events)
            victim = oldest()
            mark = len(tree.worker_execs)
            t_kill = mono_ns()
            os.kill(victim, signal.SIGKILL)

            def replaced():
                if victim not in tree.exits:
                    return False
                ts_exit = tree.exits[victim][0]
                return any(ts > ts_exit for ts, _ in tree.worker_execs[mark:])
            self.wait_until(replaced, 10, f"{label}: restart after SIGKILL", events)
            self.settle(events, 0.02)  # a run script's second exec (sh -> sleep) lands too
            ts_exit = tree.exits[victim][0]
            new = next(p for ts, p in tree.worker_execs[mark:] if ts > ts_exit)
            started = tree.last_exec[new]
            lat.append((started - ts_exit) / 1e6)
            from_kill.append((started - t_kill) / 1e6)
        return lat, from_kill

    # ---- corral-only: status round trip, reload ------------------------------------------------

    def status_round_trips(self, sup, n):
        rounds = 5 if self.smoke else 20
        res = {}
        if sup.kind == "corral":
            sock_times, cli_times = [], []
            for _ in range(rounds):
                t0 = time.perf_counter()
                reply = unix_request(sup.socket, b'{"verb":"status"}\n', until_newline=True)
                sock_times.append((time.perf_counter() - t0) * 1e3)
            units = json.loads(reply)["units"]
            if len(units) != n or any(u["state"] != "running" for u in units):
                raise BenchError(f"corral status: {len(units)} units, not all running")
            for _ in range(min(rounds, 10)):
                t0 = time.perf_counter()
                cp = subprocess.run([sup.bin, "status", "--json", "--socket", str(sup.socket)],
                                    capture_output=True)
                cli_times.append((time.perf_counter() - t0) * 1e3)
                if cp.returncode != 0:
                    raise BenchError(f"corral status --json exited {cp.returncode}")
            res = {"socket": sock_times, "cli": cli_times,
                   "floor": self.status_floor(units, rounds)}
            reply = json.loads(unix_request(sup.socket, b'{"verb":"reload"}\n', True))
            if not reply.get("ok"):
                kind = reply.get("error", {}).get("kind")
                self.results["reload"] = f"not yet implemented (reload answers `{kind}`)"
        elif sup.name == "supervisord":
            body = xmlrpc.client.dumps((), "supervisor.getAllProcessInfo").encode()
            req = (b"POST /RPC2 HTTP/1.0\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
                   b"Content-Length: %d\r\n\r\n" % len(body)) + body
            times = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                reply = unix_request(sup.socket, req, until_newline=False)
                times.append((time.perf_counter() - t0) * 1e3)
            infos = xmlrpc.client.loads(reply.split(b"\r\n\r\n", 1)[1])[0][0]
            if len(infos) != n:
                raise BenchError(f"supervisord getAllProcessInfo: {len(infos)} of {n}")
            res = {"socket": times}
        return res

    # The files corral reads for one unit's live figures (src/os/cgroup/stats.rs), by version.
    STATUS_FILES_V1 = ("cpu.stat", "cpuacct.usage", "memory.usage_in_bytes",
                       "memory.max_usage_in_bytes", "memory.limit_in_bytes", "memory.oom_control",
                       "pids.current", "pids.max", "blkio.throttle.io_service_bytes",
                       "blkio.throttle.io_serviced", "cpu.pressure", "memory.pressure",
                       "io.pressure")
    STATUS_FILES_V2 = ("memory.current", "memory.peak", "memory.max", "cpu.stat", "pids.current",
                       "pids.max", "io.stat", "memory.events", "cpu.pressure", "memory.pressure",
                       "io.pressure")

    def status_floor(self, units, rounds):
        """The floor of a `status` with live figures: cgread.c opens, reads and closes the same
        cgroup files of the same units, in ms per pass (no parsing, no JSON, no socket)."""
        v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
        mounts = [Path("/sys/fs/cgroup")] if v2 else sorted(
            p for p in Path("/sys/fs/cgroup").iterdir() if p.is_dir() and not p.is_symlink())
        paths = []
        for unit in units:
            rel = (unit.get("cgroup") or "").lstrip("/")
            for name in (self.STATUS_FILES_V2 if v2 else self.STATUS_FILES_V1):
                found = next((m / rel / name for m in mounts if (m / rel / name).exists()), None)
                if found:
                    paths.append(str(found))
        cp = subprocess.run([self.tools["cgread"], str(rounds)], input="\n".join(paths) + "\n",
                            capture_output=True, text=True)
        if cp.returncode != 0:
            raise BenchError(f"cgread failed ({cp.returncode}) on {len(paths)} files")
        return [float(x) for x in cp.stdout.split()]

    def reloads(self, events, sup, tree, times):
        """A unit file added to the directory: (a) with `reload` sent at once, until its sleep
        runs, and the reply's round trip; (b) with no request, through the file watcher."""
        out = {"verb_ms": [], "reply_ms": [], "watch_ms": []}
        for k in range(times):
            for via_verb in (True, False):
                name = f"added{k}{'v' if via_verb else 'w'}"
                tmp = sup.units_dir / f".{name}.tmp"
                tmp.write_text(sup.unit(["sleep", SLEEP_ARG], None))
                mark = len(tree.worker_execs)
                t0 = mono_ns()
                os.rename(tmp, sup.units_dir / f"{name}.toml")
                if via_verb:
                    t_req = mono_ns()
                    reply = json.loads(unix_request(sup.socket, b'{"verb":"reload"}\n', True))
                    out["reply_ms"].append((mono_ns() - t_req) / 1e6)
                    if not reply.get("ok"):
                        kind = reply.get("error", {}).get("kind")
                        if kind == "unsupported":
                            self.results["reload_supported"] = False
                            self.results["reload"] = f"not yet implemented (reload answers `{kind}`)"
                            return None
                        raise BenchError(f"corral reload failed: {reply}")
                self.wait_until(lambda: len(tree.worker_execs) > mark, 30,
                                f"corral: the unit added by {'reload' if via_verb else 'the watcher'}",
                                events)
                self.settle(events, 0.02)
                started = tree.worker_execs[mark][0]
                if via_verb:
                    out["verb_ms"].append((started - t_req) / 1e6)
                else:
                    out["watch_ms"].append((started - t0) / 1e6)
                self.settle(events, 1.2)  # let the watcher's debounce window close
        return out

    # ---- memory and idle: one instance each, side by side -----------------------------------

    def idle_phase(self, events, sups, n, window):
        running = []
        try:
            for sup in sups:
                d = self.fresh_dir(f"idle-{sup.name}-{n}")
                tree = Tree(events)
                argv = sup.argv(d, n)
                since = mono_ns()
                pid = self.spawn(argv, d / "out.log", d)
                tree.set_root(pid, since)
                running.append((sup, pid, tree, d))
                self.wait_until(lambda: len(tree.workers) >= n, self.cold_timeout(n),
                                f"{sup.name}: {n} sleeps running (idle phase)", events)
            for *_, tree, _d in running:
                tree.close()
            time.sleep(2.0)  # settle: startup work is over
            procs, before = {}, {}
            for sup, pid, _t, _d in running:
                procs[sup.name] = [pid] + [p for p in descendants(pid)
                                           if read_comm(p) != "sleep" and alive(p)]
                before[sup.name] = {p: proc_usage(p) for p in procs[sup.name]}
            time.sleep(window)
            for sup, pid, _t, _d in running:
                after = {}
                for p in procs[sup.name]:
                    try:
                        after[p] = proc_usage(p)
                    except OSError as e:
                        raise BenchError(f"{sup.name}: process {p} died while idle") from e
                mem = [proc_memory(p) for p in procs[sup.name]]
                diff = {p: [a - b for a, b in zip(after[p], before[sup.name][p])] for p in after}
                self.results["idle"].setdefault(sup.name, {})[n] = {
                    "window_s": window,
                    "ctx_main": diff[pid][0], "ticks_main": diff[pid][1],
                    "cpu_ns_main": diff[pid][2],
                    "ctx_all": sum(v[0] for v in diff.values()),
                    "ticks_all": sum(v[1] for v in diff.values()),
                    "cpu_ns_all": sum(v[2] for v in diff.values()),
                    "processes": len(procs[sup.name]),
                }
                self.results["memory"].setdefault(sup.name, {})[n] = {
                    "rss_main_kb": mem[0][0], "rss_anon_main_kb": mem[0][2],
                    "rss_all_kb": sum(m[0] for m in mem),
                    "pss_all_kb": sum(m[1] for m in mem),
                }
        finally:
            snaps = {}
            for sup, pid, tree, d in running:
                tree.close()
                snaps[sup.name] = (sup, snapshot(pid))
            for sup, pid, tree, d in running:
                self.stop(pid, sup.stop_signal)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(survivors(s) for _, s in snaps.values()):
                self.reap()
                time.sleep(0.01)
            for sup, snap in snaps.values():
                left = survivors(snap)
                if left:
                    self.note(sup, f"{sup.name} N={n}: {len(left)} processes outlived its shutdown")
            self.leftovers()
            for sup, _pid, _t, d in running:
                if sup.kind == "corral":
                    self.check_cgroups(self.cgroup_roots[-1], f"corral idle N={n}", log=d / "out.log")
                shutil.rmtree(d, ignore_errors=True)

    # ---- PID-1 zombie burst ---------------------------------------------------------------

    def burst(self, events, sup, count, tools):
        d = self.fresh_dir(f"burst-{sup.name}")
        argv = ["unshare", "--pid", "--fork", "--mount-proc",
                *sup.burst_argv(d, tools["zburst"], count)]
        u = self.spawn(argv, d / "out.log", d)
        init = None
        try:
            def found():
                nonlocal init
                kids = children(u)
                if kids and read_comm(kids[0]) not in (None, "unshare"):
                    init = kids[0]
                return init is not None
            self.wait_until(found, 10, f"{sup.name}: PID 1 of the new pid namespace", events)
            cp = subprocess.run([tools["zprobe"], str(init), str(count), "60"],
                                capture_output=True, text=True)
            events.pump(0)  # drop what the burst queued: no tree listens
            if cp.returncode != 0:
                raise BenchError(f"{sup.name} zombie burst: {cp.stderr.strip()}")
            vals = dict(kv.split("=") for kv in cp.stdout.split())
            log(f"  {sup.name}: burst reaped in {int(vals['reap_ns']) / 1e6:.1f} ms")
            return {"reap_ms": int(vals["reap_ns"]) / 1e6, "max_zombies": int(vals["max_zombies"])}
        finally:
            if init is not None:
                try:
                    os.kill(init, signal.SIGTERM if sup.stop_signal == signal.SIGTERM
                            else sup.stop_signal)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 15
            while u not in self.exited and time.monotonic() < deadline:
                self.reap()
                time.sleep(0.01)
            graceful = u in self.exited
            if not graceful:
                self.kill_tree(u)
            self.leftovers()
            if sup.kind == "corral":
                self.check_cgroups(self.cgroup_roots[-1], "corral zombie burst", report=graceful,
                                   log=d / "out.log")
            shutil.rmtree(d, ignore_errors=True)

    # ---- OOM kill -> restart (corral only) ------------------------------------------------------

    def oom(self, events, corral, tools, cycles):
        d = self.fresh_dir("oom")
        argv = corral.argv(d, 1, "oom", command=[tools["oomhog"]], extra=["--log-format", "json"])
        tree = Tree(events, workload_comm="oomhog")
        since = mono_ns()
        pid = self.spawn(argv, d / "out.log", d)
        tree.set_root(pid, since)
        try:
            # Each restart allocates until the 32M limit bites again: cycles come by themselves.
            try:
                self.wait_until(lambda: sum(1 for _ts, c in tree.exits.values()
                                            if c & 0x7f == signal.SIGKILL) >= cycles + 1,
                                60, f"corral: {cycles} OOM kills", events)
            except BenchError as e:
                codes = sorted({c for _ts, c in tree.exits.values()})
                tail = (d / "out.log").read_text()[-1500:]
                raise BenchError(f"{e}; exits seen {len(tree.exits)} with raw codes {codes}, "
                                 f"hog execs {len(tree.worker_execs)}; corral's log ends:\n{tail}") from e
            self.settle(events, 0.05)
        finally:
            tree.close()
            graceful = self.stop(pid, signal.SIGTERM)
            self.leftovers()
            self.check_cgroups(self.cgroup_roots[-1], "corral oom", report=graceful, log=d / "out.log")
        lines = [json.loads(line) for line in (d / "out.log").read_text().splitlines()
                 if line.startswith("{")]
        shutil.rmtree(d, ignore_errors=True)
        log_ms, kernel_ms = [], []
        pending = None
        for rec in lines:
            msg = rec.get("fields", {}).get("message", "")
            ts = datetime.datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00"))
            if "OOM kill" in msg:
                pending = ts
            elif msg == "started" and pending is not None:
                log_ms.append((ts - pending).total_seconds() * 1e3)
                pending = None
        execs = sorted((ts, p) for ts, p in tree.worker_execs)
        kills = sorted(ts for ts, c in tree.exits.values() if c & 0x7f == signal.SIGKILL)
        for k in kills:
            nxt = [ts for ts, _p in execs if ts > k]
            if nxt:
                kernel_ms.append((nxt[0] - k) / 1e6)
        if len(log_ms) < cycles:
            raise BenchError(f"corral OOM: the JSON log shows {len(log_ms)} OOM kills followed by a "
                             f"start, expected {cycles} (see the log format)")
        return {"log_ms": log_ms, "kernel_ms": kernel_ms}


def unix_request(path, data, until_newline):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(30)
        s.connect(str(path))
        s.sendall(data)
        chunks = []
        while True:
            b = s.recv(1 << 20)
            if not b:
                break
            chunks.append(b)
            if until_newline and b.endswith(b"\n"):
                break
        return b"".join(chunks)
    finally:
        s.close()


# --------------------------------------------------------------------------------------------
# Setup: peers, builds, machine facts


def set_subreaper():
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        raise BenchError("cannot become a child subreaper")


def apt_install(packages):
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    log(f"installing from Debian: {' '.join(packages)}")
    if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
        if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            return False
    return True


def ensure_peers(wanted, install):
    missing = {p: pkg for p, (pkg, bins) in PEER_PACKAGES.items()
               if p in wanted and not all(shutil.which(b) for b in bins)}
    if missing and install:
        apt_install(sorted(set(missing.values())))
        # Debian's supervisor package starts its own daemon where an init runs; not ours.
    return {p for p in wanted if p in PEER_PACKAGES
            and all(shutil.which(b) for b in PEER_PACKAGES[p][1])}


def build_corral(smoke):
    cmd = ["cargo", "build", "--locked"] + ([] if smoke else ["--release"])
    log(f"building corral: {' '.join(cmd)}")
    cp = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if cp.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} failed:\n{cp.stderr[-3000:]}")
    return REPO / "target" / ("debug" if smoke else "release") / "corral"


def build_tools(dest):
    tools = {}
    for name in ("floor", "zburst", "zprobe", "oomhog", "cgread"):
        out = dest / name
        cp = subprocess.run(["gcc", "-O2", "-Wall", "-o", str(out), str(BENCH / f"{name}.c")],
                            capture_output=True, text=True)
        if cp.returncode != 0:
            raise BenchError(f"gcc {name}.c failed:\n{cp.stderr}")
        tools[name] = str(out)
    return tools


def machine_facts():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    debian = Path("/etc/debian_version").read_text().strip() if Path("/etc/debian_version").exists() else "?"
    cg = "v2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "v1 (legacy hierarchies)"
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src", "Cargo.toml",
                            "Cargo.lock"], capture_output=True, text=True).stdout.strip()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(), "debian": debian, "cgroups": cg,
        "commit": commit + (" + uncommitted changes in src/" if dirty else ""),
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
    }


# --------------------------------------------------------------------------------------------
# Report


ORDER = ["floor", "corral", "tini", "dumb-init", "supervisord", "runit", "s6"]
PEERS = ["tini", "dumb-init", "supervisord", "runit", "s6"]


def med(xs):
    return statistics.median(xs) if xs else None


def fmt(v, unit):
    if v is None:
        return "-"
    if unit == "ms":
        return f"{v:.3g} ms" if v < 100 else f"{v:.0f} ms"
    if unit == "MiB":
        return f"{v:.2f} MiB" if v < 10 else f"{v:.1f} MiB"
    return f"{v:g} {unit}"


class Report:
    def __init__(self, res, meta, sizes, sups, versions, opts):
        self.r, self.meta, self.sizes, self.sups = res, meta, sizes, sups
        self.versions, self.opts = versions, opts

    def medians(self, key, sub=None):
        out = {}
        for sup, per_n in self.r.get(key, {}).items():
            for n, v in per_n.items():
                v = v[sub] if sub else v
                out.setdefault(sup, {})[int(n)] = med(v) if isinstance(v, list) else v
        return out

    def table(self, medians, unit, scale=1.0, rows=None, ratio=True, workload=None):
        rows = rows or [s for s in ORDER if s in self.sups]
        head = "| supervisor | " + " | ".join(f"N={n}" for n in self.sizes) + " |"
        lines = [head, "|---|" + "---|" * len(self.sizes)]
        for sup in rows:
            cells = []
            for n in self.sizes:
                v = medians.get(sup, {}).get(n)
                if v is None:
                    cells.append(self.why_not(sup, workload))
                    continue
                v = v * scale
                cell = fmt(v, unit)
                if ratio:
                    floor = medians.get("floor", {}).get(n)
                    peers = [medians[p][n] for p in PEERS if medians.get(p, {}).get(n) is not None]
                    parts = []
                    if floor and sup != "floor":
                        parts.append(f"{v / (floor * scale):.2f}× floor")
                    if peers and sup not in ("floor",):
                        parts.append(f"{v / (min(peers) * scale):.2f}× best peer")
                    if parts:
                        cell += " (" + ", ".join(parts) + ")"
                cells.append(cell)
            lines.append(f"| {sup} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def why_not(self, sup, workload):
        reason = self.r["cannot"].get(sup, {}).get(workload)
        if reason:
            return reason
        return "failed (see errors)" if any(e.startswith(sup + " ") for e in self.r["errors"]) else "-"

    def targets(self):
        cold = self.medians("cold")
        rows = []

        def verdict(ok):
            return "**met**" if ok else "**not met**"
        for n in self.sizes:
            c, f = cold.get("corral", {}).get(n), cold.get("floor", {}).get(n)
            peers = {p: cold[p][n] for p in PEERS if cold.get(p, {}).get(n) is not None}
            if c is None or f is None:
                continue
            best = min(peers.items(), key=lambda kv: kv[1]) if peers else None
            if n >= 100:
                rows.append((f"cold start N={n} ≤ 1.3× floor", f"{c / f:.2f}× floor ({c:.3g} vs {f:.3g} ms)",
                             verdict(c <= 1.3 * f)))
            if best:
                rows.append((f"cold start N={n} faster than every peer",
                             f"{c / best[1]:.2f}× the best peer ({best[0]}, {best[1]:.3g} ms)",
                             verdict(c < best[1])))
        lim = self.medians("cold").get("corral+limits", {})
        for n in self.sizes:
            c, l_ = cold.get("corral", {}).get(n), lim.get(n)
            if c and l_:
                rows.append((f"cold start with memory+pids limits N={n} ≤ 2× without",
                             f"{l_ / c:.2f}× ({l_:.3g} vs {c:.3g} ms)", verdict(l_ <= 2 * c)))
        rst = self.medians("restart")
        for n in self.sizes:
            c, f = rst.get("corral", {}).get(n), rst.get("floor", {}).get(n)
            if c and f:
                rows.append((f"restart latency N={n} ≤ 1.5× floor", f"{c / f:.2f}× floor ({c:.3g} vs {f:.3g} ms)",
                             verdict(c <= 1.5 * f)))
        # Issue #20's targets; RssAnon beside them, the file pages being the binary's and libc's.
        mem = self.medians("memory", "rss_main_kb").get("corral", {})
        anon = self.medians("memory", "rss_anon_main_kb").get("corral", {})
        for n, limit in ((10, 2.5), (100, 2.5), (1000, 5)):
            if n in mem:
                a = f", of which RssAnon {anon[n] / 1024:.2f}" if n in anon else ""
                rows.append((f"main RSS N={n} ≤ {limit:g} MiB", f"{mem[n] / 1024:.2f} MiB{a}",
                             verdict(mem[n] <= limit * 1024)))
        idle = self.r["idle"].get("corral", {})
        for n in self.sizes:
            if n in idle:
                i = idle[n]
                rows.append((f"idle N={n}: 0 context switches, 0 CPU over {i['window_s']:g} s",
                             f"{i['ctx_all']} switches, {i['ticks_all']} ticks, {i['cpu_ns_all'] / 1e6:.3f} ms CPU",
                             verdict(i["ctx_all"] == 0 and i["ticks_all"] == 0)))
        b = {s: med([x["reap_ms"] for x in v]) for s, v in self.r["burst"].items() if v}
        if "corral" in b and "floor" in b:
            rows.append(("zombie burst ≤ 1.2× floor", f"{b['corral'] / b['floor']:.2f}× floor "
                         f"({b['corral']:.3g} vs {b['floor']:.3g} ms)", verdict(b["corral"] <= 1.2 * b["floor"])))
        sd = self.medians("shutdown")
        n = max(self.sizes)
        c, f = sd.get("corral", {}).get(n), sd.get("floor", {}).get(n)
        if c and f:
            rows.append((f"shutdown of N={n} ≤ 1.3× floor", f"{c / f:.2f}× floor ({c:.3g} vs {f:.3g} ms)",
                         verdict(c <= 1.3 * f)))
        st = self.r["status"].get("corral", {})
        if st:
            n_st = max(int(k) for k in st)
            v = med(st[n_st]["socket"])
            floor = st[n_st].get("floor")
            of_floor = (f"; {v / med(floor):.2f}× the floor of reading the same cgroup files, "
                        f"{med(floor):.3g} ms" if floor else "")
            rows.append((f"`status` with {n_st} units < 10 ms", f"{v:.3g} ms (socket round trip; "
                         f"CLI {med(st[n_st]['cli']):.3g} ms{of_floor})", verdict(v < 10)))
        return rows

    def summary(self):
        """The short table for the README: corral against the floor and the best peer."""
        n = max(self.sizes)
        rows = []

        def row(name, key, sub=None, scale=1.0, unit="ms", per_n=True):
            m = self.medians(key, sub) if per_n else key
            c = m.get("corral", {}).get(n) if per_n else m.get("corral")
            f = m.get("floor", {}).get(n) if per_n else m.get("floor")
            peers = {p: (m.get(p, {}).get(n) if per_n else m.get(p)) for p in PEERS}
            peers = {p: v for p, v in peers.items() if v is not None}
            if c is None:
                return
            best = min(peers.items(), key=lambda kv: kv[1]) if peers else None
            rows.append(f"| {name} | {fmt(c * scale, unit)} | {c / f:.2f}× | " if f else f"| {name} | {fmt(c * scale, unit)} | - | ")
            rows[-1] += (f"{c / best[1]:.2f}× ({best[0]}) |" if best else "- |")
        row(f"cold start, N={n}", "cold")
        row(f"restart after SIGKILL, N={n}", "restart")
        row(f"shutdown, N={n}", "shutdown")
        row(f"main RSS, N={n}", "memory", "rss_main_kb", 1 / 1024, "MiB")
        b = {s: med([x["reap_ms"] for x in v]) for s, v in self.r["burst"].items() if v}
        row(f"PID-1 burst of {self.opts['burst_count']} orphans", b, per_n=False)
        out = ["| workload | corral | × floor | × best peer |", "|---|---|---|---|"] + rows
        cold = self.medians("cold")
        c, l_ = cold.get("corral", {}).get(n), cold.get("corral+limits", {}).get(n)
        st = self.r["status"].get("corral", {}).get(n) or self.r["status"].get("corral", {}).get(str(n))
        idle = self.r["idle"].get("corral", {}).get(n) or self.r["idle"].get("corral", {}).get(str(n))
        extra = []
        if c and l_:
            extra.append(f"cold start with memory+pids limits on every unit {l_ / c:.2f}× without")
        if st:
            extra.append(f"`status` of {n} units {med(st['socket']):.3g} ms")
        if idle:
            extra.append(f"idle: {idle['ctx_all']} context switches and {idle['cpu_ns_all'] / 1e6:.2g} ms CPU "
                         f"in {idle['window_s']:g} s")
        if extra:
            out += ["", "Also at N=" + str(n) + ": " + "; ".join(extra) + "."]
        return "\n".join(out)

    def markdown(self, analysis=None):
        m, o = self.meta, self.opts
        out = [
            "# corral benchmark results",
            "",
            f"Generated by `bench/run{' --smoke' if o['smoke'] else ''}` on {m['date']} in "
            f"{o['elapsed_s']:.0f} s. Every figure is a median; every ratio compares medians "
            "of the same run. Lower is better everywhere.",
            "",
            f"* machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}, "
            f"Debian {m['debian']}, cgroup {m['cgroups']}; load average before "
            f"{' '.join(m['loadavg_before'])}, after {' '.join(m.get('loadavg_after', []))}"
            + (f", 1-minute load during the timed runs {min(m['loadavg_during']):g}..{max(m['loadavg_during']):g}"
               f" (sampled at the start of each N; the benchmark's own storms of thousands of processes"
               f" raise it, so a quiet machine shows as a low load before the run)"
               if m.get("loadavg_during") else ""),
            f"* corral: commit {m['commit']}, {self.versions.get('corral', '')}",
            "* peers: " + "; ".join(f"{k}: {v}" for k, v in self.versions.items() if k != "corral"),
            f"* method: N = {', '.join(map(str, self.sizes))} units of `sleep {SLEEP_ARG}`; "
            f"{o['reps']} repetitions, the supervisors in turns (rotated order each repetition); "
            f"{o['kills']} SIGKILLs per run for restart latency; memory and idle from one instance "
            f"of each, side by side, after 2 s of settling, over {o['idle_window']:g} s; zombie "
            f"burst of {o['burst_count']} orphans, {o['reps']} times. See bench/README.md.",
            "",
            "## Targets",
            "",
            "| target | measured | verdict |",
            "|---|---|---|",
        ]
        out += [f"| {a} | {b} | {c} |" for a, b, c in self.targets()]
        out += ["", f"## Summary at N={max(self.sizes)}", "", self.summary()]
        out += ["", "## Cold start: launch until all N sleeps run", "",
                "From the supervisor's exec to the exec of the N-th `sleep` (kernel timestamps).", "",
                self.table(self.medians("cold"), "ms", rows=[s for s in ORDER if s in self.sups]
                           + (["corral+limits"] if "corral+limits" in self.r["cold"] else []))]
        out += ["", "`corral+limits`: every unit with `memory-max` and `pids-max`. "
                "tini and dumb-init run one child: a shell that starts the N sleeps.", ""]
        out += ["## Restart latency after SIGKILL of one child", "",
                "From the killed child's exit to the exec of its replacement (kernel timestamps), "
                "restart delay at its minimum (corral `delay = \"0\"`).", "",
                self.table(self.medians("restart"), "ms", workload="restart"), ""]
        out += ["## Memory after start", "",
                "RSS of the main supervisor process:", "",
                self.table(self.medians("memory", "rss_main_kb"), "MiB", scale=1 / 1024), "",
                "Of which anonymous memory (RssAnon; the rest is the binary's and libc's file pages):", "",
                self.table(self.medians("memory", "rss_anon_main_kb"), "MiB", scale=1 / 1024, ratio=False), "",
                "RSS summed over every supervisor process (runsvdir + one runsv per service, "
                "s6-svscan + one s6-supervise per service, tini/dumb-init + their shell); "
                "PSS in parentheses counts shared pages once:", ""]
        rss_all = self.medians("memory", "rss_all_kb")
        pss_all = self.medians("memory", "pss_all_kb")
        t = self.table(rss_all, "MiB", scale=1 / 1024, ratio=False).splitlines()
        for i, sup in enumerate([s for s in ORDER if s in self.sups]):
            cells = t[i + 2].split(" | ")
            for j, n in enumerate(self.sizes):
                p = pss_all.get(sup, {}).get(n)
                if p is not None:
                    cells[j + 1] = cells[j + 1].rstrip(" |") + f" (PSS {p / 1024:.2f} MiB)" + (
                        " |" if j == len(self.sizes) - 1 else "")
            t[i + 2] = " | ".join(cells)
        out += t + [""]
        out += ["## Idle cost", "",
                f"Context switches (voluntary + involuntary, every thread) and CPU time over "
                f"{o['idle_window']:g} s, main process / all supervisor processes:", "",
                "| supervisor | " + " | ".join(f"N={n}" for n in self.sizes) + " |",
                "|---|" + "---|" * len(self.sizes)]
        for sup in [s for s in ORDER if s in self.sups]:
            cells = []
            for n in self.sizes:
                i = self.r["idle"].get(sup, {}).get(n)
                cells.append("-" if not i else
                             f"{i['ctx_main']} / {i['ctx_all']} switches, "
                             f"{i['cpu_ns_main'] / 1e6:.2f} / {i['cpu_ns_all'] / 1e6:.2f} ms CPU")
            out.append(f"| {sup} | " + " | ".join(cells) + " |")
        out += ["", "## PID-1 zombie burst", "",
                f"The supervisor is PID 1 of a new pid namespace (`unshare --pid --fork --mount-proc`); "
                f"{o['burst_count']} orphans are SIGKILLed at once (one `kill(-pgid)`); time until the "
                "last is reaped, and the most zombies seen in one pass over their /proc/PID/stat.", "",
                "| supervisor | time to reap all | × floor | × best peer | most zombies seen |",
                "|---|---|---|---|---|"]
        b = {s: v for s, v in self.r["burst"].items() if v}
        bm = {s: med([x["reap_ms"] for x in v]) for s, v in b.items()}
        best = min((bm[p] for p in PEERS if p in bm), default=None)
        for sup in [s for s in ORDER if s in self.sups]:
            if sup not in bm:
                out.append(f"| {sup} | {self.why_not(sup, 'burst')} | | | |")
                continue
            fl = bm.get("floor")
            xf = f"{bm[sup] / fl:.2f}×" if fl else "-"
            xb = f"{bm[sup] / best:.2f}×" if best else "-"
            out.append(f"| {sup} | {fmt(bm[sup], 'ms')} | {xf} | {xb} | "
                       f"{med([x['max_zombies'] for x in b[sup]]):.0f} |")
        out += ["", "## Shutdown: SIGTERM until every process is gone", "",
                "From the signal to the exit of the last process of the tree (kernel timestamps). "
                "runit gets SIGHUP: runsvdir leaves every service running on SIGTERM.", "",
                self.table(self.medians("shutdown"), "ms"), "",
                "Until the last `sleep` exited (the supervisor's own exit not waited for):", "",
                self.table(self.medians("shutdown_workers"), "ms"), ""]
        out += ["## corral only", ""]
        st = self.r["status"]
        if st.get("corral"):
            for n in sorted(int(k) for k in st["corral"]):
                c = st["corral"][n]
                line = (f"* `status` with {n} units: socket round trip {med(c['socket']):.3g} ms, "
                        f"`corral status --json` {med(c['cli']):.3g} ms (process start included)")
                if c.get("floor"):
                    line += (f"; reading the same cgroup files alone (bench/cgread.c) "
                             f"{med(c['floor']):.3g} ms, so corral's round trip is "
                             f"{med(c['socket']) / med(c['floor']):.2f}× that floor")
                s = st.get("supervisord", {}).get(n)
                if s:
                    line += (f"; supervisord's `getAllProcessInfo` over its socket {med(s['socket']):.3g} ms "
                             f"(corral's round trip is {med(c['socket']) / med(s['socket']):.2f}× supervisord's)")
                out.append(line + ".")
        cold = self.medians("cold")
        for n in self.sizes:
            c, l_ = cold.get("corral", {}).get(n), cold.get("corral+limits", {}).get(n)
            if c and l_:
                out.append(f"* cold start with memory-max + pids-max on every unit, N={n}: "
                           f"{l_:.3g} ms, {l_ / c:.2f}× without limits.")
        if self.r.get("reloads"):
            for n in sorted(int(k) for k in self.r["reloads"]):
                rl = self.r["reloads"][n]
                out.append(
                    f"* reload with {n} units running, one unit file added: {med(rl['verb_ms']):.3g} ms "
                    f"from `reload` sent to the new unit's exec (the reply itself {med(rl['reply_ms']):.3g} ms); "
                    f"{med(rl['watch_ms']):.3g} ms from the file's rename into the directory to the exec "
                    "with no request (the file watcher, 100 ms debounce included).")
        else:
            out.append(f"* reload latency: {self.r['reload'] or 'not measured'}.")
        oom = self.r["oom"]
        if oom:
            rs = self.medians("restart").get("corral", {}).get(min(self.sizes))
            out.append(
                f"* restart after an OOM kill (`memory-max = \"32M\"`, a program touching 1 MiB at a "
                f"time; {len(oom['log_ms'])} kills): {med(oom['log_ms']):.3g} ms from the OOM-kill line "
                f"to the `started` line of corral's JSON log; {med(oom['kernel_ms']):.3g} ms from the "
                "kernel's exit event to the new exec"
                + (f" ({med(oom['kernel_ms']) / rs:.1f}× corral's restart after a plain SIGKILL at N={min(self.sizes)})"
                   if rs else "") + ".")
        out += ["", "## What a peer cannot do", ""]
        for sup, why in self.r["cannot"].items():
            for w, reason in why.items():
                out.append(f"* {sup}, {w}: {reason}")
        if self.r.get("peer_notes"):
            out += ["", "## Peer observations", ""] + [f"* {p}" for p in self.r["peer_notes"]]
        if self.r["errors"]:
            out += ["", "## Errors in this run", ""] + [f"* {e}" for e in self.r["errors"]]
        if self.r.get("problems"):
            out += ["", "## Things in corral that looked wrong in this run", ""]
            out += [f"* {p}" for p in self.r["problems"]]
        if analysis:
            out += ["", analysis.strip()]
        return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------


def parse_args():
    ap = argparse.ArgumentParser(prog="bench/run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true",
                    help="N=10, one repetition, every workload, no plots: CI's check that nothing broke")
    ap.add_argument("--sizes", default=None, help="comma-separated N (default 10,100,1000)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3; smoke 1)")
    ap.add_argument("--kills", type=int, default=None, help="SIGKILLs per run (default 20; smoke 3)")
    ap.add_argument("--only", default=None, help="comma-separated supervisors to run")
    ap.add_argument("--corral", default=None, help="use this corral binary instead of building one")
    ap.add_argument("--corral-rev", default=None, help="with --corral: the commit it was built from")
    ap.add_argument("--no-install", action="store_true", help="skip peers that are not installed")
    ap.add_argument("--out", default=None,
                    help="where RESULTS.md, results.json and plots/ go (default bench/; smoke: nowhere)")
    ap.add_argument("--idle-window", type=float, default=None, help="seconds (default 10; smoke 2)")
    ap.add_argument("--burst-count", type=int, default=None, help="orphans (default 2000; smoke 500)")
    ap.add_argument("--report-from", default=None, metavar="RESULTS_JSON",
                    help="measure nothing: write RESULTS.md (and plots) again from a results.json")
    args = ap.parse_args()
    args.sizes = [int(x) for x in (args.sizes or ("10" if args.smoke else "10,100,1000")).split(",")]
    args.reps = args.reps or (1 if args.smoke else 3)
    args.kills = args.kills if args.kills is not None else (3 if args.smoke else 20)
    args.idle_window = args.idle_window or (2.0 if args.smoke else 10.0)
    args.burst_count = args.burst_count or (500 if args.smoke else 2000)
    if args.out is None and not args.smoke:
        args.out = str(BENCH)
    return args


def write_keeping_scale(results_md, text):
    """Writes RESULTS.md, keeping its scale section (bench/scale.py, `bench/run --scale`) as the
    last scale run left it: a full run or a `--report-from` measures none of it."""
    old = results_md.read_text() if results_md.exists() else ""
    begin, end = "<!-- scale: begin", "<!-- scale: end -->"
    if begin in old and end in old:
        text = text.rstrip("\n") + "\n\n" + begin + old.split(begin, 1)[1].split(end, 1)[0] \
            + end + "\n"
    results_md.write_text(text)


def report_only(args):
    doc = json.loads(Path(args.report_from).read_text())
    res = doc["results"]
    for key in ("cold", "restart", "restart_from_kill", "shutdown", "shutdown_workers", "memory", "idle",
                "status"):
        res[key] = {sup: {int(n): v for n, v in per_n.items()} for sup, per_n in res.get(key, {}).items()}
    res["reloads"] = {int(n): v for n, v in res.get("reloads", {}).items()}
    report = Report(res, doc["meta"], doc["sizes"], doc["supervisors"], doc["versions"], doc["options"])
    analysis = BENCH / "analysis.md"
    out = Path(args.out or BENCH)
    out.mkdir(parents=True, exist_ok=True)
    write_keeping_scale(out / "RESULTS.md",
                        report.markdown(analysis.read_text() if analysis.exists() else None))
    log(f"wrote {out / 'RESULTS.md'} from {args.report_from}")
    if out / "results.json" != Path(args.report_from).resolve():
        (out / "results.json").write_text(Path(args.report_from).read_text())
    draw_plots(out)
    return 0


def main():
    args = parse_args()
    if args.report_from:
        return report_only(args)
    if os.geteuid() != 0:
        sys.exit("bench/run needs root: cgroups, pid namespaces and the proc connector")
    t_start = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    wanted = set(args.only.split(",")) if args.only else set(ORDER) | {"corral+limits"}
    set_subreaper()
    peers = ensure_peers(wanted, not args.no_install)
    for p in sorted((wanted & set(PEERS)) - peers):
        log(f"skipping {p}: not installed")
    corral_bin = Path(args.corral) if args.corral else build_corral(args.smoke)
    bench = Bench(args)
    fail = False
    try:
        tools = build_tools(bench.work)
        bench.tools = tools
        events = ProcEvents()
        corral = Corral(corral_bin, bench.cgroup_roots)
        all_sups = {"floor": Floor(tools), "corral": corral, "tini": Tini(), "dumb-init": DumbInit(),
                    "supervisord": Supervisord(), "runit": Runit(), "s6": S6()}
        sups = [all_sups[s] for s in ORDER if s in wanted and (s not in PEERS or s in peers)]
        names = [s.name for s in sups]
        res = bench.results
        for s in sups:
            for w, reason in s.cannot.items():
                res["cannot"].setdefault(s.name, {})[w] = reason
        versions = {s.name: s.version() for s in sups}
        meta = machine_facts()
        if args.corral:
            meta["commit"] = args.corral_rev or "unknown (a binary given with --corral)"

        def attempt(label, fn):
            nonlocal fail
            try:
                return fn()
            except BenchError as e:
                fail = True
                res["errors"].append(f"{label}: {e}")
                log(f"FAILED {label}: {e}")
                return None

        # 1. memory and idle: every supervisor at once, per N
        for n in args.sizes:
            log(f"memory and idle, N={n}: {', '.join(names)}")
            attempt(f"idle N={n}", lambda: bench.idle_phase(events, sups, n, args.idle_window))
        # 2. the timed runs, in turns
        runs = [(s, None) for s in sups]
        if "corral" in names and "corral+limits" in wanted:
            runs.insert(names.index("corral") + 1, (corral, "limits"))
        for rep in range(args.reps):
            order = runs[rep % len(runs):] + runs[:rep % len(runs)]
            for n in args.sizes:
                log(f"repetition {rep + 1}/{args.reps}, N={n}")
                meta.setdefault("loadavg_during", []).append(
                    float(Path("/proc/loadavg").read_text().split()[0]))
                for sup, variant in order:
                    label = sup.name + (f"+{variant}" if variant else "")
                    can_restart = "restart" not in sup.cannot and variant is None
                    out = attempt(f"{label} N={n}", lambda: bench.lifecycle(
                        events, sup, n, variant, kills=args.kills if can_restart else 0,
                        status=(n == max(args.sizes) and sup.name in ("corral", "supervisord")
                                and variant is None)))
                    if not out:
                        continue
                    for key in ("cold", "shutdown", "shutdown_workers"):
                        res[key].setdefault(label, {}).setdefault(n, []).append(out[key])
                    if "restart" in out:
                        res["restart"].setdefault(label, {}).setdefault(n, []).extend(out["restart"])
                        res["restart_from_kill"].setdefault(label, {}).setdefault(n, []).extend(
                            out["restart_from_kill"])
                    if out.get("reload"):
                        rl = res["reloads"].setdefault(n, {})
                        for k, v in out["reload"].items():
                            rl.setdefault(k, []).extend(v)
                    if out.get("status"):
                        st = res["status"].setdefault(label, {}).setdefault(n, {})
                        for k, v in out["status"].items():
                            st.setdefault(k, []).extend(v)
        # 3. PID-1 zombie burst
        for rep in range(args.reps):
            log(f"zombie burst {rep + 1}/{args.reps}")
            for sup in sups[rep % len(sups):] + sups[:rep % len(sups)]:
                out = attempt(f"{sup.name} zombie burst",
                              lambda: bench.burst(events, sup, args.burst_count, tools))
                if out:
                    res["burst"].setdefault(sup.name, []).append(out)
        # 4. corral only: OOM kill -> restart
        if "corral" in names:
            log("corral: restart after OOM kills")
            out = attempt("corral OOM restart", lambda: bench.oom(events, corral, tools,
                                                                  3 if args.smoke else 20))
            if out:
                res["oom"] = out
    finally:
        left = bench.leftovers()
        for root in bench.cgroup_roots:
            bench.check_cgroups(root, "at exit", report=False)
        shutil.rmtree(bench.work, ignore_errors=True)
        if left:
            log(f"killed {len(left)} leftover processes at exit")
    res["problems"] = bench.problems
    meta["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    opts = {"smoke": args.smoke, "reps": args.reps, "kills": args.kills,
            "idle_window": args.idle_window, "burst_count": args.burst_count,
            "elapsed_s": time.monotonic() - t_start}
    report = Report(res, meta, args.sizes, names, versions, opts)
    analysis_file = BENCH / "analysis.md"
    text = report.markdown(analysis_file.read_text() if analysis_file.exists() and not args.smoke
                           else None)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_keeping_scale(out / "RESULTS.md", text)
        (out / "results.json").write_text(json.dumps(
            {"meta": meta, "versions": versions, "options": opts, "sizes": args.sizes,
             "supervisors": names, "results": res}, indent=1, sort_keys=True))
        log(f"wrote {out / 'RESULTS.md'} and {out / 'results.json'}")
        if not args.smoke:
            draw_plots(out)
    else:
        print(text)
    log(f"done in {time.monotonic() - t_start:.0f} s" + ("; SOME WORKLOADS FAILED" if fail else ""))
    return 1 if fail else 0


def draw_plots(out):
    py = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    if subprocess.run([py, "-c", "import matplotlib"], capture_output=True).returncode != 0:
        apt_install(["python3-matplotlib"])
    cp = subprocess.run([py, str(BENCH / "plot.py"), str(out / "results.json"), str(out / "plots")])
    if cp.returncode != 0:
        log("plotting failed (the results are written)")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        log(f"FAILED: {e}")
        sys.exit(1)
