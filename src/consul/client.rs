//! [`Consul`]: a handle on Consul's HTTP API, shared by the record store and the session locks.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use tokio::sync::Semaphore;
use tracing::debug;

use crate::error::{with_timeout, BoxError, Error, Result};

pub(crate) const KIND: &str = "consul";

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "tenure/";
/// The default address, as Consul's own tools assume.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:8500";
/// The default deadline of each call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// The default number of HTTP connections a [`Consul`] handle opens at most (half for calls,
/// half for blocking queries); Consul accepts 200 per client address
/// (`limits.http_max_conns_per_client`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 128;

/// How to reach a Consul agent: address, ACL token, datacenter, key prefix, TLS roots and the
/// call timeout. Build it with [`ConsulOptions::new`] or [`ConsulOptions::from_env`], then
/// [`connect`](ConsulOptions::connect).
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> tenure::Result<()> {
/// use std::time::Duration;
/// use tenure::consul::{ConsulOptions, ConsulStore};
///
/// let consul = ConsulOptions::from_env()          // CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, ...
///     .prefix("billing/")
///     .timeout(Duration::from_secs(1))
///     .connect()
///     .await?;
/// let elector = tenure::LeaderElector::builder(ConsulStore::new(consul), "scheduler").build()?;
/// # let _ = elector; Ok(()) }
/// ```
#[derive(Clone)]
#[must_use]
pub struct ConsulOptions {
    address: String,
    token: Option<String>,
    token_file: Option<String>,
    datacenter: Option<String>,
    prefix: String,
    ca_bundle: Vec<u8>,
    ca_file: Option<String>,
    ssl: bool,
    skip_verify: bool,
    timeout: Duration,
    max_connections: usize,
}

impl fmt::Debug for ConsulOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulOptions")
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("token_file", &self.token_file)
            .field("datacenter", &self.datacenter)
            .field("prefix", &self.prefix)
            .field("ca_bundle", &format_args!("{} bytes", self.ca_bundle.len()))
            .field("ca_file", &self.ca_file)
            .field("ssl", &self.ssl)
            .field("skip_verify", &self.skip_verify)
            .field("timeout", &self.timeout)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl ConsulOptions {
    /// Options for the agent at `address`: `http://host:port`, `https://host:port`, or
    /// `host:port` (plain HTTP, as `CONSUL_HTTP_ADDR`). No token, the agent's datacenter, the
    /// prefix `tenure/`, a 2 s timeout.
    pub fn new(address: impl Into<String>) -> Self {
        ConsulOptions {
            address: address.into(),
            token: None,
            token_file: None,
            datacenter: None,
            prefix: DEFAULT_PREFIX.to_owned(),
            ca_bundle: Vec::new(),
            ca_file: None,
            ssl: false,
            skip_verify: false,
            timeout: DEFAULT_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }

    /// Options from the environment, as Consul's own command-line tools read it:
    /// `CONSUL_HTTP_ADDR` (default `127.0.0.1:8500`; `https://` or `CONSUL_HTTP_SSL=true` for
    /// TLS), `CONSUL_HTTP_TOKEN` (or the file named by `CONSUL_HTTP_TOKEN_FILE`),
    /// `CONSUL_CACERT` (a PEM file of extra roots) and `CONSUL_HTTP_SSL_VERIFY=false` (no
    /// certificate verification: for tests only). Files are read by
    /// [`connect`](Self::connect). Unset or empty variables keep the defaults.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut o = ConsulOptions::new(var("CONSUL_HTTP_ADDR").unwrap_or(DEFAULT_ADDRESS.into()));
        o.token = var("CONSUL_HTTP_TOKEN");
        if o.token.is_none() {
            o.token_file = var("CONSUL_HTTP_TOKEN_FILE");
        }
        o.ssl = var("CONSUL_HTTP_SSL").is_some_and(|v| parse_bool(&v) == Some(true));
        o.skip_verify =
            var("CONSUL_HTTP_SSL_VERIFY").is_some_and(|v| parse_bool(&v) == Some(false));
        o.ca_file = var("CONSUL_CACERT");
        o
    }

    /// The ACL token, sent as `X-Consul-Token` with every request. An empty token means none
    /// (the agent's default token).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        let t = token.into();
        self.token = (!t.is_empty()).then_some(t);
        self.token_file = None;
        self
    }

    /// The datacenter (`?dc=`) every request targets; by default the agent's own.
    pub fn datacenter(mut self, dc: impl Into<String>) -> Self {
        let dc = dc.into();
        self.datacenter = (!dc.is_empty()).then_some(dc);
        self
    }

    /// The prefix of every key (default `tenure/`); stores and locks with different prefixes
    /// never see each other. Give it a trailing `/` to keep tenure's keys in a folder of their
    /// own.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Extra root certificates (PEM, one or more) trusted for `https://` addresses, besides
    /// the system's.
    pub fn ca_bundle(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_bundle = pem.into();
        self
    }

    /// A PEM file of extra root certificates (as `CONSUL_CACERT`), read by
    /// [`connect`](Self::connect): a file that cannot be read, or holds no certificate, is
    /// [`Error::Config`].
    pub fn ca_file(mut self, path: impl Into<String>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Skips the verification of the agent's certificate (as `CONSUL_HTTP_SSL_VERIFY=false`):
    /// for tests only.
    pub fn danger_skip_verify(mut self, skip: bool) -> Self {
        self.skip_verify = skip;
        self
    }

    /// The deadline of each call, connecting included (default 2 s): an elapsed deadline is
    /// [`Error::Timeout`]. Blocking queries (watches) wait longer: their own `wait` plus
    /// Consul's jitter (`wait / 16`) plus this timeout. Keep it at most the elector's call
    /// timeout.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// The most HTTP connections the handle opens at once (default 128): half for calls, half
    /// for blocking queries, which take turns when more names are watched. Keep it below the
    /// agent's `limits.http_max_conns_per_client` (200 by default) divided by the processes
    /// on one address.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Connects: checks the address, that the agent answers and its datacenter has a Raft
    /// leader (`/v1/status/leader`), and, if a token is set, that Consul knows it
    /// (`/v1/acl/token/self`; agents without ACLs accept any token).
    ///
    /// An invalid address, CA bundle or option is [`Error::Config`]; a token Consul does not
    /// know is [`Error::PermissionDenied`]; no leader is [`Error::Unavailable`]; no answer
    /// within the timeout (nothing listening, a silent peer) is [`Error::Timeout`] — the
    /// connection is retried until then.
    pub async fn connect(self) -> Result<Consul> {
        if self.timeout.is_zero() {
            return Err(Error::config("the Consul timeout must be positive"));
        }
        if self.max_connections < 2 {
            return Err(Error::config(format!(
                "max_connections ({}) must be at least 2",
                self.max_connections
            )));
        }
        let base = base_url(&self.address, self.ssl)?;
        check_prefix(&self.prefix)?;
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(f)) => {
                let t = std::fs::read_to_string(f).map_err(|e| {
                    Error::config(format!("cannot read CONSUL_HTTP_TOKEN_FILE {f:?}: {e}"))
                })?;
                Some(t.trim().to_owned()).filter(|t| !t.is_empty())
            }
            (None, None) => None,
        };
        let mut headers = HeaderMap::new();
        if let Some(t) = &token {
            let mut v = HeaderValue::from_str(t)
                .map_err(|_| Error::config("the Consul token is not a valid header value"))?;
            v.set_sensitive(true);
            headers.insert("X-Consul-Token", v);
        }
        let mut pem = self.ca_bundle.clone();
        if let Some(f) = &self.ca_file {
            let file = std::fs::read(f)
                .map_err(|e| Error::config(format!("cannot read CONSUL_CACERT {f:?}: {e}")))?;
            pem.push(b'\n');
            pem.extend(file);
        }
        let per_kind = self.max_connections / 2;
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(self.timeout)
            .pool_max_idle_per_host(self.max_connections)
            .pool_idle_timeout(Duration::from_secs(50))
            .tcp_nodelay(true)
            .user_agent(concat!("tenure/", env!("CARGO_PKG_VERSION")));
        if pem.iter().any(|b| !b.is_ascii_whitespace()) {
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| Error::config(format!("invalid Consul CA bundle: {e}")))?;
            if certs.is_empty() {
                return Err(Error::config("the Consul CA bundle holds no certificate"));
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        if self.skip_verify {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let http = builder
            .build()
            .map_err(|e| Error::config(format!("cannot build the Consul HTTP client: {e}")))?;
        let consul = Consul {
            inner: Arc::new(Inner {
                http,
                base,
                datacenter: self.datacenter,
                prefix: self.prefix,
                timeout: self.timeout,
                has_token: token.is_some(),
                calls: Semaphore::new(per_kind),
                blocking: Arc::new(Semaphore::new(per_kind)),
                blocking_limit: per_kind,
                sent: AtomicU64::new(0),
            }),
        };
        with_timeout(KIND, "connect", "", self.timeout, consul.probe()).await?;
        Ok(consul)
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "t" | "true" => Some(true),
        "0" | "f" | "false" => Some(false),
        _ => None,
    }
}

/// Refuses a prefix Consul's HTTP API cannot address: one starting with `/`, or with an
/// empty, `.` or `..` segment (Go's HTTP server redirects such paths).
fn check_prefix(prefix: &str) -> Result<()> {
    let mut segments: Vec<&str> = prefix.split('/').collect();
    // A trailing `/` (the usual form) leaves an empty last segment: that one is fine.
    if segments.last() == Some(&"") {
        segments.pop();
    }
    if prefix.starts_with('/')
        || segments
            .iter()
            .any(|s| s.is_empty() || *s == "." || *s == "..")
    {
        return Err(Error::config(format!(
            "Consul key prefix {prefix:?}: no leading `/`, and no empty, `.` or `..` segment"
        )));
    }
    Ok(())
}

/// `http://host:port` from an address in any of the accepted forms, without a trailing `/`.
fn base_url(address: &str, ssl: bool) -> Result<String> {
    let a = address.trim();
    let url = if a.starts_with("http://") || a.starts_with("https://") {
        a.trim_end_matches('/').to_owned()
    } else if a.contains("://") {
        return Err(Error::config(format!(
            "Consul address {address:?}: only http:// and https:// are supported"
        )));
    } else if a.is_empty() {
        return Err(Error::config("the Consul address is empty"));
    } else if ssl {
        format!("https://{}", a.trim_end_matches('/'))
    } else {
        format!("http://{}", a.trim_end_matches('/'))
    };
    let parsed = reqwest::Url::parse(&url)
        .map_err(|e| Error::config(format!("invalid Consul address {address:?}: {e}")))?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(Error::config(format!(
            "invalid Consul address {address:?}: no host"
        )));
    }
    Ok(url)
}

