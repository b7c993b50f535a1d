//! What the last read of a units directory found: each file's identity and each unit's parse,
//! so that a reload re-reads only the files whose identity changed and re-parses only the
//! units made of a file that did (docs/operations.md, "Reload").
//!
//! A file is known by its generation: a number that changes when its content does (a new
//! path is a new generation too). A unit is made of its files' generations (its own, its
//! template's, the drop-ins of each); the same generations give the same parse, which is a
//! pure function of the files' paths and texts and of the answers of the user database. Those
//! answers are asked again at every read (they are the one input that is not in a file:
//! `useradd` between two reloads), and a unit whose answers changed is parsed again.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::hash::BuildHasherDefault;
use std::hash::{BuildHasher, Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::layers::{Layer, UnitLayers};
use super::model::UnitName;
use super::parse::{Parsed, parse_layers};
use super::users::{UserDb, UserEntry};

/// What the kernel says a file is: when any of it changes, the file is read again. `ctime`
/// is the one a writer cannot set (`touch -d`, `cp -p`, `rsync -t` and `tar` set `mtime`
/// back; every change of content or metadata sets `ctime` to the current time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileIdentity {
    /// What the directory scan found (os/dir_scan.rs).
    pub(crate) fn scanned(stat: &crate::os::dir_scan::Stat) -> FileIdentity {
        FileIdentity {
            dev: stat.dev,
            ino: stat.ino,
            size: stat.size,
            mtime: stat.mtime,
            ctime: stat.ctime,
        }
    }

    pub(crate) fn of(meta: &std::fs::Metadata) -> FileIdentity {
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether `self` and `other` are the same inode (a symlink to a template is the template).
    pub(crate) fn same_inode(&self, other: &FileIdentity) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }

    /// Whether a change after `scan` is sure to show in the identity: the file's last change
    /// (`ctime`) is more than [`SETTLE_MARGIN`] before it. A change in the same tick of the
    /// kernel's timestamp clock as the read, keeping size and inode, leaves all five fields
    /// as they were; such a file is read again at the next reload (and compared by content)
    /// until one finds it settled.
    fn settled_at(&self, scan: SystemTime) -> bool {
        let Ok(scan) = scan.duration_since(UNIX_EPOCH) else {
            return false;
        };
        let ctime = i128::from(self.ctime.0) * 1_000_000_000 + i128::from(self.ctime.1);
        let scan = scan.as_nanos() as i128;
        let margin = SETTLE_MARGIN.as_nanos() as i128;
        ctime + margin < scan
    }
}

/// How long before a scan a file's last change must be for its identity to be trusted:
/// above the coarsest timestamps of a local Linux file system (whole seconds: ext4 with
/// 128-byte inodes, ext3) plus the tick of the kernel's coarse clock that stamps them.
pub(crate) const SETTLE_MARGIN: Duration = Duration::from_secs(2);

/// One file as last read.
#[derive(Debug, Clone)]
struct CachedFile {
    identity: FileIdentity,
    /// Changes with the content.
    generation: u64,
    /// Of the content: a file read again (its identity changed, or it had not settled) with
    /// the same length and hash keeps its generation, so `touch` re-parses nothing.
    len: usize,
    hash: u64,
    /// Whether its identity can be trusted: see [`FileIdentity::settled_at`].
    settled: bool,
}

/// One unit (or template) as last parsed.
#[derive(Debug)]
struct CachedUnit {
    key: UnitKey,
    parsed: Rc<Parsed>,
    /// What the parse asked the user database, and the answers.
    lookups: Box<[(Lookup, Answer)]>,
}

/// What a parse depends on besides the unit's name (which gives its main file and its
/// specifiers): its files, in merge order, and how many of them are its template's.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UnitKey {
    generations: Box<[u64]>,
    template_layers: usize,
}

/// The cache's maps, keyed by file paths and unit names: a reload looks up each of 10,000
/// files and units a few times, and SipHash (the std default, built against keys chosen to
/// collide) was a tenth of its instructions. These keys are names in the units directory,
/// whose writers define the commands corral runs already; a collision costs time, not
/// correctness.
type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<WordHasher>>;

fn fast_map<K, V>(capacity: usize) -> FastMap<K, V> {
    FastMap::with_capacity_and_hasher(capacity, BuildHasherDefault::default())
}

/// A multiplicative hash eight bytes at a time (the scheme of rustc's FxHasher), finished
/// with MurmurHash3's mix.
#[derive(Default)]
struct WordHasher(u64);

