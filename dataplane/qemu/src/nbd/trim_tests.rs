//! Trims against scripted servers: the requests follow the protocol document, both reply
//! forms are taken, a server's error fails only its trim, and every hostile reply (data
//! for a trim, a simple reply after chunks, a cookie nobody has, random corruption) ends in
//! a protocol error, never a panic, also with reads in flight beside the trims.

use std::io::Cursor;

use super::client::NbdClient;
use super::error::NbdError;
use super::hostile_tests::{chunk, data_chunk, handshake_flags, Script, XorShift, BITMAP, SIZE};
use super::wire::*;
use super::ReadQueue;

/// `NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_TRIM`: writable, takes trims.
const TRIM_FLAGS: u16 = 1 | TFLAG_SEND_TRIM;

fn simple(errno: u32, cookie: u64) -> Vec<u8> {
    let mut b = SIMPLE_REPLY_MAGIC.to_be_bytes().to_vec();
    b.extend_from_slice(&errno.to_be_bytes());
    b.extend_from_slice(&cookie.to_be_bytes());
    b
}

fn error_chunk(cookie: u64, errno: u32, msg: &str) -> Vec<u8> {
    let mut e = errno.to_be_bytes().to_vec();
    e.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    e.extend_from_slice(msg.as_bytes());
    chunk(REPLY_FLAG_DONE, CHUNK_ERROR, cookie, &e)
}

fn none(cookie: u64) -> Vec<u8> {
    chunk(REPLY_FLAG_DONE, CHUNK_NONE, cookie, &[])
}

fn client(size: u64, tflags: u16, replies: Vec<u8>) -> NbdClient<Script> {
    let mut b = handshake_flags(size, tflags);
    b.extend(replies);
    let s = Script {
        input: Cursor::new(b),
        output: Vec::new(),
    };
    NbdClient::handshake(s, "e", &[BASE_ALLOCATION, BITMAP]).unwrap()
}

/// The transmission requests the client sent: `(type, cookie, offset, length)`.
fn requests(c: &NbdClient<Script>) -> Vec<(u16, u64, u64, u32)> {
    let out = &c.stream.output;
    // Requests follow the handshake: find them by their magic, 28 bytes each.
    let magic = REQUEST_MAGIC.to_be_bytes();
    let start = out.windows(4).position(|w| w == magic).unwrap_or(out.len());
    out[start..]
        .chunks(28)
        .map(|r| {
            let u = |a: usize, n: usize| r[a..a + n].iter().fold(0u64, |x, &b| x << 8 | b as u64);
            (u(6, 2) as u16, u(8, 8), u(16, 8), u(24, 4) as u32)
        })
        .collect()
}

#[test]
fn trims_are_sent_only_where_the_export_takes_them() {
    // Read-only (flags 3), and writable without NBD_FLAG_SEND_TRIM (flags 1).
    for flags in [3u16, 1] {
        let mut c = client(SIZE, flags, Vec::new());
        assert!(!c.can_trim());
        assert!(
            matches!(c.trim(0, 65536), Err(NbdError::InvalidRequest { .. })),
            "flags {flags}"
        );
        assert!(requests(&c).is_empty(), "flags {flags}: a request went out");
    }
    let mut c = client(SIZE, TRIM_FLAGS, Vec::new());
    assert!(c.can_trim());
    for (off, len) in [(SIZE - 4096, 8192), (0, 0), (SIZE, 4096)] {
        assert!(
            matches!(c.trim(off, len), Err(NbdError::InvalidRequest { .. })),
            "{off}+{len}"
        );
    }
    assert!(requests(&c).is_empty());
}

#[test]
fn a_trim_takes_a_simple_or_a_structured_reply_and_a_failed_one_leaves_the_client_usable() {
    let replies = [
        simple(0, 1),
        none(2),
        error_chunk(3, 22, "access"),
        simple(1, 4),
        simple(0, 5),
    ]
    .concat();
    let mut c = client(SIZE, TRIM_FLAGS, replies);
    c.trim(0, 65536).unwrap();
    c.trim(65536, 131072).unwrap();
    match c.trim(4096, 4096) {
        Err(NbdError::Command {
            command: "trim",
            errno: 22,
            offset: 4096,
            length: 4096,
            ref message,
            ..
        }) if message == "access" => {}
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        c.trim(0, 512),
        Err(NbdError::Command { errno: 1, .. })
    ));
    c.trim(SIZE - 65536, 65536).unwrap();
    assert_eq!(
        requests(&c),
        vec![
            (CMD_TRIM, 1, 0, 65536),
            (CMD_TRIM, 2, 65536, 131072),
            (CMD_TRIM, 3, 4096, 4096),
            (CMD_TRIM, 4, 0, 512),
            (CMD_TRIM, 5, SIZE - 65536, 65536),
        ]
    );
}

#[test]
fn a_trim_longer_than_a_request_takes_several() {
    let size = 4u64 << 30;
    let mut c = client(
        size,
        TRIM_FLAGS,
        [simple(0, 1), none(2), simple(0, 3)].concat(),
    );
    c.trim(65536, (2u64 << 30) + 4096).unwrap();
    assert_eq!(
        requests(&c),
        vec![
            (CMD_TRIM, 1, 65536, 1 << 30),
            (CMD_TRIM, 2, 65536 + (1 << 30), 1 << 30),
            (CMD_TRIM, 3, 65536 + (2 << 30), 4096),
        ]
    );
}

