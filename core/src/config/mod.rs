//! Java `.properties` parsing as RocketMQ operators write it: `key=value`, `key:value` or

//! `key value`, `#`/`!` comments, backslash line continuations. Each entry keeps its line
//! number so a bad value can be reported as `file:line: key`.

pub mod broker;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    pub line: usize,
}

/// Parses properties text into entries in file order.
pub fn parse_properties(text: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((i, raw)) = lines.next() {
        let mut line = raw.trim_start().to_string();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        while line.ends_with('\\') {
            line.pop();
            match lines.next() {
                Some((_, next)) => line.push_str(next.trim_start()),
                None => break,
            }
        }
        let split = line.find(['=', ':', ' ', '\t']);
        let (key, value) = match split {
            Some(at) => {
                let rest = line[at..].trim_start_matches([' ', '\t']);
                let rest = rest.strip_prefix(['=', ':']).unwrap_or(rest);
                (line[..at].to_string(), rest.trim().to_string())
            }
            None => (line.clone(), String::new()),
        };
        out.push(Entry { key, value, line: i + 1 });
    }
    out
}

/// The closest of `known` to `key` by edit distance, for "did you mean" warnings.
pub fn closest<'a>(key: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|k| (edit_distance(&key.to_ascii_lowercase(), &k.to_ascii_lowercase()), k))
        .filter(|(d, _)| *d <= key.len().max(3) / 2)
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_separators_and_comments_operators_use() {
        let e = parse_properties(
            "# c\nbrokerName=broker-a\n! c\nlistenPort : 10911\nflushDiskType SYNC_FLUSH\nx=a\\\n  b\n",
        );
        let kv: Vec<(&str, &str)> = e.iter().map(|e| (e.key.as_str(), e.value.as_str())).collect();
        assert_eq!(
            kv,
            [("brokerName", "broker-a"), ("listenPort", "10911"), ("flushDiskType", "SYNC_FLUSH"), ("x", "ab")]
        );
        assert_eq!(e[1].line, 4);
    }

    #[test]
    fn suggests_the_nearest_known_key() {
        assert_eq!(closest("flushDiskTyp", ["flushDiskType", "brokerName"]), Some("flushDiskType"));
        assert_eq!(closest("zzzzzzzz", ["flushDiskType"]), None);
    }
}
