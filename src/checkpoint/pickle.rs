//! PyTorch `.bin` checkpoints: the zip archives `torch.save` has written since torch 1.6.
//!
//! Such an archive holds `<prefix>/data.pkl` (a pickle describing a dict of tensors),
//! `<prefix>/data/<key>` (the raw bytes of each storage), `<prefix>/version` and, from some
//! versions on, `<prefix>/byteorder`. The pickle is run by a small virtual machine that knows only
//! the opcodes `torch.save` emits for a state dict and resolves `GLOBAL`s against a fixed
//! allow-list of inert markers: nothing in the file is ever imported, called or instantiated. Any
//! other opcode or global is an error naming it and its byte offset.
//!
//! Tensors whose storage entry is stored uncompressed (the norm: torch writes every entry
//! uncompressed and aligned) are served straight from the memory-mapped file when contiguous;
//! non-contiguous tensors are gathered into row-major order.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io::{Cursor, Read};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use super::{Bytes, Checkpoint, CheckpointError, Entry, Result, StoredDtype};

/// The largest `data.pkl` accepted (real ones are a few hundred KB even for large models).
const MAX_PICKLE_BYTES: u64 = 32 << 20;
/// The most values the pickle machine makes (a state dict makes about 15 per tensor): with the
/// stack, the memo and every container holding only values it made, this bounds its memory.
const MAX_VALUES: usize = 4 << 20;
/// Bytes inflated from compressed storage entries, over the file's own size: real checkpoints
/// store their entries uncompressed, and float weights deflate by a few percent at most.
const MAX_INFLATION: u64 = 4;
/// The most dimensions a tensor may have.
const MAX_RANK: usize = 64;
/// A non-contiguous tensor is gathered into a new buffer of at most this many bytes, or of at most
/// its storage's size if that is larger (a zero stride could otherwise ask for any amount).
const MAX_GATHER_BYTES: usize = 256 << 20;

pub(crate) fn read(path: &Path) -> Result<Checkpoint> {
    let corrupt = |detail: String| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let io = |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len == 0 {
        return Err(corrupt("the file is empty".into()));
    }
    // SAFETY: the map is read-only; a file changed underneath us while mapped is the one hazard,
    // the same as for the safetensors reader.
    let map = Arc::new(unsafe { memmap2::Mmap::map(&file) }.map_err(io)?);
    if map.first() == Some(&0x80) {
        return Err(corrupt(
            "this is a bare pickle (the legacy format of torch.save before torch 1.6), which is not \
             supported; re-save it with a current torch or convert it to .safetensors"
                .into(),
        ));
    }
    if !map.starts_with(b"PK") {
        return Err(corrupt(
            "not a zip archive (expected a torch.save checkpoint)".into(),
        ));
    }
    let tensors = read_archive(&map).map_err(corrupt)?;
    Ok(Checkpoint::from_entries(path.to_path_buf(), tensors))
}

type Archive<'a> = zip::ZipArchive<Cursor<&'a [u8]>>;

fn read_archive(map: &Arc<memmap2::Mmap>) -> Result<BTreeMap<String, Entry>, String> {
    let mut archive = zip::ZipArchive::new(Cursor::new(&map[..]))
        .map_err(|e| format!("not a readable zip archive: {e}"))?;
    let pkl_name = find_data_pkl(&archive)?;
    let prefix = pkl_name[..pkl_name.len() - "data.pkl".len()].to_string();

    let big_endian = match read_small_entry(&mut archive, &format!("{prefix}byteorder"))? {
        None => false,
        Some(order) => match order.trim_ascii() {
            b"little" => false,
            b"big" => true,
            other => {
                return Err(format!(
                    "{prefix}byteorder says `{}`, expected `little` or `big`",
                    String::from_utf8_lossy(other)
                ));
            }
        },
    };

    let pickle = {
        let mut entry = archive
            .by_name(&pkl_name)
            .map_err(|e| format!("cannot open {pkl_name}: {e}"))?;
        if entry.size() > MAX_PICKLE_BYTES {
            return Err(format!(
                "{pkl_name} is {} bytes, more than the {MAX_PICKLE_BYTES} accepted",
                entry.size()
            ));
        }
        let mut buf = Vec::new();
        (&mut entry)
            .take(MAX_PICKLE_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(|e| format!("cannot read {pkl_name}: {e}"))?;
        if buf.len() as u64 > MAX_PICKLE_BYTES {
            return Err(format!(
                "{pkl_name} is larger than {MAX_PICKLE_BYTES} bytes"
            ));
        }
        buf
    };

    let (value, containers) = Vm::new(&pickle)
        .run()
        .map_err(|e| format!("{pkl_name}: {e}"))?;
    // Declared first, dropped last: empties what the root's own disposal leaves (cycles).
    let _containers = containers;
    let root = Disposed(value);
    let Value::Dict(dict) = &root.0 else {
        return Err(format!(
            "{pkl_name} holds a {}, expected a dict of tensors (a state dict)",
            root.0.kind()
        ));
    };
    let dict = dict
        .try_borrow()
        .map_err(|_| format!("{pkl_name}: the state dict is in use"))?;

    let mut loader = StorageLoader {
        map,
        archive: &mut archive,
        prefix: &prefix,
        big_endian,
        loaded: HashMap::new(),
        inflate_budget: (map.len() as u64)
            .saturating_mul(MAX_INFLATION)
            .saturating_add(MAX_PICKLE_BYTES),
        stored_bytes: 0,
        gathered_bytes: 0,
    };
    let mut tensors = BTreeMap::new();
    let mut skipped = 0usize;
    for (key, value) in &dict.0 {
        let Value::Str(name) = key else {
            return Err(format!(
                "the state dict has a key of type {}, expected tensor names (strings)",
                key.kind()
            ));
        };
        let Value::Tensor(tensor) = value else {
            skipped += 1;
            continue;
        };
        let entry = loader
            .tensor(tensor)
            .map_err(|e| format!("tensor `{name}`: {e}"))?;
        tensors.insert(name.to_string(), entry);
    }
    if skipped > 0 {
        tracing::debug!("{pkl_name}: ignored {skipped} state dict values that are not tensors");
    }
    Ok(tensors)
}

/// The name of the archive's `data.pkl`, at the top level or in one folder (`<prefix>/data.pkl`).
fn find_data_pkl(archive: &Archive<'_>) -> Result<String, String> {
    let mut best: Option<String> = None;
    for name in archive.file_names() {
        let Ok(name) = name else { continue };
        let depth = name.matches('/').count();
        if (name == "data.pkl" || name.ends_with("/data.pkl")) && depth <= 1 {
            let shallower = best.as_ref().is_none_or(|b| depth < b.matches('/').count());
            if shallower {
                best = Some(name.into_owned());
            }
        }
    }
    best.ok_or_else(|| {
        "the archive has no data.pkl (is this a torch.save checkpoint? TorchScript archives are \
         not supported)"
            .to_string()
    })
}

/// A small metadata entry (`byteorder`), if present.
fn read_small_entry(archive: &mut Archive<'_>, name: &str) -> Result<Option<Vec<u8>>, String> {
    let mut entry = match archive.by_name(name) {
        Ok(entry) => entry,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(format!("cannot open {name}: {e}")),
    };
    let mut buf = Vec::new();
    (&mut entry)
        .take(64)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read {name}: {e}"))?;
    Ok(Some(buf))
}

// ---------------------------------------------------------------------------------------------
// Storages and tensors

/// The element type of a storage: typed (`torch.FloatStorage`...) or raw bytes
/// (`torch.UntypedStorage`, whose tensors name their dtype in `_rebuild_tensor_v3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StorageKind {
    Typed(StoredDtype),
    Untyped,
}

