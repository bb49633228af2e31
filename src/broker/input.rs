//! Admin inputs ("parse, don't validate"): the JSON bodies as they arrive, the rules every
//! field obeys, and the validated values the writer applies. A [`TierSpec`], [`NewKey`],
//! [`NewConsumer`] or [`NewScope`] can only be built here, each field checked once on the way,
//! so whoever holds one applies it without checking its shape again.
//!
//! The name and limit rules are also what the SQLite import holds every row to.

use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::budget::{MAX_RESET_DAY, SpendLimit, Unit, parse_amount, positive_amount_schema};
use super::usage::MAX_USAGE_LIMIT;
use super::{Limit, MAX_RATE_LIMIT, Plaintext};

/// The longest window a tier may set: one leap year.
const MAX_WINDOW_SECONDS: u32 = 366 * 24 * 3600;
/// The longest usage window a key may set: ten tier windows.
const MAX_USAGE_WINDOW_SECONDS: u32 = 10 * MAX_WINDOW_SECONDS;
/// The longest name (tier, key, feature, secret) accepted, in characters.
const MAX_NAME_CHARS: usize = 256;
/// Window of a feature given as a bare number (`{"chat": 100}` means 100 per minute).
pub const DEFAULT_WINDOW_SECONDS: u32 = 60;

/// Why an input is refused; the text names the field and never repeats a secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct Invalid(pub String);

/// A name (of a tier, key, feature, secret, consumer), trimmed: required, at most
/// 256 characters, no control or format characters (see [`is_hidden`]). `field` names it in the
/// error, which never repeats the value.
pub fn parse_name(field: &str, value: &str) -> Result<String, Invalid> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(Invalid(format!("{field} is required")));
    }
    if trimmed.chars().count() > MAX_NAME_CHARS {
        return Err(Invalid(format!(
            "{field} is longer than {MAX_NAME_CHARS} characters"
        )));
    }
    if trimmed.chars().any(is_hidden) {
        return Err(Invalid(format!(
            "{field} contains control or format characters (such as direction overrides or zero-width characters)"
        )));
    }
    Ok(trimmed.to_owned())
}

/// Whether a character would make a listing show something other than what is stored: a
/// control character (`Cc`), a format character (`Cf`: direction overrides and isolates,
/// zero-width spaces and joiners, the byte-order mark, tag characters, ...), or a line or
/// paragraph separator (`Zl`, `Zp`). `char::is_control` covers only the first. The `Cf` ranges
/// are Unicode 15's.
pub fn is_hidden(c: char) -> bool {
    const FORMAT: &[(u32, u32)] = &[
        (0xAD, 0xAD),
        (0x600, 0x605),
        (0x61C, 0x61C),
        (0x6DD, 0x6DD),
        (0x70F, 0x70F),
        (0x890, 0x891),
        (0x8E2, 0x8E2),
        (0x180E, 0x180E),
        (0x200B, 0x200F),
        (0x2028, 0x202E),
        (0x2060, 0x2064),
        (0x2066, 0x206F),
        (0xFEFF, 0xFEFF),
        (0xFFF9, 0xFFFB),
        (0x110BD, 0x110BD),
        (0x110CD, 0x110CD),
        (0x13430, 0x1343F),
        (0x1BCA0, 0x1BCA3),
        (0x1D173, 0x1D17A),
        (0xE0001, 0xE0001),
        (0xE0020, 0xE007F),
    ];
    let code = u32::from(c);
    c.is_control()
        || FORMAT
            .iter()
            .any(|&(first, last)| (first..=last).contains(&code))
}

