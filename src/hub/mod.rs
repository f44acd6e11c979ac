//! Where the model comes from: a local folder, or a Hugging Face repo resolved through the standard
//! Hugging Face cache.
//!
//! [`resolve`] turns what the user typed (`--model`) into a local folder in diffusers layout
//! (`model_index.json`, `unet/`, `vae/`, `text_encoder/`, `vocoder/`, `tokenizer/`, `scheduler/`):
//!
//! 1. An existing folder is returned as it is; something that looks like a path but does not exist
//!    is an error (it is never sent to the Hub).
//! 2. Anything else is a repo id `owner/name[@revision]`, after alias expansion
//!    (`audioldm-s-full-v2` → `cvssp/audioldm-s-full-v2`, see [`ALIASES`]).
//! 3. The repo is looked up in the cache that Python's `huggingface_hub` / diffusers use
//!    ([`default_cache_dir`]: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//!    `~/.cache/huggingface/hub`), in its layout: `models--{owner}--{name}/refs/{revision}` holds a
//!    commit hash, `snapshots/{commit}/{path}` links to `blobs/{etag}`. When the snapshot holds
//!    every file the pipeline needs, it is returned without touching the network, so models that
//!    diffusers already downloaded are reused as they are.
//! 4. Otherwise (and unless offline) the repo is listed on the Hub, the files the pipeline needs are
//!    chosen (safetensors weights, else `.bin`), and the missing ones are streamed with `hf-hub`
//!    into that same cache, writing the same `blobs/` + `snapshots/` + `refs/` layout. A download
//!    cut short leaves `blobs/{etag}.incomplete` (the name huggingface_hub uses); the next run
//!    continues it with a range request, and a file whose etag is a SHA-256 is checked against it
//!    before it enters the cache.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

#[cfg(feature = "download")]
mod download;
#[cfg(target_arch = "wasm32")]
pub mod web;
#[cfg(feature = "download")]
use download::download;

/// The model used when none is given.
pub const DEFAULT_MODEL: &str = "cvssp/audioldm-s-full-v2";

/// The revision used when none is given.
pub const DEFAULT_REVISION: &str = "main";

/// Short names accepted in place of a repo id, and the repos they stand for.
pub const ALIASES: &[(&str, &str)] = &[
    ("audioldm-s-full", "cvssp/audioldm"),
    ("audioldm-s-full-v2", "cvssp/audioldm-s-full-v2"),
    ("audioldm-m-full", "cvssp/audioldm-m-full"),
    ("audioldm-l-full", "cvssp/audioldm-l-full"),
];

/// What a model folder holds: the files its loaders need, as requirements (each a list of
/// alternatives in order of preference, the order the loaders try them; an alternative is met
/// when all of its files exist), and files read when present.
#[derive(Debug)]
pub struct Layout {
    /// What such a folder is, for messages ("diffusers AudioLDM model").
    pub what: &'static str,
    /// The file that marks a folder of this kind.
    marker: &'static str,
    requirements: &'static [&'static [&'static [&'static str]]],
    /// Downloaded when the repo has them, never missed.
    #[cfg_attr(not(feature = "download"), allow(dead_code))]
    optional: &'static [&'static str],
}

/// A diffusers `AudioLDMPipeline` folder.
pub const AUDIOLDM: Layout = Layout {
    what: "diffusers AudioLDM model",
    marker: "model_index.json",
    requirements: &[
        &[&["model_index.json"]],
        &[&["unet/config.json"]],
        &[
            &["unet/diffusion_pytorch_model.safetensors"],
            &["unet/diffusion_pytorch_model.bin"],
        ],
        &[&["vae/config.json"]],
        &[
            &["vae/diffusion_pytorch_model.safetensors"],
            &["vae/diffusion_pytorch_model.bin"],
        ],
        &[&["text_encoder/config.json"]],
        &[
            &["text_encoder/model.safetensors"],
            &["text_encoder/pytorch_model.bin"],
        ],
        &[&["vocoder/config.json"]],
        &[
            &["vocoder/model.safetensors"],
            &["vocoder/pytorch_model.bin"],
        ],
        &[
            &["tokenizer/tokenizer.json"],
            &["tokenizer/vocab.json", "tokenizer/merges.txt"],
        ],
        &[&["tokenizer/tokenizer_config.json"]],
        &[&["tokenizer/special_tokens_map.json"]],
        &[&["scheduler/scheduler_config.json"]],
    ],
    optional: &[],
};

