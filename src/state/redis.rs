//! [`RedisStore`]: the pool's state shared by every process through one Redis.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Client, Script};
use sha2::{Digest, Sha256};

use super::effects::Effect;
use super::health::DisabledReason;
use super::meter::Dimension;
use super::pins::{MAX_PINS, MAX_PINS_PER_TENANT, PinRecord};
use super::redis_tls::{RedisTls, wants_tls};
use super::store::{Admission, Scope, SharedRefusal, SharedTicket, Store, StoreFuture};
use crate::clock::{next_pacific_midnight, pacific_day_start};
use crate::error::Error;

/// What a [`RedisStore`] does while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WhenUnreachable {
    /// Go on with this process's own state (its ledger still applies every limit to its own
    /// requests, so replicas together may overrun the shared quota by their number), with a
    /// warning; shared admission resumes by itself when Redis answers again. The default:
    /// an outage of Redis is not an outage of the service.
    #[default]
    FallBack,
    /// Refuse every request with
    /// [`ErrorKind::StateUnavailable`](crate::ErrorKind::StateUnavailable) (503) until Redis
    /// answers again: never risk a 429 from Google, at the price of availability.
    Refuse,
}

/// Settings of a [`RedisStore`].
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Every Redis key starts with this (default `"tower-gemini"`): one Redis can hold several
    /// independent pools, and the names are hashed with it.
    pub prefix: String,
    /// What to do while Redis cannot be reached (default [`WhenUnreachable::FallBack`]).
    pub when_unreachable: WhenUnreachable,
    /// The longest a request waits for Redis (connect or answer) before Redis counts as
    /// unreachable (default 250 ms).
    pub timeout: Duration,
    /// How often an unreachable Redis is tried again (default 1 s).
    pub retry_every: Duration,
    /// How much longer than a minute a request stays in the per-minute windows (default
    /// 500 ms): each process stamps admissions with its own clock, and Google counts a request
    /// when it arrives, a few milliseconds later for one request than for another. Without
    /// it, a slot freed at exactly 60 s could reach Google a moment before the request it
    /// replaces left Google's window. Costs under 1 % of the per-minute quota.
    pub margin: Duration,
    /// How to trust a Redis reached over TLS (`rediss://`; feature `redis-tls`): the webpki
    /// roots by default, or a CA of its own and a client certificate.
    pub tls: RedisTls,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            prefix: "tower-gemini".to_owned(),
            when_unreachable: WhenUnreachable::FallBack,
            timeout: Duration::from_millis(250),
            retry_every: Duration::from_secs(1),
            margin: Duration::from_millis(500),
            tls: RedisTls::default(),
        }
    }
}

/// A [`Store`] in Redis: several processes using the same keys share one quota ledger per
/// project and model, the cool-downs Google's 429s set, the keys and projects found disabled,
/// and the limits learned from Google.
///
/// - Admission is one atomic Lua script per request, over every dimension at once: exact
///   sliding 60-second logs for RPM/TPM/IPM (never more than the limit in any 60 s window,
///   across all processes; a request stays in them a [margin](RedisOptions::margin) longer), the Pacific day's request count (its key expires at the next
///   midnight in Los Angeles), the project+model's cool-down and tier block, the key's and the
///   project's disabled state. One round trip.
/// - Answers write their [`Effect`] (cool-downs, disabled keys, learned limits) for the others
///   to see; a refused request is refunded; the real token count corrects the estimate.
/// - Redis keys are named by a hash of the prefix with the project, model and key fingerprint
///   (`tower-gemini:pm:5f0c…`), never by a key; values hold no key either.
/// - While Redis is unreachable the store [falls back](WhenUnreachable) to the process's own
///   state or refuses, says so once, tries again every [`retry_every`](RedisOptions::retry_every)
///   in the background and says so when it is back.
///
/// ```no_run
/// use tower_gemini::KeyPool;
/// use tower_gemini::state::RedisStore;
///
/// # async fn run() -> Result<(), tower_gemini::Error> {
/// let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
/// let pool = KeyPool::builder()
///     .keys(["test-key-0001", "test-key-0002"])
///     .store(store)
///     .build()?;
/// # let _ = pool; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    connection: Connection,
    options: RedisOptions,
    /// Where Redis was reachable at the last try.
    reachable: AtomicBool,
    /// A task is trying Redis again.
    retrying: AtomicBool,
    /// Makes ledger members unique across processes.
    nonce: u64,
    sequence: AtomicU64,
    admit: Script,
    refund: Script,
    correct: Script,
    apply: Script,
    pin: Script,
    /// A redacted form of the URL, for logs (no password).
    shown: String,
    /// Admissions this process made on its own while Redis was unreachable: given to Redis
    /// when it answers again, before shared admission resumes, so that every process counts
    /// them (in the minute's window and the day's count).
    fallen: std::sync::Mutex<std::collections::VecDeque<Fallen>>,
}

/// One Redis, or a Redis Cluster (every key of one project in one hash slot, so each script
/// and transaction touches one node).
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// The nodes of a cluster URL — `redis+cluster://[user:password@]host:port,host:port,…` (or
/// `rediss+cluster://` over TLS) or a comma-separated list of `redis://` URLs — each as a
/// `redis://` (`rediss://`) URL; `None` for one Redis.
fn cluster_nodes(url: &str) -> Option<Vec<String>> {
    let url = url.trim();
    let (rest, scheme) = match (
        url.strip_prefix("redis+cluster://"),
        url.strip_prefix("rediss+cluster://"),
    ) {
        (Some(rest), _) => (Some(rest), "redis"),
        (None, Some(rest)) => (Some(rest), "rediss"),
        (None, None) => (None, ""),
    };
    if let Some(rest) = rest {
        let (auth, hosts) = match rest.rfind('@') {
            Some(at) => (&rest[..=at], &rest[at + 1..]),
            None => ("", rest),
        };
        let nodes = hosts
            .split(',')
            .map(|host| host.trim().trim_end_matches('/'))
            .filter(|host| !host.is_empty())
            .map(|host| format!("{scheme}://{auth}{host}"))
            .collect();
        return Some(nodes);
    }
    // A comma starts another node only before a scheme: a password may hold one.
    let nodes = urls_in(url);
    (nodes.len() > 1).then_some(nodes)
}

/// `url` split into URLs at the commas followed by a scheme (`a://…,b://…`); one URL else.
fn urls_in(url: &str) -> Vec<String> {
    let mut urls: Vec<String> = Vec::new();
    for part in url.split(',') {
        match urls.last_mut() {
            Some(last) if !part.contains("://") => {
                last.push(',');
                last.push_str(part);
            }
            _ => urls.push(part.trim().to_owned()),
        }
    }
    urls.retain(|u| !u.is_empty());
    urls
}

/// The hash tag of a name (the part in braces; the whole name without one).
fn slot_of(name: &str) -> &str {
    name.split_once('{')
        .and_then(|(_, rest)| rest.split_once('}'))
        .map_or(name, |(tag, _)| tag)
}

