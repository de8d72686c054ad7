//! `cargo run --release -p drover-sim --example sim -- SCENARIO SERVICES SEED`:
//! the same run as `drover sim`, without building the whole CLI.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scenario = args.first().map(String::as_str).unwrap_or("zone-outage");
    let services = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let seed = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
    if let Err(e) = drover_sim::command(scenario, services, seed, None) {
        eprintln!("{e}");
        std::process::exit(1);
    }
}
