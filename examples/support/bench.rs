//! What the store benchmarks share: candidates, graceful handoffs, crash failovers,
//! percentiles and process statistics. Each benchmark includes it with
//! `#[path = "support/bench.rs"] mod bench;` and uses what it needs.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tenure::{LeaderElector, LeaderHandle, LeaderState, LeaseStore, Term};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Lease duration, renew deadline, retry period.
pub type Timings = (Duration, Duration, Duration);

/// An elector running in a task, its work waiting for the end of each term.
pub struct Candidate {
    pub handle: LeaderHandle,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<tenure::Result<()>>,
}

/// Starts a candidate for `name` on `store` as `id`, with drain timeout 1 s.
pub fn spawn<S: LeaseStore + 'static>(
    store: S,
    name: &str,
    id: &str,
    (l, d, r): Timings,
) -> Result<Candidate, Error> {
    let elector = LeaderElector::builder(store, name)
        .identity(id)
        .lease_duration(l)
        .renew_deadline(d)
        .retry_period(r)
        .drain_timeout(Duration::from_secs(1))
        .build()?;
    let handle = elector.handle();
    let shutdown = CancellationToken::new();
    let sd = shutdown.clone();
    let task = tokio::spawn(async move {
        elector
            .run(sd.cancelled_owned(), |term: Term| async move {
                term.cancelled().await
            })
            .await
    });
    Ok(Candidate {
        handle,
        shutdown,
        task,
    })
}

/// The current term of `h`, if it leads.
pub fn term_of(h: &LeaderHandle) -> Option<Term> {
    match h.current() {
        LeaderState::Leading(t) if !t.is_cancelled() => Some(t),
        _ => None,
    }
}

/// Graceful handoffs of election `name` between two candidates, each on a store from
/// `store()`: the leader's shutdown is requested and the time until the follower leads is
/// measured; the shut-down one is replaced by a new follower, and `settle()` is waited before
/// the next trial (for the follower to read and start its watch, or a random phase of its
/// polling). Sorted.
pub async fn handoff<S, F, Fut>(
    mut store: F,
    name: &str,
    t: Timings,
    trials: usize,
    settle: impl Fn() -> Duration,
) -> Result<Vec<Duration>, Error>
where
    S: LeaseStore + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<S, Error>>,
{
    let mut a = spawn(store().await?, name, "a0", t)?;
    timeout(Duration::from_secs(10), a.handle.leading())
        .await?
        .ok_or("no leader")?;
    let mut b = spawn(store().await?, name, "b0", t)?;
    sleep(Duration::from_millis(100)).await;
    let mut out = Vec::with_capacity(trials);
    for i in 0..trials {
        sleep(settle()).await;
        let start = Instant::now();
        a.shutdown.cancel();
        timeout(Duration::from_secs(10), b.handle.leading())
            .await?
            .ok_or("the follower stopped")?;
        out.push(start.elapsed());
        a.task.await??;
        // The old leader comes back as the follower.
        let next = spawn(store().await?, name, &format!("c{i}"), t)?;
        a = std::mem::replace(&mut b, next);
    }
    a.shutdown.cancel();
    b.shutdown.cancel();
    a.task.await??;
    b.task.await??;
    out.sort();
    Ok(out)
}

/// Crash failovers of election `name`: for each trial a follower is started and given `warm`
/// to see the leader's renewals; right after one of them, at a uniformly random point of the
/// retry period, the leader's task is aborted without releasing. Returns, per trial, (crash →
/// new leader, new leader − (last renewal sent + L) in signed seconds).
pub async fn failover<S, F, Fut>(
    mut store: F,
    name: &str,
    (l, d, r): Timings,
    trials: usize,
    warm: Duration,
) -> Result<Vec<(Duration, f64)>, Error>
where
    S: LeaseStore + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<S, Error>>,
{
    let t = (l, d, r);
    let mut out = Vec::with_capacity(trials);
    let mut a = spawn(store().await?, name, "a", t)?;
    timeout(l * 4, a.handle.leading())
        .await?
        .ok_or("no leader")?;
    for i in 0..trials {
        let b = spawn(store().await?, name, &format!("b{i}"), t)?;
        sleep(warm).await;
        let term = term_of(&a.handle).ok_or("the leader lost its term")?;
        // Crash right after a renewal (none in flight: its send time is then exactly
        // `valid_until − D`), at a random point of the retry period.
        let renewed = term.valid_until();
        let wait_renewal = Instant::now() + r * 3;
        while term.valid_until() == renewed {
            if Instant::now() > wait_renewal {
                return Err("the leader did not renew".into());
            }
            sleep(Duration::from_millis(1)).await;
        }
        let phase: f64 = rand::thread_rng().gen_range(0.0..0.9);
        sleep(r.mul_f64(phase)).await;
        let last_renewal = term.valid_until() - d;
        let start = Instant::now();
        a.task.abort();
        let _ = a.task.await;
        if term.valid_until() - d != last_renewal {
            return Err("a renewal raced the crash".into());
        }
        timeout(l * 4, b.handle.leading())
            .await?
            .ok_or("the follower stopped")?;
        let led = Instant::now();
        let expired = last_renewal + l;
        let past = if led >= expired {
            (led - expired).as_secs_f64()
        } else {
            -(expired - led).as_secs_f64()
        };
        out.push((led - start, past));
        a = b;
    }
    a.shutdown.cancel();
    a.task.await??;
    Ok(out)
}

/// The `p` quantile (0 to 1) of sorted durations (zero if empty).
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Milliseconds with one decimal.
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Signed milliseconds from seconds, for offsets from L.
pub fn ms_signed(x: f64) -> String {
    format!(
        "{}{:.1} ms",
        if x < 0.0 { "−" } else { "+" },
        x.abs() * 1000.0
    )
}

/// `p50 · p99 · max` of sorted durations.
pub fn summary(sorted: &[Duration]) -> String {
    format!(
        "p50 {} · p99 {} · max {}",
        ms(pct(sorted, 0.5)),
        ms(pct(sorted, 0.99)),
        ms(pct(sorted, 1.0))
    )
}

/// Failover results as two sorted lists: from the crash, and from the lease's expiry (s).
pub fn split_failovers(f: &[(Duration, f64)]) -> (Vec<Duration>, Vec<f64>) {
    let mut from_crash: Vec<Duration> = f.iter().map(|x| x.0).collect();
    from_crash.sort();
    let mut past: Vec<f64> = f.iter().map(|x| x.1).collect();
    past.sort_by(f64::total_cmp);
    (from_crash, past)
}

/// The `p` quantile of sorted numbers (zero if empty).
pub fn pct_f64(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// (VmRSS in KiB, utime + stime in clock ticks) of this process.
pub fn proc_stats() -> (u64, u64) {
    let rss_kb = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    (rss_kb, ticks)
}

/// The `i`th command-line argument as a number, or `default`.
pub fn arg(args: &[String], i: usize, default: usize) -> Result<usize, Error> {
    Ok(args
        .get(i)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(default))
}
