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
//! counter), `h` the current term (`<transitions>|<holder>`), and `w` the server's `TIME` in
//! microseconds when the current version was written (hashes written by an older tenure lack
//! `w`: their age is unknown until the next write). Names are not escaped: any non-empty UTF-8
//! name up to 1024 bytes is a key of its own. A record with a holder has no expiry; a vacant
//! (released) record expires ten lease durations (at least a minute) after its last write.
//! Every write — a create, a renewal, a new term, a release — publishes the new version and
//! the record it writes, `<version> <record JSON>` (the JSON as stored, with the token the
//! write chose), on the channel `<prefix>chan:<name>` before it writes; a record longer than
//! [`MAX_PUBLISHED_RECORD_LEN`] is published as its bare version. A delete publishes `deleted`.
//!
//! # Permissions
//!
//! An ACL user (Redis 6 or later) needs the keys `~<prefix>*`, the channels
//! `&<prefix>chan:*`, and the commands `EVALSHA`, `SCRIPT LOAD`, `SUBSCRIBE`, `UNSUBSCRIBE`,
//! `PING` and those the scripts run — `TYPE`, `HMGET`, `HSET`, `PEXPIRE`, `PERSIST`, `DEL`,
//! `PUBLISH`, `TIME` — plus `SELECT` if the URL names a database. For the default prefix:
//!
//! ```text
//! ACL SETUSER app on >secret resetkeys ~tenure:* resetchannels &tenure:chan:* -@all
//!     +evalsha +script|load +subscribe +unsubscribe +ping +type +hmget +hset
//!     +pexpire +persist +del +publish +time
//! ```
//!
//! The channel rights are easy to miss: since Redis 7 a new user has none
//! (`acl-pubsub-default resetchannels`). Without them the watch's `SUBSCRIBE` and the
//! scripts' `PUBLISH` are refused: the watch yields [`Error::PermissionDenied`] and ends;
//! every write (a create, a renewal, a new term, a release, a delete) fails with
//! [`Error::PermissionDenied`] and writes nothing, since each one publishes; reads still
//! pass; and a [`LeaderElector`](crate::LeaderElector) stops with that error. Every other refusal —
//! a key, a command, a command inside a script — is [`Error::PermissionDenied`] as well, never
//! a retried error.
//!
//! # Guarantees
//!
//! - **Atomic compare-and-swap.** Create-if-absent, update-if-version and
//!   delete-if-version are Lua scripts (sent once, then run by SHA; re-sent if the server lost
//!   them), so a compare and its write can never interleave with another client's.
//! - **Durable fencing tokens.** Every write that starts a term stores a token taken from the
//!   server's clock, so tokens keep increasing across a deleted, expired, evicted or rolled-back
//!   record ([`Capabilities::durable_tokens`]; the assumptions are under
//!   [Fencing tokens across a lost record](#fencing-tokens-across-a-lost-record)).
//! - **Ages on the server's clock.** [`get`](LeaseStore::get) reports how long ago the version
//!   was written ([`Stored::age`]) as the server's `TIME` now minus its `TIME` at the write, both
//!   read by the server in one script. A fresh process thus counts a dead holder's lease from
//!   its last renewal instead of waiting a whole lease again; the clients' clocks, and the skew
//!   between them, never matter.
//! - **Garbage is reported, never overwritten.** A key of another type, or a hash without the
//!   fields above, makes `get` fail with [`Error::Decode`] naming the full Redis key; the
//!   scripts refuse to write over it.
//! - **Live leases never expire and are not evicted under `volatile-*`.** A record with a
//!   holder carries no expiry (each write that sets a holder removes it), so Redis never
//!   expires it and the `volatile-*` `maxmemory` policies never evict it. Only a vacant record
//!   expires, after ten lease durations (at least a minute) without a write, so that released
//!   elections do not stay forever. The record of a holder that died without releasing stays
//!   until a candidate takes it over (and later releases it) or it is deleted: one small hash
//!   per election name.
//! - **Watch: every write, with its record.** Each store opens one extra connection for all its
//!   watches and subscribes to the channels of the names watched. Each message becomes a
//!   [`WatchEvent::Put`] with the version and record written (renewals included, so followers
//!   see every renewal within one round trip and need no polling:
//!   [`Capabilities::watch_every_write`]), or [`WatchEvent::Deleted`]; a message that
//!   announces no record (somebody else publishing on the channel, a record too long to
//!   publish, an older tenure's bare version) is a [`WatchEvent::Hint`]. Pub/sub keeps the
//!   order of one channel's messages, so events follow the order of the writes; a watcher that
//!   falls behind skips to the latest event, never gets an older one after a newer. After
//!   every (re)subscription each watcher gets a hint and re-reads: a message missed during a
//!   gap can only delay a follower (at worst until the lease expires), never mislead it. The
//!   connection is checked with a `PING` when it stayed silent for 5 s. A `SUBSCRIBE` refused
//!   for lack of permission yields [`Error::PermissionDenied`] to that channel's watches and
//!   ends them; other failures (no connection, `maxclients`, a timeout) are retried after a
//!   jittered pause, between half and all of a value that doubles from 100 ms to 5 s (back to
//!   100 ms once a connection delivers a message or answers its `PING`); the watches' commands
//!   are served meanwhile. The connection's task ends when the last clone of the store is
//!   dropped, whatever it is doing; the watches then end too.
//! - **Sizes are checked before writing.** A record whose JSON is longer than
//!   [`MAX_RECORD_LEN`] (512 MiB, the default `proto-max-bulk-len`) fails with
//!   [`Error::TooLarge`] and nothing is sent. Do not lower `proto-max-bulk-len` below the
//!   records you write: the server would refuse them with a protocol error, which is retried.
//! - **Bounded calls.** Every call runs under the store's timeout (default 2 s,
//!   [`RedisOptions::timeout`]) and maps an elapsed deadline to [`Error::Timeout`].
//!
//! # What Redis cannot guarantee
//!
//! Redis acknowledges a write before it is on disk or on a replica. A server restarted without
//! persistence, an `appendfsync everysec` window, or a failover to a replica that had not yet
//! received the last writes **loses the record**, or **rolls it back** to an earlier version.
//! tenure then behaves as if the record had been deleted or rewritten by someone else: the
//! leader's next renewal conflicts and it re-reads; unless the record still names it in its
//! term, it steps down at once — or at its renew deadline if the server stays unreachable —
//! and a new election starts. A rolled-back version's age counts from its own, earlier, write,
//! so followers may take it over at once — even from a live leader, which then steps down at
//! its next renewal. During such a loss two processes can *believe* they lead for a short
//! while (the old leader until it notices, at most its renew deadline), so protect side
//! effects with the fencing token: the next term's token stays above every earlier one
//! ([below](#fencing-tokens-across-a-lost-record)).
//!
//! **Eviction.** Under a `maxmemory` policy of `allkeys-lru`, `allkeys-lfu` or
//! `allkeys-random`, Redis may evict any key, a live lease included. That is a lost record, as
//! above: the leader steps down at its next renewal, a follower creates a new record with a
//! higher token, and until the old leader notices (at most its renew deadline) two processes
//! may believe they lead. Use `noeviction` (a full server then refuses writes: renewals fail,
//! the leader steps down at its renew deadline and nobody takes over until memory is freed) or
//! a `volatile-*` policy (only vacant records, which carry an expiry, can be evicted, which is
//! harmless). A write refused for lack of memory has already published its version (the
//! `PUBLISH` comes first and is not refused): watchers then see a version that was never
//! stored, which only delays them — they count the lease from that announcement, and their
//! takeover, a compare-and-swap against it, conflicts and makes them re-read.
//!
//! **The server's clock.** Ages and tokens come from the `TIME` of the server that runs the
//! script. A clock stepped **forward** (or a failover to a master whose clock is ahead of the
//! old master's) makes every record written before the step look older by the step: a step of
//! more than about `L − R` lets a follower take over a live leader's lease early, with two
//! processes believing they lead until the old leader's renewal conflicts (at most its renew
//! deadline). A clock stepped **back** makes records look younger (ages never go below zero),
//! which only delays takeovers, but see the token assumptions below. NTP slewing small offsets
//! (a clock that runs slightly fast or slow, never jumps) is harmless: keep Redis servers on
//! NTP in slewing mode and their clocks in sync. Clients' clocks are never used.
//!
//! Redis Cluster (keys on several shards) and Sentinel URLs are not supported: point the store
//! at one master.
//!
//! # Fencing tokens across a lost record
//!
//! The fencing token ([`LeaseRecord::transitions`]) lives in the record, so a lost or
//! rolled-back record would restart it, or take it back to an earlier value. To keep tokens
//! increasing, every write that starts a term — a create, or an update whose `transitions`
//! differs from the stored record's — stores the larger of the token asked for and the
//! server's clock, `TIME` in microseconds since the epoch (about 1.7 × 10¹⁵ in 2025).
//! Renewals and releases store the token exactly. Tokens are therefore large numbers, not 1, 2,
//! 3: compare them, don't count them.
//!
//! Say Redis rolls the record back from "B holds, token T′" to "A holds, token T" (T′ > T), and
//! C takes over: C asks for T + 1, which B had already used, but the script stores the
//! server's `TIME` now, which is above T′ since T′ was itself at most the `TIME` when B's term
//! started (or one above the previous token, when that was larger). This holds
//! **assuming** that
//!
//! 1. the clock of the server that starts the next term — after a failover, the new master's —
//!    does not read earlier than the clock that issued the last token (the old master's, when
//!    it did): a clock stepped back by more than the time since the last term started, or a
//!    replica whose clock is behind by more than that, can issue a token at or below an
//!    earlier one;
//! 2. fewer terms start than microseconds pass: each term's token is at least the `TIME` when it
//!    started, and at least one above the previous term's, so tokens run ahead of the clock
//!    only if terms start more often than once per microsecond (each term is a separate script
//!    run: true by orders of magnitude);
//! 3. no token was written above the server's clock (by hand, by copying a record from another
//!    store, or by an elector asking for more): a token ahead of the clock is not protected
//!    against a later loss.
//!
//! When an assumption fails, tokens still never repeat within what tenure can see: every
//! [`LeaderElector`](crate::LeaderElector) asks for more than the highest token it ever
//! observed, and learns the token stored by re-reading the record after the write that starts
//! its term, as the [`LeaseStore`] contract requires.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub, PubSubSink};
use ::redis::{AsyncConnectionConfig, Client, ErrorKind, RedisError, Script, ServerErrorKind};
use futures_util::StreamExt;
use rand::Rng;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::error::{with_timeout, BoxError, Error, Result};
use crate::record::LeaseRecord;
use crate::store::{Capabilities, LeaseStore, PutMode, Stored, Version, WatchEvent, WatchStream};

