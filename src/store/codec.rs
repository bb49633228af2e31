//! The record codec: domain values to stored records (sealing plaintext for its id) and back
//! (opening every sealed value), and the catalog built from everything stored.

use std::collections::BTreeMap;

use zeroize::Zeroizing;

use super::records::{
    BudgetRecord, ConsumerRecord, CooldownRecord, Hex, KeyRecord, LimitRecord, TierRecord, decode,
    encode, secret_aad, value_aad,
};
use super::{Record, Store, StoreError};
use crate::broker::{
    Backoff, Catalog, Clock, Consumer, HealthState, KeyBudget, KeyEntry, KeyInfo, Limit, Now,
    Plaintext, SpendLimit, Tier, Unit, Unplaced, UsageCap, period_start_ms,
};
use crate::broker::{LIFETIME, to_cap_seconds};
use crate::crypto::{CryptoError, Sealer};

/// A stored record left out of the pool, with why. Holds the id, never a value.
#[derive(Debug, PartialEq, Eq)]
pub struct Skipped {
    pub table: &'static str,
    pub id: String,
    pub reason: String,
}

impl Skipped {
    pub(super) fn from_error(table: &'static str, id: &str, err: StoreError) -> Self {
        let reason = match err {
            StoreError::BadRecord { reason, .. } => reason,
            other => other.to_string(),
        };
        Self {
            table,
            id: id.to_owned(),
            reason,
        }
    }
}

fn tier_from_record(record: &TierRecord) -> Tier {
    Tier {
        id: record.id.as_str().into(),
        name: record.name.as_str().into(),
        description: record.description.clone(),
        created_at_ms: record.created_at_ms,
        features: record
            .features
            .iter()
            .map(|(feature, limit)| {
                (
                    feature.as_str().into(),
                    Limit {
                        rate_limit: limit.rate_limit,
                        window_seconds: limit.window_seconds,
                    },
                )
            })
            .collect(),
    }
}

pub fn tier_record(tier: &Tier) -> TierRecord {
    TierRecord {
        id: tier.id.to_string(),
        name: tier.name.to_string(),
        description: tier.description.clone(),
        created_at_ms: tier.created_at_ms,
        features: tier
            .features
            .iter()
            .map(|(feature, limit)| {
                (
                    feature.to_string(),
                    LimitRecord {
                        rate_limit: limit.rate_limit,
                        window_seconds: limit.window_seconds,
                    },
                )
            })
            .collect(),
    }
}

/// What a stored key is, apart from its sealed material.
pub fn key_info(record: &KeyRecord) -> KeyInfo {
    KeyInfo {
        id: record.id.as_str().into(),
        name: record.name.as_str().into(),
        tier_id: record.tier_id.as_str().into(),
        active: record.active,
        created_at_ms: record.created_at_ms,
        expires_at_ms: record.expires_at_ms,
    }
}

/// A stored key's spend budget as of wall time `unix_ms`: what it spent counts only in the
/// period it was spent in. `None` without a budget, or with a unit this build does not know
/// (the record then loads without one; the import refuses such a row).
pub fn key_budget(record: &KeyRecord, unix_ms: i64) -> Option<KeyBudget> {
    let stored = record.budget.as_ref()?;
    let limit = SpendLimit {
        amount_nanos: stored.amount_nanos,
        unit: Unit::parse("unit", &stored.unit).ok()?,
        reset_day: stored.reset_day,
    };
    let budget = KeyBudget {
        limit,
        spent_nanos: record.spent_nanos,
        period_start_ms: record
            .spent_period_start_ms
            .unwrap_or_else(|| period_start_ms(limit.reset_day, unix_ms)),
    };
    Some(budget.at(unix_ms))
}

