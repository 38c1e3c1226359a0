//! The fallback report on the wire: the `report` query parameter a client
//! adds to the request that opens or resumes its session (`PROTOCOL.md`
//! §1.2), so that the server learns why the client is on the transport it
//! is on.
//!
//! ```text
//! report=websocket:sse:status:403:12,sse:long-poll:no_first_frame::3001
//!        <from>:<to>:<cause>:<detail>:<after_ms>, …
//! ```
//!
//! `detail` is the HTTP status for `status`, the close code for `detached`
//! and `refused`, and empty for every other cause. The value comes from
//! the network: [`decode`] reads what it can, skips (and counts) the
//! entries it cannot, ignores a value over the bounds whole, and never
//! panics.
//!
//! ```
//! use std::time::Duration;
//! use holdfast_protocol::TransportKind;
//! use holdfast_protocol::connector::{Cause, Fallback, report};
//!
//! let step = Fallback {
//!     from: TransportKind::WebSocket,
//!     to: TransportKind::Sse,
//!     cause: Cause::Status(403),
//!     after: Duration::from_millis(12),
//! };
//! let value = report::encode(&[step]);
//! assert_eq!(value, "websocket:sse:status:403:12");
//! assert_eq!(report::decode(&value).entries, vec![step]);
//! assert_eq!(report::decode("websocket:sse:nonsense::1").skipped, 1);
//! ```

use std::fmt::Write as _;
use std::time::Duration;

use super::{Cause, Fallback, MAX_FALLBACKS};
use crate::{CloseCode, TransportKind};

/// The longest `report` value a server reads, in bytes (after
/// percent-decoding); a longer one is ignored whole. Sixteen entries of the
/// longest kind fit in it.
pub const MAX_REPORT_BYTES: usize = 1024;

/// What [`decode`] read from a `report` value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    /// The entries it could read, in the order they came.
    pub entries: Vec<Fallback>,
    /// The entries it could not read (an unknown transport or cause, a bad
    /// number, the wrong number of fields), or every entry of a value over
    /// the bounds.
    pub skipped: usize,
}

impl Decoded {
    /// Whether the whole value was read: nothing skipped.
    pub fn is_valid(&self) -> bool {
        self.skipped == 0
    }
}

/// The `report` value for `fallbacks` (at most [`MAX_FALLBACKS`] of them,
/// the first ones; at most [`MAX_REPORT_BYTES`] long). Its characters need
/// no escaping in a query except `:` and `,`, which form-encoding escapes
/// and the server decodes.
pub fn encode(fallbacks: &[Fallback]) -> String {
    let mut out = String::new();
    for (i, step) in fallbacks.iter().take(MAX_FALLBACKS).enumerate() {
        if i > 0 {
            out.push(',');
        }
        let detail = match step.cause {
            Cause::Status(status) => Some(status),
            Cause::Detached(code) | Cause::Refused(code) => Some(code.0),
            _ => None,
        };
        let after = u64::try_from(step.after.as_millis()).unwrap_or(u64::MAX);
        // Writing to a `String` cannot fail.
        let _ = write!(
            out,
            "{}:{}:{}:",
            step.from.as_str(),
            step.to.as_str(),
            step.cause.label()
        );
        if let Some(detail) = detail {
            let _ = write!(out, "{detail}");
        }
        let _ = write!(out, ":{after}");
    }
    out
}

/// Reads a `report` value (already percent-decoded). Entries that cannot
/// be read are skipped and counted; a value longer than
/// [`MAX_REPORT_BYTES`] or with more than [`MAX_FALLBACKS`] entries is
/// ignored whole (every entry counted as skipped). An empty value holds no
/// entries.
pub fn decode(value: &str) -> Decoded {
    if value.is_empty() {
        return Decoded::default();
    }
    // Counted on bytes, before anything else is looked at: a hostile value
    // costs one pass, whatever it holds.
    let pieces = value.bytes().filter(|&b| b == b',').count() + 1;
    if value.len() > MAX_REPORT_BYTES || pieces > MAX_FALLBACKS {
        return Decoded {
            entries: Vec::new(),
            skipped: pieces,
        };
    }
    let mut decoded = Decoded::default();
    for entry in value.split(',') {
        match decode_entry(entry) {
            Some(step) => decoded.entries.push(step),
            None => decoded.skipped += 1,
        }
    }
    decoded
}

