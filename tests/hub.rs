//! Model resolution against fake Hugging Face caches (no network, no GPU).
//!
//! The caches are built by hand in the layout Python's `huggingface_hub` writes:
//! `models--{owner}--{name}/refs/{revision}` (a commit hash), `snapshots/{commit}/{path}` (relative
//! symlinks on Unix, plain files elsewhere) and `blobs/{etag}`.
//!
//! Environment variables are process-wide, so the one test that sets them holds [`ENV`] for
//! writing while every other test holds it for reading.

use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use audioldm::hub::{
    self, ALIASES, DEFAULT_MODEL, DownloadProgress, RepoSpec, ResolveOptions, resolve,
};

static ENV: RwLock<()> = RwLock::new(());

fn env_read() -> RwLockReadGuard<'static, ()> {
    ENV.read().unwrap_or_else(|e| e.into_inner())
}

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const OTHER_COMMIT: &str = "fedcba9876543210fedcba9876543210fedcba98";

/// The files of a complete diffusers AudioLDM snapshot (safetensors weights, tokenizer.json).
const FULL: &[&str] = &[
    "model_index.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "vocoder/config.json",
    "vocoder/model.safetensors",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
    "scheduler/scheduler_config.json",
];

/// The same with the older layout: `.bin` weights and a vocab.json + merges.txt tokenizer.
const BIN: &[&str] = &[
    "model_index.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.bin",
    "vae/config.json",
    "vae/diffusion_pytorch_model.bin",
    "text_encoder/config.json",
    "text_encoder/pytorch_model.bin",
    "vocoder/config.json",
    "vocoder/pytorch_model.bin",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
    "scheduler/scheduler_config.json",
];

/// A fresh scratch folder `target/tmp/hub/{name}`.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("hub")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Plausible contents for a file of the snapshot: JSON that parses, a safetensors file whose
/// length matches its header.
fn contents(file: &str) -> Vec<u8> {
    if file.ends_with(".json") {
        format!("{{\"file\": \"{file}\"}}").into_bytes()
    } else if file.ends_with(".safetensors") {
        let header = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[0u8; 8]);
        bytes
    } else if file.ends_with(".bin") {
        fake_zip(format!("fake weights of {file}").as_bytes())
    } else {
        format!("fake contents of {file}").into_bytes()
    }
}

/// Bytes shaped like a zip archive (a torch.save `.bin`): local header magic, then an
/// end-of-central-directory record without a comment.
fn fake_zip(payload: &[u8]) -> Vec<u8> {
    let mut bytes = b"PK\x03\x04".to_vec();
    bytes.extend_from_slice(payload);
    bytes.extend_from_slice(b"PK\x05\x06");
    bytes.extend_from_slice(&[0u8; 18]);
    bytes
}

/// A fake etag: distinct per file and commit, like a git or LFS hash.
fn etag(commit: &str, file: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in commit.bytes().chain(file.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}{h:016x}{:08x}", h as u32)
}

/// Writes `files` of `repo_id` at `commit` into the hub cache `cache` (blob + snapshot pointer)
/// and points each of `refs` at the commit. Returns the snapshot folder.
fn fake_repo(cache: &Path, repo_id: &str, commit: &str, files: &[&str], refs: &[&str]) -> PathBuf {
    let repo = cache.join(format!("models--{}", repo_id.replace('/', "--")));
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    for file in files {
        let blob = repo.join("blobs").join(etag(commit, file));
        std::fs::write(&blob, contents(file)).unwrap();
        let pointer = snapshot.join(file);
        std::fs::create_dir_all(pointer.parent().unwrap()).unwrap();
        link_blob(&blob, &pointer, file);
    }
    for r in refs {
        let path = repo.join("refs").join(r);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, commit).unwrap();
    }
    snapshot
}

/// Points a snapshot entry at its blob the way huggingface_hub does: a relative symlink
/// (`../../blobs/…`, one more `..` per folder level of the file).
#[cfg(unix)]
fn link_blob(blob: &Path, pointer: &Path, file: &str) {
    let depth = file.matches('/').count() + 2;
    let target = Path::new(&"../".repeat(depth))
        .join("blobs")
        .join(blob.file_name().unwrap());
    std::os::unix::fs::symlink(target, pointer).unwrap();
}

#[cfg(not(unix))]
fn link_blob(blob: &Path, pointer: &Path, _file: &str) {
    std::fs::copy(blob, pointer).unwrap();
}

fn offline(cache: &Path) -> ResolveOptions {
    ResolveOptions {
        offline: true,
        cache_dir: Some(cache.to_path_buf()),
        ..ResolveOptions::default()
    }
}

/// Resolves, failing the test if a download is reported.
fn resolve_quiet(model: &str, options: &ResolveOptions) -> audioldm::Result<PathBuf> {
    resolve(model, options, &mut |p: DownloadProgress| {
        panic!("no download expected, got {p:?}")
    })
}

fn err_text(r: audioldm::Result<PathBuf>) -> String {
    match r {
        Ok(p) => panic!("expected an error, got {}", p.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn local_folder_is_returned_as_is() {
    let _env = env_read();
    let dir = scratch("local_folder");
    let model = dir.join("my-model");
    for file in FULL {
        let path = model.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents(file)).unwrap();
    }
    let got = resolve_quiet(model.to_str().unwrap(), &ResolveOptions::default()).unwrap();
    assert_eq!(got, model);
    // Offline makes no difference to a folder.
    let got = resolve_quiet(model.to_str().unwrap(), &offline(&dir.join("cache"))).unwrap();
    assert_eq!(got, model);

    // A folder without model_index.json is not a model folder.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = err_text(resolve_quiet(
        empty.to_str().unwrap(),
        &ResolveOptions::default(),
    ));
    assert!(err.contains("model_index.json"), "{err}");

    // A file is not a model folder either.
    let file = model.join("model_index.json");
    let err = err_text(resolve_quiet(
        file.to_str().unwrap(),
        &ResolveOptions::default(),
    ));
    assert!(err.contains("is a file"), "{err}");
}

