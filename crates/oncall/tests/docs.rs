//! The example `oncall.toml` in docs/oncall.md is valid, so the docs cannot
//! drift from the parser.

#[test]
fn the_documented_example_configuration_parses() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/oncall.md")).unwrap();
    let start = doc.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let end = start + doc[start..].find("```").unwrap();
    let config = drover_oncall::Config::from_toml(&doc[start..end]).unwrap();
    let db = config.team("db").unwrap();
    assert_eq!(db.escalation.len(), 5);
    assert_eq!(db.people.len(), 3);
    assert_eq!(config.delivery.feed.len(), 1);
    assert_eq!(config.incident_commanders.rotation, ["dave", "erin"]);
}
