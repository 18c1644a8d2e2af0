//! Errors of the model. Every message names the problem and how to fix it.
//!
//! Layer 4: depends on [`crate::flags`] and [`crate::backend`] (for the names in messages).

use crate::backend::Backend;
use crate::flags::{Enlightenment, UnknownFlag};

/// Joins flag names as `hv-synic and hv-time` (for prose).
pub(crate) fn and_list(flags: &[Enlightenment]) -> String {
    let names: Vec<&str> = flags.iter().map(|f| f.name()).collect();
    match names.as_slice() {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// Joins flag names as `hv-synic,hv-time` (for a `--hv` fix).
pub(crate) fn comma_list(flags: &[Enlightenment]) -> String {
    flags.iter().map(|f| f.name()).collect::<Vec<_>>().join(",")
}

fn did_you_mean(s: &Option<&'static str>) -> String {
    s.map(|n| format!("; did you mean '{n}'?"))
        .unwrap_or_default()
}

impl From<UnknownFlag> for ModelError {
    fn from(e: UnknownFlag) -> ModelError {
        ModelError::UnknownFlag {
            name: e.name,
            suggestion: e.suggestion,
        }
    }
}

/// What can go wrong while parsing, validating or resolving a Hyper-V selection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// A name that is no flag.
    #[error(
        "unknown Hyper-V flag '{name}'{}; `hvkvm hv flags` lists every flag and its spellings",
        did_you_mean(suggestion)
    )]
    UnknownFlag {
        /// What the user wrote.
        name: String,
        /// Closest known name.
        suggestion: Option<&'static str>,
    },
    /// A flag that needs `=VALUE` had none.
    #[error("{flag} needs a value, e.g. {example}")]
    MissingValue {
        /// The flag.
        flag: Enlightenment,
        /// A correct spelling.
        example: &'static str,
    },
    /// A value that does not fit the flag.
    #[error("invalid value '{value}' for {flag}: {why}")]
    BadValue {
        /// The flag.
        flag: Enlightenment,
        /// What the user wrote.
        value: String,
        /// What is wrong and what would be right.
        why: String,
    },
    /// An item of a `--hv` list that is not `name`, `+name`, `-name` or `name=value`.
    #[error("cannot parse '{item}' in the Hyper-V list: {why}")]
    BadSyntax {
        /// The item.
        item: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A profile name that does not exist.
    #[error("unknown profile '{name}'; known profiles: {known}")]
    UnknownProfile {
        /// What the user wrote.
        name: String,
        /// Comma-separated list of profiles.
        known: String,
    },
    /// A requested flag lacks flags it depends on (QEMU refuses to start in this case).
    #[error("{flag} requires {}: add {}", and_list(missing), comma_list(missing))]
    MissingDependency {
        /// The requested flag.
        flag: Enlightenment,
        /// The dependencies that were not requested.
        missing: Vec<Enlightenment>,
    },
    /// A requested flag depends on a flag the request turns off explicitly.
    #[error(
        "{flag} requires {dependency}, but the request turns {dependency} off: drop \
         {dependency}=off or drop {flag}"
    )]
    DependencyDisabled {
        /// The requested flag.
        flag: Enlightenment,
        /// The dependency that was turned off.
        dependency: Enlightenment,
    },
    /// A requested flag depends on a flag that had to be turned off (host, backend, policy).
    #[error("{flag} requires {dependency}, which is off: {reason}; drop {flag} or fix that")]
    DependencyUnavailable {
        /// The requested flag.
        flag: Enlightenment,
        /// The dependency.
        dependency: Enlightenment,
        /// Why the dependency is off.
        reason: String,
    },
    /// A requested flag cannot be offered on this host/backend.
    #[error(
        "{flag} is not available with the {backend} backend on this host: {reason}; drop \
         {flag}{}",
        if *backend == Backend::User { " or use --backend kernel" } else { "" }
    )]
    Unavailable {
        /// The flag.
        flag: Enlightenment,
        /// The backend.
        backend: Backend,
        /// Why, and what to do.
        reason: String,
    },
    /// Migration was required but an explicitly requested setting prevents it.
    #[error("the guest must stay migratable, but {flag} prevents it: {reason}")]
    MigrationBlocked {
        /// The blocking flag.
        flag: Enlightenment,
        /// Why, and what to do.
        reason: String,
    },
    /// Something needs a probed host description.
    #[error(
        "{what} needs a host description: pass --host FILE with the output of `hvkvm probe --json`"
    )]
    HostRequired {
        /// What needed it.
        what: String,
    },
    /// Two different TSC frequencies were given.
    #[error("conflicting TSC frequencies: {first} Hz and {second} Hz; give tsc-frequency once")]
    ConflictingTsc {
        /// One value.
        first: u64,
        /// The other value.
        second: u64,
    },
}
