//! `Mutex` behaviour on paused tokio time over the memory store and `FaultyStore`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tenure::lock::{LockError, Mutex};
use tenure::testing::{Fault, FaultyStore};
use tenure::{LeaseRecord, LeaseStore, LostReason, MemoryStore, PutMode};
use tokio::time::{sleep, Instant};

const NAME: &str = "lock";
const L: Duration = Duration::from_secs(15);

fn mutex<S: LeaseStore + Clone>(store: S, id: &str) -> Mutex<S> {
    Mutex::builder(store, NAME).identity(id).build().unwrap()
}

async fn holder(store: &impl LeaseStore) -> Option<String> {
    store.get(NAME).await.unwrap().and_then(|s| s.record.holder)
}

#[tokio::test(start_paused = true)]
async fn mutual_exclusion_of_ten_contending_tasks() {
    let store = MemoryStore::new();
    let counter = Arc::new(AtomicU64::new(0));
    let inside = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..10 {
        let m = mutex(store.clone(), &format!("t{i}"));
        let (counter, inside) = (counter.clone(), inside.clone());
        tasks.push(tokio::spawn(async move {
            m.synchronize(Some(Duration::from_secs(600)), |term| async move {
                assert_eq!(
                    inside.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two holders at once"
                );
                // A non-atomic read-modify-write with a pause in the middle.
                let v = counter.load(Ordering::SeqCst);
                sleep(Duration::from_millis(300)).await;
                counter.store(v + 1, Ordering::SeqCst);
                inside.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(term.fencing_token())
            })
            .await
        }));
    }
    let mut tokens = Vec::new();
    for t in tasks {
        tokens.push(t.await.unwrap().unwrap());
    }
    assert_eq!(counter.load(Ordering::SeqCst), 10);
    tokens.sort();
    tokens.dedup();
    assert_eq!(tokens.len(), 10, "every holding has its own fencing token");
}

