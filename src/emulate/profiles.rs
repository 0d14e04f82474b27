//! The profiles the emulator knows and the attributes each one holds, as Batch keeps them:
//! attribute updates are upserts.
//!
//! Invariants:
//! - A profile exists once any operation for its custom id has been accepted (Batch creates a
//!   profile that does not exist yet), whether it carried attributes, events or neither. An
//!   operation that was dropped (invalid, rejected) or never processed creates nothing.
//! - Applying an update sets each attribute it names, in the order sent; a JSON `null` deletes
//!   the attribute; attributes it does not name are left alone. So applying the same update
//!   twice leaves what applying it once does.
//! - An attribute is kept under its name: `date(renews_on)` and `url(receipt)` set the
//!   attributes `renews_on` and `receipt` (the wrapper types the value), and a `null` under
//!   the name, wrapped or not, deletes it.
//! - Pure data, no lock: `record::Recorder` holds it under the same lock as the event log, so
//!   a request's events and attribute updates are applied together, in one order.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// One profile's attributes, sorted by key.
pub type Attributes = BTreeMap<String, Value>;

/// One accepted operation's effect on a profile.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ProfileUpdate {
    pub custom_id: String,
    /// The operation's `attributes` object, if it carried one (already validated).
    pub attributes: Option<Map<String, Value>>,
}

/// Every known profile by custom id.
#[derive(Debug, Default)]
pub(crate) struct Profiles {
    by_custom_id: BTreeMap<String, Attributes>,
}

impl Profiles {
    /// Creates the profile if needed and upserts its attributes.
    pub(crate) fn apply(&mut self, update: ProfileUpdate) {
        let attributes = self.by_custom_id.entry(update.custom_id).or_default();
        for (key, value) in update.attributes.into_iter().flatten() {
            let key = bare_name(&key).to_string();
            if value.is_null() {
                attributes.remove(&key);
            } else {
                attributes.insert(key, value);
            }
        }
    }

    /// The attributes of one profile, `None` if no operation for it was ever accepted.
    pub(crate) fn get(&self, custom_id: &str) -> Option<&Attributes> {
        self.by_custom_id.get(custom_id)
    }

    /// Every profile that holds at least one attribute, by custom id. Profiles that only got
    /// events, or whose attributes were all deleted, are left out: this is the attribute
    /// state, where an empty profile and an absent one hold the same.
    pub(crate) fn with_attributes(&self) -> BTreeMap<String, Attributes> {
        self.by_custom_id
            .iter()
            .filter(|(_, attributes)| !attributes.is_empty())
            .map(|(id, attributes)| (id.clone(), attributes.clone()))
            .collect()
    }
}

/// The attribute's name without its type wrapper: `date(x)` and `url(x)` name `x`.
fn bare_name(key: &str) -> &str {
    ["date(", "url("]
        .iter()
        .find_map(|w| key.strip_prefix(w).and_then(|k| k.strip_suffix(')')))
        .unwrap_or(key)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn update(custom_id: &str, attributes: Value) -> ProfileUpdate {
        let Value::Object(map) = attributes else {
            panic!("attributes must be an object")
        };
        ProfileUpdate {
            custom_id: custom_id.to_owned(),
            attributes: Some(map),
        }
    }

    fn json_of(attributes: Option<&Attributes>) -> Value {
        json!(attributes)
    }

    #[test]
    fn an_update_sets_replaces_and_deletes_by_null_and_leaves_the_rest_alone() {
        let mut profiles = Profiles::default();
        profiles.apply(update(
            "u1",
            json!({ "plan": "pro", "date(renews_on)": "2026-01-02T00:00:00Z", "seats": 3 }),
        ));
        profiles.apply(update(
            "u1",
            json!({ "plan": "team", "seats": null, "old": null }),
        ));
        assert_eq!(
            json_of(profiles.get("u1")),
            json!({ "renews_on": "2026-01-02T00:00:00Z", "plan": "team" })
        );
        // A null under the bare name deletes the attribute a wrapped key set.
        profiles.apply(update("u1", json!({ "renews_on": null })));
        assert_eq!(json_of(profiles.get("u1")), json!({ "plan": "team" }));
    }

    #[test]
    fn applying_an_update_twice_leaves_what_applying_it_once_does() {
        let once = {
            let mut p = Profiles::default();
            p.apply(update("u1", json!({ "a": 1, "b": null })));
            json_of(p.get("u1"))
        };
        let mut twice = Profiles::default();
        twice.apply(update("u1", json!({ "a": 1, "b": null })));
        twice.apply(update("u1", json!({ "a": 1, "b": null })));
        assert_eq!(json_of(twice.get("u1")), once);
    }

    #[test]
    fn an_operation_without_attributes_creates_an_empty_profile() {
        let mut profiles = Profiles::default();
        profiles.apply(ProfileUpdate {
            custom_id: "events_only".to_owned(),
            attributes: None,
        });
        assert_eq!(profiles.get("events_only"), Some(&Attributes::new()));
        assert_eq!(profiles.get("never_seen"), None);
    }

    #[test]
    fn the_list_holds_only_profiles_with_attributes_sorted_by_custom_id() {
        let mut profiles = Profiles::default();
        profiles.apply(update("b", json!({ "x": true })));
        profiles.apply(update("a", json!({ "y": ["s"] })));
        profiles.apply(update("emptied", json!({ "z": 1 })));
        profiles.apply(update("emptied", json!({ "z": null })));
        profiles.apply(ProfileUpdate {
            custom_id: "events_only".to_owned(),
            attributes: None,
        });
        let list = profiles.with_attributes();
        assert_eq!(list.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(
            json!(list),
            json!({ "a": { "y": ["s"] }, "b": { "x": true } })
        );
    }
}
