//! Integration tests: one binary, a module per capability.

mod alerting;
mod check_sinks;
mod clean;
mod delivery;
mod guardrails;
mod products;
mod schedules;
mod sinks;
mod worker;

use std::process::Command;

/// A command running the `datashare` binary under test.
pub fn datashare_cmd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_datashare"));
    c.env("RUST_LOG", "warn");
    c
}

/// Runs a command and fails the test with its output when it does not succeed.
pub fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().expect("command starts");
    assert!(
        out.status.success(),
        "{:?} failed: {}\n{}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
