//! `drover serve`'s settings: command-line flag > environment variable >
//! config file (`drover.toml` in the data dir, or `--config PATH`) >
//! built-in default. The keys are documented in docs/configuration.md, whose
//! example a test parses.

use anyhow::{anyhow, bail, Context};
use clap::{Args, ValueEnum};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The config file's name in the data dir.
pub const FILE_NAME: &str = "drover.toml";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7700";
pub const DEFAULT_PROVIDER: &str = "local";
const PROVIDERS: [&str; 2] = ["local", "sim"];

/// How log lines are written to standard error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, fields, target).
    Json,
}

/// Installs the global tracing subscriber (filter: `RUST_LOG`, default info).
pub fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `drover serve`'s flags. Every setting but `--data-dir`, `--config` and
/// `--input-log` can also be set in the config file under the flag's name
/// with `_`.
#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// Where the store (drover.db), the sim fleet (sim-provider.json), the
    /// local provider's servers and the config file (drover.toml) live.
    #[arg(long, env = "DROVER_DATA_DIR", default_value = "./drover-data")]
    pub data_dir: PathBuf,
    /// Keep the fleet's state in this PostgreSQL database
    /// (postgres://USER[:PASSWORD]@HOST:PORT/DB, connected to directly, not
    /// through a transaction-pooling router) instead of DATA_DIR/drover.db
    /// [default: the embedded SQLite store]. The API tokens are kept there
    /// too; break-glass runs and on-call pages stay in the data dir's
    /// SQLite files.
    #[arg(long, env = "DROVER_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// This node's name in the fleet's lease, with --store: unique among
    /// the nodes sharing the store [default: the host name].
    #[arg(long, env = "DROVER_NODE", value_name = "NAME")]
    pub node: Option<String>,
    /// With --store: how long the fleet's lease lasts unrenewed; a standby
    /// takes over about this long after the holder died [default: 6].
    #[arg(long, env = "DROVER_LEASE_TTL_SECS")]
    pub lease_ttl_secs: Option<f64>,
    /// With --store: split the fleet into this many shards, each held by
    /// one node (fixed by the first node that serves the store; 1 to
    /// 2048). Experimental (issue 16): the pager and the other fleet-wide
    /// jobs are not yet moved to shard 0's holder (their writes are only
    /// refused elsewhere). [default: the store's, else 1]
    #[arg(long, env = "DROVER_SHARDS", value_name = "N")]
    pub shards: Option<u16>,
    /// At most this many routers (one pgbouncer each) beside the control
    /// plane, for services on agent hosts; a service past it is built
    /// without a URL, and the log says why [default: 1000].
    #[arg(long, env = "DROVER_MAX_ROUTERS_BESIDE", value_name = "N")]
    pub max_routers_beside: Option<usize>,
    /// Use the simulated world served by `drover sim-provider` at this URL
    /// (shared by every node) for `sim` services, instead of the data dir's
    /// own world (sim-provider.json), which dies with this node.
    #[arg(long, env = "DROVER_SIM_PROVIDER_URL", value_name = "URL")]
    pub sim_provider_url: Option<String>,
    /// The config file [default: drover.toml in the data dir, if it exists].
    #[arg(long, env = "DROVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Append every input the engine is given to this file (JSON lines), to
    /// replay a run with the seed the store records [default: no log].
    #[arg(long, env = "DROVER_INPUT_LOG")]
    pub input_log: Option<PathBuf>,
    /// Revoke the `admin` token and write a new one to DATA_DIR/admin.token
    /// (when that file is lost: only the token's hash is stored).
    #[arg(long)]
    pub reset_admin_token: bool,
    /// Load more runbooks at start: every `*.toml` file in this directory,
    /// checked like the shipped ones (a bad file stops the start).
    #[arg(long, env = "DROVER_RUNBOOKS_DIR")]
    pub runbooks_dir: Option<PathBuf>,
    /// Address of the HTTP API [default: 127.0.0.1:7700].
    #[arg(long, env = "DROVER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Silence after which an instance is `uncertain`.
    #[arg(long, env = "DROVER_UNCERTAIN_AFTER_MS")]
    pub uncertain_after_ms: Option<u64>,
    /// Silence after which an instance is presumed `unavailable` (fractions allowed).
    #[arg(long, env = "DROVER_PRESUMED_DEAD_AFTER_SECS")]
    pub presumed_dead_after_secs: Option<f64>,
    /// After a restart, silence is not held against anyone for this long.
    #[arg(long, env = "DROVER_RESTART_GRACE_SECS")]
    pub restart_grace_secs: Option<f64>,
    /// How often an uncertain instance is probed.
    #[arg(long, env = "DROVER_PROBE_INTERVAL_MS")]
    pub probe_interval_ms: Option<u64>,
    /// A running action attempt without a result is retried after this.
    #[arg(long, env = "DROVER_ACTION_TIMEOUT_MS")]
    pub action_timeout_ms: Option<u64>,
    /// A new or restarted instance must heartbeat within this.
    #[arg(long, env = "DROVER_INSTALL_TIMEOUT_SECS")]
    pub install_timeout_secs: Option<f64>,
    /// How often the sim fleet's agents heartbeat.
    #[arg(long, env = "DROVER_HEARTBEAT_INTERVAL_MS")]
    pub heartbeat_interval_ms: Option<u64>,
    /// How long a sim action takes.
    #[arg(long, env = "DROVER_ACTION_LATENCY_MS")]
    pub action_latency_ms: Option<u64>,
    /// Attempts of one failing action before it is failed (at least 1).
    #[arg(long, env = "DROVER_MAX_ACTION_ATTEMPTS")]
    pub max_action_attempts: Option<u32>,
    /// Remedies of a service failing in a row before it needs a human (at least 1).
    #[arg(long, env = "DROVER_MAX_REMEDY_FAILURES")]
    pub max_remedy_failures: Option<u32>,
    /// A remedy failing for longer than this needs a human (fractions allowed).
    #[arg(long, env = "DROVER_MAX_ACTION_FAILURE_SECS")]
    pub max_action_failure_secs: Option<f64>,
    /// Provider of services created without one: `local` runs real
    /// PostgreSQL here, `sim` simulates instances [default: local].
    #[arg(long, env = "DROVER_DEFAULT_PROVIDER", value_parser = PROVIDERS)]
    pub default_provider: Option<String>,
    /// Do not run the local provider (real PostgreSQL processes) nor a
    /// built-in host: a control plane whose `local` services run on the
    /// hosts of `drover agent --host` (the sim stays the default provider).
    #[arg(long, env = "DROVER_NO_LOCAL")]
    pub no_local: bool,
    /// Log lines as text or as JSON objects [default: text].
    #[arg(long, env = "DROVER_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(long, env = "DROVER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "DROVER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Serve HTTPS with a self-signed certificate generated into the data
    /// dir (tls-cert.pem, tls-key.pem) and kept; clients trust tls-cert.pem.
    #[arg(long, env = "DROVER_TLS_SELF_SIGNED")]
    pub tls_self_signed: bool,
    /// Open HTTP connections at most; beyond, the oldest without a request
    /// in flight is closed [default: 20000, capped by the open-files limit].
    #[arg(long, env = "DROVER_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// A new connection must send a whole request head within this [default: 10].
    #[arg(long, env = "DROVER_HEADER_READ_TIMEOUT_SECS")]
    pub header_read_timeout_secs: Option<f64>,
    /// A keep-alive connection is closed after this long without a request [default: 60].
    #[arg(long, env = "DROVER_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<f64>,
    /// The largest request head (request line and headers) in bytes [default: 16384].
    #[arg(long, env = "DROVER_MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<usize>,
    /// After a credential rotation, the old credential keeps working this
    /// long, then the engine revokes it [default: 300].
    #[arg(long, env = "DROVER_ROTATION_OVERLAP_SECS")]
    pub rotation_overlap_secs: Option<f64>,
    /// Rotate a service's credentials every this many days when its plan
    /// does not say (`credential_rotation_days` in the plan); 0: only on
    /// demand [default: 0].
    #[arg(long, env = "DROVER_CREDENTIAL_ROTATION_DAYS")]
    pub credential_rotation_days: Option<u32>,
}

