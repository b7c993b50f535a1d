//! corral's own log: text or JSON on stderr, and journald too when it is there.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";

/// Installs the global subscriber; `CORRAL_LOG` sets the filter (default `info`).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("CORRAL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = std::path::Path::new(JOURNALD_SOCKET)
        .exists()
        .then(|| tracing_journald::layer().ok())
        .flatten()
        .map(|layer| layer.with_syslog_identifier("corral".to_owned()));
    let registry = tracing_subscriber::registry().with(filter).with(journald);
    let stderr = std::io::stderr;
    // A second init (tests embedding the daemon) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().with_writer(stderr))
            .try_init(),
    };
}
