//! [`LeaderElector`]: leadership as a long-lived election over any [`LeaseStore`].
//!
//! The model is client-go's `tools/leaderelection`, with its semantics kept where they are
//! right (expiry judged on the observer's monotonic clock, the leader stepping down at the renew
//! deadline) and its gaps closed: re-campaign by default, drain-then-release on shutdown,
//! watch-driven handoff, a fencing token per term.

#[macro_use]
mod config;
mod handle;
mod observer;
pub mod state;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures_util::{FutureExt, StreamExt};
use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, Instant};
use tracing::{debug, info, info_span, warn, Instrument};

pub use self::config::{default_identity, Backoff, Config, MAX_DURATION};
pub use self::handle::{Leader, LeaderHandle, LeaderState};
use self::observer::NoObserver;
pub use self::observer::{error_kind, Observer};
use self::state::{decide, next_record, next_token, vacated, Decision, Observed};
use crate::error::{with_timeout, Error, Result};
use crate::store::{LeaseStore, PutMode, Stored, Version, WatchEvent, WatchStream};
pub use crate::term::{LostReason, StopReason, Term};

type NewLeaderFn = Arc<dyn Fn(Option<&Leader>) + Send + Sync>;
type StoppedFn = Arc<dyn Fn(&StopReason) + Send + Sync>;

/// Runs an election over a [`LeaseStore`]: campaigns, leads, steps down, re-campaigns.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> tenure::Result<()> {
/// use std::time::Duration;
/// use tenure::{LeaderElector, MemoryStore, Term};
///
/// let elector = LeaderElector::builder(MemoryStore::new(), "billing-scheduler")
///     .lease_duration(Duration::from_secs(15)) // L
///     .renew_deadline(Duration::from_secs(10)) // D
///     .retry_period(Duration::from_secs(2)) // R
///     .on_new_leader(|leader| println!("leader: {:?}", leader.map(|l| &l.identity)))
///     .on_stopped_leading(|why| println!("stopped leading: {why:?}"))
///     .build()?;
/// let shutdown = tokio::time::sleep(Duration::from_secs(30));
/// elector
///     .run(shutdown, |term: Term| async move {
///         // on_started_leading: work until the term's token is cancelled.
///         println!("leading with fencing token {}", term.fencing_token());
///         term.cancelled().await;
///     })
///     .await?;
/// # Ok(()) }
/// ```
pub struct LeaderElector<S> {
    store: S,
    name: String,
    config: Config,
    on_new_leader: Option<NewLeaderFn>,
    on_stopped_leading: Option<StoppedFn>,
    state: watch::Sender<LeaderState>,
    history: Option<SharedHistory>,
    observer: Arc<dyn Observer>,
}

/// Builds a [`LeaderElector`]; [`build`](Self::build) validates the settings.
#[must_use]
pub struct Builder<S> {
    store: S,
    name: String,
    config: Config,
    on_new_leader: Option<NewLeaderFn>,
    on_stopped_leading: Option<StoppedFn>,
    history: Option<SharedHistory>,
    observer: Option<Arc<dyn Observer>>,
}

impl<S: LeaseStore> LeaderElector<S> {
    /// Starts building an elector for election `name` over `store`, with default settings.
    pub fn builder(store: S, name: impl Into<String>) -> Builder<S> {
        Builder {
            store,
            name: name.into(),
            config: Config::default(),
            on_new_leader: None,
            on_stopped_leading: None,
            history: None,
            observer: None,
        }
    }

    /// The election's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The validated settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A handle for other tasks: `is_leader()`, the state channel, `leadership_lost()`.
    pub fn handle(&self) -> LeaderHandle {
        LeaderHandle {
            rx: self.state.subscribe(),
            identity: Arc::from(self.config.identity.as_str()),
        }
    }

    /// Campaigns until `shutdown` resolves, calling `on_started_leading` with a fresh [`Term`]
    /// at the start of every term and running the future it returns as a task.
    ///
    /// - The term's token is cancelled at once when leadership is lost; `on_stopped_leading`
    ///   fires; the elector waits for the work (at most `drain_timeout`, then aborts it) and,
    ///   with `recampaign` on (the default), campaigns again.
    /// - If the work returns by itself, the lease is released and, with `recampaign`, the
    ///   elector campaigns again after a jittered retry period.
    /// - On shutdown while leading: the token is cancelled, the lease is renewed while the work
    ///   finishes (bounded by `drain_timeout`), then released, then `run` returns `Ok`.
    ///
    /// Transient store errors (timeouts, unavailability) are retried. Final ones — permission
    /// denied, a record that is not a tenure record, a name the store cannot hold — end `run`
    /// with that error (after stepping down, if leading): retrying cannot fix them.
    ///
    /// Cancellation: dropping this future stops campaigning without releasing; the running
    /// term's token is cancelled and its task aborted. Prefer `shutdown` to drain and release.
    pub async fn run<F, Fut>(
        self,
        shutdown: impl Future<Output = ()> + Send,
        on_started_leading: F,
    ) -> Result<()>
    where
        F: FnMut(Term) -> Fut + Send,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut r = Runner::new(&self, shutdown);
        let res = r.run(Some(on_started_leading)).await;
        r.publish(None);
        res
    }

    /// Follows the election without ever campaigning, until `shutdown` resolves: keeps the
    /// state channel and `on_new_leader` up to date.
    pub async fn observe(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let mut r = Runner::new(&self, shutdown);
        r.run::<fn(Term) -> std::future::Ready<()>, _>(None).await
    }
}

