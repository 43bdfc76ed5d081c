//! [`Mutex`]: a distributed lock over any [`LeaseStore`], with `synchronize`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tenure::lock::{LockError, Mutex};
//! use tenure::MemoryStore;
//!
//! let mutex = Mutex::builder(MemoryStore::new(), "nightly-report").build()?;
//! let rows = mutex
//!     .synchronize(None, |term| async move {
//!         // Only one holder at a time runs this, across processes and machines.
//!         // Stop when term.cancelled() fires; pass term.fencing_token() to side effects.
//!         Ok::<_, std::io::Error>(42)
//!     })
//!     .await;
//! match rows {
//!     Ok(n) => println!("wrote {n} rows"),
//!     Err(LockError::Work(e)) => println!("the report failed: {e}"),
//!     Err(LockError::Lost { reason, .. }) => println!("lost the lock mid-way: {reason}"),
//!     Err(other) => println!("could not run: {other}"),
//! }
//! # Ok(()) }
//! ```
//!
//! A lock is a one-shot election: holding it is leading, and the [`LeaderElector`]'s timing
//! machinery does the work — renewal every `R`, stepping down at the renew deadline `D`,
//! takeover of a dead holder's lock after a full lease `L` of no observed change,
//! compare-and-vacate on unlock. Nothing here re-implements it.

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::elector::{
    Backoff, Config, Leader, LeaderElector, LostReason, SharedHistory, StopReason, MAX_DURATION,
};
use crate::error::{with_timeout, Error};
use crate::store::LeaseStore;
use crate::term::Term;

/// What can go wrong with a lock; the work's own error is kept apart, unwrapped.
///
/// `E` is the error type of the work passed to [`Mutex::synchronize`]; elsewhere it is
/// [`Infallible`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError<E = Infallible> {
    /// The lock was lost while held (seed 000's `LostLockError`); the work was cancelled.
    #[error("lost the lock {name:?}: {reason}")]
    Lost {
        /// The lock's name.
        name: String,
        /// Why: taken by another holder, deleted, or the store unreachable past the deadline.
        reason: LostReason,
    },
    /// The work itself failed; its error, as it returned it.
    #[error("the work under lock failed: {0}")]
    Work(E),
    /// The lock could not be acquired within the timeout.
    #[error("timed out after {waited:?} waiting for the lock {name:?}")]
    Timeout {
        /// The lock's name.
        name: String,
        /// How long we waited.
        waited: Duration,
    },
    /// [`Mutex::try_lock`]: somebody else holds the lock.
    #[error("the lock {name:?} is held by {holder:?}")]
    WouldBlock {
        /// The lock's name.
        name: String,
        /// The current holder, if known.
        holder: Option<String>,
    },
    /// This `Mutex` instance already holds the lock (seed 001's `AlreadyLockedError`).
    #[error("this instance already holds the lock {name:?}")]
    AlreadyHeld {
        /// The lock's name.
        name: String,
    },
    /// This `Mutex` instance does not hold the lock (seed 001's `NotLockedError`).
    #[error("this instance does not hold the lock {name:?}")]
    NotHeld {
        /// The lock's name.
        name: String,
    },
    /// The lock is held but unhealthy (seed 001's `LockUnhealthyError`): renewals failing.
    #[error("the lock {name:?} is unhealthy: {renew_failures} renewals failed in a row")]
    Unhealthy {
        /// The lock's name.
        name: String,
        /// Consecutive failed renewals.
        renew_failures: u32,
    },
    /// The store failed (unreachable, permission denied, garbage record, ...).
    #[error("lock store error")]
    Store(#[source] Error),
}

impl LockError<Infallible> {
    /// The same error, typed for work that fails with `E`.
    pub fn widen<E>(self) -> LockError<E> {
        match self {
            LockError::Lost { name, reason } => LockError::Lost { name, reason },
            LockError::Work(never) => match never {},
            LockError::Timeout { name, waited } => LockError::Timeout { name, waited },
            LockError::WouldBlock { name, holder } => LockError::WouldBlock { name, holder },
            LockError::AlreadyHeld { name } => LockError::AlreadyHeld { name },
            LockError::NotHeld { name } => LockError::NotHeld { name },
            LockError::Unhealthy {
                name,
                renew_failures,
            } => LockError::Unhealthy {
                name,
                renew_failures,
            },
            LockError::Store(e) => LockError::Store(e),
        }
    }
}

