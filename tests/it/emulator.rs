//! The emulator over real HTTP on loopback: each point of "What the emulator must reproduce"
//! (shared/BATCH_API.md) with the answer a client sees and what ends up recorded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use batchsync::emulate::{
    Emulator, EmulatorConfig, EmulatorThread, Faults, Received, Scripted, Stats,
};
use serde_json::{json, Value};

pub(crate) const API_KEY: &str = "test-api-key";
pub(crate) const PROJECT_KEY: &str = "test-project-key";

pub(crate) fn config() -> EmulatorConfig {
    EmulatorConfig {
        api_key: API_KEY.to_owned(),
        project_key: PROJECT_KEY.to_owned(),
        limits: false,
        faults: Faults::default(),
        record_path: None,
        seed: 1,
    }
}

fn with_faults(faults: Faults) -> EmulatorConfig {
    EmulatorConfig { faults, ..config() }
}

pub(crate) async fn start(config: EmulatorConfig) -> Emulator {
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
    let ops = (0..count).map(|i| op(&format!("user_{i}"), vec![event("order_completed")]));
    Value::Array(ops.collect())
}

fn status(status: u16, retry_after: Option<u64>) -> Scripted {
    Scripted::Status {
        status,
        retry_after,
    }
}

/// What a client saw: the status, the `Retry-After` header, the body (`Null` if not JSON) and
/// its text as sent.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    retry_after: Option<String>,
    body: Value,
    pub(crate) text: String,
}

impl Answer {
    /// The body, which must be JSON.
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    fn message(&self) -> &str {
        self.body["error_message"].as_str().unwrap_or_default()
    }
}

