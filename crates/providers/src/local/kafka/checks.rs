//! The provider's part of a Kafka service's checks (issue 14):
//!
//! - **router**: every broker that should serve is asked for the cluster's
//!   Metadata on its own port (it must name the service's cluster id and
//!   advertise the bootstrap address), and the router (HAProxy) must have
//!   it up behind the bootstrap address.
//! - **performance**: a canary record produced through the bootstrap
//!   address (with a real client, `rskafka`) to Drover's own topic
//!   [`CANARY_TOPIC`] and fetched back, both timed; consumer-group lag
//!   (the storage's high watermark less each group's committed offset,
//!   read from the storage database the brokers share).
//! - **security**: every listening socket of the service (router and
//!   brokers; the storage's servers have their own service's checks) is on
//!   loopback, read from the kernel (`/proc/net/tcp`); the brokers ask no client for credentials (tansu 0.6 as Drover runs it),
//!   which is said, as a warning.

use super::{cluster_id, KafkaBroker, KafkaService};
use crate::checks::{Check, Status};
use drover_model::{InstanceId, ServiceId};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Drover's own topic in every Kafka service: one partition, a record per
/// check.
pub const CANARY_TOPIC: &str = "__drover_canary";
/// Metadata version asked: 4 names the cluster id and is not yet flexible.
const METADATA_VERSION: i16 = 4;
/// Canary latency (produce + fetch) that warns. A canary that fails (or
/// takes longer than the check's timeout) is critical; a slow one only
/// warns: the rollout gate fails a move on a check that turned critical,
/// and a loaded machine is no reason to stop a fleet change.
const CANARY_WARN: Duration = Duration::from_millis(500);
/// Records a group may be behind on one partition before it warns, and
/// before it is critical.
const LAG_WARN: i64 = 10_000;
const LAG_CRIT: i64 = 1_000_000;

/// What one broker answered to Metadata on its own port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerMetadata {
    pub cluster_id: Option<String>,
    /// `host:port` of every broker it advertises.
    pub advertised: Vec<String>,
}

/// One request and its answer on a fresh connection to the broker on
/// `port`, framed and encoded by the kafka-protocol crate.
pub async fn exchange<Req, Resp>(port: u16, key: ApiKey, version: i16, request: &Req) -> Result<Resp, String>
where
    Req: Encodable + HeaderVersion,
    Resp: Decodable + HeaderVersion,
{
    const CORRELATION: i32 = 11;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(CORRELATION)
        .with_client_id(Some(StrBytes::from_static_str("drover-probe")));
    let mut body = bytes::BytesMut::new();
    header.encode(&mut body, Req::header_version(version)).map_err(|e| e.to_string())?;
    request.encode(&mut body, version).map_err(|e| e.to_string())?;
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    stream.write_all(&frame).await.map_err(|e| e.to_string())?;
    let size = stream.read_i32().await.map_err(|e| e.to_string())?;
    if !(4..=1 << 20).contains(&size) {
        return Err(format!("a {key:?} answer of {size} bytes"));
    }
    let mut answer = vec![0u8; size as usize];
    stream.read_exact(&mut answer).await.map_err(|e| e.to_string())?;
    let mut answer = bytes::Bytes::from(answer);
    let header = ResponseHeader::decode(&mut answer, Resp::header_version(version))
        .map_err(|e| format!("an unreadable {key:?} answer: {e}"))?;
    if header.correlation_id != CORRELATION {
        return Err(format!("{key:?} answered correlation id {}, not {CORRELATION}", header.correlation_id));
    }
    Resp::decode(&mut answer, version).map_err(|e| format!("an unreadable {key:?} answer: {e}"))
}

/// Metadata (no topics) on a fresh connection to `port`.
pub async fn broker_metadata(port: u16, timeout: Duration) -> Result<BrokerMetadata, String> {
    let request = MetadataRequest::default().with_topics(Some(Vec::new()));
    let attempt = exchange::<_, MetadataResponse>(port, ApiKey::Metadata, METADATA_VERSION, &request);
    let response = tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| format!("no Metadata answer within {timeout:?}"))??;
    Ok(BrokerMetadata {
        cluster_id: response.cluster_id.map(|c| c.to_string()),
        advertised: response.brokers.iter().map(|b| format!("{}:{}", b.host.as_str(), b.port)).collect(),
    })
}

