//! Where an offline command finds a PostgreSQL vault: the same URL and password file as
//! `serve`.

use super::CliError;
use crate::store::postgres::{PgSettings, PgStore};
use std::path::PathBuf;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct DatabaseArgs {
    /// The PostgreSQL database, as for `serve`: `postgres://USER@HOST:PORT/DB` (no password).
    #[arg(long, env = "SHAREVAULT_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// File holding the PostgreSQL password [default: the systemd credential
    /// `database-password`, if any].
    #[arg(long, env = "SHAREVAULT_DATABASE_PASSWORD_FILE", value_name = "FILE")]
    pub database_password_file: Option<PathBuf>,
}

impl DatabaseArgs {
    /// The database's settings with its password, if a URL was given.
    pub fn settings(&self) -> Result<Option<PgSettings>, CliError> {
        let Some(url) = &self.database_url else {
            return Ok(None);
        };
        let settings = PgSettings::parse(url).map_err(CliError::Local)?;
        let password = crate::secrets::database_password(self.database_password_file.as_deref())
            .map_err(CliError::Local)?;
        Ok(Some(match password {
            Some(password) => settings.with_password(password),
            None => settings,
        }))
    }

    /// Opens the store (applying the migrations it lacks).
    pub fn open(settings: &PgSettings) -> Result<PgStore, CliError> {
        PgStore::open(settings, Default::default()).map_err(|e| {
            CliError::Local(format!(
                "cannot open the database {}: {e}",
                settings.describe()
            ))
        })
    }
}
