//! [`Observer`]: a hook that sees what an elector does, for metrics and logs.

use std::time::Duration;

use crate::elector::handle::Leader;
use crate::error::Error;
use crate::term::StopReason;

/// Sees what a [`LeaderElector`](crate::LeaderElector) does: campaigns, terms, renewals, failed
/// store calls and changes of leader. Set one with
/// [`Builder::observer`](crate::Builder::observer); `tenure::metrics::Metrics` (feature
/// `metrics`) is one.
///
/// Every method has an empty default, so an observer implements only what it needs. The
/// elector calls them inline, from its own task, at the moment the thing happens: keep them
/// cheap and never block (update an atomic, send on a channel). `election` is the election's
/// name, so one observer can serve many electors.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tenure::{LeaderElector, MemoryStore, Observer};
///
/// #[derive(Default)]
/// struct Terms(AtomicU64);
///
/// impl Observer for Terms {
///     fn term_started(&self, _election: &str, _identity: &str, _fencing_token: u64) {
///         self.0.fetch_add(1, Ordering::Relaxed);
///     }
/// }
///
/// let terms = Arc::new(Terms::default());
/// let elector = LeaderElector::builder(MemoryStore::new(), "billing")
///     .observer(terms.clone())
///     .build()
///     .unwrap();
/// # let _ = elector;
/// ```
pub trait Observer: Send + Sync + 'static {
    /// A campaign began: the elector will follow and try to take the lease (at start, and
    /// again after each term when it re-campaigns). Not called by
    /// [`observe`](crate::LeaderElector::observe).
    fn campaign_started(&self, election: &str, identity: &str) {
        let _ = (election, identity);
    }

    /// This elector won the lease: a term with `fencing_token` starts now.
    fn term_started(&self, election: &str, identity: &str, fencing_token: u64) {
        let _ = (election, identity, fencing_token);
    }

    /// This elector's term ended, after `duration` (from the winning write to the end), for
    /// `reason`.
    fn term_ended(&self, election: &str, reason: &StopReason, duration: Duration) {
        let _ = (election, reason, duration);
    }

    /// A renewal finished after `latency`: `Ok` if it was written, else the store's error
    /// (see [`error_kind`] for a label).
    fn renewal(&self, election: &str, latency: Duration, outcome: Result<(), &Error>) {
        let _ = (election, latency, outcome);
    }

    /// A store call failed. `operation` is what the elector was doing: `"read"`,
    /// `"acquire"`, `"renew"`, `"release"` or `"watch"`. Losing a race to acquire (somebody
    /// else wrote first) is not a failure and is not reported.
    fn store_error(&self, election: &str, operation: &'static str, error: &Error) {
        let _ = (election, operation, error);
    }

    /// The leader changed as this elector sees it — to another holder, to this elector, or to
    /// nobody (`None`) — the same changes `on_new_leader` gets.
    ///
    /// `gap` is how long the election was leaderless by this elector's clock before the new
    /// leader was seen: from the moment the vacancy was first seen, or from the previous
    /// holder's lease expiry by this elector's observation (zero when the new leader came
    /// first). It is `None` for the first observation, and for changes to nobody.
    fn leader_changed(&self, election: &str, leader: Option<&Leader>, gap: Option<Duration>) {
        let _ = (election, leader, gap);
    }
}

/// The observer of an elector built without one.
pub(crate) struct NoObserver;

impl Observer for NoObserver {}

/// A short, stable name for the kind of `error`, for metric labels and logs: `"timeout"`,
/// `"unavailable"`, `"conflict"`, `"already_exists"`, `"permission_denied"`, `"decode"`,
/// `"invalid_name"`, `"too_large"`, `"fencing"`, `"rejected"`, `"unsupported"`, `"config"` or
/// `"backend"`.
pub fn error_kind(error: &Error) -> &'static str {
    match error {
        Error::Config { .. } => "config",
        Error::Conflict { .. } => "conflict",
        Error::AlreadyExists { .. } => "already_exists",
        Error::Timeout { .. } => "timeout",
        Error::PermissionDenied { .. } => "permission_denied",
        Error::Decode { .. } => "decode",
        Error::InvalidName { .. } => "invalid_name",
        Error::Unavailable { .. } => "unavailable",
        Error::Unsupported { .. } => "unsupported",
        Error::TooLarge { .. } => "too_large",
        Error::Fencing { .. } => "fencing",
        Error::Rejected { .. } => "rejected",
        Error::Backend { .. } => "backend",
    }
}
