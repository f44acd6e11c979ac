// Scaled dot-product attention, per (batch, head): out = softmax(scale * Q K^T) V, no mask.
//
// `attention`: each invocation owns QB query rows. It keeps their scaled queries and output
// accumulators in private arrays (DK and DV entries per row: the head dims rounded up to a power of
// two) and streams the keys in blocks of KB with an online softmax (a running max m and sum l per
// row; the accumulators are rescaled once per block), so the Tq x Tk score matrix never exists.
// Register blocking: every K or V element loaded serves QB rows, every query or accumulator element
// loaded serves KB keys. The head-dim loops are unrolled by four by hand (elements past the end are
// clamped for loading and meet a zero query, or land in accumulator padding that is not stored).
//
// All invocations of a workgroup share (batch, head) and walk the keys in lockstep, so every K and
// V load has the same address across the workgroup (a broadcast from cache on a GPU). Rows past the
// end are clamped rather than returned from, so control flow stays uniform, and are not stored.
//
// Split keys (splits > 1): the keys are cut into `splits` chunks of `chunk` keys, one per dispatch
// z-slice, and each invocation writes its rows' unnormalised accumulators with their m and l to
// `out` as partial results [splits, B, H, Tq, Dv + 2]; `combine` (define COMBINE) merges the
// chunks, one invocation per output element. The op builder splits when one invocation would
// otherwise run more than ~60000 loop iterations: llvmpipe (Mesa's lavapipe, up to at least 22.3)
// caps the loop iterations of a shader invocation at 65535, summed over all its loops, and silently
// leaves loops past that. On a GPU the split also spreads few long rows over more workgroups.
//
// On lavapipe this costs one scalar load per lane for every K or V element (Mesa 22.3 does not
// broadcast uniform loads inside loops), which is what the register blocking amortises; compiling
// the D = 512 specialisation takes several seconds there when Mesa's shader cache is cold.
//
// TILES (the GPU variant): the workgroup copies each block's keys, then its values, into workgroup
// memory together (kv_tile[t * DK + i], KV_LEN floats), and every invocation reads them from there
// instead of from global memory.
//
// Views: element (b, t, h, i) of Q is q[q_off + b*q_sb + t*q_st + h*q_sh + i], likewise K and V;
// the output is [B, Tq, H*Dv] with strides o_sb, o_st, o_sh. Dispatch: x = ceil(Tq / (WG*QB)),
// y = heads, z = batch * splits.