pub(crate) async fn answer(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.unwrap();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    Answer {
        status,
        retry_after,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

/// A reqwest client for one emulator.
pub(crate) struct Client {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
}

impl Client {
    pub(crate) fn new(emulator: &Emulator) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: emulator.endpoint(),
        }
    }

    /// A POST to `path` with the given keys (`None`: header left out).
    fn keyed(
        &self,
        path: &str,
        key: Option<&str>,
        project: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let mut request = self.http.post(format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(project) = project {
            request = request.header("X-Batch-Project", project);
        }
        request
    }

    pub(crate) fn request(&self, path: &str) -> reqwest::RequestBuilder {
        self.keyed(path, Some(API_KEY), Some(PROJECT_KEY))
    }

    pub(crate) async fn send(&self, endpoint: &str, body: &Value) -> Answer {
        answer(
            self.request(&format!("/2.11/profiles/{endpoint}"))
                .json(body),
        )
        .await
    }

    async fn admin_get(&self, path: &str) -> String {
        let url = format!("{}/_emulator/{path}", self.base);
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn admin_post(&self, path: &str, body: &Value) -> Answer {
        answer(
            self.http
                .post(format!("{}/_emulator/{path}", self.base))
                .json(body),
        )
        .await
    }
}

fn parse_ndjson(text: &str) -> Vec<Received> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn total_answered(stats: &Stats) -> u64 {
    stats.by_status.values().sum::<u64>() + stats.dropped_before + stats.dropped_after
}

#[tokio::test]
async fn a_missing_or_wrong_key_is_a_401_that_names_the_header_but_not_the_value() {
    let emulator = start(config()).await;
    let client = Client::new(&emulator);
    let cases = [
        (None, Some(PROJECT_KEY), "REST API key"),
        (Some("guessed-key-123"), Some(PROJECT_KEY), "REST API key"),
        (Some(API_KEY), None, "project key"),
        (Some(API_KEY), Some("guessed-project-456"), "project key"),
    ];
    for (key, project, names) in cases {
        let request = client.keyed("/2.11/profiles/update", key, project);
        let answer = answer(request.json(&ops(1))).await;
        assert_eq!(answer.status, 401, "{key:?} {project:?}");
        assert_eq!(answer.body["error_code"], "AUTHENTICATION_INVALID");
        assert!(answer.message().contains(names), "{answer:?}");
        let text = answer.body.to_string();
        for secret in ["guessed", API_KEY, PROJECT_KEY] {
            assert!(!text.contains(secret), "{text}");
        }
    }
    assert_eq!(emulator.stats().by_status.get(&401), Some(&4));
    assert!(emulator.received().is_empty());
}

#[tokio::test]
async fn an_unknown_version_or_path_is_a_404_and_any_2_x_version_is_served() {
    let emulator = start(config()).await;
    let client = Client::new(&emulator);
    for path in [
        "/1.0/profiles/update",
        "/3.0/profiles/update",
        "/v2.11/profiles/update",
        "/2.11/profiles/delete",
        "/2.11/events",
    ] {
        let answer = answer(client.request(path).json(&ops(1))).await;
        assert_eq!(answer.status, 404, "{path}");
        assert_eq!(answer.body["error_code"], "ROUTE_NOT_FOUND", "{path}");
    }
    for path in ["/2.4/profiles/mass-update", "/2.11/profiles/update"] {
        assert_eq!(answer(client.request(path).json(&ops(1))).await.status, 202);
    }
}

#[tokio::test]
async fn a_body_that_is_not_a_json_array_is_a_400_and_records_nothing() {
    let emulator = start(config()).await;
    let client = Client::new(&emulator);
    let not_arrays = [
        json!({ "identifiers": { "custom_id": "u" } }),
        json!("[]"),
        json!(null),
    ];
    for body in not_arrays {
        let answer = client.send("update", &body).await;
        assert_eq!(answer.status, 400, "{body}");
        assert_eq!(answer.body["error_code"], "BAD_REQUEST");
    }
    let truncated = client
        .request("/2.11/profiles/update")
        .header("Content-Type", "application/json")
        .body("[{\"identifiers\":");
    assert_eq!(answer(truncated).await.status, 400);
    assert!(emulator.received().is_empty());
}

#[tokio::test]
async fn a_non_json_content_type_is_a_400() {
    let emulator = start(config()).await;
    let request = Client::new(&emulator)
        .request("/2.11/profiles/update")
        .header("Content-Type", "text/plain")
        .body(ops(1).to_string());
    assert_eq!(answer(request).await.status, 400);
    assert!(emulator.received().is_empty());
}

#[tokio::test]
async fn two_hundred_and_one_operations_on_update_reject_the_whole_call() {
    let emulator = start(config()).await;
    let client = Client::new(&emulator);
    let answer = client.send("update", &ops(201)).await;
    assert_eq!(answer.status, 400);
    assert!(answer.message().contains("201"), "{answer:?}");
    assert!(emulator.received().is_empty());
    assert_eq!(client.send("mass-update", &ops(201)).await.status, 202);
    assert_eq!(emulator.received().len(), 201);
}

#[tokio::test]
async fn an_operation_with_two_identifiers_rejects_the_whole_call() {
    let emulator = start(config()).await;
    let body = json!([
        op("fine", vec![event("e")]),
        { "identifiers": { "custom_id": "a", "installation": "b" }, "events": [event("e")] },
    ]);
    let answer = Client::new(&emulator).send("update", &body).await;
    assert_eq!(answer.status, 400);
    assert!(answer.message().contains("bulk_index 1"), "{answer:?}");
    assert!(emulator.received().is_empty());
}

#[tokio::test]
async fn invalid_operations_are_dropped_by_bulk_index_and_the_others_recorded() {
    let emulator = start(config()).await;
    let too_long = json!({ "name": "e", "attributes": { "note": "x".repeat(301) } });
    let two_events = vec![event("order_completed"), event("order_shipped")];
    let body = json!([
        op("good_0", vec![event("order_completed")]),
        op("bad_name", vec![event("Order Completed")]),
        op("good_2", two_events),
        op("too_long", vec![too_long]),
        op("too_many", vec![event("e"); 16]),
    ]);
    let answer = Client::new(&emulator).send("update", &body).await;
    assert_eq!(answer.status, 202);
    assert_eq!(answer.body["code"], "SUCCESS_WITH_PARTIAL_ERRORS");
    let errors = answer.body["errors"].as_array().unwrap();
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
    let reason = errors[2]["reason"].as_str().unwrap();
    assert!(reason.contains("16 events"), "{reason}");

    let received = emulator.received();
    let who: Vec<_> = received
        .iter()
        .map(|r| (r.bulk_index, r.custom_id.as_str()))
        .collect();
    assert_eq!(who, [(0, "good_0"), (2, "good_2"), (2, "good_2")]);
    let stats = emulator.stats();
    let counts = (
        stats.operations_accepted,
        stats.operations_rejected,
        stats.events_accepted,
    );
    assert_eq!(counts, (2, 3, 3));
}

#[tokio::test]
async fn an_operation_for_a_rejected_custom_id_is_dropped_as_a_partial_error() {
    let emulator = start(with_faults(Faults {
        reject_custom_ids: vec!["user_1".to_owned()],
        ..Faults::default()
    }))
    .await;
    let answer = Client::new(&emulator).send("update", &ops(3)).await;
    assert_eq!(answer.body["code"], "SUCCESS_WITH_PARTIAL_ERRORS");
    let error = &answer.body["errors"][0];
    assert_eq!(
        (error["bulk_index"].as_u64(), error["category"].as_str()),
        (Some(1), Some("PROFILE_REJECTED"))
    );
    let who: Vec<String> = emulator
        .received()
        .into_iter()
        .map(|r| r.custom_id)
        .collect();
    assert_eq!(who, ["user_0", "user_2"]);
}

#[tokio::test]
async fn a_bad_request_custom_id_rejects_the_whole_call() {
    let emulator = start(with_faults(Faults {
        bad_request_custom_ids: vec!["user_2".to_owned()],
        ..Faults::default()
    }))
    .await;
    let client = Client::new(&emulator);
    let answer = client.send("update", &ops(3)).await;
    assert_eq!(answer.status, 400);
    assert!(answer.message().contains("bulk_index 2"), "{answer:?}");
    assert!(emulator.received().is_empty());
    assert_eq!(client.send("update", &ops(2)).await.status, 202);
}

#[tokio::test]
async fn accepted_events_are_readable_in_memory_and_over_http() {
    let emulator = start(config()).await;
    let client = Client::new(&emulator);
    let sent = event("order_completed");
    let answer = client
        .send("update", &json!([op("user_1", vec![sent.clone()])]))
        .await;
    assert_eq!(
        (answer.status, answer.body),
        (202, json!({ "code": "SUCCESS" }))
    );
    client.send("mass-update", &ops(2)).await;

    let received = emulator.received();
    assert_eq!(received.len(), 3);
    let first = &received[0];
    let last = &received[2];
    assert_eq!(
        (first.request, first.endpoint.as_str(), first.bulk_index),
        (1, "update", 0)
    );
    assert_eq!((first.custom_id.as_str(), &first.event), ("user_1", &sent));
    assert!(first.received_at_ms > 1_600_000_000_000);
    assert_eq!(
        (last.request, last.endpoint.as_str(), last.bulk_index),
        (2, "mass-update", 1)
    );
    assert_eq!(parse_ndjson(&client.admin_get("received").await), received);
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
async fn send_1200_operations_on_update(limits: bool) -> (Vec<Answer>, Emulator) {
    let emulator = start(EmulatorConfig { limits, ..config() }).await;
    let client = Client::new(&emulator);
    let mut answers = Vec::new();
    for _ in 0..6 {
        answers.push(client.send("update", &ops(200)).await);
    }
    (answers, emulator)
}

#[tokio::test]
async fn a_burst_of_1200_operations_on_update_is_throttled_when_limits_are_on() {
    let (answers, emulator) = send_1200_operations_on_update(true).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [202, 202, 202, 202, 202, 429]);
    // Batch documents no Retry-After on its own 429s.
    assert_eq!(answers[5].retry_after, None);
    assert_eq!(emulator.received().len(), 1_000);
}

#[tokio::test]
async fn a_burst_of_1200_operations_on_update_passes_when_limits_are_off() {
    let (answers, emulator) = send_1200_operations_on_update(false).await;
    assert!(answers.iter().all(|a| a.status == 202), "{answers:?}");
    assert_eq!(emulator.received().len(), 1_200);
}

#[tokio::test]
async fn a_scripted_503_is_answered_then_the_next_request_succeeds() {
    let emulator = start(config()).await;
    emulator.script(vec![status(503, None), Scripted::Ok]);
    let client = Client::new(&emulator);
    let answer = client.send("update", &ops(2)).await;
    assert_eq!(answer.status, 503);
    assert!(answer.body["error_code"].is_string());
    assert!(emulator.received().is_empty());
    assert_eq!(client.send("update", &ops(2)).await.status, 202);
    assert_eq!(emulator.received().len(), 2);
}

#[tokio::test]
async fn a_scripted_429_carries_retry_after_only_when_asked() {
    let emulator = start(config()).await;
    emulator.script(vec![status(429, Some(7)), status(429, None)]);
    let client = Client::new(&emulator);
    let with = client.send("update", &ops(1)).await;
    assert_eq!((with.status, with.retry_after.as_deref()), (429, Some("7")));
    let without = client.send("update", &ops(1)).await;
    assert_eq!((without.status, without.retry_after), (429, None));
    assert!(emulator.received().is_empty());
}

#[tokio::test]
async fn drop_after_loses_the_answer_but_records_the_events() {
    let emulator = start(config()).await;
    emulator.script(vec![Scripted::DropAfter]);
    let client = Client::new(&emulator);
    let request = client.request("/2.11/profiles/update").json(&ops(3));
    let error = request.send().await.unwrap_err();
    assert!(!error.is_status(), "{error}");
    assert_eq!(emulator.received().len(), 3);
    let stats = emulator.stats();
    assert_eq!((stats.requests, stats.dropped_after), (1, 1));
    // The client can go on: the next request gets a fresh connection and an answer.
    assert_eq!(client.send("update", &ops(3)).await.status, 202);
}

#[tokio::test]
async fn drop_before_loses_the_answer_and_records_nothing() {
    let emulator = start(config()).await;
    emulator.script(vec![Scripted::DropBefore]);
    let client = Client::new(&emulator);
    let request = client.request("/2.11/profiles/update").json(&ops(3));
    let error = request.send().await.unwrap_err();
    assert!(!error.is_status(), "{error}");
    assert!(emulator.received().is_empty());
    let stats = emulator.stats();
    assert_eq!((stats.requests, stats.dropped_before), (1, 1));
}

#[tokio::test]
async fn an_error_rate_of_one_answers_500_and_503_alternately_and_records_nothing() {
    let emulator = start(with_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    }))
    .await;
    let client = Client::new(&emulator);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(client.send("update", &ops(1)).await.status);
    }
    assert_eq!(statuses, [500, 503, 500, 503]);
    assert!(emulator.received().is_empty());
    emulator.set_faults(Faults::default());
    assert_eq!(client.send("update", &ops(1)).await.status, 202);
}

