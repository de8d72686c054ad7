//! The pager: `Pager::step(input, now) -> Outputs`. Alerts open, join,
//! deduplicate into and resolve pages; ticks escalate them through the
//! team's policy; acknowledgements stop escalation. Every page change is a
//! transition and a post in the company-wide feed. No clock, no I/O.

use crate::config::{Config, Contact, Step, Target, Team};
use drover_model::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, VecDeque};

// Ids are the model's UUID v7 ids, minted from `now` and a counter.
pub use drover_model::{NotificationId, PageId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertAction {
    Trigger,
    Acknowledge,
    Resolve,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Critical,
    Error,
    Warning,
    Info,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
    pub fn parse(text: &str) -> Option<Severity> {
        match text.to_ascii_lowercase().as_str() {
            "critical" => Some(Severity::Critical),
            "error" => Some(Severity::Error),
            "warning" => Some(Severity::Warning),
            "info" => Some(Severity::Info),
            _ => None,
        }
    }
}

/// An alert from anywhere: Alertmanager, the Events API v2, the engine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// The identity that deduplicates: repeats of an open key join its page.
    pub dedup_key: String,
    pub action: AlertAction,
    pub summary: String,
    pub source: String,
    pub severity: Severity,
    /// Team name; unknown or absent routes to the default team.
    pub team: Option<String>,
    /// Alerts of one service and team group into one open page.
    pub service: Option<String>,
    pub component: Option<String>,
    /// Alerts of one group and team join one open page (one incident),
    /// whatever their service: the engine's alerts group by kind of trouble.
    /// Not kept across a pager restart (grouping starts afresh).
    pub group: Option<String>,
    /// What kind of alert (for "noisiest alerts"): Alertmanager's
    /// `alertname`, the Events API's `class`, the engine's cause kind.
    pub class: Option<String>,
    /// `alertmanager`, `events-v2`, `engine`.
    pub origin: String,
    pub details: serde_json::Value,
}

