//! The receiver's endpoint over real QUIC and TLS on 127.0.0.1.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;
use crate::tls::config::{receiver_quic, sender_quic, ReceiverFiles, SenderFiles};

/// A restarted receiver (same port, same key, no memory of the connection) resets the
/// sender's connection at once with its short connection ids, instead of leaving it to the
/// 15 s idle timeout.
#[tokio::test]
async fn a_restarted_receiver_resets_a_stale_connection_at_once() {
    let t = tempfile::tempdir().unwrap();
    crate::tls::certs::init(t.path(), &["hv01".into()], &[], 30, false).unwrap();
    let rf = ReceiverFiles::in_dir(t.path());
    let key = || Some(StatelessResetKey::derive(&std::fs::read(&rf.key).unwrap()));
    // The first receiver runs on its own runtime, so it can die the way a killed process
    // does: runtime gone first (nothing more is sent), then its socket closes.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (die_tx, die_rx) = std::sync::mpsc::channel::<()>();
    let first = std::thread::spawn({
        let rf = rf.clone();
        move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let (server, served) = rt.block_on(async {
                let server = server_endpoint_with_reset_key(
                    "127.0.0.1:0".parse().unwrap(),
                    receiver_quic(&rf).unwrap(),
                    Some(StatelessResetKey::derive(&std::fs::read(&rf.key).unwrap())),
                )
                .unwrap();
                addr_tx.send(server.local_addr().unwrap()).unwrap();
                let served = server.accept().await.unwrap().await.unwrap();
                (server, served)
            });
            die_rx.recv().unwrap();
            drop(rt);
            drop((served, server));
        }
    });
    let addr = addr_rx.recv().unwrap();
    let client = client_endpoint(
        addr,
        sender_quic(&SenderFiles::in_dir(t.path(), "hv01")).unwrap(),
    )
    .unwrap();
    let conn = client.connect(addr, "localhost").unwrap().await.unwrap();
    die_tx.send(()).unwrap();
    first.join().unwrap();
    let again = server_endpoint_with_reset_key(addr, receiver_quic(&rf).unwrap(), key()).unwrap();
    let t0 = crate::clock::std_now();
    // The sender's next packet reaches the new endpoint, which answers with a reset.
    // (Its acknowledgements may have drawn the reset already.)
    if let Ok(mut s) = conn.open_uni().await {
        let _ = s.write_all(b"extent").await;
    }
    let err = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("connection still open 5 s after the receiver restarted");
    assert!(
        matches!(err, quinn::ConnectionError::Reset),
        "closed by {err:?}, not a stateless reset"
    );
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    drop(again);
}

/// A receiver's bounds hold for its connections, also for those made after a renewed
/// certificate was taken: a sender gets no more streams than the bound at once (the others
/// wait for stream credit), which is what keeps the receiver's frame budget from
/// deadlocking QUIC's flow control (`receiver::limits`).
#[tokio::test]
async fn a_bounded_receiver_grants_its_stream_credit_also_after_a_renewal() {
    let t = tempfile::tempdir().unwrap();
    crate::tls::certs::init(t.path(), &["hv01".into()], &[], 30, false).unwrap();
    let rf = ReceiverFiles::in_dir(t.path());
    let bounds = ServerBounds {
        receive_window: 1 << 20,
        stream_window: 64 << 10,
        max_streams: 2,
        send_window: 256 << 10,
        max_incoming: 4,
    };
    let server = server_endpoint_bounded(
        "127.0.0.1:0".parse().unwrap(),
        receiver_quic(&rf).unwrap(),
        None,
        bounds,
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    let accept = {
        let server = server.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some(inc) = server.accept().await {
                if let Ok(c) = inc.await {
                    held.push(c);
                }
            }
        })
    };
    let client = client_endpoint(
        addr,
        sender_quic(&SenderFiles::in_dir(t.path(), "hv01")).unwrap(),
    )
    .unwrap();
    // Streams open at once on one connection before the third waits.
    async fn streams_at_once(client: &quinn::Endpoint, addr: std::net::SocketAddr) -> usize {
        let conn = client.connect(addr, "localhost").unwrap().await.unwrap();
        let mut open = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_millis(300), conn.open_bi()).await {
                Ok(Ok((mut s, r))) => {
                    s.write_all(b"x").await.unwrap();
                    open.push((s, r));
                }
                Ok(Err(e)) => panic!("{e}"),
                Err(_) => return open.len(),
            }
            assert!(open.len() <= 16, "no bound on streams");
        }
    }
    assert_eq!(streams_at_once(&client, addr).await, 2);
    replace_server_config_bounded(&server, receiver_quic(&rf).unwrap(), bounds);
    assert_eq!(streams_at_once(&client, addr).await, 2, "after a renewal");
    accept.abort();
}

