//! The vault's stored values and their byte layout. Every value starts with a format version byte.
//!
//! - share (custodian or client), written by this version:
//!   `2 | created_at_ms u64 | seq u64 | pair_id_len u16 | pair_id | covers u16 | (len u16 | id)* | envelope`;
//!   `seq` (never 0) is the vault's write sequence when the share was stored, and `covers`
//!   lists, for a client share, the pairs it completed when it was stored. A share stored by an
//!   earlier version reads as `1 | created_at_ms u64 | pair_id_len u16 | pair_id | envelope`
//!   (sequence 0, covering nothing it names), and is written back in that layout.
//! - pair: `1 | status u8 | created_at_ms u64 | updated_at_ms u64 | backup_method`
//! - token: `1 | role u8 | created_at_ms u64 | sha256(token) [32]`
//!
//! Integers are big-endian; strings are UTF-8.

use crate::auth::Role;
use crate::store::StoreError;
use crate::vault::status::PairStatus;

/// A sealed share or cipherText with the little metadata kept beside it in clear.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedRecord {
    pub created_at_ms: u64,
    /// The vault's write sequence when the share was stored: the order of stores, whatever
    /// the clocks of the daemons that made them. 0 for a share stored by an earlier version
    /// (older than every share with a sequence).
    pub seq: u64,
    /// The backup share pair a custodian share belongs to (none for client shares).
    pub pair_id: Option<String>,
    /// For a client share: the pairs it completed when it was stored (its backup).
    pub covers: Vec<String>,
    /// The envelope from [`crate::crypto::MasterKey::seal`].
    pub envelope: Vec<u8>,
}

impl std::fmt::Debug for SealedRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedRecord")
            .field("created_at_ms", &self.created_at_ms)
            .field("seq", &self.seq)
            .field("pair_id", &self.pair_id)
            .field("covers", &self.covers)
            .field("envelope_len", &self.envelope.len())
            .finish()
    }
}

/// One backup share pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairRecord {
    pub id: String,
    /// The full `METHOD-CURVE` key of its custodian share.
    pub backup_method: String,
    pub status: PairStatus,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

/// An API token, known only by the SHA-256 hash of its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub name: String,
    pub role: Role,
    pub hash: [u8; 32],
    pub created_at_ms: u64,
}

impl std::fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRecord")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

const VERSION: u8 = 1;

struct Bytes<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Bytes<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Result<Self, StoreError> {
        let mut r = Self { bytes, what };
        if r.take(1)?[0] != VERSION {
            return Err(StoreError::Corrupt(what));
        }
        Ok(r)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.bytes.len() < n {
            return Err(StoreError::Corrupt(self.what));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, StoreError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }

    fn str(&mut self, n: usize) -> Result<&'a str, StoreError> {
        std::str::from_utf8(self.take(n)?).map_err(|_| StoreError::Corrupt(self.what))
    }

    fn rest(self) -> &'a [u8] {
        self.bytes
    }
}

/// The layout of share records that carry a write sequence.
const RECORD_V2: u8 = 2;

impl SealedRecord {
    /// Whether this share was stored at or after `other`: by write sequence, which orders
    /// commits whatever the daemons' clocks; between two shares stored by an earlier version
    /// (both sequence 0), by their clocks.
    pub fn stored_after(&self, other: &SealedRecord) -> bool {
        if self.seq != other.seq {
            return self.seq > other.seq;
        }
        self.created_at_ms >= other.created_at_ms
    }
}

pub fn encode_record(record: &SealedRecord) -> Vec<u8> {
    let pair = record.pair_id.as_deref().unwrap_or("");
    let covers: usize = record.covers.iter().map(|id| 2 + id.len()).sum();
    let mut out = Vec::with_capacity(21 + pair.len() + covers + record.envelope.len());
    let legacy = record.seq == 0 && record.covers.is_empty();
    out.push(if legacy { VERSION } else { RECORD_V2 });
    out.extend_from_slice(&record.created_at_ms.to_be_bytes());
    if !legacy {
        out.extend_from_slice(&record.seq.to_be_bytes());
    }
    out.extend_from_slice(&(pair.len() as u16).to_be_bytes());
    out.extend_from_slice(pair.as_bytes());
    if !legacy {
        out.extend_from_slice(&(record.covers.len() as u16).to_be_bytes());
        for id in &record.covers {
            out.extend_from_slice(&(id.len() as u16).to_be_bytes());
            out.extend_from_slice(id.as_bytes());
        }
    }
    out.extend_from_slice(&record.envelope);
    out
}

/// The fields of a share record before its envelope.
struct RecordHead<'a> {
    created_at_ms: u64,
    seq: u64,
    pair_id: Option<&'a str>,
    covers: Vec<&'a str>,
}

