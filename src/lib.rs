#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod connect;
#[cfg(feature = "consul")]
pub mod consul;
#[macro_use]
pub mod elector;
mod error;
#[cfg(feature = "file")]
pub mod file;
#[cfg(feature = "gcs")]
pub mod gcs;
#[cfg(feature = "http")]
pub mod http;
mod identity;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod lock;
mod memory;
#[cfg(feature = "metrics")]
pub mod metrics;
mod record;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(any(feature = "consul", feature = "gcs"))]
mod segment;
mod store;
mod term;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "zookeeper")]
pub mod zookeeper;

pub use connect::{connect, DynStore};
pub use elector::{
    Backoff, Builder, Config, Leader, LeaderElector, LeaderHandle, LeaderState, LostReason,
    Observer, StopReason,
};
pub use error::{with_timeout, BoxError, Error, Result};
pub use memory::MemoryStore;
pub use record::LeaseRecord;
pub use store::{
    starts_term, Capabilities, LeaseStore, PutMode, Stored, Version, WatchEvent, WatchStream,
};
pub use term::Term;
