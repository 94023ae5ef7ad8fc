//! The commitlog record codec: RocketMQ's layout, a round trip, and every flipped bit caught.

mod common;

use bytes::Bytes;
use keel_core::store::record::{self, check_record, decode_offset_msg_id, encode, java_hash, patch, RecordError};

#[test]
fn record_round_trips_with_rocketmq_field_positions() {
    let msg = common::message("TopicTest", 3, b"Hello RocketMQ", Some("TagA"), Some("k1 k2"), "AC110001000018B4AAC2");
    let mut buf = Vec::new();
    encode(&msg, &mut buf, false);
    patch(&mut buf, 42, 4096, 1_700_000_000_123);
    assert_eq!(buf.len(), record::record_len(&msg, false));
    assert_eq!(&buf[0..4], &(buf.len() as i32).to_be_bytes(), "TOTALSIZE");
    assert_eq!(&buf[4..8], &0xDAA320A7u32.to_be_bytes(), "MAGICCODE V1");
    assert_eq!(&buf[12..16], &3i32.to_be_bytes(), "QUEUEID");
    assert_eq!(&buf[20..28], &42i64.to_be_bytes(), "QUEUEOFFSET");
    assert_eq!(&buf[28..36], &4096i64.to_be_bytes(), "PHYSICALOFFSET");
    assert_eq!(&buf[56..64], &1_700_000_000_123i64.to_be_bytes(), "STORETIMESTAMP after IPv4 born host");
    let crc = (crc32fast::hash(b"Hello RocketMQ") & 0x7FFF_FFFF) as i32;
    assert_eq!(&buf[8..12], &crc.to_be_bytes(), "BODYCRC masked");

    let m = check_record(&Bytes::from(buf), false).unwrap();
    assert_eq!(m.inner, msg);
    assert_eq!((m.queue_offset, m.phys_offset, m.store_timestamp), (42, 4096, 1_700_000_000_123));
    assert_eq!(m.property("TAGS"), Some("TagA"));
    assert_eq!(m.dispatch_info().tags_code, java_hash("TagA") as i64);
}

#[test]
fn ipv6_hosts_set_the_sysflag_bits_and_round_trip() {
    let mut msg = common::message("T", 0, b"x", None, None, "u");
    msg.born_host = "[::1]:1234".parse().unwrap();
    msg.store_host = "[fe80::2]:10911".parse().unwrap();
    let mut buf = Vec::new();
    encode(&msg, &mut buf, true);
    patch(&mut buf, 0, 0, 1);
    let m = check_record(&Bytes::from(buf), true).unwrap();
    assert_eq!(m.inner.sys_flag & 0x30, 0x30);
    assert_eq!((m.inner.born_host, m.inner.store_host), (msg.born_host, msg.store_host));
}

#[test]
fn java_string_hash_matches_java() {
    // Values printed by java.lang.String#hashCode on this machine (OpenJDK 17).
    assert_eq!(java_hash(""), 0);
    assert_eq!(java_hash("TagA"), 2598919);
    assert_eq!(java_hash("hello world"), 1794106052);
    assert_eq!(java_hash("Hello RocketMQ"), 148680518);
    // Non-BMP characters hash as two UTF-16 code units, as in Java.
    assert_eq!(java_hash("\u{1F600}"), 1772899);
}

/// The index hashes `topic#key` without building the string; the slot must be the one a
/// query for the built string looks in, for ASCII and non-ASCII names alike.
#[test]
fn a_key_hashed_in_parts_lands_where_the_whole_key_hashes() {
    use keel_core::store::index::{key_hash, topic_key_hash};
    use keel_core::store::record::java_hash_from;
    let cases = [
        ("TopicTest", "7F0000010000000000000001"),
        ("", ""),
        ("t", "ключ"),
        ("тема", "key"),
        ("%RETRY%g", "\u{1F600} x"),
    ];
    for (topic, key) in cases {
        assert_eq!(topic_key_hash(topic, key), key_hash(&format!("{topic}#{key}")), "{topic}#{key}");
        assert_eq!(java_hash_from(java_hash(topic), key), java_hash(&format!("{topic}{key}")));
    }
}

