//! The routers of services whose members run on agent hosts (issue 11):
//! one pgbouncer per service beside the control plane, a child of
//! `drover serve`, so a service's URL does not die with the host of its
//! primary. They are the local provider's own [`Routers`] (the same
//! config, holds and PAUSE/RELOAD/RESUME), pointed at another host's
//! address instead of 127.0.0.1.
//!
//! What is kept: `data_dir/routers/routes.json`, each service's name,
//! router port (fixed for its life, so the URL never changes) and the
//! SCRAM verifier of its login, written atomically before the verifier is
//! handed out. The password is not kept: the control plane derives it from
//! its secret key. Password and verifier travel to the agents with each
//! Provision, so the servers hold the very verifier the router holds
//! (pgbouncer's SCRAM pass-through needs the same salt on both sides). Where each
//! router points is not kept either: the control plane's loop says it
//! again (from the engine's view) every round, and a router adopted after
//! a restart is rewritten and reloaded on the first round.

use super::lock;
use super::postgres::{self, APP_DATABASE, APP_LOGINS};
use super::registry::ServiceEntry;
use super::router::Routers;
use super::UpstreamAddress;
use crate::runas::RunAs;
use crate::{ActionError, ProviderError};
use drover_model::ServiceId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a router may take to shut down when its service is gone.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What `routes.json` keeps of one service's router.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Kept {
    name: String,
    port: u16,
    /// The SCRAM verifier of the service's login (not a password).
    verifier: String,
}

/// One service's router as this process knows it.
struct Route {
    kept: Kept,
    /// Where the router points now (None: not written by this process yet).
    target: Option<UpstreamAddress>,
    /// New queries are held (the primary it pointed at is being fenced).
    held: bool,
}

/// The routers beside the control plane. Cheap to share (`Arc`).
pub struct ControlPlaneRouters {
    routers: Arc<Routers>,
    path: PathBuf,
    routes: Mutex<HashMap<ServiceId, Route>>,
    /// One change of the routes file at a time.
    persist: Mutex<()>,
    /// How many routers may be kept here at most ([`Self::limit_to`]).
    limit: AtomicUsize,
    /// Who the routers run as, to make `routers/` when the first one is
    /// kept: not before, so that a control plane with no service on agent
    /// hosts leaves its data dir closed to the servers' user (0700).
    run_as: RunAs,
}

