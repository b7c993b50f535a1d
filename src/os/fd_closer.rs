//! Closing descriptors that came from outside corral on a thread of their own, never on the loop.
//!
//! A close can block for as long as its sender likes: the last close of a TCP socket with
//! SO_LINGER waits for unsent data (inet_release, up to the linger time), a FUSE file's flush
//! waits for its server, a tty drains. Each unit gets its own closer, so a unit that blocks
//! its closer holds up only its own descriptors; the counts in flight (the unit's, everyone's)
//! are visible to the loop, which stops reading a socket while they are high.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::eventfd::{EfdFlags, EventFd};

/// A closer thread needs little: it drops descriptors and writes 8 bytes to an eventfd.
const STACK_SIZE: usize = 64 * 1024;

/// What all closers share: the loop's wake-up, readable once a closer has finished a batch,
/// and the count of descriptors in flight in all of them.
#[derive(Debug, Clone)]
pub struct CloserWake {
    fd: Arc<EventFd>,
    in_flight: Arc<AtomicUsize>,
}

impl CloserWake {
    pub fn new() -> std::io::Result<CloserWake> {
        let fd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        Ok(CloserWake {
            fd: Arc::new(fd),
            in_flight: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Empties the counter, so the next wake is a new one.
    pub fn drain(&self) {
        let _ = self.fd.read();
    }

    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&*self.fd)
    }

    /// Descriptors handed to any closer and not closed yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// A thread ends after this long with nothing to close; the next batch starts another.
const IDLE: Duration = Duration::from_secs(5);

/// Descriptors on their way to being closed; dropping the batch closes them and counts them
/// off. Only a closer thread drops one (or the channel, in that thread, as the thread ends).
struct Batch {
    fds: Vec<OwnedFd>,
    unit_in_flight: Arc<AtomicUsize>,
    wake: CloserWake,
}

impl Drop for Batch {
    fn drop(&mut self) {
        let n = self.fds.len();
        self.fds.clear();
        if n > 0 {
            self.unit_in_flight.fetch_sub(n, Ordering::AcqRel);
            self.wake.in_flight.fetch_sub(n, Ordering::AcqRel);
            // Full counter (EAGAIN): the loop has a wake pending anyway.
            let _ = self.wake.fd.write(1);
        }
    }
}

impl Batch {
    /// Keeps the descriptors open for good (no thread to close them): still counted in
    /// flight, so the unit's socket stays unread rather than growing this.
    fn leak(mut self) {
        std::mem::forget(std::mem::take(&mut self.fds));
    }
}

/// One unit's closer: a thread, started when there is something to close, that closes what
/// it is sent in order and ends when idle.
#[derive(Debug)]
pub struct Closer {
    tx: Option<mpsc::Sender<Batch>>,
    in_flight: Arc<AtomicUsize>,
    wake: CloserWake,
}

impl Closer {
    pub fn new(wake: &CloserWake) -> Closer {
        Closer {
            tx: None,
            in_flight: Arc::new(AtomicUsize::new(0)),
            wake: wake.clone(),
        }
    }

    /// Hands `fds` to the thread, starting one if none runs; returns at once. When no thread
    /// can be started the descriptors stay open (and counted): that cannot block the loop.
    pub fn close(&mut self, fds: Vec<OwnedFd>) -> std::io::Result<()> {
        if fds.is_empty() {
            return Ok(());
        }
        let n = fds.len();
        self.in_flight.fetch_add(n, Ordering::AcqRel);
        self.wake.in_flight.fetch_add(n, Ordering::AcqRel);
        let batch = Batch {
            fds,
            unit_in_flight: Arc::clone(&self.in_flight),
            wake: self.wake.clone(),
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
        let tx = match start_thread() {
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

    /// Descriptors handed over and not yet closed.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

fn start_thread() -> std::io::Result<mpsc::Sender<Batch>> {
    let (tx, rx) = mpsc::channel::<Batch>();
    std::thread::Builder::new()
        .name("corral-closer".to_owned())
        .stack_size(STACK_SIZE)
        .spawn(move || {
            while let Ok(batch) = rx.recv_timeout(IDLE) {
                drop(batch);
            }
            // Dropping `rx` here drops (closes) whatever was sent after the last receive,
            // on this thread (std's channel discards its messages when the receiver goes).
        })?;
    Ok(tx)
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
        let mut fds = [nix::poll::PollFd::new(
            wake.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        assert_eq!(
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(10_000u16)),
            Ok(1)
        );
        assert_eq!((closer.in_flight(), wake.in_flight()), (0, 0));
        wake.drain();
    }
}
