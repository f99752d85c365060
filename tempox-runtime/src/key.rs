//! Idempotency keys and argument fingerprints.
//!
//! A [`Key`] names one logical operation: two calls with the same key are the
//! same operation, and the second one is answered from the record of the
//! first. A key is either written by the user (a key expression, turned into a
//! key by [`Key::from_value`]) or derived from the call's arguments: the
//! default key is the hex form of the arguments' [`Fingerprint`]
//! ([`Fingerprint::to_key`]).
//!
//! A [`Fingerprint`] is a 128-bit digest of a serializable value. It is stored
//! next to every operation record, so that a second call with the same key but
//! different arguments can be detected.
//!
//! # Keys
//!
//! A key is a string that is not empty, is at most [`Key::MAX_LEN`] (512)
//! bytes of UTF-8 long, and contains no control characters
//! ([`char::is_control`]).
//!
//! [`Key::from_value`] turns a key expression into a key:
//!
//! - a value that serializes as a string (`str`, `String`, `char`, a unit
//!   enum variant) gives that string;
//! - an integer of any width gives its decimal form, a `bool` gives `true` or
//!   `false`, a float gives the [`Display`](std::fmt::Display) form of its
//!   value as an `f64` (NaN and infinities are rejected);
//! - a newtype struct gives the key of its inner value, and `Some(v)` gives
//!   the key of `v`; `None` is rejected;
//! - any other value (sequences, tuples, maps, structs, enum variants with
//!   data, byte arrays, unit) gives its compact JSON text, with the keys of
//!   every JSON object sorted.
//!
//! The resulting string must then pass the rules above.
//!
//! # Canonical encoding, version 1
//!
//! A fingerprint is the first 16 bytes of the BLAKE3 digest of the domain
//! prefix `b"tempox.fingerprint.v1\0"` followed by the canonical encoding of
//! the value ([`canonical_bytes`]).
//!
//! **This encoding is a stability contract.** Fingerprints are stored in
//! operation records; changing the encoding changes every stored fingerprint.
//! A new encoding gets a new domain prefix (`tempox.fingerprint.v2`) and never
//! replaces this one silently.
//!
//! The encoding is produced by a serde serializer that reports itself as
//! human-readable (so types with a textual and a binary form use their textual
//! form). Every value is one tag byte followed by a payload. All lengths and
//! counts are `u64`, little-endian.
//!
//! | Tag    | Value | Payload |
//! |--------|-------|---------|
//! | `0x00` | null: `()`, unit structs, `None` | none |
//! | `0x01` | `bool` | one byte, `0` or `1` |
//! | `0x02` | any integer (`i8`..`i128`, `u8`..`u128`) | the value as an `i128`, 16 bytes little-endian |
//! | `0x03` | a `u128` greater than `i128::MAX` | the value as a `u128`, 16 bytes little-endian |
//! | `0x04` | `f32`, `f64` | the value as an `f64`, its `to_bits()` as 8 bytes little-endian |
//! | `0x05` | string | byte length, then the UTF-8 bytes |
//! | `0x06` | bytes | length, then the bytes |
//! | `0x07` | sequence start | the encoded elements, then the end byte `0x08` |
//! | `0x09` | map | number of entries, then the entries |
//!
//! Details:
//!
//! - `Some(v)` encodes exactly as `v`.
//! - `f32` is widened to `f64`; `-0.0` is encoded as `0.0`; every NaN is
//!   encoded with the bits of [`f64::NAN`].
//! - A `char` encodes as a one-character string. A unit enum variant encodes
//!   as the string of its variant name.
//! - Sequences, tuples and tuple structs encode as sequences: `0x07`, each
//!   element, `0x08`.
//! - A map entry is the encoded key immediately followed by the encoded
//!   value. Keys may be any value and follow the same rules. The entries of a
//!   map are written in ascending order of their encoded bytes (bytewise
//!   lexicographic order), so the encoding never depends on iteration order.
//! - A struct encodes as a map whose keys are its field names as strings;
//!   skipped fields are absent. Field declaration order does not matter,
//!   because the entries are sorted.
//! - A newtype struct encodes as its inner value.
//! - A newtype variant encodes as a map with one entry, from the variant name
//!   (a string) to the value. A tuple variant encodes as a map with one entry,
//!   from the variant name to a sequence of its fields. A struct variant
//!   encodes as a map with one entry, from the variant name to the map of its
//!   fields.
//!
//! As a result, two values whose JSON forms are equal up to the order of
//! object keys (structs, maps with string keys, strings, integers, sequences
//! and externally tagged enums) have identical encodings, and an integer has
//! the same encoding whatever its Rust type. The encoding is prefix-free, so
//! `("ab", "c")` and `("a", "bc")`, or `[[1], [2]]` and `[[1, 2]]`, differ.

use std::fmt;
use std::str::FromStr;

