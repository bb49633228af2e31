//! `keypooler consumers list|add|patch|delete`: a running server's consumers, their tiers and
//! their tokens. A token is printed once, when it is made; the server keeps only its hash.

use clap::Subcommand;
use hyper::Method;
use serde_json::{Value, json};

use super::Failure;
use super::output::{OnServer, Paging, Session, Table, segment, text};
use crate::config::{ConfigError, Settings};

pub type ConsumersArgs = OnServer<Action>;

#[derive(Subcommand, Debug)]
pub enum Action {
    /// Every consumer with its tiers.
    List(Paging),
    /// Create a consumer and print its token (shown this once).
    Add {
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// A tier (name or id) it may draw keys from; repeat for each.
        #[arg(long = "scope", value_name = "TIER")]
        scopes: Vec<String>,
    },
    /// Change a consumer's tiers, or give it a new token (the old one stops working at once).
    Patch {
        /// The consumer's id.
        id: String,
        /// A tier it may now draw keys from; repeat for each.
        #[arg(long, value_name = "TIER")]
        add_scope: Vec<String>,
        /// A tier it may no longer draw keys from; repeat for each.
        #[arg(long, value_name = "TIER")]
        remove_scope: Vec<String>,
        /// Make a new token and print it (shown this once).
        #[arg(long)]
        new_token: bool,
    },
    /// Delete a consumer: its token stops working.
    Delete {
        /// The consumer's id.
        id: String,
    },
}

pub(super) fn run(settings: &Settings, args: &ConsumersArgs) -> Result<(), Failure> {
    let session = Session::new(settings, args)?;
    match &args.action {
        Action::List(paging) => {
            let consumers = session.list("/admin/consumers", paging)?;
            session.show(&consumers, table);
        }
        Action::Add {
            name,
            description,
            scopes,
        } => {
            let mut body = json!({"name": name});
            if let Some(description) = description {
                body["description"] = description.as_str().into();
            }
            let created = session.call(Method::POST, "/admin/consumers", Some(body))?;
            let id = text(&created, "id");
            // Each scope added answers the consumer as it then stands; without one, the
            // creation's answer is what there is to show.
            match add_scopes(&session, &id, scopes)? {
                Some(mut shown) => {
                    shown["token"] = created["token"].clone();
                    session.show(&shown, table_with_token);
                }
                None => session.show(&created, |created| {
                    Table::of(&["ID", "NAME", TOKEN], created, |created, column| {
                        text(created, ["id", "name", "token"][column])
                    })
                }),
            }
        }
        Action::Patch {
            id,
            add_scope,
            remove_scope,
            new_token,
        } => {
            if add_scope.is_empty() && remove_scope.is_empty() && !new_token {
                return Err(ConfigError("consumers patch: nothing to change".into()).into());
            }
            let mut shown = add_scopes(&session, id, add_scope)?;
            for tier in remove_scope {
                let path = format!("/admin/consumers/{}/scopes/{}", segment(id), segment(tier));
                shown = Some(session.call(Method::DELETE, &path, None)?);
            }
            if !new_token {
                // A scope was added or removed: `shown` is the last answer.
                session.show(&shown.unwrap_or_default(), table);
                return Ok(());
            }
            let path = format!("/admin/consumers/{}/token", segment(id));
            let rotated = session.call(Method::POST, &path, None)?;
            match shown {
                Some(mut shown) => {
                    shown["token"] = rotated["token"].clone();
                    session.show(&shown, table_with_token);
                }
                None => session.show(&rotated, |rotated| {
                    Table::of(&["ID", TOKEN], rotated, |rotated, column| {
                        text(rotated, ["id", "token"][column])
                    })
                }),
            }
        }
        Action::Delete { id } => session.delete("consumer", "/admin/consumers", id)?,
    }
    Ok(())
}

/// Adds each of `tiers` to the consumer's scopes; the consumer as the last one left it.
fn add_scopes(session: &Session, id: &str, tiers: &[String]) -> Result<Option<Value>, Failure> {
    let path = format!("/admin/consumers/{}/scopes", segment(id));
    let mut consumer = None;
    for tier in tiers {
        let body = json!({"tier": tier});
        consumer = Some(session.call(Method::POST, &path, Some(body))?);
    }
    Ok(consumer)
}

const COLUMNS: [&str; 5] = ["ID", "NAME", "ACTIVE", "SCOPES", "DESCRIPTION"];

fn cell(consumer: &Value, column: usize) -> String {
    match column {
        0 => text(consumer, "id"),
        1 => text(consumer, "name"),
        2 => text(consumer, "is_active"),
        3 => consumer["scopes"]
            .as_array()
            .map(|scopes| {
                let names: Vec<String> = scopes
                    .iter()
                    .map(|s| s.as_str().unwrap_or("").to_owned())
                    .collect();
                names.join(",")
            })
            .unwrap_or_default(),
        4 => text(consumer, "description"),
        _ => text(consumer, "token"),
    }
}

fn table(consumers: &Value) -> Table {
    Table::of(&COLUMNS, consumers, cell)
}

/// The header of a token's column.
const TOKEN: &str = "TOKEN (shown once)";

fn table_with_token(consumer: &Value) -> Table {
    let mut header = COLUMNS.to_vec();
    header.push(TOKEN);
    Table::of(&header, consumer, cell)
}
