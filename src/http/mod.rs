//! The monitoring endpoint (`[http] listen`, off unless set): Prometheus
//! metrics, health and Patroni-style role checks for load balancers and
//! Kubernetes, and a live status page. It runs on the proxy's runtime as one
//! named task, reads only what the data plane publishes anyway (the
//! topology snapshot and relaxed counters), and stops on shutdown.
//!
//! | path | answers |
//! |---|---|
//! | `/health` | 200 while the process is up |
//! | `/ready` | 200 while accepting with a writable primary, else 503 |
//! | `/primary` | 200 while the cluster has a writable primary, else 503 |
//! | `/replica?lag=1MB` | 200 while a healthy streaming replica (within the lag) serves reads, else 503 |
//! | `/metrics` | OpenMetrics text |
//! | `/api/status` | JSON for the status page |
//! | `/` | the status page |

mod checks;
mod metrics;
mod status;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::warn;

use crate::frontend::Shared;

use checks::parse_lag;

/// The status page: one file, no build step, no external resources.
const STATUS_PAGE: &str = include_str!("status.html");

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

struct App {
    shared: Arc<Shared>,
    registry: Registry,
}

impl App {
    /// False from the drain's first moment.
    fn accepting(&self) -> bool {
        !self.shared.draining() && !*self.shared.shutdown.borrow()
    }
}

/// Serves HTTP on `listener` until shutdown.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown: watch::Receiver<bool> = shared.shutdown.clone();
    let app = Arc::new(App {
        registry: metrics::registry(shared.clone()),
        shared,
    });
    let router = Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/primary", get(primary))
        .route("/replica", get(replica))
        .route("/metrics", get(scrape))
        .route("/api/status", get(api_status))
        .with_state(app);
    let stopped = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(stopped)
        .await
    {
        warn!(error = %e, "http endpoint failed");
    }
}

/// 200 with what is fine, 503 with why not.
fn verdict(v: checks::Verdict) -> Response {
    match v {
        Ok(text) => (StatusCode::OK, text + "\n").into_response(),
        Err(text) => (StatusCode::SERVICE_UNAVAILABLE, text + "\n").into_response(),
    }
}

async fn page() -> Html<&'static str> {
    Html(STATUS_PAGE)
}

async fn health() -> &'static str {
    "ok\n"
}

async fn ready(State(app): State<Arc<App>>) -> Response {
    verdict(checks::ready(&app.shared.topology.load(), app.accepting()))
}

async fn primary(State(app): State<Arc<App>>) -> Response {
    verdict(checks::primary(&app.shared.topology.load()))
}

async fn replica(
    State(app): State<Arc<App>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let max_lag = match params.get("lag").map(|l| parse_lag(l)).transpose() {
        Ok(lag) => lag,
        Err(reason) => return (StatusCode::BAD_REQUEST, reason + "\n").into_response(),
    };
    verdict(checks::replica(&app.shared.topology.load(), max_lag))
}

async fn scrape(State(app): State<Arc<App>>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &app.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, OPENMETRICS)], body).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn api_status(State(app): State<Arc<App>>) -> Json<status::Status> {
    let topology = app.shared.topology.load();
    Json(status::status(&app.shared, &topology, app.accepting()))
}
