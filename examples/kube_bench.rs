//! Measures tenure on a real Kubernetes API server: graceful handoff, crash failover, and the
//! API requests each elector costs, counted by the API server itself; optionally client-go's
//! example elector side by side.
//!
//! ```sh
//! scripts/test-services.sh start /tmp/kube && source /tmp/kube/env
//! cargo run --release --example kube_bench --features kubernetes -- \
//!     --trials 100 --crash-trials 5 --idle-secs 300 --headline-secs 60 --go-trials 5
//! ```
//!
//! Starts an API server of its own — etcd (`TENURE_ETCD`) and kube-apiserver
//! (`TENURE_KUBE_APISERVER`, with `TENURE_KUBE_SA_KEY` and `TENURE_KUBE_SA_PUB`) on free loopback
//! ports — so that nothing else talks to it, with an audit log of every Lease request. Each
//! elector that is counted has a user of its own, so the audit log tells its requests apart
//! (every request once, a watch when it starts); the headline also reads the API server's
//! `apiserver_request_total` for `leases` by verb before and after (a watch is counted there
//! when it ends, so the watches opened are its count's change plus the change of
//! `apiserver_longrunning_gauge`). `--go-trials` and `--headline-secs` run client-go's example
//! elector (`TENURE_CLIENT_GO_ELECTOR`, client-go's `examples/leader-election`: 60 s / 15 s /
//! 5 s) too; `--headline-secs 0` skips the headline.
//!
//! Uses only tenure's elector API, so that the same file measures older versions as well.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Namespace;
use tenure::kubernetes::KubeLeaseStore;
use tenure::{LeaderElector, LeaderState, Term};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Timings (L, D, R).
type Timings = (Duration, Duration, Duration);

const CLIENT_GO: Timings = (
    Duration::from_secs(60),
    Duration::from_secs(15),
    Duration::from_secs(5),
);
const KUBERNETES: Timings = (
    Duration::from_secs(15),
    Duration::from_secs(10),
    Duration::from_secs(2),
);

fn show((l, d, r): Timings) -> String {
    format!("{} s / {} s / {} s", l.as_secs(), d.as_secs(), r.as_secs())
}

/// The users of the private API server: every one may do anything (`system:masters`); they
/// only tell requests apart in the audit log.
const USERS: &[&str] = &[
    "admin",
    "bench",
    "go-handoff",
    "leader-60",
    "follower-60",
    "leader-15",
    "follower-15",
    "tenure-0",
    "tenure-1",
    "tenure-2",
    "go-0",
    "go-1",
    "go-2",
];

/// A private etcd and kube-apiserver, with an audit log of Lease requests.
struct Server {
    dir: tempfile::TempDir,
    url: String,
    tokens: HashMap<&'static str, String>,
    _etcd: Child,
    _apiserver: Child,
}

fn env(var: &str) -> Result<String, BoxError> {
    std::env::var(var).map_err(|_| {
        format!(
            "{var} is not set: start the test services (scripts/test-services.sh start DIR) and \
             source DIR/env"
        )
        .into()
    })
}

