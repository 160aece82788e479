//! The `tpc-xfer` command line: parses flags, starts the shards, maps every outcome to one
//! documented exit code.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use tpc_core::codec::Compression;
use tpc_core::filter::Filter;
use tpc_core::SkipPolicy;
use tpc_engine::rt::IoChoice;
use tpc_engine::Durability;
use tpc_xfer::exit::{fail, Exit, EXIT_CODES_HELP};
use tpc_xfer::progress::{self, Show};
use tpc_xfer::remote::congestion::Congestion;
use tpc_xfer::remote::TransportChoice;
use tpc_xfer::summary::{Done, Output};
use tpc_xfer::{auth, check, copy, remote, walk};

/// Thread-per-core file transfer: every chunk hashed with BLAKE3, every file written
/// atomically and durably.
#[derive(Parser)]
#[command(name = "tpc-xfer", version, after_help = EXIT_CODES_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// One value, parsed once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Copy files and directory trees (local paths).
    ///
    /// Follows rsync's trailing-slash rule: `copy src/ dst` copies the contents of src
    /// into dst, `copy src dst` creates dst/src. Symlinks are recreated, never followed;
    /// modes and nanosecond mtimes are preserved; hard links within a source are kept as
    /// hard links; FIFOs, sockets and devices are skipped with a warning. Each file is
    /// written under a temporary name and renamed into place once complete and durable;
    /// temporary files left by an interrupted run are removed by the next one.
    #[command(after_help = EXIT_CODES_HELP)]
    Copy {
        /// Files or directories to copy (a trailing slash copies a directory's contents).
        #[arg(required = true, value_name = "SOURCE")]
        sources: Vec<OsString>,
        /// Where to copy to.
        #[arg(value_name = "DEST")]
        dest: PathBuf,
        /// Compare BLAKE3 digests, not size and mtime, to decide whether a file changed.
        #[arg(long)]
        checksum: bool,
        /// After copying, re-read every written file and compare its digest with the source's.
        #[arg(long)]
        verify: bool,
        /// When files are made durable before they are renamed into place. For a push,
        /// the server applies it and acknowledges a file only once it is durable.
        #[arg(long, value_enum, default_value_t = Fsync::Batch)]
        fsync: Fsync,
        /// Trust a server whose key is not yet in known-servers, and record it there.
        #[arg(long)]
        accept_new: bool,
        /// Congestion control of the data this end sends over QUIC (`tolerant` keeps
        /// long paths with random loss full; `cubic` and `bbr` are quinn-proto's own).
        #[arg(long, value_enum, default_value_t = Congestion::Tolerant)]
        congestion: Congestion,
        /// Which chunks of a remote transfer travel zstd-compressed: `auto` those whose
        /// sample compresses well (text, logs, sparse images; not random or already
        /// compressed data) when the path is slower than zstd on this machine (a WAN;
        /// not loopback or a fast LAN), `never`, or `always` (every chunk tried; still
        /// sent raw when that is not smaller). Every chunk is verified by the BLAKE3 hash of its
        /// plain bytes either way. For a pull, `never` asks the server not to compress.
        #[arg(long, value_name = "WHEN", default_value = "auto", value_parser = compression_parser())]
        compress: Compression,
        /// What a remote transfer travels over: `quic` (UDP), `tcp` (TCP with TLS 1.3, the
        /// same keys), or `auto`: QUIC, and TCP when no QUIC handshake completes within
        /// 1.5 s (UDP blocked by a firewall), with a notice on stderr.
        #[arg(long, value_enum, env = "TPC_XFER_TRANSPORT", default_value_t = TransportChoice::Auto)]
        transport: TransportChoice,
        /// Give up a remote transfer that moves no data and no control message for this
        /// many seconds (rsync's `--timeout`): a server that answers keep-alives but
        /// nothing else. 0: wait for ever. Exit 8.
        #[arg(long, value_name = "SECONDS", default_value_t = remote::STALL_TIMEOUT_DEFAULT.as_secs())]
        timeout: u64,
        /// Remove what the destination holds beneath a directory source and the source
        /// does not (rsync's --delete, after every transfer has succeeded; never when
        /// anything failed). Names the filter rules exclude are neither copied nor
        /// deleted. With --max-size or --min-size, local copies only for now.
        #[arg(long)]
        delete: bool,
        /// With --delete, remove at most N entries; past that, leave the rest and exit 11.
        /// 0: remove nothing, and exit 11 if anything would have been removed.
        #[arg(long, value_name = "N", requires = "delete")]
        max_delete: Option<u64>,
        /// Decide everything a run would do (copy, update metadata, link, delete) and
        /// list it with -i or -v, but write nothing. Local copies for now.
        #[arg(long, short = 'n')]
        dry_run: bool,
        /// List each change as it is decided, with rsync's change code (`>f+++++++++
        /// name` for a new file, `>f.st......` a changed one, `cd` a directory made, `cL`
        /// a symlink, `hf` a hard link, `.` attributes only, `*deleting`). Local copies for now.
        #[arg(long, short = 'i', conflicts_with_all = ["json", "json_log"])]
        itemize_changes: bool,
        /// List the name of each entry a run changes (as rsync -v). Local copies for now.
        #[arg(long, short = 'v', conflicts_with_all = ["json", "json_log"])]
        verbose: bool,
        /// Move the data no faster than RATE, in all (every shard and connection), paced
        /// as it is sent: rsync's units, KiB/s for a bare number (`5000`), bytes with a
        /// suffix (`100M` is 100 MiB/s, `10MB` 10,000,000 B/s), bits with `bit`
        /// (`200Mbit`); `0` or `off`: no limit. At least 64K. A pull asks it of the server.
        #[arg(long, value_name = "RATE", value_parser = rate_parser)]
        bwlimit: Option<Rate>,
        #[command(flatten)]
        filters: FilterArgs,
        #[command(flatten)]
        show: ProgressArgs,
        #[command(flatten)]
        state: StateArg,
        #[command(flatten)]
        common: Common,
    },
    /// Serve a directory to authenticated clients over QUIC: they push into it and pull
    /// from it with `tpc-xfer copy ... tpc://HOST[:PORT]/PATH`.
    ///
    /// Shard i listens on UDP port PORT + i. Only clients whose key fingerprint is listed in
    /// STATE/authorized-clients (one `tpc1:...` per line; see `tpc-xfer id`) are admitted.
    /// Every path is confined to the root: absolute paths, `..` and paths through symlinks
    /// are refused. Runs until stopped; a failing client never stops it.
    #[command(after_help = EXIT_CODES_HELP)]
    Serve {
        /// The directory to serve.
        #[arg(long, value_name = "DIR")]
        root: PathBuf,
        /// Address and first UDP port to listen on (port 0: any free ports).
        #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:7440")]
        listen: std::net::SocketAddr,
        /// Refuse pushes; serve pulls only.
        #[arg(long)]
        read_only: bool,
        /// What clients may connect over: `auto` both QUIC (UDP) and TCP, each shard on
        /// the same port number for both; `quic` or `tcp` only that one.
        #[arg(long, value_enum, default_value_t = TransportChoice::Auto)]
        transport: TransportChoice,
        /// Congestion control of the data this end sends over QUIC (`tolerant` keeps
        /// long paths with random loss full; `cubic` and `bbr` are quinn-proto's own).
        #[arg(long, value_enum, default_value_t = Congestion::Tolerant)]
        congestion: Congestion,
        /// End a client's session that moves no data and sends no control message for
        /// this many seconds (keep-alives do not count), and release the space its plan
        /// reserved. 0: never.
        #[arg(long, value_name = "SECONDS", default_value_t = remote::STALL_TIMEOUT_DEFAULT.as_secs())]
        timeout: u64,
        #[command(flatten)]
        state: StateArg,
        #[command(flatten)]
        shards: Shards,
    },
    /// Print this host's key fingerprint (creating the key pair on first use).
    ///
    /// Give it to a server's operator for their authorized-clients file, or compare it with
    /// what a client was told on first connection.
    Id {
        #[command(flatten)]
        state: StateArg,
    },
    /// Compare two trees by content and metadata; exit 0 only if identical.
    ///
    /// Prints what is missing from B, extra in B, and different (content, size, type,
    /// mode, mtime, symlink target). Regular files of equal size are hashed on the shards.
    #[command(after_help = EXIT_CODES_HELP)]
    Check {
        /// The reference tree.
        a: PathBuf,
        /// The tree compared with it.
        b: PathBuf,
        #[command(flatten)]
        common: Common,
    },
}

