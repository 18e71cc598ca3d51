//! The model toolkit's Rust side: `promctl pack` (interchange file to `.prom`) and
//! `promctl eval` (accuracy of a model on a labelled data set, with the engine).

use prom_engine::pack::{pack as pack_interchange, parse_labels};
use prom_engine::{Model, Plan, PointwiseMode, State};
use prom_kernels::Kernels;
use serde::Serialize;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// `promctl pack`: packs the interchange file and writes the model atomically.
pub fn pack(input: &Path, labels: &Path, output: &Path) -> Result<()> {
    let bytes =
        std::fs::read(input).map_err(|e| format!("cannot read {}: {e}", input.display()))?;
    let text = std::fs::read_to_string(labels)
        .map_err(|e| format!("cannot read labels {}: {e}", labels.display()))?;
    let spec = pack_interchange(&bytes, parse_labels(&text))
        .map_err(|e| format!("{}: {e}", input.display()))?;
    spec.write(output).map_err(|e| format!("cannot write {}: {e}", output.display()))?;
    let model = Model::open(output)?;
    let g = model.graph();
    let ternary = g.ops.iter().filter(|o| o.record.kind == prom_engine::OpKind::PointwiseTernary);
    let int8 = g.ops.iter().filter(|o| o.record.kind == prom_engine::OpKind::PointwiseInt8);
    println!(
        "wrote {} ({} bytes): {} ops, {} ternary and {} int8 pointwise layers, {} classes, input {}x{}",
        output.display(),
        model.bytes().len(),
        g.ops.len(),
        ternary.count(),
        int8.count(),
        g.classes(),
        g.header.input_height,
        g.header.input_width
    );
    Ok(())
}

/// A labelled image set, decoded lazily one image at a time.
enum DataSet {
    /// idx files (Fashion-MNIST, MNIST): greyscale images and labels in memory.
    Idx { images: Vec<u8>, height: usize, width: usize, labels: Vec<u8> },
    /// One folder per class; images decoded on use.
    Folder { files: Vec<(PathBuf, usize)> },
}

impl DataSet {
    fn len(&self) -> usize {
        match self {
            DataSet::Idx { labels, .. } => labels.len(),
            DataSet::Folder { files } => files.len(),
        }
    }

    /// Writes image `i` as the model input (`w x h` RGB8); returns its true class.
    fn input(&self, i: usize, out: &mut [u8], w: usize, h: usize) -> Result<usize> {
        match self {
            DataSet::Idx { images, height, width, labels } => {
                let px = height * width;
                let img = &images[i * px..(i + 1) * px];
                idx_to_input(img, *width, *height, out, w, h);
                Ok(usize::from(labels[i]))
            }
            DataSet::Folder { files } => {
                let (path, class) = &files[i];
                let (iw, ih, rgb) = crate::imageio::load(path)?;
                crate::imageio::crop_resize(&rgb, iw as usize, ih as usize, out, w, h);
                Ok(*class)
            }
        }
    }
}

/// A greyscale idx image to the RGB model input: centred on a black canvas when it fits
/// (Fashion-MNIST's 28x28 in a 32x32 input: exact, what training does), else centre-cropped
/// and resized like any image.
pub fn idx_to_input(img: &[u8], iw: usize, ih: usize, out: &mut [u8], w: usize, h: usize) {
    if iw <= w && ih <= h {
        out.fill(0);
        let (x0, y0) = ((w - iw) / 2, (h - ih) / 2);
        for y in 0..ih {
            for x in 0..iw {
                let v = img[y * iw + x];
                out[((y0 + y) * w + x0 + x) * 3..][..3].fill(v);
            }
        }
    } else {
        let rgb: Vec<u8> = img.iter().flat_map(|&v| [v, v, v]).collect();
        crate::imageio::crop_resize(&rgb, iw, ih, out, w, h);
    }
}

