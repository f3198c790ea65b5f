//! One shutdown signal for the whole process.
//!
//! SIGINT or SIGTERM cancels a [`CancellationToken`]; every server, relay and background loop
//! holds a clone and stops when it fires, so nothing is left running half-way.

use tokio_util::sync::CancellationToken;

/// The process-wide shutdown token.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// A token that is cancelled when shutdown begins.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Begins shutdown now (for tests and fatal errors).
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Cancels the token on the first SIGINT or SIGTERM. Spawn once, early in `main`.
    pub fn listen_for_signals(&self) {
        let token = self.token.clone();
        tokio::spawn(async move {
            let signal = wait_for_signal().await;
            tracing::info!(signal, "shutdown requested");
            token.cancel();
        });
    }
}

#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut interrupt), Ok(mut terminate)) => tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        },
        _ => {
            // Without signal handlers the process can still be stopped by Ctrl-C.
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "ctrl-c"
}
