//! Fetching what the cache lacks from the Hub: the repo is listed at one commit, the files the
//! pipeline needs are chosen, and each is streamed into the cache's `blobs/` with resume and an
//! integrity check, then linked into `snapshots/`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hf_hub::repository::{HFRepository, RepoTreeEntry, RepoTypeModel};
use hf_hub::{HFClient, HFError};

use super::*;
use crate::{Error, Result};

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Context for error messages about one repo.
struct Ctx<'a> {
    spec: &'a RepoSpec,
    endpoint: &'a str,
    cache_dir: &'a Path,
    /// What the cache lacks, appended to "cannot reach" errors.
    cache_problems: String,
}

pub(super) fn download(
    spec: &RepoSpec,
    layout: &Layout,
    cache_dir: &Path,
    options: &ResolveOptions,
    cached: &CacheState,
    progress: &mut dyn FnMut(DownloadProgress),
) -> Result<PathBuf> {
    let endpoint = std::env::var("HF_ENDPOINT")
        .ok()
        .map(|e| e.trim().trim_end_matches('/').to_string())
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
    let ctx = Ctx {
        spec,
        endpoint: &endpoint,
        cache_dir,
        cache_problems: cached.problems(),
    };
    probe_endpoint(&endpoint).map_err(|detail| ctx.cannot_reach(&detail))?;

    let token = options
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let builder = || {
        let builder = HFClient::builder()
            .endpoint(endpoint.clone())
            .cache_dir(cache_dir.to_path_buf())
            .retry_max_attempts(3);
        match token {
            Some(token) => builder.token(token),
            None => builder,
        }
    };
    let setup_failed = |e: &dyn std::fmt::Display| {
        Error::Input(format!("cannot set up the Hugging Face client: {e}"))
    };
    let client = builder().build_sync().map_err(|e| setup_failed(&e))?;
    let (owner, name) = spec.owner_name();
    let repo = client.model(owner, name);
    // File bodies are streamed through the async client, so that a partial download can be
    // continued with a range request; Xet transfers need a multi-threaded runtime.
    let streaming = builder()
        .build()
        .map_err(|e| setup_failed(&e))?
        .model(owner, name);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| setup_failed(&e))?;

    // The commit the revision points to now, then the repo's files at that commit.
    let info = if spec.revision == DEFAULT_REVISION {
        repo.info().send()
    } else {
        repo.info().revision(spec.revision.clone()).send()
    };
    let info = match info {
        Ok(info) => info,
        Err(HFError::RevisionNotFound { .. }) if matches!(repo.exists().send(), Ok(false)) => {
            return Err(ctx.repo_not_found());
        }
        Err(e) => return Err(ctx.hub_error(e, None)),
    };
    let commit = info.sha.filter(|c| is_commit_hash(c)).ok_or_else(|| {
        Error::Input(format!(
            "{} did not say which commit {spec} is at; cannot download it",
            ctx.endpoint
        ))
    })?;
    let listing: BTreeMap<String, u64> = repo
        .list_tree()
        .revision(commit.clone())
        .recursive(true)
        .send()
        .map_err(|e| ctx.hub_error(e, None))?
        .into_iter()
        .filter_map(|entry| match entry {
            // For LFS / Xet files the LFS size is the file's; `size` should be the same.
            RepoTreeEntry::File {
                path, size, lfs, ..
            } => Some((path, lfs.and_then(|l| l.size).unwrap_or(size))),
            RepoTreeEntry::Directory { .. } => None,
        })
        .collect();
    let wanted = plan_from_listing(&listing, layout).map_err(|missing| {
        Error::Input(format!(
            "{spec} (commit {commit}) is not a {} repo: it has no {}",
            layout.what,
            missing.join("; no ")
        ))
    })?;

    let snapshot = spec.cache_folder(cache_dir).join("snapshots").join(&commit);
    let mut todo = Vec::new();
    for (file, size) in &wanted {
        match entry_state(&snapshot.join(file)) {
            Entry::Ok(len) if len == *size => {}
            Entry::Missing => todo.push((file.clone(), *size, false)),
            Entry::Ok(len) => {
                tracing::warn!(
                    "{file}: cached copy has {len} bytes, the repo {size}; replacing it"
                );
                todo.push((file.clone(), *size, true));
            }
            Entry::Broken(why) => {
                tracing::warn!("{file}: cached copy is unusable ({why}); downloading it again");
                todo.push((file.clone(), *size, true));
            }
        }
    }

    let overall_total: u64 = todo.iter().map(|(_, size, _)| size).sum();
    let mut overall_done = 0u64;
    let file_count = todo.len();
    for (i, (file, size, force)) in todo.iter().enumerate() {
        tracing::info!("downloading {}/{file} ({size} bytes)", spec.repo_id);
        let mut report = |downloaded: u64, finished: bool| {
            progress(DownloadProgress {
                file: file.clone(),
                file_index: i + 1,
                file_count,
                downloaded,
                total: *size,
                overall_downloaded: overall_done + downloaded.min(*size),
                overall_total,
                finished,
            })
        };
        report(0, false);
        let path = download_resumable(
            &ctx,
            &runtime,
            &streaming,
            (&commit, file, *size),
            *force,
            &mut |b| report(b, false),
        )?;
        let len = std::fs::metadata(&path)
            .map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?
            .len();
        if len != *size {
            return Err(Error::Input(format!(
                "downloaded {}/{file} has {len} bytes, the repo lists {size}; delete {} and try \
                 again",
                spec.repo_id,
                path.display()
            )));
        }
        report(len, true);
        overall_done += size;
    }

    // Point the revision at the commit, as huggingface_hub does, so the next run (and Python)
    // finds the snapshot offline.
    if !is_commit_hash(&spec.revision) {
        let ref_path = spec
            .cache_folder(cache_dir)
            .join("refs")
            .join(&spec.revision);
        if let Some(parent) = ref_path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| Error::Io {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        std::fs::write(&ref_path, &commit).map_err(|source| Error::Io {
            path: ref_path.clone(),
            source,
        })?;
    }

    let check = check_dir(&snapshot, layout);
    if !check.is_complete() {
        return Err(Error::Input(format!(
            "after downloading, the snapshot {} is still incomplete:{}",
            snapshot.display(),
            check.describe()
        )));
    }
    Ok(snapshot)
}

