//! Every kernel specialisation the engine really requests, translated by naga for each native
//! backend with the options wgpu-hal 30 passes, and the output checked by a tool of that language.
//!
//! The kernels are collected by running the tiny pipeline (one text-to-audio step and a style
//! transfer, which adds the VAE encoder) under each kernel variant set (portable, the GPU set with
//! tiles, fused norms and subgroup reductions, f16 arithmetic, f16 weights) and each limits profile
//! (`adapter`, `webgpu-default`), then reading the keys of the pipelines the context compiled
//! (`Context::compiled_kernels`): the same `KernelKey::source` the engine compiles, no hand-copied
//! defines. Each is parsed and validated by naga with only the capabilities its variant needs
//! (f16 for `F16_MATH` and `XP_F16`, subgroups for `SUBGROUPS`), overrides processed as wgpu-hal does, then:
//!
//! - SPIR-V (Vulkan): written twice, as for a Vulkan 1.1 device (SPIR-V 1.3, bounds checks on
//!   buffers, workgroup memory zeroed by a polyfill) and a Vulkan 1.3 one (SPIR-V 1.6, robust
//!   buffer access, native zeroing), each checked by `spirv-val --target-env vulkan1.x`: the
//!   SPIR-V and Vulkan environment rules (types, capabilities, decorations, layouts, structured
//!   control flow, memory model). It cannot see driver bugs or what a driver's compiler rejects.
//! - HLSL (D3D12): written with the bindings wgpu's root signature gives (CBV b0 for the uniform
//!   block, SRVs for inputs, UAVs for the output, the special constants at b1) for shader model 5.1
//!   (FXC; kernels without f16 or subgroups) and 6.6 (DXC), compiled by glslang's HLSL front end
//!   to SPIR-V: syntax, types, overload resolution and intrinsics as glslang reads HLSL. No DXC or
//!   FXC exists for Linux in Debian or on PyPI, so the rules only those compilers apply (shader
//!   model gates, DXIL validation) are not checked.
//! - MSL (Metal): naga's validation of the module and `msl::write_string` with wgpu's per-entry
//!   point buffer slots, for MSL 2.4 and 4.0. No Metal compiler runs here: the generated source
//!   itself is not compiled.
//!
//! A missing tool fails the test: the checks are what this test is for.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use audioldm::audio::decode::decode_file;
use audioldm::engine::kernel::KernelKey;
use audioldm::engine::{KernelVariants, LimitsProfile};
use audioldm::model::nn::Precision;
use audioldm::pipeline::edit::{EditRequest, Mode};
use audioldm::pipeline::{Pipeline, Request, SchedulerKind};
use naga::back::{hlsl, msl, spv};
use naga::proc::{BoundsCheckPolicies, BoundsCheckPolicy};
use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};
use naga::{Module, ShaderStage};

const PORTABLE: KernelVariants = KernelVariants {
    tiles: false,
    f16_math: false,
    fuse_norm: false,
    subgroups: false,
};
const GPU: KernelVariants = KernelVariants {
    tiles: true,
    f16_math: false,
    fuse_norm: true,
    subgroups: true,
};

/// The variant sets the pipeline runs under: a name, the variants, f16 weights.
const RUNS: [(&str, KernelVariants, bool); 5] = [
    ("portable", PORTABLE, false),
    ("portable, f16 weights", PORTABLE, true),
    ("gpu", GPU, false),
    (
        "gpu, f16 math",
        KernelVariants {
            f16_math: true,
            ..GPU
        },
        false,
    ),
    ("gpu, f16 weights (f16 math)", GPU, true),
];

/// What one specialisation needs of the device, from the defines its op chose.
#[derive(Clone, Copy)]
struct Needs {
    f16: bool,
    subgroups: bool,
}

fn needs(key: &KernelKey) -> Needs {
    let on = |name: &str| key.defines.iter().any(|(k, v)| *k == name && v != "0");
    Needs {
        // XP_F16: the f16 padded input of a convolution computing in f16 (and its fallback).
        f16: on("F16_MATH") || on("XP_F16"),
        subgroups: on("SUBGROUPS"),
    }
}

