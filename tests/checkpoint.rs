//! Checkpoint loading: the `.bin` (torch.save zip pickle) reader against the safetensors one, and
//! every way a missing, truncated, corrupt or hostile file can fail: always an `Err` that says
//! what is wrong, never a panic, and never anything run from the file.
//!
//! `tests/fixtures/pickle/mixed.bin` and `mixed_p4.bin` (protocol 4) were written with the pinned
//! torch of `scripts/reference` (`/root/ref-venv`) by:
//!
//! ```python
//! import collections, torch
//! base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
//! sd = collections.OrderedDict()
//! sd["position_ids"] = torch.arange(8, dtype=torch.int64).reshape(1, 8)
//! sd["half"] = torch.tensor([[1.5, -2.25, 65504.0], [0.0, 0.125, -0.5]], dtype=torch.float16)
//! sd["bf16"] = torch.tensor([1.0, -3.5, 256.0], dtype=torch.bfloat16)
//! sd["f64"] = torch.tensor([0.1, 2.0], dtype=torch.float64)
//! sd["int32"] = torch.tensor([-7, 3], dtype=torch.int32)
//! sd["base"] = base
//! sd["transposed"] = base.t()
//! sd["row"] = base[1]
//! sd["column"] = base[:, 2]
//! sd["expanded"] = torch.tensor([1.0, 2.0]).expand(3, 2)
//! sd["scalar"] = torch.tensor(3.25)
//! sd["empty"] = torch.zeros(0, 3)
//! sd["flags"] = torch.tensor([True, False, True])
//! sd["param"] = torch.nn.Parameter(torch.tensor([0.5, -0.5]))
//! t = torch.tensor([4.0, 5.0]); t.note = "python state"
//! sd["with_attr"] = t
//! sd._metadata = collections.OrderedDict([("", {"version": 1})])
//! torch.save(sd, "mixed.bin")
//! torch.save(sd, "mixed_p4.bin", pickle_protocol=4)
//! ```

use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};

use audioldm::checkpoint::{Checkpoint, CheckpointError, StoredDtype};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A fresh folder for one test's generated files, under `target/tmp`.
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("checkpoint")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write scratch file");
    path
}

/// Opens `bytes` written as `dir/name` and expects an error, which it prints and returns as text.
fn open_err(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = write(dir, name, bytes);
    match Checkpoint::open(&path) {
        Ok(ckpt) => panic!(
            "{name}: expected an error, got a checkpoint of {} tensors",
            ckpt.len()
        ),
        Err(e) => {
            println!("{name}: {e}");
            e.to_string()
        }
    }
}

/// Opens `bytes` as a new file (rewriting one file is slow on some filesystems), reads every
/// tensor it yields, and removes it. Returns whether it opened.
fn open_and_read_all(dir: &Path, serial: usize, bytes: &[u8]) -> bool {
    let path = write(dir, &format!("{serial}.bin"), bytes);
    let opened = match Checkpoint::open(&path) {
        Ok(ckpt) => {
            for name in ckpt.names() {
                let _ = ckpt.f32_any(name);
                let _ = ckpt.i64_any(name);
            }
            true
        }
        Err(_) => false,
    };
    let _ = std::fs::remove_file(&path);
    opened
}

fn assert_contains(err: &str, needles: &[&str]) {
    for needle in needles {
        assert!(err.contains(needle), "`{needle}` not in: {err}");
    }
}

// ------------------------------------------------------------------------------------------------
// Zip and pickle builders for hand-made `.bin` files

/// The entries of a zip archive, in order.
fn unzip(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).expect("a zip");
    (0..archive.len())
        .map(|i| {
            let mut entry = archive.by_index(i).expect("an entry");
            let mut data = Vec::new();
            entry.read_to_end(&mut data).expect("entry data");
            (entry.name().expect("a name").to_string(), data)
        })
        .collect()
}

fn zip_with(entries: &[(String, Vec<u8>)], method: zip::CompressionMethod) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, data) in entries {
        w.start_file(name.as_str(), options).expect("start entry");
        w.write_all(data).expect("write entry");
    }
    w.finish().expect("finish zip").into_inner()
}

fn zip_stored(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    zip_with(entries, zip::CompressionMethod::Stored)
}

/// A torch.save-style archive: `archive/data.pkl`, `archive/data/<key>`, `archive/version`.
fn torch_zip(pickle: &[u8], storages: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut entries = vec![("archive/data.pkl".to_string(), pickle.to_vec())];
    for (key, data) in storages {
        entries.push((format!("archive/data/{key}"), data.clone()));
    }
    entries.push(("archive/version".into(), b"3\n".to_vec()));
    zip_stored(&entries)
}

/// Protocol-2 pickle bytes, built opcode by opcode.
struct Pickle(Vec<u8>);

