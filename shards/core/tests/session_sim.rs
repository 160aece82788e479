//! Deterministic simulation of whole remote sessions: the client and server state
//! machines of `tpc_core::session` wired together through an in-memory control stream,
//! with models of the drivers (a receiver's disk, the data runs) and a seeded scheduler
//! that reorders their events and injects faults: failed runs, plans and commits,
//! duplicated, dropped and forged control frames, lost connections, and a crash of the
//! receiving side followed by a fresh session. (A crash of the sending side is, to both
//! machines, a lost connection: the sender's disk holds nothing of the transfer, and
//! the receiver keeps what it had made durable, which is what the lost-connection fault
//! models.)
//!
//! Checked at every step: a destination name only ever holds the complete old or the
//! complete new content; nothing is reported committed before it is durable; no queue of
//! either machine grows past its bound; the session ends (success or a typed error)
//! within a bounded number of steps; a session that succeeds leaves every file it did
//! not report failed in place. After a fault ends a session, a fresh session without
//! faults must complete the transfer.
//!
//! Every seed is a scenario. `TPC_SIM_SEED=n` replays one; `TPC_SIM_SEEDS=n` sets how
//! many run (20,000 by default).

use std::collections::{HashMap, HashSet, VecDeque};

use tpc_core::limits::CHUNK_SIZE_BYTES;
use tpc_core::schedule::RunItem;
use tpc_core::session::client::{self, ClientSession};
use tpc_core::session::server::{self, open_stream, Opened, ServerFacts, ServerSession};
use tpc_core::session::{Ended, Failure, Problem, RunFailed};
use tpc_core::wire::{DestKind, Entry, ErrorCode, Frame, NeedItem, Op, WireKind};
use tpc_core::ChunkPlan;

/// Steps one session may take; far more than any scenario here needs.
const STEPS_MAX: usize = 100_000;
/// What either machine may hold queued (frames, requests, problems) at once.
const QUEUED_MAX: usize = 8;

/// The scheduler's choices: fastrand's seeded generator, so a seed replays exactly.
struct Rng(fastrand::Rng);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(fastrand::Rng::with_seed(seed))
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0.u64(..n.max(1))
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Content {
    Old,
    New,
    /// A file renamed into place without all its runs: what must never happen.
    Partial,
}

/// The receiving side's disk: final names, what of them is durable, temporaries.
#[derive(Clone, Default)]
struct Disk {
    placed: HashMap<u32, Content>,
    durable: HashMap<u32, Content>,
    /// Chunks written into each file's temporary.
    temps: HashMap<u32, Vec<bool>>,
}

/// How often each fault happens in one scenario, per mille per chance.
#[derive(Clone, Copy, Default)]
struct Faults {
    run_fails: u64,
    plan_fails: u64,
    commit_fails: u64,
    /// Per step: the connection is lost.
    lose: u64,
    /// Per step: the receiver crashes (its disk keeps only what was durable).
    crash: u64,
    /// Per delivered frame: it is delivered twice, lost (the stream is reset), or
    /// followed by a forged one.
    duplicate: u64,
    drop: u64,
    forge: u64,
}

struct Scenario {
    push: bool,
    shards: usize,
    entries: Vec<Entry>,
}

