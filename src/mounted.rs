//! Files a browser page hands the library (wasm32 has no filesystem): a model's folder as it sits
//! in the browser's cache after a download, or as the user picked it. The page mounts them under a
//! root path, and every reader of the library ([`crate::untrusted`], [`crate::checkpoint`]) looks
//! paths under it up here, so the pipeline loads in the browser as it does from a folder on disk.
//!
//! Files the app writes under a folder made persistent ([`persist`]: its clips) are also kept in
//! the browser's Cache API and come back on the next visit.
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
    /// Folders whose files are kept in [`PERSISTED_CACHE`] too.
    static PERSISTED: RefCell<Vec<PathBuf>> = const { RefCell::new(Vec::new()) };
    /// What went wrong keeping files in the browser's cache, for the app to show.
    static PERSIST_ERRORS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// The browser cache that persisted files live in, each under [`PERSISTED_PREFIX`] + its path.
pub const PERSISTED_CACHE: &str = "audioldm-files-v1";
const PERSISTED_PREFIX: &str = "/.audioldm-files";

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

/// Keeps `bytes` as the file `path` (what the app writes: its clips, a dropped file). Under a
/// persisted folder it is written to the browser's cache as well, in the background: what goes
/// wrong there is kept for [`take_persist_errors`].
pub fn store(path: &Path, bytes: Vec<u8>) {
    let bytes = Arc::new(bytes);
    FILES.with(|files| {
        files
            .borrow_mut()
            .insert(path.to_path_buf(), Mounted::Bytes(Arc::clone(&bytes)));
    });
    if is_persisted(path) {
        let path = path.to_path_buf();
        wasm_bindgen_futures::spawn_local(async move {
            if let Err(e) = put_persisted(&path, &bytes).await {
                PERSIST_ERRORS.with(|errors| errors.borrow_mut().push(e.to_string()));
            }
        });
    }
}

/// Forgets the file `path`, in the browser's cache too when it was persisted.
pub fn remove(path: &Path) {
    FILES.with(|files| files.borrow_mut().remove(path));
    if is_persisted(path) {
        let path = path.to_path_buf();
        wasm_bindgen_futures::spawn_local(async move {
            if let Err(e) = delete_persisted(&path).await {
                PERSIST_ERRORS.with(|errors| errors.borrow_mut().push(e.to_string()));
            }
        });
    }
}

/// Forgets every file mounted under `root`.
pub fn unmount(root: &Path) {
    FILES.with(|files| files.borrow_mut().retain(|path, _| !path.starts_with(root)));
}

/// Makes `root` a persisted folder: the files kept under it in the browser's cache by an earlier
/// visit are mounted again, and what is stored under it from now on is kept there too. Returns
/// how many files came back.
pub async fn persist(root: &Path) -> Result<usize> {
    let cache = persisted_cache().await?;
    let keys = JsFuture::from(cache.keys())
        .await
        .map_err(|e| cache_error("cannot list the browser's cache", e))?;
    let keys: js_sys::Array = keys
        .dyn_into()
        .map_err(|e| cache_error("the browser's cache", e))?;
    let mut restored = Vec::new();
    for key in keys.iter() {
        let Ok(request) = key.dyn_into::<web_sys::Request>() else {
            continue;
        };
        let Some(path) = persisted_path(&request.url()) else {
            continue;
        };
        if !path.starts_with(root) {
            continue;
        }
        let hit = JsFuture::from(cache.match_with_request(&request))
            .await
            .map_err(|e| cache_error("cannot read the browser's cache", e))?;
        let Ok(response) = hit.dyn_into::<web_sys::Response>() else {
            continue;
        };
        let buffer = response
            .array_buffer()
            .map_err(|e| cache_error("cannot read the browser's cache", e))?;
        let buffer = JsFuture::from(buffer)
            .await
            .map_err(|e| cache_error("cannot read the browser's cache", e))?;
        restored.push((path, js_sys::Uint8Array::new(&buffer).to_vec()));
    }
    let count = restored.len();
    FILES.with(|files| {
        let mut files = files.borrow_mut();
        for (path, bytes) in restored {
            files.insert(path, Mounted::Bytes(Arc::new(bytes)));
        }
    });
    PERSISTED.with(|roots| roots.borrow_mut().push(root.to_path_buf()));
    Ok(count)
}

/// What went wrong keeping files in the browser's cache since the last call.
pub fn take_persist_errors() -> Vec<String> {
    PERSIST_ERRORS.with(|errors| std::mem::take(&mut *errors.borrow_mut()))
}

fn is_persisted(path: &Path) -> bool {
    PERSISTED.with(|roots| roots.borrow().iter().any(|root| path.starts_with(root)))
}

/// The cache key of a persisted file: a path on the page's own origin.
fn persisted_key(path: &Path) -> String {
    format!("{PERSISTED_PREFIX}{}", path.display())
}

/// The file a cache key (a full URL) stands for.
fn persisted_path(url: &str) -> Option<PathBuf> {
    let path = url.split_once("://")?.1;
    let path = &path[path.find('/')?..];
    let path = path.strip_prefix(PERSISTED_PREFIX)?;
    let decoded = js_sys::decode_uri_component(path).ok()?.as_string()?;
    Some(PathBuf::from(decoded))
}

fn cache_error(what: &str, value: wasm_bindgen::JsValue) -> Error {
    let detail = value
        .dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| value.as_string())
        .unwrap_or_else(|| format!("{value:?}"));
    Error::Input(format!("{what}: {detail}"))
}

async fn persisted_cache() -> Result<web_sys::Cache> {
    let window = web_sys::window().ok_or_else(|| Error::Input("no browser window".into()))?;
    let caches = window.caches().map_err(|e| {
        cache_error(
            "the browser's cache storage is not available (is the page served over https or \
             from localhost?)",
            e,
        )
    })?;
    JsFuture::from(caches.open(PERSISTED_CACHE))
        .await
        .map_err(|e| cache_error("cannot open the browser's cache", e))?
        .dyn_into()
        .map_err(|e| cache_error("the browser's cache", e))
}

async fn put_persisted(path: &Path, bytes: &[u8]) -> Result<()> {
    let cache = persisted_cache().await?;
    let mut body = bytes.to_vec();
    let response = web_sys::Response::new_with_opt_u8_array(Some(&mut body))
        .map_err(|e| cache_error(&format!("{}", path.display()), e))?;
    JsFuture::from(cache.put_with_str(&persisted_key(path), &response))
        .await
        .map_err(|e| {
            cache_error(
                &format!(
                    "{} could not be kept in the browser's storage (is it full?); it lasts \
                     until the page closes",
                    path.display()
                ),
                e,
            )
        })?;
    Ok(())
}

async fn delete_persisted(path: &Path) -> Result<()> {
    let cache = persisted_cache().await?;
    JsFuture::from(cache.delete_with_str(&persisted_key(path)))
        .await
        .map_err(|e| {
            cache_error(
                &format!(
                    "cannot delete {} from the browser's storage",
                    path.display()
                ),
                e,
            )
        })?;
    Ok(())
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
    let buffer = JsFuture::from(slice.array_buffer()).await.map_err(|e| {
        let name = e
            .dyn_ref::<web_sys::DomException>()
            .map(|e| e.name())
            .unwrap_or_default();
        if name == "NotReadableError" {
            "the browser can no longer read this file: a private window cannot hold a model this \
             large in memory (open the page in a normal window), or the file changed on disk \
             since its folder was picked (pick it again)"
                .to_string()
        } else {
            format!("cannot read the file: {e:?}")
        }
    })?;
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
