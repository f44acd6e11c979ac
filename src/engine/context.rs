use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::error::{GpuError, Result};
use super::kernel::{Kernel, KernelKey};

/// Optional adapter features the engine uses when present.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub shader_f16: bool,
    pub subgroup: bool,
    pub timestamp_query: bool,
}

impl Capabilities {
    fn from_features(features: wgpu::Features) -> Self {
        Self {
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroup: features.contains(wgpu::Features::SUBGROUP),
            timestamp_query: features.contains(wgpu::Features::TIMESTAMP_QUERY),
        }
    }

    fn wanted_features() -> wgpu::Features {
        wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP | wgpu::Features::TIMESTAMP_QUERY
    }
}

/// The kernel variants op builders pick where several compute the same op. Chosen from the
/// adapter when a context is made ([`KernelVariants::for_adapter`]), overridable with
/// `AUDIOLDM_KERNELS` or [`Context::set_variants`] (tests force each variant on).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelVariants {
    /// GEMMs (Linear layers, batched products) stage their operands in workgroup memory
    /// (`matmul_tiles.wgsl`), for GPUs; off, the register-blocked kernels, for CPU adapters.
    pub tiles: bool,
    /// GEMMs multiply in f16 and accumulate in f32 (needs `SHADER_F16`): `--f16` turns it on
    /// where the adapter has it and the tiles are in use.
    pub f16_math: bool,
    /// A GroupNorm (+ SiLU) followed by a convolution is applied as the convolution reads its
    /// input (`group_norm_stats`, then the normalising input pass): the normalised tensor is
    /// never written, one memory pass fewer.
    pub fuse_norm: bool,
    /// GroupNorm, LayerNorm, L2 normalisation and softmax reduce within subgroups first (needs
    /// `SUBGROUP`; naga's `subgroup_id`, so native backends only), two barriers instead of
    /// log2 of the workgroup size.
    pub subgroups: bool,
}

impl KernelVariants {
    /// The environment variable that overrides the choice: `portable` (the CPU adapters' set),
    /// `gpu`, or a comma list of `tiles`, `f16-math`, `fuse-norm`, `subgroups`.
    pub const ENV: &'static str = "AUDIOLDM_KERNELS";

    /// What suits the adapter: workgroup-memory tiles on GPUs whose limits hold them (8 KiB of
    /// workgroup memory, 256 invocations), the register-blocked kernels on CPU adapters
    /// (lavapipe, SwiftShader), where workgroup memory is ordinary memory. Subgroup reductions on
    /// native GPUs (the browser's WGSL compiler lacks `subgroup_id`); a context turns them off
    /// where the device has no `SUBGROUP`.
    pub fn for_adapter(info: &wgpu::AdapterInfo, limits: &wgpu::Limits) -> Self {
        let tiles_fit = limits.max_compute_workgroup_storage_size >= 8192
            && limits.max_compute_invocations_per_workgroup >= 256
            && limits.max_compute_workgroup_size_x >= 16
            && limits.max_compute_workgroup_size_y >= 16;
        let gpu = info.device_type != wgpu::DeviceType::Cpu;
        Self {
            tiles: gpu && tiles_fit,
            f16_math: false,
            fuse_norm: gpu,
            subgroups: gpu && info.backend != wgpu::Backend::BrowserWebGpu,
        }
    }

    /// Parses [`Self::ENV`]'s value.
    pub fn parse(text: &str) -> Result<Self> {
        let mut variants = Self::default();
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "portable" => variants = Self::default(),
                "gpu" => {
                    variants.tiles = true;
                    variants.fuse_norm = true;
                    variants.subgroups = true;
                }
                "tiles" => variants.tiles = true,
                "f16-math" => variants.f16_math = true,
                "fuse-norm" => variants.fuse_norm = true,
                "subgroups" => variants.subgroups = true,
                other => {
                    return Err(GpuError::Invalid(format!(
                        "unknown kernel variant {other:?} in {}: use portable, gpu, tiles, \
                         f16-math, fuse-norm or subgroups",
                        Self::ENV
                    )));
                }
            }
        }
        Ok(variants)
    }
}

