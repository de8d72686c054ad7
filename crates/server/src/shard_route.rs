//! Where each request goes when the fleet is split into shards (issue 16;
//! the plan is docs/architecture.md, "The server on several shards").
//!
//! Every route of the API ([`crate::auth::permissions::TABLE`], which a
//! test walks against this one both ways) has a [`Rule`]: answered by the
//! node asked, sent to the holder of one slot's shard (a service by name,
//! anything by an id that carries its service's slot), to the holder of
//! shard 0 (the fleet-wide records and the singletons: the pager, the
//! status site, rollouts' records, runbooks), to every holder with the
//! answers merged (lists), or split by slot (a heartbeat batch).
//! [`target`] reads a request's shard from its path and, where the path
//! does not say, from its body, as the handler would: a
//! body the handler would refuse is refused here with the same kind of
//! message, and nothing here panics on any input.
//!
//! [`decide`] turns a target into who answers, on a node holding some of
//! the shards; [`crate::forward`] follows it once this node is ready.
//! On a fleet of one shard (the default) a ready node answers everything
//! itself and a standby forwards everything to the holder, which is what
//! every rule comes to with one shard; `--shards N` splits it.

use drover_model::{Beat, InstanceId, Slot};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

/// How a route finds the node that answers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Any node answers from what every node has: the store (tokens,
    /// deferred commands, the cluster's leases), its own process
    /// (`/metrics`, scraped from every node), or nothing (`/healthz`).
    Here,
    /// The holder of shard 0: fleet-wide records (images, hosts, the
    /// catalog) and the singletons that run there.
    Fleet,
    /// The holder of the shard of the service named by the path's
    /// `{name}`.
    ServiceInPath,
    /// The holder of the shard of the id in this path parameter: every id
    /// the engine mints for a service carries its slot.
    IdInPath(&'static str),
    /// The holder of the shard of the service named by the query's
    /// `service` (the handler looks the name up in its engine); without
    /// one, any node.
    ServiceInQuery,
    /// The holder of the shard of the service named by the body's `name`
    /// (a service created).
    NameInBody,
    /// Chaos: the instance's shard, or every holder for a whole host.
    Chaos,
    /// A heartbeat batch, split by its beats' instances' slots.
    Heartbeats,
    /// Every holder's part, merged by the node asked.
    FanOut,
    /// An agent's long poll for its host's actions: every holder's queue
    /// for it, answered as soon as one has something (`forward`).
    AgentActions,
}

/// One row of [`TABLE`].
#[derive(Clone, Copy, Debug)]
pub struct Placed {
    pub method: &'static str,
    pub path: &'static str,
    pub rule: Rule,
}

const fn placed(method: &'static str, path: &'static str, rule: Rule) -> Placed {
    Placed { method, path, rule }
}

use Rule::*;

