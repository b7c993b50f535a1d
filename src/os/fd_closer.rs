//! Closing descriptors that came from outside corral on a thread of their own, never on the loop.
//!
//! A close can block for as long as its sender likes: the last close of a TCP socket with
//! SO_LINGER waits for unsent data (inet_release, up to the linger time), a FUSE file's flush
//! waits for its server, a tty drains. Each unit gets its own closer, so a unit that blocks
//! its closer holds up only its own descriptors; the counts in flight (the unit's, everyone's)
//! are visible to the loop, which stops reading a socket while they are high.
//!
//! A blocked last close must not hold slots of corral's descriptor table either, or a few
//! units could fill it for everyone. So a closer first *parks* each batch: it sends the
//! descriptors with SCM_RIGHTS into a socket pair of its own, where the kernel holds them in
//! the queue (unix(7)), and only then closes its copies, closes that are not the last and so do
//! not wait. A releaser thread then closes the pair: the queue's descriptors have their last
//! close there, and only that thread waits, holding no slot. While it waits, the next batches
//! park in the next pair, so each unit holds at most two pairs (four slots) however many
//! batches it sends. What cannot be parked (the kernel refused: its limit on descriptors in
//! flight, a full buffer) is closed by the closer directly, as before.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, sendmsg, socketpair,
};

/// A closer thread needs little: it drops descriptors and writes 8 bytes to an eventfd.
const STACK_SIZE: usize = 64 * 1024;

/// The most descriptors one SCM_RIGHTS message carries (include/net/scm.h, SCM_MAX_FD).
const SCM_MAX_FD: usize = 253;

/// What all closers share: the loop's wake-up, readable once a closer has finished a batch,
/// and the count of descriptors in corral's table in all of them (not yet parked or closed).
#[derive(Debug, Clone)]
pub struct CloserWake {
    fd: Arc<EventFd>,
    in_table: Arc<AtomicUsize>,
}

impl CloserWake {
    pub fn new() -> std::io::Result<CloserWake> {
        let fd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        Ok(CloserWake {
            fd: Arc::new(fd),
            in_table: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Empties the counter, so the next wake is a new one.
    pub fn drain(&self) {
        let _ = self.fd.read();
    }

    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&*self.fd)
    }

    /// Descriptors handed to any closer that still take a slot of corral's descriptor table.
    pub fn in_flight(&self) -> usize {
        self.in_table.load(Ordering::Acquire)
    }

    fn notify(&self) {
        // Full counter (EAGAIN): the loop has a wake pending anyway.
        let _ = self.fd.write(1);
    }
}

/// The two counts a descriptor is in until its last close: its unit's (until then) and
/// everyone's slots of the table (until parked).
#[derive(Debug, Clone)]
struct Counts {
    unit: Arc<AtomicUsize>,
    wake: CloserWake,
}

impl Counts {
    fn handed(&self, n: usize) {
        self.unit.fetch_add(n, Ordering::AcqRel);
        self.wake.in_table.fetch_add(n, Ordering::AcqRel);
    }

    fn left_table(&self, n: usize) {
        if n > 0 {
            self.wake.in_table.fetch_sub(n, Ordering::AcqRel);
            self.wake.notify();
        }
    }