/// Which backend runs the graphs: `--device` and `AUDIOLDM_DEVICE`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    /// A real GPU where there is one, else the CPU backend (a software adapter is far slower).
    #[default]
    Auto,
    /// The adapter wgpu finds, even a software one; an error where there is none.
    Gpu,
    /// The CPU backend: Rust kernels on the host's cores.
    Cpu,
}

impl DeviceChoice {
    /// The environment variable that picks the device by name (`auto`, `gpu`, `cpu`).
    pub const ENV: &'static str = "AUDIOLDM_DEVICE";
    pub const NAMES: [&'static str; 3] = ["auto", "gpu", "cpu"];

    /// The device named `name`, or an error listing the known names.
    pub fn parse(name: &str) -> Result<Self> {
        match name.trim() {
            "auto" => Ok(Self::Auto),
            "gpu" => Ok(Self::Gpu),
            "cpu" => Ok(Self::Cpu),
            other => Err(GpuError::Invalid(format!(
                "unknown device {other:?}: use one of {}",
                Self::NAMES.join(", ")
            ))),
        }
    }

    /// The device [`Self::ENV`] names, `Auto` when it is unset or empty.
    pub fn from_env() -> Result<Self> {
        match std::env::var(Self::ENV) {
            Ok(name) if !name.trim().is_empty() => {
                Self::parse(&name).map_err(|e| GpuError::Invalid(format!("{}: {e}", Self::ENV)))
            }
            _ => Ok(Self::Auto),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Gpu => "gpu",
            Self::Cpu => "cpu",
        }
    }
}

/// Which limits the engine asks a device for. Op builders read the device's limits and split their
/// work to fit them, so every profile runs the same models; only speed and memory differ.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum LimitsProfile {
    /// Everything the adapter offers (desktop drivers bind up to 2 GiB at once).
    #[default]
    Adapter,
    /// The WebGPU specification's defaults (`wgpu::Limits::default()`: 128 MiB per binding,
    /// 256 MiB per buffer, 16 KiB of workgroup memory, 256 invocations per workgroup): what a
    /// browser gives a page that asks for nothing, and close to where integrated GPUs stop.
    WebGpuDefault,
    /// Limits given by the caller; tests lower the binding size to make ops split.
    Custom(Box<wgpu::Limits>),
}

impl LimitsProfile {
    /// The environment variable that picks a profile by name (`adapter`, `webgpu-default`).
    pub const ENV: &'static str = "AUDIOLDM_LIMITS";

    /// The profile named `name`: `adapter` or `webgpu-default`.
    pub fn parse(name: &str) -> Result<Self> {
        match name.trim() {
            "adapter" => Ok(Self::Adapter),
            "webgpu-default" => Ok(Self::WebGpuDefault),
            other => Err(GpuError::Invalid(format!(
                "unknown limits profile {other:?}: use adapter or webgpu-default"
            ))),
        }
    }

    /// The profile [`LimitsProfile::ENV`] names; [`LimitsProfile::Adapter`] when it is unset or empty.
    pub fn from_env() -> Result<Self> {
        match std::env::var(Self::ENV) {
            Ok(name) if !name.trim().is_empty() => {
                Self::parse(&name).map_err(|e| GpuError::Invalid(format!("{}: {e}", Self::ENV)))
            }
            _ => Ok(Self::Adapter),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Adapter => "adapter",
            Self::WebGpuDefault => "webgpu-default",
            Self::Custom(_) => "custom",
        }
    }

    /// The limits this profile asks of an adapter that offers `offered`.
    pub fn wanted(&self, offered: &wgpu::Limits) -> wgpu::Limits {
        match self {
            Self::Adapter => offered.clone(),
            Self::WebGpuDefault => wgpu::Limits::default(),
            Self::Custom(limits) => (**limits).clone(),
        }
    }

    /// [`LimitsProfile::wanted`], or an error naming the first limit the adapter cannot give.
    pub fn request(&self, offered: &wgpu::Limits) -> Result<wgpu::Limits> {
        let wanted = self.wanted(offered);
        let mut short = None;
        wanted.check_limits_with_fail_fn(offered, true, |name, want, have| {
            short = Some(format!("{name}: {want} wanted, the adapter offers {have}"));
        });
        match short {
            None => Ok(wanted),
            Some(detail) => Err(GpuError::RequestDevice(format!(
                "the adapter is below the {} limits ({detail})",
                self.name()
            ))),
        }
    }
}

