//! CommitLog: the append-only log of records in fixed-size segment files named by their
//! 20-digit start offset. A record that does not fit the rest of a segment leaves a blank
//! marker (`i32 space left, i32 BLANK_MAGIC`) and goes to the next segment.
//!
//! Invariants: bytes below `write_pos` are complete records and are never rewritten while the
//! store runs; bytes below `flushed` are durable. Appends are serialized by the caller (the
//! store's put lock). Recovery ([`CommitLog::scan`] + [`CommitLog::truncate`]) finds the end
//! of the last valid record and zeroes whatever follows it, so a torn tail never reappears.

use super::record::{self, RecordError, BLANK_LEN, BLANK_MAGIC};
use super::StoreError;
use crate::rt::disk::{Disk, Segment};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

pub fn file_name(offset: u64) -> String {
    format!("{offset:020}")
}

pub struct CommitLog {
    disk: Disk,
    dir: PathBuf,
    segment_size: u64,
    segments: RwLock<BTreeMap<u64, Segment>>,
    write_pos: AtomicU64,
    flushed: AtomicU64,
    /// forceVerifyPropCRC: records without the whole-record CRC count as corrupt.
    require_crc: bool,
    /// warmMapedFileEnable.
    warm: bool,
    /// SYNC_FLUSH: every group of appends is synced (see `Segment::set_write_pattern`).
    synced_often: bool,
    /// The segment after the one being written, opened in the background once appends reach
    /// the one before it (RocketMQ's AllocateMappedFileService): the put that crossed into a
    /// new 1 GiB segment waited 4-86 ms for its preallocation and first page faults here, and
    /// takes 10-20 µs with it ready. Its file exists on disk, but it is not in `segments`
    /// until an append needs it.
    ahead: Mutex<Option<(u64, Ahead)>>,
    /// The base `ahead` was last asked for (`u64::MAX`: none), checked on every append.
    ahead_base: AtomicU64,
}

enum Ahead {
    Opening(crate::rt::task::JoinHandle<std::io::Result<Segment>>),
    Ready(Segment),
}

impl CommitLog {
    /// Opens every segment in `dir`. A segment of the wrong size is an error (as in RocketMQ).
    pub async fn load(
        disk: &Disk,
        dir: PathBuf,
        segment_size: u64,
        require_crc: bool,
        warm: bool,
        synced_often: bool,
    ) -> Result<CommitLog, StoreError> {
        assert!(segment_size as usize > BLANK_LEN * 2);
        disk.create_dir_all(&dir).await?;
        let mut segments = BTreeMap::new();
        for name in disk.list(&dir).await? {
            let Ok(base) = name.parse::<u64>() else {
                tracing::warn!(file = %name, dir = %dir.display(), "ignoring non-segment file in commitlog dir");
                continue;
            };
            if base % segment_size != 0 {
                return Err(StoreError::Corrupt(format!(
                    "commitlog segment {name} is not aligned to mappedFileSizeCommitLog {segment_size}"
                )));
            }
            let seg = disk.open_segment(&dir.join(&name), segment_size).await?;
            seg.set_write_pattern(warm, synced_often);
            segments.insert(base, seg);
        }
        let end = segments.keys().next_back().copied().unwrap_or(0);
        Ok(CommitLog {
            disk: disk.clone(),
            dir,
            segment_size,
            segments: RwLock::new(segments),
            write_pos: AtomicU64::new(end),
            flushed: AtomicU64::new(end),
            require_crc,
            warm,
            synced_often,
            ahead: Mutex::new(None),
            ahead_base: AtomicU64::new(u64::MAX),
        })
    }

    pub fn segment_size(&self) -> u64 {
        self.segment_size
    }

    pub fn min_offset(&self) -> u64 {
        let segs = self.segments.read().unwrap();
        segs.keys().next().copied().unwrap_or_else(|| self.write_pos())
    }

    pub fn write_pos(&self) -> u64 {
        self.write_pos.load(Ordering::Acquire)
    }

    pub fn flushed(&self) -> u64 {
        self.flushed.load(Ordering::Acquire)
    }

    pub fn segment_bases(&self) -> Vec<u64> {
        self.segments.read().unwrap().keys().copied().collect()
    }

    fn segment_at(&self, offset: u64) -> Option<(u64, Segment)> {
        let segs = self.segments.read().unwrap();
        segs.range(..=offset).next_back().map(|(b, s)| (*b, s.clone()))
    }

