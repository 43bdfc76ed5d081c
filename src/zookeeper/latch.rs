//! [`LeaderLatch`]: leader election on Apache Curator's `LeaderLatch` node layout.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use zookeeper_client::{Client, Error as ZkError};

use super::connection::{map_err, ZooKeeper};
use super::recipe::{
    delete_if_empty, resolve_path, spawn_guaranteed_delete, step, synchronize, timed, Backoff,
    Claimed, Contender, Guard, Held, Kind, LockResult, Mode, Pending, Slot, Step, Waited,
    DEFAULT_LOST_GRACE,
};
use crate::lock::LockError;
use crate::term::{StopReason, Term};

/// Leader election on Apache Curator's `LeaderLatch` layout: the participant with the lowest
/// `<path>/_c_<uuid>-latch-<sequence>` node leads; Java services running a `LeaderLatch` on the
/// same path take part in the same election.
///
/// Two ways to use it:
///
/// - as an election, [`run`](Self::run): takes part until `shutdown`, calling
///   `on_started_leading` with a fresh [`Term`] each time it becomes leader — like
///   [`LeaderElector::run`](crate::LeaderElector::run), without leases to renew: leadership
///   lasts while the ZooKeeper session does;
/// - one-shot, [`acquire`](Self::acquire) / [`try_acquire`](Self::try_acquire) /
///   [`synchronize`](Self::synchronize): waits for leadership, holds a [`Guard`]; releasing
///   it leaves the latch (Curator's `close()`).
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tenure::zookeeper::{LeaderLatch, ZkOptions};
///
/// let zk = ZkOptions::new("127.0.0.1:2181").connect().await?;
/// // Curator: new LeaderLatch(client, "/election/scheduler", "scheduler-1")
/// let latch = LeaderLatch::new(&zk, "/election/scheduler")?.with_id("scheduler-1");
/// latch
///     .run(tokio::signal::ctrl_c().map(|_| ()), |term| async move {
///         println!("leading, fencing token {}", term.fencing_token());
///         term.cancelled().await; // lost (session suspended or expired), or shutting down
///     })
///     .await?;
/// # Ok(()) }
/// # use futures_util::FutureExt;
/// ```
///
/// # Session loss, as Curator's default policy
///
/// A suspended connection (disconnected) ends the term at once: its token is cancelled,
/// because the session may expire before the client hears of it, and another participant then
/// leads. The latch keeps its node meanwhile; when the connection comes back within the
/// session, it leads again if its node is still first (a new term, with a new fencing token),
/// as Curator's `LeaderLatch` does on `RECONNECTED`. When the session expired, it joins again
/// with a new node, at the end of the queue (Curator's `reset()` on `LOST`).
///
/// Before taking leadership the node's `ephemeralOwner` is checked against the current
/// session: a node left by an expired session, not yet removed by the server, is never
/// claimed (the double leader of CURATOR-696, fixed in Curator 5.7; Debian's 5.4 still has it).
///
/// The fencing token of each term is the zxid of a write the new leader makes to the node at
/// `path` itself — the parent of the participants' nodes — re-writing its data unchanged
/// with a version check: so a leader that leads again on the same node after a suspension
/// gets a token above every earlier one. That needs write permission on `path`. (Curator's
/// participants neither watch nor read that node's data.)
#[derive(Clone)]
pub struct LeaderLatch {
    zk: ZooKeeper,
    path: String,
    id: String,
    lost_grace: Duration,
    drain_timeout: Duration,
    slot: Slot,
}

impl std::fmt::Debug for LeaderLatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderLatch")
            .field("path", &self.path)
            .field("id", &self.id)
            .finish()
    }
}

impl LeaderLatch {
    /// A latch on `path` (absolute, as Curator takes it, or relative to the connection's
    /// [root](ZooKeeper::root)), with a fresh id.
    pub fn new(zk: &ZooKeeper, path: &str) -> crate::Result<Self> {
        Ok(LeaderLatch {
            zk: zk.clone(),
            path: resolve_path(zk, path)?,
            id: crate::elector::default_identity(),
            lost_grace: DEFAULT_LOST_GRACE,
            drain_timeout: Duration::from_secs(10),
            slot: Slot::default(),
        })
    }

    /// Sets the participant id, written as the node's data (Curator's `LeaderLatch` id; default
    /// `hostname_pid_random`).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// How long [`synchronize`](Self::synchronize)'s work may run on after leadership was lost
    /// to a suspended connection (default 1 s, at most half the session timeout).
    pub fn with_lost_grace(mut self, grace: Duration) -> Self {
        self.lost_grace = grace;
        self
    }

    /// How long [`run`](Self::run) waits for the work of a term that ended before aborting it
    /// (default 10 s, the elector's default).
    pub fn with_drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// The participant id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The latch's path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether this instance leads now (through `run` or a guard), by its own state.
    pub fn is_leader(&self) -> bool {
        self.slot.is_held()
    }

