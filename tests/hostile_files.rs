//! Files a stranger wrote: configs that parse but cannot be built, absurd sizes, cut-off and
//! malformed tokenizer files, special files. Each is an error that names the file (and the key),
//! never a panic, an abort or a hang.

mod common;

use std::path::{Path, PathBuf};

use audioldm::model::clap_text::ClapTextModelWithProjection;
use audioldm::model::nn::{Loader, Precision};
use audioldm::model::tokenizer::TextTokenizer;
use audioldm::model::unet::UNet2DConditionModel;
use audioldm::model::vae::AutoencoderKL;
use audioldm::model::vocoder::SpeechT5HifiGan;
use audioldm::pipeline::ddim::DdimScheduler;
use common::*;
use serde_json::{Value, json};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny")
        .join(name)
}

fn loader() -> Loader<'static> {
    Loader {
        ctx: ctx(),
        precision: Precision::default(),
    }
}

/// Loads `part` from a copy of the tiny fixture with `key` set to `value` in its config; the
/// error must name the config file and `words`.
fn config_error(part: &str, key: &str, value: Value, words: &str) {
    let case = format!(
        "{key}-{}",
        value.to_string().replace(['[', ']', ',', '"'], "_")
    );
    let dir = modified_copy(
        &fixture(part),
        &case,
        |_| {},
        |config| {
            config.insert(key.to_string(), value.clone());
        },
    );
    let l = loader();
    let err = match part {
        "unet" => UNet2DConditionModel::load(&l, &dir).err(),
        "vae" => AutoencoderKL::load(&l, &dir).err(),
        "vocoder" => SpeechT5HifiGan::load(&l, &dir).err(),
        "text_encoder" => ClapTextModelWithProjection::load(&l, &dir).err(),
        other => panic!("no part {other}"),
    }
    .unwrap_or_else(|| panic!("{part}: {key} = {value} must be refused"))
    .to_string();
    println!("{part} {key} = {value}: {err}");
    assert!(err.contains("config.json"), "{err}");
    assert!(err.contains(words), "{part} {key} = {value}: {err}");
}

#[test]
fn unet_configs_that_cannot_be_built_are_errors() {
    config_error("unet", "norm_num_groups", json!(0), "norm_num_groups");
    config_error("unet", "norm_num_groups", json!(5), "norm_num_groups");
    config_error("unet", "attention_head_dim", json!(0), "attention heads");
    config_error("unet", "attention_head_dim", json!(3), "attention heads");
    config_error(
        "unet",
        "attention_head_dim",
        json!([8, 8]),
        "attention head counts",
    );
    config_error(
        "unet",
        "block_out_channels",
        json!([8, 16, 24, 1u64 << 40]),
        "block_out_channels",
    );
    config_error(
        "unet",
        "layers_per_block",
        json!(1_000_000_000),
        "layers_per_block",
    );
    config_error("unet", "in_channels", json!(0), "in_channels");
    config_error("unet", "conv_in_kernel", json!(1_000_001), "conv_in_kernel");
    config_error(
        "unet",
        "projection_class_embeddings_input_dim",
        json!(usize::MAX),
        "projection_class_embeddings_input_dim",
    );
}

#[test]
fn vae_vocoder_and_text_configs_that_cannot_be_built_are_errors() {
    config_error("vae", "norm_num_groups", json!(0), "norm_num_groups");
    config_error(
        "vae",
        "block_out_channels",
        json!([16, 32, 1u64 << 30]),
        "block_out_channels",
    );
    config_error("vae", "latent_channels", json!(100_000), "latent_channels");
    config_error("vae", "scaling_factor", json!(0.0), "scaling_factor");
    config_error(
        "vocoder",
        "upsample_rates",
        json!([5, 4, 2, 2, 1u64 << 20]),
        "upsample_rates",
    );
    config_error(
        "vocoder",
        "upsample_kernel_sizes",
        json!([16, 16, 8, 4, 1u64 << 40]),
        "upsample_kernel_sizes",
    );
    config_error(
        "vocoder",
        "upsample_initial_channel",
        json!(1u64 << 40),
        "upsample_initial_channel",
    );
    config_error("vocoder", "model_in_dim", json!(0), "model_in_dim");
    config_error("vocoder", "sampling_rate", json!(0), "sampling_rate");
    config_error(
        "vocoder",
        "resblock_dilation_sizes",
        json!([[1, 3, 5], [1, 3, 5], [1, 3, 1u64 << 40]]),
        "resblock_dilation_sizes",
    );
    config_error(
        "text_encoder",
        "num_attention_heads",
        json!(0),
        "attention heads",
    );
    config_error(
        "text_encoder",
        "hidden_size",
        json!(1u64 << 40),
        "hidden_size",
    );
    config_error(
        "text_encoder",
        "num_hidden_layers",
        json!(1_000_000),
        "num_hidden_layers",
    );
    config_error(
        "text_encoder",
        "max_position_embeddings",
        json!(1u64 << 40),
        "max_position_embeddings",
    );
}

