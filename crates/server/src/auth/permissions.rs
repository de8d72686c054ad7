//! THE permission table: every route of the API, by method and path
//! template (axum's `MatchedPath`), and what it needs. The auth middleware
//! looks every request up here; a route missing from the table is refused
//! (deny by default), and a test walks `/openapi.json` against it both ways.
//! Every route added later goes here too.

use drover_model::TokenRole;

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// No token: liveness and the API's own description.
    Public,
    /// No bearer token: the handler checks the link's HMAC signature
    /// (ack/resolve links in chat and e-mail notifications), or another
    /// node's seal made with the key every node shares (`node_commands`).
    SignedLink,
    /// The web dashboard (`/ui/…`, HTML, not part of the API document):
    /// no bearer token; its handlers check the session cookie, the role
    /// and, for forms, the origin and the session's CSRF token (`ui`).
    Session,
    /// Fleet data: services, instances, events, actions, images, checks,
    /// pages, pager metrics and feed, Prometheus metrics.
    Read,
    /// Read one instance: also the agent of the instance's host (it asks
    /// whether a primary it fenced is still the writable primary).
    ReadInstance,
    /// The audit trail.
    ReadAudit,
    /// Day-to-day commands: create a service, switchover, resume, backups
    /// and their verification, page ack/resolve, chaos, credential rotation.
    Operate,
    /// Irreversible or identity-changing: delete a service, tokens.
    Administer,
    /// Heartbeats: only an agent token, only for its own host's instances;
    /// and the registration of a host, only by the agent token of that host.
    Heartbeat,
    /// Alerts in: only an integration token (its team is where they go).
    /// The Events API v2 route also takes the token as `routing_key`.
    Alert,
}

impl Permission {
    /// The roles a token needs for this permission (empty for the two
    /// that take no bearer token).
    pub fn roles(self) -> &'static [TokenRole] {
        use TokenRole::*;
        match self {
            Permission::Public | Permission::SignedLink | Permission::Session => &[],
            Permission::Read => &[Viewer, Operator, Admin],
            Permission::ReadInstance => &[Viewer, Operator, Admin, Agent],
            Permission::ReadAudit | Permission::Operate => &[Operator, Admin],
            Permission::Administer => &[Admin],
            Permission::Heartbeat => &[Agent],
            Permission::Alert => &[Integration],
        }
    }

    pub fn allows(self, role: TokenRole) -> bool {
        self.roles().contains(&role)
    }

    /// Whether the route takes no bearer token at all.
    pub fn is_open(self) -> bool {
        matches!(self, Permission::Public | Permission::SignedLink | Permission::Session)
    }
}

/// Who records an accepted request in the audit trail. Refusals (401, 403)
/// are recorded by the middleware (within the failed-authentication limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audited {
    /// Reads, and inputs too frequent to record one by one (heartbeats,
    /// alerts: the pager keeps its own record of every alert).
    No,
    /// The engine records the command with its outcome.
    ByEngine,
    /// The middleware records it with the answer's status.
    Here,
}

/// One row of the table.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub method: &'static str,
    pub path: &'static str,
    pub permission: Permission,
    pub audited: Audited,
}

const fn rule(method: &'static str, path: &'static str, permission: Permission, audited: Audited) -> Rule {
    Rule { method, path, permission, audited }
}

use Audited::{ByEngine, Here, No};
use Permission::*;

