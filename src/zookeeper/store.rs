//! [`ZkStore`]: the [`LeaseStore`] contract on one persistent znode per election.

use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use zookeeper_client::{
    AddWatchMode, Client, CreateMode, EventType, PersistentWatcher, SessionState, Stat,
};

use super::connection::{forbidden_char, map_err, ZooKeeper, KIND};
use crate::error::{with_timeout, Error, Result};
use crate::record::LeaseRecord;
use crate::store::{
    starts_term, Capabilities, LeaseStore, PutMode, Stored, Version, WatchEvent, WatchStream,
};

/// ZooKeeper's default `jute.maxbuffer`: the largest packet a server accepts (and a client
/// reads), 1 MiB − 1.
pub const JUTE_MAXBUFFER: usize = 0xfffff;

/// The longest record (its JSON, as stored in the node's data) the store writes: ZooKeeper's
/// default `jute.maxbuffer` ([`JUTE_MAXBUFFER`], 1 MiB − 1) less 8 KiB for the request's
/// headers, path ([`MAX_NAME_LEN`], the root and the chroot) and ACLs. Longer records fail
/// with [`Error::TooLarge`] before anything is sent.
pub const MAX_RECORD_LEN: usize = JUTE_MAXBUFFER - 8 * 1024;

/// The longest escaped name, in bytes: the node's name under the root. A limit of tenure's
/// (ZooKeeper itself bounds paths only by `jute.maxbuffer`), keeping every path well inside the
/// room [`MAX_RECORD_LEN`] leaves. Longer names fail with [`Error::InvalidName`].
pub const MAX_NAME_LEN: usize = 1024;