/// The files to fetch from a repo listing (path → size): for each requirement, the first
/// alternative the repo has, and the optional files it has. Errors with the requirements the repo
/// cannot meet.
fn plan_from_listing(
    listing: &BTreeMap<String, u64>,
    layout: &Layout,
) -> std::result::Result<Vec<(String, u64)>, Vec<String>> {
    let mut wanted: Vec<(String, u64)> = layout
        .optional
        .iter()
        .filter_map(|f| Some((f.to_string(), *listing.get(*f)?)))
        .collect();
    let mut missing = Vec::new();
    for alternatives in layout.requirements {
        match alternatives
            .iter()
            .find(|files| files.iter().all(|f| listing.contains_key(*f)))
        {
            Some(files) => {
                wanted.extend(files.iter().map(|f| (f.to_string(), listing[*f])));
            }
            None => missing.push(describe_alternatives(alternatives)),
        }
    }
    if missing.is_empty() {
        Ok(wanted)
    } else {
        Err(missing)
    }
}

/// Downloads `file` of `commit` into the cache the way huggingface_hub lays it out
/// (`blobs/{etag}`, and `snapshots/{commit}/{file}` linking to it), continuing a partial
/// `blobs/{etag}.incomplete` that an interrupted run (ours or Python's) left behind with a range
/// request instead of starting over. A blob whose etag is a SHA-256 (LFS and Xet files) is
/// checked against it before it enters the cache. With `replace`, the cached blob is distrusted
/// (the entry that used it was unusable) and fetched again. Bytes received are reported on this
/// thread.
fn download_resumable(
    ctx: &Ctx,
    runtime: &tokio::runtime::Runtime,
    repo: &HFRepository<RepoTypeModel>,
    (commit, file, size): (&str, &str, u64),
    replace: bool,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<PathBuf> {
    let hub = |e: HFError| ctx.hub_error(e, Some(file));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let meta = runtime
        .block_on(
            repo.get_file_metadata()
                .filepath(file)
                .revision(commit)
                .send(),
        )
        .map_err(hub)?;
    let repo_dir = ctx.spec.cache_folder(ctx.cache_dir);
    let blobs = repo_dir.join("blobs");
    std::fs::create_dir_all(&blobs).map_err(io(&blobs))?;
    let blob = blobs.join(&meta.etag);
    let partial = blobs.join(format!("{}.incomplete", meta.etag));
    // Another snapshot may already hold the same content.
    let have_blob =
        !replace && std::fs::metadata(&blob).is_ok_and(|m| m.is_file() && m.len() == size);
    if !have_blob {
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&partial)
            .map_err(io(&partial))?;
        let mut done = out.metadata().map_err(io(&partial))?.len();
        if done > size {
            out.set_len(0).map_err(io(&partial))?;
            done = 0;
        }
        if done > 0 {
            tracing::info!("{file}: resuming at byte {done} of {size}");
        }
        if done < size {
            runtime.block_on(async {
                let (length, mut stream) = repo
                    .download_file_stream()
                    .filename(file)
                    .revision(commit)
                    .range(done..size)
                    .send()
                    .await
                    .map_err(hub)?;
                if done > 0 && length == Some(size) {
                    // The server ignored the range and sends the whole file.
                    out.set_len(0).map_err(io(&partial))?;
                    done = 0;
                }
                on_bytes(done);
                let mut last_report = Instant::now();
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(hub)?;
                    out.write_all(&chunk).map_err(io(&partial))?;
                    done += chunk.len() as u64;
                    // At most ~20 reports a second: a bar needs no more, and a GUI wants fewer.
                    if last_report.elapsed() >= Duration::from_millis(50) {
                        last_report = Instant::now();
                        on_bytes(done);
                    }
                }
                Ok::<_, Error>(())
            })?;
        }
        out.sync_all().map_err(io(&partial))?;
        drop(out);
        let len = std::fs::metadata(&partial).map_err(io(&partial))?.len();
        if len != size {
            return Err(Error::Input(format!(
                "download of {}/{file} from {} stopped at {len} of {size} bytes. Run again to \
                 continue where it stopped.",
                ctx.spec.repo_id,
                ctx.host()
            )));
        }
        if is_sha256(&meta.etag) {
            let digest = sha256_file(&partial).map_err(io(&partial))?;
            if digest != meta.etag.to_ascii_lowercase() {
                let _ = std::fs::remove_file(&partial);
                return Err(Error::Input(format!(
                    "download of {}/{file} is corrupt (SHA-256 {digest}, expected {}); it was \
                     deleted. Run again to download it anew.",
                    ctx.spec.repo_id, meta.etag
                )));
            }
        }
        std::fs::rename(&partial, &blob).map_err(io(&blob))?;
    }
    on_bytes(size);
    let entry = repo_dir.join("snapshots").join(commit).join(file);
    link_snapshot_entry(&entry, file, &blob, &meta.etag).map_err(io(&entry))?;
    Ok(entry)
}

