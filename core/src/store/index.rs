//! Index files: RocketMQ's on-disk hash index from message keys (`topic#UNIQ_KEY`,
//! `topic#<each KEYS token>`) to commitlog offsets (reference §4.4). Header of 40 bytes,
//! `maxHashSlotNum` i32 slots holding the newest entry number of their bucket, then
//! `maxIndexNum` 20-byte entries chained through `prevIndex`. Entry numbers start at 1.
//!
//! The index is a hint, never the truth: a query returns candidate offsets and the store
//! reads and checks each record and its key before answering, so a hash collision, a torn
//! page or a stale entry can cost a lookup but never return a wrong message. After a crash,
//! files not fully covered by the last checkpoint are deleted and rebuilt from the log.

use super::StoreError;
use crate::rt::disk::{Disk, Segment};
use std::path::PathBuf;

pub const HEADER_SIZE: u64 = 40;
const ENTRY: u64 = 20;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Header {
    pub begin_timestamp: i64,
    pub end_timestamp: i64,
    pub begin_phy_offset: i64,
    pub end_phy_offset: i64,
    pub hash_slot_count: i32,
    pub index_count: i32,
}

impl Header {
    fn encode(&self) -> [u8; 40] {
        let mut b = [0u8; 40];
        b[0..8].copy_from_slice(&self.begin_timestamp.to_be_bytes());
        b[8..16].copy_from_slice(&self.end_timestamp.to_be_bytes());
        b[16..24].copy_from_slice(&self.begin_phy_offset.to_be_bytes());
        b[24..32].copy_from_slice(&self.end_phy_offset.to_be_bytes());
        b[32..36].copy_from_slice(&self.hash_slot_count.to_be_bytes());
        b[36..40].copy_from_slice(&self.index_count.to_be_bytes());
        b
    }

    fn decode(b: &[u8]) -> Header {
        let i64_at = |o: usize| i64::from_be_bytes(b[o..o + 8].try_into().unwrap());
        let i32_at = |o: usize| i32::from_be_bytes(b[o..o + 4].try_into().unwrap());
        Header {
            begin_timestamp: i64_at(0),
            end_timestamp: i64_at(8),
            begin_phy_offset: i64_at(16),
            end_phy_offset: i64_at(24),
            hash_slot_count: i32_at(32),
            index_count: i32_at(36),
        }
    }
}

/// abs(String.hashCode(key)), with the one negative absolute value mapped to 0.
pub fn key_hash(key: &str) -> i32 {
    slot_hash(super::record::java_hash(key))
}

/// [`key_hash`] of `topic#key`, the form a message key is indexed under, without building it.
pub fn topic_key_hash(topic: &str, key: &str) -> i32 {
    use super::record::{java_hash, java_hash_from};
    slot_hash(java_hash_from(java_hash_from(java_hash(topic), "#"), key))
}

fn slot_hash(h: i32) -> i32 {
    if h == i32::MIN {
        0
    } else {
        h.abs()
    }
}

pub struct IndexFile {
    pub name: String,
    seg: Segment,
    pub header: Header,
    slots: u64,
    max_entries: u64,
    /// `index_count` when the file was last synced (or opened).
    synced_count: i32,
    /// `index_count` at the last checkpoint's look (see [`IndexService::flush`]).
    seen_count: i32,
}

impl IndexFile {
    pub fn size(slots: u64, entries: u64) -> u64 {
        HEADER_SIZE + slots * 4 + entries * ENTRY
    }

    async fn open(
        disk: &Disk,
        dir: &std::path::Path,
        name: &str,
        slots: u64,
        entries: u64,
    ) -> Result<IndexFile, StoreError> {
        let seg = disk.open_segment(&dir.join(name), Self::size(slots, entries)).await?;
        let header = Header::decode(&seg.read_at(0, HEADER_SIZE as usize).await?);
        let count = header.index_count;
        Ok(IndexFile {
            name: name.to_string(),
            seg,
            header,
            slots,
            max_entries: entries,
            synced_count: count,
            seen_count: count,
        })
    }

    fn is_full(&self) -> bool {
        self.header.index_count as u64 >= self.max_entries
    }

    async fn read_i32(&self, pos: u64) -> Result<i32, StoreError> {
        let mut b = [0u8; 4];
        self.seg.read_into(pos, &mut b).await?;
        Ok(i32::from_be_bytes(b))
    }

