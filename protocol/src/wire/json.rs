//! The JSON encoding of batches (`PROTOCOL.md` §2): decoding untrusted input
//! into [`Frame`]s, and encoding frames by hand into a caller's buffer.
//!
//! Decoding goes through one flat struct of optional fields (fast with serde,
//! no buffering of internally tagged enums) and then checks, per frame type,
//! that what is required is there: parse, don't validate.

use std::borrow::Cow;
use std::io::Write as _;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::Deserialize;

use crate::close::CloseCode;
use crate::wire::{Close, DecodeError, Frame, Message, OpenParams, Text};

/// Decodes one batch (a JSON array of frames).
pub fn decode_batch(input: &[u8]) -> Result<Vec<Frame>, DecodeError> {
    let raw: Vec<RawFrame<'_>> =
        serde_json::from_slice(input).map_err(|e| DecodeError::Json(e.to_string()))?;
    raw.into_iter().map(RawFrame::into_frame).collect()
}

/// Encodes a batch of frames as a JSON array, appending to `out`.
pub fn encode_batch<'a>(frames: impl IntoIterator<Item = &'a Frame>, out: &mut Vec<u8>) {
    out.push(b'[');
    for (i, frame) in frames.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        encode_frame(frame, out);
    }
    out.push(b']');
}

/// Encodes a batch into a fresh buffer.
pub fn encode_batch_to_vec<'a>(frames: impl IntoIterator<Item = &'a Frame>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    encode_batch(frames, &mut out);
    out
}

/// Encodes one frame as a JSON object, appending to `out`.
pub fn encode_frame(frame: &Frame, out: &mut Vec<u8>) {
    match frame {
        Frame::Open(p) => {
            out.extend_from_slice(b"{\"t\":\"open\",\"v\":");
            write_u64(out, u64::from(p.version));
            out.extend_from_slice(b",\"key\":");
            write_str(out, &p.key);
            out.extend_from_slice(b",\"sid\":");
            write_str(out, &p.session_id);
            out.extend_from_slice(b",\"ping\":");
            write_u64(out, millis(p.ping_interval));
            out.extend_from_slice(b",\"timeout\":");
            write_u64(out, millis(p.timeout));
            out.extend_from_slice(b",\"resume\":");
            write_u64(out, millis(p.resume_window));
            out.extend_from_slice(b",\"max_msg\":");
            write_u64(out, p.max_message as u64);
            out.extend_from_slice(b",\"max_batch\":");
            write_u64(out, p.max_batch as u64);
            out.push(b'}');
        }
        Frame::Resumed { ack } => {
            out.extend_from_slice(b"{\"t\":\"resumed\",\"ack\":");
            write_u64(out, *ack);
            out.push(b'}');
        }
        Frame::Message { seq, message } => {
            match message {
                Message::Text(text) => {
                    out.extend_from_slice(b"{\"t\":\"msg\",\"seq\":");
                    write_u64(out, *seq);
                    out.extend_from_slice(b",\"d\":");
                    write_str(out, text.as_str());
                }
                Message::Binary(bytes) => {
                    out.extend_from_slice(b"{\"t\":\"bin\",\"seq\":");
                    write_u64(out, *seq);
                    out.extend_from_slice(b",\"d\":\"");
                    write_base64(out, bytes);
                    out.push(b'"');
                }
            }
            out.push(b'}');
        }
        Frame::Ack { seq } => {
            out.extend_from_slice(b"{\"t\":\"ack\",\"seq\":");
            write_u64(out, *seq);
            out.push(b'}');
        }
        Frame::Ping => out.extend_from_slice(b"{\"t\":\"ping\"}"),
        Frame::Pong => out.extend_from_slice(b"{\"t\":\"pong\"}"),
        Frame::Close(close) => encode_close(b"close", close, out),
        Frame::Detach(close) => encode_close(b"detach", close, out),
    }
}

/// A frame's encoded size, for cutting batches by bytes without encoding
/// twice: exact for messages (escaping included), an upper bound for the
/// other frames.
pub fn encoded_len_hint(frame: &Frame) -> usize {
    match frame {
        Frame::Message { seq, message } => {
            let digits = seq.checked_ilog10().unwrap_or(0) as usize + 1;
            match message {
                // {"t":"msg","seq":N,"d":"…"}
                Message::Text(t) => 23 + digits + json_str_len(t.as_str()),
                // {"t":"bin","seq":N,"d":"…"}
                Message::Binary(b) => 25 + digits + b.len().div_ceil(3) * 4,
            }
        }
        Frame::Open(p) => 160 + json_str_len(&p.key) + json_str_len(&p.session_id),
        Frame::Close(c) | Frame::Detach(c) => 80 + json_str_len(&c.reason),
        _ => 48,
    }
}

