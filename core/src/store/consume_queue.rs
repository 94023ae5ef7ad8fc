//! ConsumeQueue: per topic and queue id, a dense array of 20-byte entries
//! (`i64 commitlog offset, i32 size, i64 tag code`) in files of `mappedFileSizeConsumeQueue`
//! bytes named by their 20-digit byte offset. Logical offset = byte offset / 20.
//!
//! Invariants: entries below `max_offset` are complete and point inside the commitlog; an
//! entry is written before `max_offset` moves past it, so readers never see a half entry.
//! A queue is derived data: recovery truncates entries pointing past the log and the
//! dispatcher rebuilds whatever is missing from the log.

use super::StoreError;
use crate::rt::disk::{Disk, Segment};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

pub const ENTRY_SIZE: u64 = 20;
/// RocketMQ's filler for offsets below a queue's first real entry.
pub const FILLER: Entry = Entry { phys_offset: 0, size: i32::MAX, tags_code: 0 };

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub phys_offset: i64,
    pub size: i32,
    pub tags_code: i64,
}

impl Entry {
    fn encode(&self) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[..8].copy_from_slice(&self.phys_offset.to_be_bytes());
        b[8..12].copy_from_slice(&self.size.to_be_bytes());
        b[12..].copy_from_slice(&self.tags_code.to_be_bytes());
        b
    }

    fn decode(b: &[u8]) -> Entry {
        Entry {
            phys_offset: i64::from_be_bytes(b[..8].try_into().unwrap()),
            size: i32::from_be_bytes(b[8..12].try_into().unwrap()),
            tags_code: i64::from_be_bytes(b[12..20].try_into().unwrap()),
        }
    }

    /// RocketMQ's recovery predicate: an entry is present while offset ≥ 0 and size > 0.
    fn is_valid(&self) -> bool {
        self.phys_offset >= 0 && self.size > 0
    }

    pub fn is_filler(&self) -> bool {
        self.size == i32::MAX
    }
}

pub struct ConsumeQueue {
    pub topic: String,
    pub queue_id: i32,
    disk: Disk,
    dir: PathBuf,
    file_size: u64,
    files: RwLock<BTreeMap<u64, Segment>>,
    /// Next logical offset to write (entries written).
    max_offset: AtomicU64,
    /// First logical offset that can still be read.
    min_offset: AtomicU64,
    /// Bytes made durable.
    flushed: AtomicU64,
}

impl ConsumeQueue {
    pub fn new(disk: &Disk, dir: PathBuf, topic: &str, queue_id: i32, file_size: u64) -> ConsumeQueue {
        assert!(
            file_size.is_multiple_of(ENTRY_SIZE) && file_size > 0,
            "mappedFileSizeConsumeQueue must be a multiple of 20"
        );
        ConsumeQueue {
            topic: topic.to_string(),
            queue_id,
            disk: disk.clone(),
            dir,
            file_size,
            files: RwLock::new(BTreeMap::new()),
            max_offset: AtomicU64::new(0),
            min_offset: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
        }
    }

    /// Opens the queue's files and finds its end: the newest file with a valid first entry,
    /// read up to its first invalid entry. Trailing files with no valid entry are removed.
    pub async fn load(&self) -> Result<(), StoreError> {
        let mut files = BTreeMap::new();
        for name in self.disk.list(&self.dir).await? {
            if let Ok(base) = name.parse::<u64>() {
                files.insert(base, self.disk.open_segment(&self.dir.join(&name), self.file_size).await?);
            }
        }
        // The end is in the newest file that starts with a valid entry and whose predecessor
        // is full: after a power loss a newer file can keep a torn prefix while the file
        // before it lost its tail, and entries must stay contiguous.
        let mut end = None;
        let bases: Vec<u64> = files.keys().copied().collect();
        for (i, base) in bases.iter().enumerate().rev() {
            let data = files[base].read_at(0, self.file_size as usize).await?;
            let n = data.chunks_exact(ENTRY_SIZE as usize).take_while(|c| Entry::decode(c).is_valid()).count();
            if n == 0 {
                continue;
            }
            if i > 0 {
                let prev = &files[&bases[i - 1]];
                let last = prev.read_at(self.file_size - ENTRY_SIZE, ENTRY_SIZE as usize).await?;
                if bases[i - 1] + self.file_size != *base || !Entry::decode(&last).is_valid() {
                    continue;
                }
            }
            end = Some(base + n as u64 * ENTRY_SIZE);
            break;
        }
        let end = end.unwrap_or(0);
        let empty_tail: Vec<u64> = files.range(end..).map(|(b, _)| *b).collect();
        for b in empty_tail {
            files.remove(&b);
            self.disk.remove_file(&self.dir.join(super::commitlog::file_name(b))).await?;
        }
        let min = files.keys().next().copied().unwrap_or(end);
        let min = min.min(end);
        *self.files.write().unwrap() = files;
        self.max_offset.store(end / ENTRY_SIZE, Ordering::Release);
        // After a process crash, surviving entries may still sit only in the page cache: the
        // first flush after recovery syncs them all.
        self.flushed.store(min, Ordering::Release);
        self.min_offset.store(min / ENTRY_SIZE, Ordering::Release);
        // Skip the fillers a queue started at a non-zero offset begins with.
        self.correct_min_offset(0).await
    }

