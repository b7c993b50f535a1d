//! Units' log files: the loop hands each line to a writer thread through a bounded, lossy
//! queue; the thread writes, rotates and compresses, so a slow disk never holds the loop.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, Instant};

use tracing::warn;

use crate::core::log_rotation::{self, Step};
use crate::os::log_file::{LogDir, LogFile};
use crate::proto::Stream;
use crate::unit::{Unit, UnitName, UnitSet};

/// Lines the queue holds at most; beyond, or beyond `QUEUED_BYTES`, lines are dropped and
/// counted. 4096 lines of up to 8 KiB each, but never more than 4 MiB of text at once.
const QUEUED_LINES: usize = 4096;
const QUEUED_BYTES: usize = 4 << 20;
/// A file that gets no line this long is closed (a removed unit's, a quiet one's); it is opened
/// again at its next line.
const IDLE_CLOSE: Duration = Duration::from_secs(60);
/// After a file could not be opened or rotated, its lines are dropped this long before the
/// next try (one warning per try, not per line).
const RETRY_AFTER: Duration = Duration::from_secs(10);
/// Lines are gathered and written together, at most this many bytes at once, and whenever the
/// queue is empty: one write(2) per burst rather than per line.
const FLUSH_BYTES: usize = 64 << 10;
/// How long the end of `corral run` waits for the writer to write what is queued.
const FINISH_WAIT: Duration = Duration::from_secs(2);

/// Where one unit's lines go and how that file rotates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub dir: PathBuf,
    pub name: String,
    pub max_size: u64,
    pub keep: u32,
    pub compress: bool,
}

impl Target {
    /// The unit's `[logs] file`, else `<log_dir>/<unit>.log`; `None`: no file. `None` too for
    /// a path that is not UTF-8 (unit files are TOML, so theirs always are).
    pub fn of(unit: &Unit, log_dir: Option<&Path>) -> Option<Target> {
        let path = match (&unit.logs.file, log_dir) {
            (Some(file), _) => file.clone(),
            (None, Some(dir)) => dir.join(format!("{}.log", unit.name)),
            (None, None) => return None,
        };
        Some(Target {
            dir: path.parent()?.to_owned(),
            name: path.file_name()?.to_str()?.to_owned(),
            max_size: unit.logs.max_size,
            keep: unit.logs.keep,
            compress: unit.logs.compress,
        })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }
}

/// One line on its way to a file.
struct Message {
    target: Arc<Target>,
    time: String,
    stream: Stream,
    bytes: Vec<u8>,
    /// Lines of this unit dropped just before this one: the writer notes them in the file.
    dropped_before: u64,
}

/// The loop's side: which file each unit writes to, the queue, the drop counts.
pub(super) struct LogFiles {
    log_dir: Option<PathBuf>,
    targets: HashMap<UnitName, Arc<Target>>,
    /// The unit each file is written by (the other way round from `targets`).
    owners: HashMap<PathBuf, UnitName>,
    /// Whether the last `configure` found a file named by two units: who gets it then
    /// depends on every unit naming it, so `configure_changed` does a whole `configure`.
    contested: bool,
    dropped: HashMap<UnitName, u64>,
    /// Started at the first line that has a file to go to.
    writer: Option<Writer>,
}

struct Writer {
    queue: SyncSender<Message>,
    queued_bytes: Arc<AtomicUsize>,
    done: Receiver<()>,
}

impl LogFiles {
    /// `log_dir`: `run --log-dir`; it is created (0750) if it is not there.
    pub(super) fn new(log_dir: Option<PathBuf>) -> LogFiles {
        if let Some(dir) = &log_dir {
            use std::os::unix::fs::DirBuilderExt;
            match std::fs::DirBuilder::new().mode(0o750).create(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => warn!(
                    "--log-dir {}: {e}; units' log files cannot be written there",
                    dir.display()
                ),
            }
        }
        LogFiles {
            log_dir,
            targets: HashMap::new(),
            owners: HashMap::new(),
            contested: false,
            dropped: HashMap::new(),
            writer: None,
        }
    }

