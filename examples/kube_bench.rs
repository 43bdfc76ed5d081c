//! Measures tenure on a real Kubernetes API server: graceful handoff, crash failover, and API
//! requests per second per elector; optionally client-go's example elector side by side.
//!
//! ```sh
//! scripts/test-services.sh start /tmp/kube && source /tmp/kube/env
//! cargo run --example kube_bench --features kubernetes -- \
//!     --trials 100 --crash-trials 5 --idle-secs 30 --go-trials 5 [--settle-ms 500]
//! ```
//!
//! Uses `TENURE_KUBECONFIG` (else the default kubeconfig) and, for `--go-trials`,
//! `TENURE_CLIENT_GO_ELECTOR` (client-go's `examples/leader-election`).

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tenure::kubernetes::KubeLeaseStore;
use tenure::{LeaderElector, LeaseRecord, LeaseStore, PutMode, Term, Version, WatchStream};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Notify;
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Counts the store calls an elector makes (each one API request; a watch is one long-lived
/// request, restarted by the store every 4 minutes).
#[derive(Clone)]
struct Counting {
    inner: KubeLeaseStore,
    calls: Arc<AtomicU64>,
    watches: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl LeaseStore for Counting {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    async fn get(&self, name: &str) -> tenure::Result<Option<tenure::Stored>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.get(name).await
    }
    async fn put(&self, name: &str, r: &LeaseRecord, m: PutMode) -> tenure::Result<Version> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.put(name, r, m).await
    }
    fn watch(&self, name: &str) -> Option<WatchStream> {
        self.watches.fetch_add(1, Ordering::Relaxed);
        self.inner.watch(name)
    }
    async fn delete(&self, name: &str, v: &Version) -> tenure::Result<()> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.delete(name, v).await
    }
}

struct Candidate {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<tenure::Result<()>>,
    started: Arc<Mutex<Option<Instant>>>,
    leading: Arc<Notify>,
    handle: tenure::LeaderHandle,
}

fn candidate<S: LeaseStore + Clone>(
    store: S,
    name: &str,
    id: String,
    (l, d, r): (Duration, Duration, Duration),
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

async fn client() -> Result<kube::Client, BoxError> {
    Ok(match std::env::var("TENURE_KUBECONFIG") {
        Ok(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)?;
            let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
            kube::Client::try_from(cfg)?
        }
        Err(_) => kube::Client::try_default().await?,
    })
}

/// A store on a client of its own, as each replica has (candidates sharing one client queue
/// behind each other's requests and watches).
async fn own_store() -> Result<KubeLeaseStore, BoxError> {
    // Events off: measure the election's own requests.
    Ok(KubeLeaseStore::builder(client().await?, "default")
        .events(false)
        .build()?)
}

fn unique(tag: &str) -> String {
    format!("bench-{tag}-{:08x}", rand::random::<u32>())
}

