//! `sharevault restore`: a snapshot into a data dir or a PostgreSQL database, offline (see
//! [`crate::snapshot::restore`]).

use super::CliError;
use super::progress::Progress;
use crate::snapshot::restore::{RestoreOptions, Step, restore_into_postgres, restore_with};

#[derive(clap::Args)]
pub struct RestoreArgs {
    /// The snapshot file.
    #[arg(long, value_name = "FILE")]
    pub from: std::path::PathBuf,
    /// The data dir to restore into.
    #[arg(
        long,
        env = "SHAREVAULT_DATA_DIR",
        default_value = "./sharevault-data",
        value_name = "DIR"
    )]
    pub data_dir: std::path::PathBuf,
    /// The master key the snapshot was sealed with.
    #[arg(long, env = "SHAREVAULT_MASTER_KEY_FILE", value_name = "FILE")]
    pub master_key_file: std::path::PathBuf,
    /// Replace a vault already in the data dir (it is kept beside, renamed).
    #[arg(long)]
    pub replace: bool,
    /// Accept a snapshot written before snapshots were authenticated (format 1): its checksum
    /// proves only that it is not damaged, not that nobody altered it.
    #[arg(long)]
    pub accept_unauthenticated_snapshot: bool,
    /// No progress on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Restore into this PostgreSQL database instead of the data dir.
    #[command(flatten)]
    pub database: super::database::DatabaseArgs,
}

/// Restores, then prints what was restored.
pub fn run(args: RestoreArgs) -> Result<(), CliError> {
    let key = crate::secrets::read_master_key(&args.master_key_file).map_err(CliError::Local)?;
    // The MAC is checked over the whole file (MiB), then every record is imported.
    let mut progress = Progress::new("restore, authenticating", "MiB", args.quiet)?;
    let mut importing = false;
    let options = RestoreOptions {
        replace: args.replace,
        accept_unauthenticated: args.accept_unauthenticated_snapshot,
    };
    let mut step = |step, done, total| {
        if step == Step::Import && !importing {
            importing = true;
            progress.restart("restore", "records");
        }
        progress.set(done, total);
    };
    let (report, into) = match args.database.settings()? {
        Some(settings) => {
            let store = super::database::DatabaseArgs::open(&settings)?;
            let report = restore_into_postgres(&args.from, &store, &key, options, &mut step);
            crate::store::Store::close(&store);
            (report, format!("postgres {}", settings.describe()))
        }
        None => (
            restore_with(&args.from, &args.data_dir, &key, options, &mut step),
            args.data_dir.display().to_string(),
        ),
    };
    progress.finish();
    let report = report.map_err(CliError::Local)?;
    super::print(&format!(
        "restored {} records into {}: {} custodian shares, {} client shares, {} audit events; \
         master key id {}\n",
        report.records,
        into,
        report.custodian_shares,
        report.client_shares,
        report.audit_events,
        key.id()
    ))
}
