//! [`RedisStore`]: elections and locks over a Redis server (feature `redis`).
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> tenure::Result<()> {
//! use std::time::Duration;
//! use tenure::redis::RedisStore;
//!
//! let store = RedisStore::options("redis://app:secret@127.0.0.1:6379/2")
//!     .prefix("billing:")
//!     .timeout(Duration::from_secs(1))
//!     .connect()
//!     .await?;
//! let elector = tenure::LeaderElector::builder(store, "scheduler").build()?;
//! # let _ = elector; Ok(()) }
//! ```
//!
//! # Connecting
//!
//! The URL is `redis://[[user]:password@]host[:port][/db]`, or `rediss://...` for TLS (the
//! system's root certificates; append `#insecure` to skip verification, for tests only).
//! `user` is an ACL user (Redis 6 or later); without one, `password` is the `requirepass`
//! password. [`RedisOptions::connect`] connects once to check the URL and the credentials:
//! wrong credentials fail at once with [`Error::PermissionDenied`]; a server that cannot be
//! reached within the timeout gives [`Error::Timeout`]. Afterwards the connection reconnects by
//! itself; calls made while it is down fail with [`Error::Timeout`] or [`Error::Unavailable`],
//! which the elector retries.
//!
//! # Layout
//!
//! Election `name` lives in one hash, `<prefix><name>` (prefix `tenure:` by default): field
//! `rec` holds the record's JSON ([`LeaseRecord::to_json`]), `e` and `n` its version
//! (`<e>.<n>`: the server's `TIME` in microseconds when the record was created, and a write
//! counter), `h` the current term (`<transitions>|<holder>`). Names are not escaped: any
//! non-empty UTF-8 name up to 1024 bytes is a key of its own. Writes that start or end a term
//! publish the new version on the channel `<prefix>chan:<name>`.
//!
//! # Guarantees
//!
//! - **Atomic compare-and-swap.** Create-if-absent, update-if-version and
//!   delete-if-version are Lua scripts (sent once, then run by SHA; re-sent if the server lost
//!   them), so a compare and its write can never interleave with another client's.
//! - **Garbage is reported, never overwritten.** A key of another type, or a hash without the
//!   fields above, makes `get` fail with [`Error::Decode`] naming the full Redis key; the
//!   scripts refuse to write over it.
//! - **A generous expiry only collects garbage.** Every write sets the key to expire after
//!   ten lease durations (at least a minute), so abandoned elections do not stay forever. A
//!   live leader renews far more often; correctness never depends on the expiry, which is
//!   just one more way of losing the record (below).
//! - **Watch.** Each store opens one extra connection for all its watches and subscribes to the
//!   channels of the names watched. After reconnecting it resubscribes and wakes every watcher,
//!   which re-reads: a message missed during the gap can only delay a follower (at worst until
//!   the lease expires), never mislead it.
//! - **Bounded calls.** Every call runs under the store's timeout (default 2 s,
//!   [`RedisOptions::timeout`]) and maps an elapsed deadline to [`Error::Timeout`].
//!
//! # What Redis cannot guarantee
//!
//! Redis acknowledges a write before it is on disk or on a replica. A server restarted without
//! persistence, an `appendfsync everysec` window, or a failover to a replica that had not yet
//! received the last writes **loses the record**. tenure then behaves as if the record had been
//! deleted: the leader's next renewal conflicts, it re-reads, finds no record (or another
//! holder) and steps down at once — or at its renew deadline if the server stays unreachable —
//! and a new election starts. During such a loss two processes can *believe* they lead for a
//! short while (the old leader until it notices, at most its renew deadline), so protect side
//! effects with the fencing token.
//!
//! # Fencing tokens across a lost record
//!
//! The fencing token ([`LeaseRecord::transitions`]) lives in the record, so a lost record
//! would restart it. To keep tokens increasing, the create script raises `transitions` to the
//! server's clock, `TIME` in microseconds since the epoch (about 1.7 × 10¹⁵ in 2025), when the
//! record is created; each later term adds one. A re-created record therefore starts above
//! every token issued on the lost one, **assuming** that (1) the clock of the server that
//! re-creates the record — after a failover, the new master's — does not read earlier than
//! the old master's clock did when it issued its last token (servers kept in sync by NTP, never
//! stepped backwards by more than the time since the loss), and (2) fewer terms start than
//! microseconds pass (every term is a separate script run on the server: true by orders of
//! magnitude). A [`LeaderElector`](crate::LeaderElector) learns the raised token by re-reading
//! the record after creating it, as the [`LeaseStore`] contract requires.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub};
use ::redis::{AsyncConnectionConfig, Client, ErrorKind, RedisError, Script, ServerErrorKind};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::error::{with_timeout, BoxError, Error, Result};
use crate::record::LeaseRecord;
use crate::store::{LeaseStore, PutMode, Version, WatchStream};

const KIND: &str = "redis";
/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "tenure:";
/// Longest election name, in bytes.
pub const MAX_NAME_LEN: usize = 1024;
/// Keys expire after this many lease durations without a write...
const EXPIRY_LEASES: u32 = 10;
/// ...but never sooner than this.
const MIN_EXPIRY: Duration = Duration::from_secs(60);
/// How often the watch connection is checked with a `PING`.
const WATCH_PING: Duration = Duration::from_secs(5);
/// The transitions value written where the create script puts the chosen token.
const MARK: u64 = u64::MAX;

/// Redis 3.2 and 4 need effects replication for `TIME` before a write; later versions always
/// replicate effects and ignore the call.
const PRELUDE: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local function shape(key)
  local t = redis.call('TYPE', key)['ok']
  if t == 'none' then return 'none' end
  if t ~= 'hash' then return 'a Redis ' .. t .. ', not a hash' end
  local f = redis.call('HMGET', key, 'e', 'n', 'rec')
  if not f[1] or not f[2] or not f[3] then
    return 'a hash without the fields e, n and rec'
  end
  if not string.match(f[1], '^%d+$') or not string.match(f[2], '^%d+$') then
    return 'a hash whose fields e and n are not a version'
  end
  return f
end
local function writable(f)
  local ok, doc = pcall(cjson.decode, f[3])
  if not ok or type(doc) ~= 'table' or doc['tenure'] == nil then
    return 'a hash whose rec field is not a tenure record'
  end
  return nil
end
local function expect(key, version)
  local f = shape(key)
  if f == 'none' then return nil, {'conflict'} end
  if type(f) == 'string' then return nil, {'garbage', f} end
  if f[1] .. '.' .. f[2] ~= version then return nil, {'conflict'} end
  local bad = writable(f)
  if bad then return nil, {'garbage', bad} end
  return f
end
";

/// `get`: KEYS[1] = key. Returns {'none'}, {'garbage', why} or {'ok', version, json}.
const READ: &str = r"
local f = shape(KEYS[1])
if f == 'none' then return {'none'} end
if type(f) == 'string' then return {'garbage', f} end
return {'ok', f[1] .. '.' .. f[2], f[3]}
";

/// `put(Create)`: KEYS[1] = key; ARGV = JSON before the token, JSON after it, the token asked
/// for (decimal), the holder tag, expiry in ms, channel. Returns {'exists'} or {'ok', version}.
/// The token stored is the larger of the one asked for and the server's TIME in microseconds
/// (compared as decimal strings: no floating point).
const CREATE: &str = r"
if redis.call('TYPE', KEYS[1])['ok'] ~= 'none' then return {'exists'} end
local now = redis.call('TIME')
local seed = now[1] .. string.format('%06d', tonumber(now[2]))
local tr = ARGV[3]
if #seed > #tr or (#seed == #tr and seed > tr) then tr = seed end
redis.call('HSET', KEYS[1], 'e', seed, 'n', '1', 'h', tr .. '|' .. ARGV[4],
  'rec', ARGV[1] .. tr .. ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
local v = seed .. '.1'
redis.call('PUBLISH', ARGV[6], v)
return {'ok', v}
";

/// `put(Update)`: KEYS[1] = key; ARGV = expected version, JSON, term tag, expiry in ms,
/// channel. Returns {'conflict'}, {'garbage', why} or {'ok', version}. Publishes only when the
/// term (transitions or holder) changes, not on renewals.
const UPDATE: &str = r"
local f, refused = expect(KEYS[1], ARGV[1])
if not f then return refused end
local n = tonumber(f[2])
if not n then return {'garbage', 'a hash whose write counter is not a number'} end
n = string.format('%d', n + 1)
local old = redis.call('HGET', KEYS[1], 'h')
redis.call('HSET', KEYS[1], 'n', n, 'h', ARGV[3], 'rec', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local v = f[1] .. '.' .. n
if old ~= ARGV[3] then redis.call('PUBLISH', ARGV[5], v) end
return {'ok', v}
";

/// `delete`: KEYS[1] = key; ARGV = expected version, channel. Returns {'conflict'},
/// {'garbage', why} or {'ok'}.
const DELETE: &str = r"
local f, refused = expect(KEYS[1], ARGV[1])
if not f then return refused end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], 'deleted')
return {'ok'}
";

/// How to connect a [`RedisStore`]: the URL, the key prefix and the call timeout.
#[derive(Clone)]
pub struct RedisOptions {
    url: String,
    prefix: String,
    timeout: Duration,
}

impl fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisOptions")
            .field("url", &redact(&self.url))
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RedisOptions {
    /// Options for `url` (see the [module documentation](self) for its forms), with the
    /// default prefix `tenure:` and a 2 s timeout.
    pub fn new(url: impl Into<String>) -> Self {
        RedisOptions {
            url: url.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            timeout: Duration::from_secs(2),
        }
    }

    /// The prefix of every key and channel (default `tenure:`); stores with different
    /// prefixes never see each other's elections.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The deadline of each call, connecting included (default 2 s); when it elapses the call
    /// fails with [`Error::Timeout`]. Keep it at most the elector's call timeout.
    #[must_use]
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// Connects and checks the credentials.
    ///
    /// An invalid URL (or one that is neither `redis://` nor `rediss://`) is
    /// [`Error::Config`]; rejected credentials are [`Error::PermissionDenied`]; no answer
    /// within the timeout (nothing listening, a silent peer) is [`Error::Timeout`].
    pub async fn connect(self) -> Result<RedisStore> {
        let scheme = self.url.split("://").next().unwrap_or_default();
        if scheme != "redis" && scheme != "rediss" {
            return Err(Error::config(format!(
                "Redis URL {:?} must start with redis:// or rediss://",
                redact(&self.url)
            )));
        }
        if self.timeout.is_zero() {
            return Err(Error::config("the Redis timeout must be positive"));
        }
        if scheme == "rediss" {
            // Several providers may be compiled in; pick ours unless one is installed already.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = Client::open(self.url.as_str()).map_err(|e| {
            Error::config(format!("invalid Redis URL {:?}: {e}", redact(&self.url)))
        })?;
        let t = self.timeout;
        with_timeout(KIND, "connect", "", t, probe(&client, t)).await?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(t))
            .set_response_timeout(Some(t))
            .set_number_of_retries(3)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| map_err("connect", "", t, e))?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(hub(client, t, rx));
        Ok(RedisStore {
            inner: Arc::new(Inner {
                conn,
                prefix: self.prefix,
                timeout: t,
                hub: tx,
                next_watch: AtomicU64::new(0),
                read: Script::new(&format!("{PRELUDE}{READ}")),
                create: Script::new(&format!("{PRELUDE}{CREATE}")),
                update: Script::new(&format!("{PRELUDE}{UPDATE}")),
                delete: Script::new(&format!("{PRELUDE}{DELETE}")),
            }),
        })
    }
}

