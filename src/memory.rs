//! [`MemoryStore`]: an in-process store, the reference implementation and test double.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::StreamExt;
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::record::LeaseRecord;
use crate::store::{LeaseStore, PutMode, Version, WatchStream};

const KIND: &str = "memory";

/// An in-process [`LeaseStore`]: every clone shares the same records.
///
/// Records are kept encoded, exactly as a remote store keeps bytes, so decoding errors are
/// exercised too ([`put_raw`](Self::put_raw) writes arbitrary bytes). Watches are exact.
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
/// assert_eq!(store.get("job").await?.unwrap().1, v2);
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
    bytes: Option<(Vec<u8>, u64)>,
    changed: watch::Sender<u64>,
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
            e.bytes = Some((bytes.into(), v));
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
                bytes: None,
                changed: watch::channel(0).0,
            })
    }
}

#[async_trait::async_trait]
impl LeaseStore for MemoryStore {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn get(&self, name: &str) -> Result<Option<(LeaseRecord, Version)>> {
        let found = self.with(|inner| inner.entries.get(name).and_then(|e| e.bytes.clone()));
        match found {
            None => Ok(None),
            Some((bytes, v)) => Ok(Some((
                LeaseRecord::from_json(KIND, name, &bytes)?,
                v.into(),
            ))),
        }
    }

    async fn put(&self, name: &str, record: &LeaseRecord, mode: PutMode) -> Result<Version> {
        let bytes = record.to_json();
        self.with(|inner| {
            let current = inner
                .entries
                .get(name)
                .and_then(|e| e.bytes.as_ref().map(|(_, v)| *v));
            mode.check(KIND, name, current.map(Version::from).as_ref())?;
            inner.next_version += 1;
            let v = inner.next_version;
            let e = inner.entry(name);
            e.bytes = Some((bytes, v));
            e.changed.send_replace(v);
            Ok(v.into())
        })
    }

    fn watch(&self, name: &str) -> Option<WatchStream> {
        let rx = self.with(|inner| inner.entry(name).changed.subscribe());
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.changed().await.ok()?;
            Some((Ok(()), rx))
        });
        Some(stream.boxed())
    }

    async fn delete(&self, name: &str, version: &Version) -> Result<()> {
        self.with(|inner| {
            let e = inner.entry(name);
            match &e.bytes {
                Some((_, v)) if Version::from(*v) == *version => {
                    e.bytes = None;
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
}
