//! The emulator keeps each profile's attributes, over real HTTP on loopback: operations upsert
//! them (a `null` deletes one), a dropped operation changes nothing, both endpoints apply them,
//! and `GET /_emulator/profiles[/{custom_id}]` reads them back.

use crate::emulator::{answer, config, Answer, Client};
use batchsync::emulate::{Emulator, Scripted};
use serde_json::{json, Value};

async fn start() -> Emulator {
    crate::emulator::start(config()).await
}

/// An operation for `custom_id` carrying `attributes` and no events.
fn attributes_op(custom_id: &str, attributes: Value) -> Value {
    json!({ "identifiers": { "custom_id": custom_id }, "attributes": attributes })
}

/// The profile endpoints of the emulator's client (`crate::emulator::Client`).
impl Client {
    /// `GET /_emulator/{path}`, `path` sent as given (already encoded).
    async fn admin(&self, path: &str) -> Answer {
        answer(self.http.get(format!("{}/_emulator/{path}", self.base))).await
    }

    /// `GET /_emulator/profiles/{custom_id}`, the id percent-encoded byte by byte.
    async fn profile(&self, custom_id: &str) -> Answer {
        self.admin(&format!("profiles/{}", percent_encode(custom_id)))
            .await
    }
}

/// Every byte but RFC 3986's unreserved ones as `%XX`.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn attributes_are_set_then_upserted_and_a_null_deletes_one() {
    let emulator = start().await;
    let client = Client::new(&emulator);
    let first = json!([attributes_op(
        "u1",
        json!({
            "plan": "pro",
            "$email_address": "a@b.co",
            "date(renews_on)": "2026-01-02T00:00:00Z",
            "seats": 3,
            "old": null,
        })
    )]);
    let answer = client.send("update", &first).await;
    assert_eq!(
        (answer.status, answer.json()),
        (202, json!({ "code": "SUCCESS" }))
    );

    let second = json!([attributes_op(
        "u1",
        json!({ "plan": "team", "seats": null, "tags": ["a", "b"] })
    )]);
    assert_eq!(client.send("update", &second).await.status, 202);

    let answer = client.profile("u1").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    // Sorted by name: "$" sorts before letters; `date(renews_on)` set `renews_on`.
    assert_eq!(
        answer.text,
        r#"{"attributes":{"$email_address":"a@b.co","plan":"team","renews_on":"2026-01-02T00:00:00Z","tags":["a","b"]},"custom_id":"u1"}"#
    );
    assert_eq!(
        emulator.profile("u1").map(|a| json!(a)),
        Some(answer.json()["attributes"].clone())
    );
    assert_eq!(emulator.stats().profile_updates, 2);
}

