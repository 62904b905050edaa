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

/// `SIGHUP` reloads the configuration file of a running `gemini-gateway serve`: a token added
/// to the file is accepted, one removed is refused, and a connection opened before the signal
/// still serves after it.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_configuration_file() {
    use http_body_util::{BodyExt, Full};

    let mock = tower_gemini::mock::demo().start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("gateway-cli-hup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.toml");
    let write = |tokens: &str| {
        let partial = file.with_extension("partial");
        std::fs::write(
            &partial,
            format!("[[keys]]\nvalue = \"test-key-0003\"\n\n[gateway]\ntokens = [{tokens}]\n"),
        )
        .unwrap();
        std::fs::rename(&partial, &file).unwrap();
    };
    write("\"client-token-hup-0001\"");
    // A free port: bound, read and let go (the gateway binds it a moment later).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gemini-gateway"))
        .args(["serve", "--config"])
        .arg(&file)
        .args(["--upstream", &mock.url(), "--listen", &listen])
        .env_clear()
        // (The log goes to stdout.)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // One connection, opened before the signal and used after it.
    let mut connected = None;
    for _ in 0..200 {
        if let Ok(stream) = tokio::net::TcpStream::connect(&listen).await {
            connected = Some(stream);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let stream = connected.expect("the gateway did not start listening");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let ask = |token: &str| {
        http::Request::post(format!(
            "/v1beta/models/{}:generateContent",
            tower_gemini::mock::DEMO_MODEL
        ))
        .header("host", &listen)
        .header("content-type", "application/json")
        .header("x-goog-api-key", token)
        .body(Full::new(bytes::Bytes::from(
            r#"{"contents":[{"parts":[{"text":"hang up"}]}]}"#,
        )))
        .unwrap()
    };
    let mut status_of = async |token: &str| {
        sender.ready().await.unwrap();
        let response = sender.send_request(ask(token)).await.unwrap();
        let status = response.status();
        let _ = response.into_body().collect().await;
        status
    };
    assert_eq!(status_of("client-token-hup-0001").await, 200);
    assert_eq!(status_of("client-token-hup-0002").await, 401);

    write("\"client-token-hup-0002\"");
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    // Bounded: the reload is applied within a few seconds or the test fails.
    let mut reloaded = false;
    for _ in 0..100 {
        if status_of("client-token-hup-0002").await == 200 {
            reloaded = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(reloaded, "the new token was not accepted after SIGHUP");
    assert_eq!(status_of("client-token-hup-0001").await, 401);

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let output = tokio::task::spawn_blocking(move || {
        let _ = child.wait();
        let mut log = String::new();
        if let Some(mut pipe) = child.stdout.take() {
            use std::io::Read;
            let _ = pipe.read_to_string(&mut log);
        }
        log
    })
    .await
    .unwrap();
    assert!(output.contains("configuration reloaded"), "{output}");
    assert!(
        !output.contains("client-token-hup-"),
        "a token was logged: {output}"
    );
    assert!(
        !output.contains("test-key-0003"),
        "a key was logged: {output}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
