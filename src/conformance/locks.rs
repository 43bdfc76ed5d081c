//! Lock checks of the conformance suite: [`Mutex`](crate::lock::Mutex) over the store under
//! test, in real time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep, timeout, Instant};

use super::support::unique;
use super::{Harness, Timings};
use crate::lock::{LockError, Mutex};
use crate::store::{LeaseStore, PutMode};
use crate::testing::FaultyStore;
use crate::LostReason;

fn mutex<S: LeaseStore + Clone>(store: S, name: &str, id: &str, t: &Timings) -> Mutex<S> {
    Mutex::builder(store, name)
        .identity(id)
        .lease_duration(t.lease_duration)
        .renew_deadline(t.renew_deadline)
        .retry_period(t.retry_period)
        .build()
        .unwrap_or_else(|e| panic!("the harness timings must be valid: {e}"))
}

#[derive(Debug, PartialEq)]
struct WorkFailed(u32);

impl std::fmt::Display for WorkFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "work failed with {}", self.0)
    }
}

/// Mutual exclusion: ten tasks, each with its own `Mutex` on its own store handle, increment a
/// shared counter non-atomically (read, pause, write) inside `synchronize`; the counter ends
/// exact, no two are ever inside at once, and fencing tokens increase in the order of entry.
///
/// # Panics
///
/// When two holders overlap or a synchronize fails.
pub async fn lock_mutual_exclusion<H: Harness>(h: &H) {
    let t = h.timings();
    let name = unique("mutex");
    let counter = Arc::new(AtomicU64::new(0));
    let inside = Arc::new(AtomicU64::new(0));
    let entries = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..10 {
        let m = mutex(h.store().await, &name, &format!("task-{i}"), &t);
        let (counter, inside, entries) = (counter.clone(), inside.clone(), entries.clone());
        tasks.push(tokio::spawn(async move {
            m.synchronize(Some(Duration::from_secs(120)), |term| async move {
                let before = inside.fetch_add(1, Ordering::SeqCst);
                assert_eq!(
                    before, 0,
                    "lock_mutual_exclusion: two holders inside at once"
                );
                entries
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(term.fencing_token());
                let v = counter.load(Ordering::SeqCst);
                sleep(Duration::from_millis(20)).await;
                counter.store(v + 1, Ordering::SeqCst);
                inside.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, WorkFailed>(())
            })
            .await
        }));
    }
    for task in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("lock_mutual_exclusion: synchronize failed: {e}"),
            Err(e) => panic!("lock_mutual_exclusion: a task panicked: {e}"),
        }
    }
    assert_eq!(
        counter.load(Ordering::SeqCst),
        10,
        "lock_mutual_exclusion: lost increments"
    );
    let tokens = entries
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "lock_mutual_exclusion: fencing tokens not increasing in order of entry: {tokens:?}"
    );
}