fn scenario(rng: &mut Rng) -> (Scenario, Disk) {
    let push = rng.chance(600);
    let shards = 1 + rng.below(4) as usize;
    let n = rng.below(14) as usize;
    let mut entries = Vec::new();
    let mut disk = Disk::default();
    for i in 0..n {
        let kind = match rng.below(10) {
            0 => WireKind::Dir,
            1 => WireKind::Symlink,
            _ => WireKind::File,
        };
        let size = match (kind, rng.below(4)) {
            (WireKind::File, 0) => 0,
            (WireKind::File, 1) => 1 + rng.below(1 << 20),
            (WireKind::File, _) => rng.below(7 * CHUNK_SIZE_BYTES),
            _ => 0,
        };
        if kind == WireKind::File {
            match rng.below(3) {
                0 => {}
                1 => {
                    disk.placed.insert(i as u32, Content::Old);
                }
                _ => {
                    disk.placed.insert(i as u32, Content::New);
                }
            }
        }
        entries.push(Entry {
            kind,
            path: format!("d/e{i}").into_bytes(),
            size,
            mode: 0o644,
            mtime: (1, 0),
            target: if kind == WireKind::Symlink {
                b"t".to_vec()
            } else {
                Vec::new()
            },
            hashes: Vec::new(),
        });
    }
    disk.durable = disk.placed.clone();
    (
        Scenario {
            push,
            shards,
            entries,
        },
        disk,
    )
}

fn chunks(size: u64) -> u32 {
    ChunkPlan::new(size).expect("small").chunk_count()
}

/// The receiver's driver, modelled: plan, commit, finish against `Disk`.
struct Receiver<'a> {
    entries: &'a [Entry],
    disk: &'a mut Disk,
    faults: Faults,
    written: u64,
}

impl Receiver<'_> {
    fn plan(&mut self, rng: &mut Rng) -> (Vec<NeedItem>, Vec<(u32, Failure)>) {
        let (mut needs, mut failed) = (Vec::new(), Vec::new());
        self.disk.temps.clear();
        for (i, e) in self.entries.iter().enumerate() {
            let file = i as u32;
            if e.kind != WireKind::File || self.disk.placed.get(&file) == Some(&Content::New) {
                continue;
            }
            if rng.chance(self.faults.plan_fails) {
                failed.push((
                    file,
                    Failure::new(ErrorCode::NoSpace, "no space (injected)"),
                ));
                continue;
            }
            let c = chunks(e.size);
            self.disk.temps.insert(file, vec![false; c as usize]);
            needs.push(NeedItem {
                file,
                chunk_first: 0,
                chunk_count: c,
                have: Vec::new(),
            });
        }
        (needs, failed)
    }

    fn write_run(&mut self, run: &RunItem, rng: &mut Rng, fail: bool) {
        let Some(t) = self.disk.temps.get_mut(&run.file) else {
            return;
        };
        for c in run.first..run.first + run.count {
            // A failed run may have written some of its chunks.
            if !fail || rng.chance(500) {
                t[c as usize] = true;
            }
        }
    }

    fn commit(&mut self, files: &[u32], rng: &mut Rng) -> (Vec<u32>, Vec<(u32, Failure)>) {
        let (mut ok, mut failed) = (Vec::new(), Vec::new());
        for &f in files {
            let Some(t) = self.disk.temps.remove(&f) else {
                failed.push((f, Failure::new(ErrorCode::NotFound, "no temporary")));
                continue;
            };
            if rng.chance(self.faults.commit_fails) {
                failed.push((f, Failure::new(ErrorCode::Io, "commit failed (injected)")));
                continue;
            }
            let content = if t.iter().all(|&w| w) {
                Content::New
            } else {
                Content::Partial
            };
            // Synced, renamed, directory synced: durable once done.
            self.disk.placed.insert(f, content);
            self.disk.durable.insert(f, content);
            self.written += 1;
            ok.push(f);
        }
        (ok, failed)
    }
}

/// Why a session ended, as the simulation saw it.
#[derive(Debug)]
enum End {
    Ok,
    Failed(Ended),
    /// The connection was lost, or went quiet (a transport's idle timeout).
    Lost,
    Crashed,
}

struct Run<'a> {
    rng: &'a mut Rng,
    sc: &'a Scenario,
    faults: Faults,
    client: ClientSession,
    server: Option<Box<ServerSession>>,
    /// A server stream that has not seen its first frame yet.
    server_open: bool,
    c2s: VecDeque<Frame>,
    s2c: VecDeque<Frame>,
    runs: Vec<RunItem>,
    client_requests: VecDeque<client::Request>,
    server_requests: VecDeque<server::Request>,
    problems: Vec<Problem>,
    server_done: Option<Result<(), Failure>>,
    broken: bool,
}