#[test]
fn missing_paths_are_errors_not_repo_ids() {
    let _env = env_read();
    let dir = scratch("missing_paths");
    let options = offline(&dir.join("cache"));
    let missing = dir.join("no-such-model");
    for model in [
        missing.to_str().unwrap(),
        "./no-such-model",
        "../no/such/model",
        "~/no-such-audioldm-model-folder",
        "some/nested/folder",
    ] {
        let err = err_text(resolve_quiet(model, &options));
        assert!(err.contains("no such model folder"), "{model}: {err}");
    }
}

#[test]
fn aliases_expand_to_cvssp_repos() {
    let _env = env_read();
    assert_eq!(hub::expand_alias("audioldm-s-full"), "cvssp/audioldm");
    assert_eq!(
        hub::expand_alias("audioldm-s-full-v2"),
        "cvssp/audioldm-s-full-v2"
    );
    assert_eq!(
        hub::expand_alias("audioldm-m-full"),
        "cvssp/audioldm-m-full"
    );
    assert_eq!(
        hub::expand_alias("audioldm-l-full"),
        "cvssp/audioldm-l-full"
    );
    assert_eq!(hub::expand_alias("someone/else"), "someone/else");
    assert_eq!(DEFAULT_MODEL, "cvssp/audioldm-s-full-v2");
    assert_eq!(ALIASES.len(), 4);

    let spec = RepoSpec::parse("audioldm-l-full@v1", None).unwrap();
    assert_eq!(spec.repo_id, "cvssp/audioldm-l-full");
    assert_eq!(spec.revision, "v1");
    let spec = RepoSpec::parse("audioldm-m-full", None).unwrap();
    assert_eq!(
        (spec.repo_id.as_str(), spec.revision.as_str()),
        ("cvssp/audioldm-m-full", "main")
    );
    assert_eq!(
        spec.cache_folder(Path::new("/c")),
        Path::new("/c/models--cvssp--audioldm-m-full")
    );

    // The alias resolves through the cache of the repo it stands for.
    let dir = scratch("aliases");
    let snapshot = fake_repo(&dir, "cvssp/audioldm", COMMIT, BIN, &["main"]);
    let got = resolve_quiet("audioldm-s-full", &offline(&dir)).unwrap();
    assert_eq!(got, snapshot);
}

#[test]
fn repo_id_resolves_through_refs_main_without_network() {
    let _env = env_read();
    let dir = scratch("refs_main");
    let snapshot = fake_repo(&dir, DEFAULT_MODEL, COMMIT, FULL, &["main"]);
    // An older snapshot that refs/main no longer points to.
    fake_repo(&dir, DEFAULT_MODEL, OTHER_COMMIT, &FULL[..3], &[]);

    let got = resolve_quiet(DEFAULT_MODEL, &offline(&dir)).unwrap();
    assert_eq!(got, snapshot);
    assert!(
        got.join("unet/diffusion_pytorch_model.safetensors")
            .is_file()
    );
    assert_eq!(
        hub::find_cached(DEFAULT_MODEL, &offline(&dir)).unwrap(),
        Some(snapshot.clone())
    );

    // Online mode takes the same path: a complete snapshot needs no network (this machine has
    // none, and no progress may be reported).
    let online = ResolveOptions {
        cache_dir: Some(dir.clone()),
        ..ResolveOptions::default()
    };
    let started = Instant::now();
    assert_eq!(resolve_quiet(DEFAULT_MODEL, &online).unwrap(), snapshot);
    assert!(started.elapsed() < Duration::from_secs(2));

    // Explicit `@main` and the revision option mean the same.
    let at_main = format!("{DEFAULT_MODEL}@main");
    assert_eq!(resolve_quiet(&at_main, &offline(&dir)).unwrap(), snapshot);
    let options = ResolveOptions {
        revision: Some("main".into()),
        ..offline(&dir)
    };
    assert_eq!(resolve_quiet(DEFAULT_MODEL, &options).unwrap(), snapshot);
}

#[test]
fn commit_and_branch_revisions() {
    let _env = env_read();
    let dir = scratch("revisions");
    let repo = "someone/audioldm-custom";
    // No refs at all: a commit hash names its snapshot directly.
    let snapshot = fake_repo(&dir, repo, COMMIT, FULL, &[]);
    let got = resolve_quiet(&format!("{repo}@{COMMIT}"), &offline(&dir)).unwrap();
    assert_eq!(got, snapshot);
    let options = ResolveOptions {
        revision: Some(COMMIT.into()),
        ..offline(&dir)
    };
    assert_eq!(resolve_quiet(repo, &options).unwrap(), snapshot);

    // A branch (or a PR ref, with slashes) goes through refs/.
    let other = fake_repo(&dir, repo, OTHER_COMMIT, BIN, &["v2", "refs/pr/3"]);
    assert_eq!(
        resolve_quiet(&format!("{repo}@v2"), &offline(&dir)).unwrap(),
        other
    );
    assert_eq!(
        resolve_quiet(&format!("{repo}@refs/pr/3"), &offline(&dir)).unwrap(),
        other
    );

    // main was never cached.
    let err = err_text(resolve_quiet(repo, &offline(&dir)));
    assert!(err.contains("revision `main`"), "{err}");

    // Two different revisions are a contradiction.
    let options = ResolveOptions {
        revision: Some("v2".into()),
        ..offline(&dir)
    };
    let err = err_text(resolve_quiet(&format!("{repo}@{COMMIT}"), &options));
    assert!(err.contains("give only one"), "{err}");
}

