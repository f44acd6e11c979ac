//! The prompt tokenizer: RoBERTa's byte-level BPE (`RobertaTokenizerFast` in transformers), through
//! the `tokenizers` crate that backs it.
//!
//! A tokenizer folder is read from its `tokenizer.json` when present, else rebuilt from
//! `vocab.json` + `merges.txt` as transformers does for RoBERTa: ByteLevel pre-tokenizer (no prefix
//! space, GPT-2 regex) and decoder, RoBERTa post-processing (`<s> … </s>`), and the special tokens
//! of `tokenizer_config.json` (RoBERTa's names by default; `<mask>` strips the space on its left).
//!
//! [`TextTokenizer::encode`] gives what `tokenizer(text, padding="max_length", max_length=n,
//! truncation=True)` gives without its pads: the BPE tokens cut to `n - 2`, then `<s>` and `</s>`
//! around them. The empty prompt is `[<s>, </s>]` = `[0, 2]`.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{AddedToken, PostProcessor, PostProcessorWrapper, Tokenizer, TruncationDirection};

use crate::error::{Error, Result};

/// `model_max_length` when `tokenizer_config.json` does not give one: the pipeline's 512 (RoBERTa's
/// 514 positions less the two that the padding convention skips).
pub const DEFAULT_MODEL_MAX_LENGTH: usize = 512;

/// The result of [`TextTokenizer::encode_full`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// `<s>`, the kept BPE tokens, `</s>`.
    pub ids: Vec<u32>,
    /// How many BPE tokens the truncation dropped (diffusers logs them as a warning).
    pub dropped: usize,
}

/// RoBERTa's byte-level BPE tokenizer with its special-token ids.
pub struct TextTokenizer {
    inner: Tokenizer,
    dir: PathBuf,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    /// Tokens the post-processor adds to one sequence (2: `<s>`, `</s>`).
    added: usize,
    model_max_length: usize,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("dir", &self.dir)
            .field("vocab", &self.vocab_size())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("pad_id", &self.pad_id)
            .field("model_max_length", &self.model_max_length)
            .finish()
    }
}

/// `tokenizer_config.json`, where present: special-token names and `model_max_length`.
#[derive(Default)]
struct TokenizerConfig(Option<Value>);

impl TokenizerConfig {
    fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer_config.json");
        if !crate::untrusted::is_file(&path) {
            return Ok(Self(None));
        }
        let text = crate::untrusted::read_text(&path, MAX_TOKENIZER_BYTES)?;
        let value = serde_json::from_str(&text).map_err(|e| Error::Config {
            path,
            message: e.to_string(),
        })?;
        Ok(Self(Some(value)))
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.0.as_ref().and_then(|v| v.get(key))
    }

    /// A special token: a string, or an `AddedToken` object with `content` and flags.
    fn token(&self, key: &str, default: &str) -> (String, bool, bool) {
        match self.get(key) {
            Some(Value::String(s)) => (s.clone(), false, false),
            Some(Value::Object(o)) => (
                o.get("content")
                    .and_then(Value::as_str)
                    .unwrap_or(default)
                    .to_string(),
                o.get("lstrip").and_then(Value::as_bool).unwrap_or(false),
                o.get("rstrip").and_then(Value::as_bool).unwrap_or(false),
            ),
            _ => (default.to_string(), false, false),
        }
    }

    fn token_name(&self, key: &str, default: &str) -> String {
        self.token(key, default).0
    }

    fn add_prefix_space(&self) -> bool {
        self.get("add_prefix_space")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// transformers stores "no limit" as a huge float (1e30); anything beyond 2^32 counts as unset.
    fn model_max_length(&self) -> usize {
        self.get("model_max_length")
            .and_then(Value::as_f64)
            .filter(|n| (1.0..4_294_967_296.0).contains(n))
            .map_or(DEFAULT_MODEL_MAX_LENGTH, |n| n as usize)
    }
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{}: {e}", path.display()))
}

