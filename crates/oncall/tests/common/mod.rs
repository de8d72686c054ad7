//! The team the pure tests page: db in Europe/Berlin, alice and bob rotating
//! weekly, carol the manager, dave the incident commander.

pub const TEAM_TOML: &str = r#"
default_team = "db"

[incident_commanders]
rotation = ["dave"]

[[people]]
name = "dave"
email = "dave@example.com"

[[teams]]
name = "db"
time_zone = "Europe/Berlin"
manager = "carol"
routing_keys = ["db-routing-key"]
chat = { slack = "http://chat.example/db" }

[[teams.people]]
name = "alice"
slack = "http://chat.example/alice"
email = "alice@example.com"
[[teams.people]]
name = "bob"
email = "bob@example.com"
[[teams.people]]
name = "carol"
email = "carol@example.com"

[[teams.schedules]]
name = "level1"
rotation = ["alice", "bob"]
handoff = "2026-01-05T10:00:00"
shift = "1w"

[[teams.schedules]]
name = "level2"
rotation = ["bob", "alice"]
handoff = "2026-01-05T10:00:00"
shift = "1w"
"#;
