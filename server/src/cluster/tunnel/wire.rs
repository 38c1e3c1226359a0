//! The tunnels' bytes on the bus: envelopes of frames (format in the
//! parent module's docs). Parsing never panics: every length is checked
//! against what is there.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Buf, BufMut, Bytes, BytesMut};

const MAGIC: &[u8; 2] = b"HT";
const VERSION: u8 = 1;
/// The kind byte's flag for frames sent by the accepting side.
const FROM_ACCEPTOR: u8 = 0x80;
/// kind, id, length.
const FRAME_HEADER: usize = 1 + 8 + 4;
/// Longest reset reason kept: it is the other node's text, only logged
/// and shown as an error.
const MAX_REASON: usize = 200;

/// What a frame does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Open = 1,
    Accept = 2,
    Data = 3,
    Credit = 4,
    Fin = 5,
    Reset = 6,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Self::Open,
            2 => Self::Accept,
            3 => Self::Data,
            4 => Self::Credit,
            5 => Self::Fin,
            6 => Self::Reset,
            _ => return None,
        })
    }
}

/// One frame of one tunnel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Frame {
    pub(super) kind: Kind,
    /// Sent by the side that accepted the tunnel (else by its opener).
    pub(super) from_acceptor: bool,
    pub(super) id: u64,
    pub(super) payload: Bytes,
}

/// Bytes `frame` takes in an envelope.
pub(super) fn frame_len(frame: &Frame) -> usize {
    FRAME_HEADER + frame.payload.len()
}

/// One bus message: the sender's node id and frames.
pub(super) struct Envelope;

impl Envelope {
    /// Encodes `frames` from node `sender`.
    pub(super) fn encode(sender: &str, frames: &[Frame]) -> Bytes {
        // Node ids are short; one longer than a u16 is cut (it could not
        // be answered, but nothing breaks).
        let sender = &sender.as_bytes()[..sender.len().min(u16::MAX as usize)];
        let size = 5 + sender.len() + frames.iter().map(frame_len).sum::<usize>();
        let mut out = BytesMut::with_capacity(size);
        out.put_slice(MAGIC);
        out.put_u8(VERSION);
        out.put_u16(sender.len() as u16);
        out.put_slice(sender);
        for frame in frames {
            let flag = if frame.from_acceptor {
                FROM_ACCEPTOR
            } else {
                0
            };
            out.put_u8(frame.kind as u8 | flag);
            out.put_u64(frame.id);
            // Frames are at most max_frame (or a short control payload).
            out.put_u32(u32::try_from(frame.payload.len()).unwrap_or(u32::MAX));
            out.put_slice(&frame.payload);
        }
        out.freeze()
    }

    /// The sender and an iterator over the frames of `envelope`; `None`
    /// if it is not a tunnel envelope. The iterator yields an error at
    /// the first malformed frame, then stops.
    pub(super) fn parse(mut envelope: Bytes) -> Option<(String, Frames)> {
        if envelope.len() < 5 || &envelope[..2] != MAGIC || envelope[2] != VERSION {
            return None;
        }
        envelope.advance(3);
        let sender_len = usize::from(envelope.get_u16());
        if envelope.len() < sender_len {
            return None;
        }
        let sender = envelope.split_to(sender_len);
        let sender = String::from_utf8(sender.to_vec()).ok()?;
        Some((
            sender,
            Frames {
                whole: envelope.len(),
                rest: envelope,
            },
        ))
    }
}

/// The frames of an envelope, in order.
pub(super) struct Frames {
    rest: Bytes,
    whole: usize,
}

impl Iterator for Frames {
    type Item = Result<Frame, &'static str>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let result = self.next_frame();
        if result.is_err() {
            self.rest.clear();
        }
        Some(result)
    }
}

impl Frames {
    fn next_frame(&mut self) -> Result<Frame, &'static str> {
        if self.rest.len() < FRAME_HEADER {
            return Err("a truncated frame header");
        }
        let kind_byte = self.rest.get_u8();
        let id = self.rest.get_u64();
        let len = self.rest.get_u32() as usize;
        if self.rest.len() < len {
            return Err("a frame longer than its envelope");
        }
        let payload = self.rest.split_to(len);
        // A small payload is copied out, so that bytes a slow reader holds
        // do not keep a whole envelope of other tunnels' frames alive:
        // what a tunnel buffers stays within twice its window.
        let payload = if payload.len() * 2 < self.whole {
            Bytes::copy_from_slice(&payload)
        } else {
            payload
        };
        let kind = Kind::from_byte(kind_byte & !FROM_ACCEPTOR).ok_or("an unknown frame kind")?;
        Ok(Frame {
            kind,
            from_acceptor: kind_byte & FROM_ACCEPTOR != 0,
            id,
            payload,
        })
    }
}

/// An `Open` payload: the opener's receive window, then the client's
/// address.
pub(super) fn encode_open(window: usize, addr: Option<SocketAddr>) -> Bytes {
    let mut out = BytesMut::with_capacity(23);
    out.put_slice(&encode_count(window));
    match addr {
        None => out.put_u8(0),
        Some(SocketAddr::V4(addr)) => {
            out.put_u8(4);
            out.put_slice(&addr.ip().octets());
            out.put_u16(addr.port());
        }
        Some(SocketAddr::V6(addr)) => {
            out.put_u8(6);
            out.put_slice(&addr.ip().octets());
            out.put_u16(addr.port());
        }
    }
    out.freeze()
}

