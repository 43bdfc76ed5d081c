//! Measures the ZooKeeper record store against a real server on loopback.
//!
//! ```sh
//! TENURE_ZK_SERVER_CMD=/usr/share/zookeeper/bin/zkServer.sh cargo run --release \
//!     --features zookeeper --example zk_bench -- [TRIALS] [ELECTIONS] [FAILOVERS] [WINDOW_S]
//! # defaults: 200 handoffs, 10000 elections, 100 failovers at L = 1 s, 30 s load windows
//! ```
//!
//! With `TENURE_ZK_SERVER_CMD` (Debian's `zkServer.sh`) the benchmark starts a private
//! standalone ZooKeeper with production timing (`tickTime=2000`: sessions of 4 s to 40 s) and
//! its data directory (transaction log fsynced, as by default) in a temporary directory, so
//! that nothing else counts in its statistics; otherwise it uses `TENURE_ZK_CONNECT` and the
//! load figures include whatever else that server does.
//!
//! - graceful handoff: the leader's shutdown is requested; time until the follower's work
//!   starts (release write, watch event, read, compare-and-swap, re-read). L = 5 s, D = 3 s,
//!   R = 1 s: the lease never expires during a trial.
//! - crash failover: right after one of the leader's renewals, at a uniformly random point of
//!   its retry period, the leader's task is aborted without releasing; time until the follower
//!   leads, from the crash, and from the moment the lease expired (the last renewal's send
//!   time + L). L = 1 s (FAILOVERS trials), 2 s (half as many) and 4 s (a quarter), D = 0.6 L,
//!   R = L / 10. The session timeout plays no part: records are persistent nodes.
//! - ZooKeeper load per role at steady state (L = 15 s, D = 10 s, R = 2 s, session timeout
//!   10 s), each over WINDOW_S, from the server's `srvr` counters: packets received (every
//!   request, pings included) and write transactions (the zxid's counter); a leader alone,
//!   then a watching follower added.
//! - scale: ELECTIONS elections in this process, one elector each, over one `ZkStore` (one
//!   session, one persistent watch per election), R = 2 s: how long until all lead, resident
//!   memory (VmRSS), CPU share (utime + stime over wall time) of this process, and the
//!   server's packets and writes per second at steady state.
//!
//! - recipe lock graceful handoff (TRIALS trials): two `tenure::zookeeper::Mutex` holders on
//!   two sessions, one holding, the other queued (its node created, watching the holder's);
//!   time from the holder's `release()` until the waiter's `lock()` returns (delete, watch
//!   event, one multi-read of the children and the waiter's own node).
//! - recipe lock throughput: 1, then 10 contenders (one session each) taking and releasing
//!   one exclusive `Mutex` in a loop for 10 s each: acquisitions per second, and each
//!   acquisition's wait (create, then the turn), mutual exclusion checked on every one.
//!
//! Every node lives under a fresh root; the benchmark deletes nothing else.

use std::io::{Read, Write};
use std::time::Duration;

use tenure::zookeeper::{ZkOptions, ZkStore};
use tokio::time::{sleep, timeout, Instant};

#[path = "support/bench.rs"]
mod bench;
use bench::{ms_signed, pct, proc_stats, spawn, split_failovers, summary, Error};

async fn connect(addr: &str, root: &str) -> Result<ZkStore, Error> {
    let zk = ZkOptions::new(addr)
        .root(root)
        .session_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(2))
        .connect()
        .await?;
    Ok(ZkStore::new(zk))
}