struct StorageRef {
    kind: StorageKind,
    key: String,
    /// Elements of the storage's type (bytes for an untyped storage).
    numel: usize,
}

impl StorageRef {
    fn nbytes(&self) -> Option<usize> {
        let size = match self.kind {
            StorageKind::Typed(d) => d.size(),
            StorageKind::Untyped => 1,
        };
        self.numel.checked_mul(size)
    }
}

struct TensorRef {
    storage: Rc<StorageRef>,
    dtype: StoredDtype,
    /// In elements of `dtype`.
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// A storage's bytes once read: a range of the mapped file, or a buffer of their own.
#[derive(Clone)]
enum StorageBytes {
    Mapped { start: usize, len: usize },
    Owned(Arc<Vec<u8>>),
}

impl StorageBytes {
    fn len(&self) -> usize {
        match self {
            StorageBytes::Mapped { len, .. } => *len,
            StorageBytes::Owned(v) => v.len(),
        }
    }
}

struct StorageLoader<'a, 'z> {
    map: &'a Arc<memmap2::Mmap>,
    archive: &'a mut Archive<'z>,
    prefix: &'a str,
    big_endian: bool,
    loaded: HashMap<String, StorageBytes>,
    /// Bytes compressed entries may still inflate to.
    inflate_budget: u64,
    /// Bytes of the distinct storages loaded so far.
    stored_bytes: usize,
    /// Bytes gathered into new buffers for non-contiguous tensors so far: at most what the
    /// archive stores, so a small file cannot ask for the same storage over and over.
    gathered_bytes: usize,
}

impl StorageLoader<'_, '_> {
    fn storage(&mut self, storage: &StorageRef) -> Result<StorageBytes, String> {
        let nbytes = storage
            .nbytes()
            .ok_or_else(|| format!("storage `{}` has an absurd size", storage.key))?;
        if let Some(bytes) = self.loaded.get(&storage.key) {
            if bytes.len() != nbytes {
                return Err(format!(
                    "storage `{}` is declared with {nbytes} bytes here but {} bytes elsewhere",
                    storage.key,
                    bytes.len()
                ));
            }
            return Ok(bytes.clone());
        }
        let name = format!("{}data/{}", self.prefix, storage.key);
        let mut entry = match self.archive.by_name(&name) {
            Ok(entry) => entry,
            Err(zip::result::ZipError::FileNotFound) => {
                return Err(format!(
                    "its storage entry `{name}` is missing from the archive"
                ));
            }
            Err(e) => return Err(format!("cannot open {name}: {e}")),
        };
        if entry.size() < nbytes as u64 {
            return Err(format!(
                "{name} holds {} bytes, but its storage is declared with {nbytes}",
                entry.size()
            ));
        }
        let elem = match storage.kind {
            StorageKind::Typed(d) => d.size(),
            StorageKind::Untyped => 1,
        };
        let direct = entry.compression() == zip::CompressionMethod::Stored
            && !entry.encrypted()
            && !self.big_endian;
        let bytes = match entry.data_start() {
            Some(start) if direct => {
                let start = usize::try_from(start).map_err(|_| format!("{name}: bad offset"))?;
                if start
                    .checked_add(nbytes)
                    .is_none_or(|end| end > self.map.len())
                {
                    return Err(format!("{name} runs past the end of the file"));
                }
                StorageBytes::Mapped { start, len: nbytes }
            }
            _ => {
                if nbytes as u64 > self.inflate_budget {
                    return Err(format!(
                        "{name} would inflate to {nbytes} bytes, past the limit of {} times the \
                         file's size for all compressed storages together",
                        MAX_INFLATION
                    ));
                }
                self.inflate_budget -= nbytes as u64;
                let mut buf = Vec::new();
                buf.try_reserve_exact(nbytes)
                    .map_err(|_| format!("cannot allocate {nbytes} bytes for {name}"))?;
                (&mut entry)
                    .take(nbytes as u64)
                    .read_to_end(&mut buf)
                    .map_err(|e| format!("cannot read {name}: {e}"))?;
                if buf.len() != nbytes {
                    return Err(format!(
                        "{name} ended after {} of {nbytes} bytes",
                        buf.len()
                    ));
                }
                if self.big_endian && elem > 1 {
                    for word in buf.chunks_exact_mut(elem) {
                        word.reverse();
                    }
                }
                StorageBytes::Owned(Arc::new(buf))
            }
        };
        self.stored_bytes = self.stored_bytes.saturating_add(nbytes);
        self.loaded.insert(storage.key.clone(), bytes.clone());
        Ok(bytes)
    }