const KIND: &str = "redis";
/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "tenure:";
/// Longest election name, in bytes.
pub const MAX_NAME_LEN: usize = 1024;
/// The largest record tenure writes, in bytes of JSON: Redis's default `proto-max-bulk-len`
/// (512 MiB), the longest string a default server accepts.
pub const MAX_RECORD_LEN: usize = 512 << 20;
/// The longest record a write publishes along with its version, in bytes of JSON. A longer
/// record is published as its bare version, which watches report as a [`WatchEvent::Hint`]
/// (the watcher re-reads): messages stay far below the server's pub/sub output buffer limits
/// (`client-output-buffer-limit pubsub`, 32 MiB by default), which would disconnect watchers.
pub const MAX_PUBLISHED_RECORD_LEN: usize = 64 << 10;
/// Vacant records expire after this many lease durations without a write...
const EXPIRY_LEASES: u32 = 10;
/// ...but never sooner than this.
const MIN_EXPIRY: Duration = Duration::from_secs(60);
/// How long the watch connection may go without a message before it is checked with a `PING`
/// (and then how often, while it stays silent).
const WATCH_PING: Duration = Duration::from_secs(5);
/// The first pause of the watch connection after a failure; it doubles with each failure...
const MIN_PAUSE: Duration = Duration::from_millis(100);
/// ...up to this, until a connection answers a `PING` again.
const MAX_PAUSE: Duration = Duration::from_secs(5);
/// The transitions value written where the scripts put the chosen token.
const MARK: u64 = u64::MAX;

