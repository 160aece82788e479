//! End-to-end transfer throughput of the engine's data paths, on each driver:
//! - `local_copy`: `tpc_engine::run_job` copying one 256 MiB file (read, BLAKE3 per
//!   chunk, write, commit; `--fsync never`), shards started and stopped each time;
//! - `quic_push`: the remote data path over loopback: the client reads a 256 MiB file
//!   through the driver, hashes each chunk and sends it (`send_run`) over 4 streams of one
//!   connection; the server verifies every chunk against its hash and writes it
//!   (`receive_run`). This is the work of a push minus the control stream and commit.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{drivers, random_file, Job, QuicPair, Scratch};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tpc_engine::rt::{self, File};
use tpc_engine::{Destination, Durability, FileOutcome, JobFile, JobSpec, Progress};
use tpc_xfer::remote::data::{receive_run, send_run};

const FILE_BYTES: u64 = 256 << 20;
/// Chunks per stream: 4 streams of 16 chunks (64 MiB) carry the file.
const CHUNKS_PER_STREAM: u32 = 16;
const CHUNK_BYTES: u64 = tpc_core::limits::CHUNK_SIZE_BYTES;

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
                    let spec = JobSpec {
                        files: vec![JobFile {
                            rel: b"copy".to_vec(),
                            src: src.to_path_buf(),
                            dst: Some(Destination {
                                tmp: out.path(".copy.tmp"),
                                path: dst.clone(),
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

/// The client side of one push of `src`: its chunk runs over concurrent streams, each
/// announced by an 8-byte header (first chunk, chunk count), each acknowledged.
fn push(src: Arc<PathBuf>) -> Job {
    Box::new(move |conn| {
        Box::pin(async move {
            let chunks = FILE_BYTES.div_ceil(CHUNK_BYTES) as u32;
            let mut tasks = Vec::new();
            for first in (0..chunks).step_by(CHUNKS_PER_STREAM as usize) {
                let count = CHUNKS_PER_STREAM.min(chunks - first);
                let conn = conn.clone();
                let src = src.clone();
                tasks.push(rt::spawn_local(async move {
                    let file = File::open(&src).await.expect("source opens");
                    let (mut send, mut recv) = conn.open_bi().await.expect("stream opens");
                    let mut header = [0u8; 8];
                    header[..4].copy_from_slice(&first.to_le_bytes());
                    header[4..].copy_from_slice(&count.to_le_bytes());
                    send.write_all(&header).await.expect("header sent");
                    let mut ready = Vec::new();
                    send_run(
                        &file, "bench", FILE_BYTES, first, count, &mut send, &mut ready,
                    )
                    .await
                    .expect("run sent");
                    send.finish().expect("finished");
                    let mut ack = [0u8; 1];
                    assert!(recv.read_exact(&mut ack).await.expect("acknowledged"));
                    let _ = file.close().await;
                }));
            }
            for t in tasks {
                t.await;
            }
        })
    })
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
        let pair = QuicPair::start(driver, move |mut send, mut recv| {
            let dst = dst_server.clone();
            async move {
                let mut header = [0u8; 8];
                assert!(recv.read_exact(&mut header).await.expect("header"));
                let first = u32::from_le_bytes(header[..4].try_into().unwrap());
                let count = u32::from_le_bytes(header[4..].try_into().unwrap());
                let file = File::open_write(&dst, 0o600, libc::O_CLOEXEC)
                    .await
                    .expect("destination opens");
                let mut written = Vec::new();
                receive_run(
                    &mut recv,
                    &file,
                    "bench",
                    FILE_BYTES,
                    first,
                    count,
                    &mut written,
                )
                .await
                .expect("run verified and written");
                let _ = file.close().await;
                let _ = send.write_all(b"k").await;
                let _ = send.finish();
            }
        });
        group.bench_function(BenchmarkId::from_parameter(driver.name()), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| pair.run(push(src.clone()))).sum())
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
