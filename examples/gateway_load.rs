//! What the gateway costs, beside the floor of any proxy on the same machine, in one run.
//!
//! ```text
//! apt-get install wrk   # the load tool
//! cargo run --release --features gateway --example gateway_load -- [seconds] [connections] [rounds]
//! ```
//!
//! Three processes on 127.0.0.1, each started from this binary:
//!
//! - `upstream`: a minimal hyper server that answers every request at once with a fixed
//!   `generateContent` answer (usage included, as Google's);
//! - `floor`: a minimal hyper proxy that only swaps the client's token for a key and forwards
//!   the request and the answer as they are — what any proxy must do, the floor;
//! - `gateway`: `gemini-gateway` as its binary runs it (configuration from the environment, an
//!   INFO log), over 4 keys, then over 1,000.
//!
//! The split layout: wrk (one thread) and the upstream share core 0, the proxy under test has
//! core 1 to itself (`taskset`), so the proxy's cost is not hidden by the load tool's. Each
//! round measures the three paths back to back (direct to the upstream, through the floor,
//! through the gateway) at `connections` connections and at one connection; the table shows
//! the medians of the rounds. CPU per request is the proxy process's user + system time (from
//! `/proc`) over the requests it served; peak RSS is its `VmHWM`.
//!
//! To compare two versions of the gateway in the same run (the machine's noise moves a run by
//! ±10 %, more than most changes), build this example at the older commit too and name its
//! binary in `GATEWAY_LOAD_BEFORE`: that gateway is measured in each round beside this one,
//! and the table gains its column.
//!
//! ```text
//! git worktree add /tmp/before <commit>
//! (cd /tmp/before && CARGO_TARGET_DIR=/tmp/before-target cargo build --release --features gateway --example gateway_load)
//! GATEWAY_LOAD_BEFORE=/tmp/before-target/release/examples/gateway_load cargo run --release --features gateway --example gateway_load
//! ```
//!
//! The modes, for running by hand: `gateway_load upstream`, `gateway_load floor <upstream>`,
//! `gateway_load gateway <upstream> <keys>`; each prints `listening on <url>` and serves until
//! killed.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

const MODEL: &str = "gemini-2.0-flash";
const TOKEN: &str = "load-client-token-0001";
const BODY: &str = r#"{"contents":[{"parts":[{"text":"hello"}]}]}"#;
/// What the upstream answers: a `generateContent` answer of the usual shape and size.
const ANSWER: &str = r#"{"candidates":[{"content":{"parts":[{"text":"Hello! How can I help you today?"}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":2,"candidatesTokenCount":9,"totalTokenCount":11,"promptTokensDetails":[{"modality":"TEXT","tokenCount":2}]},"modelVersion":"gemini-2.0-flash","responseId":"load-test-answer"}"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("upstream") => runtime().block_on(upstream()),
        Some("floor") => runtime().block_on(floor(arg(&args, 1)?)),
        Some("gateway") => runtime().block_on(gateway(
            arg(&args, 1)?,
            arg(&args, 2)?.parse().map_err(|_| "keys: a number")?,
        )),
        _ => compare(&args),
    }
}

fn arg(args: &[String], at: usize) -> Result<String, String> {
    args.get(at)
        .cloned()
        .ok_or_else(|| format!("missing argument {at}: see the example's header"))
}

/// The runtime a server mode runs on: tokio's default multi-threaded one, as the gateway's
/// binary uses (pinned to one core by `taskset`, it has one worker).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Bind 127.0.0.1:0 and say where, for the parent to read.
async fn bind() -> Result<tokio::net::TcpListener, Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening on http://{}", listener.local_addr()?);
    Ok(listener)
}

/// Serve `service` over HTTP/1.1 on every connection `listener` accepts.
async fn serve<F, Fut>(listener: tokio::net::TcpListener, service: F) -> !
where
    F: Fn(http::Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<http::Response<Full<Bytes>>, hyper::Error>>
        + Send
        + 'static,
{
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let service = service.clone();
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), hyper::service::service_fn(service))
                .await;
        });
    }
}

async fn upstream() -> Result<(), Box<dyn std::error::Error>> {
    let listener = bind().await?;
    serve(listener, |request: http::Request<Incoming>| async move {
        // Read the request to its end, as a server does.
        let _ = request.into_body().collect().await?;
        Ok(http::Response::builder()
            .header("content-type", "application/json; charset=UTF-8")
            .body(Full::new(Bytes::from_static(ANSWER.as_bytes())))
            .expect("a valid answer"))
    })
    .await
}

