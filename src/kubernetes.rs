//! [`KubeLeaseStore`]: elections and locks on Kubernetes `coordination.k8s.io/v1` Leases,
//! shareable with client-go's `tools/leaderelection`.
//!
//! One Lease per election name, in one namespace, written as client-go writes it plus two
//! annotations of tenure's:
//!
//! | [`LeaseRecord`] | Lease | notes |
//! | --- | --- | --- |
//! | `holder` | `spec.holderIdentity` | `""` and absent both read as vacant; vacant is written as `""` |
//! | `lease_duration` | `spec.leaseDurationSeconds` | whole seconds from 1 to 604 800 ([`MAX_DURATION`], 7 days): writing anything else is refused with [`Error::Config`]; a Lease claiming more is refused by readers with [`Error::Decode`] (its holder would never expire) |
//! | `acquire_time`, `renew_time` | `spec.acquireTime`, `spec.renewTime` | `MicroTime`: microseconds |
//! | `transitions` (the fencing token) | annotation [`TOKEN_ANNOTATION`]: `"<token>/<leaseTransitions>"` | a `u64`; see [Fencing tokens](#fencing-tokens). Without the annotation (a Lease only client-go wrote) `spec.leaseTransitions` is read |
//! | — | `spec.leaseTransitions` | client-go's counter (an `int32`): a write that starts a term stores the Lease's previous value + 1, any other write keeps it; saturates at `i32::MAX`, never refused |
//! | `value` | annotation [`VALUE_ANNOTATION`] | absent when `None` |
//! | [`Version`] | `metadata.resourceVersion` | every write is an update with it as precondition |
//!
//! A release is written the way client-go's `ReleaseOnCancel` writes it: `holderIdentity: ""`,
//! `leaseDurationSeconds: 1`, `acquireTime` and `renewTime` now, `leaseTransitions` and the
//! token kept. So a vacant record reads back with a lease duration of one second. Other labels,
//! annotations and owner references on the Lease are kept, as client-go keeps them.
//!
//! `get` reports no [`Stored::age`]: the only times on a Lease are the writers' own wall
//! clocks, and the API server tells no age on its clock. A fresh process therefore waits a
//! whole lease duration for a holder that stopped renewing.
//!
//! # Fencing tokens
//!
//! `spec.leaseTransitions` cannot be the token: it is an `int32`, client-go gives it its own
//! meaning (changes of holder), and after `kubectl delete lease` it starts again at 0 while a
//! deposed leader may still hold, say, 57. tenure keeps the token in the annotation
//! [`TOKEN_ANNOTATION`] and takes its floor from etcd's revision:
//!
//! - **Every token tenure stores is at most the `resourceVersion` of the write that stores
//!   it.** A write that [starts a term](crate::starts_term) is an update of the Lease's
//!   resourceVersion `rv` (a precondition), and stores the token `max(asked, rv + 1)`: the
//!   elector asks for one above every token it saw, the floor covers what it never saw.
//!   Renewals and releases keep the token.
//! - On an etcd-backed API server a resourceVersion is etcd's revision: cluster-wide,
//!   increasing, never reused. Every earlier write to the Lease — also to incarnations of it
//!   deleted since, by `kubectl delete lease` or anyone — had a revision of at most `rv`, so
//!   `rv + 1` is above every token any earlier term of the election carried, even for a
//!   process that never saw them. The store therefore claims
//!   [`durable_tokens`](crate::Capabilities::durable_tokens). Tokens are large numbers that
//!   jump (the revision counts every write in the cluster); only their order means anything.
//! - **Create.** `put(Create)` first creates a vacant placeholder Lease (`holderIdentity: ""`,
//!   `leaseDurationSeconds: 1`, `leaseTransitions: 0`, no tenure annotations), then updates it
//!   with the record, the placeholder's resourceVersion being both the precondition and the
//!   floor. If somebody updated the placeholder first, the create fails with
//!   [`Error::AlreadyExists`]. If the update fails otherwise or the call is cancelled between
//!   the two, the vacant placeholder stays: a vacant Lease, which anybody may acquire.
//! - **Fail safe.** A resourceVersion that is not a decimal number (an API server not backed
//!   by etcd) makes a write that starts a term fail with [`Error::Fencing`] before it is sent
//!   (a create leaves only its vacant placeholder): tenure never issues a token that might
//!   repeat one.
//! - **The annotation.** `"<token>/<leaseTransitions>"`, the second part being the
//!   `leaseTransitions` the same write stored. If it equals `spec.leaseTransitions`, the
//!   current term is tenure's and carries that token. If it differs, a client-go elector
//!   started a term since (client-go copies the Lease's metadata, so it keeps the
//!   annotation): the record still reads with that token — the last token tenure issued —
//!   since a client-go term has none, and the next term tenure starts goes above it anyway.
//!   An annotation that is not two decimal numbers joined by `/` is [`Error::Decode`].
//!
//! What can still break the rule, so an operator must not do it:
//!
//! - **Restoring etcd from a backup taken before the latest term started.** The revision goes
//!   back to the backup's, and new terms can repeat tokens issued after the backup. (etcd's
//!   `etcdutl snapshot restore --bump-revision`, where available, restores with revisions
//!   above those ever issued.)
//! - **An API server whose resourceVersions are decimal numbers but not etcd revisions** —
//!   not increasing across the whole store, or reused (a storage other than etcd that numbers
//!   objects its own way). tenure cannot detect it.
//! - **Writing the annotation by hand.** A smaller token cannot lower the next term's (the
//!   floor does not depend on it), but one near `u64::MAX` exhausts the tokens
//!   ([`Error::Fencing`]).
//! - **Running an older tenure on the same Lease.** Versions that kept the token in
//!   `leaseTransitions` issue smaller tokens than this one.
//!
//! # Sizes
//!
//! The API server refuses (422) a Lease whose annotations, keys and values together, exceed
//! 256 KiB ([`ANNOTATIONS_LIMIT`], 262 144 bytes). tenure checks before writing: the value,
//! the Lease's other annotations, and its token annotation counted at its widest (so that a
//! record that fits once fits whatever the token becomes). A record over the limit fails with
//! [`Error::TooLarge`] and nothing is written. Any 422 (`Invalid`) the API server still
//! answers is [`Error::Rejected`]: final, never retried.
//!
//! # Watch
//!
//! [`watch`](LeaseStore::watch) watches the one Lease (`fieldSelector=metadata.name=NAME`,
//! which a Role with `resourceNames` can grant; no `list`), and reports every write — the
//! store claims [`watch_every_write`](crate::Capabilities::watch_every_write), so followers
//! stop polling:
//!
//! - `ADDED` and `MODIFIED` are a [`WatchEvent::Put`](crate::WatchEvent::Put) of the Lease
//!   decoded exactly as `get` decodes it, its `resourceVersion` the version. A Lease that does
//!   not decode is yielded as `get` would fail, [`Error::Decode`], and ends the stream (the
//!   elector stops with it). A vacant Lease shaped like a create's placeholder (no times,
//!   `leaseTransitions: 0`, no token) is a [`WatchEvent::Hint`](crate::WatchEvent::Hint)
//!   instead: the create's own update follows at once, and a follower should not race the
//!   creator for it.
//! - `DELETED` is [`WatchEvent::Deleted`](crate::WatchEvent::Deleted); `BOOKMARK` yields
//!   nothing (it only moves the point a restart resumes from).
//! - Each event's Lease is remembered, so that the update that follows — a follower's
//!   takeover, a leader's renewal — carries its metadata without a `get`. An event never
//!   replaces a newer Lease already seen (resourceVersions compared as numbers, where they
//!   are; otherwise the later-arriving wins), and never is yielded after a newer one.
//! - The server ends each watch after 4 minutes; it is restarted from the last
//!   `resourceVersion` seen, missing nothing, and yields nothing for the restart. After a gap
//!   — `410 Gone`, an error, a restart that cannot resume from a `resourceVersion` — it
//!   starts again at the current state and yields a [`WatchEvent::Hint`](crate::WatchEvent::Hint)
//!   first, so that the caller re-reads.
//!
//! # Unreadable Leases and errors
//!
//! A Lease tenure cannot read — a holder without a positive `leaseDurationSeconds`, a
//! duration over 7 days, a negative `leaseTransitions`, a malformed [`TOKEN_ANNOTATION`] —
//! makes `get` fail with [`Error::Decode`] naming `namespace/name` (and the watch yield that
//! error when it sees one), and is never overwritten.
//! A 401 or 403 is [`Error::PermissionDenied`] naming the verb (`get`, `watch`, `create`,
//! `update`, `delete`); on the watch it is yielded once and ends the stream, and the elector
//! stops with it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, PostParams, Preconditions, WatchEvent, WatchParams};
use kube::core::Status;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};
use tracing::debug;

use crate::error::{with_timeout, Error, Result};
use crate::record::{LeaseRecord, MAX_DURATION};
use crate::store::{
    starts_term, Capabilities, LeaseStore, PutMode, Stored, Version, WatchEvent as StoreEvent,
    WatchStream,
};

const KIND: &str = "kubernetes";

