//! [`FileStore`]: the embedded default store. Several processes on one machine elect through a
//! directory.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> tenure::Result<()> {
//! use std::time::Duration;
//! use tenure::file::FileStore;
//! use tenure::{LeaseRecord, LeaseStore, PutMode};
//!
//! # let unique = std::time::SystemTime::now()
//! #     .duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
//! let dir = std::env::temp_dir().join(format!("tenure-doc-{}-{unique}", std::process::id()));
//! let store = FileStore::create(&dir)?;
//! let rec = LeaseRecord::held_by("me", Duration::from_secs(15), 1);
//! let v1 = store.put("job", &rec, PutMode::Create).await?;
//! assert!(store.put("job", &rec, PutMode::Create).await.unwrap_err().is_conflict());
//! // A create starts a term: its token is raised above every one the name ever had.
//! let rec = store.get("job").await?.unwrap().record;
//! assert!(rec.transitions > 1);
//! let v2 = store.put("job", &rec, PutMode::Update(v1.clone())).await?;
//! assert!(store.put("job", &rec, PutMode::Update(v1)).await.unwrap_err().is_conflict());
//! assert_eq!(store.get("job").await?.map(|s| s.version), Some(v2.clone()));
//! store.delete("job", &v2).await?;
//! assert!(store.get("job").await?.is_none());
//! # let _ = std::fs::remove_dir_all(&dir);
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! Each name has a record file `<escaped-name>.lease` (see [`FileStore::path_of`]) holding a
//! header line followed by the record's JSON ([`LeaseRecord::to_json`]), and a lock file
//! `<escaped-name>.lock`. The header is `tenure-file 2 <version> <clock-id> <monotonic-ns>`:
//! the writer's reading of `CLOCK_MONOTONIC` and that clock's identity (`-` and `0` where the
//! writer had none); headers of the older form `tenure-file 1 <version>` are still read. The
//! lock file holds `<version> <token high-water mark>` (older ones hold only the version and
//! still work). Lock files are never deleted (deleting a file others may be locking is racy);
//! they are tiny.
//!
//! # Guarantees
//!
//! - **Linearizable compare-and-swap on one machine.** Every write (and delete) takes an
//!   exclusive advisory lock (`flock`) on the name's lock file, reads and compares the current
//!   version, writes a temporary file, `fsync`s it and `rename`s it over the record file. Readers
//!   never lock: they see the old file or the new one, never half of one. A process killed in the
//!   middle (even by `SIGKILL`) loses its lock with its file descriptors, so it never wedges the
//!   store, and leaves at worst a stray temporary file, which is ignored (and removed by a later
//!   [`FileStore::open`] once it is old).
//! - **Local filesystems only.** Advisory locks over NFS, SMB and similar network filesystems
//!   are not reliable; two machines sharing such a directory may both win, and may issue the
//!   same fencing token. Use a networked store for elections across machines.
//! - **Bounded calls.** Each call runs on tokio's blocking pool under the store's timeout
//!   (default 2 s, [`FileStore::with_timeout`]); when it elapses the caller gets
//!   [`Error::Timeout`] at once. The blocking thread stops waiting for the name's lock at the
//!   same deadline, and does not start writing once it has passed; but a write that got the
//!   lock just before the deadline (say, one queued behind a slow `fsync`) cannot be abandoned
//!   and may still land after its caller already got `Timeout`. That is harmless under
//!   compare-and-swap — a timed-out caller does not know whether its write happened, re-reads
//!   and sees it — but `Timeout` means "outcome unknown", not "not written".
//! - **Sizes.** A record file (header and JSON) may be at most 1 MiB, the most a reader
//!   accepts; [`put`](LeaseStore::put) refuses a larger one with [`Error::TooLarge`] before
//!   writing anything.
//! - **Watch.** [`watch`](LeaseStore::watch) uses the operating system's file notification
//!   (inotify on Linux, through the `notify` crate). Each store, with all its clones, has **one**
//!   watcher on its directory, shared by every watch stream and dispatching events by file
//!   name (inotify instances are limited per user, `fs.inotify.max_user_instances`, so there is
//!   never one per stream); it is dropped with the last stream. A rename onto a record file, a
//!   delete and an in-place edit wake the streams of that name at once; a notification queue
//!   overflow wakes them all. If the watcher cannot be created (say the inotify limits are
//!   reached), the store falls back to polling the watched record files every poll interval
//!   (default 20 ms, [`FileStore::with_poll_interval`]) on tokio's blocking pool, so a change is
//!   reported within about one interval. Either way, the directory disappearing (removed,
//!   renamed away or replaced) yields one [`Error::Unavailable`] and ends the stream.
//! - **Ages on one clock (Linux).** Each write stores the writer's `CLOCK_MONOTONIC` reading
//!   (the clock of [`std::time::Instant`] and tokio's `Instant`), taken under the lock just
//!   before writing, and the clock's identity: the boot id (`/proc/sys/kernel/random/boot_id`)
//!   and the monotonic offset of the writer's time namespace (`/proc/self/timens_offsets`); a
//!   process that cannot tell its clock's identity writes none and reports no ages.
//!   [`get`](LeaseStore::get) reports [`Stored::age`] only when the record carries the reader's
//!   own clock identity and a reading that is not in the future — never by comparing wall
//!   clocks, and never across a reboot or another time namespace; otherwise, for `tenure-file 1`
//!   headers, and on other operating systems, the age is `None`. The age counts from after
//!   the writer's caller started its `put` (the moment a holder counts its lease from), so it
//!   is never larger than the holder's own view of its lease.
//! - **Versions and fencing tokens.** Versions are a per-name counter kept on disk (in the
//!   record and in the lock file), so they keep increasing across restarts and across delete and
//!   re-create. Fencing tokens are durable ([`Capabilities::durable_tokens`]): the lock file,
//!   which is never deleted, also keeps a high-water mark of every token ever stored under the
//!   name, and a write that starts a term ([`starts_term`]) stores
//!   `max(asked, high-water mark + 1)`, so deleting the record (`rm`,
//!   [`delete`](LeaseStore::delete)) never brings tokens back; renewals and releases store the
//!   token exactly. If the lock file is lost too (or never had a mark) and there is no record,
//!   the floor is this machine's clock in microseconds since the epoch, so even deleting the
//!   whole directory does not repeat a token. What can still break it: the clock stepped back
//!   while the lock files are lost (deleted, or the directory recreated), restoring the
//!   directory's files from an older backup (an older mark is believed), and network
//!   filesystems. A term whose token would pass `u64::MAX` fails with [`Error::Fencing`], and
//!   nothing is written.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
#[cfg(test)]
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::{with_timeout, Error, Result};
use crate::record::LeaseRecord;
use crate::store::{
    starts_term, Capabilities, LeaseStore, PutMode, Stored, Version, WatchEvent, WatchStream,
};

const KIND: &str = "file";
/// Longest file name (escaped name plus extension) this store creates.
const MAX_FILE_NAME: usize = 240;
const RECORD_EXT: &str = "lease";
const LOCK_EXT: &str = "lock";
/// The magic word of a record file's header line.
const MAGIC: &str = "tenure-file";
/// Record files larger than this are not tenure records; larger ones are never written.
const MAX_RECORD: u64 = 1 << 20;
/// How many leading bytes of the record file a polling watch compares.
const WATCH_HEAD: u64 = 64;
/// How many leading bytes of a lock file hold its counters.
const LOCK_HEAD: u64 = 64;
/// Temporary files start with this prefix (escaped names never start with a dot).
const TEMP_PREFIX: &str = ".tenure-";
const TEMP_SUFFIX: &str = ".tmp";
/// Stray temporary files older than this are removed by `open`.
const STALE_TEMP: Duration = Duration::from_secs(600);

/// A [`LeaseStore`] in a local directory, shared by every process (and every clone) that opens
/// it. See the [module documentation](self) for what it guarantees.
#[derive(Clone, Debug)]
pub struct FileStore {
    dir: Arc<Path>,
    poll_interval: Duration,
    timeout: Duration,
    /// The directory watcher shared by this store's (and its clones') watch streams.
    hub: Arc<HubSlot>,
    /// Whether `watch` may use the OS's notification (tests turn it off to test the fallback).
    os_watch: bool,
}

