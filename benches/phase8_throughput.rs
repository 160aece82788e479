//! End-to-end transfer throughput of the engine's data paths, on each driver:
//! - `local_copy`: `tpc_engine::run_job` copying one 256 MiB file (read, BLAKE3 per
//!   chunk, write, commit; `--fsync never`), shards started and stopped each time;
//! - `quic_push`: the remote data path over loopback: the client reads a 256 MiB file
//!   through the driver, hashes each chunk, samples it for compression (`--compress
//!   auto`, the default; random data stays raw) and sends it (`send_run`) over 4 streams
//!   of one connection; the server verifies every chunk against its hash and writes it
//!   (`receive_run`). This is the work of a push minus the control stream and commit.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{drivers, push_runs, random_file, serve_run, QuicPair, Scratch};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tpc_core::codec::Compression;
use tpc_core::RelPath;
use tpc_engine::confine;
use tpc_engine::{Beneath, Destination, Durability, FileOutcome, JobFile, JobSpec, Progress};

const FILE_BYTES: u64 = 256 << 20;
/// Chunks per stream: 4 streams of 16 chunks (64 MiB) carry the file.
const CHUNKS_PER_STREAM: u32 = 16;

fn local_copy(c: &mut Criterion, src: &Path, out: &Scratch) {
    let mut group = c.benchmark_group("phase8_throughput/local_copy");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Bytes(FILE_BYTES));
    let shards = tpc_engine::usable_cpus().len().min(2);
    for driver in drivers() {
        group.bench_function(BenchmarkId::from_parameter(driver.name()), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let dst = out.path("copy");
                    let rel = |s: &str| RelPath::parse(s.as_bytes()).expect("a valid name");
                    let src_dir = src.parent().expect("a file in a directory");
                    let src_name = src.file_name().expect("a file name").to_str().unwrap();
                    let roots = [out.path(""), src_dir.to_path_buf()]
                        .map(|d| Arc::new(confine::Root::open_ambient(&d).expect("a directory")));
                    let spec = JobSpec {
                        pace: None,
                        roots: roots.to_vec(),
                        files: vec![JobFile {
                            rel: b"copy".to_vec(),
                            src: Beneath {
                                root: 1,
                                rel: rel(src_name),
                            },
                            listed: None,
                            dst: Some(Destination {
                                root: 0,
                                tmp: rel(".copy.tmp"),
                                path: rel("copy"),
                                mode: 0o644,
                                atime: (0, 0),
                                mtime: (0, 0),
                            }),
                            size_bytes: FILE_BYTES,
                        }],
                        shard_count: shards,
                        durability: Durability::Never,
                        driver,
                    };
                    let start = Instant::now();
                    let report =
                        tpc_engine::run_job(spec, Progress::new(shards)).expect("job runs");
                    total += start.elapsed();
                    assert!(matches!(report.outcomes[0], FileOutcome::Done(_)));
                    std::fs::remove_file(&dst).expect("copied");
                }
                total
            })
        });
    }
    group.finish();
}

fn quic_push(c: &mut Criterion, src: &Path, out: &Scratch) {
    let mut group = c.benchmark_group("phase8_throughput/quic_push");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Bytes(FILE_BYTES));
    let src = Arc::new(src.to_path_buf());
    for driver in drivers() {
        let dst = out.path(&format!("pushed-{}", driver.name()));
        let dst_server = dst.clone();
        let pair = QuicPair::start(driver, move |send, recv| {
            serve_run(send, recv, dst_server.clone(), FILE_BYTES)
        });
        group.bench_function(BenchmarkId::from_parameter(driver.name()), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        pair.run(push_runs(
                            src.clone(),
                            FILE_BYTES,
                            CHUNKS_PER_STREAM,
                            Compression::Auto,
                        ))
                    })
                    .sum()
            })
        });
        drop(pair);
        let _ = std::fs::remove_file(&dst);
    }
    group.finish();
}

fn phase8_throughput(c: &mut Criterion) {
    let data = Scratch::new("phase8");
    let src = data.path("src.bin");
    random_file(&src, FILE_BYTES);
    local_copy(c, &src, &data);
    quic_push(c, &src, &data);
}

criterion_group!(benches, phase8_throughput);
criterion_main!(benches);
