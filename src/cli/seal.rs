//! `sharevault seal create-key|migrate|rewrap`: the token's wrapping key, and moving a vault's
//! root key between seals. `migrate` and `rewrap` work offline on the data dir, with the
//! daemon stopped (as `restore` does): each is one commit that changes only how the root key
//! is kept, never a record. They take the daemon's own settings (`--config` and the flags).

use super::CliError;
use crate::config::{Config, ServeArgs};
use crate::seal::{Hsm, Pkcs11Settings, SealKind, offline};
use crate::secrets::DATABASE_FILE;
use crate::store::Store;
use crate::store::redb::RedbStore;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum SealCommand {
    /// Create the token's wrapping key (non-extractable, sensitive AES-256) labelled
    /// --pkcs11-key-label.
    CreateKey(SealArgs),
    /// Move a stopped vault's root key from its master key file into the token's seal
    /// (`--to pkcs11`), or out of it into a new key file (`--to file --master-key-out FILE`).
    Migrate(MigrateArgs),
    /// Re-seal a stopped vault's root key under another key of the token (rotating the
    /// token's key); start the daemon with `--pkcs11-key-label NEW` afterwards.
    Rewrap(RewrapArgs),
}

#[derive(clap::Args)]
pub struct SealArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(clap::Args)]
pub struct MigrateArgs {
    /// The seal to move the root key to.
    #[arg(long, value_enum)]
    pub to: SealKind,
    /// With `--to file`: the new master key file to write (mode 0600; must not exist).
    #[arg(long, value_name = "FILE")]
    pub master_key_out: Option<PathBuf>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(clap::Args)]
pub struct RewrapArgs {
    /// The label of the token key to seal the root key with from now on.
    #[arg(long, value_name = "LABEL")]
    pub new_key_label: String,
    #[command(flatten)]
    pub serve: ServeArgs,
}

fn local(err: impl ToString) -> CliError {
    CliError::Local(err.to_string())
}

fn token_settings(config: &Config) -> Result<&Pkcs11Settings, CliError> {
    config.pkcs11.as_ref().ok_or_else(|| {
        local(
            "give the token's settings: --pkcs11-module, --pkcs11-token-label, \
             --pkcs11-key-label (and --pkcs11-pin-file or the pkcs11-pin credential)",
        )
    })
}

/// The stopped vault's store, with the data dir's lock (held as long as the store is used).
fn open_store(config: &Config) -> Result<(crate::data_dir::DataDirLock, RedbStore), CliError> {
    let path = config.data_dir.join(DATABASE_FILE);
    if !path.exists() {
        return Err(local(format!(
            "{} holds no vault (no {DATABASE_FILE})",
            config.data_dir.display()
        )));
    }
    crate::secrets::prepare_data_dir(&config.data_dir).map_err(local)?;
    let lock = crate::data_dir::DataDirLock::acquire(&config.data_dir, "changing its seal")
        .map_err(local)?;
    let store = RedbStore::open(
        &path,
        config.min_free_disk_bytes,
        config.cache_bytes,
        crate::metrics::Metrics::new().store,
    )
    .map_err(|e| {
        local(format!(
            "cannot open the vault: {e}. Stop the daemon before changing its seal"
        ))
    })?;
    Ok((lock, store))
}

/// Runs a seal command.
pub fn run(command: SealCommand) -> Result<(), CliError> {
    match command {
        SealCommand::CreateKey(args) => {
            let config = Config::load(&args.serve).map_err(local)?;
            let settings = token_settings(&config)?;
            let hsm = Hsm::open_rw(settings).map_err(local)?;
            let key = hsm.create_key(&settings.key_label).map_err(local)?;
            super::print(&format!(
                "created the non-extractable AES-256 key {:?} in token {:?}\n",
                key.label(),
                hsm.token_label()
            ))
        }
        SealCommand::Migrate(args) => {
            let config = Config::load(&args.serve).map_err(local)?;
            let settings = token_settings(&config)?;
            if args.to == SealKind::File && args.master_key_out.is_none() {
                return Err(local("--to file needs --master-key-out FILE"));
            }
            // The master key is read, and the token opened, before the vault is touched.
            let master = match args.to {
                SealKind::Pkcs11 => {
                    let path = crate::secrets::secret_path(
                        config.master_key_file.as_deref(),
                        "master-key",
                        &config.data_dir,
                    );
                    Some((crate::secrets::read_master_key(&path).map_err(local)?, path))
                }
                SealKind::File => None,
            };
            let hsm = Hsm::open(settings).map_err(local)?;
            let wrap = hsm.key(&settings.key_label).map_err(local)?;
            let (_lock, store) = open_store(&config)?;
            let result = super::block_on_value(async {
                match (&master, &args.master_key_out) {
                    (Some((key, _)), _) => offline::to_pkcs11(&store, key, &hsm, &wrap).await,
                    (None, Some(out)) => {
                        offline::to_file(&store, &hsm, &wrap, |key| {
                            let hex = zeroize::Zeroizing::new(hex::encode(key.to_raw().as_slice()));
                            crate::secrets::write_new_secret(out, &hex)
                        })
                        .await
                    }
                    (None, None) => Err("--to file needs --master-key-out FILE".into()),
                }
            });
            store.close();
            let outcome = result?.map_err(local)?;
            let text = match (master, args.master_key_out) {
                (Some((_, path)), _) => format!(
                    "the root key (id {}) is now sealed by key {:?} of token {:?}; no record \
                     was re-encrypted.\nStart the daemon with --seal pkcs11 (and without \
                     --master-key-file), then destroy {} (shred -u): as long as it exists it \
                     opens every record. Run `sharevault rekey` once for a root key that was \
                     never on disk.\n",
                    outcome.root_key_id,
                    settings.key_label,
                    settings.token_label,
                    path.display()
                ),
                (None, out) => format!(
                    "the root key (id {}) is now the master key file {}; the token no longer \
                     seals it.\nStart the daemon with --seal file --master-key-file {}.\n",
                    outcome.root_key_id,
                    out.as_deref()
                        .unwrap_or(std::path::Path::new("?"))
                        .display(),
                    out.as_deref()
                        .unwrap_or(std::path::Path::new("?"))
                        .display()
                ),
            };
            super::print(&text)
        }
        SealCommand::Rewrap(args) => {
            let config = Config::load(&args.serve).map_err(local)?;
            let settings = token_settings(&config)?;
            let hsm = Hsm::open(settings).map_err(local)?;
            let old = hsm.key(&settings.key_label).map_err(local)?;
            let new = hsm.key(&args.new_key_label).map_err(local)?;
            let (_lock, store) = open_store(&config)?;
            let result = super::block_on_value(offline::rewrap(&store, &hsm, &old, &new));
            store.close();
            let outcome = result?.map_err(local)?;
            super::print(&format!(
                "the root key (id {}) is now sealed by key {:?} of token {:?}.\nStart the daemon \
                 with --pkcs11-key-label {:?}. Keep key {:?} while snapshots taken before now \
                 may be restored: they hold the root key sealed by it.\n",
                outcome.root_key_id,
                new.label(),
                settings.token_label,
                new.label(),
                old.label()
            ))
        }
    }
}
