//! `mqfn status`: the status of a running mqfn, as a table.

use clap::Args;

use super::CliError;
use crate::config::Config;
use crate::telemetry::status::{table, Status};

/// Arguments of `mqfn status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The admin address (default: the config's `[admin] listen`).
    #[arg(long)]
    pub admin: Option<String>,
    /// Print the raw JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Fetches `/status` and prints it.
pub async fn run(cfg: &Config, args: &StatusArgs) -> Result<(), CliError> {
    let addr = args
        .admin
        .clone()
        .unwrap_or_else(|| cfg.admin.listen.clone());
    let url = format!("http://{addr}/status");
    let resp = reqwest::get(&url)
        .await
        .map_err(|e| CliError::Admin(format!("cannot reach {url}: {e}; is `mqfn run` running?")))?;
    let status: Status = resp
        .json()
        .await
        .map_err(|e| CliError::Admin(format!("{url} did not answer with a status: {e}")))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status)
                .map_err(|e| CliError::Admin(format!("cannot print the status: {e}")))?
        );
    } else {
        print!("{}", table(&status));
    }
    Ok(())
}