/// A feature's limit: 1 to [`MAX_RATE_LIMIT`] uses per window of 1 second to 366 days.
pub fn parse_limit(field: &str, rate_limit: i128, window_seconds: i128) -> Result<Limit, Invalid> {
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

fn integer(field: &str, value: &serde_json::Value) -> Result<i128, Invalid> {
    value
        .as_i64()
        .map(i128::from)
        .or_else(|| value.as_u64().map(i128::from))
        .ok_or_else(|| Invalid(format!("{field} must be an integer")))
}

/// An integer field that may be absent or `null`.
fn optional_integer(
    field: &str,
    value: Option<&serde_json::Value>,
) -> Result<Option<i128>, Invalid> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(value) => integer(field, value).map(Some),
    }
}

/// A feature's limit as a body gives it: a bare number (per minute) or
/// `{"rate_limit", "window_seconds"?}`.
fn feature_limit(feature: &str, value: &serde_json::Value) -> Result<Limit, Invalid> {
    let field = format!("features.{feature}");
    match value {
        serde_json::Value::Number(_) => parse_limit(
            &field,
            integer(&field, value)?,
            DEFAULT_WINDOW_SECONDS.into(),
        ),
        serde_json::Value::Object(fields) => {
            let rate = fields
                .get("rate_limit")
                .ok_or_else(|| Invalid(format!("{field}.rate_limit is required")))?;
            let rate = integer(&format!("{field}.rate_limit"), rate)?;
            let window = optional_integer(
                &format!("{field}.window_seconds"),
                fields.get("window_seconds"),
            )?
            .unwrap_or(DEFAULT_WINDOW_SECONDS.into());
            parse_limit(&field, rate, window)
        }
        _ => Err(Invalid(format!(
            "{field} must be an integer or an object {{\"rate_limit\", \"window_seconds\"}}"
        ))),
    }
}

/// Unix ms of an RFC 3339 instant.
pub(super) fn parse_instant(field: &str, text: &str) -> Result<i64, Invalid> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX))
        .map_err(|_| {
            Invalid(format!(
                "{field} must be an RFC 3339 time, e.g. 2030-01-31T00:00:00Z"
            ))
        })
}

/// The body of `POST /admin/tiers` and `PATCH /admin/tiers`.
#[derive(Deserialize, JsonSchema)]
pub struct TierBody {
    name: String,
    #[serde(default)]
    description: Option<String>,
    /// Each feature's limit per key: uses per minute, or per a window of its own.
    #[schemars(schema_with = "feature_limits")]
    features: BTreeMap<String, serde_json::Value>,
}

/// The schema of `features` as [`feature_limit`] reads it, with its bounds.
fn feature_limits(_: &mut SchemaGenerator) -> Schema {
    let rate = json_schema!({"type": "integer", "minimum": 1, "maximum": MAX_RATE_LIMIT});
    let window = json_schema!({"type": "integer", "minimum": 1, "maximum": MAX_WINDOW_SECONDS});
    json_schema!({
        "type": "object",
        "minProperties": 1,
        "additionalProperties": {
            "oneOf": [
                rate,
                {
                    "type": "object",
                    "properties": {"rate_limit": rate, "window_seconds": window},
                    "required": ["rate_limit"],
                },
            ],
        },
    })
}

/// An optional integer field from 0 to `maximum`, or `null`.
fn optional_count(maximum: u64) -> Schema {
    json_schema!({"type": ["integer", "null"], "minimum": 0, "maximum": maximum})
}

fn usage_limit_schema(_: &mut SchemaGenerator) -> Schema {
    optional_count(MAX_USAGE_LIMIT)
}

fn usage_window_schema(_: &mut SchemaGenerator) -> Schema {
    optional_count(MAX_USAGE_WINDOW_SECONDS.into())
}

/// A tier to create, or the new content of one (`PATCH`): a name and at least one feature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierSpec {
    name: String,
    description: Option<String>,
    features: BTreeMap<String, Limit>,
}

impl TierSpec {
    /// A tier whose features' limits are already typed.
    pub fn new(
        name: &str,
        description: Option<String>,
        features: BTreeMap<String, Limit>,
    ) -> Result<Self, Invalid> {
        let features = features
            .into_iter()
            .map(|(feature, limit)| Ok((parse_name("feature name", &feature)?, limit)))
            .collect::<Result<_, Invalid>>()?;
        Self::with_features(name, description, features)
    }

