//! The Kubernetes Lease store against a real kube-apiserver (started by
//! `scripts/test-services.sh`): the conformance suite, the Lease's fields as client-go writes
//! them, RBAC with the README's Role, a Lease edited behind the leader's back, an API server
//! restart, and a shared Lease with client-go's own example elector.
//!
//! Reads `TENURE_KUBECONFIG` (an admin kubeconfig), `TENURE_KUBE_SERVER`, `TENURE_KUBE_TOKEN`,
//! `TENURE_KUBE_APISERVER`, `TENURE_ETCD`, `TENURE_KUBE_SA_KEY`, `TENURE_KUBE_SA_PUB` and
//! `TENURE_CLIENT_GO_ELECTOR`. Without them each test prints `SKIPPED` and passes, unless
//! `TENURE_REQUIRE_BACKENDS=1`, which makes it fail.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{ListParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use rand::Rng;
use tenure::conformance::{async_trait, Harness, Timings};
use tenure::kubernetes::KubeLeaseStore;
use tenure::testing::FaultyStore;
use tenure::{Error, LeaderElector, LeaseStore, PutMode, Term};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

/// The environment variable `var`, or `None` after saying why the test is skipped (or a
/// failure when `TENURE_REQUIRE_BACKENDS=1`).
fn env(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            let msg = format!(
                "{var} is not set: run the tests through scripts/test.sh, or source the env \
                 file written by `scripts/test-services.sh start DIR`"
            );
            if std::env::var("TENURE_REQUIRE_BACKENDS").as_deref() == Ok("1") {
                panic!("TENURE_REQUIRE_BACKENDS=1 but {msg}");
            }
            eprintln!("SKIPPED: {msg}");
            None
        }
    }
}

async fn client_from_kubeconfig(path: &str) -> Client {
    let kc = Kubeconfig::read_from(path).expect("the test kubeconfig reads");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("the test kubeconfig is valid");
    Client::try_from(cfg).expect("a client")
}

fn client_with_token(server: &str, token: &str, namespace: &str) -> Client {
    let mut cfg = kube::Config::new(server.parse().expect("a server URL"));
    cfg.accept_invalid_certs = true;
    cfg.auth_info.token = Some(token.to_owned().into());
    cfg.default_namespace = namespace.to_owned();
    Client::try_from(cfg).expect("a client")
}

async fn admin() -> Option<Client> {
    let path = env("TENURE_KUBECONFIG")?;
    Some(client_from_kubeconfig(&path).await)
}

fn unique(tag: &str) -> String {
    let r: u32 = rand::thread_rng().gen();
    format!("{tag}-{r:08x}")
}

fn elector<S: LeaseStore>(
    store: S,
    name: &str,
    id: &str,
    (l, d, r): (u64, u64, u64),
) -> LeaderElector<S> {
    LeaderElector::builder(store, name)
        .identity(id)
        .lease_duration(Duration::from_millis(l))
        .renew_deadline(Duration::from_millis(d))
        .retry_period(Duration::from_millis(r))
        .build()
        .expect("valid timings")
}

/// Each term: identity, start, end.
type Terms = Arc<Mutex<Vec<(String, Instant, Option<Instant>)>>>;

/// Runs `el` until `stop` is cancelled, reporting each term's start and end.
fn spawn_run<S: LeaseStore>(
    el: LeaderElector<S>,
    stop: CancellationToken,
    terms: Terms,
) -> tokio::task::JoinHandle<tenure::Result<()>> {
    tokio::spawn(async move {
        el.run(stop.cancelled_owned(), move |term: Term| {
            let terms = terms.clone();
            async move {
                let i = {
                    let mut t = terms.lock().unwrap();
                    t.push((term.identity().to_owned(), Instant::now(), None));
                    t.len() - 1
                };
                term.cancelled().await;
                terms.lock().unwrap()[i].2 = Some(Instant::now());
            }
        })
        .await
    })
}

// ---------------------------------------------------------------------------------------------
// The conformance suite
// ---------------------------------------------------------------------------------------------

struct Kube {
    kubeconfig: Option<String>,
}

impl Kube {
    fn new() -> Self {
        Kube {
            kubeconfig: env("TENURE_KUBECONFIG"),
        }
    }
}

#[async_trait]
impl Harness for Kube {
    type Store = KubeLeaseStore;

    async fn store(&self) -> KubeLeaseStore {
        // A client of its own per handle, as a separate process would have.
        let path = self.kubeconfig.as_deref().expect("checked by the test");
        let client = client_from_kubeconfig(path).await;
        KubeLeaseStore::new(client, "default").expect("a valid namespace")
    }

    /// A Lease whose holder has no leaseDurationSeconds (the API server itself refuses zero
    /// and negative durations and transitions): no tenure record.
    async fn write_garbage(&self, name: &str) {
        let path = self.kubeconfig.as_deref().expect("checked by the test");
        let api: Api<Lease> = Api::namespaced(client_from_kubeconfig(path).await, "default");
        let mut lease = api.get(name).await.expect("the Lease exists");
        let spec = lease.spec.get_or_insert_with(Default::default);
        spec.holder_identity = Some("garbage".into());
        spec.lease_duration_seconds = None;
        api.replace(name, &PostParams::default(), &lease)
            .await
            .expect("garbage written");
    }

    fn timings(&self) -> Timings {
        Timings {
            lease_duration: Duration::from_secs(2),
            renew_deadline: Duration::from_millis(1200),
            retry_period: Duration::from_millis(300),
            slack: Duration::from_millis(500),
            watch_latency: Duration::from_secs(2),
        }
    }
}

tenure::conformance_tests!({
    let h = Kube::new();
    if h.kubeconfig.is_none() {
        return; // `env` said why: SKIPPED, or a failure when TENURE_REQUIRE_BACKENDS=1
    }
    h
});