/// The config file. Every key is optional; an unknown key is an error.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub uncertain_after_ms: Option<u64>,
    pub presumed_dead_after_secs: Option<f64>,
    pub restart_grace_secs: Option<f64>,
    pub probe_interval_ms: Option<u64>,
    pub action_timeout_ms: Option<u64>,
    pub install_timeout_secs: Option<f64>,
    pub heartbeat_interval_ms: Option<u64>,
    pub action_latency_ms: Option<u64>,
    pub max_action_attempts: Option<u32>,
    pub max_remedy_failures: Option<u32>,
    pub max_action_failure_secs: Option<f64>,
    pub default_provider: Option<String>,
    pub no_local: Option<bool>,
    pub log_format: Option<LogFormat>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_self_signed: Option<bool>,
    pub max_connections: Option<usize>,
    pub header_read_timeout_secs: Option<f64>,
    pub idle_timeout_secs: Option<f64>,
    pub max_header_bytes: Option<usize>,
    pub rotation_overlap_secs: Option<f64>,
    pub credential_rotation_days: Option<u32>,
    pub rollout_zone_concurrency: Option<u32>,
    pub team_maintenance_windows: Option<std::collections::BTreeMap<String, drover_model::MaintenanceWindow>>,
    pub maintenance_notice_hours: Option<f64>,
    pub archive_retention_hours: Option<f64>,
    pub backup_retention_full: Option<u32>,
    pub event_retention_days: Option<u32>,
    pub audit_retention_days: Option<u32>,
    pub status_title: Option<String>,
    pub status_sample_seconds: Option<f64>,
    pub status_degraded_share: Option<f64>,
    pub status_partial_share: Option<f64>,
    pub status_major_share: Option<f64>,
}

