//! Elector behaviour on paused tokio time, over the memory store and `FaultyStore`.
//!
//! Paused time makes every instant exact and deterministic: these are not timed assertions on
//! a noisy machine, they check the arithmetic of the protocol.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tenure::testing::{Fault, FaultyStore};
use tenure::{
    Error, LeaderElector, LeaderHandle, LeaderState, LeaseRecord, LeaseStore, LostReason,
    MemoryStore, PutMode, StopReason, Term,
};
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

const L: Duration = Duration::from_secs(15);
const D: Duration = Duration::from_secs(10);
const R: Duration = Duration::from_secs(2);
const NAME: &str = "election";

#[derive(Debug, Clone, PartialEq)]
enum Ev {
    Started(u64, Instant),
    WorkEnded(u64, Instant),
    Stopped(StopReason, Instant),
    NewLeader(Option<String>),
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Ev>>>);

impl Log {
    fn push(&self, e: Ev) {
        self.0.lock().unwrap().push(e)
    }
    fn all(&self) -> Vec<Ev> {
        self.0.lock().unwrap().clone()
    }
    fn starts(&self) -> Vec<(u64, Instant)> {
        self.all()
            .into_iter()
            .filter_map(|e| match e {
                Ev::Started(t, at) => Some((t, at)),
                _ => None,
            })
            .collect()
    }
    fn stops(&self) -> Vec<StopReason> {
        self.all()
            .into_iter()
            .filter_map(|e| match e {
                Ev::Stopped(r, _) => Some(r),
                _ => None,
            })
            .collect()
    }
    fn leaders(&self) -> Vec<Option<String>> {
        self.all()
            .into_iter()
            .filter_map(|e| match e {
                Ev::NewLeader(l) => Some(l),
                _ => None,
            })
            .collect()
    }
}

struct Candidate {
    handle: LeaderHandle,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<tenure::Result<()>>,
    log: Log,
}

fn builder<S: LeaseStore>(store: S, id: &str) -> tenure::Builder<S> {
    LeaderElector::builder(store, NAME)
        .identity(id)
        .lease_duration(L)
        .renew_deadline(D)
        .retry_period(R)
}

/// Starts a candidate whose work runs until its term is cancelled (then takes `drain` to
/// finish).
fn spawn<S: LeaseStore>(b: tenure::Builder<S>, drain: Duration) -> Candidate {
    let log = Log::default();
    let (l1, l2) = (log.clone(), log.clone());
    let elector = b
        .on_new_leader(move |l| l1.push(Ev::NewLeader(l.map(|l| l.identity.clone()))))
        .on_stopped_leading(move |r| l2.push(Ev::Stopped(r.clone(), Instant::now())))
        .build()
        .unwrap();
    let handle = elector.handle();
    let shutdown = CancellationToken::new();
    let sd = shutdown.clone();
    let wl = log.clone();
    let task = tokio::spawn(async move {
        elector
            .run(sd.cancelled_owned(), move |term: Term| {
                let wl = wl.clone();
                async move {
                    wl.push(Ev::Started(term.fencing_token(), Instant::now()));
                    term.cancelled().await;
                    sleep(drain).await;
                    wl.push(Ev::WorkEnded(term.fencing_token(), Instant::now()));
                }
            })
            .await
    });
    Candidate {
        handle,
        shutdown,
        task,
        log,
    }
}

async fn holder(store: &impl LeaseStore) -> Option<String> {
    store.get(NAME).await.unwrap().and_then(|s| s.record.holder)
}

#[test]
fn builder_rejects_bad_settings_with_the_rule() {
    let err = builder(MemoryStore::new(), "a")
        .lease_duration(Duration::from_secs(5))
        .build()
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        "invalid configuration: renew_deadline (10s) must be shorter than lease_duration (5s)"
    );
    let err = LeaderElector::builder(MemoryStore::new(), "")
        .build()
        .err()
        .unwrap();
    assert!(matches!(err, Error::Config { .. }), "{err}");
}

