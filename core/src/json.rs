//! Tolerant JSON input: RocketMQ (fastjson) writes maps with integer keys unquoted
//! (`{"offsetTable":{"t@g":{0:125,1:98}}}`), which is not JSON. [`quote_numeric_keys`]
//! rewrites such keys as strings outside string literals so serde can read them.

/// Quotes bare integer object keys: `{0:1, -2 :3}` becomes `{"0":1, "-2" :3}`.
pub fn quote_numeric_keys(text: &str) -> std::borrow::Cow<'_, str> {
    quote_keys(text, |b, start| {
        let mut j = start;
        if j < b.len() && b[j] == b'-' {
            j += 1;
        }
        let digits = j;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        (j > digits).then_some(j)
    })
}

/// Quotes object-valued map keys: `{{"a":1}:2}` becomes `{"{\"a\":1}":2}`, so a map keyed by
/// JSON objects (fastjson's MessageQueue keys) reads as a map keyed by strings.
pub fn quote_object_keys(text: &str) -> std::borrow::Cow<'_, str> {
    quote_keys(text, |b, start| if b.get(start) == Some(&b'{') { object_end(b, start) } else { None })
}

/// Walks `text` outside string literals; after each `{` or `,` (and whitespace) asks
/// `key_end` whether a bare key starts there and where it ends. A bare key followed by `:`
/// is rewritten as a JSON string. Valid JSON comes back borrowed and untouched.
fn quote_keys(text: &str, key_end: impl Fn(&[u8], usize) -> Option<usize>) -> std::borrow::Cow<'_, str> {
    let b = text.as_bytes();
    let mut out: Option<String> = None;
    let (mut in_str, mut escaped, mut last_copied, mut i) = (false, false, 0, 0);
    while i < b.len() {
        let c = b[i];
        if in_str {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if c == b'"' {
            in_str = true;
        } else if c == b'{' || c == b',' {
            let mut start = i + 1;
            while start < b.len() && b[start].is_ascii_whitespace() {
                start += 1;
            }
            if let Some(end) = key_end(b, start) {
                let mut k = end;
                while k < b.len() && b[k].is_ascii_whitespace() {
                    k += 1;
                }
                if k < b.len() && b[k] == b':' {
                    let o = out.get_or_insert_with(|| String::with_capacity(text.len() + 64));
                    o.push_str(&text[last_copied..start]);
                    o.push_str(&serde_json::to_string(&text[start..end]).expect("string serializes"));
                    last_copied = end;
                    i = end;
                    continue;
                }
            }
        }
        i += 1;
    }
    match out {
        None => std::borrow::Cow::Borrowed(text),
        Some(mut o) => {
            o.push_str(&text[last_copied..]);
            std::borrow::Cow::Owned(o)
        }
    }
}

/// The index just past the object starting at `start` (which holds `{`), strings respected.
fn object_end(b: &[u8], start: usize) -> Option<usize> {
    let (mut depth, mut in_str, mut escaped) = (0usize, false, false);
    for (i, &c) in b.iter().enumerate().skip(start) {
        if in_str {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::quote_numeric_keys;

    #[test]
    fn quotes_integer_keys_but_not_values_or_strings() {
        let s = r#"{"offsetTable":{"t@g":{0:125, 1 :98}},"x":"{3:4}","n":[1,2]}"#;
        assert_eq!(quote_numeric_keys(s), r#"{"offsetTable":{"t@g":{"0":125, "1" :98}},"x":"{3:4}","n":[1,2]}"#);
        let v: serde_json::Value = serde_json::from_str(&quote_numeric_keys(s)).unwrap();
        assert_eq!(v["offsetTable"]["t@g"]["1"], 98);
    }

    #[test]
    fn quotes_object_keys() {
        let s = r#"{"offsetTable":{{"brokerName":"b","queueId":0,"topic":"t"}:{"x":1}},"tps":0.0}"#;
        let q = super::quote_object_keys(s);
        let v: serde_json::Value = serde_json::from_str(&q).unwrap();
        let key = v["offsetTable"].as_object().unwrap().keys().next().unwrap().clone();
        assert_eq!(key, r#"{"brokerName":"b","queueId":0,"topic":"t"}"#);
        assert!(matches!(super::quote_object_keys(r#"{"a":{"b":1}}"#), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn leaves_valid_json_untouched() {
        let s = r#"{"a":{"0":1},"b":[{"c":2}]}"#;
        assert!(matches!(quote_numeric_keys(s), std::borrow::Cow::Borrowed(_)));
    }
}
