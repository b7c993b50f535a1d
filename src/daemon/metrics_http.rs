//! `--metrics-listen`: `GET /metrics` over the shared HTTP room (http.rs), with
//! `--metrics-token-file` only for requests that carry the bearer token.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::Daemon;
use super::http::{Bounds, Incoming, request_line, response, too_large};

/// Connections at once (see `Bounds` for what a new one beyond this does).
pub const MAX_CLIENTS: usize = 16;
/// A connection that has not sent its request, or not taken its answer, within this is closed.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The metrics listener's bounds: Prometheus scrapes about once every 15 to 60 s.
pub const BOUNDS: Bounds = Bounds {
    max_clients: MAX_CLIENTS,
    timeout: TIMEOUT,
};

/// Whether `addr` is only reachable from this machine.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
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
    let Some((method, path)) = request_line(head) else {
        return Route::BadRequest;
    };
    match (method.as_str(), path.as_str()) {
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

impl Daemon {
    /// The answer to a complete request on the metrics listener.
    pub(super) fn metrics_answer(&self, incoming: &Incoming) -> Vec<u8> {
        let Incoming::Head(head) = incoming else {
            return too_large();
        };
        let route = route(head);
        let refused = route != Route::BadRequest
            && self
                .opts
                .metrics_token
                .as_deref()
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