/// A frame a broken or hostile peer might send where it does not belong. Only frames
/// the receiving machine can tell are wrong: a peer that lies plausibly (a `Committed`
/// for a file of the batch in flight) is outside what a protocol can detect.
fn forged(rng: &mut Rng) -> Frame {
    match rng.below(6) {
        0 => Frame::Commit {
            files: vec![1000 + rng.below(16) as u32],
        },
        1 => Frame::Committed {
            files: vec![1000 + rng.below(16) as u32],
        },
        2 => Frame::Hello {
            version: 2,
            op: Op::Pull {
                src: Vec::new(),
                select: Default::default(),
                rate: None,
            },
        },
        3 => Frame::Need(vec![NeedItem {
            file: rng.below(16) as u32,
            chunk_first: rng.below(3) as u32,
            chunk_count: rng.below(3) as u32,
            have: Vec::new(),
        }]),
        4 => Frame::RangeOk,
        _ => Frame::EntriesEnd {
            count: 1000 + rng.below(4),
        },
    }
}

impl Run<'_> {
    fn deliver(&mut self, to_server: bool) {
        let q = if to_server {
            &mut self.c2s
        } else {
            &mut self.s2c
        };
        let Some(frame) = q.pop_front() else { return };
        if self.rng.chance(self.faults.drop) {
            // A stream is reliable and ordered: a frame lost is a stream reset, which
            // ends the session as a lost connection does.
            self.broken = true;
            return;
        }
        let extra = if self.rng.chance(self.faults.duplicate) {
            Some(frame.clone())
        } else if self.rng.chance(self.faults.forge) {
            Some(forged(self.rng))
        } else {
            None
        };
        let q = if to_server {
            &mut self.c2s
        } else {
            &mut self.s2c
        };
        if let Some(x) = extra {
            q.push_front(x);
        }
        if to_server {
            self.hand_to_server(frame);
        } else {
            self.hand_to_client(frame);
        }
    }

    fn hand_to_server(&mut self, frame: Frame) {
        if self.server_open {
            self.server_open = false;
            let facts = ServerFacts {
                read_only: false,
                ports: vec![7440, 7441],
            };
            match open_stream(Some(frame), &facts, || 0x5e55) {
                Opened::Control(s) => self.server = Some(s),
                Opened::Refused(f) => {
                    self.s2c.push_back(Frame::Error {
                        code: f.code,
                        message: f.message.clone(),
                    });
                    self.server_done = Some(Err(f));
                }
                other => panic!("a control stream opened as {other:?}"),
            }
            return;
        }
        if let Some(s) = self.server.as_mut() {
            if s.wants_frame() {
                s.handle_frame(frame);
            } else {
                // Not read yet: it waits in the stream.
                self.c2s.push_front(frame);
            }
        }
    }

    fn hand_to_client(&mut self, frame: Frame) {
        if self.client.wants_frame() {
            self.client.handle_frame(frame);
        } else {
            self.s2c.push_front(frame);
        }
    }
}

