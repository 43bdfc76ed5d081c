//! The ZooKeeper session shared by the store and the recipes: [`ZkOptions`] and [`ZooKeeper`].
//!
//! # Deviations from the sketch in issue 10
//!
//! - `zookeeper_client::Error::Timeout` means "no session could be established within the
//!   session timeout"; [`map_err`] maps it to [`Error::Unavailable`] (it names no deadline of
//!   ours). Every deadline of tenure's own — [`ZkOptions::timeout`] around each call, connecting
//!   included — is an [`Error::Timeout`].
//! - Digest authentication in ZooKeeper never fails by itself (`addauth digest u:p` only adds an
//!   identity); wrong credentials show as `NoAuth` on the nodes whose ACLs name another
//!   identity. [`ZkOptions::connect`] therefore reads the root node, if it exists, so that a
//!   root the credentials cannot read fails at once with [`Error::PermissionDenied`]; a root
//!   readable by anyone (say `CreatorAllWorldRead`) lets the connection through and the first
//!   write fails with [`Error::PermissionDenied`] instead.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use zookeeper_client::{
    Acl, Acls, Client, CreateMode, CreateOptions, Permission, SessionId, SessionState,
};

use crate::error::{with_timeout, Error, Result};

/// The store name used in errors and logs.
pub(crate) const KIND: &str = "zookeeper";

/// The default root under which tenure keeps its nodes.
pub const DEFAULT_ROOT: &str = "/tenure";
/// The default requested session timeout.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// The default deadline of every call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest root path, in bytes.
pub(crate) const MAX_ROOT_LEN: usize = 4096;
/// The longest chroot in a connect string, in bytes.
pub(crate) const MAX_CHROOT_LEN: usize = 2048;

static CREATOR_ALL_WORLD_READ: [Acl; 2] = [
    Acl::new_const(Permission::ALL, "auth", ""),
    Acl::new_const(Permission::READ, "world", "anyone"),
];

/// The ACLs of the nodes tenure creates (records, their parents, recipe nodes).
///
/// ZooKeeper checks ACLs per node and never inherits them: each node tenure creates gets these.
/// `auth` ACLs (the creator variants) name every identity the session authenticated with — here
/// the digest credentials of [`ZkOptions::digest`]; ZooKeeper refuses them (`InvalidACL`, a
/// [`Error::Config`]) on a session without credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ZkAcl {
    /// `world:anyone` with all permissions: every client may read, write and delete.
    Open,
    /// Only the creator's identity (`auth::cdrwa`): the same digest user.
    CreatorAll,
    /// The creator's identity with all permissions, and `world:anyone` may read.
    CreatorAllWorldRead,
}

impl ZkAcl {
    fn acls(self) -> Acls<'static> {
        match self {
            ZkAcl::Open => Acls::anyone_all(),
            ZkAcl::CreatorAll => Acls::creator_all(),
            ZkAcl::CreatorAllWorldRead => Acls::new(&CREATOR_ALL_WORLD_READ),
        }
    }
}

/// Connection settings for [`ZooKeeper`]: `ZkOptions::new("host:port,host2:port/optional/chroot")`.
///
/// The connect string is the Java client's: comma-separated `host:port` pairs, optionally
/// followed by a chroot path (at most 2048 bytes) that every path is then relative to; the
/// chroot node must exist.
#[derive(Clone)]
#[must_use]
pub struct ZkOptions {
    connect: String,
    session_timeout: Duration,
    timeout: Duration,
    digest: Option<(String, String)>,
    acl: Option<ZkAcl>,
    root: String,
}

impl fmt::Debug for ZkOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZkOptions")
            .field("connect", &self.connect)
            .field("session_timeout", &self.session_timeout)
            .field("timeout", &self.timeout)
            .field(
                "digest",
                &self.digest.as_ref().map(|(user, _)| format!("{user}:***")),
            )
            .field("acl", &self.acl)
            .field("root", &self.root)
            .finish()
    }
}

impl ZkOptions {
    /// Settings for the ensemble `connect` (`host:port[,host:port...][/chroot]`), with the
    /// defaults: session timeout 10 s, call timeout 2 s, no credentials, [`ZkAcl::Open`], root
    /// `/tenure`.
    pub fn new(connect: impl Into<String>) -> Self {
        ZkOptions {
            connect: connect.into(),
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            timeout: DEFAULT_TIMEOUT,
            digest: None,
            acl: None,
            root: DEFAULT_ROOT.to_owned(),
        }
    }

