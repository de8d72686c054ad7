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
        }
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
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimelineEntry {
    pub at: Timestamp,
    /// `update`, `page`.
    pub source: &'static str,
    pub text: String,
}

/// The post-incident review, as Markdown, filled with what Drover knows:
/// the facts, the timeline (the incident's updates and the transitions of
/// the page it was declared from, in time order), and the sections people
/// write (impact, what went well, what to improve, action items).
pub fn review(incident: &Incident, page: &[crate::Transition]) -> String {
    let mut timeline: Vec<TimelineEntry> = incident
        .updates
        .iter()
        .map(|u| TimelineEntry {
            at: u.at,
            source: "update",
            text: format!("{} ({}): {}", u.status.label(), u.by, u.message),
        })
        .collect();
    timeline.extend(page.iter().map(|t| TimelineEntry {
        at: t.at,
        source: "page",
        text: format!("page {} → {} by {}: {}", t.from, t.to, t.by, t.cause),
    }));
    timeline.sort();
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
        let md = review(&i, &transitions);
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