/// The floor: swap the token for a key, forward, answer what came back.
async fn floor(upstream: String) -> Result<(), Box<dyn std::error::Error>> {
    let listener = bind().await?;
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let upstream: std::sync::Arc<str> = upstream.into();
    serve(listener, move |request: http::Request<Incoming>| {
        let (http, upstream) = (http.clone(), upstream.clone());
        async move {
            let (mut parts, body) = request.into_parts();
            let body = body.collect().await?.to_bytes();
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            parts.uri = format!("{upstream}{path}").parse().expect("a valid URI");
            parts.headers.insert(
                "x-goog-api-key",
                http::HeaderValue::from_static("load-test-key-0000"),
            );
            parts.headers.remove(http::header::HOST);
            let request = http::Request::from_parts(parts, Full::new(body));
            let response = http.request(request).await.expect("the upstream answers");
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok(http::Response::from_parts(parts, Full::new(body)))
        }
    })
    .await
}

/// `gemini-gateway` with `keys` keys, configured from the environment as its binary is.
async fn gateway(upstream: String, keys: usize) -> Result<(), Box<dyn std::error::Error>> {
    use tower_gemini::gateway::{Flags, GatewayConfig, serve_on};
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(std::io::stderr)
        .init();
    let keys: Vec<String> = (0..keys).map(|i| format!("load-test-key-{i:04}")).collect();
    let keys = keys.join(",");
    let config = GatewayConfig::resolve(Flags::default(), |name| match name {
        "GEMINI_API_KEY" => Some(keys.clone()),
        "GATEWAY_TOKENS" => Some(TOKEN.to_owned()),
        "LLM_API_ENDPOINT" => Some(upstream.clone()),
        _ => None,
    })?;
    let listener = bind().await?;
    serve_on(listener, &config, std::future::pending()).await?;
    Ok(())
}

/// A server mode of this binary, running on `core` (when `taskset` is there).
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(mode: &[&str], core: usize) -> Result<Server, Box<dyn std::error::Error>> {
        Server::start_from(&std::env::current_exe()?, mode, core)
    }

    /// A server mode of `program` (this example built at another commit), on `core`.
    fn start_from(
        program: &std::path::Path,
        mode: &[&str],
        core: usize,
    ) -> Result<Server, Box<dyn std::error::Error>> {
        let mut command = if has("taskset") {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(core.to_string()).arg(program);
            c
        } else {
            Command::new(program)
        };
        let mut child = command
            .args(mode)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .ok_or_else(|| format!("{mode:?} did not start: {line:?}"))?
            .to_owned();
        Ok(Server { child, url })
    }

    /// User + system CPU time so far.
    fn cpu(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command's closing parenthesis: utime is the 12th, stime the 13th.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<u64> = after
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
        Duration::from_millis(ticks * 10)
    }

    /// Peak resident memory, MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn has(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One wrk run's figures.
struct Run {
    per_second: f64,
    p50_us: f64,
    requests: f64,
}

/// wrk on core 0, one thread, `connections` connections for `seconds` against `url`.
fn wrk(
    url: &str,
    key: &str,
    seconds: u64,
    connections: usize,
) -> Result<Run, Box<dyn std::error::Error>> {
    let script = std::env::temp_dir().join(format!("gateway_load_{}.lua", std::process::id()));
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{BODY}'\nwrk.headers[\"content-type\"] = \"application/json\"\nwrk.headers[\"x-goog-api-key\"] = \"{key}\"\n"
        ),
    )?;
    let output = Command::new("taskset")
        .args(["-c", "0", "wrk", "-t1", "--latency"])
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("-s")
        .arg(&script)
        .arg(format!("{url}/v1beta/models/{MODEL}:generateContent"))
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    if text.contains("Non-2xx") {
        return Err(format!("answers that were not 2xx:\n{text}").into());
    }
    let number = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map(str::trim)
            .ok_or_else(|| format!("no {prefix:?} in wrk's output:\n{text}"))
    };
    let per_second: f64 = number("Requests/sec:")?.parse()?;
    let p50 = number("50%")?;
    let p50_us = if let Some(v) = p50.strip_suffix("us") {
        v.parse::<f64>()?
    } else if let Some(v) = p50.strip_suffix("ms") {
        v.parse::<f64>()? * 1e3
    } else {
        p50.trim_end_matches('s').parse::<f64>()? * 1e6
    };
    let requests: f64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or("no request count in wrk's output")?;
    Ok(Run {
        per_second,
        p50_us,
        requests,
    })
}

