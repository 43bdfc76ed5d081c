//! [`Gcs`]: a handle on the Cloud Storage JSON API for one bucket, with its credentials.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use tracing::debug;

use crate::error::{with_timeout, BoxError, Error, Result};

pub(crate) const KIND: &str = "gcs";

/// Google's endpoint of the Cloud Storage JSON API.
pub const DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";
/// The default object prefix.
pub const DEFAULT_PREFIX: &str = "tenure/";
/// The default deadline of each call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// The default deadline of finding credentials at [`connect`](GcsOptions::connect) (application
/// default credentials may ask the metadata server, or run `gcloud`).
pub const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// The environment variable Google's client libraries read to talk to an emulator
/// (`host:port`, or a URL), without credentials.
pub const EMULATOR_ENV: &str = "STORAGE_EMULATOR_HOST";
/// The longest object name Cloud Storage accepts, in bytes of UTF-8.
pub const MAX_OBJECT_NAME_LEN: usize = 1024;

/// The OAuth scope of reads and writes.
const SCOPE_READ_WRITE: &str = "https://www.googleapis.com/auth/devstorage.read_write";
/// The OAuth scope needed to set ACLs (a [`PredefinedAcl`] on the objects tenure creates).
const SCOPE_FULL_CONTROL: &str = "https://www.googleapis.com/auth/devstorage.full_control";

/// Where the [`Gcs`] handle gets its OAuth tokens ([`GcsOptions::credentials`]).
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Credentials {
    /// No credentials with an emulator ([`STORAGE_EMULATOR_HOST`](EMULATOR_ENV) set, or
    /// [`GcsOptions::endpoint`] given), else [`ApplicationDefault`](Self::ApplicationDefault).
    /// The default.
    #[default]
    Auto,
    /// Application default credentials, found by [`gcp_auth::provider`]: the key file named by
    /// `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's `application_default_credentials.json`, the
    /// metadata server (GCE, GKE workload identity, Cloud Run), or `gcloud auth
    /// print-access-token`, in that order.
    ApplicationDefault,
    /// A service account key file (JSON), as downloaded from the console.
    KeyFile(PathBuf),
    /// The metadata server's default service account (GCE, GKE, Cloud Run, Cloud Functions).
    MetadataServer,
    /// A token provider of your own.
    Provider(Arc<dyn gcp_auth::TokenProvider>),
    /// No `Authorization` header at all: an emulator, or a proxy that adds its own.
    Anonymous,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Auto => f.write_str("Auto"),
            Credentials::ApplicationDefault => f.write_str("ApplicationDefault"),
            Credentials::KeyFile(p) => f.debug_tuple("KeyFile").field(p).finish(),
            Credentials::MetadataServer => f.write_str("MetadataServer"),
            Credentials::Provider(_) => f.write_str("Provider(..)"),
            Credentials::Anonymous => f.write_str("Anonymous"),
        }
    }
}

/// A predefined ACL applied to every object tenure creates or replaces (seed 001's
/// `object_acl`), sent as `predefinedAcl`. Buckets with uniform bucket-level access refuse
/// ACLs: leave it unset there (the bucket's IAM policy applies).
///
/// Parses from Cloud Storage's names (`projectPrivate`) and the snake-case names Ruby and
/// Python clients use (`project_private`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PredefinedAcl {
    /// `authenticatedRead`: the owner has full control, all authenticated users may read.
    AuthenticatedRead,
    /// `bucketOwnerFullControl`: the object and bucket owners have full control.
    BucketOwnerFullControl,
    /// `bucketOwnerRead`: the object owner has full control, the bucket owner may read.
    BucketOwnerRead,
    /// `private`: only the object owner.
    Private,
    /// `projectPrivate`: the owner and the project team by role.
    ProjectPrivate,
    /// `publicRead`: the owner has full control, everybody may read.
    PublicRead,
}

