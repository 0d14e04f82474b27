//! The emulator over real HTTP on loopback: each point of "What the emulator must reproduce"
//! (shared/BATCH_API.md) with the answer a client sees and what ends up recorded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use batchsync::emulate::{
    Emulator, EmulatorConfig, EmulatorThread, Faults, Received, Scripted, Stats,
};
use serde_json::{json, Value};

const API_KEY: &str = "test-api-key";
const PROJECT_KEY: &str = "test-project-key";

fn config() -> EmulatorConfig {
    EmulatorConfig {
        api_key: API_KEY.to_owned(),
        project_key: PROJECT_KEY.to_owned(),
        limits: false,
        faults: Faults::default(),
        record_path: None,
        seed: 1,
    }
}

async fn start(config: EmulatorConfig) -> Emulator {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    Emulator::start(addr, config).await.unwrap()
}

fn event(name: &str) -> Value {
    json!({ "name": name, "time": "2026-11-27T10:30:00Z", "attributes": { "amount": 42.5 } })
}

fn op(custom_id: &str, events: Vec<Value>) -> Value {
    json!({ "identifiers": { "custom_id": custom_id }, "events": events })
}

/// `count` valid operations of one event each.
fn ops(count: usize) -> Value {
    Value::Array(
        (0..count)
            .map(|i| op(&format!("user_{i}"), vec![event("order_completed")]))
            .collect(),
    )
}

/// A reqwest client that talks to one emulator, with the right keys unless told otherwise.
struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn new(emulator: &Emulator) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: emulator.endpoint(),
        }
    }

    fn request(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(API_KEY)
            .header("X-Batch-Project", PROJECT_KEY)
    }

    async fn post(&self, endpoint: &str, body: &Value) -> reqwest::Result<reqwest::Response> {
        self.request(&format!("/2.11/profiles/{endpoint}"))
            .json(body)
            .send()
            .await
    }

    /// Posts and returns the status and the JSON body.
    async fn send(&self, endpoint: &str, body: &Value) -> (u16, Value) {
        let response = self.post(endpoint, body).await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }
}

fn total_answered(stats: &Stats) -> u64 {
    stats.by_status.values().sum::<u64>() + stats.dropped_before + stats.dropped_after
}

#[tokio::test]
async fn a_request_without_bearer_key_or_project_is_refused_with_401() {
    let emulator = start(config()).await;
    let client = Client::new(&emulator);
    let url = format!("{}/2.11/profiles/update", emulator.endpoint());
    let no_key = client
        .http
        .post(&url)
        .header("X-Batch-Project", PROJECT_KEY)
        .json(&ops(1))
        .send()
        .await
        .unwrap();
    let no_project = client
        .http
        .post(&url)
        .bearer_auth(API_KEY)
        .json(&ops(1))
        .send()
        .await
        .unwrap();
    for response in [no_key, no_project] {
        assert_eq!(response.status().as_u16(), 401);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error_code"], "AUTHENTICATION_INVALID");
    }
    assert!(emulator.received().is_empty());
}

#[tokio::test]
async fn a_wrong_api_key_or_project_key_is_refused_with_401_without_echoing_it() {
    let emulator = start(config()).await;
    let client = Client::new(&emulator);
    let url = format!("{}/2.11/profiles/update", emulator.endpoint());
    let wrong_key = client
        .http
        .post(&url)
        .bearer_auth("guessed-key-123")
        .header("X-Batch-Project", PROJECT_KEY)
        .json(&ops(1));
    let wrong_project = client
        .http
        .post(&url)
        .bearer_auth(API_KEY)
        .header("X-Batch-Project", "guessed-project-456")
        .json(&ops(1));
    for (request, names) in [(wrong_key, "REST API key"), (wrong_project, "project key")] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401);
        let text = response.text().await.unwrap();
        assert!(text.contains(names), "{text}");
        for secret in ["guessed", API_KEY, PROJECT_KEY] {
            assert!(!text.contains(secret), "{text}");
        }
    }
    assert_eq!(emulator.stats().by_status.get(&401), Some(&2));
    assert!(emulator.received().is_empty());
}

