//! The machinery the ZooKeeper recipes share: Apache Curator's node names and ordering rules,
//! protected creates, the wait for one's turn (watching only the predecessor), the guard and
//! its session monitor, and `synchronize`.
//!
//! # Node layout (Curator's)
//!
//! A contender creates one ephemeral sequential node in the recipe's directory, named
//! `_c_<uuid>-<lock name><sequence>` — Curator's *protection mode*: the random UUID lets a
//! contender whose create reply was lost (connection loss, timeout) find its node again by
//! prefix. Lock names: `lock-` (InterProcessMutex, and the internal mutex of the semaphore),
//! `__READ__` / `__WRIT__` (InterProcessReadWriteLock), `lease-` (InterProcessSemaphoreV2's
//! leases), `latch-` (LeaderLatch). Nodes are ordered as Curator orders them
//! (`StandardLockInternalsDriver.fixForSorting`): by what follows the last occurrence of the
//! lock name — the sequence — and a name without it by the whole name. Missing parents are
//! created as container nodes (`creatingParentContainersIfNeeded`), so the server removes
//! them once empty.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use zookeeper_client::{
    Client, CreateMode, Error as ZkError, EventType, MultiReadResult, SessionId, SessionState, Stat,
};

use super::connection::{forbidden_char, map_err, ZooKeeper, KIND};
use crate::error::Error;
use crate::lock::LockError;
use crate::term::{LostReason, StopReason, Term};

/// `Result` of the recipes: [`LockError`], with the work's own error `E` kept apart.
pub type LockResult<T, E = std::convert::Infallible> = std::result::Result<T, LockError<E>>;

/// Curator's protection prefix: `_c_` + UUID + `-`.
pub(crate) const PROTECTED_PREFIX: &str = "_c_";
/// InterProcessReadWriteLock's read lock name.
pub(crate) const READ_LOCK_NAME: &str = "__READ__";
/// InterProcessReadWriteLock's write lock name.
pub(crate) const WRITE_LOCK_NAME: &str = "__WRIT__";

/// Which recipe a node belongs to: its lock name and its ordering rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// InterProcessMutex (`lock-`): the lowest node holds.
    Mutex,
    /// The read half of InterProcessReadWriteLock (`__READ__`): holds when no write node is
    /// ahead.
    Read,
    /// The write half (`__WRIT__`): the lowest node of all, readers included, holds.
    Write,
    /// LeaderLatch (`latch-`): the lowest node leads.
    Latch,
    /// InterProcessSemaphoreV2's lease (`lease-`): counted, not ordered.
    Lease,
}

impl Kind {
    /// The lock name inside the node name.
    pub(crate) fn lock_name(self) -> &'static str {
        match self {
            Kind::Mutex => "lock-",
            Kind::Read => READ_LOCK_NAME,
            Kind::Write => WRITE_LOCK_NAME,
            Kind::Latch => "latch-",
            Kind::Lease => "lease-",
        }
    }

    /// The names Curator strips before comparing (the read-write lock strips both).
    fn sort_names(self) -> &'static [&'static str] {
        match self {
            Kind::Read | Kind::Write => &[READ_LOCK_NAME, WRITE_LOCK_NAME],
            Kind::Mutex => &["lock-"],
            Kind::Latch => &["latch-"],
            Kind::Lease => &["lease-"],
        }
    }
}

/// Curator's `StandardLockInternalsDriver.standardFixForSorting`: what follows the last
/// occurrence of `lock_name`, or the whole name if it does not occur.
pub(crate) fn fix_for_sorting<'a>(name: &'a str, lock_name: &str) -> &'a str {
    match name.rfind(lock_name) {
        Some(i) => &name[i + lock_name.len()..],
        None => name,
    }
}

/// The key Curator sorts a node name by, for the recipe `kind`.
pub(crate) fn sort_key(name: &str, kind: Kind) -> &str {
    kind.sort_names()
        .iter()
        .fold(name, |s, lock_name| fix_for_sorting(s, lock_name))
}

/// Sorts node names into Curator's queue order (stable, as Java's `Collections.sort`).
pub(crate) fn sort_nodes(names: &mut [String], kind: Kind) {
    names.sort_by(|a, b| sort_key(a, kind).cmp(sort_key(b, kind)));
}

/// Whether a contender holds, given the sorted children of the directory.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Turn<'a> {
    /// It holds.
    Go,
    /// It waits; it watches this node (and only this one).
    WaitFor(&'a str),
    /// Its node is not among the children.
    Missing,
}

/// Curator's rules, with one refinement for readers:
///
/// - mutex, write lock, latch: the lowest node of all holds; the others watch the node just
///   ahead of them (`StandardLockInternalsDriver`, maxLeases 1). Every child counts, as in
///   Curator: the write lock's queue includes the read nodes.
/// - read lock: holds when no write node is ahead of it (`ourIndex < firstWriteIndex`). Curator
///   makes a waiting reader watch the *first* write node; here it watches the *nearest* write
///   node ahead of it, which must go before it may hold anyway — the same grants, without the
///   wake-ups a reader queued behind several writers gets from each of them in Curator.
pub(crate) fn turn<'a>(kind: Kind, sorted: &'a [String], ours: &str) -> Turn<'a> {
    match kind {
        Kind::Read => {
            let mut nearest_writer = None;
            for node in sorted {
                if node == ours {
                    return match nearest_writer {
                        None => Turn::Go,
                        Some(w) => Turn::WaitFor(w),
                    };
                }
                if node.contains(WRITE_LOCK_NAME) {
                    nearest_writer = Some(node.as_str());
                }
            }
            Turn::Missing
        }
        _ => match sorted.iter().position(|n| n == ours) {
            None => Turn::Missing,
            Some(0) => Turn::Go,
            Some(i) => Turn::WaitFor(&sorted[i - 1]),
        },
    }
}

