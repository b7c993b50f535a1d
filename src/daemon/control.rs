//! Control-socket clients: buffered, non-blocking line I/O with bounds on everything.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind as IoKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::core::supervisor::Goal;
use crate::metrics::{self, Figures};
use crate::os::control_socket::Peer;
use crate::proto::{CgroupsReport, LogLine, MAX_REQUEST_BYTES, Response, UnitStatus};
use crate::unit::UnitName;

/// A client that connects and says nothing is dropped after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A client that reads none of its answer for this long is dropped (a follower is bounded by
/// `MAX_PENDING_OUTPUT` instead).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(600);
/// A follower whose unread new lines pass this many bytes is dropped rather than letting
/// corral grow (its backlog, shared with the unit's ring, does not count).
pub const MAX_PENDING_OUTPUT: usize = 4 * 1024 * 1024;
/// Connections at once, from everyone; beyond this they are refused at once.
pub const MAX_CLIENTS: usize = 256;
/// The last slots of `MAX_CLIENTS` that only root may take: root always has a way in.
pub const ROOT_RESERVE: usize = 4;
/// The last slots of `MAX_CLIENTS` that only root and corral's own user may take: a
/// `--socket-group` peer can never lock them out.
pub const TRUSTED_RESERVE: usize = 16;
/// Connections at once from one uid other than root.
pub const MAX_CONNECTIONS_PER_UID: usize = 32;
/// `logs -f` followers at once from one uid other than root.
pub const MAX_FOLLOWERS_PER_UID: usize = 8;
/// Requests of one client served in one turn of the loop; the rest wait for the next turn, so
/// a client that pipelines requests gets its share and no more.
pub const REQUESTS_PER_TURN: usize = 4;
/// Refused connections are logged at most once per this interval (with a count of the rest), so
/// a peer connecting in a loop cannot fill corral's log.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// New connections accepted in one turn of the loop.
pub const ACCEPTS_PER_TURN: usize = 16;
/// A client with this much output it has not read is not read from (and a large answer is not
/// produced further) until it reads.
pub const OUTPUT_HIGH_WATER: usize = 256 * 1024;

#[derive(Debug)]
pub enum ClientState {
    /// Waiting for a request line.
    Reading,
    /// start/stop/restart/scale: answered when every unit reaches the goal and every one of
    /// `gone` (the instances a `scale` removes) is stopped and forgotten.
    Waiting {
        goal: Goal,
        units: Vec<UnitName>,
        gone: Vec<UnitName>,
    },
    /// logs -f: every new line of these units (that `filter` admits) is sent until the client
    /// closes.
    Following {
        units: Vec<UnitName>,
        filter: super::output::LineFilter,
    },
    /// shutdown: answered when every unit is down.
    AwaitingShutdown,
    /// wait-ready: answered when these units (none: every enabled unit) are ready, or with a
    /// `timeout` error at `deadline`, `timeout` after the request.
    AwaitingReady {
        units: Vec<UnitName>,
        deadline: Option<Instant>,
        timeout: Duration,
    },
}

/// A large answer, written piece by piece as the client reads it instead of built whole: the
/// bytes are exactly those of the one-line JSON object it stands for (docs/protocol.md).
#[derive(Debug)]
pub struct Answer {
    items: Items,
    opened: bool,
    written: usize,
    /// Pieces produced so far (elements, gathered figures, text): how large the answer was.
    pieces: usize,
}

/// An answer of at least this many pieces frees enough (a few KiB a unit) to be worth handing
/// the pages back to the kernel when it is done (`os::heap`); a smaller one is not, and a peer
/// asking for one unit in a tight loop must not make corral walk the heap's free lists each
/// time.
const LARGE_ANSWER_PIECES: usize = 64;

