//! The configuration importers `hvkvm hv import` runs on user files: QEMU command lines,
//! libvirt domain XML, KubeVirt YAML and Proxmox VM configs; then resolution and export of
//! whatever imported.
//!
//! Input: one byte choosing the format, then the text (non-UTF-8 input is refused before the
//! importers, as `input_file::read_text` does). Checked: no panic, and a QEMU export of an
//! imported set imports back to the same set.
#![no_main]

use hv_model::{export, import, resolve, Backend, Format, HostCapabilities, ResolveOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let format = Format::ALL[usize::from(which) % Format::ALL.len()];
    let Ok(imported) = import(format, text) else {
        return;
    };
    let host = HostCapabilities::example_intel();
    for backend in [Backend::Kernel, Backend::User] {
        let _ = resolve(&imported.request, &host, backend, &ResolveOptions::default());
    }
    for to in Format::ALL {
        let _ = export(to, &imported.request.overrides, &Default::default());
    }
    if !imported.request.overrides.is_empty() {
        let qemu = export(Format::Qemu, &imported.request.overrides, &Default::default());
        let back = import(Format::Qemu, &qemu.text)
            .unwrap_or_else(|e| panic!("QEMU export {:?} does not import: {e}", qemu.text));
        assert_eq!(
            back.request.overrides, imported.request.overrides,
            "QEMU export {:?} imports to a different set",
            qemu.text
        );
    }
});
