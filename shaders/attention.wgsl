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

    // Scaled queries, zero past d.
    var qr: array<array<f32, ${DK}>, ${QB}>;
    for (var r = 0u; r < ${QB}u; r++) {
        let q_at = p.q_off + b * p.q_sb + min(row0 + r, p.tq - 1u) * p.q_st + h * p.q_sh;
        for (var i = 0u; i < p.d; i++) {
            qr[r][i] = q[q_at + i] * p.scale;
        }
    }
    var acc: array<array<f32, ${DV}>, ${QB}>;
    var m: array<f32, ${QB}>;
    var l: array<f32, ${QB}>;
    for (var r = 0u; r < ${QB}u; r++) {
        m[r] = NEG_BIG;
    }
    let k_base = p.k_off + b * p.k_sb + h * p.k_sh;
    let v_base = p.v_off + b * p.v_sb + h * p.v_sh;
    let d_last = p.d - 1u;
    let dv_last = p.dv - 1u;

    for (var j0 = 0u; j0 < p.tk; j0 += ${KB}u) {
        // Keys past the end are clamped for loading and get a score of NEG_BIG (weight 0).
        var k_at: array<u32, ${KB}>;
        var v_at: array<u32, ${KB}>;
        for (var t = 0u; t < ${KB}u; t++) {
            let j = min(j0 + t, p.tk - 1u);
            k_at[t] = k_base + j * p.k_st;
            v_at[t] = v_base + j * p.v_st;
        }
        var s: array<array<f32, ${KB}>, ${QB}>;
        for (var i0 = 0u; i0 < p.d; i0 += ${U}u) {
            for (var u = 0u; u < ${U}u; u++) {
                let i = i0 + u;
                let ic = min(i, d_last);
                var kv: array<f32, ${KB}>;
                for (var t = 0u; t < ${KB}u; t++) {
                    kv[t] = k[k_at[t] + ic];
                }
                for (var r = 0u; r < ${QB}u; r++) {
                    let qi = qr[r][i];
                    for (var t = 0u; t < ${KB}u; t++) {
                        s[r][t] = fma(qi, kv[t], s[r][t]);
                    }
                }
            }
        }
        var w: array<array<f32, ${KB}>, ${QB}>;
        var alpha: array<f32, ${QB}>;
        for (var r = 0u; r < ${QB}u; r++) {
            var m_new = m[r];
            for (var t = 0u; t < ${KB}u; t++) {
                s[r][t] = select(NEG_BIG, s[r][t], j0 + t < p.tk);
                m_new = max(m_new, s[r][t]);
            }
            alpha[r] = exp(m[r] - m_new);
            var w_sum = 0.0;
            for (var t = 0u; t < ${KB}u; t++) {
                w[r][t] = exp(s[r][t] - m_new);
                w_sum += w[r][t];
            }
            l[r] = fma(l[r], alpha[r], w_sum);
            m[r] = m_new;
        }
        for (var i0 = 0u; i0 < p.dv; i0 += ${U}u) {
            for (var u = 0u; u < ${U}u; u++) {
                let i = i0 + u;
                let ic = min(i, dv_last);
                var vv: array<f32, ${KB}>;
                for (var t = 0u; t < ${KB}u; t++) {
                    vv[t] = v[v_at[t] + ic];
                }
                for (var r = 0u; r < ${QB}u; r++) {
                    var a = acc[r][i] * alpha[r];
                    for (var t = 0u; t < ${KB}u; t++) {
                        a = fma(w[r][t], vv[t], a);
                    }
                    acc[r][i] = a;
                }
            }
        }
    }

    for (var r = 0u; r < ${QB}u; r++) {
        let row = row0 + r;
        if (row < p.tq) {
            let inv = 1.0 / l[r];
            let o_at = b * p.o_sb + row * p.o_st + h * p.o_sh;
            for (var i = 0u; i < p.dv; i++) {
                out[o_at + i] = acc[r][i] * inv;
            }
        }
    }
}
