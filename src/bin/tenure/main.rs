//! `tenure`: leader election and locks for any command, over the stores tenure supports.
//!
//! `tenure run` keeps a command running only while this process leads an election (a sidecar,
//! a singleton service); `tenure lock` runs a command once under a distributed lock
//! (`flock(1)` across machines); `tenure status` and `tenure observe` show who leads. Stores
//! are chosen by URL (`tenure::connect`). See the README's "Without Rust" section.
#![forbid(unsafe_code)]

mod child;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand};
use rustix::process::{getpid, Pid, Signal};
use serde_json::json;
use tenure::connect::redact;
use tenure::lock::{LockError, Mutex};
use tenure::{DynStore, Error, LeaderElector, LeaseStore, StopReason, Term};
use tokio::process::Command;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The exit codes, as `--help` shows them.
const EXIT_CODES: &str = "\
Exit codes:
  0    success; `run` stopped by SIGTERM/SIGINT after stopping the command and releasing
  N    `run --once`, `lock`: the command's own exit status (128+S: killed by signal S)
  2    invalid command line, store URL, name or timing; cannot listen on --http
  65   the store holds a record that is not a tenure record (left untouched)
  69   the store is unreachable, timed out or failed
  75   the lease or lock was lost while the command ran; the command was stopped
  77   the store refused access (credentials, ACL, RBAC, file permissions)
  124  `lock --timeout` passed before the lock was acquired
  126  the command cannot be executed
  127  the command was not found";

const EX_USAGE: i32 = 2;
const EX_DATAERR: i32 = 65;
const EX_UNAVAILABLE: i32 = 69;
const EX_SOFTWARE: i32 = 70;
const EX_TEMPFAIL: i32 = 75;
const EX_NOPERM: i32 = 77;
const EX_LOCK_TIMEOUT: i32 = 124;

/// How long connecting to a store may take before `tenure` gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Parser)]
#[command(
    name = "tenure",
    version,
    about = "Leader election and distributed locks for any command, with fencing tokens",
    after_help = EXIT_CODES,
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a command only while this process leads ELECTION; campaign again when it ends.
    ///
    /// The command gets TENURE_FENCING_TOKEN, TENURE_ELECTION and TENURE_IDENTITY. When the
    /// lease is lost, its process group gets SIGTERM, then SIGKILL after --grace. SIGTERM or
    /// SIGINT to tenure: forwarded to the group, awaited, lease released, exit 0.
    #[command(after_help = EXIT_CODES)]
    Run(RunArgs),
    /// Run a command once under the lock NAME (flock(1)-style), then release it.
    #[command(after_help = EXIT_CODES)]
    Lock(LockArgs),
    /// Show the election's record: holder, value, fencing token, lease, age, vacancy.
    #[command(after_help = EXIT_CODES)]
    Status(StatusArgs),
    /// Print a line (or a JSON object) at every change of leader, until interrupted.
    #[command(after_help = EXIT_CODES)]
    Observe(StatusArgs),
    /// Internal: the process-group leader `run` and `lock` start the command through.
    #[command(name = "__guard", hide = true)]
    Guard(GuardArgs),
}

#[derive(Args)]
struct StoreArg {
    /// The store, as a URL: file:///DIR, redis://HOST:PORT, rediss://..., kubernetes://NAMESPACE,
    /// zk://HOST:PORT/CHROOT, consul://HOST:PORT (see tenure::connect).
    #[arg(long, env = "TENURE_STORE", value_name = "URL")]
    store: String,
}

#[derive(Args)]
struct Timing {
    /// This candidate's identity (default: hostname, pid and a random suffix).
    #[arg(long)]
    identity: Option<String>,
    /// L: how long followers wait for a silent leader before taking over.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "15s")]
    lease_duration: Duration,
    /// D: the leader steps down when no renewal succeeded for this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    renew_deadline: Duration,
    /// R: how often the leader renews and followers retry.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    retry_period: Duration,
    /// How long the command may take to exit after SIGTERM before SIGKILL (default: L − D,
    /// so that a command whose lease was lost is gone before anyone else may take over).
    #[arg(long, value_parser = humantime::parse_duration)]
    grace: Option<Duration>,
}

