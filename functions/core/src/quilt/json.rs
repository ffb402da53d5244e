//! JSON exactly as Python's `json` module reads and writes it, because the manifest bytes and
//! the top hash are defined by quilt3's Python output.
//!
//! `serde_json::Value` cannot serve here: it formats floats differently from Python's `repr` and
//! writes one key order only, where a manifest needs insertion order (its lines) and sorted order
//! (the top hash). So the format owns a small value type, a strict parser and two writers. Values
//! that arrive as `serde_json` (request metadata: CLI, MCP, Lambda events) keep each number's
//! literal text (the workspace enables `serde_json/arbitrary_precision`; see `Cargo.toml`), and
//! [`Json::from_serde`] reads that text as Python's `json.loads` would:
//!
//! * [`Json::to_manifest_string`]: `json.dumps(v, ensure_ascii=False)` — separators `", "`/`": "`,
//!   keys in insertion order, non-ASCII written as-is;
//! * [`Json::to_hash_string`]: `json.dumps(v, sort_keys=True, separators=(',', ':'))` — sorted
//!   keys, ASCII only (`\uXXXX`, astral characters as surrogate pairs).
//!
//! Numbers print as Python prints them: integers of any size as integers, floats in `repr` form
//! (`1.0`, `0.1`, `1e+16`, `1e-05`); NaN and infinities are refused, as quilt3 refuses them.

use std::fmt::Write as _;

/// A JSON value with Python's number model and insertion-ordered objects.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    /// `null` (Python `None`).
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer of any size, kept as its canonical decimal text (`-0` becomes `0`).
    Int(String),
    /// A finite float.
    Float(f64),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Json>),
    /// An object; keys are unique and keep the order in which they were first seen.
    Object(JsonObject),
}

/// An insertion-ordered JSON object with unique keys.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JsonObject(Vec<(String, Json)>);

impl JsonObject {
    /// An empty object.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Sets `key`; an existing key keeps its position and takes the new value (as a Python dict does).
    pub fn insert(&mut self, key: impl Into<String>, value: Json) {
        let key = key.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&Json> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Removes and returns the value under `key`.
    pub fn remove(&mut self, key: &str) -> Option<Json> {
        let at = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(at).1)
    }

    /// Whether the object has `key`.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Entries in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Json)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the object has no keys.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(String, Json)> for JsonObject {
    fn from_iter<T: IntoIterator<Item = (String, Json)>>(iter: T) -> Self {
        let mut object = JsonObject::new();
        for (k, v) in iter {
            object.insert(k, v);
        }
        object
    }
}

/// Why a text is not JSON that quilt3 would accept.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JsonError {
    /// The text is not valid JSON.
    #[error("invalid JSON at byte {offset}: {reason}")]
    Syntax {
        /// Byte offset of the problem.
        offset: usize,
        /// What was expected or found.
        reason: String,
    },
    /// A number is NaN or infinite (or overflows a float), which quilt3 refuses to write.
    #[error("number {0} is not finite; JSON for Quilt allows finite numbers only")]
    NonFinite(String),
    /// Nesting deeper than the parser allows.
    #[error("JSON nested deeper than {0} levels")]
    TooDeep(usize),
}

const MAX_DEPTH: usize = 512;

impl Json {
    /// Parses one JSON text strictly (no trailing data, no NaN/Infinity, no lone surrogates,
    /// no raw control characters in strings — what Python's `json.loads` accepts, minus what
    /// cannot round-trip through a Rust string or be written back by quilt3).
    pub fn parse(text: &str) -> Result<Json, JsonError> {
        let mut parser = Parser {
            src: text.as_bytes(),
            text,
            pos: 0,
        };
        parser.skip_ws();
        let value = parser.value(0)?;
        parser.skip_ws();
        if parser.pos != parser.src.len() {
            return Err(parser.error("unexpected data after the JSON value"));
        }
        Ok(value)
    }

    /// An integer value.
    pub fn int(n: impl Into<i128>) -> Json {
        Json::Int(n.into().to_string())
    }

    /// A string value.
    pub fn str(s: impl Into<String>) -> Json {
        Json::String(s.into())
    }

    /// A float value; `None` when it is not finite.
    pub fn float(f: f64) -> Option<Json> {
        f.is_finite().then_some(Json::Float(f))
    }

    /// The object inside, if this is an object.
    pub fn as_object(&self) -> Option<&JsonObject> {
        match self {
            Json::Object(o) => Some(o),
            _ => None,
        }
    }

