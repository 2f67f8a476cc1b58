//! Tenant isolation over real HTTP, driven by the server's own OpenAPI document so that a new
//! endpoint cannot be left out: another tenant's ids answer 404 in OpenAI's shape, byte for byte
//! like an id that never existed, and change nothing; lists never show another tenant's
//! objects; a missing, wrong or malformed key is 401 in OpenAI's shape on every `/v1`
//! operation and echoes nothing of what was sent.

mod common;

use std::time::Duration;

use common::served::{Served, send};
use common::{ACME, GLOBEX, TestApi, ids, lines, multipart, start_daemon};
use fusillade_mock::{MockConfig, MockServer};
use http::HeaderValue;
use serde_json::{Value, json};

/// A word only acme's batch metadata contains.
const ACME_WORD: &str = "zanzibar";

/// One operation of the OpenAPI document.
struct Operation {
    method: String,
    path: String,
}

impl Operation {
    /// The path parameter, if any (the API has at most one per path).
    fn param(&self) -> Option<&str> {
        let start = self.path.find('{')?;
        let end = self.path.find('}').expect("a closing brace");
        assert_eq!(self.path.matches('{').count(), 1, "{}", self.path);
        Some(&self.path[start + 1..end])
    }

    fn with_id(&self, id: &str) -> String {
        let param = self.param().expect("a path parameter");
        self.path.replace(&format!("{{{param}}}"), id)
    }
}

/// The `/v1` operations of the document at `GET /openapi.json`.
async fn operations(served: &Served) -> Vec<Operation> {
    let doc = served.get("/openapi.json", "").await.json();
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if path.starts_with("/v1/") && method != "parameters" {
                found.push(Operation {
                    method: method.clone(),
                    path: path.clone(),
                });
            }
        }
    }
    assert!(found.len() >= 11, "the document lists the API");
    found
}

/// A tenant's objects: one of every kind an endpoint takes by id.
struct Objects {
    /// Input, output and error files.
    files: Vec<String>,
    /// A finished batch with failed requests (a retry would change it) and an open one (a
    /// cancel would change it).
    batches: Vec<String>,
}

impl Objects {
    fn ids(&self, param: &str) -> &[String] {
        match param {
            "file_id" => &self.files,
            "batch_id" => &self.batches,
            other => panic!("no test ids for the path parameter {{{other}}}: add them to Objects"),
        }
    }

    fn all(&self) -> impl Iterator<Item = &String> {
        self.files.iter().chain(&self.batches)
    }
}

/// Two tenants over one API: acme with every kind of object, globex with a file and a batch.
struct World {
    served: Served,
    acme: Objects,
    globex: Objects,
    _api: TestApi,
}

impl World {
    async fn new() -> Self {
        let api = TestApi::new().await;
        let served = Served::start(api.state.clone()).await;
        let acme = acme_objects(&api, &served).await;
        let file = served.upload_ok(GLOBEX, &lines(2)).await;
        let file = file["id"].as_str().unwrap().to_string();
        let batch = served.batch_ok(GLOBEX, &file, json!({"p": "globex"})).await;
        let globex = Objects {
            files: vec![file],
            batches: vec![batch["id"].as_str().unwrap().to_string()],
        };
        Self {
            served,
            acme,
            globex,
            _api: api,
        }
    }
}

/// Runs one acme batch to completion against a mock that fails half the requests, then stops
/// the daemon and creates a second batch that stays open.
async fn acme_objects(api: &TestApi, served: &Served) -> Objects {
    let flaky = MockConfig {
        error_rate: 0.5,
        seed: Some(11),
        ..MockConfig::default()
    };
    let mock = MockServer::start(([127, 0, 0, 1], 0).into(), flaky)
        .await
        .unwrap();
    let (stop, daemon) = start_daemon(&api.storage, &mock);
    let input = served.upload_ok(ACME, &lines(8)).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = served.batch_ok(ACME, &input, json!({"p": ACME_WORD})).await;
    let path = format!("/v1/batches/{}", done["id"].as_str().unwrap());
    fusillade_testkit::wait_until(Duration::from_secs(30), "a completed batch", || async {
        served.get(&path, ACME).await.json()["status"] == "completed"
    })
    .await;
    stop.cancel();
    daemon.await.unwrap();
    mock.shutdown().await;
    let done = served.get(&path, ACME).await.json();
    let counts = &done["request_counts"];
    assert!(
        counts["failed"] != 0 && counts["completed"] != 0,
        "{counts}"
    );
    let open = served
        .batch_ok(ACME, &input, json!({"p": format!("{ACME_WORD}-open")}))
        .await;
    let id = |v: &Value| v.as_str().unwrap().to_string();
    Objects {
        files: vec![
            input.clone(),
            id(&done["output_file_id"]),
            id(&done["error_file_id"]),
        ],
        batches: vec![id(&done["id"]), id(&open["id"])],
    }
}