    async fn put(&mut self, hash: i32, phys: i64, store_ts: i64) -> Result<(), StoreError> {
        let slot_pos = HEADER_SIZE + (hash as u64 % self.slots) * 4;
        let mut prev = self.read_i32(slot_pos).await?;
        if prev < 0 || prev as i64 > self.header.index_count as i64 {
            prev = 0;
        }
        if self.header.index_count == 0 {
            self.header = Header {
                begin_timestamp: store_ts,
                end_timestamp: store_ts,
                begin_phy_offset: phys,
                end_phy_offset: phys,
                hash_slot_count: 0,
                index_count: 1,
            };
        }
        let n = self.header.index_count as u64;
        let diff_s = ((store_ts - self.header.begin_timestamp) / 1000).clamp(0, i32::MAX as i64) as i32;
        let mut e = [0u8; 20];
        e[0..4].copy_from_slice(&hash.to_be_bytes());
        e[4..12].copy_from_slice(&phys.to_be_bytes());
        e[12..16].copy_from_slice(&diff_s.to_be_bytes());
        e[16..20].copy_from_slice(&prev.to_be_bytes());
        let entry_pos = HEADER_SIZE + self.slots * 4 + n * ENTRY;
        self.seg.write_at(entry_pos, &e).await?;
        self.seg.write_at(slot_pos, &(n as i32).to_be_bytes()).await?;
        if prev == 0 {
            self.header.hash_slot_count += 1;
        }
        self.header.index_count += 1;
        self.header.end_timestamp = store_ts;
        self.header.end_phy_offset = phys;
        self.seg.write_at(0, &self.header.encode()).await?;
        Ok(())
    }

    /// Candidate offsets for `key` stored within `[begin, end]` ms, newest first.
    async fn query(&self, key: &str, max: usize, begin: i64, end: i64, out: &mut Vec<i64>) -> Result<(), StoreError> {
        let hash = key_hash(key);
        let count = self.header.index_count as i64;
        let mut cur = self.read_i32(HEADER_SIZE + (hash as u64 % self.slots) * 4).await? as i64;
        let mut steps = 0;
        while cur > 0 && cur < count && out.len() < max && steps < self.max_entries {
            let pos = HEADER_SIZE + self.slots * 4 + cur as u64 * ENTRY;
            let mut e = [0u8; ENTRY as usize];
            self.seg.read_into(pos, &mut e).await?;
            let h = i32::from_be_bytes(e[0..4].try_into().unwrap());
            let phys = i64::from_be_bytes(e[4..12].try_into().unwrap());
            let diff = i32::from_be_bytes(e[12..16].try_into().unwrap()) as i64;
            let prev = i32::from_be_bytes(e[16..20].try_into().unwrap()) as i64;
            let ts = self.header.begin_timestamp + diff * 1000;
            if h == hash && ts >= begin.saturating_sub(1000) && ts <= end.saturating_add(1000) && !out.contains(&phys) {
                out.push(phys);
            }
            // Chains only point backwards; anything else is a torn entry.
            if prev >= cur {
                break;
            }
            cur = prev;
            steps += 1;
        }
        Ok(())
    }
}

pub struct IndexService {
    disk: Disk,
    dir: PathBuf,
    slots: u64,
    entries: u64,
    files: Vec<IndexFile>,
}

/// How far a checkpoint's index flush made the index durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexDurable {
    /// Every entry written before the flush began.
    All,
    /// Entries of records below this commitlog offset: the file being filled from there on
    /// was left unsynced (see [`IndexService::flush`]).
    Below(u64),
}

/// Index file names are the creation time as `yyyyMMddHHmmssSSS` (UTC here).
pub fn file_name_for(ms: u64) -> String {
    let (secs, milli) = (ms / 1000, ms % 1000);
    let days = secs / 86400;
    let rem = secs % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}{:02}{:02}{:02}{milli:03}", rem / 3600, rem % 3600 / 60, rem % 60)
}

impl IndexService {
    pub async fn load(disk: &Disk, dir: PathBuf, slots: u64, entries: u64) -> Result<IndexService, StoreError> {
        disk.create_dir_all(&dir).await?;
        let mut files = Vec::new();
        for name in disk.list(&dir).await? {
            if name.len() == 17 && name.bytes().all(|b| b.is_ascii_digit()) {
                files.push(IndexFile::open(disk, &dir, &name, slots, entries).await?);
            }
        }
        Ok(IndexService { disk: disk.clone(), dir, slots, entries, files })
    }