fn record_head<'a>(bytes: &'a [u8]) -> Result<(RecordHead<'a>, &'a [u8]), StoreError> {
    const BAD: StoreError = StoreError::Corrupt("share record");
    let version = *bytes.first().ok_or(BAD)?;
    let mut r = Bytes {
        bytes: &bytes[1..],
        what: "share record",
    };
    let v2 = match version {
        VERSION => false,
        RECORD_V2 => true,
        _ => return Err(BAD),
    };
    let created_at_ms = r.u64()?;
    let seq = if v2 { r.u64()? } else { 0 };
    let pair_len = usize::from(r.u16()?);
    let pair = r.str(pair_len)?;
    let mut covers = Vec::new();
    if v2 {
        for _ in 0..r.u16()? {
            let len = usize::from(r.u16()?);
            let id = r.str(len)?;
            if id.is_empty() {
                return Err(BAD);
            }
            covers.push(id);
        }
        // A record with neither is written in the first layout: one encoding per record.
        if seq == 0 && covers.is_empty() {
            return Err(BAD);
        }
    }
    let head = RecordHead {
        created_at_ms,
        seq,
        pair_id: (!pair.is_empty()).then_some(pair),
        covers,
    };
    Ok((head, r.rest()))
}

pub fn decode_record(bytes: &[u8]) -> Result<SealedRecord, StoreError> {
    let (head, envelope) = record_head(bytes)?;
    Ok(SealedRecord {
        created_at_ms: head.created_at_ms,
        seq: head.seq,
        pair_id: head.pair_id.map(str::to_owned),
        covers: head.covers.into_iter().map(str::to_owned).collect(),
        envelope: envelope.to_vec(),
    })
}

/// The pair id of an encoded share record, without copying its envelope.
pub fn record_pair_id(bytes: &[u8]) -> Result<Option<&str>, StoreError> {
    Ok(record_head(bytes)?.0.pair_id)
}

pub fn encode_pair(pair: &PairRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(18 + pair.backup_method.len());
    out.push(VERSION);
    out.push(pair.status.as_u8());
    out.extend_from_slice(&pair.created_at_ms.to_be_bytes());
    out.extend_from_slice(&pair.updated_at_ms.to_be_bytes());
    out.extend_from_slice(pair.backup_method.as_bytes());
    out
}

pub fn decode_pair(id: &str, bytes: &[u8]) -> Result<PairRecord, StoreError> {
    let mut r = Bytes::new(bytes, "share pair record")?;
    let status = PairStatus::from_u8(r.u8()?).ok_or(StoreError::Corrupt("share pair record"))?;
    let created_at_ms = r.u64()?;
    let updated_at_ms = r.u64()?;
    let rest = r.rest();
    let backup_method = std::str::from_utf8(rest)
        .map_err(|_| StoreError::Corrupt("share pair record"))?
        .to_owned();
    Ok(PairRecord {
        id: id.to_owned(),
        backup_method,
        status,
        created_at_ms,
        updated_at_ms,
    })
}

pub fn encode_token(role: Role, created_at_ms: u64, hash: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(42);
    out.push(VERSION);
    out.push(role.as_u8());
    out.extend_from_slice(&created_at_ms.to_be_bytes());
    out.extend_from_slice(hash);
    out
}

pub fn decode_token(name: &str, bytes: &[u8]) -> Result<TokenRecord, StoreError> {
    let mut r = Bytes::new(bytes, "token record")?;
    let role = Role::from_u8(r.u8()?).ok_or(StoreError::Corrupt("token record"))?;
    let created_at_ms = r.u64()?;
    let mut hash = [0u8; 32];
    hash.copy_from_slice(r.take(32)?);
    if !r.rest().is_empty() {
        return Err(StoreError::Corrupt("token record"));
    }
    Ok(TokenRecord {
        name: name.to_owned(),
        role,
        hash,
        created_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_truncation_is_detected() {
        let rec = SealedRecord {
            created_at_ms: 1_700_000_000_123,
            seq: 0,
            pair_id: Some("pair-1".into()),
            covers: Vec::new(),
            envelope: vec![9; 100],
        };
        let bytes = encode_record(&rec);
        assert_eq!(
            bytes[0], 1,
            "a record without a sequence keeps the first layout"
        );
        assert_eq!(decode_record(&bytes).unwrap(), rec);
        assert!(decode_record(&bytes[..5]).is_err());
        let mut bad = bytes.clone();
        bad[0] = 3;
        assert!(decode_record(&bad).is_err());

        let client = SealedRecord {
            seq: 42,
            pair_id: None,
            covers: vec!["p-secp".into(), "p-ed".into()],
            ..rec.clone()
        };
        let bytes = encode_record(&client);
        assert_eq!(bytes[0], 2);
        assert_eq!(decode_record(&bytes).unwrap(), client);
        assert_eq!(record_pair_id(&bytes).unwrap(), None);
        assert!(decode_record(&bytes[..bytes.len() - 100 - 3]).is_err());

        let none = SealedRecord {
            pair_id: None,
            ..rec
        };
        assert_eq!(decode_record(&encode_record(&none)).unwrap(), none);
    }

    #[test]
    fn pairs_and_tokens_round_trip() {
        let pair = PairRecord {
            id: "p".into(),
            backup_method: "PASSWORD-ED25519".into(),
            status: PairStatus::StoredClientBackupShareKey,
            created_at_ms: 1,
            updated_at_ms: 2,
        };
        assert_eq!(decode_pair("p", &encode_pair(&pair)).unwrap(), pair);
        let mut bad = encode_pair(&pair);
        bad[1] = 9;
        assert!(decode_pair("p", &bad).is_err());

        let token = decode_token("ops", &encode_token(Role::Eject, 5, &[3; 32])).unwrap();
        assert_eq!(
            (token.role, token.created_at_ms, token.hash),
            (Role::Eject, 5, [3; 32])
        );
    }
}
