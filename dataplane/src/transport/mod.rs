//! QUIC transport: endpoints tuned for bulk transfer, and frame IO on quinn streams.
//!
//! One connection per sender; its control and data streams carry the frames of
//! `vdrep_proto::wire`. Socket buffers are raised to 8 MiB (the default ~208 KiB drops packets
//! at GB/s rates, DESIGN.md §5) and stream windows sized for bandwidth × RTT rather than as
//! large as possible, which hurts on loopback. Congestion control is quinn's CUBIC unless
//! `VDREP_QUIC_CONGESTION=bbr` (see `congestion_controller`: 13× the goodput on a lossy WAN).

pub mod close;
mod frames;
mod window;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

pub use frames::{
    joined, read_body, read_body_parts, read_frame, read_frame_header, write_frame, FrameError,
};
pub use window::{send_window_for, SendWindowGuard, MIN_SEND_WINDOW};

/// Socket buffer size asked of the kernel.
pub const SOCKET_BUFFER: usize = 8 << 20;

/// Bytes a connection may have in flight (and buffered at the receiver) across all its
/// streams. 32 MiB is bandwidth × RTT for 2.7 Gbit/s at 100 ms. It is also the most a
/// receiver that falls behind (Azure slower than the link) holds for one sender, whatever
/// `--threads` says: with 64 MiB the receiver into Azurite peaked 14 MiB higher at the
/// same throughput (`bench/README.md`, "Peak RSS"); each stream stays at 8 MiB.
pub const CONNECTION_WINDOW: usize = 32 << 20;

/// The async runtime of the network roles: two worker threads suffice (the CPU stages have
/// their own threads) and keep the process small.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// Transport parameters shared by both ends.
pub fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(256u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window((8u32 << 20).into())
        .receive_window((CONNECTION_WINDOW as u32).into())
        .send_window(CONNECTION_WINDOW as u64)
        .keep_alive_interval(Some(Duration::from_secs(2)))
        .max_idle_timeout(Some(
            Duration::from_secs(15)
                .try_into()
                .expect("15 s is a valid idle timeout"),
        ));
    t.congestion_controller_factory(congestion_controller());
    t.ack_frequency_config(Some(ack_frequency()));
    t
}

/// Ack-eliciting packets the peer may receive before it must acknowledge (QUIC ACK
/// frequency extension, which both ends of vdrep speak).
///
/// Without it the receiver acknowledges every other packet: one ACK datagram (a
/// `sendmsg`, a decryption and loss-detection work at the sender) per two data packets,
/// which dominates the CPU of both ends wherever a link spreads packets out (paced or
/// throttled links, where GSO and GRO batch little). Measured (issue 21, session 9, level
/// 0, bench mix): at 100 Mbit/s on the bench's veth link the sender's CPU per GiB fell
/// from 4.29 to 3.33 s and the receiver's from 5.17 to 4.34 s; on loopback into tmpfs the
/// copy went from 248/228 to 349/338 MB/s. Ten matches quinn's largest GSO batch; a lost
/// packet still draws an ACK at once (the reordering threshold keeps its default of 2,
/// `packet_threshold − 1`), and the peer's `max_ack_delay` still bounds how late an ACK is.
pub const ACK_ELICITING_THRESHOLD: u32 = 10;

fn ack_frequency() -> quinn::AckFrequencyConfig {
    let mut a = quinn::AckFrequencyConfig::default();
    a.ack_eliciting_threshold(ACK_ELICITING_THRESHOLD.into());
    a
}

/// The environment variable that chooses the congestion controller: `cubic` (quinn's
/// default, also when unset), `bbr` or `newreno`. Read by both ends; the sender's matters.
pub const CONGESTION_ENV: &str = "VDREP_QUIC_CONGESTION";