    async fn segment_for_write(&self, base: u64) -> Result<Segment, StoreError> {
        let existing = self.segments.read().unwrap().get(&base).cloned();
        if let Some(s) = existing {
            return Ok(s);
        }
        let ahead = {
            let mut ahead = self.ahead.lock().unwrap();
            if ahead.as_ref().is_some_and(|(b, _)| *b == base) {
                ahead.take().map(|(_, a)| a)
            } else {
                None
            }
        };
        let opened = match ahead {
            Some(Ahead::Ready(seg)) => Some(seg),
            Some(Ahead::Opening(handle)) => match handle.await {
                Ok(Ok(seg)) => Some(seg),
                Ok(Err(e)) => {
                    // Opened again below, so the put that needs it reports the error (a full disk).
                    tracing::debug!(base, error = %e, "opening the next commitlog segment ahead failed");
                    None
                }
                Err(_) => None,
            },
            None => None,
        };
        let seg = match opened {
            Some(seg) => seg,
            None => self.disk.open_segment(&self.dir.join(file_name(base)), self.segment_size).await?,
        };
        seg.set_write_pattern(self.warm, self.synced_often);
        self.segments.write().unwrap().insert(base, seg.clone());
        Ok(seg)
    }

    /// Starts opening the segment at `next` in the background unless that is under way or done.
    fn open_ahead(&self, next: u64) {
        if self.ahead_base.load(Ordering::Relaxed) == next {
            return;
        }
        self.ahead_base.store(next, Ordering::Relaxed);
        if self.segments.read().unwrap().contains_key(&next) {
            return;
        }
        let path = self.dir.join(file_name(next));
        let handle = self.disk.open_segment_ahead(path, self.segment_size, self.warm, self.synced_often);
        *self.ahead.lock().unwrap() = Some((next, Ahead::Opening(handle)));
    }

    /// Waits for a segment being opened ahead, so its file is whole before the store's
    /// directory lock is released (shutdown).
    pub async fn settle_ahead(&self) {
        let opening = self.ahead.lock().unwrap().take();
        let settled = match opening {
            Some((b, Ahead::Opening(h))) => match h.await {
                Ok(Ok(seg)) => Some((b, Ahead::Ready(seg))),
                _ => None,
            },
            other => other,
        };
        if settled.is_none() {
            self.ahead_base.store(u64::MAX, Ordering::Relaxed);
        }
        *self.ahead.lock().unwrap() = settled;
    }

    /// A killed process: a segment still being opened ahead is left as it is.
    pub fn abandon_ahead(&self) {
        if let Some((_, Ahead::Opening(h))) = self.ahead.lock().unwrap().take() {
            h.abort();
        }
    }

    /// Appends one encoded record at the end, patching its physical offset, queue offset and
    /// store timestamp; returns its physical offset. Publishes the new end only after the
    /// bytes are written, so a failed write leaves nothing visible. Caller holds the put lock.
    pub async fn append(&self, rec: &mut [u8], queue_offset: i64, store_ts: i64) -> Result<u64, StoreError> {
        let len = rec.len() as u64;
        assert!(len + BLANK_LEN as u64 <= self.segment_size, "record larger than a segment");
        let mut pos = self.write_pos();
        let base = pos - pos % self.segment_size;
        let left = self.segment_size - (pos - base);
        let mut seg = self.segment_for_write(base).await?;
        self.open_ahead(base + self.segment_size);
        if len + BLANK_LEN as u64 > left {
            // Open the next segment first: if that fails (disk full), nothing has changed.
            let next = self.segment_for_write(base + self.segment_size).await?;
            let mut blank = [0u8; BLANK_LEN];
            blank[..4].copy_from_slice(&(left as i32).to_be_bytes());
            blank[4..].copy_from_slice(&BLANK_MAGIC.to_be_bytes());
            seg.write_at(pos - base, &blank).await?;
            pos = base + self.segment_size;
            seg = next;
        }
        record::patch(rec, queue_offset, pos as i64, store_ts);
        seg.write_at(pos % self.segment_size, rec).await?;
        self.write_pos.store(pos + len, Ordering::Release);
        Ok(pos)
    }

    /// Replication: writes bytes received from a master verbatim at `at` (the end of this log,
    /// or a segment base when the log is empty), inside one segment. Caller holds the put lock.
    pub async fn append_raw(&self, at: u64, data: &[u8]) -> Result<(), StoreError> {
        let empty = self.segments.read().unwrap().is_empty();
        if empty && at != self.write_pos() {
            if !at.is_multiple_of(self.segment_size) {
                return Err(StoreError::Corrupt(format!("a replica log must start at a segment base, not {at}")));
            }
            self.set_recovered_end(at);
        }
        if at != self.write_pos() {
            return Err(StoreError::Corrupt(format!(
                "replicated bytes at {at}, but this log ends at {}",
                self.write_pos()
            )));
        }
        let base = at - at % self.segment_size;
        if at - base + data.len() as u64 > self.segment_size {
            return Err(StoreError::Corrupt(format!("replicated bytes at {at}+{} span segments", data.len())));
        }
        let seg = self.segment_for_write(base).await?;
        self.open_ahead(base + self.segment_size);
        // Handed to the OS before the caller confirms them: a slave's process crash must not
        // lose bytes its master counts as replicated (under SYNC_FLUSH appends are otherwise
        // held until the next sync).
        seg.write_through(at - base, data).await?;
        self.write_pos.store(at + data.len() as u64, Ordering::Release);
        Ok(())
    }

