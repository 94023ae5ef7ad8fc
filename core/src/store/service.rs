//! The store's background services and shutdown.
//!
//! - commitlog flusher: under SYNC_FLUSH it wakes on every waiting put and syncs everything
//!   appended so far, so the puts that arrive during one sync share the next one (group
//!   commit). Before each sync it waits (at most 1 ms) until as many puts wait as the
//!   biggest recent group, so writers answered by the last sync are back in the next one;
//!   under ASYNC_FLUSH it syncs every `flushIntervalCommitLog` ms once
//!   `flushCommitLogLeastPages` pages are dirty, and everything every
//!   `flushCommitLogThoroughInterval` ms.
//! - checkpointer: every `flushIntervalConsumeQueue` ms syncs consume queues and the index
//!   files that are full or idle, and records in the checkpoint how far they are durable.
//! - retention: every `cleanResourceInterval` ms removes expired segments.
//!
//! A failed sync is logged and retried; puts waiting on it answer FLUSH_DISK_TIMEOUT.

use super::checkpoint::Checkpoint;
use super::consume_queue::ConsumeQueue;
use super::index::IndexDurable;
use super::{FlushDiskType, MessageStore, StoreError, DISK_WARNING_RATIO};
use crate::rt::time::{sleep, Duration};
use std::sync::atomic::Ordering;
use std::sync::Arc;

const PAGE: u64 = 4096;
/// SYNC_FLUSH group commit: the longest a sync waits for the writers of the last group.
const GROUP_HOLD: Duration = Duration::from_millis(1);
/// RocketMQ's force-clean level: above it the oldest files go regardless of age.
const DISK_FORCE_CLEAN_RATIO: f64 = 0.85;
/// At most this many commitlog segments are removed per retention pass.
const MAX_DELETES_PER_PASS: usize = 10;

/// What one retention pass removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CleanReport {
    pub commitlog_segments: Vec<u64>,
    pub consume_queue_files: usize,
    pub index_files: usize,
}

impl MessageStore {
    pub(super) fn start_services(&self) {
        let mut tasks = self.inner.tasks.lock().unwrap();
        let s = self.clone();
        tasks.push(crate::rt::spawn(async move { s.flush_loop().await }));
        let s = self.clone();
        tasks.push(crate::rt::spawn(async move { s.checkpoint_loop().await }));
        let s = self.clone();
        tasks.push(crate::rt::spawn(async move { s.retention_loop().await }));
    }

    fn stopping(&self) -> bool {
        *self.inner.shutdown_tx.borrow()
    }