/// The annotation holding [`LeaseRecord::value`], the leader's published value.
pub const VALUE_ANNOTATION: &str = "tenure.rs/value";

/// The annotation holding the fencing token ([`LeaseRecord::transitions`]) as
/// `"<token>/<leaseTransitions>"`; see [Fencing tokens](self#fencing-tokens).
pub const TOKEN_ANNOTATION: &str = "tenure.rs/fencing-token";

/// The most a Lease's annotations, keys and values together, may hold in bytes: the API
/// server's limit (256 KiB). See [Sizes](self#sizes).
pub const ANNOTATIONS_LIMIT: usize = 256 * 1024;

/// What [`ANNOTATIONS_LIMIT`] limits, for [`Error::TooLarge`].
const ANNOTATIONS_WHAT: &str = "a Lease's annotations (keys and values together)";

/// The longest [`TOKEN_ANNOTATION`] value: `u64::MAX` and `i32::MAX`, joined by `/`.
const TOKEN_VALUE_WIDEST: usize = 20 + 1 + 10;

/// The `reportingController` of the Events tenure records.
pub const EVENT_CONTROLLER: &str = "tenure.rs/leader-election";

/// How long one API call may take by default (see [`Builder::timeout`]).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The server-side timeout of one watch request; the watch is restarted when it ends.
const WATCH_SECONDS: u32 = 240;

/// A watching store whose requests are all watches keeps one connection of the client's pool
/// warm with a read of its Lease at least this often: hyper drops idle connections after 90 s,
/// and the first request on a new connection from kube's client (which leaves Nagle's
/// algorithm on) waits about 40 ms for a delayed ACK — a follower's takeover would pay it.
const KEEP_WARM: Duration = Duration::from_secs(85);

/// How long after a watch restarts — it may have taken the pool's idle connection — the store
/// makes that read, unless another request was made meanwhile (a leader renews every `R`, so
/// only followers pay it). After the first start the read comes at once.
const WARM_UP_DELAY: Duration = Duration::from_secs(10);

/// The candidate identity to use in a pod: the pod's name when the downward API sets
/// `POD_NAME`, else [`crate::elector::default_identity`] (hostname, pid and a random suffix).
///
/// ```yaml
/// env:
///   - name: POD_NAME
///     valueFrom: { fieldRef: { fieldPath: metadata.name } }
/// ```
pub fn default_identity() -> String {
    match std::env::var("POD_NAME") {
        Ok(pod) if !pod.trim().is_empty() => pod.trim().to_owned(),
        _ => crate::identity::default_identity(),
    }
}

/// A [`LeaseStore`] on Kubernetes Leases (`coordination.k8s.io/v1`) in one namespace.
///
/// Clones share the client and the cache of last-seen Leases. Built from a [`kube::Client`]
/// you already have:
///
/// ```no_run
/// # async fn f() -> tenure::Result<()> {
/// use tenure::kubernetes::KubeLeaseStore;
/// let client = kube::Client::try_default().await.map_err(|e| tenure::Error::config(e.to_string()))?;
/// let store = KubeLeaseStore::builder(client, "billing").build()?;
/// let elector = tenure::LeaderElector::builder(store, "billing-scheduler")
///     .identity(tenure::kubernetes::default_identity())
///     .build()?;
/// # Ok(()) }
/// ```
///
/// Needs, in the namespace: `get`, `watch` and `update` on the Lease (restrictable with
/// `resourceNames`), `create` on leases, and for Events `create` and `patch` on
/// `events.k8s.io` events (see the README's RBAC Role).
#[derive(Clone)]
pub struct KubeLeaseStore {
    inner: Arc<Inner>,
}

struct Inner {
    api: Api<Lease>,
    namespace: String,
    timeout: Duration,
    recorder: Option<Recorder>,
    /// The newest Lease seen per name — by a read, a write or a watch event — to carry its
    /// metadata (labels, other annotations, owner references) into the next update, as
    /// client-go does, and to spare that update a read.
    seen: Mutex<HashMap<String, Seen>>,
    /// When the last request other than a watch was sent (see [`KEEP_WARM`]).
    last_request: Mutex<tokio::time::Instant>,
}

/// What [`Inner::seen`] holds for one name.
struct Seen {
    /// The resourceVersion of the Lease, or of its deletion.
    rv: Option<String>,
    /// The Lease; `None` after a watched deletion.
    lease: Option<Lease>,
}

/// Whether what was seen at resourceVersion `incoming` replaces what was seen at `cached`:
/// not if both are decimal numbers (etcd revisions) and `incoming` is the smaller — an event
/// or a response that arrived late — and otherwise the later-arriving wins.
fn supersedes(incoming: Option<&str>, cached: Option<&str>) -> bool {
    match (
        incoming.and_then(parse_decimal::<u64>),
        cached.and_then(parse_decimal::<u64>),
    ) {
        (Some(i), Some(c)) => i >= c,
        _ => true,
    }
}

/// Configures a [`KubeLeaseStore`]; see [`KubeLeaseStore::builder`].
pub struct Builder {
    client: Client,
    namespace: String,
    timeout: Duration,
    events: bool,
    reporter: Option<Reporter>,
}

impl Builder {
    /// The deadline of each API call, mapped to [`Error::Timeout`]. Default
    /// [`DEFAULT_TIMEOUT`]; the elector bounds its own calls further (by `R` and `L − D`).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether to record Kubernetes Events on the Lease when a term starts ("X became leader")
    /// and when a holder releases ("X stopped leading"), as client-go does. Default `true`.
    pub fn events(mut self, on: bool) -> Self {
        self.events = on;
        self
    }

    /// Who reports the Events. Default: controller [`EVENT_CONTROLLER`], instance `POD_NAME`
    /// or the hostname.
    pub fn reporter(mut self, reporter: Reporter) -> Self {
        self.reporter = Some(reporter);
        self
    }

    /// Builds the store.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the namespace is not a valid namespace name (a DNS-1123 label) or
    /// the timeout is zero.
    pub fn build(self) -> Result<KubeLeaseStore> {
        if let Err(reason) = dns1123_label(&self.namespace) {
            return Err(Error::config(format!(
                "kubernetes: namespace {:?} is not a valid namespace name: {reason}",
                self.namespace
            )));
        }
        if self.timeout.is_zero() {
            return Err(Error::config("kubernetes: timeout must be positive"));
        }
        let recorder = self.events.then(|| {
            let reporter = self.reporter.unwrap_or_else(|| Reporter {
                controller: EVENT_CONTROLLER.to_owned(),
                instance: Some(reporting_instance()),
            });
            Recorder::new(self.client.clone(), reporter)
        });
        Ok(KubeLeaseStore {
            inner: Arc::new(Inner {
                api: Api::namespaced(self.client, &self.namespace),
                namespace: self.namespace,
                timeout: self.timeout,
                recorder,
                seen: Mutex::new(HashMap::new()),
                last_request: Mutex::new(tokio::time::Instant::now()),
            }),
        })
    }
}

fn reporting_instance() -> String {
    match std::env::var("POD_NAME") {
        Ok(pod) if !pod.trim().is_empty() => pod.trim().to_owned(),
        _ => gethostname::gethostname().to_string_lossy().into_owned(),
    }
}

impl KubeLeaseStore {
    /// A builder for a store on Leases in `namespace`, through `client`.
    pub fn builder(client: Client, namespace: impl Into<String>) -> Builder {
        Builder {
            client,
            namespace: namespace.into(),
            timeout: DEFAULT_TIMEOUT,
            events: true,
            reporter: None,
        }
    }

    /// A store with the default settings on Leases in `namespace`.
    ///
    /// # Errors
    ///
    /// As [`Builder::build`].
    pub fn new(client: Client, namespace: impl Into<String>) -> Result<Self> {
        Self::builder(client, namespace).build()
    }

    /// A store with the default settings in the client's default namespace (the pod's own
    /// namespace in a cluster, the kubeconfig context's namespace outside).
    ///
    /// # Errors
    ///
    /// As [`Builder::build`].
    pub fn in_default_namespace(client: Client) -> Result<Self> {
        let ns = client.default_namespace().to_owned();
        Self::builder(client, ns).build()
    }

    /// The namespace holding the Leases.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// The Lease API this store uses.
    pub fn api(&self) -> &Api<Lease> {
        &self.inner.api
    }

    fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.inner.namespace)
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seen>> {
        self.inner
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Remembers `lease` as the newest seen under `name`, unless a newer one was seen already
    /// (see [`supersedes`]).
    fn remember(&self, name: &str, lease: Lease) {
        let mut seen = self.seen();
        let rv = lease.metadata.resource_version.clone();
        match seen.get_mut(name) {
            Some(s) if !supersedes(rv.as_deref(), s.rv.as_deref()) => {}
            Some(s) => {
                s.rv = rv;
                s.lease = Some(lease);
            }
            None => {
                seen.insert(
                    name.to_owned(),
                    Seen {
                        rv,
                        lease: Some(lease),
                    },
                );
            }
        }
    }

    /// Forgets the Lease under `name`: deleted at resourceVersion `rv` (a watched deletion,
    /// ignored if a newer Lease was seen already), or found missing (`None`).
    fn forget(&self, name: &str, rv: Option<&str>) {
        let mut seen = self.seen();
        match rv {
            None => {
                seen.remove(name);
            }
            Some(rv) => {
                if seen
                    .get(name)
                    .is_none_or(|s| supersedes(Some(rv), s.rv.as_deref()))
                {
                    seen.insert(
                        name.to_owned(),
                        Seen {
                            rv: Some(rv.to_owned()),
                            lease: None,
                        },
                    );
                }
            }
        }
    }

    fn remembered(&self, name: &str, version: &Version) -> Option<Lease> {
        self.seen()
            .get(name)
            .and_then(|s| s.lease.as_ref())
            .filter(|l| l.metadata.resource_version.as_deref() == Some(version.as_str()))
            .cloned()
    }

    async fn call<T>(
        &self,
        verb: &'static str,
        name: &str,
        fut: impl std::future::Future<Output = kube::Result<T>>,
    ) -> Result<T> {
        if verb != "watch" {
            *self
                .inner
                .last_request
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = tokio::time::Instant::now();
        }
        with_timeout(KIND, verb, name, self.inner.timeout, async {
            fut.await.map_err(|e| self.map_err(verb, name, e))
        })
        .await
    }

    /// When the last request other than a watch was sent.
    fn last_request(&self) -> tokio::time::Instant {
        *self
            .inner
            .last_request
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn read_lease(&self, name: &str) -> Result<Option<Lease>> {
        let found = self.call("get", name, self.inner.api.get_opt(name)).await?;
        match &found {
            Some(l) => self.remember(name, l.clone()),
            None => self.forget(name, None),
        }
        Ok(found)
    }

    fn map_err(&self, verb: &'static str, name: &str, e: kube::Error) -> Error {
        map_err(&self.inner.namespace, verb, name, e)
    }

    fn record_event(&self, lease: &Lease, note: String, action: &str) {
        let Some(recorder) = self.inner.recorder.clone() else {
            return;
        };
        let reference = lease.object_ref(&());
        let action = action.to_owned();
        let timeout = self.inner.timeout;
        tokio::spawn(async move {
            let ev = Event {
                type_: EventType::Normal,
                reason: "LeaderElection".to_owned(),
                note: Some(note),
                action,
                secondary: None,
            };
            match tokio::time::timeout(timeout, recorder.publish(&ev, &reference)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(error = %e, "recording the leader election Event failed"),
                Err(_) => debug!("recording the leader election Event timed out"),
            }
        });
    }
}

/// Why a Lease could not be turned into a record.
#[derive(Debug)]
struct Undecodable(String);

impl fmt::Display for Undecodable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Undecodable {}

/// A call refused by the API server's authorization (403) or authentication (401).
#[derive(Debug)]
pub struct Forbidden {
    /// The API verb: `get`, `watch`, `create`, `update` or `delete`.
    pub verb: &'static str,
    /// The namespace of the Lease.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// The HTTP status code (403 or 401).
    pub code: u16,
    /// The API server's message.
    pub message: String,
}

impl fmt::Display for Forbidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.code == 401 {
            write!(
                f,
                "the API server did not accept the credentials (401) to {} lease {:?} in \
                 namespace {:?}: {}",
                self.verb, self.name, self.namespace, self.message
            )
        } else {
            write!(
                f,
                "RBAC forbids verb {:?} on resource \"leases\" (group coordination.k8s.io) named \
                 {:?} in namespace {:?}; grant it in a Role: {}",
                self.verb, self.name, self.namespace, self.message
            )
        }
    }
}

impl std::error::Error for Forbidden {}

/// An API server response that is not a success, kept as the `source` of an [`Error`].
#[derive(Debug)]
struct ApiStatus(Box<Status>);

impl fmt::Display for ApiStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.0.code, self.0.reason, self.0.message)
    }
}

impl std::error::Error for ApiStatus {}

fn map_err(namespace: &str, verb: &'static str, name: &str, e: kube::Error) -> Error {
    let status = match e {
        kube::Error::Api(s) => s,
        e @ (kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_)) => {
            return Error::Unavailable {
                store: KIND,
                source: Box::new(e),
            }
        }
        e => {
            return Error::Backend {
                store: KIND,
                source: Box::new(e),
            }
        }
    };
    match (status.code, status.reason.as_str()) {
        (409, "AlreadyExists") => Error::AlreadyExists {
            store: KIND,
            name: name.to_owned(),
        },
        (409, _) => Error::Conflict {
            store: KIND,
            name: name.to_owned(),
        },
        // An update or delete of a Lease that is gone: the version is not the stored one.
        (404, _) if verb == "update" || verb == "delete" => Error::Conflict {
            store: KIND,
            name: name.to_owned(),
        },
        (404, _) if verb == "create" => Error::Config {
            rule: format!(
                "kubernetes: namespace {namespace:?} does not exist (creating lease {name:?} \
                 there returned 404: {}); create the namespace or use another",
                status.message
            ),
        },
        (401 | 403, _) => Error::PermissionDenied {
            store: KIND,
            operation: verb,
            name: name.to_owned(),
            source: Box::new(Forbidden {
                verb,
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                code: status.code,
                message: status.message.clone(),
            }),
        },
        // Invalid: the API server's validation refused the object; the same write cannot pass.
        (422, _) => Error::Rejected {
            store: KIND,
            name: name.to_owned(),
            source: Box::new(ApiStatus(status)),
        },
        (429 | 500..=599, _) => Error::Unavailable {
            store: KIND,
            source: Box::new(ApiStatus(status)),
        },
        _ => Error::Backend {
            store: KIND,
            source: Box::new(ApiStatus(status)),
        },
    }
}

/// Checks a Lease name: a DNS-1123 subdomain (what the API server requires of object names).
fn check_name(name: &str) -> Result<()> {
    dns1123_subdomain(name).map_err(|reason| Error::InvalidName {
        store: KIND,
        name: name.to_owned(),
        reason: format!(
            "a Lease name must be a DNS-1123 subdomain: at most 253 characters, lowercase \
             letters, digits, '-' and '.', starting and ending with a letter or digit ({reason})"
        ),
    })
}

fn dns1123_subdomain(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if name.len() > 253 {
        return Err(format!("it has {} characters", name.len()));
    }
    for label in name.split('.') {
        dns1123_chars(label)?;
    }
    Ok(())
}

fn dns1123_label(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if name.len() > 63 {
        return Err(format!(
            "it has {} characters, at most 63 allowed",
            name.len()
        ));
    }
    dns1123_chars(name)
}

fn dns1123_chars(part: &str) -> std::result::Result<(), String> {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if let Some(c) = part.chars().find(|&c| !(ok(c) || c == '-')) {
        return Err(format!("{c:?} is not allowed"));
    }
    match (part.chars().next(), part.chars().last()) {
        (Some(a), Some(b)) if ok(a) && ok(b) => Ok(()),
        _ => Err("every dot-separated part must start and end with a letter or digit".into()),
    }
}

fn to_micro(t: Option<SystemTime>, what: &str) -> Result<Option<MicroTime>> {
    t.map(|t| {
        Timestamp::try_from(t).map(MicroTime).map_err(|e| {
            Error::config(format!(
                "kubernetes: {what} {t:?} is outside the range a Lease can hold: {e}"
            ))
        })
    })
    .transpose()
}

fn from_micro(t: Option<&MicroTime>) -> Option<SystemTime> {
    t.map(|t| SystemTime::from(t.0))
}

/// The Lease spec for `record` (a vacant record as client-go's release writes it), without
/// `leaseTransitions`, which depends on the Lease it replaces.
fn encode_spec(record: &LeaseRecord) -> Result<LeaseSpec> {
    let Some(holder) = &record.holder else {
        let now = to_micro(record.renew_time.or(Some(SystemTime::now())), "renew_time")?;
        return Ok(LeaseSpec {
            holder_identity: Some(String::new()),
            lease_duration_seconds: Some(1),
            acquire_time: now.clone(),
            renew_time: now,
            ..LeaseSpec::default()
        });
    };
    if holder.is_empty() {
        return Err(Error::config(
            "kubernetes: a holder identity must not be empty (an empty holderIdentity means vacant)",
        ));
    }
    let d = record.lease_duration;
    let secs = i32::try_from(d.as_secs())
        .ok()
        .filter(|&s| s > 0 && d.subsec_nanos() == 0 && d <= MAX_DURATION)
        .ok_or_else(|| {
            Error::config(format!(
                "kubernetes: lease_duration {d:?} is not a whole number of seconds from 1 to \
                 {} (7 days): a Lease holds leaseDurationSeconds",
                MAX_DURATION.as_secs()
            ))
        })?;
    Ok(LeaseSpec {
        holder_identity: Some(holder.clone()),
        lease_duration_seconds: Some(secs),
        acquire_time: to_micro(record.acquire_time, "acquire_time")?,
        renew_time: to_micro(record.renew_time, "renew_time")?,
        ..LeaseSpec::default()
    })
}

