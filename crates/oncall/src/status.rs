//! The public status site's pure part: what state a component is in, given
//! how many of its services are down and whether the mass-uncertainty brake
//! holds; incidents and their updates (Statuspage's states: investigating →
//! identified → monitoring → resolved); the daily uptime of a component
//! from its samples. The server samples, stores and renders.

use drover_model::{IncidentId, PageId, Timestamp};
use serde::{Deserialize, Serialize};

/// A component's state, worst last (Statuspage's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ComponentState {
    Operational,
    DegradedPerformance,
    PartialOutage,
    MajorOutage,
}

impl ComponentState {
    pub const ALL: [ComponentState; 4] = [
        ComponentState::Operational,
        ComponentState::DegradedPerformance,
        ComponentState::PartialOutage,
        ComponentState::MajorOutage,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentState::Operational => "operational",
            ComponentState::DegradedPerformance => "degraded_performance",
            ComponentState::PartialOutage => "partial_outage",
            ComponentState::MajorOutage => "major_outage",
        }
    }
    /// As people read it on the page.
    pub fn label(self) -> &'static str {
        match self {
            ComponentState::Operational => "Operational",
            ComponentState::DegradedPerformance => "Degraded performance",
            ComponentState::PartialOutage => "Partial outage",
            ComponentState::MajorOutage => "Major outage",
        }
    }
    pub fn parse(text: &str) -> Option<ComponentState> {
        ComponentState::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// When a component's services count as degraded, in an outage, in a
/// major outage: shares of its live services that are down (their primary
/// uncertain, recovering or unavailable: writes may fail).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// At or above this share: degraded performance (below it a few
    /// services healing by themselves are not the platform's news).
    pub degraded: f64,
    /// At or above: partial outage.
    pub partial: f64,
    /// At or above: major outage.
    pub major: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { degraded: 0.01, partial: 0.05, major: 0.5 }
    }
}

/// The state of a component with `live` services of which `down` are down;
/// `braked`: the brake holds a zone the component's services live in, which
/// is a major outage whatever the counts say (the engine saw mass
/// uncertainty and stopped acting on it). A component with no service is
/// operational.
pub fn component_state(live: u64, down: u64, braked: bool, t: &Thresholds) -> ComponentState {
    if braked {
        return ComponentState::MajorOutage;
    }
    if live == 0 || down == 0 {
        return ComponentState::Operational;
    }
    let share = down.min(live) as f64 / live as f64;
    if share >= t.major {
        ComponentState::MajorOutage
    } else if share >= t.partial {
        ComponentState::PartialOutage
    } else if share >= t.degraded {
        ComponentState::DegradedPerformance
    } else {
        ComponentState::Operational
    }
}

/// One day of one component: how many samples were taken and how many of
/// them found it in each state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UptimeDay {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub samples: u64,
    pub degraded: u64,
    pub partial: u64,
    pub major: u64,
}

impl UptimeDay {
    /// The share of the day the component was up: a major outage counts
    /// whole, a partial one as 30% (Statuspage's weighting), degraded
    /// performance not at all. `None` without samples.
    pub fn uptime(&self) -> Option<f64> {
        if self.samples == 0 {
            return None;
        }
        let down = self.major as f64 + 0.3 * self.partial as f64;
        Some((1.0 - down / self.samples as f64).clamp(0.0, 1.0))
    }
    /// The worst state seen that day.
    pub fn worst(&self) -> ComponentState {
        if self.major > 0 {
            ComponentState::MajorOutage
        } else if self.partial > 0 {
            ComponentState::PartialOutage
        } else if self.degraded > 0 {
            ComponentState::DegradedPerformance
        } else {
            ComponentState::Operational
        }
    }
}