/// A random (version 4) UUID in canonical form, as Java's `UUID.randomUUID().toString()`.
pub(crate) fn new_uuid() -> String {
    use rand::Rng;
    let mut b: [u8; 16] = rand::thread_rng().gen();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Resolves a recipe path: an absolute path (from the connect string's chroot) is taken as is,
/// as Curator takes it; a relative one is placed under the connection's root.
pub(crate) fn resolve_path(zk: &ZooKeeper, path: &str) -> crate::Result<String> {
    let full = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{}/{}", zk.root(), path)
    };
    let bad = |reason: &str| {
        Err(Error::InvalidName {
            store: KIND,
            name: path.to_owned(),
            reason: reason.to_owned(),
        })
    };
    if path.is_empty() {
        return bad("a recipe path must not be empty");
    }
    if full == "/" {
        return bad("a recipe needs a node of its own, not /");
    }
    if full.ends_with('/') {
        return bad("must not end with '/'");
    }
    for part in full[1..].split('/') {
        match part {
            "" => return bad("has an empty component"),
            "." | ".." => return bad("has a '.' or '..' component"),
            _ => {}
        }
        if part.chars().any(forbidden_char) {
            return bad("has a character ZooKeeper does not allow in paths");
        }
    }
    if full == "/zookeeper" || full.starts_with("/zookeeper/") {
        return bad("is inside ZooKeeper's reserved /zookeeper subtree");
    }
    Ok(full)
}

/// Runs one ZooKeeper call under the connection's call timeout.
pub(crate) async fn timed<T>(
    zk: &ZooKeeper,
    operation: &'static str,
    name: &str,
    fut: impl Future<Output = Result<T, ZkError>>,
) -> Result<Result<T, ZkError>, Error> {
    let after = zk.timeout();
    match tokio::time::timeout(after, fut).await {
        Ok(r) => Ok(r),
        Err(_) => Err(Error::Timeout {
            store: KIND,
            operation,
            name: name.to_owned(),
            after,
        }),
    }
}

/// What to do after a failed step.
#[derive(Debug)]
pub(crate) enum Step {
    /// Transient (connection loss, timeout, expired session): try again, with a new node if
    /// the session changed.
    Retry(Error),
    /// Final: report it.
    Fail(Error),
}

impl Step {
    pub(crate) fn zk(operation: &'static str, name: &str, e: ZkError) -> Step {
        match e {
            ZkError::ConnectionLoss
            | ZkError::SessionExpired
            | ZkError::SessionMoved
            | ZkError::ClientClosed
            | ZkError::NoHosts
            | ZkError::Timeout
            | ZkError::Throttled
            | ZkError::NotReadOnly => Step::Retry(map_err(operation, name, e)),
            e => Step::Fail(map_err(operation, name, e)),
        }
    }

    pub(crate) fn of(e: Error) -> Step {
        if e.is_retryable() {
            Step::Retry(e)
        } else {
            Step::Fail(e)
        }
    }

    pub(crate) fn into_error(self) -> Error {
        match self {
            Step::Retry(e) | Step::Fail(e) => e,
        }
    }
}

/// Runs a timed call, classifying its failures.
pub(crate) async fn step<T>(
    zk: &ZooKeeper,
    operation: &'static str,
    name: &str,
    fut: impl Future<Output = Result<T, ZkError>>,
) -> Result<T, Step> {
    match timed(zk, operation, name, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Step::zk(operation, name, e)),
        Err(e) => Err(Step::Retry(e)),
    }
}

/// Exponential backoff between attempts, bounded by a deadline.
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff {
            next: Duration::from_millis(50),
        }
    }

    /// Sleeps for the next delay; `false` (at once) if the deadline comes first.
    pub(crate) async fn sleep(&mut self, deadline: Option<Instant>) -> bool {
        let wake = Instant::now() + self.next;
        self.next = (self.next * 2).min(Duration::from_secs(1));
        match deadline {
            Some(d) if d <= wake => {
                tokio::time::sleep_until(d).await;
                false
            }
            _ => {
                tokio::time::sleep_until(wake).await;
                true
            }
        }
    }
}

/// How an acquisition waits.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Mode {
    /// Waits for its turn until the deadline (`None`: without limit).
    Wait(Option<Instant>),
    /// One look: holds at once or gives up.
    Try,
}

impl Mode {
    pub(crate) fn deadline(self) -> Option<Instant> {
        match self {
            Mode::Wait(d) => d,
            Mode::Try => None,
        }
    }

    pub(crate) fn from_timeout(timeout: Option<Duration>) -> Mode {
        Mode::Wait(timeout.and_then(|t| Instant::now().checked_add(t)))
    }
}

/// A node this process created (or is creating). Deleted in the background when dropped while
/// still armed — a cancelled acquisition leaves nothing behind; when its path is unknown (the
/// create reply was lost), it is found by its protected prefix.
pub(crate) struct Pending {
    zk: ZooKeeper,
    client: Client,
    name: String,
    dir: String,
    prefix: String,
    path: Option<String>,
    armed: bool,
}

