//! A blocking QMP client over a unix socket.
//!
//! QMP is one JSON object per line in each direction. After connecting, qemu sends a greeting
//! (`{"QMP": {"version": ..., "capabilities": [...]}}`) and accepts only `qmp_capabilities`
//! until it is sent; then every command `{"execute", "arguments", "id"}` gets exactly one
//! answer carrying the same `id`, either `{"return": ...}` or `{"error": {"class", "desc"}}`,
//! and asynchronous events (`{"event", "data", "timestamp"}`) may arrive at any time in
//! between. This client sends one command at a time, matches the answer by id (so a late
//! answer to a command that timed out is recognised and dropped), and keeps the events it
//! read meanwhile in a bounded queue for the caller.
//!
//! No clock is read here: every wait is bounded by the socket's read timeout and by a count
//! of messages or polls (the project's clock lives in `vdrep`, which this lower layer does
//! not depend on).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

use super::error::QmpError;

/// The longest line accepted from qemu. `query-qmp-schema` is the largest answer qemu 10
/// sends (about 200 KiB); anything near this limit is not QMP.
pub const MAX_LINE: usize = 16 << 20;
/// Events kept for the caller; older ones are dropped (and counted) beyond this.
pub const MAX_QUEUED_EVENTS: usize = 4096;
/// Messages read while waiting for one answer before giving up: bounds a wait against a peer
/// that floods events, without reading a clock.
const MAX_MESSAGES_PER_ANSWER: usize = 100_000;

/// qemu's version from the QMP greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct QemuVersion {
    /// Major version (10 for qemu 10.0.2).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Micro version.
    pub micro: u32,
}

/// An asynchronous QMP event (`JOB_STATUS_CHANGE`, `BLOCK_EXPORT_DELETED`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The event's name.
    pub name: String,
    /// Its `data` member (`null` when absent).
    pub data: Value,
}

/// A connected, negotiated QMP session.
#[derive(Debug)]
pub struct Qmp {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    timeout: Duration,
    next_id: u64,
    /// Bytes of a line whose end has not arrived yet (kept across a timed-out read).
    partial: Vec<u8>,
    events: VecDeque<Event>,
    dropped_events: u64,
    version: QemuVersion,
    package: String,
}

