//! The `gemini-gateway` command line, run as a user runs it.
#![cfg(feature = "gateway")]

use std::process::Command;

/// `check-keys` serves nothing, so it needs no client token: the README's own
/// `cargo gateway check-keys` ran into "no client token" and failed. It checks each key against
/// the upstream and prints fingerprints only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_keys_runs_without_a_client_token_and_shows_no_key() {
    let mock = tower_gemini::mock::demo().start().await.unwrap();
    let upstream = mock.url();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_gemini-gateway"))
            .args(["check-keys", "--upstream", &upstream])
            .env_clear()
            .env("GEMINI_API_KEY", "test-key-0003,test-key-0001")
            // A listen address a server would refuse without a token: check-keys listens nowhere.
            .env("GATEWAY_LISTEN", "0.0.0.0:8080")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("…0003"), "{stdout}");
    assert!(stdout.contains("…0001"), "{stdout}");
    let all = format!("{stdout}{stderr}");
    assert!(!all.contains("test-key-"), "a key was printed:\n{all}");
    assert!(!all.contains("client token"), "{all}");
    // The demo mock's 0001 is an invalid key; 0003 is a good one.
    let line = |fp: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(fp))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(line("…0003").contains(" valid "), "{stdout}");
    assert!(line("…0001").contains(" invalid "), "{stdout}");
}
