//! SMTP submission (RFC 5321, 6409, 3207, 4954, 8314).
//!
//! - [`data`]: body readers (dot-stuffing, the smuggling-proof end of data), no I/O.
//! - [`reply`]: every reply the server sends, with consistent enhanced codes.
//! - [`session`]: the per-connection state machine: policy without sockets.
//! - [`conn`]: the async driver: bytes, timeouts, TLS.
//! - [`guard`]: limits shared across connections (caps, AUTH cool-down).
//! - [`listener`]: accept loops.

pub mod conn;
pub mod data;
pub mod guard;
pub mod listener;
pub mod reply;
pub mod session;
