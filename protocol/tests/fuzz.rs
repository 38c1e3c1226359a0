//! Fuzz targets for everything that decodes untrusted bytes: the JSON batch
//! decoder (`json::decode_batch`, `decode_batch_str`,
//! `decode_batch_shared`), the event-stream parser (`sse::SseParser`) and
//! the WebSocket binary header (`binary::decode_binary_message`).
//!
//! They run on stable with proptest, as ordinary tests: arbitrary bytes,
//! and valid batches mutated the way broken or hostile peers mutate them
//! (flipped bytes, cuts, inserted JSON tokens, deleted and repeated
//! ranges). The properties: no input panics; the decoders agree with each
//! other; a shared payload is always most of its frame's own buffer; valid
//! batches round-trip.
//!
//! Quick by default (a few seconds in CI). A longer run:
//!
//! ```text
//! PROPTEST_CASES=200000 cargo test --release -p holdfast-protocol --test fuzz
//! ```
//!
//! A failure prints the minimal input; proptest saves its seed in
//! `protocol/tests/fuzz.proptest-regressions` (commit it) so that it is
//! tried first on every later run.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use holdfast_protocol::wire::binary::{
    self, BINARY_HEADER_LEN, BINARY_MESSAGE_TYPE, WsUnit, decode_binary_message,
    encode_binary_message,
};
use holdfast_protocol::wire::json::{
    decode_batch, decode_batch_shared, decode_batch_str, encode_batch_to_vec,
};
use holdfast_protocol::wire::sse::{self, SseItem, SseParser};
use holdfast_protocol::{Close, CloseCode, Frame, Message, OpenParams};
use proptest::prelude::*;

/// The cases per target: `PROPTEST_CASES` when set, else a quick run.
fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 1000;
    }
    config
}

// ---- generators -------------------------------------------------------------------

/// Text with what JSON must escape (quotes, backslashes, controls), the
/// line separators, multi-byte characters and plain ASCII.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,24}",
        "[\"\\\\/\\u{0}-\\u{1f}\\u{7f}\\u{2028}\\u{2029}a-z ]{0,24}",
        "[😀é中a]{0,8}",
    ]
}

fn millis() -> impl Strategy<Value = Duration> {
    (0u64..1 << 40).prop_map(Duration::from_millis)
}

/// Any frame of the protocol, in either direction.
fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (1u64..=u64::MAX, text()).prop_map(|(seq, t)| Frame::Message {
            seq,
            message: Message::text(t),
        }),
        (
            1u64..=u64::MAX,
            proptest::collection::vec(any::<u8>(), 0..48)
        )
            .prop_map(|(seq, b)| Frame::Message {
                seq,
                message: Message::binary(b),
            }),
        (any::<u64>(), proptest::option::of(any::<u64>()))
            .prop_map(|(seq, room)| Frame::Ack { seq, room }),
        (
            any::<u64>(),
            proptest::option::of(any::<u64>()),
            any::<bool>()
        )
            .prop_map(|(ack, room, native_text)| Frame::Resumed {
                ack,
                room,
                native_text
            }),
        Just(Frame::Ping),
        Just(Frame::Pong),
        (any::<u16>(), text(), proptest::option::of(millis())).prop_map(|(code, reason, retry)| {
            let close = Close::new(CloseCode(code), reason);
            Frame::Close(match retry {
                Some(after) => close.with_retry_after(after),
                None => close,
            })
        }),
        (any::<u16>(), text()).prop_map(|(code, reason)| Frame::detach(CloseCode(code), reason)),
        (
            any::<u32>(),
            (text(), any::<bool>()),
            text(),
            (millis(), millis(), millis(), millis()),
            (
                0usize..1 << 40,
                0usize..1 << 40,
                proptest::option::of(0usize..1 << 40),
                proptest::option::of(0usize..1 << 40),
            ),
        )
            .prop_map(|(version, (key, native_text), session_id, timers, sizes)| {
                Frame::Open(OpenParams {
                    version,
                    key,
                    session_id,
                    ping_interval: timers.0,
                    timeout: timers.1,
                    resume_window: timers.2,
                    poll_hold: timers.3,
                    max_message: sizes.0,
                    max_batch: sizes.1,
                    window: sizes.2,
                    mux: sizes.3,
                    native_text,
                })
            }),
    ]
}

