//! What the conformance checks share: candidates, logs, observers and store wrappers.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use rand::Rng;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::record::LeaseRecord;
use crate::store::{Capabilities, LeaseStore, PutMode, Stored, Version, WatchStream};
use crate::testing::FaultyStore;
use crate::{LeaderElector, LeaderHandle, LeaderState, StopReason, Term};

use super::{Harness, Timings};

/// A leader `<name>-a` on a [`FaultyStore`] over its own handle, and a follower `<name>-b` on a
/// plain handle that already follows it.
pub(super) async fn faulty_leader_and_follower<H: Harness>(
    h: &H,
    t: &Timings,
    name: &str,
    log: &TermLog,
    check: &str,
) -> (
    crate::testing::Faults,
    Candidate<FaultyStore<H::Store>>,
    Term,
    Candidate<H::Store>,
) {
    let faulty = FaultyStore::new(h.store().await);
    let faults = faulty.faults();
    let a = spawn_candidate(faulty, name, format!("{name}-a"), t, log, Duration::ZERO);
    let term = a
        .handle
        .leading()
        .await
        .unwrap_or_else(|| panic!("{check}: the first elector stopped without leading"));
    let b = spawn_candidate(
        h.store().await,
        name,
        format!("{name}-b"),
        t,
        log,
        Duration::ZERO,
    );
    wait_following(&b.handle, &a.identity, t.lease_duration, check).await;
    (faults, a, term, b)
}

/// A name unique to this run: `tc-<tag>-<random>`, lowercase so that every store can hold it.
pub(super) fn unique(tag: &str) -> String {
    let r: u32 = rand::thread_rng().gen();
    format!("tc-{tag}-{r:08x}")
}

/// A record with whole-second times and lease, which every store represents exactly enough.
pub(super) fn rec(holder: &str, transitions: u64) -> LeaseRecord {
    LeaseRecord::held_by(holder, Duration::from_secs(7), transitions)
}

pub(super) fn ok<T>(name: &str, what: &str, r: Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{what} of {name:?} failed: {e:?}"))
}

pub(super) fn assert_conflict<T: fmt::Debug>(name: &str, what: &str, r: Result<T>) {
    assert!(
        matches!(r, Err(Error::Conflict { .. })),
        "{what} of {name:?} must fail with Conflict, got {r:?}"
    );
}

pub(super) async fn expect_record<S: LeaseStore>(
    name: &str,
    what: &str,
    s: &S,
    want: &LeaseRecord,
    v: &Version,
) {
    let got = ok(name, what, s.get(name).await);
    let Some((r, gv)) = got.map(Stored::into_parts) else {
        panic!("{what}: {name:?} has no record, expected {want:?}");
    };
    assert_eq!(
        &gv, v,
        "{what}: {name:?} has another version than the last put returned"
    );
    let close = |a: Option<SystemTime>, b: Option<SystemTime>| match (a, b) {
        (Some(a), Some(b)) => a
            .duration_since(b)
            .or_else(|_| b.duration_since(a))
            .is_ok_and(|d| d < Duration::from_secs(1)),
        (a, b) => a.is_none() && b.is_none(),
    };
    assert!(
        r.holder == want.holder
            && r.transitions == want.transitions
            && r.lease_duration == want.lease_duration
            && r.value == want.value
            && close(r.acquire_time, want.acquire_time)
            && close(r.renew_time, want.renew_time),
        "{what}: {name:?} holds {r:?}, expected {want:?}"
    );
}

/// After a write that starts a term (a create, or a new `transitions`): like
/// [`expect_record`], except that the store may have raised `transitions` (never lowered it;
/// see the [`LeaseStore`] contract). Returns the record as stored.
pub(super) async fn expect_term_started<S: LeaseStore>(
    name: &str,
    what: &str,
    s: &S,
    want: &LeaseRecord,
    v: &Version,
) -> LeaseRecord {
    let got = ok(name, what, s.get(name).await);
    let Some(Stored { record: r, .. }) = got else {
        panic!("{what}: {name:?} has no record, expected {want:?}");
    };
    assert!(
        r.transitions >= want.transitions,
        "{what}: {name:?} was written with transitions {} but holds {}: a store may raise the \
         fencing token of a new term, never lower it",
        want.transitions,
        r.transitions
    );
    let mut stored = want.clone();
    stored.transitions = r.transitions;
    expect_record(name, what, s, &stored, v).await;
    stored
}