impl WordHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        // The products mix each word into the high bits only, and hashbrown picks the bucket
        // with the low bits: MurmurHash3's finaliser (fmix64) spreads every bit over all.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// What the last read of a units directory found. Kept between reloads by the daemon; a
/// fresh one reads everything (`check`).
#[derive(Debug, Default)]
pub struct LoadCache {
    dir: PathBuf,
    files: FastMap<OsString, CachedFile>,
    units: FastMap<UnitName, CachedUnit>,
    templates: FastMap<UnitName, CachedUnit>,
    next_generation: u64,
    stats: LoadStats,
    /// The units whose parse was not the last read's (new, parsed again, or gone), over
    /// every read since the last [`LoadCache::take_changed`].
    changed: BTreeSet<UnitName>,
    /// The keys of the content hash, drawn when the cache is made (`content_hash`).
    content_keys: std::hash::RandomState,
}

/// What the last read did, for tests and the reload's debug log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadStats {
    /// Files read (their identity had changed, was new, or had not settled).
    pub files_read: usize,
    /// Units and templates parsed (the rest were the last read's).
    pub parsed: usize,
}

impl LoadCache {
    pub fn new() -> LoadCache {
        LoadCache::default()
    }

    /// What the last read did.
    pub fn stats(&self) -> LoadStats {
        self.stats
    }

    /// How many files the last read kept.
    pub(crate) fn file_count(&self) -> usize {
        self.files.len()
    }

    /// The units that may differ from those of the reads before the last `take_changed`
    /// (or before the first read): the rest are **kept**, each the very `Unit` (the same
    /// `Arc`) those reads gave, or absent from them all. A reused parse gives the same `Unit`,
    /// so a unit not named here is the one a supervisor that applied the reads up to the last
    /// take holds; the daemon takes them when it applies a read (core/supervisor.rs,
    /// `reload_changed`), and a read it does not apply (refused) leaves them for the next.
    pub fn take_changed(&mut self) -> BTreeSet<UnitName> {
        std::mem::take(&mut self.changed)
    }
}

/// Whether a unit is checked as a template (with a placeholder instance) or is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Unit,
    Template,
}

/// One read of the directory: what the cache had is taken out of it, what this read uses goes
/// back at the end, so that files and units gone from the directory leave the cache.
pub(crate) struct Pass<'c> {
    cache: &'c mut LoadCache,
    scan: SystemTime,
    old_files: FastMap<OsString, CachedFile>,
    old_units: FastMap<UnitName, CachedUnit>,
    old_templates: FastMap<UnitName, CachedUnit>,
    /// The texts read in this pass, for the units parsed.
    texts: HashMap<OsString, Rc<str>>,
    users: MemoUserDb<'c>,
    stats: LoadStats,
}

