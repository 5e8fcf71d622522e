//! Plain-text replies shared by the endpoints and the limits: one line, so that an
//! operator reading a caller's log sees the whole reason.

use axum::{
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};

/// A one-line plain-text answer with `status`.
pub fn line(status: StatusCode, text: impl std::fmt::Display) -> Response {
    let line = text.to_string().replace('\n', " ");
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{line}\n"),
    )
        .into_response()
}

/// A one-line plain-text answer with `status` and `Retry-After: 1`: the caller may
/// succeed in a moment (a budget or a slot frees up).
pub fn retry_later(status: StatusCode, text: impl std::fmt::Display) -> Response {
    let mut response = line(status, text);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    response
}

/// A one-line plain-text 400.
pub fn bad_request(reason: impl std::fmt::Display) -> Response {
    line(StatusCode::BAD_REQUEST, reason)
}
