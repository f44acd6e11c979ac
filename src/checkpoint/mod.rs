//! Reading model weights: `.safetensors` (memory-mapped) and PyTorch `.bin` zip pickles (through a
//! reader that only understands the opcodes torch uses to rebuild tensors and dicts, so it never
//! executes pickled code). Every lookup checks presence, dtype and shape and names the tensor.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid checkpoint: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("{path}: no weight file (looked for {looked_for})")]
    NoWeights { path: PathBuf, looked_for: String },
    #[error("{path}: tensor `{name}` is missing")]
    Missing { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {got:?}, expected {expected:?}")]
    Shape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("{path}: tensor `{name}` has dtype {got}, expected {expected}")]
    Dtype {
        path: PathBuf,
        name: String,
        got: String,
        expected: &'static str,
    },
}

pub type Result<T, E = CheckpointError> = std::result::Result<T, E>;

/// Element types found in checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoredDtype {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    U8,
    Bool,
}

impl StoredDtype {
    pub fn size(self) -> usize {
        match self {
            StoredDtype::F64 | StoredDtype::I64 => 8,
            StoredDtype::F32 | StoredDtype::I32 => 4,
            StoredDtype::F16 | StoredDtype::BF16 | StoredDtype::I16 => 2,
            StoredDtype::U8 | StoredDtype::Bool => 1,
        }
    }
}

impl fmt::Display for StoredDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// Where a tensor's little-endian bytes live.
#[derive(Clone)]
pub(crate) enum Bytes {
    Mapped {
        map: Arc<memmap2::Mmap>,
        start: usize,
        end: usize,
    },
    /// Bytes of a buffer of their own (decompressed or gathered); tensors that view one storage
    /// share its buffer.
    Owned {
        buf: Arc<Vec<u8>>,
        start: usize,
        end: usize,
    },
    /// A byte range of a file a browser page holds (its cache of a download, or a file the user
    /// picked): read only when the tensor is, so a checkpoint never sits whole in wasm memory.
    #[cfg(target_arch = "wasm32")]
    Blob {
        blob: web_sys::Blob,
        start: u64,
        end: u64,
    },
}

impl Bytes {
    /// The bytes where they can be had without waiting; `None` for a browser's file.
    fn as_slice(&self) -> Option<&[u8]> {
        match self {
            Bytes::Mapped { map, start, end } => Some(&map[*start..*end]),
            Bytes::Owned { buf, start, end } => Some(&buf[*start..*end]),
            #[cfg(target_arch = "wasm32")]
            Bytes::Blob { .. } => None,
        }
    }

    /// The bytes, read from the browser's file where they live there.
    async fn read(&self) -> std::result::Result<std::borrow::Cow<'_, [u8]>, String> {
        #[cfg(target_arch = "wasm32")]
        if let Bytes::Blob { blob, start, end } = self {
            return crate::mounted::read_range(blob, *start, *end)
                .await
                .map(std::borrow::Cow::Owned);
        }
        self.as_slice()
            .map(std::borrow::Cow::Borrowed)
            .ok_or_else(|| "no bytes".to_string())
    }

    /// Drops a mapped tensor's pages from this process's resident set once its values have been
    /// copied out: they stay in the OS page cache, but a loaded model no longer counts its
    /// checkpoint a second time in resident memory. Whole 64 KiB blocks inside the tensor only (a
    /// multiple of every common page size), so no other tensor's bytes are touched; best effort.
    fn release(&self) {
        #[cfg(unix)]
        if let Bytes::Mapped { map, start, end } = self {
            const BLOCK: usize = 64 << 10;
            let first = start.div_ceil(BLOCK) * BLOCK;
            let last = end / BLOCK * BLOCK;
            if last > first {
                // SAFETY: `Mmap::map` makes a read-only shared mapping of the file, so after
                // MADV_DONTNEED a later read faults the same file bytes back in: no value seen
                // through the map changes, and no borrow of these bytes is alive here.
                let _ = unsafe {
                    map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        first,
                        last - first,
                    )
                };
            }
        }
    }

    pub(crate) fn owned(buf: Vec<u8>) -> Self {
        let end = buf.len();
        Bytes::Owned {
            buf: Arc::new(buf),
            start: 0,
            end,
        }
    }
}

