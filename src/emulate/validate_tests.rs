//! Tables for the emulator's validator: each rule of shared/BATCH_API.md, both sides of its
//! limit.

use rstest::rstest;
use serde_json::{json, Value};

use super::*;

fn op_with_event(event: Value) -> Value {
    json!({ "identifiers": { "custom_id": "u1" }, "events": [event] })
}

fn op_with_attributes(attributes: Value) -> Value {
    op_with_event(json!({ "name": "order_completed", "attributes": attributes }))
}

/// The rule an operation breaks: `None` when it passes, else (category, attribute).
fn broken(op: &Value) -> Option<(&'static str, Option<String>)> {
    check_operation(op).err().map(|e| (e.category, e.attribute))
}

const NAME_30: &str = "abcdefghijklmnopqrstuvwxyzabcd";
const NAME_31: &str = "abcdefghijklmnopqrstuvwxyzabcde";

fn s(n: usize) -> String {
    "x".repeat(n)
}

#[rstest]
#[case::array(json!([]), true)]
#[case::object(json!({}), false)]
#[case::string(json!("[]"), false)]
fn the_body_must_be_a_json_array(#[case] body: Value, #[case] ok: bool) {
    let bytes = serde_json::to_vec(&body).unwrap();
    assert_eq!(parse_body(&bytes, Endpoint::Update).is_ok(), ok);
}

#[test]
fn a_body_that_is_not_json_is_a_bad_request() {
    let err = parse_body(b"[{", Endpoint::Update).unwrap_err();
    assert!(err.0.contains("not valid JSON"), "{err:?}");
}

#[rstest]
#[case::update_at_limit(Endpoint::Update, 200, true)]
#[case::update_over(Endpoint::Update, 201, false)]
#[case::mass_update_at_limit(Endpoint::MassUpdate, 10_000, true)]
#[case::mass_update_over(Endpoint::MassUpdate, 10_001, false)]
fn each_endpoint_has_its_operation_limit(
    #[case] endpoint: Endpoint,
    #[case] count: usize,
    #[case] ok: bool,
) {
    let ops: Vec<Value> = (0..count)
        .map(|i| json!({ "identifiers": { "custom_id": format!("u{i}") } }))
        .collect();
    let bytes = serde_json::to_vec(&ops).unwrap();
    assert_eq!(parse_body(&bytes, endpoint).is_ok(), ok);
}

#[rstest]
#[case::custom_id(json!({ "custom_id": "a" }), true)]
#[case::installation(json!({ "installation": "i" }), true)]
#[case::both(json!({ "custom_id": "a", "installation": "i" }), false)]
#[case::neither(json!({}), false)]
#[case::other_only(json!({ "email": "a@b.c" }), false)]
#[case::not_an_object(json!("a"), false)]
fn an_operation_needs_exactly_one_identifier(#[case] identifiers: Value, #[case] ok: bool) {
    let body = json!([{ "identifiers": { "custom_id": "fine" } }, { "identifiers": identifiers }]);
    let result = parse_body(&serde_json::to_vec(&body).unwrap(), Endpoint::Update);
    assert_eq!(result.is_ok(), ok, "{result:?}");
    if let Err(BadRequest(message)) = result {
        assert!(message.contains("bulk_index 1"), "{message}");
    }
}

#[rstest]
#[case::plain(json!("user_1"), None)]
#[case::at_512(json!(s(512)), None)]
#[case::over_512(json!(s(513)), Some("INVALID_IDENTIFIER"))]
#[case::empty(json!(""), Some("INVALID_IDENTIFIER"))]
#[case::number(json!(42), Some("INVALID_IDENTIFIER"))]
fn a_custom_id_is_a_non_empty_string_of_at_most_512_characters(
    #[case] custom_id: Value,
    #[case] category: Option<&str>,
) {
    let op = json!({ "identifiers": { "custom_id": custom_id }, "events": [] });
    assert_eq!(broken(&op).map(|b| b.0), category);
}

