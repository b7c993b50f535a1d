//! HTTP/1.x connections on the loop, shared by `--metrics-listen` and `--probe-listen`:
//! non-blocking sockets, one request per connection, bounded in size, count and time; the
//! listener pauses when descriptors run out. What a request is answered with is the caller's.

use std::collections::HashMap;
use std::io::{ErrorKind as IoKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::os::poller::Ready;

use super::Daemon;
use super::sources::{Source, Sources, Token};

/// Longest request head (request line and headers) read; longer requests get 431.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Connections accepted per wake: a connect flood is served a slice per turn.
pub const ACCEPTS_PER_WAKE: usize = 16;

/// Which listener a connection belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `--metrics-listen`: `GET /metrics`.
    Metrics,
    /// `--probe-listen`: `/livez`, `/readyz`, `/readyz/UNIT`.
    Probes,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Metrics => "metrics",
            Role::Probes => "probe",
        }
    }
}

/// How many connections a listener holds and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Connections at once. A new one beyond this closes the oldest connection that has not
    /// sent its whole request (a stranger's idle connections cannot keep others out); when
    /// every one has, the new one is closed.
    pub max_clients: usize,
    /// A connection that has not sent its request, or not taken its answer, within this is
    /// closed.
    pub timeout: Duration,
}

/// A complete request, as far as this room reads it.
pub enum Incoming {
    /// The request head, up to and including its blank line.
    Head(Vec<u8>),
    /// No blank line within `MAX_REQUEST_BYTES`.
    TooLarge,
}

struct HttpClient {
    stream: TcpStream,
    request: Vec<u8>,
    /// The whole response once the request is complete, and how much of it is written.
    response: Option<(Vec<u8>, usize)>,
    accepted: Instant,
    deadline: Instant,
}

pub struct HttpServer {
    role: Role,
    bounds: Bounds,
    listener: TcpListener,
    /// The listener's epoll token.
    listener_token: Token,
    clients: HashMap<Token, HttpClient>,
    /// Out of descriptors: the listener is not polled until a client leaves (a readable
    /// listener that cannot accept would wake the loop for ever), or until this time, for
    /// descriptors that something else held and gave back (with no client of its own, a
    /// listener would else never be polled again).
    paused: Option<Instant>,
    /// The out-of-descriptors warning of this episode was given (until an accept succeeds).
    warned: bool,
}

/// How long a listener out of descriptors waits before it tries to accept again, when none of
/// its clients left meanwhile.
const PAUSE_RETRY: Duration = Duration::from_secs(1);

/// What one accept gave.
enum Accepted {
    /// A new connection, to be read at once (a client usually sends its request with the
    /// connect).
    Client(Token),
    /// One closed at once (no room, or the socket could not be set up); try the next.
    Refused,
    /// Nothing more to accept in this wake.
    None,
}

/// What reading a connection gave.
pub enum Progress {
    /// Nothing to answer yet (or already answered).
    Pending,
    /// The request is complete: answer it with `HttpServer::respond`.
    Request(Incoming),
}

