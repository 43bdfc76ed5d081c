//! [`LeaseRecord`]: what a store holds for one election, in client-go's shape.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The record a store holds for one election or lock, in the shape of client-go's
/// `LeaderElectionRecord` plus an optional leader value.
///
/// Wall-clock times are informational (for `kubectl get lease` and humans): tenure never judges
/// expiry by comparing them with a local clock. Expiry is judged by how long an observer has
/// seen the record unchanged, against [`lease_duration`](Self::lease_duration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The holder's identity; `None` when the lease is vacant (released).
    pub holder: Option<String>,
    /// How long the holder promises to renew within; observers may take over after seeing no
    /// change for this long. Stored in whole milliseconds, rounded up; readers refuse more than
    /// [`MAX_DURATION`].
    pub lease_duration: Duration,
    /// When the current holder acquired the lease (informational).
    pub acquire_time: Option<SystemTime>,
    /// When the current holder last renewed (informational).
    pub renew_time: Option<SystemTime>,
    /// Incremented every time a new term starts; tenure's fencing token.
    pub transitions: u64,
    /// An optional value published by the holder, for example its address.
    pub value: Option<String>,
}

impl LeaseRecord {
    /// A record held by `holder` for `lease_duration`, acquired and renewed now.
    pub fn held_by(holder: impl Into<String>, lease_duration: Duration, transitions: u64) -> Self {
        let now = SystemTime::now();
        LeaseRecord {
            holder: Some(holder.into()),
            lease_duration,
            acquire_time: Some(now),
            renew_time: Some(now),
            transitions,
            value: None,
        }
    }

    /// Whether nobody holds the lease.
    pub fn is_vacant(&self) -> bool {
        self.holder.is_none()
    }

    /// Whether `identity` holds the lease.
    pub fn is_held_by(&self, identity: &str) -> bool {
        self.holder.as_deref() == Some(identity)
    }

    /// Encodes the record as tenure's JSON document (used by stores that hold opaque bytes).
    pub fn to_json(&self) -> Vec<u8> {
        let doc = JsonRecord {
            tenure: FORMAT,
            holder: self.holder.clone(),
            lease_duration_ms: ceil_millis(self.lease_duration),
            acquire_time_us: self.acquire_time.map(micros),
            renew_time_us: self.renew_time.map(micros),
            transitions: self.transitions,
            value: self.value.clone(),
        };
        // Serializing a struct of plain fields cannot fail.
        serde_json::to_vec(&doc).unwrap_or_default()
    }

    /// Decodes tenure's JSON document; `store` and `key` name the record in the error.
    pub fn from_json(store: &'static str, key: &str, bytes: &[u8]) -> Result<Self> {
        let decode = |source: crate::error::BoxError| Error::Decode {
            store,
            key: key.to_owned(),
            source,
        };
        let doc: JsonRecord = serde_json::from_slice(bytes).map_err(|e| decode(Box::new(e)))?;
        if doc.tenure != FORMAT {
            return Err(decode(
                format!("unsupported record format {}", doc.tenure).into(),
            ));
        }
        if doc.lease_duration_ms == 0 {
            return Err(decode("lease duration is zero".into()));
        }
        let lease_duration = Duration::from_millis(doc.lease_duration_ms);
        if lease_duration > MAX_DURATION {
            return Err(decode(
                format!(
                    "lease duration of {} ms is longer than the {} s tenure accepts",
                    doc.lease_duration_ms,
                    MAX_DURATION.as_secs()
                )
                .into(),
            ));
        }
        Ok(LeaseRecord {
            holder: doc.holder,
            lease_duration,
            acquire_time: doc.acquire_time_us.map(from_micros),
            renew_time: doc.renew_time_us.map(from_micros),
            transitions: doc.transitions,
            value: doc.value,
        })
    }
}

const FORMAT: u32 = 1;

