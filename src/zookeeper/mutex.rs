//! [`Mutex`]: an exclusive lock on Apache Curator's `InterProcessMutex` node layout.

use std::future::Future;
use std::time::Duration;

use super::connection::{map_err, ZooKeeper};
use super::recipe::{
    delete_if_empty, resolve_path, synchronize, timed, Contender, Guard, Held, Kind, LockResult,
    Mode, Slot, DEFAULT_LOST_GRACE,
};
use crate::lock::LockError;
use crate::term::Term;

/// The lock machinery shared by [`Mutex`] and the halves of the
/// [`RwLock`](super::RwLock).
#[derive(Clone)]
pub(crate) struct LockCore {
    pub(crate) zk: ZooKeeper,
    pub(crate) path: String,
    pub(crate) kind: Kind,
    pub(crate) identity: String,
    pub(crate) lost_grace: Duration,
    pub(crate) slot: Slot,
    /// Read lock only: the write half of the same read-write lock.
    pub(crate) own_write: Option<Slot>,
}

impl LockCore {
    pub(crate) fn new(zk: &ZooKeeper, path: &str, kind: Kind) -> crate::Result<Self> {
        Ok(LockCore {
            zk: zk.clone(),
            path: resolve_path(zk, path)?,
            kind,
            identity: crate::elector::default_identity(),
            lost_grace: DEFAULT_LOST_GRACE,
            slot: Slot::default(),
            own_write: None,
        })
    }

    fn contender(&self) -> Contender<'_> {
        Contender {
            zk: &self.zk,
            name: &self.path,
            dir: &self.path,
            kind: self.kind,
            data: self.identity.as_bytes(),
            own_write: self.own_write.as_ref(),
        }
    }

    pub(crate) async fn acquire(&self, mode: Mode) -> LockResult<Guard> {
        self.slot
            .acquire(&self.path, mode, || async {
                let claimed = self.contender().acquire(mode).await?;
                // Nodes hold in the order they were created: the creation zxid of each
                // exclusive holder's node is above every earlier holder's.
                let token = u64::try_from(claimed.stat.czxid).unwrap_or(0);
                Ok(Guard::new(Held::start(
                    &self.zk,
                    &self.path,
                    &self.identity,
                    claimed,
                    token,
                )))
            })
            .await
    }

    pub(crate) async fn synchronize<T, E, F, Fut>(
        &self,
        timeout: Option<Duration>,
        work: F,
    ) -> LockResult<T, E>
    where
        F: FnOnce(Term) -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
    {
        let guard = self
            .acquire(Mode::from_timeout(timeout))
            .await
            .map_err(LockError::widen)?;
        synchronize(guard, self.lost_grace, work).await
    }

    pub(crate) async fn participants(&self) -> crate::Result<Vec<String>> {
        self.contender().participants().await
    }

    /// The identity in the first node of the queue: the holder (for a read-write lock, the
    /// first of the holders).
    pub(crate) async fn holder(&self) -> crate::Result<Option<String>> {
        let Some(first) = self.participants().await?.into_iter().next() else {
            return Ok(None);
        };
        let client = self.zk.client().await?;
        match timed(&self.zk, "get", &self.path, client.get_data(&first)).await? {
            Ok((data, _)) => Ok(Some(String::from_utf8_lossy(&data).into_owned())),
            Err(zookeeper_client::Error::NoNode) => Ok(None),
            Err(e) => Err(map_err("get", &self.path, e)),
        }
    }

    /// ZK::Locker's cleanup: take the lock without waiting, release it, then delete the lock's
    /// node if it is empty.
    pub(crate) async fn cleanup(&self) -> LockResult<bool> {
        // Nothing to remove (and taking the lock would create the node again).
        let client = self.zk.client().await.map_err(LockError::Store)?;
        let exists = timed(
            &self.zk,
            "cleanup",
            &self.path,
            client.check_stat(&self.path),
        )
        .await
        .map_err(LockError::Store)?
        .map_err(|e| LockError::Store(map_err("cleanup", &self.path, e)))?;
        if exists.is_none() {
            return Ok(false);
        }
        match self.acquire(Mode::Try).await {
            Ok(guard) => guard.release().await?,
            Err(LockError::WouldBlock { .. } | LockError::AlreadyHeld { .. }) => return Ok(false),
            Err(e) => return Err(e),
        }
        delete_if_empty(&self.zk, &self.path, &self.path)
            .await
            .map_err(LockError::Store)
    }
}

