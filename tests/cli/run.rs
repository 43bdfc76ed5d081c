//! `tenure run`: one writer at a time, rising tokens, SIGTERM handoff, SIGKILL without
//! orphans, the command exiting by itself, `--once`, `status --json`.

use std::path::Path;
use std::time::Duration;

use crate::support::*;

/// The command each candidate runs: it starts a grandchild (`sleep`) in its group, logs
/// `start TOKEN IDENTITY PID GRANDCHILD`, and on SIGTERM logs `stop TOKEN IDENTITY` and exits.
const WORKER: &str = r#"sleep 1000 & gc=$!
echo "start $TENURE_FENCING_TOKEN $TENURE_IDENTITY $$ $gc" >> "$1"
trap 'echo "stop $TENURE_FENCING_TOKEN $TENURE_IDENTITY" >> "$1"; exit 0' TERM
while :; do wait; done"#;

#[derive(Debug, Clone, PartialEq)]
struct Line {
    kind: String,
    token: u64,
    identity: String,
    pids: Vec<i32>,
}

fn read_log(path: &Path) -> Vec<Line> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some(Line {
                kind: f.next()?.to_owned(),
                token: f.next()?.parse().ok()?,
                identity: f.next()?.to_owned(),
                pids: f.filter_map(|p| p.parse().ok()).collect(),
            })
        })
        .collect()
}

/// The log shows one writer at a time (every start but the first comes after the stop of the
/// term before) and strictly rising tokens.
fn assert_one_writer(log: &[Line]) {
    let mut running: Option<&Line> = None;
    let mut last_token = 0;
    for l in log {
        match l.kind.as_str() {
            "start" => {
                assert!(
                    running.is_none(),
                    "{l:?} started while {running:?} still ran: {log:#?}"
                );
                assert!(l.token > last_token, "token did not rise: {log:#?}");
                last_token = l.token;
                running = Some(l);
            }
            "stop" => {
                let r = running.take();
                assert_eq!(
                    r.map(|r| (r.token, &r.identity)),
                    Some((l.token, &l.identity)),
                    "stop of a term that was not running: {log:#?}"
                );
            }
            other => panic!("unexpected line kind {other}"),
        }
    }
}

fn starts(log: &[Line]) -> Vec<Line> {
    log.iter().filter(|l| l.kind == "start").cloned().collect()
}

/// Three candidates; SIGTERM to the leader hands over; SIGKILL to the next leader leaves no
/// orphan (its command and the command's grandchild die) and the third takes over after the
/// lease; the log shows one writer at a time with rising tokens.
fn handoff(store: &str, election: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    let log_s = log.to_str().expect("utf-8 path");
    let mut procs: Vec<Proc> = (0..3)
        .map(|i| {
            Proc::start(
                dir.path(),
                &format!("p{i}"),
                &[
                    "run",
                    "--store",
                    store,
                    "--name",
                    election,
                    "--identity",
                    &format!("p{i}"),
                    "--lease-duration",
                    "3s",
                    "--renew-deadline",
                    "2s",
                    "--retry-period",
                    "500ms",
                    "--",
                    "sh",
                    "-c",
                    WORKER,
                    "worker",
                    log_s,
                ],
            )
        })
        .collect();
    let index = |id: &str| -> usize { id[1..].parse().expect("identity pN") };

    // The first leader.
    let first = wait_for(Duration::from_secs(30), "a first leader", || {
        starts(&read_log(&log)).first().cloned()
    });
    // SIGTERM: forwarded, drained, released; exit 0; another takes over at once.
    let p = index(&first.identity);
    procs[p].signal("TERM");
    assert_eq!(
        procs[p].wait(Duration::from_secs(30)),
        0,
        "{}",
        procs[p].stderr_text()
    );
    let second = wait_for(Duration::from_secs(30), "a second leader", || {
        starts(&read_log(&log)).get(1).cloned()
    });
    assert_ne!(second.identity, first.identity);
    assert!(second.token > first.token);
    assert!(
        read_log(&log)
            .iter()
            .any(|l| l.kind == "stop" && l.token == first.token),
        "the first command was not stopped by SIGTERM"
    );

    // SIGKILL of the leader's `tenure run`: its command and the grandchild must not survive.
    let q = index(&second.identity);
    procs[q].signal("KILL");
    procs[q].wait(Duration::from_secs(10));
    for pid in &second.pids {
        wait_for(
            Duration::from_secs(15),
            &format!("process {pid} of the killed leader's command to die"),
            || (!alive(*pid)).then_some(()),
        );
    }
    let third = wait_for(Duration::from_secs(40), "a third leader", || {
        starts(&read_log(&log)).get(2).cloned()
    });
    assert!(third.token > second.token);
    assert!(third.identity != first.identity && third.identity != second.identity);

    let r = index(&third.identity);
    procs[r].signal("TERM");
    assert_eq!(
        procs[r].wait(Duration::from_secs(30)),
        0,
        "{}",
        procs[r].stderr_text()
    );
    let log = read_log(&log);
    assert_one_writer(&log);
    assert_eq!(starts(&log).len(), 3, "{log:#?}");
    // Every term ended with its command stopped (the SIGKILLed leader's by its guard).
    assert_eq!(
        log.iter().filter(|l| l.kind == "stop").count(),
        3,
        "{log:#?}"
    );
}