/// rsync's filter flags. `--include` and `--exclude` rules (and the files of rules) apply
/// in the order given, the first that matches an entry deciding; an entry no rule matches
/// is taken.
#[derive(Args)]
#[command(next_help_heading = "Filters (rsync's meaning)")]
struct FilterArgs {
    /// Leave out what matches PATTERN, and everything beneath a directory it matches.
    /// `*` and `?` stay within a name, `**` crosses `/` (a whole name: `a/**/b`); a
    /// leading `/` anchors at the transfer's root, a trailing `/` matches directories
    /// only, `dir/***` a directory and its contents; without a `/`, the last name.
    #[arg(long, value_name = "PATTERN")]
    exclude: Vec<String>,
    /// Take what matches PATTERN even where a later --exclude would leave it out.
    #[arg(long, value_name = "PATTERN")]
    include: Vec<String>,
    /// --exclude each pattern in FILE (one a line; `#` and `;` start comments; `-`:
    /// standard input).
    #[arg(long, value_name = "FILE")]
    exclude_from: Vec<PathBuf>,
    /// --include each pattern in FILE.
    #[arg(long, value_name = "FILE")]
    include_from: Vec<PathBuf>,
    /// Copy only the paths FILE lists (one a line, from the one SOURCE directory, with or
    /// without its trailing slash), and the directories above them; a listed directory
    /// is copied without its contents (rsync's --files-from with -a). The rules above
    /// still apply. `-`: standard input. Local copies and pushes; not with --delete.
    #[arg(long, value_name = "FILE")]
    files_from: Option<PathBuf>,
    /// Leave out regular files larger than SIZE (e.g. 100M, 1.5G, 10KB; K, M, G count
    /// in 1024s, KB, MB, GB in 1000s).
    #[arg(long, value_name = "SIZE", value_parser = size_parser)]
    max_size: Option<u64>,
    /// Leave out regular files smaller than SIZE.
    #[arg(long, value_name = "SIZE", value_parser = size_parser)]
    min_size: Option<u64>,
}

