//! Drover's on-call: the pure pager.
//!
//! Alerts come in (from the engine, Alertmanager, the Events API v2), pages
//! go out through each team's escalation policy: the bot tier first, then
//! level 1, level 2, the manager, the incident commander. Everything here
//! is plain data and pure functions of their inputs and `now`, so the
//! server and the simulator run the same code and tests control the clock.
//!
//! - `pager`: `Pager::step(input, now) -> Outputs` (pages, transitions,
//!   notifications, feed posts); dedup, grouping, flapping, escalation.
//! - `config`: teams, people, schedules, policies (`oncall.toml`).
//! - `schedule`: rotations, handoffs, overrides, business hours.
//! - `integrations`: Alertmanager and Events API v2 payloads → alerts.
//! - `engine`: engine events → alerts.
//! - `metrics`: weekly pager metrics and their SVG chart.
//! - `sign`: HMAC-signed acknowledge/resolve links.
//! - `lifecycle`: the software lifecycle board, its stages and gates.
//! - `status`: the status site's component states, uptime and incidents.

pub mod config;
pub mod engine;
pub mod integrations;
pub mod lifecycle;
pub mod metrics;
pub mod pager;
pub mod schedule;
pub mod sign;
pub mod status;

pub use config::{ChannelKind, Config, ConfigError, Contact, Target, Team};
pub use pager::{
    Alert, AlertAction, AlertOutcome, Announcement, FeedPost, Input, Notification, NotificationId, NotifyReason,
    Outputs, Page, PageId, PageStatus, Pager, PagerError, Recipient, Reply, Severity, Transition, INCIDENT_ORIGIN,
};
