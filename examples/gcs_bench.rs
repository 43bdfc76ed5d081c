//! Measures tenure's Cloud Storage store under a `LeaderElector`, against fake-gcs-server (or
//! any endpoint given as `host:port` / URL; the bucket `tenure-bench` is created there if
//! missing, which real Cloud Storage would need a project for: create it yourself and pass
//! the URL of a real endpoint only with credentials, which this program does not set up).
//!
//! ```sh
//! TENURE_GCS_EMULATOR=127.0.0.1:4443 cargo run --release --features gcs --example gcs_bench \
//!     -- [ACQUISITIONS] [HANDOFFS] [FAILOVERS] [WINDOW_S]
//! # defaults: 50 acquisitions, 30 handoffs, 10 crash failovers, 20 s load window
//! ```
//!
//! - store calls: `get` and `put(Update)` latency on one object (a get is two requests: the
//!   object's metadata, then its content at that generation).
//! - acquisition: a fresh elector on a free name until its work starts (connect excluded).
//! - graceful handoff: the leader's shutdown is requested (it releases: a conditional
//!   upload of the vacant record); time until the polling follower's work starts. No watch:
//!   bounded by the follower's jittered retry period, `R × [1, 2.2)`. L = 5 s, D = 3 s,
//!   R = 1 s (the least Cloud Storage's write-rate limit allows).
//! - crash failover: the leader's task is aborted right after a renewal; time until the
//!   follower leads, and how far that is from the lease's expiry (last renewal sent + L).
//!   L = 4 s, D = 2.5 s, R = 1 s.
//! - requests per second per elector at steady state (L = 15 s, D = 10 s, R = 2 s), counted
//!   by each process's own `Gcs::requests_sent` over WINDOW_S.
//!
//! Every object lives under a fresh prefix; the benchmark deletes nothing.

use std::time::Duration;

use rand::Rng;
use tenure::gcs::{self, Gcs, GcsOptions, GcsStore};
use tenure::{LeaderElector, LeaseRecord, LeaseStore, PutMode, Term};
use tokio::time::{sleep, timeout, Instant};

#[path = "support/bench.rs"]
mod bench;
use bench::{arg, ms, pct, spawn, split_failovers, term_of, Error};

const BUCKET: &str = "tenure-bench";

async fn connect(endpoint: &str, prefix: &str) -> Result<Gcs, Error> {
    Ok(GcsOptions::new(BUCKET)
        .endpoint(endpoint)
        .prefix(prefix)
        .timeout(Duration::from_secs(1))
        .connect()
        .await?)
}

/// The store of one candidate: its own handle.
async fn store(endpoint: &str, prefix: &str) -> Result<GcsStore, Error> {
    Ok(GcsStore::new(connect(endpoint, prefix).await?))
}

fn row(what: &str, setting: &str, n: usize, sorted: &[Duration]) {
    println!(
        "| {what} | {setting} | {n} | {} | {} | {} |",
        ms(pct(sorted, 0.5)),
        ms(pct(sorted, 0.99)),
        ms(pct(sorted, 1.0))
    );
}

/// Creates the bucket on an emulator (no credentials) if it is missing.
async fn ensure_bucket(endpoint: &str) -> Result<(), Error> {
    let base = if endpoint.contains("://") {
        endpoint.trim_end_matches('/').to_owned()
    } else {
        format!("http://{endpoint}")
    };
    let r = reqwest::Client::new()
        .post(format!("{base}/storage/v1/b?project=tenure"))
        .body(format!("{{\"name\":\"{BUCKET}\"}}"))
        .send()
        .await?;
    if !(r.status().is_success() || r.status() == reqwest::StatusCode::CONFLICT) {
        return Err(format!("creating the bucket: {}", r.status()).into());
    }
    Ok(())
}

/// `get` and `put(Update)` latencies on one object.
async fn store_calls(
    endpoint: &str,
    prefix: &str,
    n: usize,
) -> Result<(Vec<Duration>, Vec<Duration>), Error> {
    let s = GcsStore::new(connect(endpoint, prefix).await?);
    let rec = LeaseRecord::held_by("bench", Duration::from_secs(15), 1);
    let mut v = s.put("calls", &rec, PutMode::Create).await?;
    let (mut gets, mut puts) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let start = Instant::now();
        let got = s.get("calls").await?.ok_or("the record vanished")?;
        gets.push(start.elapsed());
        let start = Instant::now();
        v = s.put("calls", &got.record, PutMode::Update(v)).await?;
        puts.push(start.elapsed());
    }
    gets.sort();
    puts.sort();
    Ok((gets, puts))
}