/// Puts a key's budget and what it spent in its record.
pub fn store_budget(record: &mut KeyRecord, budget: Option<&KeyBudget>) {
    record.budget = budget.map(|budget| BudgetRecord {
        amount_nanos: budget.limit.amount_nanos,
        unit: budget.limit.unit.as_str().to_owned(),
        reset_day: budget.limit.reset_day,
    });
    record.spent_nanos = budget.map_or(0, |budget| budget.spent_nanos);
    record.spent_period_start_ms = budget.map(|budget| budget.period_start_ms);
}

/// The plaintext of a stored key: its value and bound secrets.
pub struct Opened {
    pub value: Zeroizing<String>,
    pub secrets: BTreeMap<String, Zeroizing<String>>,
}

pub fn open_key(record: &KeyRecord, sealer: &Sealer) -> Result<Opened, CryptoError> {
    let value = sealer.open_text(&record.value.0, &value_aad(&record.id))?;
    let secrets = record
        .secrets
        .iter()
        .map(|(name, sealed)| {
            let plain = sealer.open_text(&sealed.0, &secret_aad(&record.id, name))?;
            Ok((name.clone(), plain))
        })
        .collect::<Result<_, CryptoError>>()?;
    Ok(Opened { value, secrets })
}

/// The usage cap a stored key resumes with: every reserved use counts as used. Its window ends
/// where it was stored to end in running time (`clock` goes on from the running time the last
/// run saved), so no move of the wall clock reopens it early. A window stored with its start on
/// the wall clock only is placed by the wall clock, ending no later than its full length from
/// now.
pub fn usage_cap(record: &KeyRecord, clock: &Clock) -> Option<UsageCap> {
    let limit = u32::try_from(record.usage_limit?).unwrap_or(LIFETIME - 1);
    let reserved = u32::try_from(record.usage_count)
        .unwrap_or(limit)
        .min(limit);
    let window_s = record
        .usage_window_seconds
        .map(|w| u32::try_from(w).unwrap_or(LIFETIME - 1));
    let end_s = match (
        window_s,
        record.usage_window_end_running_ms,
        record.usage_window_start_ms,
    ) {
        (None, ..) => LIFETIME,
        (Some(_), Some(end_ms), _) => to_cap_seconds(end_ms),
        (Some(_), None, None) => 0,
        (Some(window), None, Some(start)) => {
            let window_ms = i64::from(window) * 1_000;
            let left_ms = start
                .saturating_add(window_ms)
                .saturating_sub(clock.unix_now_ms())
                .clamp(0, window_ms)
                .unsigned_abs();
            if left_ms == 0 {
                0
            } else {
                // Rounded up: a window never ends before its time.
                to_cap_seconds(clock.now_ms().saturating_add(left_ms).saturating_add(999))
            }
        }
    };
    Some(UsageCap::resume(limit, window_s, end_s, reserved))
}

fn key_entry(record: &KeyRecord, opened: &Opened, clock: &Clock) -> KeyEntry {
    let now = Now::read(clock);
    KeyEntry::new(
        key_info(record),
        &Plaintext {
            value: &opened.value,
            metadata: &record.metadata,
            secrets: &opened.secrets,
        },
        usage_cap(record, clock),
    )
    .with_health(health_from_record(record, now), now)
    .with_budget(key_budget(record, now.unix_ms))
}

/// A stored key's health, its deadlines placed at `now`: a deadline is stored on the wall
/// clock, so a restart judges it on the wall clock as it then reads.
pub fn health_from_record(record: &KeyRecord, now: Now) -> HealthState {
    HealthState {
        disabled_reason: record.disabled_reason.as_deref().map(Into::into),
        exhausted: record.exhausted_until_ms.map(|at| now.at_unix(at)),
        key: Backoff {
            until: record.cooldown_until_ms.map(|at| now.at_unix(at)),
            level: record.backoff_level,
        },
        features: record
            .cooldowns
            .iter()
            .map(|(feature, cooldown)| {
                let backoff = Backoff {
                    until: cooldown.until_ms.map(|at| now.at_unix(at)),
                    level: cooldown.level,
                };
                (feature.as_str().into(), backoff)
            })
            .collect(),
        consecutive_failures: record.consecutive_failures,
    }
}