impl<S: LeaseStore> Builder<S> {
    /// Replaces all settings at once.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }
    timing_setters!(config);
    elector_setters!(config);

    /// Called on every observed change of holder, ours and vacancy (`None`) included.
    pub fn on_new_leader(mut self, f: impl Fn(Option<&Leader>) + Send + Sync + 'static) -> Self {
        self.on_new_leader = Some(Arc::new(f));
        self
    }
    /// Called when a term ends, with the reason.
    pub fn on_stopped_leading(mut self, f: impl Fn(&StopReason) + Send + Sync + 'static) -> Self {
        self.on_stopped_leading = Some(Arc::new(f));
        self
    }

    /// Reports campaigns, terms, renewals, failed store calls and leader changes to `observer`
    /// (for example `tenure::metrics::Metrics`, feature `metrics`). See [`Observer`].
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Validates the settings ([`Config::validate`]) and the name, and builds the elector.
    pub fn build(self) -> Result<LeaderElector<S>> {
        if self.name.is_empty() {
            return Err(Error::config("the election name must not be empty"));
        }
        self.config.validate()?;
        self.store
            .capabilities()
            .check_retry_period(self.store.kind(), self.config.retry_period)?;
        Ok(LeaderElector {
            store: self.store,
            name: self.name,
            config: self.config,
            on_new_leader: self.on_new_leader,
            on_stopped_leading: self.on_stopped_leading,
            state: watch::channel(LeaderState::Unknown).0,
            history: self.history,
            observer: self.observer.unwrap_or_else(|| Arc::new(NoObserver)),
        })
    }

    /// Starts from, and leaves behind, what an earlier elector of this process observed (the
    /// `Mutex` keeps one per lock).
    pub(crate) fn history(mut self, history: SharedHistory) -> Self {
        self.history = Some(history);
        self
    }
}

/// How a term ended, for the campaign loop.
enum Ended {
    Lost(Option<Error>),
    Released,
    ShutDown,
}

struct Shutdown<'a> {
    fut: Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
    fired: bool,
}

impl Shutdown<'_> {
    /// Resolves once shutdown was requested (at once if it already was). Cancellation safe.
    async fn wait(&mut self) {
        if !self.fired {
            (&mut self.fut).await;
            self.fired = true;
        }
    }

    /// Whether shutdown has been requested by now, without waiting. Checked before every
    /// step that could start a term: after shutdown is requested, none may start.
    fn requested(&mut self) -> bool {
        self.fired || self.wait().now_or_never().is_some()
    }
}

/// Watch events, resubscribed after the stream ends. Cancellation safe.
struct Wakeups {
    stream: Option<WatchStream>,
    resubscribe_at: Option<Instant>,
}

impl Wakeups {
    /// The next event; a restarted watch reports a [`WatchEvent::Hint`] (something may have
    /// changed while nobody watched). An error that retrying cannot fix (permission denied) is
    /// returned once, and the watch is not resubscribed.
    async fn next<S: LeaseStore>(
        &mut self,
        store: &S,
        name: &str,
        retry: Duration,
        observer: &dyn Observer,
    ) -> Result<WatchEvent> {
        loop {
            if let Some(at) = self.resubscribe_at {
                sleep_until(at).await;
                self.resubscribe_at = None;
                self.stream = store.watch(name);
                return Ok(WatchEvent::Hint);
            }
            match &mut self.stream {
                None => std::future::pending::<()>().await,
                Some(s) => match s.next().await {
                    Some(Ok(event)) => return Ok(event),
                    Some(Err(e)) if !e.is_retryable() => {
                        observer.store_error(name, "watch", &e);
                        warn!(error = %e, "the store refused the watch");
                        self.stream = None;
                        return Err(e);
                    }
                    Some(Err(e)) => {
                        observer.store_error(name, "watch", &e);
                        debug!(error = %e, "watch error; resubscribing");
                        self.stream = None;
                        self.resubscribe_at = Some(Instant::now() + retry);
                    }
                    None => {
                        debug!("watch ended; resubscribing");
                        self.stream = None;
                        self.resubscribe_at = Some(Instant::now() + retry);
                    }
                },
            }
        }
    }

