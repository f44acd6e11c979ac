//! The text side: the tokenizer against transformers' ids (tiny and real tokenizers), and the CLAP
//! text encoder against the pipeline's embeddings and an f64 CPU reference that pads and masks as
//! transformers does.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use audioldm::Error;
use audioldm::checkpoint::Checkpoint;
use audioldm::engine::{DType, Graph, Tensor};
use audioldm::model::clap_text::{ClapTextConfig, ClapTextModelWithProjection};
use audioldm::model::nn::{Embedding, Loader, Precision};
use audioldm::model::tokenizer::TextTokenizer;
use common::real_tokenizer::{self, real_ids};
use common::{ctx, max_rel_err, model_ctx};

/// `PROMPT` and `NEGATIVE` of scripts/reference/make_reference.py (also in the goldens' metadata).
const PROMPT: &str = "a dog barking in the rain, then thunder!";
const NEGATIVE: &str = "low quality, noisy, distorted, muffled, clipping, hum, static, silence, wind, crowd talking, music";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn tiny() -> PathBuf {
    fixtures().join("tiny")
}

/// The real tokenizer of cvssp/audioldm-s-full-v2, committed with its configs
/// (`tests/fixtures/audioldm-s-full-v2/`).
fn real_tokenizer_dir() -> PathBuf {
    fixtures().join("audioldm-s-full-v2/tokenizer")
}

fn goldens() -> Checkpoint {
    Checkpoint::open(&fixtures().join("tiny-goldens.safetensors")).expect("goldens")
}

fn golden_ids(name: &str) -> Vec<u32> {
    let (_, ids) = goldens().i64_any(name).expect(name);
    ids.into_iter().map(|i| i as u32).collect()
}

fn tiny_tokenizer() -> TextTokenizer {
    TextTokenizer::from_dir(&tiny().join("tokenizer")).expect("tiny tokenizer")
}

fn tiny_model(precision: Precision) -> ClapTextModelWithProjection {
    let loader = Loader {
        ctx: model_ctx(),
        precision,
    };
    ClapTextModelWithProjection::load(&loader, &tiny().join("text_encoder"))
        .expect("tiny text encoder")
}

fn l2_normalize(x: &[f64]) -> Vec<f64> {
    let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
    x.iter().map(|v| v / norm).collect()
}

// ---------------------------------------------------------------------------------------------
// An f64 CPU reference of ClapTextModelWithProjection that pads and masks like transformers.

struct CpuLinear {
    w: Vec<f64>,
    b: Vec<f64>,
    inputs: usize,
    outputs: usize,
}

impl CpuLinear {
    fn load(ckpt: &Checkpoint, name: &str, inputs: usize, outputs: usize) -> Self {
        let w = ckpt
            .f32(&format!("{name}.weight"), &[outputs, inputs])
            .expect(name);
        let b = ckpt.f32(&format!("{name}.bias"), &[outputs]).expect(name);
        Self {
            w: common::f64s(&w),
            b: common::f64s(&b),
            inputs,
            outputs,
        }
    }

    fn apply(&self, x: &[f64]) -> Vec<f64> {
        let rows = x.len() / self.inputs;
        let mut y = vec![0.0; rows * self.outputs];
        for r in 0..rows {
            let xr = &x[r * self.inputs..(r + 1) * self.inputs];
            for o in 0..self.outputs {
                let wr = &self.w[o * self.inputs..(o + 1) * self.inputs];
                y[r * self.outputs + o] =
                    self.b[o] + xr.iter().zip(wr).map(|(a, b)| a * b).sum::<f64>();
            }
        }
        y
    }
}

struct CpuNorm {
    gamma: Vec<f64>,
    beta: Vec<f64>,
    eps: f64,
}

