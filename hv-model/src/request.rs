//! A user's request: an optional profile plus explicit settings that override it.
//!
//! Layer 6: depends on [`crate::config`] and [`crate::profiles`].

use std::fmt;

use serde::Serialize;

use crate::config::HvConfig;
use crate::profiles::Profile;

/// A user's request: start from a profile (optional) and apply explicit overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HvRequest {
    /// Profile to start from; its flags are on "where possible" (off with a reason when the
    /// host cannot provide them).
    pub profile: Option<Profile>,
    /// Explicit settings; an explicit flag the host cannot provide is an error.
    pub overrides: HvConfig,
}

impl HvRequest {
    /// A request for a profile without overrides.
    pub fn from_profile(profile: Profile) -> HvRequest {
        HvRequest {
            profile: Some(profile),
            overrides: HvConfig::new(),
        }
    }

    /// A request without profile.
    pub fn from_config(overrides: HvConfig) -> HvRequest {
        HvRequest {
            profile: None,
            overrides,
        }
    }

    /// Whether it asks for nothing at all.
    pub fn is_empty(&self) -> bool {
        self.profile.is_none() && self.overrides.is_empty()
    }
}

impl fmt::Display for HvRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.profile, self.overrides.is_empty()) {
            (None, true) => f.write_str("(nothing)"),
            (None, false) => write!(f, "--hv {}", self.overrides),
            (Some(p), true) => write!(f, "--profile {p}"),
            (Some(p), false) => write!(f, "--profile {p} --hv {}", self.overrides),
        }
    }
}