#[tokio::test]
async fn latency_delays_every_answer_and_a_scripted_delay_adds_to_it() {
    let emulator = start(with_faults(Faults {
        latency_ms: 150,
        ..Faults::default()
    }))
    .await;
    emulator.script(vec![Scripted::Delay { ms: 100 }]);
    let client = Client::new(&emulator);
    for at_least in [250, 150] {
        let started = Instant::now();
        assert_eq!(client.send("update", &ops(1)).await.status, 202);
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(at_least), "{elapsed:?}");
    }
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
    let lines = parse_ndjson(&std::fs::read_to_string(&path).unwrap());
    assert_eq!(lines, emulator.received());
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[2].request, 3);
}

#[tokio::test]
async fn faults_and_script_can_be_set_over_http() {
    let emulator = start(config()).await;
    let client = Client::new(&emulator);
    let faults = json!({ "throttle_rate": 1.0, "retry_after": 2 });
    assert_eq!(client.admin_post("faults", &faults).await.status, 200);
    let throttled = client.send("update", &ops(1)).await;
    assert_eq!(
        (throttled.status, throttled.retry_after.as_deref()),
        (429, Some("2"))
    );

    let script = json!([{ "kind": "ok" }, { "kind": "status", "status": 500 }]);
    let queued = client.admin_post("script", &script).await;
    assert_eq!(queued.body, json!({ "queued": 2 }));
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(client.send("update", &ops(1)).await.status);
    }
    assert_eq!(statuses, [202, 500, 429]);

    let out_of_range = json!({ "error_rate": 2.0 });
    assert_eq!(client.admin_post("faults", &out_of_range).await.status, 400);
    let stats: Value = serde_json::from_str(&client.admin_get("stats").await).unwrap();
    assert_eq!(
        (
            stats["requests"].as_u64(),
            stats["by_status"]["429"].as_u64()
        ),
        (Some(4), Some(2))
    );
}

