//! [`MemoryStore`]: an in-process store, the reference implementation and test double.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::record::LeaseRecord;
use crate::store::{Capabilities, LeaseStore, PutMode, Stored, Version, WatchEvent, WatchStream};

const KIND: &str = "memory";

/// An in-process [`LeaseStore`]: every clone shares the same records.
///
/// Records are kept encoded, exactly as a remote store keeps bytes, so decoding errors are
/// exercised too ([`put_raw`](Self::put_raw) writes arbitrary bytes). Watches report every
/// write with the record written ([`WatchEvent::Put`]). `get`
/// reports each version's age on the process's monotonic clock. Tokens are durable for the
/// store's lifetime: a write that starts a term stores a token above every one the name ever
/// held, also after a delete.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> tenure::Result<()> {
/// use tenure::{LeaseStore, LeaseRecord, MemoryStore, PutMode};
/// use std::time::Duration;
///
/// let store = MemoryStore::new();
/// let rec = LeaseRecord::held_by("me", Duration::from_secs(15), 1);
/// let v1 = store.put("job", &rec, PutMode::Create).await?;
/// assert!(store.put("job", &rec, PutMode::Create).await.unwrap_err().is_conflict());
/// let v2 = store.put("job", &rec, PutMode::Update(v1.clone())).await?;
/// assert!(store.put("job", &rec, PutMode::Update(v1)).await.unwrap_err().is_conflict());
/// assert_eq!(store.get("job").await?.unwrap().version, v2);
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    next_version: u64,
    entries: HashMap<String, Entry>,
}

struct Entry {
    current: Option<Current>,
    /// The highest token this name ever held: deleting the record does not lower it.
    floor: u64,
    changed: watch::Sender<u64>,
}

struct Current {
    bytes: Vec<u8>,
    version: u64,
    /// The token, when the bytes are a record (not written by `put_raw`).
    transitions: Option<u64>,
    written: Instant,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes arbitrary bytes under `name`, bypassing CAS (to test how garbage is handled).
    pub fn put_raw(&self, name: &str, bytes: impl Into<Vec<u8>>) {
        self.with(|inner| {
            inner.next_version += 1;
            let v = inner.next_version;
            let e = inner.entry(name);
            e.current = Some(Current {
                bytes: bytes.into(),
                version: v,
                transitions: None,
                written: Instant::now(),
            });
            e.changed.send_replace(v);
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        // A panic while holding the lock cannot leave a half-written entry, so poison is moot.
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut g)
    }
}

impl Inner {
    fn entry(&mut self, name: &str) -> &mut Entry {
        self.entries
            .entry(name.to_owned())
            .or_insert_with(|| Entry {
                current: None,
                floor: 0,
                changed: watch::channel(0).0,
            })
    }
}

#[async_trait::async_trait]
impl LeaseStore for MemoryStore {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn get(&self, name: &str) -> Result<Option<Stored>> {
        let found = self.with(|inner| {
            let c = inner.entries.get(name)?.current.as_ref()?;
            Some((c.bytes.clone(), c.version, c.written.elapsed()))
        });
        match found {
            None => Ok(None),
            Some((bytes, v, age)) => Ok(Some(
                Stored::new(LeaseRecord::from_json(KIND, name, &bytes)?, v.into()).with_age(age),
            )),
        }
    }

    async fn put(&self, name: &str, record: &LeaseRecord, mode: PutMode) -> Result<Version> {
        self.with(|inner| {
            let e = inner.entry(name);
            let current = e.current.as_ref();
            mode.check(
                KIND,
                name,
                current.map(|c| Version::from(c.version)).as_ref(),
            )?;
            // Garbage written by `put_raw` is never overwritten.
            let prev = match current {
                None => None,
                Some(c) => match c.transitions {
                    Some(t) => Some(t),
                    None => Some(LeaseRecord::from_json(KIND, name, &c.bytes)?.transitions),
                },
            };
            let mut record = record.clone();
            if prev.is_none_or(|t| t != record.transitions) {
                let above = e.floor.checked_add(1).ok_or_else(|| Error::Fencing {
                    store: KIND,
                    name: name.to_owned(),
                    reason: "an earlier term already had the largest token, u64::MAX".into(),
                })?;
                record.transitions = record.transitions.max(above);
            }
            e.floor = e.floor.max(record.transitions);
            inner.next_version += 1;
            let v = inner.next_version;
            let e = inner.entry(name);
            e.current = Some(Current {
                bytes: record.to_json(),
                version: v,
                transitions: Some(record.transitions),
                written: Instant::now(),
            });
            e.changed.send_replace(v);
            Ok(v.into())
        })
    }

    fn watch(&self, name: &str) -> Option<WatchStream> {
        let rx = self.with(|inner| inner.entry(name).changed.subscribe());
        let store = self.clone();
        let name = name.to_owned();
        // Each change is reported with the record as it is now: changes in quick succession
        // coalesce into the latest, never an older one after a newer.
        let stream = futures_util::stream::unfold(rx, move |mut rx| {
            let (store, name) = (store.clone(), name.clone());
            async move {
                rx.changed().await.ok()?;
                let event = match store.get(&name).await {
                    Ok(Some(stored)) => Ok(WatchEvent::Put(stored)),
                    Ok(None) => Ok(WatchEvent::Deleted),
                    Err(e) => Err(e),
                };
                Some((event, rx))
            }
        });
        Some(stream.boxed())
    }

    async fn delete(&self, name: &str, version: &Version) -> Result<()> {
        self.with(|inner| {
            let e = inner.entry(name);
            match &e.current {
                Some(c) if Version::from(c.version) == *version => {
                    e.current = None;
                    e.changed.send_modify(|x| *x += 1);
                    Ok(())
                }
                _ => Err(Error::Conflict {
                    store: KIND,
                    name: name.to_owned(),
                }),
            }
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
            .with_durable_tokens(true)
            .with_watch_every_write(true)
    }
}
