//! The baseline on disk: sorted layers of packed pages, not one SQLite row per key.
//!
//! A run reads the whole baseline in key order and changes a few percent of it, spread over
//! the whole key space. Kept as one B-tree row per key, each run dirtied most of the tree's
//! pages (a 2% delta of 1M rows rewrote ~90 MB) and paid a statement per changed key and a
//! cursor step per row read. Here the baseline is a *base* layer (every entry, packed into
//! pages of ~64 KB blobs) overlaid by *delta* layers (a run's changes, or the entries an answer
//! from Batch put back): a run writes only its delta, sequentially, and reads the baseline at
//! the speed of a blob copy.
//!
//! Invariants:
//! - A layer's entries are in strictly increasing key order (checked as they are written), cut
//!   into pages numbered from 0; a page records its last key (for point lookups).
//! - The layers in id order are at most one `base` layer, first, then `delta` layers. The
//!   baseline is the base overlaid by each delta in turn: a later layer's entry for a key wins,
//!   and an `erased` entry removes the key altogether.
//! - A run's commit writes, in its own transaction, either one delta layer, or a new base
//!   holding the whole new baseline and deletes every older layer (a compaction: when there is
//!   no base yet, the deltas hold more than a quarter of the base's entries, or there are more
//!   than [`MAX_LAYERS`] layers). Either way the change is part of the run's one commit.
//! - An entry: its state byte (0 tombstone, 1 present, 2 erased, 3 present with a profile
//!   hash), the key's length (LEB128), the key, and for a tombstone or a present entry the
//!   16-byte row hash, then for state 3 the 16-byte profile hash. Stores written before
//!   profile attributes hold no 3s: their entries read with no profile hash, which the next
//!   run with profile attributes sees as never set (a backfill).

use super::{Ctx, Result, Store};
use crate::core::diff::{BaseRef, BaseRow};
use crate::core::encode::RowHash;
use rusqlite::{params, OptionalExtension};

/// A page is written once its entries pass this many bytes.
const PAGE_BYTES: usize = 64 * 1024;
/// More layers than this and the next run's commit compacts them into a new base.
pub(crate) const MAX_LAYERS: usize = 16;
/// Deltas holding more than 1/COMPACT_SHARE of the base's entries are compacted.
const COMPACT_SHARE: u64 = 4;

/// The state byte of a present entry that carries a profile hash.
const PRESENT_WITH_PROFILE: u8 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Tombstone = 0,
    Present = 1,
    /// Only in delta layers: the key is no longer in the baseline at all.
    Erased = 2,
}

impl State {
    fn of(b: u8) -> Option<State> {
        match b {
            0 => Some(State::Tombstone),
            1 => Some(State::Present),
            2 => Some(State::Erased),
            PRESENT_WITH_PROFILE => Some(State::Present),
            _ => None,
        }
    }
}

/// One layer, as `base_layer` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layer {
    pub(crate) id: i64,
    pub(crate) base: bool,
    pub(crate) entries: u64,
}

pub(crate) fn layers(store: &Store) -> Result<Vec<Layer>> {
    let mut st = store
        .conn
        .prepare_cached("SELECT id, kind, entries FROM base_layer ORDER BY id")
        .ctx(&store.path)?;
    let rows = st
        .query_map([], |r| {
            Ok(Layer {
                id: r.get(0)?,
                base: r.get::<_, String>(1)? == "base",
                entries: r.get::<_, i64>(2)? as u64,
            })
        })
        .ctx(&store.path)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .ctx(&store.path)?;
    Ok(rows)
}

/// Whether the next commit should write a whole new base rather than a delta layer.
pub(crate) fn should_compact(layers: &[Layer]) -> bool {
    match layers.first() {
        Some(base) if base.base && base.entries > 0 => {
            let deltas: u64 = layers[1..].iter().map(|l| l.entries).sum();
            deltas * COMPACT_SHARE > base.entries || layers.len() > MAX_LAYERS
        }
        _ => true,
    }
}

