//! A gateway on 127.0.0.1 for end-to-end tests: configured from environment-style variables,
//! served until stopped.

use tokio::sync::oneshot;
use tower_gemini::gateway::{Flags, GatewayConfig, serve_on};

/// A running gateway: its base URL, a way to stop it and its task.
pub struct Gateway {
    pub base: String,
    pub stop: Option<oneshot::Sender<()>>,
    pub served: tokio::task::JoinHandle<()>,
}

/// A config from `vars` (as `NAME=value` environment variables), the last setting of a name
/// winning, so callers can put defaults first and overrides after.
pub fn config_from(vars: &[(&str, &str)]) -> GatewayConfig {
    GatewayConfig::resolve(Flags::default(), |name| {
        vars.iter()
            .rev()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    })
    .unwrap()
}

/// Serve `config` on an ephemeral port of 127.0.0.1.
pub async fn start(config: GatewayConfig) -> Gateway {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(async move {
        serve_on(listener, &config, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Gateway {
        base,
        stop: Some(stop),
        served,
    }
}