    /// Checks the tier's own fields; `features` are checked already.
    fn with_features(
        name: &str,
        description: Option<String>,
        features: BTreeMap<String, Limit>,
    ) -> Result<Self, Invalid> {
        let name = parse_name("name", name)?;
        if features.is_empty() {
            return Err(Invalid("features must list at least one feature".into()));
        }
        Ok(Self {
            name,
            description,
            features,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `None` keeps the description a `PATCH` finds.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    pub fn features(&self) -> &BTreeMap<String, Limit> {
        &self.features
    }
}

impl TryFrom<TierBody> for TierSpec {
    type Error = Invalid;

    fn try_from(body: TierBody) -> Result<Self, Invalid> {
        let features = body
            .features
            .iter()
            .map(|(feature, value)| {
                // The name first: the limit's error repeats it.
                let feature = parse_name("feature name", feature)?;
                let limit = feature_limit(&feature, value)?;
                Ok((feature, limit))
            })
            .collect::<Result<_, Invalid>>()?;
        Self::with_features(&body.name, body.description, features)
    }
}

/// A usage cap's limit: 1 to [`MAX_USAGE_LIMIT`].
fn parse_usage_limit(n: i128) -> Result<u32, Invalid> {
    u32::try_from(n)
        .ok()
        .filter(|n| (1..=MAX_USAGE_LIMIT).contains(&u64::from(*n)))
        .ok_or_else(|| {
            Invalid(format!(
                "usage_limit must be an integer from 1 to {MAX_USAGE_LIMIT}"
            ))
        })
}

/// A usage cap's window: 1 to [`MAX_USAGE_WINDOW_SECONDS`].
fn parse_usage_window(n: i128) -> Result<u32, Invalid> {
    u32::try_from(n)
        .ok()
        .filter(|n| (1..=MAX_USAGE_WINDOW_SECONDS).contains(n))
        .ok_or_else(|| {
            Invalid(format!(
                "usage_window_seconds must be an integer from 1 to {MAX_USAGE_WINDOW_SECONDS}"
            ))
        })
}

/// The body of `POST /admin/keys`.
#[derive(Deserialize, JsonSchema)]
pub struct KeyBody {
    name: String,
    /// The provider key: sealed at rest, never shown by an admin route.
    key: String,
    /// The tier's name or id.
    tier: String,
    /// RFC 3339; the key is not served from then on.
    #[serde(default)]
    #[schemars(extend("format" = "date-time"))]
    expires_at: Option<String>,
    /// Returned with the key by `GET /key`.
    #[serde(default)]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Sealed like the key; returned with it by `GET /key`.
    #[serde(default)]
    secrets: Option<BTreeMap<String, String>>,
    /// Total uses (per `usage_window_seconds`, else for the key's lifetime).
    #[serde(default)]
    #[schemars(schema_with = "usage_limit_schema")]
    usage_limit: Option<serde_json::Value>,
    #[serde(default)]
    #[schemars(schema_with = "usage_window_schema")]
    usage_window_seconds: Option<serde_json::Value>,
    #[serde(default)]
    budget: Option<BudgetBody>,
}

/// A spend budget as a body gives it: `{"amount", "unit", "reset_day"?}`. The amount is kept as
/// the JSON number's text, read exactly (never through a float).
#[derive(Deserialize, JsonSchema)]
pub struct BudgetBody {
    #[schemars(schema_with = "positive_amount_schema")]
    amount: Box<serde_json::value::RawValue>,
    #[schemars(with = "Unit")]
    unit: String,
    /// The day of the month (1–28) the budget resets on at 00:00 UTC; absent or `null`: a
    /// lifetime budget.
    #[serde(default)]
    #[schemars(schema_with = "reset_day_schema")]
    reset_day: Option<serde_json::Value>,
}

fn reset_day_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": ["integer", "null"], "minimum": 1, "maximum": MAX_RESET_DAY})
}

impl TryFrom<BudgetBody> for SpendLimit {
    type Error = Invalid;

    fn try_from(body: BudgetBody) -> Result<Self, Invalid> {
        let reset_day = optional_integer("budget.reset_day", body.reset_day.as_ref())?
            .map(|day| {
                u8::try_from(day)
                    .ok()
                    .filter(|day| (1..=MAX_RESET_DAY).contains(day))
                    .ok_or_else(|| {
                        Invalid(format!(
                            "budget.reset_day must be an integer from 1 to {MAX_RESET_DAY} (every month has it)"
                        ))
                    })
            })
            .transpose()?;
        Ok(SpendLimit {
            amount_nanos: parse_amount("budget.amount", body.amount.get())?,
            unit: Unit::parse("budget.unit", &body.unit)?,
            reset_day,
        })
    }
}

/// A key to add. Its value and secrets are plaintext, held in zeroizing buffers.
pub struct NewKey {
    name: String,
    /// The tier's name or id.
    tier: String,
    value: Zeroizing<String>,
    expires_at_ms: Option<i64>,
    metadata: serde_json::Map<String, serde_json::Value>,
    secrets: BTreeMap<String, Zeroizing<String>>,
    /// Total uses allowed, per `usage_window_seconds` or for the key's lifetime.
    usage_limit: Option<u32>,
    usage_window_seconds: Option<u32>,
    budget: Option<SpendLimit>,
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

/// A usage cap: `limit` total uses (1 to [`MAX_USAGE_LIMIT`]), per `window_seconds` (1 second to
/// ten times 366 days) when given; a window needs a limit.
pub fn parse_usage(
    limit: Option<i128>,
    window_seconds: Option<i128>,
) -> Result<(Option<u32>, Option<u32>), Invalid> {
    let usage_limit = limit.map(parse_usage_limit).transpose()?;
    let usage_window_seconds = window_seconds.map(parse_usage_window).transpose()?;
    if usage_window_seconds.is_some() && usage_limit.is_none() {
        return Err(Invalid("usage_window_seconds needs usage_limit".into()));
    }
    Ok((usage_limit, usage_window_seconds))
}

impl NewKey {
    /// A key named `name` in `tier` (its name or id), with no expiry, metadata, secrets or cap.
    pub fn new(name: &str, tier: &str, value: Zeroizing<String>) -> Result<Self, Invalid> {
        let name = parse_name("name", name)?;
        let tier = parse_name("tier", tier)?;
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
            budget: None,
        })
    }

    /// Sets a usage cap: `limit` total uses, per `window_seconds` when given.
    pub fn with_usage(
        mut self,
        limit: Option<i128>,
        window_seconds: Option<i128>,
    ) -> Result<Self, Invalid> {
        (self.usage_limit, self.usage_window_seconds) = parse_usage(limit, window_seconds)?;
        Ok(self)
    }

    /// Binds a secret to the key; a second secret of the same name replaces the first.
    pub fn with_secret(mut self, name: &str, value: Zeroizing<String>) -> Result<Self, Invalid> {
        self.secrets
            .insert(parse_name("secrets name", name)?, value);
        Ok(self)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tier's name or id.
    pub fn tier(&self) -> &str {
        &self.tier
    }

    /// Unix ms after which the key is never served.
    pub fn expires_at_ms(&self) -> Option<i64> {
        self.expires_at_ms
    }

    /// Total uses allowed, per [`NewKey::usage_window_seconds`] or for the key's lifetime.
    pub fn usage_limit(&self) -> Option<u32> {
        self.usage_limit
    }

    pub fn usage_window_seconds(&self) -> Option<u32> {
        self.usage_window_seconds
    }

    /// Its spend budget, if it has one.
    pub fn budget(&self) -> Option<SpendLimit> {
        self.budget
    }

    /// The value, metadata and secrets the key carries to its callers.
    pub fn plaintext(&self) -> Plaintext<'_> {
        Plaintext {
            value: &self.value,
            metadata: &self.metadata,
            secrets: &self.secrets,
        }
    }
}

impl TryFrom<KeyBody> for NewKey {
    type Error = Invalid;

