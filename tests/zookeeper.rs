//! The ZooKeeper store against real servers: the conformance suite, the node layout and name
//! escaping, garbage of several shapes, digest credentials and ACLs, unreachable servers,
//! tokens across a deleted and re-created node, the watch, a ZooKeeper killed with SIGKILL and
//! restarted under three electors, and an expired session replaced by a new one. The recipes
//! (and Curator interop) are the `recipes` module.
//!
//! Servers come from `scripts/test-services.sh` through `TENURE_ZK_CONNECT`,
//! `TENURE_ZK_AUTH_CONNECT` (with `TENURE_ZK_AUTH_USER`, `TENURE_ZK_AUTH_PASSWORD`,
//! `TENURE_ZK_AUTH_ROOT` and `TENURE_ZK_AUTH_READABLE_ROOT`) and `TENURE_ZK_SERVER_CMD`
//! (private servers for the crash test). A missing variable fails the test when
//! `TENURE_REQUIRE_BACKENDS=1`, and skips it loudly otherwise.

#[path = "zookeeper/recipes.rs"]
mod recipes;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use rand::Rng;
use tenure::conformance::{async_trait, Harness};
use tenure::zookeeper::zookeeper_client::{self, Acls, Client, CreateMode};
use tenure::zookeeper::{ZkAcl, ZkOptions, ZkStore, ZooKeeper};
use tenure::{
    Error, LeaderElector, LeaderHandle, LeaseRecord, LeaseStore, PutMode, StopReason, Term,
    Version, WatchEvent, WatchStream,
};
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

#[path = "support/env.rs"]
mod env;
use env::env_or_skip;

fn unique_root() -> String {
    let r: u64 = rand::thread_rng().gen();
    format!("/tenure-test-{r:016x}")
}

const SESSION: Duration = Duration::from_secs(4);

async fn store(connect: &str, root: &str) -> ZkStore {
    ZkStore::new(connected(connect, root).await)
}

async fn connected(connect: &str, root: &str) -> ZooKeeper {
    ZkOptions::new(connect)
        .root(root)
        .session_timeout(SESSION)
        .timeout(Duration::from_millis(500))
        .connect()
        .await
        .expect("the test ZooKeeper connects")
}

/// A raw client, bypassing tenure.
async fn raw(connect: &str) -> Client {
    Client::connect(connect).await.expect("a raw client")
}

fn open() -> zookeeper_client::CreateOptions<'static> {
    CreateMode::Persistent.with_acls(Acls::anyone_all())
}

fn rec(holder: &str, transitions: u64) -> LeaseRecord {
    LeaseRecord::held_by(holder, Duration::from_secs(5), transitions)
}

struct ZkHarness {
    connect: String,
    root: String,
}

#[async_trait]
impl Harness for ZkHarness {
    type Store = ZkStore;

    async fn store(&self) -> ZkStore {
        store(&self.connect, &self.root).await
    }

    async fn write_garbage(&self, name: &str) {
        let path = self.store().await.path(name).expect("a valid name");
        let c = raw(&self.connect).await;
        let garbage = b"{\"holder\": 42, this is not a tenure record";
        match c.set_data(&path, garbage, None).await {
            Ok(_) => {}
            Err(zookeeper_client::Error::NoNode) => {
                c.mkdir(&self.root, &open()).await.expect("root created");
                c.create(&path, garbage, &open())
                    .await
                    .expect("garbage written");
            }
            Err(e) => panic!("writing garbage: {e}"),
        }
    }
}

tenure::conformance_tests!(
    match env_or_skip("TENURE_ZK_CONNECT", "zookeeper conformance") {
        Some(connect) => ZkHarness {
            connect,
            root: unique_root(),
        },
        None => return,
    }
);

// ---------------------------------------------------------------------------------------------
// Layout, names, garbage, sizes
// ---------------------------------------------------------------------------------------------

