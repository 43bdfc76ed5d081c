//! [`ConsulStore`]: the [`LeaseStore`] contract on Consul KV.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use futures_util::StreamExt;
use rand::Rng;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use tracing::{debug, warn};

use super::client::{Consul, Reply, KIND};
use crate::error::{Error, Result};
use crate::record::LeaseRecord;
use crate::store::{Capabilities, LeaseStore, PutMode, Stored, Version, WatchEvent, WatchStream};

/// Consul's default `limits.txn_max_req_len` (and `limits.kv_max_value_size`): 512 KiB, the
/// largest transaction body (and KV value) an agent accepts.
pub const TXN_MAX_REQ_LEN: usize = 512 * 1024;

/// The longest record (its JSON) the store writes: three quarters of [`TXN_MAX_REQ_LEN`]
/// (the value travels base64-encoded in the transaction) less 4 KiB for the rest of the
/// request. Longer records fail with [`Error::TooLarge`] before anything is sent.
pub const MAX_RECORD_LEN: usize = TXN_MAX_REQ_LEN / 4 * 3 - 4096;

/// The longest escaped name, in bytes (a limit of tenure's; Consul bounds keys only by the
/// request size). Longer names fail with [`Error::InvalidName`].
pub const MAX_NAME_LEN: usize = 1024;

/// The high 32 bits of the `Flags` of every record tenure writes (`"tenu"`), so that operators
/// (and Consul's `api.Lock`, which checks flags) can tell a tenure record from other data.
/// The low 32 bits change with every write: Consul skips a write that changes nothing (same
/// value, flags and session) and keeps the old `ModifyIndex`, while the contract needs a new
/// version for every write. Readers do not look at the flags.
pub const RECORD_FLAGS_TAG: u64 = 0x7465_6e75_0000_0000;

/// How long a watch's blocking query waits for a change while connections suffice.
const WATCH_WAIT: Duration = Duration::from_secs(60);
/// ...and while more names are watched than blocking queries may run at once (they take turns).
const CONTENDED_WAIT: Duration = Duration::from_millis(250);
/// The least time between two blocking queries of one watch (Consul's rate-limit advice).
const MIN_QUERY_INTERVAL: Duration = Duration::from_millis(5);
/// The first pause of a watch after a failure; it doubles with each failure...
const MIN_PAUSE: Duration = Duration::from_millis(100);
/// ...up to this, until a query succeeds again.
const MAX_PAUSE: Duration = Duration::from_secs(5);
/// The most names whose last seen (version, token) the store remembers.
const CACHE_LIMIT: usize = 100_000;

