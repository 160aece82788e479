//! The client's side of a session, push or pull, as a sans-IO state machine (contract:
//! `crate::session`).
//!
//! ```text
//! push: Hello → Welcome → [BuildManifest] → Entries… EntriesEnd → Failed… Need… NeedEnd
//!       → [Start] runs → Commit (→ Failed… Committed)… Finish → Done
//! pull: Hello → Welcome → Entries… EntriesEnd → [Plan] → [Start] runs
//!       → [Commit]… → [Finish] → Finish → Done
//! ```
//!
//! Bracketed steps are requests the driver carries out. A push's Finish goes right behind
//! its last Commit, without waiting for the Committed: the server takes control frames in
//! order, so it answers that Commit first, and the session saves a round trip.

use std::collections::VecDeque;
use std::ops::Range;

use crate::commit::{Batching, RunEnded, Tracker};
use crate::plan::ChunkPlan;
use crate::schedule::{cut_runs, Asked, RunItem};
use crate::session::{Ended, Failure, Planned, Problem, RunFailed};
use crate::wire::{
    entry_frames, DeleteRequest, DestKind, Entry, ErrorCode, Frame, ManifestBudget, NeedItem, Op,
    Run, WireKind, PROTOCOL_VERSION, UNLISTED_MAX,
};

/// Work the client's driver carries out for the session.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// The server welcomed the session: the other shards may connect to its shards now,
    /// while the manifest is exchanged.
    Dial { session: u64, ports: Vec<u16> },
    /// Push: build the manifest for a destination of this kind (rsync's placement rules),
    /// and answer with `handle_manifest`.
    BuildManifest(DestKind),
    /// Pull: check the server's manifest and plan the local receiver for it; answer with
    /// `handle_planned`.
    Plan { dest: DestKind, entries: Vec<Entry> },
    /// Move these runs, queued per shard (`crate::schedule`); each run's end is fed back
    /// with `handle_run`. `needs` are the receiver's answer, for the old-version hashes.
    Start {
        runs: Vec<Vec<RunItem>>,
        needs: Vec<NeedItem>,
    },
    /// Pull: a file failed; remove what was received of it.
    Abandon(u32),
    /// Pull: commit these files locally; answer with `handle_committed`.
    Commit(Vec<u32>),
    /// Pull: place symlinks and set directory metadata; answer with `handle_finished`.
    Finish,
}

/// What the session did, for the summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Regular files of the manifest.
    pub files: u64,
    pub files_copied: u64,
    pub files_unchanged: u64,
    pub failed: u64,
    /// Bytes moved by runs that succeeded.
    pub bytes: u64,
    /// Pull only (a push counts what it walked).
    pub dirs: u64,
    pub symlinks: u64,
    /// Push with `--delete`: what the server removed, and what it left past the limit.
    pub deleted: u64,
    pub delete_left: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Welcome,
    BuildingManifest,
    SendingManifest,
    Needs,
    PullManifest,
    Planning,
    Transfer,
    Finishing,
    AwaitDone,
    Over,
}

/// What the client knows of one manifest entry.
#[derive(Debug)]
struct FileFacts {
    path: Vec<u8>,
    size: u64,
    is_file: bool,
    /// Asked for by the receiver, or failed while it planned: at most one of either.
    answered: bool,
}

pub struct ClientSession {
    push: bool,
    shard_count: usize,
    phase: Phase,
    session: u64,
    dest: DestKind,
    transmit: VecDeque<Frame>,
    requests: VecDeque<Request>,
    problems: VecDeque<Problem>,
    /// Files now in place at the destination, for the driver's per-file log
    /// (`poll_placed`); failed files come out as problems instead.
    placed: VecDeque<u32>,
    /// Pull: `Unlisted` frames the server sent.
    unlisted: usize,
    outcome: Option<Result<(), Ended>>,
    files: Vec<FileFacts>,
    /// Push: the manifest being sent, and the entries of each frame still to go.
    outgoing: Vec<Entry>,
    outgoing_frames: VecDeque<Range<usize>>,
    /// Pull: the manifest arriving.
    incoming: Vec<Entry>,
    budget: ManifestBudget,
    needs: Vec<NeedItem>,
    plan_failed_files: u64,
    tracker: Tracker,
    finish_sent: bool,
    tally: Tally,
    /// Push: the `--delete` to ask for with `Finish`, if no file failed by then.
    delete: Option<DeleteRequest>,
}

