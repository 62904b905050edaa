//! The gateway's configuration: flags beat the environment, the environment beats the file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::auth::Token;
use crate::error::Error;
use crate::pool::{KeyPool, ModelLimits};

/// Google's endpoint, the default upstream.
pub const GOOGLE: &str = "https://generativelanguage.googleapis.com";
/// The default model of OpenAI-compatible requests without one.
pub const DEFAULT_MODEL: &str = "gemini-2.5-flash";
/// Where the gateway listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// How long a request may wait for a key when every project is busy.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(60);
/// How often disabled keys are called again.
pub const DEFAULT_REVALIDATE: Duration = Duration::from_secs(3600);
/// The largest request body accepted.
pub const DEFAULT_BODY_LIMIT: usize = 20 * 1024 * 1024;
/// Connections served at once; more wait in the listen backlog.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Connections one client address may hold at once when not configured: three quarters of the
/// connection limit (768 of 1,024), so one address never takes every place; more from it are
/// answered 503 and closed.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize =
    DEFAULT_MAX_CONNECTIONS - DEFAULT_MAX_CONNECTIONS / 4;
/// How long an answer may wait for its client to read it (a write that makes no progress):
/// then the connection is closed. A client that sends requests and never reads holds nothing.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Request bodies held at once, bytes: a request whose body would pass it waits for others to
/// be answered.
pub const DEFAULT_BODY_MEMORY: usize = 512 * 1024 * 1024;

/// What the command line gave (each `None` when not given).
#[derive(Debug, Default, Clone)]
pub struct Flags {
    /// `--config`: a TOML file (the key pool's format plus a `[gateway]` table).
    pub config: Option<PathBuf>,
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--upstream`.
    pub upstream: Option<String>,
    /// `--model`.
    pub model: Option<String>,
    /// `--max-wait` (seconds).
    pub max_wait: Option<Duration>,
    /// `--allow-unauthenticated`.
    pub allow_unauthenticated: bool,
    /// `--state-file`: where the pool's state is kept across restarts.
    pub state_file: Option<PathBuf>,
    /// `--redis-url`: share the pool's state with other gateways through this Redis.
    pub redis_url: Option<String>,
    /// `--redis-ca`: the CA (PEM) that signed a `rediss://` Redis's certificate, when it is not
    /// among the webpki roots.
    pub redis_ca: Option<PathBuf>,
    /// `--redis-client-cert`: the client certificate (PEM) for a Redis that checks clients.
    pub redis_client_cert: Option<PathBuf>,
    /// `--redis-client-key`: that certificate's private key (PEM).
    pub redis_client_key: Option<PathBuf>,
}

/// The `[gateway]` table of the configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGateway {
    listen: Option<String>,
    upstream: Option<String>,
    model: Option<String>,
    tokens: Option<Vec<String>>,
    admin_token: Option<String>,
    allowed_origins: Option<Vec<String>>,
    max_wait_secs: Option<u64>,
    body_limit_bytes: Option<usize>,
    max_connections: Option<usize>,
    max_connections_per_address: Option<usize>,
    write_timeout_secs: Option<u64>,
    body_memory_mb: Option<usize>,
    client_limits: Option<ModelLimits>,
    revalidate_secs: Option<u64>,
    state_file: Option<PathBuf>,
    redis_url: Option<String>,
    redis_prefix: Option<String>,
    redis_when_unreachable: Option<String>,
    redis_ca_file: Option<PathBuf>,
    redis_client_cert_file: Option<PathBuf>,
    redis_client_key_file: Option<PathBuf>,
    cache: Option<super::saving::FileCache>,
    fallback: Option<std::collections::BTreeMap<String, Vec<String>>>,
    budget: Option<super::saving::FileBudget>,
    prices: Option<std::collections::BTreeMap<String, super::saving::FilePrice>>,
    quota_alert: Option<f64>,
    prefix_affinity: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
struct FileTop {
    #[serde(default)]
    gateway: FileGateway,
}