impl std::fmt::Display for LimitsProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the engine asks of a device: the limits of `profile` and whichever optional features it
/// uses the adapter has. A front end that creates the device itself (eframe) passes this on, so
/// one device serves drawing and compute.
pub fn device_descriptor(
    adapter: &wgpu::Adapter,
    profile: &LimitsProfile,
) -> Result<wgpu::DeviceDescriptor<'static>> {
    Ok(wgpu::DeviceDescriptor {
        label: Some("audioldm"),
        required_features: adapter.features() & Capabilities::wanted_features(),
        required_limits: profile.request(&adapter.limits())?,
        memory_hints: wgpu::MemoryHints::Performance,
        ..Default::default()
    })
}

/// The wgpu instance the engine's device comes from: the `WGPU_*` environment's backends; in a
/// browser WebGPU only (WebGL has no compute shaders). Front ends that create the device
/// themselves (eframe) use it too.
pub fn instance_descriptor() -> wgpu::InstanceDescriptor {
    #[cfg(not(target_arch = "wasm32"))]
    return wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    #[cfg(target_arch = "wasm32")]
    wgpu::InstanceDescriptor {
        backends: wgpu::Backends::BROWSER_WEBGPU,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    }
}

/// Bytes of the engine's storage buffers alive now and at most since the last reset: weights,
/// activations, inputs and outputs (uniform blocks and read-back staging are not counted).
#[derive(Default)]
pub(crate) struct MemoryCounter {
    live: AtomicU64,
    peak: AtomicU64,
}

impl MemoryCounter {
    pub(crate) fn take(&self, bytes: u64) {
        let live = self.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(live, Ordering::Relaxed);
    }

    pub(crate) fn release(&self, bytes: u64) {
        self.live.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// How many uploaded bytes may wait in wgpu's staging memory before [`Context::uploaded`] flushes
/// them: large enough that a model loads in few submissions, small next to its weights.
#[cfg(not(target_arch = "wasm32"))]
const UPLOAD_FLUSH_BYTES: u64 = 64 << 20;

/// What [`Context::gpu_memory`] reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuMemory {
    /// Bytes of storage buffers alive now.
    pub live: u64,
    /// The most alive at once since the context was made or [`Context::reset_peak_memory`].
    pub peak: u64,
}

/// The device, its queue and what the engine learnt about it. Cheap to clone; one device per
/// process. Clones share the kernel variants; [`Context::with_variants`] makes a handle with its
/// own (a pipeline computing in f16 on a device others use in f32).
#[derive(Clone)]
pub struct Context {
    inner: Arc<Inner>,
    variants: Arc<Mutex<KernelVariants>>,
}

/// A GPU error caught after the call that caused it returned.
struct Caught {
    out_of_memory: bool,
    message: String,
}

struct Inner {
    /// On the CPU backend, what it reports in the adapter's place (device type `Cpu`, backend
    /// `Noop`).
    info: wgpu::AdapterInfo,
    /// On the CPU backend, no limit: nothing is ever split to fit a binding.
    limits: wgpu::Limits,
    profile: LimitsProfile,
    caps: Capabilities,
    kernels: Mutex<HashMap<KernelKey, Arc<Kernel>>>,
    memory: Arc<MemoryCounter>,
    /// The wgpu device; `None` on the CPU backend.
    gpu: Option<GpuDevice>,
}

/// What only a wgpu context has.
struct GpuDevice {
    device: wgpu::Device,
    queue: wgpu::Queue,
    /// Set by the device-lost callback; every later operation reports it.
    lost: Arc<Mutex<Option<String>>>,
    /// Errors no error scope caught (wgpu would otherwise panic on them), and in a browser what
    /// the scopes caught after they returned.
    uncaptured: Arc<Mutex<Vec<Caught>>>,
    /// In a browser: error scopes popped but not answered yet ([`Context::wait_async`] waits for
    /// them, so an error is reported by the wait that follows the work that caused it).
    #[cfg(target_arch = "wasm32")]
    unanswered_scopes: Arc<AtomicU64>,
    /// Bytes queued by `write_buffer` since the queue last ran: wgpu holds them in staging memory
    /// until a submission finishes.
    #[cfg(not(target_arch = "wasm32"))]
    unflushed_uploads: AtomicU64,
    /// Bound where an optional input (bias, residual) is absent, so a kernel has one layout.
    placeholder: wgpu::Buffer,
}

impl Context {
    /// Creates a device on the adapter the environment asks for, with the limits profile
    /// [`LimitsProfile::ENV`] names.
    ///
    /// Honours `WGPU_BACKEND` (e.g. `vulkan`), `WGPU_ADAPTER_NAME` (a substring of the adapter's
    /// name), `WGPU_POWER_PREF` (`low`/`high`) and the other `WGPU_*` instance variables.
    pub async fn new() -> Result<Self> {
        Self::with_limits(LimitsProfile::from_env()?).await
    }

