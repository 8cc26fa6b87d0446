//! Codec tests of the wire messages: round trips, limits, and decoders fed random and mutated
//! frames.

use super::control::K_HELLO;
use super::*;
use crate::wire::{decode_frame, MAX_CONTROL_BODY, MAX_EXTENT_PAYLOAD};
use crate::Guid;
use proptest::prelude::*;

fn roundtrip(m: Control) {
    let f = m.encode();
    let (k, body, used) = decode_frame(&f, MAX_CONTROL_BODY).unwrap().unwrap();
    assert_eq!(used, f.len());
    assert_eq!(Control::decode(k, body).unwrap(), m);
}

#[test]
fn control_messages_round_trip() {
    roundtrip(Control::Hello {
        min_version: 1,
        max_version: 3,
        software: "vdrep 0.1".into(),
    });
    roundtrip(Control::OpenDisk {
        req: 7,
        vm: "vm1".into(),
        disk: "os".into(),
        virtual_size: 1 << 40,
        source_id: Guid([3; 16]),
        full_copy: true,
        vm_disks: Vec::new(),
    });
    roundtrip(Control::DiskOpened {
        req: 7,
        handle: 2,
        initial_committed: false,
        committed_cycle: 0,
        generation: 4,
        known_empty: true,
        progress: [(0, 512), (4096, 8192)]
            .into_iter()
            .map(|(a, b)| a..b)
            .collect(),
        more_progress: false,
    });
    roundtrip(Control::BeginCycle {
        req: 2,
        handle: 1,
        cycle: 9,
    });
    roundtrip(Control::CycleOpened {
        req: 2,
        handle: 1,
        cycle: 9,
        progress: [(512, 1024)].into_iter().map(|(a, b)| a..b).collect(),
        more_progress: false,
    });
    roundtrip(Control::CommitCycle {
        req: 3,
        handle: 1,
        cycle: 9,
        bytes: 4096,
        digest: [7; 32],
        retention_secs: 3600,
    });
    roundtrip(Control::Error {
        req: 1,
        class: ErrorClass::Unauthorized,
        message: "no".into(),
    });
}

#[test]
fn open_disk_carries_the_vms_disk_set_as_a_trailing_list_only_when_given() {
    let open = |vm_disks: Vec<String>| Control::OpenDisk {
        req: 7,
        vm: "vm1".into(),
        disk: "os".into(),
        virtual_size: 1 << 30,
        source_id: Guid([3; 16]),
        full_copy: false,
        vm_disks,
    };
    let without = open(Vec::new()).encode();
    let with = open(vec!["os".into(), "data".into()]).encode();
    roundtrip(open(vec!["os".into(), "data".into()]));
    // Absent: the frame an older sender sends, byte for byte (it decodes as "not said").
    let (_, old_body, _) = decode_frame(&without, MAX_CONTROL_BODY).unwrap().unwrap();
    let (k, new_body, _) = decode_frame(&with, MAX_CONTROL_BODY).unwrap().unwrap();
    assert_eq!(&new_body[..old_body.len()], old_body);
    // An empty list (a second encoding of "absent") and more than MAX_POINT_DISKS names
    // are malformed; so is a list cut short.
    let mut empty = old_body.to_vec();
    empty.extend_from_slice(&0u32.to_le_bytes());
    assert!(Control::decode(k, &empty).is_err());
    let mut many = old_body.to_vec();
    many.extend_from_slice(&(MAX_POINT_DISKS as u32 + 1).to_le_bytes());
    for _ in 0..=MAX_POINT_DISKS {
        many.extend_from_slice(&1u32.to_le_bytes());
        many.push(b'd');
    }
    assert!(Control::decode(k, &many).is_err());
    assert!(Control::decode(k, &new_body[..new_body.len() - 1]).is_err());
    roundtrip(Control::Error {
        req: 7,
        class: ErrorClass::DiskSetChanged,
        message: "VM vm1: the store holds disks data, os".into(),
    });
}

