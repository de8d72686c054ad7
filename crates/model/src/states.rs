//! Lifecycle states and the transition table. The table is the single source
//! of truth: the engine asks `can_become` before every change and refuses an
//! illegal one; `docs/states.md` is the same table for operators.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! named_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        #[repr(u8)]
        pub enum $name { $($(#[$vdoc])* $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!("unknown {} {other:?}; expected one of: {}",
                        stringify!($name), [$($text),+].join(", "))),
                }
            }
        }
    };
}

named_enum!(
    /// Lifecycle of one instance (one server of a service).
    InstanceState {
        /// Being created by its provider; no heartbeat seen yet.
        Installing => "installing",
        /// Heartbeating and healthy.
        Available => "available",
        /// Silent for longer than `uncertain_after`: we do not know. Not dead.
        Uncertain => "uncertain",
        /// Corroborated down: a probe failed, its follower's stream broke,
        /// the provider says it is gone, or silent past `presumed_dead_after`.
        Unavailable => "unavailable",
        /// A restart remedy is running.
        Restarting => "restarting",
        /// Being moved to a new image in place of a rolling replacement
        /// (reserved for engines that upgrade in place).
        Upgrading => "upgrading",
        /// Leaving service: stopped, no longer serves.
        Retiring => "retiring",
        /// Stopped; its data is still there.
        Retired => "retired",
        /// Its logs and data are kept for forensics; no compute.
        Archived => "archived",
        /// Gone for good. Terminal.
        Terminated => "terminated",
    }
);

named_enum!(
    /// Coarse state of a service, derived from its instances and its remedy.
    ServiceState {
        /// Its first instances are being built.
        Provisioning => "provisioning",
        /// A writable primary and every planned follower available.
        Available => "available",
        /// Writable, but a follower is missing, uncertain or being rebuilt.
        Degraded => "degraded",
        /// The primary is uncertain: writes may be failing, we are finding out.
        Uncertain => "uncertain",
        /// The primary is down and a remedy (failover, restart, rebuild) runs.
        Recovering => "recovering",
        /// The primary is down and no remedy can run (brake, budget, or a
        /// remedy failed): a human is needed or evidence is awaited.
        Unavailable => "unavailable",
        /// Deleted by its owner; instances are being retired.
        Deleting => "deleting",
        /// Every instance terminated. Terminal.
        Deleted => "deleted",
    }
);

impl InstanceState {
    /// The transition table. Any pair not listed is illegal.
    pub fn can_become(self, to: InstanceState) -> bool {
        use InstanceState::*;
        matches!(
            (self, to),
            (Installing, Available)
                | (Installing, Unavailable)
                | (Installing, Retiring)
                | (Available, Uncertain)
                | (Available, Unavailable)
                | (Available, Restarting)
                | (Available, Upgrading)
                | (Available, Retiring)
                | (Uncertain, Available)
                | (Uncertain, Unavailable)
                | (Uncertain, Retiring)
                | (Unavailable, Available)
                | (Unavailable, Restarting)
                | (Unavailable, Retiring)
                | (Restarting, Available)
                | (Restarting, Unavailable)
                | (Restarting, Retiring)
                | (Upgrading, Available)
                | (Upgrading, Unavailable)
                | (Upgrading, Retiring)
                | (Retiring, Retired)
                | (Retired, Archived)
                | (Archived, Terminated)
        )
    }

    /// States in which the instance is still a member serving (or meant to
    /// serve) its service; the rest are on their way out.
    pub fn is_member(self) -> bool {
        !matches!(
            self,
            InstanceState::Retiring | InstanceState::Retired | InstanceState::Archived | InstanceState::Terminated
        )
    }

    /// States that expect heartbeats, so silence is held against them.
    pub fn expects_heartbeats(self) -> bool {
        matches!(self, InstanceState::Available | InstanceState::Uncertain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminated_is_terminal_and_nothing_returns_from_retirement() {
        for &to in InstanceState::ALL {
            assert!(!InstanceState::Terminated.can_become(to));
            if to.is_member() {
                assert!(!InstanceState::Retiring.can_become(to));
                assert!(!InstanceState::Retired.can_become(to));
                assert!(!InstanceState::Archived.can_become(to));
            }
        }
    }

    #[test]
    fn every_state_parses_from_its_name() {
        for &s in InstanceState::ALL {
            assert_eq!(s.as_str().parse::<InstanceState>().unwrap(), s);
        }
        for &s in ServiceState::ALL {
            assert_eq!(s.as_str().parse::<ServiceState>().unwrap(), s);
        }
        assert!("dead".parse::<InstanceState>().unwrap_err().contains("uncertain"));
    }

    #[test]
    fn no_state_becomes_itself() {
        for &s in InstanceState::ALL {
            assert!(!s.can_become(s), "{s}");
        }
    }
}
