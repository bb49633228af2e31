//! Adding and deleting keys.

use std::sync::Arc;

use super::Staging;
use super::usage::store_window;
use crate::broker::LIFETIME;
use crate::broker::to_cap_seconds;
use crate::broker::{KeyEntry, KeyInfo, NewKey, UsageCap};
use crate::store::key_record;
use crate::writer::WriteError;
use crate::writer::change_log::Change;

pub(super) fn add_key(s: &mut Staging<'_>, new: &NewKey) -> Result<Arc<KeyEntry>, WriteError> {
    let tier = s
        .catalog
        .tier_by_name(new.tier())
        .or_else(|| s.catalog.tier_by_id(new.tier()))
        .ok_or_else(|| WriteError::TierNotFound(new.tier().to_owned()))?;
    let tier_id = Arc::clone(&tier.id);
    let tier = Arc::clone(&tier.name);
    let info = KeyInfo {
        id: uuid::Uuid::new_v4().to_string().into(),
        name: new.name().into(),
        tier_id,
        active: true,
        created_at_ms: s.next_created_ms(),
        expires_at_ms: new.expires_at_ms(),
    };
    let plain = new.plaintext();
    let mut record = key_record(&info, &plain, s.sealer);
    let cap = new.usage_limit().map(|limit| {
        // The first chunk is reserved with the key, in the same commit.
        let window = new.usage_window_seconds();
        let now_ms = s.clock.now_ms();
        let end_s = window.map_or(LIFETIME, |window| {
            to_cap_seconds(now_ms).saturating_add(window)
        });
        let reserved = UsageCap::chunk_for(limit).min(limit);
        record.usage_limit = Some(limit.into());
        record.usage_window_seconds = window.map(u64::from);
        record.usage_count = reserved.into();
        if let Some(window) = window {
            store_window(&mut record, s.clock, end_s, window);
        }
        UsageCap::new(limit, window, end_s, reserved, 0)
    });
    s.txn.put_key(&record)?;
    let entry = KeyEntry::new(info, &plain, cap);
    let id = Arc::clone(&entry.info.id);
    s.dirty.extend(s.catalog.put_key(entry));
    let key = Arc::clone(s.catalog.key(&id).expect("the key was just added"));
    s.changes.push(Change::KeyAdded {
        key: Arc::clone(&key),
        tier,
    });
    Ok(key)
}

pub(super) fn delete_key(s: &mut Staging<'_>, id: &str) -> Result<(), WriteError> {
    let key = s
        .catalog
        .key(id)
        .cloned()
        .ok_or_else(|| WriteError::KeyNotFound(id.to_owned()))?;
    s.txn.delete_key(id)?;
    let tier = s
        .catalog
        .tier_by_id(&key.info.tier_id)
        .map_or_else(|| Arc::from(""), |tier| Arc::clone(&tier.name));
    s.dirty.extend(s.catalog.remove_key(id));
    s.changes.push(Change::KeyDeleted { key, tier });
    Ok(())
}