/// `Result` with a [`LockError`].
pub type Result<T, E = Infallible> = std::result::Result<T, LockError<E>>;

/// Settings of a [`Mutex`]: the elector's timing plus the lock's own.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LockConfig {
    /// Identity, timing (`L`, `D`, `R`), backoff and value. The value stored with the lock
    /// defaults to the identity (seed 000 stores the hostname).
    pub elector: Config,
    /// Unhealthy after this many renewals in a row fail (seed 001's `max_refresh_fails`,
    /// default 3), or at the renew deadline, whichever comes first.
    pub max_refresh_fails: u32,
    /// When the lock is lost during `synchronize`, how long the work may run on after its
    /// token is cancelled before it is dropped. At most `L − D`; `None` (the default): 1 s
    /// (seed 000 kills its block at once; a short grace lets the work roll back), capped at
    /// `L − D`.
    ///
    /// Whatever the setting, the work never runs into another holder's time: after a loss at
    /// the renew deadline it is dropped by the earliest instant another holder may take over
    /// (the last good renewal plus `L`); after the lock was taken over or deleted (another
    /// holder may already run) it is dropped at once.
    pub lost_grace: Option<Duration>,
}

impl LockConfig {
    /// The grace given to work after a loss: [`lost_grace`](Self::lost_grace), or its default.
    pub fn effective_lost_grace(&self) -> Duration {
        let margin = self
            .elector
            .lease_duration
            .saturating_sub(self.elector.renew_deadline);
        self.lost_grace
            .unwrap_or_else(|| Duration::from_secs(1).min(margin))
    }
}

impl Default for LockConfig {
    fn default() -> Self {
        LockConfig {
            elector: Config::default().backoff(Backoff::default()),
            max_refresh_fails: 3,
            lost_grace: None,
        }
    }
}

/// Builds a [`Mutex`]; [`build`](Self::build) validates.
#[must_use]
pub struct MutexBuilder<S> {
    store: S,
    name: String,
    config: LockConfig,
}

impl<S: LeaseStore + Clone> MutexBuilder<S> {
    timing_setters!(config.elector);

    /// First wait between attempts (default 100 ms; seed 001's `backoff_min`).
    pub fn backoff_min(mut self, d: Duration) -> Self {
        self.backoff().min = d;
        self
    }
    /// Largest wait between attempts (default 5 s; seed 001's `backoff_max`).
    pub fn backoff_max(mut self, d: Duration) -> Self {
        self.backoff().max = d;
        self
    }
    /// Growth of the wait per attempt (default 1.5; seed 001's `backoff_multiplier`).
    pub fn backoff_multiplier(mut self, m: f64) -> Self {
        self.backoff().multiplier = m;
        self
    }
    /// See [`LockConfig::max_refresh_fails`].
    pub fn max_refresh_fails(mut self, n: u32) -> Self {
        self.config.max_refresh_fails = n;
        self
    }
    /// See [`LockConfig::lost_grace`].
    pub fn lost_grace(mut self, d: Duration) -> Self {
        self.config.lost_grace = Some(d);
        self
    }
    /// Replaces all settings.
    pub fn config(mut self, config: LockConfig) -> Self {
        self.config = config;
        self
    }

    fn backoff(&mut self) -> &mut Backoff {
        self.config
            .elector
            .backoff
            .get_or_insert_with(Backoff::default)
    }

    /// Validates ([`Config::validate`], plus `max_refresh_fails ≥ 1`) and builds.
    pub fn build(self) -> std::result::Result<Mutex<S>, Error> {
        if self.name.is_empty() {
            return Err(Error::config("the lock name must not be empty"));
        }
        self.config.elector.validate()?;
        self.store
            .capabilities()
            .check_retry_period(self.store.kind(), self.config.elector.retry_period)?;
        if self.config.max_refresh_fails == 0 {
            return Err(Error::config("max_refresh_fails must be at least 1"));
        }
        if let Some(grace) = self.config.lost_grace {
            let e = &self.config.elector;
            let margin = e.lease_duration.saturating_sub(e.renew_deadline);
            if grace > margin.min(MAX_DURATION) {
                return Err(Error::config(format!(
                    "lost_grace ({grace:?}) must be at most lease_duration − renew_deadline \
                     ({margin:?}): past that, another holder may already have taken the lock"
                )));
            }
        }
        Ok(Mutex {
            store: self.store,
            name: self.name,
            config: self.config,
            shared: Arc::default(),
        })
    }
}

