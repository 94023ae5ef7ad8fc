//! Opening a store: lock, load, recover, start services.
//!
//! After a clean shutdown (no `abort` file, a valid checkpoint whose confirmed end matches
//! the log) the store starts from the checkpoint without scanning. After a crash it scans the
//! commitlog from the oldest point the checkpoint vouches for (a record boundary), checking
//! magic, length and CRC of every record; the first bad record ends the log, and everything
//! after it is zeroed. Consume-queue entries and index files pointing past the end are
//! dropped, and whatever the queues and index lack is re-dispatched from the log. Every drop
//! is logged with its offsets.

use super::checkpoint::Checkpoint;
use super::commitlog::CommitLog;
use super::consume_queue::ConsumeQueue;
use super::index::IndexService;
use super::{Inner, MessageStore, PutState, QueueTable, StoreConfig, StoreError};
use crate::rt::disk::Disk;
use crate::rt::sync::{watch, Mutex, Notify};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

pub(super) async fn open(cfg: StoreConfig, disk: Disk) -> Result<MessageStore, StoreError> {
    let root = cfg.store_path_root_dir.clone();
    disk.create_dir_all(&root).await?;
    let lock = disk.lock_dir(&root).await?;
    let abort_path = root.join("abort");
    let crashed = disk.exists(&abort_path).await?;
    disk.write_file(&abort_path, b"", true).await?;
    let ckpt = Checkpoint::load(&disk, &root.join("checkpoint")).await?;

    let commitlog = CommitLog::load(
        &disk,
        cfg.commit_log_dir(),
        cfg.mapped_file_size_commit_log,
        cfg.force_verify_prop_crc,
        cfg.warm_mapped_file(),
        cfg.flush_disk_type == super::FlushDiskType::SyncFlush,
    )
    .await?;
    let queues = load_queues(&disk, &root, &cfg).await?;
    let index = IndexService::load(&disk, root.join("index"), cfg.max_hash_slot_num, cfg.max_index_num).await?;
    let (flushed_tx, _) = watch::channel(0u64);
    let (shutdown_tx, _) = watch::channel(false);
    let store = MessageStore {
        inner: Arc::new(Inner {
            cfg,
            disk,
            root,
            commitlog,
            queues: RwLock::new(queues),
            index: Mutex::new(index),
            put: Mutex::new(PutState { offsets: HashMap::new(), shut_down: false }),
            appends: Default::default(),
            dispatched: AtomicU64::new(0),
            flushed_tx,
            flush_wakeup: Notify::new(),
            sync_pending: Default::default(),
            shutdown_tx,
            disk_full: AtomicBool::new(false),
            last_store_ts: AtomicU64::new(0),
            flush_count: AtomicU64::new(0),
            combined: AtomicU64::new(0),
            flush_nanos: AtomicU64::new(0),
            lock: std::sync::Mutex::new(Some(lock)),
            checkpoint_lock: Mutex::new(()),
            tasks: std::sync::Mutex::new(Vec::new()),
            arrival: std::sync::OnceLock::new(),
            recovered_ends: std::sync::Mutex::new(None),
            cut_ends: Default::default(),
        }),
    };
    store.recover(crashed, ckpt).await?;
    store.start_services();
    Ok(store)
}

async fn load_queues(disk: &Disk, root: &std::path::Path, cfg: &StoreConfig) -> Result<QueueTable, StoreError> {
    let cq_root = root.join("consumequeue");
    let mut queues = QueueTable::default();
    for topic in disk.list(&cq_root).await? {
        for qid in disk.list(&cq_root.join(&topic)).await? {
            let Ok(queue_id) = qid.parse::<i32>() else { continue };
            let dir = cq_root.join(&topic).join(&qid);
            let cq = ConsumeQueue::new(disk, dir, &topic, queue_id, cfg.mapped_file_size_consume_queue);
            cq.load().await?;
            queues.insert(Arc::new(cq));
        }
    }
    Ok(queues)
}

