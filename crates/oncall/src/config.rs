//! Teams, people, schedules and escalation policies: `oncall.toml` as
//! written by operators (`raw`), and the validated form the pager runs on.
//!
//! Parsing resolves time zones from the bundled database, so building a
//! `Config` never touches the disk; the shell reads the file.

use crate::schedule::{BusinessHours, Schedule};
use drover_model::Timestamp;
pub use drover_secrets::Secret;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// How a notification reaches someone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// A Slack-compatible incoming webhook (`{"text": ...}`).
    Slack,
    /// A generic webhook: the notification as JSON.
    Webhook,
    /// E-mail over SMTP.
    Email,
}

impl ChannelKind {
    pub fn name(self) -> &'static str {
        match self {
            ChannelKind::Slack => "slack",
            ChannelKind::Webhook => "webhook",
            ChannelKind::Email => "email",
        }
    }
}

/// One address on one channel. A list of contacts is tried in order: the
/// first is preferred, the rest are fallbacks.
///
/// A chat or generic webhook URL is a secret (whoever has it can post as
/// us): its `Debug` and [`Contact::redacted`] show the host only, and the
/// shell seals it before storing a notification.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Contact {
    pub kind: ChannelKind,
    pub address: String,
}

impl Contact {
    /// Whether the address is a secret (a webhook URL, not an e-mail address).
    pub fn is_secret(&self) -> bool {
        matches!(self.kind, ChannelKind::Slack | ChannelKind::Webhook)
    }

    /// The address as logs, errors and the API may show it: an e-mail
    /// address as it is; a webhook URL as its scheme and host only
    /// (`https://hooks.slack.com/…`), a sealed one as `(sealed)`.
    pub fn redacted(&self) -> String {
        if !self.is_secret() {
            return self.address.clone();
        }
        redact_url(&self.address)
    }
}

/// `scheme://host[:port]/…`: the part of a URL that is not a credential.
pub fn redact_url(url: &str) -> String {
    if drover_secrets::is_sealed(url) {
        return "(sealed)".into();
    }
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            // user:password@host: keep the host only.
            let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
            format!("{scheme}://{host}/…")
        }
        None => "(redacted)".into(),
    }
}

impl std::fmt::Debug for Contact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contact").field("kind", &self.kind).field("address", &self.redacted()).finish()
    }
}

/// Who a step of an escalation policy notifies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// The bot tier: the engine's remedy runs; in business hours the page is
    /// posted to the team's chat where anyone may acknowledge it.
    Bot,
    /// Whoever is on call in this team schedule.
    Schedule(String),
    /// One named person.
    Person(String),
    /// The team's manager.
    Manager,
    /// Whoever is on call in the company-wide incident commander schedule.
    IncidentCommander,
}

impl Target {
    /// `bot`, `schedule:level1`, `person:alice`, `manager`, `incident_commander`.
    pub fn parse(text: &str) -> Result<Target, String> {
        match text {
            "bot" => Ok(Target::Bot),
            "manager" => Ok(Target::Manager),
            "incident_commander" => Ok(Target::IncidentCommander),
            _ => {
                if let Some(s) = text.strip_prefix("schedule:") {
                    Ok(Target::Schedule(s.to_string()))
                } else if let Some(p) = text.strip_prefix("person:") {
                    Ok(Target::Person(p.to_string()))
                } else {
                    Err(format!(
                        "unknown escalation target {text:?}; use bot, schedule:NAME, person:NAME, manager or incident_commander"
                    ))
                }
            }
        }
    }
    pub fn label(&self) -> String {
        match self {
            Target::Bot => "bot".into(),
            Target::Schedule(s) => s.clone(),
            Target::Person(p) => format!("person:{p}"),
            Target::Manager => "manager".into(),
            Target::IncidentCommander => "incident_commander".into(),
        }
    }
}

/// One step of an escalation policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub target: Target,
    /// Unacknowledged this long, the page moves to the next step.
    pub timeout: Duration,
    /// The wait during the team's business hours, if different (the bot
    /// tier waits longer by day: anyone watching chat may take the page).
    pub business_hours_timeout: Option<Duration>,
}

#[derive(Clone, Debug)]
pub struct Person {
    pub name: String,
    pub contacts: Vec<Contact>,
}

