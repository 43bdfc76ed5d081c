//! The README's "Without Rust" examples, run as written: the Kubernetes Deployment's
//! container arguments, the systemd unit's `ExecStart`, the cron line. Only the paths, the
//! store URL, the address and the supervised program are replaced by the test's own.

use std::time::Duration;

use crate::support::*;

const YAML: &str = include_str!("examples/scheduler.yaml");
const UNIT: &str = include_str!("examples/billing-scheduler.service");
const CRON: &str = include_str!("examples/nightly-report.cron");

/// The program every example supervises here: logs its token, then sleeps.
fn worker(log: &std::path::Path) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!(
            r#"echo "$TENURE_FENCING_TOKEN $TENURE_IDENTITY" >> {}; exec sleep 1000"#,
            log.display()
        ),
    ]
}

/// `args` up to and including `--`, then `program`.
fn replace_program(args: &[String], program: Vec<String>) -> Vec<String> {
    let dash = args
        .iter()
        .position(|a| a == "--")
        .expect("a -- in the example");
    let mut out = args[..=dash].to_vec();
    out.extend(program);
    out
}

fn log_lines(log: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn kubernetes_deployment_example() {
    let Some(kubeconfig) = backend("TENURE_KUBECONFIG", "kubernetes_deployment_example") else {
        return;
    };
    let line = YAML
        .lines()
        .find_map(|l| l.trim().strip_prefix("args: "))
        .expect("an args: line");
    let args: Vec<String> = serde_json::from_str(line).expect("args as a JSON array");
    assert!(YAML.contains(r#"command: ["/usr/local/bin/tenure"]"#));
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    let election = unique("cli-example");
    let port = free_port();
    let args: Vec<String> = replace_program(&args, worker(&log))
        .into_iter()
        .map(|a| match a.as_str() {
            "$(POD_NAME)" => "billing-scheduler-7d9f-abcde".to_owned(),
            "$(POD_IP)" => "10.1.2.3".to_owned(),
            "0.0.0.0:8080" => format!("127.0.0.1:{port}"),
            "billing-scheduler" => election.clone(),
            _ => a,
        })
        .collect();
    let stderr = dir.path().join("stderr");
    let mut child = tenure()
        .env("KUBECONFIG", &kubeconfig)
        .args(&args)
        .stderr(std::fs::File::create(&stderr).expect("stderr"))
        .spawn()
        .expect("tenure");
    let ready = wait_for(
        Duration::from_secs(60),
        "the pod to be Ready (leading)",
        || http_get(port, "/readyz").filter(|r| r.0 == 200),
    );
    assert_eq!(ready.1.trim(), "leading");
    assert_eq!(http_get(port, "/healthz").map(|r| r.0), Some(200));
    let lines = wait_for(Duration::from_secs(20), "the scheduler's start", || {
        let l = log_lines(&log);
        (!l.is_empty()).then_some(l)
    });
    assert!(
        lines[0].ends_with(" billing-scheduler-7d9f-abcde"),
        "{lines:?}"
    );
    let out = tenure()
        .env("KUBECONFIG", &kubeconfig)
        .args([
            "status",
            "--store",
            "kubernetes://",
            "--name",
            &election,
            "--json",
        ])
        .output()
        .expect("status");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["holder"], "billing-scheduler-7d9f-abcde", "{v}");
    assert_eq!(v["value"], "10.1.2.3", "{v}");
    // The kubelet stops the pod with SIGTERM.
    signal(child.id() as i32, "TERM");
    let status = wait_for(Duration::from_secs(30), "tenure to exit", || {
        child.try_wait().ok().flatten()
    });
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(&stderr).unwrap_or_default()
    );
}

#[test]
fn systemd_unit_example() {
    let Some(redis) = backend("TENURE_REDIS_URL", "systemd_unit_example") else {
        return;
    };
    let exec = UNIT
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart=");
    assert!(UNIT.contains("Environment=TENURE_STORE=redis://"));
    assert!(UNIT.contains("KillMode=mixed"));
    let words: Vec<String> = exec.split_whitespace().map(str::to_owned).collect();
    assert_eq!(words[0], "/usr/local/bin/tenure");
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    let election = unique("cli-systemd");
    let mut hosts: Vec<(std::process::Child, String)> = ["host-a", "host-b"]
        .into_iter()
        .map(|host| {
            let args: Vec<String> = replace_program(&words[1..], worker(&log))
                .into_iter()
                .map(|a| match a.as_str() {
                    "%H" => host.to_owned(),
                    "billing-scheduler" => election.clone(),
                    _ => a,
                })
                .collect();
            let child = tenure()
                .env("TENURE_STORE", &redis)
                // Short timing for the test (the unit keeps the defaults).
                .args(&args[..1])
                .args([
                    "--lease-duration",
                    "3s",
                    "--renew-deadline",
                    "2s",
                    "--retry-period",
                    "500ms",
                ])
                .args(&args[1..])
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("tenure");
            (child, host.to_owned())
        })
        .collect();
    let first = wait_for(Duration::from_secs(30), "a leader", || {
        log_lines(&log).first().cloned()
    });
    let out = tenure()
        .env("TENURE_STORE", &redis)
        .args(["status", "--name", &election, "--json"])
        .output()
        .expect("status");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let leader_host = v["value"].as_str().expect("the %H value").to_owned();
    let i = hosts
        .iter()
        .position(|(_, h)| *h == leader_host)
        .expect("the leader's host");
    // `systemctl stop` with KillMode=mixed: SIGTERM to tenure; the other host takes over.
    signal(hosts[i].0.id() as i32, "TERM");
    let status = wait_for(Duration::from_secs(30), "tenure to exit", || {
        hosts[i].0.try_wait().ok().flatten()
    });
    assert_eq!(status.code(), Some(0));
    let second = wait_for(
        Duration::from_secs(30),
        "the other host to take over",
        || log_lines(&log).get(1).cloned(),
    );
    let token = |l: &str| -> u64 {
        l.split_whitespace()
            .next()
            .and_then(|t| t.parse().ok())
            .expect("token")
    };
    assert!(token(&second) > token(&first));
    for (c, _) in &mut hosts {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn cron_example() {
    let Some(redis) = backend("TENURE_REDIS_URL", "cron_example") else {
        return;
    };
    let line = CRON
        .lines()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .expect("a cron line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    // Five time fields and the user, then the command.
    let command: Vec<String> = fields[6..].iter().map(|s| (*s).to_owned()).collect();
    let (env, command) = command.split_first().expect("an environment assignment");
    assert!(env.starts_with("TENURE_STORE="));
    assert_eq!(command[0], "/usr/local/bin/tenure");
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    let election = unique("cli-cron");
    let job = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        format!(
            r#"echo start >> {0}; sleep 1; echo stop >> {0}"#,
            log.display()
        ),
    ];
    let args: Vec<String> = replace_program(&command[1..], job)
        .into_iter()
        .map(|a| {
            if a == "nightly-report" {
                election.clone()
            } else {
                a
            }
        })
        .collect();
    // Two hosts' cron fire at the same minute: the report runs on one at a time.
    let runs: Vec<std::process::Child> = (0..2)
        .map(|_| {
            tenure()
                .env("TENURE_STORE", &redis)
                .args(&args)
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("tenure")
        })
        .collect();
    for mut r in runs {
        let status = wait_for(Duration::from_secs(60), "a cron run", || {
            r.try_wait().ok().flatten()
        });
        assert_eq!(status.code(), Some(0));
    }
    assert_eq!(log_lines(&log), ["start", "stop", "start", "stop"]);
}
