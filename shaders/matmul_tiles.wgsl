// C = act(alpha * A B + bias) + residual as matmul.wgsl computes it (same parameters, strides,
// epilogue), with the operands staged in workgroup memory: the GPU variant. A 16 x 16 workgroup
// computes a 64 x 64 block of C; for every 16 values of K it loads a 64 x 16 tile of A and a
// 16 x 64 tile of B (four elements per thread, neighbouring threads at neighbouring addresses of
// B's rows), then each thread multiplies its 4 rows by its 4 columns out of workgroup memory. On
// a GPU the tiles cut global loads 16-fold against one thread per output; on a CPU adapter
// (lavapipe) workgroup memory is ordinary memory and the register-blocked kernels stay faster.
//
// Defines: ACT, W_F16, BIAS, RESIDUAL as in matmul.wgsl; F16_MATH (needs SHADER_F16) stores the
// tiles as f16 and multiplies in f16, accumulating in f32: half the workgroup memory and twice
// the arithmetic rate on GPUs with fast f16.

#if F16_MATH
enable f16;
#endif

#include "_gemm.wgsl"

@group(0) @binding(1) var<storage, read> a: array<f32>;
#include "_weights.wgsl"

#if F16_MATH
alias Elem = f16;
#else
alias Elem = f32;
#endif

// Tiles stored K-major: a_tile[kk * 64 + row], b_tile[kk * 64 + col].
var<workgroup> a_tile: array<Elem, 1024>;
var<workgroup> b_tile: array<Elem, 1024>;

@compute @workgroup_size(16, 16, 1)
fn matmul_tiles(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let batch = wg.z;
    let m0 = wg.y * 64u;
    let n0 = wg.x * 64u;
    // What this thread loads: rows m0 + (li / 16 + 16 e) of A at K offset li % 16, and K rows
    // li / 64 + 4 e of B at column n0 + li % 64, for e in 0..4 (addresses clamped at the edges).
    let a_kk = li % 16u;
    let b_col0 = b_col(batch, n0 + li % 64u);
    var a_at: array<u32, 4>;
    for (var e = 0u; e < 4u; e++) {
        a_at[e] = a_row(batch, m0 + li / 16u + 16u * e);
    }
    var acc: array<array<f32, 4>, 4>;
    for (var k0 = 0u; k0 < p.k; k0 += 16u) {
        for (var e = 0u; e < 4u; e++) {
            let k = k0 + a_kk;
            var av = 0.0;
            if (k < p.k) {
                av = a[a_at[e] + k * p.a_sk];
            }
            a_tile[a_kk * 64u + li / 16u + 16u * e] = Elem(av);
            let kb = li / 64u + 4u * e;
            var bv = 0.0;
            if (k0 + kb < p.k) {
                bv = load_w(b_col0 + (k0 + kb) * p.b_sk);
            }
            b_tile[kb * 64u + li % 64u] = Elem(bv);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 16u; kk++) {
            var ar: array<Elem, 4>;
            var br: array<Elem, 4>;
            for (var i = 0u; i < 4u; i++) {
                ar[i] = a_tile[kk * 64u + lid.y * 4u + i];
                // Columns interleaved across the 16 threads of a row.
                br[i] = b_tile[kk * 64u + lid.x + 16u * i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
#if F16_MATH
                    acc[i][j] += f32(ar[i] * br[j]);
#else
                    acc[i][j] = fma(ar[i], br[j], acc[i][j]);
#endif
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            let row = m0 + lid.y * 4u + i;
            let col = n0 + lid.x + 16u * j;
            if (row < p.m && col < p.n) {
                epilogue(batch, row, col, acc[i][j]);
            }
        }
    }
}
