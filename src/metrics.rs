//! Prometheus metrics for electors (feature `metrics`), on [`prometheus-client`] with an
//! explicit [`Registry`]: nothing global, any number of electors per registry.
//!
//! [`Metrics`] is an [`Observer`]: register it once, hand a clone to every elector's
//! [`Builder::observer`](crate::Builder::observer). Series are labelled by election, so one
//! `Metrics` serves many electors.
//!
//! ```
//! use std::sync::Arc;
//! use prometheus_client::registry::Registry;
//! use tenure::metrics::Metrics;
//! use tenure::{LeaderElector, MemoryStore};
//!
//! let mut registry = Registry::default();
//! let metrics = Metrics::new(&mut registry);
//! let elector = LeaderElector::builder(MemoryStore::new(), "billing-scheduler")
//!     .observer(Arc::new(metrics.clone()))
//!     .build()?;
//! // Serve `tenure::metrics::encode_text(&registry)` on /metrics, or mount `tenure::http`.
//! # let _ = elector; Ok::<(), tenure::Error>(())
//! ```
//!
//! | metric | type | labels | meaning |
//! | --- | --- | --- | --- |
//! | `leader_election_master_status` | gauge | `name` | 1 while this elector leads, else 0 (client-go's metric, same name and label) |
//! | `tenure_terms_total` | counter | `election` | terms this elector started |
//! | `tenure_fencing_token` | gauge | `election` | the fencing token of the current (or last seen) leader, this one included |
//! | `tenure_term_duration_seconds` | histogram | `election` | length of this elector's ended terms |
//! | `tenure_renew_duration_seconds` | histogram | `election` | latency of renewals, failed ones included |
//! | `tenure_renew_failures_total` | counter | `election` | renewals that failed |
//! | `tenure_store_errors_total` | counter | `election`, `operation`, `kind` | failed store calls: `operation` is `read`, `acquire`, `renew`, `release` or `watch`; `kind` is [`error_kind`]'s |
//! | `tenure_leader_changes_total` | counter | `election` | changes of leader seen (vacancy included) |
//! | `tenure_failover_gap_seconds` | histogram | `election` | how long the election was leaderless, by this elector's clock, before a new leader was seen (from the vacancy, or from the old holder's observed expiry) |
//!
//! [`prometheus-client`]: https://docs.rs/prometheus-client

use std::fmt::Write as _;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::elector::{error_kind, Leader, Observer};
use crate::error::Error;
use crate::term::StopReason;

/// The `Content-Type` of [`encode_text`]'s output: Prometheus' text format 0.0.4.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The `Content-Type` of [`encode_openmetrics`]'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabel {
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ElectionLabel {
    election: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreErrorLabels {
    election: String,
    operation: String,
    kind: String,
}

type HistogramFamily = Family<ElectionLabel, Histogram, fn() -> Histogram>;

fn call_buckets() -> Histogram {
    // 1 ms to about 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

fn span_buckets() -> Histogram {
    // 0.1 s to about 4.5 days: failover gaps and term lengths.
    Histogram::new(exponential_buckets(0.1, 3.0, 15))
}

/// The metrics of every elector it observes; see the [module documentation](self) for the
/// series. Cheap to clone: clones share the series.
#[derive(Clone, Debug)]
pub struct Metrics {
    master_status: Family<NameLabel, Gauge>,
    terms: Family<ElectionLabel, Counter>,
    fencing_token: Family<ElectionLabel, Gauge>,
    term_duration: HistogramFamily,
    renew_duration: HistogramFamily,
    renew_failures: Family<ElectionLabel, Counter>,
    store_errors: Family<StoreErrorLabels, Counter>,
    leader_changes: Family<ElectionLabel, Counter>,
    failover_gap: HistogramFamily,
}

impl Metrics {
    /// Creates the metric families and registers them in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics {
            master_status: Family::default(),
            terms: Family::default(),
            fencing_token: Family::default(),
            term_duration: Family::new_with_constructor(span_buckets),
            renew_duration: Family::new_with_constructor(call_buckets),
            renew_failures: Family::default(),
            store_errors: Family::default(),
            leader_changes: Family::default(),
            failover_gap: Family::new_with_constructor(span_buckets),
        };
        registry.register(
            "leader_election_master_status",
            "Whether this elector leads the election (1) or not (0)",
            m.master_status.clone(),
        );
        registry.register(
            "tenure_terms",
            "Terms of leadership this elector started",
            m.terms.clone(),
        );
        registry.register(
            "tenure_fencing_token",
            "Fencing token of the current or last seen leader",
            m.fencing_token.clone(),
        );
        registry.register_with_unit(
            "tenure_term_duration",
            "Length of this elector's ended terms",
            Unit::Seconds,
            m.term_duration.clone(),
        );
        registry.register_with_unit(
            "tenure_renew_duration",
            "Latency of renewals, failed ones included",
            Unit::Seconds,
            m.renew_duration.clone(),
        );
        registry.register(
            "tenure_renew_failures",
            "Renewals that failed",
            m.renew_failures.clone(),
        );
        registry.register(
            "tenure_store_errors",
            "Failed store calls by operation and error kind",
            m.store_errors.clone(),
        );
        registry.register(
            "tenure_leader_changes",
            "Changes of leader seen by this elector, vacancy included",
            m.leader_changes.clone(),
        );
        registry.register_with_unit(
            "tenure_failover_gap",
            "How long the election was leaderless before a new leader was seen",
            Unit::Seconds,
            m.failover_gap.clone(),
        );
        m
    }

    /// Creates every per-election series of `election` at zero, so that they are exported
    /// before anything happens (dashboards and `rate()` need the zero).
    pub fn touch(&self, election: &str) {
        let l = label(election);
        drop(self.master_status.get_or_create(&NameLabel {
            name: election.to_owned(),
        }));
        drop(self.terms.get_or_create(&l));
        drop(self.renew_failures.get_or_create(&l));
        drop(self.leader_changes.get_or_create(&l));
        drop(self.term_duration.get_or_create(&l));
        drop(self.renew_duration.get_or_create(&l));
        drop(self.failover_gap.get_or_create(&l));
    }

    fn set_master(&self, election: &str, leading: bool) {
        self.master_status
            .get_or_create(&NameLabel {
                name: election.to_owned(),
            })
            .set(i64::from(leading));
    }
}

