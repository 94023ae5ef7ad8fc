//! What master/slave replication needs from the store: the master reads its log as raw
//! bytes; a slave appends those bytes verbatim (so both logs are byte-identical), builds its
//! own consume queues and index from them, and cuts a tail the master no longer has.

use super::{MessageStore, StoreError};
use crate::store::record::{self, BLANK_MAGIC};
use bytes::Bytes;
use std::sync::atomic::Ordering;

impl MessageStore {
    /// End of the commitlog: the offset the next byte goes to.
    pub fn max_phys(&self) -> u64 {
        self.inner.commitlog.write_pos()
    }

    /// Durable end of the commitlog.
    pub fn flushed_phys(&self) -> u64 {
        self.inner.commitlog.flushed()
    }

    /// End of the last complete record (a replica's log may end inside one).
    pub fn complete_phys(&self) -> u64 {
        self.inner.dispatched.load(Ordering::Acquire)
    }

    pub fn min_phys(&self) -> u64 {
        self.inner.commitlog.min_offset()
    }

    pub fn segment_size(&self) -> u64 {
        self.inner.commitlog.segment_size()
    }

    /// Up to `max` bytes of the log from `from`, never past its end nor past the segment
    /// holding `from`; empty at the end. Records may be cut anywhere.
    pub async fn read_log(&self, from: u64, max: usize) -> Result<Bytes, StoreError> {
        let end = self.max_phys();
        if from >= end {
            return Ok(Bytes::new());
        }
        let seg = self.segment_size();
        let seg_end = from - from % seg + seg;
        let len = (end.min(seg_end) - from).min(max as u64) as usize;
        self.inner.commitlog.read(from, len).await
    }

    /// A replica's append: `data` goes verbatim at `at` (this log's end; or a segment base if
    /// this log is empty) — a slave's copy of its master's bytes, or a master taking back from
    /// its slave the tail it lost — then every record it completes is dispatched to
    /// consume queues and index, and parked pulls are woken.
    pub async fn append_replica(&self, at: u64, data: &[u8]) -> Result<(), StoreError> {
        self.append_replica_raw(at, data).await?;
        self.dispatch_replica().await
    }

    /// The append alone: the bytes are in the log (what a slave confirms to its master);
    /// `dispatch_replica` builds the queues and index from them.
    pub async fn append_replica_raw(&self, at: u64, data: &[u8]) -> Result<(), StoreError> {
        let inner = &self.inner;
        let st = inner.put.lock().await;
        if st.shut_down {
            return Err(StoreError::ShutDown);
        }
        let was_empty = inner.commitlog.segment_bases().is_empty();
        inner.commitlog.append_raw(at, data).await?;
        if was_empty {
            inner.dispatched.store(at, Ordering::Release);
            inner.flushed_tx.send_replace(at);
        }
        drop(st);
        inner.flush_wakeup.notify_one();
        Ok(())
    }

    /// Dispatches the complete records appended so far and wakes parked pulls.
    pub async fn dispatch_replica(&self) -> Result<(), StoreError> {
        self.dispatch_complete(None).await
    }

    /// Dispatches every complete record past the dispatched offset (a partial record at the
    /// end waits for its remaining bytes). `index_from`: re-index from there on.
    async fn dispatch_complete(&self, index_from: Option<u64>) -> Result<(), StoreError> {
        let inner = &self.inner;
        let mut st = inner.put.lock().await;
        let end = inner.commitlog.write_pos();
        let mut pos = inner.dispatched.load(Ordering::Acquire);
        let index_from = index_from.unwrap_or(pos);
        while pos + 8 <= end {
            let head = inner.commitlog.read(pos, 8).await?;
            let total = i32::from_be_bytes(head[..4].try_into().unwrap());
            let seg = self.segment_size();
            if total <= 0 || pos % seg + total as u64 > seg {
                return Err(StoreError::Corrupt(format!("replicated record at {pos} has size {total}")));
            }
            if pos + total as u64 > end {
                break;
            }
            if u32::from_be_bytes(head[4..8].try_into().unwrap()) != BLANK_MAGIC {
                match inner.commitlog.read_record(pos, Some(total as usize)).await {
                    Ok(m) => {
                        let d = m.dispatch_info();
                        self.dispatch(&d, index_from).await?;
                        let next = d.queue_offset as u64 + 1;
                        st.offsets.entry(d.topic.clone()).or_default().insert(d.queue_id, next);
                        if record::is_consumable(d.sys_flag) {
                            if let Some(l) = inner.arrival.get() {
                                l(&d.topic, d.queue_id, d.queue_offset as u64 + 1);
                            }
                        }
                    }
                    // Byte-identical to the master's copy, which never serves it either.
                    Err(e) => tracing::warn!(offset = pos, error = %e, "replicated record is corrupt; not dispatched"),
                }
            }
            pos += total as u64;
            inner.dispatched.store(pos, Ordering::Release);
        }
        Ok(())
    }

    /// A slave cuts its log at `to` (a point where it and its master part ways): the bytes
    /// from there, and the consume-queue and index entries of records not wholly before it,
    /// are dropped; records before it are re-dispatched where needed. Returns the bytes cut.
    pub async fn truncate_replica(&self, to: u64) -> Result<u64, StoreError> {
        let inner = &self.inner;
        let cl = &inner.commitlog;
        let st = inner.put.lock().await;
        let end = cl.write_pos();
        if to >= end {
            return Ok(0);
        }
        // The last record boundary at or before `to`: walk from its segment's base.
        let seg = cl.segment_size();
        let mut boundary = (to - to % seg).max(cl.min_offset());
        while boundary + 8 <= to {
            let head = cl.read(boundary, 4).await?;
            let total = i32::from_be_bytes(head[..4].try_into().unwrap());
            if total <= 0 || boundary + total as u64 > to {
                break;
            }
            boundary += total as u64;
        }
        let cut = end - to;
        cl.truncate(to).await?;
        let queues = inner.queues.read().unwrap().all();
        let mut cut_queues = Vec::new();
        for cq in queues {
            if let Some((from, to_q)) = cq.truncate_dirty(boundary).await? {
                tracing::warn!(topic = %cq.topic, queue = cq.queue_id, from, to = to_q,
                    "replica: dropped consume queue entries past the master's log");
                cut_queues.push(((cq.topic.clone(), cq.queue_id), from));
            }
        }
        if !cut_queues.is_empty() {
            let mut cut = inner.cut_ends.lock().unwrap();
            cut.0 += 1;
            for (q, from) in cut_queues {
                let e = cut.1.entry(q).or_insert(from);
                *e = (*e).min(from);
            }
        }
        let index_from = if inner.cfg.message_index_enable {
            inner.index.lock().await.drop_unsafe(boundary).await?
        } else {
            boundary
        };
        let from = inner.dispatched.load(Ordering::Acquire).min(boundary).min(index_from);
        inner.dispatched.store(from, Ordering::Release);
        inner.flushed_tx.send_if_modified(|f| {
            let past = *f > to;
            *f = (*f).min(to);
            past
        });
        drop(st);
        self.rebuild_offset_table().await;
        tracing::warn!(from = to, bytes = cut, "replica: cut the commitlog where it parts from the master's");
        self.dispatch_complete(Some(index_from)).await?;
        self.checkpoint().await?;
        Ok(cut)
    }
}
