//! The real window once: the app binary opens under Xvfb (an X server without a screen), eframe
//! draws with wgpu on the software adapter, and a screenshot of the X screen must not be blank.
//! Needs `xvfb-run` and ImageMagick's `import`/`identify` (`scripts/setup.sh --tests` installs
//! them); their absence fails the test.
#![cfg(feature = "app")]

use std::path::Path;
use std::process::Command;

/// Distinct colours a drawn window has at least; an empty X screen has one.
const MIN_COLOURS: u32 = 64;

#[test]
fn the_app_opens_a_window_that_is_not_blank() {
    let exe = env!("CARGO_BIN_EXE_audioldm");
    let dir = std::env::temp_dir().join(format!("audioldm-window-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let shot = dir.join("window.png");
    let log = dir.join("app.log");
    // Start the app, take a screenshot every second until the window has drawn (lavapipe
    // compiles its shaders first), then close it; exit 3 if the app died on the way.
    let script = format!(
        r#"
        "{exe}" > "{log}" 2>&1 & app=$!
        for i in $(seq 1 90); do
            sleep 1
            kill -0 $app 2>/dev/null || exit 3
            import -window root "{shot}" 2>/dev/null || continue
            [ "$(identify -format %k "{shot}")" -ge {MIN_COLOURS} ] && break
        done
        kill $app 2>/dev/null || exit 3
        wait $app
        exit 0
        "#,
        log = log.display(),
        shot = shot.display(),
    );
    let status = Command::new("xvfb-run")
        .args(["-a", "-s", "-screen 0 1280x800x24", "sh", "-c", &script])
        .env_remove("WAYLAND_DISPLAY")
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .status()
        .expect("xvfb-run must be installed (scripts/setup.sh --tests)");
    let app_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.success(),
        "the app did not stay open under Xvfb ({status}); its output:\n{app_log}"
    );
    assert!(!app_log.contains("panicked"), "{app_log}");
    let colours = distinct_colours(&shot);
    assert!(
        colours >= MIN_COLOURS,
        "the screenshot is blank ({colours} colours); app output:\n{app_log}"
    );
    eprintln!("screenshot with {colours} colours: {}", shot.display());
    let _ = std::fs::remove_dir_all(&dir);
}

fn distinct_colours(png: &Path) -> u32 {
    let out = Command::new("identify")
        .args(["-format", "%k"])
        .arg(png)
        .output()
        .expect("ImageMagick's identify must be installed (scripts/setup.sh --tests)");
    assert!(out.status.success(), "no screenshot at {}", png.display());
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}
