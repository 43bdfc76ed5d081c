//! Consul sessions ([`Session`], [`SessionOptions`]) and the KV calls the session locks share.
//!
//! (Documented with the [`consul`](super) module.)

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::client::{index_of, Consul, Reply, KIND};
use crate::error::{with_timeout, Error};

/// The shortest session TTL Consul accepts (its `session_ttl_min`, 10 s by default).
pub const MIN_SESSION_TTL: Duration = Duration::from_secs(10);
/// The longest session TTL Consul accepts (24 h).
pub const MAX_SESSION_TTL: Duration = Duration::from_secs(86_400);
/// The longest lock-delay Consul applies (`structs.MaxLockDelay`, 60 s).
pub const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);
/// Tenure's default session TTL: Consul's minimum, 10 s (Consul's API lock uses 15 s).
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(10);
/// Tenure's default lock-delay, 10 s (Consul's default is 15 s). It must be at least the
/// renew deadline for a holder cut off from Consul to stop before anybody else may lock; see
/// [`SessionOptions::lock_delay`].
pub const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(10);

/// What Consul does with the keys a session holds when the session is invalidated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SessionBehavior {
    /// Release the locks, keeping the keys (Consul's default, and `api.Lock`'s).
    #[default]
    Release,
    /// Delete the keys (`api.Semaphore`'s contender keys; like ZooKeeper's ephemeral nodes).
    Delete,
}

impl SessionBehavior {
    /// Consul's name: `"release"` or `"delete"`.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionBehavior::Release => "release",
            SessionBehavior::Delete => "delete",
        }
    }
}

/// How to create a [`Session`]: name, TTL, lock-delay, behaviour, node and health checks, and
/// the local renew deadline. Validated by [`validate`](Self::validate) (and by
/// [`Session::create`]).
///
/// ```
/// use std::time::Duration;
/// use tenure::consul::{SessionBehavior, SessionOptions};
///
/// let opts = SessionOptions::new()
///     .name("nightly report")
///     .ttl(Duration::from_secs(10))
///     .lock_delay(Duration::from_secs(10))
///     .behavior(SessionBehavior::Release)
///     .service_checks(["service:report"]);
/// opts.validate().unwrap();
/// ```
#[derive(Clone, Debug, PartialEq)]
#[must_use]
pub struct SessionOptions {
    name: String,
    ttl: Duration,
    lock_delay: Duration,
    behavior: SessionBehavior,
    node: Option<String>,
    node_checks: Option<Vec<String>>,
    service_checks: Vec<String>,
    renew_deadline: Option<Duration>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions::new()
    }
}

impl SessionOptions {
    /// Defaults: named `tenure <hostname_pid_random>`, TTL [`DEFAULT_SESSION_TTL`] (10 s),
    /// lock-delay [`DEFAULT_LOCK_DELAY`] (10 s), behaviour `release`, the agent's node, and
    /// Consul's default check (the node's `serfHealth`).
    pub fn new() -> Self {
        SessionOptions {
            name: format!("tenure {}", crate::elector::default_identity()),
            ttl: DEFAULT_SESSION_TTL,
            lock_delay: DEFAULT_LOCK_DELAY,
            behavior: SessionBehavior::Release,
            node: None,
            node_checks: None,
            service_checks: Vec::new(),
            renew_deadline: None,
        }
    }

    /// The session's name, shown by `consul` and the UI.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The TTL: Consul invalidates the session if no renewal arrives for this long (in fact
    /// after up to twice as long). Between 10 s and 24 h; whole milliseconds.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The lock-delay: after the session is invalidated, nobody may lock the keys it held for
    /// this long (0 to 60 s). A holder that cannot reach Consul stops at the renew deadline;
    /// with health checks (the default `serfHealth`), Consul may invalidate the session any
    /// time after the last successful renewal, so a lock-delay of at least the renew deadline
    /// keeps the next holder out until then. A graceful release has no lock-delay.
    pub fn lock_delay(mut self, delay: Duration) -> Self {
        self.lock_delay = delay;
        self
    }

    /// What happens to the held keys on invalidation (default [`SessionBehavior::Release`]).
    pub fn behavior(mut self, behavior: SessionBehavior) -> Self {
        self.behavior = behavior;
        self
    }

    /// The node the session belongs to (default: the agent's own).
    pub fn node(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }

