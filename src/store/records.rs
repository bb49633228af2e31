//! What each redb table holds, encoded as JSON. Field names are the stored format: renaming one
//! needs a schema version bump and a migration.
//!
//! A tier, key or consumer is stored signed: its JSON, then the [`Signer`]'s signature (32
//! bytes) of the table name, its id and exactly those JSON bytes. A record whose signature does
//! not match (written without the encryption key, or altered) is left out, like a value whose
//! associated data does not match. Audit events are not signed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::crypto::{SIGNATURE_LEN, Signer, fields};

/// Bytes stored as lowercase hex inside a record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Hex(#[serde(with = "hex")] pub Vec<u8>);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitRecord {
    pub rate_limit: u32,
    pub window_seconds: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierRecord {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub created_at_ms: i64,
    pub features: BTreeMap<String, LimitRecord>,
}

/// Fields at their default are left out of the stored JSON (a third of a plain key's record;
/// figures in PERFORMANCE.md) and read back as their default. `Default` (no value, no tier) is
/// only a base to fill: every field a record needs is set by whoever writes one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    pub tier_id: String,
    pub active: bool,
    pub created_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    /// Total uses allowed (per `usage_window_seconds`, or for the key's lifetime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_window_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub usage_count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_window_start_ms: Option<i64>,
    /// Where the usage window ends in the broker's running time (ms), on which a restart judges
    /// it, whatever the wall clock says. Absent in records imported from the Go service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_window_end_running_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The key value, sealed with [`value_aad`].
    pub value: Hex,
    /// Bound secrets, each sealed with [`secret_aad`] for its name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, Hex>,
    /// Wall-clock unix ms until which the key is not served (`POST /key/{id}/exhausted`, `PATCH
    /// exhausted_until`); `None` or past: not exhausted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exhausted_until_ms: Option<i64>,
    /// Why a report of 401, 402 or 403 disabled the key (it is then not `active`); `None`: not
    /// disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// Unix ms until which the whole key cools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_until_ms: Option<i64>,
    /// Cooldowns the whole key's current run of failures has started.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub backoff_level: u8,
    /// Per feature: its cooldown and backoff level.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cooldowns: BTreeMap<String, CooldownRecord>,
    /// 5xx answers and timeouts reported since the last success.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub consecutive_failures: u32,
    /// The key's spend budget, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetRecord>,
    /// Spent in the budget period that started at `spent_period_start_ms`, in billionths of the
    /// budget's unit.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub spent_nanos: u64,
    /// Wall-clock unix ms at which the period `spent_nanos` belongs to started (0 for a
    /// lifetime budget): spent counts only while that period is the current one (the Go
    /// service's `spent_period_start`). `None` (a record imported without it): the period
    /// current when the server loads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spent_period_start_ms: Option<i64>,
}

/// A feature's cooldown on a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CooldownRecord {
    /// Unix ms; `None` once ended, while its level is kept.
    #[serde(default)]
    pub until_ms: Option<i64>,
    #[serde(default)]
    pub level: u8,
}

/// A spend budget: an exact decimal amount (in billionths) of a unit, per month or for life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetRecord {
    pub amount_nanos: u64,
    /// `usd` or `credits`.
    pub unit: String,
    /// The day of the month (1–28) the budget resets at 00:00 UTC; `None` for a lifetime budget.
    #[serde(default)]
    pub reset_day: Option<u8>,
}

fn is_zero<N: Default + PartialEq>(n: &N) -> bool {
    *n == N::default()
}

/// A consumer: a service with its own token, drawing keys only from its scoped tiers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerRecord {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// SHA-256 of the token; the token itself is never stored.
    pub token_hash: Hex,
    pub active: bool,
    pub created_at_ms: i64,
    /// Ids of the tiers the consumer may draw keys from.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// One served key in the audit trail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub key_id: String,
    /// `None` for the admin token.
    #[serde(default)]
    pub consumer_id: Option<String>,
    pub feature: String,
    pub created_at_ms: i64,
    /// For a change to the key's health (`report 429`, `exhausted`), what it was; `None` for a
    /// served key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
}