/// The effective configuration.
#[derive(Clone)]
pub struct GatewayConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The upstream base URL, without a trailing slash (`https://generativelanguage.googleapis.com`).
    pub upstream: String,
    /// The model of OpenAI-compatible requests that name none.
    pub model: String,
    /// Client tokens; empty only with `allow_unauthenticated`.
    pub tokens: Vec<Token>,
    /// The admin token for the status and admin routes; without one they are closed.
    pub admin_token: Option<Token>,
    /// Origins allowed by CORS: exact (`https://app.example.com`) or a subdomain wildcard
    /// (`https://*.example.com`).
    pub allowed_origins: Vec<String>,
    /// How long a request may wait for a key.
    pub max_wait: Duration,
    /// The largest request body, in bytes.
    pub body_limit: usize,
    /// Connections served at once (`GATEWAY_MAX_CONNECTIONS`, `max_connections`; default
    /// 1,024); more wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Connections one client address may hold at once
    /// (`GATEWAY_MAX_CONNECTIONS_PER_ADDRESS`, `max_connections_per_address`; default three
    /// quarters of `max_connections`, at most `max_connections`); more from it are answered
    /// 503 and closed at once.
    pub max_connections_per_address: usize,
    /// How long an answer may wait for the client to read it (`GATEWAY_WRITE_TIMEOUT_SECS`,
    /// `write_timeout_secs`; default 30 s) before the connection is closed; also how long
    /// shutdown waits for connections in flight beyond the streams' own ends.
    pub write_timeout: Duration,
    /// Request bodies held in memory at once, bytes (`GATEWAY_BODY_MEMORY_MB`,
    /// `body_memory_mb`; default 512 MiB): a request whose body would pass it waits (up to the
    /// body read timeout) for others to be answered. At least `body_limit`.
    pub body_memory: usize,
    /// Limits per client token, if any.
    pub client_limits: Option<ModelLimits>,
    /// No client token required (loopback only).
    pub allow_unauthenticated: bool,
    /// How often disabled keys are called again (and re-enabled if they work).
    pub revalidate_every: Duration,
    /// Where the pool's state is kept across restarts (read at start, written every 30 s and
    /// at shutdown), if anywhere.
    pub state_file: Option<PathBuf>,
    /// The Redis shared with the other gateways using these keys, if any
    /// (`redis://host:port`, or a cluster: `redis+cluster://host:port,host:port`): one quota
    /// ledger, cool-downs and disabled keys for all.
    pub redis_url: Option<String>,
    /// While that Redis is unreachable: fall back to this gateway's own state (default), or
    /// refuse requests.
    pub redis_when_unreachable: crate::state::WhenUnreachable,
    /// The prefix of the gateway's Redis keys (default `tower-gemini`): gateways sharing one
    /// pool use the same; independent pools in one Redis use different ones.
    pub redis_prefix: Option<String>,
    /// How to trust a Redis reached over TLS (`rediss://`): a CA of its own and a client
    /// certificate, read from `--redis-ca`, `--redis-client-cert` and `--redis-client-key`
    /// (`REDIS_CA_FILE`, …; `redis_ca_file`, … in `[gateway]`); the webpki roots else.
    pub redis_tls: crate::state::RedisTls,
    /// The response cache, model fallback, prices, budgets and quota alerts.
    pub saving: super::saving::Saving,
    /// Requests repeating a recent request's long prefix prefer the project that served it,
    /// where Google's implicit cache discounts those tokens (`GATEWAY_PREFIX_AFFINITY`,
    /// `prefix_affinity`; default on). See [`PrefixAffinity`](crate::affinity::PrefixAffinity).
    pub prefix_affinity: bool,
    /// The keys.
    pub pool: KeyPool,
    /// Where this configuration was read from, to read it again on `SIGHUP` or
    /// `POST /api/config/reload` (set by [`resolve`](Self::resolve) and
    /// [`from_process_env`](Self::from_process_env); `None` for one made in code).
    pub source: Option<ConfigSource>,
}

