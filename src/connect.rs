//! [`connect`]: a store chosen by URL — for configuration files, environment variables and the
//! `tenure` command.
//!
//! | URL | store | feature |
//! | --- | --- | --- |
//! | `file:///var/lib/tenure` | [`FileStore::create`](crate::file::FileStore::create) on that directory (created if missing) | `file` |
//! | `redis://[[user]:password@]host[:port][/db]`, `rediss://…` | [`RedisStore`](crate::redis::RedisStore) (`rediss`: TLS) | `redis` |
//! | `kubernetes://NAMESPACE`, `kubernetes://` | [`KubeLeaseStore`](crate::kubernetes::KubeLeaseStore) in `NAMESPACE` (empty: the configuration's default namespace), from the kubeconfig (`KUBECONFIG`, `~/.kube/config`) or in-cluster | `kubernetes` |
//! | `zk://[user:password@]host:port[,host:port…][/chroot]` | [`ZkStore`](crate::zookeeper::ZkStore); `user:password` are digest credentials | `zookeeper` |
//! | `consul://host:port`, `consul://` | [`ConsulStore`](crate::consul::ConsulStore) on the agent at `host:port` (plain HTTP; `tls=true` for HTTPS); `consul://` alone: the agent Consul's own variables name (`CONSUL_HTTP_ADDR`, `CONSUL_HTTP_TOKEN`, `CONSUL_CACERT`, ...) | `consul` |
//! | `gs://BUCKET/PREFIX` | [`GcsStore`](crate::gcs::GcsStore) on objects `PREFIX<name>` in `BUCKET` (no prefix: `tenure/`); application default credentials, or none with `STORAGE_EMULATOR_HOST` | `gcs` |
//!
//! Settings go in the query string, each known to its scheme; anything else is an error:
//!
//! | parameter | schemes | meaning |
//! | --- | --- | --- |
//! | `timeout=2s` | all | the store's deadline per call (units `ms`, `s`, `m`, `h`) |
//! | `prefix=tenure:` | `redis`, `rediss` | the key prefix ([`RedisOptions::prefix`](crate::redis::RedisOptions::prefix)) |
//! | `context=NAME` | `kubernetes` | the kubeconfig context to use (default: the current one) |
//! | `events=false` | `kubernetes` | do not record Kubernetes Events |
//! | `root=/tenure` | `zk` | the node under which records live ([`ZkOptions::root`](crate::zookeeper::ZkOptions::root)) |
//! | `session_timeout=10s` | `zk` | the session timeout to ask for |
//! | `prefix=tenure/` | `consul` | the KV key prefix ([`ConsulOptions::prefix`](crate::consul::ConsulOptions::prefix)) |
//! | `token=SECRET` | `consul` | the ACL token (default: none, or `CONSUL_HTTP_TOKEN` with `consul://`) |
//! | `datacenter=dc1` | `consul` | the datacenter to use (default: the agent's) |
//! | `tls=true` | `consul` | HTTPS to the agent |
//! | `endpoint=http://host:port` | `gs` | another JSON API endpoint (an emulator: no credentials) |
//! | `user_project=ID` | `gs` | the project billed for a Requester Pays bucket |
//!
//! Percent-encode reserved characters in passwords and values (`%40` for `@`). A scheme whose
//! feature was not compiled in is an [`Error::Config`] naming the feature.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::store::LeaseStore;

/// A store of any kind, as [`connect`] returns it: cheap to clone, usable wherever a
/// [`LeaseStore`] is (`Arc<dyn LeaseStore>` implements it), by the elector and by
/// [`lock::Mutex`](crate::lock::Mutex) alike.
pub type DynStore = Arc<dyn LeaseStore>;

/// The URL schemes [`connect`] knows, whether or not their feature was compiled in.
pub const SCHEMES: &[&str] = &[
    "file",
    "redis",
    "rediss",
    "kubernetes",
    "zk",
    "consul",
    "gs",
];