fn scheduler_with(
    edit: impl FnOnce(&mut serde_json::Map<String, Value>),
) -> audioldm::Result<DdimScheduler> {
    let text = std::fs::read_to_string(fixture("scheduler/scheduler_config.json")).unwrap();
    let mut config: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
    edit(&mut config);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("hostile-scheduler")
        .join(
            format!("{}", config.len())
                + &serde_json::to_string(&config).unwrap().len().to_string(),
        );
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("scheduler_config.json"),
        serde_json::to_string(&config).unwrap(),
    )
    .unwrap();
    DdimScheduler::load(&dir)
}

#[test]
fn scheduler_configs_that_cannot_be_built_are_errors() {
    for (key, value, words) in [
        (
            "num_train_timesteps",
            json!(1_000_000_000),
            "num_train_timesteps",
        ),
        ("num_train_timesteps", json!(0), "num_train_timesteps"),
        ("steps_offset", json!(5000), "steps_offset"),
        ("beta_end", json!(2.5), "beta_end"),
        ("trained_betas", json!([0.5, 1.5]), "trained betas"),
    ] {
        let err = scheduler_with(|c| {
            c.insert(key.into(), value.clone());
        })
        .err()
        .unwrap_or_else(|| panic!("{key} = {value} must be refused"))
        .to_string();
        println!("scheduler {key} = {value}: {err}");
        assert!(
            err.contains("scheduler_config.json") && err.contains(words),
            "{err}"
        );
    }
    scheduler_with(|_| {}).expect("the fixture's own config loads");

    // Found by the `scheduler` fuzz target: steps_offset 2 with 1000 steps reaches timestep
    // 1001, and stepping there read past the schedule.
    let scheduler = scheduler_with(|c| {
        c.insert("steps_offset".into(), json!(2));
    })
    .expect("diffusers accepts the config itself");
    let err = scheduler.timesteps(1000).unwrap_err().to_string();
    assert!(err.contains("timestep 1001"), "{err}");
    assert!(scheduler.timesteps(10).is_ok());
    let step = scheduler.step(1001, 1000, 1.0);
    assert!(step.sqrt_alpha_prev.is_finite());
}

/// A tokenizer folder holding `tokenizer.json` = `text`.
fn tokenizer_dir(case: &str, text: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("hostile-tokenizer")
        .join(case);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tokenizer.json"), text).unwrap();
    dir
}

