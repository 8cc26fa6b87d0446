//! Who is on the other end: the sender name and certificate expiry of a connected peer.
//!
//! rustls has already verified the chain against `ca.pem` by the time quinn hands us a
//! connection; here we only read the verified leaf. The name is the subject CN, or — for
//! operator certificates that carry no CN — the single DNS SAN. Either way it must pass
//! [`validate_sender_name`], so the receiver can use it as a file name or metric label.

use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::{validate_sender_name, TlsError};

/// What the receiver knows about an authenticated sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The sender name (see [`peer_name`]).
    pub name: String,
    /// When its certificate expires, in seconds since the Unix epoch (for the
    /// seconds-until-expiry metric and warnings).
    pub not_after_unix: i64,
}

/// The verified leaf certificate of a quinn connection's peer.
pub fn peer_certificate(conn: &quinn::Connection) -> Result<CertificateDer<'static>, TlsError> {
    let identity = conn
        .peer_identity()
        .ok_or_else(|| TlsError::peer("the peer presented no certificate"))?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| TlsError::peer("the connection's peer identity is not a certificate chain"))?;
    chain
        .into_iter()
        .next()
        .ok_or_else(|| TlsError::peer("the peer presented an empty certificate chain"))
}

/// The name and expiry of a connection's peer.
pub fn peer_identity(conn: &quinn::Connection) -> Result<PeerIdentity, TlsError> {
    let der = peer_certificate(conn)?;
    Ok(PeerIdentity {
        name: peer_name(&der)?,
        not_after_unix: not_after_unix(&der)?,
    })
}

/// The sender name a certificate speaks for: its subject CN (exactly one), or if it has no
/// CN its single DNS SAN; validated with [`validate_sender_name`].
pub fn peer_name(der: &CertificateDer<'_>) -> Result<String, TlsError> {
    let cert = parse(der)?;
    let mut cns = cert.subject().iter_common_name();
    let name = match (cns.next(), cns.next()) {
        (Some(cn), None) => cn
            .as_str()
            .map_err(|_| TlsError::peer("the subject CN is not a text string"))?
            .to_string(),
        (Some(_), Some(_)) => {
            return Err(TlsError::peer("the subject has several CNs; expected one"))
        }
        (None, _) => single_dns_san(&cert)?,
    };
    validate_sender_name(&name).map_err(|e| TlsError::peer(format!("{e}")))?;
    Ok(name)
}

/// The certificate's `notAfter`, in seconds since the Unix epoch.
pub fn not_after_unix(der: &CertificateDer<'_>) -> Result<i64, TlsError> {
    Ok(parse(der)?.validity().not_after.timestamp())
}

fn parse<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, TlsError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::peer(format!("unparsable certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(TlsError::peer("trailing bytes after the certificate"));
    }
    Ok(cert)
}

fn single_dns_san(cert: &X509Certificate<'_>) -> Result<String, TlsError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::peer(format!("bad subjectAltName extension: {e}")))?
        .ok_or_else(|| TlsError::peer("no subject CN and no DNS SAN to name the sender"))?;
    let mut dns = san.value.general_names.iter().filter_map(|g| match g {
        GeneralName::DNSName(d) => Some(*d),
        _ => None,
    });
    match (dns.next(), dns.next()) {
        (Some(d), None) => Ok(d.to_string()),
        (None, _) => Err(TlsError::peer(
            "no subject CN and no DNS SAN to name the sender",
        )),
        (Some(_), Some(_)) => Err(TlsError::peer(
            "no subject CN and several DNS SANs: cannot tell which names the sender",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Classify;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    fn cert_with(cn: &[&str], sans: &[&str]) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut p =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let mut dn = DistinguishedName::new();
        for c in cn {
            dn.push(DnType::CommonName, *c);
        }
        p.distinguished_name = dn;
        p.not_after = rcgen::date_time_ymd(2031, 5, 6);
        p.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn name_is_the_subject_cn() {
        assert_eq!(
            peer_name(&cert_with(&["hv01"], &["other"])).unwrap(),
            "hv01"
        );
    }

    #[test]
    fn without_cn_the_single_dns_san_names_the_sender() {
        assert_eq!(
            peer_name(&cert_with(&[], &["hv02", "10.0.0.1"])).unwrap(),
            "hv02"
        );
    }

    // (rcgen keeps one CN per subject, so the several-CNs branch is not generated here.)
    #[test]
    fn ambiguous_or_missing_names_are_refused() {
        for (cn, sans, msg) in [
            (&[][..], &["a", "b"][..], "several DNS SANs"),
            (&[][..], &["10.0.0.1"][..], "no subject CN and no DNS SAN"),
            (&[][..], &[][..], "no subject CN and no DNS SAN"),
        ] {
            let e = peer_name(&cert_with(cn, sans)).unwrap_err();
            assert!(e.to_string().contains(msg), "{e}");
            assert!(!e.is_transient());
        }
    }

    #[test]
    fn names_unsafe_as_labels_are_refused() {
        let e = peer_name(&cert_with(&["../etc"], &[])).unwrap_err();
        assert!(e.to_string().contains("only letters, digits"), "{e}");
        let e = peer_name(&cert_with(&["receiver"], &[])).unwrap_err();
        assert!(e.to_string().contains("reserved"), "{e}");
    }

    #[test]
    fn not_after_is_unix_seconds() {
        // 2031-05-06T00:00:00Z
        assert_eq!(
            not_after_unix(&cert_with(&["x"], &[])).unwrap(),
            1_935_792_000
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&b""[..], b"\x30", b"\x30\x82\xff\xff", b"not a certificate"] {
            let der = CertificateDer::from(bytes.to_vec());
            assert!(peer_name(&der).is_err());
            assert!(not_after_unix(&der).is_err());
        }
    }
}
