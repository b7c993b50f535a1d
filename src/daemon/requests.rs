//! The control server: accepting peers, checking who they are, and carrying out their requests.

use std::os::fd::AsFd;
use std::str::FromStr;
use std::time::Instant;

use nix::sys::signal::Signal;
use tracing::{info, warn};

use crate::core::reload::ReloadPlan;
use crate::core::supervisor::{Goal, Input, RequestError};
use crate::os::poller::Readiness;
use crate::os::{control_socket, namespaces};
use crate::proto::{ErrorBody, ErrorKind, ReloadReport, Request, Response, UnitStatus, Verb};
use crate::unit::{Namespaces, UnitName};

use super::Daemon;
use super::control::{Client, ClientState, Incoming, MAX_CLIENTS};
use super::status::{namespace_status, unit_status};

/// `logs` without `-n`.
const DEFAULT_LOG_LINES: usize = 100;

impl Daemon {
    pub(super) fn accept_clients(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("accepting a control connection: {e}");
                    return;
                }
            };
            let now = Instant::now();
            let Ok(peer) = control_socket::peer(&stream) else {
                continue;
            };
            let trusted = peer.uid == 0 || peer.uid == self.own_uid;
            // The socket's mode already keeps out everyone but the owner, root and (with
            // --socket-group) the group; anyone else who got here is refused outright.
            let read_only = !trusted && self.opts.socket_group.is_some();
            let refusal = if !trusted && !read_only {
                Some(format!("uid {} may not use this socket", peer.uid))
            } else if self.clients.len() >= MAX_CLIENTS {
                Some(format!("too many clients (at most {MAX_CLIENTS})"))
            } else {
                None
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let mut client = Client::new(stream, peer, read_only, now);
            if let Some(message) = refusal {
                warn!(
                    uid = peer.uid,
                    pid = peer.pid,
                    "control connection refused: {message}"
                );
                client.send(&Response::error(ErrorKind::PermissionDenied, message));
                client.flush();
                continue;
            }
            let token = self.token();
            if self.poller.add(client.stream.as_fd(), token, false).is_ok() {
                self.clients.insert(token, client);
            }
        }
    }

    pub(super) fn serve_client(&mut self, token: u64, readiness: Readiness) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        if readiness.readable || readiness.closed {
            loop {
                let Some(client) = self.clients.get_mut(&token) else {
                    return;
                };
                match client.read() {
                    Incoming::Line(line) => {
                        client.idle_deadline = None;
                        self.on_request(token, &line);
                    }
                    Incoming::TooLarge => {
                        client.send(&Response::error(
                            ErrorKind::TooLarge,
                            format!(
                                "request line longer than {} bytes",
                                crate::proto::MAX_REQUEST_BYTES
                            ),
                        ));
                        client.state = ClientState::Reading;
                        client.closing = true;
                        client.discard_input();
                        break;
                    }
                    Incoming::Nothing => break,
                }
            }
            // EPOLLHUP on a stream socket: the peer closed both directions, so nobody can
            // read an answer any more; drop it rather than wake on the hang-up forever.
            if readiness.closed
                && let Some(client) = self.clients.get_mut(&token)
                && client.closing
            {
                client.dead = true;
            }
        } else if readiness.writable {
            client.flush();
        }
    }

    fn reply(&mut self, token: u64, response: Response) {
        if let Some(client) = self.clients.get_mut(&token) {
            client.send(&response);
            client.state = ClientState::Reading;
            client.idle_deadline = Some(Instant::now() + super::control::IDLE_TIMEOUT);
        }
    }

    fn on_request(&mut self, token: u64, line: &[u8]) {
        let request: Request = match serde_json::from_slice(line) {
            Ok(r) => r,
            Err(e) => {
                return self.reply(token, Response::error(ErrorKind::BadRequest, e.to_string()));
            }
        };
        let Some(client) = self.clients.get(&token) else {
            return;
        };
        let peer = client.peer;
        if client.read_only && !request.verb.is_read_only() {
            // Audited like an accepted one: a refused attempt to change state is worth a trace.
            warn!(uid = peer.uid, pid = peer.pid, verb = ?request.verb, units = ?request.units, "control request refused");
            return self.reply(
                token,
                Response::error(
                    ErrorKind::PermissionDenied,
                    format!("{:?} needs root or the supervisor's own user", request.verb)
                        .to_lowercase(),
                ),
            );
        }
        if !request.verb.is_read_only() {
            info!(uid = peer.uid, pid = peer.pid, verb = ?request.verb, units = ?request.units, "control request");
        }
        let names = match parse_names(&request.units) {
            Ok(names) => names,
            Err(e) => return self.reply(token, Response::error(e.kind, e.message)),
        };
        let now = Instant::now();
        match request.verb {
            Verb::Status => {
                let response = match self.sup.check_names(&names) {
                    Ok(()) => Response {
                        reload_error: self.reload_error.clone(),
                        cgroups: Some(self.members.cgroups_report()),
                        ..Response::units(self.statuses(&names, now))
                    },
                    Err(e) => refused(&e),
                };
                self.reply(token, response);
            }
            Verb::Start | Verb::Stop | Verb::Restart => {
                if names.is_empty() {
                    return self.reply(
                        token,
                        Response::error(ErrorKind::BadRequest, "name at least one unit"),
                    );
                }
                let (input, goal) = match request.verb {
                    Verb::Start => (Input::Start(names.clone()), Goal::Started),
                    Verb::Stop => (Input::Stop(names.clone()), Goal::Stopped),
                    _ => (Input::Restart(names.clone()), Goal::Started),
                };
                if let Err(e) = self.step(input, now) {
                    return self.reply(token, refused(&e));
                }
                if request.no_block {
                    let statuses = self.statuses(&names, now);
                    return self.reply(token, Response::units(statuses));
                }
                if let Some(client) = self.clients.get_mut(&token) {
                    client.state = ClientState::Waiting { goal, units: names };
                }
            }
            Verb::Kill => {
                let [name] = names.as_slice() else {
                    return self.reply(
                        token,
                        Response::error(ErrorKind::BadRequest, "kill takes exactly one unit"),
                    );
                };
                let signal = match parse_signal(request.signal.as_deref().unwrap_or("SIGTERM")) {
                    Ok(s) => s,
                    Err(e) => return self.reply(token, Response::error(e.kind, e.message)),
                };
                let response = match self.step(
                    Input::Kill {
                        unit: name.clone(),
                        signal,
                    },
                    now,
                ) {
                    Ok(()) => Response::message(format!("sent {} to {name}", signal.as_str())),
                    Err(e) => refused(&e),
                };
                self.reply(token, response);
            }
            Verb::Logs => self.start_logs(token, &request, names),
            Verb::Metrics => {
                let response = match self.sup.check_names(&names) {
                    Ok(()) => Response {
                        ok: true,
                        metrics: Some(crate::metrics::render(&self.statuses(&names, now))),
                        ..Response::default()
                    },
                    Err(e) => refused(&e),
                };
                self.reply(token, response);
            }
            Verb::Shutdown => {
                if request.power.is_some() && !self.host_init {
                    let why = "corral is not the host's init (PID 1 of the first pid namespace): \
                               it cannot power off or reboot the machine";
                    return self.reply(token, Response::error(ErrorKind::Failed, why));
                }
                if let Some(power) = request.power {
                    self.power = power;
                }
                if let Some(client) = self.clients.get_mut(&token) {
                    client.state = ClientState::AwaitingShutdown;
                }
                self.begin_shutdown(now);
            }
            Verb::Freeze | Verb::Thaw => {
                let response = self.freeze(&names, request.verb == Verb::Freeze, now);
                self.reply(token, response);
            }
            Verb::Reload => {
                let response = match self.reload(now) {
                    Ok(plan) => Response {
                        ok: true,
                        reload: Some(report(&plan)),
                        ..Response::default()
                    },
                    Err(diagnostics) => Response::error(ErrorKind::Invalid, diagnostics),
                };
                self.reply(token, response);
            }
        }
    }

    /// Freezes or thaws every named unit; each must have a running process.
    fn freeze(&mut self, names: &[UnitName], frozen: bool, now: Instant) -> Response {
        if names.is_empty() {
            return Response::error(ErrorKind::BadRequest, "name at least one unit");
        }
        if let Err(e) = self.sup.check_names(names) {
            return refused(&e);
        }
        if let Some(idle) = names
            .iter()
            .find(|n| self.sup.get(n).is_none_or(|(_, rt)| rt.pid.is_none()))
        {
            return refused(&RequestError::NotRunning(idle.clone()));
        }
        for name in names {
            if let Err(e) = self.members.set_frozen(name, frozen) {
                return Response::error(ErrorKind::Failed, format!("{name}: {e}"));
            }
            info!(unit = %name, "{}", if frozen { "frozen" } else { "thawed" });
            self.feed(
                Input::Frozen {
                    unit: name.clone(),
                    frozen,
                },
                now,
            );
        }
        Response::units(self.statuses(names, now))
    }

    fn start_logs(&mut self, token: u64, request: &Request, names: Vec<UnitName>) {
        if names.is_empty() {
            return self.reply(
                token,
                Response::error(ErrorKind::BadRequest, "name at least one unit"),
            );
        }
        if let Err(e) = self.sup.check_names(&names) {
            return self.reply(token, refused(&e));
        }
        let n = request.lines.unwrap_or(DEFAULT_LOG_LINES);
        let mut lines: Vec<_> = names
            .iter()
            .filter_map(|name| self.rings.get(name))
            .flat_map(|ring| ring.tail(n).cloned())
            .collect();
        // Several units interleave by time; RFC 3339 strings of one format sort by time.
        lines.sort_by(|a, b| a.time.cmp(&b.time));
        let lines = lines.split_off(lines.len().saturating_sub(n));
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        if request.follow {
            for line in lines {
                client.send(&Response {
                    ok: true,
                    line: Some(line),
                    ..Response::default()
                });
            }
            client.state = ClientState::Following { units: names };
            client.idle_deadline = None;
        } else {
            self.reply(
                token,
                Response {
                    ok: true,
                    lines: Some(lines),
                    ..Response::default()
                },
            );
        }
    }

    pub(super) fn statuses(&self, names: &[UnitName], now: Instant) -> Vec<UnitStatus> {
        self.sup
            .units()
            .filter(|(unit, _)| names.is_empty() || names.contains(&unit.name))
            .map(|(unit, rt)| {
                let mut status = unit_status(
                    unit,
                    rt,
                    self.sup.waiting_for(&unit.name),
                    self.members.facts(&unit.name),
                    &self.clock,
                    now,
                );
                // Seven reads of /proc per unit: only where someone asks or isolation is at stake.
                if unit.exec.is_some()
                    && (!names.is_empty() || unit.namespaces != Namespaces::default())
                {
                    let theirs = rt.pid.map(|pid| namespaces::inodes(Some(pid)));
                    status.namespaces =
                        namespace_status(&unit.namespaces, theirs, &self.own_namespaces);
                }
                status
                    .warnings
                    .extend(self.usage_watch.warnings(&unit.name));
                status.near_limits = self.usage_watch.concerns(&unit.name);
                status
            })
            .collect()
    }

    /// Answers every start/stop/restart whose units all got where they were going.
    pub(super) fn answer_waiters(&mut self) {
        let now = Instant::now();
        let mut answers = Vec::new();
        for (token, client) in &self.clients {
            let ClientState::Waiting { goal, units } = &client.state else {
                continue;
            };
            let outcomes: Option<Vec<Result<(), String>>> =
                units.iter().map(|u| self.sup.settled(u, *goal)).collect();
            let Some(outcomes) = outcomes else {
                continue;
            };
            let failures: Vec<String> = outcomes.into_iter().filter_map(Result::err).collect();
            let statuses = self.statuses(units, now);
            let response = if failures.is_empty() {
                Response::units(statuses)
            } else {
                Response {
                    units: Some(statuses),
                    ..Response::error(ErrorKind::Failed, failures.join("; "))
                }
            };
            answers.push((*token, response));
        }
        for (token, response) in answers {
            self.reply(token, response);
        }
    }

    /// Serves requests that queued up on a connection while an earlier one was answered.
    pub(super) fn serve_buffered(&mut self) {
        let tokens: Vec<u64> = self.clients.keys().copied().collect();
        for token in tokens {
            while let Some(Incoming::Line(line)) =
                self.clients.get_mut(&token).and_then(Client::next_buffered)
            {
                if let Some(client) = self.clients.get_mut(&token) {
                    client.idle_deadline = None;
                }
                self.on_request(token, &line);
            }
        }
    }

    /// Writes pending output, drops finished and idle clients, and keeps epoll interest current.
    pub(super) fn flush_clients(&mut self) {
        let now = Instant::now();
        let mut gone = Vec::new();
        for (token, client) in &mut self.clients {
            client.flush();
            let idle = client.idle_deadline.is_some_and(|d| d <= now);
            if client.finished() || idle {
                gone.push(*token);
            } else {
                let _ = self.poller.modify(
                    client.stream.as_fd(),
                    *token,
                    client.wants_read(),
                    client.wants_write(),
                );
            }
        }
        for token in gone {
            if let Some(client) = self.clients.remove(&token) {
                let _ = self.poller.remove(&client.stream);
            }
        }
    }
}