/// A [`LeaseStore`] on ZooKeeper: election `name` is the persistent znode
/// `<root>/<escaped name>` whose data is the record's JSON.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> tenure::Result<()> {
/// use tenure::zookeeper::{ZkOptions, ZkStore};
/// use tenure::{LeaseRecord, LeaseStore, PutMode};
/// use std::time::Duration;
///
/// let store = ZkStore::new(ZkOptions::new("127.0.0.1:2181").connect().await?);
/// let rec = LeaseRecord::held_by("me", Duration::from_secs(15), 1);
/// let v = store.put("job", &rec, PutMode::Create).await?;
/// let stored = store.get("job").await?.expect("just created");
/// assert_eq!(stored.version, v);
/// assert!(stored.record.transitions >= 1); // the node's czxid: above every earlier token
/// # Ok(()) }
/// ```
///
/// # Layout
///
/// One **persistent** node per election, `<root>/<escaped name>` (root `/tenure` by default,
/// [`ZkOptions::root`](super::ZkOptions::root), below the connect string's chroot if any),
/// whose data is [`LeaseRecord::to_json`]. The record does not depend on the session: a
/// session that expires loses nothing, and any session (of any process) may take over a
/// lease whose holder stopped renewing. A create whose parent is missing creates the root
/// first (persistent nodes, with the configured ACLs), then retries once.
///
/// - `put(Create)` is `create`; `NodeExists` is [`Error::AlreadyExists`].
/// - `put(Update(v))` reads the node, checks `v`, and writes with `setData` and the expected
///   node version — never −1, the unconditional write; `BadVersion` or `NoNode` is
///   [`Error::Conflict`]. The read tells whether the write starts a term (see below) and
///   refuses to overwrite a node that is not a tenure record.
/// - `delete(v)` is `delete` with the expected node version.
///
/// # Versions
///
/// A [`Version`] is `<czxid>:<version>`: the zxid of the transaction that created the node,
/// and the node's data version. The data version restarts at 0 when a node is deleted and
/// created again, but the new node's czxid is larger than any zxid before it, so a version
/// never repeats. ZooKeeper's conditional writes compare the data version only: an update or
/// delete first reads the node and compares both, then writes with the data version. A node
/// deleted, re-created and rewritten back to the same data version between that read and the
/// write (within one round trip) would be overwritten — tenure itself never deletes records
/// (only [`delete`](LeaseStore::delete) does, which the elector never calls), so this needs
/// an operator or a program deleting records while electors run. A data version that wrapped
/// around to −1 (after 2³² writes) is refused with [`Error::Rejected`].
///
/// # Fencing tokens
///
/// **The token of a node is the larger of the `transitions` in its data and its czxid**, and a
/// write that starts a term ([`starts_term`]: a create, or an update whose `transitions`
/// differs from the node's token) stores at least the node's `mzxid + 1`. Tokens therefore
/// rise across everything that can happen to the node, deletion included
/// ([`Capabilities::durable_tokens`]):
///
/// - zxids are cluster-wide, strictly increasing and never reused: every transaction gets a
///   larger one, restarts continue from the last logged transaction, and the epoch (the high
///   32 bits) grows with every new leader of a replicated ensemble, so failovers only make
///   them jump ahead;
/// - every token is at most the zxid of the write that established it: a create's token is
///   `max(asked, czxid)`, an update's `max(asked, mzxid + 1)` with `mzxid + 1` at most the
///   update's own zxid, and an elector asks for at most one more than a token it saw, which
///   was itself at most the zxid of an earlier write;
/// - so a new node's czxid is above every token any earlier node of the name held, and an
///   update's `mzxid + 1` is above every token the node held.
///
/// A fresh process that never saw the earlier terms thus still continues above them. Tokens
/// are zxids (`2³² × epoch + counter`: above 4.3 × 10⁹ on a replicated ensemble, whose epoch
/// grows with every new ZooKeeper leader; a standalone server's epoch stays 0), not 1, 2, 3:
/// compare them, don't count them. The record's JSON keeps the token asked for until the
/// first renewal writes the lifted one; every read ([`get`](LeaseStore::get), the watch)
/// reports the lifted token.
///
/// **What breaks it:** an ensemble restored from an old snapshot, or with its data
/// directories wiped (zxids — epoch files included — go back to the snapshot's point, or to
/// 0); acknowledged transactions lost in a crash (`forceSync=no`, or a disk that does not
/// honour fsync: a standalone server then reuses their zxids); a record copied in from
/// another ensemble; or a `transitions` written by hand (or by a
/// client asking for more than one above what it saw) above the zxids. After such an
/// operation a fresh process can repeat an earlier token (each running elector still never
/// repeats one it saw itself): before starting electors again, raise each record's
/// `transitions` above every token issued before.
///
/// # Ages
///
/// [`Stored::age`] is always `None`: a node's `mtime` is the wall clock of the ZooKeeper
/// server that led when it was written, and ZooKeeper offers no way to read that server's
/// clock *now* (nor is the same server leading later), so no age can be measured on a single
/// clock. A fresh process therefore waits one lease duration from when it first sees a
/// version, as with client-go.
///
/// # Watch
///
/// Each watch adds a persistent watch (`addWatch`, mode `PERSISTENT`) on the node — no data
/// travels with ZooKeeper's events, so after each event (or burst of queued events) the watch
/// reads the node and yields [`WatchEvent::Put`] with the version and record as stored, or
/// [`WatchEvent::Deleted`]. A persistent watch fires for every `setData`, renewals included,
/// and a coalesced burst is reported by a read made after its last event, so the last event
/// always reports the last write ([`Capabilities::watch_every_write`]). A version older (by
/// `mzxid`) than one already yielded is never yielded: it becomes a hint.
///
/// [`WatchEvent::Hint`] marks every gap: after the watch is armed, when the connection drops
/// (the session lives on), after the client reconnected (the watch is added again: the
/// `zookeeper-client` crate does not restore persistent watches on a new connection, and
/// ZooKeeper may lose their events around a reconnect, ZOOKEEPER-4698), after the session
/// expired (the watch is added again on the next session), and when a read after an event
/// failed. A node holding garbage yields [`Error::Decode`]. An error arming the watch is
/// yielded and ends the stream: final errors ([`Error::PermissionDenied`]) stop an elector;
/// the elector restarts the stream after others.
///
/// # Names
///
/// A name is escaped into **one** path component, injectively: ASCII letters, digits, `-`,
/// `_`, `.` and `~`, and non-ASCII characters ZooKeeper accepts in paths stand for
/// themselves; every other character — `/`, `%`, spaces, controls, and characters beyond
/// U+FFFF (which the Java server sees as surrogates and refuses) — becomes `%XX` per UTF-8
/// byte, and so do the dots of the names `.` and `..`. So `a/b` is the node `a%2Fb`, distinct
/// from `a__b` and from `a%2Fb` (`a%252Fb`), unlike ZK::Locker's `/` → `__`. The reserved
/// name `zookeeper` exists only as `/zookeeper`, and the root may not be `/`, so it is an
/// ordinary name here. An empty name, or one whose escaped form is longer than
/// [`MAX_NAME_LEN`] bytes (a limit of tenure's; ZooKeeper bounds paths only by
/// `jute.maxbuffer`), fails with [`Error::InvalidName`] before any call.
///
/// # Sizes
///
/// A record whose JSON is longer than [`MAX_RECORD_LEN`] (ZooKeeper's default
/// `jute.maxbuffer` of 1 MiB − 1, less 8 KiB for the request around it) fails with
/// [`Error::TooLarge`] and nothing is sent. Do not lower `jute.maxbuffer` on servers or
/// clients below the records you write: the server drops the connection on a larger packet.
///
/// # Garbage
///
/// A node whose data is not a tenure record — an empty node, another program's data, a
/// record of a future format — makes `get` (and the watch) fail with [`Error::Decode`] naming
/// the node's full path (with the chroot); `put(Update)` refuses to overwrite it (it reads
/// first), `put(Create)` fails with [`Error::AlreadyExists`]. A node with children is not
/// deleted ([`Error::Rejected`]).
///
/// # Permissions
///
/// Nodes tenure creates (the root's missing parts and the records) get the ACL of
/// [`ZkOptions::acl`](super::ZkOptions::acl): `world:anyone` for every permission by default,
/// the creator's digest identity alone when credentials are set. ZooKeeper checks ACLs per
/// node: the records need READ and WRITE (and DELETE on the root for `delete`), creating a
/// record needs CREATE on the root. `NoAuth` anywhere is [`Error::PermissionDenied`], which is
/// final: an elector stops with it.
///
/// # Timeouts and disconnections
///
/// Every call runs under [`ZkOptions::timeout`](super::ZkOptions::timeout) (default 2 s),
/// connecting included, and an elapsed deadline is [`Error::Timeout`]. While the session's
/// connection is down, calls fail at once with [`Error::Unavailable`] instead of waiting for
/// the reconnect: a leader's renewals fail and it steps down by its renew deadline. After the
/// session expired, the next call opens a new session (see [`ZooKeeper`]); the record, being
/// persistent, is untouched, so the elector goes on as after any failed renewal.
///
/// # Linearizability
///
/// Writes are linearizable (they go through ZooKeeper's leader); reads are served by the
/// server the session is connected to, which may lag behind the leader. A stale read only
/// makes an elector wait longer, or makes its write conflict: every write is a
/// compare-and-swap against the version it read.
#[derive(Clone, Debug)]
pub struct ZkStore {
    inner: Arc<ZooKeeper>,
}