/// Runs one session to its end. The receiving side's disk is `disk`.
fn session(rng: &mut Rng, sc: &Scenario, disk: &mut Disk, faults: Faults) -> Result<End, String> {
    let op = if sc.push {
        Op::Push {
            dest: b"dst/".to_vec(),
            durable: true,
        }
    } else {
        Op::Pull {
            src: b"src".to_vec(),
            select: Default::default(),
            rate: None,
        }
    };
    let mut run = Run {
        rng,
        sc,
        faults,
        client: ClientSession::new(op, sc.shards),
        server: None,
        server_open: true,
        c2s: VecDeque::new(),
        s2c: VecDeque::new(),
        runs: Vec::new(),
        client_requests: VecDeque::new(),
        server_requests: VecDeque::new(),
        problems: Vec::new(),
        server_done: None,
        broken: false,
    };
    let mut receiver = Receiver {
        entries: &sc.entries,
        disk,
        faults,
        written: 0,
    };
    let mut client_end: Option<Result<(), Ended>> = None;
    for _ in 0..STEPS_MAX {
        drain(&mut run, &mut client_end)?;
        check_disk(receiver.disk)?;
        if let Some(end) = client_end.take() {
            return finish(&run, receiver.disk, end);
        }
        if run.broken || run.rng.chance(faults.lose) {
            return Ok(End::Lost);
        }
        if run.rng.chance(faults.crash) {
            // Only what was made durable survives; temporaries are swept by the next run.
            receiver.disk.placed = receiver.disk.durable.clone();
            receiver.disk.temps.clear();
            return Ok(End::Crashed);
        }
        if !step(&mut run, &mut receiver)? {
            // Nothing can happen any more, though no fault of the transport struck: the
            // machines wait for each other.
            return Err("the session stalled: no event can happen".into());
        }
    }
    Err(format!("the session did not end within {STEPS_MAX} steps"))
}

/// Moves every machine's output to where it goes, checking the queue bounds first.
fn drain(run: &mut Run, client_end: &mut Option<Result<(), Ended>>) -> Result<(), String> {
    if run.client.queued() > QUEUED_MAX {
        return Err(format!("client queued {}", run.client.queued()));
    }
    if let Some(s) = run.server.as_ref().filter(|s| s.queued() > QUEUED_MAX) {
        return Err(format!("server queued {}", s.queued()));
    }
    while let Some(f) = run.client.poll_transmit() {
        run.c2s.push_back(f);
    }
    while let Some(r) = run.client.poll_request() {
        run.client_requests.push_back(r);
    }
    while let Some(p) = run.client.poll_problem() {
        run.problems.push(p);
    }
    if let Some(o) = run.client.poll_outcome() {
        *client_end = Some(o);
    }
    if let Some(s) = run.server.as_mut() {
        while let Some(f) = s.poll_transmit() {
            run.s2c.push_back(f);
        }
        while let Some(r) = s.poll_request() {
            run.server_requests.push_back(r);
        }
        if let Some(o) = s.poll_outcome() {
            run.server_done = Some(o);
            run.server = None;
        }
    }
    Ok(())
}

fn check_disk(disk: &Disk) -> Result<(), String> {
    match disk.placed.iter().find(|(_, c)| **c == Content::Partial) {
        Some((f, _)) => Err(format!("file {f} was put in place incomplete")),
        None => Ok(()),
    }
}

/// One event, chosen at random among those that can happen; false if none can.
fn step(run: &mut Run, rx: &mut Receiver) -> Result<bool, String> {
    let mut choices = Vec::new();
    if !run.c2s.is_empty()
        && (run.server_open || run.server.as_ref().is_some_and(|s| s.wants_frame()))
    {
        choices.push(0);
    }
    if !run.s2c.is_empty() && run.client.wants_frame() {
        choices.push(1);
    }
    if !run.runs.is_empty() {
        choices.push(2);
    }
    if !run.client_requests.is_empty() {
        choices.push(3);
    }
    if !run.server_requests.is_empty() {
        choices.push(4);
    }
    if choices.is_empty() {
        return Ok(false);
    }
    match choices[run.rng.below(choices.len() as u64) as usize] {
        0 => run.deliver(true),
        1 => {
            // Nothing is reported committed before it is durable: check what the client
            // took as committed against the disk.
            let before = run.client.tally().files_copied;
            let committed = match run.s2c.front() {
                Some(Frame::Committed { files }) => files.clone(),
                _ => Vec::new(),
            };
            run.deliver(false);
            if run.client.tally().files_copied > before {
                if let Some(f) = committed
                    .iter()
                    .find(|f| rx.disk.durable.get(f) != Some(&Content::New))
                {
                    return Err(format!("file {f} reported committed before it was durable"));
                }
            }
        }
        2 => end_run(run, rx),
        3 => client_request(run, rx)?,
        _ => server_request(run, rx),
    }
    Ok(true)
}

