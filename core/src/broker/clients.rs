//! Producer and consumer clients known from their heartbeats, by group, with the connection
//! each one talks over (for NOTIFY_CONSUMER_IDS_CHANGED) and when it was last heard from.

use crate::protocol::body::{ConsumerData, SubscriptionData};
use crate::remoting::Connection;
use crate::rt::time::Instant;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct ClientChannel {
    pub conn: Connection,
    pub last_update: Instant,
}

#[derive(Clone, Debug, Default)]
pub struct ConsumerGroupInfo {
    pub clients: BTreeMap<String, ClientChannel>,
    pub subscriptions: BTreeMap<String, SubscriptionData>,
    pub consume_type: String,
    pub message_model: String,
    pub consume_from_where: String,
}

#[derive(Default)]
pub struct ClientManager {
    consumers: Mutex<BTreeMap<String, ConsumerGroupInfo>>,
    producers: Mutex<BTreeMap<String, BTreeMap<String, ClientChannel>>>,
}

impl ClientManager {
    /// Registers (or refreshes) a consumer; true when the group's member set changed.
    pub fn register_consumer(&self, client_id: &str, conn: &Connection, data: &ConsumerData, now: Instant) -> bool {
        let mut all = self.consumers.lock().unwrap();
        let g = all.entry(data.group_name.clone()).or_default();
        g.consume_type = data.consume_type.clone();
        g.message_model = data.message_model.clone();
        g.consume_from_where = data.consume_from_where.clone();
        let changed = match g.clients.get(client_id) {
            Some(c) => c.conn.id != conn.id,
            None => true,
        };
        g.clients.insert(client_id.to_string(), ClientChannel { conn: conn.clone(), last_update: now });
        // The newest subscription set wins; topics it no longer names are dropped.
        let newest = data.subscription_data_set.iter().map(|s| s.sub_version).max().unwrap_or(0);
        let current = g.subscriptions.values().map(|s| s.sub_version).max().unwrap_or(i64::MIN);
        if newest >= current || g.subscriptions.is_empty() {
            g.subscriptions = data.subscription_data_set.iter().map(|s| (s.topic.clone(), s.clone())).collect();
        }
        changed
    }

    pub fn register_producer(&self, group: &str, client_id: &str, conn: &Connection, now: Instant) {
        self.producers
            .lock()
            .unwrap()
            .entry(group.to_string())
            .or_default()
            .insert(client_id.to_string(), ClientChannel { conn: conn.clone(), last_update: now });
    }

    /// For a BROADCASTING group, the client whose heartbeat came over `conn` (each such client
    /// reads every queue at offsets of its own, kept on its disk). `None` for a CLUSTERING
    /// group, or when no client of the group has sent a heartbeat over `conn` yet.
    pub fn broadcasting_client(&self, group: &str, conn: &Connection) -> Option<String> {
        let all = self.consumers.lock().unwrap();
        let g = all.get(group).filter(|g| g.message_model == "BROADCASTING")?;
        g.clients.iter().find(|(_, c)| c.conn.id == conn.id).map(|(id, _)| id.clone())
    }

    /// Removes a client from groups; returns the consumer groups whose member set changed.
    pub fn unregister(
        &self,
        client_id: &str,
        producer_group: Option<&str>,
        consumer_group: Option<&str>,
    ) -> Vec<String> {
        if let Some(pg) = producer_group {
            if let Some(g) = self.producers.lock().unwrap().get_mut(pg) {
                g.remove(client_id);
            }
        }
        let mut changed = Vec::new();
        if let Some(cg) = consumer_group {
            let mut all = self.consumers.lock().unwrap();
            if let Some(g) = all.get_mut(cg) {
                if g.clients.remove(client_id).is_some() {
                    changed.push(cg.to_string());
                }
                if g.clients.is_empty() {
                    all.remove(cg);
                }
            }
        }
        changed
    }

    /// Drops every client on a closed connection, or (with `idle`) every client not heard
    /// from for that long; returns the consumer groups whose member set changed.
    pub fn evict(&self, conn_id: Option<u64>, idle: Option<(Instant, Duration)>) -> Vec<String> {
        let gone = |c: &ClientChannel| {
            conn_id == Some(c.conn.id)
                || c.conn.is_closed()
                || idle.is_some_and(|(now, max)| now.duration_since(c.last_update) > max)
        };
        for g in self.producers.lock().unwrap().values_mut() {
            g.retain(|_, c| !gone(c));
        }
        let mut changed = Vec::new();
        let mut all = self.consumers.lock().unwrap();
        for (name, g) in all.iter_mut() {
            let before = g.clients.len();
            g.clients.retain(|id, c| {
                let keep = !gone(c);
                if !keep {
                    tracing::info!(group = %name, client = %id, "consumer removed");
                }
                keep
            });
            if g.clients.len() != before {
                changed.push(name.clone());
            }
        }
        all.retain(|_, g| !g.clients.is_empty());
        changed
    }

    pub fn consumer_group(&self, group: &str) -> Option<ConsumerGroupInfo> {
        self.consumers.lock().unwrap().get(group).cloned()
    }

    pub fn subscription(&self, group: &str, topic: &str) -> Option<SubscriptionData> {
        self.consumers.lock().unwrap().get(group).and_then(|g| g.subscriptions.get(topic).cloned())
    }
}
