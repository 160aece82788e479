//! The server's side of a session as a sans-IO state machine (contract:
//! `crate::session`): what a new stream is (`open_stream`), and the control stream of a
//! push (which the server receives) or of a pull (which it lists).
//!
//! ```text
//! push: Hello → [LookUp] → Welcome → Entries… EntriesEnd → [Plan] → Failed… Need… NeedEnd
//!       → (Commit → [Commit] → Failed… Committed)… → Finish → [Finish] → Failed… Done
//! pull: Hello → [Walk] → Welcome → Entries… EntriesEnd → Finish → Done
//! ```
//!
//! Data streams (`Put`, `Get`) carry no session state here: any shard serves them
//! (docs/PROTOCOL.md §7). Any frame out of this order, or a request the driver answers
//! with a failure that ends the session, ends it with an `Error` frame queued for the
//! client.

use std::collections::VecDeque;
use std::ops::Range;

use crate::relpath::RelPath;
use crate::session::{Failure, Planned, TRANSMIT_QUEUE_MAX};
use crate::wire::{
    entry_frames, need_frames, DeleteRequest, DestKind, Entry, ErrorCode, Frame, ManifestBudget,
    NeedItem, Op, Run, Selection, PROTOCOL_VERSION, UNLISTED_MAX,
};

/// What the server's settings say about every stream.
#[derive(Clone, Debug)]
pub struct ServerFacts {
    pub read_only: bool,
    /// The UDP port of each server shard, for `Welcome`.
    pub ports: Vec<u16>,
}

/// What a stream is, decided by its first frame.
#[derive(Debug)]
pub enum Opened {
    /// A session's control stream: drive the machine.
    Control(Box<ServerSession>),
    /// A push's data stream: receive this run.
    Put(Run),
    /// A pull's data stream: the stream must end here; then send this run.
    Get(Run),
    /// The stream ended before any frame: nothing to do.
    Quiet,
    /// Refused: answer `Error` with this failure and finish.
    Refused(Failure),
}

/// Decides what a new stream is from its first frame (`None`: it ended before one).
/// `session` draws a fresh random id, if this starts a session.
pub fn open_stream(
    first: Option<Frame>,
    facts: &ServerFacts,
    session: impl FnOnce() -> u64,
) -> Opened {
    let read_only = || {
        Opened::Refused(Failure::new(
            ErrorCode::NotWritable,
            "this server is --read-only",
        ))
    };
    match first {
        None => Opened::Quiet,
        Some(Frame::Hello { version, .. }) if version != PROTOCOL_VERSION => {
            Opened::Refused(Failure::new(
                ErrorCode::Version,
                format!("protocol version {version} is not spoken here (this server speaks {PROTOCOL_VERSION})"),
            ))
        }
        Some(Frame::Hello {
            op: Op::Push { .. },
            ..
        }) if facts.read_only => read_only(),
        Some(Frame::Hello { op, .. }) => {
            match ServerSession::new(op, facts.ports.clone(), session()) {
                Ok(s) => Opened::Control(Box::new(s)),
                Err(f) => Opened::Refused(f),
            }
        }
        Some(Frame::Put(_)) if facts.read_only => read_only(),
        Some(Frame::Put(run)) => Opened::Put(run),
        Some(Frame::Get(run)) => Opened::Get(run),
        Some(f) => Opened::Refused(Failure::protocol(format!(
            "a stream cannot start with frame type {}",
            f.kind()
        ))),
    }
}

/// A pull's listing, as the driver's walk found it.
pub struct Listing {
    /// What the source's top is.
    pub kind: DestKind,
    pub entries: Vec<Entry>,
    /// What the walk could not list (an unreadable directory, a tree too deep), each
    /// left out of `entries`.
    pub unlisted: Vec<Failure>,
}