impl CpuNorm {
    fn load(ckpt: &Checkpoint, name: &str, d: usize, eps: f64) -> Self {
        Self {
            gamma: common::f64s(&ckpt.f32(&format!("{name}.weight"), &[d]).expect(name)),
            beta: common::f64s(&ckpt.f32(&format!("{name}.bias"), &[d]).expect(name)),
            eps,
        }
    }

    fn apply(&self, x: &[f64]) -> Vec<f64> {
        let d = self.gamma.len();
        let mut y = Vec::with_capacity(x.len());
        for row in x.chunks(d) {
            let mean = row.iter().sum::<f64>() / d as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
            let inv = 1.0 / (var + self.eps).sqrt();
            y.extend(
                row.iter()
                    .enumerate()
                    .map(|(i, v)| (v - mean) * inv * self.gamma[i] + self.beta[i]),
            );
        }
        y
    }
}

struct CpuLayer {
    q: CpuLinear,
    k: CpuLinear,
    v: CpuLinear,
    attn_out: CpuLinear,
    attn_norm: CpuNorm,
    inter: CpuLinear,
    out: CpuLinear,
    out_norm: CpuNorm,
}

struct CpuClap {
    c: ClapTextConfig,
    word: Vec<f64>,
    pos: Vec<f64>,
    token_type: Vec<f64>,
    norm: CpuNorm,
    layers: Vec<CpuLayer>,
    pooler: CpuLinear,
    p1: CpuLinear,
    p2: CpuLinear,
}

impl CpuClap {
    fn load(dir: &Path) -> Self {
        let c: ClapTextConfig = audioldm::model::load_config(dir).expect("config");
        let ckpt = Checkpoint::open_dir(dir).expect("checkpoint");
        let (h, i, p, eps) = (
            c.hidden_size,
            c.intermediate_size,
            c.projection_dim,
            c.layer_norm_eps,
        );
        let table = |name: &str, rows: usize| {
            common::f64s(
                &ckpt
                    .f32(&format!("text_model.embeddings.{name}.weight"), &[rows, h])
                    .expect(name),
            )
        };
        let layers = (0..c.num_hidden_layers)
            .map(|l| {
                let n = |s: &str| format!("text_model.encoder.layer.{l}.{s}");
                CpuLayer {
                    q: CpuLinear::load(&ckpt, &n("attention.self.query"), h, h),
                    k: CpuLinear::load(&ckpt, &n("attention.self.key"), h, h),
                    v: CpuLinear::load(&ckpt, &n("attention.self.value"), h, h),
                    attn_out: CpuLinear::load(&ckpt, &n("attention.output.dense"), h, h),
                    attn_norm: CpuNorm::load(&ckpt, &n("attention.output.LayerNorm"), h, eps),
                    inter: CpuLinear::load(&ckpt, &n("intermediate.dense"), h, i),
                    out: CpuLinear::load(&ckpt, &n("output.dense"), i, h),
                    out_norm: CpuNorm::load(&ckpt, &n("output.LayerNorm"), h, eps),
                }
            })
            .collect();
        Self {
            word: table("word_embeddings", c.vocab_size),
            pos: table("position_embeddings", c.max_position_embeddings),
            token_type: table("token_type_embeddings", c.type_vocab_size),
            norm: CpuNorm::load(&ckpt, "text_model.embeddings.LayerNorm", h, eps),
            layers,
            pooler: CpuLinear::load(&ckpt, "text_model.pooler.dense", h, h),
            p1: CpuLinear::load(&ckpt, "text_projection.linear1", h, p),
            p2: CpuLinear::load(&ckpt, "text_projection.linear2", p, p),
            c,
        }
    }

