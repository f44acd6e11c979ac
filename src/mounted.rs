//! Files a browser page hands the library (wasm32 has no filesystem): a model's folder as it sits
//! in the browser's cache after a download, or as the user picked it. The page mounts them under a
//! root path, and every reader of the library ([`crate::untrusted`], [`crate::checkpoint`]) looks
//! paths under it up here, so the pipeline loads in the browser as it does from a folder on disk.
//!
//! Small files (configs, tokenizer) are read into memory when mounted. A weight file stays a
//! `Blob` (the browser keeps it in its cache or on disk): only its safetensors header is read when
//! it is mounted, and each tensor's bytes when the tensor is loaded, so a checkpoint is never
//! whole in wasm memory (wasm32 has 4 GiB; s-full-v2's weights are 1.7 GB in f32).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use crate::error::{Error, Result};

/// The largest file read whole when mounted (the real `tokenizer.json` is 2.1 MB).
const MAX_SMALL_FILE_BYTES: u64 = 64 << 20;

/// safetensors' own ceiling on a header (the `safetensors` crate's `MAX_HEADER_SIZE`).
const MAX_HEADER_BYTES: u64 = 100_000_000;

#[derive(Clone)]
enum Mounted {
    Bytes(Arc<Vec<u8>>),
    Weights {
        blob: web_sys::Blob,
        header: Arc<Vec<u8>>,
    },
}

thread_local! {
    static FILES: RefCell<BTreeMap<PathBuf, Mounted>> = const { RefCell::new(BTreeMap::new()) };
}

/// Mounts `files` (paths relative to `root`, `/`-separated, e.g. `unet/config.json`) under
/// `root`, replacing whatever was mounted there. Weight files must be safetensors: a `.bin`
/// (a pickle archive) is refused with a message, as the web build reads only safetensors.
pub async fn mount(root: &Path, files: Vec<(String, web_sys::Blob)>) -> Result<()> {
    let mut mounted = Vec::with_capacity(files.len());
    for (name, blob) in files {
        let path = root.join(&name);
        let entry = if name.ends_with(".safetensors") {
            let header = read_header(&path, &blob).await?;
            Mounted::Weights {
                blob,
                header: Arc::new(header),
            }
        } else if name.ends_with(".bin") {
            return Err(Error::Input(format!(
                "{}: the web build reads safetensors weights only; this model has a PyTorch \
                 .bin file (convert it, or use the desktop app)",
                path.display()
            )));
        } else {
            let size = blob.size() as u64;
            if size > MAX_SMALL_FILE_BYTES {
                return Err(Error::Input(format!(
                    "{}: {size} bytes, more than the {MAX_SMALL_FILE_BYTES} a file of this kind \
                     may have",
                    path.display()
                )));
            }
            let bytes = read_range(&blob, 0, size)
                .await
                .map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
            Mounted::Bytes(Arc::new(bytes))
        };
        mounted.push((path, entry));
    }
    FILES.with(|files| {
        let mut files = files.borrow_mut();
        files.retain(|path, _| !path.starts_with(root));
        files.extend(mounted);
    });
    Ok(())
}

/// Keeps `bytes` as the file `path` (what the app writes: its clips, a dropped file).
pub fn store(path: &Path, bytes: Vec<u8>) {
    FILES.with(|files| {
        files
            .borrow_mut()
            .insert(path.to_path_buf(), Mounted::Bytes(Arc::new(bytes)));
    });
}

/// Forgets every file mounted under `root`.
pub fn unmount(root: &Path) {
    FILES.with(|files| files.borrow_mut().retain(|path, _| !path.starts_with(root)));
}

fn lookup(path: &Path) -> Option<Mounted> {
    FILES.with(|files| files.borrow().get(path).cloned())
}

pub(crate) fn is_file(path: &Path) -> bool {
    lookup(path).is_some()
}

pub(crate) fn is_dir(path: &Path) -> bool {
    FILES.with(|files| {
        files
            .borrow()
            .range(path.to_path_buf()..)
            .next()
            .is_some_and(|(p, _)| p != path && p.starts_with(path))
    })
}

/// The bytes of a small mounted file.
pub(crate) fn bytes(path: &Path) -> Option<Arc<Vec<u8>>> {
    match lookup(path)? {
        Mounted::Bytes(bytes) => Some(bytes),
        Mounted::Weights { .. } => None,
    }
}

/// A mounted weight file: its Blob and its safetensors header (the JSON, without the length).
pub(crate) fn weights(path: &Path) -> Option<(web_sys::Blob, Arc<Vec<u8>>)> {
    match lookup(path)? {
        Mounted::Weights { blob, header } => Some((blob, header)),
        Mounted::Bytes(_) => None,
    }
}

/// Bytes `start..end` of `blob`, read without blocking the page.
pub(crate) async fn read_range(
    blob: &web_sys::Blob,
    start: u64,
    end: u64,
) -> std::result::Result<Vec<u8>, String> {
    let size = blob.size() as u64;
    if start > end || end > size {
        return Err(format!(
            "bytes {start}..{end} lie past the end of the file ({size} bytes)"
        ));
    }
    let slice = blob
        .slice_with_f64_and_f64(start as f64, end as f64)
        .map_err(|e| format!("cannot slice the file: {e:?}"))?;
    let buffer = JsFuture::from(slice.array_buffer())
        .await
        .map_err(|e| format!("cannot read the file: {e:?}"))?;
    let buffer: js_sys::ArrayBuffer = buffer
        .dyn_into()
        .map_err(|_| "the browser returned no bytes".to_string())?;
    Ok(js_sys::Uint8Array::new(&buffer).to_vec())
}

/// A safetensors file's header JSON, checked for length before it is read.
async fn read_header(path: &Path, blob: &web_sys::Blob) -> Result<Vec<u8>> {
    let corrupt = |detail: String| Error::Input(format!("{}: {detail}", path.display()));
    let size = blob.size() as u64;
    let len = read_range(blob, 0, 8.min(size)).await.map_err(corrupt)?;
    let len: [u8; 8] = len
        .try_into()
        .map_err(|_| corrupt("too short for a safetensors file".into()))?;
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_HEADER_BYTES || 8 + header_len > size {
        return Err(corrupt(format!(
            "a safetensors header of {header_len} bytes does not fit the file ({size} bytes): \
             the download may have been cut short"
        )));
    }
    read_range(blob, 8, 8 + header_len).await.map_err(corrupt)
}