    async fn flush_loop(&self) {
        let inner = &self.inner;
        let mut shutdown = inner.shutdown_tx.subscribe();
        let sync = inner.cfg.flush_disk_type == FlushDiskType::SyncFlush;
        let interval = Duration::from_millis(inner.cfg.flush_interval_commit_log_ms.max(1));
        let thorough = Duration::from_millis(inner.cfg.flush_commit_log_thorough_interval_ms);
        let mut last_full = crate::rt::instant();
        // The most puts one sync has carried lately: the group the next sync waits for.
        let mut peak = 1usize;
        while !self.stopping() {
            if sync {
                // Woken by each waiting put (a Notify permit is never lost), so no polling.
                crate::rt::select! {
                    biased;
                    _ = inner.flush_wakeup.notified() => {}
                    _ = shutdown.changed() => break,
                }
                // The writers the last sync answered need a round trip before they put again,
                // while the others already wait: syncing at once would carry only those, and
                // the writers would split into two halves taking turns. So wait until as many
                // puts wait as the biggest recent group, or GROUP_HOLD, whichever comes first
                // (then the group is what came).
                let mut hold = std::pin::pin!(crate::rt::time::sleep(GROUP_HOLD));
                while inner.sync_pending.load(Ordering::Acquire) < peak {
                    crate::rt::select! {
                        biased;
                        _ = shutdown.changed() => break,
                        _ = inner.flush_wakeup.notified() => {}
                        _ = &mut hold => {
                            peak = inner.sync_pending.load(Ordering::Acquire).max(1);
                            break;
                        }
                    }
                }
                peak = peak.max(inner.sync_pending.swap(0, Ordering::AcqRel));
            } else {
                crate::rt::select! {
                    biased;
                    _ = sleep(interval) => {}
                    _ = shutdown.changed() => break,
                }
            }
            let target = inner.commitlog.write_pos();
            let dirty = target.saturating_sub(inner.commitlog.flushed());
            if dirty == 0 {
                continue;
            }
            let full_due = last_full.elapsed() >= thorough;
            if !sync && !full_due && dirty < inner.cfg.flush_commit_log_least_pages * PAGE {
                continue;
            }
            let started = crate::rt::instant();
            let result = inner.commitlog.flush(target).await;
            inner.flush_count.fetch_add(1, Ordering::Relaxed);
            inner.flush_nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            match result {
                Ok(()) => {
                    inner.flushed_tx.send_replace(target);
                    if sync {
                        // Let the writers just woken append again before the next sync, so
                        // it carries a whole group rather than the first few stragglers.
                        crate::rt::task::yield_now().await;
                    }
                    if full_due || sync {
                        last_full = crate::rt::instant();
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, target, "commitlog flush failed; will retry");
                    sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn checkpoint_loop(&self) {
        let mut shutdown = self.inner.shutdown_tx.subscribe();
        let interval = Duration::from_millis(self.inner.cfg.flush_interval_consume_queue_ms.max(1));
        while !self.stopping() {
            crate::rt::select! {
                biased;
                _ = sleep(interval) => {}
                _ = shutdown.changed() => break,
            }
            if let Err(e) = self.checkpoint_with(false).await {
                tracing::error!(error = %e, "consume queue flush / checkpoint failed; will retry");
            }
        }
    }

    /// Syncs consume queues and index, then records how far they (and the log) are durable.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        self.checkpoint_with(true).await
    }

    /// The same, where `all` false (the periodic checkpoint) leaves the index file being
    /// filled unsynced while entries keep coming (see `IndexService::flush`).
    async fn checkpoint_with(&self, all: bool) -> Result<(), StoreError> {
        let inner = &self.inner;
        let _one_at_a_time = inner.checkpoint_lock.lock().await;
        let dispatched = inner.dispatched.load(Ordering::Acquire);
        let queues: Vec<Arc<ConsumeQueue>> = inner.queues.read().unwrap().all();
        for cq in queues {
            cq.flush().await?;
        }
        let index_safe = match super::index::IndexService::flush(&inner.index, all).await? {
            IndexDurable::All => dispatched,
            IndexDurable::Below(from) => dispatched.min(from),
        };
        let ts = inner.last_store_ts.load(Ordering::Relaxed) as i64;
        let ckpt = Checkpoint {
            physic_msg_timestamp: ts,
            logics_msg_timestamp: ts,
            index_msg_timestamp: ts,
            flushed_offset: inner.commitlog.flushed(),
            confirm_offset: inner.commitlog.write_pos(),
            logics_safe_offset: dispatched,
            index_safe_offset: index_safe,
        };
        ckpt.store(&inner.disk, &inner.root.join("checkpoint")).await
    }

    async fn retention_loop(&self) {
        let mut shutdown = self.inner.shutdown_tx.subscribe();
        let interval = Duration::from_millis(self.inner.cfg.clean_resource_interval_ms.max(1));
        while !self.stopping() {
            crate::rt::select! {
                biased;
                _ = sleep(interval) => {}
                _ = shutdown.changed() => break,
            }
            if let Err(e) = self.clean_expired(crate::rt::now_ms()).await {
                tracing::error!(error = %e, "retention pass failed");
            }
        }
    }

    /// One retention pass at wall time `now_ms`: removes whole commitlog segments older than
    /// `fileReservedTime` when the hour is in `deleteWhen` or disk use passes
    /// `diskMaxUsedSpaceRatio`; above 85 % removes the oldest regardless of age. Then removes
    /// the queue and index files that only point into removed segments.
    pub async fn clean_expired(&self, now_ms: u64) -> Result<CleanReport, StoreError> {
        let inner = &self.inner;
        let ratio = inner.disk.usage_ratio(&inner.cfg.commit_log_dir()).await?;
        let full = ratio > DISK_WARNING_RATIO;
        if full != inner.disk_full.swap(full, Ordering::Relaxed) {
            tracing::warn!(ratio, full, "disk usage crossed the warning level; writes refused while full");
        }
        let hour = ((now_ms / 3_600_000) % 24) as u32;
        let time_to_delete = inner.cfg.delete_hours().contains(&hour);
        let space_low = ratio > inner.cfg.disk_max_used_space_ratio as f64 / 100.0;
        let force = ratio > DISK_FORCE_CLEAN_RATIO;
        let mut report = CleanReport::default();
        if time_to_delete || space_low {
            let keep_ms = inner.cfg.file_reserved_time_hours * 3_600_000;
            for _ in 0..MAX_DELETES_PER_PASS {
                let Some(&oldest) = inner.commitlog.segment_bases().first() else { break };
                let path = inner.commitlog.segment_path(oldest);
                let modified = inner.disk.modified_ms(&path).await?;
                if !force && now_ms.saturating_sub(modified) < keep_ms {
                    break;
                }
                match inner.commitlog.remove_oldest().await? {
                    Some(b) => {
                        tracing::info!(segment = b, force, ratio, "retention: removed commitlog segment");
                        report.commitlog_segments.push(b);
                    }
                    None => break,
                }
            }
        }
        let log_min = inner.commitlog.min_offset();
        let queues: Vec<Arc<ConsumeQueue>> = inner.queues.read().unwrap().all();
        for cq in queues {
            report.consume_queue_files += cq.remove_expired(log_min).await?;
        }
        report.index_files = inner.index.lock().await.remove_expired(log_min).await?;
        Ok(report)
    }

    /// Forces every appended byte to disk now (tests and shutdown).
    pub async fn flush_all(&self) -> Result<(), StoreError> {
        let target = self.inner.commitlog.write_pos();
        self.inner.commitlog.flush(target).await?;
        self.inner.flushed_tx.send_replace(target);
        self.checkpoint().await
    }

    /// Graceful stop: refuse new puts, stop the services, flush everything, write the
    /// checkpoint, remove the abort file and release the directory lock.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        {
            let mut st = inner.put.lock().await;
            if st.shut_down {
                return Ok(());
            }
            st.shut_down = true;
        }
        inner.shutdown_tx.send_replace(true);
        let tasks: Vec<_> = inner.tasks.lock().unwrap().drain(..).collect();
        for t in tasks {
            let _ = t.await;
        }
        self.flush_all().await?;
        inner.commitlog.settle_ahead().await;
        inner.disk.remove_file(&inner.root.join("abort")).await?;
        inner.lock.lock().unwrap().take();
        tracing::info!(end = inner.commitlog.write_pos(), "store shut down cleanly");
        Ok(())
    }

    /// Stops the background services without flushing: what a killed process leaves behind.
    /// The handle must not be used afterwards.
    pub async fn abandon(&self) {
        self.inner.put.lock().await.shut_down = true;
        self.inner.shutdown_tx.send_replace(true);
        let tasks: Vec<_> = self.inner.tasks.lock().unwrap().drain(..).collect();
        for t in tasks {
            t.abort();
        }
        self.inner.commitlog.abandon_ahead();
        self.inner.lock.lock().unwrap().take();
    }
}