/// The hash tag of the resource records.
const PIN_SLOT: &str = "pins";

/// One admission made while Redis was unreachable.
struct Fallen {
    base: Arc<str>,
    day: Arc<str>,
    day_end: u64,
    at: u64,
    member: String,
    tokens: u64,
    images: u64,
}

/// At most this many admissions made during an outage are kept to be given to Redis (about
/// 10 MB); past that the oldest are dropped, and said so.
const MAX_FALLEN: usize = 100_000;

/// Admissions given back to Redis per transaction.
const PUSH_BATCH: usize = 1_000;

/// Days a key's or project's recorded state lives without being written again.
const STATE_TTL_MS: u64 = 30 * 24 * 3600 * 1000;

/// An admission sent to Redis whose answer has not been read: given back when dropped armed.
struct Unconfirmed<'a> {
    inner: &'a Arc<Inner>,
    ticket: Option<SharedTicket>,
}

impl Drop for Unconfirmed<'_> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.inner.give_back(ticket);
        }
    }
}

const ADMIT: &str = r#"
-- KEYS: 1 window (zset), 2 sums (hash), 3 day count, 4 project+model state (hash),
--       5 key state (hash), 6 project state (hash)
-- ARGV: 1 now, 2 member, 3 tokens, 4 images, 5 rpm, 6 tpm, 7 rpd, 8 ipm (0: no limit),
--       9 end of the Pacific day, 10 window length (ms)
local now = tonumber(ARGV[1])
local win = tonumber(ARGV[10])
-- Numbers go back to Redis as integers ('-0' or '1e+12' are not integers to Redis).
local function ms(x)
  if x == 0 then return '0' end
  return string.format('%.0f', x)
end
local key = redis.call('HMGET', KEYS[5], 'disabled', 'cool_until')
if key[1] then return {'key_disabled', key[1]} end
local project = redis.call('HGET', KEYS[6], 'disabled')
if project then return {'project_disabled', project} end
if key[2] and tonumber(key[2]) > now then return {'key_cooling', key[2]} end
local st = redis.call('HMGET', KEYS[4], 'cool_until', 'cool_class', 'not_on_tier', 'rpm', 'tpm', 'rpd', 'ipm')
if st[3] then return {'model_disabled'} end
if st[1] and tonumber(st[1]) > now then return {'model_cooling', st[1]} end
local function limit(configured, learned)
  local c = tonumber(configured) or 0
  local l = tonumber(learned or '0') or 0
  if c == 0 then return l end
  if l == 0 then return c end
  return math.min(c, l)
end
local rpm, tpm = limit(ARGV[5], st[4]), limit(ARGV[6], st[5])
local rpd, ipm = limit(ARGV[7], st[6]), limit(ARGV[8], st[7])
local tokens, images = tonumber(ARGV[3]), tonumber(ARGV[4])
-- Entries leave the window a minute (and the margin) after they were admitted.
local edge = now - win
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', edge)
if #old > 0 then
  local t, i = 0, 0
  for _, m in ipairs(old) do
    local a, b = string.match(m, ':(%d+):(%d+)$')
    t = t + tonumber(a); i = i + tonumber(b)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', edge)
  redis.call('HINCRBY', KEYS[2], 'tokens', ms(-t))
  redis.call('HINCRBY', KEYS[2], 'images', ms(-i))
end
local count = redis.call('ZCARD', KEYS[1])
local sums = redis.call('HMGET', KEYS[2], 'tokens', 'images')
local used_tokens, used_images = tonumber(sums[1] or '0'), tonumber(sums[2] or '0')
local day = tonumber(redis.call('GET', KEYS[3]) or '0')
if rpd > 0 and day >= rpd then return {'quota', 'rpd', ms(rpd), ARGV[9]} end
if rpm > 0 and count >= rpm then
  local first = redis.call('ZRANGE', KEYS[1], count - rpm, count - rpm, 'WITHSCORES')
  return {'quota', 'rpm', ms(rpm), ms(tonumber(first[2]) + win)}
end
-- When enough of the oldest entries have left for `amount` more to fit under `cap`.
local function frees(field, amount, used, cap)
  if amount > cap then return '0' end
  local all = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  local freed = 0
  for j = 1, #all, 2 do
    local a, b = string.match(all[j], ':(%d+):(%d+)$')
    if field == 'tokens' then freed = freed + tonumber(a) else freed = freed + tonumber(b) end
    if used - freed + amount <= cap then return ms(tonumber(all[j + 1]) + win) end
  end
  return ms(now + win)
end
if tpm > 0 and tokens > 0 and used_tokens + tokens > tpm then
  return {'quota', 'tpm', ms(tpm), frees('tokens', tokens, used_tokens, tpm)}
end
if ipm > 0 and images > 0 and used_images + images > ipm then
  return {'quota', 'ipm', ms(ipm), frees('images', images, used_images, ipm)}
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], 'tokens', ARGV[3])
redis.call('HINCRBY', KEYS[2], 'images', ARGV[4])
redis.call('PEXPIRE', KEYS[1], win + 1000)
redis.call('PEXPIRE', KEYS[2], win + 1000)
redis.call('INCR', KEYS[3])
redis.call('PEXPIREAT', KEYS[3], ms(tonumber(ARGV[9]) + 60000))
return {'ok'}
"#;

const REFUND: &str = r#"
-- KEYS: 1 window, 2 sums, 3 day count. ARGV: 1 member, 2 tokens, 3 images
-- Only an admitted member is given back: a refund of an admission that never ran (its caller
-- gave up before the answer) changes nothing. One still admitted but out of the window (older
-- than a minute) keeps its day count: at worst a day slot too few.
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  if ARGV[2] ~= '0' then redis.call('HINCRBY', KEYS[2], 'tokens', '-' .. ARGV[2]) end
  if ARGV[3] ~= '0' then redis.call('HINCRBY', KEYS[2], 'images', '-' .. ARGV[3]) end
  if tonumber(redis.call('GET', KEYS[3]) or '0') > 0 then redis.call('DECR', KEYS[3]) end
end
return 1
"#;

const CORRECT: &str = r#"
-- KEYS: 1 window, 2 sums. ARGV: 1 old member, 2 new member, 3 admitted at, 4 token delta
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
  redis.call('HINCRBY', KEYS[2], 'tokens', ARGV[4])
end
return 1
"#;

/// Record where a resource lives (KEYS[1], value ARGV[1], for ARGV[2] ms) unless a live
/// record of another tenant holds the name; and keep its tenant's set of names (KEYS[2],
/// scored by expiry ARGV[3]) within ARGV[5] names, the soonest to expire (and any expired by
/// ARGV[4], now) going first with their records. 1: recorded.
const PIN: &str = r#"
local old = redis.call('GET', KEYS[1])
local new = cjson.decode(ARGV[1])
if old then
  local ok, rec = pcall(cjson.decode, old)
  if ok and rec.tenant ~= new.tenant then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[5])
