//! Units' output: the pipes the loop reads, split into bounded lines, and each unit's ring.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;

use crate::proto::{LogLine, Stream};
use crate::unit::{LinePattern, UnitName};

use super::sources::{Source, Sources, Token};

/// Lines a unit's ring keeps (docs/operations.md, "Logs").
pub const RING_LINES: usize = 1000;
/// Longest line kept whole; longer ones are cut into `partial` pieces so memory stays bounded
/// even for a unit that writes megabytes without a newline.
pub const MAX_LINE_BYTES: usize = 8 * 1024;

/// A piece of output ready to log: the text and whether it ends mid-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub text: String,
    pub partial: bool,
    /// The bytes as written, where they are not UTF-8 (`text` has U+FFFD for them): a log file
    /// gets the raw bytes.
    pub raw: Option<Vec<u8>>,
}

impl Piece {
    /// The line's bytes as the unit wrote them (without its newline, and its `\r`).
    pub fn bytes(&self) -> &[u8] {
        self.raw.as_deref().unwrap_or(self.text.as_bytes())
    }
}

/// Turns a byte stream into lines of at most `MAX_LINE_BYTES`.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<Piece>) {
        while !bytes.is_empty() {
            let room = MAX_LINE_BYTES - self.pending.len();
            let window = &bytes[..bytes.len().min(room)];
            match window.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.pending.extend_from_slice(&window[..i]);
                    out.push(self.take(false));
                    bytes = &bytes[i + 1..];
                }
                None => {
                    self.pending.extend_from_slice(window);
                    bytes = &bytes[window.len()..];
                    if self.pending.len() == MAX_LINE_BYTES {
                        out.push(self.take(true));
                    }
                }
            }
        }
    }

    /// At EOF: whatever is left is a last line without its newline.
    pub fn finish(&mut self, out: &mut Vec<Piece>) {
        if !self.pending.is_empty() {
            out.push(self.take(false));
        }
    }

    fn take(&mut self, partial: bool) -> Piece {
        let mut bytes = std::mem::take(&mut self.pending);
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        match String::from_utf8(bytes) {
            Ok(text) => Piece {
                text,
                partial,
                raw: None,
            },
            Err(e) => Piece {
                text: String::from_utf8_lossy(e.as_bytes()).into_owned(),
                partial,
                raw: Some(e.into_bytes()),
            },
        }
    }
}

/// The last `RING_LINES` lines of one unit, shared with the answers and followers that are
/// still writing them (one thread: `Rc`).
#[derive(Debug, Default)]
pub struct Ring {
    lines: VecDeque<Rc<LogLine>>,
}

impl Ring {
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn push(&mut self, line: Rc<LogLine>) {
        if self.lines.len() == RING_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    /// The newest `n` lines that `filter` admits, oldest first.
    #[cfg(test)]
    pub fn tail_matching(&self, n: usize, filter: &LineFilter) -> Vec<&Rc<LogLine>> {
        self.tail_matching_until(n, filter, None)
            .unwrap_or_default()
    }

    /// As `tail_matching`, giving up (`Err`: the lines searched) at `deadline`: a pattern is
    /// matched on the loop, and regex-lite can take microseconds per byte of a line.
    pub fn tail_matching_until(
        &self,
        n: usize,
        filter: &LineFilter,
        deadline: Option<Instant>,
    ) -> Result<Vec<&Rc<LogLine>>, usize> {
        let mut found = Vec::new();
        for (searched, line) in self.lines.iter().rev().enumerate() {
            if found.len() == n {
                break;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(searched);
            }
            if filter.admits(line) {
                found.push(line);
            }
        }
        found.reverse();
        Ok(found)
    }
}

/// The most of the loop's time one follower's `grep` may take per second; a follower that
/// needs more is disconnected (a pattern can cost microseconds per byte of each line).
pub const FOLLOW_GREP_BUDGET: Duration = Duration::from_millis(50);

/// The most of the loop's time the greps of one peer uid other than root may take per second,
/// its answers' searches and its followers' matching together: per answer alone, one peer's
/// connections, `REQUESTS_PER_TURN` each, would hold a turn for seconds.
pub const GREP_BUDGET_PER_UID: Duration = Duration::from_millis(50);
/// The same for every uid but root's together: a `--socket-group` member with subordinate ids
/// connects from many uids (docs/operations.md, "Threat model").
pub const GREP_BUDGET_ALL_PEERS: Duration = Duration::from_millis(100);

/// Each peer uid's grep time in its current second, and all of theirs (root's is not counted:
/// root keeps its way in). Only uids that grepped within the last second are kept.
#[derive(Debug, Default)]
pub struct GrepBudgets {
    spent: HashMap<u32, (Instant, Duration)>,
    all: Option<(Instant, Duration)>,
}

impl GrepBudgets {
    /// What `uid` may still spend in its second as of `now`; `None`: no bound (root).
    pub fn remaining(&self, uid: u32, now: Instant) -> Option<Duration> {
        if uid == 0 {
            return None;
        }
        let spent = current(self.spent.get(&uid).copied(), now);
        let all = current(self.all, now);
        Some(
            GREP_BUDGET_PER_UID
                .saturating_sub(spent)
                .min(GREP_BUDGET_ALL_PEERS.saturating_sub(all)),
        )
    }