impl Alert {
    pub fn trigger(dedup_key: impl Into<String>, summary: impl Into<String>) -> Alert {
        Alert {
            dedup_key: dedup_key.into(),
            action: AlertAction::Trigger,
            summary: summary.into(),
            source: "test".into(),
            severity: Severity::Critical,
            team: None,
            service: None,
            component: None,
            group: None,
            class: None,
            origin: "test".into(),
            details: serde_json::Value::Null,
        }
    }
    pub fn with_action(mut self, action: AlertAction) -> Alert {
        self.action = action;
        self
    }
    pub fn resolve(dedup_key: impl Into<String>) -> Alert {
        Alert::trigger(dedup_key, "").with_action(AlertAction::Resolve)
    }
    /// The alert that pages the incident commander on call to a declared
    /// incident: straight to the company-wide incident-commander schedule
    /// (no bot tier, no team level first), repeated until acknowledged,
    /// one page per incident (its key names the incident).
    pub fn incident_commander(
        incident: &str,
        title: &str,
        severity: Severity,
        team: Option<String>,
        declared_by: &str,
    ) -> Alert {
        Alert {
            dedup_key: format!("incident/{incident}/commander"),
            action: AlertAction::Trigger,
            summary: truncate(
                format!("Incident declared by {declared_by}: {title} (you are the incident commander)"),
                MAX_SUMMARY,
            ),
            source: format!("incident {incident}"),
            severity,
            team,
            service: None,
            component: None,
            group: None,
            class: Some("incident_commander".into()),
            origin: INCIDENT_ORIGIN.into(),
            details: serde_json::json!({ "incident": incident }),
        }
    }
    /// Nothing automatic runs for what this alert reports (`details.needs_person`:
    /// the engine stopped its remedies, or paused them under the brake), so the
    /// bot tier has nothing to wait for: its page starts at the first person.
    pub fn needs_person(&self) -> bool {
        self.details.get("needs_person").and_then(serde_json::Value::as_bool) == Some(true)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PageStatus {
    Triggered,
    Acknowledged,
    Resolved,
}

impl PageStatus {
    pub fn name(self) -> &'static str {
        match self {
            PageStatus::Triggered => "triggered",
            PageStatus::Acknowledged => "acknowledged",
            PageStatus::Resolved => "resolved",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Page {
    pub id: PageId,
    /// The key of the alert that opened it.
    pub dedup_key: String,
    pub summary: String,
    pub source: String,
    pub severity: Severity,
    pub team: String,
    pub service: Option<String>,
    pub class: Option<String>,
    pub origin: String,
    pub status: PageStatus,
    /// Index of the escalation step the page is at (0: the bot tier).
    pub level: u32,
    /// That step's target: `bot`, `level1`, `level2`, `manager`, `incident_commander`.
    pub level_name: String,
    pub opened_at: Timestamp,
    pub acknowledged_at: Option<Timestamp>,
    pub acknowledged_by: Option<String>,
    pub resolved_at: Option<Timestamp>,
    pub resolved_by: Option<String>,
    /// Every alert key that joined this page.
    pub alert_keys: BTreeSet<String>,
    /// Keys still firing.
    pub open_alerts: BTreeSet<String>,
    /// Trigger events received, repeats included.
    pub alerts: u64,
    /// People notified, in order (a person appears once).
    pub notified: Vec<String>,
    /// Held in the bot tier because its alert flaps.
    pub flapping: bool,
    /// Times the alert reopened while held.
    pub flaps: u32,
    /// Opened within the team's business hours.
    pub business_hours: bool,
    /// Next escalation, re-notification or (held pages) quiet-resolve.
    pub next_at: Option<Timestamp>,
    /// Re-notifications sent while acknowledged.
    pub renotified: u32,
    pub details: serde_json::Value,
}

/// The origin of the page that calls the incident commander to an incident.
pub const INCIDENT_ORIGIN: &str = "incident";

impl Page {
    /// This page calls the incident commander to a declared incident.
    pub fn for_commander(&self) -> bool {
        self.origin == INCIDENT_ORIGIN
    }
    pub fn is_open(&self) -> bool {
        self.status != PageStatus::Resolved
    }
    /// Handled by the bot tier alone: no person was ever notified.
    pub fn bot_only(&self) -> bool {
        self.notified.is_empty()
    }
}

/// A status or level change of a page, with who or what caused it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Transition {
    pub page: PageId,
    pub at: Timestamp,
    pub from: String,
    pub to: String,
    pub level: u32,
    pub by: String,
    pub cause: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Recipient {
    Person {
        name: String,
        contacts: Vec<Contact>,
    },
    /// The team's chat, where anyone may acknowledge.
    TeamChat {
        team: String,
        contacts: Vec<Contact>,
    },
}

impl Recipient {
    pub fn contacts(&self) -> &[Contact] {
        match self {
            Recipient::Person { contacts, .. } | Recipient::TeamChat { contacts, .. } => contacts,
        }
    }
    /// Replaces every contact's address with what `shown` makes of it
    /// (the shell names webhook URLs by host only in its answers).
    pub fn redact_contacts(&mut self, shown: impl Fn(&Contact) -> String) {
        let (Recipient::Person { contacts, .. } | Recipient::TeamChat { contacts, .. }) = self;
        for c in contacts {
            c.address = shown(c);
        }
    }
    pub fn label(&self) -> String {
        match self {
            Recipient::Person { name, .. } => name.clone(),
            Recipient::TeamChat { team, .. } => format!("#{team} chat"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotifyReason {
    /// The bot tier's chat post in business hours.
    Chat,
    /// A page reached this person's level.
    Page,
    /// Still unacknowledged at the last level.
    Repeat,
    /// Acknowledged but still open too long.
    Renotify,
    /// Information for the team's chat, no page: maintenance scheduled.
    Announce,
}

/// One message to one recipient. The shell renders links and tries the
/// recipient's contacts in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Notification {
    pub id: NotificationId,
    /// The page it is about (None: an announcement, no page to act on).
    pub page: Option<PageId>,
    pub at: Timestamp,
    pub recipient: Recipient,
    pub reason: NotifyReason,
    pub text: String,
}

/// A line in the company-wide feed: every page event is visible to everyone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FeedPost {
    pub at: Timestamp,
    pub page: Option<PageId>,
    pub team: Option<String>,
    pub text: String,
}

/// Alerts dominate the input stream; boxing them would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Input {
    Alert(Alert),
    Acknowledge {
        page: PageId,
        by: String,
    },
    Resolve {
        page: PageId,
        by: String,
    },
    /// Time passed: escalate, re-notify, close quiet flapping pages.
    Tick,
    /// Tell a team's chat something that needs no one to act (a rollout
    /// will move a service in its maintenance window): a notification and
    /// a feed post, never a page.
    Announce(Announcement),
}

/// Information for a team (the service's team; the default team when it
/// is unknown or absent).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Announcement {
    pub team: Option<String>,
    pub text: String,
}

/// What an alert did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertOutcome {
    pub dedup_key: String,
    /// `opened`, `deduplicated`, `grouped`, `acknowledged`, `resolved`, `ignored`.
    pub result: String,
    pub page: Option<PageId>,
}

#[derive(Clone, Debug)]
pub enum Reply {
    Alert(AlertOutcome),
    Page(Box<Page>),
    /// An announcement queued for its team's chat and feed.
    Announced,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PagerError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Default)]
pub struct Outputs {
    /// Pages created or changed (upsert by id; later wins).
    pub pages: Vec<Page>,
    pub transitions: Vec<Transition>,
    pub notifications: Vec<Notification>,
    pub feed: Vec<FeedPost>,
    pub reply: Option<Result<Reply, PagerError>>,
}

impl Outputs {
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty() && self.transitions.is_empty() && self.notifications.is_empty() && self.feed.is_empty()
    }
    pub fn extend(&mut self, other: Outputs) {
        self.pages.extend(other.pages);
        self.transitions.extend(other.transitions);
        self.notifications.extend(other.notifications);
        self.feed.extend(other.feed);
        if other.reply.is_some() {
            self.reply = other.reply;
        }
    }
}

/// Longest summary kept (the Events API v2's own limit).
pub const MAX_SUMMARY: usize = 1024;

pub struct Pager {
    config: Config,
    /// Open pages (and held flapping pages waiting to go quiet).
    pages: HashMap<PageId, Page>,
    /// Alert key → its open page.
    by_key: HashMap<String, PageId>,
    /// (team, service) → the open page that groups its alerts.
    by_group: HashMap<(String, String), PageId>,
    /// (team, alert group) → the open page that groups them: correlated
    /// trouble (a brake engaged in several scopes, many services needing a
    /// human at once) is one incident per team, not one page per alert.
    by_incident: HashMap<(String, String), PageId>,
    /// Page → its (team, alert group), to unindex it when it resolves.
    incident_of: HashMap<PageId, (String, String)>,
    /// (team, alert group) → its last resolved incident, kept for
    /// `Config::regroup` so the group's next alert reopens it.
    resolved_incidents: HashMap<(String, String), Page>,
    /// Alert key → when it opened within the flapping window.
    opens: HashMap<String, VecDeque<i64>>,
    /// (due, page): work per tick is proportional to what is due.
    timers: BTreeSet<(i64, PageId)>,
    seed: u64,
    counter: u64,
}

fn micros(d: std::time::Duration) -> i64 {
    d.as_micros().min(i64::MAX as u128) as i64
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

impl Pager {
    pub fn new(config: Config, seed: u64) -> Pager {
        Pager {
            config,
            pages: HashMap::new(),
            by_key: HashMap::new(),
            by_group: HashMap::new(),
            by_incident: HashMap::new(),
            incident_of: HashMap::new(),
            resolved_incidents: HashMap::new(),
            opens: HashMap::new(),
            timers: BTreeSet::new(),
            seed,
            counter: 0,
        }
    }

    /// Rebuilds the pager after a restart from the open pages and the pages
    /// opened within the flapping window (any status).
    pub fn restore(config: Config, seed: u64, open: Vec<Page>, recent: &[Page]) -> Pager {
        let mut pager = Pager::new(config, seed);
        let mut recent: Vec<&Page> = recent.iter().collect();
        recent.sort_by_key(|p| p.opened_at);
        for p in recent {
            pager.opens.entry(p.dedup_key.clone()).or_default().push_back(p.opened_at.0);
        }
        for mut page in open {
            if !page.is_open() {
                continue;
            }
            let steps = pager.config.team(&page.team).map(|t| t.escalation.len()).unwrap_or(1).max(1) as u32;
            page.level = page.level.min(steps - 1);
            pager.index(&page);
            pager.pages.insert(page.id, page);
        }
        pager
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn open_pages(&self) -> impl Iterator<Item = &Page> {
        self.pages.values()
    }

    pub fn page(&self, id: PageId) -> Option<&Page> {
        self.pages.get(&id)
    }

    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.timers.first().map(|&(t, _)| Timestamp(t))
    }

    fn index(&mut self, page: &Page) {
        for key in &page.open_alerts {
            self.by_key.insert(key.clone(), page.id);
        }
        if page.flapping {
            self.by_key.insert(page.dedup_key.clone(), page.id);
        }
        if let Some(s) = &page.service {
            self.by_group.insert((page.team.clone(), s.clone()), page.id);
        }
        if let Some(t) = page.next_at {
            self.timers.insert((t.0, page.id));
        }
    }

    fn next_entropy(&mut self) -> u64 {
        self.counter += 1;
        // splitmix64 of seed and counter: distinct, reproducible.
        let mut z = self.seed.wrapping_add(self.counter.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn step(&mut self, input: Input, now: Timestamp) -> Outputs {
        let mut out = Outputs::default();
        match input {
            Input::Tick => self.tick(now, &mut out),
            Input::Alert(alert) => {
                let reply = self.alert(alert, now, &mut out).map(Reply::Alert);
                out.reply = Some(reply);
            }
            Input::Acknowledge { page, by } => {
                let reply = self.acknowledge(page, &by, now, &mut out).map(|p| Reply::Page(Box::new(p)));
                out.reply = Some(reply);
            }
            Input::Resolve { page, by } => {
                let reply =
                    self.resolve_by_id(page, &by, "resolved by hand", now, &mut out).map(|p| Reply::Page(Box::new(p)));
                out.reply = Some(reply);
            }
            Input::Announce(a) => self.announce(a, now, &mut out),
        }
        out
    }

    /// One chat message to the team and one feed post; no page, no timer.
    fn announce(&mut self, a: Announcement, now: Timestamp, out: &mut Outputs) {
        let (team, _) = self.team_name(a.team.as_deref());
        let text = truncate(a.text, MAX_SUMMARY);
        let contacts = self.config.team(&team).map(|t| t.chat.clone()).unwrap_or_default();
        let id = NotificationId::new_at(now.0, self.next_entropy());
        out.notifications.push(Notification {
            id,
            page: None,
            at: now,
            recipient: Recipient::TeamChat { team: team.clone(), contacts },
            reason: NotifyReason::Announce,
            text: text.clone(),
        });
        out.feed.push(FeedPost { at: now, page: None, team: Some(team), text });
        out.reply = Some(Ok(Reply::Announced));
    }

    fn set_timer(&mut self, id: PageId, at: Option<Timestamp>) {
        let Some(page) = self.pages.get_mut(&id) else { return };
        if let Some(old) = page.next_at {
            self.timers.remove(&(old.0, id));
        }
        page.next_at = at;
        if let Some(t) = at {
            self.timers.insert((t.0, id));
        }
    }

    fn team_name(&self, wanted: Option<&str>) -> (String, Option<String>) {
        match wanted {
            Some(t) if self.config.team(t).is_some() => (t.to_string(), None),
            Some(t) => (
                self.config.default_team.clone(),
                Some(format!("team {t:?} is not configured; routed to {}", self.config.default_team)),
            ),
            None => (self.config.default_team.clone(), None),
        }
    }

    fn alert(&mut self, alert: Alert, now: Timestamp, out: &mut Outputs) -> Result<AlertOutcome, PagerError> {
        if alert.dedup_key.is_empty() {
            return Err(PagerError::Invalid("an alert needs a dedup key".into()));
        }
        let key = alert.dedup_key.clone();
        let outcome =
            |result: &str, page: Option<PageId>| AlertOutcome { dedup_key: key.clone(), result: result.into(), page };
        match alert.action {
            AlertAction::Trigger => {
                if let Some(&id) = self.by_key.get(&key) {
                    let quiet_timer = {
                        let page = self.pages.get_mut(&id).expect("by_key points at an open page");
                        page.alerts += 1;
                        let reopened = !page.open_alerts.contains(&key);
                        if reopened {
                            page.open_alerts.insert(key.clone());
                            page.flaps += 1;
                        }
                        reopened && page.flapping
                    };
                    if quiet_timer {
                        // Reopened while held: record it, stop the quiet countdown.
                        self.opens.entry(key.clone()).or_default().push_back(now.0);
                        self.set_timer(id, None);
                    }
                    out.pages.push(self.pages[&id].clone());
                    return Ok(outcome("deduplicated", Some(id)));
                }
                let (team, note) = self.team_name(alert.team.as_deref());
                // Same alert group and team already paging: join it.
                if let Some(group) = &alert.group {
                    if let Some(&id) = self.by_incident.get(&(team.clone(), group.clone())) {
                        self.join_page(id, &key, &team, &format!("group {group}"), &alert.summary, now, out);
                        return Ok(outcome("grouped", Some(id)));
                    }
                    if let Some(id) = self.reopen(&team, group, &alert, now, out) {
                        return Ok(outcome("reopened", Some(id)));
                    }
                }
                // Same service and team already paging: join it.
                if let Some(service) = &alert.service {
                    if let Some(&id) = self.by_group.get(&(team.clone(), service.clone())) {
                        self.join_page(id, &key, &team, service, &alert.summary, now, out);
                        return Ok(outcome("grouped", Some(id)));
                    }
                }
                let opens = self.note_open(&key, now);
                let flapping = opens >= self.config.flapping.threshold;
                let id = self.open_page(alert, team.clone(), flapping, now, out);
                if let Some(note) = note {
                    out.feed.push(FeedPost { at: now, page: Some(id), team: Some(team.clone()), text: note });
                }
                if flapping {
                    out.feed.push(FeedPost {
                        at: now,
                        page: Some(id),
                        team: Some(team),
                        text: format!(
                            "{key} is flapping: opened {opens} times within {}; held in the bot tier, nobody is paged until it settles",
                            human(self.config.flapping.window)
                        ),
                    });
                }
                Ok(outcome("opened", Some(id)))
            }
            AlertAction::Acknowledge => match self.by_key.get(&key).copied() {
                Some(id) => {
                    let by = format!("{} ({})", alert.origin, alert.source);
                    self.acknowledge(id, &by, now, out)?;
                    Ok(outcome("acknowledged", Some(id)))
                }
                // Like the Events API: an acknowledge for nothing open is dropped.
                None => Ok(outcome("ignored", None)),
            },
            AlertAction::Resolve => {
                let Some(id) = self.by_key.get(&key).copied() else {
                    return Ok(outcome("ignored", None));
                };
                let (empty, flapping) = {
                    let page = self.pages.get_mut(&id).expect("by_key points at an open page");
                    page.open_alerts.remove(&key);
                    (page.open_alerts.is_empty(), page.flapping)
                };
                if flapping {
                    // Keep the key pointing here so a reopen joins the held page.
                    if empty {
                        let quiet = now.plus(self.config.flapping.quiet);
                        self.set_timer(id, Some(quiet));
                    }
                    out.pages.push(self.pages[&id].clone());
                    return Ok(outcome("resolved", Some(id)));
                }
                self.by_key.remove(&key);
                if empty {
                    let by = alert.origin.clone();
                    self.resolve_by_id(id, &by, "its alerts resolved", now, out)?;
                } else {
                    out.pages.push(self.pages[&id].clone());
                }
                Ok(outcome("resolved", Some(id)))
            }
        }
    }

    /// Counts an opening of `key`; how often it opened within the flapping
    /// window, this one included.
    fn note_open(&mut self, key: &str, now: Timestamp) -> u32 {
        let window = micros(self.config.flapping.window);
        let q = self.opens.entry(key.to_string()).or_default();
        while q.front().is_some_and(|&t| t <= now.0 - window) {
            q.pop_front();
        }
        q.push_back(now.0);
        q.len() as u32
    }

    /// An alert joins an open page of the same incident (`why`: its group
    /// or its service): counted on the page, said in the feed.
    #[allow(clippy::too_many_arguments)]
    fn join_page(
        &mut self,
        id: PageId,
        key: &str,
        team: &str,
        why: &str,
        summary: &str,
        now: Timestamp,
        out: &mut Outputs,
    ) {
        let Some(page) = self.pages.get_mut(&id) else { return };
        page.alert_keys.insert(key.to_string());
        page.open_alerts.insert(key.to_string());
        page.alerts += 1;
        out.pages.push(page.clone());
        let text = format!("[{team}] {key} joined page {id} ({why}): {summary}");
        self.by_key.insert(key.to_string(), id);
        out.feed.push(FeedPost { at: now, page: Some(id), team: Some(team.to_string()), text });
    }

    /// Reopens the team's incident of `group` if it resolved within
    /// `Config::regroup`: the alert joins it and it escalates afresh.
    fn reopen(&mut self, team: &str, group: &str, alert: &Alert, now: Timestamp, out: &mut Outputs) -> Option<PageId> {
        let incident = (team.to_string(), group.to_string());
        let recent = self.resolved_incidents.get(&incident)?;
        let resolved_at = recent.resolved_at?;
        if self.config.regroup.is_zero() || now.0 - resolved_at.0 > micros(self.config.regroup) {
            self.resolved_incidents.remove(&incident);
            return None;
        }
        let mut page = self.resolved_incidents.remove(&incident)?;
        let id = page.id;
        let key = alert.dedup_key.clone();
        // Coming back again and again is flapping: held in the bot tier.
        let opens = self.note_open(&key, now);
        let flapping = opens >= self.config.flapping.threshold;
        page.flapping = flapping;
        page.status = PageStatus::Triggered;
        page.resolved_at = None;
        page.resolved_by = None;
        page.acknowledged_at = None;
        page.acknowledged_by = None;
        page.alert_keys.insert(key.clone());
        page.open_alerts = BTreeSet::from([key.clone()]);
        page.alerts += 1;
        page.level_name = String::new();
        let level = page.level;
        self.by_key.insert(key.clone(), id);
        self.by_incident.insert(incident.clone(), id);
        self.incident_of.insert(id, incident);
        if let Some(s) = &page.service {
            self.by_group.entry((team.to_string(), s.clone())).or_insert(id);
        }
        self.pages.insert(id, page);
        out.transitions.push(Transition {
            page: id,
            at: now,
            from: "resolved".into(),
            to: "triggered".into(),
            level,
            by: alert.origin.clone(),
            cause: format!("reopened by {key}: its group {group} is back within {}", human(self.config.regroup)),
        });
        out.feed.push(FeedPost {
            at: now,
            page: Some(id),
            team: Some(team.to_string()),
            text: format!("[{team}] page {id} reopened by {key} ({group}): {}", alert.summary),
        });
        let first_step = if alert.needs_person() && !flapping {
            self.config
                .team(team)
                .and_then(|t| t.escalation.iter().position(|s| !matches!(s.target, Target::Bot)))
                .unwrap_or(0)
        } else {
            0
        };
        self.enter_step(id, first_step, "reopened", now, out);
        Some(id)
    }

    fn open_page(&mut self, alert: Alert, team: String, flapping: bool, now: Timestamp, out: &mut Outputs) -> PageId {
        let id = PageId::new_at(now.0, self.next_entropy());
        // Held (flapping) pages stay with the bot tier whatever they report.
        let first_step = if alert.needs_person() && !flapping {
            self.config
                .team(&team)
                .and_then(|t| t.escalation.iter().position(|s| !matches!(s.target, Target::Bot)))
                .unwrap_or(0)
        } else {
            0
        };
        if let Some(group) = &alert.group {
            let incident = (team.clone(), group.clone());
            self.by_incident.insert(incident.clone(), id);
            self.incident_of.insert(id, incident);
        }
        let business_hours = self.config.team(&team).is_some_and(|t| t.business_hours.contains(now, &t.time_zone));
        let key = alert.dedup_key.clone();
        let page = Page {
            id,
            dedup_key: key.clone(),
            summary: truncate(if alert.summary.is_empty() { key.clone() } else { alert.summary }, MAX_SUMMARY),
            source: alert.source,
            severity: alert.severity,
            team: team.clone(),
            service: alert.service,
            class: alert.class,
            origin: alert.origin.clone(),
            status: PageStatus::Triggered,
            level: 0,
            level_name: String::new(),
            opened_at: now,
            acknowledged_at: None,
            acknowledged_by: None,
            resolved_at: None,
            resolved_by: None,
            alert_keys: BTreeSet::from([key.clone()]),
            open_alerts: BTreeSet::from([key.clone()]),
            alerts: 1,
            notified: Vec::new(),
            flapping,
            flaps: 0,
            business_hours,
            next_at: None,
            renotified: 0,
            details: alert.details,
        };
        self.by_key.insert(key, id);
        if let Some(s) = &page.service {
            self.by_group.insert((team.clone(), s.clone()), id);
        }
        out.transitions.push(Transition {
            page: id,
            at: now,
            from: "none".into(),
            to: "triggered".into(),
            level: 0,
            by: alert.origin,
            cause: page.summary.clone(),
        });
        out.feed.push(FeedPost {
            at: now,
            page: Some(id),
            team: Some(team),
            text: format!(
                "[{}] page {} opened: {} ({}, from {})",
                page.team,
                id,
                page.summary,
                page.severity.name(),
                page.source
            ),
        });
        let commander = page.for_commander();
        self.pages.insert(id, page);
        if commander {
            self.page_commander(id, false, now, out);
            return id;
        }
        let cause = if first_step > 0 { "opened; nothing automatic runs for it: no bot tier" } else { "opened" };
        self.enter_step(id, first_step, cause, now, out);
        id
    }

    /// Moves `id` to escalation step `index` and notifies its target. A step
    /// with nobody to notify is skipped (and said so in the feed).
    fn enter_step(&mut self, id: PageId, mut index: usize, cause: &str, now: Timestamp, out: &mut Outputs) {
        let mut cause = cause.to_string();
        loop {
            let Some(page) = self.pages.get(&id) else { return };
            let Some(team) = self.config.team(&page.team).or_else(|| self.config.team(&self.config.default_team))
            else {
                return;
            };
            let steps = team.escalation.len();
            index = index.min(steps - 1);
            let step: Step = team.escalation[index].clone();
            let business = team.business_hours.contains(now, &team.time_zone);
            let from_level = page.level;
            let first = page.level_name.is_empty();
            let level_name = step.target.label();
            let (recipient, skipped) = self.recipient(team, &step.target, now);
            let team_name = team.name.clone();
            {
                let page = self.pages.get_mut(&id).expect("checked above");
                page.level = index as u32;
                page.level_name = level_name.clone();
            }
            if !first {
                out.transitions.push(Transition {
                    page: id,
                    at: now,
                    from: format!("level {from_level}"),
                    to: format!("level {index} ({level_name})"),
                    level: index as u32,
                    by: "escalation".into(),
                    cause: cause.clone(),
                });
            }
            let page = &self.pages[&id];
            let summary = page.summary.clone();
            let held = page.flapping;
            match (&step.target, recipient) {
                (Target::Bot, _) => {
                    let text = if business {
                        format!(
                            "[{team_name}] bot tier has page {id}: {summary}. The remedy runs; anyone may acknowledge."
                        )
                    } else {
                        format!("[{team_name}] bot tier has page {id}: {summary}. The remedy runs.")
                    };
                    out.feed.push(FeedPost { at: now, page: Some(id), team: Some(team_name.clone()), text });
                    if business && !held {
                        let contacts = self.config.team(&team_name).map(|t| t.chat.clone()).unwrap_or_default();
                        let text = format!(
                            "Page {id} ({team_name}): {summary}. The bot tier is running the remedy; anyone may acknowledge."
                        );
                        self.notify(
                            id,
                            Recipient::TeamChat { team: team_name.clone(), contacts },
                            NotifyReason::Chat,
                            text,
                            now,
                            out,
                        );
                    }
                }
                (_, Some(recipient)) => {
                    let name = recipient.label();
                    let text = format!("Page {id} ({team_name}, {level_name}): {summary}");
                    self.notify(id, recipient, NotifyReason::Page, text, now, out);
                    out.feed.push(FeedPost {
                        at: now,
                        page: Some(id),
                        team: Some(team_name.clone()),
                        text: format!("[{team_name}] page {id} escalated to {level_name}: {name} notified"),
                    });
                }
                (_, None) => {
                    out.feed.push(FeedPost {
                        at: now,
                        page: Some(id),
                        team: Some(team_name.clone()),
                        text: format!("[{team_name}] page {id}: {skipped}; skipping {level_name}"),
                    });
                    if index + 1 < steps {
                        index += 1;
                        cause = format!("{level_name} skipped: {skipped}");
                        continue;
                    }
                }
            }
            // Held (flapping) pages stay with the bot: no timer until they go quiet.
            let timer = if held && matches!(step.target, Target::Bot) {
                None
            } else {
                let wait = if business { step.business_hours_timeout.unwrap_or(step.timeout) } else { step.timeout };
                Some(now.plus(wait))
            };
            self.set_timer(id, timer);
            out.pages.push(self.pages[&id].clone());
            return;
        }
    }

    /// Pages (or, `repeat`, pages again) the incident commander on call for
    /// an incident's page. The page sits at the team's incident-commander
    /// step (its last step when it has none) and is repeated after that
    /// step's timeout until someone acknowledges it; with nobody on call
    /// the feed says so and the next try is at the same timeout.
    fn page_commander(&mut self, id: PageId, repeat: bool, now: Timestamp, out: &mut Outputs) {
        let Some(page) = self.pages.get(&id) else { return };
        let Some(team) = self.config.team(&page.team).or_else(|| self.config.team(&self.config.default_team)).cloned()
        else {
            return;
        };
        let step = team.escalation.iter().position(|s| matches!(s.target, Target::IncidentCommander));
        let level = step.unwrap_or(team.escalation.len().saturating_sub(1));
        let wait = step.map_or(crate::config::DEFAULT_LEVEL_WAIT, |i| team.escalation[i].timeout);
        let (summary, waited) = (page.summary.clone(), human(now.since(page.opened_at)));
        let (recipient, skipped) = self.recipient(&team, &Target::IncidentCommander, now);
        if let Some(p) = self.pages.get_mut(&id) {
            p.level = level as u32;
            p.level_name = Target::IncidentCommander.label();
        }
        let team_name = team.name.clone();
        match recipient {
            Some(r) => {
                let name = r.label();
                let (reason, text, post) = if repeat {
                    (
                        NotifyReason::Repeat,
                        format!("STILL UNACKNOWLEDGED after {waited}: page {id} (incident commander): {summary}"),
                        format!("[{team_name}] page {id} still unacknowledged by the incident commander after {waited}; {name} paged again"),
                    )
                } else {
                    (
                        NotifyReason::Page,
                        format!("Page {id} (incident commander): {summary}"),
                        format!("[{team_name}] page {id}: incident commander {name} paged: {summary}"),
                    )
                };
                self.notify(id, r, reason, text, now, out);
                out.feed.push(FeedPost { at: now, page: Some(id), team: Some(team_name), text: post });
            }
            None => out.feed.push(FeedPost {
                at: now,
                page: Some(id),
                team: Some(team_name),
                text: format!("[{}] page {id}: {skipped}; trying again in {}", team.name, human(wait)),
            }),
        }
        self.set_timer(id, Some(now.plus(wait)));
        out.pages.push(self.pages[&id].clone());
    }

    /// Who a target means now; `None` with the reason when nobody.
    fn recipient(&self, team: &Team, target: &Target, now: Timestamp) -> (Option<Recipient>, String) {
        let person = |name: &str| -> Recipient {
            let contacts = self.config.person(Some(team), name).map(|p| p.contacts.clone()).unwrap_or_default();
            Recipient::Person { name: name.to_string(), contacts }
        };
        match target {
            Target::Bot => (None, String::new()),
            Target::Schedule(s) => match team.schedule(s).and_then(|s| s.on_call(now)) {
                Some(p) => (Some(person(p)), String::new()),
                None => (None, format!("nobody is on call in {s}")),
            },
            Target::Person(p) => (Some(person(p)), String::new()),
            Target::Manager => match &team.manager {
                Some(m) => (Some(person(m)), String::new()),
                None => (None, "the team has no manager configured".into()),
            },
            Target::IncidentCommander => match self.config.incident_commanders.on_call(now) {
                Some(p) => (Some(person(p)), String::new()),
                None => (None, "no incident commander is on call".into()),
            },
        }
    }

    fn notify(
        &mut self,
        page: PageId,
        recipient: Recipient,
        reason: NotifyReason,
        text: String,
        now: Timestamp,
        out: &mut Outputs,
    ) {
        if let Recipient::Person { name, .. } = &recipient {
            if let Some(p) = self.pages.get_mut(&page) {
                if !p.notified.contains(name) {
                    p.notified.push(name.clone());
                }
            }
        }
        let id = NotificationId::new_at(now.0, self.next_entropy());
        out.notifications.push(Notification { id, page: Some(page), at: now, recipient, reason, text });
    }

    fn acknowledge(&mut self, id: PageId, by: &str, now: Timestamp, out: &mut Outputs) -> Result<Page, PagerError> {
        let Some(page) = self.pages.get_mut(&id) else {
            return Err(PagerError::NotFound(format!("no open page {id}")));
        };
        if page.status == PageStatus::Acknowledged {
            return Ok(page.clone());
        }
        page.status = PageStatus::Acknowledged;
        page.acknowledged_at = Some(now);
        page.acknowledged_by = Some(by.to_string());
        let (team, level, summary) = (page.team.clone(), page.level, page.summary.clone());
        let held = page.flapping;
        let after = self
            .config
            .team(&team)
            .map(|t| t.renotify_acknowledged_after)
            .unwrap_or(crate::config::DEFAULT_RENOTIFY_ACKNOWLEDGED);
        // A held page keeps its quiet countdown; others wait for re-notification.
        if !(held && self.pages[&id].open_alerts.is_empty()) {
            self.set_timer(id, Some(now.plus(after)));
        }
        out.transitions.push(Transition {
            page: id,
            at: now,
            from: "triggered".into(),
            to: "acknowledged".into(),
            level,
            by: by.to_string(),
            cause: "acknowledged".into(),
        });
        out.feed.push(FeedPost {
            at: now,
            page: Some(id),
            team: Some(team.clone()),
            text: format!("[{team}] page {id} acknowledged by {by}: {summary}"),
        });
        let page = self.pages[&id].clone();
        out.pages.push(page.clone());
        Ok(page)
    }

    fn resolve_by_id(
        &mut self,
        id: PageId,
        by: &str,
        cause: &str,
        now: Timestamp,
        out: &mut Outputs,
    ) -> Result<Page, PagerError> {
        let Some(mut page) = self.pages.remove(&id) else {
            return Err(PagerError::NotFound(format!("no open page {id}")));
        };
        if let Some(t) = page.next_at.take() {
            self.timers.remove(&(t.0, id));
        }
        for key in page.alert_keys.iter().chain(std::iter::once(&page.dedup_key)) {
            if self.by_key.get(key) == Some(&id) {
                self.by_key.remove(key);
            }
        }
        if let Some(s) = &page.service {
            let g = (page.team.clone(), s.clone());
            if self.by_group.get(&g) == Some(&id) {
                self.by_group.remove(&g);
            }
        }
        let incident = self.incident_of.remove(&id);
        if let Some(incident) = &incident {
            if self.by_incident.get(incident) == Some(&id) {
                self.by_incident.remove(incident);
            }
        }
        let from = page.status;
        page.status = PageStatus::Resolved;
        page.resolved_at = Some(now);
        page.resolved_by = Some(by.to_string());
        page.open_alerts.clear();
        out.transitions.push(Transition {
            page: id,
            at: now,
            from: from.name().into(),
            to: "resolved".into(),
            level: page.level,
            by: by.to_string(),
            cause: cause.to_string(),
        });
        let team = page.team.clone();
        let lasted = human(now.since(page.opened_at));
        let text = if page.flapping {
            format!(
                "[{team}] flapping page {id} settled: {} reopened {} times over {lasted}, held in the bot tier; nobody was paged",
                page.dedup_key, page.flaps
            )
        } else if page.bot_only() {
            format!(
                "[{team}] page {id} resolved by {by} after {lasted}, handled by the bot tier alone: {}",
                page.summary
            )
        } else {
            format!("[{team}] page {id} resolved by {by} after {lasted}: {}", page.summary)
        };
        out.feed.push(FeedPost { at: now, page: Some(id), team: Some(team), text });
        out.pages.push(page.clone());
        if let Some(incident) = incident.filter(|_| !self.config.regroup.is_zero() && !page.flapping) {
            self.resolved_incidents.insert(incident, page.clone());
        }
        Ok(page)
    }

    fn tick(&mut self, now: Timestamp, out: &mut Outputs) {
        while let Some(&(due, id)) = self.timers.first() {
            if due > now.0 {
                break;
            }
            self.timers.remove(&(due, id));
            let Some(page) = self.pages.get_mut(&id) else { continue };
            page.next_at = None;
            let page = page.clone();
            let team = self.config.team(&page.team).cloned();
            let Some(team) = team else { continue };
            if page.flapping && page.open_alerts.is_empty() {
                let _ = self.resolve_by_id(id, "bot", "flapping alert stayed quiet", now, out);
                continue;
            }
            match page.status {
                PageStatus::Triggered if page.for_commander() => self.page_commander(id, true, now, out),
                PageStatus::Triggered => {
                    let steps = team.escalation.len();
                    let index = page.level as usize;
                    let waited = human(now.since(page.opened_at));
                    if index + 1 < steps {
                        let cause = format!("not acknowledged at {} (open {waited})", page.level_name);
                        self.enter_step(id, index + 1, &cause, now, out);
                    } else {
                        // The last level keeps being paged until someone answers.
                        let step = &team.escalation[index];
                        let (recipient, skipped) = self.recipient(&team, &step.target, now);
                        let text =
                            format!("STILL UNACKNOWLEDGED after {waited}: page {id} ({}): {}", team.name, page.summary);
                        match recipient {
                            Some(r) => self.notify(id, r, NotifyReason::Repeat, text, now, out),
                            None => out.feed.push(FeedPost {
                                at: now,
                                page: Some(id),
                                team: Some(team.name.clone()),
                                text: format!("{text}; {skipped}"),
                            }),
                        }
                        out.feed.push(FeedPost {
                            at: now,
                            page: Some(id),
                            team: Some(team.name.clone()),
                            text: format!(
                                "[{}] page {id} still unacknowledged at the last level ({}) after {waited}",
                                team.name, page.level_name
                            ),
                        });
                        self.set_timer(id, Some(now.plus(step.timeout)));
                        out.pages.push(self.pages[&id].clone());
                    }
                }
                PageStatus::Acknowledged => {
                    let by = page.acknowledged_by.clone().unwrap_or_default();
                    let open_for = human(now.since(page.opened_at));
                    let text = format!(
                        "Page {id} ({}) acknowledged by {by} is still open after {open_for}: {}",
                        team.name, page.summary
                    );
                    // The acknowledger if it is a known person, else whoever holds the level now.
                    let recipient = match self.config.person(Some(&team), &by) {
                        Some(p) => Some(Recipient::Person { name: p.name.clone(), contacts: p.contacts.clone() }),
                        None => {
                            self.recipient(
                                &team,
                                &team.escalation[(page.level as usize).min(team.escalation.len() - 1)].target,
                                now,
                            )
                            .0
                        }
                    };
                    let recipient = recipient
                        .unwrap_or(Recipient::TeamChat { team: team.name.clone(), contacts: team.chat.clone() });
                    self.notify(id, recipient, NotifyReason::Renotify, text, now, out);
                    if let Some(p) = self.pages.get_mut(&id) {
                        p.renotified += 1;
                    }
                    out.feed.push(FeedPost {
                        at: now,
                        page: Some(id),
                        team: Some(team.name.clone()),
                        text: format!(
                            "[{}] page {id} acknowledged by {by} still open after {open_for}; re-notified",
                            team.name
                        ),
                    });
                    self.set_timer(id, Some(now.plus(team.renotify_acknowledged_after)));
                    out.pages.push(self.pages[&id].clone());
                }
                PageStatus::Resolved => {}
            }
        }
    }
}

/// "3m", "1h 5m", "45s".
pub fn human(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        if s.is_multiple_of(60) {
            format!("{}m", s / 60)
        } else {
            format!("{}m {}s", s / 60, s % 60)
        }
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else {
        format!("{}h {}m", s / 3600, (s % 3600) / 60)
    }
}
