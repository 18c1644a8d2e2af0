//! Every profile's export, checked by the real tool it targets, here on this host:
//!
//! * QEMU (Debian's `qemu-system-x86`): every `-cpu` property of the export exists with the
//!   right type (`-device max-x86_64-cpu,help`), and QEMU applies them all to a real CPU
//!   object. With `-machine none` QEMU creates the CPU, applies each `-cpu` property (refusing
//!   unknown names and bad values with "can't apply global"), and only then stops, because
//!   that machine gives an x86 CPU no APIC ID; reaching that stop means every property was
//!   accepted. TCG cannot run hv-* guests (hv-vpindex needs KVM), so booting is left to the
//!   emulated Intel host; [`qemu_cpu`] gives that test its `-cpu` value.
//! * libvirt (Debian's `libvirt-clients`): every exported domain passes `virt-xml-validate`.
//! * libvirt's daemon, where it can run: `virsh domxml-to-native qemu-argv` turns the exported
//!   domain into a QEMU command line with the same hv flags as hvkvm's QEMU export.
//!
//! Each check exports for the version of the tool installed here, and has a negative control
//! (an export for a newer release, which the installed tool must refuse), so a check that
//! passes has shown it can fail.

mod common;
mod tools;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command};

use hv_model::formats::qemu::{equivalent, QemuEquivalent};
use hv_model::{
    export, resolve, Backend, Format, HostCapabilities, HvRequest, Profile, Resolution,
    ResolveOptions, Targets, Version,
};

/// Each profile resolved on the example hosts (the kernel backend, host checked).
fn resolutions() -> Vec<(String, Resolution)> {
    let mut out = Vec::new();
    for (host_name, host) in [
        ("intel", HostCapabilities::example_intel()),
        ("amd", HostCapabilities::example_amd()),
    ] {
        for profile in Profile::ALL {
            let r = resolve(
                &HvRequest::from_profile(profile),
                &host,
                Backend::Kernel,
                &ResolveOptions::default(),
            )
            .unwrap_or_else(|e| panic!("{profile} on {host_name}: {e}"));
            out.push((format!("{profile} ({host_name})"), r));
        }
    }
    out
}

/// The `-cpu` value and CPUID leaves for a profile on a host, for QEMU `version` (what the
/// boot test in the emulated Intel host runs, and what a CPUID comparison starts from).
pub fn qemu_cpu(
    profile: Profile,
    host: &HostCapabilities,
    model: &str,
    version: Version,
) -> QemuEquivalent {
    let r = resolve(
        &HvRequest::from_profile(profile),
        host,
        Backend::Kernel,
        &ResolveOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{profile}: {e}"));
    equivalent(&r, model, version)
}

/// The arguments of the property check: QEMU applies every `-cpu` property, then stops.
fn parse_check_args(cpu: &str) -> Vec<String> {
    [
        "-machine",
        "none",
        "-accel",
        "tcg",
        "-nodefaults",
        "-display",
        "none",
        "-S",
        "-cpu",
        cpu,
    ]
    .map(String::from)
    .to_vec()
}

/// What QEMU says about a `-cpu` value: `Ok` when every property was applied.
fn qemu_applies(qemu: &Path, cpu: &str) -> Result<(), String> {
    let args = parse_check_args(cpu);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = tools::run(qemu, &args)?;
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    // The stop after the properties (see the module documentation).
    let reached_realize = stderr.contains("apic-id property was not initialized properly");
    if reached_realize && !stderr.contains("can't apply global") {
        Ok(())
    } else {
        Err(stderr.trim().to_string())
    }
}

/// `-device max-x86_64-cpu,help`: every CPU property and its type.
fn qemu_properties(qemu: &Path) -> BTreeMap<String, String> {
    let out = tools::run(qemu, &["-device", "max-x86_64-cpu,help"]).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.trim().split_once("=<")?;
            let (ty, _) = rest.split_once('>')?;
            Some((name.to_string(), ty.to_string()))
        })
        .collect()
}

