//! A test kit for failover: [`FaultyStore`] wraps any store and injects latency, errors,
//! partitions and lost responses, so you can test your own leader code against them.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::time::Duration;
//! use tenure::testing::{Fault, FaultyStore};
//! use tenure::{LeaseStore, MemoryStore};
//!
//! let store = FaultyStore::new(MemoryStore::new());
//! let faults = store.faults();
//! faults.fail_next(1, Fault::Unavailable);
//! assert!(store.get("job").await.is_err());
//! assert!(store.get("job").await.is_ok());
//!
//! faults.partition(); // calls now hang until healed: the caller's timeout fires
//! let r = tokio::time::timeout(Duration::from_secs(1), store.get("job")).await;
//! assert!(r.is_err());
//! faults.heal();
//! # }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::record::LeaseRecord;
use crate::store::{Capabilities, LeaseStore, PutMode, Stored, Version, WatchEvent, WatchStream};

/// An error a [`FaultyStore`] can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// [`Error::Unavailable`].
    Unavailable,
    /// [`Error::Timeout`], returned at once.
    Timeout,
    /// [`Error::PermissionDenied`].
    PermissionDenied,
    /// [`Error::Backend`].
    Backend,
}

/// How many calls a [`FaultyStore`] has forwarded or refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Calls {
    /// `get` calls.
    pub gets: u64,
    /// `put` calls.
    pub puts: u64,
    /// `delete` calls.
    pub deletes: u64,
    /// `watch` calls (each opens a watch: a Kubernetes watch request, a subscription).
    pub watches: u64,
    /// Watch events delivered to callers.
    pub events: u64,
}

#[derive(Default)]
struct State {
    latency: Duration,
    queued: VecDeque<Fault>,
    lose_write_responses: u64,
    drop_events: u64,
    reorder_events: u64,
    hints_only: bool,
    calls: Calls,
}

/// The switches of a [`FaultyStore`]; clones control the same store.
#[derive(Clone)]
pub struct Faults {
    state: Arc<Mutex<State>>,
    partitioned: Arc<watch::Sender<bool>>,
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faults")
            .field("partitioned", &*self.partitioned.borrow())
            .finish()
    }
}

impl Faults {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Delays every call by `d` (zero: no delay).
    pub fn set_latency(&self, d: Duration) {
        self.with(|s| s.latency = d)
    }

    /// Makes the next `n` calls fail with `fault`, without reaching the store.
    pub fn fail_next(&self, n: usize, fault: Fault) {
        self.with(|s| s.queued.extend(std::iter::repeat_n(fault, n)))
    }

    /// Makes the next `n` successful writes (`put`, `delete`) reach the store and then report
    /// [`Error::Timeout`]: the write happened, the caller cannot know.
    pub fn lose_next_write_responses(&self, n: u64) {
        self.with(|s| s.lose_write_responses += n)
    }

    /// Makes watches silently drop the next `n` events (across all watches of this store): a
    /// lossy watch that breaks the contract's gap rule, to show that a missed event only ever
    /// delays a follower.
    pub fn drop_next_watch_events(&self, n: u64) {
        self.with(|s| s.drop_events += n)
    }

    /// Makes watches deliver the next `n` pairs of events in reverse order (the first of each
    /// pair is held back until the second is delivered), against the contract's order rule.
    pub fn reorder_next_watch_events(&self, n: u64) {
        self.with(|s| s.reorder_events += n)
    }

    /// Turns every watch event into a bare [`WatchEvent::Hint`] (`true`), as a store that
    /// cannot say what changed reports them.
    pub fn hints_only(&self, on: bool) {
        self.with(|s| s.hints_only = on)
    }

    /// Cuts the store off: every call hangs (until the caller's timeout or [`heal`](Self::heal))
    /// and watches fall silent.
    pub fn partition(&self) {
        self.partitioned.send_replace(true);
    }

    /// Ends a partition; hanging calls proceed, watches yield once.
    pub fn heal(&self) {
        self.partitioned.send_replace(false);
    }

    /// Whether the store is cut off.
    pub fn is_partitioned(&self) -> bool {
        *self.partitioned.borrow()
    }

    /// Calls made so far.
    pub fn calls(&self) -> Calls {
        self.with(|s| s.calls)
    }

    /// Removes every injected fault, latency and partition.
    pub fn clear(&self) {
        self.with(|s| {
            s.latency = Duration::ZERO;
            s.queued.clear();
            s.lose_write_responses = 0;
            s.drop_events = 0;
            s.reorder_events = 0;
            s.hints_only = false;
        });
        self.heal();
    }

    async fn wait_connected(&self) {
        let mut rx = self.partitioned.subscribe();
        // The sender lives as long as `self`, so `wait_for` cannot fail here.
        let _ = rx.wait_for(|p| !*p).await;
    }
}

struct WatchState {
    inner: WatchStream,
    faults: Faults,
    held: Option<Result<WatchEvent>>,
    ready: VecDeque<Result<WatchEvent>>,
}

/// A [`LeaseStore`] wrapper that injects faults; see the [module docs](self).
#[derive(Clone)]
pub struct FaultyStore<S> {
    inner: S,
    faults: Faults,
}

impl<S: LeaseStore> FaultyStore<S> {
    /// Wraps `inner`, initially without faults.
    pub fn new(inner: S) -> Self {
        FaultyStore {
            inner,
            faults: Faults {
                state: Arc::default(),
                partitioned: Arc::new(watch::channel(false).0),
            },
        }
    }