/// ApiVersions (v0) on a fresh connection to `port`: the broker answers
/// it before anything else, with error code 0 (the heartbeat's probe).
pub async fn api_versions(port: u16, timeout: Duration) -> Result<(), String> {
    let request = ApiVersionsRequest::default();
    let attempt = exchange::<_, ApiVersionsResponse>(port, ApiKey::ApiVersions, 0, &request);
    let response = tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| format!("no ApiVersions answer within {timeout:?}"))??;
    match response.error_code {
        0 => Ok(()),
        code => Err(format!("ApiVersions answered error code {code}")),
    }
}

/// One broker's probe against what the service expects of it.
pub fn judge_broker(
    service: ServiceId,
    router_port: u16,
    answer: &Result<BrokerMetadata, String>,
) -> Result<(), String> {
    let metadata = answer.as_ref().map_err(Clone::clone)?;
    let expected = cluster_id(service);
    if metadata.cluster_id.as_deref() != Some(expected.as_str()) {
        return Err(format!("it names cluster {:?}, not {expected}", metadata.cluster_id));
    }
    let bootstrap = format!("127.0.0.1:{router_port}");
    if metadata.advertised.is_empty() || metadata.advertised.iter().any(|a| *a != bootstrap) {
        return Err(format!("it advertises {:?}, not the bootstrap address {bootstrap}", metadata.advertised));
    }
    Ok(())
}

/// The router check of a Kafka service: brokers probed, each one's state
/// at the router (`show stat` lines of `kafka/b<slot>`).
pub fn router_check(
    probes: &[(InstanceId, &KafkaBroker, Result<(), String>)],
    router_running: bool,
    stat: Result<&str, &str>,
) -> Check {
    let up_at_router = |slot: u8| -> Option<bool> {
        let stat = stat.ok()?;
        let server = format!("b{slot}");
        stat.lines()
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.len() > 17 && f[0] == "kafka" && f[1] == server)
            .map(|f| f[17] == "UP")
    };
    let mut brokers = serde_json::Map::new();
    let (mut serving, mut problems) = (0usize, Vec::new());
    for (id, broker, probe) in probes {
        let at_router = up_at_router(broker.slot);
        if probe.is_ok() && at_router == Some(true) {
            serving += 1;
        }
        if let Err(e) = probe {
            problems.push(format!("broker {id} (port {}): {e}", broker.port));
        } else if at_router == Some(false) {
            problems.push(format!("broker {id} answers but the router has it down"));
        }
        brokers.insert(
            id.to_string(),
            json!({
                "port": broker.port,
                "slot": broker.slot,
                "metadata": match probe { Ok(()) => "ok".to_string(), Err(e) => e.clone() },
                "up_at_router": at_router,
            }),
        );
    }
    let evidence = json!({ "brokers": brokers, "router_running": router_running, "serving": serving });
    let (status, summary) = if !router_running {
        (Status::Crit, "the router (haproxy) does not run: the bootstrap address answers nobody".to_string())
    } else if serving == 0 {
        (Status::Crit, format!("no broker serves behind the bootstrap address: {}", problems.join("; ")))
    } else if let Err(e) = stat {
        (Status::Warn, format!("the router's admin socket does not answer: {e}"))
    } else if !problems.is_empty() {
        (Status::Warn, format!("{serving} of {} brokers serve: {}", probes.len(), problems.join("; ")))
    } else {
        (Status::Ok, format!("all {serving} brokers answer Metadata for their cluster and are up at the router"))
    };
    Check { status, summary, evidence }
}

/// What the canary measured.
#[derive(Debug, Clone)]
pub struct Canary {
    pub produce: Duration,
    pub fetch: Duration,
    pub offset: i64,
}