impl ZkStore {
    /// A store on this session (clones of `zk` share it).
    pub fn new(zk: ZooKeeper) -> Self {
        ZkStore {
            inner: Arc::new(zk),
        }
    }

    /// The session this store uses.
    pub fn zookeeper(&self) -> &ZooKeeper {
        &self.inner
    }

    /// The path of election `name`'s node, relative to the chroot: `<root>/<escaped name>`;
    /// [`Error::InvalidName`] for a name the store cannot hold.
    pub fn path(&self, name: &str) -> Result<String> {
        Ok(format!("{}/{}", self.inner.root(), escape_name(name)?))
    }

    /// A path as the server knows it (with the chroot), for errors.
    fn key(client: &Client, path: &str) -> String {
        match client.path() {
            "" | "/" => path.to_owned(),
            chroot => format!("{chroot}{path}"),
        }
    }

    async fn call<T>(
        &self,
        operation: &'static str,
        name: &str,
        fut: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        with_timeout(KIND, operation, name, self.inner.timeout(), fut).await
    }

    /// The node's record and its mzxid, or `None` if there is no node.
    async fn read(&self, client: &Client, name: &str, path: &str) -> Result<Option<(Stored, i64)>> {
        match client.get_data(path).await {
            Ok((data, stat)) => Ok(Some((decode(client, path, &data, &stat)?, stat.mzxid))),
            Err(zookeeper_client::Error::NoNode) => Ok(None),
            Err(e) => Err(map_err("get", name, e)),
        }
    }