    fn try_from(body: KeyBody) -> Result<Self, Invalid> {
        let usage_limit = optional_integer("usage_limit", body.usage_limit.as_ref())?;
        let usage_window =
            optional_integer("usage_window_seconds", body.usage_window_seconds.as_ref())?;
        let mut key = NewKey::new(&body.name, &body.tier, Zeroizing::new(body.key))?
            .with_usage(usage_limit, usage_window)?;
        key.expires_at_ms = body
            .expires_at
            .as_deref()
            .map(|text| parse_instant("expires_at", text))
            .transpose()?;
        key.metadata = body.metadata.unwrap_or_default();
        key.budget = body.budget.map(SpendLimit::try_from).transpose()?;
        body.secrets
            .unwrap_or_default()
            .into_iter()
            .try_fold(key, |key, (name, value)| {
                key.with_secret(&name, Zeroizing::new(value))
            })
    }
}

/// The fields `PATCH /admin/keys/{id}` takes, in the order they are listed and logged.
const PATCH_FIELDS: [&str; 10] = [
    "name",
    "key",
    "is_active",
    "expires_at",
    "exhausted_until",
    "metadata",
    "secrets",
    "usage_limit",
    "usage_window_seconds",
    "budget",
];

/// A change to a key (`PATCH /admin/keys/{id}`): each field `None` when the body leaves it as it
/// is. The value and secrets are plaintext, held in zeroizing buffers.
#[derive(Default)]
pub struct KeyPatch {
    name: Option<String>,
    value: Option<Zeroizing<String>>,
    active: Option<bool>,
    /// `Some(None)` clears the expiry.
    expires_at_ms: Option<Option<i64>>,
    /// `Some(None)` clears the exhaustion.
    exhausted_until_ms: Option<Option<i64>>,
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Replaces every secret.
    secrets: Option<BTreeMap<String, Zeroizing<String>>>,
    /// `Some(None)` removes the cap.
    usage_limit: Option<Option<u32>>,
    /// `Some(None)` makes the cap a lifetime one.
    usage_window_seconds: Option<Option<u32>>,
    /// `Some(None)` removes the budget.
    budget: Option<Option<SpendLimit>>,
    /// The fields the body named, in [`PATCH_FIELDS`] order.
    fields: Vec<&'static str>,
}

/// The body `PATCH /admin/keys/{id}` takes: every field optional, `null` clearing the nullable
/// ones, any other field refused.
impl JsonSchema for KeyPatch {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "KeyPatch".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let instant = json_schema!({"type": ["string", "null"], "format": "date-time"});
        let budget = generator.subschema_for::<Option<BudgetBody>>();
        json_schema!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "key": {"type": "string", "minLength": 1, "description": "The new value: the provider key rotated in place."},
                "is_active": {"type": "boolean"},
                "expires_at": instant,
                "exhausted_until": instant,
                "metadata": {"type": ["object", "null"], "description": "Replaces the metadata; null empties it."},
                "secrets": {
                    "type": ["object", "null"],
                    "additionalProperties": {"type": "string"},
                    "description": "Replaces every secret; null removes them.",
                },
                "usage_limit": optional_count(MAX_USAGE_LIMIT),
                "usage_window_seconds": optional_count(MAX_USAGE_WINDOW_SECONDS.into()),
                "budget": budget,
            },
            "additionalProperties": false,
        })
    }
}