    /// The node health checks that invalidate the session when they fail (`NodeChecks`).
    /// Without this setting Consul uses `["serfHealth"]`: the session ends when the node is
    /// declared failed. An empty list means no node check (only the TTL, and the service
    /// checks).
    pub fn node_checks<I, S>(mut self, checks: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.node_checks = Some(checks.into_iter().map(Into::into).collect());
        self
    }

    /// Service health checks (by check ID) that invalidate the session when they fail
    /// (`ServiceChecks`, Consul 1.7 and later).
    pub fn service_checks<I, S>(mut self, checks: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.service_checks = checks.into_iter().map(Into::into).collect();
        self
    }

    /// The local renew deadline: the holding ends when no renewal succeeded for this long
    /// since the last good one was sent. Between half the TTL and the TTL (exclusive), so
    /// that at least one retry fits and the session is ended here before Consul may
    /// invalidate it. Default: three quarters of the TTL.
    pub fn renew_deadline(mut self, d: Duration) -> Self {
        self.renew_deadline = Some(d);
        self
    }

    /// The name.
    pub fn get_name(&self) -> &str {
        &self.name
    }

    /// The TTL.
    pub fn get_ttl(&self) -> Duration {
        self.ttl
    }

    /// The lock-delay.
    pub fn get_lock_delay(&self) -> Duration {
        self.lock_delay
    }

    /// The behaviour.
    pub fn get_behavior(&self) -> SessionBehavior {
        self.behavior
    }

    /// The renew deadline in effect: the one set, or three quarters of the TTL.
    pub fn effective_renew_deadline(&self) -> Duration {
        self.renew_deadline.unwrap_or(self.ttl * 3 / 4)
    }

    /// Checks the rules: TTL in 10 s..=24 h in whole milliseconds, lock-delay in 0..=60 s,
    /// renew deadline strictly between TTL / 2 and the TTL, no empty check ID.
    pub fn validate(&self) -> crate::Result<()> {
        if self.ttl < MIN_SESSION_TTL || self.ttl > MAX_SESSION_TTL {
            return Err(Error::config(format!(
                "the session TTL ({:?}) must be between {MIN_SESSION_TTL:?} and {MAX_SESSION_TTL:?}",
                self.ttl
            )));
        }
        if !self.ttl.subsec_nanos().is_multiple_of(1_000_000) {
            return Err(Error::config(format!(
                "the session TTL ({:?}) must be a whole number of milliseconds",
                self.ttl
            )));
        }
        if self.lock_delay > MAX_LOCK_DELAY {
            return Err(Error::config(format!(
                "the lock-delay ({:?}) must be at most {MAX_LOCK_DELAY:?}",
                self.lock_delay
            )));
        }
        let d = self.effective_renew_deadline();
        if d <= self.ttl / 2 || d >= self.ttl {
            return Err(Error::config(format!(
                "the renew deadline ({d:?}) must be longer than half the session TTL and \
                 shorter than the TTL ({:?})",
                self.ttl
            )));
        }
        let empty = |v: &[String]| v.iter().any(|c| c.trim().is_empty());
        if self.node_checks.as_deref().is_some_and(empty) || empty(&self.service_checks) {
            return Err(Error::config("a session health check ID must not be empty"));
        }
        Ok(())
    }

    /// The body of `PUT /v1/session/create`.
    fn create_body(&self) -> serde_json::Value {
        let mut body = serde_json::json!({
            "Name": self.name,
            "TTL": go_duration(self.ttl),
            "LockDelay": go_duration(self.lock_delay),
            "Behavior": self.behavior.as_str(),
        });
        let obj = body.as_object_mut().expect("an object");
        if let Some(node) = &self.node {
            obj.insert("Node".into(), node.clone().into());
        }
        if let Some(checks) = &self.node_checks {
            obj.insert("NodeChecks".into(), checks.clone().into());
        }
        if !self.service_checks.is_empty() {
            let checks: Vec<_> = self
                .service_checks
                .iter()
                .map(|id| serde_json::json!({ "ID": id }))
                .collect();
            obj.insert("ServiceChecks".into(), checks.into());
            if self.node_checks.is_none() {
                // Consul replaces its default serfHealth only when NodeChecks is given; keep it.
                obj.insert("NodeChecks".into(), serde_json::json!(["serfHealth"]));
            }
        }
        body
    }
}

/// A duration as Go's `time.ParseDuration` reads it: `"10s"`, `"1500ms"`.
pub(crate) fn go_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}ns", d.as_nanos())
    }
}