    async fn create(&self, name: &str, path: &str, record: &LeaseRecord) -> Result<Version> {
        let data = record.to_json();
        check_size(name, data.len())?;
        let client = self.inner.connected_client("put", name).await?;
        let options = self.inner.create_options(CreateMode::Persistent);
        let created = match client.create(path, &data, &options).await {
            Err(zookeeper_client::Error::NoNode) => {
                Box::pin(self.inner.ensure_path(self.inner.root())).await?;
                client.create(path, &data, &options).await
            }
            other => other,
        };
        match created {
            Ok((stat, _)) => Ok(version_of(&stat)),
            Err(zookeeper_client::Error::NodeExists) => Err(Error::AlreadyExists {
                store: KIND,
                name: name.to_owned(),
            }),
            Err(e) => Err(map_err("put", name, e)),
        }
    }

    async fn update(
        &self,
        name: &str,
        path: &str,
        record: &LeaseRecord,
        expected: &Version,
    ) -> Result<Version> {
        check_size(name, record.to_json().len())?;
        let conflict = || Error::Conflict {
            store: KIND,
            name: name.to_owned(),
        };
        let Some((czxid, version)) = parse_version(expected) else {
            return Err(conflict());
        };
        let client = self.inner.connected_client("put", name).await?;
        let (data, stat) = match client.get_data(path).await {
            Ok(found) => found,
            Err(zookeeper_client::Error::NoNode) => return Err(conflict()),
            Err(e) => return Err(map_err("put", name, e)),
        };
        if stat.czxid != czxid || stat.version != version {
            return Err(conflict());
        }
        // Garbage is never overwritten: a node that is not a tenure record fails here.
        let current = decode(&client, path, &data, &stat)?.record;
        if version == -1 {
            // `setData` with version −1 would be a blind write; only after 2³² writes.
            return Err(Error::Rejected {
                store: KIND,
                name: name.to_owned(),
                source: "the node's version counter wrapped around to -1: delete the node".into(),
            });
        }
        let mut record = record.clone();
        if starts_term(Some(&current), &record) {
            // Above every token this node (and every earlier node of the name) ever held: each
            // was at most the zxid of the write that stored it, and that is at most `mzxid`.
            record.transitions = record.transitions.max(zxid(stat.mzxid).saturating_add(1));
        }
        let data = record.to_json();
        check_size(name, data.len())?;
        match client.set_data(path, &data, Some(version)).await {
            Ok(new) => {
                if new.czxid != czxid {
                    // Deleted, re-created and rewritten to the same version number between
                    // our read and our write (one round trip): see "Versions" in the docs.
                    tracing::warn!(election = %name, "the node was re-created under the update");
                }
                Ok(version_of(&new))
            }
            Err(zookeeper_client::Error::BadVersion | zookeeper_client::Error::NoNode) => {
                Err(conflict())
            }
            Err(e) => Err(map_err("put", name, e)),
        }
    }
}