impl Pickle {
    fn new() -> Self {
        Pickle(vec![0x80, 2])
    }
    fn op(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }
    fn mark(self) -> Self {
        self.op(b"(")
    }
    fn tuple(self) -> Self {
        self.op(b"t")
    }
    fn global(self, module: &str, name: &str) -> Self {
        self.op(format!("c{module}\n{name}\n").as_bytes())
    }
    fn str(self, s: &str) -> Self {
        let len = (s.len() as u32).to_le_bytes();
        self.op(b"X").op(&len).op(s.as_bytes())
    }
    fn int(self, i: i64) -> Self {
        match i32::try_from(i) {
            Ok(small) => self.op(b"J").op(&small.to_le_bytes()),
            Err(_) => self.op(&[0x8a, 8]).op(&i.to_le_bytes()),
        }
    }
    fn ints(self, values: &[i64]) -> Self {
        values.iter().fold(self.mark(), |p, &v| p.int(v)).tuple()
    }
    /// `_rebuild_tensor_v2(('storage', torch.<ty>, key, 'cpu', numel), offset, size, stride,
    /// False, OrderedDict())`.
    fn tensor(
        self,
        ty: &str,
        key: &str,
        numel: i64,
        offset: i64,
        size: &[i64],
        stride: &[i64],
    ) -> Self {
        self.global("torch._utils", "_rebuild_tensor_v2")
            .mark()
            .mark()
            .str("storage")
            .global("torch", ty)
            .str(key)
            .str("cpu")
            .int(numel)
            .tuple()
            .op(b"Q")
            .int(offset)
            .ints(size)
            .ints(stride)
            .op(&[0x89])
            .global("collections", "OrderedDict")
            .op(b")R")
            .tuple()
            .op(b"R")
    }
    fn stop(self) -> Vec<u8> {
        self.op(b".").0
    }
}

/// A state dict of one f32 tensor `w` viewing storage `0`.
fn one_tensor(numel: i64, offset: i64, size: &[i64], stride: &[i64]) -> Vec<u8> {
    Pickle::new()
        .op(b"}")
        .str("w")
        .tensor("FloatStorage", "0", numel, offset, size, stride)
        .op(b"s")
        .stop()
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

// ------------------------------------------------------------------------------------------------
// Reading real torch.save files

#[test]
fn the_bin_vae_equals_the_safetensors_vae_after_renaming_old_attention_names() {
    let st = Checkpoint::open_dir(&fixtures().join("tiny/vae")).expect("safetensors VAE");
    let mut bin = Checkpoint::open_dir(&fixtures().join("tiny-bin/vae")).expect(".bin VAE");
    assert_eq!(bin.path().extension().and_then(|e| e.to_str()), Some("bin"));
    assert!(
        bin.names().any(|n| n.contains(".query.")),
        "the fixture should have old attention names"
    );
    for (from, to) in [
        (".query.", ".to_q."),
        (".key.", ".to_k."),
        (".value.", ".to_v."),
        (".proj_attn.", ".to_out.0."),
    ] {
        bin.rename_all(from, to);
    }
    let st_names: Vec<&str> = st.names().collect();
    let bin_names: Vec<&str> = bin.names().collect();
    assert_eq!(st_names, bin_names);
    assert!(!st.is_empty());
    for name in st.names() {
        assert_eq!(st.dtype(name), bin.dtype(name), "{name}");
        let (st_shape, st_data) = st.f32_any(name).expect(name);
        let (bin_shape, bin_data) = bin.f32_any(name).expect(name);
        assert_eq!(st_shape, bin_shape, "{name}");
        let same = st_data
            .iter()
            .zip(&bin_data)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same && st_data.len() == bin_data.len(), "{name} differs");
    }
    println!("{} tensors identical", st.len());
}

fn check_mixed(ckpt: &Checkpoint) {
    let path = ckpt.path().display().to_string();
    let f = |name: &str| ckpt.f32_any(name).unwrap_or_else(|e| panic!("{path}: {e}"));

    assert_eq!(ckpt.dtype("position_ids"), Some(StoredDtype::I64));
    let (shape, ids) = ckpt.i64_any("position_ids").expect("position_ids");
    assert_eq!((shape, ids), (vec![1, 8], (0..8).collect::<Vec<i64>>()));

    assert_eq!(ckpt.dtype("half"), Some(StoredDtype::F16));
    assert_eq!(
        f("half"),
        (vec![2, 3], vec![1.5, -2.25, 65504.0, 0.0, 0.125, -0.5])
    );
    assert_eq!(ckpt.dtype("bf16"), Some(StoredDtype::BF16));
    assert_eq!(f("bf16"), (vec![3], vec![1.0, -3.5, 256.0]));
    assert_eq!(ckpt.dtype("f64"), Some(StoredDtype::F64));
    assert_eq!(f("f64"), (vec![2], vec![0.1, 2.0]));
    assert_eq!(ckpt.dtype("int32"), Some(StoredDtype::I32));
    assert_eq!(
        ckpt.i64_any("int32").expect("int32"),
        (vec![2], vec![-7, 3])
    );
    assert_eq!(ckpt.dtype("flags"), Some(StoredDtype::Bool));
    assert_eq!(ckpt.shape("flags"), Some(&[3usize][..]));

    let base: Vec<f32> = (0..12).map(|i| i as f32).collect();
    assert_eq!(f("base"), (vec![3, 4], base));
    // Views of `base`'s storage: strided, offset, both.
    assert_eq!(
        f("transposed"),
        (
            vec![4, 3],
            vec![0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]
        )
    );
    assert_eq!(f("row"), (vec![4], vec![4., 5., 6., 7.]));
    assert_eq!(f("column"), (vec![3], vec![2., 6., 10.]));
    // Stride 0.
    assert_eq!(f("expanded"), (vec![3, 2], vec![1., 2., 1., 2., 1., 2.]));
    assert_eq!(f("scalar"), (vec![], vec![3.25]));
    assert_eq!(f("empty"), (vec![0, 3], vec![]));
    // `_rebuild_parameter` and `_rebuild_from_type_v2`.
    assert_eq!(f("param"), (vec![2], vec![0.5, -0.5]));
    assert_eq!(f("with_attr"), (vec![2], vec![4.0, 5.0]));
    assert_eq!(ckpt.len(), 15);
}

#[test]
fn a_state_dict_of_mixed_dtypes_and_views_reads_correctly() {
    for name in ["mixed.bin", "mixed_p4.bin"] {
        let ckpt = Checkpoint::open(&fixtures().join("pickle").join(name)).expect(name);
        check_mixed(&ckpt);
    }
}

