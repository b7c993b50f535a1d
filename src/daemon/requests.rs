//! The control server: accepting peers, checking who they are, and carrying out their requests.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::os::fd::AsFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::core::signal::Signal;
use tracing::{debug, info, warn};

use crate::core::reload::ReloadPlan;
use crate::core::selection::{Selection, SelectionError};
use crate::core::supervisor::{Goal, Input, RequestError};
use crate::os::control_socket::{self, Peer};
use crate::os::namespaces;
use crate::os::poller::Ready;
use crate::proto::{
    ErrorBody, ErrorKind, LogLine, ReloadReport, Request, Response, UnitStatus, Verb,
};
use crate::unit::{Namespaces, UnitKind, UnitName};

use super::Daemon;
use super::control::{
    ACCEPTS_PER_TURN, Answer, Client, ClientState, Incoming, MAX_CLIENTS, MAX_CONNECTIONS_PER_UID,
    MAX_FOLLOWERS_PER_UID, REQUESTS_PER_TURN, ROOT_RESERVE, TRUSTED_RESERVE,
};
use super::output::LineFilter;
use super::sources::Source;
use super::status::{namespace_status, unit_status};

/// `logs` without `-n`.
const DEFAULT_LOG_LINES: usize = 100;
/// The most of the loop's time one `logs --grep` answer may take to search the buffers.
const GREP_BUDGET: std::time::Duration = std::time::Duration::from_millis(50);
/// Pieces of one large answer that write nothing (a unit's figures gathered for `metrics`, a
/// unit gone since the request) produced in one turn of the loop.
const PIECES_PER_TURN: usize = 1024;
/// Slices above a unit that a filter looks at; deeper nesting is not found by `--slice`.
const MAX_SLICE_DEPTH: usize = 64;

impl Daemon {
    pub(super) fn accept_clients(&mut self) {
        // A bounded number per turn: a connect flood waits in the kernel's backlog while the
        // loop serves everyone else (epoll is level-triggered, so the rest wakes the next turn).
        for _ in 0..ACCEPTS_PER_TURN {
            let stream = match self.control.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    if !self.turn_away_for_want_of_fds(&e) {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    warn!("accepting a control connection: {e}");
                    return;
                }
            };
            if self.control.out_of_fds {
                self.recover_fds(true);
            }
            let now = Instant::now();
            let Ok(peer) = control_socket::peer(&stream) else {
                continue;
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let trusted = peer.uid == 0 || peer.uid == self.own_uid;
            // The socket's mode already keeps out everyone but the owner, root and (with
            // --socket-group) the group; the kernel's record of the peer's groups decides, since
            // the file's group may have been changed or the path reached another way.
            let member = !trusted
                && self
                    .control
                    .group
                    .is_some_and(|gid| control_socket::peer_in_group(&stream, &peer, gid));
            let mut client = Client::new(stream, peer, member, now);
            if let Some((kind, message)) = self.admission(&peer, trusted || member) {
                if let Some(unlogged) = self.control.log_refusal(now) {
                    warn!(
                        uid = peer.uid,
                        pid = peer.pid,
                        unlogged,
                        "control connection refused: {message}"
                    );
                }
                client.send(&Response::error(kind, message));
                client.flush(now);
                continue;
            }
            if let Ok(token) = self
                .sources
                .add(client.stream.as_fd(), Source::Client, false)
            {
                self.control.clients.insert(token, client);
            }
        }
    }

    /// Why a new connection from `peer` is refused, if it is: a stranger, or a limit reached.
    fn admission(&self, peer: &Peer, permitted: bool) -> Option<(ErrorKind, String)> {
        if !permitted {
            return Some((
                ErrorKind::PermissionDenied,
                format!("uid {} may not use this socket", peer.uid),
            ));
        }
        // Root may take every slot, corral's own user all but ROOT_RESERVE, a --socket-group
        // member all but TRUSTED_RESERVE: whoever floods the socket, root still gets in.
        let (capacity, reserved_for) = if peer.uid == 0 {
            (MAX_CLIENTS, "")
        } else if peer.uid == self.own_uid {
            (MAX_CLIENTS - ROOT_RESERVE, " for root")
        } else {
            (MAX_CLIENTS - TRUSTED_RESERVE, " for root and corral's user")
        };
        if self.control.clients.len() >= capacity {
            return Some((
                ErrorKind::LimitReached,
                format!(
                    "too many clients (at most {MAX_CLIENTS}, the last {} kept{reserved_for})",
                    MAX_CLIENTS - capacity
                ),
            ));
        }
        let same_uid = self
            .control
            .clients
            .values()
            .filter(|c| c.peer.uid == peer.uid);
        if peer.uid != 0 && same_uid.count() >= MAX_CONNECTIONS_PER_UID {
            return Some((
                ErrorKind::LimitReached,
                format!(
                    "uid {} has {MAX_CONNECTIONS_PER_UID} connections open, the most one user may have",
                    peer.uid
                ),
            ));
        }
        None
    }