    /// The session timeout to ask for (default 10 s).
    ///
    /// The server clamps it to `[minSessionTimeout, maxSessionTimeout]`, by default
    /// `[2 × tickTime, 20 × tickTime]` — 4 s to 40 s with the usual `tickTime=2000`; a test
    /// server with `tickTime=200` allows 400 ms to 4 s. The negotiated value is
    /// `Client::session_timeout()` of [`ZooKeeper::client`]. A session whose client stayed
    /// unheard for that long expires: the server deletes its ephemeral nodes (the recipes'
    /// locks and latches) and the next [`ZooKeeper::client`] opens a new session.
    pub fn session_timeout(mut self, d: Duration) -> Self {
        self.session_timeout = d;
        self
    }

    /// The deadline of every call, connecting included (default 2 s); an elapsed deadline is
    /// an [`Error::Timeout`].
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// Authenticates every session with the `digest` scheme as `user:password`, and makes
    /// [`ZkAcl::CreatorAll`] the default ACL.
    pub fn digest(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.digest = Some((user.into(), password.into()));
        self
    }

    /// The ACLs of the nodes tenure creates. Default [`ZkAcl::Open`], or [`ZkAcl::CreatorAll`]
    /// when [`digest`](Self::digest) credentials are set.
    pub fn acl(mut self, acl: ZkAcl) -> Self {
        self.acl = Some(acl);
        self
    }

    /// The node under which tenure keeps its nodes (default `/tenure`), relative to the
    /// chroot if the connect string has one. An absolute path of at most 4096 bytes, not `/`,
    /// without empty, `.` or `..` components, trailing `/`, or characters ZooKeeper refuses in
    /// paths, and not under `/zookeeper`
    /// (ZooKeeper's own subtree); it is created when first needed.
    pub fn root(mut self, path: impl Into<String>) -> Self {
        self.root = path.into();
        self
    }

    fn effective_acl(&self) -> ZkAcl {
        self.acl.unwrap_or(if self.digest.is_some() {
            ZkAcl::CreatorAll
        } else {
            ZkAcl::Open
        })
    }

    fn validate(&self) -> Result<()> {
        if self.connect.trim().is_empty() {
            return Err(Error::config("zookeeper: the connect string is empty"));
        }
        if self.timeout.is_zero() {
            return Err(Error::config("zookeeper: timeout must be more than zero"));
        }
        if self.session_timeout < Duration::from_millis(1) {
            return Err(Error::config(
                "zookeeper: session_timeout must be at least 1 ms",
            ));
        }
        // The chroot (after the first '/') counts in every request's path; see the store's
        // MAX_RECORD_LEN.
        if let Some(i) = self.connect.find('/') {
            if self.connect.len() - i > MAX_CHROOT_LEN {
                return Err(Error::config(format!(
                    "zookeeper: the chroot of the connect string is longer than {MAX_CHROOT_LEN} bytes"
                )));
            }
        }
        if let Some((user, _)) = &self.digest {
            if user.is_empty() || user.contains(':') {
                return Err(Error::config(format!(
                    "zookeeper: digest user {user:?} must be non-empty and contain no ':'"
                )));
            }
        }
        if self.digest.is_none() && self.effective_acl() != ZkAcl::Open {
            return Err(Error::config(format!(
                "zookeeper: acl {:?} names the creator's identity, which needs digest credentials",
                self.effective_acl()
            )));
        }
        validate_root(&self.root)
    }

    /// Connects: validates the settings ([`Error::Config`]), opens a session within the
    /// timeout ([`Error::Timeout`] if nothing answers), checks that the chroot exists
    /// ([`Error::Config`]) and that the root, if it exists, is readable with these credentials
    /// ([`Error::PermissionDenied`]).
    pub async fn connect(self) -> Result<ZooKeeper> {
        self.validate()?;
        // The crate's own parser: a bad address or chroot is a configuration error, not an
        // unavailable server.
        let acl = self.effective_acl();
        let zk = ZooKeeper {
            inner: Arc::new(Inner {
                acls: acl.acls(),
                opts: self,
                current: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
            }),
        };
        let root = zk.root().to_owned();
        let timeout = zk.timeout();
        let client = zk.client().await?;
        with_timeout(KIND, "connect", &root, timeout, async {
            match client.check_stat("/").await {
                Ok(Some(_)) => {}
                Ok(None) | Err(zookeeper_client::Error::NoNode) => {
                    return Err(Error::config(format!(
                        "zookeeper: the chroot of {:?} does not exist on the server; create it first",
                        zk.inner.opts.connect
                    )))
                }
                Err(e) => return Err(map_err("connect", &root, e)),
            }
            match client.get_data(&root).await {
                Ok(_) | Err(zookeeper_client::Error::NoNode) => Ok(()),
                Err(e) => Err(map_err("connect", &root, e)),
            }
        })
        .await?;
        Ok(zk)
    }
}

