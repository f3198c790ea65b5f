//! A bad configuration stops `repitd` before it serves anything: non-zero exit, and a message that
//! names the offending key and where it came from.

use std::path::Path;
use std::process::Output;

fn repitd(args: &[&str], env: &[(&str, &str)]) -> Output {
    std::process::Command::new(Path::new(env!("CARGO_BIN_EXE_repitd")))
        .args(args)
        .envs(env.iter().copied())
        // Whatever the developer's shell sets must not leak into what is being tested.
        .env_remove("REPIT_TARGET")
        .env_remove("REPIT_CONFIG")
        .env("REPIT_SERVER__LISTEN", "127.0.0.1:0")
        .output()
        .expect("run repitd")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_bad_config_file_exits_non_zero_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("repit.toml");
    std::fs::write(&file, "[server]\nshutdown_grace = \"a while\"\n").expect("write config");

    let output = repitd(
        &["serve", "--config", file.to_str().expect("utf-8 path")],
        &[],
    );

    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let message = stderr(&output);
    assert!(message.contains("server.shutdown_grace"), "{message}");
    assert!(message.contains("repit.toml"), "{message}");
}

#[test]
fn an_unknown_key_in_the_config_file_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("repit.toml");
    std::fs::write(&file, "[log]\nlevl = \"debug\"\n").expect("write config");

    let output = repitd(
        &["serve", "--config", file.to_str().expect("utf-8 path")],
        &[],
    );

    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(stderr(&output).contains("log.levl"), "{}", stderr(&output));
}

#[test]
fn a_missing_config_file_exits_non_zero() {
    let output = repitd(&["serve", "--config", "/nonexistent/repit.toml"], &[]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(
        stderr(&output).contains("/nonexistent/repit.toml"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_bad_environment_value_exits_non_zero_naming_the_variable() {
    let output = repitd(&["serve"], &[("REPIT_LOG__FORMAT", "xml")]);

    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let message = stderr(&output);
    assert!(message.contains("log.format"), "{message}");
    assert!(message.contains("REPIT_LOG__FORMAT"), "{message}");
}

#[test]
fn an_unknown_target_exits_non_zero_listing_the_valid_ones() {
    let output = repitd(&["serve", "--target", "lesson,payments"], &[]);

    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let message = stderr(&output);
    assert!(
        message.contains("payments") && message.contains("payment,"),
        "{message}"
    );
}

#[test]
fn the_effective_configuration_can_be_printed() {
    let output = repitd(&["config"], &[("REPIT_LOG__LEVEL", "debug")]);
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("level = \"debug\""), "{printed}");
    assert!(printed.contains("listen = \"127.0.0.1:0\""), "{printed}");
}

#[test]
fn the_bot_credential_is_never_printed_and_a_short_one_is_refused() {
    let secret = "bot-secret-that-must-not-leak-42";
    let output = repitd(&["config"], &[("REPIT_AUTH__BOT_CREDENTIAL", secret)]);
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("bot_username"), "{printed}");
    assert!(!printed.contains(secret), "{printed}");
    assert!(!stderr(&output).contains(secret));

    let output = repitd(&["config"], &[("REPIT_AUTH__BOT_CREDENTIAL", "short")]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(stderr(&output).contains("auth.bot_credential"));
}