#[async_trait::async_trait]
impl LeaseStore for ZkStore {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn get(&self, name: &str) -> Result<Option<Stored>> {
        let path = self.path(name)?;
        self.call("get", name, async {
            let client = self.inner.connected_client("get", name).await?;
            Ok(self
                .read(&client, name, &path)
                .await?
                .map(|(stored, _)| stored))
        })
        .await
    }

    async fn put(&self, name: &str, record: &LeaseRecord, mode: PutMode) -> Result<Version> {
        let path = self.path(name)?;
        self.call("put", name, async {
            match &mode {
                PutMode::Create => self.create(name, &path, record).await,
                PutMode::Update(v) => self.update(name, &path, record, v).await,
            }
        })
        .await
    }

    fn watch(&self, name: &str) -> Option<WatchStream> {
        let state = Watch {
            zk: Arc::clone(&self.inner),
            store: self.clone(),
            name: name.to_owned(),
            path: self.path(name),
            watcher: None,
            replaced: None,
            latest: None,
            done: false,
        };
        Some(
            futures_util::stream::unfold(state, |mut w| async move {
                let event = w.next().await?;
                Some((event, w))
            })
            .boxed(),
        )
    }

    async fn delete(&self, name: &str, version: &Version) -> Result<()> {
        let path = self.path(name)?;
        let conflict = || Error::Conflict {
            store: KIND,
            name: name.to_owned(),
        };
        let Some((czxid, v)) = parse_version(version) else {
            return Err(conflict());
        };
        self.call("delete", name, async {
            let client = self.inner.connected_client("delete", name).await?;
            match client.check_stat(&path).await {
                Ok(Some(stat)) if stat.czxid == czxid && stat.version == v && v != -1 => {}
                Ok(_) => return Err(conflict()),
                Err(e) => return Err(map_err("delete", name, e)),
            }
            match client.delete(&path, Some(v)).await {
                Ok(()) => Ok(()),
                Err(zookeeper_client::Error::BadVersion | zookeeper_client::Error::NoNode) => {
                    Err(conflict())
                }
                Err(e @ zookeeper_client::Error::NotEmpty) => Err(Error::Rejected {
                    store: KIND,
                    name: name.to_owned(),
                    source: format!(
                        "{} has child nodes, which are not tenure's: {e}",
                        Self::key(&client, &path)
                    )
                    .into(),
                }),
                Err(e) => Err(map_err("delete", name, e)),
            }
        })
        .await
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
            .with_durable_tokens(true)
            .with_watch_every_write(true)
    }
}

/// A zxid as a token (zxids are positive).
fn zxid(z: i64) -> u64 {
    u64::try_from(z).unwrap_or(0)
}

/// The version of a node: `<czxid>:<version>`.
fn version_of(stat: &Stat) -> Version {
    Version::new(format!("{}:{}", stat.czxid, stat.version))
}

fn parse_version(v: &Version) -> Option<(i64, i32)> {
    let (czxid, version) = v.as_str().split_once(':')?;
    Some((czxid.parse().ok()?, version.parse().ok()?))
}

/// The record in a node's data, with its token lifted to the node's czxid (see "Fencing
/// tokens" in the module docs).
fn decode(client: &Client, path: &str, data: &[u8], stat: &Stat) -> Result<Stored> {
    let mut record = LeaseRecord::from_json(KIND, &ZkStore::key(client, path), data)?;
    record.transitions = record.transitions.max(zxid(stat.czxid));
    Ok(Stored::new(record, version_of(stat)))
}

fn check_size(name: &str, size: usize) -> Result<()> {
    if size > MAX_RECORD_LEN {
        return Err(Error::TooLarge {
            store: KIND,
            name: name.to_owned(),
            size,
            limit: MAX_RECORD_LEN,
            what: "a znode's data under the default jute.maxbuffer, less room for the request",
        });
    }
    Ok(())
}

