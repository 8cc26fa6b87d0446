//! A renewed certificate without restart: before each connection attempt the sender checks
//! its certificate files (`metrics::certs::FileWatch`) and, when they changed, installs them
//! for the next connections; the connection in use keeps the one it was made with.

use tracing::{info, warn};

/// Installs the sender's changed certificate files for the next connections and exports
/// their expiry; files that do not load are logged and the certificate in use stays.
pub(super) fn reload_client_certificate(
    endpoint: &mut quinn::Endpoint,
    addr: std::net::SocketAddr,
    files: &crate::tls::config::SenderFiles,
) {
    match crate::tls::config::sender_quic(files) {
        Ok(cfg) => {
            endpoint.set_default_client_config(crate::transport::client_config(addr, cfg));
            crate::metrics::certs::export_files(&files.ca, &files.cert);
            info!(cert = %files.cert.display(), "certificate files changed: reloaded");
        }
        Err(e) => warn!(cert = %files.cert.display(), error = %e,
                        "certificate files changed but do not load; keeping the certificate in use"),
    }
}