/// The length of `s` as a JSON string, quotes included, escaped the way
/// serde_json escapes (and so [`encode_frame`]).
pub fn json_str_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

fn encode_close(t: &[u8], close: &Close, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"t\":\"");
    out.extend_from_slice(t);
    out.extend_from_slice(b"\",\"code\":");
    write_u64(out, u64::from(close.code.0));
    out.extend_from_slice(b",\"reason\":");
    write_str(out, &close.reason);
    if let Some(retry_after) = close.retry_after {
        out.extend_from_slice(b",\"retry_after\":");
        write_u64(out, millis(retry_after));
    }
    out.push(b'}');
}

fn write_u64(out: &mut Vec<u8>, n: u64) {
    // `write!` into a Vec cannot fail.
    let _ = write!(out, "{n}");
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping; writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn write_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = out.len();
    out.resize(start + bytes.len().div_ceil(3) * 4, 0);
    let written = BASE64.encode_slice(bytes, &mut out[start..]).unwrap_or(0);
    out.truncate(start + written);
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Every field any frame type may carry; which ones are required depends on
/// `t`. Unknown fields are ignored (`PROTOCOL.md` §10).
#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(borrow)]
    t: Cow<'a, str>,
    seq: Option<u64>,
    #[serde(borrow)]
    d: Option<Cow<'a, str>>,
    ack: Option<u64>,
    code: Option<u16>,
    #[serde(borrow)]
    reason: Option<Cow<'a, str>>,
    retry_after: Option<u64>,
    v: Option<u32>,
    #[serde(borrow)]
    key: Option<Cow<'a, str>>,
    #[serde(borrow)]
    sid: Option<Cow<'a, str>>,
    ping: Option<u64>,
    timeout: Option<u64>,
    resume: Option<u64>,
    max_msg: Option<u64>,
    max_batch: Option<u64>,
}

impl RawFrame<'_> {
    fn into_frame(self) -> Result<Frame, DecodeError> {
        let t = self.t.as_ref();
        let missing = |field: &'static str| DecodeError::MissingField {
            frame: t.to_owned(),
            field,
        };
        Ok(match t {
            "msg" => {
                let seq = self.seq.ok_or_else(|| missing("seq"))?;
                let d = self.d.ok_or_else(|| missing("d"))?;
                Frame::Message {
                    seq: nonzero_seq(seq)?,
                    message: Message::Text(Text::from(d.into_owned())),
                }
            }
            "bin" => {
                let seq = self.seq.ok_or_else(|| missing("seq"))?;
                let d = self.d.ok_or_else(|| missing("d"))?;
                let bytes = BASE64
                    .decode(d.as_bytes())
                    .map_err(|_| DecodeError::InvalidBase64)?;
                Frame::Message {
                    seq: nonzero_seq(seq)?,
                    message: Message::Binary(Bytes::from(bytes)),
                }
            }
            "ack" => Frame::Ack {
                seq: self.seq.ok_or_else(|| missing("seq"))?,
            },
            "ping" => Frame::Ping,
            "pong" => Frame::Pong,
            "close" | "detach" => {
                let close = Close {
                    code: CloseCode(self.code.ok_or_else(|| missing("code"))?),
                    reason: Cow::Owned(self.reason.map(Cow::into_owned).unwrap_or_default()),
                    retry_after: self.retry_after.map(Duration::from_millis),
                };
                if t == "close" {
                    Frame::Close(close)
                } else {
                    Frame::Detach(close)
                }
            }
            "resumed" => Frame::Resumed {
                ack: self.ack.ok_or_else(|| missing("ack"))?,
            },
            "open" => Frame::Open(OpenParams {
                version: self.v.ok_or_else(|| missing("v"))?,
                key: self.key.ok_or_else(|| missing("key"))?.into_owned(),
                session_id: self.sid.ok_or_else(|| missing("sid"))?.into_owned(),
                ping_interval: Duration::from_millis(self.ping.ok_or_else(|| missing("ping"))?),
                timeout: Duration::from_millis(self.timeout.ok_or_else(|| missing("timeout"))?),
                resume_window: Duration::from_millis(self.resume.ok_or_else(|| missing("resume"))?),
                max_message: to_usize(self.max_msg.ok_or_else(|| missing("max_msg"))?),
                max_batch: to_usize(self.max_batch.ok_or_else(|| missing("max_batch"))?),
            }),
            other => return Err(DecodeError::UnknownFrameType(other.to_owned())),
        })
    }
}

