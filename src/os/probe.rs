//! Network health probes as non-blocking sockets the event loop drives: a TCP connect, and a
//! minimal HTTP/1.0 GET on top of it. The caller owns the timeout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6, connect, getsockopt, socket,
    sockopt,
};

use crate::unit::HttpTarget;

/// Enough of an answer to hold its status line.
const RESPONSE_HEAD_MAX: usize = 1024;
/// The body is read (and dropped) up to this much, so the server's writes do not fail on a
/// closed socket; a longer body ends the probe with the status line's verdict.
const RESPONSE_DRAIN_MAX: usize = 64 * 1024;

/// Where a probe stands after an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Wait for the socket again: for writing (connect, request) or reading (response).
    Pending {
        writable: bool,
    },
    Done {
        ok: bool,
        message: String,
    },
}

enum Stage {
    Connecting,
    /// Writing the request: the bytes not yet sent.
    Sending(Vec<u8>),
    Receiving(Vec<u8>),
}

/// One TCP or HTTP probe in flight.
pub struct NetProbe {
    stream: TcpStream,
    stage: Stage,
    /// `Some` for HTTP: the request to send once connected.
    request: Option<Vec<u8>>,
    addr: SocketAddr,
    /// The HTTP status line's verdict, once read; the rest of the answer is drained.
    verdict: Option<(bool, String)>,
    drained: usize,
}

impl NetProbe {
    /// Starts a TCP probe: success is an accepted connection.
    pub fn tcp(addr: SocketAddr) -> Result<(NetProbe, Progress), String> {
        NetProbe::start(addr, None)
    }

    /// Starts an HTTP probe: success is a 2xx or 3xx status to `GET path HTTP/1.0`.
    pub fn http(target: &HttpTarget) -> Result<(NetProbe, Progress), String> {
        let request = format!(
            "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: corral-probe\r\nConnection: close\r\n\r\n",
            target.path, target.host
        );
        NetProbe::start(target.addr, Some(request.into_bytes()))
    }

    fn start(addr: SocketAddr, request: Option<Vec<u8>>) -> Result<(NetProbe, Progress), String> {
        let family = match addr {
            SocketAddr::V4(_) => AddressFamily::Inet,
            SocketAddr::V6(_) => AddressFamily::Inet6,
        };
        let fd: OwnedFd = socket(
            family,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| format!("creating a socket for {addr}: {e}"))?;
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let connected = match addr {
            SocketAddr::V4(a) => connect(raw, &SockaddrIn::from(a)),
            SocketAddr::V6(a) => connect(raw, &SockaddrIn6::from(a)),
        };
        let progress = match connected {
            // Loopback connects can complete at once; the write interest fires right away then.
            Ok(()) | Err(Errno::EINPROGRESS) => Progress::Pending { writable: true },
            Err(e) => Progress::Done {
                ok: false,
                message: connect_failure(addr, e),
            },
        };
        let probe = NetProbe {
            stream: TcpStream::from(fd),
            stage: Stage::Connecting,
            request,
            addr,
            verdict: None,
            drained: 0,
        };
        Ok((probe, progress))
    }

    /// What the probe knows already: an HTTP status line read while the body still drains.
    /// At its timeout that verdict stands, so a server that never closes is judged by it.
    pub fn verdict(&self) -> Option<(bool, String)> {
        self.verdict.clone()
    }

    /// The socket became ready (or hung up): take the next step.
    pub fn on_ready(&mut self) -> Progress {
        match self.step() {
            Ok(progress) => progress,
            Err(e) if e == Errno::EAGAIN || e == Errno::EINTR => Progress::Pending {
                writable: !matches!(self.stage, Stage::Receiving(_)),
            },
            Err(e) => Progress::Done {
                ok: false,
                message: match self.stage {
                    Stage::Connecting => connect_failure(self.addr, e),
                    _ => format!("{}: {e}", self.addr),
                },
            },
        }
    }

