//! Credential rotation of a Redis service without downtime (issue 10, item
//! 8), the way the PostgreSQL half does it (`local::credentials`).
//!
//! A service has two application ACL users, `app` and `app_b`
//! ([`server::APP_LOGINS`]), with the same rules and the whole keyspace, so
//! whatever one writes the other reads. The URL names one of them. ACL
//! users are per server (not replicated), so every step is applied to every
//! running member, primary and replicas, and each member's `redis.conf` is
//! rewritten with the users the registry names (a restarted or newly built
//! member starts with them; the registry is the record).
//!
//! A rotation (`RotateCredentials`): the other user gets a new random
//! password (`ACL SETUSER … reset on #sha256 …`) on every member, then the
//! registry records, durably, that user and its sealed password as the
//! URL's, and the old one (with only the SHA-256 of its password) as
//! `previous`. The router (HAProxy in TCP mode) carries no credential, so
//! the URL changes user and password, never host or port. Clients logged in
//! as the old user keep working until the engine ends the overlap with
//! `RevokePreviousCredentials`: `ACL DELUSER` on every member, which also
//! closes the old user's connections, and the config files without it.
//! Every step is idempotent and its state lives in the registry (written
//! after the servers took it), so a control plane killed with -9 anywhere
//! in between finishes when the engine dispatches the action again.

use super::{invalid, server, Done, RedisInstance, RedisPrevious, RedisService};
use crate::local::actions::{now_ms, random_password};
use crate::local::{lock, Inner};
use crate::ActionError;
use drover_model::{ActionId, ServiceId};
use std::time::Duration;

/// One ACL command on one member.
const ACL_TIMEOUT: Duration = Duration::from_secs(5);

/// The application users a member must have: the current one with the
/// SHA-256 of its password, and the previous one when in its overlap.
struct Wanted {
    current: (String, String),
    previous: Option<(String, String)>,
}

impl Inner {
    fn redis_wanted(&self, service: &RedisService) -> Result<Wanted, ActionError> {
        let password = self.redis_password(service, &service.login)?;
        Ok(Wanted {
            current: (service.login.clone(), server::sha256_hex(&password)),
            previous: service.previous.as_ref().map(|p| (p.login.clone(), p.hash.clone())),
        })
    }

    /// The members of a service that run now (they get the ACL at run
    /// time; the others get it from their config file when they start).
    fn redis_running_members(&self, service: ServiceId) -> Vec<RedisInstance> {
        let members: Vec<(drover_model::InstanceId, RedisInstance)> = {
            let registry = lock(&self.redis.registry);
            registry.instances.iter().filter(|(_, e)| e.service == service).map(|(i, e)| (*i, e.clone())).collect()
        };
        members.into_iter().filter(|(id, e)| e.should_run() && self.redis.alive(*id)).map(|(_, e)| e).collect()
    }

    /// Gives one member exactly the application users `wanted` names: each
    /// set (same password hash, same rules), any other application user
    /// deleted (its connections closed with it), and its config file
    /// rewritten to match.
    async fn redis_apply_logins(
        &self,
        entry: &RedisInstance,
        service: &RedisService,
        wanted: &Wanted,
    ) -> Result<(), ActionError> {
        let admin = self.redis_password(service, server::ADMIN_USER)?;
        let current_password = self.redis_password(service, &service.login)?;
        let mut c = self.redis_admin(entry, ACL_TIMEOUT).await?;
        let mut keep = vec![wanted.current.0.as_str()];
        for (login, hash) in std::iter::once(&wanted.current).chain(wanted.previous.iter()) {
            let mut setuser = redis::cmd("ACL");
            setuser.arg("SETUSER").arg(login).arg("reset").arg("on").arg(format!("#{hash}"));
            for rule in server::APP_RULES.split_whitespace() {
                setuser.arg(rule);
            }
            server::run::<()>(&mut c, &setuser, ACL_TIMEOUT).await?;
            keep.push(login);
        }
        for login in server::APP_LOGINS.iter().filter(|l| !keep.contains(l)) {
            server::run::<i64>(&mut c, redis::cmd("ACL").arg("DELUSER").arg(*login), ACL_TIMEOUT).await?;
        }
        server::write_config(
            &self.run_as,
            &server::ServerConfig {
                port: entry.port,
                dir: &entry.dir,
                admin_password: &admin,
                app: (&wanted.current.0, &current_password),
                app_previous: wanted.previous.as_ref().map(|(l, h)| (l.as_str(), h.as_str())),
            },
        )
    }

    /// A member (re)started or adopted has the users the registry names.
    /// Under the service lock: a rotation or revocation running meanwhile
    /// applies to the members that ran when it started, then records; a
    /// member started in between gets what it recorded, here.
    pub(super) async fn redis_set_logins(&self, entry: &RedisInstance) -> Result<(), ActionError> {
        let guard = self.service_lock(entry.service);
        let _held = guard.lock().await;
        let service = self.redis.service(entry.service)?;
        let wanted = self.redis_wanted(&service)?;
        self.redis_apply_logins(entry, &service, &wanted).await
    }

