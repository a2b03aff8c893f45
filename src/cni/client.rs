//! `tortie-ipam`'s side of the node agent's socket: blocking, one request per connection.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::wire::{self, Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No agent listening (no socket file, connection refused): run in-process.
    #[error("no agent listening: {0}")]
    Unavailable(io::Error),
    /// The deadline passed while waiting for the answer.
    #[error("no answer within the deadline")]
    TimedOut,
    /// The agent went away or answered garbage; nothing is known about the outcome, and the
    /// in-process path is safe to run (a repeated ADD finds the handle, a repeated DEL is a no-op).
    #[error("agent connection failed: {0}")]
    Broken(String),
}

/// Sends one request and waits at most `timeout` in all for the answer.
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, CallError> {
    let started = Instant::now();
    let mut stream = UnixStream::connect(socket).map_err(CallError::Unavailable)?;
    let left = || {
        timeout
            .checked_sub(started.elapsed())
            .filter(|d| !d.is_zero())
            .ok_or(CallError::TimedOut)
    };
    let io_err = |e: io::Error| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => CallError::TimedOut,
        _ => CallError::Broken(e.to_string()),
    };
    stream.set_write_timeout(Some(left()?)).map_err(io_err)?;
    stream.write_all(&wire::encode(req)).map_err(io_err)?;
    stream.set_read_timeout(Some(left()?)).map_err(io_err)?;
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).map_err(io_err)?;
    let n = wire::frame_len(header).map_err(|e| CallError::Broken(e.to_string()))?;
    let mut body = vec![0u8; n];
    stream.set_read_timeout(Some(left()?)).map_err(io_err)?;
    stream.read_exact(&mut body).map_err(io_err)?;
    wire::decode(&body).map_err(|e| CallError::Broken(e.to_string()))
}
