//! Native messages on WebSocket (`PROTOCOL.md` §2.2): one byte of type,
//! eight bytes of sequence number, then the payload — binary (`0x01`) or,
//! where negotiated, UTF-8 text (`0x02`).

use bytes::{BufMut, Bytes, BytesMut};

use crate::wire::{DecodeError, Message, Text};

/// Type byte of a binary WebSocket message carrying one application message.
pub const BINARY_MESSAGE_TYPE: u8 = 0x01;

/// Type byte of a binary WebSocket message carrying one text message
/// (`PROTOCOL.md` §2.2.1): sent only to a peer that negotiated it.
pub const TEXT_MESSAGE_TYPE: u8 = 0x02;

/// Length of the header before the payload.
pub const BINARY_HEADER_LEN: usize = 9;

/// The smallest text payload the holdfast implementations send natively
/// once negotiated (a sender's rule, `PROTOCOL.md` §2.2.1). Below it a
/// text rides in a JSON batch, where it shares one WebSocket message with
/// its neighbours and the acks; above it JSON's escaping and copying cost
/// more than a WebSocket message of its own.
pub const NATIVE_TEXT_MIN: usize = 1024;

/// Encodes one binary application message as a WebSocket binary message.
pub fn encode_binary_message(seq: u64, payload: &[u8]) -> Bytes {
    encode_native(BINARY_MESSAGE_TYPE, seq, payload)
}

/// Encodes one text application message as a native WebSocket binary
/// message (type `0x02`). Only for a peer that negotiated it.
pub fn encode_text_message(seq: u64, text: &str) -> Bytes {
    encode_native(TEXT_MESSAGE_TYPE, seq, text.as_bytes())
}

fn encode_native(kind: u8, seq: u64, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(BINARY_HEADER_LEN + payload.len());
    out.put_u8(kind);
    out.put_u64(seq);
    out.put_slice(payload);
    out.freeze()
}

/// Decodes a native WebSocket message of either type into its sequence
/// number and message: `0x01` binary, `0x02` text, whose payload must be
/// UTF-8 ([`DecodeError::InvalidUtf8`] otherwise). The payload is shared
/// or copied as [`decode_binary_message`] says.
pub fn decode_native_message(input: Bytes) -> Result<(u64, Message), DecodeError> {
    if input.first() == Some(&TEXT_MESSAGE_TYPE) {
        let (seq, payload) = split_native(input)?;
        let text = Text::from_utf8(payload).map_err(|_| DecodeError::InvalidUtf8)?;
        return Ok((seq, Message::Text(text)));
    }
    let (seq, payload) = decode_binary_message(input)?;
    Ok((seq, Message::Binary(payload)))
}

/// Decodes a WebSocket binary message into its sequence number and payload.
///
/// The payload shares the input's memory where
/// [`may_share`](crate::wire::may_share) allows it (the input owns its
/// allocation and is at least 18 bytes long, so the payload is most of it);
/// otherwise it is copied, so that it never pins a larger buffer the input
/// is a view of (a WebSocket library's read buffer).
pub fn decode_binary_message(input: Bytes) -> Result<(u64, Bytes), DecodeError> {
    if input.len() >= BINARY_HEADER_LEN && input[0] != BINARY_MESSAGE_TYPE {
        return Err(DecodeError::BinaryHeader("unknown type byte"));
    }
    split_native(input)
}