/// The largest tokenizer file read (the real `tokenizer.json` is 2.1 MB).
pub const MAX_TOKENIZER_BYTES: u64 = 64 << 20;

/// Runs a call into the tokenizers crate, which panics on some malformed input, with the panic
/// turned into an error naming `path`.
fn isolated<T>(path: &Path, f: impl FnOnce() -> T) -> Result<T> {
    crate::untrusted::catch_panic(f).map_err(|panic| {
        tok_err(
            path,
            format!("the tokenizers library failed on this input ({panic})"),
        )
    })
}

/// Checks the SentencePiece normalisers (`"type": "Precompiled"`) of a `tokenizer.json` before
/// the tokenizers crate reads it. Their `precompiled_charsmap` is base64 of a blob: a
/// little-endian u32 trie size in bytes, the trie (u32 words), then the normalised strings. The
/// crate (`spm_precompiled::Precompiled::from`) reserves `trie_size / 4` words of 8 bytes before
/// reading any, so a blob that declares a 4 GiB trie has it ask for 8 GiB whatever the file
/// holds; where that cannot be had (a 4 GiB address-space limit, no overcommit) the allocator
/// aborts the process, which no `catch_unwind` holds. Refused here: a blob too short for its
/// header, and a trie that is not whole words or larger than the bytes after the header. What
/// the crate then reserves is at most twice the blob, itself bounded by the file's size.
///
/// Every `normalizer` entry of the top-level object is checked as the crate reads them: in
/// order, each (a repeated key included: the crate builds each one), and every charsmap within
/// it (a `Sequence` nests normalisers). A file that is not JSON, or whose top level is not an
/// object, is left to the crate to refuse: it stops where this parse stops, having built only the
/// normalisers checked before that point.
fn check_precompiled_charsmaps(json: &[u8]) -> std::result::Result<(), String> {
    use serde::de::{Deserializer as _, Error as _, IgnoredAny, MapAccess, Visitor};

    struct Normalizers<'a>(&'a mut Option<String>);

    impl<'de> Visitor<'de> for Normalizers<'_> {
        type Value = ();

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a tokenizer.json object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
            while let Some(key) = map.next_key::<String>()? {
                if key != "normalizer" {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                let normalizer: Value = map.next_value()?;
                if let Err(problem) = check_charsmaps_in(&normalizer) {
                    *self.0 = Some(problem);
                    return Err(A::Error::custom("refused"));
                }
            }
            Ok(())
        }
    }

    let mut problem = None;
    let _ = serde_json::Deserializer::from_slice(json).deserialize_map(Normalizers(&mut problem));
    problem.map_or(Ok(()), Err)
}

/// Every `precompiled_charsmap` string within `normalizer` (see [`check_precompiled_charsmaps`]).
fn check_charsmaps_in(normalizer: &Value) -> std::result::Result<(), String> {
    let mut pending = vec![normalizer];
    while let Some(value) = pending.pop() {
        match value {
            Value::Array(items) => pending.extend(items),
            Value::Object(fields) => {
                if let Some(Value::String(charsmap)) = fields.get("precompiled_charsmap") {
                    check_charsmap(charsmap)?;
                }
                pending.extend(fields.values());
            }
            _ => {}
        }
    }
    Ok(())
}

/// One `precompiled_charsmap`, decoded as the tokenizers crate decodes it (`base64` 0.13).
fn check_charsmap(charsmap: &str) -> std::result::Result<(), String> {
    let blob = base64::decode(charsmap).map_err(|e| {
        format!("the precompiled_charsmap of its Precompiled normalizer is not base64 ({e})")
    })?;
    let Some((header, rest)) = blob.split_first_chunk::<4>() else {
        return Err(format!(
            "the precompiled_charsmap of its Precompiled normalizer holds {} bytes, too few for \
             the 4-byte trie size it starts with",
            blob.len()
        ));
    };
    let declared = u32::from_le_bytes(*header);
    if declared % 4 != 0 {
        return Err(format!(
            "the precompiled_charsmap of its Precompiled normalizer declares a trie of {declared} \
             bytes, not whole 4-byte words: the file is damaged"
        ));
    }
    if declared as usize > rest.len() {
        return Err(format!(
            "the precompiled_charsmap of its Precompiled normalizer declares a trie of {declared} \
             bytes but holds {} after its 4-byte header: the file is damaged (the tokenizers \
             library would reserve {} bytes for that trie before reading it)",
            rest.len(),
            u64::from(declared / 4) * 8
        ));
    }
    Ok(())
}

