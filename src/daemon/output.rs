//! Units' output: the pipes the loop reads, split into bounded lines, and each unit's ring.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;

use nix::errno::Errno;

use crate::proto::{LogLine, Stream};
use crate::unit::UnitName;

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
        let bytes = std::mem::take(&mut self.pending);
        let text = match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        let text = text.strip_suffix('\r').map(str::to_owned).unwrap_or(text);
        Piece { text, partial }
    }
}

/// The last `RING_LINES` lines of one unit, shared with the answers and followers that are
/// still writing them (one thread: `Rc`).
#[derive(Debug, Default)]
pub struct Ring {
    lines: VecDeque<Rc<LogLine>>,
}

impl Ring {
    pub fn push(&mut self, line: Rc<LogLine>) {
        if self.lines.len() == RING_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    /// The newest `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> impl Iterator<Item = &Rc<LogLine>> {
        self.lines.iter().skip(self.lines.len().saturating_sub(n))
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
        assert_eq!(split(&[b"a\xffb\n"]), vec![whole("a\u{fffd}b")]);
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
        let tail: Vec<&str> = ring.tail(3).map(|l| l.text.as_str()).collect();
        assert_eq!(tail, vec!["1007", "1008", "1009"]);
        assert_eq!(ring.tail(usize::MAX).count(), RING_LINES);
        assert_eq!(
            ring.tail(usize::MAX).next().map(|l| l.text.as_str()),
            Some("10")
        );
    }
}
