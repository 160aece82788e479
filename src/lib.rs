//! The `tpc-xfer` engine as a library: the command line in `main.rs` drives it, and
//! end-to-end tests reach the protocol directly (a hostile client is built from these
//! parts, not from the command line, which would never send what it must refuse).

pub mod alloc;
pub mod auth;
pub mod check;
pub mod copy;
pub mod delete;
pub mod exit;
pub mod log;
pub mod progress;
pub mod remote;
pub mod summary;
pub mod walk;