/// A `--bwlimit` value: bytes a second, `None` for no limit.
#[derive(Clone, Copy, Debug)]
struct Rate(Option<u64>);

fn rate_parser(s: &str) -> Result<Rate, String> {
    tpc_core::pace::parse_rate(s)
        .map(Rate)
        .map_err(|e| e.to_string())
}

fn size_parser(s: &str) -> Result<u64, String> {
    tpc_core::filter::parse_size(s).map_err(|e| e.to_string())
}

impl FilterArgs {
    /// The rules in the order they were given on the command line (`matches` are the
    /// copy command's: clap keeps each flag's values apart, with their positions).
    fn filter(&self, matches: &clap::ArgMatches) -> Result<Filter, String> {
        use tpc_core::filter::Action;
        let mut rules: Vec<(usize, Action, Result<String, PathBuf>)> = Vec::new();
        let mut add = |id: &str, action: Action, from_file: bool| {
            let Some(at) = matches.indices_of(id) else {
                return;
            };
            let values: Vec<Result<String, PathBuf>> = if from_file {
                let files = matches.get_many::<PathBuf>(id).into_iter().flatten();
                files.cloned().map(Err).collect()
            } else {
                let pats = matches.get_many::<String>(id).into_iter().flatten();
                pats.cloned().map(Ok).collect()
            };
            rules.extend(at.zip(values).map(|(i, v)| (i, action, v)));
        };
        add("exclude", Action::Exclude, false);
        add("include", Action::Include, false);
        add("exclude_from", Action::Exclude, true);
        add("include_from", Action::Include, true);
        rules.sort_by_key(|r| r.0);
        let mut filter = Filter::default();
        filter.min_size = self.min_size;
        filter.max_size = self.max_size;
        if let Some(file) = &self.files_from {
            let limit = tpc_core::filter::FILES_FROM_BYTES_MAX + 1;
            let mut text = Vec::new();
            let read = if file.as_os_str() == "-" {
                std::io::Read::read_to_end(
                    &mut std::io::Read::take(std::io::stdin(), limit),
                    &mut text,
                )
            } else {
                std::fs::File::open(file).and_then(|f| {
                    // Larger than the limit: refused before it is read.
                    let len = f.metadata()?.len();
                    if len >= limit {
                        return Err(std::io::Error::other(format!(
                            "larger than {} bytes",
                            limit - 1
                        )));
                    }
                    text.reserve_exact(len as usize);
                    std::io::Read::read_to_end(&mut std::io::Read::take(f, limit), &mut text)
                })
            };
            read.map_err(|e| format!("cannot read {}: {e}", walk::quote(file)))?;
            filter
                .add_files_from(&text)
                .map_err(|e| format!("{}: {e}", walk::quote(file)))?;
        }
        for (_, action, rule) in rules {
            match rule {
                Ok(pattern) => filter.add(action, &pattern).map_err(|e| e.to_string())?,
                Err(file) => {
                    let text = if file.as_os_str() == "-" {
                        std::io::read_to_string(std::io::stdin())
                    } else {
                        std::fs::read_to_string(&file)
                    }
                    .map_err(|e| format!("cannot read {}: {e}", walk::quote(&file)))?;
                    filter
                        .add_lines(action, &text)
                        .map_err(|e| format!("{}: {e}", walk::quote(&file)))?;
                }
            }
        }
        Ok(filter)
    }
}