#[rstest]
#[case::simple(json!({ "name": "order_completed" }), None)]
#[case::digits_and_underscores(json!({ "name": "a_1" }), None)]
#[case::thirty_chars(json!({ "name": s(30) }), None)]
#[case::thirty_one_chars(json!({ "name": s(31) }), Some("INVALID_EVENT"))]
#[case::upper_case(json!({ "name": "Order" }), Some("INVALID_EVENT"))]
#[case::dash(json!({ "name": "order-completed" }), Some("INVALID_EVENT"))]
#[case::empty(json!({ "name": "" }), Some("INVALID_EVENT"))]
#[case::missing(json!({ "time": "2026-01-01T00:00:00Z" }), Some("INVALID_EVENT"))]
#[case::not_a_string(json!({ "name": 3 }), Some("INVALID_EVENT"))]
#[case::utc_time(json!({ "name": "e", "time": "2026-11-27T10:30:00Z" }), None)]
#[case::offset_time(json!({ "name": "e", "time": "2026-11-27T10:30:00.123+02:00" }), None)]
#[case::ancient_time_is_not_our_business(json!({ "name": "e", "time": "1990-01-01T00:00:00Z" }), None)]
#[case::naive_time(json!({ "name": "e", "time": "2026-11-27 10:30:00" }), Some("INVALID_EVENT"))]
#[case::epoch_time(json!({ "name": "e", "time": 1_700_000_000 }), Some("INVALID_EVENT"))]
#[case::unknown_field(json!({ "name": "e", "label": "x" }), Some("INVALID_EVENT"))]
#[case::attributes_not_an_object(json!({ "name": "e", "attributes": [] }), Some("INVALID_EVENT"))]
#[case::not_an_object(json!("e"), Some("INVALID_EVENT"))]
fn event_names_and_times_follow_batch_rules(#[case] event: Value, #[case] category: Option<&str>) {
    assert_eq!(broken(&op_with_event(event)).map(|b| b.0), category);
}

#[rstest]
#[case::fifteen(15, None)]
#[case::sixteen(16, Some("TOO_MANY_EVENTS"))]
fn an_operation_carries_at_most_15_events(#[case] count: usize, #[case] category: Option<&str>) {
    let events: Vec<Value> = (0..count).map(|_| json!({ "name": "e" })).collect();
    let op = json!({ "identifiers": { "custom_id": "u" }, "events": events });
    assert_eq!(broken(&op).map(|b| b.0), category);
}

#[rstest]
#[case::twenty(20, 0, true)]
#[case::twenty_one(21, 0, false)]
#[case::twenty_plus_label_and_tags(20, 2, true)]
fn an_event_carries_at_most_20_attributes_besides_label_and_tags(
    #[case] own: usize,
    #[case] reserved: usize,
    #[case] ok: bool,
) {
    let mut attributes = serde_json::Map::new();
    for i in 0..own {
        attributes.insert(format!("a{i}"), json!(1));
    }
    if reserved > 0 {
        attributes.insert("$label".into(), json!("l"));
        attributes.insert("$tags".into(), json!(["t"]));
    }
    let result = broken(&op_with_attributes(Value::Object(attributes)));
    assert_eq!(result.is_none(), ok, "{result:?}");
    if !ok {
        assert_eq!(result.unwrap().0, "TOO_MANY_ATTRIBUTES");
    }
}