impl HttpServer {
    /// Binds `addr` and registers the listener with the loop.
    pub fn bind(
        addr: SocketAddr,
        role: Role,
        bounds: Bounds,
        sources: &mut Sources,
    ) -> std::io::Result<HttpServer> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let listener_token = sources
            .add(listener.as_fd(), Source::HttpListener(role), false)
            .map_err(std::io::Error::from)?;
        Ok(HttpServer {
            role,
            bounds,
            listener,
            listener_token,
            clients: HashMap::new(),
            paused: None,
            warned: false,
        })
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.clients
            .values()
            .map(|c| c.deadline)
            .chain(self.paused)
            .min()
    }

    /// Whether a new connection needs room made first.
    fn is_full(&self) -> bool {
        self.clients.len() >= self.bounds.max_clients
    }

    /// The oldest connection still sending its request: the one a new connection replaces.
    fn oldest_idle(&self) -> Option<Token> {
        self.clients
            .iter()
            .filter(|(_, c)| c.response.is_none())
            .min_by_key(|(_, c)| c.accepted)
            .map(|(t, _)| *t)
    }

    /// Accepts one waiting connection.
    fn accept_one(&mut self, sources: &mut Sources) -> Accepted {
        let stream = match self.listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == IoKind::WouldBlock => return Accepted::None,
            Err(e) if e.kind() == IoKind::Interrupted => return Accepted::Refused,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                self.pause(&e, sources);
                return Accepted::None;
            }
            Err(e) => {
                debug!("accepting a {} connection: {e}", self.role.name());
                return Accepted::None;
            }
        };
        if self.is_full() || stream.set_nonblocking(true).is_err() {
            // Dropping the stream closes it: the peer retries on its next interval.
            debug!(
                "{} connection refused: {} already open, each with its request in",
                self.role.name(),
                self.bounds.max_clients
            );
            return Accepted::Refused;
        }
        let Ok(token) = sources.add(stream.as_fd(), Source::HttpClient(self.role), false) else {
            return Accepted::Refused;
        };
        let now = Instant::now();
        self.clients.insert(
            token,
            HttpClient {
                stream,
                request: Vec::new(),
                response: None,
                accepted: now,
                deadline: now + self.bounds.timeout,
            },
        );
        if self.warned {
            self.warned = false;
            info!("accepting {} connections again", self.role.name());
        }
        Accepted::Client(token)
    }

    /// No descriptor for another connection: stop polling the listener (one warning per
    /// episode) until a client leaves or `PAUSE_RETRY` has passed; the kernel keeps the
    /// waiting connections.
    fn pause(&mut self, e: &std::io::Error, sources: &Sources) {
        if self.paused.is_none()
            && sources
                .modify(self.listener.as_fd(), self.listener_token, false, false)
                .is_ok()
        {
            self.paused = Some(Instant::now() + PAUSE_RETRY);
            if !self.warned {
                self.warned = true;
                let name = self.role.name();
                warn!(
                    "accepting a {name} connection: {e}: out of file descriptors; the {name} \
                     listener waits until a {name} client leaves (or tries again each {}s)",
                    PAUSE_RETRY.as_secs()
                );
            }
        }
    }

    /// A client left, or the pause is over: a paused listener is polled again.
    fn resume(&mut self, sources: &Sources) {
        if self.paused.is_some()
            && sources
                .modify(self.listener.as_fd(), self.listener_token, true, false)
                .is_ok()
        {
            self.paused = None;
            debug!("polling the {} listener again", self.role.name());
        }
    }

    /// Reads what the connection has (bounded by `MAX_REQUEST_BYTES`); the request once it
    /// is complete. A peer gone before a complete request is dropped.
    pub fn read(&mut self, token: Token, ready: Ready, sources: &mut Sources) -> Progress {
        let Some(client) = self.clients.get_mut(&token) else {
            return Progress::Pending;
        };
        if client.response.is_some() || !(ready.readable || ready.closed) {
            return Progress::Pending;
        }
        let mut buf = [0u8; 4096];
        let mut gone = false;
        loop {
            // Never more than the bound plus one read: the rest is not looked at.
            if head_end(&client.request).is_some() || client.request.len() > MAX_REQUEST_BYTES {
                break;
            }
            match client.stream.read(&mut buf) {
                Ok(0) => {
                    gone = true;
                    break;
                }
                Ok(n) => client.request.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == IoKind::WouldBlock => break,
                Err(e) if e.kind() == IoKind::Interrupted => {}
                Err(_) => {
                    gone = true;
                    break;
                }
            }
        }
        if let Some(end) = head_end(&client.request) {
            client.request.truncate(end);
            return Progress::Request(Incoming::Head(std::mem::take(&mut client.request)));
        }
        if client.request.len() > MAX_REQUEST_BYTES {
            client.request = Vec::new();
            return Progress::Request(Incoming::TooLarge);
        }
        if gone {
            // Closed before a complete request: nothing to answer.
            self.drop_client(token, sources);
        }
        Progress::Pending
    }

    /// Gives `token` its answer and writes what the socket takes.
    pub fn respond(&mut self, token: Token, answer: Vec<u8>, sources: &mut Sources) {
        if let Some(client) = self.clients.get_mut(&token) {
            client.response = Some((answer, 0));
        }
        self.write(token, sources);
    }

    /// Writes what the socket takes of the answer; the connection goes once it is all out (or
    /// the peer is gone).
    pub fn write(&mut self, token: Token, sources: &mut Sources) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        let Some((bytes, written)) = &mut client.response else {
            return;
        };
        while *written < bytes.len() {
            match client.stream.write(&bytes[*written..]) {
                Ok(0) => break,
                Ok(n) => *written += n,
                Err(e) if e.kind() == IoKind::WouldBlock => {
                    // Wait for room instead of for input, which nobody sends any more.
                    let _ = sources.modify(client.stream.as_fd(), token, false, true);
                    return;
                }
                Err(e) if e.kind() == IoKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = client.stream.shutdown(std::net::Shutdown::Write);
        self.drop_client(token, sources);
    }

    fn drop_client(&mut self, token: Token, sources: &mut Sources) {
        if let Some(client) = self.clients.remove(&token) {
            sources.remove(&client.stream, token);
            drop(client);
            self.resume(sources);
        }
    }

    /// Closes connections whose time is up (slow or silent peers).
    pub fn expire(&mut self, now: Instant, sources: &mut Sources) {
        let late: Vec<Token> = self
            .clients
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in late {
            debug!("{} connection timed out", self.role.name());
            self.drop_client(token, sources);
        }
        if self.paused.is_some_and(|until| until <= now) {
            self.resume(sources);
        }
    }
}

