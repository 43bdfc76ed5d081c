//! [`ConsulSemaphore`]: Consul's semaphore (`api.Semaphore`, `consul lock -n N`), from Rust.
//!
//! (Documented with the [`consul`](super) module.)

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::client::{Consul, KIND};
use super::lock::{
    delete_cas, synchronize, DestroyError, Held, KeyConflict, LockResult, Mode, Release,
    SessionGuard, Slot, DEFAULT_LOCK_KEY, DEFAULT_LOCK_WAIT_TIME, DEFAULT_LOST_GRACE,
    SEMAPHORE_FLAG_VALUE,
};
use super::session::{
    b64, clean_path, error_chain, escape_key, kv_read, next_index, refused, txn, txn_op, Backoff,
    KvEntry, Read, Session, SessionBehavior, SessionOptions, Txn,
};
use crate::error::Error;
use crate::lock::LockError;
use crate::term::{LostReason, Term};

/// The holders record in `<prefix>/.lock`, as Go's `semaphoreLock` marshals it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SemaphoreLock {
    #[serde(rename = "Limit")]
    limit: usize,
    #[serde(rename = "Holders", default, deserialize_with = "null_as_empty")]
    holders: BTreeMap<String, bool>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, bool>, D::Error> {
    Ok(Option::<BTreeMap<String, bool>>::deserialize(d)?.unwrap_or_default())
}

/// What a read of the prefix says.
struct View {
    /// `<prefix>/.lock`, if it exists.
    lock_entry: Option<KvEntry>,
    /// The decoded holders record, dead holders pruned.
    lock: SemaphoreLock,
    /// Every entry under the prefix.
    entries: Vec<KvEntry>,
}

fn lock_key(prefix: &str) -> String {
    format!("{prefix}/{DEFAULT_LOCK_KEY}")
}

/// `findLock` + `decodeLock` + `pruneDeadHolders`. A missing key decodes as an empty record with
/// `limit`; other flags are a [`KeyConflict`].
fn view(prefix: &str, limit: usize, entries: Vec<KvEntry>) -> crate::Result<View> {
    let key = lock_key(prefix);
    let lock_entry = entries.iter().find(|e| e.key == key).cloned();
    let mut lock = match &lock_entry {
        Some(e) if e.flags != SEMAPHORE_FLAG_VALUE => {
            return Err(KeyConflict::new(&key, e.flags, SEMAPHORE_FLAG_VALUE).into_error())
        }
        Some(e) if !e.value().is_empty() => {
            serde_json::from_slice(&e.value()).map_err(|err| Error::Decode {
                store: KIND,
                key: key.clone(),
                source: format!("lock decoding failed: {err}").into(),
            })?
        }
        _ => SemaphoreLock {
            limit,
            holders: BTreeMap::new(),
        },
    };
    let alive: BTreeSet<&str> = entries.iter().filter_map(KvEntry::session).collect();
    lock.holders.retain(|h, _| alive.contains(h.as_str()));
    Ok(View {
        lock_entry,
        lock,
        entries,
    })
}

/// Removes `session` from the holders (CAS, retried) and deletes its contender key
/// (`api.Semaphore.Release`). Whether it was among the holders.
pub(crate) async fn release_slot(
    consul: &Consul,
    prefix: &str,
    limit: usize,
    session: &str,
) -> crate::Result<bool> {
    let key = lock_key(prefix);
    let mut was_holder = false;
    for _ in 0..32 {
        let (entries, _) = kv_read(consul, &key, false, Read::Consistent, "release").await?;
        let entry = entries.into_iter().next();
        let mut lock = match entry.as_ref().map(KvEntry::value) {
            Some(v) if !v.is_empty() => {
                serde_json::from_slice::<SemaphoreLock>(&v).map_err(|err| Error::Decode {
                    store: KIND,
                    key: key.clone(),
                    source: format!("lock decoding failed: {err}").into(),
                })?
            }
            _ => SemaphoreLock {
                limit,
                holders: BTreeMap::new(),
            },
        };
        if lock.holders.remove(session).is_none() {
            break;
        }
        was_holder = true;
        let index = entry.as_ref().map_or(0, |e| e.modify_index);
        if cas_lock(consul, &key, &lock, index).await?.is_some() {
            break;
        }
    }
    let contender = format!("{prefix}/{session}");
    let req = consul.request(Method::DELETE, &format!("/kv/{}", escape_key(&contender)));
    let reply = consul
        .call(req, "release", &contender, consul.timeout())
        .await?;
    if !reply.status.is_success() && reply.status != reqwest::StatusCode::NOT_FOUND {
        return Err(refused("release", &contender, &reply));
    }
    Ok(was_holder)
}