/// A [`LeaseStore`] on Consul's KV store: election `name` is the key `<prefix><escaped name>`,
/// whose value is the record's JSON.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> tenure::Result<()> {
/// use std::time::Duration;
/// use tenure::consul::{ConsulOptions, ConsulStore};
/// use tenure::{LeaseRecord, LeaseStore, PutMode};
///
/// let consul = ConsulOptions::new("http://127.0.0.1:8500").token("…").connect().await?;
/// let store = ConsulStore::new(consul);
/// let v = store.put("job", &LeaseRecord::held_by("me", Duration::from_secs(15), 1), PutMode::Create).await?;
/// let stored = store.get("job").await?.expect("just created");
/// assert_eq!(stored.version, v);              // the key's ModifyIndex
/// assert!(stored.record.transitions >= 1);    // at least its CreateIndex: above every earlier token
/// # Ok(()) }
/// ```
///
/// # Layout
///
/// One key per election, `<prefix><escaped name>` (prefix `tenure/` by default,
/// [`ConsulOptions::prefix`](super::ConsulOptions::prefix)), whose value is
/// [`LeaseRecord::to_json`] and whose `Flags` carry [`RECORD_FLAGS_TAG`]. The key is not bound to a
/// session: any process may take over a lease whose holder stopped renewing.
///
/// - `put(Create)` is a transaction (`PUT /v1/txn`) with one `cas` operation at index 0
///   (create only); a refusal is [`Error::AlreadyExists`].
/// - `put(Update(v))` is a transaction with one `cas` operation at index `v`; a refusal is
///   [`Error::Conflict`]. The transaction's result carries the key's new `ModifyIndex`, so a
///   write costs one request. To know whether the write starts a term (see below) the store
///   needs the token stored at `v`: it remembers the last version it read, watched or wrote for
///   each name (a version is one write, so this never goes stale); for a version it has not
///   seen it reads the key first, which also refuses to overwrite a value that is not a tenure
///   record.
/// - `get` is `GET /v1/kv/<key>?consistent`: read through the Raft leader, which first checks
///   it still leads, so it observes every write acknowledged before it.
/// - `delete(v)` is a transaction of `check-index` and `delete-cas` at `v` (`delete-cas` alone
///   succeeds on a missing key).
///
/// # Versions
///
/// A [`Version`] is the key's `ModifyIndex`, the Raft index of the write that produced it.
/// Raft indexes are cluster-wide, strictly increasing and never reused, so a version never
/// repeats — also across delete and re-create, which starts at a larger `CreateIndex`.
/// Version `0` (Consul's "create only") is never a version of a record: an update with it is
/// a [`Error::Conflict`].
///
/// # Fencing tokens
///
/// **The token of a record is the larger of the `transitions` in its value and its key's
/// `CreateIndex`**, and a write that starts a term (a create, or an update whose
/// `transitions` differs from the record's token) stores at least `ModifyIndex + 1` of the
/// version it replaces. Tokens therefore rise across everything that can happen to the key,
/// deletion included ([`Capabilities::durable_tokens`]):
///
/// - every token is at most the Raft index of the write that established it: a create's token
///   is `max(asked, CreateIndex)`, where `CreateIndex` is the create's own index; an update's
///   `max(asked, v + 1)`, where `v + 1` is at most the update's own index; and an elector asks
///   for at most one more than a token it saw, itself at most the index of an earlier write;
/// - so a new key's `CreateIndex` is above every token any earlier incarnation of the key held
///   (all written at smaller indexes), and `v + 1` is above every token the key held up to
///   version `v`, the latest.
///
/// No read is needed before a create, and no race exists between one: the key's own
/// `CreateIndex` is the bound. (A bound read from `X-Consul-Index` before the create would
/// not do: the key could be created and deleted by others between that read and the create.)
///
/// A fresh process that never saw the earlier terms thus still continues above them. Tokens
/// are Raft indexes, not 1, 2, 3: compare them, don't count them. The value keeps the token
/// asked for until the first renewal writes the lifted one; every read (`get`, the watch)
/// reports the lifted token.
///
/// **What breaks it:** anything that makes Raft indexes start over or go back — a dev agent
/// (`consul agent -dev` keeps everything in memory: a restart starts at index 1, with every key
/// gone), servers whose data directories were wiped, a KV store copied into another cluster
/// (with `consul kv export`/`import` or a snapshot restored into a new cluster, whose indexes
/// are lower), or a snapshot restored into the same cluster (restored keys come back with their
/// old `ModifyIndex`, so the next term over one of them asks only for `ModifyIndex + 1`, below
/// tokens issued after the snapshot); and a `transitions` written by hand (or by a client
/// asking for more than one above what it saw) above the Raft index. After such an operation
/// a fresh process can repeat an earlier token (each running elector still never repeats one
/// it saw itself): before starting electors again, raise each record's `transitions` above
/// every token issued before.
///
/// # Ages
///
/// [`Stored::age`] is always `None`: Consul keeps no write time for a key (only Raft indexes),
/// and no time can be read on a single clock, so a fresh process waits one lease duration from
/// when it first sees a version, as with client-go.
///
/// # Watch
///
/// Each watch runs a blocking query, `GET /v1/kv/<key>?index=<i>&wait=60s`, in a task of its
/// own; Consul answers as soon as the key's index passes `i` (or after `wait`, plus up to
/// `wait / 16` of Consul's jitter), with the key's value, so every change becomes a
/// [`WatchEvent::Put`] carrying the version and record as stored, renewals included
/// ([`Capabilities::watch_every_write`]), or [`WatchEvent::Deleted`] when the key disappears.
/// A burst of writes may be reported by its last version alone (a watcher that falls behind
/// skips to the newest event); a version older than one already yielded is never yielded.
/// Consul's rules for `index` are followed: the index of each answer is the next query's, set
/// back to 0 (a plain read) if it went backwards (a snapshot restored, a new cluster) and never
/// below 1; queries of one watch start at least 5 ms apart. After a failure the watch yields a
/// [`WatchEvent::Hint`] (the caller re-reads) and retries after a jittered pause, between half
/// and all of a value that doubles from 100 ms to 5 s — never a hot loop. A refusal
/// ([`Error::PermissionDenied`]), a key holding something else than a tenure record
/// ([`Error::Decode`]) or a refused request ([`Error::Rejected`]) is yielded and ends the watch.
/// The HTTP timeout of each query is its `wait`, plus the jitter, plus the store's timeout.
///
/// Blocking queries hold an HTTP connection each; a handle runs at most half of
/// [`ConsulOptions::max_connections`](super::ConsulOptions::max_connections) at once (64 by
/// default), and the rest of the watches wait their turn, first come first served. While
/// watches outnumber that limit, each query waits only 250 ms for a change, so that they take
/// turns; their events then come late — never wrong — and watching followers rely on the
/// safety read they make every lease duration.
///
/// # Names
///
/// A name is escaped into one key segment, injectively: ASCII letters, digits, `-`, `_`, `.`,
/// `~` and non-ASCII characters stand for themselves; every other byte — `/`, `%`, spaces,
/// controls — becomes `%XX`, and so does a leading `.` (so no key segment is `.`, `..` or
/// `.lock`). So `a/b` is the key `tenure/a%2Fb`, distinct from `a%2Fb` (`tenure/a%252Fb`), and
/// no election key ever has a `/` below the prefix: the session locks' `<prefix>/.lock` keys,
/// and the keys of `consul lock` on a path below the prefix, never collide with a record. An
/// empty name, or one whose escaped form is longer than [`MAX_NAME_LEN`] bytes, fails with
/// [`Error::InvalidName`] before any call.
///
/// # Sizes
///
/// A record whose JSON is longer than [`MAX_RECORD_LEN`] (the default `txn_max_req_len` of
/// 512 KiB, for the base64-encoded value and the request around it), or whose transaction
/// would be longer than [`TXN_MAX_REQ_LEN`] (a long prefix), fails with [`Error::TooLarge`]
/// and nothing is sent. Do not lower `limits.txn_max_req_len` or `limits.kv_max_value_size`
/// below the records you write: the agent would refuse them ([`Error::Rejected`]).
///
/// # Garbage
///
/// A key whose value is not a tenure record — empty, another program's data, a record of a
/// future format — makes `get` and the watch fail with [`Error::Decode`] naming the key;
/// `put(Update)` refuses to overwrite it (a version of it is never one the store read as a
/// record, so the store reads the key before writing), and `put(Create)` fails with
/// [`Error::AlreadyExists`].
///
/// # Permissions
///
/// With ACLs, the token needs `key_prefix "<prefix>" { policy = "write" }` (reads, writes and
/// deletes; `read` is enough for a process that only watches). A refusal — 403 on a read,
/// "Permission denied" inside a transaction — is [`Error::PermissionDenied`] naming the key,
/// which is final: an elector stops with it. A token Consul does not know fails already at
/// [`ConsulOptions::connect`](super::ConsulOptions::connect).
///
/// # Timeouts and failures
///
/// Every call runs under the handle's timeout ([`ConsulOptions::timeout`](super::ConsulOptions::timeout),
/// default 2 s) and an elapsed deadline is [`Error::Timeout`]; a refused connection, "No cluster
/// leader" and other 5xx answers are [`Error::Unavailable`], which the elector retries: a
/// leader whose agent is gone steps down by its renew deadline. A write whose answer was lost
/// may have happened; the elector re-reads, as after any conflict.
#[derive(Clone)]
pub struct ConsulStore {
    consul: Consul,
    inner: Arc<Shared>,
}