#[test]
fn malformed_tokenizer_files_are_errors() {
    let real = std::fs::read(fixture("tokenizer/tokenizer.json")).unwrap();
    // Cut off in the middle, as an interrupted download leaves it.
    let err = TextTokenizer::from_dir(&tokenizer_dir("cut", &real[..real.len() / 2]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tokenizer.json") && err.contains("cut short"),
        "{err}"
    );

    let value: Value = serde_json::from_slice(&real).unwrap();
    let mut cases: Vec<(&str, Value)> = Vec::new();
    let mut no_model = value.clone();
    no_model["model"] = json!(null);
    cases.push(("no-model", no_model));
    let mut bad_merges = value.clone();
    bad_merges["model"]["merges"] = json!(["zzzz qqqq", "a"]);
    cases.push(("bad-merges", bad_merges));
    let mut bad_added = value.clone();
    bad_added["added_tokens"] = json!([{"id": u32::MAX, "content": "<s>", "special": true}]);
    cases.push(("added-token-id", bad_added));
    let mut no_specials = value.clone();
    no_specials["post_processor"] = json!(null);
    no_specials["added_tokens"] = json!([]);
    no_specials["model"]["vocab"] = json!({"a": 0, "b": 1});
    no_specials["model"]["merges"] = json!([]);
    cases.push(("no-special-tokens", no_specials));
    let mut huge_id = value.clone();
    huge_id["model"]["vocab"] = json!({"<s>": 0, "</s>": u32::MAX, "<pad>": 1});
    cases.push(("huge-vocab-id", huge_id));
    let mut split = value.clone();
    split["pre_tokenizer"] = json!({"type": "Split", "pattern": {"Regex": "(((("}, "behavior": "Isolated", "invert": false});
    cases.push(("bad-regex", split));
    let mut charsmap = value.clone();
    charsmap["normalizer"] =
        json!({"type": "Precompiled", "precompiled_charsmap": "AAAAAAAAAAAAAAAAAAA="});
    cases.push(("bad-charsmap", charsmap));
    let mut template = value.clone();
    template["post_processor"] = json!({"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}], "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [], "tokens": ["<s>"]}}});
    cases.push(("template-without-ids", template));
    for (case, value) in cases {
        let dir = tokenizer_dir(case, &serde_json::to_vec(&value).unwrap());
        std::fs::copy(
            fixture("tokenizer/tokenizer_config.json"),
            dir.join("tokenizer_config.json"),
        )
        .unwrap();
        // Every case is refused at load (the tokenizers crate panics on the charsmap one),
        // and nothing panics.
        let err = TextTokenizer::from_dir(&dir)
            .and_then(|t| t.encode("a dog barking <s> </s> <mask>", 16))
            .unwrap_err()
            .to_string();
        println!("{case}: {err}");
        assert!(err.contains(dir.to_str().unwrap()), "{case}: {err}");
        match case {
            "bad-charsmap" => assert!(err.contains("tokenizers library failed"), "{err}"),
            "template-without-ids" => assert!(err.contains("post-processor"), "{err}"),
            _ => {}
        }
    }
}

/// A SentencePiece charsmap as `tokenizer.json` holds it: base64 of a little-endian u32 trie size
/// in bytes, the trie's u32 words, then the normalised strings.
fn charsmap(declared_trie_bytes: u32, trie: &[u32], normalized: &[u8]) -> String {
    let mut blob = declared_trie_bytes.to_le_bytes().to_vec();
    blob.extend(trie.iter().flat_map(|w| w.to_le_bytes()));
    blob.extend_from_slice(normalized);
    base64::encode(blob)
}

/// A real one: a double array that maps "A" to "a" and nothing else (257 words: the root, whose
/// offset 0 sends byte `c` to word `c`, each labelled 0 so that no byte matches but `A`, whose word
/// has label 0x41, a leaf flag and offset 0x141, which leads to word 256 holding value 0: the
/// offset of "a\0" in the strings).
fn a_to_lowercase() -> String {
    let mut trie = vec![0u32; 257];
    trie[0x41] = 0x41 | (1 << 8) | (0x141 << 10);
    charsmap(257 * 4, &trie, b"a\0")
}

/// The tiny fixture's `tokenizer.json` with `normalizer` set, in a folder with its config.
fn tokenizer_with_normalizer(case: &str, normalizer: Value) -> PathBuf {
    let real = std::fs::read(fixture("tokenizer/tokenizer.json")).unwrap();
    let mut value: Value = serde_json::from_slice(&real).unwrap();
    value["normalizer"] = normalizer;
    tokenizer_folder(case, &serde_json::to_vec(&value).unwrap())
}

fn tokenizer_folder(case: &str, text: &[u8]) -> PathBuf {
    let dir = tokenizer_dir(case, text);
    std::fs::copy(
        fixture("tokenizer/tokenizer_config.json"),
        dir.join("tokenizer_config.json"),
    )
    .unwrap();
    dir
}

