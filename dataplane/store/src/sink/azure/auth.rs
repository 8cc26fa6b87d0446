//! How requests are authorised: a SAS, Shared Key signing, or an Entra ID bearer token from
//! the identity chain ([`super::identity`]).

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::identity::IdentityChain;
use super::rest::{encode_query_value, Req};

/// How requests are authorised.
pub enum Credential {
    /// A SAS query string (without the leading `?`), appended to every URL.
    Sas(String),
    /// Shared Key: the account name and its decoded key.
    SharedKey {
        /// Storage account name.
        account: String,
        /// The account key (base64-decoded).
        key: Vec<u8>,
    },
    /// Entra ID bearer tokens from the identity chain (workload identity, managed identity,
    /// Azure CLI), cached and refreshed before expiry.
    Identity(IdentityChain),
}

impl Credential {
    /// A SAS credential; accepts the token with or without its leading `?`.
    pub fn sas(token: &str) -> Credential {
        Credential::Sas(token.trim().trim_start_matches('?').to_string())
    }

    /// Short name for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::Sas(_) => "SAS token",
            Credential::SharedKey { .. } => "shared key",
            Credential::Identity(c) => c.chosen_kind().unwrap_or("Azure identity chain"),
        }
    }
}

/// Shared Key signature (the 2009-09-19+ string-to-sign) of `req` whose canonical path
/// (`/container/blob`, preceded by `/account` on path-style endpoints) is `canonical_path`.
pub fn shared_key_signature(
    req: &Req<'_>,
    canonical_path: &str,
    headers: &[(String, String)],
    sorted_query: &[(String, String)],
    account: &str,
    key: &[u8],
) -> String {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    let len = if req.body.is_empty() {
        String::new()
    } else {
        req.body.len().to_string()
    };
    let mut ms: Vec<(&str, &str)> = headers
        .iter()
        .filter(|(k, _)| k.starts_with("x-ms-"))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    ms.sort();
    let mut s = format!(
        "{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n",
        req.method,
        get("content-encoding"),
        get("content-language"),
        len,
        get("content-md5"),
        get("content-type"),
        "", // Date: x-ms-date is used instead
        get("if-modified-since"),
        get("if-match"),
        get("if-none-match"),
        get("if-unmodified-since"),
        get("range"),
    );
    for (k, v) in ms {
        s.push_str(&format!("{k}:{}\n", v.trim()));
    }
    s.push_str(&format!("/{account}{canonical_path}"));
    let mut grouped: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in sorted_query {
        grouped
            .entry(k.to_ascii_lowercase())
            .or_default()
            .push(v.clone());
    }
    for (k, mut vs) in grouped {
        vs.sort();
        s.push_str(&format!("\n{k}:{}", vs.join(",")));
    }
    B64.encode(hmac_sha256(key, s.as_bytes()))
}

/// An account SAS for the Blob service (all resource types, permissions `rwdlac`) signed
/// with the account key, valid until `expiry` (`2030-01-01T00:00:00Z`). Meant for Azurite
/// and tests; in production the operator issues a SAS with the narrowest rights.
pub fn account_sas(account: &str, key_b64: &str, expiry: &str) -> Result<String, String> {
    let key = B64.decode(key_b64.trim()).map_err(|e| e.to_string())?;
    let (sv, ss, srt, sp, spr) = ("2019-12-12", "b", "sco", "rwdlac", "https,http");
    let to_sign = format!("{account}\n{sp}\n{ss}\n{srt}\n\n{expiry}\n\n{spr}\n{sv}\n");
    let sig = B64.encode(hmac_sha256(&key, to_sign.as_bytes()));
    Ok(format!(
        "sv={sv}&ss={ss}&srt={srt}&sp={sp}&se={}&spr={}&sig={}",
        encode_query_value(expiry),
        encode_query_value(spr),
        encode_query_value(&sig)
    ))
}

/// HMAC-SHA256.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(msg);
    m.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sas_is_accepted_with_or_without_question_mark() {
        let (Credential::Sas(a), Credential::Sas(b)) = (
            Credential::sas("?sv=1&sig=x"),
            Credential::sas("sv=1&sig=x"),
        ) else {
            panic!()
        };
        assert_eq!(a, b);
        assert_eq!(a, "sv=1&sig=x");
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            mac.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