    /// At start and at a reload that may move files between units: every unit's file as its
    /// definition says now. A file two units name is the first's by name.
    pub(super) fn configure<'u>(&mut self, units: impl Iterator<Item = &'u Unit>) {
        let log_dir = self.log_dir.clone();
        let mut targets = HashMap::new();
        let mut owners: HashMap<PathBuf, UnitName> = HashMap::new();
        let mut contested = false;
        for unit in units {
            if let Some(target) = Target::of(unit, log_dir.as_deref()) {
                // One writer per file: two units' rotations of one file would fight.
                if let Some(owner) = owners.get(&target.path()) {
                    warn!(
                        unit = %unit.name,
                        "log file {} is already {owner}'s; this unit gets none",
                        target.path().display()
                    );
                    contested = true;
                    continue;
                }
                owners.insert(target.path(), unit.name.clone());
                targets.insert(unit.name.clone(), self.keep_or_new(&unit.name, target));
            }
        }
        self.dropped.retain(|name, _| targets.contains_key(name));
        self.targets = targets;
        self.owners = owners;
        self.contested = contested;
    }

    /// At an applied reload whose loader named the units that may have changed (`changed`;
    /// the rest are the units of the last call): only theirs are looked at, and the outcome is
    /// `configure`'s over all of `units`. Unless a file is (or was) named by two units: then
    /// it is `configure` itself.
    pub(super) fn configure_changed(&mut self, units: &UnitSet, changed: &BTreeSet<UnitName>) {
        if self.contested {
            return self.configure(units.values().map(|u| &**u));
        }
        let log_dir = self.log_dir.clone();
        for name in changed {
            let target = units
                .get(name)
                .and_then(|u| Target::of(u, log_dir.as_deref()));
            if let Some(target) = &target
                && self.owners.get(&target.path()).is_some_and(|o| o != name)
            {
                // Another unit's file: which one gets it is the whole rule's to say.
                return self.configure(units.values().map(|u| &**u));
            }
            if let Some(old) = self.targets.get(name) {
                self.owners.remove(&old.path());
            }
            match target {
                Some(target) => {
                    self.owners.insert(target.path(), name.clone());
                    let target = self.keep_or_new(name, target);
                    self.targets.insert(name.clone(), target);
                }
                None => {
                    self.targets.remove(name);
                    self.dropped.remove(name);
                }
            }
        }
    }

    /// The same definition keeps its Arc: the writer keeps its open file.
    fn keep_or_new(&self, name: &UnitName, target: Target) -> Arc<Target> {
        match self.targets.get(name) {
            Some(old) if **old == target => Arc::clone(old),
            _ => Arc::new(target),
        }
    }

    /// Hands a line of `unit` to the writer without waiting. The count of the lines dropped
    /// before it, when this line carries that count to the file, for corral's own log.
    pub(super) fn write(
        &mut self,
        unit: &UnitName,
        time: &str,
        stream: Stream,
        bytes: &[u8],
    ) -> Option<u64> {
        let target = Arc::clone(self.targets.get(unit)?);
        let writer = match &self.writer {
            Some(writer) => writer,
            None => self.writer.insert(Writer::start()?),
        };
        let dropped = self.dropped.get(unit).copied().unwrap_or(0);
        let len = bytes.len();
        if writer.queued_bytes.load(Ordering::Relaxed) + len > QUEUED_BYTES {
            *self.dropped.entry(unit.clone()).or_default() += 1;
            return None;
        }
        let message = Message {
            target,
            time: time.to_owned(),
            stream,
            bytes: bytes.to_vec(),
            dropped_before: dropped,
        };
        writer.queued_bytes.fetch_add(len, Ordering::Relaxed);
        match writer.queue.try_send(message) {
            Ok(()) => {
                self.dropped.remove(unit);
                (dropped > 0).then_some(dropped)
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                writer.queued_bytes.fetch_sub(len, Ordering::Relaxed);
                *self.dropped.entry(unit.clone()).or_default() += 1;
                None
            }
        }
    }

    /// The unit's log file, for messages.
    pub(super) fn path_of(&self, unit: &UnitName) -> Option<PathBuf> {
        self.targets.get(unit).map(|t| t.path())
    }

    /// At the end of `corral run`: lets the writer write what is queued, for a bounded time.
    pub(super) fn finish(&mut self) {
        if let Some(writer) = self.writer.take() {
            let Writer { queue, done, .. } = writer;
            drop(queue);
            let _ = done.recv_timeout(FINISH_WAIT);
        }
    }
}