/// Every specialisation the tiny pipeline compiles under each variant set and limits profile.
fn requested_kernels() -> BTreeMap<String, KernelKey> {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let clip = decode_file(&fixtures.join("clips/chirp-16k.wav"), 60.0).expect("decode a clip");
    let text = Request {
        prompt: "a dog barking in the rain, then thunder!".into(),
        negative_prompt: Some("low quality".into()),
        steps: 1,
        guidance_scale: 2.5,
        duration_s: Some(1.0),
        seed: 0,
        eta: 0.0,
        init_latents: None,
        conditioning: None,
        scheduler: SchedulerKind::Ddim,
    };
    let transfer = EditRequest {
        request: Request {
            steps: 2,
            duration_s: None,
            ..text.clone()
        },
        source: clip,
        source_name: "chirp.wav".into(),
        mode: Mode::StyleTransfer { strength: 0.5 },
    };
    let cancel = AtomicBool::new(false);
    let mut kernels = BTreeMap::new();
    for profile in [LimitsProfile::Adapter, LimitsProfile::WebGpuDefault] {
        for (name, variants, f16_weights) in RUNS {
            let ctx = common::ctx_with_limits(profile.clone());
            ctx.set_variants(variants).unwrap_or_else(|e| {
                panic!(
                    "{name}: this adapter cannot compile every variant, so not all are covered: {e}"
                )
            });
            let p = Pipeline::load(
                &ctx,
                &fixtures.join("tiny"),
                Precision::weights_f16(f16_weights),
            )
            .expect("load the tiny model");
            p.generate(&text, &cancel, |_| {})
                .unwrap_or_else(|e| panic!("{name}, {profile}: text to audio: {e}"));
            p.edit(&transfer, &cancel, |_| {})
                .unwrap_or_else(|e| panic!("{name}, {profile}: style transfer: {e}"));
            let before = kernels.len();
            for key in ctx.compiled_kernels() {
                kernels.insert(
                    format!("{}:{} {:?}", key.shader, key.entry, key.defines),
                    key,
                );
            }
            println!(
                "{profile} / {name}: {} kernels compiled, {} new",
                ctx.kernel_count(),
                kernels.len() - before
            );
        }
    }
    kernels
}

/// Parses and validates with what wgpu-core gives a device with these features.
fn parse(source: &str, needs: Needs) -> Result<(Module, ModuleInfo), String> {
    let mut caps = Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    caps.set(Capabilities::SHADER_FLOAT16, needs.f16);
    caps.set(Capabilities::SUBGROUP, needs.subgroups);
    let mut options = naga::front::wgsl::Options::new();
    options.capabilities = caps;
    let module = naga::front::wgsl::Frontend::new_with_options(options)
        .parse(source)
        .map_err(|e| e.emit_to_string(source))?;
    let info = Validator::new(ValidationFlags::all(), caps)
        .validate(&module)
        .map_err(|e| e.emit_to_string(source))?;
    Ok((module, info))
}

fn dispatch_limits() -> Option<naga::back::TaskDispatchLimits> {
    let limits = wgpu::Limits::default();
    Some(naga::back::TaskDispatchLimits {
        max_mesh_workgroups_per_dim: limits.max_mesh_workgroups_per_dimension,
        max_mesh_workgroups_total: limits.max_mesh_workgroup_total_count,
    })
}

/// The SPIR-V environments: (SPIR-V version, spirv-val target, a modern device).
const SPIRV_TARGETS: [((u8, u8), &str, bool); 2] =
    [((1, 3), "vulkan1.1", false), ((1, 6), "vulkan1.3", true)];

