//! A silent agent host, seen from the control plane (issue 11). When a
//! host dies or freezes, its agent answers nothing, so two of the actions a
//! failover needs cannot wait for it:
//!
//! - the **probe** of one of its silent instances is made from here, over
//!   the network (a PostgreSQL login at the host's address and the port its
//!   agent last reported): a server that answers at all, even to refuse the
//!   login, is alive; no answer within [`PROBE_TIMEOUT`] (a frozen host's
//!   kernel still accepts the TCP connection, its postmaster never answers)
//!   or a refused port is the corroboration the engine needs;
//! - the **fence** of its primary is counted done without the agent once
//!   that agent has been silent past its lease plus [`LEASE_MARGIN`] (it
//!   fenced its primaries when the lease ran out: docs/agent.md, "The
//!   lease"; a frozen or dead host takes them with it), or, once it is
//!   silent at all, when the primary's port refuses TCP (its server is
//!   gone). Until then the agent's own answer is awaited as for any action.
//!
//! [`LEASE_MARGIN`]: crate::agents::LEASE_MARGIN

use crate::agents::AgentChannel;
use drover_model::{ActionOutcome, InstanceId};
use std::time::Duration;

/// How long a probe over the network waits for the server to answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(400);
/// How often a pending fence looks at its host's silence again.
const FENCE_POLL: Duration = Duration::from_millis(50);
/// Silence after which a refused port alone counts as a fenced primary (an
/// agent that answers is asked instead: its server may just be restarting).
const SILENT_FOR_REFUSED: Duration = Duration::from_millis(750);

/// Where a server on an agent host is reached, and the service's login
/// when the control plane knows it (routers beside it, `--no-local`).
#[derive(Clone)]
pub struct Target {
    pub address: String,
    pub port: u16,
    pub login_password: Option<String>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.address, self.port)
    }
}

/// Probes one server over the network: answered (even a refused login is
/// an answer from a live server) or not within [`PROBE_TIMEOUT`].
pub async fn probe(target: &Target) -> ActionOutcome {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&target.address)
        .port(target.port)
        .user(drover_providers::local::APP_LOGINS[0])
        .dbname(drover_providers::local::APP_DATABASE)
        .application_name("drover-probe")
        .connect_timeout(PROBE_TIMEOUT);
    if let Some(password) = &target.login_password {
        config.password(password.as_bytes());
    }
    let answered = tokio::time::timeout(PROBE_TIMEOUT, async {
        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
        let connection = tokio::spawn(connection);
        let result = client.simple_query("SELECT 1").await.map(|_| ());
        drop(client);
        let _ = connection.await;
        result
    })
    .await;
    match answered {
        Ok(Ok(())) => ActionOutcome::Succeeded { detail: Some(format!("answered over the network at {target:?}")) },
        // A live server that refuses us still answered, unless it says it
        // cannot take connections (starting up, shutting down, recovering).
        Ok(Err(error))
            if error
                .as_db_error()
                .is_some_and(|e| *e.code() != tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW) =>
        {
            ActionOutcome::Succeeded {
                detail: Some(format!(
                    "answered over the network at {target:?} (refusing the probe's login: {})",
                    error.as_db_error().map_or("", |e| e.message())
                )),
            }
        }
        Ok(Err(error)) => ActionOutcome::Failed {
            error: format!(
                "no answer over the network at {target:?}: {}",
                drover_providers::local::postgres_error_text(&error)
            ),
            retryable: false,
        },
        Err(_) => ActionOutcome::Failed {
            error: format!("no answer over the network at {target:?} within {} ms", PROBE_TIMEOUT.as_millis()),
            retryable: false,
        },
    }
}

/// Resolves, with why, once the primary `instance` of silent `host` has
/// surely stopped taking writes without its agent's answer; never while
/// the agent is heard.
pub async fn fenced_by_silence(
    agents: AgentChannel,
    host: String,
    instance: InstanceId,
    address: Option<String>,
) -> String {
    loop {
        if let Some(silence) = agents.silence(&host) {
            if silence.past_lease() {
                return format!(
                    "host {host} silent for {:.2}s, past its agent's {:.2}s lease: its primaries fenced themselves \
                     or went down with the host",
                    silence.silent_for.as_secs_f64(),
                    silence.ttl.as_secs_f64()
                );
            }
            if silence.silent_for >= SILENT_FOR_REFUSED {
                if let (Some(address), Some(port)) = (address.as_deref(), agents.port(instance)) {
                    if refuses(address, port).await {
                        return format!(
                            "host {host} silent for {:.2}s and {address}:{port} refuses connections: the server is down",
                            silence.silent_for.as_secs_f64()
                        );
                    }
                }
            }
        }
        tokio::time::sleep(FENCE_POLL).await;
    }
}

/// Whether `address:port` actively refuses a TCP connection (nothing
/// listens there); a timeout is not a refusal.
async fn refuses(address: &str, port: u16) -> bool {
    let connect = tokio::net::TcpStream::connect((address, port));
    matches!(
        tokio::time::timeout(Duration::from_millis(200), connect).await,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}