impl Timing {
    fn grace(&self) -> Duration {
        self.grace.unwrap_or_else(|| {
            self.lease_duration
                .saturating_sub(self.renew_deadline)
                .max(Duration::from_millis(100))
        })
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    store: StoreArg,
    /// The election's name.
    #[arg(long)]
    name: String,
    #[command(flatten)]
    timing: Timing,
    /// A value published with the lease while leading (for example this replica's address).
    #[arg(long)]
    value: Option<String>,
    /// Run the command once: exit with its status after it exits (no new campaign).
    #[arg(long)]
    once: bool,
    /// Serve /healthz, /readyz, /leader and /metrics on this address (for example 0.0.0.0:8080).
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// /healthz: how long past a due renewal a leader stays healthy (default: (D − R) / 2).
    #[arg(long, value_parser = humantime::parse_duration)]
    health_tolerance: Option<Duration>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

#[derive(Args)]
struct LockArgs {
    #[command(flatten)]
    store: StoreArg,
    /// The lock's name.
    name: String,
    /// Give up (exit 124) if the lock is not acquired within this time (default: wait).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    #[command(flatten)]
    timing: Timing,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

#[derive(Args)]
struct StatusArgs {
    #[command(flatten)]
    store: StoreArg,
    /// The election's (or lock's) name.
    #[arg(long)]
    name: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct GuardArgs {
    #[arg(long)]
    parent: i32,
    #[arg(long, value_parser = humantime::parse_duration)]
    grace: Duration,
    #[arg(last = true, required = true)]
    command: Vec<OsString>,
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tenure: cannot start the async runtime: {e}");
            std::process::exit(EX_SOFTWARE);
        }
    };
    // One thread (the main one) starts every child: PR_SET_PDEATHSIG fires when the thread
    // that forked dies, so it must be one that lives as long as the process.
    let code = rt.block_on(async move {
        match cli.command {
            Cmd::Guard(a) => child::guard(a.parent, a.grace, a.command).await,
            Cmd::Run(a) => {
                init_logging("warn,tenure=info");
                run(a).await
            }
            Cmd::Lock(a) => {
                init_logging("warn,tenure=info");
                lock(a).await
            }
            Cmd::Status(a) => {
                init_logging("warn");
                status(a).await
            }
            Cmd::Observe(a) => {
                init_logging("warn");
                observe(a).await
            }
        }
    });
    std::process::exit(code);
}

/// Logs to stderr; `TENURE_LOG` overrides the level (`debug`, `tenure=debug,info`, ...).
fn init_logging(default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("TENURE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Prints `tenure: MESSAGE` on one line and returns `code`.
fn fail(code: i32, message: impl std::fmt::Display) -> i32 {
    eprintln!("tenure: {}", message.to_string().replace('\n', " "));
    code
}

/// An error and its sources on one line.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let t = cause.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        source = cause.source();
    }
    s.replace('\n', " ")
}

/// The exit code for a store error.
fn code_of(e: &Error) -> i32 {
    match e {
        Error::Config { .. } | Error::InvalidName { .. } | Error::TooLarge { .. } => EX_USAGE,
        Error::PermissionDenied { .. } => EX_NOPERM,
        Error::Decode { .. } => EX_DATAERR,
        _ => EX_UNAVAILABLE,
    }
}

/// Prints a store error on one line; returns its exit code.
fn fail_store(url: &str, e: &Error) -> i32 {
    match e {
        Error::Config { .. } => fail(EX_USAGE, describe(e)),
        _ => fail(
            code_of(e),
            format!("store {}: {}", redact(url), describe(e)),
        ),
    }
}

async fn open(url: &str) -> Result<DynStore, i32> {
    match tokio::time::timeout(CONNECT_TIMEOUT, tenure::connect(url)).await {
        Ok(Ok(store)) => Ok(store),
        Ok(Err(e)) => Err(fail_store(url, &e)),
        Err(_) => Err(fail(
            EX_UNAVAILABLE,
            format!(
                "store {}: no answer within {CONNECT_TIMEOUT:?}",
                redact(url)
            ),
        )),
    }
}

/// SIGTERM / SIGINT to `tenure`: the first stops (forwarded to the command), a second one
/// makes the stop immediate (SIGKILL to the command's group).
struct Stop {
    requested: CancellationToken,
    now: CancellationToken,
    signal: AtomicI32,
}

impl Stop {
    fn listen() -> Result<Arc<Stop>, i32> {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return Err(fail(EX_SOFTWARE, "cannot install signal handlers"));
        };
        let stop = Arc::new(Stop {
            requested: CancellationToken::new(),
            now: CancellationToken::new(),
            signal: AtomicI32::new(Signal::TERM.as_raw()),
        });
        let s = stop.clone();
        tokio::spawn(async move {
            loop {
                let sig = tokio::select! {
                    _ = term.recv() => Signal::TERM,
                    _ = int.recv() => Signal::INT,
                };
                if s.requested.is_cancelled() {
                    warn!("second signal: killing the command");
                    s.now.cancel();
                } else {
                    info!(signal = sig.as_raw(), "stopping");
                    s.signal.store(sig.as_raw(), Ordering::Relaxed);
                    s.requested.cancel();
                }
            }
        });
        Ok(stop)
    }

    fn signal(&self) -> Signal {
        Signal::from_named_raw(self.signal.load(Ordering::Relaxed)).unwrap_or(Signal::TERM)
    }
}

/// How the command ended.
#[derive(Debug, Clone)]
struct Ended {
    /// Its exit status (128+S when killed by signal S).
    code: i32,
    /// Why tenure stopped it, if it did.
    stopped: Option<Why>,
}

#[derive(Debug, Clone)]
enum Why {
    /// The lease or lock was lost.
    Lost(String),
    /// tenure was told to stop.
    Signal,
}

struct Supervisor {
    command: Vec<OsString>,
    grace: Duration,
    stop: Arc<Stop>,
}

/// SIGKILLs the group when dropped while armed (the work was aborted mid-way).
struct KillOnDrop(Option<Pid>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            child::signal_group(pgid, Signal::KILL);
        }
    }
}

