//! `keypooler tiers|keys|consumers …`: the built binary against a running server (the binary
//! too). Values come from stdin or a file and never show in any output; the server's refusals
//! are its message on one line, exit 3.

use std::path::Path;
use std::process::Output;

use serde_json::{Value, json};

use crate::binary::assert_one_clear_line;
use crate::helpers::hex_key;
use crate::process::{Server, TOKEN, free_port, http_get, run, run_with_input};

/// Runs `keypooler <line>` (split at spaces) against the server on `port`, with `input` on
/// stdin, in `dir`.
fn cli(dir: &Path, port: u16, line: &str, input: &[u8]) -> Output {
    let url = format!("http://127.0.0.1:{port}");
    let env = [("KEYPOOLER_URL", url.as_str()), ("ADMIN_TOKEN", TOKEN)];
    let args: Vec<&str> = line.split(' ').collect();
    run_with_input(dir, &env, &args, input)
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
    let (d, port) = (dir.path(), server.port);

    let tier = "tiers add pro --feature chat=5/10 --feature image=100 --description paid";
    let added = ok(cli(d, port, tier, b""));
    assert_eq!(
        row(&added, "pro")[..3],
        ["pro", "chat=5/10s image=100/60s", "paid"]
    );
    ok(cli(d, port, "tiers add free --feature chat=1", b""));
    let listed = ok(cli(d, port, "tiers list", b""));
    assert!(listed.starts_with("NAME"), "{listed}");
    assert_eq!(listed.lines().count(), 3, "{listed}");
    let patched = ok_json(cli(
        d,
        port,
        "tiers patch free --feature chat=2 --json",
        b"",
    ));
    let chat = &patched["features"]["chat"];
    assert_eq!(chat, &json!({"rate_limit": 2, "window_seconds": 60}));

    // The value from stdin (its line ending dropped), the secrets from a file.
    std::fs::write(d.join("secrets.json"), r#"{"org": "org-secret-1"}"#).unwrap();
    let add = "keys add --name openai-1 --tier pro --value-file - --secrets-file secrets.json \
               --metadata {\"region\":\"eu\"} --usage-limit 1000 --json";
    let key = ok_json(cli(d, port, add, b"sk-from-stdin\n"));
    let id = key["id"].as_str().unwrap().to_owned();
    assert_eq!(
        (&key["name"], &key["tier"]),
        (&json!("openai-1"), &json!("pro"))
    );
    std::fs::write(d.join("value.txt"), "sk-from-file").unwrap();
    let add = "keys add --name openai-2 --tier free --value-file value.txt";
    let second = ok(cli(d, port, add, b""));
    assert_eq!(row(&second, "openai-2")[1..], ["openai-2", "free"]);

    let (status, body) = http_get(port, "/key?feature=image", TOKEN);
    assert_eq!(status, 200, "{body}");
    let served: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(served["value"], "sk-from-stdin");
    assert_eq!(served["secrets"], json!({"org": "org-secret-1"}));
    assert_eq!(served["metadata"], json!({"region": "eu"}));

    let keys = ok(cli(d, port, "keys list", b""));
    assert_eq!(row(&keys, &id)[1..4], ["openai-1", "pro", "active"]);
    assert!(row(&keys, &id)[4].contains("image=1/100"), "{keys}");
    let keys_json = ok_json(cli(d, port, "keys list --json", b""));
    assert_eq!(keys_json.as_array().unwrap().len(), 2);
    // A page of one key: the second comes through the first page's Link.
    let paged = ok_json(cli(d, port, "keys list --page-size 1 --json", b""));
    assert_eq!(paged, keys_json);

    let add = "consumers add billing --description billing-service --scope pro";
    let consumer = ok(cli(d, port, add, b""));
    let cells = row(&consumer, "billing");
    assert_eq!(cells[1..5], ["billing", "true", "pro", "billing-service"]);
    let (consumer_id, token) = (cells[0].clone(), cells[5].clone());
    assert_eq!(token.len(), 64, "{consumer}");
    assert_eq!(http_get(port, "/key?feature=chat", &token).0, 200);
    let listed = ok_json(cli(d, port, "consumers list --json", b""));
    assert_eq!(listed[0]["scopes"], json!(["pro"]));
    assert!(listed[0].get("token").is_none());
    let patch = format!("consumers patch {consumer_id} --add-scope free");
    let scoped = ok(cli(d, port, &patch, b""));
    assert_eq!(row(&scoped, "billing")[3], "free,pro");

    let deleted = ok(cli(d, port, &format!("keys delete {id}"), b""));
    assert_eq!(row(&deleted, "key"), ["key", id.as_str()]);
    ok(cli(
        d,
        port,
        &format!("consumers delete {consumer_id}"),
        b"",
    ));
    assert_eq!(http_get(port, "/key?feature=chat", &token).0, 401);

    // No value or secret in the server's log (the commands printed none: checked above).
    let (_, log) = server.stop();
    for secret in ["sk-from-stdin", "sk-from-file", "org-secret-1"] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
}

#[test]
fn refusals_failures_and_bad_arguments_have_their_own_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &hex_key(0x32));
    let (d, port) = (dir.path(), server.port);
    let refused = |line: &str, input: &[u8], message: &str| {
        assert_one_clear_line(&cli(d, port, line, input), 3, message);
    };
    let bad = |line: &str, input: &[u8], message: &str| {
        assert_one_clear_line(&cli(d, port, line, input), 2, message);
    };
    ok(cli(d, port, "tiers add pro --feature chat=5", b""));

    // The server's refusals: its message, one line, exit 3; no value echoed.
    let conflict = "the server answered 409 Conflict: tier already exists: pro";
    refused("tiers add pro --feature chat=5", b"", conflict);
    refused(
        "tiers add big --feature chat=0",
        b"",
        "400 Bad Request: features.chat",
    );
    let add = "keys add --name k --tier nope --value-file -";
    refused(
        add,
        b"sk-never-echoed",
        "404 Not Found: tier not found: nope",
    );
    let unknown = "keys delete 00000000-0000-4000-8000-000000000000";
    refused(unknown, b"", "404 Not Found");
    let url = format!("http://127.0.0.1:{port}");
    let wrong_token = [
        ("KEYPOOLER_URL", url.as_str()),
        ("ADMIN_TOKEN", "not-the-admin-token"),
    ];
    let wrong = run(d, &wrong_token, &["tiers", "list"]);
    assert_one_clear_line(&wrong, 3, "401 Unauthorized: invalid token");

    // Bad arguments and settings: exit 2, before anything is sent.
    let add = "keys add --name k --tier pro --value-file -";
    bad(add, b"\n", "the key value in - is empty");
    let both = format!("{add} --secrets-file -");
    bad(&both, b"x", "cannot both read stdin");
    bad(
        &format!("{add} --metadata [1]"),
        b"v",
        "--metadata must be a JSON object",
    );
    bad(
        "tiers add x --feature chat",
        b"",
        "--feature takes NAME=LIMIT",
    );
    bad("keys patch some-id", b"", "nothing to change");
    let page = cli(d, port, "keys list --page-size 0", b"");
    assert_eq!(page.status.code(), Some(2));
    bad("consumers patch some-id", b"", "nothing to change");
    // A value is never an argument: no option takes one.
    let argv = cli(d, port, "keys add --name k --tier pro --key sk-argv", b"");
    assert_eq!(argv.status.code(), Some(2));
    let no_token = run(d, &[("KEYPOOLER_URL", &url)], &["keys", "list"]);
    assert_one_clear_line(&no_token, 2, "ADMIN_TOKEN is required");
    assert_eq!(
        http_get(port, "/admin/keys", TOKEN).1,
        "[]",
        "nothing was added"
    );
    server.stop();

    // No server there: exit 1.
    let nobody = cli(d, free_port(), "tiers list", b"");
    assert_one_clear_line(&nobody, 1, "cannot connect");
}

