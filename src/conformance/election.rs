//! Election checks of the conformance suite: electors over the store under test, in real time.

use std::sync::PoisonError;
use std::time::Duration;

use tokio::time::{sleep, timeout, Instant};

use super::support::*;
use super::Harness;
use crate::error::Error;
use crate::store::{LeaseStore, PutMode};
use crate::testing::FaultyStore;
use crate::{LostReason, StopReason};

/// Five electors on one name through graceful shutdowns, crashes and partitions of the leader:
/// no two terms' work ever overlaps in time (each runs from `on_started_leading` until its
/// token is cancelled), fencing tokens strictly increase in term order, and an independent
/// observer polling the store never sees the term counter go backwards, a new holder without
/// a new term, or one term number with two holders.
///
/// # Panics
///
/// When a property is broken.
pub async fn electors_never_overlap<H: Harness>(h: &H) {
    let t = h.timings();
    let name = unique("overlap");
    let log = TermLog::default();
    let observer = Observer::spawn(h.store().await, &name);
    let mut slots = Vec::new();
    for i in 0..5 {
        let store = FaultyStore::new(h.store().await);
        slots.push(spawn_candidate(
            store,
            &name,
            format!("{name}-c{i}-g0"),
            &t,
            &log,
            Duration::ZERO,
        ));
    }
    let mut last = 0;
    for round in 0..6u32 {
        let (i, term) =
            wait_for_leader(&slots, last, t.lease_duration * 4, "electors_never_overlap").await;
        last = term.fencing_token();
        // Let the leader renew a couple of times first.
        sleep(t.retry_period * 2).await;
        let fresh = |slots: &Vec<Candidate<FaultyStore<H::Store>>>| {
            spawn_candidate(
                slots[i].store.clone(),
                &name,
                format!("{name}-c{i}-g{}", round + 1),
                &t,
                &log,
                Duration::ZERO,
            )
        };
        match round % 3 {
            0 => {
                slots[i].shutdown.cancel();
                let next = fresh(&slots);
                let old = std::mem::replace(&mut slots[i], next);
                join_ok(
                    old,
                    t.lease_duration * 3,
                    "electors_never_overlap (graceful shutdown)",
                )
                .await;
            }
            1 => {
                slots[i].task.abort();
                let next = fresh(&slots);
                let old = std::mem::replace(&mut slots[i], next);
                let _ = old.task.await;
            }
            _ => {
                let faults = slots[i].store.faults();
                faults.partition();
                let (j, next) = wait_for_leader(
                    &slots,
                    last,
                    t.lease_duration * 4,
                    "electors_never_overlap (partition)",
                )
                .await;
                assert_ne!(
                    i, j,
                    "electors_never_overlap: a partitioned elector won a new term"
                );
                assert!(next.fencing_token() > last);
                // The next round picks up this leader.
                faults.heal();
            }
        }
    }
    wait_for_leader(&slots, last, t.lease_duration * 4, "electors_never_overlap").await;
    for c in &slots {
        c.shutdown.cancel();
    }
    for c in slots {
        join_ok(
            c,
            t.lease_duration * 3,
            "electors_never_overlap (final shutdown)",
        )
        .await;
    }
    let samples = observer.stop().await;
    let terms = log.terms();
    assert!(
        terms.len() >= 7,
        "electors_never_overlap: only {} terms",
        terms.len()
    );
    assert_terms_disjoint("electors_never_overlap", &terms);
    assert_observations_consistent("electors_never_overlap", &samples);
}