if over > 0 then
  local gone = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #gone, 2 do redis.call('DEL', gone[i]) end
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"#;

const APPLY: &str = r#"
-- KEYS: 1 key state, 2 project state, 3 project+model state
-- ARGV: 1 key disabled reason, 2 project disabled reason, 3 model not on tier ('1'),
--       4 project+model cool-down end, 5 its class, 6 key cool-down end,
--       7 learned dimension, 8 learned value, 9 state TTL (ms)
local ttl = tonumber(ARGV[9])
if ARGV[1] ~= '' then
  redis.call('HSETNX', KEYS[1], 'disabled', ARGV[1]); redis.call('PEXPIRE', KEYS[1], ttl)
end
if ARGV[2] ~= '' then
  redis.call('HSETNX', KEYS[2], 'disabled', ARGV[2]); redis.call('PEXPIRE', KEYS[2], ttl)
end
if ARGV[3] == '1' then redis.call('HSET', KEYS[3], 'not_on_tier', '1') end
local cool = tonumber(ARGV[4])
if cool > 0 and cool > tonumber(redis.call('HGET', KEYS[3], 'cool_until') or '0') then
  redis.call('HSET', KEYS[3], 'cool_until', ARGV[4], 'cool_class', ARGV[5])
end
local key_cool = tonumber(ARGV[6])
if key_cool > 0 and key_cool > tonumber(redis.call('HGET', KEYS[1], 'cool_until') or '0') then
  redis.call('HSET', KEYS[1], 'cool_until', ARGV[6]); redis.call('PEXPIRE', KEYS[1], ttl)
end
if ARGV[7] ~= '' then
  local old = tonumber(redis.call('HGET', KEYS[3], ARGV[7]) or '0')
  local value = tonumber(ARGV[8])
  if old == 0 or value < old then redis.call('HSET', KEYS[3], ARGV[7], ARGV[8]) end
end
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('PEXPIRE', KEYS[3], ttl) end
return 1
"#;

impl RedisStore {
    /// Connect with default [`RedisOptions`]. See [`connect_with`](Self::connect_with).
    pub async fn connect(url: &str) -> Result<RedisStore, Error> {
        RedisStore::connect_with(url, RedisOptions::default()).await
    }

    /// Connect to the Redis at `url` (`redis://[:password@]host:port[/db]`), or to a Redis
    /// Cluster (or Valkey cluster): `redis+cluster://[:password@]host:port,host:port,…`, or
    /// `redis://` URLs of some of its nodes separated by commas (the others are found from
    /// them). Every key of one project carries the same hash tag (`prefix:{…}:pm:…`), so the
    /// admission script and each transaction touch one slot, as a cluster requires.
    ///
    /// A malformed URL is an error. A Redis that does not answer now is not: the store starts
    /// unreachable (falling back or refusing, by
    /// [`when_unreachable`](RedisOptions::when_unreachable)), logs it, and connects when Redis
    /// comes up.
    pub async fn connect_with(url: &str, options: RedisOptions) -> Result<RedisStore, Error> {
        let shown = redact(url);
        // Braces in the prefix would be a name's hash tag: a cluster would put a project's
        // names in different slots and refuse every script.
        if options.prefix.contains(['{', '}']) {
            return Err(Error::config(format!(
                "the Redis prefix {:?} holds a brace; give one without {{ or }}, such as \"tower-gemini\"",
                options.prefix
            )));
        }
        let nodes = cluster_nodes(url);
        let tls = tls_for(
            nodes.as_deref().unwrap_or(&[url.to_owned()]),
            &options,
            &shown,
        )?;
        let connection = match nodes {
            Some(nodes) => connect_cluster(&nodes, &options, tls, &shown)?,
            None => connect_single(url, &options, tls, &shown)?,
        };
        let store = RedisStore {
            inner: Arc::new(Inner {
                connection,
                reachable: AtomicBool::new(true),
                retrying: AtomicBool::new(false),
                nonce: rand::random(),
                sequence: AtomicU64::new(0),
                admit: Script::new(ADMIT),
                refund: Script::new(REFUND),
                correct: Script::new(CORRECT),
                apply: Script::new(APPLY),
                pin: Script::new(PIN),
                shown,
                options,
                fallen: std::sync::Mutex::new(std::collections::VecDeque::new()),
            }),
        };
        match store.ping().await {
            Ok(()) => tracing::info!("shared state in Redis at {}", store.inner.shown),
            Err(why) => store.inner.unreachable(&why),
        }
        Ok(store)
    }

    /// Is Redis reachable (as of the last request or retry)?
    pub fn is_connected(&self) -> bool {
        self.inner.reachable.load(Ordering::Acquire)
    }

    /// The store's settings.
    pub fn options(&self) -> &RedisOptions {
        &self.inner.options
    }

    /// The Redis name of a cache entry: `prefix:cache:sha256(prefix, key)`, the whole digest
    /// (a collision would serve one prompt's answer to another).
    #[cfg(feature = "cache")]
    fn cache_name(&self, key: &str) -> String {
        let mut hash = Sha256::new();
        hash.update(self.inner.options.prefix.as_bytes());
        hash.update([0]);
        hash.update(key.as_bytes());
        let hex: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
        format!("{}:cache:{hex}", self.inner.options.prefix)
    }

    /// A cached answer another process stored, and how long it has left; `None` when there is
    /// none, Redis is unreachable, or it does not answer within the store's timeout.
    #[cfg(feature = "cache")]
    pub(crate) async fn cache_get(&self, key: &str) -> Option<(Vec<u8>, std::time::Duration)> {
        if !self.is_connected() {
            return None;
        }
        let name = self.cache_name(key);
        let mut connection = self.inner.connection.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(&name).cmd("PTTL").arg(&name);
        let query = pipe.query_async::<(Option<Vec<u8>>, i64)>(&mut connection);
        match tokio::time::timeout(self.inner.options.timeout, query).await {
            Ok(Ok((Some(value), ttl))) if ttl > 0 => {
                Some((value, std::time::Duration::from_millis(ttl as u64)))
            }
            Ok(Ok(_)) => None,
            Ok(Err(e)) => {
                self.inner.failed(&e);
                None
            }
            // A Redis that hangs: marked unreachable (tried again in the background), so the
            // next misses do not each wait for it.
            Err(_) => {
                self.inner.unreachable(&format!(
                    "no answer within {} ms",
                    self.inner.options.timeout.as_millis()
                ));
                None
            }
        }
    }

    /// Store a cached answer for the other processes, in the background (`SET … PX`).
    #[cfg(feature = "cache")]
    pub(crate) fn cache_put(&self, key: &str, value: Vec<u8>, ttl: std::time::Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !self.is_connected() || ttl.is_zero() {
            return;
        }
        let name = self.cache_name(key);
        let mut connection = self.inner.connection.clone();
        let timeout = self.inner.options.timeout;
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        runtime.spawn(async move {
            let mut set = redis::cmd("SET");
            set.arg(&name).arg(value).arg("PX").arg(millis);
            let _ = tokio::time::timeout(timeout, set.query_async::<()>(&mut connection)).await;
        });
    }

