//! Entra ID tokens for the Blob service when no SAS or account key is given: the identity
//! chain that `azure_identity`'s `DefaultAzureCredential` walks, restricted to what a
//! receiver meets — workload identity (AKS), managed identity (an Azure VM), and the Azure
//! CLI (an operator's workstation).
//!
//! The chain tries each source in that order; the first that yields a token is kept for the
//! life of the process (like `DefaultAzureCredential`), so a workstation pays the managed
//! identity probe once. Tokens are cached and fetched again [`REFRESH_BEFORE`] their expiry;
//! if that refresh fails while the cached token is still valid, the cached one is used and
//! the failure logged. Every failure names the source and why; when no source works the
//! error lists each one.
//!
//! Hand-written for the reason given in [`super::rest`]: the SDK's credential types are
//! async (`azure_core` on tokio), and vdrep's Blob client is blocking.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The token audience of Azure Storage.
pub const STORAGE_RESOURCE: &str = "https://storage.azure.com/";
/// The OAuth 2.0 v2 scope of Azure Storage.
pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";
/// A token is replaced this long before it expires.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(300);
/// Longest wait for `az account get-access-token`.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// An access token and when it stops being valid.
#[derive(Debug, Clone)]
pub struct Token {
    /// The bearer token.
    pub secret: String,
    /// Its expiry, as a local instant.
    pub expires: Instant,
    /// When to fetch a new one: [`REFRESH_BEFORE`] the expiry, or half-way through a
    /// shorter lifetime.
    pub refresh_at: Instant,
}

impl Token {
    fn expiring_in(secret: String, secs: u64) -> Token {
        let now = crate::clock::std_now();
        let life = Duration::from_secs(secs);
        let refresh_in = if life > REFRESH_BEFORE * 2 {
            life - REFRESH_BEFORE
        } else {
            life / 2
        };
        Token {
            secret,
            expires: now + life,
            refresh_at: now + refresh_in,
        }
    }
}

/// Why a source gave no token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenError {
    /// Which source ("workload identity", "managed identity", "Azure CLI", or "identity
    /// chain" for the combined error).
    pub kind: &'static str,
    /// What went wrong and what to do.
    pub message: String,
    /// False when the source is simply not set up here (retrying cannot help).
    pub recoverable: bool,
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

/// One place tokens come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Workload identity federation (AKS): a Kubernetes service-account token in a file,
    /// exchanged for an Entra ID token by the client-credentials grant with a JWT assertion.
    Workload {
        /// `AZURE_FEDERATED_TOKEN_FILE` (read at each fetch: the kubelet rotates it).
        token_file: PathBuf,
        /// `AZURE_CLIENT_ID`.
        client_id: String,
        /// `AZURE_TENANT_ID`.
        tenant_id: String,
        /// `AZURE_AUTHORITY_HOST`, default `https://login.microsoftonline.com`.
        authority: String,
    },
    /// The instance metadata service of an Azure VM.
    ManagedIdentity {
        /// Client id of a user-assigned identity (`AZURE_CLIENT_ID`), if any.
        client_id: Option<String>,
        /// The token endpoint (IMDS's; replaceable for tests).
        endpoint: String,
    },
    /// `az account get-access-token` of a signed-in Azure CLI.
    AzureCli {
        /// The program: `az` found on `PATH`; tests put a fake script here.
        program: PathBuf,
    },
    /// A source the environment half-configures: reported, never tried (e.g. workload
    /// identity with the token file but no tenant).
    Missing {
        /// Which source.
        kind: &'static str,
        /// What is missing.
        why: String,
    },
}

