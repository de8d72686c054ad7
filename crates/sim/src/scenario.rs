//! Scenario files: TOML, documented in docs/scenarios.md. The built-in ones
//! are embedded so `--scenario zone-outage` works from any directory.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use std::path::Path;

/// The scenarios shipped in `scenarios/`, by name.
pub const BUILT_IN: &[(&str, &str)] = &[
    ("zone-outage", include_str!("../../../scenarios/zone-outage.toml")),
    ("object-store-outage", include_str!("../../../scenarios/object-store-outage.toml")),
    ("kernel-cve-roll", include_str!("../../../scenarios/kernel-cve-roll.toml")),
    ("control-plane-partition", include_str!("../../../scenarios/control-plane-partition.toml")),
    ("flapping-network", include_str!("../../../scenarios/flapping-network.toml")),
    ("steady-week", include_str!("../../../scenarios/steady-week.toml")),
    ("bad-image-roll", include_str!("../../../scenarios/bad-image-roll.toml")),
    ("mixed-fleet", include_str!("../../../scenarios/mixed-fleet.toml")),
    ("kafka-fleet", include_str!("../../../scenarios/kafka-fleet.toml")),
    ("control-plane-nodes", include_str!("../../../scenarios/control-plane-nodes.toml")),
];

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("no scenario named {name:?}: built in are {}; or give a path to a .toml file", BUILT_IN.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "))]
    Unknown { name: String },
    #[error("cannot read scenario file {file}: {message}")]
    Read { file: String, message: String },
    #[error("scenario file {file} does not parse: {message}")]
    Parse { file: String, message: String },
    #[error("scenario file {file}: {message}")]
    Invalid { file: String, message: String },
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    /// Simulated time after the fleet is built.
    #[serde(default = "default_hours")]
    pub hours: f64,
    #[serde(default)]
    pub fleet: FleetSpec,
    #[serde(default)]
    pub timing: Timing,
    #[serde(default)]
    pub provider: ProviderSpec,
    #[serde(default)]
    pub background: Background,
    #[serde(default)]
    pub people: PeopleSpec,
    /// Control-plane nodes that die, pause and return, run on the real
    /// shard and lease logic beside the fleet (`crate::control_plane`).
    #[serde(default)]
    pub control_plane: Option<crate::control_plane::ControlPlaneSpec>,
    /// As written: one flat table per fault, so a parse error names its key.
    #[serde(default, rename = "fault")]
    raw_faults: Vec<RawFault>,
    /// The faults of this run: times and zones drawn from the seed within
    /// what the file allows (`Scenario::drawn`); after parsing, each range
    /// at its low end and `zone = "any"` at the first zone.
    #[serde(skip)]
    pub faults: Vec<FaultSpec>,
}

/// Hours as a number, or a range `[lo, hi]` a run draws from (swarm testing).
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(untagged)]
enum Hours {
    At(f64),
    Range([f64; 2]),
}

