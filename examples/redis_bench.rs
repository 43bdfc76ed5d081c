//! Measures the Redis store against a real server on loopback.
//!
//! ```sh
//! TENURE_REDIS_SERVER=/usr/bin/redis-server cargo run --release --features redis \
//!     --example redis_bench -- [TRIALS] [ELECTIONS] [FAILOVERS] [WINDOW_S]
//! # defaults: 200 handoffs, 10000 elections, 100 failovers at L = 1 s, 60 s load windows
//! ```
//!
//! With `TENURE_REDIS_SERVER` (a `redis-server` binary) the benchmark starts a private server
//! without persistence on a free loopback port, so that nothing else counts in its statistics;
//! otherwise it uses `TENURE_REDIS_URL` and the load figures include whatever else that server
//! does.
//!
//! - graceful handoff: the leader's shutdown is requested; time until the follower's work
//!   starts (release, publish, watch event, compare-and-swap, re-read). L = 5 s, D = 3 s,
//!   R = 1 s: the lease never expires during a trial.
//! - crash failover: right after one of the leader's renewals, at a uniformly random point of
//!   its retry period, the leader's task is aborted without releasing; time until the follower
//!   leads, from the crash, and from the moment the lease expired (the last renewal's send
//!   time + L: how late after the lease ran out the follower took over). L = 1 s (FAILOVERS
//!   trials), 2 s (half as many) and 4 s (a quarter), D = 0.6 L, R = L / 10.
//! - Redis load per role at steady state (L = 15 s, D = 10 s, R = 2 s), each over WINDOW_S:
//!   client requests (`INFO commandstats`: `EVALSHA`, `PING`, `SUBSCRIBE`, ...), server
//!   commands (`total_commands_processed`, which also counts the commands run inside scripts)
//!   and bytes sent by the server (`total_net_output_bytes`: replies and pub/sub messages),
//!   the benchmark's own `INFO` calls subtracted: a leader alone, then a watching follower
//!   added, then three electors of another election together.
//! - scale: ELECTIONS elections in this process, one elector each, over one `RedisStore`
//!   (one command connection, one watch connection), R = 2 s: resident memory (VmRSS) and
//!   CPU share (utime + stime over wall time) of this process at steady state.
//!
//! Every key uses a fresh prefix; the benchmark deletes nothing else.

use std::time::Duration;

use tenure::redis::RedisStore;
use tokio::time::{sleep, timeout, Instant};

#[path = "support/bench.rs"]
mod bench;
use bench::{ms_signed, pct, proc_stats, spawn, split_failovers, summary, Error};

async fn connect(url: &str, prefix: &str) -> Result<RedisStore, Error> {
    Ok(RedisStore::options(url)
        .prefix(prefix)
        .timeout(Duration::from_millis(500))
        .connect()
        .await?)
}

/// A private `redis-server` without persistence on a free loopback port, killed on drop.
struct PrivateRedis {
    child: std::process::Child,
    url: String,
}