impl ClientSession {
    /// A session that asks the server for `op` and moves its runs over `shard_count`
    /// shards.
    pub fn new(op: Op, shard_count: usize) -> ClientSession {
        assert!(shard_count >= 1, "at least one shard");
        let push = matches!(op, Op::Push { .. });
        let hello = Frame::Hello {
            version: PROTOCOL_VERSION,
            op,
        };
        ClientSession {
            push,
            shard_count,
            phase: Phase::Welcome,
            session: 0,
            dest: DestKind::Missing,
            transmit: VecDeque::from([hello]),
            requests: VecDeque::new(),
            problems: VecDeque::new(),
            placed: VecDeque::new(),
            unlisted: 0,
            outcome: None,
            files: Vec::new(),
            outgoing: Vec::new(),
            outgoing_frames: VecDeque::new(),
            incoming: Vec::new(),
            budget: ManifestBudget::default(),
            needs: Vec::new(),
            plan_failed_files: 0,
            tracker: Tracker::default(),
            finish_sent: false,
            tally: Tally::default(),
            delete: None,
        }
    }

    /// Push: ask the server to delete what `request` names once every file is in place
    /// (sent with `Finish`, and only if no file failed by then; the server withholds it
    /// too if one failed on its side).
    pub fn delete_after(&mut self, request: DeleteRequest) {
        if self.push {
            self.delete = Some(request);
        }
    }

    /// The push's `Finish`: with the `--delete` request while nothing has failed.
    fn finish_frame(&mut self) -> Frame {
        let clean = self.tally.failed == 0 && self.plan_failed_files == 0;
        Frame::Finish {
            delete: self.delete.take().filter(|_| clean),
        }
    }

    pub fn is_push(&self) -> bool {
        self.push
    }

    /// The server's session id, once welcomed.
    pub fn session_id(&self) -> u64 {
        self.session
    }

    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// Whether the driver should read the next control frame now.
    pub fn wants_frame(&self) -> bool {
        self.outcome.is_none()
            && matches!(
                self.phase,
                Phase::Welcome
                    | Phase::Needs
                    | Phase::PullManifest
                    | Phase::Transfer
                    | Phase::AwaitDone
            )
    }

    pub fn poll_transmit(&mut self) -> Option<Frame> {
        if let Some(f) = self.transmit.pop_front() {
            return Some(f);
        }
        if self.phase != Phase::SendingManifest {
            return None;
        }
        match self.outgoing_frames.pop_front() {
            Some(r) => Some(Frame::Entries(self.outgoing[r].to_vec())),
            None => {
                let count = self.outgoing.len() as u64;
                self.outgoing = Vec::new();
                self.phase = Phase::Needs;
                Some(Frame::EntriesEnd { count })
            }
        }
    }

    pub fn poll_request(&mut self) -> Option<Request> {
        self.requests.pop_front()
    }

    pub fn poll_problem(&mut self) -> Option<Problem> {
        self.problems.pop_front()
    }

    /// A file of the manifest (its index) that is now in place at the destination.
    pub fn poll_placed(&mut self) -> Option<u32> {
        self.placed.pop_front()
    }

    pub fn poll_outcome(&mut self) -> Option<Result<(), Ended>> {
        if self.transmit.is_empty() && self.requests.is_empty() {
            self.outcome.take()
        } else {
            None
        }
    }

    /// Frames queued for the driver (for the bounded-queue invariant).
    pub fn queued(&self) -> usize {
        self.transmit.len() + self.requests.len() + self.problems.len()
    }

