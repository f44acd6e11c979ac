//! The model in a browser: its files fetched over HTTPS from the Hugging Face Hub
//! (`https://huggingface.co/{repo}/resolve/{revision}/{file}`, which allows cross-origin
//! requests), or from any base URL that serves a diffusers folder (a local test server), kept in
//! the browser's Cache API so that the next visit loads without the network, and mounted
//! ([`crate::mounted`]) for the pipeline.
//!
//! A file enters the cache only whole: its length is checked against what the server declared,
//! and its SHA-256 against the Hub's `X-Linked-Etag` where the Hub gives one. A download cut short
//! (a lost connection, a closed tab) leaves nothing in the cache, and the next visit starts that
//! file again. The browser streams each body into its cache (on disk) while the page checks the
//! other copy, so a large file is never whole in the page's memory. Weights are read as safetensors only (see [`crate::mounted::mount`]).

use std::path::PathBuf;

use sha2::{Digest, Sha256};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

use super::{AUDIOLDM, DEFAULT_REVISION, DownloadProgress, Layout, RepoSpec};
use crate::{Error, Result};

/// The browser cache the model files are kept in; a new layout gets a new name.
pub const CACHE_NAME: &str = "audioldm-models-v1";

/// Files of a complete snapshot that no loader reads: fetched when the server has them, not
/// missed when it does not (a folder saved by hand often lacks them).
const UNREAD: &[&str] = &["tokenizer/special_tokens_map.json"];

/// The URL folder `model` is read from: a `http(s)://` URL as given, else a Hub repo id or alias
/// (`owner/name[@revision]`) on huggingface.co.
pub fn base_url(model: &str) -> Result<String> {
    let model = model.trim();
    if model.starts_with("https://") || model.starts_with("http://") {
        let mut base = model.to_string();
        if !base.ends_with('/') {
            base.push('/');
        }
        return Ok(base);
    }
    let spec = RepoSpec::parse(model, Some(DEFAULT_REVISION))?;
    Ok(format!(
        "https://huggingface.co/{}/resolve/{}/",
        spec.repo_id, spec.revision
    ))
}

/// Where the folders the user picks are mounted ([`mount_folder`]).
pub const LOCAL_ROOT: &str = "/local";

/// Fetches (or finds in the browser's cache) every file the pipeline needs from `model` and
/// mounts them; returns the folder to load the pipeline from. `progress` hears of every file
/// that is downloaded (a file found in the cache is not reported). A `model` under
/// [`LOCAL_ROOT`] is a folder the user picked in this visit.
pub async fn resolve(model: &str, progress: &mut dyn FnMut(DownloadProgress)) -> Result<PathBuf> {
    resolve_layout(model, &AUDIOLDM, progress).await
}

/// [`resolve`] for a folder of any [`Layout`] (e.g. [`super::CLAP`]); its optional files are
/// not fetched.
pub async fn resolve_layout(
    model: &str,
    layout: &Layout,
    progress: &mut dyn FnMut(DownloadProgress),
) -> Result<PathBuf> {
    if let Some(folder) = local_folder(model)? {
        return Ok(folder);
    }
    let base = base_url(model)?;
    let cache = open_cache().await?;
    let mut files = Vec::new();
    let requirements = layout.requirements;
    for (index, requirement) in requirements.iter().enumerate() {
        let mut found = None;
        for alternative in requirement.iter() {
            if alternative.iter().any(|f| f.ends_with(".bin")) {
                continue;
            }
            let mut blobs = Vec::new();
            for file in alternative.iter() {
                let fetched = fetch_cached(&cache, &base, file, |downloaded, total| {
                    progress(DownloadProgress {
                        file: file.to_string(),
                        file_index: index + 1,
                        file_count: requirements.len(),
                        downloaded,
                        total,
                        overall_downloaded: 0,
                        overall_total: 0,
                        finished: total > 0 && downloaded == total,
                    })
                })
                .await;
                // What no loader reads may be missing, also when the server cannot be reached
                // (the next visit, offline, without a file the server did not have).
                let fetched = match fetched {
                    Err(_) if is_unread(requirement) => None,
                    fetched => fetched?,
                };
                match fetched {
                    Some(blob) => blobs.push((file.to_string(), blob)),
                    None => break,
                }
            }
            if blobs.len() == alternative.len() {
                found = Some(blobs);
                break;
            }
        }
        match found {
            Some(blobs) => files.extend(blobs),
            None if is_unread(requirement) => {}
            None => return Err(missing(&base, requirement)),
        }
    }
    let root = PathBuf::from("/models").join(mount_name(&base));
    crate::mounted::mount(&root, files).await?;
    Ok(root)
}

