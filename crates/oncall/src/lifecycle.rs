//! The software lifecycle board: every component (a piece of software the
//! platform runs or depends on) has an owner team, a stage, links, and the
//! services and images that depend on it. A component moves one stage at a
//! time through a gate whose checklist items carry evidence: automatic
//! where Drover knows (on-call, alert routing, the services' checks and
//! backups, what still depends on it), attested by a person otherwise. A
//! move is refused while a required item is open. Pure: the server gathers
//! the facts and stores the components.

use drover_model::Timestamp;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Prototype,
    Development,
    Production,
    Deprecated,
    Deactivated,
    Sunset,
}

impl Stage {
    pub const ALL: [Stage; 6] =
        [Stage::Prototype, Stage::Development, Stage::Production, Stage::Deprecated, Stage::Deactivated, Stage::Sunset];
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Prototype => "prototype",
            Stage::Development => "development",
            Stage::Production => "production",
            Stage::Deprecated => "deprecated",
            Stage::Deactivated => "deactivated",
            Stage::Sunset => "sunset",
        }
    }
    /// A Backstage `spec.lifecycle`: ours by name, and Backstage's own
    /// `experimental` as a prototype.
    pub fn from_lifecycle(text: &str) -> Option<Stage> {
        let t = text.trim().to_ascii_lowercase();
        if t == "experimental" {
            return Some(Stage::Prototype);
        }
        Stage::ALL.into_iter().find(|s| s.as_str() == t)
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// A link of a component; `kind` says what it is (`repository`, `docs`,
/// `playbook`, `dashboard`, or anything else).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Link {
    pub title: String,
    pub url: String,
    #[serde(default)]
    pub kind: String,
}

/// A person's word for a checklist item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Attestation {
    pub item: String,
    pub by: String,
    pub at: Timestamp,
    #[serde(default)]
    pub note: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StageMove {
    pub from: Stage,
    pub to: Stage,
    pub at: Timestamp,
    pub by: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Component {
    pub name: String,
    /// The owner team (as in `oncall.toml`).
    pub owner: String,
    #[serde(default)]
    pub description: String,
    pub stage: Stage,
    #[serde(default)]
    pub links: Vec<Link>,
    /// Debian packages that are this component: images whose manifest
    /// holds one (binary or source name) depend on it, and so do the
    /// services on those images. Services labelled `component=<name>` too.
    #[serde(default)]
    pub packages: Vec<String>,
    #[serde(default)]
    pub attestations: Vec<Attestation>,
    #[serde(default)]
    pub history: Vec<StageMove>,
}

/// Whether Drover checks an item itself or a person attests it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Evidence {
    Automatic,
    Attested,
}

/// One item of a gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Item {
    pub key: &'static str,
    pub text: &'static str,
    pub evidence: Evidence,
}

const fn auto(key: &'static str, text: &'static str) -> Item {
    Item { key, text, evidence: Evidence::Automatic }
}
const fn attested(key: &'static str, text: &'static str) -> Item {
    Item { key, text, evidence: Evidence::Attested }
}

const DEVELOPMENT: &[Item] = &[auto("repository", "code is visible in the repository (a link of kind repository)")];
const PRODUCTION: &[Item] = &[
    auto("docs", "ops docs and a playbook (links of kind docs and playbook)"),
    attested("logging", "logging: its logs reach the platform's log store"),
    auto("alerting", "alerting: alerts route to the owner team (the team is in oncall.toml)"),
    auto("oncall", "on-call set up: the owner team has a schedule with people"),
    auto("checks", "the checks of the services that depend on it are ok"),
    auto("backups", "the backups of the services that depend on it are verified"),
    attested("runbook", "a runbook exists for its known failures"),
];
const DEPRECATED: &[Item] = &[attested("successor", "a successor or migration path is named and announced")];
const DEACTIVATED: &[Item] = &[auto("no_services", "no service depends on it any more")];
const SUNSET: &[Item] = &[
    auto("nothing_depends", "nothing depends on it: no service and no image"),
    attested("celebrated", "the sunset is announced, and celebrated"),
];

/// The checklist a component must pass to enter `to`.
pub fn gate(to: Stage) -> &'static [Item] {
    match to {
        Stage::Prototype => &[],
        Stage::Development => DEVELOPMENT,
        Stage::Production => PRODUCTION,
        Stage::Deprecated => DEPRECATED,
        Stage::Deactivated => DEACTIVATED,
        Stage::Sunset => SUNSET,
    }
}

