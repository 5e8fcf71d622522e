//! Plain-text error replies shared by the endpoints.

use axum::{
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};

/// A one-line plain-text 400.
pub fn bad_request(reason: impl std::fmt::Display) -> Response {
    let line = reason.to_string().replace('\n', " ");
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{line}\n"),
    )
        .into_response()
}