/// The `Unlisted` frames that tell the client of `unlisted`: one each, at most
/// `UNLISTED_MAX`, the last one counting those past it.
fn unlisted_frames(unlisted: Vec<Failure>) -> Vec<Frame> {
    let total = unlisted.len();
    let mut frames = Vec::with_capacity(total.min(UNLISTED_MAX));
    for (i, f) in unlisted.into_iter().enumerate() {
        if i + 1 == UNLISTED_MAX && total > UNLISTED_MAX {
            frames.push(Frame::Unlisted {
                code: f.code,
                message: format!(
                    "{} more parts of the source could not be listed (the server's log \
                     names each)",
                    total - i
                ),
            });
            break;
        }
        frames.push(Frame::Unlisted {
            code: f.code,
            message: f.message,
        });
    }
    frames
}

/// A path the client named, beneath the root. A trailing slash only says "a directory"
/// to the client's placement rules.
pub fn parse_path(bytes: &[u8]) -> Result<RelPath, Failure> {
    let trimmed = bytes.strip_suffix(b"/").unwrap_or(bytes);
    RelPath::parse(trimmed).map_err(|e| Failure::new(ErrorCode::PathRefused, e.to_string()))
}

/// What a push's data stream writes into, as the driver found it.
#[derive(Debug)]
pub enum PutTarget<'a> {
    /// The temporary file the control stream planned, of this size.
    Planned { size: u64 },
    /// A small file the session left to its data stream to create (its path and size as
    /// planned), not yet created.
    Unmade { path: &'a RelPath, size: u64 },
}

/// Whether a Put's run (to `path`, parsed from it) may write into `target`. The run
/// must agree with what the session planned: the planned size (or a run could extend a
/// file), and, for a file the stream creates, the planned path, whole, in one run (or a
/// client could create a file its manifest did not plan).
pub fn check_put(run: &Run, path: &RelPath, target: PutTarget) -> Result<(), Failure> {
    match target {
        PutTarget::Planned { size } if size != run.size => Err(Failure::protocol(format!(
            "{path}: size {} does not match the manifest",
            run.size
        ))),
        PutTarget::Unmade {
            path: planned,
            size,
        } if path != planned
            || run.size != size
            || run.chunk_first != 0
            || run.chunk_count != 1 =>
        {
            Err(Failure::protocol(format!(
                "{path}: the run does not match the manifest"
            )))
        }
        _ => Ok(()),
    }
}

/// Whether a Get's run may be read from the file at `path`, which is `size` bytes now:
/// a file that changed size since the manifest is refused, so no run reads past the
/// listed end or sends a mix of two versions' lengths.
pub fn check_get(run: &Run, path: &RelPath, size: u64) -> Result<(), Failure> {
    if size != run.size {
        return Err(Failure::new(
            ErrorCode::Changed,
            format!("{path} changed size since the manifest"),
        ));
    }
    Ok(())
}

/// Work the server's driver carries out for a control stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// Push: what stands at the destination; answer with `handle_looked_up`.
    LookUp(RelPath),
    /// Pull: list the tree at the source, less what `select` leaves out (matched against
    /// paths that start with `name`, the source's own path among the transfer's,
    /// `place::transfer_name`); answer with `handle_listed`.
    Walk {
        base: RelPath,
        name: Vec<u8>,
        select: Selection,
    },
    /// Push: check the manifest's paths and plan the receiver (directories, quick check,
    /// temporary files); answer with `handle_planned`.
    Plan {
        base: RelPath,
        session: u64,
        durable: bool,
        entries: Vec<Entry>,
    },
    /// Push: commit these files; answer with `handle_committed`.
    Commit(Vec<u32>),
    /// Push: carry out the client's `--delete` if it asked and nothing in the session
    /// failed, then place symlinks and set directory metadata; answer with
    /// `handle_finished`.
    Finish { delete: Option<DeleteRequest> },
}

/// What a push's finish did: regular files put in place and bytes committed in the
/// session, and entries its `--delete` removed and left (past `--max-delete`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Finished {
    pub files: u64,
    pub bytes: u64,
    pub deleted: u64,
    pub left: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    LookingUp,
    Walking,
    Manifest,
    Planning,
    /// Frames queued (lazily) for the client; then `next`.
    Sending,
    Transfer,
    Committing,
    Finishing,
    AwaitFinish,
    Over,
}

