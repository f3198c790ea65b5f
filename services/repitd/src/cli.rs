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
    /// Operate the projection runtime: status and lag, parked events, retries, rebuilds.
    Projections {
        #[command(subcommand)]
        action: ProjectionsAction,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

/// `repitd projections …`.
#[derive(Debug, Clone, Subcommand)]
pub enum ProjectionsAction {
    /// Each projection's generation, checkpoint, events applied and parked, and lag.
    Status,
    /// The events a projection parked, with their errors.
    Parked {
        /// The projection's name (see `status`).
        name: String,
    },
    /// Applies parked events again; those that apply leave the parking lot.
    Retry {
        /// The projection's name.
        name: String,
        /// Only this event id (default: every parked event of the projection).
        #[arg(long)]
        event: Option<String>,
    },
    /// Rebuilds a projection from position 0 into fresh tables and swaps them in atomically.
    /// The live tables keep serving until the swap.
    Rebuild {
        /// The projection's name.
        name: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// What to run: `all`, or a comma list of user, student, tutor, lesson, homework, payment,
    /// material, notification, analytics, gateway, relay, projections.
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