/// Every route, by method and path template (axum's `MatchedPath`).
pub const TABLE: &[Placed] = &[
    placed("GET", "/healthz", Here),
    placed("GET", "/openapi.json", Here),
    placed("GET", "/metrics", Here),
    placed("GET", "/v1/cluster", Here),
    // Sent by another node to the holder it found (`node_commands`).
    placed("POST", "/v1/cluster/commands", Here),
    placed("GET", "/v1/commands/{id}", Here),
    placed("POST", "/v1/tokens", Here),
    placed("GET", "/v1/tokens", Here),
    placed("DELETE", "/v1/tokens/{id}", Here),
    // The status site, incidents and the pager run on shard 0's holder.
    placed("GET", "/status", Fleet),
    placed("GET", "/status/feed.atom", Fleet),
    placed("POST", "/v1/incidents", Fleet),
    placed("GET", "/v1/incidents", Fleet),
    placed("GET", "/v1/incidents/{id}", Fleet),
    placed("GET", "/v1/incidents/{id}/review", Fleet),
    placed("POST", "/v1/incidents/{id}/updates", Fleet),
    placed("POST", "/v1/incidents/{id}/notes", Fleet),
    placed("GET", "/v1/incidents/{id}/timeline", Fleet),
    placed("POST", "/v1/integrations/alertmanager", Fleet),
    placed("POST", "/v1/integrations/events-v2", Fleet),
    placed("GET", "/v1/pages", Fleet),
    placed("GET", "/v1/pages/{id}", Fleet),
    placed("POST", "/v1/pages/{id}/ack", Fleet),
    placed("GET", "/v1/pages/{id}/ack", Fleet),
    placed("POST", "/v1/pages/{id}/resolve", Fleet),
    placed("GET", "/v1/pages/{id}/resolve", Fleet),
    placed("GET", "/v1/pager/metrics", Fleet),
    placed("GET", "/v1/pager/metrics.svg", Fleet),
    placed("GET", "/v1/pager/feed", Fleet),
    placed("GET", "/v1/pager/oncall", Fleet),
    // The software catalog, images, advisories and hosts: fleet-wide records
    // (a host's cordon or drain is learned by every node's engine,
    // `fleet_records`, which moves its own services' members).
    placed("GET", "/v1/components", Fleet),
    placed("POST", "/v1/components", Fleet),
    placed("POST", "/v1/components/{name}/stage", Fleet),
    placed("POST", "/v1/components/{name}/attest", Fleet),
    placed("POST", "/v1/catalog/import", Fleet),
    placed("GET", "/v1/catalog/export", Fleet),
    placed("GET", "/v1/images", Fleet),
    placed("POST", "/v1/images", Fleet),
    placed("GET", "/v1/images/{id}", Fleet),
    placed("POST", "/v1/advisories", Fleet),
    placed("GET", "/v1/advisories", Fleet),
    // The services on each affected image: those of every shard, merged.
    placed("GET", "/v1/advisories/audit", FanOut),
    placed("GET", "/v1/hosts", FanOut),
    placed("POST", "/v1/hosts", Fleet),
    placed("POST", "/v1/hosts/{name}/drain", Fleet),
    placed("POST", "/v1/hosts/{name}/cordon", Fleet),
    placed("GET", "/v1/hosts/{name}/actions", AgentActions),
    placed("POST", "/v1/hosts/{name}/actions/{id}/result", IdInPath("id")),
    // Rollouts' waves and runbooks are singletons; a wave's moves and a
    // runbook's steps are commands to each service's holder.
    // Its record is shard 0's holder's; every holder moves its own
    // shards' services (`drover_engine`'s `rollouts::split`).
    placed("POST", "/v1/rollouts", Fleet),
    placed("GET", "/v1/rollouts", Fleet),
    placed("GET", "/v1/rollouts/{id}", Fleet),
    // Each shard's part is its holder's (`rollouts::split`).
    placed("GET", "/v1/rollouts/{id}/services", FanOut),
    placed("POST", "/v1/rollouts/{id}/pause", Fleet),
    placed("POST", "/v1/rollouts/{id}/resume", Fleet),
    placed("POST", "/v1/rollouts/{id}/abort", Fleet),
    placed("GET", "/v1/runbooks", Fleet),
    placed("POST", "/v1/runbooks/{name}/runs", Fleet),
    placed("GET", "/v1/runbooks/runs/{id}", Fleet),
    placed("POST", "/v1/runbooks/runs/{id}/approve", Fleet),
    // One service: its name's shard.
    placed("POST", "/v1/services", NameInBody),
    placed("GET", "/v1/services", FanOut),
    placed("GET", "/v1/services/{name}", ServiceInPath),
    placed("DELETE", "/v1/services/{name}", ServiceInPath),
    placed("POST", "/v1/services/{name}/switchover", ServiceInPath),
    placed("POST", "/v1/services/{name}/fork", ServiceInPath),
    placed("POST", "/v1/services/{name}/resize", ServiceInPath),
    placed("POST", "/v1/services/{name}/upgrade", ServiceInPath),
    placed("POST", "/v1/services/{name}/upgrade/rollback", ServiceInPath),
    placed("POST", "/v1/services/{name}/followers", ServiceInPath),
    placed("DELETE", "/v1/services/{name}/followers/{instance}", ServiceInPath),
    placed("POST", "/v1/services/{name}/resume", ServiceInPath),
    placed("GET", "/v1/services/{name}/checks", ServiceInPath),
    placed("POST", "/v1/services/{name}/backups", ServiceInPath),
    placed("POST", "/v1/services/{name}/backups/verify", ServiceInPath),
    placed("POST", "/v1/services/{name}/credentials/rotate", ServiceInPath),
    placed("PUT", "/v1/services/{name}/maintenance-window", ServiceInPath),
    placed("PUT", "/v1/services/{name}/labels", ServiceInPath),
    placed("GET", "/v1/maintenance.ics", FanOut),
    placed("GET", "/v1/archives", FanOut),
    placed("POST", "/v1/archives/{id}/restore", IdInPath("id")),
    placed("GET", "/v1/instances/{id}", IdInPath("id")),
    placed("POST", "/v1/heartbeats", Heartbeats),
    placed("POST", "/v1/chaos", Chaos),
    // Read from the store every node shares (see docs/architecture.md on
    // `after_seq` with several writers).
    placed("GET", "/v1/events", Here),
    placed("GET", "/v1/actions", ServiceInQuery),
    placed("GET", "/v1/audit", FanOut),
    // The dashboard.
    placed("GET", "/ui/login", Here),
    placed("POST", "/ui/login", Here),
    placed("POST", "/ui/logout", Here),
    placed("GET", "/ui/live.js", Here),
    // The overview and the list, rendered by the node asked from every
    // shard's part (`fleet_health`, the routed `GET /v1/services`).
    placed("GET", "/ui/", Here),
    placed("GET", "/ui/services", Here),
    // A service's page, rendered by its holder (the session is in the
    // store every node shares).
    placed("GET", "/ui/services/{name}", ServiceInPath),
    placed("GET", "/ui/services/{name}/live", ServiceInPath),
    placed("GET", "/ui/pages", Fleet),
    placed("POST", "/ui/pages/{id}/ack", Fleet),
    placed("GET", "/ui/pager", Fleet),
    placed("GET", "/ui/rollouts", Fleet),
    placed("GET", "/ui/rollouts/live", Fleet),
    placed("GET", "/ui/images", Fleet),
    placed("GET", "/ui/runbooks", Fleet),
    placed("POST", "/ui/runbooks/{name}/runs", Fleet),
    placed("GET", "/ui/runbooks/runs/{id}", Fleet),
    placed("POST", "/ui/runbooks/runs/{id}/approve", Fleet),
    placed("GET", "/ui/incidents", Fleet),
    placed("POST", "/ui/incidents", Fleet),
    placed("GET", "/ui/incidents/{id}", Fleet),
    placed("POST", "/ui/incidents/{id}/updates", Fleet),
    placed("POST", "/ui/incidents/{id}/notes", Fleet),
];