/// The QEMU property type a `-cpu` item needs.
fn expected_type(item: &str) -> (&str, &'static [&'static str]) {
    let (name, value) = item.split_once('=').unwrap_or((item, ""));
    let types: &[&str] = match name {
        "hv-spinlocks"
        | "hv-version-id-build"
        | "hv-version-id-spack"
        | "hv-version-id-snumber" => &["uint32"],
        "hv-version-id-major" | "hv-version-id-minor" => &["uint16"],
        "hv-version-id-sbranch" => &["uint8"],
        "hv-vendor-id" => &["str"],
        "hv-no-nonarch-coresharing" => &["OnOffAuto"],
        "tsc-frequency" => &["int"],
        _ if value.is_empty() || value == "on" || value == "off" => &["bool"],
        _ => &["?"],
    };
    (name, types)
}

fn installed_qemu(check: &str) -> Option<(std::path::PathBuf, Version)> {
    let qemu = match tools::tool("qemu-system-x86_64", "qemu-system-x86") {
        Ok(q) => q,
        Err(why) => {
            tools::skip(check, &why);
            return None;
        }
    };
    let banner = tools::run(&qemu, &["--version"]).unwrap();
    let version = tools::version_in(&String::from_utf8_lossy(&banner.stdout))
        .unwrap_or_else(|| panic!("no version in {banner:?}"));
    Some((qemu, version))
}

