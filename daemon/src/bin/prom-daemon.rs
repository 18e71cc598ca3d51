//! prom-daemon: see `prom-daemon --help`.

fn main() -> std::process::ExitCode {
    prom_daemon::daemon::main()
}
