//! `extFields`: the custom header fields of a command.
//!
//! A command carries a dozen fields at most, so they live in a `Vec` kept sorted by key —
//! the order fastjson writes them in — rather than a tree of separately allocated nodes.
//! Keys Keel knows (the one-letter SEND_MESSAGE_V2 names, the fields of pulls, offsets and
//! send results) are `&'static str`, so neither building nor decoding a command allocates
//! them.

use std::borrow::Cow;

pub type Key = Cow<'static, str>;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtFields(Vec<(Key, String)>);

/// Keys common enough on the hot paths to be shared instead of allocated per command, sorted.
const KNOWN: &[&str] = &[
    "MSG_REGION",
    "TRACE_ON",
    "a",
    "b",
    "bornTimestamp",
    "brokerName",
    "c",
    "clientID",
    "commitOffset",
    "consumerGroup",
    "d",
    "defaultTopic",
    "defaultTopicQueueNums",
    "e",
    "expressionType",
    "f",
    "flag",
    "g",
    "h",
    "i",
    "j",
    "k",
    "l",
    "m",
    "maxMsgNums",
    "maxOffset",
    "maxReconsumeTimes",
    "minOffset",
    "msgId",
    "n",
    "nextBeginOffset",
    "offset",
    "producerGroup",
    "properties",
    "queueId",
    "queueOffset",
    "reconsumeTimes",
    "subVersion",
    "subscription",
    "suggestWhichBrokerId",
    "suspendTimeoutMillis",
    "sysFlag",
    "topic",
    "transactionId",
    "unitMode",
];

/// SEND_MESSAGE_V2's one-letter names, by letter.
const LETTERS: [&str; 14] = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n"];

/// `key` as a shared `&'static str` when Keel knows it, else owned.
pub fn intern(key: &str) -> Key {
    if let [b @ b'a'..=b'n'] = key.as_bytes() {
        return Cow::Borrowed(LETTERS[(b - b'a') as usize]);
    }
    match KNOWN.binary_search_by(|k| key_cmp(k, key)) {
        Ok(i) => Cow::Borrowed(KNOWN[i]),
        Err(_) => Cow::Owned(key.to_string()),
    }
}

/// `str` order. Keys are short, so they are compared byte by byte here rather than through
/// a call to `memcmp` (which every hit of a binary search would make).
#[inline]
fn key_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len().max(b.len()) > 24 {
        return a.cmp(b);
    }
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return x.cmp(y);
        }
    }
    a.len().cmp(&b.len())
}

impl ExtFields {
    pub fn new() -> Self {
        ExtFields(Vec::new())
    }

    pub fn with_capacity(n: usize) -> Self {
        ExtFields(Vec::with_capacity(n))
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| key_cmp(k, key))
    }

    pub fn get(&self, key: &str) -> Option<&String> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    /// Sets `key`; returns the value it replaces. Keys arriving in order (as a decoder or a
    /// typed header writes them) are appended without a search.
    pub fn insert(&mut self, key: impl Into<Key>, value: impl Into<String>) -> Option<String> {
        let key = key.into();
        let value = value.into();
        if self.0.last().is_none_or(|(last, _)| key_cmp(last, &key).is_lt()) {
            self.0.push((key, value));
            return None;
        }
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.find(key).ok().map(|i| self.0.remove(i).1)
    }

    /// Fields in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &String)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Into<Key>, V: Into<String>> FromIterator<(K, V)> for ExtFields {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut e = ExtFields::new();
        for (k, v) in iter {
            e.insert(k, v);
        }
        e
    }
}

impl<K: Into<Key>, V: Into<String>, const N: usize> From<[(K, V); N]> for ExtFields {
    fn from(pairs: [(K, V); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl<'a> IntoIterator for &'a ExtFields {
    type Item = (&'a str, &'a String);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (Key, String)>, fn(&'a (Key, String)) -> (&'a str, &'a String)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k.as_ref(), v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_keys_are_sorted_so_the_search_finds_them() {
        assert!(KNOWN.windows(2).all(|w| w[0] < w[1]), "KNOWN must stay sorted");
        assert!(matches!(intern("queueOffset"), Cow::Borrowed("queueOffset")));
        assert!(matches!(intern("someoneElse"), Cow::Owned(_)));
        for l in LETTERS {
            assert!(matches!(intern(l), Cow::Borrowed(k) if k == l));
        }
        assert!(matches!(intern("o"), Cow::Owned(_)));
    }

    #[test]
    fn keys_compare_as_str_does() {
        let keys =
            ["", "a", "ab", "b", "queueId", "queueOffset", "q", "\u{e9}", "zz", &"k".repeat(30), &"k".repeat(31)];
        for a in keys {
            for b in keys {
                assert_eq!(key_cmp(a, b), a.cmp(b), "{a:?} against {b:?}");
            }
        }
    }

    #[test]
    fn fields_stay_sorted_and_unique_whatever_the_insert_order() {
        let mut e = ExtFields::new();
        for (k, v) in [("m", "1"), ("b", "2"), ("zz", "3"), ("a", "4"), ("b", "5")] {
            e.insert(k, v);
        }
        let keys: Vec<&str> = e.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a", "b", "m", "zz"]);
        assert_eq!(e.get("b").map(String::as_str), Some("5"));
        assert_eq!(e.insert("zz", "6"), Some("3".to_string()));
        assert_eq!(e.remove("a"), Some("4".to_string()));
        assert_eq!(e.get("a"), None);
        assert_eq!(e.len(), 3);
    }
}