fn free_port() -> Result<u16, BoxError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Server {
    async fn start() -> Result<Self, BoxError> {
        let (apiserver, etcd) = (env("TENURE_KUBE_APISERVER")?, env("TENURE_ETCD")?);
        let (sa_key, sa_pub) = (env("TENURE_KUBE_SA_KEY")?, env("TENURE_KUBE_SA_PUB")?);
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        let (etcd_port, peer, port) = (free_port()?, free_port()?, free_port()?);
        let etcd = Command::new(etcd)
            .args(["--name", "bench", "--data-dir"])
            .arg(d.join("etcd"))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{etcd_port}"
            ))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster=bench=http://127.0.0.1:{peer}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let mut tokens = HashMap::new();
        let mut csv = String::new();
        for user in USERS {
            let token = format!("{:032x}", rand::random::<u128>());
            csv.push_str(&format!("{token},{user},{user},system:masters\n"));
            tokens.insert(*user, token);
        }
        std::fs::write(d.join("tokens.csv"), csv)?;
        // Every Lease request, once it is answered (a watch: once it starts, and when it ends).
        std::fs::write(
            d.join("audit.yaml"),
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n\
             - level: Metadata\n  resources: [{group: coordination.k8s.io, resources: [leases]}]\n\
             - level: None\n",
        )?;
        let apiserver = Command::new(apiserver)
            .arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
            .arg(format!("--secure-port={port}"))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
            .arg(format!("--cert-dir={}", d.join("certs").display()))
            .arg(format!(
                "--token-auth-file={}",
                d.join("tokens.csv").display()
            ))
            .arg("--authorization-mode=RBAC")
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!("--service-account-key-file={sa_pub}"))
            .arg(format!("--service-account-signing-key-file={sa_key}"))
            .args([
                "--service-cluster-ip-range=10.96.0.0/24",
                "--disable-admission-plugins=ServiceAccount",
            ])
            .arg(format!(
                "--audit-policy-file={}",
                d.join("audit.yaml").display()
            ))
            .arg(format!(
                "--audit-log-path={}",
                d.join("audit.log").display()
            ))
            .arg("--audit-log-mode=blocking")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(d.join("apiserver.log"))?))
            .kill_on_drop(true)
            .spawn()?;
        let server = Server {
            dir,
            url: format!("https://127.0.0.1:{port}"),
            tokens,
            _etcd: etcd,
            _apiserver: apiserver,
        };
        // Ready when it serves and its controllers have created the namespace "default".
        let namespaces: kube::Api<Namespace> = kube::Api::all(server.client("admin")?);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let probe = tokio::time::timeout(Duration::from_secs(2), namespaces.get_opt("default"));
            if let Ok(Ok(Some(_))) = probe.await {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the private kube-apiserver was not ready within 90 s; see {}",
                    server.dir.path().join("apiserver.log").display()
                )
                .into());
            }
            sleep(Duration::from_millis(250)).await;
        }
        Ok(server)
    }

    /// A client of its own for `user`, as each replica has (candidates sharing one client
    /// queue behind each other's requests and watches).
    fn client(&self, user: &str) -> Result<kube::Client, BoxError> {
        let mut cfg = kube::Config::new(self.url.parse()?);
        cfg.accept_invalid_certs = true;
        cfg.auth_info.token = Some(self.tokens[user].clone().into());
        cfg.default_namespace = "default".into();
        Ok(kube::Client::try_from(cfg)?)
    }

    /// A store on a client of its own for `user`. Events off: measure the election's own
    /// requests.
    fn store(&self, user: &str) -> Result<KubeLeaseStore, BoxError> {
        Ok(KubeLeaseStore::builder(self.client(user)?, "default")
            .events(false)
            .build()?)
    }

    /// A kubeconfig file for `user` (for client-go).
    fn kubeconfig(&self, user: &str) -> Result<PathBuf, BoxError> {
        let path = self.dir.path().join(format!("kubeconfig-{user}"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: bench\n  cluster:\n    \
                 server: {}\n    insecure-skip-tls-verify: true\nusers:\n- name: {user}\n  \
                 user:\n    token: {}\ncontexts:\n- name: bench\n  context: {{cluster: bench, \
                 user: {user}, namespace: default}}\ncurrent-context: bench\n",
                self.url, self.tokens[user]
            ),
        )?;
        Ok(path)
    }

    /// `apiserver_request_total` for leases by verb, and the watches open now.
    async fn lease_metrics(&self) -> Result<Metrics, BoxError> {
        let req = kube::core::Request::new("").get("metrics", &Default::default())?;
        let text = self.client("admin")?.request_text(req).await?;
        let mut m = Metrics::default();
        for line in text.lines() {
            if !line.contains("resource=\"leases\"") {
                continue;
            }
            let (Some(verb), Some(value)) = (
                label(line, "verb"),
                line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()),
            ) else {
                continue;
            };
            if line.starts_with("apiserver_request_total{") {
                *m.by_verb.entry(verb.to_owned()).or_default() += value as u64;
            } else if line.starts_with("apiserver_longrunning_gauge{") && verb == "WATCH" {
                m.open_watches += value as u64;
            }
        }
        Ok(m)
    }

    /// Lease requests per user and verb received in `[from, to)`, from the audit log (each
    /// request once; a watch when it started).
    async fn audited(
        &self,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<BTreeMap<(String, String), u64>, BoxError> {
        // Requests are logged once answered: let those received just before `to` land.
        sleep(Duration::from_secs(1)).await;
        let log = std::fs::read_to_string(self.dir.path().join("audit.log"))?;
        let mut ids = HashSet::new();
        let mut out = BTreeMap::new();
        for line in log.lines() {
            let Ok(ev) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let received = ev["requestReceivedTimestamp"]
                .as_str()
                .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
                .map(SystemTime::from);
            let Some(received) = received else { continue };
            if received < from || received >= to || ev["objectRef"]["resource"] != "leases" {
                continue;
            }
            if !ids.insert(ev["auditID"].as_str().unwrap_or_default().to_owned()) {
                continue;
            }
            let user = ev["user"]["username"].as_str().unwrap_or_default();
            let verb = ev["verb"].as_str().unwrap_or_default();
            *out.entry((user.to_owned(), verb.to_owned())).or_default() += 1;
        }
        Ok(out)
    }
}

