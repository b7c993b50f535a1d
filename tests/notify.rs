//! Black-box hardening of the units' notify sockets: who may reach them, what a sender may pass,
//! how much a flood costs, and that nobody can take a unit's socket before it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{
    Corral, NOBODY, NOGROUP, is_about, is_output, msg, require_root, require_systemd_notify,
};
use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr, sendmsg, socket,
};

/// The `NOTIFY_SOCKET` a unit printed as `socket=...` on its first line.
/// The first `socket=` line of `unit`, looked for in the whole log: units print theirs in any
/// order, and a unit keeps its socket across restarts.
fn notify_socket_of(c: &mut Corral, unit: &str) -> String {
    let lines = c.wait_count(&format!("{unit}'s NOTIFY_SOCKET"), 1, |l| {
        is_output(l, unit) && msg(l).starts_with("socket=")
    });
    msg(&lines[0]).trim_start_matches("socket=").to_owned()
}

/// `NOTIFY_SOCKET` as sd_notify reads it: `@name` is abstract, anything else a path.
fn address(socket: &str) -> UnixAddr {
    match socket.strip_prefix('@') {
        Some(name) => UnixAddr::new_abstract(name.as_bytes()).unwrap(),
        None => UnixAddr::new(socket).unwrap(),
    }
}

/// A unit that prints its `NOTIFY_SOCKET` and waits for a READY=1 that never comes.
const WAITING: &str = r#"
    [exec]
    command = ["sh", "-c", "echo \"socket=$NOTIFY_SOCKET\"; exec sleep 600"]
    ready = "notify"
    start-timeout = "10m"
"#;

#[test]
fn a_local_user_who_is_not_the_units_cannot_send_to_its_notify_socket() {
    if !require_root() || !require_systemd_notify() {
        return;
    }
    let mut c = Corral::new();
    // The unit runs as `daemon`; the sender is `nobody`, a stranger to it.
    c.unit("svc", &format!("{WAITING}user = \"daemon\"\n"));
    c.launch(&[]);
    let target = notify_socket_of(&mut c, "svc");

    let out = Command::new("systemd-notify")
        .args(["--ready", "--status=forged by nobody"])
        .env("NOTIFY_SOCKET", &target)
        .uid(NOBODY)
        .gid(NOGROUP)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("Permission denied"),
        "nobody reached {target}: {:?} {stderr}",
        out.status
    );
    let status = c.status("svc");
    assert_eq!(status["state"], "starting", "{status}");
    assert!(status["status_text"].is_null(), "{status}");
}

#[test]
fn a_passed_socket_whose_close_lingers_does_not_stall_corral() {
    if !require_root() || !require_systemd_notify() {
        return;
    }
    const LINGER: Duration = Duration::from_secs(30);
    let mut c = Corral::new();
    c.unit("svc", WAITING);
    c.unit(
        "once",
        r#"
        kind = "oneshot"
        enabled = false
        [exec]
        command = ["true"]
        "#,
    );
    // Another unit's barrier fds go to its own closer, which is not stuck behind svc's.
    c.unit(
        "peer",
        r#"
        enabled = false
        [exec]
        command = ["sh", "-c", "systemd-notify --ready; exec sleep 600"]
        ready = "notify"
        "#,
    );
    c.launch(&[]);
    let target = notify_socket_of(&mut c, "svc");

    // A connection whose peer never reads, its buffers full: closing the last reference to
    // it with SO_LINGER {1, 30s} waits up to 30s for data that will never leave.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let stuck = lingering_connection(&listener, LINGER);

    // Passed by root, which may reach any socket: corral must drop it without waiting on it.
    let sender = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    let fds = [stuck.as_raw_fd()];
    sendmsg(
        sender.as_raw_fd(),
        &[std::io::IoSlice::new(b"STATUS=lingering")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        Some(&address(&target)),
    )
    .unwrap();
    drop(stuck);
    let me = std::process::id();
    c.wait_log("the refusal", |l| {
        is_about(
            l,
            "svc",
            &format!("ignoring a notify message from pid {me}"),
        )
    });

    // Well within the linger time: the control socket answers, and a start that needs a
    // reaped exit completes.
    let budget = LINGER / 3;
    let answered = |args: &'static [&'static str]| {
        let cmd = c.cmd(args);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut cmd = cmd;
            let _ = tx.send(cmd.stdin(Stdio::null()).output());
        });
        rx.recv_timeout(budget)
            .unwrap_or_else(|_| panic!("corral {args:?} did not answer within {budget:?}"))
            .unwrap()
    };
    let status = answered(&["status", "--json"]);
    assert!(status.status.code() == Some(0) || status.status.code() == Some(3));
    let start = answered(&["start", "once"]);
    // A oneshot's start answers once its exit was reaped.
    assert!(start.status.success(), "{start:?}");
    let start = answered(&["start", "peer"]);
    assert!(start.status.success(), "{start:?}");
    drop(listener);
}

