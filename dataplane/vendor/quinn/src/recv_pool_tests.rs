//! vdrep: tests of the endpoint's receive pool (`recv_pool.rs`).

use std::net::UdpSocket;

use bytes::{Bytes, BytesMut};
use udp::{RecvMeta, Transmit, UdpSocketState};

use super::{MIN_ARENA_SIZE, RecvPool, USUAL_MSG_SIZE};

const SLOTS: usize = 4;

/// A message of `len` bytes, each telling its message and place.
fn pattern(msg: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| msg.wrapping_mul(31) ^ (i as u8)).collect()
}

/// Receives `msgs` as a kernel would: each written at the start of its slot's buffer.
fn receive(pool: &mut RecvPool, msgs: &[Vec<u8>]) -> Vec<BytesMut> {
    {
        let mut iovs = pool.iovs::<SLOTS>();
        for (iov, m) in iovs.iter_mut().zip(msgs) {
            let n = m.len().min(iov.len());
            iov[..n].copy_from_slice(&m[..n]);
        }
    }
    msgs.iter()
        .enumerate()
        .map(|(i, m)| pool.take(i, m.len()))
        .collect()
}

#[test]
fn messages_of_several_datagrams_become_their_buffers_unchanged() {
    let mut pool = RecvPool::new(SLOTS, 1472 * 64, usize::MAX);
    let stride = 1472;
    for round in 0..40u8 {
        let msgs: Vec<Vec<u8>> = (0..SLOTS as u8)
            .map(|m| pattern(round ^ m, stride * (1 + m as usize * 13) - 7 * m as usize))
            .collect();
        let got = receive(&mut pool, &msgs);
        for (mut data, want) in got.into_iter().zip(&msgs) {
            assert_eq!(&data[..], &want[..]);
            // The endpoint splits a message into its datagrams; each keeps its bytes.
            let mut at = 0;
            while !data.is_empty() {
                let d = data.split_to(stride.min(data.len()));
                assert_eq!(&d[..], &want[at..at + d.len()]);
                at += d.len();
            }
            assert_eq!(at, want.len());
        }
    }
    assert_eq!(pool.copied(), 0);
}

#[test]
fn a_message_still_held_keeps_its_bytes_through_later_receives() {
    let mut pool = RecvPool::new(SLOTS, 1472 * 64, usize::MAX);
    let first = pattern(1, 60_000);
    let held: Bytes = receive(&mut pool, std::slice::from_ref(&first))
        .pop()
        .unwrap()
        .freeze();
    // Enough later messages through the same slot to fill its arena several times over:
    // none may land on the held bytes.
    for round in 0..200u8 {
        let later = pattern(round.wrapping_add(2), 65_000);
        let got = receive(&mut pool, std::slice::from_ref(&later));
        assert_eq!(&got[0][..], &later[..]);
        assert_eq!(&held[..], &first[..], "round {round}");
    }
    assert!(
        pool.live_bytes() >= MIN_ARENA_SIZE,
        "the held message's arena is counted while it lives"
    );
    drop(held);
    assert_eq!(pool.live_bytes(), 0, "and forgotten once dropped");
}

#[test]
fn a_message_that_fills_its_buffer_makes_the_buffers_as_large_as_a_message_may_be() {
    let max_msg = 16_384 * 64;
    let mut pool = RecvPool::new(SLOTS, max_msg, usize::MAX);
    assert_eq!(pool.msg_size(), USUAL_MSG_SIZE);
    // A kernel that merges more than 64 KiB cuts the message at the buffer's end and says
    // so only by its length: the bytes that arrived are delivered as they are.
    let cut = pattern(9, USUAL_MSG_SIZE + 5_000);
    let got = receive(&mut pool, std::slice::from_ref(&cut));
    assert_eq!(&got[0][..], &cut[..USUAL_MSG_SIZE]);
    assert_eq!(pool.msg_size(), max_msg);
    assert!(pool.iovs::<SLOTS>().iter().all(|iov| iov.len() == max_msg));
    // From then on such a message arrives whole, beside a held one in the same slot.
    let held = receive(&mut pool, &[pattern(3, 100)]).pop().unwrap();
    let big = pattern(10, max_msg);
    let got = receive(&mut pool, std::slice::from_ref(&big));
    assert_eq!(&got[0][..], &big[..]);
    assert_eq!(&held[..], &pattern(3, 100)[..]);
}

