//! The SQL the database mode writes: quoted names, the recipe (the key text and the row hash
//! as SQL expressions over the query's columns), and the user's query made safe to embed.
//!
//! Invariants:
//! - Every identifier batchsync writes into SQL goes through [`ident`]; every string literal
//!   through [`literal`]. Nothing the user wrote is pasted unquoted, except the query itself,
//!   which is embedded as a subquery once [`embeddable`] has checked it is one statement.
//! - The recipe ([`RECIPE`]) is a function of the values' canonical text under the session
//!   settings [`SESSION`] pins, so what the role or database sets (TimeZone, DateStyle,
//!   IntervalStyle, extra_float_digits, bytea_output) never changes a hash.
//! - The key text is the key columns as a JSON object (`{"order_id":17}`): what people read in
//!   rejects, and the baseline's primary key (compared in `COLLATE "C"`). A key column that is
//!   null makes the whole text null.

use tokio_postgres::types::Type;

/// The database mode's hash recipe, recorded in `<name>_meta` and checked by every run:
/// SHA-256 truncated to 128 bits over, for each used column in name order, its type's OID and
/// `N` for null or `V<length>:<text>` for its canonical text.
pub const RECIPE: &str = "pg-sha256-128-v1";

/// What the session pins before anything is read: the settings that change how values render.
pub const SESSION: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; \
SET IntervalStyle = 'postgres'; SET extra_float_digits = 1; SET bytea_output = 'hex'";

/// A quoted identifier: `"a ""b"""`.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A string literal: `'it''s'`, or `E'a\\b'` when it holds a backslash, so that it reads the
/// same whatever `standard_conforming_strings` the role sets (batchsync leaves that setting to
/// the role: the user's query is read under it, as in the local mode).
pub fn literal(s: &str) -> String {
    if s.contains('\\') {
        format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

/// The names of one sync's tables in its schema, quoted.
#[derive(Debug, Clone)]
pub struct Tables {
    pub schema: String,
    pub name: String,
}

impl Tables {
    /// Every table of a sync: what `setup` creates, and a run and `check` require.
    pub const SUFFIXES: [&'static str; 8] = [
        "meta",
        "runs",
        "baseline",
        "delta",
        "outbox",
        "rejects",
        "open_rejects",
        "history",
    ];

    /// `"schema"."<name>_<suffix>"`.
    pub fn table(&self, suffix: &str) -> String {
        format!(
            "{}.{}",
            ident(&self.schema),
            ident(&format!("{}_{suffix}", self.name))
        )
    }
    pub fn meta(&self) -> String {
        self.table("meta")
    }
    pub fn runs(&self) -> String {
        self.table("runs")
    }
    pub fn baseline(&self) -> String {
        self.table("baseline")
    }
    pub fn delta(&self) -> String {
        self.table("delta")
    }
    pub fn outbox(&self) -> String {
        self.table("outbox")
    }
    pub fn rejects(&self) -> String {
        self.table("rejects")
    }
    pub fn open_rejects(&self) -> String {
        self.table("open_rejects")
    }
    pub fn history(&self) -> String {
        self.table("history")
    }
    /// For messages: `schema.name`, unquoted.
    pub fn describe(&self) -> String {
        format!("{}.{}_*", self.schema, self.name)
    }
}

/// Why a query cannot be embedded.
#[derive(Debug, PartialEq, Eq)]
pub enum QueryProblem {
    Empty,
    /// More than one statement: the position (in characters) of the `;` that ends the first.
    Statements(usize),
}

/// The user's query as a subquery body: one trailing `;` (and what follows it, if only
/// whitespace and comments) dropped; a `;` anywhere else outside quotes, comments and
/// dollar-quoted strings means a second statement, which is refused.
pub fn embeddable(query: &str) -> Result<String, QueryProblem> {
    let ends = statement_ends(query);
    let body = match ends.as_slice() {
        [] => query,
        [only] if is_blank(&query[only + 1..]) => &query[..*only],
        [first, ..] => {
            return Err(QueryProblem::Statements(
                query[..*first].chars().count() + 1,
            ))
        }
    };
    if is_blank(body) {
        return Err(QueryProblem::Empty);
    }
    Ok(body.to_string())
}

/// Whether `s` holds only whitespace and comments.
fn is_blank(s: &str) -> bool {
    let mut rest = s.trim_start();
    loop {
        if let Some(r) = rest.strip_prefix("--") {
            rest = r
                .split_once('\n')
                .map_or("", |(_, after)| after)
                .trim_start();
        } else if let Some(r) = rest.strip_prefix("/*") {
            match r.find("*/") {
                Some(i) => rest = r[i + 2..].trim_start(),
                None => return true,
            }
        } else {
            return rest.is_empty();
        }
    }
}

/// Byte offsets of the `;` that end statements, outside quotes, comments and dollar quotes.
fn statement_ends(q: &str) -> Vec<usize> {
    let b = q.as_bytes();
    let mut ends = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' => {
                let quote = b[i];
                i += 1;
                while i < b.len() {
                    if b[i] == quote {
                        if b.get(i + 1) == Some(&quote) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 1;
                i += 2;
                while i < b.len() && depth > 0 {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 1;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 1;
                    }
                    i += 1;
                }
                continue;
            }
            b'$' => {
                // $tag$ … $tag$ (a tag is empty or an identifier; `$1` is a parameter).
                let tag_end = b[i + 1..]
                    .iter()
                    .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
                    .map(|p| i + 1 + p);
                if let Some(e) = tag_end {
                    let tag = &q[i..=e];
                    let numeric = tag[1..tag.len() - 1]
                        .bytes()
                        .next()
                        .is_some_and(|c| c.is_ascii_digit());
                    if b[e] == b'$' && !numeric {
                        match q[e + 1..].find(tag) {
                            Some(close) => i = e + 1 + close + tag.len(),
                            None => i = b.len(),
                        }
                        continue;
                    }
                }
            }
            b';' => ends.push(i),
            _ => {}
        }
        i += 1;
    }
    ends
}