#[derive(Clone, Debug)]
pub struct Team {
    pub name: String,
    pub time_zone: TimeZone,
    pub business_hours: BusinessHours,
    pub people: Vec<Person>,
    pub schedules: Vec<Schedule>,
    pub manager: Option<String>,
    pub escalation: Vec<Step>,
    /// An acknowledged page still open this long is notified again.
    pub renotify_acknowledged_after: Duration,
    /// Events API v2 `routing_key`s that route to this team (its name always does).
    pub routing_keys: Vec<String>,
    /// The team's chat (where the bot tier posts in business hours).
    pub chat: Vec<Contact>,
}

impl Team {
    pub fn person(&self, name: &str) -> Option<&Person> {
        self.people.iter().find(|p| p.name == name)
    }
    pub fn schedule(&self, name: &str) -> Option<&Schedule> {
        self.schedules.iter().find(|s| s.name == name)
    }
}

/// When one alert counts as flapping.
#[derive(Clone, Debug, PartialEq)]
pub struct FlapPolicy {
    /// Openings of the same alert within `window` that make it flapping.
    pub threshold: u32,
    pub window: Duration,
    /// A held (flapping) page resolves after its alert stayed closed this long.
    pub quiet: Duration,
}

impl Default for FlapPolicy {
    fn default() -> Self {
        // Three openings in an hour: two blips are chance, the third is a
        // pattern. Fifteen quiet minutes end an episode.
        FlapPolicy { threshold: 3, window: Duration::from_secs(3600), quiet: Duration::from_secs(15 * 60) }
    }
}

/// Delivery settings the shell uses (the pure pager ignores them).
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    /// The company-wide feed where every page is visible.
    pub feed: Vec<Contact>,
    pub smtp: Option<Smtp>,
    /// Base URL for the signed acknowledge/resolve links in notifications.
    pub public_url: Option<String>,
    /// HMAC secret for signed links; when absent the shell derives one from
    /// the data dir's secret key.
    pub secret: Option<Secret>,
    /// Attempts per contact before falling back to the next one.
    pub attempts: u32,
    /// First retry delay; doubles each attempt.
    pub backoff: Duration,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            feed: Vec::new(),
            smtp: None,
            public_url: None,
            secret: None,
            attempts: 3,
            backoff: Duration::from_millis(500),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Smtp {
    pub host: String,
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    pub from: String,
    /// SMTP AUTH, when the relay wants it (both or neither).
    pub username: Option<String>,
    /// Never printed (`***`); may be given sealed (`sealed:v1:…`, see
    /// `drover secrets seal`).
    pub password: Option<Secret>,
}

fn default_smtp_port() -> u16 {
    25
}

#[derive(Clone, Debug)]
pub struct Config {
    pub teams: Vec<Team>,
    /// Pages whose team is unknown go here.
    pub default_team: String,
    /// The company-wide incident commander rotation (last escalation level).
    pub incident_commanders: Schedule,
    /// Company-wide people (the incident commanders).
    pub people: Vec<Person>,
    pub flapping: FlapPolicy,
    pub delivery: Delivery,
    /// An alert with a group whose team's incident of that group resolved
    /// less than this long ago reopens that incident instead of opening a
    /// new page: trouble of one cause that comes back (a zone outage's
    /// brake, then its services needing a human hours later) is one
    /// incident. Zero (the default) turns it off.
    pub regroup: Duration,
}

/// Bot tier waits: off hours just long enough for the remedy to act (the
/// engine's failover finishes within a couple of minutes, Heroku's pattern);
/// by day longer, because people watching chat pick pages up.
pub const DEFAULT_BOT_WAIT: Duration = Duration::from_secs(3 * 60);
pub const DEFAULT_BOT_WAIT_BUSINESS_HOURS: Duration = Duration::from_secs(15 * 60);
/// Each human level has 15 minutes to acknowledge (PagerDuty's default
/// escalation timeout is 30; we escalate sooner because levels 2+ exist).
pub const DEFAULT_LEVEL_WAIT: Duration = Duration::from_secs(15 * 60);
/// An acknowledged page open for an hour is brought up again.
pub const DEFAULT_RENOTIFY_ACKNOWLEDGED: Duration = Duration::from_secs(60 * 60);

