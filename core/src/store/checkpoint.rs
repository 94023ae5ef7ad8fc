//! The `checkpoint` file: one 4096-byte page with RocketMQ's fields (physicMsgTimestamp @0,
//! logicsMsgTimestamp @8, indexMsgTimestamp @16, flushed commitlog offset @24, confirmed
//! commitlog end @32) and Keel's own, after a magic at @64: the commitlog offset below which
//! consume queues (@72) and index (@80) were durable when it was written, and a CRC (@88).
//!
//! Written as temp file + sync + rename, so a crash leaves the old or the new page, never a
//! mix. A missing or corrupt checkpoint only makes recovery scan more of the log.

use super::StoreError;
use crate::rt::disk::Disk;
use std::path::Path;

const PAGE: usize = 4096;
const KEEL_MAGIC: &[u8; 8] = b"KEELCKPT";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    pub physic_msg_timestamp: i64,
    pub logics_msg_timestamp: i64,
    pub index_msg_timestamp: i64,
    pub flushed_offset: u64,
    pub confirm_offset: u64,
    pub logics_safe_offset: u64,
    pub index_safe_offset: u64,
}

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; PAGE];
        b[0..8].copy_from_slice(&self.physic_msg_timestamp.to_be_bytes());
        b[8..16].copy_from_slice(&self.logics_msg_timestamp.to_be_bytes());
        b[16..24].copy_from_slice(&self.index_msg_timestamp.to_be_bytes());
        b[24..32].copy_from_slice(&self.flushed_offset.to_be_bytes());
        b[32..40].copy_from_slice(&self.confirm_offset.to_be_bytes());
        b[64..72].copy_from_slice(KEEL_MAGIC);
        b[72..80].copy_from_slice(&self.logics_safe_offset.to_be_bytes());
        b[80..88].copy_from_slice(&self.index_safe_offset.to_be_bytes());
        let crc = crc32fast::hash(&b[..88]);
        b[88..92].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// `None` for a page that is short, foreign (a RocketMQ checkpoint) or fails its CRC.
    pub fn decode(b: &[u8]) -> Option<Checkpoint> {
        if b.len() < 92 || &b[64..72] != KEEL_MAGIC {
            return None;
        }
        if crc32fast::hash(&b[..88]) != u32::from_be_bytes(b[88..92].try_into().unwrap()) {
            return None;
        }
        let i64_at = |o: usize| i64::from_be_bytes(b[o..o + 8].try_into().unwrap());
        let u64_at = |o: usize| u64::from_be_bytes(b[o..o + 8].try_into().unwrap());
        Some(Checkpoint {
            physic_msg_timestamp: i64_at(0),
            logics_msg_timestamp: i64_at(8),
            index_msg_timestamp: i64_at(16),
            flushed_offset: u64_at(24),
            confirm_offset: u64_at(32),
            logics_safe_offset: u64_at(72),
            index_safe_offset: u64_at(80),
        })
    }

    pub async fn load(disk: &Disk, path: &Path) -> Result<Option<Checkpoint>, StoreError> {
        Ok(disk.read_file(path).await?.as_deref().and_then(Checkpoint::decode))
    }

    pub async fn store(&self, disk: &Disk, path: &Path) -> Result<(), StoreError> {
        let tmp = path.with_extension("tmp");
        disk.write_file(&tmp, &self.encode(), true).await?;
        disk.rename(&tmp, path).await?;
        Ok(())
    }
}
