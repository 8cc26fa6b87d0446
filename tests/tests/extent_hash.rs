//! Protocol version 6 (issue 21): an extent's hash is BLAKE3 over the hashes of its bytes cut
//! at the disk's 4 KiB page boundaries (WIRE.md §5), so the receiver hashes each byte once,
//! for the check and for its resync index. A real `vdrep receive`, driven by peers pinned to
//! versions 6 and 5 on one connection: each disk is verified with the hashing of the
//! stream that opened it; an extent with one page changed in transit is refused with its
//! offset named and not written, at any 512-byte alignment; clears verify at unaligned
//! offsets; and the index the receiver fed from the verified pieces answers the root of the
//! bytes actually written.

use vdrep_proto::wire::{Control, ExtentOp, Rejection};
use vdrep_store::resync::{root, Tree};
use vdrep_tests::bytes::noise;
use vdrep_tests::hostile::{batch_start, extent, hash, page_hash, Ctl, Peer, Target};

const KIB: u64 = 1 << 10;
const DISK: u64 = 4 << 20;

/// What one extent of a test batch is and whether the receiver must take it.
struct Case {
    offset: u64,
    length: u32,
    op: ExtentOp,
    hash: [u8; 32],
    payload: Vec<u8>,
    accepted: bool,
}

/// The extents for one disk, the hashes made by `hash_of` (the disk's version), and what
/// the replica must hold after them.
fn cases(
    hash_of: fn(u64, &[u8]) -> [u8; 32],
    other: fn(u64, &[u8]) -> [u8; 32],
) -> (Vec<Case>, Vec<u8>) {
    let mut img = vec![0u8; DISK as usize];
    let mut v = Vec::new();
    let mut write = |img: &mut Vec<u8>, offset: u64, hash: [u8; 32], sent: Vec<u8>| {
        let accepted = hash == hash_of(offset, &sent);
        if accepted {
            img[offset as usize..offset as usize + sent.len()].copy_from_slice(&sent);
        }
        v.push(Case {
            offset,
            length: sent.len() as u32,
            op: ExtentOp::Write,
            hash,
            payload: sent,
            accepted,
        });
    };
    // Aligned, whole index nodes (256 KiB each): the index takes the pieces' hashes.
    let a = noise(1, 512 * KIB as usize);
    write(&mut img, 0, hash_of(0, &a), a);
    // 512-byte aligned at both ends, across pages: a head and a tail piece.
    let b = noise(2, (12 * KIB + 1024) as usize);
    write(&mut img, 1536 * KIB + 512, hash_of(1536 * KIB + 512, &b), b);
    // Inside one page.
    let c = noise(3, 1024);
    write(
        &mut img,
        2048 * KIB + 1024,
        hash_of(2048 * KIB + 1024, &c),
        c,
    );
    // One page changed in transit (the sender hashed the original): refused, not written.
    for (offset, page) in [(1024 * KIB, 5usize), (3072 * KIB + 512, 0)] {
        let orig = noise(4 + offset, 64 * KIB as usize);
        let mut sent = orig.clone();
        sent[page * 4096 + 77] ^= 0x20;
        write(&mut img, offset, hash_of(offset, &orig), sent);
    }
    // The other version's hash of the right bytes: refused.
    let d = noise(9, 8 * KIB as usize);
    write(&mut img, 2560 * KIB, other(2560 * KIB, &d), d);
    // Clears: one at an unaligned offset over written bytes (taken), one with the other
    // version's hash (refused).
    let (co, cl) = (512 * KIB - 1536, 8 * KIB as u32 + 512);
    let z = vec![0u8; cl as usize];
    v.push(Case {
        offset: co,
        length: cl,
        op: ExtentOp::Clear,
        hash: hash_of(co, &z),
        payload: Vec::new(),
        accepted: true,
    });
    img[co as usize..co as usize + cl as usize].fill(0);
    v.push(Case {
        offset: 0,
        length: 16 * KIB as u32,
        op: ExtentOp::Clear,
        hash: other(0, &[0u8; 16 << 10]),
        payload: Vec::new(),
        accepted: false,
    });
    (v, img)
}

/// Sends `cases` to disk `h` in one batch and checks the result names exactly the refused.
async fn check(p: &mut Peer, h: u32, g: u64, cases: &[Case]) {
    let frames: Vec<Vec<u8>> = cases
        .iter()
        .map(|c| extent(c.offset, c.length, c.op, c.hash, &c.payload))
        .collect();
    let r = p
        .batch("legitimate", &batch_start(h, g), &frames, true)
        .await
        .expect("a batch result");
    assert!(r.error.is_none(), "{r:?}");
    let refused: Vec<u64> = r.rejected.iter().map(|x| x.0).collect();
    let want: Vec<u64> = cases
        .iter()
        .filter(|c| !c.accepted)
        .map(|c| c.offset)
        .collect();
    assert_eq!(refused, want, "{r:?}");
    assert!(
        r.rejected.iter().all(|x| x.2 == Rejection::HashMismatch),
        "{r:?}"
    );
    assert_eq!(r.written as usize, cases.len() - want.len());
}

/// Commits the copy and compares the receiver's root with the expected image's.
async fn commit_and_compare(p: &mut Peer, ctl: &mut Ctl, h: u32, g: u64, img: &Vec<u8>) {
    let got = p
        .request(
            ctl,
            "legitimate",
            Control::CommitInitial {
                req: 0,
                handle: h,
                generation: g,
            },
        )
        .await;
    assert!(
        matches!(
            got,
            vdrep_tests::hostile::Got::Answer(Control::Committed { .. })
        ),
        "{got:?}"
    );
    let got = p
        .request(
            ctl,
            "legitimate",
            Control::RootRequest { req: 0, handle: h },
        )
        .await;
    let tree = Tree::build(img, 1).unwrap();
    let want = root(&mut &tree).unwrap();
    match got {
        vdrep_tests::hostile::Got::Answer(Control::Root { root, .. }) => {
            assert_eq!(
                root, want,
                "the replica's index answers the written bytes' root"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn each_version_verifies_its_own_extent_hash_and_a_changed_page_is_refused_by_offset() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let Target { rt, rx, to, tls } = Target::start(d, &["hv01"], &["hv01=vm1"], &[], 2);
    rt.block_on(async {
        let mut p = Peer::connect(to, &tls, "hv01").await.unwrap();
        let mut c6 = p.control().await;
        let (h6, g6) = p.open(&mut c6, "vm1", "d6.vhd", DISK).await;
        let mut c5 = p.control_at(5).await;
        let (h5, g5) = p.open(&mut c5, "vm1", "d5.vhd", DISK).await;

        let (v6, img6) = cases(page_hash, |_, b| hash(b));
        check(&mut p, h6, g6, &v6).await;
        let (v5, img5) = cases(|_, b| hash(b), page_hash);
        check(&mut p, h5, g5, &v5).await;

        commit_and_compare(&mut p, &mut c6, h6, g6, &img6).await;
        commit_and_compare(&mut p, &mut c5, h5, g5, &img5).await;
    });
    let log = std::fs::read_to_string(&rx.log).unwrap();
    assert!(
        log.contains("offset=1048576") && log.contains("HashMismatch"),
        "the receiver names the refused extent's offset"
    );
}
