//! The `tenure` command end to end: the built binary against the file store and a real Redis
//! server (`scripts/test-services.sh`), plus smoke tests on Kubernetes, ZooKeeper and Consul.

#[path = "cli/support.rs"]
mod support;

#[path = "cli/run.rs"]
mod run;

#[path = "cli/lock.rs"]
mod lock;

#[path = "cli/errors.rs"]
mod errors;

#[path = "cli/observability.rs"]
mod observability;

#[path = "cli/examples.rs"]
mod examples;
