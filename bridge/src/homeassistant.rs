//! Home Assistant MQTT discovery: each camera becomes a Home Assistant device with a sensor
//! for its top label (score, top-k and sequence as attributes), sensors for its frame rate
//! and latency, and a switch that pauses and resumes it (forwarded over D-Bus).
//!
//! Config messages go to `homeassistant/<component>/prom_<node>/<camera>_<object>/config`,
//! retained, every entity with a `unique_id`, the camera's `device` and the bridge's
//! availability topic, as Home Assistant's MQTT integration documents them.

use serde_json::{json, Value};

use crate::MqttTarget;

/// Home Assistant's default discovery prefix.
pub const DISCOVERY_PREFIX: &str = "homeassistant";

/// Node and object ids in discovery topics may only hold `[A-Za-z0-9_-]`.
fn id(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
        .collect()
}

/// The retained config messages (topic, JSON) that announce `camera`.
pub fn discovery(t: &MqttTarget, camera: &str) -> Vec<(String, Vec<u8>)> {
    let node = id(&t.node);
    let base = format!("prom_{node}_{}", id(camera));
    let device = json!({
        "identifiers": [base],
        "name": format!("{} {camera}", t.node),
        "manufacturer": "prom-daemon",
        "model": "PROM camera classifier",
        "sw_version": env!("CARGO_PKG_VERSION"),
    });
    let common = |object: &str, name: &str| {
        json!({
            "name": name,
            "unique_id": format!("{base}_{object}"),
            "object_id": format!("{base}_{object}"),
            "device": device,
            "availability_topic": t.availability_topic(),
            "payload_available": "online",
            "payload_not_available": "offline",
        })
    };
    let result = t.result_topic(camera);
    let stats = t.camera_stats_topic(camera);
    let with = |mut v: Value, extra: Value| {
        if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
            v.extend(extra.clone());
        }
        v
    };
    let entities = [
        (
            "sensor",
            "label",
            with(
                common("label", "Label"),
                json!({
                    "state_topic": result,
                    "value_template":
                        "{{ value_json.top_k[0].label if value_json.top_k else 'none' }}",
                    "json_attributes_topic": result,
                    "json_attributes_template": "{{ {'score': (value_json.top_k[0].score \
                        if value_json.top_k else 0), 'top_k': value_json.top_k, \
                        'sequence': value_json.sequence} | tojson }}",
                    "icon": "mdi:eye",
                }),
            ),
        ),
        (
            "sensor",
            "fps",
            with(
                common("fps", "Frame rate"),
                json!({
                    "state_topic": stats,
                    "value_template": "{{ value_json.fps }}",
                    "unit_of_measurement": "fps",
                    "state_class": "measurement",
                }),
            ),
        ),
        (
            "sensor",
            "latency",
            with(
                common("latency", "Latency"),
                json!({
                    "state_topic": stats,
                    "value_template": "{{ value_json.latency_ms_p50 }}",
                    "json_attributes_topic": stats,
                    "json_attributes_template":
                        "{{ {'p99_ms': value_json.latency_ms_p99} | tojson }}",
                    "unit_of_measurement": "ms",
                    "device_class": "duration",
                    "state_class": "measurement",
                }),
            ),
        ),
        (
            "switch",
            "classifying",
            with(
                common("classifying", "Classifying"),
                json!({
                    "command_topic": t.command_topic(camera),
                    "state_topic": t.state_topic(camera),
                    "value_template": "{{ 'OFF' if value == 'paused' else 'ON' }}",
                    "payload_on": "ON",
                    "payload_off": "OFF",
                    "state_on": "ON",
                    "state_off": "OFF",
                    "icon": "mdi:cctv",
                }),
            ),
        ),
    ];
    entities
        .into_iter()
        .map(|(component, object, config)| {
            let topic = format!(
                "{DISCOVERY_PREFIX}/{component}/prom_{node}/{}_{object}/config",
                id(camera)
            );
            (topic, serde_json::to_vec(&config).expect("JSON of a json! value"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::QoS;

    #[test]
    fn ids_in_topics_are_sanitised() {
        let t = MqttTarget {
            host: "h".into(),
            port: 1,
            prefix: "prom".into(),
            node: "pi.local".into(),
            qos: QoS::AtMostOnce,
            retain: false,
            credentials: None,
            tls_ca: None,
            version: Default::default(),
        };
        let topics: Vec<String> = discovery(&t, "door").into_iter().map(|(t, _)| t).collect();
        assert_eq!(
            topics,
            [
                "homeassistant/sensor/prom_pi_local/door_label/config",
                "homeassistant/sensor/prom_pi_local/door_fps/config",
                "homeassistant/sensor/prom_pi_local/door_latency/config",
                "homeassistant/switch/prom_pi_local/door_classifying/config",
            ]
        );
    }
}
