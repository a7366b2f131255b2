//! The `bootgate` binary: everything lives in the library; see `bootgate::cli`.

fn main() -> std::process::ExitCode {
    bootgate::cli::main()
}
