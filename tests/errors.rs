//! GPU failures come back as errors, not panics.

mod common;

use audioldm::engine::{Context, DType, GpuError, Graph, Tensor};
use common::*;

#[test]
fn an_allocation_over_the_device_limit_is_an_out_of_memory_error() {
    let ctx = ctx();
    let too_many = (ctx.limits().max_buffer_size / 4 + 1) as usize;
    let err = Tensor::empty(ctx, [too_many], DType::F32).unwrap_err();
    println!("{err}");
    assert!(matches!(err, GpuError::OutOfMemory(_)), "{err:?}");
}

#[test]
fn a_lost_device_is_reported_by_the_next_call() {
    // A context of its own: losing the shared one would break the other tests.
    let ctx = Context::new_blocking().expect("a GPU adapter");
    let x = Tensor::from_f32(&ctx, [4], DType::F32, &[1.0, 2.0, 3.0, 4.0]).unwrap();
    ctx.device().destroy();
    let _ = ctx.wait();
    let err = Tensor::from_f32(&ctx, [4], DType::F32, &[1.0; 4]).unwrap_err();
    println!("{err}");
    assert!(matches!(err, GpuError::DeviceLost(_)), "{err:?}");
    let mut g = Graph::new(&ctx);
    let v = g.input(&x);
    let y = g.scale(v, 2.0, 0.0).unwrap();
    g.output(y).unwrap();
    assert!(g.build().is_err(), "building on a lost device must fail");
    assert!(
        x.to_vec_f32(&ctx).is_err(),
        "reading from a lost device must fail"
    );
}

#[test]
fn writing_the_wrong_number_of_values_is_an_error() {
    let t = Tensor::empty(ctx(), [2, 3], DType::F32).unwrap();
    let err = t.write_f32(ctx(), &[0.0; 5]).unwrap_err().to_string();
    assert!(err.contains("[2, 3]"), "{err}");
    let ids = Tensor::empty(ctx(), [3], DType::U32).unwrap();
    assert!(ids.write_f32(ctx(), &[0.0; 3]).is_err());
}
