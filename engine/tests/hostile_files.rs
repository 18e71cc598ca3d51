//! Model files a hostile or careless user can hand the daemon: labels and metadata that
//! would make its D-Bus messages invalid, files padded to any size, and paths that are not
//! regular files (a FIFO blocks `open` until a writer comes). Each is refused by the engine's
//! validation, so every reader (daemon, promctl, reload) gets the same answer.

mod common;

use common::*;
use prom_engine::format::{SectionKind, ALIGN};
use prom_engine::{FormatError, Model, OpenError, MAX_LABEL_BYTES, MAX_NOTES_BYTES};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn valid() -> Vec<u8> {
    small_spec().to_bytes()
}

fn labels_of(bytes: &[u8]) -> Vec<String> {
    Model::from_bytes(bytes).expect("the base model is valid").labels().to_vec()
}

fn with_labels(bytes: &[u8], labels: &[String]) -> Vec<u8> {
    replace_section(bytes, SectionKind::Labels, labels.join("\n").as_bytes())
}

fn invalid_message(bytes: &[u8]) -> String {
    match Model::from_bytes(bytes) {
        Ok(_) => panic!("accepted"),
        Err(FormatError::Invalid(m) | FormatError::Metadata(m)) => m,
        Err(e) => panic!("unexpected error {e:?}"),
    }
}

/// Control characters of every kind: C0 (NUL first), DEL and C1.
const CONTROLS: [char; 9] =
    ['\0', '\u{1}', '\t', '\n', '\r', '\u{1b}', '\u{7f}', '\u{85}', '\u{9b}'];

#[test]
fn labels_with_control_characters_are_refused_at_any_position() {
    let bytes = valid();
    let labels = labels_of(&bytes);
    let n = labels.len();
    assert!(n >= 3);
    for c in CONTROLS {
        if c == '\n' {
            continue; // the separator: it makes one more label, refused as a count mismatch
        }
        for i in [0, n / 2, n - 1] {
            for at in [0, labels[i].len() / 2, labels[i].len()] {
                let mut bad = labels.clone();
                bad[i].insert(at, c);
                let m = invalid_message(&with_labels(&bytes, &bad));
                let want = format!("label {i} (line {}) contains the control character", i + 1);
                assert!(m.contains(&want), "{c:?} in label {i} at {at}: {m}");
                assert!(m.contains(&format!("U+{:04X}", c as u32)), "{m}");
            }
        }
    }
}

#[test]
fn labels_must_be_non_empty_and_bounded() {
    let bytes = valid();
    let labels = labels_of(&bytes);
    let last = labels.len() - 1;
    for (i, text) in [(0, ""), (last, " "), (1, "\u{3000}")] {
        let mut bad = labels.clone();
        bad[i] = text.to_owned();
        let m = invalid_message(&with_labels(&bytes, &bad));
        assert!(m.contains(&format!("label {i} (line {}) is empty", i + 1)), "{text:?}: {m}");
    }
    for len in [MAX_LABEL_BYTES + 1, 4096, 1 << 20] {
        let mut bad = labels.clone();
        bad[last] = "x".repeat(len);
        let m = invalid_message(&with_labels(&bytes, &bad));
        assert!(m.contains(&format!("is {len} bytes long (at most {MAX_LABEL_BYTES})")), "{m}");
    }
    // At the limit, and with non-ASCII text, labels are fine.
    let mut ok = labels.clone();
    ok[0] = "é".repeat(MAX_LABEL_BYTES / 2);
    ok[last] = "Ünïcödé label, with punctuation (and spaces)".into();
    let model = Model::from_bytes(&with_labels(&bytes, &ok)).expect("valid labels");
    assert_eq!(model.labels(), &ok[..]);
    // Not UTF-8.
    let mut raw = labels.join("\n").into_bytes();
    raw[1] = 0xFF;
    let m = invalid_message(&replace_section(&bytes, SectionKind::Labels, &raw));
    assert!(m.contains("not UTF-8"), "{m}");
}

#[test]
fn metadata_strings_are_checked_like_labels() {
    let bytes = valid();
    let with_meta = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut meta = serde_json::to_value(small_metadata()).unwrap();
        edit(&mut meta);
        replace_section(&bytes, SectionKind::Meta, meta.to_string().as_bytes())
    };
    for field in ["architecture", "producer", "producer_version", "notes"] {
        for c in ['\0', '\u{1b}', '\r', '\u{85}'] {
            let b = with_meta(&|m| m[field] = format!("abc{c}def").into());
            let m = invalid_message(&b);
            assert!(m.contains(&format!("{field} contains the control character")), "{m}");
        }
        let max = if field == "notes" { MAX_NOTES_BYTES } else { MAX_LABEL_BYTES };
        let b = with_meta(&|m| m[field] = "y".repeat(max + 1).into());
        assert!(invalid_message(&b).contains(&format!("{field} is {} bytes long", max + 1)));
    }
    // Notes are text: lines and tabs are allowed there (only there).
    let b = with_meta(&|m| m["notes"] = "line one\n\tline two".into());
    assert_eq!(Model::from_bytes(&b).unwrap().metadata().notes, "line one\n\tline two");
    let b = with_meta(&|m| m["architecture"] = "mobile\nnetv2".into());
    assert!(invalid_message(&b).contains("architecture contains the control character U+000A"));
}

