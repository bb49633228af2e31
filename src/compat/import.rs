//! Writing what was read from a source file into our redb database, in one transaction.

use std::collections::{HashMap, HashSet};

use indicatif::ProgressBar;

use super::source::{SourceContents, SourceKey};
use super::{CompatError, Schema};
use crate::broker::Plaintext;
use crate::crypto::Sealer;
use crate::store::{
    AUDIT_RETENTION, Contents, KeyRecord, SignedKey, Skipped, Store, check_consumer_loads,
    check_key_loads, check_tier_loads, key_record, map_on_cores,
};

/// Keys sealed and signed together on every core before they are written.
const CHUNK: usize = 4096;

/// What to do when the target database already holds tiers, keys or consumers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ImportMode {
    /// Refuse: importing over data needs an explicit choice.
    #[default]
    Refuse,
    /// Keep what is there; rows whose id is already present are skipped. An imported consumer
    /// may be scoped only to tiers the import creates, and its token hash must be new.
    Merge,
    /// Delete every tier, key and consumer first (in the same transaction).
    Replace,
}

/// What an import did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImportSummary {
    pub schema: Schema,
    pub tiers: usize,
    pub keys: usize,
    pub consumers: usize,
    /// Rows skipped by `--merge` because their id was already present.
    pub skipped: usize,
    /// Audit events imported (the newest of the source's `usage_events`).
    pub usage_events: u64,
    /// Older audit events, beyond what the audit trail keeps, not imported.
    pub usage_events_left_out: u64,
    /// Rows of the source's `spend_events`, not imported.
    pub spend_events: u64,
}

/// Writes what was read from a source file into `store` (values sealed with `sealer`), in one
/// transaction: on any error nothing is written. Reading the source first (see
/// [`read_source`](super::read_source)) means a bad file never touches the target at all.
pub fn import(
    source: &SourceContents,
    store: &Store,
    sealer: &Sealer,
    mode: ImportMode,
    progress: &ProgressBar,
) -> Result<ImportSummary, CompatError> {
    let existing = store.load()?;
    let empty =
        existing.tiers.is_empty() && existing.keys.is_empty() && existing.consumers.is_empty();
    if mode == ImportMode::Refuse && !empty {
        return Err(CompatError::TargetNotEmpty {
            path: store.path().into(),
            tiers: existing.tiers.len(),
            keys: existing.keys.len(),
            consumers: existing.consumers.len(),
        });
    }
    let kept = if mode == ImportMode::Replace {
        Contents::default()
    } else {
        existing
    };
    progress.set_message("writing");
    progress.set_length(source.keys.len() as u64);
    progress.set_position(0);
    write(source, store, sealer, mode, &kept, progress)
}

