//! `hvkvm hv ...` subcommands and the `--hv`/`--profile` options `hvkvm run` flattens in.
//! [`run_with`] writes only to the writers it is given (output and diagnostics) and reports
//! failures as [`CliError`] chains (print them with [`error_chain`]); [`run`] sends the
//! diagnostics to stderr.

use std::error::Error;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::backend::Backend;
use crate::baseline::{baseline, BaselineError, FleetHost};
use crate::cpuid::cpuid_leaves;
use crate::error::ModelError;
use crate::formats::{self, Exported, Format, FormatError};
use crate::host::{HostCapabilities, HostLoadError};
use crate::parse::parse_hv_list;
use crate::profiles::Profile;
use crate::render;
use crate::request::HvRequest;
use crate::resolve::{resolve, HostChecks, Irqchip, Resolution, ResolveOptions};
use crate::version::{Targets, TooOld, Tool, Version, VersionError};

/// `--hv LIST` and `--profile P`, shared by `hvkvm run` and the `hvkvm hv` subcommands.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct HvSelectionArgs {
    /// Hyper-V enlightenments in QEMU syntax, applied on top of --profile:
    /// hv-relaxed,hv-vapic,hv-spinlocks=0x1fff,-hv-evmcs (hv_ spellings, names without the
    /// hv- prefix and libvirt names work too). May be repeated.
    #[arg(long = "hv", value_name = "LIST", allow_hyphen_values = true)]
    pub hv: Vec<String>,
    /// Start from a profile: windows-server-hyperv, windows, linux, migratable, minimal, host.
    #[arg(long, value_name = "PROFILE", value_parser = parse_profile)]
    pub profile: Option<Profile>,
}

impl HvSelectionArgs {
    /// The request these options describe (later `--hv` lists win).
    pub fn request(&self) -> Result<HvRequest, ModelError> {
        let mut request = HvRequest {
            profile: self.profile,
            ..HvRequest::default()
        };
        for list in &self.hv {
            request.overrides.merge(&parse_hv_list(list)?.overrides);
        }
        Ok(request)
    }
}

fn parse_profile(s: &str) -> Result<Profile, ModelError> {
    Profile::from_name(s)
}

/// Which host and VM setup to resolve against.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct HostArgs {
    /// Host description: the output of `hvkvm probe --json`, or a bare HostCapabilities
    /// object. Without it, flags are not checked against a host.
    #[arg(long = "host", value_name = "FILE")]
    pub host: Option<PathBuf>,
    /// Who implements the Hyper-V interface.
    #[arg(long, value_enum, default_value_t = Backend::Kernel)]
    pub backend: Backend,
    /// The guest must stay live-migratable (blockers become errors or turn profile flags off).
    #[arg(long)]
    pub migratable: bool,
    /// The VM's interrupt controller setup.
    #[arg(long, value_enum, default_value_t = Irqchip::Kernel)]
    pub irqchip: Irqchip,
    /// Fixed guest TSC frequency in kHz (needed to migrate with hv-reenlightenment).
    #[arg(long, value_name = "KHZ")]
    pub tsc_khz: Option<u32>,
}

fn parse_version(s: &str) -> Result<Version, VersionError> {
    s.parse()
}

/// Which releases of the target tools an export is written for. What a release lacks is left
/// out (or, for an "off" the release has anyway, simply not written) and listed on stderr.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct TargetArgs {
    /// QEMU release the -cpu properties are written for (formats qemu and proxmox; for
    /// Proxmox give pve-qemu-kvm's version from `pveversion -v`). Default 6.2: the QEMU of
    /// Ubuntu 22.04 LTS, the oldest QEMU in a supported Debian or Ubuntu LTS (Debian 12 has
    /// 7.2, Ubuntu 24.04 8.2, Debian 13 10.0). Oldest accepted: 5.2.
    #[arg(long, value_name = "X.Y", default_value = "6.2", value_parser = parse_version)]
    pub qemu_version: Version,
    /// libvirt release the domain XML is written for. Default 8.0: the libvirt of Ubuntu
    /// 22.04 LTS, the oldest in a supported Debian or Ubuntu LTS (Debian 12 has 9.0, Ubuntu
    /// 24.04 10.0, Debian 13 11.3). Oldest accepted: 7.0.
    #[arg(long, value_name = "X.Y", default_value = "8.0", value_parser = parse_version)]
    pub libvirt_version: Version,
    /// KubeVirt release the kubevirt.io/v1 fields are written for. Default 1.7: the oldest of
    /// the three minor releases KubeVirt maintains (1.7 to 1.9). Oldest accepted: 0.48.
    #[arg(long, value_name = "X.Y", default_value = "1.7", value_parser = parse_version)]
    pub kubevirt_version: Version,
}

