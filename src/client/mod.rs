//! The CLI verbs that talk to a running supervisor, and how their answers are shown.

mod render;
pub mod top;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde::de::{DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::proto::{ErrorKind, LogLine, Request, Response, UnitStatus, Verb};

pub use render::{
    StatusTable, print_log_line, print_reload, print_status_details, print_status_table,
    print_unit_details,
};

/// Client exit codes (docs/cli.md, "Exit codes").
pub mod exit_code {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const NOT_RUNNING: i32 = 3;
    pub const NO_SUPERVISOR: i32 = 4;
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no supervisor answers on {path}: {source}")]
    NoSupervisor {
        path: String,
        source: std::io::Error,
    },
    #[error("talking to the supervisor: {0}")]
    Io(#[from] std::io::Error),
    #[error("the supervisor sent an unreadable answer: {0}")]
    Protocol(#[from] serde_json::Error),
    #[error("the supervisor closed the connection without answering")]
    NoAnswer,
}

impl ClientError {
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::NoSupervisor { .. } => exit_code::NO_SUPERVISOR,
            _ => exit_code::FAILED,
        }
    }
}

/// One connection to the supervisor.
pub struct Connection {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Connection {
    pub fn open(socket: &Path) -> Result<Connection, ClientError> {
        let stream = UnixStream::connect(socket).map_err(|source| ClientError::NoSupervisor {
            path: socket.display().to_string(),
            source,
        })?;
        Ok(Connection {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// How long a read waits for the supervisor (None: for ever).
    pub fn set_read_timeout(
        &self,
        timeout: Option<std::time::Duration>,
    ) -> Result<(), ClientError> {
        self.reader.get_ref().set_read_timeout(timeout)?;
        Ok(())
    }

    pub fn send(&mut self, request: &Request) -> Result<(), ClientError> {
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        Ok(())
    }

    /// The next response line; `None` at end of stream.
    pub fn receive(&mut self) -> Result<Option<Response>, ClientError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        Ok(Some(serde_json::from_str(&line)?))
    }

    /// The next response, its `lines` handed to `each` one by one as they are parsed (a
    /// `logs` answer of 1000 long lines is megabytes: it is shown as it arrives, never held
    /// whole). The response comes back without `lines`; `None` at end of stream.
    pub fn receive_lines(
        &mut self,
        each: &mut dyn FnMut(LogLine),
    ) -> Result<Option<Response>, ClientError> {
        self.receive_each("lines", each)
    }

    /// The next response, its `units` handed to `each` one by one as they are parsed (a
    /// `status` of ten thousand units is shown as it arrives, never held whole). The response
    /// comes back without `units`; `None` at end of stream.
    pub fn receive_units(
        &mut self,
        each: &mut dyn FnMut(UnitStatus),
    ) -> Result<Option<Response>, ClientError> {
        self.receive_each("units", each)
    }

    /// Sends `request`, then hands the answer's `units` to `each` as they are read.
    pub fn call_units(
        &mut self,
        request: &Request,
        each: &mut dyn FnMut(UnitStatus),
    ) -> Result<Response, ClientError> {
        if let Err(e) = self.send(request) {
            return match self.receive() {
                Ok(Some(response)) => Ok(response),
                _ => Err(e),
            };
        }
        self.receive_units(each)?.ok_or(ClientError::NoAnswer)
    }

    fn receive_each<T: DeserializeOwned>(
        &mut self,
        key: &'static str,
        each: &mut dyn FnMut(T),
    ) -> Result<Option<Response>, ClientError> {
        if self.reader.fill_buf()?.is_empty() {
            return Ok(None);
        }
        let rest = {
            let mut de = serde_json::Deserializer::from_reader(&mut self.reader);
            de.deserialize_map(Each { key, each })?
        };
        // The parser stops at the object's last brace: the rest of the line is its newline.
        let mut tail = String::new();
        self.reader.read_line(&mut tail)?;
        Ok(Some(serde_json::from_value(serde_json::Value::Object(
            rest,
        ))?))
    }

    /// Sends `request` and returns the first response line.
    pub fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        if let Err(e) = self.send(request) {
            // A supervisor that refuses a peer answers and closes before reading anything,
            // so the write may fail (EPIPE) while the refusal waits to be read.
            return match self.receive() {
                Ok(Some(response)) => Ok(response),
                _ => Err(e),
            };
        }
        self.receive()?.ok_or(ClientError::NoAnswer)
    }
}

/// A response object whose array under `key` goes to a callback, element by element, while
/// the other fields are kept.
struct Each<'a, T> {
    key: &'static str,
    each: &'a mut dyn FnMut(T),
}

impl<'de, T: DeserializeOwned> Visitor<'de> for Each<'_, T> {
    type Value = serde_json::Map<String, serde_json::Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a response object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut rest = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == self.key {
                map.next_value_seed(ElementsSeed(&mut *self.each))?;
            } else {
                rest.insert(key, map.next_value()?);
            }
        }
        Ok(rest)
    }
}

struct ElementsSeed<'a, T>(&'a mut dyn FnMut(T));

impl<'de, T: DeserializeOwned> DeserializeSeed<'de> for ElementsSeed<'_, T> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_seq(self)
    }
}

impl<'de, T: DeserializeOwned> Visitor<'de> for ElementsSeed<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(element) = seq.next_element::<T>()? {
            (self.0)(element);
        }
        Ok(())
    }
}

/// How a response maps to an exit code, before any verb-specific rule.
pub fn response_code(response: &Response) -> i32 {
    if response.ok {
        exit_code::OK
    } else if matches!(
        response.error.as_ref().map(|e| e.kind),
        Some(ErrorKind::BadRequest)
    ) {
        exit_code::USAGE
    } else {
        exit_code::FAILED
    }
}

pub fn request(verb: Verb, units: &[String]) -> Request {
    Request::new(verb, units.to_vec())
}