#[derive(Clone)]
pub(crate) struct Entry {
    pub dtype: StoredDtype,
    pub shape: Vec<usize>,
    pub bytes: Bytes,
}

/// The tensors of one model part (one weight file).
pub struct Checkpoint {
    path: PathBuf,
    tensors: BTreeMap<String, Entry>,
}

impl Checkpoint {
    pub(crate) fn from_entries(path: PathBuf, tensors: BTreeMap<String, Entry>) -> Self {
        Self { path, tensors }
    }

    /// Opens the weights of a diffusers/transformers component folder, safetensors first:
    /// diffusers' `diffusion_pytorch_model.{safetensors,bin}`, transformers' `model.safetensors`
    /// and `pytorch_model.bin`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        const FILES: [&str; 5] = [
            "diffusion_pytorch_model.safetensors",
            "model.safetensors",
            "diffusion_pytorch_model.bin",
            "pytorch_model.bin",
            "model.bin",
        ];
        for file in FILES {
            let path = dir.join(file);
            if crate::untrusted::is_file(&path) {
                return Self::open(&path);
            }
        }
        Err(CheckpointError::NoWeights {
            path: dir.to_path_buf(),
            looked_for: FILES.join(", "),
        })
    }

    /// Opens one weight file, choosing the reader by extension.
    pub fn open(path: &Path) -> Result<Self> {
        #[cfg(target_arch = "wasm32")]
        if let Some((blob, header)) = crate::mounted::weights(path) {
            return read_mounted_safetensors(path, blob, &header);
        }
        match path.extension().and_then(|e| e.to_str()) {
            Some("bin") | Some("pt") | Some("pth") => super::checkpoint::pickle::read(path),
            _ => read_safetensors(path),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|e| e.shape.as_slice())
    }

    pub fn dtype(&self, name: &str) -> Option<StoredDtype> {
        self.tensors.get(name).map(|e| e.dtype)
    }

    /// Renames every tensor whose name contains `from` (e.g. diffusers' old VAE attention names).
    pub fn rename_all(&mut self, from: &str, to: &str) {
        let old: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| k.contains(from))
            .cloned()
            .collect();
        for name in old {
            if let Some(entry) = self.tensors.remove(&name) {
                self.tensors.insert(name.replace(from, to), entry);
            }
        }
    }

    /// The tensor `name` as f32, checked to have `shape`. A tensor of a browser's file is read
    /// with [`Checkpoint::f32_async`] only.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let entry = self.entry(name, shape)?;
        let bytes = entry
            .bytes
            .as_slice()
            .ok_or_else(|| CheckpointError::Corrupt {
                path: self.path.clone(),
                detail: format!("tensor `{name}` must be read asynchronously"),
            })?;
        let values = self.decode_f32(name, entry, bytes)?;
        entry.bytes.release();
        Ok(values)
    }

    /// [`Checkpoint::f32`] for every kind of file, a browser's included.
    pub async fn f32_async(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let entry = self.entry(name, shape)?;
        let bytes = entry
            .bytes
            .read()
            .await
            .map_err(|detail| CheckpointError::Corrupt {
                path: self.path.clone(),
                detail: format!("tensor `{name}`: {detail}"),
            })?;
        let values = self.decode_f32(name, entry, &bytes)?;
        drop(bytes);
        entry.bytes.release();
        Ok(values)
    }

    /// The entry of `name`, checked to have `shape`.
    fn entry(&self, name: &str, shape: &[usize]) -> Result<&Entry> {
        let entry = self
            .tensors
            .get(name)
            .ok_or_else(|| CheckpointError::Missing {
                path: self.path.clone(),
                name: name.to_string(),
            })?;
        if entry.shape != shape {
            return Err(CheckpointError::Shape {
                path: self.path.clone(),
                name: name.to_string(),
                expected: shape.to_vec(),
                got: entry.shape.clone(),
            });
        }
        Ok(entry)
    }

    /// The values of `entry`'s `bytes` as f32.
    fn decode_f32(&self, name: &str, entry: &Entry, bytes: &[u8]) -> Result<Vec<f32>> {
        let numel: usize = entry.shape.iter().product();
        if bytes.len() != numel * entry.dtype.size() {
            return Err(CheckpointError::Corrupt {
                path: self.path.clone(),
                detail: format!(
                    "tensor `{name}` has {} bytes for {numel} {} values",
                    bytes.len(),
                    entry.dtype
                ),
            });
        }
        let words = bytes.chunks_exact(entry.dtype.size());
        Ok(match entry.dtype {
            StoredDtype::F32 => words
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            StoredDtype::F16 => words
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            StoredDtype::BF16 => words
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            StoredDtype::F64 => words
                .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
            other => {
                return Err(CheckpointError::Dtype {
                    path: self.path.clone(),
                    name: name.to_string(),
                    got: other.to_string(),
                    expected: "a float tensor",
                });
            }
        })
    }

    /// The tensor `name` as f32 with whatever shape it has.
    pub fn f32_any(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let shape = self
            .shape(name)
            .ok_or_else(|| CheckpointError::Missing {
                path: self.path.clone(),
                name: name.to_string(),
            })?
            .to_vec();
        let data = self.f32(name, &shape)?;
        Ok((shape, data))
    }

    /// An integer tensor (token ids, int64 buffers, 16-bit PCM) with whatever shape it has.
    pub fn i64_any(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let entry = self
            .tensors
            .get(name)
            .ok_or_else(|| CheckpointError::Missing {
                path: self.path.clone(),
                name: name.to_string(),
            })?;
        let bytes = entry
            .bytes
            .as_slice()
            .ok_or_else(|| CheckpointError::Corrupt {
                path: self.path.clone(),
                detail: format!("tensor `{name}` must be read asynchronously"),
            })?;
        let values = match entry.dtype {
            StoredDtype::I64 => bytes
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                .collect(),
            StoredDtype::I32 => bytes
                .chunks_exact(4)
                .map(|b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect(),
            StoredDtype::I16 => bytes
                .chunks_exact(2)
                .map(|b| i64::from(i16::from_le_bytes([b[0], b[1]])))
                .collect(),
            other => {
                return Err(CheckpointError::Dtype {
                    path: self.path.clone(),
                    name: name.to_string(),
                    got: other.to_string(),
                    expected: "an integer tensor",
                });
            }
        };
        Ok((entry.shape.clone(), values))
    }

    /// A view that prefixes names, e.g. `ckpt.root().pp("down_blocks").pp(0)`.
    pub fn root(&self) -> Weights<'_> {
        Weights {
            ckpt: self,
            prefix: String::new(),
        }
    }
}