use serde::ser::{
    self, Impossible, SerializeMap, SerializeSeq, SerializeStruct, SerializeStructVariant,
    SerializeTuple, SerializeTupleStruct, SerializeTupleVariant,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Runs `f` with an empty buffer reused across calls of this thread (keys,
/// fingerprints and recorded JSON are built on every call). A re-entrant use
/// (a `Serialize` impl that itself calls into tempox) gets a buffer of its own.
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|scratch| {
        let mut own = Vec::new();
        let mut borrowed = scratch.try_borrow_mut();
        let buf = match borrowed.as_deref_mut() {
            Ok(buf) => buf,
            Err(_) => &mut own,
        };
        buf.clear();
        let out = f(buf);
        // Do not keep a large buffer alive for the thread's life.
        if buf.capacity() > 64 * 1024 {
            *buf = Vec::new();
        }
        out
    })
}

/// The domain prefix hashed before the canonical encoding (version 1).
const DOMAIN_V1: &[u8] = b"tempox.fingerprint.v1\0";

const TAG_NULL: u8 = 0x00;
const TAG_BOOL: u8 = 0x01;
const TAG_INT: u8 = 0x02;
const TAG_BIG_UINT: u8 = 0x03;
const TAG_FLOAT: u8 = 0x04;
const TAG_STR: u8 = 0x05;
const TAG_BYTES: u8 = 0x06;
const TAG_SEQ_START: u8 = 0x07;
const TAG_SEQ_END: u8 = 0x08;
const TAG_MAP: u8 = 0x09;

// ---------------------------------------------------------------------------
// Key
// ---------------------------------------------------------------------------

/// A validated idempotency key.
///
/// A key is not empty, is at most [`Key::MAX_LEN`] bytes long and contains no
/// control characters. It serializes as a plain string; deserializing
/// validates it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(String);

impl Key {
    /// The largest length of a key, in bytes of UTF-8.
    pub const MAX_LEN: usize = 512;

    /// Validates `s` as a key.
    ///
    /// # Errors
    ///
    /// [`KeyError::Empty`] if `s` is empty, [`KeyError::TooLong`] if it is
    /// longer than [`Key::MAX_LEN`] bytes, [`KeyError::ControlCharacter`] if it
    /// contains a control character.
    pub fn new(s: impl Into<String>) -> Result<Key, KeyError> {
        let s = s.into();
        if s.is_empty() {
            return Err(KeyError::Empty);
        }
        if s.len() > Self::MAX_LEN {
            return Err(KeyError::TooLong { len: s.len() });
        }
        if let Some((offset, _)) = s.char_indices().find(|(_, c)| c.is_control()) {
            return Err(KeyError::ControlCharacter { offset });
        }
        Ok(Key(s))
    }

    /// Derives a key from a key expression's value.
    ///
    /// Strings give themselves, integers and bools their text, floats the
    /// `Display` form of their `f64` value, newtype structs and `Some` their
    /// inner value's key; `None` is rejected; any other value (sequences,
    /// tuples, maps, structs, enum variants with data, byte arrays, unit)
    /// gives its compact JSON text, with the keys of every JSON object sorted.
    /// The result is then validated by [`Key::new`].
    ///
    /// # Errors
    ///
    /// [`KeyError::Unserializable`] if the value is `None`, a non-finite
    /// float, or cannot be serialized; otherwise the errors of [`Key::new`].
    pub fn from_value<T: Serialize + ?Sized>(v: &T) -> Result<Key, KeyError> {
        let text = match v.serialize(KeyText) {
            Ok(text) => text,
            Err(KeyTextError::Composite) => json_text(v)?,
            Err(KeyTextError::Message(message)) => {
                return Err(KeyError::Unserializable { message });
            }
        };
        Key::new(text)
    }

    /// The key as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for Key {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Key::new(s)
    }
}

impl Serialize for Key {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Key::new(s).map_err(serde::de::Error::custom)
    }
}

/// Why a string or a value is not a valid [`Key`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key is the empty string.
    #[error("the key is empty")]
    Empty,
    /// The key is longer than [`Key::MAX_LEN`] bytes.
    #[error("the key is {len} bytes long; keys are at most {max} bytes", max = Key::MAX_LEN)]
    TooLong {
        /// The length of the key, in bytes.
        len: usize,
    },
    /// The key contains a control character.
    #[error("the key has a control character at byte {offset}")]
    ControlCharacter {
        /// The byte offset of the first control character.
        offset: usize,
    },
    /// The key expression's value cannot be turned into a key.
    #[error("the key value cannot be serialized: {message}")]
    Unserializable {
        /// What went wrong.
        message: String,
    },
}

/// The compact JSON text of `v`, with the keys of every object sorted.
fn json_text<T: Serialize + ?Sized>(v: &T) -> Result<String, KeyError> {
    let mut value = serde_json::to_value(v).map_err(|e| KeyError::Unserializable {
        message: e.to_string(),
    })?;
    // Object keys are already sorted unless some crate in the build enables
    // serde_json's `preserve_order` feature; sort them anyway.
    sort_json_objects(&mut value);
    Ok(value.to_string())
}

fn sort_json_objects(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Array(items) => items.iter_mut().for_each(sort_json_objects),
        serde_json::Value::Object(map) => {
            map.sort_keys();
            map.values_mut().for_each(sort_json_objects);
        }
        _ => {}
    }
}