impl Supervisor {
    /// Runs the command for `term` until it exits or the term (or tenure) stops.
    async fn supervise(&self, term: &Term) -> Ended {
        let exe = match std::env::current_exe() {
            Ok(p) => p,
            Err(e) => {
                return Ended {
                    code: fail(
                        EX_SOFTWARE,
                        format!("cannot find the tenure executable: {e}"),
                    ),
                    stopped: None,
                }
            }
        };
        let mut cmd = Command::new(exe);
        cmd.arg("__guard")
            .arg("--parent")
            .arg(getpid().as_raw_nonzero().to_string())
            .arg("--grace")
            .arg(format!("{}ms", self.grace.as_millis()))
            .arg("--")
            .args(&self.command)
            .env("TENURE_FENCING_TOKEN", term.fencing_token().to_string())
            .env("TENURE_ELECTION", term.name())
            .env("TENURE_IDENTITY", term.identity())
            .process_group(0);
        let mut guard = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                return Ended {
                    code: fail(126, format!("cannot start the command: {e}")),
                    stopped: None,
                }
            }
        };
        let Some(pgid) = guard
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(Pid::from_raw)
        else {
            return Ended {
                code: EX_SOFTWARE,
                stopped: None,
            };
        };
        let mut armed = KillOnDrop(Some(pgid));
        info!(
            pid = pgid.as_raw_nonzero().get(),
            fencing_token = term.fencing_token(),
            "started the command"
        );
        let (status, stopped) = tokio::select! {
            s = guard.wait() => (s, None),
            _ = term.cancelled() => {
                let (sig, why) = match term.stop_reason() {
                    Some(StopReason::Lost(r)) => (Signal::TERM, Why::Lost(r.to_string())),
                    _ => (self.stop.signal(), Why::Signal),
                };
                (self.stop_group(&mut guard, pgid, sig).await, Some(why))
            }
            _ = self.stop.requested.cancelled() => {
                (self.stop_group(&mut guard, pgid, self.stop.signal()).await, Some(Why::Signal))
            }
        };
        // Nothing the command started in its group outlives it.
        child::signal_group(pgid, Signal::KILL);
        armed.0 = None;
        let code = match status {
            Ok(s) => child::status_code(s),
            Err(e) => fail(EX_SOFTWARE, format!("cannot wait for the command: {e}")),
        };
        info!(status = code, "the command exited");
        Ended { code, stopped }
    }

    /// Signals the group, waits up to the grace period, then SIGKILLs it; awaits the guard.
    async fn stop_group(
        &self,
        guard: &mut tokio::process::Child,
        pgid: Pid,
        sig: Signal,
    ) -> std::io::Result<std::process::ExitStatus> {
        info!(
            signal = sig.as_raw(),
            grace = ?self.grace,
            "stopping the command"
        );
        child::signal_group(pgid, sig);
        tokio::select! {
            s = guard.wait() => return s,
            _ = sleep(self.grace) => {
                warn!(grace = ?self.grace, "the command did not exit within the grace period; SIGKILL");
            }
            _ = self.stop.now.cancelled() => {}
        }
        child::signal_group(pgid, Signal::KILL);
        guard.wait().await
    }
}

