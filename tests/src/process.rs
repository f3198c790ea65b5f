//! Starting real server binaries for end-to-end tests.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a server may take to start listening before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A server process started by a test; it is killed when dropped.
#[derive(Debug)]
pub struct ChildServer {
    child: Child,
    // The server's private data directory (unless the test chose one); removed on drop.
    _data_dir: Option<tempfile::TempDir>,
    addr: SocketAddr,
    logs: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl ChildServer {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, for tonic clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills the process at once (SIGKILL), as a crash or an OOM kill would, and waits for it.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// The OS process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status, returning it with the log lines written since
    /// the server started listening.
    pub async fn terminate(mut self) -> (std::process::ExitStatus, Vec<String>) {
        if let Some(pid) = self.child.id() {
            // A polite stop, as an orchestrator would send it.
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        let status = tokio::time::timeout(START_TIMEOUT, self.child.wait())
            .await
            .expect("server did not exit within 30s of SIGTERM")
            .expect("failed to wait for the server");
        // The process has exited, but its last lines may still be in the pipe: read until the
        // reader sees the end of stdout (and drops its sender), not just what has arrived.
        let mut lines = Vec::new();
        while let Ok(Some(line)) = tokio::time::timeout(START_TIMEOUT, self.logs.recv()).await {
            lines.push(line);
        }
        (status, lines)
    }
}

/// Starts `binary` with `args` and `env`, forcing JSON logs and a free port (127.0.0.1:0), and
/// waits for its `listening` log line to learn the bound address.
pub async fn spawn_server(binary: &Path, args: &[&str], env: &[(&str, &str)]) -> ChildServer {
    let mut command = Command::new(binary);
    // Every server gets a private data directory unless the test names one (to restart a server
    // on the same data), so tests never share or leave behind embedded databases.
    let data_dir = if env.iter().any(|(k, _)| *k == "REPIT_STORAGE__DATA_DIR") {
        None
    } else {
        let dir = tempfile::tempdir().expect("failed to create a data directory");
        command.env("REPIT_STORAGE__DATA_DIR", dir.path());
        Some(dir)
    };
    command
        .args(args)
        .env("REPIT_SERVER__LISTEN", "127.0.0.1:0")
        .env("REPIT_LOG__FORMAT", "json")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("failed to start the server binary");
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            // Echo so a failing test shows what the server said.
            println!("[server] {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let addr = tokio::time::timeout(START_TIMEOUT, async {
        while let Some(line) = rx.recv().await {
            if let Some(addr) = listening_address(&line) {
                return addr;
            }
        }
        panic!("the server exited before it was listening");
    })
    .await
    .expect("the server did not start listening within 30s");
    ChildServer {
        child,
        _data_dir: data_dir,
        addr,
        logs: rx,
    }
}

/// The address in a JSON `listening` log line.
fn listening_address(line: &str) -> Option<SocketAddr> {
    let event: serde_json::Value = serde_json::from_str(line).ok()?;
    if event.get("message")?.as_str()? != "listening" {
        return None;
    }
    event.get("address")?.as_str()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_line_yields_the_address() {
        let line = r#"{"timestamp":"t","level":"INFO","message":"listening","address":"127.0.0.1:4000","targets":"all"}"#;
        assert_eq!(
            listening_address(line),
            Some(SocketAddr::from(([127, 0, 0, 1], 4000)))
        );
        assert_eq!(listening_address(r#"{"message":"stopped"}"#), None);
        assert_eq!(listening_address("not json"), None);
    }
}
