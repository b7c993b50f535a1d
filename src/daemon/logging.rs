//! corral's own log: text or JSON on stderr, and journald too when it is there.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Lines corral's log may hold while its stderr does not take them; beyond, lines are dropped.
/// The queue is allocated and touched up front (32 bytes a slot): 64K lines cost 2 MiB of RSS
/// at rest, 4K cost 128 KiB and still cover any burst the helper thread drains in time.
const QUEUED_LINES: usize = 4096;

/// Installs the global subscriber; `CORRAL_LOG` sets the filter (default `info`). Keep the
/// returned guard alive until exit: dropping it flushes what is queued.
///
/// stderr is written by a helper thread through a bounded, lossy queue: a reader that stalls
/// (a full pipe, `| less`) must never stop the event loop, and with it reaping and every unit.
pub fn init(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = EnvFilter::try_from_env("CORRAL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Non-blocking, lossy and counted (journald.rs): a stalled journald never stalls the loop.
    let journald =
        super::journald::Journald::connect(std::path::Path::new(super::journald::JOURNALD_SOCKET))
            .ok();
    let registry = tracing_subscriber::registry().with(filter).with(journald);
    let (stderr, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("corral-log")
        .finish(std::io::stderr());
    // A second init (tests embedding the daemon) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().with_writer(stderr))
            .try_init(),
    };
    guard
}