#[test]
fn incomplete_snapshot_offline_lists_missing_files() {
    let _env = env_read();
    let dir = scratch("incomplete");
    let files: Vec<&str> = FULL
        .iter()
        .copied()
        .filter(|f| {
            !matches!(
                *f,
                "vocoder/model.safetensors"
                    | "tokenizer/tokenizer.json"
                    | "scheduler/scheduler_config.json"
            )
        })
        .collect();
    let snapshot = fake_repo(&dir, DEFAULT_MODEL, COMMIT, &files, &["main"]);
    let err = err_text(resolve_quiet(DEFAULT_MODEL, &offline(&dir)));
    assert!(err.contains("offline"), "{err}");
    assert!(err.contains(snapshot.to_str().unwrap()), "{err}");
    assert!(
        err.contains("vocoder/model.safetensors (or vocoder/pytorch_model.bin)"),
        "{err}"
    );
    assert!(
        err.contains("tokenizer/tokenizer.json (or tokenizer/vocab.json + tokenizer/merges.txt)"),
        "{err}"
    );
    assert!(err.contains("scheduler/scheduler_config.json"), "{err}");
    assert!(
        !err.contains("unet/"),
        "present files are not missing: {err}"
    );
    assert_eq!(
        hub::find_cached(DEFAULT_MODEL, &offline(&dir)).unwrap(),
        None
    );

    // Nothing cached at all.
    let err = err_text(resolve_quiet("cvssp/audioldm-m-full", &offline(&dir)));
    assert!(err.contains("not in the Hugging Face cache"), "{err}");
    assert!(err.contains("models--cvssp--audioldm-m-full"), "{err}");
}

#[test]
fn bin_weights_and_vocab_tokenizer_are_accepted() {
    let _env = env_read();
    let dir = scratch("bin_layout");
    let snapshot = fake_repo(&dir, "cvssp/audioldm-l-full", COMMIT, BIN, &["main"]);
    let got = resolve_quiet("audioldm-l-full", &offline(&dir)).unwrap();
    assert_eq!(got, snapshot);

    // Half of the vocab + merges pair is not enough.
    let partial: Vec<&str> = BIN
        .iter()
        .copied()
        .filter(|f| *f != "tokenizer/merges.txt")
        .collect();
    fake_repo(&dir, "cvssp/audioldm", COMMIT, &partial, &["main"]);
    let err = err_text(resolve_quiet("cvssp/audioldm", &offline(&dir)));
    assert!(err.contains("tokenizer/merges.txt"), "{err}");
}

