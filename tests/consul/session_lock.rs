//! The session lock and semaphore ([`ConsulLock`], [`ConsulSemaphore`]) against real agents:
//! mutual exclusion and the key's shape, interop with the real `consul lock` both ways (lock and
//! `-n` semaphore), `Destroy`'s refusals and foreign keys, `ErrLockHeld`/`ErrLockNotHeld`, a
//! session invalidated behind the holder's back (and behind a waiter's), lock-delay, the
//! semaphore's slots, contention, renewals past the TTL, shared sessions, `delete` behaviour,
//! cleanup after timeouts and cancellations, a crashed holder process (this binary, run again
//! as `crash_child_holder`, then SIGKILLed), a holder cut off from Consul (a black-holing
//! proxy), and ACL tokens.
//!
//! Included from `tests/consul.rs` (same binary, same agents): `TENURE_CONSUL_ADDR`,
//! `TENURE_CONSUL_ACL_ADDR` with `TENURE_CONSUL_MASTER_TOKEN`, and `TENURE_CONSUL_BIN` for
//! `consul lock`. Each test works under its own random prefix.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::future::Future;
use std::io::{Read as _, Write as _};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use base64::Engine as _;
use tenure::consul::{
    Consul, ConsulLock, ConsulOptions, ConsulSemaphore, DestroyError, KeyConflict, SessionEnd,
    DEFAULT_LOCK_DELAY, DEFAULT_SESSION_TTL, LOCK_FLAG_VALUE, SEMAPHORE_FLAG_VALUE,
};
use tenure::lock::LockError;
use tenure::{Error, LostReason};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

