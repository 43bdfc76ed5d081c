//! [`Config`]: the elector's settings, their defaults and the rules they must obey.

use std::time::Duration;

use crate::error::{Error, Result};

pub use crate::identity::default_identity;
pub use crate::record::MAX_DURATION;

/// Settings of a [`LeaderElector`](crate::LeaderElector).
///
/// Build it through [`LeaderElector::builder`](crate::LeaderElector::builder) or start from
/// [`Config::default`] and the `#[must_use]` setters; [`Config::validate`] checks the rules.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// This candidate's identity, unique among candidates. Default: hostname, pid and a random
    /// suffix ([`default_identity`]).
    pub identity: String,
    /// `L`: how long followers wait, after last seeing the record change, before taking over.
    /// Default 15 s (Kubernetes components' `--leader-elect-lease-duration`).
    pub lease_duration: Duration,
    /// `D`: the leader steps down when no renewal has succeeded for this long, counted from the
    /// send time of the last successful one. Default 10 s (`--leader-elect-renew-deadline`).
    pub renew_deadline: Duration,
    /// `R`: how often the leader renews and followers retry. Default 2 s
    /// (`--leader-elect-retry-period`).
    pub retry_period: Duration,
    /// Followers wait `R × (1 + jitter × rand[0,1))` between retries. Default 1.2 (client-go's
    /// `JitterFactor`).
    pub jitter: f64,
    /// Deadline of each store call. Default `min(R, L − D)`; may not exceed it.
    pub call_timeout: Option<Duration>,
    /// On shutdown, how long the work may take to finish after its token is cancelled, while
    /// the elector keeps renewing, before it is aborted and the lease released. Default 10 s.
    pub drain_timeout: Duration,
    /// Release the lease (holder = vacant) on shutdown so a follower takes over at once.
    /// Default on (client-go's `ReleaseOnCancel`, there off by default).
    pub release_on_shutdown: bool,
    /// Campaign again after a term ends. Default on; off gives client-go's one-shot `Run`.
    pub recampaign: bool,
    /// A value published with the lease while leading, for example this replica's address.
    pub value: Option<String>,
    /// How waiting candidates space their attempts. `None` (the default): a jittered retry
    /// period, woken by the store's watch and the observed expiry (client-go). `Some`: an
    /// exponential [`Backoff`] (seed 001's lock), still woken early by the watch.
    pub backoff: Option<Backoff>,
    /// Give up (return without leading) at the first sign that somebody else holds the lease,
    /// instead of waiting: `Mutex::try_lock`.
    pub(crate) single_attempt: bool,
}

/// Exponential backoff between attempts while waiting: `min × multiplier^n`, capped at `max`,
/// each delay jittered to `[d/2, d]`. Seed 001's `backoff_min` / `backoff_max` /
/// `backoff_multiplier`, with its validation rules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first delay (positive). Default 100 ms: the store's watch and the observed
    /// expiry do most of the waking, the backoff only bounds how often a waiter re-reads.
    pub min: Duration,
    /// The largest delay (at least `min`). Default 5 s.
    pub max: Duration,
    /// Growth factor per attempt (at least 0). Default 1.5.
    pub multiplier: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(5),
            multiplier: 1.5,
        }
    }
}

impl Backoff {
    /// Checks seed 001's rules — `max ≥ min`, `multiplier ≥ 0` and finite — and one more:
    /// `min > 0` (seed 001 allows 0, which makes waiters re-read back to back).
    pub fn validate(&self) -> Result<()> {
        if self.min.is_zero() {
            return Err(Error::config(
                "backoff_min must be positive: a zero backoff makes waiters read the store back to back",
            ));
        }
        if self.max < self.min {
            return Err(Error::config(format!(
                "backoff_max ({:?}) must be at least backoff_min ({:?})",
                self.max, self.min
            )));
        }
        if self.max > MAX_DURATION {
            return Err(Error::config(format!(
                "backoff_max ({:?}) must be at most {MAX_DURATION:?}",
                self.max
            )));
        }
        if !self.multiplier.is_finite() || self.multiplier < 0.0 {
            return Err(Error::config(format!(
                "backoff_multiplier ({}) must be a finite number of at least 0",
                self.multiplier
            )));
        }
        Ok(())
    }

