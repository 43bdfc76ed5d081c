//! [`RwLock`]: shared/exclusive locks on Apache Curator's `InterProcessReadWriteLock` layout,
//! fair-queued as seed 003's ZK::Locker describes.

use std::future::Future;
use std::time::Duration;

use super::connection::ZooKeeper;
use super::mutex::{lock_methods, LockCore};
use super::recipe::{Guard, Kind, LockResult, Mode};
use crate::term::Term;

/// A read-write lock on Apache Curator's `InterProcessReadWriteLock` layout: a shared
/// [`ReadLock`] and an exclusive [`WriteLock`] on one path, in one FIFO queue with Curator's
/// read and write locks on the same path.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use tenure::zookeeper::{RwLock, ZkOptions};
///
/// let zk = ZkOptions::new("127.0.0.1:2181").connect().await?;
/// let rw = RwLock::new(&zk, "/locks/catalog")?;
/// // Many readers at once...
/// let n = rw
///     .read_lock()
///     .synchronize(Some(Duration::from_secs(10)), |_term| async { Ok::<_, std::io::Error>(7) })
///     .await?;
/// // ...one writer, alone.
/// let guard = rw.write_lock().lock(Some(Duration::from_secs(10))).await?;
/// println!("writing under fencing token {}", guard.fencing_token());
/// guard.release().await?;
/// # let _ = n; Ok(()) }
/// ```
///
/// # Fairness: seed 003's FIFO, which is Curator's
///
/// Nodes are `<path>/_c_<uuid>-__READ__<sequence>` and `…-__WRIT__<sequence>`, ordered by
/// sequence. A write lock holds when its node is the first of all; a read lock holds when no
/// write node is ahead of it. So the queue `[ex00, sh01, sh02, sh03, ex04, ex05, sh06, sh07]`
/// plays out as the seed describes: `ex00` alone; then `sh01`–`sh03` together; then `ex04`;
/// then `ex05`; then `sh06`, `sh07` together. Shared locks never starve exclusive ones, nor the
/// other way round. These are exactly the grants of Curator 5.4's `InterProcessReadWriteLock`,
/// so a mixed queue of Java and Rust contenders keeps its order. Two differences, neither
/// changing who holds when:
///
/// - A waiting reader watches the *nearest* write node ahead of it; Curator's watches the
///   *first* one, so a Curator reader queued behind two writers wakes (and re-reads the
///   children) when the first goes, tenure's only when the one it waits for goes. A waiting
///   writer watches the node just ahead of it, reader or writer, as in Curator.
/// - Curator's locks are reentrant per thread, and its read lock is granted at once to the
///   thread holding the write lock. Tenure's are not reentrant (a second `lock` on an instance
///   that holds is [`LockError::AlreadyHeld`](crate::lock::LockError::AlreadyHeld)), but keeps the second rule per `RwLock` value:
///   a read lock taken while the same `RwLock`'s write lock is held is granted at once, which
///   allows downgrading (take the read lock, then release the write lock).
#[derive(Clone, Debug)]
pub struct RwLock {
    read: ReadLock,
    write: WriteLock,
}

impl RwLock {
    /// A read-write lock on `path` (absolute, as Curator takes it, or relative to the
    /// connection's [root](ZooKeeper::root)). [`Error::InvalidName`](crate::Error) for a path
    /// ZooKeeper cannot hold.
    pub fn new(zk: &ZooKeeper, path: &str) -> crate::Result<Self> {
        let write = LockCore::new(zk, path, Kind::Write)?;
        let mut read = write.clone();
        read.kind = Kind::Read;
        read.slot = Default::default();
        read.own_write = Some(write.slot.clone());
        Ok(RwLock {
            read: ReadLock { core: read },
            write: WriteLock { core: write },
        })
    }

    /// Sets the identity both halves write as their nodes' data.
    pub fn with_identity(self, identity: impl Into<String>) -> Self {
        let identity = identity.into();
        RwLock {
            read: self.read.with_identity(identity.clone()),
            write: self.write.with_identity(identity),
        }
    }

    /// Sets the grace of `synchronize`'s work after a suspension, for both halves (see
    /// [`ReadLock::with_lost_grace`]).
    pub fn with_lost_grace(self, grace: Duration) -> Self {
        RwLock {
            read: self.read.with_lost_grace(grace),
            write: self.write.with_lost_grace(grace),
        }
    }

    /// The shared half.
    pub fn read_lock(&self) -> &ReadLock {
        &self.read
    }

    /// The exclusive half.
    pub fn write_lock(&self) -> &WriteLock {
        &self.write
    }

    /// The lock's path.
    pub fn path(&self) -> &str {
        self.write.path()
    }

    /// All nodes of the lock, readers and writers, in queue order (full paths).
    pub async fn participants(&self) -> crate::Result<Vec<String>> {
        self.write.participants().await
    }

    /// Removes the lock's node if nobody uses it: takes the write lock without waiting,
    /// releases it, deletes the node if empty (see [`Mutex::cleanup`](super::Mutex::cleanup)).
    pub async fn cleanup(&self) -> LockResult<bool> {
        self.write.core.cleanup().await
    }
}

/// The shared half of an [`RwLock`] (Curator's `readLock()`, ZK::Locker's shared locker):
/// holds together with other readers while no writer is ahead in the queue.
#[derive(Clone)]
pub struct ReadLock {
    core: LockCore,
}

impl ReadLock {
    lock_methods!("read lock");
}

/// The exclusive half of an [`RwLock`] (Curator's `writeLock()`, ZK::Locker's exclusive
/// locker): holds alone, when its node is the first in the queue.
#[derive(Clone)]
pub struct WriteLock {
    core: LockCore,
}

impl WriteLock {
    lock_methods!("write lock");
}

impl std::fmt::Debug for ReadLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadLock")
            .field("path", &self.core.path)
            .field("identity", &self.core.identity)
            .finish()
    }
}

impl std::fmt::Debug for WriteLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteLock")
            .field("path", &self.core.path)
            .field("identity", &self.core.identity)
            .finish()
    }
}