#[test]
fn past_the_live_limit_messages_are_copied_until_held_arenas_are_dropped() {
    let limit = 4 * MIN_ARENA_SIZE;
    let mut pool = RecvPool::new(SLOTS, 1472 * 64, limit);
    let mut held = Vec::new();
    let mut round = 0u8;
    while pool.copied() == 0 {
        round = round.wrapping_add(1);
        let msgs: Vec<Vec<u8>> = (0..SLOTS as u8)
            .map(|m| pattern(round ^ m, 64_000))
            .collect();
        for (data, want) in receive(&mut pool, &msgs).into_iter().zip(&msgs) {
            assert_eq!(&data[..], &want[..]);
            held.push(data);
        }
        assert!(held.len() < 1_000, "the live limit never applied");
    }
    // Past the limit, by at most one arena per slot, and not growing.
    let live = pool.live_bytes();
    assert!(
        live > limit && live <= limit + SLOTS * MIN_ARENA_SIZE,
        "{live}"
    );
    for _ in 0..50 {
        let msgs = vec![pattern(7, 64_000); SLOTS];
        for data in receive(&mut pool, &msgs) {
            assert_eq!(&data[..], &msgs[0][..]);
            held.push(data);
        }
    }
    assert_eq!(pool.live_bytes(), live);
    let copied = pool.copied();
    drop(held);
    let got = receive(&mut pool, &[pattern(8, 64_000)]);
    assert_eq!(&got[0][..], &pattern(8, 64_000)[..]);
    assert_eq!(
        pool.copied(),
        copied,
        "carving again once the arenas are freed"
    );
    assert_eq!(pool.live_bytes(), 0);
}

/// Through a real socket: GSO batches sent on loopback arrive (with GRO where the kernel
/// has it) in the pool's buffers, message after message, while earlier ones are held.
#[test]
fn gso_batches_on_loopback_arrive_whole_in_the_pools_buffers() {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rx_state = UdpSocketState::new((&rx).into()).unwrap();
    let tx_state = UdpSocketState::new((&tx).into()).unwrap();
    rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let stride = 1_200;
    // At most one UDP payload per GSO send (the kernel refuses more).
    let segments = tx_state
        .max_gso_segments()
        .min(rx_state.gro_segments())
        .min(65_000 / stride)
        .max(1);
    let max_msg = stride * rx_state.gro_segments();
    let mut pool = RecvPool::new(udp::BATCH_SIZE, max_msg, usize::MAX);
    let mut held = Vec::new();
    let mut sent = Vec::new();
    let mut received = Vec::new();
    for batch in 0..60u8 {
        let contents: Vec<u8> = (0..segments)
            .flat_map(|s| pattern(batch.wrapping_mul(7) ^ s as u8, stride))
            .collect();
        tx_state
            .try_send(
                (&tx).into(),
                &Transmit {
                    destination: rx.local_addr().unwrap(),
                    ecn: None,
                    contents: &contents,
                    segment_size: (segments > 1).then_some(stride),
                    src_ip: None,
                },
            )
            .unwrap();
        sent.extend(contents.chunks(stride).map(<[u8]>::to_vec));
        while received.len() < sent.len() {
            let mut metas = [RecvMeta::default(); udp::BATCH_SIZE];
            let msgs = {
                let mut iovs = pool.iovs::<{ udp::BATCH_SIZE }>();
                rx_state.recv((&rx).into(), &mut iovs, &mut metas).unwrap()
            };
            for (i, meta) in metas.iter().enumerate().take(msgs) {
                let mut data = pool.take(i, meta.len);
                while !data.is_empty() {
                    let d = data.split_to(meta.stride.min(data.len()));
                    received.push(d.to_vec());
                    held.push(d);
                }
            }
        }
    }
    assert_eq!(received, sent);
    let again: Vec<Vec<u8>> = held.iter().map(|d| d.to_vec()).collect();
    assert_eq!(again, sent, "held datagrams unchanged by later receives");
    assert!(pool.live_bytes() > 0, "held datagrams keep their arenas");
}