    /// Give Redis what this process admitted while it was unreachable: each admission of the
    /// last minute in its project+model's window, and every one in its Pacific day's count.
    /// In transactions of at most `PUSH_BATCH` admissions; what was not taken is kept for the
    /// next try if Redis did not answer. If Redis answers with an error, the rest is dropped
    /// (logged): shared admission must not wait on it.
    async fn push_back(&self) -> Result<(), String> {
        let mut fallen =
            std::mem::take(&mut *self.inner.fallen.lock().unwrap_or_else(|e| e.into_inner()));
        let total = fallen.len();
        if total == 0 {
            return Ok(());
        }
        let window = 60_000 + duration_ms(self.inner.options.margin);
        // The newest admission stands for now: older than a window before it, an admission no
        // longer counts in a minute, only in its day.
        let newest = fallen.iter().map(|a| a.at).max().unwrap_or(0);
        // One project's admissions at a time: a transaction stays in one slot of a cluster.
        fallen
            .make_contiguous()
            .sort_by(|a, b| slot_of(&a.base).cmp(slot_of(&b.base)));
        while !fallen.is_empty() {
            let slot = slot_of(&fallen[0].base).to_owned();
            let same = fallen
                .iter()
                .take(PUSH_BATCH)
                .take_while(|a| slot_of(&a.base) == slot)
                .count();
            let batch: Vec<Fallen> = fallen.drain(..same).collect();
            let mut pipe = redis::pipe();
            pipe.atomic();
            let mut days: std::collections::HashMap<&str, (u64, u64)> = Default::default();
            for admission in &batch {
                let base = &*admission.base;
                if admission.at + window > newest {
                    pipe.cmd("ZADD")
                        .arg(format!("{base}:w"))
                        .arg(admission.at)
                        .arg(&admission.member)
                        .ignore();
                    pipe.cmd("HINCRBY")
                        .arg(format!("{base}:s"))
                        .arg("tokens")
                        .arg(admission.tokens)
                        .ignore();
                    pipe.cmd("HINCRBY")
                        .arg(format!("{base}:s"))
                        .arg("images")
                        .arg(admission.images)
                        .ignore();
                    pipe.cmd("PEXPIRE")
                        .arg(format!("{base}:w"))
                        .arg(window + 1000)
                        .ignore();
                    pipe.cmd("PEXPIRE")
                        .arg(format!("{base}:s"))
                        .arg(window + 1000)
                        .ignore();
                }
                let day = days.entry(&admission.day).or_insert((0, admission.day_end));
                day.0 += 1;
            }
            for (day, (count, end)) in &days {
                pipe.cmd("INCRBY").arg(*day).arg(*count).ignore();
                pipe.cmd("PEXPIREAT").arg(*day).arg(end + 60_000).ignore();
            }
            let mut connection = self.inner.connection.clone();
            let query = pipe.query_async::<()>(&mut connection);
            let failed = match tokio::time::timeout(self.inner.options.timeout, query).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) if !unanswered(&e) => {
                    tracing::error!(
                        "Redis at {} refused the {} requests admitted while it was unreachable ({e}); they are not counted there",
                        self.inner.shown,
                        batch.len() + fallen.len()
                    );
                    return Ok(());
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!(
                    "no answer within {} ms",
                    self.inner.options.timeout.as_millis()
                )),
            };
            if let Some(why) = failed {
                // Kept for the next try (the batch too: at worst counted twice, never lost),
                // before any admitted since.
                let mut kept = self.inner.fallen.lock().unwrap_or_else(|e| e.into_inner());
                let newer = std::mem::take(&mut *kept);
                kept.extend(batch);
                kept.extend(fallen);
                kept.extend(newer);
                let excess = kept.len().saturating_sub(MAX_FALLEN);
                kept.drain(..excess);
                return Err(why);
            }
        }
        tracing::info!(
            "Redis at {} now counts the {total} requests admitted while it was unreachable",
            self.inner.shown
        );
        Ok(())
    }

    async fn ping(&self) -> Result<(), String> {
        let mut connection = self.inner.connection.clone();
        let command = redis::cmd("PING");
        let ping = command.query_async::<String>(&mut connection);
        match tokio::time::timeout(self.inner.options.timeout, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no answer within {} ms",
                self.inner.options.timeout.as_millis()
            )),
        }
    }
}

/// Did Redis fail to answer (rather than answer with an error)?
fn unanswered(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.is_unrecoverable_error()
        // A cluster coming back: no connection to a node yet, slots moving, the cluster down
        // (alone, or inside an aborted transaction or a pipeline's answers).
        || error.is_cluster_error()
        || error.kind() == redis::ErrorKind::ClusterConnectionNotFound
        || error.clone().into_server_errors().is_some_and(|errors| {
            use redis::ServerErrorKind as Kind;
            errors.iter().any(|(_, e)| {
                matches!(
                    e.kind(),
                    Some(Kind::ClusterDown | Kind::TryAgain | Kind::Moved | Kind::Ask)
                )
            })
        })
}

impl Inner {
    /// A command failed: Redis is unreachable, or it answered with an error (logged; the
    /// store stays in use).
    fn failed(self: &Arc<Self>, error: &redis::RedisError) {
        if unanswered(error) {
            self.unreachable(&error.to_string());
        } else {
            tracing::error!("Redis at {} refused a command: {error}", self.shown);
        }
    }

