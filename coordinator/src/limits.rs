//! The limits on what a worker may send and hold, in one place (README, "Limits"): every
//! field of every request is bounded before it is parsed or stored, so that a token holder (a
//! buggy worker is one) cannot make the coordinator allocate without bound, write unbounded
//! rows, or hold more than it declared. Refusals are [`Exceeded`] (the gRPC adapter answers
//! `RESOURCE_EXHAUSTED`) or [`Invalid`] (`INVALID_ARGUMENT`); nothing changes.
//!
//! Also here: the run-level numbers that must be sane before anything starts
//! ([`check_lease_secs`]).

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

/// Longest worker id or trial hash a request may name, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Longest worker name (`RegisterRequest.name`), in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest version string, in bytes.
pub const MAX_VERSION_BYTES: usize = 64;
/// Longest device label (`RegisterRequest.device`, `ReportRequest.device`), in bytes.
pub const MAX_DEVICE_BYTES: usize = 256;
/// Most GPUs one worker may list (`gpu_devices`).
pub const MAX_GPU_DEVICES: usize = 16;
/// Longest GPU name, in bytes.
pub const MAX_GPU_NAME_BYTES: usize = 128;
/// Most attempts one worker may hold at once (`RegisterRequest.slots`; 0 means 1).
pub const MAX_SLOTS: u32 = 64;
/// Most workers that may register in one run (respawned and re-registering workers count).
pub const MAX_REGISTRATIONS_PER_RUN: usize = 4096;
/// Largest `metrics_json`, in bytes.
pub const MAX_METRICS_JSON_BYTES: usize = 1 << 20;
/// Most metrics one result may carry.
pub const MAX_METRICS: usize = 1024;
/// Longest metric name or curve column name, in bytes.
pub const MAX_KEY_BYTES: usize = 128;
/// Largest `curve_json`, in bytes.
pub const MAX_CURVE_JSON_BYTES: usize = 32 << 20;
/// Most curve rows (checkpoints) one result may carry.
pub const MAX_CURVE_ROWS: usize = 100_000;
/// Most columns one curve row may carry.
pub const MAX_CURVE_KEYS: usize = 256;
/// Most points in `samples` and in `data`, each.
pub const MAX_POINTS: usize = 10_000;
/// Largest dimension of those points.
pub const MAX_DIM: u32 = 1 << 16;
/// Longest error text of a report, in bytes.
pub const MAX_ERROR_BYTES: usize = 64 << 10;
/// Most artifact names one report may list.
pub const MAX_REPORT_ARTIFACTS: usize = 64;
/// Longest `--lease-secs`: one day.
pub const MAX_LEASE_SECS: f64 = 86_400.0;

/// A field over its limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} has {got} {unit}, more than the limit of {max} (README: Limits)")]
pub struct Exceeded {
    pub field: &'static str,
    pub got: usize,
    pub max: usize,
    pub unit: &'static str,
}

/// A field that is not what the protocol says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// Why a request was refused before anything was parsed or changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    Exceeded(#[from] Exceeded),
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

/// `got` ≤ `max`, else [`Exceeded`].
pub fn at_most(field: &'static str, got: usize, max: usize, unit: &'static str) -> Result<(), Exceeded> {
    if got > max { Err(Exceeded { field, got, max, unit }) } else { Ok(()) }
}

/// A text field of at most `max` bytes.
pub fn text(field: &'static str, s: &str, max: usize) -> Result<(), Exceeded> {
    at_most(field, s.len(), max, "bytes")
}

/// `--lease-secs`: a finite number of seconds, more than 0 and at most [`MAX_LEASE_SECS`]
/// (NaN would make every worker's heartbeat interval NaN, 0 or less would expire every lease
/// at once).
pub fn check_lease_secs(secs: f64) -> Result<f64, String> {
    if secs.is_finite() && secs > 0.0 && secs <= MAX_LEASE_SECS {
        Ok(secs)
    } else {
        Err(format!("--lease-secs {secs}: must be a number of seconds above 0 and at most {MAX_LEASE_SECS} (a lease lives that long without a heartbeat)"))
    }
}