    /// Counts `took` against `uid`'s second (which begins at its first grep) and everyone's.
    pub fn charge(&mut self, uid: u32, took: Duration, now: Instant) {
        if uid == 0 {
            return;
        }
        // Forgets the uids whose second is over whenever one more comes: at most the uids
        // that grepped within a second are kept, and a line's check stays a lookup.
        if !self.spent.contains_key(&uid) {
            self.spent
                .retain(|_, window| current(Some(*window), now) > Duration::ZERO);
        }
        for window in [
            self.spent.entry(uid).or_insert((now, Duration::ZERO)),
            self.all.get_or_insert((now, Duration::ZERO)),
        ] {
            if now.saturating_duration_since(window.0) >= GREP_WINDOW {
                *window = (now, Duration::ZERO);
            }
            window.1 += took;
        }
    }
}

/// The second a grep budget is counted over.
const GREP_WINDOW: Duration = Duration::from_secs(1);

/// What a window began at `.0` counts as spent at `now`: nothing once it is over.
fn current(window: Option<(Instant, Duration)>, now: Instant) -> Duration {
    window
        .filter(|(start, _)| now.saturating_duration_since(*start) < GREP_WINDOW)
        .map_or(Duration::ZERO, |(_, spent)| spent)
}

/// `logs --since` and `--grep`: which lines an answer (and a follower) gets.
#[derive(Debug, Default)]
pub struct LineFilter {
    /// Lines stamped at or after this, as RFC 3339 with microseconds: the ring's stamps have
    /// that one format, so comparing the strings compares the times.
    since: Option<String>,
    grep: Option<LinePattern>,
    /// A follower's grep time in the second that began at `window`.
    spent: Duration,
    window: Option<Instant>,
}

impl LineFilter {
    /// From a request's `since` and `grep`; `now` is the wall clock a duration counts back from.
    pub fn new(
        since: Option<&str>,
        grep: Option<&str>,
        now: SystemTime,
    ) -> Result<LineFilter, String> {
        let since = since
            .map(|text| parse_since(text, now))
            .transpose()?
            .map(stamp);
        let grep = grep
            .map(|pattern| LinePattern::for_grep(pattern).map_err(|e| format!("grep: {e}")))
            .transpose()?;
        Ok(LineFilter {
            since,
            grep,
            ..LineFilter::default()
        })
    }

    /// For a follower: whether `line` passes, with the time its grep took counted against
    /// `FOLLOW_GREP_BUDGET`; `Err` once this second's budget is spent.
    pub fn admits_within_budget(&mut self, line: &LogLine) -> Result<bool, String> {
        if self.grep.is_none() {
            return Ok(self.admits(line));
        }
        let start = Instant::now();
        if self
            .window
            .is_none_or(|w| start.duration_since(w) >= Duration::from_secs(1))
        {
            self.window = Some(start);
            self.spent = Duration::ZERO;
        }
        let admitted = self.admits(line);
        self.spent += start.elapsed();
        if self.spent > FOLLOW_GREP_BUDGET {
            return Err(format!(
                "grep: matching new lines took more than {}ms of corral's loop within a second; \
                 follow with a simpler pattern",
                FOLLOW_GREP_BUDGET.as_millis()
            ));
        }
        Ok(admitted)
    }

