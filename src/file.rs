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
//! let v2 = store.put("job", &rec, PutMode::Update(v1.clone())).await?;
//! assert!(store.put("job", &rec, PutMode::Update(v1)).await.unwrap_err().is_conflict());
//! assert_eq!(store.get("job").await?.map(|(_, v)| v), Some(v2.clone()));
//! store.delete("job", &v2).await?;
//! assert!(store.get("job").await?.is_none());
//! # let _ = std::fs::remove_dir_all(&dir);
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! Each name has a record file `<escaped-name>.lease` (see [`FileStore::path_of`]) holding a
//! header line `tenure-file 1 <version>` followed by the record's JSON
//! ([`LeaseRecord::to_json`]), and a lock file `<escaped-name>.lock`. Lock files are never
//! deleted (deleting a file others may be locking is racy); they are tiny.
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
//!   are not reliable; two machines sharing such a directory may both win. Use a networked
//!   store for elections across machines.
//! - **Bounded calls.** Each call runs on tokio's blocking pool under the store's timeout
//!   (default 2 s, [`FileStore::with_timeout`]); a lock held too long by a wedged process gives
//!   [`Error::Timeout`], and the blocking thread gives up at the same deadline.
//! - **Watch latency.** [`watch`](LeaseStore::watch) polls the record file every poll interval
//!   (default 20 ms, [`FileStore::with_poll_interval`]): a change is reported within about one
//!   interval.
//! - **Versions and fencing.** Versions are a per-name counter kept on disk (in the record and
//!   in the lock file), so they keep increasing across restarts and across delete and
//!   re-create. The fencing token, [`LeaseRecord::transitions`], lives in the record on disk
//!   too: it survives restarts of every process, but not deleting the directory (or the
//!   record) — then terms start again from the beginning, and fenced resources must be told.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;

use crate::error::{with_timeout, Error, Result};
use crate::record::LeaseRecord;
use crate::store::{LeaseStore, PutMode, Version, WatchStream};

const KIND: &str = "file";
/// Longest file name (escaped name plus extension) this store creates.
const MAX_FILE_NAME: usize = 240;
const RECORD_EXT: &str = "lease";
const LOCK_EXT: &str = "lock";
const HEADER: &str = "tenure-file 1 ";
/// Records larger than this are not tenure records.
const MAX_RECORD: u64 = 1 << 20;
/// How many leading bytes of the record file a watch compares.
const WATCH_HEAD: u64 = 64;
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

    /// How often [`watch`](LeaseStore::watch) polls the record file (default 20 ms, at least
    /// 1 ms).
    #[must_use]
    pub fn with_poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d.max(Duration::from_millis(1));
        self
    }

    /// The deadline of each call (default 2 s); when it elapses the call fails with
    /// [`Error::Timeout`].
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
}

#[async_trait::async_trait]
impl LeaseStore for FileStore {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn get(&self, name: &str) -> Result<Option<(LeaseRecord, Version)>> {
        let path = self.path_of(name)?;
        let dir = self.dir.clone();
        let owned = name.to_owned();
        self.blocking("get", name, move |_| {
            Ok(read_record(&dir, &path, "get", &owned)?.map(|(r, v)| (r, Version::from(v))))
        })
        .await
    }

    async fn put(&self, name: &str, record: &LeaseRecord, mode: PutMode) -> Result<Version> {
        let path = self.path_of(name)?;
        let lock_path = self.lock_path_of(name)?;
        let dir = self.dir.clone();
        let owned = name.to_owned();
        let json = record.to_json();
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
                (read, _) => read?.map(|(_, v)| v),
            };
            mode.check(KIND, name, current.map(Version::from).as_ref())?;
            let seq = read_seq(&mut lock);
            let next = match (current, seq) {
                // Nothing known about this name (first write, or the lock file was lost): start
                // from the clock, so a version is not reused after a delete.
                (None, None) => now_micros().max(1),
                (cur, seq) => cur.max(seq).unwrap_or(0).saturating_add(1),
            };
            // Record the counter first: if we die before the rename, it is merely ahead.
            write_seq(&mut lock, next)
                .map_err(|e| io_error(op, name, "cannot write", &lock_path, e))?;