#[test]
fn file_store_handoff_one_writer_rising_tokens_no_orphans() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = format!("file://{}", dir.path().display());
    handoff(&store, "handoff");
}

#[test]
fn redis_handoff_one_writer_rising_tokens_no_orphans() {
    let Some(url) = backend("TENURE_REDIS_URL", "redis_handoff") else {
        return;
    };
    handoff(&url, &unique("cli-handoff"));
}

/// Without `--once`, a command that exits by itself is followed by a new campaign and a new
/// term with a higher token; `--once` exits with the command's status; `status --json` is
/// vacant afterwards.
#[test]
fn command_exiting_recampaigns_and_once_returns_its_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = format!("file://{}", dir.path().join("store").display());
    let log = dir.path().join("tokens");
    let script = format!(r#"echo "$TENURE_FENCING_TOKEN" >> {}"#, log.display());
    let timing = [
        "--lease-duration",
        "3s",
        "--renew-deadline",
        "2s",
        "--retry-period",
        "200ms",
    ];
    let mut args = vec!["run", "--store", &store, "--name", "again"];
    args.extend(timing);
    args.extend(["--", "sh", "-c", &script]);
    let mut p = Proc::start(dir.path(), "again", &args);
    let tokens: Vec<u64> = wait_for(Duration::from_secs(30), "three terms", || {
        let t: Vec<u64> = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        (t.len() >= 3).then_some(t)
    });
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
    p.signal("TERM");
    assert_eq!(p.wait(Duration::from_secs(20)), 0, "{}", p.stderr_text());

    let mut args = vec!["run", "--store", &store, "--name", "again", "--once"];
    args.extend(timing);
    args.extend(["--", "sh", "-c", "exit 7"]);
    let out = tenure_output(&args);
    assert_eq!(out.status.code(), Some(7), "{out:?}");

    let out = tenure_output(&["status", "--store", &store, "--name", "again", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(v["vacant"], true, "{v}");
    assert_eq!(v["exists"], true, "{v}");
    assert!(
        v["fencing_token"].as_u64().unwrap_or(0) > *tokens.last().unwrap_or(&0),
        "{v}"
    );
}

/// `status --json` while a candidate leads: holder, value, token (the one its command got),
/// lease duration, not vacant, not expired.
fn status_while_leading(store: &str, election: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let tok = dir.path().join("token");
    let script = format!(
        r#"echo "$TENURE_FENCING_TOKEN" > {}; exec sleep 1000"#,
        tok.display()
    );
    let mut p = Proc::start(
        dir.path(),
        "leader",
        &[
            "run",
            "--store",
            store,
            "--name",
            election,
            "--identity",
            "the-leader",
            "--value",
            "10.0.0.7:8080",
            "--lease-duration",
            "4s",
            "--renew-deadline",
            "3s",
            "--retry-period",
            "500ms",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    let token: u64 = wait_for(Duration::from_secs(30), "the command's token", || {
        std::fs::read_to_string(&tok).ok()?.trim().parse().ok()
    });
    let out = tenure_output(&["status", "--store", store, "--name", election, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(v["holder"], "the-leader", "{v}");
    assert_eq!(v["value"], "10.0.0.7:8080", "{v}");
    assert_eq!(v["fencing_token"].as_u64(), Some(token), "{v}");
    assert_eq!(v["vacant"], false, "{v}");
    assert_eq!(v["expired"], false, "{v}");
    assert_eq!(v["lease_duration_seconds"].as_f64(), Some(4.0), "{v}");
    assert!(v["age_seconds"].as_f64().is_some_and(|a| a < 4.0), "{v}");
    // The text form names the holder too.
    let out = tenure_output(&["status", "--store", store, "--name", election]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("holder:         the-leader"), "{text}");
    p.signal("TERM");
    assert_eq!(p.wait(Duration::from_secs(20)), 0, "{}", p.stderr_text());
}

#[test]
fn status_json_on_file_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    status_while_leading(&format!("file://{}", dir.path().display()), "status");
}

#[test]
fn status_json_on_redis() {
    let Some(url) = backend("TENURE_REDIS_URL", "status_json_on_redis") else {
        return;
    };
    status_while_leading(&url, &unique("cli-status"));
}

/// `run --once` on Kubernetes, ZooKeeper and Consul: the URL schemes connect, the command
/// gets a token, the lease is released.
#[test]
fn once_on_kubernetes_zookeeper_consul_and_gcs() {
    let mut stores = Vec::new();
    if let Some(kubeconfig) = backend("TENURE_KUBECONFIG", "once_on_kubernetes") {
        stores.push(("kubernetes://default".to_owned(), Some(kubeconfig)));
    }
    if let Some(zk) = backend("TENURE_ZK_CONNECT", "once_on_zookeeper") {
        stores.push((format!("zk://{zk}"), None));
    }
    if let Some(addr) = backend("TENURE_CONSUL_ADDR", "once_on_consul") {
        let host = addr.trim_start_matches("http://");
        stores.push((format!("consul://{host}?prefix=tenure-cli/"), None));
    }
    if let Some(emulator) = backend("TENURE_GCS_EMULATOR", "once_on_gcs") {
        let bucket = unique("tenure-cli");
        create_gcs_bucket(&emulator, &bucket);
        stores.push((
            format!("gs://{bucket}/cli/?endpoint=http://{emulator}"),
            None,
        ));
    }
    for (store, kubeconfig) in stores {
        let election = unique("cli-once");
        let mut cmd = tenure();
        if let Some(k) = &kubeconfig {
            cmd.env("KUBECONFIG", k);
        }
        let out = cmd
            .args([
                "run",
                "--store",
                &store,
                "--name",
                &election,
                "--once",
                "--",
                "sh",
                "-c",
                r#"test -n "$TENURE_FENCING_TOKEN" && echo "token=$TENURE_FENCING_TOKEN""#,
            ])
            .output()
            .expect("tenure run");
        assert_eq!(out.status.code(), Some(0), "{store}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with("token="),
            "{store}: {out:?}"
        );
        let mut cmd = tenure();
        if let Some(k) = &kubeconfig {
            cmd.env("KUBECONFIG", k);
        }
        let out = cmd
            .args(["status", "--store", &store, "--name", &election, "--json"])
            .output()
            .expect("tenure status");
        assert_eq!(out.status.code(), Some(0), "{store}: {out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["vacant"], true, "{store}: {v}");
    }
}

/// Creates `bucket` on the Cloud Storage emulator at `host:port`.
fn create_gcs_bucket(emulator: &str, bucket: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let status = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("http://{emulator}/storage/v1/b?project=tenure"))
            .header("content-type", "application/json")
            .body(serde_json::json!({ "name": bucket }).to_string())
            .send()
            .await
            .map(|r| r.status())
    });
    let status = status.expect("the emulator answers");
    assert!(status.is_success(), "creating bucket {bucket}: {status}");
}

/// A lease lost while the command runs (here: its record deleted behind the leader's back)
/// stops the command, and `run --once` exits 75 saying so.
#[test]
fn a_lease_lost_while_the_command_runs_stops_it_and_exits_75() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = format!("file://{}", dir.path().display());
    let started = dir.path().join("started");
    let script = format!("echo $$ > {}; exec sleep 60", started.display());
    let mut p = Proc::start(
        dir.path(),
        "once",
        &[
            "run",
            "--store",
            &store,
            "--name",
            "lost",
            "--lease-duration",
            "2s",
            "--renew-deadline",
            "1s",
            "--retry-period",
            "200ms",
            "--once",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    let pid: i32 = wait_for(Duration::from_secs(10), "the command starts", || {
        std::fs::read_to_string(&started).ok()?.trim().parse().ok()
    });
    let record = tenure::file::FileStore::open(dir.path())
        .expect("the store's directory")
        .path_of("lost")
        .expect("a name the file store holds");
    std::fs::remove_file(&record).expect("the lease record exists while leading");
    let code = p.wait(Duration::from_secs(15));
    let err = p.stderr_text();
    assert_eq!(code, 75, "{err}");
    assert!(err.contains("lost the lease"), "{err}");
    assert!(!alive(pid), "the command was stopped");
}