#[test]
fn deflated_and_big_endian_archives_read_correctly() {
    let dir = scratch("deflated_and_big_endian");
    let original = std::fs::read(fixtures().join("pickle/mixed.bin")).unwrap();
    let entries = unzip(&original);

    // The same archive with every entry deflated: served from owned buffers instead of the map.
    let deflated = write(
        &dir,
        "deflated.bin",
        &zip_with(&entries, zip::CompressionMethod::Deflated),
    );
    check_mixed(&Checkpoint::open(&deflated).expect("deflated"));

    // A hand-made big-endian archive.
    let pickle = Pickle::new()
        .op(b"}")
        .mark()
        .str("w")
        .tensor("FloatStorage", "0", 3, 0, &[3], &[1])
        .str("ids")
        .tensor("LongStorage", "1", 2, 0, &[2], &[1])
        .op(b"u")
        .stop();
    let be_f32: Vec<u8> = [1.5f32, -2.0, 7.25]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    let be_i64: Vec<u8> = [-3i64, 1 << 40]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    let bytes = zip_stored(&[
        ("archive/data.pkl".into(), pickle),
        ("archive/byteorder".into(), b"big".to_vec()),
        ("archive/data/0".into(), be_f32),
        ("archive/data/1".into(), be_i64),
    ]);
    let ckpt = Checkpoint::open(&write(&dir, "big.bin", &bytes)).expect("big-endian");
    assert_eq!(ckpt.f32("w", &[3]).unwrap(), vec![1.5, -2.0, 7.25]);
    assert_eq!(ckpt.i64_any("ids").unwrap(), (vec![2], vec![-3, 1 << 40]));
}

// ------------------------------------------------------------------------------------------------
// Lookups: missing, wrong shape, wrong dtype

#[test]
fn a_missing_folder_or_a_folder_without_weights_is_an_error() {
    let err = Checkpoint::open_dir(&fixtures().join("no-such-model/vae"))
        .err()
        .expect("missing folder");
    println!("{err}");
    assert!(matches!(err, CheckpointError::NoWeights { .. }), "{err:?}");
    assert_contains(&err.to_string(), &["no-such-model"]);

    let err = Checkpoint::open_dir(&fixtures().join("tiny/scheduler"))
        .err()
        .expect("no weights");
    println!("{err}");
    assert!(matches!(err, CheckpointError::NoWeights { .. }), "{err:?}");
    assert_contains(&err.to_string(), &["scheduler", "safetensors", ".bin"]);

    for name in ["missing.safetensors", "missing.bin"] {
        let err = Checkpoint::open(&fixtures().join(name)).err().expect(name);
        println!("{err}");
        assert!(matches!(err, CheckpointError::Io { .. }), "{err:?}");
        assert_contains(&err.to_string(), &[name]);
    }
}

#[test]
fn missing_tensors_wrong_shapes_and_wrong_dtypes_are_named() {
    for ckpt in [
        Checkpoint::open_dir(&fixtures().join("tiny/vae")).unwrap(),
        Checkpoint::open_dir(&fixtures().join("tiny-bin/vae")).unwrap(),
    ] {
        let name = "encoder.conv_in.weight";
        let shape = ckpt.shape(name).expect("conv_in").to_vec();
        assert_eq!(shape, [16, 1, 3, 3]);
        assert!(ckpt.f32(name, &shape).is_ok());

        let err = ckpt.f32("encoder.conv_in.weights", &shape).unwrap_err();
        println!("{err}");
        assert!(matches!(err, CheckpointError::Missing { .. }), "{err:?}");
        assert_contains(&err.to_string(), &["`encoder.conv_in.weights`"]);
        let weights = ckpt.root().pp("decoder").pp("up_blocks").pp(9);
        let err = pollster::block_on(weights.f32("bias", &[1])).unwrap_err();
        assert_contains(&err.to_string(), &["`decoder.up_blocks.9.bias`"]);
        assert!(ckpt.f32_any("nope").is_err() && ckpt.i64_any("nope").is_err());

        let err = ckpt.f32(name, &[16, 1, 3]).unwrap_err();
        println!("{err}");
        assert!(matches!(err, CheckpointError::Shape { .. }), "{err:?}");
        assert_contains(&err.to_string(), &[name, "[16, 1, 3, 3]", "[16, 1, 3]"]);

        let err = ckpt.i64_any(name).unwrap_err();
        println!("{err}");
        assert!(matches!(err, CheckpointError::Dtype { .. }), "{err:?}");
        assert_contains(&err.to_string(), &[name, "F32"]);
    }

    let mixed = Checkpoint::open(&fixtures().join("pickle/mixed.bin")).unwrap();
    for (name, shape, dtype) in [
        ("position_ids", vec![1, 8], "I64"),
        ("int32", vec![2], "I32"),
        ("flags", vec![3], "Bool"),
    ] {
        let err = mixed.f32(name, &shape).unwrap_err();
        println!("{err}");
        assert!(matches!(err, CheckpointError::Dtype { .. }), "{err:?}");
        assert_contains(&err.to_string(), &[name, dtype]);
    }
}

// ------------------------------------------------------------------------------------------------
// Broken safetensors files

fn vae_safetensors() -> Vec<u8> {
    std::fs::read(fixtures().join("tiny/vae/diffusion_pytorch_model.safetensors")).unwrap()
}

