//! The hybrid cache: the L1 (a local `ExpiringCache`) whose loads go through Redis.

use std::{
    borrow::Borrow,
    collections::HashMap,
    fmt,
    future::Future,
    hash::{BuildHasher, Hash, Hasher},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, PoisonError, RwLock,
    },
    time::{Duration, Instant, SystemTime},
};

use deferred_cache::LoadError;
use deferred_expiring::ExpiringCache;
use redis::{aio::ConnectionManager, Client, RedisResult, Script, Value};
use tokio::sync::{oneshot, watch, Notify};

use crate::{
    backplane,
    deadline::{Deadlines, Elapsed},
    stats::{bump, Counters},
    wire::{self, Unframed},
    BuildError, Codec, HybridStats, L2Error, RedisKey, TtlPolicy, WriteKey,
};

/// Reads the value, or takes the lease when there is neither a value nor a lease: one round
/// trip, atomic, so no process can see "no value, no lease" between another's write and its
/// lease release (the write and the release are one script too, `COMMIT`).
/// It also returns the prefix's generation (bumped by every `invalidate_all`), which the
/// load's `COMMIT` checks.
/// A value the caller could not read (ARGV[3] 'bad' with those bytes in ARGV[4], or
/// 'foreign' for a key of another type) counts as no value, so that replacing it is one
/// load across processes like any miss.
/// KEYS: value, lease, generation. ARGV: token, lease in ms, unreadable ('', 'bad' or
/// 'foreign'), the bad bytes. Returns {1, value, its PTTL, generation} | {2, generation}
/// (leased) | {0} (held) | {3, generation} (the value key holds another type: WRONGTYPE).
const GET_OR_LEASE: &str = r"
local g = redis.call('GET', KEYS[3]) or '0'
local v = redis.pcall('GET', KEYS[1])
if type(v) == 'table' then
  if ARGV[3] ~= 'foreign' then return {3, g} end
elseif v and not (ARGV[3] == 'bad' and v == ARGV[4]) then
  return {1, v, redis.call('PTTL', KEYS[1]), g}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2, g} end
return {0}
";

/// The fenced write: only the holder of the lease writes, releases and announces, and only
/// if no `invalidate_all` began since the lease was taken (the generation is the one
/// `GET_OR_LEASE` returned; else the lease is given up, announced, and nothing written).
/// KEYS: value, lease, generation. ARGV: token, bytes, ttl in ms, channel, message,
/// generation. Returns 1 (written) or 0 (refused).
const COMMIT: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
local written = 0
if (redis.call('GET', KEYS[3]) or '0') == ARGV[6] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  written = 1
end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return written
";

/// Extends the lease if it is still this token's. KEYS: lease. ARGV: token, lease in ms.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Gives the lease up if it is still this token's, and tells the waiters to try again.
/// KEYS: lease. ARGV: token, channel, message.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
";

/// A write from outside any load: it also deletes the key's lease, so that a load running
/// anywhere cannot overwrite it afterwards (its `COMMIT` finds the lease gone: writes win).
/// KEYS: value, lease. ARGV: bytes ('' with mode 'del'), ttl in ms, channel, message, mode.
const WRITE: &str = r"
if ARGV[5] == 'set' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('DEL', KEYS[1])
end
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
";

/// The settings, with their defaults in [`Builder`]'s docs.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) ttl: Duration,
    /// `None`: the Redis TTL.
    pub(crate) l1_ttl: Option<Duration>,
    pub(crate) l1_capacity: u64,
    pub(crate) lease: Duration,
    pub(crate) op_timeout: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) max_wait: Duration,
    pub(crate) reconnect_backoff: Duration,
    pub(crate) backplane: bool,
    pub(crate) backplane_ping: Duration,
    /// `Builder::cache_errors_for`: how long the L1 keeps a loader error.
    pub(crate) negative_ttl: Option<Duration>,
}

impl Config {
    /// The longest a value stays in the L1.
    pub(crate) fn l1_ttl(&self) -> Duration {
        self.l1_ttl.unwrap_or(self.ttl)
    }
}

/// Builds a [`HybridCache`]: see [`HybridCache::builder`].
///
/// ```
/// use std::time::Duration;
/// use deferred_redis::{Builder, HybridCache, Utf8};
/// let client = redis::Client::open("redis://127.0.0.1:6379/").unwrap(); // connects later
/// let builder: Builder<String, String, std::io::Error, Utf8> =
///     HybridCache::builder(client, "users:", Utf8).time_to_live(Duration::from_secs(60));
/// assert!(format!("{builder:?}").contains("\"users:\""));
/// ```
pub struct Builder<K, V, E, C> {
    client: Client,
    prefix: String,
    codec: C,
    pub(crate) config: Config,
    /// `Builder::expire_after`: the time to live of each value.
    pub(crate) ttl_policy: Option<Arc<dyn TtlPolicy<K, V>>>,
    _types: core::marker::PhantomData<fn() -> E>,
}

