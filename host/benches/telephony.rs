//! Cost of the Media Streams hot path: one inbound `media` message parsed and decoded to PCM,
//! and one outbound 20 ms frame encoded to a `media` message.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use switchboard::audio::mulaw;
use switchboard::telephony::twilio::media::{parse_event, twilio_side, OutboundEncoder, OutboundMessage, StreamEvent};

fn inbound_media(c: &mut Criterion) {
    let payload: Vec<u8> = (0..160u32).map(|i| (i * 37 % 256) as u8).collect();
    let text = twilio_side::media(1234, "MZ0123456789abcdef0123456789abcdef", 1233, 24660, &payload);
    let mut bytes = Vec::with_capacity(512);
    let mut pcm = [0i16; 160];
    c.bench_function("media_in: parse + base64 + mulaw decode (20 ms)", |b| {
        b.iter(|| {
            let StreamEvent::Media { media, .. } = parse_event(black_box(&text)).unwrap() else { unreachable!() };
            media.decode_into(&mut bytes, 16 * 1024).unwrap();
            mulaw::decode_into(&bytes, &mut pcm).unwrap();
            black_box(&pcm);
        })
    });
}

fn outbound_media(c: &mut Criterion) {
    let frame: [u8; 160] = std::array::from_fn(|i| (i * 13 % 256) as u8);
    let mut enc = OutboundEncoder::default();
    c.bench_function("media_out: encode one 20 ms frame message", |b| {
        b.iter(|| {
            black_box(enc.encode("MZ0123456789abcdef0123456789abcdef", &OutboundMessage::Media(black_box(&frame))))
        })
    });
}

criterion_group!(benches, inbound_media, outbound_media);
criterion_main!(benches);
