//! Every dependency QEMU enforces (kvm_hyperv_properties[].dependencies plus the separate
//! synic→vpindex check) fails with an error that names the missing flag and the fix.

mod common;

use common::{resolve_list, resolve_profile};
use hv_model::{Enlightenment as E, HostCapabilities, ModelError, Profile};

/// (flag, its direct dependencies, the other flags its dependencies need).
const RULES: &[(&str, &[&str], &[&str])] = &[
    ("hv-synic", &["hv-vpindex"], &[]),
    ("hv-stimer", &["hv-synic", "hv-time"], &["hv-vpindex"]),
    (
        "hv-stimer-direct",
        &["hv-stimer"],
        &["hv-synic", "hv-time", "hv-vpindex"],
    ),
    ("hv-tlbflush", &["hv-vpindex"], &[]),
    ("hv-tlbflush-ext", &["hv-tlbflush"], &["hv-vpindex"]),
    ("hv-ipi", &["hv-vpindex"], &[]),
    ("hv-evmcs", &["hv-vapic"], &[]),
    ("hv-tlbflush-direct", &["hv-vapic"], &[]),
    ("hv-syndbg", &["hv-synic", "hv-relaxed"], &["hv-vpindex"]),
];

#[test]
fn each_rule_names_the_missing_flag_and_the_fix() {
    for (flag, deps, support) in RULES {
        for missing in *deps {
            let present: Vec<&str> = deps
                .iter()
                .chain(*support)
                .copied()
                .filter(|d| d != missing)
                .collect();
            let list = format!("{flag},{}", present.join(","));
            let err = resolve_list(&list).expect_err(&list);
            let msg = err.to_string();
            assert!(
                matches!(&err, ModelError::MissingDependency { flag: f, missing: m }
                    if f.name() == *flag && m.iter().any(|d| d.name() == *missing)),
                "{list}: {err:?}"
            );
            assert!(msg.contains(&format!("{flag} requires")), "{msg}");
            assert!(msg.contains(&format!("add {missing}")), "{msg}");
        }
        // With all dependencies the same list resolves.
        let list = format!(
            "{flag},{}",
            deps.iter()
                .chain(*support)
                .copied()
                .collect::<Vec<_>>()
                .join(",")
        );
        resolve_list(&list).unwrap_or_else(|e| panic!("{list}: {e}"));
    }
}

#[test]
fn stimer_alone_names_both_dependencies() {
    let err = resolve_list("hv-stimer").unwrap_err();
    assert_eq!(
        err.to_string(),
        "hv-stimer requires hv-synic and hv-time: add hv-synic,hv-time"
    );
}

#[test]
fn kvm_paravirt_features_have_no_effect_with_kvm_off() {
    // QEMU accepts kvm=off with KVM features (libvirt: <hidden state='on'/> + <pv-ipi/>); they
    // cannot take effect, so they are off with that reason and a warning.
    let r = resolve_list("hv-relaxed,kvm=off,kvm-pv-ipi").unwrap();
    assert!(!r.is_on(E::KvmPvIpi));
    assert!(r
        .decision(E::KvmPvIpi)
        .reason
        .contains("kvm=off hides KVM's leaves"));
    assert!(
        r.warnings.iter().any(|w| w.contains("kvm=off")),
        "{:?}",
        r.warnings
    );
    assert!(!common::has_leaf(&hv_model::cpuid_leaves(&r), 0x4000_0101));
    let r = resolve_list("hv-relaxed,kvm=off").unwrap();
    assert!(!r.is_on(E::KvmClock));
    assert!(
        r.warnings.iter().all(|w| !w.contains("kvm=off")),
        "{:?}",
        r.warnings
    );
}

#[test]
fn explicitly_disabled_dependency_is_named() {
    let err = resolve_list("hv-vpindex,hv-time,hv-stimer,hv-synic=off").unwrap_err();
    assert_eq!(
        err,
        ModelError::DependencyDisabled {
            flag: E::Stimer,
            dependency: E::Synic
        }
    );
    assert!(err.to_string().contains("turns hv-synic off"), "{err}");
}

#[test]
fn profile_flags_follow_a_dependency_the_user_turns_off() {
    let host = HostCapabilities::example_intel();
    let r = resolve_profile(&host, Profile::Windows, "-hv-synic").unwrap();
    assert!(!r.is_on(E::Synic));
    for (f, cause) in [(E::Stimer, "hv-synic"), (E::StimerDirect, "hv-stimer")] {
        assert!(!r.is_on(f), "{f}");
        assert!(
            r.decision(f).reason.contains(cause),
            "{}",
            r.decision(f).reason
        );
    }
    assert!(r.is_on(E::Vpindex) && r.is_on(E::Time));
}

#[test]
fn explicit_flag_on_a_profile_dependency_the_host_lacks() {
    // A host whose KVM has no SynIC (03.EAX[2] cleared).
    let mut host = HostCapabilities::example_intel();
    for l in host.supported_hv_cpuid.as_mut().unwrap() {
        if l.function == 0x4000_0003 {
            l.eax &= !(1 << 2);
        }
    }
    let err = resolve_profile(&host, Profile::Windows, "hv-stimer").unwrap_err();
    match &err {
        ModelError::DependencyUnavailable {
            flag,
            dependency,
            reason,
        } => {
            assert_eq!((*flag, *dependency), (E::Stimer, E::Synic));
            assert!(reason.contains("03.EAX[2]"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
    // From the profile alone, stimer just goes off.
    let r = resolve_profile(&host, Profile::Windows, "").unwrap();
    assert!(!r.is_on(E::Synic) && !r.is_on(E::Stimer) && !r.is_on(E::StimerDirect));
}

#[test]
fn doc_recommendations_are_warnings() {
    let r = resolve_list("hv-reenlightenment,tsc-frequency=2500000000").unwrap();
    assert!(
        r.warnings.iter().any(|w| w.contains("hv-frequencies")),
        "{:?}",
        r.warnings
    );
    let r = resolve_list("hv-vapic,hv-tlbflush-direct").unwrap();
    assert!(
        r.warnings.iter().any(|w| w.contains("hv-evmcs")),
        "{:?}",
        r.warnings
    );
}

#[test]
fn value_checks() {
    for (list, needle) in [
        ("hv-spinlocks=0x100", "at least 0xfff"),
        ("hv-spinlocks", "hv-spinlocks=0x1fff"),
        ("hv-vendor-id=0123456789abc", "hold 12"),
        ("hv-vendor-id=caf\u{e9}", "printable ASCII"),
        ("hv-version-id-sbranch=256", "8 bits"),
        ("hv-version-id-snumber=0x1000000", "24 bits"),
        ("hv-version-id-major=0x10000", "16 bits"),
        ("hv-no-nonarch-coresharing=maybe", "on, off or auto"),
    ] {
        let err = hv_model::parse_hv_list(list).unwrap_err().to_string();
        assert!(err.contains(needle), "{list}: {err}");
    }
    assert!(hv_model::parse_hv_list("hv-spinlocks=0xfff").is_ok());
    assert!(hv_model::parse_hv_list("hv-vendor-id=Microsoft Hv").is_ok());
}