    fn tensor(&mut self, t: &TensorRef) -> Result<Entry, String> {
        let elem = t.dtype.size();
        let numel = t
            .size
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| format!("its size {:?} is absurd", t.size))?;
        let nbytes = numel
            .checked_mul(elem)
            .ok_or_else(|| format!("its size {:?} is absurd", t.size))?;
        let storage = self.storage(&t.storage)?;
        if numel == 0 {
            return Ok(Entry {
                dtype: t.dtype,
                shape: t.size.clone(),
                bytes: Bytes::owned(Vec::new()),
            });
        }
        // The furthest element the view reaches, and whether it lies inside the storage.
        let last = t
            .size
            .iter()
            .zip(&t.stride)
            .try_fold(t.offset, |acc, (&d, &s)| {
                (d - 1).checked_mul(s).and_then(|x| acc.checked_add(x))
            })
            .ok_or_else(|| "its offset/size/stride reach past any storage".to_string())?;
        let reach = last
            .checked_add(1)
            .and_then(|n| n.checked_mul(elem))
            .ok_or_else(|| "its offset/size/stride reach past any storage".to_string())?;
        if reach > storage.len() {
            return Err(format!(
                "offset {} with size {:?} and stride {:?} needs {reach} bytes, but storage `{}` \
                 holds {}",
                t.offset,
                t.size,
                t.stride,
                t.storage.key,
                storage.len()
            ));
        }
        let start = t.offset * elem; // <= reach, no overflow
        let bytes = if is_contiguous(&t.size, &t.stride) {
            match storage {
                StorageBytes::Mapped { start: base, .. } => Bytes::Mapped {
                    map: Arc::clone(self.map),
                    start: base + start,
                    end: base + start + nbytes,
                },
                StorageBytes::Owned(buf) => Bytes::Owned {
                    buf,
                    start,
                    end: start + nbytes,
                },
            }
        } else {
            let gathered = self.gathered_bytes.saturating_add(nbytes);
            if gathered > self.stored_bytes.max(MAX_GATHER_BYTES) {
                return Err(format!(
                    "it is non-contiguous and would bring the bytes copied out of storages to \
                     {gathered}, more than the {} the archive's storages hold",
                    self.stored_bytes
                ));
            }
            self.gathered_bytes = gathered;
            if nbytes > MAX_GATHER_BYTES.max(storage.len()) {
                return Err(format!(
                    "it is non-contiguous (size {:?}, stride {:?}) and would need {nbytes} bytes \
                     from a storage of {}",
                    t.size,
                    t.stride,
                    storage.len()
                ));
            }
            let src: &[u8] = match &storage {
                StorageBytes::Mapped { start, len } => self
                    .map
                    .get(*start..*start + *len)
                    .ok_or_else(|| "its storage lies outside the file".to_string())?,
                StorageBytes::Owned(buf) => buf,
            };
            Bytes::owned(gather(src, elem, t.offset, &t.size, &t.stride, nbytes)?)
        };
        Ok(Entry {
            dtype: t.dtype,
            shape: t.size.clone(),
            bytes,
        })
    }
}

/// Row-major contiguity, ignoring the strides of dimensions of size 1 (as torch does).
fn is_contiguous(size: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1usize;
    for (&d, &s) in size.iter().zip(stride).rev() {
        if d != 1 && s != expected {
            return false;
        }
        expected = expected.saturating_mul(d);
    }
    true
}

