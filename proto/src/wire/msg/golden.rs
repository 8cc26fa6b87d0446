//! Frames encoded by the codec before progress became a [`crate::ranges::RangeSet`] and the
//! control codec's repeated field groups were factored (issue 15): every control kind, as
//! fixed bytes. Decoding each and encoding it again must give the same bytes, so the wire
//! did not change (no protocol version bump). The bytes were printed by the old code; never
//! regenerate them from the current one.

use super::*;
use crate::job::{Job, JobKind, JobState};
use crate::ranges::RangeSet;
use crate::wire::{decode_frame, MAX_CONTROL_BODY};
use crate::{FormatError, Guid};

fn ranges(p: &[(u64, u64)]) -> RangeSet {
    p.iter().map(|&(a, b)| a..b).collect()
}

/// One message of every control kind, and each optional field both present and absent.
pub(super) fn golden_messages() -> Vec<Control> {
    vec![
        Control::Hello {
            min_version: 3,
            max_version: 5,
            software: "vdrep 0.1.0".into(),
        },
        Control::HelloAck { version: 5 },
        Control::OpenDisk {
            req: 1,
            vm: "vm1".into(),
            disk: "os".into(),
            virtual_size: 1 << 34,
            source_id: Guid([0xA5; 16]),
            full_copy: false,
            vm_disks: Vec::new(),
        },
        Control::OpenDisk {
            req: 2,
            vm: "vm1".into(),
            disk: "data".into(),
            virtual_size: (1 << 30) + 512,
            source_id: Guid([7; 16]),
            full_copy: true,
            vm_disks: vec!["data".into(), "os".into()],
        },
        Control::DiskOpened {
            req: 1,
            handle: 3,
            initial_committed: false,
            committed_cycle: 0,
            generation: 2,
            known_empty: true,
            progress: ranges(&[]),
            more_progress: false,
        },
        Control::DiskOpened {
            req: 2,
            handle: 4,
            initial_committed: true,
            committed_cycle: 17,
            generation: 9,
            known_empty: false,
            progress: ranges(&[(0, 512), (4096, 1 << 20), (u64::MAX - 512, u64::MAX)]),
            more_progress: true,
        },
        Control::CommitInitial {
            req: 3,
            handle: 4,
            generation: 9,
        },
        Control::Committed {
            req: 3,
            handle: 4,
            cycle: 0,
        },
        Control::BeginCycle {
            req: 4,
            handle: 4,
            cycle: 18,
        },
        Control::CycleOpened {
            req: 4,
            handle: 4,
            cycle: 18,
            progress: ranges(&[(1 << 20, 3 << 20)]),
            more_progress: false,
        },
        Control::CycleOpened {
            req: 5,
            handle: 4,
            cycle: 19,
            progress: ranges(&[(512, 1024), (2048, 4096)]),
            more_progress: true,
        },
        Control::CommitCycle {
            req: 6,
            handle: 4,
            cycle: 18,
            bytes: 3 << 20,
            digest: [0x3C; 32],
            retention_secs: 86_400,
        },
        Control::HashRequest {
            req: 7,
            handle: 4,
            level: 0,
            parents: Vec::new(),
            verify: true,
        },
        Control::HashRequest {
            req: 8,
            handle: 4,
            level: 2,
            parents: vec![1, 5, 1 << 40],
            verify: false,
        },
        Control::Hashes {
            req: 8,
            handle: 4,
            level: 2,
            hashes: vec![0x0102_0304_0506_0708, 0, u64::MAX],
        },
        Control::RootRequest { req: 9, handle: 4 },
        Control::Root {
            req: 9,
            handle: 4,
            root: [0xEE; 32],
        },
        Control::Error {
            req: 10,
            class: ErrorClass::InvalidState,
            message: "no cycle is open".into(),
        },
        Control::ReportJob {
            req: 11,
            job: Job {
                id: "j-1".into(),
                kind: JobKind::InitialReplication,
                vm: "vm1".into(),
                state: JobState::Running,
                start_ms: 1_764_148_516_123,
                end_ms: None,
                steps: Vec::new(),
                error: None,
            },
        },
        Control::JobRecorded { req: 11 },
        Control::QueryCapacity {
            req: 12,
            vm: "vm1".into(),
            needed: 1 << 35,
        },
        Control::Capacity {
            req: 12,
            available: u64::MAX,
        },
        Control::ClaimGroup {
            req: 13,
            group: "erp".into(),
            vms: vec!["db".into(), "app".into()],
            interval_secs: 30,
        },
        Control::ClaimGroup {
            req: 14,
            group: "solo".into(),
            vms: Vec::new(),
            interval_secs: 0,
        },
        Control::GroupClaimed {
            req: 13,
            group_cycle: 41,
        },
        Control::ProgressRequest {
            req: 15,
            handle: 4,
            after: 1 << 20,
        },
        Control::ProgressPage {
            req: 15,
            handle: 4,
            progress: ranges(&[(2 << 20, 5 << 20), (6 << 20, 7 << 20)]),
            more: true,
        },
        Control::ProgressPage {
            req: 16,
            handle: 4,
            progress: ranges(&[]),
            more: false,
        },
        Control::CommitPoint {
            req: 17,
            vm_cycle: 12,
            switch_unix_ms: 1_700_000_000_123,
            group: None,
            group_cycle: None,
            retention_secs: 3600,
            disks: vec![
                PointPart {
                    handle: 3,
                    cycle: 9,
                    bytes: 4096,
                    digest: [7; 32],
                },
                PointPart {
                    handle: 4,
                    cycle: 18,
                    bytes: 0,
                    digest: [0; 32],
                },
            ],
            one_instant: false,
        },
        Control::CommitPoint {
            req: 18,
            vm_cycle: 13,
            switch_unix_ms: 1,
            group: Some("erp".into()),
            group_cycle: Some(40),
            retention_secs: 0,
            disks: Vec::new(),
            one_instant: false,
        },
        Control::PointCommitted {
            req: 18,
            vm_cycle: 13,
        },
    ]
}