/// A lock lost while `synchronize` runs (the record overwritten by another holder through the
/// raw store) cancels the work and returns the lost-lock error naming the new holder; the
/// release afterwards does not touch the new holder's record.
///
/// # Panics
///
/// When the loss is not reported, or the new holder's record is clobbered.
pub async fn lock_lost_mid_synchronize<H: Harness>(h: &H) {
    let t = h.timings();
    let name = unique("lost");
    let m = mutex(h.store().await, &name, "victim", &t);
    let raw = h.store().await;
    let saw_cancel = Arc::new(AtomicU64::new(0));
    let (n2, sc) = (name.clone(), saw_cancel.clone());
    let res = m
        .synchronize(None, |term| async move {
            let (rec, v) = match raw.get(&n2).await {
                Ok(Some(x)) => x.into_parts(),
                other => panic!("lock_lost_mid_synchronize: reading our own lock: {other:?}"),
            };
            let mut stolen = rec;
            stolen.holder = Some("thief".into());
            stolen.transitions += 1;
            if let Err(e) = raw.put(&n2, &stolen, PutMode::Update(v)).await {
                panic!("lock_lost_mid_synchronize: overwriting the lock: {e}");
            }
            if timeout(t.renew_deadline + t.slack * 2, term.cancelled())
                .await
                .is_ok()
            {
                sc.store(1, Ordering::SeqCst);
            }
            Ok::<_, WorkFailed>(())
        })
        .await;
    match res {
        Err(LockError::Lost { reason, .. }) => assert_eq!(
            reason,
            LostReason::TakenOver {
                holder: Some("thief".into())
            },
            "lock_lost_mid_synchronize: wrong reason"
        ),
        other => panic!("lock_lost_mid_synchronize: expected LockError::Lost, got {other:?}"),
    }
    assert_eq!(
        saw_cancel.load(Ordering::SeqCst),
        1,
        "lock_lost_mid_synchronize: the work's token was not cancelled"
    );
    let s = h.store().await;
    match s.get(&name).await {
        Ok(Some(r)) => assert_eq!(
            r.record.holder.as_deref(),
            Some("thief"),
            "lock_lost_mid_synchronize: the release clobbered the new holder"
        ),
        other => panic!("lock_lost_mid_synchronize: the new holder's record is gone: {other:?}"),
    }
    assert!(!m.is_held());
}

/// The work's own error comes back unchanged as `LockError::Work`, and the lock is released.
///
/// # Panics
///
/// When the error is wrapped or the lock stays held.
pub async fn lock_work_error_passes_through<H: Harness>(h: &H) {
    let t = h.timings();
    let name = unique("workerr");
    let m = mutex(h.store().await, &name, "a", &t);
    let res: Result<(), _> = m.synchronize(None, |_| async { Err(WorkFailed(7)) }).await;
    match res {
        Err(LockError::Work(e)) => assert_eq!(e, WorkFailed(7)),
        other => panic!("lock_work_error_passes_through: expected LockError::Work, got {other:?}"),
    }
    let holder = m
        .holder()
        .await
        .unwrap_or_else(|e| panic!("lock_work_error_passes_through: {e}"));
    assert!(
        holder.is_none(),
        "lock_work_error_passes_through: still held by {holder:?}"
    );
}

/// `lock` gives up with `LockError::Timeout` after its timeout while another holds the lock,
/// and leaves that holder alone.
///
/// # Panics
///
/// When it returns early, late, or with another error.
pub async fn lock_times_out<H: Harness>(h: &H) {
    let t = h.timings();
    let name = unique("timeout");
    let a = mutex(h.store().await, &name, "a", &t);
    let b = mutex(h.store().await, &name, "b", &t);
    let g = a
        .lock(None)
        .await
        .unwrap_or_else(|e| panic!("lock_times_out: a could not lock: {e}"));
    let wait = t.retry_period * 3;
    let t0 = Instant::now();
    let res = b.lock(Some(wait)).await;
    let took = t0.elapsed();
    assert!(
        matches!(res, Err(LockError::Timeout { .. })),
        "lock_times_out: got {res:?}"
    );
    assert!(
        took >= wait,
        "lock_times_out: gave up after {took:?}, before {wait:?}"
    );
    assert!(
        took <= wait + b.config().elector.effective_call_timeout() + t.slack,
        "lock_times_out: gave up only after {took:?}"
    );
    assert!(g.healthy(), "lock_times_out: the holder was disturbed");
    g.unlock()
        .await
        .unwrap_or_else(|e| panic!("lock_times_out: unlock: {e}"));
}