// ---------------------------------------------------------------------------------------------
// The Lease as client-go writes it, Events, names, namespaces
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_fields_are_client_gos_and_events_are_recorded() {
    let Some(client) = admin().await else { return };
    let name = unique("fields");
    let store = KubeLeaseStore::new(client.clone(), "default").unwrap();
    let el = LeaderElector::builder(store.clone(), &name)
        .identity("pod-a")
        .lease_duration(Duration::from_secs(15))
        .renew_deadline(Duration::from_secs(10))
        .retry_period(Duration::from_secs(2))
        .value("10.0.0.7:8080")
        .build()
        .unwrap();
    let handle = el.handle();
    let stop = CancellationToken::new();
    let terms = Arc::new(Mutex::new(Vec::new()));
    let run = spawn_run(el, stop.clone(), terms.clone());
    let term = timeout(Duration::from_secs(10), handle.leading())
        .await
        .expect("leads within 10 s")
        .expect("a term");

    let api: Api<Lease> = Api::namespaced(client.clone(), "default");
    let lease = api.get(&name).await.unwrap();
    let spec = lease.spec.clone().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("pod-a"));
    assert_eq!(spec.lease_duration_seconds, Some(15));
    // leaseTransitions is client-go's counter: tenure's placeholder (0), then one term.
    assert_eq!(spec.lease_transitions, Some(1));
    // The token is in its annotation, with the leaseTransitions written with it, and above
    // the resourceVersion of the placeholder it replaced.
    let token = term.fencing_token();
    assert_eq!(
        annotation(&lease, tenure::kubernetes::TOKEN_ANNOTATION).as_deref(),
        Some(format!("{token}/1").as_str())
    );
    let rv: u64 = lease
        .metadata
        .resource_version
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        token > 1 && token <= rv,
        "token {token}, resourceVersion {rv}"
    );
    assert!(spec.acquire_time.is_some() && spec.renew_time.is_some());
    assert_eq!(
        lease
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(tenure::kubernetes::VALUE_ANNOTATION))
            .map(String::as_str),
        Some("10.0.0.7:8080")
    );

    stop.cancel();
    run.await.unwrap().unwrap();
    let released = api.get(&name).await.unwrap();
    let spec = released.spec.clone().unwrap();
    // client-go's ReleaseOnCancel: holderIdentity "", leaseDurationSeconds 1, times now,
    // leaseTransitions kept.
    assert_eq!(spec.holder_identity.as_deref(), Some(""));
    assert_eq!(spec.lease_duration_seconds, Some(1));
    assert_eq!(spec.lease_transitions, Some(1));
    assert_eq!(
        annotation(&released, tenure::kubernetes::TOKEN_ANNOTATION).as_deref(),
        Some(format!("{token}/1").as_str())
    );
    assert_eq!(spec.acquire_time, spec.renew_time);
    assert!(!released
        .metadata
        .annotations
        .unwrap_or_default()
        .contains_key(tenure::kubernetes::VALUE_ANNOTATION));
    let (rec, _) = store.get(&name).await.unwrap().unwrap().into_parts();
    assert!(rec.is_vacant());
    assert_eq!(rec.transitions, token);

    // Events are recorded in the background: "pod-a became leader", "pod-a stopped leading".
    let events: Api<K8sEvent> = Api::namespaced(client, "default");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found: Vec<K8sEvent> = events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(&*name))
            .collect();
        let notes: Vec<String> = found.iter().filter_map(|e| e.note.clone()).collect();
        if notes.iter().any(|n| n == "pod-a became leader")
            && notes.iter().any(|n| n == "pod-a stopped leading")
        {
            // Exactly one term started: one "became leader" (the recorder would count a
            // repeat in the Event's series), not one per renewal.
            let became: Vec<&K8sEvent> = found
                .iter()
                .filter(|e| e.note.as_deref() == Some("pod-a became leader"))
                .collect();
            assert!(
                became.len() == 1 && became[0].series.is_none(),
                "{became:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expected Events 'pod-a became leader' and 'pod-a stopped leading', got {notes:?}"
        );
        sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_durations_and_namespaces_are_clear_errors() {
    let Some(client) = admin().await else { return };
    let store = KubeLeaseStore::new(client.clone(), "default").unwrap();
    let rec = tenure::LeaseRecord::held_by("a", Duration::from_secs(5), 1);
    for bad in ["Upper", "under_score", "a/b", "", "-x", &"x".repeat(254)] {
        match store.get(bad).await {
            Err(Error::InvalidName { reason, .. }) => assert!(reason.contains("DNS-1123")),
            other => panic!("{bad:?}: expected InvalidName, got {other:?}"),
        }
    }
    // A lease duration a Lease cannot hold.
    let half = tenure::LeaseRecord::held_by("a", Duration::from_millis(1500), 1);
    let err = store
        .put(&unique("half"), &half, PutMode::Create)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Config { rule } if rule.contains("whole number of seconds")),
        "{err:?}"
    );
    // A lease duration over 7 days, which readers would refuse.
    let long = tenure::LeaseRecord::held_by("a", Duration::from_secs(7 * 86_400 + 1), 1);
    let err = store
        .put(&unique("long"), &long, PutMode::Create)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Config { rule } if rule.contains("7 days")),
        "{err:?}"
    );
    // A fencing token beyond int32 is stored (in the annotation), leaseTransitions is not it.
    let big_name = unique("big");
    let big = tenure::LeaseRecord::held_by("a", Duration::from_secs(5), 1 << 31);
    store.put(&big_name, &big, PutMode::Create).await.unwrap();
    let stored = store.get(&big_name).await.unwrap().unwrap().record;
    assert_eq!(stored.transitions, 1 << 31);
    let lease = store.api().get(&big_name).await.unwrap();
    assert_eq!(lease.spec.unwrap().lease_transitions, Some(1));
    // A namespace that does not exist.
    let missing = KubeLeaseStore::new(client.clone(), "no-such-namespace").unwrap();
    let err = missing.put("x", &rec, PutMode::Create).await.unwrap_err();
    assert!(
        matches!(&err, Error::Config { rule } if rule.contains("namespace \"no-such-namespace\" does not exist")),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    // An invalid namespace name is refused when the store is built.
    assert!(matches!(
        KubeLeaseStore::new(client, "Bad_NS"),
        Err(Error::Config { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// RBAC: the README's Role
// ---------------------------------------------------------------------------------------------

async fn apply<K>(api: &Api<K>, value: serde_json::Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(value).expect("a valid object");
    api.create(&PostParams::default(), &obj)
        .await
        .expect("created")
}

/// A ServiceAccount `sa` in `ns` bound to a Role with `rules`, and a token for it.
async fn service_account(client: &Client, ns: &str, sa: &str, rules: serde_json::Value) -> String {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    apply(&sas, serde_json::json!({"metadata": {"name": sa}})).await;
    let roles: Api<k8s_openapi::api::rbac::v1::Role> = Api::namespaced(client.clone(), ns);
    apply(
        &roles,
        serde_json::json!({"metadata": {"name": sa}, "rules": rules}),
    )
    .await;
    let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> =
        Api::namespaced(client.clone(), ns);
    apply(
        &bindings,
        serde_json::json!({
            "metadata": {"name": sa},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}],
        }),
    )
    .await;
    let tr: k8s_openapi::api::authentication::v1::TokenRequest = serde_json::from_value(
        serde_json::json!({"spec": {"audiences": [], "expirationSeconds": 3600}}),
    )
    .unwrap();
    let tr = sas
        .create_token_request(sa, &PostParams::default(), &tr)
        .await
        .expect("TokenRequest");
    tr.status.and_then(|s| s.token).expect("a token")
}

/// The Role the README says an elector needs, for the Lease `lease`.
fn readme_rules(lease: &str, update: bool) -> serde_json::Value {
    let verbs = if update {
        serde_json::json!(["get", "watch", "update"])
    } else {
        serde_json::json!(["get", "watch"])
    };
    serde_json::json!([
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "resourceNames": [lease], "verbs": verbs},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_readme_role_elects_and_without_update_is_denied() {
    let Some(client) = admin().await else { return };
    let Some(server) = env("TENURE_KUBE_SERVER") else {
        return;
    };
    let ns = unique("tenure-rbac");
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    apply(&namespaces, serde_json::json!({"metadata": {"name": ns}})).await;
    let lease = "my-controller";
    let good = service_account(&client, &ns, "elector", readme_rules(lease, true)).await;
    let bad = service_account(&client, &ns, "no-update", readme_rules(lease, false)).await;
    let good_store = KubeLeaseStore::new(client_with_token(&server, &good, &ns), &ns).unwrap();
    let bad_store = KubeLeaseStore::new(client_with_token(&server, &bad, &ns), &ns).unwrap();
    // RBAC bindings take a moment to reach the authorizer.
    let deadline = Instant::now() + Duration::from_secs(15);
    while matches!(
        good_store.get(lease).await,
        Err(Error::PermissionDenied { .. })
    ) {
        assert!(Instant::now() < deadline, "the Role never took effect");
        sleep(Duration::from_millis(200)).await;
    }

    // With the README's Role: creates the Lease, leads, renews, watches, releases.
    let el = elector(good_store.clone(), lease, "good", (3000, 2000, 300));
    let handle = el.handle();
    let stop = CancellationToken::new();
    let terms = Arc::new(Mutex::new(Vec::new()));
    let run = spawn_run(el, stop.clone(), terms.clone());
    let term = timeout(Duration::from_secs(10), handle.leading())
        .await
        .expect("the README's Role elects")
        .unwrap();
    // A follower with the same Role sees the release through its watch.
    let follower_store = KubeLeaseStore::new(client_with_token(&server, &good, &ns), &ns).unwrap();
    let el2 = elector(follower_store, lease, "good-2", (3000, 2000, 300));
    let h2 = el2.handle();
    let stop2 = CancellationToken::new();
    let run2 = spawn_run(el2, stop2.clone(), terms.clone());
    sleep(Duration::from_secs(2)).await; // several renewals
    assert!(!term.is_cancelled(), "the leader lost its term: {term:?}");
    stop.cancel();
    run.await.unwrap().expect("run ends cleanly");
    timeout(Duration::from_secs(2), h2.leading())
        .await
        .expect("the follower takes over at once after the release")
        .unwrap();
    stop2.cancel();
    run2.await.unwrap().expect("run ends cleanly");

    // Without `update`: the Lease exists (vacant), so acquiring it needs an update.
    let el = elector(bad_store, lease, "bad", (3000, 2000, 300));
    let handle = el.handle();
    let terms = Arc::new(Mutex::new(Vec::new()));
    let res = timeout(
        Duration::from_secs(10),
        spawn_run(el, CancellationToken::new(), terms.clone()),
    )
    .await
    .expect("run ends with the permission error")
    .unwrap();
    assert!(terms.lock().unwrap().is_empty(), "it led without update");
    assert!(!handle.is_leader());
    match res {
        Err(e @ Error::PermissionDenied { .. }) => {
            let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
            for part in ["update", "leases", &ns, lease] {
                assert!(chain.contains(part), "{chain:?} does not name {part:?}");
            }
        }
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    let _ = namespaces.delete(&ns, &Default::default()).await;
}

// ---------------------------------------------------------------------------------------------
// Edited behind our back
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_overwritten_by_kubectl_makes_the_leader_step_down_at_once() {
    let Some(client) = admin().await else { return };
    let name = unique("overwritten");
    let store = KubeLeaseStore::new(client.clone(), "default").unwrap();
    // Production timings: renewals every 2 s, so only the watch explains a fast step-down.
    let el = elector(store, &name, "leader", (15_000, 10_000, 2_000));
    let handle = el.handle();
    let stop = CancellationToken::new();
    let terms = Arc::new(Mutex::new(Vec::new()));
    let run = spawn_run(el, stop.clone(), terms.clone());
    let term = timeout(Duration::from_secs(10), handle.leading())
        .await
        .expect("leads")
        .unwrap();
    sleep(Duration::from_millis(500)).await;

    // kubectl-style: GET, change the holder, PUT with the resourceVersion.
    let api: Api<Lease> = Api::namespaced(client, "default");
    let mut lease = api.get(&name).await.unwrap();
    lease.spec.as_mut().unwrap().holder_identity = Some("intruder".into());
    let sent = Instant::now();
    api.replace(&name, &PostParams::default(), &lease)
        .await
        .unwrap();
    timeout(Duration::from_secs(1), term.cancelled())
        .await
        .expect("the leader steps down within 1 s of the overwrite (watch), not at a renewal");
    let took = sent.elapsed();
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match handle.current() {
            tenure::LeaderState::Following(l) if l.identity == "intruder" => break,
            other => assert!(
                Instant::now() < deadline,
                "expected to follow the intruder, got {other:?}"
            ),
        }
        sleep(Duration::from_millis(10)).await;
    }
    eprintln!("stepped down {took:?} after the overwrite");
    stop.cancel();
    run.await.unwrap().unwrap();
}

// ---------------------------------------------------------------------------------------------
// The watch: every write with its record, and what that saves (issue 9)
// ---------------------------------------------------------------------------------------------

type Events = tokio::sync::mpsc::UnboundedReceiver<tenure::Result<tenure::WatchEvent>>;

/// Polls `w` from now on (a watch starts when first polled), collecting its events.
fn collect(mut w: tenure::WatchStream) -> Events {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(e) = w.next().await {
            if tx.send(e).is_err() {
                break;
            }
        }
    });
    rx
}

/// The next watch event, within 5 s.
async fn next_event(w: &mut Events, what: &str) -> tenure::WatchEvent {
    match timeout(Duration::from_secs(5), w.recv()).await {
        Ok(Some(Ok(e))) => e,
        other => panic!("after {what}: expected a watch event, got {other:?}"),
    }
}

/// Every write is reported in order as a `Put` of exactly the version `put` returned and the
/// record `get` reads; a create's placeholder as a hint; a deletion as `Deleted`; nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_reports_each_write_with_its_record() {
    let Some(client) = admin().await else { return };
    let Some(other) = admin().await else { return };
    let name = unique("events");
    let watcher = KubeLeaseStore::new(client, "default").unwrap();
    let writer = KubeLeaseStore::new(other, "default").unwrap();
    assert!(watcher.capabilities().watch_every_write);
    let mut w = collect(watcher.watch(&name).expect("the store watches"));
    sleep(Duration::from_millis(500)).await; // the watch request in place
    let read = |v: &tenure::Version| {
        let (writer, name, v) = (writer.clone(), name.clone(), v.clone());
        async move {
            let s = writer.get(&name).await.unwrap().expect("the Lease exists");
            assert_eq!(s.version, v, "read back the version written");
            s
        }
    };

    // A create: its placeholder (a hint), then the record, with the token the store stored.
    let r = tenure::LeaseRecord::held_by("a", Duration::from_secs(15), 1);
    let v1 = writer.put(&name, &r, PutMode::Create).await.unwrap();
    assert_eq!(
        next_event(&mut w, "the create's placeholder").await,
        tenure::WatchEvent::Hint
    );
    let s1 = read(&v1).await;
    assert_eq!(
        next_event(&mut w, "a create").await,
        tenure::WatchEvent::Put(s1.clone())
    );
    // A renewal.
    let mut r = s1.record.clone();
    r.renew_time = Some(std::time::SystemTime::now());
    let v2 = writer
        .put(&name, &r, PutMode::Update(v1.clone()))
        .await
        .unwrap();
    let s2 = read(&v2).await;
    assert_eq!(
        next_event(&mut w, "a renewal").await,
        tenure::WatchEvent::Put(s2.clone())
    );
    // A new term.
    let mut r = tenure::LeaseRecord::held_by("b", Duration::from_secs(15), r.transitions + 1);
    r.value = Some("10.0.0.2:80".into());
    let v3 = writer
        .put(&name, &r, PutMode::Update(v2.clone()))
        .await
        .unwrap();
    let s3 = read(&v3).await;
    assert!(s3.record.transitions > s2.record.transitions);
    assert_eq!(
        next_event(&mut w, "a new term").await,
        tenure::WatchEvent::Put(s3.clone())
    );
    // A release.
    let mut r = s3.record.clone();
    r.holder = None;
    r.value = None;
    let v4 = writer
        .put(&name, &r, PutMode::Update(v3.clone()))
        .await
        .unwrap();
    let s4 = read(&v4).await;
    assert!(s4.record.is_vacant());
    assert_eq!(
        next_event(&mut w, "a release").await,
        tenure::WatchEvent::Put(s4)
    );
    // A deletion.
    writer.delete(&name, &v4).await.unwrap();
    assert_eq!(
        next_event(&mut w, "a delete").await,
        tenure::WatchEvent::Deleted
    );
    // And nothing else.
    let extra = timeout(Duration::from_secs(1), w.recv()).await;
    assert!(extra.is_err(), "an event nothing wrote: {extra:?}");
}

/// A Lease seen only through the watch is updated without reading it: with a Role that grants
/// `watch` and `update` but not `get`, the update succeeds (a read would be refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_lease_is_updated_without_a_read() {
    let Some(client) = admin().await else { return };
    let Some(server) = env("TENURE_KUBE_SERVER") else {
        return;
    };
    let ns = unique("tenure-noget");
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    apply(&namespaces, serde_json::json!({"metadata": {"name": ns}})).await;
    let lease = "watched";
    let rules = serde_json::json!([
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "resourceNames": [lease], "verbs": ["watch", "update"]},
    ]);
    let token = service_account(&client, &ns, "no-get", rules).await;
    let admin_store = KubeLeaseStore::new(client.clone(), &ns).unwrap();
    let r = tenure::LeaseRecord::held_by("other", Duration::from_secs(15), 1);
    let v1 = admin_store.put(lease, &r, PutMode::Create).await.unwrap();
    let want = admin_store.get(lease).await.unwrap().unwrap();
    assert_eq!(want.version, v1);
    let store = KubeLeaseStore::builder(client_with_token(&server, &token, &ns), &ns)
        .events(false)
        .build()
        .unwrap();
    // The watch starts at the current state: the Lease as it is (once the Role took effect).
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut w, seen) = loop {
        let mut w = collect(store.watch(lease).unwrap());
        match timeout(Duration::from_secs(5), w.recv()).await {
            Ok(Some(Ok(tenure::WatchEvent::Put(s)))) => break (w, s),
            Ok(Some(Err(Error::PermissionDenied { .. }))) if Instant::now() < deadline => {
                sleep(Duration::from_millis(200)).await;
            }
            other => panic!("expected the Lease from the watch, got {other:?}"),
        }
    };
    assert_eq!(seen, want);
    assert!(
        matches!(
            store.get(lease).await,
            Err(Error::PermissionDenied {
                operation: "get",
                ..
            })
        ),
        "the Role must not grant get"
    );
    // A takeover from what the watch reported, then a renewal from what the takeover wrote.
    let mut next = tenure::LeaseRecord::held_by("me", Duration::from_secs(15), 2);
    next.value = Some("v".into());
    let v2 = store
        .put(lease, &next, PutMode::Update(seen.version.clone()))
        .await
        .expect("updated from the watched Lease, without a read");
    let renewed = store
        .put(lease, &next, PutMode::Update(v2.clone()))
        .await
        .expect("renewed from the written Lease, without a read");
    let now = admin_store.get(lease).await.unwrap().unwrap();
    assert_eq!(now.version, renewed);
    assert_eq!(now.record.holder.as_deref(), Some("me"));
    assert_eq!(now.record.value.as_deref(), Some("v"));
    // Its own writes come back through the watch, in order.
    for v in [&v2, &renewed] {
        match next_event(&mut w, "an update").await {
            tenure::WatchEvent::Put(s) => assert_eq!(&s.version, v),
            other => panic!("expected the Put of {v}, got {other:?}"),
        }
    }
    let _ = namespaces.delete(&ns, &Default::default()).await;
}

