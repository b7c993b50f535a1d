//! `--metrics-listen`: a minimal HTTP/1.x server for `GET /metrics` on the daemon's one epoll
//! loop: non-blocking sockets, one request per connection, bounded in size, count and time.

use std::collections::HashMap;
use std::io::{ErrorKind as IoKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::os::poller::Readiness;

use super::Daemon;

/// Longest request head (request line and headers) read; longer requests get 431.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Connections beyond this are closed at once.
pub const MAX_CLIENTS: usize = 16;
/// A connection that has not sent its request, or not taken its answer, within this is closed.
pub const TIMEOUT: Duration = Duration::from_secs(10);

pub struct MetricsServer {
    pub listener: TcpListener,
    clients: HashMap<u64, HttpClient>,
}

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
    pub fn bind(addr: SocketAddr) -> std::io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(MetricsServer {
            listener,
            clients: HashMap::new(),
        })
    }

    pub fn has_client(&self, token: u64) -> bool {
        self.clients.contains_key(&token)
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
        loop {
            let Some(server) = &self.metrics else { return };
            let stream = match server.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == IoKind::WouldBlock => return,
                Err(e) if e.kind() == IoKind::Interrupted => continue,
                Err(e) => {
                    warn!("accepting a metrics connection: {e}");
                    return;
                }
            };
            if server.clients.len() >= MAX_CLIENTS || stream.set_nonblocking(true).is_err() {
                // Dropping the stream closes it: the scraper retries on its next interval.
                debug!("metrics connection refused: {MAX_CLIENTS} already open");
                continue;
            }
            let token = self.token();
            let Some(server) = &mut self.metrics else {
                return;
            };
            if self.poller.add(stream.as_fd(), token, false).is_ok() {
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

    pub(super) fn serve_metrics_client(&mut self, token: u64, readiness: Readiness) {
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
        match route(&client.request[..end]) {
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
                        .poller
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
            let _ = self.poller.remove(&client.stream);
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