    /// Whether a grep is part of the filter (its matching is what costs).
    pub fn greps(&self) -> bool {
        self.grep.is_some()
    }

    /// Admits every line.
    pub fn is_empty(&self) -> bool {
        self.since.is_none() && self.grep.is_none()
    }

    pub fn admits(&self, line: &LogLine) -> bool {
        self.since.as_ref().is_none_or(|at| line.time >= *at)
            && self.grep.as_ref().is_none_or(|p| p.is_match(&line.text))
    }
}

/// `at` as the ring stamps lines (see `clock::formattable`).
fn stamp(at: SystemTime) -> String {
    humantime::format_rfc3339_micros(super::clock::formattable(at)).to_string()
}

/// `--since`: an RFC 3339 time (`2026-12-03T10:00:00Z`, fractions allowed), or a duration
/// back from `now` (`10m`, `1h 30m`).
pub fn parse_since(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    let text = text.trim();
    if let Ok(at) = humantime::parse_rfc3339_weak(text) {
        return Ok(at);
    }
    match humantime::parse_duration(text) {
        Ok(ago) => Ok(now
            .checked_sub(ago)
            .unwrap_or(SystemTime::UNIX_EPOCH)
            .max(SystemTime::UNIX_EPOCH)),
        Err(_) => Err(format!(
            "since: {text:?} is neither a duration (\"10m\", \"1h 30m\") nor an RFC 3339 time \
             (\"2026-12-03T10:00:00Z\")"
        )),
    }
}

/// A read end of a unit's stdout or stderr.
struct Pipe {
    unit: UnitName,
    stream: Stream,
    fd: OwnedFd,
    splitter: LineSplitter,
    /// An exec health probe's output: read so the probe never blocks on a full pipe, then
    /// dropped, so a probe every few seconds does not drown the unit's own log.
    discard: bool,
}

/// Every output pipe the loop reads. A pipe outlives the run that made it until its EOF, so
/// that what a leftover process writes still reaches the log.
#[derive(Default)]
pub(super) struct Pipes {
    by_token: HashMap<Token, Pipe>,
}

impl Pipes {
    /// Reads `fd` from now on as `unit`'s `stream`; `discard`: read and drop (a probe's).
    pub(super) fn watch(
        &mut self,
        sources: &mut Sources,
        unit: &UnitName,
        stream: Stream,
        fd: OwnedFd,
        discard: bool,
    ) -> Result<Token, Errno> {
        let token = sources.add(fd.as_fd(), Source::Pipe, false)?;
        self.by_token.insert(
            token,
            Pipe {
                unit: unit.clone(),
                stream,
                fd,
                splitter: LineSplitter::default(),
                discard,
            },
        );
        Ok(token)
    }

    /// Stops reading a pipe and closes it.
    pub(super) fn close(&mut self, sources: &mut Sources, token: Token) {
        if let Some(pipe) = self.by_token.remove(&token) {
            sources.remove(&pipe.fd, token);
        }
    }

