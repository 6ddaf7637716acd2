//! What can go wrong between this cache and Redis.

use std::fmt;

use crate::CodecError;

/// Why a write did not reach Redis (and so the other processes). The local cache (L1) was
/// written anyway, except for [`L2Error::Codec`] (nothing is written anywhere); reads never
/// return this: they fall back to the L1 and the loader.
///
/// ```
/// let error = deferred_redis::L2Error::Timeout;
/// assert_eq!(error.to_string(), "Redis did not answer within the per-operation timeout");
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum L2Error {
    /// Redis answered with an error, or the connection failed.
    Redis(redis::RedisError),
    /// No answer within the per-operation timeout (`Builder::op_timeout`): Redis is slow,
    /// paused or unreachable.
    Timeout,
    /// A connection failed a moment ago, and no new one is tried until the reconnect
    /// backoff (`Builder::reconnect_backoff`) has passed, so that a down Redis costs
    /// callers nothing but this check.
    Unavailable,
    /// The value could not be encoded, so there was nothing to write: Redis and this L1
    /// keep what they had, and nothing is announced.
    Codec(CodecError),
}

impl fmt::Display for L2Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            L2Error::Redis(e) => write!(f, "Redis failed: {e}"),
            L2Error::Timeout => {
                f.write_str("Redis did not answer within the per-operation timeout")
            }
            L2Error::Unavailable => f.write_str(
                "Redis is unavailable (a connection failed recently; retried after the backoff)",
            ),
            L2Error::Codec(e) => write!(f, "the value could not be encoded: {e}"),
        }
    }
}

impl std::error::Error for L2Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            L2Error::Redis(e) => Some(e),
            L2Error::Codec(e) => Some(e),
            _ => None,
        }
    }
}

/// Why [`Builder::build`](crate::Builder::build) refused.
///
/// ```
/// // No tokio runtime here: the backplane task has nowhere to run.
/// let client = redis::Client::open("redis://127.0.0.1:1/").unwrap();
/// let built = deferred_redis::HybridCache::<String, String, (), _>::builder(client, "app:", deferred_redis::Utf8).build();
/// assert!(matches!(built, Err(deferred_redis::BuildError::NoRuntime)));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildError {
    /// `build` was called outside a tokio runtime: the cache runs its backplane task, and
    /// its Redis connections, on tokio. Call it from inside one.
    NoRuntime,
    /// A setting is out of range; the message names it.
    Invalid(&'static str),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::NoRuntime => f.write_str(
                "HybridCache::build must be called inside a tokio runtime (it spawns the backplane task)",
            ),
            BuildError::Invalid(what) => write!(f, "invalid HybridCache setting: {what}"),
        }
    }
}

impl std::error::Error for BuildError {}