    /// Creates a device on the adapter the environment asks for, with the limits of `profile`.
    pub async fn with_limits(profile: LimitsProfile) -> Result<Self> {
        Self::from_instance(&wgpu::Instance::new(instance_descriptor()), profile).await
    }

    /// Creates a device from `instance` on the adapter the environment asks for, with the limits
    /// of `profile`: for an instance made with flags of the caller's (the tests turn the Vulkan
    /// validation layer on whatever the build).
    pub async fn from_instance(instance: &wgpu::Instance, profile: LimitsProfile) -> Result<Self> {
        Self::from_adapter(choose_adapter(instance).await?, profile).await
    }

    /// A context for `device`: the CPU backend, the environment's adapter with the limits of
    /// `profile`, or (`Auto`) the adapter where it is a real GPU and the CPU backend where the
    /// only adapter is a software rasteriser (lavapipe, SwiftShader, WARP) or there is none.
    pub async fn for_device(device: DeviceChoice, profile: LimitsProfile) -> Result<Self> {
        match device {
            DeviceChoice::Cpu => Ok(Self::cpu()),
            DeviceChoice::Gpu => Self::with_limits(profile).await,
            DeviceChoice::Auto => {
                let instance = wgpu::Instance::new(instance_descriptor());
                match choose_adapter(&instance).await {
                    Ok(adapter) if adapter.get_info().device_type != wgpu::DeviceType::Cpu => {
                        Self::from_adapter(adapter, profile).await
                    }
                    Ok(adapter) => {
                        tracing::info!(
                            "{} is a software adapter: running on the CPU backend instead \
                             (--device gpu to use it)",
                            adapter.get_info().name
                        );
                        Ok(Self::cpu())
                    }
                    Err(e) => {
                        tracing::info!("{e}: running on the CPU backend");
                        Ok(Self::cpu())
                    }
                }
            }
        }
    }

    /// Blocking form of [`Context::for_device`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn for_device_blocking(device: DeviceChoice, profile: LimitsProfile) -> Result<Self> {
        pollster::block_on(Self::for_device(device, profile))
    }

    async fn from_adapter(adapter: wgpu::Adapter, profile: LimitsProfile) -> Result<Self> {
        let info = adapter.get_info();
        let (device, queue) = adapter
            .request_device(&device_descriptor(&adapter, &profile)?)
            .await
            .map_err(|e| GpuError::RequestDevice(e.to_string()))?;
        Ok(Self::from_device(device, queue, info, profile))
    }