/// The rule of a route (HEAD is GET's), or `None`: no such route.
pub fn lookup(method: &str, template: &str) -> Option<Rule> {
    let method = if method == "HEAD" { "GET" } else { method };
    TABLE.iter().find(|p| p.method == method && p.path == template).map(|p| p.rule)
}

/// Where one request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Answered by the node asked.
    Here,
    /// The holder of shard 0.
    Fleet,
    /// The holder of this shard.
    Shard(u16),
    /// Every holder, the answers merged.
    Every,
    /// A heartbeat batch's beats by the shard each goes to.
    Split(Beats),
    /// An agent's actions: every holder's queue for its host.
    Actions,
}

/// The table's templates by method, matched as axum's router matches them
/// (the same crate, as `deferred` does for the permission table): the
/// forwarder runs before axum routes a request.
fn routes() -> &'static HashMap<&'static str, matchit::Router<Rule>> {
    static ROUTES: OnceLock<HashMap<&'static str, matchit::Router<Rule>>> = OnceLock::new();
    ROUTES.get_or_init(|| {
        let mut by_method: HashMap<&'static str, matchit::Router<Rule>> = HashMap::new();
        for p in TABLE {
            // The table's templates are unique (its test), so insert cannot conflict.
            let _ = by_method.entry(p.method).or_default().insert(p.path, p.rule);
        }
        by_method
    })
}