/// Parses a Go duration of the forms Consul writes (`"10s"`, `"1m30s"`, `"1500ms"`, `"0s"`).
pub(crate) fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() || s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * scale;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// Why a [`Session`] ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEnd {
    /// Consul invalidated it: its TTL ran out, one of its health checks failed, or somebody
    /// destroyed it. Consul released (or deleted) its keys.
    Invalidated,
    /// No renewal succeeded within the renew deadline (the agent unreachable or slow); the
    /// session may still live in Consul until its TTL runs out.
    RenewDeadlineExceeded {
        /// The last renewal error.
        last_error: Option<String>,
    },
    /// Consul refused a renewal for good (for example the token lost its permission).
    Refused {
        /// The error.
        error: String,
    },
    /// Destroyed through this handle.
    Destroyed,
}

impl std::fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionEnd::Invalidated => f.write_str(
                "Consul invalidated the session (TTL expired, a health check failed, or it was \
                 destroyed)",
            ),
            SessionEnd::RenewDeadlineExceeded {
                last_error: Some(e),
            } => write!(
                f,
                "no session renewal succeeded within the renew deadline (last error: {e})"
            ),
            SessionEnd::RenewDeadlineExceeded { last_error: None } => {
                f.write_str("no session renewal succeeded within the renew deadline")
            }
            SessionEnd::Refused { error } => write!(f, "Consul refused the renewal: {error}"),
            SessionEnd::Destroyed => f.write_str("the session was destroyed"),
        }
    }
}

/// What a session's keeper publishes.
#[derive(Clone, Debug)]
pub(crate) struct SessionState {
    /// The local deadline: the send time of the last good renewal (or of the create) plus the
    /// renew deadline.
    pub(crate) valid_until: Instant,
    /// The earliest instant Consul may invalidate the session: the send time of the last good
    /// renewal plus the TTL. Nobody else can lock the session's keys before it.
    pub(crate) safe_until: Instant,
    pub(crate) renew_failures: u32,
    pub(crate) ended: Option<SessionEnd>,
}

/// A Consul session, renewed in the background (see the [module docs](super)).
///
/// Clones share the session. When the last handle of a session that [`create`](Self::create)
/// made is dropped, the session is destroyed in the background.
///
/// ```no_run
/// # async fn f(consul: tenure::consul::Consul) -> tenure::Result<()> {
/// use std::time::Duration;
/// use tenure::consul::{Session, SessionOptions};
///
/// let session = Session::create(&consul, &SessionOptions::new().ttl(Duration::from_secs(15))).await?;
/// println!("session {} renews every {:?}", session.id(), session.ttl() / 2);
/// tokio::select! {
///     _ = session.token().cancelled() => println!("ended: {:?}", session.end_reason()),
///     _ = tokio::time::sleep(Duration::from_secs(60)) => session.destroy().await?,
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Session {
    inner: Arc<SessionInner>,
}

struct SessionInner {
    consul: Consul,
    id: String,
    options: SessionOptions,
    state: watch::Sender<SessionState>,
    token: CancellationToken,
    /// Stops the keeper.
    stop: CancellationToken,
}

impl Drop for SessionInner {
    fn drop(&mut self) {
        self.stop.cancel();
        if self.state.borrow().ended.is_some() {
            return;
        }
        end(&self.state, &self.token, SessionEnd::Destroyed);
        let (consul, id) = (self.consul.clone(), self.id.clone());
        spawn_detached(async move {
            if let Err(e) = destroy_session(&consul, &id).await {
                tracing::debug!(session = %id, error = %e, "consul: destroying a dropped session failed; it expires with its TTL");
            }
        });
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.inner.id)
            .field("ttl", &self.inner.options.ttl)
            .field("lock_delay", &self.inner.options.lock_delay)
            .field("behavior", &self.inner.options.behavior)
            .field("ended", &self.inner.state.borrow().ended)
            .finish()
    }
}

fn end(state: &watch::Sender<SessionState>, token: &CancellationToken, reason: SessionEnd) {
    state.send_if_modified(|s| {
        if s.ended.is_none() {
            s.ended = Some(reason);
            true
        } else {
            false
        }
    });
    token.cancel();
}