fn put_len(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn read_len(b: &[u8], at: &mut usize) -> Option<usize> {
    let mut n = 0usize;
    for shift in (0..35).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        n |= ((byte & 0x7f) as usize) << shift;
        if byte < 0x80 {
            return Some(n);
        }
    }
    None
}

fn encode(out: &mut Vec<u8>, key: &[u8], state: State, hash: &RowHash, profile: Option<&RowHash>) {
    let profile = profile.filter(|_| state == State::Present);
    out.push(match profile {
        Some(_) => PRESENT_WITH_PROFILE,
        None => state as u8,
    });
    put_len(out, key.len());
    out.extend_from_slice(key);
    if state != State::Erased {
        out.extend_from_slice(&hash.0);
    }
    if let Some(p) = profile {
        out.extend_from_slice(&p.0);
    }
}

/// An entry decoded in place: the key's range in the page, its state and hash.
#[derive(Debug, Clone, Copy)]
struct Head {
    key: (usize, usize),
    state: State,
    hash: RowHash,
    profile: Option<RowHash>,
}

/// Decodes the entry at `*at` and moves past it; `None` on corrupt bytes.
fn decode(b: &[u8], at: &mut usize) -> Option<Head> {
    let byte = *b.get(*at)?;
    let state = State::of(byte)?;
    *at += 1;
    let len = read_len(b, at)?;
    let key = (*at, *at + len);
    *at = at.checked_add(len)?;
    let mut hash = RowHash::default();
    if state != State::Erased {
        hash.0 = b.get(*at..*at + 16)?.try_into().ok()?;
        *at += 16;
    }
    let mut profile = None;
    if byte == PRESENT_WITH_PROFILE {
        profile = Some(RowHash(b.get(*at..*at + 16)?.try_into().ok()?));
        *at += 16;
    }
    (*at <= b.len()).then_some(Head {
        key,
        state,
        hash,
        profile,
    })
}

/// Writes one layer, page by page, inside the caller's transaction.
pub(crate) struct LayerWriter {
    layer: i64,
    base: bool,
    seq: i64,
    page: Vec<u8>,
    page_entries: i64,
    entries: u64,
    last: Vec<u8>,
}

impl LayerWriter {
    /// Starts a layer: a `base` (a whole baseline: older layers go when it is finished) or a
    /// `delta`. `run_id` is the run whose commit or answer writes it.
    pub(crate) fn begin(store: &Store, base: bool, run_id: i64) -> Result<LayerWriter> {
        store
            .conn
            .execute(
                "INSERT INTO base_layer (kind, run_id, entries) VALUES (?1, ?2, 0)",
                params![if base { "base" } else { "delta" }, run_id],
            )
            .ctx(&store.path)?;
        Ok(LayerWriter {
            layer: store.conn.last_insert_rowid(),
            base,
            seq: 0,
            page: Vec::with_capacity(PAGE_BYTES + 1024),
            page_entries: 0,
            entries: 0,
            last: Vec::new(),
        })
    }

    pub(crate) fn is_base(&self) -> bool {
        self.base
    }

    /// Appends an entry; keys must come in strictly increasing order.
    pub(crate) fn push(
        &mut self,
        store: &Store,
        key: &[u8],
        state: State,
        hash: &RowHash,
        profile: Option<&RowHash>,
    ) -> Result<()> {
        if self.entries > 0 && key <= self.last.as_slice() {
            return Err(store.corrupt(format!(
                "baseline layer {}: keys written out of order (a bug: please report it)",
                self.layer
            )));
        }
        encode(&mut self.page, key, state, hash, profile);
        self.last.clear();
        self.last.extend_from_slice(key);
        self.page_entries += 1;
        self.entries += 1;
        if self.page.len() >= PAGE_BYTES {
            self.flush(store)?;
        }
        Ok(())
    }