/// Why [`KeyText`] did not produce a key.
#[derive(Debug)]
enum KeyTextError {
    /// The value is not a scalar: use its JSON text.
    Composite,
    /// The value cannot be a key.
    Message(String),
}

impl fmt::Display for KeyTextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyTextError::Composite => f.write_str("the value is not a scalar"),
            KeyTextError::Message(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for KeyTextError {}

impl ser::Error for KeyTextError {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        KeyTextError::Message(msg.to_string())
    }
}

/// Serializes scalar key values to their text; refuses composites with
/// [`KeyTextError::Composite`].
#[derive(Debug, Clone, Copy)]
struct KeyText;

impl KeyText {
    fn int(v: impl ToString) -> Result<String, KeyTextError> {
        Ok(v.to_string())
    }
}

impl Serializer for KeyText {
    type Ok = String;
    type Error = KeyTextError;
    type SerializeSeq = Impossible<String, KeyTextError>;
    type SerializeTuple = Impossible<String, KeyTextError>;
    type SerializeTupleStruct = Impossible<String, KeyTextError>;
    type SerializeTupleVariant = Impossible<String, KeyTextError>;
    type SerializeMap = Impossible<String, KeyTextError>;
    type SerializeStruct = Impossible<String, KeyTextError>;
    type SerializeStructVariant = Impossible<String, KeyTextError>;

    fn serialize_bool(self, v: bool) -> Result<String, KeyTextError> {
        Ok(v.to_string())
    }

    fn serialize_i8(self, v: i8) -> Result<String, KeyTextError> {
        Self::int(v)
    }

    fn serialize_i16(self, v: i16) -> Result<String, KeyTextError> {
        Self::int(v)
    }

    fn serialize_i32(self, v: i32) -> Result<String, KeyTextError> {
        Self::int(v)
    }

    fn serialize_i64(self, v: i64) -> Result<String, KeyTextError> {
        Self::int(v)
    }

    fn serialize_i128(self, v: i128) -> Result<String, KeyTextError> {
        Self::int(v)
    }

    fn serialize_u8(self, v: u8) -> Result<String, KeyTextError> {
        Self::int(v)
    }

    fn serialize_u16(self, v: u16) -> Result<String, KeyTextError> {
        Self::int(v)
    }

    fn serialize_u32(self, v: u32) -> Result<String, KeyTextError> {
        Self::int(v)
    }

    fn serialize_u64(self, v: u64) -> Result<String, KeyTextError> {
        Self::int(v)
    }

    fn serialize_u128(self, v: u128) -> Result<String, KeyTextError> {
        Self::int(v)
    }

    fn serialize_f32(self, v: f32) -> Result<String, KeyTextError> {
        self.serialize_f64(f64::from(v))
    }

    fn serialize_f64(self, v: f64) -> Result<String, KeyTextError> {
        if v.is_finite() {
            Ok(v.to_string())
        } else {
            Err(KeyTextError::Message(format!(
                "the key is a non-finite number ({v})"
            )))
        }
    }

    fn serialize_char(self, v: char) -> Result<String, KeyTextError> {
        Ok(v.to_string())
    }

    fn serialize_str(self, v: &str) -> Result<String, KeyTextError> {
        Ok(v.to_owned())
    }

    fn serialize_bytes(self, _v: &[u8]) -> Result<String, KeyTextError> {
        Err(KeyTextError::Composite)
    }