#[derive(Debug)]
enum Items {
    /// logs: `{"ok":true,"lines":[...]}`; the lines are shared with the units' rings.
    Lines(VecDeque<Rc<LogLine>>),
    /// status: `{"ok":true,"units":[...]}`; each unit's status is taken when its row is
    /// written, so the answer holds names, not statuses.
    Units {
        names: VecDeque<UnitName>,
        /// The request named units (their namespaces are listed, docs/protocol.md).
        named: bool,
        reload_error: Option<String>,
        /// The capability ladder's reading (docs/container.md).
        cgroups: Option<CgroupsReport>,
    },
    /// metrics: `{"ok":true,"metrics":"..."}`. The exposition groups each series' samples, so
    /// every unit's figures are gathered first (one unit per piece, small: `Figures`), then the
    /// text is written series by series, one unit's lines per piece, never held whole.
    Metrics {
        to_gather: VecDeque<UnitName>,
        figures: Vec<Figures>,
        series: usize,
        unit: usize,
    },
}

impl Answer {
    pub fn lines(lines: VecDeque<Rc<LogLine>>) -> Answer {
        Answer {
            items: Items::Lines(lines),
            opened: false,
            written: 0,
            pieces: 0,
        }
    }

    pub fn units(
        names: VecDeque<UnitName>,
        named: bool,
        reload_error: Option<String>,
        cgroups: Option<CgroupsReport>,
    ) -> Answer {
        Answer {
            items: Items::Units {
                names,
                named,
                reload_error,
                cgroups,
            },
            opened: false,
            written: 0,
            pieces: 0,
        }
    }

    pub fn metrics(names: VecDeque<UnitName>) -> Answer {
        Answer {
            items: Items::Metrics {
                figures: Vec::with_capacity(names.len()),
                to_gather: names,
                series: 0,
                unit: 0,
            },
            opened: false,
            written: 0,
            pieces: 0,
        }
    }

    /// Whether the answer was large enough that what it freed is worth returning to the kernel.
    pub fn was_large(&self) -> bool {
        self.pieces >= LARGE_ANSWER_PIECES
    }

    /// Appends the next piece (the opening, one element, or the closing) to `out`; true once
    /// the closing is written. `status_of` gives a unit's status now (None: it is gone).
    pub fn next_piece(
        &mut self,
        out: &mut Vec<u8>,
        status_of: &dyn Fn(&UnitName, bool) -> Option<UnitStatus>,
    ) -> bool {
        self.pieces += 1;
        if !self.opened {
            self.opened = true;
            let opening: &[u8] = match self.items {
                Items::Lines(_) => b"{\"ok\":true,\"lines\":[",
                Items::Units { .. } => b"{\"ok\":true,\"units\":[",
                Items::Metrics { .. } => b"{\"ok\":true,\"metrics\":\"",
            };
            out.extend_from_slice(opening);
            return false;
        }
        if let Items::Metrics {
            to_gather,
            figures,
            series,
            unit,
        } = &mut self.items
        {
            if let Some(name) = to_gather.pop_front() {
                if let Some(status) = status_of(&name, false) {
                    figures.push(Figures::of(&status));
                }
                return false;
            }
            if *series >= metrics::SERIES.len() {
                out.extend_from_slice(b"\"}\n");
                return true;
            }
            let mut text = String::new();
            if *unit == 0 {
                metrics::write_head(*series, &mut text);
            }
            if let Some(f) = figures.get(*unit) {
                f.write(*series, &mut text);
                *unit += 1;
            } else {
                *series += 1;
                *unit = 0;
            }
            json_string_content(&text, out);
            return false;
        }
        let comma = self.written > 0;
        let mut element = |out: &mut Vec<u8>, value: &dyn erased::Json| {
            let mark = out.len();
            if comma {
                out.push(b',');
            }
            if value.write(out) {
                self.written += 1;
            } else {
                out.truncate(mark);
            }
        };
        match &mut self.items {
            Items::Lines(lines) => {
                if let Some(line) = lines.pop_front() {
                    element(out, &*line);
                    return false;
                }
            }
            Items::Units {
                names,
                named,
                reload_error,
                cgroups,
            } => {
                if let Some(name) = names.pop_front() {
                    if let Some(status) = status_of(&name, *named) {
                        element(out, &status);
                    }
                    return false;
                }
                out.push(b']');
                if let Some(error) = reload_error {
                    out.extend_from_slice(b",\"reload_error\":");
                    let _ = serde_json::to_writer(&mut *out, error);
                }
                if let Some(cgroups) = cgroups {
                    out.extend_from_slice(b",\"cgroups\":");
                    let _ = serde_json::to_writer(&mut *out, cgroups);
                }
                out.extend_from_slice(b"}\n");
                return true;
            }
            Items::Metrics { .. } => {}
        }
        out.extend_from_slice(b"]}\n");
        true
    }
}