/// Writes `health` into a key's record.
pub fn store_health(record: &mut KeyRecord, health: &HealthState) {
    record.disabled_reason = health.disabled_reason.as_deref().map(Into::into);
    record.exhausted_until_ms = health.exhausted.map(|d| d.unix_ms);
    record.cooldown_until_ms = health.key.until.map(|d| d.unix_ms);
    record.backoff_level = health.key.level;
    record.cooldowns = health
        .features
        .iter()
        .map(|(feature, backoff)| {
            let cooldown = CooldownRecord {
                until_ms: backoff.until.map(|d| d.unix_ms),
                level: backoff.level,
            };
            (feature.to_string(), cooldown)
        })
        .collect();
    record.consecutive_failures = health.consecutive_failures;
}

/// A stored consumer, or why it cannot be loaded.
fn consumer_from_record(record: &ConsumerRecord) -> Result<Consumer, String> {
    let token_hash = <[u8; 32]>::try_from(record.token_hash.0.as_slice())
        .map_err(|_| "its token hash is not 32 bytes".to_owned())?;
    Ok(Consumer {
        id: record.id.as_str().into(),
        name: record.name.as_str().into(),
        description: record.description.clone(),
        token_hash,
        active: record.active,
        created_at_ms: record.created_at_ms,
        scopes: record.scopes.iter().map(|id| id.as_str().into()).collect(),
    })
}

pub fn consumer_record(consumer: &Consumer) -> ConsumerRecord {
    ConsumerRecord {
        id: consumer.id.to_string(),
        name: consumer.name.to_string(),
        description: consumer.description.clone(),
        token_hash: Hex(consumer.token_hash.to_vec()),
        active: consumer.active,
        created_at_ms: consumer.created_at_ms,
        scopes: consumer.scopes.iter().map(ToString::to_string).collect(),
    }
}

/// A record as [`load_catalog`] converts it on any thread: a key with its value opened.
enum Loaded {
    Key(KeyEntry),
    Unopened(Box<KeyRecord>, CryptoError),
    Other(Record),
}

/// Builds the catalog from everything stored, reading a chunk of records at a time and opening
/// their values on every core. A record whose signature does not match or that does not decode,
/// a key whose tier is missing or whose value does not open, a consumer whose token hash is
/// malformed: each is left out and reported by table and id; everything else is served.
pub fn load_catalog(
    store: &Store,
    sealer: &Sealer,
    clock: &Clock,
) -> Result<(Catalog, Vec<Skipped>), StoreError> {
    let mut catalog = Catalog::default();
    let mut unplaced = Unplaced::default();
    let mut skipped = Vec::new();
    // Keys unavailable as a whole (cooling, exhausted), with when they may be back: benched
    // once every key is in place.
    let mut benched = Vec::new();
    let open = |record| match record {
        Record::Key(record) => match open_key(&record, sealer) {
            Ok(opened) => Loaded::Key(key_entry(&record, &opened, clock)),
            Err(err) => Loaded::Unopened(record, err),
        },
        other => Loaded::Other(other),
    };
    let missing_tier = |id: &str, tier_id: &str| Skipped {
        table: "keys",
        reason: format!("its tier {tier_id} does not exist"),
        id: id.to_owned(),
    };
    store.load_each_with(open, |loaded| match loaded {
        Loaded::Other(Record::Tier(record)) => {
            catalog.put_tier(tier_from_record(&record));
        }
        Loaded::Key(entry) if catalog.tier_by_id(&entry.info.tier_id).is_none() => {
            skipped.push(missing_tier(&entry.info.id, &entry.info.tier_id));
        }
        Loaded::Key(entry) => {
            let now = Now::read(clock);
            let health = entry.health.state();
            let id = std::sync::Arc::clone(&entry.info.id);
            if let Some(until) = health.out_of_rotation_until(now) {
                benched.push((std::sync::Arc::clone(&id), until));
            }
            catalog.put_key_unplaced(entry, &mut unplaced);
            catalog.note_recovery(&id, health.last_deadline(now));
        }
        Loaded::Unopened(record, _) if catalog.tier_by_id(&record.tier_id).is_none() => {
            skipped.push(missing_tier(&record.id, &record.tier_id));
        }
        Loaded::Unopened(record, err) => skipped.push(Skipped {
            table: "keys",
            reason: err.to_string(),
            id: record.id,
        }),
        Loaded::Other(Record::Key(_)) => unreachable!("keys are opened"),
        Loaded::Other(Record::Consumer(record)) => match consumer_from_record(&record) {
            Ok(consumer) => catalog.put_consumer(consumer),
            Err(reason) => skipped.push(Skipped {
                table: "consumers",
                id: record.id,
                reason,
            }),
        },
        Loaded::Other(Record::LeftOut(left_out)) => skipped.push(left_out),
    })?;
    catalog.place(unplaced);
    for (id, until) in benched {
        catalog.bench(&id, until);
    }
    Ok((catalog, skipped))
}

