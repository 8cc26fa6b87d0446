//! The NBD client against scripted servers: a valid transcript works, and every hostile
//! variation (lengths, offsets, cookies, contexts out of bounds, random corruption) ends in
//! an error, never a panic.

use std::io::{Cursor, Read, Write};

use super::client::{Extent, NbdClient};
use super::error::NbdError;
use super::wire::*;

/// A server whose bytes are fixed in advance; what the client writes is kept.
pub(super) struct Script {
    pub(super) input: Cursor<Vec<u8>>,
    pub(super) output: Vec<u8>,
}

impl Read for Script {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(b)
    }
}

impl Write for Script {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.output.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(super) const SIZE: u64 = 1 << 20;
pub(super) const BITMAP: &str = "qemu:dirty-bitmap:b";

pub(super) fn opt_reply(opt: u32, t: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&t.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

pub(super) fn chunk(flags: u16, kind: u16, cookie: u64, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&cookie.to_be_bytes());
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(payload);
    b
}

fn handshake(size: u64) -> Vec<u8> {
    // A read-only export, as a view was until it took trims.
    handshake_flags(size, 3)
}

/// A server's handshake for an export of `size` bytes with transmission flags `tflags`.
pub(super) fn handshake_flags(size: u64, tflags: u16) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&NBDMAGIC.to_be_bytes());
    b.extend_from_slice(&IHAVEOPT.to_be_bytes());
    b.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    b.extend(opt_reply(OPT_STRUCTURED_REPLY, REP_ACK, &[]));
    for (id, name) in [(1u32, BASE_ALLOCATION), (2, BITMAP)] {
        let mut d = id.to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        b.extend(opt_reply(OPT_SET_META_CONTEXT, REP_META_CONTEXT, &d));
    }
    b.extend(opt_reply(OPT_SET_META_CONTEXT, REP_ACK, &[]));
    let mut info = INFO_EXPORT.to_be_bytes().to_vec();
    info.extend_from_slice(&size.to_be_bytes());
    info.extend_from_slice(&tflags.to_be_bytes());
    b.extend(opt_reply(OPT_GO, REP_INFO, &info));
    let mut bs = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
    for v in [1u32, 4096, 32 << 20] {
        bs.extend_from_slice(&v.to_be_bytes());
    }
    b.extend(opt_reply(OPT_GO, REP_INFO, &bs));
    b.extend(opt_reply(OPT_GO, REP_ACK, &[]));
    b
}

/// The reply to `read(0, 8192)` (cookie 1): 4 KiB of 0xAA, then a 4 KiB hole.
fn read_reply() -> Vec<u8> {
    let mut d = 0u64.to_be_bytes().to_vec();
    d.extend_from_slice(&[0xAA; 4096]);
    let mut b = chunk(0, CHUNK_OFFSET_DATA, 1, &d);
    let mut h = 4096u64.to_be_bytes().to_vec();
    h.extend_from_slice(&4096u32.to_be_bytes());
    b.extend(chunk(REPLY_FLAG_DONE, CHUNK_OFFSET_HOLE, 1, &h));
    b
}

fn status_chunk(flags: u16, cookie: u64, ctx: u32, descriptors: &[(u32, u32)]) -> Vec<u8> {
    let mut p = ctx.to_be_bytes().to_vec();
    for (l, f) in descriptors {
        p.extend_from_slice(&l.to_be_bytes());
        p.extend_from_slice(&f.to_be_bytes());
    }
    chunk(flags, CHUNK_BLOCK_STATUS, cookie, &p)
}

/// The reply to block status over the whole export (cookie 2): both contexts.
fn status_reply() -> Vec<u8> {
    let mut b = status_chunk(0, 2, 1, &[(SIZE as u32, 0)]);
    b.extend(status_chunk(
        REPLY_FLAG_DONE,
        2,
        2,
        &[(65536, 0), (65536, STATE_DIRTY), (SIZE as u32 - 131072, 0)],
    ));
    b
}

/// Runs a whole session (handshake, a read, the dirty extents) over `bytes`.
fn session(bytes: Vec<u8>) -> Result<(Vec<u8>, Vec<Extent>), NbdError> {
    let s = Script {
        input: Cursor::new(bytes),
        output: Vec::new(),
    };
    let mut c = NbdClient::handshake(s, "e", &[BASE_ALLOCATION, BITMAP])?;
    let mut buf = vec![0x55u8; 8192];
    c.read(0, &mut buf)?;
    let d = c.dirty_extents("b")?;
    Ok((buf, d))
}