/// One `<from>:<to>:<cause>:<detail>:<after_ms>` entry.
fn decode_entry(entry: &str) -> Option<Fallback> {
    let mut fields = entry.split(':');
    let from = transport(fields.next()?)?;
    let to = transport(fields.next()?)?;
    let label = fields.next()?;
    let detail = fields.next()?;
    let after = number(fields.next()?)?;
    if fields.next().is_some() || from == to {
        return None;
    }
    Some(Fallback {
        from,
        to,
        cause: cause(label, detail)?,
        after: Duration::from_millis(after),
    })
}

/// A transport by its canonical name only (the aliases the clients'
/// options accept are not part of the wire format).
fn transport(name: &str) -> Option<TransportKind> {
    TransportKind::ALL
        .into_iter()
        .find(|kind| kind.as_str() == name)
}

/// A cause from its label and detail: a status is an HTTP status
/// (100–999), a close code a WebSocket one (1000–4999), other causes have
/// no detail.
fn cause(label: &str, detail: &str) -> Option<Cause> {
    let code = || {
        number(detail)
            .filter(|code| (1000..=4999).contains(code))
            .and_then(|code| u16::try_from(code).ok())
            .map(CloseCode)
    };
    let plain = |cause: Cause| detail.is_empty().then_some(cause);
    match label {
        "status" => number(detail)
            .filter(|status| (100..=999).contains(status))
            .and_then(|status| u16::try_from(status).ok())
            .map(Cause::Status),
        "detached" => code().map(Cause::Detached),
        "refused" => code().map(Cause::Refused),
        "unreachable" => plain(Cause::Unreachable),
        "timeout" => plain(Cause::Timeout),
        "no_first_frame" => plain(Cause::NoFirstFrame),
        "invalid" => plain(Cause::Invalid),
        "closed" => plain(Cause::Closed),
        "silent" => plain(Cause::Silent),
        "flapping" => plain(Cause::Flapping),
        _ => None,
    }
}