fn check_timing(t: &Timing) -> Result<(), i32> {
    // (Invalid timing is reported by the elector's validation, as one line.)
    if t.lease_duration > t.renew_deadline
        && t.grace() > t.lease_duration.saturating_sub(t.renew_deadline)
    {
        warn!(
            grace = ?t.grace(),
            "--grace is longer than L − D: a command whose lease was lost may still run when another takes over"
        );
    }
    Ok(())
}

async fn run(a: RunArgs) -> i32 {
    let Some(program) = a.command.first() else {
        return fail(EX_USAGE, "no command given after --");
    };
    if let Err((code, msg)) = child::check_program(program) {
        return fail(code, msg);
    }
    if let Err(code) = check_timing(&a.timing) {
        return code;
    }
    let stop = match Stop::listen() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let store = match open(&a.store.store).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let t = &a.timing;
    let grace = t.grace();
    let mut b = LeaderElector::builder(store, a.name.clone())
        .lease_duration(t.lease_duration)
        .renew_deadline(t.renew_deadline)
        .retry_period(t.retry_period)
        .recampaign(!a.once)
        // The elector waits this long for the work (the command's stop) before aborting it.
        .drain_timeout(grace + Duration::from_secs(5));
    if let Some(id) = &t.identity {
        b = b.identity(id.clone());
    }
    if let Some(v) = &a.value {
        b = b.value(v.clone());
    }
    let mut registry = prometheus_client::registry::Registry::default();
    if a.http.is_some() {
        let metrics = tenure::metrics::Metrics::new(&mut registry);
        metrics.touch(&a.name);
        b = b.observer(Arc::new(metrics));
    }
    let elector = match b.build() {
        Ok(e) => e,
        Err(e) => return fail(code_of(&e), describe(&e)),
    };
    if let Some(addr) = a.http {
        let mut endpoints = tenure::http::Endpoints::new(&elector).metrics(Arc::new(registry));
        if let Some(tol) = a.health_tolerance {
            endpoints = endpoints.tolerance(tol);
        }
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => return fail(EX_USAGE, format!("cannot listen on {addr} (--http): {e}")),
        };
        let app = endpoints.router::<()>();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                warn!(error = %e, "the HTTP server stopped");
            }
        });
        info!(%addr, "serving /healthz, /readyz, /leader and /metrics");
    }
    let sup = Arc::new(Supervisor {
        command: a.command.clone(),
        grace,
        stop: stop.clone(),
    });
    let last: Arc<StdMutex<Option<Ended>>> = Arc::default();
    let once = a.once;
    let result = {
        let last = last.clone();
        elector
            .run(
                stop.requested.clone().cancelled_owned(),
                move |term: Term| {
                    let sup = sup.clone();
                    let last = last.clone();
                    async move {
                        let ended = sup.supervise(&term).await;
                        if ended.stopped.is_none() && !once {
                            info!(
                                status = ended.code,
                                "the command exited by itself; releasing and campaigning again"
                            );
                        }
                        *last.lock().unwrap_or_else(PoisonError::into_inner) = Some(ended);
                    }
                },
            )
            .await
    };
    if let Err(e) = result {
        return fail_store(&a.store.store, &e);
    }
    let ended = last.lock().unwrap_or_else(PoisonError::into_inner).clone();
    match ended {
        _ if !once => 0,
        Some(Ended {
            stopped: Some(Why::Lost(reason)),
            ..
        }) => fail(
            EX_TEMPFAIL,
            format!(
                "lost the lease of {:?} while the command ran ({reason}); it was stopped",
                a.name
            ),
        ),
        Some(Ended { code, .. }) => code,
        None if stop.requested.is_cancelled() => 128 + stop.signal().as_raw(),
        None => 0,
    }
}

