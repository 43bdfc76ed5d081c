//! HTTPS: a private dev agent serving its API over TLS with a certificate from a CA made by
//! `consul tls ca create`: trusted through `ConsulOptions::ca_bundle` (and `CONSUL_CACERT`
//! through the CA file option), refused without it, and a plain-HTTP client refused by the
//! HTTPS port.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tenure::consul::{ConsulOptions, ConsulStore};
use tenure::{Error, LeaseRecord, LeaseStore, PutMode};
use tokio::time::{sleep, Instant};

use super::{env_or_skip, free_port, log_file};

/// A dev agent whose API listens on HTTPS only.
struct TlsAgent {
    dir: tempfile::TempDir,
    https: u16,
    _child: tokio::process::Child,
}

impl TlsAgent {
    async fn start(bin: &str) -> TlsAgent {
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let out = std::process::Command::new(bin)
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("the consul binary runs");
            assert!(out.status.success(), "consul {args:?}: {out:?}");
        };
        run(&["tls", "ca", "create"]);
        run(&["tls", "cert", "create", "-server", "-dc", "dc1"]);
        let https = free_port();
        let p = |n: u16| n.to_string();
        let f = |name: &str| dir.path().join(name).display().to_string();
        let hcl = format!(
            "ports {{ http = -1 https = {https} }} \
             ca_file = \"{}\" cert_file = \"{}\" key_file = \"{}\" verify_incoming = false",
            f("consul-agent-ca.pem"),
            f("dc1-server-consul-0.pem"),
            f("dc1-server-consul-0-key.pem"),
        );
        let child = tokio::process::Command::new(bin)
            .args(["agent", "-dev", "-node", "tls", "-bind", "127.0.0.1"])
            .args([
                "-client",
                "127.0.0.1",
                "-dns-port",
                "-1",
                "-grpc-port",
                "-1",
            ])
            .args(["-serf-lan-port", &p(free_port())])
            .args(["-serf-wan-port", &p(free_port())])
            .args(["-server-port", &p(free_port())])
            .args(["-hcl", &hcl])
            .stdout(Stdio::from(log_file(dir.path())))
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the consul binary starts");
        let agent = TlsAgent {
            dir,
            https,
            _child: child,
        };
        agent.wait_leader().await;
        agent
    }

    fn ca(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("consul-agent-ca.pem")).unwrap()
    }

    fn ca_path(&self) -> &Path {
        self.dir.path()
    }

    /// Waits until the agent answers over HTTPS with a leader (through tenure itself).
    async fn wait_leader(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = ConsulOptions::new(format!("https://127.0.0.1:{}", self.https))
                .ca_bundle(self.ca())
                .timeout(Duration::from_secs(1))
                .connect()
                .await;
            match r {
                Ok(_) => return,
                Err(e) if Instant::now() > deadline => {
                    panic!("the TLS agent did not come up in 30 s: {e}")
                }
                Err(_) => sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_ca_bundle_works_and_without_it_is_refused() {
    let Some(bin) = env_or_skip("TENURE_CONSUL_BIN", "https_with_a_ca_bundle") else {
        return;
    };
    let agent = TlsAgent::start(&bin).await;
    let addr = format!("https://127.0.0.1:{}", agent.https);

    // Trusted through the bundle: the store works end to end.
    let consul = ConsulOptions::new(&addr)
        .ca_bundle(agent.ca())
        .prefix("tls/")
        .connect()
        .await
        .expect("connects with the CA bundle");
    let s = ConsulStore::new(consul);
    let rec = LeaseRecord::held_by("a", Duration::from_secs(5), 1);
    let v = s.put("x", &rec, PutMode::Create).await.unwrap();
    let got = s.get("x").await.unwrap().expect("the record");
    assert_eq!(got.version, v);
    assert_eq!(got.record.holder.as_deref(), Some("a"));

    // The CA as a file, as CONSUL_CACERT names it.
    let file = agent.ca_path().join("consul-agent-ca.pem");
    let from_file = ConsulOptions::new(&addr)
        .ca_file(file.display().to_string())
        .connect()
        .await;
    assert!(from_file.is_ok(), "with the CA file: {from_file:?}");
    // A CA file that does not exist is a configuration error, before any call.
    let missing = ConsulOptions::new(&addr)
        .ca_file(agent.ca_path().join("nope.pem").display().to_string())
        .connect()
        .await;
    assert!(
        matches!(missing, Err(Error::Config { .. })),
        "a missing CA file: {missing:?}"
    );
    // Garbage as a bundle is a configuration error too.
    let garbage = ConsulOptions::new(&addr)
        .ca_bundle(b"not a certificate".to_vec())
        .connect()
        .await;
    assert!(
        matches!(garbage, Err(Error::Config { .. })),
        "a garbage bundle: {garbage:?}"
    );

    // The system's roots do not know this CA: refused, and the error says why.
    let untrusted = ConsulOptions::new(&addr)
        .timeout(Duration::from_secs(1))
        .connect()
        .await;
    // Final at once (a configuration error naming the certificate), not retried until the
    // timeout.
    let e = untrusted.expect_err("an untrusted certificate must be refused");
    let chain = error_chain(&e);
    assert!(
        matches!(e, Error::Config { .. }) && chain.contains("certificate"),
        "the refusal names the certificate: {chain}"
    );

    // Plain HTTP to the HTTPS port gets no API answer.
    let plain = ConsulOptions::new(format!("http://127.0.0.1:{}", agent.https))
        .timeout(Duration::from_secs(1))
        .connect()
        .await;
    assert!(plain.is_err(), "plain HTTP to an HTTPS port: {plain:?}");
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
