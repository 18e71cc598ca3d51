//! promctl: see `promctl --help`.

fn main() -> std::process::ExitCode {
    prom_daemon::cli::main()
}
