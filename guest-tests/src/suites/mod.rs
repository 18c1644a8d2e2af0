//! The guest test tables, as data: every case is a named closure that panics on failure.
//!
//! The same cases run on this machine's KVM (`tests/foundation.rs`, ...) and inside the
//! emulated Intel host (`tests/intel_host.rs`), so a case must not assume which host it is on;
//! where hosts legitimately differ (an instruction the PVM emulator refuses), the case asks
//! the host and checks the answer that host must give. Case names are `suite/case` or
//! `suite/table/row`; the harnesses prefix the host (`local/…`, `intel-host/…`).

pub mod evmcs;
pub mod foundation;
pub mod hv_rows;
pub mod hyperv_ipi_flush;
pub mod hyperv_kernel;
pub mod hyperv_stimer;
pub mod hyperv_synic;
pub mod hyperv_user;
pub mod intel_only;
pub mod kernel_backend;
pub mod nested;
pub mod qemu_peer;

use std::fmt;

use crate::intel_host::{INTEL_HOST, INTEL_HOST_2CPU};

/// Which hosts a case belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hosts {
    /// Any host with /dev/kvm.
    Any,
    /// Only inside the emulated Intel host: the case needs VMX, nested KVM or the tools of that
    /// image (`hvkvm-l1`).
    IntelHost,
    /// Only inside the emulated Intel host with two CPUs: the case runs a 2-vCPU L1 guest,
    /// which needs an emulated CPU per vCPU.
    IntelHostTwoCpus,
}

impl Hosts {
    /// Whether a case for these hosts runs on the host named `host`. The two-CPU Intel host
    /// runs only its own cases: everything else already ran on the one-CPU host at twice the
    /// speed.
    pub fn include(self, host: &str) -> bool {
        let two_cpus = host == INTEL_HOST_2CPU.name;
        match self {
            Hosts::Any => !two_cpus,
            Hosts::IntelHost => host == INTEL_HOST.name,
            Hosts::IntelHostTwoCpus => two_cpus,
        }
    }
}

/// One test case.
pub struct Case {
    /// `suite/case` or `suite/table/row`.
    pub name: String,
    /// Where it runs.
    pub hosts: Hosts,
    /// The body: returns on success, panics with the reason on failure.
    pub run: Box<dyn FnOnce() + Send>,
}

impl Case {
    /// A case for every host.
    pub fn new(name: impl Into<String>, run: impl FnOnce() + Send + 'static) -> Self {
        Case {
            name: name.into(),
            hosts: Hosts::Any,
            run: Box::new(run),
        }
    }

    /// Restricts the case to the emulated Intel host.
    pub fn intel_host_only(mut self) -> Self {
        self.hosts = Hosts::IntelHost;
        self
    }

    /// Restricts the case to the emulated Intel host with two CPUs.
    pub fn intel_host_two_cpus_only(mut self) -> Self {
        self.hosts = Hosts::IntelHostTwoCpus;
        self
    }
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Case")
            .field("name", &self.name)
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

/// `suite_cases!("suite"; f, g)`: the cases `suite/f` and `suite/g` running functions `f` and `g`
/// (so a case's name is its function's name).
macro_rules! suite_cases {
    ($suite:literal; $($f:ident),+ $(,)?) => {
        vec![$($crate::suites::Case::new(concat!($suite, "/", stringify!($f)), $f)),+]
    };
}
pub(crate) use suite_cases;

/// Every case of every suite, in the order they run.
pub fn all() -> Vec<Case> {
    let mut cases = foundation::cases();
    cases.extend(evmcs::cases());
    cases.extend(hyperv_user::cases());
    cases.extend(hyperv_synic::cases());
    cases.extend(hyperv_stimer::cases());
    cases.extend(hyperv_ipi_flush::cases());
    cases.extend(intel_only::cases());
    cases.extend(kernel_backend::cases());
    cases.extend(hyperv_kernel::cases());
    cases.extend(nested::cases());
    cases.extend(qemu_peer::cases());
    cases
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_emulated_host_runs_its_own_cases_and_the_two_cpu_host_nothing_else() {
        let host = |h: crate::intel_host::EmulatedHost| h.name;
        assert!(Hosts::Any.include(crate::harness::LOCAL));
        assert!(Hosts::Any.include(host(INTEL_HOST)));
        assert!(!Hosts::Any.include(host(INTEL_HOST_2CPU)));
        assert!(Hosts::IntelHost.include(host(INTEL_HOST)));
        assert!(!Hosts::IntelHost.include(host(INTEL_HOST_2CPU)));
        assert!(!Hosts::IntelHost.include(crate::harness::LOCAL));
        assert!(Hosts::IntelHostTwoCpus.include(host(INTEL_HOST_2CPU)));
        assert!(!Hosts::IntelHostTwoCpus.include(host(INTEL_HOST)));
        let two_cpu_cases: Vec<String> = all()
            .into_iter()
            .filter(|c| c.hosts.include(host(INTEL_HOST_2CPU)))
            .map(|c| c.name)
            .collect();
        assert_eq!(
            two_cpu_cases,
            ["kernel_backend/linux_on_2_vcpus_with_profile_linux_runs_its_hyperv_code"]
        );
    }
}