    /// Blocking form of [`Context::new`] for native front ends and tests.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking() -> Result<Self> {
        pollster::block_on(Self::new())
    }

    /// Blocking form of [`Context::with_limits`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_limits_blocking(profile: LimitsProfile) -> Result<Self> {
        pollster::block_on(Self::with_limits(profile))
    }

    /// Wraps a device someone else made (the desktop app hands over eframe's, requested with
    /// [`device_descriptor`] for `profile`), so that one device serves the whole process.
    pub fn from_device(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
        profile: LimitsProfile,
    ) -> Self {
        let lost = Arc::new(Mutex::new(None));
        let lost_flag = Arc::clone(&lost);
        device.set_device_lost_callback(move |reason, message| {
            tracing::error!(?reason, %message, "GPU device lost");
            *lost_flag.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(format!("{reason:?}: {message}"));
        });
        let uncaptured = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&uncaptured);
        device.on_uncaptured_error(Arc::new(move |error: wgpu::Error| {
            tracing::error!(%error, "uncaptured GPU error");
            sink.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Caught {
                    out_of_memory: matches!(error, wgpu::Error::OutOfMemory { .. }),
                    message: error.to_string(),
                });
        }));
        let caps = Capabilities::from_features(device.features());
        let limits = device.limits();
        tracing::info!(
            adapter = %info.name,
            backend = ?info.backend,
            device_type = ?info.device_type,
            driver = %info.driver,
            driver_info = %info.driver_info,
            ?caps,
            limits = %profile,
            max_binding = limits.max_storage_buffer_binding_size,
            max_buffer = limits.max_buffer_size,
            "GPU context ready"
        );
        let variants = match std::env::var(KernelVariants::ENV) {
            Ok(text) if !text.trim().is_empty() => {
                KernelVariants::parse(&text).unwrap_or_else(|e| {
                    tracing::warn!("{e}; using the adapter's kernel variants");
                    KernelVariants::for_adapter(&info, &limits)
                })
            }
            _ => KernelVariants::for_adapter(&info, &limits),
        };
        let variants = KernelVariants {
            f16_math: variants.f16_math && caps.shader_f16,
            subgroups: variants.subgroups && caps.subgroup,
            ..variants
        };
        tracing::info!(?variants, "kernel variants");
        let placeholder = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("placeholder"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Self {
            inner: Arc::new(Inner {
                info,
                limits,
                profile,
                caps,
                kernels: Mutex::new(HashMap::new()),
                memory: Arc::default(),
                gpu: Some(GpuDevice {
                    device,
                    queue,
                    lost,
                    uncaptured,
                    #[cfg(target_arch = "wasm32")]
                    unanswered_scopes: Arc::default(),
                    #[cfg(not(target_arch = "wasm32"))]
                    unflushed_uploads: AtomicU64::new(0),
                    placeholder,
                }),
            }),
            variants: Arc::new(Mutex::new(variants)),
        }
    }

    /// A context of the CPU backend: graphs recorded on it run as Rust kernels on the host's
    /// cores (rayon's threads; `RAYON_NUM_THREADS` sets how many), tensors live in host memory.
    pub fn cpu() -> Self {
        tracing::info!(backend = %cpu_backend_name(), "CPU context ready");
        Self {
            inner: Arc::new(Inner {
                info: cpu_adapter_info(),
                limits: wgpu::Limits {
                    max_storage_buffer_binding_size: u64::MAX,
                    max_buffer_size: u64::MAX,
                    ..wgpu::Limits::default()
                },
                profile: LimitsProfile::Adapter,
                caps: Capabilities::default(),
                kernels: Mutex::new(HashMap::new()),
                memory: Arc::default(),
                gpu: None,
            }),
            variants: Arc::new(Mutex::new(KernelVariants::default())),
        }
    }

    /// Whether graphs of this context run on the CPU backend.
    pub fn is_cpu(&self) -> bool {
        self.inner.gpu.is_none()
    }

    /// What runs this context's graphs, for a run's first line and the WAV comment: the adapter
    /// and its wgpu backend, or the CPU backend with the processor and its thread count.
    pub fn backend_name(&self) -> String {
        if self.is_cpu() {
            return cpu_backend_name();
        }
        let info = &self.inner.info;
        format!(
            "GPU: {} ({:?}, {:?})",
            info.name, info.backend, info.device_type
        )
    }

    fn gpu(&self) -> &GpuDevice {
        self.inner
            .gpu
            .as_ref()
            .expect("a wgpu call reached a context of the CPU backend")
    }

    /// The wgpu device.
    ///
    /// # Panics
    /// On a context of the CPU backend ([`Context::is_cpu`]), which has none.
    pub fn device(&self) -> &wgpu::Device {
        &self.gpu().device
    }

    /// The wgpu queue.
    ///
    /// # Panics
    /// On a context of the CPU backend, which has none.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.gpu().queue
    }

    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.inner.info
    }

    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }

    /// The limits profile the device was created with.
    pub fn limits_profile(&self) -> &LimitsProfile {
        &self.inner.profile
    }

    pub fn capabilities(&self) -> Capabilities {
        self.inner.caps
    }

    /// The kernel variants graphs recorded from now on use.
    pub fn variants(&self) -> KernelVariants {
        *self.variants.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the kernel variants of graphs recorded from now on, for this handle and its clones.
    /// `f16_math` on an adapter without `SHADER_F16`, or `subgroups` without `SUBGROUP`, is an
    /// error.
    pub fn set_variants(&self, variants: KernelVariants) -> Result<()> {
        self.check_variants(variants)?;
        *self.variants.lock().unwrap_or_else(PoisonError::into_inner) = variants;
        Ok(())
    }

    /// A handle on the same device whose graphs use `variants`, leaving this one's as they are.
    /// Errors as [`Self::set_variants`].
    pub fn with_variants(&self, variants: KernelVariants) -> Result<Self> {
        self.check_variants(variants)?;
        Ok(Self {
            inner: Arc::clone(&self.inner),
            variants: Arc::new(Mutex::new(variants)),
        })
    }

    fn check_variants(&self, variants: KernelVariants) -> Result<()> {
        if self.is_cpu() && variants != KernelVariants::default() {
            return Err(GpuError::Invalid(
                "kernel variants choose among WGSL kernels; the CPU backend has one set".into(),
            ));
        }
        if variants.f16_math && !self.inner.caps.shader_f16 {
            return Err(GpuError::Invalid(format!(
                "the adapter {} has no SHADER_F16: f16 arithmetic is not available",
                self.inner.info.name
            )));
        }
        if variants.subgroups && !self.inner.caps.subgroup {
            return Err(GpuError::Invalid(format!(
                "the adapter {} has no SUBGROUP: subgroup reductions are not available",
                self.inner.info.name
            )));
        }
        Ok(())
    }

    /// The largest byte range one storage binding may cover on this device.
    pub fn max_binding_bytes(&self) -> u64 {
        self.inner.limits.max_storage_buffer_binding_size
    }

    /// GPU memory held by the engine's storage buffers, counted as they are created and dropped
    /// (what the driver adds for alignment or bookkeeping is not seen).
    pub fn gpu_memory(&self) -> GpuMemory {
        GpuMemory {
            live: self.inner.memory.live.load(Ordering::Relaxed),
            peak: self.inner.memory.peak.load(Ordering::Relaxed),
        }
    }

    /// Starts a new peak at what is alive now, to measure one stage.
    pub fn reset_peak_memory(&self) {
        let memory = &self.inner.memory;
        memory
            .peak
            .store(memory.live.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    pub(crate) fn memory_counter(&self) -> Arc<MemoryCounter> {
        Arc::clone(&self.inner.memory)
    }

    pub(crate) fn placeholder(&self) -> &wgpu::Buffer {
        &self.gpu().placeholder
    }

    /// Fails once the device is lost or an error escaped every error scope.
    pub fn check(&self) -> Result<()> {
        let Some(gpu) = &self.inner.gpu else {
            return Ok(());
        };
        if let Some(reason) = gpu
            .lost
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            return Err(GpuError::DeviceLost(reason));
        }
        let mut uncaptured = gpu
            .uncaptured
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if uncaptured.is_empty() {
            return Ok(());
        }
        let caught = std::mem::take(&mut *uncaptured);
        let message = caught
            .iter()
            .map(|c| c.message.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        // Running out of memory is what the user can act on: it names the error.
        Err(if caught.iter().any(|c| c.out_of_memory) {
            GpuError::OutOfMemory(message)
        } else {
            GpuError::Wgpu {
                context: "running GPU work".into(),
                message,
            }
        })
    }

    /// Runs `f` inside out-of-memory and validation error scopes and turns what they catch into
    /// errors that say what was being done.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn scoped<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T> {
        self.check()?;
        let Some(gpu) = &self.inner.gpu else {
            return Ok(f());
        };
        let device = &gpu.device;
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let value = f();
        // Native scopes answer at once: nothing is waited for here.
        let oom_error = pollster::block_on(oom.pop());
        let validation_error = pollster::block_on(validation.pop());
        if let Some(e) = oom_error {
            return Err(GpuError::OutOfMemory(format!("{what} ({e})")));
        }
        if let Some(e) = validation_error {
            return Err(GpuError::Wgpu {
                context: what.to_string(),
                message: e.to_string(),
            });
        }
        self.check()?;
        Ok(value)
    }

    /// In the browser a scope answers only after the page's event loop has run, so what a scope
    /// catches is recorded when it arrives and reported by the next [`Context::check`] (every
    /// read-back and wait checks).
    #[cfg(target_arch = "wasm32")]
    pub(crate) fn scoped<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T> {
        self.check()?;
        let Some(gpu) = &self.inner.gpu else {
            return Ok(f());
        };
        let device = &gpu.device;
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let value = f();
        let (oom, validation) = (oom.pop(), validation.pop());
        let sink = Arc::clone(&gpu.uncaptured);
        let unanswered = Arc::clone(&gpu.unanswered_scopes);
        unanswered.fetch_add(1, Ordering::Relaxed);
        let what = what.to_string();
        wasm_bindgen_futures::spawn_local(async move {
            let caught = [
                oom.await.map(|e| Caught {
                    out_of_memory: true,
                    message: format!("{what} ({e})"),
                }),
                validation.await.map(|e| Caught {
                    out_of_memory: false,
                    message: format!("{what}: {e}"),
                }),
            ];
            sink.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(caught.into_iter().flatten());
            unanswered.fetch_sub(1, Ordering::Relaxed);
        });
        Ok(value)
    }

    /// Counts `bytes` queued by `write_buffer` and, past [`UPLOAD_FLUSH_BYTES`], submits and waits
    /// so that wgpu frees the staging copies. Without this, loading a model keeps a second copy
    /// of every weight in host memory until the first run.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn uploaded(&self, bytes: u64) -> Result<()> {
        let Some(gpu) = &self.inner.gpu else {
            return Ok(());
        };
        let unflushed = gpu.unflushed_uploads.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if unflushed < UPLOAD_FLUSH_BYTES {
            return Ok(());
        }
        gpu.unflushed_uploads.store(0, Ordering::Relaxed);
        gpu.queue.submit([]);
        self.wait()
    }

    /// A browser copies each upload out of the page's memory when it is queued: nothing to flush.
    #[cfg(target_arch = "wasm32")]
    pub(crate) fn uploaded(&self, _bytes: u64) -> Result<()> {
        Ok(())
    }

    /// Waits until all submitted work has finished, without blocking where blocking is not
    /// allowed (a browser's page): there the future resolves from the page's event loop.
    pub async fn wait_async(&self) -> Result<()> {
        self.wait_for_async(None).await
    }

    /// Waits until `submission` (`None`: all submitted work) has finished, leaving later
    /// submissions running. In a browser a given submission is not waited for here: the mapping
    /// of a buffer it fills resolves when it is done.
    pub(crate) async fn wait_for_async(
        &self,
        submission: Option<wgpu::SubmissionIndex>,
    ) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        self.wait_for(submission)?;
        #[cfg(target_arch = "wasm32")]
        if let (None, Some(gpu)) = (&submission, &self.inner.gpu) {
            let (done, finished) = futures_channel::oneshot::channel();
            gpu.queue.on_submitted_work_done(move || {
                let _ = done.send(());
            });
            finished
                .await
                .map_err(|_| GpuError::DeviceLost("the GPU never reported the work done".into()))?;
            // The scopes of that work answer through the page's event loop: let it run until
            // they have, so their errors are reported here and not by a later, unrelated call.
            // (Bounded, in case a browser never answers a scope: the wait must end.)
            for _ in 0..10_000 {
                if gpu.unanswered_scopes.load(Ordering::Relaxed) == 0 {
                    break;
                }
                next_task().await;
            }
            self.check()?;
        }
        Ok(())
    }

    /// Waits until all submitted work has finished.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn wait(&self) -> Result<()> {
        self.wait_for(None)
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn wait_for(&self, submission_index: Option<wgpu::SubmissionIndex>) -> Result<()> {
        let Some(gpu) = &self.inner.gpu else {
            return Ok(());
        };
        gpu.device
            .poll(wgpu::PollType::Wait {
                submission_index,
                timeout: None,
            })
            .map_err(|e| GpuError::Wgpu {
                context: "waiting for the GPU".into(),
                message: e.to_string(),
            })?;
        self.check()
    }

    /// The compiled pipeline for `key`, compiled on first use and cached for the process.
    pub(crate) fn kernel(&self, key: &KernelKey) -> Result<Arc<Kernel>> {
        let mut cache = self
            .inner
            .kernels
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(kernel) = cache.get(key) {
            return Ok(Arc::clone(kernel));
        }
        let kernel = Arc::new(Kernel::compile(self, key)?);
        cache.insert(key.clone(), Arc::clone(&kernel));
        Ok(kernel)
    }

    /// How many distinct pipelines have been compiled so far.
    pub fn kernel_count(&self) -> usize {
        self.inner
            .kernels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The keys of every pipeline compiled so far, by all handles on this device: what the ops
    /// really requested (`tests/shader_backends.rs` translates each for every backend).
    pub fn compiled_kernels(&self) -> Vec<KernelKey> {
        self.inner
            .kernels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }
}