/// `vulkan/adapter.rs`'s `naga_options` for a device with `needs`' features.
fn spirv(
    module: &Module,
    info: &ModuleInfo,
    key: &KernelKey,
    needs: Needs,
    modern: bool,
    version: (u8, u8),
) -> Result<Vec<u32>, String> {
    use spv::Capability as C;
    let mut caps: naga::FastHashSet<C> = [
        C::Shader,
        C::Matrix,
        C::Sampled1D,
        C::Image1D,
        C::ImageQuery,
        C::DerivativeControl,
        C::StorageImageExtendedFormats,
    ]
    .into_iter()
    .collect();
    if needs.f16 {
        caps.insert(C::Float16);
    }
    if needs.subgroups {
        caps.extend([
            C::GroupNonUniform,
            C::GroupNonUniformVote,
            C::GroupNonUniformArithmetic,
            C::GroupNonUniformBallot,
            C::GroupNonUniformShuffle,
            C::GroupNonUniformShuffleRelative,
            C::GroupNonUniformQuad,
        ]);
    }
    let robust = if modern {
        BoundsCheckPolicy::Unchecked
    } else {
        BoundsCheckPolicy::Restrict
    };
    let options = spv::Options {
        lang_version: version,
        flags: spv::WriterFlags::LABEL_VARYINGS | spv::WriterFlags::FORCE_POINT_SIZE,
        capabilities: Some(caps),
        bounds_check_policies: BoundsCheckPolicies {
            index: BoundsCheckPolicy::Restrict,
            buffer: robust,
            image_load: robust,
            binding_array: BoundsCheckPolicy::Unchecked,
        },
        zero_initialize_workgroup_memory: if modern {
            spv::ZeroInitializeWorkgroupMemoryMode::Native
        } else {
            spv::ZeroInitializeWorkgroupMemoryMode::Polyfill
        },
        force_loop_bounding: true,
        ray_query_initialization_tracking: true,
        use_storage_input_output_16: needs.f16,
        fake_missing_bindings: false,
        // `vulkan/device.rs` numbers a layout's entries in order: the engine's bindings as they are.
        binding_map: (0..1 + key.inputs + key.outputs)
            .map(|binding| {
                let info = spv::BindingInfo {
                    descriptor_set: 0,
                    binding,
                    binding_array_size: None,
                };
                (naga::ResourceBinding { group: 0, binding }, info)
            })
            .collect(),
        task_dispatch_limits: dispatch_limits(),
        mesh_shader_primitive_indices_clamp: true,
        trace_ray_argument_validation: true,
        emit_int_div_checks: true,
        ..spv::Options::default()
    };
    let pipeline = spv::PipelineOptions {
        shader_stage: ShaderStage::Compute,
        entry_point: key.entry.to_string(),
    };
    spv::write_vec(module, info, &options, Some(&pipeline)).map_err(|e| e.to_string())
}

/// `dx12/device.rs`'s options for the engine's one bind group: binding 0 the dynamic uniform block
/// (the root CBV b0), then `inputs` SRVs and `outputs` UAVs, the special constants at b1.
fn hlsl(
    module: &Module,
    info: &ModuleInfo,
    key: &KernelKey,
    model: hlsl::ShaderModel,
) -> Result<(String, String), String> {
    let target = |register| hlsl::BindTarget {
        register,
        ..Default::default()
    };
    let mut binding_map = hlsl::BindingMap::default();
    let at = |binding| naga::ResourceBinding { group: 0, binding };
    binding_map.insert(
        at(0),
        hlsl::BindTarget {
            restrict_indexing: true,
            ..target(0)
        },
    );
    for i in 0..key.inputs {
        binding_map.insert(at(1 + i), target(i));
    }
    for i in 0..key.outputs {
        binding_map.insert(at(1 + key.inputs + i), target(i));
    }
    let options = hlsl::Options {
        shader_model: model,
        binding_map,
        fake_missing_bindings: false,
        special_constants_binding: Some(target(1)),
        immediates_target: None,
        zero_initialize_workgroup_memory: true,
        restrict_indexing: true,
        sampler_heap_target: hlsl::SamplerHeapBindTargets {
            standard_samplers: target(0),
            comparison_samplers: target(2048),
        },
        force_loop_bounding: true,
        task_dispatch_limits: dispatch_limits(),
        mesh_shader_primitive_indices_clamp: true,
        ray_query_initialization_tracking: true,
        ..hlsl::Options::default()
    };
    let pipeline = hlsl::PipelineOptions {
        entry_point: Some((ShaderStage::Compute, key.entry.to_string())),
    };
    let mut source = String::new();
    let reflection = hlsl::Writer::new(&mut source, &options, &pipeline)
        .write(module, info, None)
        .map_err(|e| e.to_string())?;
    let entry = reflection
        .entry_point_names
        .into_iter()
        .next()
        .ok_or("no entry point")?;
    Ok((source, entry.map_err(|e| e.to_string())?))
}