/// The daemon's HTTP listeners, each there only when asked for.
#[derive(Default)]
pub struct Servers {
    pub metrics: Option<HttpServer>,
    pub probes: Option<HttpServer>,
}

impl Servers {
    pub fn get_mut(&mut self, role: Role) -> Option<&mut HttpServer> {
        match role {
            Role::Metrics => self.metrics.as_mut(),
            Role::Probes => self.probes.as_mut(),
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        [&self.metrics, &self.probes]
            .into_iter()
            .flatten()
            .filter_map(HttpServer::next_deadline)
            .min()
    }

    /// Closes every connection whose time is up.
    pub fn expire(&mut self, now: Instant, sources: &mut Sources) {
        for server in [&mut self.metrics, &mut self.probes].into_iter().flatten() {
            server.expire(now, sources);
        }
    }
}

impl Daemon {
    /// A listener is readable: accepts a bounded number, and reads each new connection at
    /// once. When the listener is full, the oldest connection still sending its request makes
    /// room: it is read first (a request that has arrived is answered, never thrown away), and
    /// closed only if still incomplete, so a stranger's silent connections cannot keep a
    /// prober out (docs/operations.md, "Threat model").
    pub(super) fn accept_http(&mut self, role: Role) {
        let readable = |token| Ready {
            token,
            readable: true,
            writable: false,
            closed: false,
        };
        for _ in 0..ACCEPTS_PER_WAKE {
            let Some(server) = self.http.get_mut(role) else {
                return;
            };
            if server.is_full()
                && let Some(oldest) = server.oldest_idle()
            {
                self.serve_http(role, oldest, readable(oldest));
                if let Some(server) = self.http.get_mut(role)
                    && server.is_full()
                    && server.clients.contains_key(&oldest)
                {
                    debug!(
                        "{} connection closed for a new one: the oldest without its request",
                        role.name()
                    );
                    server.drop_client(oldest, &mut self.sources);
                }
            }
            let Some(server) = self.http.get_mut(role) else {
                return;
            };
            match server.accept_one(&mut self.sources) {
                Accepted::Client(token) => self.serve_http(role, token, readable(token)),
                Accepted::Refused => {}
                Accepted::None => return,
            }
        }
    }

    /// A connection is ready: the rest of its answer is written, or its request read and,
    /// once complete, answered.
    pub(super) fn serve_http(&mut self, role: Role, token: Token, ready: Ready) {
        let Some(server) = self.http.get_mut(role) else {
            return;
        };
        if ready.writable || ready.closed {
            server.write(token, &mut self.sources);
        }
        let Progress::Request(incoming) = server.read(token, ready, &mut self.sources) else {
            return;
        };
        let answer = match role {
            Role::Metrics => self.metrics_answer(&incoming),
            Role::Probes => self.probe_answer(&incoming),
        };
        if let Some(server) = self.http.get_mut(role) {
            server.respond(token, answer, &mut self.sources);
        }
    }
}

/// The end of the request head (`\r\n\r\n`, or bare `\n\n` from sloppy clients), if complete.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The method and the path (query string dropped) of a request head; None when the request
/// line is not `METHOD TARGET HTTP/1.x`.
pub fn request_line(head: &[u8]) -> Option<(String, String)> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let path = target.split('?').next().unwrap_or(target);
    Some((method.to_owned(), path.to_owned()))
}

/// A whole response, the connection closed after it.
pub fn response(status: &str, extra_headers: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra_headers}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The answer to a request head that never ended.
pub fn too_large() -> Vec<u8> {
    response(
        "431 Request Header Fields Too Large",
        "",
        "text/plain",
        "request too large\n",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_ends_at_the_first_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nrest"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
    }

    #[test]
    fn the_request_line_gives_method_and_path() {
        let table: [(&str, Option<(&str, &str)>); 5] = [
            ("GET /metrics HTTP/1.1\r\n\r\n", Some(("GET", "/metrics"))),
            (
                "GET /readyz?verbose HTTP/1.0\r\n\r\n",
                Some(("GET", "/readyz")),
            ),
            ("POST /x HTTP/1.1\n\n", Some(("POST", "/x"))),
            ("GET /metrics\r\n\r\n", None),
            ("GET /metrics SPDY/3\r\n\r\n", None),
        ];
        for (head, want) in table {
            let got = request_line(head.as_bytes());
            let want = want.map(|(m, p)| (m.to_owned(), p.to_owned()));
            assert_eq!(got, want, "{head:?}");
        }
    }
}