fn safetensors_with_header(header: &str, data: &[u8]) -> Vec<u8> {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

#[test]
fn truncated_safetensors_files_are_errors() {
    let dir = scratch("truncated_safetensors");
    let full = vae_safetensors();
    let header_end = 8 + u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;
    for cut in [
        0,
        1,
        7,
        8,
        9,
        header_end / 2,
        header_end - 1,
        header_end,
        header_end + 1,
        full.len() / 2,
        full.len() - 4,
        full.len() - 1,
    ] {
        let err = open_err(&dir, &format!("cut{cut}.safetensors"), &full[..cut]);
        assert!(err.contains("not a valid checkpoint"), "{err}");
    }
}

#[test]
fn corrupt_safetensors_headers_are_errors() {
    let dir = scratch("corrupt_safetensors");
    let full = vae_safetensors();
    let header_len = u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;

    // A header length past the end, and an absurd one.
    for len in [header_len as u64 + 1, full.len() as u64, u64::MAX, 1 << 40] {
        let mut bytes = full.clone();
        bytes[..8].copy_from_slice(&len.to_le_bytes());
        open_err(&dir, &format!("len{len}.safetensors"), &bytes);
    }
    // Garbage in the JSON: its opening brace, bytes that are not UTF-8, a cut-off string.
    for (at, byte) in [
        (8, b'x'),
        (9, 0xff),
        (header_len / 2, 0x80),
        (8 + header_len - 1, b'"'),
    ] {
        let mut bytes = full.clone();
        bytes[at] = byte;
        open_err(&dir, &format!("byte{at}.safetensors"), &bytes);
    }
    // Well-formed JSON that is wrong: an unknown dtype, a shape disagreeing with the offsets,
    // offsets out of order, a negative size.
    let data = f32_bytes(&[1.0, 2.0, 3.0, 4.0]);
    for (name, header) in [
        (
            "dtype",
            r#"{"w":{"dtype":"F33","shape":[4],"data_offsets":[0,16]}}"#,
        ),
        (
            "shape",
            r#"{"w":{"dtype":"F32","shape":[5],"data_offsets":[0,16]}}"#,
        ),
        (
            "order",
            r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[16,0]}}"#,
        ),
        (
            "negative",
            r#"{"w":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}}"#,
        ),
        ("not-an-object", r#"[1, 2, 3]"#),
    ] {
        let bytes = safetensors_with_header(header, &data);
        open_err(&dir, &format!("{name}.safetensors"), &bytes);
    }
    // The header itself is fine.
    let ok = safetensors_with_header(
        r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
        &data,
    );
    let ckpt = Checkpoint::open(&write(&dir, "ok.safetensors", &ok)).unwrap();
    let err = ckpt.f32("w", &[2, 2]).unwrap_err().to_string();
    assert_contains(&err, &["[4]", "[2, 2]"]);
    assert_eq!(ckpt.f32("w", &[4]).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
}

#[test]
fn safetensors_offsets_past_the_end_are_errors() {
    let dir = scratch("safetensors_offsets");
    let data = f32_bytes(&[1.0, 2.0]);
    for (name, header) in [
        (
            "past-end",
            r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
        ),
        (
            "second-past-end",
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#,
        ),
        (
            "huge",
            r#"{"w":{"dtype":"U8","shape":[1152921504606846976],"data_offsets":[0,1152921504606846976]}}"#,
        ),
    ] {
        let err = open_err(
            &dir,
            &format!("{name}.safetensors"),
            &safetensors_with_header(header, &data),
        );
        assert!(err.contains("not a valid checkpoint"), "{err}");
    }
    // Offsets adding up to just under 2^64: the data's end overflows once the header is added.
    let mut header = String::from("{");
    let mut start = 0u64;
    for (i, size) in [(1u64 << 61) - 1; 8].into_iter().chain([7]).enumerate() {
        let end = start + size;
        header += &format!(
            r#"{}"t{i}":{{"dtype":"U8","shape":[{size}],"data_offsets":[{start},{end}]}}"#,
            if i == 0 { "" } else { "," }
        );
        start = end;
    }
    header += "}";
    assert_eq!(start, u64::MAX);
    open_err(
        &dir,
        "overflow.safetensors",
        &safetensors_with_header(&header, &data),
    );
    // The real VAE, its header claiming one byte more than the file holds.
    let full = vae_safetensors();
    open_err(&dir, "short-by-one.safetensors", &full[..full.len() - 1]);
}

// ------------------------------------------------------------------------------------------------
// Broken .bin files

fn mixed_bin() -> Vec<u8> {
    std::fs::read(fixtures().join("pickle/mixed.bin")).unwrap()
}

#[test]
fn truncated_bin_files_are_errors() {
    let dir = scratch("truncated_bin");
    for file in [
        "pickle/mixed.bin",
        "tiny-bin/vae/diffusion_pytorch_model.bin",
    ] {
        let full = std::fs::read(fixtures().join(file)).unwrap();
        let n = full.len();
        let mut cuts: Vec<usize> = vec![0, 1, 2, 4, 30, 100, n / 3, n / 2, n - 200, n - 23, n - 22];
        cuts.extend(n - 100..n);
        for cut in cuts {
            let err = open_err(&dir, &format!("cut{cut}.bin"), &full[..cut]);
            assert!(err.contains("not a valid checkpoint"), "{err}");
        }
    }
}

#[test]
fn a_bin_without_one_of_its_entries_is_an_error() {
    let dir = scratch("bin_missing_entry");
    let entries = unzip(&mixed_bin());
    let names: Vec<String> = entries.iter().map(|(n, _)| n.clone()).collect();
    for drop in names
        .iter()
        .filter(|n| n.contains("/data/") || n.ends_with("data.pkl"))
    {
        let kept: Vec<_> = entries.iter().filter(|(n, _)| n != drop).cloned().collect();
        let err = open_err(&dir, "missing.bin", &zip_stored(&kept));
        if drop.ends_with("data.pkl") {
            assert_contains(&err, &["data.pkl"]);
        } else {
            assert_contains(&err, &[drop.as_str(), "missing", "tensor `"]);
        }
    }
    // Without the optional entries it still reads.
    let kept: Vec<_> = entries
        .iter()
        .filter(|(n, _)| n.ends_with("data.pkl") || n.contains("/data/"))
        .cloned()
        .collect();
    check_mixed(&Checkpoint::open(&write(&dir, "minimal.bin", &zip_stored(&kept))).unwrap());
}

#[test]
fn bins_that_are_not_torch_zips_are_errors() {
    let dir = scratch("not_torch_zips");
    let err = open_err(&dir, "empty.bin", b"");
    assert_contains(&err, &["empty"]);
    let err = open_err(
        &dir,
        "text.bin",
        b"version https://git-lfs.github.com/spec/v1\n",
    );
    assert_contains(&err, &["zip"]);
    // The pre-1.6 torch.save format: a bare pickle.
    let err = open_err(&dir, "legacy.bin", &Pickle::new().op(b"}").stop());
    assert_contains(&err, &["legacy"]);
    // A zip without data.pkl.
    let err = open_err(
        &dir,
        "other.bin",
        &zip_stored(&[("readme.txt".into(), b"hi".to_vec())]),
    );
    assert_contains(&err, &["data.pkl"]);
    // A pickle that is not a dict, a dict with a non-string key, a bad byteorder.
    let err = open_err(
        &dir,
        "list.bin",
        &torch_zip(&Pickle::new().op(b"]").stop(), &[]),
    );
    assert_contains(&err, &["list"]);
    let err = open_err(
        &dir,
        "intkey.bin",
        &torch_zip(&Pickle::new().op(b"}").int(3).int(4).op(b"s").stop(), &[]),
    );
    assert_contains(&err, &["key of type int"]);
    let bytes = zip_stored(&[
        ("archive/data.pkl".into(), Pickle::new().op(b"}").stop()),
        ("archive/byteorder".into(), b"middle".to_vec()),
    ]);
    let err = open_err(&dir, "byteorder.bin", &bytes);
    assert_contains(&err, &["middle"]);
}

#[test]
fn storages_too_short_and_absurd_sizes_are_errors() {
    let dir = scratch("bad_storages");
    let four = f32_bytes(&[1.0, 2.0, 3.0, 4.0]);
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        // The storage entry holds fewer bytes than declared.
        (
            "short-entry",
            one_tensor(8, 0, &[8], &[1]),
            &["16 bytes", "32"],
        ),
        // The view runs past its storage.
        (
            "offset",
            one_tensor(4, 2, &[4], &[1]),
            &["offset 2", "storage `0`"],
        ),
        (
            "stride",
            one_tensor(4, 0, &[2, 2], &[3, 1]),
            &["stride [3, 1]"],
        ),
        (
            "big",
            one_tensor(4, 0, &[1 << 40, 1 << 40], &[1, 1]),
            &["tensor `w`"],
        ),
        (
            "overflow",
            one_tensor(4, 0, &[1 << 62, 1 << 62], &[1, 1]),
            &["absurd"],
        ),
        (
            "offset-overflow",
            one_tensor(4, i64::MAX, &[2], &[1]),
            &["tensor `w`"],
        ),
        // A zero stride asking for far more than its storage.
        (
            "broadcast",
            one_tensor(4, 0, &[1 << 30, 4], &[0, 1]),
            &["non-contiguous"],
        ),
        (
            "storage-numel",
            one_tensor(1 << 62, 0, &[4], &[1]),
            &["tensor `w`"],
        ),
        // Negative numbers, and a rank mismatch.
        (
            "negative-size",
            one_tensor(4, 0, &[-4], &[1]),
            &["negative size"],
        ),
        (
            "negative-stride",
            one_tensor(4, 0, &[2, 2], &[-2, 1]),
            &["negative stride"],
        ),
        (
            "negative-offset",
            one_tensor(4, -1, &[4], &[1]),
            &["negative storage offset"],
        ),
        ("rank", one_tensor(4, 0, &[2, 2], &[1]), &["stride [1]"]),
    ];
    for (name, pickle, needles) in cases {
        let err = open_err(
            &dir,
            &format!("{name}.bin"),
            &torch_zip(&pickle, &[("0", four.clone())]),
        );
        assert_contains(&err, needles);
    }
    // Two tensors declaring the same storage with different sizes.
    let pickle = Pickle::new()
        .op(b"}")
        .mark()
        .str("a")
        .tensor("FloatStorage", "0", 4, 0, &[4], &[1])
        .str("b")
        .tensor("FloatStorage", "0", 2, 0, &[2], &[1])
        .op(b"u")
        .stop();
    let err = open_err(
        &dir,
        "inconsistent.bin",
        &torch_zip(&pickle, &[("0", four.clone())]),
    );
    assert_contains(&err, &["storage `0`"]);

    // A hand-made file that is right reads, views and all.
    let pickle = Pickle::new()
        .op(b"}")
        .mark()
        .str("all")
        .tensor("FloatStorage", "0", 4, 0, &[2, 2], &[2, 1])
        .str("t")
        .tensor("FloatStorage", "0", 4, 0, &[2, 2], &[1, 2])
        .str("tail")
        .tensor("FloatStorage", "0", 4, 1, &[3], &[1])
        .str("big-stride")
        .tensor("FloatStorage", "0", 4, 3, &[1, 1], &[i64::MAX, 1])
        .op(b"u")
        .stop();
    let ok = Checkpoint::open(&write(&dir, "ok.bin", &torch_zip(&pickle, &[("0", four)]))).unwrap();
    assert_eq!(ok.f32("all", &[2, 2]).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    assert_eq!(ok.f32("t", &[2, 2]).unwrap(), vec![1.0, 3.0, 2.0, 4.0]);
    assert_eq!(ok.f32("tail", &[3]).unwrap(), vec![2.0, 3.0, 4.0]);
    assert_eq!(ok.f32("big-stride", &[1, 1]).unwrap(), vec![4.0]);
}

// ------------------------------------------------------------------------------------------------
// Hostile pickles

#[test]
fn a_pickle_calling_a_disallowed_global_is_refused_without_running_it() {
    let dir = scratch("disallowed_global");
    let marker = dir.join("pwned");
    let command = format!("touch {}", marker.display());

    // The classic: os.system via GLOBAL + REDUCE, as the whole pickle...
    let pickle = Pickle::new()
        .global("os", "system")
        .mark()
        .str(&command)
        .tuple()
        .op(b"R")
        .stop();
    let err = open_err(&dir, "os_system.bin", &torch_zip(&pickle, &[]));
    assert_contains(&err, &["`os.system`", "byte 2", "GLOBAL", "allow-list"]);

    // ...inside an otherwise fine state dict, after a real tensor...
    let pickle = Pickle::new()
        .op(b"}")
        .mark()
        .str("w")
        .tensor("FloatStorage", "0", 1, 0, &[1], &[1])
        .str("x")
        .global("posix", "system")
        .mark()
        .str(&command)
        .tuple()
        .op(b"R")
        .op(b"u")
        .stop();
    let err = open_err(
        &dir,
        "in_state_dict.bin",
        &torch_zip(&pickle, &[("0", f32_bytes(&[1.0]))]),
    );
    assert_contains(&err, &["`posix.system`"]);

    // ...through STACK_GLOBAL (protocol 4), and as a storage type or rebuild function.
    let pickle = Pickle::new()
        .str("builtins")
        .str("eval")
        .op(&[0x93])
        .mark()
        .str("__import__('os').system('true')")
        .tuple()
        .op(b"R")
        .stop();
    let err = open_err(&dir, "stack_global.bin", &torch_zip(&pickle, &[]));
    assert_contains(&err, &["`builtins.eval`", "STACK_GLOBAL"]);
    for (module, name) in [
        ("torch", "load"),
        ("torch.serialization", "_get_layout"),
        ("torch._utils", "_rebuild_device_tensor_from_numpy"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("collections", "defaultdict"),
        ("__builtin__", "getattr"),
    ] {
        let pickle = Pickle::new().global(module, name).stop();
        let err = open_err(&dir, "other_global.bin", &torch_zip(&pickle, &[]));
        assert_contains(&err, &[&format!("`{module}.{name}`")]);
    }
    // Allowed globals still cannot be called in other ways.
    for pickle in [
        Pickle::new()
            .global("torch", "FloatStorage")
            .op(b")R")
            .stop(),
        Pickle::new()
            .global("collections", "OrderedDict")
            .int(1)
            .op(&[0x85])
            .op(b"R")
            .stop(),
        Pickle::new().str("os").op(b")R").stop(),
        Pickle::new().op(b"]").op(b"}").op(b"b").stop(),
    ] {
        open_err(&dir, "misuse.bin", &torch_zip(&pickle, &[]));
    }
    assert!(!marker.exists(), "the pickled command ran");
}

#[test]
fn disallowed_opcodes_are_refused_and_named() {
    let dir = scratch("disallowed_opcodes");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("INST", b"(ios\nsystem\n".to_vec()),
        (
            "OBJ",
            Pickle::new()
                .mark()
                .global("collections", "OrderedDict")
                .op(b"o")
                .0,
        ),
        ("EXT1", vec![0x82, 1]),
        ("EXT2", vec![0x83, 1, 0]),
        ("EXT4", vec![0x84, 1, 0, 0, 0]),
        ("NEWOBJ", Pickle::new().op(b")").op(b")").op(&[0x81]).0),
        ("PERSID", b"P0\n".to_vec()),
        ("STRING", b"S'x'\n".to_vec()),
        ("INT", b"I1\n".to_vec()),
        ("DICT", b"(d".to_vec()),
        ("EMPTY_SET", vec![0x8f]),
        ("NEXT_BUFFER", vec![0x97]),
        ("DUP", Pickle::new().op(b"N2").0),
        ("unknown opcode", vec![0xff]),
    ];
    for (name, mut body) in cases {
        // A valid prologue, so the offending opcode is not the first byte.
        let mut pickle = if body.starts_with(&[0x80]) {
            Vec::new()
        } else {
            vec![0x80, 2]
        };
        pickle.append(&mut body);
        pickle.push(b'.');
        let err = open_err(&dir, &format!("{name}.bin"), &torch_zip(&pickle, &[]));
        assert_contains(&err, &[name, "byte "]);
    }
    // An unsupported protocol.
    let err = open_err(&dir, "proto.bin", &torch_zip(&[0x80, 9, b'}', b'.'], &[]));
    assert_contains(&err, &["protocol 9"]);
}

#[test]
fn malformed_pickles_are_errors() {
    let dir = scratch("malformed_pickles");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("no-stop", vec![0x80, 2, b'}'], "without a STOP"),
        ("empty-stack", vec![0x80, 2, b'.'], "underflow"),
        ("below-mark", vec![0x80, 2, b'}', b'(', b'.'], "underflow"),
        ("no-mark", vec![0x80, 2, b't', b'.'], "MARK"),
        ("memo", vec![0x80, 2, b'h', 7, b'.'], "memo entry 7"),
        (
            "short-string",
            vec![0x80, 2, b'X', 200, 0, 0, 0, b'a', b'.'],
            "needs 200 bytes",
        ),
        (
            "huge-string",
            vec![
                0x80, 2, 0x8d, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
            ],
            "needs",
        ),
        ("utf8", vec![0x80, 2, 0x8c, 2, 0xc3, 0x28, b'.'], "UTF-8"),
        (
            "long",
            vec![0x80, 2, 0x8a, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9, b'.'],
            "64 bits",
        ),
        (
            "global-newline",
            b"\x80\x02ctorch\nFloatStorage".to_vec(),
            "newline",
        ),
        (
            "setitem-on-list",
            vec![0x80, 2, b']', b'N', b'N', b's', b'.'],
            "list",
        ),
        (
            "append-on-dict",
            vec![0x80, 2, b'}', b'N', b'a', b'.'],
            "dict",
        ),
        (
            "odd-setitems",
            vec![0x80, 2, b'}', b'(', b'N', b'u', b'.'],
            "odd",
        ),
        ("persid", vec![0x80, 2, b'N', b'Q', b'.'], "persistent id"),
    ];
    for (name, pickle, needle) in cases {
        let err = open_err(&dir, &format!("{name}.bin"), &torch_zip(&pickle, &[]));
        assert_contains(&err, &[needle]);
    }
}

