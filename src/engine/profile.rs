//! GPU time per dispatch, from timestamp queries (`TIMESTAMP_QUERY`): what
//! [`crate::engine::Executable::profile_async`] measures, summed per kernel family and per op.

use std::collections::BTreeMap;
use std::fmt::Write;

/// One dispatch of a profiled replay.
#[derive(Clone, Debug)]
pub struct OpTiming {
    /// The op builder's label (`linear`, `conv2d`, `group_norm`, ...).
    pub label: String,
    /// `shader:entry` of its kernel.
    pub kernel: String,
    /// Its output's shape.
    pub shape: String,
    /// GPU seconds between the start and the end of its compute pass.
    pub seconds: f64,
    /// Floating-point operations its builder counted (0 for ops that move data).
    pub flops: u64,
    /// Bytes it binds (inputs and output once).
    pub bytes: u64,
}

/// The dispatches of one replay in order, with their GPU times.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    pub ops: Vec<OpTiming>,
}

/// Time and work summed over a group of dispatches.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Total {
    pub dispatches: usize,
    pub seconds: f64,
    pub flops: u64,
    pub bytes: u64,
}

impl Total {
    fn add(&mut self, op: &OpTiming) {
        self.dispatches += 1;
        self.seconds += op.seconds;
        self.flops += op.flops;
        self.bytes += op.bytes;
    }

    /// Achieved GFLOP/s (`None` for ops that move data only).
    pub fn gflops(&self) -> Option<f64> {
        (self.flops > 0 && self.seconds > 0.0).then(|| self.flops as f64 / self.seconds / 1e9)
    }

    /// Achieved GB/s over the bytes bound.
    pub fn gbytes(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes as f64 / self.seconds / 1e9
        } else {
            0.0
        }
    }
}

impl Profile {
    /// GPU seconds of every dispatch together.
    pub fn total(&self) -> Total {
        let mut total = Total::default();
        self.ops.iter().for_each(|op| total.add(op));
        total
    }

    /// Per kernel family (the shader file), the most time first.
    pub fn by_family(&self) -> Vec<(String, Total)> {
        self.grouped(|op| {
            op.kernel
                .split(':')
                .next()
                .unwrap_or_default()
                .trim_end_matches(".wgsl")
                .to_string()
        })
    }

    /// Per op (label, kernel and shape), the most time first.
    pub fn by_op(&self) -> Vec<(String, Total)> {
        self.grouped(|op| format!("{} [{}] {}", op.label, op.kernel, op.shape))
    }

    fn grouped(&self, key: impl Fn(&OpTiming) -> String) -> Vec<(String, Total)> {
        let mut groups: BTreeMap<String, Total> = BTreeMap::new();
        for op in &self.ops {
            groups.entry(key(op)).or_default().add(op);
        }
        let mut groups: Vec<_> = groups.into_iter().collect();
        groups.sort_by(|a, b| b.1.seconds.total_cmp(&a.1.seconds));
        groups
    }

    /// A table of the families and of the `top` costliest ops.
    pub fn report(&self, title: &str, top: usize) -> String {
        let total = self.total();
        let mut text = format!(
            "{title}: {:.3} s of GPU time in {} dispatches\n",
            total.seconds, total.dispatches
        );
        let row = |text: &mut String, name: &str, t: &Total| {
            let share = if total.seconds > 0.0 {
                100.0 * t.seconds / total.seconds
            } else {
                0.0
            };
            let gflops = t
                .gflops()
                .map_or_else(|| "-".to_string(), |g| format!("{g:.1}"));
            let _ = writeln!(
                text,
                "  {name:<72} {:>5} {:>9.2} ms {share:>5.1}% {gflops:>8} GFLOP/s {:>7.1} GB/s",
                t.dispatches,
                t.seconds * 1e3,
                t.gbytes()
            );
        };
        text.push_str(" by kernel family:\n");
        for (name, t) in self.by_family() {
            row(&mut text, &name, &t);
        }
        let _ = writeln!(text, " costliest ops (of {}):", self.by_op().len());
        for (name, t) in self.by_op().into_iter().take(top) {
            row(&mut text, &name, &t);
        }
        text
    }
}