/// Connects once (no retries), authenticates and pings, retrying only while nothing answers,
/// so that wrong credentials fail at once and an absent server runs into the caller's timeout.
async fn probe(client: &Client, t: Duration) -> Result<()> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(t))
        .set_response_timeout(Some(t));
    loop {
        let attempt = async {
            let mut c = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            ::redis::cmd("PING").query_async::<String>(&mut c).await
        };
        match attempt.await {
            Ok(_) => return Ok(()),
            Err(e) => match map_err("connect", "", t, e) {
                e @ (Error::Unavailable { .. } | Error::Timeout { .. }) => {
                    debug!(error = %e, "Redis not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                e => return Err(e),
            },
        }
    }
}

/// A [`LeaseStore`] over Redis; see the [module documentation](self). Clones share the
/// connections.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    hub: mpsc::UnboundedSender<HubCmd>,
    next_watch: AtomicU64,
    read: Script,
    create: Script,
    update: Script,
    delete: Script,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects with the default options (see [`RedisOptions::connect`]).
    pub async fn connect(url: &str) -> Result<RedisStore> {
        RedisOptions::new(url).connect().await
    }

    /// Options for `url`, to set the prefix or timeout before connecting.
    pub fn options(url: impl Into<String>) -> RedisOptions {
        RedisOptions::new(url)
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The Redis key that holds `name`'s record: the prefix followed by the name.
    ///
    /// Fails with [`Error::InvalidName`] if `name` is empty or longer than 1024 bytes.
    pub fn key_of(&self, name: &str) -> Result<String> {
        check_name(name)?;
        Ok(format!("{}{name}", self.inner.prefix))
    }

    /// The channel on which writes to `name` are announced: `<prefix>chan:<name>`.
    pub fn channel_of(&self, name: &str) -> Result<String> {
        check_name(name)?;
        Ok(format!("{}chan:{name}", self.inner.prefix))
    }

    async fn run(
        &self,
        operation: &'static str,
        name: &str,
        invocation: ::redis::ScriptInvocation<'_>,
    ) -> Result<Vec<Vec<u8>>> {
        let t = self.inner.timeout;
        let mut conn = self.inner.conn.clone();
        with_timeout(KIND, operation, name, t, async move {
            match invocation.invoke_async::<Vec<Vec<u8>>>(&mut conn).await {
                // The first call on a connection the server dropped (a restart) fails and
                // starts a reconnect: try once more on the new connection. A write that did
                // land the first time then reports Conflict or AlreadyExists, which callers
                // resolve by re-reading, as after any lost response.
                Err(e) if e.is_connection_dropped() || e.is_io_error() => {
                    debug!(error = %e, "Redis connection dropped; retrying once");
                    invocation.invoke_async::<Vec<Vec<u8>>>(&mut conn).await
                }
                r => r,
            }
            .map_err(|e| map_err(operation, name, t, e))
        })
        .await
    }
}

fn check_name(name: &str) -> Result<()> {
    let invalid = |reason: String| Error::InvalidName {
        store: KIND,
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("the name is empty".to_owned()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(format!(
            "the name is too long: {} bytes, at most {MAX_NAME_LEN}",
            name.len()
        )));
    }
    Ok(())
}

fn backend(why: impl Into<String>) -> Error {
    Error::Backend {
        store: KIND,
        source: why.into().into(),
    }
}

fn garbage(key: &str, why: &[u8]) -> Error {
    Error::Decode {
        store: KIND,
        key: key.to_owned(),
        source: format!(
            "the key holds {}, not a tenure record; it is left untouched",
            String::from_utf8_lossy(why)
        )
        .into(),
    }
}

/// A version `<e>.<n>` of two decimal numbers, or `None`.
fn version_of(bytes: &[u8]) -> Option<Version> {
    let s = std::str::from_utf8(bytes).ok()?;
    let (e, n) = s.split_once('.')?;
    let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
    (digits(e) && digits(n)).then(|| Version::new(s))
}

/// The term tag stored in `h`: changes exactly when a term starts or ends.
fn holder_tag(record: &LeaseRecord) -> String {
    match &record.holder {
        Some(h) => format!("1{h}"),
        None => "0".to_owned(),
    }
}

fn expiry_ms(record: &LeaseRecord) -> u64 {
    let d = record
        .lease_duration
        .saturating_mul(EXPIRY_LEASES)
        .max(MIN_EXPIRY);
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The record's JSON split around its `transitions` value, for the create script.
fn split_json(record: &LeaseRecord) -> Result<(Vec<u8>, Vec<u8>)> {
    let mut marked = record.clone();
    marked.transitions = MARK;
    let json = marked.to_json();
    // Inside JSON strings every quote is escaped, so this pattern is only the field itself.
    let pattern = format!("\"transitions\":{MARK}");
    let at = json
        .windows(pattern.len())
        .position(|w| w == pattern.as_bytes())
        .ok_or_else(|| backend("the record's JSON has no transitions field"))?;
    let cut = at + pattern.len() - MARK.to_string().len();
    let before = json.get(..cut).unwrap_or_default().to_vec();
    let after = json.get(at + pattern.len()..).unwrap_or_default().to_vec();
    Ok((before, after))
}

fn is_permission(e: &RedisError) -> bool {
    e.kind() == ErrorKind::AuthenticationFailed
        || e.kind() == ErrorKind::Server(ServerErrorKind::NoPerm)
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
}

fn map_err(operation: &'static str, name: &str, after: Duration, e: RedisError) -> Error {
    if is_permission(&e) {
        return Error::PermissionDenied {
            store: KIND,
            operation,
            name: name.to_owned(),
            source: Box::new(e),
        };
    }
    if e.is_timeout() {
        return Error::Timeout {
            store: KIND,
            operation,
            name: name.to_owned(),
            after,
        };
    }
    let unavailable = e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
            )
        );
    let source: BoxError = Box::new(e);
    if unavailable {
        Error::Unavailable {
            store: KIND,
            source,
        }
    } else {
        Error::Backend {
            store: KIND,
            source,
        }
    }
}