fn parse_names(units: &[String]) -> Result<Vec<UnitName>, ErrorBody> {
    units
        .iter()
        .map(|u| {
            UnitName::new(u).ok_or_else(|| ErrorBody {
                kind: ErrorKind::UnknownUnit,
                message: format!("{u:?} is not a unit name"),
            })
        })
        .collect()
}

/// `SIGTERM`, `TERM`, `term` or a number.
pub fn parse_signal(text: &str) -> Result<Signal, ErrorBody> {
    let bad = || ErrorBody {
        kind: ErrorKind::BadRequest,
        message: format!("unknown signal {text:?}"),
    };
    if let Ok(n) = text.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| bad());
    }
    let upper = text.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&full).map_err(|_| bad())
}

fn refused(e: &RequestError) -> Response {
    let kind = match e {
        RequestError::UnknownUnits(_) => ErrorKind::UnknownUnit,
        RequestError::NotRunning(_) | RequestError::IsSlice(_) => ErrorKind::NotRunning,
        RequestError::ShuttingDown => ErrorKind::ShuttingDown,
    };
    Response::error(kind, e.to_string())
}

fn report(plan: &ReloadPlan) -> ReloadReport {
    let names = |v: &[UnitName]| v.iter().map(|n| n.to_string()).collect();
    ReloadReport {
        added: names(&plan.added),
        removed: names(&plan.removed),
        restarted: names(&plan.restarted),
        relimited: names(&plan.relimited),
        updated: names(&plan.updated),
        unchanged: plan.unchanged.len(),
    }
}
