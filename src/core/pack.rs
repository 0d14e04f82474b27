//! Packing events into Batch operations and requests.
//!
//! Invariants:
//! - Events arrive sorted by custom id; one operation holds one custom id's events, at most
//!   `events_per_op` (Batch counts one update per custom id per request, so grouping saves rate).
//! - A request holds at most `ops_per_request` operations and stays under `max_bytes` (a lone
//!   operation larger than that still goes, alone).
//! - The manifest records, per operation (by its `bulk_index`), the rows whose events it carries
//!   and the baseline entries they replaced, so an operation that Batch drops can be turned
//!   back into rejects and its rows tried again.

use super::encode::{hex, RowHash};

pub const EVENTS_PER_OP: usize = 15;
pub const UPDATE_OPS: usize = 200;
pub const MASS_UPDATE_OPS: usize = 10_000;
pub const MAX_REQUEST_BYTES: usize = 5 * 1024 * 1024 - 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Endpoint {
    #[serde(rename = "update")]
    Update,
    #[serde(rename = "mass-update")]
    MassUpdate,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Update => "profiles/update",
            Endpoint::MassUpdate => "profiles/mass-update",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Update => "update",
            Endpoint::MassUpdate => "mass-update",
        }
    }

    pub fn parse(s: &str) -> Option<Endpoint> {
        match s {
            "update" => Some(Endpoint::Update),
            "mass-update" => Some(Endpoint::MassUpdate),
            _ => None,
        }
    }

    /// `/profiles/mass-update` for deltas of at least `mass_from` events, else `/profiles/update`.
    pub fn for_delta(events: u64, mass_from: u64) -> Endpoint {
        if events >= mass_from {
            Endpoint::MassUpdate
        } else {
            Endpoint::Update
        }
    }

    /// A run's endpoint: [`Endpoint::for_delta`] over its operations, except that profile
    /// updates go to `/profiles/update` unless the run is a backfill (its first with these
    /// profile attributes): mass-update is processed asynchronously, and could apply two runs'
    /// updates to one profile out of order (DESIGN.md "Profile attributes").
    pub fn for_run(events: u64, profile_updates: u64, mass_from: u64, backfill: bool) -> Endpoint {
        if profile_updates > 0 && !backfill {
            Endpoint::Update
        } else {
            Endpoint::for_delta(events.max(profile_updates), mass_from)
        }
    }

    pub fn max_ops(self) -> usize {
        match self {
            Endpoint::Update => UPDATE_OPS,
            Endpoint::MassUpdate => MASS_UPDATE_OPS,
        }
    }
}

/// The row behind an event, as the manifest keeps it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RowRef {
    /// The row key for people (`{"order_id":17}`).
    pub key: String,
    /// The row key bytes, hex.
    pub k: String,
    /// The hash this run put in the baseline, hex.
    pub h: String,
    /// The baseline entry it replaced: hash hex and presence, or none for a new key.
    pub prev: Option<(String, bool)>,
    /// What the row's operation carries for it: its event (with its profile attributes, if
    /// any), when absent; otherwise a profile update alone.
    #[serde(default, rename = "o", skip_serializing_if = "Option::is_none")]
    pub only: Option<ProfileOnly>,
    /// The profile hash this run put in the baseline, hex (profile attributes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p: Option<String>,
    /// The profile hash of the entry it replaced, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pp: Option<String>,
}

/// A row whose operation carries no event, only profile attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProfileOnly {
    /// Its profile attributes changed (or were never sent): they are set.
    Update,
    /// It left the segment under `on_remove = "unset"`: they are sent as null.
    Unset,
}

impl RowRef {
    pub fn new(
        display: String,
        key: &[u8],
        hash: RowHash,
        prev: Option<(RowHash, bool)>,
    ) -> RowRef {
        RowRef {
            key: display,
            k: hex(key),
            h: hash.to_hex(),
            prev: prev.map(|(h, p)| (h.to_hex(), p)),
            only: None,
            p: None,
            pp: None,
        }
    }

    /// The profile hashes: the one this run puts in the baseline and the one it replaces.
    pub fn with_profile(mut self, put: Option<RowHash>, prev: Option<RowHash>) -> RowRef {
        self.p = put.map(RowHash::to_hex);
        self.pp = prev.map(RowHash::to_hex);
        self
    }

    /// Whether the row's operation carries its event.
    pub fn has_event(&self) -> bool {
        self.only.is_none()
    }
}