/// `metal/device.rs`'s options: buffers in binding order at slots 0.., the sizes buffer after them.
fn msl(
    module: &Module,
    info: &ModuleInfo,
    key: &KernelKey,
    version: (u8, u8),
) -> Result<String, String> {
    let mut resources = msl::BindingMap::default();
    let buffers = 1 + key.inputs + key.outputs;
    for binding in 0..buffers {
        let target = msl::BindTarget {
            buffer: Some(binding as msl::Slot),
            mutable: binding > key.inputs,
            ..Default::default()
        };
        resources.insert(naga::ResourceBinding { group: 0, binding }, target);
    }
    let resources = msl::EntryPointResources {
        resources,
        immediates_buffer: None,
        sizes_buffer: Some(buffers as msl::Slot),
    };
    let checks = BoundsCheckPolicy::Restrict;
    let options = msl::Options {
        lang_version: version,
        fake_missing_bindings: false,
        per_entry_point_map: [(key.entry.to_string(), resources)].into_iter().collect(),
        bounds_check_policies: BoundsCheckPolicies {
            index: checks,
            buffer: checks,
            image_load: checks,
            binding_array: BoundsCheckPolicy::Unchecked,
        },
        zero_initialize_workgroup_memory: true,
        force_loop_bounding: true,
        task_dispatch_limits: dispatch_limits(),
        mesh_shader_primitive_indices_clamp: true,
        emit_int_div_checks: true,
        ray_query_initialization_tracking: true,
        ..msl::Options::default()
    };
    let pipeline = msl::PipelineOptions {
        entry_point: Some((ShaderStage::Compute, key.entry.to_string())),
        vertex_pulling_transform: true,
        ..Default::default()
    };
    msl::write_string(module, info, &options, &pipeline)
        .map(|(source, _)| source)
        .map_err(|e| e.to_string())
}

/// Runs a checker; its output when it rejects the file.
fn tool(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| {
        panic!("{program} cannot run ({e}): install it (scripts/setup.sh --tests: spirv-tools, glslang-tools)")
    });
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn spirv_val(dir: &Path, name: &str, words: &[u32], env: &str) -> Result<(), String> {
    let path = dir.join(format!("{name}.spv"));
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    std::fs::write(&path, bytes).expect("write the SPIR-V");
    tool(
        "spirv-val",
        &["--target-env", env, path.to_str().expect("utf-8 temp path")],
    )
}

/// glslang's HLSL front end, to SPIR-V for Vulkan 1.1 (wave intrinsics), 16-bit types on.
fn glslang_hlsl(dir: &Path, name: &str, source: &str, entry: &str) -> Result<(), String> {
    let path = dir.join(format!("{name}.hlsl"));
    std::fs::write(&path, for_glslang(source)).expect("write the HLSL");
    let out = dir.join(format!("{name}.hlsl.spv"));
    let args = [
        "-D",
        "-V",
        "-S",
        "comp",
        "-e",
        entry,
        "--target-env",
        "vulkan1.1",
        "--hlsl-enable-16bit-types",
        "-o",
    ];
    let mut args: Vec<&str> = args.to_vec();
    args.extend([out.to_str().expect("utf-8"), path.to_str().expect("utf-8")]);
    tool("glslangValidator", &args)
}

