use std::fmt;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::context::{Context, MemoryCounter};
use super::error::{GpuError, Result};

/// Element type of a tensor's storage. Arithmetic is always f32: `F16` is storage only, two
/// halves packed in each `u32` word, unpacked in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    U32,
}

impl DType {
    /// Bytes of storage for `len` elements, padded to whole 4-byte words.
    pub fn storage_bytes(self, len: usize) -> u64 {
        match self {
            DType::F32 | DType::U32 => 4 * len as u64,
            DType::F16 => 4 * len.div_ceil(2) as u64,
        }
    }
}

/// A tensor's dimensions, outermost first (PyTorch order).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Shape(pub Vec<usize>);

impl Shape {
    pub fn numel(&self) -> usize {
        self.0.iter().product()
    }
    pub fn rank(&self) -> usize {
        self.0.len()
    }
    pub fn dims(&self) -> &[usize] {
        &self.0
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl From<&[usize]> for Shape {
    fn from(dims: &[usize]) -> Self {
        Shape(dims.to_vec())
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(dims: [usize; N]) -> Self {
        Shape(dims.to_vec())
    }
}

impl From<Vec<usize>> for Shape {
    fn from(dims: Vec<usize>) -> Self {
        Shape(dims)
    }
}

/// A storage buffer counted in its context's memory figures ([`Context::gpu_memory`]) from its
/// creation until it is dropped.
pub struct GpuBuffer {
    buffer: wgpu::Buffer,
    bytes: u64,
    counter: Arc<MemoryCounter>,
}

impl std::ops::Deref for GpuBuffer {
    type Target = wgpu::Buffer;
    fn deref(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        self.counter.release(self.bytes);
    }
}

/// Host memory of the CPU backend, counted like a [`GpuBuffer`]: 4-byte words laid out as the GPU
/// stores them (f32 bits, u32, or two f16 halves per word), so both backends read one format.
pub struct HostBuffer {
    words: RwLock<Vec<u32>>,
    bytes: u64,
    counter: Arc<MemoryCounter>,
}

impl HostBuffer {
    /// `bytes` of zeroed memory, or an out-of-memory error naming `label` where the host has none.
    pub(crate) fn zeroed(ctx: &Context, label: &str, bytes: u64) -> Result<Self> {
        let words = (bytes as usize).div_ceil(4);
        let mut data = Vec::new();
        data.try_reserve_exact(words).map_err(|_| {
            GpuError::HostOutOfMemory(format!("allocating {label} ({bytes} bytes)"))
        })?;
        data.resize(words, 0);
        let counter = ctx.memory_counter();
        counter.take(bytes);
        Ok(Self {
            words: RwLock::new(data),
            bytes,
            counter,
        })
    }

    /// The words, read-only (several readers at once).
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Vec<u32>> {
        self.words.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The words, for writing.
    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, Vec<u32>> {
        self.words.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        self.counter.release(self.bytes);
    }
}

/// Where a tensor's elements live: a buffer of the wgpu device, or host memory of the CPU backend.
#[derive(Clone)]
pub(crate) enum Memory {
    Gpu(Arc<GpuBuffer>),
    Host(Arc<HostBuffer>),
}

/// A buffer with a shape and a dtype, on the context's backend. Clones share the memory.
#[derive(Clone)]
pub struct Tensor {
    memory: Memory,
    shape: Shape,
    dtype: DType,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({:?}, {:?})", self.shape, self.dtype)
    }
}

pub(crate) const STORAGE_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// Allocates a storage buffer, reporting an oversized request or an allocation failure as an error.
pub(crate) fn create_buffer(ctx: &Context, label: &str, bytes: u64) -> Result<GpuBuffer> {
    let max = ctx.limits().max_buffer_size;
    if bytes > max {
        return Err(GpuError::OutOfMemory(format!(
            "allocating {label}: {bytes} bytes is over the device's largest buffer ({max} bytes)"
        )));
    }
    let buffer = ctx.scoped(&format!("allocating {label} ({bytes} bytes)"), || {
        ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(4),
            usage: STORAGE_USAGE,
            mapped_at_creation: false,
        })
    })?;
    let counter = ctx.memory_counter();
    counter.take(bytes.max(4));
    Ok(GpuBuffer {
        buffer,
        bytes: bytes.max(4),
        counter,
    })
}

impl Tensor {
    /// An uninitialised tensor (contents unspecified until written).
    pub fn empty(ctx: &Context, shape: impl Into<Shape>, dtype: DType) -> Result<Self> {
        let shape = shape.into();
        let bytes = dtype.storage_bytes(shape.numel());
        let label = format!("tensor {shape}");
        let memory = if ctx.is_cpu() {
            Memory::Host(Arc::new(HostBuffer::zeroed(ctx, &label, bytes)?))
        } else {
            Memory::Gpu(Arc::new(create_buffer(ctx, &label, bytes)?))
        };
        Ok(Self {
            memory,
            shape,
            dtype,
        })
    }

