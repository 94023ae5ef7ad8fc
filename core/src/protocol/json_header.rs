//! The JSON header's fast path.
//!
//! Every RocketMQ client writes the same shape: one flat object of numbers and strings whose
//! only nested value is `extFields`, an object of strings (some clients send numbers or
//! booleans unquoted). This reads exactly that shape in one pass, borrowing strings without
//! escapes, and gives up (`None`) on anything else — a nested value where none belongs, a
//! number that is not a plain integer, a duplicate field, a lone surrogate, bytes after the
//! object — so that serde_json decodes the header instead, with its own error messages.
//! Where it answers, it answers what the serde_json path would (a test holds the two
//! together).

use super::{ext, ExtFields, RemotingCommand, SerializeType, LANGUAGES};
use bytes::Bytes;
use std::borrow::Cow;

/// A scalar JSON value.
enum Scalar<'a> {
    Str(Cow<'a, str>),
    /// An integer literal, as written.
    Int(&'a str),
    Bool(bool),
    Null,
}

/// Over a header already checked to be UTF-8 as a whole: every cut falls on an ASCII byte,
/// so each piece is a `str` without checking it again.
struct Reader<'a> {
    s: &'a str,
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.at) {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.at).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.at += 1)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.b[self.at..].starts_with(word).then(|| self.at += word.len())
    }

    /// A string; the opening quote is next.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        self.eat(b'"')?;
        let start = self.at;
        loop {
            match *self.b.get(self.at)? {
                b'"' => {
                    let s = &self.s[start..self.at];
                    self.at += 1;
                    return Some(Cow::Borrowed(s));
                }
                b'\\' => break,
                0..=0x1F => return None,
                _ => self.at += 1,
            }
        }
        // Escapes: build the string from here.
        let mut out = self.s[start..self.at].to_string();
        loop {
            let run = self.at;
            while let Some(&c) = self.b.get(self.at) {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                self.at += 1;
            }
            out.push_str(&self.s[run..self.at]);
            match *self.b.get(self.at)? {
                b'"' => {
                    self.at += 1;
                    return Some(Cow::Owned(out));
                }
                b'\\' => {
                    let e = *self.b.get(self.at + 1)?;
                    self.at += 2;
                    out.push(match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hex = self.b.get(self.at..self.at + 4)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            let v = u32::from_str_radix(&self.s[self.at..self.at + 4], 16).ok()?;
                            self.at += 4;
                            // Surrogates (pairs and lone ones) are left to serde_json.
                            char::from_u32(v)?
                        }
                        _ => return None,
                    });
                }
                _ => return None,
            }
        }
    }

    /// `-?(0|[1-9][0-9]*)`, with no fraction or exponent after it.
    fn integer(&mut self) -> Option<&'a str> {
        let start = self.at;
        if self.b.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        let digits = self.at;
        while self.b.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
        let n = self.at - digits;
        // "-0" too: serde_json reads it as a float.
        let negative_zero = digits > start && n == 1 && self.b[digits] == b'0';
        if n == 0
            || negative_zero
            || (n > 1 && self.b[digits] == b'0')
            || matches!(self.b.get(self.at), Some(b'.' | b'e' | b'E'))
        {
            return None;
        }
        Some(&self.s[start..self.at])
    }

    fn scalar(&mut self) -> Option<Scalar<'a>> {
        Some(match self.peek()? {
            b'"' => Scalar::Str(self.string()?),
            b't' => self.literal(b"true").map(|_| Scalar::Bool(true))?,
            b'f' => self.literal(b"false").map(|_| Scalar::Bool(false))?,
            b'n' => self.literal(b"null").map(|_| Scalar::Null)?,
            b'-' | b'0'..=b'9' => Scalar::Int(self.integer()?),
            _ => return None,
        })
    }

    /// An object's members, `f` called with each key; the opening brace is next.
    fn members(&mut self, mut f: impl FnMut(&mut Self, Cow<'a, str>) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            if self.peek()? != b'"' {
                return None;
            }
            let key = self.string()?;
            self.eat(b':')?;
            f(self, key)?;
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }
}