#[test]
fn extent_header_validates_alignment_payload_length_and_codec() {
    let h = ExtentHeader {
        offset: 4096,
        length: 1024,
        op: ExtentOp::Write,
        codec: Codec::Raw,
        hash: [9; 32],
        payload_len: 1024,
    };
    let f = h.encode_frame_prefix();
    let frame_len = u32::from_le_bytes(f[1..5].try_into().unwrap());
    assert_eq!(ExtentHeader::decode(&f[5..], frame_len).unwrap(), h);
    let mut bad = h;
    bad.offset = 100;
    let f = bad.encode_frame_prefix();
    assert!(ExtentHeader::decode(&f[5..], frame_len).is_err());
    let mut bad = h;
    bad.payload_len = 10;
    let f = bad.encode_frame_prefix();
    assert!(ExtentHeader::decode(&f[5..], EXTENT_HEADER_LEN as u32 + 10).is_err());
    // A packed write must carry a zstd frame.
    let mut bad = h;
    bad.op = ExtentOp::WritePacked;
    let f = bad.encode_frame_prefix();
    let e = ExtentHeader::decode(&f[5..], frame_len).unwrap_err();
    assert_eq!(e.offset, 13);
    assert!(e.problem.contains("zstd"), "{e}");
}

#[test]
fn oversized_frames_are_refused_before_buffering() {
    let mut f = vec![K_HELLO];
    f.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(decode_frame(&f, MAX_CONTROL_BODY).is_err());
}

#[test]
fn version_negotiation_picks_the_highest_common_version() {
    assert_eq!(
        super::super::negotiate(1, 9),
        Some(super::super::PROTOCOL_VERSION)
    );
    assert_eq!(super::super::negotiate(50, 60), None);
    // A version-1 peer still gets a connection (and no sparse writes).
    assert_eq!(super::super::negotiate(1, 1), Some(1));
}

proptest! {
    #[test]
    fn control_decode_never_panics(kind in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Control::decode(kind, &body);
        let _ = BatchResult::decode(&body);
        let _ = BatchStart::decode(&body);
        let _ = ExtentHeader::decode(&body, body.len() as u32);
    }

    #[test]
    fn batch_result_round_trips(written in any::<u32>(), rej in proptest::collection::vec((any::<u64>(), any::<u32>(), any::<bool>()), 0..20)) {
        let m = BatchResult {
            written,
            rejected: rej.into_iter().map(|(o, l, b)| (o, l, if b { Rejection::HashMismatch } else { Rejection::BadPayload })).collect(),
            error: Some((ErrorClass::TargetFull, "full".into())),
        };
        let f = m.encode();
        let (_, body, _) = decode_frame(&f, MAX_CONTROL_BODY).unwrap().unwrap();
        prop_assert_eq!(BatchResult::decode(body).unwrap(), m);
    }
}

/// One message of every control kind, with non-trivial fields.
fn every_control() -> Vec<Control> {
    vec![
        Control::Hello {
            min_version: 1,
            max_version: 3,
            software: "vdrep 0.1".into(),
        },
        Control::HelloAck { version: 1 },
        Control::OpenDisk {
            req: 7,
            vm: "vm1".into(),
            disk: "os".into(),
            virtual_size: 1 << 40,
            source_id: Guid([3; 16]),
            full_copy: true,
            vm_disks: vec!["data".into(), "os".into()],
        },
        Control::DiskOpened {
            req: 7,
            handle: 2,
            initial_committed: true,
            committed_cycle: 5,
            generation: 4,
            known_empty: false,
            progress: [(0, 512), (4096, 8192)]
                .into_iter()
                .map(|(a, b)| a..b)
                .collect(),
            more_progress: false,
        },
        Control::CommitInitial {
            req: 8,
            handle: 2,
            generation: 4,
        },
        Control::Committed {
            req: 8,
            handle: 2,
            cycle: 0,
        },
        Control::BeginCycle {
            req: 2,
            handle: 1,
            cycle: 9,
        },
        Control::CycleOpened {
            req: 2,
            handle: 1,
            cycle: 9,
            progress: [(512, 1024)].into_iter().map(|(a, b)| a..b).collect(),
            more_progress: false,
        },
        Control::CommitCycle {
            req: 3,
            handle: 1,
            cycle: 9,
            bytes: 4096,
            digest: [7; 32],
            retention_secs: 3600,
        },
        Control::Error {
            req: 1,
            class: ErrorClass::Unauthorized,
            message: "no".into(),
        },
        Control::CommitPoint {
            req: 4,
            vm_cycle: 12,
            switch_unix_ms: 1_700_000_000_123,
            group: None,
            group_cycle: None,
            retention_secs: 3600,
            disks: vec![
                PointPart {
                    handle: 1,
                    cycle: 9,
                    bytes: 4096,
                    digest: [7; 32],
                },
                PointPart {
                    handle: 2,
                    cycle: 12,
                    bytes: 0,
                    digest: [0; 32],
                },
            ],
            one_instant: false,
        },
        Control::CommitPoint {
            req: 5,
            vm_cycle: 13,
            switch_unix_ms: 1,
            group: Some("erp".into()),
            group_cycle: Some(40),
            retention_secs: 0,
            disks: vec![PointPart {
                handle: 1,
                cycle: 10,
                bytes: 1,
                digest: [1; 32],
            }],
            // A qemu switch's point: the trailing flag, sent only when set.
            one_instant: true,
        },
        Control::PointCommitted {
            req: 5,
            vm_cycle: 13,
        },
    ]
}