/// CUBIC unless `VDREP_QUIC_CONGESTION` says otherwise. Loss-based controllers (CUBIC,
/// NewReno) halve their window on every lost packet, so 1 % random loss on a 100 ms path
/// holds them near MSS/RTT × 1.22/√p ≈ 1.2 Mbit/s (Mathis); BBR paces at the measured
/// bottleneck rate and keeps the queue near one bandwidth-delay product. On that path BBR
/// is 13× faster (`bench/results/wan.md`), but it is not the default yet: quinn calls it
/// experimental, and at start-up it lets the wire overshoot the throttle's limit (up to
/// +55 % in a 1-second window at 50 Mbit/s with 96 streams, where the bandwidth issue
/// allows +10 %), which the long throttle matrix catches.
fn congestion_controller() -> Arc<dyn quinn::congestion::ControllerFactory + Send + Sync> {
    use quinn::congestion::{BbrConfig, CubicConfig, NewRenoConfig};
    match std::env::var(CONGESTION_ENV).as_deref() {
        Ok("bbr") => Arc::new(BbrConfig::default()),
        Ok("newreno") => Arc::new(NewRenoConfig::default()),
        Ok("cubic") | Ok("") | Err(_) => Arc::new(CubicConfig::default()),
        Ok(other) => {
            tracing::warn!(
                value = other,
                "{CONGESTION_ENV}: not cubic, bbr or newreno; using cubic"
            );
            Arc::new(CubicConfig::default())
        }
    }
}

/// Binds a UDP socket with large buffers. As root SO_*BUFFORCE lifts the sysctl cap; else
/// the kernel grants what `net.core.[rw]mem_max` allows and we log what we got.
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let sock = UdpSocket::bind(addr)?;
    set_buffers(&sock);
    Ok(sock)
}

fn set_buffers(sock: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let fd = sock.as_raw_fd();
    let v = SOCKET_BUFFER as libc::c_int;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        // SAFETY: setsockopt with a valid fd and a pointer to a c_int of the given size.
        let ok = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                force,
                &v as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        } == 0;
        if !ok {
            // SAFETY: as above.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    plain,
                    &v as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }
}

/// A server endpoint on `addr` with a random stateless-reset key.
pub fn server_endpoint(
    addr: SocketAddr,
    cfg: quinn::ServerConfig,
) -> std::io::Result<quinn::Endpoint> {
    server_endpoint_with_reset_key(addr, cfg, None)
}

/// The key of QUIC stateless resets, keyed BLAKE3 over the connection id.
///
/// quinn draws a random key per process by default, so after a receiver restarts (crash,
/// kill -9, upgrade) its resets carry tokens the sender does not know and are ignored: the
/// sender then waits out the 15 s idle timeout before it reconnects. A key derived from
/// something stable (the receiver's private key) makes the restarted receiver's reset
/// effective at once, and lets receivers behind one UDP load balancer reset each other's
/// connections.
pub struct StatelessResetKey([u8; 32]);

impl StatelessResetKey {
    /// Derives the key from secret material (never used for anything else).
    pub fn derive(secret: &[u8]) -> Self {
        StatelessResetKey(blake3::derive_key(
            "vdrep 1 QUIC stateless reset key",
            secret,
        ))
    }
}

impl quinn::crypto::HmacKey for StatelessResetKey {
    fn sign(&self, data: &[u8], out: &mut [u8]) {
        let mac = blake3::keyed_hash(&self.0, data);
        let n = out.len().min(32);
        out[..n].copy_from_slice(&mac.as_bytes()[..n]);
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        // blake3::Hash compares in constant time.
        let mac = blake3::keyed_hash(&self.0, data);
        match <[u8; 32]>::try_from(signature) {
            Ok(sig) if mac == blake3::Hash::from(sig) => Ok(()),
            _ => Err(quinn::crypto::CryptoError),
        }
    }
}

/// Random 4-byte connection ids, valid for any endpoint instance. Every datagram a sender
/// sends carries the receiver's id: 4 bytes instead of quinn's 8 are 0.27 % of a full
/// 1494-byte packet on the link (bench/results/ANALYSIS.md, session 5). A receiver holds a
/// few connections per sender, so 2^32 ids are plenty: quinn draws again on a collision,
/// and ids route packets, they do not authenticate them (packet protection and the keyed
/// stateless-reset tokens do).
struct RandomCids;