/// The first answer to an admin write sent with an idempotency key, kept (by that key) for as
/// long as the writer honours the key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// SHA-256 of the request's method, path and body: a retry must send the same.
    pub fingerprint: Hex,
    pub created_at_ms: i64,
    /// The HTTP status answered.
    pub status: u16,
    /// The JSON body answered (for a consumer's creation, without its token).
    pub body: String,
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(
    table: &'static str,
    id: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|err| StoreError::BadRecord {
        table,
        id: id.to_owned(),
        reason: unreadable(&err),
    })
}

/// Why a record does not decode, without any of its content: serde's messages for a field of
/// the wrong type quote the value found, so only texts that cannot hold one (syntax errors such
/// as "recursion limit exceeded", a missing field's name) are passed on, with where.
fn unreadable(err: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let text = err.to_string();
    let fixed = text
        .rsplit_once(" at line ")
        .map_or(text.as_str(), |(head, _)| head);
    let what = match err.classify() {
        Category::Syntax => format!("not valid JSON ({fixed})"),
        Category::Eof => "cut short".to_owned(),
        Category::Data if fixed.starts_with("missing field `") => format!("incomplete ({fixed})"),
        Category::Data => "not of the stored format (a field has the wrong type)".to_owned(),
        Category::Io => "unreadable".to_owned(),
    };
    format!(
        "the record is {what} at line {}, column {}",
        err.line(),
        err.column()
    )
}

pub(super) fn encode<T: serde::Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec(record).expect("records always serialize")
}

/// What a record's signature covers besides its table, id and JSON: the format it belongs to.
const RECORD_DOMAIN: &[u8] = b"keypooler record v2";

/// A record's stored bytes: its JSON, then its signature.
pub(super) fn encode_signed<T: serde::Serialize>(
    signer: &Signer,
    table: &str,
    id: &str,
    record: &T,
) -> Vec<u8> {
    sign(signer, table, id, encode(record))
}

/// `json` followed by its signature as the record `table`/`id`.
pub(super) fn sign(signer: &Signer, table: &str, id: &str, mut json: Vec<u8>) -> Vec<u8> {
    let signature = signer.sign(&[RECORD_DOMAIN, table.as_bytes(), id.as_bytes(), &json]);
    json.extend_from_slice(&signature);
    json
}

/// Why a record is left out when its signature does not match.
pub(super) const UNSIGNED: &str =
    "its signature does not match: it was not written under this ENCRYPTION_KEY, or was altered";

/// The JSON of a stored record whose signature matches, or `None`.
pub(super) fn verified<'a>(
    signer: &Signer,
    table: &str,
    id: &str,
    stored: &'a [u8],
) -> Option<&'a [u8]> {
    let split = stored.len().checked_sub(SIGNATURE_LEN)?;
    let (json, signature) = stored.split_at(split);
    signer
        .verify(
            &[RECORD_DOMAIN, table.as_bytes(), id.as_bytes(), json],
            signature,
        )
        .then_some(json)
}

/// Decodes a stored record whose signature matches; refuses one whose signature does not.
pub(super) fn decode_signed<T: serde::de::DeserializeOwned>(
    signer: &Signer,
    table: &'static str,
    id: &str,
    stored: &[u8],
) -> Result<T, StoreError> {
    let json = verified(signer, table, id, stored).ok_or_else(|| StoreError::BadRecord {
        table,
        id: id.to_owned(),
        reason: UNSIGNED.into(),
    })?;
    decode(table, id, json)
}

/// Associated data binding a key's value to its record: a domain tag and the key id, each
/// length-prefixed ([`fields`]), so no id or secret name can make it equal another's.
pub fn value_aad(key_id: &str) -> Vec<u8> {
    fields(&[b"keypooler key value v2", key_id.as_bytes()])
}

/// Associated data binding a bound secret to its key and name (see [`value_aad`]).
pub fn secret_aad(key_id: &str, name: &str) -> Vec<u8> {
    fields(&[
        b"keypooler key secret v2",
        key_id.as_bytes(),
        name.as_bytes(),
    ])
}

