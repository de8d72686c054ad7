//! Major-version upgrades (issue 17 item 4): a service moved onto a newer
//! major of its engine with its URL unchanged, and the way back.
//!
//! An upgrade is a resize (`crate::rollouts`, a rollout of one service)
//! onto an image derived from the service's own: the same configuration,
//! settings and package manifest, the new engine version. The move is the
//! rollout's, step by step: a new member from the new image (the provider
//! builds a member of another major than the primary by logical
//! replication), a planned switchover (the provider's graceful fence waits
//! until that member has replayed everything, copies the sequences, then
//! stops the old primary; its promotion drops the subscription and points
//! the router at it), the old member retired. A restarted control plane
//! resumes the rollout from the fleet as it is, so no cut-over is repeated.
//!
//! A service with followers or read replicas moves the same way, in the
//! order the new major allows (`crate::rollouts::moves`): before the
//! cut-over the provider can build one member of the new major only (the
//! logical subscriber; a physical copy needs a cluster of that major to
//! copy), so the move builds it, retires the old followers and read
//! replicas (they cannot follow a primary of another major), then
//! switches over; afterwards reconcile builds the plan's followers and the
//! read replicas from the new primary (the local provider restores them
//! from its first backup with pgBackRest). Reconcile builds nothing of the
//! new major before the cut-over ([`Engine::awaits_major_cut_over`]).
//!
//! The image it came from is kept on the service (`upgraded_from`, in the
//! same commit as the rollout): `RollbackUpgrade` moves it back onto that
//! image the same way (the provider copies the data back by logical
//! replication from the new major), and forgets it.

use crate::api::{CommandError, Outputs, Reply};
use crate::Engine;
use drover_model::{EventSubject, Image, Role};

/// An image's `configuration` key that keeps new services off it
/// (`Images::latest_for`): an upgrade's target image serves the services
/// moved onto it, and a new service is still created on the newest image an
/// operator registered for new services.
pub const NEW_SERVICES_KEY: &str = "new_services";

/// The major of an engine version: its first number (`"15.14"` → 15,
/// `"17"` → 17, `"postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"`,
/// what `postgres --version` prints, → 15); None without a number.
pub fn major_of(version: &str) -> Option<u32> {
    let start = version.find(|c: char| c.is_ascii_digit())?;
    let rest = &version[start..];
    let digits = &rest[..rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len())];
    digits.parse().ok().filter(|m| *m > 0)
}

impl Engine {
    /// The major of image `image` (None: its version has no number).
    pub(crate) fn image_major(&self, image: u32) -> Option<u32> {
        self.images.list.get(image as usize).and_then(|i| major_of(&i.version))
    }

    /// Whether two images are of different majors (both known).
    pub(crate) fn crosses_major(&self, from: u32, to: u32) -> bool {
        // The common case, without parsing a version (reconcile asks for
        // every service it looks at).
        if from == to {
            return false;
        }
        matches!((self.image_major(from), self.image_major(to)), (Some(a), Some(b)) if a != b)
    }

    /// Whether service `sslot` is being moved onto another major and its
    /// writable primary is still on the old one: until the cut-over, the
    /// one member of the new major is the move's logical subscriber, and
    /// no follower of the service's (new) image can be built.
    pub(crate) fn awaits_major_cut_over(&self, sslot: u32) -> bool {
        let Some(s) = self.services.get(sslot) else { return false };
        self.current_primary(sslot)
            .and_then(|p| self.instances.get(p))
            .is_some_and(|p| self.crosses_major(p.image, s.image))
    }

    /// A move onto another major that ends before its cut-over (its member
    /// failed, or a person aborted its rollout) leaves the service on the
    /// major its primary runs: its image goes back to the primary's (so
    /// reconcile builds its followers again: nothing of the new major can
    /// be built before a cut-over that will not come), the way back that an
    /// upgrade offered is forgotten (an abandoned rollback keeps offering
    /// the image it was moving back to), and reconcile retires the new
    /// major's subscriber ([`Engine::stray_of_another_major`]). Nothing
    /// when the service is not waiting for such a cut-over.
    pub(crate) fn abandon_major_move(&mut self, sslot: Option<u32>, now: i64, out: &mut Outputs) {
        let Some(sslot) = sslot else { return };
        if !self.awaits_major_cut_over(sslot) {
            return;
        }
        let Some(primary_image) = self.current_primary(sslot).and_then(|p| self.instances.get(p)).map(|p| p.image)
        else {
            return;
        };
        let Some(s) = self.services.get(sslot) else { return };
        let target = s.image;
        let back = match (self.image_major(primary_image), self.image_major(target)) {
            // A rollback (the primary on the newer major) that did not
            // happen: the way back is still there.
            (Some(from), Some(to)) if from > to => Some(Box::new(self.images.id(target))),
            _ => None,
        };
        let cause = format!(
            "the move onto image {} ended before its cut-over: the service stays on image {} (its primary's), \
             the member of the other major is retired",
            self.images.id(target),
            self.images.id(primary_image)
        );
        if let Some(s) = self.services.get_mut(sslot) {
            s.image = primary_image;
            s.upgraded_from = back;
        }
        out.changes.events.push(self.event(now, EventSubject::Service, Some(sslot), None, None, None, cause));
        self.service_changed(sslot, out);
        self.mark_dirty(sslot);
    }