    /// Deletes every file holding entries at or past `safe_phys` (not covered by the last
    /// checkpoint) and returns the commitlog offset from which the index must be rebuilt.
    pub async fn drop_unsafe(&mut self, safe_phys: u64) -> Result<u64, StoreError> {
        let mut rebuild_from = safe_phys;
        while let Some(last) = self.files.last() {
            if last.header.index_count > 0 && (last.header.end_phy_offset as u64) < safe_phys {
                break;
            }
            let f = self.files.pop().unwrap();
            if f.header.index_count > 0 {
                rebuild_from = rebuild_from.min(f.header.begin_phy_offset as u64);
            }
            tracing::info!(file = %f.name, begin = f.header.begin_phy_offset, end = f.header.end_phy_offset,
                "recovery: index file not covered by checkpoint, rebuilding it from the commitlog");
            self.disk.remove_file(&self.dir.join(&f.name)).await?;
        }
        Ok(rebuild_from)
    }

    /// Indexes `phys` under a key's [`key_hash`] (for a message key, [`topic_key_hash`]).
    pub async fn put(&mut self, hash: i32, phys: i64, store_ts: i64) -> Result<(), StoreError> {
        if self.files.last().is_none_or(|f| f.is_full()) {
            let mut name = file_name_for(store_ts.max(0) as u64);
            while self.files.iter().any(|f| f.name >= name) {
                // Names must sort by creation; bump past the newest on a clock tie.
                let newest: u64 = self.files.last().unwrap().name.parse().unwrap_or(0);
                name = format!("{:017}", newest + 1);
            }
            let f = IndexFile::open(&self.disk, &self.dir, &name, self.slots, self.entries).await?;
            self.files.push(f);
        }
        self.files.last_mut().unwrap().put(hash, phys, store_ts).await
    }

    /// Candidate commitlog offsets for `key`, newest file first, at most `max`.
    pub async fn query(&self, key: &str, max: usize, begin: i64, end: i64) -> Result<Vec<i64>, StoreError> {
        let mut out = Vec::new();
        for f in self.files.iter().rev() {
            if f.header.index_count <= 1 || f.header.end_timestamp < begin || f.header.begin_timestamp > end {
                continue;
            }
            f.query(key, max, begin, end, &mut out).await?;
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    /// Syncs the files changed since their last sync that will not change soon: full ones,
    /// and the one being filled if no entry came since the last look (an idle broker's
    /// crash then rebuilds nothing); with `all` (shutdown, tests) every changed file.
    ///
    /// A file being filled is left alone under load because syncing it buys nothing: its
    /// slot table takes writes all over its 20 MB, so each sync wrote thousands of scattered
    /// pages (~1 s of appends dirtied nearly all of them) and delayed SYNC_FLUSH's group
    /// syncs behind that I/O, while recovery after a crash drops and rebuilds any file with
    /// entries past the checkpoint anyway, synced or not (as RocketMQ, which syncs an index
    /// file only once it is full). The syncs run without the index lock: a put indexes
    /// under it, and one of these syncs took up to hundreds of ms.
    pub async fn flush(index: &crate::rt::sync::Mutex<IndexService>, all: bool) -> Result<IndexDurable, StoreError> {
        let mut durable = IndexDurable::All;
        let changed: Vec<(String, Segment, u64, i32)> = {
            let mut ix = index.lock().await;
            let slots = ix.slots;
            let mut changed = Vec::new();
            for f in ix.files.iter_mut() {
                let count = f.header.index_count;
                let quiet = count == f.seen_count;
                f.seen_count = count;
                if count == f.synced_count {
                    continue;
                }
                if !(all || quiet || f.is_full()) {
                    if durable == IndexDurable::All {
                        durable = IndexDurable::Below(f.header.begin_phy_offset.max(0) as u64);
                    }
                    continue;
                }
                let used = HEADER_SIZE + slots * 4 + (count.max(1) as u64 + 1) * ENTRY;
                changed.push((f.name.clone(), f.seg.clone(), used.min(f.seg.size()), count));
            }
            changed
        };
        for (_, seg, used, _) in &changed {
            seg.sync_aside(0, *used).await?;
        }
        let mut ix = index.lock().await;
        for (name, _, _, count) in changed {
            if let Some(f) = ix.files.iter_mut().find(|f| f.name == name) {
                f.synced_count = count;
            }
        }
        Ok(durable)
    }

    /// Retention: removes files whose newest entry is below `log_min`.
    pub async fn remove_expired(&mut self, log_min: u64) -> Result<usize, StoreError> {
        let mut removed = 0;
        while self.files.len() > 1 && (self.files[0].header.end_phy_offset as u64) < log_min {
            let f = self.files.remove(0);
            self.disk.remove_file(&self.dir.join(&f.name)).await?;
            removed += 1;
        }
        Ok(removed)
    }

    pub fn file_count(&self) -> usize {
        self.files.len()
    }
}
