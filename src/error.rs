//! The crate's error type: semantic variants, with the backend's own error as `source`.

use std::time::Duration;

/// A boxed backend error kept as the `source` of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with tenure's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in tenure, by meaning rather than by backend.
///
/// Variants name *what* happened; the backend's own error, when there is one, is kept as the
/// [`source`](std::error::Error::source). Match on the variant, log the chain.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is invalid; `rule` says which rule was broken and with which values.
    #[error("invalid configuration: {rule}")]
    Config {
        /// The broken rule, for example "renew_deadline (10s) must be shorter than
        /// lease_duration (5s)".
        rule: String,
    },

    /// A compare-and-swap update failed: the stored version is not the expected one (or the
    /// record no longer exists).
    #[error("{store}: conflicting update of {name:?}: the record changed since it was read")]
    Conflict {
        /// The store that refused the write.
        store: &'static str,
        /// The election or lock name.
        name: String,
    },

    /// A create failed because a record already exists.
    #[error("{store}: {name:?} already exists")]
    AlreadyExists {
        /// The store that refused the write.
        store: &'static str,
        /// The election or lock name.
        name: String,
    },

    /// A remote call did not finish within its deadline.
    #[error("{store}: {operation} of {name:?} timed out after {after:?}")]
    Timeout {
        /// The store that was called.
        store: &'static str,
        /// The operation, for example `"get"` or `"put"`.
        operation: &'static str,
        /// The election or lock name.
        name: String,
        /// The deadline that elapsed.
        after: Duration,
    },

    /// The store refused the call for lack of permission (bad credentials, RBAC, ACL, file mode).
    #[error("{store}: permission denied for {operation} of {name:?}")]
    PermissionDenied {
        /// The store that refused the call.
        store: &'static str,
        /// The operation that was refused.
        operation: &'static str,
        /// The election or lock name.
        name: String,
        /// The backend's own error.
        #[source]
        source: BoxError,
    },

    /// What is stored at the key is not what tenure expects there — not a tenure record, or
    /// (Consul's session locks) a key whose flags belong to another use. It is left untouched;
    /// `source` says what was found.
    #[error("{store}: {key:?} holds something other than tenure expects there (left untouched)")]
    Decode {
        /// The store holding the record.
        store: &'static str,
        /// The store's own key or path of the record.
        key: String,
        /// Why decoding failed.
        #[source]
        source: BoxError,
    },

    /// The name cannot be held by this store (too long, forbidden characters, empty).
    #[error("{store}: invalid name {name:?}: {reason}")]
    InvalidName {
        /// The store that cannot hold the name.
        store: &'static str,
        /// The name as given.
        name: String,
        /// Why it cannot be held.
        reason: String,
    },

    /// The store cannot be reached (connection refused, path missing, server down).
    #[error("{store}: unavailable")]
    Unavailable {
        /// The store that could not be reached.
        store: &'static str,
        /// The backend's own error.
        #[source]
        source: BoxError,
    },

    /// The store does not support this operation.
    #[error("{store}: {operation} is not supported")]
    Unsupported {
        /// The store.
        store: &'static str,
        /// The unsupported operation.
        operation: &'static str,
    },

    /// The record is larger than the store can hold, or than a reader would accept; nothing
    /// was written.
    #[error("{store}: the record for {name:?} is {size} bytes, more than the {limit} bytes {store} allows ({what})")]
    TooLarge {
        /// The store that refused the record.
        store: &'static str,
        /// The election or lock name.
        name: String,
        /// The record's encoded size in bytes, as the store would write it.
        size: usize,
        /// The store's limit in bytes.
        limit: usize,
        /// What the limit is, for example "a Lease's annotations".
        what: &'static str,
    },

    /// No fencing token above every earlier one can be issued (the counter is exhausted, or
    /// the store cannot provide a monotonic position); no term was started.
    #[error("{store}: cannot issue a fencing token for {name:?}: {reason}")]
    Fencing {
        /// The store.
        store: &'static str,
        /// The election or lock name.
        name: String,
        /// Why.
        reason: String,
    },

    /// The store refused the record as invalid (for example a Kubernetes 422); retrying the
    /// same write cannot succeed.
    #[error("{store}: the record for {name:?} was refused as invalid")]
    Rejected {
        /// The store that refused the record.
        store: &'static str,
        /// The election or lock name.
        name: String,
        /// The backend's own error.
        #[source]
        source: BoxError,
    },

    /// Any other backend failure.
    #[error("{store}: backend error")]
    Backend {
        /// The store.
        store: &'static str,
        /// The backend's own error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// Builds an [`Error::Config`].
    pub fn config(rule: impl Into<String>) -> Self {
        Error::Config { rule: rule.into() }
    }

    /// Whether retrying the same call later may succeed (timeouts, unavailability, conflicts,
    /// transient backend errors). Permission, decoding, naming, size, fencing and configuration
    /// errors are final: the elector reports them instead of retrying forever.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Conflict { .. }
                | Error::AlreadyExists { .. }
                | Error::Timeout { .. }
                | Error::Unavailable { .. }
                | Error::Backend { .. }
        )
    }

    /// Whether this is an [`Error::Conflict`] or [`Error::AlreadyExists`]: somebody else wrote
    /// first.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict { .. } | Error::AlreadyExists { .. })
    }
}

/// Runs `fut` under `after`, mapping an elapsed deadline to [`Error::Timeout`].
///
/// Every store uses this around each remote call.
pub async fn with_timeout<T>(
    store: &'static str,
    operation: &'static str,
    name: &str,
    after: Duration,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(after, fut).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout {
            store,
            operation,
            name: name.to_owned(),
            after,
        }),
    }
}