#[test]
fn every_single_bit_flip_is_detected() {
    let msg = common::message("TopicTest", 1, &[0x5A; 200], Some("TagB"), Some("order-1"), "UNIQ0001");
    let mut buf = Vec::new();
    encode(&msg, &mut buf, true);
    patch(&mut buf, 7, 0, 1_700_000_000_000);
    let good = check_record(&Bytes::from(buf.clone()), true).unwrap();
    assert!(good.property("__CRC32#").is_some_and(|d| d.len() == 10));
    let undetected: Vec<usize> = (0..buf.len() * 8)
        .filter(|bit| {
            let mut bad = buf.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            check_record(&Bytes::from(bad), true).is_ok()
        })
        .collect();
    assert!(undetected.is_empty(), "bit flips not detected at bits {undetected:?}");
}

#[test]
fn body_crc_alone_misses_header_flips_which_is_why_the_record_crc_is_on() {
    let msg = common::message("TopicTest", 1, b"abc", None, None, "u");
    let mut buf = Vec::new();
    encode(&msg, &mut buf, false);
    let mut bad = buf.clone();
    bad[13] ^= 1; // QUEUEID
    assert!(check_record(&Bytes::from(bad.clone()), false).is_ok());
    assert!(matches!(check_record(&Bytes::from(bad), true), Err(RecordError::MissingRecordCrc)));
}

#[test]
fn offset_msg_id_encodes_store_host_and_offset() {
    let id = record::offset_msg_id(&"127.0.0.1:10911".parse().unwrap(), 4096);
    assert_eq!(id, "7F00000100002A9F0000000000001000");
    assert_eq!(decode_offset_msg_id(&id), Some(("127.0.0.1:10911".parse().unwrap(), 4096)));
    assert_eq!(decode_offset_msg_id("zz"), None);
}

#[test]
fn truncated_and_foreign_bytes_are_rejected() {
    let msg = common::message("T", 0, b"body", None, None, "u");
    let mut buf = Vec::new();
    encode(&msg, &mut buf, true);
    let short = Bytes::from(buf[..buf.len() - 3].to_vec());
    assert!(check_record(&short, true).is_err());
    let mut wrong_magic = buf.clone();
    wrong_magic[4..8].copy_from_slice(&0xCBD43194u32.to_be_bytes());
    assert!(matches!(check_record(&Bytes::from(wrong_magic), true), Err(RecordError::BadMagic(_))));
}

#[test]
fn properties_are_read_as_rocketmq_writes_them() {
    // Name \x01 value, entries separated by \x02, as MessageDecoder.string2messageProperties
    // reads them: entries shorter than 3 bytes, without a separator, or with an empty name or
    // value are skipped; the last of a repeated name counts; values may be non-ASCII.
    let props = "A\u{1}x\u{2}\u{2}ab\u{2}junk\u{2}KEYS\u{1}k1 k2\u{2}TAGS\u{1}u\u{2}\u{1}nm\u{2}UNIQ_KEY\u{1}\u{2}\
                 TAGS\u{1}tä\u{2}UNIQ_KEY\u{1}U9";
    let all: Vec<_> = record::properties(props).collect();
    assert_eq!(all, [("A", "x"), ("KEYS", "k1 k2"), ("TAGS", "u"), ("TAGS", "tä"), ("UNIQ_KEY", "U9")]);
    assert_eq!(record::property(props, "TAGS"), Some("tä"));
    assert_eq!(record::property(props, "junk"), None);
    assert_eq!(record::property("", "TAGS"), None);

    let mut msg = common::message("TopicTest", 0, b"x", None, None, "U1");
    msg.properties = props.to_string();
    let mut buf = Vec::new();
    encode(&msg, &mut buf, false);
    let info = check_record(&Bytes::from(buf), false).unwrap().dispatch_info();
    assert_eq!(info.tags_code, java_hash("tä") as i64);
    assert_eq!(info.keys.as_deref(), Some("k1 k2"));
    assert_eq!(info.uniq_key.as_deref(), Some("U9"));
}