    /// The string inside, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    /// The integer inside as `u64`, if this is an integer that fits.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Int(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// The name of this value's JSON type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "boolean",
            Json::Int(_) | Json::Float(_) => "number",
            Json::String(_) => "string",
            Json::Array(_) => "array",
            Json::Object(_) => "object",
        }
    }

    /// `json.dumps(self, ensure_ascii=False)`: the form of a manifest line.
    pub fn to_manifest_string(&self) -> String {
        let mut out = String::new();
        write_value(&mut out, self, Style::Manifest);
        out
    }

    /// `json.dumps(self, sort_keys=True, separators=(',', ':'))`: the form fed to the top hash.
    pub fn to_hash_string(&self) -> String {
        let mut out = String::new();
        write_value(&mut out, self, Style::Hash);
        out
    }

    /// Converts from `serde_json` (for values built by callers: CLI flags, MCP arguments,
    /// Lambda events). Each number is read from its literal text, which the workspace's
    /// `serde_json/arbitrary_precision` keeps, so the value is what Python's `json.loads` would
    /// make of the user's text: integers of any size stay exact (`-0` is the int 0), floats are
    /// the nearest double, printed back in `repr` form. Fails on a number beyond a double's range
    /// (`1e400`), which quilt3 cannot write.
    pub fn from_serde(value: &serde_json::Value) -> Result<Json, JsonError> {
        Ok(match value {
            serde_json::Value::Null => Json::Null,
            serde_json::Value::Bool(b) => Json::Bool(*b),
            serde_json::Value::Number(n) => Json::parse(&n.to_string())?,
            serde_json::Value::String(s) => Json::String(s.clone()),
            serde_json::Value::Array(a) => {
                Json::Array(a.iter().map(Json::from_serde).collect::<Result<_, _>>()?)
            }
            serde_json::Value::Object(o) => Json::Object(
                o.iter()
                    .map(|(k, v)| Ok((k.clone(), Json::from_serde(v)?)))
                    .collect::<Result<_, JsonError>>()?,
            ),
        })
    }

    /// Converts to `serde_json` (tool output, `--json`, request documents). Numbers keep the
    /// text Python would print (`serde_json/arbitrary_precision` holds it), so nothing is lost.
    pub fn to_serde(&self) -> serde_json::Value {
        let number = |text: &str| {
            text.parse::<serde_json::Number>()
                .map(serde_json::Value::Number)
                .expect("Python's number text is a JSON number")
        };
        match self {
            Json::Null => serde_json::Value::Null,
            Json::Bool(b) => serde_json::Value::Bool(*b),
            Json::Int(digits) => number(digits),
            Json::Float(f) => number(&python_float_repr(*f)),
            Json::String(s) => serde_json::Value::String(s.clone()),
            Json::Array(a) => serde_json::Value::Array(a.iter().map(Json::to_serde).collect()),
            Json::Object(o) => serde_json::Value::Object(
                o.iter().map(|(k, v)| (k.clone(), v.to_serde())).collect(),
            ),
        }
    }
}

impl From<JsonObject> for Json {
    fn from(o: JsonObject) -> Self {
        Json::Object(o)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Style {
    Manifest,
    Hash,
}

fn write_value(out: &mut String, value: &Json, style: Style) {
    match value {
        Json::Null => out.push_str("null"),
        Json::Bool(true) => out.push_str("true"),
        Json::Bool(false) => out.push_str("false"),
        Json::Int(digits) => out.push_str(digits),
        Json::Float(f) => out.push_str(&python_float_repr(*f)),
        Json::String(s) => write_string(out, s, style == Style::Hash),
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(if style == Style::Hash { "," } else { ", " });
                }
                write_value(out, item, style);
            }
            out.push(']');
        }
        Json::Object(object) => {
            out.push('{');
            let mut pairs: Vec<&(String, Json)> = object.0.iter().collect();
            if style == Style::Hash {
                // Python sorts str keys by code point; UTF-8 byte order is the same order.
                pairs.sort_by(|a, b| a.0.cmp(&b.0));
            }
            for (i, (k, v)) in pairs.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(if style == Style::Hash { "," } else { ", " });
                }
                write_string(out, k, style == Style::Hash);
                out.push_str(if style == Style::Hash { ":" } else { ": " });
                write_value(out, v, style);
            }
            out.push('}');
        }
    }
}

