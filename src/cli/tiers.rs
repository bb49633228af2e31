//! `keypooler tiers list|add|patch|delete`: a running server's tiers.

use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::{Map, Value, json};

use super::Failure;
use super::output::{OnServer, Session, Table, entries, text};
use crate::config::{ConfigError, Settings};

pub type TiersArgs = OnServer<Action>;

#[derive(Subcommand, Debug)]
pub enum Action {
    /// Every tier, by name.
    List,
    /// Create a tier.
    Add(Spec),
    /// Replace a tier's features (and description).
    Patch(Spec),
    /// Delete a tier that has no keys left.
    Delete {
        /// The tier's name.
        name: String,
    },
}

#[derive(Args, Debug)]
pub struct Spec {
    /// The tier's name.
    name: String,
    /// A feature and its limit per key: NAME=LIMIT (per minute) or NAME=LIMIT/SECONDS.
    /// Repeat for each feature.
    #[arg(long = "feature", value_name = "NAME=LIMIT[/SECONDS]", required = true)]
    features: Vec<String>,
    #[arg(long)]
    description: Option<String>,
}

impl Spec {
    fn body(&self) -> Result<Value, ConfigError> {
        let mut features = Map::new();
        for given in &self.features {
            let (name, limit) = parse_feature(given)?;
            features.insert(name, limit);
        }
        let mut body = json!({"name": self.name, "features": features});
        if let Some(description) = &self.description {
            body["description"] = description.as_str().into();
        }
        Ok(body)
    }
}

/// `chat=100` → `("chat", 100)`; `chat=5/10` → `("chat", {"rate_limit": 5, "window_seconds": 10})`.
/// The numbers go to the server as given; it checks their bounds.
fn parse_feature(given: &str) -> Result<(String, Value), ConfigError> {
    let invalid = || {
        ConfigError(format!(
            "--feature takes NAME=LIMIT or NAME=LIMIT/SECONDS, e.g. chat=100 or chat=5/10 (got {given:?})"
        ))
    };
    let (name, limit) = given.rsplit_once('=').ok_or_else(invalid)?;
    let number = |text: &str| text.trim().parse::<u64>().map_err(|_| invalid());
    let limit = match limit.split_once('/') {
        Some((rate, window)) => {
            json!({"rate_limit": number(rate)?, "window_seconds": number(window)?})
        }
        None => json!(number(limit)?),
    };
    Ok((name.to_owned(), limit))
}

pub(super) fn run(settings: &Settings, args: &TiersArgs) -> Result<(), Failure> {
    let session = Session::new(settings, args)?;
    match &args.action {
        Action::List => {
            let tiers = session.call(Method::GET, "/admin/tiers", None)?;
            session.show(&tiers, table);
        }
        Action::Add(spec) => {
            let tier = session.call(Method::POST, "/admin/tiers", Some(spec.body()?))?;
            session.show(&tier, table);
        }
        Action::Patch(spec) => {
            let tier = session.call(Method::PATCH, "/admin/tiers", Some(spec.body()?))?;
            session.show(&tier, table);
        }
        Action::Delete { name } => session.delete("tier", "/admin/tiers", name)?,
    }
    Ok(())
}

fn table(tiers: &Value) -> Table {
    Table::of(
        &["NAME", "FEATURES", "DESCRIPTION", "ID"],
        tiers,
        |tier, column| match column {
            0 => text(tier, "name"),
            1 => entries(&tier["features"], |limit| {
                format!("{}/{}s", limit["rate_limit"], limit["window_seconds"])
            }),
            2 => text(tier, "description"),
            _ => text(tier, "id"),
        },
    )
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_feature_is_a_name_and_a_limit() {
        assert_eq!(
            parse_feature("chat=100").unwrap(),
            ("chat".into(), json!(100))
        );
        assert_eq!(
            parse_feature("a=b=5/10").unwrap(),
            ("a=b".into(), json!({"rate_limit": 5, "window_seconds": 10}))
        );
        for bad in ["chat", "chat=", "chat=x", "chat=5/", "chat=-1"] {
            assert!(parse_feature(bad).is_err(), "{bad}");
        }
    }
}
