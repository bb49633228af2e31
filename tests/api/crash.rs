//! Crash consistency, from outside: the built binary takes concurrent admin writes (tiers, tier
//! patches, keys, deletions) from several threads and is killed with SIGKILL at a random
//! moment, sometimes even while starting up. After each restart, every acknowledged write
//! (2xx) is there, every acknowledged deletion stays deleted, every key serves its own value,
//! no key is left out, and the database opens.
//!
//! `KEYPOOLER_CRASH_ROUNDS` sets the number of kills (default 20, the CI size).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::files::Rng;
use crate::helpers::hex_key;
use crate::process::{Launch, Server, TOKEN, free_port, keypooler};

const WORKERS: usize = 4;
/// Live keys above which workers delete more than they add.
const MANY_KEYS: usize = 240;

/// A write that was sent: acknowledged (2xx) or in flight when the server died.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sent {
    Acked,
    Unknown,
}

#[derive(Debug)]
struct TierModel {
    created: Sent,
    /// The rate limits the tier may have now: one once confirmed, two while a patch was in
    /// flight at the kill.
    limits: Vec<u32>,
    owner: usize,
}

#[derive(Debug)]
enum KeyState {
    Live(String),
    AddInFlight,
    DeleteInFlight(String),
}

#[derive(Debug)]
struct KeyModel {
    tier: String,
    value: String,
    state: KeyState,
}

/// What the test knows the server acknowledged, by name (names are unique).
#[derive(Default)]
struct Model {
    tiers: BTreeMap<String, TierModel>,
    keys: BTreeMap<String, KeyModel>,
    deleted: BTreeSet<String>,
    /// Acknowledged writes since the last check.
    acked: usize,
}

#[derive(Default)]
struct Figures {
    rounds: usize,
    startup_kills: usize,
    writes_checked: usize,
    values_checked: usize,
    unacknowledged: usize,
}

fn feature(tier: &str) -> String {
    format!("f-{tier}")
}

/// Restarted: compares what the server has with the model, settles what was in flight, and
/// counts what was checked.
fn check(server: &Server, model: &mut Model, figures: &mut Figures) {
    let log = server.log().join("\n");
    let opened: Value = log
        .lines()
        .find(|line| line.contains("database opened"))
        .map(|line| serde_json::from_str(line).unwrap())
        .expect("a database opened line");
    assert_eq!(opened["skipped"], 0, "a key was left out: {log}");

    let (status, tiers) = server.request("GET", "/admin/tiers", None).unwrap();
    assert_eq!(status, 200);
    let mut stored: BTreeMap<String, u32> = BTreeMap::new();
    for tier in tiers.as_array().unwrap() {
        let name = tier["name"].as_str().unwrap().to_owned();
        let limit = tier["features"][feature(&name)]["rate_limit"]
            .as_u64()
            .unwrap();
        stored.insert(name, u32::try_from(limit).unwrap());
    }
    model
        .tiers
        .retain(|name, tier| match (stored.get(name), tier.created) {
            (Some(limit), _) => {
                assert!(
                    tier.limits.contains(limit),
                    "tier {name}: limit {limit}, expected one of {:?}",
                    tier.limits
                );
                tier.limits = vec![*limit];
                tier.created = Sent::Acked;
                true
            }
            (None, Sent::Acked) => panic!("acknowledged tier {name} was lost"),
            (None, Sent::Unknown) => false,
        });
    for name in stored.keys() {
        assert!(
            model.tiers.contains_key(name),
            "tier {name} was never created"
        );
    }

    let (status, keys) = server.request("GET", "/admin/keys", None).unwrap();
    assert_eq!(status, 200);
    let mut listed: BTreeMap<String, (String, String)> = BTreeMap::new();
    for key in keys.as_array().unwrap() {
        let id = key["id"].as_str().unwrap().to_owned();
        assert!(!model.deleted.contains(&id), "deleted key {id} came back");
        let name = key["name"].as_str().unwrap().to_owned();
        listed.insert(name, (id, key["tier"].as_str().unwrap().to_owned()));
    }
    model.keys.retain(|name, key| {
        let present = listed.get(name);
        if let Some((_, tier)) = present {
            assert_eq!(tier, &key.tier, "key {name} moved tier");
        }
        match (&key.state, present) {
            (KeyState::Live(id), Some((listed_id, _))) => {
                assert_eq!(id, listed_id, "key {name} changed id");
                true
            }
            (KeyState::Live(id), None) => panic!("acknowledged key {name} ({id}) was lost"),
            (KeyState::AddInFlight | KeyState::DeleteInFlight(_), Some((id, _))) => {
                key.state = KeyState::Live(id.clone());
                true
            }
            (KeyState::AddInFlight, None) => false,
            (KeyState::DeleteInFlight(id), None) => {
                model.deleted.insert(id.clone());
                false
            }
        }
    });
    for name in listed.keys() {
        assert!(model.keys.contains_key(name), "key {name} was never added");
    }

    // Every key serves its own value: round-robin over a tier's k keys serves each once in k
    // calls (limits are far above k, and counters start fresh after a restart).
    for name in model.tiers.keys() {
        let expected: BTreeMap<&str, &str> = model
            .keys
            .values()
            .filter(|key| &key.tier == name)
            .map(|key| match &key.state {
                KeyState::Live(id) => (id.as_str(), key.value.as_str()),
                other => unreachable!("settled above: {other:?}"),
            })
            .collect();
        let mut served = BTreeMap::new();
        for _ in 0..expected.len() {
            let path = format!("/key?feature={}", feature(name));
            let (status, body) = server.request("GET", &path, None).unwrap();
            assert_eq!(status, 200, "{body}");
            served.insert(
                body["key_id"].as_str().unwrap().to_owned(),
                body["value"].as_str().unwrap().to_owned(),
            );
        }
        let served: BTreeMap<&str, &str> = served
            .iter()
            .map(|(id, value)| (id.as_str(), value.as_str()))
            .collect();
        assert_eq!(served, expected, "tier {name} serves other values");
        figures.values_checked += expected.len();
    }
    figures.writes_checked += std::mem::take(&mut model.acked);
}