impl std::fmt::Debug for KeyPatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPatch")
            .field("fields", &self.fields)
            .finish_non_exhaustive()
    }
}

impl KeyPatch {
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The new value: the provider key rotated in place.
    pub fn value(&self) -> Option<&Zeroizing<String>> {
        self.value.as_ref()
    }

    pub fn active(&self) -> Option<bool> {
        self.active
    }

    pub fn expires_at_ms(&self) -> Option<Option<i64>> {
        self.expires_at_ms
    }

    pub fn exhausted_until_ms(&self) -> Option<Option<i64>> {
        self.exhausted_until_ms
    }

    pub fn metadata(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        self.metadata.as_ref()
    }

    pub fn secrets(&self) -> Option<&BTreeMap<String, Zeroizing<String>>> {
        self.secrets.as_ref()
    }

    pub fn usage_limit(&self) -> Option<Option<u32>> {
        self.usage_limit
    }

    pub fn usage_window_seconds(&self) -> Option<Option<u32>> {
        self.usage_window_seconds
    }

    pub fn budget(&self) -> Option<Option<SpendLimit>> {
        self.budget
    }

    /// The names of the fields it changes (for the log: never their values).
    pub fn fields(&self) -> &[&'static str] {
        &self.fields
    }
}

/// A field's value, or `None` for `null`.
fn nullable(value: &serde_json::Value) -> Option<&serde_json::Value> {
    (!value.is_null()).then_some(value)
}