    /// Redis did not answer: say so once, and try again in the background until it does.
    fn unreachable(self: &Arc<Self>, why: &str) {
        if self.reachable.swap(false, Ordering::AcqRel) {
            match self.options.when_unreachable {
                WhenUnreachable::FallBack => tracing::warn!(
                    "Redis at {} is unreachable ({why}): falling back to this process's own state; shared admission resumes when it answers",
                    self.shown
                ),
                WhenUnreachable::Refuse => tracing::error!(
                    "Redis at {} is unreachable ({why}): refusing requests until it answers",
                    self.shown
                ),
            }
        }
        if self.retrying.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.retrying.store(false, Ordering::Release);
            return;
        };
        let weak: Weak<Inner> = Arc::downgrade(self);
        let every = self.options.retry_every;
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { return };
                let store = RedisStore { inner };
                let answer = store.ping().await;
                if let Err(why) = &answer {
                    tracing::debug!("Redis at {} still unreachable: {why}", store.inner.shown);
                }
                if answer.is_ok() {
                    if let Err(why) = store.push_back().await {
                        tracing::debug!(
                            "Redis at {} answers but took not what was admitted meanwhile: {why}",
                            store.inner.shown
                        );
                        continue;
                    }
                    store.inner.retrying.store(false, Ordering::Release);
                    store.inner.reachable.store(true, Ordering::Release);
                    // Admitted alone between the hand-over and now: given too.
                    let _ = store.push_back().await;
                    tracing::info!(
                        "Redis at {} answers again: shared admission resumes",
                        store.inner.shown
                    );
                    return;
                }
            }
        });
    }

    /// Keep an admission made without Redis, for Redis.
    fn fell(&self, admission: Fallen) {
        let mut fallen = self.fallen.lock().unwrap_or_else(|e| e.into_inner());
        if fallen.len() >= MAX_FALLEN {
            fallen.pop_front();
        } else if fallen.len() + 1 == MAX_FALLEN {
            // Said once, when the log fills.
            tracing::warn!(
                "Redis at {} has been unreachable for {MAX_FALLEN} admissions: from now on the oldest are no longer kept for it",
                self.shown
            );
        }
        fallen.push_back(admission);
    }

    /// Redis did not decide: this process's own ledger does (it admitted already); while
    /// Redis is away and the store falls back, the admission (`fallen`) is kept for it.
    fn fall(&self, fallen: impl FnOnce() -> Fallen) -> Result<Option<SharedTicket>, SharedRefusal> {
        if self.options.when_unreachable == WhenUnreachable::FallBack
            && !self.reachable.load(Ordering::Acquire)
        {
            self.fell(fallen());
        }
        self.fallback()
    }

    fn fallback(&self) -> Result<Option<SharedTicket>, SharedRefusal> {
        match self.options.when_unreachable {
            WhenUnreachable::FallBack => Ok(None),
            WhenUnreachable::Refuse => Err(SharedRefusal::Unreachable(format!(
                "Redis at {}",
                self.shown
            ))),
        }
    }

    /// `prefix:{slot}:kind:hash(prefix, parts)`: a stable name that holds no key and no secret.
    /// Names with one `slot` share a Redis Cluster hash slot (the part in braces is the hash
    /// tag).
    fn name(&self, slot: &str, kind: &str, parts: &[&str]) -> String {
        let hex = self.hash(parts);
        format!("{}:{{{slot}}}:{kind}:{hex}", self.options.prefix)
    }

    fn hash(&self, parts: &[&str]) -> String {
        let mut hash = Sha256::new();
        hash.update(self.options.prefix.as_bytes());
        for part in parts {
            hash.update([0]);
            hash.update(part.as_bytes());
        }
        let digest = hash.finalize();
        digest[..10].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The hash tag of every name of `project`: its models' windows, slots, days and states,
    /// its keys' states and its own.
    fn project_slot(&self, project: &str) -> String {
        self.hash(&["project", project])
    }

    fn project_model(&self, scope: &Scope) -> String {
        self.name(
            &self.project_slot(&scope.project),
            "pm",
            &[&scope.project, scope.model.as_deref().unwrap_or("")],
        )
    }

    fn key_state(&self, scope: &Scope) -> String {
        self.name(
            &self.project_slot(&scope.project),
            "k",
            &[&scope.key, &scope.project],
        )
    }

    fn project_state(&self, project: &str) -> String {
        self.name(&self.project_slot(project), "p", &[project])
    }

    /// Where a resource lives, and each tenant's set of names: all in one slot (the pin script
    /// keeps a record and its set together; resources are made rarely).
    fn pin_name(&self, kind: &str, parts: &[&str]) -> String {
        self.name(PIN_SLOT, kind, parts)
    }

    /// Give an admission back (in the background).
    fn give_back(self: &Arc<Self>, ticket: SharedTicket) {
        let keys = vec![
            format!("{}:w", ticket.base),
            format!("{}:s", ticket.base),
            ticket.day.to_string(),
        ];
        let args = vec![
            ticket.member,
            ticket.tokens.to_string(),
            ticket.images.to_string(),
        ];
        self.spawn_write(Write::Refund, keys, args);
    }

    /// Run a write in the background (answers do not wait for Redis); a failure makes the
    /// store unreachable like a failed admission.
    fn spawn_write(self: &Arc<Self>, write: Write, keys: Vec<String>, args: Vec<String>) {
        if !self.reachable.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = self.clone();
        runtime.spawn(async move {
            let script = match write {
                Write::Refund => &inner.refund,
                Write::Correct => &inner.correct,
                Write::Apply => &inner.apply,
            };
            let mut invocation = script.prepare_invoke();
            for key in keys {
                invocation.key(key);
            }
            for arg in args {
                invocation.arg(arg);
            }
            let mut connection = inner.connection.clone();
            let write = invocation.invoke_async::<i64>(&mut connection);
            match tokio::time::timeout(inner.options.timeout, write).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => inner.failed(&e),
                Err(_) => inner.unreachable("no answer in time"),
            }
        });
    }
}

/// The certificates to connect with: `None` for plain TCP, or TLS with the webpki roots and
/// no client certificate. An error when the URL and the TLS settings disagree, when a URL asks
/// for something through its fragment (`#insecure` would turn certificate checks off), when
/// TLS is asked of a build without it, or when a PEM is wrong.
fn tls_for(
    urls: &[String],
    options: &RedisOptions,
    shown: &str,
) -> Result<Option<Certificates>, Error> {
    // After the credentials (a password may hold a `#`, percent-encoded or not).
    if urls
        .iter()
        .any(|url| url[url.rfind('@').map_or(0, |at| at + 1)..].contains('#'))
    {
        return Err(Error::config(format!(
            "the Redis URL {shown} has a fragment (#…): certificate checks are never turned off here; remove it, and give a Redis with a certificate of its own CA that CA (--redis-ca, REDIS_CA_FILE)"
        )));
    }
    if urls.is_empty() {
        // Nothing to connect to: said by the cluster's own check.
        return Ok(None);
    }
    if wants_tls(urls, shown)? {
        return certificates(&options.tls, shown);
    }
    if options.tls.is_set() {
        return Err(Error::config(format!(
            "a CA or client certificate is set for Redis, but the URL {shown} is plain TCP: use rediss://host:port (or rediss+cluster://host:port,host:port)"
        )));
    }
    Ok(None)
}

/// The redis crate builds its TLS with the process's default crypto provider: ring, as
/// everywhere here, unless the program installed one (a process with two providers and no
/// default would panic at the first connection).
#[cfg(feature = "redis-tls")]
fn certificates(tls: &RedisTls, _shown: &str) -> Result<Option<Certificates>, Error> {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    match tls.is_set() {
        true => tls.certificates().map(Some),
        false => Ok(None),
    }
}

#[cfg(not(feature = "redis-tls"))]
fn certificates(_tls: &RedisTls, shown: &str) -> Result<Option<Certificates>, Error> {
    Err(Error::config(format!(
        "the Redis URL {shown} asks for TLS, which this build lacks: enable tower-gemini's `redis-tls` feature (the gateway has it)"
    )))
}

/// The redis crate's certificates (a type of its own only with TLS).
#[cfg(feature = "redis-tls")]
type Certificates = redis::TlsCertificates;
#[cfg(not(feature = "redis-tls"))]
type Certificates = std::convert::Infallible;