struct Params {
    tq: u32, tk: u32, d: u32, dv: u32,
    q_off: u32, q_sb: u32, q_st: u32, q_sh: u32,
    k_off: u32, k_sb: u32, k_st: u32, k_sh: u32,
    v_off: u32, v_sb: u32, v_st: u32, v_sh: u32,
    o_sb: u32, o_st: u32, o_sh: u32,
    scale: f32,
    batch: u32, heads: u32, splits: u32, chunk: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// The lowest finite f32: minus infinity for the running max without inf - inf = NaN.
// -f32::MAX exactly, written below it in magnitude: Tint (Chromium) rejects -3.4028235e38 as
// out of f32 range, although it rounds to -f32::MAX.
const NEG_BIG: f32 = -3.40282346e38;

#if !COMBINE
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

#if TILES
var<workgroup> kv_tile: array<f32, ${KV_LEN}>;
#endif

// Head element i of the scores of the QB rows against the KB keys of a block: s[r * KB + t].
fn qk_step(
    i: u32,
    k_at: ptr<function, array<u32, ${KB}>>,
    qr: ptr<function, array<f32, ${Q_LEN}>>,
    s: ptr<function, array<f32, ${S_LEN}>>,
) {
    let ic = min(i, p.d - 1u);
    var kv: array<f32, ${KB}>;
    for (var t = 0u; t < ${KB}u; t++) {
#if TILES
        kv[t] = kv_tile[t * ${DK}u + ic];
#else
        kv[t] = k[(*k_at)[t] + ic];
#endif
    }
    for (var r = 0u; r < ${QB}u; r++) {
        let qi = (*qr)[r * ${DK}u + i];
        for (var t = 0u; t < ${KB}u; t++) {
            (*s)[r * ${KB}u + t] = fma(qi, kv[t], (*s)[r * ${KB}u + t]);
        }
    }
}

// Head element i of the QB accumulators: rescaled by alpha, plus the block's weighted values.
fn pv_step(
    i: u32,
    v_at: ptr<function, array<u32, ${KB}>>,
    w: ptr<function, array<f32, ${S_LEN}>>,
    alpha: ptr<function, array<f32, ${QB}>>,
    acc: ptr<function, array<f32, ${A_LEN}>>,
) {
    let ic = min(i, p.dv - 1u);
    var vv: array<f32, ${KB}>;
    for (var t = 0u; t < ${KB}u; t++) {
#if TILES
        vv[t] = kv_tile[t * ${DV}u + ic];
#else
        vv[t] = v[(*v_at)[t] + ic];
#endif
    }
    for (var r = 0u; r < ${QB}u; r++) {
        var a = (*acc)[r * ${DV}u + i] * (*alpha)[r];
        for (var t = 0u; t < ${KB}u; t++) {
            a = fma((*w)[r * ${KB}u + t], vv[t], a);
        }
        (*acc)[r * ${DV}u + i] = a;
    }
}

@compute @workgroup_size(${WG}, 1, 1)
fn attention(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row0 = (wg.x * ${WG}u + lid) * ${QB}u;
    let h = wg.y;
    let b = wg.z / p.splits;
    let split = wg.z % p.splits;
    let j_begin = split * p.chunk;
    let j_end = min(j_begin + p.chunk, p.tk);

    // Scaled queries, zero past d: qr[r * DK + i].
    var qr: array<f32, ${Q_LEN}>;
    for (var r = 0u; r < ${QB}u; r++) {
        let q_at = p.q_off + b * p.q_sb + min(row0 + r, p.tq - 1u) * p.q_st + h * p.q_sh;
        for (var i = 0u; i < p.d; i++) {
            qr[r * ${DK}u + i] = q[q_at + i] * p.scale;
        }
    }
    var acc: array<f32, ${A_LEN}>;
    var m: array<f32, ${QB}>;
    var l: array<f32, ${QB}>;
    for (var r = 0u; r < ${QB}u; r++) {
        m[r] = NEG_BIG;
    }
    let k_base = p.k_off + b * p.k_sb + h * p.k_sh;
    let v_base = p.v_off + b * p.v_sb + h * p.v_sh;

    for (var j0 = j_begin; j0 < j_end; j0 += ${KB}u) {
        // Keys past the end are clamped for loading and get a score of NEG_BIG (weight 0).
        var k_at: array<u32, ${KB}>;
        var v_at: array<u32, ${KB}>;
        for (var t = 0u; t < ${KB}u; t++) {
            let j = min(j0 + t, j_end - 1u);
            k_at[t] = k_base + j * p.k_st;
            v_at[t] = v_base + j * p.v_st;
        }
#if TILES
        // The block's keys, copied by the whole workgroup (after the last block's values are used).
        workgroupBarrier();
        for (var e = lid; e < ${KB}u * ${DK}u; e += ${WG}u) {
            kv_tile[e] = k[k_at[e / ${DK}u] + min(e % ${DK}u, p.d - 1u)];
        }
        workgroupBarrier();
#endif
        // Zeroed explicitly: Chromium's WebGPU on SwiftShader kept the last block's weights in a
        // loop-local `var s: array<f32, N>;` instead of zeroing it on every iteration.
        var s = array<f32, ${S_LEN}>();
        for (var i = 0u; i < p.d; i += 4u) {
            qk_step(i, &k_at, &qr, &s);
            qk_step(i + 1u, &k_at, &qr, &s);
            qk_step(i + 2u, &k_at, &qr, &s);
            qk_step(i + 3u, &k_at, &qr, &s);
        }
        // Scores become weights in place.
        var alpha: array<f32, ${QB}>;
        for (var r = 0u; r < ${QB}u; r++) {
            var m_new = m[r];
            for (var t = 0u; t < ${KB}u; t++) {
                let st = select(NEG_BIG, s[r * ${KB}u + t], j0 + t < j_end);
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
#if TILES
        // Then its values, in the same memory.
        workgroupBarrier();
        for (var e = lid; e < ${KB}u * ${DV}u; e += ${WG}u) {
            kv_tile[e] = v[v_at[e / ${DV}u] + min(e % ${DV}u, p.dv - 1u)];
        }
        workgroupBarrier();
#endif
        for (var i = 0u; i < p.dv; i += 4u) {
            pv_step(i, &v_at, &s, &alpha, &acc);
            pv_step(i + 1u, &v_at, &s, &alpha, &acc);
            pv_step(i + 2u, &v_at, &s, &alpha, &acc);
            pv_step(i + 3u, &v_at, &s, &alpha, &acc);
        }
    }

    for (var r = 0u; r < ${QB}u; r++) {
        let row = row0 + r;
        if (row < p.tq) {
            if (p.splits > 1u) {
                // partial[split, b, h, row] = (acc[0..dv], m, l)
                let at = (((split * p.batch + b) * p.heads + h) * p.tq + row) * (p.dv + 2u);
                for (var i = 0u; i < p.dv; i++) {
                    out[at + i] = acc[r * ${DV}u + i];
                }
                out[at + p.dv] = m[r];
                out[at + p.dv + 1u] = l[r];
            } else {
                let inv = 1.0 / l[r];
                let o_at = b * p.o_sb + row * p.o_st + h * p.o_sh;
                for (var i = 0u; i < p.dv; i++) {
                    out[o_at + i] = acc[r * ${DV}u + i] * inv;
                }
            }
        }
    }
}
#endif

#if COMBINE
@group(0) @binding(1) var<storage, read> partial: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

// out[b, row, h, i] = sum_s exp(m_s - M) acc_s[i] / sum_s exp(m_s - M) l_s, M = max_s m_s.
@compute @workgroup_size(${WG}, 1, 1)
fn combine(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = (wg.x + wg.y * groups.x) * ${WG}u + lid;
    let i = e % p.dv;
    let row = (e / p.dv) % p.tq;
    let h = (e / (p.dv * p.tq)) % p.heads;
    let b = e / (p.dv * p.tq * p.heads);
    if (b >= p.batch) {
        return;
    }
    let width = p.dv + 2u;
    let stride = p.batch * p.heads * p.tq * width;
    let at = ((b * p.heads + h) * p.tq + row) * width;
    var m = NEG_BIG;
    for (var s = 0u; s < p.splits; s++) {
        m = max(m, partial[s * stride + at + p.dv]);
    }
    var num = 0.0;
    var den = 0.0;
    for (var s = 0u; s < p.splits; s++) {
        let base = s * stride + at;
        let f = exp(partial[base + p.dv] - m);
        num = fma(f, partial[base + i], num);
        den = fma(f, partial[base + p.dv + 1u], den);
    }
    out[b * p.o_sb + row * p.o_st + h * p.o_sh + i] = num / den;
}
#endif