    /// The participants' nodes in queue order (full paths); the first leads.
    pub async fn participants(&self) -> crate::Result<Vec<String>> {
        self.contender().participants().await
    }

    /// The id of the leader (the data of the first node), if any.
    pub async fn leader(&self) -> crate::Result<Option<String>> {
        let Some(first) = self.participants().await?.into_iter().next() else {
            return Ok(None);
        };
        let client = self.zk.client().await?;
        match timed(&self.zk, "get", &self.path, client.get_data(&first)).await? {
            Ok((data, _)) => Ok(Some(String::from_utf8_lossy(&data).into_owned())),
            Err(ZkError::NoNode) => Ok(None),
            Err(e) => Err(map_err("get", &self.path, e)),
        }
    }

    /// Deletes the latch's node if no participant is left. `true` if deleted.
    pub async fn cleanup(&self) -> crate::Result<bool> {
        delete_if_empty(&self.zk, &self.path, &self.path).await
    }

    /// Joins the latch and waits at most `timeout` (`None`: without limit) for leadership.
    /// The guard's token is cancelled when leadership is lost; releasing it leaves the latch.
    /// [`LockError::Timeout`] when the time is up (the node is removed);
    /// [`LockError::AlreadyHeld`] while this instance leads.
    pub async fn acquire(&self, timeout: Option<Duration>) -> LockResult<Guard> {
        self.acquire_with(Mode::from_timeout(timeout)).await
    }

    /// Leadership if nobody is ahead, else [`LockError::WouldBlock`] (naming the leader); the
    /// node is removed again.
    pub async fn try_acquire(&self) -> LockResult<Guard> {
        self.acquire_with(Mode::Try).await
    }

    /// Waits for leadership (at most `timeout`), runs `work` with the term, leaves the latch,
    /// returns the work's value; [`LockError::Work`] for the work's error,
    /// [`LockError::Lost`] if leadership was lost meanwhile.
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

    /// Takes part in the election until `shutdown` resolves.
    ///
    /// Each time this participant becomes leader, `on_started_leading` is called with a fresh
    /// [`Term`] and the future it returns runs as a task:
    ///
    /// - leadership lost (connection suspended, session expired, node deleted): the term's
    ///   token is cancelled at once; the work gets `drain_timeout` to finish (then it is
    ///   aborted); the latch keeps its place across a suspension, or joins again;
    /// - the work returns by itself: the latch leaves (deletes its node) and joins again at the
    ///   end of the queue;
    /// - `shutdown`: the token is cancelled, the work drained, the node deleted; `run` returns
    ///   `Ok`.
    ///
    /// Transient store errors are retried; final ones (permission denied, an invalid path) end
    /// `run` with the error. Dropping the future leaves the latch in the background.
    pub async fn run<F, Fut>(
        &self,
        shutdown: impl Future<Output = ()> + Send,
        mut on_started_leading: F,
    ) -> crate::Result<()>
    where
        F: FnMut(Term) -> Fut + Send,
        Fut: Future<Output = ()> + Send + 'static,
    {
        tokio::pin!(shutdown);
        let contender = self.contender();
        let mut kept: Option<Pending> = None;
        let mut backoff = Backoff::new();
        loop {
            let pending = match kept.take() {
                Some(p) if !p.client().state().is_terminated() => p,
                _ => {
                    let created = tokio::select! {
                        _ = &mut shutdown => return Ok(()),
                        r = async {
                            let client = self.zk.client().await.map_err(Step::of)?;
                            contender.create(&client).await
                        } => r,
                    };
                    match created {
                        Ok(p) => p,
                        Err(Step::Fail(e)) => return Err(e),
                        Err(Step::Retry(e)) => {
                            tracing::debug!(latch = %self.path, error = %e, "zookeeper: retrying");
                            if pause(&mut backoff, shutdown.as_mut()).await {
                                return Ok(());
                            }
                            continue;
                        }
                    }
                }
            };
            let waited = tokio::select! {
                _ = &mut shutdown => {
                    pending.remove().await;
                    return Ok(());
                }
                w = contender.wait_turn(&pending, Mode::Wait(None)) => w,
            };
            let stat = match waited {
                Ok(Waited::Go(stat)) => stat,
                Ok(Waited::NotOurs) => {
                    // Another session's node: leave it alone, join again with a new node.
                    pending.forget();
                    continue;
                }
                // The node is gone: join again with a new node.
                Ok(_) => continue,
                Err(Step::Fail(e)) => {
                    pending.remove().await;
                    return Err(e);
                }
                Err(Step::Retry(e)) => {
                    tracing::debug!(latch = %self.path, error = %e, "zookeeper: retrying");
                    if pause(&mut backoff, shutdown.as_mut()).await {
                        pending.remove().await;
                        return Ok(());
                    }
                    kept = Some(pending);
                    continue;
                }
            };
            let token = match self.fresh_token(pending.client()).await {
                Ok(t) => t,
                Err(Step::Fail(e)) => {
                    pending.remove().await;
                    return Err(e);
                }
                Err(Step::Retry(e)) => {
                    tracing::debug!(latch = %self.path, error = %e, "zookeeper: retrying");
                    if pause(&mut backoff, shutdown.as_mut()).await {
                        pending.remove().await;
                        return Ok(());
                    }
                    kept = Some(pending);
                    continue;
                }
            };
            backoff = Backoff::new();
            let (client, node) = pending.disarm();
            let claimed = Claimed {
                client: client.clone(),
                node: node.clone(),
                stat,
            };
            let held = Held::start(&self.zk, &self.path, &self.id, claimed, token);
            self.slot.set(held.clone());
            let term = held.term().clone();
            let mut work = tokio::spawn(on_started_leading(term.clone()));
            enum End {
                Lost,
                Shutdown,
                Returned,
            }
            let end = tokio::select! {
                biased;
                _ = term.cancelled() => End::Lost,
                _ = &mut shutdown => End::Shutdown,
                _ = &mut work => End::Returned,
            };
            match end {
                End::Shutdown => {
                    term.end_with(StopReason::ShutDown);
                    self.drain(work).await;
                    self.slot.clear(&held);
                    let _ = held.release().await;
                    return Ok(());
                }
                End::Returned => {
                    self.slot.clear(&held);
                    let _ = held.release().await;
                    // Join again at the end of the queue, giving the others their turn.
                    if pause(&mut Backoff::new(), shutdown.as_mut()).await {
                        return Ok(());
                    }
                }
                End::Lost => {
                    self.drain(work).await;
                    self.slot.clear(&held);
                    if held.lost_to_suspension() && !client.state().is_terminated() {
                        // Keep the node; lead again if it is still first once reconnected.
                        held.finish_keeping_node(StopReason::Released);
                        let mut states = client.state_watcher();
                        loop {
                            let state = states.peek_state();
                            if state.is_terminated()
                                || matches!(
                                    state,
                                    zookeeper_client::SessionState::SyncConnected
                                        | zookeeper_client::SessionState::ConnectedReadOnly
                                )
                            {
                                break;
                            }
                            tokio::select! {
                                _ = &mut shutdown => {
                                    spawn_guaranteed_delete(client, node);
                                    return Ok(());
                                }
                                _ = states.changed() => {}
                            }
                        }
                        if !client.state().is_terminated() {
                            kept = Some(contender.adopt(client, node));
                        }
                    } else {
                        let _ = held.release().await;
                    }
                }
            }
        }
    }

