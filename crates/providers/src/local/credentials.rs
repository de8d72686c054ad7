//! Credential rotation without downtime (issue 10, item 8).
//!
//! A service has two login roles, `app_a` and `app_b`, both members of the
//! NOLOGIN owner role `app` (and acting as it: `ALTER ROLE … SET role`),
//! so whatever one creates the other reaches. The URL names one of them.
//! A rotation ([`Inner::rotate_credentials`], the `RotateCredentials`
//! action):
//!
//! 1. gives the other role LOGIN and the SCRAM verifier of a new random
//!    password, on the primary (replicated to the followers);
//! 2. rewrites the router's auth_file with both verifiers and RELOADs it
//!    (before the URL changes: a client that reads the new URL at once is
//!    let in);
//! 3. records in the registry, durably, the new role and its sealed
//!    password as the URL's, and the old one as `previous`.
//!
//! Clients holding the old URL keep connecting until the engine ends the
//! overlap (it decides when, and when to rotate: see the engine's
//! `credentials` module) with a `RevokePreviousCredentials` action
//! ([`Inner::revoke_previous`]): NOLOGIN and no password on the primary, its
//! sessions ended, and the router's auth_file without it. Every step is
//! idempotent and its state lives in the registry, so a control plane killed
//! with -9 anywhere in between finishes when the engine dispatches the
//! action again; a revocation with no `previous` left changes nothing.

use super::actions::{now_ms, random_password};
use super::postgres::{self, APP_LOGINS};
use super::registry::{password_context, PreviousLogin, ServiceEntry};
use super::{lock, Inner};
use crate::ActionError;
use drover_model::{ActionId, ServiceId};
use std::time::Duration;

const SQL_TIMEOUT: Duration = Duration::from_secs(10);

impl Inner {
    /// Steps 1–3 above; the old credential stays valid for the overlap.
    pub(super) async fn rotate_credentials(
        &self,
        service_id: ServiceId,
        action: ActionId,
    ) -> Result<Option<String>, ActionError> {
        let guard = self.service_lock(service_id);
        let _held = guard.lock().await;
        let mut service = self.service(service_id)?;
        if service.previous.as_ref().is_some_and(is_leftover) {
            // A login left in its overlap by a control plane from before
            // the engine scheduled revocations: nobody will revoke it, and
            // it would block every rotation. Revoked first.
            self.revoke_login(service_id, &service).await?;
            service = self.service(service_id)?;
        }
        if service.rotation_action == Some(action) {
            // A repeat after a crash: the registry has switched; make sure
            // the router has too.
            let reads = lock(&self.registry).read_routes(service_id);
            self.routers.reload_logins(service_id, &service, &reads).await?;
            return Ok(Some(format!("already rotated: the URL logs in as {}", service.login)));
        }
        if let Some(previous) = &service.previous {
            // The engine opens no rotation before it revoked the last one;
            // the provider still never cuts an overlap short on its own.
            return Err(ActionError::InvalidState(format!(
                "the previous rotation of {} is still in its overlap: {} is not revoked yet; rotate again after",
                service.name, previous.login
            )));
        }
        let primary = self.current_primary_entry(service_id).ok_or_else(|| {
            ActionError::Unavailable(format!("service {} has no running primary to rotate on", service.name))
        })?;
        let new_login = APP_LOGINS.iter().find(|l| **l != service.login).copied().unwrap_or(APP_LOGINS[0]);
        let password = random_password()?;
        let verifier = postgres::scram_verifier(&password);
        postgres::execute(&primary, &postgres::set_login_sql(new_login, &verifier), SQL_TIMEOUT).await?;
        let mut updated = service.clone();
        updated.previous = Some(PreviousLogin {
            login: service.login.clone(),
            verifier: service.verifier.clone(),
            since_ms: now_ms(),
        });
        updated.password = self.key.seal_str(&password_context(&service.name, new_login), &password);
        updated.login = new_login.to_string();
        updated.verifier = verifier;
        updated.rotated_at_ms = now_ms();
        updated.rotation_action = Some(action);
        // The router accepts both before the URL names the new one: a
        // client that reads the new URL at once is let in.
        let reads = lock(&self.registry).read_routes(service_id);
        self.routers.reload_logins(service_id, &updated, &reads).await?;
        {
            let mut registry = lock(&self.registry);
            let Some(stored) = registry.services.get_mut(&service_id) else {
                return Err(ActionError::InvalidState(format!("unknown service {service_id}")));
            };
            // Under the service lock nothing else changed the credential;
            // the primary may have changed (a failover): keep the stored one.
            let (primary, sync) = (stored.primary, stored.sync);
            *stored = ServiceEntry { primary, sync, ..updated };
        }
        self.save()?;
        tracing::info!(service = %service.name, login = new_login, old = %service.login, "credentials rotated");
        Ok(Some(format!("the URL now logs in as {new_login}; {} keeps working until the overlap ends", service.login)))
    }

