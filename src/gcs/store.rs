//! [`GcsStore`]: the [`LeaseStore`] contract on one Cloud Storage object per election.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use rand::Rng;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use tracing::debug;

use super::client::{path_segment, Gcs, KIND, MAX_OBJECT_NAME_LEN};
use crate::error::{with_timeout, Error, Result};
use crate::record::LeaseRecord;
use crate::store::{Capabilities, LeaseStore, PutMode, Stored, Version};

/// The largest request tenure sends as one multipart upload: Cloud Storage advises multipart
/// uploads for objects of up to 5 MiB (larger ones should be resumable uploads, which tenure
/// does not use: a lease record is a few hundred bytes).
pub const MAX_UPLOAD_LEN: usize = 5 * 1024 * 1024;

/// The longest record (its JSON) the store writes: [`MAX_UPLOAD_LEN`] less 8 KiB for the
/// object's metadata and the multipart framing. Longer records fail with
/// [`Error::TooLarge`] before anything is sent.
pub const MAX_RECORD_LEN: usize = MAX_UPLOAD_LEN - 8 * 1024;

/// The custom metadata key (`x-goog-meta-tenure-token`) a create writes: its value
/// [`TOKEN_FROM_GENERATION`] says that the version's fencing token is at least its
/// generation (see [Fencing tokens](GcsStore#fencing-tokens)).
pub const TOKEN_METADATA_KEY: &str = "tenure-token";
/// The value of [`TOKEN_METADATA_KEY`].
pub const TOKEN_FROM_GENERATION: &str = "at-least-generation";

/// The most names whose last seen (generation, token) the store remembers.
const CACHE_LIMIT: usize = 100_000;
/// How many times `get` re-reads when the object changes between its two requests.
const READ_ATTEMPTS: usize = 8;

