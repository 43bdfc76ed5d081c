//! The ZooKeeper recipes (`tenure::zookeeper::{Mutex, RwLock, Semaphore, LeaderLatch}`) against
//! a real ZooKeeper, and against Apache Curator 5.4's own recipes on the same paths (a module of
//! the `zookeeper` test binary).
//!
//! The server comes from `TENURE_ZK_CONNECT` (`host:port`, as `scripts/test-services.sh`
//! exports it); the Curator peer from `TENURE_CURATOR_PEER` (the launcher printed by
//! `scripts/build-curator-peer.sh`). A missing variable fails the test when
//! `TENURE_REQUIRE_BACKENDS=1`, and skips it loudly otherwise.
//!
//! Some tests put a small TCP proxy between a client and the server, to silence a session
//! (it expires on the server), or to lose one create request or reply.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use tenure::lock::LockError;
use tenure::zookeeper::zookeeper_client::{self, CreateMode};
use tenure::zookeeper::{Guard, LeaderLatch, Mutex, RwLock, Semaphore, ZkOptions, ZooKeeper};
use tenure::LostReason;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------
// Environment

/// The variable's value, or `None` after a loud skip (a panic under
/// `TENURE_REQUIRE_BACKENDS=1`).
fn env_or_skip(var: &str, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(
                std::env::var("TENURE_REQUIRE_BACKENDS").as_deref() != Ok("1"),
                "{test}: {var} is not set, and TENURE_REQUIRE_BACKENDS=1 requires the ZooKeeper \
                 recipe tests to run: start the servers with scripts/test-services.sh \
                 (scripts/test.sh does)"
            );
            eprintln!(
                "SKIPPED: {test}: {var} is not set (run scripts/test.sh, or \
                 `scripts/test-services.sh start DIR` and `source DIR/env`)"
            );
            None
        }
    }
}

fn zk_or_skip(test: &str) -> Option<String> {
    env_or_skip("TENURE_ZK_CONNECT", test)
}

fn peer_or_skip(test: &str) -> Option<(String, String)> {
    let zk = zk_or_skip(test)?;
    let peer = env_or_skip("TENURE_CURATOR_PEER", test)?;
    Some((zk, peer))
}

/// A fresh path for one test.
fn unique(test: &str) -> String {
    let r: u32 = rand::thread_rng().gen();
    format!("/tenure-recipes-test/{test}-{r:08x}")
}

const SESSION: Duration = Duration::from_secs(4);

async fn connect(addr: &str) -> ZooKeeper {
    connect_with(addr, SESSION).await
}

async fn connect_with(addr: &str, session: Duration) -> ZooKeeper {
    ZkOptions::new(addr)
        .session_timeout(session)
        .timeout(Duration::from_secs(3))
        .connect()
        .await
        .expect("a ZooKeeper session")
}

/// A raw client of the crate, for looking at (and tampering with) the nodes directly.
async fn raw(addr: &str) -> zookeeper_client::Client {
    zookeeper_client::Client::connector()
        .with_session_timeout(SESSION)
        .connect(addr)
        .await
        .expect("a raw ZooKeeper client")
}

async fn children(zk: &zookeeper_client::Client, path: &str) -> Vec<String> {
    match zk.list_children(path).await {
        Ok(mut c) => {
            c.sort();
            c
        }
        Err(zookeeper_client::Error::NoNode) => Vec::new(),
        Err(e) => panic!("list {path}: {e}"),
    }
}

/// Waits until `path` has `n` children.
async fn until_children(zk: &zookeeper_client::Client, path: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = children(zk, path).await;
        if c.len() == n {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "{path} has {} children, expected {n}: {c:?}",
            c.len()
        );
        sleep(Duration::from_millis(10)).await;
    }
}

fn micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_micros() as u64
}

/// Every test is bounded, so that a hang fails instead of blocking CI.
async fn bounded<F: std::future::Future<Output = ()>>(test: &str, f: F) {
    if timeout(Duration::from_secs(120), f).await.is_err() {
        panic!("{test}: did not finish within 120 s");
    }
}

// ---------------------------------------------------------------------------------------------
// Events of in-process contenders

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Acquired(usize),
    Released(usize),
}

/// A contender task: takes its lock, reports, holds until told, releases, reports.
struct Contender {
    release: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Contender {
    fn spawn<F>(i: usize, events: mpsc::UnboundedSender<(Ev, u64)>, acquire: F) -> Contender
    where
        F: std::future::Future<Output = Result<Guard, LockError>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let guard = acquire.await.expect("acquired");
            let _ = events.send((Ev::Acquired(i), micros_now()));
            let _ = rx.await;
            let t = micros_now();
            guard.release().await.expect("released");
            let _ = events.send((Ev::Released(i), t));
        });
        Contender {
            release: Some(tx),
            task,
        }
    }

    fn release(&mut self) {
        if let Some(tx) = self.release.take() {
            let _ = tx.send(());
        }
    }
}

/// Receives exactly the events `expected` (in any order), then nothing more for `quiet`.
async fn expect_events(
    rx: &mut mpsc::UnboundedReceiver<(Ev, u64)>,
    expected: &[Ev],
    quiet: Duration,
) -> Vec<(Ev, u64)> {
    let mut got = Vec::new();
    let want: BTreeSet<Ev> = expected.iter().cloned().collect();
    while got.len() < expected.len() {
        let (ev, t) = timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("waiting for {expected:?}, got only {got:?}"))
            .expect("events");
        assert!(
            want.contains(&ev),
            "unexpected {ev:?} while waiting for {expected:?} (got {got:?})"
        );
        got.push((ev, t));
    }
    if let Ok(Some(extra)) = timeout(quiet, rx.recv()).await {
        panic!("unexpected {extra:?} after {expected:?}");
    }
    got
}

