// C[b, m, n] = act(alpha * sum_k A[b, m, k] * B[b, k, n] + bias[n]) + residual[b, m, n]
//
// A and B are read through strides, so B can be a Linear weight [N, K] (b_sk = 1, b_sn = K), a
// plain [K, N] matrix, or a view into a fused QKV buffer. C and the residual are row-major with
// row stride c_sm. Defines: ACT (see _activation.wgsl), W_F16 (B stored as packed f16), BIAS,
// RESIDUAL, and TM x TN outputs per thread for the tiled entry points. K4 selects
// `matmul_k4` alone: A and B both contiguous along K (a Linear weight [N, K]), K and every offset
// and stride a multiple of 4, read as vec4 along K. N4 selects `matmul_n4` alone: A as for K4, B
// contiguous along N (a plain [K, N] matrix) with N and its offset and strides multiples of 4,
// read as vec4 along N, TN counting vec4 columns.

#include "_gemm.wgsl"

#if N4
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
#include "_weights_vec4.wgsl"

// `matmul` reading four columns of B per load; each accumulator is a vec4 of neighbouring columns.
// On llvmpipe this quarters B's gathers as `matmul_k4` does, and A's loads are the same address
// across the lanes of a row.
@compute @workgroup_size(8, 8, 1)
fn matmul_n4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let batch = wg.z;
    let row0 = (wg.y * 8u + lid.y) * ${TM}u;
    // vec4 columns are interleaved across the 8 threads of a row (quad = q0 + 8 j).
    let q0 = wg.x * 8u * ${TN}u + lid.x;
    let quads = p.n / 4u;
    if (row0 >= p.m || q0 >= quads) {
        return;
    }
    var a_at: array<u32, ${TM}>;
    for (var i = 0u; i < ${TM}u; i++) {
        a_at[i] = a_row(batch, row0 + i) / 4u;
    }
    var b_at: array<u32, ${TN}>;
    for (var j = 0u; j < ${TN}u; j++) {
        b_at[j] = (p.b_off + batch * p.b_sb) / 4u + min(q0 + 8u * j, quads - 1u);
    }
    let b_sk = p.b_sk / 4u;
    var acc: array<array<vec4<f32>, ${TN}>, ${TM}>;
    // Four k per iteration, A read as vec4 along K: 16 TM TN multiply-adds per TM + 4 TN loads.
    for (var k4 = 0u; k4 < p.k / 4u; k4++) {
        var av: array<vec4<f32>, ${TM}>;
        for (var i = 0u; i < ${TM}u; i++) {
            av[i] = a[a_at[i] + k4];
        }
        let row = k4 * 4u * b_sk;
        for (var j = 0u; j < ${TN}u; j++) {
            let b0 = load_w4(b_at[j] + row);
            let b1 = load_w4(b_at[j] + row + b_sk);
            let b2 = load_w4(b_at[j] + row + 2u * b_sk);
            let b3 = load_w4(b_at[j] + row + 3u * b_sk);
            for (var i = 0u; i < ${TM}u; i++) {
                var v = fma(vec4<f32>(av[i].x), b0, acc[i][j]);
                v = fma(vec4<f32>(av[i].y), b1, v);
                v = fma(vec4<f32>(av[i].z), b2, v);
                acc[i][j] = fma(vec4<f32>(av[i].w), b3, v);
            }
        }
    }
    for (var i = 0u; i < ${TM}u; i++) {
        for (var j = 0u; j < ${TN}u; j++) {
            if (row0 + i < p.m && q0 + 8u * j < quads) {
                for (var t = 0u; t < 4u; t++) {
                    epilogue(batch, row0 + i, (q0 + 8u * j) * 4u + t, acc[i][j][t]);
                }
            }
        }
    }
}
#else
#if K4
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
#include "_weights_vec4.wgsl"

