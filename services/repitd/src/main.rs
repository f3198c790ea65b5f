//! `repitd`: parse the command line, load and validate the configuration, start telemetry, run the
//! selected components until SIGINT/SIGTERM, and report how it ended through the exit code.

use std::process::ExitCode;

use clap::Parser;
use repit_platform::{Config, Shutdown, telemetry};
use repitd::cli::{Cli, Command, ServeArgs};

/// Exit code for a configuration the process refused to start with (like a usage error).
const EXIT_BAD_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut projections_action = None;
    let (serve, print_config) = match cli.command {
        Some(Command::Serve(args)) => (args, false),
        Some(Command::Config(config)) => (
            ServeArgs {
                config,
                ..cli.serve
            },
            true,
        ),
        Some(Command::Projections { action, config }) => {
            projections_action = Some(action);
            (
                ServeArgs {
                    config,
                    ..cli.serve
                },
                false,
            )
        }
        None => (cli.serve, false),
    };
    let config = match Config::load(serve.config.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("repitd: invalid configuration");
            for problem in error.problems() {
                eprintln!("  - {problem}");
            }
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    if let Err(error) = telemetry::init(&config.log) {
        eprintln!("repitd: {error}");
        return ExitCode::from(EXIT_BAD_CONFIG);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("repitd: failed to start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(action) = projections_action {
        let shutdown = Shutdown::new();
        return match runtime.block_on(async {
            shutdown.listen_for_signals();
            repitd::admin::run(&config, &action, shutdown.token()).await
        }) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("repitd: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(serve_until_shutdown(&config, &serve)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "repitd stopped on an error");
            ExitCode::FAILURE
        }
    }
}

async fn serve_until_shutdown(config: &Config, args: &ServeArgs) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    let server = repitd::start(config, &args.target, shutdown.token()).await?;
    let grace = config.server.shutdown_grace;
    if server.stopped(shutdown.token(), grace).await? {
        tracing::info!("stopped");
    } else {
        tracing::warn!(grace = ?grace, "in-flight calls outlived the shutdown grace period; stopped anyway");
    }
    Ok(())
}
