//! A minimal, blocking Blob REST client: request signing (SAS, Shared Key, bearer token),
//! retries, and error classification.
//!
//! Why hand-written rather than the official `azure_storage_blob` crate (1.1.0, checked
//! 2026-11): that SDK is async-only (azure_core pipeline on tokio + reqwest/hyper, a large
//! dependency tree for a 2-core build box), needs Rust 1.88, and has **no Shared Key
//! authentication** (Entra ID tokens or a SAS baked into the URL only). The `ReplicaDisk`
//! trait is synchronous and is called from `spawn_blocking`, so a blocking client (`ureq` on
//! rustls/ring, the crypto provider the rest of vdrep already uses) fits without a second
//! runtime. The operations vdrep needs are few (page blob create, Put Page, Clear Pages, Get
//! Blob ranges, Get Page Ranges, snapshots, leases, metadata, list, a small block blob) and
//! their wire format is stable (`x-ms-version` pinned below).
//!
//! The SDK does have page blobs (`PageBlobClient` with `upload_pages`, `clear_pages` and page
//! ranges in 0.8 and 1.x), so that is not what it lacks; but its API moved between those
//! releases (`get_page_ranges` became `list_page_ranges`, options types renamed), and it
//! takes only a `TokenCredential`, so Shared Key would still be hand-written here.
//!
//! Authorisation lives in [`super::auth`] (SAS, Shared Key) and [`super::identity`] (the
//! Entra ID identity chain: workload identity, managed identity, Azure CLI).

use std::collections::BTreeMap;
use std::time::Duration;

use super::auth::shared_key_signature;
pub use super::auth::{account_sas, hmac_sha256, Credential};

/// The service version every request asks for (supported by Azure and by Azurite with
/// `--skipApiVersionCheck`).
pub const API_VERSION: &str = "2021-08-06";

/// Retry policy for 500/503/408/429 and transport errors (timeouts, resets, refused).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// First back-off.
    pub base: Duration,
    /// Longest single back-off (a server's `Retry-After` may ask for more, up to 60 s).
    pub cap: Duration,
    /// Give up (recoverable error) once retrying has taken this long.
    pub give_up_after: Duration,
    /// Timeout of one request.
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(10),
            give_up_after: Duration::from_secs(120),
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// One request, relative to the account endpoint.
#[derive(Debug)]
pub struct Req<'a> {
    /// HTTP method.
    pub method: &'static str,
    /// `/container[/blob]`, already URL-safe (vdrep names are `[A-Za-z0-9._/-]`).
    pub path: String,
    /// Query parameters (e.g. `comp=page`), unencoded values.
    pub query: Vec<(&'static str, String)>,
    /// `x-ms-*` and standard headers; names lower case.
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: &'a [u8],
    /// What is being done, for errors ("put page", "snapshot").
    pub op: &'static str,
    /// Offset concerned, for errors.
    pub offset: u64,
}

impl<'a> Req<'a> {
    /// A request with no body.
    pub fn new(method: &'static str, path: String, op: &'static str) -> Req<'a> {
        Req {
            method,
            path,
            query: Vec::new(),
            headers: Vec::new(),
            body: &[],
            op,
            offset: 0,
        }
    }
    /// Adds a query parameter.
    pub fn q(mut self, k: &'static str, v: impl Into<String>) -> Self {
        self.query.push((k, v.into()));
        self
    }
    /// Adds a header.
    pub fn h(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.to_ascii_lowercase(), v.into()));
        self
    }
}

/// A successful response.
#[derive(Debug)]
pub struct Resp {
    /// HTTP status.
    pub status: u16,
    /// Headers, names lower case.
    pub headers: BTreeMap<String, String>,
    /// Body.
    pub body: Vec<u8>,
}

impl Resp {
    /// A header value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|s| s.as_str())
    }
}

