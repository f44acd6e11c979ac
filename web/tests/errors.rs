//! GPU failures in the browser come back as errors that name them, as on the desktop.
#![cfg(target_arch = "wasm32")]

mod common;

use audioldm::engine::{DType, GpuError, Tensor};
use common::ctx;
use wasm_bindgen_test::{console_log, wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

/// More than the browser's device can hold is an out-of-memory error, and the app's message for
/// it names it and says how to need less memory.
#[wasm_bindgen_test]
async fn an_allocation_over_the_browsers_limit_is_out_of_memory() {
    let ctx = ctx().await;
    let too_many = (ctx.limits().max_buffer_size / 4 + 1) as usize;
    let err = Tensor::empty(&ctx, [too_many], DType::F32).unwrap_err();
    assert!(matches!(err, GpuError::OutOfMemory(_)), "{err:?}");
    let message = audioldm::app::worker::failure_message(&err.into());
    console_log!("{message}");
    assert!(
        message.starts_with("out of GPU memory while allocating"),
        "{message}"
    );
    assert!(message.contains("browser tabs"), "{message}");
    // The device still works afterwards.
    let ok = Tensor::from_f32(&ctx, [4], DType::F32, &[1.0, 2.0, 3.0, 4.0]).expect("a tensor");
    assert_eq!(
        ok.to_vec_f32_async(&ctx).await.expect("read back"),
        [1.0, 2.0, 3.0, 4.0]
    );
}