/// How a configuration was read, to read it again (a live reload): the same flags, the
/// environment as it was at start (a process's environment does not change), the file as it is
/// now. Its `Debug` names the file only: the environment holds tokens and keys.
#[derive(Clone)]
pub struct ConfigSource {
    flags: Flags,
    /// Each variable looked up, with what it held.
    env: std::sync::Arc<std::collections::BTreeMap<String, Option<String>>>,
    keys: std::sync::Arc<Vec<(String, String)>>,
    /// What the program changed in the configuration after reading it (see
    /// [`then`](Self::then)), done again to each one read again.
    adjust: Option<Adjust>,
}

/// A change the program makes to every configuration read.
type Adjust = std::sync::Arc<dyn Fn(&mut GatewayConfig) -> Result<(), Error> + Send + Sync>;

impl ConfigSource {
    /// The configuration file, if there is one (without one there is nothing to reload).
    pub fn file(&self) -> Option<&std::path::Path> {
        self.flags.config.as_deref()
    }

    /// The reloadable settings the environment set at start (`tokens` from `GATEWAY_TOKENS`,
    /// …): a reload keeps them, whatever the file says.
    pub fn reloadable_from_env(&self) -> Vec<String> {
        let set = |name: &str| self.env.get(name).is_some_and(Option::is_some);
        [
            ("tokens", set("GATEWAY_TOKENS") || set("MY_API_TOKEN")),
            ("admin_token", set("ADMIN_TOKEN")),
            ("allowed_origins", set("ALLOWED_ORIGINS")),
            ("pacing", set("GATEWAY_PACING")),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| name.to_owned())
        .collect()
    }

    /// Read the configuration again: the file as it is now, under the same flags and
    /// environment, with what [`then`](Self::then) changes. Errors as
    /// [`GatewayConfig::resolve`] does.
    pub fn read(&self) -> Result<GatewayConfig, Error> {
        let env = |name: &str| self.env.get(name).cloned().flatten();
        let mut config =
            GatewayConfig::resolve_with(self.flags.clone(), env, (*self.keys).clone())?;
        if let Some(adjust) = &self.adjust {
            adjust(&mut config)?;
        }
        config.source = Some(self.clone());
        Ok(config)
    }

    /// Change every configuration read again as the program changed the first (the demo's
    /// keys and mock, say), so that a reload applies the file without undoing it.
    pub fn then(
        mut self,
        adjust: impl Fn(&mut GatewayConfig) -> Result<(), Error> + Send + Sync + 'static,
    ) -> ConfigSource {
        self.adjust = Some(std::sync::Arc::new(adjust));
        self
    }
}

impl std::fmt::Debug for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSource")
            .field("file", &self.file())
            .finish_non_exhaustive()
    }
}

/// The upstream must be `https://`, or `http://` on this machine only (a local mock): the keys
/// travel in its requests, and over plain HTTP anyone on the path would read them.
pub(crate) fn check_upstream(upstream: &str) -> Result<(), Error> {
    let refuse = |why: &str| Err(Error::config(format!("upstream {upstream:?} {why}")));
    // Parsed as a URI, not read by hand: `http://[::1]@example.invalid` names the host after
    // the `@`, whatever comes before it.
    let Ok(uri) = upstream.parse::<http::Uri>() else {
        return refuse("is not a URL; use https://generativelanguage.googleapis.com");
    };
    let Some(authority) = uri.authority() else {
        return refuse("names no host; use https://generativelanguage.googleapis.com");
    };
    if authority.as_str().contains('@') {
        return refuse(
            "has user information before an '@': the keys would go to the host after it; give the host alone",
        );
    }
    if uri.query().is_some() {
        return refuse(
            "must be a base URL without a query, such as https://generativelanguage.googleapis.com",
        );
    }
    let host = authority.host();
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => Ok(()),
        Some("http") => {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = bare.eq_ignore_ascii_case("localhost")
                || bare
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(())
            } else {
                refuse(
                    "is plain HTTP to another machine: the API keys would cross the network readable; use https://, or http:// only for a mock on 127.0.0.1",
                )
            }
        }
        _ => refuse("must start with https:// (or http:// for a mock on this machine)"),
    }
}