/// The sequence number and payload of a native message, whatever its type.
fn split_native(mut input: Bytes) -> Result<(u64, Bytes), DecodeError> {
    if input.len() < BINARY_HEADER_LEN {
        return Err(DecodeError::BinaryHeader("shorter than its 9-byte header"));
    }
    let mut seq_bytes = [0u8; 8];
    seq_bytes.copy_from_slice(&input[1..BINARY_HEADER_LEN]);
    let seq = u64::from_be_bytes(seq_bytes);
    if seq == 0 {
        return Err(DecodeError::ZeroSeq);
    }
    let payload_len = input.len() - BINARY_HEADER_LEN;
    let payload = if crate::wire::may_share(&input, payload_len) {
        input.split_off(BINARY_HEADER_LEN)
    } else {
        Bytes::copy_from_slice(&input[BINARY_HEADER_LEN..])
    };
    Ok((seq, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_becomes_text_runs_and_native_binary_messages() {
        use crate::wire::{Frame, Message};
        let units = websocket_units(vec![
            Frame::ack(1),
            Frame::Message {
                seq: 2,
                message: Message::binary(vec![7]),
            },
            Frame::Message {
                seq: 3,
                message: Message::text("t"),
            },
            Frame::Ping,
        ]);
        assert_eq!(
            units,
            vec![
                WsUnit::Text(r#"[{"t":"ack","seq":1}]"#.into()),
                WsUnit::Binary(encode_binary_message(2, &[7])),
                WsUnit::Text(r#"[{"t":"msg","seq":3,"d":"t"},{"t":"ping"}]"#.into()),
            ]
        );
    }

    #[test]
    fn negotiated_texts_from_the_threshold_on_travel_natively() {
        use crate::wire::{Frame, Message};
        let big = "é".repeat(8);
        let frames = vec![
            Frame::Message {
                seq: 1,
                message: Message::text("small"),
            },
            Frame::Message {
                seq: 2,
                message: Message::text(big.as_str()),
            },
            Frame::ack(3),
        ];
        assert_eq!(
            websocket_units_with(frames.clone(), Some(16)),
            vec![
                WsUnit::Text(r#"[{"t":"msg","seq":1,"d":"small"}]"#.into()),
                WsUnit::Binary(encode_text_message(2, &big)),
                WsUnit::Text(r#"[{"t":"ack","seq":3}]"#.into()),
            ]
        );
        // Not negotiated: every text in JSON, as before.
        assert_eq!(websocket_units_with(frames.clone(), None).len(), 1);
        assert_eq!(websocket_units(frames).len(), 1);
    }

    #[test]
    fn native_texts_roundtrip_and_invalid_utf8_is_refused() {
        let encoded = encode_text_message(258, "añb");
        assert_eq!(
            &encoded[..],
            &[2, 0, 0, 0, 0, 0, 0, 1, 2, b'a', 0xc3, 0xb1, b'b']
        );
        assert_eq!(
            decode_native_message(encoded),
            Ok((258, Message::text("añb")))
        );
        assert_eq!(
            decode_native_message(encode_binary_message(3, &[0xff])),
            Ok((3, Message::binary(vec![0xff])))
        );
        let mut bad = encode_text_message(4, "ab").to_vec();
        bad.push(0xc3); // a lone lead byte
        assert_eq!(
            decode_native_message(Bytes::from(bad)),
            Err(DecodeError::InvalidUtf8)
        );
        assert!(decode_native_message(Bytes::from_static(&[2, 0, 0])).is_err());
        assert_eq!(
            decode_native_message(Bytes::from_static(&[2, 0, 0, 0, 0, 0, 0, 0, 0])),
            Err(DecodeError::ZeroSeq)
        );
        assert!(decode_native_message(Bytes::from_static(&[3, 0, 0, 0, 0, 0, 0, 0, 1])).is_err());
        // Binary-only decoding still refuses a text message.
        assert!(decode_binary_message(encode_text_message(1, "x")).is_err());
    }

    #[test]
    fn roundtrips_and_refuses_bad_headers() {
        let encoded = encode_binary_message(258, &[9, 8, 7]);
        assert_eq!(&encoded[..], &[1, 0, 0, 0, 0, 0, 0, 1, 2, 9, 8, 7]);
        assert_eq!(
            decode_binary_message(encoded),
            Ok((258, Bytes::from_static(&[9, 8, 7])))
        );
        assert!(decode_binary_message(Bytes::from_static(&[1, 0])).is_err());
        assert!(decode_binary_message(Bytes::from_static(&[2, 0, 0, 0, 0, 0, 0, 0, 1])).is_err());
        assert_eq!(
            decode_binary_message(Bytes::from_static(&[1, 0, 0, 0, 0, 0, 0, 0, 0])),
            Err(DecodeError::ZeroSeq)
        );
    }

    /// Whether `payload` lies inside `range`.
    fn inside(range: std::ops::Range<*const u8>, payload: &Bytes) -> bool {
        range.start <= payload.as_ptr() && payload.as_ptr() < range.end
    }

    #[test]
    fn a_message_that_owns_its_buffer_stays_zero_copy() {
        let encoded = Bytes::from(encode_binary_message(5, &[3u8; 1000]).to_vec());
        let range = encoded.as_ptr_range();
        let (_, payload) = decode_binary_message(encoded).unwrap_or_default();
        assert_eq!(payload.len(), 1000);
        assert!(inside(range, &payload), "sliced, not copied");
    }

    #[test]
    fn a_message_that_is_a_view_of_a_read_buffer_is_copied_out() {
        // How a WebSocket library hands out messages: split off its read
        // buffer, whose allocation outlives the message and may be far
        // larger. A 1-byte payload must not keep it alive.
        let mut read_buffer = bytes::BytesMut::with_capacity(400_000);
        read_buffer.extend_from_slice(&encode_binary_message(7, b"x"));
        read_buffer.extend_from_slice(&[0u8; 1000]);
        let message = read_buffer.split_to(BINARY_HEADER_LEN + 1).freeze();
        let range = read_buffer
            .as_ptr_range()
            .start
            .wrapping_sub(BINARY_HEADER_LEN + 1)
            ..read_buffer.as_ptr_range().end;
        let (seq, payload) = decode_binary_message(message).unwrap_or_default();
        assert_eq!((seq, &payload[..]), (7, &b"x"[..]));
        assert!(!inside(range, &payload), "the payload pins the read buffer");
    }
}

/// One WebSocket message to write: JSON batches as text, binary application
/// messages (and negotiated large texts) natively.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WsUnit {
    /// A text message holding a JSON batch.
    Text(String),
    /// A binary message holding one application message (§2.2).
    Binary(Bytes),
}

/// Splits a batch into WebSocket messages, in order: runs of frames become
/// JSON text messages, each binary application message its own binary
/// message. Text messages stay in the JSON runs: for a peer that
/// negotiated native text, see [`websocket_units_with`].
pub fn websocket_units(frames: Vec<crate::wire::Frame>) -> Vec<WsUnit> {
    websocket_units_with(frames, None)
}

/// [`websocket_units`], and with `native_text_min` (`Some` only for a peer
/// that negotiated native text, `PROTOCOL.md` §2.2.1) every text message of
/// at least that many bytes natively too (type `0x02`).
pub fn websocket_units_with(
    frames: Vec<crate::wire::Frame>,
    native_text_min: Option<usize>,
) -> Vec<WsUnit> {
    use crate::wire::{Frame, json};
    // The common case, small texts and control frames only: one JSON
    // batch, without moving the frames into a second vector.
    if !frames.iter().any(|f| travels_natively(f, native_text_min)) {
        if frames.is_empty() {
            return Vec::new();
        }
        return vec![WsUnit::Text(json::encode_batch_to_string(&frames))];
    }
    let mut units = Vec::new();
    let mut text: Vec<Frame> = Vec::new();
    for frame in frames {
        let native = match &frame {
            Frame::Message {
                seq,
                message: Message::Binary(payload),
            } => Some(encode_binary_message(*seq, payload)),
            Frame::Message {
                seq,
                message: Message::Text(t),
            } if travels_natively(&frame, native_text_min) => {
                // Bytes, not `as_str`: a `Text` is UTF-8 already, and
                // `as_str` would check all of it again.
                Some(encode_native(TEXT_MESSAGE_TYPE, *seq, t.as_bytes()))
            }
            _ => None,
        };
        match native {
            Some(bytes) => {
                if !text.is_empty() {
                    units.push(WsUnit::Text(json::encode_batch_to_string(&text)));
                    text.clear();
                }
                units.push(WsUnit::Binary(bytes));
            }
            None => text.push(frame),
        }
    }
    if !text.is_empty() {
        units.push(WsUnit::Text(json::encode_batch_to_string(&text)));
    }
    units
}

/// Whether `frame` goes as a WebSocket message of its own: a binary
/// message always, a text of at least `native_text_min` bytes when the
/// peer negotiated native text.
fn travels_natively(frame: &crate::wire::Frame, native_text_min: Option<usize>) -> bool {
    match frame {
        crate::wire::Frame::Message {
            message: Message::Binary(_),
            ..
        } => true,
        crate::wire::Frame::Message {
            message: Message::Text(t),
            ..
        } => native_text_min.is_some_and(|min| t.len() >= min),
        _ => false,
    }
}