impl<K, V, E, C> fmt::Debug for Builder<K, V, E, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("prefix", &self.prefix)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<K, V, E, C> Builder<K, V, E, C>
where
    K: RedisKey,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    C: Codec<V>,
{
    /// How long a value lives in Redis (`PX`). Default 5 minutes. Also the L1's longest time
    /// to live unless [`l1_time_to_live`](Self::l1_time_to_live) says otherwise (in either
    /// order). [`expire_after`](Self::expire_after) replaces it with a TTL per value.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use deferred_redis::{HybridCache, Utf8};
    /// # let client = redis::Client::open("redis://127.0.0.1:6379/").unwrap(); // connects later
    /// let builder = HybridCache::<String, String, (), _>::builder(client, "app:", Utf8)
    ///     .time_to_live(Duration::from_secs(60));
    /// assert!(format!("{builder:?}").contains("ttl: 60s"));
    /// ```
    pub fn time_to_live(mut self, ttl: Duration) -> Self {
        self.config.ttl = ttl;
        self
    }

    /// The longest a value lives in this process's L1, from when the L1 got it. Default: the
    /// Redis TTL. A value read from Redis lives in the L1 no longer than it had left there
    /// (the absolute expiry its writer stored with it, read on this machine's clock), so an L1
    /// copy outlives the Redis value it copies by at most the clock skew between the writing
    /// and the reading machines; this bounds how stale a copy can get when backplane
    /// messages are lost.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use deferred_redis::{HybridCache, Utf8};
    /// # let client = redis::Client::open("redis://127.0.0.1:6379/").unwrap(); // connects later
    /// let builder = HybridCache::<String, String, (), _>::builder(client, "app:", Utf8)
    ///     .l1_time_to_live(Duration::from_secs(10));
    /// assert!(format!("{builder:?}").contains("l1_ttl: Some(10s)"));
    /// ```
    pub fn l1_time_to_live(mut self, ttl: Duration) -> Self {
        self.config.l1_ttl = Some(ttl);
        self
    }

    /// The L1's capacity in entries. Default 10 000.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use deferred_redis::{HybridCache, Utf8};
    /// # let client = redis::Client::open("redis://127.0.0.1:6379/").unwrap(); // connects later
    /// let builder = HybridCache::<String, String, (), _>::builder(client, "app:", Utf8)
    ///     .l1_max_capacity(500);
    /// assert!(format!("{builder:?}").contains("l1_capacity: 500"));
    /// ```
    pub fn l1_max_capacity(mut self, entries: u64) -> Self {
        self.config.l1_capacity = entries;
        self
    }

    /// How long a load's lease lasts before another process may take over (`PX`). The
    /// leader renews it every third of this while its loader runs. Default 5 s.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use deferred_redis::{HybridCache, Utf8};
    /// # let client = redis::Client::open("redis://127.0.0.1:6379/").unwrap(); // connects later
    /// let builder = HybridCache::<String, String, (), _>::builder(client, "app:", Utf8)
    ///     .lease(Duration::from_secs(2));
    /// assert!(format!("{builder:?}").contains("lease: 2s"));
    /// ```
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease;
        self
    }

    /// The bound on each Redis round trip (connecting included). Past it the round trip
    /// counts as an L2 error and the read goes on without Redis. Default 250 ms. Kept by a
    /// watchdog thread per cache (no timer per round trip, and whichever runtime drives the
    /// call), in ticks of a quarter of it: a round trip past its time fails between 3/4 of
    /// `op_timeout` and `op_timeout` after it started.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use deferred_redis::{HybridCache, Utf8};
    /// # let client = redis::Client::open("redis://127.0.0.1:6379/").unwrap(); // connects later
    /// let builder = HybridCache::<String, String, (), _>::builder(client, "app:", Utf8)
    ///     .op_timeout(Duration::from_millis(100));
    /// assert!(format!("{builder:?}").contains("op_timeout: 100ms"));
    /// ```
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.config.op_timeout = timeout;
        self
    }

    /// How often a load waiting on another's lease asks Redis again when no backplane
    /// message woke it. Default 100 ms.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use deferred_redis::{HybridCache, Utf8};
    /// # let client = redis::Client::open("redis://127.0.0.1:6379/").unwrap(); // connects later
    /// let builder = HybridCache::<String, String, (), _>::builder(client, "app:", Utf8)
    ///     .poll_interval(Duration::from_millis(50));
    /// assert!(format!("{builder:?}").contains("poll_interval: 50ms"));
    /// ```
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.config.poll_interval = interval;
        self
    }

    /// How long a load waits on another's lease before running its loader locally.
    /// Default 30 s.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use deferred_redis::{HybridCache, Utf8};
    /// # let client = redis::Client::open("redis://127.0.0.1:6379/").unwrap(); // connects later
    /// let builder = HybridCache::<String, String, (), _>::builder(client, "app:", Utf8)
    ///     .max_wait(Duration::from_secs(5));
    /// assert!(format!("{builder:?}").contains("max_wait: 5s"));
    /// ```
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.config.max_wait = wait;
        self
    }

    /// After a failed connection, how long calls skip Redis before one tries again.
    /// Default 250 ms.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use deferred_redis::{HybridCache, Utf8};
    /// # let client = redis::Client::open("redis://127.0.0.1:6379/").unwrap(); // connects later
    /// let builder = HybridCache::<String, String, (), _>::builder(client, "app:", Utf8)
    ///     .reconnect_backoff(Duration::from_secs(1));
    /// assert!(format!("{builder:?}").contains("reconnect_backoff: 1s"));
    /// ```
    pub fn reconnect_backoff(mut self, backoff: Duration) -> Self {
        self.config.reconnect_backoff = backoff;
        self
    }

    /// Whether to subscribe to the backplane (default `true`). Without it, other processes'
    /// writes reach this L1 only when its copies expire (`l1_time_to_live`), and loads
    /// waiting on another process's lease find its value by polling (`poll_interval`).
    /// This cache still announces its own writes to the others.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use deferred_redis::{HybridCache, Utf8};
    /// # let client = redis::Client::open("redis://127.0.0.1:6379/").unwrap(); // connects later
    /// let builder = HybridCache::<String, String, (), _>::builder(client, "app:", Utf8)
    ///     .backplane(false);
    /// assert!(format!("{builder:?}").contains("backplane: false"));
    /// ```
    pub fn backplane(mut self, subscribe: bool) -> Self {
        self.config.backplane = subscribe;
        self
    }

    /// How often the backplane's connection is checked with a PING (default 1 s). One
    /// unanswered within `op_timeout` counts as a lost subscription: the backplane
    /// resubscribes, and then drops the L1's values, since messages may have been missed.
    /// Without it a connection that hangs without closing (a network partition) would look
    /// subscribed forever.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use deferred_redis::{HybridCache, Utf8};
    /// # let client = redis::Client::open("redis://127.0.0.1:6379/").unwrap(); // connects later
    /// let builder = HybridCache::<String, String, (), _>::builder(client, "app:", Utf8)
    ///     .backplane_ping(Duration::from_millis(500));
    /// assert!(format!("{builder:?}").contains("backplane_ping: 500ms"));
    /// ```
    pub fn backplane_ping(mut self, every: Duration) -> Self {
        self.config.backplane_ping = every;
        self
    }

    /// The cache, with its backplane task spawned on the current tokio runtime. Connects to
    /// nothing yet: the first read does (so a cache built while Redis is down works, on its
    /// L1 and loader alone, until Redis is back). If that runtime shuts down while the
    /// cache lives on, the task goes with it, and the cache's next operation spawns it again
    /// on its caller's runtime (see the failure table in the crate docs).
    ///
    /// Fails outside a tokio runtime ([`BuildError::NoRuntime`]), or with a setting out of
    /// range ([`BuildError::Invalid`]: a zero time to live, `op_timeout`, `poll_interval`,
    /// `backplane_ping` or `cache_errors_for`, a lease under 3 ms).
    ///
    /// ```
    /// use std::time::Duration;
    /// use deferred_redis::{BuildError, HybridCache, Utf8};
    /// let client = redis::Client::open("redis://127.0.0.1:6379/").unwrap(); // connects later
    /// let builder = || HybridCache::<String, String, (), _>::builder(client.clone(), "app:", Utf8);
    /// assert!(matches!(builder().build(), Err(BuildError::NoRuntime)));
    /// let runtime = tokio::runtime::Runtime::new().unwrap();
    /// let _inside = runtime.enter();
    /// let zero = builder().time_to_live(Duration::ZERO).build();
    /// assert!(matches!(zero, Err(BuildError::Invalid(_))));
    /// let cache = builder().backplane(false).build().unwrap(); // no connection yet
    /// assert!(!cache.contains_local("k"));
    /// ```
    pub fn build(self) -> Result<HybridCache<K, V, E, C>, BuildError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        let c = &self.config;
        let zero = |d: Duration| d.is_zero();
        if zero(c.ttl) || zero(c.l1_ttl()) {
            return Err(BuildError::Invalid("time to live must be more than zero"));
        }
        if c.lease < Duration::from_millis(3) {
            return Err(BuildError::Invalid("the lease must be at least 3 ms"));
        }
        if zero(c.op_timeout) || zero(c.poll_interval) || zero(c.backplane_ping) {
            return Err(BuildError::Invalid(
                "op_timeout, poll_interval and backplane_ping must be more than zero",
            ));
        }
        if c.negative_ttl.is_some_and(zero) {
            return Err(BuildError::Invalid(
                "cache_errors_for must be more than zero",
            ));
        }
        let mut l1 = ExpiringCache::builder()
            .max_capacity(c.l1_capacity)
            .expire_after(L1Expiry);
        if let Some(ttl) = c.negative_ttl {
            l1 = l1.cache_errors_for(ttl);
        }
        let l1 = l1.build();
        let origin = format!("{:016x}", random_u64());
        let (stop, _) = watch::channel(());
        let (subscribed, _) = watch::channel(false);
        let channel = format!("{}bp", self.prefix);
        let op_timeout = self.config.op_timeout;
        let inner = Arc::new(Inner {
            l1,
            codec: self.codec,
            config: self.config,
            ttl_policy: self.ttl_policy,
            prefix: self.prefix,
            channel,
            client: self.client,
            manager: RwLock::default(),
            deadlines: Deadlines::new(op_timeout),
            failed_at: Mutex::new(None),
            scripts: Scripts {
                get_or_lease: Script::new(GET_OR_LEASE),
                commit: Script::new(COMMIT),
                renew: Script::new(RENEW),
                release: Script::new(RELEASE),
                write: Script::new(WRITE),
            },
            counters: Counters::default(),
            waiters: Mutex::new(HashMap::new()),
            origin,
            tokens: AtomicU64::new(0),
            subscribed,
            backplane_down: AtomicBool::new(false),
            respawned_at: Mutex::new(None),
            stop,
        });
        if inner.config.backplane {
            backplane::spawn(&inner, &handle);
        }
        Ok(HybridCache { inner })
    }
}

/// The least time between two spawns of the backplane task after the first
/// (`Inner::respawn_backplane`).
const RESPAWN_EVERY: Duration = Duration::from_millis(100);

/// A cache in two tiers with one load per key across processes: this process's
/// [`ExpiringCache`] (L1) in front of Redis (L2), and a Redis pub/sub channel (the
/// backplane) that carries writes and invalidations to every process's L1.
///
/// Reads ([`get_with`](Self::get_with)) never fail because Redis failed: Redis down, slow or
/// emptied means the L1, then the caller's own loader, within the per-operation timeout.
/// See the crate docs for the round trips, the guarantees and the failure table.
///
/// Needs a tokio runtime: reads, writes and the backplane run on it. A cheap `Clone` (an
/// `Arc` inside); the backplane task ends when the last handle is dropped (or with its
/// runtime, after which the next operation spawns it again on its caller's runtime).
///
/// `HybridCache<K, V, E, C>`: keys `K`, values `V`, loader errors `E`, and the values'
/// [`Codec`] `C`. A key is any [`RedisKey`] (`String`, `Box<str>`, `Arc<str>`, the integer
/// types, or a type of your own): the L1 is keyed by `K` itself, and Redis by the key's text
/// ([`WriteKey`]: `{prefix}v:{text}`, `{prefix}l:{text}`), which the backplane's messages
/// carry and each process reads back into a `K` ([`RedisKey::read_key`]) to drop its L1
/// entry. A `String` key's text is the string itself. The methods that only look a key up or
/// remove it take a borrowed form (`&str` for a `String` key), as `HashMap`'s do; those that
/// store one take `impl Into<K>` (`"k"` for a `String` key; `7_u64`, or a `u64` variable, for
/// a `u64` key: a bare literal `7` is an `i32`). An L1 hit writes no text: on a hit an
/// integer key allocates nothing.
///
/// ```no_run
/// // `no_run`: needs a Redis server at this address.
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use deferred_redis::{HybridCache, Utf8};
/// let client = redis::Client::open("redis://127.0.0.1:6379/")?;
/// let users: HybridCache<String, String, std::io::Error, Utf8> =
///     HybridCache::builder(client, "users:", Utf8).build()?;
/// let name = users.get_with("7", || async { Ok("Ada".to_string()) }).await?;
/// assert_eq!(name, "Ada");
/// # Ok(()) }
/// ```
pub struct HybridCache<K, V, E, C> {
    pub(crate) inner: Arc<Inner<K, V, E, C>>,
}

