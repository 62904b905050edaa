//! `gemini-gateway`: the key-pooling Gemini proxy. The app lives in `tower_gemini::gateway`;
//! this is its command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tower_gemini::gateway::{self, Flags, GatewayConfig};

#[derive(Parser)]
#[command(
    name = "gemini-gateway",
    version,
    about = "A Gemini proxy that spreads calls over several API keys"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the proxy (OpenAI-compatible /v1 and native /v1beta routes).
    Serve(Common),
    /// Call every configured key once (countTokens) and print what Google said of it.
    CheckKeys(Common),
    /// Run the gateway against the embedded mock with busy clients, and show what it does.
    Demo(DemoArgs),
}

#[derive(Args)]
struct DemoArgs {
    /// How long the clients send, in seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Closed-loop clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// How much faster than real time the quota clock runs.
    #[arg(long, default_value_t = 12)]
    speed: u32,
    /// Where to write the SVG chart of each key's traffic.
    #[arg(long, default_value = "gemini-gateway-demo.svg")]
    chart: PathBuf,
}

/// Flags beat environment variables, which beat the file.
#[derive(Args)]
struct Common {
    /// A TOML file: the key pool's format plus a [gateway] table.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where to listen [default: 127.0.0.1:8080; env GATEWAY_LISTEN].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The upstream base URL [default: Google's; env LLM_API_ENDPOINT].
    #[arg(long)]
    upstream: Option<String>,
    /// The model of OpenAI-compatible requests without one [env LLM_MODEL].
    #[arg(long)]
    model: Option<String>,
    /// How long a request may wait for a key when every project is busy [default: 60].
    #[arg(long, value_name = "SECONDS")]
    max_wait: Option<u64>,
    /// Serve without client tokens (then on 127.0.0.1 only).
    #[arg(long)]
    allow_unauthenticated: bool,
    /// Keep the pool's state (daily usage, disabled keys, cool-downs, learned limits) in this
    /// file across restarts [env GATEWAY_STATE_FILE].
    #[arg(long, value_name = "FILE")]
    state_file: Option<PathBuf>,
    /// Share the pool's state (quota ledgers, cool-downs, disabled keys, learned limits) with
    /// the other gateways using these keys through this Redis, e.g. redis://127.0.0.1:6379, or
    /// this Redis Cluster, e.g. redis+cluster://10.0.0.1:7000,10.0.0.2:7000 [env REDIS_URL].
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
    /// The CA certificate (PEM) that signed the certificate of a Redis reached over TLS
    /// (rediss://, rediss+cluster://), when it is not among the webpki roots [env
    /// REDIS_CA_FILE].
    #[arg(long, value_name = "FILE")]
    redis_ca: Option<PathBuf>,
    /// The client certificate (PEM) for a Redis that checks its clients (tls-auth-clients)
    /// [env REDIS_CLIENT_CERT_FILE].
    #[arg(long, value_name = "FILE")]
    redis_client_cert: Option<PathBuf>,
    /// The private key (PEM) of --redis-client-cert [env REDIS_CLIENT_KEY_FILE].
    #[arg(long, value_name = "FILE")]
    redis_client_key: Option<PathBuf>,
    /// Serve against the embedded mock Gemini instead of Google, with its demo keys (no real
    /// key needed): for trying the gateway and its clients.
    #[arg(long)]
    demo: bool,
    /// Export traces over OTLP/HTTP to this receiver, e.g. http://127.0.0.1:4318, or over TLS
    /// to an https:// one [env OTEL_EXPORTER_OTLP_ENDPOINT; the other OTEL_* variables are
    /// honoured, OTEL_EXPORTER_OTLP_CERTIFICATE and the client's among them].
    #[cfg(feature = "otel")]
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
}

/// What the demo changes in the configuration read: the mock's two good keys in their
/// projects (the small one's limit known), and, unless the file says otherwise, the cache and a
/// fallback chain (what saves quota).
fn demo_overlay(config: &mut GatewayConfig) -> Result<(), tower_gemini::Error> {
    config.pool = tower_gemini::KeyPool::builder()
        .key_with(tower_gemini::KeySpec::new("test-key-0003").project("proj-small"))
        .key_with(tower_gemini::KeySpec::new("test-key-0004").project("proj-big"))
        .project_model_limits(
            "proj-small",
            tower_gemini::mock::DEMO_MODEL,
            tower_gemini::ModelLimits {
                rpm: Some(3),
                ..Default::default()
            },
        )
        .build()?;
    if config.saving.cache.is_none() {
        config.saving.cache = Some(tower_gemini::cache::CacheLayer::new());
    }
    if config.saving.fallback.is_empty() {
        config.saving.fallback = tower_gemini::fallback::FallbackLayer::new()
            .chain("gemini-2.5-pro", [tower_gemini::mock::DEMO_MODEL])?;
    }
    Ok(())
}