/// Writes the holders record with a check-and-set on `index` (0: create only); the new
/// `ModifyIndex`, or `None` if it changed meanwhile.
async fn cas_lock(
    consul: &Consul,
    key: &str,
    lock: &SemaphoreLock,
    index: u64,
) -> crate::Result<Option<u64>> {
    let value = serde_json::to_vec(lock).expect("a map of strings serializes");
    let mut op = txn_op("cas", key);
    op.insert("Value".into(), b64(&value).into());
    op.insert("Flags".into(), SEMAPHORE_FLAG_VALUE.into());
    op.insert("Index".into(), index.into());
    match txn(consul, vec![op], "update semaphore", key).await? {
        Txn::Applied(results) => Ok(results
            .into_iter()
            .find(|r| r.key == key)
            .map(|r| r.modify_index)),
        Txn::Refused(_) => Ok(None),
    }
}

/// Builds a [`ConsulSemaphore`]; [`build`](Self::build) validates.
#[must_use]
pub struct ConsulSemaphoreBuilder {
    consul: Consul,
    prefix: String,
    limit: usize,
    value: Vec<u8>,
    session_options: SessionOptions,
    session: Option<Session>,
    wait_time: Duration,
    lost_grace: Duration,
}

impl ConsulSemaphoreBuilder {
    /// The value of the contender key (`SemaphoreOptions.Value`; default empty).
    pub fn value(mut self, value: impl Into<Vec<u8>>) -> Self {
        self.value = value.into();
        self
    }

    /// How each holding's session is made. Default: [`SessionOptions::new`] with behaviour
    /// [`SessionBehavior::Delete`] (as `api.Semaphore`).
    pub fn session_options(mut self, options: SessionOptions) -> Self {
        self.session_options = options;
        self
    }

    /// The session TTL; see [`SessionOptions::ttl`].
    pub fn session_ttl(mut self, ttl: Duration) -> Self {
        self.session_options = self.session_options.ttl(ttl);
        self
    }

    /// The session's name.
    pub fn session_name(mut self, name: impl Into<String>) -> Self {
        self.session_options = self.session_options.name(name);
        self
    }

    /// Holds with an existing session (`SemaphoreOptions.Session`); releasing does not
    /// destroy it.
    pub fn session(mut self, session: Session) -> Self {
        self.session = Some(session);
        self
    }

    /// How long one blocking query waits (`SemaphoreWaitTime`, default 15 s).
    pub fn wait_time(mut self, d: Duration) -> Self {
        self.wait_time = d;
        self
    }

    /// See [`ConsulLockBuilder::lost_grace`](super::ConsulLockBuilder::lost_grace).
    pub fn lost_grace(mut self, grace: Duration) -> Self {
        self.lost_grace = grace;
        self
    }

    /// Validates and builds.
    pub fn build(self) -> crate::Result<ConsulSemaphore> {
        if self.limit == 0 {
            return Err(Error::config("semaphore limit must be positive"));
        }
        self.session_options.validate()?;
        if self.wait_time < Duration::from_millis(1) {
            return Err(Error::config("wait_time must be at least 1 ms"));
        }
        Ok(ConsulSemaphore {
            inner: Arc::new(SemInner {
                consul: self.consul,
                prefix: self.prefix,
                limit: self.limit,
                value: self.value,
                session_options: self.session_options,
                session: self.session,
                wait_time: self.wait_time,
                lost_grace: self.lost_grace,
                slot: Slot::default(),
            }),
        })
    }
}

