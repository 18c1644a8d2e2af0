//! Import and export of the four configuration languages: fixtures taken from real-world
//! layouts, and import → export → import round trips.

mod common;

use hv_model::{
    export, import, resolve, Backend, Enlightenment as E, Enlightenment, Format, HostCapabilities,
    HvConfig, HvRequest, Profile, ResolveOptions,
};

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn on(c: &HvConfig, flags: &[Enlightenment]) {
    for f in flags {
        assert_eq!(c.state(*f), Some(true), "{f} should be on");
    }
}

/// import → export → import gives the same request, and export is stable.
fn round_trip(format: Format, text: &str) -> HvRequest {
    let first = import(format, text).unwrap_or_else(|e| panic!("{format}: {}", common::chain(&e)));
    let exported = export(format, &first.request.overrides, &common::newest());
    let second = import(format, &exported.text).unwrap_or_else(|e| {
        panic!(
            "{format} re-import: {}\n{}",
            common::chain(&e),
            exported.text
        )
    });
    assert_eq!(
        first.request.overrides, second.request.overrides,
        "{format}:\n{}",
        exported.text
    );
    assert_eq!(
        export(format, &second.request.overrides, &common::newest()).text,
        exported.text,
        "{format}: export is stable"
    );
    first.request
}

#[test]
fn libvirt_domain_imports_and_round_trips() {
    let req = round_trip(Format::Libvirt, &fixture("libvirt-domain.xml"));
    let c = &req.overrides;
    on(
        c,
        &[
            E::Relaxed,
            E::Vapic,
            E::Vpindex,
            E::Runtime,
            E::Synic,
            E::Stimer,
            E::StimerDirect,
            E::Frequencies,
            E::Reenlightenment,
            E::Tlbflush,
            E::TlbflushDirect,
            E::TlbflushExt,
            E::Ipi,
            E::Evmcs,
            E::Avic,
            E::EmsrBitmap,
            E::XmmInput,
            E::Time,
            E::Crash,
            E::KvmHintDedicated,
            E::KvmPollControl,
        ],
    );
    assert_eq!(c.state(E::Reset), Some(false));
    assert_eq!(
        c.state(E::Kvm),
        Some(false),
        "<hidden state='on'/> is kvm=off"
    );
    assert_eq!(c.state(E::KvmPvIpi), Some(false));
    assert_eq!(c.spinlocks(), Some(8191));
    assert_eq!(c.vendor_id().unwrap().as_str(), "KVM Hv");
    assert_eq!(c.tsc_frequency_hz, Some(2_500_000_000));
}

#[test]
fn libvirt_passthrough_and_host_model_modes() {
    let r = import(
        Format::Libvirt,
        "<features><hyperv mode='passthrough'/></features>",
    )
    .unwrap();
    assert_eq!(r.request.overrides.state(E::Passthrough), Some(true));
    let exported = export(Format::Libvirt, &r.request.overrides, &common::newest());
    assert!(
        exported.text.contains("<hyperv mode='passthrough'/>"),
        "{}",
        exported.text
    );
    let r = import(
        Format::Libvirt,
        "<hyperv mode='host-model'><evmcs state='off'/></hyperv>",
    )
    .unwrap();
    assert_eq!(r.request.profile, Some(Profile::Host));
    assert_eq!(r.request.overrides.state(E::Evmcs), Some(false));
}

#[test]
fn kubevirt_vm_imports_and_round_trips() {
    let req = round_trip(Format::Kubevirt, &fixture("kubevirt-vm.yaml"));
    let c = &req.overrides;
    on(
        c,
        &[
            E::Relaxed,
            E::Vapic,
            E::Vpindex,
            E::Synic,
            E::Stimer,
            E::StimerDirect,
            E::Tlbflush,
            E::TlbflushExt,
            E::Frequencies,
            E::Reenlightenment,
            E::Ipi,
            E::Runtime,
            E::Time,
        ],
    );
    assert_eq!(c.state(E::Reset), Some(false));
    assert_eq!(c.state(E::TlbflushDirect), None);
    assert_eq!(c.spinlocks(), Some(8191));
    assert_eq!(c.vendor_id().unwrap().as_str(), "KVMKVMKVM");
    assert_eq!(c.state(E::Kvm), Some(false));
}

#[test]
fn kubevirt_accepts_vmi_and_bare_features() {
    let vmi = "spec:\n  domain:\n    features:\n      hyperv:\n        relaxed: {}\n        spinlocks: {}\n";
    let r = import(Format::Kubevirt, vmi).unwrap();
    assert_eq!(
        r.request.overrides.spinlocks(),
        Some(4096),
        "KubeVirt's default retries"
    );
    let bare = "features:\n  hypervPassthrough:\n    enabled: true\n";
    let r = import(Format::Kubevirt, bare).unwrap();
    assert_eq!(r.request.overrides.state(E::Passthrough), Some(true));
    round_trip(Format::Kubevirt, bare);
}