    fn serialize_none(self) -> Result<String, KeyTextError> {
        Err(KeyTextError::Message("the key is `None`".to_owned()))
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<String, KeyTextError> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<String, KeyTextError> {
        Err(KeyTextError::Composite)
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<String, KeyTextError> {
        Err(KeyTextError::Composite)
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _variant_index: u32,
        variant: &'static str,
    ) -> Result<String, KeyTextError> {
        Ok(variant.to_owned())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<String, KeyTextError> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _variant_index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<String, KeyTextError> {
        Err(KeyTextError::Composite)
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, KeyTextError> {
        Err(KeyTextError::Composite)
    }

    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, KeyTextError> {
        Err(KeyTextError::Composite)
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, KeyTextError> {
        Err(KeyTextError::Composite)
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _variant_index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, KeyTextError> {
        Err(KeyTextError::Composite)
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, KeyTextError> {
        Err(KeyTextError::Composite)
    }

    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, KeyTextError> {
        Err(KeyTextError::Composite)
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _variant_index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, KeyTextError> {
        Err(KeyTextError::Composite)
    }
}

// ---------------------------------------------------------------------------
// Fingerprint
// ---------------------------------------------------------------------------

/// A 128-bit digest of a serializable value, used to tell whether two calls
/// with the same key had the same arguments.
///
/// It displays and serializes as 32 lowercase hex characters. It is computed
/// over the canonical encoding of the value, see [`canonical_bytes`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 16]);

impl Fingerprint {
    /// Computes the fingerprint of `v`: the first 16 bytes of the BLAKE3
    /// digest of `b"tempox.fingerprint.v1\0"` followed by
    /// [`canonical_bytes(v)`](canonical_bytes).
    ///
    /// # Errors
    ///
    /// [`FingerprintError`] if `v`'s `Serialize` implementation fails.
    pub fn of<T: Serialize + ?Sized>(v: &T) -> Result<Fingerprint, FingerprintError> {
        let digest = with_scratch(|buf| {
            buf.extend_from_slice(DOMAIN_V1);
            v.serialize(Canonical { out: buf })
                .map_err(|CanonicalError(message)| FingerprintError { message })?;
            Ok::<_, FingerprintError>(blake3::hash(buf))
        })?;
        let mut out = [0u8; 16];
        out.copy_from_slice(&digest.as_bytes()[..16]);
        Ok(Fingerprint(out))
    }

    /// The 16 bytes of the fingerprint.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The fingerprint with these 16 bytes.
    pub fn from_bytes(b: [u8; 16]) -> Self {
        Fingerprint(b)
    }

    /// The default key of a call: the fingerprint's 32 lowercase hex
    /// characters.
    pub fn to_key(&self) -> Key {
        // 32 ASCII hex digits: never empty, never too long, no control
        // characters.
        let hex = self.hex();
        Key(String::from_utf8_lossy(&hex).into_owned())
    }

    /// The 32 lowercase hex digits, without going through `fmt` (this is on the
    /// path of every call with a default key).
    pub(crate) fn hex(&self) -> [u8; 32] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (i, b) in self.0.iter().enumerate() {
            out[2 * i] = DIGITS[usize::from(b >> 4)];
            out[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
        }
        out
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.hex();
        f.write_str(std::str::from_utf8(&hex).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = FingerprintParseError;

    /// Parses exactly 32 hex characters (either case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        if bytes.len() != 32 {
            return Err(FingerprintParseError::Length { len: bytes.len() });
        }
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            let hi =
                hex_digit(bytes[2 * i]).ok_or(FingerprintParseError::NotHex { offset: 2 * i })?;
            let lo = hex_digit(bytes[2 * i + 1])
                .ok_or(FingerprintParseError::NotHex { offset: 2 * i + 1 })?;
            *byte = (hi << 4) | lo;
        }
        Ok(Fingerprint(out))
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(FingerprintVisitor)
    }
}

struct FingerprintVisitor;

impl serde::de::Visitor<'_> for FingerprintVisitor {
    type Value = Fingerprint;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a fingerprint of 32 hex characters")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Fingerprint, E> {
        v.parse().map_err(E::custom)
    }
}

/// Why a string is not a [`Fingerprint`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FingerprintParseError {
    /// The string is not 32 bytes long.
    #[error("a fingerprint is 32 hex characters, but this one is {len} bytes long")]
    Length {
        /// The length of the string, in bytes.
        len: usize,
    },
    /// The string has a byte that is not a hex digit.
    #[error("the fingerprint has a non-hex character at byte {offset}")]
    NotHex {
        /// The byte offset of the first non-hex byte.
        offset: usize,
    },
}

/// The arguments of a call cannot be serialized, so they have no fingerprint.
#[derive(Debug, thiserror::Error)]
#[error("the arguments cannot be serialized: {message}")]
pub struct FingerprintError {
    message: String,
}

impl FingerprintError {
    /// The error reported by the value's `Serialize` implementation.
    pub fn message(&self) -> &str {
        &self.message
    }
}

// ---------------------------------------------------------------------------
// Canonical encoding
// ---------------------------------------------------------------------------

/// The canonical encoding (version 1) of `v`, which [`Fingerprint::of`]
/// hashes.
///
/// The encoding is specified in the documentation of the `key` module of
/// `tempox-runtime`; that specification is a stability contract, because
/// fingerprints computed over it are stored in operation records. In short:
/// every value is a tag byte and a payload; integers of every width encode
/// alike; floats are normalised; strings, bytes and maps carry a `u64`
/// little-endian length or count; sequences end with an end byte; structs and
/// maps encode as maps whose entries are sorted by their encoded bytes, so
/// field order and map iteration order do not matter.
///
/// # Errors
///
/// [`FingerprintError`] if `v`'s `Serialize` implementation fails.
pub fn canonical_bytes<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, FingerprintError> {
    let mut out = Vec::with_capacity(128);
    v.serialize(Canonical { out: &mut out })
        .map_err(|CanonicalError(message)| FingerprintError { message })?;
    Ok(out)
}

/// An error from a `Serialize` implementation, or a misuse of the map API.
#[derive(Debug)]
struct CanonicalError(String);

impl fmt::Display for CanonicalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CanonicalError {}

impl ser::Error for CanonicalError {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        CanonicalError(msg.to_string())
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&(len as u64).to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.push(TAG_STR);
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn put_int(out: &mut Vec<u8>, v: i128) {
    out.push(TAG_INT);
    out.extend_from_slice(&v.to_le_bytes());
}

/// Starts a map with one entry whose key is the string `variant`; the caller
/// writes the value.
fn put_variant_header(out: &mut Vec<u8>, variant: &str) {
    out.push(TAG_MAP);
    put_len(out, 1);
    put_str(out, variant);
}

/// The canonical serializer: appends the encoding of one value to `out`.
#[derive(Debug)]
struct Canonical<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Serializer for Canonical<'a> {
    type Ok = ();
    type Error = CanonicalError;
    type SerializeSeq = SeqEncoder<'a>;
    type SerializeTuple = SeqEncoder<'a>;
    type SerializeTupleStruct = SeqEncoder<'a>;
    type SerializeTupleVariant = SeqEncoder<'a>;
    type SerializeMap = MapEncoder<'a>;
    type SerializeStruct = MapEncoder<'a>;
    type SerializeStructVariant = MapEncoder<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), CanonicalError> {
        self.out.push(TAG_BOOL);
        self.out.push(u8::from(v));
        Ok(())
    }

    fn serialize_i8(self, v: i8) -> Result<(), CanonicalError> {
        self.serialize_i128(i128::from(v))
    }

    fn serialize_i16(self, v: i16) -> Result<(), CanonicalError> {
        self.serialize_i128(i128::from(v))
    }

    fn serialize_i32(self, v: i32) -> Result<(), CanonicalError> {
        self.serialize_i128(i128::from(v))
    }

    fn serialize_i64(self, v: i64) -> Result<(), CanonicalError> {
        self.serialize_i128(i128::from(v))
    }

    fn serialize_i128(self, v: i128) -> Result<(), CanonicalError> {
        put_int(self.out, v);
        Ok(())
    }

    fn serialize_u8(self, v: u8) -> Result<(), CanonicalError> {
        self.serialize_i128(i128::from(v))
    }

    fn serialize_u16(self, v: u16) -> Result<(), CanonicalError> {
        self.serialize_i128(i128::from(v))
    }

    fn serialize_u32(self, v: u32) -> Result<(), CanonicalError> {
        self.serialize_i128(i128::from(v))
    }

    fn serialize_u64(self, v: u64) -> Result<(), CanonicalError> {
        self.serialize_i128(i128::from(v))
    }

    fn serialize_u128(self, v: u128) -> Result<(), CanonicalError> {
        match i128::try_from(v) {
            Ok(v) => put_int(self.out, v),
            Err(_) => {
                self.out.push(TAG_BIG_UINT);
                self.out.extend_from_slice(&v.to_le_bytes());
            }
        }
        Ok(())
    }

    fn serialize_f32(self, v: f32) -> Result<(), CanonicalError> {
        self.serialize_f64(f64::from(v))
    }

    fn serialize_f64(self, v: f64) -> Result<(), CanonicalError> {
        let v = if v.is_nan() {
            f64::NAN
        } else if v == 0.0 {
            0.0
        } else {
            v
        };
        self.out.push(TAG_FLOAT);
        self.out.extend_from_slice(&v.to_bits().to_le_bytes());
        Ok(())
    }

    fn serialize_char(self, v: char) -> Result<(), CanonicalError> {
        put_str(self.out, v.encode_utf8(&mut [0u8; 4]));
        Ok(())
    }

    fn serialize_str(self, v: &str) -> Result<(), CanonicalError> {
        put_str(self.out, v);
        Ok(())
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), CanonicalError> {
        self.out.push(TAG_BYTES);
        put_len(self.out, v.len());
        self.out.extend_from_slice(v);
        Ok(())
    }

    fn serialize_none(self) -> Result<(), CanonicalError> {
        self.out.push(TAG_NULL);
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), CanonicalError> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), CanonicalError> {
        self.out.push(TAG_NULL);
        Ok(())
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), CanonicalError> {
        self.out.push(TAG_NULL);
        Ok(())
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _variant_index: u32,
        variant: &'static str,
    ) -> Result<(), CanonicalError> {
        put_str(self.out, variant);
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), CanonicalError> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _variant_index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), CanonicalError> {
        put_variant_header(self.out, variant);
        value.serialize(self)
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<SeqEncoder<'a>, CanonicalError> {
        self.out.push(TAG_SEQ_START);
        Ok(SeqEncoder { out: self.out })
    }

    fn serialize_tuple(self, len: usize) -> Result<SeqEncoder<'a>, CanonicalError> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<SeqEncoder<'a>, CanonicalError> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _variant_index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<SeqEncoder<'a>, CanonicalError> {
        put_variant_header(self.out, variant);
        self.serialize_seq(Some(len))
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<MapEncoder<'a>, CanonicalError> {
        Ok(MapEncoder {
            out: self.out,
            entries: Vec::new(),
            pending_key: None,
        })
    }