    /// Whether a watch is running or about to be resubscribed.
    fn watching(&self) -> bool {
        self.stream.is_some() || self.resubscribe_at.is_some()
    }
}

/// What ended a follower's wait.
enum Wake {
    /// Shutdown was requested.
    Shutdown,
    /// The watch reported something.
    Event(WatchEvent),
    /// Time for a read (the poll, or the safety read of a store whose watch reports every
    /// write).
    Read,
    /// The observed lease expired, by this elector's clock.
    Expired,
}

/// How many versions an elector remembers having seen: a watch event for one of them is old
/// news (a delayed event of the record before, or of our own write) and is ignored. Versions
/// never repeat (see the `LeaseStore` contract), so a seen version is never a new write.
const SEEN_VERSIONS: usize = 32;

/// What an elector remembers of an election between runs: its last observation (with the
/// instant it first saw that version) and the highest fencing token it ever saw. A `Mutex`
/// keeps one across acquisitions, so that repeated `try_lock`s count a dead holder's lease
/// and never reuse a token.
#[derive(Debug, Default)]
pub(crate) struct History {
    observed: Option<Observed>,
    highest_token: u64,
}

pub(crate) type SharedHistory = Arc<Mutex<History>>;

struct Runner<'a, S> {
    el: &'a LeaderElector<S>,
    shutdown: Shutdown<'a>,
    wakeups: Wakeups,
    observed: Option<Observed>,
    /// The highest token seen for this election, by read or by our own writes: a new term
    /// always asks for more.
    highest_token: u64,
    /// The versions seen lately (read, watched or written), newest last.
    seen: VecDeque<Version>,
    reported_holder: Option<Option<String>>,
    /// When the holder reported last stops holding by this elector's observation (for the
    /// observer's failover gap).
    holder_expiry: HolderExpiry,
    /// Since when the election has been seen without a holder, if it is now.
    leaderless_since: Option<Instant>,
    call_timeout: Duration,
}

/// Where the lease of the holder reported last expires, by this elector's observation.
enum HolderExpiry {
    /// Nobody holds it (or nothing was reported yet).
    None,
    /// Another holder's, at this instant.
    At(Instant),
    /// Ours: the term's `valid_until` plus `L − D`, read when needed (it moves with renewals).
    Term(Term),
}

impl<S> Drop for Runner<'_, S> {
    fn drop(&mut self) {
        if let Some(h) = &self.el.history {
            let mut h = h.lock().unwrap_or_else(PoisonError::into_inner);
            h.observed = self.observed.take();
            h.highest_token = h.highest_token.max(self.highest_token);
        }
    }
}

impl<'a, S: LeaseStore> Runner<'a, S> {
    fn new(el: &'a LeaderElector<S>, shutdown: impl Future<Output = ()> + Send + 'a) -> Self {
        let stream = el.store.watch(&el.name);
        let (observed, highest_token) = match &el.history {
            Some(h) => {
                let h = h.lock().unwrap_or_else(PoisonError::into_inner);
                (h.observed.clone(), h.highest_token)
            }
            None => (None, 0),
        };
        Runner {
            el,
            shutdown: Shutdown {
                fut: Box::pin(shutdown),
                fired: false,
            },
            wakeups: Wakeups {
                stream,
                resubscribe_at: None,
            },
            observed,
            highest_token,
            seen: VecDeque::new(),
            reported_holder: None,
            holder_expiry: HolderExpiry::None,
            leaderless_since: None,
            call_timeout: el.config.effective_call_timeout(),
        }
    }

    /// Records the current observation's token and version as seen.
    fn note_token(&mut self) {
        if let Some(o) = &self.observed {
            self.highest_token = self.highest_token.max(o.record.transitions);
            if !self.seen.contains(&o.version) {
                if self.seen.len() == SEEN_VERSIONS {
                    self.seen.pop_front();
                }
                self.seen.push_back(o.version.clone());
            }
        }
    }

    /// Takes a read or a carried record as the current observation (`None`: no record).
    fn observe(&mut self, fresh: Option<Stored>) {
        self.observed = Observed::refresh(self.observed.take(), fresh, Instant::now());
        self.note_token();
    }

    /// Whether `event` is old news: a `Put` of a version this elector has already seen.
    fn seen_before(&self, event: &WatchEvent) -> bool {
        matches!(event, WatchEvent::Put(s) if self.seen.contains(&s.version))
    }

    /// Whether the store's watch reports every write and is running: followers then read only
    /// for safety, about once per lease duration.
    fn watch_reports_every_write(&self) -> bool {
        self.wakeups.watching() && self.el.store.capabilities().watch_every_write
    }

    /// The period of a watching follower's safety read: `L` to `1.5 × L`.
    fn safety_read_period(&self) -> Duration {
        let l = self.cfg().lease_duration;
        let f: f64 = rand::thread_rng().gen_range(0.0..=0.5);
        l + l.mul_f64(f)
    }

