//! `sharevault token create|list|revoke`: the API tokens of backends and operators.

use super::client::{CliError, Client, ConnectArgs};
use crate::pb;
use serde::Serialize;
use zeroize::Zeroizing;

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token; it is printed once and only its hash is kept.
    Create(CreateArgs),
    /// List the tokens: name, role, creation time (never the tokens themselves).
    List(ListArgs),
    /// Revoke a token by name; it stops working at once.
    Revoke(RevokeArgs),
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    /// BackupService without reading custodian shares.
    Backend,
    /// BackupService, including reading custodian shares (eject).
    Eject,
    /// AdminService.
    Admin,
}

impl RoleArg {
    fn to_proto(self) -> pb::Role {
        match self {
            RoleArg::Backend => pb::Role::Backend,
            RoleArg::Eject => pb::Role::Eject,
            RoleArg::Admin => pb::Role::Admin,
        }
    }
}

/// The lower-case name of a role as the daemon reports it.
fn role_name(value: i32) -> &'static str {
    match pb::Role::try_from(value) {
        Ok(pb::Role::Backend) => "backend",
        Ok(pb::Role::Eject) => "eject",
        Ok(pb::Role::Admin) => "admin",
        _ => "unspecified",
    }
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Name of the token (1-64 of A-Z a-z 0-9 . _ -), unique.
    #[arg(long)]
    pub name: String,
    #[arg(long, value_enum)]
    pub role: RoleArg,
    /// Print {"name", "role", "token"} as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Print {"tokens": [{"name", "role", "created_at"}]} as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Name of the token to revoke.
    #[arg(long)]
    pub name: String,
}

#[derive(Serialize)]
struct Created<'a> {
    name: &'a str,
    role: &'a str,
    token: &'a str,
}

/// One token as `token list` shows it.
#[derive(Debug, Serialize)]
pub struct Listed {
    pub name: String,
    pub role: &'static str,
    /// RFC 3339, UTC.
    pub created_at: String,
}

#[derive(Serialize)]
struct Listing<'a> {
    tokens: &'a [Listed],
}

pub async fn run(command: TokenCommand) -> Result<(), CliError> {
    match command {
        TokenCommand::Create(args) => create(args).await,
        TokenCommand::List(args) => list(args).await,
        TokenCommand::Revoke(args) => revoke(args).await,
    }
}

async fn create(args: CreateArgs) -> Result<(), CliError> {
    let client = Client::connect(&args.connect).await?;
    let request = pb::CreateTokenRequest {
        name: args.name,
        role: args.role.to_proto() as i32,
    };
    let mut response = client
        .admin()
        .create_token(client.request(request)?)
        .await
        .map_err(|s| client.error(&s))?
        .into_inner();
    let token = Zeroizing::new(std::mem::take(&mut response.token));
    let role = role_name(response.role);
    if args.json {
        let line = Zeroizing::new(super::json_line(&Created {
            name: &response.name,
            role,
            token: &token,
        })?);
        super::print(&line)
    } else {
        // The notice goes to stderr so that `TOKEN=$(sharevault token create ...)` captures
        // the token alone.
        eprintln!(
            "created token \"{}\" with role {role}; it is shown once, store it now:",
            response.name
        );
        let line = Zeroizing::new(format!("{}\n", token.as_str()));
        super::print(&line)
    }
}

async fn list(args: ListArgs) -> Result<(), CliError> {
    let client = Client::connect(&args.connect).await?;
    let tokens: Vec<Listed> = client
        .admin()
        .list_tokens(client.request(pb::ListTokensRequest {})?)
        .await
        .map_err(|s| client.error(&s))?
        .into_inner()
        .tokens
        .into_iter()
        .map(|t| Listed {
            role: role_name(t.role),
            created_at: t.created_at.map(|c| c.to_string()).unwrap_or_default(),
            name: t.name,
        })
        .collect();
    if args.json {
        super::print(&super::json_line(&Listing { tokens: &tokens })?)
    } else {
        super::print(&render_list(&tokens))
    }
}

fn render_list(tokens: &[Listed]) -> String {
    if tokens.is_empty() {
        return "no tokens\n".into();
    }
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| vec![t.name.clone(), t.role.to_owned(), t.created_at.clone()])
        .collect();
    super::table::render(Some(&["NAME", "ROLE", "CREATED"]), &rows)
}

async fn revoke(args: RevokeArgs) -> Result<(), CliError> {
    let client = Client::connect(&args.connect).await?;
    client
        .admin()
        .revoke_token(client.request(pb::RevokeTokenRequest {
            name: args.name.clone(),
        })?)
        .await
        .map_err(|s| client.error(&s))?;
    super::print(&format!("revoked token \"{}\"\n", args.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_the_proto() {
        for (arg, name) in [
            (RoleArg::Backend, "backend"),
            (RoleArg::Eject, "eject"),
            (RoleArg::Admin, "admin"),
        ] {
            assert_eq!(role_name(arg.to_proto() as i32), name);
        }
        assert_eq!(role_name(0), "unspecified");
    }

    #[test]
    fn the_list_is_a_table_with_a_header() {
        let tokens = [Listed {
            name: "backend".into(),
            role: "backend",
            created_at: "2025-01-02T03:04:05Z".into(),
        }];
        assert_eq!(
            render_list(&tokens),
            "NAME     ROLE     CREATED\nbackend  backend  2025-01-02T03:04:05Z\n"
        );
        assert_eq!(render_list(&[]), "no tokens\n");
    }
}
