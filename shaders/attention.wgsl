// Scaled dot-product attention, per (batch, head): out = softmax(scale * Q K^T) V, no mask.
//
// Each invocation owns QB query rows: it keeps their scaled queries and output accumulators in
// private arrays (DK and DV entries, the head dims rounded up) and streams the keys in blocks of
// KB with an online softmax (running max m and sum l per row; the accumulators are rescaled once
// per block), so the Tq x Tk score matrix never exists. Register blocking: every K or V element
// loaded serves QB rows, every query or accumulator element loaded serves KB keys.
//
// The head dims are walked in chunks of U elements (an inner loop of constant trip count, which
// the compiler unrolls); elements past the end are clamped for loading and multiply a zero query
// (QK) or land in accumulator padding that is never stored (PV). Chunking keeps the number of
// loop iterations per invocation low: llvmpipe (Mesa lavapipe) caps the loop iterations of one
// invocation at 65535 and silently ends loops past that.
//
// All invocations of a workgroup share (batch, head) and walk the keys in lockstep: every K and V
// load has the same address across the workgroup. Rows past the end are clamped rather than
// returned from, so control flow stays uniform, and are skipped at the store.
//
// Views: element (b, t, h, i) of Q is q[q_off + b*q_sb + t*q_st + h*q_sh + i], likewise K and V;
// the output is [B, Tq, H*Dv] with strides o_sb, o_st, o_sh. Dispatch: x = ceil(Tq / (WG*QB)),
// y = heads, z = batch.

struct Params {
    tq: u32, tk: u32, d: u32, dv: u32,
    q_off: u32, q_sb: u32, q_st: u32, q_sh: u32,
    k_off: u32, k_sb: u32, k_st: u32, k_sh: u32,
    v_off: u32, v_sb: u32, v_st: u32, v_sh: u32,
    o_sb: u32, o_st: u32, o_sh: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

// The lowest finite f32: minus infinity for the running max without inf - inf = NaN.
const NEG_BIG: f32 = -3.4028235e38;

@compute @workgroup_size(${WG}, 1, 1)
fn attention(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row0 = (wg.x * ${WG}u + lid) * ${QB}u;
    let h = wg.y;
    let b = wg.z;

    // Scaled queries, zero past d: qr[r * DK + i].
    // (Loops of constant trip count stay innermost: llvmpipe compiles a runtime loop nested in
    // an unrolled one very slowly.)
    var q_at: array<u32, ${QB}>;
    for (var r = 0u; r < ${QB}u; r++) {
        q_at[r] = p.q_off + b * p.q_sb + min(row0 + r, p.tq - 1u) * p.q_st + h * p.q_sh;
    }
    var qr: array<f32, ${Q_LEN}>;
    for (var i = 0u; i < p.d; i++) {
        for (var r = 0u; r < ${QB}u; r++) {
            qr[r * ${DK}u + i] = q[q_at[r] + i] * p.scale;
        }
    }
    // Per row: output accumulator acc[r * DV + i], running max m and sum l.
    var acc: array<f32, ${A_LEN}>;
    var m: array<f32, ${QB}>;
    var l: array<f32, ${QB}>;
    var alpha: array<f32, ${QB}>;
    for (var r = 0u; r < ${QB}u; r++) {
        m[r] = NEG_BIG;
    }
    // Scores, then weights, of the block: s[r * KB + t].
    var s: array<f32, ${S_LEN}>;
    var k_at: array<u32, ${KB}>;
    var v_at: array<u32, ${KB}>;
    let k_base = p.k_off + b * p.k_sb + h * p.k_sh;
    let v_base = p.v_off + b * p.v_sb + h * p.v_sh;

    for (var j0 = 0u; j0 < p.tk; j0 += ${KB}u) {
        // Keys past the end are clamped for loading and get a score of NEG_BIG (weight 0).
        for (var t = 0u; t < ${KB}u; t++) {
            let j = min(j0 + t, p.tk - 1u);
            k_at[t] = k_base + j * p.k_st;
            v_at[t] = v_base + j * p.v_st;
        }
        for (var x = 0u; x < ${S_LEN}u; x++) {
            s[x] = 0.0;
        }
        for (var i = 0u; i < p.d; i++) {
            for (var r = 0u; r < ${QB}u; r++) {
                let qi = qr[r * ${DK}u + i];
                for (var t = 0u; t < ${KB}u; t++) {
                    s[r * ${KB}u + t] = fma(qi, k[k_at[t] + i], s[r * ${KB}u + t]);
                }
            }
        }
        for (var r = 0u; r < ${QB}u; r++) {
            var m_new = m[r];
            for (var t = 0u; t < ${KB}u; t++) {
                let st = select(NEG_BIG, s[r * ${KB}u + t], j0 + t < p.tk);
                s[r * ${KB}u + t] = st;
                m_new = max(m_new, st);
            }
            alpha[r] = exp(m[r] - m_new);
            var w_sum = 0.0;
            for (var t = 0u; t < ${KB}u; t++) {
                let wt = exp(s[r * ${KB}u + t] - m_new);
                s[r * ${KB}u + t] = wt;
                w_sum += wt;
            }
            l[r] = fma(l[r], alpha[r], w_sum);
            m[r] = m_new;
        }
        for (var i = 0u; i < p.dv; i++) {
            for (var r = 0u; r < ${QB}u; r++) {
                var a = acc[r * ${DV}u + i] * alpha[r];
                for (var t = 0u; t < ${KB}u; t++) {
                    a = fma(s[r * ${KB}u + t], v[v_at[t] + i], a);
                }
                acc[r * ${DV}u + i] = a;
            }
        }
    }

    var inv: array<f32, ${QB}>;
    var o_at: array<u32, ${QB}>;
    for (var r = 0u; r < ${QB}u; r++) {
        inv[r] = 1.0 / l[r];
        o_at[r] = b * p.o_sb + (row0 + r) * p.o_st + h * p.o_sh;
    }
    for (var i = 0u; i < p.dv; i++) {
        for (var r = 0u; r < ${QB}u; r++) {
            if (row0 + r < p.tq) {
                out[o_at[r] + i] = acc[r * ${DV}u + i] * inv[r];
            }
        }
    }
}
