//! The Redis store against real servers: the conformance suite, garbage, credentials and
//! ACLs, unreachable servers, ages, tokens across a rolled-back record, expiry and eviction,
//! the watch task's failures, a Redis killed with SIGKILL and restarted under a leader, watch
//! events carrying every write's version and record, and the calls an elector makes per role.
//!
//! Servers come from `scripts/test-services.sh` through `TENURE_REDIS_URL`,
//! `TENURE_REDIS_AUTH_URL`, `TENURE_REDIS_LIMITED_URL`, `TENURE_REDIS_NOCHANNELS_URL`,
//! `TENURE_REDIS_AUTH_ADDR` and `TENURE_REDIS_SERVER`. A missing variable fails the test when `TENURE_REQUIRE_BACKENDS=1`,
//! and skips it loudly otherwise.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use rand::Rng;
use tenure::conformance::{async_trait, Harness};
use tenure::redis::RedisStore;
use tenure::{
    Error, LeaderElector, LeaderHandle, LeaseRecord, LeaseStore, LostReason, PutMode, StopReason,
    Stored, Term, Version, WatchEvent, WatchStream,
};
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

#[path = "support/env.rs"]
mod env;
use env::env_or_skip;

fn unique_prefix() -> String {
    let r: u64 = rand::thread_rng().gen();
    format!("tenure-test-{r:016x}:")
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("a valid URL")
        .get_multiplexed_async_connection()
        .await
        .expect("a raw connection")
}

struct RedisHarness {
    url: String,
    prefix: String,
}

impl RedisHarness {
    fn from_env() -> Option<Self> {
        Some(RedisHarness {
            url: env_or_skip("TENURE_REDIS_URL", "redis conformance")?,
            prefix: unique_prefix(),
        })
    }
}

#[async_trait]
impl Harness for RedisHarness {
    type Store = RedisStore;

    async fn store(&self) -> RedisStore {
        RedisStore::options(&self.url)
            .prefix(&self.prefix)
            .timeout(Duration::from_millis(500))
            .connect()
            .await
            .expect("the test Redis connects")
    }

    async fn write_garbage(&self, name: &str) {
        let key = format!("{}{name}", self.prefix);
        let mut c = raw(&self.url).await;
        redis::cmd("SET")
            .arg(&key)
            .arg("{\"holder\": 42, this is not a tenure record")
            .query_async::<()>(&mut c)
            .await
            .expect("garbage written");
    }
}

tenure::conformance_tests!(match RedisHarness::from_env() {
    Some(h) => h,
    None => return,
});

async fn store(url: &str, prefix: &str) -> RedisStore {
    RedisStore::options(url)
        .prefix(prefix)
        .timeout(Duration::from_millis(500))
        .connect()
        .await
        .expect("the test Redis connects")
}

fn rec(holder: &str, transitions: u64) -> LeaseRecord {
    LeaseRecord::held_by(holder, Duration::from_secs(5), transitions)
}

#[tokio::test]
async fn garbage_of_any_shape_is_a_decode_error_and_left_untouched() {
    let Some(url) = env_or_skip("TENURE_REDIS_URL", "garbage_of_any_shape") else {
        return;
    };
    let prefix = unique_prefix();
    let s = store(&url, &prefix).await;
    let mut c = raw(&url).await;
    let bad_version = rec("a", 1).to_json();
    let shapes: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("string", vec![b"SET".to_vec(), b"hello".to_vec()]),
        (
            "hash of another shape",
            vec![b"HSET".to_vec(), b"a".to_vec(), b"b".to_vec()],
        ),
        (
            "hash with a bad version",
            [&b"HSET"[..], b"e", b"x", b"n", b"1", b"rec", &bad_version]
                .map(|a| a.to_vec())
                .to_vec(),
        ),
        (
            "hash with a bad record",
            [&b"HSET"[..], b"e", b"1", b"n", b"1", b"rec", b"{not json"]
                .map(|a| a.to_vec())
                .to_vec(),
        ),
        ("list", vec![b"RPUSH".to_vec(), b"x".to_vec()]),
        ("set", vec![b"SADD".to_vec(), b"x".to_vec()]),
    ];
    for (i, (what, words)) in shapes.into_iter().enumerate() {
        let name = format!("g{i}");
        let key = s.key_of(&name).unwrap();
        let mut cmd = redis::cmd(std::str::from_utf8(&words[0]).unwrap());
        cmd.arg(&key);
        for w in &words[1..] {
            cmd.arg(w);
        }
        cmd.query_async::<()>(&mut c).await.unwrap();
        let before: Vec<u8> = redis::cmd("DUMP")
            .arg(&key)
            .query_async(&mut c)
            .await
            .unwrap();
        match s.get(&name).await {
            Err(Error::Decode {
                store,
                key: k,
                source,
            }) => {
                assert_eq!(store, "redis");
                assert_eq!(k, key, "{what}: the error names the full key");
                eprintln!("{what}: {source}");
            }
            other => panic!("{what}: expected Decode, got {other:?}"),
        }
        let e = s.put(&name, &rec("x", 1), PutMode::Create).await;
        assert!(
            matches!(e, Err(Error::AlreadyExists { .. })),
            "{what}: {e:?}"
        );
        for v in ["1.1", "x.1", "0", "garbage"] {
            let e = s
                .put(&name, &rec("x", 1), PutMode::Update(Version::new(v)))
                .await;
            assert!(
                matches!(e, Err(Error::Decode { .. } | Error::Conflict { .. })),
                "{what}: update with {v}: {e:?}"
            );
            let e = s.delete(&name, &Version::new(v)).await;
            assert!(e.is_err(), "{what}: delete with {v} succeeded");
        }
        let after: Vec<u8> = redis::cmd("DUMP")
            .arg(&key)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(before, after, "{what}: the garbage was changed");
    }
}

