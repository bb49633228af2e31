//! The layers import one way: each module of the crate may use only the layers below it, as the
//! table in `src/lib.rs` draws them ("The layers, top first"). Reads every `crate::…` path in
//! `src/` and fails on one that points up or sideways, naming the file and the line; and checks
//! that the README draws the same table.

use std::path::{Path, PathBuf};

const TABLE_INTRO: &str = "layers, top first:";

fn read(relative: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)).unwrap()
}

/// The layers of the first fenced block after [`TABLE_INTRO`] in `text` (with `prefix` cut from
/// each line), bottom first: each row's names are the words before the first run of two spaces;
/// indented lines continue a row's description.
fn layer_table(text: &str, prefix: &str) -> Vec<Vec<String>> {
    let lines: Vec<&str> = text
        .lines()
        .map(|line| line.strip_prefix(prefix).unwrap_or(line).trim_end())
        .collect();
    let intro = lines
        .iter()
        .position(|line| line.ends_with(TABLE_INTRO))
        .expect("the layer table's introduction");
    let open = intro
        + lines[intro..]
            .iter()
            .position(|line| line.starts_with("```"))
            .expect("the layer table's block");
    let mut rows: Vec<Vec<String>> = lines[open + 1..]
        .iter()
        .take_while(|line| !line.starts_with("```"))
        .filter(|line| !line.is_empty() && !line.starts_with(' '))
        .map(|line| {
            let names = line.split("  ").next().unwrap();
            names
                .split(',')
                .map(|name| name.trim().to_owned())
                .collect()
        })
        .collect();
    rows.reverse();
    rows
}

/// Each layer's rank: its row in the table, counted from the bottom.
fn ranks() -> Vec<(String, usize)> {
    layer_table(&read("src/lib.rs"), "//! ")
        .into_iter()
        .enumerate()
        .flat_map(|(rank, names)| names.into_iter().map(move |name| (name, rank)))
        .collect()
}

fn rank(ranks: &[(String, usize)], layer: &str) -> Option<usize> {
    ranks
        .iter()
        .find(|(name, _)| name == layer)
        .map(|(_, rank)| *rank)
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The layer a source file belongs to: its first path component under `src/`.
fn layer_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_owned())
}

/// The source with every `//` comment blanked out (doc links are not imports), same offsets.
fn code_only(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) if !line[..at].contains('"') => {
                format!("{}{}", &line[..at], " ".repeat(line.len() - at))
            }
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn identifier(text: &str) -> &str {
    let text = text.trim_start();
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// Every layer named by a `crate::…` path, with the byte offset of its `crate::`; a group
/// (`crate::{broker::Pool, store::Store}`) names each of its items' first segment.
fn layers_named(code: &str) -> Vec<(usize, &str)> {
    let mut named = Vec::new();
    for (at, prefix) in code.match_indices("crate::") {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut item_start = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        named.push((at, identifier(&group[item_start..i])));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        named.push((at, identifier(&group[item_start..i])));
                        item_start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            named.push((at, identifier(rest)));
        }
    }
    named.retain(|(_, name)| !name.is_empty() && *name != "self");
    named
}

#[test]
fn every_module_imports_only_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let ranks = ranks();
    assert!(ranks.len() >= 10, "the table lists every layer: {ranks:?}");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    let mut unknown = Vec::new();
    for file in &files {
        let Some(layer) = layer_of(&src, file) else {
            continue;
        };
        if layer == "lib" || layer == "main" {
            continue;
        }
        let Some(own) = rank(&ranks, &layer) else {
            unknown.push(format!("{}: not in the layer table", file.display()));
            continue;
        };
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        let place = |at: usize| {
            let line = code[..at].matches('\n').count() + 1;
            format!("{}:{line}", file.strip_prefix(&src).unwrap().display())
        };
        for (at, named) in layers_named(&code) {
            if named == layer {
                continue;
            }
            match rank(&ranks, named) {
                Some(other) if other < own => {}
                Some(_) => wrong.push(format!(
                    "{}: {layer} uses crate::{named}, which is not below it",
                    place(at)
                )),
                None => unknown.push(format!(
                    "{}: crate::{named} is not in the layer table",
                    place(at)
                )),
            }
        }
    }
    assert!(unknown.is_empty(), "{}", unknown.join("\n"));
    assert!(
        wrong.is_empty(),
        "imports that point up:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_scanner_sees_paths_in_groups_and_expressions_but_not_comments() {
    let names = |code: &str| -> Vec<String> {
        layers_named(&code_only(code))
            .into_iter()
            .map(|(_, name)| name.to_owned())
            .collect()
    };
    assert_eq!(
        names("use crate::{\n    broker::{Pool, Clock},\n    store::Store,\n};"),
        ["broker", "store"]
    );
    assert_eq!(names("let x = crate::broker::seconds(1);"), ["broker"]);
    assert_eq!(names("pub(crate) use crate::store::Store;"), ["store"]);
    assert_eq!(names("use my_crate::broker;"), Vec::<String>::new());
    assert_eq!(names("/// See [`crate::app::App`]."), Vec::<String>::new());
}

#[test]
fn the_readme_draws_the_same_layers() {
    assert_eq!(
        layer_table(&read("README.md"), ""),
        layer_table(&read("src/lib.rs"), "//! ")
    );
}

#[test]
fn the_table_reader_takes_names_and_skips_descriptions() {
    let text = "The layers, top first:\n\n```\ntop         the top\na, b        two\n            more\n```\n";
    assert_eq!(
        layer_table(text, ""),
        [vec!["a".to_owned(), "b".to_owned()], vec!["top".to_owned()]]
    );
}
