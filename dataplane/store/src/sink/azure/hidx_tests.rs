//! The page tracking of the Azure resync index, over an in-memory page blob that enforces
//! the page rules and fails chosen requests.

use std::sync::{Arc, Mutex};

use super::*;
use crate::resync::index::{full_node_hashes, Index};

/// A page blob in memory: content, recorded length, and the Put Pages it took.
#[derive(Default)]
struct Blob {
    exists: bool,
    data: Vec<u8>,
    len: Option<u64>,
    /// (offset, length) of every Put Page that succeeded.
    puts: Vec<(u64, usize)>,
    creates: usize,
    /// Ranged Get Blobs served.
    gets: usize,
    /// Put Pages to refuse, counted down: the request with this number (1-based) fails.
    fail_put: Option<usize>,
}

#[derive(Clone, Default)]
struct MemBlob(Arc<Mutex<Blob>>);

fn refused(op: &'static str) -> RestError {
    RestError {
        url: "mem".into(),
        op,
        offset: 0,
        status: Some(500),
        code: "InternalError".into(),
        message: "injected".into(),
        recoverable: true,
    }
}

impl IndexBlob for MemBlob {
    fn props(&self) -> Result<Option<(u64, Option<u64>)>, RestError> {
        let b = self.0.lock().unwrap();
        Ok(b.exists.then(|| (b.data.len() as u64, b.len)))
    }
    fn get_range(&self, offset: u64, len: u64) -> Result<Vec<u8>, RestError> {
        let mut b = self.0.lock().unwrap();
        b.gets += 1;
        let end = (offset + len) as usize;
        assert!(end <= b.data.len(), "Get Blob beyond the blob's size");
        Ok(b.data[offset as usize..end].to_vec())
    }
    fn create(&self, size: u64, len: u64) -> Result<(), RestError> {
        assert_eq!(size % PAGE, 0, "a page blob's size is whole pages");
        let mut b = self.0.lock().unwrap();
        b.exists = true;
        b.data = vec![0; size as usize];
        b.len = Some(len);
        b.creates += 1;
        Ok(())
    }
    fn put(&self, offset: u64, data: &[u8]) -> Result<(), RestError> {
        check_put_page(offset, data.len()).expect("the page rules");
        let mut b = self.0.lock().unwrap();
        if let Some(n) = b.fail_put.as_mut() {
            *n -= 1;
            if *n == 0 {
                b.fail_put = None;
                return Err(refused("put page"));
            }
        }
        let end = offset as usize + data.len();
        assert!(end <= b.data.len(), "Put Page beyond the blob's size");
        b.data[offset as usize..end].copy_from_slice(data);
        b.puts.push((offset, data.len()));
        Ok(())
    }
    fn url(&self) -> String {
        "mem/vm/disk.hidx".into()
    }
}

/// The whole file through the index file interface (`None`: no file).
fn read_all(f: &dyn IndexFile) -> Option<Vec<u8>> {
    let len = f.size().unwrap()?;
    let mut v = vec![0u8; len as usize];
    f.read_at(0, &mut v).unwrap();
    Some(v)
}

impl MemBlob {
    fn take_puts(&self) -> Vec<(u64, usize)> {
        std::mem::take(&mut self.0.lock().unwrap().puts)
    }
    /// The content as a reader would see it after a crash: only what was sent.
    fn durable(&self) -> Vec<u8> {
        let b = self.0.lock().unwrap();
        b.data[..b.len.unwrap_or(0) as usize].to_vec()
    }
}

