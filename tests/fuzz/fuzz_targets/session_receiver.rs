//! The receiver's protocol session (`ReceiverSession` + `BatchReceiver`) driven by arbitrary
//! sequences of frames on arbitrary streams, with arbitrary store outcomes: whatever a peer
//! sends and whatever the store answers, the session never panics, every answer it gives
//! fits one control frame and decodes again, a closed stream stays closed, and a batch never
//! outlives its accounting (`batches_running` goes back to zero when every batch ended).
//!
//! Input: a sequence of actions, one selector byte each, then its fields (the input is read
//! until it runs out; short reads give zeros). Templates build well-formed requests with
//! fuzzed fields (so the search reaches past the decoders); raw frames cover the rest.
#![no_main]

use std::collections::HashMap;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use vdrep_proto::session::receiver::{
    BatchStep, ControlState, ControlStep, Done, Effect, FirstStep, OpenedReplica, WriteOutcome,
};
use vdrep_proto::session::{Authorizations, BatchReceiver, ReceiverSession, Refusal};
use vdrep_proto::wire::{
    decode_frame, BatchResult, Codec, Control, ErrorClass, ExtentHeader, ExtentOp, Rejection,
    BatchStart, FRAME_HEADER_LEN, K_BATCH_RESULT, K_EXTENT, MAX_CONTROL_BODY,
};
use vdrep_proto::{Guid, RangeSet};

struct In<'a>(&'a [u8]);

impl In<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        (self.u32() as u64) | (self.u32() as u64) << 32
    }
    /// A size: small, 512-aligned, huge or wrapping, as the selector byte says.
    fn size(&mut self) -> u64 {
        match self.u8() % 6 {
            0 => (self.u16() as u64 + 1) * 512,
            1 => u64::MAX - self.u16() as u64,
            2 => (8 << 40) - (1 << 20) + self.u16() as u64 * 512,
            3 => self.u32() as u64,
            4 => 1 << 20,
            _ => self.u64(),
        }
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a.to_vec()
    }
    fn vm(&mut self) -> String {
        ["vm1", "vm2", "", "../x"][self.u8() as usize % 4].to_string()
    }
    fn refusal(&mut self) -> Refusal {
        let class = [
            ErrorClass::Unauthorized,
            ErrorClass::NotFound,
            ErrorClass::InvalidState,
            ErrorClass::Protocol,
            ErrorClass::VersionMismatch,
            ErrorClass::SizeChanged,
            ErrorClass::TargetFull,
            ErrorClass::TargetBusy,
            ErrorClass::Internal,
        ][self.u8() as usize % 9];
        Refusal::new(class, "store says no")
    }
    fn ranges(&mut self) -> RangeSet {
        // Canonical progress of up to ~70,000 ranges: pages, and the v3 subset, are reached.
        let n = match self.u8() % 4 {
            0 => 0,
            1 => self.u8() as usize,
            2 => 32_768 + self.u8() as usize,
            _ => 70_000,
        };
        (0..n as u64).map(|i| i * 1024..i * 1024 + 512).collect()
    }
}

/// The store's outcome for an effect: success shaped like the effect asks, or a refusal.
fn done(e: &Effect, i: &mut In<'_>) -> Done {
    let fail = i.u8() % 4 == 0;
    macro_rules! or {
        ($v:ident, $ok:expr) => {
            Done::$v(if fail { Err(i.refusal()) } else { Ok($ok) })
        };
    }
    match e {
        Effect::OpenReplica { .. } => {
            let progress = i.ranges();
            or!(
                Opened,
                OpenedReplica {
                    generation: i.u64(),
                    initial_committed: i.u8() & 1 == 1,
                    committed_cycle: i.u64(),
                    initial_in_progress: i.u8() & 1 == 1,
                    progress,
                }
            )
        }
        Effect::CommitInitial { .. } => or!(InitialCommitted, ()),
        Effect::BeginCycle { .. } => {
            let p = i.ranges();
            or!(CycleOpened, p)
        }
        Effect::CommitCycle { .. } => or!(CycleCommitted, vec![1, 2]),
        Effect::Hashes { .. } => {
            let n = i.u16() as usize;
            or!(Hashes, vec![7; n])
        }
        Effect::Root { .. } => or!(Root, [1; 32]),
        Effect::RecordJob { .. } => or!(JobRecorded, ()),
        Effect::QueryCapacity { .. } => or!(Capacity, Some(5)),
        Effect::CommitPoint { .. } => or!(PointCommitted, 1),
        Effect::ClaimGroup { .. } => or!(GroupClaimed, 3),
    }
}