/// Produces one record to [`CANARY_TOPIC`] through `bootstrap`
/// (`host:port`), creating the topic first if it is missing (tansu creates
/// no topic by itself), then fetches it back at the offset the produce
/// acknowledged.
pub async fn canary(bootstrap: &str, timeout: Duration) -> Result<Canary, String> {
    use rskafka::client::partition::{Compression, UnknownTopicHandling};
    use rskafka::client::ClientBuilder;
    let attempt = async {
        let backoff = rskafka::BackoffConfig {
            deadline: Some(timeout),
            max_backoff: Duration::from_millis(200),
            ..Default::default()
        };
        let client = ClientBuilder::new(vec![bootstrap.to_string()])
            .client_id("drover-canary")
            .backoff_config(backoff)
            .build()
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let topics = client.list_topics().await.map_err(|e| format!("cannot list topics: {e}"))?;
        if !topics.iter().any(|t| t.name == CANARY_TOPIC) {
            let controller = client.controller_client().map_err(|e| e.to_string())?;
            if let Err(e) = controller.create_topic(CANARY_TOPIC, 1, 1, 5_000).await {
                // Another check may have created it meanwhile.
                let again = client.list_topics().await.map_err(|e| format!("cannot list topics: {e}"))?;
                if !again.iter().any(|t| t.name == CANARY_TOPIC) {
                    return Err(format!("cannot create the canary topic: {e}"));
                }
            }
        }
        let partition = client
            .partition_client(CANARY_TOPIC, 0, UnknownTopicHandling::Retry)
            .await
            .map_err(|e| format!("no canary partition: {e}"))?;
        let now_ms = super::super::actions::now_ms();
        let payload = format!("drover canary {now_ms}").into_bytes();
        let record = rskafka::record::Record {
            key: None,
            value: Some(payload.clone()),
            headers: Default::default(),
            timestamp: rskafka::chrono::DateTime::from_timestamp_millis(now_ms as i64).unwrap_or_default(),
        };
        let started = Instant::now();
        let offsets = partition
            .produce(vec![record], Compression::NoCompression)
            .await
            .map_err(|e| format!("the canary produce failed: {e}"))?;
        let produce = started.elapsed();
        let offset = *offsets.first().ok_or("the canary produce acknowledged no offset")?;
        // A short max wait: tansu 0.6.0's fetch sleeps after each round
        // even when it has the records (half of what is left of max_wait;
        // tansu-storage service/fetch.rs), so a 1 s wait costs 500 ms.
        let started = Instant::now();
        let (records, _high) = partition
            .fetch_records(offset, 0..1_000_000, 10)
            .await
            .map_err(|e| format!("the canary fetch failed: {e}"))?;
        let fetch = started.elapsed();
        match records.iter().find(|r| r.offset == offset) {
            Some(r) if r.record.value.as_deref() == Some(payload.as_slice()) => Ok(Canary { produce, fetch, offset }),
            Some(_) => Err(format!("the canary fetched back at offset {offset} is not the one produced")),
            None => Err(format!("the canary produced at offset {offset} was not fetched back")),
        }
    };
    tokio::time::timeout(timeout, attempt).await.map_err(|_| format!("the canary took more than {timeout:?}"))?
}

/// One group's position on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLag {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    /// `None`: the group reads the topic but has never committed on this
    /// partition (it had no record there when it last committed).
    pub committed: Option<i64>,
    /// The partition's earliest kept offset: where a group that never
    /// committed on it starts (Drover's clients reset to the earliest).
    pub low_watermark: i64,
    pub high_watermark: i64,
}

impl GroupLag {
    pub fn lag(&self) -> i64 {
        (self.high_watermark - self.committed.unwrap_or(self.low_watermark)).max(0)
    }
}

