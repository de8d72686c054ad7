//! Rollouts: services moved onto an image by replacement, in waves. The
//! record of a rollout and of each service's progress in it are durable,
//! written in the same commit as the engine's decisions, so a restarted
//! control plane resumes a rollout and never moves a service twice.

use crate::{EngineKind, ImageId, RolloutId, ServiceId, Timestamp};
use serde::{Deserialize, Serialize};

/// Which services a rollout moves: every field given must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineKind>,
    /// Services whose image (or an instance's) is this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub image: Option<ImageId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
    /// One service label written `key=value`: the same as `labels` with
    /// that one pair (both may be given; every pair must match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Services carrying every one of these labels (Kubernetes' `matchLabels`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<crate::Labels>,
}

impl Selector {
    /// Every label pair the selector asks for (`labels` and `label` together).
    pub fn wanted_labels(&self) -> Result<crate::Labels, String> {
        let mut wanted = self.labels.clone().unwrap_or_default();
        crate::validate_labels(&wanted).map_err(|e| format!("selector: {e}"))?;
        if let Some(text) = &self.label {
            let (k, v) = crate::parse_label(text).map_err(|e| format!("selector: {e}"))?;
            if wanted.get(&k).is_some_and(|have| *have != v) {
                return Err(format!("selector: label {k:?} is asked with two values: nothing can match"));
            }
            wanted.insert(k, v);
        }
        Ok(wanted)
    }
}

/// What `POST /v1/rollouts` asks for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    #[schema(value_type = String)]
    pub to_image: ImageId,
    #[serde(default)]
    pub selector: Selector,
    /// Cumulative percentages of the selected services, increasing, the
    /// last 100. Default 1, 10, 50, 100.
    #[serde(default = "default_waves")]
    pub waves: Vec<u8>,
    /// A moved service must stay healthy this long before it counts as
    /// done (the health gate between waves). Default 60.
    #[serde(default = "default_soak_seconds")]
    pub soak_seconds: u64,
    /// Failed services in one wave that pause the rollout. Default 1.
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    /// After this, services are moved outside their maintenance windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub required_by: Option<Timestamp>,
}

/// Heroku's and the default waves: a canary, then widening.
pub fn default_waves() -> Vec<u8> {
    vec![1, 10, 50, 100]
}
fn default_soak_seconds() -> u64 {
    60
}
fn default_max_failures() -> u32 {
    1
}

impl RolloutSpec {
    /// Checks what can be checked without the fleet.
    pub fn validate(&self) -> Result<(), String> {
        if self.waves.is_empty() {
            return Err("waves must name at least one percentage (the last one 100)".into());
        }
        if self.waves.windows(2).any(|w| w[0] >= w[1]) || self.waves[0] == 0 {
            return Err(format!("waves {:?} must be increasing percentages above 0", self.waves));
        }
        if self.waves.last() != Some(&100) {
            return Err(format!("the last wave must be 100 (every selected service), not {:?}", self.waves.last()));
        }
        if self.max_failures == 0 {
            return Err("max_failures must be at least 1".into());
        }
        if self.soak_seconds > 7 * 24 * 3600 {
            return Err("soak_seconds must be at most a week".into());
        }
        self.selector.wanted_labels()?;
        if self.selector.names.as_ref().is_some_and(|n| n.is_empty()) {
            return Err("selector.names is empty: name at least one service, or leave it out".into());
        }
        Ok(())
    }

    /// How many of `total` services waves `0..=wave` cover together.
    pub fn wave_end(&self, wave: usize, total: usize) -> usize {
        let pct = self.waves.get(wave).copied().unwrap_or(100) as usize;
        (total * pct).div_ceil(100).min(total)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Created; starts on the engine's next tick.
    Pending,
    Running,
    /// By a person, or by itself when a wave spent its failure budget.
    Paused,
    /// Every selected service is on the image.
    Succeeded,
    /// Stopped by a person; services already moved stay moved.
    Aborted,
    /// Finished with services that could not be moved.
    Failed,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Pending => "pending",
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Succeeded => "succeeded",
            RolloutState::Aborted => "aborted",
            RolloutState::Failed => "failed",
        }
    }
    pub fn is_finished(self) -> bool {
        matches!(self, RolloutState::Succeeded | RolloutState::Aborted | RolloutState::Failed)
    }
}

/// The durable header of a rollout, with its counters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RolloutRecord {
    pub id: RolloutId,
    pub spec: RolloutSpec,
    pub state: RolloutState,
    /// Why it is paused, failed or aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The wave under way (0-based index into `spec.waves`).
    pub wave: u32,
    /// Failures in the current wave since it started or was resumed.
    pub wave_failed: u32,
    pub total: u64,
    pub done: u64,
    pub failed: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Sum of the move times of `done` services (for the ETA).
    #[serde(default)]
    pub moved_micros: i64,
    /// 0: run whole by one engine (a fleet of one shard, or a resize).
    /// More: the fleet is split into this many shards, and each shard's
    /// holder moves its own services (a part of the rollout) while shard
    /// 0's holder keeps this record: it opens each wave once every shard
    /// closed the one before, pauses on the failures summed over the
    /// shards, and its counters are the shards' sums.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub parts: u16,
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

/// Where one service is in a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MemberPhase {
    /// Not started.
    Waiting,
    /// Being moved: new members built, switched over, old ones retired.
    Moving,
    /// On the image; must stay healthy for the soak time.
    Soaking,
    /// Moved and soaked: never moved again.
    Done,
    /// Could not be moved (or failed its health gate): never tried again
    /// by this rollout.
    Failed,
}

impl MemberPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberPhase::Waiting => "waiting",
            MemberPhase::Moving => "moving",
            MemberPhase::Soaking => "soaking",
            MemberPhase::Done => "done",
            MemberPhase::Failed => "failed",
        }
    }
    pub fn is_finished(self) -> bool {
        matches!(self, MemberPhase::Done | MemberPhase::Failed)
    }
}

/// One service's durable progress in a rollout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RolloutMember {
    pub rollout: RolloutId,
    pub service: ServiceId,
    pub name: String,
    /// Its position in the rollout's order (waves take a prefix).
    pub position: u64,
    pub phase: MemberPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When it reached the image (soak starts) or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// When its owners were told of the move (a `maintenance_scheduled`
    /// event): told once per service per rollout, restarts included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announced_at: Option<Timestamp>,
}

/// What the API shows of a rollout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RolloutView {
    pub id: RolloutId,
    pub state: RolloutState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[schema(value_type = String)]
    pub to_image: ImageId,
    pub total: u64,
    pub done: u64,
    pub failed: u64,
    pub remaining: u64,
    /// Services being moved or soaking now.
    pub moving: u64,
    /// The wave under way, 1-based, and how many there are.
    pub wave: u32,
    pub waves: Vec<u8>,
    /// Estimated seconds to the end (None until one service is moved).
    pub eta_seconds: Option<u64>,
    pub spec: RolloutSpec,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}