/// The lowest token a write replacing resourceVersion `rv` may store: `rv + 1`, above every
/// token any earlier write stored (see [Fencing tokens](self#fencing-tokens)).
fn token_floor(namespace: &str, name: &str, rv: Option<&str>) -> Result<u64> {
    let rv = rv.unwrap_or_default();
    let fencing = |reason: String| Error::Fencing {
        store: KIND,
        name: name.to_owned(),
        reason,
    };
    let n = parse_decimal::<u64>(rv).ok_or_else(|| {
        fencing(format!(
            "the resourceVersion {rv:?} of lease {name:?} in namespace {namespace:?} is not a \
             decimal number, so the API server is not backed by etcd the way tenure relies on \
             (etcd's revision as a floor for fencing tokens); refusing to start a term whose \
             token might repeat an earlier one"
        ))
    })?;
    n.checked_add(1).ok_or_else(|| {
        fencing(format!(
            "the resourceVersion of lease {name:?} in namespace {namespace:?} is u64::MAX"
        ))
    })
}

/// A decimal number: ASCII digits only (no sign, no spaces).
fn parse_decimal<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The [`TOKEN_ANNOTATION`] value: the token and the `leaseTransitions` written with it.
fn format_token(token: u64, lease_transitions: i32) -> String {
    format!("{token}/{lease_transitions}")
}

/// Parses a [`TOKEN_ANNOTATION`] value into the token and the `leaseTransitions` written
/// with it.
fn parse_token(value: &str) -> std::result::Result<(u64, i32), String> {
    let malformed = || {
        format!(
            "annotation {TOKEN_ANNOTATION} is {value:?}, not \"<token>/<leaseTransitions>\" \
             (two decimal numbers, the first at most u64::MAX, the second at most i32::MAX)"
        )
    };
    let (token, lt) = value.split_once('/').ok_or_else(malformed)?;
    match (parse_decimal(token), parse_decimal(lt)) {
        (Some(token), Some(lt)) => Ok((token, lt)),
        _ => Err(malformed()),
    }
}

/// The total size the API server counts for `annotations` (every key and value), with
/// [`TOKEN_ANNOTATION`] counted at its widest whatever it holds now.
fn annotations_size(annotations: Option<&BTreeMap<String, String>>) -> usize {
    let others: usize = annotations
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != TOKEN_ANNOTATION)
        .map(|(k, v)| k.len() + v.len())
        .sum();
    others + TOKEN_ANNOTATION.len() + TOKEN_VALUE_WIDEST
}

/// Refuses annotations the API server would refuse (see [Sizes](self#sizes)).
fn check_size(name: &str, annotations: Option<&BTreeMap<String, String>>) -> Result<()> {
    let size = annotations_size(annotations);
    if size > ANNOTATIONS_LIMIT {
        return Err(Error::TooLarge {
            store: KIND,
            name: name.to_owned(),
            size,
            limit: ANNOTATIONS_LIMIT,
            what: ANNOTATIONS_WHAT,
        });
    }
    Ok(())
}

/// A write about to replace `current`: the Lease to send, the token it stores and whether it
/// starts a term.
struct Replacement {
    lease: Lease,
    token: u64,
    starts_term: bool,
}

/// The Lease that replaces `current` (sent with its resourceVersion as precondition) with
/// `record`. `previous` is the record `current` holds, `None` for tenure's placeholder.
///
/// A write that starts a term stores the token `max(record.transitions, rv + 1)` and
/// `leaseTransitions` + 1 (saturating); any other write keeps both.
fn replacement(
    namespace: &str,
    name: &str,
    current: &Lease,
    previous: Option<&LeaseRecord>,
    record: &LeaseRecord,
) -> Result<Replacement> {
    let mut spec = encode_spec(record)?;
    let starts = starts_term(previous, record);
    let prev_lt = current
        .spec
        .as_ref()
        .and_then(|s| s.lease_transitions)
        .unwrap_or(0)
        .max(0);
    let (token, lt) = if starts {
        let floor = token_floor(
            namespace,
            name,
            current.metadata.resource_version.as_deref(),
        )?;
        (record.transitions.max(floor), prev_lt.saturating_add(1))
    } else {
        (record.transitions, prev_lt)
    };
    spec.lease_transitions = Some(lt);
    let mut lease = current.clone();
    set_annotation(&mut lease.metadata, VALUE_ANNOTATION, record.value.clone());
    set_annotation(
        &mut lease.metadata,
        TOKEN_ANNOTATION,
        Some(format_token(token, lt)),
    );
    check_size(name, lease.metadata.annotations.as_ref())?;
    // The API server keeps an identical update as a no-op with the same resourceVersion;
    // nudge renewTime by a microsecond so that every write is one. Compared as sent:
    // MicroTime keeps microseconds only.
    let same = serde_json::to_value(current.spec.as_ref()).ok()
        == serde_json::to_value(Some(&spec)).ok()
        && current.metadata.annotations == lease.metadata.annotations;
    if same {
        if let Some(t) = spec.renew_time.as_mut() {
            t.0 =
                t.0.checked_add(k8s_openapi::jiff::SignedDuration::from_micros(1))
                    .unwrap_or(t.0);
        }
    }
    lease.spec = Some(spec);
    Ok(Replacement {
        lease,
        token,
        starts_term: starts,
    })
}

/// tenure's placeholder for `put(Create)`: a vacant Lease with `leaseTransitions: 0` and no
/// tenure annotations, whose resourceVersion becomes the first term's floor.
fn placeholder(namespace: &str, name: &str) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(String::new()),
            lease_duration_seconds: Some(1),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        }),
    }
}

/// Whether `lease` is shaped like tenure's [`placeholder`]: vacant, `leaseTransitions: 0`,
/// no times and no token — the first half of a create, which its second half overwrites at
/// once (or, if the creator stopped in between, a vacant Lease anybody may acquire).
fn is_placeholder(lease: &Lease) -> bool {
    let Some(spec) = &lease.spec else {
        return false;
    };
    spec.holder_identity.as_deref() == Some("")
        && spec.lease_duration_seconds == Some(1)
        && spec.lease_transitions == Some(0)
        && spec.acquire_time.is_none()
        && spec.renew_time.is_none()
        && lease
            .metadata
            .annotations
            .as_ref()
            .is_none_or(|a| !a.contains_key(TOKEN_ANNOTATION))
}

/// The record a Lease holds, or why it holds none tenure can read.
fn decode(lease: &Lease) -> std::result::Result<LeaseRecord, String> {
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.filter(|h| !h.is_empty());
    let lease_transitions = match spec.lease_transitions {
        None => 0,
        Some(t) => u64::try_from(t).map_err(|_| format!("leaseTransitions is negative ({t})"))?,
    };
    let lease_duration = match (spec.lease_duration_seconds, &holder) {
        (Some(s), _) if s > 0 => Duration::from_secs(s.unsigned_abs().into()),
        (Some(s), Some(_)) => {
            return Err(format!(
                "leaseDurationSeconds is {s}: a held lease needs a positive duration"
            ))
        }
        (None, Some(_)) => {
            return Err("a holderIdentity is set but leaseDurationSeconds is missing".into())
        }
        (Some(s), None) if s < 0 => return Err(format!("leaseDurationSeconds is negative ({s})")),
        (_, None) => Duration::from_secs(1),
    };
    if lease_duration > MAX_DURATION {
        return Err(format!(
            "leaseDurationSeconds is {}, more than the {} (7 days) tenure accepts: its holder \
             would practically never expire",
            lease_duration.as_secs(),
            MAX_DURATION.as_secs()
        ));
    }
    let annotations = lease.metadata.annotations.as_ref();
    // Fresh (its leaseTransitions part equals spec.leaseTransitions) or stale (a client-go
    // elector started a term since and kept the annotation), the token is the annotation's:
    // the last tenure issued.
    let transitions = match annotations.and_then(|a| a.get(TOKEN_ANNOTATION)) {
        Some(v) => parse_token(v)?.0,
        None => lease_transitions,
    };
    let value = annotations.and_then(|a| a.get(VALUE_ANNOTATION)).cloned();
    Ok(LeaseRecord {
        holder,
        lease_duration,
        acquire_time: from_micro(spec.acquire_time.as_ref()),
        renew_time: from_micro(spec.renew_time.as_ref()),
        transitions,
        value,
    })
}

fn set_annotation(meta: &mut ObjectMeta, key: &str, value: Option<String>) {
    match value {
        Some(v) => {
            meta.annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(key.to_owned(), v);
        }
        None => {
            if let Some(a) = meta.annotations.as_mut() {
                a.remove(key);
                if a.is_empty() {
                    meta.annotations = None;
                }
            }
        }
    }
}

impl KubeLeaseStore {
    /// The record `lease` holds and its version, as `get` and the watch report them, or
    /// [`Error::Decode`].
    fn stored(&self, name: &str, lease: &Lease) -> Result<Stored> {
        let record = decode(lease).map_err(|why| Error::Decode {
            store: KIND,
            key: self.key(name),
            source: Box::new(Undecodable(why)),
        })?;
        Ok(Stored::new(record, version_of(self, name, lease)?))
    }
}

fn version_of(store: &KubeLeaseStore, name: &str, lease: &Lease) -> Result<Version> {
    match lease.metadata.resource_version.as_deref() {
        Some(v) if !v.is_empty() => Ok(Version::new(v)),
        _ => Err(Error::Decode {
            store: KIND,
            key: store.key(name),
            source: Box::new(Undecodable("the Lease has no resourceVersion".into())),
        }),
    }
}

