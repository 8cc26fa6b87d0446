//! Codec tests of the job frames: round trips, limits, and decoders fed random and mutated
//! bytes (they must never panic, and whatever decodes must re-encode to itself).

use super::*;
use crate::wire::{decode_frame, Control, MAX_CONTROL_BODY};
use proptest::prelude::*;

fn sample_job() -> Job {
    Job {
        id: "j-1764148516123-9f2a".into(),
        kind: JobKind::EnableProtection,
        vm: "vm1".into(),
        state: JobState::Failed,
        start_ms: 1_764_148_516_123,
        end_ms: Some(1_764_148_517_000),
        steps: vec![
            Step {
                name: "disks readable".into(),
                state: JobState::Succeeded,
                start_ms: Some(1_764_148_516_123),
                end_ms: Some(1_764_148_516_200),
                detail: "os.vhdx: 1073741824 bytes".into(),
            },
            Step {
                name: "receiver reachable and authorised".into(),
                state: JobState::Failed,
                start_ms: Some(1_764_148_516_200),
                end_ms: None,
                detail: String::new(),
            },
        ],
        error: Some(JobError {
            message: "receiver 127.0.0.1:1: certificate refused".into(),
            recoverable: false,
        }),
    }
}

fn job_frames() -> Vec<Control> {
    vec![
        Control::ReportJob {
            req: 3,
            job: sample_job(),
        },
        Control::ReportJob {
            req: 4,
            job: Job {
                steps: vec![],
                error: None,
                state: JobState::Queued,
                kind: JobKind::TestFailover,
                ..sample_job()
            },
        },
        Control::JobRecorded { req: 3 },
        Control::QueryCapacity {
            req: 5,
            vm: "vm1".into(),
            needed: 1 << 33,
        },
        Control::Capacity {
            req: 5,
            available: u64::MAX,
        },
    ]
}

fn roundtrip(m: &Control) -> Result<(), TestCaseError> {
    let f = m.encode();
    let (k, body, used) = decode_frame(&f, MAX_CONTROL_BODY).unwrap().unwrap();
    prop_assert_eq!(used, f.len());
    prop_assert_eq!(&Control::decode(k, body).unwrap(), m);
    Ok(())
}

#[test]
fn job_frames_round_trip() {
    for m in job_frames() {
        roundtrip(&m).unwrap();
    }
}

#[test]
fn job_kinds_and_states_have_stable_names() {
    for k in [
        JobKind::EnableProtection,
        JobKind::InitialReplication,
        JobKind::FinalizeProtection,
        JobKind::TestFailover,
        JobKind::Resync,
    ] {
        assert_eq!(JobKind::from_code(k.code()), Some(k));
        assert_eq!(JobKind::parse(k.as_str()), Some(k));
    }
    assert_eq!(JobKind::EnableProtection.as_str(), "enable-protection");
    for s in [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
    ] {
        assert_eq!(JobState::parse(s.as_str()), Some(s));
    }
}

#[test]
fn a_report_claiming_more_steps_than_the_limit_is_refused_without_allocating() {
    let f = Control::ReportJob {
        req: 1,
        job: Job {
            steps: vec![],
            error: None,
            ..sample_job()
        },
    }
    .encode();
    let body = &f[5..];
    // The step count sits right after id, kind, vm, state and the two times.
    let at = 4 + 4 + sample_job().id.len() + 1 + 4 + 3 + 1 + 16;
    let mut bad = body.to_vec();
    bad[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let e = Control::decode(f[0], &bad).unwrap_err().to_string();
    assert!(e.contains("exceed the limit"), "{e}");
}

#[test]
fn unknown_kinds_states_and_booleans_are_errors() {
    let f = Control::ReportJob {
        req: 1,
        job: sample_job(),
    }
    .encode();
    let kind_at = 5 + 4 + 4 + sample_job().id.len();
    let mut bad = f.clone();
    bad[kind_at] = 77;
    assert!(Control::decode(bad[0], &bad[5..]).is_err());
    let state_at = kind_at + 1 + 4 + 3;
    let mut bad = f.clone();
    bad[state_at] = 9;
    assert!(Control::decode(bad[0], &bad[5..]).is_err());
    let mut trailing = f[5..].to_vec();
    trailing.push(0);
    assert!(Control::decode(f[0], &trailing).is_err());
}

proptest! {
    #[test]
    fn hostile_job_frame_bodies_never_panic(kind in 15u8..=18, body in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(m) = Control::decode(kind, &body) {
            roundtrip(&m)?;
        }
    }

    #[test]
    fn mutated_job_frames_never_panic_and_round_trip(which in 0usize..5, ms in crate::mutate::mutations()) {
        let f = job_frames()[which].encode();
        let body = crate::mutate::mutated(&f[5..], &ms);
        if let Ok(m) = Control::decode(f[0], &body) {
            roundtrip(&m)?;
        }
        let whole = crate::mutate::mutated(&f, &ms);
        if let Ok(Some((k, b, _))) = decode_frame(&whole, MAX_CONTROL_BODY) {
            if let Ok(m) = Control::decode(k, b) {
                roundtrip(&m)?;
            }
        }
    }

    #[test]
    fn any_valid_job_round_trips(
        id in "[a-z0-9-]{1,40}", vm in "[a-z0-9]{1,20}", kind in 1u8..=5, state in 0u8..=3,
        start in any::<u64>(), end in proptest::option::of(1u64..),
        steps in proptest::collection::vec(("[ -~]{0,30}", 0u8..=3, proptest::option::of(1u64..), proptest::option::of(1u64..), "\\PC{0,40}"), 0..10),
        err in proptest::option::of(("\\PC{0,60}", any::<bool>())),
    ) {
        let job = Job {
            id, vm,
            kind: JobKind::from_code(kind).unwrap(),
            state: JobState::from_code(state).unwrap(),
            start_ms: start, end_ms: end,
            steps: steps.into_iter().map(|(name, s, a, b, detail)| Step {
                name, state: JobState::from_code(s).unwrap(), start_ms: a, end_ms: b, detail,
            }).collect(),
            error: err.map(|(message, recoverable)| JobError { message, recoverable }),
        };
        roundtrip(&Control::ReportJob { req: 9, job })?;
    }
}

#[test]
fn overlong_strings_are_cut_and_only_the_last_steps_are_sent() {
    let mut job = sample_job();
    job.error = Some(JobError {
        message: "é".repeat(5000),
        recoverable: true,
    });
    job.steps = (0..MAX_JOB_STEPS + 3)
        .map(|i| Step {
            name: format!("step {i}"),
            state: JobState::Succeeded,
            start_ms: Some(1),
            end_ms: Some(2),
            detail: String::new(),
        })
        .collect();
    let f = Control::ReportJob { req: 1, job }.encode();
    let (k, body, _) = decode_frame(&f, MAX_CONTROL_BODY).unwrap().unwrap();
    let Control::ReportJob { job, .. } = Control::decode(k, body).unwrap() else {
        panic!("not a job report");
    };
    let m = &job.error.unwrap().message;
    assert!(
        m.len() <= crate::wire::MAX_STRING && m.ends_with("..."),
        "{}",
        m.len()
    );
    assert_eq!(job.steps.len(), MAX_JOB_STEPS);
    assert_eq!(job.steps[0].name, "step 3", "the last steps are kept");
}
