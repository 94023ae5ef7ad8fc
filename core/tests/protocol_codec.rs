//! Remoting frames: golden bytes for both header encodings, round trips, malformed input,
//! and a server that closes only the offending connection.

use bytes::{BufMut, BytesMut};
use keel_core::protocol::body::{self, ClusterInfo, TopicRouteData};
use keel_core::protocol::code::{request, response};
use keel_core::protocol::header::SendMessageHeader;
use keel_core::protocol::{next_frame, FrameError, RemotingCommand, SerializeType};
use keel_core::remoting::{BoxFuture, Connection, Processor, RemotingClient, Server, ServerConfig};
use std::sync::Arc;
use std::time::Duration;

fn frame_of(header: &[u8], kind: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.put_u32((4 + header.len() + body.len()) as u32);
    f.put_u32(((kind as u32) << 24) | header.len() as u32);
    f.extend_from_slice(header);
    f.extend_from_slice(body);
    f
}

fn decode_all(bytes: &[u8]) -> Result<RemotingCommand, FrameError> {
    let mut buf = BytesMut::from(bytes);
    let frame = next_frame(&mut buf, 1 << 20)?.expect("a whole frame");
    assert!(buf.is_empty());
    RemotingCommand::decode(frame)
}

#[test]
fn json_header_matches_rocketmq_bytes_and_round_trips() {
    // The reference's example header, as a Java 4.9.8 client writes it.
    let golden = br#"{"code":105,"extFields":{"topic":"TopicTest"},"flag":0,"language":"JAVA","opaque":3,"serializeTypeCurrentRPC":"JSON","version":409}"#;
    let cmd = decode_all(&frame_of(golden, 0, b"")).unwrap();
    assert_eq!((cmd.code, cmd.opaque, cmd.flag, cmd.version, cmd.language), (105, 3, 0, 409, 0));
    assert_eq!(cmd.get("topic"), Some("TopicTest"));
    assert_eq!(cmd.serialize, SerializeType::Json);
    // Encoding the decoded command gives the same bytes back.
    assert_eq!(cmd.to_bytes().as_ref(), frame_of(golden, 0, b"").as_slice());

    let mut resp = cmd.response(response::SUCCESS, Some("a \"quoted\"\nremark".into())).with_body(&b"payload"[..]);
    resp.set("k", "v\\1");
    let back = decode_all(&resp.to_bytes()).unwrap();
    assert_eq!(back, resp);
    assert!(back.is_response() && !back.is_oneway());
}

#[test]
fn json_header_tolerates_unknown_keys_numbers_and_language_ordinals() {
    let h =
        br#"{"code":34,"language":12,"opaque":7,"flag":2,"extFields":{"n":5,"b":true,"z":null},"unknown":{"x":[1]}}"#;
    let cmd = decode_all(&frame_of(h, 0, b"{}")).unwrap();
    assert_eq!(cmd.language_name(), "RUST");
    assert!(cmd.is_oneway());
    assert_eq!(cmd.get("n"), Some("5"));
    assert_eq!(cmd.get("b"), Some("true"));
    assert_eq!(cmd.get("z"), None);
    assert_eq!(&cmd.body[..], b"{}");
}

#[test]
fn binary_header_matches_the_rocketmq_layout() {
    // int16 code, int8 language, int16 version, int32 opaque, int32 flag,
    // int32 remarkLen + remark, int32 extLen + (int16 keyLen, key, int32 valLen, value)*.
    let mut h = Vec::new();
    h.put_i16(310);
    h.put_u8(0);
    h.put_i16(409);
    h.put_i32(42);
    h.put_i32(0);
    h.put_i32(2);
    h.extend_from_slice(b"hi");
    let mut ext = Vec::new();
    for (k, v) in [("a", "PG"), ("b", "T")] {
        ext.put_i16(k.len() as i16);
        ext.extend_from_slice(k.as_bytes());
        ext.put_i32(v.len() as i32);
        ext.extend_from_slice(v.as_bytes());
    }
    h.put_i32(ext.len() as i32);
    h.extend_from_slice(&ext);
    let bytes = frame_of(&h, 1, b"body");
    let cmd = decode_all(&bytes).unwrap();
    assert_eq!((cmd.code, cmd.version, cmd.opaque), (310, 409, 42));
    assert_eq!(cmd.remark.as_deref(), Some("hi"));
    assert_eq!(cmd.serialize, SerializeType::RocketMq);
    assert_eq!(&cmd.body[..], b"body");
    // Same bytes back, and a response keeps the request's encoding.
    assert_eq!(cmd.to_bytes().as_ref(), bytes.as_slice());
    let resp = decode_all(&cmd.response(0, None).to_bytes()).unwrap();
    assert_eq!(resp.serialize, SerializeType::RocketMq);
}