impl Session {
    /// Creates a session (`PUT /v1/session/create`) and starts renewing it.
    ///
    /// [`Error::Config`] for invalid options; [`Error::PermissionDenied`] without
    /// `session:write` on the node; [`Error::Rejected`] or [`Error::Unavailable`] with
    /// Consul's reason when it refuses (an unknown check, a TTL outside the server's bounds).
    pub async fn create(consul: &Consul, options: &SessionOptions) -> crate::Result<Session> {
        options.validate()?;
        let sent = Instant::now();
        let req = consul
            .request(Method::PUT, "/session/create")
            .body(options.create_body().to_string());
        let reply = consul
            .call(req, "create session", &options.name, consul.timeout())
            .await?;
        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "ID")]
            id: String,
        }
        let created: Created = match reply.status {
            s if s.is_success() => serde_json::from_slice(&reply.body)
                .map_err(|e| unexpected("create session", &options.name, e))?,
            _ => return Err(refused("create session", &options.name, &reply)),
        };
        let state = SessionState {
            valid_until: sent + options.effective_renew_deadline(),
            safe_until: sent + options.ttl,
            renew_failures: 0,
            ended: None,
        };
        let inner = Arc::new(SessionInner {
            consul: consul.clone(),
            id: created.id,
            options: options.clone(),
            state: watch::Sender::new(state),
            token: CancellationToken::new(),
            stop: CancellationToken::new(),
        });
        tracing::debug!(session = %inner.id, ttl = ?options.ttl, "consul: session created");
        tokio::spawn(keep(
            consul.clone(),
            inner.id.clone(),
            options.clone(),
            inner.state.clone(),
            inner.token.clone(),
            inner.stop.clone(),
        ));
        Ok(Session { inner })
    }

    /// The session's ID (a UUID).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The options it was created with.
    pub fn options(&self) -> &SessionOptions {
        &self.inner.options
    }

    /// The TTL.
    pub fn ttl(&self) -> Duration {
        self.inner.options.ttl
    }

    /// The lock-delay.
    pub fn lock_delay(&self) -> Duration {
        self.inner.options.lock_delay
    }

    /// The local deadline: the send time of the last successful renewal plus the renew
    /// deadline. The session ends here if no renewal succeeds before.
    pub fn valid_until(&self) -> Instant {
        self.inner.state.borrow().valid_until
    }

    /// How many renewals in a row have failed.
    pub fn renew_failures(&self) -> u32 {
        self.inner.state.borrow().renew_failures
    }

    /// Whether the session is still alive, as far as this handle knows.
    pub fn is_alive(&self) -> bool {
        self.inner.state.borrow().ended.is_none()
    }

    /// Why the session ended, once it has.
    pub fn end_reason(&self) -> Option<SessionEnd> {
        self.inner.state.borrow().ended.clone()
    }

    /// The token cancelled when the session ends (invalidated, renew deadline, destroyed).
    pub fn token(&self) -> &CancellationToken {
        &self.inner.token
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<SessionState> {
        self.inner.state.subscribe()
    }

    pub(crate) fn state(&self) -> SessionState {
        self.inner.state.borrow().clone()
    }

    /// Records that the session was found invalidated (a lock saw Consul release its key).
    pub(crate) fn mark_invalidated(&self) {
        end(
            &self.inner.state,
            &self.inner.token,
            SessionEnd::Invalidated,
        );
    }

    /// Destroys the session (`PUT /v1/session/destroy`): Consul releases (or deletes) its
    /// keys, applying the lock-delay to locks it still held. Ends this handle (and its
    /// clones) with [`SessionEnd::Destroyed`] whatever the outcome.
    pub async fn destroy(&self) -> crate::Result<()> {
        self.inner.stop.cancel();
        end(&self.inner.state, &self.inner.token, SessionEnd::Destroyed);
        destroy_session(&self.inner.consul, &self.inner.id).await
    }

    /// Consul's view of the session (`GET /v1/session/info`, consistent); `None` if it no
    /// longer exists (invalidated).
    pub async fn info(&self) -> crate::Result<Option<SessionInfo>> {
        Session::info_of(&self.inner.consul, &self.inner.id).await
    }

    /// Consul's view of any session by ID; `None` if it does not exist.
    pub async fn info_of(consul: &Consul, id: &str) -> crate::Result<Option<SessionInfo>> {
        let path = format!("/session/info/{}", escape_key(id));
        let req = consul
            .request(Method::GET, &path)
            .query(&[("consistent", "")]);
        let reply = consul
            .call(req, "session info", id, consul.timeout())
            .await?;
        if !reply.status.is_success() {
            return Err(refused("session info", id, &reply));
        }
        let list: Option<Vec<RawSession>> =
            serde_json::from_slice(&reply.body).map_err(|e| unexpected("session info", id, e))?;
        Ok(list
            .unwrap_or_default()
            .into_iter()
            .next()
            .map(RawSession::into_info))
    }
}