    fn step(&mut self) -> Result<Progress, Errno> {
        loop {
            match &mut self.stage {
                Stage::Connecting => {
                    // The kernel's verdict on a non-blocking connect (connect(2), EINPROGRESS).
                    let err = getsockopt(&self.stream, sockopt::SocketError)?;
                    if err != 0 {
                        return Err(Errno::from_raw(err));
                    }
                    // A connect still in progress reports no error but no peer either.
                    if self.stream.peer_addr().is_err() {
                        return Ok(Progress::Pending { writable: true });
                    }
                    match self.request.take() {
                        None => {
                            return Ok(Progress::Done {
                                ok: true,
                                message: format!("connected to {}", self.addr),
                            });
                        }
                        Some(request) => self.stage = Stage::Sending(request),
                    }
                }
                Stage::Sending(left) => {
                    let n = self.stream.write(left).map_err(io_errno)?;
                    left.drain(..n);
                    if left.is_empty() {
                        self.stage = Stage::Receiving(Vec::new());
                    }
                }
                Stage::Receiving(head) => {
                    let mut buf = [0u8; 4096];
                    let n = match self.stream.read(&mut buf) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            return Err(Errno::EAGAIN);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        // A reset after the status line (the server closed with our request
                        // unread) does not undo the answer.
                        Err(_) if self.verdict.is_some() => 0,
                        Err(e) => return Err(io_errno(e)),
                    };
                    let eof = n == 0;
                    self.drained += n;
                    if self.verdict.is_none() {
                        head.extend_from_slice(&buf[..n]);
                        self.verdict = match http_verdict(head, eof) {
                            Some(Progress::Done { ok, message }) => Some((ok, message)),
                            _ => None,
                        };
                        if self.verdict.is_none() && (eof || head.len() >= RESPONSE_HEAD_MAX) {
                            return Ok(Progress::Done {
                                ok: false,
                                message: "no HTTP status line in the answer".to_owned(),
                            });
                        }
                    }
                    if let Some((ok, message)) = &self.verdict
                        && (eof || self.drained >= RESPONSE_DRAIN_MAX)
                    {
                        return Ok(Progress::Done {
                            ok: *ok,
                            message: message.clone(),
                        });
                    }
                }
            }
        }
    }
}

