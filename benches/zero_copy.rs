//! The I/O layer of each driver (`tpc_engine::rt::File`) on a page-cached 256 MiB file,
//! in 4 MiB chunks as the engine moves them:
//! - `read`: positional reads into the driver's own buffer (glommio's `ReadResult` or a
//!   `Vec` filled by `pread`), nothing copied after;
//! - `read_to_vec`: the same plus turning the buffer into an owned `Vec`, which writes
//!   take: on io_uring that is a copy of every byte, on the portable driver none;
//! - `write`: positional writes of 4 MiB buffers over an existing file.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{drivers, random_file, timed_on, Scratch};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tpc_engine::rt::File;

const FILE_BYTES: u64 = 256 << 20;
const CHUNK_BYTES: usize = tpc_core::limits::CHUNK_SIZE_BYTES as usize;

/// Reads the whole file chunk by chunk; `to_vec` also takes each buffer as a `Vec`.
async fn read_all(path: Arc<PathBuf>, to_vec: bool) {
    let file = File::open(&path).await.expect("opens");
    let mut at = 0;
    while at < FILE_BYTES {
        let buf = file.read_at(at, CHUNK_BYTES).await.expect("reads");
        assert_eq!(buf.len(), CHUNK_BYTES, "a whole chunk");
        if to_vec {
            black_box(buf.into_vec());
        } else {
            black_box(&buf[..]);
        }
        at += CHUNK_BYTES as u64;
    }
    let _ = file.close().await;
}

async fn write_all(path: Arc<PathBuf>) {
    let file = File::open_write(&path, 0o600).await.expect("opens");
    let mut at = 0;
    while at < FILE_BYTES {
        // A fresh buffer each time, as the receive path hands one per chunk.
        let n = file
            .write_at(vec![0x5au8; CHUNK_BYTES], at)
            .await
            .expect("writes");
        assert_eq!(n, CHUNK_BYTES, "a whole chunk");
        at += CHUNK_BYTES as u64;
    }
    let _ = file.close().await;
}

fn zero_copy(c: &mut Criterion) {
    let data = Scratch::new("zero-copy");
    let src = Arc::new(data.path("src.bin"));
    random_file(&src, FILE_BYTES);
    let out = Arc::new(data.path("out.bin"));
    random_file(&out, FILE_BYTES);

    let mut group = c.benchmark_group("zero_copy");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Bytes(FILE_BYTES));
    for driver in drivers() {
        for (name, to_vec) in [("read", false), ("read_to_vec", true)] {
            let src = src.clone();
            group.bench_function(BenchmarkId::new(name, driver.name()), |b| {
                b.iter_custom(|iters| {
                    let src = src.clone();
                    timed_on(driver, iters, move || read_all(src.clone(), to_vec))
                })
            });
        }
        let out = out.clone();
        group.bench_function(BenchmarkId::new("write", driver.name()), |b| {
            b.iter_custom(|iters| {
                let out = out.clone();
                timed_on(driver, iters, move || write_all(out.clone()))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, zero_copy);
criterion_main!(benches);
