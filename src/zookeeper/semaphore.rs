//! [`Semaphore`]: a counting semaphore on Apache Curator's `InterProcessSemaphoreV2` layout.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use zookeeper_client::{Client, Error as ZkError};

use super::connection::ZooKeeper;
use super::recipe::{
    delete_if_empty, delete_node, far_future, resolve_path, spawn_guaranteed_delete, step,
    synchronize, timed, Backoff, Claimed, Contender, Guard, Held, Kind, LockResult, Mode, Step,
    DEFAULT_LOST_GRACE,
};
use crate::error::Error;
use crate::lock::LockError;
use crate::term::Term;

/// A counting semaphore of `max_leases` on Apache Curator's `InterProcessSemaphoreV2` layout:
/// Java services holding leases of an `InterProcessSemaphoreV2` on the same path (with the same
/// `maxLeases`) share the count with this one.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use tenure::zookeeper::{Semaphore, ZkOptions};
///
/// let zk = ZkOptions::new("127.0.0.1:2181").connect().await?;
/// // At most 3 exports at a time, across every process (Curator: `new InterProcessSemaphoreV2(client, "/limits/export", 3)`).
/// let exports = Semaphore::new(&zk, "/limits/export", 3)?;
/// let lease = exports.acquire(Some(Duration::from_secs(60))).await?;
/// // ... export, stopping if lease.token() is cancelled ...
/// lease.release().await?;
///
/// let rows = exports
///     .synchronize(None, |_term| async { Ok::<_, std::io::Error>(1000) })
///     .await?;
/// # let _ = rows; Ok(()) }
/// ```
///
/// # Layout and fairness
///
/// As Curator's: an acquirer first takes the internal exclusive lock `<path>/locks` (an
/// `InterProcessMutex`: `_c_<uuid>-lock-<sequence>` nodes, FIFO, each waiter watching the one
/// ahead), then creates its lease `<path>/leases/_c_<uuid>-lease-<sequence>` (ephemeral,
/// holding the acquirer's identity), and, still under the lock, waits until the leases number
/// at most `max_leases` (watching the children of `leases`: only the head of the queue waits
/// there). Then it releases the internal lock and holds the lease. Acquirers are served in
/// arrival order. Every child of `leases` counts, as in Curator; all users of a path must
/// agree on `max_leases` (Curator does not check it either).
///
/// One `Semaphore` value may hold several leases at once (each [`acquire`](Self::acquire) is
/// one lease, one [`Guard`]).
#[derive(Clone)]
pub struct Semaphore {
    zk: ZooKeeper,
    path: String,
    locks: String,
    leases: String,
    max_leases: u32,
    identity: String,
    lost_grace: Duration,
}

impl std::fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Semaphore")
            .field("path", &self.path)
            .field("max_leases", &self.max_leases)
            .field("identity", &self.identity)
            .finish()
    }
}

/// The internal lock's node, deleted when dropped (the semaphore's acquisition holds it only
/// while it creates and counts its lease).
struct InternalLock {
    zk: ZooKeeper,
    name: String,
    client: Client,
    node: Option<String>,
}

impl InternalLock {
    async fn release(mut self) {
        if let Some(node) = self.node.take() {
            let _ = delete_node(&self.zk, &self.client, &node, &self.name).await;
        }
    }
}

impl Drop for InternalLock {
    fn drop(&mut self) {
        if let Some(node) = self.node.take() {
            spawn_guaranteed_delete(self.client.clone(), node);
        }
    }
}

impl Semaphore {
    /// A semaphore of `max_leases` (at least 1) on `path` (absolute, as Curator takes it, or
    /// relative to the connection's [root](ZooKeeper::root)).
    pub fn new(zk: &ZooKeeper, path: &str, max_leases: u32) -> crate::Result<Self> {
        if max_leases == 0 {
            return Err(Error::config("a semaphore needs max_leases ≥ 1"));
        }
        let path = resolve_path(zk, path)?;
        Ok(Semaphore {
            zk: zk.clone(),
            locks: format!("{path}/locks"),
            leases: format!("{path}/leases"),
            path,
            max_leases,
            identity: crate::elector::default_identity(),
            lost_grace: DEFAULT_LOST_GRACE,
        })
    }

