//! `run --http`: /metrics (checked by `promtool check metrics`, values asserted), /leader,
//! /readyz, /healthz turning unhealthy when the Redis server is paused; `observe --json`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// `promtool`: `TENURE_PROMTOOL`, `promtool` on the `PATH`, or the copy
/// `scripts/test-services.sh` extracts into the cache. `None` (after a loud notice) if none;
/// a failure under `TENURE_REQUIRE_BACKENDS=1`.
fn promtool() -> Option<String> {
    let mut candidates: Vec<String> = Vec::new();
    if let Ok(p) = std::env::var("TENURE_PROMTOOL") {
        candidates.push(p);
    }
    candidates.push("promtool".into());
    let cache = std::env::var("XDG_CACHE_HOME")
        .ok()
        .or_else(|| std::env::var("HOME").ok().map(|h| format!("{h}/.cache")));
    if let Some(c) = cache {
        candidates.push(format!("{c}/tenure-test/prometheus/root/usr/bin/promtool"));
    }
    for c in candidates {
        if Command::new(&c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return Some(c);
        }
    }
    assert!(
        !required(),
        "promtool not found (TENURE_PROMTOOL, PATH, or the cache of scripts/test-services.sh) and TENURE_REQUIRE_BACKENDS=1"
    );
    eprintln!("SKIPPED promtool check: promtool not found (run scripts/test-services.sh)");
    None
}

/// The value of the sample `series` (name and labels, exactly) in a text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn run_with_http(
    dir: &std::path::Path,
    store: &str,
    election: &str,
    port: u16,
    timing: [&str; 6],
) -> Proc {
    let tok = dir.join("token");
    let script = format!(
        r#"echo "$TENURE_FENCING_TOKEN" > {}; exec sleep 1000"#,
        tok.display()
    );
    let http = format!("127.0.0.1:{port}");
    let mut args = vec![
        "run",
        "--store",
        store,
        "--name",
        election,
        "--identity",
        "web-0",
        "--http",
        &http,
    ];
    args.extend(timing);
    args.extend(["--", "sh", "-c", &script]);
    Proc::start(dir, "http", &args)
}

