//! `drover`: `drover serve` runs the control plane; every other subcommand
//! is a thin HTTP client of a running server.

mod agent;
mod archives;
mod bench;
mod bench_connections;
mod bench_hosts;
mod bench_kafka;
mod bench_redis;
mod bench_writes;
mod breakglass;
mod client;
mod config;
mod output;
mod pages;
mod rollouts;
mod store;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use config::{LogFormat, ServeArgs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// mimalloc rather than glibc's malloc: `drover sim` at a million services
/// allocates and frees tens of millions of small strings (event causes,
/// names), where glibc spent about a third of the time and fragmented
/// across the shard threads.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `drover sim` looks up millions of random ids in gigabytes of hash
/// tables: with 4 KiB pages nearly every lookup also misses the TLB. Let
/// mimalloc take 2 MiB pages from the kernel (transparent huge pages where
/// the kernel offers them by `madvise`): 12–15 % less CPU at a million
/// services. Only for the simulator; a server's heap stays in small pages.
fn large_pages_for_the_simulated_fleet() {
    // SAFETY: sets one of mimalloc's options; it is read when mimalloc next
    // asks the OS for memory, and any value is valid.
    unsafe { libmimalloc_sys::mi_option_set_enabled(libmimalloc_sys::mi_option_large_os_pages, true) }
}

#[derive(Parser)]
#[command(name = "drover", version, about = "Drover: a control plane for fleets of managed databases")]
struct Cli {
    /// URL of the Drover server the client subcommands talk to [default: http://127.0.0.1:7700].
    #[arg(long, env = "DROVER_URL", help_heading = CLIENT_OPTIONS)]
    server: Option<String>,
    /// Print the server's raw JSON instead of tables.
    #[arg(long, help_heading = CLIENT_OPTIONS)]
    json: bool,
    /// A note sent as x-drover-actor; the server no longer takes it as
    /// identity (the token's name is in the audit trail).
    #[arg(long, env = "DROVER_ACTOR", help_heading = CLIENT_OPTIONS)]
    actor: Option<String>,
    /// A file holding the API token [default: DROVER_TOKEN, else DATA_DIR/admin.token when readable].
    #[arg(long, env = "DROVER_TOKEN_FILE", help_heading = CLIENT_OPTIONS)]
    token_file: Option<PathBuf>,
    /// The CA certificate to trust for an https server [default: the data
    /// dir's generated tls-cert.pem if the URL is https and it exists, else
    /// the system's roots].
    #[arg(long, env = "DROVER_CA_CERT", help_heading = CLIENT_OPTIONS)]
    ca_cert: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

const CLIENT_OPTIONS: &str = "Client options (before or after the subcommand)";
const DEFAULT_SERVER: &str = "http://127.0.0.1:7700";

/// The options of the commands that talk to a server. They may be typed
/// before the subcommand (`drover --json services list`, the top-level
/// `Cli`'s) or anywhere after it (`drover services list --json`, these);
/// the ones after win. Only the top-level ones read the environment, so a
/// flag always beats `DROVER_URL` / `DROVER_ACTOR`.
#[derive(Args, Clone, Debug, Default)]
struct ClientArgs {
    /// URL of the Drover server [env: DROVER_URL] [default: http://127.0.0.1:7700].
    #[arg(long, global = true, help_heading = CLIENT_OPTIONS)]
    server: Option<String>,
    /// Print the server's raw JSON instead of tables.
    #[arg(long, global = true, help_heading = CLIENT_OPTIONS)]
    json: bool,
    /// A note sent as x-drover-actor, not an identity [env: DROVER_ACTOR].
    #[arg(long, global = true, help_heading = CLIENT_OPTIONS)]
    actor: Option<String>,
    /// A file holding the API token [env: DROVER_TOKEN_FILE].
    #[arg(long, global = true, help_heading = CLIENT_OPTIONS)]
    token_file: Option<PathBuf>,
    /// The CA certificate to trust for an https server [env: DROVER_CA_CERT].
    #[arg(long, global = true, help_heading = CLIENT_OPTIONS)]
    ca_cert: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the control plane (HTTP API, engine, sim provider).
    Serve(Box<ServeArgs>),
    /// Create, list, show and delete services.
    Services {
        #[command(subcommand)]
        cmd: ServicesCmd,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show instances.
    Instances {
        #[command(subcommand)]
        cmd: InstancesCmd,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The event log: transitions and action steps with their causes.
    Events {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        instance: Option<String>,
        /// Only events after this sequence number.
        #[arg(long)]
        after: Option<u64>,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Inject a fault into an instance.
    Chaos {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        instance: String,
        /// crash, hang, partition or heal.
        #[arg(long, value_parser = ["crash", "hang", "partition", "heal"])]
        fault: String,
    },
    /// Send heartbeats by hand.
    Heartbeats {
        #[command(subcommand)]
        cmd: HeartbeatsCmd,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Actions the engine decided and how they went.
    Actions {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// The audit trail of commands.
    Audit {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// The image catalog.
    Images {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Rollouts: move services onto an image in waves, and watch them.
    Rollouts {
        #[command(subcommand)]
        cmd: rollouts::RolloutsCmd,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Archives of deleted PostgreSQL services: list them, restore one.
    Archives {
        #[command(subcommand)]
        cmd: archives::ArchivesCmd,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Pages: list them, show one, acknowledge or resolve.
    Pages {
        #[command(subcommand)]
        cmd: Option<pages::PagesCmd>,
        #[command(flatten)]
        client: ClientArgs,
        /// triggered, acknowledged, resolved or open.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        team: Option<String>,
    },
    /// API tokens: create (shown once), list, revoke. Admin only.
    Tokens {
        #[command(subcommand)]
        cmd: TokensCmd,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The CVE audit: import OSV advisories, audit the images.
    Advisories {
        #[command(subcommand)]
        cmd: breakglass::AdvisoriesCmd,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Break-glass runbooks: list, run (or --dry-run), approve, show.
    Runbooks {
        #[command(subcommand)]
        cmd: breakglass::RunbooksCmd,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Pager metrics, the company-wide feed, who is on call.
    Pager {
        #[command(subcommand)]
        cmd: pages::PagerCmd,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Run the standalone agent of this host: probe its instances every
    /// interval, send batched heartbeats to --server, hold the primaries'
    /// lease and fence them when it cannot renew (docs/agent.md).
    Agent {
        /// The local provider's data dir; only `local/state.json` is read.
        #[arg(long, env = "DROVER_DATA_DIR", default_value = "./drover-data")]
        data_dir: PathBuf,
        /// How often every instance is probed and a batch is sent.
        /// `drover serve` judges an instance uncertain after four missed
        /// beats of this cadence (local::HEARTBEAT_INTERVAL).
        #[arg(long, default_value_t = drover_providers::local::HEARTBEAT_INTERVAL.as_millis() as u64)]
        interval_ms: u64,
        /// Fence the primaries when no batch was acknowledged for this long
        /// [default: 1 with --host (a silent host's primaries are then
        /// counted fenced, so its failover does not wait), else 10].
        #[arg(long)]
        lease_secs: Option<f64>,
        /// URL of the control plane, or of its nodes separated by commas
        /// (the agent moves on to the next when one cannot be reached)
        /// [env: DROVER_URL] [default: http://127.0.0.1:7700].
        #[arg(long)]
        server: Option<String>,
        /// The CA certificate of an https control plane [env: DROVER_CA_CERT]
        /// [default: tls-cert.pem in --data-dir if the URL is https and it exists].
        #[arg(long)]
        ca_cert: Option<PathBuf>,
        /// Log lines as text or as JSON objects.
        #[arg(long, env = "DROVER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// A file holding this host's agent token (or DROVER_TOKEN):
        /// `drover tokens create NAME --role agent --host $(hostname)`.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Register this host under NAME (`POST /v1/hosts`) and carry out
        /// the actions of the instances placed on it: the servers under
        /// --data-dir are then this agent's children (docs/agent.md).
        #[arg(long, value_name = "NAME", requires_all = ["zone", "address"])]
        host: Option<String>,
        /// The zone of --host.
        #[arg(long, requires = "host")]
        zone: Option<String>,
        /// The address --host's servers are reached at (e.g. 127.0.0.2).
        #[arg(long, requires = "host")]
        address: Option<String>,
        /// The instances --host may hold.
        #[arg(long, default_value_t = 16, requires = "host")]
        capacity: u32,
        /// A directory every host reaches (a shared filesystem standing for
        /// an object store) where the backups and archived WAL of --host's
        /// services go; give every agent the same one. Without it, services
        /// on this host have no backups (their backups check says so).
        #[arg(long, value_name = "DIR", requires = "host")]
        backup_repo: Option<PathBuf>,
    },
    /// Run the deterministic fleet simulator: the real engine over a
    /// simulated fleet (scenarios: docs/scenarios.md). Last line: JSON.
    Sim {
        /// A built-in scenario (zone-outage, steady-week, object-store-outage,
        /// kernel-cve-roll, control-plane-partition, flapping-network,
        /// bad-image-roll, mixed-fleet, kafka-fleet, control-plane-nodes) or a
        /// path to a TOML file (docs/scenarios.md).
        #[arg(long)]
        scenario: String,
        #[arg(long, default_value_t = 10_000)]
        services: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Also write every engine event as JSON lines to this file.
        #[arg(long)]
        event_log: Option<PathBuf>,
    },
    /// The simulated world as its own process (a small fake cloud API):
    /// nodes started with `serve --sim-provider-url` share it, so simulated
    /// machines outlive the node that created them.
    SimProvider {
        /// Address to listen on (loopback unless the nodes are elsewhere).
        #[arg(long, env = "DROVER_SIM_PROVIDER_LISTEN", default_value = "127.0.0.1:7800")]
        listen: std::net::SocketAddr,
        /// Where the world (sim-provider.json) and the newest lease
        /// generation seen (sim-generation) are kept.
        #[arg(long, env = "DROVER_SIM_PROVIDER_DATA_DIR", default_value = "./drover-sim")]
        data_dir: PathBuf,
        /// How long each action takes.
        #[arg(long, default_value_t = 50)]
        action_latency_ms: u64,
    },
    /// Secrets at rest: seal a value for oncall.toml with the data dir's key.
    #[command(subcommand)]
    Secrets(SecretsCmd),
    /// The control plane's own store: move a fleet from the embedded SQLite
    /// store to PostgreSQL.
    #[command(subcommand)]
    Store(StoreCmd),
    /// Print a shell completion script, e.g.
    /// `drover completions bash > /etc/bash_completion.d/drover`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum StoreCmd {
    /// Copy every service, instance, action, event and record of the data
    /// dir's SQLite store into an empty PostgreSQL database, in one
    /// transaction, and mark the data dir as moved; then start
    /// `drover serve --data-dir DIR --store URL`. Stop the control plane
    /// first (the data dir's lock is taken).
    Migrate {
        /// The data dir whose `drover.db` is moved.
        #[arg(long, env = "DROVER_DATA_DIR", default_value = "./drover-data")]
        from: PathBuf,
        /// postgres://USER[:PASSWORD]@HOST:PORT/DB, empty, reached directly.
        #[arg(long)]
        to: String,
    },
}

#[derive(Subcommand)]
enum SecretsCmd {
    /// Read a value from standard input (a webhook URL, an SMTP password)
    /// and print it sealed with the data dir's key (`DROVER_SECRET_KEY` or
    /// DATA_DIR/secret.key, created if missing), to paste into oncall.toml.
    Seal {
        #[arg(long, env = "DROVER_DATA_DIR", default_value = "./drover-data")]
        data_dir: PathBuf,
    },
}

/// `--label key=value`, checked as the server checks it.
pub(crate) fn parse_label_arg(text: &str) -> Result<(String, String), String> {
    drover_model::parse_label(text)
}

/// Labels as the API takes them: `{"key": "value", ...}`.
pub(crate) fn labels_json(labels: Vec<(String, String)>) -> serde_json::Value {
    serde_json::Value::Object(labels.into_iter().map(|(k, v)| (k, v.into())).collect())
}

#[derive(Subcommand)]
enum ServicesCmd {
    /// Create a service.
    Create {
        name: String,
        #[arg(long, value_parser = ["postgres", "redis", "kafka"], default_value = "postgres")]
        engine: String,
        /// Followers of the primary (PostgreSQL, Redis; default 1).
        #[arg(long)]
        followers: Option<u8>,
        /// Peer brokers (Kafka; default 3).
        #[arg(long)]
        brokers: Option<u8>,
        #[arg(long)]
        provider: Option<String>,
        /// Synchronous replication (PostgreSQL); for Redis: the primary
        /// refuses writes while no replica acknowledged within 2 s.
        #[arg(long)]
        sync: bool,
        #[arg(long)]
        team: Option<String>,
        /// Zones, comma-separated.
        #[arg(long, value_delimiter = ',')]
        zones: Option<Vec<String>>,
        /// Rotate the URL's credential every this many days (0: only on
        /// demand; default: the control plane's `credential_rotation_days`).
        #[arg(long)]
        credential_rotation_days: Option<u32>,
        /// A label `key=value` (repeat for more); rollouts select by labels.
        #[arg(long = "label", value_parser = parse_label_arg)]
        labels: Vec<(String, String)>,
    },
    /// Replace a service's labels with these `key=value` pairs (none: clear them).
    Label {
        name: String,
        #[arg(value_parser = parse_label_arg)]
        labels: Vec<(String, String)>,
    },
    List,
    Show {
        name: String,
    },
    Delete {
        name: String,
    },
    /// Clear "needs a human": the engine tries the failed remedy again.
    Resume {
        name: String,
    },
    /// Planned switchover to the most advanced follower.
    Switchover {
        name: String,
    },
    /// A new service with SOURCE's plan and its data as of `--at` (what
    /// committed before that moment) or its latest: a fork, or a rollback
    /// to before a bad migration. Needs a backup of SOURCE taken before `--at`.
    Fork {
        source: String,
        /// The new service's name.
        name: String,
        /// RFC 3339, fractional seconds allowed (2026-12-01T09:30:00.25Z).
        #[arg(long)]
        at: Option<String>,
    },
    /// Resize by replacement, now: a new member from IMAGE (other settings
    /// or resources), a planned switchover, the old member retired; the URL
    /// stays. Prints the one-service rollout that does it (`drover rollouts
    /// watch ID` follows it).
    Resize {
        name: String,
        /// The image's id (`drover images`, or `POST /v1/images`).
        #[arg(long)]
        image: String,
    },
    /// Upgrade to a newer major version by replacement, now (PostgreSQL:
    /// a new member fed by logical replication, a planned switchover); the
    /// URL stays. Prints the one-service rollout that does it.
    Upgrade {
        name: String,
        /// The major version to move onto (17).
        #[arg(long)]
        version: String,
    },
    /// Move an upgraded service back onto the major it ran before, the
    /// same way (writes made since the upgrade come back with it).
    UpgradeRollback {
        name: String,
    },
    /// Read replicas on demand (PostgreSQL): each with its own stable read URL.
    #[command(subcommand)]
    Followers(FollowersCmd),
    /// Backups, restore tests and service checks.
    #[command(subcommand)]
    Backups(BackupsCmd),
    /// Backups, replication, security and performance checks.
    Checks {
        name: String,
    },
    /// A new credential for the service's URL; the old one keeps working
    /// for the overlap (`rotation_overlap`), then is revoked.
    RotateCredentials {
        name: String,
    },
}

#[derive(Subcommand)]
enum TokensCmd {
    /// Create a token; prints it once (only its hash is kept).
    Create {
        name: String,
        #[arg(long, value_parser = ["viewer", "operator", "admin", "agent", "integration"])]
        role: String,
        /// Limit the token to one team's services (integration: where its alerts go).
        #[arg(long)]
        team: Option<String>,
        /// Agent tokens: the host whose instances it reports.
        #[arg(long)]
        host: Option<String>,
        /// e.g. 30d, 12h, 15m, 90s (default: no expiry).
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// Every token (no secrets).
    List,
    /// Revoke a token at once.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum FollowersCmd {
    /// Add read replicas (asynchronous followers, each with a read URL
    /// through the router); at most 8 per service.
    Add {
        name: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Remove the read replica ID (an instance id from `services show`):
    /// its read URL goes with it. The primary and the plan's followers stay.
    Remove { name: String, id: String },
}

#[derive(Subcommand)]
enum BackupsCmd {
    /// Take a base backup now.
    Take { name: String },
    /// Restore the latest backup into a scratch instance and check it now.
    Verify { name: String },
}

#[derive(Subcommand)]
enum InstancesCmd {
    Show { id: String },
}

#[derive(Subcommand)]
enum HeartbeatsCmd {
    /// Send one heartbeat.
    Send {
        #[arg(long)]
        instance: String,
        #[arg(long)]
        seq: u64,
        /// Facts as JSON, e.g. '{"role":"primary","writable":true}'.
        #[arg(long)]
        facts: Option<String>,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Heartbeat ingest through the engine, in process.
    Heartbeats {
        #[arg(long, default_value_t = 100_000)]
        instances: usize,
        /// Rounds of one heartbeat per instance (one simulated second each).
        #[arg(long, default_value_t = 10)]
        rounds: usize,
    },
    /// Failovers of a real local HA pair under write load (a crash or a hang of its primary);
    /// for Kafka, kill -9 of the broker a producer writes through.
    Failover {
        /// `postgres` (pgbouncer, sync replication), `redis` (HAProxy; a
        /// write is acknowledged by `WAIT 1`) or `kafka` (three tansu
        /// brokers behind HAProxy; librdkafka, idempotent, `acks=all`).
        #[arg(long, default_value = "postgres", value_parser = ["postgres", "redis", "kafka"])]
        engine: String,
        /// `crash` (kill -9) or `hang` (SIGSTOP, without same-host
        /// evidence) of the primary; `host-crash` or `host-hang` of the
        /// primary's whole host (PostgreSQL: three agents stand for hosts).
        #[arg(long, default_value = "crash", value_parser = ["crash", "hang", "host-crash", "host-hang"])]
        fault: String,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Alert ingest with deduplication through the pager and oncall.db.
    Alerts {
        #[arg(long, default_value_t = 200_000)]
        alerts: usize,
        /// Distinct dedup keys; the rest are repeats.
        #[arg(long, default_value_t = 1_000)]
        keys: usize,
        #[arg(long, default_value_t = 4)]
        producers: usize,
    },
    /// Idle and slow-header connections flooding a real `drover serve`
    /// while /healthz and GET /v1/services are timed (budget: 1 s each).
    Connections {
        /// Connections that never send a byte.
        #[arg(long, default_value_t = 20_000)]
        idle: usize,
        /// Connections that send a request head one byte a second.
        #[arg(long, default_value_t = 10_000)]
        slow: usize,
        /// Timed rounds (one /healthz and one GET /v1/services each).
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// The server's --max-connections [default: its own default].
        #[arg(long)]
        max_connections: Option<usize>,
        /// An attacker reopens a connection the server closed after this.
        #[arg(long, default_value_t = 1000)]
        reconnect_ms: u64,
    },
    /// One process of `bench connections`' flood (started by it).
    #[command(hide = true)]
    ConnectionsAttacker {
        #[arg(long)]
        target: std::net::SocketAddr,
        #[arg(long)]
        source: std::net::IpAddr,
        #[arg(long)]
        idle: usize,
        #[arg(long)]
        slow: usize,
        #[arg(long)]
        reconnect_ms: u64,
    },
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    refuse_misplaced_client_flags(&cli, &matches);
    // Whether `--no-local` / DROVER_NO_LOCAL was given at all: only then does
    // it override the config file's `no_local`.
    let no_local_set = matches.subcommand_matches("serve").is_some_and(|m| {
        matches!(m.value_source("no_local"), Some(ValueSource::CommandLine | ValueSource::EnvVariable))
    });
    if !matches!(cli.command, Cmd::Serve(_) | Cmd::SimProvider { .. } | Cmd::Agent { .. } | Cmd::Bench(_)) {
        // A client's output piped into `head` or `grep -q` ends quietly, as
        // with every Unix tool, instead of a "Broken pipe" panic. The
        // long-running commands keep Rust's default (SIGPIPE ignored): a
        // closed socket or pipe is an error they handle, never their end.
        // SAFETY: called before any other thread exists; restoring the
        // default disposition of a signal has no other effect.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli, no_local_set));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

impl Cmd {
    /// The client options of a command that talks to a server.
    fn client(&self) -> Option<&ClientArgs> {
        match self {
            Cmd::Services { client, .. }
            | Cmd::Instances { client, .. }
            | Cmd::Events { client, .. }
            | Cmd::Chaos { client, .. }
            | Cmd::Heartbeats { client, .. }
            | Cmd::Actions { client, .. }
            | Cmd::Audit { client, .. }
            | Cmd::Images { client }
            | Cmd::Rollouts { client, .. }
            | Cmd::Archives { client, .. }
            | Cmd::Pages { client, .. }
            | Cmd::Tokens { client, .. }
            | Cmd::Advisories { client, .. }
            | Cmd::Runbooks { client, .. }
            | Cmd::Pager { client, .. } => Some(client),
            Cmd::Serve(_)
            | Cmd::Bench(_)
            | Cmd::Agent { .. }
            | Cmd::Sim { .. }
            | Cmd::SimProvider { .. }
            | Cmd::Secrets(_)
            | Cmd::Store(_)
            | Cmd::Completions { .. } => None,
        }
    }
}

/// `drover --json serve` is a mistake, not something to ignore silently:
/// the top-level client options are accepted only before a command that
/// takes them (`--server` also before `agent`). Exits with clap's usage error.
fn refuse_misplaced_client_flags(cli: &Cli, matches: &clap::ArgMatches) {
    if cli.command.client().is_some() {
        return;
    }
    let agent = matches!(cli.command, Cmd::Agent { .. });
    for flag in ["server", "json", "actor", "token_file", "ca_cert"] {
        if agent && (flag == "server" || flag == "token_file" || flag == "ca_cert") {
            continue;
        }
        if matches.value_source(flag) == Some(ValueSource::CommandLine) {
            let name = matches.subcommand_name().unwrap_or("this command");
            Cli::command()
                .error(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!(
                        "--{} is an option of the client commands; `drover {name}` does not take it",
                        flag.replace('_', "-")
                    ),
                )
                .exit();
        }
    }
}

/// Prints the completion script of `shell` on standard output.
fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "drover", &mut script);
    match std::io::Write::write_all(&mut std::io::stdout().lock(), &script) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::anyhow!("cannot write the completion script: {e}"))
        }
        _ => Ok(()),
    }
}

impl Cli {
    /// The server URL: after the subcommand > before it > `DROVER_URL` > default.
    fn server_url(&self) -> String {
        let after = match &self.command {
            Cmd::Agent { server, .. } => server.clone(),
            other => other.client().and_then(|c| c.server.clone()),
        };
        after.or_else(|| self.server.clone()).unwrap_or_else(|| DEFAULT_SERVER.to_string())
    }

    /// `--json` before or after the subcommand.
    fn json(&self) -> bool {
        self.json || self.command.client().is_some_and(|c| c.json)
    }

    /// The CA certificate to trust: after the subcommand > before it >
    /// `DROVER_CA_CERT` > the data dir's generated one (https only).
    fn ca_cert(&self, server: &str) -> Option<PathBuf> {
        let (after, data_dir) = match &self.command {
            Cmd::Agent { ca_cert, data_dir, .. } => (ca_cert.clone(), data_dir.clone()),
            other => (
                other.client().and_then(|c| c.ca_cert.clone()),
                std::env::var_os("DROVER_DATA_DIR").map_or_else(|| PathBuf::from("./drover-data"), PathBuf::from),
            ),
        };
        drover_agent::tls::ca_cert_for(server, after.or_else(|| self.ca_cert.clone()), &data_dir)
    }

    /// The actor: after the subcommand > before it > `DROVER_ACTOR`.
    fn actor(&self) -> Option<String> {
        self.command.client().and_then(|c| c.actor.clone()).or_else(|| self.actor.clone())
    }

    /// `--token-file`: after the subcommand > before it > `DROVER_TOKEN_FILE`.
    fn token_file(&self) -> Option<PathBuf> {
        let after = match &self.command {
            Cmd::Agent { token_file, .. } => token_file.clone(),
            other => other.client().and_then(|c| c.token_file.clone()),
        };
        after.or_else(|| self.token_file.clone())
    }
}

async fn run(cli: Cli, no_local_set: bool) -> anyhow::Result<()> {
    let server = cli.server_url();
    let json = cli.json();
    let token_file = cli.token_file();
    let ca_cert = cli.ca_cert(&server);
    let client = if cli.command.client().is_some() {
        let token = client::resolve_token(token_file.as_deref(), Some(&client::default_token_file()))?;
        client::Client::new(&server, cli.actor(), token, ca_cert.as_deref())?
    } else {
        client::Client::new(&server, None, None, ca_cert.as_deref())?
    };
    match cli.command {
        Cmd::Serve(args) => serve(*args, no_local_set).await,
        Cmd::SimProvider { listen, data_dir, action_latency_ms } => {
            config::init_logs(config::LogFormat::Text);
            let sim = drover_providers::SimConfig {
                action_latency: std::time::Duration::from_millis(action_latency_ms),
                ..Default::default()
            };
            let opts = drover_server::sim_provider::SimProviderOptions { data_dir, listen, sim };
            drover_server::sim_provider::serve_sim_provider(opts, shutdown_signal()).await
        }
        Cmd::Completions { shell } => completions(shell),
        Cmd::Secrets(SecretsCmd::Seal { data_dir }) => seal(&data_dir),
        Cmd::Store(StoreCmd::Migrate { from, to }) => store::migrate(&from, &to).await,
        Cmd::Agent {
            data_dir,
            interval_ms,
            lease_secs,
            log_format,
            host,
            zone,
            address,
            capacity,
            backup_repo,
            ..
        } => {
            agent::init_logs(log_format);
            let (token, _) = client::resolve_token(token_file.as_deref(), None)?.ok_or_else(|| {
                anyhow::anyhow!(
                    "the agent needs this host's agent token: set DROVER_TOKEN or pass --token-file (make one with `drover tokens create agent-{host} --role agent --host {host}`)",
                    host = drover_server::host_name()
                )
            })?;
            let options = agent::Options {
                token,
                data_dir,
                server,
                interval: Duration::from_millis(interval_ms),
                lease_ttl: match lease_secs {
                    Some(lease) => secs(lease, "--lease-secs")?,
                    None if host.is_some() => drover_agent::lease::HOST_LEASE_TTL,
                    None => drover_agent::lease::DEFAULT_LEASE_TTL,
                },
                ca_cert,
                host: host.map(|name| drover_agent::actions::HostOptions {
                    name,
                    zone: zone.unwrap_or_default(),
                    address: address.unwrap_or_default(),
                    capacity,
                    backup_repo,
                }),
            };
            agent::run(options, shutdown_signal()).await
        }
        Cmd::Bench(BenchCmd::Heartbeats { instances, rounds }) => bench::heartbeats(instances, rounds),
        Cmd::Bench(BenchCmd::Failover { engine, fault, runs }) => bench::failover(&engine, &fault, runs).await,
        Cmd::Bench(BenchCmd::Alerts { alerts, keys, producers }) => pages::bench_alerts(alerts, keys, producers).await,
        Cmd::Bench(BenchCmd::Connections { idle, slow, rounds, max_connections, reconnect_ms }) => {
            bench_connections::connections(idle, slow, rounds, max_connections, Duration::from_millis(reconnect_ms))
                .await
        }
        Cmd::Bench(BenchCmd::ConnectionsAttacker { target, source, idle, slow, reconnect_ms }) => {
            bench_connections::attacker(target, source, idle, slow, Duration::from_millis(reconnect_ms)).await
        }
        Cmd::Pages { cmd, status, team, .. } => pages::pages(&client, cmd, status, team, json).await,
        Cmd::Pager { cmd, .. } => pages::pager(&client, &server, cmd, json).await,
        Cmd::Advisories { cmd, .. } => breakglass::advisories(&client, cmd, json).await,
        Cmd::Runbooks { cmd, .. } => breakglass::runbooks(&client, cmd, json).await,
        Cmd::Sim { scenario, services, seed, event_log } => {
            large_pages_for_the_simulated_fleet();
            drover_sim::command(&scenario, services, seed, event_log).map(|_| ()).map_err(anyhow::Error::msg)
        }
        Cmd::Services { cmd, .. } => match cmd {
            ServicesCmd::Create {
                name,
                engine,
                followers,
                brokers,
                provider,
                sync,
                team,
                zones,
                credential_rotation_days,
                labels,
            } => {
                let mut body = serde_json::json!({ "name": name, "engine": engine });
                // A Kafka plan has brokers, not followers: none is sent
                // unless asked (its plan would show one otherwise).
                match (engine.as_str(), followers) {
                    ("kafka", None) => {}
                    (_, followers) => body["followers"] = followers.unwrap_or(1).into(),
                }
                if let Some(b) = brokers {
                    body["brokers"] = b.into();
                }
                if let Some(p) = provider {
                    body["provider"] = p.into();
                }
                if sync {
                    body["sync"] = true.into();
                }
                if let Some(t) = team {
                    body["team"] = t.into();
                }
                if let Some(z) = zones {
                    body["zones"] = z.into();
                }
                if let Some(days) = credential_rotation_days {
                    body["credential_rotation_days"] = days.into();
                }
                if !labels.is_empty() {
                    body["labels"] = labels_json(labels);
                }
                let v = client.post("/v1/services", body).await?;
                output::service(&v, json);
                Ok(())
            }
            ServicesCmd::Label { name, labels } => {
                let path = format!("/v1/services/{}/labels", client::path_segment(&name));
                let v = client.put(&path, serde_json::json!({ "labels": labels_json(labels) })).await?;
                output::service(&v, json);
                Ok(())
            }
            ServicesCmd::List => {
                // A page at a time, in name order, each after the last name
                // of the one before, until a short page.
                const PAGE: usize = 1000;
                let mut all = Vec::new();
                loop {
                    let mut query = vec![("limit", PAGE.to_string())];
                    if let Some(last) = all.last().and_then(|s: &serde_json::Value| s["name"].as_str()) {
                        query.push(("after", last.to_string()));
                    }
                    let page = client.get("/v1/services", &query).await?;
                    let page = page.as_array().cloned().unwrap_or_default();
                    let short = page.len() < PAGE;
                    all.extend(page);
                    if short {
                        break;
                    }
                }
                output::services(&serde_json::Value::Array(all), json);
                Ok(())
            }
            ServicesCmd::Show { name } => {
                let v = client.get(&format!("/v1/services/{}", client::path_segment(&name)), &[]).await?;
                output::service(&v, json);
                Ok(())
            }
            ServicesCmd::Resume { name } => {
                let v = client
                    .post(&format!("/v1/services/{}/resume", client::path_segment(&name)), serde_json::json!({}))
                    .await?;
                output::service(&v, json);
                Ok(())
            }
            ServicesCmd::Switchover { name } => {
                let v = client
                    .post(&format!("/v1/services/{}/switchover", client::path_segment(&name)), serde_json::json!({}))
                    .await?;
                output::service(&v, json);
                Ok(())
            }
            ServicesCmd::Fork { source, name, at } => {
                let mut body = serde_json::json!({ "name": name });
                if let Some(at) = at {
                    body["at"] = serde_json::Value::String(at);
                }
                let v = client.post(&format!("/v1/services/{}/fork", client::path_segment(&source)), body).await?;
                output::service(&v, json);
                Ok(())
            }
            ServicesCmd::Resize { name, image } => {
                let body = serde_json::json!({ "image": image });
                let v = client.post(&format!("/v1/services/{}/resize", client::path_segment(&name)), body).await?;
                rollouts::show(&v, json);
                Ok(())
            }
            ServicesCmd::Upgrade { name, version } => {
                let body = serde_json::json!({ "version": version });
                let v = client.post(&format!("/v1/services/{}/upgrade", client::path_segment(&name)), body).await?;
                rollouts::show(&v, json);
                Ok(())
            }
            ServicesCmd::UpgradeRollback { name } => {
                let path = format!("/v1/services/{}/upgrade/rollback", client::path_segment(&name));
                let v = client.post(&path, serde_json::json!({})).await?;
                rollouts::show(&v, json);
                Ok(())
            }
            ServicesCmd::Followers(FollowersCmd::Add { name, count }) => {
                let path = format!("/v1/services/{}/followers", client::path_segment(&name));
                let v = client.post(&path, serde_json::json!({ "count": count })).await?;
                output::service(&v, json);
                Ok(())
            }
            ServicesCmd::Followers(FollowersCmd::Remove { name, id }) => {
                let path =
                    format!("/v1/services/{}/followers/{}", client::path_segment(&name), client::path_segment(&id));
                let v = client.delete(&path).await?;
                output::service(&v, json);
                Ok(())
            }
            ServicesCmd::Backups(cmd) => {
                let (name, suffix) = match cmd {
                    BackupsCmd::Take { name } => (name, "backups"),
                    BackupsCmd::Verify { name } => (name, "backups/verify"),
                };
                let v = client
                    .post(&format!("/v1/services/{}/{suffix}", client::path_segment(&name)), serde_json::json!({}))
                    .await?;
                output::actions(&serde_json::Value::Array(vec![v.clone()]), json, Some(&v));
                Ok(())
            }
            ServicesCmd::RotateCredentials { name } => {
                let v = client
                    .post(
                        &format!("/v1/services/{}/credentials/rotate", client::path_segment(&name)),
                        serde_json::json!({}),
                    )
                    .await?;
                output::actions(&serde_json::Value::Array(vec![v.clone()]), json, Some(&v));
                Ok(())
            }
            ServicesCmd::Checks { name } => {
                let v = client.get(&format!("/v1/services/{}/checks", client::path_segment(&name)), &[]).await?;
                output::checks(&v, json);
                Ok(())
            }
            ServicesCmd::Delete { name } => {
                let v = client.delete(&format!("/v1/services/{}", client::path_segment(&name))).await?;
                output::service(&v, json);
                Ok(())
            }
        },
        Cmd::Instances { cmd: InstancesCmd::Show { id }, .. } => {
            let v = client.get(&format!("/v1/instances/{}", client::path_segment(&id)), &[]).await?;
            output::instance(&v, json);
            Ok(())
        }
        Cmd::Events { service, instance, after, limit, .. } => {
            let mut query = Vec::new();
            push(&mut query, "service", service);
            push(&mut query, "instance", instance);
            push(&mut query, "after", after);
            push(&mut query, "limit", limit);
            let v = client.get("/v1/events", &query).await?;
            output::events(&v, json);
            Ok(())
        }
        Cmd::Chaos { instance, fault, .. } => {
            let v = client.post("/v1/chaos", serde_json::json!({ "instance": instance, "fault": fault })).await?;
            output::actions(&serde_json::Value::Array(vec![v.clone()]), json, Some(&v));
            Ok(())
        }
        Cmd::Heartbeats { cmd: HeartbeatsCmd::Send { instance, seq, facts }, .. } => {
            let facts: serde_json::Value = match facts {
                None => serde_json::json!({}),
                Some(text) => {
                    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("--facts is not valid JSON: {e}"))?
                }
            };
            let body = serde_json::json!({ "beats": [{ "instance": instance, "seq": seq, "facts": facts }] });
            let v = client.post("/v1/heartbeats", body).await?;
            output::receipt(&v, json);
            Ok(())
        }
        Cmd::Actions { service, limit, .. } => {
            let mut query = Vec::new();
            push(&mut query, "service", service);
            push(&mut query, "limit", limit);
            let v = client.get("/v1/actions", &query).await?;
            output::actions(&v, json, None);
            Ok(())
        }
        Cmd::Audit { limit, .. } => {
            let mut query = Vec::new();
            push(&mut query, "limit", limit);
            let v = client.get("/v1/audit", &query).await?;
            output::audit(&v, json);
            Ok(())
        }
        Cmd::Tokens { cmd, .. } => match cmd {
            TokensCmd::Create { name, role, team, host, expires_in } => {
                let mut body = serde_json::json!({ "name": name, "role": role });
                if let Some(t) = team {
                    body["team"] = t.into();
                }
                if let Some(h) = host {
                    body["host"] = h.into();
                }
                if let Some(e) = expires_in {
                    body["expires_in"] = e.into();
                }
                let v = client.post("/v1/tokens", body).await?;
                output::token_created(&v, json);
                Ok(())
            }
            TokensCmd::List => {
                let v = client.get("/v1/tokens", &[]).await?;
                output::tokens(&v, json);
                Ok(())
            }
            TokensCmd::Revoke { id } => {
                let v = client.delete(&format!("/v1/tokens/{}", client::path_segment(&id))).await?;
                output::tokens(&serde_json::Value::Array(vec![v]), json);
                Ok(())
            }
        },
        Cmd::Images { .. } => {
            let v = client.get("/v1/images", &[]).await?;
            output::images(&v, json);
            Ok(())
        }
        Cmd::Rollouts { cmd, .. } => rollouts::rollouts(&client, cmd, json).await,
        Cmd::Archives { cmd, .. } => archives::archives(&client, cmd, json).await,
    }
}

fn push(query: &mut Vec<(&'static str, String)>, key: &'static str, value: Option<impl ToString>) {
    if let Some(v) = value {
        query.push((key, v.to_string()));
    }
}

fn secs(s: f64, flag: &str) -> anyhow::Result<Duration> {
    config::secs(s, flag)
}

async fn serve(args: ServeArgs, no_local_set: bool) -> anyhow::Result<()> {
    let settings = config::resolve(args, no_local_set)?;
    config::init_logs(settings.log_format);
    let config_file = settings.config_file.as_ref().map(|p| p.display().to_string());
    tracing::info!(
        config_file = config_file.as_deref().unwrap_or("none"),
        listen = %settings.options.listen,
        max_action_attempts = settings.options.engine.max_action_attempts,
        max_action_failure_secs = settings.max_action_failure.map(|d| d.as_secs_f64()),
        "settings: flags > environment > config file > defaults"
    );
    drover_server::serve(settings.options, shutdown_signal()).await
}

/// `drover secrets seal`: stdin (one value, a trailing newline dropped) to
/// a sealed value for oncall.toml on stdout. The value is read from stdin,
/// never from the command line, which other users can see in `ps`.
fn seal(data_dir: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Read;
    drover_secrets::datadir::private_umask();
    drover_secrets::private_dir(data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create the data dir {}: {e}", data_dir.display()))?;
    let (key, source) = drover_secrets::SecretKey::load_or_create(data_dir)?;
    let mut value = String::new();
    std::io::stdin().read_to_string(&mut value)?;
    let value = value.strip_suffix('\n').unwrap_or(&value);
    let value = value.strip_suffix('\r').unwrap_or(value);
    if value.is_empty() {
        anyhow::bail!("nothing on standard input: pipe the value in, e.g. `drover secrets seal < password.txt`");
    }
    eprintln!("sealed with the key {source}");
    println!("{}", key.seal_str(drover_server::oncall::CONFIG_CONTEXT, value));
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(argv)
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn client_flags_go_before_or_after_the_subcommand() {
        for argv in [
            &["drover", "--json", "services", "show", "db1"][..],
            &["drover", "services", "show", "db1", "--json"],
            &["drover", "services", "--json", "show", "db1"],
        ] {
            assert!(parse(argv).unwrap().json(), "{argv:?}");
        }
        assert!(!parse(&["drover", "services", "list"]).unwrap().json());
        let cli = parse(&["drover", "--server", "http://a", "services", "list", "--server", "http://b"]).unwrap();
        assert_eq!(cli.server_url(), "http://b");
        let cli = parse(&["drover", "--server", "http://a", "--actor", "ann", "events"]).unwrap();
        assert_eq!(cli.server_url(), "http://a");
        assert_eq!(cli.actor().as_deref(), Some("ann"));
        let cli = parse(&["drover", "--actor", "ann", "events", "--actor", "bob"]).unwrap();
        assert_eq!(cli.actor().as_deref(), Some("bob"));
        assert_eq!(parse(&["drover", "--server", "http://a", "agent"]).unwrap().server_url(), "http://a");
        assert_eq!(parse(&["drover", "agent", "--server", "http://b"]).unwrap().server_url(), "http://b");
        assert_eq!(
            parse(&["drover", "--server", "http://a", "agent", "--server", "http://b"]).unwrap().server_url(),
            "http://b"
        );
        let cli = parse(&["drover", "services", "resume", "db1"]).unwrap();
        assert!(matches!(cli.command, Cmd::Services { cmd: ServicesCmd::Resume { .. }, .. }));
    }

    #[test]
    fn serve_and_the_offline_commands_do_not_take_client_flags_after_them() {
        for argv in [
            &["drover", "serve", "--json"][..],
            &["drover", "serve", "--server", "http://a"],
            &["drover", "serve", "--actor", "ann"],
            &["drover", "sim", "--scenario", "zone-outage", "--json"],
            &["drover", "agent", "--json"],
        ] {
            assert!(parse(argv).is_err(), "{argv:?}");
        }
    }
}
