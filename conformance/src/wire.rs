//! The wire format of `PROTOCOL.md` §2, written from the document alone:
//! frames as JSON objects with a `t` field, batches as JSON arrays, the
//! 9-byte header of native WebSocket binary messages (§2.2) and an
//! event-stream parser for SSE (§8.2, with the line rules of the HTML
//! `EventSource` specification).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

/// The largest integer the protocol allows (§2: numbers fit in 53 bits).
pub const MAX_SAFE: u64 = (1 << 53) - 1;

/// One application message payload, as the client sees it.
#[derive(Clone, PartialEq, Eq)]
pub enum Payload {
    /// A text message (`msg` frame).
    Text(String),
    /// A binary message (`bin` frame or native WebSocket binary message).
    Binary(Vec<u8>),
}

impl Payload {
    /// Payload length in bytes (UTF-8 bytes of a text, raw bytes of a binary),
    /// which is what `max_msg` limits.
    pub fn len(&self) -> usize {
        match self {
            Self::Text(t) => t.len(),
            Self::Binary(b) => b.len(),
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame that carries this payload with sequence number `seq`.
    pub fn frame(&self, seq: u64) -> Frame {
        match self {
            Self::Text(t) => Frame::Msg {
                seq,
                data: t.clone(),
            },
            Self::Binary(b) => Frame::Bin {
                seq,
                data: b.clone(),
            },
        }
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text(t) if t.len() <= 48 => write!(f, "Text({t:?})"),
            Self::Text(t) => {
                let mut end = 48;
                while !t.is_char_boundary(end) {
                    end -= 1;
                }
                write!(f, "Text({} bytes: {:?}…)", t.len(), &t[..end])
            }
            Self::Binary(b) if b.len() <= 16 => write!(f, "Binary({b:02x?})"),
            Self::Binary(b) => write!(f, "Binary({} bytes: {:02x?}…)", b.len(), &b[..16]),
        }
    }
}

/// The parameters of an `open` frame (§2.1). Durations in milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Open {
    /// Protocol version in use.
    pub v: u64,
    /// The session key (secret).
    pub key: String,
    /// The public session id.
    pub sid: String,
    /// Ping interval, ms.
    pub ping: u64,
    /// Peer timeout, ms.
    pub timeout: u64,
    /// Resume window, ms.
    pub resume: u64,
    /// Largest message payload the server accepts, bytes.
    pub max_msg: u64,
    /// Largest wire unit the server accepts, bytes.
    pub max_batch: u64,
    /// The upstream flow-control window (§3.1), charged bytes; absent from
    /// servers without flow control.
    pub win: Option<u64>,
}

/// One frame (§2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// `open`: a new session is open.
    Open(Open),
    /// `resumed`: the session is resumed; `ack` is the server's `received`.
    Resumed {
        /// Highest upstream seq the server has received.
        ack: u64,
    },
    /// `msg`: a text message.
    Msg {
        /// Sequence number.
        seq: u64,
        /// The text.
        data: String,
    },
    /// `bin`: a binary message (base64 on the wire).
    Bin {
        /// Sequence number.
        seq: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// `ack`: cumulative acknowledgement.
    Ack {
        /// Every message up to this seq was received.
        seq: u64,
    },
    /// `ping`: answer with `pong`.
    Ping,
    /// `pong`.
    Pong,
    /// `close`: the session is over (or was never opened).
    Close {
        /// Close code (§7).
        code: u16,
        /// Human-readable reason.
        reason: String,
        /// Optional `retry_after`, ms.
        retry_after: Option<u64>,
    },
    /// `detach`: this attachment is over, the session lives.
    Detach {
        /// Close code (§7).
        code: u16,
        /// Human-readable reason.
        reason: String,
    },
}

impl Frame {
    /// A `close` frame without `retry_after`.
    pub fn close(code: u16, reason: &str) -> Self {
        Self::Close {
            code,
            reason: reason.to_owned(),
            retry_after: None,
        }
    }