/// [`golden_messages`] as the old code encoded them, in order.
const GOLDEN: &[&str] = &[
    "0113000000030005000b000000766472657020302e312e30",
    "02020000000500",
    "032a0000000100000003000000766d31020000006f730000000004000000a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a500",
    "033e0000000200000003000000766d31040000006461746100020040000000000707070707070707070707070707070701020000000400000064617461020000006f73",
    "041e000000010000000300000000000000000000000002000000000000000100000000",
    "044f0000000200000004000000011100000000000000090000000000000000030000000000000000000000000200000000000000100000000000000000100000000000fffdffffffffffffffffffffffffffff01",
    "051000000003000000040000000900000000000000",
    "061000000003000000040000000000000000000000",
    "081000000004000000040000001200000000000000",
    "0924000000040000000400000012000000000000000100000000001000000000000000300000000000",
    "09350000000500000004000000130000000000000002000000000200000000000000040000000000000008000000000000001000000000000001",
    "0a3c0000000600000004000000120000000000000000003000000000003c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c80510100",
    "0b0e0000000700000004000000000000000001",
    "0b260000000800000004000000020300000001000000000000000500000000000000000000000001000000",
    "0c250000000800000004000000020300000008070605040302010000000000000000ffffffffffffffff",
    "0d080000000900000004000000",
    "0e280000000900000004000000eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee",
    "071a0000000a0000000300100000006e6f206379636c65206973206f70656e",
    "0f290000000b000000030000006a2d310203000000766d31011b1572bf9a01000000000000000000000000000000",
    "10040000000b000000",
    "11130000000c00000003000000766d310000000008000000",
    "120c0000000c000000ffffffffffffffff",
    "28200000000d0000000300000065727002000000020000006462030000006170701e000000",
    "28140000000e00000004000000736f6c6f0000000000000000",
    "290c0000000d0000002900000000000000",
    "13100000000f000000040000000000100000000000",
    "142d0000000f0000000400000002000000000020000000000000005000000000000000600000000000000070000000000001",
    "140d00000010000000040000000000000000",
    "1586000000110000000c000000000000007b68e5cf8b0100000000100e0000020000000300000009000000000000000010000000000000070707070707070707070707070707070707070707070707070707070707070704000000120000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "152d000000120000000d00000000000000010000000000000001030000006572700128000000000000000000000000000000",
    "160c000000120000000d00000000000000",
];

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn decode_whole(f: &[u8]) -> Result<Control, FormatError> {
    let (k, body, used) = decode_frame(f, MAX_CONTROL_BODY).unwrap().unwrap();
    assert_eq!(used, f.len());
    Control::decode(k, body)
}