impl Qmp {
    /// Connects to qemu's monitor socket, reads the greeting and enters command mode
    /// (`qmp_capabilities`). `timeout` bounds every single read and write.
    pub fn connect(path: impl AsRef<Path>, timeout: Duration) -> Result<Qmp, QmpError> {
        let path = path.as_ref().to_path_buf();
        let stream = UnixStream::connect(&path).map_err(|source| QmpError::Connect {
            path: path.clone(),
            source,
        })?;
        let io = |source| QmpError::Io {
            path: path.clone(),
            source,
        };
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        let mut qmp = Qmp {
            path,
            reader: BufReader::new(stream),
            writer,
            timeout,
            next_id: 1,
            partial: Vec::new(),
            events: VecDeque::new(),
            dropped_events: 0,
            version: QemuVersion {
                major: 0,
                minor: 0,
                micro: 0,
            },
            package: String::new(),
        };
        let greeting = qmp.read_message("greeting")?;
        let (version, package) = parse_greeting(&greeting).ok_or_else(|| QmpError::Protocol {
            path: qmp.path.clone(),
            detail: format!("expected a QMP greeting, got {}", abbreviate(&greeting)),
        })?;
        qmp.version = version;
        qmp.package = package;
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// The monitor socket this session talks to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// qemu's version, from the greeting.
    pub fn version(&self) -> QemuVersion {
        self.version
    }

    /// qemu's package string (the distribution's build), from the greeting.
    pub fn package(&self) -> &str {
        &self.package
    }

    /// Runs one command and returns its `return` value. `arguments` must be a JSON object
    /// (or `None` for a command without arguments).
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = Map::new();
        msg.insert("execute".into(), Value::String(command.into()));
        if let Some(a) = arguments {
            msg.insert("arguments".into(), a);
        }
        msg.insert("id".into(), json!(id));
        let mut line = Value::Object(msg).to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .and_then(|()| self.writer.flush())
            .map_err(|e| self.io_error(command, e))?;
        for _ in 0..MAX_MESSAGES_PER_ANSWER {
            let msg = self.read_message(command)?;
            let Value::Object(mut obj) = msg else {
                return Err(self.protocol(format!("not a JSON object: {}", abbreviate(&msg))));
            };
            if let Some(name) = obj.get("event").and_then(Value::as_str) {
                let event = Event {
                    name: name.to_string(),
                    data: obj.remove("data").unwrap_or(Value::Null),
                };
                self.queue_event(event);
                continue;
            }
            if obj.get("id").and_then(Value::as_u64) != Some(id) {
                // A late answer to an earlier command that timed out: already reported.
                continue;
            }
            if let Some(ret) = obj.remove("return") {
                return Ok(ret);
            }
            if let Some(err) = obj.get("error") {
                let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            return Err(self.protocol(format!(
                "answer to {command} has neither return nor error: {}",
                abbreviate(&Value::Object(obj))
            )));
        }
        Err(self.protocol(format!(
            "more than {MAX_MESSAGES_PER_ANSWER} messages without an answer to {command}"
        )))
    }

    /// Runs one command and decodes its `return` value into `T`.
    pub fn execute_as<T: DeserializeOwned>(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<T, QmpError> {
        let v = self.execute(command, arguments)?;
        serde_json::from_value(v).map_err(|e| QmpError::Decode {
            command: command.to_string(),
            detail: e.to_string(),
        })
    }

    /// The events read so far, oldest first; the queue is emptied.
    pub fn take_events(&mut self) -> Vec<Event> {
        self.events.drain(..).collect()
    }

    /// Events dropped because the caller did not take them in time.
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    fn queue_event(&mut self, event: Event) {
        if self.events.len() >= MAX_QUEUED_EVENTS {
            self.events.pop_front();
            self.dropped_events += 1;
        }
        self.events.push_back(event);
    }

    /// Reads one line and parses it as JSON.
    fn read_message(&mut self, command: &str) -> Result<Value, QmpError> {
        loop {
            let room = (MAX_LINE + 1).saturating_sub(self.partial.len()) as u64;
            let res = Read::take(&mut self.reader, room).read_until(b'\n', &mut self.partial);
            match res {
                Ok(0) => {
                    return Err(QmpError::Closed {
                        path: self.path.clone(),
                    })
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_error(command, e)),
            }
            if self.partial.last() != Some(&b'\n') {
                if self.partial.len() > MAX_LINE {
                    return Err(self.protocol(format!("a line longer than {MAX_LINE} bytes")));
                }
                // End of stream in the middle of a line.
                return Err(QmpError::Closed {
                    path: self.path.clone(),
                });
            }
            let line = std::mem::take(&mut self.partial);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return serde_json::from_slice(&line)
                .map_err(|e| self.protocol(format!("invalid JSON ({e})")));
        }
    }

    fn io_error(&self, command: &str, e: std::io::Error) -> QmpError {
        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
            QmpError::Timeout {
                path: self.path.clone(),
                command: command.to_string(),
                timeout_ms: self.timeout.as_millis() as u64,
            }
        } else {
            QmpError::Io {
                path: self.path.clone(),
                source: e,
            }
        }
    }

    fn protocol(&self, detail: String) -> QmpError {
        QmpError::Protocol {
            path: self.path.clone(),
            detail,
        }
    }
}

fn parse_greeting(v: &Value) -> Option<(QemuVersion, String)> {
    let version = v.get("QMP")?.get("version")?;
    let q = version.get("qemu")?;
    let num = |k: &str| q.get(k).and_then(Value::as_u64).map(|n| n as u32);
    let package = version
        .get("package")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    Some((
        QemuVersion {
            major: num("major")?,
            minor: num("minor")?,
            micro: num("micro")?,
        },
        package,
    ))
}

/// A message shortened for an error text.
fn abbreviate(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::thread;

    /// A fake peer on a real socket that sends `script` lines after reading a line each
    /// (the greeting first, unprompted).
    fn peer(greeting: &'static str, answers: Vec<String>) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(greeting.as_bytes()).unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            for a in answers {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                s.write_all(a.as_bytes()).unwrap();
            }
            // Keep the socket open until the client is done.
            let mut sink = Vec::new();
            let _ = r.read_to_end(&mut sink);
        });
        (dir, path)
    }

    const GREETING: &str =
        "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 2, \"minor\": 0, \"major\": 10}, \"package\": \"x\"}, \"capabilities\": [\"oob\"]}}\n";

    #[test]
    fn answers_are_matched_by_id_and_events_are_kept() {
        let (_d, path) = peer(
            GREETING,
            vec![
                "{\"return\": {}, \"id\": 1}\n".into(),
                concat!(
                    "{\"return\": 7, \"id\": 99}\n",
                    "{\"event\": \"JOB_STATUS_CHANGE\", \"data\": {\"id\": \"j\", \"status\": \"null\"}, \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}\n",
                    "{\"return\": [1, 2], \"id\": 2}\n"
                )
                .into(),
            ],
        );
        let mut q = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
        assert_eq!(q.version().major, 10);
        let v: Vec<u32> = q.execute_as("query-x", None).unwrap();
        assert_eq!(v, vec![1, 2]);
        let ev = q.take_events();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].name, "JOB_STATUS_CHANGE");
    }

    #[test]
    fn a_refused_command_is_permanent_with_class_and_desc() {
        let (_d, path) = peer(
            GREETING,
            vec![
                "{\"return\": {}, \"id\": 1}\n".into(),
                "{\"error\": {\"class\": \"GenericError\", \"desc\": \"no such node\"}, \"id\": 2}\n"
                    .into(),
            ],
        );
        let mut q = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
        let e = q
            .execute("blockdev-del", Some(json!({"node-name": "x"})))
            .unwrap_err();
        assert_eq!(e.class(), Some("GenericError"));
        assert!(!e.is_transient(), "{e}");
        assert!(e.to_string().contains("no such node"), "{e}");
    }

    #[test]
    fn a_socket_gone_is_transient() {
        let (_d, path) = peer(GREETING, vec!["{\"return\": {}, \"id\": 1}\n".into()]);
        let mut q = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
        // The peer answered its one line; it now drains and closes when we stop writing.
        q.writer.shutdown(std::net::Shutdown::Write).unwrap();
        let e = q.execute("query-block", None).unwrap_err();
        assert!(e.is_transient(), "{e}");
        let missing =
            Qmp::connect(path.with_extension("none"), Duration::from_secs(1)).unwrap_err();
        assert!(missing.is_transient(), "{missing}");
    }

    #[test]
    fn no_answer_is_a_timeout_and_garbage_is_a_protocol_error() {
        let (_d, path) = peer(GREETING, vec!["{\"return\": {}, \"id\": 1}\n".into()]);
        let mut q = Qmp::connect(&path, Duration::from_millis(200)).unwrap();
        let e = q.execute("query-block", None).unwrap_err();
        assert!(matches!(e, QmpError::Timeout { .. }), "{e}");
        assert!(e.is_transient());

        let (_d2, path2) = peer("this is not json\n", vec![]);
        let e = Qmp::connect(&path2, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(e, QmpError::Protocol { .. }), "{e}");
        assert!(!e.is_transient());
    }
}