/// Events among a manifest's rows (the others are profile updates alone).
pub fn events_in(rows: &[RowRef]) -> usize {
    rows.iter().filter(|r| r.has_event()).count()
}

/// One row's part of an operation for the packer: its custom id, its event's JSON text, its
/// profile attributes' JSON object text (either or both), and its row.
#[derive(Debug, Clone)]
pub struct PackEvent {
    pub custom_id: String,
    pub event_json: Option<String>,
    pub attributes_json: Option<String>,
    pub row: RowRef,
}

/// A request ready for the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Packed {
    pub body: String,
    /// `[[RowRef, …] per operation]` as JSON.
    pub manifest: Vec<Vec<RowRef>>,
    pub operations: usize,
    pub events: usize,
}

pub struct Packer {
    max_ops: usize,
    max_bytes: usize,
    events_per_op: usize,
    // The request under construction.
    body: String,
    manifest: Vec<Vec<RowRef>>,
    events: usize,
    // The operation under construction.
    op_id: Option<String>,
    op_events: Vec<String>,
    op_attributes: Option<String>,
    op_rows: Vec<RowRef>,
}

impl Packer {
    pub fn new(endpoint: Endpoint) -> Packer {
        Packer::with_limits(endpoint.max_ops(), MAX_REQUEST_BYTES, EVENTS_PER_OP)
    }

    pub fn with_limits(max_ops: usize, max_bytes: usize, events_per_op: usize) -> Packer {
        Packer {
            max_ops,
            max_bytes,
            events_per_op,
            body: String::new(),
            manifest: Vec::new(),
            events: 0,
            op_id: None,
            op_events: Vec::new(),
            op_attributes: None,
            op_rows: Vec::new(),
        }
    }

    /// Adds an event; returns the requests it completed (zero, one, or rarely two).
    pub fn push(&mut self, e: PackEvent) -> Vec<Packed> {
        let mut done = Vec::new();
        let same_op = self.op_id.as_deref() == Some(e.custom_id.as_str())
            && (e.event_json.is_none() || self.op_events.len() < self.events_per_op)
            && (e.attributes_json.is_none() || self.op_attributes.is_none());
        if !same_op {
            done.extend(self.close_op());
            self.op_id = Some(e.custom_id);
        }
        self.op_events.extend(e.event_json);
        if e.attributes_json.is_some() {
            self.op_attributes = e.attributes_json;
        }
        self.op_rows.push(e.row);
        done
    }

    /// Flushes what is left.
    pub fn finish(mut self) -> Vec<Packed> {
        let mut done: Vec<Packed> = self.close_op().into_iter().collect();
        done.extend(self.take_request());
        done
    }

    fn close_op(&mut self) -> Option<Packed> {
        let id = self.op_id.take()?;
        let mut op =
            String::with_capacity(64 + self.op_events.iter().map(String::len).sum::<usize>());
        op.push_str("{\"identifiers\":{\"custom_id\":");
        op.push_str(&serde_json::Value::String(id).to_string());
        op.push('}');
        if let Some(attributes) = self.op_attributes.take() {
            op.push_str(",\"attributes\":");
            op.push_str(&attributes);
        }
        if !self.op_events.is_empty() {
            op.push_str(",\"events\":[");
            for (i, ev) in self.op_events.drain(..).enumerate() {
                if i > 0 {
                    op.push(',');
                }
                op.push_str(ev.as_str());
            }
            op.push(']');
        }
        op.push('}');
        let rows = std::mem::take(&mut self.op_rows);

        let mut finished = None;
        let full = self.manifest.len() >= self.max_ops
            || (!self.manifest.is_empty() && self.body.len() + op.len() + 2 > self.max_bytes);
        if full {
            finished = self.take_request();
        }
        self.body
            .push(if self.manifest.is_empty() { '[' } else { ',' });
        self.body.push_str(&op);
        self.events += events_in(&rows);
        self.manifest.push(rows);
        finished
    }

    fn take_request(&mut self) -> Option<Packed> {
        if self.manifest.is_empty() {
            return None;
        }
        let mut body = std::mem::take(&mut self.body);
        body.push(']');
        let manifest = std::mem::take(&mut self.manifest);
        let events = std::mem::take(&mut self.events);
        Some(Packed {
            body,
            operations: manifest.len(),
            manifest,
            events,
        })
    }
}