/// Every control answer must fit a frame and decode to itself.
fn check_answer(a: &Control) {
    let f = a.encode();
    let (k, body, used) = decode_frame(&f, MAX_CONTROL_BODY)
        .expect("an answer fits one control frame")
        .expect("whole");
    assert_eq!(used, f.len());
    assert_eq!(&Control::decode(k, body).expect("decodes"), a);
}

fn check_result(r: &BatchResult) {
    let f = r.encode();
    assert_eq!(f[0], K_BATCH_RESULT);
    let body = &f[FRAME_HEADER_LEN..];
    assert!(body.len() <= MAX_CONTROL_BODY as usize);
    assert_eq!(&BatchResult::decode(body).expect("decodes"), r);
}

/// Drives a control step to its answer, the store answering from the input.
fn drive(s: &mut ReceiverSession, stream: u64, mut step: ControlStep, i: &mut In<'_>) {
    loop {
        match step {
            ControlStep::Perform(e) => {
                let d = done(&e, i);
                step = s.handle_done(stream, d);
            }
            ControlStep::Answer { answer, close, .. } => {
                check_answer(&answer);
                if close {
                    assert_eq!(s.control_state(stream), ControlState::Closed);
                }
                return;
            }
        }
    }
}

fn template(i: &mut In<'_>) -> Control {
    let req = i.u8() as u32;
    let handle = i.u8() as u32 % 4;
    match i.u8() % 12 {
        0 => Control::Hello {
            min_version: i.u8() as u16 % 8, // up to one past PROTOCOL_VERSION (6)
            max_version: i.u8() as u16 % 8, // up to one past PROTOCOL_VERSION (6)
            software: "f".into(),
        },
        1 => Control::OpenDisk {
            req,
            vm: i.vm(),
            disk: ["d", "jobs", "a/b", ""][i.u8() as usize % 4].into(),
            virtual_size: i.size(),
            source_id: Guid([i.u8(); 16]),
            full_copy: i.u8() & 1 == 1,
            vm_disks: [&[][..], &["d"], &["d", "jobs"], &["d", "d"], &["x"]][i.u8() as usize % 5]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        },
        2 => Control::CommitInitial {
            req,
            handle,
            generation: i.u8() as u64,
        },
        3 => Control::BeginCycle {
            req,
            handle,
            cycle: i.u8() as u64,
        },
        4 => Control::CommitCycle {
            req,
            handle,
            cycle: i.u8() as u64,
            bytes: i.u64(),
            digest: [0; 32],
            retention_secs: i.u32(),
        },
        5 => Control::HashRequest {
            req,
            handle,
            level: i.u8() % 6,
            parents: (0..i.u8() as u64 * 5).map(|p| p * i.u8() as u64).collect(),
            verify: i.u8() & 1 == 1,
        },
        6 => Control::RootRequest { req, handle },
        7 => Control::ProgressRequest {
            req,
            handle,
            after: i.size(),
        },
        8 => Control::QueryCapacity {
            req,
            vm: i.vm(),
            needed: i.u64(),
        },
        9 => Control::Capacity {
            req,
            available: 1,
        },
        10 => Control::Error {
            req,
            class: ErrorClass::Protocol,
            message: "x".into(),
        },
        _ => Control::HelloAck { version: 4 },
    }
}

fn extent(i: &mut In<'_>) -> (u8, Bytes) {
    let op = [ExtentOp::Write, ExtentOp::Clear, ExtentOp::WriteSparse, ExtentOp::WritePacked]
        [i.u8() as usize % 4];
    let codec = if i.u8() & 1 == 1 { Codec::Zstd } else { Codec::Raw };
    let n = i.u16() as usize % 8192;
    let payload = i.bytes(n);
    let h = ExtentHeader {
        offset: i.size(),
        length: (i.u16() as u32 % 9) * 512 + if i.u8() == 0 { 1 } else { 0 },
        op,
        codec,
        hash: [i.u8(); 32],
        payload_len: payload.len() as u32,
    };
    let mut f = h.encode_frame_prefix();
    f.extend_from_slice(&payload);
    let kind = if i.u8() == 255 { i.u8() } else { K_EXTENT };
    (kind, Bytes::from(f.split_off(FRAME_HEADER_LEN)))
}

fn end_batch(s: &mut ReceiverSession, b: &BatchReceiver, end: &BatchResult) {
    check_result(end);
    s.batch_ended(b.handle());
}