/// What Drover knows about a component's world, gathered by the server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// The owner team is in `oncall.toml` (its alerts route to it).
    pub team_known: bool,
    /// The owner team has a schedule with someone on it.
    pub team_on_call: bool,
    /// Services that depend on it (names).
    pub services: Vec<String>,
    /// Of those, the ones whose checks are not all ok.
    pub services_not_ok: Vec<String>,
    /// Of those, the ones without a verified backup.
    pub backups_unverified: Vec<String>,
    /// Images that hold one of its packages (ids).
    pub images: Vec<String>,
}

/// One item's state for a move.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ItemState {
    pub item: String,
    pub text: String,
    pub evidence: Evidence,
    pub done: bool,
    /// Why it is done or open, as people read it.
    pub why: String,
}

fn list(names: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut s = names.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    s
}

/// Every item of the gate into `to`, with its evidence.
pub fn checklist(c: &Component, to: Stage, facts: &Facts) -> Vec<ItemState> {
    let has_link = |kind: &str| c.links.iter().any(|l| l.kind.eq_ignore_ascii_case(kind));
    gate(to)
        .iter()
        .map(|item| {
            let (done, why) = match (item.evidence, item.key) {
                (Evidence::Attested, key) => match c.attestations.iter().rev().find(|a| a.item == key) {
                    Some(a) => (true, format!("attested by {} at {}", a.by, a.at)),
                    None => (false, "nobody has attested it yet".into()),
                },
                (_, "repository") => (
                    has_link("repository"),
                    if has_link("repository") { "linked" } else { "no repository link" }.into(),
                ),
                (_, "docs") => match (has_link("docs"), has_link("playbook")) {
                    (true, true) => (true, "docs and playbook linked".into()),
                    (d, p) => (
                        false,
                        format!(
                            "missing: {}",
                            [(!d).then_some("docs"), (!p).then_some("playbook")]
                                .into_iter()
                                .flatten()
                                .collect::<Vec<_>>()
                                .join(" and ")
                        ),
                    ),
                },
                (_, "alerting") => (
                    facts.team_known,
                    if facts.team_known {
                        format!("team {} is in oncall.toml", c.owner)
                    } else {
                        format!("team {:?} is not in oncall.toml", c.owner)
                    },
                ),
                (_, "oncall") => (
                    facts.team_on_call,
                    if facts.team_on_call {
                        "someone is on call".into()
                    } else {
                        format!("team {:?} has nobody on call", c.owner)
                    },
                ),
                (_, "checks") => match (facts.services.is_empty(), facts.services_not_ok.is_empty()) {
                    (true, _) => (true, "no service depends on it yet".into()),
                    (false, true) => (true, format!("{} services, all checks ok", facts.services.len())),
                    (false, false) => (false, format!("checks not ok: {}", list(&facts.services_not_ok))),
                },
                (_, "backups") => match (facts.services.is_empty(), facts.backups_unverified.is_empty()) {
                    (true, _) => (true, "no service depends on it yet".into()),
                    (false, true) => (true, format!("{} services, backups verified", facts.services.len())),
                    (false, false) => (false, format!("backups not verified: {}", list(&facts.backups_unverified))),
                },
                (_, "no_services") => (
                    facts.services.is_empty(),
                    if facts.services.is_empty() {
                        "no service depends on it".into()
                    } else {
                        format!("still used by {}", list(&facts.services))
                    },
                ),
                (_, "nothing_depends") => match (facts.services.is_empty(), facts.images.is_empty()) {
                    (true, true) => (true, "nothing depends on it".into()),
                    _ => (
                        false,
                        format!(
                            "still used by services [{}] and images [{}]",
                            list(&facts.services),
                            list(&facts.images)
                        ),
                    ),
                },
                (_, other) => (false, format!("no evidence known for {other:?}")),
            };
            ItemState { item: item.key.into(), text: item.text.into(), evidence: item.evidence, done, why }
        })
        .collect()
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MoveError {
    #[error("a component moves one stage at a time, forward or back: {from} → {to} is not one step")]
    NotOneStep { from: &'static str, to: &'static str },
    #[error("the gate into {to} is not met; open: {}", open.iter().map(|i| i.item.as_str()).collect::<Vec<_>>().join(", "))]
    GateOpen { to: &'static str, open: Vec<ItemState> },
}

/// Moves `c` to `to` when the gate holds: one step forward (through the
/// gate), or one step back (no gate: going back is always allowed).
pub fn move_stage(c: &mut Component, to: Stage, facts: &Facts, by: &str, now: Timestamp) -> Result<(), MoveError> {
    let (from, f, t) = (c.stage, c.stage.index(), to.index());
    if !(t == f + 1 || t + 1 == f) {
        return Err(MoveError::NotOneStep { from: from.as_str(), to: to.as_str() });
    }
    if t > f {
        let open: Vec<ItemState> = checklist(c, to, facts).into_iter().filter(|i| !i.done).collect();
        if !open.is_empty() {
            return Err(MoveError::GateOpen { to: to.as_str(), open });
        }
    }
    c.stage = to;
    c.history.push(StageMove { from, to, at: now, by: by.to_string() });
    Ok(())
}

/// Whether `item` is an attested item of some gate.
pub fn is_attestable(item: &str) -> bool {
    Stage::ALL.iter().flat_map(|s| gate(*s)).any(|i| i.key == item && i.evidence == Evidence::Attested)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component() -> Component {
        Component {
            name: "pgbouncer".into(),
            owner: "platform".into(),
            description: String::new(),
            stage: Stage::Development,
            links: vec![Link {
                title: "code".into(),
                url: "https://git.example/pgbouncer".into(),
                kind: "repository".into(),
            }],
            packages: vec!["pgbouncer".into()],
            attestations: vec![],
            history: vec![],
        }
    }

    #[test]
    fn a_move_into_production_is_refused_with_what_is_open_and_passes_with_the_evidence() {
        let now = Timestamp(1_800_000_000_000_000);
        let mut c = component();
        let mut facts = Facts {
            team_known: true,
            team_on_call: false,
            services: vec!["db1".into()],
            services_not_ok: vec!["db1".into()],
            ..Default::default()
        };
        let Err(MoveError::GateOpen { open, .. }) = move_stage(&mut c, Stage::Production, &facts, "alice", now) else {
            panic!("refused")
        };
        let keys: Vec<&str> = open.iter().map(|i| i.item.as_str()).collect();
        assert_eq!(keys, ["docs", "logging", "oncall", "checks", "runbook"]);
        assert!(open[0].why.contains("docs and playbook"), "{:?}", open[0]);
        assert!(open[3].why.contains("db1"));
        assert_eq!(c.stage, Stage::Development, "nothing moved");
        // The evidence arrives: links, attestations, on-call, the checks.
        c.links.push(Link { title: "ops".into(), url: "https://docs.example/ops".into(), kind: "docs".into() });
        c.links.push(Link { title: "playbook".into(), url: "https://docs.example/pb".into(), kind: "playbook".into() });
        for item in ["logging", "runbook"] {
            assert!(is_attestable(item));
            c.attestations.push(Attestation { item: item.into(), by: "bob".into(), at: now, note: None });
        }
        facts.team_on_call = true;
        facts.services_not_ok.clear();
        move_stage(&mut c, Stage::Production, &facts, "alice", now).unwrap();
        assert_eq!(c.stage, Stage::Production);
        assert_eq!(c.history.len(), 1);
        assert!(!is_attestable("checks"), "automatic items are not attested");
    }

    #[test]
    fn stages_move_one_step_going_back_needs_no_gate_and_sunset_waits_for_every_dependent() {
        let now = Timestamp(0);
        let mut c = component();
        assert!(matches!(
            move_stage(&mut c, Stage::Deprecated, &Facts::default(), "a", now),
            Err(MoveError::NotOneStep { .. })
        ));
        move_stage(&mut c, Stage::Prototype, &Facts::default(), "a", now).unwrap();
        c.stage = Stage::Deactivated;
        let facts = Facts { images: vec!["sha256:1".into()], ..Default::default() };
        let Err(MoveError::GateOpen { open, .. }) = move_stage(&mut c, Stage::Sunset, &facts, "a", now) else {
            panic!("refused")
        };
        assert!(open.iter().any(|i| i.item == "nothing_depends" && i.why.contains("sha256:1")));
        assert_eq!(Stage::from_lifecycle("experimental"), Some(Stage::Prototype));
        assert_eq!(Stage::from_lifecycle("Production"), Some(Stage::Production));
        assert_eq!(Stage::from_lifecycle("retired"), None);
    }
}