fn label<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!("{key}=\""))? + key.len() + 2;
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

#[derive(Default, Clone)]
struct Metrics {
    by_verb: BTreeMap<String, u64>,
    open_watches: u64,
}

/// Requests by verb between two scrapes: GET, PUT, POST, DELETE, and the watches opened.
fn metrics_delta(a: &Metrics, b: &Metrics) -> BTreeMap<&'static str, u64> {
    let d = |verb: &str| {
        b.by_verb.get(verb).copied().unwrap_or(0) - a.by_verb.get(verb).copied().unwrap_or(0)
    };
    let mut out = BTreeMap::new();
    for verb in ["GET", "PUT", "POST", "DELETE"] {
        out.insert(verb, d(verb));
    }
    let watches = (d("WATCH") + b.open_watches).saturating_sub(a.open_watches);
    out.insert("WATCH", watches);
    out
}

/// One user's requests by verb (the audit log's verbs: get, update, create, watch).
fn of_user(audit: &BTreeMap<(String, String), u64>, user: &str) -> BTreeMap<String, u64> {
    audit
        .iter()
        .filter(|((u, _), _)| u == user)
        .map(|((_, v), n)| (v.clone(), *n))
        .collect()
}

fn verbs(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(v, n)| format!("{n} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

struct Candidate {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<tenure::Result<()>>,
    started: Arc<Mutex<Option<Instant>>>,
    leading: Arc<Notify>,
    handle: tenure::LeaderHandle,
}

fn candidate(
    store: KubeLeaseStore,
    name: &str,
    id: String,
    (l, d, r): Timings,
) -> Result<Candidate, BoxError> {
    let el = LeaderElector::builder(store, name)
        .identity(id)
        .lease_duration(l)
        .renew_deadline(d)
        .retry_period(r)
        .build()?;
    let handle = el.handle();
    let stop = CancellationToken::new();
    let started = Arc::new(Mutex::new(None));
    let leading = Arc::new(Notify::new());
    let (s, n, st) = (started.clone(), leading.clone(), stop.clone());
    let task = tokio::spawn(async move {
        el.run(st.cancelled_owned(), move |term: Term| {
            *s.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            n.notify_one();
            async move { term.cancelled().await }
        })
        .await
    });
    Ok(Candidate {
        stop,
        task,
        started,
        leading,
        handle,
    })
}

fn following(c: &Candidate) -> bool {
    matches!(c.handle.current(), LeaderState::Following(_))
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn unique(tag: &str) -> String {
    format!("bench-{tag}-{:08x}", rand::random::<u32>())
}

/// Graceful handoffs between two candidates: from the leader's shutdown request to the
/// follower's term start. Each trial's follower was started during the previous trial and
/// has been following for `settle`: a follower that has only just started may not have its
/// watch connected yet (a TLS connection and the watch request, tens of milliseconds), and
/// then learns of the release when the watch's first event arrives.
async fn handoffs(srv: &Server, trials: u64, settle: Duration) -> Result<Vec<Duration>, BoxError> {
    let name = unique("handoff");
    let mut cands = vec![
        candidate(srv.store("bench")?, &name, "h-0".into(), KUBERNETES)?,
        candidate(srv.store("bench")?, &name, "h-1".into(), KUBERNETES)?,
    ];
    let mut out = Vec::new();
    for trial in 0..trials {
        // Wait for a leader and a settled follower.
        let leader = loop {
            if let Some(i) = cands.iter().position(|c| c.handle.is_leader()) {
                break i;
            }
            sleep(Duration::from_millis(5)).await;
        };
        let follower = 1 - leader;
        while !following(&cands[follower]) {
            sleep(Duration::from_millis(5)).await;
        }
        sleep(settle).await;
        let old = cands.remove(leader);
        let follower = 0;
        let t0 = Instant::now();
        old.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), cands[follower].leading.notified()).await?;
        let took = cands[follower]
            .started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|t| t - t0)
            .unwrap_or_default();
        out.push(took);
        old.task.await??;
        cands.push(candidate(
            srv.store("bench")?,
            &name,
            format!("h-{}", trial + 2),
            KUBERNETES,
        )?);
    }
    for c in cands {
        c.stop.cancel();
        c.task.await??;
    }
    Ok(out)
}