fn batch() -> impl Strategy<Value = Vec<Frame>> {
    proptest::collection::vec(frame(), 0..6)
}

/// Pieces of JSON a mutation may insert.
const TOKENS: &[&str] = &[
    "\"",
    "\\",
    "\\u",
    "\\ud800",
    "\\udc00",
    "\\u00e9",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    " ",
    "null",
    "true",
    "-",
    "0",
    "01",
    "1e5",
    "1.5",
    "18446744073709551616",
    "\"t\"",
    "\"msg\"",
    "\"seq\"",
    "\"d\"",
    "\u{0}",
    "\n",
    "é",
    "\u{ff}",
];

/// One way a peer may break a batch.
#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, usize),
    Delete(usize, usize),
    Repeat(usize, usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Flip(at, b)),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(at, t)| Mutation::Insert(at, t)),
        (any::<usize>(), 1usize..16).prop_map(|(at, n)| Mutation::Delete(at, n)),
        (any::<usize>(), 1usize..16).prop_map(|(at, n)| Mutation::Repeat(at, n)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(input: &mut Vec<u8>, mutation: &Mutation) {
    let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
    match *mutation {
        Mutation::Flip(i, byte) => {
            if !input.is_empty() {
                let i = i % input.len();
                input[i] = byte;
            }
        }
        Mutation::Insert(i, token) => {
            let i = at(i, input.len());
            input.splice(i..i, TOKENS[token].bytes());
        }
        Mutation::Delete(i, n) => {
            let i = at(i, input.len());
            let end = (i + n).min(input.len());
            input.drain(i..end);
        }
        Mutation::Repeat(i, n) => {
            let i = at(i, input.len());
            let end = (i + n).min(input.len());
            let piece = input[i..end].to_vec();
            input.splice(end..end, piece);
        }
        Mutation::Truncate(i) => {
            let i = at(i, input.len());
            input.truncate(i);
        }
    }
}

// ---- properties -------------------------------------------------------------------

/// Decodes `input` every way there is and checks they agree; returns the
/// frames (`None`: refused). `decode_batch_shared` runs on a buffer of its own and on a view
/// of a larger buffer, as a WebSocket library hands them out.
fn decode_every_way(input: &[u8]) -> Result<Option<Vec<Frame>>, TestCaseError> {
    let plain = decode_batch(input);
    let Ok(text) = std::str::from_utf8(input) else {
        prop_assert!(plain.is_err(), "invalid UTF-8 decoded: {plain:?}");
        return Ok(None);
    };
    prop_assert_eq!(&decode_batch_str(text), &plain);

    // Its own buffer: large payloads may be slices of it.
    let own = Bytes::copy_from_slice(input);
    let view = std::str::from_utf8(&own).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let shared = decode_batch_shared(view, &own);
    prop_assert_eq!(&shared, &plain);
    for payload in payloads(shared.as_deref().unwrap_or_default()) {
        if inside(&own, &payload) {
            prop_assert!(
                payload.len() * 2 >= own.len(),
                "a {}-byte payload pins a {}-byte frame",
                payload.len(),
                own.len()
            );
        }
    }

    // A view of a larger read buffer: never sliced.
    let mut read_buffer = BytesMut::with_capacity(input.len() + 4096);
    read_buffer.extend_from_slice(input);
    read_buffer.extend_from_slice(b"[the next frame]");
    let frame = read_buffer.split_to(input.len()).freeze();
    let view = std::str::from_utf8(&frame).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let shared = decode_batch_shared(view, &frame);
    prop_assert_eq!(&shared, &plain);
    for payload in payloads(shared.as_deref().unwrap_or_default()) {
        prop_assert!(
            !inside(&frame, &payload),
            "a view of a read buffer was sliced"
        );
    }
    Ok(plain.ok())
}

fn payloads(frames: &[Frame]) -> Vec<Bytes> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Message { message, .. } => Some(message.as_bytes().clone()),
            _ => None,
        })
        .collect()
}