#[tokio::test]
async fn an_unknown_version_or_path_is_a_404_route_not_found() {
    let emulator = start(config()).await;
    let client = Client::new(&emulator);
    for path in [
        "/1.0/profiles/update",
        "/3.0/profiles/update",
        "/v2.11/profiles/update",
        "/2.11/profiles/delete",
        "/2.11/events",
    ] {
        let response = client.request(path).json(&ops(1)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 404, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error_code"], "ROUTE_NOT_FOUND", "{path}");
    }
    let (status, _) = Client::new(&emulator).send("update", &ops(1)).await;
    assert_eq!(status, 202);
    let any_minor = client.request("/2.4/profiles/mass-update").json(&ops(1));
    assert_eq!(any_minor.send().await.unwrap().status().as_u16(), 202);
}

#[tokio::test]
async fn a_body_that_is_not_a_json_array_is_a_400_and_records_nothing() {
    let emulator = start(config()).await;
    let client = Client::new(&emulator);
    for body in [
        json!({ "identifiers": { "custom_id": "u" } }),
        json!("[]"),
        json!(null),
    ] {
        let (status, answer) = client.send("update", &body).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(answer["error_code"], "BAD_REQUEST");
    }
    let not_json = client
        .request("/2.11/profiles/update")
        .header("Content-Type", "application/json")
        .body("[{\"identifiers\":")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status().as_u16(), 400);
    assert!(emulator.received().is_empty());
}

