//! How values are laid out in Redis: messages (one byte of kind, then the
//! payload), the kept headers (length-prefixed pairs), the session's topic
//! cursors (one line each), and the replies of the scripts read back into
//! the store's types.

use bytes::{BufMut, Bytes, BytesMut};
use fred::types::Value;
use holdfast_protocol::Message;
use holdfast_protocol::wire::Text;
use holdfast_server::store::{
    NewSession, Position, Progress, Snapshot, StoreError, StoredClose, valid_topic_name,
};

/// First byte of a stored text message.
const TEXT: u8 = b't';
/// First byte of a stored binary message.
const BINARY: u8 = b'b';

/// A message as stored: its kind, then its bytes (binary-safe).
pub(crate) fn encode_message(message: &Message) -> Bytes {
    let (kind, payload): (u8, &[u8]) = match message {
        Message::Text(text) => (TEXT, text.as_bytes()),
        Message::Binary(bytes) => (BINARY, bytes),
    };
    let mut out = BytesMut::with_capacity(1 + payload.len());
    out.put_u8(kind);
    out.put_slice(payload);
    out.freeze()
}

/// A stored message back; an error names what is wrong with it.
pub(crate) fn decode_message(stored: Bytes) -> Result<Message, StoreError> {
    match stored.first() {
        Some(&TEXT) => Text::from_utf8(stored.slice(1..))
            .map(Message::Text)
            .map_err(|_| corrupt("a stored text message is not UTF-8")),
        Some(&BINARY) => Ok(Message::Binary(stored.slice(1..))),
        _ => Err(corrupt("a stored message has no known kind")),
    }
}

/// The kept headers as one value: for each pair, the name's length (u32,
/// big endian), the name, the value's length, the value.
pub(crate) fn encode_headers(headers: &[(String, Vec<u8>)]) -> Bytes {
    let len: usize = headers.iter().map(|(n, v)| 8 + n.len() + v.len()).sum();
    let mut out = BytesMut::with_capacity(len);
    for (name, value) in headers {
        put_chunk(&mut out, name.as_bytes());
        put_chunk(&mut out, value);
    }
    out.freeze()
}

fn put_chunk(out: &mut BytesMut, chunk: &[u8]) {
    // Header sizes are bounded by the server (max_kept_header_bytes), far
    // below 4 GiB.
    out.put_u32(u32::try_from(chunk.len()).unwrap_or(u32::MAX));
    out.put_slice(chunk);
}

/// The kept headers back from [`encode_headers`].
pub(crate) fn decode_headers(mut stored: &[u8]) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let mut headers = Vec::new();
    while !stored.is_empty() {
        let name = take_chunk(&mut stored)?;
        let value = take_chunk(&mut stored)?;
        let name = String::from_utf8(name.to_vec())
            .map_err(|_| corrupt("a stored header name is not UTF-8"))?;
        headers.push((name, value.to_vec()));
    }
    Ok(headers)
}

fn take_chunk<'a>(stored: &mut &'a [u8]) -> Result<&'a [u8], StoreError> {
    let bad = || corrupt("the stored headers are truncated");
    let (len, rest) = stored.split_first_chunk::<4>().ok_or_else(bad)?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err(bad());
    }
    let (chunk, rest) = rest.split_at(len);
    *stored = rest;
    Ok(chunk)
}

/// A session's topic cursors as one value: a line `<topic> <epoch>
/// <offset>` per topic. Topic names are printable ASCII without spaces
/// (see [`valid_topic_name`]), so the layout is unambiguous; a name that
/// is not valid is refused (a bug in the caller), nothing is written.
pub(crate) fn encode_cursors(cursors: &[(String, Position)]) -> Result<Bytes, StoreError> {
    let mut out = String::with_capacity(cursors.len() * 48);
    for (topic, position) in cursors {
        if !valid_topic_name(topic) {
            return Err(StoreError::Unavailable(format!(
                "write refused (a bug in the caller): {:?} is not a valid topic name",
                topic.escape_debug().to_string()
            )));
        }
        out.push_str(&format!("{topic} {} {}\n", position.epoch, position.offset));
    }
    Ok(Bytes::from(out))
}