/// `text` as the inside of a JSON string: escaped, without the quotes.
fn json_string_content(text: &str, out: &mut Vec<u8>) {
    if text.is_empty() {
        return;
    }
    let mark = out.len();
    if serde_json::to_writer(&mut *out, text).is_ok() {
        // The quotes serde_json put around it: the string goes on in the next piece.
        out.pop();
        out.remove(mark);
    } else {
        out.truncate(mark);
    }
}

/// Serializing either element type through one closure.
mod erased {
    pub trait Json {
        /// Appends the JSON text; false if it could not be serialized (nothing to keep then).
        fn write(&self, out: &mut Vec<u8>) -> bool;
    }

    impl<T: serde::Serialize> Json for T {
        fn write(&self, out: &mut Vec<u8>) -> bool {
            serde_json::to_writer(out, self).is_ok()
        }
    }
}

#[derive(Debug)]
pub struct Client {
    pub stream: UnixStream,
    pub peer: Peer,
    /// A `--socket-group` member: read verbs only.
    pub read_only: bool,
    pub state: ClientState,
    inbuf: Vec<u8>,
    outbuf: VecDeque<u8>,
    /// A large answer being written as the client reads.
    pub answer: Option<Answer>,
    /// A follower's lines not yet written: first its backlog, then new lines.
    follow_queue: VecDeque<Rc<LogLine>>,
    /// How many at the front of `follow_queue` are the backlog.
    backlog_left: usize,
    /// Text bytes of the new lines in `follow_queue`.
    lag_bytes: usize,
    /// Requests served in this turn of the loop (at most `REQUESTS_PER_TURN`).
    served_this_turn: usize,
    /// The last time the peer took some of its output (or connected).
    last_progress: Instant,
    pub idle_deadline: Option<Instant>,
    /// Close once everything queued has been written.
    pub closing: bool,
    /// Drop now (peer gone, or protocol violation with nothing worth flushing).
    pub dead: bool,
}

/// What reading produced.
pub enum Incoming {
    Line(Vec<u8>),
    TooLarge,
}

impl Client {
    pub fn new(stream: UnixStream, peer: Peer, read_only: bool, now: Instant) -> Client {
        Client {
            stream,
            peer,
            read_only,
            state: ClientState::Reading,
            inbuf: Vec::new(),
            outbuf: VecDeque::new(),
            answer: None,
            follow_queue: VecDeque::new(),
            backlog_left: 0,
            lag_bytes: 0,
            served_this_turn: 0,
            last_progress: now,
            idle_deadline: Some(now + IDLE_TIMEOUT),
            closing: false,
            dead: false,
        }
    }

    fn has_line(&self) -> bool {
        self.inbuf.contains(&b'\n')
    }

    /// Free for its next request: nothing pending, its answers read (requests on one connection
    /// are served in order, and one whose answers pile up unread is not served further).
    fn is_free(&self) -> bool {
        matches!(self.state, ClientState::Reading)
            && self.answer.is_none()
            && self.outbuf.len() < OUTPUT_HIGH_WATER
    }

