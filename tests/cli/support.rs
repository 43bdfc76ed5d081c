//! Helpers of the `tenure` command's tests: the binary, processes, polling, HTTP, backends.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `tenure` binary under test.
pub fn tenure() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tenure"));
    c.env_remove("TENURE_STORE").env("TENURE_LOG", "info");
    c
}

/// Runs `tenure ARGS` to completion (bounded), returning its output.
pub fn tenure_output(args: &[&str]) -> Output {
    let mut child = tenure()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tenure");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tenure {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `tenure` process, killed (SIGKILL) when dropped; its stderr goes to a file.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub stderr: PathBuf,
}

impl Proc {
    /// Starts `tenure ARGS`, stderr into `dir/NAME.stderr`.
    pub fn start(dir: &Path, name: &str, args: &[&str]) -> Proc {
        let stderr = dir.join(format!("{name}.stderr"));
        let file = std::fs::File::create(&stderr).expect("stderr file");
        let child = tenure()
            .args(args)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start tenure");
        Proc {
            child,
            name: name.to_owned(),
            stderr,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: &str) {
        signal(self.pid(), sig);
    }

    /// Waits (at most `within`) for the process to exit; its exit code (128+S for signal S).
    pub fn wait(&mut self, within: Duration) -> i32 {
        use std::os::unix::process::ExitStatusExt;
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0));
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not exit within {within:?}; stderr:\n{}",
                    self.name,
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends signal `sig` (`TERM`, `KILL`, `STOP`, ...) to `pid`.
pub fn signal(pid: i32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{sig} {pid} failed");
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `within` (a generous bound);
/// panics with `what` otherwise.
pub fn wait_for<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// `GET path` on 127.0.0.1:`port`: the status code and body, or `None` if nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_owned()))
}

/// Whether a missing backend must fail the test (`TENURE_REQUIRE_BACKENDS=1`).
pub fn required() -> bool {
    std::env::var("TENURE_REQUIRE_BACKENDS").is_ok_and(|v| v == "1")
}

/// The environment variable `var`, or `None` after a loud skip notice (a failure when
/// backends are required).
pub fn backend(var: &str, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(
                !required(),
                "{var} is not set and TENURE_REQUIRE_BACKENDS=1: start scripts/test-services.sh"
            );
            eprintln!("SKIPPED {test}: {var} is not set (run scripts/test-services.sh)");
            None
        }
    }
}

/// A name unique to this test run.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos:08x}", std::process::id())
}

/// A private `redis-server` on a free port (stopped when dropped), for tests that pause it.
pub struct PrivateRedis {
    pub proc: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl PrivateRedis {
    pub fn start(binary: &str) -> PrivateRedis {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let proc = Command::new(binary)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        wait_for(Duration::from_secs(20), "the private redis-server", || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        PrivateRedis {
            proc,
            port,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let pid = self.proc.id() as i32;
        let _ = Command::new("kill")
            .args(["-CONT", &pid.to_string()])
            .status();
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}
