//! systemd's sd_notify datagrams (`READY=1\nSTATUS=...`) read into what corral acts on.

/// One datagram's assignments that corral understands; the others are ignored, as systemd
/// ignores what it does not know.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotifyMessage {
    pub ready: bool,
    pub stopping: bool,
    /// `STATUS=`: free text for `status`.
    pub status: Option<String>,
    /// `MAINPID=`: the unit's main process is now this one.
    pub main_pid: Option<i32>,
    /// `WATCHDOG=1`: a keep-alive ping.
    pub watchdog_ping: bool,
    /// `WATCHDOG=trigger`: the service asks to be treated as hung.
    pub watchdog_trigger: bool,
    /// `WATCHDOG_USEC=`: the service changes its own watchdog timeout.
    pub watchdog_usec: Option<u64>,
    /// `BARRIER=1`: the sender waits until its passed fd is closed (corral drops every fd).
    pub barrier: bool,
}

impl NotifyMessage {
    /// Parses the newline-separated `KEY=VALUE` lines of one datagram. Like systemd, a value
    /// that does not parse is ignored rather than failing the whole message.
    pub fn parse(datagram: &[u8]) -> NotifyMessage {
        let mut msg = NotifyMessage::default();
        let text = String::from_utf8_lossy(datagram);
        for line in text.split('\n') {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            match key {
                "READY" => msg.ready |= value == "1",
                "STOPPING" => msg.stopping |= value == "1",
                "STATUS" => msg.status = Some(value.to_owned()),
                "MAINPID" => {
                    msg.main_pid = value.parse::<i32>().ok().filter(|p| *p > 0);
                }
                "WATCHDOG" => match value {
                    "1" => msg.watchdog_ping = true,
                    "trigger" => msg.watchdog_trigger = true,
                    _ => {}
                },
                "WATCHDOG_USEC" => {
                    msg.watchdog_usec = value.parse::<u64>().ok().filter(|u| *u > 0);
                }
                "BARRIER" => msg.barrier |= value == "1",
                _ => {}
            }
        }
        msg
    }

    /// Whether the message carries anything the state machine acts on.
    pub fn is_empty(&self) -> bool {
        *self
            == NotifyMessage {
                barrier: self.barrier,
                ..NotifyMessage::default()
            }
    }
}

/// The sender of a `MAINPID=` as the kernel and /proc describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    /// Its pid in corral's pid namespace (SCM_CREDENTIALS translates it).
    pub pid: i32,
    /// Its parent and its pids from corral's pid namespace down to its own (`NSpid` of
    /// /proc/PID/status), if it could still be read.
    pub lineage: Option<(i32, Vec<i32>)>,
}

/// What becomes of a `MAINPID=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MainPidClaim {
    /// The main process is now this one (corral's numbering), if it is a process of the unit.
    Accept(i32),
    /// It names the main process already: nothing changes, whoever sent it.
    Unchanged,
    Refuse(String),
}

/// The pid the command of a unit with its own pid namespace has there: the first process
/// forked in a fresh namespace after its init, corral's helper.
pub const COMMAND_PID_IN_NAMESPACE: i32 = 2;