#[test]
fn a_flood_of_refused_notify_messages_logs_one_warning_and_a_count() {
    if !require_root() {
        return;
    }
    const FLOOD: usize = 3000;
    let mut c = Corral::new();
    c.unit("svc", WAITING);
    c.launch(&[]);
    let target = notify_socket_of(&mut c, "svc");
    let sender = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    let to = address(&target);
    for _ in 0..FLOOD {
        // Blocking: a full queue makes the sender wait, so every datagram arrives.
        nix::sys::socket::sendto(sender.as_raw_fd(), b"READY=1", &to, MsgFlags::empty()).unwrap();
    }
    let summary = c.wait_log("the count of the refused rest", |l| {
        is_about(l, "svc", "more notify messages refused")
    });
    assert!(
        msg(&summary).contains(&format!("{} more", FLOOD - 1)),
        "{summary}"
    );
    let warnings = c
        .seen
        .iter()
        .filter(|l| is_about(l, "svc", "ignoring a notify message"))
        .count();
    assert_eq!(warnings, 1, "one warning for the episode, the rest counted");
    assert_eq!(c.status("svc")["state"], "starting");
}

#[test]
fn a_squatter_cannot_keep_a_unit_from_its_notify_socket() {
    if !require_root() || !require_systemd_notify() {
        return;
    }
    let mut c = Corral::new();
    c.unit("early", WAITING);
    c.unit(
        "late",
        r#"
        enabled = false
        [exec]
        command = ["sh", "-c", "echo \"socket=$NOTIFY_SOCKET\"; systemd-notify --ready; exec sleep 600"]
        ready = "notify"
        start-timeout = "10s"
        "#,
    );
    c.launch(&[]);
    let early = notify_socket_of(&mut c, "early");

    // A stranger takes every name it can guess for `late` before it starts: the abstract
    // name after the pattern of `early`'s, and a file next to `early`'s socket.
    let guessed = early.replace("early", "late");
    let _squat = guessed.strip_prefix('@').map(|name| {
        let s = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        nix::sys::socket::bind(
            s.as_raw_fd(),
            &UnixAddr::new_abstract(name.as_bytes()).unwrap(),
        )
        .unwrap();
        s
    });
    if !early.starts_with('@') {
        let dir = std::path::Path::new(&early).parent().unwrap();
        let touch = Command::new("touch")
            .arg(dir.join("late"))
            .uid(NOBODY)
            .gid(NOGROUP)
            .output()
            .unwrap();
        assert!(
            !touch.status.success(),
            "nobody created a file in the notify directory {}",
            dir.display()
        );
    }

    c.ok(&["start", "late"]);
    let late = notify_socket_of(&mut c, "late");
    assert!(!late.is_empty(), "late got a NOTIFY_SOCKET");
    assert_eq!(c.status("late")["state"], "running");
}

#[test]
fn a_unit_in_its_own_user_pid_network_and_mount_namespaces_reaches_its_notify_socket() {
    if !require_root() || !require_systemd_notify() {
        return;
    }
    let mut c = Corral::new();
    // A path, unlike an abstract name, is reachable from another network namespace; the
    // socket belongs to the host uid the unit runs as (nobody, root inside).
    c.unit(
        "boxed",
        r#"
        [exec]
        command = ["sh", "-c", "echo \"socket=$NOTIFY_SOCKET\"; systemd-notify --ready --status=boxed; exec sleep 600"]
        ready = "notify"
        user = "nobody"
        [namespaces]
        user = true
        pid = true
        net = true
        mount = true
        [health]
        watchdog = "1h"
        "#,
    );
    c.launch(&[]);
    let path = notify_socket_of(&mut c, "boxed");
    c.wait_log("ready", |l| is_about(l, "boxed", "ready (READY=1)"));
    let status = c.status("boxed");
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(status["status_text"], "boxed", "{status}");
    let meta = std::fs::symlink_metadata(&path).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.uid(), meta.mode() & 0o777), (NOBODY, 0o600), "{path}");
}

#[test]
fn corral_raises_its_open_files_limit_and_units_keep_the_one_it_was_given() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit(
        "limits",
        r#"
        [exec]
        command = ["sh", "-c", "echo \"nofile=$(ulimit -Sn)\"; exec sleep 600"]
        "#,
    );
    // corral starts with a soft limit of 1024 below a higher hard one.
    c.launch_wrapped(
        &["sh", "-c", r#"ulimit -Sn 1024; ulimit -Hn 4096; "$0" "$@""#],
        &[],
    );
    let line = c.wait_log("the unit's limit", |l| {
        is_output(l, "limits") && msg(l).starts_with("nofile=")
    });
    assert_eq!(msg(&line), "nofile=1024");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", c.pid())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect::<Vec<_>>();
    // Both to fs.nr_open where corral may raise its hard limit (CAP_SYS_RESOURCE, which it
    // inherits from this test), as systemd does; else the soft one to the hard one.
    let expected = if holds_capability(CAP_SYS_RESOURCE) {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .unwrap()
            .trim()
            .to_owned()
    } else {
        "4096".to_owned()
    };
    assert_eq!(open_files, [&expected, &expected], "{limits}");
}

/// include/uapi/linux/capability.h.
const CAP_SYS_RESOURCE: u32 = 24;

