//! Close codes: one number per way a session or an attachment can end.
//!
//! The table in `PROTOCOL.md` §7 is the contract; this module is its only
//! implementation. Codes in 4000–4999 are, where the same condition has an
//! HTTP status, `4000 + status`.

use std::fmt;

/// A close code, carried by `close` and `detach` frames and used as the
/// WebSocket close code.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// Normal closure, by either side.
    pub const NORMAL: Self = Self(1000);
    /// The server is going away (shutdown).
    pub const GOING_AWAY: Self = Self(1001);
    /// Protocol error: a malformed or out-of-protocol frame. Attachment only.
    pub const PROTOCOL_ERROR: Self = Self(1002);
    /// The client overran the upstream flow-control window (`PROTOCOL.md`
    /// §3.1). Attachment only: the session lives (RFC 6455's "policy
    /// violation").
    pub const WINDOW_EXCEEDED: Self = Self(1008);
    /// A message or wire unit was too big. Ends the session.
    pub const TOO_BIG: Self = Self(1009);
    /// Internal server error. Ends the session.
    pub const INTERNAL_ERROR: Self = Self(1011);
    /// Reconnect now: the server recycled the stream. Attachment only.
    pub const RECONNECT: Self = Self(4000);
    /// Probe over: the server ended a probe (`PROTOCOL.md` §8.5), which
    /// never carried the session. Nothing to resume.
    pub const PROBE_OVER: Self = Self(4001);
    /// Bad request, final for that request: a protocol version the server
    /// does not speak (whether or not the request names a session), an
    /// empty session key, or malformed parameters of a request naming no
    /// session.
    pub const BAD_REQUEST: Self = Self(4400);
    /// Refused by the application's authentication.
    pub const UNAUTHORIZED: Self = Self(4401);
    /// Refused: forbidden by the application, or `Origin` not allowed.
    pub const FORBIDDEN: Self = Self(4403);
    /// The server heard nothing from the client for `timeout`. Attachment only.
    pub const PEER_TIMEOUT: Self = Self(4408);
    /// Replaced by a newer attachment. Attachment only.
    pub const REPLACED: Self = Self(4409);
    /// Session lost: unknown or expired key.
    pub const SESSION_LOST: Self = Self(4410);
    /// The client could not keep up with a fan-out and was disconnected
    /// (the application's slow-consumer policy).
    pub const TOO_SLOW: Self = Self(4429);
    /// Overloaded; retry after the `retry_after` given with it.
    pub const OVERLOADED: Self = Self(4503);

    /// The HTTP status that carries the same condition on HTTP transports.
    pub fn http_status(self) -> u16 {
        match self.0 {
            1002 | 1008 => 400,
            1009 => 413,
            1011 => 500,
            4400..=4599 => self.0 - 4000,
            _ => 200,
        }
    }

    /// The close code for a refusal the application expressed as an HTTP
    /// status (for example from an authentication hook).
    pub fn from_http_status(status: u16) -> Self {
        match status {
            413 => Self::TOO_BIG,
            400..=599 => Self(4000 + status),
            _ => Self::FORBIDDEN,
        }
    }

    /// A short name for logs.
    pub fn name(self) -> &'static str {
        match self.0 {
            1000 => "normal",
            1001 => "going away",
            1002 => "protocol error",
            1008 => "window exceeded",
            1009 => "too big",
            1011 => "internal error",
            4000 => "reconnect",
            4001 => "probe over",
            4400 => "bad request",
            4401 => "unauthorized",
            4403 => "forbidden",
            4408 => "peer timeout",
            4409 => "replaced",
            4410 => "session lost",
            4429 => "too slow",
            4503 => "overloaded",
            _ => "other",
        }
    }
}

impl fmt::Debug for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.0, self.name())
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.0, self.name())
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        Self(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdfast_codes_mirror_http_statuses() {
        assert_eq!(CloseCode::SESSION_LOST.http_status(), 410);
        assert_eq!(CloseCode::OVERLOADED.http_status(), 503);
        assert_eq!(CloseCode::TOO_BIG.http_status(), 413);
        assert_eq!(CloseCode::PROTOCOL_ERROR.http_status(), 400);
        assert_eq!(CloseCode::WINDOW_EXCEEDED.http_status(), 400);
        assert_eq!(CloseCode::from_http_status(401), CloseCode::UNAUTHORIZED);
        assert_eq!(CloseCode::from_http_status(413), CloseCode::TOO_BIG);
        assert_eq!(CloseCode::from_http_status(302), CloseCode::FORBIDDEN);
    }
}