/// A [`LeaseStore`] on Cloud Storage: election `name` is the object
/// `gs://<bucket>/<prefix><escaped name>`, whose content is the record's JSON.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> tenure::Result<()> {
/// use std::time::Duration;
/// use tenure::gcs::{GcsOptions, GcsStore};
/// use tenure::{LeaseRecord, LeaseStore, PutMode};
///
/// let store = GcsStore::new(GcsOptions::new("my-bucket").connect().await?);
/// let v = store.put("job", &LeaseRecord::held_by("me", Duration::from_secs(15), 1), PutMode::Create).await?;
/// let stored = store.get("job").await?.expect("just created");
/// assert_eq!(stored.version, v);              // the object's generation
/// assert!(stored.record.transitions >= 1);    // at least that generation: above every earlier token
/// # Ok(()) }
/// ```
///
/// # Layout
///
/// One object per election, `<prefix><escaped name>` (prefix `tenure/` by default,
/// [`GcsOptions::prefix`](super::GcsOptions::prefix)), content type `application/json`,
/// `Cache-Control: no-store`, content [`LeaseRecord::to_json`]. Every mutation is a
/// **conditional multipart upload** of the whole object (`uploadType=multipart`), never a
/// PATCH or a media upload:
///
/// - `put(Create)`: `ifGenerationMatch=0` (only if no live object); 412 is
///   [`Error::AlreadyExists`].
/// - `put(Update(g))` — renew, take over, vacate: `ifGenerationMatch=g`; 412 is
///   [`Error::Conflict`]. To know whether the write starts a term the store needs the token
///   stored at `g`: it remembers the last generation it read or wrote for each name (a
///   generation is one write, so this never goes stale) and otherwise reads the object first,
///   which also refuses to overwrite an object that is not a tenure record.
/// - `get`: the object's metadata (`GET .../o/<object>`: generation and custom metadata), then
///   its content at exactly that generation (`alt=media&generation=g`); if that generation was
///   replaced in between, it reads again. Cloud Storage is strongly consistent for these
///   reads: a read that starts after a write returned sees it.
/// - `delete(g)`: `DELETE ...?ifGenerationMatch=g`, only where the server honours that
///   precondition ([`GcsOptions::delete_preconditions`](super::GcsOptions::delete_preconditions));
///   elsewhere [`Error::Unsupported`].
///
/// A [`PredefinedAcl`](super::PredefinedAcl) set with
/// [`GcsOptions::object_acl`](super::GcsOptions::object_acl) is sent with every upload.
///
/// # Versions
///
/// A [`Version`] is the object's `generation`: Cloud Storage gives every upload a new one, and
/// generations of one object name increase, also across delete and re-create (they are
/// microsecond timestamps: checked on fake-gcs-server by the tests; on Cloud Storage they are
/// what object versioning orders versions by). Metagenerations are never used: a metadata
/// change keeps the generation, but tenure never changes metadata alone.
///
/// # Fencing tokens
///
/// **A record's token is its content's `transitions`, lifted to at least the object's
/// generation on a version written by a create** (marked with the custom metadata
/// [`TOKEN_METADATA_KEY`]` = `[`TOKEN_FROM_GENERATION`]). An update that starts a term stores
/// at least `g + 1` for the generation `g` it replaces; renewals and releases store the token
/// exactly (the elector writes back the lifted token it read, so the lift survives the first
/// renewal). So every token is at most the generation of the write that established it, and:
///
/// - a create after a deletion starts at its own generation, above every generation — hence
///   every token — the name ever had;
/// - an update starting a term stores at least `g + 1`, above every token up to version `g`.
///
/// Tokens therefore rise across everything that can happen to the object, deletion included
/// ([`Capabilities::durable_tokens`]): a fresh process that never saw the earlier terms still
/// continues above them. Tokens are generations (about 1.8 × 10¹⁵), not 1, 2, 3: compare
/// them, don't count them.
///
/// **What breaks it:** generations that do not increase for one name — an object copied or
/// restored into another bucket with an older generation does not matter (a new upload gets a
/// new generation), but an emulator restarted with a clock set back, or a `transitions` written
/// by hand above the current time in microseconds, would. Moving the prefix to another bucket
/// is safe only if the new bucket's generations are above the old tokens (they are, being
/// later timestamps).
///
/// # Ages
///
/// [`Stored::age`] is always `None`. Objects carry `updated` and `timeCreated`, stamped by
/// Google's clock; comparing them with this machine's clock would judge expiry across two
/// clocks, which tenure never does. A fresh process waits one lease duration from when it
/// first sees a version, as with client-go.
///
/// # Watch
///
/// None: Cloud Storage has no watch a lease could use (Pub/Sub notifications are
/// asynchronous, unordered and at-least-once, and need a topic and a subscription).
/// [`watch`](LeaseStore::watch) returns `None`, so followers poll every jittered retry
/// period `R`: a graceful handoff takes up to `R × (1 + jitter)`, and a crash is taken over at
/// the observed expiry, like on every store.
///
/// # Rate limit
///
/// Cloud Storage allows about one write per second to one object name (more fail with 429,
/// [`Error::Unavailable`], retried by the elector). A leader writes once per retry period `R`,
/// so `R` must be at least [`MIN_RETRY_PERIOD`](super::MIN_RETRY_PERIOD): the store reports it
/// as its [`Capabilities::min_retry_period`], and electors and locks over it refuse a shorter
/// one when built.
///
/// # Names
///
/// A name is escaped into one object-name segment, injectively: ASCII letters, digits, `-`,
/// `_`, `.`, `~` and non-ASCII characters stand for themselves; every other byte — `/`, `%`,
/// spaces, controls, CR and LF (which object names may not hold) — becomes `%XX`, and so does a
/// leading `.` (no segment is `.` or `..`). So `a/b` is the object `tenure/a%2Fb`, distinct
/// from `a%2Fb` (`tenure/a%252Fb`). An empty name, or one whose object name would be longer
/// than 1024 bytes (Cloud Storage's limit), fails with [`Error::InvalidName`] before any call.
///
/// # Sizes
///
/// A record whose JSON is longer than [`MAX_RECORD_LEN`], or whose upload would be longer than
/// [`MAX_UPLOAD_LEN`], fails with [`Error::TooLarge`] and nothing is sent.
///
/// # Garbage
///
/// An object whose content is not a tenure record makes `get` fail with [`Error::Decode`]
/// naming `gs://bucket/object`; `put(Update)` refuses to overwrite it (its generation is never
/// one the store read as a record, so the store reads it first and fails the same way), and
/// `put(Create)` fails with [`Error::AlreadyExists`].
///
/// # Permissions
///
/// The credentials need `storage.objects.get`, `.create`, `.delete` and `.list` on the bucket
/// (`roles/storage.objectUser`); a follower that never campaigns needs only `get` and `list`.
/// A refusal is [`Error::PermissionDenied`] naming the object, which is final.
///
/// # Timeouts and failures
///
/// Every call — its requests, and refreshing the OAuth token — runs under the handle's timeout
/// ([`GcsOptions::timeout`](super::GcsOptions::timeout), default 2 s) and an elapsed deadline
/// is [`Error::Timeout`]; refused connections, 429 and 5xx answers are
/// [`Error::Unavailable`], which the elector retries. A write whose answer was lost may have
/// happened; the elector re-reads, as after any conflict.
#[derive(Clone)]
pub struct GcsStore {
    gcs: Gcs,
    seen: Arc<Mutex<HashMap<String, (u64, u64)>>>,
}