/// The uptime over several days: samples weighted alike.
pub fn uptime_over(days: &[UptimeDay]) -> Option<f64> {
    let total = UptimeDay {
        day: String::new(),
        samples: days.iter().map(|d| d.samples).sum(),
        degraded: days.iter().map(|d| d.degraded).sum(),
        partial: days.iter().map(|d| d.partial).sum(),
        major: days.iter().map(|d| d.major).sum(),
    };
    total.uptime()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IncidentStatus {
    Investigating,
    Identified,
    Monitoring,
    Resolved,
}

impl IncidentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentStatus::Investigating => "investigating",
            IncidentStatus::Identified => "identified",
            IncidentStatus::Monitoring => "monitoring",
            IncidentStatus::Resolved => "resolved",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            IncidentStatus::Investigating => "Investigating",
            IncidentStatus::Identified => "Identified",
            IncidentStatus::Monitoring => "Monitoring",
            IncidentStatus::Resolved => "Resolved",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IncidentSeverity {
    Minor,
    Major,
    Critical,
}

/// One status update, written once: on the status site, in its feed, in
/// the company-wide feed and the teams' chat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IncidentUpdate {
    /// 1, 2, … within its incident.
    pub seq: u32,
    pub at: Timestamp,
    pub status: IncidentStatus,
    pub message: String,
    /// Who posted it (the token's name).
    pub by: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Incident {
    pub id: IncidentId,
    pub title: String,
    pub severity: IncidentSeverity,
    /// Status-site components it affects (e.g. `PostgreSQL`).
    pub components: Vec<String>,
    pub status: IncidentStatus,
    /// Who declared it.
    pub declared_by: String,
    /// The incident commander on call when it was declared (the
    /// company-wide schedule), if anyone is.
    pub commander: Option<String>,
    /// The page it was declared from.
    pub page: Option<PageId>,
    /// The page that called the incident commander to it (on the pager,
    /// acknowledged like any page; resolved with the incident).
    #[serde(default)]
    pub commander_page: Option<PageId>,
    pub created_at: Timestamp,
    pub resolved_at: Option<Timestamp>,
    /// Oldest first; the first is the declaration's own.
    pub updates: Vec<IncidentUpdate>,
    /// What the responders noted while they worked, oldest first: on the
    /// timeline and in the review, never on the public status site.
    #[serde(default)]
    pub notes: Vec<IncidentNote>,
}

/// A responder's note on an incident's timeline (internal, not published).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IncidentNote {
    /// 1, 2, … within its incident.
    pub seq: u32,
    pub at: Timestamp,
    pub message: String,
    /// Who wrote it (the token's name).
    pub by: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum IncidentError {
    #[error("the incident was resolved at {0}; declare a new one")]
    Resolved(Timestamp),
    #[error("an update needs a message")]
    EmptyMessage,
}

impl Incident {
    /// A new incident, `investigating`, with its first update.
    #[allow(clippy::too_many_arguments)]
    pub fn declare(
        id: IncidentId,
        title: String,
        severity: IncidentSeverity,
        components: Vec<String>,
        message: Option<String>,
        declared_by: String,
        commander: Option<String>,
        page: Option<PageId>,
        now: Timestamp,
    ) -> Incident {
        let message =
            message.filter(|m| !m.trim().is_empty()).unwrap_or_else(|| format!("We are investigating: {title}."));
        Incident {
            id,
            title,
            severity,
            components,
            status: IncidentStatus::Investigating,
            declared_by: declared_by.clone(),
            commander,
            page,
            commander_page: None,
            created_at: now,
            resolved_at: None,
            updates: vec![IncidentUpdate {
                seq: 1,
                at: now,
                status: IncidentStatus::Investigating,
                message,
                by: declared_by,
            }],
            notes: Vec::new(),
        }
    }

    /// Adds a note, also after the incident resolved (the review is
    /// written then).
    pub fn note(&mut self, message: String, by: String, now: Timestamp) -> Result<&IncidentNote, IncidentError> {
        if message.trim().is_empty() {
            return Err(IncidentError::EmptyMessage);
        }
        let seq = self.notes.last().map_or(1, |n| n.seq + 1);
        let at = self.notes.last().map_or(now, |n| n.at.max(now));
        self.notes.push(IncidentNote { seq, at, message, by });
        Ok(self.notes.last().expect("just pushed"))
    }

    /// Posts an update: any open status may follow any other (people
    /// learn things out of order), `resolved` ends the incident, and a
    /// resolved incident takes no more updates.
    pub fn update(
        &mut self,
        status: IncidentStatus,
        message: String,
        by: String,
        now: Timestamp,
    ) -> Result<&IncidentUpdate, IncidentError> {
        if let Some(at) = self.resolved_at {
            return Err(IncidentError::Resolved(at));
        }
        if message.trim().is_empty() {
            return Err(IncidentError::EmptyMessage);
        }
        let seq = self.updates.last().map_or(1, |u| u.seq + 1);
        let at = self.updates.last().map_or(now, |u| u.at.max(now));
        self.status = status;
        if status == IncidentStatus::Resolved {
            self.resolved_at = Some(at);
        }
        self.updates.push(IncidentUpdate { seq, at, status, message, by });
        Ok(self.updates.last().expect("just pushed"))
    }
}

/// One line of an incident's timeline.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TimelineEntry {
    pub at: Timestamp,
    /// `update` (published), `note` (a responder's), `page` (a page's
    /// transition), `event` (the engine's event log), `action` (an engine
    /// action: a remedy, a rollout's step).
    pub source: String,
    pub text: String,
    /// The service it concerns, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The page it concerns, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<PageId>,
}