/// `$body` (a `Result<impl LeaseStore>`) boxed as a [`DynStore`] when `$feature` is compiled
/// in; an [`Error::Config`] naming the feature (and the URL `$u`) otherwise.
macro_rules! with_feature {
    ($feature:literal, $u:expr, $body:expr) => {{
        #[cfg(feature = $feature)]
        {
            Arc::new($body?) as DynStore
        }
        #[cfg(not(feature = $feature))]
        {
            return Err(not_built($u, $feature));
        }
    }};
}

/// Connects to the store a URL names (see the [module documentation](self) for the forms).
///
/// Stores that talk to a server check that it answers (Redis, ZooKeeper) or build their client
/// (Kubernetes: from the kubeconfig or in-cluster); the file store checks that the directory
/// can be written. Errors are those of the store's own constructor, plus [`Error::Config`]
/// for a URL that cannot be read — naming the URL with any password replaced by `***`.
///
/// ```no_run
/// # async fn f() -> tenure::Result<()> {
/// let store = tenure::connect("redis://127.0.0.1:6379/?prefix=billing:").await?;
/// let elector = tenure::LeaderElector::builder(store, "billing-scheduler").build()?;
/// # let _ = elector; Ok(()) }
/// ```
pub async fn connect(url: &str) -> Result<DynStore> {
    let mut u = StoreUrl::parse(url)?;
    // One arm per scheme: the scheme's constructor, compiled only with its feature.
    let store: DynStore = match u.scheme.as_str() {
        "file" => with_feature!("file", &u, file_store(&mut u)),
        "redis" | "rediss" => with_feature!("redis", &u, redis_store(&mut u).await),
        "kubernetes" | "k8s" => with_feature!("kubernetes", &u, kube_store(&mut u).await),
        "zk" | "zookeeper" => with_feature!("zookeeper", &u, zk_store(&mut u).await),
        "consul" => with_feature!("consul", &u, consul_store(&mut u).await),
        "gs" => with_feature!("gcs", &u, gcs_store(&mut u).await),
        other => {
            return Err(Error::config(format!(
                "unknown store URL scheme {other:?} in {}: use one of {}",
                redact(url),
                SCHEMES
                    .iter()
                    .map(|s| format!("{s}://"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    };
    Ok(store)
}

#[allow(dead_code)] // used only when a store's feature is off
fn not_built(u: &StoreUrl, feature: &str) -> Error {
    Error::config(format!(
        "{}:// URLs need tenure built with the `{feature}` feature ({})",
        u.scheme,
        redact(&u.url)
    ))
}

/// A store URL split into its scheme, the part between `://` and `?`, and its parameters.
struct StoreUrl {
    url: String,
    scheme: String,
    body: String,
    params: Vec<(String, String)>,
}

impl StoreUrl {
    fn parse(url: &str) -> Result<Self> {
        let bad = |why: &str| Error::config(format!("invalid store URL {}: {why}", redact(url)));
        let url = url.trim();
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(bad(
                "expected SCHEME://…, for example file:///var/lib/tenure or redis://host:6379",
            ));
        };
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            return Err(bad("the scheme is not a URL scheme"));
        }
        let (body, query) = match rest.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (rest, None),
        };
        let mut params = Vec::new();
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = percent_decode(k).map_err(|e| bad(&e))?;
            let v = percent_decode(v).map_err(|e| bad(&e))?;
            if params.iter().any(|(pk, _)| *pk == k) {
                return Err(bad(&format!("the parameter {k:?} is given twice")));
            }
            params.push((k, v));
        }
        Ok(StoreUrl {
            url: url.to_owned(),
            scheme: scheme.to_ascii_lowercase(),
            body: body.to_owned(),
            params,
        })
    }

    /// Removes and returns parameter `key`.
    #[allow(dead_code)] // some schemes' features may be off
    fn take(&mut self, key: &str) -> Option<String> {
        let i = self.params.iter().position(|(k, _)| k == key)?;
        Some(self.params.remove(i).1)
    }

    /// Removes and parses parameter `key` as a positive duration.
    #[allow(dead_code)]
    fn take_duration(&mut self, key: &str) -> Result<Option<Duration>> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => match parse_duration(&v) {
                Some(d) if !d.is_zero() => Ok(Some(d)),
                _ => Err(Error::config(format!(
                    "invalid store URL {}: {key}={v:?} is not a positive duration such as 500ms, 2s or 1m",
                    redact(&self.url)
                ))),
            },
        }
    }

    /// Removes and parses parameter `key` as a boolean.
    #[allow(dead_code)]
    fn take_bool(&mut self, key: &str) -> Result<Option<bool>> {
        match self.take(key).as_deref() {
            None => Ok(None),
            Some("true" | "1" | "yes" | "on") => Ok(Some(true)),
            Some("false" | "0" | "no" | "off") => Ok(Some(false)),
            Some(v) => Err(Error::config(format!(
                "invalid store URL {}: {key}={v:?} is not true or false",
                redact(&self.url)
            ))),
        }
    }

    /// Fails on any parameter the scheme did not take.
    #[allow(dead_code)]
    fn finish(&self, known: &str) -> Result<()> {
        match self.params.first() {
            None => Ok(()),
            Some((k, _)) => Err(Error::config(format!(
                "invalid store URL {}: unknown parameter {k:?} for {}:// (known: {known})",
                redact(&self.url),
                self.scheme
            ))),
        }
    }
}

