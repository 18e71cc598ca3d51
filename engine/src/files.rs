//! Opening files that other users may have planted: models, and (in the daemon) images.

use std::io::{Error, ErrorKind, Read};
use std::path::Path;

/// Opens `path` for reading without blocking, and only if it is a regular file of at most
/// `max_bytes`; returns it with its length. `what` names the content in errors ("model", "image").
///
/// O_NONBLOCK keeps `open` from waiting for a FIFO writer (which would hang the caller for
/// as long as nobody writes); fstat then refuses the FIFO, a device or a directory.
pub fn open_regular(
    path: &Path,
    max_bytes: u64,
    what: &str,
) -> std::io::Result<(std::fs::File, usize)> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        let kind = if meta.is_dir() { "a directory" } else { "not a regular file" };
        return Err(Error::new(ErrorKind::InvalidInput, format!("{kind}: {what}s are files")));
    }
    let len = meta.len();
    if len > max_bytes {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("the file is {len} bytes, over the {max_bytes}-byte {what} size limit"),
        ));
    }
    let len = usize::try_from(len).map_err(|_| Error::other("the file does not fit in memory"))?;
    Ok((file, len))
}

/// Reads a whole file opened as by [`open_regular`]; a file that grows past its checked
/// length while it is read is refused.
pub fn read_regular(path: &Path, max_bytes: u64, what: &str) -> std::io::Result<Vec<u8>> {
    let (file, len) = open_regular(path, max_bytes, what)?;
    let mut bytes = Vec::with_capacity(len);
    file.take(len as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > len {
        return Err(Error::other("the file changed while it was read"));
    }
    Ok(bytes)
}