/// A transformers `ClapModel` folder (both towers) with its feature extractor's config. Its
/// tokenizer files are optional: without them the pipeline's tokenizer is used (the CLAP models
/// that pair with AudioLDM share its RoBERTa vocabulary).
pub const CLAP: Layout = Layout {
    what: "transformers CLAP model",
    marker: "config.json",
    requirements: &[
        &[&["config.json"]],
        &[&["model.safetensors"], &["pytorch_model.bin"]],
        &[&["preprocessor_config.json"]],
    ],
    optional: &[
        "tokenizer.json",
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ],
};

/// The CLAP model each AudioLDM checkpoint pairs with: converted from the CLAP inside that
/// AudioLDM checkpoint, so its audio embeddings lie in the space the UNet was trained on.
pub const CLAP_COMPANIONS: &[(&str, &str)] = &[
    (
        "cvssp/audioldm-s-full-v2",
        "sanchit-gandhi/clap-htsat-unfused-s-full-v2",
    ),
    (
        "cvssp/audioldm",
        "sanchit-gandhi/clap-htsat-unfused-s-full-v2",
    ),
    (
        "cvssp/audioldm-m-full",
        "sanchit-gandhi/clap-htsat-unfused-m-full",
    ),
    (
        "cvssp/audioldm-l-full",
        "sanchit-gandhi/clap-htsat-unfused-m-full",
    ),
];

/// The CLAP companion of `model` (a repo id with or without `@revision`, or an alias), `None` for
/// a local folder or a repo without one.
pub fn clap_companion(model: &str) -> Option<&'static str> {
    let id = model.trim();
    let id = id.split_once('@').map_or(id, |(id, _)| id);
    let id = expand_alias(id);
    CLAP_COMPANIONS
        .iter()
        .find(|(audioldm, _)| *audioldm == id)
        .map(|(_, clap)| *clap)
}

/// How [`resolve`] may find or fetch a model.
#[derive(Clone, Default)]
pub struct ResolveOptions {
    /// Never touch the network: use the cache or fail, listing what is missing. Also on when the
    /// environment has `HF_HUB_OFFLINE=1` (as in Python's `huggingface_hub`).
    pub offline: bool,
    /// Branch, tag or commit hash; default `main`. A `model@revision` suffix is the same thing
    /// (giving two different ones is an error).
    pub revision: Option<String>,
    /// The Hugging Face hub cache folder; default [`default_cache_dir`].
    pub cache_dir: Option<PathBuf>,
    /// Access token for gated or private repos; default `$HF_TOKEN`, else the token file that
    /// `huggingface-cli login` writes (`$HF_HOME/token`).
    pub token: Option<String>,
}

impl std::fmt::Debug for ResolveOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolveOptions")
            .field("offline", &self.offline)
            .field("revision", &self.revision)
            .field("cache_dir", &self.cache_dir)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Progress of a download, reported to [`resolve`]'s callback: per file, and over all the files
/// this call downloads. Nothing is reported when everything is already cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadProgress {
    /// Path of the file in the repo, e.g. `unet/diffusion_pytorch_model.safetensors`.
    pub file: String,
    /// 1-based position of this file among the files being downloaded.
    pub file_index: usize,
    /// How many files are being downloaded.
    pub file_count: usize,
    /// Bytes of this file received so far.
    pub downloaded: u64,
    /// Size of this file in bytes (0 when unknown).
    pub total: u64,
    /// Bytes received so far over all the files being downloaded.
    pub overall_downloaded: u64,
    /// Size of all the files being downloaded.
    pub overall_total: u64,
    /// True on the last report of a file: it is complete and in the cache.
    pub finished: bool,
}

