//! Fleet baseline: what every host offers and what survives migration between them.

mod common;

use hv_model::{
    baseline, parse_hv_list, resolve, Backend, BaselineError, Enlightenment as E, FleetHost,
    HostCapabilities, HvRequest, Profile, ResolveOptions,
};

fn fleet(hosts: &[(&str, HostCapabilities)]) -> Vec<FleetHost> {
    hosts
        .iter()
        .map(|(n, h)| FleetHost {
            name: n.to_string(),
            host: h.clone(),
        })
        .collect()
}

#[test]
fn intel_and_amd_fleet_drops_evmcs_with_the_amd_reason() {
    let hosts = fleet(&[
        ("intel-1", HostCapabilities::example_intel()),
        ("amd-1", HostCapabilities::example_amd()),
    ]);
    let b = baseline(
        &hosts,
        &HvRequest::default(),
        Backend::Kernel,
        &ResolveOptions::default(),
    )
    .unwrap();
    assert_eq!(b.config.state(E::Evmcs), None);
    let evmcs = b
        .excluded
        .iter()
        .find(|e| e.flag == E::Evmcs)
        .expect("evmcs excluded");
    assert_eq!(evmcs.hosts.len(), 1);
    assert_eq!(evmcs.hosts[0].0, "amd-1");
    assert!(
        evmcs.hosts[0].1.contains("Intel-only"),
        "{}",
        evmcs.hosts[0].1
    );
    for f in [
        E::Synic,
        E::Stimer,
        E::StimerDirect,
        E::EmsrBitmap,
        E::TlbflushDirect,
        E::KvmPvIpi,
    ] {
        assert_eq!(b.config.state(f), Some(true), "{f}");
    }
    assert_eq!(b.config.state(E::Passthrough), None);
    assert_eq!(b.config.state(E::NoNonarchCoresharing), None);
}

#[test]
fn reenlightenment_stays_when_hosts_can_share_a_tsc_frequency() {
    let hosts = fleet(&[
        ("a", HostCapabilities::example_intel()),
        ("b", HostCapabilities::example_amd()),
    ]);
    let b = baseline(
        &hosts,
        &HvRequest::default(),
        Backend::Kernel,
        &ResolveOptions::default(),
    )
    .unwrap();
    assert_eq!(b.config.state(E::Reenlightenment), Some(true));
    // The lowest TSC (2.5 GHz on "a"); "b" scales.
    assert_eq!(b.config.tsc_frequency_hz, Some(2_500_000_000));
    assert!(
        b.notes
            .iter()
            .any(|n| n.contains("tsc-frequency=2500000000")),
        "{:?}",
        b.notes
    );
}

#[test]
fn reenlightenment_goes_when_a_host_cannot_scale_its_tsc() {
    let mut amd = HostCapabilities::example_amd();
    amd.tsc_control = false;
    let hosts = fleet(&[("a", HostCapabilities::example_intel()), ("b", amd)]);
    let b = baseline(
        &hosts,
        &HvRequest::default(),
        Backend::Kernel,
        &ResolveOptions::default(),
    )
    .unwrap();
    assert_eq!(b.config.state(E::Reenlightenment), None);
    assert_eq!(b.config.tsc_frequency_hz, None);
    let ex = b
        .excluded
        .iter()
        .find(|e| e.flag == E::Reenlightenment)
        .unwrap();
    assert_eq!(ex.hosts.len(), 2);
    assert!(ex.hosts.iter().all(|(_, r)| r.contains("migratable")));
    assert!(b
        .notes
        .iter()
        .any(|n| n.contains("no common TSC frequency")));
}

#[test]
fn kvm_features_are_intersected_and_pinned() {
    let mut old = HostCapabilities::example_intel();
    old.kvm_pv_features &= !(1 << 13); // no PV sched yield
    let hosts = fleet(&[("new", HostCapabilities::example_intel()), ("old", old)]);
    let b = baseline(
        &hosts,
        &HvRequest::default(),
        Backend::Kernel,
        &ResolveOptions::default(),
    )
    .unwrap();
    assert_eq!(
        b.config.state(E::KvmPvSchedYield),
        Some(false),
        "pinned off for every host"
    );
    assert_eq!(b.config.state(E::KvmPvIpi), Some(true));
    let ex = b
        .excluded
        .iter()
        .find(|e| e.flag == E::KvmPvSchedYield)
        .unwrap();
    assert_eq!(ex.hosts[0].0, "old");
}

#[test]
fn the_baseline_resolves_on_every_host_and_is_migratable() {
    let hosts = fleet(&[
        ("a", HostCapabilities::example_intel()),
        ("b", HostCapabilities::example_amd()),
    ]);
    for request in [
        HvRequest::default(),
        HvRequest::from_profile(Profile::WindowsServerHyperv),
    ] {
        let b = baseline(
            &hosts,
            &request,
            Backend::Kernel,
            &ResolveOptions::default(),
        )
        .unwrap();
        for h in &hosts {
            let r = resolve(
                &HvRequest::from_config(b.config.clone()),
                &h.host,
                Backend::Kernel,
                &ResolveOptions::default(),
            )
            .unwrap();
            assert!(r.migratable(), "{}: {:?}", h.name, r.migration_blockers);
        }
    }
}

#[test]
fn explicit_flags_a_host_lacks_name_the_host() {
    let hosts = fleet(&[
        ("intel", HostCapabilities::example_intel()),
        ("amd", HostCapabilities::example_amd()),
    ]);
    let err = baseline(
        &hosts,
        &parse_hv_list("hv-vapic,hv-evmcs").unwrap(),
        Backend::Kernel,
        &ResolveOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, BaselineError::Host { host, .. } if host == "amd"),
        "{err:?}"
    );
    assert!(common::chain(&err).contains("Intel-only"));
    let err = baseline(
        &[],
        &HvRequest::default(),
        Backend::Kernel,
        &ResolveOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, BaselineError::NoHosts));
}
