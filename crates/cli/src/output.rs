//! Tables for people; `--json` prints the server's JSON untouched.

use comfy_table::presets::UTF8_BORDERS_ONLY;
use comfy_table::{ContentArrangement, Table};
use serde_json::Value;

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_content_arrangement(ContentArrangement::Dynamic).set_header(header.to_vec());
    t
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()));
}

fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// First 8 characters of an image digest after `sha256:`.
fn short_image(id: &str) -> String {
    let digest = id.strip_prefix("sha256:").unwrap_or(id);
    digest.chars().take(12).collect()
}

pub fn services(v: &Value, json: bool) {
    if json {
        return print_json(v);
    }
    let mut t = table(&["NAME", "ENGINE", "STATE", "PRIMARY", "INSTANCES", "REMEDY"]);
    for s in items(v) {
        let instances = items(s.get("instances").unwrap_or(&Value::Null));
        let primary = instances
            .iter()
            .find(|i| text(i, "role") == "primary")
            .map(|i| format!("{} ({})", text(i, "id"), text(i, "state")))
            .unwrap_or_else(|| "-".into());
        t.add_row(vec![
            text(s, "name"),
            text(s, "engine"),
            text(s, "state"),
            primary,
            instances.len().to_string(),
            text(s, "remedy"),
        ]);
    }
    println!("{t}");
}

pub fn service(v: &Value, json: bool) {
    if json {
        return print_json(v);
    }
    println!("service  {} ({})", text(v, "name"), text(v, "id"));
    println!("engine   {}  image {}", text(v, "engine"), short_image(&text(v, "image")));
    println!("state    {} since {}", text(v, "state"), text(v, "state_since"));
    if let Some(plan) = v.get("plan") {
        println!("plan     {} follower(s), sync {}", text(plan, "followers"), text(plan, "sync"));
    }
    println!("provider {}  team {}", text(v, "provider"), text(v, "team"));
    if let Some(labels) = v.get("labels").and_then(Value::as_object).filter(|l| !l.is_empty()) {
        let pairs: Vec<String> =
            labels.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect();
        println!("labels   {}", pairs.join(" "));
    }
    let url = text(v, "url");
    if !url.is_empty() {
        println!("url      {url}");
    }
    for read_url in items(v.get("read_urls").unwrap_or(&Value::Null)) {
        println!("read url {}", read_url.as_str().unwrap_or_default());
    }
    let remedy = text(v, "remedy");
    if !remedy.is_empty() {
        println!("remedy   {remedy}");
    }
    let mut t = table(&["INSTANCE", "ROLE", "STATE", "ZONE", "WRITABLE", "FENCED", "LAST HEARTBEAT"]);
    for i in items(v.get("instances").unwrap_or(&Value::Null)) {
        t.add_row(vec![
            text(i, "id"),
            match i.get("read_slot").and_then(Value::as_u64) {
                Some(slot) => format!("{} (read {slot})", text(i, "role")),
                None => text(i, "role"),
            },
            text(i, "state"),
            text(i, "zone"),
            text(i, "writable"),
            text(i, "fenced"),
            text(i, "last_heartbeat_at"),
        ]);
    }
    println!("{t}");
}

pub fn instance(v: &Value, json: bool) {
    if json {
        return print_json(v);
    }
    let mut t = table(&["FIELD", "VALUE"]);
    for key in [
        "id",
        "service",
        "role",
        "state",
        "state_since",
        "zone",
        "provider",
        "image",
        "writable",
        "fenced",
        "last_heartbeat_at",
    ] {
        t.add_row(vec![key.to_string(), text(v, key)]);
    }
    if let Some(Value::Object(facts)) = v.get("facts") {
        for (k, fact) in facts {
            t.add_row(vec![format!("facts.{k}"), fact.to_string().trim_matches('"').to_string()]);
        }
    }
    println!("{t}");
}