impl MessageStore {
    async fn recover(&self, crashed: bool, ckpt: Option<Checkpoint>) -> Result<(), StoreError> {
        let inner = &self.inner;
        let cl = &inner.commitlog;
        let bases = cl.segment_bases();
        let Some(&first) = bases.first() else {
            if crashed {
                // Nothing survived: every queue starts again from 0.
                *inner.recovered_ends.lock().unwrap() = Some(BTreeMap::new());
            }
            return self.recover_empty().await;
        };
        let last_end = bases.last().unwrap() + cl.segment_size();
        let clean = match ckpt {
            Some(c) if !crashed => self.clean_end_is_valid(c.confirm_offset, first, last_end).await?,
            _ => false,
        };
        // Every offset a checkpoint records is a record boundary (a flushed end, a dispatched
        // end, the start of an index file's first record), so scans start there directly.
        let vouched = |o: u64| o.clamp(first, last_end);
        let (scan_from, logics_from, mut index_from) = match ckpt {
            Some(c) if clean => (c.confirm_offset, vouched(c.logics_safe_offset), c.confirm_offset),
            Some(c) => {
                let safe = vouched(c.logics_safe_offset.min(c.index_safe_offset).min(c.flushed_offset));
                (safe, vouched(c.logics_safe_offset), vouched(c.index_safe_offset))
            }
            None => (first, first, first),
        };
        if !clean && inner.cfg.message_index_enable {
            index_from = inner.index.lock().await.drop_unsafe(index_from).await?;
        }
        let redispatch_from = logics_from.min(index_from);
        let start = scan_from.min(redispatch_from);
        tracing::info!(crashed, clean, start, redispatch_from, index_from, "recovering store");

        let (end, stop_reason, confirmed) = self.scan_and_dispatch(start, redispatch_from, index_from).await?;
        if let Some(reason) = &stop_reason {
            tracing::warn!(end, %reason, "recovery: commitlog ends at the last valid record");
        }
        let dropped = cl.truncate(end).await?;
        if dropped > 0 {
            tracing::warn!(from = end, bytes = dropped, "recovery: dropped torn or invalid commitlog tail");
        }
        self.truncate_queues(redispatch_from.min(end), &confirmed).await?;
        let durable_before = ckpt.map_or(first, |c| c.flushed_offset.clamp(first, end));
        cl.set_unsynced_from(durable_before - durable_before % cl.segment_size());
        cl.flush(end).await?;
        cl.set_recovered_end(end);
        inner.flushed_tx.send_replace(end);
        inner.dispatched.store(end, Ordering::Release);
        self.rebuild_offset_table().await;
        if !clean {
            let ends = inner
                .queues
                .read()
                .unwrap()
                .all()
                .iter()
                .map(|q| ((q.topic.clone(), q.queue_id), q.max_offset()))
                .collect();
            *inner.recovered_ends.lock().unwrap() = Some(ends);
        }
        self.checkpoint().await?;
        tracing::info!(min = cl.min_offset(), max = end, "store recovered");
        Ok(())
    }

    /// A clean end is trusted only if it lies inside the log and nothing follows it.
    async fn clean_end_is_valid(&self, end: u64, first: u64, last_end: u64) -> Result<bool, StoreError> {
        let cl = &self.inner.commitlog;
        if end < first || end > last_end {
            return Ok(false);
        }
        if end == last_end || (end.is_multiple_of(cl.segment_size()) && !cl.segment_bases().contains(&end)) {
            return Ok(true);
        }
        let head = cl.peek(end, 8).await?;
        Ok(head.is_some_and(|h| h.iter().all(|b| *b == 0)))
    }

    /// No commitlog at all: whatever queues and index exist describe nothing.
    async fn recover_empty(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        if !inner.queues.read().unwrap().is_empty() {
            tracing::warn!("recovery: no commitlog files; destroying all consume queues");
        }
        inner.queues.write().unwrap().clear();
        inner.disk.remove_dir_all(&inner.root.join("consumequeue")).await?;
        inner.index.lock().await.drop_unsafe(0).await?;
        self.checkpoint().await
    }

    /// One pass over the log from `start`: validates every record and re-dispatches those at
    /// or after `redispatch_from`. Returns the end of the last valid record, why the scan
    /// stopped there, and per queue the offset after the last re-dispatched record.
    async fn scan_and_dispatch(
        &self,
        start: u64,
        redispatch_from: u64,
        index_from: u64,
    ) -> Result<(u64, Option<String>, BTreeMap<(String, i32), u64>), StoreError> {
        let mut n = 0usize;
        let mut confirmed = BTreeMap::new();
        let (end, reason) = self
            .inner
            .commitlog
            .scan(start, async |m| {
                if let Ok(ts) = u64::try_from(m.store_timestamp) {
                    self.inner.last_store_ts.fetch_max(ts, Ordering::Relaxed);
                }
                if m.phys_offset as u64 >= redispatch_from {
                    let d = m.dispatch_info();
                    self.dispatch(&d, index_from).await?;
                    confirmed.insert((d.topic, d.queue_id), d.queue_offset as u64 + 1);
                    n += 1;
                }
                Ok(())
            })
            .await?;
        if n > 0 {
            tracing::info!(
                records = n,
                from = redispatch_from,
                "recovery: re-dispatched records to consume queues and index"
            );
        }
        Ok((end, reason, confirmed))
    }

    /// Keeps in each queue only entries the log vouches for: those before `safe` (durable
    /// before the checkpoint) and those the scan re-dispatched. Whatever else a queue holds —
    /// entries for records lost with the log's tail, or a torn entry that looks valid — goes.
    async fn truncate_queues(&self, safe: u64, confirmed: &BTreeMap<(String, i32), u64>) -> Result<(), StoreError> {
        let queues = self.inner.queues.read().unwrap().all();
        for cq in queues {
            let dropped = match confirmed.get(&(cq.topic.clone(), cq.queue_id)) {
                Some(&keep) if keep < cq.max_offset() => {
                    let to = cq.max_offset();
                    cq.truncate_to(keep).await?;
                    Some((keep, to))
                }
                Some(_) => None,
                None => cq.truncate_dirty(safe).await?,
            };
            if let Some((from, to)) = dropped {
                tracing::warn!(topic = %cq.topic, queue = cq.queue_id, from, to,
                    "recovery: dropped consume queue entries the commitlog does not hold");
            }
        }
        Ok(())
    }

    pub(super) async fn rebuild_offset_table(&self) {
        let mut st = self.inner.put.lock().await;
        for cq in self.inner.queues.read().unwrap().all() {
            st.offsets.entry(cq.topic.clone()).or_default().insert(cq.queue_id, cq.max_offset());
        }
    }
}