/// Length of [`RandomCids`].
const CID_LEN: usize = 4;

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        quinn::ConnectionId::new(&rand::random::<[u8; CID_LEN]>())
    }
    fn cid_len(&self) -> usize {
        CID_LEN
    }
    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// A server endpoint on `addr`; with `reset_key`, stateless resets stay valid across
/// restarts (see [`StatelessResetKey`]).
pub fn server_endpoint_with_reset_key(
    addr: SocketAddr,
    mut cfg: quinn::ServerConfig,
    reset_key: Option<StatelessResetKey>,
) -> std::io::Result<quinn::Endpoint> {
    cfg.transport_config(Arc::new(transport_config()));
    endpoint_with(addr, cfg, reset_key)
}

/// What a receiver bounds in its transport (see `receiver::limits`).
#[derive(Debug, Clone, Copy)]
pub struct ServerBounds {
    /// The receive window of each connection.
    pub receive_window: u64,
    /// The receive window of each stream.
    pub stream_window: u64,
    /// Streams a connection may have open at once (QUIC stream credit). With
    /// `max_streams × stream_window ≤ receive_window`, bytes waiting in streams the
    /// receiver does not read yet can never use up the connection's window.
    pub max_streams: u64,
    /// The send window of each connection.
    pub send_window: u64,
    /// Connections still in their handshake at once.
    pub max_incoming: usize,
}

impl ServerBounds {
    /// The transport parameters with these bounds.
    fn transport_config(&self) -> quinn::TransportConfig {
        let v = |n: u64| quinn::VarInt::from_u64(n).unwrap_or(quinn::VarInt::MAX);
        let mut t = transport_config();
        t.receive_window(v(self.receive_window))
            .stream_receive_window(v(self.stream_window))
            .max_concurrent_bidi_streams(v(self.max_streams))
            .send_window(self.send_window);
        t
    }

    /// The configuration of one connection accepted with these bounds
    /// (`Incoming::accept_with`): `base`'s TLS with these windows and streams.
    pub fn config(&self, base: quinn::ServerConfig) -> Arc<quinn::ServerConfig> {
        Arc::new(self.apply(base))
    }

    /// `cfg` with these bounds.
    fn apply(&self, mut cfg: quinn::ServerConfig) -> quinn::ServerConfig {
        cfg.transport_config(Arc::new(self.transport_config()));
        cfg.max_incoming(self.max_incoming);
        cfg
    }
}

/// [`server_endpoint_with_reset_key`] with a receiver's bounds on its windows, its streams
/// and the handshakes in progress.
pub fn server_endpoint_bounded(
    addr: SocketAddr,
    cfg: quinn::ServerConfig,
    reset_key: Option<StatelessResetKey>,
    b: ServerBounds,
) -> std::io::Result<quinn::Endpoint> {
    endpoint_with(addr, b.apply(cfg), reset_key)
}

/// [`replace_server_config`] for an endpoint made by [`server_endpoint_bounded`]: a renewed
/// certificate keeps the receiver's bounds (without them, connections made after the
/// renewal would get the default windows and streams, and the receiver's memory bound and
/// its freedom from flow-control deadlock would be gone).
pub fn replace_server_config_bounded(
    endpoint: &quinn::Endpoint,
    cfg: quinn::ServerConfig,
    b: ServerBounds,
) {
    endpoint.set_server_config(Some(b.apply(cfg)));
}