    /// Bytes `offset..offset+len` of one record (never spanning segments).
    pub async fn read(&self, offset: u64, len: usize) -> Result<Bytes, StoreError> {
        if offset + len as u64 > self.write_pos() {
            return Err(StoreError::NotFound(format!("commitlog offset {offset}+{len} past the end")));
        }
        let (base, seg) = self
            .segment_at(offset)
            .ok_or_else(|| StoreError::NotFound(format!("commitlog offset {offset} was removed")))?;
        if offset - base + len as u64 > self.segment_size {
            return Err(StoreError::NotFound(format!("commitlog offset {offset}+{len} spans segments")));
        }
        Ok(seg.read_at(offset - base, len).await?)
    }

    /// Bytes at `offset` regardless of the published end (recovery only).
    pub async fn peek(&self, offset: u64, len: usize) -> Result<Option<Bytes>, StoreError> {
        match self.segment_at(offset) {
            Some((base, seg)) if offset - base + len as u64 <= self.segment_size => {
                Ok(Some(seg.read_at(offset - base, len).await?))
            }
            _ => Ok(None),
        }
    }

    /// Reads and fully checks the record at `offset`. `size` (from a consume-queue entry) is
    /// checked against the record's own length when given.
    pub async fn read_record(&self, offset: u64, size: Option<usize>) -> Result<record::MessageExt, StoreError> {
        Ok(self.read_checked(offset, size).await?.1)
    }

    /// The raw bytes of the record at `offset` and its decoded form, after every check.
    pub async fn read_checked(
        &self,
        offset: u64,
        size: Option<usize>,
    ) -> Result<(Bytes, record::MessageExt), StoreError> {
        let len = match size {
            Some(s) => s,
            None => {
                let head = self.read(offset, 4).await?;
                i32::from_be_bytes(head[..4].try_into().unwrap()).max(0) as usize
            }
        };
        let buf = self.read(offset, len).await?;
        let msg = record::check_record(&buf, self.require_crc)
            .map_err(|e| StoreError::CorruptRecord { offset, reason: e })?;
        if msg.total_size as usize != len || msg.phys_offset as u64 != offset {
            return Err(StoreError::CorruptRecord {
                offset,
                reason: RecordError::LengthMismatch { declared: len, needed: msg.total_size as usize },
            });
        }
        Ok((buf, msg))
    }

    /// Walks valid records from `from` (a record boundary) to the first invalid one, calling
    /// `visit` for each. Returns the end of the last valid record and, if the walk stopped on
    /// something other than clean zeros, why.
    pub async fn scan(
        &self,
        from: u64,
        mut visit: impl AsyncFnMut(record::MessageExt) -> Result<(), StoreError>,
    ) -> Result<(u64, Option<String>), StoreError> {
        let mut pos = from;
        for (base, seg) in self.segments_from(from) {
            if pos < base {
                // A segment is missing in the middle: everything after the gap is unreachable.
                return Ok((pos, Some(format!("segment gap before {base}"))));
            }
            let data = seg.read_at(0, self.segment_size as usize).await?;
            let mut at = (pos - base) as usize;
            loop {
                if at + BLANK_LEN > data.len() {
                    return Ok((pos, Some(format!("segment {base} ends without a blank marker"))));
                }
                let total = i32::from_be_bytes(data[at..at + 4].try_into().unwrap());
                let magic = u32::from_be_bytes(data[at + 4..at + 8].try_into().unwrap());
                if total == 0 && magic == 0 {
                    return Ok((pos, None));
                }
                if magic == BLANK_MAGIC && total as usize == data.len() - at {
                    pos = base + self.segment_size;
                    break;
                }
                let fits = total > 0 && at + total as usize + BLANK_LEN <= data.len();
                if !fits {
                    return Ok((pos, Some(format!("record at {pos}: bad size {total} (magic {magic:#x})"))));
                }
                let rec = data.slice(at..at + total as usize);
                match record::check_record(&rec, self.require_crc) {
                    Ok(m) if m.phys_offset as u64 == pos => visit(m).await?,
                    Ok(m) => {
                        return Ok((pos, Some(format!("record at {pos} claims offset {}", m.phys_offset))));
                    }
                    Err(e) => return Ok((pos, Some(format!("record at {pos}: {e}")))),
                }
                at += total as usize;
                pos += total as u64;
            }
        }
        Ok((pos, None))
    }