/// Consul's record of a session (`GET /v1/session/info/:id`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The ID.
    pub id: String,
    /// The name.
    pub name: String,
    /// The node it belongs to.
    pub node: String,
    /// The lock-delay.
    pub lock_delay: Duration,
    /// `"release"` or `"delete"`.
    pub behavior: String,
    /// The TTL, if it has one.
    pub ttl: Option<Duration>,
    /// The node checks.
    pub node_checks: Vec<String>,
    /// The service checks' IDs.
    pub service_checks: Vec<String>,
    /// The Raft index of its creation.
    pub create_index: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawSession {
    #[serde(rename = "ID")]
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    node: String,
    /// Nanoseconds.
    #[serde(default)]
    lock_delay: u64,
    #[serde(default)]
    behavior: String,
    #[serde(default, rename = "TTL")]
    ttl: String,
    #[serde(default)]
    node_checks: Option<Vec<String>>,
    #[serde(default)]
    service_checks: Option<Vec<RawServiceCheck>>,
    #[serde(default)]
    create_index: u64,
}

#[derive(Deserialize)]
struct RawServiceCheck {
    #[serde(rename = "ID")]
    id: String,
}

impl RawSession {
    fn into_info(self) -> SessionInfo {
        SessionInfo {
            id: self.id,
            name: self.name,
            node: self.node,
            lock_delay: Duration::from_nanos(self.lock_delay),
            behavior: self.behavior,
            ttl: parse_go_duration(&self.ttl).filter(|d| !d.is_zero()),
            node_checks: self.node_checks.unwrap_or_default(),
            service_checks: self
                .service_checks
                .unwrap_or_default()
                .into_iter()
                .map(|c| c.id)
                .collect(),
            create_index: self.create_index,
        }
    }
}

async fn destroy_session(consul: &Consul, id: &str) -> crate::Result<()> {
    let path = format!("/session/destroy/{}", escape_key(id));
    let reply = consul
        .call(
            consul.request(Method::PUT, &path),
            "destroy session",
            id,
            consul.timeout(),
        )
        .await?;
    if reply.status.is_success() || reply.status == StatusCode::NOT_FOUND {
        Ok(())
    } else {
        Err(refused("destroy session", id, &reply))
    }
}

/// One renewal: the TTL Consul answers with, or `None` if the session no longer exists.
async fn renew_session(consul: &Consul, id: &str) -> crate::Result<Option<Option<Duration>>> {
    let path = format!("/session/renew/{}", escape_key(id));
    let reply = consul
        .call(
            consul.request(Method::PUT, &path),
            "renew session",
            id,
            consul.timeout(),
        )
        .await?;
    match reply.status {
        StatusCode::NOT_FOUND => Ok(None),
        s if s.is_success() => {
            let list: Option<Vec<RawSession>> = serde_json::from_slice(&reply.body)
                .map_err(|e| unexpected("renew session", id, e))?;
            match list.unwrap_or_default().into_iter().next() {
                Some(s) => Ok(Some(parse_go_duration(&s.ttl).filter(|d| !d.is_zero()))),
                None => Ok(None),
            }
        }
        _ => Err(refused("renew session", id, &reply)),
    }
}