/// A connected handle on a Consul agent's HTTP API (see [`ConsulOptions`]). Clones share the
/// connections; give one to [`ConsulStore::new`](super::ConsulStore::new).
#[derive(Clone)]
pub struct Consul {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: String,
    datacenter: Option<String>,
    prefix: String,
    timeout: Duration,
    has_token: bool,
    /// Permits for ordinary calls.
    calls: Semaphore,
    /// Permits for blocking queries, which may hold a connection for minutes.
    blocking: Arc<Semaphore>,
    blocking_limit: usize,
    /// HTTP requests sent so far.
    sent: AtomicU64,
}

impl fmt::Debug for Consul {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consul")
            .field("address", &self.inner.base)
            .field("datacenter", &self.inner.datacenter)
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .field("token", &self.inner.has_token.then_some("***"))
            .finish_non_exhaustive()
    }
}

/// What [`Consul::call`] returns: the status, `X-Consul-Index` and the body, read in full.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    /// `X-Consul-Index`, if the agent sent one.
    pub(crate) index: Option<u64>,
    pub(crate) body: Vec<u8>,
}

impl Consul {
    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The deadline of each call.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// The agent's base URL, `http://host:port` or `https://host:port`.
    pub fn address(&self) -> &str {
        &self.inner.base
    }