/// The default policy: bot tier, level 1, level 2, level 3 (the manager),
/// then the incident commander.
pub fn default_escalation() -> Vec<Step> {
    vec![
        Step {
            target: Target::Bot,
            timeout: DEFAULT_BOT_WAIT,
            business_hours_timeout: Some(DEFAULT_BOT_WAIT_BUSINESS_HOURS),
        },
        Step { target: Target::Schedule("level1".into()), timeout: DEFAULT_LEVEL_WAIT, business_hours_timeout: None },
        Step { target: Target::Schedule("level2".into()), timeout: DEFAULT_LEVEL_WAIT, business_hours_timeout: None },
        Step { target: Target::Manager, timeout: DEFAULT_LEVEL_WAIT, business_hours_timeout: None },
        Step { target: Target::IncidentCommander, timeout: DEFAULT_LEVEL_WAIT, business_hours_timeout: None },
    ]
}

impl Default for Config {
    /// One team, `platform`, in UTC, with placeholder people and no
    /// addresses: pages still open, escalate and show in the feed.
    fn default() -> Self {
        Config::from_toml(DEFAULT_TOML).expect("the built-in default oncall.toml is valid")
    }
}

/// What `Config::default()` is, as an operator would write it.
pub const DEFAULT_TOML: &str = r#"
default_team = "platform"

[incident_commanders]
rotation = ["incident-commander"]

[[people]]
name = "incident-commander"

[[teams]]
name = "platform"
time_zone = "UTC"
manager = "platform-manager"

[[teams.people]]
name = "platform-primary"
[[teams.people]]
name = "platform-secondary"
[[teams.people]]
name = "platform-manager"

[[teams.schedules]]
name = "level1"
rotation = ["platform-primary", "platform-secondary"]
handoff = "2026-01-05T10:00:00"
shift = "1w"

[[teams.schedules]]
name = "level2"
rotation = ["platform-secondary", "platform-primary"]
handoff = "2026-01-05T10:00:00"
shift = "1w"
"#;

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("oncall configuration: {0}")]
pub struct ConfigError(pub String);

