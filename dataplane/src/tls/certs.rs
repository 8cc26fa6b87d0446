//! `vdrep certs`: a private CA, the receiver's server certificate and one client certificate
//! per sender, generated with rcgen (ECDSA P-256 keys, SHA-256 signatures).
//!
//! Why a private CA rather than self-signed peers: the receiver verifies every sender against
//! one `ca.pem`, so adding a sender (`add-sender`) never touches the receiver's files, and
//! revoking trust in all of them is replacing one file. The CA key is only needed to issue
//! certificates and should not stay on the replicating machines.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
    SerialNumber,
};
use time::{Duration, OffsetDateTime};

use super::pem::{self, CERT_MODE, KEY_MODE};
use super::{validate_sender_name, TlsError};

/// Default lifetime of receiver and sender certificates: 825 days, the longest that common
/// TLS clients accept for a leaf, so operators renew on a familiar schedule.
pub const DEFAULT_VALIDITY_DAYS: u32 = 825;
/// Lifetime of a CA made by `init`: ten years, or the leaves' validity if that is longer, so
/// that certificates issued later by `add-sender` are not cut short by an expiring CA.
pub const CA_VALIDITY_DAYS: u32 = 3650;
/// Names every receiver certificate carries, so a receiver on the same machine (tests, demo)
/// is reachable by name or loopback address without `--host`.
pub const RECEIVER_DEFAULT_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// Subject CN of the receiver's certificate (clients check SANs, never this).
pub const RECEIVER_CN: &str = "vdrep receiver";
/// Subject CN of a CA made by `init`, followed by a random tag: two CAs must never share a
/// subject, or a certificate from one would be checked against the other's key and refused
/// as "BadSignature" instead of the clearer "UnknownIssuer".
pub const CA_CN_PREFIX: &str = "vdrep CA";

/// Backdating of `not_before`, so a peer whose clock runs a little behind accepts a fresh
/// certificate.
const CLOCK_SKEW: Duration = Duration::hours(1);

/// The files of a certificate directory.
pub mod files {
    use std::path::{Path, PathBuf};

    /// `DIR/ca.pem`: the CA certificate(s) both ends verify against.
    pub fn ca_cert(dir: &Path) -> PathBuf {
        dir.join("ca.pem")
    }
    /// `DIR/ca.key`: the CA's private key (only `add-sender` needs it).
    pub fn ca_key(dir: &Path) -> PathBuf {
        dir.join("ca.key")
    }
    /// `DIR/receiver.pem`: the receiver's chain, leaf first.
    pub fn receiver_cert(dir: &Path) -> PathBuf {
        dir.join("receiver.pem")
    }
    /// `DIR/receiver.key`: the receiver's private key.
    pub fn receiver_key(dir: &Path) -> PathBuf {
        dir.join("receiver.key")
    }
    /// `DIR/NAME.pem`: sender NAME's chain, leaf first.
    pub fn sender_cert(dir: &Path, name: &str) -> PathBuf {
        dir.join(format!("{name}.pem"))
    }
    /// `DIR/NAME.key`: sender NAME's private key.
    pub fn sender_key(dir: &Path, name: &str) -> PathBuf {
        dir.join(format!("{name}.key"))
    }
}

/// When a certificate is valid. Certificates are issued for `[now - 1 h, now + days]`;
/// tests build other windows (e.g. already expired) with [`Validity::between`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// First valid instant.
    pub not_before: OffsetDateTime,
    /// Last valid instant.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clock skew) until `days` days from now.
    pub fn days_from_now(days: u32) -> Self {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - CLOCK_SKEW,
            not_after: now + Duration::days(i64::from(days)),
        }
    }

    /// An explicit window.
    pub fn between(not_before: OffsetDateTime, not_after: OffsetDateTime) -> Self {
        Validity {
            not_before,
            not_after,
        }
    }

    /// This window, ending no later than `limit` (a leaf must not outlive its CA).
    fn capped_at(self, limit: OffsetDateTime) -> Self {
        Validity {
            not_before: self.not_before,
            not_after: self.not_after.min(limit),
        }
    }
}

/// A CA able to sign: its key and the issuer fields taken from its certificate.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    not_after: OffsetDateTime,
}