// `matmul` reading four K values per load. On llvmpipe every per-lane load is a gather, so
// loading vec4s quarters the gathers and the index arithmetic: 2.3x the scalar kernel there.
@compute @workgroup_size(8, 8, 1)
fn matmul_k4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let batch = wg.z;
    let row0 = (wg.y * 8u + lid.y) * ${TM}u;
    let col0 = wg.x * 8u * ${TN}u + lid.x;
    if (row0 >= p.m || col0 >= p.n) {
        return;
    }
    var a_at: array<u32, ${TM}>;
    for (var i = 0u; i < ${TM}u; i++) {
        a_at[i] = a_row(batch, row0 + i) / 4u;
    }
    var b_at: array<u32, ${TN}>;
    for (var j = 0u; j < ${TN}u; j++) {
        b_at[j] = b_col(batch, col0 + 8u * j) / 4u;
    }
    var acc: array<array<f32, ${TN}>, ${TM}>;
    for (var k = 0u; k < p.k / 4u; k++) {
        var av: array<vec4<f32>, ${TM}>;
        for (var i = 0u; i < ${TM}u; i++) {
            av[i] = a[a_at[i] + k];
        }
        for (var j = 0u; j < ${TN}u; j++) {
            let bv = load_w4(b_at[j] + k);
            for (var i = 0u; i < ${TM}u; i++) {
                acc[i][j] += dot(av[i], bv);
            }
        }
    }
    // Inline, not a function taking the block: llvmpipe copies an array argument, which cost
    // 10 % of the GEMM's speed and made the matmul tests (mostly shader compiles) 25x slower.
    for (var i = 0u; i < ${TM}u; i++) {
        for (var j = 0u; j < ${TN}u; j++) {
            if (row0 + i < p.m && col0 + 8u * j < p.n) {
                epilogue(batch, row0 + i, col0 + 8u * j, acc[i][j]);
            }
        }
    }
}
#else
@group(0) @binding(1) var<storage, read> a: array<f32>;
#include "_weights.wgsl"

// Register-blocked: each of the 8x8 threads computes TM rows x TN columns and keeps them in
// registers; no workgroup memory (on CPU-backed adapters register blocking pays and shared memory
// does not; on GPUs the blocks are served from cache).
@compute @workgroup_size(8, 8, 1)
fn matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let batch = wg.z;
    let row0 = (wg.y * 8u + lid.y) * ${TM}u;
    // Columns are interleaved across the 8 threads of a row (column = col0 + 8 j), so that
    // neighbouring threads, which a CPU adapter runs as SIMD lanes, read neighbouring addresses.
    let col0 = wg.x * 8u * ${TN}u + lid.x;
    if (row0 >= p.m || col0 >= p.n) {
        return;
    }
    // Rows and columns past the edge are clamped for loading and skipped at the store.
    var a_at: array<u32, ${TM}>;
    for (var i = 0u; i < ${TM}u; i++) {
        a_at[i] = a_row(batch, row0 + i);
    }
    var b_at: array<u32, ${TN}>;
    for (var j = 0u; j < ${TN}u; j++) {
        b_at[j] = b_col(batch, col0 + 8u * j);
    }
    var acc: array<array<f32, ${TN}>, ${TM}>;
    for (var k = 0u; k < p.k; k++) {
        var av: array<f32, ${TM}>;
        for (var i = 0u; i < ${TM}u; i++) {
            av[i] = a[a_at[i] + k * p.a_sk];
        }
        var bv: array<f32, ${TN}>;
        for (var j = 0u; j < ${TN}u; j++) {
            bv[j] = load_w(b_at[j] + k * p.b_sk);
        }
        for (var i = 0u; i < ${TM}u; i++) {
            for (var j = 0u; j < ${TN}u; j++) {
                acc[i][j] = fma(av[i], bv[j], acc[i][j]);
            }
        }
    }
    for (var i = 0u; i < ${TM}u; i++) {
        for (var j = 0u; j < ${TN}u; j++) {
            if (row0 + i < p.m && col0 + 8u * j < p.n) {
                epilogue(batch, row0 + i, col0 + 8u * j, acc[i][j]);
            }
        }
    }
}

// One thread per output: the baseline the benchmark compares against.
@compute @workgroup_size(8, 8, 1)
fn matmul_naive(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.y;
    let col = gid.x;
    let batch = gid.z;
    if (row >= p.m || col >= p.n) {
        return;
    }
    let a_at = a_row(batch, row);
    let b_at = b_col(batch, col);
    var acc = 0.0;
    for (var k = 0u; k < p.k; k++) {
        acc = fma(a[a_at + k * p.a_sk], load_w(b_at + k * p.b_sk), acc);
    }
    epilogue(batch, row, col, acc);
}

// Matrix-vector products (few rows): a workgroup per output element reduces over K.
var<workgroup> partial: array<f32, 64>;

@compute @workgroup_size(64, 1, 1)
fn gemv(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let index = wg.x + wg.y * groups.x;
    let col = index % p.n;
    let row = (index / p.n) % p.m;
    let batch = index / (p.n * p.m);
    if (batch >= p.batch) {
        return;
    }
    let a_at = a_row(batch, row);
    let b_at = b_col(batch, col);
    var acc = 0.0;
    for (var k = lid; k < p.k; k += 64u) {
        acc = fma(a[a_at + k * p.a_sk], load_w(b_at + k * p.b_sk), acc);
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s = s / 2u) {
        if (lid < s) {
            partial[lid] = partial[lid] + partial[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        epilogue(batch, row, col, partial[0]);
    }
}
#endif
#endif