    fn segments_from(&self, from: u64) -> Vec<(u64, Segment)> {
        let segs = self.segments.read().unwrap();
        let start = from - from % self.segment_size;
        segs.range(start..).map(|(b, s)| (*b, s.clone())).collect()
    }

    /// Cuts the log at `end`: zeroes the rest of the segment holding `end` (up to the first
    /// all-zero chunk, beyond which nothing was ever written) and removes later segments.
    /// Returns the number of non-zero bytes dropped (a later segment that held any counts
    /// whole).
    pub async fn truncate(&self, end: u64) -> Result<u64, StoreError> {
        const CHUNK: usize = 64 * 1024;
        let mut dropped = 0u64;
        let base = end - end % self.segment_size;
        let seg = self.segments.read().unwrap().get(&base).cloned();
        if let Some(seg) = seg {
            let mut at = end - base;
            while at < self.segment_size {
                let n = CHUNK.min((self.segment_size - at) as usize);
                let chunk = seg.read_at(at, n).await?;
                let nonzero = chunk.iter().rposition(|b| *b != 0);
                let Some(last) = nonzero else { break };
                dropped += last as u64 + 1;
                seg.write_at(at, &vec![0u8; last + 1]).await?;
                seg.sync(at, at + last as u64 + 1).await?;
                at += n as u64;
            }
        }
        // Later segments go, and a segment opened ahead with them; a never-written one right
        // after the cut (one opened ahead, and found again after a restart) stays as the next.
        let mut later: Vec<(u64, Segment)> = {
            let mut segs = self.segments.write().unwrap();
            let bases: Vec<u64> = segs.range(base + 1..).map(|(b, _)| *b).collect();
            bases.into_iter().filter_map(|b| segs.remove(&b).map(|s| (b, s))).collect()
        };
        let ahead = self.ahead.lock().unwrap().take();
        self.ahead_base.store(u64::MAX, Ordering::Relaxed);
        match ahead {
            Some((b, Ahead::Ready(seg))) => later.push((b, seg)),
            Some((b, Ahead::Opening(h))) => {
                if let Ok(Ok(seg)) = h.await {
                    later.push((b, seg));
                }
            }
            None => {}
        }
        let next = base + self.segment_size;
        for (b, seg) in later {
            let head = seg.read_at(0, CHUNK.min(self.segment_size as usize)).await?;
            let never_written = head.iter().all(|x| *x == 0);
            if b == next && never_written && self.ahead.lock().unwrap().is_none() {
                self.ahead_base.store(next, Ordering::Relaxed);
                *self.ahead.lock().unwrap() = Some((next, Ahead::Ready(seg)));
                continue;
            }
            if !never_written {
                dropped += self.segment_size;
            }
            drop(seg);
            self.disk.remove_file(&self.dir.join(file_name(b))).await?;
        }
        self.write_pos.store(end, Ordering::Release);
        self.flushed.store(end.min(self.flushed()), Ordering::Release);
        Ok(dropped)
    }

    /// Makes everything up to `to` durable.
    pub async fn flush(&self, to: u64) -> Result<(), StoreError> {
        let from = self.flushed();
        if to <= from {
            return Ok(());
        }
        for (base, seg) in self.segments_from(from) {
            if base >= to {
                break;
            }
            let start = from.max(base) - base;
            let end = to.min(base + self.segment_size) - base;
            // SYNC_FLUSH's group syncs are short and on every put's path; ASYNC_FLUSH's
            // periodic ones cover up to hundreds of MB (see `Segment::sync_aside`).
            if self.synced_often {
                seg.sync(start, end).await?;
            } else {
                seg.sync_aside(start, end).await?;
            }
        }
        self.flushed.fetch_max(to, Ordering::AcqRel);
        Ok(())
    }

    /// Recovery: bytes from `from` on may be written but not durable (a process crash leaves
    /// them in the page cache), so the next flush must cover them.
    pub fn set_unsynced_from(&self, from: u64) {
        self.flushed.store(from, Ordering::Release);
    }

    /// Marks the recovered end as the append and flush position (after recovery synced it).
    pub fn set_recovered_end(&self, end: u64) {
        self.write_pos.store(end, Ordering::Release);
        self.flushed.store(end, Ordering::Release);
    }

    /// Removes the oldest segment (retention). Never removes the segment being written.
    pub async fn remove_oldest(&self) -> Result<Option<u64>, StoreError> {
        let active = self.write_pos() - self.write_pos() % self.segment_size;
        let oldest = self.segments.read().unwrap().keys().next().copied();
        match oldest {
            Some(b) if b < active => {
                self.segments.write().unwrap().remove(&b);
                self.disk.remove_file(&self.dir.join(file_name(b))).await?;
                Ok(Some(b))
            }
            _ => Ok(None),
        }
    }

    pub fn segment_path(&self, base: u64) -> PathBuf {
        self.dir.join(file_name(base))
    }
}