impl Pending {
    pub(crate) fn path(&self) -> &str {
        self.path.as_deref().unwrap_or_default()
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// The last component of the node's path.
    pub(crate) fn node_name(&self) -> &str {
        let p = self.path();
        &p[p.rfind('/').map_or(0, |i| i + 1)..]
    }

    /// Leaves the node alone: neither kept nor deleted (it is another session's).
    pub(crate) fn forget(mut self) {
        self.armed = false;
    }

    /// Keeps the node: the caller owns it from now on.
    pub(crate) fn disarm(mut self) -> (Client, String) {
        self.armed = false;
        (self.client.clone(), self.path.take().unwrap_or_default())
    }

    /// Deletes the node now (best effort, within the call timeout); if that fails, in the
    /// background until the session ends.
    pub(crate) async fn remove(mut self) {
        self.armed = false;
        let Some(path) = self.path.take() else {
            spawn_remove_by_prefix(self.client.clone(), self.dir.clone(), self.prefix.clone());
            return;
        };
        let _ = delete_node(&self.zk, &self.client, &path, &self.name).await;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        match self.path.take() {
            Some(path) => spawn_guaranteed_delete(self.client.clone(), path),
            None => {
                spawn_remove_by_prefix(self.client.clone(), self.dir.clone(), self.prefix.clone())
            }
        }
    }
}

/// Deletes `path` now, within the call timeout. A node already gone, or whose session ended
/// (taking its ephemeral nodes with it), counts as deleted. On a transient failure the delete is
/// retried in the background until it succeeds or the session ends (Curator's `guaranteed()`
/// delete), and the failure is returned.
pub(crate) async fn delete_node(
    zk: &ZooKeeper,
    client: &Client,
    path: &str,
    name: &str,
) -> crate::Result<()> {
    match timed(zk, "delete", name, client.delete(path, None)).await {
        Ok(Ok(())) | Ok(Err(ZkError::NoNode | ZkError::SessionExpired | ZkError::ClientClosed)) => {
            Ok(())
        }
        Ok(Err(e)) => {
            let err = map_err("delete", name, e.clone());
            if matches!(Step::zk("delete", name, e), Step::Retry(_)) {
                spawn_guaranteed_delete(client.clone(), path.to_owned());
            }
            Err(err)
        }
        Err(timeout) => {
            spawn_guaranteed_delete(client.clone(), path.to_owned());
            Err(timeout)
        }
    }
}

/// Runs `fut` on the current Tokio runtime, if there is one (drops happen anywhere).
fn spawn_detached(fut: impl Future<Output = ()> + Send + 'static) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(fut);
    }
}

/// Deletes `path` in the background, retrying until it is gone or the session has ended.
pub(crate) fn spawn_guaranteed_delete(client: Client, path: String) {
    spawn_detached(async move {
        let mut backoff = Backoff::new();
        loop {
            if client.state().is_terminated() {
                return;
            }
            match tokio::time::timeout(Duration::from_secs(5), client.delete(&path, None)).await {
                Ok(
                    Ok(()) | Err(ZkError::NoNode | ZkError::SessionExpired | ZkError::ClientClosed),
                ) => return,
                Ok(Err(
                    ZkError::ConnectionLoss
                    | ZkError::Timeout
                    | ZkError::Throttled
                    | ZkError::SessionMoved,
                ))
                | Err(_) => {
                    backoff.sleep(None).await;
                }
                Ok(Err(e)) => {
                    tracing::warn!(node = %path, error = %e, "zookeeper: could not delete a recipe node; it goes with its session");
                    return;
                }
            }
        }
    });
}

/// Finds this session's node with `prefix` in `dir` and deletes it, in the background: the
/// create of a cancelled or failed acquisition may have succeeded unseen.
fn spawn_remove_by_prefix(client: Client, dir: String, prefix: String) {
    spawn_detached(async move {
        let mut backoff = Backoff::new();
        for _ in 0..20 {
            if client.state().is_terminated() {
                return;
            }
            match tokio::time::timeout(Duration::from_secs(5), client.list_children(&dir)).await {
                Ok(Ok(children)) => {
                    if let Some(child) = children.iter().find(|c| c.starts_with(&prefix)) {
                        spawn_guaranteed_delete(client.clone(), format!("{dir}/{child}"));
                    }
                    return;
                }
                Ok(Err(ZkError::NoNode | ZkError::SessionExpired | ZkError::ClientClosed)) => {
                    return
                }
                _ => {
                    backoff.sleep(None).await;
                }
            }
        }
    });
}

/// One contender's view of a recipe directory.
pub(crate) struct Contender<'a> {
    pub(crate) zk: &'a ZooKeeper,
    /// The recipe's path, for errors.
    pub(crate) name: &'a str,
    /// The directory the nodes live in.
    pub(crate) dir: &'a str,
    pub(crate) kind: Kind,
    /// The node's data (the contender's identity).
    pub(crate) data: &'a [u8],
    /// Read lock only: the same read-write lock's write half; a read lock taken while it is
    /// held is granted at once (Curator's rule, which makes downgrading possible).
    pub(crate) own_write: Option<&'a Slot>,
}

/// A node that won its turn.
pub(crate) struct Claimed {
    pub(crate) client: Client,
    pub(crate) node: String,
    /// The node's stat when it was found to hold (its `ephemeralOwner` checked).
    pub(crate) stat: Stat,
}

/// The outcome of waiting for a turn.
pub(crate) enum Waited {
    /// The node holds; its stat, owned by this session.
    Go(Stat),
    /// The node is gone: start over.
    Lost,
    /// The node belongs to another session (an expired one of ours, not yet removed; or
    /// anybody's): never claimed, never deleted; start over.
    NotOurs,
    /// [`Mode::Try`]: somebody else holds; their node's data, if readable.
    WouldBlock(Option<String>),
    /// The deadline passed.
    TimedOut,
}

