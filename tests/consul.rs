//! The Consul record store against real agents: the conformance suite, names and escaping,
//! garbage, ACL tokens, unreachable agents, tokens across delete and re-create, the watch's
//! events, index rules and backoff, and a server agent killed and restarted under a leader.
//!
//! Agents come from `scripts/test-services.sh` through `TENURE_CONSUL_ADDR` (open),
//! `TENURE_CONSUL_ACL_ADDR` with `TENURE_CONSUL_MASTER_TOKEN` (ACLs, default deny) and
//! `TENURE_CONSUL_BIN` (private agents for the kill/restart tests). A missing variable fails
//! the test when `TENURE_REQUIRE_BACKENDS=1`, and skips it loudly otherwise.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use futures_util::StreamExt;
use rand::Rng;
use tenure::conformance::{async_trait, Harness};
use tenure::consul::{Consul, ConsulOptions, ConsulStore, RECORD_FLAGS_TAG};
use tenure::{
    Error, LeaderElector, LeaderHandle, LeaderState, LeaseRecord, LeaseStore, PutMode, Term,
    Version, WatchEvent, WatchStream,
};
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

#[path = "support/env.rs"]
mod env;
use env::env_or_skip;

fn unique_prefix() -> String {
    let r: u64 = rand::thread_rng().gen();
    format!("tenure-test-{r:016x}/")
}

async fn connect(addr: &str, prefix: &str) -> Consul {
    ConsulOptions::new(addr)
        .prefix(prefix)
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect("the test agent connects")
}

async fn store(addr: &str, prefix: &str) -> ConsulStore {
    ConsulStore::new(connect(addr, prefix).await)
}

/// Raw HTTP access to an agent, bypassing tenure.
struct Raw {
    http: reqwest::Client,
    addr: String,
    token: Option<String>,
}

impl Raw {
    fn new(addr: &str, token: Option<&str>) -> Self {
        Raw {
            http: reqwest::Client::new(),
            addr: addr.trim_end_matches('/').to_owned(),
            token: token.map(str::to_owned),
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}/v1{path}", self.addr));
        match &self.token {
            Some(t) => r.header("X-Consul-Token", t),
            None => r,
        }
    }

    /// Writes `value` under `key` unconditionally.
    async fn put(&self, key: &str, value: &[u8]) {
        let r = self
            .req(reqwest::Method::PUT, &format!("/kv/{}", url_key(key)))
            .body(value.to_vec())
            .send()
            .await
            .expect("raw put");
        assert!(r.status().is_success(), "raw put of {key}: {}", r.status());
    }

    /// The key's (value, flags, ModifyIndex), or `None`.
    async fn get(&self, key: &str) -> Option<(Vec<u8>, u64, u64)> {
        let r = self
            .req(reqwest::Method::GET, &format!("/kv/{}", url_key(key)))
            .send()
            .await
            .expect("raw get");
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return None;
        }
        assert!(r.status().is_success(), "raw get of {key}: {}", r.status());
        let v: serde_json::Value = json(r).await;
        let e = &v[0];
        let value = match e["Value"].as_str() {
            Some(b) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .expect("base64"),
            None => Vec::new(),
        };
        Some((
            value,
            e["Flags"].as_u64().unwrap_or(0),
            e["ModifyIndex"].as_u64().expect("ModifyIndex"),
        ))
    }

    /// Every key below `prefix`.
    async fn keys(&self, prefix: &str) -> Vec<String> {
        let r = self
            .req(reqwest::Method::GET, &format!("/kv/{}", url_key(prefix)))
            .query(&[("keys", "")])
            .send()
            .await
            .expect("raw keys");
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return Vec::new();
        }
        serde_json::from_value(json(r).await).expect("a key list")
    }

    /// Creates a token with a policy of `rules`; returns its secret.
    async fn token_with(&self, rules: &str) -> String {
        let name: u64 = rand::thread_rng().gen();
        let policy = self
            .req(reqwest::Method::PUT, "/acl/policy")
            .body(serde_json::json!({ "Name": format!("p{name:x}"), "Rules": rules }).to_string())
            .send()
            .await
            .expect("policy");
        let policy = json(policy).await;
        let id = policy["ID"].as_str().expect("policy ID").to_owned();
        let token = self
            .req(reqwest::Method::PUT, "/acl/token")
            .body(serde_json::json!({ "Policies": [{ "ID": id }] }).to_string())
            .send()
            .await
            .expect("token");
        let token = json(token).await;
        token["SecretID"].as_str().expect("SecretID").to_owned()
    }
}