/// Consul's semaphore: at most `limit` holders at once, compatible with `api.Semaphore` and
/// `consul lock -n N` on the same prefix (see the [module docs](super)).
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use tenure::consul::{ConsulOptions, ConsulSemaphore};
///
/// let consul = ConsulOptions::from_env().connect().await?;
/// // Shares its slots with `consul lock -n 3 jobs/encode ./encode.sh`.
/// let sem = ConsulSemaphore::new(&consul, "jobs/encode", 3)?;
/// let slot = sem.acquire(Some(Duration::from_secs(30))).await?;
/// println!("slot granted, fencing token {}", slot.fencing_token());
/// slot.release().await?;
/// # Ok(()) }
/// ```
///
/// One value is one contender; clones share it ([`LockError::AlreadyHeld`] for a second
/// acquisition, `ErrSemaphoreHeld`).
#[derive(Clone)]
pub struct ConsulSemaphore {
    inner: Arc<SemInner>,
}

struct SemInner {
    consul: Consul,
    prefix: String,
    limit: usize,
    value: Vec<u8>,
    session_options: SessionOptions,
    session: Option<Session>,
    wait_time: Duration,
    lost_grace: Duration,
    slot: Slot,
}

impl std::fmt::Debug for ConsulSemaphore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulSemaphore")
            .field("prefix", &self.inner.prefix)
            .field("limit", &self.inner.limit)
            .field("held", &self.is_held())
            .finish_non_exhaustive()
    }
}

impl ConsulSemaphore {
    /// A semaphore of `limit` slots at `prefix` (as `consul lock -n LIMIT PREFIX`), default
    /// settings.
    pub fn new(consul: &Consul, prefix: &str, limit: usize) -> crate::Result<ConsulSemaphore> {
        ConsulSemaphore::builder(consul, prefix, limit)?.build()
    }