/// Fencing tokens strictly increase over 50 forced handoffs (graceful shutdown of the leader,
/// a replacement candidate started each time), in order of term start.
///
/// # Panics
///
/// When a property is broken.
pub async fn fencing_tokens_increase<H: Harness>(h: &H) {
    const HANDOFFS: usize = 50;
    let t = h.timings();
    let name = unique("fencing");
    let log = TermLog::default();
    let mut slots = Vec::new();
    for i in 0..2 {
        slots.push(spawn_candidate(
            h.store().await,
            &name,
            format!("{name}-c{i}"),
            &t,
            &log,
            Duration::ZERO,
        ));
    }
    let mut tokens = Vec::new();
    let mut last = 0;
    let mut joins = Vec::new();
    for k in 0..HANDOFFS {
        let (i, term) = wait_for_leader(
            &slots,
            last,
            t.lease_duration * 4,
            "fencing_tokens_increase",
        )
        .await;
        last = term.fencing_token();
        tokens.push(last);
        slots[i].shutdown.cancel();
        let store = h.store().await;
        let old = std::mem::replace(
            &mut slots[i],
            spawn_candidate(
                store,
                &name,
                format!("{name}-r{k}"),
                &t,
                &log,
                Duration::ZERO,
            ),
        );
        joins.push(old);
    }
    let (_, term) = wait_for_leader(
        &slots,
        last,
        t.lease_duration * 4,
        "fencing_tokens_increase",
    )
    .await;
    tokens.push(term.fencing_token());
    for c in &slots {
        c.shutdown.cancel();
    }
    for c in joins.into_iter().chain(slots) {
        join_ok(c, t.lease_duration * 3, "fencing_tokens_increase").await;
    }
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "fencing_tokens_increase: tokens in handoff order are not strictly increasing: {tokens:?}"
    );
    let terms = log.terms();
    assert!(
        terms.len() > HANDOFFS,
        "fencing_tokens_increase: only {} terms",
        terms.len()
    );
    assert_terms_disjoint("fencing_tokens_increase", &terms);
}

/// Graceful release hands over without waiting for expiry. With a long lease (`5 × L`), the
/// leader is shut down while its work takes a while to drain: the work's token is cancelled,
/// the leader keeps the lease until the work finished, writes the release only after that, the
/// callback reports `StopReason::ShutDown`, and the follower leads well before `L/2`.
///
/// # Panics
///
/// When a property is broken.
pub async fn graceful_release_hands_over<H: Harness>(h: &H) {
    let t = h.timings().scaled(5);
    let drain = t.retry_period * 2;
    let name = unique("graceful");
    let log = TermLog::default();
    let writes = Writes::default();
    let observer = Observer::spawn(h.store().await, &name);
    let leader_store = Recording {
        inner: h.store().await,
        writes: writes.clone(),
    };
    let a = spawn_candidate(leader_store, &name, format!("{name}-a"), &t, &log, drain);
    let a_term = a.handle.leading().await.unwrap_or_else(|| {
        panic!("graceful_release_hands_over: the first elector stopped without leading")
    });
    let b = spawn_candidate(
        h.store().await,
        &name,
        format!("{name}-b"),
        &t,
        &log,
        Duration::ZERO,
    );
    wait_following(
        &b.handle,
        a.identity.as_str(),
        t.lease_duration,
        "graceful_release_hands_over",
    )
    .await;

    let shutdown_at = Instant::now();
    a.shutdown.cancel();
    let bound = t.lease_duration / 2;
    let b_term = match timeout(bound, b.handle.leading()).await {
        Ok(Some(term)) => term,
        Ok(None) => panic!("graceful_release_hands_over: the follower stopped"),
        Err(_) => panic!(
            "graceful_release_hands_over: the follower did not lead within {bound:?} of the \
             leader's shutdown (lease {:?}): the release did not hand over",
            t.lease_duration
        ),
    };
    let stops = a.stops.clone();
    let a_identity = a.identity.clone();
    join_ok(a, t.lease_duration, "graceful_release_hands_over").await;
    b.shutdown.cancel();
    join_ok(b, t.lease_duration, "graceful_release_hands_over").await;
    let samples = observer.stop().await;

    let terms = log.terms();
    let a_rec = terms
        .iter()
        .find(|x| x.token == a_term.fencing_token())
        .unwrap_or_else(|| panic!("graceful_release_hands_over: the leader's term was not logged"));
    let work_end = a_rec
        .ended
        .unwrap_or_else(|| panic!("graceful_release_hands_over: the leader's work never ended"));
    assert!(
        work_end >= shutdown_at + drain,
        "graceful_release_hands_over: the work ended before its drain finished"
    );
    assert!(
        b_term.started_at() >= work_end,
        "graceful_release_hands_over: the follower's term started {:?} before the leader's work \
         finished draining",
        work_end - b_term.started_at()
    );
    let release = writes
        .all()
        .into_iter()
        .find(|w| w.holder.is_none())
        .unwrap_or_else(|| panic!("graceful_release_hands_over: the leader never wrote a release"));
    assert!(
        release.sent >= work_end,
        "graceful_release_hands_over: the release was sent {:?} before the work finished",
        work_end - release.sent
    );
    for s in &samples {
        if s.after < work_end && s.after > shutdown_at {
            if let Ok(Some(r)) = &s.seen {
                assert_eq!(
                    r.holder.as_deref(),
                    Some(a_identity.as_str()),
                    "graceful_release_hands_over: while the work drained, the record changed holder"
                );
            }
        }
    }
    let stops = stops.lock().unwrap_or_else(PoisonError::into_inner).clone();
    assert!(
        matches!(stops.as_slice(), [(_, StopReason::ShutDown)]),
        "graceful_release_hands_over: on_stopped_leading must report ShutDown once, got {stops:?}"
    );
    assert_terms_disjoint("graceful_release_hands_over", &terms);
}

