//! The module layering stated in the crate documentation (src/lib.rs, "Layers"): every
//! `crate::module` path in a module's code (comments excluded) must name a module of a lower
//! layer. This keeps the import circle the crate once had from coming back.

use std::collections::BTreeMap;
use std::path::Path;

/// The layers, bottom first; the same table as in src/lib.rs.
const LAYERS: &[&[&str]] = &[
    &["tlfs", "version"],
    &["flags"],
    &["host", "options"],
    &["backend"],
    &["error"],
    &["config"],
    &["profiles"],
    &["request"],
    &["parse", "decision"],
    &["migration", "advice"],
    &["resolve"],
    &["cpuid"],
    &["formats"],
    &["baseline"],
    &["render"],
    &["cli"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// Every module's source text without comments, keyed by module (formats/* count as one).
fn sources() -> BTreeMap<String, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut add = |module: String, path: &Path| {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .map(|l| format!("{l}\n"))
            .collect();
        out.entry(module).or_default().push_str(&code);
    };
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        if path.is_dir() {
            for sub in std::fs::read_dir(&path).unwrap() {
                add(name.clone(), &sub.unwrap().path());
            }
        } else if name != "lib" {
            add(name, &path);
        }
    }
    out
}

/// The module names after `crate::` in the text.
fn crate_paths(code: &str) -> Vec<String> {
    code.match_indices("crate::")
        .filter(|(i, _)| {
            // Not part of a longer identifier such as `hv_model_crate::`.
            *i == 0 || !code[..*i].ends_with(|c: char| c.is_alphanumeric() || c == '_')
        })
        .map(|(i, _)| {
            code[i + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn every_module_has_a_layer() {
    for module in sources().keys() {
        assert!(
            layer_of(module).is_some(),
            "src/{module}: add it to the layer table in src/lib.rs and tests/layering.rs"
        );
    }
}

#[test]
fn modules_use_only_lower_layers() {
    let mut violations = Vec::new();
    for (module, code) in sources() {
        let Some(mine) = layer_of(&module) else {
            continue;
        };
        for dep in crate_paths(&code) {
            if dep == module {
                continue;
            }
            match layer_of(&dep) {
                Some(theirs) if theirs < mine => {}
                Some(theirs) => violations.push(format!(
                    "{module} (layer {mine}) uses crate::{dep} (layer {theirs})"
                )),
                None => violations.push(format!(
                    "{module} uses crate::{dep}, which is no module: use the module path"
                )),
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_check_sees_an_upward_use() {
    // The scanner itself: an upward path is found, a longer identifier is not a path.
    assert_eq!(
        crate_paths("use crate::resolve::Slot;\nlet x = my_crate::foo;"),
        vec!["resolve".to_string()]
    );
    assert!(layer_of("resolve") > layer_of("config"));
}