    /// A builder. [`Error::InvalidName`] for an empty prefix or `.`/`..` components.
    pub fn builder(
        consul: &Consul,
        prefix: &str,
        limit: usize,
    ) -> crate::Result<ConsulSemaphoreBuilder> {
        Ok(ConsulSemaphoreBuilder {
            consul: consul.clone(),
            prefix: clean_path(prefix)?,
            limit,
            value: Vec::new(),
            session_options: SessionOptions::new().behavior(SessionBehavior::Delete),
            session: None,
            wait_time: DEFAULT_LOCK_WAIT_TIME,
            lost_grace: DEFAULT_LOST_GRACE,
        })
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// Takes a slot, waiting at most `timeout` (`None`: without limit).
    /// [`LockError::Timeout`], [`LockError::AlreadyHeld`] (`ErrSemaphoreHeld`),
    /// [`LockError::Store`] (a [`KeyConflict`], a limit conflict, Consul's final errors).
    pub async fn acquire(&self, timeout: Option<Duration>) -> LockResult<SessionGuard> {
        self.acquire_mode(Mode::from_timeout(timeout)).await
    }

    /// Takes a slot only if one is free now, else [`LockError::WouldBlock`] (naming one holder).
    pub async fn try_acquire(&self) -> LockResult<SessionGuard> {
        self.acquire_mode(Mode::Try).await
    }

    /// Takes a slot (waiting at most `timeout`), runs `work`, releases; as
    /// [`ConsulLock::synchronize`](super::ConsulLock::synchronize).
    pub async fn synchronize<T, E, F, Fut>(
        &self,
        timeout: Option<Duration>,
        work: F,
    ) -> LockResult<T, E>
    where
        F: FnOnce(Term) -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
    {
        let guard = self.acquire(timeout).await.map_err(LockError::widen)?;
        synchronize(guard, self.inner.lost_grace, work).await
    }

    /// Whether this instance holds a slot (no call).
    pub fn is_held(&self) -> bool {
        self.inner.slot.is_held()
    }

    /// Releases this instance's slot (`Release`); [`LockError::NotHeld`]
    /// (`ErrSemaphoreNotHeld`) if it holds none.
    pub async fn release(&self) -> LockResult<()> {
        self.inner.slot.unlock(&self.inner.prefix).await
    }

    /// The live holders' session IDs (a consistent read; dead holders pruned).
    pub async fn holders(&self) -> crate::Result<Vec<String>> {
        let inner = &*self.inner;
        let (entries, _) = kv_read(
            &inner.consul,
            &inner.prefix,
            true,
            Read::Consistent,
            "holders",
        )
        .await?;
        let v = view(&inner.prefix, inner.limit, entries)?;
        Ok(v.lock.holders.into_keys().collect())
    }

    /// Deletes `<prefix>/.lock` if nobody holds a slot (`api.Semaphore.Destroy`); `Ok(false)`
    /// if it did not exist. [`DestroyError::Held`], [`DestroyError::InUse`],
    /// [`DestroyError::Conflict`] as for [`ConsulLock::destroy`](super::ConsulLock::destroy).
    pub async fn destroy(&self) -> Result<bool, DestroyError> {
        let inner = &*self.inner;
        let key = lock_key(&inner.prefix);
        if inner.slot.held().is_some() {
            return Err(DestroyError::Held { key });
        }
        let (entries, _) = kv_read(
            &inner.consul,
            &inner.prefix,
            true,
            Read::Consistent,
            "destroy",
        )
        .await
        .map_err(DestroyError::Store)?;
        let Some(e) = entries.iter().find(|e| e.key == key) else {
            return Ok(false);
        };
        if e.flags != SEMAPHORE_FLAG_VALUE {
            return Err(DestroyError::Conflict(KeyConflict::new(
                &key,
                e.flags,
                SEMAPHORE_FLAG_VALUE,
            )));
        }
        let v = view(&inner.prefix, inner.limit, entries.clone()).map_err(DestroyError::Store)?;
        if let Some(h) = v.lock.holders.keys().next() {
            return Err(DestroyError::InUse {
                key,
                holder: Some(h.clone()),
            });
        }
        let index = v.lock_entry.map_or(0, |e| e.modify_index);
        if delete_cas(&inner.consul, &key, index)
            .await
            .map_err(DestroyError::Store)?
        {
            Ok(true)
        } else {
            Err(DestroyError::InUse { key, holder: None })
        }
    }

    async fn acquire_mode(&self, mode: Mode) -> LockResult<SessionGuard> {
        self.inner
            .slot
            .acquire(&self.inner.prefix, mode, || self.acquire_held(mode))
            .await
    }

    /// `api.Semaphore.Acquire`.
    async fn acquire_held(&self, mode: Mode) -> LockResult<Arc<Held>> {
        let inner = &*self.inner;
        let consul = &inner.consul;
        let prefix = inner.prefix.as_str();
        let key = lock_key(prefix);
        let started = Instant::now();
        let deadline = mode.deadline();
        let is_try = matches!(mode, Mode::Try);
        let timed_out = || LockError::Timeout {
            name: prefix.to_owned(),
            waited: started.elapsed(),
        };
        let mut backoff = Backoff::new();
        let mut own: Option<Session> = None;
        let mut contender_made = false;
        let mut index = 0u64;
        // A zero (or past) timeout still makes one attempt.
        let mut attempted = false;
        loop {
            if attempted && deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(timed_out());
            }
            attempted = true;
            let session = match &inner.session {
                Some(s) if s.is_alive() => s.clone(),
                Some(s) => {
                    // Final: the caller's session cannot come back.
                    return Err(LockError::Store(Error::Rejected {
                        store: KIND,
                        name: prefix.to_owned(),
                        source: format!("the semaphore's session {} ended", s.id()).into(),
                    }));
                }
                None => match &own {
                    Some(s) if s.is_alive() => s.clone(),
                    _ => match Session::create(consul, &inner.session_options).await {
                        Ok(s) => {
                            own = Some(s.clone());
                            contender_made = false;
                            s
                        }
                        Err(e) if e.is_retryable() && !is_try => {
                            if !backoff.sleep(deadline).await {
                                return Err(timed_out());
                            }
                            continue;
                        }
                        Err(e) => return Err(LockError::Store(e)),
                    },
                },
            };
            let step: crate::Result<Option<Arc<Held>>> = async {
                if !contender_made {
                    self.make_contender(&session).await?;
                    contender_made = true;
                }
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
                let (entries, returned) = kv_read(consul, prefix, true, read, "acquire").await?;
                index = next_index(index, returned);
                let mut v = view(prefix, inner.limit, entries)?;
                if v.lock.limit != inner.limit {
                    return Err(Error::config(format!(
                        "semaphore limit conflict (lock: {}, local: {})",
                        v.lock.limit, inner.limit
                    )));
                }
                if !v.entries.iter().any(|e| e.session() == Some(session.id())) {
                    // Our contender key is gone (session invalidated, or deleted): remake it.
                    contender_made = false;
                    index = 0;
                    return Ok(None);
                }
                if v.lock.holders.contains_key(session.id()) {
                    // Already a holder (a shared session that holds a slot).
                    let token = v.lock_entry.as_ref().map_or(0, |e| e.modify_index);
                    return Ok(Some(self.hold(session.clone(), own.is_some(), token)));
                }
                if v.lock.holders.len() >= v.lock.limit {
                    return Ok(None);
                }
                v.lock.holders.insert(session.id().to_owned(), true);
                let old = v.lock_entry.as_ref().map_or(0, |e| e.modify_index);
                match cas_lock(consul, &key, &v.lock, old).await? {
                    Some(token) => Ok(Some(self.hold(session.clone(), own.is_some(), token))),
                    None => {
                        // A race with another contender: look again at once.
                        index = 0;
                        Ok(None)
                    }
                }
            }
            .await;
            match step {
                Ok(Some(held)) => return Ok(held),
                Ok(None) if is_try => {
                    // Full (or raced): give the contender key back with the session.
                    let holders = self.holders().await.unwrap_or_default();
                    return Err(LockError::WouldBlock {
                        name: prefix.to_owned(),
                        holder: holders.into_iter().next(),
                    });
                }
                Ok(None) => backoff.reset(),
                Err(e) if e.is_retryable() && !is_try => {
                    tracing::debug!(semaphore = %prefix, error = %e, "consul: acquiring failed; retrying");
                    index = 0;
                    if !backoff.sleep(deadline).await {
                        return Err(timed_out());
                    }
                }
                Err(e) => return Err(LockError::Store(e)),
            }
        }
    }