/// Everything acme can read about its objects: every GET operation on every id, and the lists.
async fn snapshot(
    served: &Served,
    ops: &[Operation],
    acme: &Objects,
) -> Vec<(String, u16, String)> {
    let mut seen = Vec::new();
    for op in ops.iter().filter(|op| op.method == "get") {
        let paths = match op.param() {
            Some(param) => acme.ids(param).iter().map(|id| op.with_id(id)).collect(),
            None => vec![op.path.clone()],
        };
        for path in paths {
            let reply = served.get(&path, ACME).await;
            seen.push((path, reply.status.as_u16(), reply.text()));
        }
    }
    seen
}

/// `GLOBEX` sends `method path`; the answer must be a 404 in OpenAI's shape identical to the
/// one for an id that never existed.
async fn foreign_is_like_unknown(served: &Served, op: &Operation, id: &str) {
    let unknown_id = format!("{id}x");
    let ask = |path: String| send(served.request(&op.method, &path).bearer_auth(GLOBEX));
    let foreign = ask(op.with_id(id)).await;
    foreign.assert_openai_error(404);
    let unknown = ask(op.with_id(&unknown_id)).await;
    assert_eq!(
        foreign.text().replace(id, "ID"),
        unknown.text().replace(&unknown_id, "ID"),
        "{} {} with another tenant's id",
        op.method,
        op.path
    );
}

/// The same comparison for a request whose body or query names the id.
async fn foreign_reply_is_like_unknown(
    id: &str,
    request: impl Fn(&str) -> reqwest::RequestBuilder,
    status: u16,
) {
    let unknown_id = format!("{id}x");
    let foreign = send(request(id).bearer_auth(GLOBEX)).await;
    foreign.assert_openai_error(status);
    let unknown = send(request(&unknown_id).bearer_auth(GLOBEX)).await;
    assert_eq!(
        foreign.text().replace(id, "ID"),
        unknown.text().replace(&unknown_id, "ID")
    );
}

/// Lists globex reads with these queries never show acme's objects, and do show its own.
async fn lists_show_only_own(world: &World, path: &str, queries: &[&str]) {
    for query in queries {
        let list = world
            .served
            .get(&format!("{path}{query}"), GLOBEX)
            .await
            .json();
        let seen = ids(&list);
        assert!(
            !seen.iter().any(|id| world.acme.all().any(|a| a == id)),
            "{path}{query}: {seen:?}"
        );
        let own_kind = if path.ends_with("files") {
            "file_id"
        } else {
            "batch_id"
        };
        let own = &world.globex.ids(own_kind)[0];
        if !query.contains("batch_output") && !query.contains(ACME_WORD) {
            assert!(
                seen.contains(own),
                "{path}{query} lists globex's own: {seen:?}"
            );
        }
    }
}

