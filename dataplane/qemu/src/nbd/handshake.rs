//! The fixed newstyle handshake: server hello, structured replies, metadata contexts, and
//! `NBD_OPT_GO` with the export's size and block sizes. Every reply is checked (magic, the
//! option it answers, its length) before its payload is read.

use std::io::{Read, Write};

use super::client::NbdClient;
use super::error::NbdError;
use super::wire::{self, Payload};

impl<S: Read + Write> NbdClient<S> {
    pub(super) fn negotiate(&mut self, contexts: &[&str]) -> Result<(), NbdError> {
        let mut hello = [0u8; 18];
        self.read_exact(&mut hello)?;
        let mut p = Payload::new(&hello);
        let (magic, opt_magic, hflags) = (
            p.u64().unwrap_or(0),
            p.u64().unwrap_or(0),
            p.u16().unwrap_or(0),
        );
        if magic != wire::NBDMAGIC || opt_magic != wire::IHAVEOPT {
            return Err(self.protocol("not an NBD newstyle server (bad magic)".into()));
        }
        if hflags & wire::FLAG_FIXED_NEWSTYLE == 0 {
            return Err(self.unsupported("the fixed newstyle handshake"));
        }
        let mut cflags = wire::CLIENT_FIXED_NEWSTYLE;
        if hflags & wire::FLAG_NO_ZEROES != 0 {
            cflags |= wire::CLIENT_NO_ZEROES;
        }
        self.write_all(&cflags.to_be_bytes())?;

        self.write_all(&wire::option(wire::OPT_STRUCTURED_REPLY, &[]))?;
        let (t, _) = self.option_reply(wire::OPT_STRUCTURED_REPLY)?;
        if t != wire::REP_ACK {
            return Err(self.unsupported("structured replies"));
        }

        if !contexts.is_empty() {
            self.set_meta_context(contexts)?;
        }

        let name = self.export.clone().into_bytes();
        let mut data = Vec::with_capacity(name.len() + 8);
        data.extend_from_slice(&(name.len() as u32).to_be_bytes());
        data.extend_from_slice(&name);
        data.extend_from_slice(&1u16.to_be_bytes());
        data.extend_from_slice(&wire::INFO_BLOCK_SIZE.to_be_bytes());
        self.write_all(&wire::option(wire::OPT_GO, &data))?;
        let mut have_export = false;
        for _ in 0..64 {
            let (t, payload) = self.option_reply(wire::OPT_GO)?;
            match t {
                wire::REP_ACK => {
                    if !have_export {
                        return Err(
                            self.protocol("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT".into())
                        );
                    }
                    return Ok(());
                }
                wire::REP_INFO => {
                    let mut p = Payload::new(&payload);
                    match p.u16() {
                        Some(wire::INFO_EXPORT) => {
                            let (Some(size), Some(flags), 0) = (p.u64(), p.u16(), p.remaining())
                            else {
                                return Err(self.protocol(format!(
                                    "NBD_INFO_EXPORT of {} bytes (12 expected)",
                                    payload.len()
                                )));
                            };
                            if size > i64::MAX as u64 {
                                return Err(self.protocol(format!("export size {size} too large")));
                            }
                            self.size = size;
                            self.transmission_flags = flags;
                            have_export = true;
                        }
                        Some(wire::INFO_BLOCK_SIZE) => {
                            let (Some(min), Some(pref), Some(max), 0) =
                                (p.u32(), p.u32(), p.u32(), p.remaining())
                            else {
                                return Err(self.protocol(format!(
                                    "NBD_INFO_BLOCK_SIZE of {} bytes (14 expected)",
                                    payload.len()
                                )));
                            };
                            if min == 0
                                || !min.is_power_of_two()
                                || min > 65536
                                || max < min
                                || pref < min
                            {
                                return Err(self.protocol(format!(
                                    "block sizes min {min} preferred {pref} max {max}"
                                )));
                            }
                            self.min_block = min;
                            self.max_block = max.min(wire::DEFAULT_MAX_BLOCK).max(min);
                        }
                        Some(_) => {} // Other information is optional to understand.
                        None => return Err(self.protocol("empty NBD_REP_INFO".into())),
                    }
                }
                other => {
                    return Err(self.protocol(format!("unexpected reply {other} to NBD_OPT_GO")))
                }
            }
        }
        Err(self.protocol("more than 64 replies to NBD_OPT_GO".into()))
    }