    /// The un-jittered delay before attempt `n` (0-based): `min × multiplier^n`, capped at
    /// `max`.
    pub fn delay(&self, n: u32) -> Duration {
        let f = self.multiplier.powi(n.min(1000) as i32);
        let secs = (self.min.as_secs_f64() * f).min(self.max.as_secs_f64());
        if secs.is_finite() && secs >= 0.0 {
            Duration::from_secs_f64(secs).max(self.min.min(self.max))
        } else {
            self.max
        }
    }

    /// [`delay`](Self::delay) jittered to `[d/2, d]`.
    pub fn jittered(&self, n: u32) -> Duration {
        use rand::Rng;
        let d = self.delay(n);
        d / 2 + d.mul_f64(0.5 * rand::thread_rng().gen_range(0.0..=1.0))
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            identity: default_identity(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            jitter: 1.2,
            call_timeout: None,
            drain_timeout: Duration::from_secs(10),
            release_on_shutdown: true,
            recampaign: true,
            value: None,
            backoff: None,
            single_attempt: false,
        }
    }
}

/// The setters of the settings an elector and a lock share, generated once for [`Config`],
/// the elector's [`Builder`](crate::Builder) and the lock's `MutexBuilder`: optional
/// attributes for every setter (`#[must_use]` where the type is not `#[must_use]` itself),
/// then the path from `self` to the [`Config`].
macro_rules! timing_setters {
    ($(#[$attr:meta])* $($field:ident).*) => {
        /// This candidate's identity, unique among candidates (default:
        /// [`default_identity`](crate::elector::default_identity)).
        $(#[$attr])*
        pub fn identity(mut self, identity: impl Into<String>) -> Self {
            self$(.$field)*.identity = identity.into();
            self
        }
        /// `L`, the lease duration: see [`Config::lease_duration`](crate::Config::lease_duration).
        $(#[$attr])*
        pub fn lease_duration(mut self, d: std::time::Duration) -> Self {
            self$(.$field)*.lease_duration = d;
            self
        }
        /// `D`, the renew deadline: see [`Config::renew_deadline`](crate::Config::renew_deadline).
        $(#[$attr])*
        pub fn renew_deadline(mut self, d: std::time::Duration) -> Self {
            self$(.$field)*.renew_deadline = d;
            self
        }
        /// `R`, the retry period: see [`Config::retry_period`](crate::Config::retry_period).
        $(#[$attr])*
        pub fn retry_period(mut self, d: std::time::Duration) -> Self {
            self$(.$field)*.retry_period = d;
            self
        }
        /// The deadline of each store call: see [`Config::call_timeout`](crate::Config::call_timeout).
        $(#[$attr])*
        pub fn call_timeout(mut self, d: std::time::Duration) -> Self {
            self$(.$field)*.call_timeout = Some(d);
            self
        }
        /// A value published with the lease while holding it: see
        /// [`Config::value`](crate::Config::value).
        $(#[$attr])*
        pub fn value(mut self, value: impl Into<String>) -> Self {
            self$(.$field)*.value = Some(value.into());
            self
        }
    };
}

/// The setters only an elector has (a lock fixes them), for [`Config`] and the elector's
/// [`Builder`](crate::Builder).
macro_rules! elector_setters {
    ($(#[$attr:meta])* $($field:ident).*) => {
        /// See [`Config::jitter`](crate::Config::jitter).
        $(#[$attr])*
        pub fn jitter(mut self, factor: f64) -> Self {
            self$(.$field)*.jitter = factor;
            self
        }
        /// See [`Config::drain_timeout`](crate::Config::drain_timeout).
        $(#[$attr])*
        pub fn drain_timeout(mut self, d: std::time::Duration) -> Self {
            self$(.$field)*.drain_timeout = d;
            self
        }
        /// See [`Config::release_on_shutdown`](crate::Config::release_on_shutdown).
        $(#[$attr])*
        pub fn release_on_shutdown(mut self, on: bool) -> Self {
            self$(.$field)*.release_on_shutdown = on;
            self
        }
        /// See [`Config::recampaign`](crate::Config::recampaign); `false` gives client-go's
        /// one-shot behaviour.
        $(#[$attr])*
        pub fn recampaign(mut self, on: bool) -> Self {
            self$(.$field)*.recampaign = on;
            self
        }
    };
}

impl Config {
    timing_setters!(#[must_use]);
    elector_setters!(#[must_use]);

    /// Sets [`backoff`](Self::backoff).
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }

    /// The effective per-call deadline: [`call_timeout`](Self::call_timeout) or `min(R, L − D)`.
    pub fn effective_call_timeout(&self) -> Duration {
        self.call_timeout.unwrap_or_else(|| {
            self.retry_period
                .min(self.lease_duration.saturating_sub(self.renew_deadline))
        })
    }

    /// Checks the rules, naming the first one broken:
    ///
    /// - every duration is positive and at most [`MAX_DURATION`];
    /// - `jitter` is finite and not negative;
    /// - `R < D` and `R × jitter < D` (client-go's rule: a renewal retried after a jittered
    ///   retry period still fits in the deadline);
    /// - `D < L` (the leader steps down before any follower may take over);
    /// - `0 < call_timeout ≤ min(R, L − D)` (a hung call cannot eat the safety margin);
    /// - the identity is not empty.
    pub fn validate(&self) -> Result<()> {
        let named = [
            ("lease_duration", self.lease_duration),
            ("renew_deadline", self.renew_deadline),
            ("retry_period", self.retry_period),
            ("drain_timeout", self.drain_timeout),
        ];
        for (name, d) in named {
            if d.is_zero() && name != "drain_timeout" {
                return Err(Error::config(format!("{name} must be positive")));
            }
            if d > MAX_DURATION {
                return Err(Error::config(format!(
                    "{name} ({d:?}) must be at most {MAX_DURATION:?}"
                )));
            }
        }
        if !self.jitter.is_finite() || self.jitter < 0.0 {
            return Err(Error::config(format!(
                "jitter ({}) must be a finite, non-negative factor",
                self.jitter
            )));
        }
        let (l, d, r) = (self.lease_duration, self.renew_deadline, self.retry_period);
        if r >= d {
            return Err(Error::config(format!(
                "retry_period ({r:?}) must be shorter than renew_deadline ({d:?})"
            )));
        }
        // In floating point: `Duration::mul_f64` panics on overflow, and an absurd jitter
        // must be a configuration error, not a panic.
        if r.as_secs_f64() * self.jitter >= d.as_secs_f64() {
            return Err(Error::config(format!(
                "renew_deadline ({d:?}) must be longer than retry_period × jitter ({r:?} × {})",
                self.jitter
            )));
        }
        if d >= l {
            return Err(Error::config(format!(
                "renew_deadline ({d:?}) must be shorter than lease_duration ({l:?})"
            )));
        }
        if let Some(t) = self.call_timeout {
            let max = r.min(l - d);
            if t.is_zero() {
                return Err(Error::config("call_timeout must be positive"));
            }
            if t > max {
                return Err(Error::config(format!(
                    "call_timeout ({t:?}) must be at most min(retry_period, lease_duration − renew_deadline) ({max:?})"
                )));
            }
        }
        if let Some(b) = &self.backoff {
            b.validate()?;
        }
        if self.identity.is_empty() {
            return Err(Error::config("identity must not be empty"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn defaults_are_valid_and_kubernetes_like() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.lease_duration, ms(15_000));
        assert_eq!(c.renew_deadline, ms(10_000));
        assert_eq!(c.retry_period, ms(2_000));
        assert_eq!(c.effective_call_timeout(), ms(2_000));
    }

    #[test]
    fn identities_are_unique() {
        assert_ne!(default_identity(), default_identity());
        assert!(default_identity().contains(&std::process::id().to_string()));
    }

    #[test]
    fn validation_table() {
        let base = Config::default();
        let cases: Vec<(Config, &str)> = vec![
            (base.clone().lease_duration(ms(0)), "lease_duration must be positive"),
            (base.clone().renew_deadline(ms(0)), "renew_deadline must be positive"),
            (base.clone().retry_period(ms(0)), "retry_period must be positive"),
            (
                base.clone().lease_duration(Duration::from_secs(8 * 24 * 3600)),
                "lease_duration (691200s) must be at most",
            ),
            (base.clone().jitter(f64::NAN), "jitter (NaN) must be a finite"),
            (base.clone().jitter(-1.0), "jitter (-1) must be a finite"),
            (
                base.clone().jitter(1e19),
                "renew_deadline (10s) must be longer than retry_period × jitter (2s × 10000000000000000000)",
            ),
            (
                base.clone().lease_duration(ms(5_000)),
                "renew_deadline (10s) must be shorter than lease_duration (5s)",
            ),
            (
                base.clone().retry_period(ms(10_000)),
                "retry_period (10s) must be shorter than renew_deadline (10s)",
            ),
            (
                base.clone().retry_period(ms(9_000)),
                "renew_deadline (10s) must be longer than retry_period × jitter (9s × 1.2)",
            ),
            (base.clone().call_timeout(ms(0)), "call_timeout must be positive"),
            (
                base.clone().call_timeout(ms(2_001)),
                "call_timeout (2.001s) must be at most min(retry_period, lease_duration − renew_deadline) (2s)",
            ),
            (base.clone().identity(""), "identity must not be empty"),
        ];
        for (cfg, want) in cases {
            match cfg.validate() {
                Err(Error::Config { rule }) => {
                    assert!(rule.starts_with(want), "got {rule:?}, want {want:?}")
                }
                other => panic!("{cfg:?}: expected a config error {want:?}, got {other:?}"),
            }
        }
        // Edges that are fine.
        base.clone().jitter(0.0).validate().unwrap();
        base.clone().call_timeout(ms(2_000)).validate().unwrap();
        base.clone().drain_timeout(ms(0)).validate().unwrap();
        let b = |min, max, m| {
            base.clone()
                .backoff(Backoff {
                    min: ms(min),
                    max: ms(max),
                    multiplier: m,
                })
                .validate()
        };
        assert!(
            matches!(b(10, 5, 1.5), Err(Error::Config { rule }) if rule == "backoff_max (5ms) must be at least backoff_min (10ms)")
        );
        assert!(
            matches!(b(1, 5, -0.1), Err(Error::Config { rule }) if rule.starts_with("backoff_multiplier (-0.1)"))
        );
        assert!(matches!(b(1, 5, f64::INFINITY), Err(Error::Config { .. })));
        assert!(
            matches!(b(0, 5, 1.5), Err(Error::Config { rule }) if rule.starts_with("backoff_min must be positive"))
        );
        b(1, 1, 0.0).unwrap();
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Backoff {
            min: ms(100),
            max: ms(1000),
            multiplier: 2.0,
        };
        let d: Vec<_> = (0..6).map(|n| b.delay(n)).collect();
        assert_eq!(
            d,
            vec![ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        assert_eq!(b.delay(u32::MAX), ms(1000));
        for n in 0..6 {
            let j = b.jittered(n);
            assert!(j >= b.delay(n) / 2 && j <= b.delay(n), "{j:?}");
        }
        // A multiplier below 1 never goes under min.
        let shrink = Backoff {
            min: ms(100),
            max: ms(1000),
            multiplier: 0.5,
        };
        assert_eq!(shrink.delay(3), ms(100));
    }
}
