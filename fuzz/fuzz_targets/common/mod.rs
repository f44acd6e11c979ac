//! Shared by the fuzz targets: the loaders read paths, so each input is written to a file of this
//! process's own (in /dev/shm where there is one, so the writes stay in memory).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A folder of this process's own for the inputs.
pub fn scratch() -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("audioldm-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// Writes `data` as `name` in the scratch folder and returns its path.
pub fn file(name: &str, data: &[u8]) -> PathBuf {
    let path = scratch().join(name);
    std::fs::write(&path, data).expect("the scratch folder is writable");
    path
}

/// Opens a checkpoint file and reads every tensor it lists, as a model load would.
pub fn read_checkpoint(path: &Path) {
    if let Ok(ckpt) = audioldm::checkpoint::Checkpoint::open(path) {
        let names: Vec<String> = ckpt.names().map(str::to_string).collect();
        for name in names {
            let _ = ckpt.f32_any(&name);
            let _ = ckpt.i64_any(&name);
        }
    }
}