/// The cursors back from [`encode_cursors`].
pub(crate) fn decode_cursors(stored: &[u8]) -> Result<Vec<(String, Position)>, StoreError> {
    let bad = || corrupt("the stored topic cursors are malformed");
    let text = std::str::from_utf8(stored).map_err(|_| bad())?;
    text.lines()
        .map(|line| {
            let mut parts = line.split(' ');
            let (Some(topic), Some(epoch), Some(offset), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(bad());
            };
            let position = Position {
                epoch: epoch.parse().map_err(|_| bad())?,
                offset: offset.parse().map_err(|_| bad())?,
            };
            if !valid_topic_name(topic) {
                return Err(bad());
            }
            Ok((topic.to_owned(), position))
        })
        .collect()
}

/// An error for data in Redis that this crate did not write (or a bug).
pub(crate) fn corrupt(what: &str) -> StoreError {
    StoreError::Unavailable(format!("corrupt session record in Redis: {what}"))
}

/// The bytes of a bulk string reply.
pub(crate) fn bytes_of(value: &Value) -> Option<Bytes> {
    match value {
        Value::Bytes(bytes) => Some(bytes.clone()),
        Value::String(s) => Some(s.inner().clone()),
        Value::Integer(n) => Some(Bytes::from(n.to_string())),
        _ => None,
    }
}

/// A number in a reply (Redis hands hash fields back as strings).
pub(crate) fn number_of(value: &Value) -> Option<u64> {
    match value {
        Value::Integer(n) => u64::try_from(*n).ok(),
        other => std::str::from_utf8(&bytes_of(other)?).ok()?.parse().ok(),
    }
}

/// The items of an array reply (a nil or an empty reply is no items).
pub(crate) fn array_of(value: Value) -> Result<Vec<Value>, StoreError> {
    match value {
        Value::Array(items) => Ok(items),
        Value::Null => Ok(Vec::new()),
        other => Err(corrupt(&format!(
            "expected an array, got {:?}",
            other.kind()
        ))),
    }
}

/// The session's meta hash, as a `HGETALL` reply (name, value, name, …).
pub(crate) struct Meta(Vec<(Bytes, Bytes)>);

impl Meta {
    /// Reads a flat `HGETALL` reply.
    pub(crate) fn parse(reply: Value) -> Result<Self, StoreError> {
        let items = array_of(reply)?;
        let mut pairs = Vec::with_capacity(items.len() / 2);
        let mut it = items.iter();
        while let (Some(name), Some(value)) = (it.next(), it.next()) {
            let name = bytes_of(name).ok_or_else(|| corrupt("a field name is not a string"))?;
            let value = bytes_of(value).ok_or_else(|| corrupt("a field value is not a string"))?;
            pairs.push((name, value));
        }
        Ok(Self(pairs))
    }

    fn get(&self, field: &str) -> Option<&Bytes> {
        self.0
            .iter()
            .find(|(name, _)| name.as_ref() == field.as_bytes())
            .map(|(_, value)| value)
    }

    fn text(&self, field: &str) -> Result<Option<String>, StoreError> {
        self.get(field)
            .map(|v| {
                String::from_utf8(v.to_vec())
                    .map_err(|_| corrupt(&format!("field {field} is not UTF-8")))
            })
            .transpose()
    }