impl fmt::Debug for GcsStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcsStore")
            .field("gcs", &self.gcs)
            .finish_non_exhaustive()
    }
}

/// An object resource, as much of it as the store reads.
#[derive(Debug, Deserialize)]
struct ObjectMeta {
    generation: String,
    #[serde(default)]
    metadata: Option<HashMap<String, String>>,
}

impl ObjectMeta {
    fn generation(&self, object: &str) -> Result<u64> {
        self.generation.parse().map_err(|_| Error::Backend {
            store: KIND,
            source: format!(
                "Cloud Storage sent the generation {:?} for {object:?}",
                self.generation
            )
            .into(),
        })
    }

    fn lifts_token(&self) -> bool {
        self.metadata
            .as_ref()
            .and_then(|m| m.get(TOKEN_METADATA_KEY))
            .is_some_and(|v| v == TOKEN_FROM_GENERATION)
    }
}

impl GcsStore {
    /// A store on this bucket handle (clones share its connections).
    pub fn new(gcs: Gcs) -> Self {
        GcsStore {
            gcs,
            seen: Arc::default(),
        }
    }

    /// The bucket handle.
    pub fn gcs(&self) -> &Gcs {
        &self.gcs
    }

    /// The object name that holds `name`'s record: the prefix followed by the escaped name
    /// (see [Names](#names)).
    ///
    /// Fails with [`Error::InvalidName`] if `name` is empty or the object name would be longer
    /// than 1024 bytes.
    pub fn object_of(&self, name: &str) -> Result<String> {
        let object = format!("{}{}", self.gcs.prefix(), escape(name)?);
        if object.len() > MAX_OBJECT_NAME_LEN {
            return Err(Error::InvalidName {
                store: KIND,
                name: name.to_owned(),
                reason: format!(
                    "the object name would be {} bytes, more than Cloud Storage's \
                     {MAX_OBJECT_NAME_LEN}",
                    object.len()
                ),
            });
        }
        Ok(object)
    }

    fn url_of(&self, object: &str) -> String {
        format!(
            "/storage/v1/b/{}/o/{}",
            path_segment(self.gcs.bucket()),
            path_segment(object)
        )
    }

    /// `gs://bucket/object`, naming the record in errors.
    fn gs(&self, object: &str) -> String {
        format!("gs://{}/{object}", self.gcs.bucket())
    }

    fn remember(&self, name: &str, generation: u64, token: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.len() >= CACHE_LIMIT && !seen.contains_key(name) {
            seen.clear();
        }
        seen.insert(name.to_owned(), (generation, token));
    }

    fn remembered(&self, name: &str, generation: u64) -> Option<u64> {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.get(name)
            .and_then(|&(g, t)| (g == generation).then_some(t))
    }

    fn forget(&self, name: &str) {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
    }

