//! A consumer: a service with its own token, drawing keys from its scoped tiers only.

use std::collections::BTreeSet;
use std::sync::Arc;

/// A service with its own token that draws keys only from its scoped tiers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consumer {
    pub id: Arc<str>,
    pub name: Arc<str>,
    pub description: String,
    /// SHA-256 of the token; the token itself is shown once at creation and never kept.
    pub token_hash: [u8; 32],
    pub active: bool,
    pub created_at_ms: i64,
    /// Ids of the tiers it may draw from.
    pub scopes: BTreeSet<Arc<str>>,
}
