//! RocketMQ's remoting protocol: frames, the two header encodings (JSON and ROCKETMQ
//! binary), request/response codes, typed headers and JSON bodies.
//!
//! A frame is `i32 length | i32 (serializeType << 24 | headerLen) | header | body`, big-endian,
//! where `length` counts everything after itself. Decoding never panics: every length is
//! checked against what is there and against the frame cap, and a bad frame is an error the
//! connection reports (then closes), leaving every other connection alone.

pub mod body;
pub mod code;
pub mod ext;
pub mod header;
mod json_header;
pub mod message;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::str::FromStr;

/// RocketMQ's default frame cap (`com.rocketmq.remoting.frameMaxLength`).
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// The version Keel announces: RocketMQ 4.9.8's ordinal (`MQVersion.V4_9_8`), whose
/// behaviour Keel follows where 4.x and 5.x differ.
pub const VERSION: i32 = 409;

pub const FLAG_RESPONSE: i32 = 0x1;
pub const FLAG_ONEWAY: i32 = 0x2;

/// `LanguageCode` names by ordinal.
const LANGUAGES: &[&str] = &[
    "JAVA", "CPP", "DOTNET", "PYTHON", "DELPHI", "ERLANG", "RUBY", "OTHER", "HTTP", "GO", "PHP", "OMS", "RUST",
    "NODE_JS",
];
pub const LANGUAGE_RUST: u8 = 12;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SerializeType {
    #[default]
    Json,
    RocketMq,
}

pub use ext::ExtFields;

/// One request or response.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct RemotingCommand {
    pub code: i32,
    pub language: u8,
    pub version: i32,
    pub opaque: i32,
    pub flag: i32,
    pub remark: Option<String>,
    pub ext: ExtFields,
    pub body: Bytes,
    pub serialize: SerializeType,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the cap of {1} bytes")]
    TooLarge(usize, usize),
    #[error("frame length {0} is too small to hold a header length")]
    TooSmall(usize),
    #[error("header length {header} runs past the frame ({frame} bytes)")]
    HeaderPastFrame { header: usize, frame: usize },
    #[error("unknown serialize type {0}")]
    UnknownSerializeType(u8),
    #[error("bad JSON header: {0}")]
    BadJson(String),
    #[error("bad binary header: {0}")]
    BadBinary(&'static str),
}

/// A header field that is missing or does not parse; answered with SYSTEM_ERROR, as
/// RocketMQ's `decodeCommandCustomHeader` does.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HeaderError {
    #[error("the custom field <{0}> is null")]
    Missing(&'static str),
    #[error("the custom field <{0}> has a bad value '{1}'")]
    Bad(&'static str, String),
}

/// Splits the next complete frame (without its length prefix) off `buf`. `Ok(None)` until a
/// whole frame is there; an error when the declared length breaks the cap or is too small.
pub fn next_frame(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Bytes>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
    if len > max_frame {
        return Err(FrameError::TooLarge(len, max_frame));
    }
    if len < 4 {
        return Err(FrameError::TooSmall(len));
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(len).freeze()))
}

impl RemotingCommand {
    /// A request from this process (language RUST, Keel's version).
    pub fn request(code: i32, ext: ExtFields) -> Self {
        RemotingCommand { code, language: LANGUAGE_RUST, version: VERSION, ext, ..Default::default() }
    }

    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    pub fn oneway(mut self) -> Self {
        self.flag |= FLAG_ONEWAY;
        self
    }

    /// The response to `self`: same opaque and serialize type, RESPONSE flag set.
    pub fn response(&self, code: i32, remark: Option<String>) -> Self {
        RemotingCommand {
            code,
            language: LANGUAGE_RUST,
            version: VERSION,
            opaque: self.opaque,
            flag: FLAG_RESPONSE,
            remark,
            ext: ExtFields::new(),
            body: Bytes::new(),
            serialize: self.serialize,
        }
    }

    /// Shorthand for an error response with a remark.
    pub fn error(&self, code: i32, remark: impl Into<String>) -> Self {
        self.response(code, Some(remark.into()))
    }

    pub fn is_response(&self) -> bool {
        self.flag & FLAG_RESPONSE != 0
    }

