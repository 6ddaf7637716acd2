//! How values cross the wire: a [`Codec`] turns a value into the bytes stored in Redis and back.

use std::fmt;

/// Turns values into the bytes kept in Redis (L2) and back.
///
/// The cache stores them behind a 9-byte header of its own (the value's absolute expiry; see
/// the crate's "Values in Redis"): a codec sees only its own bytes.
///
/// A value that fails to decode (written by another version of the program, or by hand) is
/// treated as a miss, never as a panic: the caller's loader runs and its value replaces the
/// bytes that did not decode. Counted in [`HybridStats::decode_errors`](crate::HybridStats).
///
/// ```
/// use deferred_redis::{Codec, CodecError};
///
/// /// Points as two little-endian `i32`s.
/// struct PointCodec;
/// impl Codec<(i32, i32)> for PointCodec {
///     fn encode(&self, &(x, y): &(i32, i32)) -> Result<Vec<u8>, CodecError> {
///         Ok([x.to_le_bytes(), y.to_le_bytes()].concat())
///     }
///     fn decode(&self, bytes: &[u8]) -> Result<(i32, i32), CodecError> {
///         let field = |at: usize| -> Result<i32, CodecError> {
///             let raw = bytes.get(at..at + 4).ok_or_else(|| CodecError::new("too short"))?;
///             Ok(i32::from_le_bytes(raw.try_into().map_err(|_| CodecError::new("too short"))?))
///         };
///         if bytes.len() != 8 {
///             return Err(CodecError::new("a point is 8 bytes"));
///         }
///         Ok((field(0)?, field(4)?))
///     }
/// }
/// let bytes = PointCodec.encode(&(3, -4)).unwrap();
/// assert_eq!(PointCodec.decode(&bytes).unwrap(), (3, -4));
/// assert!(PointCodec.decode(b"xyz").is_err());
/// ```
pub trait Codec<V>: Send + Sync + 'static {
    /// The bytes to store for `value`. An error here means the value is returned to its
    /// callers and kept in L1 but not written to Redis (counted in `encode_errors`).
    fn encode(&self, value: &V) -> Result<Vec<u8>, CodecError>;

    /// The value these bytes stand for. An error makes the read a miss.
    fn decode(&self, bytes: &[u8]) -> Result<V, CodecError>;
}

/// Why a value could not be encoded or decoded.
///
/// ```
/// let error = deferred_redis::CodecError::new("not UTF-8");
/// assert_eq!(error.to_string(), "codec error: not UTF-8");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodecError {
    message: String,
}

impl CodecError {
    /// An error with this message, for a [`Codec`] of your own.
    ///
    /// ```
    /// use deferred_redis::CodecError;
    /// let error = CodecError::new(format!("{} bytes, at most {}", 9, 8));
    /// assert_eq!(error.to_string(), "codec error: 9 bytes, at most 8");
    /// ```
    pub fn new(message: impl Into<String>) -> Self {
        CodecError {
            message: message.into(),
        }
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "codec error: {}", self.message)
    }
}

impl std::error::Error for CodecError {}

/// Raw bytes, stored as they are.
///
/// ```
/// use deferred_redis::{Codec, Raw};
/// assert_eq!(Raw.encode(&vec![1, 2, 3]).unwrap(), vec![1, 2, 3]);
/// assert_eq!(Raw.decode(&[4, 5]).unwrap(), vec![4, 5]);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Raw;

impl Codec<Vec<u8>> for Raw {
    fn encode(&self, value: &Vec<u8>) -> Result<Vec<u8>, CodecError> {
        Ok(value.clone())
    }

    fn decode(&self, bytes: &[u8]) -> Result<Vec<u8>, CodecError> {
        Ok(bytes.to_vec())
    }
}

/// Strings as their UTF-8 bytes; bytes that are not UTF-8 do not decode.
///
/// ```
/// use deferred_redis::{Codec, Utf8};
/// assert_eq!(Utf8.decode(b"caf\xc3\xa9").unwrap(), "café");
/// assert!(Utf8.decode(&[0xff, 0xfe]).is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Utf8;

impl Codec<String> for Utf8 {
    fn encode(&self, value: &String) -> Result<Vec<u8>, CodecError> {
        Ok(value.as_bytes().to_vec())
    }

    fn decode(&self, bytes: &[u8]) -> Result<String, CodecError> {
        String::from_utf8(bytes.to_vec()).map_err(|_| CodecError::new("the bytes are not UTF-8"))
    }
}

/// Integers as decimal text, as Redis itself writes them (so `INCR` and `redis-cli` read
/// them too); anything else does not decode.
///
/// ```
/// use deferred_redis::{Codec, Decimal};
/// assert_eq!(Codec::<u64>::encode(&Decimal, &42).unwrap(), b"42");
/// assert_eq!(Codec::<i64>::decode(&Decimal, b"-7").unwrap(), -7);
/// assert!(Codec::<u8>::decode(&Decimal, b"300").is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decimal;

macro_rules! decimal {
    ($($int:ty),*) => {$(
        impl Codec<$int> for Decimal {
            fn encode(&self, value: &$int) -> Result<Vec<u8>, CodecError> {
                Ok(value.to_string().into_bytes())
            }

            fn decode(&self, bytes: &[u8]) -> Result<$int, CodecError> {
                core::str::from_utf8(bytes)
                    .ok()
                    .and_then(|text| text.parse().ok())
                    .ok_or_else(|| CodecError::new(concat!("not a decimal ", stringify!($int))))
            }
        }
    )*};
}

decimal!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize);

/// Any serde value in [postcard](https://docs.rs/postcard)'s compact binary format (the
/// `serde` feature). Bytes that are not a valid encoding of `V` do not decode.
///
/// ```
/// use deferred_redis::{Codec, Postcard};
/// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
/// struct User { id: u32, name: String }
/// let user = User { id: 7, name: "Ada".into() };
/// let bytes = Postcard.encode(&user).unwrap();
/// assert_eq!(bytes.len(), 5); // varint id (1 byte), length (1 byte), "Ada"
/// assert_eq!(Codec::<User>::decode(&Postcard, &bytes).unwrap(), user);
/// assert!(Codec::<User>::decode(&Postcard, &[0x80]).is_err());
/// ```
#[cfg(feature = "serde")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Postcard;

#[cfg(feature = "serde")]
impl<V> Codec<V> for Postcard
where
    V: serde::Serialize + serde::de::DeserializeOwned,
{
    fn encode(&self, value: &V) -> Result<Vec<u8>, CodecError> {
        postcard::to_allocvec(value).map_err(|e| CodecError::new(e.to_string()))
    }

    fn decode(&self, bytes: &[u8]) -> Result<V, CodecError> {
        postcard::from_bytes(bytes).map_err(|e| CodecError::new(e.to_string()))
    }
}