use super::{connect, env_or_skip, json, unique_prefix, url_key, Raw};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A fresh lock prefix, `tenure-test-<random>/<what>` (the lock's key is `<that>/.lock`).
fn lock_prefix(what: &str) -> String {
    format!("{}{what}", unique_prefix())
}

/// A handle on the agent (the record store's prefix does not apply to the session locks).
async fn consul(addr: &str) -> Consul {
    connect(addr, "tenure-test-unused/").await
}

/// Sends a raw request, retrying connection failures a few times: the shared agents also serve
/// other test processes, and Consul resets connections beyond its per-client limit.
async fn send(req: reqwest::RequestBuilder) -> reqwest::Response {
    let mut attempt = 0;
    loop {
        let r = req.try_clone().expect("a cloneable request").send().await;
        match r {
            Ok(r) => return r,
            Err(e) if attempt < 5 && (e.is_connect() || e.is_request()) => {
                attempt += 1;
                eprintln!("raw request failed ({e}); retrying");
                sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("raw request: {e}"),
        }
    }
}

/// The raw KV entry (`GET /v1/kv/<key>?consistent`), or `None`.
async fn entry(raw: &Raw, key: &str) -> Option<serde_json::Value> {
    let r = send(
        raw.req(reqwest::Method::GET, &format!("/kv/{}", url_key(key)))
            .query(&[("consistent", "")]),
    )
    .await;
    if r.status() == reqwest::StatusCode::NOT_FOUND {
        return None;
    }
    Some(json(r).await[0].clone())
}

/// Every raw entry below `prefix` (`?recurse`).
async fn entries(raw: &Raw, prefix: &str) -> Vec<serde_json::Value> {
    let r = send(
        raw.req(reqwest::Method::GET, &format!("/kv/{}", url_key(prefix)))
            .query(&[("recurse", ""), ("consistent", "")]),
    )
    .await;
    if r.status() == reqwest::StatusCode::NOT_FOUND {
        return Vec::new();
    }
    match json(r).await {
        serde_json::Value::Array(v) => v,
        other => panic!("a list of entries, got {other}"),
    }
}

fn session_of(e: &serde_json::Value) -> Option<&str> {
    e["Session"].as_str().filter(|s| !s.is_empty())
}

fn flags_of(e: &serde_json::Value) -> u64 {
    e["Flags"].as_u64().unwrap_or(0)
}

fn value_of(e: &serde_json::Value) -> Vec<u8> {
    e["Value"]
        .as_str()
        .map(|v| {
            base64::engine::general_purpose::STANDARD
                .decode(v)
                .expect("base64")
        })
        .unwrap_or_default()
}

fn u64_of(e: &serde_json::Value, field: &str) -> u64 {
    e[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {e}"))
}

/// The holders in a semaphore's `.lock` entry (Go's JSON).
fn holders_of(e: &serde_json::Value) -> (u64, BTreeSet<String>) {
    let v: serde_json::Value = serde_json::from_slice(&value_of(e)).expect("the holders JSON");
    let holders = v["Holders"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    (v["Limit"].as_u64().expect("Limit"), holders)
}

/// Destroys a session behind its owner's back (`PUT /v1/session/destroy/<id>`).
async fn destroy_session(raw: &Raw, id: &str) {
    let r = send(raw.req(reqwest::Method::PUT, &format!("/session/destroy/{id}"))).await;
    assert_eq!(json(r).await, serde_json::json!(true), "destroying {id}");
}

/// Whether Consul still knows the session.
async fn session_exists(raw: &Raw, id: &str) -> bool {
    let r = send(
        raw.req(reqwest::Method::GET, &format!("/session/info/{id}"))
            .query(&[("consistent", "")]),
    )
    .await;
    match json(r).await {
        serde_json::Value::Array(v) => !v.is_empty(),
        _ => false,
    }
}

/// Polls `check` every 50 ms until it holds; panics after `bound`.
async fn eventually<F, Fut>(bound: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + bound;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within {bound:?}");
        sleep(Duration::from_millis(50)).await;
    }
}

/// Whether `task` is still running after `d` (a waiter must stay blocked while the lock is
/// held).
async fn still_waiting<T>(task: &mut JoinHandle<T>, d: Duration) -> bool {
    timeout(d, task).await.is_err()
}

/// The task's result within `bound`.
async fn join_within<T>(task: JoinHandle<T>, bound: Duration, what: &str) -> T {
    timeout(bound, task)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {bound:?}"))
        .expect("the task runs to its end")
}

/// The [`KeyConflict`] inside a `lock`/`acquire` error, or a panic.
fn conflict_of<T: std::fmt::Debug>(r: Result<T, LockError>, what: &str) -> KeyConflict {
    match r {
        Err(LockError::Store(Error::Decode { key, source, .. })) => {
            let c = source
                .downcast_ref::<KeyConflict>()
                .unwrap_or_else(|| panic!("{what}: the source is a KeyConflict, got {source}"))
                .clone();
            assert_eq!(c.key, key, "{what}: the error names the key");
            c
        }
        other => panic!("{what}: expected a KeyConflict, got {other:?}"),
    }
}

fn assert_invalidated(reason: Option<LostReason>, session: &str, what: &str) {
    match reason {
        Some(LostReason::StoreError { error }) => {
            assert!(
                error.contains(session) && error.contains("invalidated"),
                "{what}: {error}"
            );
        }
        other => panic!("{what}: expected the session's invalidation, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// `consul lock`, the real CLI
// ---------------------------------------------------------------------------------------------

/// `consul lock` holding the lock (or a slot) with a child that waits to be terminated.
struct CliHolder {
    child: tokio::process::Child,
    dir: tempfile::TempDir,
}

fn cli(bin: &str, addr: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(bin);
    c.arg("lock")
        .arg(format!("-http-addr={addr}"))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

impl CliHolder {
    /// `consul lock [flags] PREFIX 'touch started && exec sleep 300'`; returns once the child
    /// runs (the lock is held).
    async fn start(bin: &str, addr: &str, flags: &[&str], prefix: &str) -> CliHolder {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = cli(bin, addr)
            .args(flags)
            .arg(prefix)
            .arg("touch started && exec sleep 300")
            .current_dir(dir.path())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("consul lock starts");
        let mut h = CliHolder { child, dir };
        let started = h.dir.path().join("started");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !started.exists() {
            if let Ok(Some(status)) = h.child.try_wait() {
                panic!("consul lock exited with {status}: {}", h.log());
            }
            assert!(
                Instant::now() < deadline,
                "consul lock did not start its child within 20 s: {}",
                h.log()
            );
            sleep(Duration::from_millis(50)).await;
        }
        h
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// SIGTERM, as an operator stops it: `consul lock` terminates its child, releases and
    /// cleans up, and exits.
    async fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().expect("still running");
        let st = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(st.success());
        let status = timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("consul lock exits within 20 s of SIGTERM")
            .expect("wait");
        eprintln!("consul lock after SIGTERM: {status}: {}", self.log().trim());
        status
    }
}

/// Runs `consul lock [args]` to its end (at most 30 s): its status and output.
async fn cli_run(bin: &str, addr: &str, args: &[&str]) -> (ExitStatus, String) {
    let out = timeout(Duration::from_secs(30), cli(bin, addr).args(args).output())
        .await
        .expect("consul lock ends within 30 s")
        .expect("consul lock runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}

// ---------------------------------------------------------------------------------------------
// The lock
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_locks_on_one_prefix_exclude_each_other_and_tokens_grow() {
    let Some(addr) = env_or_skip("TENURE_CONSUL_ADDR", "session lock exclusion") else {
        return;
    };
    let c = consul(&addr).await;
    let raw = Raw::new(&addr, None);
    let p = lock_prefix("excl");
    let a = ConsulLock::builder(&c, &p)
        .unwrap()
        .value("host-a")
        .build()
        .unwrap();
    // The same prefix, spelled as `consul lock` tolerates it.
    let b = ConsulLock::builder(&c, &format!("/{p}/"))
        .unwrap()
        .value("host-b")
        .build()
        .unwrap();
    assert_eq!(a.key(), format!("{p}/.lock"));
    assert_eq!(b.key(), a.key());
    let key = a.key().to_owned();
    assert!(a.holder().await.unwrap().is_none());

    let ga = a.try_lock().await.expect("a takes the free lock");
    assert!(ga.is_held() && a.is_held() && !b.is_held());
    assert_eq!(ga.key(), key);
    let a_session = ga.session().id().to_owned();
    assert_eq!(ga.term().identity(), a_session);
    let e = entry(&raw, &key).await.expect("the key exists while held");
    assert_eq!(flags_of(&e), LOCK_FLAG_VALUE, "api.LockFlagValue");
    assert_eq!(session_of(&e), Some(&*a_session));
    assert_eq!(value_of(&e), b"host-a");
    assert_eq!(u64_of(&e, "ModifyIndex"), ga.fencing_token());
    assert_eq!(u64_of(&e, "LockIndex"), ga.lock_index());
    let info = ga
        .session()
        .info()
        .await
        .unwrap()
        .expect("the session lives");
    assert_eq!(info.ttl, Some(DEFAULT_SESSION_TTL));
    assert_eq!(info.lock_delay, DEFAULT_LOCK_DELAY);
    assert_eq!(info.behavior, "release");
    let h = b.holder().await.unwrap().expect("b sees a's holding");
    assert_eq!(
        (h.session.as_str(), &*h.value),
        (&*a_session, &b"host-a"[..])
    );

    match b.try_lock().await {
        Err(LockError::WouldBlock { name, holder }) => {
            assert_eq!(name, key);
            assert_eq!(holder.as_deref(), Some(&*a_session));
        }
        other => panic!("b's try_lock while a holds: {other:?}"),
    }
    // A waiting lock() blocks while a holds, and gets the lock once a releases.
    let bw = b.clone();
    let mut waiter = tokio::spawn(async move { bw.lock(Some(Duration::from_secs(30))).await });
    assert!(
        still_waiting(&mut waiter, Duration::from_millis(1500)).await,
        "b acquired while a held"
    );
    assert!(ga.is_held());
    assert_eq!(
        session_of(&entry(&raw, &key).await.unwrap()),
        Some(&*a_session)
    );
    let first = (ga.fencing_token(), ga.lock_index());
    ga.release().await.expect("a releases");
    assert!(!a.is_held());
    let gb = join_within(
        waiter,
        Duration::from_secs(10),
        "b acquires after the release",
    )
    .await
    .expect("b acquires");
    assert!(b.is_held());
    assert!(gb.fencing_token() > first.0, "fencing tokens grow");
    assert_eq!(
        gb.lock_index(),
        first.1 + 1,
        "LockIndex counts the holdings"
    );
    let e = entry(&raw, &key).await.unwrap();
    assert_eq!(session_of(&e), Some(gb.session().id()));
    assert_eq!(value_of(&e), b"host-b");
    assert_eq!(flags_of(&e), LOCK_FLAG_VALUE);
    // a's session was made for its holding: destroyed on release.
    assert!(!session_exists(&raw, &a_session).await);
    assert!(matches!(
        a.try_lock().await,
        Err(LockError::WouldBlock { holder: Some(h), .. }) if h == gb.session().id()
    ));

    // Unlock (through the instance, not the guard): the key stays, free, with the lock's flags.
    let b_session = gb.session().id().to_owned();
    let mut last = gb.fencing_token();
    b.unlock().await.expect("b unlocks");
    assert!(!gb.is_held() && gb.lost_reason().is_none() && !b.is_held());
    drop(gb);
    let e = entry(&raw, &key)
        .await
        .expect("a released lock keeps its key");
    assert_eq!(session_of(&e), None);
    assert_eq!(flags_of(&e), LOCK_FLAG_VALUE);
    assert!(b.holder().await.unwrap().is_none());
    assert!(!session_exists(&raw, &b_session).await);

    // Successive holdings, also across the key's deletion and re-creation: tokens only grow.
    for round in 0..4 {
        let l = if round % 2 == 0 { &a } else { &b };
        let g = l
            .lock(Some(Duration::from_secs(10)))
            .await
            .expect("a free lock");
        assert!(
            g.fencing_token() > last,
            "round {round}: {} after {last}",
            g.fencing_token()
        );
        last = g.fencing_token();
        g.release().await.expect("release");
        if round == 1 {
            assert!(a.destroy().await.expect("destroy a free lock"));
            assert!(entry(&raw, &key).await.is_none());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locking_twice_is_already_held_and_unlocking_unheld_is_not_held() {
    let Some(addr) = env_or_skip("TENURE_CONSUL_ADDR", "ErrLockHeld") else {
        return;
    };
    let c = consul(&addr).await;
    let p = lock_prefix("twice");
    let l = ConsulLock::new(&c, &p).unwrap();
    match l.unlock().await {
        Err(LockError::NotHeld { name }) => assert_eq!(name, l.key()),
        other => panic!("unlock without holding: {other:?}"),
    }
    // A zero timeout still makes one attempt: a free lock is taken.
    let g = l
        .lock(Some(Duration::ZERO))
        .await
        .expect("a free lock, with a zero timeout");
    for r in [
        l.lock(Some(Duration::from_secs(1))).await,
        l.try_lock().await,
        l.clone().try_lock().await, // clones are the same contender
    ] {
        match r {
            Err(LockError::AlreadyHeld { name }) => assert_eq!(name, l.key()),
            other => panic!("locking twice: {other:?}"),
        }
    }
    assert!(
        g.is_held(),
        "the refused second lock left the holding alone"
    );
    l.unlock().await.expect("unlock");
    assert!(!g.is_held());
    assert!(matches!(l.unlock().await, Err(LockError::NotHeld { .. })));
    g.release()
        .await
        .expect("releasing an unlocked guard is a no-op");
    // Relocked after the unlock; dropping the guard releases in the background.
    let g = l.try_lock().await.expect("locks again");
    let s = g.session().id().to_owned();
    drop(g);
    let raw = Raw::new(&addr, None);
    let key = l.key().to_owned();
    eventually(
        Duration::from_secs(10),
        "a dropped guard releases",
        || async {
            entry(&raw, &key)
                .await
                .is_some_and(|e| session_of(&e).is_none())
                && !session_exists(&raw, &s).await
        },
    )
    .await;
    assert!(matches!(l.unlock().await, Err(LockError::NotHeld { .. })));

    // The semaphore: the same two errors (ErrSemaphoreHeld, ErrSemaphoreNotHeld).
    let sem = ConsulSemaphore::new(&c, &lock_prefix("twice-sem"), 2).unwrap();
    assert!(matches!(
        sem.release().await,
        Err(LockError::NotHeld { .. })
    ));
    let g = sem
        .acquire(Some(Duration::from_secs(10)))
        .await
        .expect("a slot");
    assert!(matches!(
        sem.try_acquire().await,
        Err(LockError::AlreadyHeld { .. })
    ));
    assert!(matches!(
        sem.acquire(Some(Duration::from_secs(1))).await,
        Err(LockError::AlreadyHeld { .. })
    ));
    assert_eq!(
        sem.holders().await.unwrap(),
        vec![g.session().id().to_owned()]
    );
    sem.release().await.expect("release");
    assert!(matches!(
        sem.release().await,
        Err(LockError::NotHeld { .. })
    ));
    assert!(!g.is_held());
    assert!(sem.holders().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_refuses_while_held_or_in_use_and_foreign_keys_are_left_untouched() {
    let Some(addr) = env_or_skip("TENURE_CONSUL_ADDR", "destroy") else {
        return;
    };
    let c = consul(&addr).await;
    let raw = Raw::new(&addr, None);
    let p = lock_prefix("destroy");
    let a = ConsulLock::new(&c, &p).unwrap();
    let b = ConsulLock::new(&c, &p).unwrap();
    let key = a.key().to_owned();
    assert!(!b.destroy().await.expect("no key: nothing to do"));

    let ga = a.lock(Some(Duration::from_secs(10))).await.expect("locks");
    match a.destroy().await {
        Err(DestroyError::Held { key: k }) => assert_eq!(k, key),
        other => panic!("destroy by the holder: {other:?}"),
    }
    match b.destroy().await {
        Err(DestroyError::InUse { key: k, holder }) => {
            assert_eq!(k, key);
            assert_eq!(holder.as_deref(), Some(ga.session().id()));
        }
        other => panic!("destroy while another holds: {other:?}"),
    }
    let e = entry(&raw, &key).await.expect("still there");
    assert_eq!(session_of(&e), Some(ga.session().id()), "still held");
    ga.release().await.unwrap();
    assert!(b.destroy().await.expect("destroy a free lock"));
    assert!(entry(&raw, &key).await.is_none(), "the key is gone");
    assert!(!a.destroy().await.expect("already gone"));

    // A key with foreign flags (0) at the lock's key: never touched.
    let q = lock_prefix("foreign");
    let l = ConsulLock::new(&c, &q).unwrap();
    let fkey = l.key().to_owned();
    raw.put(&fkey, b"somebody else's data").await;
    let before = raw.get(&fkey).await.expect("written");
    assert_eq!(before.1, 0);
    match l.destroy().await {
        Err(DestroyError::Conflict(k)) => {
            assert_eq!(
                (k.key.as_str(), k.flags, k.expected),
                (&*fkey, 0, LOCK_FLAG_VALUE)
            );
        }
        other => panic!("destroy of a foreign key: {other:?}"),
    }
    let k = conflict_of(l.lock(Some(Duration::from_secs(5))).await, "lock");
    assert_eq!((k.flags, k.expected), (0, LOCK_FLAG_VALUE));
    let k = conflict_of(l.try_lock().await, "try_lock");
    assert_eq!((k.flags, k.expected), (0, LOCK_FLAG_VALUE));
    assert!(!l.is_held());
    match l.holder().await {
        Err(Error::Decode { key: k, .. }) => assert_eq!(k, fkey),
        other => panic!("holder of a foreign key: {other:?}"),
    }
    let after = raw.get(&fkey).await.expect("still there");
    assert_eq!(after, before, "the foreign key was changed");
    assert!(session_of(&entry(&raw, &fkey).await.unwrap()).is_none());

    // A lock on a semaphore's prefix, and a semaphore on a lock's: conflicts both ways.
    let sp = lock_prefix("sem");
    let sem = ConsulSemaphore::new(&c, &sp, 2).unwrap();
    let gs = sem
        .acquire(Some(Duration::from_secs(10)))
        .await
        .expect("a slot");
    let on_sem = ConsulLock::new(&c, &sp).unwrap();
    let k = conflict_of(
        on_sem.lock(Some(Duration::from_secs(5))).await,
        "a lock on a semaphore",
    );
    assert_eq!(
        (k.flags, k.expected),
        (SEMAPHORE_FLAG_VALUE, LOCK_FLAG_VALUE)
    );
    assert!(matches!(
        on_sem.destroy().await,
        Err(DestroyError::Conflict(KeyConflict {
            flags: SEMAPHORE_FLAG_VALUE,
            ..
        }))
    ));
    assert!(matches!(
        sem.destroy().await,
        Err(DestroyError::Held { .. })
    ));
    let other = ConsulSemaphore::new(&c, &sp, 2).unwrap();
    match other.destroy().await {
        Err(DestroyError::InUse { holder, .. }) => {
            assert_eq!(holder.as_deref(), Some(gs.session().id()))
        }
        r => panic!("destroy of a semaphore in use: {r:?}"),
    }
    gs.release().await.unwrap();
    assert!(other.destroy().await.expect("destroy a free semaphore"));
    assert!(entry(&raw, &format!("{sp}/.lock")).await.is_none());

    let lp = lock_prefix("lock");
    let gl = ConsulLock::new(&c, &lp)
        .unwrap()
        .lock(Some(Duration::from_secs(10)))
        .await
        .unwrap();
    let on_lock = ConsulSemaphore::new(&c, &lp, 2).unwrap();
    let k = conflict_of(
        on_lock.acquire(Some(Duration::from_secs(5))).await,
        "a semaphore on a lock",
    );
    assert_eq!(
        (k.flags, k.expected),
        (LOCK_FLAG_VALUE, SEMAPHORE_FLAG_VALUE)
    );
    conflict_of(on_lock.try_acquire().await, "try_acquire on a lock");
    assert!(matches!(
        on_lock.destroy().await,
        Err(DestroyError::Conflict(KeyConflict {
            flags: LOCK_FLAG_VALUE,
            ..
        }))
    ));
    assert!(gl.is_held(), "the lock is untouched by the semaphore");
    let e = entry(&raw, &format!("{lp}/.lock")).await.unwrap();
    assert_eq!(session_of(&e), Some(gl.session().id()));
    gl.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_destroyed_behind_the_holders_back_ends_the_holding() {
    let Some(addr) = env_or_skip("TENURE_CONSUL_ADDR", "session invalidation") else {
        return;
    };
    let c = consul(&addr).await;
    let raw = Raw::new(&addr, None);
    let p = lock_prefix("invalidated");
    let l = ConsulLock::builder(&c, &p)
        .unwrap()
        .lock_delay(Duration::ZERO)
        .build()
        .unwrap();
    let key = l.key().to_owned();
    let g = l.lock(Some(Duration::from_secs(10))).await.expect("locks");
    let sid = g.session().id().to_owned();
    destroy_session(&raw, &sid).await;
    timeout(Duration::from_secs(10), g.token().cancelled())
        .await
        .expect("the holding ends within 10 s of the session's destruction");
    assert!(!g.is_held() && !l.is_held());
    assert_invalidated(g.lost_reason(), &sid, "guard");
    match g.check() {
        Err(LockError::Lost { name, reason }) => {
            assert_eq!(name, key);
            assert_invalidated(Some(reason), &sid, "check");
        }
        other => panic!("check after the loss: {other:?}"),
    }
    assert!(!g.session().is_alive());
    assert_eq!(g.session().end_reason(), Some(SessionEnd::Invalidated));
    let e = entry(&raw, &key)
        .await
        .expect("release behaviour keeps the key");
    assert_eq!(session_of(&e), None, "Consul released the key");
    // As api.Lock: the instance counts as holding until it is unlocked.
    assert!(matches!(
        l.try_lock().await,
        Err(LockError::AlreadyHeld { .. })
    ));
    assert!(matches!(
        g.release().await,
        Err(LockError::Lost {
            reason: LostReason::StoreError { .. },
            ..
        })
    ));

    // synchronize: work that watches its token, and work that ignores it, both end as Lost.
    for observes in [true, false] {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let l2 = l.clone();
        let task = tokio::spawn(async move {
            l2.synchronize(Some(Duration::from_secs(10)), |term| async move {
                let _ = tx.send(term.identity().to_owned());
                if observes {
                    term.cancelled().await;
                } else {
                    sleep(Duration::from_secs(120)).await;
                }
                Ok::<_, Infallible>("the work finished")
            })
            .await
        });
        let sid = timeout(Duration::from_secs(10), rx)
            .await
            .expect("the work starts")
            .expect("the work runs");
        destroy_session(&raw, &sid).await;
        match join_within(task, Duration::from_secs(10), "synchronize returns").await {
            Err(LockError::Lost { name, reason }) => {
                assert_eq!(name, key);
                assert_invalidated(Some(reason), &sid, "synchronize");
            }
            other => panic!("synchronize after the invalidation (observes: {observes}): {other:?}"),
        }
        assert!(!l.is_held());
    }
    // After all that, the lock works normally.
    let r = l
        .synchronize(Some(Duration::from_secs(10)), |t| async move {
            Ok::<_, Infallible>(t.fencing_token())
        })
        .await;
    assert!(r.is_ok(), "{r:?}");
    assert!(session_of(&entry(&raw, &key).await.unwrap()).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_invalidation_nobody_locks_before_the_lock_delay() {
    let Some(addr) = env_or_skip("TENURE_CONSUL_ADDR", "lock-delay") else {
        return;
    };
    let c = consul(&addr).await;
    let raw = Raw::new(&addr, None);
    let p = lock_prefix("delay");
    let delay = Duration::from_secs(3);
    let slack = Duration::from_millis(100);
    let a = ConsulLock::builder(&c, &p)
        .unwrap()
        .lock_delay(delay)
        .build()
        .unwrap();
    let ga = a.lock(Some(Duration::from_secs(10))).await.expect("locks");
    let info = ga.session().info().await.unwrap().unwrap();
    assert_eq!(info.lock_delay, delay);
    let b = ConsulLock::new(&c, &p).unwrap();
    let bw = b.clone();
    let mut waiter = tokio::spawn(async move { bw.lock(Some(Duration::from_secs(40))).await });
    assert!(still_waiting(&mut waiter, Duration::from_millis(500)).await);

    let start = Instant::now();
    destroy_session(&raw, ga.session().id()).await;
    // Free, but the lock-delay refuses everybody.
    let third = ConsulLock::new(&c, &p).unwrap();
    let r = third.try_lock().await;
    let at = start.elapsed();
    match r {
        Err(LockError::WouldBlock { holder: None, .. }) => {}
        Err(LockError::WouldBlock { .. }) | Ok(_) if at >= delay - slack => {}
        other => panic!("a try_lock {at:?} into the lock-delay: {other:?}"),
    }
    let gb = join_within(waiter, delay + Duration::from_secs(10), "b after the delay")
        .await
        .expect("b acquires after the lock-delay");
    let waited = start.elapsed();
    eprintln!("lock-delay {delay:?}: acquired {waited:?} after the invalidation");
    assert!(
        waited >= delay - slack,
        "acquired {waited:?} into a {delay:?} lock-delay"
    );
    assert!(gb.fencing_token() > ga.fencing_token());
    assert!(!ga.is_held());
    assert_invalidated(ga.lost_reason(), ga.session().id(), "a");
    gb.release().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// The semaphore
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semaphore_of_two_admits_two_of_three_and_the_third_when_one_leaves() {
    let Some(addr) = env_or_skip("TENURE_CONSUL_ADDR", "semaphore") else {
        return;
    };
    let c = consul(&addr).await;
    let raw = Raw::new(&addr, None);
    let p = lock_prefix("sem");
    let lkey = format!("{p}/.lock");
    let new = || {
        ConsulSemaphore::builder(&c, &p, 2)
            .unwrap()
            .value("contender")
            .build()
            .unwrap()
    };
    let (s1, s2, s3) = (new(), new(), new());
    let g1 = s1.try_acquire().await.expect("a free slot");
    let g2 = s2
        .acquire(Some(Duration::from_secs(10)))
        .await
        .expect("the second slot");
    assert!(g2.fencing_token() > g1.fencing_token());
    let ids: BTreeSet<String> = [&g1, &g2]
        .iter()
        .map(|g| g.session().id().to_owned())
        .collect();
    match s3.try_acquire().await {
        Err(LockError::WouldBlock { name, holder }) => {
            assert_eq!(name, p);
            assert!(ids.contains(&holder.expect("a holder named")));
        }
        other => panic!("a third contender: {other:?}"),
    }
    let holders: BTreeSet<String> = s3.holders().await.unwrap().into_iter().collect();
    assert_eq!(holders, ids);
    // Go's record: `.lock` with the semaphore's flags, and a contender key per holder.
    let e = entry(&raw, &lkey).await.expect("the holders record");
    assert_eq!(flags_of(&e), SEMAPHORE_FLAG_VALUE);
    assert_eq!(holders_of(&e), (2, ids.clone()));
    assert_eq!(u64_of(&e, "ModifyIndex"), g2.fencing_token());
    for id in &ids {
        let ce = entry(&raw, &format!("{p}/{id}"))
            .await
            .expect("a contender key");
        assert_eq!(flags_of(&ce), SEMAPHORE_FLAG_VALUE);
        assert_eq!(session_of(&ce), Some(id.as_str()));
        assert_eq!(value_of(&ce), b"contender");
        let info = tenure::consul::Session::info_of(&c, id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(info.behavior, "delete", "api.Semaphore's sessions");
    }
    // The refused try_acquire gave its contender key back (its session is destroyed).
    eventually(
        Duration::from_secs(10),
        "the refused contender leaves",
        || async { entries(&raw, &p).await.len() == 3 },
    )
    .await;

    let s3w = s3.clone();
    let mut waiter = tokio::spawn(async move { s3w.acquire(Some(Duration::from_secs(30))).await });
    assert!(
        still_waiting(&mut waiter, Duration::from_millis(1500)).await,
        "a third holder"
    );
    assert!(matches!(s1.destroy().await, Err(DestroyError::Held { .. })));
    assert!(matches!(
        s3.destroy().await,
        Err(DestroyError::InUse {
            holder: Some(_),
            ..
        })
    ));
    let limit3 = ConsulSemaphore::new(&c, &p, 3).unwrap();
    match limit3.acquire(Some(Duration::from_secs(5))).await {
        Err(LockError::Store(Error::Config { rule })) => {
            assert!(rule.contains("limit conflict"), "{rule}")
        }
        other => panic!("another limit: {other:?}"),
    }

    let g1_token = g1.fencing_token();
    g1.release().await.expect("release");
    let g3 = join_within(waiter, Duration::from_secs(10), "the third after a release")
        .await
        .expect("the third gets a slot");
    assert!(g3.fencing_token() > g1_token.max(g2.fencing_token()));
    let holders: BTreeSet<String> = s1.holders().await.unwrap().into_iter().collect();
    let expected: BTreeSet<String> = [&g2, &g3]
        .iter()
        .map(|g| g.session().id().to_owned())
        .collect();
    assert_eq!(holders, expected);
    assert!(g2.is_held() && g3.is_held());

    // A holder's session invalidated behind its back: the slot is lost, and freed.
    let s4 = new();
    let s4w = s4.clone();
    let mut waiter = tokio::spawn(async move { s4w.acquire(Some(Duration::from_secs(30))).await });
    assert!(still_waiting(&mut waiter, Duration::from_millis(500)).await);
    let sid2 = g2.session().id().to_owned();
    destroy_session(&raw, &sid2).await;
    timeout(Duration::from_secs(10), g2.token().cancelled())
        .await
        .expect("the slot is lost within 10 s");
    assert_invalidated(g2.lost_reason(), &sid2, "slot");
    let g4 = join_within(
        waiter,
        Duration::from_secs(10),
        "a slot freed by an invalidation",
    )
    .await
    .expect("the fourth gets the freed slot");
    let holders: BTreeSet<String> = s1.holders().await.unwrap().into_iter().collect();
    let expected: BTreeSet<String> = [&g3, &g4]
        .iter()
        .map(|g| g.session().id().to_owned())
        .collect();
    assert_eq!(holders, expected);
    assert!(matches!(g2.release().await, Err(LockError::Lost { .. })));

    for g in [g3, g4] {
        g.release().await.expect("release");
    }
    assert!(s1.holders().await.unwrap().is_empty());
    assert!(s3.destroy().await.expect("nobody holds a slot"));
    eventually(Duration::from_secs(10), "every key is gone", || async {
        entries(&raw, &p).await.is_empty()
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Interop with `consul lock`
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_lock_and_tenure_exclude_each_other_both_ways() {
    let (Some(addr), Some(bin)) = (
        env_or_skip("TENURE_CONSUL_ADDR", "consul lock interop"),
        env_or_skip("TENURE_CONSUL_BIN", "consul lock interop"),
    ) else {
        return;
    };
    let c = consul(&addr).await;
    let raw = Raw::new(&addr, None);
    let p = lock_prefix("cli");
    let l = ConsulLock::new(&c, &p).unwrap();
    let key = l.key().to_owned();

    // (a) `consul lock` holds: tenure is refused, and waits.
    let holder = CliHolder::start(&bin, &addr, &[], &p).await;
    let e = entry(&raw, &key).await.expect("consul lock's key");
    assert_eq!(flags_of(&e), LOCK_FLAG_VALUE);
    let cli_session = session_of(&e).expect("held by consul lock").to_owned();
    let cli_token = u64_of(&e, "ModifyIndex");
    match l.try_lock().await {
        Err(LockError::WouldBlock { holder, .. }) => {
            assert_eq!(holder.as_deref(), Some(&*cli_session))
        }
        other => panic!("try_lock while consul lock holds: {other:?}"),
    }
    assert_eq!(
        l.holder().await.unwrap().map(|h| h.session),
        Some(cli_session.clone())
    );
    let lw = l.clone();
    let mut waiter = tokio::spawn(async move { lw.lock(Some(Duration::from_secs(60))).await });
    assert!(
        still_waiting(&mut waiter, Duration::from_secs(2)).await,
        "tenure locked while consul lock held"
    );
    let status = holder.terminate().await;
    assert!(status.success(), "consul lock after SIGTERM: {status}");
    let g = join_within(waiter, Duration::from_secs(15), "tenure after consul lock")
        .await
        .expect("tenure acquires once consul lock lets go");
    assert!(g.fencing_token() > cli_token);
    assert!(!session_exists(&raw, &cli_session).await);

    // (b) tenure holds: `consul lock` fails to acquire, without a conflict.
    let e = entry(&raw, &key).await.unwrap();
    assert_eq!(session_of(&e), Some(g.session().id()));
    let (status, out) = cli_run(&bin, &addr, &["-timeout=2s", &p, "true"]).await;
    assert!(!status.success(), "consul lock acquired a held lock: {out}");
    assert!(out.contains("timeout during lock acquisition"), "{out}");
    assert!(!out.to_lowercase().contains("conflict"), "{out}");
    assert!(g.is_held());
    g.release().await.unwrap();
    let (status, out) = cli_run(&bin, &addr, &[&p, "true"]).await;
    assert!(
        status.success(),
        "consul lock after tenure released: {status}: {out}"
    );
    // consul lock's cleanup deleted the free key (`Destroy`): tenure's key was a proper lock.
    assert!(entry(&raw, &key).await.is_none());
    // And tenure takes it again from nothing.
    let g = l.try_lock().await.expect("tenure locks again");
    g.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_lock_n_and_the_tenure_semaphore_share_their_slots() {
    let (Some(addr), Some(bin)) = (
        env_or_skip("TENURE_CONSUL_ADDR", "consul lock -n interop"),
        env_or_skip("TENURE_CONSUL_BIN", "consul lock -n interop"),
    ) else {
        return;
    };
    let c = consul(&addr).await;
    let raw = Raw::new(&addr, None);
    let p = lock_prefix("cli-sem");
    let lkey = format!("{p}/.lock");

    // Two `consul lock -n 2` hold both slots: tenure is refused, and waits.
    let h1 = CliHolder::start(&bin, &addr, &["-n=2"], &p).await;
    let mut h2 = CliHolder::start(&bin, &addr, &["-n=2"], &p).await;
    let e = entry(&raw, &lkey).await.expect("the holders record");
    assert_eq!(flags_of(&e), SEMAPHORE_FLAG_VALUE);
    let (limit, cli_holders) = holders_of(&e);
    assert_eq!((limit, cli_holders.len()), (2, 2));
    let s = ConsulSemaphore::new(&c, &p, 2).unwrap();
    let seen: BTreeSet<String> = s.holders().await.unwrap().into_iter().collect();
    assert_eq!(seen, cli_holders, "tenure reads Go's holders record");
    match s.try_acquire().await {
        Err(LockError::WouldBlock { holder, .. }) => {
            assert!(cli_holders.contains(&holder.expect("a holder")))
        }
        other => panic!("a third slot: {other:?}"),
    }
    let sw = s.clone();
    let mut waiter = tokio::spawn(async move { sw.acquire(Some(Duration::from_secs(60))).await });
    assert!(
        still_waiting(&mut waiter, Duration::from_secs(2)).await,
        "tenure got a third slot"
    );
    let status = h1.terminate().await;
    assert!(status.success(), "{status}");
    let g = join_within(
        waiter,
        Duration::from_secs(15),
        "a slot freed by consul lock",
    )
    .await
    .expect("tenure gets the freed slot");
    let e = entry(&raw, &lkey).await.unwrap();
    let (limit, now) = holders_of(&e);
    assert_eq!(limit, 2);
    assert!(now.contains(g.session().id()), "{now:?}");
    assert_eq!(now.len(), 2, "{now:?}");
    assert_eq!(
        now.intersection(&cli_holders).count(),
        1,
        "one consul lock still holds"
    );
    // Go keeps holding its slot beside tenure's.
    assert!(
        h2.child.try_wait().unwrap().is_none(),
        "the second consul lock still runs: {}",
        h2.log()
    );

    // Now two tenure holders: `consul lock -n 2` is refused; admitted once one leaves.
    let status = h2.terminate().await;
    assert!(status.success(), "{status}");
    let s2 = ConsulSemaphore::new(&c, &p, 2).unwrap();
    let g2 = s2
        .acquire(Some(Duration::from_secs(10)))
        .await
        .expect("the second tenure slot");
    let (status, out) = cli_run(&bin, &addr, &["-n=2", "-timeout=2s", &p, "true"]).await;
    assert!(
        !status.success(),
        "consul lock -n 2 got a third slot: {out}"
    );
    assert!(out.contains("timeout during lock acquisition"), "{out}");
    // A different limit is refused by Go as by tenure.
    let (status, out) = cli_run(&bin, &addr, &["-n=3", "-timeout=2s", &p, "true"]).await;
    assert!(!status.success(), "{out}");
    assert!(out.contains("limit conflict"), "{out}");
    g.release().await.unwrap();
    let (status, out) = cli_run(&bin, &addr, &["-n=2", &p, "true"]).await;
    assert!(
        status.success(),
        "consul lock -n 2 after a tenure release: {status}: {out}"
    );
    assert!(
        g2.is_held(),
        "tenure's slot survived Go's acquire and release"
    );
    let e = entry(&raw, &lkey).await.expect("still in use: kept");
    assert_eq!(holders_of(&e).1, [g2.session().id().to_owned()].into());
    g2.release().await.unwrap();
    assert!(s2.holders().await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Holders that die or are cut off
// ---------------------------------------------------------------------------------------------

const CRASH_CHILD_ENV: &str = "TENURE_TEST_CRASH_CHILD";
const CRASH_TTL: Duration = Duration::from_secs(10);
const CRASH_DELAY: Duration = Duration::from_secs(2);

/// The holder process of `a_crashed_holder_process_is_replaced_once_consul_expires_it`: started
/// by it (this test binary, run again), takes the lock, says so, and waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a helper process, started by a_crashed_holder_process_is_replaced_once_consul_expires_it"]
async fn crash_child_holder() {
    let Ok(spec) = std::env::var(CRASH_CHILD_ENV) else {
        eprintln!("crash_child_holder: only runs as the helper of the crash test");
        return;
    };
    let (addr, prefix) = spec.split_once(' ').expect("ADDR PREFIX");
    let c = consul(addr).await;
    let l = ConsulLock::builder(&c, prefix)
        .unwrap()
        .session_ttl(CRASH_TTL)
        .lock_delay(CRASH_DELAY)
        .build()
        .unwrap();
    let g = l
        .lock(Some(Duration::from_secs(30)))
        .await
        .expect("the child locks");
    println!("HOLDING {} {}", g.session().id(), g.fencing_token());
    std::io::stdout().flush().unwrap();
    sleep(Duration::from_secs(300)).await;
    drop(g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_holder_process_is_replaced_once_consul_expires_it() {
    let Some(addr) = env_or_skip("TENURE_CONSUL_ADDR", "crashed holder") else {
        return;
    };
    let c = consul(&addr).await;
    let raw = Raw::new(&addr, None);
    let p = lock_prefix("crash");
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "session_lock::crash_child_holder",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_CHILD_ENV, format!("{addr} {p}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the helper process starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (sid, token) = timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("the helper's output") {
            if let Some((_, rest)) = line.split_once("HOLDING ") {
                let (s, t) = rest.split_once(' ').expect("HOLDING SESSION TOKEN");
                return (s.to_owned(), t.parse::<u64>().expect("a token"));
            }
        }
        panic!("the helper ended without holding the lock");
    })
    .await
    .expect("the helper holds within 30 s");
    let l = ConsulLock::new(&c, &p).unwrap();
    let e = entry(&raw, l.key()).await.expect("the child's key");
    assert_eq!(session_of(&e), Some(&*sid));
    assert!(matches!(
        l.try_lock().await,
        Err(LockError::WouldBlock { holder: Some(h), .. }) if h == sid
    ));
    let lw = l.clone();
    let mut waiter = tokio::spawn(async move { lw.lock(Some(Duration::from_secs(90))).await });
    assert!(still_waiting(&mut waiter, Duration::from_millis(500)).await);

    // SIGKILL: no release, no session destroy; renewals simply stop.
    let killed = Instant::now();
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert!(!status.success());
    let g = join_within(
        waiter,
        CRASH_TTL * 2 + CRASH_DELAY + Duration::from_secs(20),
        "the lock after the holder's crash",
    )
    .await
    .expect("acquired after the crashed holder's session expired");
    let waited = killed.elapsed();
    eprintln!("crashed holder (TTL {CRASH_TTL:?}, lock-delay {CRASH_DELAY:?}): replaced {waited:?} after the kill");
    // Consul keeps a session at least its TTL after the last renewal, sent at most TTL / 2
    // before the kill; then the lock-delay applies.
    let floor = CRASH_TTL / 2 + CRASH_DELAY - Duration::from_millis(100);
    assert!(
        waited >= floor,
        "replaced {waited:?} after the kill (< {floor:?})"
    );
    assert!(!session_exists(&raw, &sid).await, "the session expired");
    assert!(g.fencing_token() > token);
    g.release().await.unwrap();
}

/// A TCP proxy on plain threads that can be turned into a black hole (connections stay open,
/// nothing passes).
struct Proxy {
    addr: std::net::SocketAddr,
    down: Arc<AtomicBool>,
}

impl Proxy {
    fn start(upstream: &str) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let parked: Arc<StdMutex<Vec<std::net::TcpStream>>> = Arc::default();
        let (d, upstream) = (down.clone(), upstream.to_owned());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                if d.load(Ordering::SeqCst) {
                    parked.lock().unwrap().push(client);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                pump(client.try_clone().unwrap(), server.try_clone().unwrap(), &d);
                pump(server, client, &d);
            }
        });
        Proxy { addr, down }
    }

    fn blackhole(&self) {
        self.down.store(true, Ordering::SeqCst);
    }
}

fn pump(mut from: std::net::TcpStream, mut to: std::net::TcpStream, down: &Arc<AtomicBool>) {
    let down = down.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown(std::net::Shutdown::Write);
                    return;
                }
                Ok(_) if down.load(Ordering::SeqCst) => {}
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_cut_off_from_consul_stops_before_anybody_else_may_lock() {
    let Some(addr) = env_or_skip("TENURE_CONSUL_ADDR", "holder cut off") else {
        return;
    };
    let c = consul(&addr).await;
    let proxy = Proxy::start(addr.trim_start_matches("http://"));
    let via_proxy = consul(&format!("http://{}", proxy.addr)).await;
    let p = lock_prefix("cut-off");
    let ttl = Duration::from_secs(10);
    let renew_deadline = ttl * 3 / 4;
    let delay = Duration::from_secs(8); // at least the renew deadline, as documented
    let a = ConsulLock::builder(&via_proxy, &p)
        .unwrap()
        .session_ttl(ttl)
        .lock_delay(delay)
        .build()
        .unwrap();
    let ga = a.lock(Some(Duration::from_secs(10))).await.expect("locks");
    let b = ConsulLock::new(&c, &p).unwrap();
    let bw = b.clone();
    let mut waiter = tokio::spawn(async move { bw.lock(Some(Duration::from_secs(90))).await });
    assert!(still_waiting(&mut waiter, Duration::from_millis(500)).await);

    let cut = Instant::now();
    proxy.blackhole();
    timeout(
        renew_deadline + Duration::from_secs(5),
        ga.token().cancelled(),
    )
    .await
    .expect("the cut-off holder steps down by its renew deadline");
    let lost_after = cut.elapsed();
    assert!(
        !waiter.is_finished(),
        "somebody else held the lock before the cut-off holder stepped down"
    );
    match ga.lost_reason() {
        Some(LostReason::RenewDeadlineExceeded { .. }) => {}
        other => panic!("the cut-off holder's loss: {other:?}"),
    }
    let gb = join_within(
        waiter,
        ttl * 2 + delay + Duration::from_secs(20),
        "the lock after the holder was cut off",
    )
    .await
    .expect("b acquires once Consul expires the cut-off holder's session");
    let acquired_after = cut.elapsed();
    eprintln!(
        "cut-off holder: stepped down after {lost_after:?}, replaced after {acquired_after:?}"
    );
    assert!(acquired_after > lost_after);
    assert!(gb.fencing_token() > ga.fencing_token());
    assert!(matches!(
        timeout(Duration::from_secs(10), ga.release()).await,
        Ok(Err(LockError::Lost {
            reason: LostReason::RenewDeadlineExceeded { .. },
            ..
        }))
    ));
    gb.release().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// ACLs
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_refusals_are_final_permission_errors_and_a_proper_token_locks() {
    let (Some(addr), Some(master)) = (
        env_or_skip("TENURE_CONSUL_ACL_ADDR", "session lock acl"),
        env_or_skip("TENURE_CONSUL_MASTER_TOKEN", "session lock acl"),
    ) else {
        return;
    };
    let p = lock_prefix("acl");
    let admin = Raw::new(&addr, Some(&master));
    let keys = format!("key_prefix \"{p}\" {{ policy = \"write\" }}");
    let read_keys = format!("key_prefix \"{p}\" {{ policy = \"read\" }}");
    let sessions = "session_prefix \"\" { policy = \"write\" }";
    let full = admin.token_with(&format!("{keys}\n{sessions}")).await;
    let no_session = admin.token_with(&keys).await;
    let read_only = admin.token_with(&format!("{read_keys}\n{sessions}")).await;
    let connect_with = |token: Option<&str>| {
        let mut o = ConsulOptions::new(&addr).timeout(Duration::from_millis(500));
        if let Some(t) = token {
            o = o.token(t);
        }
        o.connect()
    };

    for (what, token) in [
        ("no token", None),
        ("no session permission", Some(&*no_session)),
        ("read-only keys", Some(&*read_only)),
    ] {
        let c = connect_with(token).await.expect("connects");
        let l = ConsulLock::new(&c, &p).unwrap();
        let s = ConsulSemaphore::new(&c, &format!("{p}-sem"), 2).unwrap();
        let started = Instant::now();
        let results = [
            ("lock", l.lock(Some(Duration::from_secs(30))).await.err()),
            ("try_lock", l.try_lock().await.err()),
            (
                "acquire",
                s.acquire(Some(Duration::from_secs(30))).await.err(),
            ),
        ];
        for (op, r) in results {
            match r {
                Some(LockError::Store(Error::PermissionDenied { .. })) => {}
                other => panic!("{what}: {op} must be refused for good, got {other:?}"),
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: refusals are final, not retried until the timeout ({:?})",
            started.elapsed()
        );
        assert!(!l.is_held() && !s.is_held());
    }
    assert!(
        admin.get(&format!("{p}/.lock")).await.is_none(),
        "nothing written"
    );

    // The proper token: session and key write.
    let c = connect_with(Some(&full)).await.expect("connects");
    let l = ConsulLock::new(&c, &p).unwrap();
    let g = l
        .lock(Some(Duration::from_secs(10)))
        .await
        .expect("locks with a proper token");
    let e = entry(&admin, l.key()).await.expect("the key");
    assert_eq!(flags_of(&e), LOCK_FLAG_VALUE);
    assert_eq!(session_of(&e), Some(g.session().id()));
    let other = ConsulLock::new(&c, &p).unwrap();
    assert!(matches!(
        other.try_lock().await,
        Err(LockError::WouldBlock { .. })
    ));
    l.unlock().await.expect("unlocks");
    assert!(session_of(&entry(&admin, l.key()).await.unwrap()).is_none());
    assert!(other.destroy().await.expect("destroys"));
    let s = ConsulSemaphore::new(&c, &format!("{p}-sem"), 2).unwrap();
    let gs = s
        .acquire(Some(Duration::from_secs(10)))
        .await
        .expect("a slot with a proper token");
    assert_eq!(
        s.holders().await.unwrap(),
        vec![gs.session().id().to_owned()]
    );
    gs.release().await.unwrap();
    assert!(s.destroy().await.unwrap());
}

// ---------------------------------------------------------------------------------------------
// Sessions: shared, delete behaviour, cleanup after timeouts and cancellations
// ---------------------------------------------------------------------------------------------

/// The IDs of the sessions named `name` (`GET /v1/session/list`).
async fn sessions_named(raw: &Raw, name: &str) -> Vec<String> {
    let r = send(
        raw.req(reqwest::Method::GET, "/session/list")
            .query(&[("consistent", "")]),
    )
    .await;
    match json(r).await {
        serde_json::Value::Array(v) => v
            .into_iter()
            .filter(|s| s["Name"] == name)
            .map(|s| s["ID"].as_str().expect("ID").to_owned())
            .collect(),
        _ => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_or_cancelled_acquisition_leaves_no_session_behind() {
    let Some(addr) = env_or_skip("TENURE_CONSUL_ADDR", "acquisition cleanup") else {
        return;
    };
    let c = consul(&addr).await;
    let raw = Raw::new(&addr, None);
    let p = lock_prefix("cleanup");
    let holder = ConsulLock::new(&c, &p).unwrap();
    let g = holder.lock(Some(Duration::from_secs(10))).await.unwrap();
    let name = format!("waiter {p}");
    let w = ConsulLock::builder(&c, &p)
        .unwrap()
        .session_name(&name)
        .lock_wait_time(Duration::from_millis(300))
        .build()
        .unwrap();
    // Timeout: waited at least the timeout, and its session is gone.
    let t = Duration::from_secs(1);
    match w.lock(Some(t)).await {
        Err(LockError::Timeout { name: n, waited }) => {
            assert_eq!(n, w.key());
            assert!(waited >= t, "{waited:?}");
        }
        other => panic!("lock while held: {other:?}"),
    }
    eventually(
        Duration::from_secs(10),
        "the timed-out waiter's session is destroyed",
        || async { sessions_named(&raw, &name).await.is_empty() },
    )
    .await;
    // A refused try_lock makes no session at all (it looks first).
    assert!(matches!(
        w.try_lock().await,
        Err(LockError::WouldBlock { .. })
    ));
    assert!(sessions_named(&raw, &name).await.is_empty());
    // A cancelled (aborted) lock() destroys its session.
    let w2 = w.clone();
    let task = tokio::spawn(async move { w2.lock(None).await });
    eventually(
        Duration::from_secs(10),
        "the waiter made its session",
        || async { sessions_named(&raw, &name).await.len() == 1 },
    )
    .await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    eventually(
        Duration::from_secs(10),
        "the cancelled waiter's session is destroyed",
        || async { sessions_named(&raw, &name).await.is_empty() },
    )
    .await;
    assert!(g.is_held(), "the holder was not disturbed");
    // The semaphore: a refused try_acquire and a timed-out acquire leave no contender behind.
    let sp = lock_prefix("cleanup-sem");
    let s1 = ConsulSemaphore::new(&c, &sp, 1).unwrap();
    let gs = s1.acquire(Some(Duration::from_secs(10))).await.unwrap();
    let s2 = ConsulSemaphore::builder(&c, &sp, 1)
        .unwrap()
        .session_name(&name)
        .wait_time(Duration::from_millis(300))
        .build()
        .unwrap();
    assert!(matches!(
        s2.try_acquire().await,
        Err(LockError::WouldBlock { .. })
    ));
    assert!(matches!(
        s2.acquire(Some(Duration::from_secs(1))).await,
        Err(LockError::Timeout { .. })
    ));
    eventually(
        Duration::from_secs(10),
        "the refused contenders leave",
        || async {
            sessions_named(&raw, &name).await.is_empty() && entries(&raw, &sp).await.len() == 2
        },
    )
    .await;
    gs.release().await.unwrap();
    g.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_session_holds_without_being_destroyed_and_takes_its_own_lock_at_once() {
    let Some(addr) = env_or_skip("TENURE_CONSUL_ADDR", "shared session") else {
        return;
    };
    let c = consul(&addr).await;
    let raw = Raw::new(&addr, None);
    let p = lock_prefix("shared");
    let session = tenure::consul::Session::create(
        &c,
        &tenure::consul::SessionOptions::new().lock_delay(Duration::ZERO),
    )
    .await
    .expect("a session");
    let a = ConsulLock::builder(&c, &p)
        .unwrap()
        .session(session.clone())
        .build()
        .unwrap();
    let g = a.lock(Some(Duration::from_secs(10))).await.expect("locks");
    assert_eq!(g.session().id(), session.id());
    // Another instance with the same session: the key is already its session's (api.Lock).
    let b = ConsulLock::builder(&c, &p)
        .unwrap()
        .session(session.clone())
        .build()
        .unwrap();
    let gb = b.try_lock().await.expect("the session already holds it");
    assert_eq!(gb.fencing_token(), g.fencing_token());
    assert_eq!(gb.session().id(), session.id());
    // b releasing the key releases it for the session: a's holding is vacated under it.
    let key = a.key().to_owned();
    b.unlock().await.expect("b unlocks");
    drop(gb);
    timeout(Duration::from_secs(10), g.token().cancelled())
        .await
        .expect("a's holding ends when its key is released by another");
    assert_eq!(
        g.lost_reason(),
        Some(LostReason::TakenOver { holder: None })
    );
    assert!(matches!(a.unlock().await, Err(LockError::Lost { .. })));
    drop(g);
    // Releasing does not destroy a session the lock did not make.
    assert!(session.is_alive());
    assert!(session_exists(&raw, session.id()).await);
    assert!(session_of(&entry(&raw, &key).await.unwrap()).is_none());
    let g = a
        .lock(Some(Duration::from_secs(10)))
        .await
        .expect("locks again");
    assert!(g.is_held());
    // A semaphore on the same session.
    let sp = lock_prefix("shared-sem");
    let s = ConsulSemaphore::builder(&c, &sp, 1)
        .unwrap()
        .session(session.clone())
        .build()
        .unwrap();
    let gs = s
        .acquire(Some(Duration::from_secs(10)))
        .await
        .expect("a slot");
    assert_eq!(s.holders().await.unwrap(), vec![session.id().to_owned()]);
    gs.release().await.unwrap();
    assert!(session.is_alive() && session_exists(&raw, session.id()).await);
    // The session destroyed: both holdings end, and the lock cannot be taken with it.
    let gs = s
        .acquire(Some(Duration::from_secs(10)))
        .await
        .expect("a slot again");
    session.destroy().await.unwrap();
    for (what, guard) in [("lock", &g), ("slot", &gs)] {
        timeout(Duration::from_secs(10), guard.token().cancelled())
            .await
            .unwrap_or_else(|_| panic!("the {what} is lost with its session"));
    }
    assert_eq!(session.end_reason(), Some(SessionEnd::Destroyed));
    assert!(matches!(g.release().await, Err(LockError::Lost { .. })));
    assert!(matches!(gs.release().await, Err(LockError::Lost { .. })));
    assert!(matches!(a.unlock().await, Err(LockError::NotHeld { .. })));
    assert!(session_of(&entry(&raw, &key).await.unwrap()).is_none());
    // An ended session cannot lock: said at once, not waited on.
    let started = Instant::now();
    match a.lock(Some(Duration::from_secs(20))).await {
        Err(LockError::Store(e)) => {
            assert!(!e.is_retryable(), "an ended session is final: {e:?}");
            assert!(format!("{e:?}").contains(session.id()), "{e:?}");
        }
        other => panic!("locking with an ended session: {other:?}"),
    }
    match s.acquire(Some(Duration::from_secs(20))).await {
        Err(LockError::Store(e)) => assert!(!e.is_retryable(), "{e:?}"),
        other => panic!("a slot with an ended session: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_behaviour_lock_loses_its_key_with_its_session() {
    let Some(addr) = env_or_skip("TENURE_CONSUL_ADDR", "delete behaviour") else {
        return;
    };
    let c = consul(&addr).await;
    let raw = Raw::new(&addr, None);
    let p = lock_prefix("delete");
    let l = ConsulLock::builder(&c, &p)
        .unwrap()
        .session_options(
            tenure::consul::SessionOptions::new()
                .behavior(tenure::consul::SessionBehavior::Delete)
                .lock_delay(Duration::ZERO),
        )
        .build()
        .unwrap();
    let g = l.lock(Some(Duration::from_secs(10))).await.expect("locks");
    let sid = g.session().id().to_owned();
    destroy_session(&raw, &sid).await;
    timeout(Duration::from_secs(10), g.token().cancelled())
        .await
        .expect("lost within 10 s");
    assert!(
        entry(&raw, l.key()).await.is_none(),
        "Consul deleted the key"
    );
    // The key is gone because the session was invalidated: said so, as for `release`.
    assert_invalidated(g.lost_reason(), &sid, "delete behaviour");
    // Deleted by somebody else (the session still alive) is `Deleted`.
    drop(g);
    let g = l.lock(Some(Duration::from_secs(10))).await.expect("locks");
    let r = send(raw.req(
        reqwest::Method::DELETE,
        &format!("/kv/{}", url_key(l.key())),
    ))
    .await;
    assert!(r.status().is_success());
    timeout(Duration::from_secs(10), g.token().cancelled())
        .await
        .expect("lost within 10 s");
    assert_eq!(g.lost_reason(), Some(LostReason::Deleted));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contenders_in_a_race_never_overlap_and_tokens_follow_the_grants() {
    let Some(addr) = env_or_skip("TENURE_CONSUL_ADDR", "contention") else {
        return;
    };
    let c = consul(&addr).await;
    let p = lock_prefix("race");
    let sp = lock_prefix("race-sem");
    let inside = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let in_slots = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tokens = Arc::new(StdMutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..4 {
        let l = ConsulLock::new(&c, &p).unwrap();
        let s = ConsulSemaphore::new(&c, &sp, 2).unwrap();
        let (inside, in_slots, most, tokens) = (
            inside.clone(),
            in_slots.clone(),
            most.clone(),
            tokens.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for round in 0..4 {
                let g = l
                    .lock(Some(Duration::from_secs(60)))
                    .await
                    .unwrap_or_else(|e| panic!("contender {i}, round {round}: {e:?}"));
                assert_eq!(
                    inside.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two holders at once"
                );
                tokens.lock().unwrap().push(g.fencing_token());
                sleep(Duration::from_millis(20)).await;
                assert!(g.is_held());
                inside.fetch_sub(1, Ordering::SeqCst);
                g.release().await.expect("release");
            }
            for round in 0..4 {
                let g = s
                    .acquire(Some(Duration::from_secs(60)))
                    .await
                    .unwrap_or_else(|e| panic!("contender {i}, slot round {round}: {e:?}"));
                let n = in_slots.fetch_add(1, Ordering::SeqCst) + 1;
                assert!(n <= 2, "{n} slot holders at once");
                most.fetch_max(n, Ordering::SeqCst);
                sleep(Duration::from_millis(50)).await;
                assert!(g.is_held());
                in_slots.fetch_sub(1, Ordering::SeqCst);
                g.release().await.expect("release");
            }
        }));
    }
    for t in tasks {
        timeout(Duration::from_secs(120), t)
            .await
            .expect("the race ends")
            .expect("no contender panicked");
    }
    let tokens = tokens.lock().unwrap().clone();
    assert_eq!(tokens.len(), 16);
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens in the order of the grants: {tokens:?}"
    );
    eprintln!(
        "slot holders at once, at most: {}",
        most.load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_session_is_invalidated_makes_a_new_one_and_still_gets_in() {
    let Some(addr) = env_or_skip("TENURE_CONSUL_ADDR", "waiter invalidated") else {
        return;
    };
    let c = consul(&addr).await;
    let raw = Raw::new(&addr, None);
    // A long TTL: the waiter's first renewal, which would also find the session gone, comes
    // only after 30 s; the waiter must notice by itself, long before.
    let ttl = Duration::from_secs(60);
    // The lock's txn says "invalid session"; the semaphore's contender key is refused under
    // the lock-delay the invalidation put on it, or with "invalid session" without one.
    for (semaphore, delay) in [
        (false, DEFAULT_LOCK_DELAY),
        (true, DEFAULT_LOCK_DELAY),
        (true, Duration::ZERO),
    ] {
        let p = lock_prefix(if semaphore { "wsem" } else { "wlock" });
        let name = format!("waiter {p}");
        let holder_lock = ConsulLock::new(&c, &p).unwrap();
        let holder_sem = ConsulSemaphore::new(&c, &p, 1).unwrap();
        let g = if semaphore {
            holder_sem.acquire(Some(Duration::from_secs(10))).await
        } else {
            holder_lock.lock(Some(Duration::from_secs(10))).await
        }
        .expect("the holder");
        let (c2, p2) = (c.clone(), p.clone());
        let options = tenure::consul::SessionOptions::new()
            .name(&name)
            .ttl(ttl)
            .lock_delay(delay);
        let waiter = tokio::spawn(async move {
            if semaphore {
                let s = ConsulSemaphore::builder(&c2, &p2, 1)
                    .unwrap()
                    .session_options(options.behavior(tenure::consul::SessionBehavior::Delete))
                    .build()
                    .unwrap();
                s.acquire(Some(Duration::from_secs(40))).await
            } else {
                let l = ConsulLock::builder(&c2, &p2)
                    .unwrap()
                    .session_options(options)
                    .build()
                    .unwrap();
                l.lock(Some(Duration::from_secs(40))).await
            }
        });
        eventually(Duration::from_secs(10), "the waiter's session", || async {
            sessions_named(&raw, &name).await.len() == 1
        })
        .await;
        let first = sessions_named(&raw, &name).await;
        // Its session destroyed behind its back while it waits.
        destroy_session(&raw, &first[0]).await;
        let started = Instant::now();
        g.release().await.unwrap();
        let gw = join_within(waiter, Duration::from_secs(10), "the waiter gets in")
            .await
            .unwrap_or_else(|e| panic!("semaphore {semaphore}, lock-delay {delay:?}: {e:?}"));
        eprintln!(
            "semaphore {semaphore}, lock-delay {delay:?}: in {:?} after the release",
            started.elapsed()
        );
        assert_ne!(gw.session().id(), first[0], "a new session");
        assert!(gw.is_held());
        gw.release().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holdings_outlive_their_session_ttl_by_renewing() {
    let Some(addr) = env_or_skip("TENURE_CONSUL_ADDR", "renewals") else {
        return;
    };
    let c = consul(&addr).await;
    let raw = Raw::new(&addr, None);
    let ttl = Duration::from_secs(10);
    let p = lock_prefix("renew");
    let sp = lock_prefix("renew-sem");
    let l = ConsulLock::builder(&c, &p)
        .unwrap()
        .session_ttl(ttl)
        .build()
        .unwrap();
    let s = ConsulSemaphore::builder(&c, &sp, 1)
        .unwrap()
        .session_ttl(ttl)
        .build()
        .unwrap();
    let g = l.lock(Some(Duration::from_secs(10))).await.expect("locks");
    let gs = s
        .acquire(Some(Duration::from_secs(10)))
        .await
        .expect("a slot");
    let started = Instant::now();
    // Past twice the TTL (when Consul would invalidate a session nobody renews), counting the
    // renewals as the terms' deadlines move.
    let mut renewals = 0;
    let mut last = g.term().valid_until();
    while started.elapsed() < ttl * 2 + ttl / 2 {
        assert!(
            started.elapsed() < ttl * 5,
            "no progress: {renewals} renewals"
        );
        sleep(Duration::from_millis(200)).await;
        assert!(
            g.is_held() && gs.is_held(),
            "lost: {:?} / {:?}",
            g.lost_reason(),
            gs.lost_reason()
        );
        let now = g.term().valid_until();
        if now > last {
            renewals += 1;
            last = now;
        }
    }
    assert!(
        renewals >= 3,
        "{renewals} renewals in {:?}",
        started.elapsed()
    );
    assert!(g.term().is_valid() && gs.term().is_valid());
    assert_eq!(g.term().renew_failures(), 0);
    for (what, guard, key) in [
        ("lock", &g, format!("{p}/.lock")),
        ("slot", &gs, format!("{sp}/{}", gs.session().id())),
    ] {
        assert!(
            session_exists(&raw, guard.session().id()).await,
            "{what}: Consul kept the session"
        );
        let e = entry(&raw, &key)
            .await
            .unwrap_or_else(|| panic!("{what}: the key"));
        assert_eq!(
            session_of(&e),
            Some(guard.session().id()),
            "{what}: still held in Consul"
        );
    }
    assert!(matches!(
        ConsulLock::new(&c, &p).unwrap().try_lock().await,
        Err(LockError::WouldBlock { .. })
    ));
    assert!(matches!(
        ConsulSemaphore::new(&c, &sp, 1)
            .unwrap()
            .try_acquire()
            .await,
        Err(LockError::WouldBlock { .. })
    ));
    g.release().await.expect("release");
    gs.release().await.expect("release");
}
