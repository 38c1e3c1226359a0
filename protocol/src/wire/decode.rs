//! A batch decoder written for holdfast's frames: one pass over the bytes,
//! no intermediate structures, strings borrowed unless they hold escapes.
//!
//! It accepts exactly what the serde-based reference decoder accepts (the
//! `json` module's tests compare the two on generated input): a JSON array
//! of objects, each with a string `t`, integer fields as non-negative
//! integers, strings as JSON strings with every escape (surrogate pairs
//! included, lone surrogates refused), `null` for an absent field, and any
//! JSON value for a field this version does not know.

use std::borrow::Cow;

use crate::wire::DecodeError;

/// Nesting allowed inside unknown fields (serde_json's default limit).
const MAX_DEPTH: usize = 128;

/// The fields of one frame, as read. `None`: absent (or `null`).
#[derive(Default)]
pub(crate) struct Fields<'a> {
    /// Always present in a frame the reader returns.
    pub t: Option<Cow<'a, str>>,
    pub seq: Option<u64>,
    pub d: Option<Cow<'a, str>>,
    pub ack: Option<u64>,
    pub code: Option<u16>,
    pub reason: Option<Cow<'a, str>>,
    pub retry_after: Option<u64>,
    pub v: Option<u32>,
    pub key: Option<Cow<'a, str>>,
    pub sid: Option<Cow<'a, str>>,
    pub ping: Option<u64>,
    pub timeout: Option<u64>,
    pub resume: Option<u64>,
    pub hold: Option<u64>,
    pub max_msg: Option<u64>,
    pub max_batch: Option<u64>,
    pub room: Option<u64>,
    pub win: Option<u64>,
    pub mux: Option<u64>,
    pub wstext: Option<u64>,
}

/// Reads a batch, turning the fields of each frame into a `T` as it goes.
/// The input is already known to be UTF-8, so strings are sliced out of it
/// without another check.
pub(crate) fn read_batch<'a, T>(
    input: &'a str,
    mut frame: impl FnMut(Fields<'a>) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    let mut reader = Reader {
        text: input,
        input: input.as_bytes(),
        pos: 0,
    };
    reader.expect(b'[')?;
    let mut frames = Vec::new();
    reader.skip_ws();
    if reader.peek() == Some(b']') {
        reader.pos += 1;
    } else {
        loop {
            frames.push(frame(reader.frame()?)?);
            reader.skip_ws();
            match reader.peek() {
                Some(b',') => reader.pos += 1,
                Some(b']') => {
                    reader.pos += 1;
                    break;
                }
                _ => return Err(reader.error("expected `,` or `]`")),
            }
        }
    }
    reader.skip_ws();
    if reader.pos != input.len() {
        return Err(reader.error("trailing characters"));
    }
    Ok(frames)
}

