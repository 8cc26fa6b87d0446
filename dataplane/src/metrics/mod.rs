//! Prometheus metrics of every role (DESIGN.md §8).
//!
//! - [`spec`]: the table of every metric (name, type, unit, help, labels, roles) — the spec
//!   that names, dashboards and alert rules are checked against.
//! - [`events`]: one function per event, the only code that touches the `metrics` macros.
//! - this module: the recorder (`metrics-exporter-prometheus` renders the text format) and
//!   the `GET /metrics` endpoint each role serves on its `--metrics ADDR`.
//!
//! vdrep binds the listener itself rather than using the exporter's HTTP listener, so a role
//! started with port 0 can print the address it bound (`metrics on ADDR`), like `receive`
//! prints `listening on ADDR`.

pub mod certs;
pub mod events;
pub mod spec;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub use spec::{lookup, specs, Kind, Role, Spec};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Why metrics could not be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// The recorder could not be installed.
    #[error("cannot install the metrics recorder: {0}")]
    Install(String),
    /// The address could not be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn unit_of(s: &Spec) -> Option<Unit> {
    match s.unit {
        "bytes" => Some(Unit::Bytes),
        "seconds" => Some(Unit::Seconds),
        "count" => Some(Unit::Count),
        // The facade has no bytes-per-second unit; the name carries it.
        "bytes_per_second" => None,
        _ => None,
    }
}

/// Installs the process-wide recorder (once) and describes `role`'s metrics, so each has its
/// HELP line. Later calls return the same handle.
pub fn install(role: Role) -> Result<PrometheusHandle, MetricsError> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(spec::CYCLE_DURATION.into()),
            spec::CYCLE_BUCKETS,
        )
        .map_err(|e| MetricsError::Install(e.to_string()))?
        .install_recorder()
        .map_err(|e| MetricsError::Install(e.to_string()))?;
    for s in specs().iter().filter(|s| s.roles.contains(&role)) {
        match (s.kind, unit_of(s)) {
            (Kind::Counter, Some(u)) => metrics::describe_counter!(s.name, u, s.help),
            (Kind::Counter, None) => metrics::describe_counter!(s.name, s.help),
            (Kind::Gauge, Some(u)) => metrics::describe_gauge!(s.name, u, s.help),
            (Kind::Gauge, None) => metrics::describe_gauge!(s.name, s.help),
            (Kind::Histogram, Some(u)) => metrics::describe_histogram!(s.name, u, s.help),
            (Kind::Histogram, None) => metrics::describe_histogram!(s.name, s.help),
        }
    }
    events::build_info();
    let _ = HANDLE.set(handle.clone());
    Ok(HANDLE.get().cloned().unwrap_or(handle))
}

/// The `GET /metrics` route, to serve alone or merge into another router.
pub fn router(handle: PrometheusHandle) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let h = handle.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    h.render(),
                )
            }
        }),
    )
}

/// Installs the recorder for `role`, binds `addr` and serves `/metrics` on the current tokio
/// runtime; prints `metrics on ADDR` on stdout once bound (scripts and tests read it).
/// Returns the bound address.
pub async fn serve(addr: SocketAddr, role: Role) -> Result<SocketAddr, MetricsError> {
    let handle = install(role)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let app = router(handle);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    });
    tracing::info!(listen = %local, "metrics endpoint ready");
    println!("metrics on {local}");
    Ok(local)
}
