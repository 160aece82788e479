//! The work every byte of a push must get on this machine, each piece alone on one core
//! with nothing around it: the floor of tpc-xfer's data path (BLAKE3 at both ends, QUIC
//! packets sealed in user space and sent as UDP datagrams), under which no protocol on
//! that path can go. `tools/bench-remote.sh` (tool `floor`, part `big`) adds the pieces up
//! into the "floor" row of the 2 GiB push, next to scp in the same run.
//!
//! - `blake3_chunk`: hashing a 4 MiB chunk in the pieces the data path hashes it in (the
//!   sender hashes every byte it sends, the receiver every byte it writes: twice a byte);
//! - `aes128gcm_seal_packet`, `aes128gcm_open_packet`: encrypting and decrypting one
//!   full-size loopback QUIC packet with the packet key rustls hands quinn-proto
//!   (AES-128-GCM, the suite tpc-xfer offers first);
//! - `copy_into_packets`: copying a 4 MiB chunk into packet-sized buffers, as quinn-proto
//!   does when it builds a packet; `copy_into_chunk`: copying packet payloads into a
//!   4 MiB chunk buffer, as the receiver does before its aligned direct write;
//! - `udp_loopback`: one datagram of the largest IPv4 UDP payload sent and received on
//!   127.0.0.1: the kernel's copy in, loopback, and its copy out.
//!
//! What the floor leaves out, so that it stays a bound from below: reading and writing the
//! file (direct I/O, which the device does by DMA), header protection, acknowledgements,
//! flow control, framing, syscalls other than the datagram's own, and the scheduling of
//! two ends on one machine.

use std::net::UdpSocket;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rustls::quic::{Keys, Version};
use rustls::Side;
use tpc_core::limits::CHUNK_SIZE_BYTES;
use tpc_xfer::remote::data::HASH_PIECE_BYTES;

const CHUNK: usize = CHUNK_SIZE_BYTES as usize;
/// The largest UDP payload over IPv4, which is what a loopback QUIC packet grows to
/// (`tpc_engine::quic`: loopback's MTU is 65,536).
const DATAGRAM_BYTES: usize = 65_507;
/// A short-header packet's header: one flags byte, an 8-byte connection id and a 4-byte
/// packet number at most (quinn-proto's connection ids are 8 bytes).
const HEADER_BYTES: usize = 13;
/// AES-GCM's tag, which ends every packet.
const TAG_BYTES: usize = 16;
const PAYLOAD_BYTES: usize = DATAGRAM_BYTES - HEADER_BYTES - TAG_BYTES;

/// Bytes that look random to the cipher and the hash alike (a multiplicative hash of the
/// index), made once.
fn data(len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn per_byte(c: &mut Criterion) {
    let mut group = c.benchmark_group("per_byte");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let chunk = data(CHUNK);

    group.throughput(Throughput::Bytes(CHUNK as u64));
    group.bench_function("blake3_chunk", |b| {
        b.iter(|| {
            let mut hasher = blake3::Hasher::new();
            for piece in chunk.chunks(HASH_PIECE_BYTES) {
                hasher.update(piece);
            }
            black_box(hasher.finalize())
        })
    });

    // The keys of a connection's Initial space: the same AES-128-GCM packet key type as
    // its 1-RTT space, where the data travels, without a handshake to reach it.
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .expect("a TLS 1.3 suite");
    let quic = suite.quic.expect("AES-128-GCM has a QUIC algorithm");
    let cid = [7u8; 8];
    let client = Keys::initial(Version::V1, suite, quic, &cid, Side::Client);
    let server = Keys::initial(Version::V1, suite, quic, &cid, Side::Server);
    let header = [0x40u8; HEADER_BYTES];
    let plain = data(PAYLOAD_BYTES);
    group.throughput(Throughput::Bytes(DATAGRAM_BYTES as u64));
    let mut payload = plain.clone();
    let mut pn = 0u64;
    group.bench_function("aes128gcm_seal_packet", |b| {
        b.iter(|| {
            pn += 1;
            black_box(
                client
                    .local
                    .packet
                    .encrypt_in_place(pn, &header, &mut payload)
                    .expect("seal"),
            )
        })
    });
    let mut sealed = plain.clone();
    let tag = client
        .local
        .packet
        .encrypt_in_place(1, &header, &mut sealed)
        .expect("seal");
    sealed.extend_from_slice(tag.as_ref());
    // One fresh copy of the sealed packet per iteration, made untimed just before it, so
    // that it is in cache as the seal's packet is: larger batches of copies would be
    // opened from memory.
    group.bench_function("aes128gcm_open_packet", |b| {
        b.iter_batched_ref(
            || sealed.clone(),
            |packet| {
                let opened = server
                    .remote
                    .packet
                    .decrypt_in_place(1, &header, packet)
                    .expect("open");
                black_box(opened.len())
            },
            BatchSize::PerIteration,
        )
    });

    group.throughput(Throughput::Bytes(CHUNK as u64));
    let mut packet = vec![0u8; PAYLOAD_BYTES];
    group.bench_function("copy_into_packets", |b| {
        b.iter(|| {
            for piece in chunk.chunks(PAYLOAD_BYTES) {
                packet[..piece.len()].copy_from_slice(piece);
                black_box(&packet);
            }
        })
    });
    let mut into = Vec::with_capacity(CHUNK);
    group.bench_function("copy_into_chunk", |b| {
        b.iter(|| {
            into.clear();
            while into.len() < CHUNK {
                let n = (CHUNK - into.len()).min(PAYLOAD_BYTES);
                into.extend_from_slice(&plain[..n]);
            }
            black_box(&into);
        })
    });

    let rx = UdpSocket::bind("127.0.0.1:0").expect("bind the receiving socket");
    let tx = UdpSocket::bind("127.0.0.1:0").expect("bind the sending socket");
    tx.connect(rx.local_addr().expect("its address"))
        .expect("connect");
    // A datagram that went missing would hang the benchmark; none should on loopback.
    rx.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let datagram = data(DATAGRAM_BYTES);
    let mut buf = vec![0u8; DATAGRAM_BYTES];
    group.throughput(Throughput::Bytes(DATAGRAM_BYTES as u64));
    group.bench_function("udp_loopback", |b| {
        b.iter(|| {
            tx.send(&datagram).expect("send");
            let n = rx.recv(&mut buf).expect("the datagram, received");
            assert_eq!(n, DATAGRAM_BYTES, "a datagram arrives whole");
        })
    });
    group.finish();
}

criterion_group!(benches, per_byte);
criterion_main!(benches);
