//! Chunks the receiver already has (`CODEC_SAME`), the engine's own code, over loopback on
//! each driver: a 256 MiB random file pushed through `send_run` / `receive_run` (4
//! streams of 16 chunks, one connection) to a receiver that
//! - `none`: has no old version (every chunk travels);
//! - `one_changed`: has an old version that differs in one chunk of 64 (the sender reads
//!   and hashes every chunk, sends 63 as "already there" and one whole; the receiver
//!   reads those 63 from its old copy, verifies and writes them);
//! - `unchanged`: has an identical old version (nothing but hashes travels).
//!
//! Also `dedup/plan_hashes`: what the receiver pays up front, `old_chunk_hashes` over its
//! old version (page cache warm), as `Receiver::plan` calls it.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{drivers, push_runs_over, random_file, serve_run_over, QuicPair, Scratch};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tpc_core::codec::Compression;
use tpc_core::ChunkHash;
use tpc_xfer::remote::receiver::old_chunk_hashes;

const FILE_BYTES: u64 = 256 << 20;
const CHUNK_BYTES: u64 = tpc_core::limits::CHUNK_SIZE_BYTES;
const CHUNKS_PER_STREAM: u32 = 16;

/// The chunk hashes of `path`, as a receiver computes them of its old version.
fn chunk_hashes(path: &Path) -> Vec<ChunkHash> {
    let f = std::fs::File::open(path).expect("opens");
    let hashes = old_chunk_hashes(&f, FILE_BYTES, FILE_BYTES);
    assert_eq!(hashes.len() as u64, FILE_BYTES / CHUNK_BYTES);
    hashes
}

fn dedup(c: &mut Criterion) {
    let data = Scratch::new("dedup");
    let src = data.path("src.bin");
    random_file(&src, FILE_BYTES);
    // The receiver's old version: the same file with chunk 17 changed.
    let old = data.path("old.bin");
    std::fs::copy(&src, &old).expect("copy");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&old).unwrap();
        f.write_all_at(&[0xa5; 4096], 17 * CHUNK_BYTES + 100)
            .unwrap();
    }
    let identical = Arc::new(chunk_hashes(&src));
    let one_changed = Arc::new(chunk_hashes(&old));

    let mut group = c.benchmark_group("dedup/plan_hashes");
    group.throughput(Throughput::Bytes(FILE_BYTES));
    group.bench_function("256MiB", |b| b.iter(|| black_box(chunk_hashes(&old))));
    group.finish();

    let mut group = c.benchmark_group("dedup/quic_push");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Bytes(FILE_BYTES));
    let src = Arc::new(src);
    for driver in drivers() {
        let cases = [
            ("none", Arc::new(Vec::new()), None),
            ("one_changed", one_changed.clone(), Some(old.clone())),
            ("unchanged", identical.clone(), Some(src.as_ref().clone())),
        ];
        for (name, have, old_copy) in cases {
            let dst = data.path(&format!("pushed-{}-{name}", driver.name()));
            let dst_server = dst.clone();
            let pair = QuicPair::start(driver, move |send, recv| {
                serve_run_over(send, recv, dst_server.clone(), FILE_BYTES, old_copy.clone())
            });
            group.bench_function(BenchmarkId::new(name, driver.name()), |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| {
                            pair.run(push_runs_over(
                                src.clone(),
                                FILE_BYTES,
                                CHUNKS_PER_STREAM,
                                Compression::Never,
                                have.clone(),
                            ))
                        })
                        .sum()
                })
            });
            drop(pair);
            assert_eq!(
                std::fs::read(&dst).expect("pushed"),
                std::fs::read(src.as_ref()).expect("source"),
                "{name}: the pushed file differs from its source"
            );
            let _ = std::fs::remove_file(&dst);
        }
    }
    group.finish();
}

criterion_group!(benches, dedup);
criterion_main!(benches);