impl Ca {
    /// A new self-signed CA (path length 0: it signs leaves only).
    /// Returns the CA and its certificate and key in PEM.
    pub fn generate(validity: Validity) -> Result<(Ca, String, String), TlsError> {
        let key = new_key("CA key")?;
        let tag: [u8; 4] = rand::random();
        let cn = format!(
            "{CA_CN_PREFIX} {}",
            tag.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let mut params = base_params(&cn, validity);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params
            .self_signed(&key)
            .map_err(|source| generate_error("CA certificate", source))?;
        let key_pem = key.serialize_pem();
        let ca = Ca {
            issuer: Issuer::new(params, key),
            not_after: validity.not_after,
        };
        Ok((ca, cert.pem(), key_pem))
    }

    /// Loads the CA of a certificate directory from `ca.pem` and `ca.key`. The key must be
    /// PKCS#8 (`openssl pkcs8 -topk8 -nocrypt` converts others); of several certificates in
    /// `ca.pem`, the one matching the key is used.
    pub fn load(dir: &Path) -> Result<Ca, TlsError> {
        let cert_file = files::ca_cert(dir);
        let key_file = files::ca_key(dir);
        let certs = pem::load_certs(&cert_file)?;
        let key_pem = String::from_utf8(pem::read_small(&key_file)?)
            .map_err(|_| TlsError::bad_file(&key_file, "not a PEM text file"))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| {
            TlsError::bad_file(
                &key_file,
                format!("not a usable PKCS#8 private key ({e}); convert it with `openssl pkcs8 -topk8 -nocrypt`"),
            )
        })?;
        let spki = key.subject_public_key_info();
        for der in &certs {
            let Ok((_, x509)) = x509_parser::parse_x509_certificate(der) else {
                return Err(TlsError::bad_file(&cert_file, "unparsable certificate"));
            };
            if x509.tbs_certificate.subject_pki.raw != spki.as_slice() {
                continue;
            }
            if !x509.is_ca() {
                return Err(TlsError::bad_file(
                    &cert_file,
                    "not a CA certificate (basicConstraints CA:FALSE or missing)",
                ));
            }
            let not_after = x509.validity().not_after.to_datetime();
            if not_after <= OffsetDateTime::now_utc() {
                return Err(TlsError::bad_file(
                    &cert_file,
                    "the CA certificate has expired",
                ));
            }
            let issuer = Issuer::from_ca_cert_der(der, key).map_err(|e| {
                TlsError::bad_file(&cert_file, format!("unusable CA certificate: {e}"))
            })?;
            return Ok(Ca { issuer, not_after });
        }
        Err(TlsError::bad_file(
            &key_file,
            "does not match any certificate in ca.pem",
        ))
    }