/// One column of the query as the recipe sees it: its quoted reference and its type.
#[derive(Debug, Clone)]
pub struct Col {
    /// `u."name"`.
    pub expr: String,
    pub ty: Type,
}

impl Col {
    pub fn new(name: &str, ty: Type) -> Col {
        Col {
            expr: format!("u.{}", ident(name)),
            ty,
        }
    }

    /// The value's canonical text under the pinned settings: numerics without trailing zeros,
    /// floats without the sign of a zero, times with time zone in UTC, bytes in hex, json as
    /// jsonb writes it (the local mode reads a number, and a document, not its spacing or key
    /// order); everything else its own text.
    fn text(&self) -> String {
        let c = &self.expr;
        match self.ty {
            Type::NUMERIC => format!("trim_scale({c})::text"),
            Type::FLOAT4 | Type::FLOAT8 => format!("CASE WHEN {c} = 0 THEN '0' ELSE {c}::text END"),
            Type::TIMESTAMPTZ => format!("({c} AT TIME ZONE 'UTC')::text"),
            Type::BYTEA => format!("encode({c}, 'hex')"),
            Type::JSON => format!("({c}::jsonb)::text"),
            _ => format!("{c}::text"),
        }
    }

    /// Whether the value is null to the recipe: a JSON `null` is, as the local mode reads it.
    fn is_null(&self) -> String {
        let c = &self.expr;
        match self.ty {
            Type::JSON | Type::JSONB => {
                format!("({c} IS NULL OR jsonb_typeof({c}::jsonb) = 'null')")
            }
            _ => format!("{c} IS NULL"),
        }
    }

    /// The value as JSON for the key text: numerics without trailing zeros.
    fn json(&self) -> String {
        let c = &self.expr;
        match self.ty {
            Type::NUMERIC => format!("to_json(trim_scale({c}))::text"),
            Type::TIMESTAMPTZ => format!("to_json({c} AT TIME ZONE 'UTC')::text"),
            // -0 and 0 are one key, as in the local mode.
            Type::FLOAT4 | Type::FLOAT8 => {
                format!("to_json(CASE WHEN {c} = 0 THEN 0 ELSE {c} END)::text")
            }
            _ => format!("to_json({c})::text"),
        }
    }
}

