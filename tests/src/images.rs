//! Source disks for replication tests: images made by qemu-img and written by qemu-io (one
//! qemu-io process per image, many writes), and raw files of random bytes for copies that
//! must take a few seconds.

use std::io::{Read, Write};

use std::path::{Path, PathBuf};
use std::process::Command;

use rand::{Rng, SeedableRng};

use crate::{qemu_fmt, qemu_img_create, require_qemu, run};

/// An image format as the tests name it, with its qemu-img creation options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// VHD with a BAT (`-f vpc -o subformat=dynamic`).
    VhdDynamic,
    /// Fixed VHD (`-f vpc -o subformat=fixed`).
    VhdFixed,
    /// VHDX, dynamic.
    Vhdx,
    /// Plain bytes.
    Raw,
}

impl Kind {
    /// vdrep's / the helpers' format name (`vhd`, `vhdx`, `raw`).
    pub fn fmt(self) -> &'static str {
        match self {
            Kind::VhdDynamic | Kind::VhdFixed => "vhd",
            Kind::Vhdx => "vhdx",
            Kind::Raw => "raw",
        }
    }

    fn ext(self) -> &'static str {
        match self {
            Kind::VhdDynamic | Kind::VhdFixed => "vhd",
            Kind::Vhdx => "vhdx",
            Kind::Raw => "raw",
        }
    }

    fn create_opts(self) -> &'static str {
        // force_size: qemu otherwise rounds a VHD to its CHS geometry.
        match self {
            Kind::VhdDynamic => "subformat=dynamic,force_size=on",
            Kind::VhdFixed => "subformat=fixed,force_size=on",
            Kind::Vhdx | Kind::Raw => "",
        }
    }
}

/// One qemu-io write: `write -P pattern offset len` (pattern 0 writes `-z` zeros).
#[derive(Debug, Clone, Copy)]
pub struct QWrite {
    /// Byte pattern.
    pub pattern: u8,
    /// Offset in bytes.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Creates `dir/NAME.EXT` of `size` bytes in format `kind` and applies `writes` with one
/// qemu-io run.
pub fn make_image(dir: &Path, name: &str, kind: Kind, size: u64, writes: &[QWrite]) -> PathBuf {
    require_qemu();
    let path = dir.join(format!("{name}.{}", kind.ext()));
    qemu_img_create(
        &path,
        qemu_fmt(kind.fmt()),
        kind.create_opts(),
        &size.to_string(),
    );
    qemu_io(&path, kind.fmt(), writes);
    path
}

/// A VM of two zero disks of different formats in `dir` (created): `os.raw` and a fixed
/// VHD `data.vhd`, `size` bytes each (the disks the strict-order writer of
/// [`crate::numbered`] writes in the VM point and switch tests).
pub fn zero_vm_disks(dir: &Path, size: u64) -> [PathBuf; 2] {
    std::fs::create_dir_all(dir).unwrap();
    let os = dir.join("os.raw");
    std::fs::write(&os, vec![0u8; size as usize]).unwrap();
    let data = make_image(dir, "data", Kind::VhdFixed, size, &[]);
    [os, data]
}

/// Applies `writes` to an existing image with one qemu-io process.
pub fn qemu_io(path: &Path, fmt: &str, writes: &[QWrite]) {
    if writes.is_empty() {
        return;
    }
    let mut c = Command::new("qemu-io");
    c.args(["-f", qemu_fmt(fmt)]);
    for w in writes {
        let cmd = if w.pattern == 0 {
            format!("write -z {} {}", w.offset, w.len)
        } else {
            format!("write -P {} {} {}", w.pattern, w.offset, w.len)
        };
        c.args(["-c", &cmd]);
    }
    run(c.arg(path));
}

/// A realistic scatter of writes over `size` bytes, seeded: `n` runs of 4 KiB..1 MiB with
/// varied patterns at 512-byte-aligned offsets (some crossing 2 MiB block boundaries), some
/// zero runs, plus the first and the last MiB.
pub fn scattered_writes(seed: u64, size: u64, n: usize) -> Vec<QWrite> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![
        QWrite {
            pattern: 0xeb,
            offset: 0,
            len: 1 << 20,
        },
        QWrite {
            pattern: 0x5a,
            offset: size - (1 << 20),
            len: 1 << 20,
        },
    ];
    for i in 0..n {
        let len = rng.gen_range(8..=2048u64) * 512;
        let offset = rng.gen_range(0..(size - len) / 512) * 512;
        let pattern = if i % 9 == 8 {
            0
        } else {
            rng.gen_range(1..=255u8)
        };
        v.push(QWrite {
            pattern,
            offset,
            len,
        });
    }
    v
}

/// A raw file of `size` random bytes (incompressible, so every byte crosses the wire).
pub fn random_raw(path: &Path, size: u64) -> PathBuf {
    let mut src = std::fs::File::open("/dev/urandom").unwrap().take(size);
    let mut f = std::fs::File::create(path).unwrap();
    std::io::copy(&mut src, &mut f).unwrap();
    f.flush().unwrap();
    path.to_path_buf()
}

/// A raw file of `size` bytes, seeded pseudo-random data in `chunk`-sized runs where every
/// `zero_every`-th chunk is left zero (sparse): a mix of data the wire carries and holes.
pub fn seeded_raw(path: &Path, size: u64, seed: u64, chunk: usize, zero_every: u64) -> PathBuf {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut buf = vec![0u8; chunk];
    let mut off = 0u64;
    let mut i = 0u64;
    use std::os::unix::fs::FileExt;
    while off < size {
        let n = (size - off).min(chunk as u64) as usize;
        if zero_every == 0 || i % zero_every != zero_every - 1 {
            rng.fill(&mut buf[..n]);
            f.write_all_at(&buf[..n], off).unwrap();
        }
        off += n as u64;
        i += 1;
    }
    path.to_path_buf()
}