    fn contender(&self) -> Contender<'_> {
        Contender {
            zk: &self.zk,
            name: &self.path,
            dir: &self.path,
            kind: Kind::Latch,
            data: self.id.as_bytes(),
            own_write: None,
        }
    }

    async fn acquire_with(&self, mode: Mode) -> LockResult<Guard> {
        self.slot
            .acquire(&self.path, mode, || async {
                let claimed = self.contender().acquire(mode).await?;
                let token = match self.fresh_token(&claimed.client).await {
                    Ok(t) => t,
                    Err(e) => {
                        let _ = super::recipe::delete_node(
                            &self.zk,
                            &claimed.client,
                            &claimed.node,
                            &self.path,
                        )
                        .await;
                        return Err(LockError::Store(e.into_error()));
                    }
                };
                Ok(Guard::new(Held::start(
                    &self.zk, &self.path, &self.id, claimed, token,
                )))
            })
            .await
    }

    /// A zxid above every earlier term's: re-writes the latch node's data unchanged (with a
    /// version check, so nothing another writer put there is lost) and takes the write's zxid.
    async fn fresh_token(&self, client: &Client) -> Result<u64, Step> {
        for _ in 0..10 {
            let (data, stat) =
                step(&self.zk, "fence", &self.path, client.get_data(&self.path)).await?;
            match timed(
                &self.zk,
                "fence",
                &self.path,
                client.set_data(&self.path, &data, Some(stat.version)),
            )
            .await
            {
                Ok(Ok(stat)) => return Ok(u64::try_from(stat.mzxid).unwrap_or(0)),
                Ok(Err(ZkError::BadVersion)) => continue,
                Ok(Err(e)) => return Err(Step::zk("fence", &self.path, e)),
                Err(e) => return Err(Step::Retry(e)),
            }
        }
        Err(Step::Retry(crate::Error::Conflict {
            store: super::connection::KIND,
            name: self.path.clone(),
        }))
    }

    async fn drain(&self, mut work: tokio::task::JoinHandle<()>) {
        if tokio::time::timeout(self.drain_timeout, &mut work)
            .await
            .is_err()
        {
            tracing::warn!(latch = %self.path, "zookeeper: the leader's work outlived the drain timeout; aborting it");
            work.abort();
        }
    }
}

/// Sleeps for the next backoff delay; `true` if `shutdown` came first.
async fn pause(backoff: &mut Backoff, shutdown: Pin<&mut impl Future<Output = ()>>) -> bool {
    tokio::select! {
        _ = shutdown => true,
        _ = backoff.sleep(None) => false,
    }
}