async fn lock(a: LockArgs) -> i32 {
    let Some(program) = a.command.first() else {
        return fail(EX_USAGE, "no command given after --");
    };
    if let Err((code, msg)) = child::check_program(program) {
        return fail(code, msg);
    }
    if let Err(code) = check_timing(&a.timing) {
        return code;
    }
    let stop = match Stop::listen() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let store = match open(&a.store.store).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let t = &a.timing;
    let mut b = Mutex::builder(store, a.name.clone())
        .lease_duration(t.lease_duration)
        .renew_deadline(t.renew_deadline)
        .retry_period(t.retry_period);
    if let Some(id) = &t.identity {
        b = b.identity(id.clone());
    }
    let mutex = match b.build() {
        Ok(m) => m,
        Err(e) => return fail(code_of(&e), describe(&e)),
    };
    // No --timeout: wait as long as it takes (a duration too large to represent).
    let timeout = a.timeout.unwrap_or(Duration::MAX);
    let acquired = tokio::select! {
        r = mutex.lock(Some(timeout)) => r,
        _ = stop.requested.cancelled() => return 128 + stop.signal().as_raw(),
    };
    let guard = match acquired {
        Ok(g) => g,
        Err(LockError::Timeout { waited, .. }) => {
            let holder = match mutex.holder().await {
                Ok(Some(l)) => format!(" (held by {:?})", l.identity),
                _ => String::new(),
            };
            return fail(
                EX_LOCK_TIMEOUT,
                format!(
                    "timed out after {:.1}s waiting for the lock {:?}{holder}",
                    waited.as_secs_f64(),
                    a.name
                ),
            );
        }
        Err(LockError::Store(e)) => return fail_store(&a.store.store, &e),
        Err(e) => return fail(EX_UNAVAILABLE, describe(&e)),
    };
    let sup = Supervisor {
        command: a.command.clone(),
        grace: t.grace(),
        stop: stop.clone(),
    };
    let term = guard.term().clone();
    let ended = sup.supervise(&term).await;
    let unlocked = guard.unlock().await;
    match (ended.stopped, unlocked) {
        (Some(Why::Lost(reason)), _) => fail(
            EX_TEMPFAIL,
            format!(
                "lost the lock {:?} while the command ran ({reason}); it was stopped",
                a.name
            ),
        ),
        (_, Err(LockError::Lost { reason, .. })) if ended.code == 0 => fail(
            EX_TEMPFAIL,
            format!(
                "lost the lock {:?} as the command finished ({reason})",
                a.name
            ),
        ),
        _ => ended.code,
    }
}

fn rfc3339(t: Option<SystemTime>) -> Option<String> {
    t.map(|t| humantime::format_rfc3339_millis(t).to_string())
}