/// A receiver on 127.0.0.1 that reads everything sent on its streams, and a sender's
/// connection to it with the transport settings [`client_config`] gives for
/// `peer_for_config` (loopback, or a peer elsewhere).
async fn bulk_pair(
    t: &std::path::Path,
    peer_for_config: SocketAddr,
) -> (quinn::Endpoint, quinn::Endpoint, quinn::Connection) {
    crate::tls::certs::init(t, &["hv01".into()], &[], 30, false).unwrap();
    let server = server_endpoint(
        "127.0.0.1:0".parse().unwrap(),
        receiver_quic(&ReceiverFiles::in_dir(t)).unwrap(),
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn({
        let server = server.clone();
        async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            while let Ok((_s, mut r)) = conn.accept_bi().await {
                tokio::spawn(async move {
                    while let Ok(Some(_)) = r.read_chunk(1 << 20, true).await {}
                });
            }
        }
    });
    let sender = sender_quic(&SenderFiles::in_dir(t, "hv01")).unwrap();
    let client = client_endpoint(addr, sender.clone()).unwrap();
    let conn = client
        .connect_with(client_config(peer_for_config, sender), addr, "localhost")
        .unwrap()
        .await
        .unwrap();
    (server, client, conn)
}

/// Sends `mib` MiB on a new stream of `conn` and waits until the peer has all of it.
async fn send_mib(conn: &quinn::Connection, mib: usize) {
    let (mut s, _r) = conn.open_bi().await.unwrap();
    let chunk = bytes::Bytes::from(vec![7u8; 1 << 20]);
    for _ in 0..mib {
        s.write_chunk(chunk.clone()).await.unwrap();
    }
    s.finish().unwrap();
    s.stopped().await.unwrap();
}

/// Bulk data leaves in GSO batches of more than quinn's upstream 10 datagrams
/// (`dataplane/vendor/quinn`, up to 44 of 1,472 bytes): each batch is one `sendmsg` and one
/// receive at the peer, which is what the CPU of both ends scales with. On the Ethernet
/// bound (the configuration for a peer that is not on this host).
#[tokio::test]
async fn bulk_data_leaves_in_gso_batches_of_more_than_ten_datagrams() {
    let t = tempfile::tempdir().unwrap();
    let (_server, _client, conn) = bulk_pair(t.path(), "192.0.2.1:7400".parse().unwrap()).await;
    send_mib(&conn, 32).await;
    let s = conn.stats();
    assert!(s.path.current_mtu <= IPV4_MAX_UDP_PAYLOAD, "{:?}", s.path);
    let per_io = s.udp_tx.datagrams as f64 / s.udp_tx.ios as f64;
    assert!(
        per_io > 10.0,
        "{per_io:.1} datagrams per sendmsg: {:?}",
        s.udp_tx
    );
}

/// A sender whose receiver is on the same host finds datagrams larger than Ethernet's
/// (loopback's MTU is 64 KiB; QUIC's CPU is per datagram): [`LOOPBACK_MAX_UDP_PAYLOAD`].
#[tokio::test]
async fn a_loopback_connection_sends_datagrams_larger_than_ethernet_frames() {
    let t = tempfile::tempdir().unwrap();
    let (_server, _client, conn) = bulk_pair(t.path(), "127.0.0.1:7400".parse().unwrap()).await;
    let t0 = crate::clock::std_now();
    while conn.stats().path.current_mtu <= IPV4_MAX_UDP_PAYLOAD {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "path MTU still {} after 20 s",
            conn.stats().path.current_mtu
        );
        send_mib(&conn, 4).await;
    }
    assert!(conn.stats().path.current_mtu <= LOOPBACK_MAX_UDP_PAYLOAD);
}