#[test]
fn proxmox_config_imports_the_automatic_set() {
    let imported = import(Format::Proxmox, &fixture("proxmox-win11.conf")).unwrap();
    let c = &imported.request.overrides;
    on(
        c,
        &[
            E::Relaxed,
            E::Vapic,
            E::Time,
            E::Vpindex,
            E::Runtime,
            E::Reset,
            E::Synic,
            E::Stimer,
            E::Ipi,
            E::Tlbflush,
            E::Evmcs,
        ],
    );
    assert_eq!(c.spinlocks(), Some(0x1fff));
    assert_eq!(
        c.vendor_id().unwrap().as_str(),
        "proxmox",
        "x-vga GPU passthrough"
    );
    assert!(
        imported.notes.iter().any(|n| n.contains("aes")),
        "{:?}",
        imported.notes
    );
    // Export writes args: -cpu, which imports back to the same set.
    let exported = export(Format::Proxmox, c, &common::newest());
    assert!(
        exported.text.contains("args: -cpu host,"),
        "{}",
        exported.text
    );
    let again = import(Format::Proxmox, &exported.text).unwrap();
    assert_eq!(&again.request.overrides, c);
    round_trip(Format::Proxmox, &exported.text);
}

#[test]
fn proxmox_args_cpu_replaces_the_automatic_set() {
    let text = "ostype: win10\nargs: -cpu host,hv_relaxed,hv_time,+kvm_pv_unhalt -smbios type=1\n";
    let imported = import(Format::Proxmox, text).unwrap();
    let c = &imported.request.overrides;
    assert_eq!(c.enabled(), vec![E::Relaxed, E::Time, E::KvmPvUnhalt]);
}

#[test]
fn qemu_command_line_imports_and_round_trips() {
    let req = round_trip(Format::Qemu, &fixture("qemu-cmdline.txt"));
    let c = &req.overrides;
    on(
        c,
        &[
            E::Relaxed,
            E::Vapic,
            E::Vpindex,
            E::Runtime,
            E::Time,
            E::Synic,
            E::Stimer,
            E::StimerDirect,
            E::Frequencies,
            E::Tlbflush,
            E::Ipi,
        ],
    );
    assert_eq!(c.state(E::Kvm), Some(false));
    assert_eq!(c.tsc_frequency_hz, Some(2_500_000_000));
    let notes = import(Format::Qemu, &fixture("qemu-cmdline.txt"))
        .unwrap()
        .notes;
    assert!(notes.iter().any(|n| n.contains("'host'")), "{notes:?}");
    assert!(
        notes.iter().any(|n| n.contains("migratable=no")),
        "{notes:?}"
    );
}

/// Every resolved profile exports to every format, for the default and the newest target
/// releases, and imports back to the same settings, minus what the export reports as dropped.
#[test]
fn resolved_profiles_round_trip_through_every_format() {
    for targets in [hv_model::Targets::default(), common::newest()] {
        for host in [
            HostCapabilities::example_intel(),
            HostCapabilities::example_amd(),
        ] {
            for profile in Profile::ALL {
                let mut req =
                    hv_model::parse_hv_list("hv-vendor-id=KVM Hv,tsc-frequency=2500000000")
                        .unwrap();
                req.profile = Some(profile);
                let r = resolve(&req, &host, Backend::Kernel, &ResolveOptions::default()).unwrap();
                for format in Format::ALL {
                    let exported = export(format, &r.config, &targets);
                    let back = import(format, &exported.text).unwrap_or_else(|e| {
                        panic!(
                            "{profile} {format}: {}\n{}",
                            common::chain(&e),
                            exported.text
                        )
                    });
                    let mut expected = r.config.clone();
                    for d in &exported.dropped {
                        for f in &d.flags {
                            expected.forget(*f);
                        }
                        if d.tsc_frequency {
                            expected.tsc_frequency_hz = None;
                        }
                    }
                    assert_eq!(
                        back.request.overrides, expected,
                        "{profile} via {format}:\n{}",
                        exported.text
                    );
                }
            }
        }
    }
}

#[test]
fn exports_say_what_they_drop() {
    let config = hv_model::parse_hv_list(
        "hv-relaxed,hv-vpindex,hv-synic,hv-relaxed,hv-syndbg,hv-no-nonarch-coresharing=on,hv-enforce-cpuid",
    )
    .unwrap()
    .overrides;
    for format in [Format::Libvirt, Format::Kubevirt] {
        let exported = export(format, &config, &common::newest());
        let dropped: Vec<Enlightenment> = exported
            .dropped
            .iter()
            .flat_map(|d| d.flags.clone())
            .collect();
        for f in [E::Syndbg, E::NoNonarchCoresharing, E::EnforceCpuid] {
            assert!(dropped.contains(&f), "{format} should drop {f}");
            assert!(
                exported.text.contains(f.name()),
                "{format} should mention {f} in a comment"
            );
        }
    }
    assert!(export(Format::Qemu, &config, &common::newest())
        .dropped
        .is_empty());
    assert!(export(Format::Proxmox, &config, &common::newest())
        .dropped
        .is_empty());
}