/// Frames produced as the driver polls, so a long list is never encoded ahead of the
/// stream: a head, per-file failures, the items of a list cut into frames, a tail.
#[derive(Debug, Default)]
struct Outbox {
    head: Option<Frame>,
    failed: VecDeque<(u32, Failure)>,
    /// Pull: the `Unlisted` frames, before the listing (at most `UNLISTED_MAX`).
    unlisted: VecDeque<Frame>,
    entries: Vec<Entry>,
    needs: Vec<NeedItem>,
    frames: VecDeque<Range<usize>>,
    tail: VecDeque<Frame>,
}

impl Outbox {
    fn next(&mut self) -> Option<Frame> {
        if let Some(f) = self.head.take() {
            return Some(f);
        }
        if let Some((file, f)) = self.failed.pop_front() {
            return Some(Frame::Failed {
                file,
                code: f.code,
                message: f.message,
            });
        }
        if let Some(f) = self.unlisted.pop_front() {
            return Some(f);
        }
        if let Some(r) = self.frames.pop_front() {
            return Some(if self.needs.is_empty() {
                Frame::Entries(self.entries[r].to_vec())
            } else {
                Frame::Need(self.needs[r].to_vec())
            });
        }
        (self.entries, self.needs) = (Vec::new(), Vec::new());
        self.tail.pop_front()
    }

    fn is_empty(&self) -> bool {
        self.head.is_none()
            && self.failed.is_empty()
            && self.unlisted.is_empty()
            && self.frames.is_empty()
            && self.tail.is_empty()
    }
}

#[derive(Debug)]
pub struct ServerSession {
    push: bool,
    session: u64,
    ports: Vec<u16>,
    base: RelPath,
    durable: bool,
    phase: Phase,
    /// The phase once the outbox is empty.
    next: Phase,
    outbox: Outbox,
    requests: VecDeque<Request>,
    incoming: Vec<Entry>,
    budget: ManifestBudget,
    outcome: Option<Result<(), Failure>>,
    /// Push: a file of the session failed here, which withholds a `--delete`.
    any_failed: bool,
    /// Pull: the client's `--bwlimit`, bytes a second.
    rate: Option<u64>,
}

impl ServerSession {
    fn new(op: Op, ports: Vec<u16>, session: u64) -> Result<ServerSession, Failure> {
        let (push, path, durable, select, rate) = match op {
            Op::Push { dest, durable } => (true, dest, durable, Selection::default(), None),
            Op::Pull { src, select, rate } => (false, src, false, select, rate),
        };
        let base = parse_path(&path)?;
        let (phase, request) = if push {
            (Phase::LookingUp, Request::LookUp(base.clone()))
        } else {
            let name = crate::place::transfer_name(&path).to_vec();
            let walk = Request::Walk {
                base: base.clone(),
                name,
                select,
            };
            (Phase::Walking, walk)
        };
        Ok(ServerSession {
            push,
            session,
            ports,
            base,
            durable,
            phase,
            next: phase,
            outbox: Outbox::default(),
            requests: VecDeque::from([request]),
            incoming: Vec::new(),
            budget: ManifestBudget::default(),
            outcome: None,
            any_failed: false,
            rate,
        })
    }

    pub fn is_push(&self) -> bool {
        self.push
    }

    /// The push's destination or the pull's source, beneath the served root.
    pub fn path(&self) -> &RelPath {
        &self.base
    }

    /// Pull: the most bytes a second the client asked its data be sent at.
    pub fn send_rate(&self) -> Option<u64> {
        self.rate
    }

    pub fn session_id(&self) -> u64 {
        self.session
    }

    /// Encoded bytes of the client's manifest received so far, or of the listing sent
    /// for a pull: what the driver holds against the server's limit for all sessions
    /// together (`admission`).
    pub fn manifest_bytes(&self) -> u64 {
        self.budget.bytes()
    }

