//! The server loop: accepting connections within their bounds (in all, per address), serving
//! each over HTTP/1.1 with read and write deadlines, and shutting down within a bound.

use std::future::Future;
use std::sync::Arc;

use axum::extract::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tower::ServiceExt;

use super::write_deadline::WriteDeadline;

/// How long a client may take to send a request's head. Without it, a client sending its
/// headers a byte at a time would hold a connection for ever.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What the accept loop serves: the router, with what wraps it whole (CORS).
pub(super) trait App:
    tower::Service<
        Request<hyper::body::Incoming>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
    > + Clone
    + Send
    + 'static
{
}

impl<S> App for S where
    S: tower::Service<
            Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static
{
}

/// How the accept loop bounds connections.
#[derive(Clone, Copy)]
pub(super) struct Bounds {
    /// At once, in all.
    pub(super) max: usize,
    /// At once, from one client address.
    pub(super) per_address: usize,
    /// How long an answer may go unread; and how long shutdown waits beyond that for the
    /// connections in flight.
    pub(super) write_timeout: std::time::Duration,
}

/// The address a connection counts against: an IPv4 address, or an IPv6 address's /64 (one
/// host is given a whole /64 and can pick any address in it).
fn client_address(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                std::net::IpAddr::V6(std::net::Ipv6Addr::from(prefix))
            }
        },
        v4 => v4,
    }
}

/// Connections open per client address; a place is given back when its guard drops.
#[derive(Clone, Default)]
struct PerAddress(Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>);

struct AddressPlace {
    open: PerAddress,
    ip: std::net::IpAddr,
}

impl PerAddress {
    /// A place for one more connection from `ip`, if it has fewer than `max`.
    fn take(&self, ip: std::net::IpAddr, max: usize) -> Option<AddressPlace> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(AddressPlace {
            open: self.clone(),
            ip,
        })
    }
}

impl Drop for AddressPlace {
    fn drop(&mut self) {
        let mut open = self.open.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Answer a connection over its address's cap with a 503 (in Google's error shape, which every
/// client here reads) and close it; given a second at most, in the background.
fn refuse_over_cap(mut tcp: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    const BODY: &str = r#"{"error":{"code":503,"message":"this address holds as many connections to the gateway as it may (GATEWAY_MAX_CONNECTIONS_PER_ADDRESS); reuse a connection or retry when one closes","status":"UNAVAILABLE"}}"#;
    tokio::spawn(async move {
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
            BODY.len()
        );
        let write = async {
            tcp.write_all(answer.as_bytes()).await?;
            tcp.shutdown().await
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), write).await;
    });
}

/// Accept connections until `shutdown`, at most `bounds.max` at once (more wait in the listen
/// backlog) and `bounds.per_address` from one address (more are answered 503 and closed),
/// serving each over HTTP/1.1 with deadlines on reading a request head and on writing an
/// answer; then stop accepting and wait for the connections in flight (streams included) to
/// finish — at most twice the write timeout, after which the rest are dropped.
pub(super) async fn accept<S>(
    listener: tokio::net::TcpListener,
    app: S,
    bounds: Bounds,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    S: App,
    S::Future: Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let open = Arc::new(tokio::sync::Semaphore::new(bounds.max));
    let per_address = PerAddress::default();
    let mut refused = Refused::default();
    let mut full = false;
    let mut connections = tokio::task::JoinSet::new();
    loop {
        // A connection is taken from the backlog only when one may be served: a flood of
        // connections waits in the kernel's queue, not in this process's memory.
        let permit = tokio::select! {
            permit = place(&open, bounds.max, &mut full) => match permit {
                Some(permit) => permit,
                None => break,
            },
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = next_connection(&listener) => accepted,
            () = &mut shutdown => break,
        };
        // One address cannot hold every place: past its share, its connections are refused.
        let Some(address) = per_address.take(client_address(peer.ip()), bounds.per_address) else {
            refused.log(peer.ip(), bounds.per_address);
            refuse_over_cap(tcp);
            continue;
        };
        let connection = graceful.watch(connection(tcp, peer, &app, bounds));
        connections.spawn(async move {
            let _ = connection.await;
            drop(address);
            drop(permit);
        });
        // Finished connections are reaped as new ones come (the set holds only open ones).
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let grace = bounds.write_timeout.saturating_mul(2);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "{} connections still open {} s after shutdown began; closing them",
            connections.len(),
            grace.as_secs()
        );
    }
    // What is left is aborted.
    connections.shutdown().await;
}

/// A place for one more connection (waiting when all are taken, with a warning the first time
/// in a row, `full`); `None` if the places are gone.
async fn place(
    open: &Arc<tokio::sync::Semaphore>,
    max: usize,
    full: &mut bool,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    if let Ok(permit) = open.clone().try_acquire_owned() {
        *full = false;
        return Some(permit);
    }
    if !*full {
        *full = true;
        tracing::warn!(
            "{max} connections open (the limit, GATEWAY_MAX_CONNECTIONS); new ones wait until one closes"
        );
    }
    open.clone().acquire_owned().await.ok()
}

/// The next connection from the backlog (an error, such as running out of file descriptors,
/// waits a little rather than spin).
async fn next_connection(
    listener: &tokio::net::TcpListener,
) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(error) => {
                tracing::warn!("accept failed: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// One connection served over HTTP/1.1: no Nagle (answers and stream chunks go out as they
/// come), the peer's address in each request, a deadline on reading a request head and on
/// writing an answer.
fn connection<S>(
    tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    app: &S,
    bounds: Bounds,
) -> impl hyper_util::server::graceful::GracefulConnection + Send + 'static
where
    S: App,
    S::Future: Send + 'static,
{
    let _ = tcp.set_nodelay(true);
    let service = app
        .clone()
        .map_request(move |mut request: Request<hyper::body::Incoming>| {
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            request
        });
    let io = WriteDeadline::new(tcp, bounds.write_timeout);
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
}

/// Addresses refused for being over their cap, each logged once (at most 1,024 kept).
#[derive(Default)]
struct Refused(std::collections::HashSet<std::net::IpAddr>);

impl Refused {
    fn log(&mut self, ip: std::net::IpAddr, cap: usize) {
        if self.0.len() < 1024 && self.0.insert(ip) {
            tracing::warn!(
                "{ip} holds {cap} connections (the limit per address, GATEWAY_MAX_CONNECTIONS_PER_ADDRESS); its further ones are refused"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::client_address;

    #[test]
    fn an_ipv6_host_counts_as_its_64() {
        let a: std::net::IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: std::net::IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: std::net::IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_address(a), client_address(b));
        assert_ne!(client_address(a), client_address(other));
        let mapped: std::net::IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(
            client_address(mapped),
            "10.0.0.1".parse::<std::net::IpAddr>().unwrap()
        );
    }
}