impl<K, V, E, C> Clone for HybridCache<K, V, E, C> {
    fn clone(&self) -> Self {
        HybridCache {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K, V, E, C> fmt::Debug for HybridCache<K, V, E, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HybridCache")
            .field("prefix", &self.inner.prefix)
            .field("origin", &self.inner.origin)
            .field("config", &self.inner.config)
            .field("l1_len", &self.inner.l1.len())
            .finish_non_exhaustive()
    }
}

struct Scripts {
    get_or_lease: Script,
    commit: Script,
    renew: Script,
    release: Script,
    write: Script,
}

pub(crate) struct Inner<K, V, E, C> {
    pub(crate) l1: ExpiringCache<K, Tiered<V>, E>,
    codec: C,
    pub(crate) config: Config,
    pub(crate) ttl_policy: Option<Arc<dyn TtlPolicy<K, V>>>,
    prefix: String,
    pub(crate) channel: String,
    pub(crate) client: Client,
    /// The L2 connection once made (it reconnects by itself after that, on the runtime it was
    /// made on). Once made, every operation reads it under the read lock; until then, whoever
    /// makes it holds the cell's initialisation across the connect, and the others wait (each
    /// within its own operation timeout) instead of opening one connection each. A new cell
    /// replaces it once that runtime has shut down (its driver and a reconnect begun there
    /// went with it: awaited elsewhere, such a reconnect's timer panicked).
    manager: RwLock<Arc<tokio::sync::OnceCell<Connected>>>,
    /// Bounds each operation by `op_timeout` (a watchdog, no timer per operation).
    deadlines: Arc<Deadlines>,
    /// When the last attempt to connect failed, for the reconnect backoff.
    failed_at: Mutex<Option<Instant>>,
    scripts: Scripts,
    pub(crate) counters: Counters,
    /// The loads of this process waiting on another's lease, by the key's text (what the
    /// backplane's messages carry, so a message finds its waiters without reading a `K`
    /// back): a backplane message about the key wakes them at once instead of at their next
    /// poll.
    /// With each, how many loads hold it (counted under the lock, so that the last one to
    /// go removes it: `Arc::strong_count` read there could not tell, since two loads that
    /// end at once could each see the other's reference and both leave the entry behind).
    pub(crate) waiters: Mutex<HashMap<String, (Arc<Notify>, usize)>>,
    /// This cache's id on the backplane: its own messages come back to it and are skipped.
    pub(crate) origin: String,
    tokens: AtomicU64,
    /// Whether the backplane is subscribed now.
    pub(crate) subscribed: watch::Sender<bool>,
    /// Whether the backplane task ended while the cache lives on (it went with its runtime,
    /// or panicked): set by the task's guard (`backplane::Running`), cleared by the one
    /// operation that spawns it again (`respawn_backplane`). Never set without the
    /// backplane (`Builder::backplane(false)`).
    pub(crate) backplane_down: AtomicBool,
    /// When `respawn_backplane` last spawned the task (see `RESPAWN_EVERY`).
    respawned_at: Mutex<Option<Instant>>,
    /// Dropped with the cache, which closes every backplane task's receiver (each spawn
    /// subscribes anew): the task ends. Nothing is ever sent on it.
    pub(crate) stop: watch::Sender<()>,
}

/// The L1's load future, boxed (see `get_with`): `Result<Tiered<V>, E>` for `get_with`,
/// `Option<Tiered<V>>` for `optionally_get_with`.
type BoxLoad<T> = core::pin::Pin<Box<dyn Future<Output = T> + Send>>;

/// What a loader gives: `get_with`'s `Result<V, E>`, or `optionally_get_with`'s `Option<V>`.
/// `Inner::load` and `Inner::lead` take either: a value is written to Redis (fenced) and kept
/// in the L1; an error or a `None` is written nowhere, and hands the lease back.
trait Loaded<V>: Send + 'static {
    /// The same outcome with the value as the L1 keeps it.
    type Tiered;

    /// The value, if the loader gave one.
    fn value(&self) -> Option<&V>;

    /// The value (if any) wrapped for the L1 by `tier`.
    fn tier(self, tier: impl FnOnce(V) -> Tiered<V>) -> Self::Tiered;

    /// A value found in Redis, as this outcome.
    fn found(tiered: Tiered<V>) -> Self::Tiered;
}

impl<V: Send + 'static, E: Send + 'static> Loaded<V> for Result<V, E> {
    type Tiered = Result<Tiered<V>, E>;

    fn value(&self) -> Option<&V> {
        self.as_ref().ok()
    }

    fn tier(self, tier: impl FnOnce(V) -> Tiered<V>) -> Self::Tiered {
        self.map(tier)
    }

    fn found(tiered: Tiered<V>) -> Self::Tiered {
        Ok(tiered)
    }
}

impl<V: Send + 'static> Loaded<V> for Option<V> {
    type Tiered = Option<Tiered<V>>;

    fn value(&self) -> Option<&V> {
        self.as_ref()
    }

    fn tier(self, tier: impl FnOnce(V) -> Tiered<V>) -> Self::Tiered {
        self.map(tier)
    }

    fn found(tiered: Tiered<V>) -> Self::Tiered {
        Some(tiered)
    }
}

/// What a load does once it stops asking Redis (`Inner::ask`).
enum Next<V> {
    /// Redis had a value this cache reads, kept in the L1 for so long.
    Found(Tiered<V>),
    /// This load took the lease, under this generation (see `COMMIT`): it runs the loader.
    Lead(Vec<u8>),
    /// Redis failed (fail-safe), or the wait ran past `max_wait`: the loader runs here.
    Local,
}

/// What one answer of `GET_OR_LEASE` leads a load to (`Inner::answer`).
enum Round<V> {
    /// Redis had a value this cache reads.
    Found(Tiered<V>),
    /// Ask again at once: the value there could not be read, and counts as none.
    Again,
    /// Another load holds the lease: ask again after this long, or on its announcement.
    Wait(Duration),
    /// This load took the lease, under this generation.
    Lead(Vec<u8>),
    /// The wait on another's lease ran past `max_wait`.
    TimedOut,
    /// Redis failed.
    Failed,
}

/// A load's state over its rounds of `GET_OR_LEASE` (`Inner::ask`).
struct Asking {
    /// When the wait on another's lease gives up (`max_wait`).
    deadline: tokio::time::Instant,
    /// Whether it has waited on another's lease (a lease it takes then is a takeover).
    waited: bool,
    /// `l2_misses` counts a load once, however its misses go (unreadable, lease, wait).
    missed: bool,
    /// A value found in Redis that this load could not read: the next probe treats it as
    /// no value (and so takes the lease, or waits on whoever has it).
    unreadable: (&'static str, Vec<u8>),
}

/// A value in the L1, with how long it may stay there: no longer than it has left in Redis
/// when it came from there, and never longer than `l1_time_to_live`.
#[derive(Clone)]
pub(crate) struct Tiered<V> {
    pub(crate) value: V,
    ttl: Duration,
}

/// The L1's read with the `Tiered` wrapper taken off its value. A named future rather than
/// an `async` block, which would bring back the "`Send` is not general enough" error that
/// `BoxLoad` avoids (the L1's futures are `Unpin`, so no pinning is needed).
struct Untier<Fut> {
    read: Fut,
}

/// What the L1 read gives, with the `Tiered` wrapper taken off: `get_with`'s `Tiered<V>`,
/// `optionally_get_with`'s `Option<Tiered<V>>`.
trait Untiered {
    type Value;

    fn untier(self) -> Self::Value;
}

impl<V> Untiered for Tiered<V> {
    type Value = V;

    #[inline]
    fn untier(self) -> V {
        self.value
    }
}

impl<V> Untiered for Option<Tiered<V>> {
    type Value = Option<V>;

    #[inline]
    fn untier(self) -> Option<V> {
        self.map(|tiered| tiered.value)
    }
}

impl<Fut, T, E> Future for Untier<Fut>
where
    Fut: Future<Output = Result<T, LoadError<E>>> + Unpin,
    T: Untiered,
{
    type Output = Result<T::Value, LoadError<E>>;

    #[inline]
    fn poll(
        mut self: core::pin::Pin<&mut Self>,
        cx: &mut core::task::Context<'_>,
    ) -> core::task::Poll<Self::Output> {
        core::pin::Pin::new(&mut self.read)
            .poll(cx)
            .map(|read| read.map(Untiered::untier))
    }
}

/// The L1's expiry: each value's own `ttl`, from when the L1 got it.
struct L1Expiry;

impl<K, V: 'static> deferred_expiring::Expiry<K, Tiered<V>> for L1Expiry {
    fn expire_after_create(&self, _: &K, value: &Tiered<V>, _: Duration) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// What a round of a load found: the stored bytes (framed, see `wire`) and the key's time to
/// live in Redis when the round read it (the lease script's `PTTL`; `None` from the plain
/// `GET`, or for no expiry); and with a lease (`GET_OR_LEASE`), the prefix's generation it
/// was taken under.
enum Probe {
    Value(Vec<u8>, Option<Duration>),
    Leased(Vec<u8>),
    Held,
    /// The value key holds another type than a string.
    Foreign,
    /// The first round's plain read (`peek`) found no value: the lease script decides what
    /// that means.
    Absent,
}

/// A value's time to live from its `PTTL`: `None` when it has none (-1); zero when it is
/// gone (-2: deleted or expired since the read of the value), so that no L1 keeps it.
fn ttl_of(pttl: i64) -> Option<Duration> {
    match u64::try_from(pttl) {
        Ok(ms) => Some(Duration::from_millis(ms)),
        Err(_) if pttl == -2 => Some(Duration::ZERO),
        Err(_) => None,
    }
}

/// Random bits for ids and lease tokens (std's hasher keys are random per process; the time
/// and the process id separate processes that were somehow seeded alike).
fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// The L2 connection and a watch on the runtime it was made on (whose tasks drive it).
struct Connected {
    manager: ConnectionManager,
    /// Closed once that runtime has shut down: its task holding the other end is gone.
    runtime: oneshot::Sender<()>,
}

/// A watch on the current runtime: a task of it that waits on the returned sender, so the
/// sender is closed once the runtime has shut down (and the task ends once the sender is
/// dropped with the connection).
fn runtime_watch() -> oneshot::Sender<()> {
    let (sender, receiver) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = receiver.await;
    });
    sender
}