    /// Uploads f32 data, stored as `dtype` (`F32` or `F16`; f16 rounds to nearest even).
    pub fn from_f32(
        ctx: &Context,
        shape: impl Into<Shape>,
        dtype: DType,
        data: &[f32],
    ) -> Result<Self> {
        let tensor = Self::empty(ctx, shape, dtype)?;
        tensor.write_f32(ctx, data)?;
        Ok(tensor)
    }

    pub fn from_u32(ctx: &Context, shape: impl Into<Shape>, data: &[u32]) -> Result<Self> {
        let tensor = Self::empty(ctx, shape, DType::U32)?;
        tensor.write_u32(ctx, data)?;
        Ok(tensor)
    }

    pub(crate) fn from_buffer(buffer: Arc<GpuBuffer>, shape: Shape, dtype: DType) -> Self {
        Self {
            memory: Memory::Gpu(buffer),
            shape,
            dtype,
        }
    }

    /// The same memory under another shape of as many elements (the caller checks the count).
    pub(crate) fn reshaped(&self, shape: Shape) -> Self {
        Self {
            memory: self.memory.clone(),
            shape,
            dtype: self.dtype,
        }
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn numel(&self) -> usize {
        self.shape.numel()
    }
    pub fn bytes(&self) -> u64 {
        self.dtype.storage_bytes(self.numel())
    }
    /// The wgpu buffer behind a tensor of a GPU context.
    ///
    /// # Panics
    /// On a tensor of the CPU backend, which has none: only wgpu code asks for it.
    pub fn buffer(&self) -> &wgpu::Buffer {
        match &self.memory {
            Memory::Gpu(buffer) => buffer,
            Memory::Host(_) => panic!("a CPU-backend tensor has no wgpu buffer"),
        }
    }
    pub(crate) fn shared_buffer(&self) -> Arc<GpuBuffer> {
        match &self.memory {
            Memory::Gpu(buffer) => Arc::clone(buffer),
            Memory::Host(_) => panic!("a CPU-backend tensor has no wgpu buffer"),
        }
    }
    /// The host memory behind a tensor of the CPU backend.
    pub(crate) fn host(&self) -> Option<&Arc<HostBuffer>> {
        match &self.memory {
            Memory::Host(host) => Some(host),
            Memory::Gpu(_) => None,
        }
    }

    fn check_len(&self, len: usize) -> Result<()> {
        if len != self.numel() {
            return Err(GpuError::Invalid(format!(
                "writing {len} values into a tensor of shape {} ({} values)",
                self.shape,
                self.numel()
            )));
        }
        Ok(())
    }

    /// Replaces the contents with `data` (converted to the tensor's dtype).
    pub fn write_f32(&self, ctx: &Context, data: &[f32]) -> Result<()> {
        self.check_len(data.len())?;
        let bytes: Vec<u8> = match self.dtype {
            DType::F32 => bytemuck::cast_slice(data).to_vec(),
            DType::F16 => {
                let mut halves: Vec<half::f16> =
                    data.iter().map(|&x| half::f16::from_f32(x)).collect();
                if halves.len() % 2 == 1 {
                    halves.push(half::f16::ZERO);
                }
                bytemuck::cast_slice(&halves).to_vec()
            }
            DType::U32 => {
                return Err(GpuError::Invalid(
                    "writing f32 values into a u32 tensor".into(),
                ));
            }
        };
        self.write_bytes(ctx, &bytes)
    }

    pub fn write_u32(&self, ctx: &Context, data: &[u32]) -> Result<()> {
        self.check_len(data.len())?;
        if self.dtype != DType::U32 {
            return Err(GpuError::Invalid(format!(
                "writing u32 values into a {:?} tensor",
                self.dtype
            )));
        }
        self.write_bytes(ctx, bytemuck::cast_slice(data))
    }

    fn write_bytes(&self, ctx: &Context, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        if let Memory::Host(host) = &self.memory {
            bytemuck::cast_slice_mut::<u32, u8>(&mut host.write())[..bytes.len()]
                .copy_from_slice(bytes);
            return Ok(());
        }
        ctx.scoped(&format!("uploading tensor {}", self.shape), || {
            ctx.queue().write_buffer(self.buffer(), 0, bytes)
        })?;
        ctx.uploaded(bytes.len() as u64)
    }

    /// Reads the tensor back as f32 (after all submitted work).
    pub async fn to_vec_f32_async(&self, ctx: &Context) -> Result<Vec<f32>> {
        let bytes = self.read_bytes(ctx).await?;
        Ok(match self.dtype {
            DType::F32 => bytemuck::pod_collect_to_vec(&bytes),
            DType::F16 => {
                let halves: Vec<half::f16> = bytemuck::pod_collect_to_vec(&bytes);
                halves[..self.numel()].iter().map(|h| h.to_f32()).collect()
            }
            DType::U32 => {
                return Err(GpuError::Invalid("reading a u32 tensor as f32".into()));
            }
        })
    }

    pub async fn to_vec_u32_async(&self, ctx: &Context) -> Result<Vec<u32>> {
        if self.dtype != DType::U32 {
            return Err(GpuError::Invalid(format!(
                "reading a {:?} tensor as u32",
                self.dtype
            )));
        }
        let bytes = self.read_bytes(ctx).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// The elements of a tensor of the CPU backend as f32, at once (its work is done when a run
    /// returns); `None` for a GPU tensor.
    pub(crate) fn host_f32(&self) -> Option<Vec<f32>> {
        let host = self.host()?;
        let words = host.read();
        Some(match self.dtype {
            DType::F32 | DType::U32 => bytemuck::cast_slice(&words[..self.numel()]).to_vec(),
            DType::F16 => bytemuck::cast_slice::<u32, half::f16>(&words)[..self.numel()]
                .iter()
                .map(|h| h.to_f32())
                .collect(),
        })
    }

    async fn read_bytes(&self, ctx: &Context) -> Result<Vec<u8>> {
        match &self.memory {
            Memory::Gpu(buffer) => read_buffer(ctx, buffer, self.bytes()).await,
            Memory::Host(host) => {
                Ok(bytemuck::cast_slice::<u32, u8>(&host.read())[..self.bytes() as usize].to_vec())
            }
        }
    }

    /// Blocking [`Tensor::to_vec_f32_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn to_vec_f32(&self, ctx: &Context) -> Result<Vec<f32>> {
        pollster::block_on(self.to_vec_f32_async(ctx))
    }

    /// Blocking [`Tensor::to_vec_u32_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn to_vec_u32(&self, ctx: &Context) -> Result<Vec<u32>> {
        pollster::block_on(self.to_vec_u32_async(ctx))
    }
}

/// Copies the first `bytes` of `buffer` back to the CPU through a staging buffer.
pub(crate) async fn read_buffer(
    ctx: &Context,
    buffer: &wgpu::Buffer,
    bytes: u64,
) -> Result<Vec<u8>> {
    if bytes == 0 {
        return Ok(Vec::new());
    }
    let staging = staging_buffer(ctx, bytes)?;
    ctx.scoped("reading a tensor back", || {
        let mut encoder = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("read-back"),
            });
        encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, bytes);
        ctx.queue().submit([encoder.finish()]);
    })?;
    map_read(ctx, &staging, bytes, None).await
}