/// Reads an idx file of unsigned bytes (optionally gzip-compressed): dimensions and data.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let raw = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let data = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .take(1 << 31)
            .read_to_end(&mut out)
            .map_err(|e| format!("{}: bad gzip data: {e}", path.display()))?;
        out
    } else {
        raw
    };
    if data.len() < 4 || data[..3] != [0, 0, 8] {
        return Err(format!("{}: not an idx file of unsigned bytes", path.display()).into());
    }
    let ndim = usize::from(data[3]);
    let header = 4 + 4 * ndim;
    if data.len() < header || ndim == 0 {
        return Err(format!("{}: truncated idx header", path.display()).into());
    }
    let dims: Vec<usize> = data[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let count = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if count != Some(data.len() - header) {
        return Err(format!(
            "{}: {} bytes of data for dimensions {dims:?}",
            path.display(),
            data.len() - header
        )
        .into());
    }
    Ok((dims, data[header..].to_vec()))
}

fn find_idx(dir: &Path, name: &str) -> Option<PathBuf> {
    [name.to_string(), format!("{name}.gz")].into_iter().map(|n| dir.join(n)).find(|p| p.exists())
}

fn open_data(data: &Path, split: &str, labels: &[String]) -> Result<DataSet> {
    let prefix = if split == "train" { "train" } else { "t10k" };
    let images = find_idx(data, &format!("{prefix}-images-idx3-ubyte"));
    let targets = find_idx(data, &format!("{prefix}-labels-idx1-ubyte"));
    if let (Some(images), Some(targets)) = (images, targets) {
        let (dims, pixels) = read_idx(&images)?;
        let (ldims, classes) = read_idx(&targets)?;
        if dims.len() != 3 || ldims.len() != 1 || dims[0] != ldims[0] {
            return Err(format!(
                "{}: images {dims:?} and labels {ldims:?} do not match",
                data.display()
            )
            .into());
        }
        if let Some(&bad) = classes.iter().find(|&&c| usize::from(c) >= labels.len()) {
            return Err(format!("label {bad} but the model has {} classes", labels.len()).into());
        }
        return Ok(DataSet::Idx {
            images: pixels,
            height: dims[1],
            width: dims[2],
            labels: classes,
        });
    }
    // ImageFolder: data/<class>/<image>; class folders named by label (or by class index).
    let mut files = Vec::new();
    let entries = std::fs::read_dir(data).map_err(|e| {
        format!(
            "{}: neither {prefix}-images-idx3-ubyte(.gz) nor a readable folder tree: {e}",
            data.display()
        )
    })?;
    let mut dirs: Vec<PathBuf> =
        entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect();
    dirs.sort();
    for dir in dirs {
        let name = dir.file_name().unwrap_or_default().to_string_lossy().to_string();
        let class = labels
            .iter()
            .position(|l| *l == name)
            .or_else(|| name.parse::<usize>().ok().filter(|&c| c < labels.len()))
            .ok_or_else(|| {
                format!("folder {name:?} is neither a label of the model nor a class index")
            })?;
        let mut images: Vec<PathBuf> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        images.sort();
        files.extend(images.into_iter().map(|p| (p, class)));
    }
    if files.is_empty() {
        return Err(format!("{}: no images found", data.display()).into());
    }
    Ok(DataSet::Folder { files })
}

#[derive(Serialize)]
struct ClassAccuracy {
    class: usize,
    label: String,
    images: usize,
    top1: f64,
}

#[derive(Serialize)]
struct EvalReport {
    model: String,
    data: String,
    images: usize,
    top1: f64,
    top5: f64,
    images_per_second: f64,
    tier: String,
    threads: usize,
    per_class: Vec<ClassAccuracy>,
}

/// Options of `promctl eval`.
pub struct EvalOptions<'a> {
    /// Model file.
    pub model: &'a Path,
    /// Data set directory.
    pub data: &'a Path,
    /// `test` or `train` (idx files).
    pub split: &'a str,
    /// At most this many images (the first ones).
    pub limit: Option<usize>,
    /// Worker threads.
    pub threads: usize,
    /// Machine-readable report.
    pub json: bool,
    /// Write the int32 logits of every image here (little-endian, images x classes).
    pub logits: Option<&'a Path>,
}

