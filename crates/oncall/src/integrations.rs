//! Alerts from outside, as their senders shape them: Prometheus
//! Alertmanager's webhook (payload version 4) and PagerDuty's Events API v2.
//! Parsing is pure; the shell only moves bytes.

use crate::config::Config;
use crate::pager::{Alert, AlertAction, Severity, MAX_SUMMARY};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Alertmanager's webhook body (`version: "4"`).
#[derive(Clone, Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertmanagerPayload {
    pub version: String,
    pub group_key: String,
    #[serde(default)]
    pub truncated_alerts: u64,
    /// `firing` while any alert of the group fires, else `resolved`.
    pub status: String,
    #[serde(default)]
    pub receiver: String,
    #[serde(default)]
    pub group_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub common_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub common_annotations: BTreeMap<String, String>,
    #[serde(default, rename = "externalURL")]
    pub external_url: String,
    #[serde(default, deserialize_with = "drover_model::objects::objects")]
    pub alerts: Vec<AlertmanagerAlert>,
}

#[derive(Clone, Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertmanagerAlert {
    pub status: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub starts_at: String,
    #[serde(default)]
    pub ends_at: String,
    #[serde(default, rename = "generatorURL")]
    pub generator_url: String,
    #[serde(default)]
    pub fingerprint: String,
}

/// One Alertmanager notification is one alert group: one page, keyed by the
/// group key, so Alertmanager's own repeats deduplicate into it.
pub fn from_alertmanager(payload: &AlertmanagerPayload) -> Result<Alert, String> {
    if payload.version != "4" {
        return Err(format!(
            "unsupported Alertmanager webhook payload version {:?}; this receiver understands version \"4\" (Alertmanager 0.x)",
            payload.version
        ));
    }
    if payload.group_key.is_empty() {
        return Err("groupKey is empty; Alertmanager always sends one".into());
    }
    let action = match payload.status.as_str() {
        "firing" => AlertAction::Trigger,
        "resolved" => AlertAction::Resolve,
        other => return Err(format!("status {other:?} is neither \"firing\" nor \"resolved\"")),
    };
    let label = |k: &str| payload.common_labels.get(k).or_else(|| payload.group_labels.get(k)).cloned();
    let alertname = label("alertname");
    let firing = payload.alerts.iter().filter(|a| a.status == "firing").count();
    let summary = payload
        .common_annotations
        .get("summary")
        .cloned()
        .or_else(|| payload.common_annotations.get("description").cloned())
        .unwrap_or_else(|| {
            let name = alertname.clone().unwrap_or_else(|| "alert group".into());
            format!("{name}: {firing} of {} alerts firing", payload.alerts.len())
        });
    let severity = label("severity").and_then(|s| Severity::parse(&s)).unwrap_or(Severity::Critical);
    let mut summary = summary;
    summary.truncate(summary.char_indices().nth(MAX_SUMMARY).map(|(i, _)| i).unwrap_or(summary.len()));
    Ok(Alert {
        dedup_key: format!("alertmanager:{}", payload.group_key),
        action,
        summary,
        source: if payload.external_url.is_empty() { "alertmanager".into() } else { payload.external_url.clone() },
        severity,
        team: label("team"),
        service: label("service"),
        component: label("component").or_else(|| label("job")),
        group: Some(payload.group_key.clone()),
        class: alertname,
        origin: "alertmanager".into(),
        details: serde_json::json!({
            "receiver": payload.receiver,
            "group_labels": payload.group_labels,
            "common_labels": payload.common_labels,
            "firing": firing,
            "alerts": payload.alerts.len(),
            "truncated_alerts": payload.truncated_alerts,
        }),
    })
}

/// The Events API v2 body (`POST /v2/enqueue` at PagerDuty).
#[derive(Clone, Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub struct EventV2 {
    pub routing_key: String,
    pub event_action: String,
    pub dedup_key: Option<String>,
    #[serde(default, deserialize_with = "drover_model::objects::optional_object")]
    pub payload: Option<EventPayload>,
    pub client: Option<String>,
    pub client_url: Option<String>,
    #[serde(default)]
    pub links: serde_json::Value,
    #[serde(default)]
    pub images: serde_json::Value,
}

#[derive(Clone, Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub struct EventPayload {
    pub summary: String,
    pub source: String,
    pub severity: String,
    pub timestamp: Option<String>,
    pub component: Option<String>,
    pub group: Option<String>,
    pub class: Option<String>,
    #[serde(default)]
    pub custom_details: serde_json::Value,
}

/// The Events API's limits.
pub const MAX_DEDUP_KEY: usize = 255;

/// Validates an event like PagerDuty does and maps it to an alert.
/// `generated_key` names a trigger sent without a dedup key.
pub fn from_event_v2(
    event: &EventV2,
    config: &Config,
    generated_key: impl FnOnce() -> String,
) -> Result<Alert, String> {
    let team = config.team_for_routing_key(&event.routing_key).ok_or_else(|| {
        format!(
            "routing_key {:?} matches no team; use a team name ({}) or one of its routing_keys in oncall.toml",
            event.routing_key,
            config.teams.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
        )
    })?;
    let action = match event.event_action.as_str() {
        "trigger" => AlertAction::Trigger,
        "acknowledge" => AlertAction::Acknowledge,
        "resolve" => AlertAction::Resolve,
        other => return Err(format!("event_action {other:?} must be trigger, acknowledge or resolve")),
    };
    if let Some(k) = &event.dedup_key {
        if k.len() > MAX_DEDUP_KEY {
            return Err(format!("dedup_key is {} characters; the limit is {MAX_DEDUP_KEY}", k.len()));
        }
        if k.is_empty() {
            return Err("dedup_key is empty".into());
        }
    }
    let dedup_key = match (&event.dedup_key, action) {
        (Some(k), _) => k.clone(),
        (None, AlertAction::Trigger) => generated_key(),
        (None, _) => return Err(format!("dedup_key is required to {}", event.event_action)),
    };
    let (summary, source, severity, component, group, class, details) = match (&event.payload, action) {
        (Some(p), _) => {
            if action == AlertAction::Trigger {
                if p.summary.is_empty() || p.source.is_empty() {
                    return Err("payload.summary and payload.source must not be empty".into());
                }
                if p.summary.len() > MAX_SUMMARY {
                    return Err(format!(
                        "payload.summary is {} characters; the limit is {MAX_SUMMARY}",
                        p.summary.len()
                    ));
                }
            }
            let severity = Severity::parse(&p.severity)
                .ok_or_else(|| format!("payload.severity {:?} must be critical, error, warning or info", p.severity))?;
            (
                p.summary.clone(),
                p.source.clone(),
                severity,
                p.component.clone(),
                p.group.clone(),
                p.class.clone(),
                p.custom_details.clone(),
            )
        }
        (None, AlertAction::Trigger) => return Err("payload (summary, source, severity) is required to trigger".into()),
        (None, _) => (String::new(), "events-v2".into(), Severity::Info, None, None, None, serde_json::Value::Null),
    };
    // `group` names a service when it is one of ours; grouping is per service and team.
    let service = details.get("service").and_then(|s| s.as_str()).map(str::to_string).or_else(|| group.clone());
    Ok(Alert {
        dedup_key,
        action,
        summary,
        source,
        severity,
        team: Some(team.name.clone()),
        service,
        component,
        group,
        class,
        origin: "events-v2".into(),
        details,
    })
}
