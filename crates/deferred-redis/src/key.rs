//! Keys: how a key is written into a Redis key name and a backplane message, and read back.

use core::{fmt::Write as _, hash::Hash};
use std::sync::Arc;

/// How a key (or a borrowed form of one, such as `str` for `String`) is written as text: in
/// the Redis key names (`{prefix}v:{key}`, `{prefix}l:{key}`) and in the backplane's
/// messages (`kind ++ origin ++ key`).
///
/// What is written must be **injective** (two different keys never write the same text,
/// else they share one value in Redis), **a function of the key as `Eq` sees it** (keys
/// that are equal write the same text: a key type whose `Eq` ignores case must not keep
/// the case in its text, else the L1 holds one entry where Redis holds two, and an
/// invalidation of one spelling leaves the other's value in Redis) and **the same in every
/// process** on the prefix (no addresses, no per-process hash seeds). A borrowed form `Q` that a cache's lookups
/// take (`K: Borrow<Q>`) must write exactly what the owned key writes.
///
/// Implemented for `str`, `String`, `Box<str>`, `Arc<str>` (the text as it is: so a
/// `String` key `k` is `{prefix}v:k`) and the integer types (decimal, as `Display` writes
/// it: `-7`, `42`). Implement it with [`RedisKey`] for a key type of your own.
///
/// ```
/// use deferred_redis::WriteKey;
/// let mut name = String::from("users:v:");
/// 42_u64.write_key(&mut name);
/// assert_eq!(name, "users:v:42");
/// "ada".write_key(&mut name);
/// assert_eq!(name, "users:v:42ada");
/// ```
pub trait WriteKey {
    /// Appends this key's text to `out` (which already holds what comes before it).
    fn write_key(&self, out: &mut String);
}

/// A key type of a [`HybridCache`](crate::HybridCache): a key of its L1 (`Hash + Eq + Clone`,
/// `Send + Sync + 'static`), written as text by [`WriteKey`] and read back from a backplane
/// message by [`read_key`](Self::read_key), so that another process's invalidation of a key
/// reaches this process's L1 entry for it.
///
/// `read_key` must give back the key that wrote `text` (`read_key` of what `write_key`
/// wrote is that key), and `None` for text that no key of this type writes: such a message
/// (another type's cache on the same prefix, a hand-made `PUBLISH`) is then ignored. It
/// should refuse text that only reads as a key loosely (the integers refuse `+7` and `007`),
/// though a key read that way would only cost an extra L1 invalidation.
///
/// Implemented for `String`, `Box<str>`, `Arc<str>` and the integer types.
///
/// ```
/// use deferred_redis::{RedisKey, WriteKey};
///
/// /// A tenant's user: `{tenant}/{user}` in Redis.
/// #[derive(Clone, PartialEq, Eq, Hash, Debug)]
/// struct UserKey { tenant: u32, user: u64 }
///
/// impl WriteKey for UserKey {
///     fn write_key(&self, out: &mut String) {
///         self.tenant.write_key(out);
///         out.push('/');
///         self.user.write_key(out);
///     }
/// }
///
/// impl RedisKey for UserKey {
///     fn read_key(text: &str) -> Option<Self> {
///         let (tenant, user) = text.split_once('/')?;
///         Some(UserKey { tenant: u32::read_key(tenant)?, user: u64::read_key(user)? })
///     }
/// }
///
/// let key = UserKey { tenant: 3, user: 42 };
/// let mut text = String::new();
/// key.write_key(&mut text);
/// assert_eq!(text, "3/42");
/// assert_eq!(UserKey::read_key(&text), Some(key));
/// assert_eq!(UserKey::read_key("3/x"), None); // a message about no such key: ignored
/// assert_eq!(u64::read_key("007"), None);
/// assert_eq!(String::read_key("any text"), Some("any text".to_string()));
/// ```
pub trait RedisKey: WriteKey + Hash + Eq + Clone + Send + Sync + 'static {
    /// The key that wrote `text`, or `None` if no key of this type writes it.
    fn read_key(text: &str) -> Option<Self>;
}

impl WriteKey for str {
    #[inline]
    fn write_key(&self, out: &mut String) {
        out.push_str(self);
    }
}

/// The owned text types: written as they are, read back whole (any text is a key).
macro_rules! text_keys {
    ($($t:ty),*) => {$(
        impl WriteKey for $t {
            #[inline]
            fn write_key(&self, out: &mut String) {
                out.push_str(self);
            }
        }

        impl RedisKey for $t {
            #[inline]
            fn read_key(text: &str) -> Option<Self> {
                Some(text.into())
            }
        }
    )*};
}

text_keys!(String, Box<str>, Arc<str>);

/// Whether `text` is an integer as `Display` writes one: no sign but a leading `-`, no
/// leading zero (`0` alone aside), no `-0`.
fn canonical_integer(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !(digits.starts_with('0') && text.len() > 1)
}

macro_rules! integer_keys {
    ($($t:ty),*) => {$(
        impl WriteKey for $t {
            #[inline]
            fn write_key(&self, out: &mut String) {
                // Writing into a `String` cannot fail.
                let _ = write!(out, "{self}");
            }
        }

        impl RedisKey for $t {
            #[inline]
            fn read_key(text: &str) -> Option<Self> {
                if canonical_integer(text) {
                    text.parse().ok()
                } else {
                    None
                }
            }
        }
    )*};
}

integer_keys!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize);

#[cfg(test)]
mod tests {
    use super::*;

    fn text<K: WriteKey + ?Sized>(key: &K) -> String {
        let mut out = String::new();
        key.write_key(&mut out);
        out
    }

    #[test]
    fn integers_round_trip_and_refuse_loose_text() {
        for n in [0_i64, 1, -1, 42, i64::MIN, i64::MAX] {
            assert_eq!(i64::read_key(&text(&n)), Some(n));
        }
        assert_eq!(u64::read_key(&text(&u64::MAX)), Some(u64::MAX));
        for loose in ["", "-", "+1", "01", "-0", "-01", " 1", "1 ", "1.0", "x"] {
            assert_eq!(i64::read_key(loose), None, "{loose:?}");
        }
        assert_eq!(u8::read_key("256"), None);
        assert_eq!(u64::read_key("-1"), None);
    }

    #[test]
    fn text_keys_are_written_as_they_are() {
        assert_eq!(text("a:b"), "a:b");
        assert_eq!(text(&String::from("é")), "é");
        let arc: Arc<str> = "k".into();
        assert_eq!(text(&arc), "k");
        assert_eq!(Arc::<str>::read_key("k"), Some(arc));
        assert_eq!(Box::<str>::read_key("k").as_deref(), Some("k"));
    }
}