/// Needs the management routes of the key and tier lifecycle: `PATCH /admin/keys/{id}`,
/// `DELETE /admin/tiers/{name}`, `DELETE /admin/consumers/{id}/scopes/{tier}` and
/// `POST /admin/consumers/{id}/token`.
#[test]
fn patch_and_delete_reach_the_management_routes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &hex_key(0x33));
    let (d, port) = (dir.path(), server.port);
    ok(cli(d, port, "tiers add pro --feature chat=5", b""));
    ok(cli(d, port, "tiers add spare --feature chat=5", b""));
    let add = "keys add --name k --tier pro --value-file - --json";
    let key = ok_json(cli(d, port, add, b"sk-old"));
    let id = key["id"].as_str().unwrap();

    // Rotate the value in place and stop serving the key; then serve it again.
    let patch = format!("keys patch {id} --value-file - --name renamed --active false --json");
    let patched = ok_json(cli(d, port, &patch, b"sk-new\n"));
    let fields = (&patched["name"], &patched["is_active"]);
    assert_eq!(fields, (&json!("renamed"), &json!(false)));
    assert_eq!(http_get(port, "/key?feature=chat", TOKEN).0, 429);
    ok(cli(d, port, &format!("keys patch {id} --active true"), b""));
    let (_, body) = http_get(port, "/key?feature=chat", TOKEN);
    assert!(body.contains("sk-new"), "{body}");

    let refused = cli(d, port, "tiers delete pro", b"");
    assert_one_clear_line(&refused, 3, "409 Conflict: tier still has keys");
    ok(cli(d, port, "tiers delete spare", b""));

    let add = "consumers add svc --scope pro --json";
    let consumer = ok_json(cli(d, port, add, b""));
    let (consumer_id, old) = (&consumer["id"], consumer["token"].as_str().unwrap());
    let patch = format!(
        "consumers patch {} --remove-scope pro --new-token --json",
        consumer_id.as_str().unwrap()
    );
    let rotated = ok_json(cli(d, port, &patch, b""));
    assert_eq!(rotated["scopes"], json!([]));
    let new = rotated["token"].as_str().unwrap();
    assert_ne!(new, old);
    assert_eq!(http_get(port, "/key?feature=chat", old).0, 401);
    assert_eq!(http_get(port, "/key?feature=chat", new).0, 403);
    server.stop();
}