/// A failed request, classified.
#[derive(Debug)]
pub struct RestError {
    /// The URL (without credentials).
    pub url: String,
    /// What was being done.
    pub op: &'static str,
    /// Offset concerned.
    pub offset: u64,
    /// HTTP status, `None` for transport failures.
    pub status: Option<u16>,
    /// `x-ms-error-code` (or a transport description).
    pub code: String,
    /// Message from the service or the transport.
    pub message: String,
    /// True for failures retrying may cure (only reported once retries are exhausted).
    pub recoverable: bool,
}

/// The client of one storage account endpoint.
pub struct Client {
    agent: ureq::Agent,
    /// `scheme://host[:port][/account]`, no trailing slash.
    base: String,
    /// Account name (for Shared Key's canonical resource).
    account: String,
    /// True if the account is the first path segment (Azurite, IP endpoints).
    path_style: bool,
    cred: Credential,
    /// The retry policy.
    pub retry: RetryPolicy,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("credential", &self.cred.kind())
            .finish()
    }
}

/// Splits an account URL into (base, account, path_style). Accepts
/// `https://ACCOUNT.blob.core.windows.net[/]` and path-style
/// `http://127.0.0.1:10000/devstoreaccount1[/]`.
pub fn parse_account_url(url: &str) -> Result<(String, String, bool), String> {
    let url = url.trim().trim_end_matches('/');
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} is not an http(s) URL"))?;
    if scheme != "http" && scheme != "https" {
        return Err(format!("{url:?}: scheme must be http or https"));
    }
    if rest.contains('?') {
        return Err(format!(
            "{url:?}: give the SAS with --azure-sas, not in the URL"
        ));
    }
    let (host, path) = match rest.split_once('/') {
        Some((h, p)) => (h, p),
        None => (rest, ""),
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    if !path.is_empty() {
        if path.contains('/') {
            return Err(format!(
                "{url:?}: expected an account URL (https://ACCOUNT.blob.core.windows.net or \
                 http://HOST:PORT/ACCOUNT), not a container or blob URL"
            ));
        }
        return Ok((url.to_string(), path.to_string(), true));
    }
    let hostname = host.split(':').next().unwrap_or(host);
    let is_ip = hostname.parse::<std::net::IpAddr>().is_ok() || hostname == "localhost";
    if is_ip {
        return Err(format!(
            "{url:?}: an IP or localhost endpoint needs the account as its path, e.g. \
             http://127.0.0.1:10000/devstoreaccount1"
        ));
    }
    let account = hostname.split('.').next().unwrap_or(hostname).to_string();
    Ok((url.to_string(), account, false))
}

impl Client {
    /// A client for the account at `url`.
    /// `ca_pem`, if given, replaces the public roots for the endpoint's TLS certificate.
    pub fn new(
        url: &str,
        cred: Credential,
        retry: RetryPolicy,
        ca_pem: Option<&[u8]>,
    ) -> Result<Client, String> {
        let (base, account, path_style) = parse_account_url(url)?;
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(pem) = ca_pem {
            let certs = ureq::tls::parse_pem(pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("the CA file is not PEM: {e}"))?;
            if certs.is_empty() {
                return Err("the CA file holds no certificate".into());
            }
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
        }
        let config = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .http_status_as_error(false)
            .timeout_global(Some(retry.request_timeout))
            .timeout_connect(Some(Duration::from_secs(10)))
            .max_idle_connections_per_host(64)
            .max_idle_connections(64)
            .build();
        Ok(Client {
            agent: ureq::Agent::new_with_config(config),
            base,
            account,
            path_style,
            cred,
            retry,
        })
    }