impl Layout {
    /// The first alternative of every requirement, e.g. "model_index.json, unet/config.json, ...".
    fn describe(&self) -> String {
        self.requirements
            .iter()
            .map(|alternatives| alternatives[0].join(" + "))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A Hugging Face model repo and revision, parsed from `owner/name[@revision]` or an alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoSpec {
    /// `owner/name`.
    pub repo_id: String,
    /// Branch, tag or commit hash.
    pub revision: String,
}

impl RepoSpec {
    /// Parses `owner/name`, `owner/name@revision` or an alias (`audioldm-m-full@revision`).
    /// `revision` (from an option) applies when the text has no `@revision`.
    pub fn parse(model: &str, revision: Option<&str>) -> Result<Self> {
        let model = model.trim();
        let (id, inline_rev) = match model.split_once('@') {
            Some((id, rev)) => (id, Some(rev)),
            None => (model, None),
        };
        let option_rev = revision.map(str::trim).filter(|r| !r.is_empty());
        let revision = match (inline_rev, option_rev) {
            (Some(a), Some(b)) if a != b => {
                return Err(Error::Input(format!(
                    "model `{model}` names revision `{a}` but the revision option says `{b}`; \
                     give only one"
                )));
            }
            (Some(a), _) => a,
            (None, Some(b)) => b,
            (None, None) => DEFAULT_REVISION,
        };
        let repo_id = expand_alias(id);
        validate_repo_id(repo_id)?;
        validate_revision(revision)?;
        Ok(Self {
            repo_id: repo_id.to_string(),
            revision: revision.to_string(),
        })
    }

    /// The repo's folder in a hub cache: `{cache}/models--{owner}--{name}`.
    pub fn cache_folder(&self, cache_dir: &Path) -> PathBuf {
        cache_dir.join(format!("models--{}", self.repo_id.replace('/', "--")))
    }

    #[cfg(feature = "download")]
    fn owner_name(&self) -> (&str, &str) {
        self.repo_id.split_once('/').unwrap_or(("", &self.repo_id))
    }
}

impl std::fmt::Display for RepoSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.repo_id, self.revision)
    }
}

/// The repo id an alias stands for; any other text is returned as it is.
pub fn expand_alias(model: &str) -> &str {
    ALIASES
        .iter()
        .find(|(alias, _)| *alias == model)
        .map_or(model, |(_, repo)| repo)
}

/// The Hugging Face hub cache folder, found as Python's `huggingface_hub` finds it:
/// `$HF_HUB_CACHE`, `$HUGGINGFACE_HUB_CACHE`, `$HF_HOME/hub`, `$XDG_CACHE_HOME/huggingface/hub`,
/// else `~/.cache/huggingface/hub`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = env_path("HF_HUB_CACHE").or_else(|| env_path("HUGGINGFACE_HUB_CACHE")) {
        return dir;
    }
    if let Some(home) = env_path("HF_HOME") {
        return home.join("hub");
    }
    if let Some(xdg) = env_path("XDG_CACHE_HOME") {
        return xdg.join("huggingface").join("hub");
    }
    home_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".cache")
        .join("huggingface")
        .join("hub")
}

/// Whether the environment asks for offline mode (`HF_HUB_OFFLINE` = 1/true/yes/on).
pub fn offline_from_env() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// Resolves `model` (a local folder, a repo id `owner/name[@revision]`, or an alias) to a local
/// folder in diffusers layout, downloading into the Hugging Face cache what is missing (see the
/// module docs). `progress` hears about each downloaded file; it is called on this thread.
pub fn resolve(
    model: &str,
    options: &ResolveOptions,
    progress: &mut dyn FnMut(DownloadProgress),
) -> Result<PathBuf> {
    resolve_layout(model, &AUDIOLDM, options, progress)
}

/// [`resolve`] for a folder of any [`Layout`] (e.g. [`CLAP`]).
pub fn resolve_layout(
    model: &str,
    layout: &Layout,
    options: &ResolveOptions,
    progress: &mut dyn FnMut(DownloadProgress),
) -> Result<PathBuf> {
    if let Some(dir) = local_folder(model, layout)? {
        return Ok(dir);
    }
    let spec = RepoSpec::parse(model, options.revision.as_deref())?;
    let cache_dir = options.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let cached = inspect_cache(&spec, layout, &cache_dir);
    if let CacheState::Complete(snapshot) = cached {
        tracing::debug!("{spec}: using cached snapshot {}", snapshot.display());
        return Ok(snapshot);
    }
    if options.offline || offline_from_env() {
        return Err(Error::Input(cached.offline_message(&spec, &cache_dir)));
    }
    download(&spec, layout, &cache_dir, options, &cached, progress)
}