    pub fn is_oneway(&self) -> bool {
        self.flag & FLAG_ONEWAY != 0
    }

    pub fn language_name(&self) -> &'static str {
        LANGUAGES.get(self.language as usize).copied().unwrap_or("OTHER")
    }

    pub fn set(&mut self, key: &str, value: impl ToString) -> &mut Self {
        self.ext.insert(ext::intern(key), value.to_string());
        self
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.ext.get(key).map(|s| s.as_str())
    }

    /// A required header field, parsed.
    pub fn req<T: FromStr>(&self, key: &'static str) -> Result<T, HeaderError> {
        let v = self.ext.get(key).ok_or(HeaderError::Missing(key))?;
        v.trim().parse().map_err(|_| HeaderError::Bad(key, v.clone()))
    }

    /// An optional header field, parsed; present but unparsable is an error.
    pub fn opt<T: FromStr>(&self, key: &'static str) -> Result<Option<T>, HeaderError> {
        match self.ext.get(key) {
            None => Ok(None),
            Some(v) if v.is_empty() || v == "null" => Ok(None),
            Some(v) => v.trim().parse().map(Some).map_err(|_| HeaderError::Bad(key, v.clone())),
        }
    }

    /// Appends the whole frame, length prefix included, to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_u32(0);
        out.put_u32(0);
        let header_start = out.len();
        match self.serialize {
            SerializeType::Json => self.write_json_header(out),
            SerializeType::RocketMq => self.write_binary_header(out),
        }
        let header_len = out.len() - header_start;
        out.extend_from_slice(&self.body);
        let total = out.len() - start - 4;
        let kind: u32 = if self.serialize == SerializeType::RocketMq { 1 } else { 0 };
        out[start..start + 4].copy_from_slice(&(total as u32).to_be_bytes());
        out[start + 4..start + 8].copy_from_slice(&((kind << 24) | header_len as u32).to_be_bytes());
    }

    /// The encoded frame as one buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(64 + self.body.len());
        self.encode(&mut b);
        b.freeze()
    }

    fn write_json_header(&self, out: &mut BytesMut) {
        // Built in a Vec, whose small appends inline, then copied once.
        let mut h: Vec<u8> =
            Vec::with_capacity(160 + self.ext.iter().map(|(k, v)| k.len() + v.len() + 6).sum::<usize>());
        // fastjson's order: keys sorted, nulls omitted.
        h.extend_from_slice(b"{\"code\":");
        put_int(&mut h, self.code);
        if !self.ext.is_empty() {
            h.extend_from_slice(b",\"extFields\":{");
            for (i, (k, v)) in self.ext.iter().enumerate() {
                if i > 0 {
                    h.push(b',');
                }
                json_string(&mut h, k);
                h.push(b':');
                json_string(&mut h, v);
            }
            h.push(b'}');
        }
        h.extend_from_slice(b",\"flag\":");
        put_int(&mut h, self.flag);
        h.extend_from_slice(b",\"language\":\"");
        h.extend_from_slice(self.language_name().as_bytes());
        h.extend_from_slice(b"\",\"opaque\":");
        put_int(&mut h, self.opaque);
        if let Some(r) = &self.remark {
            h.extend_from_slice(b",\"remark\":");
            json_string(&mut h, r);
        }
        h.extend_from_slice(b",\"serializeTypeCurrentRPC\":\"JSON\",\"version\":");
        put_int(&mut h, self.version);
        h.push(b'}');
        out.extend_from_slice(&h);
    }

    fn write_binary_header(&self, out: &mut BytesMut) {
        out.put_i16(self.code as i16);
        out.put_u8(self.language);
        out.put_i16(self.version as i16);
        out.put_i32(self.opaque);
        out.put_i32(self.flag);
        match &self.remark {
            Some(r) if !r.is_empty() => {
                out.put_i32(r.len() as i32);
                out.extend_from_slice(r.as_bytes());
            }
            _ => out.put_i32(0),
        }
        let at = out.len();
        out.put_i32(0);
        for (k, v) in &self.ext {
            out.put_i16(k.len() as i16);
            out.extend_from_slice(k.as_bytes());
            out.put_i32(v.len() as i32);
            out.extend_from_slice(v.as_bytes());
        }
        let ext_len = (out.len() - at - 4) as i32;
        out[at..at + 4].copy_from_slice(&ext_len.to_be_bytes());
    }

    /// Decodes a frame as returned by [`next_frame`] (length prefix removed).
    pub fn decode(frame: Bytes) -> Result<RemotingCommand, FrameError> {
        if frame.len() < 4 {
            return Err(FrameError::TooSmall(frame.len()));
        }
        let mark = u32::from_be_bytes(frame[..4].try_into().unwrap());
        let header_len = (mark & 0xFF_FFFF) as usize;
        let kind = (mark >> 24) as u8;
        if 4 + header_len > frame.len() {
            return Err(FrameError::HeaderPastFrame { header: header_len, frame: frame.len() });
        }
        let header = &frame[4..4 + header_len];
        let mut cmd = match kind {
            0 => decode_json_header(header)?,
            1 => decode_binary_header(header)?,
            k => return Err(FrameError::UnknownSerializeType(k)),
        };
        cmd.body = frame.slice(4 + header_len..);
        Ok(cmd)
    }
}