impl PredefinedAcl {
    /// The name the JSON API takes.
    pub fn as_str(self) -> &'static str {
        match self {
            PredefinedAcl::AuthenticatedRead => "authenticatedRead",
            PredefinedAcl::BucketOwnerFullControl => "bucketOwnerFullControl",
            PredefinedAcl::BucketOwnerRead => "bucketOwnerRead",
            PredefinedAcl::Private => "private",
            PredefinedAcl::ProjectPrivate => "projectPrivate",
            PredefinedAcl::PublicRead => "publicRead",
        }
    }

    const ALL: [PredefinedAcl; 6] = [
        PredefinedAcl::AuthenticatedRead,
        PredefinedAcl::BucketOwnerFullControl,
        PredefinedAcl::BucketOwnerRead,
        PredefinedAcl::Private,
        PredefinedAcl::ProjectPrivate,
        PredefinedAcl::PublicRead,
    ];
}

impl fmt::Display for PredefinedAcl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PredefinedAcl {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let folded: String = s
            .chars()
            .filter(|c| *c != '_' && *c != '-')
            .collect::<String>()
            .to_ascii_lowercase();
        PredefinedAcl::ALL
            .into_iter()
            .find(|a| a.as_str().to_ascii_lowercase() == folded)
            .ok_or_else(|| {
                Error::config(format!(
                    "unknown predefined ACL {s:?}: one of authenticatedRead, \
                     bucketOwnerFullControl, bucketOwnerRead, private, projectPrivate, publicRead"
                ))
            })
    }
}

/// How to reach a bucket: its name, an object prefix, credentials, an ACL for new objects,
/// an endpoint override and the call timeout. Then [`connect`](Self::connect).
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> tenure::Result<()> {
/// use std::time::Duration;
/// use tenure::gcs::{GcsOptions, GcsStore};
///
/// // Application default credentials, or no credentials if STORAGE_EMULATOR_HOST is set.
/// let gcs = GcsOptions::new("my-bucket")
///     .prefix("locks/")
///     .timeout(Duration::from_secs(2))
///     .connect()
///     .await?;
/// let elector = tenure::LeaderElector::builder(GcsStore::new(gcs), "scheduler").build()?;
/// # let _ = elector; Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct GcsOptions {
    bucket: String,
    prefix: String,
    endpoint: Option<String>,
    credentials: Credentials,
    object_acl: Option<PredefinedAcl>,
    timeout: Duration,
    auth_timeout: Duration,
    delete_preconditions: Option<bool>,
    user_project: Option<String>,
}

/// What [`GcsOptions`] resolve to: the API's base URL, where tokens come from, and whether
/// the server is taken to honour preconditions on DELETE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) base: String,
    pub(crate) auth: AuthPlan,
    pub(crate) delete_preconditions: bool,
}

/// The credential source chosen, before any network access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AuthPlan {
    Anonymous,
    ApplicationDefault,
    KeyFile(PathBuf),
    MetadataServer,
    Provider,
}

impl GcsOptions {
    /// Options for `bucket` (which must exist): prefix `tenure/`, credentials
    /// [`Auto`](Credentials::Auto), Google's endpoint — or the emulator named by
    /// `STORAGE_EMULATOR_HOST`, read by [`connect`](Self::connect) — and a 2 s timeout.
    pub fn new(bucket: impl Into<String>) -> Self {
        GcsOptions {
            bucket: bucket.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            endpoint: None,
            credentials: Credentials::Auto,
            object_acl: None,
            timeout: DEFAULT_TIMEOUT,
            auth_timeout: DEFAULT_AUTH_TIMEOUT,
            delete_preconditions: None,
            user_project: None,
        }
    }