async fn json(r: reqwest::Response) -> serde_json::Value {
    let status = r.status();
    let body = r.bytes().await.expect("a body");
    assert!(
        status.is_success(),
        "{status}: {}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).expect("JSON")
}

/// `key` escaped for a URL path (the agent decodes it back).
fn url_key(key: &str) -> String {
    let mut p = String::new();
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            p.push(char::from(b));
        } else {
            p.push_str(&format!("%{b:02X}"));
        }
    }
    p
}

struct ConsulHarness {
    addr: String,
    prefix: String,
}

#[async_trait]
impl Harness for ConsulHarness {
    type Store = ConsulStore;

    async fn store(&self) -> ConsulStore {
        store(&self.addr, &self.prefix).await
    }

    async fn write_garbage(&self, name: &str) {
        let s = store(&self.addr, &self.prefix).await;
        let key = s.key_of(name).expect("a valid name");
        Raw::new(&self.addr, None)
            .put(&key, b"{\"holder\": 42, this is not a tenure record")
            .await;
    }
}

tenure::conformance_tests!(
    match env_or_skip("TENURE_CONSUL_ADDR", "consul conformance") {
        Some(addr) => ConsulHarness {
            addr,
            prefix: unique_prefix(),
        },
        None => return,
    }
);

fn rec(holder: &str, transitions: u64) -> LeaseRecord {
    LeaseRecord::held_by(holder, Duration::from_secs(5), transitions)
}

fn index(v: &Version) -> u64 {
    v.as_str().parse().expect("a ModifyIndex")
}