    fn flush(&mut self, store: &Store) -> Result<()> {
        if self.page_entries == 0 {
            return Ok(());
        }
        store
            .conn
            .prepare_cached(
                "INSERT INTO base_page (layer, seq, last, entries, data) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    self.layer,
                    self.seq,
                    &self.last,
                    self.page_entries,
                    &self.page
                ])
            })
            .ctx(&store.path)?;
        self.seq += 1;
        self.page.clear();
        self.page_entries = 0;
        Ok(())
    }

    /// Writes the last page and the layer's count. A finished base replaces every older layer;
    /// an empty delta layer is not kept.
    pub(crate) fn finish(mut self, store: &Store) -> Result<u64> {
        self.flush(store)?;
        let c = &store.conn;
        if !self.base && self.entries == 0 {
            c.execute("DELETE FROM base_layer WHERE id = ?1", [self.layer])
                .ctx(&store.path)?;
            return Ok(0);
        }
        c.execute(
            "UPDATE base_layer SET entries = ?2 WHERE id = ?1",
            params![self.layer, self.entries as i64],
        )
        .ctx(&store.path)?;
        if self.base {
            c.execute("DELETE FROM base_page WHERE layer < ?1", [self.layer])
                .ctx(&store.path)?;
            c.execute("DELETE FROM base_layer WHERE id < ?1", [self.layer])
                .ctx(&store.path)?;
        }
        Ok(self.entries)
    }
}

/// One layer being read: the current page and the entry under the cursor.
struct Cursor {
    layer: i64,
    next_seq: i64,
    page: Vec<u8>,
    at: usize,
    head: Option<Head>,
}

impl Cursor {
    fn key(&self) -> Option<&[u8]> {
        self.head.map(|h| &self.page[h.key.0..h.key.1])
    }

    /// Moves to the next entry, fetching the next page when this one is done.
    fn advance(&mut self, store: &Store) -> Result<()> {
        while self.at >= self.page.len() {
            let page: Option<Vec<u8>> = store
                .conn
                .prepare_cached("SELECT data FROM base_page WHERE layer = ?1 AND seq = ?2")
                .and_then(|mut s| {
                    s.query_row(params![self.layer, self.next_seq], |r| r.get(0))
                        .optional()
                })
                .ctx(&store.path)?;
            match page {
                Some(p) => {
                    self.page = p;
                    self.at = 0;
                    self.next_seq += 1;
                }
                None => {
                    self.head = None;
                    return Ok(());
                }
            }
        }
        let from = self.at;
        self.head = Some(decode(&self.page, &mut self.at).ok_or_else(|| {
            store.corrupt(format!(
                "baseline layer {} page {}: unreadable entry at byte {from}",
                self.layer,
                self.next_seq - 1
            ))
        })?);
        Ok(())
    }
}

/// The baseline in key order, its layers merged (memory: one page per layer). Read entry by
/// entry without a copy ([`BaselineIter::peek`], [`BaselineIter::advance`]), or as rows.
pub struct BaselineIter<'a> {
    store: &'a Store,
    cursors: Vec<Cursor>,
    /// The later layers' cursor with the smallest head, unless `overlay_stale`.
    overlay_min: Option<usize>,
    overlay_stale: bool,
    /// The entry under the cursor: the layer cursor that holds it, and its head; every other
    /// layer is already past its key.
    current: Option<(usize, Head)>,
    started: bool,
    /// Every layer is read to its end.
    ended: bool,
    failed: bool,
}