fn nonzero_seq(seq: u64) -> Result<u64, DecodeError> {
    if seq == 0 {
        Err(DecodeError::ZeroSeq)
    } else {
        Ok(seq)
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(frames: Vec<Frame>) {
        let encoded = encode_batch_to_vec(&frames);
        assert_eq!(decode_batch(&encoded), Ok(frames));
    }

    #[test]
    fn every_frame_type_roundtrips() {
        roundtrip(vec![
            Frame::Open(OpenParams {
                version: 1,
                key: "k\"ey".into(),
                session_id: "sid".into(),
                ping_interval: Duration::from_secs(20),
                timeout: Duration::from_secs(40),
                resume_window: Duration::from_secs(120),
                max_message: 65536,
                max_batch: 397_312,
            }),
            Frame::Resumed { ack: 17 },
            Frame::Message {
                seq: 1,
                message: Message::text("hé \"llo\"\n\u{1}"),
            },
            Frame::Message {
                seq: 2,
                message: Message::binary(vec![0, 1, 2, 255]),
            },
            Frame::Ack { seq: 42 },
            Frame::Ping,
            Frame::Pong,
            Frame::close(CloseCode::NORMAL, "bye"),
            Frame::Close(
                Close::new(CloseCode::OVERLOADED, "busy")
                    .with_retry_after(Duration::from_millis(5000)),
            ),
            Frame::detach(CloseCode::REPLACED, ""),
        ]);
        roundtrip(vec![]);
    }

    #[test]
    fn encodes_the_documented_examples() {
        let frames = vec![
            Frame::Message {
                seq: 19,
                message: Message::binary(vec![0, 1, 2, 255]),
            },
            Frame::Close(
                Close::new(CloseCode::OVERLOADED, "too many sessions")
                    .with_retry_after(Duration::from_secs(5)),
            ),
        ];
        assert_eq!(
            String::from_utf8(encode_batch_to_vec(&frames))
                .ok()
                .as_deref(),
            Some(
                r#"[{"t":"bin","seq":19,"d":"AAEC/w=="},{"t":"close","code":4503,"reason":"too many sessions","retry_after":5000}]"#
            )
        );
    }

    #[test]
    fn ignores_unknown_fields_but_not_unknown_types() {
        assert_eq!(
            decode_batch(br#"[{"t":"ack","seq":3,"future":true}]"#),
            Ok(vec![Frame::Ack { seq: 3 }])
        );
        assert_eq!(
            decode_batch(br#"[{"t":"nope"}]"#),
            Err(DecodeError::UnknownFrameType("nope".into()))
        );
    }

    #[test]
    fn refuses_malformed_input_with_a_clear_error() {
        assert!(matches!(decode_batch(b"{}"), Err(DecodeError::Json(_))));
        assert!(matches!(decode_batch(b"[1]"), Err(DecodeError::Json(_))));
        assert!(matches!(decode_batch(b""), Err(DecodeError::Json(_))));
        assert_eq!(
            decode_batch(br#"[{"t":"msg","seq":1}]"#),
            Err(DecodeError::MissingField {
                frame: "msg".into(),
                field: "d"
            })
        );
        assert_eq!(
            decode_batch(br#"[{"t":"bin","seq":1,"d":"!!"}]"#),
            Err(DecodeError::InvalidBase64)
        );
        assert_eq!(
            decode_batch(br#"[{"t":"msg","seq":0,"d":""}]"#),
            Err(DecodeError::ZeroSeq)
        );
        assert!(matches!(
            decode_batch(br#"[{"t":"ack","seq":-1}]"#),
            Err(DecodeError::Json(_))
        ));
    }

    #[test]
    fn size_hint_is_exact_for_messages_however_escaped() {
        let all_ascii: String = (0u8..128).map(char::from).collect();
        for (seq, message) in [
            (u64::MAX, Message::text("x".repeat(1000))),
            (1, Message::text(all_ascii.repeat(3))),
            (9, Message::text("\u{2028}é\"\\\u{1}\u{7f}")),
            (10, Message::text("")),
            (99_999, Message::binary(vec![7u8; 1001])),
            (100_000, Message::binary(vec![])),
        ] {
            let frame = Frame::Message { seq, message };
            let mut out = Vec::new();
            encode_frame(&frame, &mut out);
            assert_eq!(out.len(), encoded_len_hint(&frame), "{frame:?}");
        }
        for frame in [
            Frame::Ack { seq: u64::MAX },
            Frame::Resumed { ack: u64::MAX },
            Frame::close(CloseCode::NORMAL, "a \u{1} reason"),
        ] {
            let mut out = Vec::new();
            encode_frame(&frame, &mut out);
            assert!(out.len() <= encoded_len_hint(&frame), "{frame:?}");
        }
    }
}
