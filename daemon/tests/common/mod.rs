//! Shared by the D-Bus test files: a private dbus-daemon and proxy helpers.
#![allow(dead_code)] // each test file uses a different part

pub mod bombs;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use prom_daemon::dbus::{
    camera_path, BusChoice, Camera1ProxyBlocking, Classifier1ProxyBlocking, Service, ServiceOptions,
};
use zbus::blocking::Connection;
use zbus::proxy::CacheProperties;

/// A private dbus-daemon, killed (and its directory removed) on drop.
pub struct PrivateBus {
    child: Child,
    pub dir: std::path::PathBuf,
    pub address: String,
}

/// Starts dbus-daemon with the configuration in `dir/bus.conf`; returns it and its address.
fn spawn_bus(dir: &std::path::Path) -> (Child, String) {
    let config_path = dir.join("bus.conf");
    let mut child = match Command::new("dbus-daemon")
        .arg(format!("--config-file={}", config_path.display()))
        .arg("--nofork")
        .arg("--print-address=1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("dbus-daemon.log")).unwrap())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir_all(dir);
            panic!(
                "these tests need `dbus-daemon` on PATH \
                 (Debian/Ubuntu: apt install dbus-daemon): cannot run it: {e}"
            )
        }
    };
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let address = line.trim().to_owned();
    assert!(
        !address.is_empty(),
        "dbus-daemon printed no address; its log: {}",
        std::fs::read_to_string(dir.join("dbus-daemon.log")).unwrap_or_default()
    );
    (child, address)
}

impl PrivateBus {
    /// A session-type bus where everything is allowed.
    pub fn start() -> PrivateBus {
        PrivateBus::with_config(|dir| {
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}/bus</listen>
  <auth>EXTERNAL</auth>
  <limit name="max_message_size">67108864</limit>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                dir.display()
            )
        })
    }

    /// A bus run with the configuration `config(dir)`, which must listen on
    /// `unix:path=<dir>/bus`.
    pub fn with_config(config: impl FnOnce(&std::path::Path) -> String) -> PrivateBus {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "prom-dbus-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("bus.conf"), config(&dir)).unwrap();
        let (child, address) = spawn_bus(&dir);
        PrivateBus { child, dir, address }
    }

    /// Kills the bus daemon (every connection is lost) and starts a new one on the same
    /// socket, as a restart of the system bus does.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.dir.join("bus"));
        let (child, address) = spawn_bus(&self.dir);
        assert_eq!(address.split(',').next(), self.address.split(',').next());
        self.child = child;
        self.address = address;
    }

    pub fn client(&self) -> Connection {
        zbus::blocking::connection::Builder::address(self.address.as_str())
            .unwrap()
            .build()
            .unwrap()
    }

    pub fn service(&self, opts: ServiceOptions) -> Service {
        Service::start(BusChoice::Address(self.address.clone()), opts).unwrap()
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn root_proxy(conn: &Connection) -> Classifier1ProxyBlocking<'static> {
    Classifier1ProxyBlocking::builder(conn).cache_properties(CacheProperties::No).build().unwrap()
}

pub fn camera_proxy(conn: &Connection, name: &str) -> Camera1ProxyBlocking<'static> {
    Camera1ProxyBlocking::builder(conn)
        .path(camera_path(name))
        .unwrap()
        .cache_properties(CacheProperties::No)
        .build()
        .unwrap()
}

pub fn method_error(e: zbus::Error) -> (String, String) {
    match e {
        zbus::Error::MethodError(name, msg, _) => (name.to_string(), msg.unwrap_or_default()),
        e => panic!("expected a D-Bus method error, got {e:?}"),
    }
}
