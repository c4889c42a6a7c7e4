//! Keys as bytes, and the statements that read rows.
//!
//! Every table lives in one PostgreSQL table, `sharevault_records (tbl, k, v)`, keyed by the
//! table's byte ([`TableId`]) and the key encoded so that PostgreSQL's `bytea` order (bytewise)
//! is the store's key order: a per-client key is `client id, 0x00, second part` (client ids
//! never hold a NUL byte: [`crate::validate::client_id`]), a name or a byte string is itself,
//! a sequence number is 8 bytes big-endian.

use super::session::{CallFuture, Session};
use crate::store::{Key, KeyBuf, KeyKind, Range, StoreError, TableId, wrong_key};

/// Encoded keys and their values.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;
/// Called with each encoded key and value of a scan; returns whether to go on.
pub type RawVisit<'v> = dyn FnMut(&[u8], &[u8]) -> Result<bool, StoreError> + 'v;

/// Rows of several tables: (table, encoded key, value).
pub type TableRows = Vec<(u8, Vec<u8>, Vec<u8>)>;

/// Rows read per statement while scanning.
const PAGE: i64 = 1000;

pub fn encode(table: TableId, key: Key<'_>) -> Result<Vec<u8>, StoreError> {
    if key.kind() != table.key_kind() {
        return Err(wrong_key(table));
    }
    Ok(match key {
        Key::Client(client, second) => {
            if client.as_bytes().contains(&0) {
                return Err(StoreError::Backend("a client id holds a NUL byte".into()));
            }
            let mut out = Vec::with_capacity(client.len() + 1 + second.len());
            out.extend_from_slice(client.as_bytes());
            out.push(0);
            out.extend_from_slice(second.as_bytes());
            out
        }
        Key::Name(name) => name.as_bytes().to_vec(),
        Key::Bytes(bytes) => bytes.to_vec(),
        Key::Seq(seq) => seq.to_be_bytes().to_vec(),
    })
}

pub fn decode(table: TableId, bytes: &[u8]) -> Result<KeyBuf, StoreError> {
    let corrupt = || StoreError::Corrupt(table.name());
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| corrupt());
    Ok(match table.key_kind() {
        KeyKind::Client => {
            let at = bytes.iter().position(|b| *b == 0).ok_or_else(corrupt)?;
            KeyBuf::Client(text(&bytes[..at])?, text(&bytes[at + 1..])?)
        }
        KeyKind::Name => KeyBuf::Name(text(bytes)?),
        KeyKind::Bytes => KeyBuf::Bytes(bytes.to_vec()),
        KeyKind::Seq => KeyBuf::Seq(u64::from_be_bytes(bytes.try_into().map_err(|_| corrupt())?)),
    })
}

/// The encoded bounds of a range: from `lower` (inclusive) to `upper` (exclusive, or none).
pub fn bounds(table: TableId, range: &Range<'_>) -> Result<(Vec<u8>, Option<Vec<u8>>), StoreError> {
    Ok(match range {
        Range::Client(client) => {
            if table.key_kind() != KeyKind::Client {
                return Err(wrong_key(table));
            }
            let mut lower = client.as_bytes().to_vec();
            let mut upper = lower.clone();
            lower.push(0);
            upper.push(1);
            (lower, Some(upper))
        }
        Range::After(None) => (Vec::new(), None),
        Range::After(Some(key)) => {
            // The least key above `key` is `key` followed by a zero byte.
            let mut lower = encode(table, *key)?;
            lower.push(0);
            (lower, None)
        }
    })
}

fn tbl(table: TableId) -> i16 {
    i16::from(table as u8)
}

pub fn get(s: &mut Session, table: TableId, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
    let (t, k) = (tbl(table), key.to_vec());
    s.call(move |c| -> CallFuture<'_, Option<Vec<u8>>> {
        Box::pin(async move {
            let stmt = c
                .prepare_cached("SELECT v FROM sharevault_records WHERE tbl = $1 AND k = $2")
                .await?;
            let row = c.query_opt(&stmt, &[&t, &k]).await?;
            row.map(|r| r.try_get::<_, Vec<u8>>(0)).transpose()
        })
    })
}

