//! `--metrics-listen`: a minimal HTTP/1.x server for `GET /metrics` on the daemon's one epoll
//! loop: non-blocking sockets, one request per connection, bounded in size, count and time,
//! and with `--metrics-token-file` only for requests that carry the bearer token.

use std::collections::HashMap;
use std::io::{ErrorKind as IoKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::os::poller::Ready;

use super::Daemon;
use super::sources::Source;

/// Longest request head (request line and headers) read; longer requests get 431.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Connections beyond this are closed at once.
pub const MAX_CLIENTS: usize = 16;
/// A connection that has not sent its request, or not taken its answer, within this is closed.
pub const TIMEOUT: Duration = Duration::from_secs(10);

pub struct MetricsServer {
    pub listener: TcpListener,
    /// The listener's epoll token, once registered.
    pub listener_token: Option<u64>,
    clients: HashMap<u64, HttpClient>,
    /// Requests must carry `Authorization: Bearer <this>` (`--metrics-token-file`).
    token: Option<String>,
    /// Out of descriptors: the listener is not polled until a client leaves (a readable
    /// listener that cannot accept would wake the loop for ever).
    paused: bool,
}

/// Connections accepted per wake: a connect flood is served a slice per turn.
const ACCEPTS_PER_WAKE: usize = 16;

struct HttpClient {
    stream: TcpStream,
    request: Vec<u8>,
    /// The whole response once the request is complete, and how much of it is written.
    response: Option<(Vec<u8>, usize)>,
    deadline: Instant,
}

/// Whether `addr` is only reachable from this machine.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

impl MetricsServer {
    pub fn bind(addr: SocketAddr, token: Option<String>) -> std::io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(MetricsServer {
            listener,
            listener_token: None,
            clients: HashMap::new(),
            token,
            paused: false,
        })
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.clients.values().map(|c| c.deadline).min()
    }
}

/// What the request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Metrics,
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Routes a complete request head: only `GET /metrics` (any query string) is served.
pub fn route(head: &[u8]) -> Route {
    let Some(line) = head.split(|&b| b == b'\n').next() else {
        return Route::BadRequest;
    };
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let path = target.split('?').next().unwrap_or(target);
    match (method, path) {
        ("GET", "/metrics") => Route::Metrics,
        ("GET", _) => Route::NotFound,
        _ => Route::MethodNotAllowed,
    }
}

/// Whether the request head carries `Authorization: Bearer <token>` (header name and scheme in
/// any case, RFC 9110 and RFC 6750), compared in constant time.
pub fn authorized(head: &[u8], token: &str) -> bool {
    head.split(|&b| b == b'\n').skip(1).any(|line| {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return false;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        let Some(space) = value.iter().position(|&b| b == b' ') else {
            return false;
        };
        let (scheme, credentials) = (&value[..space], value[space..].trim_ascii());
        name.eq_ignore_ascii_case(b"authorization")
            && scheme.eq_ignore_ascii_case(b"bearer")
            && same_secret(credentials, token.as_bytes())
    })
}

/// `given == secret`, in a time that depends only on the secret's length, so a stranger cannot
/// find the token byte by byte from how long the refusals take.
fn same_secret(given: &[u8], secret: &[u8]) -> bool {
    let mut difference = given.len() ^ secret.len();
    for (i, &s) in secret.iter().enumerate() {
        let g = given.get(i).copied().unwrap_or(!s);
        difference |= usize::from(g ^ s);
    }
    std::hint::black_box(difference) == 0
}

/// The token in a `--metrics-token-file`: its content without surrounding white space; refused
/// when empty or when it holds anything but visible ASCII (it goes in a header).
pub fn token_from(text: &str) -> Result<String, &'static str> {
    let token = text.trim();
    if token.is_empty() {
        return Err("it is empty");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the token holds a space or a character that is not visible ASCII");
    }
    Ok(token.to_owned())
}

/// Reads `--metrics-token-file`: refused when every local user may read it (the token would
/// then protect nothing), and as `token_from` says.
pub fn read_token_file(path: &std::path::Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("--metrics-token-file {shown}: {e}"))?;
    let mode = meta.permissions().mode();
    if mode & 0o004 != 0 {
        return Err(format!(
            "--metrics-token-file {shown} is readable by every local user (mode {:o}): \
             `chmod o-r` it, or the token protects nothing",
            mode & 0o7777
        ));
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--metrics-token-file {shown}: {e}"))?;
    token_from(&text).map_err(|why| format!("--metrics-token-file {shown}: {why}"))
}

