//! corral's log to journald: the native protocol over a non-blocking datagram socket. A line
//! journald does not take at once is dropped and counted, never waited for.
//!
//! The event loop logs (a unit's every output line among it), so a journald that stalls, whose
//! socket queue is full (`net.unix.max_dgram_qlen`, 512 by default), must not stall the loop: a
//! blocking send would stop reaping, restarts and the control socket with it. The count of
//! dropped lines is reported to journald itself as soon as it takes lines again.
//! Protocol: <https://systemd.io/JOURNAL_NATIVE_PROTOCOL/>.

use std::fmt;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;

/// Where journald listens for native-protocol datagrams.
pub const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";

/// The tracing target of a unit's output lines (daemon/mod.rs `emit_line`).
const UNIT_OUTPUT_TARGET: &str = "unit";

/// A tracing layer that sends each event to journald as one entry.
pub struct Journald {
    socket: UnixDatagram,
    path: PathBuf,
    /// Lines not sent since the last notice about them.
    dropped: AtomicU64,
}

impl Journald {
    /// A non-blocking socket for journald at `path`; fails when nobody listens there (an empty
    /// datagram, which journald ignores, tells).
    pub fn connect(path: &Path) -> io::Result<Journald> {
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        socket.send_to(&[], path)?;
        Ok(Journald {
            socket,
            path: path.to_owned(),
            dropped: AtomicU64::new(0),
        })
    }

    /// Lines dropped and not yet reported.
    #[cfg(test)]
    fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Sends one entry, or counts it as dropped: a full queue (EAGAIN), a journald gone
    /// (ECONNREFUSED), an entry above the datagram limit (EMSGSIZE; corral's lines are cut at
    /// 8 KiB, far below it). Reports earlier drops first, once journald takes lines again.
    pub fn send(&self, entry: &[u8]) {
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            let notice = entry_of(
                Level::WARN,
                "corral",
                &format!(
                    "{dropped} log lines were dropped: journald did not take them in time \
                     (they are on corral's stderr)"
                ),
                &[],
            );
            if self.socket.send_to(&notice, &self.path).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            self.dropped.fetch_sub(dropped, Ordering::Relaxed);
        }
        if self.socket.send_to(entry, &self.path).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for Journald {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        // A unit's output is logged under the unit's own name, as systemd logs a service's.
        let identifier = match (&fields.unit, meta.target()) {
            (Some(unit), UNIT_OUTPUT_TARGET) => unit.as_str(),
            _ => "corral",
        };
        let mut extra: Vec<(&str, &str)> = vec![("TARGET", meta.target())];
        extra.extend(fields.others.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        self.send(&entry_of(
            *meta.level(),
            identifier,
            &fields.message,
            &extra,
        ));
    }
}

/// An event's fields: `message`, the unit it is about, and the rest as journald field names.
#[derive(Default)]
struct Fields {
    message: String,
    unit: Option<String>,
    others: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record(field, format!("{value:?}"));
    }
}

impl Fields {
    fn record(&mut self, field: &Field, value: String) {
        match field.name() {
            "message" => self.message = value,
            name => {
                if name == "unit" {
                    self.unit = Some(value.clone());
                }
                self.others.push((journal_field_name(name), value));
            }
        }
    }
}

/// `F_` and the name in journald's alphabet (upper-case letters, digits, `_`), as
/// tracing-journald named them, so queries such as `journalctl F_UNIT=web` keep working.
fn journal_field_name(name: &str) -> String {
    let mut out = String::from("F_");
    out.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    out
}

/// One journal entry: every field in the length-prefixed form, which holds any bytes
/// (newlines included).
fn entry_of(level: Level, identifier: &str, message: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let priority = match level {
        Level::ERROR => "3",
        Level::WARN => "4",
        Level::INFO => "6",
        _ => "7",
    };
    let mut entry = Vec::with_capacity(128 + message.len());
    let fields = [
        ("PRIORITY", priority),
        ("SYSLOG_IDENTIFIER", identifier),
        ("MESSAGE", message),
    ];
    for (name, value) in fields.iter().chain(extra) {
        put_field(&mut entry, name, value);
    }
    entry
}