/// Up to [`PAGE`] rows of `table` from `lower` (inclusive) below `upper`, in key order.
pub fn page(
    s: &mut Session,
    table: TableId,
    lower: &[u8],
    upper: Option<&[u8]>,
) -> Result<Rows, StoreError> {
    let (t, lower, upper) = (tbl(table), lower.to_vec(), upper.map(<[u8]>::to_vec));
    s.call(move |c| -> CallFuture<'_, Rows> {
        Box::pin(async move {
            // Two statements: a bound in the index condition only when there is one (a
            // generic plan of `k < $3 OR $3 IS NULL` would scan to the table's end).
            let rows = match &upper {
                Some(upper) => {
                    let stmt = c
                        .prepare_cached(
                            "SELECT k, v FROM sharevault_records WHERE tbl = $1 AND k >= $2 \
                             AND k < $3 ORDER BY k LIMIT $4",
                        )
                        .await?;
                    c.query(&stmt, &[&t, &lower, upper, &PAGE]).await?
                }
                None => {
                    let stmt = c
                        .prepare_cached(
                            "SELECT k, v FROM sharevault_records WHERE tbl = $1 AND k >= $2 \
                             ORDER BY k LIMIT $3",
                        )
                        .await?;
                    c.query(&stmt, &[&t, &lower, &PAGE]).await?
                }
            };
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect()
        })
    })
}

/// Visits the rows of a range in key order, a page at a time, until `visit` says stop.
pub fn scan(
    s: &mut Session,
    table: TableId,
    range: &Range<'_>,
    visit: &mut RawVisit<'_>,
) -> Result<(), StoreError> {
    let (mut lower, upper) = bounds(table, range)?;
    loop {
        let rows = page(s, table, &lower, upper.as_deref())?;
        let full = rows.len() as i64 == PAGE;
        for (k, v) in &rows {
            if !visit(k, v)? {
                return Ok(());
            }
        }
        match rows.last() {
            Some((last, _)) if full => {
                lower.clone_from(last);
                lower.push(0);
            }
            _ => return Ok(()),
        }
    }
}

/// Every row of `client` in `tables` (per-client tables): (table, encoded key, value).
pub fn client_rows(
    s: &mut Session,
    tables: &[TableId],
    client: &str,
) -> Result<TableRows, StoreError> {
    let Some(first) = tables.first() else {
        return Ok(Vec::new());
    };
    let (lower, upper) = bounds(*first, &Range::Client(client))?;
    let ts: Vec<i16> = tables.iter().map(|t| tbl(*t)).collect();
    s.call(move |c| -> CallFuture<'_, TableRows> {
        Box::pin(async move {
            let stmt = c
                .prepare_cached(
                    "SELECT tbl, k, v FROM sharevault_records WHERE tbl = ANY($1) \
                     AND k >= $2 AND k < $3",
                )
                .await?;
            let rows = c.query(&stmt, &[&ts, &lower, &upper]).await?;
            rows.iter()
                .map(|r| {
                    let t: i16 = r.try_get(0)?;
                    Ok((t as u8, r.try_get(1)?, r.try_get(2)?))
                })
                .collect()
        })
    })
}

/// Every row of `clients` in `tables` (per-client tables), and every row of the meta table,
/// in one statement: (table, encoded key, value).
/// With `member`, whether that daemon's registration is still there is read alongside, in the
/// same round trip (`None` for no registration to check).
pub fn batch_rows(
    s: &mut Session,
    tables: &[TableId],
    clients: &[String],
    member: Option<String>,
) -> Result<(TableRows, bool), StoreError> {
    let ts: Vec<i16> = tables.iter().map(|t| tbl(*t)).collect();
    let mut lowers = Vec::with_capacity(clients.len());
    let mut uppers = Vec::with_capacity(clients.len());
    for client in clients {
        let (lower, upper) = bounds(TableId::Custodian, &Range::Client(client))?;
        lowers.push(lower);
        uppers.push(upper.unwrap_or_default());
    }
    let meta = tbl(TableId::Meta);
    s.call(move |c| -> CallFuture<'_, (TableRows, bool)> {
        Box::pin(async move {
            let registered = async {
                match &member {
                    Some(id) => c
                        .query_opt("SELECT 1 FROM sharevault_daemons WHERE id = $1", &[id])
                        .await
                        .map(|row| row.is_some()),
                    None => Ok(true),
                }
            };
            let found = async {
                let stmt = c
                    .prepare_cached(
                        // A nested loop of index range scans, one per client, whatever the plan
                        // (`OFFSET 0` keeps the subquery from being flattened into a join that a
                        // generic plan would make a scan of the whole table).
                        "SELECT r.tbl, r.k, r.v FROM unnest($2::bytea[], $3::bytea[]) AS b(lo, hi) \
                     CROSS JOIN LATERAL (SELECT s.tbl, s.k, s.v FROM sharevault_records s \
                     WHERE s.tbl = ANY($1) AND s.k >= b.lo AND s.k < b.hi OFFSET 0) r \
                     UNION ALL SELECT tbl, k, v FROM sharevault_records WHERE tbl = $4",
                    )
                    .await?;
                let rows = c.query(&stmt, &[&ts, &lowers, &uppers, &meta]).await?;
                rows.iter()
                    .map(|r| {
                        let t: i16 = r.try_get(0)?;
                        Ok((t as u8, r.try_get(1)?, r.try_get(2)?))
                    })
                    .collect::<Result<TableRows, _>>()
            };
            let (found, registered) = tokio::join!(found, registered);
            Ok((found?, registered?))
        })
    })
}

