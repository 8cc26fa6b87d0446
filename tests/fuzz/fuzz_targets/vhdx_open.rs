//! Whole images through `vdrep::disk::open_from` (format detected by content, as `open` does).
//! First byte 0: the rest is the image (raw, VHD, VHDX, anything). Otherwise the rest patches a
//! valid base image (see `vdrep_fuzz::patch`): 1 = VHDX, 2 = VHDX with a dirty log to replay,
//! 3 = dynamic VHD. Whatever opens is queried like the pipeline would.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vdrep::disk::{open_from, OpenOptions};
use vdrep_fuzz::{dynamic_vhd, exercise, mem, patch, vhdx, VHDX_FOCUS};

static BASES: OnceLock<[Vec<u8>; 3]> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bases = BASES.get_or_init(|| [vhdx(false), vhdx(true), dynamic_vhd()]);
    let image = match mode % 4 {
        0 => rest.to_vec(),
        m => {
            let mut img = bases[usize::from(m) - 1].clone();
            let whole = [(0, img.len())];
            let focus: &[(usize, usize)] = if m == 3 { &whole } else { &VHDX_FOCUS };
            patch(&mut img, rest, focus);
            img
        }
    };
    if let Ok(d) = open_from(
        mem(image),
        OpenOptions {
            allow_4k_logical: true,
        },
    ) {
        exercise(d.as_ref());
    }
});
