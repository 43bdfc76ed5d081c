//! A kube-runtime `Controller` that runs only while this replica leads.
//!
//! Run two or three copies against a cluster (any kubeconfig or in-cluster config):
//!
//! ```sh
//! cargo run --example kube_controller --features kubernetes
//! ```
//!
//! Each copy campaigns for the Lease `kube-controller-example` in the client's default
//! namespace (override with `LEASE_NAMESPACE`). The leader reconciles ConfigMaps of that
//! namespace; on losing the Lease the controller is shut down gracefully through the term's
//! token (`graceful_shutdown_on`), and the replica campaigns again. Ctrl-C / SIGTERM drains the
//! controller, releases the Lease, and a follower takes over at once.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tenure::kubernetes::{default_identity, KubeLeaseStore};
use tenure::{LeaderElector, Term};

struct Ctx {
    identity: String,
    fencing_token: u64,
}

async fn reconcile(cm: Arc<ConfigMap>, ctx: Arc<Ctx>) -> Result<Action, kube::Error> {
    // Pass the fencing token along with every side effect, so that a deposed leader's late
    // writes can be refused downstream.
    println!(
        "{} (fencing token {}) reconciles ConfigMap {}",
        ctx.identity,
        ctx.fencing_token,
        cm.name_any()
    );
    Ok(Action::requeue(Duration::from_secs(300)))
}

fn error_policy(_cm: Arc<ConfigMap>, err: &kube::Error, _ctx: Arc<Ctx>) -> Action {
    eprintln!("reconcile failed: {err}");
    Action::requeue(Duration::from_secs(5))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::try_default().await?;
    let namespace =
        std::env::var("LEASE_NAMESPACE").unwrap_or_else(|_| client.default_namespace().to_owned());
    let identity = default_identity(); // the pod's name when POD_NAME is set
    let store = KubeLeaseStore::new(client.clone(), &namespace)?;
    let elector = LeaderElector::builder(store, "kube-controller-example")
        .identity(&identity)
        .lease_duration(Duration::from_secs(15))
        .renew_deadline(Duration::from_secs(10))
        .retry_period(Duration::from_secs(2))
        .on_new_leader(|l| println!("leader is now {:?}", l.map(|l| &l.identity)))
        .on_stopped_leading(|why| println!("stopped leading: {why:?}"))
        .build()?;

    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };

    println!("{identity} campaigns for {namespace}/kube-controller-example");
    elector
        .run(shutdown, move |term: Term| {
            let client = client.clone();
            let namespace = namespace.clone();
            async move {
                let ctx = Arc::new(Ctx {
                    identity: term.identity().to_owned(),
                    fencing_token: term.fencing_token(),
                });
                println!(
                    "{} leads (fencing token {})",
                    ctx.identity, ctx.fencing_token
                );
                let configmaps: Api<ConfigMap> = Api::namespaced(client, &namespace);
                Controller::new(configmaps, watcher::Config::default())
                    // Stops taking new work and lets running reconciles finish when the term
                    // ends: lost, or shutdown requested.
                    .graceful_shutdown_on(term.token().clone().cancelled_owned())
                    .run(reconcile, error_policy, ctx)
                    .for_each(|_| async {})
                    .await;
                println!("controller stopped");
            }
        })
        .await?;
    Ok(())
}