    /// Sets the identity written as the lease nodes' data (default: `hostname_pid_random`).
    pub fn with_identity(mut self, identity: impl Into<String>) -> Self {
        self.identity = identity.into();
        self
    }

    /// How long [`synchronize`](Self::synchronize)'s work may run on after its lease was lost
    /// to a suspended connection (default 1 s, at most half the session timeout).
    pub fn with_lost_grace(mut self, grace: Duration) -> Self {
        self.lost_grace = grace;
        self
    }

    /// The semaphore's path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The number of leases.
    pub fn max_leases(&self) -> u32 {
        self.max_leases
    }

    /// The identity written in this instance's lease nodes.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Takes one lease, waiting at most `timeout` (`None`: without limit) for one to be free
    /// and for the acquirers ahead. [`LockError::Timeout`] when the time is up (nothing is left
    /// behind); [`LockError::Store`] for final store errors (transient ones are retried).
    /// Cancellation safe.
    pub async fn acquire(&self, timeout: Option<Duration>) -> LockResult<Guard> {
        self.acquire_with(Mode::from_timeout(timeout)).await
    }

    /// Takes a lease only if one is free and nobody is queued, else
    /// [`LockError::WouldBlock`].
    pub async fn try_acquire(&self) -> LockResult<Guard> {
        self.acquire_with(Mode::Try).await
    }

    /// Takes a lease (waiting at most `timeout`), runs `work` with its term, returns the lease
    /// and the work's value. The work's error is [`LockError::Work`]; a lost lease cancels the
    /// term's token and ends in [`LockError::Lost`].
    pub async fn synchronize<T, E, F, Fut>(
        &self,
        timeout: Option<Duration>,
        work: F,
    ) -> LockResult<T, E>
    where
        F: FnOnce(Term) -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
    {
        let guard = self.acquire(timeout).await.map_err(LockError::widen)?;
        synchronize(guard, self.lost_grace, work).await
    }

    /// The lease nodes (full paths), as Curator's `getParticipantNodes`.
    pub async fn leases(&self) -> crate::Result<Vec<String>> {
        self.lease_contender().participants().await
    }

    /// Removes the semaphore's nodes if nobody uses them: its `leases` and `locks` nodes if
    /// empty, then its own node if empty. `true` if the semaphore's node was removed. Safe
    /// against acquirers arriving meanwhile (see [`Mutex::cleanup`](super::Mutex::cleanup)).
    pub async fn cleanup(&self) -> crate::Result<bool> {
        delete_if_empty(&self.zk, &self.path, &self.leases).await?;
        delete_if_empty(&self.zk, &self.path, &self.locks).await?;
        delete_if_empty(&self.zk, &self.path, &self.path).await
    }

