//! How fast this CPU hashes 4 KiB pages, each way the resync tree's leaves can be hashed:
//! `blake3::hash` of the whole buffer as one input (what SIMD gives when the crate has many
//! chunks of one input: the ceiling), `blake3::hash` of each page, and every page kernel of
//! `resync::leaves` this CPU runs, on the buffer whole and cut into 1,440-byte slices (a
//! frame received over a 1500-MTU link, as the receiver hashes it). One thread, warm buffer,
//! the methods alternated round by round; thread CPU seconds per GiB (wall seconds beside
//! them).
//!
//! `cargo run --release -p vdrep-store --example page_hash_speed -- [BUFFER_KIB [ROUNDS [GIB]]]`
//! (defaults 1024 KiB, 5 rounds, 1 GiB per method and round).

use vdrep_store::clock::std_now;
use vdrep_store::parts::Parts;
use vdrep_store::resync::leaves::{page_hashes_parts_with, page_hashes_with, Kernel};

/// How a method hashes the buffer.
#[derive(Clone, Copy)]
enum Method {
    Whole,
    Pages(Kernel),
    Slices(Kernel),
}

/// CPU seconds this thread has used.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers: BUFFER_KIB ROUNDS GIB"))
        .collect();
    let kib = args.first().copied().unwrap_or(1024) as usize;
    let rounds = args.get(1).copied().unwrap_or(5);
    let gib = args.get(2).copied().unwrap_or(1) as usize;
    let mut x = 0x9E3779B9u32;
    let buf: Vec<u8> = (0..kib * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let reps = (gib << 30) / buf.len();
    let mut out = Vec::with_capacity(buf.len() / 4096);
    let slices: Vec<&[u8]> = buf.chunks(1440).collect();
    let mut methods: Vec<(String, Method)> = vec![
        ("blake3::hash whole buffer".into(), Method::Whole),
        (
            "blake3::hash per page".into(),
            Method::Pages(Kernel::PerPage),
        ),
    ];
    for k in Kernel::available() {
        if k != Kernel::PerPage {
            methods.push((format!("kernel {k:?}"), Method::Pages(k)));
        }
        methods.push((format!("kernel {k:?}, 1,440 B slices"), Method::Slices(k)));
    }
    println!(
        "buffer {kib} KiB, {gib} GiB per method and round, chosen kernel {:?}",
        Kernel::chosen()
    );
    let mut cpu = vec![Vec::new(); methods.len()];
    for round in 0..rounds {
        for (i, (name, kernel)) in methods.iter().enumerate() {
            let (c0, w0) = (thread_cpu(), std_now());
            for _ in 0..reps {
                out.clear();
                match kernel {
                    Method::Whole => {
                        std::hint::black_box(blake3::hash(std::hint::black_box(&buf)));
                    }
                    Method::Pages(k) => {
                        page_hashes_with(*k, std::hint::black_box(&buf), &mut out);
                    }
                    Method::Slices(k) => {
                        let p = Parts::new(std::hint::black_box(&slices));
                        page_hashes_parts_with(*k, p, &mut out);
                    }
                }
                std::hint::black_box(&out);
            }
            let (c, w) = (thread_cpu() - c0, w0.elapsed().as_secs_f64());
            let per = (reps * buf.len()) as f64 / (1u64 << 30) as f64;
            cpu[i].push(c / per);
            println!(
                "round {round} {name:<28} cpu {:.3} s/GiB  wall {:.3} s/GiB",
                c / per,
                w / per
            );
        }
    }
    println!("median CPU s/GiB over {rounds} rounds (ratio to per page):");
    let med = |v: &Vec<f64>| {
        let mut v = v.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let base = med(&cpu[1]);
    for ((name, _), c) in methods.iter().zip(&cpu) {
        let m = med(c);
        println!(
            "  {name:<28} {m:.3}  {:.2}x  (min {:.3}, max {:.3})",
            base / m,
            c.iter().copied().fold(f64::INFINITY, f64::min),
            c.iter().copied().fold(0.0, f64::max)
        );
    }
}