/// [`check_lease_secs`] of a command-line value (a clap `value_parser`).
pub fn parse_lease_secs(s: &str) -> Result<f64, String> {
    let secs: f64 = s.trim().parse().map_err(|_| format!("`{s}` is not a number of seconds"))?;
    check_lease_secs(secs).map_err(|e| format!("`{s}`: {e}"))
}

/// The checked metrics of a report: a JSON object of at most [`MAX_METRICS`] keys of at most
/// [`MAX_KEY_BYTES`] each. Ok(Err(why)) when it does not decode (the report is then recorded
/// as malformed); Err when it is over a limit (refused).
pub fn metrics(json: &str) -> Result<Result<(), String>, Exceeded> {
    text("metrics_json", json, MAX_METRICS_JSON_BYTES)?;
    let limit = std::cell::Cell::new(None);
    let mut de = serde_json::Deserializer::from_str(json);
    let got = de.deserialize_map(RowVisitor { field: "metrics_json", max_keys: MAX_METRICS, limit: &limit }).and_then(|_| de.end());
    match (limit.take(), got) {
        (Some(e), _) => Err(e),
        (None, Ok(())) => Ok(Ok(())),
        (None, Err(e)) => Ok(Err(format!("metrics_json: {e}"))),
    }
}

/// The rows of a report's `curve_json` (a JSON array of objects of numbers or null), each as
/// compact JSON text, parsed one row at a time: at most [`MAX_CURVE_ROWS`] rows of at most
/// [`MAX_CURVE_KEYS`] columns whose names are at most [`MAX_KEY_BYTES`]. Ok(Err(why)) when it
/// does not decode (recorded as malformed); Err when it is over a limit (refused). Memory stays
/// within a small multiple of the text: nothing is built for the whole array but its rows.
pub fn curve_rows(json: &str) -> Result<Result<Vec<String>, String>, Exceeded> {
    text("curve_json", json, MAX_CURVE_JSON_BYTES)?;
    let (limit, at_row) = (std::cell::Cell::new(None), std::cell::Cell::new(None));
    let mut de = serde_json::Deserializer::from_str(json);
    let got = de.deserialize_seq(RowsVisitor { limit: &limit, at_row: &at_row }).and_then(|rows| de.end().map(|()| rows));
    match (limit.take(), got, at_row.get()) {
        (Some(e), ..) => Err(e),
        (None, Ok(rows), _) => Ok(Ok(rows)),
        (None, Err(e), Some(i)) => Ok(Err(format!("curve_json: curve row {i} is not an object of numbers ({e})"))),
        (None, Err(e), None) => Ok(Err(format!("curve_json: {e}"))),
    }
}

/// The curve's rows, one [`RowVisitor`] each; stops at the first row over [`MAX_CURVE_ROWS`].
struct RowsVisitor<'a> {
    limit: &'a std::cell::Cell<Option<Exceeded>>,
    /// The row being read (for the message of one that does not decode).
    at_row: &'a std::cell::Cell<Option<usize>>,
}

impl<'de> Visitor<'de> for RowsVisitor<'_> {
    type Value = Vec<String>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of curve rows")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut rows = Vec::new();
        loop {
            let mut map = serde_json::Map::new();
            let seed = RowSeed { visitor: RowVisitor { field: "a curve row", max_keys: MAX_CURVE_KEYS, limit: self.limit }, out: &mut map };
            self.at_row.set(Some(rows.len()));
            if seq.next_element_seed(seed)?.is_none() {
                self.at_row.set(None);
                return Ok(rows);
            }
            self.at_row.set(None);
            if rows.len() == MAX_CURVE_ROWS {
                self.limit.set(Some(Exceeded { field: "curve_json", got: MAX_CURVE_ROWS + 1, max: MAX_CURVE_ROWS, unit: "rows or more" }));
                return Err(de::Error::custom("too many rows"));
            }
            rows.push(serde_json::Value::Object(map).to_string());
        }
    }
}

/// One row into `out`.
struct RowSeed<'a, 'm> {
    visitor: RowVisitor<'a>,
    out: &'m mut serde_json::Map<String, serde_json::Value>,
}

impl<'de> de::DeserializeSeed<'de> for RowSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let RowSeed { visitor, out } = self;
        d.deserialize_map(CollectRow { visitor, out })
    }
}