/// What a copy shows while it runs.
#[derive(Args)]
#[command(next_help_heading = "Progress and logs")]
struct ProgressArgs {
    /// Draw the progress line (bytes, percentage, rate over the last seconds, ETA as
    /// h:mm:ss, files) even where stderr is not a terminal. On a terminal it is drawn
    /// anyway unless --quiet, --json or --json-log.
    #[arg(long, short = 'P')]
    progress: bool,
    /// Every SECONDS, a plain line with the time and the same figures on stderr (for
    /// logs); with --json-log, how often it writes a progress object (default 10).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    stats_every: Option<u64>,
    /// Write the run as JSON lines on stdout (rclone's --use-json-log): a progress object
    /// every --stats-every seconds, one per finished file, and last the summary with the
    /// exit code and the failures. Errors are still printed on stderr.
    #[arg(long, conflicts_with = "json")]
    json_log: bool,
}

impl ProgressArgs {
    /// What to show, given the default `bar` (a terminal, and neither --quiet nor --json).
    fn show(&self, bar: Option<bool>) -> Show {
        Show {
            bar: if self.progress {
                Some(true)
            } else if self.json_log {
                None
            } else {
                bar
            },
            stats_every: self.stats_every.map(Duration::from_secs),
            json_log: self.json_log,
        }
    }
}

#[derive(Args)]
struct StateArg {
    /// Directory holding this host's key pair, authorized-clients and known-servers.
    /// Default: ~/.tpc-xfer
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
}

impl StateArg {
    fn dir(&self) -> Result<PathBuf, Exit> {
        match &self.state {
            Some(d) => Ok(d.clone()),
            None => auth::default_state_dir()
                .map_err(|e| fail(Exit::Usage, format!("{e}; give --state DIR"))),
        }
    }
}

#[derive(Args)]
struct Common {
    #[command(flatten)]
    shards: Shards,
    /// Print nothing but errors.
    #[arg(long, short)]
    quiet: bool,
    /// Print a machine-readable summary on stdout.
    #[arg(long)]
    json: bool,
}