impl<'c> Pass<'c> {
    /// A read of `dir` whose scan began at `scan` (before the directory was listed). A cache
    /// of another directory is emptied.
    pub(crate) fn begin(
        cache: &'c mut LoadCache,
        dir: &Path,
        scan: SystemTime,
        users: &'c dyn UserDb,
    ) -> Pass<'c> {
        if cache.dir != dir {
            let gone: Vec<UnitName> = cache.units.keys().cloned().collect();
            cache.changed.extend(gone);
            cache.files.clear();
            cache.units.clear();
            cache.templates.clear();
            cache.dir = dir.to_owned();
        }
        // Sized for a read like the last one: 10,000 inserts into an empty map rehash it a
        // dozen times on the way.
        let (files, units) = (cache.files.len(), cache.units.len());
        let old_files = std::mem::replace(&mut cache.files, fast_map(files));
        let old_units = std::mem::replace(&mut cache.units, fast_map(units));
        let old_templates = std::mem::take(&mut cache.templates);
        Pass {
            cache,
            scan,
            old_files,
            old_units,
            old_templates,
            texts: HashMap::new(),
            users: MemoUserDb::new(users),
            stats: LoadStats::default(),
        }
    }

    /// The generation of the file at `path`, which the directory scan found as `identity`:
    /// the last read's if the identity is the same and had settled, else the file is read
    /// (and keeps its generation if its content is the same).
    pub(crate) fn generation(
        &mut self,
        path: &Path,
        identity: &FileIdentity,
    ) -> Result<u64, String> {
        // The usual case first: the last read's file, trusted (one lookup, one insert).
        if let Some((key, old)) = self.old_files.remove_entry(path.as_os_str()) {
            if old.settled && old.identity == *identity {
                let generation = old.generation;
                self.cache.files.insert(key, old);
                return Ok(generation);
            }
            // Read again below; `read` compares the content with this one's.
            self.old_files.insert(key, old);
        } else if let Some(file) = self.cache.files.get(path.as_os_str()) {
            return Ok(file.generation);
        }
        self.read(path).map(|(generation, _)| generation)
    }

    /// Reads the file at `path` now: its generation (the one it had if the content is the
    /// same as at the last read of it) and its text.
    fn read(&mut self, path: &Path) -> Result<(u64, Rc<str>), String> {
        let (text, identity) = read_unit_file(path)?;
        self.stats.files_read += 1;
        let hash = content_hash(&self.cache.content_keys, &text);
        let before = self
            .cache
            .files
            .remove(path.as_os_str())
            .or_else(|| self.old_files.remove(path.as_os_str()));
        let generation = match before {
            Some(b) if b.len == text.len() && b.hash == hash => b.generation,
            _ => {
                self.cache.next_generation += 1;
                self.cache.next_generation
            }
        };
        self.cache.files.insert(
            path.as_os_str().to_owned(),
            CachedFile {
                identity,
                generation,
                len: text.len(),
                hash,
                settled: identity.settled_at(self.scan),
            },
        );
        let text: Rc<str> = Rc::from(text);
        self.texts
            .insert(path.as_os_str().to_owned(), Rc::clone(&text));
        Ok((generation, text))
    }

    /// The text of a file whose generation this pass has: read now if the generation was the
    /// last read's.
    fn text(&mut self, path: &Path) -> Result<Rc<str>, String> {
        match self.texts.get(path.as_os_str()) {
            Some(text) => Ok(Rc::clone(text)),
            None => self.read(path).map(|(_, text)| text),
        }
    }

    /// Whether `key` is what [`Pass::key`] gives for `layers`, without building it.
    fn same_key(&self, key: &UnitKey, layers: &UnitLayers) -> bool {
        key.template_layers == layers.template_layers
            && key.generations.len() == layers.layers.len()
            && key.generations.iter().zip(&layers.layers).all(|(g, l)| {
                self.cache
                    .files
                    .get(l.file.as_os_str())
                    .map_or(0, |f| f.generation)
                    == *g
            })
    }

    /// The generation this pass gave each of `layers`' files (0 for one it has none of).
    fn key(&self, layers: &UnitLayers) -> UnitKey {
        UnitKey {
            generations: layers
                .layers
                .iter()
                .map(|l| {
                    self.cache
                        .files
                        .get(l.file.as_os_str())
                        .map_or(0, |f| f.generation)
                })
                .collect(),
            template_layers: layers.template_layers,
        }
    }

    /// `name` parsed from `layers`, a plan whose files this pass gave a generation (their
    /// texts not read yet): the last read's parse when the generations and the user
    /// database's answers are the same, else a new one. `Err` is a file that could not be read
    /// now (it was a moment ago): the path and why.
    pub(crate) fn parse(
        &mut self,
        name: &UnitName,
        role: Role,
        layers: &UnitLayers,
    ) -> Result<Rc<Parsed>, (PathBuf, String)> {
        let old = match role {
            Role::Unit => self.old_units.remove(name),
            Role::Template => self.old_templates.remove(name),
        };
        if let Some(old) = old
            && self.same_key(&old.key, layers)
            && old
                .lookups
                .iter()
                .all(|(lookup, answer)| self.users.ask(lookup) == *answer)
        {
            let parsed = Rc::clone(&old.parsed);
            self.keep(name, role, old);
            return Ok(parsed);
        }
        if role == Role::Unit {
            self.cache.changed.insert(name.clone());
        }
        // Read what this pass did not: the files whose generation was the last read's. A
        // file that changed since the scan gets a new generation here.
        let filled = self.filled(layers)?;
        let recorder = RecordingUserDb {
            memo: &self.users,
            log: RefCell::new(Vec::new()),
        };
        let parsed = Rc::new(parse_layers(name, &filled, &recorder));
        self.stats.parsed += 1;
        let entry = CachedUnit {
            key: self.key(layers),
            parsed: Rc::clone(&parsed),
            lookups: recorder.log.into_inner().into(),
        };
        self.keep(name, role, entry);
        Ok(parsed)
    }

    /// The last read's parse of the plain unit `name` if it was made of one file, of the
    /// generation its file has now, and the user database answers as it did: what
    /// [`Pass::parse`] would keep for that plan, without the plan. `None`: parse it.
    pub(crate) fn kept_plain(&mut self, name: &UnitName, generation: u64) -> Option<Rc<Parsed>> {
        let old = self.old_units.remove(name)?;
        if old.key.template_layers == 0
            && *old.key.generations == [generation]
            && old
                .lookups
                .iter()
                .all(|(lookup, answer)| self.users.ask(lookup) == *answer)
        {
            let parsed = Rc::clone(&old.parsed);
            self.keep(name, Role::Unit, old);
            return Some(parsed);
        }
        self.old_units.insert(name.clone(), old);
        None
    }

    fn keep(&mut self, name: &UnitName, role: Role, entry: CachedUnit) {
        match role {
            Role::Unit => self.cache.units.insert(name.clone(), entry),
            Role::Template => self.cache.templates.insert(name.clone(), entry),
        };
    }

    /// `layers` with the texts of their files (read now where this pass has not yet).
    pub(crate) fn filled(&mut self, layers: &UnitLayers) -> Result<UnitLayers, (PathBuf, String)> {
        let mut filled = Vec::with_capacity(layers.layers.len());
        for layer in &layers.layers {
            let text = self
                .text(&layer.file)
                .map_err(|e| (layer.file.clone(), e))?;
            filled.push(Layer {
                file: layer.file.clone(),
                text,
            });
        }
        Ok(UnitLayers {
            layers: filled,
            ..layers.clone()
        })
    }

    /// The pass is over: what it used stays in the cache, the rest goes (the units that went
    /// are changed).
    pub(crate) fn finish(self) {
        self.cache.stats = self.stats;
        self.cache.changed.extend(self.old_units.into_keys());
    }
}