    fn released(&self, n: usize) {
        if n > 0 {
            self.unit.fetch_sub(n, Ordering::AcqRel);
            self.wake.notify();
        }
    }
}

/// A thread ends after this long with nothing to close; the next batch starts another.
const IDLE: Duration = Duration::from_secs(5);

/// Descriptors on their way to being closed; dropping the batch closes them and counts them
/// off. Only a closer thread drops one (or the channel, in that thread, as the thread ends).
struct Batch {
    fds: Vec<OwnedFd>,
    counts: Counts,
}

impl Drop for Batch {
    fn drop(&mut self) {
        let n = self.fds.len();
        self.fds.clear();
        self.counts.left_table(n);
        self.counts.released(n);
    }
}

impl Batch {
    /// Keeps the descriptors open for good (no thread to close them): still counted in
    /// flight, so the unit's socket stays unread rather than growing this.
    fn leak(mut self) {
        std::mem::forget(std::mem::take(&mut self.fds));
    }
}

/// A socket pair whose queue holds parked descriptors: dropping both ends is their last close.
struct Parking {
    tx: OwnedFd,
    _rx: OwnedFd,
    held: usize,
}

/// What a unit's closer and its releaser share: the pair batches park in now, and whether a
/// releaser is at work (it takes each pair in turn until none is left).
#[derive(Default)]
struct Parked {
    next: Option<Parking>,
    releasing: bool,
}

/// One unit's closer: a thread, started when there is something to close, that parks (or
/// closes) what it is sent in order and ends when idle.
#[derive(Debug)]
pub struct Closer {
    tx: Option<mpsc::Sender<Batch>>,
    counts: Counts,
}

impl Closer {
    pub fn new(wake: &CloserWake) -> Closer {
        Closer {
            tx: None,
            counts: Counts {
                unit: Arc::new(AtomicUsize::new(0)),
                wake: wake.clone(),
            },
        }
    }

    /// Hands `fds` to the thread, starting one if none runs; returns at once. When no thread
    /// can be started the descriptors stay open (and counted): that cannot block the loop.
    pub fn close(&mut self, fds: Vec<OwnedFd>) -> std::io::Result<()> {
        if fds.is_empty() {
            return Ok(());
        }
        self.counts.handed(fds.len());
        let batch = Batch {
            fds,
            counts: self.counts.clone(),
        };
        let batch = match &self.tx {
            Some(tx) => match tx.send(batch) {
                Ok(()) => return Ok(()),
                // The thread ended, idle.
                Err(mpsc::SendError(batch)) => batch,
            },
            None => batch,
        };
        self.tx = None;
        let tx = match start_thread(self.counts.clone()) {
            Ok(tx) => tx,
            Err(e) => {
                batch.leak();
                return Err(e);
            }
        };
        match tx.send(batch) {
            Ok(()) => {
                self.tx = Some(tx);
                Ok(())
            }
            Err(mpsc::SendError(batch)) => {
                batch.leak();
                Err(std::io::Error::other("the closer thread ended at once"))
            }
        }
    }