    /// The URL of `path` (no credentials).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The account name.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// The credential kind, for messages.
    pub fn credential_kind(&self) -> &'static str {
        self.cred.kind()
    }

    /// Sends `req`, retrying transient failures with exponential back-off (honouring
    /// `Retry-After`) until [`RetryPolicy::give_up_after`]. Non-2xx answers other than
    /// 408/429/500/503 are returned at once as non-recoverable errors.
    pub fn send(&self, req: &Req<'_>) -> Result<Resp, RestError> {
        let started = crate::clock::std_now();
        let mut attempt: u32 = 0;
        loop {
            let result = self.send_once(req);
            let (err, retry_after) = match result {
                Ok(r) => return Ok(r),
                Err((e, ra)) => (e, ra),
            };
            if !err.recoverable {
                return Err(err);
            }
            let backoff = self
                .retry
                .base
                .saturating_mul(1u32 << attempt.min(16))
                .min(self.retry.cap);
            // Full jitter on our own back-off; the server's Retry-After is a floor.
            let jittered = backoff.mul_f64(0.5 + rand::random::<f64>() * 0.5);
            let wait = retry_after
                .map(|ra| ra.min(Duration::from_secs(60)).max(jittered))
                .unwrap_or(jittered);
            if started.elapsed() + wait > self.retry.give_up_after {
                return Err(RestError {
                    message: format!(
                        "{} (gave up after {} attempts in {:.0?})",
                        err.message,
                        attempt + 1,
                        started.elapsed()
                    ),
                    ..err
                });
            }
            tracing::debug!(op = req.op, url = %err.url, status = ?err.status, code = %err.code,
                wait = ?wait, "retrying Azure request");
            crate::sink::azure::metrics_retry(req.op);
            std::thread::sleep(wait);
            attempt += 1;
        }
    }

    fn send_once(&self, req: &Req<'_>) -> Result<Resp, (RestError, Option<Duration>)> {
        let url_plain = self.url(&req.path);
        let mk_err =
            |status: Option<u16>, code: String, message: String, recoverable: bool| RestError {
                url: url_plain.clone(),
                op: req.op,
                offset: req.offset,
                status,
                code,
                message,
                recoverable,
            };
        let date = httpdate::fmt_http_date(crate::clock::system_time());
        let mut headers: Vec<(String, String)> = req.headers.clone();
        headers.push(("x-ms-date".into(), date));
        headers.push(("x-ms-version".into(), API_VERSION.into()));
        let mut query: Vec<(String, String)> = req
            .query
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let mut qs = query
            .iter()
            .map(|(k, v)| format!("{k}={}", encode_query_value(v)))
            .collect::<Vec<_>>()
            .join("&");
        match &self.cred {
            Credential::Sas(sas) => {
                if !qs.is_empty() {
                    qs.push('&');
                }
                qs.push_str(sas);
            }
            Credential::SharedKey { account, key } => {
                query.sort();
                // Path-style endpoints (Azurite) keep the account in the path, and the
                // canonical resource still starts with the account: `/acct/acct/container`.
                let canonical = if self.path_style {
                    format!("/{}{}", self.account, req.path)
                } else {
                    req.path.clone()
                };
                let sig = shared_key_signature(req, &canonical, &headers, &query, account, key);
                headers.push(("authorization".into(), format!("SharedKey {account}:{sig}")));
            }
            Credential::Identity(chain) => {
                let token = chain.token().map_err(|e| {
                    (
                        mk_err(None, "NoAzureToken".into(), e.to_string(), e.recoverable),
                        None,
                    )
                })?;
                headers.push(("authorization".into(), format!("Bearer {token}")));
            }
        }
        let full = if qs.is_empty() {
            url_plain.clone()
        } else {
            format!("{url_plain}?{qs}")
        };
        let mut builder = ureq::http::Request::builder().method(req.method).uri(&full);
        for (k, v) in &headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let request = builder.body(req.body).map_err(|e| {
            (
                mk_err(None, "InvalidRequest".into(), e.to_string(), false),
                None,
            )
        })?;
        let mut resp = match self.agent.run(request) {
            Ok(r) => r,
            // A refused certificate does not heal by retrying: say so at once.
            Err(e) if is_tls_failure(&e) => {
                let m = format!(
                    "{e} (TLS: give the endpoint's CA with --azure-ca-file if it has its own)"
                );
                return Err((mk_err(None, "Tls".into(), m, false), None));
            }
            Err(e) => return Err((mk_err(None, "Transport".into(), e.to_string(), true), None)),
        };
        let status = resp.status().as_u16();
        let mut hdrs = BTreeMap::new();
        for (k, v) in resp.headers() {
            if let Ok(v) = v.to_str() {
                hdrs.insert(k.as_str().to_ascii_lowercase(), v.to_string());
            }
        }
        let body = match resp.body_mut().with_config().limit(64 << 20).read_to_vec() {
            Ok(b) => b,
            Err(e) => {
                return Err((
                    mk_err(Some(status), "Transport".into(), e.to_string(), true),
                    None,
                ))
            }
        };
        if (200..300).contains(&status) {
            return Ok(Resp {
                status,
                headers: hdrs,
                body,
            });
        }
        let code = hdrs
            .get("x-ms-error-code")
            .cloned()
            .or_else(|| xml_text(&body, "Code"))
            .unwrap_or_default();
        let message = xml_text(&body, "Message")
            .map(|m| m.lines().next().unwrap_or("").to_string())
            .unwrap_or_else(|| {
                resp.status()
                    .canonical_reason()
                    .unwrap_or("error")
                    .to_string()
            });
        let retry_after = hdrs
            .get("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let recoverable = matches!(status, 408 | 429 | 500 | 502 | 503 | 504);
        Err((
            mk_err(Some(status), code, message, recoverable),
            retry_after,
        ))
    }
}