    /// The datacenter requests target, if one was set.
    pub fn datacenter(&self) -> Option<&str> {
        self.inner.datacenter.as_deref()
    }

    /// How many HTTP requests this handle (and its clones) has sent so far, blocking queries
    /// included: for measuring the load an elector puts on Consul.
    pub fn requests_sent(&self) -> u64 {
        self.inner.sent.load(Ordering::Relaxed)
    }

    /// How many blocking queries run at once at most; more watches take turns.
    pub(crate) fn blocking_limit(&self) -> usize {
        self.inner.blocking_limit
    }

    /// A request to `/v1<path>` (`path` starts with `/` and is already escaped), with the
    /// token header and the `dc` query parameter. Add query parameters with `.query(...)`.
    pub(crate) fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let url = format!("{}/v1{path}", self.inner.base);
        let req = self.inner.http.request(method, url);
        match &self.inner.datacenter {
            Some(dc) => req.query(&[("dc", dc)]),
            None => req,
        }
    }

    /// As [`call`](Self::call) without reading the body, for a blocking query
    /// (`?index=&wait=`): uses the permits of blocking queries, held until the headers arrive.
    /// `timeout` should be the query's `wait` plus `wait / 16` (Consul's jitter) plus
    /// [`timeout`](Self::timeout).
    pub(crate) async fn send_blocking(
        &self,
        req: RequestBuilder,
        operation: &'static str,
        name: &str,
        timeout: Duration,
    ) -> Result<Response> {
        with_timeout(KIND, operation, name, timeout, async {
            let _permit = self.inner.blocking.acquire().await.map_err(|_| closed())?;
            self.exchange(req, operation, name, timeout).await
        })
        .await
    }

    /// Waits for a blocking-query permit (for callers that hold one over several queries).
    pub(crate) async fn blocking_permit(&self) -> tokio::sync::OwnedSemaphorePermit {
        // The semaphore is never closed.
        match self.inner.blocking.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => unreachable!("the blocking-query semaphore is never closed"),
        }
    }

    /// Sends `req` without taking a permit (the caller holds one) and reads the whole reply,
    /// all under `timeout`; statuses are mapped as by [`call`](Self::call).
    pub(crate) async fn exchange_read(
        &self,
        req: RequestBuilder,
        operation: &'static str,
        name: &str,
        timeout: Duration,
    ) -> Result<Reply> {
        with_timeout(KIND, operation, name, timeout, async {
            let resp = self.exchange(req, operation, name, timeout).await?;
            read_reply(resp, operation, name, timeout).await
        })
        .await
    }

    /// Sends `req` and reads the whole reply under `timeout` (waiting for a connection permit included) and maps the
    /// outcome: 2xx, 404 and 409 are returned for the caller to read (a missing key; a
    /// refused transaction, whose body says why); 401 and 403 are
    /// [`Error::PermissionDenied`]; 400, 405 and 413 [`Error::Rejected`]; 429 and 5xx
    /// [`Error::Unavailable`] (the body, for example "No cluster leader", is the source);
    /// connection failures [`Error::Unavailable`]; an elapsed deadline [`Error::Timeout`].
    /// `name` (the Consul key, or the lock's name) names the object in errors.
    ///
    /// Uses the permits of ordinary calls; blocking queries use
    /// [`send_blocking`](Self::send_blocking), so that they never starve renewals.
    pub(crate) async fn call(
        &self,
        req: RequestBuilder,
        operation: &'static str,
        name: &str,
        timeout: Duration,
    ) -> Result<Reply> {
        with_timeout(KIND, operation, name, timeout, async {
            let _permit = self.inner.calls.acquire().await.map_err(|_| closed())?;
            let resp = self.exchange(req, operation, name, timeout).await?;
            read_reply(resp, operation, name, timeout).await
        })
        .await
    }

    async fn exchange(
        &self,
        req: RequestBuilder,
        operation: &'static str,
        name: &str,
        timeout: Duration,
    ) -> Result<Response> {
        self.inner.sent.fetch_add(1, Ordering::Relaxed);
        let resp = req
            .send()
            .await
            .map_err(|e| transport(operation, name, timeout, e))?;
        let status = resp.status();
        if status.is_success() || status == StatusCode::NOT_FOUND || status == StatusCode::CONFLICT
        {
            return Ok(resp);
        }
        let body = match resp.text().await {
            Ok(t) => t.trim().to_owned(),
            Err(e) => format!("(body unreadable: {e})"),
        };
        Err(status_error(status, operation, name, body))
    }

    /// Waits for an agent that answers and a datacenter with a leader, then checks the token.
    async fn probe(&self) -> Result<()> {
        let t = self.inner.timeout;
        loop {
            let r = self
                .call(
                    self.request(Method::GET, "/status/leader"),
                    "connect",
                    "",
                    t,
                )
                .await;
            match r {
                Ok(reply) if reply.status.is_success() => {
                    let leader: String = serde_json::from_slice(&reply.body).unwrap_or_default();
                    if leader.is_empty() {
                        return Err(Error::Unavailable {
                            store: KIND,
                            source: "the Consul datacenter has no Raft leader".into(),
                        });
                    }
                    break;
                }
                Ok(reply) => {
                    return Err(Error::Backend {
                        store: KIND,
                        source: format!("/v1/status/leader answered {}", reply.status).into(),
                    })
                }
                Err(e @ Error::Unavailable { .. }) => {
                    if let Some(why) = certificate_refusal(&e) {
                        // Retrying cannot help: the agent's certificate is not trusted.
                        return Err(Error::config(format!(
                            "the Consul agent's TLS certificate was refused ({why}); trust its \
                             CA with ConsulOptions::ca_bundle, ca_file or CONSUL_CACERT"
                        )));
                    }
                    debug!(error = %e, "Consul not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        }
        if !self.inner.has_token {
            return Ok(());
        }
        // A token Consul does not know fails every call with 403 "ACL not found"; say so now.
        // Without ACLs, this endpoint answers 401 "ACL support disabled": any token goes.
        let req = self.request(Method::GET, "/acl/token/self");
        match self.call(req, "connect", "", t).await {
            Ok(_) => Ok(()),
            Err(Error::PermissionDenied { source, .. })
                if source.to_string().contains("ACL support disabled") =>
            {
                Ok(())
            }
            Err(Error::PermissionDenied { source, .. })
                if source.to_string().contains("ACL not found") =>
            {
                Err(Error::PermissionDenied {
                    store: KIND,
                    operation: "connect",
                    name: String::new(),
                    source: format!("Consul does not know the ACL token: {source}").into(),
                })
            }
            // Reading the token's own details may be refused by a custom policy setup (or a
            // token that cannot read itself); the calls themselves will tell.
            Err(e @ Error::PermissionDenied { .. }) => {
                debug!(error = %e, "could not check the Consul token; going on");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// The message of a TLS certificate refusal somewhere in `e`'s sources, if any.
fn certificate_refusal(e: &Error) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        let m = c.to_string();
        if m.contains("certificate") {
            return Some(m);
        }
        cur = c.source();
    }
    None
}

fn closed() -> Error {
    Error::Unavailable {
        store: KIND,
        source: "the Consul handle is closed".into(),
    }
}

/// Reads the whole body of `resp`.
async fn read_reply(
    resp: Response,
    operation: &'static str,
    name: &str,
    timeout: Duration,
) -> Result<Reply> {
    let status = resp.status();
    let index = index_of(&resp);
    let body = resp
        .bytes()
        .await
        .map_err(|e| transport(operation, name, timeout, e))?
        .to_vec();
    Ok(Reply {
        status,
        index,
        body,
    })
}

/// The `X-Consul-Index` of a response, if any.
pub(crate) fn index_of(resp: &Response) -> Option<u64> {
    resp.headers()
        .get("X-Consul-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The error for a failed exchange (no status, or an unreadable body).
fn transport(operation: &'static str, name: &str, after: Duration, e: reqwest::Error) -> Error {
    if e.is_timeout() {
        return Error::Timeout {
            store: KIND,
            operation,
            name: name.to_owned(),
            after,
        };
    }
    Error::Unavailable {
        store: KIND,
        source: Box::new(e),
    }
}

/// The error for an HTTP status that is neither success, 404 nor 409.
pub(crate) fn status_error(
    status: StatusCode,
    operation: &'static str,
    name: &str,
    body: String,
) -> Error {
    let source: BoxError = if name.is_empty() {
        format!("Consul answered {status}: {body}").into()
    } else {
        format!("Consul answered {status} for {name:?}: {body}").into()
    };
    match status.as_u16() {
        401 | 403 => Error::PermissionDenied {
            store: KIND,
            operation,
            name: name.to_owned(),
            source,
        },
        400 | 405 | 413 => Error::Rejected {
            store: KIND,
            name: name.to_owned(),
            source,
        },
        429 | 500..=599 => Error::Unavailable {
            store: KIND,
            source,
        },
        _ => Error::Backend {
            store: KIND,
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            base_url("127.0.0.1:8500", false).unwrap(),
            "http://127.0.0.1:8500"
        );
        assert_eq!(
            base_url("127.0.0.1:8501", true).unwrap(),
            "https://127.0.0.1:8501"
        );
        assert_eq!(base_url("http://c:8500/", true).unwrap(), "http://c:8500");
        assert_eq!(
            base_url("https://c.example", false).unwrap(),
            "https://c.example"
        );
        for bad in ["", "unix:///var/run/consul.sock", "http://", "ftp://x"] {
            assert!(
                matches!(base_url(bad, false), Err(Error::Config { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn prefixes() {
        for ok in ["", "tenure/", "a/b/", "a", "a/b", "x.y/"] {
            assert!(check_prefix(ok).is_ok(), "{ok:?}");
        }
        for bad in ["/", "/a/", "a//", "a/./", "a/../b/", "./"] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn statuses_map_to_meanings() {
        let e = |s: u16| status_error(StatusCode::from_u16(s).unwrap(), "put", "k", "x".into());
        assert!(matches!(e(403), Error::PermissionDenied { .. }));
        assert!(matches!(e(401), Error::PermissionDenied { .. }));
        assert!(matches!(e(400), Error::Rejected { .. }));
        assert!(matches!(e(413), Error::Rejected { .. }));
        assert!(matches!(e(500), Error::Unavailable { .. }));
        assert!(matches!(e(429), Error::Unavailable { .. }));
        assert!(matches!(e(418), Error::Backend { .. }));
        match e(403) {
            Error::PermissionDenied { source, name, .. } => {
                assert_eq!(name, "k");
                assert!(source.to_string().contains("\"k\""), "{source}");
            }
            _ => unreachable!(),
        }
    }

    #[test]
    fn booleans_as_consul_reads_them() {
        assert_eq!(parse_bool("TRUE"), Some(true));
        assert_eq!(parse_bool("1"), Some(true));
        assert_eq!(parse_bool("false"), Some(false));
        assert_eq!(parse_bool("yes"), None);
    }

    #[test]
    fn debug_hides_the_token() {
        let o = ConsulOptions::new("h:1").token("s3cret");
        assert!(!format!("{o:?}").contains("s3cret"));
    }
}
