//! [`KubeLeaseStore`]: elections and locks on Kubernetes `coordination.k8s.io/v1` Leases,
//! shareable with client-go's `tools/leaderelection`.
//!
//! One Lease per election name, in one namespace, written exactly as client-go writes it:
//!
//! | [`LeaseRecord`] | Lease | notes |
//! | --- | --- | --- |
//! | `holder` | `spec.holderIdentity` | `""` and absent both read as vacant; vacant is written as `""` |
//! | `lease_duration` | `spec.leaseDurationSeconds` | whole seconds, 1 to `i32::MAX`; anything else is refused with [`Error::Config`] |
//! | `acquire_time`, `renew_time` | `spec.acquireTime`, `spec.renewTime` | `MicroTime`: microseconds |
//! | `transitions` | `spec.leaseTransitions` | an `int32`: a fencing token beyond `i32::MAX` is refused with [`Error::Config`], never wrapped |
//! | `value` | annotation [`VALUE_ANNOTATION`] | absent when `None` |
//! | [`Version`] | `metadata.resourceVersion` | every write is an update with it as precondition |
//!
//! A release is written the way client-go's `ReleaseOnCancel` writes it: `holderIdentity: ""`,
//! `leaseDurationSeconds: 1`, `acquireTime` and `renewTime` now, `leaseTransitions` kept. So a
//! vacant record reads back with a lease duration of one second.
//!
//! tenure counts every new term in `leaseTransitions` (also a new term of the same holder),
//! client-go only a change of holder; both only ever increase it, so the two can share a
//! Lease and the counter stays a fencing token.
//!
//! A Lease tenure cannot read — a holder without a positive `leaseDurationSeconds`, a negative
//! `leaseTransitions` — makes `get` fail with [`Error::Decode`] naming `namespace/name`, and is
//! never overwritten.

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
use crate::record::LeaseRecord;
use crate::store::{LeaseStore, PutMode, Version, WatchStream};

const KIND: &str = "kubernetes";

/// The annotation holding [`LeaseRecord::value`], the leader's published value.
pub const VALUE_ANNOTATION: &str = "tenure.rs/value";

/// The `reportingController` of the Events tenure records.
pub const EVENT_CONTROLLER: &str = "tenure.rs/leader-election";

