//! `/healthz` (the process runs) and `/readyz` (this replica leads: only the leader serves the
//! fabric, so only it should get the Service's traffic), and `/members`: every agent and broker
//! the controller knows with its state, as JSON.

use std::time::Instant;

use axum::http::StatusCode;
use axum::routing::get;
use tokio::sync::watch;

use crate::fabric::Fabric;

/// Serves the health endpoints on `listener` until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    leading: watch::Receiver<bool>,
    fabric: Fabric,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let leading = *leading.borrow();
                async move {
                    if leading {
                        (StatusCode::OK, "leading\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not the leader\n")
                    }
                }
            }),
        )
        .route(
            "/members",
            get(move || {
                let members: Vec<serde_json::Value> = fabric
                    .members(Instant::now())
                    .into_iter()
                    .map(|(name, role, state)| {
                        serde_json::json!({"name": name, "role": role, "state": state})
                    })
                    .collect();
                async move { axum::Json(members) }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await?;
    Ok(())
}