/// A leader dropped without releasing (its `run` task aborted, as in a crash) is taken over
/// by a follower no sooner than `L` after its last successful renewal was sent (safety), and
/// no later than `3 × L` after the crash (liveness).
///
/// # Panics
///
/// When a property is broken.
pub async fn crashed_leader_is_taken_over_after_expiry<H: Harness>(h: &H) {
    const CHECK: &str = "crashed_leader_is_taken_over_after_expiry";
    let t = h.timings();
    let name = unique("crash");
    let log = TermLog::default();
    let a = spawn_candidate(
        h.store().await,
        &name,
        format!("{name}-a"),
        &t,
        &log,
        Duration::ZERO,
    );
    let a_term = a
        .handle
        .leading()
        .await
        .unwrap_or_else(|| panic!("{CHECK}: the first elector stopped without leading"));
    let b = spawn_candidate(
        h.store().await,
        &name,
        format!("{name}-b"),
        &t,
        &log,
        Duration::ZERO,
    );
    wait_following(&b.handle, &a.identity, t.lease_duration, CHECK).await;
    wait_renewal(&a_term, t.lease_duration, CHECK).await;

    let crash = Instant::now();
    a.task.abort();
    let _ = a.task.await;
    assert!(
        a_term.is_cancelled(),
        "{CHECK}: dropping `run` did not cancel the term"
    );
    let last_renew_sent = a_term.valid_until() - t.renew_deadline;

    let bound = t.lease_duration * 3;
    let b_term = match timeout(bound, b.handle.leading()).await {
        Ok(Some(term)) => term,
        Ok(None) => panic!("{CHECK}: the follower stopped"),
        Err(_) => panic!("{CHECK}: no takeover within {bound:?} of the crash"),
    };
    let takeover = b_term.started_at();
    assert!(
        takeover >= last_renew_sent + t.lease_duration,
        "{CHECK}: the follower took over {:?} after the crashed leader's last renewal was sent, \
         before the lease of {:?} expired",
        takeover - last_renew_sent,
        t.lease_duration
    );
    assert!(
        takeover <= crash + bound,
        "{CHECK}: the takeover came {:?} after the crash",
        takeover - crash
    );
    assert!(
        b_term.fencing_token() > a_term.fencing_token(),
        "{CHECK}: the new term's fencing token did not increase"
    );
    b.shutdown.cancel();
    join_ok(b, t.lease_duration, CHECK).await;
    assert_terms_disjoint(CHECK, &log.terms());
}