fn is_sha256(etag: &str) -> bool {
    etag.len() == 64 && etag.bytes().all(|b| b.is_ascii_hexdigit())
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Points snapshot entry `entry` (of repo path `file`) at its blob: a relative symlink
/// (`../../blobs/{etag}`, one more `..` per folder level of the file), as huggingface_hub makes
/// it; where links are not available, a hard link or a copy.
fn link_snapshot_entry(entry: &Path, file: &str, blob: &Path, etag: &str) -> std::io::Result<()> {
    if let Some(parent) = entry.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if std::fs::symlink_metadata(entry).is_ok() {
        std::fs::remove_file(entry)?;
    }
    #[cfg(unix)]
    {
        let _ = blob;
        let target = format!(
            "{}blobs/{etag}",
            "../".repeat(file.matches('/').count() + 2)
        );
        std::os::unix::fs::symlink(target, entry)
    }
    #[cfg(not(unix))]
    {
        let _ = (file, etag);
        std::fs::hard_link(blob, entry).or_else(|_| std::fs::copy(blob, entry).map(|_| ()))
    }
}

/// Fails fast when the endpoint cannot be reached: reqwest has no connect timeout, so a silently
/// dropped connection would otherwise hang for minutes. Skipped behind a proxy, where the direct
/// route may well be closed.
fn probe_endpoint(endpoint: &str) -> std::result::Result<(), String> {
    let proxy_vars: &[&str] = match endpoint.split_once("://") {
        Some(("https", _)) => &["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"],
        Some(("http", _)) => &["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"],
        _ => return Ok(()),
    };
    if proxy_vars
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|p| !p.is_empty()))
    {
        return Ok(());
    }
    probe_direct(endpoint)
}