/// SipHash under the cache's own random keys: a writer of unit files who could predict the
/// keys could make two texts of one length that share a hash, and a reload would not see the
/// swap (fixed keys made that about 2^32 tries). Unpredicted, two texts share one with a
/// chance of 2^-64.
fn content_hash(keys: &std::hash::RandomState, text: &str) -> u64 {
    keys.hash_one(text)
}

/// The largest unit file read. The units directory is read on corral's event loop (at start
/// and at each reload); the bound keeps one file from making that read, and corral's memory,
/// as large as the file: real units are a few hundred bytes.
pub const MAX_UNIT_FILE_BYTES: u64 = 1024 * 1024;

/// Reads a unit file: a regular file (checked on the open descriptor, so a FIFO swapped in after
/// the directory scan cannot block the read: it is opened non-blocking) of at most
/// `MAX_UNIT_FILE_BYTES`. With the text, the identity of what was read (its `fstat` before the
/// read: the text is at least as new as it).
pub(crate) fn read_unit_file(path: &Path) -> Result<(String, FileIdentity), String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".to_owned());
    }
    if meta.len() > MAX_UNIT_FILE_BYTES {
        return Err(format!(
            "{} bytes, more than the {} a unit file may have",
            meta.len(),
            MAX_UNIT_FILE_BYTES
        ));
    }
    let mut text = String::new();
    // Bounded again while reading: the file may grow after the fstat.
    file.take(MAX_UNIT_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_UNIT_FILE_BYTES {
        return Err(format!(
            "more than the {MAX_UNIT_FILE_BYTES} bytes a unit file may have"
        ));
    }
    Ok((text, FileIdentity::of(&meta)))
}

/// One question to the user database.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Lookup {
    UserByName(String),
    UserByUid(u32),
    GroupByName(String),
    GroupExists(u32),
    Groups(String, u32),
}

/// Its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    User(Option<UserEntry>),
    Group(Option<u32>),
    Exists(bool),
    Groups(Vec<u32>),
}

/// The user database asked at most once per question in one read of the directory: every
/// unit sees the same snapshot, and 10,000 units with `user = "app"` ask NSS once.
struct MemoUserDb<'a> {
    inner: &'a dyn UserDb,
    answers: RefCell<HashMap<Lookup, Answer>>,
}