    /// A control frame from the server.
    pub fn handle_frame(&mut self, frame: Frame) {
        if self.outcome.is_some() {
            return;
        }
        if let Frame::Error { code, message } = frame {
            return self.end(Ended {
                code,
                message: format!("server: {message}"),
                at_destination: self.push,
                by_peer: true,
            });
        }
        let kind = frame.kind();
        let result = match self.phase {
            Phase::Welcome => self.on_welcome(frame),
            Phase::Needs => self.on_need(frame),
            Phase::PullManifest => self.on_manifest(frame),
            Phase::Transfer => self.on_answer(frame),
            Phase::AwaitDone => self.on_done(frame),
            _ => Err(Failure::protocol("")),
        };
        if let Err(f) = result {
            let message = if f.message.is_empty() {
                format!("unexpected frame type {kind} from the server")
            } else {
                f.message
            };
            self.end(Ended {
                code: f.code,
                message,
                at_destination: self.push,
                by_peer: false,
            });
        }
    }

    fn on_welcome(&mut self, frame: Frame) -> Result<(), Failure> {
        let Frame::Welcome {
            session,
            shard_ports,
            dest,
        } = frame
        else {
            return Err(Failure::protocol(format!(
                "server answered Hello with frame type {}",
                frame.kind()
            )));
        };
        (self.session, self.dest) = (session, dest);
        self.requests.push_back(Request::Dial {
            session,
            ports: shard_ports,
        });
        if self.push {
            self.phase = Phase::BuildingManifest;
            self.requests.push_back(Request::BuildManifest(dest));
        } else {
            self.phase = Phase::PullManifest;
        }
        Ok(())
    }

    /// Push: the manifest the driver built; it is sent frame by frame as polled.
    pub fn handle_manifest(&mut self, entries: Vec<Entry>) {
        if self.phase != Phase::BuildingManifest {
            return;
        }
        self.files = facts_of(&entries);
        self.outgoing_frames = entry_frames(&entries).into();
        self.outgoing = entries;
        self.phase = Phase::SendingManifest;
    }

    fn on_need(&mut self, frame: Frame) -> Result<(), Failure> {
        match frame {
            Frame::Need(items) => {
                // At most one item per file of the manifest (checked in full below).
                if self.needs.len() + items.len() > self.files.len() {
                    return Err(Failure::protocol(
                        "server asked for more runs than the manifest has files",
                    ));
                }
                // Each item checked in full before it is kept: its `have` hashes are then
                // bounded by the manifest's own chunks, not by what the server claims.
                for item in &items {
                    self.check_need(item)?;
                }
                self.needs.extend(items);
                Ok(())
            }
            Frame::Failed {
                file,
                code,
                message,
            } => self.failed_at_plan(file, code, format!("server: {message}")),
            Frame::NeedEnd => {
                let needs = std::mem::take(&mut self.needs);
                self.start_transfer(needs);
                Ok(())
            }
            f => Err(Failure::protocol(format!(
                "unexpected frame type {} before NeedEnd",
                f.kind()
            ))),
        }
    }

    /// A file the receiver failed while planning: once, and never also asked for.
    fn failed_at_plan(
        &mut self,
        file: u32,
        code: ErrorCode,
        message: String,
    ) -> Result<(), Failure> {
        let Some(f) = self.files.get_mut(file as usize).filter(|f| !f.answered) else {
            return Err(Failure::protocol(format!(
                "receiver failed entry {file}, which is not in the manifest or was answered"
            )));
        };
        f.answered = true;
        self.plan_failed_files += u64::from(f.is_file);
        self.fail_file(file, code, message);
        Ok(())
    }

    /// Checks one item of the receiver's answer: a regular file of the manifest, a
    /// non-empty run of chunks inside it, a file not answered before.
    fn check_need(&mut self, n: &NeedItem) -> Result<(), Failure> {
        let Some(f) = self.files.get_mut(n.file as usize).filter(|f| f.is_file) else {
            return Err(Failure::protocol(format!(
                "receiver asked for entry {} which is not a file",
                n.file
            )));
        };
        let chunks = ChunkPlan::new(f.size).map_or(0, |p| p.chunk_count());
        let end = u64::from(n.chunk_first) + u64::from(n.chunk_count);
        if n.chunk_count == 0 || end > u64::from(chunks) {
            return Err(Failure::protocol(format!(
                "receiver asked for chunks {}..{end} of file {}, which has {chunks}",
                n.chunk_first, n.file
            )));
        }
        if std::mem::replace(&mut f.answered, true) {
            return Err(Failure::protocol(format!(
                "receiver asked for file {} twice",
                n.file
            )));
        }
        Ok(())
    }