/// An integer literal as serde_json reads it into an `i32`.
fn int32(s: &Scalar) -> Option<i32> {
    match s {
        Scalar::Int(t) => t.parse().ok(),
        _ => None,
    }
}

/// The header, or `None` to leave it to serde_json.
pub(super) fn decode(header: &[u8]) -> Option<RemotingCommand> {
    let text = std::str::from_utf8(header).ok()?;
    let mut r = Reader { s: text, b: header, at: 0 };
    let mut cmd = RemotingCommand { serialize: SerializeType::Json, body: Bytes::new(), ..Default::default() };
    let (mut code, mut seen) = (None, 0u32);
    r.members(|r, key| {
        let bit = match key.as_ref() {
            "code" => 1,
            "language" => 2,
            "version" => 4,
            "opaque" => 8,
            "flag" => 16,
            "remark" => 32,
            "extFields" => 64,
            _ => 0,
        };
        if seen & bit != 0 {
            return None; // a duplicate field: serde_json's error
        }
        seen |= bit;
        if bit == 64 {
            cmd.ext = match r.peek()? {
                b'n' => r.literal(b"null").map(|_| ExtFields::new())?,
                _ => ext_fields(r)?,
            };
            return Some(());
        }
        let v = r.scalar()?;
        match bit {
            1 => code = Some(int32(&v)?),
            2 => {
                cmd.language = match &v {
                    Scalar::Str(name) => LANGUAGES.iter().position(|l| *l == name.as_ref()).unwrap_or(7) as u8,
                    Scalar::Int(t) => t.parse::<u64>().map_or(7, |n| n as u8),
                    Scalar::Bool(_) => 0,
                    Scalar::Null => 0,
                }
            }
            4 => {
                cmd.version = match v {
                    Scalar::Null => 0,
                    v => int32(&v)?,
                }
            }
            8 => cmd.opaque = int32(&v)?,
            16 => cmd.flag = int32(&v)?,
            32 => {
                cmd.remark = match v {
                    Scalar::Str(s) => Some(s.into_owned()),
                    Scalar::Null => None,
                    _ => return None,
                }
            }
            _ => {}
        }
        Some(())
    })?;
    if r.peek().is_some() {
        return None;
    }
    cmd.code = code?;
    Some(cmd)
}

