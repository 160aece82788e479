//! Criterion benchmarks of the engine's own hot code: BLAKE3 chunk hashing at the sizes
//! the planner produces, digest derivation, chunk planning and shard partitioning, and
//! owner-side assembly.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tpc_core::assembly::Assembly;
use tpc_core::limits::CHUNK_SIZE_BYTES;
use tpc_core::plan::{owner, range_shard};
use tpc_core::{ChunkHash, ChunkPlan, FileDigest, FileId};

fn hashing(c: &mut Criterion) {
    let mut group = c.benchmark_group("chunk_hash");
    let data: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    // 8 KiB (a small file), 1 MiB, the 4 MiB chunk, and 16 MiB for comparison.
    for size in [8usize << 10, 1 << 20, CHUNK_SIZE_BYTES as usize, 16 << 20] {
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, &size| {
            b.iter(|| ChunkHash::of(black_box(&data[..size])))
        });
    }
    group.finish();
}

fn planning(c: &mut Criterion) {
    let mut group = c.benchmark_group("plan");
    let paths: Vec<String> = (0..20_000)
        .map(|i| format!("d{:03}/f{i:05}", i % 200))
        .collect();
    group.throughput(Throughput::Elements(paths.len() as u64));
    group.bench_function("owner_20k_paths", |b| {
        b.iter(|| {
            let mut per_shard = [0u32; 2];
            for p in &paths {
                per_shard[owner(black_box(p.as_bytes()), 2).0 as usize] += 1;
            }
            per_shard
        })
    });
    group.bench_function("ranges_of_1tib_file", |b| {
        let plan = ChunkPlan::new(1 << 40).unwrap();
        let own = owner(b"huge", 8);
        b.iter(|| {
            plan.ranges()
                .map(|r| range_shard(own, r.index, 8).0 as u64 + r.len_bytes)
                .sum::<u64>()
        })
    });
    group.finish();
}

fn assembly(c: &mut Criterion) {
    let mut group = c.benchmark_group("assembly");
    // A 100 GiB file: 25,600 chunks in 1,600 ranges, reported out of order.
    let plan = ChunkPlan::new(100 << 30).unwrap();
    let hashes: Vec<Vec<ChunkHash>> = plan
        .ranges()
        .map(|r| vec![ChunkHash([r.index as u8; 32]); r.chunk_count as usize])
        .collect();
    group.bench_function("assemble_100gib_file", |b| {
        b.iter(|| {
            let mut a = Assembly::<String>::new();
            a.expect(FileId(0), plan).unwrap();
            let n = plan.range_count();
            let mut done = None;
            for i in 0..n {
                let r = (i * 7919) % n; // a permutation: 7919 is prime and does not divide n
                done = a.range_done(FileId(0), r, &hashes[r as usize]).unwrap();
            }
            done.expect("complete")
        })
    });
    group.bench_function("file_digest_25600_chunks", |b| {
        let flat: Vec<ChunkHash> = hashes.iter().flatten().copied().collect();
        b.iter(|| FileDigest::from_chunks(100 << 30, black_box(&flat)))
    });
    group.finish();
}

criterion_group!(benches, hashing, planning, assembly);
criterion_main!(benches);
