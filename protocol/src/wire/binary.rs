//! Native binary messages on WebSocket (`PROTOCOL.md` §2.2): one byte of
//! type, eight bytes of sequence number, then the payload.

use bytes::{BufMut, Bytes, BytesMut};

use crate::wire::DecodeError;

/// Type byte of a binary WebSocket message carrying one application message.
pub const BINARY_MESSAGE_TYPE: u8 = 0x01;

/// Length of the header before the payload.
pub const BINARY_HEADER_LEN: usize = 9;

/// Encodes one binary application message as a WebSocket binary message.
pub fn encode_binary_message(seq: u64, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(BINARY_HEADER_LEN + payload.len());
    out.put_u8(BINARY_MESSAGE_TYPE);
    out.put_u64(seq);
    out.put_slice(payload);
    out.freeze()
}

/// Decodes a WebSocket binary message into its sequence number and payload.
///
/// The payload shares the input's memory where
/// [`may_share`](crate::wire::may_share) allows it (the input owns its
/// allocation and is at least 18 bytes long, so the payload is most of it);
/// otherwise it is copied, so that it never pins a larger buffer the input
/// is a view of (a WebSocket library's read buffer).
pub fn decode_binary_message(mut input: Bytes) -> Result<(u64, Bytes), DecodeError> {
    if input.len() < BINARY_HEADER_LEN {
        return Err(DecodeError::BinaryHeader("shorter than its 9-byte header"));
    }
    if input[0] != BINARY_MESSAGE_TYPE {
        return Err(DecodeError::BinaryHeader("unknown type byte"));
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
/// messages natively.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WsUnit {
    /// A text message holding a JSON batch.
    Text(String),
    /// A binary message holding one application message (§2.2).
    Binary(Bytes),
}

/// Splits a batch into WebSocket messages, in order: runs of frames become
/// JSON text messages, each binary application message its own binary
/// message.
pub fn websocket_units(frames: Vec<crate::wire::Frame>) -> Vec<WsUnit> {
    use crate::wire::{Frame, Message, json};
    let mut units = Vec::new();
    let mut text: Vec<Frame> = Vec::new();
    for frame in frames {
        match frame {
            Frame::Message {
                seq,
                message: Message::Binary(payload),
            } => {
                if !text.is_empty() {
                    units.push(WsUnit::Text(json::encode_batch_to_string(&text)));
                    text.clear();
                }
                units.push(WsUnit::Binary(encode_binary_message(seq, &payload)));
            }
            other => text.push(other),
        }
    }
    if !text.is_empty() {
        units.push(WsUnit::Text(json::encode_batch_to_string(&text)));
    }
    units
}