/// Mounts the model folder the user picked (`name`, and its files as `(path in the folder,
/// file)`) under [`LOCAL_ROOT`], taking the files the pipeline needs (safetensors where a
/// `.bin` is there too); returns the folder to load the pipeline from. A folder without the
/// model's files is an error naming what is missing.
pub async fn mount_folder(name: &str, files: Vec<(String, web_sys::Blob)>) -> Result<PathBuf> {
    let mut files: std::collections::BTreeMap<String, web_sys::Blob> = files.into_iter().collect();
    let mut chosen = Vec::new();
    for requirement in AUDIOLDM.requirements {
        let found = requirement.iter().find(|alternative| {
            alternative
                .iter()
                .all(|f| !f.ends_with(".bin") && files.contains_key(*f))
        });
        match found {
            Some(alternative) => {
                for file in alternative.iter() {
                    if let Some(blob) = files.remove(*file) {
                        chosen.push((file.to_string(), blob));
                    }
                }
            }
            None if is_unread(requirement) => {}
            None => return Err(missing(&format!("the folder {name}"), requirement)),
        }
    }
    let root = PathBuf::from(LOCAL_ROOT).join(mount_name(name));
    crate::mounted::mount(&root, chosen).await?;
    Ok(root)
}

/// `model` as a picked folder: `Some` when it is mounted, an error when it lies under
/// [`LOCAL_ROOT`] but is not (the page was opened again: a browser forgets picked folders).
fn local_folder(model: &str) -> Result<Option<PathBuf>> {
    let path = std::path::Path::new(model.trim());
    if !path.starts_with(LOCAL_ROOT) {
        return Ok(None);
    }
    if crate::mounted::is_dir(path) {
        return Ok(Some(path.to_path_buf()));
    }
    Err(Error::Input(format!(
        "{}: the browser no longer has this folder (it forgets picked folders when the page \
         closes): pick it again with \"Folder…\"",
        path.display()
    )))
}

/// Whether no loader reads what `requirement` asks for (it may then be missing).
fn is_unread(requirement: &[&[&str]]) -> bool {
    requirement
        .iter()
        .all(|alternative| alternative.iter().all(|f| UNREAD.contains(f)))
}

/// The error for a `requirement` that `source` cannot meet.
fn missing(source: &str, requirement: &[&[&str]]) -> Error {
    let has_bin = requirement
        .iter()
        .flat_map(|a| a.iter())
        .any(|f| f.ends_with(".bin"));
    let wanted: Vec<String> = requirement
        .iter()
        .filter(|a| a.iter().all(|f| !f.ends_with(".bin")))
        .map(|a| a.join(" + "))
        .collect();
    Error::Input(format!(
        "{source} has none of {}{}",
        wanted.join(", "),
        if has_bin {
            " (the web build reads safetensors weights only, not PyTorch .bin files)"
        } else {
            ""
        }
    ))
}