/// The longest time Redis is given in milliseconds (`PX`, `PEXPIRE`): about 35 000 years.
/// Redis refuses a time that, added to its clock, overflows; `Duration::MAX` ("no bound")
/// would otherwise fail every write.
const MAX_MILLIS: u64 = 1 << 50;

/// `d` in whole milliseconds for Redis: at least 1, at most [`MAX_MILLIS`].
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_MILLIS)
}

/// The instant `d` from now, or (for a `d` too long to add, such as `Duration::MAX`) about
/// a century from now: a deadline that never comes, without the panic of `Instant + d`.
pub(crate) fn after(d: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

impl<K, V, E, C> HybridCache<K, V, E, C>
where
    K: RedisKey,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    C: Codec<V>,
{
    /// A builder for a cache on `client`'s Redis whose keys all start with `prefix`, and
    /// whose values cross the wire through `codec`.
    ///
    /// Two caches with different prefixes share nothing (values, leases, generation,
    /// backplane channel); two with the same prefix, in one process or many, are one cache.
    /// Except: a prefix that starts with another followed by `v:` or `l:` (`app:` and
    /// `app:v:`, or `app:` and `app:v:users:`) shares keys with it, since the keys are
    /// `{prefix}v:{key}`, `{prefix}l:{key}` and `{prefix}gen` (`{key}`: the key's text, as
    /// [`WriteKey`] writes it): `app:v:users:`'s key `1` is `app:`'s key `users:v:1`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use deferred_redis::{HybridCache, Decimal};
    /// let client = redis::Client::open("redis://127.0.0.1:6379/").unwrap(); // connects later
    /// // Keyed by `u64` player ids: in Redis, `scores:v:{id}`.
    /// let builder = HybridCache::<u64, u64, String, _>::builder(client, "scores:", Decimal)
    ///     .time_to_live(Duration::from_secs(60))
    ///     .lease(Duration::from_secs(2))
    ///     .op_timeout(Duration::from_millis(100));
    /// # let _ = builder;
    /// ```
    pub fn builder(client: Client, prefix: impl Into<String>, codec: C) -> Builder<K, V, E, C> {
        Builder {
            client,
            prefix: prefix.into(),
            codec,
            config: Config {
                ttl: Duration::from_secs(300),
                l1_ttl: None,
                l1_capacity: 10_000,
                lease: Duration::from_secs(5),
                op_timeout: Duration::from_millis(250),
                poll_interval: Duration::from_millis(100),
                max_wait: Duration::from_secs(30),
                reconnect_backoff: Duration::from_millis(250),
                backplane: true,
                backplane_ping: Duration::from_secs(1),
                negative_ttl: None,
            },
            ttl_policy: None,
            _types: core::marker::PhantomData,
        }
    }

    /// The value at `key`: from the L1; else from Redis; else loaded by `loader`, in one
    /// process at a time across every cache with this prefix, and written to Redis.
    ///
    /// Callers of one process that miss the same key share one L1 load (as in
    /// `deferred-cache`). That load reads Redis; on a miss it takes the key's lease and runs
    /// `loader`, or, when another load holds the lease, waits for its value (woken by the
    /// backplane, polling every `poll_interval` behind it) and takes over if the lease goes
    /// away without one. If Redis fails or times out, `loader` runs here (fail-safe).
    ///
    /// Errors and panics are the L1's: a loader error reaches every caller of that load as
    /// one `Arc<E>` and is not cached (in the L1 or in Redis: the lease is released so that
    /// another process may try); a panic unwinds the caller that ran it and gives the
    /// others [`LoadError::Panicked`].
    ///
    /// ```no_run
    /// // `no_run`: needs a Redis server at this address.
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use deferred_redis::{HybridCache, Raw};
    /// let client = redis::Client::open("redis://127.0.0.1:6379/")?;
    /// let pages: HybridCache<String, Vec<u8>, std::io::Error, Raw> =
    ///     HybridCache::builder(client, "pages:", Raw).build()?;
    /// let page = pages.get_with("/", || async { Ok(b"<html>".to_vec()) }).await?;
    /// assert_eq!(page, b"<html>");
    /// # Ok(()) }
    /// ```
    ///
    /// The future is `Send` when `F` is (a plain function returning the L1's future, not an
    /// `async fn`, so that `tokio::spawn` accepts it).
    #[inline]
    pub fn get_with<'a, F, Fut>(
        &'a self,
        key: impl Into<K>,
        loader: F,
    ) -> impl Future<Output = Result<V, LoadError<E>>> + 'a
    where
        F: FnOnce() -> Fut + 'a,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        self.get_with_key(key.into(), move |_: &K| loader())
    }

    /// `get_with` whose loader gets the key (on a miss only): `HybridLoadingCache::get`.
    #[inline]
    pub(crate) fn get_with_key<'a, F, Fut>(
        &'a self,
        key: K,
        loader: F,
    ) -> impl Future<Output = Result<V, LoadError<E>>> + 'a
    where
        F: FnOnce(&K) -> Fut + 'a,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let inner = &self.inner;
        // One relaxed load on a hit (see `keep_backplane`).
        inner.keep_backplane();
        let read = self.inner.l1.get_with_key(key, move |key: &K| {
            // On a miss only: a hit neither clones the key, nor writes its text, nor touches
            // the tier.
            let (inner, load_key) = (Arc::clone(inner), key.clone());
            let load = loader(key);
            // Boxed as `dyn Send`: the compiler then proves the load `Send` here, once,
            // instead of failing to in callers' spawned futures ("`Send` is not general
            // enough", a known limit with references held across awaits). One allocation
            // per L1 miss, next to a Redis round trip.
            let boxed: BoxLoad<Result<Tiered<V>, E>> = Box::pin(inner.load(load_key, load));
            boxed
        });
        Untier { read }
    }

    /// The value at `key`, as [`get_with`](Self::get_with), where `loader` may find no value
    /// (`None`). A value it finds goes where `get_with`'s does (this L1, and Redis through the
    /// fenced write); a `None` goes nowhere: every caller of that load gets `Ok(None)`, it is
    /// counted (`stats().l1.cache.loads_empty`), and it is not kept, neither in the L1 (not
    /// even with [`cache_errors_for`](Builder::cache_errors_for)) nor in Redis. The next read
    /// asks Redis and loads again.
    ///
    /// Across processes a `None` is what a loader error is: the leader hands its lease back
    /// (`RELEASE`, announced on the backplane), so a load of another process waiting on that
    /// lease is woken at once (at its next `poll_interval` without the backplane), finds no
    /// value and no lease, takes the lease over (counted in `takeovers`) and runs its own
    /// loader, whose outcome its own callers get. So a key with no value costs one loader run
    /// per process that asks while it has none (callers of one process share one load, as
    /// ever), not one across the processes: nothing in Redis says "none".
    ///
    /// Loads are shared by key within the process whichever method started them: an
    /// `optionally_get_with` caller that joins a `get_with` load gets its value or error; a
    /// `get_with` caller that joins a load that found nothing gets
    /// [`LoadError::NotFound`]. Panics are the L1's, as for `get_with`.
    ///
    /// ```no_run
    /// // `no_run`: needs a Redis server at this address.
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use deferred_redis::{HybridCache, Utf8};
    /// let client = redis::Client::open("redis://127.0.0.1:6379/")?;
    /// let users: HybridCache<String, String, std::convert::Infallible, Utf8> =
    ///     HybridCache::builder(client, "users:", Utf8).build()?;
    /// let find = |id: u32| async move { (id < 100).then(|| format!("user {id}")) };
    /// assert_eq!(users.optionally_get_with("7", || find(7)).await?, Some("user 7".into()));
    /// assert_eq!(users.optionally_get_with("700", || find(700)).await?, None);
    /// assert!(!users.contains_local("700")); // kept nowhere: the next read loads again
    /// # Ok(()) }
    /// ```
    ///
    /// The future is `Send` when `F` is, as `get_with`'s.
    #[inline]
    pub fn optionally_get_with<'a, F, Fut>(
        &'a self,
        key: impl Into<K>,
        loader: F,
    ) -> impl Future<Output = Result<Option<V>, LoadError<E>>> + 'a
    where
        F: FnOnce() -> Fut + 'a,
        Fut: Future<Output = Option<V>> + Send + 'static,
    {
        let key = key.into();
        self.inner.keep_backplane();
        // The L1's `optionally_get_with` does not hand its loader the key: one clone per
        // call, hit or miss (nothing for an integer key).
        let (inner, load_key) = (&self.inner, key.clone());
        let read = self.inner.l1.optionally_get_with(key, move || {
            let inner = Arc::clone(inner);
            let load = loader();
            // Boxed for the reason `get_with` gives.
            let boxed: BoxLoad<Option<Tiered<V>>> = Box::pin(inner.load(load_key, load));
            boxed
        });
        Untier { read }
    }

    /// Stores `value` at `key`: in this L1 at once, then in Redis (with the TTL), where it
    /// also wins over any load of the key in flight anywhere (its lease is deleted, so that
    /// load's write is refused), and tells the other processes to drop their L1 copy.
    ///
    /// An `Err` means the L1 was written but Redis was not (the error says why); other
    /// processes may still hold an older value until their L1 TTL. The one exception is a
    /// value the codec cannot encode: `Err(L2Error::Codec)`, and nothing changed anywhere
    /// (neither this L1 nor Redis).
    ///
    /// ```no_run
    /// // `no_run`: needs a Redis server at this address.
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// # let client = redis::Client::open("redis://127.0.0.1:6379/")?;
    /// # let cache: deferred_redis::HybridCache<String, String, (), _> =
    /// #     deferred_redis::HybridCache::builder(client, "app:", deferred_redis::Utf8).build()?;
    /// cache.insert("greeting", "hello".to_string()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn insert(&self, key: impl Into<K>, value: V) -> Result<(), L2Error> {
        self.inner.keep_backplane();
        let key = key.into();
        // Encoded first: a value that cannot go to Redis does not go into this L1 either,
        // or this process would read it while every other one reads Redis's.
        let bytes = self.inner.codec.encode(&value).map_err(|e| {
            bump(&self.inner.counters.encode_errors);
            L2Error::Codec(e)
        })?;
        let ttl = self.inner.ttl_for(&key, &value);
        let l1_ttl = self.inner.l1_ttl_for(ttl);
        self.inner
            .l1
            .insert(key.clone(), Tiered { value, ttl: l1_ttl });
        self.inner.write(&key, Some(bytes), ttl).await
    }

    /// Removes `key` from this L1, from Redis, and (through the backplane) from every other
    /// process's L1. A load of the key in flight anywhere finishes for its callers but its
    /// value is not stored. `Err`: the L1 was cleared, Redis was not. Takes the key borrowed
    /// (`&str` for a `String` key, `&7` for a `u64` one), written straight into the Redis
    /// key names and the message.
    ///
    /// ```no_run
    /// // `no_run`: needs a Redis server at this address.
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// # let client = redis::Client::open("redis://127.0.0.1:6379/")?;
    /// # let cache: deferred_redis::HybridCache<String, String, (), _> =
    /// #     deferred_redis::HybridCache::builder(client, "app:", deferred_redis::Utf8).build()?;
    /// cache.invalidate("greeting").await?;
    /// # Ok(()) }
    /// ```
    pub async fn invalidate<Q>(&self, key: &Q) -> Result<(), L2Error>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + WriteKey + ?Sized,
    {
        self.inner.keep_backplane();
        self.inner.l1.invalidate(key);
        let written = self.inner.write(key, None, self.inner.config.ttl).await;
        // A read of this cache that started after the first invalidation may have copied
        // the value Redis still held into the L1 before the write reached Redis, and this
        // cache skips its own announcement: drop the key again, now that Redis has no value.
        self.inner.l1.invalidate(key);
        written
    }

    /// Removes every value of this prefix: from this L1, from every other process's L1
    /// (backplane), and from Redis (a bounded `SCAN MATCH {prefix}[vl]:*`, then `DEL`).
    /// It first bumps the prefix's generation (`{prefix}gen`), so that a load in flight
    /// anywhere, whose lease is older, cannot write its value afterwards.
    /// `Err`: the L1 was cleared; Redis and the other processes perhaps not all.
    ///
    /// ```no_run
    /// // `no_run`: needs a Redis server at this address.
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// # let client = redis::Client::open("redis://127.0.0.1:6379/")?;
    /// # let cache: deferred_redis::HybridCache<String, String, (), _> =
    /// #     deferred_redis::HybridCache::builder(client, "app:", deferred_redis::Utf8).build()?;
    /// cache.invalidate_all().await?;
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_all(&self) -> Result<(), L2Error> {
        self.inner.keep_backplane();
        self.inner.l1.invalidate_all();
        let cleared = self.inner.clear_l2().await;
        // The deletes take several round trips, and a read of this cache in between copies
        // whatever Redis still held into the L1 (its own announcement is skipped): clear the
        // L1 again once Redis has been cleared, so no value from before this call survives.
        self.inner.l1.invalidate_all();
        cleared
    }

    /// Whether this process's L1 holds a value for `key` (no Redis round trip; counts
    /// nothing). For tests and diagnostics: what the backplane has reached.
    ///
    /// ```no_run
    /// // `no_run`: needs a Redis server at this address.
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// # let client = redis::Client::open("redis://127.0.0.1:6379/")?;
    /// # let cache: deferred_redis::HybridCache<String, String, (), _> =
    /// #     deferred_redis::HybridCache::builder(client, "app:", deferred_redis::Utf8).build()?;
    /// cache.insert("k", "v".to_string()).await?;
    /// assert!(cache.contains_local("k"));
    /// # Ok(()) }
    /// ```
    pub fn contains_local<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.l1.contains_key(key)
    }

    /// Waits, up to `timeout`, until the backplane is subscribed; `true` if it is. Messages
    /// published before that moment do not reach this cache, so each subscription (the
    /// first included) drops the L1: its values, and its loads in flight, whose callers
    /// get their values but which keep nothing in the L1 (a caller that comes after starts
    /// another load, which waits on the first's lease rather than running the loader
    /// again, if the first holds one: not if it runs its loader here because Redis failed
    /// or its wait ran past `max_wait`). Call it before the first reads where an L1 that
    /// keeps them from the start matters.
    ///
    /// ```no_run
    /// // `no_run`: needs a Redis server at this address.
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// # let client = redis::Client::open("redis://127.0.0.1:6379/")?;
    /// # let cache: deferred_redis::HybridCache<String, String, (), _> =
    /// #     deferred_redis::HybridCache::builder(client, "app:", deferred_redis::Utf8).build()?;
    /// assert!(cache.backplane_ready(std::time::Duration::from_secs(1)).await);
    /// # Ok(()) }
    /// ```
    pub async fn backplane_ready(&self, timeout: Duration) -> bool {
        self.inner.keep_backplane();
        let mut state = self.inner.subscribed.subscribe();
        let ready = tokio::time::timeout(timeout, state.wait_for(|up| *up)).await;
        matches!(ready, Ok(Ok(_)))
    }

    /// The counters: the L1's, and the tier's (see [`HybridStats`]).
    ///
    /// ```no_run
    /// // `no_run`: needs a Redis server at this address.
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// # let client = redis::Client::open("redis://127.0.0.1:6379/")?;
    /// # let cache: deferred_redis::HybridCache<String, String, (), _> =
    /// #     deferred_redis::HybridCache::builder(client, "app:", deferred_redis::Utf8).build()?;
    /// let stats = cache.stats();
    /// println!("{} L2 errors, {} lease waits", stats.l2_errors, stats.lease_waits);
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> HybridStats {
        self.inner.counters.snapshot(self.inner.l1.stats())
    }
}