/// A decimal number of ASCII digits only (no sign, no spaces), that fits
/// in a `u64`.
fn number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn step(from: TransportKind, to: TransportKind, cause: Cause, ms: u64) -> Fallback {
        Fallback {
            from,
            to,
            cause,
            after: Duration::from_millis(ms),
        }
    }

    #[test]
    fn encodes_the_documented_example() {
        let report = [
            step(
                TransportKind::WebSocket,
                TransportKind::Sse,
                Cause::Status(403),
                12,
            ),
            step(
                TransportKind::Sse,
                TransportKind::LongPoll,
                Cause::NoFirstFrame,
                3001,
            ),
        ];
        let value = encode(&report);
        assert_eq!(
            value,
            "websocket:sse:status:403:12,sse:long-poll:no_first_frame::3001"
        );
        assert_eq!(
            decode(&value),
            Decoded {
                entries: report.to_vec(),
                skipped: 0
            }
        );
    }

    #[test]
    fn encodes_close_codes_as_the_detail() {
        let report = [
            step(
                TransportKind::WebSocket,
                TransportKind::Sse,
                Cause::Refused(CloseCode::FORBIDDEN),
                5,
            ),
            step(
                TransportKind::Sse,
                TransportKind::LongPoll,
                Cause::Detached(CloseCode::RECONNECT),
                7,
            ),
        ];
        let value = encode(&report);
        assert_eq!(
            value,
            "websocket:sse:refused:4403:5,sse:long-poll:detached:4000:7"
        );
        assert_eq!(decode(&value).entries, report.to_vec());
    }

    #[test]
    fn encodes_at_most_the_bound() {
        let many = vec![
            step(
                TransportKind::LongPoll,
                TransportKind::WebSocket,
                Cause::NoFirstFrame,
                u64::MAX,
            );
            40
        ];
        let value = encode(&many);
        assert!(value.len() <= MAX_REPORT_BYTES, "{}", value.len());
        let decoded = decode(&value);
        assert_eq!(decoded.entries.len(), MAX_FALLBACKS);
        assert!(decoded.is_valid());
    }

    #[test]
    fn skips_what_it_cannot_read() {
        let good = "websocket:sse:timeout::1";
        for bad in [
            "",
            ":",
            "::::",
            "websocket:sse:timeout:1",
            "websocket:sse:timeout::1:extra",
            "ws:sse:timeout::1",
            "websocket:sse:Timeout::1",
            "websocket:websocket:timeout::1",
            "websocket:sse:timeout:5:1",
            "websocket:sse:status::1",
            "websocket:sse:status:99:1",
            "websocket:sse:status:1000:1",
            "websocket:sse:status:+403:1",
            "websocket:sse:refused:999:1",
            "websocket:sse:refused:5000:1",
            "websocket:sse:refused:65536:1",
            "websocket:sse:timeout::-1",
            "websocket:sse:timeout:: 1",
            "websocket:sse:timeout::1.5",
            "websocket:sse:timeout::18446744073709551616",
            "websocket:sse:timeout::99999999999999999999999999",
            "websocket:sse:timeout::",
            "wébsocket:sse:timeout::1",
            "websocket:sse:timeout::１",
        ] {
            let decoded = decode(&format!("{good},{bad},{good}"));
            assert_eq!(decoded.entries.len(), 2, "{bad:?}");
            assert_eq!(decoded.skipped, 1, "{bad:?}");
            assert!(!decoded.is_valid());
        }
        assert_eq!(
            decode("websocket:sse:timeout::18446744073709551615").entries[0].after,
            Duration::from_millis(u64::MAX)
        );
    }

    #[test]
    fn ignores_a_value_over_the_bounds_whole() {
        let entry = "websocket:sse:timeout::1";
        let at_bound = vec![entry; MAX_FALLBACKS].join(",");
        assert_eq!(decode(&at_bound).entries.len(), MAX_FALLBACKS);
        let too_many = vec![entry; MAX_FALLBACKS + 1].join(",");
        assert_eq!(
            decode(&too_many),
            Decoded {
                entries: Vec::new(),
                skipped: MAX_FALLBACKS + 1
            }
        );
        let too_long = format!("{entry}:{}", "9".repeat(MAX_REPORT_BYTES));
        assert!(decode(&too_long).entries.is_empty());
        assert_eq!(decode(&too_long).skipped, 1);
        let huge = "x".repeat(2 << 20);
        assert_eq!(decode(&huge).skipped, 1);
        let commas = ",".repeat(10_000);
        assert_eq!(decode(&commas).skipped, 10_001);
        assert!(decode(&commas).entries.is_empty());
        let multibyte = "é".repeat(MAX_REPORT_BYTES);
        assert!(decode(&multibyte).entries.is_empty());
    }

    #[test]
    fn an_empty_value_holds_nothing() {
        assert_eq!(decode(""), Decoded::default());
        assert!(decode("").is_valid());
        assert_eq!(encode(&[]), "");
    }

    fn any_transport() -> impl Strategy<Value = TransportKind> {
        prop::sample::select(TransportKind::ALL.to_vec())
    }

    fn any_cause() -> impl Strategy<Value = Cause> {
        prop_oneof![
            Just(Cause::Unreachable),
            (100u16..=999).prop_map(Cause::Status),
            Just(Cause::Timeout),
            Just(Cause::NoFirstFrame),
            Just(Cause::Invalid),
            Just(Cause::Closed),
            Just(Cause::Silent),
            (1000u16..=4999).prop_map(|c| Cause::Detached(CloseCode(c))),
            (1000u16..=4999).prop_map(|c| Cause::Refused(CloseCode(c))),
            Just(Cause::Flapping),
        ]
    }

    fn any_step() -> impl Strategy<Value = Fallback> {
        (any_transport(), any_transport(), any_cause(), any::<u64>())
            .prop_filter("a step leaves its transport", |(from, to, _, _)| from != to)
            .prop_map(|(from, to, cause, ms)| step(from, to, cause, ms))
    }

    proptest! {
        #[test]
        fn a_valid_report_reads_back(report in prop::collection::vec(any_step(), 0..=MAX_FALLBACKS)) {
            let value = encode(&report);
            prop_assert!(value.len() <= MAX_REPORT_BYTES);
            prop_assert_eq!(decode(&value), Decoded { entries: report, skipped: 0 });
        }

        #[test]
        fn never_panics_and_stays_bounded(value in any::<String>()) {
            let decoded = decode(&value);
            prop_assert!(decoded.entries.len() <= MAX_FALLBACKS);
            prop_assert!(decoded.entries.len() + decoded.skipped <= value.len() + 1);
        }

        #[test]
        fn never_panics_on_report_like_text(
            value in "([a-z_-]{0,10}(:[a-z0-9_+-]{0,6}){0,5},?){0,20}"
        ) {
            let decoded = decode(&value);
            prop_assert!(decoded.entries.len() <= MAX_FALLBACKS);
            // What it read, written again, reads back the same.
            prop_assert_eq!(decode(&encode(&decoded.entries)).entries, decoded.entries);
        }
    }
}
