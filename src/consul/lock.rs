//! [`ConsulLock`]: Consul's own session lock (`api.Lock`, `consul lock`), from Rust.
//!
//! (Documented with the [`consul`](super) module.)

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::client::{Consul, KIND};
use super::session::{
    b64, clean_path, error_chain, escape_key, kv_read, next_index, refused, spawn_detached, txn,
    txn_op, Backoff, KvEntry, Read, Session, SessionEnd, SessionOptions, Txn,
};
use crate::error::Error;
use crate::lock::LockError;
use crate::term::{LostReason, StopReason, Term};

/// `api.LockFlagValue`: the flags of a key used as a lock.
pub const LOCK_FLAG_VALUE: u64 = 0x2ddc_cbc0_58a5_0c18;
/// `api.SemaphoreFlagValue`: the flags of a semaphore's keys.
pub const SEMAPHORE_FLAG_VALUE: u64 = 0xe0f6_9a2b_aa41_4de0;
/// `api.DefaultSemaphoreKey`: the key under the prefix that `consul lock` locks (and that
/// `api.Semaphore` keeps its holders in).
pub const DEFAULT_LOCK_KEY: &str = ".lock";
/// `api.DefaultLockWaitTime`: how long one blocking query waits for the holder to change.
pub const DEFAULT_LOCK_WAIT_TIME: Duration = Duration::from_secs(15);
/// Tenure's default wait before trying again when the lock was refused with no holder (a
/// lock-delay in effect) and the lock-delay's end is not known: 1 s (`api.Lock` waits 5 s,
/// `DefaultLockRetryTime`).
pub const DEFAULT_LOCK_RETRY_TIME: Duration = Duration::from_secs(1);
/// How long [`synchronize`](ConsulLock::synchronize)'s work may run on after a loss at the
/// renew deadline, by default (never past the session's TTL).
pub const DEFAULT_LOST_GRACE: Duration = Duration::from_secs(1);

/// `Result` of the session locks: [`LockError`], with the work's own error `E` kept apart.
pub type LockResult<T, E = std::convert::Infallible> = std::result::Result<T, LockError<E>>;

/// A key whose flags do not match its use (`api.ErrLockConflict`, `api.ErrSemaphoreConflict`):
/// a lock's key used by a semaphore, or the other way round, or foreign data. Left untouched.
/// Returned as the source of [`Error::Decode`] by `lock`, and as [`DestroyError::Conflict`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("existing key {key:?} does not match {expected_use} use: its flags are {flags:#x}{hint}, expected {expected:#x}")]
pub struct KeyConflict {
    /// The key.
    pub key: String,
    /// Its flags.
    pub flags: u64,
    /// The flags this use expects ([`LOCK_FLAG_VALUE`] or [`SEMAPHORE_FLAG_VALUE`]).
    pub expected: u64,
    expected_use: &'static str,
    hint: &'static str,
}

impl KeyConflict {
    pub(crate) fn new(key: &str, flags: u64, expected: u64) -> Self {
        KeyConflict {
            key: key.to_owned(),
            flags,
            expected,
            expected_use: if expected == LOCK_FLAG_VALUE {
                "lock"
            } else {
                "semaphore"
            },
            hint: match flags {
                LOCK_FLAG_VALUE => " (a lock's)",
                SEMAPHORE_FLAG_VALUE => " (a semaphore's)",
                _ => "",
            },
        }
    }

    pub(crate) fn into_error(self) -> Error {
        Error::Decode {
            store: KIND,
            key: self.key.clone(),
            source: Box::new(self),
        }
    }
}

/// Why [`ConsulLock::destroy`] (or [`ConsulSemaphore::destroy`](super::ConsulSemaphore::destroy))
/// refused: `api.Lock.Destroy`'s errors, typed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DestroyError {
    /// This instance holds it (`ErrLockHeld` / `ErrSemaphoreHeld`): release first.
    #[error("cannot destroy {key:?}: this instance holds it")]
    Held {
        /// The key.
        key: String,
    },
    /// Somebody holds it, or it changed meanwhile (`ErrLockInUse` / `ErrSemaphoreInUse`).
    #[error("cannot destroy {key:?}: it is in use{}", holder.as_deref().map(|h| format!(" by session {h}")).unwrap_or_default())]
    InUse {
        /// The key.
        key: String,
        /// The holding session, if known (a semaphore may have several: the first).
        holder: Option<String>,
    },
    /// The key's flags do not match (`ErrLockConflict` / `ErrSemaphoreConflict`).
    #[error(transparent)]
    Conflict(KeyConflict),
    /// Consul failed.
    #[error("consul error destroying a lock")]
    Store(#[source] Error),
}

/// Who holds a lock, as Consul says.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockHolder {
    /// The holding session's ID.
    pub session: String,
    /// The value stored with the lock.
    pub value: Vec<u8>,
    /// The key's `LockIndex`: how many times it was locked since it was created.
    pub lock_index: u64,
    /// The key's `ModifyIndex`.
    pub modify_index: u64,
}

/// How an acquisition waits.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Mode {
    /// Until the deadline (`None`: without limit).
    Wait(Option<Instant>),
    /// One look.
    Try,
}

impl Mode {
    pub(crate) fn from_timeout(timeout: Option<Duration>) -> Mode {
        Mode::Wait(timeout.and_then(|t| Instant::now().checked_add(t)))
    }
    pub(crate) fn deadline(self) -> Option<Instant> {
        match self {
            Mode::Wait(d) => d,
            Mode::Try => None,
        }
    }
}

pub(crate) fn far_future() -> Instant {
    crate::elector::state::add(Instant::now(), Duration::MAX)
}