    /// Whether the driver should read the next control frame now.
    pub fn wants_frame(&self) -> bool {
        self.outcome.is_none()
            && matches!(
                self.phase,
                Phase::Manifest | Phase::Transfer | Phase::AwaitFinish
            )
    }

    pub fn poll_transmit(&mut self) -> Option<Frame> {
        let f = self.outbox.next();
        if self.phase == Phase::Sending && self.outbox.is_empty() {
            self.phase = self.next;
        }
        f
    }

    pub fn poll_request(&mut self) -> Option<Request> {
        self.requests.pop_front()
    }

    pub fn poll_outcome(&mut self) -> Option<Result<(), Failure>> {
        if self.outbox.is_empty() && self.requests.is_empty() {
            self.outcome.take()
        } else {
            None
        }
    }

    /// Frames queued outside the lazily produced lists (for the bounded-queue invariant).
    pub fn queued(&self) -> usize {
        self.outbox.tail.len() + self.requests.len()
    }

    fn send_then(&mut self, next: Phase) {
        debug_assert!(self.outbox.tail.len() <= TRANSMIT_QUEUE_MAX);
        self.next = next;
        self.phase = if self.outbox.is_empty() {
            next
        } else {
            Phase::Sending
        };
    }

    fn welcome(&self, dest: DestKind) -> Frame {
        Frame::Welcome {
            session: self.session,
            shard_ports: self.ports.clone(),
            dest,
        }
    }

    /// Push: what stands at the destination.
    pub fn handle_looked_up(&mut self, dest: Result<DestKind, Failure>) {
        if self.phase != Phase::LookingUp {
            return;
        }
        match dest {
            Ok(kind) => {
                self.outbox.tail.push_back(self.welcome(kind));
                self.send_then(Phase::Manifest);
            }
            Err(f) => self.end(f),
        }
    }

    /// Pull: the tree at the source, what its top is (Dir or Other), and what the walk
    /// had to leave out (told to the client as `Unlisted`).
    pub fn handle_listed(&mut self, listed: Result<Listing, Failure>) {
        if self.phase != Phase::Walking {
            return;
        }
        match listed {
            Ok(Listing {
                kind,
                entries,
                unlisted,
            }) => {
                // A listing is held like a received manifest, within the same limits:
                // the client would refuse a longer one, and the server's memory is
                // bounded by them (the driver also counts `manifest_bytes`).
                if let Err(e) = self.budget.take(&entries) {
                    return self.end(Failure::new(
                        ErrorCode::Io,
                        format!("the listing is too large to send: {e}"),
                    ));
                }
                self.outbox.head = Some(self.welcome(kind));
                let count = entries.len() as u64;
                self.outbox.unlisted = unlisted_frames(unlisted).into();
                self.outbox.frames = entry_frames(&entries).into();
                self.outbox.entries = entries;
                self.outbox.tail.push_back(Frame::EntriesEnd { count });
                self.send_then(Phase::AwaitFinish);
            }
            Err(f) => self.end(f),
        }
    }

    /// A control frame that could not be decoded: the session ends with `Protocol`.
    pub fn handle_malformed(&mut self, why: String) {
        if self.outcome.is_none() {
            self.end(Failure::protocol(why));
        }
    }

