//! Shared pieces of the fuzz targets: an in-memory `ReadAt`, valid base images to patch, a
//! patch format that keeps libFuzzer inputs small while the images are megabytes, and the
//! queries a reader must survive once an image opened.

mod store;

// The sample images, the in-memory reader and the reader queries are the disk readers' own
// (`vdrep::disk::fuzzing`, shared with their property tests).
pub use store::{reseal_hidx, reseal_state, valid_state_record, MemData, MemIndex};
pub use vdrep::disk::fuzzing::{dynamic_vhd, exercise, mem, vhdx, VHDX_FOCUS};

/// Applies patches read from `input` to `image`: each patch is `window: u8, at: u16 LE,
/// len: u8`, then `len & 0x3f` bytes. The window picks one of `focus` (modulo); `at` is taken
/// modulo the window's span. `len` bit 7 inserts the bytes instead of overwriting them, bit 6
/// truncates the image at that position (the bytes are ignored).
pub fn patch(image: &mut Vec<u8>, mut input: &[u8], focus: &[(usize, usize)]) {
    while input.len() >= 4 {
        let (base, span) = focus[usize::from(input[0]) % focus.len()];
        let at = base + usize::from(u16::from_le_bytes([input[1], input[2]])) % span.max(1);
        let flags = input[3];
        let n = usize::from(flags & 0x3f).min(input.len() - 4);
        let bytes = &input[4..4 + n];
        input = &input[4 + n..];
        let at = at.min(image.len());
        if flags & 0x40 != 0 {
            image.truncate(at);
        } else if flags & 0x80 != 0 {
            image.splice(at..at, bytes.iter().copied());
        } else {
            let end = (at + n).min(image.len());
            image[at..end].copy_from_slice(&bytes[..end - at]);
        }
    }
}