/// A buffer the CPU can map and read, `bytes` long, for copies out of storage buffers.
pub(crate) fn staging_buffer(ctx: &Context, bytes: u64) -> Result<wgpu::Buffer> {
    ctx.scoped("allocating a read-back buffer", || {
        ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("read-back"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    })
}

/// Maps `staging` once `submission` (`None`: all work submitted so far) has finished, copies out
/// its first `bytes` and unmaps it. Waiting for one submission leaves later ones running.
pub(crate) async fn map_read(
    ctx: &Context,
    staging: &wgpu::Buffer,
    bytes: u64,
    submission: Option<wgpu::SubmissionIndex>,
) -> Result<Vec<u8>> {
    /// Unmaps the buffer however the read ends (an error, or its future dropped part way), so
    /// that it can be copied into again.
    struct Unmap<'a>(&'a wgpu::Buffer);
    impl Drop for Unmap<'_> {
        fn drop(&mut self) {
            self.0.unmap();
        }
    }
    let (sender, receiver) = futures_channel::oneshot::channel();
    staging.map_async(wgpu::MapMode::Read, ..bytes, move |result| {
        // The receiver only goes away if this function has already returned an error.
        let _ = sender.send(result);
    });
    let _unmap = Unmap(staging);
    ctx.wait_for_async(submission).await?;
    receiver
        .await
        .map_err(|_| GpuError::DeviceLost("the read-back was never answered".into()))?
        .map_err(|e| GpuError::Wgpu {
            context: "mapping a read-back buffer".into(),
            message: e.to_string(),
        })?;
    let view = staging
        .get_mapped_range(..bytes)
        .map_err(|e| GpuError::Wgpu {
            context: "viewing a read-back buffer".into(),
            message: e.to_string(),
        })?;
    let data = view.to_vec();
    drop(view);
    ctx.check()?;
    Ok(data)
}
