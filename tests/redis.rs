//! The Redis store against real servers: the conformance suite, garbage, credentials,
//! unreachable servers, and a Redis killed with SIGKILL and restarted under a leader.
//!
//! Servers come from `scripts/test-services.sh` through `TENURE_REDIS_URL`,
//! `TENURE_REDIS_AUTH_URL`, `TENURE_REDIS_LIMITED_URL`, `TENURE_REDIS_AUTH_ADDR` and
//! `TENURE_REDIS_SERVER`. A missing variable fails the test when `TENURE_REQUIRE_BACKENDS=1`,
//! and skips it loudly otherwise.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tenure::conformance::{async_trait, Harness};
use tenure::redis::RedisStore;
use tenure::{
    Error, LeaderElector, LeaderHandle, LeaseRecord, LeaseStore, LostReason, PutMode, StopReason,
    Term, Version,
};
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

/// The variable's value, or `None` after a loud skip (a panic under
/// `TENURE_REQUIRE_BACKENDS=1`).
fn env_or_skip(var: &str, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(
                std::env::var("TENURE_REQUIRE_BACKENDS").as_deref() != Ok("1"),
                "{test}: {var} is not set, and TENURE_REQUIRE_BACKENDS=1 requires the Redis \
                 tests to run: start the servers with scripts/test-services.sh (scripts/test.sh \
                 does)"
            );
            eprintln!(
                "SKIPPED: {test}: {var} is not set (run scripts/test.sh, or \
                 `scripts/test-services.sh start DIR` and `source DIR/env`)"
            );
            None
        }
    }
}

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
    let (r1, gv) = a.get("job").await.unwrap().unwrap();
    assert_eq!(gv, v1);
    assert!(
        r1.transitions >= server_us(before),
        "the created token {} is not seeded from the server's clock ({})",
        r1.transitions,
        server_us(before)
    );
    // The hash holds the record and its version under the prefixed key, with an expiry.
    let key = a.key_of("job").unwrap();
    assert_eq!(key, format!("{prefix}job"));
    let rec_json: Vec<u8> = redis::cmd("HGET")
        .arg(&key)
        .arg("rec")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(LeaseRecord::from_json("t", "k", &rec_json).unwrap(), r1);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(ttl > 50_000, "expiry {ttl} ms");
    // Another prefix is another namespace.
    assert!(b.get("job").await.unwrap().is_none());

    // An update stores the token exactly; a re-created record starts above it.
    let mut r2 = r1.clone();
    r2.transitions += 5;
    let v2 = a.put("job", &r2, PutMode::Update(v1)).await.unwrap();
    assert_eq!(
        a.get("job").await.unwrap().unwrap().0.transitions,
        r2.transitions
    );
    a.delete("job", &v2).await.unwrap();
    a.put("job", &rec("me", 1), PutMode::Create).await.unwrap();
    let (r3, _) = a.get("job").await.unwrap().unwrap();
    assert!(
        r3.transitions > r2.transitions,
        "{} after {}",
        r3.transitions,
        r2.transitions
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
    let first = stops.lock().unwrap().first().cloned();
    assert!(
        matches!(first, Some(StopReason::Lost(LostReason::Deleted))),
        "{first:?}"
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
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
    use futures_util::StreamExt;
    let mut server = PrivateRedis::start(&bin).await;
    let s = RedisStore::options(server.url())
        .timeout(Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    let mut w = s.watch("w").unwrap();
    // The subscription itself wakes once.
    timeout(Duration::from_secs(2), w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let v = s.put("w", &rec("a", 1), PutMode::Create).await.unwrap();
    timeout(Duration::from_secs(2), w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // Renewals (same holder, same term) do not publish.
    let (r, _) = s.get("w").await.unwrap().unwrap();
    s.put("w", &r, PutMode::Update(v)).await.unwrap();
    assert!(timeout(Duration::from_millis(200), w.next()).await.is_err());
    server.kill().await;
    server.restart().await;
    // After reconnecting, the watch wakes (a gap: re-read) without any write.
    timeout(Duration::from_secs(10), w.next())
        .await
        .expect("a wake-up after the restart")
        .unwrap()
        .unwrap();
    let c = s.put("w", &rec("b", 1), PutMode::Create).await;
    assert!(c.is_ok(), "{c:?}");
    timeout(Duration::from_secs(2), w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    server.kill().await;
}
