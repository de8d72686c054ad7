//! The agent's probes: every instance of this host on a fresh connection,
//! concurrently, each within a timeout. The query and how its answer
//! becomes facts are the local provider's ([`drover_providers::local::probe`]),
//! so the agent and the in-process heartbeat loop report the same facts.

use drover_model::{Facts, InstanceId};
use drover_providers::local::probe::{round_facts, Sample, FACTS_SQL};
use drover_providers::local::{postgres_error_text, LocalInstanceInfo, ROLE};
use std::path::Path;
use std::time::Duration;
use tokio_postgres::{Client, NoTls};

/// Connects to an instance over its unix socket (peer auth, as `drover`)
/// within `timeout`. The caller's OS user must be mapped in pg_ident.conf:
/// the server user and the user that ran the control plane are.
pub async fn connect(
    socket_dir: &Path,
    port: u16,
    application_name: &str,
    timeout: Duration,
) -> Result<Client, String> {
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(socket_dir)
        .port(port)
        .user(ROLE)
        .dbname("postgres")
        .application_name(application_name)
        .connect_timeout(timeout);
    let (client, connection) = tokio::time::timeout(timeout, config.connect(NoTls))
        .await
        .map_err(|_| format!("no connection within {timeout:?}"))?
        .map_err(|e| format!("cannot connect: {}", postgres_error_text(&e)))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// How the agent's connections show in pg_stat_activity.
pub const AGENT_APPLICATION_NAME: &str = "drover-agent";

/// Probes one instance on a fresh connection, all within `timeout`; None
/// when it does not answer (it is then silent this round).
pub async fn probe_sample(id: InstanceId, info: &LocalInstanceInfo, timeout: Duration) -> Option<Sample> {
    let attempt = async {
        let client = connect(&info.socket_dir, info.port, AGENT_APPLICATION_NAME, timeout).await?;
        client.query_one(FACTS_SQL, &[]).await.map_err(|e| postgres_error_text(&e))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(row)) => Some(Sample::from_row(id, info.service, &row)),
        Ok(Err(error)) => {
            tracing::debug!(instance = %id, %error, "probe failed");
            None
        }
        Err(_) => {
            tracing::debug!(instance = %id, "probe timed out");
            None
        }
    }
}

/// One instance's facts (no replication lag: that needs its primary's
/// position from the same round, see [`probe_host`]).
pub async fn probe_instance(id: InstanceId, info: &LocalInstanceInfo, timeout: Duration) -> Option<Facts> {
    probe_sample(id, info, timeout).await.map(|s| s.facts(None))
}

/// Probes every instance concurrently (one hung server never delays the
/// others), each within `timeout`; returns the facts of those that
/// answered, followers' lag measured against their primary's position in
/// this round when that primary is on this host.
pub async fn probe_host(instances: &[(InstanceId, LocalInstanceInfo)], timeout: Duration) -> Vec<(InstanceId, Facts)> {
    let mut probes = tokio::task::JoinSet::new();
    for (id, info) in instances {
        let (id, info) = (*id, info.clone());
        probes.spawn(async move { probe_sample(id, &info, timeout).await });
    }
    let mut samples = Vec::new();
    while let Some(joined) = probes.join_next().await {
        if let Ok(Some(sample)) = joined {
            samples.push(sample);
        }
    }
    samples.sort_by_key(|s| s.id);
    round_facts(&samples)
}