    /// Reads the object: metadata, then the content of exactly that generation.
    async fn read(&self, name: &str, object: &str) -> Result<Option<Stored>> {
        let url = self.url_of(object);
        let gs = self.gs(object);
        for _ in 0..READ_ATTEMPTS {
            let req = self.gcs.request(Method::GET, &url);
            let (status, body) = self.gcs.call(req, "get", &gs).await?;
            let meta: ObjectMeta = match status {
                StatusCode::NOT_FOUND => return Ok(None),
                s if s.is_success() => {
                    serde_json::from_slice(&body).map_err(|e| Error::Backend {
                        store: KIND,
                        source: format!("unreadable object resource for {gs}: {e}").into(),
                    })?
                }
                s => return Err(unexpected(&gs, s)),
            };
            let generation = meta.generation(object)?;
            let req = self
                .gcs
                .request(Method::GET, &url)
                .query(&[("alt", "media"), ("generation", &generation.to_string())]);
            let (status, content) = self.gcs.call(req, "get", &gs).await?;
            match status {
                // Replaced or deleted since the metadata was read: read again.
                StatusCode::NOT_FOUND => {
                    debug!(object = %gs, generation, "generation replaced while reading; re-reading");
                    continue;
                }
                s if s.is_success() => {}
                s => return Err(unexpected(&gs, s)),
            }
            let mut record = LeaseRecord::from_json(KIND, &gs, &content).map_err(|e| match e {
                Error::Decode { store, key, source } => Error::Decode {
                    store,
                    key,
                    source: format!("{source}; the object is left untouched").into(),
                },
                other => other,
            })?;
            if meta.lifts_token() {
                record.transitions = record.transitions.max(generation);
            }
            self.remember(name, generation, record.transitions);
            return Ok(Some(Stored::new(record, Version::from(generation))));
        }
        Err(Error::Unavailable {
            store: KIND,
            source: format!("{gs} changed under {READ_ATTEMPTS} reads in a row").into(),
        })
    }

    /// The token stored at generation `g` of `name`, or why an update of `g` cannot succeed.
    async fn token_at(&self, name: &str, object: &str, g: u64) -> Result<u64> {
        if let Some(t) = self.remembered(name, g) {
            return Ok(t);
        }
        match self.read(name, object).await? {
            Some(s) if s.version == Version::from(g) => Ok(s.record.transitions),
            _ => Err(conflict(name)),
        }
    }

    /// Uploads `json` as the whole object if its generation is `if_generation` (0: none).
    async fn upload(
        &self,
        name: &str,
        object: &str,
        json: &[u8],
        if_generation: u64,
        lift: bool,
    ) -> Result<std::result::Result<u64, ()>> {
        let gs = self.gs(object);
        let mut resource = serde_json::json!({
            "name": object,
            "contentType": "application/json",
            "cacheControl": "no-store",
        });
        if lift {
            resource["metadata"] = serde_json::json!({ TOKEN_METADATA_KEY: TOKEN_FROM_GENERATION });
        }
        let resource = serde_json::to_vec(&resource).unwrap_or_default();
        let (boundary, body) = multipart(&resource, json);
        check_len(name, json.len(), body.len())?;
        let mut req = self
            .gcs
            .request(
                Method::POST,
                &format!("/upload/storage/v1/b/{}/o", path_segment(self.gcs.bucket())),
            )
            .query(&[
                ("uploadType", "multipart"),
                ("ifGenerationMatch", &if_generation.to_string()),
            ])
            .header(
                reqwest::header::CONTENT_TYPE,
                format!("multipart/related; boundary={boundary}"),
            )
            .body(body);
        if let Some(acl) = self.gcs.object_acl() {
            req = req.query(&[("predefinedAcl", acl.as_str())]);
        }
        let (status, reply) = self.gcs.call(req, "put", &gs).await?;
        match status {
            StatusCode::PRECONDITION_FAILED => Ok(Err(())),
            StatusCode::NOT_FOUND => Err(self.gcs.missing_bucket()),
            s if s.is_success() => {
                let meta: ObjectMeta =
                    serde_json::from_slice(&reply).map_err(|e| Error::Backend {
                        store: KIND,
                        source: format!("unreadable upload reply for {gs}: {e}").into(),
                    })?;
                Ok(Ok(meta.generation(object)?))
            }
            s => Err(unexpected(&gs, s)),
        }
    }
}

fn conflict(name: &str) -> Error {
    Error::Conflict {
        store: KIND,
        name: name.to_owned(),
    }
}

fn unexpected(gs: &str, status: StatusCode) -> Error {
    Error::Backend {
        store: KIND,
        source: format!("Cloud Storage answered {status} for {gs}").into(),
    }
}

/// The object-name segment of `name` (see [`GcsStore`]'s Names).
fn escape(name: &str) -> Result<String> {
    crate::segment::escape_segment(KIND, name)
}