    fn lock_contender(&self) -> Contender<'_> {
        Contender {
            zk: &self.zk,
            name: &self.path,
            dir: &self.locks,
            kind: Kind::Mutex,
            data: self.identity.as_bytes(),
            own_write: None,
        }
    }

    fn lease_contender(&self) -> Contender<'_> {
        Contender {
            zk: &self.zk,
            name: &self.path,
            dir: &self.leases,
            kind: Kind::Lease,
            data: self.identity.as_bytes(),
            own_write: None,
        }
    }

    async fn acquire_with(&self, mode: Mode) -> LockResult<Guard> {
        let started = Instant::now();
        let deadline = mode.deadline();
        let timed_out = || LockError::Timeout {
            name: self.path.clone(),
            waited: started.elapsed(),
        };
        let mut backoff = Backoff::new();
        loop {
            // The internal lock: FIFO among acquirers.
            let claimed = self
                .lock_contender()
                .acquire(mode)
                .await
                .map_err(|e| match e {
                    LockError::WouldBlock { name, .. } => {
                        LockError::WouldBlock { name, holder: None }
                    }
                    e => e,
                })?;
            let Claimed { client, node, .. } = claimed;
            let internal = InternalLock {
                zk: self.zk.clone(),
                name: self.path.clone(),
                client: client.clone(),
                node: Some(node),
            };
            let outcome = self.take_lease(&client, mode).await;
            internal.release().await;
            let step = match outcome {
                Ok(Lease::Held(guard)) => return Ok(guard),
                Ok(Lease::Lost) => None,
                Ok(Lease::WouldBlock) => {
                    return Err(LockError::WouldBlock {
                        name: self.path.clone(),
                        holder: None,
                    })
                }
                Ok(Lease::TimedOut) => return Err(timed_out()),
                Err(step) => Some(step),
            };
            match step {
                Some(Step::Fail(e)) => return Err(LockError::Store(e)),
                Some(Step::Retry(e)) if matches!(mode, Mode::Try) => {
                    return Err(LockError::Store(e))
                }
                Some(Step::Retry(e)) => {
                    tracing::debug!(semaphore = %self.path, error = %e, "zookeeper: retrying");
                    if !backoff.sleep(deadline).await {
                        return Err(timed_out());
                    }
                }
                None => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(timed_out());
                    }
                }
            }
        }
    }

    /// Under the internal lock: creates the lease and waits until the leases number at most
    /// `max_leases`.
    async fn take_lease(&self, client: &Client, mode: Mode) -> Result<Lease, Step> {
        let contender = self.lease_contender();
        let lease = contender.create(client).await?;
        let ours = lease.node_name().to_owned();
        let deadline = mode.deadline();
        loop {
            let (children, _, watcher) = match timed(
                &self.zk,
                "list",
                &self.path,
                client.get_and_watch_children(&self.leases),
            )
            .await
            {
                Ok(Ok(v)) => v,
                Ok(Err(ZkError::NoNode)) => return Ok(Lease::Lost),
                Ok(Err(e)) => return Err(Step::zk("list", &self.path, e)),
                Err(e) => return Err(Step::Retry(e)),
            };
            if !children.contains(&ours) {
                return Ok(Lease::Lost);
            }
            if children.len() <= self.max_leases as usize {
                break;
            }
            match mode {
                Mode::Try => {
                    lease.remove().await;
                    return Ok(Lease::WouldBlock);
                }
                Mode::Wait(_) => {
                    tokio::select! {
                        _ = watcher.changed() => {}
                        _ = tokio::time::sleep_until(deadline.unwrap_or_else(far_future)) => {
                            lease.remove().await;
                            return Ok(Lease::TimedOut);
                        }
                    }
                }
            }
        }
        // CURATOR-696: claim only a lease owned by the current session.
        let stat = match step(&self.zk, "get", &self.path, client.check_stat(lease.path())).await? {
            Some(stat) if stat.ephemeral_owner == client.session_id().0 => stat,
            Some(_) => {
                lease.forget();
                return Ok(Lease::Lost);
            }
            None => return Ok(Lease::Lost),
        };
        let (client, node) = lease.disarm();
        // Leases are created in the internal lock's FIFO order: creation zxids increase.
        let token = u64::try_from(stat.czxid).unwrap_or(0);
        let held = Held::start(
            &self.zk,
            &self.path,
            &self.identity,
            Claimed { client, node, stat },
            token,
        );
        Ok(Lease::Held(Guard::new(held)))
    }
}

/// How taking a lease ended.
enum Lease {
    Held(Guard),
    /// The lease vanished (session expired): start over.
    Lost,
    WouldBlock,
    TimedOut,
}
