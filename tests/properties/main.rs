//! Properties of everything that parses or checks bytes from outside: any input is either
//! refused cleanly (an error that names what was wrong and never echoes the input) or
//! accepted and round-trips exactly; and of recovery, against a model of Portal's side
//! ([`recovery`]).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod audit;
mod envelopes;
mod json_bodies;
mod pair_status;
mod records;
mod recovery;
mod snapshots;
mod validation;

use proptest::prelude::ProptestConfig;
use sharevault::vault::status::PairStatus;

const CASES: u32 = 128;

/// `cases` per property, unless `PROPTEST_CASES` asks for another number.
fn config(cases: u32) -> ProptestConfig {
    let default = ProptestConfig::default();
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() {
        default.cases
    } else {
        cases
    };
    ProptestConfig { cases, ..default }
}

/// Every share-pair status, in the order a pair moves through them.
const STATUSES: [PairStatus; 3] = [
    PairStatus::StoredCustodianBackupShare,
    PairStatus::StoredClientBackupShareKey,
    PairStatus::StoredClientBackupShare,
];
