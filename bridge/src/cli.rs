//! The command line: flags over the configuration file over the defaults.

use std::path::PathBuf;

use clap::Parser;
use rumqttc::QoS;

use crate::config::{FileConfig, DEFAULT_PATH};
use crate::{MqttTarget, Options};
use prom_daemon::client::BusArgs;

/// Publishes prom-daemon's classifications to an MQTT broker (with Home Assistant
/// discovery) and, optionally, Prometheus metrics. Flags override the configuration file.
#[derive(Parser, Debug)]
#[command(name = "prom-bridge", version)]
pub struct Cli {
    /// Configuration file [default: /etc/prom/prom-bridge.toml, if it exists].
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(flatten)]
    bus: BusArgs,
    /// The broker, as mqtt://HOST[:PORT] or, with TLS, mqtts://HOST[:PORT]
    /// [default: mqtt://127.0.0.1:1883].
    #[arg(long, value_name = "URL")]
    mqtt: Option<String>,
    /// This machine's name in the topics (prom/NODE/...) [default: the host name].
    #[arg(long)]
    node: Option<String>,
    /// Topic prefix [default: prom].
    #[arg(long)]
    prefix: Option<String>,
    /// QoS of the result messages (0, 1 or 2) [default: 0].
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: Option<u8>,
    /// Retain the result messages.
    #[arg(long)]
    retain: bool,
    /// Results held while the broker is slow or away; the oldest are dropped beyond it
    /// [default: 256].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    queue: Option<u64>,
    /// Seconds between stats messages (prom/NODE/CAMERA/stats, prom/NODE/stats)
    /// [default: 10].
    #[arg(long)]
    stats_interval: Option<f64>,
    /// Serve Prometheus metrics on http://ADDR/metrics (off unless given; the usual
    /// address is 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Broker user name.
    #[arg(long)]
    username: Option<String>,
    /// File holding the broker password (its first line; never on the command line).
    #[arg(long, value_name = "PATH", requires = "username")]
    password_file: Option<PathBuf>,
    /// MQTT protocol version: 3.1.1 or 5 [default: 3.1.1].
    #[arg(long, value_name = "VERSION")]
    mqtt_version: Option<String>,
    /// With mqtts://: PEM certificates the broker's must chain to [default: the system's,
    /// /etc/ssl/certs/ca-certificates.crt].
    #[arg(long, value_name = "PATH")]
    ca_file: Option<PathBuf>,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The flags over the file over the defaults.
pub fn options(cli: Cli) -> Result<Options, String> {
    let file = match &cli.config {
        Some(path) => FileConfig::load(path, true)?,
        None => FileConfig::load(std::path::Path::new(DEFAULT_PATH), false)?,
    };
    let bus = if cli.bus.session || cli.bus.bus_address.is_some() {
        cli.bus
    } else {
        match file.bus.as_deref() {
            None | Some("system") => BusArgs::default(),
            Some("session") => BusArgs { session: true, bus_address: None },
            Some(address) => BusArgs { session: false, bus_address: Some(address.to_owned()) },
        }
    };
    let url = cli.mqtt.or(file.mqtt).unwrap_or_else(|| "mqtt://127.0.0.1:1883".into());
    let (host, port, tls) = MqttTarget::parse_url(&url).map_err(|e| e.to_string())?;
    let tls_ca = if tls {
        let path = cli
            .ca_file
            .or(file.ca_file.map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
        Some(std::fs::read(&path).map_err(|e| format!("ca_file {}: {e}", path.display()))?)
    } else {
        None
    };
    let version = match cli.mqtt_version.or(file.mqtt_version) {
        Some(v) => crate::mqtt::Version::parse(&v)?,
        None => crate::mqtt::Version::default(),
    };
    let qos = match cli.qos.or(file.qos).unwrap_or(0) {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    let stats = cli.stats_interval.or(file.stats_interval).unwrap_or(10.0);
    if !(0.1..=86400.0).contains(&stats) {
        return Err("--stats-interval must be between 0.1 and 86400 seconds".into());
    }
    let metrics = match (cli.metrics, &file.metrics) {
        (Some(a), _) => Some(a),
        (None, Some(a)) => Some(a.parse().map_err(|_| format!("metrics: bad address {a:?}"))?),
        (None, None) => None,
    };
    let credentials = match (
        cli.username.or(file.username),
        cli.password_file.or(file.password_file.map(PathBuf::from)),
    ) {
        (Some(user), Some(path)) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("password_file {}: {e}", path.display()))?;
            Some((user, text.lines().next().unwrap_or_default().to_owned()))
        }
        (Some(user), None) => Some((user, String::new())),
        (None, _) => None,
    };
    Ok(Options {
        bus,
        mqtt: MqttTarget {
            host,
            port,
            prefix: cli.prefix.or(file.prefix).unwrap_or_else(|| "prom".into()),
            node: cli.node.or(file.node).unwrap_or_else(host_name),
            qos,
            retain: cli.retain || file.retain.unwrap_or(false),
            credentials,
            tls_ca,
            version,
        },
        queue: cli.queue.map(|q| q as usize).or(file.queue).unwrap_or(256),
        stats_interval: std::time::Duration::from_secs_f64(stats),
        metrics,
    })
}