#[test]
fn group_claims_round_trip_and_a_claim_of_17_vms_does_not_decode() {
    roundtrip(Control::ClaimGroup {
        req: 4,
        group: "erp".into(),
        vms: vec!["db".into(), "app".into()],
        interval_secs: 30,
    });
    roundtrip(Control::GroupClaimed {
        req: 4,
        group_cycle: 12,
    });
    let claim = Control::ClaimGroup {
        req: 1,
        group: "g".into(),
        vms: (0..17).map(|i| format!("vm{i}")).collect(),
        interval_secs: 30,
    }
    .encode();
    let (k, body, _) = decode_frame(&claim, MAX_CONTROL_BODY).unwrap().unwrap();
    let e = Control::decode(k, body).unwrap_err();
    assert!(e.to_string().contains("at most 16"), "{e}");
}

/// A data stream as a sender writes it: batch start, a write, a clear, a sparse write.
fn sample_data_stream() -> Vec<u8> {
    let mut s = BatchStart {
        handle: 3,
        generation: 9,
    }
    .encode();
    let w = ExtentHeader {
        offset: 4096,
        length: 1024,
        op: ExtentOp::Write,
        codec: Codec::Raw,
        hash: [1; 32],
        payload_len: 1024,
    };
    s.extend_from_slice(&w.encode_frame_prefix());
    s.extend_from_slice(&[0xab; 1024]);
    let c = ExtentHeader {
        offset: 1 << 20,
        length: 1 << 20,
        op: ExtentOp::Clear,
        codec: Codec::Raw,
        hash: [2; 32],
        payload_len: 0,
    };
    s.extend_from_slice(&c.encode_frame_prefix());
    let z = ExtentHeader {
        offset: 2 << 20,
        length: 4096,
        op: ExtentOp::WriteSparse,
        codec: Codec::Zstd,
        hash: [3; 32],
        payload_len: 7,
    };
    s.extend_from_slice(&z.encode_frame_prefix());
    s.extend_from_slice(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0]);
    s
}

