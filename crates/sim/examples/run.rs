//! `cargo run -p drover-sim --release --example run -- zone-outage 10000 1`:
//! the simulator without building the whole `drover` binary.

/// The same allocator as the `drover` binary, so figures match.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let scenario = args.get(1).map(String::as_str).unwrap_or("zone-outage");
    let services = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let seed = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
    let log = args.get(4).map(std::path::PathBuf::from);
    if let Err(e) = drover_sim::command(scenario, services, seed, log) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