struct Shared {
    /// The last version seen (read, watched or written) of each name, with its token.
    seen: Mutex<HashMap<String, (u64, u64)>>,
    /// How many watches are running.
    watches: AtomicUsize,
}

impl fmt::Debug for ConsulStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulStore")
            .field("consul", &self.consul)
            .finish_non_exhaustive()
    }
}

/// A KV entry as Consul returns it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    #[serde(default)]
    value: Option<String>,
    create_index: u64,
    modify_index: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnReply {
    #[serde(default)]
    results: Option<Vec<TxnResult>>,
    #[serde(default)]
    errors: Option<Vec<TxnError>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnResult {
    #[serde(rename = "KV")]
    kv: Option<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnError {
    #[serde(default)]
    what: String,
}

impl ConsulStore {
    /// A store on this Consul handle (clones share its connections).
    pub fn new(consul: Consul) -> Self {
        ConsulStore {
            consul,
            inner: Arc::new(Shared {
                seen: Mutex::new(HashMap::new()),
                watches: AtomicUsize::new(0),
            }),
        }
    }

    /// The Consul handle.
    pub fn consul(&self) -> &Consul {
        &self.consul
    }

    /// The Consul key that holds `name`'s record: the prefix followed by the escaped name (see
    /// [Names](#names)).
    ///
    /// Fails with [`Error::InvalidName`] if `name` is empty or its escaped form is longer than
    /// [`MAX_NAME_LEN`] bytes.
    pub fn key_of(&self, name: &str) -> Result<String> {
        Ok(format!("{}{}", self.consul.prefix(), escape(name)?))
    }

    fn remember(&self, name: &str, version: u64, token: u64) {
        let mut seen = self
            .inner
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if seen.len() >= CACHE_LIMIT && !seen.contains_key(name) {
            seen.clear();
        }
        seen.insert(name.to_owned(), (version, token));
    }

    fn remembered(&self, name: &str, version: u64) -> Option<u64> {
        let seen = self
            .inner
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        seen.get(name)
            .and_then(|&(v, t)| (v == version).then_some(t))
    }

    fn forget(&self, name: &str) {
        let mut seen = self
            .inner
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        seen.remove(name);
    }

    /// A consistent read of `key`: the entry, or `None`.
    async fn read(&self, name: &str, key: &str) -> Result<Option<Stored>> {
        let req = self
            .consul
            .request(Method::GET, &kv_path(key))
            .query(&[("consistent", "")]);
        let reply = self
            .consul
            .call(req, "get", key, self.consul.timeout())
            .await?;
        match reply.status {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                let stored = decode_entries(key, &reply.body)?;
                let token = stored.record.transitions;
                if let Ok(v) = stored.version.as_str().parse() {
                    self.remember(name, v, token);
                }
                Ok(Some(stored))
            }
            s => Err(unexpected(key, s)),
        }
    }

    /// Runs a transaction of `ops` for `key`: the results, or the reasons Consul refused it.
    async fn txn(
        &self,
        operation: &'static str,
        key: &str,
        body: Vec<u8>,
    ) -> Result<std::result::Result<Vec<TxnResult>, Vec<String>>> {
        let req = self
            .consul
            .request(Method::PUT, "/txn")
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        let Reply { status, body, .. } = self
            .consul
            .call(req, operation, key, self.consul.timeout())
            .await?;
        let parsed = || {
            serde_json::from_slice::<TxnReply>(&body).map_err(|e| Error::Backend {
                store: KIND,
                source: format!("unreadable transaction reply for {key:?}: {e}").into(),
            })
        };
        match status {
            s if s.is_success() => Ok(Ok(parsed()?.results.unwrap_or_default())),
            StatusCode::CONFLICT => {
                let whats: Vec<String> = parsed()?
                    .errors
                    .unwrap_or_default()
                    .into_iter()
                    .map(|e| e.what)
                    .collect();
                if let Some(denied) = whats.iter().find(|w| is_denied(w)) {
                    return Err(Error::PermissionDenied {
                        store: KIND,
                        operation,
                        name: key.to_owned(),
                        source: format!("Consul refused the transaction on {key:?}: {denied}")
                            .into(),
                    });
                }
                Ok(Err(whats))
            }
            s => Err(unexpected(key, s)),
        }
    }

    /// The token stored at version `v` of `name`, or why an update of `v` cannot succeed.
    async fn token_at(&self, name: &str, key: &str, v: u64) -> Result<u64> {
        if let Some(t) = self.remembered(name, v) {
            return Ok(t);
        }
        match self.read(name, key).await? {
            Some(s) if s.version.as_str() == v.to_string() => Ok(s.record.transitions),
            _ => Err(conflict(name)),
        }
    }
}

fn conflict(name: &str) -> Error {
    Error::Conflict {
        store: KIND,
        name: name.to_owned(),
    }
}

fn is_denied(what: &str) -> bool {
    what.contains("Permission denied") || what.contains("ACL not found")
}

fn unexpected(key: &str, status: StatusCode) -> Error {
    Error::Backend {
        store: KIND,
        source: format!("Consul answered {status} for {key:?}").into(),
    }
}

/// The URL path of `key` under `/v1/kv/`: every byte but unreserved ones and `/` escaped, so
/// that the agent decodes it back to exactly `key`.
fn kv_path(key: &str) -> String {
    let mut p = String::from("/kv/");
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            p.push(char::from(b));
        } else {
            p.push_str(&format!("%{b:02X}"));
        }
    }
    p
}