impl Source {
    /// Workload identity from `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_CLIENT_ID`,
    /// `AZURE_TENANT_ID` and `AZURE_AUTHORITY_HOST`.
    pub fn workload_from_env() -> Source {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let (file, client, tenant) = (
            var("AZURE_FEDERATED_TOKEN_FILE"),
            var("AZURE_CLIENT_ID"),
            var("AZURE_TENANT_ID"),
        );
        match (file, client, tenant) {
            (Some(f), Some(c), Some(t)) => Source::Workload {
                token_file: f.into(),
                client_id: c,
                tenant_id: t,
                authority: var("AZURE_AUTHORITY_HOST")
                    .unwrap_or_else(|| "https://login.microsoftonline.com".into()),
            },
            (f, c, t) => {
                let missing: Vec<&str> = [
                    ("AZURE_FEDERATED_TOKEN_FILE", f.is_none()),
                    ("AZURE_CLIENT_ID", c.is_none()),
                    ("AZURE_TENANT_ID", t.is_none()),
                ]
                .iter()
                .filter(|(_, m)| *m)
                .map(|(k, _)| *k)
                .collect();
                Source::Missing {
                    kind: "workload identity",
                    why: format!("not configured ({} not set)", missing.join(", ")),
                }
            }
        }
    }

    /// Managed identity through IMDS, for the user-assigned identity `AZURE_CLIENT_ID` if set.
    pub fn managed_identity_from_env() -> Source {
        Source::ManagedIdentity {
            client_id: std::env::var("AZURE_CLIENT_ID").ok(),
            endpoint: "http://169.254.169.254/metadata/identity/oauth2/token".into(),
        }
    }

    /// The Azure CLI found on `PATH`.
    pub fn azure_cli() -> Source {
        Source::AzureCli {
            program: "az".into(),
        }
    }

    /// Short name for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Workload { .. } => "workload identity",
            Source::ManagedIdentity { .. } => "managed identity",
            Source::AzureCli { .. } => "Azure CLI",
            Source::Missing { kind, .. } => kind,
        }
    }

    /// Fetches a new token for Azure Storage.
    pub fn fetch(&self, agent: &ureq::Agent) -> Result<Token, TokenError> {
        let kind = self.kind();
        let err = |message: String, recoverable: bool| TokenError {
            kind,
            message,
            recoverable,
        };
        match self {
            Source::Missing { why, .. } => Err(err(why.clone(), false)),
            Source::Workload {
                token_file,
                client_id,
                tenant_id,
                authority,
            } => {
                let assertion = std::fs::read_to_string(token_file).map_err(|e| {
                    err(
                        format!(
                            "cannot read the federated token {}: {e}",
                            token_file.display()
                        ),
                        false,
                    )
                })?;
                let url = format!(
                    "{}/{}/oauth2/v2.0/token",
                    authority.trim_end_matches('/'),
                    tenant_id
                );
                let form = [
                    ("grant_type", "client_credentials"),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", assertion.trim()),
                    ("client_id", client_id.as_str()),
                    ("scope", STORAGE_SCOPE),
                ];
                let (status, body) = match agent.post(&url).send_form(form) {
                    Ok(mut r) => (
                        r.status().as_u16(),
                        r.body_mut().read_to_string().unwrap_or_default(),
                    ),
                    Err(e) => {
                        return Err(err(format!("token endpoint {url} unreachable: {e}"), true))
                    }
                };
                if !(200..300).contains(&status) {
                    return Err(err(
                        format!(
                            "token endpoint {url} refused the federated token (HTTP {status}): {}",
                            oauth_error(&body)
                        ),
                        matches!(status, 429 | 500..=599),
                    ));
                }
                parse_oauth_token(&body).map_err(|m| err(format!("{url}: {m}"), true))
            }
            Source::ManagedIdentity {
                client_id,
                endpoint,
            } => {
                let mut url = format!(
                    "{endpoint}?api-version=2018-02-01&resource={}",
                    super::rest::encode_query_value(STORAGE_RESOURCE)
                );
                if let Some(id) = client_id {
                    url.push_str(&format!(
                        "&client_id={}",
                        super::rest::encode_query_value(id)
                    ));
                }
                let mut r = agent
                    .get(&url)
                    .header("Metadata", "true")
                    .config()
                    .timeout_connect(Some(Duration::from_secs(2)))
                    .build()
                    .call()
                    .map_err(|e| {
                        err(
                            format!("the instance metadata service (IMDS) is unreachable ({e}): not an Azure VM, or no identity assigned"),
                            false,
                        )
                    })?;
                let status = r.status().as_u16();
                let body = r.body_mut().read_to_string().unwrap_or_default();
                if !(200..300).contains(&status) {
                    return Err(err(
                        format!(
                            "IMDS refused a token (HTTP {status}): {}",
                            oauth_error(&body)
                        ),
                        matches!(status, 429 | 500..=599),
                    ));
                }
                parse_oauth_token(&body).map_err(|m| err(format!("IMDS: {m}"), true))
            }
            Source::AzureCli { program } => cli_token(program).map_err(|(m, r)| err(m, r)),
        }
    }
}