async fn choose_adapter(instance: &wgpu::Instance) -> Result<wgpu::Adapter> {
    let backends = wgpu::Backends::from_env().unwrap_or_default();
    if let Ok(wanted) = std::env::var("WGPU_ADAPTER_NAME") {
        let wanted = wanted.to_lowercase();
        let adapters = instance.enumerate_adapters(backends).await;
        let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
        return adapters
            .into_iter()
            .find(|a| a.get_info().name.to_lowercase().contains(&wanted))
            .ok_or_else(|| {
                GpuError::NoAdapter(format!(
                    "WGPU_ADAPTER_NAME={wanted:?} matches none of {names:?}"
                ))
            });
    }
    instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::from_env()
                .unwrap_or(wgpu::PowerPreference::HighPerformance),
            force_fallback_adapter: std::env::var("WGPU_FORCE_FALLBACK_ADAPTER")
                .is_ok_and(|v| v == "1"),
            compatible_surface: None,
            ..Default::default()
        })
        .await
        .map_err(|e| GpuError::NoAdapter(format!("backends {backends:?}: {e}")))
}

/// Resolves on a later task of the page's event loop (a zero-delay `setTimeout`, in a page or a
/// worker), letting the browser deliver what it has queued (error scopes, mapped buffers).
#[cfg(target_arch = "wasm32")]
pub(crate) async fn next_task() {
    use wasm_bindgen::JsCast;
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        let global = js_sys::global();
        let scheduled = js_sys::Reflect::get(&global, &"setTimeout".into())
            .and_then(|f| f.dyn_into::<js_sys::Function>())
            .and_then(|set_timeout| set_timeout.call2(&global, &resolve, &0.into()));
        if scheduled.is_err() {
            let _ = resolve.call0(&wasm_bindgen::JsValue::NULL);
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}

/// The CPU backend's line: the processor's name where the system says it, and rayon's threads.
#[cfg(not(target_arch = "wasm32"))]
fn cpu_backend_name() -> String {
    format!(
        "CPU: {} ({} threads)",
        cpu_model_name().unwrap_or_else(|| std::env::consts::ARCH.to_string()),
        crate::engine::cpu::threads()
    )
}

/// A page's CPU backend: the kernels compiled to WebAssembly with 128-bit SIMD, on the page's
/// one thread (a browser hides the processor's name).
#[cfg(target_arch = "wasm32")]
fn cpu_backend_name() -> String {
    "CPU: WebAssembly (1 thread, SIMD128)".into()
}

#[cfg(target_os = "linux")]
fn cpu_model_name() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix("model name")?.split_once(':'))
        .map(|(_, name)| name.trim().to_string())
}

#[cfg(not(any(target_os = "linux", target_arch = "wasm32")))]
fn cpu_model_name() -> Option<String> {
    None
}

/// What a context of the CPU backend reports in place of an adapter.
fn cpu_adapter_info() -> wgpu::AdapterInfo {
    wgpu::AdapterInfo {
        name: cpu_backend_name(),
        vendor: 0,
        device: 0,
        device_type: wgpu::DeviceType::Cpu,
        device_pci_bus_id: String::new(),
        driver: "audioldm CPU backend".into(),
        driver_info: String::new(),
        backend: wgpu::Backend::Noop,
        subgroup_min_size: 0,
        subgroup_max_size: 0,
        transient_saves_memory: None,
        limit_bucket: None,
    }
}