    pub fn max_offset(&self) -> u64 {
        self.max_offset.load(Ordering::Acquire)
    }

    pub fn min_offset(&self) -> u64 {
        self.min_offset.load(Ordering::Acquire).min(self.max_offset())
    }

    fn file_at(&self, byte_pos: u64) -> Option<(u64, Segment)> {
        let files = self.files.read().unwrap();
        files
            .range(..=byte_pos)
            .next_back()
            .filter(|(b, _)| byte_pos < *b + self.file_size)
            .map(|(b, s)| (*b, s.clone()))
    }

    async fn file_for_write(&self, base: u64) -> Result<Segment, StoreError> {
        let existing = self.files.read().unwrap().get(&base).cloned();
        if let Some(s) = existing {
            return Ok(s);
        }
        self.disk.create_dir_all(&self.dir).await?;
        let path = self.dir.join(super::commitlog::file_name(base));
        let seg = self.disk.open_segment(&path, self.file_size).await?;
        self.files.write().unwrap().insert(base, seg.clone());
        Ok(seg)
    }

    /// Writes the entry for `offset`. Appending at the end is the normal case; an offset past
    /// the end of an empty queue starts it there behind fillers (a queue created after the log
    /// moved on); a gap in a non-empty queue is filled with fillers and logged.
    pub async fn put(&self, offset: u64, entry: Entry) -> Result<(), StoreError> {
        let max = self.max_offset();
        assert!(offset >= max, "consume queue {}-{} rewrite at {offset} < {max}", self.topic, self.queue_id);
        if offset > max {
            if max > 0 {
                tracing::warn!(topic = %self.topic, queue = self.queue_id, from = max, to = offset,
                    "consume queue gap filled with filler entries");
            }
            let first = if max == 0 { offset - (offset * ENTRY_SIZE % self.file_size) / ENTRY_SIZE } else { max };
            for o in first..offset {
                self.write_entry(o, FILLER).await?;
            }
            if max == 0 {
                self.min_offset.store(offset, Ordering::Release);
            }
        }
        self.write_entry(offset, entry).await?;
        self.max_offset.store(offset + 1, Ordering::Release);
        Ok(())
    }

    async fn write_entry(&self, offset: u64, entry: Entry) -> Result<(), StoreError> {
        let pos = offset * ENTRY_SIZE;
        let base = pos - pos % self.file_size;
        let seg = self.file_for_write(base).await?;
        seg.write_at(pos - base, &entry.encode()).await?;
        Ok(())
    }

    /// Up to `max` entries starting at `offset`, never crossing a file.
    pub async fn entries(&self, offset: u64, max: usize) -> Result<Vec<Entry>, StoreError> {
        let end = self.max_offset();
        if offset >= end || offset < self.min_offset() {
            return Ok(Vec::new());
        }
        let pos = offset * ENTRY_SIZE;
        let Some((base, seg)) = self.file_at(pos) else { return Ok(Vec::new()) };
        let in_file = (base + self.file_size - pos) / ENTRY_SIZE;
        let n = (max as u64).min(end - offset).min(in_file) as usize;
        let data = seg.read_at(pos - base, n * ENTRY_SIZE as usize).await?;
        Ok(data.chunks_exact(ENTRY_SIZE as usize).map(Entry::decode).collect())
    }

    pub async fn entry(&self, offset: u64) -> Result<Option<Entry>, StoreError> {
        if offset >= self.max_offset() || offset < self.min_offset() {
            return Ok(None);
        }
        let pos = offset * ENTRY_SIZE;
        let Some((base, seg)) = self.file_at(pos) else { return Ok(None) };
        let mut b = [0u8; ENTRY_SIZE as usize];
        seg.read_into(pos - base, &mut b).await?;
        Ok(Some(Entry::decode(&b)))
    }

    /// The commitlog offset just past the last entry, or 0 if the queue is empty.
    pub async fn max_phys_end(&self) -> Result<u64, StoreError> {
        let max = self.max_offset();
        if max == 0 || max <= self.min_offset() {
            return Ok(0);
        }
        Ok(match self.entry(max - 1).await? {
            Some(e) if !e.is_filler() => e.phys_offset as u64 + e.size as u64,
            _ => 0,
        })
    }