/// A `multipart/related` body of the object resource (JSON) and its content: the boundary
/// and the body. The boundary is random and checked not to occur in either part.
fn multipart(resource: &[u8], content: &[u8]) -> (String, Vec<u8>) {
    let boundary = loop {
        let b = format!("tenure-{:032x}", rand::thread_rng().gen::<u128>());
        let occurs = |hay: &[u8]| hay.windows(b.len()).any(|w| w == b.as_bytes());
        if !occurs(resource) && !occurs(content) {
            break b;
        }
    };
    let mut body = Vec::with_capacity(resource.len() + content.len() + 256);
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n").as_bytes(),
    );
    body.extend_from_slice(resource);
    body.extend_from_slice(
        format!("\r\n--{boundary}\r\nContent-Type: application/json\r\n\r\n").as_bytes(),
    );
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (boundary, body)
}

/// Refuses a record whose JSON is `len` bytes, or an upload of `body` bytes, too long.
fn check_len(name: &str, len: usize, body: usize) -> Result<()> {
    if len > MAX_RECORD_LEN {
        return Err(Error::TooLarge {
            store: KIND,
            name: name.to_owned(),
            size: len,
            limit: MAX_RECORD_LEN,
            what: "a record in one multipart upload",
        });
    }
    if body > MAX_UPLOAD_LEN {
        return Err(Error::TooLarge {
            store: KIND,
            name: name.to_owned(),
            size: body,
            limit: MAX_UPLOAD_LEN,
            what: "a multipart upload",
        });
    }
    Ok(())
}

#[async_trait::async_trait]
impl LeaseStore for GcsStore {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn get(&self, name: &str) -> Result<Option<Stored>> {
        let object = self.object_of(name)?;
        with_timeout(
            KIND,
            "get",
            name,
            self.gcs.timeout(),
            self.read(name, &object),
        )
        .await
    }

    async fn put(&self, name: &str, record: &LeaseRecord, mode: PutMode) -> Result<Version> {
        let object = self.object_of(name)?;
        // Refuse an oversized record before any request (the token below only grows digits).
        check_len(name, record.to_json().len(), 0)?;
        with_timeout(KIND, "put", name, self.gcs.timeout(), async {
            let (if_generation, stored, lift) = match &mode {
                PutMode::Create => (0, record.clone(), true),
                PutMode::Update(v) => {
                    let Some(g) = v.as_str().parse::<u64>().ok().filter(|&g| g > 0) else {
                        return Err(conflict(name));
                    };
                    let mut stored = record.clone();
                    let current = self.token_at(name, &object, g).await?;
                    if current != record.transitions {
                        // A new term: above every token the object held up to generation g.
                        stored.transitions = record.transitions.max(g.saturating_add(1));
                    }
                    (g, stored, false)
                }
            };
            let json = stored.to_json();
            match self
                .upload(name, &object, &json, if_generation, lift)
                .await?
            {
                Ok(g) => {
                    if if_generation > 0 && g <= if_generation {
                        return Err(Error::Backend {
                            store: KIND,
                            source: format!(
                                "Cloud Storage gave {} generation {g} after {if_generation}",
                                self.gs(&object)
                            )
                            .into(),
                        });
                    }
                    let token = if lift {
                        stored.transitions.max(g)
                    } else {
                        stored.transitions
                    };
                    self.remember(name, g, token);
                    Ok(Version::from(g))
                }
                Err(()) => Err(match mode {
                    PutMode::Create => Error::AlreadyExists {
                        store: KIND,
                        name: name.to_owned(),
                    },
                    PutMode::Update(_) => conflict(name),
                }),
            }
        })
        .await
    }

