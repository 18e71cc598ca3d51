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
    let stream = std::env::var_os("JOURNAL_STREAM");
    let Ok(stderr) = std::fs::metadata("/proc/self/fd/2") else { return false };
    journal_stream_is(stream.as_deref(), stderr.dev(), stderr.ino())
}

/// Whether a `JOURNAL_STREAM` value (`<device>:<inode>`, decimal) names the file with
/// `dev` and `ino`.
pub fn journal_stream_is(value: Option<&std::ffi::OsStr>, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.and_then(|v| v.to_str()).and_then(|s| s.split_once(':')) else {
        return false;
    };
    d.parse::<u64>() == Ok(dev) && i.parse::<u64>() == Ok(ino)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn journal_stream_must_name_standard_error() {
        assert!(journal_stream_is(Some(OsStr::new("27:123456")), 27, 123456));
        assert!(!journal_stream_is(Some(OsStr::new("27:123457")), 27, 123456));
        assert!(!journal_stream_is(Some(OsStr::new("28:123456")), 27, 123456));
        assert!(!journal_stream_is(Some(OsStr::new("27")), 27, 123456));
        assert!(!journal_stream_is(Some(OsStr::new("a:b")), 27, 123456));
        assert!(!journal_stream_is(None, 27, 123456));
    }
}
