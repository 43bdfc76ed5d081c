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

use std::time::Duration;

use crate::store::LeaseStore;

mod election;
mod locks;
mod store;
mod support;
pub use self::election::{
    crashed_leader_is_taken_over_after_expiry, electors_never_overlap, fencing_tokens_increase,
    garbage_while_leading_ends_the_term, graceful_release_hands_over,
    lost_write_responses_keep_the_term, partitioned_leader_steps_down, tokens_survive_deletion,
};
pub use self::locks::{
    lock_backoff_bounds, lock_lost_mid_synchronize, lock_mutual_exclusion,
    lock_stale_holder_is_taken_over, lock_times_out, lock_work_error_passes_through,
    try_lock_never_blocks, try_lock_takes_over_a_dead_holder,
};
pub use self::store::{
    cas, garbage_is_reported, names_are_isolated, odd_names, oversized_records_are_refused,
    watch_reports_writes_in_order, watch_yields_after_a_put,
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
    /// backend access), so that `get` must fail with [`Error::Decode`](crate::Error::Decode).
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
            oversized_records_are_refused,
            watch_yields_after_a_put,
            watch_reports_writes_in_order,
            electors_never_overlap,
            fencing_tokens_increase,
            tokens_survive_deletion,
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
            try_lock_takes_over_a_dead_holder,
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
    oversized_records_are_refused(h).await;
    watch_yields_after_a_put(h).await;
    watch_reports_writes_in_order(h).await;
    electors_never_overlap(h).await;
    fencing_tokens_increase(h).await;
    tokens_survive_deletion(h).await;
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
    try_lock_takes_over_a_dead_holder(h).await;
}
