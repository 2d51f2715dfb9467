//! The `datashare` binary: everything is in the library; see [`datashare::cli`].

fn main() -> std::process::ExitCode {
    datashare::cli::main()
}