    /// A member of service `sslot` of another major than its primary while
    /// the service is on its primary's major (not waiting for a cut-over):
    /// an abandoned upgrade's subscriber, or an old member a finished move
    /// left. None when the primary is unknown.
    pub(crate) fn stray_of_another_major(&self, sslot: u32) -> Option<u32> {
        let s = self.services.get(sslot)?;
        let p = self.current_primary(sslot).and_then(|p| self.instances.get(p))?;
        // Cheap first: a member on another image than the primary.
        let stray = s.instances.iter().copied().find(|&i| {
            self.instances.get(i).is_some_and(|x| {
                x.image != p.image
                    && x.role == Role::Follower
                    && x.state.is_member()
                    && self.crosses_major(x.image, p.image)
            })
        })?;
        (!self.crosses_major(p.image, s.image)).then_some(stray)
    }

    /// Moves `name` onto major `version` of its engine (see the module).
    /// Refused (409) for an engine without major upgrades, a service on
    /// that major or a newer one, or one a rollout is moving; invalid for
    /// a version that is not a major.
    pub(crate) fn upgrade_service(
        &mut self,
        name: &str,
        version: &str,
        now: i64,
        out: &mut Outputs,
    ) -> Result<Reply, CommandError> {
        let sslot = self.live_service(name)?;
        let s = self.services.get(sslot).ok_or_else(|| CommandError::NotFound(format!("no service named {name:?}")))?;
        if !self.config.policies.get(s.engine).upgrades_major_versions() {
            return Err(CommandError::Conflict(format!("{} services have no major-version upgrade", s.engine)));
        }
        let wanted =
            major_of(version).filter(|_| version.chars().all(|c| c.is_ascii_digit() || c == '.')).ok_or_else(|| {
                CommandError::Invalid(format!("{version:?} is not a major version (give one such as \"17\")"))
            })?;
        let current = self
            .images
            .list
            .get(s.image as usize)
            .cloned()
            .ok_or_else(|| CommandError::Conflict(format!("{name:?} has no known image")))?;
        let have = major_of(&current.version).unwrap_or(0);
        if wanted <= have {
            return Err(CommandError::Conflict(format!(
                "{name:?} runs {} {} already: an upgrade goes to a newer major (the way back is \
                 POST /v1/services/{name}/upgrade/rollback)",
                s.engine, current.version
            )));
        }
        if let Some(other) = self.rollouts.claimed.get(&s.id) {
            return Err(CommandError::Conflict(format!(
                "rollout {other} is moving {name:?}: pause or abort it first, or wait for it"
            )));
        }
        let mut configuration = current.configuration.clone();
        configuration.insert(NEW_SERVICES_KEY.to_string(), "no".to_string());
        let mut target =
            Image::new(current.engine, version, configuration, current.packages.clone(), current.created_at);
        target.settings = current.settings.clone();
        target.manifest = current.manifest.clone();
        target.sources = current.sources.clone();
        target.id = target.content_id();
        target.created_at = drover_model::Timestamp(now);
        let (i, new) = self.images.insert(target);
        let image = self.images.list[i as usize].clone();
        let reply = self.resize_service(name, image.id.clone(), now, out)?;
        if new {
            out.changes.images.push(image);
        }
        if let Some(s) = self.services.get_mut(sslot) {
            s.upgraded_from = Some(Box::new(current.id));
        }
        self.service_changed(sslot, out);
        Ok(reply)
    }

    /// Moves an upgraded service back onto the image it was upgraded from
    /// (409 when it was not upgraded, or a rollout is moving it).
    pub(crate) fn rollback_upgrade(&mut self, name: &str, now: i64, out: &mut Outputs) -> Result<Reply, CommandError> {
        let sslot = self.live_service(name)?;
        let s = self.services.get(sslot).ok_or_else(|| CommandError::NotFound(format!("no service named {name:?}")))?;
        let from = s.upgraded_from.as_deref().cloned().ok_or_else(|| {
            CommandError::Conflict(format!(
                "{name:?} was not upgraded (or was rolled back already): nothing to roll back"
            ))
        })?;
        let reply = self.resize_service(name, from, now, out)?;
        if let Some(s) = self.services.get_mut(sslot) {
            s.upgraded_from = None;
        }
        self.service_changed(sslot, out);
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::major_of;

    #[test]
    fn the_major_is_the_leading_number_of_a_version() {
        assert_eq!(major_of("15.14"), Some(15));
        assert_eq!(major_of("17"), Some(17));
        assert_eq!(major_of("17.10 (Debian)"), Some(17));
        assert_eq!(major_of("postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"), Some(15));
        assert_eq!(major_of("15-sim"), Some(15));
        assert_eq!(major_of("latest"), None);
        assert_eq!(major_of(""), None);
        assert_eq!(major_of("0"), None);
    }
}