#[test]
fn malformed_frames_are_rejected_not_panicked_on() {
    let mut big = BytesMut::new();
    big.put_u32(17 * 1024 * 1024);
    assert_eq!(next_frame(&mut big, 16 * 1024 * 1024), Err(FrameError::TooLarge(17 * 1024 * 1024, 16 * 1024 * 1024)));
    let mut tiny = BytesMut::from(&[0u8, 0, 0, 2, 0, 0][..]);
    assert_eq!(next_frame(&mut tiny, 1 << 20), Err(FrameError::TooSmall(2)));
    // A partial frame is not an error, just not there yet.
    let mut part = BytesMut::from(&frame_of(b"{}", 0, b"")[..5]);
    assert_eq!(next_frame(&mut part, 1 << 20), Ok(None));

    let mut past = Vec::new();
    past.put_u32(8);
    past.put_u32(100);
    past.put_u32(0);
    assert!(matches!(decode_all(&past), Err(FrameError::HeaderPastFrame { header: 100, .. })));
    assert!(matches!(decode_all(&frame_of(b"{\"code\":", 0, b"")), Err(FrameError::BadJson(_))));
    assert!(matches!(decode_all(&frame_of(b"{}", 0, b"")), Err(FrameError::BadJson(_))), "code is required");
    assert!(matches!(decode_all(&frame_of(b"{}", 7, b"")), Err(FrameError::UnknownSerializeType(7))));
    let mut h = vec![0u8; 17];
    h[13..17].copy_from_slice(&(-1i32).to_be_bytes());
    assert!(matches!(decode_all(&frame_of(&h, 1, b"")), Err(FrameError::BadBinary(_))));
    assert!(matches!(decode_all(&frame_of(&h[..9], 1, b"")), Err(FrameError::BadBinary(_))));
    // Every truncation of a valid binary header fails cleanly.
    let good = RemotingCommand {
        serialize: SerializeType::RocketMq,
        remark: Some("r".into()),
        ..RemotingCommand::request(10, [("a".to_string(), "b".to_string())].into())
    };
    let full = good.to_bytes();
    let header_len = (u32::from_be_bytes(full[4..8].try_into().unwrap()) & 0xFF_FFFF) as usize;
    for cut in 0..header_len {
        let header = &full[8..8 + cut];
        let _ = decode_all(&frame_of(header, 1, b""));
    }
}

