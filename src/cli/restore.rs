//! `sharevault restore`: a snapshot into a data dir or a PostgreSQL database, offline (see
//! [`crate::snapshot::restore`]).

use super::CliError;
use super::progress::Progress;
use crate::crypto::MasterKey;
use crate::seal::{Hsm, Pkcs11Settings, SEALED_ROOT_KEY, SealKind, WrapMechanism};
use crate::snapshot::restore::{
    Freshness, RestoreOptions, Step, restore_into_postgres, restore_with,
};

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
    /// The master key the snapshot was sealed with (a vault under the file seal).
    #[arg(long, env = "SHAREVAULT_MASTER_KEY_FILE", value_name = "FILE")]
    pub master_key_file: Option<std::path::PathBuf>,
    /// The seal of the snapshot's root key: `pkcs11` for a vault whose root key a PKCS#11
    /// token sealed (then give the token's settings) [default: file].
    #[arg(long, env = "SHAREVAULT_SEAL", value_enum)]
    pub seal: Option<SealKind>,
    /// The PKCS#11 library of the token that sealed the snapshot's root key.
    #[arg(long, env = "SHAREVAULT_PKCS11_MODULE", value_name = "FILE")]
    pub pkcs11_module: Option<std::path::PathBuf>,
    /// The label of that token.
    #[arg(long, env = "SHAREVAULT_PKCS11_TOKEN_LABEL", value_name = "LABEL")]
    pub pkcs11_token_label: Option<String>,
    /// The label of the token key that sealed it.
    #[arg(long, env = "SHAREVAULT_PKCS11_KEY_LABEL", value_name = "LABEL")]
    pub pkcs11_key_label: Option<String>,
    /// File holding the token's user PIN [default: the `pkcs11-pin` systemd credential].
    #[arg(long, env = "SHAREVAULT_PKCS11_PIN_FILE", value_name = "FILE")]
    pub pkcs11_pin_file: Option<std::path::PathBuf>,
    /// How the token encrypts the root key: `aes-gcm` or `cloudkms-aes-gcm` [default: aes-gcm].
    #[arg(long, env = "SHAREVAULT_PKCS11_MECHANISM", value_enum)]
    pub pkcs11_mechanism: Option<WrapMechanism>,
    /// Replace a vault already in the data dir (it is kept beside, renamed).
    #[arg(long)]
    pub replace: bool,
    /// Accept a snapshot written before snapshots were authenticated (format 1): its checksum
    /// proves only that it is not damaged, not that nobody altered it.
    #[arg(long)]
    pub accept_unauthenticated_snapshot: bool,
    /// Replace a vault that holds writes the snapshot lacks: one whose last write (the newest
    /// event of its audit trail) is newer than the snapshot. What was written since is lost.
    #[arg(long)]
    pub allow_older: bool,
    /// No progress on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Restore into this PostgreSQL database instead of the data dir.
    #[command(flatten)]
    pub database: super::database::DatabaseArgs,
}

/// The snapshot's root key: from the master key file, or unsealed by the token that sealed
/// it; refused, naming what is needed, when the seal given is not the snapshot's.
fn root_key(args: &RestoreArgs) -> Result<MasterKey, CliError> {
    let local = CliError::Local;
    let refused = |why: String| local(format!("restore refused, nothing was changed: {why}"));
    let seal = args.seal.unwrap_or_default();
    // Read before the snapshot is authenticated (that needs the root key). A snapshot too
    // damaged to read is left to the file seal's path, whose MAC check names the damage.
    let sealed = match crate::snapshot::find_meta(&args.from, SEALED_ROOT_KEY) {
        Ok(sealed) => sealed,
        Err(err) if seal == SealKind::Pkcs11 => {
            return Err(refused(format!(
                "cannot read the snapshot's sealed root key: {err}"
            )));
        }
        Err(_) => None,
    };
    match (sealed, seal) {
        (Some(sealed), SealKind::File) => Err(refused(format!(
            "this snapshot's root key (id {}) is sealed by the PKCS#11 key labelled {:?}: restore \
             with --seal pkcs11 and the settings of the token that holds that key",
            crate::seal::sealed_key_id(&sealed).map_or("?".into(), |id| id.to_string()),
            crate::seal::sealed_by(&sealed)
        ))),
        (Some(sealed), SealKind::Pkcs11) => {
            let (Some(module), Some(token_label), Some(key_label)) = (
                args.pkcs11_module.clone(),
                args.pkcs11_token_label.clone(),
                args.pkcs11_key_label.clone(),
            ) else {
                return Err(refused(
                    "--seal pkcs11 needs --pkcs11-module, --pkcs11-token-label and \
                     --pkcs11-key-label"
                        .into(),
                ));
            };
            let settings = Pkcs11Settings {
                module,
                token_label,
                key_label,
                pin_file: args.pkcs11_pin_file.clone(),
                mechanism: args.pkcs11_mechanism.unwrap_or_default(),
            };
            let hsm = Hsm::open(&settings).map_err(|e| refused(e.to_string()))?;
            let key = hsm
                .key(&settings.key_label)
                .map_err(|e| refused(e.to_string()))?;
            crate::seal::unseal(&hsm, &key, &sealed).map_err(|e| refused(e.to_string()))
        }
        (None, SealKind::Pkcs11) => Err(refused(
            "this snapshot's root key is not sealed by a PKCS#11 token: it is the master key \
             file of the vault it was taken from; restore with --master-key-file"
                .into(),
        )),
        (None, SealKind::File) => {
            let path = args.master_key_file.as_deref().ok_or_else(|| {
                refused(
                    "this snapshot's root key is the master key file of the vault it was taken \
                     from: pass --master-key-file"
                        .into(),
                )
            })?;
            crate::secrets::read_master_key(path).map_err(local)
        }
    }
}

/// Restores, then prints what was restored.
pub fn run(args: RestoreArgs) -> Result<(), CliError> {
    let key = root_key(&args)?;
    // The MAC is checked over the whole file (MiB), then every record is imported.
    let mut progress = Progress::new("restore, authenticating", "MiB", args.quiet)?;
    let mut importing = false;
    let options = RestoreOptions {
        replace: args.replace,
        accept_unauthenticated: args.accept_unauthenticated_snapshot,
        allow_older: args.allow_older,
    };
    let mut step = |step, done, total| {
        if step == Step::Import && !importing {
            importing = true;
            progress.restart("restore", "records");
        }
        progress.set(done, total);
    };
    // What is restored over what, shown before anything is written (and kept if refused).
    let mut shown = |freshness: &Freshness| {
        let mut lines = format!("{}\n", freshness.describe_snapshot());
        if let Some(live) = freshness.describe_live() {
            lines.push_str(&live);
            lines.push('\n');
        }
        // A closed stdout fails the final report too; the restore itself goes on.
        let _ = super::print(&lines);
    };
    let (report, into) = match args.database.settings()? {
        Some(settings) => {
            let store = super::database::DatabaseArgs::open(&settings)?;
            let report =
                restore_into_postgres(&args.from, &store, &key, options, &mut step, &mut shown);
            crate::store::Store::close(&store);
            (report, format!("postgres {}", settings.describe()))
        }
        None => (
            restore_with(
                &args.from,
                &args.data_dir,
                &key,
                options,
                &mut step,
                &mut shown,
            ),
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