#[tokio::test(start_paused = true)]
async fn acquires_a_vacant_lease_and_renews_it() {
    let store = MemoryStore::new();
    let c = spawn(builder(store.clone(), "a"), Duration::ZERO);
    let term = c.handle.leading().await.unwrap();
    assert_eq!(term.fencing_token(), 1);
    assert_eq!(holder(&store).await.as_deref(), Some("a"));
    let (_, v1) = store.get(NAME).await.unwrap().unwrap().into_parts();
    // Many lease durations later it still leads, in the same term, renewing every R.
    sleep(L * 4).await;
    assert!(c.handle.is_leader());
    let (rec, v2) = store.get(NAME).await.unwrap().unwrap().into_parts();
    assert_ne!(v1, v2, "renewals write new versions");
    assert_eq!(rec.transitions, 1);
    assert!(term.valid_until() > Instant::now());
    assert!(term.valid_until() <= Instant::now() + D);
    assert_eq!(c.log.starts().len(), 1);
    c.shutdown.cancel();
    c.task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn steps_down_at_the_renew_deadline_when_the_store_hangs() {
    let store = FaultyStore::new(MemoryStore::new());
    let faults = store.faults();
    let a = spawn(builder(store.clone(), "a"), Duration::ZERO);
    let term = a.handle.leading().await.unwrap();
    // b reaches the store directly: only a is cut off.
    let b = spawn(builder(store.inner().clone(), "b"), Duration::ZERO);
    sleep(R * 3 + Duration::from_millis(100)).await;
    let valid_until = term.valid_until();
    faults.partition();
    term.cancelled().await;
    // Exactly at the deadline: the send time of the last successful renewal plus D.
    assert_eq!(Instant::now(), valid_until);
    assert!(!a.handle.is_leader());
    assert!(matches!(
        a.log.stops().as_slice(),
        [StopReason::Lost(LostReason::RenewDeadlineExceeded { .. })]
    ));
    // b may take over only a full lease after it last saw the record change, which is at or
    // after that renewal was sent: at least L - D after a stepped down.
    let term_b = b.handle.leading().await.unwrap();
    assert!(term_b.started_at() >= valid_until + (L - D));
    assert!(term_b.fencing_token() > term.fencing_token());
    // a re-campaigns once its store is back, and leads again after b leaves.
    faults.heal();
    sleep(R * 3).await;
    assert!(!a.handle.is_leader());
    b.shutdown.cancel();
    b.task.await.unwrap().unwrap();
    let term_a2 = a.handle.leading().await.unwrap();
    assert!(term_a2.fencing_token() > term_b.fencing_token());
    assert_eq!(a.log.starts().len(), 2);
    a.shutdown.cancel();
    a.task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn follower_waits_a_full_lease_of_no_observed_change_whatever_the_timestamps() {
    let year = Duration::from_secs(365 * 24 * 3600);
    for skew in [
        SystemTime::UNIX_EPOCH,
        SystemTime::now() - year * 20,
        SystemTime::now() + year * 20,
    ] {
        let store = MemoryStore::new();
        // A holder that crashed right after writing, with timestamps from a skewed clock.
        let mut rec = LeaseRecord::held_by("crashed", L, 7);
        rec.acquire_time = Some(skew);
        rec.renew_time = Some(skew);
        store.put(NAME, &rec, PutMode::Create).await.unwrap();
        let t0 = Instant::now();
        let c = spawn(builder(store.clone(), "b"), Duration::ZERO);
        let term = c.handle.leading().await.unwrap();
        let waited = term.started_at() - t0;
        assert!(
            waited >= L,
            "took over after {waited:?}, before a full lease {L:?}"
        );
        assert!(
            waited <= L + Duration::from_millis(10),
            "the expiry timer fires at expiry, took {waited:?}"
        );
        assert_eq!(term.fencing_token(), 8);
        assert_eq!(c.log.leaders().first(), Some(&Some("crashed".to_string())));
        c.shutdown.cancel();
        c.task.await.unwrap().unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn renewals_reset_the_followers_clock() {
    let store = MemoryStore::new();
    let mut rec = LeaseRecord::held_by("other", L, 1);
    let mut v = store.put(NAME, &rec, PutMode::Create).await.unwrap();
    let c = spawn(builder(store.clone(), "b"), Duration::ZERO);
    // "other" renews every 5 s for a minute, with identical timestamps: only the version changes.
    for _ in 0..12 {
        sleep(Duration::from_secs(5)).await;
        rec.value = None;
        v = store.put(NAME, &rec, PutMode::Update(v)).await.unwrap();
        assert!(!c.handle.is_leader());
    }
    let last_change = Instant::now();
    let term = c.handle.leading().await.unwrap();
    assert!(term.started_at() - last_change >= L);
    c.shutdown.cancel();
    c.task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_holders_lease_duration_rules_not_the_followers() {
    let store = MemoryStore::new();
    let long = Duration::from_secs(60);
    let a = spawn(
        builder(store.clone(), "a")
            .lease_duration(long)
            .renew_deadline(Duration::from_secs(40)),
        Duration::ZERO,
    );
    a.handle.leading().await.unwrap();
    let b = spawn(builder(store.clone(), "b"), Duration::ZERO);
    sleep(R).await;
    // Crash a: no release.
    a.task.abort();
    let crashed = Instant::now();
    let term = b.handle.leading().await.unwrap();
    let after = term.started_at() - crashed;
    assert!(
        after >= long - R * 2,
        "b took over {after:?} after the crash, before a's 60 s lease"
    );
    assert!(after <= long + R, "b took over {after:?} after the crash");
    b.shutdown.cancel();
    b.task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn recampaigns_after_loss_and_callbacks_fire_again() {
    let store = MemoryStore::new();
    let c = spawn(builder(store.clone(), "a"), Duration::ZERO);
    let t1 = c.handle.leading().await.unwrap();
    // Somebody overwrites the record behind our back (like a kubectl edit).
    let (rec, v) = store.get(NAME).await.unwrap().unwrap().into_parts();
    let mut stolen = rec.clone();
    stolen.holder = Some("thief".into());
    stolen.transitions += 1;
    store.put(NAME, &stolen, PutMode::Update(v)).await.unwrap();
    // The watch makes the leader notice at once.
    t1.cancelled().await;
    let noticed = Instant::now();
    assert_eq!(
        t1.stop_reason(),
        Some(StopReason::Lost(LostReason::TakenOver {
            holder: Some("thief".into())
        }))
    );
    assert_eq!(
        c.log.stops(),
        vec![StopReason::Lost(LostReason::TakenOver {
            holder: Some("thief".into())
        })]
    );
    // The thief never renews: a takes it back after a full lease, in a new term.
    let t2 = c.handle.leading().await.unwrap();
    assert!(t2.started_at() - noticed >= L);
    assert_eq!(t2.fencing_token(), stolen.transitions + 1);
    assert_eq!(c.log.starts().len(), 2);
    assert_eq!(
        c.log.leaders(),
        vec![
            None,
            Some("a".into()),
            Some("thief".into()),
            Some("a".into())
        ]
    );
    c.shutdown.cancel();
    c.task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn deleted_record_is_a_loss() {
    let store = MemoryStore::new();
    let c = spawn(builder(store.clone(), "a"), Duration::ZERO);
    let t1 = c.handle.leading().await.unwrap();
    let (_, v) = store.get(NAME).await.unwrap().unwrap().into_parts();
    store.delete(NAME, &v).await.unwrap();
    t1.cancelled().await;
    assert_eq!(c.log.stops(), vec![StopReason::Lost(LostReason::Deleted)]);
    c.shutdown.cancel();
    c.task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn drains_then_releases_on_shutdown_and_a_follower_takes_over_at_once() {
    let store = MemoryStore::new();
    let drain = Duration::from_secs(5);
    let a = spawn(builder(store.clone(), "a"), drain);
    a.handle.leading().await.unwrap();
    let b = spawn(builder(store.clone(), "b"), Duration::ZERO);
    sleep(R * 2).await;
    let term_a = a.handle.leading().await.unwrap();
    let t0 = Instant::now();
    a.shutdown.cancel();
    sleep(Duration::from_millis(1)).await;
    assert_eq!(term_a.stop_reason(), Some(StopReason::ShutDown));
    // During the drain (longer than R, and than D would be without renewals) a keeps the
    // lease: b must not lead.
    sleep(drain - Duration::from_millis(1)).await;
    assert_eq!(holder(&store).await.as_deref(), Some("a"));
    assert!(!b.handle.is_leader());
    let term_b = b.handle.leading().await.unwrap();
    a.task.await.unwrap().unwrap();
    // Order: a's work ended, then a stopped (after releasing), then b started.
    let ended = a.log.all().into_iter().find_map(|e| match e {
        Ev::WorkEnded(_, at) => Some(at),
        _ => None,
    });
    let ended = ended.unwrap();
    assert_eq!(ended, t0 + drain);
    assert!(matches!(
        a.log.all().last(),
        Some(Ev::Stopped(StopReason::ShutDown, _))
    ));
    assert!(term_b.started_at() >= ended);
    // Handed over through the watch, without waiting for expiry.
    assert!(term_b.started_at() - ended < Duration::from_millis(50));
    assert_eq!(term_b.fencing_token(), 2);
    b.shutdown.cancel();
    b.task.await.unwrap().unwrap();
    // b released too: the record is vacant.
    assert_eq!(holder(&store).await, None);
}

#[tokio::test(start_paused = true)]
async fn drain_is_bounded_by_drain_timeout() {
    let store = MemoryStore::new();
    let a = spawn(
        builder(store.clone(), "a").drain_timeout(Duration::from_secs(3)),
        Duration::from_secs(3600),
    );
    a.handle.leading().await.unwrap();
    let t0 = Instant::now();
    a.shutdown.cancel();
    a.task.await.unwrap().unwrap();
    assert_eq!(Instant::now() - t0, Duration::from_secs(3));
    assert_eq!(holder(&store).await, None);
}

#[tokio::test(start_paused = true)]
async fn release_after_a_lost_renew_response_still_releases() {
    let store = FaultyStore::new(MemoryStore::new());
    let faults = store.faults();
    let a = spawn(builder(store.clone(), "a"), Duration::ZERO);
    a.handle.leading().await.unwrap();
    // The next renewal lands but its response is lost: our version is stale, the record is
    // still ours. The release that follows must conflict, re-read, and retry.
    faults.lose_next_write_responses(1);
    sleep(R + Duration::from_millis(10)).await;
    a.shutdown.cancel();
    a.task.await.unwrap().unwrap();
    assert_eq!(holder(&store).await, None);
    assert_eq!(a.log.stops(), vec![StopReason::ShutDown]);
}

#[tokio::test(start_paused = true)]
async fn release_does_not_clobber_a_new_holder() {
    let store = FaultyStore::new(MemoryStore::new());
    let a = spawn(
        builder(store.clone(), "a").drain_timeout(Duration::from_secs(60)),
        Duration::from_secs(1),
    );
    a.handle.leading().await.unwrap();
    // While a drains, its store hangs; a steps down at D, another holder takes over at L.
    store.faults().partition();
    a.shutdown.cancel();
    sleep(L + R).await;
    let (rec, v) = store.inner().get(NAME).await.unwrap().unwrap().into_parts();
    let mut other = rec.clone();
    other.holder = Some("b".into());
    other.transitions += 1;
    store
        .inner()
        .put(NAME, &other, PutMode::Update(v))
        .await
        .unwrap();
    store.faults().heal();
    a.task.await.unwrap().unwrap();
    assert_eq!(holder(&store).await.as_deref(), Some("b"));
}

#[tokio::test(start_paused = true)]
async fn vacancy_is_reported_to_on_new_leader() {
    let store = MemoryStore::new();
    let a = spawn(builder(store.clone(), "a"), Duration::ZERO);
    a.handle.leading().await.unwrap();
    let log = Log::default();
    let l = log.clone();
    let watcher = builder(store.clone(), "w")
        .on_new_leader(move |x| l.push(Ev::NewLeader(x.map(|x| x.identity.clone()))))
        .build()
        .unwrap();
    let wh = watcher.handle();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let obs = tokio::spawn(async move { watcher.observe(s.cancelled_owned()).await });
    sleep(Duration::from_millis(10)).await;
    assert!(matches!(wh.current(), LeaderState::Following(ref l) if l.identity == "a"));
    a.shutdown.cancel();
    a.task.await.unwrap().unwrap();
    sleep(Duration::from_millis(10)).await;
    assert!(matches!(wh.current(), LeaderState::Vacant));
    assert_eq!(log.leaders(), vec![Some("a".into()), None]);
    stop.cancel();
    obs.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn one_shot_mode_returns_after_the_first_term() {
    let store = MemoryStore::new();
    let a = spawn(
        builder(store.clone(), "a").recampaign(false),
        Duration::ZERO,
    );
    let t = a.handle.leading().await.unwrap();
    let (rec, v) = store.get(NAME).await.unwrap().unwrap().into_parts();
    let mut stolen = rec;
    stolen.holder = Some("x".into());
    stolen.transitions += 1;
    store.put(NAME, &stolen, PutMode::Update(v)).await.unwrap();
    t.cancelled().await;
    // run returns by itself, without shutdown, and without taking the lease back.
    a.task.await.unwrap().unwrap();
    sleep(L * 2).await;
    assert_eq!(holder(&store).await.as_deref(), Some("x"));
    assert_eq!(a.log.starts().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn work_that_returns_releases_and_campaigns_again() {
    let store = MemoryStore::new();
    let e = builder(store.clone(), "a").build().unwrap();
    let h = e.handle();
    let runs = Arc::new(Mutex::new(Vec::new()));
    let r2 = runs.clone();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        e.run(s.cancelled_owned(), move |term: Term| {
            let runs = r2.clone();
            async move {
                runs.lock().unwrap().push(term.fencing_token());
                sleep(Duration::from_secs(1)).await;
            }
        })
        .await
    });
    sleep(Duration::from_secs(20)).await;
    let tokens = runs.lock().unwrap().clone();
    assert!(tokens.len() >= 3, "{tokens:?}");
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
    stop.cancel();
    task.await.unwrap().unwrap();
    assert!(!h.is_leader());
}

#[tokio::test(start_paused = true)]
async fn permission_denied_ends_run_without_leading() {
    let store = FaultyStore::new(MemoryStore::new());
    store.faults().fail_next(1, Fault::PermissionDenied);
    let c = spawn(builder(store.clone(), "a"), Duration::ZERO);
    let res = c.task.await.unwrap();
    assert!(
        matches!(res, Err(Error::PermissionDenied { .. })),
        "{res:?}"
    );
    assert!(c.log.starts().is_empty());
}

#[tokio::test(start_paused = true)]
async fn permission_revoked_while_leading_steps_down_and_reports() {
    let store = FaultyStore::new(MemoryStore::new());
    let c = spawn(builder(store.clone(), "a"), Duration::ZERO);
    let t = c.handle.leading().await.unwrap();
    store.faults().fail_next(1, Fault::PermissionDenied);
    t.cancelled().await;
    let res = c.task.await.unwrap();
    assert!(
        matches!(res, Err(Error::PermissionDenied { .. })),
        "{res:?}"
    );
    assert!(matches!(
        c.log.stops().as_slice(),
        [StopReason::Lost(LostReason::StoreError { .. })]
    ));
}

#[tokio::test(start_paused = true)]
async fn transient_errors_are_retried_without_losing_the_lease() {
    let store = FaultyStore::new(MemoryStore::new());
    let c = spawn(builder(store.clone(), "a"), Duration::ZERO);
    let t = c.handle.leading().await.unwrap();
    // Two failed renewals (4 s) are well within D = 10 s.
    store.faults().fail_next(2, Fault::Unavailable);
    sleep(L * 2).await;
    assert!(!t.is_cancelled());
    assert!(c.handle.is_leader());
    c.shutdown.cancel();
    c.task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn leadership_lost_future_and_state_channel() {
    let store = MemoryStore::new();
    let c = spawn(builder(store.clone(), "a"), Duration::ZERO);
    // Not leading yet: resolves at once.
    c.handle.leadership_lost().await;
    let t = c.handle.leading().await.unwrap();
    let lost = c.handle.leadership_lost();
    fn assert_send_sync_static<T: Send + Sync + 'static>(_: &T) {}
    assert_send_sync_static(&lost);
    let waiter = tokio::spawn(lost);
    sleep(L).await;
    assert!(!waiter.is_finished());
    assert!(
        matches!(c.handle.current(), LeaderState::Leading(ref x) if x.fencing_token() == t.fencing_token())
    );
    c.shutdown.cancel();
    waiter.await.unwrap();
    c.task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn five_candidates_one_leader_and_a_vacant_lease_is_taken_at_once() {
    let store = MemoryStore::new();
    let cs: Vec<_> = (0..5)
        .map(|i| spawn(builder(store.clone(), &format!("c{i}")), Duration::ZERO))
        .collect();
    sleep(R).await;
    let leaders: Vec<_> = cs.iter().filter(|c| c.handle.is_leader()).collect();
    assert_eq!(leaders.len(), 1);
    let t0 = Instant::now();
    let leader = cs.iter().position(|c| c.handle.is_leader()).unwrap();
    cs[leader].shutdown.cancel();
    sleep(Duration::from_millis(1)).await;
    let others: Vec<_> = cs
        .iter()
        .enumerate()
        .filter(|(i, c)| *i != leader && c.handle.is_leader())
        .collect();
    assert_eq!(
        others.len(),
        1,
        "a released lease is taken at once by exactly one"
    );
    assert!(Instant::now() - t0 <= Duration::from_millis(1));
    for c in cs {
        c.shutdown.cancel();
        c.task.await.unwrap().unwrap();
    }
}

/// How a [`Shaped`] store's watch behaves.
#[derive(Clone, Copy)]
enum Watch {
    /// No watch: electors poll.
    None,
    /// A watch that never reports anything (a silent or broken one).
    Silent,
    /// A watch refused with `PermissionDenied`, as a Kubernetes watch without the `watch` verb.
    Denied,
}

/// A store over another one, with the watch (and claimed capabilities) of a given shape.
#[derive(Clone)]
struct Shaped<S> {
    inner: S,
    watch: Watch,
    caps: tenure::Capabilities,
}

impl<S: LeaseStore> Shaped<S> {
    fn new(inner: S, watch: Watch) -> Self {
        Shaped {
            inner,
            watch,
            caps: tenure::Capabilities::NONE,
        }
    }

    /// Claims that the watch reports every write (whatever it really does).
    fn every_write(mut self) -> Self {
        self.caps = self.caps.with_watch_every_write(true);
        self
    }
}

#[async_trait::async_trait]
impl<S: LeaseStore> LeaseStore for Shaped<S> {
    fn kind(&self) -> &'static str {
        "shaped"
    }
    async fn get(&self, name: &str) -> tenure::Result<Option<tenure::Stored>> {
        self.inner.get(name).await
    }
    async fn put(
        &self,
        name: &str,
        r: &LeaseRecord,
        m: PutMode,
    ) -> tenure::Result<tenure::Version> {
        self.inner.put(name, r, m).await
    }
    fn watch(&self, name: &str) -> Option<tenure::WatchStream> {
        match self.watch {
            Watch::None => None,
            Watch::Silent => Some(Box::pin(futures_util::stream::pending())),
            Watch::Denied => {
                let e = Error::PermissionDenied {
                    store: "shaped",
                    operation: "watch",
                    name: name.to_owned(),
                    source: "forbidden".into(),
                };
                Some(Box::pin(futures_util::stream::iter([Err(e)])))
            }
        }
    }
    fn capabilities(&self) -> tenure::Capabilities {
        self.caps
    }
}

#[tokio::test(start_paused = true)]
async fn renewals_are_noticed_without_watch_events() {
    let store = MemoryStore::new();
    let mut rec = LeaseRecord::held_by("other", L, 1);
    let mut v = store.put(NAME, &rec, PutMode::Create).await.unwrap();
    let c = spawn(
        builder(Shaped::new(store.clone(), Watch::Silent), "b"),
        Duration::ZERO,
    );
    for _ in 0..20 {
        sleep(R).await;
        rec.renew_time = Some(SystemTime::now());
        v = store.put(NAME, &rec, PutMode::Update(v)).await.unwrap();
    }
    let last_renewal = Instant::now();
    let term = c.handle.leading().await.unwrap();
    let after = term.started_at() - last_renewal;
    // Never before a full lease after the last renewal; and since the follower re-reads every
    // R × (1 + 1.2 × rand) ≤ 2.2 R, it saw that renewal at most 2.2 R late.
    assert!(after >= L, "took over {after:?} after the last renewal");
    assert!(
        after <= L + R.mul_f64(2.2),
        "took over only {after:?} after the last renewal"
    );
    c.shutdown.cancel();
    c.task.await.unwrap().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Safety regressions: each of these failed on the code before the fix it is named after.
// ---------------------------------------------------------------------------------------------

/// All terms' tokens, in the order the terms started, across candidates.
fn tokens_in_order(cs: &[&Candidate]) -> Vec<u64> {
    let mut starts: Vec<(Instant, u64)> = cs
        .iter()
        .flat_map(|c| c.log.starts().into_iter().map(|(t, at)| (at, t)))
        .collect();
    starts.sort();
    starts.into_iter().map(|(_, t)| t).collect()
}

fn strictly_increasing(tokens: &[u64]) -> bool {
    tokens.windows(2).all(|w| w[0] < w[1])
}

#[tokio::test(start_paused = true)]
async fn tokens_keep_increasing_when_the_record_is_deleted_behind_the_leader() {
    let store = MemoryStore::new();
    let a = spawn(builder(store.clone(), "a"), Duration::ZERO);
    a.handle.leading().await.unwrap();
    let b = spawn(builder(store.clone(), "b"), Duration::ZERO);
    sleep(R).await;
    for _ in 0..3 {
        let (_, v) = store.get(NAME).await.unwrap().unwrap().into_parts();
        store.delete(NAME, &v).await.unwrap();
        sleep(L).await;
    }
    let tokens = tokens_in_order(&[&a, &b]);
    assert!(tokens.len() >= 4, "{tokens:?}");
    assert!(strictly_increasing(&tokens), "tokens repeated: {tokens:?}");
    for c in [a, b] {
        c.shutdown.cancel();
        c.task.await.unwrap().unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_fresh_elector_after_a_deletion_continues_above_earlier_tokens() {
    let store = MemoryStore::new();
    let a = spawn(builder(store.clone(), "a"), Duration::ZERO);
    let first = a.handle.leading().await.unwrap().fencing_token();
    a.shutdown.cancel();
    a.task.await.unwrap().unwrap();
    let b = spawn(builder(store.clone(), "b"), Duration::ZERO);
    let second = b.handle.leading().await.unwrap().fencing_token();
    assert!(second > first);
    // b crashes; the record is deleted; a process that never saw either term starts.
    b.task.abort();
    let (_, v) = store.get(NAME).await.unwrap().unwrap().into_parts();
    store.delete(NAME, &v).await.unwrap();
    let c = spawn(builder(store.clone(), "c"), Duration::ZERO);
    let third = c.handle.leading().await.unwrap().fencing_token();
    assert!(third > second, "token {third} after {second}");
    c.shutdown.cancel();
    c.task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_largest_token_is_never_issued_twice() {
    let store = MemoryStore::new();
    let mut rec = LeaseRecord::held_by("old", L, u64::MAX);
    rec.holder = None;
    store.put(NAME, &rec, PutMode::Create).await.unwrap();
    let c = spawn(builder(store.clone(), "a"), Duration::ZERO);
    let res = tokio::time::timeout(L, c.task).await;
    assert!(
        c.log.starts().is_empty(),
        "a term started with token {:?} after u64::MAX",
        c.log.starts()
    );
    assert!(matches!(res, Ok(Ok(Err(_)))), "{res:?}");
}

#[tokio::test(start_paused = true)]
async fn no_term_starts_after_shutdown_is_requested_during_a_drain() {
    let store = MemoryStore::new();
    // The work takes 5 s to wind down after its token is cancelled.
    let a = spawn(builder(store.clone(), "a"), Duration::from_secs(5));
    a.handle.leading().await.unwrap();
    // Somebody vacates the lease behind a's back: a loses, and drains.
    let (mut rec, v) = store.get(NAME).await.unwrap().unwrap().into_parts();
    rec.holder = None;
    store.put(NAME, &rec, PutMode::Update(v)).await.unwrap();
    sleep(Duration::from_secs(1)).await;
    // Shutdown while the lost term drains; the lease is vacant, free to take.
    a.shutdown.cancel();
    a.task.await.unwrap().unwrap();
    assert_eq!(a.log.starts().len(), 1, "{:?}", a.log.all());
    assert_eq!(holder(&store).await, None);
}

#[tokio::test(start_paused = true)]
async fn no_term_starts_after_shutdown_is_requested_mid_campaign() {
    let store = FaultyStore::new(MemoryStore::new());
    // Every call takes a second: the campaign's read, then its acquiring write.
    store.faults().set_latency(Duration::from_secs(1));
    let b = builder(store.clone(), "a")
        .lease_duration(Duration::from_secs(30))
        .renew_deadline(Duration::from_secs(20))
        .retry_period(Duration::from_secs(4))
        .call_timeout(Duration::from_secs(4));
    let a = spawn(b, Duration::ZERO);
    // The write is in flight from 1 s to 2 s.
    sleep(Duration::from_millis(1500)).await;
    a.shutdown.cancel();
    a.task.await.unwrap().unwrap();
    assert!(a.log.starts().is_empty(), "{:?}", a.log.all());
    store.faults().clear();
    assert_eq!(holder(&store).await, None);
}

#[test]
fn absurd_jitter_is_a_config_error_not_a_panic() {
    for jitter in [1e19, f64::MAX] {
        let res = builder(MemoryStore::new(), "a").jitter(jitter).build();
        assert!(matches!(res, Err(Error::Config { .. })), "jitter {jitter}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_watch_refused_for_lack_of_permission_stops_the_elector() {
    let c = spawn(
        builder(Shaped::new(MemoryStore::new(), Watch::Denied), "a"),
        Duration::ZERO,
    );
    let res = tokio::time::timeout(L * 4, c.task).await;
    assert!(
        matches!(
            res,
            Ok(Ok(Err(Error::PermissionDenied {
                operation: "watch",
                ..
            })))
        ),
        "{res:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_is_not_held_up_by_work_that_never_yields() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let store = MemoryStore::new();
    let elector = builder(store.clone(), "a")
        .lease_duration(Duration::from_secs(3))
        .renew_deadline(Duration::from_secs(2))
        .retry_period(Duration::from_millis(500))
        .drain_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let handle = elector.handle();
    let stop = Arc::new(AtomicBool::new(false));
    let shutdown = CancellationToken::new();
    let (sd, st) = (shutdown.clone(), stop.clone());
    let run = tokio::spawn(async move {
        elector
            .run(sd.cancelled_owned(), move |_term: Term| {
                let st = st.clone();
                async move {
                    // Blocks its worker thread and never yields: abort cannot stop it.
                    while !st.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            })
            .await
    });
    handle.leading().await.unwrap();
    shutdown.cancel();
    // The lease is ours for D after the last renewal; the release must come within it.
    let res = tokio::time::timeout(Duration::from_secs(5), run).await;
    stop.store(true, Ordering::SeqCst);
    assert!(matches!(res, Ok(Ok(Ok(())))), "run did not return: {res:?}");
    assert_eq!(holder(&store).await, None);
}

// ---------------------------------------------------------------------------------------------
// Request budgets (issue 9): what each role costs the store, counted on paused time.
// ---------------------------------------------------------------------------------------------

/// Runs a leader and a follower, each on its own counting handle, for ten lease durations
/// after the leader's term started; returns their calls over that window.
async fn budget<S: LeaseStore + Clone>(
    wrap: impl Fn(FaultyStore<MemoryStore>) -> S,
    tweak: impl Fn(&tenure::testing::Faults),
) -> (tenure::testing::Calls, tenure::testing::Calls) {
    let store = MemoryStore::new();
    let (fa, fb) = (
        FaultyStore::new(store.clone()),
        FaultyStore::new(store.clone()),
    );
    tweak(&fa.faults());
    tweak(&fb.faults());
    let a = spawn(builder(wrap(fa.clone()), "a"), Duration::ZERO);
    a.handle.leading().await.unwrap();
    let b = spawn(builder(wrap(fb.clone()), "b"), Duration::ZERO);
    // Let the follower settle (its first read, its watch), then count.
    sleep(Duration::from_millis(10)).await;
    let (a0, b0) = (fa.faults().calls(), fb.faults().calls());
    sleep(L * 10).await;
    let (a1, b1) = (fa.faults().calls(), fb.faults().calls());
    assert!(a.handle.is_leader() && !b.handle.is_leader());
    for c in [a, b] {
        c.shutdown.cancel();
        c.task.await.unwrap().unwrap();
    }
    let diff = |x: tenure::testing::Calls, y: tenure::testing::Calls| tenure::testing::Calls {
        gets: x.gets - y.gets,
        puts: x.puts - y.puts,
        deletes: x.deletes - y.deletes,
        watches: x.watches - y.watches,
        events: x.events - y.events,
    };
    (diff(a1, a0), diff(b1, b0))
}

#[tokio::test(start_paused = true)]
async fn budget_with_a_watch_that_carries_records() {
    let (leader, follower) = budget(|s| s, |_| {}).await;
    let renewals = (L * 10).as_millis() / R.as_millis();
    // The leader: one write per R, nothing else (its own renewals' events are ignored).
    assert_eq!(leader.puts as u128, renewals, "{leader:?}");
    assert_eq!(leader.gets, 0, "{leader:?}");
    // The follower: every renewal arrives with its record; at most a safety read per L (it is
    // due only when the watch has been silent that long, so here there are none).
    assert_eq!(follower.puts, 0, "{follower:?}");
    assert!(follower.gets <= 10, "{follower:?}");
    assert_eq!(follower.watches, 0, "{follower:?}");
    assert!(follower.events as u128 >= renewals, "{follower:?}");
}

#[tokio::test(start_paused = true)]
async fn budget_with_a_watch_of_bare_hints() {
    let (leader, follower) = budget(|s| s, |f| f.hints_only(true)).await;
    let renewals = (L * 10).as_millis() / R.as_millis();
    assert_eq!(leader.puts as u128, renewals, "{leader:?}");
    // A hint cannot be told from our own renewal's: the leader re-reads on each.
    assert!(leader.gets as u128 <= renewals, "{leader:?}");
    // A hint carries nothing: the follower re-reads on each (one read per renewal), and needs
    // no polling on top.
    assert!(follower.gets as u128 <= renewals + 10, "{follower:?}");
    assert!(follower.gets as u128 >= renewals, "{follower:?}");
}

#[tokio::test(start_paused = true)]
async fn budget_without_a_watch() {
    let (leader, follower) = budget(|s| Shaped::new(s, Watch::None), |_| {}).await;
    let renewals = (L * 10).as_millis() / R.as_millis();
    assert_eq!(leader.puts as u128, renewals, "{leader:?}");
    assert_eq!(leader.gets, 0, "{leader:?}");
    // Polling every R × (1 + 1.2 × rand): between 10 L / 2.2 R and 10 L / R reads.
    let (lo, hi) = (renewals * 10 / 22, renewals + 1);
    assert!(
        (lo..=hi).contains(&(follower.gets as u128)),
        "{follower:?} outside {lo}..={hi}"
    );
}

/// Lost and reordered watch events (against the contract, which promises a hint after a gap)
/// only ever delay a follower: it never takes over a live leader, and takes over a crashed one
/// no sooner than L after the last renewal was sent.
#[tokio::test(start_paused = true)]
async fn lost_or_reordered_events_never_cause_an_early_takeover() {
    let store = MemoryStore::new();
    let fb = FaultyStore::new(store.clone());
    let a = spawn(builder(store.clone(), "a"), Duration::ZERO);
    let term = a.handle.leading().await.unwrap();
    let b = spawn(builder(fb.clone(), "b"), Duration::ZERO);
    sleep(Duration::from_millis(10)).await;
    // Every renewal's event lost for a while, then pairs swapped.
    fb.faults().drop_next_watch_events(10);
    sleep(L * 2).await;
    fb.faults().reorder_next_watch_events(10);
    sleep(L * 2).await;
    assert!(a.handle.is_leader(), "the live leader was deposed");
    assert!(!b.handle.is_leader());
    assert_eq!(b.log.starts().len(), 0);
    // Now a crashes; b takes over, never sooner than L after a's last renewal was sent.
    fb.faults().drop_next_watch_events(3);
    let last_renewal = term.valid_until() - D;
    a.task.abort();
    let t = b.handle.leading().await.unwrap();
    assert!(
        t.started_at() >= last_renewal + L,
        "taken over {:?} after the last renewal",
        t.started_at() - last_renewal
    );
    b.shutdown.cancel();
    b.task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_silent_watch_still_gets_a_safety_read_per_lease() {
    let (leader, follower) = budget(|s| Shaped::new(s, Watch::Silent).every_write(), |_| {}).await;
    let renewals = (L * 10).as_millis() / R.as_millis();
    assert_eq!(leader.puts as u128, renewals, "{leader:?}");
    // Reads every L to 1.5 L: 6 to 10 in 10 L (and the follower never takes over: `budget`
    // checks that the leader still leads).
    assert!((6..=10).contains(&follower.gets), "{follower:?}");
}
