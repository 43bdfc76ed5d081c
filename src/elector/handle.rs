//! [`LeaderHandle`] and [`LeaderState`]: what any task may ask about the election.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;

use crate::term::Term;

/// Who leads an election, as observed by one elector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// The holder's identity.
    pub identity: String,
    /// The value the holder published, if any (for example its address).
    pub value: Option<String>,
    /// The holder's term number (fencing token).
    pub fencing_token: u64,
}

/// The state of one elector, published on a `tokio::sync::watch` channel.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum LeaderState {
    /// Nothing observed yet (starting, or the store cannot be read).
    Unknown,
    /// The lease exists but nobody holds it, or there is no record yet.
    Vacant,
    /// Somebody else leads.
    Following(Leader),
    /// We lead, in this term.
    Leading(Term),
}

impl LeaderState {
    /// Whether this state is `Leading` with a term that has not ended.
    pub fn is_leading(&self) -> bool {
        matches!(self, LeaderState::Leading(t) if !t.is_cancelled())
    }

    /// The leader's identity, ours included, if one is known.
    pub fn leader_identity(&self) -> Option<&str> {
        match self {
            LeaderState::Following(l) => Some(&l.identity),
            LeaderState::Leading(t) => Some(t.identity()),
            _ => None,
        }
    }

    pub(crate) fn same_as(&self, other: &LeaderState) -> bool {
        match (self, other) {
            (LeaderState::Unknown, LeaderState::Unknown) => true,
            (LeaderState::Vacant, LeaderState::Vacant) => true,
            (LeaderState::Following(a), LeaderState::Following(b)) => a == b,
            (LeaderState::Leading(a), LeaderState::Leading(b)) => {
                a.fencing_token() == b.fencing_token() && a.is_cancelled() == b.is_cancelled()
            }
            _ => false,
        }
    }
}

/// A cheap, cloneable view of an elector that any task can hold.
///
/// ```
/// # async fn demo(handle: tenure::LeaderHandle) {
/// if handle.is_leader() { /* ... */ }
/// let mut states = handle.state();
/// while states.changed().await.is_ok() {
///     println!("now: {:?}", states.borrow().leader_identity());
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct LeaderHandle {
    pub(crate) rx: watch::Receiver<LeaderState>,
    pub(crate) identity: Arc<str>,
}

impl LeaderHandle {
    /// This elector's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Whether this elector leads right now.
    pub fn is_leader(&self) -> bool {
        self.rx.borrow().is_leading()
    }

    /// The current state.
    pub fn current(&self) -> LeaderState {
        self.rx.borrow().clone()
    }

    /// A receiver of every state change.
    pub fn state(&self) -> watch::Receiver<LeaderState> {
        self.rx.clone()
    }

    /// Resolves when the current term ends (at once if this elector does not lead now).
    ///
    /// The future is `Send + Sync + 'static`, so it plugs straight into kube-runtime's
    /// `Controller::graceful_shutdown_on`.
    pub fn leadership_lost(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let token = match &*self.rx.borrow() {
            LeaderState::Leading(t) => Some(t.token().clone()),
            _ => None,
        };
        async move {
            if let Some(t) = token {
                t.cancelled_owned().await
            }
        }
    }

    /// Waits until this elector leads and returns the term; `None` if the elector stopped.
    pub async fn leading(&self) -> Option<Term> {
        let mut rx = self.rx.clone();
        loop {
            if let LeaderState::Leading(t) = &*rx.borrow_and_update() {
                if !t.is_cancelled() {
                    return Some(t.clone());
                }
            }
            rx.changed().await.ok()?;
        }
    }
}