/// One Redis, connected lazily (see [`RedisStore::connect_with`]).
fn connect_single(
    url: &str,
    options: &RedisOptions,
    tls: Option<Certificates>,
    shown: &str,
) -> Result<Connection, Error> {
    let client = match tls {
        None => Client::open(url),
        #[cfg(feature = "redis-tls")]
        Some(certificates) => Ok(Client::build_with_tls(url, certificates).map_err(|e| {
            Error::config(format!(
                "cannot set up TLS to Redis at {shown} with the CA and client certificate given: {e}"
            ))
        })?),
    };
    let client = client.map_err(|e| {
        Error::config(format!(
            "the Redis URL {shown} is malformed ({e}); expected redis://host:port or redis://:password@host:port/db (rediss:// over TLS; redis+cluster://host:port,host:port for a cluster)"
        ))
    })?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(options.timeout))
        .set_response_timeout(Some(options.timeout))
        .set_number_of_retries(1)
        .set_max_delay(options.retry_every);
    ConnectionManager::new_lazy_with_config(client, config)
        .map(Connection::Single)
        .map_err(|e| {
            Error::config(format!(
                "cannot set up a connection to Redis at {shown}: {e}"
            ))
        })
}

/// A Redis Cluster from some of its nodes, connected in the background (the slots are learned
/// from the first that answers).
fn connect_cluster(
    nodes: &[String],
    options: &RedisOptions,
    tls: Option<Certificates>,
    shown: &str,
) -> Result<Connection, Error> {
    if nodes.is_empty() {
        return Err(Error::config(format!(
            "the Redis Cluster URL {shown} names no node; expected redis+cluster://host:port,host:port"
        )));
    }
    let builder = redis::cluster::ClusterClient::builder(nodes.to_vec())
        .connection_timeout(options.timeout)
        .response_timeout(options.timeout)
        .retries(1);
    let builder = match tls {
        None => builder,
        #[cfg(feature = "redis-tls")]
        Some(certificates) => builder.certs(certificates),
    };
    let client = builder
        .build()
        .map_err(|e| {
            Error::config(format!(
                "the Redis Cluster URL {shown} is malformed, or its TLS settings unusable ({e}); expected redis+cluster://[:password@]host:port,host:port (rediss+cluster:// over TLS)"
            ))
        })?;
    let config = redis::cluster::ClusterConfig::new()
        .set_connection_timeout(options.timeout)
        .set_response_timeout(options.timeout);
    Ok(Connection::Cluster(
        client.get_pending_async_connection_with_config(config),
    ))
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2)
}

/// The scripts run in the background.
#[derive(Clone, Copy)]
enum Write {
    Refund,
    Correct,
    Apply,
}

/// `redis://:secret@host` → `redis://***@host`.
pub(crate) fn redact(url: &str) -> String {
    // A cluster's list (`redis://:pw@a:1,redis://:pw@b:2`) is redacted URL by URL: a comma
    // starts a new one only before a scheme (a password may hold a comma; the hosts after a
    // `redis+cluster://` hold no password).
    urls_in(url)
        .iter()
        .map(|url| match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}***{}", &url[..scheme + 3], &url[at..])
            }
            _ => url.clone(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn reason_named(name: &str) -> DisabledReason {
    [
        DisabledReason::KeyInvalid,
        DisabledReason::KeyForbidden,
        DisabledReason::BillingExhausted,
        DisabledReason::ModelNotOnTier,
        DisabledReason::Removed,
    ]
    .into_iter()
    .find(|r| r.as_str() == name)
    .unwrap_or(DisabledReason::KeyInvalid)
}

/// An admission this process made alone, kept for Redis.
fn fallen(admission: &Admission, base: &Arc<str>, day: &Arc<str>, member: String) -> Fallen {
    Fallen {
        base: base.clone(),
        day: day.clone(),
        day_end: next_pacific_midnight(admission.now),
        at: admission.now,
        member,
        tokens: admission.demand.tokens,
        images: admission.demand.images,
    }
}

/// The admission script's call: its keys (the project and model's windows, slots, day, state;
/// the key's and the project's state) and arguments (the time, the member, the demand, the
/// limits, the day's end, how long a window member is kept).
fn admit_invocation<'a>(
    inner: &'a Inner,
    admission: &Admission,
    base: &str,
    day: &str,
    member: &str,
) -> redis::ScriptInvocation<'a> {
    let scope = &admission.scope;
    let limits = admission.limits;
    let demand = admission.demand;
    let mut invocation = inner.admit.prepare_invoke();
    invocation
        .key(format!("{base}:w"))
        .key(format!("{base}:s"))
        .key(day)
        .key(format!("{base}:st"))
        .key(inner.key_state(scope))
        .key(inner.project_state(&scope.project))
        .arg(admission.now)
        .arg(member)
        .arg(demand.tokens)
        .arg(demand.images)
        .arg(limits.rpm.unwrap_or(0))
        .arg(limits.tpm.unwrap_or(0))
        .arg(limits.rpd.unwrap_or(0))
        .arg(limits.ipm.unwrap_or(0))
        .arg(next_pacific_midnight(admission.now))
        .arg(60_000 + duration_ms(inner.options.margin));
    invocation
}

/// The script's answer as a refusal (`None`: admitted).
fn verdict(answer: &[String]) -> Result<(), SharedRefusal> {
    let number = |i: usize| answer.get(i).and_then(|v| v.parse::<u64>().ok());
    match answer.first().map(String::as_str) {
        Some("ok") | None => Ok(()),
        Some("quota") => Err(SharedRefusal::Quota {
            dimension: answer
                .get(1)
                .and_then(|d| Dimension::from_name(d))
                .unwrap_or(Dimension::RequestsPerMinute),
            limit: number(2).unwrap_or(0),
            until: number(3).filter(|&at| at > 0),
        }),
        Some("model_cooling") => Err(SharedRefusal::ModelCooling(number(1).unwrap_or(0))),
        Some("key_cooling") => Err(SharedRefusal::KeyCooling(number(1).unwrap_or(0))),
        Some("key_disabled") => Err(SharedRefusal::KeyDisabled(reason_named(
            answer.get(1).map_or("", String::as_str),
        ))),
        Some("project_disabled") => Err(SharedRefusal::ProjectDisabled(reason_named(
            answer.get(1).map_or("", String::as_str),
        ))),
        Some("model_disabled") => Err(SharedRefusal::ModelDisabled),
        Some(_) => Ok(()),
    }
}

impl Store for RedisStore {
    fn is_shared(&self) -> bool {
        true
    }

    fn is_reachable(&self) -> bool {
        self.is_connected()
    }