/// Client tokens are told apart by their fingerprints (the last four characters) in budgets,
/// spending and the status API: two tokens with one fingerprint would share a budget, so
/// such a list is refused.
pub(crate) fn check_tokens(tokens: &[Token]) -> Result<(), Error> {
    let mut seen = std::collections::HashSet::new();
    for token in tokens {
        let fingerprint = token.fingerprint();
        if !seen.insert(fingerprint.clone()) {
            return Err(Error::config(format!(
                "two client tokens end in the same four characters ({fingerprint}): budgets and spending are kept per token by its last four characters, so they would share one; give each token a distinct ending"
            )));
        }
    }
    Ok(())
}

/// `value` of the variable `name` as a whole number, or an error giving `example`.
fn whole(name: &str, value: &str, example: &str) -> Result<usize, Error> {
    value.trim().parse().map_err(|_| {
        Error::config(format!(
            "{name}={value:?} is not a whole number, such as {example}"
        ))
    })
}

fn comma_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect()
}

impl GatewayConfig {
    /// A configuration made in code: `pool` served to clients holding one of `tokens`, sent to
    /// `upstream`, every other setting at its default (listen 127.0.0.1:0 for [`serve_on`](super::serve_on)
    /// with a listener you bind, no admin token, no CORS origin).
    pub fn new(pool: KeyPool, upstream: impl Into<String>, tokens: Vec<Token>) -> Self {
        GatewayConfig {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            upstream: upstream.into().trim_end_matches('/').to_owned(),
            model: DEFAULT_MODEL.to_owned(),
            tokens,
            admin_token: None,
            allowed_origins: Vec::new(),
            max_wait: DEFAULT_MAX_WAIT,
            body_limit: DEFAULT_BODY_LIMIT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            body_memory: DEFAULT_BODY_MEMORY,
            client_limits: None,
            allow_unauthenticated: false,
            revalidate_every: DEFAULT_REVALIDATE,
            state_file: None,
            redis_url: None,
            redis_when_unreachable: crate::state::WhenUnreachable::FallBack,
            redis_prefix: None,
            redis_tls: crate::state::RedisTls::default(),
            saving: super::saving::Saving::default(),
            prefix_affinity: true,
            pool,
            source: None,
        }
    }

    /// Resolve the configuration from flags, environment variables (read through `env`) and
    /// the file named by `--config`.
    ///
    /// Errors say what is wrong and how to fix it: no keys, no client token (unless
    /// unauthenticated mode was asked for, which then listens on loopback only), a malformed
    /// file or address.
    ///
    /// `env` looks one variable up; numbered keys are looked up as `GOOGLE_API_KEY_1` to
    /// `_1000`. [`from_process_env`](Self::from_process_env) reads every variable of the process,
    /// numbered keys past 1,000 included.
    pub fn resolve(flags: Flags, env: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let keys = crate::pool::env::probe_key_vars(&env);
        Self::resolve_with(flags, env, keys)
    }

    /// [`resolve`](Self::resolve) from the process environment, every key variable included
    /// (`GOOGLE_API_KEY_<N>` for any N, as [`KeyPool::from_env`] reads them).
    pub fn from_process_env(flags: Flags) -> Result<Self, Error> {
        let vars: std::collections::HashMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        let keys = vars
            .iter()
            .filter(|(name, _)| crate::pool::env::is_key_var(name))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        Self::resolve_with(flags, |name| vars.get(name).cloned(), keys)
    }

    fn resolve_with(
        flags: Flags,
        env: impl Fn(&str) -> Option<String>,
        keys: Vec<(String, String)>,
    ) -> Result<Self, Error> {
        // What each variable held is kept to read the configuration again the same way.
        let seen = std::cell::RefCell::new(std::collections::BTreeMap::new());
        let env = |name: &str| {
            let value = env(name);
            seen.borrow_mut().insert(name.to_owned(), value.clone());
            value
        };
        let mut config = Self::read(flags.clone(), env, &keys)?;
        config.source = Some(ConfigSource {
            flags,
            env: std::sync::Arc::new(seen.into_inner()),
            keys: std::sync::Arc::new(keys),
            adjust: None,
        });
        Ok(config)
    }

