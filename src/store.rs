//! The store contract: a linearizable compare-and-swap register per election name.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::BoxStream;

use crate::error::{Error, Result};
use crate::record::LeaseRecord;

/// An opaque version of a stored record, compared for equality only.
///
/// Each store puts its native CAS token here: a Kubernetes `resourceVersion`, a Consul
/// `ModifyIndex`, a ZooKeeper `version`, a GCS `generation`, a counter.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Version(Arc<str>);

impl Version {
    /// Wraps a store's native version.
    pub fn new(v: impl AsRef<str>) -> Self {
        Version(Arc::from(v.as_ref()))
    }

    /// The store's native version as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<u64> for Version {
    fn from(v: u64) -> Self {
        Version::new(v.to_string())
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Version({})", self.0)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How [`LeaseStore::put`] may write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutMode {
    /// Create the record; fail with [`Error::AlreadyExists`] if one exists.
    Create,
    /// Replace the record; fail with [`Error::Conflict`] unless the stored version is this one.
    Update(Version),
}

impl PutMode {
    /// Checks this mode against the version stored now (`None`: no record), as the contract
    /// demands: `Create` needs no record ([`Error::AlreadyExists`]), `Update(v)` needs `v`
    /// ([`Error::Conflict`]). For stores that compare versions themselves, under a lock.
    pub fn check(&self, store: &'static str, name: &str, current: Option<&Version>) -> Result<()> {
        match (self, current) {
            (PutMode::Create, Some(_)) => Err(Error::AlreadyExists {
                store,
                name: name.to_owned(),
            }),
            (PutMode::Update(want), cur) if cur != Some(want) => Err(Error::Conflict {
                store,
                name: name.to_owned(),
            }),
            _ => Ok(()),
        }
    }
}

/// What a [watch](LeaseStore::watch) reports about a record; see the contract's **Watch** rule.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WatchEvent {
    /// This version of the record was written, and this is the record as the store holds it
    /// (its age, if given, counts as a `get`'s does). Callers use it exactly as a `get` result.
    Put(Stored),
    /// The record was deleted.
    Deleted,
    /// The record may have changed: re-read it. Stores that cannot say what changed (the file
    /// store) only ever yield hints, and every store yields one after a gap in its watch.
    Hint,
}

/// A stream of [`WatchEvent`]s for one name.
pub type WatchStream = BoxStream<'static, Result<WatchEvent>>;

/// A record as a store holds it: the record, its version and, where the store can tell on a
/// single clock, how long ago that version was written.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stored {
    /// The record.
    pub record: LeaseRecord,
    /// Its version.
    pub version: Version,
    /// How long before the store answered this version had been written, measured on one
    /// clock (the Redis server's, this machine's), or `None` if the store cannot tell. See the
    /// contract's **Age** rule.
    pub age: Option<Duration>,
}

impl Stored {
    /// A record and its version, age unknown.
    pub fn new(record: LeaseRecord, version: Version) -> Self {
        Stored {
            record,
            version,
            age: None,
        }
    }

    /// The record and its version.
    pub fn into_parts(self) -> (LeaseRecord, Version) {
        (self.record, self.version)
    }

    /// The same, with the age the store measured.
    #[must_use]
    pub fn with_age(mut self, age: Duration) -> Self {
        self.age = Some(age);
        self
    }
}

/// What a store promises beyond the contract's minimum; see [`LeaseStore::capabilities`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Tokens survive the record: a write that starts a term stores a
    /// [`LeaseRecord::transitions`] above every one this store ever held under the name, even
    /// after the record was deleted, expired or rolled back — so a process that never saw the
    /// earlier terms still continues above them. See the contract's **Fencing tokens** rule.
    pub durable_tokens: bool,
    /// The watch reports every write, renewals included — as a [`WatchEvent::Put`] or at
    /// least a [`WatchEvent::Hint`] — so a follower that watches needs no polling: it keeps a
    /// safety read about once per lease duration and after every restart of its watch.
    pub watch_every_write: bool,
    /// The shortest retry period the store sustains (a leader writes once per `R`), if it has
    /// one: [`LeaderElector`](crate::LeaderElector) and [`Mutex`](crate::lock::Mutex) builders
    /// over the store refuse a shorter `R` with [`Error::Config`](crate::Error::Config) naming
    /// the store and the limit (Cloud Storage: 1 s, its write rate per object).
    pub min_retry_period: Option<Duration>,
}

impl Capabilities {
    /// No promise beyond the contract (the default).
    pub const NONE: Capabilities = Capabilities {
        durable_tokens: false,
        watch_every_write: false,
        min_retry_period: None,
    };