    fn admit(
        &self,
        admission: Admission,
    ) -> StoreFuture<Result<Option<SharedTicket>, SharedRefusal>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let scope = &admission.scope;
            let base: Arc<str> = inner.project_model(scope).into();
            let day_start = pacific_day_start(admission.now);
            let day: Arc<str> = format!("{base}:d:{day_start}").into();
            let demand = admission.demand;
            let new_member = || {
                format!(
                    "{:016x}-{}:{}:{}",
                    inner.nonce,
                    inner.sequence.fetch_add(1, Ordering::Relaxed),
                    demand.tokens,
                    demand.images
                )
            };
            let member = new_member();
            // Without Redis: this process's own ledger decides (it admitted already), and the
            // admission is kept for Redis.
            let fall = |inner: &Arc<Inner>, member: String| {
                inner.fall(|| fallen(&admission, &base, &day, member))
            };
            if !inner.reachable.load(Ordering::Acquire) {
                return fall(&inner, member);
            }
            let invocation = admit_invocation(&inner, &admission, &base, &day, &member);
            // From here the script may run, whether or not its answer is awaited: if the
            // caller gives up (drops this future), or the answer is late or lost, the admission
            // is given back (a no-op if it never ran).
            let mut unconfirmed = Unconfirmed {
                inner: &inner,
                ticket: Some(SharedTicket {
                    member: member.clone(),
                    base: base.clone(),
                    day: day.clone(),
                    at: admission.now,
                    tokens: demand.tokens,
                    images: demand.images,
                }),
            };
            let mut connection = inner.connection.clone();
            let call = invocation.invoke_async::<Vec<String>>(&mut connection);
            let answer = match tokio::time::timeout(inner.options.timeout, call).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(e)) => {
                    inner.failed(&e);
                    // Unconfirmed gives it back from Redis in case the script ran.
                    return fall(&inner, new_member());
                }
                Err(_) => {
                    inner.unreachable(&format!(
                        "no answer within {} ms",
                        inner.options.timeout.as_millis()
                    ));
                    return fall(&inner, new_member());
                }
            };
            if let Err(refused) = verdict(&answer) {
                // Refused: nothing was admitted, nothing to give back.
                unconfirmed.ticket = None;
                return Err(refused);
            }
            Ok(unconfirmed.ticket.take())
        })
    }

    fn refund(&self, ticket: SharedTicket) {
        self.inner.give_back(ticket);
    }

    fn correct(&self, ticket: &SharedTicket, tokens: u64) {
        if tokens == ticket.tokens {
            return;
        }
        let renamed = match ticket.member.rsplit_once(':') {
            Some((head, images)) => match head.rsplit_once(':') {
                Some((id, _)) => format!("{id}:{tokens}:{images}"),
                None => return,
            },
            None => return,
        };
        let delta = i128::from(tokens) - i128::from(ticket.tokens);
        let delta = i64::try_from(delta).unwrap_or(0);
        let keys = vec![format!("{}:w", ticket.base), format!("{}:s", ticket.base)];
        let args = vec![
            ticket.member.clone(),
            renamed,
            ticket.at.to_string(),
            delta.to_string(),
        ];
        self.inner.spawn_write(Write::Correct, keys, args);
    }

    fn apply(&self, scope: &Scope, effect: &Effect) {
        let writes = effect.disable_key.is_some()
            || effect.disable_project.is_some()
            || effect.disable_model
            || effect.cool_model_until.is_some()
            || effect.cool_key_until.is_some()
            || effect.learn.is_some();
        if !writes {
            return;
        }
        let inner = &self.inner;
        let keys = vec![
            inner.key_state(scope),
            inner.project_state(&scope.project),
            format!("{}:st", inner.project_model(scope)),
        ];
        let args = vec![
            effect
                .disable_key
                .map_or("", DisabledReason::as_str)
                .to_owned(),
            effect
                .disable_project
                .map_or("", DisabledReason::as_str)
                .to_owned(),
            if effect.disable_model { "1" } else { "" }.to_owned(),
            effect.cool_model_until.unwrap_or(0).to_string(),
            effect.class.as_str().to_owned(),
            effect.cool_key_until.unwrap_or(0).to_string(),
            effect.learn.map_or("", |(d, _)| d.as_str()).to_owned(),
            effect.learn.map_or(0, |(_, v)| v).to_string(),
            STATE_TTL_MS.to_string(),
        ];
        inner.spawn_write(Write::Apply, keys, args);
    }

    fn reset(&self, keys: &[Scope], projects: &[Arc<str>], models: &[Arc<str>]) {
        let inner = self.inner.clone();
        if !inner.reachable.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // One pipeline per project: its names share a slot (a cluster refuses a pipeline
        // across slots).
        let mut pipes: std::collections::BTreeMap<&str, redis::Pipeline> = Default::default();
        for scope in keys {
            pipes
                .entry(&scope.project)
                .or_default()
                .del(inner.key_state(scope))
                .ignore();
        }
        for project in projects {
            let pipe = pipes.entry(project).or_default();
            pipe.del(inner.project_state(project)).ignore();
            for model in models.iter().map(Some).chain([None]) {
                let scope = Scope {
                    key: "".into(),
                    project: project.clone(),
                    model: model.cloned(),
                };
                pipe.hdel(
                    format!("{}:st", inner.project_model(&scope)),
                    &["cool_until", "cool_class", "not_on_tier"],
                )
                .ignore();
            }
        }
        let pipes: Vec<redis::Pipeline> = pipes.into_values().collect();
        runtime.spawn(async move {
            let mut connection = inner.connection.clone();
            for pipe in pipes {
                let run = pipe.query_async::<()>(&mut connection);
                if let Ok(Err(e)) = tokio::time::timeout(inner.options.timeout, run).await {
                    tracing::warn!("could not reset the shared state in Redis: {e}");
                    return;
                }
            }
        });
    }

    fn pin(&self, name: &str, record: &PinRecord, now: u64) -> Option<StoreFuture<()>> {
        let inner = self.inner.clone();
        let ttl = record.expires_at.checked_sub(now).filter(|&t| t > 0)?;
        if !inner.reachable.load(Ordering::Acquire) {
            return None;
        }
        let value = serde_json::to_string(record).ok()?;
        let key = inner.pin_name("pin", &[name]);
        // Each tenant's names in a set of their own, bounded as the working copy is.
        let (set, cap) = match &record.tenant {
            Some(tenant) => (inner.pin_name("pins", &[tenant]), MAX_PINS_PER_TENANT),
            None => (inner.pin_name("pins", &[]), MAX_PINS),
        };
        Some(Box::pin(async move {
            let mut connection = inner.connection.clone();
            let mut invocation = inner.pin.prepare_invoke();
            invocation
                .key(&key)
                .key(&set)
                .arg(value)
                .arg(ttl)
                .arg(now.saturating_add(ttl))
                .arg(now)
                .arg(cap);
            let write = invocation.invoke_async::<i64>(&mut connection);
            match tokio::time::timeout(inner.options.timeout, write).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => inner.failed(&e),
                Err(_) => inner.unreachable("no answer in time"),
            }
        }))
    }

    fn pinned(&self, name: &str) -> Option<StoreFuture<Option<PinRecord>>> {
        let inner = self.inner.clone();
        if !inner.reachable.load(Ordering::Acquire) {
            return None;
        }
        let key = inner.pin_name("pin", &[name]);
        Some(Box::pin(async move {
            let mut connection = inner.connection.clone();
            let mut get = redis::cmd("GET");
            get.arg(&key);
            let read = get.query_async::<Option<String>>(&mut connection);
            match tokio::time::timeout(inner.options.timeout, read).await {
                Ok(Ok(value)) => value.and_then(|v| serde_json::from_str(&v).ok()),
                Ok(Err(e)) => {
                    inner.failed(&e);
                    None
                }
                Err(_) => {
                    inner.unreachable("no answer in time");
                    None
                }
            }
        }))
    }

    fn unpin(&self, name: &str) {
        let inner = self.inner.clone();
        if !inner.reachable.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let key = inner.pin_name("pin", &[name]);
        runtime.spawn(async move {
            let mut connection = inner.connection.clone();
            let mut del = redis::cmd("DEL");
            del.arg(&key);
            let delete = del.query_async::<()>(&mut connection);
            let _ = tokio::time::timeout(inner.options.timeout, delete).await;
        });
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.inner.shown)
            .field("prefix", &self.inner.options.prefix)
            .field("connected", &self.is_connected())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("redis://:hunter2@127.0.0.1:6379/0"),
            "redis://***@127.0.0.1:6379/0"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            redact("redis+cluster://:hunter2@10.0.0.1:7000,10.0.0.2:7000"),
            "redis+cluster://***@10.0.0.1:7000,10.0.0.2:7000"
        );
        assert_eq!(
            redact("redis://:hunter2@a:1,redis://:hunter2@b:2"),
            "redis://***@a:1,redis://***@b:2"
        );
        assert_eq!(redact("redis://:hun,ter2@a:1"), "redis://***@a:1");
        // Over TLS the same.
        assert_eq!(
            redact("rediss://:hunter2@10.0.0.1:6380"),
            "rediss://***@10.0.0.1:6380"
        );
        assert_eq!(
            redact("rediss+cluster://user:hunter2@10.0.0.1:7000,10.0.0.2:7000"),
            "rediss+cluster://***@10.0.0.1:7000,10.0.0.2:7000"
        );
    }

    /// A `rediss+cluster://` URL names `rediss://` nodes: the slots' owners are reached over
    /// TLS too, never in plain text.
    #[test]
    fn a_tls_clusters_nodes_are_tls() {
        assert_eq!(
            cluster_nodes("rediss+cluster://:pw@10.0.0.1:7000,10.0.0.2:7000"),
            Some(vec![
                "rediss://:pw@10.0.0.1:7000".to_owned(),
                "rediss://:pw@10.0.0.2:7000".to_owned()
            ])
        );
        assert_eq!(cluster_nodes("rediss://10.0.0.1:6380"), None);
        let urls = |list: &[&str]| list.iter().map(|u| (*u).to_owned()).collect::<Vec<_>>();
        let tls = |list: &[&str]| wants_tls(&urls(list), "the URL");
        assert!(tls(&["rediss://a:1"]).unwrap());
        assert!(tls(&["REDISS://a:1"]).unwrap());
        assert!(tls(&["valkeys://a:1"]).unwrap());
        assert!(tls(&["rediss://a:1", "rediss://b:2"]).unwrap());
        assert!(!tls(&["redis://a:1", "valkey://b:2"]).unwrap());
        assert!(tls(&["rediss://a:1", "redis://b:2"]).is_err());
        // What the store is given (no TLS settings) follows the URL.
        let options = RedisOptions::default();
        assert!(
            tls_for(&urls(&["redis://a:1"]), &options, "u")
                .unwrap()
                .is_none()
        );
        assert!(tls_for(&urls(&["rediss://a:1/#insecure"]), &options, "u").is_err());
        // A `#` in the password is no fragment.
        #[cfg(feature = "redis-tls")]
        assert!(tls_for(&urls(&["rediss://:p#w@a:1"]), &options, "u").is_ok());
    }

    #[test]
    fn cluster_urls_name_their_nodes() {
        assert_eq!(cluster_nodes("redis://127.0.0.1:6379"), None);
        // A comma in a password is not a second node.
        assert_eq!(cluster_nodes("redis://:pa,ss@127.0.0.1:6379"), None);
        assert_eq!(
            cluster_nodes("redis+cluster://:pw@127.0.0.1:7001,127.0.0.1:7002/"),
            Some(vec![
                "redis://:pw@127.0.0.1:7001".to_owned(),
                "redis://:pw@127.0.0.1:7002".to_owned()
            ])
        );
        assert_eq!(
            cluster_nodes("redis://127.0.0.1:7001, redis://127.0.0.1:7002"),
            Some(vec![
                "redis://127.0.0.1:7001".to_owned(),
                "redis://127.0.0.1:7002".to_owned()
            ])
        );
    }

    /// A cluster runs a script or a transaction only if its keys share a hash slot: every name
    /// one admission, refund, correction, effect or reset touches carries its project's tag.
    #[tokio::test]
    async fn one_projects_names_share_a_hash_tag() {
        let store = RedisStore::connect_with(
            "redis://127.0.0.1:1",
            RedisOptions {
                prefix: "tag-test".to_owned(),
                ..RedisOptions::default()
            },
        )
        .await
        .unwrap();
        let inner = &store.inner;
        let scope = |key: &str, project: &str, model: Option<&str>| Scope {
            key: key.into(),
            project: project.into(),
            model: model.map(Into::into),
        };
        let a = scope("…0001", "proj-a", Some("gemini-2.0-flash"));
        let names = [
            inner.project_model(&a),
            inner.project_model(&scope("…0002", "proj-a", Some("gemini-2.5-pro"))),
            inner.project_model(&scope("…0002", "proj-a", None)),
            inner.key_state(&a),
            inner.key_state(&scope("…0002", "proj-a", None)),
            inner.project_state("proj-a"),
        ];
        let tag = slot_of(&names[0]);
        assert_eq!(tag.len(), 20, "{}", names[0]);
        for name in &names {
            assert_eq!(slot_of(name), tag, "{name}");
            assert!(name.starts_with("tag-test:{"), "{name}");
        }
        assert_ne!(slot_of(&inner.project_state("proj-b")), tag);
        assert_eq!(
            slot_of(&inner.pin_name("pin", &["interactions/abc"])),
            slot_of(&inner.pin_name("pins", &["client-1"]))
        );
    }

    #[test]
    fn answers_become_refusals() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(verdict(&s(&["ok"])), Ok(()));
        assert_eq!(
            verdict(&s(&["quota", "rpm", "30", "1700000060000"])),
            Err(SharedRefusal::Quota {
                dimension: Dimension::RequestsPerMinute,
                limit: 30,
                until: Some(1_700_000_060_000)
            })
        );
        assert_eq!(
            verdict(&s(&["quota", "tpm", "100", "0"])),
            Err(SharedRefusal::Quota {
                dimension: Dimension::TokensPerMinute,
                limit: 100,
                until: None
            })
        );
        assert_eq!(
            verdict(&s(&["key_disabled", "key_invalid"])),
            Err(SharedRefusal::KeyDisabled(DisabledReason::KeyInvalid))
        );
    }
}
