//! Log output of the daemon: journald (structured, with priorities) when systemd connected
//! standard error to the journal, plain text on standard error otherwise.
//!
//! systemd sets `JOURNAL_STREAM=<device>:<inode>` for services whose output goes to the
//! journal; the journal is used only when standard error is still that stream (a child of
//! the service with redirected output logs to its own standard error), as sd_journal
//! documents.

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::prelude::*;

/// Where logs went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogTarget {
    /// The systemd journal (native protocol).
    Journald,
    /// Plain text on standard error.
    Stderr,
}

/// Whether standard error is the journal stream systemd announced.
pub fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else { return false };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else { return false };
    std::fs::metadata("/proc/self/fd/2").is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// Installs the global subscriber at `level` (`RUST_LOG` overrides it when set). Returns
/// where logs go; falls back to standard error if the journal socket cannot be used.
pub fn init(level: tracing::Level) -> LogTarget {
    let filter = tracing_subscriber::EnvFilter::builder()
        .with_default_directive(LevelFilter::from_level(level).into())
        .from_env_lossy();
    if stderr_is_journal() {
        if let Ok(journal) = tracing_journald::layer() {
            let journal = journal.with_syslog_identifier("prom-daemon".into());
            if tracing_subscriber::registry().with(filter).with(journal).try_init().is_ok() {
                return LogTarget::Journald;
            }
            return LogTarget::Stderr;
        }
    }
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false);
    let _ = tracing_subscriber::registry().with(filter).with(fmt).try_init();
    LogTarget::Stderr
}