/// While waiting, attempts follow the backoff (`min`, doubling, capped at `max`, jittered to
/// `[d/2, d]`): over a window, the number of reads stays between `window / max` and
/// `window / (max / 2)` plus the few wake-ups the holder's renewals cause through the watch.
///
/// # Panics
///
/// When the waiter reads far more or far less often than its backoff allows.
pub async fn lock_backoff_bounds<H: Harness>(h: &H) {
    let name = unique("backoff");
    // A holder that renews rarely, so that watch wake-ups are few.
    let slow = Timings {
        lease_duration: Duration::from_secs(5),
        renew_deadline: Duration::from_secs(3),
        retry_period: Duration::from_secs(1),
        ..h.timings()
    };
    let a = mutex(h.store().await, &name, "a", &slow);
    let g = a
        .lock(None)
        .await
        .unwrap_or_else(|e| panic!("lock_backoff_bounds: a could not lock: {e}"));
    let counted = FaultyStore::new(h.store().await);
    let faults = counted.faults();
    let (min, max) = (Duration::from_millis(50), Duration::from_millis(200));
    let b = Mutex::builder(counted, &name)
        .identity("b")
        .lease_duration(slow.lease_duration)
        .renew_deadline(slow.renew_deadline)
        .retry_period(slow.retry_period)
        .backoff_min(min)
        .backoff_max(max)
        .backoff_multiplier(2.0)
        .build()
        .unwrap_or_else(|e| panic!("lock_backoff_bounds: {e}"));
    let window = Duration::from_secs(2);
    let res = b.lock(Some(window)).await;
    assert!(
        matches!(res, Err(LockError::Timeout { .. })),
        "lock_backoff_bounds: got {res:?}"
    );
    let reads = faults.calls().gets;
    let renewals = (window.as_millis() / slow.retry_period.as_millis()) as u64 + 1;
    let low = (window.as_millis() / max.as_millis()) as u64 - 1;
    let high = (window.as_millis() / (max / 2).as_millis()) as u64 + 3 + renewals;
    assert!(
        (low..=high).contains(&reads),
        "lock_backoff_bounds: {reads} reads in {window:?}, expected {low}..={high}"
    );
    g.unlock()
        .await
        .unwrap_or_else(|e| panic!("lock_backoff_bounds: unlock: {e}"));
}

/// A holder that stops renewing without releasing (killed; here `abandon`) is taken over by a
/// waiter no sooner than one lease duration after the waiter started watching, and not much
/// later.
///
/// # Panics
///
/// When the takeover is early (unsafe) or never comes.
pub async fn lock_stale_holder_is_taken_over<H: Harness>(h: &H) {
    let t = h.timings();
    let name = unique("stale");
    let a = mutex(h.store().await, &name, "killed", &t);
    let g = a
        .lock(None)
        .await
        .unwrap_or_else(|e| panic!("lock_stale_holder_is_taken_over: {e}"));
    let old = g.fencing_token();
    // The killed holder's last renewal was sent a renew deadline before its `valid_until`.
    let last_renewal = g.term().valid_until() - t.renew_deadline;
    g.abandon();
    let t0 = Instant::now();
    let b = mutex(h.store().await, &name, "b", &t);
    let g2 = b
        .lock(Some(t.lease_duration * 4))
        .await
        .unwrap_or_else(|e| panic!("lock_stale_holder_is_taken_over: b could not take over: {e}"));
    let taken = g2.term().started_at();
    assert!(
        taken >= last_renewal + t.lease_duration,
        "lock_stale_holder_is_taken_over: taken {:?} after the holder's last renewal, before a \
         full lease",
        taken - last_renewal
    );
    let took = t0.elapsed();
    assert!(
        took <= t.lease_duration * 3,
        "lock_stale_holder_is_taken_over: taken only after {took:?}"
    );
    assert!(
        g2.fencing_token() > old,
        "lock_stale_holder_is_taken_over: fencing token did not increase"
    );
    g2.unlock()
        .await
        .unwrap_or_else(|e| panic!("lock_stale_holder_is_taken_over: unlock: {e}"));
}