/// How many shards run, and on which driver: what `serve` takes of `Common` (its log
/// is its output, and it prints no summary).
#[derive(Args)]
struct Shards {
    /// Number of shards (pinned executors, one per core). Default: every usable core.
    #[arg(long, value_name = "N")]
    cores: Option<usize>,
    /// How shards do I/O: `uring` (io_uring, Linux), `portable` (epoll / kqueue / IOCP
    /// with positional file I/O), or `auto`: io_uring where it works, else portable with
    /// a one-line notice.
    #[arg(long, value_enum, value_name = "DRIVER", env = "TPC_XFER_IO", default_value_t = Io::Auto)]
    io: Io,
}

#[derive(Clone, Copy, ValueEnum)]
enum Io {
    Auto,
    Uring,
    Portable,
}

#[derive(Clone, Copy, ValueEnum)]
enum Fsync {
    /// Sync written files in batches (one syncfs), then rename them, then sync their
    /// directories: a file appears under its name only once it would survive a power cut.
    Batch,
    /// Rename files as soon as they are written; faster, not crash-safe.
    Never,
}

fn main() -> ExitCode {
    tpc_xfer::alloc::keep_freed_memory();
    // A write past the file size limit (RLIMIT_FSIZE) then fails with EFBIG, which the
    // file's failure names (`os::short_write`), instead of SIGXFSZ ending the process.
    #[cfg(unix)]
    // SAFETY: sets a signal's disposition to ignore, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let exit = match cli.command {
        Command::Copy {
            sources,
            dest,
            checksum,
            verify,
            fsync,
            accept_new,
            congestion,
            compress,
            transport,
            timeout,
            delete,
            max_delete,
            dry_run,
            itemize_changes,
            verbose,
            bwlimit,
            filters,
            show,
            state,
            common,
        } => {
            let output = if common.json {
                Output::Json
            } else if show.json_log {
                Output::JsonLog
            } else {
                Output::Line {
                    quiet: common.quiet,
                }
            };
            // A copy refused before it starts still ends with its summary for a machine.
            let direction = direction_of(&sources, &dest);
            let refused = |exit: Exit, why: String| {
                tpc_xfer::exit::Problems::default().report(exit, why);
                ExitCode::from(Done::from(exit).print(direction, output) as u8)
            };
            let mut opts = match options(&common, checksum, verify, fsync) {
                Ok(opts) => opts,
                Err(e) => return ExitCode::from(Done::from(e).print(direction, output) as u8),
            };
            {
                opts.delete = delete.then_some(max_delete);
                opts.show = show.show(opts.show.bar);
                opts.dry_run = dry_run;
                opts.bwlimit = bwlimit.and_then(|r| r.0);
                opts.list = match (itemize_changes, verbose) {
                    (true, _) => copy::List::Changes,
                    (false, true) => copy::List::Names,
                    _ => copy::List::Off,
                };
                let copy_matches = matches.subcommand_matches("copy").expect("copy");
                match filters.filter(copy_matches) {
                    Ok(filter) => opts.filter = std::sync::Arc::new(filter),
                    Err(e) => return refused(Exit::Usage, e),
                }
                let mut sources = sources;
                if opts.filter.has_list() {
                    // As rsync: the list's paths are from the one source directory, which
                    // is the transfer's root with or without its trailing slash.
                    let remote_src = sources
                        .iter()
                        .any(|s| remote::RemoteSpec::parse(&walk::bytes(s)).is_some());
                    let why = match (sources.len(), delete, remote_src) {
                        (n, _, _) if n != 1 => Some("--files-from takes one SOURCE directory"),
                        (_, true, _) => Some("--files-from with --delete is not supported"),
                        (_, _, true) => Some("--files-from is for local copies and pushes for now"),
                        _ => None,
                    };
                    if let Some(why) = why {
                        return refused(Exit::Usage, why.to_string());
                    }
                    let src = &mut sources[0];
                    if !walk::bytes(src).ends_with(b"/") {
                        src.push("/");
                    }
                }
                let remote = RemoteArgs {
                    accept_new,
                    congestion,
                    compress,
                    transport,
                    timeout: seconds(timeout),
                };
                let done = copy_any(&sources, &dest, &opts, &remote, &state);
                done.print(direction, output)
            }
        }
        Command::Serve {
            root,
            listen,
            read_only,
            transport,
            congestion,
            timeout,
            state,
            shards,
        } => match (serve_options(&shards), state.dir()) {
            (Ok(opts), Ok(state_dir)) => remote::server::run(remote::server::ServeOptions {
                root,
                listen,
                shard_count: opts.shard_count,
                read_only,
                state_dir,
                congestion,
                driver: opts.driver,
                transport,
                timeout: seconds(timeout),
            }),
            (Err(e), _) | (_, Err(e)) => e,
        },
        Command::Id { state } => match state.dir() {
            Ok(dir) => match auth::Identity::load_or_create(&dir) {
                Ok(id) => {
                    println!("{}", id.fingerprint());
                    Exit::Ok
                }
                Err(e) => {
                    eprintln!("tpc-xfer: {e}");
                    Exit::Auth
                }
            },
            Err(e) => e,
        },
        Command::Check { a, b, common } => match options(&common, false, false, Fsync::Never) {
            Ok(opts) => check::run(&a, &b, &opts),
            Err(e) => e,
        },
    };
    ExitCode::from(exit as u8)
}