#[tokio::test]
async fn stats_account_for_every_request_exactly_once() {
    let emulator = start(with_faults(Faults {
        error_rate: 0.2,
        throttle_rate: 0.2,
        drop_before_rate: 0.1,
        drop_after_rate: 0.1,
        ..Faults::default()
    }))
    .await;
    let client = Client::new(&emulator);
    for _ in 0..40 {
        let _ = client
            .request("/2.11/profiles/update")
            .json(&ops(2))
            .send()
            .await;
    }
    let stats = emulator.stats();
    assert_eq!(
        (stats.requests, total_answered(&stats)),
        (40, 40),
        "{stats:?}"
    );
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
    let answer = Client::new(&emulator).send("mass-update", &body).await;
    assert_eq!(
        (answer.status, answer.body),
        (202, json!({ "code": "SUCCESS" }))
    );
    // Generous for an unoptimised build on a slow machine; a release build takes milliseconds.
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert_eq!(emulator.received().len(), 10_000);
}

/// A measurement more than a test: `cargo test --release --test it emulator:: -- --ignored`.
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
        let request = client
            .request("/2.11/profiles/mass-update")
            .header("Content-Type", "application/json")
            .body(body);
        assert_eq!(answer(request).await.status, 202);
    }
    let per_second = 100_000.0 / started.elapsed().as_secs_f64();
    eprintln!("mass-update: {per_second:.0} events/s");
    assert!(per_second >= 50_000.0, "{per_second:.0} events/s");
}