/// Redis 3.2 and 4 need effects replication for `TIME` before a write; later versions always
/// replicate effects and ignore the call.
const PRELUDE: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local function shape(key)
  local t = redis.call('TYPE', key)['ok']
  if t == 'none' then return 'none' end
  if t ~= 'hash' then return 'a Redis ' .. t .. ', not a hash' end
  local f = redis.call('HMGET', key, 'e', 'n', 'rec', 'w')
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
-- The server's clock in microseconds since the epoch, as decimal digits.
local function now_us()
  local t = redis.call('TIME')
  return t[1] .. string.format('%06d', tonumber(t[2]))
end
-- The token a write that starts a term stores: the larger of the one asked for and the
-- server's clock (decimal strings without leading zeros, compared without floating point).
local function token(asked, now)
  if #now > #asked or (#now == #asked and now > asked) then return now end
  return asked
end
-- A held record never expires (so no volatile-* policy evicts it); a vacant one expires.
local function expiry(key, ms)
  if ms == '0' then redis.call('PERSIST', key) else redis.call('PEXPIRE', key, ms) end
end
-- What a write publishes: '<version> <record JSON>', or the bare version when the record is
-- too long for a message (watchers then re-read).
local function announce(v, rec)
  if #rec > PUBLISHED_RECORD_MAX then return v end
  return v .. ' ' .. rec
end
";

/// `get`: KEYS[1] = key. Returns {'none'}, {'garbage', why} or {'ok', version, json, written,
/// now}: `written` is the `w` field ('' if absent), `now` the server's clock, both in µs.
const READ: &str = r"
local f = shape(KEYS[1])
if f == 'none' then return {'none'} end
if type(f) == 'string' then return {'garbage', f} end
return {'ok', f[1] .. '.' .. f[2], f[3], f[4] or '', now_us()}
";

/// `put(Create)`: KEYS[1] = key; ARGV = JSON before the token, JSON after it, the token asked
/// for (decimal), the holder tag, expiry in ms ('0': none), channel. Returns {'exists'} or
/// {'ok', version}. Publishes the new version and record before writing, so that a refused
/// `PUBLISH` writes nothing.
const CREATE: &str = r"
if redis.call('TYPE', KEYS[1])['ok'] ~= 'none' then return {'exists'} end
local now = now_us()
local tr = token(ARGV[3], now)
local v = now .. '.1'
local rec = ARGV[1] .. tr .. ARGV[2]
redis.call('PUBLISH', ARGV[6], announce(v, rec))
redis.call('HSET', KEYS[1], 'e', now, 'n', '1', 'w', now, 'h', tr .. '|' .. ARGV[4], 'rec', rec)
if ARGV[5] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
return {'ok', v}
";