/// The longest lease duration tenure writes or accepts, and the longest duration setting: 7
/// days. Longer values are almost certainly unit mistakes, and a record claiming one would
/// make its holder unexpirable: readers refuse it as [`Error::Decode`].
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Whole milliseconds, rounded **up**: a lease is never stored shorter than configured.
fn ceil_millis(d: Duration) -> u64 {
    let ms = d.as_millis() + u128::from(!d.subsec_nanos().is_multiple_of(1_000_000));
    u64::try_from(ms).unwrap_or(u64::MAX)
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRecord {
    tenure: u32,
    holder: Option<String>,
    lease_duration_ms: u64,
    acquire_time_us: Option<i64>,
    renew_time_us: Option<i64>,
    transitions: u64,
    value: Option<String>,
}

fn micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

fn from_micros(us: i64) -> SystemTime {
    let d = Duration::from_micros(us.unsigned_abs());
    if us >= 0 {
        UNIX_EPOCH.checked_add(d).unwrap_or(UNIX_EPOCH)
    } else {
        UNIX_EPOCH.checked_sub(d).unwrap_or(UNIX_EPOCH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip() {
        let mut r = LeaseRecord::held_by("a", Duration::from_millis(1500), 7);
        r.value = Some("10.0.0.1:80".into());
        let back = LeaseRecord::from_json("t", "k", &r.to_json()).unwrap();
        // Times keep microsecond precision.
        assert_eq!(back.holder, r.holder);
        assert_eq!(back.transitions, 7);
        assert_eq!(back.lease_duration, Duration::from_millis(1500));
        assert_eq!(back.value, r.value);
        let t = |x: Option<SystemTime>| x.unwrap().duration_since(UNIX_EPOCH).unwrap().as_micros();
        assert_eq!(t(back.renew_time), t(r.renew_time));
    }

    #[test]
    fn times_before_the_epoch_survive() {
        let mut r = LeaseRecord::held_by("a", Duration::from_secs(1), 1);
        r.renew_time = UNIX_EPOCH.checked_sub(Duration::from_secs(86_400 * 365 * 40));
        let back = LeaseRecord::from_json("t", "k", &r.to_json()).unwrap();
        assert_eq!(back.renew_time, r.renew_time);
    }

    #[test]
    fn garbage_is_a_decode_error_naming_the_key() {
        for bad in [
            &b"hello"[..],
            b"{}",
            b"{\"tenure\":2,\"holder\":null,\"lease_duration_ms\":1,\"transitions\":0}",
            b"{\"tenure\":1,\"holder\":null,\"lease_duration_ms\":0,\"transitions\":0}",
            b"\xff\xfe",
        ] {
            match LeaseRecord::from_json("file", "dir/x.lease", bad) {
                Err(Error::Decode { store, key, .. }) => {
                    assert_eq!(store, "file");
                    assert_eq!(key, "dir/x.lease");
                }
                other => panic!("expected a decode error, got {other:?}"),
            }
        }
    }

    #[test]
    fn lease_durations_are_never_stored_shorter() {
        for l in [
            Duration::from_micros(500),
            Duration::from_nanos(1),
            Duration::from_micros(1_500_500),
            Duration::from_millis(2000),
        ] {
            let r = LeaseRecord::held_by("a", l, 1);
            let back = LeaseRecord::from_json("t", "k", &r.to_json())
                .unwrap_or_else(|e| panic!("{l:?}: {e}"));
            assert!(
                back.lease_duration >= l,
                "{l:?} came back {:?}",
                back.lease_duration
            );
        }
    }

    #[test]
    fn absurd_lease_durations_are_refused_by_readers() {
        let doc = format!(
            "{{\"tenure\":1,\"holder\":\"a\",\"lease_duration_ms\":{},\"transitions\":1}}",
            u64::MAX
        );
        assert!(matches!(
            LeaseRecord::from_json("t", "k", doc.as_bytes()),
            Err(Error::Decode { .. })
        ));
    }
}