async fn status(a: StatusArgs) -> i32 {
    let store = match open(&a.store.store).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let got = match tokio::time::timeout(CONNECT_TIMEOUT, store.get(&a.name)).await {
        Ok(Ok(g)) => g,
        Ok(Err(e)) => return fail_store(&a.store.store, &e),
        Err(_) => {
            return fail(
                EX_UNAVAILABLE,
                format!(
                    "store {}: no answer within {CONNECT_TIMEOUT:?}",
                    redact(&a.store.store)
                ),
            )
        }
    };
    let now = SystemTime::now();
    let (exists, record, age, age_source) = match &got {
        None => (false, None, None, None),
        Some(s) => {
            let (age, source) = match s.age {
                Some(age) => (Some(age), Some("store")),
                None => (
                    s.record.renew_time.and_then(|r| now.duration_since(r).ok()),
                    Some("wall_clock"),
                ),
            };
            (true, Some(&s.record), age, source)
        }
    };
    let holder = record.and_then(|r| r.holder.clone());
    let expired = match (record, age) {
        (Some(r), Some(age)) if r.holder.is_some() => Some(age > r.lease_duration),
        _ => None,
    };
    if a.json {
        let v = json!({
            "election": a.name,
            "exists": exists,
            "vacant": holder.is_none(),
            "holder": holder,
            "value": record.and_then(|r| r.value.clone()),
            "fencing_token": record.map(|r| r.transitions),
            "lease_duration_seconds": record.map(|r| r.lease_duration.as_secs_f64()),
            "acquire_time": rfc3339(record.and_then(|r| r.acquire_time)),
            "renew_time": rfc3339(record.and_then(|r| r.renew_time)),
            "age_seconds": age.map(|a| a.as_secs_f64()),
            "age_source": age_source,
            "expired": expired,
        });
        println!("{v}");
        return 0;
    }
    println!("election:       {}", a.name);
    let Some(r) = record else {
        println!("holder:         (vacant: no record yet)");
        return 0;
    };
    match &r.holder {
        Some(h) => println!("holder:         {h}"),
        None => println!("holder:         (vacant)"),
    }
    if let Some(v) = &r.value {
        println!("value:          {v}");
    }
    println!("fencing token:  {}", r.transitions);
    println!(
        "lease duration: {}",
        humantime::format_duration(r.lease_duration)
    );
    if let Some(t) = rfc3339(r.acquire_time) {
        println!("acquired:       {t}");
    }
    if let Some(t) = rfc3339(r.renew_time) {
        println!("renewed:        {t}");
    }
    if let Some(age) = age {
        let how = if age_source == Some("store") {
            "by the store's clock"
        } else {
            "by wall clocks"
        };
        println!("age:            {:.1}s ({how})", age.as_secs_f64());
    }
    if let Some(e) = expired {
        println!("expired:        {}", if e { "yes" } else { "no" });
    }
    0
}

async fn observe(a: StatusArgs) -> i32 {
    let stop = match Stop::listen() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let store = match open(&a.store.store).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let json = a.json;
    let name = a.name.clone();
    let elector = LeaderElector::builder(store, a.name.clone())
        .on_new_leader(move |leader| {
            let time = humantime::format_rfc3339_millis(SystemTime::now());
            if json {
                let leader = leader.map(|l| {
                    json!({
                        "identity": l.identity,
                        "value": l.value,
                        "fencing_token": l.fencing_token,
                    })
                });
                println!(
                    "{}",
                    json!({"time": time.to_string(), "election": name, "leader": leader})
                );
            } else {
                match leader {
                    Some(l) => match &l.value {
                        Some(v) => println!(
                            "{time} {name}: leader {} (fencing token {}, value {v})",
                            l.identity, l.fencing_token
                        ),
                        None => println!(
                            "{time} {name}: leader {} (fencing token {})",
                            l.identity, l.fencing_token
                        ),
                    },
                    None => println!("{time} {name}: vacant"),
                }
            }
        })
        .build();
    let elector = match elector {
        Ok(e) => e,
        Err(e) => return fail(code_of(&e), describe(&e)),
    };
    match elector
        .observe(stop.requested.clone().cancelled_owned())
        .await
    {
        Ok(()) => 0,
        Err(e) => fail_store(&a.store.store, &e),
    }
}
