//! A record's payload: the effects of a batch, encoded as they are made.

use crate::store::{Key, Range, Reader, StoreError, TableId, Visit, Writer};

const PUT: u8 = 1;
const DELETE: u8 = 2;

fn push_str(buf: &mut Vec<u8>, bytes: &[u8]) -> Result<(), StoreError> {
    let len = u16::try_from(bytes.len())
        .map_err(|_| StoreError::Backend("a key part longer than 65535 bytes".into()))?;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(bytes);
    Ok(())
}

fn push_key(buf: &mut Vec<u8>, key: Key<'_>) -> Result<(), StoreError> {
    match key {
        Key::Client(c, s) => {
            push_str(buf, c.as_bytes())?;
            push_str(buf, s.as_bytes())
        }
        Key::Name(n) => push_str(buf, n.as_bytes()),
        Key::Bytes(b) => push_str(buf, b),
        Key::Seq(s) => {
            buf.extend_from_slice(&s.to_le_bytes());
            Ok(())
        }
    }
}

/// Appends a put to a payload.
pub fn encode_put(
    buf: &mut Vec<u8>,
    table: TableId,
    key: Key<'_>,
    value: &[u8],
) -> Result<(), StoreError> {
    if key.kind() != table.key_kind() {
        return Err(crate::store::wrong_key(table));
    }
    let len = u32::try_from(value.len())
        .map_err(|_| StoreError::Backend("a value longer than 4 GiB".into()))?;
    buf.push(PUT);
    buf.push(table as u8);
    push_key(buf, key)?;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(value);
    Ok(())
}

/// Appends a delete to a payload.
pub fn encode_delete(buf: &mut Vec<u8>, table: TableId, key: Key<'_>) -> Result<(), StoreError> {
    if key.kind() != table.key_kind() {
        return Err(crate::store::wrong_key(table));
    }
    buf.push(DELETE);
    buf.push(table as u8);
    push_key(buf, key)
}

/// One decoded effect, borrowing the payload.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect<'a> {
    Put(TableId, Key<'a>, &'a [u8]),
    Delete(TableId, Key<'a>),
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    }
    fn u32(&mut self) -> Option<usize> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut v = [0u8; 8];
        v.copy_from_slice(b);
        Some(u64::from_le_bytes(v))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
    fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }
    fn key(&mut self, table: TableId) -> Option<Key<'a>> {
        Some(match table.key_kind() {
            crate::store::KeyKind::Client => Key::Client(self.str()?, self.str()?),
            crate::store::KeyKind::Name => Key::Name(self.str()?),
            crate::store::KeyKind::Bytes => Key::Bytes(self.bytes()?),
            crate::store::KeyKind::Seq => Key::Seq(self.u64()?),
        })
    }
}

/// Calls `each` with every effect of a payload, in order. A payload that does not decode is
/// corrupt (its CRC matched, so it was written so): an error, never a partial replay.
pub fn decode<'a>(
    payload: &'a [u8],
    each: &mut dyn FnMut(Effect<'a>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let bad = || StoreError::Corrupt("log record");
    let mut c = Cursor(payload);
    while !c.0.is_empty() {
        let op = c.u8().ok_or_else(bad)?;
        let table = c.u8().and_then(TableId::from_u8).ok_or_else(bad)?;
        let key = c.key(table).ok_or_else(bad)?;
        match op {
            PUT => {
                let n = c.u32().ok_or_else(bad)?;
                let value = c.take(n).ok_or_else(bad)?;
                each(Effect::Put(table, key, value))?;
            }
            DELETE => each(Effect::Delete(table, key))?,
            _ => return Err(bad()),
        }
    }
    Ok(())
}

/// A [`Writer`] over another that also encodes every change into a log payload.
pub struct Recorder<'w> {
    pub below: &'w mut dyn Writer,
    pub payload: &'w mut Vec<u8>,
}

impl Reader for Recorder<'_> {
    fn get(&self, table: TableId, key: Key<'_>) -> Result<Option<Vec<u8>>, StoreError> {
        self.below.get(table, key)
    }
    fn scan(
        &self,
        table: TableId,
        range: Range<'_>,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        self.below.scan(table, range, visit)
    }
    fn len(&self, table: TableId) -> Result<u64, StoreError> {
        self.below.len(table)
    }
}

impl Writer for Recorder<'_> {
    fn put(&mut self, table: TableId, key: Key<'_>, value: &[u8]) -> Result<(), StoreError> {
        self.below.put(table, key, value)?;
        encode_put(self.payload, table, key, value)
    }
    fn delete(&mut self, table: TableId, key: Key<'_>) -> Result<bool, StoreError> {
        let existed = self.below.delete(table, key)?;
        if existed {
            encode_delete(self.payload, table, key)?;
        }
        Ok(existed)
    }
}

/// Applies a payload's effects to a writer.
pub fn replay(payload: &[u8], into: &mut dyn Writer) -> Result<(), StoreError> {
    decode(payload, &mut |effect| {
        match effect {
            Effect::Put(t, k, v) => into.put(t, k, v)?,
            Effect::Delete(t, k) => {
                into.delete(t, k)?;
            }
        }
        Ok(())
    })
}
