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
}
