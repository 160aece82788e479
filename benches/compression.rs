//! zstd on the data path (`tpc_core::codec`, `--compress`), the engine's own code:
//! - `encode`: one 4 MiB chunk through the sender's `Encoder` as `auto` treats it: log-like
//!   text (sampled, compressed in 1 MiB frames, kept) and random data (sampled, refused:
//!   the cost auto adds to incompressible data), and random data under `always` (the
//!   whole chunk compressed, then dropped as not smaller);
//! - `decode`: the receiver's bounded `Decoder` on the text chunk;
//! - `quic_push`: a 256 MiB log-like file over loopback through the real data path
//!   (`send_run` / `receive_run`, as in `phase8_throughput`), with `--compress auto`
//!   against `never`: whether compression pays when the link is this machine's loopback.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{drivers, push_runs, serve_run, text_bytes, text_file, QuicPair, Scratch};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tpc_core::codec::{Compression, Decoder, Encoder};

const CHUNK_BYTES: usize = tpc_core::limits::CHUNK_SIZE_BYTES as usize;
const FILE_BYTES: u64 = 256 << 20;
const CHUNKS_PER_STREAM: u32 = 16;

fn random_bytes(size: usize) -> Vec<u8> {
    let mut out = vec![0u8; size];
    blake3::Hasher::new()
        .update(b"tpc-bench-compression")
        .finalize_xof()
        .fill(&mut out);
    out
}

fn encode_decode(c: &mut Criterion) {
    let text = text_bytes(CHUNK_BYTES, 11);
    let random = random_bytes(CHUNK_BYTES);
    let mut group = c.benchmark_group("compression/encode");
    group.throughput(Throughput::Bytes(CHUNK_BYTES as u64));
    for (name, mode, data) in [
        ("text_auto", Compression::Auto, &text),
        ("random_auto", Compression::Auto, &random),
        ("random_always", Compression::Always, &random),
    ] {
        let mut enc = Encoder::new(mode).expect("zstd context");
        group.bench_function(name, |b| {
            b.iter(|| black_box(enc.compress_chunk(black_box(data)).expect("compresses")))
        });
    }
    group.finish();

    let frames = Encoder::new(Compression::Auto)
        .unwrap()
        .compress_chunk(&text)
        .unwrap()
        .expect("text compresses");
    eprintln!(
        "compression: the text chunk compresses to {} of {} bytes ({:.1}%)",
        frames.len(),
        text.len(),
        frames.len() as f64 * 100.0 / text.len() as f64
    );
    let mut group = c.benchmark_group("compression/decode");
    group.throughput(Throughput::Bytes(CHUNK_BYTES as u64));
    let mut dec = Decoder::new().expect("zstd context");
    let mut out = Vec::new();
    group.bench_function("text", |b| {
        b.iter(|| {
            dec.decompress(black_box(&frames), CHUNK_BYTES, &mut out)
                .expect("decodes");
            black_box(&out);
        })
    });
    group.finish();
}

fn quic_push(c: &mut Criterion) {
    let data = Scratch::new("compression");
    let src = Arc::new(data.path("log.txt"));
    text_file(&src, FILE_BYTES);
    let mut group = c.benchmark_group("compression/quic_push");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Bytes(FILE_BYTES));
    for driver in drivers() {
        let dst: PathBuf = data.path(&format!("pushed-{}", driver.name()));
        let dst_server = dst.clone();
        let pair = QuicPair::start(driver, move |send, recv| {
            serve_run(send, recv, dst_server.clone(), FILE_BYTES)
        });
        for (name, mode) in [("auto", Compression::Auto), ("never", Compression::Never)] {
            let id = BenchmarkId::new(name, driver.name());
            group.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| {
                            pair.run(push_runs(src.clone(), FILE_BYTES, CHUNKS_PER_STREAM, mode))
                        })
                        .sum()
                })
            });
        }
        drop(pair);
        let _ = std::fs::remove_file(&dst);
    }
    group.finish();
}

criterion_group!(benches, encode_decode, quic_push);
criterion_main!(benches);