    fn serialize_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<MapEncoder<'a>, CanonicalError> {
        self.serialize_map(Some(len))
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _variant_index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<MapEncoder<'a>, CanonicalError> {
        put_variant_header(self.out, variant);
        self.serialize_map(Some(len))
    }
}

/// Encodes the elements of a sequence; `end` writes the end byte.
#[derive(Debug)]
struct SeqEncoder<'a> {
    out: &'a mut Vec<u8>,
}

impl SeqEncoder<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CanonicalError> {
        value.serialize(Canonical { out: self.out })
    }

    fn finish(self) -> Result<(), CanonicalError> {
        self.out.push(TAG_SEQ_END);
        Ok(())
    }
}

impl SerializeSeq for SeqEncoder<'_> {
    type Ok = ();
    type Error = CanonicalError;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Self::Error> {
        self.element(value)
    }

    fn end(self) -> Result<(), Self::Error> {
        self.finish()
    }
}

impl SerializeTuple for SeqEncoder<'_> {
    type Ok = ();
    type Error = CanonicalError;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Self::Error> {
        self.element(value)
    }

    fn end(self) -> Result<(), Self::Error> {
        self.finish()
    }
}

impl SerializeTupleStruct for SeqEncoder<'_> {
    type Ok = ();
    type Error = CanonicalError;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Self::Error> {
        self.element(value)
    }

    fn end(self) -> Result<(), Self::Error> {
        self.finish()
    }
}

