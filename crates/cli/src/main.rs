//! `drover`: `drover serve` runs the control plane; every other subcommand
//! is a thin HTTP client of a running server.

mod agent;
mod bench;
mod client;
mod output;
mod pages;

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "drover", version, about = "Drover: a control plane for fleets of managed databases")]
struct Cli {
    /// URL of the Drover server the client subcommands talk to.
    #[arg(long, global = true, env = "DROVER_URL", default_value = "http://127.0.0.1:7700")]
    server: String,
    /// Print the server's raw JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Who issues commands, recorded in the audit trail.
    #[arg(long, global = true, env = "DROVER_ACTOR")]
    actor: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the control plane (HTTP API, engine, sim provider).
    Serve(ServeArgs),
    /// Create, list, show and delete services.
    #[command(subcommand)]
    Services(ServicesCmd),
    /// Show instances.
    #[command(subcommand)]
    Instances(InstancesCmd),
    /// The event log: transitions and action steps with their causes.
    Events {
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
        #[arg(long)]
        instance: String,
        /// crash, hang, partition or heal.
        #[arg(long, value_parser = ["crash", "hang", "partition", "heal"])]
        fault: String,
    },
    /// Send heartbeats by hand.
    #[command(subcommand)]
    Heartbeats(HeartbeatsCmd),
    /// Actions the engine decided and how they went.
    Actions {
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// The audit trail of commands.
    Audit {
        #[arg(long)]
        limit: Option<usize>,
    },
    /// The image catalog.
    Images,
    /// Pages: list them, show one, acknowledge or resolve.
    Pages {
        #[command(subcommand)]
        cmd: Option<pages::PagesCmd>,
        /// triggered, acknowledged, resolved or open.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        team: Option<String>,
    },
    /// Pager metrics, the company-wide feed, who is on call.
    #[command(subcommand)]
    Pager(pages::PagerCmd),
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
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Fence the primaries when no batch was acknowledged for this long.
        #[arg(long, default_value_t = drover_providers::local::lease::DEFAULT_LEASE_TTL.as_secs_f64())]
        lease_secs: f64,
    },
    /// Run the deterministic fleet simulator: the real engine over a
    /// simulated fleet (scenarios: docs/scenarios.md). Last line: JSON.
    Sim {
        /// A built-in scenario (zone-outage, object-store-outage,
        /// kernel-cve-roll, control-plane-partition, flapping-network) or a path.
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
}

#[derive(Args)]
struct ServeArgs {
    /// Where the store (drover.db) and the sim fleet (sim-provider.json) live.
    #[arg(long, env = "DROVER_DATA_DIR", default_value = "./drover-data")]
    data_dir: PathBuf,
    #[arg(long, env = "DROVER_LISTEN", default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// Silence after which an instance is `uncertain`.
    #[arg(long, env = "DROVER_UNCERTAIN_AFTER_MS")]
    uncertain_after_ms: Option<u64>,
    /// Silence after which an instance is presumed `unavailable` (fractions allowed).
    #[arg(long, env = "DROVER_PRESUMED_DEAD_AFTER_SECS")]
    presumed_dead_after_secs: Option<f64>,
    /// After a restart, silence is not held against anyone for this long.
    #[arg(long, env = "DROVER_RESTART_GRACE_SECS")]
    restart_grace_secs: Option<f64>,
    /// How often an uncertain instance is probed.
    #[arg(long, env = "DROVER_PROBE_INTERVAL_MS")]
    probe_interval_ms: Option<u64>,
    /// A running action attempt without a result is retried after this.
    #[arg(long, env = "DROVER_ACTION_TIMEOUT_MS")]
    action_timeout_ms: Option<u64>,
    /// A new or restarted instance must heartbeat within this.
    #[arg(long, env = "DROVER_INSTALL_TIMEOUT_SECS")]
    install_timeout_secs: Option<f64>,
    /// How often the sim fleet's agents heartbeat.
    #[arg(long, env = "DROVER_HEARTBEAT_INTERVAL_MS")]
    heartbeat_interval_ms: Option<u64>,
    /// How long a sim action takes.
    #[arg(long, env = "DROVER_ACTION_LATENCY_MS")]
    action_latency_ms: Option<u64>,
    /// Provider of services created without one: `local` runs real
    /// PostgreSQL here, `sim` simulates instances.
    #[arg(long, env = "DROVER_DEFAULT_PROVIDER", default_value = "local", value_parser = ["local", "sim"])]
    default_provider: String,
    /// Do not run the local provider (real PostgreSQL processes).
    #[arg(long, env = "DROVER_NO_LOCAL")]
    no_local: bool,
}

#[derive(Subcommand)]
enum ServicesCmd {
    /// Create a service.
    Create {
        name: String,
        #[arg(long, value_parser = ["postgres", "redis", "kafka"], default_value = "postgres")]
        engine: String,
        #[arg(long, default_value_t = 1)]
        followers: u8,
        #[arg(long)]
        provider: Option<String>,
        /// Synchronous replication.
        #[arg(long)]
        sync: bool,
        #[arg(long)]
        team: Option<String>,
        /// Zones, comma-separated.
        #[arg(long, value_delimiter = ',')]
        zones: Option<Vec<String>>,
    },
    List,
    Show {
        name: String,
    },
    Delete {
        name: String,
    },
    /// Planned switchover to the most advanced follower.
    Switchover {
        name: String,
    },
    /// Backups, restore tests and service checks.
    #[command(subcommand)]
    Backups(BackupsCmd),
    /// Backups, replication, security and performance checks.
    Checks {
        name: String,
    },
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
    /// Failovers of a real local HA pair under write load (a crash or a hang of its primary).
    Failover {
        #[arg(long, default_value = "postgres")]
        engine: String,
        /// `crash` (kill -9) or `hang` (SIGSTOP, without same-host evidence).
        #[arg(long, default_value = "crash", value_parser = ["crash", "hang"])]
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = client::Client::new(&cli.server, cli.actor.clone())?;
    let json = cli.json;
    match cli.command {
        Cmd::Serve(args) => serve(args).await,
        Cmd::Agent { data_dir, interval_ms, lease_secs } => {
            agent::init_logs();
            let options = agent::Options {
                data_dir,
                server: cli.server.clone(),
                interval: Duration::from_millis(interval_ms),
                lease_ttl: secs(lease_secs, "--lease-secs")?,
            };
            agent::run(options, shutdown_signal()).await
        }
        Cmd::Bench(BenchCmd::Heartbeats { instances, rounds }) => bench::heartbeats(instances, rounds),
        Cmd::Bench(BenchCmd::Failover { engine, fault, runs }) => bench::failover(&engine, &fault, runs).await,
        Cmd::Bench(BenchCmd::Alerts { alerts, keys, producers }) => pages::bench_alerts(alerts, keys, producers).await,
        Cmd::Pages { cmd, status, team } => pages::pages(&client, cmd, status, team, json).await,
        Cmd::Pager(cmd) => pages::pager(&client, &cli.server, cmd, json).await,
        Cmd::Sim { scenario, services, seed, event_log } => {
            drover_sim::command(&scenario, services, seed, event_log).map(|_| ()).map_err(anyhow::Error::msg)
        }
        Cmd::Services(cmd) => match cmd {
            ServicesCmd::Create { name, engine, followers, provider, sync, team, zones } => {
                let mut body = serde_json::json!({ "name": name, "engine": engine, "followers": followers });
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
                let v = client.post("/v1/services", body).await?;
                output::service(&v, json);
                Ok(())
            }
            ServicesCmd::List => {
                let v = client.get("/v1/services", &[]).await?;
                output::services(&v, json);
                Ok(())
            }
            ServicesCmd::Show { name } => {
                let v = client.get(&format!("/v1/services/{}", client::path_segment(&name)), &[]).await?;
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
        Cmd::Instances(InstancesCmd::Show { id }) => {
            let v = client.get(&format!("/v1/instances/{}", client::path_segment(&id)), &[]).await?;
            output::instance(&v, json);
            Ok(())
        }
        Cmd::Events { service, instance, after, limit } => {
            let mut query = Vec::new();
            push(&mut query, "service", service);
            push(&mut query, "instance", instance);
            push(&mut query, "after", after);
            push(&mut query, "limit", limit);
            let v = client.get("/v1/events", &query).await?;
            output::events(&v, json);
            Ok(())
        }
        Cmd::Chaos { instance, fault } => {
            let v = client.post("/v1/chaos", serde_json::json!({ "instance": instance, "fault": fault })).await?;
            output::actions(&serde_json::Value::Array(vec![v.clone()]), json, Some(&v));
            Ok(())
        }
        Cmd::Heartbeats(HeartbeatsCmd::Send { instance, seq, facts }) => {
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
        Cmd::Actions { service, limit } => {
            let mut query = Vec::new();
            push(&mut query, "service", service);
            push(&mut query, "limit", limit);
            let v = client.get("/v1/actions", &query).await?;
            output::actions(&v, json, None);
            Ok(())
        }
        Cmd::Audit { limit } => {
            let mut query = Vec::new();
            push(&mut query, "limit", limit);
            let v = client.get("/v1/audit", &query).await?;
            output::audit(&v, json);
            Ok(())
        }
        Cmd::Images => {
            let v = client.get("/v1/images", &[]).await?;
            output::images(&v, json);
            Ok(())
        }
    }
}

fn push(query: &mut Vec<(&'static str, String)>, key: &'static str, value: Option<impl ToString>) {
    if let Some(v) = value {
        query.push((key, v.to_string()));
    }
}

fn secs(s: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).map_err(|e| anyhow::anyhow!("{flag} {s} is not a usable duration: {e}"))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut opts = drover_server::ServeOptions::new(&args.data_dir, args.listen);
    if let Some(ms) = args.uncertain_after_ms {
        opts.engine.uncertain_after = Duration::from_millis(ms);
    }
    if let Some(s) = args.presumed_dead_after_secs {
        opts.engine.presumed_dead_after = secs(s, "--presumed-dead-after-secs")?;
    }
    if let Some(s) = args.restart_grace_secs {
        opts.engine.restart_grace = secs(s, "--restart-grace-secs")?;
    }
    if let Some(ms) = args.probe_interval_ms {
        opts.engine.probe_interval = Duration::from_millis(ms);
    }
    if let Some(ms) = args.action_timeout_ms {
        opts.engine.action_timeout = Duration::from_millis(ms);
    }
    if let Some(s) = args.install_timeout_secs {
        opts.engine.install_timeout = secs(s, "--install-timeout-secs")?;
    }
    if let Some(ms) = args.heartbeat_interval_ms {
        opts.sim.heartbeat_interval = Duration::from_millis(ms.max(1));
    }
    if let Some(ms) = args.action_latency_ms {
        opts.sim.action_latency = Duration::from_millis(ms);
    }
    opts.engine.default_provider = args.default_provider;
    if !args.no_local {
        opts.local = Some(drover_providers::local::LocalConfig::default());
    }
    drover_server::serve(opts, shutdown_signal()).await
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
