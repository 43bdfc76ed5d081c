//! [`Term`]: one period of leadership, with its cancellation token and fencing token.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// One term of leadership, handed to `on_started_leading`.
///
/// ```
/// # async fn work(term: tenure::Term) {
/// loop {
///     tokio::select! {
///         _ = term.cancelled() => break,          // lost, released or shutting down
///         _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {
///             // Pass the fencing token to every side effect so a store can refuse a
///             // stale leader's write.
///             println!("working under fencing token {}", term.fencing_token());
///         }
///     }
/// }
/// # }
/// ```
///
/// The token is cancelled the moment the term ends: at once when leadership is lost, first
/// thing on shutdown (the elector keeps renewing while the work drains, then releases).
/// Cloning a `Term` is cheap; all clones share one token.
#[derive(Clone)]
pub struct Term {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    identity: String,
    fencing_token: u64,
    started_at: Instant,
    token: CancellationToken,
    valid_until: Mutex<Instant>,
    renew_failures: AtomicU32,
    stop_reason: Mutex<Option<StopReason>>,
}

impl Term {
    pub(crate) fn new(
        name: &str,
        identity: &str,
        fencing_token: u64,
        started_at: Instant,
        valid_until: Instant,
    ) -> Self {
        Term {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                identity: identity.to_owned(),
                fencing_token,
                started_at,
                token: CancellationToken::new(),
                valid_until: Mutex::new(valid_until),
                renew_failures: AtomicU32::new(0),
                stop_reason: Mutex::new(None),
            }),
        }
    }

    /// The election name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// This elector's identity, as written in the record.
    pub fn identity(&self) -> &str {
        &self.inner.identity
    }

    /// A number strictly greater than that of every earlier term of this election.
    ///
    /// Hand it to the systems the leader writes to and have them reject writes carrying a
    /// smaller token than one already seen: a deposed leader that has not noticed yet (a long GC
    /// pause, a partition) is then refused.
    pub fn fencing_token(&self) -> u64 {
        self.inner.fencing_token
    }

    /// When (on this process's monotonic clock) the term began.
    pub fn started_at(&self) -> Instant {
        self.inner.started_at
    }

    /// The local deadline by which the elector will have stepped down unless a renewal
    /// succeeds first: the send time of the last successful renewal plus the renew deadline.
    pub fn valid_until(&self) -> Instant {
        *self
            .inner
            .valid_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the term is still running and within [`valid_until`](Self::valid_until).
    pub fn is_valid(&self) -> bool {
        !self.is_cancelled() && Instant::now() < self.valid_until()
    }

    /// The token cancelled when the term ends. Pass clones to sub-tasks.
    pub fn token(&self) -> &CancellationToken {
        &self.inner.token
    }

    /// Resolves when the term ends. Cancellation safe.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.inner.token.cancelled()
    }

    /// Whether the term has ended.
    pub fn is_cancelled(&self) -> bool {
        self.inner.token.is_cancelled()
    }

    /// How many renewals in a row have failed (0 after a success).
    pub fn renew_failures(&self) -> u32 {
        self.inner.renew_failures.load(Ordering::Relaxed)
    }

    pub(crate) fn set_renew_failures(&self, n: u32) {
        self.inner.renew_failures.store(n, Ordering::Relaxed)
    }

    pub(crate) fn set_valid_until(&self, t: Instant) {
        *self
            .inner
            .valid_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = t;
    }

    /// Why the term ended, once it has (set just before the token is cancelled; `None` while
    /// it runs, or if the elector was dropped mid-term).
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.inner
            .stop_reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn end(&self) {
        self.inner.token.cancel();
    }

    /// Records why the term ends (the first reason wins), then cancels its token.
    pub(crate) fn end_with(&self, reason: StopReason) {
        {
            let mut r = self
                .inner
                .stop_reason
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if r.is_none() {
                *r = Some(reason);
            }
        }
        self.inner.token.cancel();
    }
}

impl fmt::Debug for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Term")
            .field("name", &self.inner.name)
            .field("identity", &self.inner.identity)
            .field("fencing_token", &self.inner.fencing_token)
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

/// Why a term ended, as told to `on_stopped_leading`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// Leadership was lost; the term's token was cancelled at once.
    Lost(LostReason),
    /// The work returned by itself; the lease was released.
    Released,
    /// Shutdown was requested: the work was drained and the lease released (unless
    /// `release_on_shutdown` is off).
    ShutDown,
}

/// Why leadership was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LostReason {
    /// No renewal succeeded for the renew deadline (store slow, unreachable or partitioned).
    RenewDeadlineExceeded {
        /// The last renewal error, if one was returned before the deadline.
        last_error: Option<String>,
    },
    /// The record now names another holder, another term, or nobody.
    TakenOver {
        /// The holder now recorded (`None`: vacated by somebody else).
        holder: Option<String>,
    },
    /// The record was deleted.
    Deleted,
    /// The store refused the renewal for good (permission revoked, record garbled).
    StoreError {
        /// The error, as text; `run` returns the error itself.
        error: String,
    },
}

impl std::fmt::Display for LostReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LostReason::RenewDeadlineExceeded {
                last_error: Some(e),
            } => {
                write!(
                    f,
                    "no renewal succeeded within the renew deadline (last error: {e})"
                )
            }
            LostReason::RenewDeadlineExceeded { last_error: None } => {
                f.write_str("no renewal succeeded within the renew deadline (store unreachable)")
            }
            LostReason::TakenOver { holder: Some(h) } => {
                write!(f, "taken by another holder, {h:?}")
            }
            LostReason::TakenOver { holder: None } => f.write_str("vacated by somebody else"),
            LostReason::Deleted => f.write_str("the record was deleted"),
            LostReason::StoreError { error } => write!(f, "the store refused the renewal: {error}"),
        }
    }
}