/// True for a TLS handshake failure (a certificate refused, no common protocol): not cured
/// by retrying. rustls errors come wrapped in an `io::Error`.
fn is_tls_failure(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Rustls(_) | ureq::Error::Tls(_) => true,
        ureq::Error::Io(io) => io
            .get_ref()
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some()),
        _ => false,
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved kept).
pub fn encode_query_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The text of the first `<tag>…</tag>` in an XML body (the service's small answers).
pub fn xml_text(body: &[u8], tag: &str) -> Option<String> {
    let s = std::str::from_utf8(body).ok()?;
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let a = s.find(&open)? + open.len();
    let b = s[a..].find(&close)? + a;
    Some(xml_unescape(&s[a..b]))
}

/// Undoes the five predefined XML entities.
pub fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// All `<tag>…</tag>` sections of `s`, in order.
pub fn xml_sections<'a>(s: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(a) = rest.find(&open) {
        let after = &rest[a + open.len()..];
        let Some(b) = after.find(&close) else { break };
        out.push(&after[..b]);
        rest = &after[b + close.len()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_urls_path_style_and_host_style() {
        let (b, a, p) = parse_account_url("http://127.0.0.1:10000/devstoreaccount1/").unwrap();
        assert_eq!(
            (b.as_str(), a.as_str(), p),
            (
                "http://127.0.0.1:10000/devstoreaccount1",
                "devstoreaccount1",
                true
            )
        );
        let (b, a, p) = parse_account_url("https://acct.blob.core.windows.net").unwrap();
        assert_eq!(
            (b.as_str(), a.as_str(), p),
            ("https://acct.blob.core.windows.net", "acct", false)
        );
        assert!(parse_account_url("http://127.0.0.1:10000").is_err());
        assert!(parse_account_url("https://a.blob.core.windows.net/c/b").is_err());
        assert!(parse_account_url("ftp://x").is_err());
    }

    #[test]
    fn xml_helpers_read_service_answers() {
        let body = b"<?xml version=\"1.0\"?><Error><Code>AuthenticationFailed</Code><Message>Server failed &amp; more\nTime:x</Message></Error>";
        assert_eq!(xml_text(body, "Code").unwrap(), "AuthenticationFailed");
        assert!(xml_text(body, "Message")
            .unwrap()
            .starts_with("Server failed & more"));
        let s = "<PageList><PageRange><Start>0</Start><End>511</End></PageRange><PageRange><Start>1024</Start><End>2047</End></PageRange></PageList>";
        assert_eq!(xml_sections(s, "PageRange").len(), 2);
    }
}