/// What an incident's timeline is gathered from besides the incident
/// itself: the related pages with their transitions, and the engine's
/// events and actions of the related services within the window.
#[derive(Clone, Debug, Default)]
pub struct Related {
    pub pages: Vec<(crate::Page, Vec<crate::Transition>)>,
    pub events: Vec<drover_model::Event>,
    pub actions: Vec<drover_model::ActionRecord>,
}

/// An action's kind as the API names it (`promote`, `provision`, …).
fn action_name(a: &drover_model::ActionRecord) -> String {
    serde_json::to_value(&a.kind)
        .ok()
        .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_string))
        .unwrap_or_else(|| "action".into())
}

/// The incident's timeline, in time order: its updates and notes, the
/// transitions of its related pages, the engine's events and actions.
pub fn timeline(incident: &Incident, related: &Related) -> Vec<TimelineEntry> {
    let mut out: Vec<TimelineEntry> = incident
        .updates
        .iter()
        .map(|u| TimelineEntry {
            at: u.at,
            source: "update".into(),
            text: format!("{} ({}): {}", u.status.label(), u.by, u.message),
            service: None,
            page: None,
        })
        .collect();
    out.extend(incident.notes.iter().map(|n| TimelineEntry {
        at: n.at,
        source: "note".into(),
        text: format!("{}: {}", n.by, n.message),
        service: None,
        page: None,
    }));
    for (page, transitions) in &related.pages {
        let what = if page.for_commander() {
            "incident commander's page".to_string()
        } else if incident.page == Some(page.id) {
            format!("page (declared from) \"{}\"", page.summary)
        } else {
            format!("page \"{}\"", page.summary)
        };
        out.extend(transitions.iter().map(|t| TimelineEntry {
            at: t.at,
            source: "page".into(),
            text: format!("{what} {} → {} by {}: {}", t.from, t.to, t.by, t.cause),
            service: page.service.clone(),
            page: Some(page.id),
        }));
    }
    out.extend(related.events.iter().map(|e| {
        let subject = format!("{:?}", e.subject).to_lowercase();
        let change = match (&e.from, &e.to) {
            (Some(f), Some(t)) => format!("{subject} {f} → {t}"),
            (None, Some(t)) => format!("{subject} → {t}"),
            _ => subject,
        };
        let who = e.service.as_deref().unwrap_or("fleet");
        TimelineEntry {
            at: e.at,
            source: "event".into(),
            text: format!("{who}: {change}: {}", e.cause),
            service: e.service.clone(),
            page: None,
        }
    }));
    out.extend(related.actions.iter().map(|a| {
        let state = serde_json::to_value(a.state).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        let error = a.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default();
        TimelineEntry {
            at: a.created_at,
            source: "action".into(),
            text: format!(
                "{} on instance {}: {state} after {} attempt(s){error}; cause: {}",
                action_name(a),
                a.instance,
                a.attempts,
                a.cause
            ),
            service: None,
            page: None,
        }
    }));
    out.sort_by(|a, b| a.at.cmp(&b.at).then_with(|| a.source.cmp(&b.source)).then_with(|| a.text.cmp(&b.text)));
    out
}