pub fn events(v: &Value, json: bool) {
    if json {
        return print_json(v);
    }
    let mut t = table(&["SEQ", "AT", "SUBJECT", "SERVICE", "INSTANCE", "FROM", "TO", "CAUSE"]);
    for e in items(v) {
        t.add_row(vec![
            text(e, "seq"),
            text(e, "at"),
            text(e, "subject"),
            text(e, "service"),
            text(e, "instance"),
            text(e, "from"),
            text(e, "to"),
            text(e, "cause"),
        ]);
    }
    println!("{t}");
}

pub fn actions(v: &Value, json: bool, single: Option<&Value>) {
    if json {
        return print_json(single.unwrap_or(v));
    }
    let mut t = table(&["ACTION", "KIND", "STATE", "ATTEMPTS", "INSTANCE", "CAUSE", "ERROR"]);
    for a in items(v) {
        let mut kind = text(a, "kind");
        if let Some(fault) = a.get("fault").and_then(Value::as_str) {
            kind = format!("{kind} {fault}");
        }
        if let Some(role) = a.get("role").and_then(Value::as_str) {
            kind = format!("{kind} {role}");
        }
        t.add_row(vec![
            text(a, "id"),
            kind,
            text(a, "state"),
            text(a, "attempts"),
            text(a, "instance"),
            text(a, "cause"),
            text(a, "error"),
        ]);
    }
    println!("{t}");
}

pub fn audit(v: &Value, json: bool) {
    if json {
        return print_json(v);
    }
    let mut t = table(&["SEQ", "AT", "ACTOR", "ROLE", "COMMAND", "TARGET", "OUTCOME"]);
    for a in items(v) {
        t.add_row(vec![
            text(a, "seq"),
            text(a, "at"),
            text(a, "actor"),
            text(a, "role"),
            text(a, "command"),
            text(a, "target"),
            text(a, "outcome"),
        ]);
    }
    println!("{t}");
}

/// A token just created: the secret on its own line, shown this once.
pub fn token_created(v: &Value, json: bool) {
    if json {
        return print_json(v);
    }
    println!(
        "token {} ({}, role {}) created; it is shown only this once:",
        text(v, "name"),
        text(v, "id"),
        text(v, "role")
    );
    println!("{}", text(v, "token"));
}

pub fn tokens(v: &Value, json: bool) {
    if json {
        return print_json(v);
    }
    let mut t = table(&["ID", "NAME", "ROLE", "TEAM", "HOST", "CREATED", "EXPIRES", "REVOKED", "LAST USED"]);
    for a in items(v) {
        t.add_row(vec![
            text(a, "id"),
            text(a, "name"),
            text(a, "role"),
            text(a, "team"),
            text(a, "host"),
            text(a, "created_at"),
            text(a, "expires_at"),
            text(a, "revoked_at"),
            text(a, "last_used"),
        ]);
    }
    println!("{t}");
}

pub fn images(v: &Value, json: bool) {
    if json {
        return print_json(v);
    }
    let mut t = table(&["IMAGE", "ENGINE", "VERSION", "PACKAGES", "CREATED"]);
    for i in items(v) {
        let packages = match i.get("packages") {
            Some(Value::Object(p)) => {
                p.iter().map(|(k, v)| format!("{k} {}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(", ")
            }
            _ => String::new(),
        };
        t.add_row(vec![
            short_image(&text(i, "id")),
            text(i, "engine"),
            text(i, "version"),
            packages,
            text(i, "created_at"),
        ]);
    }
    println!("{t}");
}

pub fn receipt(v: &Value, json: bool) {
    if json {
        return print_json(v);
    }
    let unknown = items(v.get("unknown").unwrap_or(&Value::Null)).len();
    println!("accepted {}  stale {}  unknown {}", text(v, "accepted"), text(v, "stale"), unknown);
}

/// `GET /v1/services/{name}/checks`: one row per check.
pub fn checks(v: &Value, json: bool) {
    if json {
        return print_json(v);
    }
    let mut t = table(&["CHECK", "STATUS", "SUMMARY"]);
    if let Some(map) = v.as_object() {
        for (name, check) in map {
            t.add_row(vec![name.clone(), text(check, "status"), text(check, "summary")]);
        }
    }
    println!("{t}");
}