/// Each election is one persistent node `<root>/<escaped name>` holding the record's JSON;
/// versions are `<czxid>:<version>`; names escape injectively into one component.
#[tokio::test]
async fn layout_and_names() {
    let Some(connect) = env_or_skip("TENURE_ZK_CONNECT", "layout_and_names") else {
        return;
    };
    let root = unique_root();
    let s = store(&connect, &root).await;
    let c = raw(&connect).await;
    let names = [
        ("a/b", "a%2Fb"),
        ("a__b", "a__b"),
        ("a%2Fb", "a%252Fb"),
        ("..", "%2E%2E"),
        (".", "%2E"),
        ("选举-ø", "选举-ø"),
        ("🦀 crab", "%F0%9F%A6%80%20crab"),
        ("zookeeper", "zookeeper"),
    ];
    for (i, (name, node)) in names.iter().enumerate() {
        let mut r = rec("a", 1);
        r.value = Some(format!("{i}"));
        let v = s.put(name, &r, PutMode::Create).await.unwrap();
        assert_eq!(s.path(name).unwrap(), format!("{root}/{node}"));
        let (data, stat) = c.get_data(&format!("{root}/{node}")).await.unwrap();
        assert_eq!(v.as_str(), format!("{}:{}", stat.czxid, stat.version));
        assert_eq!(stat.ephemeral_owner, 0, "the record node is persistent");
        let stored = LeaseRecord::from_json("zookeeper", node, &data).unwrap();
        assert_eq!(stored.value.as_deref(), Some(&*format!("{i}")));
    }
    let mut children = c.list_children(&root).await.unwrap();
    children.sort();
    let mut expected: Vec<&str> = names.iter().map(|(_, n)| *n).collect();
    expected.sort();
    assert_eq!(children, expected, "one node per name, none shared");
    for (i, (name, _)) in names.iter().enumerate() {
        let got = s.get(name).await.unwrap().unwrap();
        assert_eq!(
            got.record.value.as_deref(),
            Some(&*format!("{i}")),
            "{name:?}"
        );
        assert_eq!(
            got.age, None,
            "ZooKeeper has no single clock to measure ages on"
        );
    }
    // Names too long for one node, or empty, are refused before any call.
    let long = "n".repeat(1024);
    s.put(&long, &rec("a", 1), PutMode::Create).await.unwrap();
    for bad in [String::new(), "n".repeat(1025), "/".repeat(342)] {
        let e = s.get(&bad).await;
        assert!(
            matches!(e, Err(Error::InvalidName { .. })),
            "{bad:?}: {e:?}"
        );
        let e = s.put(&bad, &rec("a", 1), PutMode::Create).await;
        assert!(
            matches!(e, Err(Error::InvalidName { .. })),
            "{bad:?}: {e:?}"
        );
    }
    // Updates are setData with the expected version (never −1): a stale version conflicts.
    let v1 = s.get("a/b").await.unwrap().unwrap().version;
    let r = s.get("a/b").await.unwrap().unwrap().record;
    let v2 = s.put("a/b", &r, PutMode::Update(v1.clone())).await.unwrap();
    assert_ne!(v1, v2);
    let e = s.put("a/b", &r, PutMode::Update(v1.clone())).await;
    assert!(matches!(e, Err(Error::Conflict { .. })), "{e:?}");
    let e = s.delete("a/b", &v1).await;
    assert!(matches!(e, Err(Error::Conflict { .. })), "{e:?}");
    s.delete("a/b", &v2).await.unwrap();
    assert!(s.get("a/b").await.unwrap().is_none());
    let e = s.put("a/b", &r, PutMode::Update(v2)).await;
    assert!(matches!(e, Err(Error::Conflict { .. })), "{e:?}");
}

