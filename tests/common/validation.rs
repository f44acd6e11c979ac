//! The Khronos validation layer under every test GPU context. [`context`] makes the Vulkan instance
//! with wgpu's debugging flags: wgpu-hal then loads `VK_LAYER_KHRONOS_validation`, turns on its
//! synchronisation validation (through `VK_EXT_validation_features`) and passes what the layer says
//! to the `log` crate, where [`Collector`] keeps it. Any warning or error of the layer fails the
//! tests: [`check`] (run by `ctx()`, `run()` and `assert_close()`) panics with the messages found
//! since it last ran, and one still unreported when the test process ends makes it exit with 1.
//!
//! That the layer is there, with synchronisation validation, is read from its status message at
//! instance creation. Without the layer the tests run unvalidated, with a note; under `CI` they fail.

use std::cell::Cell;
use std::ffi::c_int;
use std::sync::{Mutex, MutexGuard, Once, PoisonError};

use audioldm::engine::{Context, LimitsProfile};

/// Where wgpu-hal's debug-utils messenger logs the layer's messages: errors and warnings at their
/// own level, information at debug.
const TARGET: &str = "wgpu_hal::vulkan::instance";
/// The start of the layer's status message (information) at instance creation, which lists the
/// validation it enables.
const STATUS: &str = "Khronos Validation Layer Active";
const SYNC: &str = "VK_VALIDATION_FEATURE_ENABLE_SYNCHRONIZATION_VALIDATION";

/// A message of this layer version that is not about our work: the SPIR-V validator it carries
/// (early 2023) predates `SourceLanguage` WGSL (10), which naga writes in the debug information
/// wgpu adds with `InstanceFlags::DEBUG` (the flag that also brings the messenger).
const OLDER_THAN_NAGA: [&str; 2] = [
    "UNASSIGNED-CoreValidation-Shader-InconsistentSpirv",
    "Invalid source language operand: 10",
];

/// The layer's warnings and errors no check has reported yet.
static FOUND: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// The status message of the instance being made.
static STATUS_SEEN: Mutex<Option<String>> = Mutex::new(None);

thread_local! {
    /// Whether the message whose lines the layer is reporting on this thread is ignored.
    static IGNORING: Cell<bool> = const { Cell::new(false) };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Collector;

impl log::Log for Collector {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.target() == TARGET
    }

    fn log(&self, record: &log::Record) {
        if record.target() != TARGET {
            return;
        }
        let text = record.args().to_string();
        if record.level() <= log::Level::Warn {
            // wgpu-hal logs a message's objects and labels as lines of their own, tab first.
            let continued = text.starts_with('\t');
            let ignored = if continued {
                IGNORING.get()
            } else {
                OLDER_THAN_NAGA.iter().all(|part| text.contains(part))
            };
            IGNORING.set(ignored);
            if !ignored {
                lock(&FOUND).push(format!("{}: {text}", record.level()));
            }
        } else if text.contains(STATUS) {
            *lock(&STATUS_SEEN) = Some(text);
        }
    }

    fn flush(&self) {}
}

/// A new context, on the adapter and instance variables the environment names, with `profile`'s
/// limits, whose Vulkan instance runs the validation layer with synchronisation validation.
pub fn context(profile: LimitsProfile) -> Context {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        log::set_logger(&Collector).expect("the tests' logger is the process's only one");
        // SAFETY: registers a function that only reads a static and exits.
        assert_eq!(unsafe { atexit(fail_on_unreported) }, 0, "atexit");
    });
    // wgpu-hal's messenger asks the layer for the severities `log` lets through as the instance
    // is made: information then (the status message), warnings and errors afterwards.
    static CREATING: Mutex<()> = Mutex::new(());
    let creating = lock(&CREATING);
    log::set_max_level(log::LevelFilter::Debug);
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        flags: wgpu::InstanceFlags::debugging(),
        ..audioldm::engine::context::instance_descriptor()
    });
    log::set_max_level(log::LevelFilter::Warn);
    let status = lock(&STATUS_SEEN).take();
    drop(creating);
    let ctx = pollster::block_on(Context::from_instance(&instance, profile))
        .unwrap_or_else(|e| panic!("GPU tests need a GPU adapter: {e}"));
    if ctx.adapter_info().backend == wgpu::Backend::Vulkan {
        match status {
            Some(status) => {
                assert!(
                    status.contains(SYNC),
                    "no synchronisation validation: {status}"
                );
                eprintln!("{}", status.trim_end());
            }
            None if std::env::var_os("CI").is_some() => panic!(
                "the Vulkan validation layer (VK_LAYER_KHRONOS_validation) did not load: \
                 install vulkan-validationlayers (scripts/setup.sh --tests)"
            ),
            None => eprintln!(
                "note: no Vulkan validation layer (vulkan-validationlayers): GPU work unvalidated"
            ),
        }
    }
    check();
    ctx
}

/// Panics with the layer's warnings and errors since the last check (the test that caused them,
/// or the next one to check in the same process, fails).
pub fn check() {
    let found = take();
    assert!(
        found.is_empty(),
        "the Vulkan validation layer reported:\n{}",
        found.join("\n")
    );
}

/// The layer's warnings and errors since the last check, which no longer fail the tests.
pub fn take() -> Vec<String> {
    std::mem::take(&mut *lock(&FOUND))
}

unsafe extern "C" {
    fn atexit(callback: extern "C" fn()) -> c_int;
    fn _exit(status: c_int) -> !;
}

/// Run as the test process exits: messages no check reported (of the last test to run, after its
/// last check) fail it.
extern "C" fn fail_on_unreported() {
    let found = take();
    if !found.is_empty() {
        eprintln!(
            "the Vulkan validation layer reported, after the tests' last check:\n{}",
            found.join("\n")
        );
        // SAFETY: ends the process, as exit would; exit itself may not be called again here.
        unsafe { _exit(1) }
    }
}