impl TextTokenizer {
    /// Loads the tokenizer of a pipeline's `tokenizer/` folder: `tokenizer.json`, or else
    /// `vocab.json` + `merges.txt`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        if !crate::untrusted::is_dir(dir) {
            return Err(Error::Tokenizer(format!(
                "{}: no such tokenizer folder (expected tokenizer.json, or vocab.json and \
                 merges.txt)",
                dir.display()
            )));
        }
        let config = TokenizerConfig::read(dir)?;
        let json = dir.join("tokenizer.json");
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        let inner = if crate::untrusted::is_file(&json) {
            let bytes = crate::untrusted::read_bounded(&json, MAX_TOKENIZER_BYTES)?;
            // An allocation the crate cannot make aborts the process: refused before it tries.
            check_precompiled_charsmaps(&bytes).map_err(|e| tok_err(&json, e))?;
            // The tokenizers crate panics on some malformed files: held here as an error.
            isolated(&json, || Tokenizer::from_bytes(&bytes))?.map_err(|e| {
                let e = e.to_string();
                let hint = if e.contains("EOF") {
                    "; the file ends early: if it was downloaded, the download may have been \
                     cut short (delete it and fetch it again)"
                } else {
                    ""
                };
                tok_err(&json, format!("cannot be read ({e}){hint}"))
            })?
        } else if crate::untrusted::is_file(&vocab) && crate::untrusted::is_file(&merges) {
            for file in [&vocab, &merges] {
                crate::untrusted::read_bounded(file, MAX_TOKENIZER_BYTES)?;
            }
            isolated(&vocab, || Self::build_roberta(&config, &vocab, &merges))??
        } else {
            return Err(Error::Tokenizer(format!(
                "{}: found neither tokenizer.json nor vocab.json and merges.txt",
                dir.display()
            )));
        };
        Self::from_tokenizer(inner, dir, &config)
    }

    /// Byte-level BPE with RoBERTa's post-processing, from `vocab.json` and `merges.txt`.
    fn build_roberta(config: &TokenizerConfig, vocab: &Path, merges: &Path) -> Result<Tokenizer> {
        let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
            .build()
            .map_err(|e| tok_err(vocab, e))?;
        let add_prefix_space = config.add_prefix_space();
        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer
            .with_pre_tokenizer(Some(
                ByteLevel::default()
                    .add_prefix_space(add_prefix_space)
                    .trim_offsets(true)
                    .use_regex(true),
            ))
            .with_decoder(Some(ByteLevelDecoder::default()));
        let id = |name: &str| {
            tokenizer.token_to_id(name).ok_or_else(|| {
                tok_err(
                    vocab,
                    format!("special token `{name}` is not in the vocabulary"),
                )
            })
        };
        let cls = config.token_name("cls_token", "<s>");
        let sep = config.token_name("sep_token", "</s>");
        let processor = RobertaProcessing::new((sep.clone(), id(&sep)?), (cls.clone(), id(&cls)?))
            .trim_offsets(true)
            .add_prefix_space(add_prefix_space);
        tokenizer.with_post_processor(Some(processor));
        // RobertaTokenizer's special tokens; its `<mask>` swallows the space before it.
        let specials = [
            ("bos_token", "<s>", false),
            ("pad_token", "<pad>", false),
            ("eos_token", "</s>", false),
            ("unk_token", "<unk>", false),
            ("sep_token", "</s>", false),
            ("cls_token", "<s>", false),
            ("mask_token", "<mask>", true),
        ];
        let mut added: Vec<AddedToken> = Vec::new();
        for (key, default, mask) in specials {
            let (content, lstrip, rstrip) = config.token(key, default);
            if added.iter().any(|t| t.content == content) {
                continue;
            }
            added.push(
                AddedToken::from(content, true)
                    .lstrip(lstrip || mask)
                    .rstrip(rstrip)
                    .normalized(false),
            );
        }
        tokenizer
            .add_special_tokens(added)
            .map_err(|e| tok_err(vocab, e))?;
        Ok(tokenizer)
    }

    fn from_tokenizer(mut inner: Tokenizer, dir: &Path, config: &TokenizerConfig) -> Result<Self> {
        // The pipeline's padding and truncation are applied by `encode`, not by the file's settings
        // (the real tokenizer.json pads to the longest of a batch).
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| tok_err(dir, e))?;
        let named = |key: &str, default: &str| {
            let name = config.token_name(key, default);
            inner
                .token_to_id(&name)
                .ok_or_else(|| tok_err(dir, format!("special token `{name}` is unknown")))
        };
        let (bos_id, eos_id) = match inner.get_post_processor() {
            Some(PostProcessorWrapper::Roberta(r)) => (r.get_cls_copy().1, r.get_sep_copy().1),
            _ => (named("bos_token", "<s>")?, named("eos_token", "</s>")?),
        };
        let pad_id = match inner.get_padding() {
            Some(p) => p.pad_id,
            None => named("pad_token", "<pad>")?,
        };
        let added = inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        let tokenizer = Self {
            inner,
            dir: dir.to_path_buf(),
            bos_id,
            eos_id,
            pad_id,
            added,
            model_max_length: config.model_max_length(),
        };
        // The text encoder pools the `<s>` it relies on finding first, so a file whose
        // post-processor does not frame the tokens is refused now, not after a silent mismatch.
        let probe = tokenizer.encode("a", 16)?;
        if probe.first() != Some(&bos_id) || probe.last() != Some(&eos_id) || probe.len() < 3 {
            return Err(tok_err(
                dir,
                format!(
                    "its post-processor does not frame a text as <s> tokens </s> (ids {bos_id} \
                     ... {eos_id}): \"a\" encodes as {probe:?}"
                ),
            ));
        }
        Ok(tokenizer)
    }

    /// `<s> tokens </s>` with the tokens cut so that the whole is at most `max_len` long, as
    /// transformers' `truncation=True, max_length=max_len` (no padding).
    pub fn encode(&self, text: &str, max_len: usize) -> Result<Vec<u32>> {
        Ok(self.encode_full(text, max_len)?.ids)
    }

    /// [`encode`](Self::encode), also saying how many tokens the truncation dropped.
    pub fn encode_full(&self, text: &str, max_len: usize) -> Result<Encoded> {
        if max_len < self.added {
            return Err(Error::Input(format!(
                "a token limit of {max_len} leaves no room for the {} special tokens",
                self.added
            )));
        }
        let keep = max_len - self.added;
        let (encoding, dropped) = isolated(&self.dir, || {
            let mut encoding = self.inner.encode(text, false)?;
            let dropped = encoding.len().saturating_sub(keep);
            encoding.truncate(keep, 0, TruncationDirection::Right);
            self.inner
                .post_process(encoding, None, true)
                .map(|encoding| (encoding, dropped))
        })?
        .map_err(|e| tok_err(&self.dir, e))?;
        Ok(Encoded {
            ids: encoding.get_ids().to_vec(),
            dropped,
        })
    }

    /// The text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| tok_err(&self.dir, e))
    }

    /// `<s>`: 0 for RoBERTa.
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    /// `</s>`: 2 for RoBERTa.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// `<pad>`: 1 for RoBERTa (also the text encoder's `padding_idx`).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The pipeline's token limit (`model_max_length` of `tokenizer_config.json`, 512).
    pub fn model_max_length(&self) -> usize {
        self.model_max_length
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}
