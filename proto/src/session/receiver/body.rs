//! A frame body as the transport received it: one buffer, or the stream's chunks in order
//! (QUIC hands a stream's bytes over one packet's worth at a time). A receiver hashes and
//! writes a raw extent's chunks where they lie instead of joining them first.

use std::borrow::Cow;

use bytes::Bytes;

/// The bytes of a body, in one or more non-empty chunks. Equal bodies hold equal bytes,
/// however they are cut.
#[derive(Debug, Clone, Default)]
pub struct Body {
    parts: Vec<Bytes>,
    len: usize,
}

impl Body {
    /// The bytes of `parts`, in order (empty ones dropped).
    pub fn from_parts(parts: Vec<Bytes>) -> Body {
        let parts: Vec<Bytes> = parts.into_iter().filter(|b| !b.is_empty()).collect();
        let len = parts.iter().map(Bytes::len).sum();
        Body { parts, len }
    }

    /// Total length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chunks, none empty.
    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    /// The first `n` bytes (all of them when there are fewer): borrowed when the first
    /// chunk holds them.
    pub fn head(&self, n: usize) -> Cow<'_, [u8]> {
        let n = n.min(self.len);
        match self.parts.first() {
            Some(p) if p.len() >= n => Cow::Borrowed(&p[..n]),
            None => Cow::Borrowed(&[]),
            Some(_) => {
                let mut v = Vec::with_capacity(n);
                for p in &self.parts {
                    let k = (n - v.len()).min(p.len());
                    v.extend_from_slice(&p[..k]);
                    if v.len() == n {
                        break;
                    }
                }
                Cow::Owned(v)
            }
        }
    }

    /// The bytes from `n` on (none when `n` is past the end), sharing the chunks.
    pub fn slice_from(&self, n: usize) -> Body {
        let mut skip = n.min(self.len);
        let mut parts = Vec::with_capacity(self.parts.len());
        for p in &self.parts {
            if skip >= p.len() {
                skip -= p.len();
                continue;
            }
            parts.push(p.slice(skip..));
            skip = 0;
        }
        Body {
            parts,
            len: self.len - n.min(self.len),
        }
    }

    /// All the bytes in one buffer: the chunk itself when there is one, else a copy.
    pub fn to_bytes(&self) -> Bytes {
        match self.parts.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => Bytes::from(many.concat()),
        }
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Body {
        Body::from_parts(vec![b])
    }
}

impl PartialEq for Body {
    fn eq(&self, other: &Body) -> bool {
        self.len == other.len && self.to_bytes() == other.to_bytes()
    }
}

impl Eq for Body {}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(parts: &[&'static [u8]]) -> Body {
        Body::from_parts(parts.iter().map(|p| Bytes::from_static(p)).collect())
    }

    #[test]
    fn heads_and_tails_across_chunks_and_empty_chunks() {
        let b = cut(&[b"", b"ab", b"", b"cdef", b"g"]);
        assert_eq!(b.len(), 7);
        assert_eq!(b.parts().len(), 3, "empty chunks are dropped");
        assert!(matches!(b.head(2), Cow::Borrowed(b"ab")));
        assert_eq!(&b.head(5)[..], b"abcde");
        assert_eq!(&b.head(99)[..], b"abcdefg");
        assert_eq!(b.slice_from(3).to_bytes(), Bytes::from_static(b"defg"));
        assert_eq!(b.slice_from(3).parts().len(), 2);
        assert_eq!(b.slice_from(2).parts().len(), 2, "a cut at a chunk's end");
        assert!(b.slice_from(7).is_empty());
        assert!(b.slice_from(70).is_empty());
        assert_eq!(
            b,
            Body::from(Bytes::from_static(b"abcdefg")),
            "equal bytes, other cuts"
        );
        assert_ne!(b, Body::from(Bytes::from_static(b"abcdefh")));
        let e = Body::from_parts(vec![]);
        assert!(e.is_empty() && e.head(4).is_empty() && e.to_bytes().is_empty());
    }
}
