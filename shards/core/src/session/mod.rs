//! The remote session as sans-IO state machines: every protocol decision of a push or a
//! pull, with no socket, no file, no async and no clock.
//!
//! # Contract
//!
//! Modelled on quinn-proto's `Connection`. A driver (`src/remote/client.rs`,
//! `src/remote/server.rs`) owns the streams and the filesystem; the state machine owns
//! what happens next. The driver loops:
//!
//! 1. **Feed what happened** through a `handle_*` method: a control frame that arrived
//!    (`handle_frame`), the end of the control stream (`handle_end`), the answer to a
//!    request it carried out (`handle_manifest`, `handle_planned`, `handle_committed`,
//!    `handle_finished`, …), a data run that ended (`handle_run`).
//! 2. **Drain what to do**, in this order, until each returns `None`:
//!    - `poll_transmit`: the next frame to write on the control stream, in order;
//!    - `poll_request`: work for the driver (dial the other shards, plan, commit, …).
//!      Each request that names a `handle_*` answer must be answered exactly once, and
//!      the machine asks for the next such work only after that answer;
//!    - `poll_problem`: a file that failed while the session goes on (for the summary
//!      and the exit code);
//!    - `poll_outcome`: the session is over, with success or a typed error. Once it
//!      returns `Some`, the driver sends the frames still queued, finishes the stream and
//!      stops feeding the machine.
//! 3. **Read the next control frame only when `wants_frame` is true.** The machine never
//!    queues frames it has not acted on: while a plan or a commit is being carried out,
//!    a peer's next frames stay in the transport's flow-controlled buffer, so no peer can
//!    make this end hold more than one frame's worth of control input.
//!
//! Every queue the machines keep is bounded by a constant (`TRANSMIT_QUEUE_MAX`) or by
//! the manifest, which the wire's `MANIFEST_*_MAX` limits bound: the manifest itself,
//! and the per-file problems and `Failed` frames (at most one per entry while planning,
//! and one per file of a commit batch).
//! A manifest's `Entries` frames are produced one at a time as the driver polls, so a
//! large manifest is never encoded in full ahead of the stream.
//!
//! The two sides: `client::ClientSession` is the client of a push (which sends the data)
//! or of a pull (which receives it and commits locally); `server::ServerSession` is the
//! control stream of the server, which receives a push or lists a pull, and
//! `server::open_stream` decides what a new stream on the server is. The run-level
//! schedule (which shard moves which run, take-over between shards) is the pure module
//! `crate::schedule`, driven by the client's data shards.
//!
//! Time never enters the machines: timeouts (the connect bound, QUIC's idle timeout) are
//! the transport's, and end the session through `handle_end`.

pub mod arrivals;
pub mod client;
pub mod server;

use crate::wire::ErrorCode;

/// Frames a machine may hold queued for the driver at once, outside a manifest being
/// sent: a Commit and the Finish right behind it, or a batch's Failed frames (which a
/// server answers one commit at a time, so a batch of `ITEMS_PER_FRAME_MAX` files can
/// produce as many Failed frames as files; those are produced lazily too).
pub const TRANSMIT_QUEUE_MAX: usize = 4;

/// Why one file, or a whole stream, failed: the code the peer sees and a message for
/// the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
}

impl Failure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }

    pub fn protocol(message: impl Into<String>) -> Failure {
        Failure::new(ErrorCode::Protocol, message)
    }
}

/// Files that failed, each with why.
pub type Failures = Vec<(u32, Failure)>;

/// Why a run failed, and at which end: the one that writes the file (the destination:
/// its disk, or a server that refused a push's data) or the one that reads it (the
/// source). The same code means a different thing at each (`Problem::at_destination`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunFailed {
    pub failure: Failure,
    pub at_destination: bool,
}

/// A receiver's plan of a manifest: the chunks it needs, and the files that failed
/// already. `Err` refuses the whole manifest.
pub type Planned = Result<(Vec<crate::wire::NeedItem>, Failures), Failure>;

/// One file that failed while the session went on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The manifest entry it concerns; `None` for a part of a pull's source that the
    /// server could not list (`Unlisted`), which has no entry.
    pub file: Option<u32>,
    pub code: ErrorCode,
    pub message: String,
    /// The failure was the destination's (the receiving side's): its code means what it
    /// means for a push (`NotFound` is then a destination that vanished, not a source).
    pub at_destination: bool,
}

/// Why a whole session ended without success.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    pub code: ErrorCode,
    pub message: String,
    /// As in `Problem`.
    pub at_destination: bool,
    /// The peer said so (an `Error` frame), rather than this end deciding.
    pub by_peer: bool,
}