#[test]
fn deeply_nested_pickles_do_not_overflow_the_stack() {
    let dir = scratch("deep_pickles");
    let depth = 1_000_000;
    // ((((...)))) built with TUPLE1.
    let mut tuples = vec![0x80, 2, b')'];
    tuples.extend(std::iter::repeat_n(0x85u8, depth));
    tuples.push(b'.');
    let err = open_err(&dir, "tuples.bin", &torch_zip(&tuples, &[]));
    assert_contains(&err, &["tuple"]);
    // [[[[...]]]] built with EMPTY_LIST + APPEND.
    let mut lists = vec![0x80, 2];
    lists.extend(std::iter::repeat_n(b']', depth + 1));
    lists.extend(std::iter::repeat_n(b'a', depth));
    lists.push(b'.');
    let err = open_err(&dir, "lists.bin", &torch_zip(&lists, &[]));
    assert_contains(&err, &["list"]);
    // A chain linked through the memo after each list was stored (so no container looked deep
    // when it was filled), then left in a dict value that fails later.
    let n = 200_000u32;
    let mut chain = vec![0x80, 2];
    for i in 0..n {
        chain.extend_from_slice(b"]r");
        chain.extend_from_slice(&i.to_le_bytes());
        if i > 0 {
            // memo[i-1].append(memo[i]): the stack holds the lists, so link through the memo.
            chain.push(b'j');
            chain.extend_from_slice(&(i - 1).to_le_bytes());
            chain.push(b'j');
            chain.extend_from_slice(&i.to_le_bytes());
            chain.push(b'a');
        }
    }
    chain.push(b'.');
    let err = open_err(&dir, "chain.bin", &torch_zip(&chain, &[]));
    assert_contains(&err, &["list"]);
}