    /// The rotation still in its overlap for the service named `name`, as a
    /// sentence, if any.
    pub(super) fn rotation_in_progress(&self, name: &str) -> Option<String> {
        let registry = lock(&self.registry);
        let Some(service) = registry.services.values().find(|s| s.name == name) else {
            drop(registry);
            return self.redis_rotation_in_progress(name);
        };
        // A leftover from an older data dir is revoked by the next rotation.
        let previous = service.previous.as_ref().filter(|p| !is_leftover(p))?;
        Some(format!(
            "a credential rotation of {name} is in progress: {} still logs in until its overlap ends",
            previous.login
        ))
    }

    /// The `RevokePreviousCredentials` action: revokes the previous login
    /// role of a service (NOLOGIN without a password on the primary, its
    /// sessions ended, forgotten in the registry, dropped from the router's
    /// auth_file). With none left (a repeat after a crash) it changes nothing.
    pub(super) async fn revoke_previous(&self, service_id: ServiceId) -> Result<Option<String>, ActionError> {
        let guard = self.service_lock(service_id);
        let _held = guard.lock().await;
        let service = self.service(service_id)?;
        self.revoke_login(service_id, &service).await
    }

    /// Revokes the `previous` login of `service` (the caller holds the
    /// service lock).
    async fn revoke_login(&self, service_id: ServiceId, service: &ServiceEntry) -> Result<Option<String>, ActionError> {
        let Some(previous) = service.previous.clone() else {
            return Ok(Some("no previous credential left to revoke".into()));
        };
        let primary = self.current_primary_entry(service_id).ok_or_else(|| {
            ActionError::Unavailable(format!("service {} has no running primary to revoke on", service.name))
        })?;
        let login = &previous.login;
        postgres::execute(&primary, &format!("ALTER ROLE {login} NOLOGIN PASSWORD NULL"), SQL_TIMEOUT).await?;
        postgres::execute(
            &primary,
            &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{login}'"),
            SQL_TIMEOUT,
        )
        .await?;
        let updated = {
            let mut registry = lock(&self.registry);
            let Some(stored) = registry.services.get_mut(&service_id) else { return Ok(None) };
            stored.previous = None;
            stored.clone()
        };
        self.save()?;
        let reads = lock(&self.registry).read_routes(service_id);
        self.routers.reload_logins(service_id, &updated, &reads).await?;
        tracing::info!(service = %service.name, %login, "previous credential revoked");
        Ok(Some(format!("{login} revoked: it no longer logs in")))
    }
}

/// A `previous` login with no time (`since_ms` 0) was left by a control
/// plane from before the engine scheduled revocations (its registry had no
/// such field): the engine holds no overlap for it, so nothing would ever
/// revoke it.
fn is_leftover(previous: &PreviousLogin) -> bool {
    previous.since_ms == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_previous_login_from_an_older_registry_is_a_leftover_a_fresh_one_is_not() {
        let old: PreviousLogin = serde_json::from_str(r#"{"login":"app_a","verifier":"SCRAM-SHA-256$x"}"#).unwrap();
        assert!(is_leftover(&old), "no since_ms: written before the engine scheduled revocations");
        let fresh = PreviousLogin { login: "app_a".into(), verifier: String::new(), since_ms: now_ms() };
        assert!(!is_leftover(&fresh));
    }
}