    fn cfg(&self) -> &Config {
        &self.el.config
    }

    fn jittered_retry(&self) -> Duration {
        let r = self.cfg().retry_period;
        let f: f64 = rand::thread_rng().gen_range(0.0..=1.0);
        r + r.mul_f64(self.cfg().jitter * f)
    }

    /// The pause before campaign attempt `attempt` (1-based).
    fn retry_delay(&self, attempt: u32) -> Duration {
        match &self.cfg().backoff {
            Some(b) => b.jittered(attempt.saturating_sub(1)),
            None => self.jittered_retry(),
        }
    }

    async fn run<F, Fut>(&mut self, mut work: Option<F>) -> Result<()>
    where
        F: FnMut(Term) -> Fut + Send,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let el = self.el;
        loop {
            let campaigning = work.is_some();
            let span = if campaigning {
                el.observer.campaign_started(&el.name, &el.config.identity);
                info_span!("campaign", election = %el.name, identity = %el.config.identity)
            } else {
                info_span!("observe", election = %el.name, identity = %el.config.identity)
            };
            let Some(acquired_at) = self.campaign(campaigning).instrument(span).await? else {
                return Ok(());
            };
            let Some(f) = work.as_mut() else {
                return Ok(());
            };
            let token = self.observed.as_ref().map_or(0, |o| o.record.transitions);
            let span = info_span!(
                "term",
                election = %el.name,
                identity = %el.config.identity,
                fencing_token = token
            );
            match self.lead(acquired_at, f).instrument(span).await {
                Ended::ShutDown => return Ok(()),
                Ended::Lost(Some(e)) => return Err(e),
                Ended::Lost(None) => {
                    if !self.cfg().recampaign {
                        return Ok(());
                    }
                }
                Ended::Released => {
                    if !self.cfg().recampaign {
                        return Ok(());
                    }
                    // Give the others a chance to take over before we campaign again.
                    let pause = self.jittered_retry();
                    tokio::select! {
                        _ = self.shutdown.wait() => return Ok(()),
                        _ = sleep(pause) => {}
                    }
                }
            }
        }
    }

    /// Reads the record under the call timeout, refreshing the observation.
    async fn read(&mut self) -> Result<()> {
        self.read_within(self.call_timeout).await
    }

    /// [`read`](Self::read) under a deadline of `budget`.
    async fn read_within(&mut self, budget: Duration) -> Result<()> {
        let el = self.el;
        let sent = Instant::now();
        let fresh = with_timeout(
            el.store.kind(),
            "get",
            &el.name,
            budget,
            el.store.get(&el.name),
        )
        .await;
        debug!(operation = "read", latency = ?sent.elapsed(), ok = fresh.is_ok(), "store call");
        let fresh = fresh.inspect_err(|e| el.observer.store_error(&el.name, "read", e))?;
        self.observe(fresh);
        Ok(())
    }

    /// Follows (and, if `campaigning`, campaigns) until we hold the lease — returning the
    /// send time of the winning write — or shutdown is requested (`None`).
    async fn campaign(&mut self, campaigning: bool) -> Result<Option<Instant>> {
        let el = self.el;
        let mut attempt: u32 = 0;
        let mut need_read = true;
        loop {
            if self.shutdown.requested() {
                return Ok(None);
            }
            attempt = attempt.saturating_add(1);
            if need_read {
                if let Err(e) = self.read().await {
                    if !e.is_retryable() || (campaigning && self.cfg().single_attempt) {
                        self.publish(None);
                        return Err(e);
                    }
                    warn!(election = %el.name, error = %e, "reading the lease failed; retrying");
                    let pause = self.retry_delay(attempt);
                    match self.pause(pause, None).await? {
                        Wake::Shutdown => return Ok(None),
                        Wake::Event(e) if !self.seen_before(&e) => self.follow(e),
                        _ => {}
                    }
                    continue;
                }
                need_read = false;
            }
            self.publish(None);
            let decision = decide(
                self.observed.as_ref(),
                Instant::now(),
                &self.cfg().identity,
                None,
            );
            let expires_at = match decision {
                Decision::Follow { .. } if campaigning && self.cfg().single_attempt => {
                    return Ok(None)
                }
                Decision::Follow { expires_at, .. } => Some(expires_at),
                Decision::Create | Decision::Acquire if campaigning => {
                    if self.shutdown.requested() {
                        return Ok(None);
                    }
                    match self.try_acquire(&decision).await {
                        Ok(Some(sent)) => return Ok(Some(sent)),
                        Ok(None) if self.cfg().single_attempt => return Ok(None),
                        Ok(None) => {
                            // Somebody wrote first (or our view was stale): re-read at once.
                            need_read = true;
                            continue;
                        }
                        Err(e) if !e.is_retryable() || self.cfg().single_attempt => return Err(e),
                        Err(e) => {
                            warn!(election = %el.name, error = %e, "acquiring the lease failed; retrying");
                            need_read = true;
                            None
                        }
                    }
                }
                _ => None,
            };
            // When to read again. A store whose watch reports every write (with the record, or
            // as a hint) needs no polling: a safety read about once per lease duration. Other
            // stores are re-read every jittered R, as client-go does (or on the configured
            // backoff): a renewal seen late delays a takeover. Either way, a watch event wakes
            // us at once, and the observed expiry ends the wait.
            let poll = if self.cfg().backoff.is_none() && self.watch_reports_every_write() {
                self.safety_read_period()
            } else {
                self.retry_delay(attempt)
            };
            match self.pause(poll, expires_at).await? {
                Wake::Shutdown => return Ok(None),
                Wake::Event(WatchEvent::Hint) => need_read = true,
                Wake::Event(e) if self.seen_before(&e) => {}
                Wake::Event(e) => self.follow(e),
                Wake::Read => need_read = true,
                // Decide again on what we saw: a takeover is a compare-and-swap against that
                // version, so a renewal we missed makes it conflict, never succeed.
                Wake::Expired => {}
            }
        }
    }

    /// Takes a watch event as the current observation (a follower's view).
    fn follow(&mut self, event: WatchEvent) {
        match event {
            WatchEvent::Put(stored) => self.observe(Some(stored)),
            WatchEvent::Deleted => self.observe(None),
            // A hint carries nothing; the caller re-reads.
            WatchEvent::Hint => {}
        }
    }

    /// Waits for a watch event, `poll` to pass, `until`, or shutdown; a watch error that
    /// retrying cannot fix is returned.
    async fn pause(&mut self, poll: Duration, until: Option<Instant>) -> Result<Wake> {
        let (store, name, retry) = (&self.el.store, &self.el.name, self.el.config.retry_period);
        let observer = &*self.el.observer;
        let poll_at = state::add(Instant::now(), poll);
        let woken = tokio::select! {
            _ = self.shutdown.wait() => return Ok(Wake::Shutdown),
            w = self.wakeups.next(store, name, retry, observer) => w.map(Wake::Event),
            _ = sleep_until(poll_at) => Ok(Wake::Read),
            _ = sleep_until(until.unwrap_or_else(far_future)), if until.is_some() => Ok(Wake::Expired),
        };
        if woken.is_err() {
            self.publish(None);
        }
        woken
    }

    /// One attempt to take the lease. `Ok(None)`: somebody else wrote first.
    async fn try_acquire(&mut self, decision: &Decision) -> Result<Option<Instant>> {
        let el = self.el;
        let cfg = &el.config;
        let Some(token) = next_token(self.observed.as_ref(), self.highest_token) else {
            return Err(Error::Fencing {
                store: el.store.kind(),
                name: el.name.clone(),
                reason: "an earlier term already had the largest token, u64::MAX".into(),
            });
        };
        let record = next_record(
            decision,
            self.observed.as_ref(),
            token,
            &cfg.identity,
            cfg.lease_duration,
            cfg.value.as_deref(),
            SystemTime::now(),
        );
        let mode = match &self.observed {
            None => PutMode::Create,
            Some(o) => PutMode::Update(o.version.clone()),
        };
        let sent = Instant::now();
        let written = with_timeout(
            el.store.kind(),
            "put",
            &el.name,
            self.call_timeout,
            el.store.put(&el.name, &record, mode),
        )
        .await;
        debug!(operation = "acquire", latency = ?sent.elapsed(), ok = written.is_ok(), "store call");
        // Whether or not it landed, this token may now exist: never ask for it again.
        self.highest_token = self.highest_token.max(token);
        let version = match written {
            Ok(v) => v,
            Err(e) if e.is_conflict() => {
                debug!(election = %el.name, "lost the race to acquire");
                return Ok(None);
            }
            Err(e) => {
                el.observer.store_error(&el.name, "acquire", &e);
                return Err(e);
            }
        };
        // A store may raise the token of a write that starts a term (see the `LeaseStore`
        // contract): adopt what it stored, or, if the record already moved on, start over.
        let reread = Instant::now();
        let stored = with_timeout(
            el.store.kind(),
            "get",
            &el.name,
            self.call_timeout,
            el.store.get(&el.name),
        )
        .await;
        debug!(operation = "read", latency = ?reread.elapsed(), ok = stored.is_ok(), "store call");
        let stored = stored.inspect_err(|e| el.observer.store_error(&el.name, "acquire", e))?;
        let record = match stored {
            Some(s) if s.version == version => s.record,
            _ => return Ok(None),
        };
        info!(election = %el.name, identity = %cfg.identity, fencing_token = record.transitions, "acquired the lease");
        self.observed = Some(Observed {
            record,
            version,
            since: sent,
        });
        self.note_token();
        if self.shutdown.requested() {
            // Shutdown came while the write was in flight: no term starts; give the lease back.
            info!(election = %el.name, "shutdown requested while acquiring; releasing");
            let token = self.observed.as_ref().map_or(0, |o| o.record.transitions);
            self.release(token, sent + cfg.renew_deadline).await;
            self.publish(None);
            return Ok(None);
        }
        Ok(Some(sent))
    }

    /// Leads one term, from the winning write sent at `acquired_at`.
    async fn lead<F, Fut>(&mut self, acquired_at: Instant, work: &mut F) -> Ended
    where
        F: FnMut(Term) -> Fut + Send,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let el = self.el;
        let cfg = &el.config;
        let token = self
            .observed
            .as_ref()
            .map(|o| o.record.transitions)
            .unwrap_or_default();
        let term = Term::new(
            &el.name,
            &cfg.identity,
            token,
            acquired_at,
            acquired_at + cfg.renew_deadline,
        );
        info!(election = %el.name, identity = %cfg.identity, fencing_token = token, "term started");
        el.observer
            .term_started(&el.name, &cfg.identity, term.fencing_token());
        self.publish(Some(&term));
        let mut task: JoinHandle<()> =
            tokio::spawn(work(term.clone()).instrument(tracing::Span::current()));
        let _abort_on_drop = AbortOnDrop(task.abort_handle(), term.clone());

        let mut last_ok_sent = acquired_at;
        let mut next_renew = acquired_at + cfg.retry_period;
        let mut last_error: Option<String> = None;
        let mut drain_until: Option<Instant> = None;

        let ended_by_work = loop {
            let deadline = last_ok_sent + cfg.renew_deadline;
            tokio::select! {
                biased;
                _ = sleep_until(deadline) => {
                    warn!(election = %el.name, "renew deadline passed; stepping down");
                    return self.lost(&term, task, LostReason::RenewDeadlineExceeded { last_error }, None).await;
                }
                res = &mut task => {
                    if let Err(e) = res {
                        if e.is_panic() {
                            warn!(election = %el.name, "the leader's work panicked; releasing");
                        }
                    }
                    break drain_until.is_none();
                }
                _ = sleep_until(drain_until.unwrap_or_else(far_future)), if drain_until.is_some() => {
                    warn!(election = %el.name, "the work did not finish within drain_timeout; aborting it");
                    task.abort();
                    // Work that never yields cannot be aborted: wait for it only briefly, and
                    // release while the lease is still ours.
                    let left = deadline.saturating_duration_since(Instant::now());
                    let bound = self.call_timeout.min(left / 2);
                    if tokio::time::timeout(bound, &mut task).await.is_err() {
                        warn!(election = %el.name, "the aborted work has not yielded; releasing without it");
                    }
                    break false;
                }
                _ = self.shutdown.wait(), if drain_until.is_none() => {
                    info!(election = %el.name, "shutdown requested; draining the work");
                    term.end_with(StopReason::ShutDown);
                    drain_until = Some(Instant::now() + cfg.drain_timeout);
                }
                _ = sleep_until(next_renew) => {
                    let sent = Instant::now();
                    let budget = self.call_timeout.min(deadline.saturating_duration_since(sent));
                    let renewed = self.renew(budget).await;
                    let latency = sent.elapsed();
                    debug!(operation = "renew", latency = ?latency, ok = renewed.is_ok(), "store call");
                    el.observer.renewal(&el.name, latency, renewed.as_ref().map(|_| ()));
                    if let Err(e) = &renewed {
                        el.observer.store_error(&el.name, "renew", e);
                    }
                    match renewed {
                        Ok(()) => {
                            term.set_renew_failures(0);
                            last_ok_sent = sent;
                            last_error = None;
                            term.set_valid_until(sent + cfg.renew_deadline);
                            next_renew = sent + cfg.retry_period;
                        }
                        Err(e) if e.is_conflict() => {
                            // Our view is stale: perhaps our own last write landed unseen.
                            match self.check_still_ours(token, deadline).await {
                                Ok(None) => next_renew = Instant::now(),
                                Ok(Some(reason)) => return self.lost(&term, task, reason, None).await,
                                Err(e) if !e.is_retryable() => {
                                    let reason = LostReason::StoreError { error: e.to_string() };
                                    return self.lost(&term, task, reason, Some(e)).await;
                                }
                                Err(e) => {
                                    term.set_renew_failures(term.renew_failures().saturating_add(1));
                                    last_error = Some(e.to_string());
                                    next_renew = sent + cfg.retry_period;
                                }
                            }
                        }
                        Err(e) if !e.is_retryable() => {
                            let reason = LostReason::StoreError { error: e.to_string() };
                            return self.lost(&term, task, reason, Some(e)).await;
                        }
                        Err(e) => {
                            term.set_renew_failures(term.renew_failures().saturating_add(1));
                            warn!(election = %el.name, error = %e, "renewal failed");
                            last_error = Some(e.to_string());
                            next_renew = sent + cfg.retry_period;
                        }
                    }
                }
                woken = self.wakeups.next(&el.store, &el.name, cfg.retry_period, &*el.observer) => {
                    let event = match woken {
                        Ok(event) => event,
                        Err(e) => {
                            let reason = LostReason::StoreError { error: e.to_string() };
                            return self.lost(&term, task, reason, Some(e)).await;
                        }
                    };
                    // Our own writes (and anything else already seen) are old news: a leader
                    // costs one write per R, nothing else. Anything new — another version, a
                    // deletion, a hint — is checked with a read, since an event cannot be
                    // ordered against our own latest write.
                    if self.seen_before(&event) {
                        continue;
                    }
                    match self.check_still_ours(token, deadline).await {
                        Ok(Some(reason)) => return self.lost(&term, task, reason, None).await,
                        Ok(None) => {}
                        Err(e) if !e.is_retryable() => {
                            let reason = LostReason::StoreError { error: e.to_string() };
                            return self.lost(&term, task, reason, Some(e)).await;
                        }
                        Err(e) => last_error = Some(e.to_string()),
                    }
                }
            }
        };
        term.end_with(if ended_by_work {
            StopReason::Released
        } else {
            StopReason::ShutDown
        });
        let deadline = last_ok_sent + cfg.renew_deadline;
        if ended_by_work || cfg.release_on_shutdown {
            self.release(token, deadline).await;
        }
        self.publish(None);
        let reason = if ended_by_work {
            StopReason::Released
        } else {
            StopReason::ShutDown
        };
        let duration = term.started_at().elapsed();
        info!(election = %el.name, reason = ?reason, duration = ?duration, "term ended");
        el.observer.term_ended(&el.name, &reason, duration);
        self.stopped(&reason);
        if ended_by_work {
            Ended::Released
        } else {
            Ended::ShutDown
        }
    }

    /// One renewal of the term under `budget`.
    async fn renew(&mut self, budget: Duration) -> Result<()> {
        let el = self.el;
        let cfg = &el.config;
        let Some(obs) = self.observed.as_ref() else {
            return Err(Error::Conflict {
                store: el.store.kind(),
                name: el.name.clone(),
            });
        };
        let record = next_record(
            &Decision::Renew,
            Some(obs),
            obs.record.transitions,
            &cfg.identity,
            cfg.lease_duration,
            cfg.value.as_deref(),
            SystemTime::now(),
        );
        let mode = PutMode::Update(obs.version.clone());
        let sent = Instant::now();
        let version = with_timeout(
            el.store.kind(),
            "put",
            &el.name,
            budget,
            el.store.put(&el.name, &record, mode),
        )
        .await?;
        self.observed = Some(Observed {
            record,
            version,
            since: sent,
        });
        self.note_token();
        Ok(())
    }

    /// Re-reads while leading: `Ok(None)` if the record is still our term's (adopting its
    /// version), `Ok(Some(reason))` if it is not.
    ///
    /// The read is bounded by `deadline` (the renew deadline) as well as the call timeout, so
    /// that a hung read cannot delay stepping down.
    async fn check_still_ours(
        &mut self,
        token: u64,
        deadline: Instant,
    ) -> Result<Option<LostReason>> {
        let budget = self
            .call_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        self.read_within(budget).await?;
        Ok(
            match decide(
                self.observed.as_ref(),
                Instant::now(),
                &self.cfg().identity,
                Some(token),
            ) {
                Decision::Renew => None,
                Decision::Lost { .. } if self.observed.is_none() => Some(LostReason::Deleted),
                Decision::Lost { holder } => Some(LostReason::TakenOver { holder }),
                _ => None,
            },
        )
    }

    /// Ends a term that was lost: cancel first, tell, then wait for the work.
    async fn lost(
        &mut self,
        term: &Term,
        mut task: JoinHandle<()>,
        reason: LostReason,
        err: Option<Error>,
    ) -> Ended {
        term.end_with(StopReason::Lost(reason.clone()));
        let duration = term.started_at().elapsed();
        warn!(election = %self.el.name, reason = %reason, duration = ?duration, "lost leadership; term ended");
        self.publish(None);
        let reason = StopReason::Lost(reason);
        self.el
            .observer
            .term_ended(&self.el.name, &reason, duration);
        self.stopped(&reason);
        if tokio::time::timeout(self.cfg().drain_timeout, &mut task)
            .await
            .is_err()
        {
            warn!(election = %self.el.name, "the work ignored cancellation for drain_timeout; aborting it");
            task.abort();
        }
        Ended::Lost(err)
    }

    /// Writes holder = vacant for our term, retrying on conflict while the record is still
    /// ours, until `deadline` (after which the lease is no longer ours to release).
    async fn release(&mut self, token: u64, deadline: Instant) {
        let el = self.el;
        while Instant::now() < deadline {
            let Some(obs) = self.observed.as_ref() else {
                return;
            };
            let record = vacated(&obs.record, SystemTime::now());
            let mode = PutMode::Update(obs.version.clone());
            let budget = self
                .call_timeout
                .min(deadline.saturating_duration_since(Instant::now()));
            let sent = Instant::now();
            let released = with_timeout(
                el.store.kind(),
                "put",
                &el.name,
                budget,
                el.store.put(&el.name, &record, mode),
            )
            .await;
            debug!(operation = "release", latency = ?sent.elapsed(), ok = released.is_ok(), "store call");
            match released {
                Ok(version) => {
                    info!(election = %el.name, "released the lease");
                    self.observed = Some(Observed {
                        record,
                        version,
                        since: sent,
                    });
                    self.note_token();
                    return;
                }
                Err(e) => {
                    el.observer.store_error(&el.name, "release", &e);
                    debug!(election = %el.name, error = %e, "release failed; re-reading");
                    if !e.is_conflict() {
                        sleep(
                            self.cfg()
                                .retry_period
                                .min(deadline.saturating_duration_since(Instant::now())),
                        )
                        .await;
                    }
                    match self.check_still_ours(token, deadline).await {
                        Ok(None) => continue,
                        Ok(Some(_)) => return, // not ours any more: nothing to release
                        Err(_) => continue,
                    }
                }
            }
        }
        warn!(election = %el.name, "could not release the lease before the renew deadline; it will expire");
    }

    fn stopped(&self, reason: &StopReason) {
        if let Some(f) = &self.el.on_stopped_leading {
            f(reason);
        }
    }

    /// Publishes the state (leading with `term`, or what was observed) and fires
    /// `on_new_leader` when the holder changed.
    fn publish(&mut self, term: Option<&Term>) {
        let (state, holder) = match (term, &self.observed) {
            (Some(t), _) => (
                LeaderState::Leading(t.clone()),
                Some(t.identity().to_owned()),
            ),
            (None, Some(o)) => match &o.record.holder {
                Some(h) => (
                    LeaderState::Following(Leader {
                        identity: h.clone(),
                        value: o.record.value.clone(),
                        fencing_token: o.record.transitions,
                    }),
                    Some(h.clone()),
                ),
                None => (LeaderState::Vacant, None),
            },
            (None, None) => (LeaderState::Vacant, None),
        };
        self.el.state.send_if_modified(|cur| {
            if cur.same_as(&state) {
                false
            } else {
                *cur = state.clone();
                true
            }
        });
        if self.reported_holder.as_ref() != Some(&holder) {
            let now = Instant::now();
            let first = self.reported_holder.is_none();
            let prev_expiry = match &self.holder_expiry {
                HolderExpiry::None => None,
                HolderExpiry::At(t) => Some(*t),
                HolderExpiry::Term(t) => Some(state::add(
                    t.valid_until(),
                    self.cfg()
                        .lease_duration
                        .saturating_sub(self.cfg().renew_deadline),
                )),
            };
            let gap = match &holder {
                None => {
                    self.leaderless_since = Some(prev_expiry.map_or(now, |e| e.min(now)));
                    None
                }
                Some(_) if first => None,
                Some(_) => self
                    .leaderless_since
                    .take()
                    .or(prev_expiry)
                    .map(|since| now.saturating_duration_since(since)),
            };
            self.reported_holder = Some(holder);
            let leader = match &state {
                LeaderState::Following(l) => Some(l.clone()),
                LeaderState::Leading(t) => Some(Leader {
                    identity: t.identity().to_owned(),
                    value: self.cfg().value.clone(),
                    fencing_token: t.fencing_token(),
                }),
                _ => None,
            };
            debug!(election = %self.el.name, leader = ?leader.as_ref().map(|l| &l.identity), gap = ?gap, "leader changed");
            self.el
                .observer
                .leader_changed(&self.el.name, leader.as_ref(), gap);
            if let Some(f) = &self.el.on_new_leader {
                f(leader.as_ref());
            }
        }
        self.holder_expiry = match (&state, &self.observed) {
            (LeaderState::Leading(t), _) => HolderExpiry::Term(t.clone()),
            (LeaderState::Following(_), Some(o)) => HolderExpiry::At(o.expires_at()),
            _ => HolderExpiry::None,
        };
    }
}

/// Cancels the term and aborts its task if `run` is dropped mid-term.
struct AbortOnDrop(tokio::task::AbortHandle, Term);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.1.end();
        self.0.abort();
    }
}

fn far_future() -> Instant {
    state::add(Instant::now(), Duration::from_secs(365 * 24 * 3600))
}