    /// One read of what the socket has, unless a request already waits in the buffer (then
    /// the socket is left alone until it is served, so a client pipelining requests is held
    /// back by the kernel's socket buffer, not by corral's memory).
    pub fn fill(&mut self) {
        if self.closing || self.dead || self.has_line() || self.inbuf.len() > MAX_REQUEST_BYTES {
            return;
        }
        let mut buf = [0u8; 16 * 1024];
        match self.stream.read(&mut buf) {
            Ok(0) => {
                // Half-closed: a request may still be answered if one is complete; a half-
                // closed peer such as `socat` waits for its answer after sending the request.
                self.closing = true;
                // A follower's close ends the stream.
                if matches!(self.state, ClientState::Following { .. }) {
                    self.dead = true;
                }
            }
            Ok(n) => self.inbuf.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), IoKind::WouldBlock | IoKind::Interrupted) => {}
            Err(_) => self.dead = true,
        }
    }

    /// The next request to serve now: when the client is free and has budget left in this turn.
    pub fn next_request(&mut self) -> Option<Incoming> {
        if self.dead {
            return None;
        }
        let line_at = self.inbuf.iter().position(|&b| b == b'\n');
        if line_at.is_none() && self.inbuf.len() > MAX_REQUEST_BYTES {
            return Some(Incoming::TooLarge);
        }
        if !self.is_free() || self.served_this_turn >= REQUESTS_PER_TURN {
            return None;
        }
        let line = match line_at {
            Some(i) => {
                let rest = self.inbuf.split_off(i + 1);
                let mut line = std::mem::replace(&mut self.inbuf, rest);
                line.pop();
                line
            }
            // The peer closed after an unterminated last request.
            None if self.closing && !self.inbuf.is_empty() => std::mem::take(&mut self.inbuf),
            None => return None,
        };
        self.served_this_turn += 1;
        Some(Incoming::Line(line))
    }

    /// A new turn of the loop: a fresh budget of requests.
    pub fn new_turn(&mut self) {
        self.served_this_turn = 0;
    }

    /// Drops unread input (after a protocol violation the rest is not worth reading).
    pub fn discard_input(&mut self) {
        self.inbuf.clear();
    }

    pub fn send(&mut self, response: &Response) {
        if self.dead {
            return;
        }
        self.outbuf.extend(response.to_line());
    }

    /// Raw bytes of an answer being streamed.
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        if !self.dead {
            self.outbuf.extend(bytes);
        }
    }

    /// Room left before the output bound: how much of a large answer may be produced now.
    pub fn room(&self) -> usize {
        OUTPUT_HIGH_WATER.saturating_sub(self.outbuf.len())
    }

    /// A follower's backlog, written before any new line.
    pub fn start_following(
        &mut self,
        units: Vec<UnitName>,
        filter: super::output::LineFilter,
        backlog: VecDeque<Rc<LogLine>>,
    ) {
        self.backlog_left = backlog.len();
        self.follow_queue = backlog;
        self.lag_bytes = 0;
        self.state = ClientState::Following { units, filter };
        self.idle_deadline = None;
        self.pump_follow();
    }

    /// A new line of a unit this client follows; a follower too far behind is dropped.
    pub fn follow_line(&mut self, line: &Rc<LogLine>) {
        if self.dead {
            return;
        }
        self.lag_bytes += line.text.len();
        if self.lag_bytes > MAX_PENDING_OUTPUT {
            self.dead = true;
            return;
        }
        self.follow_queue.push_back(Rc::clone(line));
        self.pump_follow();
    }

    /// Moves queued follow lines into the output while there is room.
    pub fn pump_follow(&mut self) {
        while self.room() > 0 {
            let Some(line) = self.follow_queue.pop_front() else {
                return;
            };
            if self.backlog_left > 0 {
                self.backlog_left -= 1;
            } else {
                self.lag_bytes = self.lag_bytes.saturating_sub(line.text.len());
            }
            // The bytes of `Response { ok: true, line: Some(line) }`, without copying the line.
            let mut out = b"{\"ok\":true,\"line\":".to_vec();
            if serde_json::to_writer(&mut out, &*line).is_ok() {
                out.extend_from_slice(b"}\n");
                self.send_bytes(&out);
            }
        }
    }

    /// Writes as much as the socket takes now; never blocks.
    pub fn flush(&mut self, now: Instant) {
        while !self.outbuf.is_empty() && !self.dead {
            let (front, _) = self.outbuf.as_slices();
            match self.stream.write(front) {
                Ok(0) => self.dead = true,
                Ok(n) => {
                    self.outbuf.drain(..n);
                    self.last_progress = now;
                }
                Err(e) if e.kind() == IoKind::WouldBlock => return,
                Err(e) if e.kind() == IoKind::Interrupted => {}
                Err(_) => self.dead = true,
            }
        }
    }

    pub fn wants_write(&self) -> bool {
        !self.outbuf.is_empty()
    }

    /// Input is polled only while it can be used: not after end of input (a level-triggered
    /// EPOLLIN at EOF would wake the loop forever while a `start` is pending), not while a
    /// request already waits in the buffer, and not while the client's answers go unread.
    pub fn wants_read(&self) -> bool {
        !self.closing
            && !self.dead
            && self.outbuf.len() < OUTPUT_HIGH_WATER
            && !self.has_line()
            && self.inbuf.len() <= MAX_REQUEST_BYTES
    }

    /// Work the loop can do for this client now without waiting for the socket: a buffered
    /// request it is free for, or more of an answer while there is room.
    pub fn has_work(&self) -> bool {
        if self.dead {
            return false;
        }
        let request =
            self.is_free() && (self.has_line() || (self.closing && !self.inbuf.is_empty()));
        let answer = (self.answer.is_some() || !self.follow_queue.is_empty()) && self.room() > 0;
        request || answer
    }

    /// When the loop must look at this client again without an event: at once when it has
    /// work, at its idle deadline, or when a peer that leaves its output unread is given up.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.has_work() {
            return Some(Instant::now());
        }
        let ready_deadline = match self.state {
            ClientState::AwaitingReady { deadline, .. } => deadline,
            _ => None,
        };
        let own = if self.wants_write() {
            (!self.is_follower()).then(|| self.last_progress + STALL_TIMEOUT)
        } else {
            self.idle_deadline
        };
        own.into_iter().chain(ready_deadline).min()
    }

    /// To be dropped: silent for `IDLE_TIMEOUT` with nothing left to write, or (a follower
    /// aside, which `MAX_PENDING_OUTPUT` bounds) reading none of its answer for `STALL_TIMEOUT`.
    pub fn expired(&self, now: Instant) -> bool {
        if self.wants_write() {
            !self.is_follower() && self.last_progress + STALL_TIMEOUT <= now
        } else {
            self.idle_deadline.is_some_and(|d| d <= now)
        }
    }

    pub fn is_follower(&self) -> bool {
        matches!(self.state, ClientState::Following { .. })
    }

    /// Done with: dead, or closing with nothing left to say.
    pub fn finished(&self) -> bool {
        self.dead
            || (self.closing
                && self.outbuf.is_empty()
                && self.inbuf.is_empty()
                && self.answer.is_none()
                && matches!(self.state, ClientState::Reading))
    }
}