impl SerializeTupleVariant for SeqEncoder<'_> {
    type Ok = ();
    type Error = CanonicalError;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Self::Error> {
        self.element(value)
    }

    fn end(self) -> Result<(), Self::Error> {
        self.finish()
    }
}

/// Encodes each entry of a map (or struct) into its own buffer; `end` sorts
/// the entries and appends the map.
#[derive(Debug)]
struct MapEncoder<'a> {
    out: &'a mut Vec<u8>,
    entries: Vec<Vec<u8>>,
    /// An entry whose key has been written but not its value.
    pending_key: Option<Vec<u8>>,
}

impl MapEncoder<'_> {
    fn field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), CanonicalError> {
        let mut entry = Vec::new();
        put_str(&mut entry, key);
        value.serialize(Canonical { out: &mut entry })?;
        self.entries.push(entry);
        Ok(())
    }

    fn finish(mut self) -> Result<(), CanonicalError> {
        if self.pending_key.is_some() {
            return Err(CanonicalError(
                "a map key was serialized without its value".to_owned(),
            ));
        }
        self.entries.sort_unstable();
        self.out.push(TAG_MAP);
        put_len(self.out, self.entries.len());
        for entry in &self.entries {
            self.out.extend_from_slice(entry);
        }
        Ok(())
    }
}

impl SerializeMap for MapEncoder<'_> {
    type Ok = ();
    type Error = CanonicalError;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Self::Error> {
        if self.pending_key.is_some() {
            return Err(CanonicalError(
                "a map key was serialized without its value".to_owned(),
            ));
        }
        let mut entry = Vec::new();
        key.serialize(Canonical { out: &mut entry })?;
        self.pending_key = Some(entry);
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Self::Error> {
        let mut entry = self.pending_key.take().ok_or_else(|| {
            CanonicalError("a map value was serialized without its key".to_owned())
        })?;
        value.serialize(Canonical { out: &mut entry })?;
        self.entries.push(entry);
        Ok(())
    }

    fn end(self) -> Result<(), Self::Error> {
        self.finish()
    }
}

impl SerializeStruct for MapEncoder<'_> {
    type Ok = ();
    type Error = CanonicalError;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Self::Error> {
        self.field(key, value)
    }

    fn end(self) -> Result<(), Self::Error> {
        self.finish()
    }
}

