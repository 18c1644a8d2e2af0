//! The `hvkvm hv` subcommands: clap parsing of [`HvCommand`] and [`run`]'s output and errors.

mod common;

use std::path::PathBuf;

use clap::Parser;
use hv_model::cli::{run, run_with, CliError, HvCommand, HvSelectionArgs};
use hv_model::{Enlightenment as E, HostCapabilities, Profile};

#[derive(Debug, Parser)]
struct TestCli {
    #[command(subcommand)]
    cmd: HvCommand,
}

/// How `hvkvm run` will embed the selection.
#[derive(Debug, Parser)]
struct RunLike {
    #[command(flatten)]
    hv: HvSelectionArgs,
    #[arg(long)]
    memory: Option<u32>,
}

fn parse(args: &[&str]) -> HvCommand {
    let argv = std::iter::once("hv").chain(args.iter().copied());
    TestCli::try_parse_from(argv)
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
        .cmd
}

fn exec(args: &[&str]) -> Result<String, CliError> {
    let mut out = Vec::new();
    run(&parse(args), &mut out)?;
    Ok(String::from_utf8(out).expect("UTF-8 output"))
}

/// Output and diagnostics.
fn exec2(args: &[&str]) -> Result<(String, String), CliError> {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    run_with(&parse(args), &mut out, &mut err)?;
    Ok((
        String::from_utf8(out).expect("UTF-8 output"),
        String::from_utf8(err).expect("UTF-8 diagnostics"),
    ))
}

/// A file in the temp dir, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn path(&self) -> &str {
        self.0.to_str().expect("UTF-8 temp path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn temp(name: &str, contents: &str) -> TempFile {
    // Tests run in parallel: every file gets its own name.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("hv-model-cli-{}-{n}-{name}", std::process::id()));
    std::fs::write(&path, contents).unwrap();
    TempFile(path)
}

fn intel_probe() -> TempFile {
    // A probe document as `hvkvm probe --json` writes it.
    let doc = serde_json::json!({
        "kvm_api_version": 12,
        "host_capabilities": HostCapabilities::example_intel(),
    });
    temp("intel.json", &doc.to_string())
}

fn amd_host() -> TempFile {
    temp(
        "amd.json",
        &serde_json::to_string(&HostCapabilities::example_amd()).unwrap(),
    )
}

#[test]
fn hv_command_parses() {
    let cmd = parse(&[
        "explain",
        "--profile",
        "windows",
        "--hv",
        "hv-evmcs,-hv-avic",
        "--hv",
        "hv-crash",
        "--json",
    ]);
    let HvCommand::Explain {
        selection,
        json,
        host,
        ..
    } = cmd
    else {
        panic!("not explain")
    };
    assert!(json);
    assert_eq!(selection.profile, Some(Profile::Windows));
    let req = selection.request().unwrap();
    assert_eq!(req.overrides.state(E::Evmcs), Some(true));
    assert_eq!(req.overrides.state(E::Avic), Some(false));
    assert_eq!(req.overrides.state(E::Crash), Some(true));
    assert_eq!(host.host, None);
    // A list may start with '-' (turning a flag off).
    let HvCommand::Explain { selection, .. } = parse(&["explain", "--hv", "-hv-evmcs", "--json"])
    else {
        panic!("not explain")
    };
    assert_eq!(
        selection.request().unwrap().overrides.state(E::Evmcs),
        Some(false)
    );
    assert!(matches!(
        parse(&["export", "--format", "libvirt"]),
        HvCommand::Export { .. }
    ));
    assert!(matches!(
        parse(&["import", "--format", "qemu", "x.txt", "--to", "kubevirt"]),
        HvCommand::Import { .. }
    ));
    assert!(matches!(
        parse(&["baseline", "a.json", "b.json"]),
        HvCommand::Baseline { .. }
    ));
    assert!(matches!(parse(&["profiles"]), HvCommand::Profiles));
    assert!(matches!(parse(&["flags"]), HvCommand::Flags));
}