/// Whether `method` `path` is a route of the API at all (else the router
/// answers it: 404 or 405).
pub fn is_route(method: &str, path: &str) -> bool {
    let method = if method == "HEAD" { "GET" } else { method };
    routes().get(method).is_some_and(|r| r.at(path).is_ok())
}

/// Where a request at `path` with `body` goes on a fleet of `shards`
/// shards. `Err` is the client's mistake, as the handler would name it
/// (answered 4xx, nothing sent on).
pub fn target(method: &str, path: &str, body: &[u8], shards: u16) -> Result<Target, String> {
    let method = if method == "HEAD" { "GET" } else { method };
    // `path` may carry its query (`ServiceInQuery` reads it).
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let matched =
        routes().get(method).and_then(|r| r.at(path).ok()).ok_or_else(|| format!("no route for {method} {path}"))?;
    // A path parameter, percent-decoded as axum's `Path` decodes it.
    let param = |name: &str| -> Result<String, String> {
        let raw = matched.params.get(name).ok_or_else(|| format!("{path} has no {name}"))?;
        percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| format!("the {name} in {path} is not UTF-8 once decoded"))
    };
    let rule = *matched.value;
    let shard = |slot: Slot| Target::Shard(slot.shard(shards));
    Ok(match rule {
        Here => Target::Here,
        Fleet => Target::Fleet,
        FanOut => Target::Every,
        AgentActions => Target::Actions,
        ServiceInPath => shard(Slot::of_name(&param("name")?)),
        ServiceInQuery => {
            let named = query.split('&').find_map(|pair| pair.strip_prefix("service="));
            match named {
                None => Target::Here,
                Some(raw) => {
                    let name = percent_encoding::percent_decode_str(&raw.replace('+', " "))
                        .decode_utf8()
                        .map(|s| s.into_owned())
                        .map_err(|_| "the service in the query is not UTF-8 once decoded".to_string())?;
                    shard(Slot::of_name(&name))
                }
            }
        }
        IdInPath(name) => {
            let text = param(name)?;
            let id = uuid::Uuid::parse_str(&text).map_err(|e| format!("{name} {text:?} is not an id: {e}"))?;
            shard(Slot::of_uuid(&id))
        }
        NameInBody => {
            #[derive(Deserialize)]
            struct Named {
                name: String,
            }
            let named: Named =
                serde_json::from_slice(body).map_err(|e| format!("the body is not a service to create: {e}"))?;
            shard(Slot::of_name(&named.name))
        }
        Chaos => {
            #[derive(Deserialize)]
            struct Aimed {
                #[serde(default)]
                instance: Option<InstanceId>,
                #[serde(default)]
                host: Option<String>,
            }
            let aimed: Aimed = serde_json::from_slice(body).map_err(|e| format!("the body is not a fault: {e}"))?;
            match (aimed.instance, aimed.host) {
                (Some(instance), None) => shard(instance.slot()),
                (None, Some(_)) => Target::Every,
                _ => return Err("give either instance or host".into()),
            }
        }
        Heartbeats => split_heartbeats(body, shards).map_or(Target::Here, Target::Split),
    })
}

