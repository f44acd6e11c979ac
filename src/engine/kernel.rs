//! WGSL sources, their specialisation by a tiny preprocessor, and compiled pipelines.
//!
//! Kernels are specialised only on what changes the generated code (tile sizes, activation, storage
//! dtype): shapes travel in each op's uniform block, so one pipeline serves every shape.

use std::borrow::Cow;

use super::context::Context;
use super::error::{GpuError, Result};

/// A WGSL family file and the define sets the engine compiles it with (for validation in tests).
pub struct ShaderSource {
    pub name: &'static str,
    pub source: &'static str,
}

macro_rules! shader {
    ($name:literal) => {
        ShaderSource {
            name: $name,
            source: include_str!(concat!("../../shaders/", $name)),
        }
    };
}

/// Every file in `shaders/`. Files starting with `_` are only included by others.
pub const SHADERS: &[ShaderSource] = &[
    shader!("_activation.wgsl"),
    shader!("_gemm.wgsl"),
    shader!("_reduce.wgsl"),
    shader!("_weights.wgsl"),
    shader!("_weights_vec4.wgsl"),
    shader!("attention.wgsl"),
    shader!("conv.wgsl"),
    shader!("elementwise.wgsl"),
    shader!("embedding.wgsl"),
    shader!("layout.wgsl"),
    shader!("matmul.wgsl"),
    shader!("matmul_tiles.wgsl"),
    shader!("norm.wgsl"),
    shader!("timestep.wgsl"),
    shader!("upsample.wgsl"),
];

fn source_of(name: &str) -> Result<&'static str> {
    SHADERS
        .iter()
        .find(|s| s.name == name)
        .map(|s| s.source)
        .ok_or_else(|| GpuError::Invalid(format!("no shader named {name}")))
}

/// Defines a kernel is specialised with, e.g. `[("ACT", "gelu"), ("TM", "4")]`.
pub type Defines = Vec<(&'static str, String)>;

/// Expands `#include "file"`, `#if NAME` / `#if !NAME` / `#else` / `#endif` (a name is true when
/// defined and not `0`) and `${NAME}` substitutions.
pub fn preprocess(name: &str, defines: &[(&str, String)]) -> Result<String> {
    let mut out = String::new();
    expand(name, defines, &mut out, 0)?;
    Ok(out)
}

fn expand(name: &str, defines: &[(&str, String)], out: &mut String, depth: usize) -> Result<()> {
    if depth > 8 {
        return Err(GpuError::Invalid(format!(
            "{name}: #include nested too deep"
        )));
    }
    let lookup = |key: &str| defines.iter().find(|(k, _)| *k == key).map(|(_, v)| v);
    // Each entry: (this branch is taken, some enclosing branch is not taken).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let active = |stack: &[(bool, bool)]| stack.iter().all(|(taken, _)| *taken);
    for (lineno, line) in source_of(name)?.lines().enumerate() {
        let trimmed = line.trim_start();
        let err = |what: &str| GpuError::Invalid(format!("{name}:{}: {what}", lineno + 1));
        if let Some(cond) = trimmed.strip_prefix("#if ") {
            let cond = cond.trim();
            let (negate, key) = match cond.strip_prefix('!') {
                Some(key) => (true, key.trim()),
                None => (false, cond),
            };
            let truth = lookup(key).is_some_and(|v| v != "0");
            stack.push((truth != negate, !active(&stack)));
        } else if trimmed.starts_with("#else") {
            let top = stack.last_mut().ok_or_else(|| err("#else without #if"))?;
            top.0 = !top.0;
        } else if trimmed.starts_with("#endif") {
            stack.pop().ok_or_else(|| err("#endif without #if"))?;
        } else if !active(&stack) {
            continue;
        } else if let Some(file) = trimmed.strip_prefix("#include ") {
            expand(file.trim().trim_matches('"'), defines, out, depth + 1)?;
        } else {
            let mut rest = line;
            while let Some(start) = rest.find("${") {
                out.push_str(&rest[..start]);
                let after = &rest[start + 2..];
                let end = after.find('}').ok_or_else(|| err("unclosed ${"))?;
                let key = &after[..end];
                let value =
                    lookup(key).ok_or_else(|| err(&format!("${{{key}}} is not defined")))?;
                out.push_str(value);
                rest = &after[end + 1..];
            }
            out.push_str(rest);
            out.push('\n');
        }
    }
    if !stack.is_empty() {
        return Err(GpuError::Invalid(format!("{name}: #if without #endif")));
    }
    Ok(())
}

/// Identifies one compiled pipeline. Its bind group layout is always: binding 0 the op's uniform
/// block (dynamic offset), then `inputs` read-only storage buffers, then `outputs` writable ones.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KernelKey {
    pub shader: &'static str,
    pub entry: &'static str,
    pub defines: Defines,
    pub inputs: u32,
    pub outputs: u32,
}

impl KernelKey {
    pub fn new(shader: &'static str, entry: &'static str, inputs: u32, outputs: u32) -> Self {
        Self {
            shader,
            entry,
            defines: Vec::new(),
            inputs,
            outputs,
        }
    }

    pub fn define(mut self, key: &'static str, value: impl ToString) -> Self {
        self.defines.push((key, value.to_string()));
        self
    }

    /// Defines `key` as 1 when `on`: the optional parts of a kernel (bias, residual, f16 weights).
    pub fn flag(self, key: &'static str, on: bool) -> Self {
        if on { self.define(key, 1) } else { self }
    }

    pub fn source(&self) -> Result<String> {
        preprocess(self.shader, &self.defines)
    }
}

/// Size of one op's uniform block; also the dynamic-offset stride (WebGPU's maximum alignment).
pub const PARAM_BLOCK_BYTES: u64 = 256;

pub struct Kernel {
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) layout: wgpu::BindGroupLayout,
}

impl Kernel {
    pub(crate) fn compile(ctx: &Context, key: &KernelKey) -> Result<Self> {
        let source = key.source()?;
        let device = ctx.device();
        let label = format!("{}:{}", key.shader, key.entry);
        ctx.scoped(
            &format!("compiling kernel {label} {:?}", key.defines),
            || {
                let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(&label),
                    source: wgpu::ShaderSource::Wgsl(Cow::Owned(source)),
                });
                let storage = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
                    binding,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                };
                let mut entries = vec![wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: true,
                        min_binding_size: wgpu::BufferSize::new(PARAM_BLOCK_BYTES),
                    },
                    count: None,
                }];
                entries.extend((0..key.inputs).map(|i| storage(1 + i, true)));
                entries.extend((0..key.outputs).map(|i| storage(1 + key.inputs + i, false)));
                let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some(&label),
                    entries: &entries,
                });
                let pipeline_layout =
                    device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                        label: Some(&label),
                        bind_group_layouts: &[Some(&layout)],
                        immediate_size: 0,
                    });
                let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(&label),
                    layout: Some(&pipeline_layout),
                    module: &module,
                    entry_point: Some(key.entry),
                    compilation_options: Default::default(),
                    cache: None,
                });
                Self { pipeline, layout }
            },
        )
    }
}
