//! The vault's records and how they are read from any store.
//!
//! Values are encoded by [`super::codec`]; keys follow [`TableId::key_kind`].

use super::codec;
pub use super::codec::{PairRecord, SealedRecord, TokenRecord};
use crate::store::{Key, Range, Reader, StoreError, TableId};

/// A record together with the backup method it is stored under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodRecord {
    pub backup_method: String,
    pub record: SealedRecord,
}

/// Numbers of records per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub custodian_shares: u64,
    pub client_shares: u64,
    pub backup_share_pairs: u64,
    pub tokens: u64,
    /// Kept earlier shares and cipherTexts.
    pub versions: u64,
}

/// A sealed share record with its client id and backup method.
pub type SealedRow = (String, String, SealedRecord);

/// Every row of one client in a per-client table, as (second key part, value).
pub fn client_rows(
    r: &(impl Reader + ?Sized),
    table: TableId,
    client_id: &str,
) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let mut rows = Vec::new();
    r.scan(table, Range::Client(client_id), &mut |key, value| {
        if let Key::Client(_, second) = key {
            rows.push((second.to_owned(), value.to_vec()));
        }
        Ok(true)
    })?;
    Ok(rows)
}

/// Every share of a client in `table` (custodian or client), ordered by backup method.
pub fn shares(
    r: &(impl Reader + ?Sized),
    table: TableId,
    client_id: &str,
) -> Result<Vec<MethodRecord>, StoreError> {
    let mut out = Vec::new();
    r.scan(table, Range::Client(client_id), &mut |key, value| {
        if let Key::Client(_, method) = key {
            out.push(MethodRecord {
                backup_method: method.to_owned(),
                record: codec::decode_record(value)?,
            });
        }
        Ok(true)
    })?;
    Ok(out)
}

/// As [`shares`], leaving out the rows that do not decode: answers the shares and the keys of
/// the rows left out.
pub fn shares_skipping_damaged(
    r: &(impl Reader + ?Sized),
    table: TableId,
    client_id: &str,
) -> Result<(Vec<MethodRecord>, Vec<String>), StoreError> {
    let (mut out, mut damaged) = (Vec::new(), Vec::new());
    r.scan(table, Range::Client(client_id), &mut |key, value| {
        if let Key::Client(_, method) = key {
            match codec::decode_record(value) {
                Ok(record) => out.push(MethodRecord {
                    backup_method: method.to_owned(),
                    record,
                }),
                Err(_) => damaged.push(method.to_owned()),
            }
        }
        Ok(true)
    })?;
    Ok((out, damaged))
}

/// One share of a client in `table` (custodian or client).
pub fn share(
    r: &(impl Reader + ?Sized),
    table: TableId,
    client_id: &str,
    backup_method: &str,
) -> Result<Option<SealedRecord>, StoreError> {
    r.get(table, Key::Client(client_id, backup_method))?
        .map(|v| codec::decode_record(&v))
        .transpose()
}

/// Every backup share pair of a client, ordered by id.
pub fn pairs(r: &(impl Reader + ?Sized), client_id: &str) -> Result<Vec<PairRecord>, StoreError> {
    client_rows(r, TableId::Pairs, client_id)?
        .into_iter()
        .map(|(id, bytes)| codec::decode_pair(&id, &bytes))
        .collect()
}

/// One backup share pair.
pub fn pair(
    r: &(impl Reader + ?Sized),
    client_id: &str,
    id: &str,
) -> Result<Option<PairRecord>, StoreError> {
    r.get(TableId::Pairs, Key::Client(client_id, id))?
        .map(|v| codec::decode_pair(id, &v))
        .transpose()
}

/// A token by name.
pub fn token(r: &(impl Reader + ?Sized), name: &str) -> Result<Option<TokenRecord>, StoreError> {
    r.get(TableId::Tokens, Key::Name(name))?
        .map(|v| codec::decode_token(name, &v))
        .transpose()
}

/// The token whose secret hashes to `hash`.
pub fn token_by_hash(
    r: &(impl Reader + ?Sized),
    hash: &[u8; 32],
) -> Result<Option<TokenRecord>, StoreError> {
    let Some(name) = r.get(TableId::TokenHashes, Key::Bytes(hash))? else {
        return Ok(None);
    };
    let name = std::str::from_utf8(&name).map_err(|_| StoreError::Corrupt("token hash"))?;
    // The token found must carry the hash it was found by: a hash entry planted beside
    // another token's record grants nothing.
    match token(r, name)? {
        Some(record) if crate::auth::digests_equal(&record.hash, hash) => Ok(Some(record)),
        Some(_) => Err(StoreError::Corrupt("token hash entry")),
        None => Ok(None),
    }
}

/// Every token, ordered by name.
pub fn tokens(r: &(impl Reader + ?Sized)) -> Result<Vec<TokenRecord>, StoreError> {
    let mut out = Vec::new();
    r.scan(TableId::Tokens, Range::After(None), &mut |key, value| {
        if let Key::Name(name) = key {
            out.push(codec::decode_token(name, value)?);
        }
        Ok(true)
    })?;
    Ok(out)
}

/// The number of records per table.
pub fn counts(r: &(impl Reader + ?Sized)) -> Result<Counts, StoreError> {
    Ok(Counts {
        custodian_shares: r.len(TableId::Custodian)?,
        client_shares: r.len(TableId::Client)?,
        backup_share_pairs: r.len(TableId::Pairs)?,
        tokens: r.len(TableId::Tokens)?,
        versions: r.len(TableId::Versions)?,
    })
}

/// A value of the meta table.
pub fn meta(r: &(impl Reader + ?Sized), name: &str) -> Result<Option<Vec<u8>>, StoreError> {
    r.get(TableId::Meta, Key::Name(name))
}

/// The table name and backup method a sealed record's envelope is bound to, for a row of a
/// share table (custodian, client, or versions: there `second` is the version's key).
pub fn envelope_binding(table: TableId, second: &str) -> Option<(&'static str, &str)> {
    match table {
        TableId::Custodian | TableId::Client => Some((table.name(), second)),
        TableId::Versions => {
            let (kind, method, _) = super::versions::parse_key(second)?;
            Some((kind.table().name(), method))
        }
        _ => None,
    }
}

/// Decodes the sealed record of a row of a share table (custodian, client or versions).
pub fn decode_sealed(
    table: TableId,
    second: &str,
    value: &[u8],
) -> Result<SealedRecord, StoreError> {
    if table == TableId::Versions {
        Ok(super::versions::decode(second, value)?.record)
    } else {
        codec::decode_record(value)
    }
}

/// Up to `limit` sealed records of a share table (custodian, client or versions) after the
/// key `after`, in key order, as (client id, backup method or version key, record).
pub fn sealed_records(
    r: &(impl Reader + ?Sized),
    table: TableId,
    after: Option<(&str, &str)>,
    limit: usize,
) -> Result<Vec<SealedRow>, StoreError> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    let after = after.map(|(c, m)| Key::Client(c, m));
    r.scan(table, Range::After(after), &mut |key, value| {
        if let Key::Client(client, method) = key {
            out.push((
                client.to_owned(),
                method.to_owned(),
                decode_sealed(table, method, value)?,
            ));
        }
        Ok(out.len() < limit)
    })?;
    Ok(out)
}