/// How long one API call may take by default (see [`Builder::timeout`]).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The server-side timeout of one watch request; the watch is restarted when it ends.
const WATCH_SECONDS: u32 = 240;

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
        _ => crate::elector::default_identity(),
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
    /// The last Lease seen per name (from a read or a write), to carry its metadata (labels,
    /// other annotations, owner references) into the next update, as client-go does.
    seen: Mutex<HashMap<String, Lease>>,
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

    fn remember(&self, name: &str, lease: Option<Lease>) {
        let mut seen = self
            .inner
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match lease {
            Some(l) => {
                seen.insert(name.to_owned(), l);
            }
            None => {
                seen.remove(name);
            }
        }
    }

    fn remembered(&self, name: &str, version: &Version) -> Option<Lease> {
        let seen = self
            .inner
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        seen.get(name)
            .filter(|l| l.metadata.resource_version.as_deref() == Some(version.as_str()))
            .cloned()
    }

    async fn call<T>(
        &self,
        verb: &'static str,
        name: &str,
        fut: impl std::future::Future<Output = kube::Result<T>>,
    ) -> Result<T> {
        with_timeout(KIND, verb, name, self.inner.timeout, async {
            fut.await.map_err(|e| self.map_err(verb, name, e))
        })
        .await
    }

    async fn read_lease(&self, name: &str) -> Result<Option<Lease>> {
        let found = self.call("get", name, self.inner.api.get_opt(name)).await?;
        self.remember(name, found.clone());
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

/// The Lease spec and value annotation for `record` (a vacant record as client-go's release).
fn encode(record: &LeaseRecord) -> Result<(LeaseSpec, Option<String>)> {
    let transitions = i32::try_from(record.transitions).map_err(|_| {
        Error::config(format!(
            "kubernetes: leaseTransitions is an int32; the fencing token {} does not fit",
            record.transitions
        ))
    })?;
    let Some(holder) = &record.holder else {
        let now = to_micro(record.renew_time.or(Some(SystemTime::now())), "renew_time")?;
        return Ok((
            LeaseSpec {
                holder_identity: Some(String::new()),
                lease_duration_seconds: Some(1),
                acquire_time: now.clone(),
                renew_time: now,
                lease_transitions: Some(transitions),
                ..LeaseSpec::default()
            },
            None,
        ));
    };
    if holder.is_empty() {
        return Err(Error::config(
            "kubernetes: a holder identity must not be empty (an empty holderIdentity means vacant)",
        ));
    }
    let d = record.lease_duration;
    let secs = i32::try_from(d.as_secs())
        .ok()
        .filter(|&s| s > 0 && d.subsec_nanos() == 0)
        .ok_or_else(|| {
            Error::config(format!(
                "kubernetes: lease_duration {d:?} is not a whole number of seconds from 1 to \
                 {}: a Lease holds leaseDurationSeconds",
                i32::MAX
            ))
        })?;
    Ok((
        LeaseSpec {
            holder_identity: Some(holder.clone()),
            lease_duration_seconds: Some(secs),
            acquire_time: to_micro(record.acquire_time, "acquire_time")?,
            renew_time: to_micro(record.renew_time, "renew_time")?,
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        },
        record.value.clone(),
    ))
}

/// The record a Lease holds, or why it holds none tenure can read.
fn decode(lease: &Lease) -> std::result::Result<LeaseRecord, String> {
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.filter(|h| !h.is_empty());
    let transitions = match spec.lease_transitions {
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
    let value = lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(VALUE_ANNOTATION))
        .cloned();
    Ok(LeaseRecord {
        holder,
        lease_duration,
        acquire_time: from_micro(spec.acquire_time.as_ref()),
        renew_time: from_micro(spec.renew_time.as_ref()),
        transitions,
        value,
    })
}

fn set_value(meta: &mut ObjectMeta, value: Option<String>) {
    match value {
        Some(v) => {
            meta.annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(VALUE_ANNOTATION.to_owned(), v);
        }
        None => {
            if let Some(a) = meta.annotations.as_mut() {
                a.remove(VALUE_ANNOTATION);
                if a.is_empty() {
                    meta.annotations = None;
                }
            }
        }
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

    async fn get(&self, name: &str) -> Result<Option<(LeaseRecord, Version)>> {
        check_name(name)?;
        let Some(lease) = self.read_lease(name).await? else {
            return Ok(None);
        };
        let record = decode(&lease).map_err(|why| Error::Decode {
            store: KIND,
            key: self.key(name),
            source: Box::new(Undecodable(why)),
        })?;
        Ok(Some((record, version_of(self, name, &lease)?)))
    }

    async fn put(&self, name: &str, record: &LeaseRecord, mode: PutMode) -> Result<Version> {
        check_name(name)?;
        let (mut spec, value) = encode(record)?;
        let (previous, written) = match mode {
            PutMode::Create => {
                let mut meta = ObjectMeta {
                    name: Some(name.to_owned()),
                    namespace: Some(self.inner.namespace.clone()),
                    ..ObjectMeta::default()
                };
                set_value(&mut meta, value);
                let lease = Lease {
                    metadata: meta,
                    spec: Some(spec),
                };
                let pp = PostParams::default();
                let created = self
                    .call("create", name, self.inner.api.create(&pp, &lease))
                    .await?;
                (None, created)
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
                let mut lease = current.clone();
                // The API server keeps an identical update as a no-op with the same
                // resourceVersion; nudge renewTime by a microsecond so that every write is one.
                let same = |a: Option<&LeaseSpec>, b: &LeaseSpec| {
                    // Compared as sent: MicroTime keeps microseconds only.
                    serde_json::to_value(a).ok() == serde_json::to_value(Some(b)).ok()
                };
                if same(lease.spec.as_ref(), &spec) && previous.value.as_deref() == value.as_deref()
                {
                    if let Some(t) = spec.renew_time.as_mut() {
                        t.0 =
                            t.0.checked_add(k8s_openapi::jiff::SignedDuration::from_micros(1))
                                .unwrap_or(t.0);
                    }
                }
                lease.spec = Some(spec);
                set_value(&mut lease.metadata, value);
                lease.metadata.resource_version = Some(version.as_str().to_owned());
                let pp = PostParams::default();
                let replaced = self
                    .call("update", name, self.inner.api.replace(name, &pp, &lease))
                    .await?;
                (Some(previous), replaced)
            }
        };
        let version = version_of(self, name, &written)?;
        self.remember(name, Some(written.clone()));
        let prev_holder = previous.as_ref().and_then(|p| p.holder.as_deref());
        match &record.holder {
            Some(h)
                if prev_holder != Some(h.as_str())
                    || previous.as_ref().map(|p| p.transitions) != Some(record.transitions) =>
            {
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
        self.remember(name, None);
        Ok(())
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

/// One Lease's watch: restarted when the server ends it, on 410 Gone and after errors; after
/// a gap it yields once so that the caller re-reads.
struct Watcher {
    store: KubeLeaseStore,
    name: String,
    from: From,
    events: Option<BoxStream<'static, kube::Result<WatchEvent<Lease>>>>,
    failures: u32,
    owe_yield: bool,
    ended: bool,
}

impl Watcher {
    async fn next(&mut self) -> Option<Result<()>> {
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
                    Ok(s) => self.events = Some(s),
                    Err(e) if matches!(e, Error::PermissionDenied { .. }) => {
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
                    return Some(Ok(()));
                }
                continue;
            };
            let idle = Duration::from_secs(u64::from(WATCH_SECONDS) + 30);
            match tokio::time::timeout(idle, events.next()).await {
                Err(_) | Ok(None) => {
                    // The server ended the watch (or went silent): resume where we were.
                    self.events = None;
                }
                Ok(Some(Ok(
                    WatchEvent::Added(l) | WatchEvent::Modified(l) | WatchEvent::Deleted(l),
                ))) => {
                    self.failures = 0;
                    if let Some(rv) = l.metadata.resource_version {
                        self.from = From::After(rv);
                    }
                    return Some(Ok(()));
                }
                Ok(Some(Ok(WatchEvent::Bookmark(b)))) => {
                    self.from = From::After(b.metadata.resource_version);
                }
                Ok(Some(Ok(WatchEvent::Error(status)))) => {
                    if status.code == 410 {
                        debug!(lease = %self.name, "the Lease watch expired (410 Gone); restarting");
                    } else {
                        debug!(lease = %self.name, status = ?status, "the Lease watch failed; restarting");
                        self.failures = self.failures.saturating_add(1);
                    }
                    self.events = None;
                    self.from = From::Now;
                    self.owe_yield = true;
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

    #[test]
    fn encode_decode_round_trip() {
        let mut r = LeaseRecord::held_by("pod-a", Duration::from_secs(15), 7);
        r.value = Some("10.0.0.1:80".into());
        let (spec, value) = encode(&r).unwrap();
        let mut lease = Lease {
            metadata: ObjectMeta::default(),
            spec: Some(spec),
        };
        set_value(&mut lease.metadata, value);
        let back = decode(&lease).unwrap();
        assert_eq!(back.holder, r.holder);
        assert_eq!(back.lease_duration, r.lease_duration);
        assert_eq!(back.transitions, 7);
        assert_eq!(back.value, r.value);
    }

    #[test]
    fn vacant_is_written_as_client_go_releases() {
        let mut r = LeaseRecord::held_by("pod-a", Duration::from_secs(15), 7);
        r.holder = None;
        let (spec, value) = encode(&r).unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some(""));
        assert_eq!(spec.lease_duration_seconds, Some(1));
        assert_eq!(spec.lease_transitions, Some(7));
        assert_eq!(spec.acquire_time, spec.renew_time);
        assert!(value.is_none());
    }

    #[test]
    fn unrepresentable_records_are_refused() {
        let half = LeaseRecord::held_by("a", Duration::from_millis(1500), 1);
        assert!(matches!(encode(&half), Err(Error::Config { .. })));
        let big = LeaseRecord::held_by("a", Duration::from_secs(1), u64::from(u32::MAX));
        assert!(matches!(encode(&big), Err(Error::Config { .. })));
        let ok = LeaseRecord::held_by("a", Duration::from_secs(1), i32::MAX as u64);
        assert!(encode(&ok).is_ok());
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
}
