//! Measures tenure's two ways to elect on Consul against a real agent: the record store
//! (`ConsulStore` under a `LeaderElector`) and the session lock (`ConsulLock`, `api.Lock`'s
//! protocol), next to `consul lock` itself.
//!
//! ```sh
//! TENURE_CONSUL_ADDR=http://127.0.0.1:8500 TENURE_CONSUL_BIN=consul cargo run --release \
//!     --features consul --example consul_bench -- [TRIALS] [FAILOVERS] [CRASHES] [WINDOW_S] \
//!     [ELECTIONS]
//! # defaults: 200 handoffs, 30 record failovers at L = 1 s, 3 session-lock crashes per
//! # setting, 30 s load windows, 10000 elections; TRIALS = 0: skip the record elector's
//! # handoffs, failovers and load; CRASHES = 0 and ELECTIONS = 0
//! # skip those
//! ```
//!
//! - record elector, graceful handoff: the leader's shutdown is requested; time until the
//!   follower's work starts. L = 5 s, D = 3 s, R = 1 s.
//! - record elector, crash failover: the leader's task is aborted at a random point of its
//!   retry period, right after a renewal; time until the follower leads, and how far from the
//!   lease's expiry (last renewal sent + L). L = 1 s, D = 0.6 s, R = 0.1 s.
//! - record elector load per role at steady state (L = 15 s, D = 10 s, R = 2 s), counted by
//!   each process's own `Consul::requests_sent` (blocking queries included) over WINDOW_S.
//! - scale: ELECTIONS elections in this process, one elector each, over one `ConsulStore` (one
//!   handle: at most 64 blocking queries at once, the rest take turns), L = 15 s, R = 2 s: how
//!   long until all lead, resident memory, CPU share of this process, requests per second.
//! - session lock, graceful handoff: a holder releases while another `ConsulLock` waits in
//!   `lock()`; time until the waiter holds.
//! - session lock, crash failover: the holder is another process, killed with SIGKILL while a
//!   tenure `ConsulLock` waits; time from the kill until the waiter holds. The holder is this
//!   program re-run as `hold` (a tenure `ConsulLock` with the given session TTL and
//!   lock-delay), or `consul lock` with its own defaults (TTL 15 s, lock-delay 15 s) when
//!   `TENURE_CONSUL_BIN` is set. Consul invalidates a session between TTL and 2 × TTL after its
//!   last renewal, then refuses the key for the lock-delay.
//!
//! Every key lives under a fresh prefix; the benchmark deletes nothing else.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use tenure::consul::{Consul, ConsulLock, ConsulOptions, ConsulStore};
use tokio::time::{sleep, timeout, Instant};

#[path = "support/bench.rs"]
mod bench;
use bench::{arg, pct_f64, proc_stats, spawn, split_failovers, summary, term_of, Error};

async fn connect(addr: &str, prefix: &str) -> Result<Consul, Error> {
    Ok(ConsulOptions::new(addr)
        .prefix(prefix)
        .timeout(Duration::from_secs(2))
        .connect()
        .await?)
}

/// The store of one candidate: its own handle.
async fn store(addr: &str, prefix: &str) -> Result<ConsulStore, Error> {
    Ok(ConsulStore::new(connect(addr, prefix).await?))
}

/// Requests per second each role sends at steady state: (leader alone, follower).
async fn load(addr: &str, prefix: &str, window: Duration) -> Result<(f64, f64), Error> {
    let t = (
        Duration::from_secs(15),
        Duration::from_secs(10),
        Duration::from_secs(2),
    );
    let name = "load";
    let (ca, cb) = (connect(addr, prefix).await?, connect(addr, prefix).await?);
    let a = spawn(ConsulStore::new(ca.clone()), name, "leader", t)?;
    timeout(Duration::from_secs(10), a.handle.leading())
        .await?
        .ok_or("no leader")?;
    let b = spawn(ConsulStore::new(cb.clone()), name, "follower", t)?;
    // Past the start-up reads.
    sleep(Duration::from_secs(3)).await;
    let (a0, b0) = (ca.requests_sent(), cb.requests_sent());
    let started = Instant::now();
    sleep(window).await;
    let w = started.elapsed().as_secs_f64();
    let (a1, b1) = (ca.requests_sent(), cb.requests_sent());
    if term_of(&a.handle).is_none() {
        return Err("the leader lost its term during the window".into());
    }
    for c in [a, b] {
        c.shutdown.cancel();
        c.task.await??;
    }
    Ok(((a1 - a0) as f64 / w, (b1 - b0) as f64 / w))
}