fuzz_target!(|data: &[u8]| {
    let allow = Authorizations::parse(&["host1=vm1".into(), "host2=vm2".into()]).unwrap();
    let mut s = ReceiverSession::new("host1", &allow);
    let mut i = In(data);
    let mut batches: HashMap<u64, BatchReceiver> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    let mut steps = 0;
    while !i.0.is_empty() && steps < 256 {
        steps += 1;
        let stream = i.u8() as u64 % 8;
        match i.u8() % 8 {
            // A control frame built from a template, or raw bytes as a frame.
            sel @ (0..=3) => {
                let (kind, body) = if sel < 3 {
                    let f = template(&mut i).encode();
                    (f[0], f[FRAME_HEADER_LEN..].to_vec())
                } else {
                    let k = i.u8();
                    let n = i.u16() as usize;
                    (k, i.bytes(n))
                };
                let first = seen.insert(stream) && !batches.contains_key(&stream);
                if first {
                    match s.handle_first_frame(stream, kind, &body) {
                        FirstStep::Control(step) => drive(&mut s, stream, step, &mut i),
                        FirstStep::BatchRefused(end) => check_result(&end.result),
                        FirstStep::Batch(b) => {
                            batches.insert(stream, b);
                        }
                    }
                } else if !batches.contains_key(&stream) {
                    let closed = s.control_state(stream) == ControlState::Closed;
                    let step = s.handle_control(stream, kind, &body);
                    if closed {
                        assert!(matches!(
                            &step,
                            ControlStep::Answer { close: true, .. }
                        ));
                    }
                    drive(&mut s, stream, step, &mut i);
                }
            }
            // A batch start on a fresh stream.
            4 => {
                if seen.insert(stream) {
                    let f = BatchStart {
                        handle: i.u8() as u32 % 4,
                        generation: i.u8() as u64,
                    }
                    .encode();
                    match s.handle_first_frame(stream, f[0], &f[FRAME_HEADER_LEN..]) {
                        FirstStep::Batch(b) => {
                            batches.insert(stream, b);
                        }
                        FirstStep::BatchRefused(end) => check_result(&end.result),
                        FirstStep::Control(_) => panic!("a batch start read as control"),
                    }
                }
            }
            // An extent on a running batch; the store verdict from the input.
            5 => {
                let (kind, body) = extent(&mut i);
                let verdict = i.u8();
                if let Some(b) = batches.get_mut(&stream) {
                    let mut step = b.handle_frame(kind, body);
                    loop {
                        match step {
                            BatchStep::Apply(w) => {
                                assert!(w.header.payload_len as usize == w.payload.len()
                                    || w.packed.is_some());
                                step = b.handle_write_done(match verdict % 4 {
                                    0 => WriteOutcome::Rejected(Rejection::HashMismatch),
                                    1 => WriteOutcome::Failed(Refusal::new(
                                        ErrorClass::TargetBusy,
                                        "disk busy",
                                    )),
                                    _ => WriteOutcome::Written {
                                        bytes: w.header.length as u64,
                                    },
                                });
                            }
                            BatchStep::Continue(_) => break,
                            BatchStep::End(end) => {
                                let b = batches.remove(&stream).unwrap();
                                end_batch(&mut s, &b, &end.result);
                                break;
                            }
                        }
                    }
                }
            }
            // The stream ends: cleanly (finish) or torn.
            6 => {
                if let Some(mut b) = batches.remove(&stream) {
                    let end = if i.u8() & 1 == 0 {
                        b.finish()
                    } else {
                        b.fail_stream(Refusal::new(ErrorClass::Protocol, "torn frame"))
                    };
                    end_batch(&mut s, &b, &end.result);
                } else {
                    s.stream_ended(stream);
                    seen.remove(&stream);
                }
            }
            // Thousands of streams: many batch starts on fresh ids.
            _ => {
                let n = i.u8() as u64 * 16;
                for k in 0..n {
                    let f = BatchStart {
                        handle: 1,
                        generation: k % 3,
                    }
                    .encode();
                    match s.handle_first_frame(1000 + k, f[0], &f[FRAME_HEADER_LEN..]) {
                        FirstStep::Batch(mut b) => {
                            let end = b.finish();
                            end_batch(&mut s, &b, &end.result);
                        }
                        FirstStep::BatchRefused(end) => check_result(&end.result),
                        FirstStep::Control(_) => panic!("a batch start read as control"),
                    }
                }
            }
        }
    }
    for (_, mut b) in batches.drain() {
        let end = b.finish();
        end_batch(&mut s, &b, &end.result);
    }
    for h in 0..8 {
        assert_eq!(s.batches_running(h), 0, "every batch ended");
    }
});
