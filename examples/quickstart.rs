//! tenure's demo: three candidate processes elect a leader through a directory (the file store).
//!
//! ```sh
//! cargo run --example quickstart
//! ```
//!
//! It starts three candidates, shows who leads and with which fencing token, stops the leader
//! gracefully (SIGTERM: drain, release) and measures the handoff, kills the next leader with
//! SIGKILL and measures the failover, then shuts everything down.
//!
//! Each candidate is this same program run as `quickstart candidate DIR ID`.

use std::process::Stdio;
use std::time::Duration;

use tenure::file::FileStore;
use tenure::{LeaderElector, StopReason, Term};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

/// Short settings so the demo is quick: L = 2 s, D = 1.2 s, R = 0.4 s.
const L: Duration = Duration::from_millis(2000);
const D: Duration = Duration::from_millis(1200);
const R: Duration = Duration::from_millis(400);
const ELECTION: &str = "quickstart";

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("candidate") => match (args.get(2), args.get(3)) {
            (Some(dir), Some(id)) => candidate(dir, id).await,
            _ => Err("usage: quickstart candidate DIR ID".into()),
        },
        None => demo().await,
        Some(other) => Err(format!("unknown argument {other:?}").into()),
    }
}

/// One candidate: prints `LEADING <token>` / `STOPPED <reason>` lines for the demo to read.
async fn candidate(dir: &str, id: &str) -> Result<(), Error> {
    use tokio::signal::unix::{signal, SignalKind};
    let store = FileStore::open(dir)?;
    let elector = LeaderElector::builder(store, ELECTION)
        .identity(id)
        .lease_duration(L)
        .renew_deadline(D)
        .retry_period(R)
        .on_stopped_leading(|why| {
            let why = match why {
                StopReason::ShutDown => "shut down, lease released".to_string(),
                other => format!("{other:?}"),
            };
            println!("STOPPED {why}");
        })
        .build()?;
    let mut term_signal = signal(SignalKind::terminate())?;
    let shutdown = async move {
        term_signal.recv().await;
    };
    elector
        .run(shutdown, |term: Term| async move {
            println!("LEADING {}", term.fencing_token());
            // The leader's work: here it only waits for its term to end.
            term.cancelled().await;
        })
        .await?;
    Ok(())
}

struct Line {
    from: usize,
    text: String,
    at: Instant,
}

struct Candidates {
    children: Vec<Child>,
    ids: Vec<String>,
    lines: mpsc::UnboundedReceiver<Line>,
}

impl Candidates {
    /// Waits for the next `LEADING` line; prints the others. Returns (candidate, token, when).
    async fn next_leader(&mut self) -> Result<(usize, u64, Instant), Error> {
        loop {
            let line = timeout(L * 5, self.lines.recv())
                .await
                .map_err(|_| "no candidate took the lead in time")?
                .ok_or("all candidates exited")?;
            if let Some(token) = line.text.strip_prefix("LEADING ") {
                println!("  {} leads, fencing token {token}", self.ids[line.from]);
                return Ok((line.from, token.trim().parse()?, line.at));
            }
            if let Some(why) = line.text.strip_prefix("STOPPED ") {
                println!("  {} stopped leading: {why}", self.ids[line.from]);
            } else {
                println!("  {}: {}", self.ids[line.from], line.text);
            }
        }
    }

    fn sigterm(&self, i: usize) -> Result<(), Error> {
        let pid = self.children[i].id().ok_or("candidate already exited")?;
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?
            .success();
        if ok {
            Ok(())
        } else {
            Err("kill -TERM failed".into())
        }
    }
}

async fn demo() -> Result<(), Error> {
    let dir = std::env::temp_dir().join(format!("tenure-quickstart-{}", std::process::id()));
    let store = FileStore::create(&dir)?;
    println!(
        "tenure quickstart: 3 candidates elect through {}",
        store.dir().display()
    );
    println!("  lease duration L = {L:?}, renew deadline D = {D:?}, retry period R = {R:?}\n");

    let exe = std::env::current_exe()?;
    let (tx, rx) = mpsc::unbounded_channel();
    let mut cs = Candidates {
        children: Vec::new(),
        ids: Vec::new(),
        lines: rx,
    };
    for i in 0..3 {
        let id = format!("candidate-{}", i + 1);
        let mut child = Command::new(&exe)
            .args(["candidate", &dir.to_string_lossy(), &id])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(text)) = lines.next_line().await {
                let at = Instant::now();
                if tx.send(Line { from: i, text, at }).is_err() {
                    break;
                }
            }
        });
        println!("started {id} (pid {})", child.id().unwrap_or_default());
        cs.children.push(child);
        cs.ids.push(id);
    }

    println!("\n1. Election");
    let (first, token1, _) = cs.next_leader().await?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    println!(
        "\n2. Graceful handoff: SIGTERM to {} (drain, release)",
        cs.ids[first]
    );
    let sent = Instant::now();
    cs.sigterm(first)?;
    let (second, token2, at) = cs.next_leader().await?;
    let handoff = at - sent;
    println!("  handoff took {:.1} ms (no wait for expiry)", ms(handoff));
    tokio::time::sleep(Duration::from_secs(1)).await;

    println!(
        "\n3. Crash failover: SIGKILL to {} (no release)",
        cs.ids[second]
    );
    let killed = Instant::now();
    cs.children[second].start_kill()?;
    let (third, token3, at) = cs.next_leader().await?;
    let failover = at - killed;
    println!(
        "  failover took {:.0} ms (a follower waits one lease duration, {} ms, after the last renewal was written)",
        ms(failover),
        L.as_millis()
    );

    println!("\n4. Shutting down");
    cs.sigterm(third)?;
    for (i, child) in cs.children.iter_mut().enumerate() {
        if i != third && i != second {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &child.id().unwrap_or_default().to_string()])
                .status();
        }
        let _ = timeout(L * 3, child.wait()).await;
    }
    while let Ok(line) = cs.lines.try_recv() {
        if let Some(why) = line.text.strip_prefix("STOPPED ") {
            println!("  {} stopped leading: {why}", cs.ids[line.from]);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);

    println!("\nSummary");
    println!("  fencing tokens, one per term:   {token1} < {token2} < {token3}");
    println!("  graceful handoff (SIGTERM):     {:>7.1} ms", ms(handoff));
    println!(
        "  crash failover (SIGKILL):       {:>7.1} ms   (L = {} ms)",
        ms(failover),
        L.as_millis()
    );
    if !(token1 < token2 && token2 < token3) {
        return Err("fencing tokens did not increase".into());
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