#[test]
fn libvirt_vendor_is_escaped() {
    let config = hv_model::parse_hv_list("hv-relaxed,hv-vendor-id=a&b<'\">")
        .unwrap()
        .overrides;
    let exported = export(Format::Libvirt, &config, &common::newest());
    let back = import(Format::Libvirt, &exported.text).unwrap();
    assert_eq!(
        back.request.overrides.vendor_id().unwrap().as_str(),
        "a&b<'\">"
    );
}

/// What libvirt writes (hv-model/tests/real-tools/make-fixtures.sh): its own rendering of a
/// domain (`virsh dumpxml`) and the QEMU command line it builds from it (`domxml-to-native`).
/// Both must import, and to the same guest: resolved on the same host they give the same
/// explicit set.
#[test]
fn imports_what_libvirt_writes() {
    let host = HostCapabilities::example_intel();
    for name in ["windows-vbs", "linux-kvm", "passthrough"] {
        let xml = fixture(&format!("libvirt-{name}.dumpxml.xml"));
        let argv = fixture(&format!("libvirt-{name}.qemu-argv.txt"));
        let from_xml = import(Format::Libvirt, &xml)
            .unwrap_or_else(|e| panic!("{name} dumpxml: {}", common::chain(&e)));
        let from_argv = import(Format::Qemu, &argv)
            .unwrap_or_else(|e| panic!("{name} qemu-argv: {}", common::chain(&e)));
        let resolved = |req: &HvRequest| {
            resolve(req, &host, Backend::Kernel, &ResolveOptions::default())
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .config
        };
        assert_eq!(
            resolved(&from_xml.request),
            resolved(&from_argv.request),
            "{name}: libvirt's XML and its QEMU command line differ for hvkvm"
        );
        assert!(
            from_argv.notes.iter().any(|n| n.contains("migratable=on")),
            "{name}: {:?}",
            from_argv.notes
        );
    }
    let vbs = import(Format::Libvirt, &fixture("libvirt-windows-vbs.dumpxml.xml")).unwrap();
    let c = &vbs.request.overrides;
    on(
        c,
        &[
            E::Evmcs,
            E::Avic,
            E::StimerDirect,
            E::Crash,
            E::Time,
            E::Reenlightenment,
        ],
    );
    assert_eq!(c.vendor_id().unwrap().as_str(), "KVM Hv");
    assert_eq!(c.state(E::Kvm), Some(false));
    let argv = import(Format::Qemu, &fixture("libvirt-windows-vbs.qemu-argv.txt")).unwrap();
    assert_eq!(
        argv.request.overrides.vendor_id().unwrap().as_str(),
        "KVM Hv"
    );
    let linux = import(Format::Libvirt, &fixture("libvirt-linux-kvm.dumpxml.xml")).unwrap();
    let c = &linux.request.overrides;
    assert_eq!(c.state(E::KvmHintDedicated), Some(true));
    assert_eq!(c.state(E::KvmPvIpi), Some(false));
    let pt = import(Format::Qemu, &fixture("libvirt-passthrough.qemu-argv.txt")).unwrap();
    assert_eq!(pt.request.overrides.state(E::Passthrough), Some(true));
}

/// What `hv explain` says about QEMU's guest CPUID (measured with QEMU 7.2 in the emulated
/// Intel host by guest-tests' `qemu` suite): only the bits of flags hvkvm turns on and that
/// release has no property for differ; with `kvm=off` KVM's leaves, and their bits, are gone.
#[test]
fn qemu_cpuid_differences_are_the_flags_that_release_lacks() {
    use hv_model::formats::qemu::{cpuid_differences, CPUID_COMPARED_WITH};
    use hv_model::Version;
    let host = HostCapabilities::example_intel();
    let diffs = |p: Profile, v: Version| {
        let r = common::resolve_profile(&host, p, "").unwrap_or_else(|e| panic!("{p}: {e}"));
        cpuid_differences(&r, v)
            .into_iter()
            .map(|d| (d.leaf, d.register.name(), d.mask))
            .collect::<Vec<_>>()
    };
    let asyncpf_vmexit = (0x4000_0101, "EAX", 1 << 10);
    assert_eq!(
        diffs(Profile::Windows, CPUID_COMPARED_WITH),
        [asyncpf_vmexit]
    );
    assert_eq!(
        diffs(Profile::Minimal, CPUID_COMPARED_WITH),
        [asyncpf_vmexit]
    );
    // migratable pins kvm-asyncpf-vmexit=off; linux hides KVM's leaves (kvm=off).
    assert_eq!(diffs(Profile::Migratable, CPUID_COMPARED_WITH), []);
    assert_eq!(diffs(Profile::Linux, CPUID_COMPARED_WITH), []);
    assert_eq!(diffs(Profile::Windows, Version::new(9, 0)), []);
    // QEMU 6.2 also lacks the 7.1 Hyper-V properties the windows profile turns on.
    let old = diffs(Profile::Windows, Version::new(6, 2));
    assert!(old.contains(&asyncpf_vmexit) && old.len() > 1, "{old:?}");
}
