//! Measures graceful handoff and crash failover latency on the memory and file stores.
//!
//! ```sh
//! cargo run --release --example handoff_bench -- [TRIALS]   # default 100 per scenario
//! ```
//!
//! - graceful handoff: the leader's shutdown is requested; time until the follower's
//!   `on_started_leading` runs (drain of an idle work, release, watch wake-up, compare-and-swap).
//! - crash failover: the leader's task is aborted without releasing (as if killed); time until
//!   the follower leads. The follower must wait one lease duration after it last saw a renewal,
//!   so this is about `L` minus up to one `R`, plus wake-up latency.
//!
//! Settings: L = 300 ms, D = 200 ms, R = 50 ms. Real time, multi-threaded runtime.

use std::future::Future;
use std::time::Duration;

use tenure::file::FileStore;
use tenure::{LeaderElector, LeaderHandle, LeaderState, LeaseStore, MemoryStore, Term};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

const L: Duration = Duration::from_millis(300);
const D: Duration = Duration::from_millis(200);
const R: Duration = Duration::from_millis(50);

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Candidate {
    handle: LeaderHandle,
    shutdown: CancellationToken,
    task: JoinHandle<tenure::Result<()>>,
}

fn spawn<S: LeaseStore>(
    store: S,
    name: &str,
    id: usize,
    started: mpsc::UnboundedSender<(usize, Instant)>,
) -> Result<Candidate, Error> {
    let elector = LeaderElector::builder(store, name)
        .identity(format!("c{id}"))
        .lease_duration(L)
        .renew_deadline(D)
        .retry_period(R)
        .build()?;
    let handle = elector.handle();
    let shutdown = CancellationToken::new();
    let sd = shutdown.clone();
    let task = tokio::spawn(async move {
        elector
            .run(sd.cancelled_owned(), move |term: Term| {
                let _ = started.send((id, Instant::now()));
                async move { term.cancelled().await }
            })
            .await
    });
    Ok(Candidate {
        handle,
        shutdown,
        task,
    })
}

/// Waits until the candidate has read the record and follows somebody.
async fn following(c: &Candidate) -> Result<(), Error> {
    let mut rx = c.handle.state();
    timeout(
        L * 10,
        rx.wait_for(|s| matches!(s, LeaderState::Following(_))),
    )
    .await??;
    Ok(())
}

/// Runs `trials` handoffs on one election; `crash` aborts the leader instead of shutting it
/// down. Returns the latencies.
async fn scenario<S: LeaseStore, F: Fn() -> Result<S, Error>, Fut: Future<Output = ()>>(
    make: F,
    name: &str,
    trials: usize,
    crash: bool,
    settle: impl Fn() -> Fut,
) -> Result<Vec<Duration>, Error> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut next_id = 0;
    let mut leader = spawn(make()?, name, next_id, tx.clone())?;
    let (first, _) = timeout(L * 10, rx.recv()).await?.ok_or("no leader")?;
    if first != next_id {
        return Err("the first candidate did not lead".into());
    }
    let mut out = Vec::with_capacity(trials);
    for _ in 0..trials {
        next_id += 1;
        let follower = spawn(make()?, name, next_id, tx.clone())?;
        following(&follower).await?;
        settle().await;
        let t0 = Instant::now();
        if crash {
            leader.task.abort();
        } else {
            leader.shutdown.cancel();
        }
        let (who, at) = timeout(L * 10, rx.recv()).await?.ok_or("no leader")?;
        if who != next_id {
            return Err(format!("candidate {who} took over, expected {next_id}").into());
        }
        out.push(at - t0);
        let _ = leader.task.await;
        leader = follower;
    }
    leader.shutdown.cancel();
    let _ = leader.task.await;
    Ok(out)
}

fn row(store: &str, scenario: &str, mut v: Vec<Duration>) {
    v.sort();
    let q = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "| {store:<6} | {scenario:<16} | {:>6} | {:>9.2} | {:>9.2} | {:>9.2} |",
        v.len(),
        ms(q(0.5)),
        ms(q(0.99)),
        ms(v[v.len() - 1])
    );
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let trials: usize = match std::env::args().nth(1) {
        Some(s) => s.parse()?,
        None => 100,
    };
    let dir = std::env::temp_dir().join(format!("tenure-bench-{}", std::process::id()));
    FileStore::create(&dir)?;
    let memory = MemoryStore::new();
    // Crash trials wait for a random point between renewals.
    let settle_crash = || tokio::time::sleep(Duration::from_millis(rand_ms(R)));
    let settle_none = || async {};

    println!("tenure handoff benchmark: L = {L:?}, D = {D:?}, R = {R:?}, {trials} trials each\n");
    println!("| store  | scenario         | trials | p50 (ms)  | p99 (ms)  | max (ms)  |");
    println!("|--------|------------------|--------|-----------|-----------|-----------|");
    let m = || Ok(memory.clone());
    row(
        "memory",
        "graceful handoff",
        scenario(m, "g", trials, false, settle_none).await?,
    );
    row(
        "memory",
        "crash failover",
        scenario(m, "c", trials, true, settle_crash).await?,
    );
    let f = || Ok(FileStore::open(&dir)?);
    row(
        "file",
        "graceful handoff",
        scenario(f, "g", trials, false, settle_none).await?,
    );
    row(
        "file",
        "crash failover",
        scenario(f, "c", trials, true, settle_crash).await?,
    );
    let _ = std::fs::remove_dir_all(&dir);
    println!("\ncrash failover is bounded below by L − R = {:?} (the last renewal before the crash) and above by L plus wake-up latency", L - R);
    Ok(())
}

fn rand_ms(max: Duration) -> u64 {
    use rand::Rng;
    rand::thread_rng().gen_range(0..max.as_millis().max(1) as u64)
}