impl PrivateRedis {
    async fn start(bin: &str) -> Result<Self, Error> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = std::process::Command::new(bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--logfile", ""])
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdout(std::process::Stdio::null())
            .spawn()?;
        let me = PrivateRedis {
            child,
            url: format!("redis://127.0.0.1:{port}/"),
        };
        for _ in 0..250 {
            if let Ok(mut c) = redis::Client::open(me.url.as_str())?
                .get_multiplexed_async_connection()
                .await
            {
                if redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
                {
                    return Ok(me);
                }
            }
            sleep(Duration::from_millis(20)).await;
        }
        Err(format!("the private redis-server on port {port} did not start").into())
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Server counters at one moment.
#[derive(Clone, Copy, Default)]
struct Counters {
    /// `total_commands_processed` (commands run inside scripts included).
    commands: u64,
    /// Client requests among them (`EVALSHA`, `EVAL`, `PING`, `SUBSCRIBE`, ... from
    /// `INFO commandstats`).
    requests: u64,
    /// `total_net_output_bytes`: replies and pub/sub messages.
    out_bytes: u64,
    /// The length of the `INFO` reply that reported these.
    info_len: u64,
}

async fn counters(c: &mut redis::aio::MultiplexedConnection) -> Result<Counters, Error> {
    let info: String = redis::cmd("INFO").arg("all").query_async(c).await?;
    let field = |name: &str| -> Result<u64, Error> {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("no {name} in INFO").into())
    };
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
    Ok(Counters {
        commands: field("total_commands_processed")?,
        requests,
        out_bytes: field("total_net_output_bytes")?,
        info_len: info.len() as u64,
    })
}

/// Per second over a window: server commands, client requests, bytes sent by the server.
#[derive(Clone, Copy, Default)]
struct Rate {
    commands: f64,
    requests: f64,
    out_bytes: f64,
}

/// Rates over `window`, the benchmark's own `INFO` calls subtracted.
async fn rate(url: &str, window: Duration) -> Result<Rate, Error> {
    let mut c = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let a = counters(&mut c).await?;
    let started = Instant::now();
    sleep(window).await;
    let b = counters(&mut c).await?;
    let w = started.elapsed().as_secs_f64();
    Ok(Rate {
        // The first INFO is counted once it has run (the second one is not counted yet).
        commands: b.commands.saturating_sub(a.commands).saturating_sub(1) as f64 / w,
        requests: b.requests.saturating_sub(a.requests) as f64 / w,
        // The first INFO's reply (plus its RESP header) went out during the window.
        out_bytes: b.out_bytes.saturating_sub(a.out_bytes + a.info_len + 16) as f64 / w,
    })
}

fn load(with: Rate, without: Rate) -> String {
    format!(
        "{:.3} requests/s · {:.3} server commands/s · {:.0} bytes/s sent by the server",
        (with.requests - without.requests).max(0.0),
        (with.commands - without.commands).max(0.0),
        (with.out_bytes - without.out_bytes).max(0.0),
    )
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let private = match std::env::var("TENURE_REDIS_SERVER") {
        Ok(bin) if !bin.is_empty() => Some(PrivateRedis::start(&bin).await?),
        _ => None,
    };
    let url = match &private {
        Some(p) => p.url.clone(),
        None => std::env::var("TENURE_REDIS_URL").map_err(|_| {
            "set TENURE_REDIS_SERVER (a redis-server binary) or TENURE_REDIS_URL \
             (scripts/test-services.sh starts a Redis)"
        })?,
    };
    let mut args = std::env::args().skip(1);
    let mut arg = |default: usize| -> Result<usize, Error> {
        Ok(args
            .next()
            .map(|a| a.parse())
            .transpose()?
            .unwrap_or(default))
    };
    let trials = arg(200)?;
    let elections = arg(10_000)?;
    let failovers = arg(100)?;
    let window = Duration::from_secs(arg(60)? as u64);
    let r: u32 = rand::Rng::gen(&mut rand::thread_rng());
    let prefix = format!("tenure-bench-{r:08x}:");
    let mut rows: Vec<(String, String)> = Vec::new();
    eprintln!(
        "Redis at {url} ({})",
        if private.is_some() {
            "private"
        } else {
            "shared: load figures include other clients"
        }
    );

    let t5 = (
        Duration::from_secs(5),
        Duration::from_secs(3),
        Duration::from_secs(1),
    );
    // Between trials, let the new follower read and start its watch.
    let settle = || Duration::from_millis(30);
    let h = bench::handoff(|| connect(&url, &prefix), "handoff", t5, trials, settle).await?;
    rows.push((
        format!("graceful handoff, L = 5 s ({} trials)", h.len()),
        summary(&h),
    ));
    eprintln!("handoff done: {}", summary(&h));

    for (l, n) in [(1u64, failovers), (2, failovers / 2), (4, failovers / 4)] {
        let l = Duration::from_secs(l);
        let name = format!("failover-{}", l.as_millis());
        let t = (l, l * 6 / 10, l / 10);
        let f = bench::failover(|| connect(&url, &prefix), &name, t, n.max(1), l / 2).await?;
        let (crash, past) = split_failovers(&f);
        let pf = |p: f64| bench::pct_f64(&past, p);
        let lf = l.as_secs_f64();
        let row = format!(
            "crash → leader {} · as L + x: p50 {} · p99 {} · max {} · lease expiry → leader: \
             p50 {} · p99 {} · max {}",
            summary(&crash),
            ms_signed(pct(&crash, 0.5).as_secs_f64() - lf),
            ms_signed(pct(&crash, 0.99).as_secs_f64() - lf),
            ms_signed(pct(&crash, 1.0).as_secs_f64() - lf),
            ms_signed(pf(0.5)),
            ms_signed(pf(0.99)),
            ms_signed(pf(1.0)),
        );
        eprintln!("failover L = {l:?} done: {row}");
        rows.push((
            format!(
                "crash failover, L = {} s, R = {} ms ({} trials)",
                l.as_secs(),
                (l / 10).as_millis(),
                f.len()
            ),
            row,
        ));
    }

    // Steady state at the defaults: a leader alone, then a watching follower too; then three
    // electors of another election together.
    let defaults = (
        Duration::from_secs(15),
        Duration::from_secs(10),
        Duration::from_secs(2),
    );
    let idle = rate(&url, Duration::from_secs(10)).await?;
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
    let w = window.as_secs();
    rows.push((
        format!("Redis load, leader (L = 15 s, R = 2 s, {w} s)"),
        load(with_leader, idle),
    ));
    rows.push((
        format!("Redis load, watching follower (L = 15 s, R = 2 s, {w} s)"),
        load(with_both, with_leader),
    ));
    leader.shutdown.cancel();
    follower.shutdown.cancel();
    leader.task.await??;
    follower.task.await??;
    let mut trio = Vec::new();
    for id in ["a", "b", "c"] {
        trio.push(spawn(connect(&url, &prefix).await?, "trio", id, defaults)?);
    }
    timeout(Duration::from_secs(10), async {
        while !trio.iter().any(|c| c.handle.is_leader()) {
            sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    sleep(Duration::from_secs(1)).await;
    let with_trio = rate(&url, window).await?;
    rows.push((
        format!("Redis load, three electors together (L = 15 s, R = 2 s, {w} s)"),
        load(with_trio, idle),
    ));
    for c in &trio {
        c.shutdown.cancel();
    }
    for c in trio {
        c.task.await??;
    }
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
    let cmds = rate(&url, Duration::from_secs(20)).await?;
    let (rss1, t1) = proc_stats();
    let wall = w0.elapsed().as_secs_f64();
    let hz = 100.0; // USER_HZ on Linux
    let cpu = (t1.saturating_sub(t0)) as f64 / hz / wall * 100.0;
    let leading = many.iter().filter(|c| c.handle.is_leader()).count();
    rows.push((
        format!("scale: {elections} elections, one store, R = 2 s"),
        format!(
            "{leading} leading after {:.1} s · RSS {:.0} MiB (+{:.0} MiB) · CPU {:.1}% of one \
             core · {:.0} requests/s · {:.0} server commands/s",
            ramp.as_secs_f64(),
            rss1 as f64 / 1024.0,
            rss1.saturating_sub(rss0) as f64 / 1024.0,
            cpu,
            cmds.requests,
            cmds.commands,
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
    drop(private);
    Ok(())
}