    fn on_manifest(&mut self, frame: Frame) -> Result<(), Failure> {
        match frame {
            Frame::Unlisted { code, message } => {
                self.unlisted += 1;
                if self.unlisted > UNLISTED_MAX {
                    return Err(Failure::protocol(format!(
                        "server sent more than {UNLISTED_MAX} Unlisted frames"
                    )));
                }
                // A part of the source that does not arrive: a failure of this pull, as
                // an unreadable directory is of a local copy.
                self.tally.failed += 1;
                self.problems.push_back(Problem {
                    file: None,
                    code,
                    message: format!("server: {message}"),
                    at_destination: false,
                });
                Ok(())
            }
            Frame::Entries(batch) => {
                self.budget
                    .take(&batch)
                    .map_err(|e| Failure::protocol(format!("server manifest refused: {e}")))?;
                self.incoming.extend(batch);
                Ok(())
            }
            Frame::EntriesEnd { count } if count == self.incoming.len() as u64 => {
                let entries = std::mem::take(&mut self.incoming);
                self.files = facts_of(&entries);
                for e in &entries {
                    self.tally.dirs += u64::from(e.kind == WireKind::Dir);
                    self.tally.symlinks += u64::from(e.kind == WireKind::Symlink);
                }
                self.phase = Phase::Planning;
                self.requests.push_back(Request::Plan {
                    dest: self.dest,
                    entries,
                });
                Ok(())
            }
            Frame::EntriesEnd { count } => Err(Failure::protocol(format!(
                "server manifest ended at {} entries, announced {count}",
                self.incoming.len()
            ))),
            f => Err(Failure::protocol(format!(
                "unexpected frame type {} in the manifest",
                f.kind()
            ))),
        }
    }

    /// Pull: the local receiver's plan, checked as a server's answer would be.
    pub fn handle_planned(&mut self, planned: Planned) {
        if self.phase != Phase::Planning || self.outcome.is_some() {
            return;
        }
        let checked = planned.and_then(|(needs, failed)| {
            for (file, f) in failed {
                self.failed_at_plan(file, f.code, f.message)?;
            }
            needs.iter().try_for_each(|n| self.check_need(n))?;
            Ok(needs)
        });
        match checked {
            Ok(needs) => self.start_transfer(needs),
            Err(f) => self.end(Ended {
                code: f.code,
                message: f.message,
                at_destination: true,
                by_peer: false,
            }),
        }
    }

    fn start_transfer(&mut self, needs: Vec<NeedItem>) {
        let asked = needs.iter().map(|n| Asked {
            file: n.file,
            path: &self.files[n.file as usize].path,
            first: n.chunk_first,
            count: n.chunk_count,
        });
        let runs = cut_runs(asked, self.shard_count);
        // Eager: a remote commit overlaps the data still moving (see `commit`).
        let files = runs.iter().flatten().map(|r| r.file);
        self.tracker = Tracker::new(self.files.len(), files, Batching::Eager);
        self.tally.files = self.files.iter().filter(|f| f.is_file).count() as u64;
        self.tally.files_unchanged = self
            .tally
            .files
            .saturating_sub(needs.len() as u64 + self.plan_failed_files);
        self.phase = Phase::Transfer;
        self.requests.push_back(Request::Start { runs, needs });
        self.advance();
    }

    /// One run of `file` ended: its bytes moved and verified, or why (and where) it failed.
    pub fn handle_run(&mut self, file: u32, result: Result<u64, RunFailed>) {
        if self.phase != Phase::Transfer || self.outcome.is_some() {
            return;
        }
        let written = *result.as_ref().unwrap_or(&0);
        let ended = self.tracker.run_ended(file, result.is_ok(), written);
        match (ended, result) {
            (Ok(_), Ok(n)) => self.tally.bytes += n,
            (Ok(RunEnded::FileFailed), Err(f)) => {
                self.tally.failed += 1;
                self.problems.push_back(Problem {
                    file: Some(file),
                    code: f.failure.code,
                    message: f.failure.message,
                    at_destination: f.at_destination,
                });
                if !self.push {
                    self.requests.push_back(Request::Abandon(file));
                }
            }
            (Ok(_), Err(_)) => {}
            (Err(f), _) => return self.fail_local(f),
        }
        self.advance();
    }

