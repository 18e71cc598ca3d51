//! `prom-bridge`: see the library docs and docs/BRIDGE.md.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;
use prom_bridge::{Counters, MqttTarget, Options};
use prom_daemon::client::BusArgs;
use rumqttc::QoS;

/// Publishes prom-daemon's classifications to an MQTT broker.
#[derive(Parser, Debug)]
#[command(name = "prom-bridge", version)]
struct Cli {
    #[command(flatten)]
    bus: BusArgs,
    /// The broker, as mqtt://HOST[:PORT].
    #[arg(long, value_name = "URL", default_value = "mqtt://127.0.0.1:1883")]
    mqtt: String,
    /// This machine's name in the topics (prom/NODE/...); default: the host name.
    #[arg(long)]
    node: Option<String>,
    /// Topic prefix.
    #[arg(long, default_value = "prom")]
    prefix: String,
    /// QoS of the result messages (0, 1 or 2).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Retain the result messages.
    #[arg(long)]
    retain: bool,
    /// Results held while the broker is slow or away (the oldest are dropped beyond it).
    #[arg(long, default_value_t = 256)]
    queue: usize,
    /// Seconds between stats messages (prom/NODE/CAMERA/stats, prom/NODE/stats).
    #[arg(long, default_value_t = 10.0)]
    stats_interval: f64,
    /// Serve Prometheus metrics on http://ADDR/metrics (off unless given; the usual
    /// address is 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let (host, port) = match MqttTarget::parse_url(&cli.mqtt) {
        Ok(hp) => hp,
        Err(e) => {
            eprintln!("prom-bridge: {e}");
            return ExitCode::from(2);
        }
    };
    let qos = match cli.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    let mqtt = MqttTarget {
        host,
        port,
        prefix: cli.prefix,
        node: cli.node.unwrap_or_else(host_name),
        qos,
        retain: cli.retain,
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, stop.clone()) {
            eprintln!("prom-bridge: cannot handle signal {signal}: {e}");
            return ExitCode::FAILURE;
        }
    }
    if !(cli.stats_interval >= 0.1 && cli.stats_interval <= 86400.0) {
        eprintln!("prom-bridge: --stats-interval must be between 0.1 and 86400 seconds");
        return ExitCode::from(2);
    }
    let stats_interval = std::time::Duration::from_secs_f64(cli.stats_interval);
    let options =
        Options { bus: cli.bus, mqtt, queue: cli.queue, stats_interval, metrics: cli.metrics };
    match prom_bridge::run(options, Arc::new(Counters::default()), stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("prom-bridge: {e}");
            ExitCode::FAILURE
        }
    }
}
