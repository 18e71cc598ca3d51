//! Damage tests of the `.prom` container and graph validation: a valid model round-trips;
//! truncated, bit-flipped and structurally inconsistent files are rejected with the specific
//! [`FormatError`] variant and a message naming what is wrong, and nothing ever panics.
//!
//! Structural damage is produced either by mutating a [`ModelSpec`] (the writer does not
//! validate) or by patching bytes and recomputing the checksums (`common::patched`), so the
//! check under test, not a checksum, is what fails.

mod common;

use common::*;
use prom_engine::format::{SectionKind, ALIGN, HEADER_SIZE, VERSION};
use prom_engine::{FormatError, Model, ModelSpec, OpKind, OpenError};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

// ---------------------------------------------------------------------------------------
// Helpers

thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `catch_unwind` that keeps the default panic hook from printing the (expected, collected
/// and reported) panics of this thread; other threads' panics print as usual.
fn quiet_catch<R>(f: impl FnOnce() -> R) -> std::thread::Result<R> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                default(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    r
}

/// Parses `bytes`, turning a panic into a test failure that says which input caused it.
fn parse(bytes: &[u8], what: &str) -> Result<Model, FormatError> {
    match quiet_catch(|| Model::from_bytes(bytes)) {
        Ok(r) => r,
        Err(p) => panic!("Model::from_bytes panicked on {what}: {}", panic_message(&p)),
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "<non-string panic>".into())
}

/// Reads every blob of every op through the model accessors (what the engine does at plan
/// time); returns the panic message if an accessor panics.
fn touch_blobs(model: &Model) -> Result<u64, String> {
    quiet_catch(|| {
        let mut sum = 0u64;
        let mut add = |v: u64| sum = sum.wrapping_add(v);
        for op in &model.graph().ops {
            let r = &op.record;
            model.blob_u8(r.weights).iter().for_each(|&b| add(u64::from(b)));
            add(model.blob_i8(r.weights).len() as u64);
            model.blob_i32(r.bias).iter().for_each(|&v| add(v as u64));
            model.blob_i32(r.multipliers).iter().for_each(|&v| add(v as u64));
            model.blob_u8(r.shifts).iter().for_each(|&b| add(u64::from(b)));
        }
        sum
    })
    .map_err(|p| panic_message(&p))
}

fn valid_bytes() -> Vec<u8> {
    small_spec().to_bytes()
}

/// Serialises a mutated spec and parses it; must fail.
fn spec_err(mutate: impl FnOnce(&mut ModelSpec)) -> FormatError {
    let mut spec = small_spec();
    mutate(&mut spec);
    match parse(&spec.to_bytes(), "a mutated spec") {
        Ok(_) => panic!("a damaged spec was accepted"),
        Err(e) => e,
    }
}

/// Serialises a mutated spec and parses it; must succeed.
fn spec_ok(mutate: impl FnOnce(&mut ModelSpec)) -> Model {
    let mut spec = small_spec();
    mutate(&mut spec);
    parse(&spec.to_bytes(), "a mutated spec").expect("boundary value must be accepted")
}

/// Patches bytes, fixes every checksum, parses; must fail.
fn patch_err(patch: impl FnOnce(&mut Vec<u8>)) -> FormatError {
    let bytes = patched(&valid_bytes(), patch);
    match parse(&bytes, "patched bytes") {
        Ok(_) => panic!("patched bytes were accepted"),
        Err(e) => e,
    }
}

#[track_caller]
fn assert_invalid(e: &FormatError, needles: &[&str]) {
    match e {
        FormatError::Invalid(m) => {
            for n in needles {
                assert!(m.contains(n), "Invalid message {m:?} does not contain {n:?}");
            }
        }
        other => panic!("expected FormatError::Invalid containing {needles:?}, got {other:?}"),
    }
}

#[track_caller]
fn assert_metadata(e: &FormatError, needles: &[&str]) {
    match e {
        FormatError::Metadata(m) => {
            for n in needles {
                assert!(m.contains(n), "Metadata message {m:?} does not contain {n:?}");
            }
        }
        other => panic!("expected FormatError::Metadata containing {needles:?}, got {other:?}"),
    }
}

/// A fresh directory under cargo's per-target temp dir.
fn temp_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("format_damage-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn dir_names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Names the graph-section field at file position `pos` (for failure messages).
fn describe_graph_pos(bytes: &[u8], pos: usize) -> String {
    const OP_FIELDS: [(usize, &str); 16] = [
        (0, "kind"),
        (1, "stride"),
        (2, "flags"),
        (4, "input0"),
        (8, "input1"),
        (12, "output"),
        (16, "output_min/max, shift"),
        (20, "multiplier_a"),
        (24, "multiplier_b"),
        (28, "reserved"),
        (32, "weights blob offset"),
        (40, "weights blob len"),
        (48, "bias blob offset"),
        (56, "bias blob len"),
        (64, "multipliers blob offset"),
        (72, "multipliers blob len"),
    ];
    let g = section_range(bytes, SectionKind::Graph).start;
    let tensors_at = g + prom_engine::format::GRAPH_HEADER_SIZE;
    let ops_at = op_record_pos(bytes, 0);
    if pos < tensors_at {
        format!("byte {pos} (graph header +{})", pos - g)
    } else if pos < ops_at {
        let rel = pos - tensors_at;
        format!("byte {pos} (tensor {} record +{})", rel / 24, rel % 24)
    } else {
        let rel = pos - ops_at;
        let (op, off) = (rel / 128, rel % 128);
        let field = match off {
            80..=87 => "shifts blob offset",
            88..=95 => "shifts blob len",
            96.. => "reserved",
            _ => OP_FIELDS.iter().rev().find(|(o, _)| *o <= off).map_or("?", |f| f.1),
        };
        format!("byte {pos} (op {op} record +{off}: {field})")
    }
}

/// Where each byte of a valid file belongs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Region {
    Header,
    Table,
    Section(SectionKind),
    Padding,
}

fn region_of(bytes: &[u8], pos: usize) -> Region {
    if pos < HEADER_SIZE {
        return Region::Header;
    }
    if pos < TABLE_END {
        return Region::Table;
    }
    for kind in SectionKind::ALL {
        if section_range(bytes, kind).contains(&pos) {
            return Region::Section(kind);
        }
    }
    Region::Padding
}

// ---------------------------------------------------------------------------------------
// The valid model

#[test]
fn valid_model_round_trips_through_bytes() {
    let spec = small_spec();
    let bytes = spec.to_bytes();
    assert_eq!(bytes, spec.to_bytes(), "serialisation is deterministic");
    let model = parse(&bytes, "the valid model").expect("valid model");

    assert_eq!(model.metadata(), &spec.metadata);
    assert_eq!(model.labels(), &spec.labels[..]);
    assert_eq!(model.bytes(), &bytes[..]);
    assert_eq!(model.checksum(), crc32fast::hash(&bytes));

    for (s, kind) in model.sections().iter().zip(SectionKind::ALL) {
        assert_eq!(s.kind, kind);
        assert_eq!(s.offset % ALIGN, 0, "{kind:?} section aligned");
        assert_eq!(s.crc32, crc32fast::hash(&bytes[s.offset..s.offset + s.len]));
    }

    let g = model.graph();
    assert_eq!((g.header.input_height, g.header.input_width), (INPUT, INPUT));
    assert_eq!(g.header.input_zero_point, spec.input_zero_point);
    assert_eq!(g.header.input_scale, spec.input_scale);
    assert_eq!(g.classes(), CLASSES);
    assert_eq!(g.classifier().record.kind, OpKind::Linear);
    assert_eq!(g.tensors.len(), spec.tensors.len());
    for (t, r) in g.tensors.iter().zip(&spec.tensors) {
        assert_eq!(
            (t.height, t.width, t.channels),
            (r.height as usize, r.width as usize, r.channels as usize)
        );
        assert_eq!((t.scale, t.zero_point), (r.scale, r.zero_point));
    }
    assert_eq!(g.ops.len(), spec.ops.len());
    for (i, (op, s)) in g.ops.iter().zip(&spec.ops).enumerate() {
        let r = &op.record;
        assert_eq!(r.kind, s.kind, "op {i}");
        assert_eq!(
            (r.stride, r.flags, r.input0, r.input1),
            (s.stride, s.flags, s.input0, s.input1)
        );
        assert_eq!(r.output as usize, i + 1);
        assert_eq!((r.output_min, r.output_max, r.shift), (s.output_min, s.output_max, s.shift));
        assert_eq!((r.multiplier_a, r.multiplier_b), (s.multiplier_a, s.multiplier_b));
        if !s.weights.is_empty() {
            assert_eq!(model.blob_u8(r.weights), &s.weights[..], "op {i} weights");
            assert_eq!(model.blob_i32(r.bias), &s.bias[..], "op {i} bias");
        }
        if !s.multipliers.is_empty() {
            assert_eq!(model.blob_i32(r.multipliers), &s.multipliers[..], "op {i} multipliers");
            assert_eq!(model.blob_u8(r.shifts), &s.shifts[..], "op {i} shifts");
        }
        for b in [r.weights, r.bias, r.multipliers, r.shifts] {
            if b.len != 0 {
                assert_eq!(b.offset % ALIGN, 0, "op {i}: absolute blob offsets are aligned");
            }
        }
    }
    assert_eq!(g.ops[OP_STEM].macs, (4 * 4 * C * 27) as u64);
    assert_eq!(g.ops[OP_EXPAND].params, (C * E + E) as u64);
    touch_blobs(&model).expect("blob accessors work on the valid model");
}

#[test]
fn valid_model_write_and_open() {
    let dir = temp_dir("write-open");
    let path = dir.join("model.prom");
    let spec = small_spec();
    spec.write(&path).expect("write");
    assert_eq!(dir_names(&dir), ["model.prom"], "no temporary file left behind");
    assert_eq!(std::fs::read(&path).unwrap(), spec.to_bytes());
    let model = Model::open(&path).expect("open");
    assert_eq!(model.metadata(), &spec.metadata);
    assert_eq!(model.labels(), &spec.labels[..]);
    assert_eq!(model.graph(), parse(&spec.to_bytes(), "valid").unwrap().graph());
    touch_blobs(&model).expect("blob accessors work on a mapped model");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn write_replaces_an_existing_file_atomically() {
    let dir = temp_dir("replace");
    let path = dir.join("model.prom");
    let first = small_spec();
    first.write(&path).unwrap();
    let old = Model::open(&path).unwrap();
    let old_checksum = old.checksum();

    let mut second = small_spec();
    second.labels = (0..CLASSES).map(|i| format!("replaced label {i}")).collect();
    second.metadata.notes = "second version".into();
    second.write(&path).unwrap();

    assert_eq!(dir_names(&dir), ["model.prom"], "no temporary file left behind");
    let new = Model::open(&path).unwrap();
    assert_eq!(new.labels(), &second.labels[..]);
    assert_eq!(new.metadata().notes, "second version");
    // The file was replaced by rename, not rewritten in place: the old mapping still holds
    // the old, intact model.
    assert_eq!(old.labels(), &first.labels[..]);
    assert_eq!(old.checksum(), old_checksum);
    assert_eq!(old.bytes(), &first.to_bytes()[..]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn write_failure_leaves_nothing_behind() {
    let dir = temp_dir("write-fail");
    let missing = dir.join("no-such-dir").join("model.prom");
    assert!(small_spec().write(&missing).is_err());
    assert_eq!(dir_names(&dir), Vec::<String>::new());
    // A directory where the file should go: the rename fails, the temp file is removed.
    let path = dir.join("model.prom");
    std::fs::create_dir(&path).unwrap();
    assert!(small_spec().write(&path).is_err());
    assert_eq!(dir_names(&dir), ["model.prom"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn open_reports_io_and_format_errors_with_the_path() {
    let dir = temp_dir("open-errors");
    let missing = dir.join("missing.prom");
    match Model::open(&missing) {
        Err(OpenError::Io { path, .. }) => assert!(path.ends_with("missing.prom")),
        other => panic!("expected OpenError::Io, got {other:?}"),
    }
    let damaged = dir.join("damaged.prom");
    let mut bytes = valid_bytes();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    std::fs::write(&damaged, &bytes).unwrap();
    match Model::open(&damaged) {
        Err(OpenError::Format { path, source: FormatError::Checksum { what } }) => {
            assert!(path.ends_with("damaged.prom"));
            assert_eq!(what, "weights section");
        }
        other => panic!("expected OpenError::Format(Checksum), got {other:?}"),
    }
    let empty = dir.join("empty.prom");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        Model::open(&empty),
        Err(OpenError::Format { source: FormatError::Truncated { what: "header" }, .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------
// Truncation

/// Lengths to cut at: every length through the header and table, then a sample through
/// the rest including every section boundary.
fn cut_lengths(bytes: &[u8]) -> Vec<usize> {
    let n = bytes.len();
    let mut lens: Vec<usize> = (0..=TABLE_END).collect();
    lens.extend((TABLE_END..n).step_by(13));
    for kind in SectionKind::ALL {
        let r = section_range(bytes, kind);
        for l in [r.start.saturating_sub(1), r.start, r.start + 1, r.end - 1, r.end, r.end + 1] {
            lens.push(l);
        }
    }
    lens.push(n - 1);
    lens.retain(|&l| l < n);
    lens.sort();
    lens.dedup();
    lens
}

#[test]
fn truncated_files_are_rejected() {
    let bytes = valid_bytes();
    let lens = cut_lengths(&bytes);
    assert!(lens.len() > TABLE_END + 100);
    for len in lens {
        let err = parse(&bytes[..len], &format!("the first {len} bytes")).err();
        let want = match len {
            _ if len < HEADER_SIZE => "header",
            _ if len < TABLE_END => "section table",
            _ => "file (shorter than its header says)",
        };
        assert_eq!(err, Some(FormatError::Truncated { what: want }), "cut at {len}");
    }
}

#[test]
fn truncated_files_with_a_consistent_header_are_rejected() {
    // Cut, then fix the header's file size and CRC, so the section bounds check is what fails.
    let bytes = valid_bytes();
    let table = entries(&bytes);
    for len in cut_lengths(&bytes).into_iter().filter(|&l| l >= HEADER_SIZE) {
        let mut cut = bytes[..len].to_vec();
        wr_u64(&mut cut, 24, len as u64);
        if len >= TABLE_END {
            fix_header_crc(&mut cut);
        }
        let err = parse(&cut, &format!("{len} bytes with a fixed header")).err();
        if len < TABLE_END {
            assert_eq!(err, Some(FormatError::Truncated { what: "section table" }), "cut at {len}");
            continue;
        }
        let first_outside = table.iter().find(|e| (e.offset + e.len) as usize > len).unwrap();
        let kind = SectionKind::ALL[first_outside.index];
        assert_eq!(
            err,
            Some(FormatError::SectionOutOfBounds {
                section: kind.name(),
                offset: first_outside.offset as usize,
                len: first_outside.len as usize,
                file_len: len,
            }),
            "cut at {len}"
        );
    }
}

#[test]
fn trailing_bytes_are_rejected() {
    let mut bytes = valid_bytes();
    let n = bytes.len();
    bytes.extend_from_slice(&[0; 64]);
    match parse(&bytes, "64 trailing bytes") {
        Err(FormatError::Invalid(m)) => {
            assert!(m.contains(&format!("header says {n}")), "{m}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Magic and version

#[test]
fn wrong_magic_is_bad_magic() {
    let bytes = valid_bytes();
    for pos in 0..8 {
        for (x, fix) in [(0xFF, false), (0x01, false), (0x20, true)] {
            let mut b = bytes.clone();
            b[pos] ^= x;
            if fix {
                fix_header_crc(&mut b);
            }
            assert_eq!(parse(&b, "bad magic").err(), Some(FormatError::BadMagic), "byte {pos}");
        }
    }
    let mut gguf = bytes.clone();
    gguf[..8].copy_from_slice(b"GGUF\x03\0\0\0");
    assert_eq!(parse(&gguf, "gguf").err(), Some(FormatError::BadMagic));
    assert_eq!(parse(&[0u8; 64], "zeros").err(), Some(FormatError::BadMagic));
}

#[test]
fn wrong_version_is_unsupported_version() {
    let bytes = valid_bytes();
    for found in [0, VERSION + 1, 0x100 | VERSION, u32::MAX] {
        for fix in [false, true] {
            let mut b = bytes.clone();
            wr_u32(&mut b, 8, found);
            if fix {
                fix_header_crc(&mut b);
            }
            assert_eq!(
                parse(&b, "wrong version").err(),
                Some(FormatError::UnsupportedVersion { found, supported: VERSION }),
                "version {found}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Single-byte damage

#[test]
fn every_header_and_table_byte_flip_is_rejected() {
    let bytes = valid_bytes();
    for pos in 0..TABLE_END {
        let mut b = bytes.clone();
        b[pos] ^= 0xFF;
        let err = match parse(&b, &format!("byte {pos} flipped")) {
            Ok(_) => panic!("flipping byte {pos} was accepted"),
            Err(e) => e,
        };
        let ok = match pos {
            0..=7 => err == FormatError::BadMagic,
            8..=11 => matches!(err, FormatError::UnsupportedVersion { supported: VERSION, .. }),
            12..=15 => matches!(&err, FormatError::Invalid(m) if m.contains("header size")),
            16..=19 => matches!(&err, FormatError::Invalid(m) if m.contains("section count")),
            20..=23 => matches!(&err, FormatError::Invalid(m) if m.contains("flags")),
            // The file size: the header checksum covers it.
            24..=31 => {
                matches!(err, FormatError::Truncated { .. } | FormatError::Checksum { .. })
                    || matches!(&err, FormatError::Invalid(m) if m.contains("header says"))
            }
            32..=39 => matches!(&err, FormatError::Invalid(m) if m.contains("section table at")),
            40..=59 => matches!(&err, FormatError::Invalid(m) if m.contains("reserved")),
            _ => err == FormatError::Checksum { what: "header and section table".into() },
        };
        assert!(ok, "byte {pos} flipped: unexpected {err:?}");
    }
}

#[test]
fn table_byte_flips_with_a_fixed_header_crc_are_rejected() {
    // The structural checks of the table, not the header checksum, must catch these.
    let bytes = valid_bytes();
    for pos in HEADER_SIZE..TABLE_END {
        for x in [0xFF, 0x01, 0x40, 0x80] {
            let mut b = bytes.clone();
            b[pos] ^= x;
            fix_header_crc(&mut b);
            match parse(&b, &format!("table byte {pos} ^ {x:#x}, header CRC fixed")) {
                Ok(_) => panic!("table byte {pos} ^ {x:#x} was accepted"),
                Err(FormatError::Checksum { what }) => {
                    assert_ne!(what, "header and section table", "byte {pos}");
                }
                Err(_) => {}
            }
        }
    }
}

#[test]
fn every_section_byte_flip_is_a_checksum_error() {
    let bytes = valid_bytes();
    let mut flipped = 0;
    for kind in SectionKind::ALL {
        for pos in section_range(&bytes, kind) {
            let mut b = bytes.clone();
            b[pos] ^= 0xFF;
            let want = FormatError::Checksum { what: format!("{} section", kind.name()) };
            assert_eq!(parse(&b, &format!("byte {pos} flipped")).err(), Some(want), "byte {pos}");
            flipped += 1;
        }
    }
    assert!(flipped > 1000, "covered {flipped} section bytes");
}

#[test]
fn every_byte_flip_anywhere_never_panics() {
    // Every byte of the file, including the alignment padding between sections. No checksum
    // covers the padding, so a flip there may be accepted (then the model must be intact and
    // usable); a flip anywhere else must be rejected. Nothing may panic.
    let bytes = valid_bytes();
    let reference = parse(&bytes, "the valid model").unwrap();
    let mut padding_accepted = 0;
    for pos in 0..bytes.len() {
        let mut b = bytes.clone();
        b[pos] ^= 0xFF;
        if let Ok(model) = parse(&b, &format!("byte {pos} flipped")) {
            assert_eq!(region_of(&bytes, pos), Region::Padding, "byte {pos} flip accepted");
            assert_eq!(model.graph(), reference.graph());
            touch_blobs(&model).unwrap();
            padding_accepted += 1;
        }
    }
    eprintln!("{padding_accepted} padding-byte flips accepted (padding is not checksummed)");
}

#[test]
fn graph_byte_damage_with_fixed_checksums_never_panics() {
    // Every byte of the GRAPH section, several bit patterns, with all CRCs recomputed: this
    // reaches the record parser and the graph validator. Some changes are harmless (a scale
    // bit, a flag) and parse; then every blob accessor must still work.
    let bytes = valid_bytes();
    let graph = section_range(&bytes, SectionKind::Graph);
    let mut failures = Vec::new();
    let mut accepted = 0;
    for pos in graph {
        for x in [0xFFu8, 0x01, 0x02, 0x40, 0x80] {
            let b = patched(&bytes, |b| b[pos] ^= x);
            let at = describe_graph_pos(&bytes, pos);
            match quiet_catch(|| Model::from_bytes(&b)) {
                Err(p) => failures
                    .push(format!("{at} ^ {x:#04x}: from_bytes panicked: {}", panic_message(&p))),
                Ok(Err(_)) => {}
                Ok(Ok(model)) => {
                    accepted += 1;
                    if let Err(m) = touch_blobs(&model) {
                        failures.push(format!(
                            "{at} ^ {x:#04x}: accepted, then a blob accessor panicked: {m}"
                        ));
                    }
                }
            }
        }
    }
    assert!(accepted > 0);
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

// ---------------------------------------------------------------------------------------
// Section table structure (header CRC recomputed so the structural check is what fails)

fn table_err(patch: impl FnOnce(&mut Vec<u8>)) -> FormatError {
    let mut b = valid_bytes();
    patch(&mut b);
    fix_header_crc(&mut b);
    match parse(&b, "a patched table") {
        Ok(_) => panic!("a damaged section table was accepted"),
        Err(e) => e,
    }
}

#[test]
fn overlapping_sections_are_rejected() {
    let bytes = valid_bytes();
    let [meta, labels, graph, weights] = [0, 1, 2, 3].map(|i| entries(&bytes)[i]);
    // Labels placed on top of meta.
    let e = table_err(|b| wr_u64(b, entry_pos(labels.index) + 8, meta.offset));
    assert_eq!(e, FormatError::Overlap { first: "meta", second: "labels" });
    // Graph grown into weights.
    let grow = weights.offset - graph.offset - graph.len + 1;
    let e = table_err(|b| wr_u64(b, entry_pos(graph.index) + 16, graph.len + grow));
    assert_eq!(e, FormatError::Overlap { first: "graph", second: "weights" });
    // Weights moved onto the graph section.
    let e = table_err(|b| wr_u64(b, entry_pos(weights.index) + 8, graph.offset));
    assert_eq!(e, FormatError::Overlap { first: "graph", second: "weights" });
}

#[test]
fn sections_out_of_range_are_rejected() {
    let bytes = valid_bytes();
    let n = bytes.len();
    let es = entries(&bytes);
    let (meta, weights) = (es[0], es[3]);
    let oob = |section: &'static str, offset: u64, len: u64| FormatError::SectionOutOfBounds {
        section,
        offset: offset as usize,
        len: len as usize,
        file_len: n,
    };
    let e = table_err(|b| wr_u64(b, entry_pos(3) + 16, weights.len + 1));
    assert_eq!(e, oob("weights", weights.offset, weights.len + 1));
    let e = table_err(|b| wr_u64(b, entry_pos(0) + 8, 0));
    assert_eq!(e, oob("meta", 0, meta.len), "a section over the header");
    let e = table_err(|b| wr_u64(b, entry_pos(0) + 8, HEADER_SIZE as u64));
    assert_eq!(e, oob("meta", HEADER_SIZE as u64, meta.len), "a section over the table");
    let far = (n as u64).div_ceil(64) * 64 + 4096;
    let e = table_err(|b| wr_u64(b, entry_pos(0) + 8, far));
    assert_eq!(e, oob("meta", far, meta.len));
    let e = table_err(|b| wr_u64(b, entry_pos(1) + 16, u64::MAX / 2));
    assert!(matches!(e, FormatError::SectionOutOfBounds { section: "labels", .. }), "{e:?}");
    // offset + len overflows.
    let e = table_err(|b| {
        wr_u64(b, entry_pos(2) + 8, !63u64);
        wr_u64(b, entry_pos(2) + 16, 64);
    });
    assert!(
        matches!(e, FormatError::OutOfRange { .. } | FormatError::SectionOutOfBounds { .. }),
        "{e:?}"
    );
}

#[test]
fn misaligned_and_malformed_table_entries_are_invalid() {
    let bytes = valid_bytes();
    let es = entries(&bytes);
    for (i, kind) in SectionKind::ALL.into_iter().enumerate() {
        let e = table_err(|b| wr_u64(b, entry_pos(i) + 8, es[i].offset + 1));
        assert_invalid(&e, &[kind.name(), "not 64-byte aligned"]);
        let e = table_err(|b| wr_u64(b, entry_pos(i) + 8, es[i].offset + 32));
        assert_invalid(&e, &[kind.name(), "not 64-byte aligned"]);
    }
    let e = table_err(|b| wr_u32(b, entry_pos(1), SectionKind::Meta as u32));
    assert_invalid(&e, &["meta", "twice"]);
    let e = table_err(|b| wr_u32(b, entry_pos(2), 9));
    assert_invalid(&e, &["unknown kind 9"]);
    let e = table_err(|b| wr_u32(b, entry_pos(2) + 4, 1));
    assert_invalid(&e, &["non-zero flags"]);
    let e = table_err(|b| wr_u32(b, entry_pos(3) + 28, 0x8000_0000));
    assert_invalid(&e, &["non-zero flags"]);
    // Header fields that describe the table.
    for count in [0, 3, 5, 16, u32::MAX] {
        let e = table_err(|b| wr_u32(b, 16, count));
        assert_invalid(&e, &["section count"]);
    }
    let e = table_err(|b| wr_u64(b, 32, 128));
    assert_invalid(&e, &["section table at 128"]);
    let e = table_err(|b| wr_u32(b, 12, 128));
    assert_invalid(&e, &["header size"]);
    let e = table_err(|b| wr_u32(b, 20, 1));
    assert_invalid(&e, &["flags"]);
    let e = table_err(|b| b[50] = 1);
    assert_invalid(&e, &["reserved"]);
}

// ---------------------------------------------------------------------------------------
// Graph shapes and structure

#[test]
fn shape_mismatch_names_the_op() {
    let e = spec_err(|s| s.tensors[3].channels = 12);
    assert_invalid(&e, &["op 2 (depthwise)", "output tensor is 4x4x12, expected 4x4x16"]);
    let e = spec_err(|s| s.tensors[1].height = 3);
    assert_invalid(&e, &["op 0 (stem)", "expected 4x4x8"]);
    let e = spec_err(|s| s.tensors[6].width = 2);
    assert_invalid(&e, &["op 5 (avgpool)", "expected 1x1x8"]);
    // The same damage made in the bytes (graph and header CRCs recomputed).
    let e = patch_err(|b| {
        let at = tensor_record_pos(b, 5) + tensor_field::CHANNELS;
        wr_u32(b, at, 9);
    });
    assert_invalid(&e, &["op 4 (add)", "output tensor is 4x4x9, expected 4x4x8"]);
    let e = patch_err(|b| {
        let at = tensor_record_pos(b, 2) + tensor_field::WIDTH;
        wr_u32(b, at, 5);
    });
    assert_invalid(&e, &["op 1 (pointwise)", "expected 4x4x"]);
}

#[test]
fn inconsistent_graph_structure_is_invalid() {
    let e = spec_err(|s| s.ops[OP_ADD].input1 = 2);
    assert_invalid(&e, &["op 4 (add)", "different shapes"]);
    let e = spec_err(|s| s.ops[OP_ADD].input1 = 0);
    assert_invalid(&e, &["op 4 (add)", "second input"]);
    let e = spec_err(|s| s.ops[OP_DW].input0 = 5);
    assert_invalid(&e, &["op 2 (depthwise)", "not produced before"]);
    let e = spec_err(|s| s.ops[OP_DW].stride = 3);
    assert_invalid(&e, &["op 2 (depthwise)", "stride 3"]);
    let e = spec_err(|s| s.ops[OP_EXPAND].stride = 2);
    assert_invalid(&e, &["op 1 (pointwise)", "stride"]);
    let e = spec_err(|s| s.ops[OP_STEM].stride = 1);
    assert_invalid(&e, &["op 0 (stem)", "stride 2"]);
    let e = spec_err(|s| s.ops[OP_POOL].input1 = 1);
    assert_invalid(&e, &["op 5 (avgpool)", "second input"]);
    let e = spec_err(|s| {
        s.ops[OP_DW].output_min = 10;
        s.ops[OP_DW].output_max = 5;
    });
    assert_invalid(&e, &["op 2 (depthwise)", "reversed"]);
    let e = spec_err(|s| s.tensors[0].channels = 4);
    assert_invalid(&e, &["tensor 0 (input)"]);
    let e = spec_err(|s| s.tensors[4].scale = f32::NAN);
    assert_invalid(&e, &["tensor 4", "scale"]);
    let e = spec_err(|s| s.tensors[4].height = 0);
    assert_invalid(&e, &["tensor 4", "height 0"]);
    let e = spec_err(|s| s.tensors[7].zero_point = 3);
    assert_invalid(&e, &["op 6 (linear)", "zero point"]);
    let e = spec_err(|s| {
        s.ops.pop();
        s.tensors.pop();
        s.metadata.classes = C as u32;
        s.labels = (0..C).map(|i| i.to_string()).collect();
    });
    assert_invalid(&e, &["op 5 (avgpool)", "last op must be the linear classifier"]);
    let e = spec_err(|s| s.tensors.push(s.tensors[7]));
    assert_invalid(&e, &["9 tensors for 7 ops"]);
    let e = patch_err(|b| {
        let at = op_record_pos(b, OP_POOL) + op_field::KIND;
        b[at] = 8;
    });
    assert_invalid(&e, &["op 5", "unknown kind 8"]);
    // Kind 7 (int8 pointwise) is known; a pool record relabelled as one fails its checks.
    let e = patch_err(|b| {
        let at = op_record_pos(b, OP_POOL) + op_field::KIND;
        b[at] = 7;
    });
    assert_invalid(&e, &["op 5 (pointwise-int8)"]);
    let e = patch_err(|b| {
        let at = op_record_pos(b, OP_POOL) + 100;
        b[at] = 1;
    });
    assert_invalid(&e, &["op 5", "reserved"]);
    let e = patch_err(|b| {
        let g = section_range(b, SectionKind::Graph).start;
        wr_u32(b, g + 20, 8); // op count
    });
    assert!(matches!(e, FormatError::Truncated { what: "graph records" }), "{e:?}");
    let e = patch_err(|b| {
        let g = section_range(b, SectionKind::Graph).start;
        wr_u32(b, g + 16, 0); // tensor count
    });
    assert_invalid(&e, &["0 tensors"]);
}

// ---------------------------------------------------------------------------------------
// Labels and metadata

#[test]
fn label_count_mismatch_is_invalid() {
    let e = spec_err(|s| {
        s.labels.pop();
    });
    assert_invalid(&e, &["4 labels for 5 classes"]);
    let e = spec_err(|s| s.labels.push("extra".into()));
    assert_invalid(&e, &["6 labels for 5 classes"]);
    let e = spec_err(|s| s.labels.clear());
    assert_invalid(&e, &["0 labels for 5 classes"]);
    let bytes = replace_section(&valid_bytes(), SectionKind::Labels, b"a\nb\n\xff\xfe\nd\ne");
    match parse(&bytes, "non-UTF-8 labels") {
        Err(FormatError::Invalid(m)) => assert!(m.contains("labels") && m.contains("UTF-8"), "{m}"),
        other => panic!("expected Invalid(labels ...), got {other:?}"),
    }
}

#[test]
fn bad_metadata_is_a_metadata_error() {
    let bytes = valid_bytes();
    let meta_json: serde_json::Value =
        serde_json::from_slice(&bytes[section_range(&bytes, SectionKind::Meta)]).unwrap();

    let e =
        parse(&replace_section(&bytes, SectionKind::Meta, b"not json {"), "not json").unwrap_err();
    assert_metadata(&e, &[]);
    let e = parse(&replace_section(&bytes, SectionKind::Meta, b""), "empty meta").unwrap_err();
    assert_metadata(&e, &[]);
    let e =
        parse(&replace_section(&bytes, SectionKind::Meta, b"[1, 2, 3]"), "json array").unwrap_err();
    assert_metadata(&e, &[]);
    let e = parse(&replace_section(&bytes, SectionKind::Meta, b"{\"a\": \"\xff\"}"), "not utf-8")
        .unwrap_err();
    assert_metadata(&e, &["UTF-8"]);

    for field in [
        "architecture",
        "width_multiplier",
        "input_height",
        "input_width",
        "classes",
        "producer",
        "producer_version",
    ] {
        let mut v = meta_json.clone();
        v.as_object_mut().unwrap().remove(field);
        let b = replace_section(&bytes, SectionKind::Meta, &serde_json::to_vec(&v).unwrap());
        let e = parse(&b, "missing field").unwrap_err();
        assert_metadata(&e, &["missing field", field]);
    }
    // `notes` is optional.
    let mut v = meta_json.clone();
    v.as_object_mut().unwrap().remove("notes");
    let b = replace_section(&bytes, SectionKind::Meta, &serde_json::to_vec(&v).unwrap());
    assert_eq!(parse(&b, "no notes").unwrap().metadata().notes, "");
    // Wrong type.
    let mut v = meta_json.clone();
    v["classes"] = serde_json::json!("five");
    let b = replace_section(&bytes, SectionKind::Meta, &serde_json::to_vec(&v).unwrap());
    assert_metadata(&parse(&b, "classes string").unwrap_err(), &[]);

    let e = spec_err(|s| s.metadata.classes = 6);
    assert_metadata(&e, &["classes 6", "5 outputs"]);
    let e = spec_err(|s| s.metadata.input_width = 16);
    assert_metadata(&e, &["input size 8x16", "8x8"]);
    let e = spec_err(|s| s.metadata.architecture = "  ".into());
    assert_metadata(&e, &["architecture"]);
    let e = spec_err(|s| s.metadata.width_multiplier = 0.0);
    assert_metadata(&e, &["width_multiplier"]);
}

// ---------------------------------------------------------------------------------------
// Quantization parameter ranges

#[test]
fn per_channel_shift_out_of_range_is_invalid() {
    for (op, name) in
        [(OP_STEM, "op 0 (stem)"), (OP_EXPAND, "op 1 (pointwise)"), (OP_DW, "op 2 (depthwise)")]
    {
        for bad in [0, 31, 63, 255] {
            let e = spec_err(|s| s.ops[op].shifts[1] = bad);
            assert_invalid(&e, &[name, "channel 1", &format!("shift {bad} outside 32..=62")]);
        }
        for good in [32, 62] {
            spec_ok(|s| s.ops[op].shifts[1] = good);
        }
    }
}

#[test]
fn negative_multiplier_is_invalid() {
    for (op, name) in
        [(OP_STEM, "op 0 (stem)"), (OP_PROJECT, "op 3 (pointwise)"), (OP_DW, "op 2 (depthwise)")]
    {
        for bad in [-1, i32::MIN] {
            let e = spec_err(|s| s.ops[op].multipliers[2] = bad);
            assert_invalid(&e, &[name, "channel 2", &format!("negative multiplier {bad}")]);
        }
        spec_ok(|s| s.ops[op].multipliers[2] = 0);
        spec_ok(|s| s.ops[op].multipliers[2] = i32::MAX);
    }
}

#[test]
fn ternary_byte_out_of_range_is_invalid() {
    // The file packs five trits per byte (`prom_engine::trits`): bytes 0..=242 are valid.
    for bad in [243u8, 250, 255] {
        let e = spec_err(|s| s.ops[OP_EXPAND].weights[3] = bad);
        assert_invalid(&e, &["op 1 (pointwise)", &format!("ternary byte {bad} at 3"), "max 242"]);
        let e = spec_err(|s| *s.ops[OP_PROJECT].weights.last_mut().unwrap() = bad);
        assert_invalid(&e, &["op 3 (pointwise)", &format!("ternary byte {bad}")]);
    }
    for good in [0u8, 81, 242] {
        spec_ok(|s| s.ops[OP_EXPAND].weights[3] = good);
    }
}

#[test]
fn int8_weight_minus_128_is_invalid() {
    for (op, name) in
        [(OP_STEM, "op 0 (stem)"), (OP_DW, "op 2 (depthwise)"), (OP_LINEAR, "op 6 (linear)")]
    {
        let e = spec_err(|s| s.ops[op].weights[5] = 0x80);
        assert_invalid(&e, &[name, "int8 weight -128 at byte 5"]);
        spec_ok(|s| s.ops[op].weights[5] = 0x81); // -127
    }
}

#[test]
fn bias_that_could_overflow_is_invalid() {
    // Largest |accumulator| per op: stem 27*255*127, depthwise 9*128*127, ternary 128*k,
    // linear 128*127*k.
    let cases = [
        (OP_STEM, "op 0 (stem)", 27 * 255 * 127),
        (OP_DW, "op 2 (depthwise)", 9 * 128 * 127),
        (OP_EXPAND, "op 1 (pointwise)", 128 * C as i64),
        (OP_PROJECT, "op 3 (pointwise)", 128 * E as i64),
        (OP_LINEAR, "op 6 (linear)", 128 * 127 * C as i64),
    ];
    for (op, name, max_acc) in cases {
        let limit = (i64::from(i32::MAX) - max_acc) as i32;
        let e = spec_err(|s| s.ops[op].bias[1] = limit + 1);
        assert_invalid(&e, &[name, "channel 1", "bias", "overflow"]);
        let e = spec_err(|s| s.ops[op].bias[1] = -limit - 1);
        assert_invalid(&e, &[name, "bias", "overflow"]);
        let e = spec_err(|s| s.ops[op].bias[1] = i32::MIN);
        assert_invalid(&e, &[name, "bias", "overflow"]);
        spec_ok(|s| s.ops[op].bias[1] = limit);
        spec_ok(|s| s.ops[op].bias[1] = -limit);
    }
}

#[test]
fn add_and_pool_parameters_out_of_range_are_invalid() {
    for bad in [0u8, 32, 63, 255] {
        let e = spec_err(|s| s.ops[OP_ADD].shift = bad);
        assert_invalid(&e, &["op 4 (add)", &format!("shift {bad} outside 1..=31")]);
    }
    for bad in [-1, (1 << 22) + 1, i32::MAX, i32::MIN] {
        let e = spec_err(|s| s.ops[OP_ADD].multiplier_a = bad);
        assert_invalid(&e, &["op 4 (add)", &format!("multiplier_a {bad}")]);
        let e = spec_err(|s| s.ops[OP_ADD].multiplier_b = bad);
        assert_invalid(&e, &["op 4 (add)", &format!("multiplier_b {bad}")]);
    }
    spec_ok(|s| {
        s.ops[OP_ADD].multiplier_a = 1 << 22;
        s.ops[OP_ADD].multiplier_b = 0;
        s.ops[OP_ADD].shift = 31;
    });
    for bad in [0u8, 31, 63, 255] {
        let e = spec_err(|s| s.ops[OP_POOL].shift = bad);
        assert_invalid(&e, &["op 5 (avgpool)", &format!("shift {bad} outside 32..=62")]);
    }
    let e = spec_err(|s| s.ops[OP_POOL].multiplier_a = -1);
    assert_invalid(&e, &["op 5 (avgpool)", "negative multiplier"]);
    let e = spec_err(|s| s.ops[OP_ADD].weights = vec![1; 64]);
    assert_invalid(&e, &["op 4 (add)", "weights blob", "takes none"]);
    let e = spec_err(|s| s.ops[OP_POOL].shifts = vec![40; C]);
    assert_invalid(&e, &["op 5 (avgpool)", "shifts blob", "takes none"]);
    let e = spec_err(|s| s.ops[OP_LINEAR].multipliers = vec![1 << 30; CLASSES]);
    assert_invalid(&e, &["op 6 (linear)", "multipliers"]);
}

// ---------------------------------------------------------------------------------------
// Blob references

#[test]
fn blob_outside_the_weights_section_is_invalid() {
    let bytes = valid_bytes();
    let weights_len = entry(&bytes, SectionKind::Weights).len;
    let past = weights_len.div_ceil(64) * 64;
    let e = patch_err(|b| {
        let at = op_record_pos(b, OP_STEM) + op_field::WEIGHTS;
        wr_u64(b, at, past);
    });
    assert_invalid(
        &e,
        &[
            "op 0 (stem)",
            "weights blob",
            &format!("outside the {weights_len}-byte weights section"),
        ],
    );
    // Starts inside, ends outside: the last 64-byte line holds fewer bytes than the
    // classifier weights need.
    let last_line = (weights_len - 1) / 64 * 64;
    assert!(weights_len - last_line < (C * CLASSES) as u64);
    let e = patch_err(|b| {
        let at = op_record_pos(b, OP_LINEAR) + op_field::WEIGHTS;
        wr_u64(b, at, last_line);
    });
    assert_invalid(&e, &["op 6 (linear)", "weights blob", "outside"]);
    // offset + len overflows usize.
    let e = patch_err(|b| {
        let at = op_record_pos(b, OP_DW) + op_field::MULTIPLIERS;
        wr_u64(b, at, !63u64);
    });
    assert_invalid(&e, &["op 2 (depthwise)", "multipliers blob", "outside"]);
    let e = patch_err(|b| {
        let at = op_record_pos(b, OP_EXPAND) + op_field::SHIFTS;
        wr_u64(b, at, 1 << 40);
    });
    assert_invalid(&e, &["op 1 (pointwise)", "shifts blob", "outside"]);
}

#[test]
fn misaligned_or_mis_sized_blob_is_invalid() {
    for (op, field, name) in [
        (OP_STEM, op_field::WEIGHTS, "weights"),
        (OP_EXPAND, op_field::BIAS, "bias"),
        (OP_DW, op_field::MULTIPLIERS, "multipliers"),
        (OP_PROJECT, op_field::SHIFTS, "shifts"),
        (OP_LINEAR, op_field::WEIGHTS, "weights"),
    ] {
        for delta in [1u64, 4, 32] {
            let e = patch_err(|b| {
                let at = op_record_pos(b, op) + field;
                let v = rd_u64(b, at);
                wr_u64(b, at, v + delta);
            });
            assert_invalid(
                &e,
                &[&format!("op {op}"), &format!("{name} blob offset"), "not 64-byte aligned"],
            );
        }
        let e = patch_err(|b| {
            let at = op_record_pos(b, op) + field + 8;
            let v = rd_u64(b, at);
            wr_u64(b, at, v + 4);
        });
        assert_invalid(&e, &[&format!("op {op}"), &format!("{name} blob is")]);
    }
    let e = spec_err(|s| {
        s.ops[OP_STEM].weights.pop();
    });
    assert_invalid(
        &e,
        &["op 0 (stem)", &format!("weights blob is {} bytes, expected {}", 27 * C - 1, 27 * C)],
    );
}

/// Regression test for an engine bug these tests found: the classifier's multipliers/shifts
/// blobs were only checked for `len == 0`, their offset was neither checked nor made
/// absolute, so a validated model could carry `Blob { offset: <anything>, len: 0 }` and
/// `Model::blob_u8` / `blob_i32` on it panicked (slice out of range, or the "unaligned i32
/// blob" assertion). Such a blob must be rejected (or be harmless to the accessors).
#[test]
fn classifier_empty_blob_with_stray_offset_is_rejected_or_harmless() {
    for (field, name) in [(op_field::MULTIPLIERS, "multipliers"), (op_field::SHIFTS, "shifts")] {
        for offset in [1u64, 65, 1 << 40] {
            let bytes = patched(&valid_bytes(), |b| {
                let at = op_record_pos(b, OP_LINEAR) + field;
                wr_u64(b, at, offset);
            });
            match parse(&bytes, "classifier blob with a stray offset") {
                Err(e) => assert_invalid(&e, &["op 6 (linear)", name]),
                Ok(model) => {
                    if let Err(m) = touch_blobs(&model) {
                        panic!(
                            "linear {name} blob {{ offset: {offset}, len: 0 }} was accepted and \
                             a blob accessor then panicked: {m}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn read_copies_the_file_and_survives_an_in_place_overwrite() {
    let dir = temp_dir("read");
    let path = dir.join("m.prom");
    let bytes = valid_bytes();
    std::fs::write(&path, &bytes).unwrap();
    let mapped = Model::open(&path).unwrap();
    let read = Model::read(&path).unwrap();
    assert_eq!(read.bytes(), mapped.bytes());
    assert_eq!(read.checksum(), mapped.checksum());
    drop(mapped);
    // Overwriting the same inode (cp, shell redirection) leaves the read model intact.
    std::fs::write(&path, b"short").unwrap();
    assert_eq!(read.bytes(), &bytes[..]);
    assert!(touch_blobs(&read).is_ok());
    match Model::read(&path) {
        Err(OpenError::Format { path: p, .. }) => assert!(p.ends_with("m.prom")),
        other => panic!("expected a format error, got {other:?}"),
    }
    match Model::read(dir.join("missing.prom")) {
        Err(OpenError::Io { path: p, .. }) => assert!(p.ends_with("missing.prom")),
        other => panic!("expected an I/O error, got {other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