/// The opener's window and the client's address from an `Open` payload;
/// `None` if malformed.
pub(super) fn decode_open(payload: &[u8]) -> Option<(usize, Option<SocketAddr>)> {
    let window = decode_count(payload.get(..4)?)?;
    let mut payload = &payload[4..];
    if payload.is_empty() {
        return None;
    }
    let ip = match payload.get_u8() {
        0 if payload.is_empty() => return Some((window, None)),
        4 if payload.len() == 6 => {
            let mut octets = [0; 4];
            payload.copy_to_slice(&mut octets);
            IpAddr::V4(Ipv4Addr::from(octets))
        }
        6 if payload.len() == 18 => {
            let mut octets = [0; 16];
            payload.copy_to_slice(&mut octets);
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some((window, Some(SocketAddr::new(ip, payload.get_u16()))))
}

/// A byte count: a `Credit` payload (bytes granted) or an `Accept` one
/// (the acceptor's receive window).
pub(super) fn encode_count(count: usize) -> Bytes {
    // Windows and grants are far below u32::MAX.
    Bytes::copy_from_slice(&u32::try_from(count).unwrap_or(u32::MAX).to_be_bytes())
}

/// The count of a `Credit` or `Accept` payload; `None` if malformed.
pub(super) fn decode_count(payload: &[u8]) -> Option<usize> {
    let bytes: [u8; 4] = payload.try_into().ok()?;
    usize::try_from(u32::from_be_bytes(bytes)).ok()
}

/// A `Reset` reason as text fit for a log line: at most 200 characters, no
/// control characters.
pub(super) fn decode_reason(payload: &[u8]) -> String {
    let text = String::from_utf8_lossy(&payload[..payload.len().min(MAX_REASON * 4)]);
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_REASON)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: Kind, from_acceptor: bool, id: u64, payload: &'static [u8]) -> Frame {
        Frame {
            kind,
            from_acceptor,
            id,
            payload: Bytes::from_static(payload),
        }
    }

    #[test]
    fn envelopes_round_trip() {
        let frames = vec![
            frame(Kind::Open, false, 1, b"\0"),
            frame(Kind::Data, true, u64::MAX, b"hello"),
            frame(Kind::Reset, true, 7, b""),
        ];
        let envelope = Envelope::encode("node-a", &frames);
        let (sender, parsed) = Envelope::parse(envelope).expect("an envelope");
        assert_eq!(sender, "node-a");
        let parsed: Vec<_> = parsed.collect::<Result<_, _>>().expect("well formed");
        assert_eq!(parsed, frames);
    }

    #[test]
    fn malformed_envelopes_are_refused_without_panicking() {
        for bad in [
            &b""[..],
            b"HT",
            b"XX\x01\0\0",
            b"HT\x02\0\0",
            b"HT\x01\0\x09abc",
        ] {
            assert!(Envelope::parse(Bytes::copy_from_slice(bad)).is_none());
        }
        // Bad frames: truncated header, length past the end, unknown kind.
        let good = Envelope::encode("n", &[frame(Kind::Data, false, 3, b"abc")]);
        // 6 bytes of envelope header; every cut after them is a bad frame.
        for cut in 7..good.len() {
            let (_, mut frames) = Envelope::parse(good.slice(..cut)).expect("header");
            assert!(frames.next().is_some_and(|f| f.is_err()), "cut at {cut}");
            assert!(frames.next().is_none());
        }
        let mut unknown = good.to_vec();
        unknown[6] = 0x7f;
        let (_, mut frames) = Envelope::parse(Bytes::from(unknown)).expect("header");
        assert_eq!(frames.next(), Some(Err("an unknown frame kind")));
        // Arbitrary bytes after a valid header never panic.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..2000 {
            let mut bytes = b"HT\x01\0\x01n".to_vec();
            for _ in 0..(seed % 64) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                bytes.push(seed as u8);
            }
            if let Some((_, frames)) = Envelope::parse(Bytes::from(bytes)) {
                frames.for_each(drop);
            }
        }
    }

    #[test]
    fn open_payloads_round_trip_and_bad_ones_are_refused() {
        for addr in [
            None,
            Some("127.0.0.1:8080".parse().expect("addr")),
            Some("[2001:db8::1]:443".parse().expect("addr")),
        ] {
            assert_eq!(
                decode_open(&encode_open(256 * 1024, addr)),
                Some((256 * 1024, addr))
            );
        }
        for bad in [
            &b""[..],
            b"\0\0\x01",
            b"\0\0\x01\0",
            b"\0\0\x01\0\x04\x01\x02",
            b"\0\0\x01\0\x09",
            b"\0\0\x01\0\0\0",
        ] {
            assert_eq!(decode_open(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn count_and_reason_payloads() {
        assert_eq!(decode_count(&encode_count(65536)), Some(65536));
        assert_eq!(decode_count(b"\0\0"), None);
        assert_eq!(decode_reason(b"gone\n\x1b[31m"), "gone[31m");
        assert_eq!(decode_reason(&[b'x'; 1000]).len(), MAX_REASON);
    }
}