/// Graceful handoffs between two candidates: from the leader's shutdown request to the
/// follower's term start. Each trial's follower was started during the previous trial and
/// has been following for `settle`: a follower that has only just started may not have its
/// watch connected yet (a TLS connection and the watch request, tens of milliseconds), and
/// then learns of the release when the watch's first event arrives.
async fn handoffs(trials: u64, settle: Duration) -> Result<Vec<Duration>, BoxError> {
    let timings = (
        Duration::from_secs(15),
        Duration::from_secs(10),
        Duration::from_secs(2),
    );
    let name = unique("handoff");
    let mut cands = vec![
        candidate(own_store().await?, &name, "h-0".into(), timings)?,
        candidate(own_store().await?, &name, "h-1".into(), timings)?,
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
        while !matches!(
            cands[follower].handle.current(),
            tenure::LeaderState::Following(_)
        ) {
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
            own_store().await?,
            &name,
            format!("h-{}", trial + 2),
            timings,
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
async fn crashes(trials: u64, l: Duration) -> Result<Vec<Duration>, BoxError> {
    let timings = (l, l * 3 / 5, l / 5);
    let name = unique("crash");
    let mut out = Vec::new();
    let mut cands = vec![
        candidate(own_store().await?, &name, "c-0".into(), timings)?,
        candidate(own_store().await?, &name, "c-1".into(), timings)?,
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
            own_store().await?,
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

/// Store calls per second of a leader and of a watching follower at the default timings.
async fn rates(secs: u64) -> Result<(f64, f64, u64), BoxError> {
    let timings = (
        Duration::from_secs(15),
        Duration::from_secs(10),
        Duration::from_secs(2),
    );
    let name = unique("rate");
    let counting = |s: KubeLeaseStore| Counting {
        inner: s,
        calls: Arc::new(AtomicU64::new(0)),
        watches: Arc::new(AtomicU64::new(0)),
    };
    let (a, b) = (counting(own_store().await?), counting(own_store().await?));
    let ca = candidate(a.clone(), &name, "r-0".into(), timings)?;
    ca.leading.notified().await;
    let cb = candidate(b.clone(), &name, "r-1".into(), timings)?;
    sleep(Duration::from_secs(2)).await;
    let (a0, b0) = (
        a.calls.load(Ordering::Relaxed),
        b.calls.load(Ordering::Relaxed),
    );
    sleep(Duration::from_secs(secs)).await;
    let (a1, b1) = (
        a.calls.load(Ordering::Relaxed),
        b.calls.load(Ordering::Relaxed),
    );
    let watches = a.watches.load(Ordering::Relaxed) + b.watches.load(Ordering::Relaxed);
    for c in [ca, cb] {
        c.stop.cancel();
        c.task.await??;
    }
    let per = |n: u64| n as f64 / secs as f64;
    Ok((per(a1 - a0), per(b1 - b0), watches))
}

/// client-go's example elector: SIGTERM the leader, time until the other prints that it
/// acquired the lease.
async fn go_handoffs(bin: &str, trials: u64) -> Result<Vec<Duration>, BoxError> {
    let kubeconfig = std::env::var("TENURE_KUBECONFIG")?;
    let name = unique("go");
    type Lines = Arc<Mutex<Vec<(Instant, String)>>>;
    let spawn = |id: String| -> Result<(tokio::process::Child, Lines), BoxError> {
        let mut child = tokio::process::Command::new(bin)
            .args([
                "--kubeconfig",
                &kubeconfig,
                "--id",
                &id,
                "--lease-lock-name",
                &name,
            ])
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
    };
    let acquired = |l: &Lines| {
        l.lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(_, s)| s.contains("successfully acquired lease"))
            .map(|(t, _)| *t)
    };
    let mut procs = vec![spawn("go-0".into())?, spawn("go-1".into())?];
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
        if let Some(pid) = child.id() {
            std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()?;
        }
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
        procs.push(spawn(format!("go-{}", trial + 2))?);
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let trials = arg("--trials", 100);
    let crash_trials = arg("--crash-trials", 5);
    let crash_l = Duration::from_secs(arg("--crash-lease-secs", 5));
    let idle = arg("--idle-secs", 30);
    let go_trials = arg("--go-trials", 0);

    let settle = Duration::from_millis(arg("--settle-ms", 500));
    let mut h = handoffs(trials, settle).await?;
    h.sort();
    let fresh_settle = Duration::from_millis(50);
    let mut f = handoffs(trials, fresh_settle).await?;
    f.sort();
    let mut c = crashes(crash_trials, crash_l).await?;
    c.sort();
    let (leader_rps, follower_rps, watches) = rates(idle).await?;

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
    if go_trials > 0 {
        let bin = std::env::var("TENURE_CLIENT_GO_ELECTOR")?;
        let mut g = go_handoffs(&bin, go_trials).await?;
        g.sort();
        println!(
            "| client-go example graceful handoff (SIGTERM → other acquires; 60 s / 15 s / 5 s) | {} | {} | {} | {} |",
            g.len(),
            ms(pct(&g, 0.5)),
            ms(pct(&g, 0.99)),
            ms(g.last().copied().unwrap_or_default())
        );
    }
    println!();
    println!("| elector (L 15 s, D 10 s, R 2 s) | API requests per second |");
    println!("| --- | --- |");
    println!("| leader | {leader_rps:.2} |");
    println!(
        "| watching follower | {follower_rps:.2} (plus one open watch, re-opened every 4 min) |"
    );
    println!("(measured over {idle} s; {watches} watch streams opened)");
    Ok(())
}