#[rstest]
#[case::string(json!({ "currency": "EUR" }), None)]
#[case::string_300(json!({ "note": s(300) }), None)]
#[case::string_300_multibyte(json!({ "note": "é".repeat(300) }), None)]
#[case::string_301(json!({ "note": s(301) }), Some("note"))]
#[case::empty_string(json!({ "note": "" }), Some("note"))]
#[case::integer(json!({ "n": -3 }), None)]
#[case::float(json!({ "amount": 42.5 }), None)]
#[case::boolean(json!({ "gift": false }), None)]
#[case::null(json!({ "gift": null }), Some("gift"))]
#[case::name_31(json!({ NAME_31: 1 }), Some(NAME_31))]
#[case::name_upper(json!({ "Amount": 1 }), Some("Amount"))]
#[case::label(json!({ "$label": "spring_sale" }), None)]
#[case::label_200(json!({ "$label": s(200) }), None)]
#[case::label_201(json!({ "$label": s(201) }), Some("$label"))]
#[case::label_not_string(json!({ "$label": 1 }), Some("$label"))]
#[case::tags(json!({ "$tags": ["a", "b"] }), None)]
#[case::tags_10(json!({ "$tags": vec!["t"; 10] }), None)]
#[case::tags_11(json!({ "$tags": vec!["t"; 11] }), Some("$tags"))]
#[case::tag_64(json!({ "$tags": [s(64)] }), None)]
#[case::tag_65(json!({ "$tags": [s(65)] }), Some("$tags"))]
#[case::tag_not_string(json!({ "$tags": [1] }), Some("$tags"))]
#[case::other_dollar(json!({ "$channel": "web" }), Some("$channel"))]
#[case::date(json!({ "date(delivered_on)": "2026-11-29T00:00:00Z" }), None)]
#[case::date_not_rfc3339(json!({ "date(delivered_on)": "2026-11-29" }), Some("date(delivered_on)"))]
#[case::date_not_string(json!({ "date(d)": 1_700_000_000 }), Some("date(d)"))]
#[case::date_name_30(json!({ (format!("date({NAME_30})")): "2026-11-29T00:00:00Z" }), None)]
#[case::date_name_31(json!({ (format!("date({NAME_31})")): "2026-11-29T00:00:00Z" }), Some("date(abcdefghijklmnopqrstuvwxyzabcde)"))]
#[case::url(json!({ "url(receipt)": "https://shop.example/r/991" }), None)]
#[case::url_other_scheme(json!({ "url(app)": "myapp://open/1" }), None)]
#[case::url_no_scheme(json!({ "url(receipt)": "shop.example/r/991" }), Some("url(receipt)"))]
#[case::url_2048(json!({ "url(u)": format!("https://{}", s(2040)) }), None)]
#[case::url_2049(json!({ "url(u)": format!("https://{}", s(2041)) }), Some("url(u)"))]
#[case::url_bad_name(json!({ "url(Receipt)": "https://a.b" }), Some("url(Receipt)"))]
#[case::string_array(json!({ "sizes": ["s", "m"] }), None)]
#[case::string_array_25(json!({ "sizes": vec!["s"; 25] }), None)]
#[case::string_array_26(json!({ "sizes": vec!["s"; 26] }), Some("sizes"))]
#[case::string_array_empty_item(json!({ "sizes": ["s", ""] }), Some("sizes"))]
#[case::empty_array(json!({ "sizes": [] }), None)]
#[case::number_array(json!({ "sizes": [1, 2] }), Some("sizes"))]
#[case::mixed_array(json!({ "sizes": ["s", { "a": 1 }] }), Some("sizes"))]
#[case::object(json!({ "item": { "sku": "a1", "qty": 2 } }), None)]
#[case::object_array(json!({ "items": [{ "sku": "a1" }, { "sku": "b2" }] }), None)]
#[case::object_bad_key(json!({ "item": { "SKU": "a1" } }), Some("item"))]
#[case::object_empty_string(json!({ "item": { "sku": "" } }), Some("item"))]
#[case::object_no_label(json!({ "item": { "$label": "x" } }), Some("item"))]
fn attribute_names_and_values_follow_batch_rules(
    #[case] attributes: Value,
    #[case] attribute: Option<&str>,
) {
    let result = broken(&op_with_attributes(attributes));
    match attribute {
        None => assert_eq!(result, None),
        Some(key) => assert_eq!(result, Some(("INVALID_ATTRIBUTE", Some(key.to_owned())))),
    }
}

#[test]
fn the_reason_names_the_event_and_the_attribute() {
    let op = json!({ "identifiers": { "custom_id": "u" }, "events": [
        { "name": "ok" },
        { "name": "ok", "attributes": { "note": "" } },
    ] });
    let err = check_operation(&op).unwrap_err();
    assert!(
        err.reason.starts_with("event 1: attribute \"note\""),
        "{}",
        err.reason
    );
}

#[rstest]
#[case::profile_attributes(json!({ "identifiers": { "custom_id": "u" }, "attributes": { "plan": "pro" } }), None)]
#[case::no_events(json!({ "identifiers": { "custom_id": "u" } }), None)]
#[case::events_not_array(json!({ "identifiers": { "custom_id": "u" }, "events": {} }), Some("INVALID_EVENT"))]
#[case::unknown_field(json!({ "identifiers": { "custom_id": "u" }, "event": [] }), Some("INVALID_OPERATION"))]
#[case::profile_attributes_not_object(json!({ "identifiers": { "custom_id": "u" }, "attributes": 1 }), Some("INVALID_OPERATION"))]
fn the_operation_shape_is_checked(#[case] op: Value, #[case] category: Option<&str>) {
    assert_eq!(broken(&op).map(|b| b.0), category);
}

#[rstest]
#[case("a", true)]
#[case("order_completed_2", true)]
#[case("", false)]
#[case("é", false)]
#[case("a b", false)]
fn names_are_lower_case_ascii_digits_and_underscores(#[case] name: &str, #[case] ok: bool) {
    assert_eq!(is_valid_name(name), ok);
}

fn op_with_profile(attributes: Value) -> Value {
    json!({ "identifiers": { "custom_id": "u1" }, "attributes": attributes })
}

