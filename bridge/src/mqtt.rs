//! MQTT 3.1.1 or 5 behind one small interface. rumqttc implements the two protocol versions
//! in parallel modules with their own option, client and packet types; the bridge needs
//! the same few operations from either (connect with a last will, publish without
//! waiting, subscribe to the command topics, read connection acknowledgements and
//! incoming commands), so they are gathered here and the rest of the bridge does not care
//! which version the broker speaks.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::QoS;

use crate::MqttTarget;

/// The protocol version spoken to the broker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4), what every broker speaks.
    #[default]
    V311,
    /// MQTT 5.
    V5,
}

impl Version {
    /// `3.1.1` (or `3`, `4`) and `5`, as in `--mqtt-version` and the file's `mqtt_version`.
    pub fn parse(text: &str) -> Result<Version, String> {
        match text {
            "3.1.1" | "3" | "4" => Ok(Version::V311),
            "5" | "5.0" => Ok(Version::V5),
            other => Err(format!("mqtt_version {other:?}: expected 3.1.1 or 5")),
        }
    }
}

/// Publishing side of the connection; cheap to clone (a channel to the event loop).
#[derive(Clone)]
pub enum Client {
    V311(rumqttc::Client),
    V5(rumqttc::v5::Client),
}

fn qos5(qos: QoS) -> rumqttc::v5::mqttbytes::QoS {
    match qos {
        QoS::AtMostOnce => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

impl Client {
    /// Queues a message for the event loop without waiting; false when its queue is full.
    pub fn try_publish(
        &self,
        topic: impl Into<String>,
        qos: QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) -> bool {
        match self {
            Client::V311(c) => c.try_publish(topic, qos, retain, payload).is_ok(),
            Client::V5(c) => c.try_publish(topic, qos5(qos), retain, payload.into()).is_ok(),
        }
    }

    pub fn try_subscribe(&self, filter: impl Into<String>, qos: QoS) -> bool {
        match self {
            Client::V311(c) => c.try_subscribe(filter, qos).is_ok(),
            Client::V5(c) => c.try_subscribe(filter, qos5(qos)).is_ok(),
        }
    }

    pub fn try_disconnect(&self) {
        // Best effort: a full queue only means the broker will see the socket close.
        match self {
            Client::V311(c) => drop(c.try_disconnect()),
            Client::V5(c) => drop(c.try_disconnect()),
        }
    }
}

/// What the event loop reports, in either version.
pub enum Incoming {
    /// The broker accepted the connection (also after every reconnect).
    Connected,
    /// A message on a subscribed topic.
    Message { topic: String, payload: Vec<u8> },
    /// Anything else (acknowledgements, pings, outgoing packets).
    Other,
}

/// The event loop: drives the connection, reconnecting on the next call after an error.
// One per process, moved once into its thread: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum Connection {
    V311(rumqttc::Connection),
    V5(rumqttc::v5::Connection),
}

impl Connection {
    /// Runs the event loop on this thread, calling `on_event` with each event or error,
    /// until `on_event` returns false.
    pub fn run(self, mut on_event: impl FnMut(Result<Incoming, String>) -> bool) {
        match self {
            Connection::V311(mut c) => {
                use rumqttc::{Event, Packet};
                for event in c.iter() {
                    let e = match event {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => Ok(Incoming::Connected),
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            Ok(Incoming::Message { topic: p.topic, payload: p.payload.to_vec() })
                        }
                        Ok(_) => Ok(Incoming::Other),
                        Err(e) => Err(e.to_string()),
                    };
                    if !on_event(e) {
                        return;
                    }
                }
            }
            Connection::V5(mut c) => {
                use rumqttc::v5::Event;
                for event in c.iter() {
                    let e = match event {
                        Ok(Event::Incoming(p5::Packet::ConnAck(_))) => Ok(Incoming::Connected),
                        Ok(Event::Incoming(p5::Packet::Publish(p))) => Ok(Incoming::Message {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload.to_vec(),
                        }),
                        Ok(_) => Ok(Incoming::Other),
                        Err(e) => Err(e.to_string()),
                    };
                    if !on_event(e) {
                        return;
                    }
                }
            }
        }
    }
}

/// The client and its event loop for `target` (not yet connected: the loop connects).
/// `will` is the last will's topic and payload (retained, QoS 1); `cap` the depth of the
/// client's request queue.
pub fn connect(
    target: &MqttTarget,
    client_id: String,
    will: (String, &str),
    cap: usize,
) -> (Client, Connection) {
    // Each result is a small message sent on its own: without TCP_NODELAY, Nagle's algorithm
    // holds one back until the previous one is acknowledged (up to a delayed ACK, 40 ms).
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    let transport = target.tls_ca.as_ref().map(|ca| {
        // One process-wide provider; a second install is harmless. ring, though rustls now
        // marks it deprecated for lacking post-quantum key exchange: aws-lc-rs, the
        // alternative, needs cmake and per-target C builds on the boards' toolchains.
        #[allow(deprecated)]
        let provider = rustls::crypto::ring::default_provider();
        let _ = provider.install_default();
        rumqttc::Transport::tls(ca.clone(), None, None)
    });
    let keep_alive = Duration::from_secs(10);
    match target.version {
        Version::V311 => {
            let mut o = rumqttc::MqttOptions::new(client_id, target.host.clone(), target.port);
            o.set_keep_alive(keep_alive);
            if let Some((user, password)) = &target.credentials {
                o.set_credentials(user.clone(), password.clone());
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            o.set_last_will(rumqttc::LastWill::new(will.0, will.1, QoS::AtLeastOnce, true));
            let (client, mut connection) = rumqttc::Client::new(o, cap);
            connection.eventloop.set_network_options(network);
            (Client::V311(client), Connection::V311(connection))
        }
        Version::V5 => {
            let mut o = rumqttc::v5::MqttOptions::new(client_id, target.host.clone(), target.port);
            o.set_keep_alive(keep_alive);
            if let Some((user, password)) = &target.credentials {
                o.set_credentials(user.clone(), password.clone());
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            o.set_last_will(p5::LastWill::new(will.0, will.1, qos5(QoS::AtLeastOnce), true, None));
            o.set_network_options(network);
            let (client, connection) = rumqttc::v5::Client::new(o, cap);
            (Client::V5(client), Connection::V5(connection))
        }
    }
}