/// 4 GiB less a word: the tokenizers crate (spm_precompiled) would reserve `declared / 4` words of
/// 8 bytes, 8 GiB, before reading the trie, and an allocation that fails aborts the process.
const HUGE_TRIE: u32 = u32::MAX - 3;

fn huge_trie() -> Value {
    json!({"type": "Precompiled", "precompiled_charsmap": charsmap(HUGE_TRIE, &[0, 0], b"")})
}

/// A charsmap that declares more trie than it holds is refused before the tokenizers crate sees
/// the file, wherever the crate would build it (the normaliser, one inside a `Sequence`, a
/// `normalizer` key that a later one repeats); a charsmap that holds its trie loads and
/// normalises.
#[test]
fn a_charsmap_that_claims_more_trie_than_it_holds_is_refused() {
    let sequence = |inner: Value| json!({"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Sequence", "normalizers": [inner]}]});
    let mut cases = vec![
        (
            "huge-trie",
            huge_trie(),
            "declares a trie of 4294967292 bytes but holds 8 after",
        ),
        (
            "huge-trie-in-a-sequence",
            sequence(huge_trie()),
            "declares a trie of 4294967292 bytes",
        ),
        (
            "trie-past-the-end",
            json!({"type": "Precompiled", "precompiled_charsmap": charsmap(16, &[0, 0, 0], b"")}),
            "declares a trie of 16 bytes but holds 12 after",
        ),
        (
            "trie-of-part-words",
            json!({"type": "Precompiled", "precompiled_charsmap": charsmap(6, &[0, 0], b"")}),
            "declares a trie of 6 bytes, not whole 4-byte words",
        ),
        (
            "no-trie-size",
            json!({"type": "Precompiled", "precompiled_charsmap": "AAA="}),
            "holds 2 bytes, too few",
        ),
        (
            "charsmap-not-base64",
            json!({"type": "Precompiled", "precompiled_charsmap": "not base64!"}),
            "is not base64",
        ),
    ];
    // The crate builds every `normalizer` entry it meets, the first of two as well.
    let real = std::fs::read(fixture("tokenizer/tokenizer.json")).unwrap();
    let compact = serde_json::to_string(&serde_json::from_slice::<Value>(&real).unwrap()).unwrap();
    let repeated = compact.replacen(
        "\"normalizer\":null",
        &format!("\"normalizer\":{},\"normalizer\":null", huge_trie()),
        1,
    );
    assert_ne!(repeated, compact);
    let repeated_dir = tokenizer_folder("huge-trie-repeated-key", repeated.as_bytes());
    for (case, normalizer, words) in cases.drain(..) {
        let dir = tokenizer_with_normalizer(case, normalizer);
        let err = TextTokenizer::from_dir(&dir).unwrap_err().to_string();
        println!("{case}: {err}");
        assert!(
            err.contains(dir.join("tokenizer.json").to_str().unwrap()),
            "{case}: {err}"
        );
        assert!(err.contains(words), "{case}: {err}");
        assert!(!err.contains("tokenizers library failed"), "{case}: {err}");
    }
    let err = TextTokenizer::from_dir(&repeated_dir)
        .unwrap_err()
        .to_string();
    assert!(err.contains("declares a trie of 4294967292 bytes"), "{err}");

    // A charsmap that holds what it declares loads, and maps "A" to "a", alone or in a sequence.
    let plain = TextTokenizer::from_dir(&fixture("tokenizer")).unwrap();
    assert_ne!(
        plain.encode("A dog", 16).unwrap(),
        plain.encode("a dog", 16).unwrap()
    );
    for (case, normalizer) in [
        (
            "real-charsmap",
            json!({"type": "Precompiled", "precompiled_charsmap": a_to_lowercase()}),
        ),
        (
            "real-charsmap-in-a-sequence",
            sequence(json!({"type": "Precompiled", "precompiled_charsmap": a_to_lowercase()})),
        ),
    ] {
        let tokenizer = TextTokenizer::from_dir(&tokenizer_with_normalizer(case, normalizer))
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(
            tokenizer.encode("A dog", 16).unwrap(),
            plain.encode("a dog", 16).unwrap(),
            "{case}"
        );
    }
}

