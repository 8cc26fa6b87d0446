//! The sender's side of a resync tree, kept like the receiver's: the 256 KiB level in an
//! index ([`crate::resync::index::Index`]) on an unlinked temporary file, read through the
//! bounded page cache, so a resync of a 4 TiB disk holds about 1 MiB of hashes instead of
//! 512 MiB (DESIGN: memory bounded whatever the disk size). The file is scratch: it is never
//! synced, and it disappears with the tree (or the process).

use std::io;
use std::os::unix::fs::FileExt;

use crate::resync::index::{Index, IndexFile};
use crate::resync::{trunc, Hash, Levels, Source};
use vdrep_proto::RangeSet;

/// An unlinked temporary file holding a tree's index.
struct Scratch(std::fs::File);

impl IndexFile for Scratch {
    fn size(&self) -> io::Result<Option<u64>> {
        Ok(Some(self.0.metadata()?.len()))
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write_all_at(data, offset)
    }
    fn sync(&self) -> io::Result<()> {
        Ok(()) // scratch: nothing outlives the tree
    }
    fn describe(&self) -> String {
        "the sender's resync tree (a temporary file)".into()
    }
}

/// The hash tree of a source disk, built by reading it.
pub struct SourceTree {
    ix: Index,
}

impl SourceTree {
    /// Builds the tree of `src` by reading it on `threads` threads (ranges it knows to be
    /// zero are not read).
    pub fn build(src: &dyn Source, threads: usize) -> Result<SourceTree, String> {
        let f = tempfile::tempfile()
            .map_err(|e| format!("cannot create a temporary file for the resync tree: {e}"))?;
        // An empty file is no index: every node starts dirty and is hashed once.
        let mut ix = Index::open(Ok(Box::new(Scratch(f))), src.size(), 0, false);
        ix.rehash(src, true, threads)?;
        Ok(SourceTree { ix })
    }

    /// Truncated hash of node `i` at a kept `level` (0..=2), `None` outside the tree.
    pub fn at(&mut self, level: usize, i: u64) -> Option<u64> {
        self.ix.node(level, i).ok().map(|h| trunc(&h))
    }

    /// Full page hashes under 256 KiB node `i`, read from `src`.
    pub fn pages(&self, src: &dyn Source, i: u64) -> Result<Vec<Hash>, String> {
        crate::resync::pages(self.ix.size(), src, i)
    }

    /// Rehashes the 256 KiB nodes overlapping `ranges` from `src` (after they were sent).
    pub fn refresh(&mut self, src: &dyn Source, ranges: &RangeSet) -> Result<(), String> {
        for r in ranges.iter() {
            if r.end > r.start {
                self.ix.after_write(r.start, r.end - r.start, &[], false)?;
            }
        }
        self.ix.rehash(src, false, 1).map(|_| ())
    }

    /// The full-strength root.
    pub fn root(&mut self) -> Result<Hash, String> {
        self.ix.root()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resync::Tree;

    #[test]
    fn a_source_tree_on_a_scratch_file_answers_like_the_tree_in_memory() {
        let size = (70 << 20) + 4096 + 512;
        let mut img = (0..size).map(|i| (i % 253) as u8).collect::<Vec<u8>>();
        let mut t = SourceTree::build(&img, 2).unwrap();
        let m = Tree::build(&img, 1).unwrap();
        assert_eq!(t.root().unwrap(), m.root());
        for (level, n) in [(0, 1), (1, 5), (2, 281)] {
            for i in 0..n {
                assert_eq!(t.at(level, i), m.at(level, i), "level {level} node {i}");
            }
        }
        assert_eq!(t.at(2, 281), None);
        // Sent ranges are rehashed.
        img[(33 << 20) + 7] ^= 0xFF;
        t.refresh(&img, &RangeSet::from_range((33 << 20) + 7, (33 << 20) + 8))
            .unwrap();
        assert_eq!(t.root().unwrap(), Tree::build(&img, 1).unwrap().root());
    }
}