#[test]
fn send_headers_read_both_spellings() {
    let h = SendMessageHeader {
        producer_group: "PG".into(),
        topic: "T".into(),
        default_topic: "TBW102".into(),
        default_topic_queue_nums: 4,
        queue_id: 3,
        born_timestamp: 1_700_000_000_000,
        properties: "TAGS\u{1}A\u{2}".into(),
        max_reconsume_times: Some(16),
        ..Default::default()
    };
    let v2 = RemotingCommand::request(request::SEND_MESSAGE_V2, h.to_v2());
    assert_eq!(v2.get("b"), Some("T"));
    assert_eq!(SendMessageHeader::decode(&v2).unwrap(), h);
    let full: keel_core::protocol::ExtFields = [
        ("producerGroup", "PG"),
        ("topic", "T"),
        ("defaultTopic", "TBW102"),
        ("defaultTopicQueueNums", "4"),
        ("queueId", "3"),
        ("sysFlag", "0"),
        ("bornTimestamp", "1700000000000"),
        ("flag", "0"),
        ("properties", "TAGS\u{1}A\u{2}"),
        ("reconsumeTimes", "0"),
        ("unitMode", "false"),
        ("maxReconsumeTimes", "16"),
        ("batch", "false"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(SendMessageHeader::decode(&RemotingCommand::request(request::SEND_MESSAGE, full)).unwrap(), h);
    let mut missing = v2.clone();
    missing.ext.remove("b");
    assert_eq!(SendMessageHeader::decode(&missing).unwrap_err().to_string(), "the custom field <topic> is null");
}

#[test]
fn bodies_read_fastjson_quirks() {
    let cluster = br#"{"brokerAddrTable":{"broker-a":{"brokerAddrs":{0:"10.0.0.1:10911",1:"10.0.0.2:10911"},"brokerName":"broker-a","cluster":"DefaultCluster"}},"clusterAddrTable":{"DefaultCluster":["broker-a"]}}"#;
    let info: ClusterInfo = body::decode(cluster).unwrap();
    assert_eq!(info.broker_addr_table["broker-a"].broker_addrs[&1], "10.0.0.2:10911");
    let route = br#"{"brokerDatas":[{"brokerAddrs":{"0":"10.0.0.1:10911"},"brokerName":"broker-a","cluster":"DefaultCluster","enableActingMaster":false}],"filterServerTable":{},"queueDatas":[{"brokerName":"broker-a","perm":6,"readQueueNums":4,"topicSysFlag":0,"writeQueueNums":4}]}"#;
    let r: TopicRouteData = body::decode(route).unwrap();
    assert_eq!(r.broker_datas[0].master_addr(), Some("10.0.0.1:10911"));
    assert_eq!(r.queue_datas[0].write_queue_nums, 4);
}

#[test]
fn batch_bodies_round_trip_and_bad_lengths_are_refused() {
    use keel_core::protocol::message::{decode_batch, encode_batch};
    let msgs = vec![(0, &b"first"[..], "TAGS\u{1}A\u{2}".to_string()), (7, &b""[..], String::new())];
    let body = bytes::Bytes::from(encode_batch(&msgs));
    let back = decode_batch(&body).unwrap();
    assert_eq!(back.len(), 2);
    assert_eq!((back[0].0, &back[0].1[..], back[0].2.as_str()), (0, &b"first"[..], "TAGS\u{1}A\u{2}"));
    assert_eq!((back[1].0, back[1].1.len(), back[1].2.as_str()), (7, 0, ""));
    let first_len = 20 + 5 + 2 + msgs[0].2.len();
    assert_eq!(decode_batch(&body.slice(..first_len)).unwrap().len(), 1, "a whole first message alone is a batch");
    for cut in (1..body.len()).filter(|c| *c != first_len) {
        assert!(decode_batch(&body.slice(..cut)).is_err(), "a batch cut at byte {cut} is refused");
    }
}

/// Answers code 1 with an empty body; everything else is REQUEST_CODE_NOT_SUPPORTED.
struct Echo;

impl Processor for Echo {
    fn process(self: Arc<Self>, _c: Connection, req: RemotingCommand) -> BoxFuture<Option<RemotingCommand>> {
        Box::pin(async move {
            Some(if req.code == 1 { req.response(0, None) } else { keel_core::remoting::not_supported(&req) })
        })
    }
}

#[tokio::test]
async fn a_bad_frame_closes_only_its_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::bind("127.0.0.1:0", Arc::new(Echo), ServerConfig { max_frame: 1024, ..Default::default() })
        .await
        .unwrap();
    let addr = server.local_addr().to_string();
    let good = RemotingClient::new();
    let ok = good.invoke(&addr, RemotingCommand::request(1, Default::default()), Duration::from_secs(3)).await.unwrap();
    assert_eq!(ok.code, 0);
    let unknown =
        good.invoke(&addr, RemotingCommand::request(9999, Default::default()), Duration::from_secs(3)).await.unwrap();
    assert_eq!(unknown.code, response::REQUEST_CODE_NOT_SUPPORTED);
    assert_eq!(unknown.remark.as_deref(), Some(" request type 9999 not supported"));

    for bad in [frame_of(b"{nope", 0, b""), {
        let mut v = Vec::new();
        v.put_u32(4096);
        v
    }] {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(&bad).await.unwrap();
        let mut buf = [0u8; 16];
        let n =
            tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await.expect("server closes").unwrap_or(0);
        assert_eq!(n, 0, "the server closed the bad connection without answering");
    }
    // The good connection still works.
    let again =
        good.invoke(&addr, RemotingCommand::request(1, Default::default()), Duration::from_secs(3)).await.unwrap();
    assert_eq!(again.code, 0);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_server_that_shut_down_has_freed_its_port() {
    let server = Server::bind("127.0.0.1:0", Arc::new(Echo), ServerConfig::default()).await.unwrap();
    let addr = server.local_addr().to_string();
    server.shutdown(Duration::from_secs(1)).await;
    // A process restarted at once binds the same port.
    let again = Server::bind(&addr, Arc::new(Echo), ServerConfig::default()).await.expect("the port is free again");
    let client = RemotingClient::new();
    let ok =
        client.invoke(&addr, RemotingCommand::request(1, Default::default()), Duration::from_secs(3)).await.unwrap();
    assert_eq!(ok.code, 0);
    again.shutdown(Duration::from_secs(1)).await;
}

/// Reads from `s` until `n` whole frames are there.
async fn read_frames(s: &mut tokio::net::TcpStream, buf: &mut BytesMut, n: usize) -> Vec<RemotingCommand> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    while got.len() < n {
        while let Some(f) = next_frame(buf, 1 << 20).unwrap() {
            got.push(RemotingCommand::decode(f).unwrap());
        }
        if got.len() < n {
            let r = tokio::time::timeout(Duration::from_secs(5), s.read_buf(buf)).await.expect("frames arrive");
            assert!(r.unwrap() > 0, "the client closed early");
        }
    }
    got
}

#[tokio::test]
async fn a_burst_of_responses_reaches_every_caller_and_their_next_requests_go_out() {
    use tokio::io::AsyncWriteExt;
    const CALLERS: usize = 32;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let client = RemotingClient::new();
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (client, addr) = (client.clone(), addr.clone());
            tokio::spawn(async move {
                for _ in 0..2 {
                    let r =
                        client.invoke(&addr, RemotingCommand::request(1, Default::default()), Duration::from_secs(5));
                    assert_eq!(r.await.unwrap().code, 0);
                }
            })
        })
        .collect();
    let (mut s, _) = listener.accept().await.unwrap();
    let mut buf = BytesMut::new();
    let first = read_frames(&mut s, &mut buf, CALLERS).await;
    // Every response in one write, followed by a request of the server's own: the client gets
    // more responses in one read than it hands out per turn, then something to answer.
    let mut burst = BytesMut::new();
    for req in &first {
        req.response(0, None).encode(&mut burst);
    }
    let mut asked = RemotingCommand::request(9999, Default::default());
    asked.opaque = 777;
    asked.encode(&mut burst);
    s.write_all(&burst).await.unwrap();
    // Every caller's second request arrives, and so does the answer to the server's request.
    let second = read_frames(&mut s, &mut buf, CALLERS + 1).await;
    let answer = second.iter().find(|c| c.is_response()).expect("the client answered the server's request");
    assert_eq!((answer.opaque, answer.code), (777, response::REQUEST_CODE_NOT_SUPPORTED));
    let mut burst = BytesMut::new();
    for req in second.iter().filter(|c| !c.is_response()) {
        assert_eq!(req.code, 1);
        req.response(0, None).encode(&mut burst);
    }
    s.write_all(&burst).await.unwrap();
    for c in callers {
        c.await.unwrap();
    }
}
