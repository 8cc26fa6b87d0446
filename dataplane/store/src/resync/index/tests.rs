use super::*;
use crate::parts::Parts;
use crate::resync::Tree;
use std::sync::{Arc, Mutex};

/// Bytes written, and bytes durable (as of the last sync; `None` before any).
type Written = (Vec<u8>, Option<Vec<u8>>);
#[derive(Clone, Default)]
struct MemFile(Arc<Mutex<Written>>);
impl IndexFile for MemFile {
    fn size(&self) -> io::Result<Option<u64>> {
        let g = self.0.lock().unwrap();
        Ok((g.1.is_some() || !g.0.is_empty()).then_some(g.0.len() as u64))
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let g = self.0.lock().unwrap();
        let d = g.0.get(off as usize..off as usize + buf.len());
        buf.copy_from_slice(d.ok_or_else(|| io::Error::other("past the end"))?);
        Ok(())
    }
    fn write_at(&self, off: u64, data: &[u8]) -> io::Result<()> {
        let mut g = self.0.lock().unwrap();
        let v = &mut g.0;
        let e = off as usize + data.len();
        if v.len() < e {
            v.resize(e, 0);
        }
        v[off as usize..e].copy_from_slice(data);
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        let mut g = self.0.lock().unwrap();
        g.1 = Some(g.0.clone());
        Ok(())
    }
    fn describe(&self) -> String {
        "mem".into()
    }
}

impl MemFile {
    /// A power cut: what was not synced is lost.
    fn crash(&self) {
        let mut g = self.0.lock().unwrap();
        g.0 = g.1.clone().unwrap_or_default();
    }
}

fn write(ix: &mut Index, img: &mut Vec<u8>, off: u64, data: &[u8]) {
    let full = full_node_hashes(img.size(), off, data.len() as u64, Some(data));
    ix.before_write().unwrap();
    img[off as usize..off as usize + data.len()].copy_from_slice(data);
    ix.after_write(off, data.len() as u64, &full, true).unwrap();
}

/// A write (`Some`) or clear (`None`) as the receiver applies it, bytes at hand.
fn apply(ix: &mut Index, img: &mut Vec<u8>, off: u64, len: usize, data: Option<&[u8]>) {
    let full = full_node_hashes(img.size(), off, len as u64, data);
    ix.before_write().unwrap();
    let zeros = vec![0u8; len];
    img[off as usize..off as usize + len].copy_from_slice(data.unwrap_or(&zeros));
    let one = data.map(|d| [d]);
    let parts = one.as_ref().map(|o| Parts::new(o));
    ix.after_write_data(off, len as u64, parts, &full, true)
        .unwrap();
}

#[test]
fn whole_pages_written_into_nodes_whose_pages_were_read_set_their_hashes_without_a_reread() {
    let k = 256 << 10;
    let size = (1 << 20) + 4096 + 512; // five nodes, the last of a page and a half
    let mut img = (0..size).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>();
    let mut ix = Index::open(Ok(Box::new(MemFile::default())), size as u64, 1, false);
    ix.rehash(&img, true, 1).unwrap();
    // The page-level answer for nodes 1 and 4, remembered.
    let pages = super::super::answer_pages(size as u64, &img, &[1, 4]).unwrap();
    for (n, p) in [1, 4].into_iter().zip(pages) {
        ix.remember_pages(n, p);
    }
    apply(&mut ix, &mut img, k + 8192, 8192, Some(&[3u8; 8192]));
    apply(&mut ix, &mut img, k + 40960, 4096, None);
    apply(&mut ix, &mut img, (1 << 20) + 4096, 512, Some(&[9u8; 512])); // the short page
    assert_eq!(ix.dirty_count().unwrap(), 0);
    let built = Tree::build(&img, 1).unwrap();
    assert_eq!(ix.root().unwrap(), built.root());
    // Part of a page, and a node whose pages were not read, stay dirty.
    apply(&mut ix, &mut img, k + 512, 512, Some(&[4u8; 512]));
    apply(&mut ix, &mut img, 2 * k + 4096, 4096, Some(&[5u8; 4096]));
    assert_eq!(ix.dirty_count().unwrap(), 2);
    assert_eq!(ix.rehash(&img, false, 1).unwrap(), 2 * k);
    assert_eq!(ix.root().unwrap(), Tree::build(&img, 1).unwrap().root());
    // Node 1's pages were forgotten at the write of part of a page: dirty again.
    apply(&mut ix, &mut img, k, 4096, Some(&[6u8; 4096]));
    assert_eq!(ix.dirty_count().unwrap(), 1);
}

#[test]
fn an_index_kept_with_every_write_matches_a_tree_built_by_reading() {
    let size = (3 << 20) + 4096 + 512;
    let f = MemFile::default();
    let mut img = vec![0u8; size];
    let mut ix = Index::open(Ok(Box::new(f.clone())), size as u64, 1, true);
    write(&mut ix, &mut img, 0, &vec![7u8; 1 << 20]); // whole nodes
    write(&mut ix, &mut img, (2 << 20) + 4096, &[9u8; 512]); // partial
    write(&mut ix, &mut img, 3 << 20, &vec![5u8; 4096 + 512]); // the short last node
    assert_eq!(ix.dirty_count().unwrap(), 1);
    ix.persist_clean().unwrap();
    let mut again = Index::open(Ok(Box::new(f.clone())), size as u64, 1, false);
    assert_eq!(again.stale_reason(), None);
    assert_eq!(again.rehash(&img, false, 1).unwrap(), 256 << 10);
    let built = Tree::build(&img, 1).unwrap();
    assert_eq!(again.root().unwrap(), built.root());
}

#[test]
fn a_fresh_copy_marks_an_index_left_clean_for_its_generation_unclean_at_its_first_write() {
    let size = 1 << 20;
    let f = MemFile::default();
    let mut img = vec![0u8; size];
    let mut ix = Index::open(Ok(Box::new(f.clone())), size as u64, 1, true);
    ix.persist_clean().unwrap();
    // The copy starts again from zero at the same generation; a write, then a crash.
    let mut ix = Index::open(Ok(Box::new(f.clone())), size as u64, 1, true);
    write(&mut ix, &mut img, 0, &[1u8; 4096]);
    drop(ix);
    f.crash();
    let after = Index::open(Ok(Box::new(f)), size as u64, 1, false);
    assert!(after
        .stale_reason()
        .is_some_and(|r| r.contains("not closed cleanly")));
}

#[test]
fn an_index_not_persisted_after_a_write_is_stale_at_the_next_open() {
    let size = 1 << 20;
    let f = MemFile::default();
    let mut img = vec![0u8; size];
    let mut ix = Index::open(Ok(Box::new(f.clone())), size as u64, 1, true);
    ix.persist_clean().unwrap();
    assert!(Index::open(Ok(Box::new(f.clone())), size as u64, 1, false)
        .stale_reason()
        .is_none());
    // The "crash": a write, no persist.
    write(&mut ix, &mut img, 4096, &[1u8; 4096]);
    let mut ix2 = Index::open(Ok(Box::new(f.clone())), size as u64, 1, false);
    assert!(ix2.stale_reason().unwrap().contains("not closed cleanly"));
    assert_eq!(ix2.dirty_count().unwrap(), 4);
    // Another generation is stale too.
    ix.persist_clean().unwrap();
    let ix3 = Index::open(Ok(Box::new(f)), size as u64, 2, false);
    assert!(ix3.stale_reason().unwrap().contains("generation"));
}
