//! SPDY/3.1, the multiplexing protocol kubectl still uses for `port-forward` (tunnelled in a
//! WebSocket since 1.31, or over a bare HTTP upgrade) and container runtimes' streaming
//! servers speak for exec with a closable stdin. Only what those need: streams with headers,
//! data with half-close, resets, pings; priorities, server push and settings are ignored.
//!
//! Frames follow the SPDY/3 draft (as Go's `spdy` package, under moby/spdystream, writes
//! them); flow control is not enforced on the data this side sends, as spdystream does not,
//! but window updates are given back for data received, for peers that do.

mod dictionary;
mod frame;
mod headers;
mod session;

pub use frame::ResetStatus;
pub use headers::Headers;
pub use session::{Closed, Role, Session, Stream, StreamReader, StreamWriter};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("SPDY protocol error: {0}")]
    Protocol(String),
    #[error("the SPDY connection is closed")]
    Closed,
    #[error("the peer refused or reset stream {0}")]
    Refused(u32),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