pub(super) async fn assert_decode<S: LeaseStore>(s: &S, name: &str, what: &str) {
    match s.get(name).await {
        Err(Error::Decode { store, key, .. }) => {
            assert_eq!(
                store,
                s.kind(),
                "{what}: the Decode error names store {store:?}"
            );
            assert!(!key.is_empty(), "{what}: the Decode error names no key");
        }
        other => panic!("{what}: {name:?} holds garbage; get must fail with Decode, got {other:?}"),
    }
}

pub(super) async fn await_watch(w: &mut WatchStream, bound: Duration, what: &str) {
    match timeout(bound, w.next()).await {
        Ok(Some(Ok(_))) => {}
        Ok(Some(Err(e))) => {
            panic!("watch_yields_after_a_put: the watch failed after {what}: {e:?}")
        }
        Ok(None) => panic!("watch_yields_after_a_put: the watch ended after {what}"),
        Err(_) => panic!("watch_yields_after_a_put: no event within {bound:?} after {what}"),
    }
}

/// One term as seen by its work.
#[derive(Debug, Clone)]
pub(super) struct TermEntry {
    pub(super) identity: String,
    pub(super) token: u64,
    /// When `on_started_leading` was called.
    pub(super) started: Instant,
    /// When the work ended (its future completed or was dropped).
    pub(super) ended: Option<Instant>,
}

#[derive(Clone, Default)]
pub(super) struct TermLog(pub(super) Arc<Mutex<Vec<TermEntry>>>);

