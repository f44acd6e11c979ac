//! `scheduler_config.json`: parsed, validated, and the schedule built and stepped as a
//! generation would.
#![no_main]

use std::path::Path;

use audioldm::pipeline::ddim::{DdimConfig, DdimScheduler};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(config) = serde_json::from_slice::<DdimConfig>(data) else {
        return;
    };
    if let Ok(scheduler) = DdimScheduler::new(config, Path::new("scheduler")) {
        for steps in [1, 10, 1000] {
            if let Ok(timesteps) = scheduler.timesteps(steps) {
                for t in timesteps {
                    let _ = scheduler.step(t, steps, 1.0);
                    let _ = scheduler.noise_scales(t);
                }
            }
        }
    }
});