/// Resolves the endpoint's host and opens (and closes) a TCP connection to it.
fn probe_direct(endpoint: &str) -> std::result::Result<(), String> {
    use std::net::{TcpStream, ToSocketAddrs};

    let Some((scheme, rest)) = endpoint.split_once("://") else {
        return Ok(());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let default_port = if scheme == "https" { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').unwrap_or((v6, ""));
        let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
        (host, port.unwrap_or(default_port))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => match p.parse() {
                Ok(port) => (h, port),
                Err(_) => return Ok(()),
            },
            None => (authority, default_port),
        }
    };
    if host.is_empty() {
        return Ok(());
    }
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last_error = format!("{host} has no address");
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(&addr, left.min(Duration::from_secs(5))) {
            Ok(_) => return Ok(()),
            Err(e) => last_error = format!("cannot connect to {addr}: {e}"),
        }
    }
    Err(last_error)
}

impl Ctx<'_> {
    fn host(&self) -> &str {
        let rest = self
            .endpoint
            .split_once("://")
            .map_or(self.endpoint, |(_, r)| r);
        rest.split('/').next().unwrap_or(rest)
    }

    fn cannot_reach(&self, detail: &str) -> Error {
        Error::Input(format!(
            "cannot reach {} ({detail}) to fetch {}. Check the network connection (and \
             HF_ENDPOINT or proxy settings), or use offline mode (--offline / HF_HUB_OFFLINE=1) \
             with a cached model, or pass a local model folder.{}",
            self.host(),
            self.spec,
            self.cache_problems
        ))
    }

    fn repo_not_found(&self) -> Error {
        Error::Input(format!(
            "model repo `{}` not found on {}. Check the name (known models: {}; default \
             `{DEFAULT_MODEL}`); a private repo also needs a token (HF_TOKEN or --token).",
            self.spec.repo_id,
            self.host(),
            ALIASES
                .iter()
                .map(|(_, repo)| *repo)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }

    fn hub_error(&self, e: HFError, file: Option<&str>) -> Error {
        let spec = self.spec;
        match e {
            HFError::Request { ref source, .. } if source.is_connect() || source.is_timeout() => {
                self.cannot_reach(&e.to_string())
            }
            HFError::RepoNotFound { .. } => self.repo_not_found(),
            HFError::AuthRequired { .. } => Error::Input(format!(
                "`{}` on {} needs a valid token: it does not exist, or it is private or gated. \
                 Check the name, or set HF_TOKEN (or --token) to a token that can read it ({e}).",
                spec.repo_id,
                self.host()
            )),
            HFError::Forbidden { .. } => Error::Input(format!(
                "access to `{}` is refused ({e}). For a gated model, accept its conditions at \
                 {}/{} and use a token of that account (HF_TOKEN or --token).",
                spec.repo_id, self.endpoint, spec.repo_id
            )),
            HFError::RevisionNotFound { .. } => Error::Input(format!(
                "revision `{}` not found in `{}`",
                spec.revision, spec.repo_id
            )),
            HFError::EntryNotFound { ref path, .. } => Error::Input(format!(
                "`{path}` is missing in {spec}: the repo does not have the file it lists"
            )),
            HFError::RateLimited { .. } => Error::Input(format!(
                "{} is rate-limiting downloads ({e}); try again later, or log in with a token \
                 (HF_TOKEN or --token)",
                self.host()
            )),
            HFError::CacheLockTimeout { ref path } => Error::Input(format!(
                "timed out waiting for the cache lock {}: another process seems to be downloading \
                 the same file. Wait for it to finish, or delete the lock if none is running.",
                path.display()
            )),
            HFError::Io(source) => Error::Io {
                path: match file {
                    Some(f) => spec.cache_folder(self.cache_dir).join(f),
                    None => self.cache_dir.to_path_buf(),
                },
                source,
            },
            e => match file {
                Some(f) => Error::Input(format!(
                    "download of {}/{f} from {} failed: {e}. Run again to continue: what was \
                     downloaded is kept in the cache.",
                    spec.repo_id,
                    self.host()
                )),
                None => Error::Input(format!("cannot look up {spec} on {}: {e}", self.host())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_prefers_safetensors_and_falls_back_to_bin() {
        let mut listing: BTreeMap<String, u64> = AUDIOLDM
            .requirements
            .iter()
            .flat_map(|alts| alts.iter().flat_map(|a| a.iter()))
            .map(|f| (f.to_string(), 1))
            .collect();
        let plan = plan_from_listing(&listing, &AUDIOLDM).unwrap();
        let files: Vec<&str> = plan.iter().map(|(f, _)| f.as_str()).collect();
        assert!(files.contains(&"unet/diffusion_pytorch_model.safetensors"));
        assert!(!files.contains(&"unet/diffusion_pytorch_model.bin"));
        assert!(files.contains(&"tokenizer/tokenizer.json"));
        assert!(!files.contains(&"tokenizer/vocab.json"));

        listing.remove("unet/diffusion_pytorch_model.safetensors");
        listing.remove("tokenizer/tokenizer.json");
        let plan = plan_from_listing(&listing, &AUDIOLDM).unwrap();
        let files: Vec<&str> = plan.iter().map(|(f, _)| f.as_str()).collect();
        assert!(files.contains(&"unet/diffusion_pytorch_model.bin"));
        assert!(files.contains(&"tokenizer/vocab.json"));
        assert!(files.contains(&"tokenizer/merges.txt"));

        listing.remove("vocoder/model.safetensors");
        listing.remove("vocoder/pytorch_model.bin");
        listing.remove("scheduler/scheduler_config.json");
        let missing = plan_from_listing(&listing, &AUDIOLDM).unwrap_err();
        assert_eq!(
            missing,
            [
                "vocoder/model.safetensors (or vocoder/pytorch_model.bin)",
                "scheduler/scheduler_config.json"
            ]
        );
    }

    #[test]
    fn clap_plan_takes_the_optional_tokenizer_files_the_repo_has() {
        let listing: BTreeMap<String, u64> = [
            ("config.json", 1),
            ("pytorch_model.bin", 2),
            ("preprocessor_config.json", 3),
            ("vocab.json", 4),
            ("merges.txt", 5),
            ("README.md", 6),
        ]
        .into_iter()
        .map(|(f, n)| (f.to_string(), n))
        .collect();
        let mut plan = plan_from_listing(&listing, &CLAP).unwrap();
        plan.sort();
        let files: Vec<&str> = plan.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            files,
            [
                "config.json",
                "merges.txt",
                "preprocessor_config.json",
                "pytorch_model.bin",
                "vocab.json"
            ]
        );
        let mut listing = listing;
        listing.remove("preprocessor_config.json");
        assert_eq!(
            plan_from_listing(&listing, &CLAP).unwrap_err(),
            ["preprocessor_config.json"]
        );
    }

    #[test]
    fn probe_reports_refused_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(probe_direct(&format!("http://127.0.0.1:{port}")).is_ok());
        drop(listener);
        let err = probe_direct(&format!("http://127.0.0.1:{port}/")).unwrap_err();
        assert!(err.contains("cannot connect"), "{err}");
    }
}