    fn read(
        flags: Flags,
        env: impl Fn(&str) -> Option<String>,
        keys: &[(String, String)],
    ) -> Result<Self, Error> {
        let text = match &flags.config {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                Error::config(format!(
                    "cannot read the configuration file {}: {e}",
                    path.display()
                ))
            })?),
            None => None,
        };
        let file = match &text {
            Some(text) => {
                toml::from_str::<FileTop>(text)
                    .map_err(|e| {
                        Error::config(format!(
                            "configuration file {}: [gateway]: {}",
                            flags
                                .config
                                .as_deref()
                                .map(|p| p.display().to_string())
                                .unwrap_or_default(),
                            // A token written where a list goes is quoted by the parser:
                            // shown by its last 4 characters only.
                            crate::pool::toml_config::redact_quoted(e.message())
                        ))
                    })?
                    .gateway
            }
            None => FileGateway::default(),
        };
        let mut builder = KeyPool::builder();
        if let Some(text) = &text {
            builder = builder.toml_str(text)?;
        }
        if !keys.is_empty() {
            builder = builder.keys_from_vars(keys.to_vec())?;
        }
        // GATEWAY_PACING: "off", "spread", or the burst as a share of the minute (`0.05`).
        if let Some(value) = env("GATEWAY_PACING") {
            let value = value.trim();
            let pacing = match value.parse::<f64>() {
                Ok(burst) => crate::pool::toml_config::pacing(None, Some(burst)),
                Err(_) => crate::pool::toml_config::pacing(Some(value), None),
            }
            .map_err(|e| e.context("GATEWAY_PACING"))?;
            if let Some(pacing) = pacing {
                builder = builder.pacing(pacing);
            }
        }
        let pool = builder.build().map_err(|e| {
            e.context(
                "no keys for the gateway: set GEMINI_API_KEY=k1,k2 or add [[keys]] to --config",
            )
        })?;

        let listen = match (flags.listen, env("GATEWAY_LISTEN").or(file.listen)) {
            (Some(addr), _) => addr,
            (None, Some(text)) => text.parse().map_err(|_| {
                Error::config(format!(
                    "listen address {text:?} is not an address such as 127.0.0.1:8080"
                ))
            })?,
            (None, None) => DEFAULT_LISTEN
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080))),
        };
        let upstream = flags
            .upstream
            .or_else(|| env("LLM_API_ENDPOINT"))
            .or(file.upstream)
            .unwrap_or_else(|| GOOGLE.to_owned());
        let upstream = upstream.trim().trim_end_matches('/').to_owned();
        check_upstream(&upstream)?;
        let model = flags
            .model
            .or_else(|| env("LLM_MODEL"))
            .or(file.model)
            .unwrap_or_else(|| DEFAULT_MODEL.to_owned());
        let model = model.trim().to_owned();
        crate::model::check_name(&model).map_err(|problem| {
            Error::config(format!("the default model (LLM_MODEL): {problem}"))
        })?;
        let tokens: Vec<String> = match env("GATEWAY_TOKENS").or_else(|| env("MY_API_TOKEN")) {
            Some(list) => comma_list(&list),
            None => file.tokens.unwrap_or_default(),
        };
        let tokens = tokens
            .into_iter()
            .map(Token::new)
            .collect::<Result<Vec<_>, _>>()?;
        check_tokens(&tokens)?;
        let admin_token = env("ADMIN_TOKEN")
            .or(file.admin_token)
            .filter(|t| !t.trim().is_empty())
            .map(Token::new)
            .transpose()?;
        let allowed_origins = match env("ALLOWED_ORIGINS") {
            Some(list) => comma_list(&list),
            None => file.allowed_origins.unwrap_or_default(),
        };
        let max_wait = flags
            .max_wait
            .map(Ok)
            .or_else(|| {
                env("GATEWAY_MAX_WAIT_SECS").map(|v| {
                    v.trim().parse().map(Duration::from_secs).map_err(|_| {
                        Error::config(format!(
                            "GATEWAY_MAX_WAIT_SECS={v:?} is not a whole number of seconds, such as 60"
                        ))
                    })
                })
            })
            .transpose()?
            .or(file.max_wait_secs.map(Duration::from_secs))
            .unwrap_or(DEFAULT_MAX_WAIT);
        let body_limit = file.body_limit_bytes.unwrap_or(DEFAULT_BODY_LIMIT);
        if body_limit == 0 {
            return Err(Error::config(
                "[gateway] body_limit_bytes = 0 would refuse every request body; give the largest body to accept, such as 20971520 (20 MiB)",
            ));
        }
        let max_connections = match env("GATEWAY_MAX_CONNECTIONS") {
            Some(v) => whole("GATEWAY_MAX_CONNECTIONS", &v, "1024")?,
            None => file.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
        };
        if max_connections == 0 {
            return Err(Error::config(
                "a connection limit of 0 (GATEWAY_MAX_CONNECTIONS or max_connections) would serve nobody; give at least 1, such as 1024",
            ));
        }
        let max_connections_per_address = match env("GATEWAY_MAX_CONNECTIONS_PER_ADDRESS") {
            Some(v) => whole("GATEWAY_MAX_CONNECTIONS_PER_ADDRESS", &v, "768")?,
            None => file
                .max_connections_per_address
                .unwrap_or(max_connections - max_connections / 4),
        };
        if max_connections_per_address == 0 {
            return Err(Error::config(
                "a connection limit per address of 0 (GATEWAY_MAX_CONNECTIONS_PER_ADDRESS or max_connections_per_address) would serve nobody; give at least 1, such as 768",
            ));
        }
        let write_timeout = match env("GATEWAY_WRITE_TIMEOUT_SECS") {
            Some(v) => whole("GATEWAY_WRITE_TIMEOUT_SECS", &v, "30")? as u64,
            None => file
                .write_timeout_secs
                .unwrap_or(DEFAULT_WRITE_TIMEOUT.as_secs()),
        };
        if write_timeout == 0 || write_timeout > 3600 {
            return Err(Error::config(format!(
                "a write timeout of {write_timeout} s (GATEWAY_WRITE_TIMEOUT_SECS or write_timeout_secs) is out of range; give 1 to 3600 seconds, such as 30"
            )));
        }
        let write_timeout = Duration::from_secs(write_timeout);
        let body_memory = match env("GATEWAY_BODY_MEMORY_MB") {
            Some(v) => whole("GATEWAY_BODY_MEMORY_MB", &v, "512")?.saturating_mul(1 << 20),
            None => file
                .body_memory_mb
                .map_or(DEFAULT_BODY_MEMORY, |mb| mb.saturating_mul(1 << 20)),
        };
        if body_memory < body_limit {
            return Err(Error::config(format!(
                "the memory for request bodies (GATEWAY_BODY_MEMORY_MB or body_memory_mb: {} MiB) is less than one body may be ({body_limit} bytes): raise it, or lower body_limit_bytes",
                body_memory >> 20
            )));
        }

        let mut listen = listen;
        if tokens.is_empty() {
            if !flags.allow_unauthenticated {
                return Err(Error::config(
                    "no client token: anyone who reaches the gateway could spend your keys. Set GATEWAY_TOKENS=token1,token2 (or tokens = [..] in [gateway]), or pass --allow-unauthenticated to listen on 127.0.0.1 only",
                ));
            }
            if !listen.ip().is_loopback() {
                tracing::warn!(
                    "no client token: --allow-unauthenticated listens on loopback only, not {listen}"
                );
                listen.set_ip(std::net::IpAddr::from([127, 0, 0, 1]));
            }
        }
        let redis_url = flags
            .redis_url
            .or_else(|| env("REDIS_URL"))
            .or(file.redis_url)
            .map(|url| url.trim().to_owned())
            .filter(|url| !url.is_empty());
        let redis_when_unreachable = match file.redis_when_unreachable.as_deref() {
            None | Some("fall_back") => crate::state::WhenUnreachable::FallBack,
            Some("refuse") => crate::state::WhenUnreachable::Refuse,
            Some(other) => {
                return Err(Error::config(format!(
                    "[gateway] redis_when_unreachable = {other:?}: expected \"fall_back\" (serve with this gateway's own state) or \"refuse\""
                )));
            }
        };
        let path = |flag: Option<PathBuf>, var: &str, file: Option<PathBuf>| {
            flag.or_else(|| env(var).map(PathBuf::from)).or(file)
        };
        let redis_tls = crate::state::RedisTls::from_files(
            path(flags.redis_ca, "REDIS_CA_FILE", file.redis_ca_file).as_deref(),
            path(
                flags.redis_client_cert,
                "REDIS_CLIENT_CERT_FILE",
                file.redis_client_cert_file,
            )
            .as_deref(),
            path(
                flags.redis_client_key,
                "REDIS_CLIENT_KEY_FILE",
                file.redis_client_key_file,
            )
            .as_deref(),
        )?;
        if redis_tls.is_set() && redis_url.is_none() {
            return Err(Error::config(
                "a Redis CA or client certificate is set (--redis-ca, REDIS_CA_FILE, redis_ca_file, …) but no Redis: give its rediss:// URL (--redis-url, REDIS_URL), or remove them",
            ));
        }
        let saving = super::saving::FileSaving {
            cache: file.cache,
            fallback: file.fallback,
            budget: file.budget,
            prices: file.prices,
            quota_alert: file.quota_alert,
        }
        .resolve()?;
        let prefix_affinity = match env("GATEWAY_PREFIX_AFFINITY") {
            Some(v) => match v.trim() {
                "true" | "1" | "on" => true,
                "false" | "0" | "off" => false,
                _ => {
                    return Err(Error::config(format!(
                        "GATEWAY_PREFIX_AFFINITY={v:?}: expected true or false"
                    )));
                }
            },
            None => file.prefix_affinity.unwrap_or(true),
        };
        Ok(GatewayConfig {
            prefix_affinity,
            saving,
            redis_prefix: env("REDIS_PREFIX").or(file.redis_prefix),
            redis_url,
            redis_when_unreachable,
            redis_tls,
            listen,
            upstream,
            model,
            tokens,
            admin_token,
            allowed_origins,
            max_wait,
            body_limit,
            max_connections,
            max_connections_per_address: max_connections_per_address.min(max_connections),
            write_timeout,
            body_memory,
            client_limits: file.client_limits,
            allow_unauthenticated: flags.allow_unauthenticated,
            revalidate_every: file
                .revalidate_secs
                .map_or(DEFAULT_REVALIDATE, |s| Duration::from_secs(s.max(60))),
            state_file: flags
                .state_file
                .or_else(|| env("GATEWAY_STATE_FILE").map(PathBuf::from))
                .or(file.state_file),
            pool,
            source: None,
        })
    }

    /// The effective configuration, as printed at start: fingerprints only.
    pub fn describe(&self) -> String {
        let keys: Vec<String> = self.pool.fingerprints().map(|f| f.to_string()).collect();
        let tokens: Vec<String> = self.tokens.iter().map(|t| t.fingerprint()).collect();
        format!(
            "shared state: {}\nstate file: {}\nlisten {}\nupstream {}\ndefault model {}\nkeys ({}): {}\nclient tokens ({}): {}\nadmin token: {}\nallowed origins: {}\nmax wait for a key: {}s\nbody limit: {} bytes ({} MiB of bodies at once)\nconnections at once: {} ({} per address; answers unread for {} s close theirs)\n{}\nprefix affinity (implicit cache): {}\npacing of waiting requests: {}",
            self.redis_url.as_deref().map_or_else(
                || "none (this process only)".to_owned(),
                |url| format!("Redis at {}", crate::state::redact_url(url))
            ),
            self.state_file
                .as_deref()
                .map_or_else(|| "none".to_owned(), |p| p.display().to_string()),
            self.listen,
            self.upstream,
            self.model,
            keys.len(),
            keys.join(" "),
            tokens.len(),
            if tokens.is_empty() {
                "none (unauthenticated, loopback only)".to_owned()
            } else {
                tokens.join(" ")
            },
            self.admin_token.as_ref().map_or_else(
                || "none (status and admin routes closed)".to_owned(),
                Token::fingerprint
            ),
            if self.allowed_origins.is_empty() {
                "none".to_owned()
            } else {
                self.allowed_origins.join(" ")
            },
            self.max_wait.as_secs(),
            self.body_limit,
            self.body_memory >> 20,
            self.max_connections,
            self.max_connections_per_address,
            self.write_timeout.as_secs(),
            self.saving.describe(),
            if self.prefix_affinity { "on" } else { "off" },
            match self.pool.pacing() {
                crate::state::Pacing::Spread { burst } => format!(
                    "spread over the minute, {:.0} % of it at once (GATEWAY_PACING)",
                    burst * 100.0
                ),
                _ => "off: a minute's whole quota may go at once (GATEWAY_PACING)".to_owned(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::{Flags, GatewayConfig, check_upstream};

    /// The key variables are named in one place (`pool::env`): a key numbered past 1,000 that
    /// `KeyPool::from_env` loads is loaded by the gateway from the process environment too.
    #[test]
    fn keys_numbered_past_a_thousand_are_loaded() {
        assert!(crate::pool::env::is_key_var("GOOGLE_API_KEY_1001"));
        assert!(!crate::pool::env::is_key_var("GOOGLE_API_KEY_"));
        assert!(!crate::pool::env::is_key_var("GOOGLE_API_KEY_1x"));
        let config = GatewayConfig::resolve_with(
            Flags::default(),
            |name| (name == "GATEWAY_TOKENS").then(|| "client-token-env-0001".to_owned()),
            vec![
                (
                    "GOOGLE_API_KEY_1001".to_owned(),
                    "test-key-env-1001".to_owned(),
                ),
                (
                    "GOOGLE_API_KEY_2".to_owned(),
                    "test-key-env-0002".to_owned(),
                ),
            ],
        )
        .unwrap();
        assert_eq!(config.pool.len(), 2);
    }

    #[test]
    fn pacing_from_the_environment() {
        let config = |pacing: &str| {
            GatewayConfig::resolve(Flags::default(), |name| match name {
                "GEMINI_API_KEY" => Some("test-key-pace-0001".to_owned()),
                "GATEWAY_TOKENS" => Some("client-token-pace-0001".to_owned()),
                "GATEWAY_PACING" => Some(pacing.to_owned()),
                _ => None,
            })
        };
        use crate::state::Pacing;
        assert_eq!(config("off").unwrap().pool.pacing(), Pacing::Off);
        assert_eq!(config("spread").unwrap().pool.pacing(), Pacing::DEFAULT);
        assert_eq!(
            config(" 0.2 ").unwrap().pool.pacing(),
            Pacing::Spread { burst: 0.2 }
        );
        assert!(
            config("off")
                .unwrap()
                .describe()
                .contains("pacing of waiting requests: off")
        );
        for bad in ["fast", "2", "NaN"] {
            let Err(error) = config(bad) else {
                panic!("GATEWAY_PACING={bad} was accepted");
            };
            let error = error.to_string();
            assert!(error.contains("GATEWAY_PACING"), "{error}");
        }
    }

    #[test]
    fn plain_http_only_to_this_machine() {
        for ok in [
            "https://generativelanguage.googleapis.com",
            "http://127.0.0.1:8081",
            "http://localhost:9000/base",
            "http://[::1]:8080",
        ] {
            assert!(check_upstream(ok).is_ok(), "{ok}");
        }
        for refused in [
            "http://generativelanguage.googleapis.com",
            "http://10.0.0.5:8080",
            "http://127.0.0.1.evil.example:80",
            "ftp://example.com",
            "generativelanguage.googleapis.com",
        ] {
            let error = check_upstream(refused).unwrap_err();
            assert!(error.to_string().contains("https://"), "{refused}: {error}");
        }
        // The host is what follows any '@': user information is refused outright, so neither
        // a loopback-looking prefix nor a port-like one sends the keys elsewhere in clear.
        for refused in [
            "http://[::1]@127.0.0.1:8080",
            "http://127.0.0.1:1@example.invalid",
            "http://localhost@example.invalid",
            "https://user:pass@generativelanguage.googleapis.com",
        ] {
            let error = check_upstream(refused).unwrap_err();
            assert!(error.to_string().contains("'@'"), "{refused}: {error}");
        }
    }
}
