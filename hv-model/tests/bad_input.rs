//! Bad input gives a clear error, never a panic: unknown flags, bad values, malformed XML,
//! YAML and JSON, plus generated garbage and every truncation of valid fixtures.

mod common;

use hv_model::{
    import, parse_hv_list, resolve, Backend, Format, HostCapabilities, Profile, ResolveOptions,
};

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

const PIECES: &[&str] = &[
    "hv-",
    "hv_",
    "relaxed",
    "vapic",
    "spinlocks",
    "=",
    "0x",
    "fff",
    "1",
    "on",
    "off",
    "auto",
    ",",
    "+",
    "-",
    "vendor-id",
    "KVM",
    " ",
    "stimer",
    "direct",
    "synic",
    "kvm",
    "passthrough",
    "<",
    ">",
    "/",
    "'",
    "\"",
    "{",
    "}",
    ":",
    "\n",
    "  ",
    "hyperv",
    "features",
    "state",
    "é",
    "\u{0}",
    "[",
    "]",
    "tsc-frequency",
    "99999999999999999999999",
    "evmcs",
    "spec",
    "domain",
    "args",
    "-cpu",
    "#",
];

fn garbage(rng: &mut Rng) -> String {
    let n = rng.next() % 24;
    (0..n).map(|_| rng.pick(PIECES)).collect()
}

#[test]
fn generated_garbage_never_panics() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let host = HostCapabilities::example_intel();
    for _ in 0..1500 {
        let text = garbage(&mut rng);
        if let Ok(req) = parse_hv_list(&text) {
            let _ = resolve(&req, &host, Backend::Kernel, &ResolveOptions::default());
            let _ = resolve(&req, &host, Backend::User, &common::no_host());
        }
        for format in Format::ALL {
            if let Ok(imported) = import(format, &text) {
                let _ = resolve(
                    &imported.request,
                    &host,
                    Backend::Kernel,
                    &ResolveOptions::default(),
                );
                let _ = hv_model::export(format, &imported.request.overrides, &Default::default());
            }
        }
        // Garbage inside otherwise valid framing reaches the deeper parsers.
        let _ = import(
            Format::Proxmox,
            &format!("ostype: win11\ncpu: host,flags={text}\n"),
        );
        let _ = import(Format::Proxmox, &format!("args: -cpu host,{text}\n"));
        let _ = import(
            Format::Libvirt,
            &format!("<domain><features><hyperv>{text}</hyperv></features></domain>"),
        );
        let _ = import(
            Format::Kubevirt,
            &format!("features:\n  hyperv:\n    {text}\n"),
        );
        let _ = HostCapabilities::from_json(&text, "garbage");
        let _ = Profile::from_name(&text);
    }
}

#[test]
fn every_truncation_of_valid_inputs_is_handled() {
    let dir = format!("{}/tests/fixtures", env!("CARGO_MANIFEST_DIR"));
    for (file, format) in [
        ("libvirt-domain.xml", Format::Libvirt),
        ("kubevirt-vm.yaml", Format::Kubevirt),
        ("proxmox-win11.conf", Format::Proxmox),
        ("qemu-cmdline.txt", Format::Qemu),
    ] {
        let text = std::fs::read_to_string(format!("{dir}/{file}")).unwrap();
        for (cut, _) in text.char_indices() {
            let _ = import(format, &text[..cut]);
        }
    }
    let host = serde_json::to_string_pretty(&HostCapabilities::example_intel()).unwrap();
    for (cut, _) in host.char_indices() {
        let _ = HostCapabilities::from_json(&host[..cut], "truncated");
    }
}

#[test]
fn malformed_xml_is_a_clear_error() {
    let err = import(
        Format::Libvirt,
        "<domain><features><hyperv><relaxed state='on'></hyperv>",
    )
    .unwrap_err();
    let msg = common::chain(&err);
    assert!(msg.starts_with("malformed XML: "), "{msg}");
    let err = import(
        Format::Libvirt,
        "<domain><features><hyperv><bogus/></hyperv></features></domain>",
    )
    .unwrap_err();
    let msg = common::chain(&err);
    assert!(
        msg.contains("unknown libvirt Hyper-V feature <bogus>") && msg.contains("line 1"),
        "{msg}"
    );
    let err = import(
        Format::Libvirt,
        "<domain><features><hyperv><relaxed state='maybe'/></hyperv></features></domain>",
    )
    .unwrap_err();
    assert!(common::chain(&err).contains("state='maybe' must be on or off"));
    let err = import(
        Format::Libvirt,
        "<domain><features><hyperv><spinlocks state='on'/></hyperv></features></domain>",
    )
    .unwrap_err();
    assert!(common::chain(&err).contains("needs retries='N'"));
    let err = import(Format::Libvirt, "<domain><name>x</name></domain>").unwrap_err();
    assert!(common::chain(&err).contains("no Hyper-V settings found"));
    let err = import(Format::Libvirt, "<domain><features><hyperv><spinlocks state='on' retries='12'/></hyperv></features></domain>")
        .unwrap_err();
    let msg = common::chain(&err);
    assert!(
        msg.contains("<spinlocks> (line 1)") && msg.contains("at least 0xfff"),
        "{msg}"
    );
}

