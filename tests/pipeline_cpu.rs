//! The tiny pipeline's diffusers goldens on the CPU backend: text-to-audio end to end, with the
//! same tolerances as on lavapipe (`tests/pipeline.rs`).

mod common;

use std::sync::atomic::AtomicBool;

use audioldm::engine::Context;
use audioldm::model::nn::Precision;
use audioldm::pipeline::{Event, Pipeline};
use common::*;

fn pipeline() -> Pipeline {
    Pipeline::load(
        &Context::cpu(),
        &fixtures().join("tiny"),
        Precision::default(),
    )
    .expect("load the tiny model")
}

#[test]
fn end_to_end_matches_diffusers_on_the_cpu() {
    let p = pipeline();
    let mut steps = Vec::new();
    let out = p
        .generate(&tiny_request(), &AtomicBool::new(false), |event| {
            if let Event::Step { i, n, .. } = event {
                steps.push((i, n));
            }
        })
        .expect("generate");
    assert_eq!(steps, vec![(1, 3), (2, 3), (3, 3)]);
    assert_eq!(out.audio.samples.len(), 16000);
    for (name, got, golden, tol) in tiny::tiny_checks(&out) {
        assert_close(name, got, &f64s(&tiny_golden(golden)), tol);
    }
}
