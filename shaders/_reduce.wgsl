// Workgroup reductions over WG threads (a power of two), through workgroup memory.

var<workgroup> red_a: array<f32, ${WG}>;
var<workgroup> red_b: array<f32, ${WG}>;
var<workgroup> red_c: array<f32, ${WG}>;

fn reduce_sum(lid: u32, value: f32) -> f32 {
    workgroupBarrier();
    red_a[lid] = value;
    workgroupBarrier();
    for (var s = ${WG}u / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red_a[lid] = red_a[lid] + red_a[lid + s];
        }
        workgroupBarrier();
    }
    return red_a[0];
}

fn reduce_max(lid: u32, value: f32) -> f32 {
    workgroupBarrier();
    red_a[lid] = value;
    workgroupBarrier();
    for (var s = ${WG}u / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red_a[lid] = max(red_a[lid], red_a[lid + s]);
        }
        workgroupBarrier();
    }
    return red_a[0];
}

// Welford state: count, mean, sum of squared deviations (M2).
struct Welford {
    n: f32,
    mean: f32,
    m2: f32,
}

fn welford_push(w: Welford, x: f32) -> Welford {
    let n = w.n + 1.0;
    let delta = x - w.mean;
    let mean = w.mean + delta / n;
    return Welford(n, mean, w.m2 + delta * (x - mean));
}

fn welford_merge(a: Welford, b: Welford) -> Welford {
    let n = a.n + b.n;
    if (n == 0.0) {
        return a;
    }
    let delta = b.mean - a.mean;
    let fb = b.n / n;
    return Welford(n, a.mean + delta * fb, a.m2 + b.m2 + delta * delta * a.n * fb);
}

fn reduce_welford(lid: u32, value: Welford) -> Welford {
    workgroupBarrier();
    red_a[lid] = value.n;
    red_b[lid] = value.mean;
    red_c[lid] = value.m2;
    workgroupBarrier();
    for (var s = ${WG}u / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            let merged = welford_merge(
                Welford(red_a[lid], red_b[lid], red_c[lid]),
                Welford(red_a[lid + s], red_b[lid + s], red_c[lid + s]),
            );
            red_a[lid] = merged.n;
            red_b[lid] = merged.mean;
            red_c[lid] = merged.m2;
        }
        workgroupBarrier();
    }
    return Welford(red_a[0], red_b[0], red_c[0]);
}