/// What each role costs the API server over ten lease durations, counted per store call with
/// `FaultyStore` (the goal: a leader writes once per `R` and reads nothing; a watching
/// follower reads about once per `L` at most, plus its watch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_budget_per_role_over_ten_lease_durations() {
    let Some(ca) = admin().await else { return };
    let Some(cb) = admin().await else { return };
    let name = unique("budget");
    let (l, d, r) = (3000, 2000, 500);
    let own = |c: Client| {
        FaultyStore::new(
            KubeLeaseStore::builder(c, "default")
                .events(false)
                .build()
                .unwrap(),
        )
    };
    let (fa, fb) = (own(ca), own(cb));
    let stop = CancellationToken::new();
    let terms: Terms = Arc::default();
    let a = elector(fa.clone(), &name, "a", (l, d, r));
    let ha = a.handle();
    let ra = spawn_run(a, stop.clone(), terms.clone());
    timeout(Duration::from_secs(10), ha.leading())
        .await
        .expect("a leads")
        .unwrap();
    let a0 = fa.faults().calls();
    let b = elector(fb.clone(), &name, "b", (l, d, r));
    let hb = b.handle();
    let rb = spawn_run(b, stop.clone(), terms.clone());
    let window = Duration::from_millis(l * 10);
    sleep(window).await;
    let (a1, b) = (fa.faults().calls(), fb.faults().calls());
    assert!(ha.is_leader(), "the leader lost its term");
    assert!(
        matches!(hb.current(), tenure::LeaderState::Following(ref x) if x.identity == "a"),
        "the follower does not follow: {:?}",
        hb.current()
    );
    assert_eq!(terms.lock().unwrap().len(), 1, "one term throughout");
    stop.cancel();
    ra.await.unwrap().unwrap();
    rb.await.unwrap().unwrap();
    let renewals = u64::try_from(window.as_millis()).unwrap() / r;
    let (puts, gets, watches) = (
        a1.puts - a0.puts,
        a1.gets - a0.gets,
        a1.watches - a0.watches,
    );
    eprintln!(
        "over {window:?} (L {l} ms, R {r} ms): leader puts {puts}, gets {gets}, watches \
         {watches}; follower gets {}, puts {}, watches {}, events {}",
        b.gets, b.puts, b.watches, b.events
    );
    // The leader: one write per R, and at most the one read a create's placeholder hint
    // costs (an event of a version it did not write).
    assert!(
        puts <= renewals + 1,
        "leader: {puts} writes, more than one per R"
    );
    assert!(puts >= renewals / 2, "leader: only {puts} renewals");
    assert!(gets <= 1, "leader: {gets} reads");
    assert_eq!(watches, 0, "leader: watch restarted");
    // The watching follower: at most a read per L (plus its first and one spare), one watch,
    // no writes; the renewals arrive with their records.
    assert!(b.gets <= 10 + 2, "follower: {} reads", b.gets);
    assert!(b.watches <= 2, "follower: {} watches", b.watches);
    assert_eq!(b.puts, 0, "follower: writes");
    assert!(
        b.events >= renewals / 2,
        "follower: only {} watch events for {renewals} renewals",
        b.events
    );
}

