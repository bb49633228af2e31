//! Key rotation: every key value, bound secret and the canary re-sealed under a new key in one
//! redb write transaction. A crash before the commit leaves the file entirely under the old
//! key; after it, entirely under the new one. Never a mix.

use std::path::Path;

use redb::ReadableTable;

use super::{
    CANARY_AAD, CANARY_KEY, CANARY_TEXT, Hex, KEYS, KeyRecord, META, Store, StoreError, decode,
    encode, secret_aad, value_aad,
};
use crate::crypto::Sealer;

/// What a rekey did.
#[derive(Debug, PartialEq, Eq)]
pub enum Rekeyed {
    /// Re-sealed, and committed.
    Done { keys: usize, secrets: usize },
    /// The file already opens under the new key only (a rekey that committed before): nothing
    /// to do, so running rekey again after a crash is safe.
    AlreadyDone,
}

/// Re-seals the database at `path` from `old` to `new`. Refuses (changing nothing) a missing
/// file, a file in use by a server, a wrong old key, or a key that does not open under `old`.
pub fn rekey(path: &Path, old: &Sealer, new: &Sealer) -> Result<Rekeyed, StoreError> {
    let store = match Store::open_existing(path, old) {
        Err(StoreError::WrongKey(_)) if Store::open(path, new).is_ok() => {
            return Ok(Rekeyed::AlreadyDone);
        }
        opened => opened?,
    };
    store.reseal(old, new)
}

impl Store {
    fn reseal(&self, old: &Sealer, new: &Sealer) -> Result<Rekeyed, StoreError> {
        let txn = self.db().begin_write()?;
        let (mut keys, mut secrets) = (0, 0);
        {
            let mut table = txn.open_table(KEYS)?;
            let mut records = Vec::new();
            for entry in table.iter()? {
                let (id, bytes) = entry?;
                records.push(decode::<KeyRecord>("keys", id.value(), bytes.value())?);
            }
            for mut record in records {
                let id = record.id.clone();
                record.value = reseal(&id, &record.value, &value_aad(&id), old, new)?;
                for (name, sealed) in &mut record.secrets {
                    *sealed = reseal(&id, sealed, &secret_aad(&id, name), old, new)?;
                    secrets += 1;
                }
                table.insert(id.as_str(), encode(&record).as_slice())?;
                keys += 1;
            }
            txn.open_table(META)?
                .insert(CANARY_KEY, new.seal(CANARY_TEXT, CANARY_AAD).as_slice())?;
        }
        txn.commit()?;
        Ok(Rekeyed::Done { keys, secrets })
    }
}

/// Opens one sealed field under `old` and seals it under `new`, for the same record and field.
fn reseal(
    id: &str,
    sealed: &Hex,
    aad: &[u8],
    old: &Sealer,
    new: &Sealer,
) -> Result<Hex, StoreError> {
    let plain = old
        .open(&sealed.0, aad)
        .map_err(|err| StoreError::BadRecord {
            table: "keys",
            id: id.to_owned(),
            reason: format!(
                "{err}; delete the key or restore it, then rekey (nothing was changed)"
            ),
        })?;
    Ok(Hex(new.seal(&plain, aad)))
}