fn label(election: &str) -> ElectionLabel {
    ElectionLabel {
        election: election.to_owned(),
    }
}

fn token_value(token: u64) -> i64 {
    i64::try_from(token).unwrap_or(i64::MAX)
}

impl Observer for Metrics {
    fn campaign_started(&self, election: &str, _identity: &str) {
        self.touch(election);
    }

    fn term_started(&self, election: &str, _identity: &str, fencing_token: u64) {
        self.set_master(election, true);
        let l = label(election);
        self.terms.get_or_create(&l).inc();
        self.fencing_token
            .get_or_create(&l)
            .set(token_value(fencing_token));
    }

    fn term_ended(&self, election: &str, _reason: &StopReason, duration: Duration) {
        self.set_master(election, false);
        self.term_duration
            .get_or_create(&label(election))
            .observe(duration.as_secs_f64());
    }

    fn renewal(&self, election: &str, latency: Duration, outcome: Result<(), &Error>) {
        let l = label(election);
        self.renew_duration
            .get_or_create(&l)
            .observe(latency.as_secs_f64());
        if outcome.is_err() {
            self.renew_failures.get_or_create(&l).inc();
        }
    }

    fn store_error(&self, election: &str, operation: &'static str, error: &Error) {
        self.store_errors
            .get_or_create(&StoreErrorLabels {
                election: election.to_owned(),
                operation: operation.to_owned(),
                kind: error_kind(error).to_owned(),
            })
            .inc();
    }

    fn leader_changed(&self, election: &str, leader: Option<&Leader>, gap: Option<Duration>) {
        self.touch(election);
        let l = label(election);
        self.leader_changes.get_or_create(&l).inc();
        if let Some(leader) = leader {
            self.fencing_token
                .get_or_create(&l)
                .set(token_value(leader.fencing_token));
        }
        if let Some(gap) = gap {
            self.failover_gap
                .get_or_create(&l)
                .observe(gap.as_secs_f64());
        }
    }
}

/// `registry` in the OpenMetrics text format ([`OPENMETRICS_CONTENT_TYPE`]), as
/// `prometheus-client` writes it.
pub fn encode_openmetrics(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// `registry` in Prometheus' text format 0.0.4 ([`TEXT_CONTENT_TYPE`]): what Prometheus
/// scrapers without OpenMetrics support, `promtool check metrics` and most agents read.
///
/// The OpenMetrics output with its differences removed: a counter's `# HELP` and `# TYPE`
/// name the family with its `_total` suffix (OpenMetrics names it without), `unknown` becomes
/// `untyped`, and the `# UNIT` and `# EOF` lines go.
pub fn encode_text(registry: &Registry) -> Result<String, std::fmt::Error> {
    let open = encode_openmetrics(registry)?;
    // The HELP line of a family comes before its TYPE line: hold it until the TYPE is known.
    let mut out = String::with_capacity(open.len());
    let mut help: Option<(&str, &str)> = None;
    for line in open.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, text)) = help.take() {
                writeln!(out, "# HELP {name} {text}")?;
            }
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" if !name.ends_with("_total") => {
                    (std::borrow::Cow::Owned(format!("{name}_total")), "counter")
                }
                "unknown" => (std::borrow::Cow::Borrowed(name), "untyped"),
                k => (std::borrow::Cow::Borrowed(name), k),
            };
            if let Some((_, text)) = help.take() {
                writeln!(out, "# HELP {name} {text}")?;
            }
            writeln!(out, "# TYPE {name} {kind}")?;
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        writeln!(out, "{line}")?;
    }
    if let Some((name, text)) = help {
        writeln!(out, "# HELP {name} {text}")?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_names_counters_with_total() {
        let mut r = Registry::default();
        let m = Metrics::new(&mut r);
        m.term_started("e", "me", 7);
        let text = encode_text(&r).unwrap();
        assert!(text.contains("# TYPE tenure_terms_total counter"), "{text}");
        assert!(text.contains("# HELP tenure_terms_total "), "{text}");
        assert!(
            text.contains("tenure_terms_total{election=\"e\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("leader_election_master_status{name=\"e\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tenure_fencing_token{election=\"e\"} 7"),
            "{text}"
        );
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        let open = encode_openmetrics(&r).unwrap();
        assert!(open.ends_with("# EOF\n"), "{open}");
    }
}