impl FileConfig {
    /// Parses and checks a config file's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<FileConfig> {
        let config: FileConfig =
            toml::from_str(text).map_err(|e| anyhow!("config file {origin}: {}", e.to_string().trim_end()))?;
        let key = |k: &str| format!("`{k}` in config file {origin}");
        for (k, v) in [
            ("presumed_dead_after_secs", config.presumed_dead_after_secs),
            ("restart_grace_secs", config.restart_grace_secs),
            ("install_timeout_secs", config.install_timeout_secs),
            ("max_action_failure_secs", config.max_action_failure_secs),
            ("rotation_overlap_secs", config.rotation_overlap_secs),
        ] {
            if let Some(s) = v {
                secs(s, &key(k))?;
            }
        }
        for (k, v) in [
            ("header_read_timeout_secs", config.header_read_timeout_secs),
            ("idle_timeout_secs", config.idle_timeout_secs),
        ] {
            positive_secs(v, &key(k))?;
        }
        check_max_connections(config.max_connections, &key("max_connections"))?;
        check_max_header_bytes(config.max_header_bytes, &key("max_header_bytes"))?;
        check_attempts(config.max_action_attempts, &key("max_action_attempts"))?;
        check_attempts(config.max_remedy_failures, &key("max_remedy_failures"))?;
        check_failure_secs(config.max_action_failure_secs, &key("max_action_failure_secs"))?;
        if let Some(p) = &config.default_provider {
            if !PROVIDERS.contains(&p.as_str()) {
                bail!("{} is {p:?}: expected one of {}", key("default_provider"), PROVIDERS.join(", "));
            }
        }
        Ok(config)
    }

    /// Reads `--config PATH` (which must exist) or else `drover.toml` in the
    /// data dir (which may not). Returns the file's settings and its path.
    pub fn load(explicit: Option<&Path>, data_dir: &Path) -> anyhow::Result<(FileConfig, Option<PathBuf>)> {
        let (path, required) = match explicit {
            Some(p) => (p.to_path_buf(), true),
            None => (data_dir.join(FILE_NAME), false),
        };
        let shown = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok((FileConfig::default(), None))
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read config file {}", shown.display())),
        };
        let config = FileConfig::parse(&text, &shown.display().to_string())?;
        Ok((config, Some(shown)))
    }
}

/// What `drover serve` runs with once flags, environment and file are merged.
#[derive(Debug)]
pub struct Settings {
    pub options: drover_server::ServeOptions,
    pub log_format: LogFormat,
    /// The config file that was read, if any.
    pub config_file: Option<PathBuf>,
    /// A remedy failing longer than this needs a human (`None`: the engine's default).
    pub max_action_failure: Option<Duration>,
}