fn string<'a>(field: &str, value: &'a serde_json::Value) -> Result<&'a str, Invalid> {
    value
        .as_str()
        .ok_or_else(|| Invalid(format!("{field} must be a string")))
}

/// An unknown field's name, for its error: repeated only when it looks like a field's name
/// (short, lowercase letters and underscores), never when it could be a value sent by mistake
/// (`{"sk-live-…": …}`).
fn unknown_field(name: &str) -> Invalid {
    let plain = name.len() <= 32 && name.chars().all(|c| c.is_ascii_lowercase() || c == '_');
    if plain {
        Invalid(format!(
            "unknown field `{name}`; a key's PATCH takes {}",
            PATCH_FIELDS.join(", ")
        ))
    } else {
        Invalid(format!(
            "an unknown field; a key's PATCH takes {}",
            PATCH_FIELDS.join(", ")
        ))
    }
}

impl TryFrom<serde_json::Map<String, serde_json::Value>> for KeyPatch {
    type Error = Invalid;

    /// Unlike the `POST` bodies, a `PATCH` refuses a field it does not know: every field is
    /// optional, so a misspelt one would otherwise be a change silently not made.
    fn try_from(body: serde_json::Map<String, serde_json::Value>) -> Result<Self, Invalid> {
        if let Some(name) = body
            .keys()
            .find(|name| !PATCH_FIELDS.contains(&name.as_str()))
        {
            return Err(unknown_field(name));
        }
        let mut patch = KeyPatch::default();
        for field in PATCH_FIELDS {
            let Some(value) = body.get(field) else {
                continue;
            };
            patch.fields.push(field);
            match field {
                "name" => patch.name = Some(parse_name("name", string("name", value)?)?),
                "key" => {
                    let value = string("key", value)?;
                    if value.is_empty() {
                        return Err(Invalid("key must not be empty".into()));
                    }
                    patch.value = Some(Zeroizing::new(value.to_owned()));
                }
                "is_active" => {
                    patch.active = Some(
                        value
                            .as_bool()
                            .ok_or_else(|| Invalid("is_active must be true or false".into()))?,
                    );
                }
                "expires_at" | "exhausted_until" => {
                    let at = nullable(value)
                        .map(|value| parse_instant(field, string(field, value)?))
                        .transpose()?;
                    if field == "expires_at" {
                        patch.expires_at_ms = Some(at);
                    } else {
                        patch.exhausted_until_ms = Some(at);
                    }
                }
                "metadata" => {
                    let metadata = match nullable(value) {
                        None => serde_json::Map::new(),
                        Some(serde_json::Value::Object(map)) => map.clone(),
                        Some(_) => return Err(Invalid("metadata must be an object".into())),
                    };
                    patch.metadata = Some(metadata);
                }
                "secrets" => {
                    let mut secrets = BTreeMap::new();
                    if let Some(value) = nullable(value) {
                        let map = value.as_object().ok_or_else(|| {
                            Invalid("secrets must be an object of strings".into())
                        })?;
                        for (name, secret) in map {
                            let name = parse_name("secrets name", name)?;
                            let secret = secret.as_str().ok_or_else(|| {
                                Invalid(format!("secrets.{name} must be a string"))
                            })?;
                            secrets.insert(name, Zeroizing::new(secret.to_owned()));
                        }
                    }
                    patch.secrets = Some(secrets);
                }
                "usage_limit" => {
                    patch.usage_limit = Some(
                        optional_integer(field, Some(value))?
                            .map(parse_usage_limit)
                            .transpose()?,
                    );
                }
                "usage_window_seconds" => {
                    patch.usage_window_seconds = Some(
                        optional_integer(field, Some(value))?
                            .map(parse_usage_window)
                            .transpose()?,
                    );
                }
                // `budget` is read from its text by `KeyPatchBody`, never into this map.
                _ => {}
            }
        }
        if patch.usage_limit == Some(None) && matches!(patch.usage_window_seconds, Some(Some(_))) {
            return Err(Invalid("usage_window_seconds needs usage_limit".into()));
        }
        Ok(patch)
    }
}