// ---------------------------------------------------------------------------------------------
// API server stopped and restarted (a private etcd + kube-apiserver pair)
// ---------------------------------------------------------------------------------------------

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Private {
    dir: tempfile::TempDir,
    apiserver_bin: String,
    etcd: Child,
    etcd_port: u16,
    port: u16,
    token: String,
    sa_key: String,
    sa_pub: String,
}

impl Private {
    async fn start() -> Option<Self> {
        let apiserver_bin = env("TENURE_KUBE_APISERVER")?;
        let etcd_bin = env("TENURE_ETCD")?;
        let sa_key = env("TENURE_KUBE_SA_KEY")?;
        let sa_pub = env("TENURE_KUBE_SA_PUB")?;
        let dir = tempfile::tempdir().unwrap();
        let (etcd_port, peer) = (free_port(), free_port());
        let etcd = Command::new(etcd_bin)
            .args(["--name", "private", "--data-dir"])
            .arg(dir.path().join("etcd"))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{etcd_port}"
            ))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster=private=http://127.0.0.1:{peer}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("etcd starts");
        let token = format!("{:032x}", rand::thread_rng().gen::<u128>());
        std::fs::write(
            dir.path().join("tokens.csv"),
            format!("{token},admin,admin,system:masters\n"),
        )
        .unwrap();
        Some(Private {
            dir,
            apiserver_bin,
            etcd,
            etcd_port,
            port: free_port(),
            token,
            sa_key,
            sa_pub,
        })
    }

    fn server(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn spawn_apiserver(&self) -> Child {
        let d = self.dir.path();
        Command::new(&self.apiserver_bin)
            .arg(format!(
                "--etcd-servers=http://127.0.0.1:{}",
                self.etcd_port
            ))
            .arg(format!("--secure-port={}", self.port))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
            .arg(format!("--cert-dir={}", d.join("certs").display()))
            .arg(format!(
                "--token-auth-file={}",
                d.join("tokens.csv").display()
            ))
            .arg("--authorization-mode=RBAC")
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!("--service-account-key-file={}", self.sa_pub))
            .arg(format!(
                "--service-account-signing-key-file={}",
                self.sa_key
            ))
            .args([
                "--service-cluster-ip-range=10.96.0.0/24",
                "--disable-admission-plugins=ServiceAccount",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("kube-apiserver starts")
    }

    async fn wait_ready(&self, bound: Duration) {
        let client = client_with_token(&self.server(), &self.token, "default");
        // Ready when it serves and its controllers have created the namespace "default".
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client);
        let deadline = Instant::now() + bound;
        loop {
            if let Ok(Ok(Some(_))) = timeout(Duration::from_secs(2), api.get_opt("default")).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the private kube-apiserver was not ready within {bound:?}"
            );
            sleep(Duration::from_millis(250)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_restart_leader_steps_down_and_a_leader_returns() {
    let Some(mut p) = Private::start().await else {
        return;
    };
    let mut apiserver = p.spawn_apiserver();
    p.wait_ready(Duration::from_secs(60)).await;

    let name = unique("restart");
    let (l, d, r) = (4000, 3000, 500);
    let terms = Arc::new(Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let mut runs = Vec::new();
    let mut handles = Vec::new();
    for id in ["a", "b"] {
        let store = KubeLeaseStore::builder(
            client_with_token(&p.server(), &p.token, "default"),
            "default",
        )
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
        let el = elector(store, &name, id, (l, d, r));
        handles.push(el.handle());
        runs.push(spawn_run(el, stop.clone(), terms.clone()));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while !handles.iter().any(|h| h.is_leader()) {
        assert!(Instant::now() < deadline, "nobody leads");
        sleep(Duration::from_millis(50)).await;
    }
    sleep(Duration::from_secs(2)).await;

    // Stop the API server (etcd keeps the Lease).
    apiserver.kill().await.unwrap();
    let killed = Instant::now();
    let deadline = killed + Duration::from_millis(d + 1000);
    while handles.iter().any(|h| h.is_leader()) {
        assert!(
            Instant::now() < deadline,
            "a leader kept leading for more than the renew deadline after the API server stopped"
        );
        sleep(Duration::from_millis(20)).await;
    }
    let stepped_down = killed.elapsed();
    for (_, _, end) in terms.lock().unwrap().iter() {
        assert!(end.is_some(), "every term ended");
    }
    sleep(Duration::from_secs(3)).await;
    assert!(
        !handles.iter().any(|h| h.is_leader()),
        "nobody leads without an API server"
    );

    let mut apiserver = p.spawn_apiserver();
    let restarted = Instant::now();
    p.wait_ready(Duration::from_secs(60)).await;
    let ready = restarted.elapsed();
    let deadline = Instant::now() + Duration::from_millis(l * 3);
    while !handles.iter().any(|h| h.is_leader()) {
        assert!(
            Instant::now() < deadline,
            "no leader within 3 × L after the API server came back"
        );
        sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "stepped down {stepped_down:?} after the API server stopped (renew deadline {d} ms); \
         API server ready {ready:?} after restart; a leader again {:?} after that",
        restarted.elapsed() - ready
    );
    stop.cancel();
    for run in runs {
        timeout(Duration::from_secs(10), run)
            .await
            .expect("run ends")
            .unwrap()
            .unwrap();
    }
    // Terms never overlapped.
    let mut t = terms.lock().unwrap().clone();
    t.sort_by_key(|x| x.1);
    for w in t.windows(2) {
        assert!(
            w[0].2.is_some_and(|end| end <= w[1].1),
            "terms overlap: {w:?}"
        );
    }
    apiserver.kill().await.unwrap();
    p.etcd.kill().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Interoperability with client-go's example elector
// ---------------------------------------------------------------------------------------------

/// A running client-go example elector and the lines it has printed, with when they were read.
struct GoElector {
    child: Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl GoElector {
    fn spawn(bin: &str, kubeconfig: &str, id: &str, lease: &str) -> Self {
        let mut child = Command::new(bin)
            .args([
                "--kubeconfig",
                kubeconfig,
                "--id",
                id,
                "--lease-lock-name",
                lease,
            ])
            .args(["--lease-lock-namespace", "default"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("client-go's example starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for out in [
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = lines.clone();
            let id = id.to_owned();
            tokio::spawn(async move {
                let mut r = BufReader::new(out).lines();
                while let Ok(Some(line)) = r.next_line().await {
                    eprintln!("[go {id}] {line}");
                    lines.lock().unwrap().push((Instant::now(), line));
                }
            });
        }
        GoElector { child, lines }
    }

    /// Everything it printed, for failure messages.
    fn output(&self) -> String {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn when(&self, needle: &str) -> Option<Instant> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(t, _)| *t)
    }

    async fn wait_for(&self, needle: &str, bound: Duration) -> Instant {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(t) = self.when(needle) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "client-go's elector did not print {needle:?} within {bound:?}"
            );
            sleep(Duration::from_millis(20)).await;
        }
    }

    fn terminate(&self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
}

fn annotation(lease: &Lease, key: &str) -> Option<String> {
    lease.metadata.annotations.as_ref()?.get(key).cloned()
}

/// Every change of the Lease, in order, through a watch: (holder, leaseTransitions).
fn observe(api: Api<Lease>, name: String) -> Arc<Mutex<Vec<(Instant, String, i32)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = seen.clone();
    tokio::spawn(async move {
        let wp = WatchParams::default().fields(&format!("metadata.name={name}"));
        let mut rv = String::new();
        loop {
            let Ok(stream) = api.watch(&wp, &rv).await else {
                sleep(Duration::from_millis(100)).await;
                continue;
            };
            let mut stream = stream.boxed();
            while let Some(Ok(ev)) = stream.next().await {
                if let WatchEvent::Added(l) | WatchEvent::Modified(l) = ev {
                    rv = l.metadata.resource_version.clone().unwrap_or_default();
                    let spec = l.spec.unwrap_or_default();
                    out.lock().unwrap().push((
                        Instant::now(),
                        spec.holder_identity.unwrap_or_default(),
                        spec.lease_transitions.unwrap_or_default(),
                    ));
                }
            }
        }
    });
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_go_and_tenure_share_a_lease() {
    let Some(client) = admin().await else { return };
    let Some(kubeconfig) = env("TENURE_KUBECONFIG") else {
        return;
    };
    let Some(go_bin) = env("TENURE_CLIENT_GO_ELECTOR") else {
        return;
    };
    let name = unique("interop");
    let api: Api<Lease> = Api::namespaced(client.clone(), "default");
    let changes = observe(api, name.clone());
    // client-go's example: 60 s / 15 s / 5 s, ReleaseOnCancel. tenure with the same timings.
    let timings = (60_000, 15_000, 5_000);

    // 1. Go leads first.
    let go1 = GoElector::spawn(&go_bin, &kubeconfig, "go-1", &name);
    go1.wait_for("successfully acquired lease", Duration::from_secs(20))
        .await;

    // 2. tenure follows, seeing go-1 as the leader.
    let store = KubeLeaseStore::new(client.clone(), "default").unwrap();
    let el = elector(store, &name, "tenure-1", timings);
    let handle = el.handle();
    let stop = CancellationToken::new();
    let terms = Arc::new(Mutex::new(Vec::new()));
    let run = spawn_run(el, stop.clone(), terms.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let tenure::LeaderState::Following(l) = handle.current() {
            assert_eq!(l.identity, "go-1");
            break;
        }
        assert!(Instant::now() < deadline, "tenure does not follow go-1");
        sleep(Duration::from_millis(20)).await;
    }
    sleep(Duration::from_secs(6)).await; // a renewal of go-1 or two
    assert!(!handle.is_leader(), "tenure led while go-1 holds the Lease");

    // 3. Go releases on SIGTERM: tenure takes over at once (through its watch).
    let sigterm = Instant::now();
    go1.terminate();
    let term = timeout(Duration::from_secs(5), handle.leading())
        .await
        .expect("tenure takes over within 5 s of client-go's release (not after 60 s)")
        .unwrap();
    let go_to_tenure = sigterm.elapsed();
    go1.wait_for("leader lost: go-1", Duration::from_secs(5))
        .await;
    // tenure's term: leaseTransitions one above go-1's, the token in the annotation with it.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let token = term.fencing_token();
    let lease = leases.get(&name).await.unwrap();
    let tenure_lt = lease.spec.as_ref().unwrap().lease_transitions.unwrap();
    assert_eq!(
        annotation(&lease, tenure::kubernetes::TOKEN_ANNOTATION),
        Some(format!("{token}/{tenure_lt}")),
        "the token annotation of tenure's term"
    );
    assert!(
        u64::try_from(tenure_lt).unwrap() < token,
        "the token ({token}) comes from etcd's revision, not leaseTransitions ({tenure_lt})"
    );

    // 4. A second Go candidate follows tenure.
    let go2 = GoElector::spawn(&go_bin, &kubeconfig, "go-2", &name);
    go2.wait_for("new leader elected: tenure-1", Duration::from_secs(20))
        .await;
    sleep(Duration::from_secs(6)).await; // go-2 retries every 5 s and must keep following
    assert!(
        go2.when("successfully acquired lease").is_none(),
        "go-2 acquired while tenure leads"
    );
    assert!(!term.is_cancelled());

    // 5. tenure shuts down gracefully and releases: Go takes over within its retry period.
    let shutdown = Instant::now();
    stop.cancel();
    run.await.unwrap().unwrap();
    let tenure_ended = terms.lock().unwrap()[0].2.expect("the term ended");
    let go_acquired = go2
        .wait_for("successfully acquired lease", Duration::from_secs(15))
        .await;
    assert!(
        go_acquired > tenure_ended,
        "go-2 acquired before tenure's term ended"
    );
    let tenure_to_go = go_acquired - shutdown;
    // client-go renews once right after acquiring; a SIGTERM during that request cancels it
    // after the server may have applied it, and client-go's release then uses a stale Lease.
    // Let that renewal finish first.
    sleep(Duration::from_secs(1)).await;
    go2.terminate();
    go2.wait_for("leader lost: go-2", Duration::from_secs(10))
        .await;
    // go-2 released before it logged "leader lost"; give the observer's watch time to deliver
    // that last change on a loaded machine.
    let seen_release = Instant::now() + Duration::from_secs(10);
    while Instant::now() < seen_release {
        let last = changes.lock().unwrap().last().map(|c| c.1.clone());
        if last.as_deref() == Some("") {
            break;
        }
        sleep(Duration::from_millis(50)).await;
    }

    // The Lease only ever changed holder through a vacancy ("" after a release).
    let changes = changes.lock().unwrap().clone();
    let holders: Vec<&str> = changes.iter().map(|c| c.1.as_str()).collect();
    let mut distinct: Vec<&str> = Vec::new();
    for h in &holders {
        if distinct.last() != Some(h) {
            distinct.push(h);
        }
    }
    // go-2's own final release is client-go's business, not a handoff under test: client-go
    // 1.20 releases once, with the Lease it cached last, and does not retry; when that update
    // fails it logs "Failed to release lock". Accept that, and only that.
    let go2_release_failed = go2.when("Failed to release lock").is_some();
    let expected: &[&str] = if go2_release_failed {
        &["go-1", "", "tenure-1", "", "go-2"]
    } else {
        &["go-1", "", "tenure-1", "", "go-2", ""]
    };
    assert_eq!(
        distinct,
        expected,
        "holder sequence (each handoff through a release); client-go's output:\n{}",
        go2.output()
    );
    for w in changes.windows(2) {
        assert!(w[1].2 >= w[0].2, "leaseTransitions went backwards: {w:?}");
    }
    // client-go counted its own takeover (tenure's release → go-2) and kept tenure's
    // annotation, now stale: the Lease still reads with tenure's last token.
    let lease = leases.get(&name).await.unwrap();
    let go_lt = lease.spec.as_ref().unwrap().lease_transitions.unwrap();
    assert!(
        go_lt > tenure_lt,
        "client-go's takeover: {go_lt} after {tenure_lt}"
    );
    assert_eq!(
        annotation(&lease, tenure::kubernetes::TOKEN_ANNOTATION),
        Some(format!("{token}/{tenure_lt}")),
        "client-go keeps the Lease's annotations"
    );
    let reader = KubeLeaseStore::new(client.clone(), "default").unwrap();
    let read = reader.get(&name).await.unwrap().unwrap().record;
    assert_eq!(
        read.transitions, token,
        "a stale annotation reads as its token"
    );
    eprintln!(
        "handoff client-go -> tenure: {go_to_tenure:?} after SIGTERM; tenure -> client-go: \
         {tenure_to_go:?} after shutdown (client-go polls every 5 s)"
    );
}

// ---------------------------------------------------------------------------------------------
// Safety regressions: each of these failed on the code before the fix it is named after.
// ---------------------------------------------------------------------------------------------

async fn kube_store() -> Option<KubeLeaseStore> {
    let client = admin().await?;
    Some(KubeLeaseStore::new(client, "default").unwrap())
}

/// `kubectl delete lease` behind a leader: the next term's token is above every earlier one,
/// for a follower that watched the old Lease and for a process that never saw it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_keep_increasing_after_kubectl_delete_lease() {
    let Some(s) = kube_store().await else { return };
    let name = unique("deleted");
    let timings = (3000, 2000, 300);
    let stop = CancellationToken::new();
    let terms: Terms = Arc::default();
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let watched = |id: &str| {
        let el = elector(kube_store_now(&s), &name, id, timings);
        let h = el.handle();
        (spawn_run(el, stop.clone(), terms.clone()), h)
    };
    let (ra, ha) = watched("a");
    let (rb, hb) = watched("b");
    let mut last = 0;
    for round in 0..3 {
        let t = loop {
            let t = [&ha, &hb].iter().find_map(|h| match h.current() {
                tenure::LeaderState::Leading(t) if !t.is_cancelled() => Some(t),
                _ => None,
            });
            if let Some(t) = t {
                break t;
            }
            sleep(Duration::from_millis(20)).await;
        };
        tokens.lock().unwrap().push(t.fencing_token());
        assert!(
            round == 0 || t.fencing_token() > last,
            "round {round}: token {} after {last}",
            t.fencing_token()
        );
        last = t.fencing_token();
        s.api().delete(&name, &Default::default()).await.unwrap();
        timeout(Duration::from_secs(5), t.cancelled())
            .await
            .unwrap();
    }
    stop.cancel();
    ra.await.unwrap().unwrap();
    rb.await.unwrap().unwrap();
    // Nobody is left who saw the old Lease: delete it and start a fresh process.
    if let Ok(Some(_)) = s.api().get_opt(&name).await {
        s.api().delete(&name, &Default::default()).await.unwrap();
    }
    let el = elector(kube_store_now(&s), &name, "fresh", timings);
    let h = el.handle();
    let stop = CancellationToken::new();
    let run = spawn_run(el, stop.clone(), terms.clone());
    let t = timeout(Duration::from_secs(10), h.leading())
        .await
        .unwrap()
        .unwrap();
    assert!(
        t.fencing_token() > last,
        "a fresh process started at token {} after {last}",
        t.fencing_token()
    );
    stop.cancel();
    run.await.unwrap().unwrap();
}

/// Another handle on the same client (its own cache), as another elector in the process.
fn kube_store_now(s: &KubeLeaseStore) -> KubeLeaseStore {
    KubeLeaseStore::new(s.api().clone().into_client(), "default").unwrap()
}

/// A value too large for the Lease's annotations is refused before anything is written, with
/// an error that stops the elector instead of a retry forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_value_is_refused_not_retried_forever() {
    let Some(s) = kube_store().await else { return };
    let name = unique("oversized");
    let el = LeaderElector::builder(s.clone(), &name)
        .identity("a")
        .lease_duration(Duration::from_secs(3))
        .renew_deadline(Duration::from_secs(2))
        .retry_period(Duration::from_millis(300))
        .value("v".repeat(300 * 1024))
        .build()
        .unwrap();
    let res = timeout(
        Duration::from_secs(10),
        el.run(std::future::pending::<()>(), |_t: Term| async {}),
    )
    .await;
    assert!(
        matches!(
            res,
            Ok(Err(Error::TooLarge {
                store: "kubernetes",
                limit: 262_144,
                ..
            }))
        ),
        "{res:?}"
    );
    assert!(s.api().get_opt(&name).await.unwrap().is_none());
}

/// A Role without `watch`: the elector stops with the permission error, as the README says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_watch_stops_the_elector() {
    let Some(client) = admin().await else { return };
    let Some(server) = env("TENURE_KUBE_SERVER") else {
        return;
    };
    let ns = unique("tenure-nowatch");
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    apply(&namespaces, serde_json::json!({"metadata": {"name": ns}})).await;
    let lease = "no-watch";
    let rules = serde_json::json!([
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "resourceNames": [lease], "verbs": ["get", "update"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    ]);
    let token = service_account(&client, &ns, "no-watch", rules).await;
    let s = KubeLeaseStore::builder(client_with_token(&server, &token, &ns), &ns)
        .events(false)
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while matches!(s.get(lease).await, Err(Error::PermissionDenied { .. })) {
        assert!(Instant::now() < deadline, "the Role never took effect");
        sleep(Duration::from_millis(200)).await;
    }
    let el = elector(s, lease, "a", (3000, 2000, 300));
    let res = timeout(
        Duration::from_secs(15),
        el.run(std::future::pending::<()>(), |t: Term| async move {
            t.cancelled().await
        }),
    )
    .await;
    assert!(
        matches!(
            res,
            Ok(Err(Error::PermissionDenied {
                operation: "watch",
                ..
            }))
        ),
        "{res:?}"
    );
    let _ = namespaces.delete(&ns, &Default::default()).await;
}