/// Schema 1's associated data for a key's value: a joined text, which a secret's could equal
/// (`legacy_value_aad("X/secrets/n") == legacy_secret_aad("X", "n/value")`). Only to open
/// values when a schema 1 file is upgraded.
pub(super) fn legacy_value_aad(key_id: &str) -> Vec<u8> {
    format!("keypooler:keys/{key_id}/value").into_bytes()
}

/// Schema 1's associated data for a bound secret (see [`legacy_value_aad`]).
pub(super) fn legacy_secret_aad(key_id: &str, name: &str) -> Vec<u8> {
    format!("keypooler:keys/{key_id}/secrets/{name}").into_bytes()
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_key_record_leaves_its_defaults_out_and_reads_back_the_same() {
        let json = r#"{"id":"k1","name":"one","tier_id":"t","active":true,"created_at_ms":5,"value":"ab"}"#;
        let plain: KeyRecord = decode("keys", "k1", json.as_bytes()).unwrap();
        assert_eq!(plain.usage_count, 0);
        assert_eq!(String::from_utf8(encode(&plain)).unwrap(), json);
        // Every field set: every field written, and read back.
        let full = KeyRecord {
            expires_at_ms: Some(9),
            usage_limit: Some(3),
            usage_window_seconds: Some(60),
            usage_count: 2,
            usage_window_start_ms: Some(1),
            usage_window_end_running_ms: Some(7),
            metadata: serde_json::json!({"team": "a"})
                .as_object()
                .unwrap()
                .clone(),
            secrets: BTreeMap::from([("org".to_owned(), Hex(vec![1]))]),
            exhausted_until_ms: Some(11),
            disabled_reason: Some("provider answered 401".into()),
            cooldown_until_ms: Some(12),
            backoff_level: 2,
            cooldowns: BTreeMap::from([(
                "chat".to_owned(),
                CooldownRecord {
                    until_ms: Some(13),
                    level: 1,
                },
            )]),
            consecutive_failures: 4,
            budget: Some(BudgetRecord {
                amount_nanos: 5,
                unit: "usd".into(),
                reset_day: Some(3),
            }),
            spent_nanos: 6,
            spent_period_start_ms: Some(0),
            ..plain
        };
        let json = encode(&full);
        let fields = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&json);
        assert_eq!(fields.unwrap().len(), 23);
        assert_eq!(decode::<KeyRecord>("keys", "k1", &json).unwrap(), full);
    }

    #[test]
    fn a_value_and_a_secret_never_share_associated_data() {
        // The two ids that collided in schema 1.
        assert_eq!(
            legacy_value_aad("X/secrets/n"),
            legacy_secret_aad("X", "n/value")
        );
        assert_ne!(value_aad("X/secrets/n"), secret_aad("X", "n/value"));
        assert_ne!(secret_aad("a/b", "c"), secret_aad("a", "b/c"));
        assert_ne!(value_aad("k"), secret_aad("k", ""));
    }

    #[test]
    fn why_a_record_is_unreadable_never_quotes_its_content() {
        let reason = |bytes: &[u8]| match decode::<KeyRecord>("keys", "k1", bytes) {
            Err(StoreError::BadRecord { reason, .. }) => reason,
            other => panic!("{other:?}"),
        };
        let wrong = br#"{"id": "k1", "name": "sk-secret-1", "tier_id": "t", "active": "sk-secret-2", "created_at_ms": 1, "value": "00"}"#;
        let text = reason(wrong);
        assert!(text.contains("has the wrong type"), "{text}");
        assert!(!text.contains("sk-secret"), "{text}");
        let text = reason(br#"{"id": "k1"}"#);
        assert!(
            text.starts_with("the record is incomplete (missing field `name`)"),
            "{text}"
        );
        let text = reason(b"{\"id\": sk-secret-3}");
        assert!(
            text.starts_with("the record is not valid JSON (expected value)"),
            "{text}"
        );
        assert!(!text.contains("sk-secret"), "{text}");
        let deep = format!(
            "{{\"metadata\": {}1{}}}",
            "{\"a\": ".repeat(200),
            "}".repeat(200)
        );
        let text = reason(deep.as_bytes());
        assert!(text.contains("recursion limit exceeded"), "{text}");
    }
}