/// Writes a string as Python's `json` encoder does (`ensure_ascii` selects the escaping set).
fn write_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            // ensure_ascii escapes everything outside printable ASCII, DEL included.
            c if ensure_ascii && (c as u32) > 0x7e => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{:04x}", unit);
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: the shortest digits that round-trip, in fixed notation when the
/// decimal exponent is in `-4..16`, otherwise `d.ddde±XX`; fixed notation always has a `.`.
pub fn python_float_repr(f: f64) -> String {
    // Rust's `{:e}` yields the shortest round-trip digits as `d.ddde[-]X`.
    let sci = format!("{:e}", f);
    let (mantissa, exponent) = sci.split_once('e').expect("`{:e}` always has an exponent");
    let exponent: i32 = exponent.parse().expect("`{:e}` exponent is an integer");
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    // Python's decpt: position of the decimal point relative to the digit string.
    let decpt = exponent + 1;
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    if decpt <= -4 || decpt > 16 {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = decpt - 1;
        let _ = write!(out, "e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
    } else if decpt <= 0 {
        out.push_str("0.");
        out.push_str(&"0".repeat((-decpt) as usize));
        out.push_str(&digits);
    } else {
        let decpt = decpt as usize;
        if digits.len() <= decpt {
            out.push_str(&digits);
            out.push_str(&"0".repeat(decpt - digits.len()));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..decpt]);
            out.push('.');
            out.push_str(&digits[decpt..]);
        }
    }
    out
}