/// glslang's HLSL front end lacks the cast of 0 to an array, `(T[N])0`, that naga writes for the
/// zero value of an array (DXC and FXC take it): each becomes a call of a helper that zeroes the
/// array element by element. The only change made to naga's HLSL.
fn for_glslang(hlsl: &str) -> String {
    let mut helpers = Vec::new();
    let (mut out, mut rest) = (String::new(), hlsl);
    while let Some(at) = rest.find('(') {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        match zero_array_cast(tail) {
            Some((ty, dims, len)) => {
                out.push_str(&format!("{}()", zero_helper(ty, &dims, &mut helpers)));
                rest = &tail[len..];
            }
            None => {
                out.push('(');
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    helpers
        .into_iter()
        .map(|(_, code)| code)
        .collect::<String>()
        + &out
}

/// `T[N]..[M])0` at the start of `s`: the type, the dimensions and the length matched.
fn zero_array_cast(s: &str) -> Option<(&str, Vec<&str>, usize)> {
    let ident = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
    let (mut pos, mut dims) = (ident, Vec::new());
    while s[pos..].starts_with('[') {
        let end = pos + s[pos..].find(']')?;
        let n = &s[pos + 1..end];
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        dims.push(n);
        pos = end + 1;
    }
    let after = s[pos..].strip_prefix(")0")?;
    let number_goes_on = after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '.');
    (ident > 0 && !dims.is_empty() && !number_goes_on).then_some((&s[..ident], dims, pos + 2))
}

fn zero_helper(ty: &str, dims: &[&str], helpers: &mut Vec<(String, String)>) -> String {
    let name = format!("zero_{ty}_{}", dims.join("_"));
    if !helpers.iter().any(|(n, _)| *n == name) {
        let element = match dims.len() {
            1 => format!("({ty})0.0"),
            _ => format!("{}()", zero_helper(ty, &dims[1..], helpers)),
        };
        let (n, inner): (_, String) = (
            dims[0],
            dims[1..].iter().map(|d| format!("[{d}]")).collect(),
        );
        let code = format!(
            "typedef {ty} {name}_t[{n}]{inner};\n{name}_t {name}() {{ {ty} r[{n}]{inner}; \
             for (uint i = 0u; i < {n}u; i++) {{ r[i] = {element}; }} return r; }}\n"
        );
        helpers.push((name.clone(), code));
    }
    name
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("audioldm-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    dir
}

#[test]
fn every_requested_kernel_translates_and_passes_each_backend_check() {
    let start = Instant::now();
    let kernels = requested_kernels();
    let collected = start.elapsed();
    let dir = temp_dir("shader-backends");
    let mut failures = Vec::new();
    let (mut spirv_checked, mut hlsl_checked, mut msl_checked) = (0, 0, 0);
    let mut hlsl_unchecked = Vec::new();
    for (i, (label, key)) in kernels.iter().enumerate() {
        let needs = needs(key);
        let source = key.source().expect("preprocess");
        let (module, info) = match parse(&source, needs) {
            Ok(parsed) => parsed,
            Err(e) => {
                failures.push(format!("{label}: naga: {e}"));
                continue;
            }
        };
        let (module, info) = naga::back::pipeline_constants::process_overrides(
            &module,
            &info,
            Some((ShaderStage::Compute, key.entry)),
            &Default::default(),
        )
        .expect("no overrides to fail");
        let mut fail = |what: String, result: Result<(), String>| match result {
            Ok(()) => true,
            Err(e) => {
                failures.push(format!("{label}: {what}: {e}"));
                false
            }
        };
        for (version, env, modern) in SPIRV_TARGETS {
            let checked = spirv(&module, &info, key, needs, modern, version)
                .and_then(|words| spirv_val(&dir, &format!("k{i}-{env}"), &words, env));
            spirv_checked += usize::from(fail(format!("SPIR-V {env}"), checked));
        }
        let models: &[hlsl::ShaderModel] = if needs.f16 || needs.subgroups {
            &[hlsl::ShaderModel::V6_6]
        } else {
            &[hlsl::ShaderModel::V5_1, hlsl::ShaderModel::V6_6]
        };
        for &model in models {
            let what = format!("HLSL SM {}", model.to_str());
            let source = match hlsl(&module, &info, key, model) {
                Ok(source) => source,
                Err(e) => {
                    fail(what, Err(e));
                    continue;
                }
            };
            // DXC's templated loads of 16-bit types (SM 6.2); glslang knows no `Load<T>`.
            if source.0.contains(".Load<") || source.0.contains(".Store<") {
                hlsl_unchecked.push(format!("{label} ({what})"));
                continue;
            }
            let checked = glslang_hlsl(
                &dir,
                &format!("k{i}-{}", model.to_str()),
                &source.0,
                &source.1,
            );
            hlsl_checked += usize::from(fail(what, checked));
        }
        for version in [(2, 4), (4, 0)] {
            let checked = msl(&module, &info, key, version).map(drop);
            msl_checked += usize::from(fail(format!("MSL {version:?}"), checked));
        }
    }
    if failures.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let count = |f: fn(&Needs) -> bool| kernels.values().filter(|k| f(&needs(k))).count();
    println!(
        "{} kernel specialisations ({} with f16 arithmetic, {} with subgroups), collected in {:.1?} \
         from {} variant sets x 2 limits profiles",
        kernels.len(),
        count(|n| n.f16),
        count(|n| n.subgroups),
        collected,
        RUNS.len()
    );
    println!(
        "passed: SPIR-V {spirv_checked} (spirv-val, vulkan1.1 and vulkan1.3), HLSL {hlsl_checked} \
         (glslang, SM 5.1 where no f16/subgroups, and SM 6.6), MSL {msl_checked} (naga only, 2.4 and \
         4.0); not checkable here: DXC/FXC rules and DXIL validation, Metal compilation; {:.1?} in all",
        start.elapsed()
    );
    println!(
        "HLSL not checkable by glslang (templated Load<T>/Store<T> of f16, DXC only): {}",
        hlsl_unchecked.len()
    );
    for unchecked in &hlsl_unchecked {
        println!("  {unchecked}");
    }
    assert!(
        failures.is_empty(),
        "{} checks failed (files in {}):\n{}",
        failures.len(),
        dir.display(),
        failures.join("\n\n")
    );
    assert!(kernels.len() > 20 && count(|n| n.f16) > 0 && count(|n| n.subgroups) > 0);
}

/// The checkers can fail: spirv-val rejects a module without the `Shader` capability, glslang
/// HLSL that names an undeclared identifier, and naga a subgroup kernel on a device without them.
#[test]
fn each_checker_rejects_a_broken_kernel() {
    let key = KernelKey::new("norm.wgsl", "layer_norm", 3, 1)
        .define("LAYER_NORM", 1)
        .define("WG", 64)
        .flag("SUBGROUPS", true);
    let source = key.source().expect("preprocess");
    let without = Needs {
        f16: false,
        subgroups: false,
    };
    assert!(
        parse(&source, without).is_err(),
        "naga accepts subgroups without the capability"
    );
    let with = Needs {
        subgroups: true,
        ..without
    };
    let (module, info) = parse(&source, with).expect("the subgroup kernel validates");
    let dir = temp_dir("shader-backends-broken");

    let mut words = spirv(&module, &info, &key, with, false, (1, 3)).expect("SPIR-V");
    spirv_val(&dir, "good", &words, "vulkan1.1").expect("the kernel is valid SPIR-V");
    // OpCapability Shader (opcode 17, 2 words) becomes OpCapability Float16 (9).
    let at = words
        .windows(2)
        .position(|w| w == [0x0002_0011, 1])
        .expect("OpCapability Shader");
    words[at + 1] = 9;
    assert!(
        spirv_val(&dir, "broken", &words, "vulkan1.1").is_err(),
        "spirv-val accepts a module without Shader"
    );

    let (hlsl_source, entry) = hlsl(&module, &info, &key, hlsl::ShaderModel::V6_6).expect("HLSL");
    glslang_hlsl(&dir, "good", &hlsl_source, &entry).expect("glslang accepts the kernel");
    let broken = format!("{hlsl_source}\nstatic const float broken = not_declared_anywhere;\n");
    assert!(
        glslang_hlsl(&dir, "broken", &broken, &entry).is_err(),
        "glslang accepts an undeclared name"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
