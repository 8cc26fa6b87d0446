//! What a failed TLS handshake means for an operator: which side refused what, and the fix.
//! quinn reports this sender's own refusal of the receiver's certificate as a local
//! transport error with a crypto code and rustls's reason; the receiver's refusal of this
//! sender's certificate arrives as the peer's CONNECTION_CLOSE with a crypto code (the TLS
//! alert). Without this, both read as "the handshake failed", and an operator looks at the
//! wrong machine.

/// QUIC's crypto error codes: 0x100 + the TLS alert.
const CRYPTO: std::ops::Range<u64> = 0x100..0x200;

/// Advice for a connection that failed in the TLS handshake; `None` for other failures.
pub fn for_connection(e: &quinn::ConnectionError) -> Option<&'static str> {
    match e {
        quinn::ConnectionError::TransportError(t) if CRYPTO.contains(&u64::from(t.code)) => {
            let r = t.reason.to_ascii_lowercase();
            Some(if r.contains("not valid for name") {
                "this sender refused the receiver's certificate: it is not issued for the host \
                 name in --to; re-issue it with `vdrep certs init ... --host NAME`, or give one of \
                 its names with --server-name"
            } else if r.contains("unknownissuer") || r.contains("unknown issuer") {
                "this sender refused the receiver's certificate: the CA in --tls (ca.pem) did \
                 not sign it; give the sender the receiver's ca.pem"
            } else if r.contains("expired") || r.contains("not valid yet") {
                "this sender refused the receiver's certificate: it has expired or is not valid \
                 yet; renew it on the receiver"
            } else {
                "this sender refused the receiver's TLS handshake: check the certificates in \
                 --tls on both ends"
            })
        }
        quinn::ConnectionError::ConnectionClosed(c)
            if CRYPTO.contains(&u64::from(c.error_code)) =>
        {
            Some(
                "the receiver refused this sender's certificate: it must be signed by the \
                 receiver's CA and not expired; issue one with `vdrep certs add-sender` on the \
                 machine holding ca.key",
            )
        }
        _ => None,
    }
}

/// `" (ADVICE)"` for a handshake failure, empty otherwise: the tail of the error line.
pub fn suffix(e: &quinn::ConnectionError) -> String {
    for_connection(e)
        .map(|a| format!(" ({a})"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    // This sender's own refusal (a local transport error, whose type quinn does not
    // re-export) is tested end to end: tests/tests/certs.rs.
    use super::*;

    #[test]
    fn the_receivers_refusal_points_at_the_senders_certificate() {
        let e = quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: quinn::TransportErrorCode::crypto(48),
            frame_type: None,
            reason: bytes::Bytes::new(),
        });
        assert!(for_connection(&e)
            .unwrap()
            .starts_with("the receiver refused this sender's certificate"));
        assert_eq!(suffix(&quinn::ConnectionError::TimedOut), "");
    }
}
