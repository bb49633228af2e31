//! `keypooler tiers|keys|consumers …`: the built binary against a running server (the binary
//! too). Values come from stdin or a file and never show in any output; the server's refusals
//! are its message on one line, exit 3.

use std::path::Path;
use std::process::Output;

use serde_json::{Value, json};

use crate::binary::assert_one_clear_line;
use crate::helpers::hex_key;
use crate::process::{Server, TOKEN, free_port, http_get, run, run_with_input};

/// Runs `keypooler ARGS` against the server on `port`, with `input` on stdin.
fn cli(dir: &Path, port: u16, args: &[&str], input: &[u8]) -> Output {
    let url = format!("http://127.0.0.1:{port}");
    let env = [("KEYPOOLER_URL", url.as_str()), ("ADMIN_TOKEN", TOKEN)];
    run_with_input(dir, &env, args, input)
}

/// Asserts a success; its stdout.
fn ok(output: Output) -> String {
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    stdout
}

/// Asserts a success with `--json`; the JSON printed.
fn ok_json(output: Output) -> Value {
    serde_json::from_str(&ok(output)).unwrap()
}

/// The line of a table that contains `needle`, split into its cells.
fn row(table: &str, needle: &str) -> Vec<String> {
    let line = table
        .lines()
        .find(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("no row with {needle}: {table}"));
    line.split("  ")
        .map(str::trim)
        .filter(|cell| !cell.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn operators_manage_tiers_keys_and_consumers_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &hex_key(0x31));
    let port = server.port;
    let d = dir.path();

    let added = ok(cli(
        d,
        port,
        &[
            "tiers",
            "add",
            "pro",
            "--feature",
            "chat=5/10",
            "--feature",
            "image=100",
            "--description",
            "paid plan",
        ],
        b"",
    ));
    assert_eq!(
        row(&added, "pro")[..3],
        ["pro", "chat=5/10s image=100/60s", "paid plan"]
    );
    ok(cli(
        d,
        port,
        &["tiers", "add", "free", "--feature", "chat=1"],
        b"",
    ));
    let listed = ok(cli(d, port, &["tiers", "list"], b""));
    assert!(listed.starts_with("NAME"), "{listed}");
    assert_eq!(listed.lines().count(), 3, "{listed}");
    let patched = ok_json(cli(
        d,
        port,
        &["tiers", "patch", "free", "--feature", "chat=2", "--json"],
        b"",
    ));
    assert_eq!(
        patched["features"]["chat"],
        json!({"rate_limit": 2, "window_seconds": 60})
    );

    // The value from stdin (its line ending dropped), the secrets from a file.
    let secrets = d.join("secrets.json");
    std::fs::write(&secrets, r#"{"org": "org-secret-1"}"#).unwrap();
    let key = ok_json(cli(
        d,
        port,
        &[
            "keys",
            "add",
            "--name",
            "openai-1",
            "--tier",
            "pro",
            "--value-file",
            "-",
            "--secrets-file",
            secrets.to_str().unwrap(),
            "--metadata",
            r#"{"region":"eu"}"#,
            "--usage-limit",
            "1000",
            "--json",
        ],
        b"sk-from-stdin\n",
    ));
    let id = key["id"].as_str().unwrap().to_owned();
    assert_eq!(
        (&key["name"], &key["tier"]),
        (&json!("openai-1"), &json!("pro"))
    );
    let value_file = d.join("value.txt");
    std::fs::write(&value_file, "sk-from-file").unwrap();
    let second = ok(cli(
        d,
        port,
        &[
            "keys",
            "add",
            "--name",
            "openai-2",
            "--tier",
            "free",
            "--value-file",
            value_file.to_str().unwrap(),
        ],
        b"",
    ));
    assert_eq!(row(&second, "openai-2")[1..], ["openai-2", "free"]);

    let (status, body) = http_get(port, "/key?feature=image", TOKEN);
    assert_eq!(status, 200, "{body}");
    let served: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(served["value"], "sk-from-stdin");
    assert_eq!(served["secrets"], json!({"org": "org-secret-1"}));
    assert_eq!(served["metadata"], json!({"region": "eu"}));

    let keys = ok(cli(d, port, &["keys", "list"], b""));
    assert_eq!(row(&keys, &id)[1..4], ["openai-1", "pro", "active"]);
    assert!(row(&keys, &id)[4].contains("image=1/100"), "{keys}");
    let keys_json = ok_json(cli(d, port, &["keys", "list", "--json"], b""));
    assert_eq!(keys_json.as_array().unwrap().len(), 2);

    let consumer = ok(cli(
        d,
        port,
        &[
            "consumers",
            "add",
            "billing",
            "--description",
            "billing service",
            "--scope",
            "pro",
        ],
        b"",
    ));
    let cells = row(&consumer, "billing");
    assert_eq!(cells[1..5], ["billing", "true", "pro", "billing service"]);
    let token = cells[5].clone();
    assert_eq!(token.len(), 64, "{consumer}");
    let (status, _) = http_get(port, "/key?feature=chat", &token);
    assert_eq!(status, 200);
    let consumer_id = cells[0].clone();
    let listed = ok_json(cli(d, port, &["consumers", "list", "--json"], b""));
    assert_eq!(listed[0]["scopes"], json!(["pro"]));
    assert!(listed[0].get("token").is_none());
    let scoped = ok(cli(
        d,
        port,
        &["consumers", "patch", &consumer_id, "--add-scope", "free"],
        b"",
    ));
    assert_eq!(row(&scoped, "billing")[3], "free,pro");

    let deleted = ok(cli(d, port, &["keys", "delete", &id], b""));
    assert_eq!(row(&deleted, "key"), ["key", id.as_str()]);
    ok(cli(d, port, &["consumers", "delete", &consumer_id], b""));
    let (status, _) = http_get(port, "/key?feature=chat", &token);
    assert_eq!(status, 401);

    // No value or secret in anything the commands printed, nor in the server's log.
    let (_, log) = server.stop();
    for secret in ["sk-from-stdin", "sk-from-file", "org-secret-1"] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
}

#[test]
fn refusals_failures_and_bad_arguments_have_their_own_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &hex_key(0x32));
    let port = server.port;
    let d = dir.path();
    ok(cli(
        d,
        port,
        &["tiers", "add", "pro", "--feature", "chat=5"],
        b"",
    ));

    // The server's refusals: its message, one line, exit 3.
    let again = cli(
        d,
        port,
        &["tiers", "add", "pro", "--feature", "chat=5"],
        b"",
    );
    assert_one_clear_line(
        &again,
        3,
        "the server answered 409 Conflict: tier already exists: pro",
    );
    let bad_limit = cli(
        d,
        port,
        &["tiers", "add", "big", "--feature", "chat=0"],
        b"",
    );
    assert_one_clear_line(&bad_limit, 3, "400 Bad Request: features.chat");
    let no_tier = cli(
        d,
        port,
        &[
            "keys",
            "add",
            "--name",
            "k",
            "--tier",
            "nope",
            "--value-file",
            "-",
        ],
        b"sk-never-echoed",
    );
    assert_one_clear_line(&no_tier, 3, "404 Not Found: tier not found: nope");
    assert!(!String::from_utf8_lossy(&no_tier.stderr).contains("sk-never-echoed"));
    let unknown = cli(
        d,
        port,
        &["keys", "delete", "00000000-0000-4000-8000-000000000000"],
        b"",
    );
    assert_one_clear_line(&unknown, 3, "404 Not Found");
    let url = format!("http://127.0.0.1:{port}");
    let wrong = run(
        d,
        &[
            ("KEYPOOLER_URL", &url),
            ("ADMIN_TOKEN", "not-the-admin-token-at-all"),
        ],
        &["tiers", "list"],
    );
    assert_one_clear_line(&wrong, 3, "401 Unauthorized: invalid token");

    // Bad arguments and settings: exit 2, before anything is sent.
    let empty = cli(
        d,
        port,
        &[
            "keys",
            "add",
            "--name",
            "k",
            "--tier",
            "pro",
            "--value-file",
            "-",
        ],
        b"\n",
    );
    assert_one_clear_line(&empty, 2, "the key value in - is empty");
    let both = cli(
        d,
        port,
        &[
            "keys",
            "add",
            "--name",
            "k",
            "--tier",
            "pro",
            "--value-file",
            "-",
            "--secrets-file",
            "-",
        ],
        b"x",
    );
    assert_one_clear_line(&both, 2, "cannot both read stdin");
    let feature = cli(d, port, &["tiers", "add", "x", "--feature", "chat"], b"");
    assert_one_clear_line(&feature, 2, "--feature takes NAME=LIMIT");
    let metadata = cli(
        d,
        port,
        &[
            "keys",
            "add",
            "--name",
            "k",
            "--tier",
            "pro",
            "--value-file",
            "-",
            "--metadata",
            "[1]",
        ],
        b"v",
    );
    assert_one_clear_line(&metadata, 2, "--metadata must be a JSON object");
    let nothing = cli(d, port, &["keys", "patch", "some-id"], b"");
    assert_one_clear_line(&nothing, 2, "nothing to change");
    // A value is never an argument: there is no option that takes one.
    let argv = cli(
        d,
        port,
        &[
            "keys", "add", "--name", "k", "--tier", "pro", "--key", "sk-argv",
        ],
        b"",
    );
    assert_eq!(argv.status.code(), Some(2));
    let no_token = run(d, &[("KEYPOOLER_URL", &url)], &["keys", "list"]);
    assert_one_clear_line(&no_token, 2, "ADMIN_TOKEN is required");
    let (_, keys) = http_get(port, "/admin/keys", TOKEN);
    assert_eq!(keys, "[]", "nothing was added");
    server.stop();

    // No server there: exit 1.
    let nobody = cli(d, free_port(), &["tiers", "list"], b"");
    assert_one_clear_line(&nobody, 1, "cannot connect");
}

