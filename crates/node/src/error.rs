//! API errors: an HTTP status and a JSON `{code, message}` body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::borrow::Cow;

#[derive(Clone, Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Usually a constant; a leader's refusal of a forwarded transaction
    /// arrives as text.
    pub code: Cow<'static, str>,
    pub message: String,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
        }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message)
    }
    /// The detail (file paths, store errors) goes to the node's log only,
    /// under an incident id the caller can quote to the operator.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        let incident = hex::encode(&comity_core::crypto::random_nonce()[..6]);
        tracing::error!(error = %e, %incident, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error; the node's log has the details under incident {incident}"),
        )
    }
}

impl From<comity_store::StoreError> for ApiError {
    fn from(e: comity_store::StoreError) -> Self {
        ApiError::internal(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({"code": self.code, "message": self.message})),
        )
            .into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_keep_their_detail_in_the_log() {
        let e = ApiError::internal("reading /srv/comity/data/state: permission denied");
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.message.contains("/srv"), "{}", e.message);
        assert!(e.message.contains("incident"), "{}", e.message);
    }
}
