//! `keypooler keys list|add|patch|delete`: a running server's keys. A key's value and its
//! secrets are read from a file or stdin (`--value-file -`), never from the command line.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::{Map, Value};

use super::Failure;
use super::output::{
    OnServer, Paging, Session, Table, entries, read_secret, read_value, segment, text,
};
use crate::config::{ConfigError, Settings};

pub type KeysArgs = OnServer<Action>;

#[derive(Subcommand, Debug)]
pub enum Action {
    /// Every key with its state and live usage (never its value).
    List(Paging),
    /// Add a key; its value is read from --value-file.
    Add(AddKey),
    /// Change a key: any of the options given, nothing else.
    Patch(PatchKey),
    /// Delete a key: it is never served again.
    Delete {
        /// The key's id.
        id: String,
    },
}

#[derive(Args, Debug)]
pub struct AddKey {
    #[arg(long)]
    name: String,
    /// The tier's name or id.
    #[arg(long)]
    tier: String,
    /// The file holding the key's value, `-` for stdin (one trailing line ending is dropped).
    #[arg(long, value_name = "FILE")]
    value_file: PathBuf,
    #[command(flatten)]
    fields: Fields,
}

#[derive(Args, Debug)]
pub struct PatchKey {
    /// The key's id.
    id: String,
    #[arg(long)]
    name: Option<String>,
    /// Replace the key's value (rotate it in place) with the one in FILE, `-` for stdin.
    #[arg(long, value_name = "FILE")]
    value_file: Option<PathBuf>,
    /// `false` stops serving the key; `true` serves it again.
    #[arg(long)]
    active: Option<bool>,
    #[command(flatten)]
    fields: Fields,
}

/// The fields `add` and `patch` share.
#[derive(Args, Debug)]
pub struct Fields {
    /// RFC 3339; the key is not served from then on (`none`: no expiry).
    #[arg(long, value_name = "TIME")]
    expires_at: Option<String>,
    /// Total uses (per --usage-window-seconds, else for the key's lifetime).
    #[arg(long)]
    usage_limit: Option<u64>,
    #[arg(long)]
    usage_window_seconds: Option<u64>,
    /// A JSON object, returned with the key by GET /key.
    #[arg(long, value_name = "JSON")]
    metadata: Option<String>,
    /// A file holding a JSON object of secret names and values, `-` for stdin; sealed like the
    /// key, returned with it by GET /key.
    #[arg(long, value_name = "FILE")]
    secrets_file: Option<PathBuf>,
}

impl Fields {
    /// Adds the fields given to `body`.
    fn add_to(&self, body: &mut Map<String, Value>) -> Result<(), Failure> {
        if let Some(at) = &self.expires_at {
            let at = if at == "none" {
                Value::Null
            } else {
                at.as_str().into()
            };
            body.insert("expires_at".into(), at);
        }
        if let Some(limit) = self.usage_limit {
            body.insert("usage_limit".into(), limit.into());
        }
        if let Some(window) = self.usage_window_seconds {
            body.insert("usage_window_seconds".into(), window.into());
        }
        if let Some(metadata) = &self.metadata {
            let metadata: Map<String, Value> = serde_json::from_str(metadata)
                .map_err(|_| ConfigError("--metadata must be a JSON object".into()))?;
            body.insert("metadata".into(), metadata.into());
        }
        if let Some(path) = &self.secrets_file {
            let text = read_secret(path)?;
            let secrets: Map<String, Value> = serde_json::from_str(&text).map_err(|_| {
                ConfigError(format!(
                    "{} must hold a JSON object of secret names and values",
                    path.display()
                ))
            })?;
            body.insert("secrets".into(), secrets.into());
        }
        Ok(())
    }
}

/// Both from stdin cannot be told apart.
fn one_stdin(value: Option<&Path>, secrets: Option<&Path>) -> Result<(), ConfigError> {
    let stdin = Path::new("-");
    if value == Some(stdin) && secrets == Some(stdin) {
        return Err(ConfigError(
            "--value-file and --secrets-file cannot both read stdin".into(),
        ));
    }
    Ok(())
}

pub(super) fn run(settings: &Settings, args: &KeysArgs) -> Result<(), Failure> {
    let session = Session::new(settings, args)?;
    match &args.action {
        Action::List(paging) => {
            let keys = session.list("/admin/keys", paging)?;
            session.show(&keys, table);
        }
        Action::Add(add) => {
            one_stdin(Some(&add.value_file), add.fields.secrets_file.as_deref())?;
            let mut body = Map::new();
            body.insert("name".into(), add.name.as_str().into());
            body.insert("tier".into(), add.tier.as_str().into());
            body.insert("key".into(), read_value(&add.value_file)?.as_str().into());
            add.fields.add_to(&mut body)?;
            let added = session.call(Method::POST, "/admin/keys", Some(Value::Object(body)))?;
            session.show(&added, |key| {
                Table::of(&["ID", "NAME", "TIER"], key, |key, column| {
                    text(key, ["id", "name", "tier"][column])
                })
            });
        }
        Action::Patch(patch) => {
            one_stdin(
                patch.value_file.as_deref(),
                patch.fields.secrets_file.as_deref(),
            )?;
            let mut body = Map::new();
            if let Some(name) = &patch.name {
                body.insert("name".into(), name.as_str().into());
            }
            if let Some(path) = &patch.value_file {
                body.insert("key".into(), read_value(path)?.as_str().into());
            }
            if let Some(active) = patch.active {
                body.insert("is_active".into(), active.into());
            }
            patch.fields.add_to(&mut body)?;
            if body.is_empty() {
                return Err(ConfigError("keys patch: nothing to change".into()).into());
            }
            let path = format!("/admin/keys/{}", segment(&patch.id));
            let key = session.call(Method::PATCH, &path, Some(Value::Object(body)))?;
            session.show(&key, table);
        }
        Action::Delete { id } => session.delete("key", "/admin/keys", id)?,
    }
    Ok(())
}

fn table(keys: &Value) -> Table {
    let header = ["ID", "NAME", "TIER", "STATE", "USAGE"];
    Table::of(&header, keys, |key, column| match column {
        0 => text(key, "id"),
        1 => text(key, "name"),
        2 => text(key, "tier"),
        3 => state(key),
        // Uses in the current window, of the limit: `chat=1/100 image=0/5`.
        _ => entries(&key["usage"], |window| {
            format!("{}/{}", window["used"], window["limit"])
        }),
    })
}

/// The key's `state` where the server says it, else whether it is active.
fn state(key: &Value) -> String {
    match (&key["state"], &key["is_active"]) {
        (Value::String(state), _) => state.clone(),
        (_, Value::Bool(false)) => "inactive".into(),
        _ => "active".into(),
    }
}