#[async_trait::async_trait]
impl LeaseStore for KubeLeaseStore {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn get(&self, name: &str) -> Result<Option<Stored>> {
        check_name(name)?;
        let Some(lease) = self.read_lease(name).await? else {
            return Ok(None);
        };
        self.stored(name, &lease).map(Some)
    }

    async fn put(&self, name: &str, record: &LeaseRecord, mode: PutMode) -> Result<Version> {
        check_name(name)?;
        let ns = self.inner.namespace.as_str();
        let (current, previous) = match mode {
            PutMode::Create => {
                // Refuse what cannot be written before the placeholder is created.
                encode_spec(record)?;
                let mut meta = ObjectMeta::default();
                set_annotation(&mut meta, VALUE_ANNOTATION, record.value.clone());
                check_size(name, meta.annotations.as_ref())?;
                let pp = PostParams::default();
                let created = self
                    .call(
                        "create",
                        name,
                        self.inner.api.create(&pp, &placeholder(ns, name)),
                    )
                    .await?;
                self.remember(name, created.clone());
                (created, None)
            }
            PutMode::Update(version) => {
                let current = match self.remembered(name, &version) {
                    Some(l) => l,
                    None => match self.read_lease(name).await? {
                        Some(l)
                            if l.metadata.resource_version.as_deref() == Some(version.as_str()) =>
                        {
                            l
                        }
                        _ => {
                            return Err(Error::Conflict {
                                store: KIND,
                                name: name.to_owned(),
                            })
                        }
                    },
                };
                // The stored record must be one tenure can read: garbage is never overwritten.
                let previous = decode(&current).map_err(|why| Error::Decode {
                    store: KIND,
                    key: self.key(name),
                    source: Box::new(Undecodable(why)),
                })?;
                (current, Some(previous))
            }
        };
        let creating = previous.is_none();
        let next = replacement(ns, name, &current, previous.as_ref(), record)?;
        let pp = PostParams::default();
        let written = match self
            .call(
                "update",
                name,
                self.inner.api.replace(name, &pp, &next.lease),
            )
            .await
        {
            Ok(l) => l,
            // Somebody wrote over our placeholder (or deleted it) first.
            Err(Error::Conflict { .. }) if creating => {
                return Err(Error::AlreadyExists {
                    store: KIND,
                    name: name.to_owned(),
                })
            }
            Err(e) => return Err(e),
        };
        let version = version_of(self, name, &written)?;
        self.remember(name, written.clone());
        debug!(lease = %self.key(name), fencing_token = next.token, starts_term = next.starts_term, "wrote the Lease");
        let prev_holder = previous.as_ref().and_then(|p| p.holder.as_deref());
        match &record.holder {
            Some(h) if next.starts_term => {
                self.record_event(&written, format!("{h} became leader"), "Acquire");
            }
            None => {
                if let Some(p) = prev_holder {
                    self.record_event(&written, format!("{p} stopped leading"), "Release");
                }
            }
            _ => {}
        }
        Ok(version)
    }

    fn watch(&self, name: &str) -> Option<WatchStream> {
        if check_name(name).is_err() {
            // `get` reports the invalid name; a watch that never yields is the honest hint.
            return Some(futures_util::stream::pending().boxed());
        }
        let state = Watcher {
            store: self.clone(),
            name: name.to_owned(),
            from: From::Now,
            events: None,
            failures: 0,
            owe_yield: false,
            ended: false,
            last: None,
            warm_after: None,
        };
        Some(
            futures_util::stream::unfold(
                state,
                |mut w| async move { w.next().await.map(|r| (r, w)) },
            )
            .boxed(),
        )
    }

    async fn delete(&self, name: &str, version: &Version) -> Result<()> {
        check_name(name)?;
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: Some(version.as_str().to_owned()),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        self.call("delete", name, self.inner.api.delete(name, &dp))
            .await?;
        self.forget(name, None);
        Ok(())
    }

    /// Tokens survive `kubectl delete lease`: their floor is etcd's revision (see
    /// [Fencing tokens](self#fencing-tokens) for what can still break that). The watch
    /// reports every write with the Lease it wrote (see [Watch](self#watch)).
    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
            .with_durable_tokens(true)
            .with_watch_every_write(true)
    }
}

/// Where a (re)started watch begins.
enum From {
    /// Just after this resourceVersion (the last event seen): nothing is missed.
    After(String),
    /// At the current state (resourceVersion unset), which the server first replays as an
    /// ADDED event if the Lease exists: whatever changed before the watch was established is
    /// reported by that event, so the caller re-reads. Needs `watch` on the one Lease only
    /// (no `list`, which a Role with `resourceNames` cannot grant).
    Now,
}

/// One Lease's watch: restarted when the server ends it, on 410 Gone and after errors; see
/// [Watch](self#watch) for what it yields.
struct Watcher {
    store: KubeLeaseStore,
    name: String,
    from: From,
    events: Option<BoxStream<'static, kube::Result<WatchEvent<Lease>>>>,
    failures: u32,
    /// A gap: yield a [`StoreEvent::Hint`] before anything else.
    owe_yield: bool,
    ended: bool,
    /// The resourceVersion of the last event yielded, if a decimal number: an event of an
    /// older one is never yielded after it.
    last: Option<u64>,
    /// When the watch last (re)started, and when a warm-up read is due unless the store sends
    /// another request since.
    warm_after: Option<(tokio::time::Instant, tokio::time::Instant)>,
}

/// When the next keep-warm read is due: [`KEEP_WARM`] after the `last` request, or at the
/// warm-up's due time if the watch (re)started after the last request — whichever comes first.
fn warm_at(
    last: tokio::time::Instant,
    warm_up: Option<(tokio::time::Instant, tokio::time::Instant)>,
) -> tokio::time::Instant {
    let idle = last + KEEP_WARM;
    match warm_up {
        Some((started, due)) if last < started => idle.min(due),
        _ => idle,
    }
}

impl Watcher {
    async fn next(&mut self) -> Option<Result<StoreEvent>> {
        loop {
            if self.ended {
                return None;
            }
            let Some(events) = self.events.as_mut() else {
                if self.failures > 0 {
                    let exp = self.failures.min(5);
                    tokio::time::sleep(
                        Duration::from_millis(100 << exp).min(Duration::from_secs(2)),
                    )
                    .await;
                }
                match self.start().await {
                    Ok(s) => {
                        self.events = Some(s);
                        // The first watch has just taken the connection of the elector's first
                        // read: warm another one at once. A restart waits WARM_UP_DELAY, so
                        // that a leader's renewals spare it the read.
                        let started = tokio::time::Instant::now();
                        let delay = if self.last.is_none() {
                            Duration::ZERO
                        } else {
                            WARM_UP_DELAY
                        };
                        self.warm_after = Some((started, started + delay));
                    }
                    Err(e @ Error::PermissionDenied { .. }) => {
                        self.ended = true;
                        return Some(Err(e));
                    }
                    Err(e) => {
                        debug!(lease = %self.name, error = %e, "starting the Lease watch failed; retrying");
                        self.failures = self.failures.saturating_add(1);
                        self.from = From::Now;
                        self.owe_yield = true;
                        continue;
                    }
                }
                if std::mem::take(&mut self.owe_yield) {
                    return Some(Ok(StoreEvent::Hint));
                }
                continue;
            };
            let idle = Duration::from_secs(u64::from(WATCH_SECONDS) + 30);
            let warm_at = warm_at(self.store.last_request(), self.warm_after);
            let next = tokio::select! {
                next = tokio::time::timeout(idle, events.next()) => next,
                _ = tokio::time::sleep_until(warm_at) => {
                    if let Some(out) = self.keep_warm().await {
                        return Some(out);
                    }
                    continue;
                }
            };
            match next {
                Err(_) | Ok(None) => {
                    // The server ended the watch (or went silent): resume where we were. A
                    // watch that never saw a resourceVersion restarts at the current state,
                    // and what happened in between is a gap.
                    self.events = None;
                    if matches!(self.from, From::Now) {
                        self.owe_yield = true;
                    }
                }
                Ok(Some(Ok(event))) => {
                    if let Some(out) = self.on_event(event) {
                        return Some(out);
                    }
                }
                Ok(Some(Err(kube::Error::Api(status)))) if matches!(status.code, 401 | 403) => {
                    return Some(Err(self.refused(kube::Error::Api(status))));
                }
                Ok(Some(Err(e))) => {
                    debug!(lease = %self.name, error = %e, "the Lease watch broke; restarting");
                    self.events = None;
                    self.failures = self.failures.saturating_add(1);
                    self.from = From::Now;
                    self.owe_yield = true;
                }
            }
        }
    }

