//! The daemon's own notifications, so the bridge reacts when they happen instead of at its
//! next stats interval: `PropertiesChanged` of a camera's `State` (paused or resumed by
//! anyone: the switch, promctl, another client) is published on the state topic at once;
//! ObjectManager's `InterfacesAdded`/`InterfacesRemoved` (cameras added or removed by a
//! reload) and the daemon's name changing owner (started, stopped, restarted) make the
//! publisher read the cameras again, announcing new ones and withdrawing gone ones.
//!
//! Only signals from the owner of io.prom.Classifier1 are taken (the match rules name it as
//! the sender; the bus resolves it to the current owner), so other clients cannot forge
//! them. Each rule has its own thread and its own reconnection with back-off.

use std::collections::HashMap;
use std::time::Duration;

use crossbeam_channel::Sender;
use prom_daemon::client::BusArgs;
use prom_daemon::dbus::{BUS_NAME, CAMERA_INTERFACE, ROOT_PATH};
use zbus::zvariant::OwnedValue;

/// What the publisher should do about an event.
#[derive(Debug, PartialEq)]
pub enum Change {
    /// A camera's `State` property is now this.
    State { camera: String, state: String },
    /// Cameras may have come or gone (or the broker connection is new): read them again.
    Cameras,
}

type Handler = fn(&zbus::Message) -> Option<Change>;
type Rule = fn() -> zbus::Result<zbus::MatchRule<'static>>;

/// Starts the watching threads; they run for the life of the process.
pub fn spawn(bus: &BusArgs, changes: Sender<Change>) -> std::io::Result<()> {
    let rules: [(&str, Rule, Handler); 3] = [
        ("dbus-props", properties_rule, state_change),
        ("dbus-objects", objects_rule, |_| Some(Change::Cameras)),
        ("dbus-owner", owner_rule, |_| Some(Change::Cameras)),
    ];
    for (name, rule, handle) in rules {
        let bus = bus.clone();
        let changes = changes.clone();
        std::thread::Builder::new().name(name.into()).spawn(move || {
            let mut backoff = Duration::from_millis(100);
            loop {
                let followed = bus.connect().and_then(|conn| {
                    let iter =
                        zbus::blocking::MessageIterator::for_match_rule(rule()?, &conn, Some(64))?;
                    backoff = Duration::from_millis(100);
                    for msg in iter {
                        if let Some(change) = handle(&msg?) {
                            if changes.send(change).is_err() {
                                return Ok(());
                            }
                        }
                    }
                    Ok(())
                });
                if let Err(e) = followed {
                    tracing::debug!("D-Bus ({name}): {e}; again in {backoff:?}");
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        })?;
    }
    Ok(())
}

fn properties_rule() -> zbus::Result<zbus::MatchRule<'static>> {
    Ok(zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(BUS_NAME)?
        .interface("org.freedesktop.DBus.Properties")?
        .member("PropertiesChanged")?
        .path_namespace(ROOT_PATH)?
        .arg(0, CAMERA_INTERFACE)?
        .build())
}

fn objects_rule() -> zbus::Result<zbus::MatchRule<'static>> {
    Ok(zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(BUS_NAME)?
        .interface("org.freedesktop.DBus.ObjectManager")?
        .path(ROOT_PATH)?
        .build())
}

fn owner_rule() -> zbus::Result<zbus::MatchRule<'static>> {
    Ok(zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender("org.freedesktop.DBus")?
        .interface("org.freedesktop.DBus")?
        .member("NameOwnerChanged")?
        .arg(0, BUS_NAME)?
        .build())
}

/// `State` out of a camera's `PropertiesChanged` (the statistics that change every few
/// seconds are left to the stats interval).
fn state_change(msg: &zbus::Message) -> Option<Change> {
    let header = msg.header();
    let path = header.path()?.as_str().to_owned();
    let (iface, changed, _): (String, HashMap<String, OwnedValue>, Vec<String>) =
        msg.body().deserialize().ok()?;
    if iface != CAMERA_INTERFACE {
        return None;
    }
    let state = String::try_from(changed.get("State")?.try_clone().ok()?).ok()?;
    let camera = prom_daemon::client::camera_name(&path).to_owned();
    Some(Change::State { camera, state })
}