/// The post-incident review, as Markdown, filled with what Drover knows:
/// the facts, the timeline (see [`timeline`]), and the sections people
/// write (impact, what went well, what to improve, action items).
pub fn review(incident: &Incident, related: &Related) -> String {
    let timeline = timeline(incident, related);
    let duration = incident.resolved_at.map(|r| {
        let secs = r.since(incident.created_at).as_secs();
        format!("{}h {:02}m", secs / 3600, (secs % 3600) / 60)
    });
    let mut md = format!(
        "# Post-incident review: {}

",
        incident.title
    );
    md.push_str(&format!(
        "- **Severity:** {:?}
",
        incident.severity
    ));
    md.push_str(&format!(
        "- **Components:** {}
",
        if incident.components.is_empty() { "none named".into() } else { incident.components.join(", ") }
    ));
    md.push_str(&format!(
        "- **Declared:** {} by {}
",
        incident.created_at, incident.declared_by
    ));
    md.push_str(&format!(
        "- **Incident commander:** {}
",
        incident.commander.as_deref().unwrap_or("nobody was on call")
    ));
    md.push_str(&format!(
        "- **Resolved:** {}
",
        match (incident.resolved_at, duration) {
            (Some(at), Some(d)) => format!("{at} (after {d})"),
            _ => "not yet".into(),
        }
    ));
    if let Some(p) = incident.page {
        md.push_str(&format!(
            "- **Page:** {p}
"
        ));
    }
    md.push_str(
        "
## Timeline (UTC)

",
    );
    for e in &timeline {
        md.push_str(&format!(
            "- {} [{}] {}
",
            e.at,
            e.source,
            e.text.replace('\n', " ")
        ));
    }
    md.push_str(
        "
## Impact

_Who was affected, how, for how long._
",
    );
    md.push_str(
        "
## What went well

_\n_
",
    );
    md.push_str(
        "
## What to improve

_\n_
",
    );
    md.push_str(
        "
## Action items

| Action | Owner | Due |\n|---|---|---|\n| | | |\n",
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_state_follows_the_share_down_and_the_brake() {
        let t = Thresholds::default();
        assert_eq!(component_state(0, 0, false, &t), ComponentState::Operational);
        assert_eq!(component_state(10_000, 50, false, &t), ComponentState::Operational);
        assert_eq!(component_state(10_000, 100, false, &t), ComponentState::DegradedPerformance);
        assert_eq!(component_state(10_000, 600, false, &t), ComponentState::PartialOutage);
        assert_eq!(component_state(10_000, 5_000, false, &t), ComponentState::MajorOutage);
        assert_eq!(component_state(10_000, 0, true, &t), ComponentState::MajorOutage);
        // More down than live (a count taken mid-change) is not more than all.
        assert_eq!(component_state(2, 3, false, &t), ComponentState::MajorOutage);
    }

    #[test]
    fn uptime_weighs_major_whole_and_partial_at_thirty_percent() {
        let day = UptimeDay { day: "2026-12-01".into(), samples: 1440, degraded: 100, partial: 100, major: 14 };
        let up = day.uptime().unwrap();
        assert!((up - (1.0 - (14.0 + 30.0) / 1440.0)).abs() < 1e-9, "{up}");
        assert_eq!(day.worst(), ComponentState::MajorOutage);
        assert_eq!(UptimeDay::default().uptime(), None);
        let quiet = UptimeDay { day: "2026-12-02".into(), samples: 1440, ..Default::default() };
        assert_eq!(
            uptime_over(&[day.clone(), quiet]).map(|u| (u * 1e6).round()),
            Some(((1.0 - 44.0 / 2880.0) * 1e6_f64).round())
        );
    }

    #[test]
    fn the_review_is_filled_with_the_timeline_in_time_order() {
        let now = Timestamp(1_800_000_000_000_000);
        let page = PageId::new_at(now.0, 3);
        let mut i = Incident::declare(
            IncidentId::new_at(now.0, 1),
            "Zone b lost".into(),
            IncidentSeverity::Critical,
            vec!["PostgreSQL".into()],
            None,
            "alice".into(),
            Some("ic-bob".into()),
            Some(page),
            Timestamp(now.0 + 1_000_000),
        );
        i.update(IncidentStatus::Resolved, "Back.".into(), "bob".into(), Timestamp(now.0 + 3_661_000_000)).unwrap();
        let transitions = vec![crate::Transition {
            page,
            at: now,
            from: "none".into(),
            to: "triggered".into(),
            level: 0,
            by: "engine".into(),
            cause: "brake engaged in zone-b".into(),
        }];
        let page_record: crate::Page = serde_json::from_value(serde_json::json!({
            "id": page, "dedup_key": "brake", "summary": "brake engaged", "source": "engine", "severity": "critical",
            "team": "db", "service": null, "class": null, "origin": "engine", "status": "triggered", "level": 0,
            "level_name": "bot", "opened_at": now, "acknowledged_at": null, "acknowledged_by": null,
            "resolved_at": null, "resolved_by": null, "alert_keys": [], "open_alerts": [], "alerts": 1,
            "notified": [], "flapping": false, "flaps": 0, "business_hours": false, "next_at": null,
            "renotified": 0, "details": null
        }))
        .unwrap();
        i.note("Zone b's switch is down.".into(), "carol".into(), Timestamp(now.0 + 2_000_000)).unwrap();
        let md = review(&i, &Related { pages: vec![(page_record, transitions)], ..Default::default() });
        assert!(md.contains("[note] carol: Zone b's switch is down."), "{md}");
        assert!(md.starts_with("# Post-incident review: Zone b lost"), "{md}");
        assert!(md.contains("after 1h 01m") && md.contains("ic-bob"), "{md}");
        let (page_at, declared_at, resolved_at) =
            (md.find("[page]").unwrap(), md.find("Investigating (alice)").unwrap(), md.find("Resolved (bob)").unwrap());
        assert!(page_at < declared_at && declared_at < resolved_at, "time order: {md}");
        assert!(md.contains("## Action items"));
    }

    #[test]
    fn an_incident_runs_to_resolved_and_then_takes_no_update() {
        let now = Timestamp(1_800_000_000_000_000);
        let mut i = Incident::declare(
            IncidentId::new_at(now.0, 1),
            "Writes failing in zone a".into(),
            IncidentSeverity::Major,
            vec!["PostgreSQL".into()],
            None,
            "alice".into(),
            Some("ic-bob".into()),
            None,
            now,
        );
        assert_eq!(i.status, IncidentStatus::Investigating);
        assert_eq!(i.updates.len(), 1);
        assert!(i.updates[0].message.contains("Writes failing"));
        assert_eq!(
            i.update(IncidentStatus::Identified, "  ".into(), "alice".into(), now),
            Err(IncidentError::EmptyMessage)
        );
        i.update(IncidentStatus::Identified, "A zone lost power.".into(), "alice".into(), Timestamp(now.0 + 1))
            .unwrap();
        // A clock that stepped back does not reorder the updates.
        let u = i.update(IncidentStatus::Resolved, "Healed.".into(), "bob".into(), Timestamp(now.0 - 5)).unwrap();
        assert_eq!((u.seq, u.at), (3, Timestamp(now.0 + 1)));
        assert_eq!(i.resolved_at, Some(Timestamp(now.0 + 1)));
        assert_eq!(
            i.update(IncidentStatus::Monitoring, "again".into(), "bob".into(), now),
            Err(IncidentError::Resolved(Timestamp(now.0 + 1)))
        );
    }
}