    /// Locks the contender key `<prefix>/<session>` with the semaphore's flags.
    async fn make_contender(&self, session: &Session) -> crate::Result<()> {
        let inner = &*self.inner;
        let contender = format!("{}/{}", inner.prefix, session.id());
        let req = inner
            .consul
            .request(Method::PUT, &format!("/kv/{}", escape_key(&contender)))
            .query(&[("acquire", session.id())])
            .query(&[("flags", SEMAPHORE_FLAG_VALUE.to_string())])
            .body(inner.value.clone());
        let reply = match inner
            .consul
            .call(req, "acquire", &contender, inner.consul.timeout())
            .await
        {
            Ok(reply) => reply,
            Err(e) => {
                if error_chain(&e).contains("invalid session") {
                    // The session was invalidated meanwhile (Consul answers 500 "invalid
                    // session"): say so now, so that the next attempt makes a new one instead
                    // of retrying with it until a renewal notices.
                    session.mark_invalidated();
                }
                return Err(e);
            }
        };
        if !reply.status.is_success() {
            return Err(refused("acquire", &contender, &reply));
        }
        if String::from_utf8_lossy(&reply.body).trim() != "true" {
            // Refused: the key is under lock-delay (or held). The key is named after our
            // session, so that means Consul invalidated the session, which held it (a `delete`
            // session's keys get the lock-delay too). If Consul no longer knows the session,
            // end it now, so that the next attempt makes a new one instead of retrying with
            // it until a renewal notices.
            if let Ok(None) = Session::info_of(&inner.consul, session.id()).await {
                session.mark_invalidated();
            }
            return Err(Error::Backend {
                store: KIND,
                source: format!("failed to make contender entry {contender:?}").into(),
            });
        }
        Ok(())
    }