fn transcript(read: Vec<u8>, status: Vec<u8>) -> Vec<u8> {
    let mut b = handshake(SIZE);
    b.extend(read);
    b.extend(status);
    b
}

#[test]
fn a_valid_server_is_read_and_its_dirty_extents_listed() {
    let (buf, dirty) = session(transcript(read_reply(), status_reply())).unwrap();
    assert!(buf[..4096].iter().all(|&b| b == 0xAA));
    assert!(buf[4096..].iter().all(|&b| b == 0));
    assert_eq!(
        dirty,
        vec![Extent {
            offset: 65536,
            length: 65536,
            flags: STATE_DIRTY
        }]
    );
}

fn expect_protocol(bytes: Vec<u8>, why: &str) {
    match session(bytes) {
        Err(NbdError::Protocol { .. }) => {}
        other => panic!("{why}: expected a protocol error, got {other:?}"),
    }
}

#[test]
fn hostile_read_replies_are_refused() {
    let data_at = |off: u64, len: usize, flags: u16| {
        let mut d = off.to_be_bytes().to_vec();
        d.extend(std::iter::repeat_n(1u8, len));
        chunk(flags, CHUNK_OFFSET_DATA, 1, &d)
    };
    let done = chunk(REPLY_FLAG_DONE, CHUNK_NONE, 1, &[]);
    let st = status_reply;
    // Data past the request.
    expect_protocol(
        transcript([data_at(8192, 16, 0), done.clone()].concat(), st()),
        "data past end",
    );
    // Data starting before the request... wrapping offset.
    expect_protocol(
        transcript([data_at(u64::MAX - 3, 8, 0), done.clone()].concat(), st()),
        "wrapping offset",
    );
    // A chunk claiming 4 GiB of payload.
    let mut huge = chunk(REPLY_FLAG_DONE, CHUNK_OFFSET_DATA, 1, &0u64.to_be_bytes());
    let n = huge.len();
    huge[n - 12..n - 8].copy_from_slice(&u32::MAX.to_be_bytes());
    expect_protocol(transcript(huge, st()), "huge data chunk");
    // Overlapping chunks that add up to the right length.
    expect_protocol(
        transcript(
            [data_at(0, 4096, 0), data_at(0, 4096, 0), done.clone()].concat(),
            st(),
        ),
        "overlap",
    );
    // A reply that covers only part of the request.
    expect_protocol(
        transcript([data_at(0, 4096, 0), done.clone()].concat(), st()),
        "short",
    );
    // A hole of 4 GiB - 1.
    let mut h = 0u64.to_be_bytes().to_vec();
    h.extend_from_slice(&u32::MAX.to_be_bytes());
    expect_protocol(
        transcript(chunk(REPLY_FLAG_DONE, CHUNK_OFFSET_HOLE, 1, &h), st()),
        "huge hole",
    );
    // The wrong cookie.
    let mut wrong = read_reply();
    wrong[8..16].copy_from_slice(&9u64.to_be_bytes());
    expect_protocol(transcript(wrong, st()), "cookie");
    // An error chunk whose message is longer than the chunk.
    let mut e = 5u32.to_be_bytes().to_vec();
    e.extend_from_slice(&1000u16.to_be_bytes());
    expect_protocol(
        transcript(chunk(REPLY_FLAG_DONE, CHUNK_ERROR, 1, &e), st()),
        "error msg",
    );
    // An unknown non-error chunk type.
    expect_protocol(
        transcript(chunk(REPLY_FLAG_DONE, 77, 1, &[]), st()),
        "unknown type",
    );
}

#[test]
fn hostile_block_status_replies_are_refused() {
    let both = |second: &[(u32, u32)]| {
        [
            status_chunk(0, 2, 1, &[(SIZE as u32, 0)]),
            status_chunk(REPLY_FLAG_DONE, 2, 2, second),
        ]
        .concat()
    };
    expect_protocol(
        transcript(read_reply(), both(&[(u32::MAX, 1), (u32::MAX, 1)])),
        "past the end",
    );
    expect_protocol(transcript(read_reply(), both(&[(0, 1)])), "zero length");
    expect_protocol(
        transcript(
            read_reply(),
            status_chunk(REPLY_FLAG_DONE, 2, 9, &[(4096, 0)]),
        ),
        "unknown context",
    );
    expect_protocol(
        transcript(
            read_reply(),
            [
                status_chunk(0, 2, 2, &[(4096, 0)]),
                status_chunk(REPLY_FLAG_DONE, 2, 2, &[(4096, 0)]),
            ]
            .concat(),
        ),
        "repeated context",
    );
    expect_protocol(
        transcript(
            read_reply(),
            status_chunk(REPLY_FLAG_DONE, 2, 1, &[(4096, 0)]),
        ),
        "asked context missing",
    );
    let mut huge = status_chunk(REPLY_FLAG_DONE, 2, 2, &[(4096, 0)]);
    huge[16..20].copy_from_slice(&0xFFFF_FFF4u32.to_be_bytes());
    expect_protocol(transcript(read_reply(), huge), "huge status chunk");
}