/// Nodes that do not hold a tenure record — whatever their shape — make `get` fail with
/// `Decode` naming the node's full path, and are never overwritten.
#[tokio::test]
async fn garbage_of_any_shape_is_a_decode_error_and_left_untouched() {
    let Some(connect) = env_or_skip("TENURE_ZK_CONNECT", "garbage_of_any_shape") else {
        return;
    };
    let root = unique_root();
    let s = store(&connect, &root).await;
    let c = raw(&connect).await;
    c.mkdir(&root, &open()).await.unwrap();
    let mut future_format = String::from_utf8(rec("a", 1).to_json()).unwrap();
    future_format = future_format.replace("\"tenure\":1", "\"tenure\":2");
    let mut zero_lease = String::from_utf8(rec("a", 1).to_json()).unwrap();
    zero_lease = zero_lease.replace("\"lease_duration_ms\":5000", "\"lease_duration_ms\":0");
    let shapes: Vec<(&str, Vec<u8>)> = vec![
        ("an empty node", Vec::new()),
        ("text", b"hello".to_vec()),
        ("binary", vec![0, 159, 146, 150, 255]),
        (
            "JSON of another shape",
            br#"{"leader":"x","epoch":3}"#.to_vec(),
        ),
        ("a record of a future format", future_format.into_bytes()),
        ("a record with a zero lease", zero_lease.into_bytes()),
    ];
    for (i, (what, bytes)) in shapes.iter().enumerate() {
        let name = format!("g{i}");
        let path = format!("{root}/{name}");
        c.create(&path, bytes, &open()).await.unwrap();
        let (_, before) = c.get_data(&path).await.unwrap();
        match s.get(&name).await {
            Err(Error::Decode { store, key, .. }) => {
                assert_eq!(store, "zookeeper");
                assert_eq!(key, path, "{what}: the error names the node");
            }
            other => panic!("{what}: expected Decode, got {other:?}"),
        }
        let e = s.put(&name, &rec("b", 2), PutMode::Create).await;
        assert!(
            matches!(e, Err(Error::AlreadyExists { .. })),
            "{what}: {e:?}"
        );
        let own = Version::new(format!("{}:{}", before.czxid, before.version));
        for v in [own, Version::new("0"), Version::new("garbage")] {
            let e = s.put(&name, &rec("b", 2), PutMode::Update(v.clone())).await;
            assert!(e.is_err(), "{what}: update with {v} overwrote garbage");
        }
        let (after_bytes, after) = c.get_data(&path).await.unwrap();
        assert_eq!(&after_bytes, bytes, "{what}: garbage changed");
        assert_eq!(after.version, before.version, "{what}: garbage rewritten");
    }
    // A node with children is garbage too, and not deleted.
    let path = format!("{root}/parent");
    c.create(&path, &rec("a", 1).to_json(), &open())
        .await
        .unwrap();
    c.create(&format!("{path}/child"), b"", &open())
        .await
        .unwrap();
    let stored = s.get("parent").await.unwrap().unwrap();
    let e = s.delete("parent", &stored.version).await;
    assert!(matches!(e, Err(Error::Rejected { .. })), "{e:?}");
    assert!(c.check_stat(&path).await.unwrap().is_some());
}

