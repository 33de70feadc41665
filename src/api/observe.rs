//! HTTP metrics: requests by route template, method and status, and their
//! latency.
//!
//! Each request also runs in a `request` span (route, method, tenant), so
//! its log lines say which request they belong to.
//!
//! Each route is wrapped with its own template (`/v1/chat/{job_id}`), so
//! labels never carry an id and the series count stays bounded; requests
//! that match no route count as `unmatched`.

use crate::metrics::metrics;
use axum::extract::Request;
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::MethodRouter;
use std::time::Instant;
use tracing::Instrument;

/// Route label of requests that matched no route.
pub const UNMATCHED: &str = "unmatched";

/// `router` with its requests recorded under `route`.
pub fn observed<S>(route: &'static str, router: MethodRouter<S>) -> MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    router.layer(middleware::from_fn(move |req: Request, next: Next| {
        record(route, req, next)
    }))
}

async fn record(route: &'static str, req: Request, next: Next) -> Response {
    let method = method_label(req.method());
    let started = Instant::now();
    // Every log line of the request carries its route and, once the key is
    // checked (api::auth), its tenant.
    let span = tracing::info_span!("request", route, method, tenant_id = tracing::field::Empty);
    let response = next.run(req).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::debug!(
            status = response.status().as_u16(),
            latency_ms = started.elapsed().as_secs_f64() * 1e3,
            "request answered"
        )
    });
    let m = metrics();
    m.http_request_seconds
        .with_label_values(&[route, method])
        .observe(started.elapsed().as_secs_f64());
    m.http_requests
        .with_label_values(&[route, method, response.status().as_str()])
        .inc();
    response
}

/// The method as a label: the standard ones by name, anything else as
/// `OTHER`, so a client cannot mint new series.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "OTHER",
    }
}