impl<'a> BaselineIter<'a> {
    pub(crate) fn new(store: &'a Store) -> BaselineIter<'a> {
        BaselineIter {
            store,
            cursors: Vec::new(),
            overlay_min: None,
            overlay_stale: true,
            current: None,
            started: false,
            ended: false,
            failed: false,
        }
    }

    fn start(&mut self) -> Result<()> {
        for l in layers(self.store)? {
            let mut c = Cursor {
                layer: l.id,
                next_seq: 0,
                page: Vec::new(),
                at: 0,
                head: None,
            };
            c.advance(self.store)?;
            self.cursors.push(c);
        }
        Ok(())
    }

    /// Puts the next entry that won its key and was not erased under the cursor, if any.
    fn settle(&mut self) -> Result<()> {
        if !self.started {
            self.started = true;
            self.start()?;
        }
        while self.current.is_none() {
            if self.overlay_stale {
                self.overlay_min = min_head(&self.cursors, 1);
                self.overlay_stale = false;
            }
            // Most entries are the first layer's alone (the deltas are a few percent of the
            // base): when its head comes strictly before every later layer's, take it without
            // looking at the others again.
            if let Some(k0) = self.cursors.first().and_then(Cursor::key) {
                let first = match self.overlay_min {
                    None => true,
                    Some(m) => k0 < self.cursors[m].key().expect("a head"),
                };
                if first {
                    let head = self.cursors[0].head.expect("a head");
                    if head.state == State::Erased {
                        self.cursors[0].advance(self.store)?;
                    } else {
                        self.current = Some((0, head));
                    }
                    continue;
                }
            }
            // The smallest key; on a tie the later layer, which wins. The others holding the
            // key move past it now; the winner when the caller moves on.
            self.overlay_stale = true;
            let Some(b) = min_head(&self.cursors, 0) else {
                self.ended = true;
                return Ok(());
            };
            for i in 0..self.cursors.len() {
                if i != b && self.cursors[i].key() == self.cursors[b].key() {
                    self.cursors[i].advance(self.store)?;
                }
            }
            let head = self.cursors[b].head.expect("a head");
            if head.state == State::Erased {
                self.cursors[b].advance(self.store)?;
            } else {
                self.current = Some((b, head));
            }
        }
        Ok(())
    }

    /// The entry under the cursor, `None` past the last (or after an error).
    pub fn peek(&mut self) -> Result<Option<BaseRef<'_>>> {
        if self.failed || self.ended {
            return Ok(None);
        }
        if let Err(e) = self.settle() {
            self.failed = true;
            return Err(e);
        }
        Ok(self.current.map(|(c, head)| BaseRef {
            key: &self.cursors[c].page[head.key.0..head.key.1],
            hash: head.hash,
            present: head.state == State::Present,
            profile: head.profile,
        }))
    }

    /// Moves past the entry under the cursor.
    pub fn advance(&mut self) -> Result<()> {
        if let Some((c, _)) = self.current.take() {
            if let Err(e) = self.cursors[c].advance(self.store) {
                self.failed = true;
                return Err(e);
            }
        }
        Ok(())
    }
}

/// The cursor from `from` on with the smallest head (on a tie the later), if any has one.
fn min_head(cursors: &[Cursor], from: usize) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, c) in cursors.iter().enumerate().skip(from) {
        let Some(k) = c.key() else { continue };
        if best.is_none_or(|b| k <= cursors[b].key().expect("a head")) {
            best = Some(i);
        }
    }
    best
}

impl Iterator for BaselineIter<'_> {
    type Item = Result<BaseRow>;

    fn next(&mut self) -> Option<Self::Item> {
        let row = match self.peek() {
            Ok(entry) => entry?.to_row(),
            Err(e) => return Some(Err(e)),
        };
        match self.advance() {
            Ok(()) => Some(Ok(row)),
            Err(e) => Some(Err(e)),
        }
    }
}

