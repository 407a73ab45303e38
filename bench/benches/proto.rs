//! Micro-benchmarks of the protocol codec on the daemon's hot paths:
//! `encode_data_message` (once per upstream message, shared by every subscriber) and
//! `decode_client` of a `send` (once per request from a client).
//!
//! `cargo bench -p wsmux-bench --bench proto`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde::Serialize;
use wsmux_proto::{
    decode_client, encode, encode_data_message, PayloadRef, DEFAULT_MAX_FRAME, HEADER_LEN,
};

const SIZES: [usize; 2] = [100, 4096];

fn encode_data(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode_data_message");
    for size in SIZES {
        let data = vec![0x5a_u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("binary", size), &data, |b, data| {
            b.iter(|| {
                encode_data_message(
                    black_box("feed"),
                    black_box(1_000_042),
                    None,
                    PayloadRef::Binary(black_box(data)),
                    DEFAULT_MAX_FRAME,
                )
                .expect("encodes")
            })
        });
        let text = "x".repeat(size);
        g.bench_with_input(BenchmarkId::new("text", size), &text, |b, text| {
            b.iter(|| {
                encode_data_message(
                    black_box("feed"),
                    black_box(1_000_042),
                    None,
                    PayloadRef::Text(black_box(text)),
                    DEFAULT_MAX_FRAME,
                )
                .expect("encodes")
            })
        });
    }
    g.finish();
}

/// A `send` request as PROTOCOL.md section 7.1 describes it.
#[derive(Serialize)]
struct SendRequest<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    id: u64,
    endpoint: &'a str,
    data: PayloadRef<'a>,
}

fn decode_send(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_client_send");
    for size in SIZES {
        let data = vec![0x5a_u8; size];
        let mut frame = Vec::new();
        encode(
            &SendRequest {
                ty: "send",
                id: 123_456,
                endpoint: "feed",
                data: PayloadRef::Binary(&data),
            },
            &mut frame,
            DEFAULT_MAX_FRAME,
        )
        .expect("encodes");
        let body = frame[HEADER_LEN..].to_vec();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("binary", size), &body, |b, body| {
            b.iter(|| decode_client(black_box(body)).expect("decodes"))
        });
    }
    g.finish();
}

criterion_group!(benches, encode_data, decode_send);
criterion_main!(benches);
