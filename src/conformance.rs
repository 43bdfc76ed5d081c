//! The conformance suite every [`LeaseStore`] must pass, against a real server.
//!
//! Describe the store under test with a [`Harness`], then let [`conformance_tests!`](crate::conformance_tests)
//! generate one `#[tokio::test]` per check:
//!
//! ```no_run
//! use tenure::conformance::{async_trait, Harness};
//! use tenure::MemoryStore;
//!
//! // One shared "server"; a real backend would open a connection per `store()` call.
//! #[derive(Default)]
//! struct Memory(MemoryStore);
//!
//! #[async_trait]
//! impl Harness for Memory {
//!     type Store = MemoryStore;
//!     async fn store(&self) -> MemoryStore {
//!         self.0.clone()
//!     }
//!     async fn write_garbage(&self, name: &str) {
//!         self.0.put_raw(name, &b"not a tenure record"[..]);
//!     }
//! }
//!
//! tenure::conformance_tests!(Memory::default());
//! # fn main() {}
//! ```
//!
//! The test crate needs `tokio` with the `macros` and `rt-multi-thread` features. Each check
//! is also a plain `pub async fn` taking `&impl Harness`, and [`run_all`] runs them all in turn.
//!
//! Every check uses names unique to its run (a random prefix), so checks can run concurrently
//! against one server and re-runs never collide with leftovers; the only exceptions are the few
//! fixed odd names of [`odd_names`] (`""`, `"."`, `".."`), which it handles whether or not a
//! record is already there.
//!
//! Checks assert orders and hard bounds that follow from the algorithm (a follower takes over
//! no sooner than `L` after the leader's last successful renewal was sent), and liveness bounds
//! with generous slack (`3 × L`). They never assert exact timings. A failing check panics with
//! a message naming the broken property.

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
use crate::store::{LeaseStore, PutMode, Version, WatchStream};
use crate::testing::FaultyStore;
use crate::{LeaderElector, LeaderHandle, LeaderState, LostReason, StopReason, Term};

mod locks;
pub use self::locks::{
    lock_backoff_bounds, lock_lost_mid_synchronize, lock_mutual_exclusion,
    lock_stale_holder_is_taken_over, lock_times_out, lock_work_error_passes_through,
    try_lock_never_blocks,
};

/// Re-exported so harnesses can implement [`Harness`] without naming the crate themselves.
pub use async_trait::async_trait;

/// The elector timings a backend runs the suite with.
///
/// The defaults (`L` = 1 s, `D` = 600 ms, `R` = 150 ms) suit a local server; raise them for a
/// server with slow writes (each must still satisfy
/// [`Config::validate`](crate::Config::validate)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// `L`, the lease duration.
    pub lease_duration: Duration,
    /// `D`, the renew deadline.
    pub renew_deadline: Duration,
    /// `R`, the retry period.
    pub retry_period: Duration,
    /// Tolerance for scheduling delays on a loaded machine, added to upper bounds that are
    /// otherwise exact (a leader steps down no later than its renew deadline + `slack`).
    pub slack: Duration,
    /// How soon a watch must yield after a put from another handle.
    pub watch_latency: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            lease_duration: Duration::from_millis(1000),
            renew_deadline: Duration::from_millis(600),
            retry_period: Duration::from_millis(150),
            slack: Duration::from_millis(300),
            watch_latency: Duration::from_secs(2),
        }
    }
}

impl Timings {
    /// These timings with `L` and `D` multiplied by `k` (`R` unchanged).
    #[must_use]
    pub fn scaled(self, k: u32) -> Self {
        Timings {
            lease_duration: self.lease_duration * k,
            renew_deadline: self.renew_deadline * k,
            ..self
        }
    }
}

/// The store under test, as each check needs it.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// The store type under test.
    type Store: LeaseStore + Clone;

    /// A store handle. Each call may open a new connection, as a separate process would; the
    /// electors of one check each get their own handle.
    async fn store(&self) -> Self::Store;

    /// Writes bytes that are not a tenure record under `name`, bypassing the store (raw
    /// backend access), so that `get` must fail with [`Error::Decode`].
    async fn write_garbage(&self, name: &str);

    /// Timings suited to this backend; see [`Timings::default`].
    fn timings(&self) -> Timings {
        Timings::default()
    }
}

