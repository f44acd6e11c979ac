// What every GEMM kernel shares (matmul.wgsl, matmul_tiles.wgsl): the op's parameters, the bias,
// residual and output bindings, the epilogue and the strided row and column addressing.

struct Params {
    m: u32, n: u32, k: u32, batch: u32,
    a_off: u32, a_sb: u32, a_sm: u32, a_sk: u32,
    b_off: u32, b_sb: u32, b_sk: u32, b_sn: u32,
    c_sb: u32, c_sm: u32,
    alpha: f32, slope: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> residual: array<f32>;
@group(0) @binding(5) var<storage, read_write> c: array<f32>;

#include "_activation.wgsl"

fn epilogue(batch: u32, row: u32, col: u32, acc: f32) {
    var v = p.alpha * acc;
#if BIAS
    v = v + bias[col];
#endif
    v = activate(v, p.slope);
    let at = batch * p.c_sb + row * p.c_sm + col;
#if RESIDUAL
    v = v + residual[at];
#endif
    c[at] = v;
}

// Where row `row` of A and column `col` of B start, in elements; rows and columns past the edge
// are clamped to the last (the tiled kernels load them and skip them at the store).
fn a_row(batch: u32, row: u32) -> u32 {
    return p.a_off + batch * p.a_sb + min(row, p.m - 1u) * p.a_sm;
}

fn b_col(batch: u32, col: u32) -> u32 {
    return p.b_off + batch * p.b_sb + min(col, p.n - 1u) * p.b_sn;
}
