//! Who may call what. Every call that changes state needs `Authorization: Bearer <token>`
//! with the `--token-file` token. Reads are open (the API listens on loopback) unless the
//! sidecar was given `--read-token-file`: then every read of `/v1/...` needs that token or
//! the write token. The console page (`/`, `/assets/...`) and `/openapi.json` hold no state
//! and stay open, so an operator can load the page and then enter a token.
//!
//! Tokens travel only in the `Authorization` header: never in a URL (logged by proxies) and
//! never in a cookie (a browser would send it by itself, so a cookie would open the API to
//! cross-site requests; a header must be set by the page's own script).

use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::Sidecar;

/// A refusal before a handler's work: status and message, answered as `{"error": ...}`.
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

/// The bearer token of a request, if any.
fn bearer(h: &HeaderMap) -> Option<&str> {
    h.get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Whether `given` is the token whose BLAKE3 is `want`. Digests of equal width are compared
/// in constant time (`blake3::Hash`'s equality): a byte-wise compare that first checks the
/// lengths answers a wrong length sooner, which tells a caller the token's length.
fn same(given: &str, want: &blake3::Hash) -> bool {
    blake3::hash(given.as_bytes()) == *want
}

/// A state-changing call: the write token, or 401.
pub fn authorized(sc: &Sidecar, h: &HeaderMap) -> Result<(), ApiError> {
    if bearer(h).is_some_and(|g| same(g, &sc.token)) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "this call changes state: send Authorization: Bearer <token> (the sidecar's --token-file)".into(),
        ))
    }
}

/// A read of the API: open without `--read-token-file`; with it, that token or the write
/// token, or 401.
pub fn may_read(sc: &Sidecar, h: &HeaderMap) -> Result<(), ApiError> {
    let Some(want) = &sc.read_token else {
        return Ok(());
    };
    if bearer(h).is_some_and(|g| same(g, want) || same(g, &sc.token)) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "reads need a token on this sidecar: send Authorization: Bearer <token> (its --read-token-file or --token-file)".into(),
        ))
    }
}

/// Middleware over the `/v1` routes: reads (GET, HEAD) pass [`may_read`]; the handlers of
/// other methods check [`authorized`] themselves (after it, so a write without a token is
/// told about the write token).
pub async fn reads(
    axum::extract::State(sc): axum::extract::State<std::sync::Arc<Sidecar>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        if let Err(e) = may_read(&sc, req.headers()) {
            return e.into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn tokens_compare_whole() {
        let want = blake3::hash(b"abc");
        assert!(same("abc", &want));
        assert!(!same("abd", &want));
        assert!(!same("ab", &want));
        assert!(!same("abcd", &want));
        assert!(!same("", &want));
    }
}
