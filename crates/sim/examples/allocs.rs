//! `cargo run -p drover-sim --release --example allocs -- zone-outage 20000 1`:
//! the simulator under a counting allocator (mimalloc underneath, as in the
//! `drover` binary). Prints allocations, frees and bytes per engine event,
//! which is how the cost of strings and boxes per event is measured.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static FREES: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(l.size() as u64, Relaxed);
        // SAFETY: forwarded unchanged to mimalloc.
        unsafe { mimalloc::MiMalloc.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        FREES.fetch_add(1, Relaxed);
        // SAFETY: `p` came from `alloc`/`realloc` above with layout `l`.
        unsafe { mimalloc::MiMalloc.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        FREES.fetch_add(1, Relaxed);
        BYTES.fetch_add(new as u64, Relaxed);
        // SAFETY: forwarded unchanged to mimalloc.
        unsafe { mimalloc::MiMalloc.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let scenario = args.get(1).map(String::as_str).unwrap_or("zone-outage");
    let services = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let seed = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
    let sc = match drover_sim::Scenario::load(scenario) {
        Ok(sc) => sc,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let r = match drover_sim::run(drover_sim::Options { scenario: sc, services, seed, event_log: None }) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let (a, f, b) = (ALLOCS.load(Relaxed), FREES.load(Relaxed), BYTES.load(Relaxed));
    let ev = r.engine_events.max(1) as f64;
    println!("services {services} engine events {} digest {}", r.engine_events, r.digest);
    println!("allocations {a} ({:.2} per event), frees {f}, bytes {b} ({:.0} per event)", a as f64 / ev, b as f64 / ev);
}