    fn number(&self, field: &str) -> Result<u64, StoreError> {
        let value = self
            .get(field)
            .ok_or_else(|| corrupt(&format!("field {field} is missing")))?;
        std::str::from_utf8(value)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| corrupt(&format!("field {field} is not a number")))
    }

    fn flag(&self, field: &str) -> bool {
        self.get(field).is_some_and(|v| v.as_ref() == b"1")
    }

    /// The snapshot this record and its two lists make.
    pub(crate) fn snapshot(
        &self,
        outbound: Vec<Value>,
        inbound: Vec<Value>,
    ) -> Result<Snapshot, StoreError> {
        let session = NewSession {
            session_id: self.text("sid")?.unwrap_or_default(),
            identity: self.text("ident")?,
            headers: decode_headers(self.get("hdr").map(|v| v.as_ref()).unwrap_or_default())?,
        };
        let acked = self.number("acked")?;
        let done = self.number("done")?;
        let close = match self.get("cc") {
            None => None,
            Some(_) => Some(StoredClose {
                code: u16::try_from(self.number("cc")?)
                    .map_err(|_| corrupt("the close code is out of range"))?,
                reason: self.text("cr")?.unwrap_or_default(),
                by_client: self.flag("cb"),
            }),
        };
        Ok(Snapshot {
            session,
            epoch: self.number("epoch")?,
            opened: self.flag("opened"),
            acked,
            outbound: numbered(acked, outbound)?,
            received: self.number("recv")?,
            inbound: numbered(done, inbound)?,
            progress: Progress {
                done,
                current: self.number("cur")?,
                sends: self.number("sends")?,
            },
            close,
            cursors: decode_cursors(self.get("tc").map(|v| v.as_ref()).unwrap_or_default())?,
        })
    }
}

/// A stored list whose first item has sequence number `before + 1`.
fn numbered(before: u64, items: Vec<Value>) -> Result<Vec<(u64, Message)>, StoreError> {
    items
        .iter()
        .zip(before + 1..)
        .map(|(item, seq)| {
            let stored = bytes_of(item).ok_or_else(|| corrupt("a stored message is not bytes"))?;
            Ok((seq, decode_message(stored)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_keep_their_kind_and_bytes() {
        for message in [
            Message::text("héllo"),
            Message::text(""),
            Message::binary(vec![0u8, 255, b't', 0]),
            Message::binary(Vec::new()),
        ] {
            assert_eq!(decode_message(encode_message(&message)).ok(), Some(message));
        }
    }

    #[test]
    fn bad_stored_messages_are_errors() {
        assert!(decode_message(Bytes::new()).is_err());
        assert!(decode_message(Bytes::from_static(b"x")).is_err());
        assert!(decode_message(Bytes::from_static(b"t\xff")).is_err());
    }

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        let cursors = vec![
            (
                "chat:lobby/1".to_owned(),
                Position {
                    epoch: 7,
                    offset: 12,
                },
            ),
            (
                "x".repeat(200),
                Position {
                    epoch: u64::MAX,
                    offset: 0,
                },
            ),
        ];
        let stored = encode_cursors(&cursors).unwrap_or_default();
        assert_eq!(decode_cursors(&stored).ok(), Some(cursors));
        assert_eq!(decode_cursors(b"").ok(), Some(Vec::new()));
        for bad in ["a b", "", "a{b", "é"] {
            let cursor = vec![(bad.to_owned(), Position::default())];
            assert!(encode_cursors(&cursor).is_err(), "{bad:?}");
        }
        for bad in [
            &b"t 1\n"[..],
            b"t 1 2 3\n",
            b"t x 2\n",
            b"t{ 1 2\n",
            b"\xff 1 2",
        ] {
            assert!(decode_cursors(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn headers_round_trip_and_truncation_is_an_error() {
        let headers = vec![
            ("x-a".to_owned(), b"1".to_vec()),
            ("cookie".to_owned(), vec![0, 1, 2]),
            ("empty".to_owned(), Vec::new()),
        ];
        let stored = encode_headers(&headers);
        assert_eq!(decode_headers(&stored).ok(), Some(headers));
        assert!(decode_headers(&stored[..stored.len() - 1]).is_err());
        assert!(decode_headers(&[0, 0]).is_err());
    }
}