/// Every partition of every topic a group has committed on, with the
/// group's committed offset there (if any) and the partition's watermarks,
/// from the storage database (`storage_url`). A partition the group never
/// committed on is still its partition: records produced there are lag
/// too. (Listing only the committed offsets once hid five records
/// produced to a partition the group had never read from.)
pub async fn group_lags(storage_url: &str, timeout: Duration) -> Result<Vec<GroupLag>, String> {
    let attempt = async {
        let (client, connection) =
            tokio_postgres::connect(storage_url, tokio_postgres::NoTls).await.map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let rows = client
            .query(
                "with reads as ( \
                     select distinct o.consumer_group, p.topic from consumer_offset o \
                     join topition p on p.id = o.topition where o.committed_offset is not null) \
                 select g.name, t.name, p.partition, o.committed_offset, \
                        coalesce(w.low, 0), coalesce(w.high, 0) \
                 from reads r \
                 join consumer_group g on g.id = r.consumer_group \
                 join topic t on t.id = r.topic \
                 join topition p on p.topic = r.topic \
                 left join consumer_offset o on o.consumer_group = r.consumer_group and o.topition = p.id \
                 left join watermark w on w.topition = p.id \
                 order by 1, 2, 3",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(rows
            .iter()
            .map(|r| GroupLag {
                group: r.get(0),
                topic: r.get(1),
                partition: r.get::<_, Option<i32>>(2).unwrap_or(0),
                committed: r.get(3),
                low_watermark: r.get(4),
                high_watermark: r.get(5),
            })
            .collect())
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| format!("the storage did not answer within {timeout:?}"))?
}

/// Canary records kept behind the newest (the rest are deleted).
pub const CANARY_KEPT: i64 = 100;

/// Deletes the canary records more than [`CANARY_KEPT`] behind `newest`
/// from the storage, directly: Drover owns that database, and tansu 0.6's
/// DeleteRecords deletes the records *from* the offset on, not before it
/// (tansu-storage `pg.rs` `delete_records`: `record.id >= $4`). Returns how
/// many were deleted.
pub async fn trim_canary(storage_url: &str, newest: i64, timeout: Duration) -> Result<u64, String> {
    let attempt = async {
        let (client, connection) =
            tokio_postgres::connect(storage_url, tokio_postgres::NoTls).await.map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        client
            .execute(
                "delete from record r using topition p, topic t \
                 where r.topition = p.id and p.topic = t.id and t.name = $1 and r.offset_id < $2",
                &[&CANARY_TOPIC, &(newest - CANARY_KEPT)],
            )
            .await
            .map_err(|e| e.to_string())
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| format!("the storage did not answer within {timeout:?}"))?
}

/// The performance check: the canary's latency and the groups' lag.
pub fn performance_check(canary: &Result<Canary, String>, lags: &Result<Vec<GroupLag>, String>) -> Check {
    let mut status = Status::Ok;
    let mut problems = Vec::new();
    let canary_evidence = match canary {
        Ok(c) => {
            let total = c.produce + c.fetch;
            if total >= CANARY_WARN {
                status = status.worst(Status::Warn);
                problems.push(format!("the canary took {} ms to produce and fetch", total.as_millis()));
            }
            json!({ "topic": CANARY_TOPIC, "offset": c.offset,
                    "produce_ms": c.produce.as_secs_f64() * 1e3, "fetch_ms": c.fetch.as_secs_f64() * 1e3 })
        }
        Err(e) => {
            status = status.worst(Status::Crit);
            problems.push(format!("the canary failed: {e}"));
            json!({ "topic": CANARY_TOPIC, "error": e })
        }
    };
    let lag_evidence = match lags {
        Ok(lags) => {
            let mut groups = serde_json::Map::new();
            for l in lags {
                let lag = l.lag();
                if lag >= LAG_CRIT {
                    status = status.worst(Status::Crit);
                } else if lag >= LAG_WARN {
                    status = status.worst(Status::Warn);
                }
                if lag >= LAG_WARN {
                    problems.push(format!("group {} is {lag} records behind on {}/{}", l.group, l.topic, l.partition));
                }
                let group = groups.entry(l.group.clone()).or_insert_with(|| json!({ "lag": 0, "partitions": [] }));
                group["lag"] = json!(group["lag"].as_i64().unwrap_or(0) + lag);
                if let Some(parts) = group["partitions"].as_array_mut() {
                    parts.push(json!({ "topic": l.topic, "partition": l.partition, "committed": l.committed,
                                       "high_watermark": l.high_watermark, "lag": lag }));
                }
            }
            serde_json::Value::Object(groups)
        }
        Err(e) => {
            status = status.worst(Status::Unknown);
            problems.push(format!("consumer lag unknown: {e}"));
            json!({ "error": e })
        }
    };
    let summary = if problems.is_empty() {
        match canary {
            Ok(c) => format!(
                "the canary was produced in {:.1} ms and fetched back in {:.1} ms; no group lags",
                c.produce.as_secs_f64() * 1e3,
                c.fetch.as_secs_f64() * 1e3
            ),
            Err(_) => String::new(),
        }
    } else {
        problems.join("; ")
    };
    Check { status, summary, evidence: json!({ "canary": canary_evidence, "consumer_groups": lag_evidence }) }
}

/// Local addresses of the sockets listening on `ports` (`/proc/net/tcp`
/// and `tcp6`): `(port, address)`.
pub fn listeners(ports: &[u16]) -> Vec<(u16, String)> {
    let mut found = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ...; st 0A is LISTEN.
            if fields.len() < 4 || fields[3] != "0A" {
                continue;
            }
            let Some((address, port)) = fields[1].split_once(':') else { continue };
            let Ok(port) = u16::from_str_radix(port, 16) else { continue };
            if ports.contains(&port) {
                found.push((port, decode_address(address, v6)));
            }
        }
    }
    found
}