impl AsFd for NetProbe {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

fn connect_failure(addr: SocketAddr, e: Errno) -> String {
    match e {
        Errno::ECONNREFUSED => format!("connection to {addr} refused"),
        e => format!("connecting to {addr}: {}", e.desc()),
    }
}

/// The verdict on an HTTP answer once its status line is complete: 2xx and 3xx pass.
fn http_verdict(head: &[u8], eof: bool) -> Option<Progress> {
    let line_end = head.iter().position(|&b| b == b'\n');
    let line = match line_end {
        Some(end) => &head[..end],
        None if eof => head,
        None => return None,
    };
    let line = String::from_utf8_lossy(line);
    let line = line.trim_end();
    let mut words = line.split_whitespace();
    let version = words.next().unwrap_or("");
    let code = words.next().and_then(|c| c.parse::<u16>().ok());
    Some(match code {
        Some(code) if version.starts_with("HTTP/") => Progress::Done {
            ok: (200..400).contains(&code),
            message: format!("HTTP {code}"),
        },
        _ => Progress::Done {
            ok: false,
            message: format!("not an HTTP status line: {line:?}"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn verdict(head: &str, eof: bool) -> Option<Progress> {
        http_verdict(head.as_bytes(), eof)
    }

    #[test]
    fn status_lines_decide_http_probes() {
        let done = |ok, m: &str| {
            Some(Progress::Done {
                ok,
                message: m.into(),
            })
        };
        assert_eq!(
            verdict("HTTP/1.0 200 OK\r\n", false),
            done(true, "HTTP 200")
        );
        assert_eq!(
            verdict("HTTP/1.1 302 Found\r\n", false),
            done(true, "HTTP 302")
        );
        assert_eq!(
            verdict("HTTP/1.0 503 Service Unavailable\r\n", false),
            done(false, "HTTP 503")
        );
        assert_eq!(verdict("HTTP/1.0 20", false), None, "incomplete line");
        assert!(matches!(
            verdict("SSH-2.0-OpenSSH\r\n", false),
            Some(Progress::Done { ok: false, .. })
        ));
    }

    /// Drives a probe to its end with blocking poll, as the event loop would with epoll.
    fn drive(mut probe: NetProbe, mut progress: Progress) -> (bool, String) {
        loop {
            match progress {
                Progress::Done { ok, message } => return (ok, message),
                Progress::Pending { writable } => {
                    let flags = if writable {
                        nix::poll::PollFlags::POLLOUT
                    } else {
                        nix::poll::PollFlags::POLLIN
                    };
                    let mut fds = [nix::poll::PollFd::new(probe.as_fd(), flags)];
                    nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(5000u16)).unwrap();
                    progress = probe.on_ready();
                }
            }
        }
    }

    #[test]
    fn tcp_and_http_probes_against_a_local_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (probe, progress) = NetProbe::tcp(addr).unwrap();
        let (ok, _) = drive(probe, progress);
        assert!(ok);

        let server = std::thread::spawn(move || {
            // The first connection in the backlog is the TCP probe's, closed already.
            drop(listener.accept().unwrap());
            let (mut conn, _) = listener.accept().unwrap();
            let mut req = [0u8; 512];
            let n = conn.read(&mut req).unwrap();
            conn.write_all(b"HTTP/1.0 500 Oops\r\n\r\n").unwrap();
            String::from_utf8_lossy(&req[..n]).into_owned()
        });
        let target = HttpTarget {
            addr,
            host: addr.to_string(),
            path: "/healthz".into(),
        };
        let (probe, progress) = NetProbe::http(&target).unwrap();
        assert_eq!(drive(probe, progress), (false, "HTTP 500".to_owned()));
        assert!(
            server
                .join()
                .unwrap()
                .starts_with("GET /healthz HTTP/1.0\r\n")
        );

        // The listener is gone: nothing answers on the port any more.
        let (probe, progress) = NetProbe::tcp(addr).unwrap();
        let (ok, message) = drive(probe, progress);
        assert!(!ok);
        assert!(message.contains("refused"), "{message}");
    }

    #[test]
    fn a_server_that_never_closes_is_judged_by_its_status_line_at_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut req = [0u8; 512];
            let _ = conn.read(&mut req).unwrap();
            conn.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
            let written = conn.write_all(&vec![b'x'; RESPONSE_DRAIN_MAX / 2]);
            // Keep the connection open until the probe has given up on an end.
            let _ = done_rx.recv();
            written.is_ok()
        });
        let target = HttpTarget {
            addr,
            host: addr.to_string(),
            path: "/".into(),
        };
        let (mut probe, mut progress) = NetProbe::http(&target).unwrap();
        // Drive it until the socket stays quiet: the body is read, no EOF comes.
        while let Progress::Pending { writable } = progress {
            let flags = if writable {
                nix::poll::PollFlags::POLLOUT
            } else {
                nix::poll::PollFlags::POLLIN
            };
            let mut fds = [nix::poll::PollFd::new(probe.as_fd(), flags)];
            if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(300u16)).unwrap() == 0 {
                break;
            }
            progress = probe.on_ready();
        }
        assert!(matches!(progress, Progress::Pending { .. }), "{progress:?}");
        assert_eq!(probe.verdict(), Some((true, "HTTP 204".to_owned())));
        let head = b"HTTP/1.1 204 No Content\r\n\r\n".len();
        assert_eq!(
            probe.drained,
            head + RESPONSE_DRAIN_MAX / 2,
            "all of it was read"
        );
        drop(done_tx);
        assert!(
            server.join().unwrap(),
            "the server's writes all went through"
        );
    }
}
