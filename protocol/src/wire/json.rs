//! The JSON encoding of batches (`PROTOCOL.md` §2): decoding untrusted input
//! into [`Frame`]s, and encoding frames by hand into a caller's buffer.
//!
//! Decoding reads each frame into one flat set of optional fields (a
//! single-pass reader written for these frames, checked against serde_json
//! in the tests) and then checks, per frame type, that what is required is
//! there: parse, don't validate.

use std::borrow::Cow;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;

use crate::close::CloseCode;
use crate::wire::decode::{self, Fields};
use crate::wire::scan;
use crate::wire::{Close, DecodeError, Frame, Message, OpenParams, Text};

/// Decodes one batch (a JSON array of frames) from bytes, which must be
/// UTF-8.
pub fn decode_batch(input: &[u8]) -> Result<Vec<Frame>, DecodeError> {
    let text = std::str::from_utf8(input).map_err(|_| DecodeError::InvalidUtf8)?;
    decode_batch_str(text)
}

/// Decodes one batch from text already known to be UTF-8 (a WebSocket text
/// message).
pub fn decode_batch_str(input: &str) -> Result<Vec<Frame>, DecodeError> {
    decode::read_batch(input, Fields::into_frame)
}

/// Decodes one batch from `text`, a view of `backing` (a received WebSocket
/// text message). A payload without escapes stays a slice of `backing`
/// (no copy) only where [`may_share`](crate::wire::may_share) allows it:
/// `backing` owns its allocation and the payload is at least half of it.
/// Every other payload is copied into an allocation of its own, so a small
/// message never pins a large frame.
pub fn decode_batch_shared(text: &str, backing: &Bytes) -> Result<Vec<Frame>, DecodeError> {
    let range = backing.as_ptr_range();
    let inside = |s: &str| range.contains(&s.as_ptr()) && s.len() <= backing.len();
    // Asked once: the first slice taken makes `backing` shared. At most one
    // payload can be half of the batch anyway.
    let unique = backing.is_unique();
    decode::read_batch(text, |fields| {
        fields.into_frame_with(|d| match d {
            Cow::Borrowed(s)
                if unique && inside(s) && super::share_rule(backing.len(), s.len()) =>
            {
                Text::shared(backing, s)
            }
            other => owned_text(other),
        })
    })
}

/// `d` in an allocation of its own, no larger than it (an unescaped string
/// grows by doubling).
fn owned_text(d: Cow<'_, str>) -> Text {
    let mut owned = d.into_owned();
    owned.shrink_to_fit();
    Text::from(owned)
}

/// Where encoded JSON goes: a `String` (for WebSocket text messages, no
/// UTF-8 check needed afterwards) or bytes (for HTTP bodies).
pub trait JsonOut {
    /// Appends UTF-8 text.
    fn push_str(&mut self, s: &str);
}

impl JsonOut for String {
    fn push_str(&mut self, s: &str) {
        String::push_str(self, s);
    }
}

impl JsonOut for Vec<u8> {
    fn push_str(&mut self, s: &str) {
        self.extend_from_slice(s.as_bytes());
    }
}

/// Encodes a batch of frames as a JSON array, appending to `out`.
pub fn encode_batch<'a>(frames: impl IntoIterator<Item = &'a Frame>, out: &mut impl JsonOut) {
    out.push_str("[");
    for (i, frame) in frames.into_iter().enumerate() {
        if i > 0 {
            out.push_str(",");
        }
        encode_frame(frame, out);
    }
    out.push_str("]");
}

/// Encodes a batch into a fresh string, sized for it up front (exactly,
/// unless text needs escapes).
pub fn encode_batch_to_string(frames: &[Frame]) -> String {
    let size = 2 + frames
        .iter()
        .map(|f| match f {
            Frame::Message {
                message: Message::Text(t),
                ..
            } => 48 + t.len(),
            Frame::Message {
                message: Message::Binary(b),
                ..
            } => 48 + b.len().div_ceil(3) * 4,
            other => encoded_len_hint(other),
        })
        .sum::<usize>();
    let mut out = String::with_capacity(size);
    encode_batch(frames, &mut out);
    out
}

/// Encodes a batch into fresh bytes.
pub fn encode_batch_to_vec(frames: &[Frame]) -> Vec<u8> {
    encode_batch_to_string(frames).into_bytes()
}