/// A folder name for a base URL: its characters that are not alphanumeric become `_`.
fn mount_name(base: &str) -> String {
    base.trim_end_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn js_error(what: &str, value: JsValue) -> Error {
    let detail = value
        .as_string()
        .or_else(|| {
            value
                .dyn_ref::<js_sys::Error>()
                .map(|e| String::from(e.message()))
        })
        .unwrap_or_else(|| format!("{value:?}"));
    Error::Input(format!("{what}: {detail}"))
}

async fn open_cache() -> Result<web_sys::Cache> {
    let window = web_sys::window().ok_or_else(|| Error::Input("no browser window".into()))?;
    const NO_CACHE: &str = "the browser's cache storage is not available (is the page served \
                            over https or from localhost?)";
    let caches = window.caches().map_err(|e| js_error(NO_CACHE, e))?;
    let cache = JsFuture::from(caches.open(CACHE_NAME))
        .await
        .map_err(|e| js_error("cannot open the browser's cache", e))?;
    cache
        .dyn_into()
        .map_err(|e| js_error("the browser's cache", e))
}

/// The file `name` under `base`, from the cache or downloaded into it; `None` when the server
/// does not have it (404).
async fn fetch_cached(
    cache: &web_sys::Cache,
    base: &str,
    name: &str,
    mut progress: impl FnMut(u64, u64),
) -> Result<Option<web_sys::Blob>> {
    let url = format!("{base}{name}");
    if let Some(blob) = cached_blob(cache, &url).await? {
        return Ok(Some(blob));
    }
    let window = web_sys::window().ok_or_else(|| Error::Input("no browser window".into()))?;
    let response = JsFuture::from(window.fetch_with_str(&url))
        .await
        .map_err(|e| js_error(&format!("{url}: the download failed (offline?)"), e))?;
    let response: web_sys::Response = response.dyn_into().map_err(|e| js_error(&url, e))?;
    if response.status() == 404 {
        return Ok(None);
    }
    if !response.ok() {
        return Err(Error::Input(format!(
            "{url}: the server answered {} {}",
            response.status(),
            response.status_text()
        )));
    }
    let headers = response.headers();
    let header = |name: &str| headers.get(name).ok().flatten();
    let declared: Option<u64> = header("x-linked-size")
        .or_else(|| header("content-length"))
        .and_then(|v| v.trim().parse().ok());
    let sha256 = header("x-linked-etag")
        .map(|etag| {
            etag.trim_matches(|c| c == '"' || c == ' ')
                .to_ascii_lowercase()
        })
        .filter(|etag| etag.len() == 64 && etag.bytes().all(|b| b.is_ascii_hexdigit()));

    // The browser streams one copy of the body into its cache (on disk, never whole in the
    // page's memory: a full-size UNet is 740 MB) while this reads the other for its length and
    // hash. The entry is deleted again if they are wrong; a body cut off is never stored.
    let for_cache = web_sys::Response::clone(&response).map_err(|e| js_error(&url, e))?;
    let stored = JsFuture::from(cache.put_with_str(&url, &for_cache));
    let checked = read_checked(&url, &response, declared, sha256.as_deref(), &mut progress).await;
    let stored = stored.await;
    if let Err(e) = checked {
        let _ = JsFuture::from(cache.delete_with_str(&url)).await;
        return Err(e);
    }
    stored.map_err(|e| {
        js_error(
            &format!(
                "{url}: the browser's storage cannot keep it (a private window keeps little, or \
                 the disk is full); the model is read from there, so open the page in a normal \
                 window or free some disk space"
            ),
            e,
        )
    })?;
    cached_blob(cache, &url)
        .await?
        .map(Some)
        .ok_or_else(|| Error::Input(format!("{url}: the browser's cache lost it at once")))
}

/// Reads `response`'s body to its end, reporting progress, and checks its length against
/// `declared` and its SHA-256 against `sha256` (lowercase hex) where they are given.
async fn read_checked(
    url: &str,
    response: &web_sys::Response,
    declared: Option<u64>,
    sha256: Option<&str>,
    progress: &mut impl FnMut(u64, u64),
) -> Result<()> {
    let body = response
        .body()
        .ok_or_else(|| Error::Input(format!("{url}: the response has no body")))?;
    let reader: web_sys::ReadableStreamDefaultReader = body
        .get_reader()
        .dyn_into()
        .map_err(|e| js_error(url, e.into()))?;
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    let total = declared.unwrap_or(0);
    progress(0, total);
    loop {
        let step = JsFuture::from(reader.read())
            .await
            .map_err(|e| js_error(&format!("{url}: the download was cut off"), e))?;
        let done = js_sys::Reflect::get(&step, &JsValue::from_str("done"))
            .map(|d| d.is_truthy())
            .unwrap_or(true);
        if done {
            break;
        }
        let chunk: js_sys::Uint8Array = js_sys::Reflect::get(&step, &JsValue::from_str("value"))
            .and_then(|v| v.dyn_into())
            .map_err(|e| js_error(url, e))?;
        received += u64::from(chunk.length());
        if sha256.is_some() {
            hasher.update(chunk.to_vec());
        }
        progress(received, total.max(received));
    }
    if let Some(declared) = declared
        && declared != received
    {
        return Err(Error::Input(format!(
            "{url}: {received} bytes arrived of the {declared} declared: the download was cut \
             short; try again"
        )));
    }
    if let Some(expected) = sha256 {
        let got: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if got != expected {
            return Err(Error::Input(format!(
                "{url}: the download's SHA-256 is {got}, the Hub's is {expected}: it is damaged; \
                 try again"
            )));
        }
    }
    Ok(())
}

/// The cached copy of `url`, if the cache has it.
async fn cached_blob(cache: &web_sys::Cache, url: &str) -> Result<Option<web_sys::Blob>> {
    let hit = JsFuture::from(cache.match_with_str(url))
        .await
        .map_err(|e| js_error(&format!("{url}: cannot read the browser's cache"), e))?;
    if hit.is_undefined() {
        return Ok(None);
    }
    let response: web_sys::Response = hit.dyn_into().map_err(|e| js_error(url, e))?;
    let blob = response.blob().map_err(|e| js_error(url, e))?;
    let blob = JsFuture::from(blob)
        .await
        .map_err(|e| js_error(&format!("{url}: cannot read the browser's cache"), e))?;
    Ok(Some(blob.dyn_into().map_err(|e| js_error(url, e))?))
}
