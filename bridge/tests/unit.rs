//! systemd/prom-bridge.service: `systemd-analyze verify` clean and the `security` exposure
//! at most 2.0 (issue 14), with ExecStart pointed at the built binary.

use std::path::Path;
use std::process::Command;

#[test]
fn the_unit_verifies_and_its_exposure_is_at_most_2() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let unit = std::fs::read_to_string(repo.join("systemd/prom-bridge.service")).unwrap();
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("prom-bridge");
    assert!(bin.exists(), "{} missing: build the workspace first", bin.display());
    assert!(unit.contains("ExecStart=/usr/bin/prom-bridge\n"));
    let unit =
        unit.replace("ExecStart=/usr/bin/prom-bridge\n", &format!("ExecStart={}\n", bin.display()));
    let dir = std::env::temp_dir().join(format!("prom-bridge-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("prom-bridge.service");
    std::fs::write(&path, unit).unwrap();

    // --man=no: Documentation=man:prom-bridge(1) is built for the package, not here
    // (scripts/test-packaging.sh verifies the packaged unit against the packaged page).
    let verify =
        Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&path).output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(verify.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");

    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for prom-bridge.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(exposure <= 2.0, "exposure {exposure} > 2.0:\n{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