/// The keeper: renews every TTL / 2 (every `retry` after a failure) and ends the session when
/// it is found gone, when the renew deadline passes, or when a renewal is refused for good.
async fn keep(
    consul: Consul,
    id: String,
    options: SessionOptions,
    state: watch::Sender<SessionState>,
    token: CancellationToken,
    stop: CancellationToken,
) {
    let mut ttl = options.ttl;
    let mut deadline = options.effective_renew_deadline();
    let retry = (ttl / 10).min(Duration::from_secs(1));
    let mut next = Instant::now() + ttl / 2;
    let mut last_error: Option<String> = None;
    loop {
        let valid_until = state.borrow().valid_until;
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = token.cancelled() => return,
            _ = tokio::time::sleep_until(valid_until) => {
                expire(&consul, &id, &state, &token, last_error.take());
                return;
            }
            _ = tokio::time::sleep_until(next) => {}
        }
        let sent = Instant::now();
        let result = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = token.cancelled() => return,
            _ = tokio::time::sleep_until(valid_until) => {
                expire(&consul, &id, &state, &token, last_error.take());
                return;
            }
            r = renew_session(&consul, &id) => r,
        };
        match result {
            Ok(Some(new_ttl)) => {
                if let Some(t) = new_ttl {
                    if t != ttl {
                        ttl = t;
                        deadline = options.effective_renew_deadline().min(t * 3 / 4);
                    }
                }
                last_error = None;
                state.send_modify(|s| {
                    s.valid_until = sent + deadline;
                    s.safe_until = sent + ttl;
                    s.renew_failures = 0;
                });
                next = sent + ttl / 2;
            }
            Ok(None) => {
                tracing::info!(session = %id, "consul: session invalidated (renewal found it gone)");
                end(&state, &token, SessionEnd::Invalidated);
                return;
            }
            Err(e) if !e.is_retryable() => {
                tracing::warn!(session = %id, error = %e, "consul: session renewal refused");
                end(
                    &state,
                    &token,
                    SessionEnd::Refused {
                        error: e.to_string(),
                    },
                );
                return;
            }
            Err(e) => {
                tracing::debug!(session = %id, error = %e, "consul: session renewal failed; retrying");
                last_error = Some(error_chain(&e));
                state.send_modify(|s| s.renew_failures += 1);
                next = Instant::now() + retry;
            }
        }
    }
}

/// Ends the session at its renew deadline, and tries once to destroy it so that Consul frees
/// its keys at once if it can be reached after all.
fn expire(
    consul: &Consul,
    id: &str,
    state: &watch::Sender<SessionState>,
    token: &CancellationToken,
    last_error: Option<String>,
) {
    tracing::warn!(session = %id, "consul: no session renewal succeeded within the renew deadline");
    end(
        state,
        token,
        SessionEnd::RenewDeadlineExceeded { last_error },
    );
    let (consul, id) = (consul.clone(), id.to_owned());
    spawn_detached(async move {
        let _ = destroy_session(&consul, &id).await;
    });
}

/// An error and its sources, as one line.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Runs `fut` on the current Tokio runtime, if there is one (drops happen anywhere).
pub(crate) fn spawn_detached(fut: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(fut);
    }
}

// ---------------------------------------------------------------------------------------------
// KV calls shared by the lock and the semaphore.

/// A KV entry as Consul returns it.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct KvEntry {
    pub(crate) key: String,
    #[serde(default)]
    pub(crate) flags: u64,
    /// Base64, as Consul sends it.
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    pub(crate) lock_index: u64,
    #[serde(default)]
    pub(crate) modify_index: u64,
}

impl KvEntry {
    /// The session holding the key, if any.
    pub(crate) fn session(&self) -> Option<&str> {
        self.session.as_deref().filter(|s| !s.is_empty())
    }

    /// The value, decoded.
    pub(crate) fn value(&self) -> Vec<u8> {
        self.value
            .as_deref()
            .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
            .unwrap_or_default()
    }
}

/// Percent-encodes a key for a URL path, keeping `/`.
pub(crate) fn escape_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Cleans a KV path as Go's `path.Join`/`strings.TrimPrefix(prefix, "/")` do for
/// `consul lock`: no leading `/`, no empty components. [`Error::InvalidName`] for `.`/`..`
/// components or an empty path.
pub(crate) fn clean_path(path: &str) -> crate::Result<String> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let bad = |reason: &str| {
        Err(Error::InvalidName {
            store: KIND,
            name: path.to_owned(),
            reason: reason.to_owned(),
        })
    };
    if parts.is_empty() {
        return bad("a lock needs a non-empty key path");
    }
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return bad("has a '.' or '..' component");
    }
    Ok(parts.join("/"))
}

/// How a KV read is made.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Read {
    /// `?consistent`, no waiting.
    Consistent,
    /// Consistent blocking query from `index`, for at most `wait`.
    ConsistentBlocking { index: u64, wait: Duration },
    /// Default-consistency blocking query (as `api.Lock` waits).
    Blocking { index: u64, wait: Duration },
}