/// The options of `copy` that only a remote transfer uses.
struct RemoteArgs {
    accept_new: bool,
    congestion: Congestion,
    compress: Compression,
    transport: TransportChoice,
    timeout: Option<Duration>,
}

/// `--timeout SECONDS`, where 0 means none.
fn seconds(s: u64) -> Option<Duration> {
    (s > 0).then(|| Duration::from_secs(s))
}

/// `--compress` values, listed in `--help`.
fn compression_parser() -> impl clap::builder::TypedValueParser<Value = Compression> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["auto", "never", "always"]).map(|s| {
        match s.as_str() {
            "never" => Compression::Never,
            "always" => Compression::Always,
            _ => Compression::Auto,
        }
    })
}

/// A copy where one side may be `tpc://HOST[:PORT]/PATH`: a push if the destination is
/// remote, a pull if the (single) source is.
fn copy_any(
    sources: &[OsString],
    dest: &std::path::Path,
    opts: &copy::CopyOptions,
    remote_args: &RemoteArgs,
    state: &StateArg,
) -> Done {
    let remote_dest = remote::RemoteSpec::parse(&walk::bytes(dest.as_os_str()));
    let remote_srcs: Vec<_> = sources
        .iter()
        .filter_map(|s| remote::RemoteSpec::parse(&walk::bytes(s)))
        .collect();
    if remote_dest.is_none() && remote_srcs.is_empty() {
        return copy::run(sources, dest, opts);
    }
    copy_remote(
        sources,
        dest,
        (remote_dest, remote_srcs),
        opts,
        remote_args,
        state,
    )
}

/// What a copy with these operands is, for its summary: "push" to a remote DEST,
/// "pull" from a remote SOURCE, else "local".
fn direction_of(sources: &[OsString], dest: &std::path::Path) -> &'static str {
    let remote = |s: &std::ffi::OsStr| remote::RemoteSpec::parse(&walk::bytes(s)).is_some();
    if remote(dest.as_os_str()) {
        "push"
    } else if sources.iter().any(|s| remote(s)) {
        "pull"
    } else {
        "local"
    }
}