    /// Reads a bounded amount per wake so one chatty unit cannot starve the others (the
    /// level-triggered epoll brings the loop back for the rest); closes the pipe at its EOF.
    /// The unit, the stream and the pieces to log.
    pub(super) fn read(
        &mut self,
        sources: &mut Sources,
        token: Token,
    ) -> Option<(UnitName, Stream, Vec<Piece>)> {
        const READS_PER_WAKE: usize = 16;
        let mut buf = vec![0u8; 64 * 1024];
        let mut pieces = Vec::new();
        let mut eof = false;
        let pipe = self.by_token.get_mut(&token)?;
        for _ in 0..READS_PER_WAKE {
            match nix::unistd::read(&pipe.fd, &mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => pipe.splitter.push(&buf[..n], &mut pieces),
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => {}
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        if eof {
            pipe.splitter.finish(&mut pieces);
        }
        let (unit, stream) = (pipe.unit.clone(), pipe.stream);
        if pipe.discard {
            pieces.clear();
        }
        if eof {
            self.close(sources, token);
        }
        Some((unit, stream, pieces))
    }
}

pub fn stream_name(stream: Stream) -> &'static str {
    match stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uids_greps_share_one_budget_per_second_and_root_has_none() {
        let t0 = Instant::now();
        let mut budgets = GrepBudgets::default();
        assert_eq!(budgets.remaining(0, t0), None);
        budgets.charge(0, Duration::from_secs(5), t0);
        assert_eq!(budgets.remaining(0, t0), None);
        assert_eq!(budgets.remaining(1000, t0), Some(GREP_BUDGET_PER_UID));
        budgets.charge(1000, Duration::from_millis(30), t0);
        budgets.charge(
            1000,
            Duration::from_millis(30),
            t0 + Duration::from_millis(500),
        );
        let half = t0 + Duration::from_millis(900);
        assert_eq!(budgets.remaining(1000, half), Some(Duration::ZERO));
        // Another uid has its own, within what is left of everyone's.
        let left = GREP_BUDGET_ALL_PEERS - Duration::from_millis(60);
        assert_eq!(
            budgets.remaining(1001, half),
            Some(GREP_BUDGET_PER_UID.min(left))
        );
        budgets.charge(1001, Duration::from_millis(40), half);
        budgets.charge(1002, Duration::from_millis(1), half);
        assert_eq!(budgets.remaining(1003, half), Some(Duration::ZERO));
        // A second after its first grep, a uid starts afresh, and so does everyone's.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(budgets.remaining(1000, later), Some(GREP_BUDGET_PER_UID));
        let fresh = half + Duration::from_secs(1);
        assert_eq!(budgets.remaining(1001, fresh), Some(GREP_BUDGET_PER_UID));
        budgets.charge(1004, Duration::from_millis(1), fresh);
        assert_eq!(
            budgets.spent.keys().collect::<Vec<_>>(),
            [&1004],
            "only the uids of the last second are kept"
        );
    }

    fn split(chunks: &[&[u8]]) -> Vec<Piece> {
        let mut splitter = LineSplitter::default();
        let mut out = Vec::new();
        for chunk in chunks {
            splitter.push(chunk, &mut out);
        }
        splitter.finish(&mut out);
        out
    }

    fn whole(text: &str) -> Piece {
        Piece {
            text: text.into(),
            partial: false,
            raw: None,
        }
    }

    #[test]
    fn lines_across_chunks_join_and_crlf_is_trimmed() {
        assert_eq!(
            split(&[b"he", b"llo\nwor", b"ld\r\n", b"tail"]),
            vec![whole("hello"), whole("world"), whole("tail")]
        );
    }

    #[test]
    fn a_huge_line_without_newline_is_cut_into_bounded_pieces() {
        let big = vec![b'x'; MAX_LINE_BYTES * 3 + 5];
        let pieces = split(&[&big]);
        assert_eq!(pieces.len(), 4);
        assert!(
            pieces[..3]
                .iter()
                .all(|p| p.partial && p.text.len() == MAX_LINE_BYTES)
        );
        assert_eq!(pieces[3], whole("xxxxx"));
    }

    #[test]
    fn invalid_utf8_is_kept_lossily() {
        let pieces = split(&[b"a\xffb\r\n"]);
        assert_eq!(pieces[0].text, "a\u{fffd}b");
        assert_eq!(
            pieces[0].bytes(),
            b"a\xffb",
            "the raw bytes are kept for log files"
        );
    }

    #[test]
    fn the_ring_keeps_only_the_newest_lines() {
        let mut ring = Ring::default();
        for i in 0..RING_LINES + 10 {
            ring.push(Rc::new(LogLine {
                time: String::new(),
                unit: "u".into(),
                stream: Stream::Stdout,
                text: i.to_string(),
                partial: false,
            }));
        }
        let all = LineFilter::default();
        let tail: Vec<&str> = ring
            .tail_matching(3, &all)
            .iter()
            .map(|l| l.text.as_str())
            .collect();
        assert_eq!(tail, vec!["1007", "1008", "1009"]);
        assert_eq!(ring.tail_matching(usize::MAX, &all).len(), RING_LINES);
        assert_eq!(
            ring.tail_matching(usize::MAX, &all)
                .first()
                .map(|l| l.text.as_str()),
            Some("10")
        );
    }

    fn line_at(time: &str, text: &str) -> Rc<LogLine> {
        Rc::new(LogLine {
            time: time.into(),
            unit: "u".into(),
            stream: Stream::Stdout,
            text: text.into(),
            partial: false,
        })
    }

    /// -n, --since, --grep, the texts expected.
    type Row<'a> = (usize, Option<&'a str>, Option<&'a str>, &'a [&'a str]);

    #[test]
    fn since_and_grep_pick_the_newest_matching_lines() {
        let now = humantime::parse_rfc3339("2026-12-03T10:00:00Z").unwrap();
        let mut ring = Ring::default();
        for (time, text) in [
            ("2026-12-03T09:40:00.000000Z", "GET /a 200"),
            ("2026-12-03T09:51:00.000000Z", "GET /b 500"),
            ("2026-12-03T09:55:00.000000Z", "GET /c 200"),
            ("2026-12-03T09:58:00.000000Z", "GET /d 500"),
            ("2026-12-03T09:59:00.000000Z", "GET /e 500"),
        ] {
            ring.push(line_at(time, text));
        }
        let texts = |n: usize, since: Option<&str>, grep: Option<&str>| -> Vec<String> {
            let filter = LineFilter::new(since, grep, now).unwrap();
            ring.tail_matching(n, &filter)
                .iter()
                .map(|l| l.text.clone())
                .collect()
        };
        #[rustfmt::skip]
        let rows: [Row; 7] = [
            (9, Some("10m"), None, &["GET /b 500", "GET /c 200", "GET /d 500", "GET /e 500"]),
            (9, Some("2026-12-03T09:55:00Z"), None, &["GET /c 200", "GET /d 500", "GET /e 500"]),
            (9, None, Some(" 5[0-9]{2}$"), &["GET /b 500", "GET /d 500", "GET /e 500"]),
            // -n counts matching lines, the newest.
            (2, None, Some("500"), &["GET /d 500", "GET /e 500"]),
            (9, Some("8m"), Some("200"), &["GET /c 200"]),
            (9, Some("4m"), Some("200"), &[]),
            (9, Some("1h"), Some("/[ac] "), &["GET /a 200", "GET /c 200"]),
        ];
        for (n, since, grep, want) in rows {
            assert_eq!(
                texts(n, since, grep),
                want,
                "-n {n} --since {since:?} --grep {grep:?}"
            );
        }
    }

    #[test]
    fn a_grep_search_is_bounded_in_time() {
        let now = SystemTime::now();
        let mut ring = Ring::default();
        ring.push(line_at("2026-12-03T09:40:00.000000Z", "GET /a 200"));
        let filter = LineFilter::new(None, Some("200"), now).unwrap();
        let past = Instant::now();
        assert_eq!(ring.tail_matching_until(5, &filter, Some(past)), Err(0));
        assert_eq!(
            ring.tail_matching_until(5, &filter, None).map(|l| l.len()),
            Ok(1)
        );

        // A follower whose grep spent its second's budget is cut off; the next second it is not.
        let mut follower = LineFilter::new(None, Some("200"), now).unwrap();
        let line = line_at("2026-12-03T09:40:00.000000Z", "GET /a 200");
        assert_eq!(follower.admits_within_budget(&line), Ok(true));
        follower.spent = FOLLOW_GREP_BUDGET;
        let e = follower.admits_within_budget(&line).unwrap_err();
        assert!(
            e.starts_with("grep: matching new lines took more than 50ms"),
            "{e}"
        );
        follower.window = Instant::now().checked_sub(Duration::from_secs(2));
        assert_eq!(follower.admits_within_budget(&line), Ok(true));
        // Without grep nothing is timed.
        let mut plain = LineFilter {
            spent: Duration::from_secs(10),
            ..LineFilter::default()
        };
        assert_eq!(plain.admits_within_budget(&line), Ok(true));
    }

    #[test]
    fn a_bad_since_or_pattern_is_a_clear_error() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1 << 31);
        let e = LineFilter::new(Some("yesterday"), None, now).unwrap_err();
        assert!(e.contains("neither a duration"), "{e}");
        let e = LineFilter::new(None, Some("(unclosed"), now).unwrap_err();
        assert!(e.starts_with("grep: invalid regular expression"), "{e}");
        // A duration longer than the epoch is "everything".
        assert!(LineFilter::new(Some("100000d"), None, now).is_ok());
        assert!(LineFilter::new(Some("9999-12-31T23:59:60Z"), None, now).is_ok());
    }
}