#[cfg(feature = "file")]
fn file_store(u: &mut StoreUrl) -> Result<crate::file::FileStore> {
    let timeout = u.take_duration("timeout")?;
    u.finish("timeout")?;
    let path = percent_decode(&u.body)
        .map_err(|e| Error::config(format!("invalid store URL {}: {e}", redact(&u.url))))?;
    // file:///dir (an empty host) or file://localhost/dir.
    let path = path.strip_prefix("localhost").unwrap_or(&path);
    if !path.starts_with('/') || path.len() < 2 {
        return Err(Error::config(format!(
            "invalid store URL {}: a file store needs an absolute directory, as in file:///var/lib/tenure",
            redact(&u.url)
        )));
    }
    let store = crate::file::FileStore::create(path)?;
    Ok(match timeout {
        Some(t) => store.with_timeout(t),
        None => store,
    })
}

#[cfg(feature = "redis")]
async fn redis_store(u: &mut StoreUrl) -> Result<crate::redis::RedisStore> {
    let timeout = u.take_duration("timeout")?;
    let prefix = u.take("prefix");
    u.finish("timeout, prefix")?;
    let mut opts = crate::redis::RedisStore::options(format!("{}://{}", u.scheme, u.body));
    if let Some(t) = timeout {
        opts = opts.timeout(t);
    }
    if let Some(p) = prefix {
        opts = opts.prefix(p);
    }
    opts.connect().await
}

#[cfg(feature = "kubernetes")]
async fn kube_store(u: &mut StoreUrl) -> Result<crate::kubernetes::KubeLeaseStore> {
    use kube::config::{Config, KubeConfigOptions};

    let timeout = u.take_duration("timeout")?;
    let events = u.take_bool("events")?;
    let context = u.take("context");
    u.finish("timeout, events, context")?;
    let namespace = percent_decode(u.body.trim_end_matches('/'))
        .map_err(|e| Error::config(format!("invalid store URL {}: {e}", redact(&u.url))))?;
    let config = match &context {
        Some(c) => Config::from_kubeconfig(&KubeConfigOptions {
            context: Some(c.clone()),
            ..KubeConfigOptions::default()
        })
        .await
        .map_err(|e| {
            Error::config(format!(
                "kubernetes: cannot use context {c:?} of the kubeconfig: {e}"
            ))
        })?,
        None => Config::infer().await.map_err(|e| {
            Error::config(format!(
                "kubernetes: no cluster configuration: no usable kubeconfig (KUBECONFIG or ~/.kube/config) and not running in a cluster ({e})"
            ))
        })?,
    };
    let namespace = if namespace.is_empty() {
        config.default_namespace.clone()
    } else {
        namespace
    };
    let client = kube::Client::try_from(config)
        .map_err(|e| Error::config(format!("kubernetes: cannot build a client: {e}")))?;
    let mut b = crate::kubernetes::KubeLeaseStore::builder(client, namespace);
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    if let Some(on) = events {
        b = b.events(on);
    }
    b.build()
}