/// Escapes `name` into one path component, injectively: ASCII letters, digits, `-`, `_`, `.`
/// and `~`, and characters of the Basic Multilingual Plane outside the ranges ZooKeeper
/// forbids, stand for themselves; every other character (`/`, `%`, spaces, controls, ...) is
/// `%XX` per UTF-8 byte, and so are the dots of the names `.` and `..`.
pub(crate) fn escape_name(name: &str) -> Result<String> {
    let invalid = |reason: String| Error::InvalidName {
        store: KIND,
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("the name is empty".into()));
    }
    let dots_only = name == "." || name == "..";
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        let keep = match c {
            '.' => !dots_only,
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '~' => true,
            c if !c.is_ascii() => !forbidden_char(c),
            _ => false,
        };
        if keep {
            out.push(c);
        } else {
            let mut buf = [0; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    if out.len() > MAX_NAME_LEN {
        return Err(invalid(format!(
            "escaped to {} bytes, more than the {MAX_NAME_LEN} bytes a node name may have",
            out.len()
        )));
    }
    Ok(out)
}

/// The state of one watch stream.
struct Watch {
    zk: Arc<ZooKeeper>,
    store: ZkStore,
    name: String,
    path: Result<String>,
    /// The persistent watch, while its session lives.
    watcher: Option<PersistentWatcher>,
    /// The watch being replaced after a reconnect, dropped once the new one is armed.
    replaced: Option<PersistentWatcher>,
    /// The mzxid of the last `Put` yielded: an older version is never yielded after it.
    latest: Option<i64>,
    done: bool,
}

impl Watch {
    async fn next(&mut self) -> Option<Result<WatchEvent>> {
        if self.done {
            return None;
        }
        let path = match &self.path {
            Ok(p) => p.clone(),
            Err(e) => {
                self.done = true;
                return Some(Err(clone_invalid(e)));
            }
        };
        loop {
            let Some(watcher) = self.watcher.as_mut() else {
                // (Re)arm on the live session — a new one after expiry — then hint: writes
                // made while nobody watched are not reported.
                let armed = with_timeout(KIND, "watch", &self.name, self.zk.timeout(), async {
                    let client = self.zk.connected_client("watch", &self.name).await?;
                    client
                        .watch(&path, AddWatchMode::Persistent)
                        .await
                        .map_err(|e| map_err("watch", &self.name, e))
                })
                .await;
                // Only now: while another watcher of the path lives, the client keeps the
                // server's watch.
                self.replaced = None;
                return match armed {
                    Ok(w) => {
                        self.watcher = Some(w);
                        Some(Ok(WatchEvent::Hint))
                    }
                    Err(e) => {
                        // Final or not, the stream ends here: the caller restarts it after a
                        // pause if the error is retryable.
                        self.done = true;
                        Some(Err(e))
                    }
                };
            };
            let mut event = watcher.changed().await;
            loop {
                match event.event_type {
                    EventType::Session => match event.session_state {
                        // Writes made during the gap are not reported: re-read.
                        SessionState::Disconnected => return Some(Ok(WatchEvent::Hint)),
                        // Reconnected within the session. zookeeper-client 0.11 does not
                        // restore persistent watches on the new connection (its
                        // `resend_watches` sends only the one-shot kinds), and ZooKeeper
                        // itself may lose their events around a reconnect (ZOOKEEPER-4698):
                        // add the watch again, then hint.
                        SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                            self.replaced = self.watcher.take();
                        }
                        // Terminal: the watch is gone with its session, and the crate's
                        // channel is closed (never poll it again). Re-arm on the next session.
                        _ => self.watcher = None,
                    },
                    EventType::NodeCreated
                    | EventType::NodeDataChanged
                    | EventType::NodeDeleted => {
                        // Coalesce what is already queued: the read reports the last state.
                        match watcher.changed().now_or_never() {
                            Some(next) => {
                                event = next;
                                continue;
                            }
                            None => return Some(self.read(&path).await),
                        }
                    }
                    EventType::NodeChildrenChanged => {
                        event = watcher.changed().await;
                        continue;
                    }
                }
                break;
            }
        }
    }

    /// The node as it is now, as an event; a failed read is a hint (the caller re-reads).
    async fn read(&mut self, path: &str) -> Result<WatchEvent> {
        let read = with_timeout(KIND, "get", &self.name, self.zk.timeout(), async {
            let client = self.zk.connected_client("get", &self.name).await?;
            self.store.read(&client, &self.name, path).await
        })
        .await;
        match read {
            // A session never reads older state than it saw, but a new session may reach a
            // server that lags behind the one before.
            Ok(Some((_, mzxid))) if self.latest.is_some_and(|seen| mzxid < seen) => {
                Ok(WatchEvent::Hint)
            }
            Ok(Some((stored, mzxid))) => {
                self.latest = Some(mzxid);
                Ok(WatchEvent::Put(stored))
            }
            Ok(None) => Ok(WatchEvent::Deleted),
            Err(e @ Error::Decode { .. }) => Err(e),
            Err(_) => Ok(WatchEvent::Hint),
        }
    }
}

