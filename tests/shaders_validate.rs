//! Every WGSL file in `shaders/` is registered with the engine, and every specialisation of it
//! parses and validates with naga (the WGSL front end wgpu itself uses).

use std::collections::BTreeSet;

use audioldm::engine::kernel::{SHADERS, preprocess};

/// Names a source tests with `#if NAME` and substitutes with `${NAME}`, following includes.
fn names(source: &str, flags: &mut BTreeSet<String>, values: &mut BTreeSet<String>) {
    for line in source.lines() {
        let line = line.trim_start();
        if let Some(cond) = line.strip_prefix("#if ") {
            flags.insert(cond.trim().trim_start_matches('!').trim().to_string());
        } else if let Some(file) = line.strip_prefix("#include ") {
            let file = file.trim().trim_matches('"');
            let included = SHADERS
                .iter()
                .find(|s| s.name == file)
                .expect("included file is registered");
            names(included.source, flags, values);
        }
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            let after = &rest[start + 2..];
            let end = after.find('}').expect("closed ${");
            values.insert(after[..end].to_string());
            rest = &after[end + 1..];
        }
    }
}

fn validate(name: &str, defines: &[(&str, String)]) {
    let source = preprocess(name, defines).unwrap_or_else(|e| panic!("{name} {defines:?}: {e}"));
    let module = naga::front::wgsl::parse_str(&source)
        .unwrap_or_else(|e| panic!("{name} {defines:?}: {}", e.emit_to_string(&source)));
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .unwrap_or_else(|e| panic!("{name} {defines:?}: {}", e.emit_to_string(&source)));
}

#[test]
fn every_shader_file_is_registered() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    let on_disk: BTreeSet<String> = std::fs::read_dir(dir)
        .expect("shaders/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wgsl"))
        .collect();
    let registered: BTreeSet<String> = SHADERS.iter().map(|s| s.name.to_string()).collect();
    assert_eq!(on_disk, registered);
}

/// Each kernel file with every flag off and each flag alone; `${NAME}` values set to 8 (a valid
/// tile size, workgroup size and head-dim bound). Some flags select an entry point and exclude each
/// other, so not every combination is a program; the combinations the engine uses are compiled (and
/// so validated by the same naga front end) whenever the kernel tests record them.
#[test]
fn every_specialisation_validates_with_naga() {
    let mut checked = 0;
    for shader in SHADERS.iter().filter(|s| !s.name.starts_with('_')) {
        let (mut flags, mut values) = (BTreeSet::new(), BTreeSet::new());
        names(shader.source, &mut flags, &mut values);
        let base: Vec<(&str, String)> = values
            .iter()
            .map(|v| (v.as_str(), "8".to_string()))
            .collect();
        let mut sets = vec![base.clone()];
        for flag in &flags {
            let mut one = base.clone();
            one.push((flag.as_str(), "1".to_string()));
            sets.push(one);
        }
        for defines in &sets {
            validate(shader.name, defines);
            checked += 1;
        }
        println!(
            "{}: {} specialisations valid (flags {flags:?})",
            shader.name,
            sets.len()
        );
    }
    assert!(checked > 0);
}