/// A leader whose store becomes unreachable (partitioned through
/// [`FaultyStore`]) cancels its term no later than its renew
/// deadline (`valid_until` + slack), reports `Lost(RenewDeadlineExceeded)`, and keeps
/// campaigning; a follower on an unfaulted handle takes over only after the lease expired (no
/// sooner than `L` after the last successful renewal was sent), after the old term ended. Once
/// healed, the old leader follows the new one.
///
/// # Panics
///
/// When a property is broken.
pub async fn partitioned_leader_steps_down<H: Harness>(h: &H) {
    const CHECK: &str = "partitioned_leader_steps_down";
    let t = h.timings();
    let name = unique("partition");
    let log = TermLog::default();
    let (faults, a, a_term, b) = faulty_leader_and_follower(h, &t, &name, &log, CHECK).await;
    wait_renewal(&a_term, t.lease_duration, CHECK).await;

    let partitioned_at = Instant::now();
    faults.partition();
    let bound = t.renew_deadline + t.lease_duration;
    if timeout(bound, a_term.cancelled()).await.is_err() {
        panic!("{CHECK}: the partitioned leader still led {bound:?} after the partition");
    }
    let cancelled_at = Instant::now();
    let valid_until = a_term.valid_until();
    assert!(
        valid_until <= partitioned_at + t.renew_deadline,
        "{CHECK}: a renewal succeeded during the partition"
    );
    assert!(
        cancelled_at <= valid_until + t.slack,
        "{CHECK}: the term was cancelled {:?} after valid_until (renew deadline {:?})",
        cancelled_at - valid_until,
        t.renew_deadline
    );

    let b_term = match timeout(t.lease_duration * 3, b.handle.leading()).await {
        Ok(Some(term)) => term,
        Ok(None) => panic!("{CHECK}: the follower stopped"),
        Err(_) => panic!("{CHECK}: no takeover within 3 × L of the partition"),
    };
    let last_renew_sent = valid_until - t.renew_deadline;
    assert!(
        b_term.started_at() >= last_renew_sent + t.lease_duration,
        "{CHECK}: the follower took over {:?} after the leader's last renewal was sent, before \
         the lease of {:?} expired",
        b_term.started_at() - last_renew_sent,
        t.lease_duration
    );
    {
        let stops = a.stops.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(
            matches!(
                stops.first(),
                Some((
                    _,
                    StopReason::Lost(LostReason::RenewDeadlineExceeded { .. })
                ))
            ),
            "{CHECK}: on_stopped_leading must report Lost(RenewDeadlineExceeded), got {stops:?}"
        );
    }
    assert!(
        !a.task.is_finished(),
        "{CHECK}: the partitioned elector's run ended; it must keep campaigning"
    );

    faults.heal();
    wait_following(
        &a.handle,
        &b.identity,
        t.lease_duration * 3,
        &format!("{CHECK} (after healing)"),
    )
    .await;
    a.shutdown.cancel();
    b.shutdown.cancel();
    join_ok(a, t.lease_duration * 2, CHECK).await;
    join_ok(b, t.lease_duration * 2, CHECK).await;
    assert_terms_disjoint(CHECK, &log.terms());
}

/// Garbage written under a leader's name ends its term with `Lost(StoreError)` and `run`
/// returns the `Decode` error — with the store's watch and, again, with the watch hidden (the
/// elector then learns it through a refused renewal).
///
/// # Panics
///
/// When a property is broken.
pub async fn garbage_while_leading_ends_the_term<H: Harness>(h: &H) {
    garbage_while_leading(h, h.store().await, "watch").await;
    garbage_while_leading(h, NoWatch(h.store().await), "no watch").await;
}