impl FileStore {
    /// Opens (does not create) `dir`.
    ///
    /// A missing path or a non-directory is [`Error::Unavailable`], an unwritable directory is
    /// [`Error::PermissionDenied`]; the source is an [`io::Error`] naming the path. Stray
    /// temporary files left by killed writers long ago are removed.
    pub fn open(dir: impl AsRef<Path>) -> Result<FileStore> {
        let dir = dir.as_ref();
        let label = dir.display().to_string();
        let meta = std::fs::metadata(dir)
            .map_err(|e| io_error("open", &label, "cannot open store directory", dir, e))?;
        if !meta.is_dir() {
            return Err(Error::Unavailable {
                store: KIND,
                source: Box::new(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("store path {} is not a directory", dir.display()),
                )),
            });
        }
        // Prove we can create files here, as every write must.
        let probe = dir.join(temp_name("probe"));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .map_err(|e| io_error("open", &label, "cannot write in store directory", dir, e))?;
        let _ = std::fs::remove_file(&probe);
        remove_stale_temps(dir);
        Ok(FileStore {
            dir: Arc::from(dir),
            poll_interval: Duration::from_millis(20),
            timeout: Duration::from_secs(2),
            hub: Arc::default(),
            os_watch: true,
        })
    }

    /// Like [`open`](Self::open), but creates the directory (and its parents) first.
    pub fn create(dir: impl AsRef<Path>) -> Result<FileStore> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| {
            io_error(
                "create",
                &dir.display().to_string(),
                "cannot create store directory",
                dir,
                e,
            )
        })?;
        Self::open(dir)
    }

    /// How often [`watch`](LeaseStore::watch) polls the watched record files when the
    /// operating system's file notification cannot be used (default 20 ms, at least 1 ms).
    /// With notification (inotify on Linux), changes are reported at once and this interval is
    /// not used.
    ///
    /// The returned store no longer shares its clones' watcher (its fallback would poll at a
    /// different interval): it gets its own, created with its first watch stream.
    #[must_use]
    pub fn with_poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d.max(Duration::from_millis(1));
        self.hub = Arc::default();
        self
    }

    /// The deadline of each call (default 2 s); when it elapses the call fails with
    /// [`Error::Timeout`]. See **Bounded calls** in the [module documentation](self) for what
    /// that means for a write.
    #[must_use]
    pub fn with_timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that holds the record for `name`: `<dir>/<escaped name>.lease`.
    ///
    /// The escaping is injective, even on case-insensitive filesystems: `[a-z0-9_-]` and `.`
    /// (except a leading one) are kept, every other byte — upper-case letters included — is
    /// written `%XX`. Fails with [`Error::InvalidName`] if `name` is empty or its file name
    /// would be longer than 240 bytes (names are never hashed or truncated).
    pub fn path_of(&self, name: &str) -> Result<PathBuf> {
        Ok(self.dir.join(file_name(name, RECORD_EXT)?))
    }

    fn lock_path_of(&self, name: &str) -> Result<PathBuf> {
        Ok(self.dir.join(file_name(name, LOCK_EXT)?))
    }

    /// This store, never using the OS's file notification: its watches poll (tests).
    #[cfg(test)]
    fn polling_only(mut self) -> Self {
        self.os_watch = false;
        self.hub = Arc::default();
        self
    }

    /// Runs `f` on the blocking pool under the timeout; `f` gets the deadline.
    async fn blocking<T: Send + 'static>(
        &self,
        operation: &'static str,
        name: &str,
        f: impl FnOnce(Deadline) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let deadline = Deadline {
            at: Instant::now().checked_add(self.timeout),
            after: self.timeout,
        };
        let task = async move {
            tokio::task::spawn_blocking(move || f(deadline))
                .await
                .map_err(|e| Error::Backend {
                    store: KIND,
                    source: Box::new(e),
                })?
        };
        with_timeout(KIND, operation, name, self.timeout, task).await
    }

    /// The live watcher of this store, or a new one (`name` labels a failure).
    fn hub(&self, name: &str, file: &OsStr) -> Result<Arc<Hub>> {
        let mut slot = self
            .hub
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(hub) = slot.upgrade() {
            // A watcher whose directory went away is finished: its streams end, new ones need
            // a new watcher (which reports the missing directory, or watches its successor).
            if hub.dispatch.gone.get().is_none() {
                return Ok(hub);
            }
        }
        let hub = Hub::new(self, name, file)?;
        *slot = Arc::downgrade(&hub);
        Ok(hub)
    }
}

#[async_trait::async_trait]
impl LeaseStore for FileStore {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn get(&self, name: &str) -> Result<Option<Stored>> {
        let path = self.path_of(name)?;
        let dir = self.dir.clone();
        let owned = name.to_owned();
        self.blocking("get", name, move |_| {
            let Some(file) = read_record(&dir, &path, "get", &owned)? else {
                return Ok(None);
            };
            // Read the clock after the file: the age may come out a little large for the
            // moment we read it, never larger than at the moment we answer.
            let age = file.written.as_ref().and_then(clock::age);
            let stored = Stored::new(file.record, Version::from(file.version));
            Ok(Some(match age {
                Some(age) => stored.with_age(age),
                None => stored,
            }))
        })
        .await
    }

    async fn put(&self, name: &str, record: &LeaseRecord, mode: PutMode) -> Result<Version> {
        let path = self.path_of(name)?;
        let lock_path = self.lock_path_of(name)?;
        let dir = self.dir.clone();
        let owned = name.to_owned();
        let mut record = record.clone();
        self.blocking("put", name, move |deadline| {
            let op = "put";
            let name = owned.as_str();
            let mut lock = lock(&lock_path, deadline, op, name)?;
            let current = match (read_record(&dir, &path, op, name), &mode) {
                // Garbage is a record we may not replace: creating fails like over any record.
                (Err(Error::Decode { .. }), PutMode::Create) => {
                    return Err(Error::AlreadyExists {
                        store: KIND,
                        name: name.to_owned(),
                    })
                }
                (read, _) => read?,
            };
            let current_version = current.as_ref().map(|c| c.version);
            mode.check(KIND, name, current_version.map(Version::from).as_ref())?;
            let marks = read_marks(&mut lock);
            let next = match (current_version, marks.version) {
                // Nothing known about this name (first write, or the lock file was lost): start
                // from the clock, so a version is not reused after a delete.
                (None, None) => now_micros().max(1),
                (cur, seq) => cur.max(seq).unwrap_or(0).saturating_add(1),
            };

            // The fencing token: every token ever stored under the name is at most `high`.
            let current_record = current.as_ref().map(|c| &c.record);
            let high = marks
                .high_water
                .max(current_record.map(|r| r.transitions))
                // Nothing known (first use, or the lock file was lost, and no record): the
                // clock, so that tokens do not start again after everything was deleted.
                .unwrap_or_else(now_micros);
            if starts_term(current_record, &record) {
                let above = high.checked_add(1).ok_or_else(|| Error::Fencing {
                    store: KIND,
                    name: name.to_owned(),
                    reason: "an earlier term already had the largest token, u64::MAX".into(),
                })?;
                record.transitions = record.transitions.max(above);
            }
            let high = high.max(record.transitions);

            let mut bytes = header(next, clock::reading()).into_bytes();
            bytes.extend_from_slice(&record.to_json());
            if bytes.len() as u64 > MAX_RECORD {
                return Err(Error::TooLarge {
                    store: KIND,
                    name: name.to_owned(),
                    size: bytes.len(),
                    limit: usize::try_from(MAX_RECORD).unwrap_or(usize::MAX),
                    what: "a file-store record",
                });
            }
            // The caller has been told `Timeout` already: do not start a write it cannot know
            // about. (One that started before the deadline still lands; see "Bounded calls".)
            if deadline.passed() {
                return Err(deadline.timeout(op, name));
            }

            // Record the counters first: if we die before the rename, they are merely ahead.
            // They need no `fsync` here: until a delete (which syncs them), the record file,
            // synced below, holds the same version and token.
            write_marks(&mut lock, next, high)
                .map_err(|e| io_error(op, name, "cannot write", &lock_path, e))?;
            let temp = dir.join(temp_name("w"));
            let written = write_file(&temp, &bytes).and_then(|()| std::fs::rename(&temp, &path));
            if let Err(e) = written {
                let _ = std::fs::remove_file(&temp);
                return Err(io_error(op, name, "cannot write", &path, e));
            }
            sync_dir(&dir);
            drop(lock);
            Ok(Version::from(next))
        })
        .await
    }

    fn watch(&self, name: &str) -> Option<WatchStream> {
        // An invalid name: every call fails, so report it once and end.
        let once = |e: Error| Some(futures_util::stream::iter([Err(e)]).boxed());
        let file = match file_name(name, RECORD_EXT) {
            Ok(file) => OsString::from(file),
            Err(e) => return once(e),
        };
        let hub = match self.hub(name, &file) {
            Ok(hub) => hub,
            // The directory is gone: report it once and end.
            Err(e) => return once(e),
        };
        let rx = hub.dispatch.subscribe(&file);
        let sub = Subscription {
            path: self.dir.join(&file),
            name: name.to_owned(),
            hub,
            file,
            rx,
            done: false,
        };
        let stream = futures_util::stream::unfold(sub, |mut sub| async move {
            if sub.done {
                return None;
            }
            sub.hub.start_poller();
            if !sub.is_gone() {
                // The sender lives in the hub, which this subscription keeps alive.
                sub.rx.changed().await.ok()?;
            }
            if let Some(gone) = sub.hub.dispatch.gone.get() {
                // The directory is gone: report it and end; the caller re-subscribes or polls.
                sub.done = true;
                let e = io::Error::new(gone.kind, gone.message.clone());
                let err = io_error("watch", &sub.name, "cannot watch", &sub.path, e);
                return Some((Err(err), sub));
            }
            Some((Ok(WatchEvent::Hint), sub))
        });
        Some(stream.boxed())
    }

    async fn delete(&self, name: &str, version: &Version) -> Result<()> {
        let path = self.path_of(name)?;
        let lock_path = self.lock_path_of(name)?;
        let dir = self.dir.clone();
        let owned = name.to_owned();
        let want = version.clone();
        self.blocking("delete", name, move |deadline| {
            let op = "delete";
            let name = owned.as_str();
            let mut lock = lock(&lock_path, deadline, op, name)?;
            let current = read_record(&dir, &path, op, name)?;
            let Some(cur) = current.filter(|c| Version::from(c.version) == want) else {
                return Err(Error::Conflict {
                    store: KIND,
                    name: name.to_owned(),
                });
            };
            if deadline.passed() {
                return Err(deadline.timeout(op, name));
            }
            // Remember the last version and the highest token, so that a re-created record
            // continues above both — durably, before the record that also holds them goes.
            let marks = read_marks(&mut lock);
            let seq = marks.version.unwrap_or(0).max(cur.version);
            let high = marks.high_water.unwrap_or(0).max(cur.record.transitions);
            if marks.version != Some(seq) || marks.high_water != Some(high) {
                write_marks(&mut lock, seq, high)
                    .and_then(|()| lock.sync_data())
                    .map_err(|e| io_error(op, name, "cannot write", &lock_path, e))?;
            }
            std::fs::remove_file(&path)
                .map_err(|e| io_error(op, name, "cannot remove", &path, e))?;
            sync_dir(&dir);
            drop(lock);
            Ok(())
        })
        .await
    }

    fn capabilities(&self) -> Capabilities {
        // Every write renames onto the record file, and inotify (or the poller) sees each.
        Capabilities::NONE
            .with_durable_tokens(true)
            .with_watch_every_write(true)
    }
}

/// When a blocking operation must give up.
#[derive(Clone, Copy)]
struct Deadline {
    at: Option<Instant>,
    after: Duration,
}

impl Deadline {
    fn passed(&self) -> bool {
        self.at.is_some_and(|at| Instant::now() >= at)
    }