/// Builds without the `download` feature (the fuzz targets, the web build) resolve local folders
/// and complete cached snapshots only.
#[cfg(not(feature = "download"))]
fn download(
    spec: &RepoSpec,
    _: &Layout,
    cache_dir: &Path,
    _: &ResolveOptions,
    cached: &CacheState,
    _: &mut dyn FnMut(DownloadProgress),
) -> Result<PathBuf> {
    Err(Error::Input(format!(
        "model {spec} is not complete in the Hugging Face cache {}, and this build cannot \
         download it (it was built without the `download` feature); pass a local model folder.{}",
        cache_dir.display(),
        cached.problems()
    )))
}

/// The cached snapshot of `model` when it is complete, found without touching the network; `None`
/// when something is missing. A local folder is returned as [`resolve`] returns it.
pub fn find_cached(model: &str, options: &ResolveOptions) -> Result<Option<PathBuf>> {
    find_cached_layout(model, &AUDIOLDM, options)
}

/// [`find_cached`] for a folder of any [`Layout`].
pub fn find_cached_layout(
    model: &str,
    layout: &Layout,
    options: &ResolveOptions,
) -> Result<Option<PathBuf>> {
    if let Some(dir) = local_folder(model, layout)? {
        return Ok(Some(dir));
    }
    let spec = RepoSpec::parse(model, options.revision.as_deref())?;
    let cache_dir = options.cache_dir.clone().unwrap_or_else(default_cache_dir);
    Ok(match inspect_cache(&spec, layout, &cache_dir) {
        CacheState::Complete(snapshot) => Some(snapshot),
        _ => None,
    })
}

// ---------------------------------------------------------------------------------------------
// Local folders and names

/// `Some(folder)` when `model` names an existing folder; an error when it names a file, or looks
/// like a path but does not exist; `None` when it should be read as a repo id.
fn local_folder(model: &str, layout: &Layout) -> Result<Option<PathBuf>> {
    let model = model.trim();
    if model.is_empty() {
        return Err(Error::Input(format!(
            "no model given: pass a local model folder, a Hugging Face repo id such as \
             `{DEFAULT_MODEL}`, or one of {}",
            alias_list()
        )));
    }
    let path = expand_tilde(model);
    if path.is_dir() {
        if !path.join(layout.marker).is_file() {
            return Err(Error::Input(format!(
                "{} is not a {} folder: it has no {}",
                path.display(),
                layout.what,
                layout.marker
            )));
        }
        let check = check_dir(&path, layout);
        for (file, reason) in &check.broken {
            tracing::warn!("{}: {file}: {reason}", path.display());
        }
        for missing in &check.missing {
            // The loaders report what they need; this is only a hint for a download gone wrong.
            tracing::debug!("{}: missing {missing}", path.display());
        }
        return Ok(Some(path));
    }
    if path.exists() {
        return Err(Error::Input(format!(
            "{} is a file; the model must be a {} folder ({})",
            path.display(),
            layout.what,
            layout.describe()
        )));
    }
    if looks_like_path(model) {
        return Err(Error::Input(format!(
            "no such model folder: {} (for a Hugging Face model, give its repo id `owner/name`, \
             e.g. `{DEFAULT_MODEL}`)",
            path.display()
        )));
    }
    Ok(None)
}

fn looks_like_path(model: &str) -> bool {
    let id = model.split_once('@').map_or(model, |(id, _)| id);
    model.starts_with(['.', '/', '~', '\\'])
        || model.contains('\\')
        || Path::new(model).is_absolute()
        || model.as_bytes().get(1) == Some(&b':')
        || id.matches('/').count() > 1
}

fn expand_tilde(model: &str) -> PathBuf {
    if let Some(rest) = model
        .strip_prefix("~/")
        .or_else(|| model.strip_prefix("~\\"))
        && let Some(home) = home_dir()
    {
        return home.join(rest);
    }
    if model == "~"
        && let Some(home) = home_dir()
    {
        return home;
    }
    PathBuf::from(model)
}