/// `GET /v1/kv/<key>` (with `?recurse` for `recurse`): the entries (empty if none) and
/// `X-Consul-Index`.
pub(crate) async fn kv_read(
    consul: &Consul,
    key: &str,
    recurse: bool,
    read: Read,
    operation: &'static str,
) -> crate::Result<(Vec<KvEntry>, u64)> {
    let mut req = consul.request(Method::GET, &format!("/kv/{}", escape_key(key)));
    if recurse {
        req = req.query(&[("recurse", "")]);
    }
    let reply = match read {
        Read::Consistent => {
            req = req.query(&[("consistent", "")]);
            consul.call(req, operation, key, consul.timeout()).await?
        }
        Read::ConsistentBlocking { index, wait } | Read::Blocking { index, wait } => {
            if matches!(read, Read::ConsistentBlocking { .. }) {
                req = req.query(&[("consistent", "")]);
            }
            let wait_ms = wait.as_millis().max(1);
            req = req.query(&[
                ("index", index.to_string()),
                ("wait", format!("{wait_ms}ms")),
            ]);
            let timeout = wait + wait / 16 + consul.timeout();
            blocking_call(consul, req, operation, key, timeout).await?
        }
    };
    let index = reply.index.unwrap_or(0);
    match reply.status {
        StatusCode::NOT_FOUND => Ok((Vec::new(), index)),
        s if s.is_success() => {
            let entries: Option<Vec<KvEntry>> =
                serde_json::from_slice(&reply.body).map_err(|e| unexpected(operation, key, e))?;
            Ok((entries.unwrap_or_default(), index))
        }
        _ => Err(refused(operation, key, &reply)),
    }
}

async fn blocking_call(
    consul: &Consul,
    req: reqwest::RequestBuilder,
    operation: &'static str,
    name: &str,
    timeout: Duration,
) -> crate::Result<Reply> {
    with_timeout(KIND, operation, name, timeout, async {
        let resp = consul.send_blocking(req, operation, name, timeout).await?;
        let status = resp.status();
        let index = index_of(&resp);
        let body = resp.bytes().await.map_err(|e| Error::Unavailable {
            store: KIND,
            source: Box::new(e),
        })?;
        Ok(Reply {
            status,
            index,
            body: body.to_vec(),
        })
    })
    .await
}

/// Consul's blocking-index rules: reset to 0 when the index goes backwards, never wait on 0.
pub(crate) fn next_index(previous: u64, returned: u64) -> u64 {
    if returned < previous {
        0
    } else {
        returned.max(1)
    }
}

/// A KV operation in a transaction (`PUT /v1/txn`).
pub(crate) fn txn_op(verb: &str, key: &str) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    m.insert("Verb".into(), verb.into());
    m.insert("Key".into(), key.into());
    m
}

/// Encodes a value for a transaction.
pub(crate) fn b64(value: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(value)
}

/// The outcome of a transaction.
pub(crate) enum Txn {
    /// Applied: the entries of the operations that return one (values blanked, indexes set).
    Applied(Vec<KvEntry>),
    /// Refused (409): Consul's reasons, by operation index.
    Refused(Vec<(usize, String)>),
}

