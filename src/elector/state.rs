//! The election logic as a pure function of what was observed, when, and what we are.
//!
//! No I/O and no clock reads: [`decide`] is tested exhaustively on made-up instants.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::record::LeaseRecord;
use crate::store::{Stored, Version};

/// A record as last seen by this elector, and when (local monotonic clock) it was first seen
/// with this version.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The record.
    pub record: LeaseRecord,
    /// Its version.
    pub version: Version,
    /// When this version was first observed. Expiry counts from here — never from the
    /// record's wall-clock timestamps.
    pub since: Instant,
}

impl Observed {
    /// Updates the observation with a fresh read at `now`: the clock restarts only when the
    /// version changed, and starts `age` earlier when the store measured the version's age on
    /// its own clock (never later than it would without it).
    pub fn refresh(
        prev: Option<Observed>,
        fresh: Option<Stored>,
        now: Instant,
    ) -> Option<Observed> {
        let Stored {
            record,
            version,
            age,
        } = fresh?;
        let first_seen = match prev {
            Some(p) if p.version == version => p.since,
            _ => now,
        };
        let written = age.and_then(|a| now.checked_sub(a)).unwrap_or(now);
        Some(Observed {
            record,
            version,
            since: first_seen.min(written),
        })
    }

    /// The local instant at which the holder's lease expires unless the record changes:
    /// `since` plus the lease duration *recorded by the holder*.
    pub fn expires_at(&self) -> Instant {
        add(self.since, self.record.lease_duration)
    }
}

/// Adds without overflowing: absurd durations in a record mean "not in this lifetime".
pub fn add(t: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    t.checked_add(d.min(FAR)).unwrap_or(t)
}

/// What the elector should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No record exists: create one naming us.
    Create,
    /// The lease is vacant, expired, or names us while we do not lead: take it, starting a new
    /// term.
    Acquire,
    /// We lead and the record agrees: renew.
    Renew,
    /// We believed we led, but the record names somebody else (or nobody) or another term.
    Lost {
        /// The holder now recorded.
        holder: Option<String>,
    },
    /// Somebody else holds a live lease: wait for a change, or until it expires.
    Follow {
        /// The holder.
        holder: String,
        /// When the lease expires by our observation.
        expires_at: Instant,
    },
}

/// Decides the next step.
///
/// `leading` is the fencing token of our current term, if we lead.
pub fn decide(
    observed: Option<&Observed>,
    now: Instant,
    identity: &str,
    leading: Option<u64>,
) -> Decision {
    let Some(obs) = observed else {
        return match leading {
            Some(_) => Decision::Lost { holder: None },
            None => Decision::Create,
        };
    };
    let rec = &obs.record;
    if let Some(token) = leading {
        return if rec.is_held_by(identity) && rec.transitions == token {
            Decision::Renew
        } else {
            Decision::Lost {
                holder: rec.holder.clone(),
            }
        };
    }
    match &rec.holder {
        None => Decision::Acquire,
        Some(h) if h == identity => Decision::Acquire,
        Some(h) => {
            let expires_at = obs.expires_at();
            if now >= expires_at {
                Decision::Acquire
            } else {
                Decision::Follow {
                    holder: h.clone(),
                    expires_at,
                }
            }
        }
    }
}

/// The token a new term asks for: above the observed record's and above `highest`, the
/// highest this elector ever saw for the election. `None` past `u64::MAX`: a token is never
/// repeated, so no further term can start.
pub fn next_token(observed: Option<&Observed>, highest: u64) -> Option<u64> {
    observed
        .map_or(0, |o| o.record.transitions)
        .max(highest)
        .checked_add(1)
}

/// The record to write for `decision` (which must be `Create`, `Acquire` or `Renew`); a new
/// term asks for `token` (see [`next_token`]), a renewal keeps the observed one.
pub fn next_record(
    decision: &Decision,
    observed: Option<&Observed>,
    token: u64,
    identity: &str,
    lease_duration: Duration,
    value: Option<&str>,
    wall_now: SystemTime,
) -> LeaseRecord {
    let prev = observed.map(|o| &o.record);
    let (transitions, acquire_time) = match (decision, prev) {
        (Decision::Renew, Some(p)) => (p.transitions, p.acquire_time.or(Some(wall_now))),
        _ => (token, Some(wall_now)),
    };
    LeaseRecord {
        holder: Some(identity.to_owned()),
        lease_duration,
        acquire_time,
        renew_time: Some(wall_now),
        transitions,
        value: value.map(str::to_owned),
    }
}