#[tokio::test]
async fn layout_prefix_database_and_seeded_tokens() {
    let Some(url) = env_or_skip("TENURE_REDIS_URL", "layout_prefix_database") else {
        return;
    };
    let prefix = unique_prefix();
    let a = store(&url, &prefix).await;
    let b = store(&url, &format!("{prefix}other:")).await;
    let mut c = raw(&url).await;
    let server_us = |t: (u64, u64)| t.0 * 1_000_000 + t.1;
    let before: (u64, u64) = redis::cmd("TIME").query_async(&mut c).await.unwrap();

    let v1 = a.put("job", &rec("me", 1), PutMode::Create).await.unwrap();
    let (r1, gv) = a.get("job").await.unwrap().unwrap().into_parts();
    assert_eq!(gv, v1);
    assert!(
        r1.transitions >= server_us(before),
        "the created token {} is not seeded from the server's clock ({})",
        r1.transitions,
        server_us(before)
    );
    // The hash holds the record, its version and its write time (the server's clock) under
    // the prefixed key. A held record carries no expiry.
    let key = a.key_of("job").unwrap();
    assert_eq!(key, format!("{prefix}job"));
    let c2 = c.clone();
    let hget = |field: &'static str| {
        let key = key.clone();
        let mut c = c2.clone();
        async move {
            redis::cmd("HGET")
                .arg(&key)
                .arg(field)
                .query_async::<Vec<u8>>(&mut c)
                .await
                .unwrap()
        }
    };
    let pttl = || {
        let key = key.clone();
        let mut c = c2.clone();
        async move {
            redis::cmd("PTTL")
                .arg(&key)
                .query_async::<i64>(&mut c)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        LeaseRecord::from_json("t", "k", &hget("rec").await).unwrap(),
        r1
    );
    let written: u64 = String::from_utf8(hget("w").await).unwrap().parse().unwrap();
    assert!(written >= server_us(before), "w = {written}");
    assert_eq!(pttl().await, -1, "a held record has an expiry");
    // Another prefix is another namespace.
    assert!(b.get("job").await.unwrap().is_none());

    // A renewal (same token) stores the token exactly.
    let v_renewed = a.put("job", &r1, PutMode::Update(v1)).await.unwrap();
    assert_eq!(
        a.get("job").await.unwrap().unwrap().record.transitions,
        r1.transitions
    );
    // A write that starts a term (another token) stores at least the server's clock.
    let mut r2 = r1.clone();
    r2.transitions += 5;
    r2.holder = Some("you".into());
    let clock: (u64, u64) = redis::cmd("TIME").query_async(&mut c).await.unwrap();
    let v2 = a.put("job", &r2, PutMode::Update(v_renewed)).await.unwrap();
    let (got2, gv2) = a.get("job").await.unwrap().unwrap().into_parts();
    assert_eq!(gv2, v2);
    assert!(
        got2.transitions >= r2.transitions && got2.transitions >= server_us(clock),
        "a new term stored token {} (asked {}, server clock {})",
        got2.transitions,
        r2.transitions,
        server_us(clock)
    );
    assert_eq!(
        LeaseRecord {
            transitions: r2.transitions,
            ..got2.clone()
        },
        r2,
        "the rest of the record is stored as given"
    );
    assert!(
        String::from_utf8(hget("h").await)
            .unwrap()
            .starts_with(&format!("{}|", got2.transitions)),
        "the term tag carries the stored token"
    );
    // A release keeps the token and gives the vacant record the garbage expiry.
    let mut vacant = got2.clone();
    vacant.holder = None;
    let v3 = a.put("job", &vacant, PutMode::Update(v2)).await.unwrap();
    assert_eq!(
        a.get("job").await.unwrap().unwrap().record.transitions,
        got2.transitions
    );
    let ttl = pttl().await;
    assert!(ttl > 50_000, "a vacant record's expiry is {ttl} ms");
    // A re-created record starts above the deleted one.
    a.delete("job", &v3).await.unwrap();
    a.put("job", &rec("me", 1), PutMode::Create).await.unwrap();
    let (r3, _) = a.get("job").await.unwrap().unwrap().into_parts();
    assert!(
        r3.transitions > got2.transitions,
        "{} after {}",
        r3.transitions,
        got2.transitions
    );
    // A token asked above the server's clock is stored as asked.
    let ahead = server_us(clock) + 1_000_000_000_000;
    let va = a
        .put("ahead", &rec("me", 1), PutMode::Create)
        .await
        .unwrap();
    a.put("ahead", &rec("me", ahead), PutMode::Update(va))
        .await
        .unwrap();
    assert_eq!(
        a.get("ahead").await.unwrap().unwrap().record.transitions,
        ahead
    );

    // A database number in the URL selects that database.
    let url3 = format!("{}3", url.trim_end_matches('/').to_owned() + "/");
    let d3 = store(&url3, &prefix).await;
    d3.put("db", &rec("me", 1), PutMode::Create).await.unwrap();
    let mut c3 = raw(&url3).await;
    let n: i64 = redis::cmd("EXISTS")
        .arg(format!("{prefix}db"))
        .query_async(&mut c3)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let n: i64 = redis::cmd("EXISTS")
        .arg(format!("{prefix}db"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 0);

    // Names: empty and over-long names are refused, everything else is a key of its own.
    assert!(matches!(a.get("").await, Err(Error::InvalidName { .. })));
    assert!(matches!(
        a.get(&"x".repeat(1025)).await,
        Err(Error::InvalidName { .. })
    ));
    a.put(&"é".repeat(512), &rec("me", 1), PutMode::Create)
        .await
        .unwrap();
}

#[tokio::test]
async fn credentials_are_checked_and_wrong_ones_are_final() {
    let (Some(good), Some(limited), Some(addr)) = (
        env_or_skip("TENURE_REDIS_AUTH_URL", "credentials"),
        env_or_skip("TENURE_REDIS_LIMITED_URL", "credentials"),
        env_or_skip("TENURE_REDIS_AUTH_ADDR", "credentials"),
    ) else {
        return;
    };
    let s = store(&good, &unique_prefix()).await;
    s.put("a", &rec("me", 1), PutMode::Create).await.unwrap();
    assert!(s.get("a").await.unwrap().is_some());

    for url in [
        format!("redis://tenure:wrong@{addr}/"),
        format!("redis://nobody:wrong@{addr}/"),
        format!("redis://:wrong@{addr}/"),
        format!("redis://{addr}/"),
    ] {
        let started = Instant::now();
        let r = RedisStore::options(&url)
            .timeout(Duration::from_secs(3))
            .connect()
            .await;
        match r {
            Err(Error::PermissionDenied { store, source, .. }) => {
                assert_eq!(store, "redis");
                eprintln!("{url}: {source}");
            }
            other => panic!("{url}: expected PermissionDenied, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{url}: took {:?}: retried instead of failing",
            started.elapsed()
        );
    }

    // A user that may connect but not run scripts: every call is PermissionDenied, and an
    // elector gives up with that error instead of retrying.
    let s = store(&limited, &unique_prefix()).await;
    let e = s.get("a").await;
    assert!(matches!(e, Err(Error::PermissionDenied { .. })), "{e:?}");
    let e = s.put("a", &rec("me", 1), PutMode::Create).await;
    assert!(matches!(e, Err(Error::PermissionDenied { .. })), "{e:?}");
    let elector = LeaderElector::builder(s, "denied").build().unwrap();
    let r = timeout(
        Duration::from_secs(5),
        elector.run(std::future::pending::<()>(), |_t: Term| async {}),
    )
    .await
    .expect("run ends at once on a permission error");
    assert!(matches!(r, Err(Error::PermissionDenied { .. })), "{r:?}");
}

#[tokio::test]
async fn unreachable_servers_time_out_within_the_bound() {
    let bound = Duration::from_millis(300);
    let slack = Duration::from_millis(300);
    // Nothing listening on the port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // A peer that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    for (what, url) in [
        ("nothing listening", format!("redis://127.0.0.1:{port}/")),
        ("a silent peer", format!("redis://127.0.0.1:{silent_port}/")),
    ] {
        let started = Instant::now();
        let r = RedisStore::options(&url).timeout(bound).connect().await;
        let took = started.elapsed();
        assert!(
            matches!(r, Err(Error::Timeout { after, .. }) if after == bound),
            "{what}: expected Timeout, got {r:?}"
        );
        assert!(took < bound + slack, "{what}: took {took:?}");
    }
    drop(silent);
    // Invalid URLs are configuration errors.
    for url in [
        "http://127.0.0.1/",
        "redis://127.0.0.1:notaport/",
        "nonsense",
    ] {
        let r = RedisStore::connect(url).await;
        assert!(matches!(r, Err(Error::Config { .. })), "{url}: {r:?}");
    }
}

/// A record deleted behind the leader's back (without any notification) ends its term at its
/// next renewal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_record_vanished_steps_down() {
    let Some(url) = env_or_skip("TENURE_REDIS_URL", "record_vanished") else {
        return;
    };
    let prefix = unique_prefix();
    let s = store(&url, &prefix).await;
    let (elector, stops) = candidate(s.clone(), "vanish", "a");
    let handle = elector.handle();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(elector.run(shutdown.clone().cancelled_owned(), work));
    let term = timeout(Duration::from_secs(5), handle.leading())
        .await
        .unwrap()
        .unwrap();
    let mut c = raw(&url).await;
    redis::cmd("DEL")
        .arg(s.key_of("vanish").unwrap())
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    let gone = Instant::now();
    timeout(Duration::from_secs(2), term.cancelled())
        .await
        .unwrap();
    assert!(
        gone.elapsed() < RETRY * 3,
        "stepped down after {:?}",
        gone.elapsed()
    );
    // The reason is recorded before the token is cancelled; `on_stopped_leading` fires just
    // after, so read the term's own record of it.
    let why = term.stop_reason();
    assert!(
        matches!(why, Some(StopReason::Lost(LostReason::Deleted))),
        "{why:?}"
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let first = stops.lock().unwrap().first().cloned();
    assert_eq!(first, why, "on_stopped_leading was told another reason");
}

const LEASE: Duration = Duration::from_millis(1000);
const DEADLINE: Duration = Duration::from_millis(600);
const RETRY: Duration = Duration::from_millis(150);

type Stops = Arc<Mutex<Vec<StopReason>>>;

fn candidate(s: RedisStore, name: &str, id: &str) -> (LeaderElector<RedisStore>, Stops) {
    let stops = Stops::default();
    let st = stops.clone();
    let e = LeaderElector::builder(s, name)
        .identity(id)
        .lease_duration(LEASE)
        .renew_deadline(DEADLINE)
        .retry_period(RETRY)
        .on_stopped_leading(move |why| st.lock().unwrap().push(why.clone()))
        .build()
        .unwrap();
    (e, stops)
}

async fn work(t: Term) {
    t.cancelled().await;
}

/// Waits for a term with a token above `above` on any handle.
async fn next_term(handles: &[LeaderHandle], above: u64, bound: Duration) -> Term {
    let deadline = Instant::now() + bound;
    loop {
        for h in handles {
            if let tenure::LeaderState::Leading(t) = h.current() {
                if !t.is_cancelled() && t.fencing_token() > above {
                    return t;
                }
            }
        }
        assert!(Instant::now() < deadline, "no new leader within {bound:?}");
        sleep(Duration::from_millis(5)).await;
    }
}

/// A private Redis without persistence on a fixed port, killed with SIGKILL and restarted.
struct PrivateRedis {
    bin: String,
    port: u16,
    child: Option<tokio::process::Child>,
}

impl PrivateRedis {
    async fn start(bin: &str) -> Self {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut r = PrivateRedis {
            bin: bin.to_owned(),
            port,
            child: None,
        };
        r.restart().await;
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    async fn restart(&mut self) {
        let dir = std::env::temp_dir();
        let child = tokio::process::Command::new(&self.bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--logfile", ""])
            .arg("--dir")
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        for _ in 0..200 {
            if let Ok(c) = redis::Client::open(self.url()) {
                if let Ok(mut c) = c.get_multiplexed_async_connection().await {
                    if redis::cmd("PING")
                        .query_async::<String>(&mut c)
                        .await
                        .is_ok()
                    {
                        return;
                    }
                }
            }
            sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "the private redis-server on port {} did not start",
            self.port
        );
    }

    async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // tokio's kill is SIGKILL on Unix.
            c.kill().await.expect("SIGKILL");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_under_a_leader() {
    let Some(bin) = env_or_skip("TENURE_REDIS_SERVER", "redis_killed_and_restarted") else {
        return;
    };
    let mut server = PrivateRedis::start(&bin).await;
    let url = server.url();
    let mut handles = Vec::new();
    let mut tasks = Vec::new();
    let shutdown = CancellationToken::new();
    for id in ["a", "b", "c"] {
        let s = RedisStore::options(&url)
            .timeout(Duration::from_millis(200))
            .connect()
            .await
            .unwrap();
        let (e, _) = candidate(s, "crash", id);
        handles.push(e.handle());
        tasks.push(tokio::spawn(
            e.run(shutdown.clone().cancelled_owned(), work),
        ));
    }
    // A few terms before the crash.
    let mut before = Vec::new();
    let mut last = 0;
    for _ in 0..3 {
        let t = next_term(&handles, last, LEASE * 4).await;
        last = t.fencing_token();
        before.push(last);
        sleep(RETRY * 3).await;
        // Hand over by deleting the record behind the leader's back: a term ends, the next
        // one is created afresh.
        let mut c = raw(&url).await;
        redis::cmd("DEL")
            .arg("tenure:crash")
            .query_async::<()>(&mut c)
            .await
            .unwrap();
        timeout(LEASE, t.cancelled()).await.unwrap();
    }
    let t = next_term(&handles, last, LEASE * 4).await;
    last = t.fencing_token();
    before.push(last);
    sleep(RETRY * 3).await;
    assert!(t.is_valid());

    server.kill().await;
    let killed = Instant::now();
    timeout(DEADLINE + Duration::from_millis(400), t.cancelled())
        .await
        .expect("the leader steps down within its renew deadline of the crash");
    let stepped = killed.elapsed();
    assert!(
        t.valid_until() <= killed + DEADLINE,
        "the term was valid beyond the renew deadline"
    );
    sleep(LEASE).await;
    assert!(
        handles.iter().all(|h| !h.is_leader()),
        "a leader without Redis"
    );

    server.restart().await;
    let restarted = Instant::now();
    let after = next_term(&handles, 0, Duration::from_secs(10)).await;
    let elected = restarted.elapsed();
    assert!(
        before.iter().all(|b| after.fencing_token() > *b),
        "token {} after the restart is not above {before:?}",
        after.fencing_token()
    );
    // And later terms keep increasing.
    let mut c = raw(&url).await;
    redis::cmd("DEL")
        .arg("tenure:crash")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    let later = next_term(&handles, after.fencing_token(), LEASE * 4).await;
    assert!(later.fencing_token() > after.fencing_token());
    eprintln!(
        "stepped down {stepped:?} after SIGKILL; new leader {elected:?} after restart; \
         tokens before {before:?}, after {} and {}",
        after.fencing_token(),
        later.fencing_token()
    );
    shutdown.cancel();
    for task in tasks {
        timeout(LEASE * 3, task).await.unwrap().unwrap().unwrap();
    }
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_wakes_after_a_restart() {
    let Some(bin) = env_or_skip("TENURE_REDIS_SERVER", "watch_wakes_after_a_restart") else {
        return;
    };
    let mut server = PrivateRedis::start(&bin).await;
    let s = RedisStore::options(server.url())
        .timeout(Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    // The subscription itself yields a hint.
    let mut w = subscribed(&s, "w").await;
    let v = s.put("w", &rec("a", 1), PutMode::Create).await.unwrap();
    let e = next_event(&mut w).await;
    assert!(matches!(&e, WatchEvent::Put(p) if p.version == v), "{e:?}");
    // Renewals (same holder, same term) are announced too.
    let (r, _) = s.get("w").await.unwrap().unwrap().into_parts();
    let v2 = s.put("w", &r, PutMode::Update(v)).await.unwrap();
    let e = next_event(&mut w).await;
    assert!(matches!(&e, WatchEvent::Put(p) if p.version == v2), "{e:?}");
    server.kill().await;
    server.restart().await;
    // After reconnecting, the watch yields a hint (a gap: re-read) without any write.
    let e = timeout(Duration::from_secs(10), w.next())
        .await
        .expect("a hint after the restart")
        .unwrap()
        .unwrap();
    assert_eq!(e, WatchEvent::Hint);
    let c = s.put("w", &rec("b", 1), PutMode::Create).await;
    assert!(c.is_ok(), "{c:?}");
    let e = next_event(&mut w).await;
    assert!(
        matches!(&e, WatchEvent::Put(p) if Some(&p.version) == c.as_ref().ok()),
        "{e:?}"
    );
    server.kill().await;
}

// ---------------------------------------------------------------------------------------------
// Safety regressions: each of these failed on the code before the fix it is named after.
// ---------------------------------------------------------------------------------------------

async fn dump(c: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<u8> {
    redis::cmd("DUMP").arg(key).query_async(c).await.unwrap()
}

/// Redis loses the last writes (a restart, `appendfsync everysec`, a failover to a lagging
/// replica): reproduced by restoring an older `DUMP` of the key. The next term's token must
/// still be above every token issued before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_repeat_after_redis_rolls_back_a_record() {
    let Some(url) = env_or_skip("TENURE_REDIS_URL", "rolls_back") else {
        return;
    };
    let prefix = unique_prefix();
    let key = format!("{prefix}rollback");
    let mut c = raw(&url).await;
    let shutdown = CancellationToken::new();
    let (a, _) = candidate(store(&url, &prefix).await, "rollback", "a");
    let ha = a.handle();
    let sd_a = CancellationToken::new();
    let task_a = tokio::spawn(a.run(sd_a.clone().cancelled_owned(), work));
    let ta = next_term(std::slice::from_ref(&ha), 0, LEASE * 4).await;
    // The state "a leads with T", as a lagging replica would still have it.
    let old = dump(&mut c, &key).await;
    sd_a.cancel();
    task_a.await.unwrap().unwrap();
    let (b, _) = candidate(store(&url, &prefix).await, "rollback", "b");
    let hb = b.handle();
    let task_b = tokio::spawn(b.run(shutdown.clone().cancelled_owned(), work));
    let tb = next_term(std::slice::from_ref(&hb), ta.fencing_token(), LEASE * 4).await;
    // b dies, and Redis comes back with the older state.
    task_b.abort();
    let _ = task_b.await;
    redis::cmd("RESTORE")
        .arg(&key)
        .arg(0)
        .arg(old)
        .arg("REPLACE")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    let (cand, _) = candidate(store(&url, &prefix).await, "rollback", "c");
    let hc = cand.handle();
    let task_c = tokio::spawn(cand.run(shutdown.clone().cancelled_owned(), work));
    let tc = next_term(&[hc], 0, LEASE * 6).await;
    assert!(
        tc.fencing_token() > tb.fencing_token(),
        "after the rollback, token {} repeats or goes below {} (a's was {})",
        tc.fencing_token(),
        tb.fencing_token(),
        ta.fencing_token()
    );
    shutdown.cancel();
    task_c.await.unwrap().unwrap();
}

/// ACL log entries for `user` refused a channel starting with `chan` (other tests refuse the
/// same user other channels at the same time).
async fn channel_denials(
    admin: &mut redis::aio::MultiplexedConnection,
    user: &str,
    chan: &str,
) -> i64 {
    let entries: Vec<redis::Value> = redis::cmd("ACL")
        .arg("LOG")
        .arg(128)
        .query_async(admin)
        .await
        .unwrap();
    let mut total = 0;
    for e in entries {
        let redis::Value::Array(fields) = e else {
            continue;
        };
        let text = |v: &redis::Value| match v {
            redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            redis::Value::SimpleString(s) => s.clone(),
            redis::Value::Int(i) => i.to_string(),
            _ => String::new(),
        };
        let map: std::collections::HashMap<String, String> = fields
            .chunks(2)
            .filter_map(|kv| Some((text(kv.first()?), text(kv.get(1)?))))
            .collect();
        if map.get("username").map(String::as_str) == Some(user)
            && map.get("reason").map(String::as_str) == Some("channel")
            && map.get("object").is_some_and(|o| o.starts_with(chan))
        {
            total += map.get("count").and_then(|c| c.parse().ok()).unwrap_or(1);
        }
    }
    total
}

/// A watch whose `SUBSCRIBE` is refused (an ACL user without channel rights) yields
/// `PermissionDenied` and ends instead of reconnecting in a loop, and the watch task ends when
/// the store and its watches are dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_subscribe_backs_off_and_ends_with_the_store() {
    let (Some(admin_url), Some(url)) = (
        env_or_skip("TENURE_REDIS_AUTH_URL", "refused_subscribe"),
        env_or_skip("TENURE_REDIS_NOCHANNELS_URL", "refused_subscribe"),
    ) else {
        return;
    };
    let mut admin = raw(&admin_url).await;
    let s = store(&url, &unique_prefix()).await;
    let chan = s.channel_of("x").unwrap();
    let before = channel_denials(&mut admin, "nochannels", &chan).await;
    let started = Instant::now();
    let mut w = s.watch("x").expect("Redis can watch");
    match timeout(Duration::from_secs(2), w.next()).await {
        Ok(Some(Err(Error::PermissionDenied {
            store,
            operation,
            name,
            ..
        }))) => {
            assert_eq!((store, operation, name.as_str()), ("redis", "watch", "x"));
        }
        other => panic!("expected PermissionDenied from the watch, got {other:?}"),
    }
    let end = timeout(Duration::from_secs(2), w.next()).await;
    assert!(
        matches!(end, Ok(None)),
        "the watch goes on after PermissionDenied: {end:?}"
    );
    sleep(Duration::from_secs(2).saturating_sub(started.elapsed())).await;
    let during = channel_denials(&mut admin, "nochannels", &chan).await - before;
    eprintln!("{during} refused SUBSCRIBE(s) in 2 s");
    assert!(during >= 1, "the watch never tried to subscribe");
    assert!(
        during <= 15,
        "{during} refused SUBSCRIBEs in 2 s: reconnecting without backoff"
    );
    drop(w);
    drop(s);
    sleep(Duration::from_millis(1500)).await;
    let settled = channel_denials(&mut admin, "nochannels", &chan).await;
    sleep(Duration::from_secs(2)).await;
    let after = channel_denials(&mut admin, "nochannels", &chan).await;
    assert_eq!(
        after, settled,
        "the watch task kept subscribing after the store was dropped"
    );
}

/// A live lease is never a candidate for `volatile-*` eviction: only vacant records carry an
/// expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_records_carry_no_expiry() {
    let Some(url) = env_or_skip("TENURE_REDIS_URL", "held_records_carry_no_expiry") else {
        return;
    };
    let prefix = unique_prefix();
    let s = store(&url, &prefix).await;
    let mut c = raw(&url).await;
    let key = s.key_of("held").unwrap();
    let pttl = |c: &mut redis::aio::MultiplexedConnection| {
        let key = key.clone();
        let mut c = c.clone();
        async move {
            redis::cmd("PTTL")
                .arg(&key)
                .query_async::<i64>(&mut c)
                .await
                .unwrap()
        }
    };
    let v1 = s.put("held", &rec("a", 1), PutMode::Create).await.unwrap();
    assert_eq!(pttl(&mut c).await, -1, "a held record has an expiry");
    let v2 = s
        .put("held", &rec("a", 1), PutMode::Update(v1))
        .await
        .unwrap();
    assert_eq!(pttl(&mut c).await, -1, "a renewed record has an expiry");
    let mut vacant = rec("a", 1);
    vacant.holder = None;
    s.put("held", &vacant, PutMode::Update(v2)).await.unwrap();
    assert!(pttl(&mut c).await > 0, "a vacant record never expires");
}

/// The same, under memory pressure on a server that evicts `volatile-ttl`: the leader's
/// record survives while the server evicts other keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_never_takes_a_live_lease() {
    let Some(bin) = env_or_skip("TENURE_REDIS_SERVER", "eviction_never_takes_a_live_lease") else {
        return;
    };
    let server = PrivateRedis::start(&bin).await;
    let url = server.url();
    let mut c = raw(&url).await;
    for (k, v) in [("maxmemory", "4mb"), ("maxmemory-policy", "volatile-ttl")] {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg(k)
            .arg(v)
            .query_async::<()>(&mut c)
            .await
            .unwrap();
    }
    let s = RedisStore::options(&url)
        .timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    let (e, _) = candidate(s.clone(), "live", "a");
    let h = e.handle();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(e.run(shutdown.clone().cancelled_owned(), work));
    let term = next_term(std::slice::from_ref(&h), 0, LEASE * 4).await;
    // Fill the server with keys that expire in an hour until it evicts.
    let filler = "x".repeat(4096);
    for i in 0..4000 {
        let _ = redis::cmd("SET")
            .arg(format!("filler:{i}"))
            .arg(&filler)
            .arg("EX")
            .arg(3600)
            .query_async::<redis::Value>(&mut c)
            .await;
    }
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut c)
        .await
        .unwrap();
    let evicted: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("evicted_keys:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(evicted > 100, "the server did not evict ({evicted})");
    assert!(
        !term.is_cancelled(),
        "the leader lost its lease to eviction"
    );
    assert!(s.get("live").await.unwrap().is_some());
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// A fresh process's first `try_lock` counts how long the dead holder's record has stood, by
/// the Redis server's own clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_process_try_lock_takes_an_expired_lock() {
    let Some(url) = env_or_skip("TENURE_REDIS_URL", "fresh_try_lock") else {
        return;
    };
    let prefix = unique_prefix();
    let m = |s: RedisStore, id: &str| {
        tenure::lock::Mutex::builder(s, "fresh")
            .identity(id)
            .lease_duration(LEASE)
            .renew_deadline(DEADLINE)
            .retry_period(RETRY)
            .build()
            .unwrap()
    };
    m(store(&url, &prefix).await, "a")
        .lock(None)
        .await
        .unwrap()
        .abandon();
    sleep(LEASE + Duration::from_millis(300)).await;
    let g = m(store(&url, &prefix).await, "b").try_lock().await;
    assert!(g.is_ok(), "{g:?}");
}

/// `get` reports how long ago the version was written, on the Redis server's clock: small
/// right after a write, growing while nobody writes, small again after a renewal, and unknown
/// for a hash written by an older tenure (no write time) until its next write.
#[tokio::test]
async fn get_reports_an_age_on_the_servers_clock() {
    let Some(url) = env_or_skip("TENURE_REDIS_URL", "get_reports_an_age") else {
        return;
    };
    let s = store(&url, &unique_prefix()).await;
    let mut c = raw(&url).await;
    let fresh = Duration::from_millis(200);
    let v1 = s.put("aged", &rec("a", 1), PutMode::Create).await.unwrap();
    let first = s.get("aged").await.unwrap().unwrap();
    let a0 = first.age.expect("Redis reports ages");
    assert!(a0 < fresh, "age {a0:?} right after the write");
    sleep(Duration::from_millis(400)).await;
    let a1 = s.get("aged").await.unwrap().unwrap().age.unwrap();
    assert!(
        a1 >= Duration::from_millis(400) && a1 < Duration::from_millis(400) + fresh * 2,
        "age {a1:?} after 400 ms"
    );
    assert!(a1 > a0);
    // A renewal is a new write: young again.
    let v2 = s
        .put("aged", &first.record, PutMode::Update(v1))
        .await
        .unwrap();
    let a2 = s.get("aged").await.unwrap().unwrap().age.unwrap();
    assert!(a2 < fresh, "age {a2:?} right after a renewal");
    // Written by an older tenure: no age, the record still reads.
    redis::cmd("HDEL")
        .arg(s.key_of("aged").unwrap())
        .arg("w")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    let old = s.get("aged").await.unwrap().unwrap();
    assert_eq!(old.age, None);
    assert_eq!(old.version, v2);
    s.put("aged", &old.record, PutMode::Update(v2))
        .await
        .unwrap();
    let a3 = s.get("aged").await.unwrap().unwrap().age;
    assert!(
        a3.is_some_and(|a| a < fresh),
        "age {a3:?} after the next write"
    );
}

/// An ACL user without channel rights: reads work, but every write — each one publishes: a
/// create, a renewal, a new term, a release, a delete — is `PermissionDenied` and writes
/// nothing, and an elector stops with `PermissionDenied` — fresh, or following a live holder
/// (where only its watch is refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_channel_rights_writes_that_publish_fail_and_an_elector_stops() {
    let (Some(admin_url), Some(url)) = (
        env_or_skip("TENURE_REDIS_AUTH_URL", "without_channel_rights"),
        env_or_skip("TENURE_REDIS_NOCHANNELS_URL", "without_channel_rights"),
    ) else {
        return;
    };
    let prefix = unique_prefix();
    let admin = store(&admin_url, &prefix).await;
    let s = store(&url, &prefix).await;
    let denied = |what: &str, r: tenure::Result<()>| match r {
        Err(Error::PermissionDenied { store, source, .. }) => {
            assert_eq!(store, "redis");
            eprintln!("{what}: {source}");
        }
        other => panic!("{what}: expected PermissionDenied, got {other:?}"),
    };
    assert!(s.get("n").await.unwrap().is_none());
    denied(
        "create",
        s.put("n", &rec("me", 1), PutMode::Create).await.map(drop),
    );
    assert!(
        s.get("n").await.unwrap().is_none(),
        "a refused create wrote"
    );

    let v1 = admin
        .put("n", &rec("me", 1), PutMode::Create)
        .await
        .unwrap();
    let held = s.get("n").await.unwrap().unwrap().record;
    denied(
        "renewal",
        s.put("n", &held, PutMode::Update(v1.clone()))
            .await
            .map(drop),
    );
    let v2 = v1;
    let mut next = held.clone();
    next.transitions += 1;
    next.holder = Some("you".into());
    denied(
        "new term",
        s.put("n", &next, PutMode::Update(v2.clone()))
            .await
            .map(drop),
    );
    let mut vacant = held.clone();
    vacant.holder = None;
    denied(
        "release",
        s.put("n", &vacant, PutMode::Update(v2.clone()))
            .await
            .map(drop),
    );
    denied("delete", s.delete("n", &v2).await);
    let now = s.get("n").await.unwrap().unwrap();
    assert_eq!(
        (now.version, now.record),
        (v2, held),
        "a refused write changed the record"
    );

    for (what, name) in [("fresh", "elected"), ("following a live holder", "n")] {
        let elector = LeaderElector::builder(store(&url, &prefix).await, name)
            .identity("c")
            .lease_duration(LEASE)
            .renew_deadline(DEADLINE)
            .retry_period(RETRY)
            .build()
            .unwrap();
        let r = timeout(
            Duration::from_secs(5),
            elector.run(std::future::pending::<()>(), |_t: Term| async {}),
        )
        .await
        .unwrap_or_else(|_| panic!("{what}: the elector kept running without channel rights"));
        denied(what, r.map(drop));
    }
}

/// A TCP port for the watch connection to fail on: it accepts connections and closes them at
/// once, or (when `silent`) keeps them open without ever answering. Counts the connections.
struct FailingPort {
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    silent: Arc<std::sync::atomic::AtomicBool>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FailingPort {
    fn bind(port: u16) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
        listener.set_nonblocking(true).unwrap();
        let mut me = FailingPort {
            accepted: Default::default(),
            silent: Default::default(),
            stop: Default::default(),
            thread: None,
        };
        let (accepted, silent, stop) = (me.accepted.clone(), me.silent.clone(), me.stop.clone());
        let thread = std::thread::spawn(move || {
            let mut kept = Vec::new();
            while !stop.load(Relaxed) {
                match listener.accept() {
                    Ok((sock, _)) => {
                        accepted.fetch_add(1, Relaxed);
                        if silent.load(Relaxed) {
                            kept.push(sock);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        me.thread = Some(thread);
        me
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for FailingPort {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// When the watch connection keeps failing for another reason than permission (here: the
/// server's port closes every connection), the watch task backs off instead of reconnecting
/// in a loop, still serves its commands meanwhile (a dropped watch stops the reconnecting),
/// and ends with the store while backing off and while waiting on a silent server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_watch_connection_backs_off_and_ends_with_the_store() {
    let Some(bin) = env_or_skip("TENURE_REDIS_SERVER", "failing_watch_connection") else {
        return;
    };
    let mut server = PrivateRedis::start(&bin).await;
    let quick = RedisStore::options(server.url())
        .timeout(Duration::from_millis(300))
        .connect()
        .await
        .unwrap();
    let slow = RedisStore::options(server.url())
        .timeout(Duration::from_secs(20))
        .connect()
        .await
        .unwrap();
    server.kill().await;
    let port = FailingPort::bind(server.port);

    // Backing off.
    let w = quick.watch("x").unwrap();
    sleep(Duration::from_secs(2)).await;
    let attempts = port.accepted();
    eprintln!("{attempts} watch connections in 2 s while each one failed");
    assert!(attempts >= 1, "the watch never connected");
    assert!(
        attempts <= 15,
        "{attempts} connections in 2 s: reconnecting without backoff"
    );
    // Dropping the last watch stops the reconnecting, even in the middle of a pause.
    drop(w);
    sleep(Duration::from_millis(300)).await;
    let settled = port.accepted();
    sleep(Duration::from_secs(3)).await;
    assert_eq!(
        port.accepted(),
        settled,
        "the watch task reconnected with nobody watching"
    );
    // Dropping the store ends the task (and so its watches) while it backs off.
    let mut w = quick.watch("y").unwrap();
    sleep(Duration::from_millis(700)).await;
    drop(quick);
    let end = timeout(Duration::from_millis(500), w.next()).await;
    assert!(
        matches!(end, Ok(None)),
        "the watch outlived its store while backing off: {end:?}"
    );

    // A server that accepts and never answers: the task waits on its 20 s timeout, and still
    // ends at once with the store.
    port.silent
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let before = port.accepted();
    let mut w = slow.watch("z").unwrap();
    sleep(Duration::from_millis(500)).await;
    assert!(port.accepted() > before, "the watch never connected");
    drop(slow);
    let end = timeout(Duration::from_millis(500), w.next()).await;
    assert!(
        matches!(end, Ok(None)),
        "the watch outlived its store while connecting: {end:?}"
    );
}

/// A healthy watch ends soon after its store is dropped: the watch task does not outlive the
/// store, even while watches remain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_ends_when_its_store_is_dropped() {
    let Some(url) = env_or_skip("TENURE_REDIS_URL", "a_watch_ends_with_its_store") else {
        return;
    };
    let s = store(&url, &unique_prefix()).await;
    let mut w = s.watch("x").unwrap();
    // Subscribed: the first wake-up.
    timeout(Duration::from_secs(2), w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    drop(s);
    let end = timeout(Duration::from_secs(1), w.next()).await;
    assert!(
        matches!(end, Ok(None)),
        "the watch outlived its store: {end:?}"
    );
}

/// The ACL the module documentation recommends (`src/redis.rs`, "Permissions") is enough for
/// everything tenure does: reads, every kind of write, delete, watch, and an elector handing
/// over to another through the watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acl_is_enough() {
    let Some(bin) = env_or_skip("TENURE_REDIS_SERVER", "the_documented_acl_is_enough") else {
        return;
    };
    let server = PrivateRedis::start(&bin).await;
    let mut admin = raw(&server.url()).await;
    let acl = "app on >secret resetkeys ~tenure:* resetchannels &tenure:chan:* -@all \
               +evalsha +script|load +subscribe +unsubscribe +ping +type +hmget +hset \
               +pexpire +persist +del +publish +time";
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER");
    for word in acl.split_whitespace() {
        cmd.arg(word);
    }
    cmd.query_async::<()>(&mut admin).await.unwrap();
    let url = format!("redis://app:secret@127.0.0.1:{}/", server.port);
    let s = RedisStore::options(&url)
        .timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    let mut w = s.watch("acl").unwrap();
    timeout(Duration::from_secs(2), w.next())
        .await
        .expect("the watch subscribes")
        .unwrap()
        .unwrap();
    let v1 = s.put("acl", &rec("a", 1), PutMode::Create).await.unwrap();
    timeout(Duration::from_secs(2), w.next())
        .await
        .expect("the create publishes")
        .unwrap()
        .unwrap();
    let r = s.get("acl").await.unwrap().unwrap().record;
    let v2 = s.put("acl", &r, PutMode::Update(v1)).await.unwrap();
    let e = next_event(&mut w).await;
    assert!(matches!(&e, WatchEvent::Put(p) if p.version == v2), "{e:?}");
    let mut vacant = r.clone();
    vacant.holder = None;
    let v3 = s.put("acl", &vacant, PutMode::Update(v2)).await.unwrap();
    s.delete("acl", &v3).await.unwrap();
    assert!(s.get("acl").await.unwrap().is_none());
    drop(w);

    // A handoff between two electors over that user.
    let shutdown = CancellationToken::new();
    let (a, _) = candidate(s.clone(), "handoff", "a");
    let ha = a.handle();
    let sd_a = CancellationToken::new();
    let task_a = tokio::spawn(a.run(sd_a.clone().cancelled_owned(), work));
    let ta = next_term(std::slice::from_ref(&ha), 0, LEASE * 4).await;
    let other = RedisStore::options(&url)
        .timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    let (b, _) = candidate(other, "handoff", "b");
    let hb = b.handle();
    let task_b = tokio::spawn(b.run(shutdown.clone().cancelled_owned(), work));
    sleep(RETRY * 2).await;
    sd_a.cancel();
    let released = Instant::now();
    task_a.await.unwrap().unwrap();
    let tb = next_term(std::slice::from_ref(&hb), ta.fencing_token(), LEASE).await;
    assert!(
        released.elapsed() < LEASE / 2,
        "the handoff took {:?}: the follower waited for the released lease to expire",
        released.elapsed()
    );
    assert!(tb.fencing_token() > ta.fencing_token());
    shutdown.cancel();
    task_b.await.unwrap().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Watch events: every write announced with its version and record.
// ---------------------------------------------------------------------------------------------

/// The watch's next event, within 2 s.
async fn next_event(w: &mut WatchStream) -> WatchEvent {
    timeout(Duration::from_secs(2), w.next())
        .await
        .expect("an event within 2 s")
        .expect("the watch goes on")
        .expect("no watch error")
}

/// A watch whose subscription is in place: its first event, the hint that follows the
/// `SUBSCRIBE`, is taken.
async fn subscribed(s: &RedisStore, name: &str) -> WatchStream {
    let mut w = s.watch(name).expect("Redis can watch");
    assert_eq!(
        next_event(&mut w).await,
        WatchEvent::Hint,
        "the first event"
    );
    w
}

/// The write counter of a Redis version `<e>.<n>`.
fn counter(v: &Version) -> u64 {
    v.as_str()
        .split_once('.')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or_else(|| panic!("not a Redis version: {v}"))
}

/// Every write — create, renewal, new term, release — is announced as a `Put` of exactly the
/// version `put` returned and the record as stored (the token the script chose included), in
/// the order of the writes; a delete as `Deleted`. Nothing else is announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_carries_every_write_with_its_record_in_order() {
    let Some(url) = env_or_skip("TENURE_REDIS_URL", "a_watch_carries_every_write") else {
        return;
    };
    let prefix = unique_prefix();
    let s = store(&url, &prefix).await;
    let writer = store(&url, &prefix).await;
    let mut w = subscribed(&s, "events").await;
    let mut c = raw(&url).await;
    let key = format!("{prefix}events");
    let stored_json = |mut c: redis::aio::MultiplexedConnection| {
        let key = key.clone();
        async move {
            redis::cmd("HGET")
                .arg(key)
                .arg("rec")
                .query_async::<Vec<u8>>(&mut c)
                .await
                .unwrap()
        }
    };
    // Each write's event is the record as `get` reads it, and as the hash holds it.
    let expect_put = |e: WatchEvent, v: &Version, what: &str, got: Stored, json: Vec<u8>| match e {
        WatchEvent::Put(p) => {
            assert_eq!(&p.version, v, "{what}: the version announced");
            assert_eq!(p.version, got.version, "{what}: the version read");
            assert_eq!(p.record, got.record, "{what}: the record announced");
            assert_eq!(
                p.record,
                LeaseRecord::from_json("t", "k", &json).unwrap(),
                "{what}: the record stored"
            );
            assert_eq!(p.age, None, "{what}: an announcement has no age");
        }
        other => panic!("{what}: expected Put({v}), got {other:?}"),
    };

    let v1 = writer
        .put("events", &rec("a", 1), PutMode::Create)
        .await
        .unwrap();
    let e = next_event(&mut w).await;
    let got = writer.get("events").await.unwrap().unwrap();
    assert!(
        got.record.transitions > 1,
        "the create chose a token from the server's clock"
    );
    expect_put(e, &v1, "create", got.clone(), stored_json(c.clone()).await);

    let mut renewed = got.record.clone();
    renewed.renew_time = Some(std::time::SystemTime::now());
    let v2 = writer
        .put("events", &renewed, PutMode::Update(v1.clone()))
        .await
        .unwrap();
    let e = next_event(&mut w).await;
    let got = writer.get("events").await.unwrap().unwrap();
    assert_eq!(got.record.transitions, renewed.transitions);
    expect_put(e, &v2, "renewal", got.clone(), stored_json(c.clone()).await);

    let next = rec("b", got.record.transitions + 1);
    let v3 = writer
        .put("events", &next, PutMode::Update(v2.clone()))
        .await
        .unwrap();
    let e = next_event(&mut w).await;
    let got = writer.get("events").await.unwrap().unwrap();
    expect_put(
        e,
        &v3,
        "new term",
        got.clone(),
        stored_json(c.clone()).await,
    );

    let mut vacant = got.record.clone();
    vacant.holder = None;
    let v4 = writer
        .put("events", &vacant, PutMode::Update(v3.clone()))
        .await
        .unwrap();
    let e = next_event(&mut w).await;
    let got = writer.get("events").await.unwrap().unwrap();
    assert_eq!(got.record.holder, None);
    expect_put(e, &v4, "release", got, stored_json(c.clone()).await);
    assert!(
        [&v1, &v2, &v3, &v4]
            .windows(2)
            .all(|p| counter(p[0]) < counter(p[1])),
        "versions in write order"
    );

    // Refused writes announce nothing.
    assert!(writer
        .put("events", &rec("c", 1), PutMode::Update(v1.clone()))
        .await
        .unwrap_err()
        .is_conflict());
    assert!(writer
        .put("events", &rec("c", 1), PutMode::Create)
        .await
        .is_err());
    assert!(writer.delete("events", &v3).await.is_err());
    assert!(
        timeout(Duration::from_millis(300), w.next()).await.is_err(),
        "a refused write was announced"
    );

    writer.delete("events", &v4).await.unwrap();
    assert_eq!(next_event(&mut w).await, WatchEvent::Deleted);
    let n: i64 = redis::cmd("EXISTS")
        .arg(format!("{prefix}events"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert!(
        timeout(Duration::from_millis(300), w.next()).await.is_err(),
        "an event nobody wrote"
    );
}

/// A watcher that does not keep up skips to the latest version: never an older one after a
/// newer, and never without the newest. One that takes nothing during a burst gets exactly the
/// last write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_gets_the_latest_version_never_an_older() {
    let Some(url) = env_or_skip("TENURE_REDIS_URL", "a_slow_watcher") else {
        return;
    };
    const BURST: usize = 300;
    let prefix = unique_prefix();
    let s = store(&url, &prefix).await;
    let writer = store(&url, &prefix).await;
    let mut idle = subscribed(&s, "burst").await;
    let slow = subscribed(&s, "burst").await;
    let v = writer
        .put("burst", &rec("a", 1), PutMode::Create)
        .await
        .unwrap();
    let e = next_event(&mut idle).await;
    assert!(matches!(&e, WatchEvent::Put(p) if p.version == v), "{e:?}");
    let r = writer.get("burst").await.unwrap().unwrap().record;

    // A watcher that takes one event per 20 ms while the writes go on.
    let (last_tx, last_rx) = tokio::sync::watch::channel(None::<Version>);
    let reader = tokio::spawn(async move {
        let mut slow = slow;
        let mut seen = Vec::new();
        loop {
            let e = timeout(Duration::from_secs(5), slow.next())
                .await
                .expect("the newest write is delivered")
                .unwrap()
                .unwrap();
            let WatchEvent::Put(p) = e else {
                panic!("only writes happened, got {e:?}");
            };
            seen.push(p.version.clone());
            if Some(&p.version) == last_rx.borrow().as_ref() {
                return seen;
            }
            sleep(Duration::from_millis(20)).await;
        }
    });
    let mut v = v;
    let mut versions = vec![v.clone()];
    for _ in 0..BURST {
        v = writer
            .put("burst", &r, PutMode::Update(v.clone()))
            .await
            .unwrap();
        versions.push(v.clone());
    }
    last_tx.send_replace(Some(v.clone()));
    let seen = reader.await.unwrap();
    assert!(
        seen.windows(2).all(|p| counter(&p[0]) < counter(&p[1])),
        "the slow watcher got an older version after a newer one: {seen:?}"
    );
    assert!(seen.iter().all(|v| versions.contains(v)));
    assert_eq!(seen.last(), Some(&v));
    eprintln!(
        "the slow watcher took {} events for {} writes",
        seen.len(),
        BURST
    );

    // The idle watcher took nothing during the burst: once the messages are in, it has the
    // last write, and only that.
    sleep(Duration::from_millis(500)).await;
    let e = next_event(&mut idle).await;
    assert!(
        matches!(&e, WatchEvent::Put(p) if p.version == v),
        "expected the last write {v}, got {e:?}"
    );
    assert!(
        timeout(Duration::from_millis(300), idle.next())
            .await
            .is_err(),
        "an older event after the newest"
    );
}

/// A message on the channel that announces no record — somebody else publishing, a bare
/// version (an older tenure, or a record too long to publish) — is a hint, and the next write
/// is announced as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_that_announce_no_record_are_hints() {
    let Some(url) = env_or_skip("TENURE_REDIS_URL", "messages_that_announce_no_record") else {
        return;
    };
    let prefix = unique_prefix();
    let s = store(&url, &prefix).await;
    let mut w = subscribed(&s, "noise").await;
    let chan = s.channel_of("noise").unwrap();
    let mut c = raw(&url).await;
    for garbage in [
        &b"hello"[..],
        b"",
        b"1700000000000000.3",
        b"1700000000000000.3 {not json",
        b"1700000000000000.3 {\"holder\":\"a\"}",
        b"x.3 {}",
        b"\xff\xfe",
    ] {
        let n: i64 = redis::cmd("PUBLISH")
            .arg(&chan)
            .arg(garbage)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(n, 1, "one subscriber");
        let e = next_event(&mut w).await;
        assert_eq!(
            e,
            WatchEvent::Hint,
            "{:?}",
            String::from_utf8_lossy(garbage)
        );
    }
    let v = s.put("noise", &rec("a", 1), PutMode::Create).await.unwrap();
    let e = next_event(&mut w).await;
    assert!(matches!(&e, WatchEvent::Put(p) if p.version == v), "{e:?}");

    // A record too long to publish is announced by its version alone: a hint.
    let mut big = s.get("noise").await.unwrap().unwrap().record;
    big.value = Some("x".repeat(tenure::redis::MAX_PUBLISHED_RECORD_LEN));
    let v2 = s.put("noise", &big, PutMode::Update(v)).await.unwrap();
    assert_eq!(next_event(&mut w).await, WatchEvent::Hint);
    let got = s.get("noise").await.unwrap().unwrap();
    assert_eq!((got.version, got.record.value), (v2, big.value));
}

/// Over Redis, an elector's calls per role while a leader renews for 10 lease durations: the
/// leader one write per R and no reads (its own announcements are old news); the watching
/// follower no polling — at most one read per L, plus its start — since it sees every
/// renewal in its watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_redis_a_follower_reads_only_for_safety_while_the_leader_renews() {
    use tenure::testing::FaultyStore;
    let Some(url) = env_or_skip("TENURE_REDIS_URL", "follower_reads_only_for_safety") else {
        return;
    };
    let prefix = unique_prefix();
    let elector = |s: FaultyStore<RedisStore>, id: &str| {
        LeaderElector::builder(s, "budget")
            .identity(id)
            .lease_duration(LEASE)
            .renew_deadline(DEADLINE)
            .retry_period(RETRY)
            .build()
            .unwrap()
    };
    let ls = FaultyStore::new(store(&url, &prefix).await);
    let fs = FaultyStore::new(store(&url, &prefix).await);
    let shutdown = CancellationToken::new();
    let leader = elector(ls.clone(), "leader");
    let lh = leader.handle();
    let lt = tokio::spawn(leader.run(shutdown.clone().cancelled_owned(), work));
    let term = timeout(LEASE * 4, lh.leading()).await.unwrap().unwrap();
    let l0 = ls.faults().calls();
    let follower = elector(fs.clone(), "follower");
    let fh = follower.handle();
    let ft = tokio::spawn(follower.run(shutdown.clone().cancelled_owned(), work));
    let window = LEASE * 10;
    let started = Instant::now();
    // The follower follows the leader the whole time.
    while started.elapsed() < window {
        sleep(Duration::from_millis(50)).await;
        if started.elapsed() > LEASE / 2 {
            match fh.current() {
                tenure::LeaderState::Following(l) => assert_eq!(l.identity, "leader"),
                other => panic!("the follower is {other:?}"),
            }
        }
    }
    let took = started.elapsed();
    let (l1, f1) = (ls.faults().calls(), fs.faults().calls());
    assert!(!term.is_cancelled(), "the leader lost its term");
    shutdown.cancel();
    lt.await.unwrap().unwrap();
    ft.await.unwrap().unwrap();
    let per = |n: u64| n as f64 / took.as_secs_f64();
    eprintln!(
        "over {took:?}: leader {} puts ({:.2}/s), {} gets; follower {} gets, {} puts, {} \
         watches, {} events ({:.2}/s)",
        l1.puts - l0.puts,
        per(l1.puts - l0.puts),
        l1.gets - l0.gets,
        f1.gets,
        f1.puts,
        f1.watches,
        f1.events,
        per(f1.events)
    );
    let renewals = (took.as_secs_f64() / RETRY.as_secs_f64()).floor() as u64 + 1;
    assert!(
        l1.puts - l0.puts <= renewals,
        "the leader wrote {} times in {took:?}, more than once per R ({renewals})",
        l1.puts - l0.puts
    );
    // At most one read: the hint its own watch yields once its subscription is in place
    // (writes made before that could have been missed), which may land after it acquired.
    assert!(
        l1.gets - l0.gets <= 1,
        "the leader read {} times after acquiring",
        l1.gets - l0.gets
    );
    let reads = (took.as_secs_f64() / LEASE.as_secs_f64()).floor() as u64 + 2;
    assert!(
        f1.gets <= reads,
        "the follower read {} times in {took:?}: more than once per L (+2 = {reads})",
        f1.gets
    );
    assert_eq!(f1.puts, 0, "the follower wrote while the leader renewed");
    assert!(f1.watches <= 2, "{} watches", f1.watches);
    // Renewals made before the follower subscribed are not its to see.
    assert!(
        f1.events + 3 >= l1.puts - l0.puts,
        "the follower saw {} events for {} renewals",
        f1.events,
        l1.puts - l0.puts
    );
}

/// The subscribers of `chan` on the server (`PUBSUB NUMSUB`).
async fn subscribers(c: &mut redis::aio::MultiplexedConnection, chan: &str) -> i64 {
    let (_, n): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(chan)
        .query_async(c)
        .await
        .unwrap();
    n
}

/// Watches of several names share one connection: each gets its own name's events; a second
/// watch of a subscribed name starts with a hint and then gets the same events; the last
/// watch of a name dropped unsubscribes it, and watching it again subscribes it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_come_and_go_on_one_connection() {
    let Some(url) = env_or_skip("TENURE_REDIS_URL", "watches_come_and_go") else {
        return;
    };
    let prefix = unique_prefix();
    let s = store(&url, &prefix).await;
    let mut c = raw(&url).await;
    let (ca, cb) = (s.channel_of("a").unwrap(), s.channel_of("b").unwrap());
    let mut wa = subscribed(&s, "a").await;
    let mut wb = subscribed(&s, "b").await;
    let mut wb2 = subscribed(&s, "b").await;
    assert_eq!(
        (
            subscribers(&mut c, &ca).await,
            subscribers(&mut c, &cb).await
        ),
        (1, 1),
        "one subscription per channel for the store"
    );
    let va = s.put("a", &rec("x", 1), PutMode::Create).await.unwrap();
    let e = next_event(&mut wa).await;
    assert!(matches!(&e, WatchEvent::Put(p) if p.version == va), "{e:?}");
    let vb = s.put("b", &rec("y", 1), PutMode::Create).await.unwrap();
    for w in [&mut wb, &mut wb2] {
        let e = next_event(w).await;
        assert!(matches!(&e, WatchEvent::Put(p) if p.version == vb), "{e:?}");
    }
    assert!(
        timeout(Duration::from_millis(200), wa.next())
            .await
            .is_err(),
        "a's watch got b's write"
    );

    drop(wa);
    drop(wb2);
    let unsubscribed = Instant::now() + Duration::from_secs(2);
    while subscribers(&mut c, &ca).await != 0 {
        assert!(Instant::now() < unsubscribed, "a is still subscribed");
        sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(subscribers(&mut c, &cb).await, 1, "b is still watched");
    let r = s.get("b").await.unwrap().unwrap().record;
    let vb2 = s.put("b", &r, PutMode::Update(vb)).await.unwrap();
    let e = next_event(&mut wb).await;
    assert!(
        matches!(&e, WatchEvent::Put(p) if p.version == vb2),
        "{e:?}"
    );

    let mut wa = subscribed(&s, "a").await;
    let r = s.get("a").await.unwrap().unwrap().record;
    let va2 = s.put("a", &r, PutMode::Update(va)).await.unwrap();
    let e = next_event(&mut wa).await;
    assert!(
        matches!(&e, WatchEvent::Put(p) if p.version == va2),
        "{e:?}"
    );
}
