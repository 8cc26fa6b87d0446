//! The operator's console: one page (`/`) and its assets (`/assets/...`), served by the
//! sidecar on the API's own listener, plus the security headers every answer carries.
//!
//! The page is plain HTML, CSS and JavaScript without a framework or a build step, embedded
//! in the binary with `include_str!`: the sidecar runs on hosts that may be air-gapped, a
//! single binary must be enough to deploy it, and a page of a few views over a JSON API does
//! not need more than the browser has. It requests nothing outside the sidecar (no fonts,
//! no CDN), which the Content-Security-Policy below enforces.
//!
//! The page keeps the bearer token in a JavaScript variable only (not in a URL, cookie or
//! web storage): a reload asks for it again. The API takes it only from the
//! `Authorization` header, so another site cannot make a browser act with it (no CSRF).

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The Content-Security-Policy of every answer: the page's own script, styles and API
/// only, no inline script, no framing (`frame-ancestors 'none'`: no clickjacking), no
/// form posts anywhere, no `<base>` rewriting.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

const INDEX: &str = include_str!("console/index.html");

/// The assets under `/assets/`: name, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "core.js",
        "text/javascript; charset=utf-8",
        include_bytes!("console/core.js"),
    ),
    (
        "machines.js",
        "text/javascript; charset=utf-8",
        include_bytes!("console/machines.js"),
    ),
    (
        "jobs.js",
        "text/javascript; charset=utf-8",
        include_bytes!("console/jobs.js"),
    ),
    (
        "bandwidth.js",
        "text/javascript; charset=utf-8",
        include_bytes!("console/bandwidth.js"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_bytes!("console/console.js"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_bytes!("console/console.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("console/favicon.svg"),
    ),
];

/// `GET /`: the page.
pub async fn index() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX).into_response()
}

/// `GET /assets/{name}`.
pub async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, ctype, body)) => ([(header::CONTENT_TYPE, *ctype)], *body).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({ "error": format!("no asset {name}") })),
        )
            .into_response(),
    }
}

/// Middleware: the security headers on every answer (page, assets and API alike).
pub async fn security_headers(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Status changes every second; nothing here should come from a cache.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::{ASSETS, INDEX};

    #[test]
    fn the_page_loads_nothing_from_outside_and_runs_no_inline_script() {
        for (name, _, body) in ASSETS.iter().filter(|(n, _, _)| !n.ends_with(".svg")) {
            let text = std::str::from_utf8(body).unwrap();
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "{name}"
            );
        }
        assert!(!INDEX.contains("http://") && !INDEX.contains("https://"));
        // Every <script> has a src (the CSP refuses inline script anyway).
        for tag in INDEX.split("<script").skip(1) {
            let head = tag.split('>').next().unwrap_or("");
            assert!(
                head.contains("src=\"/assets/"),
                "inline script: <script{head}>"
            );
        }
        assert!(
            !INDEX.contains(" style=\""),
            "inline styles are refused by the CSP"
        );
        for (name, _, _) in ASSETS {
            assert!(
                INDEX.contains(&format!("/assets/{name}")),
                "{name} is not used"
            );
        }
    }
}
