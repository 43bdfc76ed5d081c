//! Measures the Redis store against a real server (`TENURE_REDIS_URL`, loopback).
//!
//! ```sh
//! TENURE_REDIS_URL=redis://127.0.0.1:6379/ cargo run --release --features redis \
//!     --example redis_bench -- [TRIALS] [ELECTIONS]    # defaults 200 and 10000
//! ```
//!
//! - graceful handoff: the leader's shutdown is requested; time until the follower's work
//!   starts (release, publish, watch wake-up, re-read, compare-and-swap, re-read). L = 5 s,
//!   D = 3 s, R = 1 s: the lease never expires during a trial.
//! - crash failover: the leader's task is aborted without releasing; time until the follower
//!   leads, for several lease durations (D = 0.6 L, R = L / 10).
//! - Redis load per elector at steady state (L = 15 s, D = 10 s, R = 2 s) over a 20 s
//!   window: client requests (`INFO commandstats`: `EVALSHA`, `PING`, ...) and
//!   `total_commands_processed` (which also counts the commands run inside scripts), minus
//!   the benchmark's own `INFO` calls: first a leader alone, then with a follower added.
//! - scale: ELECTIONS elections in this process, one elector each, over one `RedisStore`
//!   (one command connection, one watch connection), R = 2 s: resident memory (VmRSS) and
//!   CPU share (utime + stime over wall time) of this process at steady state.
//!
//! Every key uses a fresh prefix; the benchmark deletes nothing else.

use std::time::Duration;

use rand::Rng;
use tenure::redis::RedisStore;
use tenure::{LeaderElector, LeaderHandle, Term};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Candidate {
    handle: LeaderHandle,
    shutdown: CancellationToken,
    task: JoinHandle<tenure::Result<()>>,
}