/// Checks a root path (see [`ZkOptions::root`]).
fn validate_root(root: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::config(format!("zookeeper: root {root:?} {why}")));
    if !root.starts_with('/') {
        return bad("must start with '/'");
    }
    if root == "/" {
        return bad("must not be '/': name an own node, such as /tenure");
    }
    if root.ends_with('/') {
        return bad("must not end with '/'");
    }
    for part in root[1..].split('/') {
        match part {
            "" => return bad("has an empty component"),
            "." | ".." => return bad("has a '.' or '..' component"),
            _ => {}
        }
        if part.chars().any(forbidden_char) {
            return bad("has a character ZooKeeper does not allow in paths");
        }
    }
    if root.len() > MAX_ROOT_LEN {
        return bad(&format!("is longer than {MAX_ROOT_LEN} bytes"));
    }
    if root == "/zookeeper" || root.starts_with("/zookeeper/") {
        return bad("is inside ZooKeeper's reserved /zookeeper subtree");
    }
    Ok(())
}

/// The characters ZooKeeper refuses in paths (`PathUtils.validatePath`): controls, and the
/// UTF-16 units U+D800–U+F8FF and U+FFF0–U+FFFF — which include the surrogates that encode
/// every character beyond U+FFFF in the server's Java strings.
pub(crate) fn forbidden_char(c: char) -> bool {
    let u = u32::from(c);
    matches!(u, 0x0000..=0x001f | 0x007f..=0x009f | 0xd800..=0xf8ff | 0xfff0..)
}

/// A ZooKeeper session for the store and the recipes; clones share it.
///
/// The session is opened by [`ZkOptions::connect`]. After it expires (or the client is
/// closed), the next [`client`](Self::client) opens a new one — once, shared by all callers
/// that ask meanwhile. Ephemeral nodes of the old session are gone then: the recipes watch
/// [`session_id`](Self::session_id) and their clients' `state_watcher()` to notice.
#[derive(Clone)]
pub struct ZooKeeper {
    inner: Arc<Inner>,
}

struct Inner {
    opts: ZkOptions,
    acls: Acls<'static>,
    current: Mutex<Option<Client>>,
    /// Held while a new session is being opened, so that concurrent callers share it.
    connecting: tokio::sync::Mutex<()>,
}

impl fmt::Debug for ZooKeeper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZooKeeper")
            .field("options", &self.inner.opts)
            .field("session_id", &self.session_id())
            .finish()
    }
}

impl ZooKeeper {
    /// The live session's client, opening a new session if the last one expired or was
    /// closed. Within [`timeout`](Self::timeout) ([`Error::Timeout`]); a session refused for
    /// its credentials is [`Error::PermissionDenied`].
    ///
    /// A client that is merely disconnected is returned as is: it reconnects by itself, and
    /// its calls wait for that (or fail with `ConnectionLoss`).
    pub async fn client(&self) -> Result<Client> {
        if let Some(c) = self.live() {
            return Ok(c);
        }
        // Boxed: the rare path is large, and every caller's future would carry it inline (a
        // watch per election keeps one such future alive).
        Box::pin(self.open_session()).await
    }

    /// Opens a new session, unless a concurrent caller just did.
    async fn open_session(&self) -> Result<Client> {
        let _guard = self.inner.connecting.lock().await;
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let opts = &self.inner.opts;
        let mut connector = Client::connector().with_session_timeout(opts.session_timeout);
        if let Some((user, password)) = &opts.digest {
            connector = connector.with_auth("digest", format!("{user}:{password}").as_bytes());
        }
        let root = opts.root.clone();
        let client = with_timeout(KIND, "connect", &root, opts.timeout, async {
            connector.connect(&opts.connect).await.map_err(|e| match e {
                zookeeper_client::Error::BadArguments(why) => Error::config(format!(
                    "zookeeper: invalid connect string {:?}: {why}",
                    opts.connect
                )),
                e => map_err("connect", &root, e),
            })
        })
        .await?;
        tracing::debug!(session = %client.session_id(), "zookeeper session established");
        *self.lock() = Some(client.clone());
        Ok(client)
    }

