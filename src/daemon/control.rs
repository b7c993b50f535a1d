//! Control-socket clients: buffered, non-blocking line I/O with bounds on everything.

use std::collections::VecDeque;
use std::io::{ErrorKind as IoKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::core::supervisor::Goal;
use crate::os::control_socket::Peer;
use crate::proto::{MAX_REQUEST_BYTES, Response};
use crate::unit::UnitName;

/// A client that connects and says nothing is dropped after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A follower that falls this far behind is dropped rather than letting corral grow.
pub const MAX_PENDING_OUTPUT: usize = 4 * 1024 * 1024;
/// Connections beyond this are refused at once.
pub const MAX_CLIENTS: usize = 256;

#[derive(Debug)]
pub enum ClientState {
    /// Waiting for a request line.
    Reading,
    /// start/stop/restart: answered when every unit reaches the goal.
    Waiting { goal: Goal, units: Vec<UnitName> },
    /// logs -f: every new line of these units is sent until the client closes.
    Following { units: Vec<UnitName> },
    /// shutdown: answered when every unit is down.
    AwaitingShutdown,
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
    Nothing,
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
            idle_deadline: Some(now + IDLE_TIMEOUT),
            closing: false,
            dead: false,
        }
    }

    /// Reads what is available; returns the next complete request line when one is ready.
    pub fn read(&mut self) -> Incoming {
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Some(line) = self.take_line() {
                return line;
            }
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    // Half-closed: a request may still be answered if one is complete.
                    self.closing = true;
                    // A busy client's buffered requests wait for its answer (`next_buffered`).
                    if !self.inbuf.is_empty() && matches!(self.state, ClientState::Reading) {
                        let line = std::mem::take(&mut self.inbuf);
                        return Incoming::Line(line);
                    }
                    // A follower's close ends the stream. Anyone else may still read what
                    // is queued (`finished` drops them once it is written): a half-closed
                    // peer such as `socat` waits for its answer after sending the request.
                    if matches!(self.state, ClientState::Following { .. }) {
                        self.dead = true;
                    }
                    return Incoming::Nothing;
                }
                Ok(n) => self.inbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == IoKind::WouldBlock => return Incoming::Nothing,
                Err(e) if e.kind() == IoKind::Interrupted => {}
                Err(_) => {
                    self.dead = true;
                    return Incoming::Nothing;
                }
            }
        }
    }

    fn take_line(&mut self) -> Option<Incoming> {
        if !matches!(self.state, ClientState::Reading) {
            // One request at a time; the rest waits in the buffer (bounded below).
            if self.inbuf.len() > MAX_REQUEST_BYTES {
                return Some(Incoming::TooLarge);
            }
            return None;
        }
        match self.inbuf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let rest = self.inbuf.split_off(i + 1);
                let mut line = std::mem::replace(&mut self.inbuf, rest);
                line.pop();
                Some(Incoming::Line(line))
            }
            None if self.inbuf.len() > MAX_REQUEST_BYTES => Some(Incoming::TooLarge),
            None => None,
        }
    }

    /// Drops unread input (after a protocol violation the rest is not worth reading).
    pub fn discard_input(&mut self) {
        self.inbuf.clear();
    }

    /// A request that arrived while the previous one was being answered (requests on one
    /// connection are served in order), once the client is free again.
    pub fn next_buffered(&mut self) -> Option<Incoming> {
        if !matches!(self.state, ClientState::Reading) || self.dead {
            return None;
        }
        match self.take_line() {
            Some(line) => Some(line),
            // The peer closed after an unterminated last request.
            None if self.closing && !self.inbuf.is_empty() => {
                Some(Incoming::Line(std::mem::take(&mut self.inbuf)))
            }
            None => None,
        }
    }

    pub fn send(&mut self, response: &Response) {
        if self.dead {
            return;
        }
        self.outbuf.extend(response.to_line());
        if self.outbuf.len() > MAX_PENDING_OUTPUT {
            self.dead = true;
        }
    }

    /// Writes as much as the socket takes now.
    pub fn flush(&mut self) {
        while !self.outbuf.is_empty() && !self.dead {
            let (front, _) = self.outbuf.as_slices();
            match self.stream.write(front) {
                Ok(0) => self.dead = true,
                Ok(n) => {
                    self.outbuf.drain(..n);
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

    /// After end of input there is nothing more to read; a level-triggered EPOLLIN at EOF
    /// would otherwise wake the loop forever while a `start` is pending.
    pub fn wants_read(&self) -> bool {
        !self.closing
    }

    /// Done with: dead, or closing with nothing left to say.
    pub fn finished(&self) -> bool {
        self.dead
            || (self.closing
                && self.outbuf.is_empty()
                && self.inbuf.is_empty()
                && matches!(self.state, ClientState::Reading))
    }
}