impl Common {
    /// The configuration, and the mock it serves against with `--demo` (kept alive).
    async fn config_or_demo(
        self,
    ) -> Result<(GatewayConfig, Option<tower_gemini::mock::MockServer>), tower_gemini::Error> {
        if !self.demo {
            return Ok((self.config()?, None));
        }
        let mock = tower_gemini::mock::demo().start().await.map_err(|e| {
            tower_gemini::Error::new(
                tower_gemini::ErrorKind::Config,
                format!("cannot start the mock: {e}"),
            )
        })?;
        let upstream = mock.url();
        let demo = Common {
            upstream: Some(upstream),
            ..self
        };
        let mut config = GatewayConfig::resolve(demo.flags(), |name| match name {
            "GEMINI_API_KEY" => Some("test-key-0003,test-key-0004".to_owned()),
            "LLM_API_ENDPOINT" => None,
            other => std::env::var(other).ok(),
        })?;
        demo_overlay(&mut config)?;
        // A reload reads the file again and makes the same changes.
        config.source = config.source.take().map(|source| source.then(demo_overlay));
        Ok((config, Some(mock)))
    }

    /// `check-keys` serves nothing and listens nowhere: it needs no client token (the checks
    /// go from this process to Google), so the configuration is read as if unauthenticated on
    /// loopback.
    fn for_checking_keys(self) -> Common {
        Common {
            allow_unauthenticated: true,
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            ..self
        }
    }

    fn flags(&self) -> Flags {
        Flags {
            config: self.config.clone(),
            listen: self.listen,
            upstream: self.upstream.clone(),
            model: self.model.clone(),
            max_wait: self.max_wait.map(Duration::from_secs),
            allow_unauthenticated: self.allow_unauthenticated,
            state_file: self.state_file.clone(),
            redis_url: self.redis_url.clone(),
            redis_ca: self.redis_ca.clone(),
            redis_client_cert: self.redis_client_cert.clone(),
            redis_client_key: self.redis_client_key.clone(),
        }
    }

    fn config(self) -> Result<GatewayConfig, tower_gemini::Error> {
        GatewayConfig::from_process_env(self.flags())
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: no new connections; letting requests in flight finish");
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // The log at INFO; with feature `otel`, and an endpoint, the spans exported too (flushed
    // when `_otel` is dropped, at the end).
    #[cfg(feature = "otel")]
    let _otel = {
        let endpoint = match &cli.command {
            Command::Serve(common) | Command::CheckKeys(common) => common.otlp_endpoint.clone(),
            Command::Demo(_) => None,
        };
        match gateway::otel::install(endpoint.as_deref(), tracing::Level::INFO) {
            Ok(otel) => otel,
            Err(error) => {
                eprintln!("gemini-gateway: {error}");
                return ExitCode::FAILURE;
            }
        }
    };
    #[cfg(not(feature = "otel"))]
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .init();
    let outcome = match cli.command {
        Command::Demo(args) => {
            let options = gateway::demo::DemoOptions {
                seconds: args.seconds,
                clients: args.clients,
                speed: args.speed,
                chart: Some(args.chart),
            };
            match gateway::demo::run(&options).await {
                Ok(summary) => {
                    println!("\n{}", summary.report());
                    if summary.failures > 0 {
                        eprintln!(
                            "gemini-gateway demo: {} client-visible failures",
                            summary.failures
                        );
                        return ExitCode::FAILURE;
                    }
                    if summary.cache_hits == 0 || summary.fallbacks == 0 {
                        eprintln!(
                            "gemini-gateway demo: expected cache hits and fallbacks, saw {} and {}",
                            summary.cache_hits, summary.fallbacks
                        );
                        return ExitCode::FAILURE;
                    }
                    Ok(())
                }
                Err(error) => Err(error),
            }
        }
        Command::Serve(common) => match common.config_or_demo().await {
            Ok((config, _mock)) => gateway::serve(config, shutdown_signal()).await,
            Err(error) => Err(error),
        },
        Command::CheckKeys(common) => match common.for_checking_keys().config() {
            Ok(config) => {
                let checks = gateway::check_keys(&config).await;
                print!("{}", gateway::table(&checks));
                Ok(())
            }
            Err(error) => Err(error),
        },
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gemini-gateway: {error}");
            ExitCode::FAILURE
        }
    }
}