// ---------------------------------------------------------------------------------------------
// Tests: tenure alone

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutex_excludes_waits_and_hands_off() {
    let Some(addr) = zk_or_skip("mutex_excludes_waits_and_hands_off") else {
        return;
    };
    bounded("mutex_excludes_waits_and_hands_off", async {
        let path = unique("mutex");
        let zk = connect(&addr).await;
        let other = connect(&addr).await;
        let look = raw(&addr).await;
        let a = Mutex::new(&zk, &path).unwrap().with_identity("a");
        let b = Mutex::new(&other, &path).unwrap().with_identity("b");

        let ga = a.lock(Some(Duration::from_secs(5))).await.unwrap();
        assert!(a.is_held());
        assert!(
            ga.node().starts_with(&format!("{path}/_c_")),
            "{}",
            ga.node()
        );
        assert!(ga.node().contains("-lock-"), "{}", ga.node());
        assert_eq!(ga.session_id(), zk.session_id().unwrap());
        assert_eq!(a.holder().await.unwrap().as_deref(), Some("a"));
        // The same instance cannot take it twice.
        assert!(matches!(
            a.try_lock().await,
            Err(LockError::AlreadyHeld { .. })
        ));

        // Non-blocking: names the holder, leaves nothing behind.
        match b.try_lock().await {
            Err(LockError::WouldBlock { holder, .. }) => assert_eq!(holder.as_deref(), Some("a")),
            other => panic!("expected WouldBlock, got {other:?}"),
        }
        assert_eq!(children(&look, &path).await.len(), 1);
        // A timed wait gives up and removes its node.
        let started = Instant::now();
        match b.lock(Some(Duration::from_millis(300))).await {
            Err(LockError::Timeout { waited, .. }) => assert!(waited >= Duration::from_millis(300)),
            other => panic!("expected Timeout, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(children(&look, &path).await.len(), 1);
        // A dropped lock future removes its node too (in the background).
        let dropped = timeout(Duration::from_millis(200), b.lock(None)).await;
        assert!(dropped.is_err());
        until_children(&look, &path, 1).await;

        // Handoff: b waits, a releases, b holds, with a greater fencing token.
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.lock(None).await });
        until_children(&look, &path, 2).await;
        let token_a = ga.fencing_token();
        let released_at = Instant::now();
        ga.release().await.unwrap();
        assert!(!a.is_held());
        let gb = waiter.await.unwrap().unwrap();
        assert!(released_at.elapsed() < Duration::from_secs(2));
        assert!(
            gb.fencing_token() > token_a,
            "{} > {token_a}",
            gb.fencing_token()
        );
        assert_eq!(b.participants().await.unwrap(), vec![gb.node().to_owned()]);
        assert!(matches!(a.unlock().await, Err(LockError::NotHeld { .. })));
        b.unlock().await.unwrap();
        drop(gb);
        until_children(&look, &path, 0).await;

        // synchronize: the work's value, and the work's own error kept apart.
        let v = a
            .synchronize(Some(Duration::from_secs(5)), |term| async move {
                assert!(!term.is_cancelled());
                Ok::<_, std::io::Error>(42)
            })
            .await
            .unwrap();
        assert_eq!(v, 42);
        let e = a
            .synchronize(Some(Duration::from_secs(5)), |_| async {
                Err::<(), _>(std::io::Error::other("boom"))
            })
            .await;
        assert!(
            matches!(e, Err(LockError::Work(ref e)) if e.to_string() == "boom"),
            "{e:?}"
        );
        until_children(&look, &path, 0).await;
    })
    .await;
}