/// `put(Update)`: KEYS[1] = key; ARGV = expected version, JSON before the token, JSON after
/// it, the token asked for (decimal), the holder tag, expiry in ms ('0': none), channel.
/// Returns {'conflict'}, {'garbage', why} or {'ok', version}. A write whose token differs from
/// the stored record's starts a term and stores `token(asked, now)`; renewals and releases
/// store the token asked for. Every write, renewals included, publishes the new version and
/// record before writing, so that a refused `PUBLISH` writes nothing. The term tag `h` is
/// still written, for older tenure versions that publish only when it changes.
const UPDATE: &str = r#"
local f, refused = expect(KEYS[1], ARGV[1])
if not f then return refused end
local n = tonumber(f[2])
if not n then return {'garbage', 'a hash whose write counter is not a number'} end
n = string.format('%d', n + 1)
local now = now_us()
local tr = ARGV[4]
if string.match(f[3], '"transitions"%s*:%s*(%d+)') ~= tr then tr = token(tr, now) end
local v = f[1] .. '.' .. n
local rec = ARGV[2] .. tr .. ARGV[3]
redis.call('PUBLISH', ARGV[7], announce(v, rec))
redis.call('HSET', KEYS[1], 'n', n, 'w', now, 'h', tr .. '|' .. ARGV[5], 'rec', rec)
expiry(KEYS[1], ARGV[6])
return {'ok', v}
"#;

/// `delete`: KEYS[1] = key; ARGV = expected version, channel. Returns {'conflict'},
/// {'garbage', why} or {'ok'}. Publishes `deleted` before deleting.
const DELETE: &str = r"
local f, refused = expect(KEYS[1], ARGV[1])
if not f then return refused end
redis.call('PUBLISH', ARGV[2], 'deleted')
redis.call('DEL', KEYS[1])
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
                read: script(READ),
                create: script(CREATE),
                update: script(UPDATE),
                delete: script(DELETE),
            }),
        })
    }
}

/// The prelude's functions, with the limits filled in.
fn prelude() -> String {
    PRELUDE.replace(
        "PUBLISHED_RECORD_MAX",
        &MAX_PUBLISHED_RECORD_LEN.to_string(),
    )
}