#[test]
fn malformed_yaml_is_a_clear_error() {
    let err = import(Format::Kubevirt, "spec: [unclosed").unwrap_err();
    assert!(common::chain(&err).starts_with("malformed YAML: "));
    let err = import(
        Format::Kubevirt,
        "spec:\n  domain:\n    features:\n      hyperv:\n        warp: {}\n",
    )
    .unwrap_err();
    let msg = common::chain(&err);
    assert!(
        msg.contains("spec.domain.features.hyperv.warp") && msg.contains("unknown KubeVirt"),
        "{msg}"
    );
    let err = import(Format::Kubevirt, "spec:\n  domain:\n    features:\n      hyperv:\n        spinlocks:\n          spinlocks: many\n")
        .unwrap_err();
    assert!(common::chain(&err).contains("spinlocks.spinlocks must be an integer"));
    let err = import(Format::Kubevirt, "kind: Pod\n").unwrap_err();
    assert!(common::chain(&err).contains("not a KubeVirt"));
    let err = import(Format::Kubevirt, "spec:\n  domain:\n    features:\n      hyperv:\n        relaxed:\n          enabled: perhaps\n")
        .unwrap_err();
    assert!(common::chain(&err).contains("relaxed.enabled must be a boolean"));
}

#[test]
fn bad_lists_are_clear_errors() {
    let err = parse_hv_list("hv-relaxed,hv-frequencys")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown Hyper-V flag 'hv-frequencys'; did you mean 'hv-frequencies'?"),
        "{err}"
    );
    let err = import(Format::Qemu, "-cpu host,hv_bogus").unwrap_err();
    assert!(common::chain(&err).contains("unknown Hyper-V flag 'hv_bogus'"));
    let err = import(Format::Proxmox, "this is not a config").unwrap_err();
    assert!(common::chain(&err).contains("expected 'key: value'"));
    let err = import(Format::Proxmox, "").unwrap_err();
    assert!(common::chain(&err).contains("empty Proxmox config"));
}

#[test]
fn host_json_errors_say_what_was_expected() {
    let err = HostCapabilities::from_json(r#"{"probe": 1}"#, "p.json")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("hvkvm probe --json") && err.contains("[probe]"),
        "{err}"
    );
    let err = HostCapabilities::from_json("{", "p.json").unwrap_err();
    assert!(common::chain(&err).contains("p.json is not a valid host description"));
}

#[test]
fn input_without_any_hyperv_setting_is_refused_in_every_format() {
    for (format, text) in [
        (Format::Qemu, "qemu-system-x86_64 -m 2048 -cpu host -smp 2"),
        (Format::Proxmox, "ostype: l26\ncores: 2\nmemory: 2048\n"),
        (
            Format::Libvirt,
            "<domain><features><hyperv/></features></domain>",
        ),
        (
            Format::Kubevirt,
            "spec:\n  domain:\n    features:\n      hyperv: {}\n",
        ),
    ] {
        let err = import(format, text).unwrap_err();
        let msg = common::chain(&err);
        assert!(msg.contains("no Hyper-V settings"), "{format}: {msg}");
    }
    // Explicitly turning a flag off is a setting.
    assert!(import(Format::Qemu, "-cpu host,hv-relaxed=off").is_ok());
}

/// Found by fuzz/config_import: a vendor id with a leading space imported from a Proxmox `cpu:`
/// line, exported as QEMU `hv-vendor-id= ovmz`, came back as "ovmz" (the QEMU list trims).
/// Spaces at either end are refused wherever a vendor id enters, so every format round-trips.
#[test]
fn vendor_ids_with_spaces_at_either_end_are_refused_in_every_format() {
    for (format, text) in [
        (Format::Proxmox, "ostype: win11\ncpu: host,hv-vendor-id= ovmz\n"),
        (
            Format::Libvirt,
            "<domain><features><hyperv><vendor_id state='on' value='ovmz '/></hyperv></features></domain>",
        ),
        (
            Format::Kubevirt,
            "spec:\n  domain:\n    features:\n      hyperv:\n        vendorid:\n          vendorid: \" ovmz\"\n",
        ),
    ] {
        let err = import(format, text).unwrap_err();
        let msg = common::chain(&err);
        assert!(msg.contains("starts or ends with a space"), "{format}: {msg}");
    }
    assert!(
        parse_hv_list("hv-vendor-id=Microsoft Hv").is_ok(),
        "inner spaces are fine"
    );
}

/// Found by fuzz/config_import: `hv-vendor-id='''c'y` exported as a QEMU flag list came back as
/// "cy" (a bare list was split like a shell command line). Quotes and backslashes in a vendor id
/// now survive QEMU and Proxmox export and import.
#[test]
fn vendor_ids_with_quotes_round_trip_through_qemu_and_proxmox() {
    for vendor in ["'''c'y", "a\"b", "x\\y", "it's ok"] {
        let config = parse_hv_list(&format!("hv-relaxed,hv-vendor-id={vendor}"))
            .unwrap()
            .overrides;
        for format in [Format::Qemu, Format::Proxmox] {
            let text = hv_model::export(format, &config, &Default::default()).text;
            let back = import(format, &text)
                .unwrap_or_else(|e| panic!("{format} {text:?}: {}", common::chain(&e)));
            assert_eq!(back.request.overrides, config, "{format}: {text:?}");
        }
    }
}
