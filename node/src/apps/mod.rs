//! Applications served under `/app`: the native (Rust) logging and KV apps, JavaScript bundles deployed by
//! governance, and the `/app/api` document. They sit above the HTTPS layer (`crate::rpc`), which the node's
//! [`routes`] are merged into.

pub mod history;
pub mod js;
pub mod kv;
pub mod logging;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::rpc::openapi::document;
use crate::rpc::{ApiError, AppState};

/// Every application route; paths no route took go to the JavaScript endpoints under `/app`, 404 elsewhere.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/app/api", get(app_api))
        .merge(logging::routes())
        .merge(kv::routes())
        .fallback(fallback)
}

async fn app_api(State(app): State<AppState>) -> Response {
    let js = js::openapi_paths(&app.node.view().state);
    Json(document("Synod application API", "/app/", js)).into_response()
}

/// Paths no route took: JavaScript app endpoints under `/app`, 404 otherwise.
async fn fallback(state: axum::extract::State<AppState>, request: axum::extract::Request) -> Response {
    if !request.uri().path().starts_with("/app/") {
        return ApiError::not_found("no such endpoint").into_response();
    }
    match js::dispatch(state, request).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}
