//! Host descriptions (`--host FILE`, `hvkvm hv baseline`): `hvkvm probe --json` documents or
//! bare HostCapabilities objects, then every profile resolved against what was read.
#![no_main]

use hv_model::{resolve, Backend, HostCapabilities, HvRequest, Profile, ResolveOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(host) = HostCapabilities::from_json(text, "fuzz") else {
        return;
    };
    for profile in Profile::ALL {
        for backend in [Backend::Kernel, Backend::User] {
            let request = HvRequest::from_profile(profile);
            let _ = resolve(&request, &host, backend, &ResolveOptions::default());
        }
    }
});