    /// Issues sender `name`'s client certificate: subject CN = DNS SAN = `name`, EKU client
    /// authentication. Returns (certificate PEM, key PEM).
    pub fn issue_sender(
        &self,
        name: &str,
        validity: Validity,
    ) -> Result<(String, String), TlsError> {
        validate_sender_name(name)?;
        let mut params = base_params(name, validity.capped_at(self.not_after));
        params.subject_alt_names =
            vec![SanType::DnsName(name.try_into().map_err(|e| {
                generate_error(&format!("certificate of sender {name}"), e)
            })?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue_leaf(params, &format!("certificate of sender {name}"))
    }

    /// Issues the receiver's server certificate for `localhost`, `127.0.0.1`, `::1` and each
    /// of `hosts` (DNS names or IP addresses). Returns (certificate PEM, key PEM).
    pub fn issue_receiver(
        &self,
        hosts: &[String],
        validity: Validity,
    ) -> Result<(String, String), TlsError> {
        let mut params = base_params(RECEIVER_CN, validity.capped_at(self.not_after));
        let mut names: Vec<&str> = RECEIVER_DEFAULT_NAMES.to_vec();
        for h in hosts {
            if !names.contains(&h.as_str()) {
                names.push(h);
            }
        }
        params.subject_alt_names = names
            .into_iter()
            .map(receiver_san)
            .collect::<Result<_, _>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue_leaf(params, "receiver certificate")
    }

    fn issue_leaf(
        &self,
        mut params: CertificateParams,
        what: &str,
    ) -> Result<(String, String), TlsError> {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let key = new_key(what)?;
        let cert: Certificate = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| generate_error(what, source))?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// `vdrep certs init`: creates `dir` if needed and writes a new CA, the receiver's
/// certificate (SANs `localhost`, `127.0.0.1`, `::1` and `hosts`) and one certificate per
/// sender, each valid for `validity_days`. Refuses to replace an existing CA unless `force`
/// (replacing it invalidates every certificate it signed). Every name is checked before any
/// file is written. Returns the files written.
pub fn init(
    dir: &Path,
    senders: &[String],
    hosts: &[String],
    validity_days: u32,
    force: bool,
) -> Result<Vec<PathBuf>, TlsError> {
    for (i, s) in senders.iter().enumerate() {
        validate_sender_name(s)?;
        if senders.iter().take(i).any(|t| t.eq_ignore_ascii_case(s)) {
            return Err(TlsError::InvalidName {
                name: s.clone(),
                problem: "given twice",
            });
        }
    }
    for h in hosts {
        receiver_san(h)?;
    }
    if !force {
        for f in [files::ca_cert(dir), files::ca_key(dir)] {
            if f.exists() {
                return Err(TlsError::Exists {
                    file: f,
                    hint: "pass --force to replace the CA (every certificate it signed stops working), or use `vdrep certs add-sender`",
                });
            }
        }
    }
    let leaf = Validity::days_from_now(validity_days);
    let (ca, ca_pem, ca_key) =
        Ca::generate(Validity::days_from_now(validity_days.max(CA_VALIDITY_DAYS)))?;
    let mut out: Vec<(PathBuf, String, u32)> = vec![
        (files::ca_cert(dir), ca_pem, CERT_MODE),
        (files::ca_key(dir), ca_key, KEY_MODE),
    ];
    let (pem, key) = ca.issue_receiver(hosts, leaf)?;
    out.push((files::receiver_cert(dir), pem, CERT_MODE));
    out.push((files::receiver_key(dir), key, KEY_MODE));
    for s in senders {
        let (pem, key) = ca.issue_sender(s, leaf)?;
        out.push((files::sender_cert(dir, s), pem, CERT_MODE));
        out.push((files::sender_key(dir, s), key, KEY_MODE));
    }
    write_all(dir, out)
}

/// `vdrep certs add-sender`: issues `NAME.pem`/`NAME.key` with the CA already in `dir`
/// (`ca.pem`, `ca.key`), valid for `validity_days` but never beyond the CA. Refuses to
/// replace an existing sender certificate unless `force` (renewal). Returns the files written.
pub fn add_sender(
    dir: &Path,
    name: &str,
    validity_days: u32,
    force: bool,
) -> Result<Vec<PathBuf>, TlsError> {
    validate_sender_name(name)?;
    let cert = files::sender_cert(dir, name);
    if !force && cert.exists() {
        return Err(TlsError::Exists {
            file: cert,
            hint: "pass --force to issue a new certificate and key for this sender",
        });
    }
    let ca = Ca::load(dir)?;
    let (pem, key) = ca.issue_sender(name, Validity::days_from_now(validity_days))?;
    write_all(
        dir,
        vec![
            (cert, pem, CERT_MODE),
            (files::sender_key(dir, name), key, KEY_MODE),
        ],
    )
}

fn write_all(dir: &Path, out: Vec<(PathBuf, String, u32)>) -> Result<Vec<PathBuf>, TlsError> {
    pem::create_dir(dir)?;
    let mut written = Vec::with_capacity(out.len());
    for (file, contents, mode) in out {
        pem::write_atomic(&file, contents.as_bytes(), mode)?;
        written.push(file);
    }
    Ok(written)
}

/// A receiver SAN from a `--host` value: an IP address, or a syntactically valid DNS name.
fn receiver_san(host: &str) -> Result<SanType, TlsError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let invalid = |problem: String| TlsError::InvalidHost {
        host: host.to_string(),
        problem,
    };
    rustls_pki_types::DnsName::try_from(host)
        .map_err(|_| invalid("neither an IP address nor a valid DNS name".into()))?;
    Ok(SanType::DnsName(
        host.try_into().map_err(|e| invalid(format!("{e}")))?,
    ))
}

fn base_params(cn: &str, validity: Validity) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params.serial_number = Some(random_serial());
    params
}

/// A random positive 128-bit serial number (RFC 5280 §4.1.2.2: unique per CA, ≤ 20 bytes).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn new_key(what: &str) -> Result<KeyPair, TlsError> {
    KeyPair::generate().map_err(|source| generate_error(what, source))
}

fn generate_error(what: &str, source: rcgen::Error) -> TlsError {
    TlsError::Generate {
        what: what.to_string(),
        source,
    }
}

#[cfg(test)]
#[path = "certs_tests.rs"]
mod tests;