    async fn delete(&self, name: &str, version: &Version) -> Result<()> {
        if !self.gcs.delete_preconditions() {
            return Err(Error::Unsupported {
                store: KIND,
                operation: "delete (this server ignores ifGenerationMatch on DELETE)",
            });
        }
        let object = self.object_of(name)?;
        let Some(g) = version.as_str().parse::<u64>().ok().filter(|&g| g > 0) else {
            return Err(conflict(name));
        };
        let gs = self.gs(&object);
        let req = self
            .gcs
            .request(Method::DELETE, &self.url_of(&object))
            .query(&[("ifGenerationMatch", g.to_string())]);
        let (status, _) = with_timeout(
            KIND,
            "delete",
            name,
            self.gcs.timeout(),
            self.gcs.call(req, "delete", &gs),
        )
        .await?;
        match status {
            s if s.is_success() => {
                self.forget(name);
                Ok(())
            }
            StatusCode::PRECONDITION_FAILED | StatusCode::NOT_FOUND => Err(conflict(name)),
            s => Err(unexpected(&gs, s)),
        }
    }

    /// Durable tokens from generations (see [Fencing tokens](GcsStore#fencing-tokens) for
    /// what can still break that); no watch; a retry period of at least
    /// [`MIN_RETRY_PERIOD`](super::MIN_RETRY_PERIOD).
    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
            .with_durable_tokens(true)
            .with_min_retry_period(super::MIN_RETRY_PERIOD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_escape_injectively_into_one_segment() {
        assert_eq!(escape("scheduler").unwrap(), "scheduler");
        assert_eq!(escape("a/b").unwrap(), "a%2Fb");
        assert_eq!(escape("a%2Fb").unwrap(), "a%252Fb");
        assert_eq!(escape(".").unwrap(), "%2E");
        assert_eq!(escape("..").unwrap(), "%2E.");
        assert_eq!(escape("a\r\nb").unwrap(), "a%0D%0Ab");
        assert_eq!(escape("é").unwrap(), "é");
        assert!(matches!(escape(""), Err(Error::InvalidName { .. })));
        let names = [
            "a", "a/b", "a%2Fb", "a_b", "a.b", ".a", "%2Ea", "A", "a b", "a+b",
        ];
        let escaped: std::collections::HashSet<String> =
            names.iter().map(|n| escape(n).unwrap()).collect();
        assert_eq!(escaped.len(), names.len());
        for e in &escaped {
            assert!(!e.contains('/') && !e.starts_with('.'), "{e}");
        }
    }

    #[test]
    fn multipart_bodies_frame_both_parts() {
        let (b, body) = multipart(br#"{"name":"x"}"#, br#"{"tenure":1}"#);
        let text = String::from_utf8(body).unwrap();
        assert!(text.starts_with(&format!("--{b}\r\n")));
        assert!(text.ends_with(&format!("\r\n--{b}--\r\n")));
        assert_eq!(text.matches(&format!("--{b}")).count(), 3);
        assert!(text.contains("\r\n\r\n{\"tenure\":1}\r\n"));
    }

    #[test]
    fn sizes() {
        assert!(check_len("n", MAX_RECORD_LEN, MAX_UPLOAD_LEN).is_ok());
        assert!(matches!(
            check_len("n", MAX_RECORD_LEN + 1, 0),
            Err(Error::TooLarge { .. })
        ));
        assert!(matches!(
            check_len("n", 10, MAX_UPLOAD_LEN + 1),
            Err(Error::TooLarge { .. })
        ));
        let resource = serde_json::to_vec(&serde_json::json!({
            "name": "n".repeat(MAX_OBJECT_NAME_LEN * 6),
            "contentType": "application/json",
            "cacheControl": "no-store",
            "metadata": { TOKEN_METADATA_KEY: TOKEN_FROM_GENERATION },
        }))
        .unwrap();
        let (_, body) = multipart(&resource, &vec![b'x'; MAX_RECORD_LEN]);
        assert!(body.len() <= MAX_UPLOAD_LEN, "{}", body.len());
    }

    #[test]
    fn creates_lift_tokens_to_their_generation() {
        let m: ObjectMeta = serde_json::from_str(
            r#"{"generation":"1796397125428131","metadata":{"tenure-token":"at-least-generation"}}"#,
        )
        .unwrap();
        assert!(m.lifts_token());
        assert_eq!(m.generation("o").unwrap(), 1_796_397_125_428_131);
        let plain: ObjectMeta = serde_json::from_str(r#"{"generation":"5"}"#).unwrap();
        assert!(!plain.lifts_token());
        let bad: ObjectMeta = serde_json::from_str(r#"{"generation":"x"}"#).unwrap();
        assert!(matches!(bad.generation("o"), Err(Error::Backend { .. })));
    }
}
