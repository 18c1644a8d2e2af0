//! `hvkvm probe`: what this host can do, and what that means for hvkvm.

use std::io::Write;

use clap::Args;
use serde::Serialize;

use super::CliError;
use crate::kvm::caps::CpuVendor;
use crate::kvm::HostProbe;

/// Options of `hvkvm probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Print JSON (the document `hvkvm hv explain --host FILE` reads) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Whether one way of providing something works on this host, and why.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Verdict {
    /// What.
    pub name: &'static str,
    /// Possible here.
    pub available: bool,
    /// Why (or why not).
    pub reason: String,
}

/// Decides which Hyper-V backends and nested features this host supports.
pub fn verdicts(host: &HostProbe) -> Vec<Verdict> {
    let hyperv = host.cap("KVM_CAP_HYPERV");
    let kernel = if hyperv > 0 {
        Verdict {
            name: "kernel backend",
            available: true,
            reason: "KVM emulates Hyper-V in the kernel (KVM_CAP_HYPERV and friends present)"
                .into(),
        }
    } else {
        Verdict {
            name: "kernel backend",
            available: false,
            reason: "every KVM_CAP_HYPERV_* is 0: this kernel has no in-kernel Hyper-V emulation \
                     (built without CONFIG_KVM_HYPERV); use the user backend"
                .into(),
        }
    };
    let user_msr = host.cap("KVM_CAP_X86_USER_SPACE_MSR") > 0;
    let filter = host.cap("KVM_CAP_X86_MSR_FILTER") > 0;
    let user = Verdict {
        name: "user backend",
        available: user_msr,
        reason: match (user_msr, filter) {
            (true, true) => "KVM forwards unknown and filtered MSRs to user space \
                             (KVM_CAP_X86_USER_SPACE_MSR, KVM_CAP_X86_MSR_FILTER): hvkvm can own \
                             the Hyper-V MSR range"
                .into(),
            (true, false) => "KVM forwards unknown MSRs to user space, but has no MSR filter: \
                              works only while KVM itself does not handle Hyper-V MSRs"
                .into(),
            _ => "KVM_CAP_X86_USER_SPACE_MSR is missing: hvkvm cannot see the guest's Hyper-V \
                  MSR accesses (needs Linux 5.10 or later)"
                .into(),
        },
    };
    let nested_ok =
        host.cpu_vendor == CpuVendor::Intel && host.vmx && host.nested_param == Some(true);
    let evmcs_cap = host.cap("KVM_CAP_HYPERV_ENLIGHTENED_VMCS") > 0;
    let evmcs = Verdict {
        name: "nested eVMCS",
        available: nested_ok && evmcs_cap && host.cap("KVM_CAP_NESTED_STATE") > 0,
        reason: if host.cpu_vendor != CpuVendor::Intel {
            format!(
                "eVMCS is Intel-only; this host's CPU vendor is {:?}",
                host.cpu_vendor
            )
        } else if !host.vmx {
            "the host CPU does not expose VMX to this kernel".into()
        } else if host.nested_param != Some(true) {
            "kvm_intel's nested parameter is off: load kvm_intel with nested=1".into()
        } else if !evmcs_cap {
            "KVM_CAP_HYPERV_ENLIGHTENED_VMCS is 0 (no in-kernel Hyper-V)".into()
        } else {
            "Intel VMX, nested=1 and KVM_CAP_HYPERV_ENLIGHTENED_VMCS present".into()
        },
    };
    let nesting = crate::cpu::nested::nesting_possible(host);
    let nested_vmx = Verdict {
        name: "nested VMX",
        available: nesting.is_ok(),
        reason: nesting.err().unwrap_or_else(|| {
            "guests can get VMX (hvkvm run --nested on, or --cpu host with the default auto)".into()
        }),
    };
    let tsc_scaling = Verdict {
        name: "TSC scaling",
        available: host.cap("KVM_CAP_TSC_CONTROL") > 0,
        reason: if host.cap("KVM_CAP_TSC_CONTROL") > 0 {
            "KVM_CAP_TSC_CONTROL: a guest TSC frequency can be set (migration between hosts \
             with different TSC rates)"
                .into()
        } else {
            "KVM_CAP_TSC_CONTROL is 0: guests see the host TSC rate".into()
        },
    };
    vec![kernel, user, nested_vmx, evmcs, tsc_scaling]
}

#[derive(Serialize)]
struct ProbeDocument<'a> {
    #[serde(flatten)]
    host: &'a HostProbe,
    verdicts: Vec<Verdict>,
    /// What `hvkvm hv … --host FILE` reads.
    host_capabilities: hv_model::HostCapabilities,
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Runs `hvkvm probe`.
pub fn execute(args: ProbeArgs) -> Result<i32, CliError> {
    let host = HostProbe::probe()?;
    let verdicts = verdicts(&host);
    let mut out = std::io::stdout().lock();
    if args.json {
        let doc = ProbeDocument {
            host: &host,
            verdicts,
            host_capabilities: crate::hyperv::host_capabilities(&host),
        };
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&doc).unwrap_or_default()
        )?;
        return Ok(0);
    }
    writeln!(out, "KVM API version     {}", host.kvm_api_version)?;
    writeln!(
        out,
        "KVM module          {}",
        host.kvm_module.as_deref().unwrap_or("unknown")
    )?;
    writeln!(
        out,
        "CPU                 {:?} {}",
        host.cpu_vendor,
        host.cpu_model.as_deref().unwrap_or("")
    )?;
    writeln!(
        out,
        "VMX / SVM           {} / {}",
        yes_no(host.vmx),
        yes_no(host.svm)
    )?;
    let nested = host
        .nested_param
        .map_or("module not loaded", |n| if n { "1" } else { "0" });
    writeln!(out, "nested parameter    {nested}")?;
    let tsc = host
        .tsc_khz
        .map_or("unknown".to_string(), |k| format!("{k} kHz"));
    writeln!(
        out,
        "TSC                 {tsc}, invariant: {}",
        yes_no(host.invariant_tsc)
    )?;
    writeln!(out, "\nHyper-V capabilities")?;
    for c in &host.hyperv_caps {
        writeln!(out, "  {:<36} {}", c.name, c.value)?;
    }
    writeln!(out, "\nPlatform capabilities")?;
    for c in &host.platform_caps {
        writeln!(out, "  {:<36} {}", c.name, c.value)?;
    }
    writeln!(out, "\nWhat this means")?;
    for v in &verdicts {
        writeln!(
            out,
            "  {:<16} {:<4} {}",
            v.name,
            yes_no(v.available),
            v.reason
        )?;
    }
    Ok(0)
}
