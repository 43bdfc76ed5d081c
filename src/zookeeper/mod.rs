//! ZooKeeper (feature `zookeeper`): the session ([`ZkOptions`], [`ZooKeeper`]) and the record
//! store [`ZkStore`].
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> tenure::Result<()> {
//! use std::time::Duration;
//! use tenure::zookeeper::{ZkOptions, ZkStore};
//!
//! let zk = ZkOptions::new("zk1:2181,zk2:2181,zk3:2181/apps")
//!     .digest("billing", "secret")
//!     .root("/billing/tenure")
//!     .timeout(Duration::from_secs(1))
//!     .connect()
//!     .await?;
//! let elector = tenure::LeaderElector::builder(ZkStore::new(zk), "scheduler").build()?;
//! # let _ = elector; Ok(()) }
//! ```

mod connection;
mod latch;
mod mutex;
mod recipe;
mod rwlock;
mod semaphore;
mod store;

pub use self::connection::{
    ZkAcl, ZkOptions, ZooKeeper, DEFAULT_ROOT, DEFAULT_SESSION_TIMEOUT, DEFAULT_TIMEOUT,
};
pub use self::latch::LeaderLatch;
pub use self::mutex::{cleanup, Mutex};
pub use self::recipe::{Guard, LockResult};
pub use self::rwlock::{ReadLock, RwLock, WriteLock};
pub use self::semaphore::Semaphore;
pub use self::store::{ZkStore, JUTE_MAXBUFFER, MAX_NAME_LEN, MAX_RECORD_LEN};
/// The ZooKeeper client crate, re-exported: [`ZooKeeper::client`] hands out its `Client`.
pub use zookeeper_client;