    /// The prefix of every object name (default `tenure/`); stores with different prefixes
    /// never see each other's records. No prefix may contain a carriage return or line feed.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The API endpoint, overriding `STORAGE_EMULATOR_HOST` and Google's: `http://host:port`,
    /// `https://host`, or `host:port` (plain HTTP, as `STORAGE_EMULATOR_HOST`). With
    /// [`Credentials::Auto`] an endpoint override sends no credentials (an emulator); set
    /// [`credentials`](Self::credentials) for a private endpoint of the real service.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Where OAuth tokens come from (default [`Credentials::Auto`]).
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = credentials;
        self
    }

    /// A predefined ACL for every object tenure writes (seed 001's `object_acl`; default none:
    /// the bucket's default object ACL or IAM policy). Setting one asks for the
    /// `devstorage.full_control` scope.
    pub fn object_acl(mut self, acl: PredefinedAcl) -> Self {
        self.object_acl = Some(acl);
        self
    }

    /// The deadline of each store call, all its requests and token refreshes included
    /// (default 2 s): an elapsed deadline is [`Error::Timeout`]. Keep it at most the
    /// elector's call timeout (`min(R, L − D)` by default).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// The deadline of finding credentials at [`connect`](Self::connect) (default 10 s).
    pub fn auth_timeout(mut self, d: Duration) -> Self {
        self.auth_timeout = d;
        self
    }

    /// Whether the server honours `ifGenerationMatch` on DELETE, so that
    /// [`delete`](crate::LeaseStore::delete) is a compare-and-delete. Real Cloud Storage
    /// does; fake-gcs-server (1.54) ignores it and would delete blindly. Default: `true` on
    /// Google's endpoint, `false` on an emulator or an endpoint override, where `delete` then
    /// fails with [`Error::Unsupported`] instead of breaking the contract.
    pub fn delete_preconditions(mut self, honoured: bool) -> Self {
        self.delete_preconditions = Some(honoured);
        self
    }

    /// The project billed for requests to a Requester Pays bucket (`userProject`).
    pub fn user_project(mut self, project: impl Into<String>) -> Self {
        self.user_project = Some(project.into());
        self
    }

    /// Resolves endpoint and credentials, given the value of `STORAGE_EMULATOR_HOST`. Pure:
    /// no file or network access.
    pub(crate) fn plan(&self, emulator_env: Option<&str>) -> Result<Plan> {
        let emulator_env = emulator_env.map(str::trim).filter(|v| !v.is_empty());
        let (base, emulated) = match (&self.endpoint, emulator_env) {
            (Some(e), _) => (base_url(e)?, true),
            (None, Some(e)) => (base_url(e)?, true),
            (None, None) => (DEFAULT_ENDPOINT.to_owned(), false),
        };
        let auth = match &self.credentials {
            Credentials::Auto if emulated => AuthPlan::Anonymous,
            Credentials::Auto | Credentials::ApplicationDefault => AuthPlan::ApplicationDefault,
            Credentials::KeyFile(p) => AuthPlan::KeyFile(p.clone()),
            Credentials::MetadataServer => AuthPlan::MetadataServer,
            Credentials::Provider(_) => AuthPlan::Provider,
            Credentials::Anonymous => AuthPlan::Anonymous,
        };
        Ok(Plan {
            base,
            auth,
            delete_preconditions: self.delete_preconditions.unwrap_or(!emulated),
        })
    }

    fn check(&self) -> Result<()> {
        if self.timeout.is_zero() || self.auth_timeout.is_zero() {
            return Err(Error::config("the GCS timeouts must be positive"));
        }
        check_bucket(&self.bucket)?;
        if self.prefix.contains(['\r', '\n']) {
            return Err(Error::config(format!(
                "GCS object prefix {:?}: object names may not contain CR or LF",
                self.prefix
            )));
        }
        if self.prefix.starts_with(".well-known/acme-challenge/") {
            return Err(Error::config(
                "GCS object prefix: names may not start with .well-known/acme-challenge/",
            ));
        }
        if self.prefix.len() >= MAX_OBJECT_NAME_LEN {
            return Err(Error::config(format!(
                "GCS object prefix is {} bytes: object names are at most {MAX_OBJECT_NAME_LEN}",
                self.prefix.len()
            )));
        }
        Ok(())
    }

    /// Connects: resolves the endpoint (the [`endpoint`](Self::endpoint) given, else
    /// `STORAGE_EMULATOR_HOST`, else Google's), finds credentials, and checks that the bucket
    /// exists by listing at most one object under the prefix (`storage.objects.list`).
    ///
    /// Invalid settings, an unreadable key file and a missing bucket (the error names it) are
    /// [`Error::Config`]; credentials that cannot be found within the auth timeout are
    /// [`Error::Unavailable`] or [`Error::Timeout`]; a refusal is [`Error::PermissionDenied`];
    /// no answer within the timeout (nothing listening, a silent peer) is [`Error::Timeout`] —
    /// refused connections are retried until then.
    pub async fn connect(self) -> Result<Gcs> {
        self.check()?;
        let env = std::env::var(EMULATOR_ENV).ok();
        let plan = self.plan(env.as_deref())?;
        let auth = with_timeout(
            KIND,
            "find credentials",
            &self.bucket,
            self.auth_timeout,
            provider(&plan.auth, &self.credentials),
        )
        .await?;
        let http = reqwest::Client::builder()
            .connect_timeout(self.timeout)
            .pool_idle_timeout(Duration::from_secs(50))
            .tcp_nodelay(true)
            .user_agent(concat!("tenure/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::config(format!("cannot build the GCS HTTP client: {e}")))?;
        let scope = if self.object_acl.is_some() {
            SCOPE_FULL_CONTROL
        } else {
            SCOPE_READ_WRITE
        };
        debug!(endpoint = %plan.base, auth = ?plan.auth, bucket = %self.bucket, "connecting to GCS");
        let gcs = Gcs {
            inner: Arc::new(Inner {
                http,
                base: plan.base,
                bucket: self.bucket,
                prefix: self.prefix,
                timeout: self.timeout,
                auth,
                scope,
                object_acl: self.object_acl,
                delete_preconditions: plan.delete_preconditions,
                user_project: self.user_project,
                sent: AtomicU64::new(0),
            }),
        };
        let t = gcs.inner.timeout;
        with_timeout(KIND, "connect", gcs.bucket(), t, gcs.probe()).await?;
        Ok(gcs)
    }
}

/// The token provider for `plan` (network access for application default credentials and the
/// metadata server; a file read for a key file).
async fn provider(
    plan: &AuthPlan,
    credentials: &Credentials,
) -> Result<Option<Arc<dyn gcp_auth::TokenProvider>>> {
    let unavailable = |what: &str, e: gcp_auth::Error| Error::Unavailable {
        store: KIND,
        source: format!("{what}: {e}").into(),
    };
    Ok(match plan {
        AuthPlan::Anonymous => None,
        AuthPlan::ApplicationDefault => Some(
            gcp_auth::provider()
                .await
                .map_err(|e| unavailable("no application default credentials found", e))?,
        ),
        AuthPlan::KeyFile(path) => {
            let account = gcp_auth::CustomServiceAccount::from_file(path).map_err(|e| {
                Error::config(format!(
                    "cannot use the service account key file {}: {e}",
                    path.display()
                ))
            })?;
            Some(Arc::new(account))
        }
        AuthPlan::MetadataServer => Some(Arc::new(
            gcp_auth::MetadataServiceAccount::new()
                .await
                .map_err(|e| unavailable("the metadata server gave no credentials", e))?,
        )),
        AuthPlan::Provider => match credentials {
            Credentials::Provider(p) => Some(p.clone()),
            _ => None,
        },
    })
}

/// Refuses bucket names Cloud Storage cannot have (a loose check: lowercase letters, digits,
/// `-`, `_`, `.`; 3 to 222 characters).
fn check_bucket(bucket: &str) -> Result<()> {
    let ok_chars = bucket
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if !(3..=222).contains(&bucket.len()) || !ok_chars {
        return Err(Error::config(format!(
            "invalid GCS bucket name {bucket:?}: 3 to 222 lowercase letters, digits, '-', '_' or '.'"
        )));
    }
    Ok(())
}

/// `http://host:port` from an endpoint in any accepted form, without a trailing `/`.
fn base_url(endpoint: &str) -> Result<String> {
    let e = endpoint.trim();
    let url = if e.starts_with("http://") || e.starts_with("https://") {
        e.trim_end_matches('/').to_owned()
    } else if e.contains("://") {
        return Err(Error::config(format!(
            "GCS endpoint {endpoint:?}: only http:// and https:// are supported"
        )));
    } else if e.is_empty() {
        return Err(Error::config("the GCS endpoint is empty"));
    } else {
        format!("http://{}", e.trim_end_matches('/'))
    };
    let parsed = reqwest::Url::parse(&url)
        .map_err(|e| Error::config(format!("invalid GCS endpoint {endpoint:?}: {e}")))?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(Error::config(format!(
            "invalid GCS endpoint {endpoint:?}: no host"
        )));
    }
    Ok(url)
}