impl Default for TargetArgs {
    fn default() -> TargetArgs {
        let t = Targets::default();
        TargetArgs {
            qemu_version: t.qemu,
            libvirt_version: t.libvirt,
            kubevirt_version: t.kubevirt,
        }
    }
}

impl TargetArgs {
    /// The targets, refused when older than hvkvm's version data reaches.
    pub fn targets(&self) -> Result<Targets, CliError> {
        let targets = Targets {
            qemu: self.qemu_version,
            libvirt: self.libvirt_version,
            kubevirt: self.kubevirt_version,
        };
        targets.check().map_err(CliError::Target)?;
        Ok(targets)
    }
}

/// The tool release an export in `format` is written for, for messages.
fn target_name(format: Format, targets: &Targets) -> String {
    match format {
        Format::Qemu => format!("{} {}", Tool::Qemu, targets.qemu),
        Format::Libvirt => format!("{} {}", Tool::Libvirt, targets.libvirt),
        Format::Kubevirt => format!("{} {}", Tool::Kubevirt, targets.kubevirt),
        Format::Proxmox => format!("Proxmox with {} {}", Tool::Qemu, targets.qemu),
    }
}

/// Exports and says on `err` what was left out and why.
fn export_reporting(
    format: Format,
    config: &crate::config::HvConfig,
    targets: &Targets,
    err: &mut dyn Write,
) -> Result<Exported, CliError> {
    let exported = formats::export(format, config, targets);
    let target = target_name(format, targets);
    for d in &exported.dropped {
        let effect = if d.lost { "" } else { " (no effect)" };
        writeln!(
            err,
            "hvkvm: {format} export for {target} left out {}{effect}: {}",
            d.names().join(","),
            d.reason
        )
        .map_err(CliError::Write)?;
    }
    Ok(exported)
}