    fn timeout(&self, operation: &'static str, name: &str) -> Error {
        Error::Timeout {
            store: KIND,
            operation,
            name: name.to_owned(),
            after: self.after,
        }
    }
}

/// Escapes `name` into `<escaped>.<ext>`, or explains why it cannot be held.
fn file_name(name: &str, ext: &str) -> Result<String> {
    let invalid = |reason: String| Error::InvalidName {
        store: KIND,
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("the name is empty".into()));
    }
    let mut out = String::with_capacity(name.len() + ext.len() + 1);
    for (i, b) in name.bytes().enumerate() {
        let keep = b.is_ascii_lowercase()
            || b.is_ascii_digit()
            || b == b'_'
            || b == b'-'
            || (b == b'.' && i > 0);
        if keep {
            out.push(char::from(b));
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xF)]));
        }
    }
    out.push('.');
    out.push_str(ext);
    if out.len() > MAX_FILE_NAME {
        return Err(invalid(format!(
            "too long: its escaped file name would be {} bytes, more than {MAX_FILE_NAME}",
            out.len()
        )));
    }
    Ok(out)
}

/// A unique temporary file name in the store directory (starts with a dot: never a record).
fn temp_name(what: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{TEMP_PREFIX}{what}-{}-{n}-{nanos}{TEMP_SUFFIX}",
        std::process::id()
    )
}

/// Removes temporary files left behind long ago by killed writers; best effort.
fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !(name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX)) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_TEMP);
        if old {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The wall clock in microseconds since the epoch: the floor of versions and tokens when
/// nothing is known about a name.
fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Maps an I/O error to the semantic variant, with a source naming the path.
fn io_error(operation: &'static str, name: &str, what: &str, path: &Path, e: io::Error) -> Error {
    let kind = e.kind();
    let source = Box::new(io::Error::new(
        kind,
        format!("{what} {}: {e}", path.display()),
    ));
    match kind {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            Error::PermissionDenied {
                store: KIND,
                operation,
                name: name.to_owned(),
                source,
            }
        }
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => Error::Unavailable {
            store: KIND,
            source,
        },
        _ => Error::Backend {
            store: KIND,
            source,
        },
    }
}

/// Opens and exclusively locks the lock file, retrying until the deadline.
fn lock(path: &Path, deadline: Deadline, operation: &'static str, name: &str) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| io_error(operation, name, "cannot open lock file", path, e))?;
    let mut pause = Duration::from_micros(200);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(io_error(operation, name, "cannot lock", path, e))
            }
        }
        let now = Instant::now();
        let left = match deadline.at {
            Some(at) if at > now => at - now,
            Some(_) => return Err(deadline.timeout(operation, name)),
            None => pause,
        };
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_millis(5));
    }
}

/// The counters kept in a lock file: `<version> <token high-water mark>`. Lock files of
/// older versions hold only the version; garbage holds neither.
#[derive(Debug, Default, PartialEq, Eq)]
struct Marks {
    /// The last version written or deleted.
    version: Option<u64>,
    /// The highest token ever stored under the name.
    high_water: Option<u64>,
}

fn read_marks(lock: &mut File) -> Marks {
    if lock.seek(SeekFrom::Start(0)).is_err() {
        return Marks::default();
    }
    let mut text = String::new();
    if (&mut *lock)
        .take(LOCK_HEAD)
        .read_to_string(&mut text)
        .is_err()
    {
        return Marks::default();
    }
    parse_marks(&text)
}

fn parse_marks(text: &str) -> Marks {
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let Some(line) = text.lines().next() else {
        return Marks::default();
    };
    let mut words = line.split(' ');
    let version = words.next().and_then(number);
    let high_water = version.and(words.next()).and_then(number);
    Marks {
        version,
        high_water,
    }
}

fn write_marks(lock: &mut File, version: u64, high_water: u64) -> io::Result<()> {
    let text = format!("{version} {high_water}\n");
    lock.seek(SeekFrom::Start(0))?;
    lock.write_all(text.as_bytes())?;
    lock.set_len(text.len() as u64)
}

/// Writes a new file and flushes it to disk.
fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Makes a rename or removal durable; best effort.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// A record file's contents, decoded.
#[derive(Debug)]
struct RecordFile {
    record: LeaseRecord,
    version: u64,
    /// The writer's monotonic reading, if the header has one.
    written: Option<clock::Reading>,
}

/// A record file's header line (with its newline) for `version`, written at `reading`.
fn header(version: u64, reading: Option<clock::Reading>) -> String {
    match reading {
        Some(r) => format!("{MAGIC} 2 {version} {} {}\n", r.clock, r.nanos),
        None => format!("{MAGIC} 2 {version} - 0\n"),
    }
}

/// Reads and decodes the record file: `None` if there is none, [`Error::Decode`] if it is not
/// one of ours.
fn read_record(
    dir: &Path,
    path: &Path,
    operation: &'static str,
    name: &str,
) -> Result<Option<RecordFile>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // No record, or no directory at all?
            return match std::fs::metadata(dir) {
                Ok(m) if m.is_dir() => Ok(None),
                Ok(_) => Err(io_error(
                    operation,
                    name,
                    "cannot read",
                    dir,
                    io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
                )),
                Err(e) => Err(io_error(operation, name, "cannot read", dir, e)),
            };
        }
        Err(e) => return Err(io_error(operation, name, "cannot read", path, e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_RECORD + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(operation, name, "cannot read", path, e))?;
    decode(&path.display().to_string(), &bytes).map(Some)
}

/// Decodes a record file's contents; `key` (the path) names it in errors.
fn decode(key: &str, bytes: &[u8]) -> Result<RecordFile> {
    let bad = |why: &str| Error::Decode {
        store: KIND,
        key: key.to_owned(),
        source: why.to_owned().into(),
    };
    if bytes.len() as u64 > MAX_RECORD {
        return Err(bad("the file is larger than 1 MiB"));
    }
    let Some(newline) = bytes.iter().position(|&b| b == b'\n') else {
        return Err(bad("no tenure-file header line"));
    };
    let (header, body) = bytes.split_at(newline);
    let body = body.get(1..).unwrap_or_default();
    let (version, written) = std::str::from_utf8(header)
        .ok()
        .and_then(parse_header)
        .ok_or_else(|| {
            bad("the header line is neither `tenure-file 1 <version>` nor \
                 `tenure-file 2 <version> <clock-id> <monotonic-ns>`")
        })?;
    let record = LeaseRecord::from_json(KIND, key, body)?;
    Ok(RecordFile {
        record,
        version,
        written,
    })
}

/// Parses `tenure-file 1 <version>` or `tenure-file 2 <version> <clock-id> <monotonic-ns>`.
fn parse_header(line: &str) -> Option<(u64, Option<clock::Reading>)> {
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let words: Vec<&str> = line.split(' ').collect();
    match words.as_slice() {
        [MAGIC, "1", version] => Some((number(version)?, None)),
        [MAGIC, "2", version, clock, nanos] => {
            let version = number(version)?;
            let nanos = number(nanos)?;
            if clock.is_empty() || !clock.bytes().all(|b| b.is_ascii_graphic()) {
                return None;
            }
            // `-`: the writer had no clock identity.
            let written = (*clock != "-").then(|| clock::Reading {
                clock: (*clock).to_owned(),
                nanos,
            });
            Some((version, written))
        }
        _ => None,
    }
}

/// This machine's monotonic clock, and an identity that tells whether another process's
/// reading was taken on the same clock.
mod clock {
    use std::time::Duration;

    /// A `CLOCK_MONOTONIC` reading and the identity of the clock it was taken on.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(super) struct Reading {
        /// The clock's identity: never contains whitespace; `-` is not one.
        pub(super) clock: String,
        /// Nanoseconds.
        pub(super) nanos: u64,
    }

    /// How long ago `written` was taken, if it was taken on this process's clock and is not in
    /// the future.
    pub(super) fn age(written: &Reading) -> Option<Duration> {
        let now = reading()?;
        if now.clock != written.clock {
            return None;
        }
        now.nanos
            .checked_sub(written.nanos)
            .map(Duration::from_nanos)
    }

    /// The clock now, or `None` if this process cannot tell which clock it reads.
    #[cfg(target_os = "linux")]
    pub(super) fn reading() -> Option<Reading> {
        // The identity first: a reading is only as good as the clock it names. Both files are
        // read every time (they are tiny): a cached identity would go stale if the process were
        // checkpointed and restored elsewhere.
        let clock = identity()?;
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let nanos = u64::try_from(now.tv_sec)
            .ok()?
            .checked_mul(1_000_000_000)?
            .checked_add(u64::try_from(now.tv_nsec).ok()?)?;
        Some(Reading { clock, nanos })
    }

    /// No age on other systems: their clocks' identities are not known here.
    #[cfg(not(target_os = "linux"))]
    pub(super) fn reading() -> Option<Reading> {
        None
    }

    /// The boot id, and the monotonic offset of this process's time namespace when it has one:
    /// two processes whose identities are equal read the same `CLOCK_MONOTONIC`.
    #[cfg(target_os = "linux")]
    fn identity() -> Option<String> {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let boot = boot.trim();
        if boot.is_empty() || !boot.bytes().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        // `timens_offsets` shows the offsets of the namespace this process's children get:
        // ours only while the two are the same (they differ after `unshare(CLONE_NEWTIME)`).
        let own = std::fs::read_link("/proc/self/ns/time");
        let children = std::fs::read_link("/proc/self/ns/time_for_children");
        match (own, children) {
            (Ok(own), Ok(children)) if own == children => {}
            // A kernel without time namespaces.
            (Err(a), Err(b))
                if a.kind() == std::io::ErrorKind::NotFound
                    && b.kind() == std::io::ErrorKind::NotFound => {}
            _ => return None,
        }
        let offset = match std::fs::read_to_string("/proc/self/timens_offsets") {
            Ok(text) => monotonic_offset(&text)?,
            // A kernel without time namespaces: every process reads the same clock.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, 0),
            Err(_) => return None,
        };
        Some(match offset {
            (0, 0) => boot.to_owned(),
            (secs, nanos) => format!("{boot}@{secs}.{nanos:09}"),
        })
    }

    /// The `monotonic <secs> <nanos>` line of `/proc/<pid>/timens_offsets`.
    #[cfg(any(target_os = "linux", test))]
    pub(super) fn monotonic_offset(text: &str) -> Option<(i64, u32)> {
        text.lines().find_map(|line| {
            let mut words = line.split_whitespace();
            if words.next()? != "monotonic" {
                return None;
            }
            let secs = words.next()?.parse().ok()?;
            let nanos = words.next()?.parse().ok()?;
            Some((secs, nanos))
        })
    }
}

