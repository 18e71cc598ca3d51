//! The "embedding the service" example of docs/DBUS.md as a program: serves
//! io.prom.Classifier1 with one camera whose "frames" are a counter, a stand-in classifier
//! and reload handler, on the system bus (or `DBUS_SYSTEM_BUS_ADDRESS`), for `SECONDS`
//! seconds (first argument, default 5). scripts/test-dbus-examples.py checks that the
//! block in docs/DBUS.md is this program's body, and runs it.

use prom_daemon::dbus::{CameraStats, Prediction};

/// Stand-in for a model: the brightest channel "wins".
fn classify_rgb(width: u32, height: u32, rgb: &[u8]) -> Result<Vec<Prediction>, String> {
    let mut sums = [0u64; 3];
    for px in rgb.chunks_exact(3) {
        for c in 0..3 {
            sums[c] += u64::from(px[c]);
        }
    }
    let total = sums.iter().sum::<u64>().max(1) as f64;
    let mut top: Vec<Prediction> = ["red", "green", "blue"]
        .iter()
        .zip(sums)
        .enumerate()
        .map(|(i, (name, s))| (i as u32, format!("{name} ({width}x{height})"), s as f64 / total))
        .collect();
    top.sort_by(|a, b| b.2.total_cmp(&a.2));
    Ok(top)
}

fn reload_model(path: &str) -> Result<(), String> {
    Err(format!("{path}: this example has no models"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: u64 = std::env::args().nth(1).map_or(Ok(5), |s| s.parse())?;
    let now_us = || {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        since.map_or(0, |d| d.as_micros() as u64)
    };
    let (sequence, capture_timestamp_us) = (0u64, now_us());
    let top_k = classify_rgb(1, 1, &[255, 0, 0])?;
    let stats = CameraStats { frames_captured: 1, ..CameraStats::default() };

    // docs/DBUS.md begin
    use prom_daemon::dbus::{BusChoice, Service, ServiceOptions};
    let service = Service::start(
        BusChoice::System,
        ServiceOptions {
            classifier: Some(Box::new(|img| classify_rgb(img.width, img.height, &img.rgb))),
            reload: Some(Box::new(reload_model)),
            ..Default::default()
        },
    )?;
    let cam = service.add_camera("cam0")?;
    // inference thread, per frame (never blocks; a full queue drops and counts):
    cam.publish(sequence, capture_timestamp_us, &top_k);
    // any thread, as often as convenient (PropertiesChanged is rate-limited):
    cam.update_stats(stats);
    // capture loop:
    if cam.is_paused() { /* skip frames */ }
    service.set_state("running");
    // docs/DBUS.md end

    // More "frames", ten a second.
    let started = std::time::Instant::now();
    for sequence in 1.. {
        if started.elapsed().as_secs() >= seconds {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        if !cam.is_paused() {
            cam.publish(sequence, now_us(), &top_k);
        }
    }
    Ok(())
}