#[tokio::test(start_paused = true)]
async fn losing_the_lock_cancels_the_work_and_says_why() {
    let store = MemoryStore::new();
    let m = mutex(store.clone(), "a");
    let s2 = store.clone();
    let saw_cancel = Arc::new(AtomicU64::new(0));
    let sc = saw_cancel.clone();
    let res = m
        .synchronize(None, |term| async move {
            // Someone overwrites the record behind our back.
            let (rec, v) = s2.get(NAME).await.unwrap().unwrap().into_parts();
            let mut stolen = rec;
            stolen.holder = Some("thief".into());
            stolen.transitions += 1;
            s2.put(NAME, &stolen, PutMode::Update(v)).await.unwrap();
            term.cancelled().await;
            sc.store(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(())
        })
        .await;
    match res {
        Err(LockError::Lost { reason, .. }) => {
            assert_eq!(
                reason,
                LostReason::TakenOver {
                    holder: Some("thief".into())
                }
            );
        }
        other => panic!("expected a lost-lock error, got {other:?}"),
    }
    assert_eq!(
        saw_cancel.load(Ordering::SeqCst),
        1,
        "the work saw its token cancelled"
    );
    // Unlock never deletes a lock someone else now holds.
    sleep(Duration::from_secs(1)).await;
    assert_eq!(holder(&store).await.as_deref(), Some("thief"));
    assert!(!m.is_held());
}

#[tokio::test(start_paused = true)]
async fn work_that_ignores_cancellation_is_dropped_after_the_grace() {
    // Lost at the renew deadline (store unreachable): nobody may take over before the last
    // good renewal plus L, so the work gets its grace (2 s here, within L − D = 5 s).
    let store = FaultyStore::new(MemoryStore::new());
    let m = Mutex::builder(store.clone(), NAME)
        .identity("a")
        .lost_grace(Duration::from_secs(2))
        .build()
        .unwrap();
    let faults = store.faults();
    let lost_at = Arc::new(std::sync::Mutex::new(None));
    let la = lost_at.clone();
    let res = m
        .synchronize(None, |term| async move {
            faults.partition();
            term.cancelled().await;
            *la.lock().unwrap() = Some(Instant::now());
            sleep(Duration::from_secs(3600)).await; // ignores its token
            Ok::<_, std::io::Error>(())
        })
        .await;
    assert!(
        matches!(
            res,
            Err(LockError::Lost {
                reason: LostReason::RenewDeadlineExceeded { .. },
                ..
            })
        ),
        "{res:?}"
    );
    let lost_at = lost_at.lock().unwrap().unwrap();
    assert_eq!(lost_at.elapsed(), Duration::from_secs(2));
    store.faults().heal();

    // Deleted (or taken over): somebody else may hold it already, so no grace at all.
    let store = MemoryStore::new();
    let m = mutex(store.clone(), "a");
    let s2 = store.clone();
    let deleted_at = Arc::new(std::sync::Mutex::new(None));
    let da = deleted_at.clone();
    let res = m
        .synchronize(None, |_term| async move {
            let (_, v) = s2.get(NAME).await.unwrap().unwrap().into_parts();
            s2.delete(NAME, &v).await.unwrap();
            *da.lock().unwrap() = Some(Instant::now());
            sleep(Duration::from_secs(3600)).await; // ignores its token
            Ok::<_, std::io::Error>(())
        })
        .await;
    assert!(
        matches!(
            res,
            Err(LockError::Lost {
                reason: LostReason::Deleted,
                ..
            })
        ),
        "{res:?}"
    );
    let deleted_at = deleted_at.lock().unwrap().unwrap();
    assert_eq!(deleted_at.elapsed(), Duration::ZERO);
}

#[test]
fn a_grace_longer_than_the_safety_margin_is_refused() {
    let res = Mutex::builder(MemoryStore::new(), NAME)
        .lease_duration(Duration::from_secs(2))
        .renew_deadline(Duration::from_millis(1200))
        .retry_period(Duration::from_millis(300))
        .lost_grace(Duration::from_secs(1))
        .build();
    match res {
        Err(tenure::Error::Config { rule }) => assert!(
            rule.starts_with(
                "lost_grace (1s) must be at most lease_duration − renew_deadline (800ms)"
            ),
            "{rule}"
        ),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[derive(Debug, PartialEq)]
struct ReportFailed(u32);

#[tokio::test(start_paused = true)]
async fn the_works_error_comes_back_unchanged_and_the_lock_is_released() {
    let store = MemoryStore::new();
    let m = mutex(store.clone(), "a");
    let res: Result<(), _> = m
        .synchronize(None, |_| async { Err(ReportFailed(7)) })
        .await;
    match res {
        Err(LockError::Work(e)) => assert_eq!(e, ReportFailed(7)),
        other => panic!("{other:?}"),
    }
    assert_eq!(holder(&store).await, None);
    let ok = m
        .synchronize(None, |_| async { Ok::<_, ReportFailed>(5) })
        .await
        .unwrap();
    assert_eq!(ok, 5);
}

#[tokio::test(start_paused = true)]
async fn timing_out_while_somebody_else_holds() {
    let store = MemoryStore::new();
    let a = mutex(store.clone(), "a");
    let b = mutex(store.clone(), "b");
    let _g = a.lock(None).await.unwrap();
    let t0 = Instant::now();
    let res = b.lock(Some(Duration::from_secs(7))).await;
    assert!(matches!(res, Err(LockError::Timeout { .. })), "{res:?}");
    assert_eq!(t0.elapsed(), Duration::from_secs(7));
    // The default timeout is 2 × the lease duration (seed 001).
    assert_eq!(b.default_timeout(), L * 2);
    assert!(!b.is_held());
    assert_eq!(holder(&store).await.as_deref(), Some("a"));
}

#[tokio::test(start_paused = true)]
async fn backoff_bounds_the_attempts_while_waiting() {
    let store = FaultyStore::new(MemoryStore::new());
    let a = mutex(store.inner().clone(), "a");
    let _g = a.lock(None).await.unwrap();
    let b = Mutex::builder(store.clone(), NAME)
        .identity("b")
        .backoff_min(Duration::from_millis(100))
        .backoff_max(Duration::from_millis(400))
        .backoff_multiplier(2.0)
        .build()
        .unwrap();
    let res = b.lock(Some(Duration::from_secs(10))).await;
    assert!(matches!(res, Err(LockError::Timeout { .. })));
    let gets = store.faults().calls().gets;
    // Delays grow 100, 200, 400, 400, ... ms, each jittered to [d/2, d]: over 10 s that is
    // between 10 s / 400 ms = 25 and 10 s / 200 ms + 3 = 53 reads.
    assert!((24..=55).contains(&gets), "{gets} reads in 10 s");
}

#[tokio::test(start_paused = true)]
async fn invalid_backoff_is_a_config_error() {
    let err = Mutex::builder(MemoryStore::new(), NAME)
        .backoff_min(Duration::from_secs(2))
        .backoff_max(Duration::from_secs(1))
        .build()
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        "invalid configuration: backoff_max (1s) must be at least backoff_min (2s)"
    );
    assert!(Mutex::builder(MemoryStore::new(), NAME)
        .max_refresh_fails(0)
        .build()
        .is_err());
}

#[tokio::test(start_paused = true)]
async fn a_killed_holders_lock_is_taken_after_the_lease() {
    let store = MemoryStore::new();
    store
        .put(NAME, &LeaseRecord::held_by("killed", L, 3), PutMode::Create)
        .await
        .unwrap();
    let t0 = Instant::now();
    let b = mutex(store.clone(), "b");
    let g = b.lock(None).await.unwrap();
    assert!(t0.elapsed() >= L, "took the lock after {:?}", t0.elapsed());
    assert!(t0.elapsed() <= L + Duration::from_secs(5));
    assert_eq!(g.fencing_token(), 4);
}

#[tokio::test(start_paused = true)]
async fn try_lock_never_waits() {
    let store = FaultyStore::new(MemoryStore::new());
    let a = mutex(store.inner().clone(), "a");
    let b = mutex(store.clone(), "b");
    let g = a.lock(None).await.unwrap();
    let t0 = Instant::now();
    match b.try_lock().await {
        Err(LockError::WouldBlock { holder, .. }) => assert_eq!(holder.as_deref(), Some("a")),
        other => panic!("{other:?}"),
    }
    assert_eq!(t0.elapsed(), Duration::ZERO);
    // Even when the store hangs, try_lock returns within the call timeout.
    store.faults().partition();
    let t0 = Instant::now();
    let res = b.try_lock().await;
    assert!(
        matches!(res, Err(LockError::Store(tenure::Error::Timeout { .. }))),
        "{res:?}"
    );
    assert!(t0.elapsed() <= b.config().elector.effective_call_timeout());
    store.faults().heal();
    g.unlock().await.unwrap();
    let g2 = b.try_lock().await.unwrap();
    assert_eq!(holder(&store).await.as_deref(), Some("b"));
    drop(g2);
}

#[tokio::test(start_paused = true)]
async fn one_instance_never_holds_twice() {
    let store = MemoryStore::new();
    let m = mutex(store.clone(), "a");
    let clone = m.clone();
    let g = m.lock(None).await.unwrap();
    assert!(matches!(
        clone.lock(None).await,
        Err(LockError::AlreadyHeld { .. })
    ));
    assert!(matches!(
        m.try_lock().await,
        Err(LockError::AlreadyHeld { .. })
    ));
    // From another task, too.
    let c2 = m.clone();
    let other = tokio::spawn(async move { c2.lock(Some(Duration::from_secs(1))).await.err() });
    assert!(matches!(
        other.await.unwrap(),
        Some(LockError::AlreadyHeld { .. })
    ));
    assert!(m.is_held() && clone.is_held());
    g.unlock().await.unwrap();
    assert!(!m.is_held());
    assert!(matches!(m.unlock().await, Err(LockError::NotHeld { .. })));
    assert!(matches!(m.healthy(), Err(LockError::NotHeld { .. })));
    assert!(matches!(m.check_health(), Err(LockError::NotHeld { .. })));
}

#[tokio::test(start_paused = true)]
async fn unhealthy_after_max_refresh_fails_before_the_deadline() {
    let store = FaultyStore::new(MemoryStore::new());
    let m = Mutex::builder(store.clone(), NAME)
        .identity("a")
        .max_refresh_fails(3)
        .build()
        .unwrap();
    let g = m.lock(None).await.unwrap();
    assert!(g.healthy());
    m.check_health().unwrap();
    store.faults().fail_next(3, Fault::Unavailable);
    // Renewals at 2, 4 and 6 s fail; the deadline is at 10 s.
    sleep(Duration::from_millis(6_500)).await;
    assert!(!g.term().is_cancelled(), "still within the renew deadline");
    assert!(!g.healthy());
    assert!(matches!(
        m.check_health(),
        Err(LockError::Unhealthy {
            renew_failures: 3,
            ..
        })
    ));
    // The next renewal succeeds: healthy again.
    sleep(Duration::from_secs(2)).await;
    assert!(g.healthy());
    // Store hangs: unhealthy at the deadline at the latest, and the lock is lost.
    store.faults().partition();
    sleep(Duration::from_secs(11)).await;
    assert!(!g.healthy());
    assert!(matches!(g.check_health(), Err(LockError::Lost { .. })));
    store.faults().heal();
}

#[tokio::test(start_paused = true)]
async fn abandon_forgets_without_touching_the_store() {
    let store = MemoryStore::new();
    let a = mutex(store.clone(), "a");
    let g = a.lock(None).await.unwrap();
    let term = g.term().clone();
    g.abandon();
    assert!(term.is_cancelled());
    assert!(!a.is_held());
    assert!(a.is_locked().await.unwrap());
    assert!(a.is_locked_by_me().await.unwrap());
    // Nobody renews it now: another instance gets it after the lease.
    let t0 = Instant::now();
    let b = mutex(store.clone(), "b");
    let _g = b.lock(None).await.unwrap();
    assert!(t0.elapsed() >= L);
    assert!(!a.is_locked_by_me().await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn the_stored_value_is_readable_by_others() {
    let store = MemoryStore::new();
    let a = Mutex::builder(store.clone(), NAME)
        .identity("a")
        .value("10.0.0.7:8080")
        .build()
        .unwrap();
    let b = mutex(store.clone(), "b");
    assert!(b.holder().await.unwrap().is_none());
    let g = a.lock(None).await.unwrap();
    let h = b.holder().await.unwrap().unwrap();
    assert_eq!(
        (h.identity.as_str(), h.value.as_deref()),
        ("a", Some("10.0.0.7:8080"))
    );
    assert!(b.is_locked().await.unwrap());
    assert!(!b.is_locked_by_me().await.unwrap());
    drop(g);
    // Without a value, the identity is stored (seed 000 stores the hostname).
    sleep(Duration::from_millis(10)).await;
    let _g = b.lock(None).await.unwrap();
    assert_eq!(
        a.holder().await.unwrap().unwrap().value.as_deref(),
        Some("b")
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_the_guard_releases_in_the_background() {
    let store = MemoryStore::new();
    let a = mutex(store.clone(), "a");
    let g = a.lock(None).await.unwrap();
    drop(g);
    sleep(Duration::from_millis(1)).await;
    assert_eq!(holder(&store).await, None);
    let b = mutex(store.clone(), "b");
    let t0 = Instant::now();
    let _g = b.lock(None).await.unwrap();
    assert!(t0.elapsed() < Duration::from_millis(10));
}

// ---------------------------------------------------------------------------------------------
// Safety regressions: each of these failed on the code before the fix it is named after.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn repeated_try_lock_takes_over_a_dead_holder() {
    let store = MemoryStore::new();
    let a = mutex(store.clone(), "a");
    // a dies holding the lock: nothing renews it, nothing releases it.
    a.lock(None).await.unwrap().abandon();
    let b = mutex(store.clone(), "b");
    let t0 = Instant::now();
    let got = loop {
        match b.try_lock().await {
            Ok(g) => break g,
            Err(LockError::WouldBlock { .. }) if t0.elapsed() < L * 3 => {
                sleep(Duration::from_secs(1)).await
            }
            Err(e) => panic!("after {:?}: {e:?}", t0.elapsed()),
        }
    };
    assert!(t0.elapsed() >= L, "taken after only {:?}", t0.elapsed());
    assert!(t0.elapsed() <= L + Duration::from_secs(1));
    assert_eq!(holder(&store).await.as_deref(), Some("b"));
    got.unlock().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn work_never_overlaps_the_next_holder_after_a_loss() {
    use std::sync::Mutex as StdMutex;
    let (l, d, r) = (
        Duration::from_secs(2),
        Duration::from_millis(1200),
        Duration::from_millis(300),
    );
    let store = FaultyStore::new(MemoryStore::new());
    // The default lost_grace, with L − D = 800 ms.
    let a = Mutex::builder(store.clone(), NAME)
        .identity("a")
        .lease_duration(l)
        .renew_deadline(d)
        .retry_period(r)
        .build()
        .unwrap();
    let b = Mutex::builder(store.inner().clone(), NAME)
        .identity("b")
        .lease_duration(l)
        .renew_deadline(d)
        .retry_period(r)
        .build()
        .unwrap();
    struct OnDrop(Arc<StdMutex<Option<Instant>>>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            *self.0.lock().unwrap() = Some(Instant::now());
        }
    }
    let dropped = Arc::new(StdMutex::new(None));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let d2 = dropped.clone();
    let work_a = tokio::spawn(async move {
        a.synchronize(None, |_term| async move {
            let _guard = OnDrop(d2);
            let _ = started_tx.send(());
            // Ignores its token: runs until dropped.
            sleep(Duration::from_secs(3600)).await;
            Ok::<_, std::io::Error>(())
        })
        .await
    });
    started_rx.await.unwrap();
    let waiter = tokio::spawn(async move {
        let g = b.lock(Some(Duration::from_secs(60))).await.unwrap();
        let at = Instant::now();
        g.unlock().await.unwrap();
        at
    });
    sleep(r * 2).await;
    store.faults().partition();
    let b_acquired = waiter.await.unwrap();
    let res = work_a.await.unwrap();
    assert!(matches!(res, Err(LockError::Lost { .. })), "{res:?}");
    let dropped_at = dropped.lock().unwrap().unwrap();
    assert!(
        dropped_at <= b_acquired,
        "a's work ran {:?} into b's holding",
        dropped_at - b_acquired
    );
}

#[tokio::test(start_paused = true)]
async fn huge_timeouts_wait_without_panicking() {
    let store = MemoryStore::new();
    let m = mutex(store.clone(), "a");
    let g = m.lock(Some(Duration::MAX)).await.unwrap();
    g.unlock().await.unwrap();
    let v = m
        .synchronize(Some(Duration::MAX), |_t| async {
            Ok::<_, std::io::Error>(7)
        })
        .await
        .unwrap();
    assert_eq!(v, 7);
}

#[test]
fn a_zero_backoff_min_is_a_config_error() {
    let res = Mutex::builder(MemoryStore::new(), NAME)
        .backoff_min(Duration::ZERO)
        .build();
    assert!(matches!(res, Err(tenure::Error::Config { .. })));
}

#[cfg(feature = "file")]
#[tokio::test]
async fn a_fresh_process_try_lock_counts_the_time_the_record_already_stood() {
    let dir = tempfile::tempdir().unwrap();
    let store = tenure::file::FileStore::open(dir.path()).unwrap();
    let timed = |id: &str| {
        Mutex::builder(store.clone(), NAME)
            .identity(id)
            .lease_duration(Duration::from_millis(600))
            .renew_deadline(Duration::from_millis(400))
            .retry_period(Duration::from_millis(100))
            .build()
            .unwrap()
    };
    // A holder dies; a whole lease passes before anybody looks.
    timed("a").lock(None).await.unwrap().abandon();
    tokio::time::sleep(Duration::from_millis(900)).await;
    // A process that never saw the record: the file store knows its age on this machine's
    // clock, so the first attempt already takes the dead holder's lock.
    let g = timed("b").try_lock().await;
    assert!(g.is_ok(), "{g:?}");
}