fn spawn(
    store: RedisStore,
    name: &str,
    id: &str,
    (l, d, r): (Duration, Duration, Duration),
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

async fn connect(url: &str, prefix: &str) -> Result<RedisStore, Error> {
    Ok(RedisStore::options(url)
        .prefix(prefix)
        .timeout(Duration::from_millis(500))
        .connect()
        .await?)
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

/// Graceful handoffs between two candidates, the shut-down one replaced each time.
async fn handoff(url: &str, prefix: &str, trials: usize) -> Result<Vec<Duration>, Error> {
    let t = (
        Duration::from_secs(5),
        Duration::from_secs(3),
        Duration::from_secs(1),
    );
    let name = "handoff";
    let mut a = spawn(connect(url, prefix).await?, name, "a0", t)?;
    timeout(Duration::from_secs(10), a.handle.leading())
        .await?
        .ok_or("no leader")?;
    let mut b = spawn(connect(url, prefix).await?, name, "b0", t)?;
    sleep(Duration::from_millis(100)).await;
    let mut out = Vec::new();
    for i in 0..trials {
        let start = Instant::now();
        a.shutdown.cancel();
        timeout(Duration::from_secs(10), b.handle.leading())
            .await?
            .ok_or("the follower stopped")?;
        out.push(start.elapsed());
        a.task.await??;
        // The old leader comes back as the follower.
        let next = spawn(connect(url, prefix).await?, name, &format!("c{i}"), t)?;
        a = std::mem::replace(&mut b, next);
        // Let the new follower subscribe and read.
        sleep(Duration::from_millis(30)).await;
    }
    a.shutdown.cancel();
    b.shutdown.cancel();
    a.task.await??;
    b.task.await??;
    out.sort();
    Ok(out)
}

/// Crash failovers at lease duration `l`.
async fn failover(
    url: &str,
    prefix: &str,
    l: Duration,
    trials: usize,
) -> Result<Vec<Duration>, Error> {
    let t = (l, l * 6 / 10, l / 10);
    let name = format!("failover-{}", l.as_millis());
    let mut out = Vec::new();
    let mut a = spawn(connect(url, prefix).await?, &name, "a", t)?;
    timeout(l * 4, a.handle.leading())
        .await?
        .ok_or("no leader")?;
    for i in 0..trials {
        let b = spawn(connect(url, prefix).await?, &name, &format!("b{i}"), t)?;
        sleep(l / 2).await;
        let start = Instant::now();
        a.task.abort();
        timeout(l * 4, b.handle.leading())
            .await?
            .ok_or("the follower stopped")?;
        out.push(start.elapsed());
        a = b;
    }
    a.shutdown.cancel();
    a.task.await??;
    out.sort();
    Ok(out)
}

/// `total_commands_processed` (commands run inside scripts included) and the client
/// requests among them (`EVALSHA`, `EVAL`, `PING`, `SUBSCRIBE`, ... from `INFO commandstats`).
async fn counters(c: &mut redis::aio::MultiplexedConnection) -> Result<(u64, u64), Error> {
    let info: String = redis::cmd("INFO").arg("all").query_async(c).await?;
    let total = info
        .lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or("no total_commands_processed in INFO")?;
    let mut requests = 0;
    for l in info.lines() {
        let Some((cmd, rest)) = l.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else {
            continue;
        };
        if [
            "evalsha",
            "eval",
            "ping",
            "subscribe",
            "unsubscribe",
            "script",
            "hello",
            "client",
            "select",
            "auth",
        ]
        .contains(&cmd)
        {
            let calls = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            requests += calls;
        }
    }
    Ok((total, requests))
}

/// Server commands and client requests per second over `window` (the INFO calls themselves
/// subtracted).
async fn rate(url: &str, window: Duration) -> Result<(f64, f64), Error> {
    let mut c = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let (t0, r0) = counters(&mut c).await?;
    sleep(window).await;
    let (t1, r1) = counters(&mut c).await?;
    let w = window.as_secs_f64();
    Ok((
        t1.saturating_sub(t0).saturating_sub(1) as f64 / w,
        r1.saturating_sub(r0) as f64 / w,
    ))
}

fn proc_stats() -> (u64, u64) {
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
            // After the command: state is field 3, utime 14 and stime 15 (1-based overall).
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    (rss_kb, ticks)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::var("TENURE_REDIS_URL")
        .map_err(|_| "set TENURE_REDIS_URL (scripts/test-services.sh starts a Redis)")?;
    let mut args = std::env::args().skip(1);
    let trials: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(200);
    let elections: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10_000);
    let r: u32 = rand::thread_rng().gen();
    let prefix = format!("tenure-bench-{r:08x}:");
    let mut rows: Vec<(String, String)> = Vec::new();

    let h = handoff(&url, &prefix, trials).await?;
    rows.push((
        format!("graceful handoff ({} trials)", h.len()),
        format!(
            "p50 {} · p99 {} · max {}",
            ms(pct(&h, 0.5)),
            ms(pct(&h, 0.99)),
            ms(pct(&h, 1.0))
        ),
    ));
    eprintln!("handoff done");

    for l in [1u64, 2, 4] {
        let l = Duration::from_secs(l);
        let f = failover(&url, &prefix, l, 3).await?;
        rows.push((
            format!("crash failover, L = {} s ({} trials)", l.as_secs(), f.len()),
            format!("p50 {} · max {}", ms(pct(&f, 0.5)), ms(pct(&f, 1.0))),
        ));
    }
    eprintln!("failover done");

    // Steady state at the defaults: a leader alone, then a follower too.
    let defaults = (
        Duration::from_secs(15),
        Duration::from_secs(10),
        Duration::from_secs(2),
    );
    let window = Duration::from_secs(20);
    let idle = rate(&url, Duration::from_secs(4)).await?;
    let leader = spawn(connect(&url, &prefix).await?, "steady", "leader", defaults)?;
    timeout(Duration::from_secs(10), leader.handle.leading())
        .await?
        .ok_or("no leader")?;
    sleep(Duration::from_secs(1)).await;
    let with_leader = rate(&url, window).await?;
    let follower = spawn(
        connect(&url, &prefix).await?,
        "steady",
        "follower",
        defaults,
    )?;
    sleep(Duration::from_secs(1)).await;
    let with_both = rate(&url, window).await?;
    let per = |a: (f64, f64), b: (f64, f64)| {
        format!(
            "{:.2} requests/s · {:.2} server commands/s (script-internal included)",
            (a.1 - b.1).max(0.0),
            (a.0 - b.0).max(0.0)
        )
    };
    rows.push((
        "Redis load, leader (L = 15 s, R = 2 s)".into(),
        per(with_leader, idle),
    ));
    rows.push((
        "Redis load, follower (L = 15 s, R = 2 s)".into(),
        per(with_both, with_leader),
    ));
    leader.shutdown.cancel();
    follower.shutdown.cancel();
    leader.task.await??;
    follower.task.await??;
    eprintln!("steady state done");

    // Scale: many elections over one store.
    let (rss0, _) = proc_stats();
    let store = connect(&url, &prefix).await?;
    let mut many = Vec::with_capacity(elections);
    let ramp = Instant::now();
    for i in 0..elections {
        many.push(spawn(store.clone(), &format!("scale-{i}"), "me", defaults)?);
        if i % 500 == 499 {
            sleep(Duration::from_millis(20)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while many.iter().filter(|c| c.handle.is_leader()).count() < elections
        && Instant::now() < deadline
    {
        sleep(Duration::from_millis(200)).await;
    }
    let ramp = ramp.elapsed();
    sleep(Duration::from_secs(4)).await;
    let (_, t0) = proc_stats();
    let w0 = Instant::now();
    let cmds = rate(&url, window).await?;
    let (rss1, t1) = proc_stats();
    let wall = w0.elapsed().as_secs_f64();
    let hz = 100.0; // USER_HZ on Linux
    let cpu = (t1.saturating_sub(t0)) as f64 / hz / wall * 100.0;
    let leading = many.iter().filter(|c| c.handle.is_leader()).count();
    rows.push((
        format!("scale: {elections} elections, one store, R = 2 s"),
        format!(
            "{leading} leading after {:.1} s · RSS {:.0} MiB (+{:.0} MiB) · CPU {:.1}% of one core · {:.0} requests/s",
            ramp.as_secs_f64(),
            rss1 as f64 / 1024.0,
            rss1.saturating_sub(rss0) as f64 / 1024.0,
            cpu,
            cmds.1
        ),
    ));
    for c in &many {
        c.shutdown.cancel();
    }
    for c in many {
        let _ = c.task.await;
    }

    println!("| measurement | result |");
    println!("| --- | --- |");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
    Ok(())
}
