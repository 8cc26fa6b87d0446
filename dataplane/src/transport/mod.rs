//! QUIC transport: endpoints tuned for bulk transfer, and frame IO on quinn streams.
//!
//! One connection per sender; its control and data streams carry the frames of
//! `vdrep_proto::wire`. Socket buffers are raised to 8 MiB (the default ~208 KiB drops packets
//! at GB/s rates, DESIGN.md §5) and stream windows sized for bandwidth × RTT rather than as
//! large as possible, which hurts on loopback.

mod frames;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

pub use frames::{read_frame, write_frame, FrameError};

/// Socket buffer size asked of the kernel.
pub const SOCKET_BUFFER: usize = 8 << 20;

/// Transport parameters shared by both ends.
pub fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(256u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window((8u32 << 20).into())
        .receive_window((64u32 << 20).into())
        .send_window(64 << 20)
        .keep_alive_interval(Some(Duration::from_secs(2)))
        .max_idle_timeout(Some(
            Duration::from_secs(15)
                .try_into()
                .expect("15 s is a valid idle timeout"),
        ));
    t
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

/// A server endpoint on `addr`.
pub fn server_endpoint(
    addr: SocketAddr,
    mut cfg: quinn::ServerConfig,
) -> std::io::Result<quinn::Endpoint> {
    cfg.transport_config(Arc::new(transport_config()));
    let sock = bind_udp(addr)?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(cfg),
        sock,
        Arc::new(quinn::TokioRuntime),
    )
}

/// A client endpoint bound to an ephemeral port of the right address family.
pub fn client_endpoint(
    peer: SocketAddr,
    mut cfg: quinn::ClientConfig,
) -> std::io::Result<quinn::Endpoint> {
    cfg.transport_config(Arc::new(transport_config()));
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