fn ext_fields(r: &mut Reader) -> Option<ExtFields> {
    let mut out = ExtFields::with_capacity(16);
    r.members(|r, key| {
        let value = match r.scalar()? {
            Scalar::Str(s) => s.into_owned(),
            // serde_json reads an integer as u64, or i64 when negative; past both, an f64.
            Scalar::Int(t) => match (t.parse::<u64>(), t.parse::<i64>()) {
                (Ok(n), _) => n.to_string(),
                (_, Ok(n)) => n.to_string(),
                _ => return None,
            },
            Scalar::Bool(b) => b.to_string(),
            Scalar::Null => return Some(()),
        };
        out.insert(ext::intern(&key), value);
        Some(())
    })?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::super::{decode_json_header_serde, ExtFields, RemotingCommand};
    use rand::{Rng, SeedableRng};

    /// Where the fast path answers, serde_json answers the same; returns whether it answered.
    fn agrees(header: &[u8]) -> bool {
        let fast = super::decode(header);
        let slow = decode_json_header_serde(header);
        match fast {
            Some(f) => {
                assert_eq!(Ok(f), slow, "fast path differs on {:?}", String::from_utf8_lossy(header));
                true
            }
            None => false,
        }
    }

    #[test]
    fn the_fast_path_reads_what_clients_write_and_leaves_the_rest_to_serde() {
        let taken: &[&[u8]] = &[
            br#"{"code":105,"extFields":{"topic":"TopicTest"},"flag":0,"language":"JAVA","opaque":3,"serializeTypeCurrentRPC":"JSON","version":409}"#,
            br#"{"code":34,"language":12,"opaque":7,"flag":2,"extFields":{"n":5,"b":true,"z":null}}"#,
            br#" { "code" : -1 , "extFields" : null , "remark" : "a \"q\" \\ \/ \b\f\n\r\t \u00e9 \u0001" , "language" : "NOPE" } "#,
            br#"{"code":0,"extFields":{},"language":null,"version":null,"remark":null,"opaque":-2147483648}"#,
            br#"{"code":10,"extFields":{"big":18446744073709551615,"neg":-9223372036854775808,"k\u0061":"v"}}"#,
            "{\"code\":1,\"remark\":\"h\u{e9}llo \u{1F600}\",\"language\":\"RUST\"}".as_bytes(),
        ];
        for h in taken {
            assert!(agrees(h), "fast path should take {:?}", String::from_utf8_lossy(h));
        }
        let left: &[&[u8]] = &[
            br#"{"code":34,"extFields":{"n":5},"unknown":{"x":[1]}}"#,
            br#"{"code":1.0}"#,
            br#"{"code":1,"flag":1e3}"#,
            br#"{"code":1,"code":2}"#,
            br#"{"code":1} x"#,
            br#"{"code":1,"remark":"\ud83d\ude00"}"#,
            br#"{"code":1,"remark":"\ud800"}"#,
            br#"{"code":1,"extFields":{"a":-0}}"#,
            br#"{"code":01}"#,
            br#"{"code":1,"extFields":{"a":1.5}}"#,
            br#"{"code":1,"extFields":{"a":99999999999999999999}}"#,
            br#"{"code":1,"extFields":{"a":[1]}}"#,
            br#"{"code":1,"extFields":"x"}"#,
            br#"{"code":1,"remark":"\u+0a1"}"#,
            br#"{"code":1,"remark":"\x"}"#,
            b"{\"code\":1,\"remark\":\"a\tb\"}",
            br#"{"code":1,"opaque":null}"#,
            br#"{"code":2147483648}"#,
            br#"{"opaque":1}"#,
            br#"{"code":1,}"#,
            br#"{"code":1"#,
            br#"[1]"#,
            b"{\"code\":1,\"remark\":\"\xff\"}",
        ];
        for h in left {
            assert!(!agrees(h), "fast path should leave {:?} to serde_json", String::from_utf8_lossy(h));
        }
    }

    #[test]
    fn fast_and_serde_agree_on_random_headers_and_their_mutations() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let keys = ["a", "b", "i", "topic", "queueId", "x y", "q\"", "\u{e9}", "properties", "zz\\"];
        let alphabet: Vec<char> = "aZ09 _-\"\\/\u{1}\u{2}\n\t\u{e9}\u{4e2d}\u{1F600}{}:,[]".chars().collect();
        let mut taken = 0;
        for _ in 0..3000 {
            let mut ext = ExtFields::new();
            for _ in 0..rng.gen_range(0..8) {
                let len = rng.gen_range(0..12);
                let v: String = (0..len).map(|_| alphabet[rng.gen_range(0..alphabet.len())]).collect();
                ext.insert(keys[rng.gen_range(0..keys.len())].to_string(), v);
            }
            let mut cmd = RemotingCommand::request(rng.gen_range(-5..400), ext);
            cmd.opaque = rng.gen();
            cmd.flag = rng.gen_range(0..4);
            if rng.gen_bool(0.3) {
                cmd.remark = Some("r\u{1}\"".into());
            }
            let frame = cmd.to_bytes();
            let header_len = (u32::from_be_bytes(frame[4..8].try_into().unwrap()) & 0xFF_FFFF) as usize;
            let header = frame[8..8 + header_len].to_vec();
            assert!(agrees(&header), "our own encoding must take the fast path");
            taken += 1;
            // Mutations: whatever the fast path accepts, serde_json must accept the same way.
            for _ in 0..4 {
                let mut m = header.clone();
                let at = rng.gen_range(0..m.len());
                match rng.gen_range(0..3) {
                    0 => m[at] = b"\"\\{}[],:0-.e nt\x01\xc3"[rng.gen_range(0..17)],
                    1 => {
                        m.remove(at);
                    }
                    _ => m.insert(at, b" \"\\0-9"[rng.gen_range(0..6)]),
                }
                agrees(&m);
            }
        }
        assert_eq!(taken, 3000);
    }
}
