//! An HTTP adaptor for an elector (feature `http`): an axum [`Router`] serving `/healthz`,
//! `/readyz`, `/leader` and `/metrics`, to serve alone or to merge into a service's own router.
//! The `tenure run --http ADDR` command serves exactly this.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use prometheus_client::registry::Registry;
//! use tenure::{http::Endpoints, metrics::Metrics, LeaderElector, MemoryStore};
//!
//! let mut registry = Registry::default();
//! let metrics = Metrics::new(&mut registry);
//! let elector = LeaderElector::builder(MemoryStore::new(), "billing-scheduler")
//!     .observer(Arc::new(metrics))
//!     .build()?;
//! let app = axum::Router::new() // your own routes here
//!     .merge(Endpoints::new(&elector).metrics(Arc::new(registry)).router());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! tokio::spawn(async move { axum::serve(listener, app).await });
//! # Ok(()) }
//! ```
//!
//! | path | answer |
//! | --- | --- |
//! | `/healthz` | `200 ok`, or `500` while this elector leads but no renewal has succeeded for longer than the retry period plus the tolerance (client-go's `HealthzAdaptor` rule: a leader whose renewals stall is unhealthy; a follower is always healthy) |
//! | `/readyz` | `200` while this elector leads, else `503`: put only the leader behind a Service (active/passive) |
//! | `/leader` | JSON: `{"election", "identity", "state": "leading"\|"following"\|"vacant"\|"unknown", "leading", "leader": {"identity", "value", "fencing_token"} \| null}` |
//! | `/metrics` | the registry given to [`Endpoints::metrics`] (404 without one), in OpenMetrics when the scraper asks for it, else Prometheus' text format 0.0.4 |
//!
//! The tolerance defaults to half of `D − R` (see [`Endpoints::tolerance`]): with the default
//! timing (L 15 s, D 10 s, R 2 s) a leader turns unhealthy after 6 s without a successful
//! renewal, before it steps down at 10 s. client-go counts from the lease duration instead,
//! which tenure's leader never reaches (it steps down at `D`), so such a rule would only ever
//! catch an elector that is stuck.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::time::Instant;

use crate::elector::{LeaderElector, LeaderHandle, LeaderState};
use crate::metrics::{
    encode_openmetrics, encode_text, OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE,
};
use crate::store::LeaseStore;

/// The endpoints of one elector; [`router`](Self::router) serves them.
#[derive(Clone)]
#[must_use]
pub struct Endpoints {
    election: String,
    handle: LeaderHandle,
    renew_deadline: Duration,
    retry_period: Duration,
    tolerance: Duration,
    value: Option<String>,
    registry: Option<Arc<Registry>>,
}

/// What `/healthz` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Following, or leading with renewals on time.
    Healthy,
    /// Leading, but no renewal has succeeded for `since_renewal`, longer than the retry
    /// period plus the tolerance.
    RenewalOverdue {
        /// Time since the last successful renewal (or the winning write) was sent.
        since_renewal: Duration,
    },
}

impl Endpoints {
    /// The endpoints of `elector` (take them before `run` consumes it).
    pub fn new<S: LeaseStore>(elector: &LeaderElector<S>) -> Self {
        let c = elector.config();
        Endpoints {
            election: elector.name().to_owned(),
            handle: elector.handle(),
            renew_deadline: c.renew_deadline,
            retry_period: c.retry_period,
            tolerance: c.renew_deadline.saturating_sub(c.retry_period) / 2,
            value: c.value.clone(),
            registry: None,
        }
    }

    /// Serves `registry` on `/metrics`.
    pub fn metrics(mut self, registry: Arc<Registry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// How long past a due renewal (the last successful one plus `R`) a leader stays healthy.
    /// Default `(D − R) / 2`. client-go's `NewLeaderHealthzAdaptor(timeout)` takes the same
    /// kind of tolerance.
    pub fn tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// The health now, by the rule `/healthz` applies.
    pub fn health(&self) -> Health {
        match &*self.handle.state().borrow() {
            LeaderState::Leading(t) if !t.is_cancelled() => {
                // `valid_until` is the last successful renewal's send time plus D.
                let last_ok = t
                    .valid_until()
                    .checked_sub(self.renew_deadline)
                    .unwrap_or_else(|| t.started_at());
                let since_renewal = Instant::now().saturating_duration_since(last_ok);
                if since_renewal > self.retry_period + self.tolerance {
                    Health::RenewalOverdue { since_renewal }
                } else {
                    Health::Healthy
                }
            }
            _ => Health::Healthy,
        }
    }

    /// The router: `/healthz`, `/readyz`, `/leader`, `/metrics`. Generic in the state type so
    /// that it merges into any router.
    pub fn router<T: Clone + Send + Sync + 'static>(self) -> Router<T> {
        Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/leader", get(leader))
            .route("/metrics", get(metrics))
            .with_state(Arc::new(self))
    }
}

type Shared = State<Arc<Endpoints>>;

async fn healthz(State(e): Shared) -> Response {
    match e.health() {
        Health::Healthy => (StatusCode::OK, "ok\n").into_response(),
        Health::RenewalOverdue { since_renewal } => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "unhealthy: leading {:?}, but no renewal has succeeded for {:.1}s (renewals are due every {:?}, tolerance {:?})\n",
                e.election,
                since_renewal.as_secs_f64(),
                e.retry_period,
                e.tolerance
            ),
        )
            .into_response(),
    }
}

async fn readyz(State(e): Shared) -> Response {
    if e.handle.is_leader() {
        (StatusCode::OK, "leading\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not leading\n").into_response()
    }
}

/// `/leader`'s answer.
#[derive(Serialize)]
struct LeaderJson {
    election: String,
    identity: String,
    state: &'static str,
    leading: bool,
    leader: Option<LeaderInfo>,
}

#[derive(Serialize)]
struct LeaderInfo {
    identity: String,
    value: Option<String>,
    fencing_token: u64,
}

async fn leader(State(e): Shared) -> Json<LeaderJson> {
    let state = e.handle.current();
    let (name, leader) = match &state {
        LeaderState::Unknown => ("unknown", None),
        LeaderState::Vacant => ("vacant", None),
        LeaderState::Following(l) => (
            "following",
            Some(LeaderInfo {
                identity: l.identity.clone(),
                value: l.value.clone(),
                fencing_token: l.fencing_token,
            }),
        ),
        LeaderState::Leading(t) => (
            "leading",
            Some(LeaderInfo {
                identity: t.identity().to_owned(),
                value: e.value.clone(),
                fencing_token: t.fencing_token(),
            }),
        ),
    };
    Json(LeaderJson {
        election: e.election.clone(),
        identity: e.handle.identity().to_owned(),
        state: name,
        leading: state.is_leading(),
        leader,
    })
}

async fn metrics(State(e): Shared, headers: HeaderMap) -> Response {
    let Some(registry) = &e.registry else {
        return (StatusCode::NOT_FOUND, "no metrics registry\n").into_response();
    };
    let open = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let (body, kind) = if open {
        (encode_openmetrics(registry), OPENMETRICS_CONTENT_TYPE)
    } else {
        (encode_text(registry), TEXT_CONTENT_TYPE)
    };
    match body {
        Ok(body) => ([(header::CONTENT_TYPE, kind)], body).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics\n",
        )
            .into_response(),
    }
}