/// A script: the prelude's functions, then `body`.
fn script(body: &str) -> Script {
    Script::new(&format!("{}{body}", prelude()))
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

/// The expiry a write sets, in milliseconds: none (`0`) for a record with a holder, so that
/// neither expiry nor a `volatile-*` eviction policy can take a live lease; ten lease durations
/// (at least a minute) for a vacant record, which only collects released elections.
fn expiry_ms(record: &LeaseRecord) -> u64 {
    if record.holder.is_some() {
        return 0;
    }
    let d = record
        .lease_duration
        .saturating_mul(EXPIRY_LEASES)
        .max(MIN_EXPIRY);
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The age of a version written at `written` when the server's clock read `now` (both µs
/// since the epoch, from the server's `TIME`), or `None` if the hash has no write time (written
/// by an older tenure) or it is not a number. A clock stepped back gives zero, never a wrap.
fn age_of(written: &[u8], now: &[u8]) -> Option<Duration> {
    let num = |b: &[u8]| std::str::from_utf8(b).ok()?.parse::<u64>().ok();
    Some(Duration::from_micros(
        num(now)?.saturating_sub(num(written)?),
    ))
}

/// The record's JSON split around its `transitions` value, for the write scripts (which
/// insert the token they choose). Refuses a record longer than [`MAX_RECORD_LEN`].
fn split_json(name: &str, record: &LeaseRecord) -> Result<(Vec<u8>, Vec<u8>)> {
    let mut marked = record.clone();
    marked.transitions = MARK;
    let json = marked.to_json();
    check_len(name, json.len())?;
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

/// Refuses a record whose JSON is `len` bytes, over [`MAX_RECORD_LEN`].
fn check_len(name: &str, len: usize) -> Result<()> {
    if len > MAX_RECORD_LEN {
        return Err(Error::TooLarge {
            store: KIND,
            name: name.to_owned(),
            size: len,
            limit: MAX_RECORD_LEN,
            what: "a Redis string under the default proto-max-bulk-len",
        });
    }
    Ok(())
}

/// Whether the server refused for lack of permission: wrong credentials, or an ACL refusing a
/// command, key or channel — also inside a script, which Redis 6 and 7 report as a plain `ERR`
/// ("The user executing the script can't publish to the channel ...", "... can't run this
/// command ...", "... can't access at least one of the keys ...").
fn is_permission(e: &RedisError) -> bool {
    if e.kind() == ErrorKind::AuthenticationFailed
        || e.kind() == ErrorKind::Server(ServerErrorKind::NoPerm)
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
    {
        return true;
    }
    let refused = |text: &str| {
        text.contains("user executing the script can't")
            || text.contains("NOPERM")
            || text.contains("no permissions to")
    };
    matches!(e.kind(), ErrorKind::Server(_) | ErrorKind::Extension)
        && (e.detail().is_some_and(refused) || refused(&e.to_string()))
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

    async fn get(&self, name: &str) -> Result<Option<Stored>> {
        let key = self.key_of(name)?;
        let reply = self.run("get", name, self.inner.read.key(&key)).await?;
        match reply.as_slice() {
            [s] if s == b"none" => Ok(None),
            [s, why] if s == b"garbage" => Err(garbage(&key, why)),
            [s, v, json, written, now] if s == b"ok" => {
                let version = version_of(v).ok_or_else(|| {
                    garbage(&key, b"a hash whose fields e and n are not a version")
                })?;
                let stored = Stored::new(LeaseRecord::from_json(KIND, &key, json)?, version);
                Ok(Some(match age_of(written, now) {
                    Some(age) => stored.with_age(age),
                    None => stored,
                }))
            }
            _ => Err(backend("unexpected reply from the read script")),
        }
    }

    async fn put(&self, name: &str, record: &LeaseRecord, mode: PutMode) -> Result<Version> {
        let key = self.key_of(name)?;
        let chan = self.channel_of(name)?;
        let ttl = expiry_ms(record);
        let (before, after) = split_json(name, record)?;
        let reply = match &mode {
            PutMode::Create => {
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
                let mut inv = self.inner.update.key(&key);
                inv.arg(v.as_str())
                    .arg(before)
                    .arg(after)
                    .arg(record.transitions.to_string())
                    .arg(holder_tag(record))
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
        let mailbox = Arc::new(Mailbox::default());
        let subscribe = HubCmd::Subscribe {
            chan: chan.clone(),
            name: name.to_owned(),
            id,
            mailbox: mailbox.clone(),
        };
        if self.inner.hub.send(subscribe).is_err() {
            return None;
        }
        // A weak handle: the hub ends with the store, not with the last watch.
        let guard = Unsubscribe {
            hub: self.inner.hub.downgrade(),
            chan,
            id,
        };
        Some(
            futures_util::stream::unfold((mailbox, guard), |(mailbox, guard)| async move {
                let item = mailbox.take().await?;
                Some((item, (mailbox, guard)))
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

    /// Durable tokens: every write that starts a term stores at least the server's `TIME` in
    /// microseconds (see the [module documentation](self) for what can still break that).
    /// The watch reports every write: each one, renewals included, publishes its version and
    /// record.
    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
            .with_durable_tokens(true)
            .with_watch_every_write(true)
    }
}

// ---------------------------------------------------------------------------------------------
// Watch: one pub/sub connection per store, shared by all its watches
// ---------------------------------------------------------------------------------------------

enum HubCmd {
    /// Watch `chan` (the channel of election `name`) for watcher `id`.
    Subscribe {
        chan: String,
        name: String,
        id: u64,
        mailbox: Arc<Mailbox>,
    },
    /// Watcher `id` stopped watching `chan`.
    Unsubscribe { chan: String, id: u64 },
}

/// Ends a watch's subscription when its stream is dropped. Holds a weak handle, so that the
/// hub's command channel closes (and the hub ends) once the store itself is gone.
struct Unsubscribe {
    hub: mpsc::WeakUnboundedSender<HubCmd>,
    chan: String,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            let chan = std::mem::take(&mut self.chan);
            let _ = hub.send(HubCmd::Unsubscribe { chan, id: self.id });
        }
    }
}

/// What the hub has for one watch: the latest event not yet taken — a newer one replaces it,
/// so that a slow watcher skips to the newest, never gets an older one after a newer, and never
/// misses the newest — or the error that ends the watch (never replaced); and whether the hub
/// let go of the watch (its stream then ends once the mailbox is empty).
///
/// A `Put` may replace a hint not yet taken: it was published after the (re)subscription the
/// hint stands for, so it is newer than anything the hint was about — the re-read the hint
/// asks for would return it or a later version, and every later one follows as its own event.
#[derive(Default)]
struct Mailbox {
    mail: std::sync::Mutex<Mail>,
    posted: tokio::sync::Notify,
}

#[derive(Default)]
struct Mail {
    next: Option<Result<WatchEvent>>,
    closed: bool,
}

impl Mailbox {
    fn with<T>(&self, f: impl FnOnce(&mut Mail) -> T) -> T {
        // Nothing panics while holding the lock: poison is moot.
        f(&mut self.mail.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Leaves `item` for the watch, in place of any event it has not taken yet; a final error
    /// stays.
    fn post(&self, item: Result<WatchEvent>) {
        let posted = self.with(|m| {
            if m.closed || matches!(m.next, Some(Err(_))) {
                return false;
            }
            m.next = Some(item);
            true
        });
        if posted {
            // Stores a permit if the watch is not waiting: no wake-up is lost.
            self.posted.notify_one();
        }
    }

    /// The hub lets go: the stream ends once it has taken what is left.
    fn close(&self) {
        self.with(|m| m.closed = true);
        self.posted.notify_one();
    }

    /// The next item, or `None` once the hub let go and nothing is left. Cancellation safe.
    async fn take(&self) -> Option<Result<WatchEvent>> {
        loop {
            let taken = self.with(|m| match m.next.take() {
                Some(item) => Some(Some(item)),
                None if m.closed => Some(None),
                None => None,
            });
            if let Some(item) = taken {
                return item;
            }
            self.posted.notified().await;
        }
    }
}

/// One watch of a channel, as the hub holds it; dropping it ends the watch's stream.
struct Watcher {
    name: String,
    mailbox: Arc<Mailbox>,
}

impl Watcher {
    fn post(&self, event: WatchEvent) {
        self.mailbox.post(Ok(event));
    }

    /// Sends the error that ends this watch; the stream ends when the watcher is dropped.
    fn fail(self, e: &RedisError) {
        self.mailbox.post(Err(Error::PermissionDenied {
            store: KIND,
            operation: "watch",
            name: self.name.clone(),
            source: Box::new(e.clone()),
        }));
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.mailbox.close();
    }
}

/// The event a message on an election's channel announces: `<version> <record JSON>` is a
/// [`WatchEvent::Put`], `deleted` a [`WatchEvent::Deleted`]. Anything else — a bare version
/// (a record too long to publish, or a write by an older tenure that publishes only versions),
/// or a message somebody else published — is a [`WatchEvent::Hint`]: the watcher re-reads.
fn event_of(chan: &str, payload: &[u8]) -> WatchEvent {
    if payload == b"deleted" {
        return WatchEvent::Deleted;
    }
    let parsed = payload.iter().position(|&b| b == b' ').and_then(|at| {
        let version = version_of(payload.get(..at)?)?;
        let json = payload.get(at + 1..)?;
        let record = LeaseRecord::from_json(KIND, chan, json).ok()?;
        Some(Stored::new(record, version))
    });
    match parsed {
        Some(stored) => WatchEvent::Put(stored),
        None => {
            debug!(channel = %chan, len = payload.len(), "a message that announces no record: a hint");
            WatchEvent::Hint
        }
    }
}

/// How a connection of the hub ended.
enum Ended {
    /// The store is gone (the command channel closed): the hub ends.
    Store,
    /// Nobody watches any more: the connection is closed until somebody does.
    Idle,
    /// The connection failed; reconnect after a pause.
    Failed(String),
}

/// The watch task's state: who watches which channel, and what the current connection is
/// subscribed to.
struct Hub {
    rx: mpsc::UnboundedReceiver<HubCmd>,
    subs: HashMap<String, HashMap<u64, Watcher>>,
    /// The channels subscribed on the current connection.
    active: HashSet<String>,
    /// Channels whose subscription may not match `subs` (to subscribe or unsubscribe), so
    /// that a message costs no scan of every channel.
    todo: VecDeque<String>,
    /// The pause before the next reconnection.
    pause: Duration,
}

impl Hub {
    fn apply(&mut self, cmd: HubCmd) {
        match cmd {
            HubCmd::Subscribe {
                chan,
                name,
                id,
                mailbox,
            } => {
                let w = Watcher { name, mailbox };
                // Subscribed already: a hint covers anything written before this watch, and
                // every later write is announced. Otherwise the hint follows the SUBSCRIBE.
                if self.active.contains(&chan) {
                    w.post(WatchEvent::Hint);
                } else {
                    self.todo.push_back(chan.clone());
                }
                self.subs.entry(chan).or_default().insert(id, w);
            }
            HubCmd::Unsubscribe { chan, id } => {
                if let Some(ws) = self.subs.get_mut(&chan) {
                    ws.remove(&id);
                    if ws.is_empty() {
                        self.subs.remove(&chan);
                        self.todo.push_back(chan);
                    }
                }
            }
        }
    }

    /// Gives `event` to every watch of `chan`.
    fn post(&self, chan: &str, event: &WatchEvent) {
        for w in self.subs.get(chan).into_iter().flat_map(HashMap::values) {
            w.post(event.clone());
        }
    }

    /// Ends every watch of `chan` with [`Error::PermissionDenied`].
    fn deny(&mut self, chan: &str, e: &RedisError) {
        for w in self
            .subs
            .remove(chan)
            .into_iter()
            .flat_map(HashMap::into_values)
        {
            w.fail(e);
        }
    }

    /// Runs `fut` while applying the commands that arrive meanwhile; `None` if the command
    /// channel closed (the store is gone) first.
    async fn serving<T>(&mut self, fut: impl Future<Output = T>) -> Option<T> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return Some(out),
                cmd = self.rx.recv() => self.apply(cmd?),
            }
        }
    }

    /// The pause before the next reconnection: `pause`, halved and jittered by up to as much
    /// again, and doubles `pause` (up to [`MAX_PAUSE`]).
    fn next_pause(&mut self) -> Duration {
        let half = self.pause / 2;
        let jitter = half.mul_f64(rand::thread_rng().gen::<f64>());
        self.pause = (self.pause * 2).min(MAX_PAUSE);
        half + jitter
    }

    /// Subscribes `chan` and gives its watchers a hint; `Some` if the connection must end. A
    /// refusal for lack of permission ends the channel's watches instead.
    async fn subscribe(
        &mut self,
        sink: &mut PubSubSink,
        chan: String,
        t: Duration,
    ) -> Option<Ended> {
        let Some(r) = self
            .serving(tokio::time::timeout(t, sink.subscribe(&chan)))
            .await
        else {
            return Some(Ended::Store);
        };
        match r {
            Ok(Ok(())) => {
                self.active.insert(chan.clone());
                // Subscribed now: whatever happened before, every watcher re-reads.
                self.post(&chan, &WatchEvent::Hint);
                None
            }
            Ok(Err(e)) if is_permission(&e) => {
                warn!(channel = %chan, error = %e, "Redis refused to SUBSCRIBE the watch");
                self.deny(&chan, &e);
                None
            }
            Ok(Err(e)) => Some(Ended::Failed(format!("SUBSCRIBE failed: {e}"))),
            Err(_) => Some(Ended::Failed("SUBSCRIBE timed out".to_owned())),
        }
    }

    /// Unsubscribes `chan`, which nobody watches any more; `Some` if the connection must end.
    async fn unsubscribe(
        &mut self,
        sink: &mut PubSubSink,
        chan: String,
        t: Duration,
    ) -> Option<Ended> {
        let Some(r) = self
            .serving(tokio::time::timeout(t, sink.unsubscribe(&chan)))
            .await
        else {
            return Some(Ended::Store);
        };
        match r {
            Ok(Ok(())) => {
                self.active.remove(&chan);
                None
            }
            Ok(Err(e)) => Some(Ended::Failed(format!("UNSUBSCRIBE failed: {e}"))),
            Err(_) => Some(Ended::Failed("UNSUBSCRIBE timed out".to_owned())),
        }
    }

    /// Serves one connection: subscribes every watched channel, one at a time (so that a
    /// channel refused by an ACL fails only its own watches), unsubscribes those nobody
    /// watches, and turns each message into an event for the watches of its channel, checking
    /// the connection with a `PING` whenever it stayed silent for [`WATCH_PING`].
    async fn connected(&mut self, conn: PubSub, t: Duration) -> Ended {
        let (mut sink, mut stream) = conn.split();
        self.active.clear();
        self.todo = self.subs.keys().cloned().collect();
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + WATCH_PING, WATCH_PING);
        loop {
            if let Some(chan) = self.todo.pop_front() {
                let watched = self.subs.contains_key(&chan);
                let subscribed = self.active.contains(&chan);
                let failed = if watched && !subscribed {
                    self.subscribe(&mut sink, chan, t).await
                } else if subscribed && !watched {
                    self.unsubscribe(&mut sink, chan, t).await
                } else {
                    None
                };
                if let Some(ended) = failed {
                    return ended;
                }
                continue;
            }
            if self.subs.is_empty() {
                return Ended::Idle;
            }
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => self.apply(cmd),
                    None => return Ended::Store,
                },
                msg = stream.next() => match msg {
                    Some(msg) => {
                        // A message shows the connection works: no PING needed for a while.
                        ping.reset();
                        self.pause = MIN_PAUSE;
                        let chan = msg.get_channel_name();
                        if self.subs.contains_key(chan) {
                            self.post(chan, &event_of(chan, msg.get_payload_bytes()));
                        }
                    }
                    None => return Ended::Failed("the connection closed".to_owned()),
                },
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(t, sink.ping::<::redis::Value>());
                    match self.serving(pong).await {
                        None => return Ended::Store,
                        // A healthy connection: the next failure starts with the shortest pause.
                        Some(Ok(Ok(_))) => self.pause = MIN_PAUSE,
                        Some(_) => return Ended::Failed("PING went unanswered".to_owned()),
                    }
                }
            }
        }
    }
}

/// The watch task: keeps one pub/sub connection subscribed to every watched channel while
/// somebody watches, reconnecting after a failure with a pause that doubles from
/// [`MIN_PAUSE`] to [`MAX_PAUSE`] (jittered), and giving every watcher a hint after
/// (re)subscribing. A channel (or a connection) refused for lack of permission ends its
/// watches with [`Error::PermissionDenied`]. Serves commands in every state, and ends as soon
/// as the store is dropped (its command channel closes).
async fn hub(client: Client, t: Duration, rx: mpsc::UnboundedReceiver<HubCmd>) {
    let mut hub = Hub {
        rx,
        subs: HashMap::new(),
        active: HashSet::new(),
        todo: VecDeque::new(),
        pause: MIN_PAUSE,
    };
    loop {
        // Connect only while somebody watches.
        hub.active.clear();
        while hub.subs.is_empty() {
            match hub.rx.recv().await {
                Some(cmd) => hub.apply(cmd),
                None => return,
            }
        }
        let connect = tokio::time::timeout(t, client.get_async_pubsub());
        let failed = match hub.serving(connect).await {
            None => return,
            Some(Ok(Ok(conn))) => match hub.connected(conn, t).await {
                Ended::Store => return,
                Ended::Idle => continue,
                Ended::Failed(why) => why,
            },
            Some(Ok(Err(e))) if is_permission(&e) => {
                warn!(error = %e, "Redis refused the watch connection");
                let chans: Vec<String> = hub.subs.keys().cloned().collect();
                for chan in chans {
                    hub.deny(&chan, &e);
                }
                continue;
            }
            Some(Ok(Err(e))) => format!("connecting failed: {e}"),
            Some(Err(_)) => "connecting timed out".to_owned(),
        };
        hub.active.clear();
        let pause = hub.next_pause();
        debug!(pause = ?pause, "the watch connection failed ({failed}); reconnecting after a pause");
        if hub.serving(tokio::time::sleep(pause)).await.is_none() {
            return;
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
        let (before, after) = split_json("k", &r).unwrap();
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
    fn only_vacant_records_expire_and_generously() {
        let held = LeaseRecord::held_by("a", Duration::from_secs(15), 1);
        assert_eq!(expiry_ms(&held), 0, "a held record must carry no expiry");
        let vacant = |l| LeaseRecord {
            holder: None,
            ..LeaseRecord::held_by("a", l, 1)
        };
        assert_eq!(expiry_ms(&vacant(Duration::from_secs(15))), 150_000);
        assert_eq!(expiry_ms(&vacant(Duration::from_millis(100))), 60_000);
        assert_eq!(
            expiry_ms(&vacant(crate::record::MAX_DURATION)),
            u64::try_from(crate::record::MAX_DURATION.as_millis()).unwrap() * 10
        );
    }

    #[test]
    fn ages_are_server_clock_differences() {
        let age = |w: &str, n: &str| age_of(w.as_bytes(), n.as_bytes());
        assert_eq!(
            age("1700000000000000", "1700000000250000"),
            Some(Duration::from_millis(250))
        );
        // A server clock stepped back: zero, not a wrap-around.
        assert_eq!(
            age("1700000000250000", "1700000000000000"),
            Some(Duration::ZERO)
        );
        // Written by an older tenure (no `w` field), or not a number: unknown.
        assert_eq!(age("", "1700000000000000"), None);
        assert_eq!(age("x", "1700000000000000"), None);
        assert_eq!(age("1", ""), None);
    }

    #[test]
    fn messages_become_events() {
        let chan = "tenure:chan:x";
        let r = stored_form(LeaseRecord::held_by(
            "a b",
            Duration::from_secs(3),
            1_700_000_000_000_000,
        ));
        let payload = [&b"1700000000000000.7 "[..], &r.to_json()].concat();
        assert_eq!(
            event_of(chan, &payload),
            WatchEvent::Put(Stored::new(r.clone(), Version::new("1700000000000000.7")))
        );
        assert_eq!(event_of(chan, b"deleted"), WatchEvent::Deleted);
        let json = r.to_json();
        let not_ours: [&[u8]; 8] = [
            b"",
            b"hello",
            // A bare version: a record too long to publish, or an older tenure.
            b"1700000000000000.7",
            b"1700000000000000.7 ",
            b"1700000000000000.7 {not json",
            br#"1700000000000000.7 {"holder":"a"}"#,
            b"deleted 1.2",
            &json,
        ];
        for p in not_ours {
            assert_eq!(event_of(chan, p), WatchEvent::Hint, "{p:?}");
        }
        let bad_version = [&b"1.x "[..], &json].concat();
        assert_eq!(event_of(chan, &bad_version), WatchEvent::Hint);
    }

    #[test]
    fn the_scripts_know_the_publishing_limit() {
        let p = prelude();
        assert!(p.contains("if #rec > 65536 then return v end"), "{p}");
        assert!(!p.contains("PUBLISHED_RECORD_MAX"));
    }

    /// The record as it reads back (times in whole microseconds).
    fn stored_form(r: LeaseRecord) -> LeaseRecord {
        LeaseRecord::from_json(KIND, "k", &r.to_json()).unwrap()
    }

    fn put(n: u64) -> WatchEvent {
        let mut r = LeaseRecord::held_by("a", Duration::from_secs(3), 1);
        r.acquire_time = None;
        r.renew_time = None;
        WatchEvent::Put(Stored::new(r, Version::from(n)))
    }

    #[tokio::test]
    async fn a_mailbox_keeps_the_latest_event_and_a_final_error() {
        use futures_util::FutureExt;
        let m = Mailbox::default();
        assert!(m.take().now_or_never().is_none(), "an empty mailbox waits");
        for n in 1..=3 {
            m.post(Ok(put(n)));
        }
        assert_eq!(m.take().await.unwrap().unwrap(), put(3));
        assert!(
            m.take().now_or_never().is_none(),
            "the older events are gone"
        );
        // A hint replaces a Put not yet taken, and a Put a hint.
        m.post(Ok(put(4)));
        m.post(Ok(WatchEvent::Hint));
        assert_eq!(m.take().await.unwrap().unwrap(), WatchEvent::Hint);
        m.post(Ok(WatchEvent::Hint));
        m.post(Ok(put(5)));
        assert_eq!(m.take().await.unwrap().unwrap(), put(5));
        // A final error is never replaced, and the stream ends after it.
        m.post(Ok(put(6)));
        m.post(Err(Error::config("final")));
        m.post(Ok(put(7)));
        m.close();
        assert!(matches!(m.take().await, Some(Err(Error::Config { .. }))));
        assert!(m.take().await.is_none());
        // Closed: nothing more is posted.
        m.post(Ok(put(8)));
        assert!(m.take().await.is_none());
    }

    #[tokio::test]
    async fn a_waiting_watch_is_woken() {
        let m = Arc::new(Mailbox::default());
        let waiter = tokio::spawn({
            let m = m.clone();
            async move { m.take().await }
        });
        tokio::task::yield_now().await;
        m.post(Ok(put(1)));
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(got.unwrap().unwrap(), put(1));
    }

    #[test]
    fn oversized_records_are_refused_before_writing() {
        assert!(check_len("big", MAX_RECORD_LEN).is_ok());
        match check_len("big", MAX_RECORD_LEN + 1) {
            Err(Error::TooLarge {
                store, size, limit, ..
            }) => {
                assert_eq!(store, KIND);
                assert_eq!(limit, MAX_RECORD_LEN);
                assert!(size > limit);
            }
            other => panic!("{other:?}"),
        }
    }
}