#[rstest]
// Custom attributes: names, wrappers and values.
#[case::string(json!({ "plan": "pro" }), None)]
#[case::string_300(json!({ "note": s(300) }), None)]
#[case::string_301(json!({ "note": s(301) }), Some("note"))]
#[case::empty_string(json!({ "plan": "" }), Some("plan"))]
#[case::integer(json!({ "seats": 3 }), None)]
#[case::float(json!({ "ltv": 1200.5 }), None)]
#[case::boolean(json!({ "vip": true }), None)]
#[case::null_deletes(json!({ "old": null }), None)]
#[case::string_array(json!({ "tags": ["a", "b"] }), None)]
#[case::string_array_25(json!({ "tags": vec!["t"; 25] }), None)]
#[case::string_array_26(json!({ "tags": vec!["t"; 26] }), Some("tags"))]
#[case::string_array_empty_item(json!({ "tags": ["a", ""] }), Some("tags"))]
#[case::string_array_item_301(json!({ "tags": [s(301)] }), Some("tags"))]
#[case::number_array(json!({ "tags": [1, 2] }), Some("tags"))]
#[case::object(json!({ "address": { "city": "Paris" } }), Some("address"))]
#[case::object_array(json!({ "items": [{ "sku": "a1" }] }), Some("items"))]
#[case::name_30(json!({ NAME_30: 1 }), None)]
#[case::name_31(json!({ NAME_31: 1 }), Some(NAME_31))]
#[case::name_upper(json!({ "Plan": "pro" }), Some("Plan"))]
#[case::date(json!({ "date(renews_on)": "2026-01-02T00:00:00Z" }), None)]
#[case::date_null(json!({ "date(renews_on)": null }), None)]
#[case::date_not_rfc3339(json!({ "date(renews_on)": "2026-01-02" }), Some("date(renews_on)"))]
#[case::date_bad_name(json!({ "date(Renews)": "2026-01-02T00:00:00Z" }), Some("date(Renews)"))]
#[case::date_bad_name_null(json!({ "date(Renews)": null }), Some("date(Renews)"))]
#[case::url(json!({ "url(avatar)": "https://cdn.example/a.png" }), None)]
#[case::url_null(json!({ "url(avatar)": null }), None)]
#[case::url_no_scheme(json!({ "url(avatar)": "cdn.example/a.png" }), Some("url(avatar)"))]
#[case::url_2049(json!({ "url(u)": format!("https://{}", s(2041)) }), Some("url(u)"))]
#[case::event_reserved_label(json!({ "$label": "x" }), Some("$label"))]
#[case::unknown_native(json!({ "$city": "Paris" }), Some("$city"))]
// Native attributes: each accepts a good value and null, and refuses a bad one.
#[case::email(json!({ "$email_address": "a@b.co" }), None)]
#[case::email_null(json!({ "$email_address": null }), None)]
#[case::email_256(json!({ "$email_address": format!("{}@b.co", s(251)) }), None)]
#[case::email_257(json!({ "$email_address": format!("{}@b.co", s(252)) }), Some("$email_address"))]
#[case::email_no_at(json!({ "$email_address": "a.b.co" }), Some("$email_address"))]
#[case::email_two_ats(json!({ "$email_address": "a@b@c.co" }), Some("$email_address"))]
#[case::email_no_local(json!({ "$email_address": "@b.co" }), Some("$email_address"))]
#[case::email_no_dot(json!({ "$email_address": "a@localhost" }), Some("$email_address"))]
#[case::email_dot_first(json!({ "$email_address": "a@.co" }), Some("$email_address"))]
#[case::email_dot_last(json!({ "$email_address": "a@b." }), Some("$email_address"))]
#[case::email_space(json!({ "$email_address": "a b@c.co" }), Some("$email_address"))]
#[case::email_not_string(json!({ "$email_address": 1 }), Some("$email_address"))]
#[case::email_marketing(json!({ "$email_marketing": "subscribed" }), None)]
#[case::email_marketing_off(json!({ "$email_marketing": "unsubscribed" }), None)]
#[case::email_marketing_null(json!({ "$email_marketing": null }), None)]
#[case::email_marketing_bool(json!({ "$email_marketing": true }), Some("$email_marketing"))]
#[case::email_marketing_other(json!({ "$email_marketing": "Subscribed" }), Some("$email_marketing"))]
#[case::sms_marketing(json!({ "$sms_marketing": "unsubscribed" }), None)]
#[case::sms_marketing_null(json!({ "$sms_marketing": null }), None)]
#[case::sms_marketing_other(json!({ "$sms_marketing": "yes" }), Some("$sms_marketing"))]
#[case::phone(json!({ "$phone_number": "+33612345678" }), None)]
#[case::phone_2_digits(json!({ "$phone_number": "+12" }), None)]
#[case::phone_15_digits(json!({ "$phone_number": "+123456789012345" }), None)]
#[case::phone_null(json!({ "$phone_number": null }), None)]
#[case::phone_1_digit(json!({ "$phone_number": "+1" }), Some("$phone_number"))]
#[case::phone_16_digits(json!({ "$phone_number": "+1234567890123456" }), Some("$phone_number"))]
#[case::phone_no_plus(json!({ "$phone_number": "33612345678" }), Some("$phone_number"))]
#[case::phone_leading_zero(json!({ "$phone_number": "+0612345678" }), Some("$phone_number"))]
#[case::phone_spaces(json!({ "$phone_number": "+33 6 12 34 56 78" }), Some("$phone_number"))]
#[case::language(json!({ "$language": "fr" }), None)]
#[case::language_null(json!({ "$language": null }), None)]
#[case::language_upper(json!({ "$language": "FR" }), Some("$language"))]
#[case::language_three(json!({ "$language": "fra" }), Some("$language"))]
#[case::language_tag(json!({ "$language": "fr-FR" }), Some("$language"))]
#[case::region(json!({ "$region": "FR" }), None)]
#[case::region_null(json!({ "$region": null }), None)]
#[case::region_lower(json!({ "$region": "fr" }), Some("$region"))]
#[case::region_three(json!({ "$region": "FRA" }), Some("$region"))]
#[case::timezone(json!({ "$timezone": "Europe/Paris" }), None)]
#[case::timezone_utc(json!({ "$timezone": "UTC" }), None)]
#[case::timezone_null(json!({ "$timezone": null }), None)]
#[case::timezone_unknown(json!({ "$timezone": "Europe/Atlantis" }), Some("$timezone"))]
#[case::timezone_wrong_case(json!({ "$timezone": "europe/paris" }), Some("$timezone"))]
#[case::timezone_offset(json!({ "$timezone": "+02:00" }), Some("$timezone"))]
fn profile_attributes_follow_batch_rules(
    #[case] attributes: Value,
    #[case] attribute: Option<&str>,
) {
    let result = broken(&op_with_profile(attributes));
    match attribute {
        None => assert_eq!(result, None),
        Some(key) => assert_eq!(result, Some(("INVALID_ATTRIBUTE", Some(key.to_owned())))),
    }
}