// ---------------------------------------------------------------------------------------------
// The holding, shared with the semaphore.

/// What releasing a holding does in Consul.
pub(crate) enum Release {
    /// `PUT <key>?release=<session>` with the lock's flags and value.
    Lock { value: Vec<u8> },
    /// Remove the session from the semaphore's holders (CAS), delete the contender key.
    Semaphore { prefix: String, limit: usize },
}

/// One holding: the session, the term, the monitor.
pub(crate) struct Held {
    pub(crate) consul: Consul,
    /// The lock's key, or the semaphore's prefix.
    pub(crate) key: String,
    pub(crate) session: Session,
    /// Whether the session was made for this holding (destroyed on release).
    pub(crate) owned: bool,
    pub(crate) term: Term,
    pub(crate) lock_index: u64,
    release: Release,
    /// Stops the monitor.
    pub(crate) stop: CancellationToken,
    done: AtomicBool,
    /// When the holding was lost, and whether it was at the renew deadline (the session, and so
    /// the lock, may still live in Consul until its TTL runs out).
    lost: StdMutex<Option<(Instant, bool)>>,
}

impl Held {
    pub(crate) fn new(
        consul: &Consul,
        key: &str,
        session: Session,
        owned: bool,
        fencing_token: u64,
        lock_index: u64,
        release: Release,
    ) -> Arc<Held> {
        let state = session.state();
        let term = Term::new(
            key,
            session.id(),
            fencing_token,
            Instant::now(),
            state.valid_until,
        );
        Arc::new(Held {
            consul: consul.clone(),
            key: key.to_owned(),
            session,
            owned,
            term,
            lock_index,
            release,
            stop: CancellationToken::new(),
            done: AtomicBool::new(false),
            lost: StdMutex::new(None),
        })
    }

    pub(crate) fn lost_reason(&self) -> Option<LostReason> {
        match self.term.stop_reason() {
            Some(StopReason::Lost(r)) => Some(r),
            _ => None,
        }
    }

    /// Ends the term as lost (the first reason wins).
    pub(crate) fn lose(&self, reason: LostReason) {
        let at_deadline = matches!(reason, LostReason::RenewDeadlineExceeded { .. });
        {
            let mut l = self.lost.lock().unwrap_or_else(PoisonError::into_inner);
            if l.is_none() && !self.term.is_cancelled() {
                *l = Some((Instant::now(), at_deadline));
            }
        }
        if !self.term.is_cancelled() {
            tracing::info!(lock = %self.key, session = %self.session.id(), %reason, "consul: holding lost");
        }
        self.term.end_with(StopReason::Lost(reason));
    }

    /// How long work that lost the holding may run on: `grace` after a loss at the renew
    /// deadline, but never past the earliest instant Consul may invalidate the session (the
    /// last good renewal plus the TTL); nothing after a takeover, a deletion or an
    /// invalidation (somebody else may hold already).
    pub(crate) fn grace_until(&self, grace: Duration) -> Instant {
        let now = Instant::now();
        match *self.lost.lock().unwrap_or_else(PoisonError::into_inner) {
            Some((_, true)) => (now + grace).min(self.session.state().safe_until).max(now),
            _ => now,
        }
    }

    /// Ends the term and gives the holding back in Consul, then destroys the session if it was
    /// made for this holding. [`LockError::Lost`] if it had been lost.
    pub(crate) async fn release(&self) -> LockResult<()> {
        if self.done.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let lost = self.lost_reason();
        self.stop.cancel();
        self.term.end_with(StopReason::Released);
        let released = match &self.release {
            Release::Lock { value } => {
                release_key(&self.consul, &self.key, self.session.id(), value).await
            }
            Release::Semaphore { prefix, limit } => {
                super::semaphore::release_slot(&self.consul, prefix, *limit, self.session.id())
                    .await
            }
        };
        if self.owned {
            if let Err(e) = self.session.destroy().await {
                tracing::debug!(lock = %self.key, session = %self.session.id(), error = %e, "consul: destroying the session after release failed; it expires with its TTL");
            }
        }
        match (lost, released) {
            (Some(reason), _) => Err(LockError::Lost {
                name: self.key.clone(),
                reason,
            }),
            (None, Err(e)) => Err(LockError::Store(e)),
            (None, Ok(true)) => Ok(()),
            (None, Ok(false)) => Err(LockError::Lost {
                name: self.key.clone(),
                reason: LostReason::TakenOver { holder: None },
            }),
        }
    }

    fn release_in_background(self: &Arc<Self>) {
        if self.done.load(Ordering::SeqCst) {
            return;
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            let held = self.clone();
            spawn_detached(async move {
                let _ = held.release().await;
            });
        } else {
            // No runtime: end the term; the session's own drop (or its TTL) frees the key.
            self.done.store(true, Ordering::SeqCst);
            self.stop.cancel();
            self.term.end_with(StopReason::Released);
        }
    }

    /// Follows the session: renewals move the term's deadline; its end ends the holding.
    /// Returns `false` once the holding is lost.
    pub(crate) fn follow_session(&self, state: &super::session::SessionState) -> bool {
        self.term.set_valid_until(state.valid_until);
        self.term.set_renew_failures(state.renew_failures);
        match &state.ended {
            None => true,
            Some(end) => {
                self.lose(session_loss(self.session.id(), end));
                false
            }
        }
    }