#[tokio::test]
async fn names_are_escaped_into_one_key_segment() {
    let Some(addr) = env_or_skip("TENURE_CONSUL_ADDR", "names") else {
        return;
    };
    let prefix = unique_prefix();
    let s = store(&addr, &prefix).await;
    let raw = Raw::new(&addr, None);
    let names = [
        "plain", "a/b", "a%2Fb", "a b", ".", "..", ".lock", "x/.lock", "é", "A", "a+b", "a?b=1",
        "a#b", "a/",
    ];
    let mut versions = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let mut r = rec("a", 1);
        r.value = Some(format!("{i}"));
        versions.push(s.put(n, &r, PutMode::Create).await.unwrap_or_else(|e| {
            panic!("create {n:?}: {e}");
        }));
    }
    for (i, n) in names.iter().enumerate() {
        let got = s.get(n).await.expect("get").expect("a record");
        assert_eq!(got.record.value.as_deref(), Some(&*format!("{i}")), "{n:?}");
        assert_eq!(got.version, versions[i]);
        // The key holds the record as JSON, with tenure's flags.
        let key = s.key_of(n).unwrap();
        let (value, flags, modify) = raw.get(&key).await.expect("the raw key");
        assert_eq!(flags >> 32, RECORD_FLAGS_TAG >> 32, "tenure's flags");
        assert_eq!(modify, index(&versions[i]));
        let back = LeaseRecord::from_json("consul", &key, &value).expect("JSON record");
        assert_eq!(back.value, got.record.value);
    }
    // One segment each below the prefix: no folders, no `.lock` segments.
    let mut keys = raw.keys(&prefix).await;
    keys.sort();
    assert_eq!(keys.len(), names.len(), "{keys:?}");
    for k in &keys {
        let rest = k.strip_prefix(&prefix).expect("below the prefix");
        assert!(!rest.contains('/') && !rest.starts_with('.'), "{k:?}");
    }
    assert_eq!(s.key_of("a/b").unwrap(), format!("{prefix}a%2Fb"));
    assert_eq!(s.key_of(".lock").unwrap(), format!("{prefix}%2Elock"));
    for bad in [String::new(), "/".repeat(400)] {
        assert!(
            matches!(s.get(&bad).await, Err(Error::InvalidName { .. })),
            "{bad:?}"
        );
        assert!(matches!(
            s.put(&bad, &rec("a", 1), PutMode::Create).await,
            Err(Error::InvalidName { .. })
        ));
    }
    // Invalid prefixes are configuration errors.
    for bad in ["/x/", "x//", "x/../"] {
        let r = ConsulOptions::new(&addr).prefix(bad).connect().await;
        assert!(matches!(r, Err(Error::Config { .. })), "{bad:?}: {r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_of_any_shape_is_a_decode_error_and_left_untouched() {
    let Some(addr) = env_or_skip("TENURE_CONSUL_ADDR", "garbage") else {
        return;
    };
    let prefix = unique_prefix();
    let s = store(&addr, &prefix).await;
    let raw = Raw::new(&addr, None);
    let future = br#"{"tenure":2,"holder":"a","lease_duration_ms":1000,"transitions":1}"#;
    let shapes: [(&str, &[u8]); 5] = [
        ("text", b"hello"),
        ("empty", b""),
        ("json of another shape", br#"{"holder":"a"}"#),
        ("a future format", future),
        ("binary", b"\xff\xfe\x00"),
    ];
    for (what, bytes) in shapes {
        let name = format!("g-{}", what.replace(' ', "-"));
        let key = s.key_of(&name).unwrap();
        raw.put(&key, bytes).await;
        let (_, _, v) = raw.get(&key).await.expect("written");
        match s.get(&name).await {
            Err(Error::Decode { store, key: k, .. }) => {
                assert_eq!(store, "consul");
                assert_eq!(k, key, "{what}: the error names the key");
            }
            other => panic!("{what}: expected Decode, got {other:?}"),
        }
        let fresh = store(&addr, &prefix).await; // never read it as a record
        for r in [
            fresh
                .put(&name, &rec("b", 2), PutMode::Update(Version::from(v)))
                .await,
            s.put(&name, &rec("b", 2), PutMode::Update(Version::from(v)))
                .await,
            s.put(&name, &rec("b", 2), PutMode::Create).await,
        ] {
            assert!(r.is_err(), "{what}: a write over garbage succeeded");
        }
        let mut w = s.watch(&name).expect("a watch");
        match timeout(Duration::from_secs(5), w.next()).await {
            Ok(Some(Err(Error::Decode { .. }))) => {}
            other => panic!("{what}: the watch must yield Decode, got {other:?}"),
        }
        assert!(
            timeout(Duration::from_secs(5), w.next())
                .await
                .expect("ends")
                .is_none(),
            "{what}: the watch ends after Decode"
        );
        let after = raw.get(&key).await.expect("still there");
        assert_eq!(after.0, bytes, "{what}: the garbage was changed");
        assert_eq!(after.2, v, "{what}: the garbage was rewritten");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_tokens_are_sent_and_refusals_are_final_and_name_the_key() {
    let (Some(addr), Some(master)) = (
        env_or_skip("TENURE_CONSUL_ACL_ADDR", "acl"),
        env_or_skip("TENURE_CONSUL_MASTER_TOKEN", "acl"),
    ) else {
        return;
    };
    let prefix = unique_prefix();
    let admin = Raw::new(&addr, Some(&master));
    let writer = admin
        .token_with(&format!("key_prefix \"{prefix}\" {{ policy = \"write\" }}"))
        .await;
    let reader = admin
        .token_with(&format!("key_prefix \"{prefix}\" {{ policy = \"read\" }}"))
        .await;
    let elsewhere = admin
        .token_with("key_prefix \"somewhere-else/\" { policy = \"write\" }")
        .await;
    let with = |token: Option<&str>| {
        let mut o = ConsulOptions::new(&addr)
            .prefix(&prefix)
            .timeout(Duration::from_millis(500));
        if let Some(t) = token {
            o = o.token(t);
        }
        o
    };

    // The writer's token is enough for everything.
    let s = ConsulStore::new(with(Some(&writer)).connect().await.expect("connects"));
    let v = s
        .put("job", &rec("a", 1), PutMode::Create)
        .await
        .expect("create");
    let got = s.get("job").await.expect("get").expect("record");
    s.put("job", &got.record, PutMode::Update(v.clone()))
        .await
        .expect("renew");
    let key = s.key_of("job").unwrap();

    // A token Consul does not know fails at connect.
    match with(Some("00000000-0000-0000-0000-000000000000"))
        .connect()
        .await
    {
        Err(Error::PermissionDenied { .. }) => {}
        other => panic!("an unknown token must fail at connect, got {other:?}"),
    }

    // No token (anonymous, default deny), a token for another prefix, a read-only token.
    for (what, token, can_read) in [
        ("no token", None, false),
        ("another prefix's token", Some(&*elsewhere), false),
        ("a read-only token", Some(&*reader), true),
    ] {
        let s = ConsulStore::new(with(token).connect().await.expect("connects"));
        let denied_on = |r: &tenure::Error, key: &str| match r {
            Error::PermissionDenied { name, source, .. } => {
                assert_eq!(name, key, "{what}: the error names the key");
                assert!(source.to_string().contains(key), "{what}: {source}");
            }
            other => panic!("{what}: expected PermissionDenied, got {other:?}"),
        };
        let denied = |r: &tenure::Error| denied_on(r, &key);
        match s.get("job").await {
            Ok(Some(_)) if can_read => {}
            Err(e) if !can_read => denied(&e),
            other => panic!("{what}: get gave {other:?}"),
        }
        let w = s
            .put("job", &rec("b", 9), PutMode::Update(Version::from(1)))
            .await;
        // An update of a version never seen reads first: a reader gets Conflict there, so
        // write with the current version too.
        if can_read {
            let cur = s.get("job").await.unwrap().unwrap();
            let w = s
                .put("job", &cur.record, PutMode::Update(cur.version))
                .await;
            denied(&w.expect_err("a read-only token cannot write"));
        } else {
            denied(&w.expect_err("no write"));
        }
        denied_on(
            &s.put("other", &rec("b", 1), PutMode::Create)
                .await
                .expect_err("no create"),
            &s.key_of("other").unwrap(),
        );
        // An elector stops with the refusal, never leading.
        let elector = LeaderElector::builder(s.clone(), "job-e")
            .identity("e")
            .lease_duration(Duration::from_secs(1))
            .renew_deadline(Duration::from_millis(600))
            .retry_period(Duration::from_millis(150))
            .build()
            .expect("config");
        let run = timeout(
            Duration::from_secs(5),
            elector.run(std::future::pending(), |_t: Term| async {}),
        )
        .await
        .unwrap_or_else(|_| panic!("{what}: the elector kept running"));
        assert!(
            matches!(run, Err(Error::PermissionDenied { .. })),
            "{what}: the elector must stop with PermissionDenied, got {run:?}"
        );
        if !can_read {
            let mut w = s.watch("job").expect("a watch");
            match timeout(Duration::from_secs(5), w.next()).await {
                Ok(Some(Err(Error::PermissionDenied { .. }))) => {}
                other => panic!("{what}: the watch must yield PermissionDenied, got {other:?}"),
            }
            assert!(timeout(Duration::from_secs(5), w.next())
                .await
                .expect("ends")
                .is_none());
        }
    }
    // The record is untouched by all of that.
    let after = s.get("job").await.expect("get").expect("record");
    assert_eq!(after.record.holder.as_deref(), Some("a"));
}

#[tokio::test]
async fn from_env_reads_consul_variables() {
    // Only checks parsing, against whatever agent the variables name: run with the open agent.
    let Some(addr) = env_or_skip("TENURE_CONSUL_ADDR", "from_env") else {
        return;
    };
    let hostport = addr.trim_start_matches("http://").to_owned();
    // SAFETY of the test: no other test reads these variables.
    std::env::set_var("CONSUL_HTTP_ADDR", &hostport);
    std::env::set_var("CONSUL_HTTP_TOKEN", "");
    let c = ConsulOptions::from_env().connect().await.expect("connects");
    assert_eq!(c.address(), addr.trim_end_matches('/'));
    assert_eq!(c.prefix(), "tenure/");
    std::env::set_var("CONSUL_HTTP_SSL", "true");
    let o = ConsulOptions::from_env().timeout(Duration::from_millis(300));
    let r = o.connect().await;
    assert!(r.is_err(), "TLS to a plain HTTP agent must fail: {r:?}");
    std::env::remove_var("CONSUL_HTTP_SSL");
    std::env::remove_var("CONSUL_HTTP_ADDR");
    std::env::remove_var("CONSUL_HTTP_TOKEN");
}

#[tokio::test]
async fn unreachable_agents_time_out_within_the_bound() {
    let bound = Duration::from_millis(400);
    // Nothing listening: refused connections are retried until the timeout.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let start = Instant::now();
    let r = ConsulOptions::new(format!("127.0.0.1:{port}"))
        .timeout(bound)
        .connect()
        .await;
    let took = start.elapsed();
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    assert!(took < bound + Duration::from_millis(300), "{took:?}");
    // A silent peer: accepts, never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            held.push(c);
        }
    });
    let start = Instant::now();
    let r = ConsulOptions::new(format!("http://{addr}"))
        .timeout(bound)
        .connect()
        .await;
    let took = start.elapsed();
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    assert!(took < bound + Duration::from_millis(300), "{took:?}");
    keep.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_on_a_vanished_agent_fail_within_the_bound() {
    let Some(bin) = env_or_skip("TENURE_CONSUL_BIN", "vanished agent") else {
        return;
    };
    let mut agent = Agent::start(&bin, Mode::Dev).await;
    let s = ConsulStore::new(
        ConsulOptions::new(agent.addr())
            .timeout(Duration::from_millis(400))
            .connect()
            .await
            .expect("connects"),
    );
    s.put("x", &rec("a", 1), PutMode::Create)
        .await
        .expect("create");
    agent.kill().await;
    for _ in 0..3 {
        let start = Instant::now();
        let r = s.get("x").await;
        assert!(
            matches!(r, Err(Error::Unavailable { .. } | Error::Timeout { .. })),
            "{r:?}"
        );
        assert!(start.elapsed() < Duration::from_millis(700));
        let r = s.put("x", &rec("a", 1), PutMode::Create).await;
        assert!(r.as_ref().is_err_and(|e| e.is_retryable()), "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_stay_above_after_delete_and_re_create_from_a_fresh_store() {
    let Some(addr) = env_or_skip("TENURE_CONSUL_ADDR", "tokens") else {
        return;
    };
    let prefix = unique_prefix();
    let mut highest = 0;
    for round in 0..4 {
        // A fresh store each round: nothing remembered in the process.
        let s = store(&addr, &prefix).await;
        let v1 = s
            .put("t", &rec("a", 1), PutMode::Create)
            .await
            .expect("create");
        let first = s.get("t").await.unwrap().unwrap();
        assert!(
            first.record.transitions > highest,
            "round {round}: a create after a delete stored {} after {highest}",
            first.record.transitions
        );
        assert!(
            first.record.transitions >= index(&v1),
            "at least the CreateIndex"
        );
        // A renewal stores the token exactly (the lifted one).
        let v2 = s
            .put("t", &first.record, PutMode::Update(v1.clone()))
            .await
            .expect("renew");
        let renewed = s.get("t").await.unwrap().unwrap();
        assert_eq!(renewed.record.transitions, first.record.transitions);
        let raw = Raw::new(&addr, None);
        let (value, _, _) = raw.get(&s.key_of("t").unwrap()).await.unwrap();
        let stored = LeaseRecord::from_json("consul", "t", &value).unwrap();
        assert_eq!(stored.transitions, first.record.transitions, "written back");
        // A new term asking for a low token gets one above the version it replaces.
        let v3 = s
            .put("t", &rec("b", 2), PutMode::Update(v2.clone()))
            .await
            .expect("new term");
        let next = s.get("t").await.unwrap().unwrap();
        assert!(next.record.transitions > renewed.record.transitions);
        assert!(next.record.transitions > index(&v2));
        assert!(
            next.record.transitions <= index(&v3),
            "at most the write's own index"
        );
        highest = next.record.transitions;
        // A new term by a fresh store (no cache: it reads first).
        let other = store(&addr, &prefix).await;
        let v4 = other
            .put("t", &rec("c", 3), PutMode::Update(v3.clone()))
            .await
            .expect("new term from a fresh store");
        let last = other.get("t").await.unwrap().unwrap();
        assert!(last.record.transitions > highest);
        highest = last.record.transitions;
        other.delete("t", &v4).await.expect("delete");
        assert!(other.get("t").await.unwrap().is_none());
        // Deleting again, or a missing key, is a conflict.
        assert!(matches!(
            other.delete("t", &v4).await,
            Err(Error::Conflict { .. })
        ));
    }
}

async fn next_event(w: &mut WatchStream) -> WatchEvent {
    match timeout(Duration::from_secs(5), w.next()).await {
        Ok(Some(Ok(e))) => e,
        other => panic!("expected a watch event, got {other:?}"),
    }
}

/// The next event that is not a hint.
async fn next_news(w: &mut WatchStream) -> WatchEvent {
    loop {
        match next_event(w).await {
            WatchEvent::Hint => continue,
            e => return e,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_carries_every_write_with_its_record_in_order() {
    let Some(addr) = env_or_skip("TENURE_CONSUL_ADDR", "watch") else {
        return;
    };
    let prefix = unique_prefix();
    let s = store(&addr, &prefix).await;
    let writer = store(&addr, &prefix).await;
    let mut w = s.watch("w").expect("a watch");
    sleep(Duration::from_millis(100)).await;
    let mut v = writer
        .put("w", &rec("a", 1), PutMode::Create)
        .await
        .expect("create");
    let mut r = writer.get("w").await.unwrap().unwrap().record;
    let mut last = 0;
    for i in 0..20 {
        match next_news(&mut w).await {
            WatchEvent::Put(stored) => {
                assert_eq!(stored.version, v, "write {i}");
                assert_eq!(stored.record.transitions, r.transitions);
                assert_eq!(stored.record.holder, r.holder);
                assert!(index(&stored.version) > last);
                last = index(&stored.version);
            }
            other => panic!("write {i}: {other:?}"),
        }
        if i % 5 == 4 {
            r = rec("b", r.transitions + 1);
        }
        v = writer
            .put("w", &r, PutMode::Update(v.clone()))
            .await
            .expect("write");
        r = writer.get("w").await.unwrap().unwrap().record;
    }
    assert!(matches!(next_news(&mut w).await, WatchEvent::Put(s) if s.version == v));
    writer.delete("w", &v).await.expect("delete");
    assert_eq!(next_news(&mut w).await, WatchEvent::Deleted);
    // A burst: a slow watcher gets the newest version, never an older one after it.
    let mut v = writer
        .put("w", &rec("a", 1), PutMode::Create)
        .await
        .expect("re-create");
    let r = writer.get("w").await.unwrap().unwrap().record;
    for _ in 0..10 {
        v = writer.put("w", &r, PutMode::Update(v)).await.unwrap();
    }
    sleep(Duration::from_millis(300)).await;
    let mut newest = 0;
    while let Ok(Some(Ok(e))) = timeout(Duration::from_millis(300), w.next()).await {
        if let WatchEvent::Put(s) = e {
            assert!(index(&s.version) > newest, "an older version after a newer");
            newest = index(&s.version);
        }
    }
    assert_eq!(newest, index(&v), "the last event reports the last write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_resets_its_index_and_backs_off_when_the_agent_restarts() {
    let Some(bin) = env_or_skip("TENURE_CONSUL_BIN", "watch index reset") else {
        return;
    };
    // A dev agent keeps everything in memory: after a restart its index starts over, below the
    // one the watch holds.
    let mut agent = Agent::start(&bin, Mode::Dev).await;
    let s = ConsulStore::new(
        ConsulOptions::new(agent.addr())
            .timeout(Duration::from_millis(500))
            .connect()
            .await
            .expect("connects"),
    );
    // Push the index up, so that the restarted agent is well below it.
    let mut v = s.put("x", &rec("a", 1), PutMode::Create).await.unwrap();
    let r = s.get("x").await.unwrap().unwrap().record;
    for _ in 0..30 {
        v = s.put("x", &r, PutMode::Update(v)).await.unwrap();
    }
    let mut w = s.watch("x").expect("a watch");
    assert!(matches!(next_news(&mut w).await, WatchEvent::Put(p) if p.version == v));
    agent.kill().await;
    // While the agent is gone: hints, at a pace that backs off (100 ms doubling to 5 s).
    let start = Instant::now();
    let mut hints = 0;
    while start.elapsed() < Duration::from_secs(3) {
        match timeout(Duration::from_millis(200), w.next()).await {
            Ok(Some(Ok(WatchEvent::Hint))) => hints += 1,
            Ok(Some(Ok(e))) => panic!("with the agent gone: {e:?}"),
            Ok(other) => panic!("with the agent gone: {other:?}"),
            Err(_) => {}
        }
    }
    assert!((1..=10).contains(&hints), "{hints} hints in 3 s");
    agent.restart().await;
    // The record is gone (a dev agent), and the new one has a lower index than the watch held.
    let v2 = s.put("x", &rec("b", 1), PutMode::Create).await.unwrap();
    assert!(index(&v2) < index(&v), "{v2} vs {v}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match timeout(deadline - Instant::now(), w.next()).await {
            Ok(Some(Ok(WatchEvent::Put(p)))) if p.version == v2 => break,
            Ok(Some(Ok(_))) => continue,
            other => panic!("after the restart, expected the new record, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Private agents
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// `-dev`: in memory.
    Dev,
    /// A single server with a data directory: the KV survives restarts.
    Server,
}

struct Agent {
    bin: String,
    mode: Mode,
    dir: tempfile::TempDir,
    http: u16,
    ports: [u16; 3],
    child: Option<tokio::process::Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Agent {
    async fn start(bin: &str, mode: Mode) -> Agent {
        let mut a = Agent {
            bin: bin.to_owned(),
            mode,
            dir: tempfile::tempdir().unwrap(),
            http: free_port(),
            ports: [free_port(), free_port(), free_port()],
            child: None,
        };
        a.spawn().await;
        a
    }

    fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    async fn spawn(&mut self) {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.arg("agent");
        match self.mode {
            Mode::Dev => {
                cmd.arg("-dev");
            }
            Mode::Server => {
                cmd.args(["-server", "-bootstrap-expect", "1", "-data-dir"])
                    .arg(self.data())
                    .args(["-hcl", "performance { raft_multiplier = 1 }"]);
            }
        }
        let p = |n: u16| n.to_string();
        cmd.args([
            "-node",
            "private",
            "-bind",
            "127.0.0.1",
            "-client",
            "127.0.0.1",
        ])
        .args([
            "-http-port",
            &p(self.http),
            "-dns-port",
            "-1",
            "-grpc-port",
            "-1",
        ])
        .args(["-serf-lan-port", &p(self.ports[0])])
        .args(["-serf-wan-port", &p(self.ports[1])])
        .args(["-server-port", &p(self.ports[2])])
        .stdout(Stdio::from(log_file(self.dir.path())))
        .stderr(Stdio::null())
        .kill_on_drop(true);
        self.child = Some(cmd.spawn().expect("the consul binary starts"));
        wait_leader(&self.addr(), Duration::from_secs(30)).await;
    }

    async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }

    async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }
}

fn log_file(dir: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("agent.log"))
        .unwrap()
}

async fn wait_leader(addr: &str, bound: Duration) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{addr}/v1/status/leader")).send().await {
            if let Ok(t) = r.text().await {
                if t.len() > 2 {
                    return;
                }
            }
        }
        sleep(Duration::from_millis(100)).await;
    }
    panic!("the private agent at {addr} has no leader after {bound:?}");
}

struct Candidate {
    handle: LeaderHandle,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<tenure::Result<()>>,
}

fn spawn(s: ConsulStore, name: &str, id: &str, l: Duration) -> Candidate {
    let elector = LeaderElector::builder(s, name)
        .identity(id)
        .lease_duration(l)
        .renew_deadline(l * 6 / 10)
        .retry_period(l / 5)
        .build()
        .expect("config");
    let handle = elector.handle();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(elector.run(stop.cancelled_owned(), |t: Term| async move {
        t.cancelled().await;
    }));
    Candidate {
        handle,
        shutdown,
        task,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_agent_killed_and_restarted_under_a_leader() {
    let Some(bin) = env_or_skip("TENURE_CONSUL_BIN", "agent restart") else {
        return;
    };
    let mut agent = Agent::start(&bin, Mode::Server).await;
    let l = Duration::from_secs(2);
    let connect = || async {
        ConsulStore::new(
            ConsulOptions::new(agent.addr())
                .timeout(Duration::from_millis(400))
                .connect()
                .await
                .expect("connects"),
        )
    };
    let a = spawn(connect().await, "job", "a", l);
    let term = timeout(Duration::from_secs(10), a.handle.leading())
        .await
        .expect("a leads")
        .expect("a leads");
    let b = spawn(connect().await, "job", "b", l);
    sleep(l / 2).await;
    assert!(a.handle.is_leader() && !b.handle.is_leader());
    let token = term.fencing_token();
    // Kill the agent right after a renewal.
    let renewed = term.valid_until();
    let until = Instant::now() + l;
    while term.valid_until() == renewed && Instant::now() < until {
        sleep(Duration::from_millis(5)).await;
    }
    let killed = Instant::now();
    agent.kill().await;
    // The leader steps down within its renew deadline (+ one call timeout and slack).
    let bound = l * 6 / 10 + Duration::from_millis(400) + Duration::from_millis(500);
    timeout(bound, term.cancelled())
        .await
        .unwrap_or_else(|_| panic!("the leader did not step down within {bound:?}"));
    eprintln!("stepped down {:?} after the kill", killed.elapsed());
    assert!(!a.handle.is_leader() && !b.handle.is_leader());
    // After the restart (same data directory: the record survives), somebody leads again,
    // with a larger token.
    agent.restart().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let next = loop {
        let current = [&a, &b].map(|c| c.handle.current());
        if let Some(t) = current.into_iter().find_map(|s| match s {
            LeaderState::Leading(t) if !t.is_cancelled() => Some(t),
            _ => None,
        }) {
            break t;
        }
        assert!(Instant::now() < deadline, "nobody leads after the restart");
        sleep(Duration::from_millis(50)).await;
    };
    assert!(
        next.fencing_token() >= token,
        "{} after {token}",
        next.fencing_token()
    );
    for c in [a, b] {
        c.shutdown.cancel();
        let r = timeout(Duration::from_secs(10), c.task)
            .await
            .expect("ends")
            .expect("joins");
        assert!(r.is_ok(), "{r:?}");
    }
}

#[path = "consul/tls.rs"]
mod tls;

#[path = "consul/session_lock.rs"]
mod session_lock;