    /// Commits what is ready, and finishes once every file is resolved.
    fn advance(&mut self) {
        if self.phase != Phase::Transfer {
            return;
        }
        if let Some(files) = self.tracker.take_batch() {
            if self.push {
                self.transmit.push_back(Frame::Commit { files });
                if self.tracker.last_batch_in_flight() {
                    let finish = self.finish_frame();
                    self.transmit.push_back(finish);
                    self.finish_sent = true;
                }
            } else {
                self.requests.push_back(Request::Commit(files));
            }
        }
        if self.tracker.unresolved() > 0 {
            return;
        }
        if self.push {
            if !std::mem::replace(&mut self.finish_sent, true) {
                let finish = self.finish_frame();
                self.transmit.push_back(finish);
            }
            self.phase = Phase::AwaitDone;
        } else {
            self.phase = Phase::Finishing;
            self.requests.push_back(Request::Finish);
        }
    }

    /// Push: the server's answers to a Commit.
    fn on_answer(&mut self, frame: Frame) -> Result<(), Failure> {
        match frame {
            Frame::Committed { files } if self.push => {
                for &f in &files {
                    self.tracker
                        .settle(f)
                        .map_err(|e| Failure::protocol(format!("server sent an {}", e.message)))?;
                }
                self.tally.files_copied += files.len() as u64;
                self.placed.extend(&files);
            }
            Frame::Failed {
                file,
                code,
                message,
            } if self.push => {
                self.tracker
                    .settle(file)
                    .map_err(|e| Failure::protocol(format!("server sent an {}", e.message)))?;
                self.fail_file(file, code, format!("server: {message}"));
            }
            f => {
                return Err(Failure::protocol(format!(
                    "unexpected frame type {} from the server",
                    f.kind()
                )))
            }
        }
        self.advance();
        Ok(())
    }

    fn fail_file(&mut self, file: u32, code: ErrorCode, message: String) {
        self.tally.failed += 1;
        self.problems.push_back(Problem {
            file: Some(file),
            code,
            message,
            at_destination: true,
        });
    }

    /// Pull: the local commit of the batch asked for.
    pub fn handle_committed(&mut self, ok: Vec<u32>, failed: Vec<(u32, Failure)>) {
        if self.push || self.phase != Phase::Transfer || self.outcome.is_some() {
            return;
        }
        for f in ok {
            if let Err(e) = self.tracker.settle(f) {
                return self.fail_local(e);
            }
            self.tally.files_copied += 1;
            self.placed.push_back(f);
        }
        for (file, f) in failed {
            if let Err(e) = self.tracker.settle(file) {
                return self.fail_local(e);
            }
            self.fail_file(file, f.code, f.message);
        }
        self.advance();
    }

    /// Pull: symlinks and directories placed; `files_written` is what the receiver put
    /// in place in all.
    pub fn handle_finished(&mut self, failed: Vec<(u32, Failure)>, files_written: u64) {
        if self.phase != Phase::Finishing || self.outcome.is_some() {
            return;
        }
        for (file, f) in failed {
            self.fail_file(file, f.code, f.message);
        }
        self.tally.files_copied = files_written;
        self.transmit.push_back(Frame::Finish { delete: None });
        self.phase = Phase::AwaitDone;
    }