impl Contender<'_> {
    /// Creates this contender's node: protected (`_c_<uuid>-<lock name>`), ephemeral and
    /// sequential, with the configured ACLs; missing parents become container nodes. A create
    /// whose reply is lost is resolved by looking for the prefix: the node is adopted if it
    /// exists (its owner is checked before it may hold), or the attempt is retried.
    pub(crate) async fn create(&self, client: &Client) -> Result<Pending, Step> {
        let prefix = format!("{PROTECTED_PREFIX}{}-{}", new_uuid(), self.kind.lock_name());
        let full = format!("{}/{}", self.dir, prefix);
        let mut pending = Pending {
            zk: self.zk.clone(),
            client: client.clone(),
            name: self.name.to_owned(),
            dir: self.dir.to_owned(),
            prefix,
            path: None,
            armed: true,
        };
        let options = self.zk.create_options(CreateMode::EphemeralSequential);
        let mut parents_made = 0;
        loop {
            match timed(
                self.zk,
                "create",
                self.name,
                client.create(&full, self.data, &options),
            )
            .await
            {
                Ok(Ok((_, sequence))) => {
                    pending.path = Some(format!("{full}{sequence}"));
                    return Ok(pending);
                }
                Ok(Err(ZkError::NoNode)) if parents_made < 5 => {
                    parents_made += 1;
                    self.make_parents(client).await?;
                }
                Ok(Err(ZkError::ConnectionLoss)) | Err(Error::Timeout { .. }) => {
                    // The reply was lost; the node may exist.
                    if let Some(path) = self.find_protected(client, &pending.prefix).await? {
                        pending.path = Some(path);
                        return Ok(pending);
                    }
                    return Err(Step::Retry(map_err(
                        "create",
                        self.name,
                        ZkError::ConnectionLoss,
                    )));
                }
                // The parents keep vanishing (container nodes removed meanwhile): try again later.
                Ok(Err(ZkError::NoNode)) => {
                    return Err(Step::Retry(map_err("create", self.name, ZkError::NoNode)))
                }
                Ok(Err(e)) => return Err(Step::zk("create", self.name, e)),
                Err(e) => return Err(Step::of(e)),
            }
        }
    }

    /// A node this contender created earlier and kept (the leader latch keeps its place in
    /// the queue across a suspended connection); deleted when dropped, as a new one.
    pub(crate) fn adopt(&self, client: Client, path: String) -> Pending {
        let name = &path[path.rfind('/').map_or(0, |i| i + 1)..];
        let prefix = match name.find(self.kind.lock_name()) {
            Some(i) => name[..i + self.kind.lock_name().len()].to_owned(),
            None => name.to_owned(),
        };
        Pending {
            zk: self.zk.clone(),
            client,
            name: self.name.to_owned(),
            dir: self.dir.to_owned(),
            prefix,
            path: Some(path),
            armed: true,
        }
    }

    /// Looks for this contender's node by its protected prefix (after a lost create reply).
    async fn find_protected(&self, client: &Client, prefix: &str) -> Result<Option<String>, Step> {
        let children = match timed(self.zk, "list", self.name, client.list_children(self.dir)).await
        {
            Ok(Ok(c)) => c,
            Ok(Err(ZkError::NoNode)) => return Ok(None),
            Ok(Err(e)) => return Err(Step::zk("list", self.name, e)),
            Err(e) => return Err(Step::Retry(e)),
        };
        let Some(child) = children.into_iter().find(|c| c.starts_with(prefix)) else {
            return Ok(None);
        };
        let path = format!("{}/{}", self.dir, child);
        // Its owner is checked before it may hold (`wait_turn`).
        tracing::debug!(node = %path, "zookeeper: adopted a node whose create reply was lost");
        Ok(Some(path))
    }

    /// Creates the missing parents of the directory: the connection's root as a persistent
    /// node (the record store keeps its records there too), the rest as containers, as
    /// Curator's `creatingParentContainersIfNeeded` does.
    async fn make_parents(&self, client: &Client) -> Result<(), Step> {
        let root = self.zk.root();
        if self.dir.starts_with(root) && self.dir[root.len()..].starts_with('/') {
            self.zk.ensure_path(root).await.map_err(Step::of)?;
        }
        let options = self.zk.create_options(CreateMode::Container);
        step(
            self.zk,
            "create",
            self.name,
            client.mkdir(self.dir, &options),
        )
        .await
    }

    /// Reads the children and this contender's node in one consistent read.
    async fn snapshot(
        &self,
        client: &Client,
        node: &str,
    ) -> Result<(Vec<String>, Option<Stat>), Step> {
        let mut reader = client.new_multi_reader();
        reader
            .add_get_children(self.dir)
            .and_then(|()| reader.add_get_data(node))
            .map_err(|e| Step::zk("list", self.name, e))?;
        let results = step(self.zk, "list", self.name, reader.commit()).await?;
        let mut it = results.into_iter();
        let children = match it.next() {
            Some(MultiReadResult::Children { children }) => children,
            Some(MultiReadResult::Error {
                err: ZkError::NoNode,
            }) => Vec::new(),
            Some(MultiReadResult::Error { err }) => return Err(Step::zk("list", self.name, err)),
            _ => {
                return Err(Step::Fail(unexpected(
                    self.name,
                    "a multi-read reply without children",
                )))
            }
        };
        let stat = match it.next() {
            Some(MultiReadResult::Data { stat, .. }) => Some(stat),
            Some(MultiReadResult::Error {
                err: ZkError::NoNode,
            }) => None,
            Some(MultiReadResult::Error { err }) => return Err(Step::zk("get", self.name, err)),
            _ => {
                return Err(Step::Fail(unexpected(
                    self.name,
                    "a multi-read reply without data",
                )))
            }
        };
        Ok((children, stat))
    }

    /// The identity written in `node` (its data), if it can be read.
    pub(crate) async fn identity_of(&self, client: &Client, node: &str) -> Option<String> {
        let path = format!("{}/{}", self.dir, node);
        match timed(self.zk, "get", self.name, client.get_data(&path)).await {
            Ok(Ok((data, _))) if !data.is_empty() => {
                Some(String::from_utf8_lossy(&data).into_owned())
            }
            _ => Some(node.to_owned()),
        }
    }

    /// Waits until `pending`'s node holds, watching only the node it waits for.
    ///
    /// Before it may hold, the node's `ephemeralOwner` must be the current session (Curator's
    /// CURATOR-696 double leader: a node of an expired session, not yet removed, must not be
    /// claimed by its successor session). Cancellation safe.
    pub(crate) async fn wait_turn(&self, pending: &Pending, mode: Mode) -> Result<Waited, Step> {
        let client = pending.client();
        let ours = pending.node_name().to_owned();
        let deadline = mode.deadline();
        loop {
            let (mut children, stat) = self.snapshot(client, pending.path()).await?;
            let Some(stat) = stat else {
                return Ok(Waited::Lost);
            };
            if stat.ephemeral_owner != client.session_id().0 {
                tracing::debug!(node = %pending.path(), owner = stat.ephemeral_owner, session = %client.session_id(), "zookeeper: our node belongs to another session; not claiming it");
                return Ok(Waited::NotOurs);
            }
            sort_nodes(&mut children, self.kind);
            let granted = self.kind == Kind::Read && self.own_write.is_some_and(Slot::is_held);
            let watch = match turn(self.kind, &children, &ours) {
                Turn::Missing => return Ok(Waited::Lost),
                Turn::Go => return Ok(Waited::Go(stat)),
                _ if granted => return Ok(Waited::Go(stat)),
                Turn::WaitFor(node) => node.to_owned(),
            };
            if let Mode::Try = mode {
                let first = children.first().map(String::as_str).unwrap_or(&watch);
                return Ok(Waited::WouldBlock(self.identity_of(client, first).await));
            }
            let path = format!("{}/{}", self.dir, watch);
            // getData rather than exists, as Curator: no watch is left on a node that is gone.
            let watcher = match timed(
                self.zk,
                "watch",
                self.name,
                client.get_and_watch_data(&path),
            )
            .await
            {
                Ok(Ok((_, _, watcher))) => watcher,
                Ok(Err(ZkError::NoNode)) => continue, // it went meanwhile
                Ok(Err(e)) => return Err(Step::zk("watch", self.name, e)),
                Err(e) => return Err(Step::Retry(e)),
            };
            let sleep = tokio::time::sleep_until(deadline.unwrap_or_else(far_future));
            tokio::select! {
                _ = watcher.changed() => {}
                _ = sleep => return Ok(Waited::TimedOut),
            }
        }
    }

    /// Creates a node and waits for its turn; retries transient failures (with a new node if
    /// the session changed) until the deadline.
    pub(crate) async fn acquire(&self, mode: Mode) -> LockResult<Claimed> {
        let started = Instant::now();
        let deadline = mode.deadline();
        let timed_out = || LockError::Timeout {
            name: self.name.to_owned(),
            waited: started.elapsed(),
        };
        let mut backoff = Backoff::new();
        let mut pending: Option<Pending> = None;
        loop {
            let result = async {
                let p = match pending.take() {
                    Some(p) if !p.client().state().is_terminated() => p,
                    _ => {
                        let client = self.zk.client().await.map_err(Step::of)?;
                        self.create(&client).await?
                    }
                };
                let waited = self.wait_turn(&p, mode).await;
                Ok::<_, Step>((p, waited))
            }
            .await;
            let err = match result {
                Ok((p, Ok(Waited::Go(stat)))) => {
                    let (client, node) = p.disarm();
                    return Ok(Claimed { client, node, stat });
                }
                Ok((p, Ok(Waited::WouldBlock(holder)))) => {
                    p.remove().await;
                    return Err(LockError::WouldBlock {
                        name: self.name.to_owned(),
                        holder,
                    });
                }
                Ok((p, Ok(Waited::TimedOut))) => {
                    p.remove().await;
                    return Err(timed_out());
                }
                Ok((p, Ok(Waited::Lost))) => {
                    // Gone: start over with a new node.
                    drop(p);
                    None
                }
                Ok((p, Ok(Waited::NotOurs))) => {
                    // Another session's: leave it alone, start over with a new node.
                    p.forget();
                    None
                }
                Ok((p, Err(e))) => {
                    // Keep the node across a transient failure of the same session.
                    pending = Some(p);
                    Some(e)
                }
                Err(e) => Some(e),
            };
            match err {
                Some(Step::Fail(e)) => return Err(LockError::Store(e)),
                Some(Step::Retry(e)) if matches!(mode, Mode::Try) => {
                    return Err(LockError::Store(e));
                }
                Some(Step::Retry(e)) => {
                    tracing::debug!(lock = %self.name, error = %e, "zookeeper: retrying");
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

    /// The children in queue order, as full paths (Curator's `getParticipantNodes`).
    pub(crate) async fn participants(&self) -> crate::Result<Vec<String>> {
        let client = self.zk.client().await?;
        let mut children =
            match timed(self.zk, "list", self.name, client.list_children(self.dir)).await? {
                Ok(c) => c,
                Err(ZkError::NoNode) => Vec::new(),
                Err(e) => return Err(map_err("list", self.name, e)),
            };
        children.retain(|c| self.kind.sort_names().iter().any(|n| c.contains(n)));
        sort_nodes(&mut children, self.kind);
        Ok(children
            .into_iter()
            .map(|c| format!("{}/{}", self.dir, c))
            .collect())
    }
}

fn unexpected(name: &str, what: &str) -> Error {
    Error::Backend {
        store: KIND,
        source: format!("{name}: unexpected reply: {what}").into(),
    }
}

pub(crate) fn far_future() -> Instant {
    crate::elector::state::add(Instant::now(), Duration::MAX)
}

/// Deletes `dir` if it is empty: ZooKeeper deletes only empty nodes, atomically, so a
/// contender that arrives meanwhile either keeps it (`NotEmpty`) or re-creates it (its create
/// fails with `NoNode` and it makes the parents again). `true` if deleted.
pub(crate) async fn delete_if_empty(zk: &ZooKeeper, name: &str, dir: &str) -> crate::Result<bool> {
    let client = zk.client().await?;
    match timed(zk, "cleanup", name, client.delete(dir, None)).await? {
        Ok(()) => Ok(true),
        Err(ZkError::NotEmpty | ZkError::NoNode) => Ok(false),
        Err(e) => Err(map_err("cleanup", name, e)),
    }
}

/// Why a session state means the holding is lost; `None` while connected.
fn state_loss(state: SessionState, session: SessionId) -> Option<(LostReason, bool)> {
    match state {
        SessionState::SyncConnected | SessionState::ConnectedReadOnly => None,
        SessionState::Disconnected => Some((
            LostReason::RenewDeadlineExceeded {
                last_error: Some(format!(
                    "the connection of ZooKeeper session {session} is suspended \
                     (disconnected); treated as lost, as Curator's default policy does"
                )),
            },
            true,
        )),
        SessionState::Expired => Some((
            LostReason::StoreError {
                error: format!(
                    "ZooKeeper session {session} expired: the server deleted its ephemeral nodes"
                ),
            },
            false,
        )),
        SessionState::AuthFailed => Some((
            LostReason::StoreError {
                error: format!("ZooKeeper session {session}: authentication failed"),
            },
            false,
        )),
        SessionState::Closed => Some((
            LostReason::StoreError {
                error: format!("ZooKeeper session {session} was closed"),
            },
            false,
        )),
    }
}

/// A recipe instance's holding (one at a time), shared by its clones.
#[derive(Clone, Default)]
pub(crate) struct Slot(Arc<SlotInner>);

#[derive(Default)]
struct SlotInner {
    /// Serializes the instance's acquisitions.
    acquiring: tokio::sync::Mutex<()>,
    held: StdMutex<Option<Arc<Held>>>,
}

impl Slot {
    pub(crate) fn held(&self) -> Option<Arc<Held>> {
        self.0
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether it holds, and has not lost it.
    pub(crate) fn is_held(&self) -> bool {
        self.held().is_some_and(|h| !h.term.is_cancelled())
    }

    pub(crate) fn set(&self, held: Arc<Held>) {
        *self.0.held.lock().unwrap_or_else(PoisonError::into_inner) = Some(held);
    }

    pub(crate) fn clear(&self, held: &Arc<Held>) {
        let mut g = self.0.held.lock().unwrap_or_else(PoisonError::into_inner);
        if g.as_ref().is_some_and(|h| Arc::ptr_eq(h, held)) {
            *g = None;
        }
    }

    /// Runs one acquisition of this instance: [`LockError::AlreadyHeld`] while it holds;
    /// [`Mode::Try`] gives up at once ([`LockError::WouldBlock`]) if another acquisition of the
    /// same instance is under way.
    pub(crate) async fn acquire<F, Fut>(&self, name: &str, mode: Mode, f: F) -> LockResult<Guard>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = LockResult<Guard>>,
    {
        let _acquiring = match mode {
            Mode::Try => self
                .0
                .acquiring
                .try_lock()
                .map_err(|_| LockError::WouldBlock {
                    name: name.to_owned(),
                    holder: None,
                })?,
            Mode::Wait(deadline) => {
                let started = Instant::now();
                tokio::time::timeout_at(
                    deadline.unwrap_or_else(far_future),
                    self.0.acquiring.lock(),
                )
                .await
                .map_err(|_| LockError::Timeout {
                    name: name.to_owned(),
                    waited: started.elapsed(),
                })?
            }
        };
        if self.held().is_some() {
            return Err(LockError::AlreadyHeld {
                name: name.to_owned(),
            });
        }
        let mut guard = f().await?;
        self.set(guard.held.clone());
        guard.slot = Some(self.clone());
        Ok(guard)
    }

    /// Releases what this instance holds ([`LockError::NotHeld`] if nothing).
    pub(crate) async fn unlock(&self, name: &str) -> LockResult<()> {
        let Some(held) = self.held() else {
            return Err(LockError::NotHeld {
                name: name.to_owned(),
            });
        };
        self.clear(&held);
        held.release().await
    }
}

/// One holding: the node, its term, and the task watching the session.
pub(crate) struct Held {
    zk: ZooKeeper,
    client: Client,
    name: String,
    node: String,
    term: Term,
    /// Stops the monitor.
    stop: CancellationToken,
    /// Set once the release started (or the holding was handed back without deleting).
    done: AtomicBool,
    /// When and how the holding was lost: `true` for a suspended connection (the session, and
    /// so the node, may still be alive: nobody else can hold before it expires).
    lost: Arc<StdMutex<Option<(Instant, bool)>>>,
}

impl Held {
    /// Starts holding a claimed node: a term with `fencing_token`, and a monitor that cancels
    /// the term's token when the session is suspended (disconnected), expires or is closed, or
    /// the node is deleted.
    pub(crate) fn start(
        zk: &ZooKeeper,
        name: &str,
        identity: &str,
        claimed: Claimed,
        fencing_token: u64,
    ) -> Arc<Held> {
        let term = Term::new(name, identity, fencing_token, Instant::now(), far_future());
        let held = Arc::new(Held {
            zk: zk.clone(),
            client: claimed.client,
            name: name.to_owned(),
            node: claimed.node,
            term,
            stop: CancellationToken::new(),
            done: AtomicBool::new(false),
            lost: Arc::default(),
        });
        let client = held.client.clone();
        let node = held.node.clone();
        let term = held.term.clone();
        let stop = held.stop.clone();
        let lost = held.lost.clone();
        // The initial state is checked synchronously: a holding that starts disconnected is
        // lost at once.
        let mut states = client.state_watcher();
        if let Some((reason, suspended)) = state_loss(states.peek_state(), client.session_id()) {
            lose(&term, &lost, reason, suspended);
            return held;
        }
        tokio::spawn(async move {
            let session = client.session_id();
            let mut watcher = None;
            let mut rearm_at = Instant::now();
            loop {
                if watcher.is_none() && Instant::now() >= rearm_at {
                    match client.get_and_watch_data(&node).await {
                        Ok((_, _, w)) => watcher = Some(Box::pin(w.changed())),
                        Err(ZkError::NoNode) => {
                            lose(&term, &lost, LostReason::Deleted, false);
                            return;
                        }
                        // A broken connection shows in the state watcher; try again later.
                        Err(_) => rearm_at = Instant::now() + Duration::from_millis(500),
                    }
                }
                let node_event = async {
                    match watcher.as_mut() {
                        Some(w) => Some(w.await),
                        None => {
                            tokio::time::sleep_until(rearm_at).await;
                            None
                        }
                    }
                };
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    state = states.changed() => {
                        if let Some((reason, suspended)) = state_loss(state, session) {
                            lose(&term, &lost, reason, suspended);
                            return;
                        }
                    }
                    event = node_event => {
                        if let Some(event) = event {
                            watcher = None;
                            match event.event_type {
                                EventType::NodeDeleted => {
                                    lose(&term, &lost, LostReason::Deleted, false);
                                    return;
                                }
                                EventType::Session => {
                                    if let Some((reason, suspended)) = state_loss(event.session_state, session) {
                                        lose(&term, &lost, reason, suspended);
                                        return;
                                    }
                                }
                                _ => {}
                            }
                        }
                    }
                }
            }
        });
        held
    }

    pub(crate) fn term(&self) -> &Term {
        &self.term
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    pub(crate) fn lost_reason(&self) -> Option<LostReason> {
        match self.term.stop_reason() {
            Some(StopReason::Lost(r)) => Some(r),
            _ => None,
        }
    }

    /// Whether the holding was lost to a suspended connection (the node may still exist).
    pub(crate) fn lost_to_suspension(&self) -> bool {
        self.lost
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|(_, suspended)| suspended)
    }

    /// How long work that lost the holding may run on: `grace` after a suspension, capped at
    /// half the session timeout after it (nobody else can hold before the session expires);
    /// nothing after an expiry or deletion (somebody else may hold already).
    pub(crate) fn grace_until(&self, grace: Duration) -> Instant {
        let now = Instant::now();
        match *self.lost.lock().unwrap_or_else(PoisonError::into_inner) {
            Some((at, true)) => {
                let cap = at + self.client.session_timeout() / 2;
                (now + grace).min(cap).max(now)
            }
            _ => now,
        }
    }

    /// Ends the term and deletes the node (Curator's guaranteed delete: retried in the
    /// background if the call fails). [`LockError::Lost`] if the holding had been lost.
    pub(crate) async fn release(&self) -> LockResult<()> {
        if self.done.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let lost = self.lost_reason();
        self.stop.cancel();
        self.term.end_with(StopReason::Released);
        let deleted = delete_node(&self.zk, &self.client, &self.node, &self.name).await;
        match (lost, deleted) {
            (Some(reason), _) => Err(LockError::Lost {
                name: self.name.clone(),
                reason,
            }),
            (None, Err(e)) => Err(LockError::Store(e)),
            (None, Ok(())) => Ok(()),
        }
    }

    /// Ends the term (as `reason`) and stops watching, keeping the node (the leader latch
    /// keeps its place in the queue across a suspension).
    pub(crate) fn finish_keeping_node(&self, reason: StopReason) {
        self.done.store(true, Ordering::SeqCst);
        self.stop.cancel();
        self.term.end_with(reason);
    }

    fn release_in_background(self: &Arc<Self>) {
        if self.done.load(Ordering::SeqCst) {
            return;
        }
        let held = self.clone();
        if tokio::runtime::Handle::try_current().is_ok() {
            spawn_detached(async move {
                let _ = held.release().await;
            });
        } else {
            // No runtime to delete from: end the term; the node goes with the session.
            held.done.store(true, Ordering::SeqCst);
            held.stop.cancel();
            held.term.end_with(StopReason::Released);
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn lose(
    term: &Term,
    lost: &StdMutex<Option<(Instant, bool)>>,
    reason: LostReason,
    suspended: bool,
) {
    {
        let mut l = lost.lock().unwrap_or_else(PoisonError::into_inner);
        if l.is_none() {
            *l = Some((Instant::now(), suspended));
        }
    }
    tracing::info!(lock = %term.name(), %reason, "zookeeper: recipe holding lost");
    term.end_with(StopReason::Lost(reason));
}

/// A held lock, semaphore lease or leadership. Its [`token`](Self::token) is cancelled when
/// the holding is lost — the session suspended (disconnected), expired or closed, or the node
/// deleted — or released. Dropping the guard releases in the background;
/// [`release`](Self::release) waits for it and reports.
#[must_use = "the holding is released when the guard is dropped"]
pub struct Guard {
    pub(crate) held: Arc<Held>,
    pub(crate) slot: Option<Slot>,
}

impl Guard {
    pub(crate) fn new(held: Arc<Held>) -> Self {
        Guard { held, slot: None }
    }

    /// The term: its token, its fencing token, its identity (the node's data) and name (the
    /// recipe's path).
    pub fn term(&self) -> &Term {
        self.held.term()
    }

    /// The token cancelled when the holding is lost or released.
    pub fn token(&self) -> &tokio_util::sync::CancellationToken {
        self.held.term().token()
    }

    /// The fencing token: a ZooKeeper zxid. For the exclusive lock, the write lock and the
    /// leader latch it is greater than that of every earlier holding of the path; read locks
    /// and semaphore leases, held several at a time, get increasing tokens in the order they
    /// were granted. Locks and leases use their node's creation zxid (nodes hold in creation
    /// order); the leader latch re-writes its path node's data when it takes leadership and
    /// uses that write's zxid (a leader may lead again on the same node after a suspension).
    pub fn fencing_token(&self) -> u64 {
        self.held.term().fencing_token()
    }

    /// The full path of this holding's node, e.g. `/locks/report/_c_…-lock-0000000007`.
    pub fn node(&self) -> &str {
        self.held.node()
    }

    /// The ZooKeeper session that owns the node.
    pub fn session_id(&self) -> SessionId {
        self.held.client().session_id()
    }

    /// Whether the holding is still valid: neither lost nor released.
    pub fn is_held(&self) -> bool {
        !self.held.term().is_cancelled()
    }

    /// Why the holding was lost, if it was.
    pub fn lost_reason(&self) -> Option<LostReason> {
        self.held.lost_reason()
    }

    /// [`LockError::Lost`] if the holding was lost.
    pub fn check(&self) -> LockResult<()> {
        match self.held.lost_reason() {
            Some(reason) => Err(LockError::Lost {
                name: self.held.term().name().to_owned(),
                reason,
            }),
            None => Ok(()),
        }
    }

    /// Releases: ends the term (its token is cancelled) and deletes the node, waiting for it.
    /// [`LockError::Lost`] if the holding had been lost meanwhile; [`LockError::Store`] if the
    /// delete failed (it is retried in the background until the session ends).
    pub async fn release(self) -> LockResult<()> {
        if let Some(slot) = &self.slot {
            slot.clear(&self.held);
        }
        self.held.release().await
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(slot) = &self.slot {
            slot.clear(&self.held);
        }
        self.held.release_in_background();
    }
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("node", &self.held.node())
            .field("term", self.held.term())
            .finish()
    }
}

/// Runs `work` under `guard` (the `synchronize` of every recipe): the work's error comes back
/// as [`LockError::Work`]; a loss cancels the term's token, gives the work its grace (see
/// [`Held::grace_until`]) and returns [`LockError::Lost`].
pub(crate) async fn synchronize<T, E, F, Fut>(
    guard: Guard,
    lost_grace: Duration,
    work: F,
) -> LockResult<T, E>
where
    F: FnOnce(Term) -> Fut,
    Fut: Future<Output = std::result::Result<T, E>>,
{
    let term = guard.term().clone();
    let name = term.name().to_owned();
    let fut = work(term.clone());
    tokio::pin!(fut);
    let done = tokio::select! {
        r = &mut fut => Some(r),
        _ = term.cancelled() => None,
    };
    let lost = |guard: &Guard| LockError::Lost {
        name: name.clone(),
        reason: guard.lost_reason().unwrap_or(LostReason::Deleted),
    };
    match done {
        Some(_) if term.is_cancelled() => Err(lost(&guard)),
        Some(result) => {
            if let Err(e) = guard.release().await {
                tracing::warn!(lock = %name, error = %e, "zookeeper: releasing after the work");
            }
            result.map_err(LockError::Work)
        }
        None => {
            let until = guard.held.grace_until(lost_grace);
            let _ = tokio::time::timeout_at(until, &mut fut).await;
            Err(lost(&guard))
        }
    }
}

/// The default grace of work that lost its holding to a suspended connection.
pub(crate) const DEFAULT_LOST_GRACE: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn curator_sort_keys() {
        assert_eq!(
            fix_for_sorting("_c_x-lock-0000000003", "lock-"),
            "0000000003"
        );
        assert_eq!(fix_for_sorting("foreign", "lock-"), "foreign");
        assert_eq!(
            sort_key("_c_x-__READ__0000000004", Kind::Read),
            "0000000004"
        );
        assert_eq!(
            sort_key("_c_x-__WRIT__0000000005", Kind::Read),
            "0000000005"
        );
        let mut v = names(&[
            "_c_b-lock-0000000002",
            "_c_a-lock-0000000010",
            "_c_c-lock-0000000001",
        ]);
        sort_nodes(&mut v, Kind::Mutex);
        assert_eq!(
            v,
            names(&[
                "_c_c-lock-0000000001",
                "_c_b-lock-0000000002",
                "_c_a-lock-0000000010"
            ])
        );
    }

    #[test]
    fn uuids_are_canonical() {
        let u = new_uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(u.as_bytes()[14], b'4');
        assert!(u.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        assert_eq!(u.matches('-').count(), 4);
        assert_ne!(u, new_uuid());
    }

    /// The seed's queue `[ex00, sh01, sh02, sh03, ex04, ex05, sh06, sh07]`, played out with the
    /// pure ordering rules.
    #[test]
    fn the_seed_queue_plays_out() {
        let node = |i: usize, write: bool| {
            let name = if write {
                WRITE_LOCK_NAME
            } else {
                READ_LOCK_NAME
            };
            format!("_c_{i:08x}-{name}{i:010}")
        };
        let kinds = [true, false, false, false, true, true, false, false];
        let all: Vec<String> = kinds.iter().enumerate().map(|(i, w)| node(i, *w)).collect();
        let holders = |present: &[usize]| -> Vec<usize> {
            let mut sorted: Vec<String> = present.iter().map(|&i| all[i].clone()).collect();
            sort_nodes(&mut sorted, Kind::Write);
            present
                .iter()
                .copied()
                .filter(|&i| {
                    let kind = if kinds[i] { Kind::Write } else { Kind::Read };
                    turn(kind, &sorted, &all[i]) == Turn::Go
                })
                .collect()
        };
        let mut present: Vec<usize> = (0..8).collect();
        assert_eq!(holders(&present), vec![0]);
        present.retain(|&i| i != 0);
        assert_eq!(holders(&present), vec![1, 2, 3]);
        present.retain(|&i| !(1..=3).contains(&i));
        assert_eq!(holders(&present), vec![4]);
        present.retain(|&i| i != 4);
        assert_eq!(holders(&present), vec![5]);
        present.retain(|&i| i != 5);
        assert_eq!(holders(&present), vec![6, 7]);
    }

    #[test]
    fn each_waiter_watches_one_node() {
        let v = names(&[
            "_c_a-__WRIT__0000000000",
            "_c_b-__READ__0000000001",
            "_c_c-__WRIT__0000000002",
            "_c_d-__READ__0000000003",
            "_c_e-__READ__0000000004",
        ]);
        // A writer watches the node just ahead, reader or writer.
        assert_eq!(turn(Kind::Write, &v, &v[2]), Turn::WaitFor(&v[1]));
        // A reader watches the nearest writer ahead (Curator: the first one).
        assert_eq!(turn(Kind::Read, &v, &v[3]), Turn::WaitFor(&v[2]));
        assert_eq!(turn(Kind::Read, &v, &v[4]), Turn::WaitFor(&v[2]));
        assert_eq!(turn(Kind::Read, &v, &v[1]), Turn::WaitFor(&v[0]));
        assert_eq!(
            turn(Kind::Read, &v, "_c_z-__READ__0000000009"),
            Turn::Missing
        );
        assert_eq!(turn(Kind::Mutex, &v[..1], &v[0]), Turn::Go);
    }
}
