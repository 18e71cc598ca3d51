//! The Rust client example of docs/DBUS.md as a program: prints the daemon's state, then
//! camera cam0's results as they arrive. The system bus, or the one in
//! `DBUS_SYSTEM_BUS_ADDRESS`. scripts/test-dbus-examples.py checks that the block in
//! docs/DBUS.md is this program's body, and runs it against a live daemon.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // docs/DBUS.md begin
    let conn = zbus::blocking::Connection::system()?;
    let root = prom_daemon::dbus::Classifier1ProxyBlocking::new(&conn)?;
    println!("{}", root.state()?);
    let cam = prom_daemon::dbus::Camera1ProxyBlocking::builder(&conn)
        .path(prom_daemon::dbus::camera_path("cam0"))?
        .build()?;
    for signal in cam.receive_classified()? {
        let args = signal.args()?;
        println!("{} {:?}", args.sequence, args.top_k);
    }
    // docs/DBUS.md end
    Ok(())
}
