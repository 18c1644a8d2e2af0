//! Host- and backend-aware resolution: each flag on/off with a reason, errors for explicit
//! flags the host cannot provide, migration blockers, and the final explicit set.

mod common;

use common::{no_host, regs, resolve_list, resolve_on, resolve_profile};
use hv_model::{
    cpuid_leaves, parse_hv_list, resolve, Backend, CpuVendor, Enlightenment as E, HostCapabilities,
    HvRequest, Irqchip, ModelError, Origin, Profile, ResolveOptions,
};

fn intel() -> HostCapabilities {
    HostCapabilities::example_intel()
}

fn amd() -> HostCapabilities {
    HostCapabilities::example_amd()
}

#[test]
fn evmcs_on_amd_is_an_error_when_asked_for() {
    let err = resolve_on(&amd(), "hv-vapic,hv-evmcs").unwrap_err();
    assert!(
        matches!(err, ModelError::Unavailable { flag: E::Evmcs, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("Intel-only") && msg.contains("AMD"), "{msg}");
}

#[test]
fn nested_profile_on_amd_keeps_the_amd_nested_features() {
    let r = resolve_profile(&amd(), Profile::WindowsServerHyperv, "").unwrap();
    assert!(!r.is_on(E::Evmcs));
    assert!(r.decision(E::Evmcs).reason.contains("Intel-only"));
    assert!(r.is_on(E::EmsrBitmap) && r.is_on(E::TlbflushDirect) && r.is_on(E::StimerDirect));
    assert!(!r
        .warnings
        .iter()
        .any(|w| w.contains("only takes effect together with hv-evmcs")));
}

#[test]
fn evmcs_needs_nested_1() {
    let mut host = intel();
    host.nested = Some(false);
    let r = resolve_profile(&host, Profile::WindowsServerHyperv, "").unwrap();
    assert!(!r.is_on(E::Evmcs));
    assert!(
        r.decision(E::Evmcs).reason.contains("nested=0"),
        "{}",
        r.decision(E::Evmcs).reason
    );
    host.nested = None;
    let err = resolve_on(&host, "hv-vapic,hv-evmcs")
        .unwrap_err()
        .to_string();
    assert!(err.contains("nested=1 is required"), "{err}");
}

#[test]
fn intel_nested_host_gets_evmcs_and_the_caps_to_enable() {
    let r = resolve_profile(
        &intel(),
        Profile::WindowsServerHyperv,
        "tsc-frequency=2500000000",
    )
    .unwrap();
    for f in [
        E::Evmcs,
        E::EmsrBitmap,
        E::TlbflushDirect,
        E::Reenlightenment,
        E::StimerDirect,
    ] {
        assert!(r.is_on(f), "{f}: {}", r.decision(f).reason);
    }
    let caps: Vec<&str> = r.kvm_caps_to_enable().iter().map(|c| c.name).collect();
    assert_eq!(
        caps,
        [
            "KVM_CAP_HYPERV_SYNIC2",
            "KVM_CAP_HYPERV_ENLIGHTENED_VMCS",
            "KVM_CAP_HYPERV_ENFORCE_CPUID"
        ]
    );
    assert!(r.migratable(), "{:?}", r.migration_blockers);
}

#[test]
fn stimer_direct_and_ipi_need_an_in_kernel_lapic() {
    let opts = ResolveOptions {
        irqchip: Irqchip::Userspace,
        ..ResolveOptions::default()
    };
    let req = parse_hv_list("hv-vpindex,hv-synic,hv-time,hv-stimer,hv-stimer-direct").unwrap();
    let err = resolve(&req, &intel(), Backend::Kernel, &opts)
        .unwrap_err()
        .to_string();
    assert!(err.contains("in-kernel LAPIC"), "{err}");
    let r = resolve(
        &HvRequest::from_profile(Profile::Windows),
        &intel(),
        Backend::Kernel,
        &opts,
    )
    .unwrap();
    assert!(!r.is_on(E::StimerDirect) && !r.is_on(E::Ipi) && r.is_on(E::Stimer));
    let mut host = intel();
    host.irqchip = false;
    host.split_irqchip = false;
    let err = resolve_on(&host, "hv-vpindex,hv-ipi")
        .unwrap_err()
        .to_string();
    assert!(err.contains("in-kernel LAPIC"), "{err}");
}

#[test]
fn reenlightenment_without_fixed_tsc_blocks_migration() {
    let r = resolve_on(&intel(), "hv-frequencies,hv-reenlightenment").unwrap();
    assert_eq!(r.migration_blockers.len(), 1);
    assert_eq!(r.migration_blockers[0].flag, E::Reenlightenment);
    assert!(r.migration_blockers[0].reason.contains("tsc-frequency"));
    let r = resolve_on(
        &intel(),
        "hv-frequencies,hv-reenlightenment,tsc-frequency=2500000000",
    )
    .unwrap();
    assert!(r.migratable());
    assert_eq!(r.guest.tsc_frequency_hz, Some(2_500_000_000));

    let opts = ResolveOptions {
        require_migration: true,
        ..ResolveOptions::default()
    };
    let err = resolve(
        &parse_hv_list("hv-reenlightenment").unwrap(),
        &intel(),
        Backend::Kernel,
        &opts,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::MigrationBlocked {
                flag: E::Reenlightenment,
                ..
            }
        ),
        "{err:?}"
    );
    let r = resolve(
        &HvRequest::from_profile(Profile::WindowsServerHyperv),
        &intel(),
        Backend::Kernel,
        &opts,
    )
    .unwrap();
    assert!(!r.is_on(E::Reenlightenment));
    assert!(r.decision(E::Reenlightenment).reason.contains("migratable"));
    assert!(r.migratable());
}

#[test]
fn conflicting_tsc_frequencies_are_an_error() {
    let opts = ResolveOptions {
        tsc_khz: Some(3_000_000),
        ..no_host()
    };
    let req = parse_hv_list("hv-relaxed,tsc-frequency=2500000000").unwrap();
    let err = resolve(&req, &HostCapabilities::default(), Backend::Kernel, &opts).unwrap_err();
    assert!(matches!(err, ModelError::ConflictingTsc { .. }));
}

#[test]
fn passthrough_lists_what_it_enabled_and_blocks_migration() {
    let r = resolve_on(&intel(), "hv-passthrough,-hv-evmcs").unwrap();
    assert_eq!(r.migration_blockers[0].flag, E::Passthrough);
    for f in [
        E::Relaxed,
        E::Vapic,
        E::Synic,
        E::Stimer,
        E::StimerDirect,
        E::Tlbflush,
        E::TlbflushExt,
        E::Ipi,
        E::Frequencies,
        E::Reenlightenment,
        E::EmsrBitmap,
        E::XmmInput,
        E::Avic,
    ] {
        assert!(r.is_on(f), "{f}");
        assert_eq!(r.decision(f).origin, Origin::Passthrough, "{f}");
        assert!(
            r.decision(f)
                .reason
                .starts_with("hv-passthrough: KVM reports"),
            "{}",
            r.decision(f).reason
        );
    }
    assert!(!r.is_on(E::Evmcs), "explicit -hv-evmcs wins");
    assert!(!r.is_on(E::Syndbg), "passthrough never enables syndbg");
    // Host values are copied, as QEMU does: vendor "Linux KVM Hv", spinlocks 0xfff.
    assert_eq!(r.guest.vendor_id, "Linux KVM Hv");
    assert_eq!(r.guest.spinlock_retries, 0xFFF);
    assert_eq!(r.guest.max_vps, 4096);
    // The final set is explicit: no passthrough in it, and it reproduces the same CPUID.
    assert_eq!(r.config.state(E::Passthrough), None);
    let again = resolve(
        &HvRequest::from_config(r.config.clone()),
        &intel(),
        Backend::Kernel,
        &ResolveOptions::default(),
    )
    .unwrap();
    let mut a = cpuid_leaves(&r);
    let mut b = cpuid_leaves(&again);
    // max VPs is copied from the host only in passthrough mode.
    a.retain(|l| l.function != 0x4000_0005);
    b.retain(|l| l.function != 0x4000_0005);
    assert_eq!(a, b);
}

#[test]
fn passthrough_needs_a_host() {
    let err = resolve_list("hv-passthrough").unwrap_err();
    assert!(matches!(err, ModelError::HostRequired { .. }));
    assert!(err.to_string().contains("--host"));
}

#[test]
fn coresharing_auto_follows_the_host_and_blocks_migration() {
    let mut host = intel();
    host.smt_possible = Some(false);
    let r = resolve_on(&host, "hv-relaxed,hv-no-nonarch-coresharing=auto").unwrap();
    assert_eq!(regs(&cpuid_leaves(&r), 0x4000_0004)[0] & (1 << 18), 1 << 18);
    assert_eq!(r.migration_blockers[0].flag, E::NoNonarchCoresharing);
    host.smt_possible = Some(true);
    let r = resolve_on(&host, "hv-relaxed,hv-no-nonarch-coresharing=auto").unwrap();
    assert_eq!(regs(&cpuid_leaves(&r), 0x4000_0004)[0] & (1 << 18), 0);
    assert!(!r.migratable());
    let r = resolve_on(&host, "hv-relaxed,hv-no-nonarch-coresharing=on").unwrap();
    assert!(r.migratable());
    assert!(r.warnings.iter().any(|w| w.contains("pinned vCPUs")));
}

#[test]
fn user_backend_says_what_it_does_not_implement() {
    let host = intel();
    let opts = ResolveOptions::default();
    let r = resolve(
        &HvRequest::from_profile(Profile::Windows),
        &host,
        Backend::User,
        &opts,
    )
    .unwrap();
    assert!(r.is_on(E::Relaxed));
    assert!(!r.is_on(E::Vapic));
    assert!(r.decision(E::Vapic).reason.contains("in-kernel LAPIC"));
    // What the user backend implements is on, with the hypercall interface (03.EAX[5]).
    for flag in [
        E::Spinlocks,
        E::Vpindex,
        E::Runtime,
        E::Time,
        E::Frequencies,
        E::Synic,
        E::Stimer,
        E::StimerDirect,
        E::Tlbflush,
        E::TlbflushExt,
        E::Ipi,
        E::XmmInput,
        E::Avic,
    ] {
        assert!(r.is_on(flag), "{flag} should be on");
    }
    assert!(r.decision(E::Avic).reason.contains("AutoEOI"));
    let leaves = cpuid_leaves(&r);
    let eax = regs(&leaves, 0x4000_0003)[0];
    assert_ne!(eax & (1 << 5), 0, "HypercallMsrs");
    assert_ne!(eax & (1 << 6), 0, "VpIndex");
    assert_eq!(eax & 0b1100, 0b1100, "SynIC and synthetic timers");
    let edx = regs(&leaves, 0x4000_0003)[3];
    assert_ne!(edx & (1 << 19), 0, "direct-mode timers");
    let hints = regs(&leaves, 0x4000_0004)[0];
    assert_eq!(
        hints & ((1 << 2) | (1 << 9) | (1 << 10) | (1 << 11)),
        (1 << 2) | (1 << 9) | (1 << 10) | (1 << 11),
        "remote flush, deprecated AutoEOI, cluster IPI, Ex forms"
    );
    let err = resolve(
        &parse_hv_list("hv-vpindex,hv-synic,hv-relaxed,hv-syndbg").unwrap(),
        &host,
        Backend::User,
        &opts,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("user backend does not implement hv-syndbg yet"),
        "{err}"
    );
    let mut no_msr = host.clone();
    no_msr.user_space_msr = false;
    let err = resolve(
        &parse_hv_list("hv-relaxed").unwrap(),
        &no_msr,
        Backend::User,
        &opts,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("KVM_CAP_X86_USER_SPACE_MSR"),
        "{err}"
    );
}

#[test]
fn kernel_without_hyperv_emulation() {
    let host = HostCapabilities {
        cpu_vendor: CpuVendor::Intel,
        vmx: true,
        ..HostCapabilities::default()
    };
    let err = resolve_on(&host, "hv-relaxed").unwrap_err().to_string();
    assert!(
        err.contains("CONFIG_KVM_HYPERV") && err.contains("--backend user"),
        "{err}"
    );
}

#[test]
fn legacy_probe_without_hv_cpuid_uses_capabilities() {
    let mut host = intel();
    host.supported_hv_cpuid = None;
    let r = resolve_on(&host, "hv-vpindex,hv-synic,hv-time,hv-stimer,hv-tlbflush").unwrap();
    assert!(r
        .decision(E::Synic)
        .reason
        .contains("KVM_CAP_HYPERV_SYNIC2"));
    let err = resolve_on(&host, "hv-vpindex,hv-tlbflush,hv-tlbflush-ext")
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot tell"), "{err}");
    host.kvm_caps.set(hv_model::tlfs::KVM_CAP_HYPERV_SYNIC2, 0);
    let err = resolve_on(&host, "hv-vpindex,hv-synic")
        .unwrap_err()
        .to_string();
    assert!(err.contains("KVM_CAP_HYPERV_SYNIC2"), "{err}");
}

#[test]
fn host_profile_lists_everything_but_debug_and_passthrough() {
    let r = resolve_profile(&intel(), Profile::Host, "").unwrap();
    for f in [
        E::Evmcs,
        E::Crash,
        E::Reset,
        E::Reenlightenment,
        E::EnforceCpuid,
        E::KvmPvIpi,
    ] {
        assert!(r.is_on(f), "{f}");
    }
    assert!(!r.is_on(E::Syndbg) && !r.is_on(E::Passthrough) && !r.is_on(E::NoNonarchCoresharing));
    assert_eq!(r.guest.spinlock_retries, 0xFFF);
    let err = hv_model::resolve(
        &HvRequest::from_profile(Profile::Host),
        &intel(),
        Backend::Kernel,
        &no_host(),
    )
    .unwrap_err();
    assert!(matches!(err, ModelError::HostRequired { .. }));
}

#[test]
fn migratable_profile_has_no_blockers_and_explicit_kvm_features() {
    let r = resolve_profile(&intel(), Profile::Migratable, "").unwrap();
    assert!(r.migratable());
    assert!(!r.is_on(E::Avic) && !r.is_on(E::Evmcs) && !r.is_on(E::Reenlightenment));
    assert_eq!(r.decision(E::KvmPvIpi).origin, Origin::Profile);
    assert!(!r.is_on(E::KvmAsyncpfVmexit));
    let err = resolve_profile(&intel(), Profile::Migratable, "hv-passthrough").unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::MigrationBlocked {
                flag: E::Passthrough,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn explicit_settings_beat_the_profile() {
    let r = resolve_profile(&intel(), Profile::Windows, "-hv-avic,hv-spinlocks=0x2fff").unwrap();
    assert!(!r.is_on(E::Avic));
    assert_eq!(r.decision(E::Avic).origin, Origin::Explicit);
    assert_eq!(r.guest.spinlock_retries, 0x2FFF);
}

#[test]
fn avic_follows_host_apicv_in_profiles() {
    let mut host = intel();
    host.apicv = Some(false);
    let r = resolve_profile(&host, Profile::Windows, "").unwrap();
    assert!(!r.is_on(E::Avic));
    assert!(r.decision(E::Avic).reason.contains("APICv/AVIC is off"));
    let r = resolve_on(&host, "hv-avic").unwrap();
    assert!(r.is_on(E::Avic));
    assert!(r
        .warnings
        .iter()
        .any(|w| w.contains("hv-avic without APICv")));
}

#[test]
fn final_config_reproduces_every_profile() {
    for host in [intel(), amd()] {
        for p in Profile::ALL {
            let r = resolve_profile(&host, p, "tsc-frequency=2000000000").unwrap();
            let again = resolve(
                &HvRequest::from_config(r.config.clone()),
                &host,
                Backend::Kernel,
                &ResolveOptions::default(),
            )
            .unwrap_or_else(|e| panic!("{p}: {e}"));
            assert_eq!(r.enabled(), again.enabled(), "{p}");
            assert_eq!(cpuid_leaves(&r), cpuid_leaves(&again), "{p}");
        }
    }
}

#[test]
fn every_flag_has_a_decision_with_a_reason() {
    let r = resolve_profile(&intel(), Profile::WindowsServerHyperv, "").unwrap();
    assert_eq!(r.decisions.len(), hv_model::FLAGS.len());
    assert!(r.decisions.iter().all(|d| !d.reason.is_empty()));
    let r = resolve_list("").unwrap();
    assert!(!r.hyperv_enabled());
    assert!(cpuid_leaves(&r).is_empty());
}

#[test]
fn max_vps_can_be_set() {
    let opts = ResolveOptions {
        max_vps: Some(240),
        ..no_host()
    };
    let r = resolve(
        &parse_hv_list("hv-relaxed").unwrap(),
        &HostCapabilities::default(),
        Backend::Kernel,
        &opts,
    )
    .unwrap();
    assert_eq!(regs(&cpuid_leaves(&r), 0x4000_0005), [240, 64, 0, 0]);
}

#[test]
fn linux_profile_hides_kvm_so_linux_runs_its_hyperv_code() {
    let r = resolve_profile(&intel(), Profile::Linux, "").unwrap();
    assert!(!r.is_on(E::Kvm));
    let why = &r.decision(E::Kvm).reason;
    assert!(
        why.contains("profile linux") && why.contains("0x40000100"),
        "{why}"
    );
    // No KVM signature anywhere in the hypervisor range: Linux finds only Hyper-V.
    let leaves = cpuid_leaves(&r);
    let kvm_sig = leaves
        .iter()
        .any(|l| l.ebx == 0x4b4d_564b && l.ecx == 0x564b_4d56);
    assert!(!kvm_sig, "KVM's signature is still offered: {leaves:x?}");
    assert!(r.is_on(E::Synic) && r.is_on(E::StimerDirect) && r.is_on(E::Ipi));
    // An explicit kvm=on still wins over the profile.
    let r = resolve_profile(&intel(), Profile::Linux, "kvm=on").unwrap();
    assert!(r.is_on(E::Kvm));
}