    /// `text_embeds` of one sequence as transformers computes it: `ids` padded to `pad_to` with
    /// `<pad>`, the attention mask 1 on the given ids (pads written in the text included) and 0 on
    /// the padding, masked scores `+ f32::MIN`.
    fn text_embeds(&self, ids: &[u32], pad_to: usize) -> Vec<f64> {
        let c = &self.c;
        let (h, heads) = (c.hidden_size, c.num_attention_heads);
        let d = h / heads;
        let pad = c.pad_token_id.unwrap();
        let n = pad_to.max(ids.len());
        let mut all = ids.to_vec();
        all.resize(n, pad);
        let mask: Vec<bool> = (0..n).map(|t| t < ids.len()).collect();
        let mut count = 0;
        let positions: Vec<usize> = all
            .iter()
            .map(|&id| {
                if id == pad {
                    pad as usize
                } else {
                    count += 1;
                    (pad + count) as usize
                }
            })
            .collect();
        let mut x = vec![0.0; n * h];
        for t in 0..n {
            for j in 0..h {
                x[t * h + j] = self.word[all[t] as usize * h + j]
                    + self.token_type[j]
                    + self.pos[positions[t] * h + j];
            }
        }
        let mut x = self.norm.apply(&x);
        for layer in &self.layers {
            let (q, k, v) = (layer.q.apply(&x), layer.k.apply(&x), layer.v.apply(&x));
            let mut a = vec![0.0; n * h];
            let scale = 1.0 / (d as f64).sqrt();
            for hd in 0..heads {
                for i in 0..n {
                    let scores: Vec<f64> = (0..n)
                        .map(|j| {
                            let dot: f64 = (0..d)
                                .map(|e| q[i * h + hd * d + e] * k[j * h + hd * d + e])
                                .sum();
                            dot * scale + if mask[j] { 0.0 } else { f32::MIN as f64 }
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = exps.iter().sum();
                    for e in 0..d {
                        a[i * h + hd * d + e] =
                            (0..n).map(|j| exps[j] / sum * v[j * h + hd * d + e]).sum();
                    }
                }
            }
            let y: Vec<f64> = layer
                .attn_out
                .apply(&a)
                .iter()
                .zip(&x)
                .map(|(a, b)| a + b)
                .collect();
            x = layer.attn_norm.apply(&y);
            let inter: Vec<f64> = layer
                .inter
                .apply(&x)
                .iter()
                .map(|&v| 0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2)))
                .collect();
            let y: Vec<f64> = layer
                .out
                .apply(&inter)
                .iter()
                .zip(&x)
                .map(|(a, b)| a + b)
                .collect();
            x = layer.out_norm.apply(&y);
        }
        let pooled: Vec<f64> = self
            .pooler
            .apply(&x[..h])
            .iter()
            .map(|v| v.tanh())
            .collect();
        let hidden: Vec<f64> = self.p1.apply(&pooled).iter().map(|v| v.max(0.0)).collect();
        self.p2.apply(&hidden)
    }
}

// ---------------------------------------------------------------------------------------------
// Tokenizer.

#[test]
fn tiny_tokenizer_matches_the_reference_ids() {
    let tok = tiny_tokenizer();
    assert_eq!((tok.bos_id(), tok.pad_id(), tok.eos_id()), (0, 1, 2));
    assert_eq!(tok.model_max_length(), 512);
    assert_eq!(tok.encode(PROMPT, 512).unwrap(), golden_ids("prompt_ids"));
    // diffusers truncates the negative prompt at the projection size (24 in the tiny model).
    let negative = tok.encode(NEGATIVE, 24).unwrap();
    assert_eq!(negative, golden_ids("negative_ids"));
    assert_eq!(negative.len(), 24);
    assert_eq!(tok.encode("", 512).unwrap(), golden_ids("empty_ids"));
    assert_eq!(tok.encode("", 512).unwrap(), vec![0, 2]);
}

fn check_against_transformers(tok: &TextTokenizer, what: &str) {
    let matched = real_tokenizer::check_against_transformers(tok, what);
    println!("{what}: {matched} prompts match transformers");
}