/// Deregisters a waiting load from `Inner::waiters` when it ends, however it ends.
struct Waiting<'a, K, V, E, C> {
    inner: &'a Inner<K, V, E, C>,
    key: &'a str,
    notify: Arc<Notify>,
}

impl<K, V, E, C> Drop for Waiting<'_, K, V, E, C> {
    fn drop(&mut self) {
        let mut waiters = self
            .inner
            .waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Another load of the same key (one that started after an invalidation) may hold
        // the entry too, and keeps it.
        if let Some((_, holders)) = waiters.get_mut(self.key) {
            *holders = holders.saturating_sub(1);
            if *holders == 0 {
                waiters.remove(self.key);
            }
        }
    }
}

/// Releases the lease if the load that holds it ends without writing: a loader that
/// panicked, or a load dropped by its last caller. Runs the release on the runtime, since
/// a drop cannot wait.
struct LeaseGuard<K, V, E, C>
where
    K: RedisKey,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    C: Codec<V>,
{
    inner: Arc<Inner<K, V, E, C>>,
    key: String,
    token: String,
    armed: bool,
}

impl<K, V, E, C> Drop for LeaseGuard<K, V, E, C>
where
    K: RedisKey,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    C: Codec<V>,
{
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let inner = Arc::clone(&self.inner);
            let key = core::mem::take(&mut self.key);
            let token = core::mem::take(&mut self.token);
            handle.spawn(async move { inner.release_in_background(&key, &token).await });
        }
        // Outside a runtime nothing can run the release: the lease expires by itself.
    }
}

/// The part of a value key between the prefix and the key's text: `{prefix}v:{key}`.
const VALUE_PART: &str = "v:";