impl<'a> MemoUserDb<'a> {
    fn new(inner: &'a dyn UserDb) -> MemoUserDb<'a> {
        MemoUserDb {
            inner,
            answers: RefCell::new(HashMap::new()),
        }
    }

    fn ask(&self, lookup: &Lookup) -> Answer {
        if let Some(answer) = self.answers.borrow().get(lookup) {
            return answer.clone();
        }
        let answer = match lookup {
            Lookup::UserByName(n) => Answer::User(self.inner.user_by_name(n)),
            Lookup::UserByUid(uid) => Answer::User(self.inner.user_by_uid(*uid)),
            Lookup::GroupByName(n) => Answer::Group(self.inner.group_by_name(n)),
            Lookup::GroupExists(gid) => Answer::Exists(self.inner.group_exists(*gid)),
            Lookup::Groups(user, gid) => {
                Answer::Groups(self.inner.supplementary_groups(user, *gid))
            }
        };
        self.answers
            .borrow_mut()
            .insert(lookup.clone(), answer.clone());
        answer
    }
}

/// The database one parse sees: each question and answer is written down, to be asked again
/// at the next read before the parse is reused.
struct RecordingUserDb<'m, 'a> {
    memo: &'m MemoUserDb<'a>,
    log: RefCell<Vec<(Lookup, Answer)>>,
}

impl RecordingUserDb<'_, '_> {
    fn ask(&self, lookup: Lookup) -> Answer {
        let answer = self.memo.ask(&lookup);
        self.log.borrow_mut().push((lookup, answer.clone()));
        answer
    }
}

impl UserDb for RecordingUserDb<'_, '_> {
    fn user_by_name(&self, name: &str) -> Option<UserEntry> {
        match self.ask(Lookup::UserByName(name.to_owned())) {
            Answer::User(user) => user,
            _ => None,
        }
    }

    fn user_by_uid(&self, uid: u32) -> Option<UserEntry> {
        match self.ask(Lookup::UserByUid(uid)) {
            Answer::User(user) => user,
            _ => None,
        }
    }

    fn group_by_name(&self, name: &str) -> Option<u32> {
        match self.ask(Lookup::GroupByName(name.to_owned())) {
            Answer::Group(gid) => gid,
            _ => None,
        }
    }

    fn group_exists(&self, gid: u32) -> bool {
        matches!(self.ask(Lookup::GroupExists(gid)), Answer::Exists(true))
    }

    fn supplementary_groups(&self, user: &str, primary_gid: u32) -> Vec<u32> {
        match self.ask(Lookup::Groups(user.to_owned(), primary_gid)) {
            Answer::Groups(groups) => groups,
            _ => vec![primary_gid],
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::collections::BTreeSet;
    use std::fs;
    use std::sync::Arc;

    use super::*;
    use crate::unit::load::load_dir_at;
    use crate::unit::{Loaded, MemoryUserDb, Unit};

    const EXEC: &str = "[exec]\ncommand = [\"true\"]\n";

    /// A units directory in a tempdir, read through one cache; `later` reads it as a scan
    /// long after the writes would (the files have settled).
    struct Dir {
        tmp: tempfile::TempDir,
        cache: LoadCache,
        users: MemoryUserDb,
        runtime: BTreeSet<UnitName>,
    }

    impl Dir {
        fn new() -> Dir {
            Dir {
                tmp: tempfile::tempdir().unwrap(),
                cache: LoadCache::new(),
                users: MemoryUserDb::new().with_user("app", 1000, 1000, "/home/app"),
                runtime: BTreeSet::new(),
            }
        }

        fn write(&self, file: &str, text: &str) {
            let path = self.tmp.path().join(file);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).unwrap();
            }
            fs::write(path, text).unwrap();
        }

        fn at(&mut self, scan: SystemTime) -> Result<Loaded, Vec<String>> {
            load_dir_at(
                self.tmp.path(),
                &self.users,
                &self.runtime,
                &mut self.cache,
                scan,
            )
            .map_err(|e| e.diagnostics.iter().map(ToString::to_string).collect())
        }

        /// A read whose scan is a minute after now: every file written so far has settled.
        fn later(&mut self) -> Loaded {
            self.at(SystemTime::now() + Duration::from_secs(60))
                .unwrap()
        }

        fn stats(&self) -> (usize, usize) {
            let s = self.cache.stats();
            (s.files_read, s.parsed)
        }
    }