/// `try_lock` never waits for a holder: `WouldBlock` naming the holder, within the call
/// timeout; `AlreadyHeld` on the holding instance; success once the lock is free.
///
/// # Panics
///
/// When it blocks or returns the wrong error.
pub async fn try_lock_never_blocks<H: Harness>(h: &H) {
    let t = h.timings();
    let name = unique("try");
    let a = mutex(h.store().await, &name, "a", &t);
    let b = mutex(h.store().await, &name, "b", &t);
    let g = a
        .lock(None)
        .await
        .unwrap_or_else(|e| panic!("try_lock_never_blocks: {e}"));
    let t0 = Instant::now();
    match b.try_lock().await {
        Err(LockError::WouldBlock { holder, .. }) => {
            assert_eq!(
                holder.as_deref(),
                Some("a"),
                "try_lock_never_blocks: wrong holder"
            )
        }
        other => panic!("try_lock_never_blocks: expected WouldBlock, got {other:?}"),
    }
    let took = t0.elapsed();
    let bound = b.config().elector.effective_call_timeout() * 2 + t.slack;
    assert!(took <= bound, "try_lock_never_blocks: took {took:?}");
    assert!(matches!(
        a.try_lock().await,
        Err(LockError::AlreadyHeld { .. })
    ));
    g.unlock()
        .await
        .unwrap_or_else(|e| panic!("try_lock_never_blocks: unlock: {e}"));
    let g2 = b
        .try_lock()
        .await
        .unwrap_or_else(|e| panic!("try_lock_never_blocks: the free lock was refused: {e}"));
    assert!(
        b.is_locked_by_me().await.unwrap_or(false),
        "try_lock_never_blocks: the store does not name b"
    );
    g2.unlock()
        .await
        .unwrap_or_else(|e| panic!("try_lock_never_blocks: unlock: {e}"));
}

/// A holder that dies (here `abandon`) is taken over by repeated `try_lock`s of one `Mutex`
/// (a cron job trying every `R`): the instance remembers when it first saw the record, so one
/// of them succeeds once the record stood unchanged for `L` — never earlier than `L` after the
/// dead holder's last renewal. And on a store whose `get` reports a record's age, a process
/// that never saw the record takes it with its first `try_lock` once the lease has passed
/// (other stores skip that part, said on stderr).
///
/// # Panics
///
/// When the takeover is early, or never comes.
pub async fn try_lock_takes_over_a_dead_holder<H: Harness>(h: &H) {
    const CHECK: &str = "try_lock_takes_over_a_dead_holder";
    let t = h.timings();
    let name = unique("dead");
    let g = mutex(h.store().await, &name, "dead", &t)
        .lock(None)
        .await
        .unwrap_or_else(|e| panic!("{CHECK}: {e}"));
    let last_renewal = g.term().valid_until() - t.renew_deadline;
    g.abandon();
    let b = mutex(h.store().await, &name, "b", &t);
    let t0 = Instant::now();
    let g2 = loop {
        match b.try_lock().await {
            Ok(g) => break g,
            Err(LockError::WouldBlock { .. }) => {
                assert!(
                    t0.elapsed() < t.lease_duration * 3,
                    "{CHECK}: repeated try_lock never took the dead holder's lock"
                );
                sleep(t.retry_period).await;
            }
            Err(e) => panic!("{CHECK}: try_lock: {e:?}"),
        }
    };
    let taken = g2.term().started_at();
    assert!(
        taken >= last_renewal + t.lease_duration,
        "{CHECK}: taken {:?} after the holder's last renewal, before a full lease",
        taken - last_renewal
    );
    g2.abandon();
    let raw = h.store().await;
    let reports_age = match raw.get(&name).await {
        Ok(Some(s)) => s.age.is_some(),
        other => panic!("{CHECK}: reading the lock: {other:?}"),
    };
    if !reports_age {
        eprintln!(
            "conformance::{CHECK}: {} reports no record age; skipped the fresh-process part",
            raw.kind()
        );
        return;
    }
    sleep(t.lease_duration + t.slack).await;
    let fresh = mutex(h.store().await, &name, "fresh", &t);
    let g3 = fresh.try_lock().await.unwrap_or_else(|e| {
        panic!("{CHECK}: a fresh process's first try_lock, a lease after the holder died: {e:?}")
    });
    g3.unlock()
        .await
        .unwrap_or_else(|e| panic!("{CHECK}: unlock: {e}"));
}
