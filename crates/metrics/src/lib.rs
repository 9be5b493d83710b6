//! The `/metrics` endpoint of podtap's processes. Each process renders its own counters (a
//! `prometheus_client` collector over a snapshot); this serves the text on its own thread, so
//! the packet path never waits for a scrape.

use std::net::TcpListener;
use std::sync::Arc;

pub use prometheus_client;
use prometheus_client::collector::Collector;
use prometheus_client::registry::Registry;

/// Renders one collector in the Prometheus text format.
pub fn render(collector: impl Collector) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out.clear();
    }
    out
}

/// Serves `GET /metrics` with whatever `render` returns, from a background thread, until the
/// process ends. Bind the listener before loading anything, so a busy port fails early.
pub fn serve(
    listener: TcpListener,
    render: impl Fn() -> String + Send + Sync + 'static,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let render = Arc::new(render);
    std::thread::Builder::new()
        .name("podtap-metrics".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("metrics endpoint: {e}");
                    return;
                }
            };
            runtime.block_on(async move {
                let app = axum::Router::new().route(
                    "/metrics",
                    axum::routing::get(move || {
                        let render = render.clone();
                        async move {
                            (
                                [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                                render(),
                            )
                        }
                    }),
                );
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => {
                        if let Err(e) = axum::serve(l, app).await {
                            tracing::error!("metrics endpoint: {e}");
                        }
                    }
                    Err(e) => tracing::error!("metrics endpoint: {e}"),
                }
            });
        })?;
    Ok(())
}