fn end_run(run: &mut Run, rx: &mut Receiver) {
    let i = run.rng.below(run.runs.len() as u64) as usize;
    let r = run.runs.swap_remove(i);
    let fail = run.rng.chance(run.faults.run_fails);
    rx.write_run(&r, run.rng, fail);
    let result = if fail {
        Err(RunFailed {
            failure: Failure::new(ErrorCode::HashMismatch, "run failed (injected)"),
            // Found by the receiver's check, as a hash mismatch is.
            at_destination: true,
        })
    } else {
        Ok(u64::from(r.count))
    };
    run.client.handle_run(r.file, result);
}

fn client_request(run: &mut Run, rx: &mut Receiver) -> Result<(), String> {
    let r = run.client_requests.pop_front().expect("chosen");
    match r {
        client::Request::Dial { ports, .. } => {
            if ports.is_empty() {
                return Err("welcomed with no ports".into());
            }
        }
        client::Request::BuildManifest(_) => run.client.handle_manifest(run.sc.entries.clone()),
        client::Request::Plan { entries, .. } => {
            if entries != run.sc.entries {
                return Err("the pulled manifest is not the server's".into());
            }
            let planned = rx.plan(run.rng);
            run.client.handle_planned(Ok(planned));
        }
        client::Request::Start { runs, .. } => {
            for r in runs.iter().flatten() {
                let e = &run.sc.entries[r.file as usize];
                if e.kind != WireKind::File || r.first + r.count > chunks(e.size) || r.count == 0 {
                    return Err(format!("a run outside its file: {r:?}"));
                }
            }
            run.runs.extend(runs.into_iter().flatten());
        }
        client::Request::Abandon(f) => {
            rx.disk.temps.remove(&f);
        }
        client::Request::Commit(files) => {
            let (ok, failed) = rx.commit(&files, run.rng);
            run.client.handle_committed(ok, failed);
        }
        client::Request::Finish => run.client.handle_finished(Vec::new(), rx.written),
    }
    Ok(())
}

fn server_request(run: &mut Run, rx: &mut Receiver) {
    let r = run.server_requests.pop_front().expect("chosen");
    let Some(s) = run.server.as_mut() else { return };
    match r {
        server::Request::LookUp(_) => s.handle_looked_up(Ok(DestKind::Dir)),
        server::Request::Walk { .. } => s.handle_listed(Ok(server::Listing {
            kind: DestKind::Dir,
            entries: run.sc.entries.clone(),
            unlisted: Vec::new(),
        })),
        server::Request::Plan { entries, .. } => {
            let planned = if entries == run.sc.entries {
                Ok(rx.plan(run.rng))
            } else {
                Err(Failure::protocol("a manifest the client did not send"))
            };
            s.handle_planned(planned);
        }
        server::Request::Commit(files) => {
            let (ok, failed) = rx.commit(&files, run.rng);
            s.handle_committed(ok, failed);
        }
        server::Request::Finish { .. } => s.handle_finished(Ok((
            Vec::new(),
            server::Finished {
                files: rx.written,
                ..Default::default()
            },
        ))),
    }
}