/// The record that releases the lease we hold: vacant, same term counter.
pub fn vacated(observed: &LeaseRecord, wall_now: SystemTime) -> LeaseRecord {
    LeaseRecord {
        holder: None,
        lease_duration: observed.lease_duration,
        acquire_time: observed.acquire_time,
        renew_time: Some(wall_now),
        transitions: observed.transitions,
        value: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Duration = Duration::from_secs(15);

    fn obs(
        holder: Option<&str>,
        transitions: u64,
        since: Instant,
        lease: Duration,
        wall: SystemTime,
    ) -> Observed {
        Observed {
            record: LeaseRecord {
                holder: holder.map(str::to_owned),
                lease_duration: lease,
                acquire_time: Some(wall),
                renew_time: Some(wall),
                transitions,
                value: None,
            },
            version: Version::from(transitions),
            since,
        }
    }

    #[test]
    fn nothing_stored_creates_or_loses() {
        let now = Instant::now();
        assert_eq!(decide(None, now, "me", None), Decision::Create);
        assert_eq!(
            decide(None, now, "me", Some(3)),
            Decision::Lost { holder: None }
        );
    }

    #[test]
    fn vacant_is_taken_at_once() {
        let t0 = Instant::now();
        let o = obs(None, 4, t0, L, SystemTime::now());
        assert_eq!(decide(Some(&o), t0, "me", None), Decision::Acquire);
    }

    #[test]
    fn expiry_counts_from_observation_not_from_wall_clock() {
        let t0 = Instant::now();
        let year = Duration::from_secs(365 * 24 * 3600);
        for wall in [
            SystemTime::UNIX_EPOCH,
            SystemTime::now() - year * 10,
            SystemTime::now() + year * 10,
        ] {
            let o = obs(Some("other"), 1, t0, L, wall);
            for dt in [
                Duration::ZERO,
                Duration::from_secs(1),
                L - Duration::from_nanos(1),
            ] {
                assert_eq!(
                    decide(Some(&o), t0 + dt, "me", None),
                    Decision::Follow {
                        holder: "other".into(),
                        expires_at: t0 + L
                    }
                );
            }
            assert_eq!(decide(Some(&o), t0 + L, "me", None), Decision::Acquire);
        }
    }

    #[test]
    fn holder_recorded_lease_duration_rules() {
        let t0 = Instant::now();
        let long = Duration::from_secs(60);
        let o = obs(Some("other"), 1, t0, long, SystemTime::now());
        assert!(matches!(
            decide(Some(&o), t0 + L * 2, "me", None),
            Decision::Follow { .. }
        ));
        assert_eq!(decide(Some(&o), t0 + long, "me", None), Decision::Acquire);
    }

    #[test]
    fn observation_clock_restarts_only_on_a_new_version() {
        let t0 = Instant::now();
        let o = obs(Some("other"), 1, t0, L, SystemTime::now());
        let same = Observed::refresh(
            Some(o.clone()),
            Some(Stored::new(o.record.clone(), o.version.clone())),
            t0 + L / 2,
        )
        .unwrap();
        assert_eq!(same.since, t0);
        let newer = Observed::refresh(
            Some(o.clone()),
            Some(Stored::new(o.record.clone(), Version::from(99))),
            t0 + L / 2,
        )
        .unwrap();
        assert_eq!(newer.since, t0 + L / 2);
        assert!(Observed::refresh(Some(o), None, t0).is_none());
    }

    #[test]
    fn an_age_measured_by_the_store_counts_before_the_first_sight() {
        let t0 = Instant::now() + L * 4;
        let o = obs(Some("other"), 1, t0, L, SystemTime::now());
        let aged = |age| Some(Stored::new(o.record.clone(), o.version.clone()).with_age(age));
        // A fresh observer: the lease started `age` before now.
        let fresh = Observed::refresh(None, aged(L / 3), t0).unwrap();
        assert_eq!(fresh.since, t0 - L / 3);
        assert_eq!(fresh.expires_at(), t0 + L - L / 3);
        // A long-dead holder is expired at the first read.
        let dead = Observed::refresh(None, aged(L * 2), t0).unwrap();
        assert_eq!(decide(Some(&dead), t0, "me", None), Decision::Acquire);
        // An age never moves an earlier first sight later.
        let seen = Observed::refresh(Some(o.clone()), aged(Duration::ZERO), t0 + L / 2).unwrap();
        assert_eq!(seen.since, t0);
    }

    #[test]
    fn tokens_continue_above_everything_seen_and_never_wrap() {
        let t0 = Instant::now();
        let o = obs(None, 5, t0, L, SystemTime::now());
        assert_eq!(next_token(Some(&o), 0), Some(6));
        assert_eq!(next_token(Some(&o), 41), Some(42));
        assert_eq!(next_token(None, 41), Some(42));
        assert_eq!(next_token(None, 0), Some(1));
        let max = obs(None, u64::MAX, t0, L, SystemTime::now());
        assert_eq!(next_token(Some(&max), 0), None);
        assert_eq!(next_token(None, u64::MAX), None);
    }

    #[test]
    fn leader_renews_only_its_own_term() {
        let t0 = Instant::now();
        let mine = obs(Some("me"), 5, t0, L, SystemTime::now());
        assert_eq!(decide(Some(&mine), t0, "me", Some(5)), Decision::Renew);
        assert_eq!(
            decide(Some(&mine), t0, "me", Some(4)),
            Decision::Lost {
                holder: Some("me".into())
            }
        );
        let other = obs(Some("x"), 6, t0, L, SystemTime::now());
        assert_eq!(
            decide(Some(&other), t0, "me", Some(5)),
            Decision::Lost {
                holder: Some("x".into())
            }
        );
        let vacant = obs(None, 5, t0, L, SystemTime::now());
        assert_eq!(
            decide(Some(&vacant), t0, "me", Some(5)),
            Decision::Lost { holder: None }
        );
    }

    #[test]
    fn our_own_stale_record_starts_a_new_term() {
        let t0 = Instant::now();
        let o = obs(Some("me"), 5, t0, L, SystemTime::now());
        assert_eq!(decide(Some(&o), t0, "me", None), Decision::Acquire);
        let token = next_token(Some(&o), 0).unwrap();
        let r = next_record(
            &Decision::Acquire,
            Some(&o),
            token,
            "me",
            L,
            None,
            SystemTime::now(),
        );
        assert_eq!(r.transitions, 6);
    }

    #[test]
    fn records_to_write() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let created = next_record(&Decision::Create, None, 1, "me", L, Some("addr"), wall);
        assert_eq!(
            (
                created.transitions,
                created.holder.as_deref(),
                created.value.as_deref()
            ),
            (1, Some("me"), Some("addr"))
        );
        let o = Observed {
            record: created.clone(),
            version: Version::from(1),
            since: t0,
        };
        let later = wall + Duration::from_secs(2);
        let renewed = next_record(&Decision::Renew, Some(&o), 9, "me", L, Some("addr"), later);
        assert_eq!(renewed.transitions, 1);
        assert_eq!(renewed.acquire_time, Some(wall));
        assert_eq!(renewed.renew_time, Some(later));
        let v = vacated(&renewed, later);
        assert!(v.is_vacant());
        assert_eq!(v.transitions, 1);
        let o = Observed {
            record: v,
            version: Version::from(2),
            since: t0,
        };
        assert_eq!(
            next_record(&Decision::Acquire, Some(&o), 2, "b", L, None, later).transitions,
            2
        );
    }

    #[test]
    fn absurd_lease_durations_do_not_overflow() {
        let t0 = Instant::now();
        let o = obs(Some("other"), 1, t0, Duration::MAX, SystemTime::now());
        assert!(matches!(
            decide(Some(&o), t0 + Duration::from_secs(3600), "me", None),
            Decision::Follow { .. }
        ));
    }
}