    fn on_done(&mut self, frame: Frame) -> Result<(), Failure> {
        match frame {
            Frame::Done {
                files,
                deleted,
                left,
                ..
            } => {
                if self.push {
                    self.tally.files_copied = files;
                    self.tally.deleted = deleted;
                    self.tally.delete_left = left;
                }
                self.phase = Phase::Over;
                self.outcome = Some(Ok(()));
            }
            // Entries the server's finish could not place: symlinks and directories, each
            // reported once (one that failed while planning already counts).
            Frame::Failed {
                file,
                code,
                message,
            } if self.push => {
                let Some(f) = self.files.get_mut(file as usize).filter(|f| !f.is_file) else {
                    return Err(Failure::protocol(format!(
                        "server failed entry {file} at the end, which is not a directory or symlink"
                    )));
                };
                if !std::mem::replace(&mut f.answered, true) {
                    self.fail_file(file, code, format!("server: {message}"));
                }
            }
            // The answer to a last Commit whose files all failed: their Failed frames
            // settled them already.
            Frame::Committed { files } if self.push && files.is_empty() => {}
            f => {
                return Err(Failure::protocol(format!(
                    "unexpected frame type {} at the end",
                    f.kind()
                )))
            }
        }
        Ok(())
    }

    /// This end's driver broke the contract (an answer never asked for).
    fn fail_local(&mut self, f: Failure) {
        self.end(Ended {
            code: ErrorCode::Io,
            message: format!("internal: {}", f.message),
            at_destination: !self.push,
            by_peer: false,
        })
    }

    fn end(&mut self, ended: Ended) {
        // Nothing queued is worth doing any more: the driver ends the connection, and a
        // pull's receiver removes its temporaries when dropped.
        self.transmit.clear();
        self.requests.clear();
        self.phase = Phase::Over;
        self.outcome = Some(Err(ended));
    }
}

fn facts_of(entries: &[Entry]) -> Vec<FileFacts> {
    entries
        .iter()
        .map(|e| FileFacts {
            path: e.path.clone(),
            size: e.size,
            is_file: e.kind == WireKind::File,
            answered: false,
        })
        .collect()
}

/// The first frame of a data stream that moves `run`: `Put` in a push, `Get` in a pull.
pub fn run_header(push: bool, run: Run) -> Frame {
    if push {
        Frame::Put(run)
    } else {
        Frame::Get(run)
    }
}

/// Checks the server's answer on a data stream: `RangeOk` once a Put's run is in; `Data`
/// with the chunk count asked for, before a Get's run. An `Error` says why the run failed.
pub fn check_run_answer(push: bool, asked_chunks: u32, answer: Frame) -> Result<(), Failure> {
    match answer {
        Frame::RangeOk if push => Ok(()),
        Frame::Data { chunk_count } if !push && chunk_count == asked_chunks => Ok(()),
        other => Err(refusal(other)),
    }
}

/// Why the server refused a run it stopped reading part way: its `Error`. Any other
/// frame there breaks the protocol.
pub fn refusal(answer: Frame) -> Failure {
    match answer {
        Frame::Error { code, message } => Failure::new(code, message),
        other => Failure::protocol(format!(
            "server answered a run with frame type {}",
            other.kind()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_pull_left_unlisted_fails_alone_up_to_the_limit() {
        let mut s = ClientSession::new(
            Op::Pull {
                src: b"t".to_vec(),
                select: Default::default(),
                rate: None,
            },
            1,
        );
        assert!(matches!(s.poll_transmit(), Some(Frame::Hello { .. })));
        s.handle_frame(Frame::Welcome {
            session: 7,
            shard_ports: vec![1],
            dest: DestKind::Dir,
        });
        let unlisted = || Frame::Unlisted {
            code: ErrorCode::Io,
            message: "'t/d': Permission denied".into(),
        };
        s.handle_frame(unlisted());
        let p = s.poll_problem().expect("told");
        assert_eq!(p.file, None);
        assert_eq!(p.message, "server: 't/d': Permission denied");
        assert_eq!(s.tally().failed, 1);
        assert!(s.poll_outcome().is_none(), "the pull goes on");
        for _ in 1..UNLISTED_MAX {
            s.handle_frame(unlisted());
        }
        assert!(s.poll_outcome().is_none());
        assert_eq!(s.tally().failed, UNLISTED_MAX as u64);
        // One past the limit: the server is not keeping to the protocol.
        s.handle_frame(unlisted());
        while s.poll_problem().is_some() {}
        let ended = s.poll_outcome().expect("ended").unwrap_err();
        assert_eq!(ended.code, ErrorCode::Protocol, "{ended:?}");
    }
}