#[test]
fn an_object_on_a_profile_is_refused_with_a_reason_saying_where_objects_belong() {
    let err =
        check_operation(&op_with_profile(json!({ "address": { "city": "Paris" } }))).unwrap_err();
    assert!(
        err.reason.starts_with("profile attribute \"address\"")
            && err
                .reason
                .contains("objects are allowed in event attributes only"),
        "{}",
        err.reason
    );
}

#[test]
fn the_first_bad_profile_attribute_is_the_one_named() {
    // Keys are checked in the order serde_json holds them (sorted), one error per operation.
    let op = op_with_profile(json!({ "a_ok": 1, "b_bad": "", "c_bad": {} }));
    assert_eq!(
        broken(&op),
        Some(("INVALID_ATTRIBUTE", Some("b_bad".to_owned())))
    );
}

#[rstest]
#[case::attributes_only(json!({ "identifiers": { "custom_id": "u" }, "attributes": { "plan": "pro" } }))]
#[case::events_only(json!({ "identifiers": { "custom_id": "u" }, "events": [{ "name": "e" }] }))]
#[case::both(json!({ "identifiers": { "custom_id": "u" }, "attributes": { "plan": null }, "events": [{ "name": "e" }] }))]
#[case::neither(json!({ "identifiers": { "custom_id": "u" } }))]
#[case::empty_attributes(json!({ "identifiers": { "custom_id": "u" }, "attributes": {} }))]
fn attributes_and_events_are_each_optional(#[case] op: Value) {
    assert_eq!(broken(&op), None);
}

#[test]
fn a_bad_profile_attribute_drops_the_operation_even_when_its_events_are_fine() {
    let op = json!({
        "identifiers": { "custom_id": "u" },
        "attributes": { "$region": "france" },
        "events": [{ "name": "e" }],
    });
    assert_eq!(
        broken(&op),
        Some(("INVALID_ATTRIBUTE", Some("$region".to_owned())))
    );
}

#[test]
fn every_listed_native_attribute_is_known_and_may_be_deleted_by_null() {
    for name in NATIVE_PROFILE_ATTRIBUTES {
        assert_eq!(
            broken(&op_with_profile(json!({ name: null }))),
            None,
            "{name}"
        );
    }
}