#[tokio::test]
async fn a_non_json_content_type_is_a_400() {
    let emulator = start(config()).await;
    let response = Client::new(&emulator)
        .request("/2.11/profiles/update")
        .header("Content-Type", "text/plain")
        .body(ops(1).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert!(emulator.received().is_empty());
}

#[tokio::test]
async fn two_hundred_and_one_operations_on_update_reject_the_whole_call() {
    let emulator = start(config()).await;
    let client = Client::new(&emulator);
    let (status, answer) = client.send("update", &ops(201)).await;
    assert_eq!(status, 400);
    assert!(
        answer["error_message"].as_str().unwrap().contains("201"),
        "{answer}"
    );
    assert!(emulator.received().is_empty());
    let (status, _) = client.send("mass-update", &ops(201)).await;
    assert_eq!(status, 202);
    assert_eq!(emulator.received().len(), 201);
}

#[tokio::test]
async fn an_operation_with_two_identifiers_rejects_the_whole_call() {
    let emulator = start(config()).await;
    let body = json!([
        op("fine", vec![event("e")]),
        { "identifiers": { "custom_id": "a", "installation": "b" }, "events": [event("e")] },
    ]);
    let (status, answer) = Client::new(&emulator).send("update", &body).await;
    assert_eq!(status, 400);
    assert!(
        answer["error_message"]
            .as_str()
            .unwrap()
            .contains("bulk_index 1"),
        "{answer}"
    );
    assert!(emulator.received().is_empty());
}

#[tokio::test]
async fn invalid_operations_are_dropped_by_bulk_index_and_the_others_recorded() {
    let emulator = start(config()).await;
    let too_long = json!({ "name": "e", "attributes": { "note": "x".repeat(301) } });
    let body = json!([
        op("good_0", vec![event("order_completed")]),
        op("bad_name", vec![event("Order Completed")]),
        op(
            "good_2",
            vec![event("order_completed"), event("order_shipped")]
        ),
        op("too_long", vec![too_long]),
        op("too_many", vec![event("e"); 16]),
    ]);
    let (status, answer) = Client::new(&emulator).send("update", &body).await;
    assert_eq!(status, 202);
    assert_eq!(answer["code"], "SUCCESS_WITH_PARTIAL_ERRORS");
    let errors = answer["errors"].as_array().unwrap();
    let indexes: Vec<u64> = errors
        .iter()
        .map(|e| e["bulk_index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, [1, 3, 4]);
    assert!(errors
        .iter()
        .all(|e| e["category"].is_string() && e["reason"].is_string()));
    assert!(errors[0].get("attribute").is_none());
    assert_eq!(errors[1]["attribute"], "note");
    assert!(
        errors[2]["reason"].as_str().unwrap().contains("16 events"),
        "{answer}"
    );

    let received = emulator.received();
    let who: Vec<(usize, &str)> = received
        .iter()
        .map(|r| (r.bulk_index, r.custom_id.as_str()))
        .collect();
    assert_eq!(who, [(0, "good_0"), (2, "good_2"), (2, "good_2")]);
    let stats = emulator.stats();
    assert_eq!(
        (stats.operations_accepted, stats.operations_rejected),
        (2, 3)
    );
    assert_eq!(stats.events_accepted, 3);
}

#[tokio::test]
async fn accepted_events_are_readable_in_memory_and_over_http() {
    let emulator = start(config()).await;
    let client = Client::new(&emulator);
    let sent = event("order_completed");
    let (status, answer) = client
        .send("update", &json!([op("user_1", vec![sent.clone()])]))
        .await;
    assert_eq!((status, answer), (202, json!({ "code": "SUCCESS" })));
    client.send("mass-update", &ops(2)).await;

    let received = emulator.received();
    assert_eq!(received.len(), 3);
    let first = &received[0];
    assert_eq!(
        (first.request, first.endpoint.as_str(), first.bulk_index),
        (1, "update", 0)
    );
    assert_eq!((first.custom_id.as_str(), &first.event), ("user_1", &sent));
    assert!(first.received_at_ms > 1_600_000_000_000);
    assert_eq!(
        (
            received[2].request,
            received[2].endpoint.as_str(),
            received[2].bulk_index
        ),
        (2, "mass-update", 1)
    );

    let ndjson = client
        .http
        .get(format!("{}/_emulator/received", emulator.endpoint()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let over_http: Vec<Received> = ndjson
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(over_http, received);
}

#[tokio::test]
async fn a_replayed_request_records_its_events_twice() {
    let emulator = start(config()).await;
    let client = Client::new(&emulator);
    let body = ops(3);
    client.send("update", &body).await;
    client.send("update", &body).await;
    let received = emulator.received();
    assert_eq!(received.len(), 6);
    assert_eq!(received[0].event, received[3].event);
    assert_eq!((received[0].request, received[3].request), (1, 2));
}

/// Six requests of 200 operations: the burst of 1,000 holds five, the sixth finds the bucket
/// nearly empty (refilling 200 tokens takes two thirds of a second).
async fn send_1200_operations_on_update(limits: bool) -> (Vec<u16>, Emulator) {
    let emulator = start(EmulatorConfig { limits, ..config() }).await;
    let client = Client::new(&emulator);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let response = client.post("update", &ops(200)).await.unwrap();
        if response.status().as_u16() == 429 {
            assert!(response.headers().get("retry-after").is_none());
        }
        statuses.push(response.status().as_u16());
    }
    (statuses, emulator)
}

#[tokio::test]
async fn a_burst_of_1200_operations_on_update_is_throttled_when_limits_are_on() {
    let (statuses, emulator) = send_1200_operations_on_update(true).await;
    assert_eq!(&statuses[..5], [202; 5]);
    assert_eq!(statuses[5], 429);
    assert_eq!(emulator.received().len(), 1_000);
}

#[tokio::test]
async fn a_burst_of_1200_operations_on_update_passes_when_limits_are_off() {
    let (statuses, emulator) = send_1200_operations_on_update(false).await;
    assert_eq!(statuses, [202; 6]);
    assert_eq!(emulator.received().len(), 1_200);
}

#[tokio::test]
async fn a_scripted_503_is_answered_then_the_next_request_succeeds() {
    let emulator = start(config()).await;
    emulator.script(vec![
        Scripted::Status {
            status: 503,
            retry_after: None,
        },
        Scripted::Ok,
    ]);
    let client = Client::new(&emulator);
    let (status, answer) = client.send("update", &ops(2)).await;
    assert_eq!(status, 503);
    assert!(answer["error_code"].is_string());
    assert!(emulator.received().is_empty());
    let (status, _) = client.send("update", &ops(2)).await;
    assert_eq!(status, 202);
    assert_eq!(emulator.received().len(), 2);
}

#[tokio::test]
async fn a_scripted_429_carries_retry_after_only_when_asked() {
    let emulator = start(config()).await;
    emulator.script(vec![
        Scripted::Status {
            status: 429,
            retry_after: Some(7),
        },
        Scripted::Status {
            status: 429,
            retry_after: None,
        },
    ]);
    let client = Client::new(&emulator);
    let with = client.post("update", &ops(1)).await.unwrap();
    assert_eq!(with.status().as_u16(), 429);
    assert_eq!(with.headers()["retry-after"], "7");
    let without = client.post("update", &ops(1)).await.unwrap();
    assert_eq!(without.status().as_u16(), 429);
    assert!(without.headers().get("retry-after").is_none());
    assert!(emulator.received().is_empty());
}

#[tokio::test]
async fn drop_after_loses_the_answer_but_records_the_events() {
    let emulator = start(config()).await;
    emulator.script(vec![Scripted::DropAfter]);
    let client = Client::new(&emulator);
    let error = client.post("update", &ops(3)).await.unwrap_err();
    assert!(!error.is_status(), "{error}");
    assert_eq!(emulator.received().len(), 3);
    let stats = emulator.stats();
    assert_eq!((stats.requests, stats.dropped_after), (1, 1));
    // The client can go on: the next request gets a fresh connection and an answer.
    assert_eq!(client.send("update", &ops(3)).await.0, 202);
}

#[tokio::test]
async fn drop_before_loses_the_answer_and_records_nothing() {
    let emulator = start(config()).await;
    emulator.script(vec![Scripted::DropBefore]);
    let client = Client::new(&emulator);
    let error = client.post("update", &ops(3)).await.unwrap_err();
    assert!(!error.is_status(), "{error}");
    assert!(emulator.received().is_empty());
    let stats = emulator.stats();
    assert_eq!((stats.requests, stats.dropped_before), (1, 1));
}

#[tokio::test]
async fn an_error_rate_of_one_answers_500_and_503_alternately_and_records_nothing() {
    let emulator = start(EmulatorConfig {
        faults: Faults {
            error_rate: 1.0,
            ..Faults::default()
        },
        ..config()
    })
    .await;
    let client = Client::new(&emulator);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(client.send("update", &ops(1)).await.0);
    }
    assert_eq!(statuses, [500, 503, 500, 503]);
    assert!(emulator.received().is_empty());
    emulator.set_faults(Faults::default());
    assert_eq!(client.send("update", &ops(1)).await.0, 202);
}

#[tokio::test]
async fn latency_delays_every_answer() {
    let emulator = start(EmulatorConfig {
        faults: Faults {
            latency_ms: 150,
            ..Faults::default()
        },
        ..config()
    })
    .await;
    emulator.script(vec![Scripted::Delay { ms: 100 }]);
    let client = Client::new(&emulator);
    let started = Instant::now();
    assert_eq!(client.send("update", &ops(1)).await.0, 202);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    let started = Instant::now();
    assert_eq!(client.send("update", &ops(1)).await.0, 202);
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(150), "{elapsed:?}");
}

#[tokio::test]
async fn the_record_file_holds_one_ndjson_line_per_accepted_event() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("received.ndjson");
    let emulator = start(EmulatorConfig {
        record_path: Some(path.clone()),
        ..config()
    })
    .await;
    let client = Client::new(&emulator);
    client.send("update", &ops(2)).await;
    client
        .send("update", &json!([op("u", vec![event("Bad")])]))
        .await;
    client.send("mass-update", &ops(3)).await;
    let written = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<Received> = written
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines, emulator.received());
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[2].request, 3);
}