/// The URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or_default();
            format!("{}://{user}:***@{}", &url[..s], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[async_trait::async_trait]
impl LeaseStore for RedisStore {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn get(&self, name: &str) -> Result<Option<(LeaseRecord, Version)>> {
        let key = self.key_of(name)?;
        let reply = self.run("get", name, self.inner.read.key(&key)).await?;
        match reply.as_slice() {
            [s] if s == b"none" => Ok(None),
            [s, why] if s == b"garbage" => Err(garbage(&key, why)),
            [s, v, json] if s == b"ok" => {
                let version = version_of(v).ok_or_else(|| {
                    garbage(&key, b"a hash whose fields e and n are not a version")
                })?;
                Ok(Some((LeaseRecord::from_json(KIND, &key, json)?, version)))
            }
            _ => Err(backend("unexpected reply from the read script")),
        }
    }

    async fn put(&self, name: &str, record: &LeaseRecord, mode: PutMode) -> Result<Version> {
        let key = self.key_of(name)?;
        let chan = self.channel_of(name)?;
        let ttl = expiry_ms(record);
        let reply = match &mode {
            PutMode::Create => {
                let (before, after) = split_json(record)?;
                let mut inv = self.inner.create.key(&key);
                inv.arg(before)
                    .arg(after)
                    .arg(record.transitions.to_string())
                    .arg(holder_tag(record))
                    .arg(ttl)
                    .arg(&chan);
                self.run("put", name, inv).await?
            }
            PutMode::Update(v) => {
                let tag = format!("{}|{}", record.transitions, holder_tag(record));
                let mut inv = self.inner.update.key(&key);
                inv.arg(v.as_str())
                    .arg(record.to_json())
                    .arg(tag)
                    .arg(ttl)
                    .arg(&chan);
                self.run("put", name, inv).await?
            }
        };
        match reply.as_slice() {
            [s, v] if s == b"ok" => {
                version_of(v).ok_or_else(|| backend("the write script returned no version"))
            }
            [s] if s == b"exists" => Err(Error::AlreadyExists {
                store: KIND,
                name: name.to_owned(),
            }),
            [s] if s == b"conflict" => Err(Error::Conflict {
                store: KIND,
                name: name.to_owned(),
            }),
            [s, why] if s == b"garbage" => Err(garbage(&key, why)),
            _ => Err(backend("unexpected reply from the write script")),
        }
    }

    fn watch(&self, name: &str) -> Option<WatchStream> {
        let chan = match self.channel_of(name) {
            Ok(c) => c,
            Err(e) => return Some(futures_util::stream::once(async { Err(e) }).boxed()),
        };
        let id = self.inner.next_watch.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(1);
        if self
            .inner
            .hub
            .send(HubCmd::Subscribe(chan.clone(), id, tx))
            .is_err()
        {
            return None;
        }
        let guard = Unsubscribe {
            hub: self.inner.hub.clone(),
            chan,
            id,
        };
        Some(
            futures_util::stream::unfold((rx, guard), |(mut rx, guard)| async move {
                rx.recv().await?;
                Some((Ok(()), (rx, guard)))
            })
            .boxed(),
        )
    }

    async fn delete(&self, name: &str, version: &Version) -> Result<()> {
        let key = self.key_of(name)?;
        let chan = self.channel_of(name)?;
        let mut inv = self.inner.delete.key(&key);
        inv.arg(version.as_str()).arg(&chan);
        let reply = self.run("delete", name, inv).await?;
        match reply.as_slice() {
            [s] if s == b"ok" => Ok(()),
            [s] if s == b"conflict" => Err(Error::Conflict {
                store: KIND,
                name: name.to_owned(),
            }),
            [s, why] if s == b"garbage" => Err(garbage(&key, why)),
            _ => Err(backend("unexpected reply from the delete script")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Watch: one pub/sub connection per store, shared by all its watches
// ---------------------------------------------------------------------------------------------

enum HubCmd {
    Subscribe(String, u64, mpsc::Sender<()>),
    Unsubscribe(String, u64),
}

/// Ends a watch's subscription when its stream is dropped.
struct Unsubscribe {
    hub: mpsc::UnboundedSender<HubCmd>,
    chan: String,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        let _ = self
            .hub
            .send(HubCmd::Unsubscribe(std::mem::take(&mut self.chan), self.id));
    }
}

type Subscribers = HashMap<String, HashMap<u64, mpsc::Sender<()>>>;

fn wake(subs: Option<&HashMap<u64, mpsc::Sender<()>>>) {
    for tx in subs.into_iter().flat_map(HashMap::values) {
        // A full channel already holds a wake-up: notifications coalesce.
        let _ = tx.try_send(());
    }
}

/// Adds or removes a subscriber; returns the channel to (un)subscribe on the server, if any.
fn apply(subs: &mut Subscribers, cmd: HubCmd) -> Option<(bool, String)> {
    match cmd {
        HubCmd::Subscribe(chan, id, tx) => {
            let entry = subs.entry(chan.clone()).or_default();
            let first = entry.is_empty();
            entry.insert(id, tx);
            first.then_some((true, chan))
        }
        HubCmd::Unsubscribe(chan, id) => {
            let entry = subs.get_mut(&chan)?;
            entry.remove(&id);
            if entry.is_empty() {
                subs.remove(&chan);
                Some((false, chan))
            } else {
                None
            }
        }
    }
}

/// The watch task: keeps one pub/sub connection subscribed to every watched channel,
/// reconnecting (and waking every watcher) after any failure. Ends when the store and all its
/// watches are dropped.
async fn hub(client: Client, t: Duration, mut rx: mpsc::UnboundedReceiver<HubCmd>) {
    let mut subs = Subscribers::new();
    let mut pause = Duration::from_millis(20);
    loop {
        // Connect only while somebody watches.
        while subs.is_empty() {
            match rx.recv().await {
                Some(cmd) => {
                    apply(&mut subs, cmd);
                }
                None => return,
            }
        }
        let connected = tokio::time::timeout(t, client.get_async_pubsub()).await;
        let conn: PubSub = match connected {
            Ok(Ok(c)) => c,
            failed => {
                match failed {
                    Ok(Err(e)) => debug!(error = %e, "watch connection failed; retrying"),
                    _ => debug!("watch connection timed out; retrying"),
                }
                let until = tokio::time::Instant::now() + pause;
                pause = (pause * 2).min(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => break,
                        cmd = rx.recv() => match cmd {
                            Some(cmd) => { apply(&mut subs, cmd); }
                            None => return,
                        },
                    }
                }
                continue;
            }
        };
        let (mut sink, mut stream) = conn.split();
        let chans: Vec<String> = subs.keys().cloned().collect();
        if !chans.is_empty() {
            match tokio::time::timeout(t, sink.subscribe(&chans)).await {
                Ok(Ok(())) => {}
                _ => {
                    warn!("subscribing the watch connection failed; reconnecting");
                    continue;
                }
            }
        }
        pause = Duration::from_millis(20);
        // Whatever happened while we were not subscribed, every watcher re-reads.
        for s in subs.values() {
            wake(Some(s));
        }
        let mut ping = tokio::time::interval(WATCH_PING);
        ping.tick().await;
        loop {
            tokio::select! {
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { return };
                    let woken = match &cmd {
                        HubCmd::Subscribe(_, _, tx) => Some(tx.clone()),
                        HubCmd::Unsubscribe(..) => None,
                    };
                    let ok = match apply(&mut subs, cmd) {
                        Some((true, chan)) => {
                            matches!(tokio::time::timeout(t, sink.subscribe(&chan)).await, Ok(Ok(())))
                        }
                        Some((false, chan)) => {
                            matches!(tokio::time::timeout(t, sink.unsubscribe(&chan)).await, Ok(Ok(())))
                        }
                        None => true,
                    };
                    if !ok {
                        debug!("the watch connection failed while (un)subscribing; reconnecting");
                        break;
                    }
                    // Subscribed now: one wake-up covers anything written before that.
                    if let Some(tx) = woken {
                        let _ = tx.try_send(());
                    }
                }
                msg = stream.next() => match msg {
                    Some(msg) => wake(subs.get(msg.get_channel_name())),
                    None => {
                        debug!("the watch connection closed; reconnecting");
                        break;
                    }
                },
                _ = ping.tick() => {
                    if !matches!(tokio::time::timeout(t, sink.ping::<::redis::Value>()).await, Ok(Ok(_))) {
                        debug!("the watch connection stopped answering; reconnecting");
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_splits_around_the_token() {
        let mut r = LeaseRecord::held_by(
            "\"transitions\":18446744073709551615",
            Duration::from_secs(3),
            7,
        );
        r.value = Some("x\",\"transitions\":1".into());
        let (before, after) = split_json(&r).unwrap();
        let joined = [before, b"42".to_vec(), after].concat();
        let back = LeaseRecord::from_json(KIND, "k", &joined).unwrap();
        assert_eq!(back.transitions, 42);
        assert_eq!(back.holder, r.holder);
        assert_eq!(back.value, r.value);
    }

    #[test]
    fn versions_and_names() {
        assert_eq!(
            version_of(b"1700000000000000.3"),
            Some(Version::new("1700000000000000.3"))
        );
        for bad in [&b""[..], b"1", b"1.", b".1", b"a.1", b"1.2.3", b"\xff.1"] {
            assert_eq!(version_of(bad), None, "{bad:?}");
        }
        assert!(matches!(check_name(""), Err(Error::InvalidName { .. })));
        assert!(check_name(&"é".repeat(512)).is_ok());
        match check_name(&"x".repeat(1025)) {
            Err(Error::InvalidName { reason, .. }) => assert!(reason.contains("too long")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact("redis://u:pw@h:1/2"), "redis://u:***@h:1/2");
        assert_eq!(redact("rediss://:pw@h"), "rediss://:***@h");
        assert_eq!(redact("redis://h:1/"), "redis://h:1/");
    }

    #[test]
    fn expiry_is_generous() {
        let r = LeaseRecord::held_by("a", Duration::from_secs(15), 1);
        assert_eq!(expiry_ms(&r), 150_000);
        let r = LeaseRecord::held_by("a", Duration::from_millis(100), 1);
        assert_eq!(expiry_ms(&r), 60_000);
    }
}