/// A record as start-up will read it back: encoded, then decoded.
fn reload<T: serde::Serialize + serde::de::DeserializeOwned>(
    table: &'static str,
    id: &str,
    record: &T,
) -> Result<T, Skipped> {
    decode(table, id, &encode(record)).map_err(|err| Skipped::from_error(table, id, err))
}

/// Checks that a tier about to be written loads at start-up as [`load_catalog`] loads it. The
/// import holds every record to these checks, so it never writes one start-up would leave out.
pub fn check_tier_loads(record: &TierRecord) -> Result<(), Skipped> {
    reload("tiers", &record.id, record).map(|loaded| drop(tier_from_record(&loaded)))
}

/// Checks that a key about to be written loads at start-up: it decodes and its sealed values
/// open (see [`check_tier_loads`]).
pub fn check_key_loads(record: &KeyRecord, sealer: &Sealer) -> Result<(), Skipped> {
    let loaded = reload("keys", &record.id, record)?;
    open_key(&loaded, sealer).map(drop).map_err(|err| Skipped {
        table: "keys",
        id: record.id.clone(),
        reason: err.to_string(),
    })
}

/// Checks that a consumer about to be written loads at start-up (see [`check_tier_loads`]).
pub fn check_consumer_loads(record: &ConsumerRecord) -> Result<(), Skipped> {
    let loaded = reload("consumers", &record.id, record)?;
    consumer_from_record(&loaded)
        .map(drop)
        .map_err(|reason| Skipped {
            table: "consumers",
            id: record.id.clone(),
            reason,
        })
}

/// A key's stored record, sealing its plaintext for its id.
pub fn key_record(info: &KeyInfo, plain: &Plaintext<'_>, sealer: &Sealer) -> KeyRecord {
    let mut record = KeyRecord {
        id: info.id.to_string(),
        name: info.name.to_string(),
        tier_id: info.tier_id.to_string(),
        active: info.active,
        created_at_ms: info.created_at_ms,
        expires_at_ms: info.expires_at_ms,
        ..KeyRecord::default()
    };
    seal_into(&mut record, plain, sealer);
    record
}

/// Puts `plain` in a key's record: its metadata as is, its value and secrets sealed for the
/// record's id (fresh nonces), the secrets replacing all it had.
pub fn seal_into(record: &mut KeyRecord, plain: &Plaintext<'_>, sealer: &Sealer) {
    record.metadata = plain.metadata.clone();
    record.value = Hex(sealer.seal(plain.value.as_bytes(), &value_aad(&record.id)));
    record.secrets = plain
        .secrets
        .iter()
        .map(|(name, value)| {
            let aad = secret_aad(&record.id, name);
            (name.clone(), Hex(sealer.seal(value.as_bytes(), &aad)))
        })
        .collect();
}