/// Decodes a byte stream the way the receiver's stream loop does: frames one after another,
/// each body by its kind. Returns how many frames decoded; fails the test on an inconsistent
/// split, and re-encodes every message that decoded to check it round-trips.
fn decode_stream(mut buf: &[u8]) -> Result<usize, TestCaseError> {
    let mut n = 0;
    while let Ok(Some((kind, body, used))) = decode_frame(
        buf,
        MAX_CONTROL_BODY.max(MAX_EXTENT_PAYLOAD + EXTENT_HEADER_LEN as u32),
    ) {
        prop_assert!(used >= crate::wire::FRAME_HEADER_LEN && used <= buf.len());
        prop_assert_eq!(used - crate::wire::FRAME_HEADER_LEN, body.len());
        match kind {
            K_BATCH_START => {
                if let Ok(m) = BatchStart::decode(body) {
                    prop_assert_eq!(BatchStart::decode(&m.encode()[5..]).unwrap(), m);
                }
            }
            K_BATCH_RESULT => {
                if let Ok(m) = BatchResult::decode(body) {
                    prop_assert_eq!(BatchResult::decode(&m.encode()[5..]).unwrap(), m);
                }
            }
            K_EXTENT => {
                let h = body.get(..EXTENT_HEADER_LEN).unwrap_or(body);
                if let Ok(m) = ExtentHeader::decode(h, body.len() as u32) {
                    let f = m.encode_frame_prefix();
                    prop_assert_eq!(ExtentHeader::decode(&f[5..], body.len() as u32).unwrap(), m);
                }
            }
            k => {
                if let Ok(m) = Control::decode(k, body) {
                    let f = m.encode();
                    prop_assert_eq!(Control::decode(f[0], &f[5..]).unwrap(), m);
                }
            }
        }
        n += 1;
        buf = &buf[used..];
    }
    Ok(n)
}

#[test]
fn every_control_kind_and_a_data_stream_decode_whole() {
    let mut s = Vec::new();
    for m in every_control() {
        s.extend_from_slice(&m.encode());
    }
    assert_eq!(decode_stream(&s).unwrap(), every_control().len());
    assert_eq!(decode_stream(&sample_data_stream()).unwrap(), 4);
}

proptest! {
    #[test]
    fn random_frame_streams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        decode_stream(&bytes)?;
    }

    #[test]
    fn mutated_control_frames_never_panic_and_round_trip(
        which in 0usize..10, ms in crate::mutate::mutations(),
    ) {
        let f = every_control()[which].encode();
        decode_stream(&crate::mutate::mutated(&f, &ms))?;
        // The body alone, under its own kind, whatever the mutated length field says.
        let body = crate::mutate::mutated(&f[5..], &ms);
        if let Ok(m) = Control::decode(f[0], &body) {
            prop_assert_eq!(Control::decode(f[0], &m.encode()[5..]).unwrap(), m);
        }
    }

    #[test]
    fn mutated_data_streams_never_panic_and_round_trip(ms in crate::mutate::mutations()) {
        decode_stream(&crate::mutate::mutated(&sample_data_stream(), &ms))?;
    }

    #[test]
    fn mutated_batch_results_never_panic_and_round_trip(ms in crate::mutate::mutations()) {
        let m = BatchResult {
            written: 4,
            rejected: vec![(512, 1024, Rejection::HashMismatch), (8192, 512, Rejection::BadPayload)],
            error: Some((ErrorClass::TargetFull, "full".into())),
        };
        decode_stream(&crate::mutate::mutated(&m.encode(), &ms))?;
    }

    #[test]
    fn valid_extent_headers_and_batch_starts_round_trip(
        sector in 0u64..(1 << 40), sectors in 1u32..=8192, op in 0u8..4, zstd in any::<bool>(),
        hash in any::<[u8; 32]>(), plen in 0u32..(4 << 20), handle in any::<u32>(), generation in any::<u64>(),
    ) {
        let op = [ExtentOp::Write, ExtentOp::Clear, ExtentOp::WriteSparse, ExtentOp::WritePacked][op as usize];
        let codec = if zstd || op == ExtentOp::WritePacked { Codec::Zstd } else { Codec::Raw };
        let length = sectors * 512;
        let payload_len = match (op, codec) {
            (ExtentOp::Clear, _) => 0,
            (_, Codec::Raw) => length,
            (_, Codec::Zstd) => plen,
        };
        let h = ExtentHeader { offset: sector * 512, length, op, codec, hash, payload_len };
        let f = h.encode_frame_prefix();
        let frame_len = u32::from_le_bytes([f[1], f[2], f[3], f[4]]);
        prop_assert_eq!(ExtentHeader::decode(&f[5..], frame_len).unwrap(), h);
        let b = BatchStart { handle, generation };
        prop_assert_eq!(BatchStart::decode(&b.encode()[5..]).unwrap(), b);
    }
}