/// The key segment of `name` (see [`ConsulStore`]'s Names).
fn escape(name: &str) -> Result<String> {
    let out = crate::segment::escape_segment(KIND, name)?;
    if out.len() > MAX_NAME_LEN {
        return Err(Error::InvalidName {
            store: KIND,
            name: name.to_owned(),
            reason: format!(
                "the escaped name is too long: {} bytes, at most {MAX_NAME_LEN}",
                out.len()
            ),
        });
    }
    Ok(out)
}

fn garbage(key: &str, why: impl fmt::Display) -> Error {
    Error::Decode {
        store: KIND,
        key: key.to_owned(),
        source: format!("the key holds {why}; it is left untouched").into(),
    }
}

/// The record and version of a KV entry, its token lifted to the key's `CreateIndex`.
fn decode_entry(key: &str, e: &Entry) -> Result<Stored> {
    let Some(value) = e.value.as_deref() else {
        return Err(garbage(key, "an empty value, not a tenure record"));
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(|err| Error::Backend {
            store: KIND,
            source: format!("Consul sent an invalid base64 value for {key:?}: {err}").into(),
        })?;
    let mut record = LeaseRecord::from_json(KIND, key, &bytes)?;
    record.transitions = record.transitions.max(e.create_index);
    Ok(Stored::new(record, Version::from(e.modify_index)))
}

/// The entry of a `GET /v1/kv/<key>` answer (a JSON array of one entry).
fn decode_entries(key: &str, body: &[u8]) -> Result<Stored> {
    let entries: Vec<Entry> = serde_json::from_slice(body).map_err(|e| Error::Backend {
        store: KIND,
        source: format!("unreadable KV reply for {key:?}: {e}").into(),
    })?;
    match entries.first() {
        Some(e) => decode_entry(key, e),
        None => Err(Error::Backend {
            store: KIND,
            source: format!("Consul answered an empty entry list for {key:?}").into(),
        }),
    }
}

/// The flags of a write replacing version `index` (0: a create): the tag and the low 32 bits
/// of `index`, so that they differ from the flags of the version before (written over a
/// smaller index) unless 2³² writes lie between; `flip` changes them once more.
fn flags_for(index: u64, flip: bool) -> u64 {
    RECORD_FLAGS_TAG | (index & 0xffff_ffff) ^ u64::from(flip)
}

/// The JSON body of a one-operation `cas` transaction.
fn cas_body(key: &str, json: &[u8], index: u64, flags: u64) -> Vec<u8> {
    let value = base64::engine::general_purpose::STANDARD.encode(json);
    let op = serde_json::json!([{ "KV": {
        "Verb": "cas",
        "Key": key,
        "Value": value,
        "Flags": flags,
        "Index": index,
    }}]);
    serde_json::to_vec(&op).unwrap_or_default()
}

/// Refuses a record whose JSON is `len` bytes, or a transaction of `body` bytes, too long.
fn check_len(name: &str, len: usize, body: usize) -> Result<()> {
    if len > MAX_RECORD_LEN {
        return Err(Error::TooLarge {
            store: KIND,
            name: name.to_owned(),
            size: len,
            limit: MAX_RECORD_LEN,
            what: "a value in a Consul transaction under the default txn_max_req_len",
        });
    }
    if body > TXN_MAX_REQ_LEN {
        return Err(Error::TooLarge {
            store: KIND,
            name: name.to_owned(),
            size: body,
            limit: TXN_MAX_REQ_LEN,
            what: "a Consul transaction (the default txn_max_req_len)",
        });
    }
    Ok(())
}

/// The written entry's `(CreateIndex, ModifyIndex)` from a transaction's results.
fn written(key: &str, results: &[TxnResult]) -> Result<(u64, u64)> {
    results
        .iter()
        .find_map(|r| r.kv.as_ref())
        .map(|e| (e.create_index, e.modify_index))
        .ok_or_else(|| Error::Backend {
            store: KIND,
            source: format!("the transaction on {key:?} returned no entry").into(),
        })
}

#[async_trait::async_trait]
impl LeaseStore for ConsulStore {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn get(&self, name: &str) -> Result<Option<Stored>> {
        let key = self.key_of(name)?;
        self.read(name, &key).await
    }

    async fn put(&self, name: &str, record: &LeaseRecord, mode: PutMode) -> Result<Version> {
        let key = self.key_of(name)?;
        let (index, stored) = match &mode {
            PutMode::Create => (0, record.clone()),
            PutMode::Update(v) => {
                let Some(v) = v.as_str().parse::<u64>().ok().filter(|&v| v > 0) else {
                    return Err(conflict(name));
                };
                let mut stored = record.clone();
                let current = self.token_at(name, &key, v).await?;
                if current != record.transitions {
                    // A new term: above every token the key held up to version v.
                    stored.transitions = record.transitions.max(v.saturating_add(1));
                }
                (v, stored)
            }
        };
        let json = stored.to_json();
        check_len(name, json.len(), 0)?;
        let mut flip = false;
        let outcome = loop {
            let body = cas_body(&key, &json, index, flags_for(index, flip));
            check_len(name, json.len(), body.len())?;
            let outcome = self.txn("put", &key, body).await?;
            match &outcome {
                // Consul skipped a write identical to the version it replaces (same value and
                // flags: 2³² writes apart) and kept its index: write once more, other flags.
                Ok(results) if index > 0 && !flip && written(&key, results)?.1 == index => {
                    flip = true;
                }
                _ => break outcome,
            }
        };
        match outcome {
            Ok(results) => {
                let (created, modified) = written(&key, &results)?;
                if index > 0 && modified <= index {
                    return Err(Error::Backend {
                        store: KIND,
                        source: format!("Consul kept version {index} of {key:?} for a write")
                            .into(),
                    });
                }
                self.remember(name, modified, stored.transitions.max(created));
                Ok(Version::from(modified))
            }
            Err(whats) => {
                debug!(key = %key, errors = ?whats, "Consul refused the write");
                if whats.iter().any(|w| w.contains("index is stale")) {
                    Err(match mode {
                        PutMode::Create => Error::AlreadyExists {
                            store: KIND,
                            name: name.to_owned(),
                        },
                        PutMode::Update(_) => conflict(name),
                    })
                } else {
                    Err(Error::Backend {
                        store: KIND,
                        source: format!("Consul refused the write of {key:?}: {whats:?}").into(),
                    })
                }
            }
        }
    }

    fn watch(&self, name: &str) -> Option<WatchStream> {
        let key = match self.key_of(name) {
            Ok(k) => k,
            Err(e) => return Some(futures_util::stream::once(async { Err(e) }).boxed()),
        };
        let mailbox = Arc::new(Mailbox::default());
        let task = tokio::spawn(watch_loop(
            self.clone(),
            name.to_owned(),
            key,
            Arc::downgrade(&mailbox),
        ));
        let guard = AbortOnDrop(task);
        Some(
            futures_util::stream::unfold((mailbox, guard), |(mailbox, guard)| async move {
                let item = mailbox.take().await?;
                Some((item, (mailbox, guard)))
            })
            .boxed(),
        )
    }

    async fn delete(&self, name: &str, version: &Version) -> Result<()> {
        let key = self.key_of(name)?;
        let Some(v) = version.as_str().parse::<u64>().ok().filter(|&v| v > 0) else {
            return Err(conflict(name));
        };
        let ops = serde_json::json!([
            { "KV": { "Verb": "check-index", "Key": key, "Index": v } },
            { "KV": { "Verb": "delete-cas", "Key": key, "Index": v } },
        ]);
        let body = serde_json::to_vec(&ops).unwrap_or_default();
        match self.txn("delete", &key, body).await? {
            Ok(_) => {
                self.forget(name);
                Ok(())
            }
            Err(whats) => {
                debug!(key = %key, errors = ?whats, "Consul refused the delete");
                let stale = whats.iter().any(|w| {
                    w.contains("index is stale")
                        || w.contains("doesn't exist")
                        || w.contains("current modify index")
                });
                if stale {
                    Err(conflict(name))
                } else {
                    Err(Error::Backend {
                        store: KIND,
                        source: format!("Consul refused the delete of {key:?}: {whats:?}").into(),
                    })
                }
            }
        }
    }

    /// Durable tokens from Raft indexes (see [Fencing tokens](ConsulStore#fencing-tokens) for
    /// what can still break that); the watch reports every write, renewals included.
    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
            .with_durable_tokens(true)
            .with_watch_every_write(true)
    }
}