/// Who answers a request, on a node that holds some of the shards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// This node: it holds everything the request touches.
    Here,
    /// The holder of this shard, the request forwarded as it came.
    Forward(u16),
    /// A heartbeat batch in parts, each to its shard's holder (this
    /// node's own part included; all of it, when it holds every shard the
    /// batch touches): the agent's answer waits for them all.
    Split(Beats),
    /// Every holder, the answers merged.
    Every,
    /// Every holder's queue of an agent's actions (a long poll).
    Actions,
}

/// Where a request for `target` is answered, on a node that holds the
/// shards for which `holds` is true of `shards` in all. A node holding
/// every shard answers everything itself (one node, or the fleet's only
/// live node), whatever the rule.
pub fn decide(target: Target, shards: u16, holds: impl Fn(u16) -> bool) -> Decision {
    if matches!(target, Target::Here) || (0..shards.max(1)).all(&holds) {
        return Decision::Here;
    }
    let to = |shard: u16| if holds(shard) { Decision::Here } else { Decision::Forward(shard) };
    match target {
        Target::Here => Decision::Here,
        Target::Fleet => to(0),
        Target::Shard(shard) => to(shard),
        // Taken apart here even when this node holds all it touches: its
        // part is fed as parsed, not parsed again by the handler.
        Target::Split(beats) => Decision::Split(beats),
        Target::Every => Decision::Every,
        Target::Actions => Decision::Actions,
    }
}

/// A heartbeat batch parsed once, as the handler parses it, and its beats
/// by the shard of their instance: the part this node holds is fed to its
/// engine as parsed (`http::Batch`), each other part goes to its holder as
/// a batch of its own (the whole body as it came when all of it is one
/// other holder's: an agent that sends each holder its part, or a batch
/// that is one shard's).
#[derive(Clone, Debug)]
pub struct Beats {
    /// Each shard's beats, in the batch's order.
    pub parts: BTreeMap<u16, Vec<Beat>>,
    /// The batch's `lease_ms`, given to every part.
    pub lease_ms: Option<u64>,
}

/// Beats from JSON hold no NaN (JSON has none), so equality is total here.
impl PartialEq for Beats {
    fn eq(&self, other: &Beats) -> bool {
        self.parts == other.parts && self.lease_ms == other.lease_ms
    }
}
impl Eq for Beats {}

impl Beats {
    /// The body of a batch of `beats` with the lease `lease_ms`.
    pub fn body_of(beats: &[Beat], lease_ms: Option<u64>) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct Part<'a> {
            beats: &'a [Beat],
            #[serde(skip_serializing_if = "Option::is_none")]
            lease_ms: Option<u64>,
        }
        serde_json::to_vec(&Part { beats, lease_ms }).unwrap_or_default()
    }
}

/// A heartbeat batch's beats by the shard of their instance (every beat in
/// exactly one part, in order), or None for a body the handler refuses:
/// that request is answered by the node asked, whose handler names what
/// is wrong exactly as on a fleet of one shard (nothing of it reaches an
/// engine).
pub fn split_heartbeats(body: &[u8], shards: u16) -> Option<Beats> {
    let batch = crate::error::parse_json_body::<crate::http::HeartbeatBatch>(body).ok()?;
    let mut parts: BTreeMap<u16, Vec<Beat>> = BTreeMap::new();
    for beat in batch.beats {
        parts.entry(beat.instance.slot().shard(shards)).or_default().push(beat);
    }
    Some(Beats { parts, lease_ms: batch.lease_ms })
}