/// Judges `MAINPID=claimed`. Only the main process may move the main process elsewhere (as
/// systemd's default `NotifyAccess=main` for its notify services): the other processes of a
/// unit may run with fewer privileges than it (a root master and its workers), and the main
/// process is the one whose end the restart policy judges and whom `stop` signals.
///
/// The number is the sender's: in its own pid namespace. In a unit with a pid namespace of its
/// own, the main process corral knows (`main`) is the helper init, which stands for the command
/// (pid 2 there) and ends with it, taking the namespace with it. So there the command may only
/// name itself, which changes nothing, and no other process can become the main one.
pub fn judge_main_pid(
    claimed: i32,
    sender: &Sender,
    main: Option<i32>,
    own_pid_namespace: bool,
) -> MainPidClaim {
    let refuse = |why: &str| MainPidClaim::Refuse(format!("ignoring MAINPID={claimed}: {why}"));
    if !own_pid_namespace {
        if main == Some(claimed) {
            return MainPidClaim::Unchanged;
        }
        if main != Some(sender.pid) {
            return refuse("only the main process may set it");
        }
        // The main process is in corral's pid namespace (corral started it there, or accepted
        // it from there), and so are its numbers.
        return match &sender.lineage {
            Some((_, ns_pids)) if ns_pids.len() > 1 => {
                refuse("the sender is in another pid namespace")
            }
            _ => MainPidClaim::Accept(claimed),
        };
    }
    let Some((parent, ns_pids)) = &sender.lineage else {
        return refuse(
            "the sender is gone, and cannot be told from another process of the namespace",
        );
    };
    let is_command = main == Some(*parent)
        && ns_pids.len() == 2
        && ns_pids.last() == Some(&COMMAND_PID_IN_NAMESPACE);
    if !is_command {
        return refuse("only the main process may set it");
    }
    if claimed == COMMAND_PID_IN_NAMESPACE {
        return MainPidClaim::Unchanged;
    }
    refuse(
        "the unit has its own pid namespace, whose life is its command's (pid 2 there): \
         no other process can be its main one",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_parse_as_systemd_reads_them() {
        let table: Vec<(&[u8], NotifyMessage)> = vec![
            (
                b"READY=1",
                NotifyMessage {
                    ready: true,
                    ..Default::default()
                },
            ),
            (
                b"READY=1\nSTATUS=listening on :80\nMAINPID=4242\n",
                NotifyMessage {
                    ready: true,
                    status: Some("listening on :80".into()),
                    main_pid: Some(4242),
                    ..Default::default()
                },
            ),
            (
                b"WATCHDOG=1",
                NotifyMessage {
                    watchdog_ping: true,
                    ..Default::default()
                },
            ),
            (
                b"WATCHDOG=trigger\nWATCHDOG_USEC=2000000",
                NotifyMessage {
                    watchdog_trigger: true,
                    watchdog_usec: Some(2_000_000),
                    ..Default::default()
                },
            ),
            (
                b"STOPPING=1",
                NotifyMessage {
                    stopping: true,
                    ..Default::default()
                },
            ),
            (
                b"BARRIER=1",
                NotifyMessage {
                    barrier: true,
                    ..Default::default()
                },
            ),
            // Values that do not parse are dropped; unknown keys and junk are ignored.
            (
                b"READY=0\nMAINPID=-3\nMAINPID=x\nFDSTORE=1\njunk\nSTATUS=a=b",
                NotifyMessage {
                    status: Some("a=b".into()),
                    ..Default::default()
                },
            ),
        ];
        for (datagram, want) in table {
            assert_eq!(
                NotifyMessage::parse(datagram),
                want,
                "{}",
                String::from_utf8_lossy(datagram)
            );
        }
        assert!(NotifyMessage::parse(b"BARRIER=1").is_empty());
        assert!(!NotifyMessage::parse(b"STATUS=x").is_empty());
    }

    #[test]
    fn only_the_main_process_moves_the_main_pid_and_numbers_are_the_senders() {
        let host = |pid| Sender {
            pid,
            lineage: Some((1, vec![pid])),
        };
        let in_ns = |pid, parent, inner| Sender {
            pid,
            lineage: Some((parent, vec![pid, inner])),
        };
        let gone = |pid| Sender { pid, lineage: None };
        let refused = |c: &MainPidClaim| matches!(c, MainPidClaim::Refuse(_));
        // (claimed, sender, main, own pid namespace) -> verdict, `None` for a refusal.
        type Row = (i32, Sender, Option<i32>, bool, Option<MainPidClaim>);
        let table: Vec<Row> = vec![
            // Without a pid namespace: the main process may name any pid...
            (
                200,
                host(100),
                Some(100),
                false,
                Some(MainPidClaim::Accept(200)),
            ),
            (
                200,
                gone(100),
                Some(100),
                false,
                Some(MainPidClaim::Accept(200)),
            ),
            // ...another process of the unit may not, but naming the main itself is harmless.
            (200, host(150), Some(100), false, None),
            (
                100,
                host(150),
                Some(100),
                false,
                Some(MainPidClaim::Unchanged),
            ),
            (200, host(150), None, false, None),
            (
                200,
                Sender {
                    pid: 100,
                    lineage: Some((1, vec![100, 7])),
                },
                Some(100),
                false,
                None,
            ),
            // With one, the helper (100) stands for the command, pid 2 there (host 101).
            (
                2,
                in_ns(101, 100, 2),
                Some(100),
                true,
                Some(MainPidClaim::Unchanged),
            ),
            (7, in_ns(101, 100, 2), Some(100), true, None),
            // A host number read from a host /proc is not the sender's to give.
            (101, in_ns(101, 100, 2), Some(100), true, None),
            // Another process of the namespace, an orphan the helper adopted, a gone sender.
            (2, in_ns(105, 101, 5), Some(100), true, None),
            (2, in_ns(105, 100, 5), Some(100), true, None),
            (2, gone(101), Some(100), true, None),
        ];
        for (claimed, sender, main, own, want) in table {
            let got = judge_main_pid(claimed, &sender, main, own);
            match want {
                Some(want) => assert_eq!(got, want, "{claimed} {sender:?} {main:?} {own}"),
                None => assert!(
                    refused(&got),
                    "{claimed} {sender:?} {main:?} {own}: {got:?}"
                ),
            }
        }
    }
}