/// Generates one `#[tokio::test]` per conformance check, each building its harness with the
/// given expression (which may `.await`).
///
/// ```ignore
/// tenure::conformance_tests!(MyHarness::connect().await);
/// ```
///
/// The calling crate needs `tokio` with the `macros` and `rt-multi-thread` features. Tests are
/// named after the checks, so a failure names the broken property.
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@each $harness;
            cas,
            names_are_isolated,
            odd_names,
            garbage_is_reported,
            watch_yields_after_a_put,
            electors_never_overlap,
            fencing_tokens_increase,
            graceful_release_hands_over,
            crashed_leader_is_taken_over_after_expiry,
            partitioned_leader_steps_down,
            garbage_while_leading_ends_the_term,
            lost_write_responses_keep_the_term,
            lock_mutual_exclusion,
            lock_lost_mid_synchronize,
            lock_work_error_passes_through,
            lock_times_out,
            lock_backoff_bounds,
            lock_stale_holder_is_taken_over,
            try_lock_never_blocks,
        );
    };
    (@each $harness:expr; $($check:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let harness = $harness;
                $crate::conformance::$check(&harness).await;
            }
        )*
    };
}

/// Runs every check in turn (the same ones [`conformance_tests!`](crate::conformance_tests) generates).
///
/// # Panics
///
/// On the first check that fails.
pub async fn run_all<H: Harness>(h: &H) {
    cas(h).await;
    names_are_isolated(h).await;
    odd_names(h).await;
    garbage_is_reported(h).await;
    watch_yields_after_a_put(h).await;
    electors_never_overlap(h).await;
    fencing_tokens_increase(h).await;
    graceful_release_hands_over(h).await;
    crashed_leader_is_taken_over_after_expiry(h).await;
    partitioned_leader_steps_down(h).await;
    garbage_while_leading_ends_the_term(h).await;
    lost_write_responses_keep_the_term(h).await;
    lock_mutual_exclusion(h).await;
    lock_lost_mid_synchronize(h).await;
    lock_work_error_passes_through(h).await;
    lock_times_out(h).await;
    lock_backoff_bounds(h).await;
    lock_stale_holder_is_taken_over(h).await;
    try_lock_never_blocks(h).await;
}

// ---------------------------------------------------------------------------------------------
// Store-level checks
// ---------------------------------------------------------------------------------------------

/// Compare-and-swap: create twice fails with `AlreadyExists`; an update with a stale version,
/// or of a missing record, fails with `Conflict`; every put returns a version never seen before
/// (also after delete and re-create); a get after a put sees it. If `delete` is `Unsupported`,
/// only the delete part is skipped (and said so on stderr).
///
/// # Panics
///
/// When the store breaks the contract.
pub async fn cas<H: Harness>(h: &H) {
    let s = h.store().await;
    let other = h.store().await;
    let name = unique("cas");
    let mut seen: HashSet<Version> = HashSet::new();
    let mut fresh = |v: &Version, what: &str| {
        assert!(
            seen.insert(v.clone()),
            "cas: {what} returned version {v}, which {name:?} already had",
            name = name
        );
    };

    assert!(
        ok(&name, "get of a missing record", s.get(&name).await).is_none(),
        "cas: get of a never-written name returned a record"
    );
    let missing = s
        .put(&name, &rec("a", 1), PutMode::Update(Version::new("1")))
        .await;
    assert_conflict(&name, "update of a missing record", missing);

    let r1 = rec("a", 1);
    let v1 = ok(&name, "create", s.put(&name, &r1, PutMode::Create).await);
    fresh(&v1, "create");
    let r1 = expect_created(&name, "get after create", &other, &r1, &v1).await;

    let again = s.put(&name, &rec("b", 1), PutMode::Create).await;
    assert!(
        matches!(again, Err(Error::AlreadyExists { .. })),
        "cas: a second create of {name:?} must fail with AlreadyExists, got {again:?}"
    );
    expect_record(&name, "get after a refused create", &s, &r1, &v1).await;

    let r2 = rec("a", 2);
    let v2 = ok(
        &name,
        "update",
        s.put(&name, &r2, PutMode::Update(v1.clone())).await,
    );
    fresh(&v2, "update");
    expect_record(&name, "get after update", &other, &r2, &v2).await;

    let stale = other
        .put(&name, &rec("c", 3), PutMode::Update(v1.clone()))
        .await;
    assert_conflict(&name, "update with a stale version", stale);
    let bogus = other
        .put(
            &name,
            &rec("c", 3),
            PutMode::Update(Version::new("no-such-version")),
        )
        .await;
    assert_conflict(&name, "update with a made-up version", bogus);
    expect_record(&name, "get after refused updates", &s, &r2, &v2).await;

    // The same record written twice still gets a new version.
    let v3 = ok(
        &name,
        "update",
        s.put(&name, &r2, PutMode::Update(v2.clone())).await,
    );
    fresh(&v3, "an update writing identical contents");
    expect_record(&name, "get after an identical update", &other, &r2, &v3).await;

    // A version of another name is not a version of this one.
    let name_b = format!("{name}-b");
    let vb = ok(
        &name_b,
        "create",
        s.put(&name_b, &rec("x", 1), PutMode::Create).await,
    );
    if vb != v3 {
        let cross = s
            .put(&name, &rec("x", 9), PutMode::Update(vb.clone()))
            .await;
        assert_conflict(&name, "update with another name's version", cross);
    }

    match s.delete(&name, &v2).await {
        Err(Error::Unsupported { .. }) => {
            eprintln!(
                "conformance::cas: {} does not support delete; skipped the delete checks",
                s.kind()
            );
            return;
        }
        r => assert_conflict(&name, "delete with a stale version", r),
    }
    ok(&name, "delete", s.delete(&name, &v3).await);
    assert!(
        ok(&name, "get after delete", other.get(&name).await).is_none(),
        "cas: get after delete of {name:?} still returned a record"
    );
    let after = s
        .put(&name, &rec("a", 4), PutMode::Update(v3.clone()))
        .await;
    assert_conflict(&name, "update after delete", after);
    let v4 = ok(
        &name,
        "create after delete",
        s.put(&name, &rec("d", 5), PutMode::Create).await,
    );
    fresh(&v4, "a create after delete");
    for old in [&v1, &v2, &v3] {
        let r = other
            .put(&name, &rec("e", 6), PutMode::Update(old.clone()))
            .await;
        assert_conflict(
            &name,
            &format!("update with version {old} from before the delete and re-create"),
            r,
        );
    }
    expect_created(&name, "get after re-create", &other, &rec("d", 5), &v4).await;
}