/// Crash failovers: the leader's task is aborted (no release); the follower takes over one
/// lease duration after it last saw the Lease change.
async fn crashes(srv: &Server, trials: u64, l: Duration) -> Result<Vec<Duration>, BoxError> {
    let timings = (l, l * 3 / 5, l / 5);
    let name = unique("crash");
    let mut out = Vec::new();
    let mut cands = vec![
        candidate(srv.store("bench")?, &name, "c-0".into(), timings)?,
        candidate(srv.store("bench")?, &name, "c-1".into(), timings)?,
    ];
    for trial in 0..trials {
        let leader = loop {
            if let Some(i) = cands.iter().position(|c| c.handle.is_leader()) {
                break i;
            }
            sleep(Duration::from_millis(5)).await;
        };
        sleep(Duration::from_millis(300)).await;
        let old = cands.remove(leader);
        let t0 = Instant::now();
        old.task.abort();
        tokio::time::timeout(l * 3, cands[0].leading.notified()).await?;
        let took = cands[0]
            .started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|t| t - t0)
            .unwrap_or_default();
        out.push(took);
        cands.push(candidate(
            srv.store("bench")?,
            &name,
            format!("c-{}", trial + 2),
            timings,
        )?);
    }
    for c in cands {
        c.stop.cancel();
        let _ = c.task.await;
    }
    Ok(out)
}

/// API requests per second of a leader and of a watching follower over `secs`, counted by the
/// API server (audit log, watches included). The follower starts once the leader leads, and
/// the window opens once it follows and settled.
async fn rates(
    srv: &Server,
    timings: Timings,
    secs: u64,
    (leader, follower): (&str, &str),
) -> Result<(BTreeMap<String, u64>, BTreeMap<String, u64>), BoxError> {
    let name = unique("rate");
    let a = candidate(srv.store(leader)?, &name, leader.into(), timings)?;
    a.leading.notified().await;
    let b = candidate(srv.store(follower)?, &name, follower.into(), timings)?;
    while !following(&b) {
        sleep(Duration::from_millis(10)).await;
    }
    sleep(Duration::from_secs(2)).await;
    let from = SystemTime::now();
    sleep(Duration::from_secs(secs)).await;
    let to = SystemTime::now();
    if !a.handle.is_leader() || !following(&b) {
        return Err("the roles changed during the measurement".into());
    }
    for c in [a, b] {
        c.stop.cancel();
        c.task.await??;
    }
    let audit = srv.audited(from, to).await?;
    Ok((of_user(&audit, leader), of_user(&audit, follower)))
}

/// What three electors on one Lease cost the API server over `secs`, once elected and
/// settled: per verb from `apiserver_request_total`, per elector from the audit log.
struct Headline {
    by_verb: BTreeMap<&'static str, u64>,
    by_elector: Vec<(String, BTreeMap<String, u64>)>,
}