    /// The reason when the monitor sees the key released with no session: the session was
    /// invalidated (or destroyed) if Consul no longer knows it, else somebody else released it.
    pub(crate) async fn classify_vacated(&self) -> LostReason {
        if let Some(end) = self.session.end_reason() {
            return session_loss(self.session.id(), &end);
        }
        match Session::info_of(&self.consul, self.session.id()).await {
            Ok(None) => {
                self.session.mark_invalidated();
                session_loss(self.session.id(), &SessionEnd::Invalidated)
            }
            _ => LostReason::TakenOver { holder: None },
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The lost reason for a session's end.
pub(crate) fn session_loss(id: &str, end: &SessionEnd) -> LostReason {
    match end {
        SessionEnd::RenewDeadlineExceeded { last_error } => LostReason::RenewDeadlineExceeded {
            last_error: last_error.clone(),
        },
        SessionEnd::Invalidated => LostReason::StoreError {
            error: format!(
                "Consul session {id} was invalidated (its TTL ran out, a health check failed, \
                 or it was destroyed) and Consul released the lock"
            ),
        },
        SessionEnd::Destroyed => LostReason::StoreError {
            error: format!("Consul session {id} was destroyed"),
        },
        SessionEnd::Refused { error } => LostReason::StoreError {
            error: format!("renewing Consul session {id}: {error}"),
        },
    }
}

/// `PUT /v1/kv/<key>?release=<session>&flags=<LockFlagValue>` with the value: whether the
/// session held the key.
async fn release_key(
    consul: &Consul,
    key: &str,
    session: &str,
    value: &[u8],
) -> crate::Result<bool> {
    let req = consul
        .request(Method::PUT, &format!("/kv/{}", escape_key(key)))
        .query(&[("release", session)])
        .query(&[("flags", LOCK_FLAG_VALUE.to_string())])
        .body(value.to_vec());
    let reply = consul.call(req, "release", key, consul.timeout()).await?;
    if !reply.status.is_success() {
        return Err(refused("release", key, &reply));
    }
    Ok(String::from_utf8_lossy(&reply.body).trim() == "true")
}

/// A session lock or semaphore holding. Its [`token`](Self::token) is cancelled when the
/// holding is lost — the key deleted or taken, the session invalidated, or no renewal within
/// the renew deadline — or released. Dropping the guard releases in the background;
/// [`release`](Self::release) waits and reports.
#[must_use = "the holding is released when the guard is dropped"]
pub struct SessionGuard {
    pub(crate) held: Arc<Held>,
    pub(crate) slot: Option<Slot>,
}

impl SessionGuard {
    /// The term: its token, its fencing token, its name (the key, or the semaphore's prefix)
    /// and identity (the session's ID).
    pub fn term(&self) -> &Term {
        &self.held.term
    }

    /// The token cancelled when the holding is lost or released.
    pub fn token(&self) -> &CancellationToken {
        self.held.term.token()
    }

    /// The fencing token: the Raft index (`ModifyIndex`) of the write that granted the
    /// holding — for the lock, the lock operation itself. Raft indexes only grow, also across
    /// the key's deletion and re-creation and across Go and tenure holders, so every later
    /// holding of the same lock has a greater token; semaphore slots get increasing tokens in
    /// the order they were granted.
    pub fn fencing_token(&self) -> u64 {
        self.held.term.fencing_token()
    }

    /// The key's `LockIndex` after the acquisition (Consul's sequencer counter: how many times
    /// the key was locked since it was created; it restarts when the key is destroyed, so it
    /// is no fencing token). For a semaphore, that of the contender key.
    pub fn lock_index(&self) -> u64 {
        self.held.lock_index
    }

    /// The session holding it.
    pub fn session(&self) -> &Session {
        &self.held.session
    }

    /// The lock's key, or the semaphore's prefix.
    pub fn key(&self) -> &str {
        &self.held.key
    }

    /// Whether it is still held: neither lost nor released.
    pub fn is_held(&self) -> bool {
        !self.held.term.is_cancelled()
    }

    /// Why it was lost, if it was.
    pub fn lost_reason(&self) -> Option<LostReason> {
        self.held.lost_reason()
    }

    /// [`LockError::Lost`] if it was lost.
    pub fn check(&self) -> LockResult<()> {
        match self.held.lost_reason() {
            Some(reason) => Err(LockError::Lost {
                name: self.held.key.clone(),
                reason,
            }),
            None => Ok(()),
        }
    }

    /// Releases and waits: `?release=` (or the semaphore's CAS), then the session is
    /// destroyed if it was made for this holding. [`LockError::Lost`] if it had been lost.
    pub async fn release(self) -> LockResult<()> {
        if let Some(slot) = &self.slot {
            slot.clear(&self.held);
        }
        self.held.release().await
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if let Some(slot) = &self.slot {
            slot.clear(&self.held);
        }
        self.held.release_in_background();
    }
}

impl std::fmt::Debug for SessionGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionGuard")
            .field("key", &self.held.key)
            .field("session", &self.held.session.id())
            .field("term", &self.held.term)
            .finish()
    }
}

/// An instance's holding (one at a time), shared by its clones.
#[derive(Clone, Default)]
pub(crate) struct Slot(Arc<SlotInner>);

#[derive(Default)]
struct SlotInner {
    acquiring: tokio::sync::Mutex<()>,
    held: StdMutex<Option<Arc<Held>>>,
}

impl Slot {
    pub(crate) fn held(&self) -> Option<Arc<Held>> {
        self.0
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn is_held(&self) -> bool {
        self.held().is_some_and(|h| !h.term.is_cancelled())
    }

    fn clear(&self, held: &Arc<Held>) {
        let mut g = self.0.held.lock().unwrap_or_else(PoisonError::into_inner);
        if g.as_ref().is_some_and(|h| Arc::ptr_eq(h, held)) {
            *g = None;
        }
    }

    /// Runs one acquisition: [`LockError::AlreadyHeld`] while this instance holds (`ErrLockHeld`);
    /// [`Mode::Try`] gives up at once if another acquisition of the instance is under way.
    pub(crate) async fn acquire<F, Fut>(
        &self,
        name: &str,
        mode: Mode,
        f: F,
    ) -> LockResult<SessionGuard>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = LockResult<Arc<Held>>>,
    {
        let _acquiring = match mode {
            Mode::Try => self
                .0
                .acquiring
                .try_lock()
                .map_err(|_| LockError::WouldBlock {
                    name: name.to_owned(),
                    holder: None,
                })?,
            Mode::Wait(deadline) => {
                let started = Instant::now();
                tokio::time::timeout_at(
                    deadline.unwrap_or_else(far_future),
                    self.0.acquiring.lock(),
                )
                .await
                .map_err(|_| LockError::Timeout {
                    name: name.to_owned(),
                    waited: started.elapsed(),
                })?
            }
        };
        if self.held().is_some() {
            return Err(LockError::AlreadyHeld {
                name: name.to_owned(),
            });
        }
        let held = f().await?;
        *self.0.held.lock().unwrap_or_else(PoisonError::into_inner) = Some(held.clone());
        Ok(SessionGuard {
            held,
            slot: Some(self.clone()),
        })
    }

    /// Releases what this instance holds ([`LockError::NotHeld`], `ErrLockNotHeld`, if
    /// nothing).
    pub(crate) async fn unlock(&self, name: &str) -> LockResult<()> {
        let Some(held) = self.held() else {
            return Err(LockError::NotHeld {
                name: name.to_owned(),
            });
        };
        self.clear(&held);
        held.release().await
    }
}

/// Runs `work` under `guard`: the work's error comes back as [`LockError::Work`]; a loss
/// cancels the term's token, gives the work its grace (see [`Held::grace_until`]) and returns
/// [`LockError::Lost`] with the reason.
pub(crate) async fn synchronize<T, E, F, Fut>(
    guard: SessionGuard,
    lost_grace: Duration,
    work: F,
) -> LockResult<T, E>
where
    F: FnOnce(Term) -> Fut,
    Fut: Future<Output = std::result::Result<T, E>>,
{
    let term = guard.term().clone();
    let name = term.name().to_owned();
    let fut = work(term.clone());
    tokio::pin!(fut);
    let done = tokio::select! {
        r = &mut fut => Some(r),
        _ = term.cancelled() => None,
    };
    let lost = |guard: &SessionGuard| LockError::Lost {
        name: name.clone(),
        reason: guard
            .lost_reason()
            .unwrap_or(LostReason::TakenOver { holder: None }),
    };
    match done {
        Some(_) if term.is_cancelled() => Err(lost(&guard)),
        Some(result) => {
            if let Err(e) = guard.release().await {
                tracing::warn!(lock = %name, error = %e, "consul: releasing after the work");
            }
            result.map_err(LockError::Work)
        }
        None => {
            let until = guard.held.grace_until(lost_grace);
            let _ = tokio::time::timeout_at(until, &mut fut).await;
            Err(lost(&guard))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The lock.

/// Builds a [`ConsulLock`]; [`build`](Self::build) validates.
#[must_use]
pub struct ConsulLockBuilder {
    consul: Consul,
    key: String,
    value: Vec<u8>,
    session_options: SessionOptions,
    session: Option<Session>,
    wait_time: Duration,
    retry_time: Duration,
    lost_grace: Duration,
}

impl ConsulLockBuilder {
    /// The value stored in the key while held (`LockOptions.Value`; default empty, as
    /// `consul lock` stores). Seed 000 stores the hostname.
    pub fn value(mut self, value: impl Into<Vec<u8>>) -> Self {
        self.value = value.into();
        self
    }

    /// How the session of each holding is made (TTL, lock-delay, checks, …;
    /// `LockOptions.SessionOpts`). Default: [`SessionOptions::new`].
    pub fn session_options(mut self, options: SessionOptions) -> Self {
        self.session_options = options;
        self
    }

    /// The session TTL (`LockOptions.SessionTTL`); see [`SessionOptions::ttl`].
    pub fn session_ttl(mut self, ttl: Duration) -> Self {
        self.session_options = self.session_options.ttl(ttl);
        self
    }

    /// The session's lock-delay; see [`SessionOptions::lock_delay`].
    pub fn lock_delay(mut self, delay: Duration) -> Self {
        self.session_options = self.session_options.lock_delay(delay);
        self
    }

    /// The session's name (`LockOptions.SessionName`).
    pub fn session_name(mut self, name: impl Into<String>) -> Self {
        self.session_options = self.session_options.name(name);
        self
    }

    /// Holds with an existing session instead of making one per holding
    /// (`LockOptions.Session`): releasing does not destroy it, and if it already holds the key
    /// the lock is taken at once (as `api.Lock`).
    pub fn session(mut self, session: Session) -> Self {
        self.session = Some(session);
        self
    }

    /// How long one blocking query waits for a change (`LockOptions.LockWaitTime`, default
    /// 15 s). It bounds nothing else: [`ConsulLock::lock`]'s timeout does.
    pub fn lock_wait_time(mut self, d: Duration) -> Self {
        self.wait_time = d;
        self
    }

    /// The wait before trying again when the lock was refused with nobody holding it (a
    /// lock-delay in effect) and its end is not known (default
    /// [`DEFAULT_LOCK_RETRY_TIME`], 1 s; `api.Lock`: 5 s).
    pub fn lock_retry_time(mut self, d: Duration) -> Self {
        self.retry_time = d;
        self
    }

    /// How long [`synchronize`](ConsulLock::synchronize)'s work may run on after the holding
    /// was lost at the renew deadline (default 1 s; never past the last good renewal plus the
    /// session TTL, before which Consul cannot have released the key). After a takeover, a
    /// deletion or an invalidation the work is dropped at once.
    pub fn lost_grace(mut self, grace: Duration) -> Self {
        self.lost_grace = grace;
        self
    }

    /// Validates and builds.
    pub fn build(self) -> crate::Result<ConsulLock> {
        self.session_options.validate()?;
        if self.wait_time < Duration::from_millis(1) {
            return Err(Error::config("lock_wait_time must be at least 1 ms"));
        }
        if self.retry_time.is_zero() {
            return Err(Error::config("lock_retry_time must be positive"));
        }
        Ok(ConsulLock {
            inner: Arc::new(LockInner {
                consul: self.consul,
                key: self.key,
                value: self.value,
                session_options: self.session_options,
                session: self.session,
                wait_time: self.wait_time,
                retry_time: self.retry_time,
                lost_grace: self.lost_grace,
                slot: Slot::default(),
            }),
        })
    }
}

/// Consul's session lock, compatible with `api.Lock` and `consul lock` (see the
/// [module docs](super) for the protocol).
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use tenure::consul::{ConsulLock, ConsulOptions};
/// use tenure::lock::LockError;
///
/// let consul = ConsulOptions::from_env().connect().await?;
/// // The same prefix a shell script passes to `consul lock service/report ./report.sh`:
/// // both lock the key `service/report/.lock`, and exclude each other.
/// let lock = ConsulLock::builder(&consul, "service/report")?
///     .value(gethostname())
///     .session_ttl(Duration::from_secs(10))
///     .build()?;
/// match lock
///     .synchronize(Some(Duration::from_secs(30)), |term| async move {
///         // Stop when term.cancelled() fires; pass term.fencing_token() to side effects.
///         Ok::<_, std::io::Error>(42)
///     })
///     .await
/// {
///     Ok(n) => println!("done: {n}"),
///     Err(LockError::Work(e)) => println!("the work failed: {e}"),
///     Err(LockError::Lost { reason, .. }) => println!("lost the lock: {reason}"),
///     Err(e) => println!("could not run: {e}"),
/// }
///
/// // Or hold a guard:
/// let guard = lock.lock(Some(Duration::from_secs(5))).await?;
/// println!("holding with fencing token {}", guard.fencing_token());
/// tokio::select! {
///     _ = guard.token().cancelled() => println!("lost: {:?}", guard.lost_reason()),
///     _ = tokio::time::sleep(Duration::from_secs(1)) => guard.release().await?,
/// }
/// # Ok(()) }
/// # fn gethostname() -> Vec<u8> { b"host-a".to_vec() }
/// ```
///
/// One `ConsulLock` value is one contender: clones share its state, a second `lock` while it
/// holds is [`LockError::AlreadyHeld`] (`ErrLockHeld`); separate values contend.
#[derive(Clone)]
pub struct ConsulLock {
    inner: Arc<LockInner>,
}

struct LockInner {
    consul: Consul,
    key: String,
    value: Vec<u8>,
    session_options: SessionOptions,
    session: Option<Session>,
    wait_time: Duration,
    retry_time: Duration,
    lost_grace: Duration,
    slot: Slot,
}

impl std::fmt::Debug for ConsulLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulLock")
            .field("key", &self.inner.key)
            .field("held", &self.is_held())
            .finish_non_exhaustive()
    }
}

impl ConsulLock {
    /// The lock `consul lock PREFIX` takes: key `<prefix>/.lock`, default settings.
    /// [`Error::InvalidName`] for an empty prefix or `.`/`..` components.
    pub fn new(consul: &Consul, prefix: &str) -> crate::Result<ConsulLock> {
        ConsulLock::builder(consul, prefix)?.build()
    }

    /// A builder for the lock on `<prefix>/.lock` (as `consul lock PREFIX`).
    pub fn builder(consul: &Consul, prefix: &str) -> crate::Result<ConsulLockBuilder> {
        let key = format!("{}/{DEFAULT_LOCK_KEY}", clean_path(prefix)?);
        Ok(ConsulLock::builder_with(consul, key))
    }

    /// A builder for the lock on exactly `key` (as `client.LockKey(key)` in Go).
    pub fn builder_for_key(consul: &Consul, key: &str) -> crate::Result<ConsulLockBuilder> {
        Ok(ConsulLock::builder_with(consul, clean_path(key)?))
    }

    fn builder_with(consul: &Consul, key: String) -> ConsulLockBuilder {
        ConsulLockBuilder {
            consul: consul.clone(),
            key,
            value: Vec::new(),
            session_options: SessionOptions::new(),
            session: None,
            wait_time: DEFAULT_LOCK_WAIT_TIME,
            retry_time: DEFAULT_LOCK_RETRY_TIME,
            lost_grace: DEFAULT_LOST_GRACE,
        }
    }

    /// The lock's key.
    pub fn key(&self) -> &str {
        &self.inner.key
    }

    /// Takes the lock, waiting at most `timeout` (`None`: without limit, as `api.Lock.Lock`).
    ///
    /// Makes a session, waits with blocking queries while another session holds the key,
    /// locks it when free (retrying after a lock-delay). [`LockError::Timeout`] when the time
    /// is up (the session is destroyed); [`LockError::AlreadyHeld`] if this instance holds it
    /// (`ErrLockHeld`); [`LockError::Store`] with [`Error::Decode`] and a [`KeyConflict`]
    /// source if the key is not a lock (`ErrLockConflict`), or with Consul's final errors
    /// (permission, …; transient ones are retried until the timeout). Cancellation safe: a
    /// dropped call destroys its session.
    pub async fn lock(&self, timeout: Option<Duration>) -> LockResult<SessionGuard> {
        self.acquire(Mode::from_timeout(timeout)).await
    }

    /// Takes the lock only if it is free now, else [`LockError::WouldBlock`] naming the
    /// holding session (`holder: None` when a lock-delay refused it). Looks before making a
    /// session; store errors are not retried.
    pub async fn try_lock(&self) -> LockResult<SessionGuard> {
        self.acquire(Mode::Try).await
    }

    /// Takes the lock (waiting at most `timeout`), runs `work` with the term, releases, and
    /// returns the work's value (seed 000's `synchronize`).
    ///
    /// - A loss cancels the term's token at once and the call returns [`LockError::Lost`]
    ///   saying why: [`LostReason::Deleted`] (key deleted), [`LostReason::TakenOver`] (another
    ///   session holds it, or somebody released it), [`LostReason::StoreError`] (the session
    ///   was invalidated or destroyed), [`LostReason::RenewDeadlineExceeded`] (Consul
    ///   unreachable). The work is dropped at once, or after its
    ///   [grace](ConsulLockBuilder::lost_grace) for a loss at the renew deadline.
    /// - The work's own error comes back unchanged as [`LockError::Work`].
    /// - Consul's errors while acquiring are [`LockError::Store`]; waiting too long is
    ///   [`LockError::Timeout`].
    pub async fn synchronize<T, E, F, Fut>(
        &self,
        timeout: Option<Duration>,
        work: F,
    ) -> LockResult<T, E>
    where
        F: FnOnce(Term) -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
    {
        let guard = self.lock(timeout).await.map_err(LockError::widen)?;
        synchronize(guard, self.inner.lost_grace, work).await
    }

    /// Whether this instance holds the lock, by its own state (no call).
    pub fn is_held(&self) -> bool {
        self.inner.slot.is_held()
    }

    /// Releases the lock this instance holds, wherever its guard is (`Unlock`).
    /// [`LockError::NotHeld`] (`ErrLockNotHeld`) if it holds none; [`LockError::Lost`] if it
    /// had been lost.
    pub async fn unlock(&self) -> LockResult<()> {
        self.inner.slot.unlock(&self.inner.key).await
    }

    /// Who holds the lock (a consistent read), `None` if nobody.
    /// [`Error::Decode`] with a [`KeyConflict`] if the key is not a lock.
    pub async fn holder(&self) -> crate::Result<Option<LockHolder>> {
        let consul = &self.inner.consul;
        let (entries, _) =
            kv_read(consul, &self.inner.key, false, Read::Consistent, "holder").await?;
        let Some(e) = entries.into_iter().next() else {
            return Ok(None);
        };
        if e.flags != LOCK_FLAG_VALUE {
            return Err(KeyConflict::new(&self.inner.key, e.flags, LOCK_FLAG_VALUE).into_error());
        }
        Ok(e.session().map(|s| LockHolder {
            session: s.to_owned(),
            value: e.value(),
            lock_index: e.lock_index,
            modify_index: e.modify_index,
        }))
    }

    /// Deletes the lock's key if nobody holds it (`api.Lock.Destroy`); `Ok(false)` if there
    /// was no key. [`DestroyError::Held`] while this instance holds it (`ErrLockHeld`),
    /// [`DestroyError::InUse`] while anybody does or if it changed meanwhile (`ErrLockInUse`),
    /// [`DestroyError::Conflict`] if it is not a lock (`ErrLockConflict`).
    pub async fn destroy(&self) -> Result<bool, DestroyError> {
        let key = &self.inner.key;
        if self.inner.slot.held().is_some() {
            return Err(DestroyError::Held { key: key.clone() });
        }
        let consul = &self.inner.consul;
        let (entries, _) = kv_read(consul, key, false, Read::Consistent, "destroy")
            .await
            .map_err(DestroyError::Store)?;
        let Some(e) = entries.into_iter().next() else {
            return Ok(false);
        };
        if e.flags != LOCK_FLAG_VALUE {
            return Err(DestroyError::Conflict(KeyConflict::new(
                key,
                e.flags,
                LOCK_FLAG_VALUE,
            )));
        }
        if let Some(s) = e.session() {
            return Err(DestroyError::InUse {
                key: key.clone(),
                holder: Some(s.to_owned()),
            });
        }
        if delete_cas(consul, key, e.modify_index)
            .await
            .map_err(DestroyError::Store)?
        {
            Ok(true)
        } else {
            Err(DestroyError::InUse {
                key: key.clone(),
                holder: None,
            })
        }
    }

    async fn acquire(&self, mode: Mode) -> LockResult<SessionGuard> {
        self.inner
            .slot
            .acquire(&self.inner.key, mode, || self.acquire_held(mode))
            .await
    }

    /// The acquisition loop (`api.Lock.Lock`).
    async fn acquire_held(&self, mode: Mode) -> LockResult<Arc<Held>> {
        let inner = &*self.inner;
        let consul = &inner.consul;
        let key = inner.key.as_str();
        let started = Instant::now();
        let deadline = mode.deadline();
        let is_try = matches!(mode, Mode::Try);
        let timed_out = || LockError::Timeout {
            name: key.to_owned(),
            waited: started.elapsed(),
        };
        let conflict = |e: &KvEntry| {
            LockError::Store(KeyConflict::new(key, e.flags, LOCK_FLAG_VALUE).into_error())
        };
        // try_lock looks before making a session.
        if is_try {
            let (entries, _) = kv_read(consul, key, false, Read::Consistent, "lock")
                .await
                .map_err(LockError::Store)?;
            if let Some(e) = entries.first() {
                if e.flags != LOCK_FLAG_VALUE {
                    return Err(conflict(e));
                }
                match e.session() {
                    Some(s) if inner.session.as_ref().is_some_and(|o| o.id() == s) => {}
                    Some(s) => {
                        return Err(LockError::WouldBlock {
                            name: key.to_owned(),
                            holder: Some(s.to_owned()),
                        })
                    }
                    None => {}
                }
            }
        }
        let mut backoff = Backoff::new();
        let mut own: Option<Session> = None;
        let mut index = 0u64;
        // The session we last saw holding the key, and its lock-delay (if known).
        let mut holder: Option<(String, Option<Duration>)> = None;
        // When the lock-delay of a holder seen to go ends, at the latest.
        let mut delay_until: Option<Instant> = None;
        // A zero (or past) timeout still makes one attempt.
        let mut attempted = false;
        loop {
            if attempted && deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(timed_out());
            }
            attempted = true;
            // The session of this attempt.
            let session = match &inner.session {
                Some(shared) if shared.is_alive() => shared.clone(),
                Some(shared) => {
                    // Final: the caller's session cannot come back.
                    return Err(LockError::Store(Error::Rejected {
                        store: KIND,
                        name: key.to_owned(),
                        source: format!(
                            "the lock's session {} ended: {}",
                            shared.id(),
                            shared
                                .end_reason()
                                .map(|e| e.to_string())
                                .unwrap_or_default()
                        )
                        .into(),
                    }));
                }
                None => match &own {
                    Some(s) if s.is_alive() => s.clone(),
                    _ => match Session::create(consul, &inner.session_options).await {
                        Ok(s) => {
                            own = Some(s.clone());
                            s
                        }
                        Err(e) if e.is_retryable() && !is_try => {
                            tracing::debug!(lock = %key, error = %e, "consul: creating a session failed; retrying");
                            if !backoff.sleep(deadline).await {
                                return Err(timed_out());
                            }
                            continue;
                        }
                        Err(e) => return Err(LockError::Store(e)),
                    },
                },
            };
            // Look, waiting while somebody holds it.
            let read = if is_try {
                Read::Consistent
            } else {
                let wait = deadline.map_or(inner.wait_time, |d| {
                    d.saturating_duration_since(Instant::now())
                        .min(inner.wait_time)
                });
                Read::Blocking {
                    index,
                    wait: wait.max(Duration::from_millis(1)),
                }
            };
            let (entries, returned) = match kv_read(consul, key, false, read, "lock").await {
                Ok(r) => r,
                Err(e) if e.is_retryable() && !is_try => {
                    tracing::debug!(lock = %key, error = %e, "consul: reading the lock failed; retrying");
                    index = 0;
                    if !backoff.sleep(deadline).await {
                        return Err(timed_out());
                    }
                    continue;
                }
                Err(e) => return Err(LockError::Store(e)),
            };
            backoff.reset();
            index = next_index(index, returned);
            let entry = entries.into_iter().next();
            if let Some(e) = &entry {
                if e.flags != LOCK_FLAG_VALUE {
                    return Err(conflict(e));
                }
                match e.session() {
                    // Our (shared) session holds it already: as api.Lock, it is ours.
                    Some(s) if s == session.id() => {
                        return Ok(self.hold(session, own.is_some(), e.modify_index, e.lock_index));
                    }
                    Some(s) => {
                        if is_try {
                            return Err(LockError::WouldBlock {
                                name: key.to_owned(),
                                holder: Some(s.to_owned()),
                            });
                        }
                        if holder.as_ref().map(|h| h.0.as_str()) != Some(s) {
                            // Its lock-delay, to retry the moment it ends if it is invalidated.
                            let delay = Session::info_of(consul, s)
                                .await
                                .ok()
                                .flatten()
                                .map(|i| i.lock_delay.min(super::session::MAX_LOCK_DELAY));
                            holder = Some((s.to_owned(), delay));
                        }
                        delay_until = None;
                        continue;
                    }
                    None => {}
                }
            }
            // Free. If we saw its holder go just now, any lock-delay ends within the holder's.
            if let Some((_, delay)) = holder.take() {
                delay_until = delay.map(|d| Instant::now() + d);
            }
            let check = match &entry {
                Some(e) => {
                    let mut op = txn_op("check-index", key);
                    op.insert("Index".into(), e.modify_index.into());
                    op
                }
                None => txn_op("check-not-exists", key),
            };
            let mut lock = txn_op("lock", key);
            lock.insert("Value".into(), b64(&inner.value).into());
            lock.insert("Flags".into(), LOCK_FLAG_VALUE.into());
            lock.insert("Session".into(), session.id().into());
            match txn(consul, vec![check, lock], "lock", key).await {
                Ok(Txn::Applied(results)) => {
                    let kv = results
                        .into_iter()
                        .rev()
                        .find(|r| r.key == key && r.session() == Some(session.id()));
                    let Some(kv) = kv else {
                        return Err(LockError::Store(Error::Backend {
                            store: KIND,
                            source: format!("lock of {key:?}: the transaction returned no entry")
                                .into(),
                        }));
                    };
                    return Ok(self.hold(session, own.is_some(), kv.modify_index, kv.lock_index));
                }
                Ok(Txn::Refused(errors)) => {
                    let what = errors
                        .iter()
                        .map(|(_, w)| w.as_str())
                        .collect::<Vec<_>>()
                        .join("; ");
                    if what.contains("lock delay") {
                        if is_try {
                            return Err(LockError::WouldBlock {
                                name: key.to_owned(),
                                holder: None,
                            });
                        }
                        let now = Instant::now();
                        let wake = match delay_until.take() {
                            Some(t) if t > now => t + Duration::from_millis(20),
                            _ => now + inner.retry_time,
                        };
                        tracing::debug!(lock = %key, wait = ?wake - now, "consul: lock-delay in effect; waiting");
                        let wake = deadline.map_or(wake, |d| wake.min(d));
                        tokio::time::sleep_until(wake).await;
                        index = 0;
                    } else if what.contains("invalid session") || what.contains("missing session") {
                        // Our session is gone (invalidated meanwhile): make a new one.
                        session.mark_invalidated();
                        index = 0;
                    } else if is_try {
                        // It changed between the look and the lock: somebody else was faster.
                        return Err(LockError::WouldBlock {
                            name: key.to_owned(),
                            holder: None,
                        });
                    } else {
                        // Changed since read (taken, deleted, re-created): look again at once.
                        tracing::debug!(lock = %key, reason = %what, "consul: lock refused; looking again");
                        index = 0;
                    }
                }
                Err(e) if e.is_retryable() && !is_try => {
                    tracing::debug!(lock = %key, error = %e, "consul: locking failed; retrying");
                    index = 0;
                    if !backoff.sleep(deadline).await {
                        return Err(timed_out());
                    }
                }
                Err(e) => return Err(LockError::Store(e)),
            }
        }
    }

    /// Starts holding: the term and the monitor.
    fn hold(&self, session: Session, owned: bool, token: u64, lock_index: u64) -> Arc<Held> {
        let inner = &*self.inner;
        let held = Held::new(
            &inner.consul,
            &inner.key,
            session,
            owned,
            token,
            lock_index,
            Release::Lock {
                value: inner.value.clone(),
            },
        );
        tracing::debug!(lock = %inner.key, session = %held.session.id(), token, "consul: lock acquired");
        tokio::spawn(monitor_lock(held.clone(), token));
        held
    }
}

/// How long one monitoring query waits.
const MONITOR_WAIT: Duration = Duration::from_secs(60);

/// `api.Lock.monitorLock`: consistent blocking queries on the key; ends the holding when the
/// key's session changes or the key is deleted, and follows the session (renewals, its end).
/// Failing reads are retried; the holding ends once they have failed for the renew deadline.
/// Holds the `Held` weakly between queries: a dropped holding stops it.
async fn monitor_lock(held: Arc<Held>, start_index: u64) {
    let stop = held.stop.clone();
    let consul = held.consul.clone();
    let key = held.key.clone();
    let session_id = held.session.id().to_owned();
    let renew_deadline = held.session.options().effective_renew_deadline();
    let mut states = held.session.subscribe();
    if !held.follow_session(&states.borrow_and_update()) {
        return;
    }
    let weak = Arc::downgrade(&held);
    drop(held);
    let mut index = start_index.max(1);
    let mut delay = Duration::ZERO;
    let mut failing_since: Option<Instant> = None;
    let mut backoff = Backoff::new();
    loop {
        let (index_now, delay_now) = (index, delay);
        let (consul_ref, key_ref) = (&consul, &key);
        let read = async move {
            let (index, delay) = (index_now, delay_now);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            kv_read(
                consul_ref,
                key_ref,
                false,
                Read::ConsistentBlocking {
                    index,
                    wait: MONITOR_WAIT,
                },
                "watch lock",
            )
            .await
        };
        tokio::pin!(read);
        let result = loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                changed = states.changed() => {
                    let Some(held) = weak.upgrade() else { return };
                    if changed.is_err() || !held.follow_session(&states.borrow_and_update()) {
                        return;
                    }
                }
                r = &mut read => break r,
            }
        };
        let Some(held) = weak.upgrade() else { return };
        match result {
            Ok((entries, returned)) => {
                failing_since = None;
                backoff.reset();
                delay = Duration::ZERO;
                match entries.into_iter().next() {
                    None => {
                        // Deleted: by somebody, or by Consul when a session of behaviour
                        // `delete` was invalidated (as the semaphore's monitor tells apart).
                        let reason = match held.classify_vacated().await {
                            LostReason::TakenOver { .. } => LostReason::Deleted,
                            r => r,
                        };
                        held.lose(reason);
                        return;
                    }
                    Some(e) => match e.session() {
                        Some(s) if s == session_id => {
                            index = next_index(index, returned);
                        }
                        Some(s) => {
                            held.lose(LostReason::TakenOver {
                                holder: Some(s.to_owned()),
                            });
                            return;
                        }
                        None => {
                            let reason = held.classify_vacated().await;
                            held.lose(reason);
                            return;
                        }
                    },
                }
            }
            Err(e) if !e.is_retryable() => {
                held.lose(LostReason::StoreError {
                    error: error_chain(&e),
                });
                return;
            }
            Err(e) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= renew_deadline {
                    held.lose(LostReason::RenewDeadlineExceeded {
                        last_error: Some(format!("watching the lock: {}", error_chain(&e))),
                    });
                    return;
                }
                tracing::debug!(lock = %key, error = %e, "consul: watching the lock failed; retrying");
                index = 0;
                delay = backoff.next_delay();
            }
        }
    }
}

/// `DELETE /v1/kv/<key>?cas=<index>`: whether it was deleted.
pub(crate) async fn delete_cas(consul: &Consul, key: &str, index: u64) -> crate::Result<bool> {
    let req = consul
        .request(Method::DELETE, &format!("/kv/{}", escape_key(key)))
        .query(&[("cas", index.to_string())]);
    let reply = consul.call(req, "destroy", key, consul.timeout()).await?;
    match reply.status {
        s if s.is_success() => Ok(String::from_utf8_lossy(&reply.body).trim() == "true"),
        StatusCode::NOT_FOUND => Ok(false),
        _ => Err(refused("destroy", key, &reply)),
    }
}