/// The control server: its listener, its clients, and what bounds them.
#[derive(Debug)]
pub struct Server {
    pub listener: UnixListener,
    /// Every connected client, by epoll token.
    pub clients: HashMap<u64, Client>,
    /// `--socket-group`'s gid: its members may use the read verbs.
    pub group: Option<u32>,
    /// An fd held back for the moment accept(2) fails for want of fds: closing it makes room
    /// to accept the waiting connection and turn it away (else it stays readable and the loop
    /// would spin on it).
    pub reserve_fd: Option<std::os::fd::OwnedFd>,
    /// Out of fds since this was set; logged once per episode.
    pub out_of_fds: bool,
    /// The listener is out of the epoll set until a client leaves (the reserve fd is gone too).
    pub listener_paused: bool,
    /// The listener's epoll token, to pause and resume it.
    pub listener_token: u64,
    /// When a refused connection was last logged, and how many were refused since unlogged.
    refusal_logged_at: Option<Instant>,
    refusals_unlogged: u64,
    /// Each peer uid's `logs --grep` time this second, answers and followers together.
    pub grep_budgets: super::output::GrepBudgets,
}

impl Server {
    pub fn new(listener: UnixListener, listener_token: u64, group: Option<u32>) -> Server {
        Server {
            listener,
            clients: HashMap::new(),
            group,
            reserve_fd: None,
            out_of_fds: false,
            listener_paused: false,
            listener_token,
            refusal_logged_at: None,
            grep_budgets: super::output::GrepBudgets::default(),
            refusals_unlogged: 0,
        }
    }

