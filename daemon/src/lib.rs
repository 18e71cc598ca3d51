//! prom-daemon: the library behind the `prom-daemon` service and the `promctl` tool.

pub mod cli;
pub mod config;
pub mod dbus;
pub mod imageio;
pub mod preprocess;
pub mod sources;
