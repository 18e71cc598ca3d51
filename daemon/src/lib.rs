//! prom-daemon: the library behind the `prom-daemon` service and the `promctl` tool.

pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod dbus;
pub mod imageio;
pub mod logging;
pub mod notify;
pub mod pipeline;
pub mod preprocess;
pub mod publish;
pub mod sources;
pub mod toolkit;

/// Locks `m`, taking the data even if a thread panicked while holding it: every value the
/// daemon guards stays consistent at each unlock, so poisoning carries no information here.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
pub mod v4l2;
