//! Errors of the API client as an operator needs to read them. kube's errors print only
//! their top layer (`ServiceError: client error (Connect)`), while what went wrong (a
//! refused connection, a certificate the client refused, a 401, a 403 naming the verb
//! and resource) sits further down the error's source chain. These functions print the
//! whole chain on one line.

use std::error::Error;

use kube::{core::Status, runtime::watcher};

/// The whole source chain of `error` on one line: each layer's own text, joined by
/// `: `. A layer whose text ends with (or contains) its source's text contributes only
/// the part before it, so nothing is said twice. An API error answer is written as
/// `403 Forbidden: <the API server's message>`.
pub fn chain(error: &(dyn Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut layer = Some(error);
    while let Some(e) = layer {
        if let Some(status) = api_status(e) {
            parts.push(status_text(status));
            break;
        }
        let text = one_line(&e.to_string());
        let next = e.source().map(|s| one_line(&s.to_string()));
        let own = match next.as_deref() {
            Some(inner) if !inner.is_empty() => match text.find(inner) {
                Some(at) => text[..at].trim_end_matches([':', ' ']).to_owned(),
                None => text,
            },
            _ => text,
        };
        if !own.is_empty() && parts.last() != Some(&own) {
            parts.push(own);
        }
        layer = e.source();
    }
    parts.join(": ")
}

/// One failure of a kind's list or watch: what was being done, and why it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchFailure {
    /// `cannot list`, `cannot watch`, `watch stream broke`, `watch ended`.
    pub doing: &'static str,
    /// The whole error chain, from [`chain`].
    pub cause: String,
}

impl WatchFailure {
    /// Reads a watcher error: its variant says what failed, its source chain why.
    pub fn of(error: &watcher::Error) -> Self {
        use watcher::Error as E;
        let (doing, cause) = match error {
            E::InitialListFailed(e) => ("cannot list", chain(e)),
            E::WatchStartFailed(e) => ("cannot watch", chain(e)),
            E::WatchFailed(e) => ("watch stream broke", chain(e)),
            E::WatchError(status) => ("watch ended", status_text(status)),
            other => ("cannot watch", chain(other)),
        };
        WatchFailure { doing, cause }
    }

    /// `cannot list: <cause>`, the same for every kind failing the same way: what the
    /// readiness message quotes, and what decides whether a failure is news.
    pub fn summary(&self) -> String {
        format!("{}: {}", self.doing, self.cause)
    }

    /// The log line: `cannot list Pod at https://10.0.0.1:6443: <cause>; retrying ...`.
    pub fn line(&self, kind: &str, server: &str) -> String {
        format!(
            "{} {kind} at {server}: {}; retrying, quietly while the error stays the same",
            self.doing, self.cause
        )
    }
}

/// The Status of an error answer from the API server, at this layer of a chain.
fn api_status<'a>(e: &'a (dyn Error + 'static)) -> Option<&'a Status> {
    if let Some(kube::Error::Api(status)) = e.downcast_ref::<kube::Error>() {
        return Some(status);
    }
    if let Some(watcher::Error::WatchError(status)) = e.downcast_ref::<watcher::Error>() {
        return Some(status);
    }
    e.downcast_ref::<Status>()
}

/// What a failed request to the API server says to someone who is not reading volguard's
/// log (a webhook warning): `403 Forbidden` for an error answer, without its message, and
/// nothing of other failures. Messages and transport errors can name the API server's
/// address (`Get "https://10.0.0.1:6443/...": ...`, a certificate not valid for
/// `10.96.0.1`): [`chain`] has them, for the log.
pub fn brief(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => status_head(status),
        _ => "the request to the API server failed (the cause is in volguard's log)".into(),
    }
}

/// `403 Forbidden: pods is forbidden: User "x" cannot list resource "pods" ...`; the
/// message alone when the reason repeats it (`401 Unauthorized`).
fn status_text(status: &Status) -> String {
    let head = status_head(status);
    let message = one_line(&status.message);
    if message.is_empty() || message == reason(status) {
        head
    } else {
        format!("{head}: {message}")
    }
}

/// `403 Forbidden`: the code and the reason.
fn status_head(status: &Status) -> String {
    let reason = reason(status);
    match (status.code, reason.is_empty()) {
        (0, true) => "error answer".to_owned(),
        (0, false) => reason.to_owned(),
        (code, true) => code.to_string(),
        (code, false) => format!("{code} {reason}"),
    }
}

/// The answer's reason; the HTTP reason phrase for kube's stand-in reason when the body
/// was not a Status (a proxy's page, an empty 404), which says more.
fn reason(status: &Status) -> &str {
    let canonical = axum::http::StatusCode::from_u16(status.code)
        .ok()
        .and_then(|c| c.canonical_reason());
    match (status.reason.trim(), canonical) {
        ("Failed to parse error data", Some(canonical)) => canonical,
        (reason, _) => reason,
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect)")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("tcp connect error")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn the_chain_names_the_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let e = kube::Error::Service(Box::new(Outer(Middle(io))));
        assert_eq!(
            chain(&e),
            "ServiceError: client error (Connect): tcp connect error: Connection refused"
        );
        let list = watcher::Error::InitialListFailed(e);
        let failure = WatchFailure::of(&list);
        assert_eq!(
            failure.summary(),
            "cannot list: ServiceError: client error (Connect): tcp connect error: Connection refused"
        );
        assert_eq!(
            failure.line("Pod", "https://10.0.0.1:6443"),
            "cannot list Pod at https://10.0.0.1:6443: ServiceError: client error (Connect): \
             tcp connect error: Connection refused; retrying, quietly while the error stays the same"
        );
    }

    #[test]
    fn an_error_answer_is_its_code_reason_and_message() {
        let forbidden = Status::failure(
            "pods is forbidden: User \"x\" cannot list resource \"pods\" in API group \"\" at the cluster scope",
            "Forbidden",
        )
        .with_code(403);
        let e = watcher::Error::InitialListFailed(kube::Error::Api(forbidden.boxed()));
        assert_eq!(
            WatchFailure::of(&e).summary(),
            "cannot list: 403 Forbidden: pods is forbidden: User \"x\" cannot list resource \
             \"pods\" in API group \"\" at the cluster scope"
        );
        let unauthorized = Status::failure("Unauthorized", "Unauthorized").with_code(401);
        assert_eq!(
            chain(&kube::Error::Api(unauthorized.boxed())),
            "401 Unauthorized"
        );
        let proxied =
            Status::failure("<html>no route</html>", "Failed to parse error data").with_code(502);
        assert_eq!(
            chain(&kube::Error::Api(proxied.boxed())),
            "502 Bad Gateway: <html>no route</html>"
        );
        let failed = Status::failure(
            "Get \"https://10.0.0.1:6443/api\": dial tcp 10.0.0.1:6443: connect: connection refused",
            "InternalError",
        )
        .with_code(500);
        assert_eq!(
            brief(&kube::Error::Api(failed.boxed())),
            "500 InternalError"
        );
        let io = std::io::Error::other("certificate not valid for name \"10.96.0.1\"");
        assert_eq!(
            brief(&kube::Error::Service(Box::new(io))),
            "the request to the API server failed (the cause is in volguard's log)"
        );
        let gone = Status::failure("too old resource version: 5 (9)", "Expired").with_code(410);
        assert_eq!(
            WatchFailure::of(&watcher::Error::WatchError(gone.boxed())).summary(),
            "watch ended: 410 Expired: too old resource version: 5 (9)"
        );
    }
}