/// Merges `args` (flags and environment, which clap has already resolved)
/// over the config file over the defaults. `no_local_set` says whether
/// `--no-local` / `DROVER_NO_LOCAL` was given at all (its `false` is then
/// a choice that overrides the file's `no_local = true`).
pub fn resolve(args: ServeArgs, no_local_set: bool) -> anyhow::Result<Settings> {
    let (file, config_file) = FileConfig::load(args.config.as_deref(), &args.data_dir)?;
    check_attempts(args.max_action_attempts, "--max-action-attempts")?;
    check_attempts(args.max_remedy_failures, "--max-remedy-failures")?;
    check_failure_secs(args.max_action_failure_secs, "--max-action-failure-secs")?;

    let listen = match args.listen.or(file.listen) {
        Some(l) => l,
        None => DEFAULT_LISTEN.parse().expect("the default listen address parses"),
    };
    let mut opts = drover_server::ServeOptions::new(&args.data_dir, listen);
    opts.tls = tls_source(&args, &file)?;
    opts.input_log = args.input_log.clone();
    if let Some(url) = &args.store {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            bail!("--store takes a postgres://USER@HOST:PORT/DB URL (got one starting {:?}); leave it out for the embedded SQLite store in the data dir", url.split("://").next().unwrap_or_default());
        }
        opts.store = Some(url.clone());
    }
    if args.node.is_some() || args.lease_ttl_secs.is_some() || args.shards.is_some() {
        if args.store.is_none() {
            bail!(
                "--node, --lease-ttl-secs and --shards are for nodes sharing a PostgreSQL store: add --store postgres://..."
            );
        }
        if let Some(n) = args.shards {
            if n == 0 || u32::from(n) > drover_store::MAX_SHARDS {
                bail!("--shards must be 1 to {}, not {n}", drover_store::MAX_SHARDS);
            }
            opts.shards = Some(n);
        }
        if let Some(node) = &args.node {
            drover_server::lease::check_node_name(node).map_err(|e| anyhow::anyhow!("--node: {e}"))?;
        }
        opts.node = args.node.clone();
        if let Some(ttl) = positive_secs(args.lease_ttl_secs, "--lease-ttl-secs")? {
            if ttl < Duration::from_millis(500) {
                bail!("--lease-ttl-secs must be at least 0.5 (the lease is renewed every quarter of it)");
            }
            opts.lease_ttl = ttl;
        }
    }
    if let Some(url) = &args.sim_provider_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!("--sim-provider-url takes the http://HOST:PORT of a `drover sim-provider`, got {url:?}");
        }
        opts.sim_provider_url = Some(url.clone());
    }
    if let Some(max) = args.max_routers_beside {
        opts.max_routers_beside = max;
    }
    opts.reset_admin_token = args.reset_admin_token;
    opts.runbooks_dir = args.runbooks_dir.clone();
    if let Some(ms) = args.uncertain_after_ms.or(file.uncertain_after_ms) {
        opts.engine.uncertain_after = Duration::from_millis(ms);
    }
    if let Some(s) = args.presumed_dead_after_secs {
        opts.engine.presumed_dead_after = secs(s, "--presumed-dead-after-secs")?;
    } else if let Some(s) = file.presumed_dead_after_secs {
        opts.engine.presumed_dead_after = secs(s, "presumed_dead_after_secs")?;
    }
    if let Some(s) = args.restart_grace_secs {
        opts.engine.restart_grace = secs(s, "--restart-grace-secs")?;
    } else if let Some(s) = file.restart_grace_secs {
        opts.engine.restart_grace = secs(s, "restart_grace_secs")?;
    }
    if let Some(ms) = args.probe_interval_ms.or(file.probe_interval_ms) {
        opts.engine.probe_interval = Duration::from_millis(ms);
    }
    if let Some(ms) = args.action_timeout_ms.or(file.action_timeout_ms) {
        opts.engine.action_timeout = Duration::from_millis(ms);
    }
    if let Some(s) = args.install_timeout_secs {
        opts.engine.install_timeout = secs(s, "--install-timeout-secs")?;
    } else if let Some(s) = file.install_timeout_secs {
        opts.engine.install_timeout = secs(s, "install_timeout_secs")?;
    }
    if let Some(n) = args.max_action_attempts.or(file.max_action_attempts) {
        opts.engine.max_action_attempts = n;
    }
    if let Some(n) = args.max_remedy_failures.or(file.max_remedy_failures) {
        opts.engine.max_remedy_failures = n;
    }
    let max_action_failure = match (args.max_action_failure_secs, file.max_action_failure_secs) {
        (Some(s), _) => Some(secs(s, "--max-action-failure-secs")?),
        (None, Some(s)) => Some(secs(s, "max_action_failure_secs")?),
        (None, None) => None,
    };
    if let Some(d) = max_action_failure {
        opts.engine.max_action_failure = d;
    }
    opts.engine.default_provider =
        args.default_provider.or(file.default_provider).unwrap_or_else(|| DEFAULT_PROVIDER.to_string());
    if let Some(ms) = args.heartbeat_interval_ms.or(file.heartbeat_interval_ms) {
        opts.sim.heartbeat_interval = Duration::from_millis(ms.max(1));
    }
    if let Some(ms) = args.action_latency_ms.or(file.action_latency_ms) {
        opts.sim.action_latency = Duration::from_millis(ms);
    }
    if let Some(s) = args.rotation_overlap_secs {
        opts.engine.rotation_overlap = secs(s, "--rotation-overlap-secs")?;
    } else if let Some(s) = file.rotation_overlap_secs {
        opts.engine.rotation_overlap = secs(s, "rotation_overlap_secs")?;
    }
    // The fallback for plans that do not say (`Plan::credential_rotation_days`).
    opts.engine.credential_rotation = match args.credential_rotation_days.or(file.credential_rotation_days) {
        None | Some(0) => None,
        Some(days) => Some(Duration::from_secs(u64::from(days) * 86_400)),
    };
    let no_local = if no_local_set { args.no_local } else { file.no_local.unwrap_or(false) };
    if !no_local {
        opts.local = Some(drover_providers::local::LocalConfig::default());
    }
    // No host of its own: `local` services run on the agents' hosts.
    opts.agents_only = no_local;
    if let Some(n) = file.rollout_zone_concurrency {
        if n == 0 {
            return Err(anyhow!("rollout_zone_concurrency must be at least 1"));
        }
        opts.engine.rollout_zone_concurrency = n;
    }
    if let Some(windows) = &file.team_maintenance_windows {
        for (team, w) in windows {
            w.validate().map_err(|e| anyhow!("team_maintenance_windows.{team}: {e}"))?;
        }
        opts.engine.team_windows = windows.clone();
    }
    // 0: kept for ever.
    let days = |d: u32| (d > 0).then(|| Duration::from_secs(u64::from(d) * 86_400));
    if let Some(d) = file.event_retention_days {
        opts.retention.events = days(d);
    }
    if let Some(d) = file.audit_retention_days {
        opts.retention.audit = days(d);
    }
    if let (Some(events), Some(audit)) = (opts.retention.events, opts.retention.audit) {
        if audit < events {
            return Err(anyhow!(
                "audit_retention_days must be at least event_retention_days: the audit trail outlives the events"
            ));
        }
    }
    if let Some(title) = &file.status_title {
        if title.trim().is_empty() || title.chars().count() > 100 {
            return Err(anyhow!("status_title must be 1 to 100 characters"));
        }
        opts.status.title = title.clone();
    }
    if let Some(secs) = file.status_sample_seconds {
        if !secs.is_finite() || !(1.0..=3600.0).contains(&secs) {
            return Err(anyhow!("status_sample_seconds must be between 1 and 3600, got {secs}"));
        }
        opts.status.sample_every = Duration::from_secs_f64(secs);
    }
    let t = &mut opts.status.thresholds;
    for (key, value, slot) in [
        ("status_degraded_share", file.status_degraded_share, &mut t.degraded),
        ("status_partial_share", file.status_partial_share, &mut t.partial),
        ("status_major_share", file.status_major_share, &mut t.major),
    ] {
        if let Some(v) = value {
            if !v.is_finite() || !(0.0..=1.0).contains(&v) || v == 0.0 {
                return Err(anyhow!("{key} must be a share above 0 and at most 1, got {v}"));
            }
            *slot = v;
        }
    }
    if !(t.degraded <= t.partial && t.partial <= t.major) {
        return Err(anyhow!(
            "status shares must rise: status_degraded_share ≤ status_partial_share ≤ status_major_share"
        ));
    }
    if let Some(hours) = file.maintenance_notice_hours {
        if !hours.is_finite() || !(0.0..=24.0 * 366.0).contains(&hours) {
            return Err(anyhow!("maintenance_notice_hours must be between 0 and 8784 (a year), got {hours}"));
        }
        opts.engine.maintenance_notice = std::time::Duration::from_secs_f64(hours * 3600.0);
    }
    if let Some(hours) = file.archive_retention_hours {
        // Ten years: past that, a number is a mistake, not a retention.
        if !hours.is_finite() || !(0.0..=24.0 * 3660.0).contains(&hours) {
            return Err(anyhow!("archive_retention_hours must be between 0 and 87840 (ten years), got {hours}"));
        }
        opts.engine.archive_retention = std::time::Duration::from_secs_f64(hours * 3600.0);
    }
    if let Some(n) = file.backup_retention_full {
        if n == 0 {
            return Err(anyhow!("backup_retention_full must be at least 1: the newest full backup is always kept"));
        }
        opts.engine.backup_retention_full = n;
    }
    let log_format = args.log_format.or(file.log_format).unwrap_or_default();
    check_max_connections(args.max_connections, "--max-connections")?;
    check_max_header_bytes(args.max_header_bytes, "--max-header-bytes")?;
    if let Some(n) = args.max_connections.or(file.max_connections) {
        opts.http.max_connections = n;
    }
    if let Some(n) = args.max_header_bytes.or(file.max_header_bytes) {
        opts.http.max_header_bytes = n;
    }
    if let Some(d) = positive_secs(args.header_read_timeout_secs, "--header-read-timeout-secs")?
        .or(positive_secs(file.header_read_timeout_secs, "header_read_timeout_secs")?)
    {
        opts.http.header_read_timeout = d;
    }
    if let Some(d) = positive_secs(args.idle_timeout_secs, "--idle-timeout-secs")?
        .or(positive_secs(file.idle_timeout_secs, "idle_timeout_secs")?)
    {
        opts.http.idle_timeout = d;
    }
    Ok(Settings { options: opts, log_format, config_file, max_action_failure })
}

