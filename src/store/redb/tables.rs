//! The eight tables as typed redb tables, read through [`Reader`] and written through
//! [`Writer`].

use crate::store::{Key, Range, Reader, StoreError, TableId, Visit, Writer, wrong_key};
use redb::{ReadableTable, ReadableTableMetadata, Table, TableDefinition, WriteTransaction};
use std::ops::Bound;

type ClientKey<'a> = (&'a str, &'a str);
type ClientDef = TableDefinition<'static, ClientKey<'static>, &'static [u8]>;
type NameDef = TableDefinition<'static, &'static str, &'static [u8]>;
const CUSTODIAN: ClientDef = TableDefinition::new("custodian_shares");
const CLIENT: ClientDef = TableDefinition::new("client_shares");
const PAIRS: ClientDef = TableDefinition::new("backup_share_pairs");
const VERSIONS: ClientDef = TableDefinition::new("share_versions");
const TOKENS: NameDef = TableDefinition::new("tokens");
pub(super) const TOKEN_HASHES: TableDefinition<&[u8], &str> = TableDefinition::new("token_hashes");
const META: NameDef = TableDefinition::new("meta");
pub(super) const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

pub(super) fn backend(err: impl Into<redb::Error>) -> StoreError {
    StoreError::Backend(err.into().to_string())
}

fn client_def(table: TableId) -> Result<ClientDef, StoreError> {
    match table {
        TableId::Custodian => Ok(CUSTODIAN),
        TableId::Client => Ok(CLIENT),
        TableId::Pairs => Ok(PAIRS),
        TableId::Versions => Ok(VERSIONS),
        _ => Err(wrong_key(table)),
    }
}

fn name_def(table: TableId) -> Result<NameDef, StoreError> {
    match table {
        TableId::Tokens => Ok(TOKENS),
        TableId::Meta => Ok(META),
        _ => Err(wrong_key(table)),
    }
}

fn expect_table(table: TableId, wanted: TableId) -> Result<(), StoreError> {
    if table == wanted {
        Ok(())
    } else {
        Err(wrong_key(table))
    }
}

fn token_name(value: &[u8]) -> Result<&str, StoreError> {
    std::str::from_utf8(value).map_err(|_| StoreError::Corrupt("token hash"))
}

// ---- reads over any redb table, read-only or inside the write transaction ----

fn get_client(
    t: &impl ReadableTable<ClientKey<'static>, &'static [u8]>,
    client: &str,
    second: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(t.get((client, second))
        .map_err(backend)?
        .map(|v| v.value().to_vec()))
}

fn scan_client(
    t: &impl ReadableTable<ClientKey<'static>, &'static [u8]>,
    table: TableId,
    range: Range<'_>,
    visit: &mut Visit<'_>,
) -> Result<(), StoreError> {
    let (rows, only) = match range {
        Range::Client(client) => (t.range((client, "")..), Some(client)),
        Range::After(None) => (t.range::<ClientKey>(..), None),
        Range::After(Some(Key::Client(c, s))) => (
            t.range::<ClientKey>((Bound::Excluded((c, s)), Bound::Unbounded)),
            None,
        ),
        Range::After(Some(_)) => return Err(wrong_key(table)),
    };
    for item in rows.map_err(backend)? {
        let (key, value) = item.map_err(backend)?;
        let (client, second) = key.value();
        if only.is_some_and(|c| c != client) || !visit(Key::Client(client, second), value.value())?
        {
            break;
        }
    }
    Ok(())
}

fn get_name(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(t.get(name).map_err(backend)?.map(|v| v.value().to_vec()))
}

fn scan_name(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    table: TableId,
    range: Range<'_>,
    visit: &mut Visit<'_>,
) -> Result<(), StoreError> {
    let rows = match range {
        Range::After(None) => t.range::<&str>(..),
        Range::After(Some(Key::Name(n))) => t.range::<&str>((Bound::Excluded(n), Bound::Unbounded)),
        _ => return Err(wrong_key(table)),
    };
    for item in rows.map_err(backend)? {
        let (key, value) = item.map_err(backend)?;
        if !visit(Key::Name(key.value()), value.value())? {
            break;
        }
    }
    Ok(())
}

fn get_hash(
    t: &impl ReadableTable<&'static [u8], &'static str>,
    hash: &[u8],
) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(t.get(hash)
        .map_err(backend)?
        .map(|v| v.value().as_bytes().to_vec()))
}

