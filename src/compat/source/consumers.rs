//! `consumers` and `consumer_scopes`: the consumers, each with the tiers it may draw from.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::super::CompatError;
use super::Reader;
use super::cells::{Cells, Select};
use crate::store::{ConsumerRecord, Hex};

impl Reader<'_> {
    /// Every consumer (none when the file has no `consumers` table, as the seed schema has not),
    /// its scopes checked against `tier_ids`.
    pub(super) fn read_consumers(
        &self,
        tier_ids: &HashSet<String>,
    ) -> Result<Vec<ConsumerRecord>, CompatError> {
        let Some(columns) = self.columns("consumers")? else {
            return Ok(Vec::new());
        };
        let select = Select::from("consumers", &["id"])
            .column("name")
            .column("token_hash")
            .optional("description", &columns)
            .optional("is_active", &columns)
            .optional("created_at", &columns);
        let mut consumers: Vec<ConsumerRecord> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut names = BTreeSet::new();
        let mut hashes = BTreeSet::new();
        self.each_row(&select, |cells| {
            let consumer = ConsumerRecord {
                id: cells.id("id")?,
                name: cells.name("name")?,
                description: cells.description()?,
                token_hash: token_hash(cells)?,
                active: cells.flag("is_active", true)?,
                created_at_ms: cells.opt_time("created_at")?.unwrap_or(0),
                scopes: Vec::new(),
            };
            if index.contains_key(&consumer.id) {
                return Err(cells.fail("the id appears twice"));
            }
            if !names.insert(consumer.name.clone()) {
                return Err(cells.fail("another consumer has the same name"));
            }
            if !hashes.insert(consumer.token_hash.0.clone()) {
                return Err(cells.fail("another consumer has the same token_hash"));
            }
            index.insert(consumer.id.clone(), consumers.len());
            consumers.push(consumer);
            Ok(())
        })?;
        if self.columns("consumer_scopes")?.is_some() {
            self.read_scopes(&mut consumers, &index, tier_ids)?;
        }
        Ok(consumers)
    }

    fn read_scopes(
        &self,
        consumers: &mut [ConsumerRecord],
        index: &HashMap<String, usize>,
        tier_ids: &HashSet<String>,
    ) -> Result<(), CompatError> {
        let select = Select::from("consumer_scopes", &["consumer_id", "tier_id"]);
        self.each_row(&select, |cells| {
            let consumer = index
                .get(&cells.id("consumer_id")?)
                .map(|&i| &mut consumers[i])
                .ok_or_else(|| cells.fail("consumer_id names no consumer in the file"))?;
            let tier_id = cells.id("tier_id")?;
            if !tier_ids.contains(&tier_id) {
                return Err(cells.fail("tier_id names no tier in the file"));
            }
            if !consumer.scopes.contains(&tier_id) {
                consumer.scopes.push(tier_id);
            }
            Ok(())
        })
    }
}

/// A SHA-256 as 64 hex characters (either case).
fn token_hash(cells: &Cells<'_>) -> Result<Hex, CompatError> {
    let text = cells.text("token_hash")?;
    let mut hash = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut hash)
        .map_err(|_| cells.fail("token_hash is not a SHA-256 (64 hex characters)"))?;
    Ok(Hex(hash.to_vec()))
}