fn put_field(entry: &mut Vec<u8>, name: &str, value: &str) {
    entry.extend_from_slice(name.as_bytes());
    entry.push(b'\n');
    entry.extend_from_slice(&(value.len() as u64).to_le_bytes());
    entry.extend_from_slice(value.as_bytes());
    entry.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    /// The fields of one entry, as journald parses the length-prefixed form.
    fn parse(mut entry: &[u8]) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        while let Some(newline) = entry.iter().position(|b| *b == b'\n') {
            let name = String::from_utf8(entry[..newline].to_vec()).unwrap();
            let len = u64::from_le_bytes(entry[newline + 1..newline + 9].try_into().unwrap());
            let start = newline + 9;
            let end = start + len as usize;
            fields.push((name, String::from_utf8(entry[start..end].to_vec()).unwrap()));
            assert_eq!(entry[end], b'\n');
            entry = &entry[end + 1..];
        }
        fields
    }

    fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A journald that listens and reads only when told: `recv` gives the next entry.
    fn fake_journald(dir: &Path) -> (UnixDatagram, PathBuf) {
        let path = dir.join("journal.socket");
        let server = UnixDatagram::bind(&path).unwrap();
        server.set_nonblocking(true).unwrap();
        (server, path)
    }

    fn recv(server: &UnixDatagram) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match server.recv(&mut buf) {
                Ok(0) => continue, // the connect probe
                Ok(n) => return Some(buf[..n].to_vec()),
                Err(_) => return None,
            }
        }
    }

    #[test]
    fn a_unit_line_goes_under_the_units_name_with_its_fields() {
        let tmp = tempfile::tempdir().unwrap();
        let (server, path) = fake_journald(tmp.path());
        let layer = Journald::connect(&path).unwrap();
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "unit", unit = "web", stream = "stdout", "hello\nworld");
            tracing::warn!(unit = "web", "stopped");
        });
        let line = parse(&recv(&server).unwrap());
        assert_eq!(field(&line, "SYSLOG_IDENTIFIER"), Some("web"));
        assert_eq!(field(&line, "MESSAGE"), Some("hello\nworld"));
        assert_eq!(field(&line, "PRIORITY"), Some("6"));
        assert_eq!(field(&line, "F_UNIT"), Some("web"));
        assert_eq!(field(&line, "F_STREAM"), Some("stdout"));
        let own = parse(&recv(&server).unwrap());
        assert_eq!(field(&own, "SYSLOG_IDENTIFIER"), Some("corral"));
        assert_eq!(field(&own, "PRIORITY"), Some("4"));
    }

    /// A journald that reads nothing: every send returns at once (the queue fills, then lines
    /// are dropped and counted), and once it reads again the count is reported before the
    /// next line.
    #[test]
    fn a_stalled_journald_never_blocks_and_the_drops_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let (server, path) = fake_journald(tmp.path());
        let journald = Journald::connect(&path).unwrap();
        let line = entry_of(Level::INFO, "corral", "x", &[]);
        // Far above any datagram queue length (net.unix.max_dgram_qlen, 512 by default).
        for _ in 0..20_000 {
            journald.send(&line);
        }
        let dropped = journald.dropped();
        assert!(dropped > 0, "nothing was dropped");
        while recv(&server).is_some() {}
        journald.send(&entry_of(Level::INFO, "corral", "after", &[]));
        let notice = parse(&recv(&server).unwrap());
        let text = field(&notice, "MESSAGE").unwrap();
        assert!(
            text.starts_with(&format!("{dropped} log lines were dropped")),
            "{text}"
        );
        let next = parse(&recv(&server).unwrap());
        assert_eq!(field(&next, "MESSAGE"), Some("after"));
        assert_eq!(journald.dropped(), 0);
    }
}
