//! The memory plan: every intermediate lives from the op that writes it to the last op that reads
//! it, and intermediates whose lifetimes do not overlap share a slot (largest first, first fit).
//! Backend-neutral: a slot is a buffer of the wgpu backend, a range of one arena on the CPU.

use std::ops::Range;

use super::{Storage, Value, Var};

/// What one op (a dispatch, or a recorded node) reads and writes; views resolved to their base.
pub(crate) struct Use {
    pub reads: Vec<Var>,
    pub writes: Var,
}

/// Where a graph's intermediates live.
pub(crate) struct MemoryPlan {
    /// The index of the first op that writes each var (`usize::MAX` for none).
    pub first: Vec<usize>,
    /// Each intermediate's byte range (whole, or one per part) and the slot it is placed in.
    pub placed: Vec<(usize, Range<u64>, usize)>,
    /// The size of each slot.
    pub slot_bytes: Vec<u64>,
    /// What the intermediates would take with a slot each.
    pub unplanned_bytes: u64,
}

/// Plans `values` as the ops use them, in order; without `share`, every intermediate gets a slot
/// of its own (the reference the plan is tested against).
pub(crate) fn plan(values: &[Value], uses: impl Iterator<Item = Use>, share: bool) -> MemoryPlan {
    let mut first = vec![usize::MAX; values.len()];
    let mut last = vec![0usize; values.len()];
    for (i, op) in uses.enumerate() {
        for var in op.reads {
            last[var.0] = i;
        }
        let out = op.writes.0;
        first[out] = first[out].min(i);
        last[out] = last[out].max(i);
    }
    let mut unplanned_bytes = 0;
    let mut intermediates = Vec::new();
    for (i, value) in values.iter().enumerate() {
        if !matches!(value.storage, Storage::Intermediate) {
            continue;
        }
        let bytes = value.dtype.storage_bytes(value.shape.numel());
        unplanned_bytes += bytes;
        let interval = (first[i], last[i].max(first[i]));
        if value.parts.is_empty() {
            intermediates.push((i, 0..bytes, interval));
        }
        for part in &value.parts {
            intermediates.push((i, part.clone(), interval));
        }
    }
    let intervals: Vec<_> = intermediates
        .iter()
        .map(|(_, range, (first, last))| (*first, *last, range.end - range.start))
        .collect();
    let (slot_of, slot_bytes) = if share {
        plan_slots(&intervals)
    } else {
        (
            (0..intervals.len()).collect(),
            intervals.iter().map(|i| i.2).collect(),
        )
    };
    let placed = intermediates
        .into_iter()
        .zip(slot_of)
        .map(|((var, range, _), slot)| (var, range, slot))
        .collect();
    MemoryPlan {
        first,
        placed,
        slot_bytes,
        unplanned_bytes,
    }
}

/// Assigns each interval (first, last, bytes) a slot so that slots never hold overlapping
/// intervals; returns the slot of each and the size of each slot. Largest first, first fit.
fn plan_slots(intervals: &[(usize, usize, u64)]) -> (Vec<usize>, Vec<u64>) {
    let mut order: Vec<usize> = (0..intervals.len()).collect();
    order.sort_by(|&a, &b| intervals[b].2.cmp(&intervals[a].2).then(a.cmp(&b)));
    let mut slot_of = vec![0; intervals.len()];
    let mut slots: Vec<(u64, Vec<(usize, usize)>)> = Vec::new();
    for i in order {
        let (first, last, bytes) = intervals[i];
        let free = slots
            .iter()
            .position(|(_, taken)| taken.iter().all(|&(f, l)| last < f || first > l));
        let slot = match free {
            Some(slot) => slot,
            None => {
                slots.push((bytes, Vec::new()));
                slots.len() - 1
            }
        };
        slots[slot].1.push((first, last));
        slot_of[i] = slot;
    }
    (slot_of, slots.into_iter().map(|(bytes, _)| bytes).collect())
}

#[cfg(test)]
mod tests {
    use super::plan_slots;

    #[test]
    fn disjoint_lifetimes_share_a_slot() {
        // a: ops 0-1, b: 1-2, c: 2-3 (disjoint from a), d: 3-3.
        let intervals = [(0, 1, 100), (1, 2, 80), (2, 3, 60), (3, 3, 200)];
        let (slot_of, sizes) = plan_slots(&intervals);
        for i in 0..intervals.len() {
            for j in 0..i {
                let (a, b) = (intervals[i], intervals[j]);
                let overlap = !(a.1 < b.0 || b.1 < a.0);
                if overlap {
                    assert_ne!(
                        slot_of[i], slot_of[j],
                        "{i} and {j} overlap but share a slot"
                    );
                }
                assert!(sizes[slot_of[i]] >= a.2);
            }
        }
        assert!(sizes.iter().sum::<u64>() < intervals.iter().map(|i| i.2).sum::<u64>());
    }
}