    /// Whether to log this refusal now; if so, how many went unlogged before it.
    pub fn log_refusal(&mut self, now: Instant) -> Option<u64> {
        if self
            .refusal_logged_at
            .is_some_and(|at| now < at + REFUSAL_LOG_INTERVAL)
        {
            self.refusals_unlogged += 1;
            return None;
        }
        self.refusal_logged_at = Some(now);
        Some(std::mem::take(&mut self.refusals_unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> LogLine {
        LogLine {
            time: "2026-12-02T14:00:00.000000Z".into(),
            unit: "web".into(),
            stream: crate::proto::Stream::Stdout,
            text: text.into(),
            partial: text.is_empty(),
        }
    }

    fn written(
        mut answer: Answer,
        status_of: &dyn Fn(&UnitName, bool) -> Option<UnitStatus>,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        while !answer.next_piece(&mut out, status_of) {}
        out
    }

    fn status(name: &UnitName) -> UnitStatus {
        UnitStatus {
            name: name.to_string(),
            ..UnitStatus::default()
        }
    }

    #[test]
    fn a_streamed_answer_is_byte_for_byte_the_response_it_stands_for() {
        let none = |_: &UnitName, _: bool| None;
        for lines in [
            vec![],
            vec![line("a")],
            vec![line("a"), line(""), line("\"c\"")],
        ] {
            let shared = lines.iter().cloned().map(Rc::new).collect();
            let whole = Response {
                ok: true,
                lines: Some(lines),
                ..Response::default()
            };
            assert_eq!(written(Answer::lines(shared), &none), whole.to_line());
        }
        let names: Vec<UnitName> = ["a", "gone", "b"]
            .iter()
            .filter_map(|n| UnitName::new(n))
            .collect();
        let present = |name: &UnitName, _: bool| (name.as_str() != "gone").then(|| status(name));
        for reload_error in [None, Some("a.toml:1:1: error".to_owned())] {
            let whole = Response {
                reload_error: reload_error.clone(),
                ..Response::units(vec![status(&names[0]), status(&names[2])])
            };
            let answer = Answer::units(names.iter().cloned().collect(), false, reload_error, None);
            assert_eq!(written(answer, &present), whole.to_line());
        }
        for names in [vec![], names.clone()] {
            let statuses: Vec<UnitStatus> = names
                .iter()
                .filter(|n| n.as_str() != "gone")
                .map(|n| UnitStatus {
                    name: format!("{n}\"\\"),
                    kind: "service".into(),
                    state: "running".into(),
                    restarts: 3,
                    ..UnitStatus::default()
                })
                .collect();
            let whole = Response {
                ok: true,
                metrics: Some(crate::metrics::render(&statuses)),
                ..Response::default()
            };
            let by_name = |name: &UnitName, _: bool| {
                statuses
                    .iter()
                    .find(|s| s.name.starts_with(name.as_str()))
                    .cloned()
            };
            let answer = Answer::metrics(names.iter().cloned().collect());
            let bytes = written(answer, &by_name);
            assert_eq!(
                String::from_utf8_lossy(&bytes),
                String::from_utf8_lossy(&whole.to_line())
            );
        }
    }

    #[test]
    fn only_an_answer_of_many_pieces_counts_as_large() {
        let present = |name: &UnitName, _: bool| Some(status(name));
        let names = |n: usize| -> VecDeque<UnitName> {
            (0..n)
                .map(|i| UnitName::new(&format!("u{i}")).unwrap())
                .collect()
        };
        for (n, large) in [
            (0, false),
            (1, false),
            (LARGE_ANSWER_PIECES, true),
            (1000, true),
        ] {
            for mut answer in [
                Answer::units(names(n), false, None, None),
                Answer::metrics(names(n)),
            ] {
                let mut out = Vec::new();
                while !answer.next_piece(&mut out, &present) {}
                assert_eq!(answer.was_large(), large, "{n} units: {answer:?}");
            }
        }
    }
}