    /// accept(2) failed with EMFILE or ENFILE: the connection stays in the backlog and the
    /// listener readable, so the loop would wake for it forever. The reserve fd makes room to
    /// accept it and turn it away; without one the listener leaves the epoll set until a client
    /// leaves. Logged once per episode. True when another accept may be tried.
    fn turn_away_for_want_of_fds(&mut self, error: &std::io::Error) -> bool {
        if !self.control.out_of_fds {
            self.control.out_of_fds = true;
            warn!(
                "accepting a control connection: {error}; corral is out of file descriptors, \
                 new control connections are turned away until some are closed"
            );
        }
        let Some(reserve) = self.control.reserve_fd.take() else {
            self.pause_listener();
            return false;
        };
        drop(reserve);
        if let Ok((stream, _)) = self.control.listener.accept() {
            let now = Instant::now();
            if stream.set_nonblocking(true).is_ok()
                && let Ok(peer) = control_socket::peer(&stream)
            {
                let mut client = Client::new(stream, peer, false, now);
                client.send(&Response::error(
                    ErrorKind::LimitReached,
                    "corral is out of file descriptors; try again when clients have left",
                ));
                client.flush(now);
            }
        }
        self.control.reserve_fd = open_reserve_fd();
        if self.control.reserve_fd.is_none() {
            self.pause_listener();
            return false;
        }
        true
    }

    fn pause_listener(&mut self) {
        if !self.control.listener_paused {
            self.control.listener_paused = true;
            let _ = self.sources.modify(
                self.control.listener.as_fd(),
                self.control.listener_token,
                false,
                false,
            );
        }
    }

    /// Takes the reserve fd back when one is free, and with it the listener; a client that
    /// left (or a connection accepted) ends an episode of running out.
    fn recover_fds(&mut self, episode_over: bool) {
        if self.control.reserve_fd.is_none() {
            self.control.reserve_fd = open_reserve_fd();
        }
        if self.control.listener_paused && self.control.reserve_fd.is_some() {
            self.control.listener_paused = false;
            let _ = self.sources.modify(
                self.control.listener.as_fd(),
                self.control.listener_token,
                true,
                false,
            );
        }
        if self.control.out_of_fds && episode_over {
            self.control.out_of_fds = false;
            info!("file descriptors are free again: accepting control connections again");
        }
    }

    pub(super) fn serve_client(&mut self, token: u64, readiness: Ready) {
        let Some(client) = self.control.clients.get_mut(&token) else {
            return;
        };
        if readiness.readable || readiness.closed {
            client.fill();
        }
        if readiness.writable {
            client.flush(Instant::now());
        }
        self.serve_requests(token);
        // EPOLLHUP on a stream socket: the peer closed both directions. What it sent before is
        // still served (a `restart` written by a client that does not wait for the answer),
        // within this turn's budget; then it is dropped, since nobody can read an answer any
        // more and the hang-up would wake the loop forever.
        if readiness.closed {
            for _ in 0..REQUESTS_PER_TURN {
                match self.control.clients.get_mut(&token) {
                    Some(client) => client.fill(),
                    None => return,
                }
                self.serve_requests(token);
            }
            if let Some(client) = self.control.clients.get_mut(&token) {
                client.dead = true;
            }
        }
    }

