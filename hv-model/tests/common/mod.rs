//! Helpers shared by the integration tests.
#![allow(dead_code)]

use hv_model::{
    cpuid_leaves, parse_hv_list, resolve, Backend, CpuidLeaf, HostCapabilities, HostChecks,
    HvRequest, ModelError, Profile, Resolution, ResolveOptions,
};

/// Options without a host.
pub fn no_host() -> ResolveOptions {
    ResolveOptions {
        host_checks: HostChecks::Skip,
        ..ResolveOptions::default()
    }
}

/// Resolves a `--hv` list without host checks.
pub fn resolve_list(list: &str) -> Result<Resolution, ModelError> {
    resolve(
        &parse_hv_list(list)?,
        &HostCapabilities::default(),
        Backend::Kernel,
        &no_host(),
    )
}

/// Resolves a `--hv` list against a host.
pub fn resolve_on(host: &HostCapabilities, list: &str) -> Result<Resolution, ModelError> {
    resolve(
        &parse_hv_list(list)?,
        host,
        Backend::Kernel,
        &ResolveOptions::default(),
    )
}

/// Resolves a profile (plus overrides) against a host.
pub fn resolve_profile(
    host: &HostCapabilities,
    profile: Profile,
    list: &str,
) -> Result<Resolution, ModelError> {
    let mut req: HvRequest = parse_hv_list(list)?;
    req.profile = Some(profile);
    resolve(&req, host, Backend::Kernel, &ResolveOptions::default())
}

/// CPUID leaves for a `--hv` list (no host checks).
pub fn leaves(list: &str) -> Vec<CpuidLeaf> {
    cpuid_leaves(&resolve_list(list).unwrap_or_else(|e| panic!("{list}: {e}")))
}

/// `[eax, ebx, ecx, edx]` of a leaf, zeros when absent.
pub fn regs(leaves: &[CpuidLeaf], function: u32) -> [u32; 4] {
    leaves
        .iter()
        .find(|l| l.function == function)
        .map_or([0; 4], |l| [l.eax, l.ebx, l.ecx, l.edx])
}

/// Whether a leaf is present.
pub fn has_leaf(leaves: &[CpuidLeaf], function: u32) -> bool {
    leaves.iter().any(|l| l.function == function)
}

/// Bits 0..n set as a mask.
pub fn bits(list: &[u32]) -> u32 {
    list.iter().fold(0, |acc, b| acc | (1 << b))
}

/// Releases that have every property and element hvkvm exports (QEMU 10.0, libvirt 11.3,
/// KubeVirt 1.8), for tests of a format rather than of version filtering.
pub fn newest() -> hv_model::Targets {
    hv_model::Targets {
        qemu: hv_model::Version::new(10, 0),
        libvirt: hv_model::Version::new(11, 3),
        kubevirt: hv_model::Version::new(1, 8),
    }
}

/// The full message chain of an error.
pub fn chain(err: &dyn std::error::Error) -> String {
    hv_model::cli::error_chain(err)
}