    /// Descriptors handed over whose last close has not happened yet.
    pub fn in_flight(&self) -> usize {
        self.counts.unit.load(Ordering::Acquire)
    }
}

fn start_thread(counts: Counts) -> std::io::Result<mpsc::Sender<Batch>> {
    let (tx, rx) = mpsc::channel::<Batch>();
    let parked = Arc::new(Mutex::new(Parked::default()));
    std::thread::Builder::new()
        .name("corral-closer".to_owned())
        .stack_size(STACK_SIZE)
        .spawn(move || {
            while let Ok(batch) = rx.recv_timeout(IDLE) {
                park(batch, &parked, &counts);
            }
            // Dropping `rx` here drops (closes) whatever was sent after the last receive,
            // on this thread (std's channel discards its messages when the receiver goes).
        })?;
    Ok(tx)
}

/// Parks what it can of `batch`, closes the rest, and has a releaser close the pair.
fn park(mut batch: Batch, parked: &Arc<Mutex<Parked>>, counts: &Counts) {
    let mut guard = parked.lock().unwrap_or_else(|e| e.into_inner());
    if guard.next.is_none() {
        guard.next = new_parking();
    }
    if let Some(parking) = guard.next.as_mut() {
        while !batch.fds.is_empty() {
            let n = batch.fds.len().min(SCM_MAX_FD);
            let raw: Vec<RawFd> = batch.fds[..n].iter().map(AsRawFd::as_raw_fd).collect();
            if send_rights(&parking.tx, &raw).is_err() {
                break;
            }
            // The queue holds them now: these closes are not the last, and do not wait.
            batch.fds.drain(..n);
            parking.held += n;
            counts.left_table(n);
        }
    }
    let release = !guard.releasing && guard.next.as_ref().is_some_and(|p| p.held > 0);
    if release {
        guard.releasing = true;
    }
    drop(guard);
    if release && start_releaser(parked.clone(), counts.clone()).is_err() {
        // No thread: the pair waits for the next batch's releaser, its fds counted meanwhile.
        parked.lock().unwrap_or_else(|e| e.into_inner()).releasing = false;
    }
    // What could not be parked is closed here, and may wait here.
    drop(batch);
}

fn new_parking() -> Option<Parking> {
    let (tx, rx) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
    .ok()?;
    Some(Parking {
        tx,
        _rx: rx,
        held: 0,
    })
}

fn send_rights(socket: &OwnedFd, fds: &[RawFd]) -> nix::Result<usize> {
    sendmsg::<()>(
        socket.as_raw_fd(),
        &[std::io::IoSlice::new(&[0])],
        &[ControlMessage::ScmRights(fds)],
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        None,
    )
}

/// Closes parked pairs, one after the other, until none is left.
fn start_releaser(parked: Arc<Mutex<Parked>>, counts: Counts) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("corral-releaser".to_owned())
        .stack_size(STACK_SIZE)
        .spawn(move || {
            loop {
                let parking = {
                    let mut guard = parked.lock().unwrap_or_else(|e| e.into_inner());
                    match guard.next.take() {
                        Some(p) if p.held > 0 => p,
                        other => {
                            guard.next = other;
                            guard.releasing = false;
                            return;
                        }
                    }
                };
                let held = parking.held;
                // The last close of every parked descriptor: this may wait, holding no slot.
                drop(parking);
                counts.released(held);
            }
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closer_closes_what_it_is_given_and_wakes_the_loop() {
        let wake = CloserWake::new().unwrap();
        let mut closer = Closer::new(&wake);
        let (read, write) = nix::unistd::pipe().unwrap();
        closer.close(vec![write]).unwrap();
        // EOF on the read end once the closer has closed the only write end.
        let mut byte = [0u8; 1];
        assert_eq!(nix::unistd::read(&read, &mut byte), Ok(0));
        // Each count it leaves wakes the loop.
        wait_until(&wake, "both counts to go", || {
            (closer.in_flight(), wake.in_flight()) == (0, 0)
        });
    }

    /// Waits (bounded) on the closers' wake until `done` holds.
    fn wait_until(wake: &CloserWake, what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "waiting for {what}");
            let mut fds = [nix::poll::PollFd::new(
                wake.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(1000u16));
            wake.drain();
        }
    }

    #[test]
    fn a_last_close_that_waits_holds_no_slot_of_the_table() {
        use std::io::Write;
        use std::net::{TcpListener, TcpStream};
        // A connection whose peer never reads, its buffers full, with SO_LINGER: its last
        // close waits (up to 60 s) for data that will not leave.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut stuck = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        stuck.set_nonblocking(true).unwrap();
        while stuck.write(&[0u8; 65536]).is_ok() {}
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 60,
        };
        // SAFETY: a valid socket fd and a linger struct of the size passed.
        let set = unsafe {
            libc::setsockopt(
                stuck.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0);
        let wake = CloserWake::new().unwrap();
        let mut closer = Closer::new(&wake);
        closer.close(vec![OwnedFd::from(stuck)]).unwrap();
        wait_until(&wake, "the batch to leave the table", || {
            wake.in_flight() == 0
        });
        // Parked: out of corral's table, still the unit's until its last close.
        assert_eq!(closer.in_flight(), 1, "the close did not wait");
        // The peer goes: the connection is reset and the lingering close ends.
        drop(listener);
        wait_until(&wake, "the last close", || closer.in_flight() == 0);
    }
}