#[test]
fn corrupt_cache_entries_are_reported() {
    let _env = env_read();
    let dir = scratch("corrupt");
    let snapshot = fake_repo(&dir, DEFAULT_MODEL, COMMIT, FULL, &["main"]);

    // A truncated safetensors file (an interrupted copy).
    let unet = snapshot.join("unet/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&unet).unwrap();
    let blob = std::fs::canonicalize(&unet).unwrap();
    std::fs::write(&blob, &bytes[..bytes.len() - 3]).unwrap();
    // A config that is not JSON.
    let config = std::fs::canonicalize(snapshot.join("vae/config.json")).unwrap();
    std::fs::write(&config, b"{\"trunc").unwrap();

    let err = err_text(resolve_quiet(DEFAULT_MODEL, &offline(&dir)));
    assert!(err.contains("corrupt or partial"), "{err}");
    assert!(
        err.contains("unet/diffusion_pytorch_model.safetensors: truncated"),
        "{err}"
    );
    assert!(err.contains("vae/config.json: not valid JSON"), "{err}");

    // A truncated zip-format .bin.
    let dir_bin = scratch("corrupt_bin");
    let snapshot_bin = fake_repo(&dir_bin, DEFAULT_MODEL, COMMIT, BIN, &["main"]);
    assert_eq!(
        resolve_quiet(DEFAULT_MODEL, &offline(&dir_bin)).unwrap(),
        snapshot_bin
    );
    let text_encoder =
        std::fs::canonicalize(snapshot_bin.join("text_encoder/pytorch_model.bin")).unwrap();
    let bytes_bin = std::fs::read(&text_encoder).unwrap();
    std::fs::write(&text_encoder, &bytes_bin[..bytes_bin.len() - 10]).unwrap();
    let err = err_text(resolve_quiet(DEFAULT_MODEL, &offline(&dir_bin)));
    assert!(
        err.contains("text_encoder/pytorch_model.bin: truncated"),
        "{err}"
    );

    // A snapshot link whose blob is gone.
    #[cfg(unix)]
    {
        std::fs::write(&blob, &bytes).unwrap();
        std::fs::write(&config, contents("vae/config.json")).unwrap();
        assert_eq!(
            resolve_quiet(DEFAULT_MODEL, &offline(&dir)).unwrap(),
            snapshot
        );
        let vocoder = snapshot.join("vocoder/model.safetensors");
        std::fs::remove_file(std::fs::canonicalize(&vocoder).unwrap()).unwrap();
        let err = err_text(resolve_quiet(DEFAULT_MODEL, &offline(&dir)));
        assert!(
            err.contains("vocoder/model.safetensors: links to a missing blob"),
            "{err}"
        );
    }
}

#[test]
fn invalid_repo_ids_are_rejected() {
    let _env = env_read();
    let dir = scratch("invalid_ids");
    let options = offline(&dir);
    for model in [
        "audioldm",
        "owner/",
        "owner/na me",
        "owner/name!",
        "-owner/name",
        "owner/name.",
        "owner/na--me",
        "owner/na..me",
        "owner/name.git",
        "ownér/name",
    ] {
        let err = err_text(resolve_quiet(model, &options));
        assert!(err.contains("invalid model"), "{model}: {err}");
    }
    let long = format!("owner/{}", "x".repeat(97));
    assert!(err_text(resolve_quiet(&long, &options)).contains("96"));
    for model in ["owner/name@", "owner/name@../x", "owner/name@a b"] {
        let err = err_text(resolve_quiet(model, &options));
        assert!(err.contains("invalid revision"), "{model}: {err}");
    }
    assert!(err_text(resolve_quiet("", &options)).contains("no model given"));
    assert!(RepoSpec::parse("cvssp/audioldm-s-full-v2", None).is_ok());
    assert!(RepoSpec::parse("Some_Org/model.v1-2", Some("refs/pr/1")).is_ok());
}

#[test]
fn options_debug_hides_the_token() {
    let _env = env_read();
    let options = ResolveOptions {
        token: Some("hf_secret".into()),
        ..ResolveOptions::default()
    };
    let text = format!("{options:?}");
    assert!(!text.contains("hf_secret"), "{text}");
    assert!(text.contains("redacted"), "{text}");
}

/// Saves environment variables and restores them when dropped.
struct EnvGuard(Vec<(&'static str, Option<std::ffi::OsString>)>);

impl EnvGuard {
    fn new(names: &[&'static str]) -> Self {
        let saved = names.iter().map(|n| (*n, std::env::var_os(n))).collect();
        for n in names {
            // SAFETY: every other test of this binary holds ENV for reading while this one
            // holds it for writing, so no other thread reads the environment meanwhile.
            unsafe { std::env::remove_var(n) };
        }
        Self(saved)
    }

    fn set(&self, name: &str, value: impl AsRef<std::ffi::OsStr>) {
        // SAFETY: as in `new`.
        unsafe { std::env::set_var(name, value) };
    }

    fn remove(&self, name: &str) {
        // SAFETY: as in `new`.
        unsafe { std::env::remove_var(name) };
    }
}

impl Drop for EnvGuard {
    fn drop(&mut self) {
        for (name, value) in &self.0 {
            // SAFETY: as in `new`.
            unsafe {
                match value {
                    Some(v) => std::env::set_var(name, v),
                    None => std::env::remove_var(name),
                }
            }
        }
    }
}

/// HF_HUB_CACHE, HF_HOME, HF_HUB_OFFLINE and HF_ENDPOINT, in one test since the environment is
/// shared by the whole process.
#[test]
fn environment_variables() {
    let _env = ENV.write().unwrap_or_else(|e| e.into_inner());
    let env = EnvGuard::new(&[
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_HOME",
        "XDG_CACHE_HOME",
        "HF_HUB_OFFLINE",
        "HF_ENDPOINT",
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]);
    let dir = scratch("env");
    let no_cache_dir = ResolveOptions {
        offline: true,
        ..ResolveOptions::default()
    };

    // HF_HUB_CACHE names the hub cache itself.
    let hub_cache = dir.join("hub-cache");
    let snapshot = fake_repo(&hub_cache, DEFAULT_MODEL, COMMIT, FULL, &["main"]);
    env.set("HF_HUB_CACHE", &hub_cache);
    assert_eq!(hub::default_cache_dir(), hub_cache);
    assert_eq!(
        resolve_quiet(DEFAULT_MODEL, &no_cache_dir).unwrap(),
        snapshot
    );

    // ResolveOptions::cache_dir wins over it.
    let elsewhere = dir.join("elsewhere");
    let err = err_text(resolve_quiet(DEFAULT_MODEL, &offline(&elsewhere)));
    assert!(err.contains(elsewhere.to_str().unwrap()), "{err}");

    // Without HF_HUB_CACHE, the cache is $HF_HOME/hub.
    env.remove("HF_HUB_CACHE");
    let hf_home = dir.join("hf-home");
    let home_snapshot = fake_repo(
        &hf_home.join("hub"),
        DEFAULT_MODEL,
        OTHER_COMMIT,
        BIN,
        &["main"],
    );
    env.set("HF_HOME", &hf_home);
    assert_eq!(hub::default_cache_dir(), hf_home.join("hub"));
    assert_eq!(
        resolve_quiet(DEFAULT_MODEL, &no_cache_dir).unwrap(),
        home_snapshot
    );

    // Then $XDG_CACHE_HOME/huggingface/hub, then ~/.cache/huggingface/hub.
    env.remove("HF_HOME");
    env.set("XDG_CACHE_HOME", dir.join("xdg"));
    assert_eq!(
        hub::default_cache_dir(),
        dir.join("xdg").join("huggingface").join("hub")
    );
    env.remove("XDG_CACHE_HOME");
    assert!(
        hub::default_cache_dir().ends_with(".cache/huggingface/hub"),
        "{}",
        hub::default_cache_dir().display()
    );

    // HF_HUB_OFFLINE=1 is offline mode even when the options say online.
    let incomplete = dir.join("incomplete");
    fake_repo(&incomplete, DEFAULT_MODEL, COMMIT, &FULL[..5], &["main"]);
    let online = ResolveOptions {
        cache_dir: Some(incomplete.clone()),
        ..ResolveOptions::default()
    };
    env.set("HF_HUB_OFFLINE", "1");
    assert!(hub::offline_from_env());
    let err = err_text(resolve_quiet(DEFAULT_MODEL, &online));
    assert!(err.starts_with("offline"), "{err}");
    assert!(err.contains("vocoder/model.safetensors"), "{err}");
    env.set("HF_HUB_OFFLINE", "0");
    assert!(!hub::offline_from_env());

    // An unreachable endpoint fails fast with a clear message (that lists what the cache lacks).
    env.remove("HF_HUB_OFFLINE");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    env.set("HF_ENDPOINT", format!("http://127.0.0.1:{port}"));
    let (tx, rx) = std::sync::mpsc::channel();
    let started = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(resolve(DEFAULT_MODEL, &online, &mut |_| {}).map_err(|e| e.to_string()));
    });
    let result = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("resolve against an unreachable endpoint hung");
    let err = result.expect_err("an unreachable endpoint cannot succeed");
    eprintln!("unreachable endpoint, after {:?}: {err}", started.elapsed());
    assert!(err.contains("cannot reach 127.0.0.1"), "{err}");
    assert!(err.contains("--offline"), "{err}");
    assert!(err.contains("local model folder"), "{err}");
    assert!(err.contains("vocoder/model.safetensors"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15));
}

// ---------------------------------------------------------------------------------------------
// A mock Hub on localhost, so that the download path runs hf-hub's real code: repo info, tree
// listing, HEAD + GET of `resolve/` URLs, and the cache it writes.

mod mock {
    use std::collections::{BTreeMap, HashSet};
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};

    pub struct Repo {
        pub commit: &'static str,
        pub files: BTreeMap<String, Vec<u8>>,
    }

    #[derive(Default)]
    pub struct Hub {
        pub repos: BTreeMap<String, Repo>,
        /// Files whose next GET sends half the body and hangs up.
        pub cut_once: Mutex<HashSet<String>>,
        /// "METHOD /path" of every request.
        pub requests: Mutex<Vec<String>>,
        /// (file, first byte) of every ranged GET.
        pub ranges: Mutex<Vec<(String, u64)>>,
    }

    impl Hub {
        pub fn count(&self, request: &str) -> usize {
            self.requests
                .lock()
                .unwrap()
                .iter()
                .filter(|r| *r == request)
                .count()
        }
    }

    /// Serves `hub` on a free port of 127.0.0.1 until the process ends; returns the endpoint.
    pub fn serve(hub: Arc<Hub>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let hub = Arc::clone(&hub);
                std::thread::spawn(move || {
                    let _ = handle(&hub, stream);
                });
            }
        });
        endpoint
    }

    fn handle(hub: &Hub, mut stream: TcpStream) -> std::io::Result<()> {
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let mut range = None;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 || header == "\r\n" {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("range")
            {
                // "bytes=START-END" (END inclusive), as hf-hub sends it.
                let bounds = value.trim().trim_start_matches("bytes=");
                if let Some((a, b)) = bounds.split_once('-') {
                    range = Some((a.parse::<u64>().unwrap_or(0), b.parse::<u64>().ok()));
                }
            }
        }
        let mut words = line.split_whitespace();
        let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let path = target.split('?').next().unwrap_or("");
        hub.requests
            .lock()
            .unwrap()
            .push(format!("{method} {path}"));

        let (mut status, mut headers, mut body, cut) = route(hub, method, path);
        if let (Some((start, end)), "200 OK") = (range, status) {
            let total = body.len() as u64;
            let end = end.map_or(total - 1, |e| e.min(total - 1));
            if let Some(file) = path.splitn(6, '/').nth(5) {
                hub.ranges.lock().unwrap().push((file.to_string(), start));
            }
            headers.push((
                "Content-Range".into(),
                format!("bytes {start}-{end}/{total}"),
            ));
            body = body[start as usize..=end as usize].to_vec();
            status = "206 Partial Content";
        }
        let mut head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        if method != "HEAD" {
            let n = if cut { body.len() / 2 } else { body.len() };
            stream.write_all(&body[..n])?;
        }
        stream.flush()?;
        stream.shutdown(std::net::Shutdown::Both)
    }

    type Response = (&'static str, Vec<(String, String)>, Vec<u8>, bool);

    fn json(value: serde_json::Value) -> Response {
        let headers = vec![("Content-Type".into(), "application/json".into())];
        (
            "200 OK",
            headers,
            serde_json::to_vec(&value).unwrap(),
            false,
        )
    }

    fn error(status: &'static str, code: &str) -> Response {
        let headers = vec![("X-Error-Code".to_string(), code.to_string())];
        let body = format!("{{\"error\":\"{code}\"}}").into_bytes();
        (status, headers, body, false)
    }

    fn route(hub: &Hub, method: &str, path: &str) -> Response {
        if let Some(rest) = path.strip_prefix("/api/models/") {
            let segs: Vec<&str> = rest.split('/').collect();
            let repo_id = format!("{}/{}", segs[0], segs.get(1).unwrap_or(&""));
            if repo_id == "private/model" {
                return error("401 Unauthorized", "RepoNotFound");
            }
            let Some(repo) = hub.repos.get(&repo_id) else {
                return error("404 Not Found", "RepoNotFound");
            };
            return match segs.get(2) {
                Some(&"tree") => {
                    let mut entries = Vec::new();
                    let mut dirs = std::collections::BTreeSet::new();
                    for (f, bytes) in &repo.files {
                        if let Some((dir, _)) = f.rsplit_once('/') {
                            dirs.insert(dir.to_string());
                        }
                        entries.push(serde_json::json!({
                            "type": "file",
                            "oid": super::etag(repo.commit, f),
                            "size": bytes.len(),
                            "path": f,
                        }));
                    }
                    for d in dirs {
                        entries
                            .push(serde_json::json!({"type": "directory", "oid": "0", "path": d}));
                    }
                    json(serde_json::Value::Array(entries))
                }
                _ => json(serde_json::json!({
                    "id": repo_id,
                    "sha": repo.commit,
                    "siblings": repo.files.keys().map(|f| serde_json::json!({"rfilename": f}))
                        .collect::<Vec<_>>(),
                })),
            };
        }
        // /{owner}/{name}/resolve/{revision}/{file}
        let segs: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
        if segs.len() == 5 && segs[2] == "resolve" {
            let repo_id = format!("{}/{}", segs[0], segs[1]);
            let Some(repo) = hub.repos.get(&repo_id) else {
                return error("404 Not Found", "RepoNotFound");
            };
            let Some(bytes) = repo.files.get(segs[4]) else {
                return error("404 Not Found", "EntryNotFound");
            };
            let headers = vec![
                (
                    "ETag".to_string(),
                    format!("\"{}\"", super::mock_etag(segs[4])),
                ),
                ("X-Repo-Commit".to_string(), repo.commit.to_string()),
            ];
            let cut = method == "GET" && hub.cut_once.lock().unwrap().remove(segs[4]);
            return ("200 OK", headers, bytes.clone(), cut);
        }
        error("404 Not Found", "NotFound")
    }
}