#[test]
fn clap_rejects_bad_options_with_the_choices() {
    let err = TestCli::try_parse_from(["hv", "export", "--format", "vmware"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("libvirt") && err.contains("kubevirt"), "{err}");
    let err = TestCli::try_parse_from(["hv", "explain", "--profile", "win"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("windows-server-hyperv"), "{err}");
    assert!(
        TestCli::try_parse_from(["hv", "baseline"]).is_err(),
        "baseline needs probes"
    );
}

#[test]
fn selection_flattens_into_a_run_command() {
    let run = RunLike::try_parse_from([
        "run",
        "--profile",
        "linux",
        "--hv",
        "hv-crash",
        "--memory",
        "512",
    ])
    .unwrap();
    let req = run.hv.request().unwrap();
    assert_eq!(req.profile, Some(Profile::Linux));
    assert_eq!(req.overrides.state(E::Crash), Some(true));
    let bad = RunLike::try_parse_from(["run", "--hv", "hv-nope"]).unwrap();
    assert!(bad
        .hv
        .request()
        .unwrap_err()
        .to_string()
        .contains("unknown Hyper-V flag 'hv-nope'"));
}

#[test]
fn explain_prints_a_table_and_the_cpuid_leaves() {
    let host = intel_probe();
    let out = exec(&[
        "explain",
        "--profile",
        "windows-server-hyperv",
        "--host",
        host.path(),
    ])
    .unwrap();
    assert!(out.contains("hv-evmcs"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("hv-evmcs") && l.contains(" on ")),
        "{out}"
    );
    assert!(
        out.contains("Migration blockers:") && out.contains("hv-reenlightenment"),
        "{out}"
    );
    assert!(
        out.contains("CPUID leaves:") && out.contains("0x40000000 0     0x4000000a"),
        "{out}"
    );
    assert!(
        out.contains("0x4000000a 0     0x000a0101"),
        "nested leaf: {out}"
    );
    assert!(
        out.contains("Per-vCPU KVM capabilities to enable: KVM_CAP_HYPERV_SYNIC2"),
        "{out}"
    );
    assert!(
        out.contains("--hv hv-relaxed,hv-vapic,hv-spinlocks=0x1fff"),
        "{out}"
    );
}

#[test]
fn explain_json_has_the_same_data() {
    let host = intel_probe();
    let out = exec(&[
        "explain",
        "--profile",
        "windows",
        "--host",
        host.path(),
        "--json",
    ])
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["decisions"].as_array().unwrap().len(),
        hv_model::FLAGS.len()
    );
    let relaxed = &v["decisions"][0];
    assert_eq!(relaxed["flag"], "hv-relaxed");
    assert_eq!(relaxed["on"], true);
    assert_eq!(relaxed["origin"], "profile");
    assert_eq!(v["cpuid"][1]["eax"], 0x3123_7648);
    assert_eq!(v["request"]["profile"], "windows");
    assert!(v["hv_list"].as_str().unwrap().starts_with("hv-relaxed,"));
    assert_eq!(v["migration_blockers"].as_array().unwrap().len(), 0);
}

#[test]
fn export_and_import_every_format_through_the_cli() {
    let host = intel_probe();
    for format in ["qemu", "libvirt", "kubevirt", "proxmox"] {
        let exported = exec(&[
            "export",
            "--profile",
            "windows",
            "--host",
            host.path(),
            "--format",
            format,
        ])
        .unwrap();
        let file = temp(&format!("export.{format}"), &exported);
        let imported = exec(&["import", "--format", format, file.path()]).unwrap();
        let list = imported
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            list.starts_with("hv-relaxed,hv-vapic,hv-spinlocks=0x1fff"),
            "{format}: {imported}"
        );
        // Translate to libvirt.
        let xml = exec(&["import", "--format", format, file.path(), "--to", "libvirt"]).unwrap();
        assert!(xml.contains("<hyperv mode='custom'>"), "{format}: {xml}");
    }
}

#[test]
fn strict_export_fails_on_what_the_format_cannot_say() {
    let err = exec(&[
        "export",
        "--profile",
        "windows",
        "--format",
        "kubevirt",
        "--strict",
    ])
    .unwrap_err();
    assert!(matches!(err, CliError::NotExpressible { .. }));
    let msg = common::chain(&err);
    assert!(
        msg.contains("hv-enforce-cpuid") && msg.contains("hv-avic"),
        "{msg}"
    );
    assert!(exec(&[
        "export",
        "--profile",
        "windows",
        "--format",
        "qemu",
        "--qemu-version",
        "7.2",
        "--strict"
    ])
    .is_ok());
    // The default QEMU 6.2 lacks two of the profile's properties.
    let err = exec(&[
        "export",
        "--profile",
        "windows",
        "--format",
        "qemu",
        "--strict",
    ])
    .unwrap_err();
    let msg = common::chain(&err);
    assert!(
        msg.contains("hv-xmm-input") && msg.contains("hv-tlbflush-ext"),
        "{msg}"
    );
}