    /// These capabilities with [`min_retry_period`](Self::min_retry_period) set to `at_least`.
    #[must_use]
    pub const fn with_min_retry_period(mut self, at_least: Duration) -> Self {
        self.min_retry_period = Some(at_least);
        self
    }

    /// Refuses a retry period below [`min_retry_period`](Self::min_retry_period), naming the
    /// store (`kind`) and the limit.
    pub(crate) fn check_retry_period(&self, kind: &str, retry_period: Duration) -> Result<()> {
        match self.min_retry_period {
            Some(min) if retry_period < min => Err(Error::config(format!(
                "retry_period ({retry_period:?}) must be at least {min:?} on the {kind} store: \
                 a leader writes once per retry period, and the store allows no more"
            ))),
            _ => Ok(()),
        }
    }

    /// These capabilities with [`watch_every_write`](Self::watch_every_write) set to `on`.
    #[must_use]
    pub const fn with_watch_every_write(mut self, on: bool) -> Self {
        self.watch_every_write = on;
        self
    }

    /// These capabilities with [`durable_tokens`](Self::durable_tokens) set to `on`.
    #[must_use]
    pub const fn with_durable_tokens(mut self, on: bool) -> Self {
        self.durable_tokens = on;
        self
    }
}

/// Whether writing `record` over `current` starts a term: a create, or a different
/// [`LeaseRecord::transitions`]. Renewals and releases keep their term's token.
pub fn starts_term(current: Option<&LeaseRecord>, record: &LeaseRecord) -> bool {
    current.is_none_or(|c| c.transitions != record.transitions)
}