/// The baseline's entry for one key: (hash, present), or `None` when the key is not in it.
pub(crate) fn lookup(store: &Store, key: &[u8]) -> Result<Option<Held>> {
    for l in layers(store)?.iter().rev() {
        let page: Option<(i64, Vec<u8>)> = store
            .conn
            .prepare_cached(
                "SELECT seq, data FROM base_page WHERE layer = ?1 AND last >= ?2 ORDER BY last LIMIT 1",
            )
            .and_then(|mut s| {
                s.query_row(params![l.id, key], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .ctx(&store.path)?;
        let Some((seq, page)) = page else { continue };
        let mut at = 0;
        while at < page.len() {
            let h = decode(&page, &mut at).ok_or_else(|| {
                store.corrupt(format!("baseline layer {} page {seq}: unreadable", l.id))
            })?;
            match page[h.key.0..h.key.1].cmp(key) {
                std::cmp::Ordering::Less => continue,
                std::cmp::Ordering::Greater => break,
                std::cmp::Ordering::Equal => {
                    return Ok(match h.state {
                        State::Erased => None,
                        s => Some(Held {
                            hash: h.hash,
                            present: s == State::Present,
                            profile: h.profile,
                        }),
                    })
                }
            }
        }
    }
    Ok(None)
}

/// What the baseline holds for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub hash: RowHash,
    pub present: bool,
    pub profile: Option<RowHash>,
}

/// One entry to write: key, state, row hash, profile hash.
pub(crate) type Entry = (Vec<u8>, State, RowHash, Option<RowHash>);

/// Writes entries given in any order as one delta layer (sorted, the last of a key winning).
pub(crate) fn write_delta(store: &Store, run_id: i64, mut entries: Vec<Entry>) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    // Stable: among equal keys the last written stays last, and wins below.
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut w = LayerWriter::begin(store, false, run_id)?;
    for (i, (key, state, hash, profile)) in entries.iter().enumerate() {
        if entries.get(i + 1).is_some_and(|n| &n.0 == key) {
            continue;
        }
        w.push(store, key, *state, hash, profile.as_ref())?;
    }
    w.finish(store)?;
    Ok(())
}

/// Migration 2's data step: the one-row-per-key table of schema 1 (renamed `baseline_v1`),
/// packed into a base layer, then dropped. Runs inside the migration's transaction.
pub(crate) fn pack_legacy(store: &Store) -> Result<()> {
    let p = &store.path;
    let legacy: i64 = store
        .conn
        .query_row("SELECT EXISTS(SELECT 1 FROM baseline_v1)", [], |r| r.get(0))
        .ctx(p)?;
    if legacy == 0 {
        // A new store, or one whose runs never committed: no layer until the first commit.
        store.conn.execute_batch("DROP TABLE baseline_v1").ctx(p)?;
        return Ok(());
    }
    let mut w = LayerWriter::begin(store, true, 0)?;
    {
        let mut st = store
            .conn
            .prepare("SELECT key, hash, present FROM baseline_v1 ORDER BY key")
            .ctx(p)?;
        let mut rows = st.query([]).ctx(p)?;
        while let Some(r) = rows.next().ctx(p)? {
            let key: Vec<u8> = r.get(0).ctx(p)?;
            let hash: Vec<u8> = r.get(1).ctx(p)?;
            let mut h = RowHash::default();
            let n = hash.len().min(16);
            h.0[..n].copy_from_slice(&hash[..n]);
            let state = if r.get::<_, i64>(2).ctx(p)? != 0 {
                State::Present
            } else {
                State::Tombstone
            };
            w.push(store, &key, state, &h, None)?;
        }
    }
    w.finish(store)?;
    store.conn.execute_batch("DROP TABLE baseline_v1").ctx(p)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();
        // Many small transactions: no fsync each (durability is not what these test).
        s.conn.execute_batch("PRAGMA synchronous = OFF").unwrap();
        (dir, s)
    }

    fn h(n: u8) -> RowHash {
        RowHash([n; 16])
    }

    fn all(s: &Store) -> Vec<BaseRow> {
        BaselineIter::new(s).map(|r| r.unwrap()).collect()
    }

    #[test]
    fn entries_round_trip_through_their_encoding() {
        let mut b = Vec::new();
        encode(&mut b, &[7; 300], State::Present, &h(1), None);
        encode(&mut b, b"", State::Tombstone, &h(2), Some(&h(9)));
        encode(&mut b, b"k", State::Erased, &h(3), None);
        encode(&mut b, b"p", State::Present, &h(4), Some(&h(5)));
        let mut at = 0;
        let e: Vec<Head> = (0..4).map(|_| decode(&b, &mut at).unwrap()).collect();
        assert_eq!(at, b.len());
        assert_eq!(&b[e[0].key.0..e[0].key.1], &[7; 300][..]);
        assert_eq!(
            (e[0].state, e[0].hash, e[0].profile),
            (State::Present, h(1), None)
        );
        // A tombstone keeps no profile hash.
        assert_eq!(
            (e[1].key.1 - e[1].key.0, e[1].state, e[1].profile),
            (0, State::Tombstone, None)
        );
        assert_eq!(e[2].state, State::Erased);
        assert_eq!(
            (e[3].state, e[3].hash, e[3].profile),
            (State::Present, h(4), Some(h(5)))
        );
        // Cut short anywhere, it is an error, not a wrong entry.
        for cut in 0..b.len() {
            let mut at = 0;
            let ok = (0..4).all(|_| decode(&b[..cut], &mut at).is_some());
            assert!(!ok, "cut at {cut}");
        }
    }

    #[test]
    fn a_layer_refuses_keys_out_of_order() {
        let (_d, s) = store();
        s.conn.execute_batch("BEGIN").unwrap();
        let mut w = LayerWriter::begin(&s, true, 1).unwrap();
        w.push(&s, b"b", State::Present, &h(1), None).unwrap();
        let err = w.push(&s, b"a", State::Present, &h(1), None).unwrap_err();
        assert!(err.to_string().contains("out of order"), "{err}");
    }

    #[test]
    fn a_new_base_replaces_every_older_layer() {
        let (_d, s) = store();
        let mut w = LayerWriter::begin(&s, true, 1).unwrap();
        w.push(&s, b"a", State::Present, &h(1), None).unwrap();
        w.finish(&s).unwrap();
        write_delta(&s, 2, vec![(b"b".to_vec(), State::Present, h(2), None)]).unwrap();
        assert_eq!(layers(&s).unwrap().len(), 2);
        let mut w = LayerWriter::begin(&s, true, 3).unwrap();
        w.push(&s, b"c", State::Tombstone, &h(3), None).unwrap();
        w.finish(&s).unwrap();
        let l = layers(&s).unwrap();
        assert_eq!(l.len(), 1);
        assert!(l[0].base && l[0].entries == 1);
        let pages: i64 = s
            .conn
            .query_row("SELECT COUNT(*) FROM base_page", [], |r| r.get(0))
            .unwrap();
        assert_eq!(pages, 1);
        assert_eq!(
            all(&s),
            vec![BaseRow {
                key: b"c".to_vec(),
                hash: h(3),
                present: false,
                profile: None
            }]
        );
    }

    #[test]
    fn compaction_is_due_without_a_base_or_with_large_deltas_or_many_layers() {
        let base = |entries| Layer {
            id: 1,
            base: true,
            entries,
        };
        let delta = |id, entries| Layer {
            id,
            base: false,
            entries,
        };
        assert!(should_compact(&[]));
        assert!(should_compact(&[delta(1, 5)]));
        assert!(should_compact(&[base(0), delta(2, 1)]));
        assert!(!should_compact(&[base(100)]));
        assert!(!should_compact(&[base(100), delta(2, 25)]));
        assert!(should_compact(&[base(100), delta(2, 20), delta(3, 6)]));
        let many: Vec<Layer> = std::iter::once(base(1_000_000))
            .chain((2..=MAX_LAYERS as i64 + 1).map(|i| delta(i, 1)))
            .collect();
        assert!(should_compact(&many));
        assert!(!should_compact(&many[..MAX_LAYERS]));
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// With a profile hash, or not.
        Put(u16, u8, Option<u8>),
        Tomb(u16, u8),
        Erase(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u16..400, any::<u8>(), proptest::option::of(any::<u8>()))
                .prop_map(|(k, v, p)| Op::Put(k, v, p)),
            1 => (0u16..400, any::<u8>()).prop_map(|(k, v)| Op::Tomb(k, v)),
            1 => (0u16..400).prop_map(Op::Erase),
        ]
    }

    fn key(k: u16) -> Vec<u8> {
        // Keys of different lengths, so that prefixes sort before longer keys.
        let mut v = k.to_be_bytes().to_vec();
        v.truncate(1 + (k % 2) as usize);
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Layers of changes read back as the map the same changes make, and so does every
        /// point lookup, with a base written at any step (a compaction).
        #[test]
        fn layers_read_back_as_the_map_of_their_changes(
            batches in proptest::collection::vec(proptest::collection::vec(op(), 0..120), 1..8),
            compact_at in proptest::option::of(0usize..8),
        ) {
            let (_d, s) = store();
            let mut model: BTreeMap<Vec<u8>, Held> = BTreeMap::new();
            let held = |hash, present, profile| Held { hash, present, profile };
            for (i, batch) in batches.iter().enumerate() {
                let mut entries = Vec::new();
                for op in batch {
                    match *op {
                        Op::Put(k, v, p) => {
                            model.insert(key(k), held(h(v), true, p.map(h)));
                            entries.push((key(k), State::Present, h(v), p.map(h)));
                        }
                        Op::Tomb(k, v) => {
                            model.insert(key(k), held(h(v), false, None));
                            entries.push((key(k), State::Tombstone, h(v), None));
                        }
                        Op::Erase(k) => {
                            model.remove(&key(k));
                            entries.push((key(k), State::Erased, RowHash::default(), None));
                        }
                    }
                }
                write_delta(&s, i as i64 + 1, entries).unwrap();
                if compact_at == Some(i) {
                    let rows = all(&s);
                    let mut w = LayerWriter::begin(&s, true, 99).unwrap();
                    for r in &rows {
                        let st = if r.present { State::Present } else { State::Tombstone };
                        w.push(&s, &r.key, st, &r.hash, r.profile.as_ref()).unwrap();
                    }
                    w.finish(&s).unwrap();
                    prop_assert_eq!(layers(&s).unwrap().len(), 1);
                }
            }
            let expected: Vec<BaseRow> = model
                .iter()
                .map(|(k, m)| BaseRow { key: k.clone(), hash: m.hash, present: m.present, profile: m.profile })
                .collect();
            prop_assert_eq!(all(&s), expected);
            for k in 0u16..400 {
                prop_assert_eq!(lookup(&s, &key(k)).unwrap(), model.get(&key(k)).copied());
            }
        }
    }

    #[test]
    fn pages_split_and_read_back_across_many_pages() {
        let (_d, s) = store();
        let mut w = LayerWriter::begin(&s, true, 1).unwrap();
        for k in 0u32..20_000 {
            w.push(&s, &k.to_be_bytes(), State::Present, &h(k as u8), None)
                .unwrap();
        }
        w.finish(&s).unwrap();
        let pages: i64 = s
            .conn
            .query_row("SELECT COUNT(*) FROM base_page", [], |r| r.get(0))
            .unwrap();
        assert!(pages > 3, "{pages} pages");
        let rows = all(&s);
        assert_eq!(rows.len(), 20_000);
        assert!(rows.windows(2).all(|w| w[0].key < w[1].key));
        assert_eq!(
            lookup(&s, &12_345u32.to_be_bytes()).unwrap(),
            Some(Held {
                hash: h(12_345u32 as u8),
                present: true,
                profile: None
            })
        );
        assert_eq!(lookup(&s, &[0xff; 5]).unwrap(), None);
    }
}
