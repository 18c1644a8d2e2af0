//! Versions of the tools hvkvm exports to (QEMU, libvirt, KubeVirt), and the default target of
//! each: the oldest release still in a supported long-term distribution. Like [`crate::tlfs`]
//! this module depends on no other.
//!
//! Why these defaults (as of December 2026):
//! * QEMU 6.2 and libvirt 8.0: Ubuntu 22.04 LTS ships QEMU 6.2 and libvirt 8.0.0 and is in
//!   standard support until April 2027. Debian 12 ships QEMU 7.2 and libvirt 9.0.0, Ubuntu
//!   24.04 QEMU 8.2 and libvirt 10.0.0, Debian 13 QEMU 10.0 and libvirt 11.3.0. Debian 11
//!   (QEMU 5.2, libvirt 7.0.0) left LTS in August 2026 and Ubuntu 20.04 (QEMU 4.2) left
//!   standard support in 2025.
//! * KubeVirt 1.7: upstream KubeVirt maintains its three newest minor releases (1.7, 1.8 and
//!   1.9 once 1.9 is out; 1.8.0 was released in March 2026).

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// A `MAJOR.MINOR` release number (a patch level, if given, is ignored: no property hvkvm
/// exports depends on one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Major release.
    pub major: u16,
    /// Minor release.
    pub minor: u16,
}

impl Version {
    /// `major.minor`.
    pub const fn new(major: u16, minor: u16) -> Version {
        Version { major, minor }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A version argument that is not `MAJOR.MINOR`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid version '{text}': expected MAJOR.MINOR such as 7.2 (a patch level like 7.2.1 is accepted)")]
pub struct VersionError {
    /// What was given.
    pub text: String,
}

impl FromStr for Version {
    type Err = VersionError;
    fn from_str(s: &str) -> Result<Version, VersionError> {
        let bad = || VersionError {
            text: s.to_string(),
        };
        let t = s.trim();
        let t = t.strip_prefix('v').unwrap_or(t);
        let mut parts = t.split('.');
        let major = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let minor = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        match parts.next() {
            None => {}
            Some(patch) if patch.parse::<u32>().is_ok() && parts.next().is_none() => {}
            Some(_) => return Err(bad()),
        }
        Ok(Version { major, minor })
    }
}

/// A tool hvkvm exports to, with its version floor and default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tool {
    /// QEMU (`-cpu` properties); also what a Proxmox `args: -cpu` line runs on.
    Qemu,
    /// libvirt (domain XML elements).
    Libvirt,
    /// KubeVirt (`kubevirt.io/v1` fields).
    Kubevirt,
}

impl Tool {
    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Tool::Qemu => "QEMU",
            Tool::Libvirt => "libvirt",
            Tool::Kubevirt => "KubeVirt",
        }
    }

    /// The oldest release hvkvm can export for: the oldest one its version data was checked
    /// against (QEMU 5.2 and libvirt 7.0.0 as Debian 11 packages them; KubeVirt v0.48.0, the
    /// oldest tag of the kubevirt.io/api module).
    pub fn oldest(self) -> Version {
        match self {
            Tool::Qemu => Version::new(5, 2),
            Tool::Libvirt => Version::new(7, 0),
            Tool::Kubevirt => Version::new(0, 48),
        }
    }

    /// The default target (see the module documentation for why).
    pub fn default_target(self) -> Version {
        match self {
            Tool::Qemu => Version::new(6, 2),
            Tool::Libvirt => Version::new(8, 0),
            Tool::Kubevirt => Version::new(1, 7),
        }
    }
}

impl fmt::Display for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A target version older than hvkvm's version data reaches.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{tool} {version} is older than {oldest}, the oldest {tool} release hvkvm knows which \
     properties exist in; give --{flag}-version {oldest} or newer"
)]
pub struct TooOld {
    /// The tool.
    pub tool: Tool,
    /// What was asked for.
    pub version: Version,
    /// The floor.
    pub oldest: Version,
    /// The option's stem (`qemu`, `libvirt`, `kubevirt`).
    pub flag: &'static str,
}

/// The versions an export is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Targets {
    /// QEMU (formats `qemu` and `proxmox`).
    pub qemu: Version,
    /// libvirt (format `libvirt`).
    pub libvirt: Version,
    /// KubeVirt (format `kubevirt`).
    pub kubevirt: Version,
}

impl Default for Targets {
    fn default() -> Targets {
        Targets {
            qemu: Tool::Qemu.default_target(),
            libvirt: Tool::Libvirt.default_target(),
            kubevirt: Tool::Kubevirt.default_target(),
        }
    }
}

impl Targets {
    /// Refuses versions below the floors.
    pub fn check(&self) -> Result<(), TooOld> {
        for (tool, version, flag) in [
            (Tool::Qemu, self.qemu, "qemu"),
            (Tool::Libvirt, self.libvirt, "libvirt"),
            (Tool::Kubevirt, self.kubevirt, "kubevirt"),
        ] {
            if version < tool.oldest() {
                return Err(TooOld {
                    tool,
                    version,
                    oldest: tool.oldest(),
                    flag,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order() {
        assert_eq!("7.2".parse(), Ok(Version::new(7, 2)));
        assert_eq!("7.2.22".parse(), Ok(Version::new(7, 2)));
        assert_eq!("v1.8".parse(), Ok(Version::new(1, 8)));
        assert!(Version::new(10, 0) > Version::new(9, 2));
        assert!(Version::new(6, 2) < Version::new(6, 10));
        for bad in ["", "7", "7.", "seven.two", "7.2.x", "7.2.1.0", "-1.0"] {
            let err = bad.parse::<Version>().unwrap_err().to_string();
            assert!(err.contains("MAJOR.MINOR"), "{bad}: {err}");
        }
    }

    #[test]
    fn defaults_are_within_the_floors() {
        assert_eq!(Targets::default().check(), Ok(()));
        let old = Targets {
            qemu: Version::new(4, 2),
            ..Targets::default()
        };
        let err = old.check().unwrap_err().to_string();
        assert!(err.contains("--qemu-version 5.2"), "{err}");
    }
}