/// A linearizable compare-and-swap register holding one [`LeaseRecord`] per name.
///
/// This is all the [`LeaderElector`](crate::LeaderElector) and `Mutex` need from a
/// coordination service. Implement it and run the conformance suite
/// (`tenure::conformance`, feature `conformance`) against a real server.
///
/// # Contract
///
/// - **Linearizable CAS.** [`put`](Self::put) with [`PutMode::Create`] fails with
///   [`Error::AlreadyExists`] if a record exists; with [`PutMode::Update`]`(v)` it fails with
///   [`Error::Conflict`] unless the stored version is `v` (including when there is no record
///   any more). There is no blind overwrite.
/// - **Versions change on every write.** A successful `put` returns the new [`Version`], which
///   differs from every version the record had before — also across delete and re-create; a
///   `get` that starts after the `put` returned observes it (or a later one).
/// - **Fencing tokens.** A term's token is the [`LeaseRecord::transitions`] stored by the
///   write that starts it (one that [starts a term](starts_term): a create, or a different
///   `transitions`). The rule, upheld by the elector and every store together: *a term's token
///   is strictly greater than every token that any earlier term of the election carried,
///   whatever happened to the record in between.*
///   - The elector asks for `max(token observed, highest token this elector ever saw) + 1`,
///     and refuses to go past `u64::MAX` ([`Error::Fencing`]) rather than repeat it.
///   - A write that starts a term may store a **larger** `transitions` than asked (everything
///     else exactly as given); renewals and releases store it exactly. Callers learn the token
///     stored by re-reading the version `put` returned (the elector does).
///   - A store that claims [`Capabilities::durable_tokens`] stores one above every
///     `transitions` it ever held under the name — also after the record was deleted, expired
///     or rolled back — from a counter that deleting the record does not remove, or from a
///     monotonic position of the store itself (the Redis server's clock, etcd's revision). Its
///     documentation says exactly what can still break that (say, a server clock stepped back).
///   - A store that does not claim it relies on the elector's memory alone: a process that
///     never saw the earlier terms may repeat a token after a deletion. Its documentation says
///     what an operator must not do.
/// - **Age.** [`get`](Self::get) may report a version's [`Stored::age`]: how long before the
///   store answered it was written, measured **on one clock** (the server's own, or that of
///   the one machine every client of a local store runs on) — never by comparing one machine's
///   clock with another's. Callers count a lease's expiry from `now − age` instead of from the
///   moment they first saw the version, so a fresh process does not wait a whole lease again
///   for a holder that died long ago. A reported age may be too small (transit time), never
///   too large.
/// - **Names are isolated.** Writes under one name never change what `get` returns for
///   another. A name the store cannot hold fails with [`Error::InvalidName`] — never a silent
///   truncation or collision.
/// - **Sizes are checked before writing.** A record the store cannot hold, or could not read
///   back, fails with [`Error::TooLarge`] naming the limit, and nothing is written.
/// - **Garbage is reported, not repaired.** Contents that are not a tenure record make `get`
///   fail with [`Error::Decode`] naming the store and key; neither `get` nor `put(Update)` may
///   overwrite them (`put(Create)` fails with `AlreadyExists`).
/// - **Every remote call is bounded.** Each call honours the store's timeout and maps an
///   elapsed deadline to [`Error::Timeout`]. Failures map to the semantic variants
///   ([`Error::PermissionDenied`], [`Error::Unavailable`], ...) with the backend's error as
///   `source`.
/// - **Watch.** [`watch`](Self::watch), when supported, reports changes of the record as
///   [`WatchEvent`]s: `Put(stored)` carries the version written and the record as stored, where
///   the store knows them; `Deleted`; and `Hint` ("may have changed: re-read"), the only event
///   of a store that cannot tell what changed. The rules:
///   - *Order.* Events for one name follow the order in which the store applied the writes; a
///     store never yields a `Put` of a version older than one it already yielded.
///   - *Duplicates* are allowed (a `Put` of a version already seen changes nothing), and so is
///     *coalescing*: a burst of writes may be reported by the `Put` of its last version alone.
///     What is not allowed is ending on a stale state: after the last write, the last event
///     reports it (its `Put`, `Deleted`, or a `Hint`).
///   - *Gaps.* Whenever the watch may have missed writes — it (re)connected, a message was
///     dropped, a buffer overflowed, the stream was restarted — the store yields a `Hint`
///     before any further `Put`, so that the caller re-reads.
///   - *A missed event may only delay, never mislead.* A caller uses a `Put` exactly as a
///     `get` result: the lease clock of a version starts when the caller first sees it, by
///     watch or by read (or `now − age`). A version seen late only makes a follower wait
///     longer, and every takeover is a compare-and-swap against the version the caller last
///     saw, so a missed renewal makes that write conflict, never succeed.
///   - *Final errors.* An error that retrying cannot fix (say [`Error::PermissionDenied`]) is
///     yielded and ends the stream: the elector then stops with it. A stream that simply ends
///     is restarted by the caller (after a pause), which then re-reads.
///
///   A store whose watch yields an event for every write, renewals included, says so in
///   [`Capabilities::watch_every_write`]; followers then stop polling. Stores that cannot
///   watch return `None`, and callers poll.
/// - **Delete is compare-and-delete.** [`delete`](Self::delete) removes the record only if its
///   version is still the given one, else [`Error::Conflict`].
/// - **Cancellation safety.** Dropping a call's future must leave the store consistent: a write
///   either happened entirely or not at all (the caller may not know which; it re-reads).
#[async_trait::async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// A short name of the store for errors and logs, for example `"redis"`.
    fn kind(&self) -> &'static str;

    /// Reads the record under `name`, its version and (if the store can tell) its age, or
    /// `None` if there is none.
    async fn get(&self, name: &str) -> Result<Option<Stored>>;

    /// Writes `record` under `name` if `mode` allows it, returning the new version.
    async fn put(&self, name: &str, record: &LeaseRecord, mode: PutMode) -> Result<Version>;

    /// A stream that yields when the record under `name` may have changed, or `None` if this
    /// store cannot watch (callers then poll).
    fn watch(&self, name: &str) -> Option<WatchStream> {
        let _ = name;
        None
    }

    /// Deletes the record under `name` if its version is still `version`.
    async fn delete(&self, name: &str, version: &Version) -> Result<()> {
        let _ = (name, version);
        Err(Error::Unsupported {
            store: self.kind(),
            operation: "delete",
        })
    }

    /// What this store promises beyond the contract's minimum (default: nothing).
    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
    }
}

#[async_trait::async_trait]
impl<S: LeaseStore + ?Sized> LeaseStore for Arc<S> {
    fn kind(&self) -> &'static str {
        (**self).kind()
    }
    async fn get(&self, name: &str) -> Result<Option<Stored>> {
        (**self).get(name).await
    }
    async fn put(&self, name: &str, record: &LeaseRecord, mode: PutMode) -> Result<Version> {
        (**self).put(name, record, mode).await
    }
    fn watch(&self, name: &str) -> Option<WatchStream> {
        (**self).watch(name)
    }
    async fn delete(&self, name: &str, version: &Version) -> Result<()> {
        (**self).delete(name, version).await
    }
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimum_retry_period_is_enforced_and_named() {
        let caps = Capabilities::NONE.with_min_retry_period(Duration::from_secs(1));
        let e = caps
            .check_retry_period("gcs", Duration::from_millis(500))
            .unwrap_err();
        assert!(matches!(e, Error::Config { .. }), "{e:?}");
        assert!(
            e.to_string().contains("at least 1s on the gcs store"),
            "{e}"
        );
        assert!(caps
            .check_retry_period("gcs", Duration::from_secs(1))
            .is_ok());
        assert!(Capabilities::NONE
            .check_retry_period("memory", Duration::from_millis(1))
            .is_ok());
    }
}
