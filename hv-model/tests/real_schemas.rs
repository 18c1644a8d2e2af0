//! KubeVirt and Proxmox exports against the published API descriptions that package
//! registries carry (neither project ships a validator or its schema in Debian):
//!
//! * KubeVirt: `@kubevirt-ui-ext/kubevirt-api` (npm), TypeScript models generated from
//!   KubeVirt's OpenAPI schema, at the kubevirt.io/v1 level of KubeVirt 1.8 (it has
//!   `tlbflush.direct/extended`). tests/real-tools/kubevirt-check.mjs reads each export through
//!   the models; a field that does not come back is unknown to KubeVirt. Field types and
//!   KubeVirt's own validation (the dependency rules of its admission webhook) need a cluster.
//! * Proxmox VE: `proxmox-api` (npm), types generated from Proxmox's API schema. Every key of
//!   an export (and of the import fixture) must be a VM config option there, `ostype` one of
//!   its values. The syntax inside `args:` is QEMU's and is checked by tests/real_tools.rs; the
//!   `cpu:` sub-options and flag list are a Proxmox format string the types do not describe.

mod common;
mod tools;

use std::path::{Path, PathBuf};

use hv_model::{export, resolve, Backend, Format, HostCapabilities, HvRequest, Profile};
use hv_model::{ResolveOptions, Targets, Version};

/// The npm packages, pinned.
const KUBEVIRT_API: &str = "@kubevirt-ui-ext/kubevirt-api@1.7.0";
const PROXMOX_API: &str = "proxmox-api@1.1.1";

/// Downloads and unpacks an npm package once per target directory; `Err` says why not.
fn npm_package(spec: &str) -> Result<PathBuf, String> {
    let npm = tools::tool("npm", "npm")?;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("npm")
        .join(spec.replace(['/', '@'], "_"));
    let package = dir.join("package");
    if package.join("package.json").is_file() {
        return Ok(package);
    }
    std::fs::create_dir_all(&dir).unwrap();
    let out = std::process::Command::new(&npm)
        .args(["pack", spec, "--silent", "--pack-destination"])
        .arg(&dir)
        .output()
        .map_err(|e| format!("cannot run npm: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "npm pack {spec} failed (registry unreachable?): {}",
            tools::tail(&String::from_utf8_lossy(&out.stderr), 2)
        ));
    }
    let tarball = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let status = std::process::Command::new("tar")
        .arg("xzf")
        .arg(dir.join(&tarball))
        .arg("-C")
        .arg(&dir)
        .status()
        .map_err(|e| format!("cannot run tar: {e}"))?;
    if !status.success() || !package.is_dir() {
        return Err(format!("cannot unpack {tarball}"));
    }
    Ok(package)
}

fn profiles() -> Vec<(String, hv_model::HvConfig)> {
    let mut out = Vec::new();
    for (h, host) in [
        ("intel", HostCapabilities::example_intel()),
        ("amd", HostCapabilities::example_amd()),
    ] {
        for p in Profile::ALL {
            let r = resolve(
                &HvRequest::from_profile(p),
                &host,
                Backend::Kernel,
                &ResolveOptions::default(),
            )
            .unwrap();
            out.push((format!("{p} ({h})"), r.config));
        }
    }
    out
}

/// A VirtualMachineInstance holding an exported `spec.domain` fragment.
fn vmi(exported: &str) -> serde_json::Value {
    let fragment: serde_json::Value =
        serde_norway::from_str(exported).unwrap_or_else(|e| panic!("{e}\n{exported}"));
    let mut domain = fragment["spec"]["domain"].clone();
    domain["devices"] = serde_json::json!({});
    serde_json::json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "hvkvm-check"},
        "spec": {"domain": domain},
    })
}