fn home_dir() -> Option<PathBuf> {
    std::env::home_dir().filter(|h| !h.as_os_str().is_empty())
}

fn env_path(name: &str) -> Option<PathBuf> {
    let value = std::env::var_os(name)?;
    if value.is_empty() {
        return None;
    }
    Some(match value.to_str() {
        Some(s) => expand_tilde(s),
        None => PathBuf::from(value),
    })
}

fn alias_list() -> String {
    ALIASES
        .iter()
        .map(|(alias, _)| format!("`{alias}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Hugging Face's rules: `owner/name`, each of letters, digits, `-`, `_`, `.`, not starting or
/// ending with `-` or `.`, without `--` or `..`; the name at most 96 characters.
fn validate_repo_id(id: &str) -> Result<()> {
    let invalid = |why: &str| {
        Error::Input(format!(
            "invalid model `{id}`: {why}. Expected a local model folder, a Hugging Face repo id \
             `owner/name` (e.g. `{DEFAULT_MODEL}`), or one of {}",
            alias_list()
        ))
    };
    let Some((owner, name)) = id.split_once('/') else {
        return Err(invalid("a repo id has the form `owner/name`"));
    };
    for (part, what) in [(owner, "owner"), (name, "name")] {
        if part.is_empty() {
            return Err(invalid(&format!("the {what} is empty")));
        }
        if part.len() > 96 {
            return Err(invalid(&format!("the {what} is longer than 96 characters")));
        }
        if let Some(c) = part
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(invalid(&format!(
                "`{c}` is not allowed (only letters, digits, `-`, `_` and `.`)"
            )));
        }
        if part.starts_with(['-', '.']) || part.ends_with(['-', '.']) {
            return Err(invalid(&format!(
                "the {what} may not start or end with `-` or `.`"
            )));
        }
        if part.contains("--") || part.contains("..") {
            return Err(invalid("`--` and `..` are not allowed"));
        }
    }
    if name.ends_with(".git") {
        return Err(invalid("the name may not end with `.git`"));
    }
    Ok(())
}

/// A branch, tag (possibly with `/`, like `refs/pr/1`) or commit; it becomes a path under `refs/`,
/// so it may not climb out of it.
fn validate_revision(revision: &str) -> Result<()> {
    let bad = revision.is_empty()
        || revision.starts_with('/')
        || revision.ends_with('/')
        || revision.contains('\\')
        || revision
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        || revision
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..");
    if bad {
        return Err(Error::Input(format!(
            "invalid revision `{revision}`: expected a branch, tag or commit hash such as \
             `{DEFAULT_REVISION}`"
        )));
    }
    Ok(())
}

fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit())
}

// ---------------------------------------------------------------------------------------------
// The cache

/// What the cache holds for a repo and revision.
enum CacheState {
    /// The repo was never cached.
    NoRepo,
    /// The repo is cached, but not this revision (no `refs/{revision}`, or its snapshot is gone).
    NoRevision,
    /// The snapshot exists but misses files or holds broken ones.
    Incomplete { snapshot: PathBuf, check: DirCheck },
    /// The snapshot holds every needed file.
    Complete(PathBuf),
}

impl CacheState {
    fn offline_message(&self, spec: &RepoSpec, cache_dir: &Path) -> String {
        let hint = "Run once without offline mode (no --offline, no HF_HUB_OFFLINE=1) to download \
                    it, or pass a local model folder.";
        match self {
            CacheState::NoRepo => format!(
                "offline: model {spec} is not in the Hugging Face cache {} (no {}). {hint}",
                cache_dir.display(),
                spec.cache_folder(cache_dir).display()
            ),
            CacheState::NoRevision if is_commit_hash(&spec.revision) => format!(
                "offline: model {} is in the Hugging Face cache {}, but not its commit {} (no \
                 snapshots/{}). {hint}",
                spec.repo_id,
                cache_dir.display(),
                spec.revision,
                spec.revision
            ),
            CacheState::NoRevision => format!(
                "offline: model {} is in the Hugging Face cache {}, but not its revision `{}` (no \
                 refs/{} or snapshot for it). {hint}",
                spec.repo_id,
                cache_dir.display(),
                spec.revision,
                spec.revision
            ),
            CacheState::Incomplete { snapshot, check } => format!(
                "offline: the cached snapshot of {spec} ({}) is incomplete:{}\n{hint}",
                snapshot.display(),
                check.describe()
            ),
            CacheState::Complete(_) => String::new(),
        }
    }