impl SerializeStructVariant for MapEncoder<'_> {
    type Ok = ();
    type Error = CanonicalError;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Self::Error> {
        self.field(key, value)
    }

    fn end(self) -> Result<(), Self::Error> {
        self.finish()
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use serde::{Deserialize, Serialize};

    use super::*;

    fn fp<T: Serialize + ?Sized>(v: &T) -> Fingerprint {
        Fingerprint::of(v).unwrap()
    }

    #[derive(Serialize)]
    struct Order {
        id: String,
        amount: u64,
        tags: Vec<String>,
    }

    fn sample_order() -> Order {
        Order {
            id: "order-7".to_owned(),
            amount: 1999,
            tags: vec!["gift".to_owned(), "express".to_owned()],
        }
    }

    /// These values pin the canonical encoding (version 1). A change to any
    /// of them changes every stored fingerprint and breaks every stored
    /// record: do not update them, add a new encoding with a new domain
    /// prefix instead.
    #[test]
    fn pinned_fingerprints() {
        assert_eq!(
            fp(&(42u64, "order-7")).to_string(),
            "1ae16d0accca2063bd5df87a6f535315"
        );
        assert_eq!(
            fp(&sample_order()).to_string(),
            "da381e736633619e5fdd7936695f843d"
        );
        assert_eq!(fp(&()).to_string(), "8dad8918014fb1c5dfaf0fdd28319b22");
        assert_eq!(
            fp(&Some(5i32)).to_string(),
            "2a74a99c449c0bd687ac98ca0c44639c"
        );
    }

    #[test]
    fn pinned_canonical_bytes() {
        let mut expected = vec![TAG_SEQ_START, TAG_INT];
        expected.extend_from_slice(&42i128.to_le_bytes());
        expected.push(TAG_STR);
        expected.extend_from_slice(&7u64.to_le_bytes());
        expected.extend_from_slice(b"order-7");
        expected.push(TAG_SEQ_END);
        assert_eq!(canonical_bytes(&(42u64, "order-7")).unwrap(), expected);
        assert_eq!(canonical_bytes(&()).unwrap(), vec![TAG_NULL]);
        assert_eq!(canonical_bytes(&Some(5i32)).unwrap(), {
            let mut v = vec![TAG_INT];
            v.extend_from_slice(&5i128.to_le_bytes());
            v
        });
    }

    /// Builds the struct's encoding by hand, and its fingerprint with blake3
    /// directly, independently of the serializer.
    #[test]
    fn struct_encoding_by_hand() {
        fn s(out: &mut Vec<u8>, v: &str) {
            out.push(0x05);
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
            out.extend_from_slice(v.as_bytes());
        }
        // Entries sort by their encoded bytes: the little-endian length
        // prefix of the field name comes first, so "id" (2) < "tags" (4) <
        // "amount" (6).
        let mut expected = vec![0x09];
        expected.extend_from_slice(&3u64.to_le_bytes());
        s(&mut expected, "id");
        s(&mut expected, "order-7");
        s(&mut expected, "tags");
        expected.push(0x07);
        s(&mut expected, "gift");
        s(&mut expected, "express");
        expected.push(0x08);
        s(&mut expected, "amount");
        expected.push(0x02);
        expected.extend_from_slice(&1999i128.to_le_bytes());
        assert_eq!(canonical_bytes(&sample_order()).unwrap(), expected);

        let mut hasher = blake3::Hasher::new();
        hasher.update(b"tempox.fingerprint.v1\0");
        hasher.update(&expected);
        let digest = hasher.finalize();
        assert_eq!(fp(&sample_order()).as_bytes()[..], digest.as_bytes()[..16]);
    }

    #[test]
    fn hash_map_order_does_not_matter() {
        let pairs: Vec<(String, u32)> = (0..50).map(|i| (format!("k{i}"), i * 3)).collect();
        let forward: HashMap<String, u32> = pairs.iter().cloned().collect();
        let mut backward: HashMap<String, u32> = HashMap::with_capacity(7);
        for (k, v) in pairs.iter().rev() {
            backward.insert(k.clone(), *v);
        }
        let tree: BTreeMap<String, u32> = pairs.iter().cloned().collect();
        assert_eq!(fp(&forward), fp(&backward));
        assert_eq!(fp(&forward), fp(&tree));
    }

    #[derive(Serialize)]
    struct Ab {
        a: u32,
        b: String,
    }

    #[derive(Serialize)]
    struct Ba {
        b: String,
        a: u32,
    }

    #[test]
    fn field_order_does_not_matter() {
        let ab = Ab {
            a: 1,
            b: "x".to_owned(),
        };
        let ba = Ba {
            b: "x".to_owned(),
            a: 1,
        };
        assert_eq!(fp(&ab), fp(&ba));
        let json = serde_json::json!({ "b": "x", "a": 1 });
        assert_eq!(fp(&ab), fp(&json));
        let mut map = HashMap::new();
        map.insert("a", serde_json::json!(1));
        map.insert("b", serde_json::json!("x"));
        assert_eq!(fp(&ab), fp(&map));
    }

    #[test]
    fn integers_and_boundaries() {
        assert_eq!(fp(&5u8), fp(&5i64));
        assert_eq!(fp(&5u8), fp(&5u128));
        assert_ne!(fp(&5u32), fp(&"5"));
        assert_ne!(fp(&u128::MAX), fp(&(u128::MAX >> 1)));
        assert_eq!(fp(&Some(17u16)), fp(&17u16));
        assert_eq!(fp(&Some("x")), fp(&"x"));
        assert_ne!(fp(&("ab", "c")), fp(&("a", "bc")));
        assert_ne!(fp(&vec![vec![1], vec![2]]), fp(&vec![vec![1, 2]]));
        assert_ne!(fp(&None::<u8>), fp(&0u8));
    }

    #[test]
    fn floats() {
        assert_eq!(fp(&-0.0f64), fp(&0.0f64));
        assert_eq!(fp(&1.5f32), fp(&1.5f64));
        assert_eq!(fp(&f64::NAN), fp(&-f64::NAN));
        assert_ne!(fp(&1.0f64), fp(&1u8));
    }

    #[derive(Serialize)]
    enum Command {
        Stop,
        Move(i32),
        Jump(i32, i32),
        Go { x: i32, y: i32 },
    }

    #[test]
    fn enums_match_their_json_form() {
        for cmd in [
            Command::Stop,
            Command::Move(3),
            Command::Jump(1, 2),
            Command::Go { x: 4, y: 5 },
        ] {
            let json = serde_json::to_value(&cmd).unwrap();
            assert_eq!(fp(&cmd), fp(&json));
        }
    }

    struct Failing;

    impl Serialize for Failing {
        fn serialize<S: serde::Serializer>(&self, _s: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("boom"))
        }
    }

    #[test]
    fn serialize_errors_are_reported() {
        let err = Fingerprint::of(&(1, Failing)).unwrap_err();
        assert_eq!(err.message(), "boom");
        assert_eq!(err.to_string(), "the arguments cannot be serialized: boom");
        assert!(matches!(
            Key::from_value(&Failing),
            Err(KeyError::Unserializable { message }) if message == "boom"
        ));
    }

    #[test]
    fn key_new_rules() {
        assert_eq!(Key::new(""), Err(KeyError::Empty));
        assert!(Key::new("a".repeat(512)).is_ok());
        assert_eq!(
            Key::new("a".repeat(513)),
            Err(KeyError::TooLong { len: 513 })
        );
        assert_eq!(
            Key::new("ab\ncd"),
            Err(KeyError::ControlCharacter { offset: 2 })
        );
        assert_eq!(
            Key::new("é\u{7f}"),
            Err(KeyError::ControlCharacter { offset: 2 })
        );
        // 'é' is two bytes: 256 of them is 512 bytes, 257 is 514.
        assert!(Key::new("é".repeat(256)).is_ok());
        assert_eq!(
            Key::new("é".repeat(257)),
            Err(KeyError::TooLong { len: 514 })
        );
        assert_eq!(
            KeyError::TooLong { len: 513 }.to_string(),
            "the key is 513 bytes long; keys are at most 512 bytes"
        );
        assert_eq!(
            KeyError::ControlCharacter { offset: 2 }.to_string(),
            "the key has a control character at byte 2"
        );
        let key: Key = "order-7".parse().unwrap();
        assert_eq!(key.as_str(), "order-7");
        assert_eq!(key.to_string(), "order-7");
        assert_eq!(key.as_ref(), "order-7");
    }

    #[derive(Serialize)]
    struct OrderId(String);

    #[derive(Serialize)]
    struct Pair {
        zeta: u8,
        alpha: &'static str,
    }

    #[test]
    fn key_from_value() {
        assert_eq!(Key::from_value("abc").unwrap().as_str(), "abc");
        assert_eq!(Key::from_value(&42u64).unwrap().as_str(), "42");
        assert_eq!(Key::from_value(&-7i32).unwrap().as_str(), "-7");
        assert_eq!(
            Key::from_value(&u128::MAX).unwrap().as_str(),
            u128::MAX.to_string()
        );
        assert_eq!(Key::from_value(&true).unwrap().as_str(), "true");
        assert_eq!(Key::from_value(&1.5f64).unwrap().as_str(), "1.5");
        assert_eq!(Key::from_value(&'x').unwrap().as_str(), "x");
        assert_eq!(
            Key::from_value(&OrderId("o-1".to_owned()))
                .unwrap()
                .as_str(),
            "o-1"
        );
        assert_eq!(Key::from_value(&Some(3u8)).unwrap().as_str(), "3");
        assert_eq!(Key::from_value(&Command::Stop).unwrap().as_str(), "Stop");
        assert_eq!(Key::from_value(&(1, "x")).unwrap().as_str(), r#"[1,"x"]"#);
        assert_eq!(
            Key::from_value(&Pair {
                zeta: 1,
                alpha: "a"
            })
            .unwrap()
            .as_str(),
            r#"{"alpha":"a","zeta":1}"#
        );
        assert_eq!(
            Key::from_value(&Command::Move(2)).unwrap().as_str(),
            r#"{"Move":2}"#
        );
        assert_eq!(
            Key::from_value(&None::<String>),
            Err(KeyError::Unserializable {
                message: "the key is `None`".to_owned()
            })
        );
        assert!(matches!(
            Key::from_value(&f64::NAN),
            Err(KeyError::Unserializable { .. })
        ));
        assert_eq!(
            Key::from_value(&"x".repeat(600)),
            Err(KeyError::TooLong { len: 600 })
        );
        assert_eq!(
            Key::from_value("a\tb"),
            Err(KeyError::ControlCharacter { offset: 1 })
        );
    }

    #[test]
    fn key_serde() {
        let key = Key::new("order-7").unwrap();
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(json, r#""order-7""#);
        assert_eq!(serde_json::from_str::<Key>(&json).unwrap(), key);
        assert!(serde_json::from_str::<Key>(r#""""#).is_err());
        assert!(serde_json::from_str::<Key>(r#""a\nb""#).is_err());
    }

    #[test]
    fn fingerprint_text_forms() {
        let f = fp(&(42u64, "order-7"));
        let text = f.to_string();
        assert_eq!(text.len(), 32);
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(text.parse::<Fingerprint>().unwrap(), f);
        assert_eq!(text.to_uppercase().parse::<Fingerprint>().unwrap(), f);
        assert_eq!(
            text[..31].parse::<Fingerprint>(),
            Err(FingerprintParseError::Length { len: 31 })
        );
        let bad = format!("{}g", &text[..31]);
        assert_eq!(
            bad.parse::<Fingerprint>(),
            Err(FingerprintParseError::NotHex { offset: 31 })
        );
        assert_eq!(format!("{f:?}"), format!("Fingerprint({text})"));
        assert_eq!(f.to_key().as_str(), text);
        assert_eq!(Fingerprint::from_bytes(*f.as_bytes()), f);

        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<Fingerprint>(&json).unwrap(), f);
        assert!(serde_json::from_str::<Fingerprint>(r#""abc""#).is_err());
        assert!(serde_json::from_str::<Fingerprint>("12").is_err());
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Record {
        key: Key,
        fingerprint: Fingerprint,
    }

    #[test]
    fn record_round_trip() {
        let record = Record {
            key: Key::new("k").unwrap(),
            fingerprint: fp(&1u8),
        };
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), record);
    }
}
