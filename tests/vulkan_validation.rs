//! The validation check of the GPU tests (`common::validation`) can fail: raw Vulkan commands that
//! wgpu knows nothing of, recorded into a wgpu command encoder, break a rule of the layer's
//! synchronisation validation and one of its core checks, and both messages reach the collector
//! that fails the other tests.

mod common;

use wgpu::hal::api::Vulkan;

#[test]
fn the_validation_layer_reports_a_hazard_and_a_misuse() {
    let ctx = common::ctx();
    if ctx.adapter_info().backend != wgpu::Backend::Vulkan {
        eprintln!("note: not a Vulkan adapter; nothing to validate");
        return;
    }
    let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("raw fills"),
        size: 256,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    // SAFETY: the handles outlive the commands (the test waits for them); the layer drops the
    // commands it finds invalid, and without it they stay inside the buffer.
    unsafe {
        let device = ctx.device().as_hal::<Vulkan>().expect("a Vulkan device");
        let raw_buffer = buffer
            .as_hal::<Vulkan>()
            .expect("a Vulkan buffer")
            .raw_handle();
        encoder.as_hal_mut::<Vulkan, _, _>(|encoder| {
            let commands = encoder.expect("a Vulkan encoder").raw_handle();
            let vk = device.raw_device();
            // Two writes of one range without a barrier between them.
            vk.cmd_fill_buffer(commands, raw_buffer, 0, 256, 1);
            vk.cmd_fill_buffer(commands, raw_buffer, 0, 256, 2);
            // A fill offset that is not a multiple of 4.
            vk.cmd_fill_buffer(commands, raw_buffer, 2, 4, 0);
        });
    }
    ctx.queue().submit([encoder.finish()]);
    ctx.wait().expect("wait");
    // What fails every other test: the check panics with the layer's messages.
    let Err(report) = std::panic::catch_unwind(common::validation::check) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "the validation layer reported nothing"
        );
        eprintln!("note: the validation layer reported nothing (vulkan-validationlayers missing?)");
        return;
    };
    let report = report
        .downcast::<String>()
        .expect("a formatted panic message");
    for id in [
        "SYNC-HAZARD-WRITE-AFTER-WRITE",
        "VUID-vkCmdFillBuffer-dstOffset-00025",
    ] {
        assert!(
            report.contains(id),
            "no {id} in the check's report:\n{report}"
        );
    }
}