/// Runs a transaction of KV operations. A refusal naming a permission is
/// [`Error::PermissionDenied`].
pub(crate) async fn txn(
    consul: &Consul,
    ops: Vec<serde_json::Map<String, serde_json::Value>>,
    operation: &'static str,
    name: &str,
) -> crate::Result<Txn> {
    let body: Vec<serde_json::Value> = ops
        .into_iter()
        .map(|op| serde_json::json!({ "KV": op }))
        .collect();
    let req = consul
        .request(Method::PUT, "/txn")
        .body(serde_json::Value::Array(body).to_string());
    let reply = consul.call(req, operation, name, consul.timeout()).await?;
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Reply_ {
        #[serde(default)]
        results: Option<Vec<TxnResult>>,
        #[serde(default)]
        errors: Option<Vec<TxnError>>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct TxnResult {
        #[serde(rename = "KV")]
        kv: Option<KvEntry>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct TxnError {
        #[serde(default)]
        op_index: usize,
        #[serde(default)]
        what: String,
    }
    let parse = |body: &[u8]| -> crate::Result<Reply_> {
        serde_json::from_slice(body).map_err(|e| unexpected(operation, name, e))
    };
    match reply.status {
        s if s.is_success() => {
            let r = parse(&reply.body)?;
            Ok(Txn::Applied(
                r.results
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|r| r.kv)
                    .collect(),
            ))
        }
        StatusCode::CONFLICT => {
            let r = parse(&reply.body)?;
            let errors: Vec<(usize, String)> = r
                .errors
                .unwrap_or_default()
                .into_iter()
                .map(|e| (e.op_index, e.what))
                .collect();
            if let Some((_, what)) = errors
                .iter()
                .find(|(_, w)| w.to_ascii_lowercase().contains("permission denied"))
            {
                return Err(Error::PermissionDenied {
                    store: KIND,
                    operation,
                    name: name.to_owned(),
                    source: format!("Consul refused the transaction on {name:?}: {what}").into(),
                });
            }
            Ok(Txn::Refused(errors))
        }
        _ => Err(refused(operation, name, &reply)),
    }
}

/// A reply with an unexpected status (404 or 409 where none was expected).
pub(crate) fn refused(operation: &'static str, name: &str, reply: &Reply) -> Error {
    Error::Backend {
        store: KIND,
        source: format!(
            "{operation} of {name:?}: Consul answered {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body).trim()
        )
        .into(),
    }
}

/// A reply that could not be decoded.
pub(crate) fn unexpected(operation: &'static str, name: &str, e: serde_json::Error) -> Error {
    Error::Backend {
        store: KIND,
        source: format!("{operation} of {name:?}: unexpected reply from Consul: {e}").into(),
    }
}

/// Exponential backoff with jitter between retries of transient failures.
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff {
            next: Duration::from_millis(50),
        }
    }

    /// Sleeps for the next delay (jittered); `false` at once if `deadline` comes first.
    pub(crate) async fn sleep(&mut self, deadline: Option<Instant>) -> bool {
        let wake = Instant::now() + self.next_delay();
        match deadline {
            Some(d) if d <= wake => {
                tokio::time::sleep_until(d).await;
                false
            }
            _ => {
                tokio::time::sleep_until(wake).await;
                true
            }
        }
    }

    /// The next delay (jittered), without sleeping.
    pub(crate) fn next_delay(&mut self) -> Duration {
        use rand::Rng;
        let jittered = self.next.mul_f64(rand::thread_rng().gen_range(0.5..1.0));
        self.next = (self.next * 2).min(Duration::from_secs(1));
        jittered
    }

    pub(crate) fn reset(&mut self) {
        self.next = Duration::from_millis(50);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_validated() {
        let ok = SessionOptions::new();
        ok.validate().unwrap();
        assert_eq!(ok.effective_renew_deadline(), Duration::from_millis(7500));
        let bad = |o: SessionOptions| assert!(matches!(o.validate(), Err(Error::Config { .. })));
        bad(SessionOptions::new().ttl(Duration::from_secs(9)));
        bad(SessionOptions::new().ttl(Duration::from_secs(86_401)));
        bad(SessionOptions::new().ttl(Duration::from_micros(10_000_001)));
        bad(SessionOptions::new().lock_delay(Duration::from_secs(61)));
        bad(SessionOptions::new().renew_deadline(Duration::from_secs(5)));
        bad(SessionOptions::new().renew_deadline(Duration::from_secs(10)));
        bad(SessionOptions::new().node_checks([""]));
        SessionOptions::new()
            .ttl(MAX_SESSION_TTL)
            .lock_delay(Duration::ZERO)
            .validate()
            .unwrap();
    }

    #[test]
    fn create_bodies() {
        let b = SessionOptions::new()
            .name("n")
            .ttl(Duration::from_millis(10_500))
            .lock_delay(Duration::ZERO)
            .create_body();
        assert_eq!(b["TTL"], "10500ms");
        assert_eq!(b["LockDelay"], "0s");
        assert_eq!(b["Behavior"], "release");
        assert!(b.get("NodeChecks").is_none());
        let b = SessionOptions::new()
            .behavior(SessionBehavior::Delete)
            .service_checks(["svc"])
            .create_body();
        assert_eq!(b["Behavior"], "delete");
        assert_eq!(b["NodeChecks"], serde_json::json!(["serfHealth"]));
        assert_eq!(b["ServiceChecks"], serde_json::json!([{ "ID": "svc" }]));
        let b = SessionOptions::new()
            .node_checks(Vec::<String>::new())
            .create_body();
        assert_eq!(b["NodeChecks"], serde_json::json!([]));
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("15s"), Some(Duration::from_secs(15)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(
            parse_go_duration("1500ms"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_go_duration(""), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("x"), None);
        assert_eq!(go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(go_duration(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn paths_and_indexes() {
        assert_eq!(
            clean_path("/service/web//leader/").unwrap(),
            "service/web/leader"
        );
        assert!(clean_path("/").is_err());
        assert!(clean_path("a/../b").is_err());
        assert_eq!(escape_key("a b/c%"), "a%20b/c%25");
        assert_eq!(next_index(10, 5), 0);
        assert_eq!(next_index(10, 12), 12);
        assert_eq!(next_index(0, 0), 1);
    }
}