fn clone_invalid(e: &Error) -> Error {
    match e {
        Error::InvalidName {
            store,
            name,
            reason,
        } => Error::InvalidName {
            store,
            name: name.clone(),
            reason: reason.clone(),
        },
        other => Error::Backend {
            store: KIND,
            source: other.to_string().into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_escape_injectively_into_one_component() {
        let cases = [
            ("a/b", "a%2Fb"),
            ("a__b", "a__b"),
            (".", "%2E"),
            ("..", "%2E%2E"),
            ("...", "..."),
            ("%2E", "%252E"),
            ("a b", "a%20b"),
            ("选举-ø", "选举-ø"),
            ("🦀", "%F0%9F%A6%80"),
            ("zookeeper", "zookeeper"),
            ("x\ny", "x%0Ay"),
            ("billing.scheduler", "billing.scheduler"),
        ];
        for (name, escaped) in cases {
            assert_eq!(escape_name(name).unwrap(), escaped, "{name:?}");
        }
        let mut seen = std::collections::HashSet::new();
        for name in ["a/b", "a__b", "a%2Fb", ".", "%2E", "..", "%2E%2E", "a", "A"] {
            assert!(seen.insert(escape_name(name).unwrap()), "{name:?} collides");
        }
        assert!(matches!(escape_name(""), Err(Error::InvalidName { .. })));
        assert!(escape_name(&"x".repeat(MAX_NAME_LEN)).is_ok());
        assert!(matches!(
            escape_name(&"x".repeat(MAX_NAME_LEN + 1)),
            Err(Error::InvalidName { .. })
        ));
        assert!(matches!(
            escape_name(&"/".repeat(400)),
            Err(Error::InvalidName { .. })
        ));
    }

    #[test]
    fn versions_round_trip() {
        let v = Version::new("4294967302:7");
        assert_eq!(parse_version(&v), Some((4_294_967_302, 7)));
        for bad in ["", "1", "a:b", "1:", ":1", "1:2:3"] {
            assert_eq!(parse_version(&Version::new(bad)), None, "{bad:?}");
        }
    }
}

#[cfg(test)]
mod size_probe {
    use super::*;

    /// Every election keeps a watch's `next()` future alive: it must not carry the rare
    /// connect path inline (it did: 10 KB each, 360 MB for 10 000 elections).
    #[test]
    fn a_waiting_watch_is_small() {
        let zk = crate::zookeeper::connection::tests_support::unconnected();
        let store = ZkStore::new(zk.clone());
        let mut w = Watch {
            zk: Arc::new(zk.clone()),
            store: store.clone(),
            name: "x".into(),
            path: store.path("x"),
            watcher: None,
            replaced: None,
            latest: None,
            done: false,
        };
        assert!(std::mem::size_of_val(&zk.client()) <= 64);
        let next = std::mem::size_of_val(&w.next());
        assert!(next <= 2048, "a watch's next() future is {next} bytes");
    }
}