#[test]
fn frames_of_the_old_codec_decode_and_reencode_byte_for_byte() {
    let messages = golden_messages();
    assert_eq!(messages.len(), GOLDEN.len());
    for (m, hex) in messages.iter().zip(GOLDEN) {
        let old = unhex(hex);
        let decoded = decode_whole(&old).unwrap_or_else(|e| panic!("{hex}: {e}"));
        assert_eq!(&decoded, m, "{hex}");
        assert_eq!(decoded.encode(), old, "{m:?} re-encodes differently");
        assert_eq!(m.encode(), old, "{m:?} encodes differently");
    }
}

/// `CycleOpened` frames (req 5, handle 4, cycle 19) the old encoder wrote from
/// non-canonical lists of pairs, and whether the old decoder accepted them.
const NON_CANONICAL: &[(&str, &str, bool)] = &[
    (
        "adjacent ranges [0, 512) [512, 1024) [4096, 8192)",
        "09440000000500000004000000130000000000000003000000000000000000000000020000000000000002000000000000000400000000000000100000000000000020000000000000",
        true,
    ),
    (
        "overlapping [0, 1024) [512, 2048)",
        "093400000005000000040000001300000000000000020000000000000000000000000400000000000000020000000000000008000000000000",
        false,
    ),
    (
        "unsorted [4096, 8192) [0, 512)",
        "093400000005000000040000001300000000000000020000000010000000000000002000000000000000000000000000000002000000000000",
        false,
    ),
    (
        "empty [1024, 1024)",
        "093400000005000000040000001300000000000000020000000000000000000000000200000000000000040000000000000004000000000000",
        false,
    ),
    (
        "reversed [1024, 512)",
        "0924000000050000000400000013000000000000000100000000040000000000000002000000000000",
        false,
    ),
];

#[test]
fn progress_a_peer_sends_out_of_canonical_form_is_accepted_or_refused_as_before() {
    for &(what, hex, accepted) in NON_CANONICAL {
        let got = decode_whole(&unhex(hex));
        assert_eq!(got.is_ok(), accepted, "{what}: {got:?}");
        if let Err(e) = got {
            assert!(
                e.to_string().contains("empty or out of order"),
                "{what}: {e}"
            );
        }
    }
    // Touching ranges merge: the set is the same, its canonical encoding one range shorter.
    let merged = Control::CycleOpened {
        req: 5,
        handle: 4,
        cycle: 19,
        progress: ranges(&[(0, 1024), (4096, 8192)]),
        more_progress: false,
    };
    let touching = unhex(NON_CANONICAL[0].1);
    assert_eq!(decode_whole(&touching).unwrap(), merged);
    assert_eq!(merged.encode().len(), touching.len() - 16);
}

#[test]
fn a_range_list_longer_than_the_limit_is_refused_before_it_is_read() {
    // ProgressPage req 1, handle 4, count MAX_RANGES + 1 and no ranges behind it.
    let mut body = Vec::new();
    body.extend_from_slice(&1u32.to_le_bytes());
    body.extend_from_slice(&4u32.to_le_bytes());
    body.extend_from_slice(&(MAX_RANGES as u32 + 1).to_le_bytes());
    let mut f = Vec::new();
    crate::wire::encode_frame(20, &body, &mut f);
    let e = decode_whole(&f).unwrap_err();
    assert!(e.to_string().contains("exceed the limit"), "{e}");
}

proptest::proptest! {
    /// Every kind, through the shared field encodings: mutated frames never panic, and what
    /// decodes encodes to a frame that decodes to the same message.
    #[test]
    fn mutated_frames_of_every_kind_never_panic_and_round_trip(
        which in 0usize..GOLDEN.len(), ms in crate::mutate::mutations(),
    ) {
        let f = unhex(GOLDEN[which]);
        let body = crate::mutate::mutated(&f[5..], &ms);
        if let Ok(m) = Control::decode(f[0], &body) {
            let again = m.encode();
            proptest::prop_assert_eq!(Control::decode(f[0], &again[5..]).unwrap(), m);
        }
    }
}