#[cfg(feature = "zookeeper")]
async fn zk_store(u: &mut StoreUrl) -> Result<crate::zookeeper::ZkStore> {
    let timeout = u.take_duration("timeout")?;
    let session_timeout = u.take_duration("session_timeout")?;
    let root = u.take("root");
    u.finish("timeout, session_timeout, root")?;
    let bad = |why: &str| Error::config(format!("invalid store URL {}: {why}", redact(&u.url)));
    let (authority, chroot) = match u.body.find('/') {
        Some(i) => (&u.body[..i], &u.body[i..]),
        None => (u.body.as_str(), ""),
    };
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((ui, h)) => (Some(ui), h),
        None => (None, authority),
    };
    if hosts.is_empty() {
        return Err(bad("no host:port, as in zk://127.0.0.1:2181/chroot"));
    }
    let chroot = match chroot.trim_end_matches('/') {
        "" => String::new(),
        c => percent_decode(c).map_err(|e| bad(&e))?,
    };
    let mut opts = crate::zookeeper::ZkOptions::new(format!("{hosts}{chroot}"));
    if let Some(ui) = userinfo {
        let (user, password) = ui.split_once(':').unwrap_or((ui, ""));
        let user = percent_decode(user).map_err(|e| bad(&e))?;
        let password = percent_decode(password).map_err(|e| bad(&e))?;
        opts = opts.digest(user, password);
    }
    if let Some(t) = timeout {
        opts = opts.timeout(t);
    }
    if let Some(t) = session_timeout {
        opts = opts.session_timeout(t);
    }
    if let Some(r) = root {
        opts = opts.root(r);
    }
    Ok(crate::zookeeper::ZkStore::new(opts.connect().await?))
}

#[cfg(feature = "consul")]
async fn consul_store(u: &mut StoreUrl) -> Result<crate::consul::ConsulStore> {
    use crate::consul::{ConsulOptions, ConsulStore};

    let timeout = u.take_duration("timeout")?;
    let prefix = u.take("prefix");
    let token = u.take("token");
    let datacenter = u.take("datacenter");
    let tls = u.take_bool("tls")?;
    u.finish("timeout, prefix, token, datacenter, tls")?;
    let host = u.body.trim_end_matches('/');
    if host.contains(['/', '@']) {
        return Err(Error::config(format!(
            "invalid store URL {}: a Consul URL is consul://host:port (settings in the query: prefix=, token=, datacenter=, tls=, timeout=)",
            redact(&u.url)
        )));
    }
    let mut opts = if host.is_empty() {
        ConsulOptions::from_env()
    } else {
        let scheme = if tls == Some(true) { "https" } else { "http" };
        ConsulOptions::new(format!("{scheme}://{host}"))
    };
    if let Some(t) = token {
        opts = opts.token(t);
    }
    if let Some(p) = prefix {
        opts = opts.prefix(p);
    }
    if let Some(dc) = datacenter {
        opts = opts.datacenter(dc);
    }
    if let Some(t) = timeout {
        opts = opts.timeout(t);
    }
    Ok(ConsulStore::new(opts.connect().await?))
}