    /// The `t` of this frame.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Open(_) => "open",
            Self::Resumed { .. } => "resumed",
            Self::Msg { .. } => "msg",
            Self::Bin { .. } => "bin",
            Self::Ack { .. } => "ack",
            Self::Ping => "ping",
            Self::Pong => "pong",
            Self::Close { .. } => "close",
            Self::Detach { .. } => "detach",
        }
    }

    /// The sequence number of a `msg` or `bin` frame.
    pub fn message_seq(&self) -> Option<u64> {
        match self {
            Self::Msg { seq, .. } | Self::Bin { seq, .. } => Some(*seq),
            _ => None,
        }
    }

    /// The code of a `close` or `detach` frame.
    pub fn code(&self) -> Option<u16> {
        match self {
            Self::Close { code, .. } | Self::Detach { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// This frame as a JSON object.
    pub fn to_json(&self) -> Value {
        match self {
            Self::Open(o) => json!({
                "t": "open", "v": o.v, "key": o.key, "sid": o.sid, "ping": o.ping,
                "timeout": o.timeout, "resume": o.resume, "max_msg": o.max_msg,
                "max_batch": o.max_batch, "win": o.win,
            }),
            Self::Resumed { ack } => json!({"t": "resumed", "ack": ack}),
            Self::Msg { seq, data } => json!({"t": "msg", "seq": seq, "d": data}),
            Self::Bin { seq, data } => json!({"t": "bin", "seq": seq, "d": STANDARD.encode(data)}),
            Self::Ack { seq } => json!({"t": "ack", "seq": seq}),
            Self::Ping => json!({"t": "ping"}),
            Self::Pong => json!({"t": "pong"}),
            Self::Close {
                code,
                reason,
                retry_after,
            } => {
                let mut v = json!({"t": "close", "code": code, "reason": reason});
                if let Some(ms) = retry_after {
                    v["retry_after"] = json!(ms);
                }
                v
            }
            Self::Detach { code, reason } => json!({"t": "detach", "code": code, "reason": reason}),
        }
    }

    /// Parses one frame. Unknown fields are ignored; an unknown `t`, a
    /// missing field or a number out of range is an error.
    pub fn from_json(value: &Value) -> Result<Self, String> {
        let obj = value
            .as_object()
            .ok_or_else(|| format!("a frame must be a JSON object, got {value}"))?;
        let t = obj
            .get("t")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("frame without a string `t`: {value}"))?;
        Ok(match t {
            "open" => Self::Open(Open {
                v: num(obj, "v")?,
                key: string(obj, "key")?,
                sid: string(obj, "sid")?,
                ping: num(obj, "ping")?,
                timeout: num(obj, "timeout")?,
                resume: num(obj, "resume")?,
                max_msg: num(obj, "max_msg")?,
                max_batch: num(obj, "max_batch")?,
                win: match obj.get("win") {
                    None | Some(Value::Null) => None,
                    Some(_) => Some(num(obj, "win")?),
                },
            }),
            "resumed" => Self::Resumed {
                ack: num(obj, "ack")?,
            },
            "msg" => Self::Msg {
                seq: num(obj, "seq")?,
                data: string(obj, "d")?,
            },
            "bin" => Self::Bin {
                seq: num(obj, "seq")?,
                data: STANDARD
                    .decode(string(obj, "d")?)
                    .map_err(|e| format!("`bin` frame with bad base64: {e}"))?,
            },
            "ack" => Self::Ack {
                seq: num(obj, "seq")?,
            },
            "ping" => Self::Ping,
            "pong" => Self::Pong,
            "close" => Self::Close {
                code: code(obj)?,
                reason: string(obj, "reason")?,
                retry_after: match obj.get("retry_after") {
                    None | Some(Value::Null) => None,
                    Some(_) => Some(num(obj, "retry_after")?),
                },
            },
            "detach" => Self::Detach {
                code: code(obj)?,
                reason: string(obj, "reason")?,
            },
            other => return Err(format!("unknown frame type {other:?}")),
        })
    }
}

fn num(obj: &Map<String, Value>, field: &str) -> Result<u64, String> {
    let n = obj
        .get(field)
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("field {field:?} missing or not a non-negative integer"))?;
    if n > MAX_SAFE {
        return Err(format!("field {field:?} = {n} does not fit in 53 bits"));
    }
    Ok(n)
}