/// Decimal digits of `v`, without going through a `String`.
fn put_int(out: &mut Vec<u8>, v: i32) {
    let mut digits = [0u8; 11];
    let mut at = digits.len();
    let mut n = v.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[at..]);
}

fn json_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len() + 2);
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut last = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        out.extend_from_slice(&bytes[last..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            // Properties separate pairs with \u0001 and \u0002: written as fastjson does.
            _ => out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 0xF) as usize]]),
        }
        last = i + 1;
    }
    out.extend_from_slice(&bytes[last..]);
    out.push(b'"');
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonHeader {
    code: i32,
    #[serde(default)]
    language: Option<serde_json::Value>,
    #[serde(default)]
    version: Option<i32>,
    #[serde(default)]
    opaque: i32,
    #[serde(default)]
    flag: i32,
    #[serde(default)]
    remark: Option<String>,
    #[serde(default, deserialize_with = "ext_fields")]
    ext_fields: ExtFields,
}

/// Reads `extFields` straight into strings: numbers and booleans (which some clients send
/// unquoted) become their text, nulls are dropped. No intermediate `Value` tree.
fn ext_fields<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ExtFields, D::Error> {
    use serde::de::{MapAccess, Visitor};
    struct Text(Option<String>);
    impl<'de> serde::Deserialize<'de> for Text {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Text;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a string, number, boolean or null")
                }
                fn visit_str<E>(self, v: &str) -> Result<Text, E> {
                    Ok(Text(Some(v.to_string())))
                }
                fn visit_string<E>(self, v: String) -> Result<Text, E> {
                    Ok(Text(Some(v)))
                }
                fn visit_i64<E>(self, v: i64) -> Result<Text, E> {
                    Ok(Text(Some(v.to_string())))
                }
                fn visit_u64<E>(self, v: u64) -> Result<Text, E> {
                    Ok(Text(Some(v.to_string())))
                }
                fn visit_f64<E>(self, v: f64) -> Result<Text, E> {
                    Ok(Text(Some(v.to_string())))
                }
                fn visit_bool<E>(self, v: bool) -> Result<Text, E> {
                    Ok(Text(Some(v.to_string())))
                }
                fn visit_unit<E>(self) -> Result<Text, E> {
                    Ok(Text(None))
                }
                fn visit_none<E>(self) -> Result<Text, E> {
                    Ok(Text(None))
                }
            }
            d.deserialize_any(V)
        }
    }
    /// A key, shared when it is a known one (see [`ext::intern`]).
    struct KeyText(ext::Key);
    impl<'de> serde::Deserialize<'de> for KeyText {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<KeyText, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = KeyText;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a field name")
                }
                fn visit_str<E>(self, v: &str) -> Result<KeyText, E> {
                    Ok(KeyText(ext::intern(v)))
                }
            }
            d.deserialize_str(V)
        }
    }
    struct M;
    impl<'de> Visitor<'de> for M {
        type Value = ExtFields;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object of header fields")
        }
        fn visit_unit<E>(self) -> Result<ExtFields, E> {
            Ok(ExtFields::new())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<ExtFields, A::Error> {
            let mut out = ExtFields::with_capacity(m.size_hint().unwrap_or(8));
            while let Some((k, v)) = m.next_entry::<KeyText, Text>()? {
                if let Some(v) = v.0 {
                    out.insert(k.0, v);
                }
            }
            Ok(out)
        }
    }
    d.deserialize_any(M)
}

