//! What each redb table holds, encoded as JSON. Field names are the stored format: renaming one
//! needs a schema version bump and a migration.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::StoreError;

/// Bytes stored as lowercase hex inside a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    pub tier_id: String,
    pub active: bool,
    pub created_at_ms: i64,
    #[serde(default)]
    pub expires_at_ms: Option<i64>,
    /// Total uses allowed (per `usage_window_seconds`, or for the key's lifetime).
    #[serde(default)]
    pub usage_limit: Option<u64>,
    #[serde(default)]
    pub usage_window_seconds: Option<u64>,
    #[serde(default)]
    pub usage_count: u64,
    #[serde(default)]
    pub usage_window_start_ms: Option<i64>,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The key value, sealed for `keys/<id>/value`.
    pub value: Hex,
    /// Bound secrets, each sealed for `keys/<id>/secrets/<name>`.
    #[serde(default)]
    pub secrets: BTreeMap<String, Hex>,
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

/// Associated data binding a key's value to its record.
pub fn value_aad(key_id: &str) -> Vec<u8> {
    format!("keypooler:keys/{key_id}/value").into_bytes()
}

/// Associated data binding a bound secret to its key and name.
pub fn secret_aad(key_id: &str, name: &str) -> Vec<u8> {
    format!("keypooler:keys/{key_id}/secrets/{name}").into_bytes()
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

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