#[test]
fn small_writes_reach_the_blob_only_at_sync_as_the_whole_pages_they_touch() {
    let blob = MemBlob::default();
    let f = PagedIndex::new(blob.clone(), MAX_PUT_PAGE);
    assert_eq!(read_all(&f), None);
    f.set_len(3000).unwrap();
    f.write_at(0, &[1u8; 3000]).unwrap();
    f.sync().unwrap();
    assert_eq!(blob.0.lock().unwrap().creates, 1);
    blob.take_puts();
    // 64 bytes in page 0 and 32 bytes straddling pages 2 and 3.
    f.write_at(0, &[2u8; 64]).unwrap();
    f.write_at(1530, &[3u8; 32]).unwrap();
    assert!(blob.take_puts().is_empty(), "nothing is sent before sync");
    assert_eq!(f.pending(), 3 * PAGE);
    f.sync().unwrap();
    assert_eq!(blob.take_puts(), vec![(0, 512), (1024, 1024)]);
    assert_eq!(f.pending(), 0);
    let mut want = vec![1u8; 3000];
    want[..64].fill(2);
    want[1530..1562].fill(3);
    assert_eq!(blob.durable(), want);
    assert_eq!(blob.0.lock().unwrap().len, Some(3000));
    assert_eq!(blob.0.lock().unwrap().data.len(), 3072);
    // Another instance (a receiver that takes over) reads exactly the file's bytes.
    let again = PagedIndex::new(blob.clone(), MAX_PUT_PAGE);
    assert_eq!(read_all(&again), Some(want));
    // A sync with nothing dirty sends nothing.
    again.sync().unwrap();
    assert!(blob.take_puts().is_empty());
}

#[test]
fn long_dirty_runs_are_sent_in_put_pages_no_larger_than_the_limit() {
    let blob = MemBlob::default();
    let f = PagedIndex::new(blob.clone(), 2048);
    f.set_len(10_000).unwrap();
    f.write_at(0, &vec![9u8; 10_000]).unwrap();
    f.sync().unwrap();
    let puts = blob.take_puts();
    assert!(puts
        .iter()
        .all(|&(o, l)| l <= 2048 && o % 512 == 0 && l % 512 == 0));
    assert_eq!(puts.iter().map(|p| p.1).sum::<usize>(), 10_240);
    assert_eq!(blob.durable(), vec![9u8; 10_000]);
}

#[test]
fn a_failed_put_page_leaves_its_pages_dirty_and_the_next_sync_sends_them() {
    let blob = MemBlob::default();
    let f = PagedIndex::new(blob.clone(), 1024);
    f.set_len(8192).unwrap();
    f.write_at(0, &vec![0u8; 8192]).unwrap();
    f.sync().unwrap();
    blob.take_puts();
    f.write_at(100, &[5u8; 4000]).unwrap();
    blob.0.lock().unwrap().fail_put = Some(3);
    assert!(f.sync().is_err());
    assert_eq!(
        blob.take_puts().len(),
        2,
        "two Put Pages went before the failure"
    );
    // Bytes 100..4100 touch pages 0..=8: 4608 bytes, 2048 of them sent.
    assert_eq!(f.pending(), 4608 - 2048);
    f.sync().unwrap();
    assert_eq!(
        blob.take_puts(),
        vec![(2048, 1024), (3072, 1024), (4096, 512)]
    );
    let mut want = vec![0u8; 8192];
    want[100..4100].fill(5);
    assert_eq!(blob.durable(), want);
}

#[test]
fn a_new_length_recreates_the_blob_once_and_a_write_past_the_length_is_refused() {
    let blob = MemBlob::default();
    let f = PagedIndex::new(blob.clone(), MAX_PUT_PAGE);
    f.set_len(64).unwrap();
    f.write_at(0, &[1u8; 64]).unwrap();
    f.sync().unwrap();
    assert_eq!(blob.take_puts(), vec![(0, 512)]);
    // Past the recorded length: this side does not have the blob's content to recreate it.
    f.write_at(600, &[2u8; 8]).unwrap();
    let e = f.sync().expect_err("a write past the length went through");
    assert!(
        e.to_string().contains("past the index blob's length"),
        "{e}"
    );
    // A new length: the blob is recreated all zero at it, then only written pages go.
    f.set_len(20 * 512).unwrap();
    assert_eq!(
        read_all(&f),
        Some(vec![0u8; 20 * 512]),
        "reads answer zeros"
    );
    f.write_at(19 * 512 + 10, &[7u8; 2]).unwrap();
    f.sync().unwrap();
    assert_eq!(blob.0.lock().unwrap().creates, 2);
    assert_eq!(blob.take_puts(), vec![(19 * 512, 512)]);
    let mut want = vec![0u8; 20 * 512];
    want[19 * 512 + 10..19 * 512 + 12].fill(7);
    assert_eq!(blob.durable(), want);
}