/// The routes of key and tier management this needs (`PATCH /admin/keys/{id}`,
/// `DELETE /admin/tiers/{name}`, `DELETE /admin/consumers/{id}/scopes/{tier}`,
/// `POST /admin/consumers/{id}/token`).
#[test]
fn patch_and_delete_reach_the_management_routes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &hex_key(0x33));
    let port = server.port;
    let d = dir.path();
    ok(cli(
        d,
        port,
        &["tiers", "add", "pro", "--feature", "chat=5"],
        b"",
    ));
    ok(cli(
        d,
        port,
        &["tiers", "add", "spare", "--feature", "chat=5"],
        b"",
    ));
    let key = ok_json(cli(
        d,
        port,
        &[
            "keys",
            "add",
            "--name",
            "k",
            "--tier",
            "pro",
            "--value-file",
            "-",
            "--json",
        ],
        b"sk-old",
    ));
    let id = key["id"].as_str().unwrap();

    // Rotate the value in place and stop serving the key.
    let patched = ok_json(cli(
        d,
        port,
        &[
            "keys",
            "patch",
            id,
            "--value-file",
            "-",
            "--name",
            "renamed",
            "--active",
            "false",
            "--json",
        ],
        b"sk-new\n",
    ));
    assert_eq!(
        (&patched["name"], &patched["is_active"]),
        (&json!("renamed"), &json!(false))
    );
    let (status, _) = http_get(port, "/key?feature=chat", TOKEN);
    assert_eq!(status, 429);
    ok(cli(
        d,
        port,
        &["keys", "patch", id, "--active", "true"],
        b"",
    ));
    let (_, body) = http_get(port, "/key?feature=chat", TOKEN);
    assert!(body.contains("sk-new"), "{body}");

    let refused = cli(d, port, &["tiers", "delete", "pro"], b"");
    assert_one_clear_line(&refused, 3, "409 Conflict: tier still has keys");
    ok(cli(d, port, &["tiers", "delete", "spare"], b""));

    let consumer = ok_json(cli(
        d,
        port,
        &["consumers", "add", "svc", "--scope", "pro", "--json"],
        b"",
    ));
    let consumer_id = consumer["id"].as_str().unwrap();
    let old = consumer["token"].as_str().unwrap();
    let rotated = ok_json(cli(
        d,
        port,
        &[
            "consumers",
            "patch",
            consumer_id,
            "--remove-scope",
            "pro",
            "--new-token",
            "--json",
        ],
        b"",
    ));
    assert_eq!(rotated["scopes"], json!([]));
    let new = rotated["token"].as_str().unwrap();
    assert_ne!(new, old);
    assert_eq!(http_get(port, "/key?feature=chat", old).0, 401);
    assert_eq!(http_get(port, "/key?feature=chat", new).0, 403);
    server.stop();
}
