//! Integration tests: one binary, a module per capability.

mod alerting;
mod alloc;
mod bad_input;
mod bigquery_schemas;
mod check_sinks;
mod clean;
mod delivery;
mod guardrails;
mod harness;
mod large_objects;
mod powerbi;
mod products;
mod schedules;
mod sinks;
mod telemetry;
mod worker;

use std::path::PathBuf;
use std::process::Command;

/// Every allocation is counted per thread, so a test can measure the heap it holds.
#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

/// The checkout under test: cargo's `CARGO_MANIFEST_DIR` at run time, so a test binary reused
/// from a shared target directory built in another checkout still reads this one's files.
pub fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The shipped OuchHungry contract with its pseudonymization secret read from `hmac_file`.
pub fn shipped_contract_with_hmac_file(hmac_file: &std::path::Path) -> String {
    let text = std::fs::read_to_string(root().join("partners/ouchhungry.toml")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("secret = "))
        .expect("the contract's pseudonymization secret")
        .to_string();
    text.replacen(
        &line,
        &format!(
            "secret = {{ file = {:?} }}",
            hmac_file.display().to_string()
        ),
        1,
    )
}

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