#[test]
fn qemu_export_follows_the_target_release() {
    // The reported bug: QEMU 7.2 has no kvm-asyncpf-vmexit, which the migratable profile
    // pins off. Leaving it out changes nothing there, and stderr says so.
    let (out, err) = exec2(&[
        "export",
        "--profile",
        "migratable",
        "--format",
        "qemu",
        "--qemu-version",
        "7.2",
    ])
    .unwrap();
    assert!(!out.contains("kvm-asyncpf-vmexit"), "{out}");
    assert!(out.contains("kvm-msi-ext-dest-id=off"), "{out}");
    assert!(
        err.contains("kvm-asyncpf-vmexit (no effect)") && err.contains("added in QEMU 9.0"),
        "{err}"
    );
    let (out, err) = exec2(&[
        "export",
        "--profile",
        "migratable",
        "--format",
        "qemu",
        "--qemu-version",
        "9.0",
    ])
    .unwrap();
    assert!(out.contains("kvm-asyncpf-vmexit=off"), "{out}");
    assert!(err.is_empty(), "{err}");
    // QEMU 5.2: the flags added since are left out and named; the rest stays.
    let (out, err) = exec2(&[
        "export",
        "--profile",
        "windows",
        "--format",
        "qemu",
        "--qemu-version",
        "5.2.0",
    ])
    .unwrap();
    for gone in [
        "hv-avic",
        "hv-enforce-cpuid",
        "hv-xmm-input",
        "hv-tlbflush-ext",
    ] {
        assert!(!out.contains(gone), "{gone} in {out}");
        assert!(err.contains(gone), "{gone} not reported: {err}");
    }
    assert!(out.contains("hv-stimer-direct"), "{out}");
}