/// Names are isolated: writing one name (including prefixes and near-twins such as `a`,
/// `a/b`, `a.b`, `a_b`, `a-b`, `A`) never changes another. A name the store cannot hold may be
/// refused with `InvalidName` only.
///
/// # Panics
///
/// When the store breaks the contract.
pub async fn names_are_isolated<H: Harness>(h: &H) {
    let s = h.store().await;
    let base = unique("iso");
    let suffixes = ["", "/b", ".b", "_b", "-b", "b", "/b/c", "/", "B"];
    let names: Vec<String> = suffixes
        .iter()
        .map(|sfx| format!("{base}{sfx}"))
        .chain([base.to_uppercase()])
        .collect();
    // One write each, then one more write of every name, checking all others after each.
    let mut held: HashMap<String, (LeaseRecord, Version)> = HashMap::new();
    for round in 0..2u64 {
        for n in &names {
            let mut r = rec("iso", round + 1);
            r.value = Some(n.clone());
            let mode = match held.get(n) {
                None if round == 0 => PutMode::Create,
                None => continue, // refused as invalid in round 0
                Some((_, v)) => PutMode::Update(v.clone()),
            };
            let creating = mode == PutMode::Create;
            match s.put(n, &r, mode).await {
                Ok(v) => {
                    let r = if creating {
                        expect_created(n, "get after create", &s, &r, &v).await
                    } else {
                        r
                    };
                    held.insert(n.clone(), (r, v));
                }
                Err(Error::InvalidName { .. }) if round == 0 => continue,
                Err(e) => panic!(
                    "names_are_isolated: writing {n:?} failed with {e:?}: another name's write \
                     changed it, or the store cannot hold it (which must be InvalidName)"
                ),
            }
            for (m, (r, v)) in &held {
                expect_record(m, &format!("get after writing {n:?}"), &s, r, v).await;
            }
        }
    }
    assert!(
        held.contains_key(&base) && held.contains_key(&format!("{base}-b")),
        "names_are_isolated: plain names like {base:?} must be usable"
    );
}