async fn garbage_while_leading<H: Harness, S: LeaseStore + Clone>(h: &H, store: S, how: &str) {
    let check = format!("garbage_while_leading_ends_the_term ({how})");
    let t = h.timings();
    let name = unique("garbled");
    let log = TermLog::default();
    let a = spawn_candidate(store, &name, format!("{name}-a"), &t, &log, Duration::ZERO);
    let term = a
        .handle
        .leading()
        .await
        .unwrap_or_else(|| panic!("{check}: the elector stopped without leading"));
    wait_renewal(&term, t.lease_duration, &check).await;
    let garbled_at = Instant::now();
    h.write_garbage(&name).await;
    let bound = t.renew_deadline + t.slack;
    if timeout(bound, term.cancelled()).await.is_err() {
        panic!("{check}: the leader still led {bound:?} after its record was garbled");
    }
    let res = match timeout(t.lease_duration * 2, a.task).await {
        Ok(joined) => joined.unwrap_or_else(|e| panic!("{check}: run panicked: {e}")),
        Err(_) => panic!("{check}: run did not end after the record was garbled"),
    };
    assert!(
        matches!(res, Err(Error::Decode { .. })),
        "{check}: run must return the Decode error, got {res:?}"
    );
    let stops = a
        .stops
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    assert!(
        matches!(
            stops.as_slice(),
            [(_, StopReason::Lost(LostReason::StoreError { .. }))]
        ),
        "{check}: on_stopped_leading must report Lost(StoreError) once, got {stops:?} \
         ({:?} after the garbage was written)",
        stops
            .first()
            .map(|s| s.0.saturating_duration_since(garbled_at))
    );
}

/// Renewals whose responses are lost (the write landed, the caller saw a timeout, through
/// [`FaultyStore::faults`](crate::testing::FaultyStore)) do not end the term: the elector
/// notices its own write and keeps leading with the same fencing token, and a follower never
/// takes over.
///
/// # Panics
///
/// When a property is broken.
pub async fn lost_write_responses_keep_the_term<H: Harness>(h: &H) {
    const CHECK: &str = "lost_write_responses_keep_the_term";
    let t = h.timings();
    let name = unique("lostresp");
    let log = TermLog::default();
    let (faults, a, term, b) = faulty_leader_and_follower(h, &t, &name, &log, CHECK).await;
    for _ in 0..3 {
        wait_renewal(&term, t.lease_duration, CHECK).await;
        faults.lose_next_write_responses(1);
        // The lost renewal, then the one that succeeds again.
        wait_renewal(&term, t.lease_duration, CHECK).await;
        wait_renewal(&term, t.lease_duration, CHECK).await;
        assert!(
            !term.is_cancelled(),
            "{CHECK}: a lost renewal response ended the term"
        );
    }
    assert!(term.is_valid(), "{CHECK}: the term is no longer valid");
    assert!(
        !b.handle.is_leader(),
        "{CHECK}: the follower took over from a live leader"
    );
    a.shutdown.cancel();
    b.shutdown.cancel();
    join_ok(a, t.lease_duration * 2, CHECK).await;
    join_ok(b, t.lease_duration * 2, CHECK).await;
    assert_eq!(
        log.terms()
            .iter()
            .filter(|x| x.identity.ends_with("-a"))
            .count(),
        1,
        "{CHECK}: the leader's term was interrupted"
    );
}

