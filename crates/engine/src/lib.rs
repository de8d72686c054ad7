//! The pure core of Drover. `Engine::step(input, now)` takes one input and
//! the current time and returns what to persist, what to dispatch and what
//! to answer. It never reads a clock, sleeps, spawns, or touches a socket or
//! a file: the same code runs the server, the simulator and replays.

mod api;

pub use api::{Command, CommandError, Config, HeartbeatReceipt, Input, Outputs, Reply};

use drover_model::{Image, InstanceId, InstanceState, InstanceView, ServiceState, ServiceView, Snapshot, Timestamp};

/// Counts for metrics and dashboards.
#[derive(Clone, Debug, Default)]
pub struct FleetStats {
    pub services_by_state: Vec<(ServiceState, u64)>,
    pub instances_by_state: Vec<(InstanceState, u64)>,
    pub open_actions: u64,
    /// Zones (and `"fleet"`) where the mass-uncertainty brake is engaged.
    pub braked: Vec<String>,
}

pub struct Engine {
    _config: Config,
}

impl Engine {
    pub fn new(config: Config, _seed: u64) -> Engine {
        Engine { _config: config }
    }
    /// Rebuilds the engine from the store after a restart. The outputs hold
    /// the re-dispatch of every action that was running.
    pub fn restore(config: Config, seed: u64, _snapshot: Snapshot, _now: Timestamp) -> (Engine, Outputs) {
        (Engine::new(config, seed), Outputs::default())
    }
    pub fn step(&mut self, _input: Input, _now: Timestamp) -> Outputs {
        Outputs::default()
    }
    /// The earliest time a `Tick` has work to do.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        None
    }
    pub fn service_view(&self, _name: &str) -> Option<ServiceView> {
        None
    }
    pub fn service_views(&self) -> Vec<ServiceView> {
        Vec::new()
    }
    pub fn instance_view(&self, _id: InstanceId) -> Option<InstanceView> {
        None
    }
    pub fn images(&self) -> Vec<Image> {
        Vec::new()
    }
    pub fn stats(&self) -> FleetStats {
        FleetStats::default()
    }
}