pub mod raw {
    //! `oncall.toml` as written.
    use super::{Secret, Smtp};
    use serde::Deserialize;

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct File {
        pub default_team: Option<String>,
        #[serde(default)]
        pub teams: Vec<Team>,
        pub incident_commanders: Option<Schedule>,
        /// Company-wide people (incident commanders), beside each team's own.
        #[serde(default)]
        pub people: Vec<Person>,
        #[serde(default)]
        pub flapping: Option<Flapping>,
        #[serde(default)]
        pub delivery: Option<Delivery>,
        /// How long a resolved incident takes its group's next alert back.
        pub regroup_within: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Team {
        pub name: String,
        #[serde(default = "utc")]
        pub time_zone: String,
        pub business_hours: Option<BusinessHours>,
        #[serde(default)]
        pub people: Vec<Person>,
        #[serde(default)]
        pub schedules: Vec<Schedule>,
        pub manager: Option<String>,
        pub escalation: Option<Vec<Step>>,
        pub renotify_acknowledged_after: Option<String>,
        #[serde(default)]
        pub routing_keys: Vec<String>,
        #[serde(default)]
        pub chat: Contacts,
    }

    fn utc() -> String {
        "UTC".into()
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct BusinessHours {
        pub start: String,
        pub end: String,
        pub days: Option<Vec<String>>,
    }

    /// Addresses per channel, tried in `order` (default: slack, webhook, email).
    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Contacts {
        pub slack: Option<String>,
        pub webhook: Option<String>,
        pub email: Option<String>,
        pub order: Option<Vec<String>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Person {
        pub name: String,
        pub slack: Option<String>,
        pub webhook: Option<String>,
        pub email: Option<String>,
        pub order: Option<Vec<String>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Schedule {
        #[serde(default)]
        pub name: String,
        pub rotation: Vec<String>,
        /// A civil date-time in the team's zone when a shift starts.
        pub handoff: Option<String>,
        /// How long a shift lasts: "1w", "1d", "12h".
        pub shift: Option<String>,
        #[serde(default)]
        pub overrides: Vec<Override>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Override {
        pub person: String,
        /// RFC 3339 instants.
        pub start: String,
        pub end: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Step {
        pub target: String,
        pub timeout: String,
        pub business_hours_timeout: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Flapping {
        pub threshold: Option<u32>,
        pub window: Option<String>,
        pub quiet: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Delivery {
        #[serde(default)]
        pub feed: Contacts,
        pub smtp: Option<Smtp>,
        pub public_url: Option<String>,
        pub secret: Option<Secret>,
        pub attempts: Option<u32>,
        pub backoff: Option<String>,
    }
}

/// Parses "15m", "90s", "1h 30m", "PT15M" into a duration.
pub fn parse_duration(text: &str, what: &str) -> Result<Duration, ConfigError> {
    let d: jiff::SignedDuration = text.parse().map_err(|e| {
        ConfigError(format!("{what}: {text:?} is not a duration ({e}); write e.g. \"15m\", \"90s\", \"1h\""))
    })?;
    if d.is_negative() {
        return Err(ConfigError(format!("{what}: {text:?} is negative")));
    }
    Ok(d.unsigned_abs())
}

fn contacts(
    slack: &Option<String>,
    webhook: &Option<String>,
    email: &Option<String>,
    order: &Option<Vec<String>>,
    who: &str,
) -> Result<Vec<Contact>, ConfigError> {
    let order: Vec<String> = order.clone().unwrap_or_else(|| vec!["slack".into(), "webhook".into(), "email".into()]);
    let mut out = Vec::new();
    for kind in &order {
        let (kind, address) = match kind.as_str() {
            "slack" => (ChannelKind::Slack, slack),
            "webhook" => (ChannelKind::Webhook, webhook),
            "email" => (ChannelKind::Email, email),
            other => {
                return Err(ConfigError(format!(
                    "{who}: unknown channel {other:?} in order; use slack, webhook, email"
                )))
            }
        };
        if let Some(address) = address {
            out.push(Contact { kind, address: address.clone() });
        }
    }
    Ok(out)
}

fn weekday(text: &str) -> Result<usize, ConfigError> {
    let day = match text.to_ascii_lowercase().get(..3) {
        Some("mon") => 0,
        Some("tue") => 1,
        Some("wed") => 2,
        Some("thu") => 3,
        Some("fri") => 4,
        Some("sat") => 5,
        Some("sun") => 6,
        _ => return Err(ConfigError(format!("{text:?} is not a weekday; use mon … sun"))),
    };
    Ok(day)
}

fn minute_of_day(text: &str, what: &str) -> Result<u16, ConfigError> {
    let t: jiff::civil::Time = text
        .parse()
        .map_err(|e| ConfigError(format!("{what}: {text:?} is not a time of day ({e}); write e.g. \"08:00\"")))?;
    Ok(t.hour() as u16 * 60 + t.minute() as u16)
}

fn schedule(raw: &raw::Schedule, tz: &TimeZone, who: &str) -> Result<Schedule, ConfigError> {
    let handoff = match &raw.handoff {
        Some(h) => h.parse::<jiff::civil::DateTime>().map_err(|e| {
            ConfigError(format!(
                "{who}: handoff {h:?} is not a civil date-time ({e}); write e.g. \"2026-01-05T10:00:00\""
            ))
        })?,
        None => jiff::civil::date(2026, 1, 5).at(10, 0, 0, 0),
    };
    let shift = match &raw.shift {
        Some(s) => s
            .parse::<jiff::Span>()
            .map_err(|e| ConfigError(format!("{who}: shift {s:?} is not a span ({e}); write e.g. \"1w\"")))?,
        None => jiff::Span::new().weeks(1),
    };
    let mut overrides = Vec::new();
    for o in &raw.overrides {
        let start = Timestamp::parse(&o.start).map_err(|e| ConfigError(format!("{who}: override start: {e}")))?;
        let end = Timestamp::parse(&o.end).map_err(|e| ConfigError(format!("{who}: override end: {e}")))?;
        if end <= start {
            return Err(ConfigError(format!("{who}: override for {} ends before it starts", o.person)));
        }
        overrides.push(crate::schedule::Override { person: o.person.clone(), start, end });
    }
    Schedule::new(raw.name.clone(), raw.rotation.clone(), handoff, shift, tz.clone(), overrides)
        .map_err(|e| ConfigError(format!("{who}: {e}")))
}

impl Config {
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let file: raw::File = toml::from_str(text).map_err(|e| ConfigError(format!("not valid oncall.toml: {e}")))?;
        Config::from_raw(file)
    }

    pub fn from_raw(file: raw::File) -> Result<Config, ConfigError> {
        if file.teams.is_empty() {
            return Err(ConfigError("no [[teams]]: define at least one team".into()));
        }
        let mut teams = Vec::new();
        for t in &file.teams {
            let who = format!("team {:?}", t.name);
            if t.name.is_empty() || teams.iter().any(|x: &Team| x.name == t.name) {
                return Err(ConfigError(format!("{who}: team names must be non-empty and unique")));
            }
            let time_zone = TimeZone::get(&t.time_zone).map_err(|e| {
                ConfigError(format!(
                    "{who}: unknown time zone {:?} ({e}); use an IANA name like Europe/Berlin",
                    t.time_zone
                ))
            })?;
            let business_hours = match &t.business_hours {
                None => BusinessHours::default(),
                Some(b) => {
                    let mut days = [false; 7];
                    match &b.days {
                        None => days[..5].iter_mut().for_each(|d| *d = true),
                        Some(list) => {
                            for d in list {
                                days[weekday(d)?] = true;
                            }
                        }
                    }
                    let start = minute_of_day(&b.start, &format!("{who}: business_hours.start"))?;
                    let end = minute_of_day(&b.end, &format!("{who}: business_hours.end"))?;
                    if end <= start {
                        return Err(ConfigError(format!("{who}: business hours must end after they start")));
                    }
                    BusinessHours { start_minute: start, end_minute: end, days }
                }
            };
            let mut people = Vec::new();
            for p in &t.people {
                people.push(Person {
                    name: p.name.clone(),
                    contacts: contacts(
                        &p.slack,
                        &p.webhook,
                        &p.email,
                        &p.order,
                        &format!("{who}: person {:?}", p.name),
                    )?,
                });
            }
            let mut schedules = Vec::new();
            for s in &t.schedules {
                let sched = schedule(s, &time_zone, &format!("{who}: schedule {:?}", s.name))?;
                for name in sched.rotation.iter().chain(sched.overrides.iter().map(|o| &o.person)) {
                    if !people.iter().any(|p: &Person| &p.name == name) {
                        return Err(ConfigError(format!(
                            "{who}: schedule {:?} names {name:?}, who is not in [[teams.people]]",
                            s.name
                        )));
                    }
                }
                schedules.push(sched);
            }
            let escalation = match &t.escalation {
                None => default_escalation(),
                Some(steps) => {
                    let mut out = Vec::new();
                    for (i, s) in steps.iter().enumerate() {
                        let what = format!("{who}: escalation step {}", i + 1);
                        out.push(Step {
                            target: Target::parse(&s.target).map_err(|e| ConfigError(format!("{what}: {e}")))?,
                            timeout: parse_duration(&s.timeout, &what)?,
                            business_hours_timeout: s
                                .business_hours_timeout
                                .as_deref()
                                .map(|d| parse_duration(d, &what))
                                .transpose()?,
                        });
                    }
                    out
                }
            };
            if escalation.is_empty() {
                return Err(ConfigError(format!("{who}: the escalation policy has no steps")));
            }
            for step in &escalation {
                match &step.target {
                    Target::Schedule(s) if !schedules.iter().any(|x: &Schedule| &x.name == s) => {
                        return Err(ConfigError(format!(
                            "{who}: escalation names schedule {s:?}, which the team does not define"
                        )));
                    }
                    Target::Person(p) if !people.iter().any(|x| &x.name == p) => {
                        return Err(ConfigError(format!(
                            "{who}: escalation names person {p:?}, who is not in [[teams.people]]"
                        )));
                    }
                    _ => {}
                }
            }
            teams.push(Team {
                name: t.name.clone(),
                time_zone,
                business_hours,
                people,
                schedules,
                manager: t.manager.clone(),
                escalation,
                renotify_acknowledged_after: t
                    .renotify_acknowledged_after
                    .as_deref()
                    .map(|d| parse_duration(d, &format!("{who}: renotify_acknowledged_after")))
                    .transpose()?
                    .unwrap_or(DEFAULT_RENOTIFY_ACKNOWLEDGED),
                routing_keys: t.routing_keys.clone(),
                chat: contacts(&t.chat.slack, &t.chat.webhook, &t.chat.email, &t.chat.order, &format!("{who}: chat"))?,
            });
        }
        let default_team = file.default_team.clone().unwrap_or_else(|| teams[0].name.clone());
        if !teams.iter().any(|t| t.name == default_team) {
            return Err(ConfigError(format!("default_team {default_team:?} is not one of the [[teams]]")));
        }
        let incident_commanders = match &file.incident_commanders {
            Some(s) => schedule(s, &TimeZone::UTC, "incident_commanders")?,
            None => Schedule::new(
                String::new(),
                Vec::new(),
                jiff::civil::date(2026, 1, 5).at(10, 0, 0, 0),
                jiff::Span::new().weeks(1),
                TimeZone::UTC,
                Vec::new(),
            )
            .map_err(ConfigError)?,
        };
        let mut people = Vec::new();
        for p in &file.people {
            people.push(Person {
                name: p.name.clone(),
                contacts: contacts(&p.slack, &p.webhook, &p.email, &p.order, &format!("person {:?}", p.name))?,
            });
        }
        for name in incident_commanders.rotation.iter().chain(incident_commanders.overrides.iter().map(|o| &o.person)) {
            if !people.iter().any(|p: &Person| &p.name == name) && !teams.iter().any(|t| t.person(name).is_some()) {
                return Err(ConfigError(format!(
                    "incident_commanders names {name:?}, who is in no [[people]] or team"
                )));
            }
        }
        let mut incident_commanders = incident_commanders;
        incident_commanders.name = "incident_commander".into();
        let mut flapping = FlapPolicy::default();
        if let Some(f) = &file.flapping {
            if let Some(t) = f.threshold {
                if t < 2 {
                    return Err(ConfigError("flapping.threshold must be at least 2".into()));
                }
                flapping.threshold = t;
            }
            if let Some(w) = &f.window {
                flapping.window = parse_duration(w, "flapping.window")?;
            }
            if let Some(q) = &f.quiet {
                flapping.quiet = parse_duration(q, "flapping.quiet")?;
            }
        }
        let mut delivery = Delivery::default();
        if let Some(d) = &file.delivery {
            delivery.feed = contacts(&d.feed.slack, &d.feed.webhook, &d.feed.email, &d.feed.order, "delivery.feed")?;
            if let Some(smtp) = &d.smtp {
                if smtp.username.is_some() != smtp.password.is_some() {
                    return Err(ConfigError("delivery.smtp: give both username and password, or neither".into()));
                }
            }
            delivery.smtp = d.smtp.clone();
            delivery.public_url = d.public_url.clone();
            delivery.secret = d.secret.clone();
            if let Some(a) = d.attempts {
                delivery.attempts = a.max(1);
            }
            if let Some(b) = &d.backoff {
                delivery.backoff = parse_duration(b, "delivery.backoff")?;
            }
        }
        let regroup = match &file.regroup_within {
            Some(r) => parse_duration(r, "regroup_within")?,
            None => Duration::ZERO,
        };
        Ok(Config { teams, default_team, incident_commanders, people, flapping, delivery, regroup })
    }

    /// A person by name: the team's own first, then company-wide people.
    pub fn person<'a>(&'a self, team: Option<&'a Team>, name: &str) -> Option<&'a Person> {
        team.and_then(|t| t.person(name))
            .or_else(|| self.people.iter().find(|p| p.name == name))
            .or_else(|| self.teams.iter().find_map(|t| t.person(name)))
    }

    /// Opens every value of the file given sealed (`sealed:v1:…`, made by
    /// `drover secrets seal`): contact addresses, `delivery.smtp.password`,
    /// `delivery.secret`. `open` is given the sealed text and returns the
    /// clear one; values in clear are left as they are.
    pub fn open_sealed(&mut self, open: impl Fn(&str) -> Result<String, String>) -> Result<(), ConfigError> {
        let open_one = |what: &str, value: &mut String| -> Result<(), ConfigError> {
            if drover_secrets::is_sealed(value) {
                *value = open(value).map_err(|e| ConfigError(format!("{what}: {e}")))?;
            }
            Ok(())
        };
        let mut contacts: Vec<(String, &mut Contact)> = Vec::new();
        for t in &mut self.teams {
            for p in &mut t.people {
                let who = format!("team {:?} person {:?}", t.name, p.name);
                contacts.extend(p.contacts.iter_mut().map(|c| (who.clone(), c)));
            }
            let who = format!("team {:?} chat", t.name);
            contacts.extend(t.chat.iter_mut().map(|c| (who.clone(), c)));
        }
        for p in &mut self.people {
            let who = format!("person {:?}", p.name);
            contacts.extend(p.contacts.iter_mut().map(|c| (who.clone(), c)));
        }
        contacts.extend(self.delivery.feed.iter_mut().map(|c| ("delivery.feed".to_string(), c)));
        for (who, c) in contacts {
            open_one(&format!("{who} {}", c.kind.name()), &mut c.address)?;
        }
        if let Some(smtp) = &mut self.delivery.smtp {
            if let Some(p) = &smtp.password {
                let mut text = p.expose().to_string();
                open_one("delivery.smtp.password", &mut text)?;
                smtp.password = Some(Secret::new(text));
            }
        }
        if let Some(s) = &self.delivery.secret {
            let mut text = s.expose().to_string();
            open_one("delivery.secret", &mut text)?;
            self.delivery.secret = Some(Secret::new(text));
        }
        Ok(())
    }

    pub fn team(&self, name: &str) -> Option<&Team> {
        self.teams.iter().find(|t| t.name == name)
    }

    /// The team a routing key or team name points at.
    pub fn team_for_routing_key(&self, key: &str) -> Option<&Team> {
        self.teams.iter().find(|t| t.name == key || t.routing_keys.iter().any(|k| k == key))
    }

    /// Per team: people, for display.
    pub fn people_by_team(&self) -> BTreeMap<String, Vec<String>> {
        self.teams.iter().map(|t| (t.name.clone(), t.people.iter().map(|p| p.name.clone()).collect())).collect()
    }
}

#[cfg(test)]
mod secret_tests {
    use super::*;

    const FILE: &str = r#"
[delivery]
secret = "sealed:LINK"
smtp = { host = "h", from = "d@example.com", username = "u", password = "sealed:PW" }
feed = { webhook = "sealed:FEED" }

[[teams]]
name = "db"
chat = { slack = "https://hooks.example.com/services/T/B/xyz" }

[[teams.people]]
name = "alice"
slack = "sealed:ALICE"
email = "alice@example.com"

[[teams.escalation]]
target = "person:alice"
timeout = "1h"
"#;

    /// A stand-in for the shell's key: "sealed:X" opens to "open-X".
    fn open(text: &str) -> Result<String, String> {
        text.strip_prefix("sealed:").map(|t| format!("open-{t}")).ok_or_else(|| "not sealed".into())
    }

    #[test]
    fn sealed_values_are_opened_and_clear_ones_kept() {
        let file = FILE.replace("sealed:", "sealed:v1:");
        let mut config = Config::from_toml(&file).unwrap();
        config
            .open_sealed(|t| open(t.strip_prefix("sealed:v1:").map(|r| format!("sealed:{r}")).as_deref().unwrap()))
            .unwrap();
        let team = config.team("db").unwrap();
        assert_eq!(team.person("alice").unwrap().contacts[0].address, "open-ALICE");
        assert_eq!(team.person("alice").unwrap().contacts[1].address, "alice@example.com");
        assert_eq!(team.chat[0].address, "https://hooks.example.com/services/T/B/xyz");
        assert_eq!(config.delivery.feed[0].address, "open-FEED");
        assert_eq!(config.delivery.smtp.as_ref().unwrap().password.as_ref().unwrap().expose(), "open-PW");
        assert_eq!(config.delivery.secret.as_ref().unwrap().expose(), "open-LINK");
        // A value that does not open names where it is.
        let mut config = Config::from_toml(&file).unwrap();
        let err = config.open_sealed(|_| Err("damaged".into())).unwrap_err();
        assert!(err.0.contains("alice") || err.0.contains("delivery"), "{err}");
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let config = Config::from_toml(FILE).unwrap();
        let text = format!("{config:?}");
        for secret in ["sealed:PW", "sealed:LINK", "/services/T/B/xyz"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("https://hooks.example.com/…"), "{text}");
        assert!(text.contains("alice@example.com"));
    }

    #[test]
    fn urls_are_redacted_to_scheme_and_host() {
        assert_eq!(redact_url("https://hooks.slack.com/services/T/B/X?a=b"), "https://hooks.slack.com/…");
        assert_eq!(redact_url("http://user:pw@host:8080/x"), "http://host:8080/…");
        assert_eq!(redact_url("no scheme"), "(redacted)");
        assert_eq!(redact_url("sealed:v1:abc"), "(sealed)");
        let smtp_only = FILE.replace("username = \"u\", ", "");
        assert!(Config::from_toml(&smtp_only).unwrap_err().0.contains("both username and password"));
    }
}