impl Writer {
    fn start() -> Option<Writer> {
        let (queue, lines) = std::sync::mpsc::sync_channel(QUEUED_LINES);
        let (done_tx, done) = std::sync::mpsc::sync_channel(1);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&queued_bytes);
        let spawned = std::thread::Builder::new()
            .name("corral-logfiles".into())
            .spawn(move || {
                write_lines(&lines, &counter);
                let _ = done_tx.send(());
            });
        match spawned {
            Ok(_) => Some(Writer {
                queue,
                queued_bytes,
                done,
            }),
            Err(e) => {
                warn!("cannot start the log file writer thread: {e}; no log file is written");
                None
            }
        }
    }
}

/// One file the writer has open, or could not open.
enum FileState {
    Open {
        dir: LogDir,
        log: LogFile,
        /// Lines counted in `log.size` but not yet written.
        pending: Vec<u8>,
        target: Arc<Target>,
        last_line: Instant,
    },
    /// Its lines are dropped until `until`.
    Broken { until: Instant },
}

/// The writer thread: until the loop's side is gone and the queue is empty.
fn write_lines(lines: &Receiver<Message>, queued_bytes: &AtomicUsize) {
    let mut files: HashMap<PathBuf, FileState> = HashMap::new();
    loop {
        let next = match lines.try_recv() {
            Ok(message) => Ok(message),
            Err(TryRecvError::Empty) => {
                flush_all(&mut files);
                lines.recv_timeout(IDLE_CLOSE)
            }
            Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
        };
        let message = match next {
            Ok(message) => message,
            Err(RecvTimeoutError::Timeout) => {
                let now = Instant::now();
                files.retain(|_, state| match state {
                    FileState::Open { last_line, .. } => {
                        now.duration_since(*last_line) < IDLE_CLOSE
                    }
                    FileState::Broken { until } => *until > now,
                });
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => {
                flush_all(&mut files);
                return;
            }
        };
        queued_bytes.fetch_sub(message.bytes.len(), Ordering::Relaxed);
        let path = message.target.path();
        let now = Instant::now();
        let state = files
            .entry(path.clone())
            .or_insert(FileState::Broken { until: now });
        if let Err(e) = write_one(state, &message, now) {
            broken(state, &path, &e, now);
        }
    }
}

fn broken(state: &mut FileState, path: &Path, e: &std::io::Error, now: Instant) {
    warn!(file = %path.display(), "log file: {e}; its lines are dropped for {}s", RETRY_AFTER.as_secs());
    *state = FileState::Broken {
        until: now + RETRY_AFTER,
    };
}

/// Writes every file's gathered lines: the queue is empty, so the writer has time.
fn flush_all(files: &mut HashMap<PathBuf, FileState>) {
    for (path, state) in files.iter_mut() {
        if let FileState::Open { log, pending, .. } = state
            && let Err(e) = flush(log, pending)
        {
            broken(state, path, &e, Instant::now());
        }
    }
}

fn flush(log: &mut LogFile, pending: &mut Vec<u8>) -> std::io::Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let result = log.file.write_all(pending);
    pending.clear();
    result
}

/// Writes one line (after the note of the lines dropped before it), opening and rotating the
/// file as needed.
fn write_one(state: &mut FileState, message: &Message, now: Instant) -> std::io::Result<()> {
    let target = &message.target;
    let reopen = match state {
        FileState::Broken { until } => {
            if *until > now {
                return Ok(());
            }
            true
        }
        // The unit's [logs] changed: its new settings, reopened.
        FileState::Open { target: open, .. } => !Arc::ptr_eq(open, target) && **open != **target,
    };
    if reopen {
        if let FileState::Open { log, pending, .. } = state {
            flush(log, pending)?;
        }
        let dir = LogDir::open(&target.dir).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("opening directory {}: {e}", target.dir.display()),
            )
        })?;
        let log = dir.open_append(&target.name)?;
        *state = FileState::Open {
            dir,
            log,
            pending: Vec::new(),
            target: Arc::clone(target),
            last_line: now,
        };
    }
    let FileState::Open {
        dir,
        log,
        pending,
        last_line,
        ..
    } = state
    else {
        return Ok(());
    };
    *last_line = now;
    if message.dropped_before > 0 {
        let note = format!(
            "{} corral {} lines dropped: the log file writer fell behind\n",
            message.time, message.dropped_before
        );
        append(dir, log, pending, target, note.as_bytes())?;
    }
    let stream = match message.stream {
        Stream::Stdout => "out",
        Stream::Stderr => "err",
    };
    let mut line = Vec::with_capacity(message.time.len() + message.bytes.len() + 6);
    line.extend_from_slice(message.time.as_bytes());
    line.push(b' ');
    line.extend_from_slice(stream.as_bytes());
    line.push(b' ');
    line.extend_from_slice(&message.bytes);
    line.push(b'\n');
    append(dir, log, pending, target, &line)
}