/// A private standalone ZooKeeper with production timing, in a temporary directory.
struct PrivateZk {
    child: std::process::Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl PrivateZk {
    async fn start(cmd: &str) -> Result<Self, Error> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = tempfile::tempdir()?;
        let cfg = dir.path().join("zoo.cfg");
        std::fs::write(
            &cfg,
            format!(
                "tickTime=2000\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={port}\n\
                 clientPortAddress=127.0.0.1\nmaxClientCnxns=0\nadmin.enableServer=false\n\
                 4lw.commands.whitelist=ruok,stat,srvr\n",
                dir.path().join("data").display()
            ),
        )?;
        let child = std::process::Command::new(cmd)
            .arg("start-foreground")
            .arg(&cfg)
            .env("JMXDISABLE", "1")
            .env("ZOO_LOG_DIR", dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let addr = format!("127.0.0.1:{port}");
        for _ in 0..300 {
            if four_letters(&addr, "ruok").is_ok_and(|a| a == "imok") {
                return Ok(PrivateZk {
                    child,
                    addr,
                    _dir: dir,
                });
            }
            sleep(Duration::from_millis(50)).await;
        }
        Err("the private ZooKeeper did not start".into())
    }
}

impl Drop for PrivateZk {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A four-letter command's answer.
fn four_letters(addr: &str, cmd: &str) -> Result<String, Error> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(cmd.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// The server's counters: packets received, and the zxid.
fn counters(addr: &str) -> Result<(u64, i64), Error> {
    let srvr = four_letters(addr, "srvr")?;
    let field = |name: &str| {
        srvr.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .ok_or_else(|| format!("no {name} in srvr: {srvr}"))
    };
    let received = field("Received:")?.parse()?;
    let zxid = i64::from_str_radix(field("Zxid:")?.trim_start_matches("0x"), 16)?;
    Ok((received, zxid))
}

/// Per second over a window: packets received, write transactions.
#[derive(Clone, Copy, Default)]
struct Rate {
    packets: f64,
    writes: f64,
}

async fn rate(addr: &str, window: Duration) -> Result<Rate, Error> {
    let (p0, z0) = counters(addr)?;
    let started = Instant::now();
    sleep(window).await;
    let (p1, z1) = counters(addr)?;
    let w = started.elapsed().as_secs_f64();
    Ok(Rate {
        packets: p1.saturating_sub(p0) as f64 / w,
        // Within one epoch the zxid counts transactions.
        writes: (z1 - z0).max(0) as f64 / w,
    })
}

fn load(with: Rate, without: Rate) -> String {
    format!(
        "{:.2} requests/s (pings included) · {:.2} writes/s",
        (with.packets - without.packets).max(0.0),
        (with.writes - without.writes).max(0.0),
    )
}

async fn recipe_session(addr: &str, root: &str) -> Result<tenure::zookeeper::ZooKeeper, Error> {
    Ok(ZkOptions::new(addr)
        .root(root)
        .session_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(2))
        .connect()
        .await?)
}

/// Graceful handoffs of the recipe lock between two sessions: the holder releases while the
/// other waits queued; time until the waiter holds.
async fn recipe_handoff(addr: &str, root: &str, trials: usize) -> Result<Vec<Duration>, Error> {
    use tenure::zookeeper::Mutex;
    let path = "recipe-handoff";
    let look = Mutex::new(&recipe_session(addr, root).await?, path)?;
    let mut holder = Mutex::new(&recipe_session(addr, root).await?, path)?;
    let mut waiter = Mutex::new(&recipe_session(addr, root).await?, path)?;
    let mut guard = holder.lock(Some(Duration::from_secs(10))).await?;
    let mut out = Vec::with_capacity(trials);
    for _ in 0..trials {
        let w = waiter.clone();
        let queued = tokio::spawn(async move { w.lock(Some(Duration::from_secs(10))).await });
        // Measure from a settled queue: the waiter's node exists and it watches the holder's.
        while look.participants().await?.len() < 2 {
            sleep(Duration::from_millis(1)).await;
        }
        sleep(Duration::from_millis(5)).await;
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

/// `contenders` sessions take and release one recipe lock in a loop for `window`: (acquisitions
/// per second, sorted waits per acquisition).
async fn recipe_throughput(
    addr: &str,
    root: &str,
    contenders: usize,
    window: Duration,
) -> Result<(f64, Vec<Duration>), Error> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tenure::zookeeper::Mutex;
    let path = format!("recipe-throughput-{contenders}");
    let inside = Arc::new(AtomicUsize::new(0));
    let mut mutexes = Vec::new();
    for _ in 0..contenders {
        mutexes.push(Mutex::new(&recipe_session(addr, root).await?, &path)?);
    }
    let started = Instant::now();
    let end = started + window;
    let mut tasks = Vec::new();
    for m in mutexes {
        let inside = inside.clone();
        tasks.push(tokio::spawn(async move {
            let mut waits = Vec::new();
            while Instant::now() < end {
                let t = Instant::now();
                let guard = m.lock(Some(Duration::from_secs(30))).await?;
                waits.push(t.elapsed());
                if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                    return Err::<_, Error>("two holders at once".into());
                }
                inside.fetch_sub(1, Ordering::SeqCst);
                guard.release().await?;
            }
            Ok(waits)
        }));
    }
    let mut waits = Vec::new();
    for t in tasks {
        waits.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    waits.sort();
    Ok((waits.len() as f64 / elapsed, waits))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let private = match std::env::var("TENURE_ZK_SERVER_CMD") {
        Ok(cmd) if !cmd.is_empty() => Some(PrivateZk::start(&cmd).await?),
        _ => None,
    };
    let addr = match &private {
        Some(p) => p.addr.clone(),
        None => std::env::var("TENURE_ZK_CONNECT").map_err(|_| {
            "set TENURE_ZK_SERVER_CMD (zkServer.sh) or TENURE_ZK_CONNECT \
             (scripts/test-services.sh starts a ZooKeeper)"
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
    let window = Duration::from_secs(arg(30)? as u64);
    let r: u32 = rand::Rng::gen(&mut rand::thread_rng());
    let root = format!("/tenure-bench-{r:08x}");
    let mut rows: Vec<(String, String)> = Vec::new();
    eprintln!(
        "ZooKeeper at {addr} ({})",
        if private.is_some() {
            "private, tickTime=2000"
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
    let h = bench::handoff(|| connect(&addr, &root), "handoff", t5, trials, settle).await?;
    rows.push((
        format!("graceful handoff, L = 5 s ({} trials)", h.len()),
        summary(&h),
    ));
    eprintln!("handoff done: {}", summary(&h));

    // The recipes: the exclusive lock's handoff and throughput.
    let rh = recipe_handoff(&addr, &root, trials).await?;
    rows.push((
        format!("recipe Mutex graceful handoff ({} trials)", rh.len()),
        summary(&rh),
    ));
    eprintln!("recipe handoff done: {}", summary(&rh));
    for n in [1, 10] {
        let (per_s, waits) = recipe_throughput(&addr, &root, n, Duration::from_secs(10)).await?;
        let row = format!(
            "{per_s:.0} acquisitions/s · wait per acquisition {}",
            summary(&waits)
        );
        eprintln!("recipe throughput, {n} contenders: {row}");
        rows.push((
            format!(
                "recipe Mutex acquire/release, {n} contender{} (10 s)",
                if n == 1 { "" } else { "s" }
            ),
            row,
        ));
    }

    for (l, n) in [(1u64, failovers), (2, failovers / 2), (4, failovers / 4)] {
        let l = Duration::from_secs(l);
        let name = format!("failover-{}", l.as_millis());
        let t = (l, l * 6 / 10, l / 10);
        let f = bench::failover(|| connect(&addr, &root), &name, t, n.max(1), l / 2).await?;
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

    // Steady state at the defaults: a leader alone, then a watching follower too.
    let defaults = (
        Duration::from_secs(15),
        Duration::from_secs(10),
        Duration::from_secs(2),
    );
    // Let the failover runs' sessions close.
    sleep(Duration::from_secs(2)).await;
    let idle = rate(&addr, Duration::from_secs(10)).await?;
    let leader = spawn(connect(&addr, &root).await?, "steady", "leader", defaults)?;
    timeout(Duration::from_secs(10), leader.handle.leading())
        .await?
        .ok_or("no leader")?;
    sleep(Duration::from_secs(1)).await;
    let with_leader = rate(&addr, window).await?;
    let follower = spawn(connect(&addr, &root).await?, "steady", "follower", defaults)?;
    sleep(Duration::from_secs(1)).await;
    let with_both = rate(&addr, window).await?;
    let w = window.as_secs();
    rows.push((
        format!("ZooKeeper load, leader (L = 15 s, R = 2 s, {w} s)"),
        load(with_leader, idle),
    ));
    rows.push((
        format!("ZooKeeper load, watching follower (L = 15 s, R = 2 s, {w} s)"),
        load(with_both, with_leader),
    ));
    leader.shutdown.cancel();
    follower.shutdown.cancel();
    leader.task.await??;
    follower.task.await??;
    eprintln!("steady state done");

    // Scale: many elections over one store (one session).
    sleep(Duration::from_secs(2)).await;
    let (rss0, _) = proc_stats();
    let store = connect(&addr, &root).await?;
    let mut many = Vec::with_capacity(elections);
    let ramp = Instant::now();
    for i in 0..elections {
        many.push(spawn(store.clone(), &format!("scale-{i}"), "me", defaults)?);
        if i % 500 == 499 {
            sleep(Duration::from_millis(20)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    while many.iter().filter(|c| c.handle.is_leader()).count() < elections
        && Instant::now() < deadline
    {
        sleep(Duration::from_millis(200)).await;
    }
    let ramp = ramp.elapsed();
    sleep(Duration::from_secs(4)).await;
    let (_, t0) = proc_stats();
    let w0 = Instant::now();
    let load_many = rate(&addr, Duration::from_secs(20)).await?;
    let (rss1, t1) = proc_stats();
    let wall = w0.elapsed().as_secs_f64();
    let hz = 100.0; // USER_HZ on Linux
    let cpu = (t1.saturating_sub(t0)) as f64 / hz / wall * 100.0;
    let leading = many.iter().filter(|c| c.handle.is_leader()).count();
    rows.push((
        format!("scale: {elections} elections, one store (one session), R = 2 s"),
        format!(
            "{leading} leading after {:.1} s · RSS {:.0} MiB (+{:.0} MiB) · CPU {:.1}% of one \
             core · {:.0} requests/s · {:.0} writes/s",
            ramp.as_secs_f64(),
            rss1 as f64 / 1024.0,
            rss1.saturating_sub(rss0) as f64 / 1024.0,
            cpu,
            load_many.packets,
            load_many.writes,
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