    fn set_meta_context(&mut self, contexts: &[&str]) -> Result<(), NbdError> {
        let name = self.export.as_bytes();
        let mut data = Vec::new();
        data.extend_from_slice(&(name.len() as u32).to_be_bytes());
        data.extend_from_slice(name);
        data.extend_from_slice(&(contexts.len() as u32).to_be_bytes());
        for c in contexts {
            data.extend_from_slice(&(c.len() as u32).to_be_bytes());
            data.extend_from_slice(c.as_bytes());
        }
        self.write_all(&wire::option(wire::OPT_SET_META_CONTEXT, &data))?;
        for _ in 0..=contexts.len() {
            let (t, payload) = self.option_reply(wire::OPT_SET_META_CONTEXT)?;
            match t {
                wire::REP_ACK => {
                    if let Some(missing) = contexts
                        .iter()
                        .find(|c| !self.contexts.iter().any(|(_, n)| n == *c))
                    {
                        return Err(
                            self.unsupported(&format!("metadata context {missing} on this export"))
                        );
                    }
                    return Ok(());
                }
                wire::REP_META_CONTEXT => {
                    let mut p = Payload::new(&payload);
                    let Some(id) = p.u32() else {
                        return Err(self.protocol("NBD_REP_META_CONTEXT without an id".into()));
                    };
                    let name = p.bytes(p.remaining()).unwrap_or_default();
                    let name = String::from_utf8_lossy(name).into_owned();
                    if !contexts.contains(&name.as_str()) {
                        return Err(self.protocol(format!("context {name} was not asked for")));
                    }
                    if self.contexts.iter().any(|(i, n)| *i == id || *n == name) {
                        return Err(self.protocol(format!("context {name} (id {id}) given twice")));
                    }
                    self.contexts.push((id, name));
                }
                other => {
                    return Err(self.protocol(format!(
                        "unexpected reply {other} to NBD_OPT_SET_META_CONTEXT"
                    )))
                }
            }
        }
        Err(self.protocol("more context replies than contexts asked for".into()))
    }

    /// Reads one option reply to `opt`; an error reply becomes [`NbdError::Refused`].
    fn option_reply(&mut self, opt: u32) -> Result<(u32, Vec<u8>), NbdError> {
        let mut h = [0u8; 20];
        self.read_exact(&mut h)?;
        let mut p = Payload::new(&h);
        let (magic, ropt, t, len) = (
            p.u64().unwrap_or(0),
            p.u32().unwrap_or(0),
            p.u32().unwrap_or(0),
            p.u32().unwrap_or(0),
        );
        if magic != wire::OPTION_REPLY_MAGIC {
            return Err(self.protocol(format!("bad option reply magic {magic:#x}")));
        }
        if ropt != opt {
            return Err(self.protocol(format!("reply to option {ropt} while {opt} was asked")));
        }
        if len > wire::MAX_OPTION_REPLY {
            return Err(self.protocol(format!("option reply of {len} bytes")));
        }
        let mut payload = vec![0u8; len as usize];
        self.read_exact(&mut payload)?;
        if t & wire::REP_FLAG_ERROR != 0 {
            return Err(NbdError::Refused {
                export: self.export.clone(),
                option: opt,
                code: wire::rep_error_name(t),
                message: String::from_utf8_lossy(&payload).into_owned(),
            });
        }
        Ok((t, payload))
    }
}