// ---------------------------------------------------------------------------------------------
// Watch: one blocking query after another, in a task per watch
// ---------------------------------------------------------------------------------------------

/// Aborts the watch's task when its stream is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Counts a running watch while alive.
struct Running(Arc<Shared>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.watches.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The next query's index after an answer with `X-Consul-Index` `answered`, when the last
/// answer had `before` (0: none), by Consul's rules: back to 0 (a plain read) if the index
/// went backwards, never below 1 otherwise. The flag says the index went backwards.
fn next_index(before: u64, answered: u64) -> (u64, bool) {
    if answered < before {
        (0, true)
    } else {
        (answered.max(1), false)
    }
}

/// The pause after a failure: `pause`, halved and jittered by up to as much again; doubles
/// `pause` (up to [`MAX_PAUSE`]).
fn next_pause(pause: &mut Duration) -> Duration {
    let half = *pause / 2;
    let jitter = half.mul_f64(rand::thread_rng().gen::<f64>());
    *pause = (*pause * 2).min(MAX_PAUSE);
    half + jitter
}

/// What one blocking query found.
enum Found {
    Entry(Stored),
    Missing,
}

async fn watch_loop(
    store: ConsulStore,
    name: String,
    key: String,
    mailbox: std::sync::Weak<Mailbox>,
) {
    store.inner.watches.fetch_add(1, Ordering::Relaxed);
    let _running = Running(store.inner.clone());
    let consul = store.consul.clone();
    let post = |item: Result<WatchEvent>| match mailbox.upgrade() {
        Some(m) => {
            m.post(item);
            true
        }
        None => false,
    };
    // The index of the last answer (0: none yet), and whether the next query is a plain read
    // (the first one, and the first after a failure: it also tells at once whether the index
    // went backwards meanwhile, instead of after a whole `wait`).
    let mut index = 0u64;
    let mut resync = true;
    // Whether the key existed at the last answer (unknown before the first).
    let mut existed: Option<bool> = None;
    let mut last_put: Option<u64> = None;
    let mut pause = MIN_PAUSE;
    let mut last_start: Option<tokio::time::Instant> = None;
    loop {
        if let Some(at) = last_start {
            tokio::time::sleep_until(at + MIN_QUERY_INTERVAL).await;
        }
        let contended = store.inner.watches.load(Ordering::Relaxed) > consul.blocking_limit();
        let wait = if contended {
            CONTENDED_WAIT
        } else {
            WATCH_WAIT
        };
        let mut req = consul.request(Method::GET, &kv_path(&key));
        if !resync {
            req = req.query(&[
                ("index", index.to_string()),
                ("wait", format!("{}ms", wait.as_millis())),
            ]);
        }
        let http_timeout = wait + wait / 16 + consul.timeout();
        let permit = consul.blocking_permit().await;
        last_start = Some(tokio::time::Instant::now());
        let answer = consul.exchange_read(req, "watch", &key, http_timeout).await;
        drop(permit);
        let failed = match answer {
            Ok(r) if r.status.is_success() || r.status == StatusCode::NOT_FOUND => {
                let found = if r.status == StatusCode::NOT_FOUND {
                    Ok(Found::Missing)
                } else {
                    decode_entries(&key, &r.body).map(Found::Entry)
                };
                match found {
                    Ok(found) => Ok((r.index, found)),
                    Err(e) => Err(e),
                }
            }
            Ok(r) => Err(unexpected(&key, r.status)),
            Err(e) => Err(e),
        };
        let (answered, found) = match failed {
            Ok(ok) => ok,
            Err(e) if !e.is_retryable() => {
                warn!(key = %key, error = %e, "the watch ends");
                post(Err(e));
                return;
            }
            Err(e) => {
                debug!(key = %key, error = %e, "watch query failed; retrying after a pause");
                if !post(Ok(WatchEvent::Hint)) {
                    return;
                }
                resync = true;
                tokio::time::sleep(next_pause(&mut pause)).await;
                continue;
            }
        };
        pause = MIN_PAUSE;
        let answered = answered.unwrap_or(match &found {
            Found::Entry(s) => s.version.as_str().parse().unwrap_or(0),
            Found::Missing => 0,
        });
        let (next, backwards) = next_index(index, answered);
        if backwards {
            // A restored snapshot or a new cluster: whatever we knew may be wrong.
            debug!(key = %key, before = index, answered, "the Consul index went backwards; re-reading");
            last_put = None;
            existed = None;
            index = 0;
            resync = true;
            if !post(Ok(WatchEvent::Hint)) {
                return;
            }
            continue;
        }
        index = next;
        resync = false;
        let event = match found {
            Found::Entry(stored) => {
                let v: u64 = stored.version.as_str().parse().unwrap_or(0);
                existed = Some(true);
                if last_put.is_some_and(|l| v <= l) {
                    None
                } else {
                    last_put = Some(v);
                    store.remember(&name, v, stored.record.transitions);
                    Some(WatchEvent::Put(stored))
                }
            }
            Found::Missing => {
                let was = existed.replace(false);
                (was == Some(true)).then_some(WatchEvent::Deleted)
            }
        };
        if let Some(event) = event {
            if !post(Ok(event)) {
                return;
            }
        } else if mailbox.strong_count() == 0 {
            return;
        }
    }
}

/// What the watch task has for its stream: the latest event not yet taken (a newer one
/// replaces it: every event reports the key's whole state, so a slow watcher skips to the
/// newest), or the error that ends the watch (never replaced; the stream ends after it).
#[derive(Default)]
struct Mailbox {
    mail: Mutex<Mail>,
    posted: tokio::sync::Notify,
}

#[derive(Default)]
struct Mail {
    next: Option<Result<WatchEvent>>,
    /// A final error was taken: the stream has ended.
    done: bool,
}

impl Mailbox {
    fn post(&self, item: Result<WatchEvent>) {
        {
            let mut m = self.mail.lock().unwrap_or_else(PoisonError::into_inner);
            if m.done || matches!(m.next, Some(Err(_))) {
                return;
            }
            m.next = Some(item);
        }
        self.posted.notify_one();
    }

    /// The next item; `None` after an error was taken (the stream ends). Cancellation safe.
    async fn take(&self) -> Option<Result<WatchEvent>> {
        loop {
            let taken = {
                let mut m = self.mail.lock().unwrap_or_else(PoisonError::into_inner);
                if m.done {
                    return None;
                }
                let item = m.next.take();
                m.done = matches!(item, Some(Err(_)));
                item
            };
            if let Some(item) = taken {
                return Some(item);
            }
            self.posted.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_escape_injectively_into_one_segment() {
        assert_eq!(escape("scheduler").unwrap(), "scheduler");
        assert_eq!(escape("a/b").unwrap(), "a%2Fb");
        assert_eq!(escape("a%2Fb").unwrap(), "a%252Fb");
        assert_eq!(escape(".").unwrap(), "%2E");
        assert_eq!(escape("..").unwrap(), "%2E.");
        assert_eq!(escape(".lock").unwrap(), "%2Elock");
        assert_eq!(escape("a.lock").unwrap(), "a.lock");
        assert_eq!(escape("a b").unwrap(), "a%20b");
        assert_eq!(escape("é").unwrap(), "é");
        assert_eq!(escape("A").unwrap(), "A");
        assert!(matches!(escape(""), Err(Error::InvalidName { .. })));
        assert!(escape(&"x".repeat(MAX_NAME_LEN)).is_ok());
        assert!(matches!(
            escape(&"/".repeat(MAX_NAME_LEN / 3 + 1)),
            Err(Error::InvalidName { .. })
        ));
        let names = [
            "a", "a/b", "a%2Fb", "a_b", "a.b", ".a", "%2Ea", "A", "a b", "a+b",
        ];
        let escaped: std::collections::HashSet<String> =
            names.iter().map(|n| escape(n).unwrap()).collect();
        assert_eq!(escaped.len(), names.len());
        for e in &escaped {
            assert!(!e.contains('/') && !e.starts_with('.'), "{e}");
        }
    }

    #[test]
    fn url_paths_keep_the_key() {
        assert_eq!(kv_path("tenure/a%2Fb"), "/kv/tenure/a%252Fb");
        assert_eq!(kv_path("tenure/a b"), "/kv/tenure/a%20b");
        assert_eq!(kv_path("tenure/é"), "/kv/tenure/%C3%A9");
    }

    #[test]
    fn index_rules() {
        assert_eq!(next_index(0, 0), (1, false), "never below 1");
        assert_eq!(next_index(0, 17), (17, false));
        assert_eq!(next_index(17, 17), (17, false));
        assert_eq!(next_index(17, 30), (30, false));
        assert_eq!(
            next_index(30, 17),
            (0, true),
            "reset when it goes backwards"
        );
    }

    #[test]
    fn pauses_grow_jittered_and_bounded() {
        let mut p = MIN_PAUSE;
        for _ in 0..20 {
            let before = p;
            let d = next_pause(&mut p);
            assert!(d >= before / 2 && d <= before, "{d:?} for {before:?}");
        }
        assert_eq!(p, MAX_PAUSE);
    }

    #[test]
    fn tokens_are_lifted_to_the_create_index() {
        let r = LeaseRecord::held_by("a", Duration::from_secs(3), 1);
        let value = base64::engine::general_purpose::STANDARD.encode(r.to_json());
        let e = Entry {
            value: Some(value),
            create_index: 40,
            modify_index: 45,
        };
        let s = decode_entry("k", &e).unwrap();
        assert_eq!(s.record.transitions, 40);
        assert_eq!(s.version, Version::from(45));
        let empty = Entry {
            value: None,
            create_index: 1,
            modify_index: 1,
        };
        assert!(matches!(
            decode_entry("k", &empty),
            Err(Error::Decode { .. })
        ));
    }

    #[test]
    fn sizes() {
        assert!(check_len("n", MAX_RECORD_LEN, TXN_MAX_REQ_LEN).is_ok());
        assert!(matches!(
            check_len("n", MAX_RECORD_LEN + 1, 0),
            Err(Error::TooLarge { .. })
        ));
        assert!(matches!(
            check_len("n", 10, TXN_MAX_REQ_LEN + 1),
            Err(Error::TooLarge { .. })
        ));
        let json = vec![b'x'; MAX_RECORD_LEN];
        let body = cas_body(
            &format!("tenure/{}", "n".repeat(MAX_NAME_LEN)),
            &json,
            u64::MAX,
            u64::MAX,
        );
        assert!(body.len() <= TXN_MAX_REQ_LEN, "{}", body.len());
    }

    #[test]
    fn flags_change_with_every_write() {
        assert_eq!(flags_for(0, false), RECORD_FLAGS_TAG);
        assert_eq!(flags_for(7, false), RECORD_FLAGS_TAG | 7);
        assert_ne!(flags_for(7, false), flags_for(7, true));
        assert_ne!(flags_for(7, false), flags_for(8, false));
        assert_eq!(flags_for(u64::MAX, false) >> 32, RECORD_FLAGS_TAG >> 32);
    }

    #[tokio::test]
    async fn a_mailbox_keeps_the_latest_event_and_a_final_error() {
        use futures_util::FutureExt;
        let m = Mailbox::default();
        assert!(m.take().now_or_never().is_none());
        m.post(Ok(WatchEvent::Hint));
        m.post(Ok(WatchEvent::Deleted));
        assert_eq!(m.take().await.unwrap().unwrap(), WatchEvent::Deleted);
        assert!(m.take().now_or_never().is_none());
        m.post(Err(Error::config("final")));
        m.post(Ok(WatchEvent::Hint));
        assert!(matches!(m.take().await, Some(Err(Error::Config { .. }))));
        assert!(m.take().await.is_none());
        assert!(m.take().await.is_none());
    }
}