/// A distributed mutual-exclusion lock named `name` in a [`LeaseStore`].
///
/// One `Mutex` value is one identity. Clones share it and its state: at most one [`Guard`]
/// exists among them, and a second `lock` on the same instance fails with
/// [`LockError::AlreadyHeld`] rather than letting two tasks believe they hold it. Tasks that
/// should contend with each other use separate `Mutex` values (each gets its own identity).
///
/// Cancellation safety: dropping a `lock` future stops waiting; if the lock was acquired in
/// that instant, it is released in the background.
#[derive(Clone)]
pub struct Mutex<S> {
    store: S,
    name: String,
    config: LockConfig,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Serializes acquisitions of this instance (one identity must not campaign twice).
    acquiring: tokio::sync::Mutex<()>,
    held: StdMutex<Option<Arc<Slot>>>,
    /// What this instance observed between acquisitions: repeated `try_lock`s count a dead
    /// holder's lease from the first sight, and tokens never repeat.
    history: SharedHistory,
}

impl Shared {
    fn held(&self) -> Option<Arc<Slot>> {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
    fn set(&self, slot: Option<Arc<Slot>>) {
        *self.held.lock().unwrap_or_else(PoisonError::into_inner) = slot;
    }
    /// Clears the slot if it is still `slot`.
    fn clear(&self, slot: &Arc<Slot>) -> bool {
        let mut g = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if g.as_ref().is_some_and(|s| Arc::ptr_eq(s, slot)) {
            *g = None;
            true
        } else {
            false
        }
    }
}

/// One holding of the lock: the term and the background task renewing it.
struct Slot {
    term: Term,
    shutdown: CancellationToken,
    task: StdMutex<Option<JoinHandle<crate::Result<()>>>>,
    max_refresh_fails: u32,
}

impl Slot {
    fn lost_reason(&self) -> Option<LostReason> {
        match self.term.stop_reason() {
            Some(StopReason::Lost(r)) => Some(r),
            _ => None,
        }
    }
    fn take_task(&self) -> Option<JoinHandle<crate::Result<()>>> {
        self.task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
    fn healthy(&self) -> bool {
        !self.term.is_cancelled()
            && self.term.renew_failures() < self.max_refresh_fails
            && Instant::now() < self.term.valid_until()
    }
}

impl<S: LeaseStore + Clone> Mutex<S> {
    /// Starts building a lock named `name` over `store`.
    pub fn builder(store: S, name: impl Into<String>) -> MutexBuilder<S> {
        MutexBuilder {
            store,
            name: name.into(),
            config: LockConfig::default(),
        }
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This instance's identity, as written in the store while it holds the lock.
    pub fn identity(&self) -> &str {
        &self.config.elector.identity
    }

    /// The settings.
    pub fn config(&self) -> &LockConfig {
        &self.config
    }

    /// The default acquisition timeout: twice the lease duration (seed 001).
    pub fn default_timeout(&self) -> Duration {
        self.config.elector.lease_duration * 2
    }

    /// Waits until the lock is held, or `timeout` (default: [`default_timeout`](Self::default_timeout))
    /// passes. A dead holder's lock is taken over once it has been seen unchanged for its
    /// lease duration.
    pub async fn lock(&self, timeout: Option<Duration>) -> Result<Guard> {
        let timeout = timeout.unwrap_or_else(|| self.default_timeout());
        let started = Instant::now();
        // A timeout too large to represent waits without limit.
        let deadline = started.checked_add(timeout).unwrap_or_else(far_future);
        let timed_out = || LockError::Timeout {
            name: self.name.clone(),
            waited: started.elapsed(),
        };
        let _acquiring = tokio::time::timeout_at(deadline, self.shared.acquiring.lock())
            .await
            .map_err(|_| timed_out())?;
        self.acquire(false, Some(deadline))
            .await
            .map_err(|e| match e {
                LockError::Timeout { .. } => timed_out(),
                e => e,
            })
    }

    /// One attempt: the lock if it is free — vacant, absent, or expired: unchanged for its
    /// lease duration since this instance first saw it (earlier calls count: the instance
    /// keeps its observation), or since it was written, on stores that report a record's age
    /// on one clock ([`Stored::age`](crate::Stored)) — else [`LockError::WouldBlock`] at once.
    /// Bounded by the store's call timeouts; never waits for a holder.
    pub async fn try_lock(&self) -> Result<Guard> {
        let Ok(_acquiring) = self.shared.acquiring.try_lock() else {
            return Err(LockError::WouldBlock {
                name: self.name.clone(),
                holder: Some(self.identity().to_owned()),
            });
        };
        self.acquire(true, None).await
    }

    async fn acquire(&self, single_attempt: bool, deadline: Option<Instant>) -> Result<Guard> {
        if self.shared.held().is_some() {
            return Err(LockError::AlreadyHeld {
                name: self.name.clone(),
            });
        }
        let mut cfg = self.config.elector.clone();
        cfg.recampaign = false;
        cfg.release_on_shutdown = true;
        cfg.single_attempt = single_attempt;
        if cfg.value.is_none() {
            cfg.value = Some(cfg.identity.clone());
        }
        let elector = LeaderElector::builder(self.store.clone(), self.name.clone())
            .config(cfg)
            .history(self.shared.history.clone())
            .build()
            .map_err(LockError::Store)?;
        let handle = elector.handle();
        let shutdown = CancellationToken::new();
        let (tx, rx) = oneshot::channel::<Term>();
        let tx = StdMutex::new(Some(tx));
        let sd = shutdown.clone();
        let mut task = tokio::spawn(async move {
            elector
                .run(sd.cancelled_owned(), move |term: Term| {
                    if let Some(tx) = tx.lock().unwrap_or_else(PoisonError::into_inner).take() {
                        let _ = tx.send(term.clone());
                    }
                    async move { term.cancelled().await }
                })
                .await
        });
        // Give up (and clean up) if this future is dropped while waiting.
        let cancel_on_drop = shutdown.clone().drop_guard();
        let sleep = tokio::time::sleep_until(deadline.unwrap_or_else(far_future));
        tokio::pin!(sleep);
        let ended_without_term =
            |res: std::result::Result<crate::Result<()>, tokio::task::JoinError>| match res {
                Ok(Err(e)) => LockError::Store(e),
                _ if single_attempt => LockError::WouldBlock {
                    name: self.name.clone(),
                    holder: handle.current().leader_identity().map(str::to_owned),
                },
                _ => LockError::Timeout {
                    name: self.name.clone(),
                    waited: Duration::ZERO,
                },
            };
        let outcome = tokio::select! {
            biased;
            term = rx => term.ok(),
            res = &mut task => {
                cancel_on_drop.disarm();
                return Err(ended_without_term(res));
            }
            _ = &mut sleep => None,
        };
        let Some(term) = outcome else {
            // Timed out, or the run ended without a term: stop campaigning (if the lock was
            // won in the same instant, the elector releases it before returning).
            drop(cancel_on_drop);
            return Err(ended_without_term(task.await));
        };
        cancel_on_drop.disarm();
        let slot = Arc::new(Slot {
            term,
            shutdown,
            task: StdMutex::new(Some(task)),
            max_refresh_fails: self.config.max_refresh_fails,
        });
        self.shared.set(Some(slot.clone()));
        Ok(Guard {
            name: self.name.clone(),
            shared: self.shared.clone(),
            slot,
        })
    }

    /// Acquires (waiting at most `timeout`), runs `work` with the term, releases, and returns
    /// the work's value.
    ///
    /// - If the lock is lost while the work runs, the term's token is cancelled at once, the
    ///   work gets [`LockConfig::lost_grace`] to wind down and is then dropped, and the call
    ///   returns [`LockError::Lost`] with the reason.
    /// - If the work fails, its error comes back as [`LockError::Work`], unchanged.
    /// - Acquisition failures are [`LockError::Timeout`], [`LockError::AlreadyHeld`] or
    ///   [`LockError::Store`].
    ///
    /// The work runs in the calling task; the lock is renewed by a background task meanwhile.
    pub async fn synchronize<T, E, F, Fut>(
        &self,
        timeout: Option<Duration>,
        work: F,
    ) -> Result<T, E>
    where
        F: FnOnce(Term) -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
    {
        let guard = self.lock(timeout).await.map_err(LockError::widen)?;
        let term = guard.term().clone();
        let fut = work(term.clone());
        tokio::pin!(fut);
        let done = tokio::select! {
            r = &mut fut => Some(r),
            _ = term.cancelled() => None,
        };
        match done {
            // Finished, but the lock was lost meanwhile: part of it ran unprotected.
            Some(_) if term.is_cancelled() => {
                let reason = guard.loss();
                drop(guard);
                Err(LockError::Lost {
                    name: self.name.clone(),
                    reason,
                })
            }
            Some(result) => {
                if let Err(e) = guard.unlock().await {
                    tracing::warn!(lock = %self.name, error = %e, "releasing after the work failed; the lock will expire");
                }
                result.map_err(LockError::Work)
            }
            None => {
                // Lost: the work saw its token cancelled; give it a bounded grace, then drop it.
                let _ = tokio::time::timeout_at(self.grace_until(&guard), &mut fut).await;
                let reason = guard.loss();
                drop(guard);
                Err(LockError::Lost {
                    name: self.name.clone(),
                    reason,
                })
            }
        }
    }

    /// When work that lost the lock must be dropped: see [`LockConfig::lost_grace`].
    fn grace_until(&self, guard: &Guard) -> Instant {
        let now = Instant::now();
        let e = &self.config.elector;
        let earliest_takeover = match guard.loss() {
            // Nobody may take over before our last good renewal plus L.
            LostReason::RenewDeadlineExceeded { .. } | LostReason::StoreError { .. } => guard
                .term()
                .valid_until()
                .checked_add(e.lease_duration.saturating_sub(e.renew_deadline))
                .unwrap_or(now),
            // Somebody else may hold it already.
            _ => now,
        };
        now.checked_add(self.config.effective_lost_grace())
            .unwrap_or(now)
            .min(earliest_takeover)
    }

    /// Whether this instance holds the lock, by its own state (seed 001's
    /// `locked_according_to_internal_state?`). Does not ask the store.
    pub fn is_held(&self) -> bool {
        self.shared.held().is_some_and(|s| !s.term.is_cancelled())
    }

    /// Who holds the lock according to the store, with the value they stored; `None` if
    /// nobody. Does not judge staleness: a crashed holder is listed until taken over.
    pub async fn holder(&self) -> std::result::Result<Option<Leader>, Error> {
        let t = self.config.elector.effective_call_timeout();
        let rec = with_timeout(
            self.store.kind(),
            "get",
            &self.name,
            t,
            self.store.get(&self.name),
        )
        .await?;
        Ok(rec.and_then(|s| {
            s.record.holder.map(|identity| Leader {
                identity,
                value: s.record.value,
                fencing_token: s.record.transitions,
            })
        }))
    }

    /// Whether somebody holds the lock according to the store (seed 001's
    /// `locked_according_to_server?`).
    pub async fn is_locked(&self) -> std::result::Result<bool, Error> {
        Ok(self.holder().await?.is_some())
    }

    /// Whether the store says this instance holds the lock, in the term it believes it holds
    /// (seed 001's `owned_according_to_server?`).
    pub async fn is_locked_by_me(&self) -> std::result::Result<bool, Error> {
        let Some(h) = self.holder().await? else {
            return Ok(false);
        };
        Ok(h.identity == self.identity()
            && self
                .shared
                .held()
                .is_none_or(|s| s.term.fencing_token() == h.fencing_token))
    }

    /// Whether the held lock is healthy: renewals are succeeding (fewer than
    /// `max_refresh_fails` failures in a row) and the renew deadline has not passed.
    pub fn healthy(&self) -> Result<bool> {
        match self.shared.held() {
            Some(s) => Ok(s.healthy()),
            None => Err(LockError::NotHeld {
                name: self.name.clone(),
            }),
        }
    }

    /// [`healthy`](Self::healthy) as an error: [`LockError::Unhealthy`] or
    /// [`LockError::NotHeld`].
    pub fn check_health(&self) -> Result<()> {
        match self.shared.held() {
            Some(s) if s.healthy() => Ok(()),
            Some(s) => Err(LockError::Unhealthy {
                name: self.name.clone(),
                renew_failures: s.term.renew_failures(),
            }),
            None => Err(LockError::NotHeld {
                name: self.name.clone(),
            }),
        }
    }

    /// Releases the lock this instance holds, wherever its guard is (seed 001's `unlock`):
    /// compare-and-vacate, never touching a lock somebody else now holds.
    pub async fn unlock(&self) -> Result<()> {
        let Some(slot) = self.shared.held() else {
            return Err(LockError::NotHeld {
                name: self.name.clone(),
            });
        };
        release(&self.name, &self.shared, &slot).await
    }

    /// Forgets the lock without touching the store (seed 001's `abandon`): renewals stop, the
    /// term is cancelled, and the record stays until it expires or is taken over.
    pub fn abandon(&self) {
        if let Some(slot) = self.shared.held() {
            abandon(&self.shared, &slot);
        }
    }
}

async fn release(name: &str, shared: &Shared, slot: &Arc<Slot>) -> Result<()> {
    shared.clear(slot);
    slot.shutdown.cancel();
    let res = match slot.take_task() {
        Some(task) => task.await,
        None => return Ok(()),
    };
    match res {
        Ok(Err(e)) => Err(LockError::Store(e)),
        _ => match slot.lost_reason() {
            Some(reason) => Err(LockError::Lost {
                name: name.to_owned(),
                reason,
            }),
            None => Ok(()),
        },
    }
}

fn abandon(shared: &Shared, slot: &Arc<Slot>) {
    shared.clear(slot);
    // Aborting the run drops it mid-term: it cancels the term and does not release.
    if let Some(task) = slot.take_task() {
        task.abort();
    }
    slot.term.end();
}

/// A held lock. Renewed in the background until [`unlock`](Self::unlock)ed or dropped
/// (dropping releases in the background; `unlock` waits for the release and reports it).
#[must_use = "the lock is released when the guard is dropped"]
pub struct Guard {
    name: String,
    shared: Arc<Shared>,
    slot: Arc<Slot>,
}

impl Guard {
    /// The term: its token is cancelled when the lock is lost or released; its fencing token
    /// increases with every acquisition of this lock.
    pub fn term(&self) -> &Term {
        &self.slot.term
    }