/// Runs the model check; `Ok` when every field is KubeVirt's.
fn kubevirt_check(node: &Path, package: &Path, object: &serde_json::Value) -> Result<(), String> {
    use std::io::Write;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/real-tools/kubevirt-check.mjs");
    let mut child = std::process::Command::new(node)
        .arg(script)
        .arg(package)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run node: {e}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(object.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
fn kubevirt_api_has_every_exported_field() {
    let check = "kubevirt_api_has_every_exported_field";
    let (node, package) =
        match tools::tool("node", "nodejs").and_then(|n| Ok((n, npm_package(KUBEVIRT_API)?))) {
            Ok(x) => x,
            Err(why) => return tools::skip(check, &why),
        };
    let mut failures = Vec::new();
    // The package's API level (1.8) and the default target (older, a subset).
    for version in [Version::new(1, 8), Targets::default().kubevirt] {
        let targets = Targets {
            kubevirt: version,
            ..Targets::default()
        };
        for (name, config) in profiles() {
            let exported = export(Format::Kubevirt, &config, &targets);
            if let Err(why) = kubevirt_check(&node, &package, &vmi(&exported.text)) {
                failures.push(format!("{name} for KubeVirt {version}: {why}"));
            }
        }
    }
    // hvkvm's own import fixture (a VirtualMachine: check its template's domain).
    let fixture: serde_json::Value = serde_norway::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kubevirt-vm.yaml"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut object = vmi("spec: {domain: {}}");
    object["spec"]["domain"] = fixture["spec"]["template"]["spec"]["domain"].clone();
    object["spec"]["domain"]["devices"] = serde_json::json!({});
    if let Err(why) = kubevirt_check(&node, &package, &object) {
        failures.push(format!("fixture kubevirt-vm.yaml: {why}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Control: a field KubeVirt does not have is reported.
    let mut bad = vmi("spec:\n  domain:\n    features:\n      hyperv:\n        relaxed: {}\n");
    bad["spec"]["domain"]["features"]["hyperv"]["xmm_input"] = serde_json::json!({});
    let why = kubevirt_check(&node, &package, &bad).expect_err("unknown field accepted");
    assert!(why.contains("xmm_input"), "{why}");
}

/// The VM config options of Proxmox's API (`nodesQemuConfigVmConfig`) with their types, and
/// the values of `ostype`.
fn proxmox_options(package: &Path) -> (Vec<(String, String)>, Vec<String>) {
    let model = std::fs::read_to_string(package.join("esm/model.d.ts")).unwrap();
    let start = model
        .find("interface nodesQemuConfigVmConfig {")
        .expect("proxmox-api has nodesQemuConfigVmConfig");
    let body = &model[start..];
    let body = &body[..body.find("\n    }").unwrap()];
    let options = body
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let (key, ty) = l.split_once(':')?;
            let key = key.trim_end_matches('?');
            key.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                .then(|| (key.to_string(), ty.trim().trim_end_matches(';').to_string()))
        })
        .collect();
    let ostype = model
        .find("type Tostype =")
        .map(|i| &model[i..i + model[i..].find(';').unwrap()])
        .expect("proxmox-api has Tostype");
    let values = ostype
        .split('\'')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect();
    (options, values)
}

/// Problems of a Proxmox config's main section against the option list.
fn proxmox_problems(text: &str, options: &[(String, String)], ostypes: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            break;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            problems.push(format!("'{line}' is not 'key: value'"));
            continue;
        };
        let value = value.trim();
        match options.iter().find(|(k, _)| k == key) {
            None => problems.push(format!("{key}: not a Proxmox VM option")),
            Some((_, ty)) if ty == "number" && value.parse::<f64>().is_err() => {
                problems.push(format!("{key}: '{value}' is not a number"))
            }
            Some((_, ty)) if ty == "boolean" && !matches!(value, "0" | "1") => {
                problems.push(format!("{key}: '{value}' is not 0 or 1"))
            }
            Some(_) if key == "ostype" && !ostypes.iter().any(|o| o == value) => {
                problems.push(format!("ostype: '{value}' is not one of {ostypes:?}"))
            }
            Some(_) => {}
        }
    }
    problems
}

#[test]
fn proxmox_options_exist() {
    let package = match npm_package(PROXMOX_API) {
        Ok(p) => p,
        Err(why) => return tools::skip("proxmox_options_exist", &why),
    };
    let (options, ostypes) = proxmox_options(&package);
    assert!(
        options.iter().any(|(k, t)| k == "args" && t == "string"),
        "{options:?}"
    );
    let mut failures = Vec::new();
    for (name, config) in profiles() {
        let text = export(Format::Proxmox, &config, &Targets::default()).text;
        for p in proxmox_problems(&text, &options, &ostypes) {
            failures.push(format!("{name}: {p}"));
        }
    }
    let fixture = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/proxmox-win11.conf"),
    )
    .unwrap();
    for p in proxmox_problems(&fixture, &options, &ostypes) {
        failures.push(format!("fixture proxmox-win11.conf: {p}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Control: made-up options and values are reported.
    let bad = proxmox_problems("hv_flags: relaxed\nostype: win12\n", &options, &ostypes);
    assert_eq!(bad.len(), 2, "{bad:?}");
    let _ = common::newest();
}