/// The body of `PATCH /admin/keys/{id}`: `budget` read apart, its amount from the JSON text
/// (the other fields go through `serde_json::Value`, whose numbers are floats).
#[derive(Deserialize)]
#[serde(expecting = "a map")]
pub struct KeyPatchBody {
    /// `Some(None)` for `"budget": null`.
    #[serde(default, deserialize_with = "present")]
    budget: Option<Option<BudgetBody>>,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

/// A field that is present: `Some`, even when it is `null` (then `Some(None)`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

impl TryFrom<KeyPatchBody> for KeyPatch {
    type Error = Invalid;

    fn try_from(body: KeyPatchBody) -> Result<Self, Invalid> {
        let mut patch = KeyPatch::try_from(body.rest)?;
        if let Some(budget) = body.budget {
            patch.budget = Some(budget.map(SpendLimit::try_from).transpose()?);
            // Last in `PATCH_FIELDS`, so the order holds.
            patch.fields.push("budget");
        }
        Ok(patch)
    }
}

/// The body of `POST /key/{id}/spend`.
#[derive(Deserialize, JsonSchema)]
pub struct SpendBody {
    /// What the call cost, in the budget's unit.
    #[schemars(schema_with = "positive_amount_schema")]
    amount: Box<serde_json::value::RawValue>,
    /// The budget's unit.
    #[schemars(with = "Unit")]
    unit: String,
    /// The caller's id for this spend, unique across every key: a retry with it is counted
    /// once.
    #[schemars(length(min = 1, max = MAX_REQUEST_ID_CHARS))]
    request_id: String,
}

/// The longest `request_id` a spend takes, in characters.
pub const MAX_REQUEST_ID_CHARS: usize = 128;

/// A spend to count against a key's budget, once per `request_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spend {
    amount_nanos: u64,
    unit: Unit,
    request_id: String,
}

impl Spend {
    pub fn amount_nanos(&self) -> u64 {
        self.amount_nanos
    }

    pub fn unit(&self) -> Unit {
        self.unit
    }

    /// The caller's id for this spend: unique across every key.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }
}

impl TryFrom<SpendBody> for Spend {
    type Error = Invalid;