/// Seed 003's queue `[ex00, sh01, sh02, sh03, ex04, ex05, sh06, sh07]`, exactly as it
/// describes the play-out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_shared_exclusive_ordering() {
    let Some(addr) = zk_or_skip("seed_shared_exclusive_ordering") else {
        return;
    };
    bounded("seed_shared_exclusive_ordering", async {
        let path = unique("seed-rw");
        let zk = connect(&addr).await;
        let look = raw(&addr).await;
        let exclusive = [true, false, false, false, true, true, false, false];
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut cs = Vec::new();
        for (i, &ex) in exclusive.iter().enumerate() {
            let rw = RwLock::new(&zk, &path)
                .unwrap()
                .with_identity(format!("{}{i:02}", if ex { "ex" } else { "sh" }));
            cs.push(Contender::spawn(i, tx.clone(), async move {
                if ex {
                    rw.write_lock().lock(None).await
                } else {
                    rw.read_lock().lock(None).await
                }
            }));
            // Queue in this order: the next joins once this one's node exists.
            until_children(&look, &path, i + 1).await;
        }
        let quiet = Duration::from_millis(400);
        use Ev::*;
        // ex00 holds the lock, everyone else is blocked.
        expect_events(&mut rx, &[Acquired(0)], quiet).await;
        // ex00 releases: sh01, sh02, sh03 all unblock and hold a shared lock; ex04... blocked.
        cs[0].release();
        expect_events(
            &mut rx,
            &[Released(0), Acquired(1), Acquired(2), Acquired(3)],
            quiet,
        )
        .await;
        // sh01..sh03 all release: ex04 unblocked, holds the lock; ex05... blocked.
        for c in &mut cs[1..4] {
            c.release();
        }
        expect_events(
            &mut rx,
            &[Released(1), Released(2), Released(3), Acquired(4)],
            quiet,
        )
        .await;
        // ex04 releases: ex05 unblocks; sh06, sh07 blocked.
        cs[4].release();
        expect_events(&mut rx, &[Released(4), Acquired(5)], quiet).await;
        // ex05 releases: sh06 and sh07 unblock, hold the lock.
        cs[5].release();
        expect_events(&mut rx, &[Released(5), Acquired(6), Acquired(7)], quiet).await;
        cs[6].release();
        cs[7].release();
        expect_events(&mut rx, &[Released(6), Released(7)], quiet).await;
        for c in cs {
            c.task.await.unwrap();
        }
        until_children(&look, &path, 0).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_lock_downgrade_and_try() {
    let Some(addr) = zk_or_skip("read_lock_downgrade_and_try") else {
        return;
    };
    bounded("read_lock_downgrade_and_try", async {
        let path = unique("rw-downgrade");
        let zk = connect(&addr).await;
        let rw = RwLock::new(&zk, &path).unwrap();
        let other = RwLock::new(&zk, &path).unwrap();
        let w = rw
            .write_lock()
            .lock(Some(Duration::from_secs(5)))
            .await
            .unwrap();
        assert!(matches!(
            other.read_lock().try_lock().await,
            Err(LockError::WouldBlock { .. })
        ));
        // Curator's rule: the holder of the write lock gets the read lock at once.
        let r = rw
            .read_lock()
            .lock(Some(Duration::from_secs(5)))
            .await
            .unwrap();
        w.release().await.unwrap();
        // Downgraded: other readers join, writers wait.
        let r2 = other.read_lock().try_lock().await.unwrap();
        assert!(matches!(
            other.write_lock().try_lock().await,
            Err(LockError::WouldBlock { .. })
        ));
        r.release().await.unwrap();
        r2.release().await.unwrap();
        other
            .write_lock()
            .try_lock()
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphore_of_3_with_10_contenders() {
    let Some(addr) = zk_or_skip("semaphore_of_3_with_10_contenders") else {
        return;
    };
    bounded("semaphore_of_3_with_10_contenders", async {
        let path = unique("semaphore");
        let look = raw(&addr).await;
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(StdMutex::new(Vec::new()));
        let over = Arc::new(AtomicBool::new(false));
        // A watcher of the leases themselves: never more than 3 held, plus the one waiter's
        // (Curator's layout: the head of the queue waits with its lease node created).
        let leases = format!("{path}/leases");
        let sampler = {
            let over = over.clone();
            let look = raw(&addr).await;
            let leases = leases.clone();
            let stop = CancellationToken::new();
            let s = stop.clone();
            let task = tokio::spawn(async move {
                let mut most = 0;
                while !s.is_cancelled() {
                    let n = children(&look, &leases).await.len();
                    most = most.max(n);
                    if n > 3 + 1 {
                        over.store(true, Ordering::SeqCst);
                    }
                    sleep(Duration::from_millis(5)).await;
                }
                most
            });
            (stop, task)
        };
        let mut tasks = Vec::new();
        for i in 0..10 {
            let zk = connect(&addr).await;
            let sem = Semaphore::new(&zk, &path, 3)
                .unwrap()
                .with_identity(format!("c{i}"));
            let (inside, most, served) = (inside.clone(), most.clone(), served.clone());
            tasks.push(tokio::spawn(async move {
                let lease = sem.acquire(Some(Duration::from_secs(60))).await.unwrap();
                let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(n, Ordering::SeqCst);
                let hold = Duration::from_millis(rand::thread_rng().gen_range(50..150));
                sleep(hold).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                lease.release().await.unwrap();
                served.lock().unwrap().push(i);
                zk
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        sampler.0.cancel();
        let seen_nodes = sampler.1.await.unwrap();
        let most = most.load(Ordering::SeqCst);
        assert!(most <= 3, "{most} holders at once");
        assert_eq!(most, 3, "the semaphore never filled up");
        assert!(
            !over.load(Ordering::SeqCst),
            "more than 3 + 1 lease nodes at once"
        );
        assert!(seen_nodes <= 4);
        let mut s = served.lock().unwrap().clone();
        s.sort();
        assert_eq!(s, (0..10).collect::<Vec<_>>());
        assert!(children(&look, &leases).await.is_empty());

        // try_acquire: free leases only.
        let zk = connect(&addr).await;
        let sem = Semaphore::new(&zk, &path, 3).unwrap();
        let l1 = sem.try_acquire().await.unwrap();
        let l2 = sem.try_acquire().await.unwrap();
        let l3 = sem.acquire(Some(Duration::from_secs(5))).await.unwrap();
        assert!(matches!(
            sem.try_acquire().await,
            Err(LockError::WouldBlock { .. })
        ));
        assert!(matches!(
            sem.acquire(Some(Duration::from_millis(300))).await,
            Err(LockError::Timeout { .. })
        ));
        assert_eq!(sem.leases().await.unwrap().len(), 3);
        assert!(l1.fencing_token() < l2.fencing_token() && l2.fencing_token() < l3.fencing_token());
        drop(l1);
        let l4 = sem.acquire(Some(Duration::from_secs(5))).await.unwrap();
        for l in [l2, l3, l4] {
            l.release().await.unwrap();
        }
        assert!(sem.cleanup().await.unwrap());
        assert!(look.check_stat(&path).await.unwrap().is_none());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_cancels_the_token_before_another_holder_gets_it() {
    let test = "session_expiry_cancels_the_token_before_another_holder_gets_it";
    let Some(addr) = zk_or_skip(test) else { return };
    bounded(test, async {
        let path = unique("expiry");
        let proxy = Proxy::start(&addr).await;
        // The holder talks through the proxy, with a short session.
        let holder_zk = connect_with(&proxy.addr(), Duration::from_millis(1200)).await;
        let holder = Mutex::new(&holder_zk, &path)
            .unwrap()
            .with_identity("holder");
        let guard = holder.lock(Some(Duration::from_secs(5))).await.unwrap();
        let token = guard.token().clone();
        let cancelled_at = tokio::spawn(async move {
            token.cancelled().await;
            micros_now()
        });
        let other_zk = connect(&addr).await;
        let other = Mutex::new(&other_zk, &path).unwrap().with_identity("other");
        let waiter = tokio::spawn(async move {
            let g = other.lock(Some(Duration::from_secs(30))).await.unwrap();
            (micros_now(), g)
        });
        sleep(Duration::from_millis(300)).await;
        assert!(guard.is_held());

        // Silence the holder's session: its client stops hearing the server (suspended), and
        // the server expires the session after its timeout, deleting the lock node.
        proxy.blackhole();
        let (acquired_at, other_guard) = waiter.await.unwrap();
        let cancelled_at = cancelled_at.await.unwrap();
        assert!(
            cancelled_at < acquired_at,
            "the holder's token was cancelled at {cancelled_at} µs, after the other holder took \
             the lock at {acquired_at} µs"
        );
        assert!(!guard.is_held());
        match guard.lost_reason() {
            Some(LostReason::RenewDeadlineExceeded {
                last_error: Some(e),
            }) => {
                assert!(e.contains("suspended"), "{e}")
            }
            other => panic!("expected a suspension, got {other:?}"),
        }
        assert!(matches!(guard.check(), Err(LockError::Lost { .. })));

        // The holder's side reconnects: its session is gone; a new one serves new locks.
        proxy.heal();
        let err = guard.release().await;
        assert!(matches!(err, Err(LockError::Lost { .. })), "{err:?}");
        other_guard.release().await.unwrap();
        let again = holder.lock(Some(Duration::from_secs(10))).await.unwrap();
        assert_ne!(again.session_id(), other_zk.session_id().unwrap());
        again.release().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronize_reports_a_loss_and_stops_the_work() {
    let test = "synchronize_reports_a_loss_and_stops_the_work";
    let Some(addr) = zk_or_skip(test) else { return };
    bounded(test, async {
        let path = unique("sync-loss");
        let proxy = Proxy::start(&addr).await;
        let zk = connect_with(&proxy.addr(), Duration::from_millis(1200)).await;
        let mutex = Mutex::new(&zk, &path)
            .unwrap()
            .with_lost_grace(Duration::from_millis(100));
        let (started_tx, started_rx) = oneshot::channel();
        let p = proxy.clone();
        let run = tokio::spawn(async move {
            mutex
                .synchronize(Some(Duration::from_secs(5)), |term| async move {
                    let _ = started_tx.send(());
                    // Work that never ends by itself.
                    term.cancelled().await;
                    sleep(Duration::from_secs(3600)).await;
                    Ok::<_, std::io::Error>(())
                })
                .await
        });
        started_rx.await.unwrap();
        let t = Instant::now();
        p.blackhole();
        let res = run.await.unwrap();
        assert!(matches!(res, Err(LockError::Lost { .. })), "{res:?}");
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        proxy.heal();
    })
    .await;
}

/// A create whose reply is lost (the connection drops right after the request reached the
/// server) is found again by its protected prefix and adopted: one node, not two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_create_recovers_a_lost_reply() {
    let test = "protected_create_recovers_a_lost_reply";
    let Some(addr) = zk_or_skip(test) else { return };
    bounded(test, async {
        let path = unique("protected");
        let look = raw(&addr).await;
        let proxy = Proxy::start(&addr).await;
        let zk = connect(&proxy.addr()).await;
        let mutex = Mutex::new(&zk, &path).unwrap();
        // Make the parents first, so that the intercepted create is the lock node's.
        look.mkdir(
            &path,
            &CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all()),
        )
        .await
        .unwrap();
        let seen = proxy.intercept("-lock-", Intercept::DropReply);
        let guard = mutex.lock(Some(Duration::from_secs(20))).await.unwrap();
        let created = seen.await.unwrap();
        assert!(
            guard.node().starts_with(&created),
            "{} vs {created}",
            guard.node()
        );
        assert_eq!(
            children(&look, &path).await.len(),
            1,
            "a duplicate node was created"
        );
        assert_eq!(proxy.dropped_connections(), 1);
        guard.release().await.unwrap();
        until_children(&look, &path, 0).await;
    })
    .await;
}

/// CURATOR-696: a node found by our protected prefix but owned by another session (as the
/// node of an expired session, not yet removed) is never claimed; we queue anew behind it,
/// and hold only once it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_session_is_never_claimed() {
    let test = "a_node_of_another_session_is_never_claimed";
    let Some(addr) = zk_or_skip(test) else { return };
    bounded(test, async {
        let path = unique("owner");
        let look = raw(&addr).await;
        look.mkdir(
            &path,
            &CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all()),
        )
        .await
        .unwrap();
        let proxy = Proxy::start(&addr).await;
        let zk = connect(&proxy.addr()).await;
        let mutex = Mutex::new(&zk, &path).unwrap();
        // Our first create never reaches the server; the proxy stays down while a second
        // session creates a node with our very prefix.
        let seen = proxy.intercept("-lock-", Intercept::DropRequest);
        let m = mutex.clone();
        let acquiring = tokio::spawn(async move { m.lock(Some(Duration::from_secs(30))).await });
        let prefix = seen.await.unwrap();
        let impostor_session = raw(&addr).await;
        let (_, seq) = impostor_session
            .create(
                &prefix,
                b"not ours",
                &CreateMode::EphemeralSequential.with_acls(zookeeper_client::Acls::anyone_all()),
            )
            .await
            .unwrap();
        let impostor = format!("{prefix}{seq}");
        proxy.heal();
        // Our client reconnects, finds the impostor by prefix, sees another owner, queues anew.
        let c = until_children(&look, &path, 2).await;
        assert!(c.iter().any(|n| impostor.ends_with(n.as_str())), "{c:?}");
        sleep(Duration::from_millis(500)).await;
        assert!(
            !acquiring.is_finished(),
            "claimed a node of another session"
        );
        // The other session ends (its expiry processed): its node goes, and we hold.
        drop(impostor_session);
        let guard = acquiring.await.unwrap().unwrap();
        assert_ne!(guard.node(), impostor);
        assert!(look.check_stat(&impostor).await.unwrap().is_none());
        guard.release().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_removes_only_unused_lock_nodes() {
    let Some(addr) = zk_or_skip("cleanup_removes_only_unused_lock_nodes") else {
        return;
    };
    bounded("cleanup_removes_only_unused_lock_nodes", async {
        let base = unique("cleanup");
        let zk = connect(&addr).await;
        let look = raw(&addr).await;
        let a = Mutex::new(&zk, &format!("{base}/a")).unwrap();
        let b = Mutex::new(&zk, &format!("{base}/b")).unwrap();
        let sem = Semaphore::new(&zk, &format!("{base}/s"), 2).unwrap();
        a.try_lock().await.unwrap().release().await.unwrap();
        sem.acquire(None).await.unwrap().release().await.unwrap();
        let held = b.lock(None).await.unwrap();
        assert_eq!(children(&look, &base).await, vec!["a", "b", "s"]);
        // In use: kept.
        let b2 = Mutex::new(&zk, &format!("{base}/b")).unwrap();
        assert!(!b2.cleanup().await.unwrap());
        // Unused: removed.
        assert!(a.cleanup().await.unwrap());
        assert!(!a.cleanup().await.unwrap());
        assert_eq!(children(&look, &base).await, vec!["b", "s"]);
        // The tree-wide cleanup: the semaphore's nodes go, the held lock stays.
        let removed = tenure::zookeeper::cleanup(&zk, &base).await.unwrap();
        assert_eq!(
            removed,
            vec![
                format!("{base}/s/leases"),
                format!("{base}/s/locks"),
                format!("{base}/s")
            ]
        );
        assert_eq!(children(&look, &base).await, vec!["b"]);
        held.release().await.unwrap();

        // Racing a contender: every acquisition succeeds while cleanups run.
        let stop = CancellationToken::new();
        let s = stop.clone();
        let zk2 = zk.clone();
        let path = format!("{base}/race");
        let cleaner = tokio::spawn(async move {
            let m = Mutex::new(&zk2, &path).unwrap();
            let mut removed = 0;
            while !s.is_cancelled() {
                if m.cleanup().await.unwrap() {
                    removed += 1;
                }
            }
            removed
        });
        let racer = Mutex::new(&connect(&addr).await, &format!("{base}/race")).unwrap();
        for _ in 0..30 {
            racer
                .lock(Some(Duration::from_secs(10)))
                .await
                .unwrap()
                .release()
                .await
                .unwrap();
        }
        stop.cancel();
        let removed = cleaner.await.unwrap();
        assert!(removed > 0, "the cleaner never removed the node");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_latch_elects_and_hands_off() {
    let Some(addr) = zk_or_skip("leader_latch_elects_and_hands_off") else {
        return;
    };
    bounded("leader_latch_elects_and_hands_off", async {
        let path = unique("latch");
        let look = raw(&addr).await;
        let (tx, mut rx) = mpsc::unbounded_channel::<(usize, bool, u64)>();
        let mut stops = Vec::new();
        let mut runs = Vec::new();
        let leaders = Arc::new(AtomicUsize::new(0));
        for i in 0..3 {
            let zk = connect(&addr).await;
            let latch = LeaderLatch::new(&zk, &path)
                .unwrap()
                .with_id(format!("p{i}"));
            let stop = CancellationToken::new();
            stops.push(stop.clone());
            let (tx, leaders) = (tx.clone(), leaders.clone());
            runs.push(tokio::spawn(async move {
                latch
                    .run(stop.cancelled_owned(), move |term| {
                        let (tx, leaders) = (tx.clone(), leaders.clone());
                        async move {
                            let n = leaders.fetch_add(1, Ordering::SeqCst) + 1;
                            assert_eq!(n, 1, "two leaders at once");
                            let _ = tx.send((i, true, term.fencing_token()));
                            term.cancelled().await;
                            leaders.fetch_sub(1, Ordering::SeqCst);
                            let _ = tx.send((i, false, term.fencing_token()));
                        }
                    })
                    .await
                    .unwrap();
                zk
            }));
            until_children(&look, &path, i + 1).await;
        }
        // Queue order: p0, then p1, then p2.
        let mut last_token = 0;
        for (i, stop) in stops.iter().enumerate() {
            let (who, leading, token) = timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!((who, leading), (i, true));
            assert!(token > last_token);
            last_token = token;
            let observer = LeaderLatch::new(&connect(&addr).await, &path).unwrap();
            assert_eq!(observer.leader().await.unwrap(), Some(format!("p{i}")));
            stop.cancel();
            let (who, leading, _) = timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!((who, leading), (i, false));
        }
        for r in runs {
            r.await.unwrap();
        }
        until_children(&look, &path, 0).await;

        // One-shot: acquire, try, synchronize.
        let zk = connect(&addr).await;
        let a = LeaderLatch::new(&zk, &path).unwrap().with_id("a");
        let b = LeaderLatch::new(&zk, &path).unwrap().with_id("b");
        let ga = a.acquire(Some(Duration::from_secs(5))).await.unwrap();
        assert!(a.is_leader());
        match b.try_acquire().await {
            Err(LockError::WouldBlock { holder, .. }) => assert_eq!(holder.as_deref(), Some("a")),
            other => panic!("expected WouldBlock, got {other:?}"),
        }
        let token = ga.fencing_token();
        drop(ga);
        let v = b
            .synchronize(Some(Duration::from_secs(5)), |term| async move {
                Ok::<_, std::io::Error>(term.fencing_token())
            })
            .await
            .unwrap();
        assert!(v > token);
        assert!(!a.is_leader());
    })
    .await;
}

/// Curator's `RECONNECTED` behaviour: a leader whose connection is suspended loses the term at
/// once, keeps its node, and leads again (new term, greater token) once reconnected within the
/// session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_latch_leads_again_after_a_suspension() {
    let test = "leader_latch_leads_again_after_a_suspension";
    let Some(addr) = zk_or_skip(test) else { return };
    bounded(test, async {
        let path = unique("latch-suspend");
        let look = raw(&addr).await;
        let proxy = Proxy::start(&addr).await;
        let zk = connect_with(&proxy.addr(), Duration::from_secs(4)).await;
        let latch = LeaderLatch::new(&zk, &path).unwrap().with_id("solo");
        let (tx, mut rx) = mpsc::unbounded_channel::<(bool, u64, Option<tenure::StopReason>)>();
        let stop = CancellationToken::new();
        let s = stop.clone();
        let run = tokio::spawn(async move {
            latch
                .run(s.cancelled_owned(), move |term| {
                    let tx = tx.clone();
                    async move {
                        let _ = tx.send((true, term.fencing_token(), None));
                        term.cancelled().await;
                        let _ = tx.send((false, term.fencing_token(), term.stop_reason()));
                    }
                })
                .await
        });
        let (up, t1, _) = rx.recv().await.unwrap();
        assert!(up);
        let node = until_children(&look, &path, 1).await;
        proxy.blackhole();
        let (up, _, why) = timeout(Duration::from_secs(4), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(!up);
        assert!(
            matches!(
                why,
                Some(tenure::StopReason::Lost(
                    LostReason::RenewDeadlineExceeded { .. }
                ))
            ),
            "{why:?}"
        );
        sleep(Duration::from_millis(300)).await;
        proxy.heal();
        let (up, t2, _) = timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(up);
        assert!(t2 > t1, "{t2} > {t1}");
        // The same node: its place in the queue was kept.
        assert_eq!(children(&look, &path).await, node);
        stop.cancel();
        run.await.unwrap().unwrap();
        until_children(&look, &path, 0).await;
    })
    .await;
}

/// The recipes' nodes carry the connection's ACLs; credentials that do not match are a final
/// permission error, not retried until the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipes_use_the_configured_acls() {
    let test = "recipes_use_the_configured_acls";
    let (Some(addr), Some(user), Some(password), Some(protected)) = (
        env_or_skip("TENURE_ZK_AUTH_CONNECT", test),
        env_or_skip("TENURE_ZK_AUTH_USER", test),
        env_or_skip("TENURE_ZK_AUTH_PASSWORD", test),
        env_or_skip("TENURE_ZK_AUTH_ROOT", test),
    ) else {
        return;
    };
    bounded(test, async {
        let r: u32 = rand::thread_rng().gen();
        let root = format!("{protected}/recipes-{r:08x}");
        let zk = ZkOptions::new(&addr)
            .digest(&user, &password)
            .root(&root)
            .session_timeout(SESSION)
            .connect()
            .await
            .unwrap();
        // A relative path: under the root, which is created (persistent), the rest containers.
        let mutex = Mutex::new(&zk, "locks/acl").unwrap();
        let guard = mutex.lock(Some(Duration::from_secs(5))).await.unwrap();
        let latch = LeaderLatch::new(&zk, "latches/acl").unwrap();
        let leading = latch.acquire(Some(Duration::from_secs(5))).await.unwrap();
        let authed = zookeeper_client::Client::connector()
            .with_auth("digest", format!("{user}:{password}").as_bytes())
            .connect(&addr)
            .await
            .unwrap();
        for node in [guard.node(), &format!("{root}/locks/acl"), leading.node()] {
            let (acl, _) = authed.get_acl(node).await.unwrap();
            assert_eq!(acl.len(), 1, "{node}: {acl:?}");
            assert_eq!(acl[0].scheme(), "digest", "{node}: {acl:?}");
            assert!(
                acl[0].id().starts_with(&format!("{user}:")),
                "{node}: {acl:?}"
            );
        }
        // Without the credentials, the lock's nodes can be neither listed nor deleted.
        let anonymous = raw(&addr).await;
        assert_eq!(
            anonymous.list_children(&format!("{root}/locks/acl")).await,
            Err(zookeeper_client::Error::NoAuth)
        );
        assert_eq!(
            anonymous.delete(guard.node(), None).await,
            Err(zookeeper_client::Error::NoAuth)
        );
        // Wrong credentials: a permission error at once.
        let wrong = ZkOptions::new(&addr)
            .digest(&user, "wrong")
            .session_timeout(SESSION)
            .connect()
            .await
            .unwrap();
        let intruder = Mutex::new(&wrong, &format!("{root}/locks/acl")).unwrap();
        let started = Instant::now();
        let e = intruder.lock(Some(Duration::from_secs(10))).await;
        assert!(
            matches!(
                e,
                Err(LockError::Store(tenure::Error::PermissionDenied { .. }))
            ),
            "{e:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        guard.release().await.unwrap();
        leading.release().await.unwrap();
        assert!(mutex.cleanup().await.unwrap());
        assert!(latch.cleanup().await.unwrap());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_validated() {
    let Some(addr) = zk_or_skip("paths_are_validated") else {
        return;
    };
    let zk = connect(&addr).await;
    for bad in ["", "/", "/a/", "/a//b", "/zookeeper/x", "/a/../b"] {
        assert!(
            matches!(Mutex::new(&zk, bad), Err(tenure::Error::InvalidName { .. })),
            "{bad:?}"
        );
    }
    assert!(matches!(
        Semaphore::new(&zk, "/s", 0),
        Err(tenure::Error::Config { .. })
    ));
    // Relative paths go under the connection's root.
    let m = Mutex::new(&zk, "locks/x").unwrap();
    assert_eq!(m.path(), format!("{}/locks/x", zk.root()));
}

// ---------------------------------------------------------------------------------------------
// Interop with Apache Curator 5.4

/// A running `CuratorPeer` (tests/support/curator/CuratorPeer.java).
struct Peer {
    child: Child,
    stdin: ChildStdin,
    events: mpsc::UnboundedReceiver<(String, u64)>,
    name: String,
}

impl Peer {
    async fn start(launcher: &str, zk: &str, recipe: &str, path: &str, extra: &[&str]) -> Peer {
        let mut child = Command::new(launcher)
            .arg(zk)
            .arg(recipe)
            .arg(path)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the Curator peer {launcher}: {e}"));
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = mpsc::unbounded_channel();
        let name = format!("curator-{recipe}");
        let n = name.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[{n}] {line}");
                let mut words = line.split_whitespace();
                let kind = words.next().unwrap_or_default().to_owned();
                let t = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                if tx.send((kind, t)).is_err() {
                    break;
                }
            }
        });
        let mut peer = Peer {
            child,
            stdin,
            events,
            name,
        };
        peer.expect("READY").await;
        peer
    }

    async fn send(&mut self, command: &str) {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .expect("the peer's stdin");
        self.stdin.flush().await.unwrap();
    }

    /// The next event other than STATE; must be `kind`. Its time, in µs since the epoch.
    async fn expect(&mut self, kind: &str) -> u64 {
        loop {
            let (k, t) = timeout(Duration::from_secs(30), self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("{}: no {kind} within 30 s", self.name))
                .unwrap_or_else(|| panic!("{}: exited before {kind}", self.name));
            if k == "STATE" || k == "LEADER" {
                continue;
            }
            assert_eq!(k, kind, "{}: expected {kind}", self.name);
            return t;
        }
    }

    /// No event (other than STATE) within `d`.
    async fn quiet(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => return,
                Ok(Some((k, _))) if k == "STATE" => continue,
                Ok(other) => panic!("{}: unexpected {other:?}", self.name),
            }
        }
    }

    async fn acquire(&mut self) -> u64 {
        self.send("acquire").await;
        self.expect("ACQUIRING").await;
        self.expect("ACQUIRED").await
    }

    /// (RELEASING, RELEASED) times.
    async fn release(&mut self) -> (u64, u64) {
        self.send("release").await;
        let a = self.expect("RELEASING").await;
        let b = self.expect("RELEASED").await;
        (a, b)
    }

    async fn quit(mut self) {
        self.send("quit").await;
        let _ = timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// Starts an acquisition on the peer and waits until its node is queued (`dir` gains a child).
async fn peer_enqueue(peer: &mut Peer, look: &zookeeper_client::Client, dir: &str) {
    let before = children(look, dir).await.len();
    peer.send("acquire").await;
    peer.expect("ACQUIRING").await;
    until_children(look, dir, before + 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_mutex_interop() {
    let Some((addr, launcher)) = peer_or_skip("curator_mutex_interop") else {
        return;
    };
    bounded("curator_mutex_interop", async {
        let path = unique("curator-mutex");
        let zk = connect(&addr).await;
        let look = raw(&addr).await;
        let mine = Mutex::new(&zk, &path).unwrap().with_identity("tenure");
        let mut peer = Peer::start(&launcher, &addr, "mutex", &path, &[]).await;

        // Curator holds: tenure is excluded, then gets it when Curator releases.
        peer.acquire().await;
        let c = children(&look, &path).await;
        assert_eq!(c.len(), 1);
        assert!(
            c[0].starts_with("_c_") && c[0].contains("-lock-"),
            "Curator's layout: {c:?}"
        );
        assert!(matches!(
            mine.try_lock().await,
            Err(LockError::WouldBlock { .. })
        ));
        let m = mine.clone();
        let waiter = tokio::spawn(async move {
            let g = m.lock(Some(Duration::from_secs(30))).await.unwrap();
            (micros_now(), g)
        });
        until_children(&look, &path, 2).await;
        sleep(Duration::from_millis(200)).await;
        assert!(!waiter.is_finished(), "both inside");
        let (releasing, _) = peer.release().await;
        let (acquired, guard) = waiter.await.unwrap();
        assert!(releasing <= acquired, "handoff Curator → tenure overlapped");

        // tenure holds: Curator waits, then gets it when tenure releases.
        peer_enqueue(&mut peer, &look, &path).await;
        peer.quiet(Duration::from_millis(300)).await;
        let released = micros_now();
        guard.release().await.unwrap();
        let acquired = peer.expect("ACQUIRED").await;
        assert!(released <= acquired, "handoff tenure → Curator overlapped");
        peer.release().await;

        // FIFO across the two: tenure A holds, Curator queues, tenure B queues; A → Curator → B.
        let a = Mutex::new(&zk, &path).unwrap();
        let b = Mutex::new(&connect(&addr).await, &path).unwrap();
        let ga = a.lock(Some(Duration::from_secs(5))).await.unwrap();
        peer_enqueue(&mut peer, &look, &path).await;
        let b2 = b.clone();
        let tb = tokio::spawn(async move {
            let g = b2.lock(Some(Duration::from_secs(30))).await.unwrap();
            (micros_now(), g)
        });
        until_children(&look, &path, 3).await;
        ga.release().await.unwrap();
        let peer_acquired = peer.expect("ACQUIRED").await;
        sleep(Duration::from_millis(300)).await;
        assert!(!tb.is_finished(), "B jumped the queue ahead of Curator");
        let (peer_releasing, _) = peer.release().await;
        let (b_acquired, gb) = tb.await.unwrap();
        assert!(peer_acquired < peer_releasing && peer_releasing <= b_acquired);
        gb.release().await.unwrap();
        peer.quit().await;
        until_children(&look, &path, 0).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_rwlock_interop() {
    let Some((addr, launcher)) = peer_or_skip("curator_rwlock_interop") else {
        return;
    };
    bounded("curator_rwlock_interop", async {
        let path = unique("curator-rw");
        let zk = connect(&addr).await;
        let look = raw(&addr).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        // Queue: tenure writer (0), Curator reader, tenure reader (2), Curator writer,
        // tenure reader (4): the seed's rules across both implementations.
        let w0 = RwLock::new(&zk, &path).unwrap();
        let mut c0 = Contender::spawn(0, tx.clone(), {
            let w0 = w0.clone();
            async move { w0.write_lock().lock(None).await }
        });
        until_children(&look, &path, 1).await;
        let mut curator_reader = Peer::start(&launcher, &addr, "read", &path, &[]).await;
        peer_enqueue(&mut curator_reader, &look, &path).await;
        let r2 = RwLock::new(&zk, &path).unwrap();
        let mut c2 = Contender::spawn(
            2,
            tx.clone(),
            async move { r2.read_lock().lock(None).await },
        );
        until_children(&look, &path, 3).await;
        let mut curator_writer = Peer::start(&launcher, &addr, "write", &path, &[]).await;
        peer_enqueue(&mut curator_writer, &look, &path).await;
        let r4 = RwLock::new(&zk, &path).unwrap();
        let mut c4 = Contender::spawn(
            4,
            tx.clone(),
            async move { r4.read_lock().lock(None).await },
        );
        let nodes = until_children(&look, &path, 5).await;
        assert_eq!(
            nodes.iter().filter(|n| n.contains("__READ__")).count(),
            3,
            "{nodes:?}"
        );
        assert_eq!(
            nodes.iter().filter(|n| n.contains("__WRIT__")).count(),
            2,
            "{nodes:?}"
        );

        let quiet = Duration::from_millis(400);
        expect_events(&mut rx, &[Ev::Acquired(0)], quiet).await;
        curator_reader.quiet(Duration::from_millis(100)).await;
        // The writer releases: both readers ahead of the Curator writer hold, together.
        c0.release();
        let got = expect_events(&mut rx, &[Ev::Released(0), Ev::Acquired(2)], quiet).await;
        let w0_released = got[0].1;
        let cr = curator_reader.expect("ACQUIRED").await;
        assert!(w0_released <= cr);
        curator_writer.quiet(Duration::from_millis(200)).await;
        // Both readers release: the Curator writer holds alone; the last reader waits.
        let (cr_releasing, _) = curator_reader.release().await;
        curator_writer.quiet(Duration::from_millis(200)).await;
        c2.release();
        let got = expect_events(&mut rx, &[Ev::Released(2)], Duration::ZERO).await;
        let cw = curator_writer.expect("ACQUIRED").await;
        assert!(
            cr_releasing <= cw && got[0].1 <= cw,
            "the writer overlapped a reader"
        );
        expect_events(&mut rx, &[], quiet).await;
        // The Curator writer releases: the last tenure reader holds.
        let (cw_releasing, _) = curator_writer.release().await;
        let got = expect_events(&mut rx, &[Ev::Acquired(4)], quiet).await;
        assert!(cw_releasing <= got[0].1);
        c4.release();
        expect_events(&mut rx, &[Ev::Released(4)], Duration::ZERO).await;
        curator_reader.quit().await;
        curator_writer.quit().await;
        for c in [c0, c2, c4] {
            c.task.await.unwrap();
        }
        until_children(&look, &path, 0).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_semaphore_interop() {
    let Some((addr, launcher)) = peer_or_skip("curator_semaphore_interop") else {
        return;
    };
    bounded("curator_semaphore_interop", async {
        let path = unique("curator-sem");
        let zk = connect(&addr).await;
        let look = raw(&addr).await;
        let leases = format!("{path}/leases");
        let locks = format!("{path}/locks");
        let sem = Semaphore::new(&zk, &path, 2)
            .unwrap()
            .with_identity("tenure");
        let mut p1 =
            Peer::start(&launcher, &addr, "semaphore", &path, &["--max-leases", "2"]).await;
        let mut p2 =
            Peer::start(&launcher, &addr, "semaphore", &path, &["--max-leases", "2"]).await;
        // Curator takes one lease, tenure the other: full.
        p1.acquire().await;
        let c = children(&look, &leases).await;
        assert!(
            c.len() == 1 && c[0].starts_with("_c_") && c[0].contains("-lease-"),
            "{c:?}"
        );
        let mine = sem.acquire(Some(Duration::from_secs(5))).await.unwrap();
        assert_eq!(children(&look, &leases).await.len(), 2);
        assert!(matches!(
            sem.try_acquire().await,
            Err(LockError::WouldBlock { .. })
        ));
        // A second Curator acquirer queues (it holds the internal lock and watches the leases)…
        p2.send("acquire").await;
        p2.expect("ACQUIRING").await;
        until_children(&look, &locks, 1).await;
        // …and a tenure acquirer queues behind it.
        let s2 = sem.clone();
        let queued = tokio::spawn(async move {
            let l = s2.acquire(Some(Duration::from_secs(30))).await.unwrap();
            (micros_now(), l)
        });
        until_children(&look, &locks, 2).await;
        p2.quiet(Duration::from_millis(300)).await;
        // Two held, and the waiting Curator acquirer's own lease node (Curator counts it).
        assert_eq!(children(&look, &leases).await.len(), 3);
        // tenure returns its lease: the Curator acquirer (first in line) gets it.
        let returned = micros_now();
        mine.release().await.unwrap();
        let p2_acquired = p2.expect("ACQUIRED").await;
        assert!(returned <= p2_acquired);
        sleep(Duration::from_millis(300)).await;
        assert!(
            !queued.is_finished(),
            "tenure jumped the queue, or exceeded the limit"
        );
        // Two held, and the waiting tenure acquirer's lease node.
        assert_eq!(children(&look, &leases).await.len(), 3);
        // Curator returns one: the queued tenure acquirer gets it.
        let (p1_releasing, _) = p1.release().await;
        let (got, lease) = queued.await.unwrap();
        assert!(p1_releasing <= got);
        assert_eq!(children(&look, &leases).await.len(), 2);
        lease.release().await.unwrap();
        p2.release().await;
        p1.quit().await;
        p2.quit().await;
        until_children(&look, &leases, 0).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_latch_interop() {
    let Some((addr, launcher)) = peer_or_skip("curator_latch_interop") else {
        return;
    };
    bounded("curator_latch_interop", async {
        let path = unique("curator-latch");
        let zk = connect(&addr).await;
        let look = raw(&addr).await;
        let mut peer = Peer::start(&launcher, &addr, "latch", &path, &["--id", "java"]).await;
        peer.acquire().await;
        let c = children(&look, &path).await;
        assert!(
            c.len() == 1 && c[0].starts_with("_c_") && c[0].contains("-latch-"),
            "{c:?}"
        );
        let latch = LeaderLatch::new(&zk, &path).unwrap().with_id("rust");
        assert_eq!(latch.leader().await.unwrap().as_deref(), Some("java"));
        // tenure joins the election behind Curator.
        let (tx, mut rx) = mpsc::unbounded_channel::<(bool, u64)>();
        let stop = CancellationToken::new();
        let s = stop.clone();
        let l = latch.clone();
        let run = tokio::spawn(async move {
            l.run(s.cancelled_owned(), move |term| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send((true, micros_now()));
                    term.cancelled().await;
                    let _ = tx.send((false, micros_now()));
                }
            })
            .await
        });
        until_children(&look, &path, 2).await;
        sleep(Duration::from_millis(300)).await;
        assert!(rx.try_recv().is_err(), "two leaders");
        // Curator leaves: tenure leads.
        let (releasing, _) = peer.release().await;
        let (up, t) = timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(up && releasing <= t);
        assert_eq!(latch.leader().await.unwrap().as_deref(), Some("rust"));
        // Curator joins again, behind tenure; tenure shuts down: Curator leads.
        peer_enqueue(&mut peer, &look, &path).await;
        peer.quiet(Duration::from_millis(300)).await;
        stop.cancel();
        let (up, stepped_down) = timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(!up);
        let acquired = peer.expect("ACQUIRED").await;
        assert!(stepped_down <= acquired);
        run.await.unwrap().unwrap();
        peer.release().await;
        peer.quit().await;
        until_children(&look, &path, 0).await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// A TCP proxy between one client and the server

/// What to do to the first create request whose path contains the pattern.
#[derive(Clone, Copy, Debug)]
enum Intercept {
    /// Forward it, drop the reply, and cut the connection: the create happened, its reply is
    /// lost.
    DropReply,
    /// Drop it and cut the connection, then refuse connections until `heal`: the create never
    /// happened.
    DropRequest,
}

#[derive(Clone)]
struct Proxy {
    inner: Arc<ProxyInner>,
}

/// A proxy on plain threads (the dev-dependencies' Tokio has no `net`).
struct ProxyInner {
    addr: SocketAddr,
    /// While true, connections carry nothing (and new ones are closed at once).
    down: AtomicBool,
    /// The open connections' sockets, to cut them.
    conns: StdMutex<Vec<std::net::TcpStream>>,
    intercept: StdMutex<Option<(String, Intercept, oneshot::Sender<String>)>>,
    dropped: AtomicUsize,
}

impl Proxy {
    async fn start(upstream: &str) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let inner = Arc::new(ProxyInner {
            addr: listener.local_addr().unwrap(),
            down: AtomicBool::new(false),
            conns: StdMutex::new(Vec::new()),
            intercept: StdMutex::new(None),
            dropped: AtomicUsize::new(0),
        });
        let upstream = upstream.to_owned();
        let p = inner.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                if p.down.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut conns = p.conns.lock().unwrap();
                    conns.push(client.try_clone().unwrap());
                    conns.push(server.try_clone().unwrap());
                }
                start_pumps(p.clone(), client, server);
            }
        });
        Proxy { inner }
    }

    fn addr(&self) -> String {
        self.inner.addr.to_string()
    }

    /// Silences every connection (sockets stay open), and refuses new ones.
    fn blackhole(&self) {
        self.inner.down.store(true, Ordering::SeqCst);
    }

    /// Ends the silence: cuts the silenced connections, so that clients reconnect.
    fn heal(&self) {
        for c in self.inner.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        self.inner.down.store(false, Ordering::SeqCst);
    }

    fn intercept(&self, pattern: &str, what: Intercept) -> oneshot::Receiver<String> {
        let (tx, rx) = oneshot::channel();
        *self.inner.intercept.lock().unwrap() = Some((pattern.to_owned(), what, tx));
        rx
    }

    fn dropped_connections(&self) -> usize {
        self.inner.dropped.load(Ordering::SeqCst)
    }
}

/// The path of a create request (`create`, `create2`, `createContainer`, `createTTL`), if the
/// frame is one. Frame: length, xid, op type, then the path as a length-prefixed string.
fn create_path(frame: &[u8]) -> Option<String> {
    if frame.len() < 16 {
        return None;
    }
    let op = i32::from_be_bytes(frame[8..12].try_into().ok()?);
    if !matches!(op, 1 | 15 | 19 | 21) {
        return None;
    }
    let n = i32::from_be_bytes(frame[12..16].try_into().ok()?) as usize;
    let path = frame.get(16..16 + n)?;
    Some(String::from_utf8_lossy(path).into_owned())
}

fn start_pumps(p: Arc<ProxyInner>, client: std::net::TcpStream, server: std::net::TcpStream) {
    use std::io::{Read, Write};
    let drop_replies = Arc::new(AtomicBool::new(false));
    let cut = {
        let (c, s) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        Arc::new(move || {
            let _ = c.shutdown(std::net::Shutdown::Both);
            let _ = s.shutdown(std::net::Shutdown::Both);
        })
    };
    // Client to server: whole frames, each looked at.
    {
        let (p, drop_replies, cut) = (p.clone(), drop_replies.clone(), cut.clone());
        let (mut cr, mut sw) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut first = true;
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                let n = match cr.read(&mut chunk) {
                    Ok(0) | Err(_) => return cut(),
                    Ok(n) => n,
                };
                if p.down.load(Ordering::SeqCst) {
                    continue; // silenced
                }
                buf.extend_from_slice(&chunk[..n]);
                while buf.len() >= 4 {
                    let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
                    if buf.len() < 4 + len {
                        break;
                    }
                    let frame: Vec<u8> = buf.drain(..4 + len).collect();
                    let mut action = None;
                    if !first {
                        if let Some(path) = create_path(&frame) {
                            let mut slot = p.intercept.lock().unwrap();
                            if slot
                                .as_ref()
                                .is_some_and(|(pat, _, _)| path.contains(pat.as_str()))
                            {
                                let (_, what, tx) = slot.take().unwrap();
                                let _ = tx.send(path);
                                action = Some(what);
                            }
                        }
                    }
                    first = false;
                    match action {
                        None => {
                            if sw.write_all(&frame).is_err() {
                                return cut();
                            }
                        }
                        Some(Intercept::DropReply) => {
                            drop_replies.store(true, Ordering::SeqCst);
                            let _ = sw.write_all(&frame);
                            // Let the server apply it, then cut.
                            std::thread::sleep(Duration::from_millis(200));
                            p.dropped.fetch_add(1, Ordering::SeqCst);
                            return cut();
                        }
                        Some(Intercept::DropRequest) => {
                            p.down.store(true, Ordering::SeqCst);
                            p.dropped.fetch_add(1, Ordering::SeqCst);
                            return cut();
                        }
                    }
                }
            }
        });
    }
    // Server to client.
    {
        let (mut sr, mut cw) = (server, client);
        std::thread::spawn(move || {
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                let n = match sr.read(&mut chunk) {
                    Ok(0) | Err(_) => return cut(),
                    Ok(n) => n,
                };
                if p.down.load(Ordering::SeqCst) || drop_replies.load(Ordering::SeqCst) {
                    continue;
                }
                if cw.write_all(&chunk[..n]).is_err() {
                    return cut();
                }
            }
        });
    }
}
