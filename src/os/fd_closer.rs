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

/// One unit's closer: a thread that closes what it is sent, in order.
#[derive(Debug)]
pub struct Closer {
    tx: mpsc::Sender<Vec<OwnedFd>>,
    in_flight: Arc<AtomicUsize>,
    all_in_flight: Arc<AtomicUsize>,
}

impl Closer {
    /// Starts the thread; it ends once the closer is dropped and its queue is empty.
    pub fn spawn(wake: &CloserWake) -> std::io::Result<Closer> {
        let (tx, rx) = mpsc::channel::<Vec<OwnedFd>>();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&in_flight);
        let all_in_flight = Arc::clone(&wake.in_flight);
        let wake = wake.clone();
        std::thread::Builder::new()
            .name("corral-closer".to_owned())
            .stack_size(STACK_SIZE)
            .spawn(move || {
                for batch in rx {
                    let n = batch.len();
                    drop(batch);
                    count.fetch_sub(n, Ordering::AcqRel);
                    wake.in_flight.fetch_sub(n, Ordering::AcqRel);
                    // Full counter (EAGAIN): the loop has a wake pending anyway.
                    let _ = wake.fd.write(1);
                }
            })?;
        Ok(Closer {
            tx,
            in_flight,
            all_in_flight,
        })
    }

    /// Hands `fds` to the thread; returns at once.
    pub fn close(&self, fds: Vec<OwnedFd>) {
        if fds.is_empty() {
            return;
        }
        let n = fds.len();
        self.in_flight.fetch_add(n, Ordering::AcqRel);
        self.all_in_flight.fetch_add(n, Ordering::AcqRel);
        if let Err(mpsc::SendError(fds)) = self.tx.send(fds) {
            // The thread is gone (it cannot panic: it only drops and writes). Keeping the
            // descriptors open is the one choice that cannot block the loop.
            std::mem::forget(fds);
        }
    }

    /// Descriptors handed over and not yet closed.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closer_closes_what_it_is_given_and_wakes_the_loop() {
        let wake = CloserWake::new().unwrap();
        let closer = Closer::spawn(&wake).unwrap();
        let (read, write) = nix::unistd::pipe().unwrap();
        closer.close(vec![write]);
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