    fn problems(&self) -> String {
        match self {
            CacheState::Incomplete { check, .. } => {
                format!(" The cached snapshot is incomplete:{}", check.describe())
            }
            _ => String::new(),
        }
    }
}

fn inspect_cache(spec: &RepoSpec, layout: &Layout, cache_dir: &Path) -> CacheState {
    let repo_dir = spec.cache_folder(cache_dir);
    if !repo_dir.is_dir() {
        return CacheState::NoRepo;
    }
    let commit = if is_commit_hash(&spec.revision) {
        Some(spec.revision.to_ascii_lowercase())
    } else {
        std::fs::read_to_string(repo_dir.join("refs").join(&spec.revision))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|c| is_commit_hash(c))
    };
    let Some(commit) = commit else {
        return CacheState::NoRevision;
    };
    let snapshot = repo_dir.join("snapshots").join(&commit);
    if !snapshot.is_dir() {
        return CacheState::NoRevision;
    }
    let check = check_dir(&snapshot, layout);
    if check.is_complete() {
        CacheState::Complete(snapshot)
    } else {
        CacheState::Incomplete { snapshot, check }
    }
}

/// What a folder holds of a [`Layout`]'s requirements.
#[derive(Debug, Default)]
struct DirCheck {
    /// Requirements met by no alternative, each as "a (or b + c)".
    missing: Vec<String>,
    /// Files present but unusable: (path in the repo, why).
    broken: Vec<(String, String)>,
}

impl DirCheck {
    fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.broken.is_empty()
    }

    fn describe(&self) -> String {
        let mut text = String::new();
        if !self.missing.is_empty() {
            text.push_str("\n  missing files:");
            for m in &self.missing {
                text.push_str("\n    - ");
                text.push_str(m);
            }
        }
        if !self.broken.is_empty() {
            text.push_str("\n  corrupt or partial cache entries (delete them and download again):");
            for (file, why) in &self.broken {
                text.push_str(&format!("\n    - {file}: {why}"));
            }
        }
        text
    }
}

/// Checks a folder against a layout's requirements, taking alternatives in the loaders' order: the
/// first one present decides (a broken file there is reported, not skipped, since a loader would
/// pick it).
fn check_dir(dir: &Path, layout: &Layout) -> DirCheck {
    let mut check = DirCheck::default();
    for alternatives in layout.requirements {
        let mut met = false;
        let mut broken = Vec::new();
        for files in alternatives.iter() {
            let states: Vec<_> = files
                .iter()
                .map(|f| (f, entry_state(&dir.join(f))))
                .collect();
            if states.iter().all(|(_, s)| matches!(s, Entry::Ok(_))) {
                met = true;
                break;
            }
            for (f, s) in &states {
                if let Entry::Broken(why) = s {
                    broken.push((f.to_string(), why.clone()));
                }
            }
            if !broken.is_empty() {
                break;
            }
        }
        if met {
            continue;
        }
        if broken.is_empty() {
            check.missing.push(describe_alternatives(alternatives));
        } else {
            check.broken.extend(broken);
        }
    }
    check
}

fn describe_alternatives(alternatives: &[&[&str]]) -> String {
    let mut text = alternatives[0].join(" + ");
    if alternatives.len() > 1 {
        let rest: Vec<String> = alternatives[1..].iter().map(|a| a.join(" + ")).collect();
        text.push_str(&format!(" (or {})", rest.join(", or ")));
    }
    text
}