/// Long (300 characters), unicode and odd names (spaces, `/`, `..`, `%`, a leading dot, the
/// empty name, ...) either round-trip exactly or fail with `InvalidName`: never another error,
/// never a collision between two distinct names.
///
/// # Panics
///
/// When the store breaks the contract.
pub async fn odd_names<H: Harness>(h: &H) {
    let s = h.store().await;
    let p = unique("odd");
    let mut names: Vec<String> = [
        String::new(),
        format!("{p}-{}", "x".repeat(300)),
        format!("{p}-选举-ø-🦀"),
        format!("{p} with spaces"),
        format!("{p}/slash"),
        format!("{p}//double"),
        format!("{p}/../up"),
        format!("{p}/./dot"),
        format!("{p}%2F"),
        format!("{p}%"),
        format!("{p}/"),
        format!("/{p}"),
        format!(".{p}"),
        format!("{p}\\back"),
        format!("{p}:colon"),
        format!("{p}*?\"<>|"),
        format!("{p}\ttab"),
        format!("{p}\nnewline"),
        format!("{p}.lease"),
        format!("{p}~"),
    ]
    .into();
    // Names nobody can make unique per run; written whatever is already there.
    names.extend([".", "..", "/", "%2e%2e"].map(String::from));
    let mut kept: Vec<(String, LeaseRecord, Version)> = Vec::new();
    let mut refused = Vec::new();
    for n in &names {
        let mut r = rec("odd", 1);
        r.value = Some(format!("{p}|{n}"));
        let mut created = false;
        let res = match s.get(n).await {
            Err(Error::InvalidName { .. }) => {
                refused.push(n.clone());
                continue;
            }
            Err(e) => {
                panic!("odd_names: get of {n:?} failed with {e:?}; only InvalidName is allowed")
            }
            Ok(None) => {
                created = true;
                s.put(n, &r, PutMode::Create).await
            }
            Ok(Some((old, v))) => {
                if let Some(hit) = kept.iter().find(|k| k.1.value == old.value) {
                    panic!(
                        "odd_names: {n:?} and {:?} collide: the first write shows under both",
                        hit.0
                    );
                }
                s.put(n, &r, PutMode::Update(v)).await
            }
        };
        match res {
            Ok(v) => {
                let r = if created {
                    expect_created(n, "get after create", &s, &r, &v).await
                } else {
                    r
                };
                kept.push((n.clone(), r, v));
            }
            Err(Error::InvalidName { .. }) => refused.push(n.clone()),
            Err(e) if e.is_conflict() => {
                panic!("odd_names: writing {n:?} conflicted ({e:?}): it collides with a name written before")
            }
            Err(e) => {
                panic!("odd_names: put of {n:?} failed with {e:?}; only InvalidName is allowed")
            }
        }
    }
    for (n, r, v) in &kept {
        expect_record(n, "get after writing every odd name (collision?)", &s, r, v).await;
    }
    assert!(
        !kept.is_empty(),
        "odd_names: the store refused every name, even {:?}",
        names.get(2)
    );
    if !refused.is_empty() {
        eprintln!(
            "conformance::odd_names: {} refused as InvalidName: {refused:?}",
            s.kind()
        );
    }
}

/// Garbage is reported, not repaired: after [`Harness::write_garbage`], `get` fails with
/// `Decode` naming the store and a key, `put` (create or update) does not overwrite it, and an
/// elector over that name never leads and ends `run` with the `Decode` error.
///
/// # Panics
///
/// When the store or the elector breaks the contract.
pub async fn garbage_is_reported<H: Harness>(h: &H) {
    let s = h.store().await;
    let t = h.timings();
    let name = unique("garbage");
    let v1 = ok(
        &name,
        "create",
        s.put(&name, &rec("a", 1), PutMode::Create).await,
    );
    h.write_garbage(&name).await;
    assert_decode(&s, &name, "get after write_garbage").await;

    let create = s.put(&name, &rec("b", 2), PutMode::Create).await;
    assert!(
        matches!(create, Err(Error::AlreadyExists { .. })),
        "garbage_is_reported: create over garbage must fail with AlreadyExists, got {create:?}"
    );
    for v in [
        v1.clone(),
        Version::new("0"),
        Version::new("1"),
        Version::new("garbage"),
    ] {
        let r = s.put(&name, &rec("b", 2), PutMode::Update(v.clone())).await;
        assert!(
            r.is_err(),
            "garbage_is_reported: update with version {v} overwrote the garbage under {name:?}"
        );
        assert_decode(&s, &name, &format!("get after an update with version {v}")).await;
    }

    // An elector over garbage never leads and ends `run` with the Decode error.
    let log = TermLog::default();
    let c = spawn_candidate(
        s.clone(),
        &name,
        format!("{name}-e"),
        &t,
        &log,
        Duration::ZERO,
    );
    let bound = t.lease_duration * 3;
    let res = match timeout(bound, c.task).await {
        Ok(joined) => joined.unwrap_or_else(|e| panic!("garbage_is_reported: run panicked: {e}")),
        Err(_) => panic!(
            "garbage_is_reported: an elector over garbage kept running for {bound:?}; `run` must \
             end with the Decode error"
        ),
    };
    assert!(
        matches!(res, Err(Error::Decode { .. })),
        "garbage_is_reported: run over garbage must return the Decode error, got {res:?}"
    );
    assert!(
        log.terms().is_empty(),
        "garbage_is_reported: an elector over garbage became leader"
    );
    assert_decode(&s, &name, "get after the elector gave up").await;
}

