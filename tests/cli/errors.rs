//! Errors: one clear line on stderr, the documented exit code, never a panic or a debug dump.

use crate::support::*;

fn assert_one_line(args: &[&str], code: i32, needle: &str) {
    let out = tenure_output(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: not one line: {err}");
    let line = lines[0];
    assert!(line.starts_with("tenure: "), "{args:?}: {line}");
    assert!(line.contains(needle), "{args:?}: {line:?} lacks {needle:?}");
    for bad in ["panicked", "RUST_BACKTRACE", "Error {", "Some(", "source:"] {
        assert!(!line.contains(bad), "{args:?}: debug output: {line}");
    }
}

#[test]
fn bad_urls_unreachable_stores_and_missing_commands_are_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = format!("file://{}", dir.path().display());
    let status = |store: &'static str| ["status", "--store", store, "--name", "e"];
    assert_one_line(&status("not-a-url"), 2, "invalid store URL not-a-url");
    assert_one_line(
        &status("etcd://127.0.0.1:2379"),
        2,
        "unknown store URL scheme \"etcd\"",
    );
    assert_one_line(&status("file://relative/dir"), 2, "absolute directory");
    assert_one_line(
        &status("redis://127.0.0.1:6379/?colour=red"),
        2,
        "unknown parameter \"colour\"",
    );
    assert_one_line(
        &status("redis://user:hunter2@127.0.0.1:1/?colour=red"),
        2,
        "redis://user:***@127.0.0.1:1/",
    );
    assert_one_line(&status("gs:///prefix"), 2, "gs://BUCKET/PREFIX");
    assert_one_line(
        &status("gs://bucket/prefix?colour=red"),
        2,
        "unknown parameter \"colour\"",
    );
    if let Some(emulator) = backend("TENURE_GCS_EMULATOR", "gcs_missing_bucket") {
        // A bucket that does not exist is named, before any election starts.
        let url = format!("gs://tenure-no-such-bucket/p?endpoint=http://{emulator}");
        let out = tenure_output(&["status", "--store", &url, "--name", "e"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("tenure-no-such-bucket"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // Unreachable: nothing listens on port 1.
    assert_one_line(
        &status("redis://127.0.0.1:1/"),
        69,
        "store redis://127.0.0.1:1/",
    );
    assert_one_line(
        &status("consul://127.0.0.1:1?timeout=1s"),
        69,
        "store consul://127.0.0.1:1",
    );
    // A password never shows.
    let out = tenure_output(&status("redis://user:hunter2@127.0.0.1:1/"));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("hunter2"));
    // Bad timing is a configuration error.
    assert_one_line(
        &[
            "run",
            "--store",
            &file,
            "--name",
            "e",
            "--lease-duration",
            "1s",
            "--renew-deadline",
            "2s",
            "--",
            "true",
        ],
        2,
        "renew_deadline",
    );
    // Commands that cannot run, as a shell reports them.
    assert_one_line(
        &[
            "run",
            "--store",
            &file,
            "--name",
            "e",
            "--",
            "no-such-command-xyz",
        ],
        127,
        "command not found",
    );
    let not_exec = dir.path().join("not-executable");
    std::fs::write(&not_exec, "#!/bin/sh\n").expect("write");
    assert_one_line(
        &[
            "lock",
            "--store",
            &file,
            "l",
            "--",
            not_exec.to_str().expect("utf-8"),
        ],
        126,
        "permission denied",
    );
    // A port already taken by --http.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    assert_one_line(
        &[
            "run", "--store", &file, "--name", "e", "--http", &addr, "--", "true",
        ],
        2,
        "cannot listen on",
    );
}

#[test]
fn redis_permission_denied_is_one_line() {
    let Some(url) = backend("TENURE_REDIS_AUTH_URL", "redis_permission_denied") else {
        return;
    };
    // The right user with a wrong password.
    let bad = url.replace("tenure-secret", "wrong-password");
    let out = tenure_output(&["status", "--store", &bad, "--name", "e"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!err.contains("wrong-password"), "{err}");
}
