//! Message encoding shared by producers, consumers and the broker: property strings,
//! RocketMQ's batch body, and (re-exported from the store, whose disk format it is) the
//! record layout a pull body is made of.

use crate::store::record;
use bytes::{Buf, Bytes};

pub use crate::store::record::{
    check_record, decode_offset_msg_id, java_hash, properties_to_string, property, MessageExt, PROPERTY_KEYS,
    PROPERTY_TAGS, PROPERTY_UNIQ_KEY, PROPERTY_WAIT,
};

pub const PROPERTY_CLUSTER: &str = "CLUSTER";
pub const PROPERTY_RETRY_TOPIC: &str = "RETRY_TOPIC";
pub const PROPERTY_ORIGIN_MESSAGE_ID: &str = "ORIGIN_MESSAGE_ID";
pub const PROPERTY_DELAY: &str = "DELAY";

/// `props` without `drop` keys, then `add` pairs (replacing keys already present).
pub fn rewrite_properties(props: &str, drop: &[&str], add: &[(&str, &str)]) -> String {
    let kept = record::properties(props).filter(|(k, _)| !drop.contains(k) && !add.iter().any(|(a, _)| a == k));
    record::properties_to_string(kept.chain(add.iter().copied()))
}

/// Splits a pull body into its records, each fully checked (CRCs included).
pub fn decode_records(body: &Bytes) -> Result<Vec<MessageExt>, String> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < body.len() {
        let rest = body.slice(pos..);
        let m = check_record(&rest, false).map_err(|e| format!("record at byte {pos}: {e}"))?;
        pos += m.total_size as usize;
        out.push(m);
    }
    Ok(out)
}

/// Decodes a SEND_BATCH_MESSAGE body: per message `i32 totalSize, i32 magic, i32 bodyCRC,
/// i32 flag, i32 bodyLen, body, i16 propLen, props`.
pub fn decode_batch(body: &Bytes) -> Result<Vec<(i32, Bytes, String)>, String> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < body.len() {
        let mut b = &body[pos..];
        if b.len() < 20 {
            return Err(format!("message at byte {pos} is cut short"));
        }
        let total = b.get_i32();
        if total < 22 || pos + total as usize > body.len() {
            return Err(format!("message at byte {pos} declares {total} bytes"));
        }
        let _magic = b.get_i32();
        let _crc = b.get_i32();
        let flag = b.get_i32();
        let body_len = b.get_i32();
        if body_len < 0 || 20 + body_len as usize + 2 > total as usize {
            return Err(format!("message at byte {pos} has a bad body length {body_len}"));
        }
        let body_start = pos + 20;
        let msg_body = body.slice(body_start..body_start + body_len as usize);
        let mut p = &body[body_start + body_len as usize..];
        let props_len = p.get_i16();
        if props_len < 0 || 20 + body_len as usize + 2 + props_len as usize != total as usize {
            return Err(format!("message at byte {pos} has a bad properties length {props_len}"));
        }
        let ps = body_start + body_len as usize + 2;
        let props = std::str::from_utf8(&body[ps..ps + props_len as usize]).map_err(|e| e.to_string())?.to_string();
        out.push((flag, msg_body, props));
        pos += total as usize;
    }
    Ok(out)
}

/// Encodes messages as a SEND_BATCH_MESSAGE body (the client side of [`decode_batch`]).
pub fn encode_batch(msgs: &[(i32, &[u8], String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (flag, body, props) in msgs {
        let total = 20 + body.len() + 2 + props.len();
        out.extend_from_slice(&(total as i32).to_be_bytes());
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&record::body_crc(body).to_be_bytes());
        out.extend_from_slice(&flag.to_be_bytes());
        out.extend_from_slice(&(body.len() as i32).to_be_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(&(props.len() as i16).to_be_bytes());
        out.extend_from_slice(props.as_bytes());
    }
    out
}
