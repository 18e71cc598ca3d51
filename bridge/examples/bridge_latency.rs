//! Measures what prom-bridge adds: for every result, the time from the D-Bus `Classified`
//! signal reaching a client on the bus to the MQTT message reaching a subscriber of the
//! broker (both clients in this process, on the same clock). Run by
//! `benches/scripts/bridge-latency.sh`, which starts the broker, the bus, the daemon and
//! the bridge.
//!
//! Usage: bridge_latency BUS_ADDRESS MQTT_PORT NODE SECONDS

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prom_daemon::client::watch_signals;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, bus, port, node, seconds] = &args[..] else {
        eprintln!("usage: bridge_latency BUS_ADDRESS MQTT_PORT NODE SECONDS");
        std::process::exit(2);
    };
    let port: u16 = port.parse().expect("port");
    let seconds: u64 = seconds.parse().expect("seconds");
    let seen: Arc<Mutex<HashMap<(String, u64), Instant>>> = Arc::default();
    {
        let seen = seen.clone();
        let bus = bus.clone();
        std::thread::spawn(move || {
            let conn = zbus::blocking::connection::Builder::address(bus.as_str())
                .expect("bus address")
                .build()
                .expect("connect to the bus");
            let _ = watch_signals(&conn, None, None, |c| {
                seen.lock().unwrap().insert((c.camera, c.sequence), Instant::now());
                Ok(true)
            });
        });
    }
    let mut opts =
        MqttOptions::new(format!("bridge-latency-{}", std::process::id()), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(10));
    let (client, mut connection) = Client::new(opts, 64);
    client.subscribe(format!("prom/{node}/+/result"), QoS::AtMostOnce).unwrap();
    let start = Instant::now();
    let mut latencies_us = Vec::new();
    let mut unmatched = 0u64;
    for event in connection.iter() {
        if start.elapsed() > Duration::from_secs(seconds) {
            break;
        }
        let Ok(Event::Incoming(Packet::Publish(p))) = event else { continue };
        let now = Instant::now();
        let v: serde_json::Value = serde_json::from_slice(&p.payload).expect("JSON result");
        let key = (
            v["camera"].as_str().unwrap_or_default().to_owned(),
            v["sequence"].as_u64().unwrap_or(0),
        );
        // The signal may still be on its way to our own D-Bus client: wait briefly.
        let mut at = None;
        for _ in 0..100 {
            at = seen.lock().unwrap().remove(&key);
            if at.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        match at {
            Some(t) => latencies_us.push(now.saturating_duration_since(t).as_micros() as u64),
            None => unmatched += 1,
        }
    }
    if latencies_us.is_empty() {
        eprintln!("no results matched");
        std::process::exit(1);
    }
    let matched = latencies_us.len();
    let mut q = |f: f64| prom_bridge::quantile_ms(&mut latencies_us, f).unwrap_or(0.0);
    let (p50, p90, p99, max) = (q(0.5), q(0.9), q(0.99), q(1.0));
    println!(
        "results {matched} (unmatched {unmatched}) over {seconds} s; D-Bus signal -> MQTT \
         subscriber ms: p50 {p50:.3} p90 {p90:.3} p99 {p99:.3} max {max:.3}"
    );
}