#[test]
fn hostile_handshakes_are_refused() {
    // An export larger than any file.
    let mut b = handshake(u64::MAX);
    b.extend(read_reply());
    expect_protocol(b, "export size");
    // An option reply claiming 4 GiB.
    let mut b = handshake(SIZE);
    let at = 18 + 16;
    b[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    expect_protocol(b, "option reply length");
    // A context the client did not ask for.
    let mut b = handshake(SIZE);
    let pos = b
        .windows(BITMAP.len())
        .position(|w| w == BITMAP.as_bytes())
        .unwrap();
    b[pos] = b'x';
    expect_protocol(b, "context not asked");
    // The stream ends mid-reply: an IO error, and the client is then unusable.
    let mut b = transcript(read_reply(), status_reply());
    b.truncate(b.len() - 5);
    let s = Script {
        input: Cursor::new(b),
        output: Vec::new(),
    };
    let mut c = NbdClient::handshake(s, "e", &[BASE_ALLOCATION, BITMAP]).unwrap();
    let mut buf = vec![0u8; 8192];
    c.read(0, &mut buf).unwrap();
    assert!(matches!(c.dirty_extents("b"), Err(NbdError::Io { .. })));
    assert!(matches!(c.read(0, &mut buf), Err(NbdError::Broken { .. })));
}

/// The corruption tests' random numbers (xorshift64: deterministic, no dependency).
pub(super) struct XorShift(pub(super) u64);

impl XorShift {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// `good` with 1 to 4 random bytes overwritten, and cut short one time in eight.
    pub(super) fn corrupt(&mut self, good: &[u8]) -> Vec<u8> {
        let mut b = good.to_vec();
        for _ in 0..(1 + self.next() % 4) {
            let i = (self.next() % b.len() as u64) as usize;
            b[i] = self.next() as u8;
        }
        if self.next().is_multiple_of(8) {
            let n = (self.next() % b.len() as u64) as usize;
            b.truncate(n);
        }
        b
    }
}

#[test]
fn random_corruption_never_panics() {
    let good = transcript(read_reply(), status_reply());
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut failures = 0;
    for _ in 0..4000 {
        let b = rng.corrupt(&good);
        if session(b).is_err() {
            failures += 1;
        }
    }
    // Most corruptions are detected (data bytes may change harmlessly).
    assert!(failures > 1000, "only {failures} corruptions detected");
}

/// A chunk of `cookie`'s read: `len` bytes of `fill` at `at`, final or not.
pub(super) fn data_chunk(done: bool, cookie: u64, at: u64, len: usize, fill: u8) -> Vec<u8> {
    let mut d = at.to_be_bytes().to_vec();
    d.extend(std::iter::repeat_n(fill, len));
    let flags = if done { REPLY_FLAG_DONE } else { 0 };
    chunk(flags, CHUNK_OFFSET_DATA, cookie, &d)
}

/// Two reads in flight (cookie 1: 8 KiB at 0; cookie 2: 4 KiB at 8192) answered by
/// `replies`; collects them in the order `first_two` says and returns each result.
#[allow(clippy::type_complexity)]
fn queued(
    replies: Vec<u8>,
    second_first: bool,
) -> (Result<Vec<u8>, NbdError>, Result<Vec<u8>, NbdError>) {
    let mut b = handshake(SIZE);
    b.extend(replies);
    let s = Script {
        input: Cursor::new(b),
        output: Vec::new(),
    };
    let c = NbdClient::handshake(s, "e", &[BASE_ALLOCATION, BITMAP]).unwrap();
    let mut q = super::ReadQueue::new(c, 4);
    let a = q.start(0, vec![0x55u8; 8192]).unwrap();
    let b = q.start(8192, vec![0x55u8; 4096]).unwrap();
    assert_eq!((a, b), (1, 2));
    if second_first {
        let rb = q.finish(b);
        let ra = q.finish(a);
        (ra, rb)
    } else {
        let ra = q.finish(a);
        let rb = q.finish(b);
        (ra, rb)
    }
}

#[test]
fn reads_in_flight_take_replies_out_of_order_and_interleaved() {
    let mut hole = 4096u64.to_be_bytes().to_vec();
    hole.extend_from_slice(&4096u32.to_be_bytes());
    // B's data first (not final), then A's data, B's end, A's hole (final).
    let replies = [
        data_chunk(false, 2, 8192, 4096, 0xBB),
        data_chunk(false, 1, 0, 4096, 0xAA),
        chunk(REPLY_FLAG_DONE, CHUNK_NONE, 2, &[]),
        chunk(REPLY_FLAG_DONE, CHUNK_OFFSET_HOLE, 1, &hole),
    ]
    .concat();
    for second_first in [false, true] {
        let (a, b) = queued(replies.clone(), second_first);
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(a[..4096].iter().all(|&x| x == 0xAA));
        assert!(a[4096..].iter().all(|&x| x == 0));
        assert!(b.iter().all(|&x| x == 0xBB));
    }
    // A read the server fails does not fail the other.
    let mut e = 5u32.to_be_bytes().to_vec();
    e.extend_from_slice(&2u16.to_be_bytes());
    e.extend_from_slice(b"no");
    let replies = [
        chunk(REPLY_FLAG_DONE, CHUNK_ERROR, 1, &e),
        data_chunk(true, 2, 8192, 4096, 0xBB),
    ]
    .concat();
    let (a, b) = queued(replies, true);
    assert!(
        matches!(a, Err(NbdError::Command { errno: 5, .. })),
        "{a:?}"
    );
    assert!(b.unwrap().iter().all(|&x| x == 0xBB));
    // So does a simple error reply.
    let mut simple = SIMPLE_REPLY_MAGIC.to_be_bytes().to_vec();
    simple.extend_from_slice(&22u32.to_be_bytes());
    simple.extend_from_slice(&2u64.to_be_bytes());
    let replies = [simple, data_chunk(true, 1, 0, 8192, 0xAA)].concat();
    let (a, b) = queued(replies, false);
    assert!(a.unwrap().iter().all(|&x| x == 0xAA));
    assert!(
        matches!(b, Err(NbdError::Command { errno: 22, .. })),
        "{b:?}"
    );
}

#[test]
fn hostile_replies_to_reads_in_flight_break_the_connection() {
    let broken = |replies: Vec<u8>, why: &str| {
        let (a, b) = queued(replies, false);
        assert!(
            matches!(a, Err(NbdError::Protocol { .. })),
            "{why}: first read got {a:?}"
        );
        assert!(
            matches!(b, Err(NbdError::Broken { .. })),
            "{why}: second read got {b:?}"
        );
    };
    // A cookie no read has.
    broken(data_chunk(true, 9, 0, 8192, 1), "unknown cookie");
    // A chunk for a read already complete.
    broken(
        [
            data_chunk(true, 2, 8192, 4096, 1),
            data_chunk(true, 2, 8192, 4096, 1),
        ]
        .concat(),
        "read already complete",
    );
    // B's bytes claimed by A's reply: inside the export, outside A's request.
    broken(data_chunk(true, 1, 8192, 4096, 1), "another read's range");
    // A successful simple reply to a read (data would follow without a header).
    let mut simple = SIMPLE_REPLY_MAGIC.to_be_bytes().to_vec();
    simple.extend_from_slice(&0u32.to_be_bytes());
    simple.extend_from_slice(&1u64.to_be_bytes());
    broken(simple, "simple reply");
}

#[test]
fn random_corruption_of_replies_in_flight_never_panics() {
    let mut hole = 4096u64.to_be_bytes().to_vec();
    hole.extend_from_slice(&4096u32.to_be_bytes());
    let good = [
        data_chunk(false, 2, 8192, 4096, 0xBB),
        data_chunk(false, 1, 0, 4096, 0xAA),
        chunk(REPLY_FLAG_DONE, CHUNK_NONE, 2, &[]),
        chunk(REPLY_FLAG_DONE, CHUNK_OFFSET_HOLE, 1, &hole),
    ]
    .concat();
    let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
    let mut failures = 0;
    for _ in 0..4000 {
        let b = rng.corrupt(&good);
        let (a, c) = queued(b, rng.next().is_multiple_of(2));
        if a.is_err() || c.is_err() {
            failures += 1;
        }
    }
    // 8 KiB of the transcript's 8.3 KiB are data, whose corruption no client can see:
    // what is detected is the truncations (one run in eight) and the hits on headers.
    assert!(failures > 400, "only {failures} corruptions detected");
}