impl Hours {
    fn draw(self, rng: Option<&mut ChaCha8Rng>) -> Result<f64, String> {
        let (lo, hi) = match self {
            Hours::At(h) => (h, h),
            Hours::Range([a, b]) => (a.min(b), a.max(b)),
        };
        if !lo.is_finite() || !hi.is_finite() || lo < 0.0 {
            return Err("hours must be finite and not negative".into());
        }
        Ok(match rng {
            Some(rng) if hi > lo => rng.random_range(lo..=hi),
            _ => lo,
        })
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    kind: String,
    at_hours: Hours,
    duration_hours: Option<Hours>,
    zone: Option<String>,
    down_secs: Option<[f64; 2]>,
    up_secs: Option<[f64; 2]>,
    share: Option<f64>,
    extra_lag_bytes: Option<u64>,
    name: Option<String>,
}

impl RawFault {
    /// The fault of one run; `rng` draws the ranges and `zone = "any"`
    /// (without it: the low ends and the first zone).
    fn to_spec(&self, n: usize, zones: &[String], mut rng: Option<&mut ChaCha8Rng>) -> Result<FaultSpec, String> {
        let kind = self.kind.clone();
        let need = |field: &str| format!("fault {n} ({kind}): missing field `{field}`");
        let bad = |e: String| format!("fault {n} ({kind}): {e}");
        let at_hours = self.at_hours.draw(rng.as_deref_mut()).map_err(bad)?;
        let duration_hours = self.duration_hours.map(|d| d.draw(rng.as_deref_mut()).map_err(bad)).transpose()?;
        let zone_pick = match (self.zone.as_deref(), rng) {
            (Some("any"), Some(rng)) if !zones.is_empty() => Some(zones[rng.random_range(0..zones.len())].clone()),
            (Some("any"), _) => zones.first().cloned(),
            (z, _) => z.map(str::to_string),
        };
        let duration_hours = || duration_hours.ok_or_else(|| need("duration_hours"));
        let zone = || zone_pick.clone().ok_or_else(|| need("zone"));
        Ok(match self.kind.as_str() {
            "zone-loss" => FaultSpec::ZoneLoss { zone: zone()?, at_hours, duration_hours: duration_hours()? },
            "network-cut" => FaultSpec::NetworkCut { zone: zone()?, at_hours, duration_hours: duration_hours()? },
            "flap" => FaultSpec::Flap {
                zone: zone()?,
                at_hours,
                duration_hours: duration_hours()?,
                down_secs: self.down_secs.ok_or_else(|| need("down_secs"))?,
                up_secs: self.up_secs.ok_or_else(|| need("up_secs"))?,
            },
            "slow-disks" => FaultSpec::SlowDisks {
                share: self.share.ok_or_else(|| need("share"))?,
                at_hours,
                duration_hours: duration_hours()?,
                extra_lag_bytes: self.extra_lag_bytes.ok_or_else(|| need("extra_lag_bytes"))?,
            },
            "backup-store-outage" => FaultSpec::BackupStoreOutage { at_hours, duration_hours: duration_hours()? },
            "pager-outage" => FaultSpec::PagerOutage { at_hours, duration_hours: duration_hours()? },
            "advisory" => FaultSpec::Advisory {
                at_hours,
                name: self.name.clone().ok_or_else(|| need("name"))?,
                bad_share: self.share.unwrap_or(0.0).clamp(0.0, 1.0),
            },
            other => {
                return Err(format!(
                    "fault {n}: unknown `kind` {other:?}; one of zone-loss, network-cut, flap, slow-disks, \
                     backup-store-outage, pager-outage, advisory"
                ))
            }
        })
    }
}

fn default_hours() -> f64 {
    24.0
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetSpec {
    pub zones: Vec<String>,
    /// Share of services with two followers; the rest have one.
    pub two_follower_share: f64,
    /// Share of services whose plan is synchronous.
    pub sync_share: f64,
    pub instances_per_host: u32,
    /// Primary write rate, bytes per second, drawn uniformly.
    pub write_bytes_per_sec: [u32; 2],
    /// Steady lag of an asynchronous follower, bytes, drawn uniformly.
    pub async_lag_bytes: [u32; 2],
    /// Share of services that run Redis; the rest run PostgreSQL. 0 (the
    /// default) draws nothing, so a PostgreSQL-only scenario's runs are
    /// exactly what they were before Redis existed.
    pub redis_share: f64,
    /// Share of services that run Kafka (three peer brokers each, the
    /// engine's default); `redis_share + kafka_share` is at most 1. 0 (the
    /// default) draws nothing, so a fleet without Kafka runs exactly as
    /// before Kafka existed.
    pub kafka_share: f64,
}

impl Default for FleetSpec {
    fn default() -> Self {
        FleetSpec {
            zones: vec!["zone-a".into(), "zone-b".into(), "zone-c".into()],
            two_follower_share: 0.2,
            sync_share: 0.7,
            instances_per_host: 32,
            write_bytes_per_sec: [1_000, 200_000],
            async_lag_bytes: [0, 2_000_000],
            redis_share: 0.0,
            kafka_share: 0.0,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timing {
    pub uncertain_after_secs: f64,
    pub presumed_dead_after_secs: f64,
    pub probe_interval_secs: f64,
    pub action_timeout_secs: f64,
    pub install_timeout_secs: f64,
    /// How often each zone's collector renews its lease.
    pub lease_every_secs: f64,
    /// Destructive remedies at once per zone, per 1,000 services (at least
    /// 16, the engine default). An operator of a million services runs
    /// thousands of rebuilds at once; 16 would take weeks after a zone loss.
    pub zone_budget_per_1000_services: f64,
    /// Scheduled base backups per service (0: none; they still run on
    /// demand). The engine's default is daily.
    pub backup_interval_hours: f64,
    /// Scheduled restore tests per service (0: none). Default weekly.
    pub verify_interval_hours: f64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            uncertain_after_secs: 3.0,
            presumed_dead_after_secs: 300.0,
            probe_interval_secs: 5.0,
            action_timeout_secs: 60.0,
            install_timeout_secs: 600.0,
            lease_every_secs: 1.0,
            zone_budget_per_1000_services: 20.0,
            backup_interval_hours: 24.0,
            verify_interval_hours: 168.0,
        }
    }
}

/// Latencies in seconds, drawn uniformly from [min, max].
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderSpec {
    pub provision_secs: [f64; 2],
    pub boot_secs: [f64; 2],
    pub restart_secs: [f64; 2],
    pub fence_secs: [f64; 2],
    pub promote_secs: [f64; 2],
    pub retire_secs: [f64; 2],
    pub archive_secs: [f64; 2],
    pub terminate_secs: [f64; 2],
    pub probe_secs: [f64; 2],
    /// Share of attempts that fail with a retryable error.
    pub failure_rate: f64,
}

impl Default for ProviderSpec {
    fn default() -> Self {
        ProviderSpec {
            // Provider calls answer within the engine's action timeout (60 s);
            // the long part of building a member is its boot and catch-up.
            provision_secs: [10.0, 45.0],
            boot_secs: [60.0, 300.0],
            restart_secs: [5.0, 30.0],
            fence_secs: [1.0, 8.0],
            promote_secs: [1.0, 5.0],
            retire_secs: [5.0, 30.0],
            archive_secs: [5.0, 40.0],
            terminate_secs: [5.0, 30.0],
            probe_secs: [0.2, 2.0],
            failure_rate: 0.01,
        }
    }
}

/// Failures that happen on any day, per instance (or host) per day.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Background {
    pub process_crash_per_instance_day: f64,
    pub host_loss_per_host_day: f64,
    /// Background failures happen from hour 0 until this hour; by default
    /// until the last scenario fault ends (then the fleet must converge).
    pub until_hours: Option<f64>,
    /// Each run scales the rates by a factor drawn from the seed in [0.5, 2].
    pub swarm: bool,
}

impl Default for Background {
    fn default() -> Self {
        Background {
            process_crash_per_instance_day: 0.0005,
            host_loss_per_host_day: 0.0005,
            until_hours: None,
            swarm: true,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeopleSpec {
    /// Operator teams that run the fleet (services are spread over them);
    /// each has its time zone, business hours, two rotations and a manager.
    pub teams: u32,
    /// Minutes to acknowledge a page in the day, drawn uniformly.
    pub ack_minutes: [f64; 2],
    /// Acknowledging at night (22:00-07:00) takes this many times longer.
    pub night_factor: f64,
    /// Minutes a person works on what needs a human, drawn uniformly.
    pub fix_minutes: [f64; 2],
}

impl Default for PeopleSpec {
    fn default() -> Self {
        PeopleSpec { teams: 4, ack_minutes: [2.0, 15.0], night_factor: 3.0, fix_minutes: [20.0, 120.0] }
    }
}

#[derive(Clone, Debug)]
pub enum FaultSpec {
    /// Every host of a zone is lost (power, cooling), and comes back.
    ZoneLoss { zone: String, at_hours: f64, duration_hours: f64 },
    /// The control plane cannot reach a zone; the zone itself is healthy.
    NetworkCut { zone: String, at_hours: f64, duration_hours: f64 },
    /// Links from the control plane to a zone go down and up.
    Flap { zone: String, at_hours: f64, duration_hours: f64, down_secs: [f64; 2], up_secs: [f64; 2] },
    /// A share of followers write slowly and lag by `extra_lag_bytes`.
    SlowDisks { share: f64, at_hours: f64, duration_hours: f64, extra_lag_bytes: u64 },
    /// The backup/WAL store is unavailable: new members cannot be built.
    BackupStoreOutage { at_hours: f64, duration_hours: f64 },
    /// The pager provider delivers nothing; pages wait until it is back.
    PagerOutage { at_hours: f64, duration_hours: f64 },
    /// A kernel advisory: every instance existing at `at_hours` is replaced
    /// in its service's daily maintenance window (one hour, drawn per service).
    /// `bad_share` of the services cannot boot the patched image (a bad
    /// image): the rollout's health gate must catch it.
    Advisory { at_hours: f64, name: String, bad_share: f64 },
}

impl FaultSpec {
    pub fn window(&self) -> (f64, f64) {
        match self {
            FaultSpec::ZoneLoss { at_hours, duration_hours, .. }
            | FaultSpec::NetworkCut { at_hours, duration_hours, .. }
            | FaultSpec::Flap { at_hours, duration_hours, .. }
            | FaultSpec::SlowDisks { at_hours, duration_hours, .. }
            | FaultSpec::BackupStoreOutage { at_hours, duration_hours }
            | FaultSpec::PagerOutage { at_hours, duration_hours } => (*at_hours, at_hours + duration_hours),
            // Windows are drawn within the next day.
            FaultSpec::Advisory { at_hours, .. } => (*at_hours, at_hours + 25.0),
        }
    }
}

impl Scenario {
    /// This scenario as one run of `seed` plays it (swarm testing, as in
    /// TigerBeetle's VOPR): each fault's start and length drawn within the
    /// ranges the file gives, `zone = "any"` drawn from the fleet's zones,
    /// and each background failure rate scaled by a factor drawn from
    /// [0.5, 2] (a rate of zero stays zero: a scenario without background
    /// failures stays without). Many seeds explore many histories. Every
    /// shard of a run draws the same (the draw uses the seed alone).
    pub fn drawn(&self, seed: u64) -> Scenario {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5a7a_4d5e_ed00_0001);
        let mut s = self.clone();
        let mut faults = Vec::with_capacity(s.raw_faults.len());
        for (n, raw) in s.raw_faults.iter().enumerate() {
            match raw.to_spec(n + 1, &s.fleet.zones, Some(&mut rng)) {
                Ok(f) => faults.push(f),
                // Validated when parsed; a hand-built scenario keeps its faults.
                Err(_) => return self.clone(),
            }
        }
        if !s.raw_faults.is_empty() {
            s.faults = faults;
        }
        if s.background.swarm {
            let b = &mut s.background;
            for rate in [&mut b.process_crash_per_instance_day, &mut b.host_loss_per_host_day] {
                let factor = 2f64.powf(rng.random_range(-1.0..=1.0));
                *rate *= factor;
            }
        }
        s
    }

    /// A built-in name, or a path to a TOML file.
    pub fn load(name_or_path: &str) -> Result<Scenario, ScenarioError> {
        if let Some((name, text)) = BUILT_IN.iter().find(|(n, _)| *n == name_or_path) {
            return Scenario::parse(&format!("scenarios/{name}.toml"), text);
        }
        let path = Path::new(name_or_path);
        if path.extension().is_some_and(|e| e == "toml") || path.exists() {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ScenarioError::Read { file: name_or_path.into(), message: e.to_string() })?;
            return Scenario::parse(name_or_path, &text);
        }
        Err(ScenarioError::Unknown { name: name_or_path.into() })
    }

    pub fn parse(file: &str, text: &str) -> Result<Scenario, ScenarioError> {
        let mut s: Scenario =
            toml::from_str(text).map_err(|e| ScenarioError::Parse { file: file.into(), message: e.to_string() })?;
        let invalid = |m: String| ScenarioError::Invalid { file: file.into(), message: m };
        if s.fleet.zones.is_empty() || s.fleet.zones.len() > 200 {
            return Err(invalid("fleet.zones must list 1 to 200 zones".into()));
        }
        for (n, raw) in s.raw_faults.iter().enumerate() {
            s.faults.push(raw.to_spec(n + 1, &s.fleet.zones, None).map_err(invalid)?);
        }
        if !(0.0..=1.0).contains(&s.fleet.redis_share) {
            return Err(invalid("fleet.redis_share must be a number from 0 to 1".into()));
        }
        if !(0.0..=1.0).contains(&s.fleet.kafka_share) {
            return Err(invalid("fleet.kafka_share must be a number from 0 to 1".into()));
        }
        // A hair of slack for decimal shares that sum to 1 (0.7 + 0.3).
        if s.fleet.redis_share + s.fleet.kafka_share > 1.0 + 1e-9 {
            return Err(invalid(format!(
                "fleet.redis_share + fleet.kafka_share must be at most 1 (the rest run PostgreSQL), got {} + {}",
                s.fleet.redis_share, s.fleet.kafka_share
            )));
        }
        if let Some(cp) = &s.control_plane {
            cp.validate().map_err(invalid)?;
        }
        if s.people.teams == 0 || s.people.teams > 1000 {
            return Err(invalid("people.teams must be 1 to 1000".into()));
        }
        if !s.hours.is_finite() || s.hours <= 0.0 {
            return Err(invalid("hours must be a positive number".into()));
        }
        for f in &s.faults {
            let zone = match f {
                FaultSpec::ZoneLoss { zone, .. }
                | FaultSpec::NetworkCut { zone, .. }
                | FaultSpec::Flap { zone, .. } => Some(zone),
                _ => None,
            };
            if let Some(z) = zone {
                if !s.fleet.zones.contains(z) {
                    return Err(invalid(format!("fault names zone {z:?}, not one of fleet.zones {:?}", s.fleet.zones)));
                }
            }
        }
        Ok(s)
    }
}