fn scan_hash(
    t: &impl ReadableTable<&'static [u8], &'static str>,
    range: Range<'_>,
    visit: &mut Visit<'_>,
) -> Result<(), StoreError> {
    let rows = match range {
        Range::After(None) => t.range::<&[u8]>(..),
        Range::After(Some(Key::Bytes(b))) => {
            t.range::<&[u8]>((Bound::Excluded(b), Bound::Unbounded))
        }
        _ => return Err(wrong_key(TableId::TokenHashes)),
    };
    for item in rows.map_err(backend)? {
        let (key, value) = item.map_err(backend)?;
        if !visit(Key::Bytes(key.value()), value.value().as_bytes())? {
            break;
        }
    }
    Ok(())
}

fn get_seq(
    t: &impl ReadableTable<u64, &'static [u8]>,
    seq: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(t.get(seq).map_err(backend)?.map(|v| v.value().to_vec()))
}

fn scan_seq(
    t: &impl ReadableTable<u64, &'static [u8]>,
    range: Range<'_>,
    visit: &mut Visit<'_>,
) -> Result<(), StoreError> {
    let rows = match range {
        Range::After(None) => t.range::<u64>(..),
        Range::After(Some(Key::Seq(s))) => t.range::<u64>((Bound::Excluded(s), Bound::Unbounded)),
        _ => return Err(wrong_key(TableId::Audit)),
    };
    for item in rows.map_err(backend)? {
        let (key, value) = item.map_err(backend)?;
        if !visit(Key::Seq(key.value()), value.value())? {
            break;
        }
    }
    Ok(())
}

/// A read transaction; tables are opened as they are read.
pub(super) struct RedbReader {
    pub(super) txn: redb::ReadTransaction,
}

impl Reader for RedbReader {
    fn get(&self, table: TableId, key: Key<'_>) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = &self.txn;
        match key {
            Key::Client(c, s) => {
                get_client(&txn.open_table(client_def(table)?).map_err(backend)?, c, s)
            }
            Key::Name(n) => get_name(&txn.open_table(name_def(table)?).map_err(backend)?, n),
            Key::Bytes(b) => {
                expect_table(table, TableId::TokenHashes)?;
                get_hash(&txn.open_table(TOKEN_HASHES).map_err(backend)?, b)
            }
            Key::Seq(s) => {
                expect_table(table, TableId::Audit)?;
                get_seq(&txn.open_table(AUDIT).map_err(backend)?, s)
            }
        }
    }

    fn scan(
        &self,
        table: TableId,
        range: Range<'_>,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        let txn = &self.txn;
        match table {
            TableId::Custodian | TableId::Client | TableId::Pairs | TableId::Versions => {
                scan_client(
                    &txn.open_table(client_def(table)?).map_err(backend)?,
                    table,
                    range,
                    visit,
                )
            }
            TableId::Tokens | TableId::Meta => scan_name(
                &txn.open_table(name_def(table)?).map_err(backend)?,
                table,
                range,
                visit,
            ),
            TableId::TokenHashes => scan_hash(
                &txn.open_table(TOKEN_HASHES).map_err(backend)?,
                range,
                visit,
            ),
            TableId::Audit => scan_seq(&txn.open_table(AUDIT).map_err(backend)?, range, visit),
        }
    }

    fn len(&self, table: TableId) -> Result<u64, StoreError> {
        let txn = &self.txn;
        match table {
            TableId::Custodian | TableId::Client | TableId::Pairs | TableId::Versions => {
                txn.open_table(client_def(table)?).map_err(backend)?.len()
            }
            TableId::Tokens | TableId::Meta => {
                txn.open_table(name_def(table)?).map_err(backend)?.len()
            }
            TableId::TokenHashes => txn.open_table(TOKEN_HASHES).map_err(backend)?.len(),
            TableId::Audit => txn.open_table(AUDIT).map_err(backend)?.len(),
        }
        .map_err(backend)
    }
}

/// The tables of a write transaction.
pub(super) struct Tables<'t> {
    custodian: Table<'t, ClientKey<'static>, &'static [u8]>,
    client: Table<'t, ClientKey<'static>, &'static [u8]>,
    pairs: Table<'t, ClientKey<'static>, &'static [u8]>,
    versions: Table<'t, ClientKey<'static>, &'static [u8]>,
    tokens: Table<'t, &'static str, &'static [u8]>,
    token_hashes: Table<'t, &'static [u8], &'static str>,
    meta: Table<'t, &'static str, &'static [u8]>,
    audit: Table<'t, u64, &'static [u8]>,
}