/// `hvkvm hv <command>`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum HvCommand {
    /// Show every flag on/off with the reason, and the CPUID leaves the guest gets.
    Explain {
        /// What to resolve.
        #[command(flatten)]
        selection: HvSelectionArgs,
        /// Against which host.
        #[command(flatten)]
        host: HostArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// QEMU release for the equivalent QEMU -cpu value shown (default 6.2, see
        /// `hv export --help`).
        #[arg(long, value_name = "X.Y", default_value = "6.2", value_parser = parse_version)]
        qemu_version: Version,
    },
    /// Write the resolved set in another tool's configuration language.
    Export {
        /// What to resolve.
        #[command(flatten)]
        selection: HvSelectionArgs,
        /// Against which host.
        #[command(flatten)]
        host: HostArgs,
        /// Target language.
        #[arg(long, value_enum)]
        format: Format,
        /// Fail instead of leaving out settings the format or the target release cannot
        /// express.
        #[arg(long)]
        strict: bool,
        /// Target releases.
        #[command(flatten)]
        targets: TargetArgs,
    },
    /// Read another tool's configuration; print it as an hvkvm --hv list (or --to FORMAT).
    Import {
        /// Input language.
        #[arg(long, value_enum)]
        format: Format,
        /// Input file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Translate to this language instead of printing an --hv list.
        #[arg(long, value_enum)]
        to: Option<Format>,
        /// Target releases for --to.
        #[command(flatten)]
        targets: TargetArgs,
        /// Check the imported settings against this host (otherwise dependencies only).
        #[command(flatten)]
        host: HostArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The set safe on every host and for migration between them, with exclusion reasons.
    Baseline {
        /// Host descriptions (`hvkvm probe --json` output), one per host.
        #[arg(value_name = "PROBE", required = true)]
        probes: Vec<PathBuf>,
        /// What to aim for (default: profile host, i.e. all that every host can do).
        #[command(flatten)]
        selection: HvSelectionArgs,
        /// Who implements the Hyper-V interface.
        #[arg(long, value_enum, default_value_t = Backend::Kernel)]
        backend: Backend,
        /// Also print the baseline in this language.
        #[arg(long, value_enum)]
        format: Option<Format>,
        /// Target releases for --format.
        #[command(flatten)]
        targets: TargetArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the profiles.
    Profiles,
    /// List every flag: names, aliases, CPUID bits, dependencies, KVM capability.
    Flags,
}

/// Why an `hvkvm hv` command failed. Messages do not repeat their source; print the chain.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// `--hv`/`--profile` could not be parsed.
    #[error("invalid --hv/--profile selection")]
    Selection(#[source] ModelError),
    /// The `--host` file could not be used.
    #[error("cannot use the host description")]
    Host(#[source] HostLoadError),
    /// The request cannot be satisfied.
    #[error("cannot resolve {request}")]
    Resolve {
        /// The request, as typed.
        request: String,
        /// Why.
        #[source]
        source: ModelError,
    },
    /// The import input could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: input_file::InputError,
    },
    /// The import input is not valid in its format.
    #[error("cannot import {path} as {format}")]
    Import {
        /// The file.
        path: String,
        /// The format.
        format: Format,
        /// Why.
        #[source]
        source: FormatError,
    },
    /// A target release older than hvkvm's version data reaches.
    #[error("cannot export for this release")]
    Target(#[source] TooOld),
    /// `--strict` export and something cannot be expressed.
    #[error(
        "{format} cannot express {flags} (see the reasons above); export without --strict to \
         leave them out"
    )]
    NotExpressible {
        /// The format.
        format: Format,
        /// The flags.
        flags: String,
    },
    /// No baseline.
    #[error("cannot compute the fleet baseline")]
    Baseline(#[source] BaselineError),
    /// Writing the output failed.
    #[error("cannot write the output")]
    Write(#[source] std::io::Error),
}

/// `error: cause: cause` on one line, for printing a [`CliError`] (or any error) with its chain.
pub fn error_chain(err: &dyn Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        s.push_str(": ");
        s.push_str(&e.to_string());
        cur = e.source();
    }
    s
}

/// Runs one `hvkvm hv` command, writing to `out` and diagnostics (what an export left out)
/// to stderr.
pub fn run(cmd: &HvCommand, out: &mut dyn Write) -> Result<(), CliError> {
    run_with(cmd, out, &mut std::io::stderr().lock())
}

/// Runs one `hvkvm hv` command, writing its output to `out` and diagnostics to `err`.
pub fn run_with(cmd: &HvCommand, out: &mut dyn Write, err: &mut dyn Write) -> Result<(), CliError> {
    let text = match cmd {
        HvCommand::Explain {
            selection,
            host,
            json,
            qemu_version,
        } => {
            let targets = TargetArgs {
                qemu_version: *qemu_version,
                ..TargetArgs::default()
            }
            .targets()?;
            explain(selection, host, *json, targets.qemu)?
        }
        HvCommand::Export {
            selection,
            host,
            format,
            strict,
            targets,
        } => {
            let targets = targets.targets()?;
            let (_, resolution) = resolve_selection(selection, host)?;
            let exported = export_reporting(*format, &resolution.config, &targets, err)?;
            let lost: Vec<&str> = exported
                .dropped
                .iter()
                .filter(|d| d.lost)
                .flat_map(|d| d.names())
                .collect();
            if *strict && !lost.is_empty() {
                return Err(CliError::NotExpressible {
                    format: *format,
                    flags: lost.join(","),
                });
            }
            exported.text
        }
        HvCommand::Import {
            format,
            file,
            to,
            targets,
            host,
            json,
        } => import(*format, file, *to, &targets.targets()?, host, *json, err)?,
        HvCommand::Baseline {
            probes,
            selection,
            backend,
            format,
            targets,
            json,
        } => fleet(
            probes,
            selection,
            *backend,
            *format,
            &targets.targets()?,
            *json,
            err,
        )?,
        HvCommand::Profiles => profiles(),
        HvCommand::Flags => render::flags(),
    };
    out.write_all(text.as_bytes()).map_err(CliError::Write)
}

fn options(args: &HostArgs) -> Result<(HostCapabilities, ResolveOptions), CliError> {
    let (host, checks) = match &args.host {
        Some(path) => (
            HostCapabilities::load(path).map_err(CliError::Host)?,
            HostChecks::Enforce,
        ),
        None => (HostCapabilities::default(), HostChecks::Skip),
    };
    let opts = ResolveOptions {
        host_checks: checks,
        require_migration: args.migratable,
        irqchip: args.irqchip,
        tsc_khz: args.tsc_khz,
        max_vps: None,
    };
    Ok((host, opts))
}

fn resolve_selection(
    selection: &HvSelectionArgs,
    args: &HostArgs,
) -> Result<(HvRequest, Resolution), CliError> {
    let request = selection.request().map_err(CliError::Selection)?;
    let (host, opts) = options(args)?;
    let resolution =
        resolve(&request, &host, args.backend, &opts).map_err(|source| CliError::Resolve {
            request: request.to_string(),
            source,
        })?;
    Ok((request, resolution))
}

#[derive(Serialize)]
struct ExplainJson<'a> {
    request: &'a HvRequest,
    #[serde(flatten)]
    resolution: &'a Resolution,
    kvm_caps_to_enable: Vec<&'static str>,
    cpuid: Vec<crate::cpuid::CpuidLeaf>,
    hv_list: String,
    qemu: formats::qemu::QemuEquivalent,
}