/// Copies a strided view into row-major order. The caller has checked that every element the view
/// reaches lies inside `src`.
fn gather(
    src: &[u8],
    elem: usize,
    offset: usize,
    size: &[usize],
    stride: &[usize],
    nbytes: usize,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    out.try_reserve_exact(nbytes)
        .map_err(|_| format!("cannot allocate {nbytes} bytes"))?;
    let mut index = vec![0usize; size.len()];
    let mut at = offset;
    while out.len() < nbytes {
        let word = src
            .get(at * elem..(at + 1) * elem)
            .ok_or_else(|| "a strided element lies outside its storage".to_string())?;
        out.extend_from_slice(word);
        // Advance the odometer, last dimension fastest.
        // (Every partial sum stays within `offset + sum((size - 1) * stride)`, checked.)
        for dim in (0..size.len()).rev() {
            if index[dim] + 1 < size[dim] {
                index[dim] += 1;
                at += stride[dim];
                break;
            }
            at -= stride[dim] * index[dim];
            index[dim] = 0;
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The pickle machine

/// The globals a checkpoint may name. They are markers only: REDUCE on one runs the matching
/// Rust code below, which builds plain data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildTensorV3,
    RebuildParameter,
    RebuildParameterWithState,
    RebuildFromTypeV2,
    /// `torch.Tensor` or `torch.nn.parameter.Parameter`, as the type argument of
    /// `_rebuild_from_type_v2`.
    TensorType,
    Storage(StorageKind),
    Dtype(StoredDtype),
    /// A torch storage type or dtype this reader knows but cannot represent (e.g. int16).
    Unsupported(&'static str),
}

fn resolve_global(module: &str, name: &str) -> Option<Global> {
    use StoredDtype::*;
    let storage = |name: &str| -> Option<Global> {
        Some(match name {
            "FloatStorage" => Global::Storage(StorageKind::Typed(F32)),
            "HalfStorage" => Global::Storage(StorageKind::Typed(F16)),
            "BFloat16Storage" => Global::Storage(StorageKind::Typed(BF16)),
            "DoubleStorage" => Global::Storage(StorageKind::Typed(F64)),
            "LongStorage" => Global::Storage(StorageKind::Typed(I64)),
            "IntStorage" => Global::Storage(StorageKind::Typed(I32)),
            "ByteStorage" => Global::Storage(StorageKind::Typed(U8)),
            "BoolStorage" => Global::Storage(StorageKind::Typed(Bool)),
            "ShortStorage" => Global::Unsupported("torch.ShortStorage (int16)"),
            "CharStorage" => Global::Unsupported("torch.CharStorage (int8)"),
            "ComplexFloatStorage" => Global::Unsupported("torch.ComplexFloatStorage"),
            "ComplexDoubleStorage" => Global::Unsupported("torch.ComplexDoubleStorage"),
            _ => return None,
        })
    };
    Some(match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_tensor_v3") => Global::RebuildTensorV3,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
        ("torch._tensor", "_rebuild_from_type_v2") => Global::RebuildFromTypeV2,
        ("torch", "Tensor") | ("torch.nn.parameter", "Parameter") => Global::TensorType,
        ("torch" | "torch.storage", "UntypedStorage") => Global::Storage(StorageKind::Untyped),
        ("torch" | "torch.cuda", n) if n.ends_with("Storage") => storage(n)?,
        ("torch", "float32" | "float") => Global::Dtype(F32),
        ("torch", "float16" | "half") => Global::Dtype(F16),
        ("torch", "bfloat16") => Global::Dtype(BF16),
        ("torch", "float64" | "double") => Global::Dtype(F64),
        ("torch", "int64" | "long") => Global::Dtype(I64),
        ("torch", "int32" | "int") => Global::Dtype(I32),
        ("torch", "uint8") => Global::Dtype(U8),
        ("torch", "bool") => Global::Dtype(Bool),
        ("torch", "int16" | "short") => Global::Unsupported("torch.int16"),
        ("torch", "int8") => Global::Unsupported("torch.int8"),
        ("torch", "uint16") => Global::Unsupported("torch.uint16"),
        ("torch", "uint32") => Global::Unsupported("torch.uint32"),
        ("torch", "uint64") => Global::Unsupported("torch.uint64"),
        _ => return None,
    })
}

/// A sequence (tuple or list). Dropping one never recurses (see [`dispose`]), so a deeply nested
/// value from a hostile pickle cannot overflow the stack.
#[derive(Default)]
struct Seq(Vec<Value>);

/// A dict's items in insertion order (duplicates resolved when the state dict is read: last wins).
#[derive(Default)]
struct Map(Vec<(Value, Value)>);

impl Drop for Seq {
    fn drop(&mut self) {
        dispose(std::mem::take(&mut self.0));
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        let items = std::mem::take(&mut self.0);
        dispose(items.into_iter().flat_map(|(k, v)| [k, v]).collect());
    }
}

/// Drops values iteratively: a container whose last reference this is has its items moved onto
/// the work list before it is dropped (empty), so nesting depth never becomes call depth.
fn dispose(mut work: Vec<Value>) {
    while let Some(value) = work.pop() {
        match value {
            // `try_unwrap`, not `get_mut`: the weak references of `Containers` must not keep
            // a last owner from taking the items.
            Value::Tuple(rc) => {
                if let Ok(mut seq) = Rc::try_unwrap(rc) {
                    work.append(&mut seq.0);
                }
            }
            Value::List(rc) => {
                if let Ok(cell) = Rc::try_unwrap(rc) {
                    work.append(&mut cell.into_inner().0);
                }
            }
            Value::Dict(rc) => {
                if let Ok(cell) = Rc::try_unwrap(rc) {
                    for (k, v) in cell.into_inner().0.drain(..) {
                        work.push(k);
                        work.push(v);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Every list and dict a pickle made, so that they can all be emptied at the end: a list or dict
/// can be made to hold itself (APPEND after DUP), and reference counting alone would leak such a
/// cycle. Emptying them (what this does on drop) breaks every cycle; the values that are not in
/// one are dropped as usual.
#[derive(Default)]
struct Containers(Vec<Container>);

enum Container {
    List(std::rc::Weak<RefCell<Seq>>),
    Dict(std::rc::Weak<RefCell<Map>>),
}

impl Containers {
    fn register(&mut self, value: &Value) {
        match value {
            Value::List(rc) => self.0.push(Container::List(Rc::downgrade(rc))),
            Value::Dict(rc) => self.0.push(Container::Dict(Rc::downgrade(rc))),
            _ => {}
        }
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        for container in self.0.drain(..) {
            let items = match container {
                Container::List(weak) => weak.upgrade().and_then(|rc| {
                    rc.try_borrow_mut()
                        .ok()
                        .map(|mut seq| std::mem::take(&mut seq.0))
                }),
                Container::Dict(weak) => weak.upgrade().and_then(|rc| {
                    rc.try_borrow_mut().ok().map(|mut map| {
                        std::mem::take(&mut map.0)
                            .into_iter()
                            .flat_map(|(k, v)| [k, v])
                            .collect()
                    })
                }),
            };
            if let Some(items) = items {
                dispose(items);
            }
        }
    }
}

/// Drops its value with [`dispose`].
struct Disposed(Value);

impl Drop for Disposed {
    fn drop(&mut self) {
        dispose(vec![std::mem::replace(&mut self.0, Value::None)]);
    }
}

#[derive(Clone)]
enum Value {
    None,
    Bool,
    Int(i64),
    Float,
    Str(Rc<str>),
    Bytes,
    Tuple(Rc<Seq>),
    List(Rc<RefCell<Seq>>),
    Dict(Rc<RefCell<Map>>),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool => "bool",
            Value::Int(_) => "int",
            Value::Float => "float",
            Value::Str(_) => "str",
            Value::Bytes => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }

    fn tuple(items: Vec<Value>) -> Value {
        Value::Tuple(Rc::new(Seq(items)))
    }
}

/// Every pickle opcode's name, for error messages.
fn opcode_name(op: u8) -> Option<&'static str> {
    Some(match op {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => return None,
    })
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    /// Where the opcode being run starts, for error messages.
    op_at: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    /// Values pushed so far (see [`MAX_VALUES`]).
    made: usize,
    /// Every list and dict made; emptied when the VM is dropped, unless [`Vm::run`] hands them
    /// to its caller with the result.
    containers: Containers,
}

impl Drop for Vm<'_> {
    fn drop(&mut self) {
        let mut all = std::mem::take(&mut self.stack);
        all.extend(self.memo.drain().map(|(_, v)| v));
        dispose(all);
    }
}

type Step<T> = std::result::Result<T, String>;

impl<'a> Vm<'a> {
    fn new(data: &'a [u8]) -> Self {
        Vm {
            data,
            pos: 0,
            op_at: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            made: 0,
            containers: Containers::default(),
        }
    }

    /// Runs to STOP: the value it returns, and every list and dict made (to be dropped after the
    /// value).
    fn run(mut self) -> Step<(Value, Containers)> {
        loop {
            self.op_at = self.pos;
            let Some(&op) = self.data.get(self.pos) else {
                return Err(format!(
                    "the pickle ends at byte {} without a STOP opcode",
                    self.pos
                ));
            };
            self.pos += 1;
            if op == b'.' {
                let value = self
                    .pop()
                    .map_err(|e| format!("byte {} (STOP): {e}", self.op_at))?;
                return Ok((value, std::mem::take(&mut self.containers)));
            }
            self.step(op).map_err(|e| {
                let name = opcode_name(op).unwrap_or("unknown opcode");
                format!("byte {} ({name}, 0x{op:02x}): {e}", self.op_at)
            })?;
        }
    }

    fn step(&mut self, op: u8) -> Step<()> {
        match op {
            0x80 => {
                let proto = self.take(1)?[0];
                if !(2..=5).contains(&proto) {
                    return Err(format!("pickle protocol {proto} is not supported"));
                }
            }
            0x95 => {
                // FRAME: a length prefix for buffering; the data is read whole anyway.
                self.take(8)?;
            }
            b'(' => {
                self.count()?;
                self.marks.push(self.stack.len());
            }
            b'}' => self.push(Value::Dict(Rc::default()))?,
            b']' => self.push(Value::List(Rc::default()))?,
            b')' => self.push(Value::tuple(Vec::new()))?,
            b't' => {
                let items = self.pop_mark()?;
                self.push(Value::tuple(items))?;
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let at = self
                    .stack
                    .len()
                    .checked_sub(n)
                    .filter(|&at| at >= self.floor())
                    .ok_or("stack underflow")?;
                let items = self.stack.split_off(at);
                self.push(Value::tuple(items))?;
            }
            b'X' => {
                let n = self.len_u32()?;
                self.push_str(n)?;
            }
            0x8c => {
                let n = usize::from(self.take(1)?[0]);
                self.push_str(n)?;
            }
            0x8d => {
                let n = self.len_u64()?;
                self.push_str(n)?;
            }
            b'T' => {
                let n = self.take(4)?;
                let n = i32::from_le_bytes([n[0], n[1], n[2], n[3]]);
                let n = usize::try_from(n).map_err(|_| "negative string length")?;
                self.push_str(n)?;
            }
            b'U' => {
                let n = usize::from(self.take(1)?[0]);
                self.push_str(n)?;
            }
            b'C' => {
                let n = usize::from(self.take(1)?[0]);
                self.push_bytes(n)?;
            }
            b'B' => {
                let n = self.len_u32()?;
                self.push_bytes(n)?;
            }
            0x8e => {
                let n = self.len_u64()?;
                self.push_bytes(n)?;
            }
            b'J' => {
                let b = self.take(4)?;
                let v = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                self.push(Value::Int(i64::from(v)))?;
            }
            b'K' => {
                let v = self.take(1)?[0];
                self.push(Value::Int(i64::from(v)))?;
            }
            b'M' => {
                let b = self.take(2)?;
                self.push(Value::Int(i64::from(u16::from_le_bytes([b[0], b[1]]))))?;
            }
            0x8a => {
                let n = usize::from(self.take(1)?[0]);
                let b = self.take(n)?;
                if n > 8 {
                    return Err(format!("a {n}-byte integer does not fit in 64 bits"));
                }
                // Little-endian two's complement, sign-extended from its top byte.
                let fill = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                    0xff
                } else {
                    0
                };
                let mut word = [fill; 8];
                word[..n].copy_from_slice(b);
                self.push(Value::Int(i64::from_le_bytes(word)))?;
            }
            b'G' => {
                self.take(8)?;
                self.push(Value::Float)?;
            }
            b'N' => self.push(Value::None)?,
            0x88 | 0x89 => self.push(Value::Bool)?,
            b'q' => {
                let i = u32::from(self.take(1)?[0]);
                self.put(i)?;
            }
            b'r' => {
                let i = self.u32()?;
                self.put(i)?;
            }
            0x94 => {
                let i = u32::try_from(self.memo.len()).map_err(|_| "memo overflow")?;
                self.put(i)?;
            }
            b'h' => {
                let i = u32::from(self.take(1)?[0]);
                self.get(i)?;
            }
            b'j' => {
                let i = self.u32()?;
                self.get(i)?;
            }
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                let global = global(&module, &name)?;
                self.push(Value::Global(global))?;
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Value::Str(module), Value::Str(name)) = (&module, &name) else {
                    return Err(format!(
                        "module and name must be strings, not {} and {}",
                        module.kind(),
                        name.kind()
                    ));
                };
                let global = global(module, name)?;
                self.push(Value::Global(global))?;
            }
            b'R' => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let Value::Global(callable) = callable else {
                    return Err(format!("cannot call a {}", callable.kind()));
                };
                let Value::Tuple(args) = args else {
                    return Err(format!("the arguments are a {}, not a tuple", args.kind()));
                };
                let value = reduce(callable, &args.0)?;
                self.push(value)?;
            }
            b'b' => {
                let _state = self.pop()?;
                match self.top()? {
                    // OrderedDict's state is its `__dict__` (`_metadata` for state dicts): not
                    // needed, and not applied.
                    Value::Dict(_) => {}
                    other => return Err(format!("BUILD on a {} is not allowed", other.kind())),
                }
            }
            b's' => {
                let value = self.pop()?;
                let key = self.pop()?;
                self.dict_top()?.0.push((key, value));
            }
            b'u' => {
                let items = self.pop_mark()?;
                if items.len() % 2 != 0 {
                    return Err("an odd number of items".into());
                }
                let mut pairs = Vec::with_capacity(items.len() / 2);
                let mut items = items.into_iter();
                while let (Some(k), Some(v)) = (items.next(), items.next()) {
                    pairs.push((k, v));
                }
                self.dict_top()?.0.append(&mut pairs);
            }
            b'a' => {
                let value = self.pop()?;
                self.list_top()?.0.push(value);
            }
            b'e' => {
                let mut items = self.pop_mark()?;
                self.list_top()?.0.append(&mut items);
            }
            b'Q' => {
                let pid = self.pop()?;
                let storage = persistent_load(&pid)?;
                self.push(Value::Storage(Rc::new(storage)))?;
            }
            _ => {
                return Err(match opcode_name(op) {
                    Some(_) => "this opcode is not allowed in a checkpoint (only the opcodes \
                                torch.save uses for a dict of tensors are accepted)"
                        .into(),
                    None => "not a pickle opcode".into(),
                });
            }
        }
        Ok(())
    }

    fn take(&mut self, n: usize) -> Step<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.data.len())
            .ok_or_else(|| {
                format!(
                    "needs {n} bytes, but the pickle ends {} bytes on",
                    self.data.len() - self.pos
                )
            })?;
        let data: &'a [u8] = self.data;
        let bytes = &data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u32(&mut self) -> Step<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn len_u32(&mut self) -> Step<usize> {
        usize::try_from(self.u32()?).map_err(|_| "length overflow".into())
    }

    fn len_u64(&mut self) -> Step<usize> {
        let b = self.take(8)?;
        let mut word = [0u8; 8];
        word.copy_from_slice(b);
        usize::try_from(u64::from_le_bytes(word)).map_err(|_| "length overflow".into())
    }

    /// A newline-terminated line (GLOBAL's arguments).
    fn line(&mut self) -> Step<String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .take(256)
            .position(|&b| b == b'\n')
            .ok_or("a GLOBAL name without a newline within 256 bytes")?;
        let line = std::str::from_utf8(&rest[..n])
            .map_err(|_| "a GLOBAL name that is not UTF-8")?
            .to_string();
        self.pos += n + 1;
        Ok(line)
    }

    fn push_str(&mut self, n: usize) -> Step<()> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).map_err(|_| "a string that is not UTF-8")?;
        self.push(Value::Str(Rc::from(s)))?;
        Ok(())
    }

    fn push_bytes(&mut self, n: usize) -> Step<()> {
        self.take(n)?;
        self.push(Value::Bytes)?;
        Ok(())
    }

    fn push(&mut self, v: Value) -> Step<()> {
        self.count()?;
        self.containers.register(&v);
        self.stack.push(v);
        Ok(())
    }

    /// Counts one more value (or MARK) against [`MAX_VALUES`].
    fn count(&mut self) -> Step<()> {
        self.made += 1;
        if self.made > MAX_VALUES {
            return Err(format!(
                "the pickle makes more than {MAX_VALUES} values (a state dict makes about 15 a \
                 tensor)"
            ));
        }
        Ok(())
    }

    /// The lowest stack index the current MARK frame may touch.
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Step<Value> {
        if self.stack.len() <= self.floor() {
            return Err("stack underflow".into());
        }
        self.stack.pop().ok_or_else(|| "stack underflow".into())
    }

    fn top(&self) -> Step<&Value> {
        if self.stack.len() <= self.floor() {
            return Err("stack underflow".into());
        }
        self.stack.last().ok_or_else(|| "stack underflow".into())
    }

    fn pop_mark(&mut self) -> Step<Vec<Value>> {
        let mark = self.marks.pop().ok_or("no MARK to pop to")?;
        if mark > self.stack.len() {
            return Err("stack underflow".into());
        }
        Ok(self.stack.split_off(mark))
    }

    fn put(&mut self, i: u32) -> Step<()> {
        // A memo entry costs memory like a value.
        self.count()?;
        let v = self.top()?.clone();
        if let Some(old) = self.memo.insert(i, v) {
            dispose(vec![old]);
        }
        Ok(())
    }

    fn get(&mut self, i: u32) -> Step<()> {
        let v = self
            .memo
            .get(&i)
            .ok_or_else(|| format!("memo entry {i} was never stored"))?
            .clone();
        self.push(v)?;
        Ok(())
    }

    fn dict_top(&self) -> Step<std::cell::RefMut<'_, Map>> {
        match self.top()? {
            Value::Dict(d) => d
                .try_borrow_mut()
                .map_err(|_| "the dict is already in use".into()),
            other => Err(format!("setting items on a {}", other.kind())),
        }
    }

    fn list_top(&self) -> Step<std::cell::RefMut<'_, Seq>> {
        match self.top()? {
            Value::List(l) => l
                .try_borrow_mut()
                .map_err(|_| "the list is already in use".into()),
            other => Err(format!("appending to a {}", other.kind())),
        }
    }
}