impl<'t> Tables<'t> {
    pub(super) fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            custodian: txn.open_table(CUSTODIAN).map_err(backend)?,
            client: txn.open_table(CLIENT).map_err(backend)?,
            pairs: txn.open_table(PAIRS).map_err(backend)?,
            versions: txn.open_table(VERSIONS).map_err(backend)?,
            tokens: txn.open_table(TOKENS).map_err(backend)?,
            token_hashes: txn.open_table(TOKEN_HASHES).map_err(backend)?,
            meta: txn.open_table(META).map_err(backend)?,
            audit: txn.open_table(AUDIT).map_err(backend)?,
        })
    }

    fn per_client(
        &mut self,
        table: TableId,
    ) -> Result<&mut Table<'t, ClientKey<'static>, &'static [u8]>, StoreError> {
        match table {
            TableId::Custodian => Ok(&mut self.custodian),
            TableId::Client => Ok(&mut self.client),
            TableId::Pairs => Ok(&mut self.pairs),
            TableId::Versions => Ok(&mut self.versions),
            _ => Err(wrong_key(table)),
        }
    }

    fn named(
        &mut self,
        table: TableId,
    ) -> Result<&mut Table<'t, &'static str, &'static [u8]>, StoreError> {
        match table {
            TableId::Tokens => Ok(&mut self.tokens),
            TableId::Meta => Ok(&mut self.meta),
            _ => Err(wrong_key(table)),
        }
    }

    fn per_client_ref(
        &self,
        table: TableId,
    ) -> Result<&Table<'t, ClientKey<'static>, &'static [u8]>, StoreError> {
        match table {
            TableId::Custodian => Ok(&self.custodian),
            TableId::Client => Ok(&self.client),
            TableId::Pairs => Ok(&self.pairs),
            TableId::Versions => Ok(&self.versions),
            _ => Err(wrong_key(table)),
        }
    }

    fn named_ref(
        &self,
        table: TableId,
    ) -> Result<&Table<'t, &'static str, &'static [u8]>, StoreError> {
        match table {
            TableId::Tokens => Ok(&self.tokens),
            TableId::Meta => Ok(&self.meta),
            _ => Err(wrong_key(table)),
        }
    }
}

impl Reader for Tables<'_> {
    fn get(&self, table: TableId, key: Key<'_>) -> Result<Option<Vec<u8>>, StoreError> {
        match key {
            Key::Client(c, s) => get_client(self.per_client_ref(table)?, c, s),
            Key::Name(n) => get_name(self.named_ref(table)?, n),
            Key::Bytes(b) => {
                expect_table(table, TableId::TokenHashes)?;
                get_hash(&self.token_hashes, b)
            }
            Key::Seq(s) => {
                expect_table(table, TableId::Audit)?;
                get_seq(&self.audit, s)
            }
        }
    }

    fn scan(
        &self,
        table: TableId,
        range: Range<'_>,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        match table {
            TableId::Custodian | TableId::Client | TableId::Pairs | TableId::Versions => {
                scan_client(self.per_client_ref(table)?, table, range, visit)
            }
            TableId::Tokens | TableId::Meta => {
                scan_name(self.named_ref(table)?, table, range, visit)
            }
            TableId::TokenHashes => scan_hash(&self.token_hashes, range, visit),
            TableId::Audit => scan_seq(&self.audit, range, visit),
        }
    }

    fn len(&self, table: TableId) -> Result<u64, StoreError> {
        match table {
            TableId::Custodian | TableId::Client | TableId::Pairs | TableId::Versions => {
                self.per_client_ref(table)?.len()
            }
            TableId::Tokens | TableId::Meta => self.named_ref(table)?.len(),
            TableId::TokenHashes => self.token_hashes.len(),
            TableId::Audit => self.audit.len(),
        }
        .map_err(backend)
    }
}

impl Writer for Tables<'_> {
    fn put(&mut self, table: TableId, key: Key<'_>, value: &[u8]) -> Result<(), StoreError> {
        match key {
            Key::Client(c, s) => {
                self.per_client(table)?
                    .insert((c, s), value)
                    .map_err(backend)?;
            }
            Key::Name(n) => {
                self.named(table)?.insert(n, value).map_err(backend)?;
            }
            Key::Bytes(b) => {
                expect_table(table, TableId::TokenHashes)?;
                self.token_hashes
                    .insert(b, token_name(value)?)
                    .map_err(backend)?;
            }
            Key::Seq(s) => {
                expect_table(table, TableId::Audit)?;
                self.audit.insert(s, value).map_err(backend)?;
            }
        }
        Ok(())
    }

    fn delete(&mut self, table: TableId, key: Key<'_>) -> Result<bool, StoreError> {
        Ok(match key {
            Key::Client(c, s) => self
                .per_client(table)?
                .remove((c, s))
                .map_err(backend)?
                .is_some(),
            Key::Name(n) => self.named(table)?.remove(n).map_err(backend)?.is_some(),
            Key::Bytes(b) => {
                expect_table(table, TableId::TokenHashes)?;
                self.token_hashes.remove(b).map_err(backend)?.is_some()
            }
            Key::Seq(s) => {
                expect_table(table, TableId::Audit)?;
                self.audit.remove(s).map_err(backend)?.is_some()
            }
        })
    }
}