/// A fresh elector on a free name, until its work starts.
async fn acquisition(endpoint: &str, prefix: &str, n: usize) -> Result<Vec<Duration>, Error> {
    let t = (
        Duration::from_secs(5),
        Duration::from_secs(3),
        Duration::from_secs(1),
    );
    let mut out = Vec::new();
    for i in 0..n {
        let gcs = connect(endpoint, prefix).await?;
        let elector = LeaderElector::builder(GcsStore::new(gcs), format!("acquire-{i}"))
            .lease_duration(t.0)
            .renew_deadline(t.1)
            .retry_period(t.2)
            .build()?;
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let sd = shutdown.clone();
        let start = Instant::now();
        let task = tokio::spawn(async move {
            let mut tx = Some(started_tx);
            elector
                .run(sd.cancelled_owned(), move |term: Term| {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(Instant::now());
                    }
                    async move { term.cancelled().await }
                })
                .await
        });
        let led = timeout(Duration::from_secs(10), started_rx).await??;
        out.push(led - start);
        shutdown.cancel();
        task.await??;
    }
    out.sort();
    Ok(out)
}

/// Requests per second each role sends at steady state: (leader, follower).
async fn load(endpoint: &str, prefix: &str, window: Duration) -> Result<(f64, f64), Error> {
    let t = (
        Duration::from_secs(15),
        Duration::from_secs(10),
        Duration::from_secs(2),
    );
    let name = "load";
    let (ga, gb) = (
        connect(endpoint, prefix).await?,
        connect(endpoint, prefix).await?,
    );
    let a = spawn(GcsStore::new(ga.clone()), name, "leader", t)?;
    timeout(Duration::from_secs(10), a.handle.leading())
        .await?
        .ok_or("no leader")?;
    let b = spawn(GcsStore::new(gb.clone()), name, "follower", t)?;
    sleep(Duration::from_secs(3)).await;
    let (a0, b0) = (ga.requests_sent(), gb.requests_sent());
    let started = Instant::now();
    sleep(window).await;
    let w = started.elapsed().as_secs_f64();
    let (a1, b1) = (ga.requests_sent(), gb.requests_sent());
    if term_of(&a.handle).is_none() {
        return Err("the leader lost its term during the window".into());
    }
    for c in [a, b] {
        c.shutdown.cancel();
        c.task.await??;
    }
    Ok(((a1 - a0) as f64 / w, (b1 - b0) as f64 / w))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let acquisitions = arg(&args, 0, 50)?;
    let handoffs = arg(&args, 1, 30)?;
    let failovers = arg(&args, 2, 10)?;
    let window = Duration::from_secs(arg(&args, 3, 20)? as u64);
    let endpoint = std::env::var("TENURE_GCS_EMULATOR")
        .or_else(|_| std::env::var(gcs::EMULATOR_ENV))
        .map_err(|_| "set TENURE_GCS_EMULATOR (or STORAGE_EMULATOR_HOST) to host:port")?;
    ensure_bucket(&endpoint).await?;
    let prefix = format!(
        "tenure-bench-{}-{:08x}/",
        std::process::id(),
        rand::random::<u32>()
    );
    println!("Cloud Storage at {endpoint}, bucket {BUCKET}, objects under {prefix}");
    println!();
    println!("| measurement | setting | n | p50 | p99 | max |");
    println!("|---|---|---|---|---|---|");

    let (gets, puts) = store_calls(&endpoint, &prefix, acquisitions).await?;
    row("store `get` (2 requests)", "one object", gets.len(), &gets);
    row(
        "store `put(Update)` (conditional multipart upload)",
        "one object",
        puts.len(),
        &puts,
    );

    let a = acquisition(&endpoint, &prefix, acquisitions).await?;
    row("acquisition of a free name", "L=5s D=3s R=1s", a.len(), &a);

    let t = (
        Duration::from_secs(5),
        Duration::from_secs(3),
        Duration::from_secs(1),
    );
    // A random phase of the follower's polling before each trial.
    let phase = || t.2.mul_f64(rand::thread_rng().gen_range(0.2..1.2));
    let h = bench::handoff(|| store(&endpoint, &prefix), "handoff", t, handoffs, phase).await?;
    row(
        "graceful handoff (follower polls)",
        "L=5s D=3s R=1s",
        h.len(),
        &h,
    );

    let t = (
        Duration::from_secs(4),
        Duration::from_millis(2500),
        Duration::from_secs(1),
    );
    let f = bench::failover(
        || store(&endpoint, &prefix),
        "failover",
        t,
        failovers,
        t.2 * 2,
    )
    .await?;
    let (from_crash, past) = split_failovers(&f);
    row(
        "crash failover, from the crash",
        "L=4s D=2.5s R=1s",
        from_crash.len(),
        &from_crash,
    );
    let p = |q: f64| bench::pct_f64(&past, q) * 1000.0;
    if !past.is_empty() {
        println!(
            "| crash failover, after the lease's expiry | L=4s D=2.5s R=1s | {} | {:+.1} ms | {:+.1} ms | {:+.1} ms |",
            past.len(),
            p(0.5),
            p(0.99),
            p(1.0)
        );
    }

    let (leader, follower) = load(&endpoint, &prefix, window).await?;
    println!();
    println!(
        "requests per second per elector (L=15s D=10s R=2s, {}s window): leader {leader:.2} · \
         follower {follower:.2}",
        window.as_secs()
    );
    Ok(())
}
