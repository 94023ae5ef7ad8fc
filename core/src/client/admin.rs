//! Admin requests (what `mqadmin` sends), as typed calls.

use super::{ClientConfig, ClientError, Instance};
use crate::protocol::body::{
    self, ClusterInfo, KvTable, MessageQueue, OffsetWrapper, TopicList, TopicOffset, TopicRouteData,
};
use crate::protocol::code::{request, response};
use crate::protocol::header::ext;
use crate::protocol::message::{check_record, MessageExt};
use crate::protocol::{ExtFields, RemotingCommand};
use crate::store::meta::TopicConfig;
use std::collections::BTreeMap;
use std::sync::Arc;

pub struct Admin {
    pub instance: Arc<Instance>,
}

impl Admin {
    pub fn new(cfg: ClientConfig) -> Admin {
        Admin { instance: Instance::new(cfg) }
    }

    async fn namesrv(&self, code: i32, e: ExtFields) -> Result<RemotingCommand, ClientError> {
        let r = self.instance.namesrv_invoke(RemotingCommand::request(code, e)).await?;
        if r.code != response::SUCCESS {
            return Err(ClientError::from_response(&r));
        }
        Ok(r)
    }

    pub async fn broker(&self, addr: &str, cmd: RemotingCommand) -> Result<RemotingCommand, ClientError> {
        let r = self.instance.remoting.invoke(addr, cmd, self.instance.cfg.api_timeout).await?;
        if r.code != response::SUCCESS {
            return Err(ClientError::from_response(&r));
        }
        Ok(r)
    }

    pub async fn cluster_info(&self) -> Result<ClusterInfo, ClientError> {
        let r = self.namesrv(request::GET_BROKER_CLUSTER_INFO, ExtFields::new()).await?;
        body::decode(&r.body).map_err(ClientError::Other)
    }

    pub async fn topic_list(&self) -> Result<TopicList, ClientError> {
        let r = self.namesrv(request::GET_ALL_TOPIC_LIST_FROM_NAMESERVER, ExtFields::new()).await?;
        body::decode(&r.body).map_err(ClientError::Other)
    }

    pub async fn topic_route(&self, topic: &str) -> Result<TopicRouteData, ClientError> {
        self.instance.fetch_route(topic).await?.ok_or_else(|| ClientError::NoRoute(topic.to_string()))
    }

    pub async fn create_topic(&self, broker_addr: &str, tc: &TopicConfig) -> Result<(), ClientError> {
        let e = ext([
            ("topic", tc.topic_name.clone()),
            ("defaultTopic", crate::broker::topics::DEFAULT_TOPIC.to_string()),
            ("readQueueNums", tc.read_queue_nums.to_string()),
            ("writeQueueNums", tc.write_queue_nums.to_string()),
            ("perm", tc.perm.to_string()),
            ("topicFilterType", tc.topic_filter_type.clone()),
            ("topicSysFlag", tc.topic_sys_flag.to_string()),
            ("order", tc.order.to_string()),
        ]);
        self.broker(broker_addr, RemotingCommand::request(request::UPDATE_AND_CREATE_TOPIC, e)).await.map(|_| ())
    }

    pub async fn topic_stats(
        &self,
        broker_addr: &str,
        topic: &str,
    ) -> Result<BTreeMap<MessageQueue, TopicOffset>, ClientError> {
        let cmd = RemotingCommand::request(request::GET_TOPIC_STATS_INFO, ext([("topic", topic.to_string())]));
        let r = self.broker(broker_addr, cmd).await?;
        body::decode_queue_map(&r.body).map_err(ClientError::Other)
    }

    pub async fn consume_stats(
        &self,
        broker_addr: &str,
        group: &str,
        topic: Option<&str>,
    ) -> Result<BTreeMap<MessageQueue, OffsetWrapper>, ClientError> {
        let mut e = ext([("consumerGroup", group.to_string())]);
        if let Some(t) = topic {
            e.insert("topic", t.to_string());
        }
        let r = self.broker(broker_addr, RemotingCommand::request(request::GET_CONSUME_STATS, e)).await?;
        body::decode_queue_map(&r.body).map_err(ClientError::Other)
    }

    pub async fn runtime_info(&self, broker_addr: &str) -> Result<BTreeMap<String, String>, ClientError> {
        let r = self
            .broker(broker_addr, RemotingCommand::request(request::GET_BROKER_RUNTIME_INFO, ExtFields::new()))
            .await?;
        body::decode::<KvTable>(&r.body).map(|t| t.table).map_err(ClientError::Other)
    }

    pub async fn view_message(&self, broker_addr: &str, phys_offset: i64) -> Result<MessageExt, ClientError> {
        let cmd = RemotingCommand::request(request::VIEW_MESSAGE_BY_ID, ext([("offset", phys_offset.to_string())]));
        let r = self.broker(broker_addr, cmd).await?;
        check_record(&r.body, false).map_err(|e| ClientError::Other(e.to_string()))
    }

    pub async fn query_consumer_offset(
        &self,
        broker_addr: &str,
        group: &str,
        mq: &MessageQueue,
    ) -> Result<i64, ClientError> {
        let cmd = RemotingCommand::request(
            request::QUERY_CONSUMER_OFFSET,
            ext([
                ("consumerGroup", group.to_string()),
                ("topic", mq.topic.clone()),
                ("queueId", mq.queue_id.to_string()),
            ]),
        );
        let r = self.broker(broker_addr, cmd).await?;
        r.get("offset").and_then(|o| o.parse().ok()).ok_or_else(|| ClientError::Other("no offset in response".into()))
    }

    pub async fn shutdown(&self) {
        self.instance.remoting.close_all();
    }
}