#[test]
fn flipping_any_byte_of_a_pickle_never_panics() {
    let dir = scratch("flipped_pickles");
    let entries = unzip(&mixed_bin());
    let pkl = entries
        .iter()
        .position(|(n, _)| n.ends_with("data.pkl"))
        .unwrap();
    let original = entries[pkl].1.clone();
    let (mut errors, mut oks, mut serial) = (0, 0, 0);
    for (at, &was) in original.iter().enumerate() {
        for byte in [0x00, 0xff, was ^ 0x01, b'c', b'R'] {
            let mut edited = entries.clone();
            edited[pkl].1[at] = byte;
            serial += 1;
            if open_and_read_all(&dir, serial, &zip_stored(&edited)) {
                oks += 1;
            } else {
                errors += 1;
            }
        }
        // Cut short here.
        let mut edited = entries.clone();
        edited[pkl].1.truncate(at);
        serial += 1;
        assert!(
            !open_and_read_all(&dir, serial, &zip_stored(&edited)),
            "pickle cut at {at} read"
        );
    }
    println!("{errors} errors, {oks} still readable");
}

#[test]
fn damaging_the_zip_structure_never_panics() {
    let dir = scratch("damaged_zips");
    let full = mixed_bin();
    let mut serial = 0;
    for at in 0..full.len() {
        for byte in [0x00, 0xff, full[at].wrapping_add(1)] {
            if full[at] == byte {
                continue;
            }
            let mut bytes = full.clone();
            bytes[at] = byte;
            serial += 1;
            open_and_read_all(&dir, serial, &bytes);
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Budgets: what a small file may make the reader allocate or do

#[test]
fn a_deflated_pickle_that_only_pushes_is_refused_within_its_budget() {
    let dir = scratch("pushing_pickle");
    // 20 MB of NONE opcodes deflate to a few KB; unbounded, they would make 20 M values.
    let mut pickle = vec![0x80, 2];
    pickle.extend(std::iter::repeat_n(b'N', 20_000_000));
    pickle.push(b'.');
    let entries = vec![
        ("archive/data.pkl".to_string(), pickle),
        ("archive/version".to_string(), b"3\n".to_vec()),
    ];
    let bytes = zip_with(&entries, zip::CompressionMethod::Deflated);
    assert!(bytes.len() < 100_000, "{} bytes", bytes.len());
    let err = open_err(&dir, "pushes.bin", &bytes);
    assert_contains(&err, &["pushes.bin", "values"]);
    // The same through MARKs and memo entries.
    let mut marks = vec![0x80, 2];
    marks.extend(std::iter::repeat_n(b'(', 20_000_000));
    marks.push(b'.');
    let err = open_err(&dir, "marks.bin", &torch_zip(&marks, &[]));
    assert_contains(&err, &["values"]);
    let mut memo = vec![0x80, 2, b'N'];
    for i in 0..5_000_000u32 {
        memo.push(b'r');
        memo.extend_from_slice(&i.to_le_bytes());
    }
    memo.push(b'.');
    let err = open_err(&dir, "memo.bin", &torch_zip(&memo, &[]));
    assert_contains(&err, &["values"]);
}

#[test]
fn a_storage_viewed_by_many_tensors_is_not_copied_for_each() {
    let dir = scratch("shared_storage");
    // One 4 MB storage, viewed whole by 2000 dict entries as a transposed (non-contiguous)
    // tensor: gathering each would copy 8 GB.
    let (rows, cols) = (1024i64, 1024i64);
    let mut p = Pickle::new().op(b"}").mark();
    for i in 0..2000 {
        p = p.str(&format!("w{i}")).tensor(
            "FloatStorage",
            "0",
            rows * cols,
            0,
            &[cols, rows],
            &[1, cols],
        );
    }
    let pickle = p.op(b"u").stop();
    let storage = vec![0u8; (rows * cols * 4) as usize];
    let entries = vec![
        ("archive/data.pkl".to_string(), pickle),
        ("archive/data/0".to_string(), storage),
        ("archive/version".to_string(), b"3\n".to_vec()),
    ];
    let bytes = zip_with(&entries, zip::CompressionMethod::Deflated);
    let started = std::time::Instant::now();
    let err = open_err(&dir, "views.bin", &bytes);
    assert_contains(&err, &["non-contiguous", "storages hold"]);
    println!("refused in {:?}", started.elapsed());

    // Contiguous views of a compressed storage share its buffer: 2000 of them are fine.
    let mut p = Pickle::new().op(b"}").mark();
    for i in 0..2000 {
        p = p.str(&format!("w{i}")).tensor(
            "FloatStorage",
            "0",
            rows * cols,
            0,
            &[rows, cols],
            &[cols, 1],
        );
    }
    let entries = vec![
        ("archive/data.pkl".to_string(), p.op(b"u").stop()),
        (
            "archive/data/0".to_string(),
            vec![0u8; (rows * cols * 4) as usize],
        ),
        ("archive/version".to_string(), b"3\n".to_vec()),
    ];
    let path = write(
        &dir,
        "contiguous.bin",
        &zip_with(&entries, zip::CompressionMethod::Deflated),
    );
    let ckpt = Checkpoint::open(&path).expect("contiguous views load");
    assert_eq!(ckpt.len(), 2000);
}

#[test]
fn a_deflate_bomb_storage_is_refused() {
    let dir = scratch("deflate_bomb");
    // 600 MB of zeros deflate to about 600 KB: far past what a file that size may inflate to.
    let numel = 150_000_000i64;
    let entries = vec![
        (
            "archive/data.pkl".to_string(),
            one_tensor(numel, 0, &[numel], &[1]),
        ),
        (
            "archive/data/0".to_string(),
            vec![0u8; (numel * 4) as usize],
        ),
        ("archive/version".to_string(), b"3\n".to_vec()),
    ];
    let bytes = zip_with(&entries, zip::CompressionMethod::Deflated);
    println!("bomb: {} bytes", bytes.len());
    let err = open_err(&dir, "bomb.bin", &bytes);
    assert_contains(&err, &["inflate"]);
}

// ------------------------------------------------------------------------------------------------
// Resident memory

/// Resident kB of this process's mappings of `path` (`/proc/self/smaps`).
#[cfg(target_os = "linux")]
fn resident_kib_of_mapping(path: &Path) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read /proc/self/smaps");
    let name = path.to_str().expect("utf-8 path");
    let mut in_mapping = false;
    let mut kib = 0;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            in_mapping = line.ends_with(name);
        } else if in_mapping && let Some(rss) = line.strip_prefix("Rss:") {
            kib += rss
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap_or(0);
        }
    }
    kib
}