/// Appends `line` (gathered, written by `flush`), rotating first if it would take the file
/// past `max-size`.
fn append(
    dir: &LogDir,
    log: &mut LogFile,
    pending: &mut Vec<u8>,
    target: &Target,
    line: &[u8],
) -> std::io::Result<()> {
    if log_rotation::must_rotate(log.size, line.len() as u64, target.max_size) {
        flush(log, pending)?;
        rotate(dir, log, target)?;
    }
    pending.extend_from_slice(line);
    log.size += line.len() as u64;
    if pending.len() >= FLUSH_BYTES {
        flush(log, pending)?;
    }
    Ok(())
}

/// Renames the file away within its directory (docs/units.md, "Log files"), then opens a new
/// one in its place; `log` is the new file afterwards.
fn rotate(dir: &LogDir, log: &mut LogFile, target: &Target) -> std::io::Result<()> {
    let rotating = format!("rotating {}", target.path().display());
    let what = |e: std::io::Error| std::io::Error::new(e.kind(), format!("{rotating}: {e}"));
    for step in log_rotation::steps(&target.name, target.keep, target.compress) {
        match step {
            Step::Remove(name) => dir.remove(&name).map_err(what)?,
            Step::Rename { from, to } => dir.rename(&from, &to).map_err(what)?,
            Step::Compress { from, to } => dir.compress(&log.file, &from, &to).map_err(what)?,
        }
    }
    *log = dir.open_append(&target.name).map_err(what)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `LogFiles` whose queue nobody drains but the test, holding `capacity` lines.
    fn stalled(capacity: usize) -> (LogFiles, Receiver<Message>, UnitName) {
        let (queue, lines) = std::sync::mpsc::sync_channel(capacity);
        let (_done_tx, done) = std::sync::mpsc::sync_channel(1);
        let unit = UnitName::new("u").unwrap();
        let mut files = LogFiles::new(None);
        let target = Target {
            dir: PathBuf::from("/nonexistent"),
            name: "u.log".into(),
            max_size: 4096,
            keep: 1,
            compress: false,
        };
        files.targets.insert(unit.clone(), Arc::new(target));
        files.writer = Some(Writer {
            queue,
            queued_bytes: Arc::new(AtomicUsize::new(0)),
            done,
        });
        (files, lines, unit)
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_the_next_line_through_carries_the_count() {
        let (mut files, lines, unit) = stalled(2);
        let write = |files: &mut LogFiles, text: &str| {
            files.write(
                &unit,
                "2026-12-03T10:00:00.000000Z",
                Stream::Stdout,
                text.as_bytes(),
            )
        };
        assert_eq!(write(&mut files, "a"), None);
        assert_eq!(write(&mut files, "b"), None);
        // Full: dropped, counted, nothing reported yet.
        assert_eq!(write(&mut files, "c"), None);
        assert_eq!(write(&mut files, "d"), None);
        let first = lines.try_recv().unwrap();
        assert_eq!(
            (first.bytes.as_slice(), first.dropped_before),
            (&b"a"[..], 0)
        );
        // Room again: this line gets in and carries the two before it.
        assert_eq!(write(&mut files, "e"), Some(2));
        assert_eq!(write(&mut files, "f"), None, "full again, counted afresh");
        let rest: Vec<(Vec<u8>, u64)> = lines
            .try_iter()
            .map(|m| (m.bytes, m.dropped_before))
            .collect();
        assert_eq!(rest, vec![(b"b".to_vec(), 0), (b"e".to_vec(), 2)]);
        assert_eq!(write(&mut files, "g"), Some(1));
    }

    #[test]
    fn the_queue_is_bounded_by_bytes_too() {
        let (mut files, lines, unit) = stalled(QUEUED_LINES);
        let big = vec![b'x'; 8 * 1024];
        let mut queued = 0;
        for _ in 0..QUEUED_LINES {
            files.write(&unit, "t", Stream::Stderr, &big);
        }
        while lines.try_recv().is_ok() {
            queued += 1;
        }
        assert_eq!(queued, QUEUED_BYTES / big.len(), "no more than 4 MiB waits");
        assert_eq!(
            files.dropped.get(&unit).copied(),
            Some((QUEUED_LINES - queued) as u64)
        );
    }

    #[test]
    fn a_file_two_units_name_is_the_first_ones() {
        let mut a = crate::core::fixtures::service("a");
        let mut b = crate::core::fixtures::service("b");
        a.logs.file = Some(PathBuf::from("/var/log/shared.log"));
        b.logs.file = a.logs.file.clone();
        let mut files = LogFiles::new(None);
        files.configure([&a, &b].into_iter());
        assert_eq!(files.path_of(&a.name), a.logs.file);
        assert_eq!(files.path_of(&b.name), None);
    }

    /// `configure_changed` against `configure` over random reloads of units a..f, each with
    /// no file, its own, the log dir's, or one of shared files: the same target for every
    /// unit, the same owners, the same drop counts kept.
    #[test]
    fn configure_changed_gives_what_configure_gives() {
        use crate::core::fixtures::service;
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut roll = |below: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % below
        };
        let (mut contested, mut partial) = (0, 0);
        for _ in 0..300 {
            let log_dir = (roll(2) == 0).then(|| PathBuf::from("/var/log/corral"));
            let mut full = LogFiles::new(None);
            full.log_dir = log_dir.clone();
            let mut part = LogFiles::new(None);
            part.log_dir = log_dir;
            let mut held = UnitSet::new();
            for _ in 0..8 {
                let mut next = UnitSet::new();
                let mut changed = BTreeSet::new();
                for n in ["a", "b", "c", "d", "e", "f"] {
                    let name = crate::core::fixtures::name(n);
                    match (held.get(&name), roll(4)) {
                        (Some(u), 0 | 1) => {
                            next.insert(name, Arc::clone(u));
                            continue;
                        }
                        (_, 2) => {}
                        _ => {
                            let mut u = service(n);
                            u.logs.file = match roll(5) {
                                0 => None,
                                1 => Some(PathBuf::from(format!("/srv/{n}.log"))),
                                2 => Some(PathBuf::from("/srv/shared.log")),
                                3 => Some(PathBuf::from("/var/log/corral/a.log")),
                                _ => Some(PathBuf::from(format!("/srv/{}.log", roll(3)))),
                            };
                            u.logs.keep = roll(2) as u32;
                            next.insert(name.clone(), Arc::new(u));
                        }
                    }
                    changed.insert(name);
                }
                // Lines dropped so far, as `write` counts them: for units with a file.
                for files in [&mut full, &mut part] {
                    let with_file: Vec<UnitName> = files.targets.keys().cloned().collect();
                    files.dropped.extend(with_file.into_iter().map(|n| (n, 1)));
                }
                contested += usize::from(part.contested);
                full.configure(next.values().map(|u| &**u));
                part.configure_changed(&next, &changed);
                partial += usize::from(!part.contested);
                let sorted = |m: &HashMap<UnitName, Arc<Target>>| {
                    let mut v: Vec<(UnitName, Target)> =
                        m.iter().map(|(n, t)| (n.clone(), (**t).clone())).collect();
                    v.sort_by(|a, b| a.0.cmp(&b.0));
                    v
                };
                assert_eq!(sorted(&full.targets), sorted(&part.targets));
                let mut fd: Vec<_> = full.dropped.keys().collect();
                let mut pd: Vec<_> = part.dropped.keys().collect();
                fd.sort();
                pd.sort();
                assert_eq!(fd, pd);
                assert_eq!(full.owners, part.owners);
                held = next;
            }
        }
        assert!(contested > 100 && partial > 100, "{contested} {partial}");
    }

    #[test]
    fn a_units_file_is_its_own_else_the_log_dirs() {
        let mut unit = crate::core::fixtures::service("web");
        assert_eq!(Target::of(&unit, None), None);
        let dir = Path::new("/var/log/corral");
        assert_eq!(
            Target::of(&unit, Some(dir)).map(|t| t.path()),
            Some(PathBuf::from("/var/log/corral/web.log"))
        );
        unit.logs.file = Some(PathBuf::from("/srv/web/out.log"));
        let target = Target::of(&unit, Some(dir)).unwrap();
        assert_eq!(
            (target.dir.as_path(), target.name.as_str()),
            (Path::new("/srv/web"), "out.log")
        );
    }
}
