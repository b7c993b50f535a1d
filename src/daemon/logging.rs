//! corral's own log: text or JSON on stderr, and journald too when it is there.

use std::ffi::OsStr;
use std::fmt;

use tracing_subscriber::field::RecordFields;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::{DefaultFields, Format, Writer};
use tracing_subscriber::fmt::{FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `--log-color`: whether the text log on stderr is coloured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogColor {
    /// Only when stderr is a terminal and `NO_COLOR` is unset or empty.
    Auto,
    Always,
    Never,
}

/// Whether the text log gets ANSI colour. Most of corral's readers are not people: a file, a
/// pipe, `docker logs`, journald's stdout capture. So `auto` colours a terminal only, and
/// `NO_COLOR` set to anything but the empty string turns it off (https://no-color.org); an
/// explicit `always` or `never` wins over both, as no-color.org asks of command-line flags.
pub fn colors(choice: LogColor, stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    match choice {
        LogColor::Always => true,
        LogColor::Never => false,
        LogColor::Auto => stderr_is_terminal && no_color.is_none_or(OsStr::is_empty),
    }
}

/// The fields of a text line as plain `key=value`, coloured line or not: the level and the
/// timestamp may be coloured, but no escape ever falls between a key and its value, so a grep
/// for `uid=0` finds the audit line of a request. The message's terminal controls (a unit's
/// output line is a message) are escaped as `\x1b` by the formatter's sanitizing, which a
/// fresh writer keeps on.
struct PlainFields(DefaultFields);

impl<'writer> FormatFields<'writer> for PlainFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        // A Writer made afresh carries no colour, whatever the line's writer does.
        self.0.format_fields(Writer::new(&mut writer), fields)
    }
}

/// Lines corral's log may hold while its stderr does not take them; beyond, lines are dropped.
/// The queue is allocated and touched up front (32 bytes a slot): 64K lines cost 2 MiB of RSS
/// at rest, 4K cost 128 KiB and still cover any burst the helper thread drains in time.
const QUEUED_LINES: usize = 4096;

/// Installs the global subscriber; `CORRAL_LOG` sets the filter (default `info`); `color`
/// (see `colors`) applies to the text format only, JSON is never coloured. Keep the returned
/// guard alive until exit: dropping it flushes what is queued.
///
/// stderr is written by a helper thread through a bounded, lossy queue: a reader that stalls
/// (a full pipe, `| less`) must never stop the event loop, and with it reaping and every unit.
pub fn init(format: LogFormat, color: bool) -> tracing_appender::non_blocking::WorkerGuard {
    // `info`, `debug`, `corral::daemon=debug,info`: levels per target, without env-filter's
    // span and field directives, whose regex engine was 6 % of the binary's text (bench/analysis.md).
    let filter = std::env::var("CORRAL_LOG")
        .ok()
        .and_then(|spec| spec.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
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
        LogFormat::Text => registry.with(text_layer(color, stderr)).try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_ansi(false)
                    .with_writer(stderr),
            )
            .try_init(),
    };
    guard
}

/// The text format: `TIMESTAMP LEVEL TARGET: MESSAGE key=value ...`, coloured or not.
fn text_layer<S, W>(
    color: bool,
    writer: W,
) -> tracing_subscriber::fmt::Layer<S, PlainFields, Format, W>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    W: for<'writer> MakeWriter<'writer> + 'static,
{
    tracing_subscriber::fmt::layer()
        .with_ansi(color)
        .fmt_fields(PlainFields(DefaultFields::new()))
        .with_writer(writer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn color_only_for_a_terminal_without_no_color_unless_told() {
        use LogColor::*;
        let set = Some(OsStr::new("1"));
        let empty = Some(OsStr::new(""));
        #[rustfmt::skip]
        let rows = [
            // choice, terminal, NO_COLOR, coloured
            (Auto, true, None, true),
            (Auto, true, empty, true),
            (Auto, true, set, false),
            (Auto, false, None, false),
            (Auto, false, empty, false),
            (Always, false, set, true),
            (Always, true, None, true),
            (Never, true, None, false),
            (Never, false, None, false),
        ];
        for (choice, terminal, no_color, want) in rows {
            assert_eq!(
                colors(choice, terminal, no_color),
                want,
                "{choice:?}, terminal {terminal}, NO_COLOR {no_color:?}"
            );
        }
    }

    /// A text line as `init` would write it, with colour on.
    fn colored_line(event: impl FnOnce()) -> String {
        let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&buffer);
        let layer = text_layer(true, move || SharedBuf(std::sync::Arc::clone(&sink)));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, event);
        let bytes = buffer.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    struct SharedBuf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for SharedBuf {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut b) = self.0.lock() {
                b.extend_from_slice(bytes);
            }
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_colored_text_line_keeps_key_value_pairs_whole_and_escapes_a_units_escapes() {
        let line = colored_line(|| {
            tracing::info!(uid = 0, pid = 42, verb = ?"Start", "control request");
            tracing::info!(target: "unit", unit = %"web", "{}", "\x1b[31mred");
        });
        assert!(line.contains('\x1b'), "the level is coloured: {line:?}");
        assert!(line.contains("uid=0 pid=42 verb=\"Start\""), "{line:?}");
        assert!(line.contains("unit=web"), "{line:?}");
        // The unit's ESC arrives as the four characters `\x1b`, not as an escape.
        assert!(line.contains("\\x1b[31mred"), "{line:?}");
        assert!(!line.contains("\x1b[31mred"), "{line:?}");
    }
}
