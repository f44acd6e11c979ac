//! The engine and the desktop front end must share one wgpu (one device per process): the lock
//! file may hold only one version of it.

#[test]
fn cargo_lock_has_one_wgpu() {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock"))
        .expect("Cargo.lock is committed");
    let versions: Vec<&str> = lock
        .split("[[package]]")
        .filter(|pkg| pkg.lines().any(|l| l.trim() == "name = \"wgpu\""))
        .filter_map(|pkg| {
            pkg.lines()
                .find_map(|l| l.trim().strip_prefix("version = "))
        })
        .collect();
    assert_eq!(
        versions.len(),
        1,
        "wgpu versions in Cargo.lock: {versions:?}"
    );
}
