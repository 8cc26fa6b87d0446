//! vdrep: bulk transfers through a link that loses, reorders and delays packets and ACKs.
//!
//! These exercise the sent-packet tracking and ACK processing that vdrep changed
//! (`connection/sent_packets.rs`, see `README.vdrep.md`) through a whole connection: every byte
//! must arrive once and in order, losses must be declared and repaired, ACKs of packets already
//! declared lost (spurious retransmits) must be ignored, and at the end nothing may stay in
//! flight.

use std::collections::VecDeque;

use rand::RngExt;
use rand_pcg::Pcg32;

use super::*;

/// What the simulated link does to short-header (1-RTT) packets; the handshake passes intact.
#[derive(Clone, Copy)]
struct Link {
    /// Per mille of client → server data packets dropped.
    data_loss: u32,
    /// Per mille of server → client packets (the ACKs) dropped.
    ack_loss: u32,
    /// Per mille of packets, either way, held back behind later ones.
    reorder: u32,
}

type Inbound = VecDeque<(Instant, Option<EcnCodepoint>, BytesMut)>;

/// Applies `loss` and `reorder` (per mille) to the packets appended to `queue` since it held
/// `old_len` entries. Held-back packets from the previous call go behind the new ones.
fn mangle(
    queue: &mut Inbound,
    old_len: usize,
    held: &mut Vec<(Instant, Option<EcnCodepoint>, BytesMut)>,
    rng: &mut Pcg32,
    loss: u32,
    reorder: u32,
) -> u64 {
    let released = mem::take(held);
    let new = queue.split_off(old_len);
    let mut dropped = 0;
    for entry in new {
        let short_header = entry.2[0] & 0x80 == 0;
        if short_header && rng.random_range(0..1000) < loss {
            dropped += 1;
            continue;
        }
        if short_header && rng.random_range(0..1000) < reorder {
            held.push(entry);
            continue;
        }
        queue.push_back(entry);
    }
    // A released packet arrives no earlier than the last packet queued before it, keeping the
    // queue in time order as `TestEndpoint::drive_incoming` expects.
    for (time, ecn, packet) in released {
        let after = queue.back().map_or(time, |last| last.0.max(time));
        queue.push_back((after, ecn, packet));
    }
    dropped
}

