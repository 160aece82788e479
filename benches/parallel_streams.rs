//! Stream pool scaling: the same 256 MiB over 1, 4, 16 and 64 concurrent streams of one
//! QUIC connection on loopback, through the engine's quinn-proto driver
//! (`tpc_engine::quic`), client and server each on a shard thread of the driver named in
//! the benchmark id. Payload bytes only: no files, no hashing.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{drivers, Job, QuicPair};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tpc_engine::rt;

const TOTAL_BYTES: u64 = 256 << 20;
/// Bytes handed to a stream per write: one shared buffer, sliced, never copied by us.
const PIECE_BYTES: usize = 1 << 20;

/// Sends `TOTAL_BYTES` split over `streams` streams and waits for the server's one-byte
/// acknowledgement on each, which it gives after reading its stream to the end.
fn spread(streams: u64, payload: Bytes) -> Job {
    Box::new(move |conn| {
        Box::pin(async move {
            let per_stream = TOTAL_BYTES / streams;
            let mut tasks = Vec::new();
            for _ in 0..streams {
                let conn = conn.clone();
                let payload = payload.clone();
                tasks.push(rt::spawn_local(async move {
                    let (mut send, mut recv) = conn.open_bi().await.expect("stream opens");
                    let mut left = per_stream as usize;
                    while left > 0 {
                        let n = left.min(payload.len());
                        send.write_bytes(payload.slice(..n)).await.expect("sent");
                        left -= n;
                    }
                    send.finish().expect("finished");
                    let mut ack = [0u8; 1];
                    assert!(recv.read_exact(&mut ack).await.expect("acknowledged"));
                }));
            }
            for t in tasks {
                t.await;
            }
        })
    })
}

fn parallel_streams(c: &mut Criterion) {
    let mut group = c.benchmark_group("parallel_streams");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Bytes(TOTAL_BYTES));
    let payload = Bytes::from(vec![0xa5u8; PIECE_BYTES]);
    for driver in drivers() {
        let pair = QuicPair::start(driver, |mut send, mut recv| async move {
            while let Ok(Some(_)) = recv.read_chunk(usize::MAX).await {}
            let _ = send.write_all(b"k").await;
            let _ = send.finish();
        });
        for streams in [1u64, 4, 16, 64] {
            group.bench_with_input(
                BenchmarkId::new(driver.name(), streams),
                &streams,
                |b, &streams| {
                    b.iter_custom(|iters| {
                        (0..iters)
                            .map(|_| pair.run(spread(streams, payload.clone())))
                            .sum()
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, parallel_streams);
criterion_main!(benches);
