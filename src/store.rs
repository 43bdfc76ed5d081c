//! The store contract: a linearizable compare-and-swap register per election name.

use std::fmt;
use std::sync::Arc;

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

/// A stream that yields whenever a record *may* have changed.
pub type WatchStream = BoxStream<'static, Result<()>>;

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
/// - **Create may raise the fencing token.** A store that can lose records (Redis without
///   persistence) may store a [`LeaseRecord::transitions`] *greater* than the one given to
///   `put(Create)`, so that a re-created record's terms continue above the lost ones; it
///   stores everything else, and every `Update`, exactly as given. Callers learn the stored
///   token by re-reading after a create (the elector does).
/// - **Versions change on every write.** A successful `put` returns the new [`Version`], which
///   differs from every version the record had before; a `get` that starts after the `put`
///   returned observes it (or a later one).
/// - **Names are isolated.** Writes under one name never change what `get` returns for
///   another. A name the store cannot hold fails with [`Error::InvalidName`] — never a silent
///   truncation or collision.
/// - **Garbage is reported, not repaired.** Contents that are not a tenure record make `get`
///   fail with [`Error::Decode`] naming the store and key; neither `get` nor `put(Update)` may
///   overwrite them (`put(Create)` fails with `AlreadyExists`).
/// - **Every remote call is bounded.** Each call honours the store's timeout and maps an
///   elapsed deadline to [`Error::Timeout`]. Failures map to the semantic variants
///   ([`Error::PermissionDenied`], [`Error::Unavailable`], ...) with the backend's error as
///   `source`.
/// - **Watch is a hint.** [`watch`](Self::watch), when supported, yields soon after any change
///   of the record (and may yield spuriously). Callers re-read with `get`; a missed
///   notification may only delay them, never mislead them. Stores that cannot watch return
///   `None` and callers poll.
/// - **Delete is compare-and-delete.** [`delete`](Self::delete) removes the record only if its
///   version is still the given one, else [`Error::Conflict`].
/// - **Cancellation safety.** Dropping a call's future must leave the store consistent: a write
///   either happened entirely or not at all (the caller may not know which; it re-reads).
#[async_trait::async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// A short name of the store for errors and logs, for example `"redis"`.
    fn kind(&self) -> &'static str;

    /// Reads the record under `name` and its version, or `None` if there is none.
    async fn get(&self, name: &str) -> Result<Option<(LeaseRecord, Version)>>;

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
}

#[async_trait::async_trait]
impl<S: LeaseStore + ?Sized> LeaseStore for Arc<S> {
    fn kind(&self) -> &'static str {
        (**self).kind()
    }
    async fn get(&self, name: &str) -> Result<Option<(LeaseRecord, Version)>> {
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
}