            let mut bytes = format!("{HEADER}{next}\n").into_bytes();
            bytes.extend_from_slice(&json);
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
        let path = match self.path_of(name) {
            Ok(path) => path,
            // The name is invalid: every call fails, so report it once and end.
            Err(e) => return Some(futures_util::stream::iter([Err(e)]).boxed()),
        };
        let state = WatchState {
            dir: self.dir.clone(),
            name: name.to_owned(),
            last: snapshot(&path),
            path,
            poll: self.poll_interval,
            done: false,
        };
        let stream = futures_util::stream::unfold(state, |mut st| async move {
            if st.done {
                return None;
            }
            loop {
                tokio::time::sleep(st.poll).await;
                let snap = snapshot(&st.path);
                let failure = match &snap {
                    Snapshot::Missing => match std::fs::metadata(&st.dir) {
                        Ok(m) if m.is_dir() => None,
                        Ok(_) => Some(io::Error::new(
                            io::ErrorKind::NotADirectory,
                            "no longer a directory",
                        )),
                        Err(e) => Some(e),
                    },
                    Snapshot::Failed(kind) => Some(io::Error::from(*kind)),
                    Snapshot::Present { .. } => None,
                };
                if let Some(e) = failure {
                    // The directory is gone or unreadable: report it and end; the caller
                    // re-subscribes or polls.
                    st.done = true;
                    let err = io_error("watch", &st.name, "cannot watch", &st.path, e);
                    return Some((Err(err), st));
                }
                if snap != st.last {
                    st.last = snap;
                    return Some((Ok(()), st));
                }
            }
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
            let current = read_record(&dir, &path, op, name)?.map(|(_, v)| v);
            let Some(cur) = current.filter(|v| Version::from(*v) == want) else {
                return Err(Error::Conflict {
                    store: KIND,
                    name: name.to_owned(),
                });
            };
            // Remember the last version, so a re-created record continues after it.
            if read_seq(&mut lock).is_none_or(|s| s < cur) {
                write_seq(&mut lock, cur)
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
}

/// When a blocking operation must give up.
#[derive(Clone, Copy)]
struct Deadline {
    at: Option<Instant>,
    after: Duration,
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
            Some(_) => {
                return Err(Error::Timeout {
                    store: KIND,
                    operation,
                    name: name.to_owned(),
                    after: deadline.after,
                })
            }
            None => pause,
        };
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_millis(5));
    }
}

/// The counter kept in the lock file, if it holds one.
fn read_seq(lock: &mut File) -> Option<u64> {
    let mut text = String::new();
    lock.seek(SeekFrom::Start(0)).ok()?;
    lock.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

fn write_seq(lock: &mut File, seq: u64) -> io::Result<()> {
    let text = format!("{seq}\n");
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

/// Reads and decodes the record file: `None` if there is none, [`Error::Decode`] if it is not
/// one of ours.
fn read_record(
    dir: &Path,
    path: &Path,
    operation: &'static str,
    name: &str,
) -> Result<Option<(LeaseRecord, u64)>> {
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
fn decode(key: &str, bytes: &[u8]) -> Result<(LeaseRecord, u64)> {
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
    let version = std::str::from_utf8(header)
        .ok()
        .and_then(|h| h.strip_prefix(HEADER))
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| bad("the header line is not `tenure-file 1 <version>`"))?;
    let record = LeaseRecord::from_json(KIND, key, body)?;
    Ok((record, version))
}

/// What a watch compares between polls.
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

struct WatchState {
    dir: Arc<Path>,
    name: String,
    path: PathBuf,
    poll: Duration,
    last: Snapshot,
    done: bool,
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
            s.get("a").await.unwrap().unwrap().0.holder.as_deref(),
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
        let (r, v) = s.get("a").await.unwrap().unwrap();
        assert_eq!((r.transitions, v), (2, v2));
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
            let (r, _) = s.get(name).await.unwrap().unwrap();
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
        assert_eq!(s.get("k").await.unwrap().unwrap().1, v2);
        // Reopening works too (and may clean up old temporaries).
        let s2 = FileStore::open(d.path()).unwrap();
        assert_eq!(s2.get("k").await.unwrap().unwrap().1, v2);
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
        assert_eq!(s.get("k").await.unwrap().unwrap().1, v1);
        drop(holder);
        s.put("k", &rec("x", 1), PutMode::Update(v1)).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_increments_are_exact() {
        let (d, s) = store();
        s.put("n", &rec("x", 0), PutMode::Create).await.unwrap();
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
                        let (mut r, v) = s.get("n").await.unwrap().unwrap();
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
        assert_eq!(s.get("n").await.unwrap().unwrap().0.transitions, 400);
    }
}