/// Sends `len` bytes on one unidirectional stream through `link`, reading them on the server as
/// they arrive, and returns what the server read and the client's connection statistics.
fn transfer(link: Link, len: usize, seed: u64) -> (Vec<u8>, Vec<u8>, ConnectionStats, u64, u64) {
    let _guard = subscribe();
    let mut pair = Pair::default();
    pair.latency = Duration::from_millis(5);
    let (client_ch, server_ch) = pair.connect();
    let msg = (0..len)
        .map(|i| (i * 7 + i / 251) as u8)
        .collect::<Vec<_>>();
    let s = pair.client_streams(client_ch).open(Dir::Uni).unwrap();

    let mut rng = Pcg32::new(seed, 0x0a02_bdbf_7bb3_c0a7);
    let (mut held_to_server, mut held_to_client) = (Vec::new(), Vec::new());
    let (mut dropped_data, mut dropped_acks) = (0, 0);
    let mut written = 0;
    let mut finished = false;
    let mut received = Vec::with_capacity(len);
    let mut accepted = false;
    let mut done = false;
    for _ in 0..200_000 {
        while written < len {
            match pair.client_send(client_ch, s).write(&msg[written..]) {
                Ok(n) => written += n,
                Err(WriteError::Blocked) => break,
                Err(e) => panic!("write at {written}: {e}"),
            }
        }
        if written == len && !finished {
            pair.client_send(client_ch, s).finish().unwrap();
            finished = true;
        }

        let old_len = pair.server.inbound.len();
        pair.drive_client();
        dropped_data += mangle(
            &mut pair.server.inbound,
            old_len,
            &mut held_to_server,
            &mut rng,
            link.data_loss,
            link.reorder,
        );
        let old_len = pair.client.inbound.len();
        pair.drive_server();
        dropped_acks += mangle(
            &mut pair.client.inbound,
            old_len,
            &mut held_to_client,
            &mut rng,
            link.ack_loss,
            link.reorder,
        );

        if !accepted {
            accepted = pair.server_streams(server_ch).accept(Dir::Uni) == Some(s);
        }
        if accepted && !done {
            let mut recv = pair.server_recv(server_ch, s);
            let mut chunks = recv.read(true).unwrap();
            loop {
                match chunks.next(usize::MAX) {
                    Ok(Some(chunk)) => {
                        assert_eq!(chunk.offset as usize, received.len(), "ordered read");
                        received.extend_from_slice(&chunk.bytes);
                    }
                    Ok(None) => {
                        done = true;
                        break;
                    }
                    Err(ReadError::Blocked) => break,
                    Err(e) => panic!("read at {}: {e}", received.len()),
                }
            }
            let _ = chunks.finalize();
        }

        let next = min_opt(pair.client.next_wakeup(), pair.server.next_wakeup());
        let next = min_opt(next, held_to_server.first().map(|x| x.0));
        let next = min_opt(next, held_to_client.first().map(|x| x.0));
        if done && pair.client_conn_mut(client_ch).bytes_in_flight() == 0 {
            break;
        }
        match next {
            Some(t) => pair.time = pair.time.max(t),
            None => break,
        }
    }
    // Let the last ACKs settle, losing nothing more.
    pair.drive();
    assert_eq!(
        pair.client_conn_mut(client_ch).bytes_in_flight(),
        0,
        "bytes in flight after the last ACK"
    );
    let stats = pair.client_conn_mut(client_ch).stats();
    (msg, received, stats, dropped_data, dropped_acks)
}

fn check(link: Link, seed: u64) -> ConnectionStats {
    let (sent, received, stats, dropped_data, dropped_acks) = transfer(link, 1_500_000, seed);
    assert_eq!(received.len(), sent.len(), "bytes received");
    assert!(received == sent, "the bytes differ");
    assert_eq!(dropped_data > 0, link.data_loss > 0);
    assert_eq!(dropped_acks > 0, link.ack_loss > 0);
    stats
}

#[test]
fn bulk_transfer_clean_link() {
    let stats = check(
        Link {
            data_loss: 0,
            ack_loss: 0,
            reorder: 0,
        },
        1,
    );
    assert_eq!(stats.path.lost_packets, 0);
}

#[test]
fn bulk_transfer_with_loss() {
    for seed in 1..4 {
        let stats = check(
            Link {
                data_loss: 30,
                ack_loss: 0,
                reorder: 0,
            },
            seed,
        );
        assert!(stats.path.lost_packets > 0, "losses declared");
    }
}

#[test]
fn bulk_transfer_with_reordering() {
    for seed in 1..4 {
        let stats = check(
            Link {
                data_loss: 0,
                ack_loss: 0,
                reorder: 50,
            },
            seed,
        );
        // Nothing was dropped: every loss declared was spurious, and its retransmission
        // and the late original are both acknowledged.
        assert!(stats.path.lost_packets > 0, "reordering declared losses");
    }
}

/// Lost ACKs make the sender declare delivered packets lost and send their data again; the
/// later ACKs of the originals then name packets no longer tracked.
#[test]
fn bulk_transfer_with_lost_acks() {
    for seed in 1..4 {
        let stats = check(
            Link {
                data_loss: 0,
                ack_loss: 300,
                reorder: 20,
            },
            seed,
        );
        assert!(stats.path.lost_packets > 0, "spurious losses declared");
    }
}

#[test]
fn bulk_transfer_with_everything() {
    for seed in 1..4 {
        let stats = check(
            Link {
                data_loss: 20,
                ack_loss: 100,
                reorder: 30,
            },
            seed,
        );
        assert!(stats.path.lost_packets > 0, "losses declared");
    }
}