    /// The switches.
    pub fn faults(&self) -> Faults {
        self.faults.clone()
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    async fn before(&self, op: &'static str, name: &str) -> Result<()> {
        let (latency, fault) = self.faults.with(|s| {
            match op {
                "get" => s.calls.gets += 1,
                "put" => s.calls.puts += 1,
                _ => s.calls.deletes += 1,
            }
            (s.latency, s.queued.pop_front())
        });
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        self.faults.wait_connected().await;
        match fault {
            None => Ok(()),
            Some(f) => Err(self.error(f, op, name)),
        }
    }

    fn after_write<T>(&self, op: &'static str, name: &str, r: Result<T>) -> Result<T> {
        if r.is_ok() {
            let lose = self.faults.with(|s| {
                let lose = s.lose_write_responses > 0;
                s.lose_write_responses = s.lose_write_responses.saturating_sub(1);
                lose
            });
            if lose {
                return Err(self.error(Fault::Timeout, op, name));
            }
        }
        r
    }

    fn error(&self, fault: Fault, operation: &'static str, name: &str) -> Error {
        let store = self.inner.kind();
        let source = || format!("injected {fault:?}").into();
        match fault {
            Fault::Unavailable => Error::Unavailable {
                store,
                source: source(),
            },
            Fault::Timeout => Error::Timeout {
                store,
                operation,
                name: name.to_owned(),
                after: Duration::ZERO,
            },
            Fault::PermissionDenied => Error::PermissionDenied {
                store,
                operation,
                name: name.to_owned(),
                source: source(),
            },
            Fault::Backend => Error::Backend {
                store,
                source: source(),
            },
        }
    }
}

#[async_trait::async_trait]
impl<S: LeaseStore> LeaseStore for FaultyStore<S> {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn get(&self, name: &str) -> Result<Option<Stored>> {
        self.before("get", name).await?;
        self.inner.get(name).await
    }

    async fn put(&self, name: &str, record: &LeaseRecord, mode: PutMode) -> Result<Version> {
        self.before("put", name).await?;
        let r = self.inner.put(name, record, mode).await;
        self.after_write("put", name, r)
    }

    fn watch(&self, name: &str) -> Option<WatchStream> {
        self.faults.with(|s| s.calls.watches += 1);
        let inner = self.inner.watch(name)?;
        // While partitioned, events are held back; on healing, they are delivered. Injected
        // drops, reorders and hint-only mode apply on the way.
        let state = WatchState {
            inner,
            faults: self.faults.clone(),
            held: None,
            ready: VecDeque::new(),
        };
        let s = futures_util::stream::unfold(state, |mut st| async move {
            loop {
                if let Some(item) = st.ready.pop_front() {
                    st.faults.with(|s| s.calls.events += 1);
                    return Some((item, st));
                }
                let item = st.inner.next().await?;
                if st.faults.is_partitioned() {
                    st.faults.wait_connected().await;
                }
                let held = st.held.is_some();
                let (drop, hold, hints_only) = st.faults.with(|s| {
                    let drop = s.drop_events > 0;
                    let hold = !drop && !held && s.reorder_events > 0;
                    if drop {
                        s.drop_events -= 1;
                    } else if hold {
                        s.reorder_events -= 1;
                    }
                    (drop, hold, s.hints_only)
                });
                let hint = |r: Result<WatchEvent>| {
                    if hints_only {
                        r.map(|_| WatchEvent::Hint)
                    } else {
                        r
                    }
                };
                if drop {
                    continue;
                }
                if hold {
                    st.held = Some(item);
                    continue;
                }
                st.ready.push_back(hint(item));
                // A held-back event follows the one that overtook it.
                if let Some(h) = st.held.take() {
                    st.ready.push_back(hint(h));
                }
            }
        });
        Some(s.boxed())
    }

    async fn delete(&self, name: &str, version: &Version) -> Result<()> {
        self.before("delete", name).await?;
        let r = self.inner.delete(name, version).await;
        self.after_write("delete", name, r)
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    #[tokio::test(start_paused = true)]
    async fn lost_response_still_applies_the_write() {
        let store = FaultyStore::new(MemoryStore::new());
        store.faults().lose_next_write_responses(1);
        let rec = LeaseRecord::held_by("a", Duration::from_secs(1), 1);
        assert!(matches!(
            store.put("x", &rec, PutMode::Create).await,
            Err(Error::Timeout { .. })
        ));
        assert!(store.get("x").await.unwrap().is_some());
        assert_eq!(
            store.faults().calls(),
            Calls {
                gets: 1,
                puts: 1,
                ..Calls::default()
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn latency_delays_and_faults_are_typed() {
        let store = FaultyStore::new(MemoryStore::new());
        let f = store.faults();
        f.set_latency(Duration::from_millis(300));
        let t0 = tokio::time::Instant::now();
        store.get("x").await.unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(300));
        f.clear();
        f.fail_next(1, Fault::PermissionDenied);
        assert!(matches!(
            store.get("x").await,
            Err(Error::PermissionDenied { .. })
        ));
        f.fail_next(1, Fault::Backend);
        assert!(matches!(store.get("x").await, Err(Error::Backend { .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn partition_silences_the_watch_until_healed() {
        let store = FaultyStore::new(MemoryStore::new());
        let mut w = store.watch("x").unwrap();
        store.faults().partition();
        store
            .inner()
            .put(
                "x",
                &LeaseRecord::held_by("a", Duration::from_secs(1), 1),
                PutMode::Create,
            )
            .await
            .unwrap();
        let silent = tokio::time::timeout(Duration::from_secs(5), w.next()).await;
        assert!(silent.is_err(), "a partitioned watch must not yield");
        store.faults().heal();
        let healed = tokio::time::timeout(Duration::from_secs(5), w.next()).await;
        assert!(
            matches!(healed, Ok(Some(Ok(WatchEvent::Put(_))))),
            "{healed:?}"
        );
    }
}