/// The client's outcome, checked against the disk.
fn finish(run: &Run, disk: &Disk, end: Result<(), Ended>) -> Result<End, String> {
    let Err(ended) = end else {
        if run.sc.push && !matches!(run.server_done, Some(Ok(()))) {
            return Err("the client succeeded before the server did".into());
        }
        let failed: HashSet<u32> = run.problems.iter().filter_map(|p| p.file).collect();
        // Every regular file is counted once: copied, unchanged or failed.
        let t = run.client.tally();
        if t.files_copied + t.files_unchanged + t.failed != t.files {
            return Err(format!(
                "the tally does not add up: {t:?}, problems {:?}",
                run.problems
            ));
        }
        if std::env::var("TPC_SIM_SEED").is_ok() {
            eprintln!(
                "ok; problems {:?}; tally {:?}",
                run.problems,
                run.client.tally()
            );
        }
        for (i, e) in run.sc.entries.iter().enumerate() {
            let f = i as u32;
            let placed = disk.placed.get(&f) == Some(&Content::New);
            if e.kind == WireKind::File && !placed && !failed.contains(&f) {
                return Err(format!("file {f} neither placed nor reported failed"));
            }
        }
        return Ok(End::Ok);
    };
    Ok(End::Failed(ended))
}

fn faults_for(rng: &mut Rng) -> Faults {
    let mut pick = |max: u64| {
        if rng.chance(500) {
            rng.below(max + 1)
        } else {
            0
        }
    };
    Faults {
        run_fails: pick(150),
        plan_fails: pick(150),
        commit_fails: pick(150),
        lose: pick(8),
        crash: pick(8),
        duplicate: pick(30),
        drop: pick(30),
        forge: pick(30),
    }
}

/// One scenario: a session with faults, then, if it did not complete, a fresh session
/// without faults, which must.
fn scenario_run(seed: u64, seen: &mut HashMap<String, u64>) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let (sc, mut disk) = scenario(&mut rng);
    let faults = faults_for(&mut rng);
    let trace = std::env::var("TPC_SIM_SEED").is_ok();
    if trace {
        let kinds: Vec<_> = sc.entries.iter().map(|e| (e.kind, e.size)).collect();
        eprintln!("push {} shards {} entries {kinds:?}", sc.push, sc.shards);
        eprintln!("disk {:?}", disk.placed);
    }
    let first = session(&mut rng, &sc, &mut disk, faults)?;
    let kind = match &first {
        End::Failed(e) => format!("failed {:?}", e.code),
        other => format!("{other:?}"),
    };
    *seen.entry(kind).or_default() += 1;
    if trace {
        eprintln!("first session: {first:?}; disk {:?}", disk.placed);
    }
    if matches!(first, End::Ok) && faults.run_fails + faults.plan_fails + faults.commit_fails == 0 {
        return Ok(());
    }
    match session(&mut rng, &sc, &mut disk, Faults::default())? {
        End::Ok => {}
        other => return Err(format!("the session after the faults ended {other:?}")),
    }
    for (i, e) in sc.entries.iter().enumerate() {
        if e.kind == WireKind::File && disk.placed.get(&(i as u32)) != Some(&Content::New) {
            return Err(format!("file {i} is not in place after a clean session"));
        }
    }
    Ok(())
}

#[test]
fn sessions_survive_seeded_faults() {
    let seeds: Vec<u64> = match std::env::var("TPC_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("TPC_SIM_SEED is a number")],
        Err(_) => {
            let n = std::env::var("TPC_SIM_SEEDS").map_or(20_000, |s| s.parse().expect("a number"));
            (0..n).collect()
        }
    };
    let one = seeds.len() == 1;
    let mut seen = HashMap::new();
    for seed in seeds {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            scenario_run(seed, &mut seen)
        }));
        let failure = match outcome {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(p) => p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default(),
        };
        panic!("seed {seed} failed: {failure}\nreplay: TPC_SIM_SEED={seed} cargo test -p tpc-core --test session_sim");
    }
    println!("first sessions ended: {seen:?}");
    // The faults must have been met, or the seeds tested nothing but the happy path.
    for kind in ["Ok", "Lost", "Crashed", "failed Protocol"] {
        assert!(
            one || seen.contains_key(kind),
            "no first session ended {kind}: {seen:?}"
        );
    }
}
