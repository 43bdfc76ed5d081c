//! `tenure lock`: the command's status, the timeout code, the token, signals.

use std::time::Duration;

use crate::support::*;

fn lock_scenario(store: &str, name: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("holding");
    let script = format!(
        r#"echo "$TENURE_FENCING_TOKEN $TENURE_ELECTION" > {}; exec sleep 1000"#,
        marker.display()
    );
    let mut holder = Proc::start(
        dir.path(),
        "holder",
        &["lock", "--store", store, name, "--", "sh", "-c", &script],
    );
    let first: u64 = wait_for(Duration::from_secs(30), "the lock holder's command", || {
        let text = std::fs::read_to_string(&marker).ok()?;
        let (token, election) = text.trim().split_once(' ')?;
        assert_eq!(election, name);
        token.parse().ok()
    });

    // Held: a second lock times out with 124 and one line naming the lock and its holder.
    let out = tenure_output(&[
        "lock",
        "--store",
        store,
        name,
        "--timeout",
        "1s",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(124), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("tenure: timed out after") && last.contains(name),
        "{err}"
    );

    // SIGTERM to the holder: forwarded; the command dies of it; tenure exits with 128+15.
    holder.signal("TERM");
    assert_eq!(
        holder.wait(Duration::from_secs(20)),
        143,
        "{}",
        holder.stderr_text()
    );

    // Released: the next lock runs at once, with a higher token, and returns the status.
    let out = tenure_output(&[
        "lock",
        "--store",
        store,
        name,
        "--timeout",
        "20s",
        "--",
        "sh",
        "-c",
        r#"echo "$TENURE_FENCING_TOKEN"; exit 3"#,
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let token: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("token");
    assert!(token > first, "{token} <= {first}");
}

#[test]
fn lock_on_file_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    lock_scenario(&format!("file://{}", dir.path().display()), "nightly");
}

#[test]
fn lock_on_redis() {
    let Some(url) = backend("TENURE_REDIS_URL", "lock_on_redis") else {
        return;
    };
    lock_scenario(&url, &unique("cli-lock"));
}