fn decode_json_header(header: &[u8]) -> Result<RemotingCommand, FrameError> {
    match json_header::decode(header) {
        Some(cmd) => Ok(cmd),
        None => decode_json_header_serde(header),
    }
}

/// Any JSON header serde_json accepts, and its errors.
fn decode_json_header_serde(header: &[u8]) -> Result<RemotingCommand, FrameError> {
    let h: JsonHeader = serde_json::from_slice(header).map_err(|e| FrameError::BadJson(e.to_string()))?;
    let language = match &h.language {
        Some(serde_json::Value::String(name)) => LANGUAGES.iter().position(|l| l == name).unwrap_or(7) as u8,
        Some(serde_json::Value::Number(n)) => n.as_u64().unwrap_or(7) as u8,
        _ => 0,
    };
    let ext = h.ext_fields;
    Ok(RemotingCommand {
        code: h.code,
        language,
        version: h.version.unwrap_or(0),
        opaque: h.opaque,
        flag: h.flag,
        remark: h.remark,
        ext,
        body: Bytes::new(),
        serialize: SerializeType::Json,
    })
}

fn decode_binary_header(mut h: &[u8]) -> Result<RemotingCommand, FrameError> {
    fn need(h: &[u8], n: usize, what: &'static str) -> Result<(), FrameError> {
        if h.len() < n {
            Err(FrameError::BadBinary(what))
        } else {
            Ok(())
        }
    }
    fn string(h: &mut &[u8], n: usize, what: &'static str) -> Result<String, FrameError> {
        need(h, n, what)?;
        let s = std::str::from_utf8(&h[..n]).map_err(|_| FrameError::BadBinary("string is not UTF-8"))?.to_string();
        h.advance(n);
        Ok(s)
    }
    need(h, 2 + 1 + 2 + 4 + 4 + 4, "fixed fields cut short")?;
    let code = h.get_i16() as i32;
    let language = h.get_u8();
    let version = h.get_i16() as i32;
    let opaque = h.get_i32();
    let flag = h.get_i32();
    let remark_len = h.get_i32();
    if remark_len < 0 {
        return Err(FrameError::BadBinary("negative remark length"));
    }
    let remark = if remark_len > 0 { Some(string(&mut h, remark_len as usize, "remark past header")?) } else { None };
    need(h, 4, "ext length cut short")?;
    let ext_len = h.get_i32();
    if ext_len < 0 || ext_len as usize > h.len() {
        return Err(FrameError::BadBinary("ext fields length past header"));
    }
    let mut e = &h[..ext_len as usize];
    let mut ext = ExtFields::new();
    while !e.is_empty() {
        need(e, 2, "ext key length cut short")?;
        let kl = e.get_i16();
        if kl < 0 {
            return Err(FrameError::BadBinary("negative key length"));
        }
        need(e, kl as usize, "ext key past header")?;
        let k = ext::intern(
            std::str::from_utf8(&e[..kl as usize]).map_err(|_| FrameError::BadBinary("string is not UTF-8"))?,
        );
        e.advance(kl as usize);
        need(e, 4, "ext value length cut short")?;
        let vl = e.get_i32();
        if vl < 0 {
            return Err(FrameError::BadBinary("negative value length"));
        }
        let v = string(&mut e, vl as usize, "ext value past header")?;
        ext.insert(k, v);
    }
    Ok(RemotingCommand {
        code,
        language,
        version,
        opaque,
        flag,
        remark,
        ext,
        body: Bytes::new(),
        serialize: SerializeType::RocketMq,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn integers_are_written_as_to_string_writes_them() {
        for v in [0, 7, -1, 10, -10, 409, 1_000_000, i32::MAX, i32::MIN] {
            let mut out = Vec::new();
            super::put_int(&mut out, v);
            assert_eq!(String::from_utf8(out).unwrap(), v.to_string());
        }
    }
}