fn write(
    source: &SourceContents,
    store: &Store,
    sealer: &Sealer,
    mode: ImportMode,
    kept: &Contents,
    progress: &ProgressBar,
) -> Result<ImportSummary, CompatError> {
    // A record of the target left out (unsigned, or it does not decode) still holds its id: a row
    // with that id is skipped like any other already present, never written over it.
    let left_out = |table: &'static str| {
        kept.left_out
            .iter()
            .filter(move |skip| skip.table == table)
            .map(|skip| skip.id.as_str())
    };
    let tier_ids: HashSet<&str> = kept
        .tiers
        .iter()
        .map(|t| t.id.as_str())
        .chain(left_out("tiers"))
        .collect();
    let consumer_ids: HashSet<&str> = kept
        .consumers
        .iter()
        .map(|c| c.id.as_str())
        .chain(left_out("consumers"))
        .collect();
    let tier_names: HashMap<&str, &str> = kept
        .tiers
        .iter()
        .map(|t| (t.name.as_str(), t.id.as_str()))
        .collect();
    let consumer_names: HashMap<&str, &str> = kept
        .consumers
        .iter()
        .map(|c| (c.name.as_str(), c.id.as_str()))
        .collect();
    let key_ids: HashSet<&str> = kept
        .keys
        .iter()
        .map(|k| k.id.as_str())
        .chain(left_out("keys"))
        .collect();
    let token_hashes: HashSet<&[u8]> = kept
        .consumers
        .iter()
        .map(|c| c.token_hash.0.as_slice())
        .collect();
    // The tiers this import writes: the only ones an imported consumer may be scoped to.
    let mut created: HashSet<&str> = HashSet::new();
    let mut summary = ImportSummary {
        schema: source.schema,
        tiers: 0,
        keys: 0,
        consumers: 0,
        skipped: 0,
        usage_events: source.usage.len() as u64,
        usage_events_left_out: source.usage_dropped,
        spend_events: source.spend_events,
    };
    let batch = store.begin()?;
    if mode == ImportMode::Replace {
        batch.clear()?;
    }
    for tier in &source.tiers {
        if tier_ids.contains(tier.id.as_str()) {
            summary.skipped += 1;
            continue;
        }
        if tier_names.contains_key(tier.name.as_str()) {
            return Err(CompatError::row(
                "tiers",
                tier.id.clone(),
                format!(
                    "a tier named {:?} is already in the database under another id",
                    tier.name
                ),
            ));
        }
        check_tier_loads(tier).map_err(would_not_load)?;
        batch.put_tier(tier)?;
        created.insert(tier.id.as_str());
        summary.tiers += 1;
    }
    // Sealing, checking and signing a key is most of an import's work: done on every core, a
    // chunk at a time, while the previous chunk goes into the transaction.
    let prepare = |key: &SourceKey| -> Result<Option<SignedKey>, CompatError> {
        if key_ids.contains(&*key.info.id) {
            return Ok(None);
        }
        let plain = Plaintext {
            value: &key.value,
            metadata: &key.metadata,
            secrets: &key.secrets,
        };
        let record = KeyRecord {
            usage_limit: key.usage_limit,
            usage_window_seconds: key.usage_window_seconds,
            usage_count: key.usage_count,
            usage_window_start_ms: key.usage_window_start_ms,
            exhausted_until_ms: key.exhausted_until_ms,
            budget: key.budget.clone(),
            spent_nanos: key.spent_nanos,
            spent_period_start_ms: key.spent_period_start_ms,
            ..key_record(&key.info, &plain, sealer)
        };
        check_key_loads(&record, sealer).map_err(would_not_load)?;
        Ok(Some(store.sign_key(&record)))
    };
    let mut signed: Vec<SignedKey> = Vec::new();
    for chunk in source.keys.chunks(CHUNK) {
        let (prepared, written) = map_on_cores(chunk, prepare, || {
            let written = batch.put_signed_keys(&signed);
            progress.inc(signed.len() as u64);
            written
        });
        written?;
        signed.clear();
        for key in prepared {
            match key? {
                Some(key) => signed.push(key),
                None => {
                    summary.skipped += 1;
                    progress.inc(1);
                }
            }
        }
        summary.keys += signed.len();
    }
    batch.put_signed_keys(&signed)?;
    progress.inc(signed.len() as u64);
    for consumer in &source.consumers {
        if consumer_ids.contains(consumer.id.as_str()) {
            summary.skipped += 1;
            continue;
        }
        if consumer_names.contains_key(consumer.name.as_str()) {
            return Err(CompatError::row(
                "consumers",
                consumer.id.clone(),
                format!(
                    "a consumer named {:?} is already in the database under another id",
                    consumer.name
                ),
            ));
        }
        if token_hashes.contains(consumer.token_hash.0.as_slice()) {
            return Err(CompatError::row(
                "consumers",
                consumer.id.clone(),
                "its token_hash is already the token of a consumer in the database",
            ));
        }
        if let Some(tier) = consumer
            .scopes
            .iter()
            .find(|tier| !created.contains(tier.as_str()))
        {
            return Err(CompatError::row(
                "consumer_scopes",
                format!("{}/{tier}", consumer.id),
                "the tier is already in the database (its row was skipped): an imported consumer may draw only from tiers the import creates; scope it with POST /admin/consumers/{id}/scopes if it should",
            ));
        }
        check_consumer_loads(consumer).map_err(would_not_load)?;
        batch.put_consumer(consumer)?;
        summary.consumers += 1;
    }
    batch.append_usage(&source.usage, AUDIT_RETENTION)?;
    batch.commit()?;
    Ok(summary)
}

/// A row whose record start-up would leave out: refused, naming it, before anything is written.
fn would_not_load(skipped: Skipped) -> CompatError {
    CompatError::row(
        skipped.table,
        skipped.id,
        format!(
            "keypooler could not load it back once stored: {}",
            skipped.reason
        ),
    )
}
