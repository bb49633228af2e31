//! What the commands that manage a running server share beyond the client: the connection
//! arguments, tables or JSON on stdout, and secrets read from a file or stdin (never argv,
//! which every user of the machine can read).

use std::io::{Read, Write};
use std::path::Path;

use anyhow::Context;
use clap::{Args, Subcommand};
use hyper::Method;
use secrecy::SecretString;
use serde_json::Value;
use zeroize::Zeroizing;

use super::client::{Server, block_on, one_line};
use crate::config::{ConfigError, Settings};

/// A command on a running server: what to do, where the server is, how to print its answers.
#[derive(Args, Debug)]
pub struct OnServer<A: Subcommand> {
    #[command(subcommand)]
    pub action: A,
    /// The running server, as http://host:port [default: http://127.0.0.1:8080].
    #[arg(long, env = "KEYPOOLER_URL", global = true)]
    pub url: Option<String>,
    /// Print the server's JSON answer instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// How a listing is read: a page at a time, following each page's `Link` to the next, rather
/// than the whole listing in one answer: each answer stays small whatever the pool's size (no
/// body limit to raise, no long silence on a slow link). Pages are not one snapshot: an item
/// added or deleted while the command reads may or may not show, and moves no other (pages
/// follow the order by id).
#[derive(Args, Debug)]
pub struct Paging {
    /// Items asked for per request, 1 to 1000.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..=1000))]
    page_size: u16,
}

/// A connected command: the server, the admin token, and the output mode.
pub struct Session {
    server: Server,
    token: SecretString,
    json: bool,
}

impl Session {
    pub fn new<A: Subcommand>(
        settings: &Settings,
        remote: &OnServer<A>,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            token: settings.admin_token()?,
            server: Server::parse(remote.url.as_deref())?,
            json: remote.json,
        })
    }

    /// One request, with `body` as JSON if given; the JSON answer.
    pub fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let body = body.map(|body| body.to_string().into_bytes());
        block_on(self.server.json(&self.token, method, path, body))
    }

    /// Every item of the listing at `path`, read a page of `paging` at a time.
    pub fn list(&self, path: &str, paging: &Paging) -> anyhow::Result<Value> {
        block_on(async {
            let mut items = Vec::new();
            let mut next = Some(format!("{path}?limit={}", paging.page_size));
            while let Some(page) = next {
                let (more, after) = self.server.page(&self.token, &page).await?;
                items.extend(more);
                next = after;
            }
            Ok(Value::Array(items))
        })
    }

    /// `DELETE <collection>/<name>`; prints what went.
    pub fn delete(&self, what: &'static str, collection: &str, name: &str) -> anyhow::Result<()> {
        let path = format!("{collection}/{}", segment(name));
        let answer = self.call(Method::DELETE, &path, None)?;
        self.show(&answer, |_| deleted(what, name));
        Ok(())
    }

    /// Prints `answer`: as JSON with `--json`, else as the table `table` makes of it.
    pub fn show(&self, answer: &Value, table: impl FnOnce(&Value) -> Table) {
        let mut out = std::io::stdout().lock();
        let text = if self.json {
            serde_json::to_string_pretty(answer).expect("a JSON value always serializes")
        } else {
            table(answer).render()
        };
        // A closed stdout (`| head`) is not an error of the command.
        let _ = writeln!(out, "{}", text.trim_end());
    }
}

/// Rows under a header, in columns as wide as their widest cell.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Self {
        Self {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    /// A row of the cells `cell` reads from each item of `items` (an array, or one object).
    pub fn of(
        header: &[&'static str],
        items: &Value,
        cell: impl Fn(&Value, usize) -> String,
    ) -> Self {
        let mut table = Self::new(header);
        let items = match items {
            Value::Array(items) => items.iter().collect(),
            item => vec![item],
        };
        for item in items {
            let row = (0..header.len()).map(|column| cell(item, column)).collect();
            table.rows.push(row);
        }
        table
    }

    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    fn render(&self) -> String {
        let rows: Vec<Vec<String>> =
            std::iter::once(self.header.iter().map(|h| h.to_string()).collect())
                .chain(
                    self.rows
                        .iter()
                        .map(|row| row.iter().map(|cell| one_line(cell, 200)).collect()),
                )
                .collect();
        let widths: Vec<usize> = (0..self.header.len())
            .map(|column| {
                rows.iter()
                    .map(|row| row[column].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut text = String::new();
        for row in rows {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            text.push_str(line.join("  ").trim_end());
            text.push('\n');
        }
        text
    }
}

/// The table of a deletion: what was deleted.
fn deleted(what: &'static str, name: &str) -> Table {
    let mut table = Table::new(&["DELETED", "NAME"]);
    table.push(vec![what.to_owned(), name.to_owned()]);
    table
}

/// `name=<show(entry)>` for each entry of an object, joined by spaces (empty for no object).
pub fn entries(object: &Value, show: impl Fn(&Value) -> String) -> String {
    let Some(object) = object.as_object() else {
        return String::new();
    };
    let shown: Vec<String> = object
        .iter()
        .map(|(name, entry)| format!("{name}={}", show(entry)))
        .collect();
    shown.join(" ")
}

/// A string field of `value`, or empty.
pub fn text(value: &Value, field: &str) -> String {
    match &value[field] {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The contents of `path`, or of stdin for `-`, held in a buffer zeroed when dropped.
pub fn read_secret(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    let mut text = Zeroizing::new(String::new());
    if path == Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read stdin")?;
    } else {
        std::fs::File::open(path)
            .and_then(|mut file| file.read_to_string(&mut text))
            .with_context(|| format!("cannot read {}", path.display()))?;
    }
    Ok(text)
}

/// A key value from `path` (`-`: stdin): its content without the one line ending a shell or an
/// editor leaves; refused when empty.
pub fn read_value(path: &Path) -> Result<Zeroizing<String>, super::Failure> {
    let mut value = read_secret(path)?;
    for ending in ["\n", "\r"] {
        if value.ends_with(ending) {
            value.pop();
        }
    }
    if value.is_empty() {
        return Err(ConfigError(format!("the key value in {} is empty", path.display())).into());
    }
    Ok(value)
}

/// `text` as one path segment.
pub fn segment(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}
