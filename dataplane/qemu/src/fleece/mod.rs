//! Fleecing views: point-in-time views of a VM's disks taken at one instant, with the dirty
//! bitmaps that say what changed since the previous view ([`Fleecer`] has the recipe and its
//! invariant), their cleanup after a crash ([`cleanup_leftovers`]) and loss detection
//! ([`bitmap_state`], [`lost_bitmaps`]).

mod bitmap;
mod cleanup;
mod copy;
mod error;
pub mod names;
mod nbd_server;
mod target;
mod view;
mod wait;

pub use bitmap::{
    bitmap_state, lost_bitmaps, probe_bitmap, reconcile_bitmaps, remove_bitmap, BitmapState,
    LossReason, PROBE_BITMAP,
};
pub use cleanup::{cleanup_leftovers, remove_all_bitmaps, Leftovers};
pub use copy::copy_need;
pub use error::FleeceError;
pub use nbd_server::{start_nbd_server, stop_nbd_server};
pub use target::{check_room, free_bytes, scratch_need};
pub use view::{Fleecer, SwitchDisk, View};