/// Where a [`FileStore`] and its clones keep their shared directory watcher.
#[derive(Default)]
struct HubSlot {
    current: Mutex<Weak<Hub>>,
    /// How many OS watchers this slot ever created (tests).
    #[cfg(test)]
    os_watchers: AtomicUsize,
}

impl std::fmt::Debug for HubSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let live = self
            .current
            .lock()
            .map(|w| w.strong_count())
            .unwrap_or_default();
        f.debug_struct("HubSlot")
            .field("streams", &live)
            .finish_non_exhaustive()
    }
}

/// One directory watcher, shared by every watch stream of a store: the OS's notification, or
/// the polling fallback. Dropped with the last stream.
struct Hub {
    dispatch: Arc<Dispatch>,
    /// The OS watcher; dropping it stops it. `None`: the fallback polls.
    os: Option<notify::RecommendedWatcher>,
    /// The fallback's interval.
    poll: Duration,
    poller_started: AtomicBool,
    /// Stops the fallback's task when the hub is dropped.
    stop: CancellationToken,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Hub {
    /// Watches `store`'s directory; fails (as a watch of `name` would) if it is gone.
    fn new(store: &FileStore, name: &str, file: &OsStr) -> Result<Arc<Hub>> {
        let dir = &store.dir;
        let fail = |e: io::Error| io_error("watch", name, "cannot watch", &dir.join(file), e);
        let meta = std::fs::metadata(dir).map_err(fail)?;
        if !meta.is_dir() {
            return Err(fail(io::Error::new(
                io::ErrorKind::NotADirectory,
                "the store directory is no longer a directory",
            )));
        }
        let dispatch = Arc::new(Dispatch {
            dir: dir.clone(),
            absolute: std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()),
            identity: dir_identity(&meta),
            names: Mutex::default(),
            gone: OnceLock::new(),
        });
        let os = if store.os_watch {
            match os_watcher(&dispatch, store.poll_interval) {
                Ok(w) => {
                    #[cfg(test)]
                    store.hub.os_watchers.fetch_add(1, Ordering::Relaxed);
                    Some(w)
                }
                Err(e) => {
                    tracing::warn!(
                        dir = %dir.display(),
                        error = %e,
                        "file store: cannot watch the directory, polling instead"
                    );
                    None
                }
            }
        } else {
            None
        };
        Ok(Arc::new(Hub {
            dispatch,
            os,
            poll: store.poll_interval,
            poller_started: AtomicBool::new(false),
            stop: CancellationToken::new(),
        }))
    }

    /// Starts the polling fallback, if this hub polls and it has not started (needs a tokio
    /// runtime: called from a stream's poll).
    fn start_poller(&self) {
        if self.os.is_some() || self.poller_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let dispatch = Arc::downgrade(&self.dispatch);
        let every = self.poll;
        let stop = self.stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
                // The hub (the only strong owner of the dispatch) is gone: stop.
                let Some(d) = dispatch.upgrade() else { return };
                if d.gone.get().is_some() {
                    return;
                }
                // Files are read on the blocking pool, never on the runtime's workers.
                if tokio::task::spawn_blocking(move || d.poll_once())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }
}