    /// Serves what `token` has buffered, within its budget for this turn.
    fn serve_requests(&mut self, token: u64) {
        while let Some(incoming) = self
            .control
            .clients
            .get_mut(&token)
            .and_then(Client::next_request)
        {
            match incoming {
                Incoming::Line(line) => {
                    if let Some(client) = self.control.clients.get_mut(&token) {
                        client.idle_deadline = None;
                    }
                    self.on_request(token, &line);
                    self.answer_if_settled(token);
                }
                Incoming::TooLarge => {
                    if let Some(client) = self.control.clients.get_mut(&token) {
                        client.send(&Response::error(
                            ErrorKind::TooLarge,
                            format!(
                                "request line longer than {} bytes",
                                crate::proto::MAX_REQUEST_BYTES
                            ),
                        ));
                        client.state = ClientState::Reading;
                        client.answer = None;
                        client.closing = true;
                        client.discard_input();
                    }
                    return;
                }
            }
        }
    }

    /// Produces more of `token`'s large answer, as much as its output bound has room for.
    fn pump(&mut self, token: u64) {
        let Some(client) = self.control.clients.get_mut(&token) else {
            return;
        };
        client.pump_follow();
        let Some(mut answer) = client.answer.take() else {
            return;
        };
        let room = client.room();
        let now = Instant::now();
        // Sized once: grown by doubling, the buffer's copies were a tenth of a status.
        let mut out = Vec::with_capacity(room.saturating_add(4096));
        let status_of = |name: &UnitName, named: bool| self.unit_status(name, named, now);
        let mut done = false;
        // Pieces that write nothing (a metrics answer's gathering) are bounded too: the loop
        // comes back at once for the rest (`Client::has_work`), serving everyone in between.
        // Only those count: pieces that write are bounded by `room`, and counting them too
        // cut a metrics text into ~N/50 turns, each paying the loop's own O(N) scans.
        let mut silent = 0;
        while !done && out.len() < room && silent < PIECES_PER_TURN {
            let before = out.len();
            done = answer.next_piece(&mut out, &status_of);
            if out.len() == before {
                silent += 1;
            }
        }
        let Some(client) = self.control.clients.get_mut(&token) else {
            return;
        };
        client.send_bytes(&out);
        if done {
            client.state = ClientState::Reading;
            client.idle_deadline = Some(now + super::control::IDLE_TIMEOUT);
            let large = answer.was_large();
            drop(answer);
            drop(out);
            // A large answer's gathering (a metrics text's figures: ~0.5 KiB a unit) is freed
            // now; without this its pages stay resident (bench/analysis.md, "Where the heap
            // goes per unit"). A small one frees too little to be worth the walk.
            if large {
                crate::os::heap::release_free_pages();
            }
        } else {
            client.answer = Some(answer);
        }
    }

