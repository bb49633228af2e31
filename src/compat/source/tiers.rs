//! `tiers` and `tier_features`: the tiers, each with its limit per feature.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::super::CompatError;
use super::cells::Select;
use super::{Columns, Generation, Reader};
use crate::broker::{DEFAULT_WINDOW_SECONDS, parse_limit};
use crate::store::{LimitRecord, TierRecord};

impl Reader<'_> {
    /// Every tier, with the features `tier_features` lists for it.
    pub(super) fn read_tiers(
        &self,
        columns: &Columns,
        generation: &Generation,
    ) -> Result<Vec<TierRecord>, CompatError> {
        let select = Select::from("tiers", &["id"])
            .column("name")
            .optional("description", &columns.tiers)
            .optional("created_at", &columns.tiers);
        let mut tiers: Vec<TierRecord> = Vec::new();
        let mut names = BTreeSet::new();
        let mut ids = BTreeSet::new();
        self.each_row(&select, |cells| {
            let tier = TierRecord {
                id: cells.id("id")?,
                name: cells.name("name")?,
                description: cells.description()?,
                created_at_ms: cells.opt_time("created_at")?.unwrap_or(0),
                features: BTreeMap::new(),
            };
            if !ids.insert(tier.id.clone()) {
                return Err(cells.fail("the id appears twice"));
            }
            if !names.insert(tier.name.clone()) {
                return Err(cells.fail("another tier has the same name"));
            }
            tiers.push(tier);
            Ok(())
        })?;
        self.read_features(&mut tiers, columns, generation.rate_column)?;
        Ok(tiers)
    }

    fn read_features(
        &self,
        tiers: &mut [TierRecord],
        columns: &Columns,
        rate_column: &str,
    ) -> Result<(), CompatError> {
        let index: HashMap<String, usize> = tiers
            .iter()
            .enumerate()
            .map(|(i, tier)| (tier.id.clone(), i))
            .collect();
        let select = Select::from("tier_features", &["tier_id", "feature"])
            .column(rate_column)
            .optional("window_seconds", &columns.tier_features);
        self.each_row(&select, |cells| {
            let tier_id = cells.id("tier_id")?;
            let tier = index
                .get(&tier_id)
                .map(|&i| &mut tiers[i])
                .ok_or_else(|| cells.fail("tier_id names no tier in the file"))?;
            let feature = cells.name("feature")?;
            let rate = cells
                .opt_int(rate_column)?
                .ok_or_else(|| cells.fail(format!("{rate_column} is missing")))?;
            let window = cells
                .opt_int("window_seconds")?
                .unwrap_or(i64::from(DEFAULT_WINDOW_SECONDS));
            let limit = parse_limit("limit", i128::from(rate), i128::from(window))
                .map_err(|err| cells.fail(err.0))?;
            let record = LimitRecord {
                rate_limit: limit.rate_limit,
                window_seconds: limit.window_seconds,
            };
            if tier.features.insert(feature, record).is_some() {
                return Err(cells.fail("the tier lists this feature twice"));
            }
            Ok(())
        })
    }
}