/// Creates the OS watcher of `dispatch`'s directory.
fn os_watcher(
    dispatch: &Arc<Dispatch>,
    poll: Duration,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    // A weak reference: the watcher's thread must not keep the hub alive.
    let to = Arc::downgrade(dispatch);
    let handler = move |event: notify::Result<notify::Event>| {
        if let Some(d) = to.upgrade() {
            d.on_event(event);
        }
    };
    // Only platforms without a native API use the interval (notify then polls, on its thread).
    let config = notify::Config::default().with_poll_interval(poll);
    let mut watcher = notify::RecommendedWatcher::new(handler, config)?;
    watcher.watch(&dispatch.absolute, notify::RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// What identifies a directory (its device and inode, on Unix).
fn dir_identity(meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((meta.dev(), meta.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        None
    }
}

/// Why a hub's directory is gone.
struct Gone {
    kind: io::ErrorKind,
    message: String,
}

/// Wakes the streams of each record file.
struct Dispatch {
    dir: Arc<Path>,
    /// The directory as the OS watcher names it in events.
    absolute: PathBuf,
    /// The watched directory's identity, to notice it being replaced.
    identity: Option<(u64, u64)>,
    names: Mutex<HashMap<OsString, Slot>>,
    /// Set once the directory is gone: every stream then reports it and ends.
    gone: OnceLock<Gone>,
}

/// The streams watching one record file.
struct Slot {
    wake: watch::Sender<u64>,
    streams: usize,
    /// What the polling fallback saw last (`None`: not polled yet).
    last: Option<Snapshot>,
}

impl Dispatch {
    fn names(&self) -> std::sync::MutexGuard<'_, HashMap<OsString, Slot>> {
        // Every critical section leaves the map consistent, so poison is moot.
        self.names.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn subscribe(&self, file: &OsStr) -> watch::Receiver<u64> {
        let mut names = self.names();
        let slot = names.entry(file.to_owned()).or_insert_with(|| Slot {
            wake: watch::channel(0).0,
            streams: 0,
            last: None,
        });
        slot.streams += 1;
        slot.wake.subscribe()
    }

    fn unsubscribe(&self, file: &OsStr) {
        let mut names = self.names();
        if let Some(slot) = names.get_mut(file) {
            slot.streams -= 1;
            if slot.streams == 0 {
                names.remove(file);
            }
        }
    }

    fn wake(&self, file: &OsStr) {
        if let Some(slot) = self.names().get(file) {
            slot.wake.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    fn wake_all(&self) {
        for slot in self.names().values() {
            slot.wake.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Checks that the directory is still the one watched; if not, ends every stream.
    fn check_dir(&self) {
        let gone = match std::fs::metadata(&self.dir) {
            Ok(m) if !m.is_dir() => Some(Gone {
                kind: io::ErrorKind::NotADirectory,
                message: "the store directory is no longer a directory".into(),
            }),
            Ok(m) if dir_identity(&m) != self.identity => Some(Gone {
                kind: io::ErrorKind::NotFound,
                message: "the store directory was replaced".into(),
            }),
            Ok(_) => None,
            Err(e) => Some(Gone {
                kind: e.kind(),
                message: format!("the store directory is gone: {e}"),
            }),
        };
        if let Some(gone) = gone {
            let _ = self.gone.set(gone);
            self.wake_all();
        }
    }

    /// An event from the OS watcher (on its thread).
    fn on_event(&self, event: notify::Result<notify::Event>) {
        use notify::event::{AccessKind, AccessMode, ModifyKind};
        use notify::EventKind;
        let event = match event {
            Ok(event) if !event.need_rescan() => event,
            // A queue overflow, or the watcher failed: anything may have changed.
            _ => {
                self.check_dir();
                self.wake_all();
                return;
            }
        };
        match event.kind {
            // Writers closing a file they changed in place.
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
            // Reads (every `get` opens the file) and metadata changes change no record: waking
            // on them would make readers wake themselves.
            EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_)) => return,
            _ => {}
        }
        if event.paths.is_empty() {
            self.check_dir();
            self.wake_all();
            return;
        }
        for path in &event.paths {
            match path.file_name() {
                Some(file) if path.parent() == Some(&*self.absolute) => self.wake(file),
                // The directory itself (removed, renamed), or a path we do not recognize.
                _ => {
                    if matches!(
                        event.kind,
                        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
                    ) {
                        self.check_dir();
                    }
                    if let Some(file) = path.file_name() {
                        self.wake(file);
                    }
                }
            }
        }
    }

    /// One round of the polling fallback (on the blocking pool).
    fn poll_once(&self) {
        self.check_dir();
        if self.gone.get().is_some() {
            return;
        }
        let files: Vec<OsString> = self.names().keys().cloned().collect();
        for file in files {
            let snap = snapshot(&self.dir.join(&file));
            let mut names = self.names();
            let Some(slot) = names.get_mut(&file) else {
                continue;
            };
            if slot.last.as_ref() != Some(&snap) {
                // Also when first polled: the file may have changed between the stream's
                // creation and now (a spurious wake at worst).
                slot.last = Some(snap);
                slot.wake.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }
}

/// One watch stream's membership in its hub.
struct Subscription {
    hub: Arc<Hub>,
    file: OsString,
    rx: watch::Receiver<u64>,
    /// The record file and name, for errors.
    path: PathBuf,
    name: String,
    done: bool,
}

impl Subscription {
    fn is_gone(&self) -> bool {
        self.hub.dispatch.gone.get().is_some()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.dispatch.unsubscribe(&self.file);
    }
}

/// What the polling fallback compares between rounds.
#[derive(Debug, PartialEq, Eq)]
enum Snapshot {
    Missing,
    Present {
        #[cfg(unix)]
        dev_ino: (u64, u64),
        modified: Option<SystemTime>,
        len: u64,
        /// The header with the version: changes on every write even when the inode is reused
        /// and timestamps are coarse.
        head: Vec<u8>,
    },
    Failed(io::ErrorKind),
}

fn snapshot(path: &Path) -> Snapshot {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Snapshot::Missing,
        Err(e) => return Snapshot::Failed(e.kind()),
    };
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => return Snapshot::Failed(e.kind()),
    };
    let mut head = Vec::new();
    if let Err(e) = (&file).take(WATCH_HEAD).read_to_end(&mut head) {
        return Snapshot::Failed(e.kind());
    }
    #[cfg(unix)]
    let dev_ino = {
        use std::os::unix::fs::MetadataExt;
        (meta.dev(), meta.ino())
    };
    Snapshot::Present {
        #[cfg(unix)]
        dev_ino,
        modified: meta.modified().ok(),
        len: meta.len(),
        head,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn rec(holder: &str, transitions: u64) -> LeaseRecord {
        LeaseRecord::held_by(holder, Duration::from_secs(10), transitions)
    }

    fn store() -> (tempfile::TempDir, FileStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        (dir, store)
    }

    fn num(v: &Version) -> u64 {
        v.as_str().parse().unwrap()
    }

    #[tokio::test]
    async fn create_twice_is_already_exists() {
        let (_d, s) = store();
        s.put("a", &rec("x", 1), PutMode::Create).await.unwrap();
        let e = s.put("a", &rec("y", 1), PutMode::Create).await.unwrap_err();
        assert!(
            matches!(e, Error::AlreadyExists { store: "file", .. }),
            "{e:?}"
        );
        assert_eq!(
            s.get("a").await.unwrap().unwrap().record.holder.as_deref(),
            Some("x")
        );
        assert_eq!(s.kind(), "file");
    }

    #[tokio::test]
    async fn stale_update_is_conflict() {
        let (_d, s) = store();
        let v1 = s.put("a", &rec("x", 1), PutMode::Create).await.unwrap();
        let v2 = s
            .put("a", &rec("x", 2), PutMode::Update(v1.clone()))
            .await
            .unwrap();
        assert!(num(&v2) > num(&v1));
        let e = s
            .put("a", &rec("y", 3), PutMode::Update(v1))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Conflict { .. }), "{e:?}");
        let e = s
            .put(
                "a",
                &rec("y", 3),
                PutMode::Update(Version::new("not a number")),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Conflict { .. }), "{e:?}");
        let (r, v) = s.get("a").await.unwrap().unwrap().into_parts();
        assert_eq!((r.holder.as_deref(), v), (Some("x"), v2));
        // Update of a name that never existed.
        let e = s
            .put("b", &rec("y", 1), PutMode::Update(Version::from(1)))
            .await;
        assert!(matches!(e, Err(Error::Conflict { .. })), "{e:?}");
    }

    #[tokio::test]
    async fn delete_is_compare_and_delete_and_versions_keep_increasing() {
        let (_d, s) = store();
        let v1 = s.put("a", &rec("x", 1), PutMode::Create).await.unwrap();
        let v2 = s
            .put("a", &rec("x", 1), PutMode::Update(v1.clone()))
            .await
            .unwrap();
        assert!(matches!(
            s.delete("a", &v1).await,
            Err(Error::Conflict { .. })
        ));
        s.delete("a", &v2).await.unwrap();
        assert!(s.get("a").await.unwrap().is_none());
        assert!(matches!(
            s.delete("a", &v2).await,
            Err(Error::Conflict { .. })
        ));
        let e = s.put("a", &rec("x", 1), PutMode::Update(v2.clone())).await;
        assert!(matches!(e, Err(Error::Conflict { .. })), "{e:?}");
        let v3 = s.put("a", &rec("y", 2), PutMode::Create).await.unwrap();
        assert!(num(&v3) > num(&v2), "{v3} after {v2}");
        // Even a fresh store instance on the same directory continues the counter.
        let s2 = FileStore::open(s.dir()).unwrap();
        s2.delete("a", &v3).await.unwrap();
        let v4 = s2.put("a", &rec("z", 3), PutMode::Create).await.unwrap();
        assert!(num(&v4) > num(&v3));
    }

    #[tokio::test]
    async fn odd_names_round_trip_or_are_invalid_and_never_collide() {
        let (d, s) = store();
        let long = "é".repeat(200);
        let names = [
            "plain",
            "Plain",
            "PLAIN",
            "%50lain",
            "ünïcödé 🦀",
            "../x",
            "..",
            ".",
            "a/b",
            "a%2Fb",
            "a b",
            " a",
            ".hidden",
            "%2Ehidden",
            "trailing.",
            "nul\0byte",
            "con",
            long.as_str(),
            "",
        ];
        let mut files = HashSet::new();
        let mut held = Vec::new();
        for name in names {
            match s.path_of(name) {
                Ok(p) => {
                    assert_eq!(p.parent(), Some(d.path()), "{name:?} escapes: {p:?}");
                    assert!(files.insert(p.clone()), "{name:?} shares {p:?}");
                    s.put(name, &rec(name, 1), PutMode::Create).await.unwrap();
                    held.push(name);
                }
                Err(Error::InvalidName { store, reason, .. }) => {
                    assert_eq!(store, "file");
                    if name.is_empty() {
                        assert!(reason.contains("empty"), "{reason}");
                    } else {
                        assert!(reason.contains("too long"), "{reason}");
                    }
                    // Every operation refuses it the same way.
                    let e = s.put(name, &rec("x", 1), PutMode::Create).await;
                    assert!(matches!(e, Err(Error::InvalidName { .. })), "{e:?}");
                    assert!(matches!(s.get(name).await, Err(Error::InvalidName { .. })));
                    let mut w = s.watch(name).unwrap();
                    assert!(matches!(
                        w.next().await,
                        Some(Err(Error::InvalidName { .. }))
                    ));
                    assert!(w.next().await.is_none());
                }
                Err(e) => panic!("{name:?}: {e:?}"),
            }
        }
        assert!(held.len() >= names.len() - 2);
        for name in held {
            let (r, _) = s.get(name).await.unwrap().unwrap().into_parts();
            assert_eq!(r.holder.as_deref(), Some(name));
        }
        // Nothing was written outside the directory.
        assert!(!d.path().parent().unwrap().join("x.lease").exists());
    }

    #[tokio::test]
    async fn garbage_is_reported_and_never_overwritten() {
        let (_d, s) = store();
        for (i, garbage) in [
            &b"hello"[..],
            b"tenure-file 1 5\n{not json",
            b"tenure-file 1 x\n{}",
            b"tenure-file 2 5 clock\n{}",
            b"tenure-file 2 5 clock 1 2\n{}",
            b"tenure-file 2 5  1\n{}",
            b"tenure-file 3 5 clock 1\n{}",
            b"\xff\xfe\n",
        ]
        .into_iter()
        .enumerate()
        {
            let name = format!("g{i}");
            let path = s.path_of(&name).unwrap();
            std::fs::write(&path, garbage).unwrap();
            match s.get(&name).await {
                Err(Error::Decode { store, key, .. }) => {
                    assert_eq!(store, "file");
                    assert_eq!(key, path.display().to_string());
                }
                other => panic!("expected a decode error, got {other:?}"),
            }
            for v in [1, 5] {
                let e = s
                    .put(&name, &rec("x", 1), PutMode::Update(Version::from(v)))
                    .await
                    .unwrap_err();
                assert!(
                    matches!(e, Error::Decode { .. } | Error::Conflict { .. }),
                    "{e:?}"
                );
                assert!(s.delete(&name, &Version::from(v)).await.is_err());
            }
            let e = s
                .put(&name, &rec("x", 1), PutMode::Create)
                .await
                .unwrap_err();
            assert!(matches!(e, Error::AlreadyExists { .. }), "{e:?}");
            assert_eq!(std::fs::read(&path).unwrap(), garbage);
        }
    }

    #[tokio::test]
    async fn open_reports_missing_and_unwritable_directories() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("nope");
        match FileStore::open(&missing) {
            Err(Error::Unavailable { source, .. }) => {
                assert!(source.to_string().contains("nope"), "{source}");
                assert!(source.downcast_ref::<io::Error>().is_some());
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        let file = d.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(matches!(
            FileStore::open(&file),
            Err(Error::Unavailable { .. })
        ));

        let nested = d.path().join("x/y/z");
        let s = FileStore::create(&nested).unwrap();
        assert_eq!(s.dir(), nested);
        assert!(s.path_of("a").unwrap().starts_with(&nested));

        // A store whose directory disappears reports Unavailable instead of "no record".
        std::fs::remove_dir_all(d.path().join("x")).unwrap();
        assert!(matches!(s.get("a").await, Err(Error::Unavailable { .. })));
        let e = s.put("a", &rec("x", 1), PutMode::Create).await;
        assert!(matches!(e, Err(Error::Unavailable { .. })), "{e:?}");
    }

    /// The assertion half of the read-only test, run in whatever process reaches it.
    fn assert_open_is_permission_denied(ro: &Path) {
        match FileStore::open(ro) {
            Err(Error::PermissionDenied {
                store,
                operation,
                source,
                ..
            }) => {
                assert_eq!((store, operation), ("file", "open"));
                assert!(source.to_string().contains("ro"), "{source}");
            }
            other => panic!("expected PermissionDenied, got {other:?}"),
        }
    }

    /// A directory we may not write to is `PermissionDenied` at `open`. As root (CI), mode bits
    /// do not stop us, so the check re-runs this test binary as `nobody` through `setpriv`.
    #[cfg(unix)]
    #[test]
    fn open_reports_a_read_only_directory() {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(dir) = std::env::var("TENURE_FILE_RO_CHILD") {
            assert_open_is_permission_denied(Path::new(&dir));
            return;
        }
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let ro = d.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        let probe = ro.join("probe");
        if File::create(&probe).is_err() {
            assert_open_is_permission_denied(&ro);
        } else {
            // Root: run the assertion as an unprivileged user.
            let _ = std::fs::remove_file(&probe);
            let exe = std::env::current_exe().unwrap();
            let out = std::process::Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(&exe)
                .args([
                    "--exact",
                    "file::tests::open_reports_a_read_only_directory",
                    "--nocapture",
                ])
                .env("TENURE_FILE_RO_CHILD", &ro)
                .output()
                .expect("setpriv (util-linux) runs");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.contains("1 passed"),
                "the unprivileged check failed: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[tokio::test]
    async fn watch_sees_a_put_from_another_instance() {
        let (d, a) = store();
        let poll = Duration::from_millis(10);
        let a = a.with_poll_interval(poll);
        let b = FileStore::open(d.path()).unwrap();
        let mut w = a.watch("w").unwrap();
        let v1 = b.put("w", &rec("b", 1), PutMode::Create).await.unwrap();
        let within = poll * 50;
        tokio::time::timeout(within, w.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        // Every later write is seen too, including quick successive ones.
        let v2 = b.put("w", &rec("b", 1), PutMode::Update(v1)).await.unwrap();
        tokio::time::timeout(within, w.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        b.delete("w", &v2).await.unwrap();
        tokio::time::timeout(within, w.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        // Quiet when nothing changes.
        assert!(tokio::time::timeout(poll * 5, w.next()).await.is_err());
        // The directory disappearing ends the stream with an error, without panicking.
        drop(d);
        let end = tokio::time::timeout(within, w.next()).await.unwrap();
        assert!(
            matches!(end, Some(Err(Error::Unavailable { .. }))),
            "{end:?}"
        );
        assert!(w.next().await.is_none());
    }

    #[tokio::test]
    async fn leftovers_of_killed_writers_are_harmless() {
        let (d, s) = store();
        let lock_path = s.lock_path_of("k").unwrap();
        std::fs::write(&lock_path, b"garbage").unwrap();
        std::fs::write(d.path().join(temp_name("w")), b"tenure-file 1 9\n{\"ten").unwrap();
        std::fs::write(d.path().join(".tenure-w-1-2-3.tmp"), b"half").unwrap();
        assert!(s.get("k").await.unwrap().is_none());
        let v1 = s.put("k", &rec("x", 1), PutMode::Create).await.unwrap();
        let v2 = s.put("k", &rec("x", 2), PutMode::Update(v1)).await.unwrap();
        assert_eq!(s.get("k").await.unwrap().unwrap().version, v2);
        // Reopening works too (and may clean up old temporaries).
        let s2 = FileStore::open(d.path()).unwrap();
        assert_eq!(s2.get("k").await.unwrap().unwrap().version, v2);
    }

    #[tokio::test]
    async fn a_wedged_lock_holder_gives_timeout() {
        let (_d, s) = store();
        let s = s.with_timeout(Duration::from_millis(150));
        let v1 = s.put("k", &rec("x", 1), PutMode::Create).await.unwrap();
        let holder = OpenOptions::new()
            .read(true)
            .write(true)
            .open(s.lock_path_of("k").unwrap())
            .unwrap();
        holder.lock().unwrap();
        let started = Instant::now();
        let e = s.put("k", &rec("x", 1), PutMode::Update(v1.clone())).await;
        assert!(
            matches!(
                e,
                Err(Error::Timeout {
                    operation: "put",
                    ..
                })
            ),
            "{e:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        let e = s.delete("k", &v1).await;
        assert!(
            matches!(
                e,
                Err(Error::Timeout {
                    operation: "delete",
                    ..
                })
            ),
            "{e:?}"
        );
        // Readers never wait for the lock.
        assert_eq!(s.get("k").await.unwrap().unwrap().version, v1);
        drop(holder);
        s.put("k", &rec("x", 1), PutMode::Update(v1)).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_increments_are_exact() {
        let (d, s) = store();
        s.put("n", &rec("x", 0), PutMode::Create).await.unwrap();
        // The create took its token from the clock; every increment asks exactly for the next.
        let first = s.get("n").await.unwrap().unwrap().record.transitions;
        let mut tasks = Vec::new();
        for i in 0..8 {
            // Half the tasks use their own instance, as separate processes would.
            let s = if i % 2 == 0 {
                s.clone()
            } else {
                FileStore::open(d.path()).unwrap()
            };
            tasks.push(tokio::spawn(async move {
                for _ in 0..50 {
                    loop {
                        let (mut r, v) = s.get("n").await.unwrap().unwrap().into_parts();
                        r.transitions += 1;
                        match s.put("n", &r, PutMode::Update(v)).await {
                            Ok(_) => break,
                            Err(Error::Conflict { .. }) => continue,
                            Err(e) => panic!("{e:?}"),
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            s.get("n").await.unwrap().unwrap().record.transitions,
            first + 400
        );
    }

    #[tokio::test]
    async fn oversized_records_are_refused_before_writing() {
        let (_d, s) = store();
        let mut big = rec("x", 1);
        big.value = Some("v".repeat(2 << 20));
        let e = s.put("big", &big, PutMode::Create).await;
        match e {
            Err(Error::TooLarge {
                store,
                name,
                size,
                limit,
                what,
            }) => {
                assert_eq!(
                    (store, name.as_str(), what),
                    ("file", "big", "a file-store record")
                );
                assert_eq!(limit, 1 << 20);
                assert!(size > 2 << 20, "{size}");
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // Nothing unreadable was left behind, not even a lock file's counters.
        assert!(s.get("big").await.unwrap().is_none());
        let lock = std::fs::read(s.lock_path_of("big").unwrap()).unwrap_or_default();
        assert!(lock.is_empty(), "{lock:?}");
        // The limit counts the header too: a JSON just under 1 MiB is refused as well, and the
        // largest record that fits is written and reads back.
        let base = rec("x", 1).to_json().len() + header(u64::MAX, clock::reading()).len();
        let mut fits = rec("x", 1);
        fits.value = Some("v".repeat((1 << 20) - base - 64));
        let v = s.put("fits", &fits, PutMode::Create).await.unwrap();
        assert_eq!(s.get("fits").await.unwrap().unwrap().version, v);
        let mut over = rec("x", 1);
        over.value = Some("v".repeat((1 << 20) - 8));
        assert!(matches!(
            s.put("over", &over, PutMode::Create).await,
            Err(Error::TooLarge { .. })
        ));
        assert!(s.get("over").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn the_watch_does_not_wait_for_a_poll() {
        let (d, a) = store();
        // Polling once an hour: only an OS notification can report the write in time.
        let a = a.with_poll_interval(Duration::from_secs(3600));
        let b = FileStore::open(d.path()).unwrap();
        let mut w = a.watch("w").unwrap();
        b.put("w", &rec("b", 1), PutMode::Create).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), w.next()).await;
        assert!(matches!(got, Ok(Some(Ok(_)))), "{got:?}");
    }

    /// The token stored under `name` now.
    async fn token(s: &FileStore, name: &str) -> u64 {
        s.get(name).await.unwrap().unwrap().record.transitions
    }

    #[tokio::test]
    async fn tokens_continue_above_after_the_record_is_deleted() {
        let (d, s) = store();
        assert!(s.capabilities().durable_tokens);
        let v1 = s.put("t", &rec("a", 1), PutMode::Create).await.unwrap();
        let t1 = token(&s, "t").await;
        // The first term of a name nobody knew takes the clock as its floor.
        assert!(t1 > 1, "{t1}");
        // A renewal stores the token exactly; a new term asking for the next gets exactly it.
        let v2 = s
            .put("t", &rec("a", t1), PutMode::Update(v1))
            .await
            .unwrap();
        assert_eq!(token(&s, "t").await, t1);
        let v3 = s
            .put("t", &rec("b", t1 + 1), PutMode::Update(v2))
            .await
            .unwrap();
        let t2 = token(&s, "t").await;
        assert_eq!(t2, t1 + 1);
        // A release (vacant record, same token) keeps it too.
        let mut vacant = rec("b", t2);
        vacant.holder = None;
        let v4 = s.put("t", &vacant, PutMode::Update(v3)).await.unwrap();
        assert_eq!(token(&s, "t").await, t2);
        // Deleted behind everybody's back; a fresh instance (another process) that never saw
        // the record asks for token 1 and still continues above.
        s.delete("t", &v4).await.unwrap();
        let fresh = FileStore::open(d.path()).unwrap();
        let v5 = fresh.put("t", &rec("c", 1), PutMode::Create).await.unwrap();
        let t3 = token(&fresh, "t").await;
        assert_eq!(t3, t2 + 1);
        // Removed with `rm` (no delete call): the lock file still knows.
        std::fs::remove_file(fresh.path_of("t").unwrap()).unwrap();
        let fresh = FileStore::open(d.path()).unwrap();
        fresh.put("t", &rec("d", 1), PutMode::Create).await.unwrap();
        let t4 = token(&fresh, "t").await;
        assert_eq!(t4, t3 + 1);
        // Asking for more than the floor is honoured.
        let v = fresh.get("t").await.unwrap().unwrap().version;
        fresh
            .put("t", &rec("e", t4 + 100), PutMode::Update(v))
            .await
            .unwrap();
        assert_eq!(token(&fresh, "t").await, t4 + 100);
        let _ = v5;
    }

    #[tokio::test]
    async fn tokens_continue_above_after_the_lock_file_is_lost_too() {
        let (d, s) = store();
        s.put("t", &rec("a", 1), PutMode::Create).await.unwrap();
        let v = s.get("t").await.unwrap().unwrap().version;
        let t1 = token(&s, "t").await;
        s.put("t", &rec("b", t1 + 1), PutMode::Update(v))
            .await
            .unwrap();
        let t2 = token(&s, "t").await;
        // The lock file lost while the record exists: the record's token is the floor.
        std::fs::remove_file(s.lock_path_of("t").unwrap()).unwrap();
        let v = s.get("t").await.unwrap().unwrap().version;
        s.put("t", &rec("c", 1), PutMode::Update(v)).await.unwrap();
        let t3 = token(&s, "t").await;
        assert_eq!(t3, t2 + 1);
        // Both lost (say the whole directory was recreated): the clock is the floor.
        std::thread::sleep(Duration::from_millis(2));
        std::fs::remove_file(s.lock_path_of("t").unwrap()).unwrap();
        std::fs::remove_file(s.path_of("t").unwrap()).unwrap();
        let fresh = FileStore::open(d.path()).unwrap();
        let before = now_micros();
        fresh.put("t", &rec("d", 1), PutMode::Create).await.unwrap();
        let t4 = token(&fresh, "t").await;
        assert!(t4 > t3, "{t4} after {t3}");
        assert!(t4 > before, "{t4} is not above the clock {before}");
        // The whole directory removed and created again.
        drop(fresh);
        std::fs::remove_dir_all(d.path()).unwrap();
        let again = FileStore::create(d.path()).unwrap();
        again.put("t", &rec("e", 1), PutMode::Create).await.unwrap();
        let t5 = token(&again, "t").await;
        assert!(t5 > t4, "{t5} after {t4}");
    }

    #[tokio::test]
    async fn old_lock_files_holding_only_a_counter_still_work() {
        let (_d, s) = store();
        let v1 = s.put("o", &rec("a", 1), PutMode::Create).await.unwrap();
        let t1 = token(&s, "o").await;
        let lock_path = s.lock_path_of("o").unwrap();
        // What an earlier tenure wrote: the version alone.
        std::fs::write(&lock_path, format!("{}\n", num(&v1))).unwrap();
        let v2 = s
            .put("o", &rec("a", t1), PutMode::Update(v1.clone()))
            .await
            .unwrap();
        assert!(num(&v2) > num(&v1));
        assert_eq!(token(&s, "o").await, t1);
        // The lock file now has both counters, and the delete keeps them.
        let marks = parse_marks(&std::fs::read_to_string(&lock_path).unwrap());
        assert_eq!(
            marks,
            Marks {
                version: Some(num(&v2)),
                high_water: Some(t1)
            }
        );
        std::fs::write(&lock_path, format!("{}\n", num(&v2))).unwrap();
        s.delete("o", &v2).await.unwrap();
        let marks = parse_marks(&std::fs::read_to_string(&lock_path).unwrap());
        assert_eq!(
            marks,
            Marks {
                version: Some(num(&v2)),
                high_water: Some(t1)
            }
        );
        let v3 = s.put("o", &rec("b", 1), PutMode::Create).await.unwrap();
        assert!(num(&v3) > num(&v2));
        assert_eq!(token(&s, "o").await, t1 + 1);
        assert_eq!(
            parse_marks("12\n"),
            Marks {
                version: Some(12),
                high_water: None
            }
        );
        assert_eq!(parse_marks("garbage"), Marks::default());
        assert_eq!(
            parse_marks("12 x\n"),
            Marks {
                version: Some(12),
                high_water: None
            }
        );
    }

    #[tokio::test]
    async fn a_u64_max_high_water_refuses_a_new_term() {
        let (_d, s) = store();
        let lock_path = s.lock_path_of("m").unwrap();
        let marks = format!("7 {}\n", u64::MAX);
        std::fs::write(&lock_path, &marks).unwrap();
        let e = s.put("m", &rec("a", 1), PutMode::Create).await;
        match e {
            Err(Error::Fencing {
                store,
                name,
                reason,
            }) => {
                assert_eq!((store, name.as_str()), ("file", "m"));
                assert!(reason.contains("u64::MAX"), "{reason}");
            }
            other => panic!("expected Fencing, got {other:?}"),
        }
        // Nothing was written.
        assert!(s.get("m").await.unwrap().is_none());
        assert_eq!(std::fs::read_to_string(&lock_path).unwrap(), marks);
        // A record holding u64::MAX renews, but no new term can start above it.
        std::fs::write(&lock_path, b"7\n").unwrap();
        let v = s
            .put("m", &rec("a", u64::MAX), PutMode::Create)
            .await
            .unwrap();
        assert_eq!(token(&s, "m").await, u64::MAX);
        let v = s
            .put("m", &rec("a", u64::MAX), PutMode::Update(v))
            .await
            .unwrap();
        let e = s.put("m", &rec("b", 5), PutMode::Update(v.clone())).await;
        assert!(matches!(e, Err(Error::Fencing { .. })), "{e:?}");
        assert_eq!(s.get("m").await.unwrap().unwrap().version, v);
    }

    #[tokio::test]
    async fn records_carry_a_version_2_header_with_the_clock() {
        let (_d, s) = store();
        let v = s.put("h", &rec("a", 1), PutMode::Create).await.unwrap();
        let text = std::fs::read_to_string(s.path_of("h").unwrap()).unwrap();
        let line = text.lines().next().unwrap();
        let words: Vec<&str> = line.split(' ').collect();
        assert_eq!(words.len(), 5, "{line}");
        assert_eq!(words[..3], ["tenure-file", "2", v.as_str()], "{line}");
        if cfg!(target_os = "linux") {
            assert_ne!(words[3], "-", "{line}");
            assert!(words[4].parse::<u64>().unwrap() > 0, "{line}");
        } else {
            assert_eq!(words[3..], ["-", "0"], "{line}");
        }
    }

    #[tokio::test]
    async fn a_version_1_header_still_reads_without_an_age() {
        let (_d, s) = store();
        let path = s.path_of("v1").unwrap();
        let mut bytes = b"tenure-file 1 41\n".to_vec();
        bytes.extend_from_slice(&rec("old", 9).to_json());
        std::fs::write(&path, &bytes).unwrap();
        let got = s.get("v1").await.unwrap().unwrap();
        assert_eq!(got.version, Version::from(41));
        assert_eq!(got.record.holder.as_deref(), Some("old"));
        assert_eq!(got.age, None);
        // And it is updated in place like any record (a renewal keeps its token).
        let v = s
            .put("v1", &rec("old", 9), PutMode::Update(got.version))
            .await
            .unwrap();
        assert!(num(&v) > 41);
        assert_eq!(token(&s, "v1").await, 9);
        // A `-` clock (a writer without one) reads without an age too.
        let mut bytes = b"tenure-file 2 50 - 0\n".to_vec();
        bytes.extend_from_slice(&rec("other", 9).to_json());
        std::fs::write(&path, &bytes).unwrap();
        let got = s.get("v1").await.unwrap().unwrap();
        assert_eq!((got.version, got.age), (Version::from(50), None));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_age_is_measured_on_this_machines_monotonic_clock() {
        let (_d, s) = store();
        s.put("g", &rec("a", 1), PutMode::Create).await.unwrap();
        let first = s.get("g").await.unwrap().unwrap().age.expect("an age");
        assert!(first < Duration::from_secs(1), "{first:?}");
        let pause = Duration::from_millis(60);
        tokio::time::sleep(pause).await;
        let later = s.get("g").await.unwrap().unwrap().age.expect("an age");
        assert!(later >= first + pause, "{later:?} after {first:?}");
        // The same clock as `Instant`'s: the age is bounded by what an `Instant` measured.
        let started = Instant::now();
        let v = s.get("g").await.unwrap().unwrap().version;
        s.put("g", &rec("a", 2), PutMode::Update(v)).await.unwrap();
        let age = s.get("g").await.unwrap().unwrap().age.expect("an age");
        assert!(age <= started.elapsed(), "{age:?}");

        let path = s.path_of("g").unwrap();
        let json = rec("x", 3).to_json();
        let write = |header: String| {
            let mut bytes = header.into_bytes();
            bytes.extend_from_slice(&json);
            std::fs::write(&path, bytes).unwrap();
        };
        let now = clock::reading().expect("this machine's clock");
        // Another boot, or another time namespace: no age.
        write(format!(
            "tenure-file 2 9 00000000-not-this-boot {}\n",
            now.nanos
        ));
        assert_eq!(s.get("g").await.unwrap().unwrap().age, None);
        write(format!(
            "tenure-file 2 9 {}@5.000000000 {}\n",
            now.clock, now.nanos
        ));
        assert_eq!(s.get("g").await.unwrap().unwrap().age, None);
        // A reading in the future: no age.
        write(format!(
            "tenure-file 2 9 {} {}\n",
            now.clock,
            now.nanos + 3_600_000_000_000
        ));
        assert_eq!(s.get("g").await.unwrap().unwrap().age, None);
        // This clock, a second ago.
        write(format!(
            "tenure-file 2 9 {} {}\n",
            now.clock,
            now.nanos - 1_000_000_000
        ));
        let age = s.get("g").await.unwrap().unwrap().age.expect("an age");
        assert!(
            age >= Duration::from_secs(1) && age < Duration::from_secs(5),
            "{age:?}"
        );
    }

    #[test]
    fn time_namespace_offsets_are_parsed() {
        let text = "monotonic           0         0\nboottime         -5   2500\n";
        assert_eq!(clock::monotonic_offset(text), Some((0, 0)));
        let text = "boottime 1 2\nmonotonic  -86400  123\n";
        assert_eq!(clock::monotonic_offset(text), Some((-86400, 123)));
        assert_eq!(clock::monotonic_offset("boottime 1 2\n"), None);
        assert_eq!(clock::monotonic_offset("monotonic x 2\n"), None);
    }

    /// The next item of `w` within `within`, or `None` if it stayed quiet.
    async fn next_within(w: &mut WatchStream, within: Duration) -> Option<Result<WatchEvent>> {
        tokio::time::timeout(within, w.next()).await.ok().flatten()
    }

    /// The hub the store's watch streams share now.
    fn live_hub(s: &FileStore) -> Option<Arc<Hub>> {
        s.hub.current.lock().unwrap().upgrade()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_streams_share_one_os_watcher_and_all_wake() {
        let (d, s) = store();
        let names = ["a", "b", "c", "d"];
        // 200 streams, on the store and its clones, over four names.
        let mut streams: Vec<(&str, WatchStream)> = (0..200)
            .map(|i| {
                let name = names[i % names.len()];
                let store = if i % 2 == 0 {
                    s.clone()
                } else {
                    s.clone().with_timeout(Duration::from_secs(3))
                };
                (name, store.watch(name).unwrap())
            })
            .collect();
        assert_eq!(s.hub.os_watchers.load(Ordering::Relaxed), 1);
        let hub = live_hub(&s).expect("a live watcher");
        assert!(hub.os.is_some(), "not the OS watcher");
        assert_eq!(hub.dispatch.names().len(), names.len());
        drop(hub);
        // Another process writes three of the four names.
        let other = FileStore::open(d.path()).unwrap();
        for name in &names[..3] {
            other
                .put(name, &rec("o", 1), PutMode::Create)
                .await
                .unwrap();
        }
        for (name, w) in &mut streams {
            if *name == "d" {
                continue;
            }
            let got = next_within(w, Duration::from_secs(10)).await;
            assert!(matches!(got, Some(Ok(WatchEvent::Hint))), "{name}: {got:?}");
        }
        // The fourth name's streams were not woken by the others' writes.
        for (name, w) in &mut streams {
            if *name == "d" {
                assert!(
                    futures_util::FutureExt::now_or_never(w.next()).is_none(),
                    "{name} woke"
                );
            }
        }
        // A later stream joins the same watcher.
        let mut late = s.watch("d").unwrap();
        assert_eq!(s.hub.os_watchers.load(Ordering::Relaxed), 1);
        other.put("d", &rec("o", 1), PutMode::Create).await.unwrap();
        for (name, w) in streams.iter_mut().filter(|(n, _)| *n == "d") {
            let got = next_within(w, Duration::from_secs(10)).await;
            assert!(matches!(got, Some(Ok(WatchEvent::Hint))), "{name}: {got:?}");
        }
        assert!(matches!(
            next_within(&mut late, Duration::from_secs(10)).await,
            Some(Ok(WatchEvent::Hint))
        ));
        // The watcher goes with the last stream; the next stream creates a new one.
        drop(streams);
        assert!(live_hub(&s).is_some());
        drop(late);
        assert!(live_hub(&s).is_none(), "the watcher outlived its streams");
        let _w = s.watch("a").unwrap();
        assert_eq!(s.hub.os_watchers.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn renames_deletes_and_in_place_edits_wake_the_right_streams() {
        let (d, s) = store();
        let mut w = s.watch("x").unwrap();
        let mut quiet = s.watch("y").unwrap();
        let soon = Duration::from_secs(10);
        let path = s.path_of("x").unwrap();
        let mut bytes = b"tenure-file 1 1\n".to_vec();
        bytes.extend_from_slice(&rec("a", 1).to_json());
        // An atomic rename onto the record file.
        let temp = d.path().join("elsewhere.tmp");
        std::fs::write(&temp, &bytes).unwrap();
        // Settle the events of writing the temporary file first (another name).
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(next_within(&mut w, Duration::from_millis(1))
            .await
            .is_none());
        std::fs::rename(&temp, &path).unwrap();
        assert!(matches!(
            next_within(&mut w, soon).await,
            Some(Ok(WatchEvent::Hint))
        ));
        // Reads do not wake anybody (every `get` opens the file).
        tokio::time::sleep(Duration::from_millis(50)).await;
        while next_within(&mut w, Duration::from_millis(50))
            .await
            .is_some()
        {}
        for _ in 0..5 {
            s.get("x").await.unwrap().unwrap();
        }
        assert!(next_within(&mut w, Duration::from_millis(100))
            .await
            .is_none());
        // An in-place edit.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b" ").unwrap();
        drop(f);
        assert!(matches!(
            next_within(&mut w, soon).await,
            Some(Ok(WatchEvent::Hint))
        ));
        // A delete.
        tokio::time::sleep(Duration::from_millis(50)).await;
        while next_within(&mut w, Duration::from_millis(50))
            .await
            .is_some()
        {}
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            next_within(&mut w, soon).await,
            Some(Ok(WatchEvent::Hint))
        ));
        // None of it concerned "y".
        assert!(next_within(&mut quiet, Duration::from_millis(50))
            .await
            .is_none());
        // The directory renamed away ends every stream with Unavailable.
        let moved = d.path().with_extension("moved");
        std::fs::rename(d.path(), &moved).unwrap();
        for w in [&mut w, &mut quiet] {
            let end = next_within(w, soon).await;
            assert!(
                matches!(end, Some(Err(Error::Unavailable { .. }))),
                "{end:?}"
            );
            assert!(w.next().await.is_none());
        }
        // A new stream on the missing directory reports it and ends, too.
        let mut again = s.watch("x").unwrap();
        let end = next_within(&mut again, soon).await;
        assert!(
            matches!(end, Some(Err(Error::Unavailable { .. }))),
            "{end:?}"
        );
        assert!(again.next().await.is_none());
        std::fs::rename(&moved, d.path()).unwrap();
    }

    #[tokio::test]
    async fn the_polling_fallback_still_works() {
        let (d, s) = store();
        let poll = Duration::from_millis(10);
        let s = s.with_poll_interval(poll).polling_only();
        let b = FileStore::open(d.path()).unwrap();
        let mut w = s.watch("p").unwrap();
        let mut other = s.clone().watch("q").unwrap();
        let hub = live_hub(&s).expect("a live watcher");
        assert!(hub.os.is_none());
        assert_eq!(s.hub.os_watchers.load(Ordering::Relaxed), 0);
        drop(hub);
        // The first round may wake each stream once (it cannot know what changed before it).
        while next_within(&mut w, poll * 10).await.is_some() {}
        while next_within(&mut other, poll * 10).await.is_some() {}
        let within = poll * 100;
        let v1 = b.put("p", &rec("b", 1), PutMode::Create).await.unwrap();
        assert!(matches!(
            next_within(&mut w, within).await,
            Some(Ok(WatchEvent::Hint))
        ));
        let v2 = b.put("p", &rec("b", 1), PutMode::Update(v1)).await.unwrap();
        assert!(matches!(
            next_within(&mut w, within).await,
            Some(Ok(WatchEvent::Hint))
        ));
        b.delete("p", &v2).await.unwrap();
        assert!(matches!(
            next_within(&mut w, within).await,
            Some(Ok(WatchEvent::Hint))
        ));
        // Quiet when nothing changes, and "q" heard nothing of "p".
        assert!(next_within(&mut w, poll * 5).await.is_none());
        assert!(next_within(&mut other, poll * 5).await.is_none());
        // The directory disappearing ends both streams with an error.
        drop(d);
        for w in [&mut w, &mut other] {
            let end = next_within(w, within).await;
            assert!(
                matches!(end, Some(Err(Error::Unavailable { .. }))),
                "{end:?}"
            );
            assert!(w.next().await.is_none());
        }
        drop((w, other));
        assert!(live_hub(&s).is_none());
    }

    #[tokio::test]
    async fn events_are_dispatched_by_file_name_and_an_overflow_wakes_all() {
        use notify::event::{AccessKind, AccessMode, CreateKind, Flag, ModifyKind, RemoveKind};
        use notify::event::{DataChange, MetadataKind, RenameMode};
        use notify::{Event, EventKind};
        let (d, s) = store();
        let dispatch = Dispatch {
            dir: s.dir.clone(),
            absolute: s.dir.to_path_buf(),
            identity: dir_identity(&std::fs::metadata(d.path()).unwrap()),
            names: Mutex::default(),
            gone: OnceLock::new(),
        };
        let a = OsString::from("a.lease");
        let b = OsString::from("b.lease");
        let mut ra = dispatch.subscribe(&a);
        let mut rb = dispatch.subscribe(&b);
        let at = |f: &str| d.path().join(f);
        let event = |kind: EventKind, files: &[&str]| {
            files
                .iter()
                .fold(Event::new(kind), |e, f| e.add_path(at(f)))
        };
        // Reads and metadata changes wake nobody.
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
        ] {
            dispatch.on_event(Ok(event(kind, &["a.lease"])));
        }
        assert!(!ra.has_changed().unwrap() && !rb.has_changed().unwrap());
        // Changes of "a" wake only "a".
        for kind in [
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Remove(RemoveKind::File),
        ] {
            dispatch.on_event(Ok(event(kind, &["a.lease"])));
            assert!(ra.has_changed().unwrap(), "{kind:?}");
            assert!(!rb.has_changed().unwrap(), "{kind:?}");
            ra.borrow_and_update();
        }
        // A rename from a temporary file onto "b" wakes "b".
        let both = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        dispatch.on_event(Ok(event(both, &[".tenure-w.tmp", "b.lease"])));
        assert!(rb.has_changed().unwrap() && !ra.has_changed().unwrap());
        rb.borrow_and_update();
        // An overflow (rescan) or a watcher error wakes everybody.
        dispatch.on_event(Ok(Event::new(EventKind::Other).set_flag(Flag::Rescan)));
        assert!(ra.has_changed().unwrap() && rb.has_changed().unwrap());
        ra.borrow_and_update();
        rb.borrow_and_update();
        dispatch.on_event(Err(notify::Error::generic("boom")));
        assert!(ra.has_changed().unwrap() && rb.has_changed().unwrap());
        assert!(dispatch.gone.get().is_none());
        // The directory removed: everybody wakes to find it gone.
        ra.borrow_and_update();
        rb.borrow_and_update();
        std::fs::remove_dir_all(d.path()).unwrap();
        let removed = EventKind::Remove(RemoveKind::Folder);
        dispatch.on_event(Ok(Event::new(removed).add_path(d.path().to_owned())));
        assert!(ra.has_changed().unwrap() && rb.has_changed().unwrap());
        assert_eq!(
            dispatch.gone.get().map(|g| g.kind),
            Some(io::ErrorKind::NotFound)
        );
        // Unsubscribing the last stream of a name forgets it.
        dispatch.unsubscribe(&a);
        assert_eq!(dispatch.names().len(), 1);
    }

    #[tokio::test]
    async fn a_directory_replaced_under_the_watch_ends_it() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("store");
        let s = FileStore::create(&dir).unwrap();
        let mut w = s.watch("r").unwrap();
        // Replaced by another directory of the same name: the watch would be deaf to it.
        std::fs::rename(&dir, d.path().join("old")).unwrap();
        std::fs::create_dir(&dir).unwrap();
        let end = next_within(&mut w, Duration::from_secs(10)).await;
        assert!(
            matches!(end, Some(Err(Error::Unavailable { .. }))),
            "{end:?}"
        );
        assert!(w.next().await.is_none());
        // A new stream watches the new directory.
        let mut w = s.watch("r").unwrap();
        FileStore::open(&dir)
            .unwrap()
            .put("r", &rec("x", 1), PutMode::Create)
            .await
            .unwrap();
        assert!(matches!(
            next_within(&mut w, Duration::from_secs(10)).await,
            Some(Ok(WatchEvent::Hint))
        ));
    }
}