    fn reply(&mut self, token: u64, response: Response) {
        if let Some(client) = self.control.clients.get_mut(&token) {
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
        let Some(client) = self.control.clients.get(&token) else {
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
        // status and metrics take patterns and filters (`selected`); the others names only.
        let names = match request.verb {
            Verb::Status | Verb::Metrics => Vec::new(),
            _ => match parse_names(&request.units) {
                Ok(names) => names,
                Err(e) => return self.reply(token, Response::error(e.kind, e.message)),
            },
        };
        let now = Instant::now();
        match request.verb {
            Verb::Status => {
                let (rows, by_name) = match self.selected(&request) {
                    Ok(selected) => selected,
                    Err(e) => return self.reply(token, Response::error(e.kind, e.message)),
                };
                // Written as the client reads: one row per unit, each taken when it is written.
                let answer = Answer::units(
                    rows,
                    by_name,
                    self.units_dir.last_error.clone(),
                    Some(self.members.cgroups_report()),
                );
                self.stream_answer(token, answer);
            }
            Verb::Start | Verb::Stop | Verb::Restart => {
                if names.is_empty() {
                    return self.reply(
                        token,
                        Response::error(ErrorKind::BadRequest, "name at least one unit"),
                    );
                }
                // An instance with no file is made from its template first.
                if request.verb != Verb::Stop
                    && let Err(e) = self.make_instances(&names, now)
                {
                    return self.reply(token, Response::error(e.kind, e.message));
                }
                let (input, goal) = match request.verb {
                    Verb::Start => (Input::Start(names.clone()), Goal::Started),
                    Verb::Stop => (Input::Stop(names.clone()), Goal::Stopped),
                    _ => (Input::Restart(names.clone()), Goal::Started),
                };
                if let Err(e) = self.step(input, now) {
                    return self.reply(token, refused(&e));
                }
                // A runtime instance stopped by name is removed too.
                if request.verb == Verb::Stop {
                    self.discard_instances(&names, now);
                }
                if request.no_block {
                    let statuses = self.statuses(&names, now);
                    return self.reply(token, Response::units(statuses));
                }
                if let Some(client) = self.control.clients.get_mut(&token) {
                    client.state = ClientState::Waiting {
                        goal,
                        units: names,
                        gone: Vec::new(),
                    };
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
            Verb::Scale => {
                if let Some(response) = self.scale(token, &request, now) {
                    self.reply(token, response);
                }
            }
            Verb::WaitReady => {
                if let Err(e) = self.sup.check_names(&names) {
                    return self.reply(token, refused(&e));
                }
                let timeout = Duration::from_millis(request.timeout_ms.unwrap_or(0));
                let deadline = request.timeout_ms.and_then(|_| now.checked_add(timeout));
                // Not `info`: an exec probe asks every few seconds.
                debug!(uid = peer.uid, pid = peer.pid, units = ?names, timeout_ms = request.timeout_ms, "wait-ready: waiting");
                if let Some(client) = self.control.clients.get_mut(&token) {
                    client.state = ClientState::AwaitingReady {
                        units: names,
                        deadline,
                        timeout,
                    };
                }
            }
            Verb::Metrics => match self.selected(&request) {
                // Streamed like status: figures gathered unit by unit, then the text.
                Ok((rows, _)) => self.stream_answer(token, Answer::metrics(rows)),
                Err(e) => self.reply(token, Response::error(e.kind, e.message)),
            },
            Verb::Shutdown => {
                if request.power.is_some() && !self.host_init {
                    let why = "corral is not the host's init (PID 1 of the first pid namespace): \
                               it cannot power off or reboot the machine";
                    return self.reply(token, Response::error(ErrorKind::Failed, why));
                }
                if let Some(power) = request.power {
                    self.shutdown.power = power;
                }
                if let Some(client) = self.control.clients.get_mut(&token) {
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

    /// The units a status or metrics request selects (its names, patterns, `states` and
    /// `slices`; docs/protocol.md), in the supervisor's order, and whether it named units
    /// exactly and nothing else. A name or slice that does not exist refuses the request.
    fn selected(&self, request: &Request) -> Result<(VecDeque<UnitName>, bool), ErrorBody> {
        let selection = Selection::parse(&request.units, &request.states, &request.slices)
            .map_err(|e| ErrorBody {
                kind: match e {
                    SelectionError::BadName(_) => ErrorKind::UnknownUnit,
                    _ => ErrorKind::BadRequest,
                },
                message: e.to_string(),
            })?;
        self.sup.check_names(&selection.names).map_err(|e| {
            let refusal = refused(&e);
            refusal.error.unwrap_or(ErrorBody {
                kind: ErrorKind::UnknownUnit,
                message: e.to_string(),
            })
        })?;
        if let Some(slice) = selection.slices.iter().find(|s| {
            self.sup
                .get(s)
                .is_none_or(|(u, _)| u.kind != UnitKind::Slice)
        }) {
            return Err(ErrorBody {
                kind: ErrorKind::UnknownUnit,
                message: format!("no slice {slice}"),
            });
        }
        let rows = self
            .sup
            .units()
            .filter(|(unit, rt)| {
                selection.admits(&unit.name, rt.state, self.slices_of(unit.slice.as_ref()))
            })
            .map(|(unit, _)| unit.name.clone())
            .collect();
        Ok((rows, selection.is_by_name()))
    }

    /// A unit's slices from its parent up; slices cannot form cycles (unit/load.rs refuses
    /// them), and the walk is bounded all the same.
    fn slices_of<'a>(&'a self, parent: Option<&'a UnitName>) -> impl Iterator<Item = &'a UnitName> {
        std::iter::successors(parent, |slice| {
            self.sup.get(slice).and_then(|(u, _)| u.slice.as_ref())
        })
        .take(MAX_SLICE_DEPTH)
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

    /// Starts a large answer on `token`; it is produced as the client reads.
    fn stream_answer(&mut self, token: u64, answer: Answer) {
        if let Some(client) = self.control.clients.get_mut(&token) {
            client.answer = Some(answer);
        }
        self.pump(token);
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
        let Some(client) = self.control.clients.get(&token) else {
            return;
        };
        let uid = client.peer.uid;
        if request.follow && uid != 0 {
            let following = self
                .control
                .clients
                .values()
                .filter(|c| c.peer.uid == uid && c.is_follower())
                .count();
            if following >= MAX_FOLLOWERS_PER_UID {
                let message = format!(
                    "uid {uid} already follows {following} logs, the most one user may follow"
                );
                return self.reply(token, Response::error(ErrorKind::LimitReached, message));
            }
        }
        let filter = match LineFilter::new(
            request.since.as_deref(),
            request.grep.as_deref(),
            std::time::SystemTime::now(),
        ) {
            Ok(filter) => filter,
            Err(e) => return self.reply(token, Response::error(ErrorKind::BadRequest, e)),
        };
        // No more than a ring holds; `names` has each unit once. A filtered request without
        // `lines` gets every line that matches, as `journalctl --since` does.
        let default = if filter.is_empty() {
            DEFAULT_LOG_LINES
        } else {
            super::RING_LINES
        };
        let n = request.lines.unwrap_or(default).min(super::RING_LINES);
        // grep runs on the loop: the whole search is bounded in time, not only in lines.
        // And a peer's greps share one budget per second, however many connections ask.
        let started = Instant::now();
        let mut budget = GREP_BUDGET;
        if filter.greps()
            && let Some(left) = self.control.grep_budgets.remaining(uid, started)
        {
            if left.is_zero() {
                let message = format!(
                    "grep: the searches of uid {uid} took their {}ms of corral's loop within \
                     a second (or those of all users but root their {}ms); try again in a moment",
                    super::output::GREP_BUDGET_PER_UID.as_millis(),
                    super::output::GREP_BUDGET_ALL_PEERS.as_millis()
                );
                return self.reply(token, Response::error(ErrorKind::LimitReached, message));
            }
            budget = budget.min(left);
        }
        let deadline = started + budget;
        let mut lines: Vec<&Rc<LogLine>> = Vec::new();
        let mut searched = 0;
        let mut stopped = None;
        for ring in names.iter().filter_map(|name| self.rings.get(name)) {
            match ring.tail_matching_until(n, &filter, Some(deadline)) {
                Ok(found) => {
                    searched += ring.len();
                    lines.extend(found);
                }
                Err(more) => {
                    stopped = Some(searched + more);
                    break;
                }
            }
        }
        if filter.greps() {
            let now = Instant::now();
            self.control
                .grep_budgets
                .charge(uid, now.saturating_duration_since(started), now);
        }
        if let Some(searched) = stopped {
            let message = format!(
                "grep: the search was stopped after {}ms, {searched} lines in; narrow it with \
                 --since or -n, or use a simpler pattern",
                budget.as_millis(),
            );
            return self.reply(token, Response::error(ErrorKind::LimitReached, message));
        }
        // Several units interleave by time; RFC 3339 strings of one format sort by time.
        lines.sort_by(|a, b| a.time.cmp(&b.time));
        let lines: VecDeque<Rc<LogLine>> = lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|line| Rc::clone(line))
            .collect();
        if request.follow {
            if let Some(client) = self.control.clients.get_mut(&token) {
                client.start_following(names, filter, lines);
            }
        } else {
            self.stream_answer(token, Answer::lines(lines));
        }
    }

    /// One unit's status as `status` shows it; None when the unit is gone. `named`: the request
    /// named units, whose namespaces are listed.
    pub(super) fn unit_status(
        &self,
        name: &UnitName,
        named: bool,
        now: Instant,
    ) -> Option<UnitStatus> {
        let (unit, rt) = self.sup.get(name)?;
        let mut status = unit_status(
            unit,
            rt,
            self.sup.waiting_for(&unit.name),
            self.members.facts_of(&unit.name, at_rest(unit, rt)),
            &self.clock,
            now,
        );
        // Seven reads of /proc per unit: only where someone asks or isolation is at stake.
        if unit.exec.is_some() && (named || *unit.namespaces != Namespaces::default()) {
            let theirs = rt.pid.map(|pid| namespaces::inodes(Some(pid)));
            status.namespaces = namespace_status(&unit.namespaces, theirs, &self.own_namespaces);
        }
        status
            .warnings
            .extend(self.usage_watch.warnings(&unit.name));
        status.near_limits = self.usage_watch.concerns(&unit.name);
        status.pressure = super::status::pressure_status(
            unit,
            rt,
            self.pressure_watched_by(unit),
            &self.clock,
            now,
        );
        Some(status)
    }

    /// The status of the units named (each once, by name), or of every unit.
    pub(super) fn statuses(&self, names: &[UnitName], now: Instant) -> Vec<UnitStatus> {
        if names.is_empty() {
            return self
                .sup
                .units()
                .filter_map(|(unit, _)| self.unit_status(&unit.name, false, now))
                .collect();
        }
        // The names, not every unit: a start's answer costs what it names (#22).
        let wanted: BTreeSet<&UnitName> = names.iter().collect();
        wanted
            .into_iter()
            .filter_map(|name| self.unit_status(name, true, now))
            .collect()
    }

    /// Whether a client waits for units that all got where they were going: a request
    /// served after this turn's answers (step 8) settled it, so the next turn comes at once to
    /// answer it, as a client with buffered work gets one (`Client::next_deadline`).
    pub(super) fn a_waiter_is_settled(&self) -> bool {
        self.control
            .clients
            .values()
            .any(|client| match &client.state {
                ClientState::Waiting { goal, units, gone } => {
                    units.iter().all(|u| self.sup.settled(u, *goal).is_some())
                        && gone.iter().all(|u| !self.sup.is_removing(u))
                }
                ClientState::AwaitingReady { units, .. } => self.sup.not_ready(units).is_empty(),
                _ => false,
            })
    }

    /// The answer to `client`'s wait-ready once its units are ready (or one named is gone, or
    /// its time is up); `None` while it waits. A unit that fails is waited for on (a restart,
    /// a `corral restart` or a reload may still make it ready): the timeout says why it is not.
    fn ready_answer(&self, client: &Client, now: Instant) -> Option<Response> {
        let ClientState::AwaitingReady {
            units,
            deadline,
            timeout,
        } = &client.state
        else {
            return None;
        };
        let waiting = self.sup.not_ready(units);
        if waiting.is_empty() {
            let what = if units.is_empty() {
                "every enabled unit is ready".to_owned()
            } else {
                format!("ready: {}", UnitName::join(units, ", "))
            };
            return Some(Response::message(what));
        }
        if let Some(gone) = waiting.iter().find(|u| self.sup.is_ready(u).is_none()) {
            let why = format!("{gone} was removed from the units directory");
            return Some(Response::error(ErrorKind::Failed, why));
        }
        if deadline.is_some_and(|d| d <= now) {
            let why: Vec<String> = waiting
                .iter()
                .map(|u| format!("{u} ({})", self.sup.not_ready_because(u)))
                .collect();
            let message = format!(
                "not ready after {}: {}",
                humantime::format_duration(*timeout),
                why.join(", ")
            );
            return Some(Response::error(ErrorKind::Timeout, message));
        }
        None
    }

    /// The answer to `client`'s start/stop/restart once its units all got where they were
    /// going; `None` while it waits (or asked for nothing of the kind).
    fn settled_answer(&self, client: &Client, now: Instant) -> Option<Response> {
        let ClientState::Waiting { goal, units, gone } = &client.state else {
            return None;
        };
        // Gone once forgotten, or no longer on its way out: a later `scale` put it back.
        if gone.iter().any(|u| self.sup.is_removing(u)) {
            return None;
        }
        let outcomes: Vec<Result<(), String>> = units
            .iter()
            .map(|u| self.sup.settled(u, *goal))
            .collect::<Option<_>>()?;
        let failures: Vec<String> = outcomes.into_iter().filter_map(Result::err).collect();
        // A `scale` to 0 waits for no unit to start: its answer lists none (not all).
        let statuses = if units.is_empty() {
            Vec::new()
        } else {
            self.statuses(units, now)
        };
        Some(if failures.is_empty() {
            Response::units(statuses)
        } else {
            Response {
                units: Some(statuses),
                ..Response::error(ErrorKind::Failed, failures.join("; "))
            }
        })
    }

    /// Answers `token` at once if what it asked for is already the case (a `start` of a
    /// running unit), so the requests queued behind it are served in the same turn.
    fn answer_if_settled(&mut self, token: u64) {
        let now = Instant::now();
        let answer = self.control.clients.get(&token).and_then(|client| {
            self.settled_answer(client, now)
                .or_else(|| self.ready_answer(client, now))
        });
        if let Some(response) = answer {
            self.reply(token, response);
        }
    }

    /// Step 8 of the loop: answers every client whose start/stop/restart settled this turn,
    /// then serves what clients queued behind their answered requests and produces more of
    /// the large answers whose clients have read what came before. A request served here
    /// whose goal is already met is answered as it is served (`serve_requests`); one that
    /// settles another client's wait gets that client answered on the next turn, which then
    /// comes at once (`a_waiter_is_settled`). So one pass over the waiters per turn suffices.
    pub(super) fn answer_clients(&mut self) {
        self.answer_waiters();
        self.serve_buffered();
    }

    /// Answers every start/stop/restart whose units all got where they were going.
    fn answer_waiters(&mut self) {
        let now = Instant::now();
        let answers: Vec<(u64, Response)> = self
            .control
            .clients
            .iter()
            .filter_map(|(token, client)| {
                let answer = self
                    .settled_answer(client, now)
                    .or_else(|| self.ready_answer(client, now))?;
                Some((*token, answer))
            })
            .collect();
        for (token, response) in answers {
            self.reply(token, response);
        }
    }

    /// Serves requests that queued up on a connection while an earlier one was answered, and
    /// produces more of the large answers whose clients have read what came before.
    fn serve_buffered(&mut self) {
        let tokens: Vec<u64> = self.control.clients.keys().copied().collect();
        for token in tokens {
            self.pump(token);
            self.serve_requests(token);
        }
    }

    /// Writes pending output, drops finished, idle and stalled clients, and keeps epoll
    /// interest current. Every client's budget of requests starts afresh for the next turn.
    pub(super) fn flush_clients(&mut self) {
        let now = Instant::now();
        let tokens: Vec<u64> = self.control.clients.keys().copied().collect();
        for token in &tokens {
            if let Some(client) = self.control.clients.get_mut(token) {
                client.flush(now);
            }
            // Room made by the write is filled at once: a fast reader of a large answer gets it
            // at the socket's pace, not one piece per wake.
            self.pump(*token);
        }
        let mut gone = Vec::new();
        for (token, client) in &mut self.control.clients {
            client.flush(now);
            client.new_turn();
            if client.finished() || client.expired(now) {
                gone.push(*token);
            } else {
                let _ = self.sources.modify(
                    client.stream.as_fd(),
                    *token,
                    client.wants_read(),
                    client.wants_write(),
                );
            }
        }
        for token in &gone {
            if let Some(client) = self.control.clients.remove(token) {
                self.sources.remove(&client.stream, *token);
            }
        }
        if !gone.is_empty() || self.control.reserve_fd.is_none() {
            self.recover_fds(!gone.is_empty());
        }
    }
}

/// An fd to give back when accept(2) runs out of them.
fn open_reserve_fd() -> Option<std::os::fd::OwnedFd> {
    std::fs::File::open("/dev/null").ok().map(Into::into)
}

/// Each unit once, in the order first named: a request naming one unit many times costs no
/// more than naming it once.
fn parse_names(units: &[String]) -> Result<Vec<UnitName>, ErrorBody> {
    let mut seen = HashSet::new();
    let mut names = Vec::new();
    for u in units {
        let name = UnitName::new(u).ok_or_else(|| ErrorBody {
            kind: ErrorKind::UnknownUnit,
            message: format!(
                "{u:?} is not a unit name (unit names use only letters, digits and `_ . @ -`)"
            ),
        })?;
        if seen.insert(name.clone()) {
            names.push(name);
        }
    }
    Ok(names)
}

/// `SIGTERM`, `TERM`, `term` or a number.
pub fn parse_signal(text: &str) -> Result<Signal, ErrorBody> {
    let bad = || ErrorBody {
        kind: ErrorKind::BadRequest,
        message: format!("unknown signal {text:?}"),
    };
    if let Ok(n) = text.parse::<i32>() {
        return Signal::from_number(n).ok_or_else(bad);
    }
    let upper = text.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_name(&full).ok_or_else(bad)
}

/// A unit with no process and no cgroup to read (see `Members::facts_of`); never a slice,
/// whose cgroup lives while it is active.
fn at_rest(unit: &crate::unit::Unit, rt: &crate::core::service::Runtime) -> bool {
    use crate::core::service::State;
    unit.kind != UnitKind::Slice
        && rt.pid.is_none()
        && matches!(rt.state, State::Inactive | State::Exited | State::Failed)
}

pub(super) fn refused(e: &RequestError) -> Response {
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