fn code(obj: &Map<String, Value>) -> Result<u16, String> {
    let n = num(obj, "code")?;
    u16::try_from(n).map_err(|_| format!("close code {n} out of range"))
}

fn string(obj: &Map<String, Value>, field: &str) -> Result<String, String> {
    obj.get(field)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("field {field:?} missing or not a string"))
}

/// The flow-control grants of a batch (§3.1), in order: `(seq, room)` of
/// each `ack` and `(ack, room)` of each `resumed` that carries a `room`.
/// [`Frame`] leaves `room` out (the frames compare as a client that ignores
/// it sees them); a client that keeps within the window reads it here.
pub fn grants(text: &[u8]) -> Result<Vec<(u64, u64)>, String> {
    let value: Value =
        serde_json::from_slice(text).map_err(|e| format!("batch is not JSON ({e})"))?;
    let items = value
        .as_array()
        .ok_or_else(|| format!("a batch must be a JSON array, got {value}"))?;
    let mut grants = Vec::new();
    for item in items {
        let Some(obj) = item.as_object() else {
            continue;
        };
        let seq_field = match obj.get("t").and_then(Value::as_str) {
            Some("ack") => "seq",
            Some("resumed") => "ack",
            _ => continue,
        };
        if obj.get("room").is_some_and(|room| !room.is_null()) {
            grants.push((num(obj, seq_field)?, num(obj, "room")?));
        }
    }
    Ok(grants)
}

/// Encodes a batch (a JSON array of frames).
pub fn encode_batch(frames: &[Frame]) -> String {
    Value::Array(frames.iter().map(Frame::to_json).collect()).to_string()
}

/// Encoded length of one frame inside a batch (its JSON plus a comma).
pub fn encoded_len(frame: &Frame) -> usize {
    frame.to_json().to_string().len() + 1
}

/// Parses a batch.
pub fn parse_batch(text: &[u8]) -> Result<Vec<Frame>, String> {
    json_array("batch", text)?
        .iter()
        .map(Frame::from_json)
        .collect()
}

/// `text` as JSON that must be an array; `what` names it in errors.
fn json_array(what: &str, text: &[u8]) -> Result<Vec<Value>, String> {
    let value: Value = serde_json::from_slice(text).map_err(|e| {
        format!(
            "{what} is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&text[..text.len().min(200)])
        )
    })?;
    match value {
        Value::Array(items) => Ok(items),
        other => Err(format!("a {what} must be a JSON array, got {other}")),
    }
}

/// A shared batch (§11.2): `[tag, batch]` pairs, in order.
pub type SharedBatch = Vec<(u64, Vec<Frame>)>;

/// Parses a shared batch: a JSON array of `[tag, batch]` pairs.
pub fn parse_shared_batch(text: &[u8]) -> Result<SharedBatch, String> {
    let pairs = json_array("shared batch", text)?;
    pairs
        .iter()
        .map(|pair| {
            let (tag, batch) = match pair.as_array().map(Vec::as_slice) {
                Some([tag, batch]) => (tag, batch),
                _ => return Err(format!("a pair must be [tag, batch], got {pair}")),
            };
            let tag = tag
                .as_u64()
                .filter(|t| *t < 1 << 31)
                .ok_or_else(|| format!("a tag must be 0 to 2^31 - 1, got {tag}"))?;
            let frames = batch
                .as_array()
                .ok_or_else(|| format!("a batch must be a JSON array, got {batch}"))?
                .iter()
                .map(Frame::from_json)
                .collect::<Result<Vec<_>, _>>()?;
            Ok((tag, frames))
        })
        .collect()
}

/// The header byte of a native WebSocket binary message (§2.2).
pub const BINARY_MESSAGE: u8 = 0x01;

/// Encodes a native WebSocket binary message: `0x01`, seq big-endian, payload.
pub fn encode_binary(seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + payload.len());
    out.push(BINARY_MESSAGE);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The header byte of a native WebSocket text message (§2.2.1), sent only
/// where the greeting granted it (`wstext`).
pub const TEXT_MESSAGE: u8 = 0x02;