/// One worker: writes to its own tiers and keys until a request goes unanswered.
fn work(worker: usize, round: usize, server_port: u16, model: &Mutex<Model>, seed: u64) {
    let mut rng = Rng(seed);
    let request = |method: &str, path: &str, body: Option<&Value>| {
        crate::process::http(server_port, method, path, crate::process::TOKEN, body).map(
            |(status, text)| {
                (
                    status,
                    serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
                )
            },
        )
    };
    for n in 0.. {
        let (own_tiers, own_keys, live) = {
            let model = model.lock().unwrap();
            let tiers: Vec<String> = model
                .tiers
                .iter()
                .filter(|(_, t)| {
                    t.owner == worker && t.created == Sent::Acked && t.limits.len() == 1
                })
                .map(|(name, _)| name.clone())
                .collect();
            let keys: Vec<(String, String)> = model
                .keys
                .iter()
                .filter(|(_, k)| tiers.contains(&k.tier))
                .filter_map(|(name, k)| match &k.state {
                    KeyState::Live(id) => Some((name.clone(), id.clone())),
                    _ => None,
                })
                .collect();
            (tiers, keys, model.keys.len())
        };
        let dice = rng.below(100);
        let outcome = if own_tiers.is_empty() || dice < 8 {
            let name = format!("t{round}-{worker}-{n}");
            let limit = 1_000 + rng.below(1_000) as u32;
            model.lock().unwrap().tiers.insert(
                name.clone(),
                TierModel {
                    created: Sent::Unknown,
                    limits: vec![limit],
                    owner: worker,
                },
            );
            let body = json!({"name": name, "features": {feature(&name): limit}});
            request("POST", "/admin/tiers", Some(&body)).map(|(status, body)| {
                assert_eq!(status, 201, "{body}");
                model.lock().unwrap().tiers.get_mut(&name).unwrap().created = Sent::Acked;
            })
        } else if dice < 16 {
            let name = &own_tiers[rng.below(own_tiers.len())];
            let limit = 1_000 + rng.below(1_000) as u32;
            model
                .lock()
                .unwrap()
                .tiers
                .get_mut(name)
                .unwrap()
                .limits
                .push(limit);
            let body = json!({"name": name, "features": {feature(name): limit}});
            request("PATCH", "/admin/tiers", Some(&body)).map(|(status, body)| {
                assert_eq!(status, 200, "{body}");
                model.lock().unwrap().tiers.get_mut(name).unwrap().limits = vec![limit];
            })
        } else if !own_keys.is_empty() && (dice < 40 || live > MANY_KEYS) {
            let (name, id) = &own_keys[rng.below(own_keys.len())];
            model.lock().unwrap().keys.get_mut(name).unwrap().state =
                KeyState::DeleteInFlight(id.clone());
            request("DELETE", &format!("/admin/keys/{id}"), None).map(|(status, body)| {
                assert_eq!(status, 200, "{body}");
                let mut model = model.lock().unwrap();
                model.keys.remove(name);
                model.deleted.insert(id.clone());
            })
        } else {
            let name = format!("k{round}-{worker}-{n}");
            let tier = own_tiers[rng.below(own_tiers.len())].clone();
            let value = format!("sk-{name}-{:016x}", rng.next());
            model.lock().unwrap().keys.insert(
                name.clone(),
                KeyModel {
                    tier: tier.clone(),
                    value: value.clone(),
                    state: KeyState::AddInFlight,
                },
            );
            let body = json!({"name": name, "key": value, "tier": tier});
            request("POST", "/admin/keys", Some(&body)).map(|(status, body)| {
                assert_eq!(status, 201, "{body}");
                model.lock().unwrap().keys.get_mut(&name).unwrap().state =
                    KeyState::Live(body["id"].as_str().unwrap().to_owned());
            })
        };
        match outcome {
            Ok(()) => model.lock().unwrap().acked += 1,
            // Unanswered: the server is gone. What was sent stays "in flight" until the
            // restart shows whether it landed.
            Err(_) => return,
        }
    }
}