/// The environment variable that makes [`a_huge_trie_claim_is_an_error_under_a_4_gib_address_space`]
/// the child: the folder to load, and how (`bounded`: the pipeline's loader; `crate`: the tokenizers
/// crate alone, as the loader handed it the file before the bound).
const CHILD: &str = "AUDIOLDM_HOSTILE_TOKENIZER_CHILD";

/// Where memory cannot be overcommitted, an allocation the system cannot give aborts the process,
/// which no `catch_unwind` holds. Under a 4 GiB address-space limit, loading a `tokenizer.json`
/// whose charsmap claims a 4 GiB trie through the tokenizers crate alone aborts ("memory
/// allocation of 8589934584 bytes failed"): the control. The pipeline's loader, in the same
/// limit, returns the error and the process exits normally.
#[cfg(target_os = "linux")]
#[test]
fn a_huge_trie_claim_is_an_error_under_a_4_gib_address_space() {
    if let Ok(child) = std::env::var(CHILD) {
        let (how, dir) = child.split_once(':').expect("how:folder");
        let dir = Path::new(dir);
        match how {
            "bounded" => match TextTokenizer::from_dir(dir) {
                Ok(_) => panic!("the huge trie loaded"),
                Err(e) => println!("refused: {e}"),
            },
            _ => {
                let bytes = std::fs::read(dir.join("tokenizer.json")).unwrap();
                let loaded = tokenizers::Tokenizer::from_bytes(&bytes).map(|_| ());
                println!("the crate returned: {loaded:?}");
            }
        }
        return;
    }
    let dir = tokenizer_with_normalizer("huge-trie-child", huge_trie());
    let run = |how: &str| {
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg("ulimit -c 0; ulimit -v 4194304 && exec \"$0\" \"$@\"")
            .arg(std::env::current_exe().unwrap())
            .args([
                "a_huge_trie_claim_is_an_error_under_a_4_gib_address_space",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, format!("{how}:{}", dir.display()))
            .output()
            .expect("run the child");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        println!("{how}: {}\n{text}", output.status);
        (output.status, text)
    };
    let (status, text) = run("crate");
    assert!(!status.success(), "the control did not abort: {text}");
    assert!(text.contains("memory allocation of"), "{text}");
    let (status, text) = run("bounded");
    assert!(status.success(), "{status}: {text}");
    assert!(
        text.contains("refused: tokenizer: ")
            && text.contains("declares a trie of 4294967292 bytes"),
        "{text}"
    );
}

#[test]
fn special_and_oversized_files_are_refused() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostile-special");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // A config that is a FIFO: refused at once instead of blocking the load.
    let fifo_dir = dir.join("fifo-vae");
    std::fs::create_dir_all(&fifo_dir).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(fifo_dir.join("config.json"))
        .status()
        .unwrap();
    assert!(made.success());
    let err = AutoencoderKL::load(&loader(), &fifo_dir)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not a regular file"), "{err}");
    // A config of 2 MiB (the real ones are under 2 KB).
    let big_dir = dir.join("big-vae");
    std::fs::create_dir_all(&big_dir).unwrap();
    let padding = " ".repeat(2 << 20);
    std::fs::write(big_dir.join("config.json"), format!("{{{padding}}}")).unwrap();
    let err = AutoencoderKL::load(&loader(), &big_dir)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("config.json") && err.contains("bytes"),
        "{err}"
    );
}

/// Seventy up-sampling stages with matching kernels passed the list checks and then shifted
/// `upsample_initial_channel` by 70 bits (an overflow panic with debug assertions): the stage
/// count is now checked first.
#[test]
fn a_vocoder_with_too_many_stages_is_refused_before_any_arithmetic() {
    let text = std::fs::read_to_string(fixture("vocoder/config.json")).unwrap();
    let mut config: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
    config.insert("upsample_rates".into(), json!(vec![1; 70]));
    config.insert("upsample_kernel_sizes".into(), json!(vec![1; 70]));
    let config: audioldm::model::vocoder::SpeechT5HifiGanConfig =
        serde_json::from_value(Value::Object(config)).unwrap();
    let err = config
        .validate(Path::new("vocoder/config.json"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("the number of upsample_rates is 70"), "{err}");
}