/// Encodes a native WebSocket text message: `0x02`, seq big-endian, the
/// payload (bytes, so that a test can send invalid UTF-8).
pub fn encode_native_text(seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = encode_binary(seq, payload);
    out[0] = TEXT_MESSAGE;
    out
}

/// Decodes a native WebSocket text message into `(seq, text)`.
pub fn decode_native_text(bytes: &[u8]) -> Result<(u64, String), String> {
    if bytes.first() != Some(&TEXT_MESSAGE) || bytes.len() < 9 {
        return Err(format!("not a native text message: {} bytes", bytes.len()));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&bytes[1..9]);
    let text = String::from_utf8(bytes[9..].to_vec())
        .map_err(|e| format!("native text that is not UTF-8: {e}"))?;
    Ok((u64::from_be_bytes(seq), text))
}

/// Decodes a native WebSocket binary message into `(seq, payload)`.
pub fn decode_binary(bytes: &[u8]) -> Result<(u64, Vec<u8>), String> {
    if bytes.len() < 9 {
        return Err(format!(
            "binary message of {} bytes, shorter than its header",
            bytes.len()
        ));
    }
    if bytes[0] != BINARY_MESSAGE {
        return Err(format!(
            "binary message with reserved type byte {:#04x}",
            bytes[0]
        ));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&bytes[1..9]);
    Ok((u64::from_be_bytes(seq), bytes[9..].to_vec()))
}

/// One dispatched server-sent event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The `id:` field of this event, if it had one.
    pub id: Option<String>,
    /// The event type (`event:`), if any.
    pub event: Option<String>,
    /// The data lines, joined with `\n`.
    pub data: String,
    /// How many `data:` lines the event had.
    pub data_lines: usize,
}

/// An incremental `text/event-stream` parser (HTML Living Standard,
/// "Interpreting an event stream"): lines end with CRLF, LF or CR; a blank
/// line dispatches; `:` starts a comment. Partial events are never
/// dispatched, so dropping the parser mid-event loses nothing delivered.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    /// A CR ended the previous chunk: a LF starting the next one belongs to it.
    pending_cr: bool,
    id: Option<String>,
    event: Option<String>,
    data: String,
    data_lines: usize,
    /// Comment lines seen so far (keep-alives, padding).
    pub comments: usize,
    /// Bytes of comment lines seen so far.
    pub comment_bytes: usize,
    /// The last event id, as `EventSource` keeps it across events.
    pub last_event_id: Option<String>,
}

impl SseParser {
    /// Feeds bytes; returns the events completed by them.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Vec<SseEvent> {
        if self.pending_cr && chunk.first() == Some(&b'\n') {
            chunk = &chunk[1..];
        }
        self.pending_cr = false;
        self.buf.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < self.buf.len() {
            let b = self.buf[i];
            if b == b'\n' || b == b'\r' {
                let line = String::from_utf8_lossy(&self.buf[start..i]).into_owned();
                let mut next = i + 1;
                if b == b'\r' {
                    if next < self.buf.len() {
                        if self.buf[next] == b'\n' {
                            next += 1;
                        }
                    } else {
                        self.pending_cr = true;
                    }
                }
                if let Some(event) = self.line(&line) {
                    events.push(event);
                }
                start = next;
                i = next;
            } else {
                i += 1;
            }
        }
        self.buf.drain(..start);
        events
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            if self.data_lines == 0 {
                self.event = None;
                // An event without data is not dispatched, but its id sticks.
                if let Some(id) = self.id.take() {
                    self.last_event_id = Some(id);
                }
                return None;
            }
            let id = self.id.take();
            if let Some(id) = &id {
                self.last_event_id = Some(id.clone());
            }
            let event = SseEvent {
                id,
                event: self.event.take(),
                data: std::mem::take(&mut self.data),
                data_lines: std::mem::take(&mut self.data_lines),
            };
            return Some(event);
        }
        if line.starts_with(':') {
            self.comments += 1;
            self.comment_bytes += line.len() + 1;
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.data_lines > 0 {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.data_lines += 1;
            }
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            "event" => self.event = Some(value.to_owned()),
            _ => {} // `retry` and unknown fields: ignored
        }
        None
    }
}
