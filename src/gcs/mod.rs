//! Google Cloud Storage (feature `gcs`): elections and locks on one object per name, for
//! services on Google Cloud that share a bucket and no coordination service.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use tenure::gcs::{self, GcsOptions, GcsStore};
//! use tenure::lock::Mutex;
//!
//! // Application default credentials; with STORAGE_EMULATOR_HOST set, an emulator and none.
//! let store = GcsStore::new(GcsOptions::new("my-bucket").connect().await?);
//! let mutex = Mutex::builder(store, "nightly-report")
//!     .identity(gcs::instance_identity("report-task"))   // seed 001: process prefix + task
//!     .lease_duration(Duration::from_secs(30))
//!     .renew_deadline(Duration::from_secs(20))
//!     .retry_period(Duration::from_secs(5))                 // refresh interval; build() refuses < 1 s
//!     .max_refresh_fails(3)
//!     .backoff_min(Duration::from_secs(1))
//!     .backoff_max(Duration::from_secs(30))
//!     .backoff_multiplier(2.0)
//!     .build()?;
//! mutex
//!     .synchronize(Some(Duration::from_secs(60)), |term| async move {
//!         // term.fencing_token(): pass it to whatever the report writes.
//!         Ok::<_, std::io::Error>(())
//!     })
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! - [`GcsOptions`] / [`Gcs`]: the bucket handle (bucket, object prefix, [`Credentials`] through
//!   [`gcp_auth`], a [`PredefinedAcl`] for new objects, endpoint override, timeout),
//!   `STORAGE_EMULATOR_HOST` honoured as Google's own client libraries do.
//! - [`GcsStore`]: the [`LeaseStore`](crate::LeaseStore) on one object per election, for
//!   [`LeaderElector`](crate::LeaderElector) and [`Mutex`](crate::lock::Mutex). Every
//!   mutation is a conditional multipart upload on the object's `generation`.
//! - [`MIN_RETRY_PERIOD`]: Cloud Storage's write rate per object; electors and locks over a
//!   [`GcsStore`] refuse a shorter retry period when built.
//!
//! # Seed 001's lock, feature by feature
//!
//! | seed 001 (`DistributedLock::GoogleCloudStorage::Lock`) | tenure |
//! |---|---|
//! | `instance_identity_prefix` (random + pid), thread identity | [`instance_identity_prefix`], [`instance_identity`]`(task)`; one `Mutex` value per task |
//! | `ttl`, `refresh_interval` | `lease_duration` (`L`), `retry_period` (`R`, ≥ 1 s), `renew_deadline` (`D`) |
//! | `max_refresh_fails` | [`MutexBuilder::max_refresh_fails`](crate::lock::MutexBuilder::max_refresh_fails) |
//! | `backoff_min` / `backoff_max` / `backoff_multiplier` | the same names on [`MutexBuilder`](crate::lock::MutexBuilder) |
//! | `lock(timeout:)`, `unlock`, `synchronize` | [`Mutex::lock`](crate::lock::Mutex::lock), [`Mutex::unlock`](crate::lock::Mutex::unlock), [`Mutex::synchronize`](crate::lock::Mutex::synchronize) |
//! | `abandon` | [`Mutex::abandon`](crate::lock::Mutex::abandon) |
//! | `healthy?` / `check_health!` | [`Mutex::healthy`](crate::lock::Mutex::healthy) / [`Mutex::check_health`](crate::lock::Mutex::check_health) |
//! | `locked_according_to_server?` / `owned_according_to_server?` | [`Mutex::is_locked`](crate::lock::Mutex::is_locked) / [`Mutex::is_locked_by_me`](crate::lock::Mutex::is_locked_by_me) |
//! | `locked_according_to_internal_state?` | [`Mutex::is_held`](crate::lock::Mutex::is_held) |
//! | `object_acl` | [`GcsOptions::object_acl`] |
//! | `cloud_storage_options` (project, credentials) | [`GcsOptions::credentials`], [`GcsOptions::user_project`], [`GcsOptions::endpoint`] |
//!
//! What tenure does differently: a lock is stale when its holder has been *seen* not
//! renewing for a lease duration on the waiter's own monotonic clock — never by comparing the
//! object's `updated` (Google's clock) with the local wall clock; renewals, takeovers and
//! releases are conditional on the object's **generation** (not its metageneration, which
//! another writer's upload resets to 1); and every acquisition carries a fencing token.

mod client;
mod store;

use std::sync::OnceLock;
use std::time::Duration;

pub use client::{
    Credentials, Gcs, GcsOptions, PredefinedAcl, DEFAULT_AUTH_TIMEOUT, DEFAULT_ENDPOINT,
    DEFAULT_PREFIX, DEFAULT_TIMEOUT, EMULATOR_ENV, MAX_OBJECT_NAME_LEN,
};
pub use store::{
    GcsStore, MAX_RECORD_LEN, MAX_UPLOAD_LEN, TOKEN_FROM_GENERATION, TOKEN_METADATA_KEY,
};

/// The shortest retry period an elector or lock on Cloud Storage may use: Cloud Storage
/// allows about one write per second to one object (more fail with 429), and a leader
/// writes once per retry period. [`GcsStore`] reports it as its
/// [`Capabilities::min_retry_period`](crate::Capabilities::min_retry_period), so the
/// builders of electors and locks over it refuse a shorter one, naming the limit.
pub const MIN_RETRY_PERIOD: Duration = Duration::from_secs(1);

/// This process's identity prefix (seed 001's `default_instance_identity_prefix`): 24 random
/// hex digits drawn once per process, then `-` and the process id — so a forked child, with
/// another pid, gets another prefix.
pub fn instance_identity_prefix() -> String {
    static RANDOM: OnceLock<String> = OnceLock::new();
    let random = RANDOM.get_or_init(|| {
        use rand::Rng;
        format!("{:024x}", rand::thread_rng().gen::<u128>() >> 32)
    });
    format!("{random}-{}", std::process::id())
}

/// An identity for one task of this process (seed 001's identity per process and thread):
/// [`instance_identity_prefix`], `-`, and `task`. Give each task that contends for a lock
/// its own `Mutex` with its own task name; a restarted process gets a new prefix, so it
/// never mistakes its predecessor's lock for its own.
pub fn instance_identity(task: impl std::fmt::Display) -> String {
    format!("{}-{task}", instance_identity_prefix())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_share_the_process_prefix() {
        let p = instance_identity_prefix();
        assert_eq!(p, instance_identity_prefix());
        assert!(p.ends_with(&format!("-{}", std::process::id())));
        assert_eq!(instance_identity("worker-3"), format!("{p}-worker-3"));
        assert_ne!(instance_identity("a"), instance_identity("b"));
    }
}
