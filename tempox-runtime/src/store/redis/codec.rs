//! Reading the replies of the scripts: records (one hash field per record
//! field, raw bytes for input and output) and the small shapes around them.

use std::str::FromStr;

use crate::record::Blob;
use ::redis::Value;

use crate::error::{StoreError, StoreErrorKind};
use crate::key::Fingerprint;
use crate::record::{Kind, Record, RecordId, Status, Timestamp};

/// A reply that does not have the shape a script promises: a different script
/// answered, or something else wrote the keys.
pub(super) fn unexpected(what: &str, value: &Value) -> StoreError {
    StoreError::new(
        StoreErrorKind::Corrupt,
        format!("unexpected reply from redis to {what}: {value:?}"),
    )
}

/// The items of an array reply.
pub(super) fn array(what: &str, value: Value) -> Result<Vec<Value>, StoreError> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(unexpected(what, &other)),
    }
}

/// The bytes of a string reply.
pub(super) fn bytes(what: &str, value: Value) -> Result<Vec<u8>, StoreError> {
    match value {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Okay => Ok(b"OK".to_vec()),
        other => Err(unexpected(what, &other)),
    }
}

/// A string reply as text.
pub(super) fn text(what: &str, value: Value) -> Result<String, StoreError> {
    let b = bytes(what, value)?;
    String::from_utf8(b).map_err(|e| unexpected(what, &Value::BulkString(e.into_bytes())))
}

/// A non-negative integer reply, as an integer or its decimal text.
pub(super) fn number(what: &str, value: Value) -> Result<u64, StoreError> {
    match value {
        Value::Int(n) => u64::try_from(n).map_err(|_| unexpected(what, &Value::Int(n))),
        other => {
            let s = text(what, other)?;
            s.parse()
                .map_err(|_| unexpected(what, &Value::SimpleString(s)))
        }
    }
}

/// The fields of one record hash, read from `{id, field, value, ...}`.
struct Fields<'a> {
    id: &'a str,
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Fields<'_> {
    fn corrupt(&self, field: &str, problem: impl std::fmt::Display) -> StoreError {
        StoreError::new(
            StoreErrorKind::Corrupt,
            format!(
                "record `{}` in redis is corrupt: field `{field}` {problem}",
                self.id
            ),
        )
    }

    fn take(&mut self, field: &str) -> Option<Vec<u8>> {
        let at = self.pairs.iter().position(|(f, _)| f == field.as_bytes())?;
        Some(self.pairs.swap_remove(at).1)
    }

    fn required(&mut self, field: &str) -> Result<Vec<u8>, StoreError> {
        self.take(field)
            .ok_or_else(|| self.corrupt(field, "is missing"))
    }

    fn text(&mut self, field: &str) -> Result<Option<String>, StoreError> {
        self.take(field)
            .map(|b| String::from_utf8(b).map_err(|_| self.corrupt(field, "is not UTF-8")))
            .transpose()
    }

    fn parse<T>(&mut self, field: &str, what: &str) -> Result<Option<T>, StoreError>
    where
        T: FromStr,
    {
        let Some(s) = self.text(field)? else {
            return Ok(None);
        };
        s.parse()
            .map(Some)
            .map_err(|_| self.corrupt(field, format_args!("holds `{s}`, not {what}")))
    }

    fn parse_required<T: FromStr>(&mut self, field: &str, what: &str) -> Result<T, StoreError> {
        self.parse(field, what)?
            .ok_or_else(|| self.corrupt(field, "is missing"))
    }

    fn time(&mut self, field: &str) -> Result<Option<Timestamp>, StoreError> {
        Ok(self
            .parse::<u64>(field, "milliseconds since the epoch")?
            .map(Timestamp::from_millis))
    }

    fn time_required(&mut self, field: &str) -> Result<Timestamp, StoreError> {
        self.time(field)?
            .ok_or_else(|| self.corrupt(field, "is missing"))
    }
}

/// Decodes a record from a script's `{id, field, value, ...}` (the id taken
/// from the key the hash was read at).
pub(super) fn record(what: &str, value: Value) -> Result<Record, StoreError> {
    let mut items = array(what, value)?.into_iter();
    let id = match items.next() {
        Some(v) => text(what, v)?,
        None => return Err(unexpected(what, &Value::Array(Vec::new()))),
    };
    let mut pairs = Vec::with_capacity(items.len() / 2);
    while let Some(field) = items.next() {
        let field = bytes(what, field)?;
        let Some(v) = items.next() else {
            return Err(unexpected(what, &Value::BulkString(field)));
        };
        pairs.push((field, bytes(what, v)?));
    }
    decode(&id, pairs)
}

/// Decodes the pairs of a record hash read at the key of `id`.
pub(super) fn decode(id: &str, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Record, StoreError> {
    let mut f = Fields { id, pairs };
    let stored = f.text("id")?.ok_or_else(|| f.corrupt("id", "is missing"))?;
    if stored != id {
        return Err(f.corrupt("id", format_args!("holds `{stored}`")));
    }
    let id = RecordId::parse(&stored).map_err(|e| f.corrupt("id", e))?;
    let workflow = match f.text("workflow")? {
        Some(w) => Some(RecordId::parse(&w).map_err(|e| f.corrupt("workflow", e))?),
        None => None,
    };
    Ok(Record {
        id,
        kind: f.parse_required::<Kind>("kind", "a kind")?,
        fingerprint: f.parse_required::<Fingerprint>("fingerprint", "a fingerprint")?,
        input: Blob::from(f.required("input")?),
        output: f.take("output").map(Blob::from),
        error: f.text("error")?,
        status: f.parse_required::<Status>("status", "a status")?,
        token: f.parse_required::<u64>("token", "a token")?,
        lease_until: f.time("lease_until")?,
        attempts: f.parse_required::<u32>("attempts", "an attempt count")?,
        workflow,
        step: f.parse::<u32>("step", "a step number")?,
        created_at: f.time_required("created_at")?,
        updated_at: f.time_required("updated_at")?,
        due_at: f.time("due_at")?,
        expires_at: f.time("expires_at")?,
        note: f.text("note")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(fields: &[(&str, &[u8])]) -> Vec<(Vec<u8>, Vec<u8>)> {
        fields
            .iter()
            .map(|(f, v)| (f.as_bytes().to_vec(), v.to_vec()))
            .collect()
    }

    fn complete() -> Vec<(&'static str, &'static [u8])> {
        vec![
            ("id", b"op/k"),
            ("kind", b"idempotent"),
            ("fingerprint", b"00112233445566778899aabbccddeeff"),
            ("input", &[0, 255]),
            ("status", b"pending"),
            ("token", b"1760000000000000"),
            ("attempts", b"1"),
            ("created_at", b"1760000000000"),
            ("updated_at", b"1760000000000"),
        ]
    }

    #[test]
    fn decodes_a_minimal_record() {
        let r = decode("op/k", pairs(&complete())).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.input.as_ref(), &[0, 255]);
        assert_eq!(
            (r.status, r.token, r.output),
            (Status::Pending, 1_760_000_000_000_000, None)
        );
    }

    #[test]
    fn corrupt_fields_are_named() {
        let mut fields = complete();
        fields[5] = ("token", b"12x");
        let err = decode("op/k", pairs(&fields)).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("record `op/k` in redis is corrupt: field `token` holds `12x`, not a token")
        );
        let mut fields = complete();
        fields.remove(4);
        let err = decode("op/k", pairs(&fields)).err();
        assert!(err.is_some_and(|e| e.kind() == StoreErrorKind::Corrupt
            && e.to_string().contains("field `status` is missing")));
    }
}