/// A number of seconds as a `Duration`, or an error naming where it came from.
pub fn secs(s: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).map_err(|e| anyhow!("{what} {s} is not a usable duration: {e}"))
}

/// HTTPS from files (both given, by flags or by the file) or self-signed;
/// plain HTTP when neither.
fn tls_source(args: &ServeArgs, file: &FileConfig) -> anyhow::Result<Option<drover_server::tls::TlsSource>> {
    let cert = args.tls_cert.clone().or_else(|| file.tls_cert.clone());
    let key = args.tls_key.clone().or_else(|| file.tls_key.clone());
    let self_signed = args.tls_self_signed || file.tls_self_signed.unwrap_or(false);
    match (cert, key, self_signed) {
        (Some(_), Some(_), true) => bail!("--tls-self-signed and --tls-cert/--tls-key exclude each other: choose one"),
        (Some(cert), Some(key), false) => Ok(Some(drover_server::tls::TlsSource::Files { cert, key })),
        (Some(_), None, _) => bail!("--tls-cert needs --tls-key (the certificate's private key)"),
        (None, Some(_), _) => bail!("--tls-key needs --tls-cert (the certificate it belongs to)"),
        (None, None, true) => Ok(Some(drover_server::tls::TlsSource::SelfSigned)),
        (None, None, false) => Ok(None),
    }
}

/// A timeout in seconds: a usable duration above zero.
fn positive_secs(s: Option<f64>, what: &str) -> anyhow::Result<Option<Duration>> {
    match s {
        None => Ok(None),
        Some(s) => match secs(s, what)? {
            d if d.is_zero() => bail!("{what} is 0: a connection needs some time"),
            d => Ok(Some(d)),
        },
    }
}

fn check_max_connections(n: Option<usize>, what: &str) -> anyhow::Result<()> {
    match n {
        Some(0) => bail!("{what} is 0: at least one connection is needed"),
        _ => Ok(()),
    }
}

/// Below a kilobyte, ordinary clients' heads (a bearer token, a user
/// agent) would be refused.
fn check_max_header_bytes(n: Option<usize>, what: &str) -> anyhow::Result<()> {
    match n {
        Some(n) if n < 1024 => bail!("{what} is {n}: at least 1024 bytes are needed"),
        _ => Ok(()),
    }
}

fn check_attempts(n: Option<u32>, what: &str) -> anyhow::Result<()> {
    match n {
        Some(0) => bail!("{what} is 0: at least one attempt is needed"),
        _ => Ok(()),
    }
}