/// The end of the request head (`\r\n\r\n`, or bare `\n\n` from sloppy clients), if complete.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn response(status: &str, extra_headers: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra_headers}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl Daemon {
    pub(super) fn accept_metrics_clients(&mut self) {
        for _ in 0..ACCEPTS_PER_WAKE {
            let Some(server) = &self.metrics else { return };
            let stream = match server.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == IoKind::WouldBlock => return,
                Err(e) if e.kind() == IoKind::Interrupted => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    self.pause_metrics_listener(&e);
                    return;
                }
                Err(e) => {
                    debug!("accepting a metrics connection: {e}");
                    return;
                }
            };
            if server.clients.len() >= MAX_CLIENTS || stream.set_nonblocking(true).is_err() {
                // Dropping the stream closes it: the scraper retries on its next interval.
                debug!("metrics connection refused: {MAX_CLIENTS} already open");
                continue;
            }
            let Some(server) = &mut self.metrics else {
                return;
            };
            if let Ok(token) = self
                .sources
                .add(stream.as_fd(), Source::MetricsClient, false)
            {
                server.clients.insert(
                    token,
                    HttpClient {
                        stream,
                        request: Vec::new(),
                        response: None,
                        deadline: Instant::now() + TIMEOUT,
                    },
                );
            }
        }
    }

    /// No descriptor for another connection: stop polling the listener (one warning per
    /// episode) until a metrics client leaves; the kernel keeps the waiting connections.
    fn pause_metrics_listener(&mut self, e: &std::io::Error) {
        let Some(server) = &mut self.metrics else {
            return;
        };
        let Some(token) = server.listener_token else {
            return;
        };
        if self
            .sources
            .modify(server.listener.as_fd(), token, false, false)
            .is_ok()
        {
            server.paused = true;
            warn!(
                "accepting a metrics connection: {e}: out of file descriptors; the metrics \
                 listener waits until a metrics client leaves"
            );
        }
    }

    /// A client left: a paused listener is polled again.
    fn resume_metrics_listener(&mut self) {
        let Some(server) = &mut self.metrics else {
            return;
        };
        let (true, Some(token)) = (server.paused, server.listener_token) else {
            return;
        };
        if self
            .sources
            .modify(server.listener.as_fd(), token, true, false)
            .is_ok()
        {
            server.paused = false;
            info!("accepting metrics connections again");
        }
    }

    pub(super) fn serve_metrics_client(&mut self, token: u64, readiness: Ready) {
        let mut done = false;
        let mut wants_answer = false;
        if let Some(client) = self
            .metrics
            .as_mut()
            .and_then(|s| s.clients.get_mut(&token))
            && client.response.is_none()
            && (readiness.readable || readiness.closed)
        {
            let mut buf = [0u8; 4096];
            loop {
                match client.stream.read(&mut buf) {
                    Ok(0) => {
                        // Closed before a complete request: nothing to answer.
                        done = head_end(&client.request).is_none();
                        break;
                    }
                    Ok(n) => {
                        client.request.extend_from_slice(&buf[..n]);
                        if head_end(&client.request).is_some()
                            || client.request.len() > MAX_REQUEST_BYTES
                        {
                            break;
                        }
                    }
                    Err(e) if e.kind() == IoKind::WouldBlock => break,
                    Err(e) if e.kind() == IoKind::Interrupted => {}
                    Err(_) => {
                        done = true;
                        break;
                    }
                }
            }
            wants_answer = !done
                && (head_end(&client.request).is_some()
                    || client.request.len() > MAX_REQUEST_BYTES);
        }
        if wants_answer {
            let answer = self.metrics_answer(token);
            if let Some(client) = self
                .metrics
                .as_mut()
                .and_then(|s| s.clients.get_mut(&token))
            {
                client.response = Some((answer, 0));
            }
        }
        if !done {
            done = self.write_metrics_client(token);
        }
        if done {
            self.drop_metrics_client(token);
        }
    }

    fn metrics_answer(&mut self, token: u64) -> Vec<u8> {
        let Some(client) = self.metrics.as_ref().and_then(|s| s.clients.get(&token)) else {
            return Vec::new();
        };
        let Some(end) = head_end(&client.request) else {
            return response(
                "431 Request Header Fields Too Large",
                "",
                "text/plain",
                "request too large\n",
            );
        };
        let head = &client.request[..end];
        let route = route(head);
        let refused = route != Route::BadRequest
            && self
                .metrics
                .as_ref()
                .and_then(|s| s.token.as_deref())
                .is_some_and(|token| !authorized(head, token));
        if refused {
            return response(
                "401 Unauthorized",
                "WWW-Authenticate: Bearer realm=\"corral\"\r\n",
                "text/plain",
                "a bearer token is required (see --metrics-token-file)\n",
            );
        }
        match route {
            Route::Metrics => {
                let statuses = self.statuses(&[], Instant::now());
                response(
                    "200 OK",
                    "",
                    "text/plain; version=0.0.4; charset=utf-8",
                    &crate::metrics::render(&statuses),
                )
            }
            Route::NotFound => response(
                "404 Not Found",
                "",
                "text/plain",
                "only /metrics is served here\n",
            ),
            Route::MethodNotAllowed => response(
                "405 Method Not Allowed",
                "Allow: GET\r\n",
                "text/plain",
                "only GET /metrics is served here\n",
            ),
            Route::BadRequest => response("400 Bad Request", "", "text/plain", "bad request\n"),
        }
    }

    /// Writes what the socket takes; true once the whole answer is out (or the peer is gone).
    fn write_metrics_client(&mut self, token: u64) -> bool {
        let Some(client) = self
            .metrics
            .as_mut()
            .and_then(|s| s.clients.get_mut(&token))
        else {
            return false;
        };
        let Some((bytes, written)) = &mut client.response else {
            return false;
        };
        while *written < bytes.len() {
            match client.stream.write(&bytes[*written..]) {
                Ok(0) => return true,
                Ok(n) => *written += n,
                Err(e) if e.kind() == IoKind::WouldBlock => {
                    // Wait for room instead of for input, which nobody sends any more.
                    let _ = self
                        .sources
                        .modify(client.stream.as_fd(), token, false, true);
                    return false;
                }
                Err(e) if e.kind() == IoKind::Interrupted => {}
                Err(_) => return true,
            }
        }
        let _ = client.stream.shutdown(std::net::Shutdown::Write);
        true
    }

    fn drop_metrics_client(&mut self, token: u64) {
        if let Some(client) = self.metrics.as_mut().and_then(|s| s.clients.remove(&token)) {
            self.sources.remove(&client.stream, token);
            drop(client);
            self.resume_metrics_listener();
        }
    }

    /// Closes connections whose time is up (slow or silent peers).
    pub(super) fn expire_metrics_clients(&mut self, now: Instant) {
        let Some(server) = &self.metrics else { return };
        let late: Vec<u64> = server
            .clients
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in late {
            debug!("metrics connection timed out");
            self.drop_metrics_client(token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        let table: [(&str, Route); 8] = [
            ("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", Route::Metrics),
            ("GET /metrics?name[]=x HTTP/1.0\r\n\r\n", Route::Metrics),
            ("GET / HTTP/1.1\r\n\r\n", Route::NotFound),
            ("GET /metrics/extra HTTP/1.1\r\n\r\n", Route::NotFound),
            ("POST /metrics HTTP/1.1\r\n\r\n", Route::MethodNotAllowed),
            ("HEAD /metrics HTTP/1.1\r\n\r\n", Route::MethodNotAllowed),
            ("GET /metrics\r\n\r\n", Route::BadRequest),
            ("GET /metrics SPDY/3\r\n\r\n", Route::BadRequest),
        ];
        for (head, want) in table {
            assert_eq!(route(head.as_bytes()), want, "{head:?}");
        }
    }

    #[test]
    fn the_head_ends_at_the_first_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nrest"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
    }

    #[test]
    fn only_the_bearer_of_the_token_is_authorized() {
        let token = "s3cret";
        let head = |auth: &str| format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{auth}\r\n");
        for (auth, want) in [
            ("Authorization: Bearer s3cret\r\n", true),
            ("authorization:bearer s3cret\r\n", true),
            ("AUTHORIZATION: BEARER   s3cret \r\n", true),
            ("Authorization: Bearer s3cret\n", true),
            ("", false),
            ("Authorization: Bearer s3cre\r\n", false),
            ("Authorization: Bearer s3crett\r\n", false),
            ("Authorization: Bearer S3CRET\r\n", false),
            ("Authorization: Bearer \r\n", false),
            ("Authorization: Basic s3cret\r\n", false),
            ("Authorization: s3cret\r\n", false),
            ("Proxy-Authorization: Bearer s3cret\r\n", false),
        ] {
            assert_eq!(authorized(head(auth).as_bytes(), token), want, "{auth:?}");
        }
        // The request line is not a header.
        assert!(!authorized(b"Authorization: Bearer s3cret\r\n\r\n", token));
        assert!(same_secret(b"", b""));
        assert!(!same_secret(b"\xff", b"\x00"));
    }

    #[test]
    fn a_token_file_holds_one_visible_token() {
        assert_eq!(token_from("abc-123_~+/=\n"), Ok("abc-123_~+/=".to_owned()));
        assert!(token_from(" \n").is_err());
        assert!(token_from("two words").is_err());
        assert!(token_from("caf\u{e9}").is_err());
    }

    #[test]
    fn loopback_addresses() {
        for (addr, want) in [
            ("127.0.0.1:9100", true),
            ("127.1.2.3:9100", true),
            ("[::1]:9100", true),
            ("0.0.0.0:9100", false),
            ("[::]:9100", false),
            ("192.168.1.5:9100", false),
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(is_loopback(&addr), want, "{addr}");
        }
    }
}