    /// The live client, if the current session is neither expired nor closed.
    fn live(&self) -> Option<Client> {
        self.lock()
            .as_ref()
            .filter(|c| !c.state().is_terminated())
            .cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Client>> {
        self.inner
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The live client if it is connected now; [`Error::Unavailable`] while it is disconnected
    /// (so that a leader's renewals fail at once and it steps down by its renew deadline).
    pub(crate) async fn connected_client(
        &self,
        operation: &'static str,
        name: &str,
    ) -> Result<Client> {
        let client = self.client().await?;
        match client.state() {
            SessionState::SyncConnected | SessionState::ConnectedReadOnly => Ok(client),
            state => Err(map_err(operation, name, state_error(state))),
        }
    }

    /// The id of the current session, if any (`None` before the first one and after it
    /// expired or was closed, until [`client`](Self::client) opens the next).
    pub fn session_id(&self) -> Option<SessionId> {
        self.lock()
            .as_ref()
            .filter(|c| !c.state().is_terminated())
            .map(Client::session_id)
    }

    /// The root under which tenure keeps its nodes (see [`ZkOptions::root`]).
    pub fn root(&self) -> &str {
        &self.inner.opts.root
    }

    /// The deadline of every call.
    pub fn timeout(&self) -> Duration {
        self.inner.opts.timeout
    }

    /// The connect string, as given.
    pub fn connect_string(&self) -> &str {
        &self.inner.opts.connect
    }

    /// The ACLs of the nodes tenure creates.
    pub fn acl(&self) -> ZkAcl {
        self.inner.opts.effective_acl()
    }

    /// Options to create a node of `mode` with the configured ACLs.
    pub fn create_options(&self, mode: CreateMode) -> CreateOptions<'static> {
        mode.with_acls(self.inner.acls)
    }

    /// Creates `path` and its missing parents as persistent nodes with the configured ACLs,
    /// like `mkdir -p`; nodes that exist already are left as they are (whatever their ACLs).
    /// Within [`timeout`](Self::timeout).
    pub async fn ensure_path(&self, path: &str) -> Result<()> {
        with_timeout(KIND, "ensure_path", path, self.timeout(), async {
            let client = self.connected_client("ensure_path", path).await?;
            self.mkdir(&client, path)
                .await
                .map_err(|e| map_err("ensure_path", path, e))
        })
        .await
    }

    async fn mkdir(&self, client: &Client, path: &str) -> Result<(), zookeeper_client::Error> {
        use zookeeper_client::Error as Z;
        if path == "/" || client.check_stat(path).await?.is_some() {
            return Ok(());
        }
        let options = self.create_options(CreateMode::Persistent);
        let mut end = 0;
        while end < path.len() {
            end = path[end + 1..]
                .find('/')
                .map_or(path.len(), |i| end + 1 + i);
            let prefix = &path[..end];
            match client.create(prefix, &[], &options).await {
                Ok(_) | Err(Z::NodeExists) => {}
                // Creating checks the parent's CREATE permission before whether the node
                // exists: a parent we may not write to may still hold the node we need.
                Err(Z::NoAuth) if client.check_stat(prefix).await?.is_some() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The crate error behind a session state that is not connected.
fn state_error(state: SessionState) -> zookeeper_client::Error {
    use zookeeper_client::Error as Z;
    match state {
        SessionState::Expired => Z::SessionExpired,
        SessionState::AuthFailed => Z::AuthFailed,
        SessionState::Closed => Z::ClientClosed,
        _ => Z::ConnectionLoss,
    }
}

/// Maps a `zookeeper-client` error of `operation` on `name` (an election or lock name, or a
/// path) to tenure's [`Error`].
///
/// - `NoAuth`, `AuthFailed` → [`Error::PermissionDenied`];
/// - `ConnectionLoss`, `SessionExpired`, `SessionMoved`, `ClientClosed`, `NoHosts`,
///   `NotReadOnly`, `Throttled`, `Timeout` (no session within the session timeout) →
///   [`Error::Unavailable`];
/// - `BadVersion`, `NoNode`, `NotEmpty` → [`Error::Conflict`]; `NodeExists` →
///   [`Error::AlreadyExists`] (callers that mean something else by them map them first);
/// - `InvalidAcl` → [`Error::Config`] (a creator ACL without credentials);
/// - `BadArguments` (a path the client refuses) → [`Error::InvalidName`];
/// - `QuotaExceeded` → [`Error::Rejected`]; `Unimplemented` → [`Error::Unsupported`];
/// - anything else → [`Error::Backend`].
pub(crate) fn map_err(operation: &'static str, name: &str, e: zookeeper_client::Error) -> Error {
    use zookeeper_client::Error as Z;
    let name = name.to_owned();
    match e {
        Z::NoAuth | Z::AuthFailed => Error::PermissionDenied {
            store: KIND,
            operation,
            name,
            source: Box::new(e),
        },
        Z::ConnectionLoss
        | Z::SessionExpired
        | Z::SessionMoved
        | Z::ClientClosed
        | Z::NoHosts
        | Z::NotReadOnly
        | Z::Throttled
        | Z::Timeout => Error::Unavailable {
            store: KIND,
            source: Box::new(Context { operation, name, e }),
        },
        Z::BadVersion | Z::NoNode | Z::NotEmpty => Error::Conflict { store: KIND, name },
        Z::NodeExists => Error::AlreadyExists { store: KIND, name },
        Z::InvalidAcl => Error::config(format!(
            "zookeeper: {operation} of {name:?}: the server refused the ACL (a creator ACL \
             needs digest credentials)"
        )),
        Z::BadArguments(why) => Error::InvalidName {
            store: KIND,
            name,
            reason: format!("refused by the ZooKeeper client: {why}"),
        },
        Z::QuotaExceeded => Error::Rejected {
            store: KIND,
            name,
            source: Box::new(e),
        },
        Z::Unimplemented => Error::Unsupported {
            store: KIND,
            operation,
        },
        e => Error::Backend {
            store: KIND,
            source: Box::new(Context { operation, name, e }),
        },
    }
}

/// A crate error with the operation and name it happened in, as an error source.
#[derive(Debug)]
struct Context {
    operation: &'static str,
    name: String,
    e: zookeeper_client::Error,
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of {:?}: {}", self.operation, self.name, self.e)
    }
}

impl std::error::Error for Context {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_are_validated() {
        for good in ["/tenure", "/a/b", "/x y", "/zookeeper2"] {
            validate_root(good).unwrap();
        }
        for bad in [
            "",
            "tenure",
            "/",
            "/a/",
            "/a//b",
            "/./a",
            "/a/..",
            "/zookeeper",
            "/zookeeper/x",
            "/a\u{1}",
            "/🦀",
        ] {
            assert!(
                matches!(validate_root(bad), Err(Error::Config { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn creator_acls_need_credentials() {
        let e = ZkOptions::new("127.0.0.1:1")
            .acl(ZkAcl::CreatorAll)
            .validate();
        assert!(matches!(e, Err(Error::Config { .. })));
        let o = ZkOptions::new("127.0.0.1:1").digest("u", "p");
        assert_eq!(o.effective_acl(), ZkAcl::CreatorAll);
        o.validate().unwrap();
        assert_eq!(ZkOptions::new("h:1").effective_acl(), ZkAcl::Open);
        assert!(!format!("{o:?}").contains("p\""));
    }

    #[test]
    fn errors_map_by_meaning() {
        use zookeeper_client::Error as Z;
        assert!(matches!(
            map_err("get", "n", Z::NoAuth),
            Error::PermissionDenied { .. }
        ));
        assert!(matches!(
            map_err("get", "n", Z::ConnectionLoss),
            Error::Unavailable { .. }
        ));
        assert!(matches!(
            map_err("get", "n", Z::SessionExpired),
            Error::Unavailable { .. }
        ));
        assert!(matches!(
            map_err("put", "n", Z::BadVersion),
            Error::Conflict { .. }
        ));
        assert!(matches!(
            map_err("put", "n", Z::NodeExists),
            Error::AlreadyExists { .. }
        ));
        assert!(matches!(
            map_err("put", "n", Z::InvalidAcl),
            Error::Config { .. }
        ));
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    pub(crate) fn unconnected() -> ZooKeeper {
        let opts = ZkOptions::new("127.0.0.1:1");
        ZooKeeper {
            inner: Arc::new(Inner {
                acls: opts.effective_acl().acls(),
                opts,
                current: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
            }),
        }
    }
}
