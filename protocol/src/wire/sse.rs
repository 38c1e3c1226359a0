//! `text/event-stream` (`PROTOCOL.md` §8.2): encoding batches as events on
//! the server, and an incremental parser for clients that read the stream
//! themselves (fetch streams, reqwest) instead of through `EventSource`.

use crate::wire::{DecodeError, Frame, json};

/// Appends one event carrying `frames` as its batch. The `id:` line is the
/// seq of the last message in the batch, so `Last-Event-ID` resumes.
pub fn encode_event(frames: &[Frame], out: &mut Vec<u8>) {
    let last_seq = frames.iter().rev().find_map(|f| match f {
        Frame::Message { seq, .. } => Some(*seq),
        _ => None,
    });
    if let Some(seq) = last_seq {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(seq.to_string().as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    json::encode_batch(frames, out);
    out.extend_from_slice(b"\n\n");
}

/// Appends a comment line of about `len` bytes, used as the padding prelude
/// that makes some proxies start forwarding a stream.
pub fn encode_padding(len: usize, out: &mut Vec<u8>) {
    out.push(b':');
    out.resize(out.len() + len.saturating_sub(2), b' ');
    out.push(b'\n');
}

/// One item read from an event stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SseItem {
    /// A dispatched event: its `id:` (if the event had one) and its data.
    Event {
        /// The event's own `id:` field, if it carried one.
        id: Option<String>,
        /// The data lines, joined with `\n`.
        data: String,
    },
    /// A comment line (keep-alive or padding): proof the stream is alive.
    Comment,
}

/// Incremental `text/event-stream` parser: feed it chunks as they arrive,
/// in any sizes, and it yields items as lines complete.
#[derive(Debug)]
pub struct SseParser {
    line: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    id: Option<String>,
    after_cr: bool,
    max_event_bytes: usize,
}

impl SseParser {
    /// A parser refusing events (or lines) longer than `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            line: Vec::new(),
            data: Vec::new(),
            has_data: false,
            id: None,
            after_cr: false,
            max_event_bytes,
        }
    }

    /// Feeds a chunk; complete items are appended to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<SseItem>) -> Result<(), DecodeError> {
        for &byte in chunk {
            let after_cr = std::mem::replace(&mut self.after_cr, false);
            match byte {
                b'\n' if after_cr => {} // the \n of a \r\n, already handled
                b'\n' => self.end_line(out)?,
                b'\r' => {
                    self.after_cr = true;
                    self.end_line(out)?;
                }
                _ => {
                    if self.line.len() + self.data.len() >= self.max_event_bytes {
                        return Err(DecodeError::Json(format!(
                            "event longer than {} bytes",
                            self.max_event_bytes
                        )));
                    }
                    self.line.push(byte);
                }
            }
        }
        Ok(())
    }

    fn end_line(&mut self, out: &mut Vec<SseItem>) -> Result<(), DecodeError> {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            if self.has_data {
                let data = String::from_utf8(std::mem::take(&mut self.data))
                    .map_err(|_| DecodeError::InvalidUtf8)?;
                out.push(SseItem::Event {
                    id: self.id.take(),
                    data,
                });
                self.has_data = false;
            }
            self.id = None;
            return Ok(());
        }
        if line[0] == b':' {
            out.push(SseItem::Comment);
            return Ok(());
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (&line[..], &[][..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"id" => {
                self.id =
                    Some(String::from_utf8(value.to_vec()).map_err(|_| DecodeError::InvalidUtf8)?);
            }
            _ => {} // `event:`, `retry:` and unknown fields are ignored
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Message;

    #[test]
    fn encodes_id_of_last_message_only_when_there_are_messages() {
        let mut out = Vec::new();
        encode_event(
            &[
                Frame::Message {
                    seq: 41,
                    message: Message::text("hi"),
                },
                Frame::Message {
                    seq: 42,
                    message: Message::text("there"),
                },
            ],
            &mut out,
        );
        encode_event(&[Frame::Ping], &mut out);
        assert_eq!(
            String::from_utf8(out).ok().as_deref(),
            Some(concat!(
                "id: 42\n",
                r#"data: [{"t":"msg","seq":41,"d":"hi"},{"t":"msg","seq":42,"d":"there"}]"#,
                "\n\n",
                r#"data: [{"t":"ping"}]"#,
                "\n\n"
            ))
        );
    }

    #[test]
    fn parses_byte_by_byte_with_any_line_endings() {
        let stream = b":padding\r\n\r\nid: 7\r\ndata: a\rdata: b\n\nevent: x\ndata:c\n\n";
        let mut parser = SseParser::new(1024);
        let mut items = Vec::new();
        for byte in stream {
            parser.feed(&[*byte], &mut items).ok();
        }
        assert_eq!(
            items,
            vec![
                SseItem::Comment,
                SseItem::Event {
                    id: Some("7".into()),
                    data: "a\nb".into()
                },
                SseItem::Event {
                    id: None,
                    data: "c".into()
                },
            ]
        );
    }

    #[test]
    fn refuses_endless_events() {
        let mut parser = SseParser::new(16);
        let mut items = Vec::new();
        assert!(parser.feed(&[b'x'; 64], &mut items).is_err());
    }

    #[test]
    fn padding_is_a_comment_of_the_asked_size() {
        let mut out = Vec::new();
        encode_padding(2048, &mut out);
        assert_eq!(out.len(), 2048);
        let mut items = Vec::new();
        SseParser::new(4096).feed(&out, &mut items).ok();
        assert_eq!(items, vec![SseItem::Comment]);
    }
}
