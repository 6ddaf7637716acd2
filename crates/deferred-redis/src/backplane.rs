//! The backplane: one pub/sub subscription per cache that carries the other processes'
//! writes and invalidations to this L1, and wakes this process's loads that wait on a key.
//!
//! A message is `kind ++ origin ++ key`: `kind` one byte (`L` a load wrote the key, `R` a
//! lease was handed back without a value, `S` an insert, `I` an invalidation, `A`
//! invalidate-all), `origin` the sender cache's 16-hex-digit id, `key` the key's text as
//! [`WriteKey`](crate::WriteKey) writes it (empty for `A`), read back with
//! [`RedisKey::read_key`].

use std::{
    pin::Pin,
    sync::{atomic::Ordering, Arc, Weak},
    time::Duration,
};

use futures_core::Stream;
use tokio::{runtime::Handle, sync::watch};

use crate::{hybrid::Inner, stats::bump, Codec, RedisKey};

/// How long the task waits between subscription attempts while Redis is away.
const RETRY: Duration = Duration::from_millis(100);

/// Spawns the backplane task of `inner` on `handle`'s runtime. Its caller makes sure no
/// other task of this cache runs: `build`, or the one caller whose compare-exchange of
/// `backplane_down` won (`Inner::respawn_backplane`).
pub(crate) fn spawn<K, V, E, C>(inner: &Arc<Inner<K, V, E, C>>, handle: &Handle)
where
    K: RedisKey,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    C: Codec<V>,
{
    let running = Running {
        cache: Arc::downgrade(inner),
    };
    handle.spawn(run(running, inner.stop.subscribe()));
}

/// Owned by the backplane task's future, so dropped when the task ends, however it ends.
/// The task ends by itself only once the cache is gone; where the cache lives on, it was
/// dropped with its runtime (tokio drops the futures of a runtime's tasks when the runtime
/// shuts down, wherever they were in their loop) or it panicked. The backplane is then gone
/// while the cache is used elsewhere: this says so (`subscribed` false, `backplane_down`
/// true), and the cache's next operation spawns it again on its caller's runtime
/// (`Inner::keep_backplane`).
struct Running<K, V, E, C> {
    cache: Weak<Inner<K, V, E, C>>,
}

impl<K, V, E, C> Drop for Running<K, V, E, C> {
    fn drop(&mut self) {
        let Some(inner) = self.cache.upgrade() else {
            return; // the cache is gone: nothing to say, nobody to say it to
        };
        // Before `backplane_down`: the task spawned once that is seen sets `subscribed`
        // after this, never before.
        inner.subscribed.send_replace(false);
        // Release: pairs with the Acquire of the compare-exchange in
        // `Inner::respawn_backplane`, which spawns the next task only after seeing this.
        inner.backplane_down.store(true, Ordering::Release);
    }
}