/// A `/proc/net/tcp` address (hex, in the kernel's byte order) as text.
fn decode_address(hex: &str, v6: bool) -> String {
    let bytes: Vec<u8> =
        (0..hex.len() / 2).filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()).collect();
    if !v6 && bytes.len() == 4 {
        return std::net::Ipv4Addr::new(bytes[3], bytes[2], bytes[1], bytes[0]).to_string();
    }
    if v6 && bytes.len() == 16 {
        // Four 32-bit words, each in host (little-endian) order.
        let mut octets = [0u8; 16];
        for word in 0..4 {
            for b in 0..4 {
                octets[word * 4 + b] = bytes[word * 4 + 3 - b];
            }
        }
        return std::net::Ipv6Addr::from(octets).to_string();
    }
    hex.to_string()
}

fn is_loopback(address: &str) -> bool {
    address.parse::<std::net::IpAddr>().is_ok_and(|a| match a {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    })
}

/// The security check: where the service's sockets listen.
pub fn security_check(
    service: &KafkaService,
    brokers: &[(InstanceId, &KafkaBroker)],
    listening: &[(u16, String)],
) -> Check {
    let mut ports = vec![("router", service.router_port)];
    ports.extend(brokers.iter().map(|(_, b)| ("broker", b.port)));
    let exposed: Vec<String> = listening
        .iter()
        .filter(|(_, address)| !is_loopback(address))
        .map(|(port, address)| {
            let what = ports.iter().find(|(_, p)| p == port).map_or("a port", |(w, _)| w);
            format!("the {what} listens on {address}:{port}")
        })
        .collect();
    let evidence = json!({
        "listening": listening.iter().map(|(p, a)| format!("{a}:{p}")).collect::<Vec<_>>(),
        "authentication": "none",
        "storage": drover_model::kafka_storage_name(&service.name),
    });
    if !exposed.is_empty() {
        return Check {
            status: Status::Crit,
            summary: format!("a plaintext listener beyond loopback: {}", exposed.join("; ")),
            evidence,
        };
    }
    Check {
        status: Status::Warn,
        summary: "every listener is on loopback, but the brokers ask clients for no credentials: anyone on this \
                  machine can produce and consume"
            .into(),
        evidence,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_addresses_decode_in_the_kernels_byte_order() {
        assert_eq!(decode_address("0100007F", false), "127.0.0.1");
        assert_eq!(decode_address("0200007F", false), "127.0.0.2");
        assert_eq!(decode_address("00000000", false), "0.0.0.0");
        assert_eq!(decode_address("00000000000000000000000001000000", true), "::1");
        assert!(is_loopback("127.0.0.3") && is_loopback("::1") && !is_loopback("0.0.0.0") && !is_loopback("::"));
    }

    #[test]
    fn a_listening_socket_is_found_with_its_address() {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        // A connected socket's port is no listener.
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let client_port = client.local_addr().unwrap().port();
        assert_eq!(listeners(&[port, client_port]), vec![(port, "127.0.0.1".to_string())]);
    }

    #[test]
    fn lag_is_the_high_watermark_less_the_committed_offset_and_judged() {
        let lag = |committed, high| GroupLag {
            group: "g".into(),
            topic: "t".into(),
            partition: 0,
            committed: Some(committed),
            low_watermark: 0,
            high_watermark: high,
        };
        let canary = Ok(Canary { produce: Duration::from_millis(3), fetch: Duration::from_millis(2), offset: 9 });
        assert_eq!(performance_check(&canary, &Ok(vec![lag(10, 10)])).status, Status::Ok);
        let behind = performance_check(&canary, &Ok(vec![lag(0, LAG_WARN)]));
        assert_eq!(behind.status, Status::Warn, "{behind:?}");
        assert_eq!(behind.evidence["consumer_groups"]["g"]["lag"], LAG_WARN);
        assert_eq!(performance_check(&canary, &Ok(vec![lag(0, LAG_CRIT)])).status, Status::Crit);
        // Never committed on a partition: counted from its earliest kept
        // record, and said so (committed null).
        let never = GroupLag { committed: None, low_watermark: 4, ..lag(0, 4 + LAG_WARN) };
        let c = performance_check(&canary, &Ok(vec![lag(10, 12), never]));
        assert_eq!(c.status, Status::Warn, "{c:?}");
        assert_eq!(c.evidence["consumer_groups"]["g"]["lag"], 2 + LAG_WARN);
        assert_eq!(c.evidence["consumer_groups"]["g"]["partitions"][1]["committed"], serde_json::Value::Null);
        assert_eq!(performance_check(&Err("refused".into()), &Ok(vec![])).status, Status::Crit);
        let slow = Ok(Canary { produce: CANARY_WARN, fetch: Duration::ZERO, offset: 1 });
        assert_eq!(performance_check(&slow, &Ok(vec![])).status, Status::Warn);
    }
}