    /// A control frame from the client (read only while `wants_frame`).
    pub fn handle_frame(&mut self, frame: Frame) {
        if self.outcome.is_some() {
            return;
        }
        let result = match (self.phase, frame) {
            (_, Frame::Error { code, message }) => {
                Err(Failure::new(code, format!("client: {message}")))
            }
            (Phase::Manifest, f) => self.on_manifest(f),
            (Phase::Transfer, Frame::Commit { files }) => {
                self.phase = Phase::Committing;
                self.requests.push_back(Request::Commit(files));
                Ok(())
            }
            (Phase::Transfer, Frame::Finish { delete }) => {
                self.phase = Phase::Finishing;
                // rsync's --delete-after: only once every transfer succeeded. The client
                // sees its files' failures, and so knows why nothing was deleted.
                let delete = delete.filter(|_| !self.any_failed);
                self.requests.push_back(Request::Finish { delete });
                Ok(())
            }
            (Phase::AwaitFinish, Frame::Finish { delete: Some(_) }) => {
                Err(Failure::protocol("a pull asked for --delete".to_string()))
            }
            (Phase::AwaitFinish, Frame::Finish { delete: None }) => {
                self.outbox.tail.push_back(Frame::Done {
                    files: 0,
                    bytes: 0,
                    deleted: 0,
                    left: 0,
                });
                self.succeed();
                Ok(())
            }
            (_, f) => Err(Failure::protocol(format!(
                "unexpected frame type {} in a {}",
                f.kind(),
                if self.push { "push" } else { "pull" }
            ))),
        };
        if let Err(f) = result {
            self.end(f);
        }
    }

    fn on_manifest(&mut self, frame: Frame) -> Result<(), Failure> {
        match frame {
            Frame::Entries(entries) => {
                self.budget
                    .take(&entries)
                    .map_err(|e| Failure::protocol(e.to_string()))?;
                self.incoming.extend(entries);
                Ok(())
            }
            Frame::EntriesEnd { count } if count == self.incoming.len() as u64 => {
                self.phase = Phase::Planning;
                self.requests.push_back(Request::Plan {
                    base: self.base.clone(),
                    session: self.session,
                    durable: self.durable,
                    entries: std::mem::take(&mut self.incoming),
                });
                Ok(())
            }
            Frame::EntriesEnd { count } => Err(Failure::protocol(format!(
                "manifest ended at {} entries, announced {count}",
                self.incoming.len()
            ))),
            f => Err(Failure::protocol(format!(
                "frame type {} inside the manifest",
                f.kind()
            ))),
        }
    }

    /// Push: the receiver's plan: files that failed already, and the chunks it needs.
    /// A failure refuses the whole manifest.
    pub fn handle_planned(&mut self, planned: Planned) {
        if self.phase != Phase::Planning {
            return;
        }
        match planned {
            Ok((needs, failed)) => {
                self.any_failed |= !failed.is_empty();
                self.outbox.failed = failed.into();
                self.outbox.frames = need_frames(&needs).into();
                self.outbox.needs = needs;
                self.outbox.tail.push_back(Frame::NeedEnd);
                self.send_then(Phase::Transfer);
            }
            Err(f) => self.end(f),
        }
    }

    /// Push: the batch of the last Commit: committed, or failed one by one.
    pub fn handle_committed(&mut self, ok: Vec<u32>, failed: Vec<(u32, Failure)>) {
        if self.phase != Phase::Committing {
            return;
        }
        self.any_failed |= !failed.is_empty();
        self.outbox.failed = failed.into();
        self.outbox.tail.push_back(Frame::Committed { files: ok });
        self.send_then(Phase::Transfer);
    }

    /// Push: symlinks and directories placed; what the session put in place in all, and
    /// what its `--delete` removed and left past its limit. A `--delete` request the
    /// driver refused (a base outside the root, a rule that does not compile) ends the
    /// session instead.
    pub fn handle_finished(&mut self, finished: Result<(Vec<(u32, Failure)>, Finished), Failure>) {
        if self.phase != Phase::Finishing {
            return;
        }
        let (failed, done) = match finished {
            Ok(f) => f,
            Err(f) => return self.end(f),
        };
        self.outbox.failed = failed.into();
        self.outbox.tail.push_back(Frame::Done {
            files: done.files,
            bytes: done.bytes,
            deleted: done.deleted,
            left: done.left,
        });
        self.succeed();
    }

    fn succeed(&mut self) {
        self.send_then(Phase::Over);
        self.outcome = Some(Ok(()));
    }