    /// Reads the Lease to keep a pooled connection warm (see [`KEEP_WARM`]); the read doubles
    /// as a safety read: a newer Lease than the watch reported is yielded. Errors are left to
    /// the watch and the elector's own reads.
    async fn keep_warm(&mut self) -> Option<Result<StoreEvent>> {
        if tokio::time::Instant::now() < warm_at(self.store.last_request(), self.warm_after) {
            return None; // another request kept it warm meanwhile
        }
        self.warm_after = None;
        match self.store.read_lease(&self.name).await {
            Ok(Some(lease)) => {
                let rv = lease.metadata.resource_version.clone();
                let newer = rv
                    .as_deref()
                    .and_then(parse_decimal::<u64>)
                    .is_some_and(|v| self.last.is_none_or(|last| v > last));
                if !newer || is_placeholder(&lease) || !self.in_order(rv.as_deref()) {
                    return None;
                }
                self.store
                    .stored(&self.name, &lease)
                    .ok()
                    .map(|s| Ok(StoreEvent::Put(s)))
            }
            Ok(None) => None,
            Err(e) => {
                debug!(lease = %self.name, error = %e, "the keep-warm read failed");
                None
            }
        }
    }

    /// What one event from the API server yields, if anything.
    fn on_event(&mut self, event: WatchEvent<Lease>) -> Option<Result<StoreEvent>> {
        match event {
            WatchEvent::Added(lease) | WatchEvent::Modified(lease) => {
                self.failures = 0;
                let rv = lease.metadata.resource_version.clone();
                if let Some(rv) = &rv {
                    self.from = From::After(rv.clone());
                }
                // The next update carries this Lease's metadata without reading it first.
                self.store.remember(&self.name, lease.clone());
                if !self.in_order(rv.as_deref()) {
                    return None;
                }
                if is_placeholder(&lease) {
                    // The first half of a create: its second half follows at once. Report
                    // that the Lease appeared, not a vacancy to race the creator for.
                    return Some(Ok(StoreEvent::Hint));
                }
                match self.store.stored(&self.name, &lease) {
                    Ok(stored) => Some(Ok(StoreEvent::Put(stored))),
                    // As `get` reports it: final, the elector stops.
                    Err(e) => {
                        self.ended = true;
                        self.events = None;
                        Some(Err(e))
                    }
                }
            }
            WatchEvent::Deleted(lease) => {
                self.failures = 0;
                let rv = lease.metadata.resource_version;
                if let Some(rv) = &rv {
                    self.from = From::After(rv.clone());
                }
                self.store.forget(&self.name, rv.as_deref());
                self.in_order(rv.as_deref())
                    .then_some(Ok(StoreEvent::Deleted))
            }
            WatchEvent::Bookmark(b) => {
                self.from = From::After(b.metadata.resource_version);
                None
            }
            WatchEvent::Error(status) if matches!(status.code, 401 | 403) => {
                Some(Err(self.refused(kube::Error::Api(status))))
            }
            WatchEvent::Error(status) => {
                if status.code == 410 {
                    debug!(lease = %self.name, "the Lease watch expired (410 Gone); restarting");
                } else {
                    debug!(lease = %self.name, status = ?status, "the Lease watch failed; restarting");
                    self.failures = self.failures.saturating_add(1);
                }
                self.events = None;
                self.from = From::Now;
                self.owe_yield = true;
                None
            }
        }
    }

    /// Whether an event at resourceVersion `rv` may be yielded: not if it is older than the
    /// last one yielded (both decimal numbers); if so, it becomes the last one.
    fn in_order(&mut self, rv: Option<&str>) -> bool {
        let Some(rv) = rv.and_then(parse_decimal::<u64>) else {
            return true;
        };
        if self.last.is_some_and(|last| rv < last) {
            debug!(lease = %self.name, resource_version = rv, "ignoring an event older than one already reported");
            return false;
        }
        self.last = Some(rv);
        true
    }

    /// A 401 or 403 while watching: [`Error::PermissionDenied`] for verb `watch`, which ends
    /// the stream (retrying cannot fix it).
    fn refused(&mut self, e: kube::Error) -> Error {
        self.ended = true;
        self.events = None;
        self.store.map_err("watch", &self.name, e)
    }