/// Watch (only if the store supports it): yields within [`Timings::watch_latency`] after a put
/// from another store handle, for a create and for an update.
///
/// # Panics
///
/// When the store breaks the contract.
pub async fn watch_yields_after_a_put<H: Harness>(h: &H) {
    let s = h.store().await;
    let writer = h.store().await;
    let name = unique("watch");
    let Some(mut w) = s.watch(&name) else {
        eprintln!(
            "conformance::watch_yields_after_a_put: {} cannot watch; skipped",
            s.kind()
        );
        return;
    };
    let bound = h.timings().watch_latency;
    // Let the subscription settle: a watch may only see changes after it is established.
    sleep(Duration::from_millis(100)).await;
    let v = ok(
        &name,
        "create",
        writer.put(&name, &rec("a", 1), PutMode::Create).await,
    );
    await_watch(&mut w, bound, "a create").await;
    // Drain spurious or duplicate events, then expect one for the update.
    while timeout(Duration::from_millis(100), w.next()).await.is_ok() {}
    ok(
        &name,
        "update",
        writer.put(&name, &rec("a", 2), PutMode::Update(v)).await,
    );
    await_watch(&mut w, bound, "an update").await;
}

// ---------------------------------------------------------------------------------------------
// Election checks
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A leader `<name>-a` on a [`FaultyStore`] over its own handle, and a follower `<name>-b` on a
/// plain handle that already follows it.
async fn faulty_leader_and_follower<H: Harness>(
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
fn unique(tag: &str) -> String {
    let r: u32 = rand::thread_rng().gen();
    format!("tc-{tag}-{r:08x}")
}

/// A record with whole-second times and lease, which every store represents exactly enough.
fn rec(holder: &str, transitions: u64) -> LeaseRecord {
    LeaseRecord::held_by(holder, Duration::from_secs(7), transitions)
}

fn ok<T>(name: &str, what: &str, r: Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{what} of {name:?} failed: {e:?}"))
}

fn assert_conflict<T: fmt::Debug>(name: &str, what: &str, r: Result<T>) {
    assert!(
        matches!(r, Err(Error::Conflict { .. })),
        "{what} of {name:?} must fail with Conflict, got {r:?}"
    );
}

async fn expect_record<S: LeaseStore>(
    name: &str,
    what: &str,
    s: &S,
    want: &LeaseRecord,
    v: &Version,
) {
    let got = ok(name, what, s.get(name).await);
    let Some((r, gv)) = got else {
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

/// After `put(Create)`: like [`expect_record`], except that the store may have raised
/// `transitions` (never lowered it; see the [`LeaseStore`] contract). Returns the record as
/// stored.
async fn expect_created<S: LeaseStore>(
    name: &str,
    what: &str,
    s: &S,
    want: &LeaseRecord,
    v: &Version,
) -> LeaseRecord {
    let got = ok(name, what, s.get(name).await);
    let Some((r, _)) = got else {
        panic!("{what}: {name:?} has no record, expected {want:?}");
    };
    assert!(
        r.transitions >= want.transitions,
        "{what}: {name:?} was created with transitions {} but holds {}: a store may raise the \
         fencing token on create, never lower it",
        want.transitions,
        r.transitions
    );
    let mut stored = want.clone();
    stored.transitions = r.transitions;
    expect_record(name, what, s, &stored, v).await;
    stored
}

async fn assert_decode<S: LeaseStore>(s: &S, name: &str, what: &str) {
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

async fn await_watch(w: &mut WatchStream, bound: Duration, what: &str) {
    match timeout(bound, w.next()).await {
        Ok(Some(Ok(()))) => {}
        Ok(Some(Err(e))) => {
            panic!("watch_yields_after_a_put: the watch failed after {what}: {e:?}")
        }
        Ok(None) => panic!("watch_yields_after_a_put: the watch ended after {what}"),
        Err(_) => panic!("watch_yields_after_a_put: no event within {bound:?} after {what}"),
    }
}

/// One term as seen by its work.
#[derive(Debug, Clone)]
struct TermEntry {
    identity: String,
    token: u64,
    /// When `on_started_leading` was called.
    started: Instant,
    /// When the work ended (its future completed or was dropped).
    ended: Option<Instant>,
}

#[derive(Clone, Default)]
struct TermLog(Arc<Mutex<Vec<TermEntry>>>);

impl TermLog {
    fn with<T>(&self, f: impl FnOnce(&mut Vec<TermEntry>) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
    fn start(&self, term: &Term) -> usize {
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
    fn terms(&self) -> Vec<TermEntry> {
        self.with(|v| v.clone())
    }
}

/// Marks a term's work ended when dropped: on completion or when its task is aborted.
struct EndGuard(TermLog, usize);

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

type Stops = Arc<Mutex<Vec<(Instant, StopReason)>>>;

struct Candidate<S> {
    identity: String,
    store: S,
    handle: LeaderHandle,
    shutdown: CancellationToken,
    task: JoinHandle<Result<()>>,
    stops: Stops,
}

/// Starts an elector whose work logs its term and, once cancelled, drains for `drain`.
fn spawn_candidate<S: LeaseStore + Clone>(
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

async fn join_ok<S>(c: Candidate<S>, bound: Duration, check: &str) {
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
async fn wait_for_leader<S>(
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

async fn wait_following(handle: &LeaderHandle, leader: &str, bound: Duration, check: &str) {
    let mut rx = handle.state();
    let seen = timeout(bound, rx.wait_for(|s| s.leader_identity() == Some(leader))).await;
    assert!(
        matches!(seen, Ok(Ok(_))),
        "{check}: {} did not observe {leader} leading within {bound:?}",
        handle.identity()
    );
}

/// Waits until the term's `valid_until` moves: a renewal succeeded just now.
async fn wait_renewal(term: &Term, bound: Duration, check: &str) {
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

fn assert_terms_disjoint(check: &str, terms: &[TermEntry]) {
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
struct Sample {
    /// Just after the read returned.
    after: Instant,
    seen: std::result::Result<Option<LeaseRecord>, String>,
    version: Option<Version>,
}

struct Observer {
    stop: CancellationToken,
    task: JoinHandle<Vec<Sample>>,
}

impl Observer {
    /// Polls the record every few milliseconds, keeping each change.
    fn spawn<S: LeaseStore>(store: S, name: &str) -> Self {
        let stop = CancellationToken::new();
        let stop2 = stop.clone();
        let name = name.to_owned();
        let task = tokio::spawn(async move {
            let mut samples: Vec<Sample> = Vec::new();
            while !stop2.is_cancelled() {
                let r = timeout(Duration::from_secs(5), store.get(&name)).await;
                let after = Instant::now();
                let (seen, version) = match r {
                    Ok(Ok(Some((rec, v)))) => (Ok(Some(rec)), Some(v)),
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

    async fn stop(self) -> Vec<Sample> {
        self.stop.cancel();
        self.task
            .await
            .unwrap_or_else(|e| panic!("the observer panicked: {e}"))
    }
}

fn assert_observations_consistent(check: &str, samples: &[Sample]) {
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
struct Write {
    sent: Instant,
    holder: Option<String>,
}

#[derive(Clone, Default)]
struct Writes(Arc<Mutex<Vec<Write>>>);

impl Writes {
    fn all(&self) -> Vec<Write> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Logs every put's send time and holder.
#[derive(Clone)]
struct Recording<S> {
    inner: S,
    writes: Writes,
}

#[async_trait]
impl<S: LeaseStore> LeaseStore for Recording<S> {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    async fn get(&self, name: &str) -> Result<Option<(LeaseRecord, Version)>> {
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
}

/// Hides the store's watch, so electors poll.
#[derive(Clone)]
struct NoWatch<S>(S);

#[async_trait]
impl<S: LeaseStore> LeaseStore for NoWatch<S> {
    fn kind(&self) -> &'static str {
        self.0.kind()
    }
    async fn get(&self, name: &str) -> Result<Option<(LeaseRecord, Version)>> {
        self.0.get(name).await
    }
    async fn put(&self, name: &str, record: &LeaseRecord, mode: PutMode) -> Result<Version> {
        self.0.put(name, record, mode).await
    }
    async fn delete(&self, name: &str, version: &Version) -> Result<()> {
        self.0.delete(name, version).await
    }
}