    /// Ends the session: the client hears why (an `Error` frame), nothing queued before
    /// it is sent, and the driver aborts what the session had planned.
    fn end(&mut self, f: Failure) {
        self.outbox = Outbox::default();
        self.requests.clear();
        self.outbox.tail.push_back(Frame::Error {
            code: f.code,
            message: f.message.clone(),
        });
        self.phase = Phase::Over;
        self.outcome = Some(Err(f));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(path: &str, size: u64, chunk_first: u32, chunk_count: u32) -> Run {
        Run {
            session: 1,
            file: 0,
            path: path.as_bytes().to_vec(),
            size,
            chunk_first,
            chunk_count,
            codecs: 0,
        }
    }

    #[test]
    fn a_put_must_match_what_the_session_planned() {
        let a = RelPath::parse(b"d/a").unwrap();
        let b = RelPath::parse(b"d/b").unwrap();
        let planned = |size| PutTarget::Planned { size };
        assert!(check_put(&run("d/a", 9, 0, 1), &a, planned(9)).is_ok());
        let grow = check_put(&run("d/a", 10, 0, 1), &a, planned(9)).unwrap_err();
        assert_eq!(
            grow.code,
            ErrorCode::Protocol,
            "a run may not extend a file"
        );
        let unmade = |path| PutTarget::Unmade { path, size: 9 };
        assert!(check_put(&run("d/a", 9, 0, 1), &a, unmade(&a)).is_ok());
        for (r, full) in [
            (run("d/b", 9, 0, 1), &b), // another path than planned
            (run("d/a", 8, 0, 1), &a), // another size
            (run("d/a", 9, 1, 1), &a), // not the whole file
            (run("d/a", 9, 0, 2), &a),
        ] {
            assert!(check_put(&r, full, unmade(&a)).is_err(), "{r:?}");
        }
    }

    #[test]
    fn a_listing_tells_what_it_left_out_before_the_entries_and_within_its_limit() {
        let facts = ServerFacts {
            read_only: false,
            ports: vec![1],
        };
        let hello = Frame::Hello {
            version: PROTOCOL_VERSION,
            op: Op::Pull {
                src: b"t".to_vec(),
                select: Selection::default(),
                rate: None,
            },
        };
        let Opened::Control(mut s) = open_stream(Some(hello), &facts, || 7) else {
            panic!("a pull is a session");
        };
        assert!(matches!(s.poll_request(), Some(Request::Walk { .. })));
        let problem = |i| Failure::new(ErrorCode::Io, format!("'t/d{i}': Permission denied"));
        let entry = Entry {
            kind: crate::wire::WireKind::Dir,
            path: Vec::new(),
            size: 0,
            mode: 0o755,
            mtime: (0, 0),
            target: Vec::new(),
            hashes: Vec::new(),
        };
        s.handle_listed(Ok(Listing {
            kind: DestKind::Dir,
            entries: vec![entry],
            unlisted: (0..UNLISTED_MAX + 976).map(problem).collect(),
        }));
        let sent: Vec<Frame> = std::iter::from_fn(|| s.poll_transmit()).collect();
        assert!(matches!(sent[0], Frame::Welcome { .. }), "{:?}", sent[0]);
        let unlisted: Vec<&String> = sent
            .iter()
            .filter_map(|f| match f {
                Frame::Unlisted { message, .. } => Some(message),
                _ => None,
            })
            .collect();
        assert_eq!(unlisted.len(), UNLISTED_MAX);
        assert_eq!(unlisted[0], "'t/d0': Permission denied");
        assert!(
            unlisted[UNLISTED_MAX - 1].starts_with("977 more"),
            "{unlisted:?}"
        );
        assert!(matches!(sent[UNLISTED_MAX + 1], Frame::Entries(_)));
        assert_eq!(sent.last(), Some(&Frame::EntriesEnd { count: 1 }));
    }

    #[test]
    fn a_get_of_a_file_that_changed_size_is_refused_as_changed() {
        let a = RelPath::parse(b"a").unwrap();
        assert!(check_get(&run("a", 5, 0, 1), &a, 5).is_ok());
        let changed = check_get(&run("a", 5, 0, 1), &a, 6).unwrap_err();
        assert_eq!(changed.code, ErrorCode::Changed);
    }
}