#[cfg(feature = "gcs")]
async fn gcs_store(u: &mut StoreUrl) -> Result<crate::gcs::GcsStore> {
    use crate::gcs::{GcsOptions, GcsStore};

    let timeout = u.take_duration("timeout")?;
    let endpoint = u.take("endpoint");
    let user_project = u.take("user_project");
    u.finish("timeout, endpoint, user_project")?;
    let (bucket, prefix) = match u.body.split_once('/') {
        Some((b, p)) => (b, Some(p)),
        None => (u.body.as_str(), None),
    };
    if bucket.is_empty() || bucket.contains('@') {
        return Err(Error::config(format!(
            "invalid store URL {}: a Cloud Storage URL is gs://BUCKET/PREFIX (settings in the query: endpoint=, user_project=, timeout=)",
            redact(&u.url)
        )));
    }
    let mut opts = GcsOptions::new(bucket);
    if let Some(p) = prefix.filter(|p| !p.is_empty()) {
        opts = opts.prefix(p);
    }
    if let Some(e) = endpoint {
        opts = opts.endpoint(e);
    }
    if let Some(p) = user_project {
        opts = opts.user_project(p);
    }
    if let Some(t) = timeout {
        opts = opts.timeout(t);
    }
    Ok(GcsStore::new(opts.connect().await?))
}

/// `url` with secrets replaced by `***`: the password of its user information and a
/// `token=` query parameter.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let query = query.map(|q| {
        q.split('&')
            .map(|pair| match pair.split_once('=') {
                Some(("token", _)) => "token=***".to_owned(),
                _ => pair.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    match query {
        Some(q) => format!("{scheme}://{authority}{path}?{q}"),
        None => format!("{scheme}://{authority}{path}"),
    }
}

/// Decodes `%XX` escapes (and nothing else) into UTF-8 text.
fn percent_decode(s: &str) -> std::result::Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape at {:?}", &s[i..]))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "a percent escape does not decode to UTF-8".to_owned())
}

/// Parses `500ms`, `2s`, `1.5s`, `1m`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_and_checked() {
        let u = StoreUrl::parse("redis://u:p%40ss@h:1/2?prefix=a%3Ab&timeout=2s").unwrap();
        assert_eq!(u.scheme, "redis");
        assert_eq!(u.body, "u:p%40ss@h:1/2");
        assert_eq!(
            u.params,
            vec![
                ("prefix".into(), "a:b".into()),
                ("timeout".into(), "2s".into())
            ]
        );
        for bad in [
            "",
            "redis",
            "://x",
            "re dis://x",
            "redis://h?a=1&a=2",
            "zk://h?x=%zz",
        ] {
            assert!(
                matches!(StoreUrl::parse(bad), Err(Error::Config { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("redis://user:secret@h:1/0?x=1"),
            "redis://user:***@h:1/0?x=1"
        );
        assert_eq!(redact("rediss://:secret@h"), "rediss://:***@h");
        assert_eq!(redact("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(redact("zk://u:p@a:1,b:2/c"), "zk://u:***@a:1,b:2/c");
        assert_eq!(
            redact("consul://h:8500?prefix=x&token=s3cret"),
            "consul://h:8500?prefix=x&token=***"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("2x"), None);
        assert_eq!(parse_duration("-1s"), None);
    }

    #[tokio::test]
    async fn unknown_schemes_and_parameters_are_config_errors() {
        let e = connect("etcd://h:2379").await.err().unwrap();
        assert!(
            e.to_string().contains("unknown store URL scheme \"etcd\""),
            "{e}"
        );
        #[cfg(feature = "file")]
        {
            let e = connect("file://relative/dir").await.err().unwrap();
            assert!(e.to_string().contains("absolute directory"), "{e}");
            let e = connect("file:///tmp/x?colour=red").await.err().unwrap();
            assert!(
                e.to_string().contains("unknown parameter \"colour\""),
                "{e}"
            );
        }
    }
}