impl ControlPlaneRouters {
    /// Opens `data_dir/routers/` and adopts the pgbouncers that still run
    /// there (a control-plane restart leaves them serving).
    pub fn open(data_dir: &Path) -> Result<Arc<ControlPlaneRouters>, ProviderError> {
        let io = |operation: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source: std::io::Error| ProviderError::Io { operation, path, source }
        };
        let data_dir = std::path::absolute(data_dir).map_err(io("make absolute the data directory", data_dir))?;
        let root = data_dir.join("routers");
        let run_as = RunAs::for_servers().map_err(io("choose the server user for", &root))?;
        std::fs::create_dir_all(&data_dir).map_err(io("create the directory", &data_dir))?;
        let path = root.join("routes.json");
        let kept: BTreeMap<ServiceId, Kept> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ProviderError::CorruptState {
                path: path.clone(),
                reason: format!("not a routes file: {e}"),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(io("read", &path)(e)),
        };
        let control_user = nix::unistd::User::from_uid(nix::unistd::Uid::effective())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| nix::unistd::Uid::effective().to_string());
        let routers =
            Arc::new(Routers::new(run_as.clone(), root, control_user, STOP_TIMEOUT, Arc::new(AtomicBool::new(false))));
        let adopted = routers.adopt(kept.keys().copied());
        if adopted > 0 {
            tracing::info!(adopted, "routers beside the control plane adopted");
        }
        let routes = kept.into_iter().map(|(id, kept)| (id, Route { kept, target: None, held: false })).collect();
        Ok(Arc::new(ControlPlaneRouters {
            routers,
            path,
            routes: Mutex::new(routes),
            persist: Mutex::new(()),
            limit: AtomicUsize::new(usize::MAX),
            run_as,
        }))
    }

    /// Keeps at most `max` routers here: each is a pgbouncer process, a
    /// child of this control plane, and a fleet of a hundred thousand
    /// services on agent hosts would be as many processes. A service past
    /// the limit gets no router and no login for one (its members are
    /// built without, and the shell logs this error); routers kept
    /// already, past a lowered limit, stay.
    pub fn limit_to(&self, max: usize) {
        self.limit.store(max, Ordering::Relaxed);
    }

    /// Whether `service` has no router kept here and the limit leaves no
    /// room for one: [`Self::route`] would refuse it.
    pub fn full_for(&self, service: ServiceId) -> bool {
        let routes = lock(&self.routes);
        !routes.contains_key(&service) && routes.len() >= self.limit.load(Ordering::Relaxed)
    }

    /// The stable URL of service `name` (None before its first router).
    pub fn url(&self, name: &str, password: &str) -> Option<String> {
        let port = lock(&self.routes).values().find(|r| r.kept.name == name).map(|r| r.kept.port)?;
        Some(format!("postgres://{}:{password}@127.0.0.1:{port}/{APP_DATABASE}", APP_LOGINS[0]))
    }

    /// The service named `name` that has a router here.
    pub fn service_id(&self, name: &str) -> Option<ServiceId> {
        lock(&self.routes).iter().find(|(_, r)| r.kept.name == name).map(|(id, _)| *id)
    }

    /// The SCRAM verifier of `service`'s login, made (from `password`)
    /// and kept durably, with the service's router port, on first ask.
    pub fn login_verifier(&self, service: ServiceId, name: &str, password: &str) -> Result<String, ActionError> {
        let made = {
            let mut routes = lock(&self.routes);
            if let Some(route) = routes.get(&service) {
                return Ok(route.kept.verifier.clone());
            }
            let limit = self.limit.load(Ordering::Relaxed);
            if routes.len() >= limit {
                return Err(ActionError::Config(format!(
                    "no router for service {name}: this control plane keeps at most {limit} routers beside it \
                     (--max-routers-beside), one pgbouncer each"
                )));
            }
            let used: BTreeSet<u16> = routes.values().map(|r| r.kept.port).collect();
            let port = super::actions::free_port(&used)?;
            let verifier = postgres::scram_verifier(password);
            let kept = Kept { name: name.to_string(), port, verifier: verifier.clone() };
            routes.insert(service, Route { kept, target: None, held: false });
            verifier
        };
        self.persist()?;
        Ok(made)
    }

    /// The registry-shaped entry the router code takes: one login role
    /// (the URL's), its verifier.
    fn entry(&self, service: ServiceId) -> Option<ServiceEntry> {
        let routes = lock(&self.routes);
        let route = routes.get(&service)?;
        Some(ServiceEntry {
            name: route.kept.name.clone(),
            router_port: route.kept.port,
            password: String::new(),
            login: APP_LOGINS[0].to_string(),
            verifier: route.kept.verifier.clone(),
            previous: None,
            rotated_at_ms: 0,
            rotation_action: None,
            primary: None,
            sync: false,
            session_pool: false,
        })
    }

    fn persist(&self) -> Result<(), ActionError> {
        let _writing = lock(&self.persist);
        if let Some(root) = self.path.parent().filter(|r| !r.exists()) {
            self.run_as
                .prepare_dir(root, 0o750)
                .map_err(|e| ActionError::io("cannot prepare the routers directory", e))?;
        }
        let kept: BTreeMap<ServiceId, Kept> = lock(&self.routes).iter().map(|(id, r)| (*id, r.kept.clone())).collect();
        let bytes = serde_json::to_vec_pretty(&kept)
            .map_err(|e| ActionError::Failed(format!("cannot serialize the routes: {e}")))?;
        write_atomically(&self.path, &bytes).map_err(|e| ActionError::io("cannot write the routes file", e))
    }

    /// Makes the router of `service` run and point at `target` (its
    /// writable primary), ending any hold. Does nothing when it already
    /// does. A new service's port is kept durably before its router starts.
    pub async fn route(
        &self,
        service: ServiceId,
        name: &str,
        password: &str,
        target: &UpstreamAddress,
    ) -> Result<(), ActionError> {
        self.login_verifier(service, name, password)?;
        let Some(entry) = self.entry(service) else {
            return Err(ActionError::Failed(format!("no route kept for service {name}")));
        };
        let (current, held) = {
            let routes = lock(&self.routes);
            let route = routes.get(&service);
            (route.and_then(|r| r.target.clone()), route.is_some_and(|r| r.held))
        };
        if current.as_ref() == Some(target) && self.routers.running(service) {
            if held {
                self.routers.resume(service, &entry).await;
                if let Some(route) = lock(&self.routes).get_mut(&service) {
                    route.held = false;
                }
            }
            return Ok(());
        }
        // A router that died is started again; a running one RELOADs.
        self.routers.take_exited();
        self.routers.ensure(service, &entry, &target.address, target.port, &[]).await?;
        self.routers.resume(service, &entry).await;
        tracing::info!(service = %name, address = %target.address, port = target.port, "router points at the primary");
        if let Some(route) = lock(&self.routes).get_mut(&service) {
            route.target = Some(target.clone());
            route.held = false;
        }
        Ok(())
    }

    /// Holds new queries of `service` at its router: the primary it points
    /// at is being fenced or is gone, and no other is writable yet. Clients
    /// queue (bounded by the router's pause watchdog) instead of writing to
    /// a server that may be cut off; connections a dead host left open are
    /// dropped shortly after. Idempotent.
    pub async fn hold(&self, service: ServiceId) {
        let held = lock(&self.routes).get(&service).is_none_or(|r| r.held || r.target.is_none());
        let Some(entry) = self.entry(service).filter(|_| !held) else { return };
        let name = entry.name.clone();
        if let Some(pausing) = self.routers.hold(service, &entry).await {
            let routers = self.routers.clone();
            tokio::spawn(async move { routers.release_dead_connections(service, &entry, pausing).await });
        }
        if let Some(route) = lock(&self.routes).get_mut(&service) {
            route.held = true;
        }
        tracing::info!(service = %name, "router holds new queries: no writable primary");
    }

    /// The services with a router kept here.
    pub fn services(&self) -> Vec<ServiceId> {
        lock(&self.routes).keys().copied().collect()
    }

    /// Stops the router of a service that is gone, and forgets it.
    pub async fn remove(&self, service: ServiceId) -> Result<(), ActionError> {
        self.routers.stop(service).await?;
        lock(&self.routes).remove(&service);
        self.persist()
    }

    /// Stops every router (the routes stay kept: a later start serves the
    /// same ports). For tests and `kill_servers_on_drop`-like shutdowns.
    pub fn shutdown(&self) {
        for process in self.routers.drain() {
            process.expect_exit();
            process.stop_blocking(nix::sys::signal::Signal::SIGTERM, STOP_TIMEOUT);
        }
    }
}