/// Tokens never repeat, whatever happens to the record (the [`LeaseStore`] contract's
/// **Fencing tokens** rule):
///
/// - the record deleted behind the leader three times: every successor's token is above every
///   earlier one (followers that watched the old record remember it);
/// - on a store that claims [`Capabilities::durable_tokens`](crate::Capabilities): a process
///   that never saw any earlier term, started after the record was deleted, still starts above
///   them; and at the store level, a record created after a delete starts above the deleted
///   one's token. Other stores skip these (said on stderr).
///
/// # Panics
///
/// When a token repeats or goes backwards.
pub async fn tokens_survive_deletion<H: Harness>(h: &H) {
    const CHECK: &str = "tokens_survive_deletion";
    let t = h.timings();
    let name = unique("deleted");
    let log = TermLog::default();
    let mut since = Instant::now();
    let mut slots = Vec::new();
    for i in 0..2 {
        slots.push(spawn_candidate(
            h.store().await,
            &name,
            format!("{name}-c{i}"),
            &t,
            &log,
            Duration::ZERO,
        ));
    }
    let raw = h.store().await;
    let mut tokens = Vec::new();
    for round in 0..4 {
        let term = started_after(&slots, since, t.lease_duration * 4, CHECK).await;
        tokens.push(term.fencing_token());
        assert!(
            tokens.windows(2).all(|w| w[0] < w[1]),
            "{CHECK}: after {round} deletions behind the leader, tokens ran {tokens:?}"
        );
        if round == 3 {
            break;
        }
        wait_renewal(&term, t.lease_duration, CHECK).await;
        let version = match raw.get(&name).await {
            Ok(Some(s)) => s.version,
            other => panic!("{CHECK}: reading the leader's record: {other:?}"),
        };
        since = Instant::now();
        match raw.delete(&name, &version).await {
            Ok(()) => {}
            Err(Error::Unsupported { .. }) => {
                eprintln!(
                    "conformance::{CHECK}: {} cannot delete; skipped",
                    raw.kind()
                );
                for c in &slots {
                    c.shutdown.cancel();
                }
                for c in slots {
                    join_ok(c, t.lease_duration * 3, CHECK).await;
                }
                return;
            }
            // The leader renewed in between: delete the renewed version.
            Err(e) if e.is_conflict() => {
                let v = match raw.get(&name).await {
                    Ok(Some(s)) => s.version,
                    other => panic!("{CHECK}: re-reading the leader's record: {other:?}"),
                };
                if let Err(e) = raw.delete(&name, &v).await {
                    panic!("{CHECK}: deleting the leader's record: {e}");
                }
            }
            Err(e) => panic!("{CHECK}: deleting the leader's record: {e}"),
        }
        timeout(t.renew_deadline + t.slack * 2, term.cancelled())
            .await
            .unwrap_or_else(|_| {
                panic!("{CHECK}: the leader did not notice its record was deleted")
            });
    }
    for c in &slots {
        c.shutdown.cancel();
    }
    for c in slots {
        join_ok(c, t.lease_duration * 3, CHECK).await;
    }
    // No disjointness check here: deleting the record behind a leader lets a follower start a
    // term before the leader hears of it. That overlap is what the tokens are for.

    if !raw.capabilities().durable_tokens {
        eprintln!(
            "conformance::{CHECK}: {} does not claim durable tokens; skipped the fresh-process \
             and store-level checks",
            raw.kind()
        );
        return;
    }
    let highest = tokens.iter().copied().max().unwrap_or(0);
    // Everybody who saw the earlier terms is gone; the record goes too.
    if let Ok(Some(s)) = raw.get(&name).await {
        if let Err(e) = raw.delete(&name, &s.version).await {
            panic!("{CHECK}: deleting the vacated record: {e}");
        }
    }
    let fresh = spawn_candidate(
        h.store().await,
        &name,
        format!("{name}-fresh"),
        &t,
        &log,
        Duration::ZERO,
    );
    let term = fresh
        .handle
        .leading()
        .await
        .unwrap_or_else(|| panic!("{CHECK}: the fresh elector stopped without leading"));
    assert!(
        term.fencing_token() > highest,
        "{CHECK}: a fresh process after the deletion started at token {} after {highest}",
        term.fencing_token()
    );
    fresh.shutdown.cancel();
    join_ok(fresh, t.lease_duration * 3, CHECK).await;

    // The same at the store level, asking for a low token on purpose.
    let name = unique("deleted-raw");
    let v1 = ok(
        &name,
        "create",
        raw.put(&name, &rec("a", 1), PutMode::Create).await,
    );
    let first = match raw.get(&name).await {
        Ok(Some(s)) => s.record.transitions,
        other => panic!("{CHECK}: reading {name:?}: {other:?}"),
    };
    ok(&name, "delete", raw.delete(&name, &v1).await);
    ok(
        &name,
        "re-create",
        raw.put(&name, &rec("b", 1), PutMode::Create).await,
    );
    let second = match raw.get(&name).await {
        Ok(Some(s)) => s.record.transitions,
        other => panic!("{CHECK}: reading {name:?}: {other:?}"),
    };
    assert!(
        second > first,
        "{CHECK}: {name:?} re-created after a delete stored token {second} after {first}"
    );
}
