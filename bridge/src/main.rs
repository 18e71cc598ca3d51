//! `prom-bridge`: see the library docs and docs/BRIDGE.md.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;
use prom_bridge::cli::{options, Cli};
use prom_bridge::Counters;

/// Counts the live heap for `prom_bridge_heap_bytes` (docs/BRIDGE.md).
#[global_allocator]
static ALLOCATOR: prom_bridge::heap::CountingAllocator = prom_bridge::heap::CountingAllocator;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let options = match options(Cli::parse()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("prom-bridge: {e}");
            return ExitCode::from(2);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, stop.clone()) {
            eprintln!("prom-bridge: cannot handle signal {signal}: {e}");
            return ExitCode::FAILURE;
        }
    }
    match prom_bridge::run(options, Arc::new(Counters::default()), stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("prom-bridge: {e}");
            ExitCode::FAILURE
        }
    }
}