/// Temp file, fsync, rename, fsync of the directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let directory = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let temporary = directory.join(".routes.json.tmp");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)?;
    std::fs::File::open(&directory)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A control plane with a limit makes logins (and so routers) for that
    /// many services; the next is refused with the flag to raise, and
    /// nothing of it is kept; a service kept already is served whatever
    /// the limit.
    #[test]
    fn routers_past_the_limit_are_refused_and_nothing_of_them_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let routers = ControlPlaneRouters::open(dir.path()).expect("opens");
        routers.limit_to(2);
        let ids: Vec<ServiceId> = (0..3).map(|n| ServiceId::new_at(1_000_000, n)).collect();
        for (n, id) in ids.iter().take(2).enumerate() {
            assert!(!routers.full_for(*id));
            routers.login_verifier(*id, &format!("db{n}"), "secret").expect("within the limit");
        }
        assert!(routers.full_for(ids[2]), "a third service has no room");
        assert!(!routers.full_for(ids[0]), "a kept one is not refused");
        let refused = routers.login_verifier(ids[2], "db2", "secret").expect_err("past the limit");
        assert!(matches!(refused, ActionError::Config(_)), "{refused:?}");
        assert!(refused.to_string().contains("--max-routers-beside"), "{refused}");
        assert_eq!(routers.services().len(), 2);
        routers.login_verifier(ids[0], "db0", "secret").expect("a kept service keeps its login");

        // The limit is not kept: opened again without it, the third fits.
        drop(routers);
        let reopened = ControlPlaneRouters::open(dir.path()).expect("opens again");
        assert_eq!(reopened.services().len(), 2, "the two kept survive a restart");
        reopened.login_verifier(ids[2], "db2", "secret").expect("no limit set");
    }
}