/// Peak RSS of `program`'s gateway over 1,000 keys, after `seconds` of load.
fn many_keys_rss(
    program: &std::path::Path,
    upstream: &Server,
    seconds: u64,
    connections: usize,
) -> Result<f64, Box<dyn std::error::Error>> {
    let many = Server::start_from(program, &["gateway", &upstream.url, "1000"], 1)?;
    wrk(&many.url, TOKEN, seconds, connections)?;
    Ok(many.peak_rss_mib())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The figures of one path over the rounds.
#[derive(Default)]
struct Path {
    per_second: Vec<f64>,
    cpu_us: Vec<f64>,
    p50_us: Vec<f64>,
}

fn compare(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let seconds: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(10);
    let connections: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(50);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    if !has("wrk") || !has("taskset") {
        return Err("this comparison needs wrk and taskset: apt-get install wrk util-linux".into());
    }
    let upstream = Server::start(&["upstream"], 0)?;
    let floor = Server::start(&["floor", &upstream.url], 1)?;
    let gateway = Server::start(&["gateway", &upstream.url, "4"], 1)?;
    let before = match std::env::var_os("GATEWAY_LOAD_BEFORE") {
        Some(program) => Some(Server::start_from(
            std::path::Path::new(&program),
            &["gateway", &upstream.url, "4"],
            1,
        )?),
        None => None,
    };
    println!(
        "{connections} connections for {seconds} s, and 1 for {} s, {rounds} rounds; wrk and the upstream on core 0, the proxy on core 1\n",
        seconds / 2
    );
    let mut direct = Path::default();
    let mut through_floor = Path::default();
    let mut through_gateway = Path::default();
    let mut through_before = Path::default();
    for _ in 0..rounds {
        let mut paths: Vec<(Option<&Server>, &str, &mut Path)> = vec![
            (None, "load-test-key-0000", &mut direct),
            (Some(&floor), TOKEN, &mut through_floor),
            (Some(&gateway), TOKEN, &mut through_gateway),
        ];
        if let Some(before) = &before {
            paths.push((Some(before), TOKEN, &mut through_before));
        }
        for (server, key, path) in paths {
            let url = server.map_or(&upstream.url, |s| &s.url);
            wrk(url, key, 1, connections)?; // warm
            let before = server.map(Server::cpu);
            let run = wrk(url, key, seconds, connections)?;
            if let (Some(server), Some(before)) = (server, before) {
                let cpu = server.cpu().saturating_sub(before);
                path.cpu_us.push(cpu.as_secs_f64() * 1e6 / run.requests);
            }
            path.per_second.push(run.per_second);
            path.p50_us
                .push(wrk(url, key, (seconds / 2).max(1), 1)?.p50_us);
        }
    }
    let floor_rss = floor.peak_rss_mib();
    let gateway_rss = gateway.peak_rss_mib();
    let before_rss = before.as_ref().map(Server::peak_rss_mib);
    drop((gateway, before));
    // The same load over 1,000 keys: what each key costs the gateway.
    let many_rss = many_keys_rss(&std::env::current_exe()?, &upstream, seconds, connections)?;
    let before_many_rss = match std::env::var_os("GATEWAY_LOAD_BEFORE") {
        Some(program) => Some(many_keys_rss(
            std::path::Path::new(&program),
            &upstream,
            seconds,
            connections,
        )?),
        None => None,
    };

    let d = median(direct.per_second.clone());
    let f = median(through_floor.per_second.clone());
    let fc = median(through_floor.cpu_us.clone());
    let dp = median(direct.p50_us.clone());
    let fp = median(through_floor.p50_us.clone()) - dp;
    let column = |path: &Path, rss: f64, many_rss: f64| {
        let (g, gc) = (median(path.per_second.clone()), median(path.cpu_us.clone()));
        let gp = median(path.p50_us.clone()) - dp;
        [
            format!(
                "{:.1}k ({:.0} %; {:.0} % of the floor)",
                g / 1e3,
                100.0 * g / d,
                100.0 * g / f
            ),
            format!("{gc:.1} µs ({:.2}× the floor's)", gc / fc),
            format!("+{gp:.0} µs ({:+.0} µs vs the floor)", gp - fp),
            format!("{rss:.1} / {many_rss:.1} MiB"),
        ]
    };
    let mut columns = vec![column(&through_gateway, gateway_rss, many_rss)];
    let mut head = "| | direct | minimal proxy (floor) | gemini-gateway |".to_owned();
    if let (Some(rss), Some(many)) = (before_rss, before_many_rss) {
        columns.push(column(&through_before, rss, many));
        head.push_str(" gemini-gateway before |");
    }
    println!("{head}");
    println!("|---|---|---|---|{}", "---|".repeat(columns.len() - 1));
    let rows = [
        (
            format!("req/s at {connections} connections"),
            format!("{:.1}k", d / 1e3),
            format!("{:.1}k ({:.0} % of direct)", f / 1e3, 100.0 * f / d),
        ),
        (
            "CPU per request in the proxy".to_owned(),
            "–".to_owned(),
            format!("{fc:.1} µs"),
        ),
        (
            "added p50 at 1 connection".to_owned(),
            "–".to_owned(),
            format!("+{fp:.0} µs"),
        ),
        (
            "peak RSS, 4 keys / 1,000 keys".to_owned(),
            "–".to_owned(),
            format!("{floor_rss:.1} MiB"),
        ),
    ];
    for (at, (what, direct, floor)) in rows.iter().enumerate() {
        let cells: Vec<&str> = columns.iter().map(|c| c[at].as_str()).collect();
        println!("| {what} | {direct} | {floor} | {} |", cells.join(" | "));
    }
    Ok(())
}
