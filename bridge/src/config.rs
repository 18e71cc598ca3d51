//! `/etc/prom/prom-bridge.toml` (the commented example is packaging/prom-bridge.toml). Every
//! key is optional; command-line flags override the file; unknown keys are errors.

use std::path::Path;

use serde::Deserialize;

/// Where the configuration lives unless `--config` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/prom/prom-bridge.toml";

/// The commented example configuration (packaging/prom-bridge.toml, installed as
/// /etc/prom/prom-bridge.toml): every key with its default, commented out (`#key = value`).
pub fn example() -> &'static str {
    include_str!("../../packaging/prom-bridge.toml")
}

/// The file's keys (see the example for their meaning).
#[derive(Deserialize, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `system`, `session` or a D-Bus address.
    pub bus: Option<String>,
    pub mqtt: Option<String>,
    /// `3.1.1` or `5`.
    pub mqtt_version: Option<String>,
    pub node: Option<String>,
    pub prefix: Option<String>,
    pub qos: Option<u8>,
    pub retain: Option<bool>,
    pub queue: Option<usize>,
    pub stats_interval: Option<f64>,
    pub metrics: Option<String>,
    /// Broker user name; the password is read from `password_file` (kept out of this
    /// world-readable file).
    pub username: Option<String>,
    pub password_file: Option<String>,
    /// PEM certificates a TLS broker's (`mqtts://`) must chain to; default: the system's
    /// (/etc/ssl/certs/ca-certificates.crt).
    pub ca_file: Option<String>,
}

impl FileConfig {
    /// Reads `path`; a missing default file is an empty configuration, a missing file named
    /// by the user an error.
    pub fn load(path: &Path, named: bool) -> Result<FileConfig, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !named => {
                return Ok(FileConfig::default())
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        FileConfig::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses the file's text; errors name the key (and show its line).
    pub fn parse(text: &str) -> Result<FileConfig, String> {
        let c: FileConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        if let Some(q) = c.qos {
            if q > 2 {
                return Err(format!("qos: {q} is not an MQTT QoS (0, 1 or 2)"));
            }
        }
        if let Some(v) = &c.mqtt_version {
            crate::mqtt::Version::parse(v)?;
        }
        if let Some(s) = c.stats_interval {
            if !(0.1..=86400.0).contains(&s) {
                return Err(format!("stats_interval: {s} is not between 0.1 and 86400 seconds"));
            }
        }
        if c.password_file.is_some() && c.username.is_none() {
            return Err("password_file: set username too".into());
        }
        if c.queue == Some(0) {
            return Err("queue: must be at least 1".into());
        }
        if let Some(m) = &c.metrics {
            m.parse::<std::net::SocketAddr>()
                .map_err(|_| format!("metrics: {m:?} is not an address like 127.0.0.1:9464"))?;
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_parses_and_sets_nothing_unexpected() {
        let c = FileConfig::parse(example()).unwrap();
        assert_eq!(c, FileConfig::default(), "the example keeps every key commented out");
        // Uncommented, every key of the example is valid.
        let uncommented: String = example()
            .lines()
            .map(|l| l.strip_prefix('#').filter(|l| l.contains(" = ")).unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let c = FileConfig::parse(&uncommented).unwrap();
        assert_eq!(c.mqtt.as_deref(), Some("mqtt://127.0.0.1:1883"));
        assert!(c.bus.is_some() && c.node.is_some() && c.metrics.is_some());
    }

    #[test]
    fn errors_name_the_key() {
        for (text, key) in [
            ("mqtt = 3", "mqtt"),
            ("qos = 3", "qos"),
            ("stats_interval = 0.0", "stats_interval"),
            ("queue = 0", "queue"),
            ("metrics = \"nowhere\"", "metrics"),
            ("brokr = \"x\"", "brokr"),
            ("mqtt_version = \"4.0\"", "mqtt_version"),
            ("mqtt_version = 5", "mqtt_version"),
        ] {
            let e = FileConfig::parse(text).unwrap_err();
            assert!(e.contains(key), "{text:?}: {e}");
        }
    }
}
