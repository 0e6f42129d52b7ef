//! Health checks and `/metrics` (unauthenticated unless `require_auth_for_metrics_endpoint`): liveliness answers while the process runs; readiness
//! reports whether the database answers and how far behind the spend writer is (Purser's
//! `spend_writer` object: queued calls, capacity, backpressure waits, write errors).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;

use super::{Gate, Route};
use crate::app::AppState;

pub fn routes() -> Vec<Route> {
    vec![
        Route::get(
            "/health/liveliness",
            Gate::Public,
            "health",
            "Liveness probe",
            health_liveliness,
        ),
        Route::get(
            "/health/liveness",
            Gate::Public,
            "health",
            "Liveness probe (alias)",
            health_liveliness,
        ),
        Route::get(
            "/metrics",
            Gate::Public,
            "health",
            "Prometheus metrics (the reference's litellm_* names and labels, and purser_*); proxy admins only with require_auth_for_metrics_endpoint",
            metrics,
        ),
        Route::get(
            "/metrics/",
            Gate::Public,
            "health",
            "Prometheus metrics (alias)",
            metrics,
        ),
        Route::get(
            "/health/readiness",
            Gate::Public,
            "health",
            "Readiness probe: reports the database",
            health_readiness,
        ),
    ]
}

/// `/metrics`: the exposition, with the gateway's state read now.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        crate::service::metrics::render(&state),
    )
}

pub async fn health_liveliness() -> Json<&'static str> {
    Json("I'm alive!")
}

pub async fn health_readiness(State(state): State<AppState>) -> impl IntoResponse {
    // Bounded: a database that does not answer is reported within a load balancer's timeout,
    // not after the pool's 10 s acquire timeout.
    let db_ok = matches!(
        tokio::time::timeout(std::time::Duration::from_secs(2), state.db.ping()).await,
        Ok(Ok(_))
    );
    let body = json!({
        "status": if db_ok { "healthy" } else { "unhealthy" },
        "db": if db_ok { "connected" } else { "disconnected" },
        "db_backend": state.db.backend_name(),
        "cache": if state.cluster.redis.as_ref().is_some_and(|r| r.up()) { "redis" } else { "in-memory" },
        "cluster": state.cluster.snapshot(),
        "litellm_version": env!("CARGO_PKG_VERSION"),
        "success_callbacks": [],
        "spend_writer": state.ledger.snapshot(),
        "alerting": state.alerts.snapshot(),
    });
    let status = if db_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}