/// Records longer than ZooKeeper's default `jute.maxbuffer` (less room for the request) are
/// refused before anything is sent; one at the limit round-trips.
#[tokio::test]
async fn sizes_up_to_the_limit_round_trip() {
    let Some(connect) = env_or_skip("TENURE_ZK_CONNECT", "sizes") else {
        return;
    };
    let s = store(&connect, &unique_root()).await;
    let base = rec("a", 1).to_json().len() + "\"value\":\"\",".len();
    let limit = tenure::zookeeper::MAX_RECORD_LEN;
    let mut r = rec("a", 1);
    r.value = Some("v".repeat(limit - base - 30));
    let v = s.put("big", &r, PutMode::Create).await.unwrap();
    let got = s.get("big").await.unwrap().unwrap();
    assert_eq!(got.version, v);
    assert_eq!(got.record.value, r.value);
    r.value = Some("v".repeat(limit));
    match s.put("bigger", &r, PutMode::Create).await {
        Err(Error::TooLarge { size, limit: l, .. }) => {
            assert!(size > l);
            assert_eq!(l, limit);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(s.get("bigger").await.unwrap().is_none());
}

// ---------------------------------------------------------------------------------------------
// Configuration, credentials, ACLs, unreachable servers
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn configuration_errors_and_unreachable_servers() {
    for (what, o) in [
        ("empty connect string", ZkOptions::new("")),
        ("bad port", ZkOptions::new("127.0.0.1:notaport")),
        (
            "relative root",
            ZkOptions::new("127.0.0.1:1").root("tenure"),
        ),
        ("root /", ZkOptions::new("127.0.0.1:1").root("/")),
        (
            "root /zookeeper",
            ZkOptions::new("127.0.0.1:1").root("/zookeeper/x"),
        ),
        (
            "root with ..",
            ZkOptions::new("127.0.0.1:1").root("/a/../b"),
        ),
        (
            "creator ACL without credentials",
            ZkOptions::new("127.0.0.1:1").acl(ZkAcl::CreatorAll),
        ),
        (
            "zero timeout",
            ZkOptions::new("127.0.0.1:1").timeout(Duration::ZERO),
        ),
    ] {
        let e = o.connect().await;
        assert!(matches!(e, Err(Error::Config { .. })), "{what}: {e:?}");
    }
    let bound = Duration::from_millis(300);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    for (what, connect) in [
        ("nothing listening", format!("127.0.0.1:{port}")),
        ("a silent peer", format!("127.0.0.1:{silent_port}")),
    ] {
        let started = Instant::now();
        let r = ZkOptions::new(connect).timeout(bound).connect().await;
        let took = started.elapsed();
        assert!(
            matches!(r, Err(Error::Timeout { after, .. }) if after == bound),
            "{what}: expected Timeout, got {r:?}"
        );
        assert!(
            took < bound + Duration::from_millis(300),
            "{what}: took {took:?}"
        );
    }
}

/// A chroot in the connect string must exist; paths and errors are relative to it.
#[tokio::test]
async fn chroot_in_the_connect_string() {
    let Some(connect) = env_or_skip("TENURE_ZK_CONNECT", "chroot") else {
        return;
    };
    let chroot = unique_root();
    let e = ZkOptions::new(format!("{connect}{chroot}")).connect().await;
    assert!(
        matches!(e, Err(Error::Config { .. })),
        "missing chroot: {e:?}"
    );
    let c = raw(&connect).await;
    c.create(&chroot, b"", &open()).await.unwrap();
    let s = store(&format!("{connect}{chroot}"), "/elections").await;
    s.put("x", &rec("a", 1), PutMode::Create).await.unwrap();
    assert!(c
        .check_stat(&format!("{chroot}/elections/x"))
        .await
        .unwrap()
        .is_some());
    c.set_data(&format!("{chroot}/elections/x"), b"junk", None)
        .await
        .unwrap();
    match s.get("x").await {
        Err(Error::Decode { key, .. }) => assert_eq!(key, format!("{chroot}/elections/x")),
        other => panic!("{other:?}"),
    }
}

fn auth_env(test: &str) -> Option<(String, String, String, String, String)> {
    Some((
        env_or_skip("TENURE_ZK_AUTH_CONNECT", test)?,
        env_or_skip("TENURE_ZK_AUTH_USER", test)?,
        env_or_skip("TENURE_ZK_AUTH_PASSWORD", test)?,
        env_or_skip("TENURE_ZK_AUTH_ROOT", test)?,
        env_or_skip("TENURE_ZK_AUTH_READABLE_ROOT", test)?,
    ))
}

/// The right digest credentials work under the protected roots, and the nodes tenure creates
/// carry the creator's ACL; wrong ones are `PermissionDenied` — at `connect` for a root they
/// cannot read, at the first write for a root anyone may read — and an elector stops with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_credentials_and_acls() {
    let Some((connect, user, password, protected, readable)) = auth_env("digest") else {
        return;
    };
    let root = format!("{protected}{}", unique_root());
    let good = ZkStore::new(
        ZkOptions::new(&connect)
            .digest(&user, &password)
            .root(&root)
            .connect()
            .await
            .unwrap(),
    );
    let v = good.put("x", &rec("me", 1), PutMode::Create).await.unwrap();
    assert_eq!(good.get("x").await.unwrap().unwrap().version, v);
    let c = Client::connector()
        .with_auth("digest", format!("{user}:{password}").as_bytes())
        .connect(&connect)
        .await
        .unwrap();
    let (acl, _) = c.get_acl(&format!("{root}/x")).await.unwrap();
    assert_eq!(acl.len(), 1, "{acl:?}");
    assert_eq!(
        (acl[0].scheme(), acl[0].id().split(':').next()),
        ("digest", Some(&*user))
    );
    // Without credentials: the root (created with the creator's ACL) cannot be read, so the
    // session is refused at connect, and the record cannot be read by a raw client either.
    let e = ZkOptions::new(&connect).root(&root).connect().await;
    assert!(matches!(e, Err(Error::PermissionDenied { .. })), "{e:?}");
    let e = raw(&connect).await.get_data(&format!("{root}/x")).await;
    assert_eq!(e.unwrap_err(), zookeeper_client::Error::NoAuth);

    // Wrong credentials on a root they may not read: refused at connect.
    for (u, p) in [(&*user, "wrong"), ("nobody", "wrong")] {
        let e = ZkOptions::new(&connect)
            .digest(u, p)
            .root(&protected)
            .connect()
            .await;
        match e {
            Err(Error::PermissionDenied { store, .. }) => assert_eq!(store, "zookeeper"),
            other => panic!("{u}:{p}: expected PermissionDenied, got {other:?}"),
        }
    }
    // Wrong credentials on a readable root: reads pass, the first write is refused, and an
    // elector stops with that error instead of retrying.
    let wrong = ZkStore::new(
        ZkOptions::new(&connect)
            .digest(&user, "wrong")
            .root(&readable)
            .connect()
            .await
            .unwrap(),
    );
    assert!(wrong.get("y").await.unwrap().is_none());
    let e = wrong.put("y", &rec("me", 1), PutMode::Create).await;
    assert!(matches!(e, Err(Error::PermissionDenied { .. })), "{e:?}");
    let elector = LeaderElector::builder(wrong, "denied").build().unwrap();
    let r = timeout(
        Duration::from_secs(5),
        elector.run(std::future::pending::<()>(), |_t: Term| async {}),
    )
    .await
    .expect("run ends at once on a permission error");
    assert!(matches!(r, Err(Error::PermissionDenied { .. })), "{r:?}");
    // A root below the protected one, with wrong credentials: the create is refused.
    let below = ZkStore::new(
        ZkOptions::new(&connect)
            .digest(&user, "wrong")
            .root(format!("{protected}{}", unique_root()))
            .connect()
            .await
            .unwrap(),
    );
    let e = below.put("z", &rec("me", 1), PutMode::Create).await;
    assert!(matches!(e, Err(Error::PermissionDenied { .. })), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

/// A node deleted and re-created — by a fresh process that never saw the earlier terms — still
/// gets a token above every earlier one: the new node's czxid is above every zxid before it.
#[tokio::test]
async fn tokens_rise_across_delete_and_re_create() {
    let Some(connect) = env_or_skip("TENURE_ZK_CONNECT", "tokens_rise") else {
        return;
    };
    let root = unique_root();
    let mut seen: Vec<u64> = Vec::new();
    for round in 0..3 {
        // A fresh store (a fresh process, a new session) asks for token 1 every time.
        let s = store(&connect, &root).await;
        let v = s.put("t", &rec("a", 1), PutMode::Create).await.unwrap();
        let got = s.get("t").await.unwrap().unwrap();
        assert_eq!(got.version, v);
        let t1 = got.record.transitions;
        // A renewal keeps it exactly.
        let v = s.put("t", &got.record, PutMode::Update(v)).await.unwrap();
        assert_eq!(s.get("t").await.unwrap().unwrap().record.transitions, t1);
        // A new term asking for one more gets more than the node's last write.
        let mut next = rec("b", t1 + 1);
        next.transitions = t1 + 1;
        let v = s.put("t", &next, PutMode::Update(v)).await.unwrap();
        let t2 = s.get("t").await.unwrap().unwrap().record.transitions;
        assert!(t2 > t1, "round {round}: {t2} after {t1}");
        seen.extend([t1, t2]);
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "round {round}: tokens ran {seen:?}"
        );
        s.delete("t", &v).await.unwrap();
    }
    eprintln!("tokens across deletes: {seen:?}");
}

// ---------------------------------------------------------------------------------------------
// Watch
// ---------------------------------------------------------------------------------------------

async fn next_event(w: &mut WatchStream) -> WatchEvent {
    timeout(Duration::from_secs(5), w.next())
        .await
        .expect("an event within 5 s")
        .expect("the watch goes on")
        .expect("no watch error")
}

/// A watch whose persistent watch is armed: its first event, the hint, is taken.
async fn armed(s: &ZkStore, name: &str) -> WatchStream {
    let mut w = s.watch(name).expect("ZooKeeper can watch");
    assert_eq!(
        next_event(&mut w).await,
        WatchEvent::Hint,
        "the first event"
    );
    w
}

/// Every write — create, renewal, new term, delete — is reported in order, as the `Put` of
/// the version `put` returned with the record as stored (the token the store chose), or
/// `Deleted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_reports_every_write_in_order() {
    let Some(connect) = env_or_skip("TENURE_ZK_CONNECT", "watch_every_write") else {
        return;
    };
    let root = unique_root();
    let s = store(&connect, &root).await;
    let writer = store(&connect, &root).await;
    let mut w = armed(&s, "w").await;
    let mut versions = Vec::new();
    let v = writer
        .put("w", &rec("a", 1), PutMode::Create)
        .await
        .unwrap();
    versions.push(v.clone());
    let mut r = writer.get("w").await.unwrap().unwrap().record;
    let mut last = v;
    for i in 0..10 {
        if i == 5 {
            r = rec("b", r.transitions + 1);
        }
        last = writer.put("w", &r, PutMode::Update(last)).await.unwrap();
        r = writer.get("w").await.unwrap().unwrap().record;
        versions.push(last.clone());
        // One write at a time: each is reported on its own.
        match next_event(&mut w).await {
            WatchEvent::Put(p) if p.version == versions[versions.len() - 2] => {
                // The create's event may come after the first update was sent.
                match next_event(&mut w).await {
                    WatchEvent::Put(p) => assert_eq!(p.version, last),
                    e => panic!("{e:?}"),
                }
            }
            WatchEvent::Put(p) => {
                assert_eq!(p.version, last, "write {i}");
                assert_eq!(p.record, r, "the record as stored");
            }
            e => panic!("write {i}: {e:?}"),
        }
    }
    writer.delete("w", &last).await.unwrap();
    assert_eq!(next_event(&mut w).await, WatchEvent::Deleted);
    // A burst is reported up to its last write.
    let mut v = writer
        .put("w", &rec("c", 1), PutMode::Create)
        .await
        .unwrap();
    let r = writer.get("w").await.unwrap().unwrap().record;
    for _ in 0..20 {
        v = writer.put("w", &r, PutMode::Update(v)).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match next_event(&mut w).await {
            WatchEvent::Put(p) if p.version == v => break,
            WatchEvent::Put(_) | WatchEvent::Hint => {}
            e => panic!("{e:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "the burst's last write never came"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A private ZooKeeper: killed, restarted; sessions expired
// ---------------------------------------------------------------------------------------------

/// A private standalone ZooKeeper (tickTime=200) on its own port and data directory, killed
/// with SIGKILL and restarted on the same data.
struct PrivateZk {
    cmd: String,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<tokio::process::Child>,
}

impl PrivateZk {
    async fn start(cmd: &str) -> Self {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("zoo.cfg"),
            format!(
                "tickTime=200\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={port}\n\
                 clientPortAddress=127.0.0.1\nmaxClientCnxns=0\nadmin.enableServer=false\n\
                 4lw.commands.whitelist=ruok,stat,srvr\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let mut z = PrivateZk {
            cmd: cmd.to_owned(),
            dir,
            port,
            child: None,
        };
        z.restart().await;
        z
    }

    fn connect(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn restart(&mut self) {
        let child = tokio::process::Command::new(&self.cmd)
            .arg("start-foreground")
            .arg(self.dir.path().join("zoo.cfg"))
            .env("JMXDISABLE", "1")
            .env("ZOO_LOG_DIR", self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("zkServer.sh starts");
        self.child = Some(child);
        for _ in 0..300 {
            if ruok(self.port).await {
                return;
            }
            sleep(Duration::from_millis(50)).await;
        }
        panic!("the private ZooKeeper on port {} did not start", self.port);
    }

    async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // tokio's kill is SIGKILL on Unix; zkServer.sh start-foreground execs java.
            c.kill().await.expect("SIGKILL");
        }
    }
}

async fn ruok(port: u16) -> bool {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = Vec::new();
        s.write_all(b"ruok").is_ok() && s.read_to_end(&mut buf).is_ok() && buf == b"imok"
    })
    .await
    .unwrap_or(false)
}

const LEASE: Duration = Duration::from_millis(1000);
const DEADLINE: Duration = Duration::from_millis(600);
const RETRY: Duration = Duration::from_millis(150);

type Stops = Arc<Mutex<Vec<StopReason>>>;

fn candidate(s: ZkStore, name: &str, id: &str) -> (LeaderElector<ZkStore>, Stops) {
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

/// A store with short call timeouts (200 ms), retrying the first connection to a freshly
/// started server.
async fn private_store(connect: &str) -> ZkStore {
    private_store_with(connect, Duration::from_millis(200)).await
}

async fn private_store_with(connect: &str, call_timeout: Duration) -> ZkStore {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ZkOptions::new(connect)
            .session_timeout(SESSION)
            .timeout(call_timeout)
            .connect()
            .await
        {
            Ok(zk) => return ZkStore::new(zk),
            Err(e) if Instant::now() < deadline => eprintln!("connecting: {e}"),
            Err(e) => panic!("{e}"),
        }
    }
}

/// ZooKeeper killed with SIGKILL under three electors: the leader steps down by its renew
/// deadline (calls fail at once while disconnected), nobody leads without ZooKeeper, and after
/// the restart a leader is elected again with a token above every earlier one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_killed_and_restarted_under_a_leader() {
    let Some(cmd) = env_or_skip("TENURE_ZK_SERVER_CMD", "zookeeper_killed_and_restarted") else {
        return;
    };
    let mut server = PrivateZk::start(&cmd).await;
    let connect = server.connect();
    let mut handles = Vec::new();
    let mut tasks = Vec::new();
    let shutdown = CancellationToken::new();
    let mut stores = Vec::new();
    for id in ["a", "b", "c"] {
        let s = private_store(&connect).await;
        stores.push(s.clone());
        let (e, _) = candidate(s, "crash", id);
        handles.push(e.handle());
        tasks.push(tokio::spawn(
            e.run(shutdown.clone().cancelled_owned(), work),
        ));
    }
    let raw_store = private_store(&connect).await;
    let mut before = Vec::new();
    let mut last = 0;
    for _ in 0..2 {
        let t = next_term(&handles, last, LEASE * 4).await;
        last = t.fencing_token();
        before.push(last);
        sleep(RETRY * 3).await;
        // Hand over by deleting the record behind the leader's back.
        let v = raw_store.get("crash").await.unwrap().unwrap().version;
        match raw_store.delete("crash", &v).await {
            Ok(()) | Err(Error::Conflict { .. }) => {}
            Err(e) => panic!("{e}"),
        }
        if timeout(LEASE * 2, t.cancelled()).await.is_err() {
            // The leader renewed between our read and delete: delete again.
            let v = raw_store.get("crash").await.unwrap().unwrap().version;
            raw_store.delete("crash", &v).await.unwrap();
            timeout(LEASE * 2, t.cancelled()).await.unwrap();
        }
    }
    let t = next_term(&handles, last, LEASE * 4).await;
    last = t.fencing_token();
    before.push(last);
    sleep(RETRY * 3).await;
    assert!(t.is_valid());

    server.kill().await;
    let killed = Instant::now();
    // While disconnected, calls fail at once.
    let started = Instant::now();
    let e = raw_store.get("crash").await;
    assert!(
        matches!(
            e,
            Err(Error::Unavailable { .. }) | Err(Error::Timeout { .. })
        ),
        "{e:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(400));
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
        "a leader without ZooKeeper"
    );

    server.restart().await;
    let restarted = Instant::now();
    let after = next_term(&handles, 0, Duration::from_secs(15)).await;
    let elected = restarted.elapsed();
    assert!(
        before.iter().all(|b| after.fencing_token() > *b),
        "token {} after the restart is not above {before:?}",
        after.fencing_token()
    );
    eprintln!(
        "stepped down {stepped:?} after SIGKILL; new leader {elected:?} after restart; \
         tokens before {before:?}, after {}",
        after.fencing_token()
    );
    shutdown.cancel();
    for task in tasks {
        timeout(LEASE * 3, task).await.unwrap().unwrap().unwrap();
    }
    server.kill().await;
}

/// The watch survives a server restart within the session: it hints at the gap, then reports
/// writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_hints_after_a_restart_and_goes_on() {
    let Some(cmd) = env_or_skip("TENURE_ZK_SERVER_CMD", "watch_after_restart") else {
        return;
    };
    let mut server = PrivateZk::start(&cmd).await;
    // A freshly restarted server's first answers can be slow: a call timeout of 2 s keeps the
    // re-arming from failing (the stream would end with `Timeout`, and a caller restart it).
    let s = private_store_with(&server.connect(), Duration::from_secs(2)).await;
    let mut w = armed(&s, "w").await;
    let v = s.put("w", &rec("a", 1), PutMode::Create).await.unwrap();
    assert!(matches!(next_event(&mut w).await, WatchEvent::Put(p) if p.version == v));
    let session = s.zookeeper().session_id();
    server.kill().await;
    // The disconnect itself is a hint.
    assert_eq!(next_event(&mut w).await, WatchEvent::Hint);
    server.restart().await;
    // Reconnected within the session, the watch is armed again (zookeeper-client 0.11 would
    // not restore it) and hints. If re-arming raced the reconnection, the stream ends with a
    // retryable error instead, and a new watch is armed, as the elector does.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let item = timeout(Duration::from_secs(5), w.next())
            .await
            .expect("an event within 5 s");
        match item {
            Some(Ok(WatchEvent::Hint)) => break,
            Some(Err(e)) if e.is_retryable() && Instant::now() < deadline => {
                sleep(Duration::from_millis(200)).await;
                w = match s.watch("w") {
                    Some(w) => w,
                    None => panic!("ZooKeeper can watch"),
                };
            }
            other => panic!("after the restart, expected a hint: {other:?}"),
        }
    }
    assert_eq!(
        s.zookeeper().session_id(),
        session,
        "the session survived the restart"
    );
    let st = s.get("w").await.unwrap().unwrap();
    let v2 = s
        .put("w", &st.record, PutMode::Update(st.version))
        .await
        .unwrap();
    match next_event(&mut w).await {
        WatchEvent::Put(p) => assert_eq!(p.version, v2),
        e => panic!("{e:?}"),
    }
    server.kill().await;
}