    fn unit<'l>(loaded: &'l Loaded, n: &str) -> &'l Arc<Unit> {
        loaded.units.get(&UnitName::new(n).unwrap()).unwrap()
    }

    fn command(loaded: &Loaded, n: &str) -> Vec<String> {
        unit(loaded, n).exec.as_ref().unwrap().command.clone()
    }

    fn cmd(c: &str) -> String {
        format!("[exec]\ncommand = [\"{c}\"]\n")
    }

    #[test]
    fn a_settled_directory_is_read_once_and_its_units_are_kept() {
        let mut d = Dir::new();
        d.write("a.toml", EXEC);
        d.write("b.toml", EXEC);
        let first = d.later();
        assert_eq!(d.stats(), (2, 2));
        let second = d.later();
        assert_eq!(d.stats(), (0, 0), "nothing read, nothing parsed");
        assert!(Arc::ptr_eq(unit(&first, "a"), unit(&second, "a")));
        assert_eq!(first.units.len(), second.units.len());
    }

    #[test]
    fn a_file_read_before_it_settled_is_read_again_and_its_edit_is_seen() {
        let mut d = Dir::new();
        d.write("a.toml", &cmd("one"));
        // Read at once: the scan is within the settle margin of the write.
        let first = d.at(SystemTime::now()).unwrap();
        assert_eq!(command(&first, "a"), ["one"]);
        // Rewritten in place with the same size, perhaps within the same timestamp tick:
        // the identity may well be the same, but it had not settled.
        d.write("a.toml", &cmd("two"));
        let second = d.later();
        assert_eq!(command(&second, "a"), ["two"]);
        // Read again while unsettled, the same content keeps its parse.
        let third = d.later();
        assert_eq!(d.stats(), (0, 0));
        assert!(Arc::ptr_eq(unit(&second, "a"), unit(&third, "a")));
    }

    #[test]
    fn an_unsettled_file_read_again_with_the_same_content_is_not_parsed_again() {
        let mut d = Dir::new();
        d.write("a.toml", EXEC);
        let first = d.at(SystemTime::now()).unwrap();
        let second = d.later();
        assert_eq!(d.stats(), (1, 0));
        assert!(Arc::ptr_eq(unit(&first, "a"), unit(&second, "a")));
    }

    #[test]
    fn an_edit_in_place_a_rename_over_and_a_touch_are_each_seen() {
        let mut d = Dir::new();
        d.write("a.toml", &cmd("one"));
        d.write("b.toml", &cmd("one"));
        d.write("c.toml", &cmd("one"));
        let first = d.later();
        // In place (same inode), same size.
        d.write("a.toml", &cmd("two"));
        // Replaced by a rename (a new inode), same size, its mtime set back to the old one's.
        let old = fs::metadata(d.tmp.path().join("b.toml")).unwrap();
        d.write("b.new", &cmd("two"));
        let f = fs::File::options()
            .write(true)
            .open(d.tmp.path().join("b.new"))
            .unwrap();
        f.set_modified(old.modified().unwrap()).unwrap();
        fs::rename(d.tmp.path().join("b.new"), d.tmp.path().join("b.toml")).unwrap();
        // Touched: a new identity, the same content.
        let f = fs::File::options()
            .write(true)
            .open(d.tmp.path().join("c.toml"))
            .unwrap();
        f.set_modified(SystemTime::now()).unwrap();
        let second = d.later();
        assert_eq!(command(&second, "a"), ["two"]);
        assert_eq!(command(&second, "b"), ["two"]);
        assert_eq!(d.stats(), (3, 2), "c read again, not parsed");
        assert!(Arc::ptr_eq(unit(&first, "c"), unit(&second, "c")));
    }

    #[test]
    fn a_template_edit_makes_every_instance_again_and_nothing_else() {
        let mut d = Dir::new();
        d.write("w@.toml", &cmd("one"));
        d.write("w@2.toml", "description = \"two\"\n");
        std::os::unix::fs::symlink("w@.toml", d.tmp.path().join("w@1.toml")).unwrap();
        d.write("other.toml", EXEC);
        d.runtime.insert(UnitName::new("w@3").unwrap());
        let first = d.later();
        assert_eq!(first.runtime_instances.len(), 1);
        d.later();
        assert_eq!(d.stats(), (0, 0));
        d.write("w@.toml", &cmd("two"));
        let second = d.later();
        for n in ["w@1", "w@2", "w@3"] {
            assert_eq!(command(&second, n), ["two"], "{n}");
        }
        // The template (checked on its own) and its three instances; not `other`. Read: the
        // template, and w@2's own file, whose text its new parse needs.
        assert_eq!(d.stats(), (2, 4));
        assert!(Arc::ptr_eq(unit(&first, "other"), unit(&second, "other")));
    }

    #[test]
    fn a_drop_in_added_edited_or_removed_makes_only_its_unit_again() {
        let mut d = Dir::new();
        d.write("a.toml", &cmd("one"));
        d.write("b.toml", &cmd("one"));
        let first = d.later();
        d.write("a.toml.d/10-x.toml", &cmd("two"));
        let second = d.later();
        assert_eq!(command(&second, "a"), ["two"]);
        // The drop-in, and a.toml for the parse of `a`.
        assert_eq!(d.stats(), (2, 1));
        assert!(Arc::ptr_eq(unit(&first, "b"), unit(&second, "b")));
        d.write("a.toml.d/10-x.toml", &cmd("six"));
        assert_eq!(command(&d.later(), "a"), ["six"]);
        fs::remove_file(d.tmp.path().join("a.toml.d/10-x.toml")).unwrap();
        let third = d.later();
        assert_eq!(command(&third, "a"), ["one"]);
        assert_eq!(d.stats(), (1, 1), "a.toml read for the parse, unchanged");
    }

    #[test]
    fn added_and_removed_files_come_and_go_and_leave_the_cache() {
        let mut d = Dir::new();
        d.write("a.toml", EXEC);
        d.write("b.toml", EXEC);
        d.later();
        fs::remove_file(d.tmp.path().join("b.toml")).unwrap();
        d.write("c.toml", EXEC);
        let loaded = d.later();
        let names: Vec<&str> = loaded.units.keys().map(UnitName::as_str).collect();
        assert_eq!(names, ["a", "c"]);
        assert_eq!(d.stats(), (1, 1));
        assert_eq!(d.cache.files.len(), 2);
        assert_eq!(d.cache.units.len(), 2);
    }

    #[test]
    fn a_refused_read_is_refused_again_until_the_fix_which_parses_only_the_fixed_file() {
        let mut d = Dir::new();
        d.write("a.toml", EXEC);
        d.write("b.toml", "[exec]\ncommand = 3\n");
        let first = d.at(SystemTime::now() + Duration::from_secs(60));
        let again = d.at(SystemTime::now() + Duration::from_secs(60));
        assert!(first.is_err());
        assert_eq!(
            first.as_ref().err(),
            again.as_ref().err(),
            "the same diagnostics"
        );
        assert!(
            first.unwrap_err().iter().any(|e| e.contains("b.toml:2")),
            "file and line"
        );
        d.write("b.toml", EXEC);
        d.later();
        assert_eq!(d.stats(), (1, 1));
    }

    #[test]
    fn a_cached_unit_sees_the_user_database_as_it_is_now() {
        let mut d = Dir::new();
        d.write("a.toml", &format!("{EXEC}user = \"app\"\n"));
        d.write("b.toml", EXEC);
        let first = d.later();
        assert_eq!(
            unit(&first, "a")
                .exec
                .as_ref()
                .unwrap()
                .user
                .as_ref()
                .unwrap()
                .uid,
            1000
        );
        // Same answers: the parse is kept.
        let second = d.later();
        assert_eq!(d.stats(), (0, 0));
        assert!(Arc::ptr_eq(unit(&first, "a"), unit(&second, "a")));
        // The uid changed: `a` is parsed again, with it; `b` asks nothing and is kept.
        d.users = MemoryUserDb::new().with_user("app", 2000, 2000, "/home/app");
        let third = d.later();
        assert_eq!(d.stats(), (1, 1), "a.toml read for its new parse");
        assert_eq!(
            unit(&third, "a")
                .exec
                .as_ref()
                .unwrap()
                .user
                .as_ref()
                .unwrap()
                .uid,
            2000
        );
        assert!(Arc::ptr_eq(unit(&first, "b"), unit(&third, "b")));
        // Gone from the database: refused, at the file, line and key.
        d.users = MemoryUserDb::new();
        let refused = d
            .at(SystemTime::now() + Duration::from_secs(60))
            .unwrap_err();
        assert!(
            refused
                .iter()
                .any(|e| e.contains("a.toml:3") && e.contains("exec.user") && e.contains("app")),
            "{refused:?}"
        );
    }

    /// The kept units are the very `Unit`s of the reads before; every other name (new, parsed
    /// again, gone) is told, over every read until it is taken, refused reads included.
    #[test]
    fn the_units_not_kept_are_told_until_taken() {
        let names = |set: BTreeSet<UnitName>| -> Vec<String> {
            set.iter().map(ToString::to_string).collect()
        };
        let mut d = Dir::new();
        d.write("a.toml", &cmd("one"));
        d.write("b.toml", EXEC);
        d.write("c.toml", EXEC);
        d.later();
        assert_eq!(names(d.cache.take_changed()), ["a", "b", "c"], "all new");
        let first = d.later();
        assert!(d.cache.take_changed().is_empty());
        // A touch re-reads c but keeps its parse: not told.
        let f = fs::File::options()
            .write(true)
            .open(d.tmp.path().join("c.toml"))
            .unwrap();
        f.set_modified(SystemTime::now()).unwrap();
        d.write("a.toml", &cmd("two"));
        fs::remove_file(d.tmp.path().join("b.toml")).unwrap();
        d.write("d.toml", "[exec]\ncommand = 3\n");
        assert!(d.at(SystemTime::now() + Duration::from_secs(60)).is_err());
        // Refused, and not taken: the next read adds its own.
        d.write("d.toml", EXEC);
        d.write("e@.toml", EXEC);
        std::os::unix::fs::symlink("e@.toml", d.tmp.path().join("e@1.toml")).unwrap();
        let second = d.later();
        assert_eq!(names(d.cache.take_changed()), ["a", "b", "d", "e@1"]);
        assert!(Arc::ptr_eq(unit(&first, "c"), unit(&second, "c")));
        // The template changes: its instance is told (the template is no unit).
        d.write("e@.toml", &cmd("other"));
        d.later();
        assert_eq!(names(d.cache.take_changed()), ["e@1"]);
    }

    /// Counts the questions that reach it.
    struct Counting {
        inner: MemoryUserDb,
        asked: Cell<usize>,
    }

    impl UserDb for Counting {
        fn user_by_name(&self, name: &str) -> Option<UserEntry> {
            self.asked.set(self.asked.get() + 1);
            self.inner.user_by_name(name)
        }
        fn user_by_uid(&self, uid: u32) -> Option<UserEntry> {
            self.asked.set(self.asked.get() + 1);
            self.inner.user_by_uid(uid)
        }
        fn group_by_name(&self, name: &str) -> Option<u32> {
            self.asked.set(self.asked.get() + 1);
            self.inner.group_by_name(name)
        }
        fn group_exists(&self, gid: u32) -> bool {
            self.asked.set(self.asked.get() + 1);
            self.inner.group_exists(gid)
        }
        fn supplementary_groups(&self, user: &str, primary_gid: u32) -> Vec<u32> {
            self.asked.set(self.asked.get() + 1);
            self.inner.supplementary_groups(user, primary_gid)
        }
    }

    #[test]
    fn one_read_asks_the_user_database_each_question_once() {
        let d = Dir::new();
        for n in ["a", "b", "c"] {
            d.write(&format!("{n}.toml"), &format!("{EXEC}user = \"app\"\n"));
        }
        let users = Counting {
            inner: d.users.clone(),
            asked: Cell::new(0),
        };
        let mut cache = LoadCache::new();
        let later = SystemTime::now() + Duration::from_secs(60);
        let runtime = BTreeSet::new();
        load_dir_at(d.tmp.path(), &users, &runtime, &mut cache, later).unwrap();
        // The user by name and its groups: two questions for three units.
        assert_eq!(users.asked.get(), 2);
        // A reload asks them again (the answers may have changed), once each.
        load_dir_at(d.tmp.path(), &users, &runtime, &mut cache, later).unwrap();
        assert_eq!(users.asked.get(), 4);
        assert_eq!(cache.stats().parsed, 0);
    }

    /// 10,000 paths that differ in a few middle bytes spread over the buckets about as a
    /// random function would (7,500 of 16,384 used, expected), with the control bits spread too.
    #[test]
    fn the_word_hasher_spreads_similar_paths() {
        use std::hash::BuildHasher;
        let build = BuildHasherDefault::<WordHasher>::default();
        let mut low = std::collections::HashSet::new();
        let mut top = std::collections::HashSet::new();
        let mut all = std::collections::HashSet::new();
        for i in 0..10_000 {
            let path = OsString::from(format!("/tmp/corral-scale-1234/units/u{i:05}.toml"));
            let h = build.hash_one(&path);
            all.insert(h);
            low.insert(h & 0x3fff);
            top.insert(h >> 57);
        }
        assert!(low.len() > 7000, "{} buckets", low.len());
        assert_eq!(top.len(), 128);
        assert_eq!(all.len(), 10_000);
    }

    #[test]
    fn a_change_just_before_the_scan_has_not_settled_and_one_long_before_has() {
        let meta = |ctime: i64| FileIdentity {
            dev: 1,
            ino: 2,
            size: 3,
            mtime: (ctime, 0),
            ctime: (ctime, 0),
        };
        let scan = UNIX_EPOCH + Duration::from_secs(1000);
        assert!(meta(997).settled_at(scan));
        assert!(!meta(998).settled_at(scan), "exactly the margin: not yet");
        assert!(!meta(1000).settled_at(scan));
        // A file changed "in the future" (a clock set back) never settles: it is read each time.
        assert!(!meta(5000).settled_at(scan));
    }
}
