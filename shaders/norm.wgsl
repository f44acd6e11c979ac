// Normalisations: one workgroup of WG threads (a power of two) per normalised set, recovered from a
// 1-D grid as `wg.x + wg.y * num_workgroups.x`.
//
// group_norm   x [B, C, S] (S = product of the spatial dims), G groups of C/G channels; a group of
//              one batch item is a contiguous run of (C/G)*S elements. Welford per thread, merged
//              across the workgroup (stable for means far from zero and for long groups), then
//              y = (x - mean) * rsqrt(var + eps) * gamma[c] + beta[c], optionally SiLU.
// layer_norm   over the last dim (rows of p.n), same statistics, per-column gamma/beta.
// l2_normalize x / max(||x||_2, eps) over the last dim.
// softmax      softmax(scale * x) over the last dim: one pass for a per-thread running max and sum,
//              merged across the workgroup, then one pass that writes.
//
// Defines: WG, GAMMA and BETA (present optional affine inputs), ACT_SILU (fused SiLU), SUBGROUPS
// (reductions with subgroup operations, _reduce.wgsl).

struct Params {
    // Elements per normalised set (group or row).
    n: u32,
    // Sets in all.
    sets: u32,
    // group_norm: spatial size S, groups G, channels per group C/G.
    spatial: u32,
    groups: u32,
    cpg: u32,
    eps: f32,
    scale: f32,
    // group_norm: the first set of this dispatch (x and y are bound from its first element).
    set0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;

#include "_reduce.wgsl"

// The first finite f32 below every score; stands for -inf without producing inf - inf.
// -f32::MAX exactly, written below it in magnitude: Tint (Chromium) rejects -3.4028235e38 as
// out of f32 range, although it rounds to -f32::MAX.
const NEG_BIG: f32 = -3.40282346e38;

// The workgroup builtins are entry-point parameters apart from `Invocation`: Tint (Chromium)
// counts a struct holding local_invocation_index as non-uniform as a whole, so an early return on
// a set index read from it would put the reductions' barriers in non-uniform control flow.
fn set_index(wg: vec3<u32>, groups: vec3<u32>) -> u32 {
    return wg.x + wg.y * groups.x;
}

// (shift, mean, rstd) of the n elements from `base`: statistics of x - shift, shift = the set's
// first element, so the differences are exact for values near the shift and the mean keeps full
// precision however far from zero it lies. Welford per thread, merged across the workgroup.
fn set_stats(base: u32, inv: Invocation) -> vec3<f32> {
    let lid = inv.lid;
    let shift = x[base];
    var w = Welford(0.0, 0.0, 0.0);
    for (var i = lid; i < p.n; i += ${WG}u) {
        w = welford_push(w, x[base + i] - shift);
    }
    let stats = reduce_welford(inv, w);
    return vec3<f32>(shift, stats.mean, inverseSqrt(stats.m2 / stats.n + p.eps));
}

#if GROUP_STATS
// group_norm_stats: (shift, mean, rstd) of every group, for a convolution that normalises its
// input as it reads it (conv.wgsl's NORM).
@group(0) @binding(2) var<storage, read_write> stats: array<f32>;

@compute @workgroup_size(${WG}, 1, 1)
fn group_stats(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) ngroups: vec3<u32>,
    inv: Invocation,
) {
    let lid = inv.lid;
    let gset = set_index(wg, ngroups);
    if (gset >= p.sets) {
        return;
    }
    let s = set_stats(gset * p.n, inv);
    if (lid == 0u) {
        let at = 3u * (p.set0 + gset);
        stats[at] = s.x;
        stats[at + 1u] = s.y;
        stats[at + 2u] = s.z;
    }
}
#endif

#if GROUP_NORM
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

#include "_activation.wgsl"

@compute @workgroup_size(${WG}, 1, 1)
fn group_norm(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) ngroups: vec3<u32>,
    inv: Invocation,
) {
    let lid = inv.lid;
    let gset = set_index(wg, ngroups);
    if (gset >= p.sets) {
        return;
    }
    let base = gset * p.n;
    let s = set_stats(base, inv);
    let shift = s.x;
    let mean = s.y;
    let rstd = s.z;
    // Channel of element i of this set: (set % G) * (C/G) + i / S.
    let c0 = ((p.set0 + gset) % p.groups) * p.cpg;
    for (var i = lid; i < p.n; i += ${WG}u) {
        var v = ((x[base + i] - shift) - mean) * rstd;
        let c = c0 + i / p.spatial;
#if GAMMA
        v = v * gamma[c];
#endif
#if BETA
        v = v + beta[c];
#endif
        y[base + i] = activate(v, 0.0);
    }
}
#endif

#if LAYER_NORM
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(${WG}, 1, 1)
fn layer_norm(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) ngroups: vec3<u32>,
    inv: Invocation,
) {
    let lid = inv.lid;
    let row = set_index(wg, ngroups);
    if (row >= p.sets) {
        return;
    }
    let base = row * p.n;
    let s = set_stats(base, inv);
    let shift = s.x;
    let mean = s.y;
    let rstd = s.z;
    for (var i = lid; i < p.n; i += ${WG}u) {
        y[base + i] = fma(((x[base + i] - shift) - mean) * rstd, gamma[i], beta[i]);
    }
}
#endif

#if L2_NORMALIZE
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(${WG}, 1, 1)
fn l2_normalize(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) ngroups: vec3<u32>,
    inv: Invocation,
) {
    let lid = inv.lid;
    let row = set_index(wg, ngroups);
    if (row >= p.sets) {
        return;
    }
    let base = row * p.n;
    var ss = 0.0;
    for (var i = lid; i < p.n; i += ${WG}u) {
        let v = x[base + i];
        ss = fma(v, v, ss);
    }
    let inv_norm = 1.0 / max(sqrt(reduce_sum(inv, ss)), p.eps);
    for (var i = lid; i < p.n; i += ${WG}u) {
        y[base + i] = x[base + i] * inv_norm;
    }
}
#endif

#if SOFTMAX
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(${WG}, 1, 1)
fn softmax(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) ngroups: vec3<u32>,
    inv: Invocation,
) {
    let lid = inv.lid;
    let row = set_index(wg, ngroups);
    if (row >= p.sets) {
        return;
    }
    let base = row * p.n;
    // Online: running max m and sum l of exp(s - m) over this thread's elements.
    var m = NEG_BIG;
    var l = 0.0;
    for (var i = lid; i < p.n; i += ${WG}u) {
        let s = p.scale * x[base + i];
        let m_new = max(m, s);
        l = l * exp(m - m_new) + exp(s - m_new);
        m = m_new;
    }
    let row_max = reduce_max(inv, m);
    let inv_sum = 1.0 / reduce_sum(inv, l * exp(m - row_max));
    for (var i = lid; i < p.n; i += ${WG}u) {
        y[base + i] = exp(p.scale * x[base + i] - row_max) * inv_sum;
    }
}
#endif