/// The mock Hub's etag of a file: for the weights, as for LFS files on the Hub, the SHA-256 of
/// the contents (which the download checks); for the rest a git-like hash.
fn mock_etag(file: &str) -> String {
    if file.ends_with(".bin") {
        use sha2::Digest;
        sha2::Sha256::digest(mock_contents(file))
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    } else {
        etag(COMMIT, file)
    }
}

/// Contents for the mock repo: the weights are big enough to arrive in several chunks.
fn mock_contents(file: &str) -> Vec<u8> {
    if file.ends_with(".bin") {
        // Different per file: the cache stores content by its hash, so equal files would share
        // one blob and be fetched once.
        let offset: u32 = file.bytes().map(u32::from).sum();
        fake_zip(
            &(0..300_000u32)
                .map(|i| ((i + offset) % 251) as u8)
                .collect::<Vec<_>>(),
        )
    } else {
        contents(file)
    }
}

/// Downloads from a mock Hub through hf-hub: the standard cache layout is written, progress is
/// reported, an interrupted download fails clearly and the next run fetches only what is
/// missing, and Hub errors (no repo, private repo, repo without a needed file) read well.
#[test]
fn mock_hub_downloads_into_the_standard_cache() {
    use std::sync::Arc;

    let _env = ENV.write().unwrap_or_else(|e| e.into_inner());
    let env = EnvGuard::new(&[
        "HF_HUB_OFFLINE",
        "HF_ENDPOINT",
        "HF_TOKEN",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]);
    env.set("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1");

    let repo_id = "cvssp/audioldm";
    let mut files: std::collections::BTreeMap<String, Vec<u8>> = BIN
        .iter()
        .map(|f| (f.to_string(), mock_contents(f)))
        .collect();
    // Files the pipeline does not need are not downloaded.
    files.insert("README.md".into(), b"# AudioLDM".to_vec());
    files.insert(
        "unet/diffusion_pytorch_model.fp16.bin".into(),
        vec![1; 1000],
    );
    let mut broken = files.clone();
    broken.remove("vocoder/pytorch_model.bin");
    let mut hub = mock::Hub::default();
    hub.repos.insert(
        repo_id.into(),
        mock::Repo {
            commit: COMMIT,
            files,
        },
    );
    hub.repos.insert(
        "someone/broken".into(),
        mock::Repo {
            commit: OTHER_COMMIT,
            files: broken,
        },
    );
    hub.cut_once
        .lock()
        .unwrap()
        .insert("vae/diffusion_pytorch_model.bin".into());
    let hub = Arc::new(hub);
    let endpoint = mock::serve(Arc::clone(&hub));
    env.set("HF_ENDPOINT", &endpoint);

    let cache = scratch("mock_hub");
    // model_index.json is already cached for this commit (say, by Python), with no refs/main.
    fake_repo(&cache, repo_id, COMMIT, &["model_index.json"], &[]);
    let online = ResolveOptions {
        cache_dir: Some(cache.clone()),
        ..ResolveOptions::default()
    };
    let get = |file: &str| format!("GET /{repo_id}/resolve/{COMMIT}/{file}");

    // First run: the VAE weights are cut off halfway.
    let err = err_text(resolve("audioldm-s-full", &online, &mut |_| {}));
    eprintln!("interrupted: {err}");
    assert!(
        err.contains("download of cvssp/audioldm/vae/diffusion_pytorch_model.bin"),
        "{err}"
    );
    assert!(err.contains("Run again"), "{err}");
    assert_eq!(
        hub.count(&get("model_index.json")),
        0,
        "cached file fetched"
    );
    assert_eq!(hub.count(&get("unet/diffusion_pytorch_model.bin")), 1);
    // What arrived of the VAE weights waits in blobs/{etag}.incomplete, as huggingface_hub
    // leaves it.
    let repo_dir = cache.join("models--cvssp--audioldm");
    let vae = "vae/diffusion_pytorch_model.bin";
    let vae_partial = repo_dir
        .join("blobs")
        .join(format!("{}.incomplete", mock_etag(vae)));
    let received = std::fs::metadata(&vae_partial).map_or(0, |m| m.len());
    let vae_len = mock_contents(vae).len() as u64;
    assert!(
        received > 0 && received < vae_len,
        "{received} of {vae_len} bytes kept"
    );

    // Second run: only what is missing is fetched, with progress; the VAE weights continue
    // where they stopped.
    let mut events: Vec<DownloadProgress> = Vec::new();
    let snapshot = resolve("audioldm-s-full", &online, &mut |p| events.push(p)).unwrap();
    let resumed: Vec<u64> = hub
        .ranges
        .lock()
        .unwrap()
        .iter()
        .filter(|(f, _)| f.ends_with(vae))
        .map(|(_, start)| *start)
        .collect();
    assert_eq!(resumed, [0, received], "ranges asked for the VAE weights");
    assert!(!vae_partial.exists());
    assert_eq!(snapshot, repo_dir.join("snapshots").join(COMMIT));
    assert_eq!(hub.count(&get("unet/diffusion_pytorch_model.bin")), 1);
    assert_eq!(hub.count(&get("vae/diffusion_pytorch_model.bin")), 2);
    assert_eq!(hub.count(&get("README.md")), 0);
    assert_eq!(hub.count(&get("unet/diffusion_pytorch_model.fp16.bin")), 0);

    // Progress: every file starts at 0 and finishes at its size; the overall count only grows.
    let finished: Vec<&str> = events
        .iter()
        .filter(|e| e.finished)
        .map(|e| e.file.as_str())
        .collect();
    let expected: Vec<&str> = BIN[4..].to_vec(); // model_index, unet (3), vae/config were done
    assert_eq!(finished, expected, "{events:#?}");
    let total: u64 = expected.iter().map(|f| mock_contents(f).len() as u64).sum();
    assert!(events.iter().all(|e| e.overall_total == total));
    assert!(events.iter().all(|e| e.file_count == expected.len()));
    assert!(
        events
            .windows(2)
            .all(|w| w[0].overall_downloaded <= w[1].overall_downloaded)
    );
    let last = events.last().unwrap();
    assert_eq!(
        (last.overall_downloaded, last.file_index),
        (total, expected.len())
    );
    for e in events.iter().filter(|e| e.finished) {
        assert_eq!(e.downloaded, e.total, "{e:?}");
    }

    // The cache has the standard layout: refs/main, snapshot entries linking to blobs/{etag}.
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
        COMMIT
    );
    for file in BIN {
        let entry = snapshot.join(file);
        assert_eq!(
            std::fs::read(&entry).unwrap(),
            mock_contents(file),
            "{file}"
        );
        let blob = repo_dir.join("blobs").join(mock_etag(file));
        assert!(blob.is_file(), "{file}: no blob {}", blob.display());
        #[cfg(unix)]
        {
            let target = std::fs::read_link(&entry).unwrap();
            assert!(target.is_relative(), "{file}: {}", target.display());
            assert_eq!(
                std::fs::canonicalize(&entry).unwrap(),
                std::fs::canonicalize(&blob).unwrap()
            );
        }
    }

    // Third run, offline or not: straight from the cache, no requests.
    let before = hub.requests.lock().unwrap().len();
    assert_eq!(resolve_quiet("audioldm-s-full", &online).unwrap(), snapshot);
    assert_eq!(
        resolve_quiet("audioldm-s-full", &offline(&cache)).unwrap(),
        snapshot
    );
    assert_eq!(hub.requests.lock().unwrap().len(), before);

    // A corrupt entry is reported offline and repaired online.
    let unet_blob = repo_dir
        .join("blobs")
        .join(mock_etag("unet/diffusion_pytorch_model.bin"));
    let unet = std::fs::read(&unet_blob).unwrap();
    std::fs::write(&unet_blob, &unet[..1000]).unwrap();
    let err = err_text(resolve_quiet("audioldm-s-full", &offline(&cache)));
    assert!(
        err.contains("unet/diffusion_pytorch_model.bin: truncated"),
        "{err}"
    );
    let mut repaired = Vec::new();
    let got = resolve("audioldm-s-full", &online, &mut |p| {
        if p.finished {
            repaired.push(p.file)
        }
    })
    .unwrap();
    assert_eq!(got, snapshot);
    assert_eq!(repaired, ["unet/diffusion_pytorch_model.bin"]);
    assert_eq!(std::fs::read(&unet_blob).unwrap(), unet);
    assert_eq!(hub.count(&get("unet/diffusion_pytorch_model.bin")), 2);

    // A partial download whose bytes are wrong fails the SHA-256 check, is deleted, and the
    // next run downloads the file anew.
    std::fs::remove_file(&unet_blob).unwrap();
    let unet_partial = repo_dir.join("blobs").join(format!(
        "{}.incomplete",
        mock_etag("unet/diffusion_pytorch_model.bin")
    ));
    std::fs::write(&unet_partial, vec![7u8; 1000]).unwrap();
    let err = err_text(resolve("audioldm-s-full", &online, &mut |_| {}));
    assert!(err.contains("is corrupt"), "{err}");
    assert!(!unet_partial.exists());
    assert_eq!(
        resolve("audioldm-s-full", &online, &mut |_| {}).unwrap(),
        snapshot
    );
    assert_eq!(std::fs::read(&unet_blob).unwrap(), unet);

    // A blob garbled without changing its length (here a config that no longer parses) is
    // fetched again, not relinked as it is.
    let config_blob = repo_dir.join("blobs").join(mock_etag("unet/config.json"));
    let config = std::fs::read(&config_blob).unwrap();
    std::fs::write(&config_blob, vec![b'{'; config.len()]).unwrap();
    assert_eq!(
        resolve("audioldm-s-full", &online, &mut |_| {}).unwrap(),
        snapshot
    );
    assert_eq!(std::fs::read(&config_blob).unwrap(), config);

    // Hub errors.
    let err = err_text(resolve_quiet("cvssp/no-such-model", &online));
    assert!(err.contains("`cvssp/no-such-model` not found"), "{err}");
    let err = err_text(resolve_quiet("private/model", &online));
    assert!(err.contains("needs a valid token"), "{err}");
    assert!(err.contains("HF_TOKEN"), "{err}");
    let err = err_text(resolve_quiet("someone/broken", &online));
    assert!(err.contains("not a diffusers AudioLDM model repo"), "{err}");
    assert!(
        err.contains("vocoder/model.safetensors (or vocoder/pytorch_model.bin)"),
        "{err}"
    );
}