/// The state of one file of a snapshot.
enum Entry {
    /// Present and plausible; its size (which a download compares with the Hub's).
    Ok(#[cfg_attr(not(feature = "download"), allow(dead_code))] u64),
    Missing,
    /// Present but unusable: a link to a missing blob, empty, truncated, unparsable.
    Broken(String),
}

fn entry_state(path: &Path) -> Entry {
    let link = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Entry::Missing,
        Err(e) => return Entry::Broken(format!("cannot read it: {e}")),
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(_) if link.file_type().is_symlink() => {
            let target = std::fs::read_link(path)
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            return Entry::Broken(format!("links to a missing blob ({target})"));
        }
        Err(e) => return Entry::Broken(format!("cannot read it: {e}")),
    };
    if !meta.is_file() {
        return Entry::Broken("not a file".into());
    }
    if meta.len() == 0 {
        return Entry::Broken("empty file".into());
    }
    match content_problem(path, meta.len()) {
        Some(why) => Entry::Broken(why),
        None => Entry::Ok(meta.len()),
    }
}

/// Cheap content checks that catch truncated or garbled files: JSON files must parse, and a
/// safetensors file must be exactly as long as its header says.
fn content_problem(path: &Path, len: u64) -> Option<String> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext {
        "json" if len <= 64 << 20 => {
            let text = match std::fs::read(path) {
                Ok(t) => t,
                Err(e) => return Some(format!("cannot read it: {e}")),
            };
            serde_json::from_slice::<serde::de::IgnoredAny>(&text)
                .err()
                .map(|e| format!("not valid JSON ({e})"))
        }
        "safetensors" => safetensors_problem(path, len),
        "bin" => zip_problem(path, len),
        _ => None,
    }
}

/// A PyTorch `.bin` in zip format (torch >= 1.6) ends with a zip end-of-central-directory record;
/// a truncated copy does not. Legacy (non-zip) pickles are not checked.
fn zip_problem(path: &Path, len: u64) -> Option<String> {
    use std::io::{Seek, SeekFrom};

    let read = || -> std::io::Result<Option<String>> {
        let mut file = std::fs::File::open(path)?;
        let mut magic = [0u8; 4];
        if len < 4 {
            return Ok(Some(format!("{len} bytes: too short for a weights file")));
        }
        file.read_exact(&mut magic)?;
        if magic != *b"PK\x03\x04" {
            return Ok(None);
        }
        // The record is 22 bytes plus a comment of at most 64 KiB.
        let tail_len = len.min(22 + 65535);
        file.seek(SeekFrom::Start(len - tail_len))?;
        let mut tail = vec![0u8; tail_len as usize];
        file.read_exact(&mut tail)?;
        let found = tail.len() >= 22
            && (0..=tail.len() - 22).rev().any(|i| {
                tail[i..i + 4] == *b"PK\x05\x06"
                    && i + 22 + u16::from_le_bytes([tail[i + 20], tail[i + 21]]) as usize
                        == tail.len()
            });
        Ok((!found).then(|| "truncated: the zip archive has no end record".to_string()))
    };
    read().unwrap_or_else(|e| Some(format!("cannot read it: {e}")))
}

fn safetensors_problem(path: &Path, len: u64) -> Option<String> {
    let read = || -> std::io::Result<Option<String>> {
        let mut file = std::fs::File::open(path)?;
        let mut n = [0u8; 8];
        if len < 8 {
            return Ok(Some(format!(
                "{len} bytes: too short for a safetensors file"
            )));
        }
        file.read_exact(&mut n)?;
        let n = u64::from_le_bytes(n);
        if n > 100 << 20 || 8 + n > len {
            return Ok(Some(format!(
                "truncated or not safetensors: header of {n} bytes in a {len}-byte file"
            )));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header)?;
        let Ok(header) = serde_json::from_slice::<BTreeMap<String, serde_json::Value>>(&header)
        else {
            return Ok(Some("safetensors header is not valid JSON".into()));
        };
        let end = header
            .iter()
            .filter(|(k, _)| k.as_str() != "__metadata__")
            .filter_map(|(_, v)| v.get("data_offsets")?.get(1)?.as_u64())
            .max()
            .unwrap_or(0);
        let want = 8 + n + end;
        Ok((want != len)
            .then(|| format!("truncated: {len} bytes where its header describes {want}")))
    };
    read().unwrap_or_else(|e| Some(format!("cannot read it: {e}")))
}