#[cfg(target_os = "linux")]
#[test]
fn a_tensor_read_from_a_mapped_file_leaves_no_resident_copy_of_its_bytes() {
    let dir = scratch("resident");
    let numel = 4 << 20; // 16 MiB of f32
    let data: Vec<u8> = (0..numel)
        .flat_map(|i| (i as f32 * 0.25).to_le_bytes())
        .collect();
    let header = format!(
        r#"{{"w":{{"dtype":"F32","shape":[{numel}],"data_offsets":[0,{}]}}}}"#,
        data.len()
    );
    let path = write(
        &dir,
        "model.safetensors",
        &safetensors_with_header(&header, &data),
    );
    let checkpoint = Checkpoint::open(&path).expect("open");
    let values = checkpoint.f32("w", &[numel]).expect("read");
    assert_eq!(values[12345], 12345.0 * 0.25);
    assert_eq!(values[numel - 1], (numel - 1) as f32 * 0.25);
    // Reading faulted all 16 MiB in; what stays resident is at most the partial 64 KiB blocks
    // at the tensor's two ends.
    let resident = resident_kib_of_mapping(&path);
    assert!(
        resident <= 128,
        "{resident} kB of the checkpoint still resident after reading it"
    );
    // A second read faults the same bytes back in.
    assert_eq!(checkpoint.f32("w", &[numel]).expect("read again"), values);
}