pub fn count(s: &mut Session, table: TableId) -> Result<u64, StoreError> {
    let t = tbl(table);
    let n = s.call(move |c| -> CallFuture<'_, i64> {
        Box::pin(async move {
            let stmt = c
                .prepare_cached("SELECT count(*) FROM sharevault_records WHERE tbl = $1")
                .await?;
            c.query_one(&stmt, &[&t]).await?.try_get(0)
        })
    })?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Writes `puts` (replacing per key) and removes `deletes`, in the session's transaction.
pub fn apply(
    s: &mut Session,
    puts: Vec<(i16, Vec<u8>, Vec<u8>)>,
    deletes: Vec<(i16, Vec<u8>)>,
) -> Result<(), StoreError> {
    write(s, puts, deletes, false)
}

/// As [`apply`], then commits the session's transaction, in one round trip: the statements
/// are sent one after another without waiting (a failed one makes PostgreSQL refuse the rest
/// and turn the `COMMIT` into a rollback), and the first error is the answer.
pub fn apply_and_commit(
    s: &mut Session,
    puts: Vec<(i16, Vec<u8>, Vec<u8>)>,
    deletes: Vec<(i16, Vec<u8>)>,
) -> Result<(), StoreError> {
    write(s, puts, deletes, true)
}

fn write(
    s: &mut Session,
    puts: Vec<(i16, Vec<u8>, Vec<u8>)>,
    deletes: Vec<(i16, Vec<u8>)>,
    commit: bool,
) -> Result<(), StoreError> {
    if !commit && puts.is_empty() && deletes.is_empty() {
        return Ok(());
    }
    let (pt, pk, pv): (Vec<i16>, Vec<Vec<u8>>, Vec<Vec<u8>>) = {
        let mut out = (Vec::new(), Vec::new(), Vec::new());
        for (t, k, v) in puts {
            out.0.push(t);
            out.1.push(k);
            out.2.push(v);
        }
        out
    };
    let (dt, dk): (Vec<i16>, Vec<Vec<u8>>) = deletes.into_iter().unzip();
    s.call(move |c| -> CallFuture<'_, ()> {
        Box::pin(async move {
            // Prepared first (a round trip only the first time on a connection), so that
            // nothing is sent between the statements below.
            let insert = c
                .prepare_cached(
                    "INSERT INTO sharevault_records (tbl, k, v) \
                     SELECT * FROM unnest($1::smallint[], $2::bytea[], $3::bytea[]) \
                     ON CONFLICT (tbl, k) DO UPDATE SET v = EXCLUDED.v",
                )
                .await?;
            let delete = c
                .prepare_cached(
                    "DELETE FROM sharevault_records WHERE (tbl, k) IN \
                     (SELECT * FROM unnest($1::smallint[], $2::bytea[]))",
                )
                .await?;
            // Each future sends its statement when first polled, and `join!` polls them in
            // this order.
            let (inserted, deleted, committed) = tokio::join!(
                async {
                    if pt.is_empty() {
                        Ok(0)
                    } else {
                        c.execute(&insert, &[&pt, &pk, &pv]).await
                    }
                },
                async {
                    if dt.is_empty() {
                        Ok(0)
                    } else {
                        c.execute(&delete, &[&dt, &dk]).await
                    }
                },
                async {
                    if commit {
                        c.batch_execute("COMMIT").await
                    } else {
                        Ok(())
                    }
                },
            );
            inserted?;
            deleted?;
            committed
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_keys_sort_as_the_store_orders_keys() {
        let keys = [
            Key::Client("a", "B"),
            Key::Client("a", "B-2"),
            Key::Client("a", "Z"),
            Key::Client("ab", ""),
            Key::Client("ab", "X"),
            Key::Client("b", ""),
        ];
        let encoded: Vec<_> = keys
            .iter()
            .map(|k| encode(TableId::Custodian, *k).unwrap())
            .collect();
        assert!(encoded.windows(2).all(|w| w[0] < w[1]));
        for (key, bytes) in keys.iter().zip(&encoded) {
            assert_eq!(decode(TableId::Custodian, bytes).unwrap(), key.to_buf());
        }
        let seqs: Vec<_> = [2u64, 300, 1 << 40]
            .iter()
            .map(|s| encode(TableId::Audit, Key::Seq(*s)).unwrap())
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        assert!(encode(TableId::Audit, Key::Name("x")).is_err());
        assert!(decode(TableId::Audit, b"short").is_err());
    }
}
