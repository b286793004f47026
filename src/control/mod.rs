//! The local control API: `sparkctl` ⇄ Unix socket ⇄ daemon.
//!
//! `protocol` holds the request/response types and the framing, shared by
//! both sides; `server` is the daemon's listener; `client` is what `sparkctl`
//! uses.

pub mod client;
pub mod protocol;
pub mod server;