    /// Applies `wanted` on every running member; the first that refuses or
    /// does not answer fails the action (the engine tries again).
    async fn redis_apply_everywhere(
        &self,
        service_id: ServiceId,
        service: &RedisService,
        wanted: &Wanted,
    ) -> Result<usize, ActionError> {
        let members = self.redis_running_members(service_id);
        for member in &members {
            self.redis_apply_logins(member, service, wanted).await.map_err(|e| {
                ActionError::Unavailable(format!("cannot set the application users on port {}: {e}", member.port))
            })?;
        }
        Ok(members.len())
    }

    /// The `RotateCredentials` action of a Redis service.
    pub(super) async fn redis_rotate_credentials(&self, service_id: ServiceId, action: ActionId) -> Done {
        let guard = self.service_lock(service_id);
        let _held = guard.lock().await;
        let mut service = self.redis.service(service_id)?;
        if service.rotation_action == Some(action) {
            // A repeat after a crash: the registry switched; make sure every
            // member has.
            let wanted = self.redis_wanted(&service)?;
            self.redis_apply_everywhere(service_id, &service, &wanted).await?;
            return Ok(Some(format!("already rotated: the URL logs in as {}", service.login)));
        }
        if let Some(previous) = &service.previous {
            return Err(invalid(format!(
                "the previous rotation of {} is still in its overlap: {} is not revoked yet; rotate again after",
                service.name, previous.login
            )));
        }
        if service.primary.is_none() {
            return Err(ActionError::Unavailable(format!("Redis service {} has no primary yet", service.name)));
        }
        let old_login = service.login.clone();
        let new_login = server::APP_LOGINS.iter().find(|l| **l != old_login).copied().unwrap_or(server::APP_USER);
        let password = random_password()?;
        let old_password = self.redis_password(&service, &old_login)?;
        let wanted = Wanted {
            current: (new_login.to_string(), server::sha256_hex(&password)),
            previous: Some((old_login.clone(), server::sha256_hex(&old_password))),
        };
        // The new user on every member before the URL names it.
        let mut updated = service.clone();
        updated.login = new_login.to_string();
        updated.app_password = self.key.seal_str(&super::context(&service.name, new_login), &password);
        updated.previous = Some(RedisPrevious {
            login: old_login.clone(),
            hash: wanted.previous.as_ref().map(|(_, h)| h.clone()).unwrap_or_default(),
            since_ms: now_ms(),
        });
        updated.rotated_at_ms = now_ms();
        updated.rotation_action = Some(action);
        let members = self.redis_apply_everywhere(service_id, &updated, &wanted).await?;
        {
            let mut registry = lock(&self.redis.registry);
            let Some(stored) = registry.services.get_mut(&service_id) else {
                return Err(invalid(format!("unknown Redis service {service_id}")));
            };
            // The primary may have changed meanwhile (a failover): keep it.
            let primary = stored.primary;
            *stored = RedisService { primary, ..updated };
            service = stored.clone();
        }
        self.redis.save()?;
        tracing::info!(service = %service.name, login = new_login, old = %old_login, members, "Redis credentials rotated");
        Ok(Some(format!(
            "the URL now logs in as {new_login} (set on {members} members); {old_login} keeps working until the \
             overlap ends"
        )))
    }

    /// The `RevokePreviousCredentials` action of a Redis service: the old
    /// user deleted on every member (its connections closed), then
    /// forgotten. With none left (a repeat after a crash) it changes
    /// nothing.
    pub(super) async fn redis_revoke_previous(&self, service_id: ServiceId) -> Done {
        let guard = self.service_lock(service_id);
        let _held = guard.lock().await;
        let service = self.redis.service(service_id)?;
        let Some(previous) = service.previous.clone() else {
            return Ok(Some("no previous credential left to revoke".into()));
        };
        let mut updated = service.clone();
        updated.previous = None;
        let wanted = self.redis_wanted(&updated)?;
        let members = self.redis_apply_everywhere(service_id, &updated, &wanted).await?;
        {
            let mut registry = lock(&self.redis.registry);
            if let Some(stored) = registry.services.get_mut(&service_id) {
                stored.previous = None;
            }
        }
        self.redis.save()?;
        let login = &previous.login;
        tracing::info!(service = %service.name, %login, members, "previous Redis credential revoked");
        Ok(Some(format!("{login} revoked on {members} members: it no longer logs in")))
    }

    /// The Redis rotation still in its overlap for the service named
    /// `name`, as a sentence, if any.
    pub(in crate::local) fn redis_rotation_in_progress(&self, name: &str) -> Option<String> {
        let service = self.redis.find_service(name)?;
        let previous = service.previous.as_ref()?;
        Some(format!(
            "a credential rotation of {name} is in progress: {} still logs in until its overlap ends",
            previous.login
        ))
    }
}
