//! `keypooler rekey`: rotates `ENCRYPTION_KEY`. Offline: it refuses a database a server holds.
//! The work (one redb transaction) is [`crate::store::reseal_file`].

use clap::Args;

use super::Failure;
use crate::config::{ConfigError, Settings, encryption_key_setting};
use crate::crypto::Sealer;
use crate::store::{Resealed, reseal_file};

#[derive(Args, Default)]
pub struct RekeyArgs {
    /// The key to re-seal everything under: 64 hex characters. Prefer the environment variable.
    #[arg(long, env = "NEW_ENCRYPTION_KEY", hide_env_values = true)]
    pub new_encryption_key: Option<String>,
}

impl std::fmt::Debug for RekeyArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RekeyArgs")
            .field(
                "new_encryption_key",
                &self.new_encryption_key.as_ref().map(|_| "[REDACTED]"),
            )
            .finish()
    }
}

/// Re-seals the database at `DB_PATH` from `ENCRYPTION_KEY` to `NEW_ENCRYPTION_KEY` and prints
/// a one-line summary.
pub(super) fn run(settings: &Settings, args: &RekeyArgs) -> Result<(), Failure> {
    let old = settings.encryption_key()?;
    let new = encryption_key_setting("NEW_ENCRYPTION_KEY", args.new_encryption_key.as_ref())?;
    if constant_time_eq::constant_time_eq(old.to_hex().as_bytes(), new.to_hex().as_bytes()) {
        return Err(
            ConfigError("NEW_ENCRYPTION_KEY must differ from ENCRYPTION_KEY".into()).into(),
        );
    }
    let path = settings.db_path();
    let outcome =
        reseal_file(&path, &Sealer::new(&old), &Sealer::new(&new)).map_err(anyhow::Error::from)?;
    match outcome {
        Resealed::Done {
            keys,
            secrets,
            records,
            left_out,
        } => {
            for skip in &left_out {
                eprintln!(
                    "record {}/{} left as it was: {}",
                    skip.table, skip.id, skip.reason
                );
            }
            println!(
                "rekeyed {}: {keys} keys, {secrets} secrets and the canary re-sealed, {records} records re-signed under NEW_ENCRYPTION_KEY ({} left out); start the server with it as ENCRYPTION_KEY",
                path.display(),
                left_out.len()
            );
        }
        Resealed::AlreadyDone => println!(
            "{} is already sealed under NEW_ENCRYPTION_KEY; nothing changed",
            path.display()
        ),
    }
    Ok(())
}
