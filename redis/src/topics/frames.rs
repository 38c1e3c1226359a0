//! The frames the topic scripts publish on a topic's channel, read back
//! into [`TopicEvent`]s: `m<epoch>:<offset>:<stored message>` (the stored
//! message as in [`codec`](crate::codec): binary-safe, kind kept) and `p`
//! (presence changed).

use std::sync::Arc;

use bytes::Bytes;
use holdfast_server::store::{Position, TopicEvent};

use crate::codec::decode_message;

/// The event a frame on `topic`'s channel says; `None` for a frame this
/// crate does not write.
pub(crate) fn decode(topic: &str, frame: &Bytes) -> Option<TopicEvent> {
    match frame.first()? {
        b'p' if frame.len() == 1 => Some(TopicEvent::Presence {
            topic: Arc::from(topic),
        }),
        b'm' => {
            let rest = &frame[1..];
            let (epoch, rest) = number(rest)?;
            let (offset, rest) = number(rest)?;
            let header = frame.len() - rest.len();
            let message = decode_message(frame.slice(header..)).ok()?;
            Some(TopicEvent::Published {
                topic: Arc::from(topic),
                position: Position { epoch, offset },
                message,
            })
        }
        _ => None,
    }
}

/// A decimal number up to a `:`, and what follows the colon.
fn number(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let end = bytes.iter().position(|&b| b == b':')?;
    let text = std::str::from_utf8(&bytes[..end]).ok()?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((text.parse().ok()?, &bytes[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode_message;
    use holdfast_protocol::Message;

    fn frame(epoch: u64, offset: u64, message: &Message) -> Bytes {
        let mut out = format!("m{epoch}:{offset}:").into_bytes();
        out.extend_from_slice(&encode_message(message));
        Bytes::from(out)
    }

    #[test]
    fn published_frames_keep_position_kind_and_bytes() {
        for message in [
            Message::text("a:b:c"),
            Message::binary(vec![b':', 0, 255]),
            Message::text(""),
        ] {
            for (epoch, offset) in [(1, 1), (9_007_199_254_740_991, 10), (42, 100_000)] {
                let event = decode("t", &frame(epoch, offset, &message));
                assert_eq!(
                    event,
                    Some(TopicEvent::Published {
                        topic: Arc::from("t"),
                        position: Position { epoch, offset },
                        message: message.clone(),
                    })
                );
            }
        }
        assert_eq!(
            decode("t", &Bytes::from_static(b"p")),
            Some(TopicEvent::Presence {
                topic: Arc::from("t")
            })
        );
    }

    #[test]
    fn other_frames_are_not_events() {
        for bad in [
            &b""[..],
            b"px",
            b"x",
            b"m1:2",
            b"m1:2:",
            b"m:2:tx",
            b"m1:-2:tx",
            b"m1:2:x",
            b"m1:2:t\xff",
            b"m99999999999999999999:1:tx",
        ] {
            assert_eq!(decode("t", &Bytes::copy_from_slice(bad)), None, "{bad:?}");
        }
    }
}