/// The `error` and `error_description` of an OAuth error answer, or the body.
fn oauth_error(body: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(v) if v["error"].is_string() => format!(
            "{}: {}",
            v["error"].as_str().unwrap_or(""),
            v["error_description"]
                .as_str()
                .unwrap_or("")
                .lines()
                .next()
                .unwrap_or("")
        ),
        _ => body.chars().take(300).collect(),
    }
}

/// An OAuth token answer: `access_token` and `expires_in` (seconds, a number or a string as
/// IMDS sends it).
pub fn parse_oauth_token(body: &str) -> Result<Token, String> {
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("token answer is not JSON: {e}"))?;
    let secret = v["access_token"]
        .as_str()
        .ok_or("token answer without access_token")?
        .to_string();
    let secs = v["expires_in"]
        .as_u64()
        .or_else(|| v["expires_in"].as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(3600);
    Ok(Token::expiring_in(secret, secs))
}

/// Runs `az account get-access-token` and parses its answer.
fn cli_token(program: &std::path::Path) -> Result<Token, (String, bool)> {
    let mut child = Command::new(program)
        .args([
            "account",
            "get-access-token",
            "--resource",
            STORAGE_RESOURCE,
            "--output",
            "json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            (
                format!(
                    "cannot run {} ({e}): install the Azure CLI and `az login`, or give --azure-sas",
                    program.display()
                ),
                false,
            )
        })?;
    let started = crate::clock::std_now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() > CLI_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err((
                    format!(
                        "`{} account get-access-token` did not answer within {CLI_TIMEOUT:?}",
                        program.display()
                    ),
                    true,
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err((format!("waiting for {}: {e}", program.display()), true)),
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| (format!("reading {}: {e}", program.display()), true))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err((
            format!(
                "`az account get-access-token` failed ({}): {} (run `az login`)",
                out.status,
                stderr.trim().lines().last().unwrap_or("")
            ),
            false,
        ));
    }
    parse_cli_token(
        &String::from_utf8_lossy(&out.stdout),
        crate::clock::system_time(),
    )
    .map_err(|m| (m, false))
}

/// The Azure CLI's answer: `accessToken` with `expires_on` (Unix seconds, CLI ≥ 2.54) or else
/// `expiresOn` (`YYYY-MM-DD HH:MM:SS[.ffffff]` in local time).
pub fn parse_cli_token(stdout: &str, now: SystemTime) -> Result<Token, String> {
    let v: serde_json::Value = serde_json::from_str(stdout)
        .map_err(|e| format!("`az account get-access-token` printed no JSON: {e}"))?;
    let secret = v["accessToken"]
        .as_str()
        .ok_or("`az account get-access-token` printed no accessToken")?
        .to_string();
    let expires_unix = v["expires_on"]
        .as_i64()
        .or_else(|| v["expires_on"].as_str().and_then(|s| s.parse().ok()))
        .or_else(|| v["expiresOn"].as_str().and_then(local_time_to_unix))
        .ok_or(
            "`az account get-access-token` printed neither expires_on nor a readable expiresOn",
        )?;
    let now_unix = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Ok(Token::expiring_in(
        secret,
        expires_unix.saturating_sub(now_unix).max(0) as u64,
    ))
}