/// Splits a request body (a JSON array of operations) and its manifest in two halves, to isolate
/// the operations a 400 is about. `None` when it holds a single operation.
pub fn split_request(
    body: &str,
    manifest: &[Vec<RowRef>],
) -> Option<[(String, Vec<Vec<RowRef>>); 2]> {
    let ops: Vec<serde_json::Value> = serde_json::from_str(body).ok()?;
    if ops.len() < 2 || ops.len() != manifest.len() {
        return None;
    }
    let mid = ops.len() / 2;
    let half = |r: std::ops::Range<usize>| {
        (
            serde_json::Value::Array(ops[r.clone()].to_vec()).to_string(),
            manifest[r].to_vec(),
        )
    };
    Some([half(0..mid), half(mid..ops.len())])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ev(id: &str, n: usize) -> PackEvent {
        PackEvent {
            custom_id: id.into(),
            event_json: Some(format!("{{\"name\":\"e\",\"attributes\":{{\"n\":{n}}}}}")),
            attributes_json: None,
            row: RowRef::new(
                format!("{{\"id\":{n}}}"),
                &[n as u8],
                RowHash::default(),
                None,
            ),
        }
    }

    fn pack(events: Vec<PackEvent>, max_ops: usize, max_bytes: usize) -> Vec<Packed> {
        let mut p = Packer::with_limits(max_ops, max_bytes, EVENTS_PER_OP);
        let mut out = Vec::new();
        for e in events {
            out.extend(p.push(e));
        }
        out.extend(p.finish());
        out
    }

    #[test]
    fn one_profiles_events_share_an_operation_of_at_most_fifteen() {
        let events: Vec<_> = (0..17).map(|n| ev("a", n)).chain([ev("b", 99)]).collect();
        let reqs = pack(events, 200, MAX_REQUEST_BYTES);
        assert_eq!(reqs.len(), 1);
        let body: Vec<serde_json::Value> = serde_json::from_str(&reqs[0].body).unwrap();
        assert_eq!(body.len(), 3);
        assert_eq!(body[0]["events"].as_array().unwrap().len(), 15);
        assert_eq!(body[1]["events"].as_array().unwrap().len(), 2);
        assert_eq!(body[2]["identifiers"]["custom_id"], "b");
        assert_eq!(
            reqs[0].manifest.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![15, 2, 1]
        );
    }

    #[test]
    fn splitting_keeps_bodies_and_manifests_aligned() {
        let reqs = pack(
            (0..5).map(|n| ev(&format!("u{n}"), n)).collect(),
            200,
            MAX_REQUEST_BYTES,
        );
        let [a, b] = split_request(&reqs[0].body, &reqs[0].manifest).unwrap();
        let ops_a: Vec<serde_json::Value> = serde_json::from_str(&a.0).unwrap();
        let ops_b: Vec<serde_json::Value> = serde_json::from_str(&b.0).unwrap();
        assert_eq!(
            (ops_a.len(), a.1.len(), ops_b.len(), b.1.len()),
            (2, 2, 3, 3)
        );
        assert_eq!(ops_b[0]["identifiers"]["custom_id"], "u2");
        assert_eq!(b.1[0][0].key, "{\"id\":2}");
        let single = pack(vec![ev("x", 1)], 200, MAX_REQUEST_BYTES);
        assert!(split_request(&single[0].body, &single[0].manifest).is_none());
    }

    proptest! {
        #[test]
        fn packing_keeps_every_event_once_within_limits(
            ids in proptest::collection::vec(0u8..20, 0..400),
            max_ops in 1usize..30,
            max_bytes in 200usize..5000,
        ) {
            let mut ids = ids;
            ids.sort();
            let events: Vec<_> = ids.iter().enumerate().map(|(n, id)| ev(&format!("user{id}"), n)).collect();
            let reqs = pack(events, max_ops, max_bytes);
            let mut seen = Vec::new();
            for r in &reqs {
                let body: Vec<serde_json::Value> = serde_json::from_str(&r.body).unwrap();
                prop_assert!(body.len() <= max_ops);
                prop_assert_eq!(body.len(), r.manifest.len());
                prop_assert!(body.len() == 1 || r.body.len() <= max_bytes);
                for (op, rows) in body.iter().zip(&r.manifest) {
                    let evs = op["events"].as_array().unwrap();
                    prop_assert!(evs.len() <= EVENTS_PER_OP && evs.len() == rows.len());
                    for e in evs {
                        seen.push(e["attributes"]["n"].as_u64().unwrap() as usize);
                    }
                }
            }
            prop_assert_eq!(seen, (0..ids.len()).collect::<Vec<_>>());
        }
    }
}
