//! Consul (feature `consul`): elections and locks on Consul's KV store, over its HTTP API.
//!
//! - [`ConsulOptions`] / [`Consul`]: the connection (address, ACL token, datacenter, key
//!   prefix, TLS roots, timeouts), `CONSUL_HTTP_ADDR` and friends honoured as Consul's own
//!   tools do.
//! - [`ConsulStore`]: the [`LeaseStore`](crate::LeaseStore) on Consul KV, for
//!   [`LeaderElector`](crate::LeaderElector) and [`Mutex`](crate::lock::Mutex).
//! - [`ConsulLock`] and [`ConsulSemaphore`]: Consul's own session lock and semaphore, on the
//!   keys and with the flags of Go's `api.Lock` / `api.Semaphore` and of `consul lock`, so that
//!   programs in either language exclude each other; [`Session`] underneath.
//!
//! # Sessions
//!
//! A session is Consul's liveness handle: created with a TTL (10 s to 24 h), a lock-delay
//! (0 to 60 s), a behaviour (`release` or `delete`) and health checks (by default the node's
//! `serfHealth`), renewed at half its TTL, destroyed when done. Consul invalidates it when a
//! check fails, when it is destroyed, or when no renewal arrived for its TTL — Consul promises
//! no invalidation *before* the TTL and in fact waits up to twice the TTL (its TTL timers run
//! for `2 × TTL`). Invalidation releases (or deletes) every key the session locked, and for
//! `lock-delay` after it nobody may lock those keys again.
//!
//! A [`Session`] handle renews in the background, every `TTL / 2` (then every second after a
//! failure, as Consul's `RenewPeriodic`), and ends — its [`token`](Session::token) is
//! cancelled and [`end_reason`](Session::end_reason) says why — when a renewal finds it gone
//! (invalidated), when no renewal succeeded for the renew deadline (by default three quarters
//! of the TTL after the last good one was sent, before Consul may invalidate it), or when it
//! is destroyed. Dropping the last handle of a session it created destroys it in the
//! background.
//!
//! # The session lock
//!
//! ## Compatibility with `api.Lock` (Consul 1.8.7) and `consul lock`
//!
//! - Key: `<prefix>/.lock` for [`ConsulLock::new`] — the key `consul lock PREFIX cmd` uses
//!   (`path.Join(prefix, api.DefaultSemaphoreKey)`, a leading `/` trimmed) — or any key with
//!   [`ConsulLock::builder_for_key`] (`client.LockKey(key)`). Keys are full KV paths: the
//!   [`Consul`] handle's prefix, which places the record store's keys, does not apply.
//! - Holding: the key locked by a session (`Session` set, `LockIndex` incremented), with the
//!   flags [`LOCK_FLAG_VALUE`] (`api.LockFlagValue`) and the configured value (`LockOptions.Value`,
//!   empty by default as with `consul lock`). A key with other flags — a semaphore's, or foreign
//!   data — is never touched: [`KeyConflict`] (`api.ErrLockConflict`).
//! - Acquiring: create a session (TTL, lock-delay, behaviour `release`, checks:
//!   [`SessionOptions`]), wait with blocking queries while another session holds the key, lock
//!   it when free. Locking goes through `/v1/txn`'s `lock` verb — the same state-store
//!   operation as `PUT ?acquire=`, with the same lock-delay check — guarded by a
//!   `check-index` (or `check-not-exists`) of the entry just read, so that the acquisition's
//!   Raft index comes back in the same call and a key turned into something else meanwhile is
//!   never locked.
//! - Lock-delay: after a holder's session is invalidated, Consul refuses the lock for the
//!   session's lock-delay. `api.Lock` then retries every 5 s (`DefaultLockRetryTime`); tenure
//!   learns the lock-delay of the holder it waits on (one `session/info` call per holder) and
//!   retries the moment it ends, else every [`lock_retry_time`](ConsulLockBuilder::lock_retry_time).
//! - Monitoring: as `api.Lock`'s `monitorLock`, consistent blocking queries on the key; the
//!   holding ends at once when the key's session changes (taken over, released by somebody
//!   else), when the key is deleted, or when the session ends (a renewal finds it invalidated,
//!   or none succeeds within the renew deadline).
//! - Releasing: `PUT ?release=<session>` with the flags and value (`Unlock`), then the session
//!   is destroyed (it was made for this holding, as `api.Lock` does).
//! - [`destroy`](ConsulLock::destroy): `Destroy` — refuses while this instance holds it
//!   ([`DestroyError::Held`], `ErrLockHeld`), while anybody holds it ([`DestroyError::InUse`],
//!   `ErrLockInUse`) and when the flags differ ([`DestroyError::Conflict`], `ErrLockConflict`);
//!   otherwise deletes the key with `?cas=`.
//! - `ErrLockHeld` from `Lock` is [`LockError::AlreadyHeld`](crate::lock::LockError::AlreadyHeld); `ErrLockNotHeld` from `Unlock`
//!   is [`LockError::NotHeld`](crate::lock::LockError::NotHeld).
//!
//! So a tenure program and a Go program using `api.Lock`, or a shell script under
//! `consul lock`, on the same prefix exclude each other, and each takes over when the other
//! releases or its session is invalidated.
//!
//! # The semaphore
//!
//! ## Compatibility with `api.Semaphore` (Consul 1.8.7) and `consul lock -n N`
//!
//! - Each contender makes a session (behaviour `delete` by default, as `api.Semaphore`) and
//!   locks a contender key `<prefix>/<session>` with the flags [`SEMAPHORE_FLAG_VALUE`] and its
//!   value.
//! - The holders are kept in `<prefix>/.lock`, with the same flags, as Go's JSON
//!   `{"Limit":N,"Holders":{"<session>":true,…}}`. A contender reads the prefix (blocking
//!   queries while the semaphore is full), drops the holders whose session no longer holds
//!   any key under the prefix (dead), and adds itself with a check-and-set on the key's
//!   `ModifyIndex` (0: create only) — through `/v1/txn`'s `cas` verb, so that the grant's Raft
//!   index comes back as the fencing token.
//! - Every contender must agree on the limit: a different one is [`Error::Config`](crate::Error::Config)
//!   ("semaphore limit conflict"); a `.lock` key with other flags (a lock's) is a
//!   [`KeyConflict`] (`ErrSemaphoreConflict`).
//! - Monitoring: consistent blocking queries on the prefix; the slot is lost when the session
//!   is no longer among the live holders.
//! - Releasing: the session is removed from the holders (CAS, retried), the contender key
//!   deleted, the session destroyed. [`destroy`](ConsulSemaphore::destroy) deletes
//!   `<prefix>/.lock` once nobody holds a slot (`ErrSemaphoreHeld`, `ErrSemaphoreInUse`,
//!   `ErrSemaphoreConflict` as [`DestroyError`]).

mod client;
mod lock;
mod semaphore;
mod session;
mod store;

pub use client::{
    Consul, ConsulOptions, DEFAULT_ADDRESS, DEFAULT_MAX_CONNECTIONS, DEFAULT_PREFIX,
    DEFAULT_TIMEOUT,
};
pub use lock::{
    ConsulLock, ConsulLockBuilder, DestroyError, KeyConflict, LockHolder, LockResult, SessionGuard,
    DEFAULT_LOCK_KEY, DEFAULT_LOCK_RETRY_TIME, DEFAULT_LOCK_WAIT_TIME, LOCK_FLAG_VALUE,
    SEMAPHORE_FLAG_VALUE,
};
pub use semaphore::{ConsulSemaphore, ConsulSemaphoreBuilder};
pub use session::{
    Session, SessionBehavior, SessionEnd, SessionInfo, SessionOptions, DEFAULT_LOCK_DELAY,
    DEFAULT_SESSION_TTL, MAX_LOCK_DELAY, MAX_SESSION_TTL, MIN_SESSION_TTL,
};
pub use store::{ConsulStore, MAX_NAME_LEN, MAX_RECORD_LEN, RECORD_FLAGS_TAG, TXN_MAX_REQ_LEN};