#[test]
fn real_tokenizer_matches_transformers() {
    let tok = TextTokenizer::from_dir(&real_tokenizer_dir()).unwrap();
    assert_eq!(tok.vocab_size(), 50265);
    check_against_transformers(&tok, "tokenizer.json");
    // Long prompts are cut to 510 BPE tokens between <s> and </s>, as the pipeline does.
    let long = real_ids()
        .cases
        .into_iter()
        .filter(|c| c.truncated && c.max_length == 512)
        .count();
    assert!(long >= 2);
}

/// Without tokenizer.json the tokenizer is rebuilt from vocab.json + merges.txt and must give the
/// same ids. The files are copied to a temporary folder, never into the project.
#[test]
fn real_tokenizer_from_vocab_and_merges_matches_transformers() {
    let src = real_tokenizer_dir();
    let dir = std::env::temp_dir().join(format!("audioldm-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["vocab.json", "merges.txt", "tokenizer_config.json"] {
        std::fs::copy(src.join(name), dir.join(name)).unwrap();
    }
    let tok = TextTokenizer::from_dir(&dir);
    std::fs::remove_dir_all(&dir).ok();
    check_against_transformers(&tok.unwrap(), "vocab.json + merges.txt");
}

#[test]
fn missing_tokenizer_folder_is_a_clear_error() {
    let missing = fixtures().join("no-such-tokenizer");
    let err = TextTokenizer::from_dir(&missing).unwrap_err();
    println!("{err}");
    assert!(matches!(err, Error::Tokenizer(_)), "{err:?}");
    assert!(err.to_string().contains("no-such-tokenizer"), "{err}");

    let empty = std::env::temp_dir().join(format!("audioldm-tok-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let err = TextTokenizer::from_dir(&empty).unwrap_err();
    std::fs::remove_dir_all(&empty).ok();
    println!("{err}");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");

    // A limit that leaves no room for <s> and </s>.
    let err = tiny_tokenizer().encode("a dog", 1).unwrap_err();
    assert!(matches!(err, Error::Input(_)), "{err:?}");
    assert_eq!(tiny_tokenizer().encode("a dog", 2).unwrap(), vec![0, 2]);
}

// ---------------------------------------------------------------------------------------------
// Text encoder.

/// The pipeline's `_encode_prompt` output: transformers pads the prompt to 512 tokens and the
/// negative prompt to 24 (the projection size) and masks the pads; the engine runs the real tokens
/// only. The golden is that padded reference, so this test is also the padded-vs-real check.
#[test]
fn text_embeddings_match_the_pipeline() {
    let (shape, want) = goldens().f32_any("text_embeds").unwrap();
    assert_eq!(shape, vec![2, 24]);
    let model = tiny_model(Precision::default());
    let tok = tiny_tokenizer();
    let got = model
        .encode_prompts(model_ctx(), &tok, &[PROMPT], Some(&[NEGATIVE]))
        .unwrap();
    assert_eq!(got.dims(), &[2, 24]);
    let got = got.to_vec_f32(model_ctx()).unwrap();
    let err = max_rel_err(&got, &common::f64s(&want));
    println!("text_embeds [negative, prompt] vs diffusers: max rel err {err:.3e}");
    assert!(err <= 1e-4, "max rel err {err:.3e}");

    // The one-row convenience gives the same rows.
    let neg = model
        .embed_text(model_ctx(), &tok, NEGATIVE, model.negative_max_len())
        .unwrap();
    let pos = model
        .embed_text(model_ctx(), &tok, PROMPT, model.prompt_max_len(&tok))
        .unwrap();
    assert_eq!([neg, pos].concat(), got);
}

/// The f64 CPU reference with padding and mask reproduces the golden; without padding it gives the
/// same numbers (the masked pads get softmax weight exactly 0), and the engine's real-token run
/// matches both.
#[test]
fn real_tokens_only_equal_the_padded_masked_run() {
    let cpu = CpuClap::load(&tiny().join("text_encoder"));
    let (_, golden) = goldens().f32_any("text_embeds").unwrap();
    let prompt = golden_ids("prompt_ids");
    let negative = golden_ids("negative_ids");
    let padded = [
        l2_normalize(&cpu.text_embeds(&negative, 24)),
        l2_normalize(&cpu.text_embeds(&prompt, 512)),
    ]
    .concat();
    let golden32: Vec<f32> = golden.clone();
    let cpu_err = max_rel_err(&golden32, &padded);
    println!("golden vs f64 CPU reference (padded, masked): max rel err {cpu_err:.3e}");
    assert!(cpu_err <= 1e-5);

    let unpadded = [
        l2_normalize(&cpu.text_embeds(&negative, 0)),
        l2_normalize(&cpu.text_embeds(&prompt, 0)),
    ]
    .concat();
    let unpadded32: Vec<f32> = unpadded.iter().map(|&v| v as f32).collect();
    let pad_err = max_rel_err(&unpadded32, &padded);
    let exact = unpadded
        .iter()
        .zip(&padded)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    println!("f64 CPU: real tokens only vs padded to 512 with mask: max abs diff {exact:.3e}");
    assert!(exact <= 1e-12, "{exact:.3e} ({pad_err:.3e})");

    let model = tiny_model(Precision::default());
    let engine = model
        .embed_ids(model_ctx(), &[negative, prompt])
        .unwrap()
        .to_vec_f32(model_ctx())
        .unwrap();
    let engine_err = max_rel_err(&engine, &padded);
    println!(
        "{}: real tokens vs f64 CPU padded with mask: max rel err {engine_err:.3e}",
        model_ctx().backend_name()
    );
    assert!(engine_err <= 1e-4);
}

#[test]
fn batched_forward_equals_single_runs() {
    let model = tiny_model(Precision::default());
    let tok = tiny_tokenizer();
    let a = tok.encode("a dog barking in the rain", 512).unwrap();
    let b = tok.encode("loud train passing the bell", 512).unwrap();
    let (a, b) = {
        let n = a.len().min(b.len());
        ([&a[..n - 1], &[2]].concat(), [&b[..n - 1], &[2]].concat())
    };
    let n = a.len();
    let mut g = Graph::new(model_ctx());
    let ids = Tensor::from_u32(model_ctx(), [2, n], &[a.clone(), b.clone()].concat()).unwrap();
    let pos = [model.position_ids(&a), model.position_ids(&b)].concat();
    let pos = Tensor::from_u32(model_ctx(), [2, n], &pos).unwrap();
    let (ids, pos) = (g.input(&ids), g.input(&pos));
    let out = model.forward(&mut g, ids, pos).unwrap();
    let out = g.l2_normalize(out, 1e-12).unwrap();
    let batched = common::run(g, out);
    let single = model
        .embed_ids(model_ctx(), &[a, b])
        .unwrap()
        .to_vec_f32(model_ctx())
        .unwrap();
    let err = max_rel_err(&batched, &common::f64s(&single));
    println!("batch of 2 vs two batch-1 chains: max rel err {err:.3e}");
    assert!(err <= 1e-6);
}

#[test]
fn empty_prompt_encodes() {
    let model = tiny_model(Precision::default());
    let tok = tiny_tokenizer();
    let ids = tok.encode("", model.prompt_max_len(&tok)).unwrap();
    assert_eq!(ids, vec![0, 2]);
    let got = model.embed_text(model_ctx(), &tok, "", 512).unwrap();
    let cpu = CpuClap::load(&tiny().join("text_encoder"));
    let want = l2_normalize(&cpu.text_embeds(&ids, 512));
    let err = max_rel_err(&got, &want);
    println!("empty prompt vs f64 CPU (padded to 512): max rel err {err:.3e}");
    assert!(err <= 1e-4);
    let norm: f32 = got.iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5);
    // No guidance: the prompts' rows only.
    let rows = model
        .encode_prompts(model_ctx(), &tok, &[""], None)
        .unwrap();
    assert_eq!(rows.dims(), &[1, 24]);
}

#[test]
fn long_prompt_is_truncated_like_the_reference() {
    let model = tiny_model(Precision::default());
    let tok = tiny_tokenizer();
    let text = "loud dog barking in the rain, then thunder! ".repeat(80);
    let full = tok.encode(&text, 100_000).unwrap();
    assert!(full.len() > 600, "{}", full.len());
    let max_len = model.prompt_max_len(&tok);
    assert_eq!(max_len, 512);
    let cut = tok.encode_full(&text, max_len).unwrap();
    assert_eq!(cut.ids.len(), 512);
    assert_eq!(cut.dropped, full.len() - 512);
    // <s>, the first 510 BPE tokens, </s>.
    assert_eq!(&cut.ids[..511], &full[..511]);
    assert_eq!(cut.ids[511], 2);

    let got = model
        .encode_prompts(model_ctx(), &tok, &[&text], None)
        .unwrap()
        .to_vec_f32(model_ctx())
        .unwrap();
    let cpu = CpuClap::load(&tiny().join("text_encoder"));
    let want = l2_normalize(&cpu.text_embeds(&cut.ids, 512));
    let err = max_rel_err(&got, &want);
    println!("512-token prompt vs f64 CPU: max rel err {err:.3e}");
    assert!(err <= 1e-4);

    // One token more than the 514 positions allow is refused, not run off the table.
    let err = model
        .embed_ids(model_ctx(), &[full[..513].to_vec()])
        .unwrap_err();
    println!("{err}");
    assert!(matches!(err, Error::Input(_)), "{err:?}");
    let err = model
        .embed_ids(model_ctx(), &[vec![0, 100_000, 2]])
        .unwrap_err();
    assert!(matches!(err, Error::Input(_)), "{err:?}");
}

/// A `<pad>` written in the prompt is a real (attended) token with RoBERTa's pad position, and
/// shifts the positions after it.
#[test]
fn pad_token_in_the_text_gets_robertas_positions() {
    let model = tiny_model(Precision::default());
    assert_eq!(model.position_ids(&[0, 5, 1, 7, 2]), vec![2, 3, 1, 4, 5]);
    let tok = tiny_tokenizer();
    let ids = tok.encode("a dog <pad> barking", 512).unwrap();
    assert!(ids[1..ids.len() - 1].contains(&1), "{ids:?}");
    let got = model
        .embed_ids(model_ctx(), std::slice::from_ref(&ids))
        .unwrap()
        .to_vec_f32(model_ctx())
        .unwrap();
    let cpu = CpuClap::load(&tiny().join("text_encoder"));
    let want = l2_normalize(&cpu.text_embeds(&ids, 0));
    let err = max_rel_err(&got, &want);
    println!("prompt with <pad> in it vs f64 CPU: max rel err {err:.3e}");
    assert!(err <= 1e-4);
    // transformers on the same prompt (padded to 512 with its attention mask, normalised):
    // `F.normalize(model(**tok(text, padding="max_length", max_length=512, truncation=True,
    // return_tensors="pt")).text_embeds, dim=-1)` with the tiny fixtures.
    assert_eq!(ids, vec![0, 69, 307, 225, 1, 401, 2]);
    let transformers: [f64; 24] = [
        -0.23311138153076172,
        0.009817635640501976,
        0.04428093507885933,
        0.10065075010061264,
        0.21089376509189606,
        -0.2345820814371109,
        0.03279672935605049,
        0.35903501510620117,
        0.07048837840557098,
        -0.5205366015434265,
        -0.008991514332592487,
        -0.2011278122663498,
        0.2113732248544693,
        0.09183254092931747,
        0.10138609260320663,
        -0.055016882717609406,
        0.026113634929060936,
        0.023890016600489616,
        -0.2946089208126068,
        -0.1036779060959816,
        -0.06742263585329056,
        0.3039367198944092,
        -0.3060021698474884,
        -0.17818427085876465,
    ];
    let err = max_rel_err(&got, &transformers);
    println!("prompt with <pad> in it vs transformers: max rel err {err:.3e}");
    assert!(err <= 1e-4);
}

#[test]
fn f16_weights_stay_close() {
    let (_, want) = goldens().f32_any("text_embeds").unwrap();
    let model = tiny_model(Precision {
        weights: DType::F16,
    });
    let got = model
        .encode_prompts(model_ctx(), &tiny_tokenizer(), &[PROMPT], Some(&[NEGATIVE]))
        .unwrap()
        .to_vec_f32(model_ctx())
        .unwrap();
    let err = max_rel_err(&got, &common::f64s(&want));
    println!("text_embeds with f16 weights: max rel err {err:.3e}");
    assert!(err <= 5e-3);
}

#[test]
fn config_follows_transformers() {
    let defaults: ClapTextConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(defaults, ClapTextConfig::default());
    assert_eq!(defaults.layer_norm_eps, 1e-12);
    assert_eq!(defaults.max_tokens(), 512);

    let real = real_tokenizer_dir().join("../text_encoder");
    let real: ClapTextConfig = audioldm::model::load_config(&real).unwrap();
    let expected = ClapTextConfig {
        bos_token_id: Some(0),
        eos_token_id: real.eos_token_id.clone(),
        ..ClapTextConfig::default()
    };
    assert_eq!(
        real, expected,
        "the real config is RoBERTa-base with a 512 projection"
    );

    let unsupported = [
        ClapTextConfig {
            position_embedding_type: "relative_key".into(),
            ..ClapTextConfig::default()
        },
        ClapTextConfig {
            hidden_act: "gelu_new".into(),
            ..ClapTextConfig::default()
        },
        ClapTextConfig {
            num_attention_heads: 7,
            ..ClapTextConfig::default()
        },
        ClapTextConfig {
            pad_token_id: None,
            ..ClapTextConfig::default()
        },
    ];
    for bad in unsupported {
        let err = bad.check(Path::new("config.json")).unwrap_err();
        println!("{err}");
        assert!(matches!(err, Error::Config { .. }), "{err:?}");
    }
}

/// The real word embedding, 50265 x 768 f32 (154 MB), is over lavapipe's 128 MiB binding: the
/// engine's gather splits it (nn::Embedding is what the model loads it with). The split is a GPU
/// mechanism, so this runs on the GPU context whatever `AUDIOLDM_TEST_DEVICE` says.
#[test]
fn real_sized_word_embedding_is_gathered() {
    let (vocab, d) = (50265usize, 768usize);
    let value = |row: usize, col: usize| ((row * 7 + col * 3) % 1009) as f32 - 504.0;
    let mut data = vec![0.0f32; vocab * d];
    for (i, v) in data.iter_mut().enumerate() {
        *v = value(i / d, i % d);
    }
    let bytes = (vocab * d * 4) as u64;
    let binding = ctx().max_binding_bytes();
    println!(
        "word table {bytes} bytes, largest binding {binding} bytes (split: {})",
        bytes > binding
    );
    let emb = Embedding {
        table: Tensor::from_f32(ctx(), [vocab, d], DType::F32, &data).unwrap(),
    };
    drop(data);
    let ids: Vec<u32> = vec![0, 102, 2335, 35828, 50264, 43690, 2];
    let mut g = Graph::new(ctx());
    let t = Tensor::from_u32(ctx(), [1, ids.len()], &ids).unwrap();
    let x = g.input(&t);
    let out = emb.forward(&mut g, x).unwrap();
    let got = common::run(g, out);
    let mut mismatches = BTreeMap::new();
    for (t, &id) in ids.iter().enumerate() {
        for c in 0..d {
            if got[t * d + c] != value(id as usize, c) {
                *mismatches.entry(id).or_insert(0) += 1;
            }
        }
    }
    assert!(mismatches.is_empty(), "rows differ: {mismatches:?}");
}
