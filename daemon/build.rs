//! Generates the list of bundled demo images (models/demo/fashion-mnist, embedded in
//! promctl for `promctl demo`). The embedded default model, models/fashion-mnist-prom.prom,
//! is included directly by `pipeline.rs`.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let models = manifest.join("../models");
    let demo = models.join("demo/fashion-mnist");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", demo.display());
    println!("cargo:rerun-if-changed={}", models.join("fashion-mnist-prom.prom").display());
    let mut names: Vec<String> = std::fs::read_dir(&demo)
        .unwrap_or_else(|e| panic!("{}: {e}", demo.display()))
        .map(|e| e.expect("readable demo folder").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".png"))
        .collect();
    names.sort();
    let mut code = String::from(
        "/// The bundled demo images: (file name, PNG bytes); names end in `_<class id>`.\n\
         pub static FASHION_MNIST: &[(&str, &[u8])] = &[\n",
    );
    for n in &names {
        let path = demo.join(n);
        code.push_str(&format!("    ({n:?}, include_bytes!({:?})),\n", path.display().to_string()));
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("demo_images.rs"), code).expect("write demo_images.rs");
}
