//! Shared by the kernel tests: one GPU context, seeded inputs, error measures.
#![allow(dead_code)]

pub mod clips;
pub mod real_tokenizer;
pub mod reference;
pub mod tiny;
pub mod validation;

#[allow(unused_imports)]
pub use reference::{f16_round, max_abs_err, max_rel_err};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use audioldm::engine::{Context, Graph, LimitsProfile, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The process's GPU context, under the Vulkan validation layer ([`validation`]; every call checks
/// what it reported). There is no skip: a machine without an adapter fails the tests (CI installs
/// lavapipe, a software Vulkan adapter).
pub fn ctx() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    let ctx = CTX.get_or_init(|| {
        let ctx = new_ctx();
        let info = ctx.adapter_info();
        eprintln!(
            "adapter: {} ({:?}, {:?})",
            info.name, info.backend, info.device_type
        );
        ctx
    });
    validation::check();
    ctx
}

/// The process's context of the CPU backend ([`Context::cpu`]).
pub fn cpu_ctx() -> &'static Context {
    static CPU: OnceLock<Context> = OnceLock::new();
    CPU.get_or_init(Context::cpu)
}

/// The context of the tests whose subject is a model or the pipeline, not a GPU kernel: the CPU
/// backend ([`cpu_ctx`]) by default, for speed, or the GPU context ([`ctx`], under the validation
/// layer) when the environment sets `AUDIOLDM_TEST_DEVICE=gpu` (any other value but `cpu` is an
/// error), so that the model tests can be rerun on a GPU. The GPU kernels keep their own tests on
/// [`ctx`], and the tiny pipeline's goldens run on both ([`backends`]).
pub fn model_ctx() -> &'static Context {
    static GPU: OnceLock<bool> = OnceLock::new();
    let gpu = *GPU.get_or_init(|| {
        let gpu = match std::env::var("AUDIOLDM_TEST_DEVICE").as_deref() {
            Ok("gpu") => true,
            Ok("cpu") | Err(std::env::VarError::NotPresent) => false,
            Ok(other) => panic!("AUDIOLDM_TEST_DEVICE={other}: `gpu` or `cpu`"),
            Err(e) => panic!("AUDIOLDM_TEST_DEVICE: {e}"),
        };
        eprintln!(
            "model tests on the {} (AUDIOLDM_TEST_DEVICE=gpu|cpu)",
            if gpu { "GPU" } else { "CPU backend" }
        );
        gpu
    });
    if gpu { ctx() } else { cpu_ctx() }
}

/// Both backends, named: the GPU context ([`ctx`]) and the CPU backend's ([`cpu_ctx`]), for the
/// kernel tests that hold each to the same reference and tolerance.
pub fn backends() -> [(&'static str, &'static Context); 2] {
    [("gpu", ctx()), ("cpu", cpu_ctx())]
}

/// A context of the test's own (other kernel variants), as [`ctx`]'s: the environment's adapter
/// and limits profile, under the validation layer.
pub fn new_ctx() -> Context {
    let profile = LimitsProfile::from_env().unwrap_or_else(|e| panic!("{e}"));
    validation::context(profile)
}

/// A context of the test's own with `profile`'s limits, under the validation layer.
pub fn ctx_with_limits(profile: LimitsProfile) -> Context {
    validation::context(profile)
}

/// The committed test fixtures.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A tensor of diffusers' run of the tiny model (`tests/fixtures/tiny-goldens.safetensors`).
pub fn tiny_golden(name: &str) -> Vec<f32> {
    audioldm::checkpoint::Checkpoint::open(&fixtures().join("tiny-goldens.safetensors"))
        .expect("goldens")
        .f32_any(name)
        .expect(name)
        .1
}

/// The request the tiny goldens were made with (see `tiny.rs`).
pub fn tiny_request() -> audioldm::pipeline::Request {
    tiny::tiny_request_from(tiny_golden("init_latents"))
}

/// Uniform values in [-1, 1) from a fixed seed.
pub fn random(seed: u64, len: usize) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Asserts `got` is within `tol` max relative error of `want`, printing the error either way.
pub fn assert_close(name: &str, got: &[f32], want: &[f64], tol: f64) {
    let err = max_rel_err(got, want);
    println!("{name}: max rel err {err:.3e} (tol {tol:.0e})");
    assert!(err <= tol, "{name}: max rel err {err:.3e} > {tol:.0e}");
    validation::check();
}

pub fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Uploads f32 data as an input of `g`, on `g`'s context.
pub fn input(g: &mut Graph, shape: &[usize], data: &[f32]) -> Var {
    let t =
        Tensor::from_f32(g.context(), shape, audioldm::engine::DType::F32, data).expect("upload");
    g.input(&t)
}

/// Builds the graph with `out` as its output, runs it once and reads `out` back.
pub fn run(mut g: Graph, out: Var) -> Vec<f32> {
    g.output(out).expect("output");
    let mut exe = g.build().expect("build");
    exe.run().expect("run");
    let got = exe.read(out).expect("read");
    validation::check();
    got
}

// ---- modified copies of fixture folders, for loading-error tests ----

pub type Tensors = BTreeMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)>;

/// Copies `src` (config.json + one .safetensors) to a fresh folder under the test temp dir, with
/// the tensors and the config edited.
pub fn modified_copy(
    src: &Path,
    case: &str,
    edit_tensors: impl FnOnce(&mut Tensors),
    edit_config: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("modified")
        .join(src.file_name().unwrap_or_default())
        .join(case);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let weights = std::fs::read_dir(src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .expect("a .safetensors file");
    let bytes = std::fs::read(&weights).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Tensors = st
        .tensors()
        .into_iter()
        .map(|(name, v)| (name, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    edit_tensors(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(name, (dtype, shape, data))| {
            let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap();
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join(weights.file_name().unwrap())).unwrap();
    let text = std::fs::read_to_string(src.join("config.json")).unwrap();
    let mut config: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&text).unwrap();
    edit_config(&mut config);
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    dir
}

/// The full-size reference of `scripts/reference/make_reference.py --full` (random weights in the
/// real s-full-v2 configs): `AUDIOLDM_FULL_REFERENCE` names its `--out` folder, by default
/// `target/reference/full`; the goldens lie next to it in `<folder>-goldens.safetensors`.
pub fn full_reference() -> (PathBuf, audioldm::checkpoint::Checkpoint) {
    let dir = std::env::var_os("AUDIOLDM_FULL_REFERENCE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/reference/full"));
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let goldens = dir.with_file_name(format!("{name}-goldens.safetensors"));
    let goldens = audioldm::checkpoint::Checkpoint::open(&goldens).unwrap_or_else(|e| {
        panic!("{e}: run scripts/reference/make_reference.py --full (see AUDIOLDM_FULL_REFERENCE)")
    });
    (dir, goldens)
}