/// Encodes one frame as a JSON object, appending to `out`.
pub fn encode_frame(frame: &Frame, out: &mut impl JsonOut) {
    match frame {
        Frame::Open(p) => {
            out.push_str(r#"{"t":"open","v":"#);
            write_u64(out, u64::from(p.version));
            out.push_str(r#","key":"#);
            write_str(out, &p.key);
            out.push_str(r#","sid":"#);
            write_str(out, &p.session_id);
            out.push_str(r#","ping":"#);
            write_u64(out, millis(p.ping_interval));
            out.push_str(r#","timeout":"#);
            write_u64(out, millis(p.timeout));
            out.push_str(r#","resume":"#);
            write_u64(out, millis(p.resume_window));
            out.push_str(r#","hold":"#);
            write_u64(out, millis(p.poll_hold));
            out.push_str(r#","max_msg":"#);
            write_u64(out, p.max_message as u64);
            out.push_str(r#","max_batch":"#);
            write_u64(out, p.max_batch as u64);
            if let Some(window) = p.window {
                out.push_str(r#","win":"#);
                write_u64(out, window as u64);
            }
            if let Some(mux) = p.mux {
                out.push_str(r#","mux":"#);
                write_u64(out, mux as u64);
            }
            write_native_text(out, p.native_text);
            out.push_str("}");
        }
        Frame::Resumed {
            ack,
            room,
            native_text,
        } => {
            out.push_str(r#"{"t":"resumed","ack":"#);
            write_u64(out, *ack);
            write_room(out, *room);
            write_native_text(out, *native_text);
            out.push_str("}");
        }
        Frame::Message { seq, message } => {
            match message {
                Message::Text(text) => {
                    out.push_str(r#"{"t":"msg","seq":"#);
                    write_u64(out, *seq);
                    out.push_str(r#","d":"#);
                    write_str(out, text.as_str());
                }
                Message::Binary(bytes) => {
                    out.push_str(r#"{"t":"bin","seq":"#);
                    write_u64(out, *seq);
                    out.push_str(r#","d":""#);
                    out.push_str(&BASE64.encode(bytes));
                    out.push_str(r#"""#);
                }
            }
            out.push_str("}");
        }
        Frame::Ack { seq, room } => {
            out.push_str(r#"{"t":"ack","seq":"#);
            write_u64(out, *seq);
            write_room(out, *room);
            out.push_str("}");
        }
        Frame::Ping => out.push_str(r#"{"t":"ping"}"#),
        Frame::Pong => out.push_str(r#"{"t":"pong"}"#),
        Frame::Close(close) => encode_close("close", close, out),
        Frame::Detach(close) => encode_close("detach", close, out),
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
        Frame::Open(p) => 208 + json_str_len(&p.key) + json_str_len(&p.session_id),
        Frame::Close(c) | Frame::Detach(c) => 80 + json_str_len(&c.reason),
        // {"t":"ack","seq":N,"room":N}, N up to 20 digits.
        Frame::Ack { .. } => 80,
        // {"t":"resumed","ack":N,"room":N,"wstext":1}
        Frame::Resumed { .. } => 96,
        _ => 48,
    }
}

/// The length of `s` as a JSON string, quotes included, escaped as
/// [`encode_frame`] escapes it.
pub fn json_str_len(s: &str) -> usize {
    let bytes = s.as_bytes();
    if !scan::any_special(bytes) {
        return 2 + bytes.len();
    }
    2 + bytes
        .iter()
        .map(|&b| escape(b).map_or(1, str::len))
        .sum::<usize>()
}

/// How a byte of a string is escaped in JSON, if it must be (the same
/// escapes as serde_json).
fn escape(byte: u8) -> Option<&'static str> {
    const CONTROL: [&str; 32] = [
        "\\u0000", "\\u0001", "\\u0002", "\\u0003", "\\u0004", "\\u0005", "\\u0006", "\\u0007",
        "\\b", "\\t", "\\n", "\\u000b", "\\f", "\\r", "\\u000e", "\\u000f", "\\u0010", "\\u0011",
        "\\u0012", "\\u0013", "\\u0014", "\\u0015", "\\u0016", "\\u0017", "\\u0018", "\\u0019",
        "\\u001a", "\\u001b", "\\u001c", "\\u001d", "\\u001e", "\\u001f",
    ];
    match byte {
        b'"' => Some("\\\""),
        b'\\' => Some("\\\\"),
        0..=0x1f => Some(CONTROL[usize::from(byte)]),
        _ => None,
    }
}

fn encode_close(t: &str, close: &Close, out: &mut impl JsonOut) {
    out.push_str(r#"{"t":""#);
    out.push_str(t);
    out.push_str(r#"","code":"#);
    write_u64(out, u64::from(close.code.0));
    out.push_str(r#","reason":"#);
    write_str(out, &close.reason);
    if let Some(retry_after) = close.retry_after {
        out.push_str(r#","retry_after":"#);
        write_u64(out, millis(retry_after));
    }
    out.push_str("}");
}

/// The `wstext` field of a greeting that grants native text (§2.2.1).
fn write_native_text(out: &mut impl JsonOut, native_text: bool) {
    if native_text {
        out.push_str(r#","wstext":1"#);
    }
}

/// The `room` field of an `ack` or `resumed`, when it has one.
fn write_room(out: &mut impl JsonOut, room: Option<u64>) {
    if let Some(room) = room {
        out.push_str(r#","room":"#);
        write_u64(out, room);
    }
}

fn write_u64(out: &mut impl JsonOut, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // ASCII digits are UTF-8.
    out.push_str(std::str::from_utf8(&digits[i..]).unwrap_or("0"));
}

/// Writes `s` as a JSON string: runs that need no escape are copied whole.
fn write_str(out: &mut impl JsonOut, s: &str) {
    out.push_str("\"");
    let bytes = s.as_bytes();
    if !scan::any_special(bytes) {
        out.push_str(s);
        out.push_str("\"");
        return;
    }
    let mut run = 0;
    while let Some(offset) = scan::first_special(&bytes[run..]) {
        // Escaped bytes are ASCII, so every cut is on a char boundary.
        let at = run + offset;
        out.push_str(&s[run..at]);
        out.push_str(escape(bytes[at]).unwrap_or(""));
        run = at + 1;
    }
    out.push_str(&s[run..]);
    out.push_str("\"");
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl<'a> Fields<'a> {
    fn into_frame(self) -> Result<Frame, DecodeError> {
        self.into_frame_with(owned_text)
    }

    /// The frame, making message text with `text`.
    fn into_frame_with(
        self,
        text: impl FnOnce(Cow<'a, str>) -> Text,
    ) -> Result<Frame, DecodeError> {
        let t = self.t.as_deref().unwrap_or("");
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
                    message: Message::Text(text(d)),
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
                room: self.room,
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
                room: self.room,
                native_text: self.wstext == Some(1),
            },
            "open" => Frame::Open(OpenParams {
                version: self.v.ok_or_else(|| missing("v"))?,
                key: self.key.ok_or_else(|| missing("key"))?.into_owned(),
                session_id: self.sid.ok_or_else(|| missing("sid"))?.into_owned(),
                ping_interval: Duration::from_millis(self.ping.ok_or_else(|| missing("ping"))?),
                timeout: Duration::from_millis(self.timeout.ok_or_else(|| missing("timeout"))?),
                resume_window: Duration::from_millis(self.resume.ok_or_else(|| missing("resume"))?),
                poll_hold: Duration::from_millis(self.hold.ok_or_else(|| missing("hold"))?),
                max_message: to_usize(self.max_msg.ok_or_else(|| missing("max_msg"))?),
                max_batch: to_usize(self.max_batch.ok_or_else(|| missing("max_batch"))?),
                window: self.win.map(to_usize),
                mux: self.mux.map(to_usize),
                native_text: self.wstext == Some(1),
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

    /// The reference decoder: serde_json into the same fields. The fast
    /// decoder must accept and refuse exactly what this one does.
    #[derive(serde::Deserialize)]
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
        hold: Option<u64>,
        max_msg: Option<u64>,
        max_batch: Option<u64>,
        room: Option<u64>,
        win: Option<u64>,
        mux: Option<u64>,
        wstext: Option<u64>,
    }

    fn decode_reference(input: &[u8]) -> Result<Vec<Frame>, DecodeError> {
        let raw: Vec<RawFrame<'_>> =
            serde_json::from_slice(input).map_err(|e| DecodeError::Json(e.to_string()))?;
        raw.into_iter()
            .map(|r| {
                Fields {
                    t: Some(r.t),
                    seq: r.seq,
                    d: r.d,
                    ack: r.ack,
                    code: r.code,
                    reason: r.reason,
                    retry_after: r.retry_after,
                    v: r.v,
                    key: r.key,
                    sid: r.sid,
                    ping: r.ping,
                    timeout: r.timeout,
                    resume: r.resume,
                    hold: r.hold,
                    max_msg: r.max_msg,
                    max_batch: r.max_batch,
                    room: r.room,
                    win: r.win,
                    mux: r.mux,
                    wstext: r.wstext,
                }
                .into_frame()
            })
            .collect()
    }

    /// Compares the two decoders on one input.
    fn same_as_reference(input: &[u8]) -> Result<(), String> {
        let fast = decode_batch(input);
        let reference = decode_reference(input);
        match (&fast, &reference) {
            (Ok(a), Ok(b)) if a == b => Ok(()),
            (Err(_), Err(_)) => Ok(()),
            _ => Err(format!(
                "{:?}: fast {fast:?}, reference {reference:?}",
                String::from_utf8_lossy(input)
            )),
        }
    }

    #[test]
    fn shared_decoding_slices_payloads_without_escapes() {
        let text = format!(
            r#"[{{"t":"msg","seq":1,"d":"{}"}},{{"t":"msg","seq":2,"d":"a\nb"}}]"#,
            "plain".repeat(40)
        );
        let backing = Bytes::copy_from_slice(text.as_bytes());
        let view = std::str::from_utf8(&backing).unwrap_or_default();
        let frames = decode_batch_shared(view, &backing).unwrap_or_default();
        assert_eq!(frames, decode_batch(text.as_bytes()).unwrap_or_default());
        let Some(Frame::Message {
            message: Message::Text(plain),
            ..
        }) = frames.first()
        else {
            panic!("{frames:?}");
        };
        assert!(
            backing.as_ptr_range().contains(&plain.as_str().as_ptr()),
            "sliced, not copied"
        );
    }

    /// The message payloads of a batch.
    fn payloads(frames: &[Frame]) -> Vec<Bytes> {
        frames
            .iter()
            .filter_map(|f| match f {
                Frame::Message { message, .. } => Some(message.as_bytes().clone()),
                _ => None,
            })
            .collect()
    }

    /// Whether `payload` lies inside `backing`'s memory.
    fn inside(backing: &Bytes, payload: &Bytes) -> bool {
        let range = backing.as_ptr_range();
        !payload.is_empty() && range.start <= payload.as_ptr() && payload.as_ptr() < range.end
    }

    #[test]
    fn a_small_payload_in_a_large_frame_is_copied_out() {
        // One byte of payload in a ~390 KB frame (the rest an unknown field).
        let pad = "p".repeat(390_000);
        let text = format!(r#"[{{"t":"msg","seq":1,"d":"x","pad":"{pad}"}}]"#);
        let backing = Bytes::from(text.into_bytes());
        let view = std::str::from_utf8(&backing).unwrap_or_default();
        let frames = decode_batch_shared(view, &backing).unwrap_or_default();
        let got = payloads(&frames);
        assert_eq!(got, [Bytes::from_static(b"x")]);
        assert!(
            !inside(&backing, &got[0]),
            "the 1-byte payload pins the frame"
        );
        assert!(backing.is_unique(), "nothing else holds the frame");
    }

    #[test]
    fn a_payload_of_most_of_the_frame_stays_zero_copy() {
        let big = "b".repeat(100_000);
        let text = format!(r#"[{{"t":"msg","seq":1,"d":"{big}"}},{{"t":"msg","seq":2,"d":"s"}}]"#);
        let backing = Bytes::from(text.into_bytes());
        let view = std::str::from_utf8(&backing).unwrap_or_default();
        let frames = decode_batch_shared(view, &backing).unwrap_or_default();
        let got = payloads(&frames);
        assert_eq!(got.len(), 2);
        assert!(inside(&backing, &got[0]), "the large payload is a slice");
        assert!(!inside(&backing, &got[1]), "the small one is copied");
    }

    #[test]
    fn a_frame_that_is_a_view_of_a_larger_buffer_is_never_sliced() {
        // As a WebSocket library hands out frames: split off its read
        // buffer, whose allocation may be far larger than the frame.
        let big = "b".repeat(1000);
        let frame = format!(r#"[{{"t":"msg","seq":1,"d":"{big}"}}]"#);
        let mut read_buffer = bytes::BytesMut::with_capacity(400_000);
        read_buffer.extend_from_slice(frame.as_bytes());
        read_buffer.extend_from_slice(b"next frame's bytes");
        let backing = read_buffer.split_to(frame.len()).freeze();
        let view = std::str::from_utf8(&backing).unwrap_or_default();
        let frames = decode_batch_shared(view, &backing).unwrap_or_default();
        let got = payloads(&frames);
        assert_eq!(got.len(), 1);
        assert!(
            !inside(&backing, &got[0]),
            "copied: the read buffer is shared"
        );
        drop(read_buffer);
    }

    #[test]
    fn escaped_payloads_are_copied_without_spare_capacity() {
        let text = format!(r#"[{{"t":"msg","seq":1,"d":"{}"}}]"#, "\\n".repeat(1000));
        let frames = decode_batch(text.as_bytes()).unwrap_or_default();
        let Some(Frame::Message {
            message: Message::Text(t),
            ..
        }) = frames.into_iter().next()
        else {
            panic!("no message");
        };
        assert_eq!(t.as_str(), "\n".repeat(1000));
        // The sole owner of the payload: it becomes a `Vec` without a copy,
        // showing the allocation behind it.
        let bytes = t.into_bytes();
        assert!(bytes.is_unique());
        assert_eq!(Vec::from(bytes).capacity(), 1000);
    }

    #[test]
    fn fast_decoder_agrees_with_serde_on_tricky_inputs() {
        let cases: &[&[u8]] = &[
            br#"[]"#,
            br#" [ ] "#,
            br#"[{"t":"msg","seq":1,"d":"a"}]"#,
            br#"[ { "d" : "a\"b\\c\/\b\f\n\r\t\u00e9\ud83d\ude00" , "seq" : 12 , "t" : "msg" } ]"#,
            br#"[{"t":"msg","seq":1,"d":"\ud800"}]"#,
            br#"[{"t":"msg","seq":1,"d":"\udc00x"}]"#,
            br#"[{"t":"msg","seq":1,"d":"\u00"}]"#,
            br#"[{"t":"msg","seq":1,"d":"a","t":"msg"}]"#,
            br#"[{"t":"msg","seq":01,"d":"a"}]"#,
            br#"[{"t":"msg","seq":1.0,"d":"a"}]"#,
            br#"[{"t":"msg","seq":1e2,"d":"a"}]"#,
            br#"[{"t":"msg","seq":-1,"d":"a"}]"#,
            br#"[{"t":"msg","seq":18446744073709551615,"d":"a"}]"#,
            br#"[{"t":"msg","seq":18446744073709551616,"d":"a"}]"#,
            br#"[{"t":"ack","seq":null}]"#,
            br#"[{"t":null}]"#,
            br#"[{}]"#,
            br#"[{"x":1}]"#,
            br#"[{"t":"ack","seq":3,"x":{"y":[1,-2.5e-3,true,false,null,"z",{}]}}]"#,
            br#"[{"t":"ack","seq":3,"x":-}]"#,
            br#"[{"t":"ack","seq":3,"x":01}]"#,
            br#"[{"t":"ack","seq":3}]x"#,
            br#"[{"t":"ack","seq":3},]"#,
            br#"[{"t":"ack","seq":3,}]"#,
            br#"[{"t":"close","code":70000}]"#,
            br#"[{"t":"close","code":4503,"reason":null,"retry_after":5}]"#,
            br#"[{"t":"open","v":4294967296,"key":"k","sid":"s","ping":1,"timeout":2,"resume":3,"hold":6,"max_msg":4,"max_batch":5}]"#,
            br#"[{"t":"open","v":1,"key":"k","sid":"s","ping":1,"timeout":2,"resume":3,"hold":6,"max_msg":4,"max_batch":5}]"#,
            "[{\"t\":\"msg\",\"seq\":1,\"d\":\"a\u{1}b\"}]".as_bytes(),
            b"[{\"t\":\"msg\",\"seq\":1,\"d\":\"\xff\"}]",
            br#"[{"t":"msg","seq":1,"d":"x"} {"t":"ack","seq":1}]"#,
            br#"[{"\u0074":"ack","seq":1}]"#,
            br#"[{"t":"ack","seq":1},{"t":"ping"},{"t":"pong"}]"#,
            br#"[1]"#,
            br#"{}"#,
            br#""#,
            br#"[{"t":"bin","seq":1,"d":"AAEC/w=="}]"#,
            br#"[{"t":"ack","seq":3,"room":1048576},{"t":"resumed","ack":2,"room":0}]"#,
            br#"[{"t":"ack","seq":3,"room":null},{"t":"ack","seq":3,"room":-1}]"#,
            br#"[{"t":"ack","seq":3,"room":1,"room":2}]"#,
            br#"[{"t":"open","v":1,"key":"k","sid":"s","ping":1,"timeout":2,"resume":3,"hold":6,"max_msg":4,"max_batch":5,"win":7}]"#,
            br#"[{"t":"open","v":1,"key":"k","sid":"s","ping":1,"timeout":2,"resume":3,"hold":6,"max_msg":4,"max_batch":5,"win":7,"mux":64}]"#,
            br#"[{"t":"open","v":1,"key":"k","sid":"s","ping":1,"timeout":2,"resume":3,"hold":6,"max_msg":4,"max_batch":5,"mux":"x"}]"#,
        ];
        for input in cases {
            if let Err(e) = same_as_reference(input) {
                panic!("{e}");
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Valid batches of every frame, mutated: the two decoders agree
        /// on every input.
        #[test]
        fn fast_decoder_agrees_with_serde_on_generated_input(
            seqs in proptest::collection::vec(0u64..u64::MAX, 0..4),
            text in "\\PC{0,12}",
            cut in proptest::option::of(0usize..400),
            flip in proptest::option::of((0usize..400, proptest::prelude::any::<u8>())),
        ) {
            let mut frames = Vec::new();
            for (i, seq) in seqs.iter().enumerate() {
                frames.push(match i % 4 {
                    0 => Frame::Message { seq: seq.saturating_add(1), message: Message::text(text.clone()) },
                    1 => Frame::Message { seq: seq.saturating_add(1), message: Message::binary(text.clone().into_bytes()) },
                    2 => Frame::Ack { seq: *seq, room: (i % 8 == 2).then_some(*seq / 3) },
                    _ => Frame::close(CloseCode(u16::try_from(*seq % 65536).unwrap_or(0)), text.clone()),
                });
            }
            let mut input = encode_batch_to_vec(&frames);
            proptest::prop_assert_eq!(decode_batch(&input), Ok(frames));
            if let Some((at, byte)) = flip {
                if let Some(b) = input.get_mut(at) {
                    *b = byte;
                }
            }
            if let Some(cut) = cut {
                input.truncate(cut);
            }
            let verdict = same_as_reference(&input);
            proptest::prop_assert!(verdict.is_ok(), "{}", verdict.unwrap_err());
        }
    }

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
                poll_hold: Duration::from_secs(25),
                max_message: 65536,
                max_batch: 397_312,
                window: Some(1 << 20),
                mux: Some(64),
                native_text: true,
            }),
            Frame::Resumed {
                ack: 17,
                room: Some(1000),
                native_text: false,
            },
            Frame::Resumed {
                ack: 18,
                room: None,
                native_text: true,
            },
            Frame::Message {
                seq: 1,
                message: Message::text("hé \"llo\"\n\u{1}"),
            },
            Frame::Message {
                seq: 2,
                message: Message::binary(vec![0, 1, 2, 255]),
            },
            Frame::ack(42),
            Frame::Ack {
                seq: 43,
                room: Some(0),
            },
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
            Ok(vec![Frame::ack(3)])
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
            let mut out = String::new();
            encode_frame(&frame, &mut out);
            assert_eq!(out.len(), encoded_len_hint(&frame), "{frame:?}");
        }
        for frame in [
            Frame::Ack {
                seq: u64::MAX,
                room: Some(u64::MAX),
            },
            Frame::Resumed {
                ack: u64::MAX,
                room: Some(u64::MAX),
                native_text: true,
            },
            Frame::close(CloseCode::NORMAL, "a \u{1} reason"),
        ] {
            let mut out = String::new();
            encode_frame(&frame, &mut out);
            assert!(out.len() <= encoded_len_hint(&frame), "{frame:?}");
        }
    }
}