// -- size ---------------------------------------------------------------------------------

/// `bytes` with `extra` zero bytes appended and the header's file size (and checksum)
/// updated to match: the padded-to-any-size reproduction.
fn padded(bytes: &[u8], extra: usize) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b.resize(bytes.len() + extra, 0);
    let len = b.len() as u64;
    wr_u64(&mut b, 24, len);
    fix_header_crc(&mut b);
    b
}

#[test]
fn padding_after_the_last_section_or_between_sections_is_refused() {
    let bytes = valid();
    for extra in [1, 63, 64, 4096, 1 << 20] {
        let m = invalid_message(&padded(&bytes, extra));
        let want =
            format!("header says {} bytes but the last section ends at", bytes.len() + extra);
        assert!(m.contains(&want), "{extra} bytes after the end: {m}");
    }
    // A gap before each section in turn: move it (and everything after it) back.
    let n_sections = entries(&bytes).len();
    for i in 0..n_sections {
        for gap in [ALIGN, 16 * ALIGN] {
            let mut sorted = entries(&bytes);
            sorted.sort_by_key(|e| e.offset);
            let moved = sorted[i];
            let mut b = bytes.clone();
            let from = moved.offset as usize;
            b.splice(from..from, std::iter::repeat_n(0u8, gap));
            for e in &sorted[i..] {
                wr_u64(&mut b, entry_pos(e.index) + 8, e.offset + gap as u64);
            }
            let len = b.len() as u64;
            wr_u64(&mut b, 24, len);
            fix_header_crc(&mut b);
            let m = invalid_message(&b);
            assert!(m.contains("bytes of padding before the"), "gap {gap} before {i}: {m}");
        }
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("prom-hostile-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Bytes this process has read through read(2) and friends so far.
fn bytes_read_so_far() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").expect("/proc/self/io");
    let line = io.lines().find(|l| l.starts_with("rchar:")).expect("rchar");
    line[6..].trim().parse().unwrap()
}

#[test]
fn huge_files_are_refused_before_they_are_read() {
    let dir = temp_dir("huge");
    let bytes = valid();
    // 1 GiB, sparse: a valid model and zeros, with the header claiming the whole file.
    const GIB: usize = 1 << 30;
    let path = dir.join("padded.prom");
    {
        let head = padded(&bytes, 0);
        let mut b = head.clone();
        wr_u64(&mut b, 24, GIB as u64);
        fix_header_crc(&mut b);
        std::fs::write(&path, &b).unwrap();
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(GIB as u64).unwrap();
    }
    let before = bytes_read_so_far();
    for result in [Model::read(&path), Model::open(&path)] {
        let e = result.expect_err("a 1 GiB file was accepted").to_string();
        assert!(e.contains("over the 67108864-byte model size limit"), "{e}");
    }
    // With no size limit, the layout check still refuses it after reading the header.
    for result in [Model::read_limited(&path, u64::MAX), Model::open_limited(&path, u64::MAX)] {
        let e = result.expect_err("accepted with no limit").to_string();
        assert!(e.contains("the last section ends at"), "{e}");
    }
    let read = bytes_read_so_far() - before;
    assert!(read < 1 << 20, "{read} bytes read to refuse a padded 1 GiB file");

    // The limit is inclusive and applies to valid files too.
    let good = dir.join("good.prom");
    std::fs::write(&good, &bytes).unwrap();
    let len = bytes.len() as u64;
    assert!(Model::read_limited(&good, len).is_ok() && Model::open_limited(&good, len).is_ok());
    let e = Model::read_limited(&good, len - 1).unwrap_err().to_string();
    assert!(e.contains(&format!("the file is {len} bytes, over the {}-byte", len - 1)), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

// -- not regular files --------------------------------------------------------------------

/// Runs `f` on another thread and fails if it does not return within 10 s (a blocking open
/// would hang the test otherwise).
fn within_seconds<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(f()).unwrap());
    rx.recv_timeout(Duration::from_secs(10)).expect("blocked")
}

fn refused_quickly(path: &Path, want: &str) {
    let p = path.to_path_buf();
    let errors = within_seconds(move || {
        [Model::read(&p).err(), Model::open(&p).err(), Model::read_limited(&p, 1 << 40).err()]
    });
    for e in errors {
        match e {
            Some(OpenError::Io { source, .. }) => {
                assert!(source.to_string().contains(want), "{}: {source}", path.display())
            }
            other => panic!("{}: {other:?}", path.display()),
        }
    }
}

#[test]
fn fifos_devices_and_directories_are_refused_without_blocking() {
    let dir = temp_dir("special");
    let fifo = dir.join("model.prom");
    let status = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(status.success());
    refused_quickly(&fifo, "not a regular file");
    // A symlink to the FIFO is the FIFO.
    let link = dir.join("link.prom");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    refused_quickly(&link, "not a regular file");
    refused_quickly(Path::new("/dev/null"), "not a regular file");
    refused_quickly(Path::new("/dev/zero"), "not a regular file");
    refused_quickly(&dir, "a directory");
    std::fs::remove_dir_all(&dir).unwrap();
}