/// `promctl eval`.
pub fn eval(o: &EvalOptions<'_>) -> Result<()> {
    let model = Arc::new(Model::open(o.model)?);
    let labels = model.labels().to_vec();
    let set = open_data(o.data, o.split, &labels)?;
    let n = o.limit.map_or(set.len(), |l| l.min(set.len()));
    let kernels = Kernels::detect()?;
    let plan = Arc::new(Plan::new(Arc::clone(&model), kernels, PointwiseMode::Ternary));
    let mut state = State::new(plan, o.threads.max(1));
    let (h, w) = (model.metadata().input_height as usize, model.metadata().input_width as usize);
    let classes = labels.len();
    let mut input = vec![0u8; h * w * 3];
    let mut logits_out = match o.logits {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(|e| format!("cannot create {}: {e}", p.display()))?,
        )),
        None => None,
    };
    let (mut top1, mut top5) = (0usize, 0usize);
    let mut per_class = vec![(0usize, 0usize); classes];
    let tty = std::io::stderr().is_terminal();
    let start = Instant::now();
    let mut last_report = Instant::now();
    let mut order: Vec<usize> = (0..classes).collect();
    for i in 0..n {
        let truth = set.input(i, &mut input, w, h)?;
        let logits = state.run(&input);
        if let Some(out) = logits_out.as_mut() {
            for l in logits {
                out.write_all(&l.to_le_bytes())?;
            }
        }
        // Rank by logit (ties: lower class id first, as argmax).
        order.sort_by(|&a, &b| logits[b].cmp(&logits[a]).then(a.cmp(&b)));
        let rank = order.iter().position(|&c| c == truth).unwrap_or(classes);
        top1 += usize::from(rank == 0);
        top5 += usize::from(rank < 5);
        per_class[truth].0 += 1;
        per_class[truth].1 += usize::from(rank == 0);
        let done = i + 1;
        if done == n || last_report.elapsed().as_millis() >= if tty { 200 } else { 10_000 } {
            last_report = Instant::now();
            let rate = done as f64 / start.elapsed().as_secs_f64().max(1e-9);
            let filled = 30 * done / n.max(1);
            eprint!(
                "{}eval [{}{}] {done}/{n} top-1 {:.2}% {rate:.0} img/s{}",
                if tty { "\r" } else { "" },
                "#".repeat(filled),
                "-".repeat(30 - filled),
                100.0 * top1 as f64 / done as f64,
                if tty && done != n { "" } else { "\n" }
            );
        }
    }
    if let Some(mut out) = logits_out {
        out.flush()?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let pct = |a: usize, b: usize| if b == 0 { 0.0 } else { 100.0 * a as f64 / b as f64 };
    let report = EvalReport {
        model: o.model.display().to_string(),
        data: o.data.display().to_string(),
        images: n,
        top1: pct(top1, n),
        top5: pct(top5, n),
        images_per_second: n as f64 / seconds.max(1e-9),
        tier: kernels.tier().to_string(),
        threads: o.threads.max(1),
        per_class: per_class
            .iter()
            .enumerate()
            .filter(|(_, (total, _))| *total > 0)
            .map(|(c, &(total, right))| ClassAccuracy {
                class: c,
                label: labels[c].clone(),
                images: total,
                top1: pct(right, total),
            })
            .collect(),
    };
    let mut out = std::io::stdout().lock();
    if o.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{}: {} images of {}", report.model, n, report.data)?;
        writeln!(out, "top-1 {:.2}%  top-5 {:.2}%", report.top1, report.top5)?;
        writeln!(
            out,
            "{:.0} images/s ({} tier, {} thread(s))",
            report.images_per_second, report.tier, report.threads
        )?;
        writeln!(out, "per class:")?;
        for c in &report.per_class {
            writeln!(out, "  {:>5}  {:>6.2}%  {:>6}  {}", c.class, c.top1, c.images, c.label)?;
        }
    }
    Ok(())
}
