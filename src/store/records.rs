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
        reason: err.to_string(),
    })
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
