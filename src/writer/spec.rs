//! Validated inputs of admin changes ("parse, don't validate"): once a value of these types
//! exists, the writer can apply it without further checks of its shape.

use std::collections::BTreeMap;

use zeroize::Zeroizing;

use crate::broker::{Limit, MAX_RATE_LIMIT};

/// The longest window a tier may set: one leap year.
pub const MAX_WINDOW_SECONDS: u32 = 366 * 24 * 3600;
/// The longest name (tier, key, feature, secret) accepted, in characters.
pub const MAX_NAME_CHARS: usize = 256;
/// Window of a feature given as a bare number (`{"chat": 100}` means 100 per minute).
pub const DEFAULT_WINDOW_SECONDS: u32 = 60;

/// Why an input is refused; the text names the field and never repeats a secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct Invalid(pub String);

pub fn name(field: &str, value: &str) -> Result<String, Invalid> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(Invalid(format!("{field} is required")));
    }
    if trimmed.chars().count() > MAX_NAME_CHARS {
        return Err(Invalid(format!(
            "{field} is longer than {MAX_NAME_CHARS} characters"
        )));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(Invalid(format!("{field} contains control characters")));
    }
    Ok(trimmed.to_owned())
}

pub fn limit(field: &str, rate_limit: i128, window_seconds: i128) -> Result<Limit, Invalid> {
    let rate_limit = u32::try_from(rate_limit)
        .ok()
        .filter(|n| (1..=MAX_RATE_LIMIT).contains(n))
        .ok_or_else(|| {
            Invalid(format!(
                "{field}: rate_limit must be an integer from 1 to {MAX_RATE_LIMIT}"
            ))
        })?;
    let window_seconds = u32::try_from(window_seconds)
        .ok()
        .filter(|n| (1..=MAX_WINDOW_SECONDS).contains(n))
        .ok_or_else(|| {
            Invalid(format!(
                "{field}: window_seconds must be an integer from 1 to {MAX_WINDOW_SECONDS}"
            ))
        })?;
    Ok(Limit {
        rate_limit,
        window_seconds,
    })
}

/// A tier to create, or the new content of one (`PATCH`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierSpec {
    pub name: String,
    pub description: Option<String>,
    pub features: BTreeMap<String, Limit>,
}

impl TierSpec {
    pub fn new(
        name_text: &str,
        description: Option<String>,
        features: BTreeMap<String, Limit>,
    ) -> Result<Self, Invalid> {
        let name = name("name", name_text)?;
        if features.is_empty() {
            return Err(Invalid("features must list at least one feature".into()));
        }
        let features = features
            .into_iter()
            .map(|(feature, limit)| Ok((self::name("feature name", &feature)?, limit)))
            .collect::<Result<BTreeMap<_, _>, Invalid>>()?;
        Ok(Self {
            name,
            description,
            features,
        })
    }
}

/// A key to add. Its value and secrets are plaintext, held in zeroizing buffers.
pub struct NewKey {
    pub name: String,
    pub tier: String,
    pub value: Zeroizing<String>,
    pub expires_at_ms: Option<i64>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub secrets: BTreeMap<String, Zeroizing<String>>,
    /// Total uses allowed, per `usage_window_seconds` or for the key's lifetime.
    pub usage_limit: Option<u32>,
    pub usage_window_seconds: Option<u32>,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey")
            .field("name", &self.name)
            .field("tier", &self.tier)
            .field("value", &"[REDACTED]")
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl NewKey {
    pub fn new(name_text: &str, tier: &str, value: Zeroizing<String>) -> Result<Self, Invalid> {
        let name = name("name", name_text)?;
        let tier = self::name("tier", tier)?;
        if value.is_empty() {
            return Err(Invalid("key is required".into()));
        }
        Ok(Self {
            name,
            tier,
            value,
            expires_at_ms: None,
            metadata: serde_json::Map::new(),
            secrets: BTreeMap::new(),
            usage_limit: None,
            usage_window_seconds: None,
        })
    }

    /// Sets a usage cap: `limit` total uses, per `window_seconds` when given.
    pub fn with_usage(
        mut self,
        limit: Option<i128>,
        window_seconds: Option<i128>,
    ) -> Result<Self, Invalid> {
        let max = i128::from(crate::broker::MAX_USAGE_LIMIT);
        self.usage_limit = limit
            .map(|n| {
                u32::try_from(n)
                    .ok()
                    .filter(|n| (1..=max).contains(&i128::from(*n)))
                    .ok_or_else(|| {
                        Invalid(format!("usage_limit must be an integer from 1 to {max}"))
                    })
            })
            .transpose()?;
        self.usage_window_seconds = window_seconds
            .map(|n| {
                u32::try_from(n)
                    .ok()
                    .filter(|n| *n >= 1 && *n <= 10 * MAX_WINDOW_SECONDS)
                    .ok_or_else(|| {
                        Invalid(format!(
                            "usage_window_seconds must be an integer from 1 to {}",
                            10 * MAX_WINDOW_SECONDS
                        ))
                    })
            })
            .transpose()?;
        if self.usage_window_seconds.is_some() && self.usage_limit.is_none() {
            return Err(Invalid("usage_window_seconds needs usage_limit".into()));
        }
        Ok(self)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(name("name", "  pro ").unwrap(), "pro");
        assert_eq!(name("name", "  ").unwrap_err().0, "name is required");
        assert!(name("name", &"x".repeat(257)).is_err());
        assert!(name("name", "a\u{7}b").is_err());
        assert_eq!(name("name", "ünï").unwrap(), "ünï");
    }

    #[test]
    fn limits_must_be_positive_and_representable() {
        assert!(limit("f", 1, 1).is_ok());
        assert!(limit("f", 0, 60).is_err());
        assert!(limit("f", -1, 60).is_err());
        assert!(limit("f", i128::from(MAX_RATE_LIMIT) + 1, 60).is_err());
        assert!(limit("f", 5, 0).is_err());
        assert!(limit("f", 5, i128::from(MAX_WINDOW_SECONDS) + 1).is_err());
    }

    #[test]
    fn a_tier_needs_features() {
        assert!(TierSpec::new("pro", None, BTreeMap::new()).is_err());
    }

    #[test]
    fn new_key_debug_hides_the_value() {
        let key = NewKey::new("k", "pro", Zeroizing::new("sk-hidden".into())).unwrap();
        assert!(!format!("{key:?}").contains("sk-hidden"));
        assert!(NewKey::new("k", "pro", Zeroizing::new(String::new())).is_err());
    }
}
