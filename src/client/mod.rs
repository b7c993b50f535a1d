//! The CLI verbs that talk to a running supervisor, and how their answers are shown.

mod render;
pub mod top;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::proto::{ErrorKind, Request, Response, Verb};

pub use render::{print_log_line, print_reload, print_status_details, print_status_table};

/// Client exit codes of SPEC 1.
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