/// The backplane task. It ends when the cache is dropped (`stop`'s sender, the cache's,
/// closes); until then it (re)subscribes after every loss, each attempt bounded by the
/// operation timeout and spaced by `RETRY`. A subscription counts as lost when its
/// connection ends or a PING (every `backplane_ping`) goes unanswered for the operation
/// timeout. Nothing is ever sent on `stop`: only its closing is awaited.
async fn run<K, V, E, C>(running: Running<K, V, E, C>, mut stop: watch::Receiver<()>)
where
    K: RedisKey,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    C: Codec<V>,
{
    let cache = &running.cache;
    loop {
        let Some((client, channel, timeout, ping_every)) = cache.upgrade().map(|c| {
            let config = &c.config;
            let settings = (config.op_timeout, config.backplane_ping);
            (c.client.clone(), c.channel.clone(), settings.0, settings.1)
        }) else {
            return;
        };
        let subscribe = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let subscribed = tokio::select! {
            _ = stop.changed() => return,
            attempt = tokio::time::timeout(timeout, subscribe) => attempt,
        };
        if let Ok(Ok(pubsub)) = subscribed {
            {
                let Some(inner) = cache.upgrade() else { return };
                // Messages sent while this cache was not subscribed are lost: whatever the
                // L1 holds may be stale, so it goes (also on the first subscription, which
                // costs nothing on an empty L1). Loads in flight go too: a load that read
                // Redis before a message this cache missed must keep nothing, and one out
                // of the L1's map stores nothing, whenever it ends (its callers still get
                // its value). The first subscription is no exception: messages sent before
                // it were missed as well. A caller that comes after this purge starts a
                // new load, which finds this process's own lease and waits on it, so the
                // loader still runs once; unless that load holds no lease (it runs its
                // loader here after a failed Redis read, or past `max_wait`): the new load
                // then runs its loader too.
                inner.l1.invalidate_all();
                bump(&inner.counters.backplane_subscriptions);
                inner.subscribed.send_replace(true);
                // Waiting loads may have missed an announcement: let them look again.
                inner.wake(None);
            }
            let (mut sink, mut messages) = pubsub.split();
            let mut ping_at = crate::hybrid::after(ping_every);
            loop {
                let next = core::future::poll_fn(|cx| Pin::new(&mut messages).poll_next(cx));
                let message = tokio::select! {
                    _ = stop.changed() => return,
                    message = next => message,
                    () = tokio::time::sleep_until(ping_at) => {
                        // A connection that hangs without closing (a partition, a paused
                        // server) would otherwise look subscribed forever.
                        let pong = tokio::time::timeout(timeout, sink.ping::<redis::Value>());
                        if !matches!(pong.await, Ok(Ok(_))) {
                            break;
                        }
                        ping_at = crate::hybrid::after(ping_every);
                        continue;
                    }
                };
                let Some(message) = message else { break };
                let Some(inner) = cache.upgrade() else { return };
                receive(&inner, message.get_payload_bytes());
            }
            let Some(inner) = cache.upgrade() else { return };
            inner.subscribed.send_replace(false);
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// Applies one message to this cache.
fn receive<K, V, E, C>(inner: &Inner<K, V, E, C>, payload: &[u8])
where
    K: RedisKey,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    C: Codec<V>,
{
    let origin_len = inner.origin.len();
    let (Some(&kind), Some(origin), Some(key)) = (
        payload.first(),
        payload.get(1..1 + origin_len),
        payload.get(1 + origin_len..),
    ) else {
        return; // not ours: ignore
    };
    let own = origin == inner.origin.as_bytes();
    if kind == b'A' {
        // Names no key: what follows the origin (empty from this crate) is not read.
        if !own {
            inner.l1.invalidate_all();
        }
        inner.wake(None);
    } else {
        let Ok(text) = core::str::from_utf8(key) else {
            return;
        };
        // The key the text names: text that no key of this cache's type writes (another
        // type's cache on this prefix, a hand-made message) is ignored.
        let Some(key) = K::read_key(text) else {
            return;
        };
        if !own {
            match kind {
                // Another process loaded the key: a copy here is older. A load of this
                // process waiting on the key is about to read that value; a load in flight
                // at the key is left alone then, so the load's value is kept. A value there
                // goes all the same: the waiting load is not the key's entry then, but one
                // that a subscription or an invalidation took out of the L1 (it stays
                // registered as long as it waits, stalled callers included), and the value
                // is older.
                b'L' if inner.is_waiting(text) => {
                    inner.l1.invalidate_if(&key, |_| true);
                }
                b'L' => {
                    inner.l1.invalidate(&key);
                }
                b'S' | b'I' => {
                    inner.l1.invalidate(&key);
                }
                _ => {}
            }
        }
        inner.wake(Some(text));
    }
    // Counted last: whoever sees the count sees the message applied (the tests wait on it
    // before their next step).
    if !own {
        bump(&inner.counters.backplane_received);
    }
}