fn start(dir: &Path, key: &str) -> Server {
    match Server::launch(dir, &[("ENCRYPTION_KEY", key)], free_port()) {
        Launch::Listening(server) => server,
        Launch::Exited { stderr, stdout, .. } => {
            panic!("the database did not open after a crash: {stderr}\n{stdout}")
        }
    }
}

#[test]
fn acknowledged_writes_survive_kill_9_at_random_moments() {
    let rounds: usize = std::env::var("KEYPOOLER_CRASH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let key = hex_key(0x91);
    let model = Arc::new(Mutex::new(Model::default()));
    let mut figures = Figures::default();
    let mut rng = Rng(0x5eed_0000 ^ rounds as u64);
    for round in 0..rounds {
        // Now and then, a kill while the server opens (and recovers) the file.
        if round % 4 == 3 {
            let mut child = keypooler(
                dir.path(),
                &[
                    ("ENCRYPTION_KEY", &key),
                    ("ADMIN_TOKEN", TOKEN),
                    ("SERVER_PORT", &free_port().to_string()),
                ],
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
            std::thread::sleep(Duration::from_millis(rng.below(60) as u64));
            let _ = child.kill();
            child.wait().unwrap();
            figures.startup_kills += 1;
        }
        let server = start(dir.path(), &key);
        check(&server, &mut model.lock().unwrap(), &mut figures);
        {
            let mut model = model.lock().unwrap();
            // Each worker owns a share of the tiers (and their keys) for this round.
            for (index, tier) in model.tiers.values_mut().enumerate() {
                tier.owner = index % WORKERS;
            }
        }
        let workers: Vec<_> = (0..WORKERS)
            .map(|worker| {
                let model = Arc::clone(&model);
                let port = server.port;
                let seed = rng.next() | 1;
                std::thread::spawn(move || work(worker, round, port, &model, seed))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20 + rng.below(300) as u64));
        server.kill();
        for worker in workers {
            worker.join().expect("a worker saw an unexpected answer");
        }
        let model = model.lock().unwrap();
        figures.unacknowledged += model
            .tiers
            .values()
            .filter(|t| t.created == Sent::Unknown || t.limits.len() > 1)
            .count()
            + model
                .keys
                .values()
                .filter(|k| !matches!(k.state, KeyState::Live(_)))
                .count();
        figures.rounds += 1;
    }
    let server = start(dir.path(), &key);
    check(&server, &mut model.lock().unwrap(), &mut figures);
    assert!(server.terminate().success());
    let model = model.lock().unwrap();
    println!(
        "crash test: {} kill -9 rounds ({} during start-up), {} acknowledged writes checked, {} values served and checked, {} writes in flight at a kill settled, {} deleted keys never came back; finally {} tiers, {} keys",
        figures.rounds,
        figures.startup_kills,
        figures.writes_checked,
        figures.values_checked,
        figures.unacknowledged,
        model.deleted.len(),
        model.tiers.len(),
        model.keys.len()
    );
    assert!(figures.writes_checked > 0);
}