/// One page of a list ordered by a key (services by name), merged from
/// every holder's page: each holder answered the same `after` and `limit`
/// over its own shards, with whether more followed there. The merged page
/// is the first `limit` of them all in key order, and more follow when any
/// holder had more or some were cut here: the page the whole fleet would
/// give, so a client pages on by the last key as before.
pub fn merge_pages<T, K: Ord>(parts: Vec<(Vec<T>, bool)>, limit: usize, key: impl Fn(&T) -> K) -> (Vec<T>, bool) {
    let mut more = false;
    let mut all = Vec::new();
    for (items, more_there) in parts {
        more |= more_there;
        all.extend(items);
    }
    all.sort_by_key(key);
    if all.len() > limit {
        all.truncate(limit);
        more = true;
    }
    (all, more)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::permissions;

    #[test]
    fn every_route_has_one_rule_and_every_rule_a_route() {
        for p in TABLE {
            assert!(permissions::lookup(p.method, p.path).is_some(), "{p:?} is not a route");
            assert_eq!(TABLE.iter().filter(|q| q.method == p.method && q.path == p.path).count(), 1, "{p:?} twice");
        }
        for r in permissions::TABLE {
            assert!(lookup(r.method, r.path).is_some(), "{} {} has no shard rule", r.method, r.path);
        }
        // What the rules read is in the path they are given.
        for p in TABLE {
            match p.rule {
                ServiceInPath => assert!(p.path.contains("/services/{name}"), "{p:?}"),
                IdInPath(name) => assert!(p.path.contains(&format!("{{{name}}}")), "{p:?}"),
                _ => {}
            }
        }
    }

    #[test]
    fn a_service_goes_to_its_name_s_shard_by_path_or_body() {
        // Redis Cluster's examples: "foo" is slot 12182, "bar" 5061.
        // A service named in the query: its shard; none named: any node.
        let slot = Slot::of_name("ledger");
        assert_eq!(target("GET", "/v1/actions?limit=5&service=ledger", b"", 12), Ok(Target::Shard(slot.shard(12))));
        assert_eq!(target("GET", "/v1/actions?service=l%65dger", b"", 12), Ok(Target::Shard(slot.shard(12))));
        assert_eq!(target("GET", "/v1/actions?limit=5", b"", 12), Ok(Target::Here));
        assert_eq!(target("GET", "/v1/actions", b"", 12), Ok(Target::Here));
        let t = |m, path, body: &str| target(m, path, body.as_bytes(), 12);
        assert_eq!(t("GET", "/v1/services/foo", ""), Ok(Target::Shard(12182 % 12)));
        assert_eq!(t("POST", "/v1/services", r#"{"name":"bar","engine":"postgres"}"#), Ok(Target::Shard(5061 % 12)));
        // Decoded as axum decodes it: %66oo is foo.
        assert_eq!(t("DELETE", "/v1/services/%66oo", ""), Ok(Target::Shard(12182 % 12)));
        assert_eq!(t("DELETE", "/v1/services/bar/followers/x", ""), Ok(Target::Shard(5061 % 12)));
        // One shard: everything that is not answered here goes to its holder.
        assert_eq!(target("GET", "/v1/services/foo", b"", 1), Ok(Target::Shard(0)));
        assert_eq!(t("HEAD", "/v1/services", ""), Ok(Target::Every));
        assert_eq!(t("GET", "/v1/images", ""), Ok(Target::Fleet));
        assert_eq!(t("GET", "/healthz", ""), Ok(Target::Here));
        // A fork goes to its source's holder (which hands the new service's
        // creation to its name's holder, `node_commands`).
        assert_eq!(t("POST", "/v1/services/foo/fork", r#"{"name":"bar"}"#), Ok(Target::Shard(12182 % 12)));
    }

    #[test]
    fn an_id_goes_to_the_shard_of_the_slot_it_carries() {
        let slot = Slot::of_name("orders");
        let instance = InstanceId::new_at(1_700_000_000_000_000, 42).in_slot(slot);
        let path = format!("/v1/instances/{instance}");
        assert_eq!(target("GET", &path, b"", 16), Ok(Target::Shard(slot.shard(16))));
        let chaos = format!(r#"{{"instance":"{instance}","fault":"crash"}}"#);
        assert_eq!(target("POST", "/v1/chaos", chaos.as_bytes(), 16), Ok(Target::Shard(slot.shard(16))));
        let host = br#"{"host":"h1","fault":"crash"}"#;
        assert_eq!(target("POST", "/v1/chaos", host, 16), Ok(Target::Every));
        let result = format!("/v1/hosts/h1/actions/{instance}/result");
        assert_eq!(target("POST", &result, b"", 16), Ok(Target::Shard(slot.shard(16))));
    }

    #[test]
    fn bad_requests_are_named_not_routed() {
        let cases: &[(&str, &str, &[u8])] = &[
            ("GET", "/v1/instances/nope", b""),
            ("GET", "/v1/instances/", b""),
            ("POST", "/v1/services", b"{"),
            ("POST", "/v1/services", br#"{"name":7}"#),
            ("POST", "/v1/chaos", br#"{"fault":"crash"}"#),
            ("POST", "/v1/chaos", br#"{"instance":"x","fault":"crash"}"#),
            ("GET", "/v1/services/%ff", b""),
            ("PUT", "/v1/services", b""),
        ];
        for (method, path, body) in cases {
            let err = target(method, path, body, 8).unwrap_err();
            assert!(!err.is_empty(), "{method} {path}");
        }
        // A heartbeat batch the handler refuses is answered by the node
        // asked: its handler names what is wrong (400 or 422), as on one
        // shard, and none of it reaches an engine.
        let bad: &[&[u8]] = &[br#"{"beats":[1]}"#, br#"{"beats":[{"instance":"x","seq":1}]}"#, b"{", b"[]"];
        for body in bad {
            assert_eq!(target("POST", "/v1/heartbeats", body, 8), Ok(Target::Here), "{body:?}");
        }
    }

    /// A page of `names` after `after`, as one engine gives it.
    fn page(names: &[String], after: Option<&str>, limit: usize) -> (Vec<String>, bool) {
        let mut rest: Vec<String> = names.iter().filter(|n| after.is_none_or(|a| n.as_str() > a)).cloned().collect();
        rest.sort();
        let more = rest.len() > limit;
        rest.truncate(limit);
        (rest, more)
    }

    proptest::proptest! {
        /// Paging through the merged pages of several holders gives every
        /// service once, in order, as paging the whole fleet does.
        #[test]
        fn merged_pages_page_as_the_whole_fleet_does(
            names in proptest::collection::btree_set("[a-z][a-z0-9-]{0,8}", 0..80),
            shards in 1u16..9,
            limit in 1usize..12,
        ) {
            let names: Vec<String> = names.into_iter().collect();
            let held: Vec<Vec<String>> = (0..shards)
                .map(|s| names.iter().filter(|n| Slot::of_name(n).shard(shards) == s).cloned().collect())
                .collect();
            let mut after: Option<String> = None;
            let mut seen = Vec::new();
            for _ in 0..=names.len() {
                let parts = held.iter().map(|h| page(h, after.as_deref(), limit)).collect();
                let (merged, more) = merge_pages(parts, limit, |n: &String| n.clone());
                proptest::prop_assert_eq!((merged.clone(), more), page(&names, after.as_deref(), limit));
                seen.extend(merged.iter().cloned());
                if !more {
                    break;
                }
                after = merged.last().cloned();
            }
            proptest::prop_assert_eq!(seen, names);
        }


        /// A node answers a request itself exactly when it holds every
        /// shard the request touches (all of them, or the rule needs none);
        /// else it goes to the one holder it needs, or in parts, or to
        /// every holder, and never to a shard this node holds.
        #[test]
        fn a_request_is_answered_here_exactly_when_this_node_holds_what_it_touches(
            shards in 1u16..12,
            held_bits in proptest::num::u16::ANY,
            shard in 0u16..12,
            parts in proptest::collection::btree_set(0u16..12, 1..5),
            which in 0usize..5,
        ) {
            let shard = shard % shards;
            let holds = |s: u16| held_bits & (1 << s) != 0;
            let all = (0..shards).all(holds);
            let parts: BTreeMap<u16, Vec<Beat>> = parts
                .into_iter()
                .map(|p| p % shards)
                .enumerate()
                .map(|(i, p)| {
                    let instance = InstanceId::new_at(1_700_000_000_000_000, i as u64);
                    (p, vec![Beat { instance, seq: 1, facts: Default::default() }])
                })
                .collect();
            let target = [
                Target::Here,
                Target::Fleet,
                Target::Shard(shard),
                Target::Every,
                Target::Split(Beats { parts: parts.clone(), lease_ms: None }),
            ][which].clone();
            let touched: Vec<u16> = match &target {
                Target::Here => vec![],
                Target::Fleet => vec![0],
                Target::Shard(s) => vec![*s],
                Target::Split(p) => p.parts.keys().copied().collect(),
                Target::Every | Target::Actions => (0..shards).collect(),
            };
            let split = matches!(target, Target::Split(_));
            let decision = decide(target, shards, holds);
            // A batch is taken apart by any node that does not hold every
            // shard (its own part fed as parsed, not parsed again).
            let here = all || (!split && touched.iter().all(|&s| holds(s)));
            proptest::prop_assert_eq!(decision == Decision::Here, here, "{:?}", decision);
            match decision {
                Decision::Forward(s) => {
                    proptest::prop_assert!(!holds(s) && touched == vec![s]);
                }
                Decision::Split(p) => {
                    proptest::prop_assert!(split && !all && p.parts.keys().copied().eq(touched.iter().copied()));
                }
                Decision::Every | Decision::Actions | Decision::Here => {}
            }
        }

        /// A batch's split is a partition: every beat in exactly one part,
        /// in order, each in its instance's shard.
        #[test]
        fn a_heartbeat_batch_splits_into_a_partition(
            names in proptest::collection::vec("[a-z][a-z0-9-]{0,20}", 0..60),
            shards in 1u16..64,
        ) {
            let ids: Vec<InstanceId> = names
                .iter()
                .enumerate()
                .map(|(i, n)| InstanceId::new_at(1_700_000_000_000_000 + i as i64, i as u64).in_slot(Slot::of_name(n)))
                .collect();
            let beats: Vec<serde_json::Value> =
                ids.iter().map(|id| serde_json::json!({"instance": id, "seq": 1, "facts": {}})).collect();
            let body = serde_json::to_vec(&serde_json::json!({"beats": beats, "lease_ms": 5000})).unwrap();
            let Ok(Target::Split(split)) = target("POST", "/v1/heartbeats", &body, shards) else {
                panic!("not split");
            };
            let parts = &split.parts;
            // Each part's body is a batch of exactly its beats, in order,
            // with the batch's lease, that the handler reads as it is.
            for part in parts.values() {
                let sent: serde_json::Value = serde_json::from_slice(&Beats::body_of(part, split.lease_ms)).unwrap();
                proptest::prop_assert_eq!(&sent["lease_ms"], &serde_json::json!(5000));
                let read = crate::error::parse_json_body::<crate::http::HeartbeatBatch>(&Beats::body_of(part, split.lease_ms)).unwrap();
                proptest::prop_assert_eq!(&read.beats, part);
            }
            // Every beat in exactly one part, in the batch's order.
            let index = |b: &Beat| ids.iter().position(|id| *id == b.instance).unwrap();
            let mut seen: Vec<usize> = parts.values().flatten().map(index).collect();
            for part in parts.values() {
                proptest::prop_assert!(part.windows(2).all(|w| index(&w[0]) < index(&w[1])), "in order");
            }
            seen.sort_unstable();
            proptest::prop_assert_eq!(seen, (0..ids.len()).collect::<Vec<_>>());
            for (shard, part) in parts {
                proptest::prop_assert!(*shard < shards);
                for beat in part {
                    proptest::prop_assert_eq!(Slot::of_name(&names[index(beat)]).shard(shards), *shard);
                }
            }
        }
    }
}