#[test]
fn only_pending_pages_are_held_and_partial_pages_are_read_from_the_blob() {
    let blob = MemBlob::default();
    let f = PagedIndex::new(blob.clone(), MAX_PUT_PAGE);
    let len = 3 * MAX_PENDING as u64;
    f.set_len(len).unwrap();
    // Writes of a whole 12 MiB file: at most MAX_PENDING bytes are held at any time.
    for k in 0..len / 4096 {
        f.write_at(k * 4096, &[k as u8; 4096]).unwrap();
        assert!(f.pending() as usize <= MAX_PENDING + 4096);
    }
    f.sync().unwrap();
    assert_eq!(f.pending(), 0);
    // A 32-byte write into a sent page reads that page back (one ranged Get) first.
    let gets = blob.0.lock().unwrap().gets;
    f.write_at(4096 + 100, &[0xEE; 32]).unwrap();
    assert_eq!(blob.0.lock().unwrap().gets, gets + 1);
    f.sync().unwrap();
    let again = PagedIndex::new(blob.clone(), MAX_PUT_PAGE);
    let mut b = vec![0u8; 512];
    again.read_at(4096, &mut b).unwrap();
    assert_eq!(&b[..100], &[1u8; 100][..]);
    assert_eq!(&b[100..132], &[0xEE; 32][..]);
    assert_eq!(&b[132..], &[1u8; 380][..]);
}

#[test]
fn a_blob_of_another_layout_is_handed_over_as_is_and_recreated_at_its_new_length() {
    let blob = MemBlob::default();
    {
        let mut b = blob.0.lock().unwrap();
        b.exists = true;
        b.data = vec![4u8; 1024];
        b.len = None; // no length recorded
    }
    let f = PagedIndex::new(blob.clone(), MAX_PUT_PAGE);
    assert_eq!(read_all(&f), Some(vec![4u8; 1024]));
    // The index finds it damaged and gives its file a length before writing.
    f.set_len(100).unwrap();
    f.write_at(0, &[1u8; 100]).unwrap();
    f.sync().unwrap();
    assert_eq!(blob.0.lock().unwrap().creates, 1);
    assert_eq!(blob.durable(), vec![1u8; 100]);
}

/// The index protocol over the page blob: a persisted index sends only the pages of the
/// nodes that changed, a crash between a write and the next persist leaves it unclean.
#[test]
fn an_index_on_a_page_blob_sends_only_changed_pages_and_is_unclean_after_a_crash() {
    let size: u64 = 256 << 20; // 1024 nodes: a 33 KiB index
    let blob = MemBlob::default();
    let open = |fresh| {
        Index::open(
            Ok(Box::new(PagedIndex::new(blob.clone(), MAX_PUT_PAGE))),
            size,
            3,
            fresh,
        )
    };
    let mut ix = open(true);
    ix.persist_clean().unwrap();
    let whole = blob.take_puts().iter().map(|p| p.1).sum::<usize>();
    assert!(whole >= 32 * 1024, "the first persist writes everything");
    let mut ix = open(false);
    assert_eq!(ix.stale_reason(), None);
    // One whole node written, then persisted: the unclean header (page 0), the node's
    // hash page, the dirty bitmap's page and the clean header again.
    let data = vec![0x11u8; 256 << 10];
    let off = 700 * (256 << 10);
    let full = full_node_hashes(size, off, data.len() as u64, Some(&data));
    ix.before_write().unwrap();
    assert_eq!(blob.take_puts(), vec![(0, 512)]);
    ix.after_write(off, data.len() as u64, &full, true).unwrap();
    ix.persist_clean().unwrap();
    let puts = blob.take_puts();
    let sent: usize = puts.iter().map(|p| p.1).sum();
    assert!(sent <= 3 * 512, "persisting one node sent {puts:?}");
    assert_eq!(open(false).stale_reason(), None);
    // The crash: a write reaches the replica, the index is never persisted again.
    ix.before_write().unwrap();
    ix.after_write(0, 4096, &[], true).unwrap();
    drop(ix);
    let mut after = open(false);
    assert!(
        after
            .stale_reason()
            .is_some_and(|r| r.contains("not closed cleanly")),
        "{:?}",
        after.stale_reason()
    );
    assert_eq!(after.dirty_count(), Ok(1024));
}
