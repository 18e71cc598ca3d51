//! Typed errors of the model format and engine. Every message names what is wrong.

use thiserror::Error;

/// Why a model file was rejected.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum FormatError {
    /// The bytes end before a structure does.
    #[error("truncated file: {what} extends past the end of the data")]
    Truncated {
        /// The structure that does not fit.
        what: &'static str,
    },
    /// Not a .prom file.
    #[error("not a .prom model file (bad magic)")]
    BadMagic,
    /// A version this build cannot read.
    #[error("unsupported .prom version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        /// Version in the file.
        found: u32,
        /// Version this build supports.
        supported: u32,
    },
    /// A checksum mismatch.
    #[error("checksum mismatch in the {what}: the file is damaged")]
    Checksum {
        /// What the checksum covers.
        what: String,
    },
    /// A section outside the file.
    #[error(
        "section {section} (offset {offset}, length {len}) lies outside the {file_len}-byte file"
    )]
    SectionOutOfBounds {
        /// Section name.
        section: &'static str,
        /// Declared offset.
        offset: usize,
        /// Declared length.
        len: usize,
        /// File length.
        file_len: usize,
    },
    /// Two sections overlap.
    #[error("sections {first} and {second} overlap")]
    Overlap {
        /// First section.
        first: &'static str,
        /// Second section.
        second: &'static str,
    },
    /// A number that cannot be used on this machine.
    #[error("{what} {value} is out of range")]
    OutOfRange {
        /// The field.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// Metadata JSON that does not parse or lacks fields.
    #[error("metadata: {0}")]
    Metadata(String),
    /// Anything else that is inconsistent, with a message naming it.
    #[error("{0}")]
    Invalid(String),
}

/// Opening a model file failed.
#[derive(Debug, Error)]
pub enum OpenError {
    /// The file could not be read or mapped.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid model.
    #[error("{path}: {source}")]
    Format {
        /// The path.
        path: String,
        /// What is wrong.
        #[source]
        source: FormatError,
    },
}