async fn headline_tenure(srv: &Server, secs: u64) -> Result<Headline, BoxError> {
    let name = unique("three");
    let users = ["tenure-0", "tenure-1", "tenure-2"];
    let mut cands = Vec::new();
    for u in users {
        cands.push(candidate(srv.store(u)?, &name, u.into(), CLIENT_GO)?);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(cands.iter().filter(|c| c.handle.is_leader()).count() == 1
        && cands.iter().filter(|c| following(c)).count() == 2)
    {
        if Instant::now() > deadline {
            return Err("three tenure electors did not settle on a leader in 30 s".into());
        }
        sleep(Duration::from_millis(20)).await;
    }
    sleep(Duration::from_secs(10)).await;
    let (m0, from) = (srv.lease_metrics().await?, SystemTime::now());
    sleep(Duration::from_secs(secs)).await;
    let (m1, to) = (srv.lease_metrics().await?, SystemTime::now());
    let roles: Vec<&str> = cands
        .iter()
        .map(|c| {
            if c.handle.is_leader() {
                "leader"
            } else {
                "follower"
            }
        })
        .collect();
    for c in cands {
        c.stop.cancel();
        c.task.await??;
    }
    let audit = srv.audited(from, to).await?;
    Ok(Headline {
        by_verb: metrics_delta(&m0, &m1),
        by_elector: users
            .iter()
            .zip(roles)
            .map(|(u, role)| (format!("{u} ({role})"), of_user(&audit, u)))
            .collect(),
    })
}

type Lines = Arc<Mutex<Vec<(Instant, String)>>>;

/// client-go's example elector as `id`, on the Lease `name`, as user `user`.
fn go_elector(
    srv: &Server,
    bin: &str,
    user: &str,
    id: &str,
    name: &str,
) -> Result<(Child, Lines), BoxError> {
    let kubeconfig = srv.kubeconfig(user)?;
    let mut child = Command::new(bin)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--id", id, "--lease-lock-name", name])
        .args(["--lease-lock-namespace", "default"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let lines: Lines = Arc::new(Mutex::new(Vec::new()));
    if let Some(err) = child.stderr.take() {
        let l = lines.clone();
        tokio::spawn(async move {
            let mut r = BufReader::new(err).lines();
            while let Ok(Some(line)) = r.next_line().await {
                l.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((Instant::now(), line));
            }
        });
    }
    Ok((child, lines))
}

fn acquired(l: &Lines) -> Option<Instant> {
    l.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(_, s)| s.contains("successfully acquired lease"))
        .map(|(t, _)| *t)
}

fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
}

async fn headline_client_go(srv: &Server, bin: &str, secs: u64) -> Result<Headline, BoxError> {
    let name = unique("three-go");
    let users = ["go-0", "go-1", "go-2"];
    let mut procs = Vec::new();
    for u in users {
        procs.push(go_elector(srv, bin, u, u, &name)?);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !procs.iter().any(|p| acquired(&p.1).is_some()) {
        if Instant::now() > deadline {
            return Err("client-go's electors did not elect a leader in 30 s".into());
        }
        sleep(Duration::from_millis(20)).await;
    }
    sleep(Duration::from_secs(10)).await;
    let (m0, from) = (srv.lease_metrics().await?, SystemTime::now());
    sleep(Duration::from_secs(secs)).await;
    let (m1, to) = (srv.lease_metrics().await?, SystemTime::now());
    let roles: Vec<&str> = procs
        .iter()
        .map(|p| {
            if acquired(&p.1).is_some() {
                "leader"
            } else {
                "follower"
            }
        })
        .collect();
    for (child, _) in &procs {
        terminate(child);
    }
    sleep(Duration::from_secs(2)).await;
    drop(procs);
    let audit = srv.audited(from, to).await?;
    Ok(Headline {
        by_verb: metrics_delta(&m0, &m1),
        by_elector: users
            .iter()
            .zip(roles)
            .map(|(u, role)| (format!("{u} ({role})"), of_user(&audit, u)))
            .collect(),
    })
}

/// client-go's example elector: SIGTERM the leader, time until the other prints that it
/// acquired the lease.
async fn go_handoffs(srv: &Server, bin: &str, trials: u64) -> Result<Vec<Duration>, BoxError> {
    let name = unique("go");
    let spawn = |id: String| go_elector(srv, bin, "go-handoff", &id, &name);
    let mut procs = vec![spawn("go-h0".into())?, spawn("go-h1".into())?];
    let mut out = Vec::new();
    for trial in 0..trials {
        let leader = loop {
            if let Some(i) = procs.iter().position(|p| acquired(&p.1).is_some()) {
                break i;
            }
            sleep(Duration::from_millis(20)).await;
        };
        sleep(Duration::from_secs(1)).await;
        let (child, _) = procs.remove(leader);
        let t0 = Instant::now();
        terminate(&child);
        let deadline = t0 + Duration::from_secs(30);
        let t1 = loop {
            if let Some(t) = acquired(&procs[0].1) {
                break t;
            }
            if Instant::now() > deadline {
                return Err("client-go's follower did not take over within 30 s".into());
            }
            sleep(Duration::from_millis(10)).await;
        };
        out.push(t1 - t0);
        drop(child);
        procs.push(spawn(format!("go-h{}", trial + 2))?);
    }
    Ok(out)
}

fn per_sec(m: &BTreeMap<String, u64>, secs: u64) -> f64 {
    m.values().sum::<u64>() as f64 / secs as f64
}

fn print_headline(who: &str, h: &Headline, secs: u64) {
    let n = |v: &str| h.by_verb.get(v).copied().unwrap_or(0);
    let total: u64 = h.by_verb.values().sum();
    let rate = |x: u64| format!("{x} ({:.2}/s)", x as f64 / secs as f64);
    println!(
        "| {who} | {} | {} | {} | {} | {} | **{:.2}** |",
        rate(n("GET")),
        rate(n("PUT")),
        rate(n("POST")),
        rate(n("WATCH")),
        total,
        total as f64 / secs as f64
    );
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let trials = arg("--trials", 100);
    let crash_trials = arg("--crash-trials", 5);
    let crash_l = Duration::from_secs(arg("--crash-lease-secs", 5));
    let idle = arg("--idle-secs", 300);
    let headline_secs = arg("--headline-secs", 60);
    let go_trials = arg("--go-trials", 0);
    let settle = Duration::from_millis(arg("--settle-ms", 500));

    let srv = Server::start().await?;
    eprintln!("private kube-apiserver at {}", srv.url);

    let mut h = handoffs(&srv, trials, settle).await?;
    h.sort();
    let fresh_settle = Duration::from_millis(50);
    let mut f = handoffs(&srv, trials, fresh_settle).await?;
    f.sort();
    let mut c = crashes(&srv, crash_trials, crash_l).await?;
    c.sort();
    let go_bin = std::env::var("TENURE_CLIENT_GO_ELECTOR").ok();
    let mut g = match (&go_bin, go_trials) {
        (Some(bin), n) if n > 0 => go_handoffs(&srv, bin, n).await?,
        _ => Vec::new(),
    };
    g.sort();
    eprintln!("handoffs done; counting requests per role");
    let mut per_role = Vec::new();
    for (timings, users) in [
        (CLIENT_GO, ("leader-60", "follower-60")),
        (KUBERNETES, ("leader-15", "follower-15")),
    ] {
        per_role.push((timings, rates(&srv, timings, idle, users).await?));
    }
    let mut headlines = Vec::new();
    if headline_secs > 0 {
        eprintln!("three electors on one Lease");
        headlines.push(("tenure", headline_tenure(&srv, headline_secs).await?));
        if let Some(bin) = &go_bin {
            headlines.push((
                "client-go example",
                headline_client_go(&srv, bin, headline_secs).await?,
            ));
        }
    }

    println!();
    println!("| measurement | trials | p50 | p99 | max |");
    println!("| --- | --- | --- | --- | --- |");
    for (v, s) in [(&h, settle), (&f, fresh_settle)] {
        println!(
            "| tenure graceful handoff (shutdown → follower's term starts; follower started {} ms before; L 15 s, D 10 s, R 2 s) | {} | {} | {} | {} |",
            s.as_millis(),
            v.len(),
            ms(pct(v, 0.5)),
            ms(pct(v, 0.99)),
            ms(v.last().copied().unwrap_or_default())
        );
    }
    println!(
        "| tenure crash failover (leader aborted → follower leads; L {} s) | {} | {} | {} | {} |",
        crash_l.as_secs(),
        c.len(),
        ms(pct(&c, 0.5)),
        ms(pct(&c, 0.99)),
        ms(c.last().copied().unwrap_or_default())
    );
    if !g.is_empty() {
        println!(
            "| client-go example graceful handoff (SIGTERM → other acquires; 60 s / 15 s / 5 s) | {} | {} | {} | {} |",
            g.len(),
            ms(pct(&g, 0.5)),
            ms(pct(&g, 0.99)),
            ms(g.last().copied().unwrap_or_default())
        );
    }
    println!();
    println!(
        "| elector (counted by the API server over {idle} s) | L / D / R | API requests per second | requests |"
    );
    println!("| --- | --- | --- | --- |");
    for (timings, (leader, follower)) in &per_role {
        for (role, m) in [("leader", leader), ("watching follower", follower)] {
            println!(
                "| {role} | {} | {:.3} | {} |",
                show(*timings),
                per_sec(m, idle),
                verbs(m)
            );
        }
    }
    if !headlines.is_empty() {
        println!();
        println!(
            "| three electors on one Lease, {}, {headline_secs} s once settled (apiserver_request_total, leases) | GET | PUT | POST | WATCH opened | total | requests/s |",
            show(CLIENT_GO)
        );
        println!("| --- | --- | --- | --- | --- | --- | --- |");
        for (who, hl) in &headlines {
            print_headline(who, hl, headline_secs);
        }
        println!();
        println!("| elector (audit log, same window) | requests | requests/s |");
        println!("| --- | --- | --- |");
        for (who, hl) in &headlines {
            for (e, m) in &hl.by_elector {
                println!(
                    "| {who} {e} | {} | {:.3} |",
                    verbs(m),
                    per_sec(m, headline_secs)
                );
            }
        }
    }
    Ok(())
}
