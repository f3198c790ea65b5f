//! Structured logs on standard output: text for a terminal, JSON lines for a collector.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::{LogConfig, LogFormat};

/// Installs the global `tracing` subscriber. Call once, first thing in `main`.
///
/// `RUST_LOG`, when set, wins over `log.level` so a developer can turn up one module without
/// touching the deployment's configuration.
pub fn init(config: &LogConfig) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::builder().parse(directives),
        _ => EnvFilter::builder().parse(&config.level),
    }
    .map_err(|e| format!("invalid log filter: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(FmtSpan::NONE)
        .with_ansi(std::io::stdout().is_terminal())
        .with_writer(std::io::stdout);
    let installed = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    installed.map_err(|e| format!("cannot install the log subscriber: {e}"))
}