    async fn start(&mut self) -> Result<BoxStream<'static, kube::Result<WatchEvent<Lease>>>> {
        let rv = match &self.from {
            From::After(rv) => rv.clone(),
            From::Now => String::new(),
        };
        let wp = WatchParams {
            field_selector: Some(format!("metadata.name={}", self.name)),
            timeout: Some(WATCH_SECONDS),
            ..WatchParams::default()
        };
        let api = self.store.inner.api.clone();
        let s = self
            .store
            .call(
                "watch",
                &self.name,
                async move { api.watch(&wp, &rv).await },
            )
            .await?;
        Ok(s.boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "a-b", "a.b", "tc-cas-0001", &"x".repeat(253)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "A",
            "a_b",
            "a/b",
            "-a",
            "a-",
            "a..b",
            ".a",
            "a.",
            &"x".repeat(254),
            "é",
        ] {
            assert!(
                matches!(check_name(bad), Err(Error::InvalidName { .. })),
                "{bad}"
            );
        }
        assert!(dns1123_label("kube-system").is_ok());
        assert!(dns1123_label("a.b").is_err());
    }

    /// A Lease as the API server returns it, at resourceVersion `rv`.
    fn stored(rv: &str, spec: LeaseSpec, annotations: &[(&str, &str)]) -> Lease {
        let annotations: BTreeMap<String, String> = annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Lease {
            metadata: ObjectMeta {
                name: Some("x".into()),
                namespace: Some("ns".into()),
                resource_version: Some(rv.into()),
                annotations: (!annotations.is_empty()).then_some(annotations),
                ..ObjectMeta::default()
            },
            spec: Some(spec),
        }
    }

    fn annotation<'a>(lease: &'a Lease, key: &str) -> Option<&'a str> {
        lease
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .map(String::as_str)
    }

    fn lease_transitions(lease: &Lease) -> Option<i32> {
        lease.spec.as_ref().and_then(|s| s.lease_transitions)
    }

    #[test]
    fn encode_decode_round_trip() {
        let mut r = LeaseRecord::held_by("pod-a", Duration::from_secs(15), 7);
        r.value = Some("10.0.0.1:80".into());
        // A create, over the placeholder at resourceVersion 3: the floor (4) is below the 7
        // asked for.
        let p = stored("3", placeholder("ns", "x").spec.unwrap(), &[]);
        let next = replacement("ns", "x", &p, None, &r).unwrap();
        assert!(next.starts_term);
        assert_eq!(next.token, 7);
        assert_eq!(lease_transitions(&next.lease), Some(1));
        assert_eq!(annotation(&next.lease, TOKEN_ANNOTATION), Some("7/1"));
        let back = decode(&next.lease).unwrap();
        assert_eq!(back.holder, r.holder);
        assert_eq!(back.lease_duration, r.lease_duration);
        assert_eq!(back.transitions, 7);
        assert_eq!(back.value, r.value);
        // A renewal keeps the token and leaseTransitions, and other annotations.
        let mut written = next.lease;
        written.metadata.resource_version = Some("50".into());
        set_annotation(&mut written.metadata, "other", Some("kept".into()));
        let renewal = replacement("ns", "x", &written, Some(&back), &back).unwrap();
        assert!(!renewal.starts_term);
        assert_eq!(renewal.token, 7);
        assert_eq!(lease_transitions(&renewal.lease), Some(1));
        assert_eq!(annotation(&renewal.lease, TOKEN_ANNOTATION), Some("7/1"));
        assert_eq!(annotation(&renewal.lease, "other"), Some("kept"));
        let again = decode(&renewal.lease).unwrap();
        assert_eq!((again.holder, again.transitions), (back.holder.clone(), 7));
        // An identical write is nudged by a microsecond, so that it is a write.
        assert!(again.renew_time > back.renew_time);
        // A big token round-trips: no int32 in the way.
        let mut big = back.clone();
        big.transitions = u64::MAX;
        let next = replacement("ns", "x", &written, Some(&back), &big).unwrap();
        assert_eq!(next.token, u64::MAX);
        assert_eq!(decode(&next.lease).unwrap().transitions, u64::MAX);
    }

    #[test]
    fn a_term_starts_above_the_resource_version() {
        // kubectl delete lease, then a new incarnation: leaseTransitions restarted, while an
        // earlier term held 57. The Lease is now at resourceVersion 1000 > 57.
        let spec = LeaseSpec {
            holder_identity: Some(String::new()),
            lease_duration_seconds: Some(1),
            lease_transitions: Some(2),
            ..LeaseSpec::default()
        };
        let current = stored("1000", spec, &[(TOKEN_ANNOTATION, "3/2")]);
        let previous = decode(&current).unwrap();
        assert_eq!(previous.transitions, 3);
        let r = LeaseRecord::held_by("b", Duration::from_secs(15), 4);
        let next = replacement("ns", "x", &current, Some(&previous), &r).unwrap();
        assert!(next.starts_term);
        assert_eq!(
            next.token, 1001,
            "the floor is the replaced resourceVersion + 1"
        );
        assert_eq!(lease_transitions(&next.lease), Some(3));
        assert_eq!(annotation(&next.lease, TOKEN_ANNOTATION), Some("1001/3"));
        assert_eq!(decode(&next.lease).unwrap().transitions, 1001);
        // Asking for more than the floor gets what was asked.
        let r = LeaseRecord::held_by("b", Duration::from_secs(15), 5000);
        let next = replacement("ns", "x", &current, Some(&previous), &r).unwrap();
        assert_eq!(next.token, 5000);
        // leaseTransitions saturates, never refused.
        let mut at_max = current.clone();
        at_max.spec.as_mut().unwrap().lease_transitions = Some(i32::MAX);
        set_annotation(
            &mut at_max.metadata,
            TOKEN_ANNOTATION,
            Some(format!("3/{}", i32::MAX)),
        );
        let next = replacement("ns", "x", &at_max, Some(&previous), &r).unwrap();
        assert_eq!(lease_transitions(&next.lease), Some(i32::MAX));
        // The floor's edge: u64::MAX has no successor.
        assert!(matches!(
            token_floor("ns", "x", Some(&u64::MAX.to_string())),
            Err(Error::Fencing { .. })
        ));
    }

    #[test]
    fn a_resource_version_that_is_not_a_number_refuses_to_start_a_term() {
        let spec = LeaseSpec {
            holder_identity: Some("a".into()),
            lease_duration_seconds: Some(15),
            lease_transitions: Some(1),
            ..LeaseSpec::default()
        };
        for rv in ["", "abc", "12a", "-5", "+5", " 5", "0x10"] {
            let current = stored(rv, spec.clone(), &[(TOKEN_ANNOTATION, "9/1")]);
            let previous = decode(&current).unwrap();
            let r = LeaseRecord::held_by("b", Duration::from_secs(15), 10);
            match replacement("ns", "x", &current, Some(&previous), &r) {
                Err(Error::Fencing {
                    store,
                    name,
                    reason,
                }) => {
                    assert_eq!((store, name.as_str()), (KIND, "x"));
                    assert!(reason.contains("not a decimal number"), "{reason}");
                }
                Err(e) => panic!("{rv:?}: expected Fencing, got {e:?}"),
                Ok(_) => panic!("{rv:?}: expected Fencing, got a write"),
            }
            // A renewal does not start a term: it needs no floor.
            assert!(replacement("ns", "x", &current, Some(&previous), &previous).is_ok());
        }
    }

    #[test]
    fn token_annotations_are_decoded() {
        let spec = |lt: i32| LeaseSpec {
            holder_identity: Some("a".into()),
            lease_duration_seconds: Some(15),
            lease_transitions: Some(lt),
            ..LeaseSpec::default()
        };
        // Fresh: written with this leaseTransitions.
        let fresh = stored("9", spec(4), &[(TOKEN_ANNOTATION, "812/4")]);
        assert_eq!(decode(&fresh).unwrap().transitions, 812);
        // Stale: a client-go elector started a term since (leaseTransitions 5) and kept the
        // annotation: the last tenure token.
        let stale = stored("9", spec(5), &[(TOKEN_ANNOTATION, "812/4")]);
        assert_eq!(decode(&stale).unwrap().transitions, 812);
        // Absent: a Lease only client-go wrote.
        let absent = stored("9", spec(5), &[]);
        assert_eq!(decode(&absent).unwrap().transitions, 5);
        assert_eq!(
            decode(&stored("9", LeaseSpec::default(), &[]))
                .unwrap()
                .transitions,
            0
        );
        // Malformed: never guessed at.
        for bad in [
            "",
            "812",
            "812/",
            "/4",
            "a/4",
            "812/b",
            "-1/4",
            "812/-1",
            "+812/4",
            "812/4/1",
            " 812/4",
            "18446744073709551616/4",
            "812/2147483648",
        ] {
            let lease = stored("9", spec(4), &[(TOKEN_ANNOTATION, bad)]);
            let why = decode(&lease).expect_err(bad);
            assert!(why.contains(TOKEN_ANNOTATION), "{bad:?}: {why}");
        }
    }

    #[test]
    fn vacant_is_written_as_client_go_releases() {
        let held = LeaseRecord::held_by("pod-a", Duration::from_secs(15), 7);
        let current = stored(
            "20",
            LeaseSpec {
                holder_identity: Some("pod-a".into()),
                lease_duration_seconds: Some(15),
                lease_transitions: Some(3),
                ..LeaseSpec::default()
            },
            &[(TOKEN_ANNOTATION, "7/3"), (VALUE_ANNOTATION, "v")],
        );
        let mut r = held.clone();
        r.holder = None;
        r.value = None;
        let next = replacement("ns", "x", &current, Some(&held), &r).unwrap();
        assert!(!next.starts_term);
        let spec = next.lease.spec.clone().unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some(""));
        assert_eq!(spec.lease_duration_seconds, Some(1));
        assert_eq!(spec.lease_transitions, Some(3));
        assert_eq!(spec.acquire_time, spec.renew_time);
        assert_eq!(annotation(&next.lease, TOKEN_ANNOTATION), Some("7/3"));
        assert_eq!(annotation(&next.lease, VALUE_ANNOTATION), None);
    }

    #[test]
    fn unrepresentable_records_are_refused() {
        let half = LeaseRecord::held_by("a", Duration::from_millis(1500), 1);
        assert!(matches!(encode_spec(&half), Err(Error::Config { .. })));
        let long = LeaseRecord::held_by("a", MAX_DURATION + Duration::from_secs(1), 1);
        assert!(matches!(encode_spec(&long), Err(Error::Config { .. })));
        assert!(encode_spec(&LeaseRecord::held_by("a", MAX_DURATION, 1)).is_ok());
        let empty = LeaseRecord::held_by("", Duration::from_secs(1), 1);
        assert!(matches!(encode_spec(&empty), Err(Error::Config { .. })));
        // Tokens beyond int32 are fine: the token lives in an annotation.
        let big = LeaseRecord::held_by("a", Duration::from_secs(1), u64::from(u32::MAX) + 1);
        assert!(encode_spec(&big).is_ok());
    }

    #[test]
    fn oversized_annotations_are_refused() {
        let current = stored("5", placeholder("ns", "x").spec.unwrap(), &[]);
        // The most a value may hold: the limit less both annotations' keys and the widest token.
        let room = ANNOTATIONS_LIMIT
            - VALUE_ANNOTATION.len()
            - TOKEN_ANNOTATION.len()
            - TOKEN_VALUE_WIDEST;
        let mut r = LeaseRecord::held_by("a", Duration::from_secs(5), 1);
        r.value = Some("v".repeat(room));
        assert!(replacement("ns", "x", &current, None, &r).is_ok());
        r.value = Some("v".repeat(room + 1));
        match replacement("ns", "x", &current, None, &r) {
            Err(Error::TooLarge {
                store,
                size,
                limit,
                what,
                ..
            }) => {
                assert_eq!(store, KIND);
                assert_eq!(size, ANNOTATIONS_LIMIT + 1);
                assert_eq!(limit, 262_144);
                assert_eq!(what, ANNOTATIONS_WHAT);
            }
            other => panic!("expected TooLarge, got {:?}", other.map(|n| n.token)),
        }
        // Other annotations on the Lease count too.
        r.value = Some("v".repeat(room - 10));
        let crowded = stored(
            "5",
            placeholder("ns", "x").spec.unwrap(),
            &[("k", "0123456789")],
        );
        assert!(matches!(
            replacement("ns", "x", &crowded, None, &r),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn garbage_is_not_decoded() {
        let spec = |h: Option<&str>, d: Option<i32>, t: Option<i32>| Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: h.map(str::to_owned),
                lease_duration_seconds: d,
                lease_transitions: t,
                ..LeaseSpec::default()
            }),
        };
        assert!(decode(&spec(Some("a"), None, None)).is_err());
        assert!(decode(&spec(Some("a"), Some(0), None)).is_err());
        assert!(decode(&spec(Some("a"), Some(-3), None)).is_err());
        assert!(decode(&spec(Some("a"), Some(5), Some(-5))).is_err());
        // A lease longer than 7 days would make its holder unexpirable.
        let week = i32::try_from(MAX_DURATION.as_secs()).unwrap();
        assert!(decode(&spec(Some("a"), Some(week), None)).is_ok());
        assert!(decode(&spec(Some("a"), Some(week + 1), None)).is_err());
        assert!(decode(&spec(Some("a"), Some(i32::MAX), None)).is_err());
        // Vacant in both spellings, with or without a duration.
        assert_eq!(decode(&spec(Some(""), None, None)).unwrap().holder, None);
        assert_eq!(
            decode(&spec(None, Some(1), Some(3))).unwrap().transitions,
            3
        );
        // A Lease without a spec is vacant.
        let empty = Lease::default();
        assert!(decode(&empty).unwrap().is_vacant());
    }

    #[test]
    fn newer_resource_versions_supersede_older_ones() {
        assert!(supersedes(Some("11"), Some("10")));
        assert!(supersedes(Some("10"), Some("10")));
        assert!(!supersedes(Some("9"), Some("10")));
        // Numbers, not text: "9" < "10".
        assert!(supersedes(Some("10"), Some("9")));
        // Unless both are numbers, the later-arriving wins.
        for (a, b) in [
            (Some("x"), Some("10")),
            (Some("9"), Some("x")),
            (None, Some("10")),
        ] {
            assert!(supersedes(a, b), "{a:?} over {b:?}");
        }
    }

    /// A store whose client points nowhere: for what needs no API call.
    fn offline_store() -> KubeLeaseStore {
        let cfg = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = Client::try_from(cfg).unwrap();
        KubeLeaseStore::builder(client, "ns")
            .events(false)
            .build()
            .unwrap()
    }

    fn held(holder: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            lease_transitions: Some(1),
            renew_time: Some(MicroTime(Timestamp::from_second(1_700_000_000).unwrap())),
            ..LeaseSpec::default()
        }
    }

    #[tokio::test]
    async fn the_cache_keeps_the_newest_lease() {
        let s = offline_store();
        let v = |rv: &str| Version::new(rv);
        s.remember("x", stored("10", held("a"), &[]));
        // A late event of an older version does not replace it.
        s.remember("x", stored("9", held("b"), &[]));
        assert!(s.remembered("x", &v("10")).is_some());
        assert!(s.remembered("x", &v("9")).is_none());
        // A watched deletion replaces it; an older Lease arriving after it does not.
        s.forget("x", Some("12"));
        assert!(s.remembered("x", &v("10")).is_none());
        s.remember("x", stored("11", held("a"), &[]));
        assert!(s.remembered("x", &v("11")).is_none());
        s.remember("x", stored("13", held("c"), &[]));
        assert!(s.remembered("x", &v("13")).is_some());
        // A deletion older than the Lease seen changes nothing.
        s.forget("x", Some("12"));
        assert!(s.remembered("x", &v("13")).is_some());
        // Not numbers: the later-arriving wins.
        s.remember("x", stored("abc", held("d"), &[]));
        assert!(s.remembered("x", &v("abc")).is_some());
        s.remember("x", stored("5", held("e"), &[]));
        assert!(s.remembered("x", &v("5")).is_some());
        // Found missing by a read: forgotten.
        s.forget("x", None);
        assert!(s.remembered("x", &v("5")).is_none());
        // Names are apart.
        s.remember("y", stored("1", held("a"), &[]));
        assert!(s.remembered("x", &v("1")).is_none());
    }

    fn watcher(store: &KubeLeaseStore) -> Watcher {
        Watcher {
            store: store.clone(),
            name: "x".into(),
            from: From::Now,
            events: None,
            failures: 0,
            owe_yield: false,
            ended: false,
            last: None,
            warm_after: None,
        }
    }

    #[test]
    fn a_follower_keeps_a_connection_warm_and_a_leader_does_not_pay_for_it() {
        let t0 = tokio::time::Instant::now();
        // A follower: its last request came before the watch started.
        let started = t0 + Duration::from_secs(1);
        let restart = Some((started, started + WARM_UP_DELAY));
        assert_eq!(warm_at(t0, restart), started + WARM_UP_DELAY);
        assert_eq!(warm_at(t0, Some((started, started))), started);
        // A leader renewed after the watch started: nothing until the pool would go cold.
        let renewed = started + Duration::from_secs(2);
        assert_eq!(warm_at(renewed, restart), renewed + KEEP_WARM);
        assert_eq!(warm_at(renewed, None), renewed + KEEP_WARM);
        // Within the pool's 90 s idle timeout, and a 60 s-lease follower stays within one
        // request per lease: a watch and three reads per 240 s watch.
        assert!(KEEP_WARM < Duration::from_secs(90));
        assert!(WARM_UP_DELAY + KEEP_WARM * 2 < Duration::from_secs(u64::from(WATCH_SECONDS)));
    }

    fn event(kind: &str, object: serde_json::Value) -> WatchEvent<Lease> {
        serde_json::from_value(serde_json::json!({"type": kind, "object": object})).unwrap()
    }

    fn lease_json(lease: &Lease) -> serde_json::Value {
        let mut v = serde_json::to_value(lease).unwrap();
        v["apiVersion"] = "coordination.k8s.io/v1".into();
        v["kind"] = "Lease".into();
        v
    }

    #[tokio::test]
    async fn watch_events_carry_the_record() {
        let s = offline_store();
        let mut w = watcher(&s);
        let put =
            |w: &mut Watcher, kind: &str, lease: &Lease| w.on_event(event(kind, lease_json(lease)));
        // The create's placeholder: a hint, not a vacancy to race for.
        let p = stored("5", placeholder("ns", "x").spec.unwrap(), &[]);
        assert!(matches!(
            put(&mut w, "ADDED", &p),
            Some(Ok(StoreEvent::Hint))
        ));
        // The create's update: the record exactly as `get` decodes it, and its version.
        let a = stored(
            "6",
            held("a"),
            &[(TOKEN_ANNOTATION, "6/1"), (VALUE_ANNOTATION, "v")],
        );
        match put(&mut w, "MODIFIED", &a) {
            Some(Ok(StoreEvent::Put(st))) => {
                assert_eq!(st, Stored::new(decode(&a).unwrap(), Version::new("6")));
                assert_eq!(st.record.holder.as_deref(), Some("a"));
                assert_eq!(st.record.transitions, 6);
                assert_eq!(st.record.value.as_deref(), Some("v"));
            }
            other => panic!("expected a Put, got {other:?}"),
        }
        assert!(s.remembered("x", &Version::new("6")).is_some());
        assert!(matches!(&w.from, From::After(rv) if rv == "6"));
        // An older event after a newer one: neither yielded nor remembered.
        let old = stored("4", held("z"), &[]);
        assert!(put(&mut w, "MODIFIED", &old).is_none());
        assert!(s.remembered("x", &Version::new("6")).is_some());
        // A duplicate is allowed.
        assert!(matches!(
            put(&mut w, "MODIFIED", &a),
            Some(Ok(StoreEvent::Put(_)))
        ));
        // A bookmark yields nothing; a restart resumes after it.
        let bookmark = serde_json::json!({
            "kind": "Lease", "apiVersion": "coordination.k8s.io/v1",
            "metadata": {"resourceVersion": "7"},
        });
        assert!(w.on_event(event("BOOKMARK", bookmark)).is_none());
        assert!(matches!(&w.from, From::After(rv) if rv == "7"));
        // A deletion.
        let gone = stored("8", held("a"), &[]);
        assert!(matches!(
            put(&mut w, "DELETED", &gone),
            Some(Ok(StoreEvent::Deleted))
        ));
        assert!(s.remembered("x", &Version::new("6")).is_none());
        // 410 Gone: nothing now, a hint once restarted (at the current state).
        let gone = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410,
            "reason": "Expired", "message": "too old resource version",
        });
        assert!(w.on_event(event("ERROR", gone)).is_none());
        assert!(w.owe_yield && matches!(w.from, From::Now) && !w.ended);
        // A Lease that does not decode: Decode, as `get` would fail, and the end.
        let mut garbage = held("g");
        garbage.lease_duration_seconds = None;
        let garbage = stored("9", garbage, &[]);
        match put(&mut w, "MODIFIED", &garbage) {
            Some(Err(Error::Decode { store, key, .. })) => {
                assert_eq!((store, key.as_str()), (KIND, "ns/x"));
            }
            other => panic!("expected Decode, got {other:?}"),
        }
        assert!(w.ended);
    }

    #[tokio::test]
    async fn a_forbidden_watch_ends_with_permission_denied() {
        let s = offline_store();
        let mut w = watcher(&s);
        let forbidden = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403,
            "reason": "Forbidden", "message": "no",
        });
        assert!(matches!(
            w.on_event(event("ERROR", forbidden)),
            Some(Err(Error::PermissionDenied {
                operation: "watch",
                ..
            }))
        ));
        assert!(w.ended);
        assert!(w.next().await.is_none());
    }

    #[test]
    fn placeholders_are_recognised() {
        assert!(is_placeholder(&placeholder("ns", "x")));
        // A client-go release has times; a tenure release has its token.
        let mut released = placeholder("ns", "x");
        released.spec.as_mut().unwrap().renew_time =
            Some(MicroTime(Timestamp::from_second(1_700_000_000).unwrap()));
        assert!(!is_placeholder(&released));
        let mut tokened = placeholder("ns", "x");
        set_annotation(&mut tokened.metadata, TOKEN_ANNOTATION, Some("5/0".into()));
        assert!(!is_placeholder(&tokened));
        assert!(!is_placeholder(&stored("1", held("a"), &[])));
        assert!(!is_placeholder(&Lease::default()));
    }

    #[test]
    fn invalid_is_rejected_not_retried() {
        let status = |code: u16, reason: &str| {
            kube::Error::Api(Box::new(
                serde_json::from_value::<Status>(serde_json::json!({
                    "status": "Failure", "code": code, "reason": reason, "message": "m",
                }))
                .unwrap(),
            ))
        };
        let e = map_err("ns", "update", "x", status(422, "Invalid"));
        assert!(matches!(e, Error::Rejected { store: KIND, .. }), "{e:?}");
        assert!(!e.is_retryable());
        let e = map_err("ns", "watch", "x", status(403, "Forbidden"));
        assert!(
            matches!(
                e,
                Error::PermissionDenied {
                    operation: "watch",
                    ..
                }
            ),
            "{e:?}"
        );
    }
}
