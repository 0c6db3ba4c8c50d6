//! The demo's story, end to end, as `cargo run -p entra-sync-demo` plays it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_story_plays_to_the_end() {
    let binaries = entra_sync_demo::binaries::build().expect("the webhook and the worker build");
    let run_id = format!("{}-test", std::process::id());
    let logs = binaries.dir.join("entra-sync-demo-logs").join(&run_id);
    let mut out = Vec::new();
    let result = entra_sync_demo::run(&binaries, &run_id, &logs, &mut out).await;
    let out = String::from_utf8_lossy(&out);
    let took = result.unwrap_or_else(|e| {
        panic!("{out}\n{e:#}\nlogs: {}", logs.display());
    });
    let _ = std::fs::remove_dir_all(&logs);
    // Every step appeared (each is waited for, with the demo's patience); how fast is for
    // `cargo bench -p worker --bench latency` to say, not for a test to bound.
    assert_eq!(took.len(), 1 + entra_sync_demo::story::steps().len());
    assert!(out.contains("Platform Engineering"), "{out}");
    assert!(out.contains("proxy_admin"), "{out}");
    assert!(
        out.contains("keys: linus-laptop (linus@contoso.example)"),
        "{out}"
    );
    // Beyond sign-in: a rule's budget, a nested group's member, an owner as admin.
    assert!(out.contains("budget: 5000 per 30d"), "{out}");
    assert!(out.contains("katherine@contoso.example"), "{out}");
    assert!(
        out.lines()
            .any(|line| line.contains("barbara@contoso.example") && line.ends_with("admin")),
        "{out}"
    );
}

/// `cargo run -p entra-sync-demo -- --with-proxy`: the same story, and LiteLLM's proxy itself
/// accepts Linus's key before he is removed in Entra and refuses it after.
#[tokio::test(flavor = "multi_thread")]
async fn with_litellms_proxy_the_removed_members_key_is_refused() {
    let binaries = entra_sync_demo::binaries::build().expect("the webhook and the worker build");
    let run_id = format!("{}-proxy-test", std::process::id());
    let logs = binaries.dir.join("entra-sync-demo-logs").join(&run_id);
    let mut out = Vec::new();
    let options = entra_sync_demo::Options { with_proxy: true };
    let result = entra_sync_demo::run_with(&binaries, &run_id, &logs, &mut out, options).await;
    let out = String::from_utf8_lossy(&out);
    let played = result.unwrap_or_else(|e| {
        panic!("{out}\n{e:#}\nlogs: {}", logs.display());
    });
    let _ = std::fs::remove_dir_all(&logs);
    assert_eq!(played.took.len(), 1 + entra_sync_demo::story::steps().len());
    let answers = played
        .linus_key
        .expect("the proxy was asked for Linus's key");
    assert_eq!(answers.before, reqwest::StatusCode::OK, "{out}");
    assert_eq!(answers.after, reqwest::StatusCode::UNAUTHORIZED, "{out}");
    assert!(out.contains("linus-laptop: 401 Unauthorized, "), "{out}");
}