#[test]
fn qemu_accepts_every_profile_export() {
    let Some((qemu, version)) = installed_qemu("qemu_accepts_every_profile_export") else {
        return;
    };
    let properties = qemu_properties(&qemu);
    assert!(
        properties.contains_key("hv-relaxed"),
        "QEMU {version} lists no hv-relaxed: {properties:?}"
    );
    let mut failures = Vec::new();
    // The installed release, and the default target (older, so also accepted here).
    let mut targets = vec![version];
    if Targets::default().qemu <= version {
        targets.push(Targets::default().qemu);
    }
    for target in targets {
        for (name, r) in resolutions() {
            let eq = equivalent(&r, "max", target);
            for item in eq.cpu.split(',').skip(1) {
                let (prop, types) = expected_type(item);
                match properties.get(prop) {
                    Some(t) if types.contains(&t.as_str()) => {}
                    other => failures.push(format!(
                        "{name} for QEMU {target}: {item}: QEMU {version} has {other:?}, \
                         expected {types:?}"
                    )),
                }
            }
            if let Err(why) = qemu_applies(&qemu, &eq.cpu) {
                failures.push(format!(
                    "{name} for QEMU {target}: -cpu {} refused: {why}",
                    eq.cpu
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The reported bug as a negative control: written for QEMU 9.0, the migratable profile pins
/// kvm-asyncpf-vmexit, which an older QEMU refuses; the check must see that.
#[test]
fn qemu_check_refuses_a_property_the_release_lacks() {
    let Some((qemu, version)) = installed_qemu("qemu_check_refuses_a_property_the_release_lacks")
    else {
        return;
    };
    if version >= Version::new(9, 0) {
        tools::skip(
            "qemu_check_refuses_a_property_the_release_lacks",
            &format!("QEMU {version} has kvm-asyncpf-vmexit; the control needs an older one"),
        );
        return;
    }
    let eq = qemu_cpu(
        Profile::Migratable,
        &HostCapabilities::example_intel(),
        "max",
        Version::new(9, 0),
    );
    assert!(eq.cpu.contains("kvm-asyncpf-vmexit=off"), "{}", eq.cpu);
    let why = qemu_applies(&qemu, &eq.cpu).expect_err("QEMU accepted kvm-asyncpf-vmexit");
    assert!(why.contains("kvm-asyncpf-vmexit"), "{why}");
    // The same profile for the installed release is accepted (the fix).
    let eq = qemu_cpu(
        Profile::Migratable,
        &HostCapabilities::example_intel(),
        "max",
        version,
    );
    qemu_applies(&qemu, &eq.cpu).unwrap();
}

/// An exported `<domain>` skeleton inside the smallest domain libvirt accepts.
fn full_domain(exported: &str) -> String {
    let body: Vec<&str> = exported
        .lines()
        .filter(|l| !l.starts_with("<domain") && !l.starts_with("</domain>"))
        .collect();
    format!(
        "<domain type='kvm'>\n  <name>hvkvm-check</name>\n  <memory unit='MiB'>256</memory>\n  \
         <os>\n    <type arch='x86_64' machine='pc'>hvm</type>\n  </os>\n{}\n</domain>\n",
        body.join("\n")
    )
}

fn installed_libvirt(check: &str) -> Option<(std::path::PathBuf, Version)> {
    let validate = match tools::tool("virt-xml-validate", "libvirt-clients") {
        Ok(v) => v,
        Err(why) => {
            tools::skip(check, &why);
            return None;
        }
    };
    let virsh = tools::which("virsh").expect("libvirt-clients has virsh");
    let out = tools::run(&virsh, &["--version"]).unwrap();
    let version = tools::version_in(&String::from_utf8_lossy(&out.stdout))
        .unwrap_or_else(|| panic!("no version in {out:?}"));
    Some((validate, version))
}

fn libvirt_validates(validate: &Path, dir: &Path, name: &str, xml: &str) -> Result<(), String> {
    let file = dir.join(format!("{}.xml", name.replace([' ', '(', ')'], "_")));
    std::fs::write(&file, xml).unwrap();
    let out = tools::run(validate, &[file.to_str().unwrap(), "domain"])?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
fn libvirt_schema_accepts_every_profile_export() {
    let check = "libvirt_schema_accepts_every_profile_export";
    let Some((validate, version)) = installed_libvirt(check) else {
        return;
    };
    let dir = tools::scratch("libvirt-schema");
    let mut failures = Vec::new();
    let mut targets = vec![version];
    if Targets::default().libvirt <= version {
        targets.push(Targets::default().libvirt);
    }
    for target in targets {
        let t = Targets {
            libvirt: target,
            ..Targets::default()
        };
        for (name, r) in resolutions() {
            let xml = full_domain(&export(Format::Libvirt, &r.config, &t).text);
            if let Err(why) = libvirt_validates(&validate, &dir, &name, &xml) {
                failures.push(format!(
                    "{name} for libvirt {target}: {}\n{xml}",
                    tools::tail(&why, 4)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn libvirt_schema_refuses_elements_the_release_lacks() {
    let check = "libvirt_schema_refuses_elements_the_release_lacks";
    let Some((validate, version)) = installed_libvirt(check) else {
        return;
    };
    if version >= Version::new(11, 0) {
        tools::skip(
            check,
            &format!("libvirt {version} has every element; the control needs one before 11.0"),
        );
        return;
    }
    let dir = tools::scratch("libvirt-control");
    let r = resolutions()
        .into_iter()
        .find(|(n, _)| n == "windows-server-hyperv (intel)")
        .unwrap()
        .1;
    let newest = Targets {
        libvirt: Version::new(11, 0),
        ..Targets::default()
    };
    let xml = full_domain(&export(Format::Libvirt, &r.config, &newest).text);
    assert!(xml.contains("<extended state='on'/>"), "{xml}");
    libvirt_validates(&validate, &dir, "newer", &xml)
        .expect_err("libvirt's schema accepted elements newer than it");
}

/// A private libvirtd (system mode, its own socket), ended by pid when dropped. One at a time
/// on a machine: they share libvirt's state directories.
struct Daemon {
    shell: Child,
    pid_file: std::path::PathBuf,
    uri: String,
}

impl Daemon {
    fn start(dir: &Path) -> Result<Daemon, String> {
        let libvirtd = tools::tool("libvirtd", "libvirt-daemon-system")?;
        tools::tool("virtqemud", "libvirt-daemon-driver-qemu").or_else(|_| {
            // Debian 12 has the QEMU driver as a libvirtd module, not virtqemud.
            if Path::new(
                "/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so",
            )
            .exists()
            {
                Ok(libvirtd.clone())
            } else {
                Err("libvirt's QEMU driver (libvirt-daemon-driver-qemu) is missing".to_string())
            }
        })?;
        let run = dir.join("run");
        std::fs::create_dir_all(&run).unwrap();
        let conf = dir.join("libvirtd.conf");
        std::fs::write(
            &conf,
            format!(
                "unix_sock_dir = \"{}\"\nlog_outputs = \"3:file:{}\"\n",
                run.display(),
                dir.join("libvirtd.log").display()
            ),
        )
        .unwrap();
        let pid_file = dir.join("libvirtd.pid");
        // flock holds the machine-wide lock for as long as the daemon runs.
        let script = format!(
            "exec flock -w 300 /tmp/hvkvm-libvirtd.lock sh -c '{} --config {} & echo $! > {}; wait'",
            libvirtd.display(),
            conf.display(),
            pid_file.display()
        );
        let shell = Command::new("sh")
            .args(["-c", &script])
            .spawn()
            .map_err(|e| format!("cannot start libvirtd: {e}"))?;
        let mut daemon = Daemon {
            shell,
            pid_file,
            uri: format!(
                "qemu:///system?socket={}",
                run.join("libvirt-sock").display()
            ),
        };
        let virsh = tools::which("virsh").ok_or("virsh is missing")?;
        for _ in 0..300 {
            let ok = Command::new(&virsh)
                .args(["-c", &daemon.uri, "version", "--daemon"])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return Ok(daemon);
            }
            if let Ok(Some(status)) = daemon.shell.try_wait() {
                let log = std::fs::read_to_string(dir.join("libvirtd.log")).unwrap_or_default();
                return Err(format!(
                    "libvirtd ended ({status}): {}",
                    tools::tail(&log, 3)
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        daemon.stop();
        Err("libvirtd did not answer within 60 s".into())
    }

    fn stop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pid_file) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        let _ = self.shell.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `-cpu` value of a QEMU command line as libvirt prints it.
fn cpu_of(argv: &str) -> Option<String> {
    let words: Vec<&str> = argv.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == "-cpu")
        .map(|w| w[1].trim_matches('\'').to_string())
}

/// `name -> value` of the hv-, kvm and tsc-frequency items of a `-cpu` value, with QEMU's
/// spellings made equal (`hv-relaxed` = `hv-relaxed=on`, hex = decimal). `=off` of a property
/// whose QEMU default is off (every hv- flag, kvm-hint-dedicated) sets nothing and is dropped.
fn hv_items(cpu: &str) -> BTreeMap<String, String> {
    cpu.split(',')
        .skip(1)
        .filter(|i| i.starts_with("hv-") || i.starts_with("kvm") || i.starts_with("tsc-frequency"))
        .map(|i| {
            let (n, v) = i.split_once('=').unwrap_or((i, "on"));
            let v = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).map_or(v.to_string(), |n| n.to_string()),
                None => v.to_string(),
            };
            (n.to_string(), v)
        })
        .filter(|(n, v)| !(v == "off" && (n.starts_with("hv-") || n == "kvm-hint-dedicated")))
        .collect()
}

#[test]
fn libvirt_daemon_gives_qemu_the_same_hv_flags() {
    let check = "libvirt_daemon_gives_qemu_the_same_hv_flags";
    let Some((_, version)) = installed_libvirt(check) else {
        return;
    };
    if tools::tool("qemu-system-x86_64", "qemu-system-x86").is_err() {
        tools::skip(
            check,
            "libvirt needs qemu-system-x86 to build a command line",
        );
        return;
    }
    let dir = tools::scratch("libvirtd");
    let daemon = match Daemon::start(&dir) {
        Ok(d) => d,
        Err(why) => {
            tools::skip(check, &format!("no libvirt daemon here: {why}"));
            return;
        }
    };
    let virsh = tools::which("virsh").unwrap();
    let qemu_version = installed_qemu(check).map(|(_, v)| v).unwrap();
    let targets = Targets {
        libvirt: version,
        qemu: qemu_version,
        ..Targets::default()
    };
    let mut failures = Vec::new();
    for (name, r) in resolutions() {
        let exported = export(Format::Libvirt, &r.config, &targets);
        let file = dir.join("domain.xml");
        std::fs::write(&file, full_domain(&exported.text)).unwrap();
        let out = tools::run(
            &virsh,
            &[
                "-c",
                &daemon.uri,
                "domxml-to-native",
                "qemu-argv",
                file.to_str().unwrap(),
            ],
        )
        .unwrap();
        let argv = String::from_utf8_lossy(&out.stdout).to_string();
        let Some(libvirt_cpu) = cpu_of(&argv) else {
            failures.push(format!(
                "{name}: no -cpu from libvirt: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            continue;
        };
        // What hvkvm writes for QEMU directly, less what libvirt cannot express.
        let mut expressible = r.config.clone();
        for d in &exported.dropped {
            for f in &d.flags {
                expressible.forget(*f);
            }
        }
        let hvkvm = export(Format::Qemu, &expressible, &targets);
        let ours = hv_items(&format!("model,{}", hvkvm.text.trim()));
        let theirs = hv_items(&libvirt_cpu);
        if ours != theirs {
            failures.push(format!(
                "{name}:\n  hvkvm:   {ours:?}\n  libvirt: {theirs:?}\n  (-cpu {libvirt_cpu})"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn argv_items_compare_across_spellings() {
    assert_eq!(
        hv_items("qemu64,hv-relaxed=on,hv-spinlocks=0x1fff,kvm=off,aes"),
        hv_items("host,hv-relaxed,hv-spinlocks=8191,kvm=off")
    );
    assert_ne!(hv_items("x,hv-relaxed"), hv_items("x,hv-relaxed=off"));
    assert_eq!(
        cpu_of("/usr/bin/qemu -cpu qemu64,hv-time=on -m 256").as_deref(),
        Some("qemu64,hv-time=on")
    );
    let _ = common::newest();
}

/// Other Debian releases from tests/real-tools/debian-releases.sh, when
/// `HVKVM_DEBIAN_RELEASES` names its output directory (optional: the installed tools above are
/// the required checks).
fn debian_releases(check: &str) -> Option<std::path::PathBuf> {
    match std::env::var_os("HVKVM_DEBIAN_RELEASES") {
        Some(dir) => Some(std::path::PathBuf::from(dir)),
        None => {
            eprintln!(
                "SKIP {check}: set HVKVM_DEBIAN_RELEASES to the output of \
                 tests/real-tools/debian-releases.sh to check other QEMU and libvirt releases"
            );
            None
        }
    }
}

#[test]
fn other_qemu_releases_accept_their_exports() {
    let Some(dir) = debian_releases("other_qemu_releases_accept_their_exports") else {
        return;
    };
    let mut checked = 0;
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(dir.join("bin")).expect("bin/ of debian-releases.sh") {
        let qemu = entry.unwrap().path();
        let banner = tools::run(&qemu, &["--version"]).unwrap();
        let version = tools::version_in(&String::from_utf8_lossy(&banner.stdout)).unwrap();
        for (name, r) in resolutions() {
            let eq = equivalent(&r, "max", version);
            if let Err(why) = qemu_applies(&qemu, &eq.cpu) {
                failures.push(format!("{name} on QEMU {version}: -cpu {}: {why}", eq.cpu));
            }
        }
        checked += 1;
    }
    assert!(checked > 0, "no QEMU in {dir:?}/bin");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn other_libvirt_schemas_accept_their_exports() {
    let Some(dir) = debian_releases("other_libvirt_schemas_accept_their_exports") else {
        return;
    };
    let xmllint = match tools::tool("xmllint", "libxml2-utils") {
        Ok(x) => x,
        Err(why) => return tools::skip("other_libvirt_schemas_accept_their_exports", &why),
    };
    let scratch = tools::scratch("libvirt-releases");
    let mut checked = 0;
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let Some(version) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("libvirt-"))
            .and_then(|v| v.parse::<Version>().ok())
        else {
            continue;
        };
        let rng = path.join("usr/share/libvirt/schemas/domain.rng");
        let targets = Targets {
            libvirt: version,
            ..Targets::default()
        };
        for (name, r) in resolutions() {
            let file = scratch.join("domain.xml");
            std::fs::write(
                &file,
                full_domain(&export(Format::Libvirt, &r.config, &targets).text),
            )
            .unwrap();
            let out = tools::run(
                &xmllint,
                &[
                    "--noout",
                    "--relaxng",
                    rng.to_str().unwrap(),
                    file.to_str().unwrap(),
                ],
            )
            .unwrap();
            if !out.status.success() {
                failures.push(format!(
                    "{name} for libvirt {version}: {}",
                    tools::tail(&String::from_utf8_lossy(&out.stderr), 3)
                ));
            }
        }
        checked += 1;
    }
    assert!(checked > 0, "no libvirt-X.Y/ in {dir:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