struct Parser<'a> {
    src: &'a [u8],
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, reason: &str) -> JsonError {
        JsonError::Syntax {
            offset: self.pos,
            reason: reason.to_string(),
        }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.src.get(self.pos) {
            self.pos += 1;
        }
    }

    fn expect_literal(&mut self, literal: &str, value: Json) -> Result<Json, JsonError> {
        if self.src[self.pos..].starts_with(literal.as_bytes()) {
            self.pos += literal.len();
            Ok(value)
        } else {
            Err(self.error("unknown literal"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, JsonError> {
        if depth > MAX_DEPTH {
            return Err(JsonError::TooDeep(MAX_DEPTH));
        }
        match self.src.get(self.pos) {
            None => Err(self.error("unexpected end of input")),
            Some(b'n') => self.expect_literal("null", Json::Null),
            Some(b't') => self.expect_literal("true", Json::Bool(true)),
            Some(b'f') => self.expect_literal("false", Json::Bool(false)),
            Some(b'N') if self.src[self.pos..].starts_with(b"NaN") => {
                Err(JsonError::NonFinite("NaN".into()))
            }
            Some(b'I') if self.src[self.pos..].starts_with(b"Infinity") => {
                Err(JsonError::NonFinite("Infinity".into()))
            }
            Some(b'"') => Ok(Json::String(self.string()?)),
            Some(b'[') => {
                self.pos += 1;
                let mut items = Vec::new();
                self.skip_ws();
                if self.src.get(self.pos) == Some(&b']') {
                    self.pos += 1;
                    return Ok(Json::Array(items));
                }
                loop {
                    self.skip_ws();
                    items.push(self.value(depth + 1)?);
                    self.skip_ws();
                    match self.src.get(self.pos) {
                        Some(b',') => self.pos += 1,
                        Some(b']') => {
                            self.pos += 1;
                            return Ok(Json::Array(items));
                        }
                        _ => return Err(self.error("expected ',' or ']' in array")),
                    }
                }
            }
            Some(b'{') => {
                self.pos += 1;
                let mut object = JsonObject::new();
                self.skip_ws();
                if self.src.get(self.pos) == Some(&b'}') {
                    self.pos += 1;
                    return Ok(Json::Object(object));
                }
                loop {
                    self.skip_ws();
                    if self.src.get(self.pos) != Some(&b'"') {
                        return Err(self.error("expected a string key in object"));
                    }
                    let key = self.string()?;
                    self.skip_ws();
                    if self.src.get(self.pos) != Some(&b':') {
                        return Err(self.error("expected ':' after object key"));
                    }
                    self.pos += 1;
                    self.skip_ws();
                    let value = self.value(depth + 1)?;
                    object.insert(key, value);
                    self.skip_ws();
                    match self.src.get(self.pos) {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => {
                            self.pos += 1;
                            return Ok(Json::Object(object));
                        }
                        _ => return Err(self.error("expected ',' or '}' in object")),
                    }
                }
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.error("unexpected character")),
        }
    }

    fn number(&mut self) -> Result<Json, JsonError> {
        let start = self.pos;
        if self.src.get(self.pos) == Some(&b'-') {
            self.pos += 1;
            if self.src[self.pos..].starts_with(b"Infinity") {
                return Err(JsonError::NonFinite("-Infinity".into()));
            }
        }
        let digits_start = self.pos;
        match self.src.get(self.pos) {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                while let Some(b'0'..=b'9') = self.src.get(self.pos) {
                    self.pos += 1;
                }
            }
            _ => return Err(self.error("expected a digit")),
        }
        let int_end = self.pos;
        let mut is_float = false;
        if self.src.get(self.pos) == Some(&b'.') {
            is_float = true;
            self.pos += 1;
            let frac_start = self.pos;
            while let Some(b'0'..=b'9') = self.src.get(self.pos) {
                self.pos += 1;
            }
            if self.pos == frac_start {
                return Err(self.error("expected a digit after '.'"));
            }
        }
        if let Some(b'e' | b'E') = self.src.get(self.pos) {
            is_float = true;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.src.get(self.pos) {
                self.pos += 1;
            }
            let exp_start = self.pos;
            while let Some(b'0'..=b'9') = self.src.get(self.pos) {
                self.pos += 1;
            }
            if self.pos == exp_start {
                return Err(self.error("expected a digit in the exponent"));
            }
        }
        let text = &self.text[start..self.pos];
        if is_float {
            let f: f64 = text.parse().map_err(|_| self.error("invalid number"))?;
            if !f.is_finite() {
                return Err(JsonError::NonFinite(text.to_string()));
            }
            Ok(Json::Float(f))
        } else {
            let magnitude = &self.text[digits_start..int_end];
            if magnitude == "0" {
                Ok(Json::Int("0".into()))
            } else {
                Ok(Json::Int(text.to_string()))
            }
        }
    }

    fn hex4(&mut self) -> Result<u16, JsonError> {
        let hex = self
            .text
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.error("truncated \\u escape"))?;
        // Exactly four hex digits (from_str_radix alone would also take a sign, as in `\u+041`).
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.error("invalid \\u escape"));
        }
        let unit = u16::from_str_radix(hex, 16).map_err(|_| self.error("invalid \\u escape"))?;
        self.pos += 4;
        Ok(unit)
    }

    fn string(&mut self) -> Result<String, JsonError> {
        self.pos += 1; // opening quote
        let mut out = String::new();
        loop {
            let run_start = self.pos;
            while let Some(&b) = self.src.get(self.pos) {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            out.push_str(&self.text[run_start..self.pos]);
            match self.src.get(self.pos) {
                None => return Err(self.error("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let escape = *self
                        .src
                        .get(self.pos)
                        .ok_or_else(|| self.error("truncated escape"))?;
                    self.pos += 1;
                    match escape {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{08}'),
                        b'f' => out.push('\u{0c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let unit = self.hex4()?;
                            let c = if (0xD800..0xDC00).contains(&unit) {
                                if !self.src[self.pos..].starts_with(b"\\u") {
                                    return Err(self.error("lone high surrogate in string"));
                                }
                                self.pos += 2;
                                let low = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&low) {
                                    return Err(
                                        self.error("high surrogate not followed by a low one")
                                    );
                                }
                                let code = 0x10000
                                    + ((u32::from(unit) - 0xD800) << 10)
                                    + (u32::from(low) - 0xDC00);
                                char::from_u32(code)
                                    .ok_or_else(|| self.error("invalid surrogate pair"))?
                            } else {
                                char::from_u32(u32::from(unit))
                                    .ok_or_else(|| self.error("lone low surrogate in string"))?
                            };
                            out.push(c);
                        }
                        _ => return Err(self.error("invalid escape")),
                    }
                }
                Some(_) => return Err(self.error("raw control character in string")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_python_repr() {
        let cases = [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1e-5, "1e-05"),
            (1.5e300, "1.5e+300"),
            (-0.0, "-0.0"),
            (123456789.123, "123456789.123"),
            (1e22, "1e+22"),
            (5e-324, "5e-324"),
            (1.0 / 3.0, "0.3333333333333333"),
            (100.0, "100.0"),
            (1e15, "1000000000000000.0"),
            (1.2345678901234568e17, "1.2345678901234568e+17"),
            (0.0001, "0.0001"),
            (2.5, "2.5"),
            (-1.25e-7, "-1.25e-07"),
        ];
        for (f, want) in cases {
            assert_eq!(python_float_repr(f), want, "repr of {f:e}");
        }
    }

    #[test]
    fn parse_refuses_what_quilt_cannot_write() {
        assert!(matches!(Json::parse("NaN"), Err(JsonError::NonFinite(_))));
        assert!(matches!(
            Json::parse("[-Infinity]"),
            Err(JsonError::NonFinite(_))
        ));
        assert!(matches!(Json::parse("1e400"), Err(JsonError::NonFinite(_))));
        assert!(matches!(
            Json::parse("\"\\ud800\""),
            Err(JsonError::Syntax { .. })
        ));
        assert!(matches!(
            Json::parse("{\"a\": 1} x"),
            Err(JsonError::Syntax { .. })
        ));
        assert!(matches!(
            Json::parse("\"a\nb\""),
            Err(JsonError::Syntax { .. })
        ));
        assert!(matches!(Json::parse("01"), Err(JsonError::Syntax { .. })));
    }

    #[test]
    fn duplicate_keys_keep_first_position_and_last_value() {
        let v = Json::parse(r#"{"a": 1, "b": 2, "a": 3}"#).unwrap();
        assert_eq!(v.to_manifest_string(), r#"{"a": 3, "b": 2}"#);
    }

    #[test]
    fn strings_escape_as_python_json_dumps() {
        // json.loads of this text, then json.dumps with ensure_ascii=False (manifest) and with
        // ensure_ascii=True and compact separators (top hash), as Python 3 prints them.
        let v = Json::parse(r#""\/\b\f\n\r\t\"\\\u00e9\ud83d\ude00\u0001\u007f""#).unwrap();
        assert_eq!(
            v.as_str(),
            Some("/\u{8}\u{c}\n\r\t\"\\é😀\u{1}\u{7f}"),
            "escapes decode, surrogate pairs join"
        );
        assert_eq!(
            v.to_manifest_string(),
            "\"/\\b\\f\\n\\r\\t\\\"\\\\é😀\\u0001\u{7f}\""
        );
        assert_eq!(
            v.to_hash_string(),
            r#""/\b\f\n\r\t\"\\\u00e9\ud83d\ude00\u0001\u007f""#
        );
    }

    #[test]
    fn syntax_errors_name_the_byte_offset_and_the_problem() {
        let cases: [(&str, usize, &str); 19] = [
            ("", 0, "unexpected end of input"),
            ("@", 0, "unexpected character"),
            ("nul", 0, "unknown literal"),
            ("[1 2]", 3, "expected ',' or ']' in array"),
            ("{1: 2}", 1, "expected a string key in object"),
            (r#"{"a" 1}"#, 5, "expected ':' after object key"),
            (r#"{"a": 1 "b"}"#, 8, "expected ',' or '}' in object"),
            ("-x", 1, "expected a digit"),
            ("1.", 2, "expected a digit after '.'"),
            ("1e+", 3, "expected a digit in the exponent"),
            (r#""abc"#, 4, "unterminated string"),
            (r#""\x""#, 3, "invalid escape"),
            (r#""\"#, 2, "truncated escape"),
            (r#""\u12""#, 3, "truncated \\u escape"),
            (r#""\u12zz""#, 3, "invalid \\u escape"),
            (r#""\u+041""#, 3, "invalid \\u escape"),
            (r#""\ud800x""#, 7, "lone high surrogate in string"),
            (
                r#""\ud800\u0041""#,
                13,
                "high surrogate not followed by a low one",
            ),
            (r#""\udc00""#, 7, "lone low surrogate in string"),
        ];
        for (text, offset, reason) in cases {
            assert_eq!(
                Json::parse(text),
                Err(JsonError::Syntax {
                    offset,
                    reason: reason.to_string()
                }),
                "{text}"
            );
        }
        let err = Json::parse("[1 2]").unwrap_err().to_string();
        assert_eq!(err, "invalid JSON at byte 3: expected ',' or ']' in array");
    }

    #[test]
    fn nesting_is_limited_to_512_levels() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(
            Json::parse(&nested(513)).is_ok(),
            "512 levels below the top"
        );
        assert_eq!(Json::parse(&nested(514)), Err(JsonError::TooDeep(512)));
        let objects = format!("{}1{}", r#"{"a": "#.repeat(600), "}".repeat(600));
        assert_eq!(Json::parse(&objects), Err(JsonError::TooDeep(512)));
    }

    #[test]
    fn accessors_answer_only_for_their_own_type() {
        let values = [
            (Json::Null, "null"),
            (Json::Bool(false), "boolean"),
            (Json::int(-3), "number"),
            (Json::Float(0.5), "number"),
            (Json::str("x"), "string"),
            (Json::Array(vec![]), "array"),
            (Json::Object(JsonObject::new()), "object"),
        ];
        for (value, name) in &values {
            assert_eq!(value.type_name(), *name, "{value:?}");
            assert_eq!(value.as_object().is_some(), *name == "object", "{value:?}");
            assert_eq!(value.as_str().is_some(), *name == "string", "{value:?}");
        }
        assert_eq!(Json::int(7).as_u64(), Some(7));
        assert_eq!(Json::int(-7).as_u64(), None, "negative");
        assert_eq!(
            Json::parse("18446744073709551616").unwrap().as_u64(),
            None,
            "beyond u64"
        );
        assert_eq!(Json::Float(7.0).as_u64(), None, "a float is not a size");
        assert_eq!(Json::float(f64::NAN), None);
        assert_eq!(Json::float(f64::INFINITY), None);
        assert_eq!(Json::float(2.5), Some(Json::Float(2.5)));
    }

    #[test]
    fn objects_keep_insertion_order_through_edits() {
        let mut o: JsonObject = [
            ("b".to_string(), Json::int(1)),
            ("a".to_string(), Json::int(2)),
        ]
        .into_iter()
        .collect();
        assert!(!o.is_empty() && o.len() == 2 && o.contains_key("a"));
        o.insert("b", Json::int(3));
        assert_eq!(o.remove("a"), Some(Json::int(2)));
        assert_eq!(o.remove("a"), None);
        o.insert("c", Json::Null);
        let v = Json::from(o);
        assert_eq!(v.to_manifest_string(), r#"{"b": 3, "c": null}"#);
        assert_eq!(v.to_hash_string(), r#"{"b":3,"c":null}"#);
        assert!(JsonObject::new().is_empty());
    }

    #[test]
    fn serde_values_convert_both_ways() {
        let value = serde_json::json!({
            "z": [null, true, false, -5, 18446744073709551615u64, 1.5, "é"],
            "a": {"nested": {}}
        });
        let json = Json::from_serde(&value).unwrap();
        // Keys keep the order they were given in (serde_json's `preserve_order`), as quilt3
        // writes user metadata; u64 beyond i64 stays exact.
        assert_eq!(
            json.to_manifest_string(),
            r#"{"z": [null, true, false, -5, 18446744073709551615, 1.5, "é"], "a": {"nested": {}}}"#
        );
        assert_eq!(json.to_serde(), value);
        // Integers beyond 64 bits stay exact in serde_json too (`arbitrary_precision`).
        let text = "[-1180591620717411303424, 1180591620717411303424, 1e+16, 0.1]";
        let big = Json::parse(text).unwrap();
        assert_eq!(big.to_serde().to_string(), text.replace(", ", ","));
    }

    #[test]
    fn serde_numbers_read_as_python_reads_their_text() {
        // Each literal, parsed by serde_json, converted and written back, against
        // `json.dumps(json.loads(literal))` from Python 3.11.
        let cases = [
            ("0.42451918914251396", "0.42451918914251396"),
            (
                "123456789012345678901234567890",
                "123456789012345678901234567890",
            ),
            ("-0", "0"),
            ("-0.0", "-0.0"),
            ("100000000000000000000", "100000000000000000000"),
            ("1e20", "1e+20"),
            ("1E5", "100000.0"),
            ("1.50", "1.5"),
            ("12345678901234567890.0", "1.2345678901234567e+19"),
            ("1e-7", "1e-07"),
            ("-5", "-5"),
        ];
        for (literal, python) in cases {
            let value: serde_json::Value = serde_json::from_str(literal).unwrap();
            let json = Json::from_serde(&value).unwrap();
            assert_eq!(json.to_manifest_string(), python, "{literal}");
            assert_eq!(json.to_hash_string(), python, "{literal}");
        }
        let beyond: serde_json::Value = serde_json::from_str(r#"{"x": [1e400]}"#).unwrap();
        assert!(
            matches!(Json::from_serde(&beyond), Err(JsonError::NonFinite(_))),
            "beyond a double"
        );
    }

    #[test]
    fn big_integers_and_negative_zero() {
        let v = Json::parse("[18446744073709551616, -0, -1180591620717411303424]").unwrap();
        assert_eq!(
            v.to_hash_string(),
            "[18446744073709551616,0,-1180591620717411303424]"
        );
    }
}