fn global(module: &str, name: &str) -> Step<Global> {
    resolve_global(module, name).ok_or_else(|| {
        format!(
            "global `{module}.{name}` is not on the allow-list (this reader never imports or calls \
             anything named in a checkpoint; it accepts only collections.OrderedDict and the torch \
             tensor/storage rebuild functions)"
        )
    })
}

/// `persistent_load` of torch's zip format: `('storage', <storage type>, key, location, numel)`.
fn persistent_load(pid: &Value) -> Step<StorageRef> {
    let Value::Tuple(pid) = pid else {
        return Err(format!(
            "a persistent id that is a {}, not a tuple",
            pid.kind()
        ));
    };
    let [tag, kind, key, location, numel] = pid.0.as_slice() else {
        return Err(format!(
            "a persistent id of {} items, expected ('storage', type, key, location, numel)",
            pid.0.len()
        ));
    };
    if !matches!(tag, Value::Str(s) if &**s == "storage") {
        return Err("a persistent id that is not a storage".into());
    }
    let kind = match kind {
        Value::Global(Global::Storage(kind)) => *kind,
        Value::Global(Global::Unsupported(what)) => {
            return Err(format!("{what} tensors are not supported"));
        }
        other => return Err(format!("a storage type that is a {}", other.kind())),
    };
    let key = match key {
        Value::Str(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        other => return Err(format!("a storage key that is a {}", other.kind())),
    };
    if !matches!(location, Value::Str(_)) {
        return Err(format!("a storage location that is a {}", location.kind()));
    }
    let numel = usize_of(numel, "storage size")?;
    Ok(StorageRef { kind, key, numel })
}

fn usize_of(v: &Value, what: &str) -> Step<usize> {
    match v {
        Value::Int(i) => usize::try_from(*i).map_err(|_| format!("a negative {what} ({i})")),
        other => Err(format!("a {what} that is a {}", other.kind())),
    }
}

fn usizes_of(v: &Value, what: &str) -> Step<Vec<usize>> {
    let Value::Tuple(items) = v else {
        return Err(format!("a {what} that is a {}, not a tuple", v.kind()));
    };
    if items.0.len() > MAX_RANK {
        return Err(format!("a {what} of {} dimensions", items.0.len()));
    }
    items.0.iter().map(|x| usize_of(x, what)).collect()
}

/// REDUCE: the allowed calls, each building plain data.
fn reduce(callable: Global, args: &[Value]) -> Step<Value> {
    match callable {
        Global::OrderedDict => {
            if !args.is_empty() {
                return Err("collections.OrderedDict called with arguments".into());
            }
            Ok(Value::Dict(Rc::default()))
        }
        Global::RebuildTensorV2 | Global::RebuildTensorV3 => rebuild_tensor(callable, args),
        Global::RebuildParameter | Global::RebuildParameterWithState => {
            let n = if callable == Global::RebuildParameter {
                3
            } else {
                4
            };
            if args.len() != n {
                return Err(format!("_rebuild_parameter with {} arguments", args.len()));
            }
            match &args[0] {
                Value::Tensor(t) => Ok(Value::Tensor(Rc::clone(t))),
                other => Err(format!("_rebuild_parameter of a {}", other.kind())),
            }
        }
        Global::RebuildFromTypeV2 => {
            let [func, ty, inner, _state] = args else {
                return Err(format!(
                    "_rebuild_from_type_v2 with {} arguments",
                    args.len()
                ));
            };
            let func = match func {
                Value::Global(
                    g @ (Global::RebuildTensorV2
                    | Global::RebuildTensorV3
                    | Global::RebuildParameter
                    | Global::RebuildParameterWithState),
                ) => *g,
                other => {
                    return Err(format!(
                        "_rebuild_from_type_v2 of a {} (expected a tensor rebuild function)",
                        other.kind()
                    ));
                }
            };
            if !matches!(ty, Value::Global(Global::TensorType)) {
                return Err("_rebuild_from_type_v2 to a type other than torch.Tensor".into());
            }
            let Value::Tuple(inner) = inner else {
                return Err("_rebuild_from_type_v2 with arguments that are not a tuple".into());
            };
            reduce(func, &inner.0)
        }
        Global::Unsupported(what) => Err(format!("{what} is not supported")),
        other => Err(format!("{other:?} cannot be called")),
    }
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks
/// [, metadata])` or `_rebuild_tensor_v3(..., backward_hooks, dtype[, metadata])`.
fn rebuild_tensor(callable: Global, args: &[Value]) -> Step<Value> {
    let v3 = callable == Global::RebuildTensorV3;
    let fixed = if v3 { 7 } else { 6 };
    if args.len() != fixed && args.len() != fixed + 1 {
        return Err(format!(
            "{} with {} arguments",
            if v3 {
                "_rebuild_tensor_v3"
            } else {
                "_rebuild_tensor_v2"
            },
            args.len()
        ));
    }
    let Value::Storage(storage) = &args[0] else {
        return Err(format!("a tensor whose storage is a {}", args[0].kind()));
    };
    let offset = usize_of(&args[1], "storage offset")?;
    let size = usizes_of(&args[2], "size")?;
    let stride = usizes_of(&args[3], "stride")?;
    if size.len() != stride.len() {
        return Err(format!("a tensor with size {size:?} but stride {stride:?}"));
    }
    if !matches!(args[4], Value::Bool) {
        return Err(format!("requires_grad is a {}", args[4].kind()));
    }
    let dtype = match (v3, storage.kind) {
        (false, StorageKind::Typed(d)) => d,
        (false, StorageKind::Untyped) => {
            return Err("_rebuild_tensor_v2 on an untyped storage (its dtype is unknown)".into());
        }
        (true, kind) => {
            let dtype = match &args[6] {
                Value::Global(Global::Dtype(d)) => *d,
                Value::Global(Global::Unsupported(what)) => {
                    return Err(format!("{what} tensors are not supported"));
                }
                other => return Err(format!("a dtype that is a {}", other.kind())),
            };
            if kind != StorageKind::Untyped && kind != StorageKind::Typed(StoredDtype::U8) {
                return Err("_rebuild_tensor_v3 on a typed storage".into());
            }
            dtype
        }
    };
    // A v3 tensor views raw bytes: express its storage in elements of its dtype.
    let storage = if v3 {
        Rc::new(StorageRef {
            kind: StorageKind::Typed(dtype),
            key: storage.key.clone(),
            numel: storage.numel / dtype.size(),
        })
    } else {
        Rc::clone(storage)
    };
    Ok(Value::Tensor(Rc::new(TensorRef {
        storage,
        dtype,
        offset,
        size,
        stride,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A list that holds itself and a dict that holds itself are freed once the value and the
    /// containers are dropped (found leaking by the `pickle_data_pkl` fuzz target).
    #[test]
    fn self_referencing_containers_are_freed() {
        // EMPTY_LIST, BINPUT 0, BINGET 0, APPEND: l.append(l).
        let list = [0x80, 2, b']', b'q', 0, b'h', 0, b'a', b'.'];
        // EMPTY_DICT, BINPUT 0, 'k', BINGET 0, SETITEM: d['k'] = d.
        let dict = [
            0x80, 2, b'}', b'q', 0, b'X', 1, 0, 0, 0, b'k', b'h', 0, b's', b'.',
        ];
        let (value, containers) = Vm::new(&list).run().expect("runs");
        let Value::List(rc) = &value else {
            panic!("a list, got {}", value.kind())
        };
        let weak = Rc::downgrade(rc);
        drop(Disposed(value));
        assert!(
            weak.upgrade().is_some(),
            "held by its own cycle until emptied"
        );
        drop(containers);
        assert!(weak.upgrade().is_none(), "the list leaked");

        let (value, containers) = Vm::new(&dict).run().expect("runs");
        let Value::Dict(rc) = &value else {
            panic!("a dict, got {}", value.kind())
        };
        let weak = Rc::downgrade(rc);
        drop(containers);
        drop(Disposed(value));
        assert!(weak.upgrade().is_none(), "the dict leaked");
    }
}