/// A push or a pull (`copy_any`).
#[allow(clippy::type_complexity)]
fn copy_remote(
    sources: &[OsString],
    dest: &std::path::Path,
    (remote_dest, remote_srcs): (
        Option<Result<remote::RemoteSpec, String>>,
        Vec<Result<remote::RemoteSpec, String>>,
    ),
    opts: &copy::CopyOptions,
    remote_args: &RemoteArgs,
    state: &StateArg,
) -> Done {
    let sizes = opts.filter.min_size.is_some() || opts.filter.max_size.is_some();
    if opts.delete.is_some() && sizes {
        // The server would see a file left out by size as extraneous, and delete its copy.
        return fail(
            Exit::Usage,
            "--delete with --max-size or --min-size is for local copies for now",
        )
        .into();
    }
    if opts.dry_run || opts.list != copy::List::Off {
        return fail(
            Exit::Usage,
            "--dry-run, --itemize-changes and --verbose are for local copies for now",
        )
        .into();
    }
    if opts.policy == SkipPolicy::Checksum || opts.verify {
        return fail(Exit::Usage, "--checksum and --verify are for local copies for now; remote transfers verify every chunk's BLAKE3 hash at the receiver").into();
    }
    let state_dir = match state.dir() {
        Ok(d) => d,
        Err(e) => return e.into(),
    };
    let ropts = remote::client::RemoteOptions {
        shard_count: opts.shard_count,
        durability: opts.durability,
        quiet: opts.quiet,
        show: opts.show,
        state_dir,
        accept_new: remote_args.accept_new,
        congestion: remote_args.congestion,
        driver: opts.driver,
        compression: remote_args.compress,
        transport: remote_args.transport,
        timeout: remote_args.timeout,
        delete: opts.delete,
        filter: opts.filter.clone(),
        bwlimit: opts.bwlimit,
    };
    match (remote_dest, remote_srcs.len(), sources.len()) {
        (Some(Ok(spec)), 0, _) => remote::client::push(sources, spec, &ropts),
        (None, 1, 1) => match remote_srcs.into_iter().next().expect("one") {
            Ok(spec) => remote::client::pull(spec, dest, &ropts),
            Err(e) => fail(Exit::Usage, e).into(),
        },
        (Some(Err(e)), _, _) => fail(Exit::Usage, e).into(),
        _ => fail(Exit::Usage, "a copy is local, a push (remote DEST) or a pull (one remote SOURCE); remote-to-remote and mixed sources are not supported").into(),
    }
}

/// `serve`'s shards: `--cores` above the cores this process may use is capped, with a
/// note, so that one unit file or command line serves machines of any size.
fn serve_options(shards: &Shards) -> Result<copy::CopyOptions, Exit> {
    let usable = tpc_engine::usable_cpus().len().max(1);
    let capped = Shards {
        cores: shards.cores.map(|n| {
            if n > usable {
                tpc_xfer::log::line(format_args!(
                    "tpc-xfer: --cores {n} is more than the {usable} cores this process may use; serving with {usable}"
                ));
            }
            n.min(usable)
        }),
        io: shards.io,
    };
    let common = Common {
        shards: capped,
        quiet: false,
        json: false,
    };
    options(&common, false, false, Fsync::Batch)
}

fn options(
    common: &Common,
    checksum: bool,
    verify: bool,
    fsync: Fsync,
) -> Result<copy::CopyOptions, Exit> {
    let usable = tpc_engine::usable_cpus().len().max(1);
    let shard_count = common.shards.cores.unwrap_or(usable);
    if shard_count == 0 || shard_count > usable {
        return Err(fail(
            Exit::Usage,
            format!("--cores must be between 1 and {usable} (the cores this process may use)"),
        ));
    }
    let choice = match common.shards.io {
        Io::Auto => IoChoice::Auto,
        Io::Uring => IoChoice::Uring,
        Io::Portable => IoChoice::Portable,
    };
    let driver = match tpc_engine::rt::select(choice) {
        Ok((driver, notice)) => {
            if let (Some(notice), false) = (notice, common.quiet) {
                eprintln!("tpc-xfer: {notice}");
            }
            driver
        }
        Err(e) => return Err(fail(Exit::Engine, e)),
    };
    Ok(copy::CopyOptions {
        driver,
        shard_count,
        policy: if checksum {
            SkipPolicy::Checksum
        } else {
            SkipPolicy::SizeAndMtime
        },
        verify,
        durability: match fsync {
            Fsync::Batch => Durability::Batch,
            Fsync::Never => Durability::Never,
        },
        show: Show {
            bar: (!common.quiet && !common.json && progress::stderr_is_terminal()).then_some(false),
            ..Show::nothing()
        },
        quiet: common.quiet,
        json: common.json,
        filter: Default::default(),
        delete: None,
        dry_run: false,
        list: copy::List::Off,
        bwlimit: None,
    })
}