fn explain(
    selection: &HvSelectionArgs,
    args: &HostArgs,
    json: bool,
    qemu_version: Version,
) -> Result<String, CliError> {
    let (request, resolution) = resolve_selection(selection, args)?;
    let leaves = cpuid_leaves(&resolution);
    let qemu = formats::qemu::equivalent(&resolution, "host", qemu_version);
    if json {
        let doc = ExplainJson {
            request: &request,
            resolution: &resolution,
            kvm_caps_to_enable: resolution
                .kvm_caps_to_enable()
                .iter()
                .map(|c| c.name)
                .collect(),
            cpuid: leaves,
            hv_list: resolution.config.to_hv_list(),
            qemu,
        };
        return Ok(to_json(&doc));
    }
    let host = args
        .host
        .as_ref()
        .map_or("not checked".to_string(), |p| p.display().to_string());
    let title = format!(
        "Hyper-V selection: {request} (backend {}, host: {host})",
        args.backend
    );
    Ok(render::explain(
        &title,
        &resolution,
        &leaves,
        &qemu,
        args.backend,
    ))
}

fn import(
    format: Format,
    file: &Path,
    to: Option<Format>,
    targets: &Targets,
    args: &HostArgs,
    json: bool,
    err: &mut dyn Write,
) -> Result<String, CliError> {
    let path = file.display().to_string();
    let role = input_file::Role::config(format!("{format} configuration"));
    let text = input_file::read_text(file, &role).map_err(|source| CliError::Read {
        path: path.clone(),
        source,
    })?;
    let imported = formats::import(format, &text).map_err(|source| CliError::Import {
        path: path.clone(),
        format,
        source,
    })?;
    let request = &imported.request;
    let (host, opts) = options(args)?;
    let resolution =
        resolve(request, &host, args.backend, &opts).map_err(|source| CliError::Resolve {
            request: format!("the settings in {path}"),
            source,
        })?;
    if json {
        #[derive(Serialize)]
        struct ImportJson<'a> {
            request: &'a HvRequest,
            notes: &'a [String],
            hv_list: String,
        }
        return Ok(to_json(&ImportJson {
            request,
            notes: &imported.notes,
            hv_list: request.overrides.to_hv_list(),
        }));
    }
    let mut s: String = imported
        .notes
        .iter()
        .map(|n| format!("# note: {n}\n"))
        .collect();
    match (to, request.profile) {
        // Faithful translation of what the input says (explicit offs included).
        (Some(to), None) => {
            s.push_str(&export_reporting(to, &request.overrides, targets, err)?.text)
        }
        // A profile (libvirt host-model) needs resolving first.
        (Some(to), Some(_)) => {
            s.push_str(&export_reporting(to, &resolution.config, targets, err)?.text)
        }
        (None, Some(p)) => s.push_str(&format!("--profile {p} --hv {}\n", request.overrides)),
        (None, None) => s.push_str(&format!("{}\n", request.overrides)),
    }
    Ok(s)
}

fn fleet(
    probes: &[PathBuf],
    selection: &HvSelectionArgs,
    backend: Backend,
    format: Option<Format>,
    targets: &Targets,
    json: bool,
    err: &mut dyn Write,
) -> Result<String, CliError> {
    let request = selection.request().map_err(CliError::Selection)?;
    let hosts = probes
        .iter()
        .map(|p| {
            Ok(FleetHost {
                name: p.display().to_string(),
                host: HostCapabilities::load(p).map_err(CliError::Host)?,
            })
        })
        .collect::<Result<Vec<_>, CliError>>()?;
    let b = baseline(&hosts, &request, backend, &ResolveOptions::default())
        .map_err(CliError::Baseline)?;
    if json {
        return Ok(to_json(&b));
    }
    let mut s = render::baseline(&b);
    if let Some(f) = format {
        s.push_str(&format!("\nAs {f}:\n"));
        s.push_str(&export_reporting(f, &b.config, targets, err)?.text);
    }
    Ok(s)
}

fn profiles() -> String {
    let opts = ResolveOptions {
        host_checks: HostChecks::Skip,
        ..ResolveOptions::default()
    };
    let mut s = String::new();
    for p in Profile::ALL {
        s.push_str(&format!("{:<22} {}\n", p.name(), p.description()));
        match p.config(&HostCapabilities::default(), Backend::Kernel, &opts) {
            Ok(c) => s.push_str(&format!("{:<22} --hv {c}\n", "")),
            Err(_) => s.push_str(&format!("{:<22} (computed from --host)\n", "")),
        }
    }
    s
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Serialising these plain data types cannot fail (string keys, no non-finite floats).
    let mut s =
        serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}
