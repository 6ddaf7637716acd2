//! A value's bytes in Redis: a 9-byte header, then the codec's bytes.
//!
//! The header is one tag byte ([`TAG`]) and the value's absolute expiry as a big-endian `u64`
//! of milliseconds since the Unix epoch, from the writing process's clock (0: no expiry). A
//! reader learns from a plain `GET` how long its L1 may keep the value, without a `PTTL`.
//! Every write of a value (`insert`'s `WRITE`, a load's fenced `COMMIT`) stores this frame.

use std::time::{Duration, SystemTime};

/// The header's first byte (format 1). A value without it (written by hand, or by a build
/// from before the header) is malformed: a miss.
pub(crate) const TAG: u8 = 0xD1;

/// The header's length: the tag and the expiry.
pub(crate) const HEADER_LEN: usize = 9;

/// What a stored value says once its header is read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unframed<'a> {
    /// The codec's bytes and the time the value has left (`None`: no expiry).
    Live(&'a [u8], Option<Duration>),
    /// Its expiry has passed on this clock: treated as gone.
    Expired,
    /// Too short, or not this format: a miss, as a value that does not decode is.
    Malformed,
}

/// Milliseconds since the Unix epoch on this machine's clock (0 before it).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `bytes` framed for Redis, for a value that lives `ttl_ms` from now (as its `PX` says).
pub(crate) fn frame(bytes: &[u8], ttl_ms: u64) -> Vec<u8> {
    // At least 1, so that no real expiry reads as "none".
    let expiry = now_ms().saturating_add(ttl_ms).max(1);
    let mut framed = Vec::with_capacity(HEADER_LEN + bytes.len());
    framed.push(TAG);
    framed.extend_from_slice(&expiry.to_be_bytes());
    framed.extend_from_slice(bytes);
    framed
}

/// Reads a stored value's header against this machine's clock.
pub(crate) fn unframe(stored: &[u8]) -> Unframed<'_> {
    let Some((header, bytes)) = stored.split_at_checked(HEADER_LEN) else {
        return Unframed::Malformed;
    };
    let [TAG, expiry @ ..] = header else {
        return Unframed::Malformed;
    };
    let Ok(expiry) = <[u8; 8]>::try_from(expiry) else {
        return Unframed::Malformed;
    };
    match u64::from_be_bytes(expiry) {
        0 => Unframed::Live(bytes, None),
        expiry => {
            let now = now_ms();
            if expiry <= now {
                Unframed::Expired
            } else {
                Unframed::Live(bytes, Some(Duration::from_millis(expiry - now)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_reads_back_with_its_time_left() {
        let framed = frame(b"hello", 60_000);
        assert_eq!(framed.len(), HEADER_LEN + 5);
        let Unframed::Live(bytes, Some(left)) = unframe(&framed) else {
            panic!("{:?}", unframe(&framed));
        };
        assert_eq!(bytes, b"hello");
        assert!(
            left <= Duration::from_secs(60) && left > Duration::from_secs(50),
            "{left:?}"
        );
    }

    #[test]
    fn no_expiry_and_a_past_one() {
        let mut none = vec![TAG, 0, 0, 0, 0, 0, 0, 0, 0];
        none.extend_from_slice(b"v");
        assert_eq!(unframe(&none), Unframed::Live(b"v", None));
        let mut past = vec![TAG];
        past.extend_from_slice(&1_u64.to_be_bytes());
        assert_eq!(unframe(&past), Unframed::Expired);
        assert_eq!(unframe(&frame(b"", 0)), Unframed::Expired, "already due");
    }

    #[test]
    fn short_or_foreign_headers_are_malformed() {
        for stored in [
            &b""[..],
            &[TAG][..],
            &[TAG, 0, 0, 0, 0, 0, 0, 0][..],
            b"hello world",
        ] {
            assert_eq!(unframe(stored), Unframed::Malformed, "{stored:?}");
        }
        let mut framed = frame(b"x", 1_000);
        framed[0] = b'x';
        assert_eq!(unframe(&framed), Unframed::Malformed);
    }
}