#[test]
fn every_audioldm_checkpoint_has_its_clap_companion() {
    let _env = env_read();
    let s_full = "sanchit-gandhi/clap-htsat-unfused-s-full-v2";
    let m_full = "sanchit-gandhi/clap-htsat-unfused-m-full";
    for (model, clap) in [
        ("cvssp/audioldm-s-full-v2", s_full),
        ("audioldm-s-full-v2@main", s_full),
        ("audioldm-s-full", s_full),
        ("cvssp/audioldm-m-full", m_full),
        ("audioldm-l-full", m_full),
    ] {
        assert_eq!(hub::clap_companion(model), Some(clap), "{model}");
    }
    assert_eq!(hub::clap_companion("someone/audioldm-finetune"), None);
    assert_eq!(hub::clap_companion("./tests/fixtures/tiny"), None);
}

#[test]
fn clap_folders_and_cached_clap_repos_resolve_by_their_own_layout() {
    let _env = env_read();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let clap = fixtures.join("tiny-clap");
    let cache = scratch("clap-layout");
    let options = offline(&cache);
    let resolved = hub::resolve_layout(clap.to_str().unwrap(), &hub::CLAP, &options, &mut |_| {
        panic!("a local folder is never downloaded")
    })
    .expect("a CLAP folder");
    assert_eq!(resolved, clap);
    // An AudioLDM folder is not a CLAP model, and a CLAP folder is not an AudioLDM model.
    let err = err_text(hub::resolve_layout(
        fixtures.join("tiny").to_str().unwrap(),
        &hub::CLAP,
        &options,
        &mut |_| {},
    ));
    assert!(
        err.contains("not a transformers CLAP model folder"),
        "{err}"
    );
    let err = err_text(resolve(clap.to_str().unwrap(), &options, &mut |_| {}));
    assert!(
        err.contains("not a diffusers AudioLDM model folder"),
        "{err}"
    );
    // Offline, a companion that was never downloaded is named with the cache.
    let err = err_text(hub::resolve_layout(
        "sanchit-gandhi/clap-htsat-unfused-s-full-v2",
        &hub::CLAP,
        &options,
        &mut |_| {},
    ));
    assert!(
        err.contains("sanchit-gandhi/clap-htsat-unfused-s-full-v2") && err.contains("offline"),
        "{err}"
    );
    // A cached snapshot with the CLAP files (a .bin, no tokenizer) is complete.
    let snapshot = cache
        .join("models--sanchit-gandhi--clap-htsat-unfused-s-full-v2")
        .join("snapshots")
        .join(COMMIT);
    std::fs::create_dir_all(&snapshot).unwrap();
    for file in ["config.json", "preprocessor_config.json"] {
        std::fs::copy(clap.join(file), snapshot.join(file)).unwrap();
    }
    let refs = snapshot.parent().unwrap().parent().unwrap().join("refs");
    std::fs::create_dir_all(&refs).unwrap();
    std::fs::write(refs.join("main"), COMMIT).unwrap();
    let err = err_text(hub::resolve_layout(
        "sanchit-gandhi/clap-htsat-unfused-s-full-v2",
        &hub::CLAP,
        &options,
        &mut |_| {},
    ));
    assert!(
        err.contains("model.safetensors (or pytorch_model.bin)"),
        "{err}"
    );
    // A zip whose end record is in place (a real .bin is a zip archive).
    let mut bin = b"PK\x03\x04 weights".to_vec();
    bin.extend_from_slice(b"PK\x05\x06");
    bin.extend_from_slice(&[0; 18]);
    std::fs::write(snapshot.join("pytorch_model.bin"), bin).unwrap();
    let found = hub::find_cached_layout(
        "sanchit-gandhi/clap-htsat-unfused-s-full-v2",
        &hub::CLAP,
        &options,
    )
    .unwrap();
    assert_eq!(found, Some(snapshot));
}
