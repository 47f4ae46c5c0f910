//! Request parsing with bounded bodies and JSON errors (axum's own rejections answer in plain text).

use axum::body::Body;
use axum::http::StatusCode;
use bytes::Bytes;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use synod_core::txid::TxId;

use super::error::ApiError;

/// Reads at most `limit` bytes of body: 413 RequestBodyTooLarge beyond that.
pub async fn body_bytes(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestBodyTooLarge",
            format!("request body is larger than {limit} bytes"),
        )),
        Err(e) => Err(ApiError::invalid_input(format!("reading the request body: {e}"))),
    }
}

/// Reads at most `limit` bytes of body and parses it as JSON.
pub async fn json_body<T: DeserializeOwned>(body: Body, limit: usize) -> Result<T, ApiError> {
    let bytes = body_bytes(body, limit).await?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid_input(format!("request body: {e}")))
}

/// Parses the query string into `T`.
pub fn query<T: DeserializeOwned>(raw: Option<String>) -> Result<T, ApiError> {
    serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::invalid_input(format!("query string: {e}")))
}

/// Parses a `view.seqno` transaction id.
pub fn tx_id(raw: &str) -> Result<TxId, ApiError> {
    raw.parse().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "InvalidTransactionId",
            format!("transaction_id {raw:?} is not of the form <view>.<seqno>: {e}"),
        )
    })
}