fn check_failure_secs(s: Option<f64>, what: &str) -> anyhow::Result<()> {
    match s {
        Some(s) if secs(s, what)?.is_zero() => bail!("{what} is 0: a remedy needs some time to work"),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        serve: ServeArgs,
    }

    /// Flags only, without the environment (tests run in parallel threads).
    fn args(data_dir: &Path, flags: &[&str]) -> ServeArgs {
        let mut argv = vec!["serve".to_string(), "--data-dir".into(), data_dir.display().to_string()];
        argv.extend(flags.iter().map(|s| s.to_string()));
        Cmd::try_parse_from(argv).expect("the flags parse").serve
    }

    const DOC: &str = include_str!("../../../docs/configuration.md");

    /// The first ```toml block of docs/configuration.md.
    fn doc_example() -> &'static str {
        let start = DOC.find("```toml\n").expect("docs/configuration.md has a ```toml example") + "```toml\n".len();
        let len = DOC[start..].find("```").expect("the example block is closed");
        &DOC[start..start + len]
    }

    #[test]
    fn the_documented_example_parses_and_sets_every_key() {
        let c = FileConfig::parse(doc_example(), "docs/configuration.md").expect("the documented example is valid");
        // Destructured without `..`: a new key fails to compile here until
        // it is documented (and set) in the example.
        let FileConfig {
            listen,
            uncertain_after_ms,
            presumed_dead_after_secs,
            restart_grace_secs,
            probe_interval_ms,
            action_timeout_ms,
            install_timeout_secs,
            heartbeat_interval_ms,
            action_latency_ms,
            max_action_attempts,
            max_remedy_failures,
            max_action_failure_secs,
            default_provider,
            no_local,
            log_format,
            tls_cert,
            tls_key,
            tls_self_signed,
            max_connections,
            header_read_timeout_secs,
            idle_timeout_secs,
            max_header_bytes,
            rotation_overlap_secs,
            credential_rotation_days,
            rollout_zone_concurrency,
            team_maintenance_windows,
            maintenance_notice_hours,
            archive_retention_hours,
            backup_retention_full,
            event_retention_days,
            audit_retention_days,
            status_title,
            status_sample_seconds,
            status_degraded_share,
            status_partial_share,
            status_major_share,
        } = c;
        assert!(listen.is_some(), "listen");
        assert!(uncertain_after_ms.is_some(), "uncertain_after_ms");
        assert!(presumed_dead_after_secs.is_some(), "presumed_dead_after_secs");
        assert!(restart_grace_secs.is_some(), "restart_grace_secs");
        assert!(probe_interval_ms.is_some(), "probe_interval_ms");
        assert!(action_timeout_ms.is_some(), "action_timeout_ms");
        assert!(install_timeout_secs.is_some(), "install_timeout_secs");
        assert!(heartbeat_interval_ms.is_some(), "heartbeat_interval_ms");
        assert!(action_latency_ms.is_some(), "action_latency_ms");
        assert!(max_action_attempts.is_some(), "max_action_attempts");
        assert!(max_remedy_failures.is_some(), "max_remedy_failures");
        assert!(max_action_failure_secs.is_some(), "max_action_failure_secs");
        assert!(default_provider.is_some(), "default_provider");
        assert!(no_local.is_some(), "no_local");
        assert!(log_format.is_some(), "log_format");
        assert!(tls_self_signed.is_some(), "tls_self_signed");
        assert!(max_connections.is_some(), "max_connections");
        assert!(header_read_timeout_secs.is_some(), "header_read_timeout_secs");
        assert!(idle_timeout_secs.is_some(), "idle_timeout_secs");
        assert!(max_header_bytes.is_some(), "max_header_bytes");
        assert!(rotation_overlap_secs.is_some(), "rotation_overlap_secs");
        assert!(credential_rotation_days.is_some(), "credential_rotation_days");
        assert!(rollout_zone_concurrency.is_some(), "rollout_zone_concurrency");
        assert!(team_maintenance_windows.is_some(), "team_maintenance_windows");
        assert!(maintenance_notice_hours.is_some(), "maintenance_notice_hours");
        assert!(archive_retention_hours.is_some(), "archive_retention_hours");
        assert!(backup_retention_full.is_some(), "backup_retention_full");
        assert!(event_retention_days.is_some(), "event_retention_days");
        assert!(audit_retention_days.is_some(), "audit_retention_days");
        assert!(status_title.is_some(), "status_title");
        assert!(status_sample_seconds.is_some(), "status_sample_seconds");
        assert!(status_degraded_share.is_some(), "status_degraded_share");
        assert!(status_partial_share.is_some(), "status_partial_share");
        assert!(status_major_share.is_some(), "status_major_share");
        // Paths have no default: they are set in the HTTPS example instead.
        assert_eq!((tls_cert, tls_key), (None, None), "the first example serves plain HTTP");
        let https =
            FileConfig::parse(doc_example_https(), "docs/configuration.md").expect("the HTTPS example is valid");
        assert!(https.tls_cert.is_some() && https.tls_key.is_some(), "the HTTPS example sets tls_cert and tls_key");
    }

    /// The second ```toml block of docs/configuration.md: HTTPS.
    fn doc_example_https() -> &'static str {
        let first = DOC.find("```toml\n").expect("a first example") + 1;
        let start = DOC[first..].find("```toml\n").expect("docs/configuration.md has a second ```toml example (HTTPS)")
            + first
            + "```toml\n".len();
        let len = DOC[start..].find("```").expect("the example block is closed");
        &DOC[start..start + len]
    }

    #[test]
    fn the_documented_example_holds_the_real_defaults() {
        let data = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let file = other.path().join("example.toml");
        std::fs::write(&file, doc_example()).unwrap();
        let file = file.display().to_string();
        let documented = resolve(args(data.path(), &["--config", &file]), false).unwrap();
        let built_in = resolve(args(data.path(), &[]), false).unwrap();
        assert_eq!(format!("{:?}", documented.options), format!("{:?}", built_in.options));
        assert_eq!(documented.log_format, built_in.log_format);
        // The engine's default for a remedy failing too long.
        assert_eq!(documented.max_action_failure, Some(drover_engine::Config::default().max_action_failure));
    }

    #[test]
    fn retention_is_read_in_days_zero_keeps_for_ever_and_the_audit_outlives_the_events() {
        let data = tempfile::tempdir().unwrap();
        let with = |text: &str| {
            let file = data.path().join("retention.toml");
            std::fs::write(&file, text).unwrap();
            resolve(args(data.path(), &["--config", &file.display().to_string()]), false)
        };
        let r = with("event_retention_days = 7\naudit_retention_days = 0\n").unwrap().options.retention;
        assert_eq!((r.events, r.audit), (Some(Duration::from_secs(7 * 86_400)), None));
        let Err(e) = with("event_retention_days = 30\naudit_retention_days = 10\n") else { panic!("refused") };
        assert!(e.to_string().contains("audit_retention_days must be at least"), "{e}");
        let s = with("status_title = \"Acme data\"\nstatus_sample_seconds = 30\nstatus_major_share = 0.4\n")
            .unwrap()
            .options
            .status;
        assert_eq!((s.title.as_str(), s.sample_every, s.thresholds.major), ("Acme data", Duration::from_secs(30), 0.4));
        let Err(e) = with("status_partial_share = 0.9\nstatus_major_share = 0.5\n") else { panic!("refused") };
        assert!(e.to_string().contains("must rise"), "{e}");
        assert!(with("status_sample_seconds = 0\n").is_err());
    }

    #[test]
    fn the_doc_names_every_serve_flag_and_its_environment_variable() {
        let cmd = <Cmd as clap::CommandFactory>::command();
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "version") {
                continue;
            }
            assert!(DOC.contains(&format!("--{long}")), "docs/configuration.md does not mention --{long}");
            if let Some(env) = arg.get_env() {
                let env = env.to_string_lossy();
                assert!(DOC.contains(env.as_ref()), "docs/configuration.md does not mention {env}");
            }
        }
    }

    #[test]
    fn tls_and_connection_limits_come_from_flags_or_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = resolve(args(dir.path(), &[]), false).unwrap();
        assert_eq!((s.options.tls, s.options.http), (None, drover_server::listen::HttpLimits::default()));
        let s = resolve(
            args(
                dir.path(),
                &["--tls-cert", "c.pem", "--tls-key", "k.pem", "--max-connections", "50", "--idle-timeout-secs", "2.5"],
            ),
            false,
        )
        .unwrap();
        let files = drover_server::tls::TlsSource::Files { cert: "c.pem".into(), key: "k.pem".into() };
        assert_eq!(s.options.tls, Some(files));
        assert_eq!(s.options.http.max_connections, 50);
        assert_eq!(s.options.http.idle_timeout, Duration::from_millis(2500));
        std::fs::write(
            dir.path().join(FILE_NAME),
            "tls_self_signed = true\nheader_read_timeout_secs = 3\nmax_header_bytes = 4096\n",
        )
        .unwrap();
        let s = resolve(args(dir.path(), &[]), false).unwrap();
        assert_eq!(s.options.tls, Some(drover_server::tls::TlsSource::SelfSigned));
        assert_eq!(s.options.http.header_read_timeout, Duration::from_secs(3));
        assert_eq!(s.options.http.max_header_bytes, 4096);
    }

    #[test]
    fn the_input_log_is_off_unless_asked_for() {
        let data = tempfile::tempdir().unwrap();
        assert_eq!(resolve(args(data.path(), &[]), false).unwrap().options.input_log, None);
        let log = data.path().join("inputs.jsonl");
        let asked = resolve(args(data.path(), &["--input-log", &log.display().to_string()]), false).unwrap();
        assert_eq!(asked.options.input_log, Some(log));
    }

    #[test]
    fn the_store_is_sqlite_unless_a_postgres_url_is_given() {
        let data = tempfile::tempdir().unwrap();
        assert_eq!(resolve(args(data.path(), &[]), false).unwrap().options.store, None);
        let url = "postgres://drover@127.0.0.1:5432/fleet";
        let asked = resolve(args(data.path(), &["--store", url]), false).unwrap();
        assert_eq!(asked.options.store.as_deref(), Some(url));
        let Err(e) = resolve(args(data.path(), &["--store", "mysql://drover@127.0.0.1/fleet"]), false) else {
            panic!("a mysql:// store was accepted")
        };
        assert!(e.to_string().contains("postgres://USER@HOST:PORT/DB"), "{e}");
    }

    #[test]
    fn the_sim_world_is_the_data_dirs_unless_a_sim_provider_url_is_given() {
        let data = tempfile::tempdir().unwrap();
        assert_eq!(resolve(args(data.path(), &[]), false).unwrap().options.sim_provider_url, None);
        let url = "http://127.0.0.1:7800";
        let asked = resolve(args(data.path(), &["--sim-provider-url", url]), false).unwrap();
        assert_eq!(asked.options.sim_provider_url.as_deref(), Some(url));
        let Err(e) = resolve(args(data.path(), &["--sim-provider-url", "127.0.0.1:7800"]), false) else {
            panic!("a URL without a scheme was accepted")
        };
        assert!(e.to_string().contains("drover sim-provider"), "{e}");
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_the_key_and_the_file() {
        let e = FileConfig::parse("listen = \"127.0.0.1:1\"\nprobe_intervall_ms = 5\n", "/etc/x/drover.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("probe_intervall_ms"), "{e}");
        assert!(e.contains("/etc/x/drover.toml"), "{e}");
    }

    #[test]
    fn bad_files_are_errors_not_panics() {
        for (text, needle) in [
            ("listen = [", "drover.toml"),
            ("listen = \"not an address\"", "listen"),
            ("uncertain_after_ms = -1", "uncertain_after_ms"),
            ("uncertain_after_ms = \"3s\"", "uncertain_after_ms"),
            ("presumed_dead_after_secs = -2.0", "presumed_dead_after_secs"),
            ("presumed_dead_after_secs = nan", "presumed_dead_after_secs"),
            ("restart_grace_secs = inf", "restart_grace_secs"),
            ("max_action_attempts = 0", "max_action_attempts"),
            ("max_action_attempts = 5000000000", "max_action_attempts"),
            ("max_action_failure_secs = 0", "max_action_failure_secs"),
            ("default_provider = \"aws\"", "default_provider"),
            ("log_format = \"xml\"", "log_format"),
            ("no_local = \"yes\"", "no_local"),
            ("[timing]\nprobe_interval_ms = 5", "timing"),
            ("max_connections = 0", "max_connections"),
            ("max_header_bytes = 100", "max_header_bytes"),
            ("idle_timeout_secs = 0", "idle_timeout_secs"),
            ("header_read_timeout_secs = -1", "header_read_timeout_secs"),
        ] {
            let e = FileConfig::parse(text, "d/drover.toml").expect_err(text).to_string();
            assert!(e.contains(needle) && e.contains("d/drover.toml"), "{text:?} gave {e}");
        }
    }

    #[test]
    fn a_missing_data_dir_file_is_fine_a_missing_explicit_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (c, path) = FileConfig::load(None, dir.path()).unwrap();
        assert_eq!((c, path), (FileConfig::default(), None));
        let missing = dir.path().join("nope.toml");
        let e = FileConfig::load(Some(&missing), dir.path()).unwrap_err();
        assert!(format!("{e:#}").contains("nope.toml"), "{e:#}");
    }

    #[test]
    fn flags_beat_the_file_which_beats_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE_NAME),
            "listen = \"127.0.0.1:7801\"\nprobe_interval_ms = 250\nmax_action_attempts = 3\nno_local = true\n\
             log_format = \"json\"\ndefault_provider = \"sim\"\nrestart_grace_secs = 1.5\n",
        )
        .unwrap();
        let defaults = drover_server::serve_engine_config();

        let s = resolve(args(dir.path(), &[]), false).unwrap();
        assert_eq!(s.options.listen, "127.0.0.1:7801".parse().unwrap());
        assert_eq!(s.options.engine.probe_interval, Duration::from_millis(250));
        assert_eq!(s.options.engine.max_action_attempts, 3);
        assert_eq!(s.options.engine.restart_grace, Duration::from_millis(1500));
        assert_eq!(s.options.engine.default_provider, "sim");
        assert_eq!(s.options.engine.uncertain_after, defaults.uncertain_after);
        assert!(s.options.local.is_none());
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.config_file, Some(std::path::absolute(dir.path().join(FILE_NAME)).unwrap()));

        let s = resolve(
            args(
                dir.path(),
                &[
                    "--listen",
                    "127.0.0.1:7802",
                    "--probe-interval-ms",
                    "100",
                    "--max-action-attempts",
                    "7",
                    "--log-format",
                    "text",
                    "--default-provider",
                    "local",
                    "--max-action-failure-secs",
                    "30",
                ],
            ),
            false,
        )
        .unwrap();
        assert_eq!(s.options.listen, "127.0.0.1:7802".parse().unwrap());
        assert_eq!(s.options.engine.probe_interval, Duration::from_millis(100));
        assert_eq!(s.options.engine.max_action_attempts, 7);
        assert_eq!(s.options.engine.default_provider, "local");
        assert_eq!(s.log_format, LogFormat::Text);
        assert_eq!(s.max_action_failure, Some(Duration::from_secs(30)));
        // The file's `no_local = true` holds unless the flag or variable was given.
        assert!(s.options.local.is_none());
        assert!(resolve(args(dir.path(), &[]), true).unwrap().options.local.is_some());
    }

    #[test]
    fn without_a_file_the_defaults_hold() {
        let dir = tempfile::tempdir().unwrap();
        let s = resolve(args(dir.path(), &[]), false).unwrap();
        let d = drover_server::serve_engine_config();
        assert_eq!(s.options.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(s.options.engine.probe_interval, d.probe_interval);
        assert_eq!(s.options.engine.max_action_attempts, d.max_action_attempts);
        assert_eq!(s.options.engine.default_provider, DEFAULT_PROVIDER);
        assert!(s.options.local.is_some());
        assert_eq!(s.log_format, LogFormat::Text);
        assert_eq!((s.config_file, s.max_action_failure), (None, None));
    }

    #[test]
    fn a_node_name_postgres_cannot_keep_whole_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = "postgres://drover@127.0.0.1:5432/drover";
        let long = "a-node-name-far-too-long-for-its-connection-s-name-in-postgres";
        for (node, why) in [("nœud", "printable ASCII"), (long, "1 to 50 characters")] {
            let e = resolve(args(dir.path(), &["--store", store, "--node", node]), false).unwrap_err().to_string();
            assert!(e.starts_with("--node: ") && e.contains(why), "{node}: {e}");
        }
        assert!(resolve(args(dir.path(), &["--store", store, "--node", "cp-1"]), false).is_ok());
    }

    #[test]
    fn bad_flags_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        for flags in [
            &["--max-action-attempts", "0"][..],
            &["--max-action-failure-secs", "0"],
            &["--presumed-dead-after-secs=-1"],
            &["--tls-cert", "c.pem"],
            &["--tls-key", "k.pem"],
            &["--tls-self-signed", "--tls-cert", "c.pem", "--tls-key", "k.pem"],
            &["--max-connections", "0"],
            &["--header-read-timeout-secs", "0"],
        ] {
            let e = resolve(args(dir.path(), flags), false).unwrap_err().to_string();
            assert!(e.contains(flags[0].split('=').next().unwrap()), "{flags:?} gave {e}");
        }
    }
}