#[test]
fn hostile_trim_replies_break_the_connection() {
    let hostile = [
        ("data for a trim", data_chunk(true, 1, 0, 512, 7)),
        (
            "simple reply after a chunk",
            [chunk(0, CHUNK_ERROR, 1, &[0, 0, 0, 5, 0, 0]), simple(0, 1)].concat(),
        ),
        (
            "NONE not final",
            [chunk(0, CHUNK_NONE, 1, &[]), none(1)].concat(),
        ),
        (
            "NONE with payload",
            chunk(REPLY_FLAG_DONE, CHUNK_NONE, 1, &[0; 4]),
        ),
        ("another cookie", simple(0, 9)),
        (
            "block status for a trim",
            chunk(REPLY_FLAG_DONE, CHUNK_BLOCK_STATUS, 1, &[0; 12]),
        ),
        (
            "endless chunks",
            std::iter::repeat_n(chunk(0, CHUNK_ERROR, 1, &[0, 0, 0, 5, 0, 0]), 100)
                .flatten()
                .collect(),
        ),
    ];
    for (why, replies) in hostile {
        let mut c = client(SIZE, TRIM_FLAGS, replies);
        match c.trim(0, 65536) {
            Err(NbdError::Protocol { .. }) => {}
            other => panic!("{why}: {other:?}"),
        }
        assert!(
            matches!(c.trim(0, 65536), Err(NbdError::Broken { .. })),
            "{why}: usable after a violation"
        );
    }
}

/// A queue with a read (cookie 1: 8 KiB at 0), two trims (cookies 2, 3) and a read
/// (cookie 4: 4 KiB at 8192) in flight, answered by `replies`.
#[allow(clippy::type_complexity)]
fn queued(
    replies: Vec<u8>,
) -> (
    Result<Vec<u8>, NbdError>,
    Result<Vec<u8>, NbdError>,
    Result<(), NbdError>,
    Vec<NbdError>,
) {
    let c = client(SIZE, TRIM_FLAGS, replies);
    let mut q = ReadQueue::new(c, 4);
    assert!(q.can_trim());
    let a = q.start(0, vec![0x55u8; 8192]).unwrap();
    q.start_trim(65536, 65536).unwrap();
    q.start_trim(131072, 65536).unwrap();
    let b = q.start(8192, vec![0x55u8; 4096]).unwrap();
    assert_eq!((a, b, q.trims_in_flight()), (1, 4, 2));
    let rb = q.finish(b);
    let ra = q.finish(a);
    let settled = q.settle_trims();
    let failures = q.take_trim_failures();
    (ra, rb, settled, failures)
}

#[test]
fn trims_in_flight_share_the_connection_with_reads() {
    // Replies in any order, interleaved: a trim's reply between a read's chunks.
    let replies = [
        data_chunk(false, 4, 8192, 2048, 0xBB),
        simple(0, 3),
        data_chunk(true, 4, 10240, 2048, 0xBB),
        data_chunk(true, 1, 0, 8192, 0xAA),
        none(2),
    ]
    .concat();
    let (a, b, settled, failures) = queued(replies);
    assert!(a.unwrap().iter().all(|&x| x == 0xAA));
    assert!(b.unwrap().iter().all(|&x| x == 0xBB));
    settled.unwrap();
    assert!(failures.is_empty());
    // A failed trim fails neither the reads nor the other trim.
    let replies = [
        error_chunk(2, 22, "no"),
        data_chunk(true, 1, 0, 8192, 0xAA),
        simple(0, 3),
        data_chunk(true, 4, 8192, 4096, 0xBB),
    ]
    .concat();
    let (a, b, settled, failures) = queued(replies);
    assert!(a.is_ok() && b.is_ok());
    settled.unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(matches!(
        failures[0],
        NbdError::Command {
            command: "trim",
            offset: 65536,
            ..
        }
    ));
    // A trim's reply that carries data breaks the connection: every read is lost.
    let replies = [
        data_chunk(true, 2, 65536, 512, 1),
        data_chunk(true, 4, 8192, 4096, 0xBB),
    ]
    .concat();
    let (a, b, settled, _) = queued(replies);
    assert!(matches!(b, Err(NbdError::Protocol { .. })), "{b:?}");
    assert!(matches!(a, Err(NbdError::Broken { .. })), "{a:?}");
    assert!(matches!(settled, Ok(()) | Err(NbdError::Broken { .. })));
}

#[test]
fn the_trims_in_flight_are_bounded_by_the_depth() {
    // Depth 2: the third trim waits for the first's reply before it is sent.
    let c = client(
        SIZE,
        TRIM_FLAGS,
        [simple(0, 1), simple(0, 2), simple(0, 3)].concat(),
    );
    let mut q: ReadQueue<Script, Vec<u8>> = ReadQueue::new(c, 2);
    for i in 0..3u64 {
        q.start_trim(i * 65536, 65536).unwrap();
        assert!(q.trims_in_flight() <= 2);
    }
    q.settle_trims().unwrap();
    let c = q.into_client().unwrap();
    assert_eq!(requests(&c).len(), 3);
}

#[test]
fn random_corruption_of_trim_replies_never_panics() {
    let good = [
        data_chunk(false, 4, 8192, 2048, 0xBB),
        simple(0, 3),
        data_chunk(true, 4, 10240, 2048, 0xBB),
        error_chunk(2, 5, "io"),
        data_chunk(true, 1, 0, 8192, 0xAA),
    ]
    .concat();
    let mut rng = XorShift(0x1234_5678_9ABC_DEF1);
    let mut failures = 0;
    for _ in 0..4000 {
        let (a, b, settled, _) = queued(rng.corrupt(&good));
        if a.is_err() || b.is_err() || settled.is_err() {
            failures += 1;
        }
    }
    assert!(failures > 400, "only {failures} corruptions detected");
}