/// The key text of a row: `{"a":1,"b":"x"}`, null when a key column is null.
pub fn key_expr(names: &[String], cols: &[Col]) -> String {
    let mut parts = Vec::with_capacity(names.len() * 2 + 1);
    for (i, (name, col)) in names.iter().zip(cols).enumerate() {
        let head = format!(
            "{}{}:",
            if i == 0 { "{" } else { "," },
            serde_json::Value::String(name.clone())
        );
        parts.push(literal(&head));
        parts.push(format!("({})", col.json()));
    }
    parts.push(literal("}"));
    // In "C": keys compare by their bytes, whatever the database's own collation, and a sort
    // by key never pays for a locale's rules.
    format!("(({}) COLLATE \"C\")", parts.join(" || "))
}

/// The row hash: 16 bytes of `bytea`. `cols` in the plan's (name) order.
pub fn hash_expr(cols: &[Col]) -> String {
    let parts: Vec<String> = cols
        .iter()
        .map(|c| {
            let t = c.text();
            format!(
                "'{oid}' || CASE WHEN {null} THEN 'N' ELSE 'V' || length({t}) || ':' || {t} END",
                oid = c.ty.oid(),
                null = c.is_null(),
            )
        })
        .collect();
    format!(
        "substring(sha256(convert_to({}, 'UTF8')) FROM 1 FOR 16)",
        if parts.is_empty() {
            "''".to_string()
        } else {
            parts.join(" || ")
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(ident(r#"we"ird; drop"#), r#""we""ird; drop""#);
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal(r#"{"a\"b":"#), r#"E'{"a\\"b":'"#);
        let t = Tables {
            schema: "my \"schema\"".into(),
            name: "orders".into(),
        };
        assert_eq!(t.runs(), r#""my ""schema"""."orders_runs""#);
    }

    #[rstest]
    #[case("SELECT 1", Ok("SELECT 1"))]
    #[case("SELECT 1;", Ok("SELECT 1"))]
    #[case("SELECT 1 ;  \n", Ok("SELECT 1 "))]
    #[case("SELECT 1; -- done\n", Ok("SELECT 1"))]
    #[case("SELECT ';' AS a", Ok("SELECT ';' AS a"))]
    #[case("SELECT \"a;b\" FROM t", Ok("SELECT \"a;b\" FROM t"))]
    #[case("SELECT $$;$$ AS a", Ok("SELECT $$;$$ AS a"))]
    #[case("SELECT $x$;$x$ AS a;", Ok("SELECT $x$;$x$ AS a"))]
    #[case("SELECT 1 -- a; comment\n", Ok("SELECT 1 -- a; comment\n"))]
    #[case("SELECT /* ; */ 1", Ok("SELECT /* ; */ 1"))]
    #[case("SELECT 1; DROP TABLE t", Err(QueryProblem::Statements(9)))]
    #[case("SELECT 1; SELECT 2;", Err(QueryProblem::Statements(9)))]
    #[case(" ; ", Err(QueryProblem::Empty))]
    #[case("-- nothing", Err(QueryProblem::Empty))]
    fn queries_are_one_statement(#[case] q: &str, #[case] want: Result<&str, QueryProblem>) {
        assert_eq!(embeddable(q), want.map(String::from));
    }

    #[test]
    fn the_key_text_names_its_columns() {
        let cols = [Col::new("id", Type::INT4), Col::new("we\"ird", Type::TEXT)];
        let e = key_expr(&["id".into(), "we\"ird".into()], &cols);
        assert_eq!(
            e,
            r#"(('{"id":' || (to_json(u."id")::text) || E',"we\\"ird":' || (to_json(u."we""ird")::text) || '}') COLLATE "C")"#
        );
    }
}