fn endpoint_with(
    addr: SocketAddr,
    cfg: quinn::ServerConfig,
    reset_key: Option<StatelessResetKey>,
) -> std::io::Result<quinn::Endpoint> {
    let sock = bind_udp(addr)?;
    let mut ep_cfg = match reset_key {
        Some(k) => {
            let mut c = quinn::EndpointConfig::new(Arc::new(k));
            // quinn's default generator signs CIDs with a per-process key and drops packets
            // of CIDs it cannot verify *before* answering with a reset; random CIDs let the
            // restarted endpoint answer every stray packet (resets are rate-limited by quinn).
            c.cid_generator(|| Box::new(RandomCids));
            c
        }
        None => quinn::EndpointConfig::default(),
    };
    // What a sender may send us, not what any sender sends: only a sender on the same host
    // looks for datagrams this large (`client_config`).
    ep_cfg
        .max_udp_payload_size(LOOPBACK_MAX_UDP_PAYLOAD)
        .expect("within QUIC's limits");
    quinn::Endpoint::new(ep_cfg, Some(cfg), sock, Arc::new(quinn::TokioRuntime))
}

/// Replaces a server endpoint's TLS configuration (a renewed certificate) with the same
/// transport settings [`server_endpoint_with_reset_key`] gives; connections already open keep
/// theirs, new handshakes get the new one.
pub fn replace_server_config(endpoint: &quinn::Endpoint, mut cfg: quinn::ServerConfig) {
    cfg.transport_config(Arc::new(transport_config()));
    endpoint.set_server_config(Some(cfg));
}

/// The largest UDP payload on a 1500-byte path over IPv4 (20 bytes IP, 8 bytes UDP).
const IPV4_MAX_UDP_PAYLOAD: u16 = 1500 - 20 - 8;

/// The largest datagram a sender looks for (QUIC path MTU discovery) when its receiver is on
/// the same host, and the largest a receiver accepts. Loopback's MTU is 64 KiB, and QUIC's
/// CPU is per datagram on both ends (packet building and parsing, acknowledgements, GSO
/// batches; bench/results/ANALYSIS.md, session 10): 16 KiB datagrams instead of 1,472-byte
/// ones cut the CPU of a loopback copy by about a third. Not larger: quinn's receive buffer
/// is this size × 64 GRO segments × 32 messages (32 MiB of address space at 16 KiB, touched
/// only as datagrams arrive). Other peers keep the Ethernet bound (`IPV4_MAX_UDP_PAYLOAD`).
pub const LOOPBACK_MAX_UDP_PAYLOAD: u16 = 16 << 10;

/// A client endpoint bound to an ephemeral port of the right address family.
pub fn client_endpoint(
    peer: SocketAddr,
    cfg: quinn::ClientConfig,
) -> std::io::Result<quinn::Endpoint> {
    let cfg = client_config(peer, cfg);
    let local: SocketAddr = if peer.is_ipv6() {
        "[::]:0".parse().expect("valid literal")
    } else {
        "0.0.0.0:0".parse().expect("valid literal")
    };
    let sock = bind_udp(local)?;
    let mut ep = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        sock,
        Arc::new(quinn::TokioRuntime),
    )?;
    ep.set_default_client_config(cfg);
    Ok(ep)
}

/// A client TLS configuration with the transport settings for `peer`: what
/// [`client_endpoint`] installs, and what a renewed certificate replaces it with
/// (`Endpoint::set_default_client_config`).
pub fn client_config(peer: SocketAddr, mut cfg: quinn::ClientConfig) -> quinn::ClientConfig {
    let mut t = transport_config();
    if peer.is_ipv4() {
        // quinn's path MTU discovery stops at 1452 bytes, IPv6's largest UDP payload on a
        // 1500-byte Ethernet path; over IPv4 it is 1472. The sender's datagrams carry the
        // data: 20 more bytes each are 0.19 % less on the link (fewer headers), and a path
        // that cannot take them just fails the probe.
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(IPV4_MAX_UDP_PAYLOAD);
        t.mtu_discovery_config(Some(mtu));
    }
    if peer.ip().is_loopback() {
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(LOOPBACK_MAX_UDP_PAYLOAD);
        t.mtu_discovery_config(Some(mtu));
    }
    cfg.transport_config(Arc::new(t));
    cfg
}

#[cfg(test)]
mod tests;