    /// The fencing token of this holding.
    pub fn fencing_token(&self) -> u64 {
        self.slot.term.fencing_token()
    }

    /// The cancellation token of this holding.
    pub fn token(&self) -> &CancellationToken {
        self.slot.term.token()
    }

    /// Whether renewals are succeeding and the renew deadline has not passed.
    pub fn healthy(&self) -> bool {
        self.slot.healthy()
    }

    /// [`healthy`](Self::healthy) as an error.
    pub fn check_health(&self) -> Result<()> {
        if self.slot.healthy() {
            Ok(())
        } else if let Some(reason) = self.slot.lost_reason() {
            Err(LockError::Lost {
                name: self.name.clone(),
                reason,
            })
        } else {
            Err(LockError::Unhealthy {
                name: self.name.clone(),
                renew_failures: self.slot.term.renew_failures(),
            })
        }
    }

    /// Why the lock was lost, if it was.
    pub fn lost_reason(&self) -> Option<LostReason> {
        self.slot.lost_reason()
    }

    /// Why the lock was lost; only called once the term is cancelled while held, which only
    /// a loss does (the reason is recorded before the token is cancelled).
    fn loss(&self) -> LostReason {
        self.slot
            .lost_reason()
            .unwrap_or(LostReason::RenewDeadlineExceeded { last_error: None })
    }

    /// Releases the lock (compare-and-vacate) and waits for it. [`LockError::Lost`] if it had
    /// been lost meanwhile.
    pub async fn unlock(self) -> Result<()> {
        // `release` clears the slot first, so the guard's own drop is then a no-op.
        release(&self.name, &self.shared, &self.slot).await
    }

    /// Forgets the lock without touching the store: renewals stop, the term is cancelled.
    pub fn abandon(self) {
        abandon(&self.shared, &self.slot);
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.shared.clear(&self.slot) {
            // Releases in the background: the elector drains (the work is done) and vacates.
            self.slot.shutdown.cancel();
        }
    }
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("name", &self.name)
            .field("term", &self.slot.term)
            .finish()
    }
}

fn far_future() -> Instant {
    crate::elector::state::add(Instant::now(), Duration::from_secs(100 * 365 * 24 * 3600))
}