/// The methods every lock type shares, documented once per type.
macro_rules! lock_methods {
    ($what:literal) => {
        /// The lock's path (absolute, under the connect string's chroot).
        pub fn path(&self) -> &str {
            &self.core.path
        }

        /// This instance's identity, written as its node's data.
        pub fn identity(&self) -> &str {
            &self.core.identity
        }

        /// Sets the identity written as the node's data (default: `hostname_pid_random`).
        pub fn with_identity(mut self, identity: impl Into<String>) -> Self {
            self.core.identity = identity.into();
            self
        }

        /// How long [`synchronize`](Self::synchronize)'s work may run on after the holding
        /// was lost to a suspended connection (default 1 s; at most half the session timeout
        /// after the loss, before which the session cannot have expired). After an expiry or a
        /// deletion the work is dropped at once: somebody else may hold the lock already.
        pub fn with_lost_grace(mut self, grace: Duration) -> Self {
            self.core.lost_grace = grace;
            self
        }

        #[doc = concat!("Takes the ", $what, ", waiting at most `timeout` (`None`: without limit, as Curator's `acquire()`).")]
        ///
        /// Queues a node and waits for its turn, watching only the node it waits for.
        /// [`LockError::Timeout`](crate::lock::LockError::Timeout) when the time is up (the node is removed);
        /// [`LockError::AlreadyHeld`](crate::lock::LockError::AlreadyHeld) if this instance (or a clone) holds it already;
        /// [`LockError::Store`](crate::lock::LockError::Store) for final store errors (transient ones are retried until the
        /// timeout). Cancellation safe: a dropped call removes its node.
        pub async fn lock(&self, timeout: Option<Duration>) -> LockResult<Guard> {
            self.core.acquire(Mode::from_timeout(timeout)).await
        }

        #[doc = concat!("Takes the ", $what, " only if that needs no waiting, else [`LockError::WouldBlock`](crate::lock::LockError::WouldBlock) (naming the holder).")]
        ///
        /// Queues a node, looks once, and removes it again if it would have to wait (the
        /// non-blocking lock of ZK::Locker; Curator's `acquire(0, …)`). Store errors are not
        /// retried.
        pub async fn try_lock(&self) -> LockResult<Guard> {
            self.core.acquire(Mode::Try).await
        }

        #[doc = concat!("Takes the ", $what, " (waiting at most `timeout`), runs `work` with the term, releases, and returns the work's value.")]
        ///
        /// - A loss (session suspended or expired, node deleted) cancels the term's token, the
        ///   work gets its [grace](Self::with_lost_grace), and the call returns
        ///   [`LockError::Lost`](crate::lock::LockError::Lost).
        /// - The work's own error comes back unchanged as [`LockError::Work`](crate::lock::LockError::Work).
        pub async fn synchronize<T, E, F, Fut>(
            &self,
            timeout: Option<Duration>,
            work: F,
        ) -> LockResult<T, E>
        where
            F: FnOnce(Term) -> Fut,
            Fut: Future<Output = std::result::Result<T, E>>,
        {
            self.core.synchronize(timeout, work).await
        }

        /// Whether this instance holds it, by its own state (no store call).
        pub fn is_held(&self) -> bool {
            self.core.slot.is_held()
        }

        /// Releases what this instance holds, wherever its guard is.
        /// [`LockError::NotHeld`](crate::lock::LockError::NotHeld) if it holds nothing.
        pub async fn unlock(&self) -> LockResult<()> {
            self.core.slot.unlock(&self.core.path).await
        }

        /// The lock's nodes in queue order, as full paths (Curator's `getParticipantNodes`).
        pub async fn participants(&self) -> crate::Result<Vec<String>> {
            self.core.participants().await
        }

        /// The identity (node data) of the first node in the queue — the holder — if any.
        pub async fn holder(&self) -> crate::Result<Option<String>> {
            self.core.holder().await
        }
    };
}
pub(crate) use lock_methods;

