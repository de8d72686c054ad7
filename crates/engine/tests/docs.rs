//! The operator docs' transition table is the code's table.

use drover_model::InstanceState;

#[test]
fn docs_transition_table_matches_the_code() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/states.md")).expect("docs/states.md");
    let section = doc.split("## Transition table").nth(1).expect("a transition table section");
    let table = section.split("\n## ").next().unwrap_or(section);
    let mut lines = table.lines().filter(|l| l.starts_with('|'));
    let header: Vec<String> = lines
        .next()
        .expect("header")
        .split('|')
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .skip(1)
        .collect();
    let columns: Vec<InstanceState> = header.iter().map(|c| c.parse().expect("state name in header")).collect();
    assert_eq!(columns, InstanceState::ALL, "columns are every state, in order");
    let mut rows = 0;
    for line in lines.skip(1) {
        let cells: Vec<&str> = line.split('|').map(str::trim).filter(|c| !c.is_empty()).collect();
        let from: InstanceState = cells[0].trim_matches('*').parse().expect("state name in row");
        for (to, cell) in columns.iter().zip(&cells[1..]) {
            let legal = match *cell {
                "✔" => true,
                "·" => false,
                other => panic!("unexpected cell {other:?}"),
            };
            assert_eq!(
                legal,
                from.can_become(*to),
                "docs say {from} -> {to} is {}",
                if legal { "legal" } else { "illegal" }
            );
        }
        rows += 1;
    }
    assert_eq!(rows, InstanceState::ALL.len());
}