/// A path into a checkpoint's names, in the style of candle's `VarBuilder::pp`.
#[derive(Clone)]
pub struct Weights<'a> {
    ckpt: &'a Checkpoint,
    prefix: String,
}

impl<'a> Weights<'a> {
    pub fn pp(&self, part: impl fmt::Display) -> Weights<'a> {
        let prefix = if self.prefix.is_empty() {
            part.to_string()
        } else {
            format!("{}.{part}", self.prefix)
        };
        Weights {
            ckpt: self.ckpt,
            prefix,
        }
    }

    /// The full name of `leaf` under this path.
    pub fn name(&self, leaf: &str) -> String {
        if self.prefix.is_empty() {
            leaf.to_string()
        } else {
            format!("{}.{leaf}", self.prefix)
        }
    }

    pub fn contains(&self, leaf: &str) -> bool {
        self.ckpt.contains(&self.name(leaf))
    }

    /// The tensor `leaf` under this path as f32, checked to have `shape`.
    pub async fn f32(&self, leaf: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.ckpt.f32_async(&self.name(leaf), shape).await
    }

    pub fn checkpoint(&self) -> &'a Checkpoint {
        self.ckpt
    }
}

fn read_safetensors(path: &Path) -> Result<Checkpoint> {
    let io = |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: the map is read-only; a file changed underneath us while mapped is the one hazard,
    // the same as for every mmap-based checkpoint reader.
    let map = Arc::new(unsafe { memmap2::Mmap::map(&file) }.map_err(io)?);
    let corrupt = |detail: String| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    check_data_ends(&map[..]).map_err(corrupt)?;
    let (header_len, meta) =
        safetensors::SafeTensors::read_metadata(&map[..]).map_err(|e| corrupt(e.to_string()))?;
    let tensors = entries(&meta, 8 + header_len, map.len() as u64, |start, end| {
        Bytes::Mapped {
            map: Arc::clone(&map),
            start: start as usize,
            end: end as usize,
        }
    })
    .map_err(corrupt)?;
    Ok(Checkpoint::from_entries(path.to_path_buf(), tensors))
}