#[test]
fn metrics_pass_promtool_and_report_the_term() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = format!("file://{}", dir.path().join("store").display());
    let port = free_port();
    let mut p = run_with_http(
        dir.path(),
        &store,
        "web",
        port,
        [
            "--lease-duration",
            "4s",
            "--renew-deadline",
            "3s",
            "--retry-period",
            "300ms",
        ],
    );
    let token: u64 = wait_for(Duration::from_secs(30), "the command's token", || {
        std::fs::read_to_string(dir.path().join("token"))
            .ok()?
            .trim()
            .parse()
            .ok()
    });
    // A few renewals.
    let metrics = wait_for(Duration::from_secs(30), "renewals in /metrics", || {
        let (code, body) = http_get(port, "/metrics")?;
        assert_eq!(code, 200);
        (sample(
            &body,
            r#"tenure_renew_duration_seconds_count{election="web"}"#,
        )? >= 2.0)
            .then_some(body)
    });
    assert_eq!(
        sample(&metrics, r#"leader_election_master_status{name="web"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, r#"tenure_terms_total{election="web"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, r#"tenure_fencing_token{election="web"}"#),
        Some(token as f64)
    );
    assert_eq!(
        sample(&metrics, r#"tenure_renew_failures_total{election="web"}"#),
        Some(0.0)
    );
    assert!(
        metrics.contains("# TYPE tenure_renew_duration_seconds histogram"),
        "{metrics}"
    );

    let (code, leader) = http_get(port, "/leader").expect("/leader");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&leader).expect("/leader JSON");
    assert_eq!(v["leading"], true, "{v}");
    assert_eq!(v["state"], "leading", "{v}");
    assert_eq!(v["leader"]["identity"], "web-0", "{v}");
    assert_eq!(v["leader"]["fencing_token"].as_u64(), Some(token), "{v}");
    assert_eq!(http_get(port, "/readyz").map(|r| r.0), Some(200));
    assert_eq!(http_get(port, "/healthz").map(|r| r.0), Some(200));

    if let Some(promtool) = promtool() {
        let mut check = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool");
        check
            .stdin
            .take()
            .expect("stdin")
            .write_all(metrics.as_bytes())
            .expect("write");
        let out = check.wait_with_output().expect("promtool output");
        assert!(
            out.status.success(),
            "promtool check metrics failed: {}{}\n{metrics}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Released on SIGTERM: the term's duration is recorded; the gauge is back to 0 before exit
    // (not scraped: the server stops with the process).
    p.signal("TERM");
    assert_eq!(p.wait(Duration::from_secs(20)), 0, "{}", p.stderr_text());
}

#[test]
fn healthz_turns_unhealthy_when_redis_is_paused() {
    let Some(server) = backend("TENURE_REDIS_SERVER", "healthz_when_redis_paused") else {
        return;
    };
    let redis = PrivateRedis::start(&server);
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    // R 1 s, D 8 s: unhealthy after R + (D − R)/2 = 4.5 s without a renewal, step-down at 8 s.
    let _p = run_with_http(
        dir.path(),
        &redis.url(),
        "paused",
        port,
        [
            "--lease-duration",
            "10s",
            "--renew-deadline",
            "8s",
            "--retry-period",
            "1s",
        ],
    );
    wait_for(Duration::from_secs(30), "leadership (/readyz 200)", || {
        (http_get(port, "/readyz")?.0 == 200).then_some(())
    });
    assert_eq!(http_get(port, "/healthz").map(|r| r.0), Some(200));

    signal(redis.proc.id() as i32, "STOP");
    let body = wait_for(Duration::from_secs(30), "/healthz 500", || {
        let (code, body) = http_get(port, "/healthz")?;
        (code == 500).then_some(body)
    });
    assert!(body.contains("no renewal has succeeded"), "{body}");
    signal(redis.proc.id() as i32, "CONT");
    // The failed renewals were counted.
    let metrics = wait_for(Duration::from_secs(30), "/metrics", || {
        http_get(port, "/metrics")
    });
    assert!(
        sample(
            &metrics.1,
            r#"tenure_renew_failures_total{election="paused"}"#
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{}",
        metrics.1
    );
}

#[test]
fn observe_streams_leader_changes_as_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = format!("file://{}", dir.path().join("store").display());
    let out_path = dir.path().join("observe.out");
    let out = std::fs::File::create(&out_path).expect("file");
    let mut observer = tenure()
        .args(["observe", "--store", &store, "--name", "watched", "--json"])
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .expect("observe");
    let lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&out_path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    };
    wait_for(Duration::from_secs(20), "the first observation", || {
        (!lines().is_empty()).then_some(())
    });
    let run = tenure_output(&[
        "run",
        "--store",
        &store,
        "--name",
        "watched",
        "--identity",
        "w-1",
        "--value",
        "v1",
        "--once",
        "--lease-duration",
        "3s",
        "--renew-deadline",
        "2s",
        "--retry-period",
        "300ms",
        "--",
        "sleep",
        "1",
    ]);
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    let seen = wait_for(
        Duration::from_secs(20),
        "the leader and the vacancy",
        || {
            let l = lines();
            let led = l.iter().position(|v| v["leader"]["identity"] == "w-1")?;
            l[led + 1..]
                .iter()
                .any(|v| v["leader"].is_null())
                .then_some(l)
        },
    );
    let led = seen
        .iter()
        .find(|v| v["leader"]["identity"] == "w-1")
        .expect("leader line");
    assert_eq!(led["election"], "watched");
    assert_eq!(led["leader"]["value"], "v1");
    assert!(led["leader"]["fencing_token"]
        .as_u64()
        .is_some_and(|t| t > 0));
    let _ = observer.kill();
    let _ = observer.wait();
}