#[tokio::test]
async fn faults_and_script_can_be_set_over_http() {
    let emulator = start(config()).await;
    let client = Client::new(&emulator);
    let admin = |path: &str| format!("{}/_emulator/{path}", emulator.endpoint());
    let set = client
        .http
        .post(admin("faults"))
        .json(&json!({ "throttle_rate": 1.0, "retry_after": 2 }))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status().as_u16(), 200);
    let throttled = client.post("update", &ops(1)).await.unwrap();
    assert_eq!(throttled.status().as_u16(), 429);
    assert_eq!(throttled.headers()["retry-after"], "2");

    let script = json!([{ "kind": "ok" }, { "kind": "status", "status": 500 }]);
    let queued = client
        .http
        .post(admin("script"))
        .json(&script)
        .send()
        .await
        .unwrap();
    assert_eq!(
        queued.json::<Value>().await.unwrap(),
        json!({ "queued": 2 })
    );
    assert_eq!(client.send("update", &ops(1)).await.0, 202);
    assert_eq!(client.send("update", &ops(1)).await.0, 500);
    assert_eq!(client.send("update", &ops(1)).await.0, 429);

    let bad = client
        .http
        .post(admin("faults"))
        .json(&json!({ "error_rate": 2.0 }))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    let stats: Value = client
        .http
        .get(admin("stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["requests"], 4);
    assert_eq!(stats["by_status"]["429"], 2);
}

#[tokio::test]
async fn stats_account_for_every_request_exactly_once() {
    let emulator = start(EmulatorConfig {
        faults: Faults {
            error_rate: 0.2,
            throttle_rate: 0.2,
            drop_before_rate: 0.1,
            drop_after_rate: 0.1,
            ..Faults::default()
        },
        ..config()
    })
    .await;
    let client = Client::new(&emulator);
    for _ in 0..40 {
        let _ = client.post("update", &ops(2)).await;
    }
    let stats = emulator.stats();
    assert_eq!(stats.requests, 40);
    assert_eq!(total_answered(&stats), 40, "{stats:?}");
    assert!(
        stats.dropped_before > 0 && stats.dropped_after > 0,
        "{stats:?}"
    );
    assert_eq!(stats.events_accepted, emulator.received().len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mass_update_of_10000_operations_is_accepted_in_one_request() {
    let emulator = start(config()).await;
    let body = ops(10_000);
    let size = serde_json::to_vec(&body).unwrap().len();
    assert!(size > 1_000_000, "{size}");
    let started = Instant::now();
    let (status, answer) = Client::new(&emulator).send("mass-update", &body).await;
    assert_eq!((status, answer), (202, json!({ "code": "SUCCESS" })));
    // Generous for an unoptimised build on a slow machine; a release build takes milliseconds.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(emulator.received().len(), 10_000);
}

/// A measurement more than a test: run with `cargo test --release --test emulator -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "throughput measurement; run in release"]
async fn mass_update_accepts_at_least_50000_events_per_second() {
    let emulator = start(config()).await;
    let client = Client::new(&emulator);
    let bodies: Vec<Vec<u8>> = (0..10)
        .map(|_| serde_json::to_vec(&ops(10_000)).unwrap())
        .collect();
    let started = Instant::now();
    for body in bodies {
        let response = client
            .request("/2.11/profiles/mass-update")
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 202);
    }
    let per_second = 100_000.0 / started.elapsed().as_secs_f64();
    eprintln!("mass-update: {per_second:.0} events/s");
    assert!(per_second >= 50_000.0, "{per_second:.0} events/s");
}

// The blocking wrapper and the HTTP edge cases, with a raw socket.

/// Sends raw bytes and reads until the server closes or `timeout` passes.
fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn raw_post(path: &str, body: &str, connection: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\
         X-Batch-Project: {PROJECT_KEY}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: {connection}\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn the_blocking_wrapper_serves_keep_alive_requests_from_synchronous_code() {
    let emulator = EmulatorThread::start(config()).unwrap();
    assert_eq!(emulator.endpoint(), format!("http://{}", emulator.addr()));
    let body = ops(2).to_string();
    let two_requests = format!(
        "{}{}",
        raw_post("/2.11/profiles/update", &body, "keep-alive"),
        raw_post("/2.11/profiles/update", &body, "close")
    );
    let answer = raw_exchange(emulator.addr(), two_requests.as_bytes());
    assert_eq!(
        answer.matches("HTTP/1.1 202 Accepted").count(),
        2,
        "{answer}"
    );
    assert!(answer.contains("Connection: close"), "{answer}");
    assert_eq!(emulator.received().len(), 4);
    assert_eq!(emulator.stats().requests, 2);

    emulator.script(vec![Scripted::Status {
        status: 500,
        retry_after: None,
    }]);
    let answer = raw_exchange(
        emulator.addr(),
        raw_post("/2.11/profiles/update", &body, "close").as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 500"), "{answer}");
    emulator.set_faults(Faults {
        drop_before_rate: 1.0,
        ..Faults::default()
    });
    let answer = raw_exchange(
        emulator.addr(),
        raw_post("/2.11/profiles/update", &body, "close").as_bytes(),
    );
    assert!(answer.is_empty(), "{answer}");
    assert_eq!(emulator.received().len(), 4);
}

#[test]
fn a_malformed_request_head_is_answered_400_and_the_connection_closed() {
    let emulator = EmulatorThread::start(config()).unwrap();
    let answer = raw_exchange(emulator.addr(), b"HELLO THERE\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("Connection: close"), "{answer}");
}

#[test]
fn a_client_that_disconnects_mid_request_does_not_disturb_the_server() {
    let emulator = EmulatorThread::start(config()).unwrap();
    let body = ops(50).to_string();
    let request = raw_post("/2.11/profiles/update", &body, "close");
    {
        let mut stream = TcpStream::connect(emulator.addr()).unwrap();
        stream
            .write_all(&request.as_bytes()[..request.len() / 2])
            .unwrap();
    }
    let answer = raw_exchange(emulator.addr(), request.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert_eq!(emulator.received().len(), 50);
    assert_eq!(emulator.stats().requests, 1);
}
