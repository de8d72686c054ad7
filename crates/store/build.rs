// The migrations are embedded at compile time (`refinery::embed_migrations!`):
// a new file must rebuild the crate.
fn main() {
    for dir in ["migrations", "migrations_pg", "migrations_oncall"] {
        println!("cargo:rerun-if-changed={dir}");
    }
}