    fn hold(&self, session: Session, owned: bool, token: u64) -> Arc<Held> {
        let inner = &*self.inner;
        let held = Held::new(
            &inner.consul,
            &inner.prefix,
            session,
            owned,
            token,
            0,
            Release::Semaphore {
                prefix: inner.prefix.clone(),
                limit: inner.limit,
            },
        );
        tracing::debug!(semaphore = %inner.prefix, session = %held.session.id(), token, "consul: semaphore slot acquired");
        tokio::spawn(monitor_slot(held.clone(), inner.limit));
        held
    }
}

const MONITOR_WAIT: Duration = Duration::from_secs(60);

/// `api.Semaphore.monitorLock`: consistent blocking queries on the prefix; the slot is lost
/// when the session is no longer a live holder. Follows the session as the lock's monitor.
async fn monitor_slot(held: Arc<Held>, limit: usize) {
    let stop = held.stop.clone();
    let consul = held.consul.clone();
    let prefix = held.key.clone();
    let session_id = held.session.id().to_owned();
    let renew_deadline = held.session.options().effective_renew_deadline();
    let mut states = held.session.subscribe();
    if !held.follow_session(&states.borrow_and_update()) {
        return;
    }
    let weak = Arc::downgrade(&held);
    drop(held);
    let mut index = 0u64;
    let mut delay = Duration::ZERO;
    let mut failing_since: Option<Instant> = None;
    let mut backoff = Backoff::new();
    loop {
        let (index_now, delay_now) = (index, delay);
        let (consul_ref, prefix_ref) = (&consul, &prefix);
        let read = async move {
            let (index, delay) = (index_now, delay_now);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let read = if index == 0 {
                Read::Consistent
            } else {
                Read::ConsistentBlocking {
                    index,
                    wait: MONITOR_WAIT,
                }
            };
            kv_read(consul_ref, prefix_ref, true, read, "watch semaphore").await
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
        match result.and_then(|(entries, returned)| Ok((view(&prefix, limit, entries)?, returned)))
        {
            Ok((v, returned)) => {
                failing_since = None;
                backoff.reset();
                delay = Duration::ZERO;
                if v.lock.holders.contains_key(&session_id) {
                    index = next_index(index, returned);
                    continue;
                }
                let reason = if v.lock_entry.is_none() {
                    LostReason::Deleted
                } else if !v.entries.iter().any(|e| e.session() == Some(&session_id)) {
                    // Our contender key is gone: the session was invalidated (behaviour
                    // delete), or somebody deleted the key.
                    match held.classify_vacated().await {
                        LostReason::TakenOver { .. } => LostReason::Deleted,
                        r => r,
                    }
                } else {
                    LostReason::TakenOver { holder: None }
                };
                held.lose(reason);
                return;
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
                        last_error: Some(format!("watching the semaphore: {}", error_chain(&e))),
                    });
                    return;
                }
                index = 0;
                delay = backoff.next_delay();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_record_is_go_json() {
        let mut l = SemaphoreLock {
            limit: 3,
            holders: BTreeMap::new(),
        };
        l.holders.insert("b".into(), true);
        l.holders.insert("a".into(), true);
        assert_eq!(
            serde_json::to_string(&l).unwrap(),
            r#"{"Limit":3,"Holders":{"a":true,"b":true}}"#
        );
        let d: SemaphoreLock = serde_json::from_str(r#"{"Limit":2,"Holders":null}"#).unwrap();
        assert_eq!(d.limit, 2);
        assert!(d.holders.is_empty());
    }
}
