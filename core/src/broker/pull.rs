//! PULL_MESSAGE with long polling.
//!
//! A pull that finds nothing new (PULL_NOT_FOUND) and carries the SUSPEND flag parks until a
//! message arrives on its queue or `suspendTimeoutMillis` passes (`shortPollingTimeMills`
//! when long polling is off), then runs again and answers with whatever it finds then. Parked
//! pulls live inside their connection's task: they cost a future, not a thread or a task.

use super::{Broker, GroupQueue};
use crate::protocol::body::SubscriptionData;
use crate::protocol::code::{perm, pull_flag, response};
use crate::protocol::header::PullMessageHeader;
use crate::protocol::RemotingCommand;
use crate::remoting::Connection;
use crate::store::meta::SubscriptionGroupConfig;
use crate::store::{GetResult, GetStatus};
use bytes::BytesMut;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Most bytes one pull returns (RocketMQ's `maxTransferBytesOnMessageInMemory`).
const MAX_TRANSFER_BYTES: usize = 256 * 1024;
/// Most messages one pull returns (`maxTransferCountOnMessageInMemory`).
const MAX_TRANSFER_COUNT: usize = 32;

fn status_code(status: GetStatus, offset: i64) -> (i32, &'static str) {
    match status {
        GetStatus::Found => (response::SUCCESS, "FOUND"),
        GetStatus::NoMatchedMessage => (response::PULL_RETRY_IMMEDIATELY, "NO_MATCHED_MESSAGE"),
        GetStatus::MessageWasRemoving => (response::PULL_RETRY_IMMEDIATELY, "MESSAGE_WAS_REMOVING"),
        GetStatus::NoMessageInQueue if offset != 0 => (response::PULL_OFFSET_MOVED, "NO_MESSAGE_IN_QUEUE"),
        GetStatus::NoMessageInQueue => (response::PULL_NOT_FOUND, "NO_MESSAGE_IN_QUEUE"),
        GetStatus::NoMatchedLogicQueue if offset != 0 => (response::PULL_OFFSET_MOVED, "NO_MATCHED_LOGIC_QUEUE"),
        GetStatus::NoMatchedLogicQueue => (response::PULL_NOT_FOUND, "NO_MATCHED_LOGIC_QUEUE"),
        GetStatus::OffsetOverflowOne => (response::PULL_NOT_FOUND, "OFFSET_OVERFLOW_ONE"),
        GetStatus::OffsetFoundNull => (response::PULL_NOT_FOUND, "OFFSET_FOUND_NULL"),
        GetStatus::OffsetOverflowBadly => (response::PULL_OFFSET_MOVED, "OFFSET_OVERFLOW_BADLY"),
        GetStatus::OffsetTooSmall => (response::PULL_OFFSET_MOVED, "OFFSET_TOO_SMALL"),
    }
}

impl Broker {
    /// The checks of RocketMQ's `PullMessageProcessor`, then the read, then (if nothing was
    /// found and the pull may wait) the wait.
    pub(super) async fn pull_message(self: &Arc<Self>, conn: &Connection, req: &RemotingCommand) -> RemotingCommand {
        let h = match PullMessageHeader::decode(req) {
            Ok(h) => h,
            Err(e) => return req.error(response::SYSTEM_ERROR, e.to_string()),
        };
        if self.is_slave() && !self.cfg.slave_read_enable {
            return req.error(
                response::SYSTEM_BUSY,
                format!(
                    "[REJECTREQUEST]the slave broker[{}] does not serve pulls (slaveReadEnable=false)",
                    self.cfg.broker_name
                ),
            );
        }
        if !perm::readable(self.cfg.broker_permission) {
            return req.error(
                response::NO_PERMISSION,
                format!("the broker[{}] pulling message is forbidden", self.cfg.broker_name),
            );
        }
        let Some((group, _)) = self.groups.find_or_create(&h.consumer_group, self.cfg.auto_create_subscription_group)
        else {
            return req.error(
                response::SUBSCRIPTION_GROUP_NOT_EXIST,
                format!("subscription group [{}] does not exist", h.consumer_group),
            );
        };
        if !group.consume_enable {
            return req
                .error(response::NO_PERMISSION, format!("subscription group no permission, {}", h.consumer_group));
        }
        let Some(tc) = self.topics.get(&h.topic) else {
            return req.error(response::TOPIC_NOT_EXIST, format!("topic[{}] not exist, apply first please!", h.topic));
        };
        if !perm::readable(tc.perm) {
            return req.error(response::NO_PERMISSION, format!("the topic[{}] pulling message is forbidden", h.topic));
        }
        if h.queue_id < 0 || h.queue_id as u32 >= tc.read_queue_nums {
            return req.error(
                response::SYSTEM_ERROR,
                format!(
                    "queueId[{}] is illegal, topic:[{}] topicConfig.readQueueNums:[{}]",
                    h.queue_id, h.topic, tc.read_queue_nums
                ),
            );
        }
        let sub = if h.sys_flag & pull_flag::SUBSCRIPTION != 0 {
            let expr = h.subscription.as_deref().unwrap_or("*");
            if h.expression_type.as_deref().is_some_and(|t| t != "TAG") {
                return req.error(response::SUBSCRIPTION_PARSE_FAILED, "only TAG expressions are supported");
            }
            SubscriptionData::build(&h.topic, expr, h.sub_version)
        } else {
            match self.clients.subscription(&h.consumer_group, &h.topic) {
                None => {
                    return req.error(
                        response::SUBSCRIPTION_NOT_EXIST,
                        format!("the consumer's subscription not exist, group: {}", h.consumer_group),
                    )
                }
                Some(s) if s.sub_version < h.sub_version => {
                    return req.error(response::SUBSCRIPTION_NOT_LATEST, "the consumer's subscription not latest")
                }
                Some(s) => s,
            }
        };
        let offset = h.queue_offset.max(0) as u64;
        let max = (h.max_msg_nums.max(1) as usize).min(MAX_TRANSFER_COUNT);
        let may_wait = h.sys_flag & pull_flag::SUSPEND != 0;
        let wait = if self.cfg.long_polling_enable {
            Duration::from_millis(h.suspend_timeout_millis.max(0) as u64)
        } else {
            Duration::from_millis(self.cfg.short_polling_time_mills)
        };
        let deadline = crate::rt::instant() + wait;
        let filter = |code: i64| sub.matches_code(code);
        // A slave's cuts since boot, as this pull saw them: an answer to a pull that began
        // before a cut says nothing about offsets handed out after it.
        let generation = self.cut_generation();
        let moved_back_end = self.moved_back_end(&h);
        // Whose offsets a pull past that end is held against: the group's, or under
        // BROADCASTING this client's (each reads every message, at offsets of its own).
        let reader = moved_back_end.map(|_| self.handed_key(&h, conn));
        if let Some(end) =
            moved_back_end.zip(reader.as_ref()).and_then(|(end, key)| self.past_recovered_end(&h, key, end, generation))
        {
            tracing::warn!(group = %h.consumer_group, topic = %h.topic, queue = h.queue_id, from = h.queue_offset, to = end,
                "pull past the end this queue recovered to after a crash; moving the consumer back");
            let mut resp = req.response(response::PULL_OFFSET_MOVED, Some("OFFSET_OVERFLOW_BADLY".into()));
            resp.set("suggestWhichBrokerId", 0);
            resp.set("nextBeginOffset", end);
            resp.set("minOffset", self.store.min_offset(&h.topic, h.queue_id));
            resp.set("maxOffset", self.store.max_offset(&h.topic, h.queue_id));
            return resp;
        }
        // The offset the consumer commits with this pull is stored on arrival, as RocketMQ's
        // first pass does (a pull that then waits still committed it).
        if h.sys_flag & pull_flag::COMMIT_OFFSET != 0 && !self.is_slave() && h.commit_offset >= 0 {
            let offset = self.committable(&h.consumer_group, &h.topic, h.queue_id, h.commit_offset);
            self.offsets.commit(&h.consumer_group, &h.topic, h.queue_id, offset);
        }
        let got = loop {
            // Register before reading, so an arrival between the read and the wait wakes us.
            let notifier = self.hold.notifier(&h.topic, h.queue_id);
            let notified = notifier.notified();
            let got = match self
                .store
                .get_message(&h.topic, h.queue_id, offset, max, MAX_TRANSFER_BYTES, Some(&filter))
                .await
            {
                Ok(g) => g,
                Err(e) => return req.error(response::SYSTEM_ERROR, e.to_string()),
            };
            let (code, _) = self.status_code(got.status, h.queue_offset);
            if code != response::PULL_NOT_FOUND
                || !may_wait
                || self.hold.stopping.load(Ordering::Acquire)
                || crate::rt::instant() >= deadline
            {
                break got;
            }
            let shutdown = self.hold.shutdown.notified();
            crate::rt::select! {
                biased;
                _ = notified => {}
                _ = shutdown => {}
                _ = crate::rt::time::sleep_until(deadline) => {}
            }
        };
        // A slave whose master is up sends its consumers back there.
        let back_to_master = self.is_slave() && self.ha.master_linked();
        let (resp, next) = self.pull_response(req, &h, &group, got, back_to_master);
        if let Some(key) = reader {
            self.note_handed_out(key, next, generation);
        }
        resp
    }

    /// RocketMQ's answer for a read status; on a slave, an offset it cannot serve is "not
    /// found" (wait, and keep the offset), never OFFSET_MOVED.
    fn status_code(&self, status: GetStatus, offset: i64) -> (i32, &'static str) {
        match status_code(status, offset) {
            (response::PULL_OFFSET_MOVED, remark) if self.is_slave() => (response::PULL_NOT_FOUND, remark),
            c => c,
        }
    }

    /// After a crash recovery, offsets past a queue's recovered end may have been given to
    /// messages lost with an unsynced tail, and are now given to new ones. A consumer that
    /// read the lost ones holds an offset past the end and would skip the new ones, so a pull
    /// past the recovered end at an offset this broker has not handed the group since boot
    /// is answered OFFSET_MOVED back to the end (RocketMQ's own answer to a pull past the
    /// end). Since boot, a group's offsets only grow through this broker's answers, so one
    /// further than any of them was read before the crash. (Moving back only the group's
    /// first pull was not enough: a pull a consumer sent just before it died took that turn
    /// when the broker came back, and the consumer restarted past the end.)
    /// A slave does the same after it cut its log where its master's parts (the master lost
    /// them): a consumer that read the cut records from the slave while the master was down
    /// would otherwise skip the master's new records at those offsets. Its own recovery
    /// counts for nothing there: its master resends what it lost, at the same offsets.
    /// Under BROADCASTING every client of a group reads every queue at offsets of its own, so
    /// what was handed to one says nothing of another: offsets are held per client there
    /// (`handed_key`), or a client resuming past the end behind another that had read on
    /// would skip the new messages.
    /// `end` is the queue's recovered (or cut) end; returns where to move.
    fn past_recovered_end(&self, h: &PullMessageHeader, key: &GroupQueue, end: u64, generation: u64) -> Option<u64> {
        if h.queue_offset <= end as i64 {
            return None;
        }
        let mut handed = self.handed_out(generation);
        let given = handed.1.entry(key.clone()).or_insert(end);
        if h.queue_offset as u64 <= *given {
            return None;
        }
        *given = (*given).max(end);
        Some(end)
    }

    /// Before the first put after a recovery that lost a log tail: a committed offset past a
    /// queue's recovered end counts messages that are gone, and the new messages about to
    /// take those offsets would be skipped by a consumer resuming there. The pull-side move
    /// back (`past_recovered_end`) catches a consumer that pulls while this broker still
    /// knows the end, but not one that comes back after a later restart. So such offsets are
    /// moved back to the end and written out before any put reuses an offset. Nothing past
    /// the end has been handed out before the first put, so no such offset is this boot's.
    /// A master taking back its lost tail from a slave takes no puts until that is done, and
    /// its ends have risen by then.
    pub(super) async fn settle_offsets(&self) {
        if self.is_slave() || self.offsets_settled.initialized() {
            return;
        }
        self.offsets_settled
            .get_or_init(|| async {
                let moved = self.offsets.move_back_past(|topic, queue_id| self.store.recovered_end(topic, queue_id));
                for (group, topic, queue, from, to) in &moved {
                    tracing::warn!(%group, %topic, queue, from, to,
                        "committed offset past the end this queue recovered to after a crash; moved back");
                }
                if !moved.is_empty() {
                    if let Err(e) = self.offsets.persist(self.disk(), true).await {
                        tracing::error!(error = %e, "persisting consumer offsets failed");
                    }
                }
            })
            .await;
    }

    /// The offset to keep for a commit: one past a queue's recovered end that this broker has
    /// not handed the group since boot was read before the crash, and is kept at the end
    /// (see `settle_offsets`). While a master takes back its lost tail, commits are kept as
    /// they are; `settle_offsets` checks them against the risen ends.
    pub(super) fn committable(&self, group: &str, topic: &str, queue_id: i32, offset: i64) -> i64 {
        if self.is_slave() || self.ha.reclaiming() {
            return offset;
        }
        let Some(end) = self.store.recovered_end(topic, queue_id) else { return offset };
        if offset <= end as i64 {
            return offset;
        }
        let handed = self.handed_out(0);
        let given = handed.1.get(&(group.to_string(), topic.to_string(), queue_id)).copied().unwrap_or(end);
        if offset as u64 <= given {
            offset
        } else {
            end as i64
        }
    }

    /// Notes the next offset an answer hands the group, on a queue with a recovered end
    /// (unless a slave cut its log since the pull began).
    fn note_handed_out(&self, key: GroupQueue, next: u64, generation: u64) {
        if self.cut_generation() == generation {
            let mut handed = self.handed_out(generation);
            let given = handed.1.entry(key).or_insert(next);
            *given = (*given).max(next);
        }
    }

    /// The key handed-out offsets are kept under for this pull: (group, topic, queue), the
    /// group qualified by the client under BROADCASTING (a client not yet known by its
    /// heartbeat on this connection counts as the plain group, as every client did before).
    /// A CLUSTERING group's commits are checked against the plain group's entry
    /// (`committable`); broadcasting clients commit nothing to the broker.
    fn handed_key(&self, h: &PullMessageHeader, conn: &Connection) -> GroupQueue {
        let group = match self.clients.broadcasting_client(&h.consumer_group, conn) {
            Some(client) => format!("{} (broadcasting client {client})", h.consumer_group),
            None => h.consumer_group.clone(),
        };
        (group, h.topic.clone(), h.queue_id)
    }

    /// The queue's recovered end on a master, its cut end on a slave.
    fn moved_back_end(&self, h: &PullMessageHeader) -> Option<u64> {
        if self.is_slave() {
            self.store.cut_end(&h.topic, h.queue_id)
        } else {
            self.store.recovered_end(&h.topic, h.queue_id)
        }
    }

    /// How many times this broker, as a slave, has cut its log (0 on a master).
    fn cut_generation(&self) -> u64 {
        if self.is_slave() {
            self.store.cut_generation()
        } else {
            0
        }
    }

    /// The handed-out offsets, emptied when a slave has cut its log again since (cuts only
    /// count up; a pull that saw fewer cuts than the map leaves it as it is).
    fn handed_out(&self, generation: u64) -> std::sync::MutexGuard<'_, super::HandedOut> {
        let mut handed = self.hold.handed_out.lock().unwrap();
        if handed.0 < generation {
            *handed = (generation, Default::default());
        }
        handed
    }

    /// The answer, and the next offset it hands the consumer.
    fn pull_response(
        &self,
        req: &RemotingCommand,
        h: &PullMessageHeader,
        group: &SubscriptionGroupConfig,
        got: GetResult,
        back_to_master: bool,
    ) -> (RemotingCommand, u64) {
        let (mut code, remark) = self.status_code(got.status, h.queue_offset);
        // A slave never moves a consumer (RocketMQ's offsetCheckInSlave=false): its queue may
        // just be behind its master's, or cut and being rebuilt. The consumer keeps its offset.
        let moved = status_code(got.status, h.queue_offset).0 == response::PULL_OFFSET_MOVED;
        let next_begin = if moved && self.is_slave() { h.queue_offset.max(0) as u64 } else { got.next_begin_offset };
        // RocketMQ's suggestWhichBrokerId: with slave reads on, the group's broker, or its
        // slave for a consumer so far behind that its reads would leave the page cache.
        let mut suggest = 0;
        if self.cfg.slave_read_enable {
            let far_behind = got.messages.last().is_some_and(|m| {
                let behind = self.store.max_phys().saturating_sub(m.phys_offset);
                behind > self.cfg.total_physical_memory / 100 * self.cfg.access_message_in_memory_max_ratio
            });
            suggest = if far_behind { group.which_broker_when_consume_slowly } else { group.broker_id };
            if back_to_master && !far_behind {
                suggest = 0;
                if code != response::SUCCESS {
                    code = response::PULL_RETRY_IMMEDIATELY;
                }
            }
        }
        let mut resp = req.response(code, Some(remark.to_string()));
        resp.set("suggestWhichBrokerId", suggest);
        resp.set("nextBeginOffset", next_begin);
        resp.set("minOffset", got.min_offset);
        resp.set("maxOffset", got.max_offset);
        if code == response::SUCCESS {
            self.stats.get_total.fetch_add(got.messages.len() as u64, Ordering::Relaxed);
            let size = got.messages.iter().map(|m| m.record.len()).sum();
            let mut body = BytesMut::with_capacity(size);
            for m in &got.messages {
                body.extend_from_slice(&m.record);
            }
            resp.body = body.freeze();
        }
        (resp, next_begin)
    }
}