/// Graceful handoffs of the session lock: the holder releases while the other waits.
async fn lock_handoff(addr: &str, prefix: &str, trials: usize) -> Result<Vec<Duration>, Error> {
    let consul = connect(addr, prefix).await?;
    let path = format!("{}lock-handoff", prefix);
    let mut holder = ConsulLock::new(&consul, &path)?;
    let mut waiter = ConsulLock::new(&consul, &path)?;
    let mut guard = holder.lock(Some(Duration::from_secs(10))).await?;
    let mut out = Vec::with_capacity(trials);
    for _ in 0..trials {
        let w = waiter.clone();
        let queued = tokio::spawn(async move { w.lock(Some(Duration::from_secs(10))).await });
        // Let the waiter create its session and start its blocking query on the key.
        sleep(Duration::from_millis(100)).await;
        let start = Instant::now();
        guard.release().await?;
        guard = queued.await??;
        out.push(start.elapsed());
        std::mem::swap(&mut holder, &mut waiter);
    }
    guard.release().await?;
    out.sort();
    Ok(out)
}

/// `n` elections in this process over one `ConsulStore` (one handle), L = 15 s, D = 10 s,
/// R = 2 s: a line with the time until all lead, memory, CPU and requests per second.
async fn scale(addr: &str, prefix: &str, n: usize) -> Result<String, Error> {
    let t = (
        Duration::from_secs(15),
        Duration::from_secs(10),
        Duration::from_secs(2),
    );
    let (rss0, _) = proc_stats();
    let store = ConsulStore::new(connect(addr, prefix).await?);
    let mut many = Vec::with_capacity(n);
    let ramp = Instant::now();
    for i in 0..n {
        many.push(spawn(store.clone(), &format!("scale-{i}"), "me", t)?);
        if i % 500 == 499 {
            sleep(Duration::from_millis(20)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while many.iter().filter(|c| c.handle.is_leader()).count() < n && Instant::now() < deadline {
        sleep(Duration::from_millis(200)).await;
    }
    let ramp = ramp.elapsed();
    sleep(Duration::from_secs(4)).await;
    let (_, t0) = proc_stats();
    let sent0 = store.consul().requests_sent();
    let w0 = Instant::now();
    sleep(Duration::from_secs(20)).await;
    let (rss1, t1) = proc_stats();
    let sent1 = store.consul().requests_sent();
    let wall = w0.elapsed().as_secs_f64();
    let cpu = t1.saturating_sub(t0) as f64 / 100.0 / wall * 100.0; // USER_HZ = 100
    let leading = many.iter().filter(|c| c.handle.is_leader()).count();
    for c in &many {
        c.shutdown.cancel();
    }
    for c in many {
        let _ = c.task.await;
    }
    Ok(format!(
        "{leading} of {n} leading after {:.1} s · RSS {:.0} MiB (+{:.0} MiB) · CPU {:.1}% of \
         one core · {:.0} requests/s",
        ramp.as_secs_f64(),
        rss1 as f64 / 1024.0,
        rss1.saturating_sub(rss0) as f64 / 1024.0,
        cpu,
        (sent1 - sent0) as f64 / wall,
    ))
}

/// The holder of a crash trial, a child process in its own process group.
struct Holder(std::process::Child);

impl Holder {
    /// Starts `cmd` and waits until it prints `held`.
    fn start(mut cmd: Command) -> Result<Holder, Error> {
        use std::os::unix::process::CommandExt;
        let mut child = cmd
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(out).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.trim() == "held" => break,
                Some(Ok(_)) => continue,
                other => {
                    let _ = child.kill();
                    return Err(format!("the holder ended before holding: {other:?}").into());
                }
            }
        }
        Ok(Holder(child))
    }

    /// SIGKILL to its process group: no release, no session destroy.
    fn crash(&mut self) {
        if self.0.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.crash();
    }
}

/// Crash failovers of the session lock: the holder made by `holder`, killed while a tenure
/// waiter waits; time from the kill until the waiter holds.
async fn lock_crash(
    addr: &str,
    path: &str,
    trials: usize,
    holder: impl Fn() -> Command,
) -> Result<Vec<Duration>, Error> {
    let consul = connect(addr, "tenure/").await?;
    let waiter = ConsulLock::builder(&consul, path)?.build()?;
    let mut out = Vec::with_capacity(trials);
    for _ in 0..trials {
        let mut h = Holder::start(holder())?;
        let w = waiter.clone();
        let queued = tokio::spawn(async move { w.lock(Some(Duration::from_secs(120))).await });
        sleep(Duration::from_millis(500)).await;
        let start = Instant::now();
        h.crash();
        let guard = queued.await??;
        out.push(start.elapsed());
        guard.release().await?;
    }
    out.sort();
    Ok(out)
}

/// `consul_bench hold ADDR PATH TTL_S DELAY_S`: holds the session lock, prints `held`, waits.
async fn hold(args: &[String]) -> Result<(), Error> {
    let [addr, path, ttl, delay] = args else {
        return Err("usage: consul_bench hold ADDR PATH TTL_S DELAY_S".into());
    };
    let consul = connect(addr, "tenure/").await?;
    let lock = ConsulLock::builder(&consul, path)?
        .session_ttl(Duration::from_secs(ttl.parse()?))
        .lock_delay(Duration::from_secs(delay.parse()?))
        .build()?;
    let _guard = lock.lock(Some(Duration::from_secs(120))).await?;
    println!("held");
    std::future::pending::<()>().await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("hold") {
        return hold(&args[1..]).await;
    }
    let trials = arg(&args, 0, 200)?;
    let failovers = arg(&args, 1, 30)?;
    let crashes = arg(&args, 2, 3)?;
    // `consul_bench 0 0 N`: the session-lock crash trials only.
    let records = trials > 0;
    let window = Duration::from_secs(arg(&args, 3, 30)? as u64);
    let elections = arg(&args, 4, 10_000)?;
    let addr = std::env::var("TENURE_CONSUL_ADDR").map_err(|_| "set TENURE_CONSUL_ADDR")?;
    let prefix = format!("tenure-bench-{}/", std::process::id());
    println!("consul at {addr}, keys under {prefix}");

    if records {
        let t = (
            Duration::from_secs(5),
            Duration::from_secs(3),
            Duration::from_secs(1),
        );
        // Let the new follower read and start its blocking query.
        let settle = || Duration::from_millis(50);
        let h = bench::handoff(|| store(&addr, &prefix), "handoff", t, trials, settle).await?;
        println!(
            "record elector, graceful handoff (L=5s D=3s R=1s, {trials} trials): {}",
            summary(&h)
        );

        let l = Duration::from_secs(1);
        let t = (l, l * 6 / 10, l / 10);
        let f = bench::failover(|| store(&addr, &prefix), "failover", t, failovers, l / 2).await?;
        let (from_crash, past) = split_failovers(&f);
        let p = |q: f64| pct_f64(&past, q) * 1000.0;
        println!(
            "record elector, crash failover (L=1s D=0.6s R=0.1s, {failovers} trials): from the \
             crash {}; from the lease's expiry p50 {:+.1} ms · p99 {:+.1} ms · max {:+.1} ms",
            summary(&from_crash),
            p(0.5),
            p(0.99),
            p(1.0)
        );

        let (leader, follower) = load(&addr, &prefix, window).await?;
        println!(
            "record elector, requests per second (L=15s D=10s R=2s, {}s window): leader {leader:.2} · \
             follower {follower:.2}",
            window.as_secs()
        );

        let lh = lock_handoff(&addr, &prefix, trials).await?;
        println!(
            "session lock, graceful handoff ({trials} trials): {}",
            summary(&lh)
        );
    }

    if elections > 0 {
        let line = scale(&addr, &prefix, elections).await?;
        println!("record elector, scale ({elections} elections, one handle, R=2s): {line}");
    }

    if crashes > 0 {
        let exe = std::env::current_exe()?;
        for (ttl, delay) in [(10u64, 10u64), (10, 0)] {
            let path = format!("{prefix}crash-{ttl}-{delay}");
            let c = lock_crash(&addr, &path, crashes, || {
                let mut cmd = Command::new(&exe);
                cmd.args(["hold", &addr, &path, &ttl.to_string(), &delay.to_string()]);
                cmd
            })
            .await?;
            println!(
                "session lock, holder killed (tenure holder, TTL {ttl}s, lock-delay {delay}s, \
                 {crashes} trials): {}",
                summary(&c)
            );
        }
        match std::env::var("TENURE_CONSUL_BIN") {
            Ok(bin) => {
                let path = format!("{prefix}crash-consul-lock");
                let http = addr
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_owned();
                let c = lock_crash(&addr, &path, crashes, || {
                    let mut cmd = Command::new(&bin);
                    cmd.args([
                        "lock",
                        &format!("-http-addr={http}"),
                        &path,
                        // `consul lock` runs its arguments joined, through a shell.
                        "echo held; exec sleep 1000",
                    ]);
                    cmd
                })
                .await?;
                println!(
                    "session lock, holder killed (`consul lock` holder, its defaults: TTL 15s, \
                     lock-delay 15s, {crashes} trials): {}",
                    summary(&c)
                );
            }
            Err(_) => println!("`consul lock` holder: skipped (set TENURE_CONSUL_BIN)"),
        }
    }
    Ok(())
}