impl TermLog {
    pub(super) fn with<T>(&self, f: impl FnOnce(&mut Vec<TermEntry>) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
    pub(super) fn start(&self, term: &Term) -> usize {
        self.with(|v| {
            v.push(TermEntry {
                identity: term.identity().to_owned(),
                token: term.fencing_token(),
                started: Instant::now(),
                ended: None,
            });
            v.len() - 1
        })
    }
    pub(super) fn terms(&self) -> Vec<TermEntry> {
        self.with(|v| v.clone())
    }
}

/// Marks a term's work ended when dropped: on completion or when its task is aborted.
pub(super) struct EndGuard(pub(super) TermLog, usize);

impl Drop for EndGuard {
    fn drop(&mut self) {
        let now = Instant::now();
        self.0.with(|v| {
            if let Some(e) = v.get_mut(self.1) {
                e.ended.get_or_insert(now);
            }
        });
    }
}

pub(super) type Stops = Arc<Mutex<Vec<(Instant, StopReason)>>>;

pub(super) struct Candidate<S> {
    pub(super) identity: String,
    pub(super) store: S,
    pub(super) handle: LeaderHandle,
    pub(super) shutdown: CancellationToken,
    pub(super) task: JoinHandle<Result<()>>,
    pub(super) stops: Stops,
}

/// Starts an elector whose work logs its term and, once cancelled, drains for `drain`.
pub(super) fn spawn_candidate<S: LeaseStore + Clone>(
    store: S,
    name: &str,
    identity: String,
    t: &Timings,
    log: &TermLog,
    drain: Duration,
) -> Candidate<S> {
    let stops = Stops::default();
    let stops2 = stops.clone();
    let elector = LeaderElector::builder(store.clone(), name)
        .identity(identity.clone())
        .lease_duration(t.lease_duration)
        .renew_deadline(t.renew_deadline)
        .retry_period(t.retry_period)
        .drain_timeout(drain + t.lease_duration)
        .on_stopped_leading(move |why| {
            stops2
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((Instant::now(), why.clone()));
        })
        .build()
        .unwrap_or_else(|e| panic!("the harness timings are invalid: {e}"));
    let handle = elector.handle();
    let shutdown = CancellationToken::new();
    let log = log.clone();
    let work = move |term: Term| {
        let guard = EndGuard(log.clone(), log.start(&term));
        async move {
            let _guard = guard;
            term.cancelled().await;
            if !drain.is_zero() {
                sleep(drain).await;
            }
        }
    };
    let task = tokio::spawn(elector.run(shutdown.clone().cancelled_owned(), work));
    Candidate {
        identity,
        store,
        handle,
        shutdown,
        task,
        stops,
    }
}

pub(super) async fn join_ok<S>(c: Candidate<S>, bound: Duration, check: &str) {
    match timeout(bound, c.task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => panic!("{check}: run of {} failed: {e:?}", c.identity),
        Ok(Err(e)) => panic!("{check}: run of {} panicked: {e}", c.identity),
        Err(_) => panic!(
            "{check}: run of {} did not return within {bound:?} of shutdown",
            c.identity
        ),
    }
}

/// Waits until one of `slots` leads a term with a token above `above`.
/// The first term, on any of `slots`, that started after `since`.
pub(super) async fn started_after<S>(
    slots: &[Candidate<S>],
    since: Instant,
    bound: Duration,
    check: &str,
) -> Term {
    let deadline = Instant::now() + bound;
    loop {
        for c in slots {
            if let LeaderState::Leading(t) = c.handle.current() {
                if !t.is_cancelled() && t.started_at() > since {
                    return t;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "{check}: no new term within {bound:?}"
        );
        sleep(Duration::from_millis(2)).await;
    }
}

pub(super) async fn wait_for_leader<S>(
    slots: &[Candidate<S>],
    above: u64,
    bound: Duration,
    check: &str,
) -> (usize, Term) {
    let deadline = Instant::now() + bound;
    loop {
        for (i, c) in slots.iter().enumerate() {
            if let LeaderState::Leading(t) = c.handle.current() {
                if !t.is_cancelled() && t.fencing_token() > above {
                    return (i, t);
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "{check}: no new leader within {bound:?} (last fencing token {above})"
        );
        sleep(Duration::from_millis(2)).await;
    }
}

pub(super) async fn wait_following(
    handle: &LeaderHandle,
    leader: &str,
    bound: Duration,
    check: &str,
) {
    let mut rx = handle.state();
    let seen = timeout(bound, rx.wait_for(|s| s.leader_identity() == Some(leader))).await;
    assert!(
        matches!(seen, Ok(Ok(_))),
        "{check}: {} did not observe {leader} leading within {bound:?}",
        handle.identity()
    );
}

/// Waits until the term's `valid_until` moves: a renewal succeeded just now.
pub(super) async fn wait_renewal(term: &Term, bound: Duration, check: &str) {
    let before = term.valid_until();
    let deadline = Instant::now() + bound;
    while term.valid_until() == before {
        assert!(
            !term.is_cancelled(),
            "{check}: the term ended while waiting for a renewal"
        );
        assert!(
            Instant::now() < deadline,
            "{check}: no renewal within {bound:?}"
        );
        sleep(Duration::from_millis(1)).await;
    }
}

pub(super) fn assert_terms_disjoint(check: &str, terms: &[TermEntry]) {
    let mut sorted = terms.to_vec();
    sorted.sort_by_key(|e| e.started);
    for w in sorted.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let end = a
            .ended
            .unwrap_or_else(|| panic!("{check}: term {} of {} never ended", a.token, a.identity));
        assert!(
            end <= b.started,
            "{check}: term {} of {} overlapped term {} of {} by {:?}",
            a.token,
            a.identity,
            b.token,
            b.identity,
            end - b.started
        );
        assert!(
            a.token < b.token,
            "{check}: fencing token {} of {} followed by {} of {}: not increasing",
            a.token,
            a.identity,
            b.token,
            b.identity
        );
    }
}

/// What the observer saw, when it first saw it.
#[derive(Debug)]
pub(super) struct Sample {
    /// Just after the read returned.
    pub(super) after: Instant,
    pub(super) seen: std::result::Result<Option<LeaseRecord>, String>,
    pub(super) version: Option<Version>,
}

pub(super) struct Observer {
    pub(super) stop: CancellationToken,
    pub(super) task: JoinHandle<Vec<Sample>>,
}

impl Observer {
    /// Polls the record every few milliseconds, keeping each change.
    pub(super) fn spawn<S: LeaseStore>(store: S, name: &str) -> Self {
        let stop = CancellationToken::new();
        let stop2 = stop.clone();
        let name = name.to_owned();
        let task = tokio::spawn(async move {
            let mut samples: Vec<Sample> = Vec::new();
            while !stop2.is_cancelled() {
                let r = timeout(Duration::from_secs(5), store.get(&name)).await;
                let after = Instant::now();
                let (seen, version) = match r {
                    Ok(Ok(Some(s))) => (Ok(Some(s.record)), Some(s.version)),
                    Ok(Ok(None)) => (Ok(None), None),
                    Ok(Err(e)) => (Err(e.to_string()), None),
                    Err(_) => (Err("timed out".to_owned()), None),
                };
                let changed = samples
                    .last()
                    .is_none_or(|l| l.version != version || l.seen.is_err() != seen.is_err());
                if changed {
                    samples.push(Sample {
                        after,
                        seen,
                        version,
                    });
                }
                sleep(Duration::from_millis(3)).await;
            }
            samples
        });
        Observer { stop, task }
    }

    pub(super) async fn stop(self) -> Vec<Sample> {
        self.stop.cancel();
        self.task
            .await
            .unwrap_or_else(|e| panic!("the observer panicked: {e}"))
    }
}

pub(super) fn assert_observations_consistent(check: &str, samples: &[Sample]) {
    let mut prev: Option<(&LeaseRecord, &Version)> = None;
    let mut holders: HashMap<u64, &str> = HashMap::new();
    let mut versions: HashSet<&Version> = HashSet::new();
    for s in samples {
        let (Ok(Some(r)), Some(v)) = (&s.seen, &s.version) else {
            continue;
        };
        if let Some((p, pv)) = prev {
            if pv != v {
                assert!(
                    versions.insert(v),
                    "{check}: the observer saw version {v} come back after another version"
                );
            }
            assert!(
                r.transitions >= p.transitions,
                "{check}: the term counter went backwards: {p:?} then {r:?}"
            );
            if let (Some(a), Some(b)) = (&p.holder, &r.holder) {
                assert!(
                    a == b || r.transitions > p.transitions,
                    "{check}: the holder changed from {a} to {b} without a new term ({})",
                    r.transitions
                );
            }
        } else {
            versions.insert(v);
        }
        if let Some(h) = &r.holder {
            let first = *holders.entry(r.transitions).or_insert(h.as_str());
            assert_eq!(
                first, h,
                "{check}: term {} was held by two holders",
                r.transitions
            );
        }
        prev = Some((r, v));
    }
    assert!(prev.is_some(), "{check}: the observer never saw a record");
}

/// A write as sent by an elector.
#[derive(Debug, Clone)]
pub(super) struct Write {
    pub(super) sent: Instant,
    pub(super) holder: Option<String>,
}

#[derive(Clone, Default)]
pub(super) struct Writes(pub(super) Arc<Mutex<Vec<Write>>>);

impl Writes {
    pub(super) fn all(&self) -> Vec<Write> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Logs every put's send time and holder.
#[derive(Clone)]
pub(super) struct Recording<S> {
    pub(super) inner: S,
    pub(super) writes: Writes,
}

#[async_trait::async_trait]
impl<S: LeaseStore> LeaseStore for Recording<S> {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    async fn get(&self, name: &str) -> Result<Option<Stored>> {
        self.inner.get(name).await
    }
    async fn put(&self, name: &str, record: &LeaseRecord, mode: PutMode) -> Result<Version> {
        self.writes
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Write {
                sent: Instant::now(),
                holder: record.holder.clone(),
            });
        self.inner.put(name, record, mode).await
    }
    fn watch(&self, name: &str) -> Option<WatchStream> {
        self.inner.watch(name)
    }
    async fn delete(&self, name: &str, version: &Version) -> Result<()> {
        self.inner.delete(name, version).await
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}

/// Hides the store's watch, so electors poll.
#[derive(Clone)]
pub(super) struct NoWatch<S>(pub(super) S);

#[async_trait::async_trait]
impl<S: LeaseStore> LeaseStore for NoWatch<S> {
    fn kind(&self) -> &'static str {
        self.0.kind()
    }
    async fn get(&self, name: &str) -> Result<Option<Stored>> {
        self.0.get(name).await
    }
    async fn put(&self, name: &str, record: &LeaseRecord, mode: PutMode) -> Result<Version> {
        self.0.put(name, record, mode).await
    }
    async fn delete(&self, name: &str, version: &Version) -> Result<()> {
        self.0.delete(name, version).await
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
}
