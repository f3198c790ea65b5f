//! Command-line interface: `repitd [serve] [--target …] [--config FILE]` and `repitd config`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::targets::TargetSet;

/// RepitBot: the backend of a tutoring business run through Telegram.
#[derive(Debug, Parser)]
#[command(name = "repitd", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Used when no subcommand is given: `repitd` alone serves everything on the defaults.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the selected components on one gRPC server until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Print the effective configuration (defaults, file, environment) as TOML and exit.
    Config(ConfigArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// What to run: `all`, or a comma list of user, student, tutor, lesson, homework, payment,
    /// material, notification, analytics, gateway.
    #[arg(
        long,
        env = "REPIT_TARGET",
        default_value = "all",
        value_name = "all|LIST"
    )]
    pub target: TargetSet,
    #[command(flatten)]
    pub config: ConfigArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// TOML configuration file; `REPIT_<SECTION>__<KEY>` variables override it.
    #[arg(long, env = "REPIT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl std::str::FromStr for ConfigArgs {
    type Err = std::convert::Infallible;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Ok(Self {
            config: Some(PathBuf::from(raw)),
        })
    }
}