struct CollectRow<'a, 'm> {
    visitor: RowVisitor<'a>,
    out: &'m mut serde_json::Map<String, serde_json::Value>,
}

impl<'de> Visitor<'de> for CollectRow<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object of numbers")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        self.visitor.collect(map, Some(self.out))
    }
}

/// An object of numbers (or null) with at most `max_keys` keys of at most [`MAX_KEY_BYTES`].
struct RowVisitor<'a> {
    field: &'static str,
    max_keys: usize,
    limit: &'a std::cell::Cell<Option<Exceeded>>,
}

impl RowVisitor<'_> {
    fn collect<'de, A: MapAccess<'de>>(&self, mut map: A, mut out: Option<&mut serde_json::Map<String, serde_json::Value>>) -> Result<(), A::Error> {
        let mut n = 0;
        while let Some(key) = map.next_key::<String>()? {
            n += 1;
            let over = at_most(self.field, n, self.max_keys, "keys or more").and_then(|()| text("a metric or curve column name", &key, MAX_KEY_BYTES));
            if let Err(e) = over {
                self.limit.set(Some(e));
                return Err(de::Error::custom("over a limit"));
            }
            let value: serde_json::Value = map.next_value()?;
            if !(value.is_number() || value.is_null()) {
                return Err(de::Error::custom(format!("`{key}` is not a number")));
            }
            if let Some(out) = out.as_deref_mut() {
                out.insert(key, value);
            }
        }
        Ok(())
    }
}

impl<'de> Visitor<'de> for RowVisitor<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object of numbers")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        self.collect(map, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_seconds_must_be_a_positive_finite_number() {
        for ok in ["30", "0.5", "86400"] {
            assert!(parse_lease_secs(ok).is_ok(), "{ok}");
        }
        for bad in ["nan", "NaN", "-1", "0", "inf", "1e9", "thirty"] {
            let err = parse_lease_secs(bad).unwrap_err();
            assert!(err.contains(bad) && (err.contains("--lease-secs") || err.contains("not a number")), "{bad}: {err}");
        }
    }

    #[test]
    fn curve_rows_are_parsed_row_by_row_within_the_limits() {
        assert_eq!(
            curve_rows(r#"[{"step": 0, "loss": 1.5}, {"step": 100, "loss": null}]"#),
            Ok(Ok(vec![r#"{"loss":1.5,"step":0}"#.to_string(), r#"{"loss":null,"step":100}"#.to_string()]))
        );
        assert_eq!(curve_rows("[]"), Ok(Ok(vec![])));
        for malformed in ["{}", "[1]", r#"[{"a": "x"}]"#, "[", r#"[{"a": 1}] x"#] {
            assert!(matches!(curve_rows(malformed), Ok(Err(_))), "{malformed}");
        }
        let many = format!("[{}]", vec!["{}"; MAX_CURVE_ROWS + 1].join(","));
        assert_eq!(curve_rows(&many).unwrap_err().field, "curve_json");
        let wide = format!("[{{{}}}]", (0..=MAX_CURVE_KEYS).map(|i| format!("\"k{i}\": 1")).collect::<Vec<_>>().join(","));
        assert_eq!(curve_rows(&wide).unwrap_err().field, "a curve row");
        let long_key = format!("[{{\"{}\": 1}}]", "k".repeat(MAX_KEY_BYTES + 1));
        assert_eq!(curve_rows(&long_key).unwrap_err().got, MAX_KEY_BYTES + 1);
    }

    #[test]
    fn metrics_are_bounded_in_count_and_name_length() {
        assert_eq!(metrics(r#"{"fd": 0.1, "nll": null}"#), Ok(Ok(())));
        assert!(matches!(metrics("[1]"), Ok(Err(_))));
        let many = format!("{{{}}}", (0..=MAX_METRICS).map(|i| format!("\"m{i}\": 1")).collect::<Vec<_>>().join(","));
        let e = metrics(&many).unwrap_err();
        assert_eq!((e.field, e.max), ("metrics_json", MAX_METRICS));
        assert!(e.to_string().contains("more than the limit of 1024"), "{e}");
    }
}
