//! topics.json, subscriptionGroup.json and consumerOffset.json: RocketMQ's shapes, atomic
//! replacement with a .bak, and RocketMQ's unquoted integer keys on the way in.

use keel_core::rt::disk::{Disk, SimDisk};
use keel_core::store::meta::{
    self, ConsumerOffsetTable, SubscriptionGroupConfig, SubscriptionGroupTable, TopicConfig, TopicConfigTable,
};
use std::path::Path;

#[tokio::test]
async fn tables_round_trip_in_rocketmq_json_shape() {
    let disk = Disk::Sim(SimDisk::new());
    let dir = meta::config_dir(Path::new("/store"));
    let mut topics = TopicConfigTable::default();
    topics.topic_config_table.insert(
        "TopicTest".into(),
        TopicConfig {
            topic_name: "TopicTest".into(),
            read_queue_nums: 8,
            write_queue_nums: 4,
            ..TopicConfig::default()
        },
    );
    topics.data_version.next_version(1_700_000_000_000);
    let path = dir.join(meta::TOPICS_FILE);
    meta::persist(&disk, &path, &topics).await.unwrap();
    let text = String::from_utf8(disk.read_file(&path).await.unwrap().unwrap()).unwrap();
    for field in [
        "\"topicConfigTable\"",
        "\"readQueueNums\": 8",
        "\"writeQueueNums\": 4",
        "\"perm\": 6",
        "\"topicFilterType\": \"SINGLE_TAG\"",
        "\"dataVersion\"",
    ] {
        assert!(text.contains(field), "{field} missing from {text}");
    }
    assert_eq!(meta::load::<TopicConfigTable>(&disk, &path).await.unwrap(), Some(topics));

    let mut groups = SubscriptionGroupTable::default();
    groups
        .subscription_group_table
        .insert("G".into(), SubscriptionGroupConfig { group_name: "G".into(), ..Default::default() });
    let gpath = dir.join(meta::SUBSCRIPTION_GROUP_FILE);
    meta::persist(&disk, &gpath, &groups).await.unwrap();
    let loaded: SubscriptionGroupTable = meta::load(&disk, &gpath).await.unwrap().unwrap();
    let g = &loaded.subscription_group_table["G"];
    assert_eq!((g.retry_max_times, g.retry_queue_nums, g.which_broker_when_consume_slowly), (16, 1, 1));
}

#[tokio::test]
async fn consumer_offsets_written_by_rocketmq_with_bare_integer_keys_load() {
    let disk = Disk::Sim(SimDisk::new());
    let path = meta::config_dir(Path::new("/store")).join(meta::CONSUMER_OFFSET_FILE);
    disk.create_dir_all(path.parent().unwrap()).await.unwrap();
    let rocketmq = br#"{"offsetTable":{"TopicTest@please_rename_unique_group_name_4":{0:125,1:98,3:0}}}"#;
    disk.write_file(&path, rocketmq, true).await.unwrap();
    let t: ConsumerOffsetTable = meta::load(&disk, &path).await.unwrap().unwrap();
    let q = &t.offset_table["TopicTest@please_rename_unique_group_name_4"];
    assert_eq!((q[&0], q[&1], q[&3]), (125, 98, 0));
}

#[tokio::test]
async fn a_torn_main_file_falls_back_to_bak_and_a_crash_mid_write_keeps_the_old_file() {
    let sim = SimDisk::new();
    let disk = Disk::Sim(sim.clone());
    let path = meta::config_dir(Path::new("/store")).join(meta::CONSUMER_OFFSET_FILE);
    let mut t = ConsumerOffsetTable::default();
    t.offset_table.entry("T@G".into()).or_default().insert(0, 10);
    meta::persist(&disk, &path, &t).await.unwrap();
    t.offset_table.get_mut("T@G").unwrap().insert(0, 20);
    meta::persist(&disk, &path, &t).await.unwrap();
    // A half-written file (as another tool might leave it): the .bak (offset 10) is used.
    disk.write_file(&path, b"{\"offsetTable\":{\"T@G\":{0:", true).await.unwrap();
    let loaded: ConsumerOffsetTable = meta::load(&disk, &path).await.unwrap().unwrap();
    assert_eq!(loaded.offset_table["T@G"][&0], 10);
    // An unsynced temp file lost to power loss never replaces the good one.
    meta::persist(&disk, &path, &t).await.unwrap();
    disk.write_file(&path.with_extension("json.tmp"), b"garbage", false).await.unwrap();
    sim.power_loss(&mut rand::rngs::mock::StepRng::new(0, 1), false);
    let loaded: ConsumerOffsetTable = meta::load(&disk, &path).await.unwrap().unwrap();
    assert_eq!(loaded.offset_table["T@G"][&0], 20);
    // Both unreadable: a clear error naming the file, not silent loss.
    disk.write_file(&path, b"not json", true).await.unwrap();
    disk.write_file(&path.with_extension("json.bak"), b"nor this", true).await.unwrap();
    let err = meta::load::<ConsumerOffsetTable>(&disk, &path).await.unwrap_err().to_string();
    assert!(err.contains("consumerOffset.json"), "{err}");
}