/// The operations whose path names no id: their id-bearing parameters (body, `after`, search).
async fn check_unparameterised(world: &World, op: &Operation) {
    let served = &world.served;
    match (op.method.as_str(), op.path.as_str()) {
        ("post", "/v1/files") => {} // takes no id; globex's own upload worked in the setup
        ("get", "/v1/files") => {
            let queries = ["", "?order=asc", "?purpose=batch", "?purpose=batch_output"];
            lists_show_only_own(world, "/v1/files", &queries).await;
            for id in &world.acme.files {
                let list = |id: &str| served.request("GET", &format!("/v1/files?after={id}"));
                foreign_reply_is_like_unknown(id, list, 400).await;
            }
        }
        ("get", "/v1/batches") => {
            let queries = ["", "?limit=100", &format!("?search={ACME_WORD}")];
            lists_show_only_own(world, "/v1/batches", &queries).await;
            let found = served
                .get(&format!("/v1/batches?search={ACME_WORD}"), ACME)
                .await;
            assert_eq!(
                ids(&found.json()).len(),
                2,
                "acme finds its own by metadata"
            );
            for id in &world.acme.batches {
                let list = |id: &str| served.request("GET", &format!("/v1/batches?after={id}"));
                foreign_reply_is_like_unknown(id, list, 400).await;
            }
        }
        ("post", "/v1/batches") => {
            for id in &world.acme.files {
                let create = |id: &str| {
                    let body = json!({"input_file_id": id, "endpoint": "/v1/chat/completions",
                        "completion_window": "24h"});
                    served.request("POST", "/v1/batches").json(&body)
                };
                foreign_reply_is_like_unknown(id, create, 404).await;
            }
        }
        (method, path) => panic!("{method} {path}: add its tenant isolation check here"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_ids_are_not_found_and_change_nothing() {
    let world = World::new().await;
    let ops = operations(&world.served).await;
    let before = snapshot(&world.served, &ops, &world.acme).await;
    for (path, status, body) in &before {
        // Statistics are for input files only; everything else acme can read.
        let stats_of_output = path.ends_with("/stats") && *status == 400;
        assert!(*status == 200 || stats_of_output, "{path}: {status} {body}");
    }
    for op in &ops {
        match op.param() {
            Some(param) => {
                for id in world.acme.ids(param) {
                    foreign_is_like_unknown(&world.served, op, id).await;
                }
            }
            None => check_unparameterised(&world, op).await,
        }
    }
    let after = snapshot(&world.served, &ops, &world.acme).await;
    assert!(before == after, "acme's objects changed");
    // The same ids still work for their owner: the 404s above were about the tenant.
    let cancel = format!("/v1/batches/{}/cancel", world.acme.batches[1]);
    let cancelled = send(world.served.request("POST", &cancel).bearer_auth(ACME)).await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.text());
    world.served.stop().await;
}

/// A bad `Authorization` header and the error code it must get.
struct BadKey {
    header: Option<HeaderValue>,
    code: &'static str,
}

fn bad_keys() -> Vec<BadKey> {
    let value = |s: String| Some(HeaderValue::from_str(&s).unwrap());
    let invalid = |s: String| BadKey {
        header: value(s),
        code: "invalid_api_key",
    };
    let missing = |header: Option<HeaderValue>| BadKey {
        header,
        code: "missing_api_key",
    };
    vec![
        missing(None),
        invalid("Bearer sk-wrong-canary-0123456789".into()),
        invalid(format!("Bearer {}", ACME.to_uppercase())),
        invalid(format!("Bearer {ACME}x")),
        invalid(format!("Bearer {}", &ACME[..ACME.len() - 1])),
        missing(value("Bearer".into())),
        missing(value(format!("Basic {ACME}"))),
        missing(value(ACME.into())),
        missing(Some(
            HeaderValue::from_bytes(b"Bearer sk-acme-\xff\xfe").unwrap(),
        )),
    ]
}

/// A request for `op` that would succeed with a good key: the ids are acme's, the bodies valid.
fn well_formed(world: &World, op: &Operation) -> reqwest::RequestBuilder {
    let path = match op.param() {
        Some(param) => op.with_id(&world.acme.ids(param)[0]),
        None => op.path.clone(),
    };
    let request = world.served.request(&op.method, &path);
    match (op.method.as_str(), op.path.as_str()) {
        ("post", "/v1/files") => {
            let (content_type, body) =
                multipart(&[("purpose", "batch")], Some(lines(1).as_bytes()));
            request.header("content-type", content_type).body(body)
        }
        ("post", "/v1/batches") => request.json(&json!({"input_file_id": world.acme.files[0],
            "endpoint": "/v1/chat/completions", "completion_window": "24h"})),
        _ => request,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_wrong_or_malformed_key_is_401_everywhere() {
    let world = World::new().await;
    let ops = operations(&world.served).await;
    let before = snapshot(&world.served, &ops, &world.acme).await;
    for op in &ops {
        for bad in bad_keys() {
            let mut request = well_formed(&world, op);
            if let Some(header) = &bad.header {
                request = request.header("authorization", header.clone());
            }
            let reply = send(request).await;
            let what = format!("{} {} with {:?}", op.method, op.path, bad.header);
            let error = reply.assert_openai_error(401);
            assert_eq!(error["type"], "authentication_error", "{what}");
            assert_eq!(error["code"], bad.code, "{what}");
            let echoed = format!("{:?} {}", reply.headers, reply.text()).to_lowercase();
            for secret in ["canary", "sk-acme", "sk-wrong"] {
                assert!(!echoed.contains(secret), "{what} echoed {secret}: {echoed}");
            }
        }
    }
    assert!(snapshot(&world.served, &ops, &world.acme).await == before);
    world.served.stop().await;
}
