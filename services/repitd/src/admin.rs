//! `repitd projections …`: the operator's view of the projection runtime, run against the
//! configured read-model database (and feed, for rebuilds) from any machine that has the
//! configuration.

use anyhow::Context;
use repit_lesson::{LessonApplication, LessonSettings};
use repit_platform::Config;
use repit_projections::{Runtime, admin};
use tokio_util::sync::CancellationToken;

use crate::cli::ProjectionsAction;
use crate::{backends, pipeline};

async fn runtime(config: &Config) -> anyhow::Result<Runtime> {
    let store = backends::event_store(config).await?;
    let db = backends::read_models(config).await?;
    let lesson = LessonApplication::new(store.clone(), db.clone(), LessonSettings::default());
    let source = pipeline::feed_source(config, &store).await?;
    Ok(pipeline::runtime(
        config,
        db,
        source,
        pipeline::projections(&lesson),
    ))
}

fn millis(lag: Option<f64>) -> String {
    lag.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1} ms"))
}

/// Runs one action, printing its result for a person.
pub async fn run(
    config: &Config,
    action: &ProjectionsAction,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let runtime = runtime(config).await?;
    match action {
        ProjectionsAction::Status => {
            runtime.prepare().await?;
            println!(
                "{:<24} {:>4} {:>22} {:>10} {:>7} {:>12}",
                "projection", "gen", "checkpoint", "applied", "parked", "lag"
            );
            for status in admin::status(runtime.db()).await? {
                println!(
                    "{:<24} {:>4} {:>22} {:>10} {:>7} {:>12}",
                    status.name,
                    status.generation,
                    status
                        .checkpoint
                        .map_or_else(|| "-".to_owned(), |p| p.to_string()),
                    status.events_applied,
                    status.events_parked,
                    millis(status.lag_ms),
                );
            }
        }
        ProjectionsAction::Parked { name } => {
            runtime
                .names()
                .iter()
                .find(|n| *n == name)
                .with_context(|| format!("no projection named {name:?}"))?;
            let parked = admin::parked(runtime.db(), name).await?;
            if parked.is_empty() {
                println!("{name}: nothing parked");
            }
            for p in parked {
                println!(
                    "{} {} {}@{} ({} attempts): {}",
                    p.event.id,
                    p.event.event_type,
                    p.event.stream,
                    p.event.revision,
                    p.attempts,
                    p.error
                );
            }
        }
        ProjectionsAction::Retry { name, event } => {
            let report = runtime.retry(name, event.as_deref()).await?;
            println!(
                "{name}: {} applied, {} still failing",
                report.applied.len(),
                report.failed.len()
            );
            for (id, error) in report.failed {
                println!("  {id}: {error}");
            }
        }
        ProjectionsAction::Rebuild { name } => {
            let report = runtime.rebuild(name, &shutdown).await?;
            println!(
                "{name}: generation {} live, {} events applied, {} parked, in {:.1} s",
                report.generation,
                report.events_applied,
                report.events_parked,
                report.elapsed.as_secs_f64()
            );
        }
    }
    Ok(())
}
