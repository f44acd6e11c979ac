// Workgroup reductions over WG threads (a power of two). Every invocation gets the same result.
//
// Portable: a tree through workgroup memory, log2(WG) barriers.
// SUBGROUPS (the adapter's SUBGROUP feature; naga's `subgroup_id` and `num_subgroups`, so native
// backends only): each subgroup reduces in registers, its first invocation writes one partial, and
// every invocation combines the partials in subgroup order, two barriers in all. Only subgroup
// reductions over the active invocations are used (never shuffles between lanes), so a subgroup
// left partly filled by the hardware still reduces correctly.
//
// Entry points take an `Invocation` (its builtins) and pass it on.

struct Invocation {
    @builtin(local_invocation_index) lid: u32,
#if SUBGROUPS
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(num_subgroups) subgroups: u32,
#endif
}

var<workgroup> red_a: array<f32, ${WG}>;
var<workgroup> red_b: array<f32, ${WG}>;
var<workgroup> red_c: array<f32, ${WG}>;

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

#if SUBGROUPS
// Each subgroup's `partial`, written by its first lane into red_a[subgroup], between barriers.
fn share_partial(inv: Invocation, partial: f32) {
    workgroupBarrier();
    if (inv.lane == 0u) {
        red_a[inv.subgroup] = partial;
    }
    workgroupBarrier();
}

fn reduce_sum(inv: Invocation, value: f32) -> f32 {
    share_partial(inv, subgroupAdd(value));
    var total = red_a[0];
    for (var s = 1u; s < inv.subgroups; s++) {
        total += red_a[s];
    }
    return total;
}

fn reduce_max(inv: Invocation, value: f32) -> f32 {
    share_partial(inv, subgroupMax(value));
    var total = red_a[0];
    for (var s = 1u; s < inv.subgroups; s++) {
        total = max(total, red_a[s]);
    }
    return total;
}

// Within a subgroup, Chan et al.'s combination in one step: the count, the count-weighted mean,
// and each lane's M2 plus its count times its squared distance to that mean.
fn reduce_welford(inv: Invocation, value: Welford) -> Welford {
    let n = subgroupAdd(value.n);
    var mean = 0.0;
    if (n > 0.0) {
        mean = subgroupAdd(value.n * value.mean) / n;
    }
    let d = value.mean - mean;
    let m2 = subgroupAdd(value.m2 + value.n * d * d);
    workgroupBarrier();
    if (inv.lane == 0u) {
        red_a[inv.subgroup] = n;
        red_b[inv.subgroup] = mean;
        red_c[inv.subgroup] = m2;
    }
    workgroupBarrier();
    var total = Welford(red_a[0], red_b[0], red_c[0]);
    for (var s = 1u; s < inv.subgroups; s++) {
        total = welford_merge(total, Welford(red_a[s], red_b[s], red_c[s]));
    }
    return total;
}
#else
fn reduce_sum(inv: Invocation, value: f32) -> f32 {
    let lid = inv.lid;
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

fn reduce_max(inv: Invocation, value: f32) -> f32 {
    let lid = inv.lid;
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

fn reduce_welford(inv: Invocation, value: Welford) -> Welford {
    let lid = inv.lid;
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
#endif