    fn try_from(body: SpendBody) -> Result<Self, Invalid> {
        let chars = body.request_id.chars().count();
        if !(1..=MAX_REQUEST_ID_CHARS).contains(&chars) {
            return Err(Invalid(format!(
                "request_id must be 1 to {MAX_REQUEST_ID_CHARS} characters"
            )));
        }
        Ok(Self {
            amount_nanos: parse_amount("amount", body.amount.get())?,
            unit: Unit::parse("unit", &body.unit)?,
            request_id: body.request_id,
        })
    }
}

/// The body of `POST /admin/consumers`.
#[derive(Deserialize, JsonSchema)]
pub struct ConsumerBody {
    name: String,
    #[serde(default)]
    description: Option<String>,
}

/// A consumer to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewConsumer {
    name: String,
    description: String,
}

impl NewConsumer {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn description(&self) -> &str {
        &self.description
    }
}

impl TryFrom<ConsumerBody> for NewConsumer {
    type Error = Invalid;

    fn try_from(body: ConsumerBody) -> Result<Self, Invalid> {
        Ok(Self {
            name: parse_name("name", &body.name)?,
            description: body.description.unwrap_or_default(),
        })
    }
}

/// The body of `POST /admin/consumers/{id}/scopes`.
#[derive(Deserialize, JsonSchema)]
pub struct ScopeBody {
    /// The tier's name or id.
    tier: String,
}

/// A tier (its name or id) to let a consumer draw from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewScope {
    tier: String,
}

impl NewScope {
    /// The tier's name or id.
    pub fn tier(&self) -> &str {
        &self.tier
    }
}

impl TryFrom<ScopeBody> for NewScope {
    type Error = Invalid;

    fn try_from(body: ScopeBody) -> Result<Self, Invalid> {
        Ok(Self {
            tier: parse_name("tier", &body.tier)?,
        })
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_patch_schema_lists_exactly_the_fields_a_patch_takes() {
        let schema = KeyPatch::json_schema(&mut SchemaGenerator::default());
        let listed: Vec<&str> = schema
            .get("properties")
            .and_then(serde_json::Value::as_object)
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut fields = PATCH_FIELDS.to_vec();
        fields.sort_unstable();
        assert_eq!(listed, fields);
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(parse_name("name", "  pro ").unwrap(), "pro");
        assert_eq!(parse_name("name", "  ").unwrap_err().0, "name is required");
        assert!(parse_name("name", &"x".repeat(257)).is_err());
        assert!(parse_name("name", "a\u{7}b").is_err());
        assert_eq!(parse_name("name", "ünï").unwrap(), "ünï");
    }

    #[test]
    fn names_with_direction_overrides_or_invisible_characters_are_refused_unechoed() {
        for bad in [
            "pro\u{202E}txt.exe",
            "a\u{2066}b\u{2069}",
            "zero\u{200B}width",
            "join\u{200D}er",
            "\u{FEFF}bom",
            "soft\u{AD}hyphen",
            "line\u{2028}break",
            "tag\u{E0041}",
            "nul\u{0}",
        ] {
            let err = parse_name("tier", bad).unwrap_err().0;
            assert!(
                err.starts_with("tier contains control or format characters"),
                "{err}"
            );
            assert!(!err.contains(bad), "{err}");
        }
        for good in ["pro", "ключ", "日本語", "emoji 🚀", "a-b_c.d", "naïve café"] {
            assert_eq!(parse_name("name", good).unwrap(), good);
        }
    }

    #[test]
    fn limits_must_be_positive_and_representable() {
        assert!(parse_limit("f", 1, 1).is_ok());
        assert!(parse_limit("f", 0, 60).is_err());
        assert!(parse_limit("f", -1, 60).is_err());
        assert!(parse_limit("f", i128::from(MAX_RATE_LIMIT) + 1, 60).is_err());
        assert!(parse_limit("f", 5, 0).is_err());
        assert!(parse_limit("f", 5, i128::from(MAX_WINDOW_SECONDS) + 1).is_err());
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
