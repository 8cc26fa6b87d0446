//! A test-only QUIC relay that sits between a real sender and a real receiver and corrupts
//! extent payloads on the wire, so the tests can show that BLAKE3 catches corruption that
//! QUIC's own packet protection cannot (the relay is a TLS endpoint on both sides, like a
//! compromised middlebox or a bad NIC behind TLS offload).
//!
//! It terminates QUIC on both sides with vdrep's own TLS configurations: towards the sender
//! it presents the receiver's certificate, towards the receiver the sender's (it has both in
//! the test's certificate folder). Every bidirectional stream the sender opens is mirrored
//! upstream; receiver→sender bytes pass untouched; sender→receiver bytes are parsed as
//! frames and, in every `every`-th extent frame, one payload bit is flipped, but only the
//! first time an offset passes, so the sender's resend heals it.

mod pump;
pub mod udp;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vdrep::tls::config::{receiver_quic, sender_quic, ReceiverFiles, SenderFiles};

/// What the relay corrupts and has corrupted.
#[derive(Default)]
pub struct Corruption {
    /// Flip a bit in every n-th extent frame (0: never).
    pub every: u64,
    /// Extent frames seen.
    pub extents: AtomicU64,
    /// Payloads corrupted.
    pub flipped: AtomicU64,
    /// Offsets corrupted once (never again).
    pub offsets: Mutex<HashSet<u64>>,
}

/// A running relay; dropping it stops it.
pub struct Relay {
    /// Where senders connect (`--to`).
    pub addr: SocketAddr,
    /// Counters.
    pub corruption: Arc<Corruption>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Relay {
    /// Listens on 127.0.0.1 and forwards to `upstream`, posing as the receiver towards
    /// senders and as sender `identity` towards the receiver (certificates from `tls`).
    pub fn start(tls: &Path, identity: &str, upstream: SocketAddr, every: u64) -> Relay {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let corruption = Arc::new(Corruption {
            every,
            ..Default::default()
        });
        let server_cfg = receiver_quic(&ReceiverFiles::in_dir(tls)).expect("relay server TLS");
        let client_cfg =
            sender_quic(&SenderFiles::in_dir(tls, identity)).expect("relay client TLS");
        let c = corruption.clone();
        let addr = rt.block_on(async move {
            let server =
                vdrep::transport::server_endpoint("127.0.0.1:0".parse().unwrap(), server_cfg)
                    .expect("relay listen");
            let client =
                vdrep::transport::client_endpoint(upstream, client_cfg).expect("relay client");
            let addr = server.local_addr().unwrap();
            tokio::spawn(accept_loop(server, client, upstream, c));
            addr
        });
        Relay {
            addr,
            corruption,
            rt: Some(rt),
        }
    }

    /// Payloads corrupted so far.
    pub fn flipped(&self) -> u64 {
        self.corruption.flipped.load(Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn accept_loop(
    server: quinn::Endpoint,
    client: quinn::Endpoint,
    upstream: SocketAddr,
    corruption: Arc<Corruption>,
) {
    while let Some(incoming) = server.accept().await {
        let client = client.clone();
        let c = corruption.clone();
        tokio::spawn(async move {
            let Ok(down) = incoming.await else { return };
            let up = match client.connect(upstream, "127.0.0.1") {
                Ok(connecting) => match connecting.await {
                    Ok(up) => up,
                    Err(e) => {
                        down.close(9u32.into(), format!("relay: upstream: {e}").as_bytes());
                        return;
                    }
                },
                Err(e) => {
                    down.close(9u32.into(), format!("relay: upstream: {e}").as_bytes());
                    return;
                }
            };
            relay_connection(down, up, c).await;
        });
    }
}

/// Mirrors the sender's streams upstream until either side closes; a close on one side is
/// passed on with its code and reason, so the sender sees the receiver's refusals.
async fn relay_connection(down: quinn::Connection, up: quinn::Connection, c: Arc<Corruption>) {
    {
        let (down, up) = (down.clone(), up.clone());
        tokio::spawn(async move {
            if let quinn::ConnectionError::ApplicationClosed(a) = up.closed().await {
                down.close(a.error_code, &a.reason);
            } else {
                down.close(9u32.into(), b"relay: upstream lost");
            }
        });
    }
    loop {
        let (ds, dr) = match down.accept_bi().await {
            Ok(s) => s,
            Err(quinn::ConnectionError::ApplicationClosed(a)) => {
                up.close(a.error_code, &a.reason);
                return;
            }
            Err(_) => {
                up.close(9u32.into(), b"relay: sender lost");
                return;
            }
        };
        let (us, ur) = match up.open_bi().await {
            Ok(s) => s,
            Err(_) => return,
        };
        tokio::spawn(pump::frames(dr, us, c.clone()));
        tokio::spawn(pump::bytes(ur, ds));
    }
}