pub const TABLE: &[Rule] = &[
    rule("GET", "/healthz", Public, No),
    rule("GET", "/openapi.json", Public, No),
    rule("GET", "/status", Public, No),
    rule("GET", "/ui/", Session, No),
    rule("GET", "/ui/login", Session, No),
    rule("POST", "/ui/login", Session, No),
    rule("POST", "/ui/logout", Session, No),
    rule("GET", "/ui/live.js", Session, No),
    rule("GET", "/ui/services", Session, No),
    rule("GET", "/ui/services/{name}", Session, No),
    rule("GET", "/ui/services/{name}/live", Session, No),
    rule("GET", "/ui/pages", Session, No),
    rule("GET", "/ui/rollouts", Session, No),
    rule("GET", "/ui/rollouts/live", Session, No),
    rule("GET", "/ui/images", Session, No),
    rule("POST", "/ui/pages/{id}/ack", Session, No),
    rule("GET", "/ui/pager", Session, No),
    rule("GET", "/ui/runbooks", Session, No),
    rule("POST", "/ui/runbooks/{name}/runs", Session, No),
    rule("GET", "/ui/runbooks/runs/{id}", Session, No),
    rule("POST", "/ui/runbooks/runs/{id}/approve", Session, No),
    rule("GET", "/ui/incidents", Session, No),
    rule("POST", "/ui/incidents", Session, No),
    rule("GET", "/ui/incidents/{id}", Session, No),
    rule("POST", "/ui/incidents/{id}/updates", Session, No),
    rule("POST", "/ui/incidents/{id}/notes", Session, No),
    rule("GET", "/status/feed.atom", Public, No),
    rule("POST", "/v1/incidents", Operate, Here),
    rule("GET", "/v1/incidents", Read, No),
    rule("GET", "/v1/incidents/{id}", Read, No),
    rule("GET", "/v1/incidents/{id}/review", Read, No),
    rule("POST", "/v1/incidents/{id}/updates", Operate, Here),
    rule("POST", "/v1/incidents/{id}/notes", Operate, Here),
    rule("GET", "/v1/incidents/{id}/timeline", Read, No),
    rule("GET", "/v1/components", Read, No),
    rule("POST", "/v1/components", Operate, Here),
    rule("POST", "/v1/components/{name}/stage", Operate, Here),
    rule("POST", "/v1/components/{name}/attest", Operate, Here),
    rule("POST", "/v1/catalog/import", Operate, Here),
    rule("GET", "/v1/catalog/export", Read, No),
    rule("GET", "/metrics", Read, No),
    rule("POST", "/v1/services", Operate, ByEngine),
    rule("GET", "/v1/services", Read, No),
    rule("GET", "/v1/services/{name}", Read, No),
    rule("DELETE", "/v1/services/{name}", Administer, ByEngine),
    rule("POST", "/v1/services/{name}/switchover", Operate, ByEngine),
    rule("POST", "/v1/services/{name}/fork", Operate, ByEngine),
    rule("GET", "/v1/archives", Read, No),
    rule("POST", "/v1/archives/{id}/restore", Operate, ByEngine),
    rule("POST", "/v1/services/{name}/resize", Operate, ByEngine),
    rule("POST", "/v1/services/{name}/upgrade", Operate, ByEngine),
    rule("POST", "/v1/services/{name}/upgrade/rollback", Operate, ByEngine),
    rule("POST", "/v1/services/{name}/followers", Operate, ByEngine),
    rule("DELETE", "/v1/services/{name}/followers/{instance}", Operate, ByEngine),
    rule("POST", "/v1/services/{name}/resume", Operate, ByEngine),
    rule("GET", "/v1/services/{name}/checks", Read, No),
    rule("POST", "/v1/services/{name}/backups", Operate, ByEngine),
    rule("POST", "/v1/services/{name}/backups/verify", Operate, ByEngine),
    rule("POST", "/v1/services/{name}/credentials/rotate", Operate, ByEngine),
    rule("GET", "/v1/instances/{id}", ReadInstance, No),
    rule("GET", "/v1/events", Read, No),
    rule("POST", "/v1/heartbeats", Heartbeat, No),
    rule("POST", "/v1/chaos", Operate, ByEngine),
    rule("GET", "/v1/actions", Read, No),
    rule("GET", "/v1/audit", ReadAudit, No),
    rule("GET", "/v1/images", Read, No),
    rule("POST", "/v1/images", Operate, ByEngine),
    rule("GET", "/v1/images/{id}", Read, No),
    rule("POST", "/v1/rollouts", Operate, ByEngine),
    rule("GET", "/v1/rollouts", Read, No),
    rule("GET", "/v1/rollouts/{id}", Read, No),
    rule("GET", "/v1/rollouts/{id}/services", Read, No),
    rule("POST", "/v1/rollouts/{id}/pause", Operate, ByEngine),
    rule("POST", "/v1/rollouts/{id}/resume", Operate, ByEngine),
    rule("POST", "/v1/rollouts/{id}/abort", Operate, ByEngine),
    rule("PUT", "/v1/services/{name}/maintenance-window", Operate, ByEngine),
    rule("PUT", "/v1/services/{name}/labels", Operate, ByEngine),
    // The feed key in the URL is a token the handler checks (calendar apps send no headers).
    rule("GET", "/v1/maintenance.ics", SignedLink, No),
    // Another node's command for a service this one holds: sealed with the
    // nodes' shared key; audited by the engine under the operator's name.
    rule("POST", "/v1/cluster/commands", SignedLink, ByEngine),
    rule("POST", "/v1/integrations/alertmanager", Alert, No),
    rule("POST", "/v1/integrations/events-v2", Alert, No),
    rule("GET", "/v1/pages", Read, No),
    rule("GET", "/v1/pages/{id}", Read, No),
    rule("POST", "/v1/pages/{id}/ack", Operate, Here),
    rule("GET", "/v1/pages/{id}/ack", SignedLink, No),
    rule("POST", "/v1/pages/{id}/resolve", Operate, Here),
    rule("GET", "/v1/pages/{id}/resolve", SignedLink, No),
    rule("GET", "/v1/pager/metrics", Read, No),
    rule("GET", "/v1/pager/metrics.svg", Read, No),
    rule("GET", "/v1/pager/feed", Read, No),
    rule("GET", "/v1/pager/oncall", Read, No),
    rule("POST", "/v1/tokens", Administer, Here),
    rule("GET", "/v1/tokens", Administer, No),
    rule("DELETE", "/v1/tokens/{id}", Administer, Here),
    rule("POST", "/v1/advisories", Operate, Here),
    rule("GET", "/v1/advisories", Read, No),
    rule("GET", "/v1/advisories/audit", Read, No),
    rule("GET", "/v1/runbooks", Read, No),
    // Each state of a run is recorded by the engine (`Command::RecordRunbook`),
    // each step too, under the person who made it run.
    rule("POST", "/v1/runbooks/{name}/runs", Operate, ByEngine),
    rule("GET", "/v1/runbooks/runs/{id}", Read, No),
    rule("POST", "/v1/runbooks/runs/{id}/approve", Operate, ByEngine),
    rule("GET", "/v1/hosts", Read, No),
    rule("GET", "/v1/cluster", Read, No),
    rule("GET", "/v1/commands/{id}", Read, No),
    rule("POST", "/v1/hosts", Heartbeat, ByEngine),
    rule("POST", "/v1/hosts/{name}/drain", Operate, ByEngine),
    rule("POST", "/v1/hosts/{name}/cordon", Operate, ByEngine),
    rule("GET", "/v1/hosts/{name}/actions", Heartbeat, No),
    rule("POST", "/v1/hosts/{name}/actions/{id}/result", Heartbeat, No),
];

/// The rule of a request (HEAD is GET's), or `None`: refused.
pub fn lookup(method: &str, path: &str) -> Option<&'static Rule> {
    let method = if method == "HEAD" { "GET" } else { method };
    TABLE.iter().find(|r| r.method == method && r.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_per_route_and_admin_has_every_human_permission() {
        for (i, a) in TABLE.iter().enumerate() {
            assert!(!TABLE[i + 1..].iter().any(|b| a.method == b.method && a.path == b.path), "{a:?} twice");
            let machine = matches!(a.permission, Heartbeat | Alert);
            assert!(a.permission.is_open() || machine || a.permission.allows(TokenRole::Admin), "{a:?}");
        }
        assert!(lookup("HEAD", "/v1/services").is_some());
        assert!(lookup("PUT", "/v1/services").is_none());
    }
}