/// Whether this process has `cap` in its effective set (its `CapEff` in /proc).
fn holds_capability(cap: u32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
        .unwrap();
    effective & (1 << cap) != 0
}

/// A TCP connection whose peer never reads, its buffers full, with SO_LINGER {1, `linger`}:
/// closing the last reference to it waits up to `linger` for data that will never leave.
fn lingering_connection(listener: &TcpListener, linger: Duration) -> TcpStream {
    let mut stuck = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    stuck.set_nonblocking(true).unwrap();
    let chunk = [0u8; 65536];
    while stuck.write(&chunk).is_ok() {}
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: linger.as_secs() as libc::c_int,
    };
    // SAFETY: a valid socket fd and a linger struct of the size passed.
    let set = unsafe {
        libc::setsockopt(
            stuck.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "setting SO_LINGER");
    stuck
}

/// Where corral may not raise its hard open-files limit (no CAP_SYS_RESOURCE, as here under
/// `ulimit -Hn 4096`), the closers' shared budget is a quarter of 4096, and two units holding
/// 506 fds each in stuck closers would fill it: every unit's socket would go unread. A closer
/// parks each batch in a socket pair's queue before it closes its copies (os/fd_closer.rs), so
/// a blocked last close holds no slot of corral's table, and only the unit's own socket waits.
#[test]
fn two_units_whose_closers_are_stuck_do_not_pause_every_other_units_notify_socket() {
    if !require_root() || !require_systemd_notify() {
        return;
    }
    const LINGER: Duration = Duration::from_secs(60);
    let mut c = Corral::new();
    // Two units of a user who turns hostile, and a third unit of someone else's that starts
    // later and needs its READY=1 read.
    c.unit("hostile-a", &format!("{WAITING}user = \"nobody\"\n"));
    c.unit("hostile-b", &format!("{WAITING}user = \"nobody\"\n"));
    c.unit(
        "victim",
        r#"
        enabled = false
        [exec]
        command = ["sh", "-c", "systemd-notify --ready; exec sleep 600"]
        ready = "notify"
        user = "daemon"
        "#,
    );
    // The open-files limits a machine's init starts with (the kernel's INR_OPEN_CUR and
    // INR_OPEN_MAX): corral as /sbin/init finds 1024 and 4096.
    c.launch_wrapped(
        &["sh", "-c", r#"ulimit -Sn 1024; ulimit -Hn 4096; "$0" "$@""#],
        &[],
    );
    let targets = [
        notify_socket_of(&mut c, "hostile-a"),
        notify_socket_of(&mut c, "hostile-b"),
    ];

    // Each hostile socket gets a lingering connection first, then /dev/null until its closer
    // holds all it may (two full messages): the closer blocks on the first close and the rest
    // wait behind it. The sockets are nobody's, so nobody (either unit) can send all of this;
    // root sends it here, which reaches the same closers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let null = std::fs::File::open("/dev/null").unwrap();
    let sender = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    let mut stuck = Vec::new();
    for target in &targets {
        let conn = lingering_connection(&listener, LINGER);
        for message in 0..2 {
            let mut fds = vec![null.as_raw_fd(); 253];
            if message == 0 {
                fds[0] = conn.as_raw_fd();
            }
            sendmsg(
                sender.as_raw_fd(),
                &[std::io::IoSlice::new(b"STATUS=holding")],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::empty(),
                Some(&address(target)),
            )
            .unwrap();
        }
        stuck.push(conn);
    }
    drop(stuck);
    let me = std::process::id();
    for unit in ["hostile-a", "hostile-b"] {
        c.wait_count("the refusal", 1, |l| {
            is_about(l, unit, &format!("ignoring a notify message from pid {me}"))
        });
    }

    // The victim's READY=1 is read well within the linger time: its start answers.
    let budget = LINGER / 3;
    let cmd = c.cmd(&["start", "victim"]);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut cmd = cmd;
        let _ = tx.send(cmd.stdin(Stdio::null()).output());
    });
    let start = rx
        .recv_timeout(budget)
        .unwrap_or_else(|_| {
            panic!(
                "`corral start victim` did not answer within {budget:?}: its READY=1 was never read"
            )
        })
        .unwrap();
    assert!(start.status.success(), "{start:?}");
    drop(listener);
}

#[test]
fn a_notify_directory_below_another_users_directory_is_refused() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    // `theirs` is nobody's: nobody may rename `notify` away and put a directory of theirs in
    // its place, with sockets of theirs where the units' are expected.
    let theirs = c.root().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOGROUP)).unwrap();
    let dir = theirs.join("notify");
    c.unit("svc", WAITING);
    c.launch(&["--notify-dir", dir.to_str().unwrap()]);
    let warning = c.wait_log("the refusal", |l| {
        is_about(l, "svc", "the unit gets no NOTIFY_SOCKET")
    });
    assert!(
        msg(&warning).contains(&theirs.display().to_string()),
        "the warning names the other user's directory: {warning}"
    );
    assert_eq!(
        notify_socket_of(&mut c, "svc"),
        "",
        "svc got a NOTIFY_SOCKET below {dir:?}"
    );
}