/// A connected handle on one Cloud Storage bucket (see [`GcsOptions`]). Clones share the
/// connections and the credentials; give one to [`GcsStore::new`](super::GcsStore::new).
#[derive(Clone)]
pub struct Gcs {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: String,
    bucket: String,
    prefix: String,
    timeout: Duration,
    auth: Option<Arc<dyn gcp_auth::TokenProvider>>,
    scope: &'static str,
    object_acl: Option<PredefinedAcl>,
    delete_preconditions: bool,
    user_project: Option<String>,
    sent: AtomicU64,
}

impl fmt::Debug for Gcs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gcs")
            .field("endpoint", &self.inner.base)
            .field("bucket", &self.inner.bucket)
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .field("authenticated", &self.inner.auth.is_some())
            .field("object_acl", &self.inner.object_acl)
            .field("delete_preconditions", &self.inner.delete_preconditions)
            .finish_non_exhaustive()
    }
}

impl Gcs {
    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.inner.bucket
    }

    /// The object prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The API's base URL (Google's, or the emulator's).
    pub fn endpoint(&self) -> &str {
        &self.inner.base
    }

    /// The deadline of each call.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Whether requests carry OAuth tokens (not on an emulator).
    pub fn is_authenticated(&self) -> bool {
        self.inner.auth.is_some()
    }

    /// Whether `delete` is sent as a compare-and-delete (see
    /// [`GcsOptions::delete_preconditions`]).
    pub fn delete_preconditions(&self) -> bool {
        self.inner.delete_preconditions
    }

    /// The predefined ACL of new objects, if any.
    pub fn object_acl(&self) -> Option<PredefinedAcl> {
        self.inner.object_acl
    }

    /// How many HTTP requests this handle (and its clones) has sent so far: for measuring the
    /// load (and cost: Cloud Storage bills per operation) an elector puts on the bucket.
    pub fn requests_sent(&self) -> u64 {
        self.inner.sent.load(Ordering::Relaxed)
    }

    /// A request to `{base}{path}` (`path` starts with `/` and is already escaped), with
    /// `userProject` if set.
    pub(crate) fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self
            .inner
            .http
            .request(method, format!("{}{path}", self.inner.base));
        match &self.inner.user_project {
            Some(p) => req.query(&[("userProject", p)]),
            None => req,
        }
    }

    /// Adds the `Authorization` header (refreshing the token if needed), sends `req` and maps
    /// the outcome: 2xx, 404 and 412 are returned for the caller to read; 401 and 403 are
    /// [`Error::PermissionDenied`]; 400 and 413 [`Error::Rejected`]; 408, 429 and 5xx
    /// [`Error::Unavailable`] (retryable: 429 is Cloud Storage's rate limit, about one write
    /// per second per object); connection failures [`Error::Unavailable`]. No deadline of its
    /// own: callers run it under [`with_timeout`].
    pub(crate) async fn send(
        &self,
        mut req: RequestBuilder,
        operation: &'static str,
        name: &str,
    ) -> Result<Response> {
        if let Some(auth) = &self.inner.auth {
            let token = auth
                .token(&[self.inner.scope])
                .await
                .map_err(|e| Error::Unavailable {
                    store: KIND,
                    source: format!("could not get a Google OAuth token: {e}").into(),
                })?;
            let mut v =
                HeaderValue::from_str(&format!("Bearer {}", token.as_str())).map_err(|_| {
                    Error::Backend {
                        store: KIND,
                        source: "the OAuth token is not a valid header value".into(),
                    }
                })?;
            v.set_sensitive(true);
            req = req.header(AUTHORIZATION, v);
        }
        self.inner.sent.fetch_add(1, Ordering::Relaxed);
        let resp = req.send().await.map_err(|e| Error::Unavailable {
            store: KIND,
            source: Box::new(e),
        })?;
        let status = resp.status();
        if status.is_success()
            || status == StatusCode::NOT_FOUND
            || status == StatusCode::PRECONDITION_FAILED
        {
            return Ok(resp);
        }
        let body = match resp.text().await {
            Ok(t) => t.trim().chars().take(500).collect(),
            Err(e) => format!("(body unreadable: {e})"),
        };
        Err(status_error(status, operation, name, body))
    }

    /// [`send`](Self::send), then reads the whole body.
    pub(crate) async fn call(
        &self,
        req: RequestBuilder,
        operation: &'static str,
        name: &str,
    ) -> Result<(StatusCode, Vec<u8>)> {
        let resp = self.send(req, operation, name).await?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| Error::Unavailable {
            store: KIND,
            source: Box::new(e),
        })?;
        Ok((status, body.to_vec()))
    }

    /// The error for a missing bucket.
    pub(crate) fn missing_bucket(&self) -> Error {
        Error::config(format!(
            "the GCS bucket {:?} does not exist at {} (tenure does not create buckets)",
            self.inner.bucket, self.inner.base
        ))
    }

    /// Waits for an answer, then checks that the bucket exists (listing at most one object
    /// under the prefix needs only `storage.objects.list`).
    async fn probe(&self) -> Result<()> {
        let path = format!("/storage/v1/b/{}/o", path_segment(&self.inner.bucket));
        loop {
            let req = self
                .request(Method::GET, &path)
                .query(&[("maxResults", "1"), ("prefix", self.inner.prefix.as_str())]);
            match self.call(req, "connect", "").await {
                Ok((StatusCode::NOT_FOUND, _)) => return Err(self.missing_bucket()),
                Ok((s, _)) if s.is_success() => return Ok(()),
                Ok((s, body)) => {
                    return Err(Error::Backend {
                        store: KIND,
                        source: format!(
                            "listing the bucket {:?} answered {s}: {}",
                            self.inner.bucket,
                            String::from_utf8_lossy(&body)
                        )
                        .into(),
                    })
                }
                Err(e @ Error::Unavailable { .. }) => {
                    debug!(error = %e, "GCS not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// `s` escaped as one URL path segment: every byte but unreserved ones as `%XX`.
pub(crate) fn path_segment(s: &str) -> String {
    let mut p = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            p.push(char::from(b));
        } else {
            p.push_str(&format!("%{b:02X}"));
        }
    }
    p
}

/// The error for an HTTP status that is neither success, 404 nor 412.
pub(crate) fn status_error(
    status: StatusCode,
    operation: &'static str,
    name: &str,
    body: String,
) -> Error {
    let source: BoxError = if name.is_empty() {
        format!("Cloud Storage answered {status}: {body}").into()
    } else {
        format!("Cloud Storage answered {status} for {name:?}: {body}").into()
    };
    match status.as_u16() {
        401 | 403 => Error::PermissionDenied {
            store: KIND,
            operation,
            name: name.to_owned(),
            source,
        },
        400 | 413 => Error::Rejected {
            store: KIND,
            name: name.to_owned(),
            source,
        },
        408 | 429 | 500..=599 => Error::Unavailable {
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
    fn emulator_means_no_credentials() {
        let o = GcsOptions::new("bkt");
        let p = o.plan(Some("127.0.0.1:4443")).unwrap();
        assert_eq!(p.base, "http://127.0.0.1:4443");
        assert_eq!(p.auth, AuthPlan::Anonymous);
        assert!(
            !p.delete_preconditions,
            "the emulator ignores DELETE preconditions"
        );
        let p = o.plan(Some("https://gcs.local:8443/")).unwrap();
        assert_eq!(p.base, "https://gcs.local:8443");
        assert_eq!(p.auth, AuthPlan::Anonymous);
        // An explicit endpoint wins over the variable, and also means an emulator.
        let p = GcsOptions::new("bkt")
            .endpoint("http://127.0.0.1:1")
            .plan(Some("127.0.0.1:2"))
            .unwrap();
        assert_eq!(p.base, "http://127.0.0.1:1");
        assert_eq!(p.auth, AuthPlan::Anonymous);
    }

    #[test]
    fn google_means_application_default_credentials() {
        for env in [None, Some(""), Some("  ")] {
            let p = GcsOptions::new("bkt").plan(env).unwrap();
            assert_eq!(p.base, DEFAULT_ENDPOINT);
            assert_eq!(p.auth, AuthPlan::ApplicationDefault);
            assert!(p.delete_preconditions);
        }
    }

    #[test]
    fn explicit_credentials_win() {
        let key = GcsOptions::new("bkt").credentials(Credentials::KeyFile("/k.json".into()));
        assert_eq!(
            key.plan(None).unwrap().auth,
            AuthPlan::KeyFile("/k.json".into())
        );
        assert_eq!(
            key.plan(Some("127.0.0.1:1")).unwrap().auth,
            AuthPlan::KeyFile("/k.json".into()),
            "a key file given explicitly is used even with an emulator"
        );
        let md = GcsOptions::new("bkt").credentials(Credentials::MetadataServer);
        assert_eq!(md.plan(None).unwrap().auth, AuthPlan::MetadataServer);
        let anon = GcsOptions::new("bkt").credentials(Credentials::Anonymous);
        assert_eq!(anon.plan(None).unwrap().auth, AuthPlan::Anonymous);
        let adc = GcsOptions::new("bkt")
            .endpoint("https://storage.example")
            .credentials(Credentials::ApplicationDefault)
            .delete_preconditions(true);
        let p = adc.plan(None).unwrap();
        assert_eq!(p.auth, AuthPlan::ApplicationDefault);
        assert!(p.delete_preconditions);
    }

    #[tokio::test]
    async fn an_unreadable_key_file_is_a_config_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("tenure-no-key-{}", std::process::id()));
        let o = GcsOptions::new("bkt")
            .endpoint("http://127.0.0.1:9")
            .credentials(Credentials::KeyFile(dir.clone()));
        match o.connect().await {
            Err(Error::Config { rule }) => {
                assert!(rule.contains(&*dir.to_string_lossy()), "{rule}")
            }
            other => panic!("expected Config, got {other:?}"),
        }
    }

    #[test]
    fn bad_settings_are_config_errors() {
        for e in ["", "ftp://x", "http://"] {
            assert!(
                matches!(
                    GcsOptions::new("bkt").endpoint(e).plan(None),
                    Err(Error::Config { .. })
                ),
                "{e:?}"
            );
        }
        for b in ["", "ab", "Upper", "a/b", "a b"] {
            assert!(check_bucket(b).is_err(), "{b:?}");
        }
        assert!(check_bucket("my-bucket_1.x").is_ok());
        assert!(GcsOptions::new("bkt").prefix("a\nb").check().is_err());
        assert!(GcsOptions::new("bkt")
            .timeout(Duration::ZERO)
            .check()
            .is_err());
    }

    #[test]
    fn acl_names() {
        assert_eq!(
            "publicRead".parse::<PredefinedAcl>().unwrap(),
            PredefinedAcl::PublicRead
        );
        assert_eq!(
            "project_private".parse::<PredefinedAcl>().unwrap(),
            PredefinedAcl::ProjectPrivate
        );
        assert_eq!(
            "bucketOwnerFullControl".parse::<PredefinedAcl>().unwrap(),
            PredefinedAcl::BucketOwnerFullControl
        );
        assert!("everyone".parse::<PredefinedAcl>().is_err());
        for a in PredefinedAcl::ALL {
            assert_eq!(a.as_str().parse::<PredefinedAcl>().unwrap(), a);
        }
    }

    #[test]
    fn statuses_map_to_meanings() {
        let e = |s: u16| status_error(StatusCode::from_u16(s).unwrap(), "put", "k", "x".into());
        assert!(matches!(e(401), Error::PermissionDenied { .. }));
        assert!(matches!(e(403), Error::PermissionDenied { .. }));
        assert!(matches!(e(400), Error::Rejected { .. }));
        assert!(matches!(e(429), Error::Unavailable { .. }));
        assert!(e(429).is_retryable(), "the rate limit is retried");
        assert!(matches!(e(503), Error::Unavailable { .. }));
        assert!(matches!(e(418), Error::Backend { .. }));
    }

    #[test]
    fn path_segments_escape_slashes() {
        assert_eq!(path_segment("tenure/a%2Fb"), "tenure%2Fa%252Fb");
        assert_eq!(path_segment("é"), "%C3%A9");
    }
}