#[test]
fn target_releases_are_checked() {
    let err = exec(&["export", "--format", "qemu", "--qemu-version", "4.2"]).unwrap_err();
    let msg = common::chain(&err);
    assert!(msg.contains("--qemu-version 5.2"), "{msg}");
    let err = TestCli::try_parse_from(["hv", "export", "--format", "qemu", "--qemu-version", "7"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("MAJOR.MINOR"), "{err}");
    let help = TestCli::try_parse_from(["hv", "export", "--help"])
        .unwrap_err()
        .to_string();
    assert!(
        help.contains("Ubuntu 22.04") && help.contains("[default: 6.2]"),
        "{help}"
    );
    // The help's defaults are the library's.
    let HvCommand::Export { targets, .. } = parse(&["export", "--format", "qemu"]) else {
        panic!("not export")
    };
    assert_eq!(targets.targets().unwrap(), hv_model::Targets::default());
}

#[test]
fn libvirt_and_kubevirt_exports_follow_their_releases() {
    let (xml, err) = exec2(&[
        "export",
        "--profile",
        "windows-server-hyperv",
        "--format",
        "libvirt",
        "--libvirt-version",
        "9.0",
    ])
    .unwrap();
    let elements: String = xml
        .lines()
        .filter(|l| !l.trim_start().starts_with("<!--"))
        .collect();
    for gone in ["emsr_bitmap", "xmm_input", "<extended"] {
        assert!(!elements.contains(gone), "{gone} in {xml}");
    }
    // <stimer><direct/> (libvirt 5.7) stays; <tlbflush><direct/> (11.0) goes.
    assert!(elements.contains("<tlbflush state='on'/>"), "{xml}");
    assert!(elements.contains("<direct state='on'/>"), "{xml}");
    assert!(xml.contains("<avic state='on'/>"), "9.0 has avic: {xml}");
    assert!(err.contains("added in libvirt 10.7"), "{err}");
    let (xml, _) = exec2(&[
        "export",
        "--profile",
        "windows-server-hyperv",
        "--format",
        "libvirt",
        "--libvirt-version",
        "7.0",
    ])
    .unwrap();
    let elements: String = xml
        .lines()
        .filter(|l| !l.trim_start().starts_with("<!--"))
        .collect();
    assert!(
        elements.contains("<hyperv>") && !elements.contains("mode="),
        "{xml}"
    );
    assert!(!elements.contains("<avic"), "{xml}");
    let (yaml, err) = exec2(&[
        "export",
        "--profile",
        "windows",
        "--format",
        "kubevirt",
        "--kubevirt-version",
        "1.7",
    ])
    .unwrap();
    assert!(!yaml.contains("extended: {}"), "{yaml}");
    assert!(err.contains("added in KubeVirt 1.8"), "{err}");
    let (yaml, _) = exec2(&[
        "export",
        "--profile",
        "windows",
        "--format",
        "kubevirt",
        "--kubevirt-version",
        "1.8",
    ])
    .unwrap();
    assert!(yaml.contains("extended: {}"), "{yaml}");
}

#[test]
fn explain_shows_the_qemu_command_line() {
    let out = exec(&["explain", "--profile", "windows", "--qemu-version", "7.2"]).unwrap();
    assert!(
        out.contains("QEMU 7.2 command line for this set:\n  -cpu host,hv-relaxed,"),
        "{out}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&exec(&["explain", "--profile", "windows", "--json"]).unwrap())
            .unwrap();
    assert_eq!(json["qemu"]["version"], "6.2");
    assert!(json["qemu"]["cpu"].as_str().unwrap().starts_with("host,"));
    assert!(json["qemu"]["leaves"]
        .as_array()
        .is_some_and(|l| !l.is_empty()));
}

#[test]
fn baseline_reports_the_safe_set_and_exclusions() {
    let (a, b) = (intel_probe(), amd_host());
    let out = exec(&["baseline", a.path(), b.path(), "--format", "qemu"]).unwrap();
    assert!(
        out.contains("Safe on every host and across migration:"),
        "{out}"
    );
    assert!(
        out.contains("  hv-evmcs:") && out.contains("Intel-only"),
        "{out}"
    );
    assert!(out.contains("As qemu:"), "{out}");
    let json = exec(&["baseline", a.path(), b.path(), "--json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["hosts"].as_array().unwrap().len(), 2);
    assert!(v["excluded"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["flag"] == "hv-evmcs"));
}

#[test]
fn errors_are_typed_and_explain_themselves() {
    let err = exec(&["explain", "--hv", "hv-relaxd"]).unwrap_err();
    assert!(matches!(err, CliError::Selection(_)));
    assert!(common::chain(&err).contains("did you mean 'hv-relaxed'"));

    let err = exec(&["explain", "--hv", "hv-stimer"]).unwrap_err();
    assert_eq!(
        common::chain(&err),
        "cannot resolve --hv hv-stimer: hv-stimer requires hv-synic and hv-time: add hv-synic,hv-time"
    );

    let amd = amd_host();
    let err = exec(&["explain", "--hv", "hv-vapic,hv-evmcs", "--host", amd.path()]).unwrap_err();
    assert!(common::chain(&err).contains("Intel-only"));

    let bad = temp("bad.xml", "<domain><features><hyperv><relaxed></features>");
    let err = exec(&["import", "--format", "libvirt", bad.path()]).unwrap_err();
    assert!(matches!(err, CliError::Import { .. }));
    assert!(common::chain(&err).contains("malformed XML"));

    let missing = std::env::temp_dir().join("hv-model-cli-does-not-exist.xml");
    let err = exec(&["import", "--format", "libvirt", missing.to_str().unwrap()]).unwrap_err();
    assert!(matches!(err, CliError::Read { .. }));

    let not_host = temp("nothost.json", "{\"foo\": 1}");
    let err = exec(&["explain", "--host", not_host.path()]).unwrap_err();
    assert!(common::chain(&err).contains("not a host description"));

    let deps = temp("deps.xml", "<hyperv><stimer state='on'/></hyperv>");
    let err = exec(&["import", "--format", "libvirt", deps.path()]).unwrap_err();
    assert!(
        common::chain(&err).contains("hv-stimer requires hv-synic and hv-time"),
        "{}",
        common::chain(&err)
    );
}

#[test]
fn profiles_and_flags_list_everything() {
    let out = exec(&["profiles"]).unwrap();
    for p in Profile::ALL {
        assert!(out.contains(p.name()), "{out}");
    }
    assert!(out.contains("(computed from --host)"));
    let out = exec(&["flags"]).unwrap();
    for d in hv_model::FLAGS {
        assert!(out.contains(d.name), "{}", d.name);
    }
    assert!(out.contains("04.EAX[14]"));
}