fn inside(buffer: &Bytes, payload: &Bytes) -> bool {
    let range = buffer.as_ptr_range();
    !payload.is_empty() && range.start <= payload.as_ptr() && payload.as_ptr() < range.end
}

/// Feeds `stream` to an SSE parser in chunks cut at `cuts`; returns the
/// items, or the error.
fn parse_sse(stream: &[u8], cuts: &[usize], max: usize) -> Result<Vec<SseItem>, String> {
    let mut parser = SseParser::new(max);
    let mut items = Vec::new();
    let mut start = 0;
    let mut ends: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    ends.push(stream.len());
    ends.sort_unstable();
    for end in ends {
        parser
            .feed(&stream[start..end], &mut items)
            .map_err(|e| e.to_string())?;
        start = end;
    }
    Ok(items)
}

proptest! {
    #![proptest_config(config())]

    /// Batch decoder, arbitrary bytes: no panic, every decoder agrees.
    #[test]
    fn batch_decoders_survive_arbitrary_bytes(input in proptest::collection::vec(any::<u8>(), 0..256)) {
        decode_every_way(&input)?;
    }

    /// Batch decoder, valid batches: they round-trip, every way.
    #[test]
    fn valid_batches_round_trip(frames in batch()) {
        let encoded = encode_batch_to_vec(&frames);
        let decoded = decode_every_way(&encoded)?;
        prop_assert_eq!(decoded, Some(frames));
    }

    /// Batch decoder, valid batches broken by a peer: no panic, every
    /// decoder agrees.
    #[test]
    fn mutated_batches_never_panic(
        frames in batch(),
        mutations in proptest::collection::vec(mutation(), 1..5),
    ) {
        let mut input = encode_batch_to_vec(&frames);
        for m in &mutations {
            mutate(&mut input, m);
        }
        decode_every_way(&input)?;
    }

    /// A large payload in its own buffer stays zero-copy; small ones never
    /// pin it.
    #[test]
    fn shared_decoding_keeps_only_large_payloads_as_slices(
        big in 0usize..4000,
        small in proptest::collection::vec(0usize..64, 0..4),
    ) {
        let mut frames = vec![Frame::Message { seq: 1, message: Message::text("b".repeat(big)) }];
        for (i, len) in small.iter().enumerate() {
            frames.push(Frame::Message { seq: i as u64 + 2, message: Message::text("s".repeat(*len)) });
        }
        let own = Bytes::from(encode_batch_to_vec(&frames));
        let view = std::str::from_utf8(&own).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let decoded = decode_batch_shared(view, &own).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&decoded, &frames);
        for payload in payloads(&decoded) {
            prop_assert_eq!(inside(&own, &payload), payload.len() * 2 >= own.len() && !payload.is_empty());
        }
    }

    /// Event-stream parser, arbitrary bytes in arbitrary chunks: no panic,
    /// and the chunking does not change the outcome.
    #[test]
    fn sse_parser_survives_arbitrary_streams(
        stream in proptest::collection::vec(
            prop_oneof![any::<u8>(), Just(b'\n'), Just(b'\r'), Just(b':'), Just(b' ')],
            0..256,
        ),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
        max in 1usize..300,
    ) {
        let whole = parse_sse(&stream, &[], max);
        let chunked = parse_sse(&stream, &cuts, max);
        prop_assert_eq!(whole.is_ok(), chunked.is_ok());
        if let (Ok(whole), Ok(chunked)) = (&whole, &chunked) {
            prop_assert_eq!(whole, chunked);
        }
    }

    /// Event-stream parser, valid events in arbitrary chunks: each batch
    /// comes back whole, with the id of its last message.
    #[test]
    fn sse_events_round_trip(
        batches in proptest::collection::vec(batch(), 1..4),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut stream = Vec::new();
        sse::encode_padding(64, &mut stream);
        for frames in &batches {
            sse::encode_event(frames, &mut stream);
        }
        let items = parse_sse(&stream, &cuts, 1 << 20).map_err(TestCaseError::fail)?;
        let events: Vec<_> = items.iter().filter(|i| **i != SseItem::Comment).collect();
        prop_assert_eq!(events.len(), batches.len());
        for (item, frames) in events.into_iter().zip(&batches) {
            let SseItem::Event { id, data } = item else {
                return Err(TestCaseError::fail(format!("not an event: {item:?}")));
            };
            let last = frames.iter().rev().find_map(|f| match f {
                Frame::Message { seq, .. } => Some(seq.to_string()),
                _ => None,
            });
            prop_assert_eq!(id, &last);
            prop_assert_eq!(&decode_batch(data.as_bytes()), &Ok(frames.clone()));
        }
    }

    /// WebSocket binary header, arbitrary bytes: no panic, and exactly the
    /// documented refusals.
    #[test]
    fn binary_header_survives_arbitrary_bytes(input in proptest::collection::vec(any::<u8>(), 0..64)) {
        let decoded = decode_binary_message(Bytes::from(input.clone()));
        let valid = input.len() >= BINARY_HEADER_LEN
            && input[0] == BINARY_MESSAGE_TYPE
            && input[1..BINARY_HEADER_LEN].iter().any(|b| *b != 0);
        prop_assert_eq!(decoded.is_ok(), valid, "{:?}", decoded);
        if let Ok((seq, payload)) = decoded {
            let mut seq_bytes = [0u8; 8];
            seq_bytes.copy_from_slice(&input[1..BINARY_HEADER_LEN]);
            prop_assert_eq!(seq, u64::from_be_bytes(seq_bytes));
            prop_assert_eq!(&payload[..], &input[BINARY_HEADER_LEN..]);
        }
    }

    /// WebSocket binary messages round-trip, from a buffer of their own
    /// (large payloads zero-copy) and from a view of a read buffer (copied).
    #[test]
    fn binary_messages_round_trip(seq in 1u64..=u64::MAX, payload in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let encoded = encode_binary_message(seq, &payload);
        let own = Bytes::from(encoded.to_vec());
        let range = own.as_ptr_range();
        let (got_seq, got) = decode_binary_message(own)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!((got_seq, &got[..]), (seq, &payload[..]));
        let sliced = !got.is_empty() && range.contains(&got.as_ptr());
        prop_assert_eq!(sliced, payload.len() >= BINARY_HEADER_LEN);

        let mut read_buffer = BytesMut::with_capacity(encoded.len() + 4096);
        read_buffer.extend_from_slice(&encoded);
        read_buffer.extend_from_slice(b"next");
        let view = read_buffer.split_to(encoded.len()).freeze();
        let range = view.as_ptr_range();
        let (got_seq, got) = decode_binary_message(view)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!((got_seq, &got[..]), (seq, &payload[..]));
        prop_assert!(got.is_empty() || !range.contains(&got.as_ptr()), "a read buffer view was sliced");
    }

    /// A batch split into WebSocket messages (JSON text runs, native binary
    /// messages) decodes back to the same frames, in order.
    #[test]
    fn websocket_units_round_trip(frames in batch()) {
        let mut decoded = Vec::new();
        for unit in binary::websocket_units(frames.clone()) {
            match unit {
                WsUnit::Text(text) => decoded.extend(
                    decode_batch_str(&text).map_err(|e| TestCaseError::fail(e.to_string()))?,
                ),
                WsUnit::Binary(bytes) => {
                    let (seq, payload) = decode_binary_message(bytes)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    decoded.push(Frame::Message { seq, message: Message::Binary(payload) });
                }
            }
        }
        prop_assert_eq!(decoded, frames);
    }
}
