//! systemd's service notification protocol (`sd_notify(3)`), spoken directly: one datagram
//! per message to the socket named by `$NOTIFY_SOCKET` (a path, or `@name` for the abstract
//! namespace). Outside systemd the variable is unset and every call is a no-op.
//!
//! The watchdog interval comes from `$WATCHDOG_USEC` (only when `$WATCHDOG_PID` is unset or
//! names this process, as systemd documents).

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// A connection to the service manager's notification socket (or none).
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, Target)>,
    watchdog: Option<Duration>,
}

#[derive(Debug, Clone)]
enum Target {
    Path(std::path::PathBuf),
    Abstract(Vec<u8>),
}

impl Notifier {
    /// From the environment of this process (`NOTIFY_SOCKET`, `WATCHDOG_USEC`,
    /// `WATCHDOG_PID`). A malformed variable is reported as an error rather than ignored.
    pub fn from_env() -> io::Result<Notifier> {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        Notifier::new(socket.as_deref(), usec.as_deref(), pid.as_deref(), std::process::id())
    }

    /// From explicit values (what [`Notifier::from_env`] reads).
    pub fn new(
        socket: Option<&std::ffi::OsStr>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        own_pid: u32,
    ) -> io::Result<Notifier> {
        let target = match socket {
            None => None,
            Some(s) if s.is_empty() => None,
            Some(s) => {
                use std::os::unix::ffi::OsStrExt;
                let bytes = s.as_bytes();
                let target = match bytes.strip_prefix(b"@") {
                    Some(name) => Target::Abstract(name.to_vec()),
                    None if bytes.starts_with(b"/") => Target::Path(s.into()),
                    None => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("NOTIFY_SOCKET={s:?} is neither a path nor @abstract"),
                        ))
                    }
                };
                Some((UnixDatagram::unbound()?, target))
            }
        };
        let for_us = watchdog_pid.is_none_or(|p| p.trim().parse::<u32>().ok() == Some(own_pid));
        let watchdog = match watchdog_usec {
            Some(v) if for_us => {
                let usec: u64 = v.trim().parse().map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("WATCHDOG_USEC={v:?}"))
                })?;
                (usec > 0).then(|| Duration::from_micros(usec))
            }
            _ => None,
        };
        Ok(Notifier { target, watchdog })
    }

    /// Whether a service manager listens.
    pub fn is_active(&self) -> bool {
        self.target.is_some()
    }

    /// The watchdog timeout systemd enforces, if it asked for pings.
    pub fn watchdog_timeout(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends `state` (newline-separated `KEY=value` assignments). A no-op without a socket.
    pub fn notify(&self, state: &str) -> io::Result<()> {
        let Some((socket, target)) = &self.target else { return Ok(()) };
        match target {
            Target::Path(path) => socket.send_to(state.as_bytes(), path).map(|_| ()),
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &addr).map(|_| ())
            }
        }
    }

    /// [`notify`](Notifier::notify), logging a failure instead of returning it: losing a
    /// notification must not take the daemon down.
    pub fn send(&self, state: &str) {
        if let Err(e) = self.notify(state) {
            tracing::warn!("sd_notify {:?}: {e}", state.lines().next().unwrap_or(""));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn sends_to_a_path_socket_and_reads_watchdog() {
        let dir = std::env::temp_dir().join(format!("prom-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(Some(path.as_os_str()), Some("2000000"), None, 7).unwrap();
        assert!(n.is_active());
        assert_eq!(n.watchdog_timeout(), Some(Duration::from_secs(2)));
        n.notify("READY=1\nSTATUS=ok").unwrap();
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=ok");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("prom-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::new(Some(OsStr::new(&format!("@{name}"))), None, None, 1).unwrap();
        n.notify("WATCHDOG=1").unwrap();
        let mut buf = [0u8; 16];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }

    #[test]
    fn watchdog_for_another_pid_or_unset_socket() {
        let n = Notifier::new(None, Some("1000"), Some("42"), 7).unwrap();
        assert_eq!(n.watchdog_timeout(), None);
        assert!(!n.is_active());
        n.notify("READY=1").unwrap();
        let n = Notifier::new(None, Some("1000"), Some("7"), 7).unwrap();
        assert_eq!(n.watchdog_timeout(), Some(Duration::from_millis(1)));
        assert!(Notifier::new(None, Some("soon"), None, 7).is_err());
        assert!(Notifier::new(Some(OsStr::new("relative")), None, None, 7).is_err());
    }
}