    /// Drops, from the end back, every entry that is not a valid entry ending at or before
    /// `phys_end`: entries for records the log lost, torn entries, and zeroed holes (files are
    /// torn independently, so a hole can sit before entries that look valid). Returns the
    /// dropped logical range.
    pub async fn truncate_dirty(&self, phys_end: u64) -> Result<Option<(u64, u64)>, StoreError> {
        let max = self.max_offset();
        let min = self.min_offset();
        let mut keep = max;
        while keep > min {
            match self.entry(keep - 1).await? {
                Some(e) if e.is_filler() => break,
                Some(e) if e.is_valid() && e.phys_offset as u64 + e.size as u64 <= phys_end => break,
                _ => keep -= 1,
            }
        }
        if keep == max {
            return Ok(None);
        }
        self.truncate_to(keep).await?;
        Ok(Some((keep, max)))
    }

    /// Drops every entry at or after logical offset `keep`, zeroing them on disk.
    pub async fn truncate_to(&self, keep: u64) -> Result<(), StoreError> {
        let pos = keep * ENTRY_SIZE;
        let base = pos - pos % self.file_size;
        let seg = self.files.read().unwrap().get(&base).cloned();
        if let Some(seg) = seg {
            let zeros = vec![0u8; (self.file_size - (pos - base)) as usize];
            seg.write_at(pos - base, &zeros).await?;
            seg.sync(pos - base, self.file_size).await?;
        }
        let later: Vec<u64> = self.files.read().unwrap().range(base + 1..).map(|(b, _)| *b).collect();
        for b in later {
            self.files.write().unwrap().remove(&b);
            self.disk.remove_file(&self.dir.join(super::commitlog::file_name(b))).await?;
        }
        self.max_offset.store(keep, Ordering::Release);
        self.flushed.fetch_min(pos, Ordering::AcqRel);
        if keep <= self.min_offset.load(Ordering::Acquire) {
            self.min_offset.store(keep, Ordering::Release);
        }
        Ok(())
    }

    /// Makes all written entries durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let to = self.max_offset() * ENTRY_SIZE;
        let from = self.flushed.load(Ordering::Acquire);
        if to <= from {
            return Ok(());
        }
        let files: Vec<(u64, Segment)> = {
            let f = self.files.read().unwrap();
            f.range(from - from % self.file_size..to).map(|(b, s)| (*b, s.clone())).collect()
        };
        for (base, seg) in files {
            seg.sync_aside(from.max(base) - base, to.min(base + self.file_size) - base).await?;
        }
        self.flushed.fetch_max(to, Ordering::AcqRel);
        Ok(())
    }

    /// Retention: removes whole files whose last entry points below `log_min`, and moves the
    /// min offset to the first entry still backed by the log.
    pub async fn remove_expired(&self, log_min: u64) -> Result<usize, StoreError> {
        let per_file = self.file_size / ENTRY_SIZE;
        let mut removed = 0;
        loop {
            let (base, seg) = {
                let files = self.files.read().unwrap();
                if files.len() <= 1 {
                    break;
                }
                let (b, s) = files.iter().next().unwrap();
                (*b, s.clone())
            };
            let last = seg.read_at(self.file_size - ENTRY_SIZE, ENTRY_SIZE as usize).await?;
            let last = Entry::decode(&last);
            if last.is_valid() && (last.is_filler() || (last.phys_offset as u64) + (last.size as u64) <= log_min) {
                self.files.write().unwrap().remove(&base);
                self.disk.remove_file(&self.dir.join(super::commitlog::file_name(base))).await?;
                self.min_offset.fetch_max(base / ENTRY_SIZE + per_file, Ordering::AcqRel);
                removed += 1;
            } else {
                break;
            }
        }
        self.correct_min_offset(log_min).await?;
        Ok(removed)
    }

    /// Moves the min offset past fillers and entries whose record is below `log_min`.
    async fn correct_min_offset(&self, log_min: u64) -> Result<(), StoreError> {
        loop {
            let min = self.min_offset();
            if min >= self.max_offset() {
                return Ok(());
            }
            let batch = self.entries(min, 1024).await?;
            let skip = batch.iter().take_while(|e| e.is_filler() || (e.phys_offset as u64) < log_min).count();
            self.min_offset.store(min + skip as u64, Ordering::Release);
            if skip < batch.len() || batch.is_empty() {
                return Ok(());
            }
        }
    }

    pub fn file_count(&self) -> usize {
        self.files.read().unwrap().len()
    }
}