#[tokio::test]
async fn an_invalid_operation_is_dropped_by_bulk_index_and_the_rest_of_the_request_applies() {
    let emulator = start().await;
    let client = Client::new(&emulator);
    let setup = json!([attributes_op("u2", json!({ "plan": "pro" }))]);
    assert_eq!(client.send("update", &setup).await.status, 202);

    let body = json!([
        attributes_op("u1", json!({ "plan": "pro" })),
        // A good attribute beside a bad one: the whole operation is dropped, plan stays "pro".
        attributes_op("u2", json!({ "plan": "free", "$phone_number": "0612345678" })),
        {
            "identifiers": { "custom_id": "u3" },
            "attributes": { "vip": true },
            "events": [{ "name": "upgraded" }],
        },
        attributes_op("u4", json!({ "address": { "city": "Paris" } })),
    ]);
    let answer = client.send("update", &body).await;
    assert_eq!(answer.status, 202);
    let answer = answer.json();
    assert_eq!(answer["code"], "SUCCESS_WITH_PARTIAL_ERRORS", "{answer}");
    let errors = answer["errors"].as_array().unwrap();
    let dropped: Vec<(u64, &str, &str)> = errors
        .iter()
        .map(|e| {
            (
                e["bulk_index"].as_u64().unwrap(),
                e["category"].as_str().unwrap(),
                e["attribute"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        dropped,
        [
            (1, "INVALID_ATTRIBUTE", "$phone_number"),
            (3, "INVALID_ATTRIBUTE", "address"),
        ]
    );
    assert!(
        errors[1]["reason"]
            .as_str()
            .unwrap()
            .contains("objects are allowed in event attributes only"),
        "{answer}"
    );

    let profiles = client.admin("profiles").await;
    assert_eq!(profiles.status, 200);
    assert_eq!(
        profiles.json(),
        json!({
            "u1": { "plan": "pro" },
            "u2": { "plan": "pro" },
            "u3": { "vip": true },
        })
    );
    assert_eq!(client.profile("u4").await.status, 404);
    // The operation carrying both attributes and events recorded its event too.
    let received = emulator.received();
    assert_eq!(received.len(), 1);
    assert_eq!(
        (received[0].custom_id.as_str(), received[0].bulk_index),
        ("u3", 2)
    );
    let stats = emulator.stats();
    assert_eq!((stats.profile_updates, stats.operations_rejected), (3, 2));
}

#[tokio::test]
async fn mass_update_applies_attributes_in_bulk_order() {
    let emulator = start().await;
    let client = Client::new(&emulator);
    let body = json!([
        attributes_op("u1", json!({ "plan": "pro", "$language": "fr" })),
        attributes_op("u2", json!({ "$region": "FR" })),
        // A later operation for the same profile in the same request wins.
        attributes_op("u1", json!({ "plan": "team", "$language": null })),
    ]);
    let answer = client.send("mass-update", &body).await;
    assert_eq!(
        (answer.status, answer.json()),
        (202, json!({ "code": "SUCCESS" }))
    );
    assert_eq!(
        client.admin("profiles").await.json(),
        json!({ "u1": { "plan": "team" }, "u2": { "$region": "FR" } })
    );
}

#[tokio::test]
async fn an_unknown_profile_is_a_404_and_one_that_only_got_events_has_no_attributes() {
    let emulator = start().await;
    let client = Client::new(&emulator);
    let answer = client.profile("nobody").await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.json()["error_code"], "PROFILE_NOT_FOUND");
    assert!(answer.json()["error_message"]
        .as_str()
        .unwrap()
        .contains("\"nobody\""));

    let events_only = json!([{
        "identifiers": { "custom_id": "shopper" },
        "events": [{ "name": "order_completed" }],
    }]);
    assert_eq!(client.send("update", &events_only).await.status, 202);
    let answer = client.profile("shopper").await;
    assert_eq!(
        (answer.status, answer.json()),
        (200, json!({ "custom_id": "shopper", "attributes": {} }))
    );
    // The list holds profiles with attributes only.
    assert_eq!(client.admin("profiles").await.json(), json!({}));
    assert_eq!(emulator.stats().profile_updates, 0);
}

#[tokio::test]
async fn a_custom_id_is_percent_decoded_from_the_path() {
    let emulator = start().await;
    let client = Client::new(&emulator);
    let id = "user 1/é?#%";
    let body = json!([attributes_op(id, json!({ "plan": "pro" }))]);
    assert_eq!(client.send("update", &body).await.status, 202);
    let answer = client.profile(id).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(
        answer.json(),
        json!({ "custom_id": id, "attributes": { "plan": "pro" } })
    );
    assert_eq!(client.admin("profiles/a%zz").await.status, 400);
}

#[tokio::test]
async fn a_request_whose_answer_is_dropped_after_processing_is_applied() {
    let emulator = start().await;
    let client = Client::new(&emulator);
    emulator.script(vec![Scripted::DropAfter]);
    let body = json!([attributes_op("u1", json!({ "plan": "pro" }))]);
    let request = client.request("/2.11/profiles/update").json(&body);
    let error = request.send().await.unwrap_err();
    assert!(!error.is_status(), "{error}");
    assert_eq!(
        client.profile("u1").await.json()["attributes"],
        json!({ "plan": "pro" })
    );
}

#[tokio::test]
async fn an_injected_error_or_throttle_applies_nothing() {
    let emulator = start().await;
    let client = Client::new(&emulator);
    let body = json!([attributes_op("u1", json!({ "plan": "pro" }))]);
    for status in [503, 429] {
        emulator.script(vec![Scripted::Status {
            status,
            retry_after: None,
        }]);
        assert_eq!(client.send("update", &body).await.status, status);
    }
    assert_eq!(client.profile("u1").await.status, 404);
    assert_eq!(client.admin("profiles").await.json(), json!({}));
    assert_eq!(emulator.stats().profile_updates, 0);
}

#[tokio::test]
async fn a_post_on_the_profiles_endpoints_is_refused() {
    let emulator = start().await;
    let client = Client::new(&emulator);
    let url = format!("{}/_emulator/profiles", client.base);
    let answer = answer(client.http.post(url).json(&json!({}))).await;
    assert_eq!(answer.status, 405, "{}", answer.text);
}