/// An exclusive lock on Apache Curator's `InterProcessMutex` layout: a Java service holding an
/// `InterProcessMutex` on the same path excludes this lock and is excluded by it, in one FIFO
/// queue.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use tenure::lock::LockError;
/// use tenure::zookeeper::{Mutex, ZkOptions};
///
/// let zk = ZkOptions::new("127.0.0.1:2181").connect().await?;
/// // The same path a Curator service passes to `new InterProcessMutex(client, "/locks/nightly")`.
/// let mutex = Mutex::new(&zk, "/locks/nightly")?;
/// match mutex
///     .synchronize(Some(Duration::from_secs(30)), |term| async move {
///         // Only one holder at a time, Java or Rust. Stop when term.cancelled() fires
///         // (session suspended or lost); pass term.fencing_token() to side effects.
///         Ok::<_, std::io::Error>(42)
///     })
///     .await
/// {
///     Ok(n) => println!("done: {n}"),
///     Err(LockError::Work(e)) => println!("the work failed: {e}"),
///     Err(LockError::Lost { reason, .. }) => println!("lost the lock: {reason}"),
///     Err(e) => println!("could not run: {e}"),
/// }
///
/// // Or hold a guard:
/// let guard = mutex.lock(Some(Duration::from_secs(5))).await?;
/// tokio::select! {
///     _ = guard.token().cancelled() => println!("lost: {:?}", guard.lost_reason()),
///     _ = tokio::time::sleep(Duration::from_secs(1)) => guard.release().await?,
/// }
/// # Ok(()) }
/// ```
///
/// Nodes: `<path>/_c_<uuid>-lock-<sequence>`, ephemeral, holding in sequence order; each
/// waiter watches the node just ahead of it. Not reentrant: a second `lock` while this instance
/// (or a clone) holds it is [`LockError::AlreadyHeld`]; separate instances contend.
#[derive(Clone)]
pub struct Mutex {
    core: LockCore,
}

impl std::fmt::Debug for Mutex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mutex")
            .field("path", &self.core.path)
            .field("identity", &self.core.identity)
            .finish()
    }
}

impl Mutex {
    /// An exclusive lock on `path`: absolute (from the connect string's chroot), as Curator
    /// takes it, or relative to the connection's [root](ZooKeeper::root). Nothing is created
    /// until the first `lock`. [`Error::InvalidName`](crate::Error::InvalidName) for a path ZooKeeper cannot hold.
    pub fn new(zk: &ZooKeeper, path: &str) -> crate::Result<Self> {
        Ok(Mutex {
            core: LockCore::new(zk, path, Kind::Mutex)?,
        })
    }

    lock_methods!("lock");

    /// Removes the lock's node if nobody uses it (ZK::Locker's `cleanup`): takes the lock
    /// without waiting, releases it, and deletes the lock's node if it is then empty. `false`
    /// if the lock is in use or the node already gone. Safe against contenders arriving
    /// meanwhile: ZooKeeper deletes only empty nodes, and a contender whose parent vanished
    /// creates it again.
    ///
    /// Parents tenure and Curator create are container nodes, which the server also removes
    /// once empty (every `znode.container.checkIntervalMs`, 60 s by default); this is for
    /// parents created otherwise, or to remove them at once.
    pub async fn cleanup(&self) -> LockResult<bool> {
        self.core.cleanup().await
    }
}

/// Removes every empty recipe node under `parent` (ZK::Locker's `cleanup(client,
/// root_lock_node)`, for the recipes' parents): each child of `parent`, and their children
/// such as a semaphore's `locks` and `leases`, is deleted if it is empty. Returns the deleted
/// paths. `parent` is resolved like a recipe path.
///
/// Safe while the recipes are in use: ZooKeeper deletes only empty nodes, atomically, and a
/// contender whose parent vanished creates it again. Protected recipe nodes (`_c_…`) are never
/// touched.
///
/// ```no_run
/// # async fn f(zk: tenure::zookeeper::ZooKeeper) -> tenure::Result<()> {
/// let removed = tenure::zookeeper::cleanup(&zk, "/locks").await?;
/// println!("removed {} unused lock nodes", removed.len());
/// # Ok(()) }
/// ```
pub async fn cleanup(zk: &ZooKeeper, parent: &str) -> crate::Result<Vec<String>> {
    let parent = resolve_path(zk, parent)?;
    let mut removed = Vec::new();
    let client = zk.client().await?;
    let children = match timed(zk, "cleanup", &parent, client.list_children(&parent)).await? {
        Ok(c) => c,
        Err(zookeeper_client::Error::NoNode) => return Ok(removed),
        Err(e) => return Err(map_err("cleanup", &parent, e)),
    };
    for child in children {
        if child.starts_with(super::recipe::PROTECTED_PREFIX) {
            continue;
        }
        let dir = format!("{parent}/{child}");
        // One level down: a semaphore's `locks` and `leases`.
        let grandchildren = match timed(zk, "cleanup", &dir, client.list_children(&dir)).await? {
            Ok(c) => c,
            Err(zookeeper_client::Error::NoNode) => continue,
            Err(e) => return Err(map_err("cleanup", &dir, e)),
        };
        for g in grandchildren {
            if g.starts_with(super::recipe::PROTECTED_PREFIX) {
                continue;
            }
            let sub = format!("{dir}/{g}");
            if delete_if_empty(zk, &sub, &sub).await? {
                removed.push(sub);
            }
        }
        if delete_if_empty(zk, &dir, &dir).await? {
            removed.push(dir);
        }
    }
    Ok(removed)
}
