//! The one error type of the record decoders.

use std::fmt;

/// A structure on disk (or on the wire) that does not decode.
///
/// `offset` is relative to the buffer handed to the decoder; callers that know where the
/// buffer came from add its file offset with [`FormatError::at`], so the operator sees the
/// absolute position of the bad bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{structure} at offset {offset}: {problem}")]
pub struct FormatError {
    /// Which structure failed, e.g. "VHD footer" or "HRL metadata entry 3".
    pub structure: String,
    /// Byte offset of the problem (relative until [`FormatError::at`] is applied).
    pub offset: u64,
    /// What is wrong, in words an operator can act on.
    pub problem: String,
}

impl FormatError {
    /// Builds an error; `structure` and `problem` are free text.
    pub fn new(structure: impl Into<String>, offset: u64, problem: impl fmt::Display) -> Self {
        FormatError {
            structure: structure.into(),
            offset,
            problem: problem.to_string(),
        }
    }

    /// Shifts the offset by the position of the decoded buffer in its file.
    #[must_use]
    pub fn at(mut self, base: u64) -> Self {
        self.offset = self.offset.saturating_add(base);
        self
    }
}

/// Reads fixed-width integers from a slice without panicking: a short slice is an error that
/// names the structure, so truncated files are reported instead of crashing the reader.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    structure: &'a str,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8], structure: &'a str) -> Self {
        Cursor { buf, structure }
    }

    pub(crate) fn bytes<const N: usize>(&self, at: usize) -> Result<[u8; N], FormatError> {
        at.checked_add(N)
            .and_then(|end| self.buf.get(at..end))
            .map(|s| {
                let mut a = [0u8; N];
                a.copy_from_slice(s);
                a
            })
            .ok_or_else(|| {
                FormatError::new(
                    self.structure,
                    at as u64,
                    format!(
                        "truncated: need {N} bytes at {at}, buffer holds {}",
                        self.buf.len()
                    ),
                )
            })
    }

    pub(crate) fn u8(&self, at: usize) -> Result<u8, FormatError> {
        Ok(self.bytes::<1>(at)?[0])
    }
    pub(crate) fn le_u16(&self, at: usize) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.bytes(at)?))
    }
    pub(crate) fn le_u32(&self, at: usize) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.bytes(at)?))
    }
    pub(crate) fn le_u64(&self, at: usize) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.bytes(at)?))
    }
    pub(crate) fn le_i32(&self, at: usize) -> Result<i32, FormatError> {
        Ok(i32::from_le_bytes(self.bytes(at)?))
    }
    pub(crate) fn be_u16(&self, at: usize) -> Result<u16, FormatError> {
        Ok(u16::from_be_bytes(self.bytes(at)?))
    }
    pub(crate) fn be_u32(&self, at: usize) -> Result<u32, FormatError> {
        Ok(u32::from_be_bytes(self.bytes(at)?))
    }
    pub(crate) fn be_u64(&self, at: usize) -> Result<u64, FormatError> {
        Ok(u64::from_be_bytes(self.bytes(at)?))
    }
    pub(crate) fn slice(&self, at: usize, len: usize) -> Result<&'a [u8], FormatError> {
        at.checked_add(len)
            .and_then(|end| self.buf.get(at..end))
            .ok_or_else(|| {
                FormatError::new(
                    self.structure,
                    at as u64,
                    format!(
                        "truncated: need {len} bytes at {at}, buffer holds {}",
                        self.buf.len()
                    ),
                )
            })
    }
}