/// `YYYY-MM-DD HH:MM:SS[.frac]` in the local time zone → Unix seconds (via `mktime`).
fn local_time_to_unix(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, time) = s.split_once([' ', 'T'])?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i32>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let time = time.split('.').next()?;
    let mut t = time.splitn(3, ':').map(|p| p.parse::<i32>().ok());
    let (h, mi, se) = (t.next()??, t.next()??, t.next()??);
    // SAFETY: `tm` is a plain C struct, zero is a valid value for every field, and mktime
    // only reads and normalises it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = da;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = se;
    tm.tm_isdst = -1;
    // SAFETY: see above; mktime has no other preconditions.
    let t = unsafe { libc::mktime(&mut tm) };
    (t != -1).then_some(t as i64)
}

/// The sources in order, the one chosen, and the cached token.
pub struct IdentityChain {
    sources: Vec<Source>,
    agent: ureq::Agent,
    state: Mutex<ChainState>,
}

#[derive(Default)]
struct ChainState {
    chosen: Option<usize>,
    token: Option<Token>,
}

impl std::fmt::Debug for IdentityChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityChain")
            .field(
                "sources",
                &self.sources.iter().map(Source::kind).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl IdentityChain {
    /// The default chain: workload identity, managed identity, Azure CLI.
    pub fn from_env() -> IdentityChain {
        IdentityChain::new(vec![
            Source::workload_from_env(),
            Source::managed_identity_from_env(),
            Source::azure_cli(),
        ])
    }

    /// A chain of `sources`, tried in order.
    pub fn new(sources: Vec<Source>) -> IdentityChain {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .timeout_connect(Some(Duration::from_secs(10)))
            .build();
        IdentityChain {
            sources,
            agent: ureq::Agent::new_with_config(config),
            state: Mutex::new(ChainState::default()),
        }
    }

    /// The source in use once one has worked, for messages.
    pub fn chosen_kind(&self) -> Option<&'static str> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.chosen.map(|i| self.sources[i].kind())
    }

    /// A valid token: the cached one until its refresh time, else a new one.
    pub fn token(&self) -> Result<String, TokenError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = &st.token {
            if crate::clock::std_now() < t.refresh_at {
                return Ok(t.secret.clone());
            }
        }
        let fetched = match st.chosen {
            Some(i) => self.sources[i].fetch(&self.agent).map(|t| (i, t)),
            None => self.first_working(),
        };
        match fetched {
            Ok((i, t)) => {
                tracing::debug!(source = self.sources[i].kind(), "Azure token fetched");
                st.chosen = Some(i);
                st.token = Some(t.clone());
                Ok(t.secret)
            }
            Err(e) => match &st.token {
                // The refresh failed but the token in hand is still good: use it.
                Some(t) if crate::clock::std_now() + Duration::from_secs(10) < t.expires => {
                    tracing::warn!(error = %e, "Azure token refresh failed; using the cached token until it expires");
                    Ok(t.secret.clone())
                }
                _ => Err(e),
            },
        }
    }

    fn first_working(&self) -> Result<(usize, Token), TokenError> {
        let mut failures = Vec::new();
        let mut recoverable = false;
        for (i, s) in self.sources.iter().enumerate() {
            match s.fetch(&self.agent) {
                Ok(t) => return Ok((i, t)),
                Err(e) => {
                    recoverable |= e.recoverable;
                    failures.push(e.to_string());
                }
            }
        }
        Err(TokenError {
            kind: "identity chain",
            message: format!(
                "no Azure credential worked (give --azure-sas or VDREP_AZURE_SAS to use a SAS instead): {}",
                failures.join("; ")
            ),
            recoverable,
        })
    }
}

#[cfg(test)]
#[path = "identity_tests.rs"]
mod tests;