struct Reader<'a> {
    /// The input as text, to slice strings from.
    text: &'a str,
    /// The same, as bytes, to scan.
    input: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn error(&self, what: &str) -> DecodeError {
        DecodeError::Json(format!("{what} at byte {}", self.pos))
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), DecodeError> {
        self.skip_ws();
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(&format!("expected `{}`", byte as char)))
        }
    }

    fn frame(&mut self) -> Result<Fields<'a>, DecodeError> {
        self.expect(b'{')?;
        let mut fields = Fields::default();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Err(DecodeError::Json("missing field `t`".into()));
        }
        loop {
            self.skip_ws();
            let key = self.string()?;
            self.expect(b':')?;
            self.skip_ws();
            self.field(&mut fields, &key)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    break;
                }
                _ => return Err(self.error("expected `,` or `}`")),
            }
        }
        if fields.t.is_none() {
            return Err(DecodeError::Json("missing field `t`".into()));
        }
        Ok(fields)
    }

    fn field(&mut self, fields: &mut Fields<'a>, key: &str) -> Result<(), DecodeError> {
        fn set<T>(slot: &mut Option<T>, value: Option<T>, key: &str) -> Result<(), DecodeError> {
            if slot.is_some() {
                return Err(DecodeError::Json(format!("duplicate field `{key}`")));
            }
            *slot = value;
            Ok(())
        }
        match key {
            "t" => {
                let t = self.string()?;
                set(&mut fields.t, Some(t), key)
            }
            "d" => {
                let v = self.opt_string()?;
                set(&mut fields.d, v, key)
            }
            "reason" => {
                let v = self.opt_string()?;
                set(&mut fields.reason, v, key)
            }
            "key" => {
                let v = self.opt_string()?;
                set(&mut fields.key, v, key)
            }
            "sid" => {
                let v = self.opt_string()?;
                set(&mut fields.sid, v, key)
            }
            "seq" => {
                let v = self.opt_number()?;
                set(&mut fields.seq, v, key)
            }
            "ack" => {
                let v = self.opt_number()?;
                set(&mut fields.ack, v, key)
            }
            "retry_after" => {
                let v = self.opt_number()?;
                set(&mut fields.retry_after, v, key)
            }
            "ping" => {
                let v = self.opt_number()?;
                set(&mut fields.ping, v, key)
            }
            "timeout" => {
                let v = self.opt_number()?;
                set(&mut fields.timeout, v, key)
            }
            "resume" => {
                let v = self.opt_number()?;
                set(&mut fields.resume, v, key)
            }
            "hold" => {
                let v = self.opt_number()?;
                set(&mut fields.hold, v, key)
            }
            "max_msg" => {
                let v = self.opt_number()?;
                set(&mut fields.max_msg, v, key)
            }
            "max_batch" => {
                let v = self.opt_number()?;
                set(&mut fields.max_batch, v, key)
            }
            "room" => {
                let v = self.opt_number()?;
                set(&mut fields.room, v, key)
            }
            "win" => {
                let v = self.opt_number()?;
                set(&mut fields.win, v, key)
            }
            "mux" => {
                let v = self.opt_number()?;
                set(&mut fields.mux, v, key)
            }
            "wstext" => {
                let v = self.opt_number()?;
                set(&mut fields.wstext, v, key)
            }
            "code" => {
                let v = self.opt_number()?;
                let v = v
                    .map(|n| u16::try_from(n).map_err(|_| self.error("`code` out of range")))
                    .transpose()?;
                set(&mut fields.code, v, key)
            }
            "v" => {
                let v = self.opt_number()?;
                let v = v
                    .map(|n| u32::try_from(n).map_err(|_| self.error("`v` out of range")))
                    .transpose()?;
                set(&mut fields.v, v, key)
            }
            _ => self.skip_value(0),
        }
    }

    fn null(&mut self) -> bool {
        if self.input[self.pos..].starts_with(b"null") {
            self.pos += 4;
            true
        } else {
            false
        }
    }

    fn opt_string(&mut self) -> Result<Option<Cow<'a, str>>, DecodeError> {
        if self.null() {
            return Ok(None);
        }
        self.string().map(Some)
    }

    fn opt_number(&mut self) -> Result<Option<u64>, DecodeError> {
        if self.null() {
            return Ok(None);
        }
        self.number().map(Some)
    }

    /// A non-negative integer (no sign, fraction or exponent).
    fn number(&mut self) -> Result<u64, DecodeError> {
        let start = self.pos;
        let mut value: u64 = 0;
        while let Some(b @ b'0'..=b'9') = self.peek() {
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(b - b'0')))
                .ok_or_else(|| self.error("number out of range"))?;
            self.pos += 1;
        }
        let digits = self.pos - start;
        if digits == 0
            || (digits > 1 && self.input[start] == b'0')
            || matches!(self.peek(), Some(b'.' | b'e' | b'E'))
        {
            return Err(self.error("expected a non-negative integer"));
        }
        Ok(value)
    }

    /// A JSON string: borrowed when it holds no escapes.
    fn string(&mut self) -> Result<Cow<'a, str>, DecodeError> {
        if self.peek() != Some(b'"') {
            return Err(self.error("expected a string"));
        }
        self.pos += 1;
        let start = self.pos;
        // Fast path: up to the closing quote with no escape.
        match crate::wire::scan::first_special(&self.input[start..]) {
            Some(n) if self.input[start + n] == b'"' => {
                // Both ends are ASCII quotes: char boundaries of `text`.
                self.pos = start + n + 1;
                return Ok(Cow::Borrowed(&self.text[start..start + n]));
            }
            Some(n) if self.input[start + n] == b'\\' => self.pos = start + n,
            Some(n) => {
                self.pos = start + n;
                return Err(self.error("control character in a string"));
            }
            None => {
                self.pos = self.input.len();
                return Err(self.error("unterminated string"));
            }
        }
        // The escape is ASCII, so `start..pos` is whole characters.
        let mut out = String::from(&self.text[start..self.pos]);
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(Cow::Owned(out));
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let escaped = self
                        .peek()
                        .ok_or_else(|| self.error("unterminated string"))?;
                    self.pos += 1;
                    match escaped {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => out.push(self.unicode_escape()?),
                        _ => return Err(self.error("invalid escape")),
                    }
                }
                Some(0..=0x1f) => return Err(self.error("control character in a string")),
                Some(_) => {
                    // Copy up to the next quote, escape or control byte;
                    // those are ASCII, so the run is whole characters.
                    let run = crate::wire::scan::first_special(&self.input[self.pos..])
                        .map_or(self.input.len(), |n| self.pos + n);
                    out.push_str(&self.text[self.pos..run]);
                    self.pos = run;
                }
            }
        }
    }

    /// After `\u`: four hex digits, and the low half of a surrogate pair.
    fn unicode_escape(&mut self) -> Result<char, DecodeError> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                if !self.input[self.pos..].starts_with(b"\\u") {
                    return Err(self.error("lone surrogate"));
                }
                self.pos += 2;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(self.error("lone surrogate"));
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(self.error("lone surrogate")),
            other => other,
        };
        char::from_u32(code).ok_or_else(|| self.error("invalid code point"))
    }

    fn hex4(&mut self) -> Result<u32, DecodeError> {
        let digits = self
            .input
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.error("truncated \\u escape"))?;
        let mut value = 0;
        for &d in digits {
            let nibble = (d as char)
                .to_digit(16)
                .ok_or_else(|| self.error("invalid \\u escape"))?;
            value = value * 16 + nibble;
        }
        self.pos += 4;
        Ok(value)
    }

    /// Skips any JSON value (an unknown field's).
    fn skip_value(&mut self, depth: usize) -> Result<(), DecodeError> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        self.skip_ws();
        match self.peek() {
            Some(b'"') => self.string().map(drop),
            Some(b'{') => {
                self.pos += 1;
                self.skip_ws();
                if self.peek() == Some(b'}') {
                    self.pos += 1;
                    return Ok(());
                }
                loop {
                    self.skip_ws();
                    self.string()?;
                    self.expect(b':')?;
                    self.skip_value(depth + 1)?;
                    self.skip_ws();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => {
                            self.pos += 1;
                            return Ok(());
                        }
                        _ => return Err(self.error("expected `,` or `}`")),
                    }
                }
            }
            Some(b'[') => {
                self.pos += 1;
                self.skip_ws();
                if self.peek() == Some(b']') {
                    self.pos += 1;
                    return Ok(());
                }
                loop {
                    self.skip_value(depth + 1)?;
                    self.skip_ws();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b']') => {
                            self.pos += 1;
                            return Ok(());
                        }
                        _ => return Err(self.error("expected `,` or `]`")),
                    }
                }
            }
            Some(b't') if self.input[self.pos..].starts_with(b"true") => {
                self.pos += 4;
                Ok(())
            }
            Some(b'f') if self.input[self.pos..].starts_with(b"false") => {
                self.pos += 5;
                Ok(())
            }
            Some(b'n') if self.null() => Ok(()),
            Some(b'-' | b'0'..=b'9') => self.skip_json_number(),
            _ => Err(self.error("expected a value")),
        }
    }

    /// Any JSON number (in an unknown field): `-? int frac? exp?`.
    fn skip_json_number(&mut self) -> Result<(), DecodeError> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        let digits = |r: &mut Self| {
            let start = r.pos;
            while let Some(b'0'..=b'9') = r.peek() {
                r.pos += 1;
            }
            r.pos - start
        };
        let int_start = self.pos;
        let n = digits(self);
        if n == 0 || (n > 1 && self.input[int_start] == b'0') {
            return Err(self.error("invalid number"));
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if digits(self) == 0 {
                return Err(self.error("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if digits(self) == 0 {
                return Err(self.error("invalid number"));
            }
        }
        Ok(())
    }
}