/// A TCP proxy in front of a server that can freeze: while frozen it forwards nothing and
/// holds new connections without answering — a paused client, as the server sees it.
#[derive(Clone)]
struct FreezingProxy {
    port: u16,
    frozen: Arc<std::sync::atomic::AtomicBool>,
}

impl FreezingProxy {
    fn start(upstream: &str) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let (f, upstream) = (frozen.clone(), upstream.to_owned());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if f.load(Ordering::SeqCst) {
                    held.push(client);
                    continue;
                }
                held.clear();
                let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let f = f.clone();
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            if f.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(20));
                                continue;
                            }
                            match from.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        FreezingProxy { port, frozen }
    }

    fn connect(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn freeze(&self, on: bool) {
        self.frozen.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A leader whose client is cut off (a paused process, as ZooKeeper sees it) steps down by its
/// renew deadline; its session expires; once it can talk again its store opens a new session
/// (once, for all callers), its watch is re-armed on it, and it follows the new leader — and
/// leads again, with a higher token, when that one leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_is_replaced_and_electors_recover() {
    let Some(connect) = env_or_skip("TENURE_ZK_CONNECT", "session_expiry") else {
        return;
    };
    let proxy = FreezingProxy::start(&connect);
    let root = unique_root();
    let ls = store(&proxy.connect(), &root).await;
    let fs = store(&connect, &root).await;
    let shutdown = CancellationToken::new();
    let (leader, _) = candidate(ls.clone(), "expiry", "a");
    let lh = leader.handle();
    let lt = tokio::spawn(leader.run(shutdown.clone().cancelled_owned(), work));
    let first = timeout(LEASE * 4, lh.leading()).await.unwrap().unwrap();
    let f_shutdown = CancellationToken::new();
    let (follower, _) = candidate(fs.clone(), "expiry", "b");
    let fh = follower.handle();
    let ft = tokio::spawn(follower.run(f_shutdown.clone().cancelled_owned(), work));
    let mut w = armed(&ls, "expiry").await;
    sleep(LEASE).await;

    let old = ls.zookeeper().session_id().unwrap();
    proxy.freeze(true);
    let frozen = Instant::now();
    timeout(DEADLINE + Duration::from_millis(400), first.cancelled())
        .await
        .expect("the cut-off leader steps down by its renew deadline");
    let second = next_term(std::slice::from_ref(&fh), first.fencing_token(), LEASE * 4).await;
    // The client gives the session up after 7/5 of its timeout without a word from the server.
    let client = ls.zookeeper().client().await.unwrap();
    while !client.state().is_terminated() {
        assert!(frozen.elapsed() < SESSION * 3, "the session never expired");
        sleep(Duration::from_millis(50)).await;
    }
    let expired = frozen.elapsed();
    proxy.freeze(false);
    // Concurrent callers share one new session.
    let zk = ls.zookeeper().clone();
    let ids = futures_util::future::join_all((0..8).map(|_| {
        let zk = zk.clone();
        async move { zk.client().await.map(|c| c.session_id()) }
    }))
    .await;
    let ids: Vec<_> = ids.into_iter().map(Result::unwrap).collect();
    assert!(
        ids.iter().all(|id| *id == ids[0] && *id != old),
        "{old:?} then {ids:?}"
    );
    // The watch hinted at the gap, was re-armed on the new session, and reports b's renewals.
    let mut hinted = false;
    let mut puts = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while puts < 3 {
        match next_event(&mut w).await {
            WatchEvent::Hint => hinted = true,
            WatchEvent::Put(p) if hinted => {
                assert_eq!(p.record.holder.as_deref(), Some("b"));
                puts += 1;
            }
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "no renewals seen after the expiry"
        );
    }
    match lh.current() {
        tenure::LeaderState::Following(l) => assert_eq!(l.identity, "b"),
        other => panic!("the old leader is {other:?}"),
    }
    // b leaves; a, on its new session, leads again above b's token.
    f_shutdown.cancel();
    ft.await.unwrap().unwrap();
    let third = next_term(std::slice::from_ref(&lh), second.fencing_token(), LEASE * 4).await;
    eprintln!(
        "tokens {} → {} → {}; the session expired {expired:?} after the cut",
        first.fencing_token(),
        second.fencing_token(),
        third.fencing_token()
    );
    shutdown.cancel();
    lt.await.unwrap().unwrap();
}
