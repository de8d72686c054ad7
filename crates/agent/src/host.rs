//! What the agent, a second process on this host, may do with the local
//! provider's instances: read the registry without opening
//! [`drover_providers::local::LocalProvider`] (which adopts, restarts and
//! owns the servers: a second process must never do that), and fence or
//! un-fence a primary's writes over SQL, leaving the postmaster running.

use crate::probe::{connect, AGENT_APPLICATION_NAME};
use drover_model::InstanceId;
use drover_providers::local::{postgres_error_text, registry, running_pid, LocalInstanceInfo};
use drover_providers::ProviderError;
use std::path::Path;
use std::time::Duration;

/// The instances the registry under `data_dir/local/state.json` says should
/// run on this host (active, not fenced by the provider), with the pid of
/// their postmaster when one is alive. Reads the file and /proc only: never
/// writes, starts or adopts anything. No registry yet: no instances.
pub fn read_instances(data_dir: &Path) -> Result<Vec<(InstanceId, LocalInstanceInfo)>, ProviderError> {
    let path = data_dir.join("local").join("state.json");
    let Some(registry) = registry::read(&path)? else {
        return Ok(Vec::new());
    };
    Ok(registry
        .instances
        .iter()
        .filter(|(_, entry)| entry.should_run())
        .map(|(id, entry)| (*id, entry.info(running_pid(&entry.pgdata().join("postmaster.pid"), "postgres"))))
        .collect())
}

/// Client sessions other than the caller's; walsenders (followers) are
/// `walsender` backends and keep streaming.
const TERMINATE_CLIENTS_SQL: &str = "SELECT count(pg_terminate_backend(pid))::int4 FROM pg_stat_activity \
     WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()";

/// Self-fence: new transactions are read-only (persisted with ALTER
/// SYSTEM, so a restart keeps the fence), then every client session is
/// terminated so none that began read-write can keep writing. Returns how
/// many sessions were terminated. Idempotent.
///
/// default_transaction_read_only is a default: a client that reconnects
/// and explicitly asks for a read-write transaction can still write. It
/// stops applications and the router's pooled sessions, not a determined
/// superuser; the provider's own fence (which stops the postmaster) is the
/// hard one.
pub async fn fence_writes(info: &LocalInstanceInfo, timeout: Duration) -> Result<u32, String> {
    let attempt = async {
        let client = connect(&info.socket_dir, info.port, AGENT_APPLICATION_NAME, timeout).await?;
        let sql_error = |e: tokio_postgres::Error| postgres_error_text(&e);
        // One statement per call: ALTER SYSTEM cannot run in a transaction block.
        client.batch_execute("ALTER SYSTEM SET default_transaction_read_only = on").await.map_err(sql_error)?;
        client.batch_execute("SELECT pg_reload_conf()").await.map_err(sql_error)?;
        let row = client.query_one(TERMINATE_CLIENTS_SQL, &[]).await.map_err(sql_error)?;
        Ok::<u32, String>(row.get::<_, i32>(0).max(0) as u32)
    };
    tokio::time::timeout(timeout, attempt).await.map_err(|_| format!("the fence did not finish within {timeout:?}"))?
}

/// Lifts [`fence_writes`]: the server accepts writes again. Only after the
/// control plane confirmed this instance is still its service's writable
/// primary (see `lease`).
pub async fn unfence_writes(info: &LocalInstanceInfo, timeout: Duration) -> Result<(), String> {
    let attempt = async {
        let client = connect(&info.socket_dir, info.port, AGENT_APPLICATION_NAME, timeout).await?;
        let sql_error = |e: tokio_postgres::Error| postgres_error_text(&e);
        client.batch_execute("ALTER SYSTEM RESET default_transaction_read_only").await.map_err(sql_error)?;
        client.batch_execute("SELECT pg_reload_conf()").await.map_err(sql_error)?;
        Ok::<(), String>(())
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| format!("the un-fence did not finish within {timeout:?}"))?
}