/// The entries a safetensors header lists, each checked to lie inside a file of `file_len`
/// bytes whose data starts at `data_start`; `bytes` makes the handle of a byte range.
fn entries(
    meta: &safetensors::tensor::Metadata,
    data_start: usize,
    file_len: u64,
    bytes: impl Fn(u64, u64) -> Bytes,
) -> std::result::Result<BTreeMap<String, Entry>, String> {
    let mut tensors = BTreeMap::new();
    for (name, info) in meta.tensors() {
        let dtype = match info.dtype {
            safetensors::Dtype::F32 => StoredDtype::F32,
            safetensors::Dtype::F16 => StoredDtype::F16,
            safetensors::Dtype::BF16 => StoredDtype::BF16,
            safetensors::Dtype::F64 => StoredDtype::F64,
            safetensors::Dtype::I64 => StoredDtype::I64,
            safetensors::Dtype::I32 => StoredDtype::I32,
            safetensors::Dtype::I16 => StoredDtype::I16,
            safetensors::Dtype::U8 => StoredDtype::U8,
            safetensors::Dtype::BOOL => StoredDtype::Bool,
            other => return Err(format!("tensor `{name}` has unsupported dtype {other:?}")),
        };
        let (start, end) = info.data_offsets;
        let start = (data_start as u64).checked_add(start as u64);
        let end = (data_start as u64).checked_add(end as u64);
        let (Some(start), Some(end)) = (start, end) else {
            return Err(format!("tensor `{name}` lies past the end of the file"));
        };
        if end > file_len || start > end {
            return Err(format!("tensor `{name}` lies past the end of the file"));
        }
        tensors.insert(
            name.to_string(),
            Entry {
                dtype,
                shape: info.shape.clone(),
                bytes: bytes(start, end),
            },
        );
    }
    Ok(tensors)
}

/// A safetensors file a browser page mounted: its header was read when it was mounted, its
/// tensors are read from the Blob when they are needed.
#[cfg(target_arch = "wasm32")]
fn read_mounted_safetensors(path: &Path, blob: web_sys::Blob, header: &[u8]) -> Result<Checkpoint> {
    let corrupt = |detail: String| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let meta: safetensors::tensor::Metadata =
        serde_json::from_slice(header).map_err(|e| corrupt(format!("bad header: {e}")))?;
    let file_len = blob.size() as u64;
    let tensors = entries(&meta, 8 + header.len(), file_len, |start, end| {
        Bytes::Blob {
            blob: blob.clone(),
            start,
            end,
        }
    })
    .map_err(corrupt)?;
    Ok(Checkpoint::from_entries(path.to_path_buf(), tensors))
}

/// Refuses a header whose tensors end past the end of the file before `safetensors` sees it:
/// `read_metadata` (0.8) adds the data's end to the header's length unchecked, which panics with
/// overflow checks on when a crafted header's offsets add up to nearly 2^64. Anything else wrong
/// with the header is left for `read_metadata` to report.
fn check_data_ends(file: &[u8]) -> std::result::Result<(), String> {
    let Some(len) = file.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
        return Ok(());
    };
    let Some(header) = usize::try_from(u64::from_le_bytes(len))
        .ok()
        .and_then(|n| file.get(8..8usize.checked_add(n)?))
    else {
        return Ok(());
    };
    let Ok(entries) = serde_json::from_slice::<BTreeMap<String, serde_json::Value>>(header) else {
        return Ok(());
    };
    let room = (file.len() - 8 - header.len()) as u64;
    for (name, info) in &entries {
        let end = info.get("data_offsets").and_then(|o| o.get(1)?.as_u64());
        if end.is_some_and(|end| end > room) {
            return Err(format!("tensor `{name}` lies past the end of the file"));
        }
    }
    Ok(())
}

pub mod pickle;
