//! The query engine stand-in (tests/litellm-proxy/engine.mjs) on its own, as prisma-client-py
//! speaks to it: GraphQL in, the native engine's answers out, on a test database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use entra_sync_testkit::TestDatabase;
use entra_sync_testkit::litellm_proxy::installed;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::{Value, json};

struct Engine {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn var(name: &str) -> String {
    installed()
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("the installer sets {name}"))
}

impl Engine {
    async fn start(db: &TestDatabase) -> Self {
        let (binary, schema) = tokio::task::spawn_blocking(|| {
            (
                var("PRISMA_QUERY_ENGINE_BINARY"),
                var("LITELLM_PROXY_SCHEMA"),
            )
        })
        .await
        .unwrap();
        let version = Command::new(&binary).arg("--version").output().unwrap();
        assert!(
            String::from_utf8_lossy(&version.stdout)
                .contains("393aa359c9ad4a4bb28630fb5613f9c281cde053")
        );
        // The engine takes the port it is given, as prisma-client-py picks one.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&binary)
            .args([
                "-p",
                &port.to_string(),
                "--enable-metrics",
                "--enable-raw-queries",
            ])
            .env("PRISMA_DML_PATH", schema)
            // Prisma's own parameters, which pg must not be given.
            .env(
                "DATABASE_URL",
                format!(
                    "{}&connection_limit=3&pool_timeout=5&schema=public",
                    db.url()
                ),
            )
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let engine = Self {
            child,
            url: format!("http://localhost:{port}"),
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(answer) = engine
                .http
                .get(format!("{}/status", engine.url))
                .send()
                .await
                && answer.status().is_success()
            {
                return engine;
            }
            assert!(
                Instant::now() < deadline,
                "the engine did not answer /status"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn post(&self, path: &str, body: &Value, tx: Option<&str>) -> Value {
        let mut request = self.http.post(format!("{}{path}", self.url)).json(body);
        if let Some(tx) = tx {
            request = request.header("X-transaction-id", tx);
        }
        let answer = request.send().await.unwrap();
        assert!(answer.status().is_success(), "{path}: {}", answer.status());
        answer.json().await.unwrap()
    }

    async fn query(&self, graphql: &str, tx: Option<&str>) -> Value {
        self.post("/", &json!({"query": graphql, "variables": {}}), tx)
            .await
    }
}

async fn text(db: &TestDatabase, sql: &str) -> String {
    db.conn()
        .query_one(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index::<String>(0)
        .unwrap()
}

const CREATE: &str = r#"mutation { result: createOneLiteLLM_TeamTable(data: { team_id: "t1", metadata: "{\"note\": \"kept\"}", models: ["m1"] }) { team_id metadata models created_at spend } }"#;

#[tokio::test]
async fn prisma_client_pys_graphql_is_answered_as_the_native_engine_would() {
    let db = TestDatabase::litellm_only().await;
    let engine = Engine::start(&db).await;

    // A Json field stays JSON in the database, and comes back as its text; other values untagged.
    let created = engine.query(CREATE, None).await;
    let team = &created["data"]["result"];
    assert_eq!(team["team_id"], "t1", "{created}");
    assert_eq!(
        serde_json::from_str::<Value>(team["metadata"].as_str().unwrap()).unwrap(),
        json!({"note": "kept"})
    );
    assert_eq!(team["models"], json!(["m1"]));
    assert!(team["created_at"].is_string(), "{created}");
    assert_eq!(
        text(
            &db,
            r#"SELECT jsonb_typeof(metadata) FROM "LiteLLM_TeamTable""#
        )
        .await,
        "object"
    );

    // A unique violation is the native engine's error, with its code.
    let duplicate = engine.query(CREATE, None).await;
    assert_eq!(
        duplicate["errors"][0]["user_facing_error"]["error_code"], "P2002",
        "{duplicate}"
    );

    // A batch in a transaction.
    let batch = engine
        .post(
            "/",
            &json!({"batch": [
                {"query": r#"mutation { result: updateOneLiteLLM_TeamTable(where: { team_id: "t1" }, data: { team_alias: { set: "Batched" } }) { team_id } }"#, "variables": {}},
                {"query": r#"query { result: findManyLiteLLM_TeamTable(where: { team_alias: "Batched" }) { team_id team_alias } }"#, "variables": {}},
            ], "transaction": true}),
            None,
        )
        .await;
    assert_eq!(
        batch["batchResult"][1]["data"]["result"][0]["team_alias"], "Batched",
        "{batch}"
    );

    // An interactive transaction rolled back leaves nothing; one committed does.
    for (end, alias) in [("rollback", "Batched"), ("commit", "Committed")] {
        let started = engine
            .post(
                "/transaction/start",
                &json!({"max_wait": 2000, "timeout": 5000}),
                None,
            )
            .await;
        let tx = started["id"].as_str().unwrap().to_owned();
        engine
            .query(
                r#"mutation { result: updateOneLiteLLM_TeamTable(where: { team_id: "t1" }, data: { team_alias: "Committed" }) { team_id } }"#,
                Some(&tx),
            )
            .await;
        engine
            .post(&format!("/transaction/{tx}/{end}"), &json!({}), None)
            .await;
        assert_eq!(
            text(&db, r#"SELECT team_alias FROM "LiteLLM_TeamTable""#).await,
            alias
        );
    }

    // Raw queries, including pg_catalog types the WebAssembly engine's driver would refuse.
    let raw = engine
        .query(
            r#"mutation { result: queryRaw(query: "SELECT relname, '\"LiteLLM_TeamTable\"'::regclass AS r, ARRAY[relname] AS names FROM pg_class WHERE relname = $1", parameters: "[\"LiteLLM_TeamTable\"]") }"#,
            None,
        )
        .await;
    assert_eq!(
        raw["data"]["result"]["rows"][0],
        json!([
            "LiteLLM_TeamTable",
            "\"LiteLLM_TeamTable\"",
            ["LiteLLM_TeamTable"]
        ]),
        "{raw}"
    );
    let executed = engine
        .query(
            r#"mutation { result: executeRaw(query: "DELETE FROM \"LiteLLM_TeamTable\"", parameters: "[]") }"#,
            None,
        )
        .await;
    assert_eq!(executed["data"]["result"], 1, "{executed}");
}
