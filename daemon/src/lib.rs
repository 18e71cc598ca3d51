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
pub mod v4l2;