// The blocking wrapper and the HTTP edge cases, over a raw socket.

/// Sends raw bytes and reads until the server closes (or 5 s pass).
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

fn raw_update(body: &str, connection: &str) -> String {
    format!(
        "POST /2.11/profiles/update HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\
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
    let two = raw_update(&body, "keep-alive") + &raw_update(&body, "close");
    let answer = raw_exchange(emulator.addr(), two.as_bytes());
    assert_eq!(
        answer.matches("HTTP/1.1 202 Accepted").count(),
        2,
        "{answer}"
    );
    assert!(answer.contains("Connection: close"), "{answer}");
    assert_eq!(
        (emulator.received().len(), emulator.stats().requests),
        (4, 2)
    );

    emulator.script(vec![status(500, None)]);
    let answer = raw_exchange(emulator.addr(), raw_update(&body, "close").as_bytes());
    assert!(answer.starts_with("HTTP/1.1 500"), "{answer}");
    emulator.set_faults(Faults {
        drop_before_rate: 1.0,
        ..Faults::default()
    });
    let answer = raw_exchange(emulator.addr(), raw_update(&body, "close").as_bytes());
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
    let request = raw_update(&ops(50).to_string(), "close");
    {
        let mut stream = TcpStream::connect(emulator.addr()).unwrap();
        stream
            .write_all(&request.as_bytes()[..request.len() / 2])
            .unwrap();
    }
    let answer = raw_exchange(emulator.addr(), request.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert_eq!(
        (emulator.received().len(), emulator.stats().requests),
        (50, 1)
    );
}