impl<K, V, E, C> Inner<K, V, E, C>
where
    K: RedisKey,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    C: Codec<V>,
{
    /// `{prefix}{part}{key}`: the key's value (`v:`) or lease (`l:`) in Redis.
    fn redis_key<Q: WriteKey + ?Sized>(&self, part: &str, key: &Q) -> String {
        let mut name = String::with_capacity(self.prefix.len() + part.len() + 16);
        name.push_str(&self.prefix);
        name.push_str(part);
        key.write_key(&mut name);
        name
    }

    fn value_key<Q: WriteKey + ?Sized>(&self, key: &Q) -> String {
        self.redis_key(VALUE_PART, key)
    }

    fn lease_key<Q: WriteKey + ?Sized>(&self, key: &Q) -> String {
        self.redis_key("l:", key)
    }

    /// The prefix's generation: bumped by every `invalidate_all`, so that a load whose lease
    /// is older cannot write (see `COMMIT`). Outside `invalidate_all`'s `[vl]:*` pattern.
    fn generation_key(&self) -> String {
        format!("{}gen", self.prefix)
    }

    /// A backplane message: kind (an ASCII letter), this cache's origin, the key.
    pub(crate) fn message<Q: WriteKey + ?Sized>(&self, kind: u8, key: &Q) -> Vec<u8> {
        let mut message = String::with_capacity(1 + self.origin.len() + 16);
        message.push(char::from(kind));
        message.push_str(&self.origin);
        key.write_key(&mut message);
        message.into_bytes()
    }

    fn token(&self) -> String {
        let n = self
            .tokens
            .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        format!("{}{n:016x}", self.origin)
    }

    /// The connection, made on first use (and again after a failure, past the backoff, or
    /// once the runtime it was made on has shut down).
    async fn connection(&self) -> Result<ConnectionManager, L2Error> {
        let cell = {
            let cell = self.manager.read().unwrap_or_else(PoisonError::into_inner);
            match cell.get() {
                Some(connected) if !connected.runtime.is_closed() => {
                    return Ok(connected.manager.clone())
                }
                _ => Arc::clone(&cell),
            }
        };
        let cell = if cell.initialized() {
            // Its runtime is gone: a new cell, unless another call made one already.
            let mut current = self.manager.write().unwrap_or_else(PoisonError::into_inner);
            if Arc::ptr_eq(&current, &cell) {
                *current = Arc::default();
            }
            Arc::clone(&current)
        } else {
            cell
        };
        // Boxed: the connect's future (redis-rs's) is about 3 KB, and held inline it would
        // make every operation's future that much larger, moved and allocated with it (an
        // L2 hit's boxed load among them), where the connect happens once.
        Box::pin(self.connect(&cell)).await
    }

    /// `connection`'s connect, once for all callers of `cell`.
    async fn connect(
        &self,
        cell: &tokio::sync::OnceCell<Connected>,
    ) -> Result<ConnectionManager, L2Error> {
        cell.get_or_try_init(|| async {
            let failed_at = *self
                .failed_at
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if failed_at.is_some_and(|at| at.elapsed() < self.config.reconnect_backoff) {
                return Err(L2Error::Unavailable);
            }
            // No response timeout of its own: every operation on it runs within `l2`'s
            // (the same `op_timeout`, started earlier, kept by the watchdog), and a timer
            // per round trip would only cost. A timed-out request does not make redis-rs
            // reconnect either way (not an unrecoverable error). The connect (its
            // handshake included) is bounded here, which also bounds the manager's own
            // reconnects.
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(self.config.op_timeout)
                .set_number_of_retries(1);
            let manager = self
                .client
                .get_connection_manager_with_config(config)
                .await
                .map_err(|error| {
                    *self
                        .failed_at
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
                    L2Error::Redis(error)
                })?;
            Ok(Connected {
                manager,
                runtime: runtime_watch(),
            })
        })
        .await
        .map(|connected| connected.manager.clone())
    }

    /// One Redis operation within the per-operation timeout; failures are counted.
    async fn l2<T, F, Fut>(&self, op: F) -> Result<T, L2Error>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let attempt = async {
            let connection = self.connection().await?;
            op(connection).await.map_err(L2Error::Redis)
        };
        let outcome = match self.deadlines.bound(attempt).await {
            Ok(outcome) => outcome,
            Err(Elapsed) => Err(L2Error::Timeout),
        };
        if outcome.is_err() {
            bump(&self.counters.l2_errors);
        }
        outcome
    }

    /// `GET_OR_LEASE`; `unreadable`: what this load found and could not read (see the script).
    async fn probe(
        &self,
        value_key: &str,
        lease_key: &str,
        token: &str,
        unreadable: (&str, &[u8]),
    ) -> Result<Probe, L2Error> {
        let lease_ms = millis(self.config.lease);
        let generation_key = self.generation_key();
        let generation_key = generation_key.as_str();
        let reply: Vec<Value> = self
            .l2(|mut c| async move {
                self.scripts
                    .get_or_lease
                    .key(value_key)
                    .key(lease_key)
                    .key(generation_key)
                    .arg(token)
                    .arg(lease_ms)
                    .arg(unreadable.0)
                    .arg(unreadable.1)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        match reply.as_slice() {
            [Value::Int(1), Value::BulkString(bytes), Value::Int(pttl), _] => {
                Ok(Probe::Value(bytes.clone(), ttl_of(*pttl)))
            }
            [Value::Int(2), Value::BulkString(generation)] => Ok(Probe::Leased(generation.clone())),
            [Value::Int(0)] => Ok(Probe::Held),
            [Value::Int(3), _] => Ok(Probe::Foreign),
            _ => {
                bump(&self.counters.l2_errors);
                Err(L2Error::Redis(redis::RedisError::from((
                    redis::ErrorKind::TypeError,
                    "unexpected reply from the lease script",
                ))))
            }
        }
    }

    /// A load's first round: a plain `GET` of the value (one round trip, one command, no
    /// script), the cheapest read of a value that is there: an L2 hit costs what a `GET`
    /// does. How long the L1 may keep it comes with it, in its header (`wire`), not from a
    /// `PTTL`. No value is `Absent`, a key of another type (WRONGTYPE: no L2 error) `Foreign`,
    /// as the lease script would say; the lease script's rounds follow either.
    async fn peek(&self, value_key: &str) -> Result<Probe, L2Error> {
        self.l2(|mut c| async move {
            let read: RedisResult<Option<Vec<u8>>> =
                redis::cmd("GET").arg(value_key).query_async(&mut c).await;
            match read {
                Ok(Some(stored)) => Ok(Probe::Value(stored, None)),
                Ok(None) => Ok(Probe::Absent),
                // Counted here, and told to the lease script (`unreadable`), as the script's
                // own `Foreign` is: it takes the lease (or waits) at once, without a round
                // that only says again what this one found.
                Err(error) if error.code() == Some("WRONGTYPE") => Ok(Probe::Foreign),
                Err(error) => Err(error),
            }
        })
        .await
    }

    /// The L1's load of `key`: Redis, else the lease and `load`, else a wait. `load` gives
    /// `get_with`'s `Result<V, E>` or `optionally_get_with`'s `Option<V>` (see `Loaded`).
    async fn load<O, Fut>(self: Arc<Self>, key: K, load: Fut) -> O::Tiered
    where
        O: Loaded<V>,
        Fut: Future<Output = O> + Send,
    {
        // The value key, written once (one string, all an L2 hit needs); the key's text, for
        // the lease rounds' names, messages and waiters, is its tail.
        let value_key = self.value_key(&key);
        let mut asking = Asking {
            deadline: after(self.config.max_wait),
            waited: false,
            missed: false,
            unreadable: ("", Vec::new()),
        };
        // A plain read first: all an L2 hit costs. Nothing registered and no lease to guard
        // (it takes none); if it finds no value, the lease rounds follow at once.
        let round = self.answer(&mut asking, self.peek(&value_key).await);
        if let Round::Found(tiered) = round {
            return O::found(tiered);
        }
        // Boxed: the lease rounds and the load make a future several times the size of the
        // plain read's, which an L2 hit (ended above) would otherwise allocate (this future
        // is boxed too, see `get_with`) and move whole, for nothing.
        Box::pin(self.after_peek(key, value_key, asking, round, load)).await
    }

    /// `load` after its plain read found no value it reads (`round`: what that read said):
    /// the lease rounds, then the lead (or a wait on another's), or the loader here.
    async fn after_peek<O, Fut>(
        self: Arc<Self>,
        key: K,
        value_key: String,
        mut asking: Asking,
        round: Round<V>,
        load: Fut,
    ) -> O::Tiered
    where
        O: Loaded<V>,
        Fut: Future<Output = O> + Send,
    {
        let text = &value_key[self.prefix.len() + VALUE_PART.len()..];
        let mut token = String::new(); // made for the lease rounds only
        let next = match round {
            Round::Found(tiered) => return O::found(tiered),
            Round::Failed => Next::Local,
            // No value, or one this cache cannot read (`answer` noted it for the script).
            _ => {
                let lease_key = self.lease_key(text);
                token = self.token();
                self.ask(text, (&value_key, &lease_key), &token, &mut asking)
                    .await
            }
        };
        let (outcome, l1_ttl) = match next {
            Next::Found(tiered) => return O::found(tiered),
            Next::Lead(generation) => {
                Arc::clone(&self)
                    .lead(&key, text.to_owned(), token, generation, load)
                    .await
            }
            Next::Local => {
                // Redis failed (fail-safe), or the wait ran past `max_wait`.
                bump(&self.counters.local_fallbacks);
                (load.await, None)
            }
        };
        outcome.tier(|value| {
            // A value loaded here lives in the L1 as it does in Redis (if it got there): the
            // TTL `lead` gave Redis, the policy asked once per value (it may answer
            // differently from call to call). One whose write was refused lost to a write
            // elsewhere (writes win): its callers have it, but the L1 keeps nothing over
            // that write (`lead` gives zero), whether or not the backplane brings its
            // announcement (it may be off, or resubscribing).
            let ttl = l1_ttl.unwrap_or_else(|| self.l1_ttl_for(self.ttl_for(&key, &value)));
            Tiered { value, ttl }
        })
    }

    /// `load`'s rounds of `GET_OR_LEASE` on `keys` (value, lease), after its plain read found
    /// no value it reads: until Redis has one, this load takes the lease, Redis fails, or the
    /// wait on another's lease runs past `max_wait`. Registered as a waiter on `key`
    /// meanwhile.
    async fn ask(
        self: &Arc<Self>,
        key: &str,
        (value_key, lease_key): (&str, &str),
        token: &str,
        asking: &mut Asking,
    ) -> Next<V> {
        let notify = {
            let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
            let (notify, holders) = waiters.entry(key.to_owned()).or_default();
            *holders += 1;
            Arc::clone(notify)
        };
        let waiting = Waiting {
            inner: self,
            key,
            notify,
        };
        // Every round trip and every wait is bounded in time; the rounds are bounded in
        // number too, in case a clock misbehaves: a poll per `poll_interval`, as many again
        // for wakes by backplane messages.
        let max_rounds = 2
            * (self.config.max_wait.as_millis() / self.config.poll_interval.as_millis().max(1))
            + 2;
        let mut l2_failed = false;
        let mut next = Next::Local;
        // Armed while a `GET_OR_LEASE` is in flight: the script may take the lease, and a
        // load dropped before its answer arrives would otherwise leave that lease to expire
        // (`lease`), holding every other process's waiters up that long. RELEASE checks the
        // token, so releasing a lease the script did not take is harmless.
        let mut probing = LeaseGuard {
            inner: Arc::clone(self),
            key: key.to_owned(),
            token: token.to_owned(),
            armed: false,
        };
        for _ in 0..max_rounds.min(1_000_000) {
            // Registered before the round trip, so an announcement that comes between the
            // round trip and the wait is not missed.
            let notified = waiting.notify.notified();
            let mut notified = core::pin::pin!(notified);
            notified.as_mut().enable();
            probing.armed = true;
            let unreadable = (asking.unreadable.0, asking.unreadable.1.as_slice());
            let probed = self.probe(value_key, lease_key, token, unreadable).await;
            // Answered: a lease it took goes to `lead` (with no await in between), which
            // guards it from then on. Timed out: Redis may still run the script and take the
            // lease for nobody; the guard stays armed and releases it (below).
            probing.armed = probed.as_ref().err().is_some_and(may_have_run);
            match self.answer(asking, probed) {
                Round::Found(tiered) => return Next::Found(tiered),
                Round::Again => {}
                Round::Wait(nap) => {
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep(nap) => {}
                    }
                }
                Round::Lead(generation) => {
                    next = Next::Lead(generation);
                    break;
                }
                Round::TimedOut => break,
                Round::Failed => {
                    l2_failed = true;
                    break;
                }
            }
        }
        // Armed only after a timed-out probe: hand back whatever that probe may take, in the
        // background (RELEASE goes after it on the same connection), while the loader runs.
        drop(probing);
        if matches!(next, Next::Local) && !l2_failed {
            // The wait ran past `max_wait` (or past its number of rounds).
            bump(&self.counters.wait_timeouts);
        }
        drop(waiting);
        next
    }

    /// What a load does with one answer of `GET_OR_LEASE`, or of its first plain read
    /// (`peek`), counted.
    fn answer(&self, asking: &mut Asking, probed: Result<Probe, L2Error>) -> Round<V> {
        match probed {
            Ok(Probe::Value(stored, pttl)) => {
                match wire::unframe(&stored) {
                    Unframed::Live(bytes, left) => {
                        if let Ok(value) = self.codec.decode(bytes) {
                            bump(&self.counters.l2_hits);
                            // The header's time left (the lease script's `PTTL` too, when
                            // it read the value), at most the L1's own.
                            let ttl = match (left, pttl) {
                                (Some(a), Some(b)) => Some(a.min(b)),
                                (a, b) => a.or(b),
                            };
                            let ttl = ttl.map_or(self.config.l1_ttl(), |t| self.l1_ttl_for(t));
                            return Round::Found(Tiered { value, ttl });
                        }
                        bump(&self.counters.decode_errors);
                    }
                    // Past its expiry on this clock (Redis's may differ): gone, as it would
                    // be from Redis soon. Not a decode error.
                    Unframed::Expired => {}
                    Unframed::Malformed => bump(&self.counters.decode_errors),
                }
                // A miss: ask again at once, this value counting as none (the lease, or a
                // wait on whoever replaces it).
                self.miss(asking);
                asking.unreadable = ("bad", stored);
                Round::Again
            }
            // A key of another type where the value belongs: no value this cache can read,
            // so the same as one that does not decode.
            Ok(Probe::Foreign) => {
                bump(&self.counters.decode_errors);
                self.miss(asking);
                asking.unreadable = ("foreign", Vec::new());
                Round::Again
            }
            Ok(Probe::Leased(generation)) => {
                self.miss(asking);
                if asking.waited {
                    bump(&self.counters.takeovers);
                } else {
                    bump(&self.counters.lease_wins);
                }
                Round::Lead(generation)
            }
            // The plain read found no value: a miss (once per load), counted now, since the
            // lease script's round that follows may fail and say nothing. If that round finds
            // a value written meanwhile, the load counts a hit too, as a waiter's does.
            Ok(Probe::Absent) => {
                self.miss(asking);
                Round::Again
            }
            Ok(Probe::Held) => {
                self.miss(asking);
                if !asking.waited {
                    asking.waited = true;
                    bump(&self.counters.lease_waits);
                }
                let now = tokio::time::Instant::now();
                if now >= asking.deadline {
                    return Round::TimedOut;
                }
                Round::Wait(self.config.poll_interval.min(asking.deadline - now))
            }
            Err(_) => Round::Failed,
        }
    }

    /// Counts a load's first miss in `l2_misses`.
    fn miss(&self, asking: &mut Asking) {
        if !core::mem::replace(&mut asking.missed, true) {
            bump(&self.counters.l2_misses);
        }
    }

    /// Runs `load` holding the lease (renewing it), then writes its value, fenced; an error
    /// or a `None` is written nowhere and hands the lease back. With the outcome, the L1
    /// TTL of its value when the TTL policy was asked for the write (so that it is asked
    /// once per value, and the L1 copy never outlives the Redis value): zero if the write
    /// was refused (fenced: the lease went to a write or another load meanwhile). `key` is
    /// the key (for the TTL policy), `text` what it writes.
    async fn lead<O, Fut>(
        self: Arc<Self>,
        key: &K,
        text: String,
        token: String,
        generation: Vec<u8>,
        load: Fut,
    ) -> (O, Option<Duration>)
    where
        O: Loaded<V>,
        Fut: Future<Output = O> + Send,
    {
        let mut guard = LeaseGuard {
            inner: Arc::clone(&self),
            key: text.clone(),
            token: token.clone(),
            armed: true,
        };
        let outcome = self.run_renewing(&text, &token, load).await;
        let mut l1_ttl = None;
        if let Some(value) = outcome.value() {
            match self.codec.encode(value) {
                Ok(bytes) => {
                    let ttl = self.ttl_for(key, value);
                    l1_ttl = Some(self.l1_ttl_for(ttl));
                    if let Ok(written) = self.commit(&text, &token, &generation, bytes, ttl).await {
                        // Written, or refused because the lease is not ours any more:
                        // either way there is nothing left to release.
                        guard.armed = false;
                        if !written {
                            l1_ttl = Some(Duration::ZERO);
                        }
                    }
                }
                Err(_) => bump(&self.counters.encode_errors),
            }
        }
        if guard.armed {
            // A failed load (errors are not cached), one that found nothing (`None`: not
            // cached either), a value that did not encode, or a commit whose outcome is
            // unknown: hand the lease back (announced, 'R') so a waiter can go on.
            guard.armed = false;
            self.release(&text, &token).await;
        }
        (outcome, l1_ttl)
    }

    async fn run_renewing<O, Fut>(&self, key: &str, token: &str, load: Fut) -> O
    where
        Fut: Future<Output = O> + Send,
    {
        let lease_key = self.lease_key(key);
        let lease_ms = millis(self.config.lease);
        let period = self.config.lease / 3;
        let mut load = core::pin::pin!(load);
        let mut next = Some(after(period));
        loop {
            let Some(at) = next else {
                return load.await;
            };
            tokio::select! {
                biased;
                outcome = &mut load => return outcome,
                () = tokio::time::sleep_until(at) => {
                    let lease_key = lease_key.as_str();
                    let renewed: Result<i64, L2Error> = self
                        .l2(|mut c| async move {
                            self.scripts
                                .renew
                                .key(lease_key)
                                .arg(token)
                                .arg(lease_ms)
                                .invoke_async(&mut c)
                                .await
                        })
                        .await;
                    next = match renewed {
                        Ok(1) => {
                            bump(&self.counters.lease_renewals);
                            Some(after(period))
                        }
                        // Gone or someone else's: the write will be refused; stop renewing.
                        Ok(_) => {
                            bump(&self.counters.leases_lost);
                            None
                        }
                        // Try again soon: the lease may still be ours.
                        Err(_) => Some(after(period)),
                    };
                }
            }
        }
    }

    /// The fenced write; `Ok(true)` if written, `Ok(false)` if the lease was not ours.
    async fn commit(
        &self,
        key: &str,
        token: &str,
        generation: &[u8],
        bytes: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool, L2Error> {
        let value_key = self.value_key(key);
        let lease_key = self.lease_key(key);
        let generation_key = self.generation_key();
        let generation_key = generation_key.as_str();
        let ttl_ms = millis(ttl);
        let bytes = wire::frame(&bytes, ttl_ms);
        let message = self.message(b'L', key);
        let (value_key, lease_key, bytes, message) = (&value_key, &lease_key, &bytes, &message);
        let written: i64 = self
            .l2(|mut c| async move {
                self.scripts
                    .commit
                    .key(value_key)
                    .key(lease_key)
                    .key(generation_key)
                    .arg(token)
                    .arg(bytes.as_slice())
                    .arg(ttl_ms)
                    .arg(&self.channel)
                    .arg(message.as_slice())
                    .arg(generation)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        if written == 1 {
            bump(&self.counters.l2_writes);
        } else {
            bump(&self.counters.fenced_writes);
        }
        Ok(written == 1)
    }

    /// `release`, tried again (every `op_timeout`, at most 4 times, and never past the
    /// lease, after which there is nothing left to release) until Redis answers: for the
    /// background releases of `LeaseGuard`, whose first try may come while Redis is still
    /// paused or reconnecting, the very moment that left the lease behind.
    async fn release_in_background(&self, key: &str, token: &str) {
        let until = after(self.config.lease);
        for _ in 0..4 {
            if self.release(key, token).await {
                return;
            }
            let next = after(self.config.op_timeout);
            if next >= until {
                return;
            }
            tokio::time::sleep_until(next).await;
        }
    }

    /// `true` when Redis answered (whether or not the lease was still this token's).
    async fn release(&self, key: &str, token: &str) -> bool {
        let lease_key = self.lease_key(key);
        let message = self.message(b'R', key);
        let (lease_key, message) = (&lease_key, &message);
        let released: Result<i64, L2Error> = self
            .l2(|mut c| async move {
                self.scripts
                    .release
                    .key(lease_key)
                    .arg(token)
                    .arg(&self.channel)
                    .arg(message.as_slice())
                    .invoke_async(&mut c)
                    .await
            })
            .await;
        // A failure is counted; the lease then expires by itself.
        released.is_ok()
    }

    /// `insert` (`Some`) or `invalidate` (`None`) in Redis, announced.
    async fn write<Q: WriteKey + ?Sized>(
        &self,
        key: &Q,
        bytes: Option<Vec<u8>>,
        ttl: Duration,
    ) -> Result<(), L2Error> {
        let value_key = self.value_key(key);
        let lease_key = self.lease_key(key);
        let ttl_ms = millis(ttl);
        let (kind, mode) = if bytes.is_some() {
            (b'S', "set")
        } else {
            (b'I', "del")
        };
        let message = self.message(kind, key);
        let bytes = bytes.map_or_else(Vec::new, |bytes| wire::frame(&bytes, ttl_ms));
        let (value_key, lease_key, bytes, message) = (&value_key, &lease_key, &bytes, &message);
        let _: i64 = self
            .l2(|mut c| async move {
                self.scripts
                    .write
                    .key(value_key)
                    .key(lease_key)
                    .arg(bytes.as_slice())
                    .arg(ttl_ms)
                    .arg(&self.channel)
                    .arg(message.as_slice())
                    .arg(mode)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(())
    }

    /// Deletes the prefix's keys in Redis, then tells the other processes to clear their L1.
    async fn clear_l2(&self) -> Result<(), L2Error> {
        // Only this cache's own keys, `{prefix}v:*` and `{prefix}l:*`: a bare `{prefix}*`
        // also matched every cache whose prefix extends this one (`app:` and `app:users:`).
        let pattern = format!("{}[vl]:*", glob_escape(&self.prefix));
        let pattern = pattern.as_str();
        // First a new generation: a load whose lease predates this call cannot write any
        // more (its COMMIT checks the generation), so no value from before it lands in Redis
        // behind the SCAN, which may have passed over it (or found only its lease).
        let generation_key = self.generation_key();
        let generation_key = generation_key.as_str();
        let _: i64 = self
            .l2(|mut c| async move {
                redis::cmd("INCR")
                    .arg(generation_key)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let mut cursor: u64 = 0;
        // Bounded: SCAN ends in a number of rounds about the number of keys over COUNT; a
        // cap stops a keyspace that grows faster than it is scanned.
        for _ in 0..100_000 {
            let (next, keys): (u64, Vec<Vec<u8>>) = self
                .l2(|mut c| async move {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            if !keys.is_empty() {
                let keys = &keys;
                let _: i64 =
                    self.l2(|mut c| async move {
                        redis::cmd("DEL").arg(keys).query_async(&mut c).await
                    })
                    .await?;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let message = self.message(b'A', "");
        let message = &message;
        let _: i64 = self
            .l2(|mut c| async move {
                redis::cmd("PUBLISH")
                    .arg(&self.channel)
                    .arg(message.as_slice())
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(())
    }

    /// Spawns the backplane again on the caller's runtime if its task ended while the cache
    /// lives on (`backplane_down`: its runtime shut down, or it panicked). Called by every
    /// operation that reads or writes the L1 for a caller (`get_with`, `optionally_get_with`,
    /// `get_if_present`, `insert`, `invalidate`, `invalidate_all`) and by `backplane_ready`;
    /// not by `contains_local`, `invalidate_local` and `stats`, which only look or drop.
    ///
    /// An L1 hit pays one relaxed load of a flag written only when the task ends or is
    /// spawned (no contention) and a branch that is never taken while the backplane lives.
    /// Hits check as well as misses and writes: a process whose reads are all hits (a hot
    /// set) would otherwise never spawn it again, and serve values other processes replaced
    /// until `l1_time_to_live`. Nothing here can make the hit that spawns the task, or
    /// those before its subscription, fresh: the subscription drops the L1 (its values and
    /// its loads in flight) once made, as after any reconnect, since every message sent while
    /// no task listened was missed; from then on the L1 holds only what was read after it.
    #[inline]
    pub(crate) fn keep_backplane(self: &Arc<Self>) {
        // Relaxed: a hint; the compare-exchange in `respawn_backplane` decides.
        if self.backplane_down.load(Ordering::Relaxed) {
            self.respawn_backplane();
        }
    }

    /// `keep_backplane`'s slow path: one caller wins the compare-exchange and spawns the
    /// task, so racing callers spawn one task, not one each. Outside a runtime nothing is
    /// spawned: a later operation inside one does it. If the caller's runtime is shutting
    /// down, tokio drops the new task at once; its guard sets `backplane_down` again, and
    /// the next operation tries again.
    #[cold]
    #[inline(never)]
    fn respawn_backplane(self: &Arc<Self>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // At most one spawn per `RESPAWN_EVERY`: a task that dies as soon as it runs (on a
        // runtime without its timer, where it panics) is not spawned, and does not panic,
        // once per operation. The lock is taken on this slow path only.
        let mut last = self
            .respawned_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|at| at.elapsed() < RESPAWN_EVERY) {
            return;
        }
        // Acquire: pairs with the Release store in `backplane::Running::drop`, so the old
        // task's `subscribed = false` comes before anything the new one sets.
        let won =
            self.backplane_down
                .compare_exchange(true, false, Ordering::Acquire, Ordering::Relaxed);
        if won.is_ok() {
            *last = Some(Instant::now());
            bump(&self.counters.backplane_respawns);
            backplane::spawn(self, &handle);
        }
    }

    /// Wakes this process's loads waiting on `key` (all of them for `None`).
    pub(crate) fn wake(&self, key: Option<&str>) {
        let waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        match key {
            Some(key) => {
                if let Some((notify, _)) = waiters.get(key) {
                    notify.notify_waiters();
                }
            }
            None => waiters.values().for_each(|(n, _)| n.notify_waiters()),
        }
    }

    /// Whether a load of this process is waiting on `key`.
    pub(crate) fn is_waiting(&self, key: &str) -> bool {
        self.waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(key)
    }
}

/// Whether a round trip that failed this way may still have run in Redis: it timed out
/// (ours, or the connection's response timeout) or its connection dropped after sending.
fn may_have_run(error: &L2Error) -> bool {
    match error {
        L2Error::Timeout => true,
        L2Error::Redis(e) => e.is_timeout() || e.is_connection_dropped(),
        L2Error::Unavailable | L2Error::Codec(_) => false,
    }
}

/// `text` with Redis glob characters escaped, for `SCAN MATCH`.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}
