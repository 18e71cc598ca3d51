//! `Set` on a read-only property answers `org.freedesktop.DBus.Error.PropertyReadOnly`.
//!
//! zbus 5 (through 5.19 and 6.2) answers `UnknownProperty` for a property that exists but has
//! no setter: its `Properties.Set` treats "no setter" as "not found". A client that checks the
//! error name (as the D-Bus specification's standard errors invite) would conclude the
//! property does not exist. [`ReadOnlyProperties`] wraps an interface the `interface` macro
//! implemented, forwards everything to it, and turns that answer into `PropertyReadOnly` for
//! the properties the interface declares. zbus calls this trait unstable across minor
//! versions, so the crate manifest pins zbus to 5.19.x; a change breaks the build, not
//! silently the behaviour (the daemon tests check the error name).

use std::collections::HashMap;

use zbus::message::Header;
use zbus::names::{InterfaceName, MemberName};
use zbus::object_server::{DispatchResult2, Interface, SignalEmitter};
use zbus::zvariant::{OwnedValue, Value};
use zbus::{fdo, Connection, Message, ObjectServer};

/// An interface whose properties are all read-only, with the right error for `Set`.
pub struct ReadOnlyProperties<I> {
    inner: I,
    /// The properties the interface declares (from its introspection).
    names: Vec<String>,
}

impl<I: Interface> ReadOnlyProperties<I> {
    /// Wraps `inner`; its introspection must declare no writable property.
    pub fn new(inner: I) -> ReadOnlyProperties<I> {
        let mut xml = String::new();
        inner.introspect_to_writer(&mut xml, 0);
        assert!(
            !xml.contains("access=\"readwrite\"") && !xml.contains("access=\"write\""),
            "ReadOnlyProperties wraps an interface with a writable property"
        );
        let names = xml
            .split("<property name=\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .map(str::to_owned)
            .collect();
        ReadOnlyProperties { inner, names }
    }
}

#[zbus::export::async_trait::async_trait]
impl<I: Interface> Interface for ReadOnlyProperties<I> {
    fn name() -> InterfaceName<'static> {
        I::name()
    }

    fn spawn_tasks_for_methods(&self) -> bool {
        self.inner.spawn_tasks_for_methods()
    }

    async fn get(
        &self,
        property_name: &str,
        server: &ObjectServer,
        connection: &Connection,
        header: Option<&Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> Option<fdo::Result<OwnedValue>> {
        self.inner.get(property_name, server, connection, header, emitter).await
    }

    async fn get_all(
        &self,
        server: &ObjectServer,
        connection: &Connection,
        header: Option<&Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> fdo::Result<HashMap<String, OwnedValue>> {
        self.inner.get_all(server, connection, header, emitter).await
    }

    fn set<'call>(
        &'call self,
        property_name: &'call str,
        value: &'call Value<'_>,
        server: &'call ObjectServer,
        connection: &'call Connection,
        header: Option<&'call Header<'_>>,
        emitter: &'call SignalEmitter<'_>,
    ) -> DispatchResult2<'call> {
        if self.names.iter().any(|n| n == property_name) {
            let message = format!("property {property_name} is read-only");
            return DispatchResult2::Async(Box::pin(async move {
                Err(fdo::Error::PropertyReadOnly(message))
            }));
        }
        self.inner.set(property_name, value, server, connection, header, emitter)
    }

    async fn set_mut(
        &mut self,
        property_name: &str,
        value: &Value<'_>,
        server: &ObjectServer,
        connection: &Connection,
        header: Option<&Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> Option<fdo::Result<()>> {
        self.inner.set_mut(property_name, value, server, connection, header, emitter).await
    }

    fn call<'call>(
        &'call self,
        server: &'call ObjectServer,
        connection: &'call Connection,
        msg: &'call Message,
        name: MemberName<'call>,
    ) -> DispatchResult2<'call> {
        self.inner.call(server, connection, msg, name)
    }

    fn call_mut<'call>(
        &'call mut self,
        server: &'call ObjectServer,
        connection: &'call Connection,
        msg: &'call Message,
        name: MemberName<'call>,
    ) -> DispatchResult2<'call> {
        self.inner.call_mut(server, connection, msg, name)
    }

    fn introspect_to_writer(&self, writer: &mut dyn std::fmt::Write, level: usize) {
        self.inner.introspect_to_writer(writer, level)
    }
}
