//! The status site's rows in `oncall.db`: incidents (one JSON body each,
//! rewritten whole on every update inside one transaction) and each
//! component's samples per day.

use crate::oncall::{OncallStore, OncallStoreError};
use drover_model::{IncidentId, Timestamp};
use drover_oncall::lifecycle::Component;
use drover_oncall::status::{ComponentState, Incident, UptimeDay};
use rusqlite::{params, OptionalExtension};

impl OncallStore {
    /// Stores a new incident, or its new state after an update.
    pub fn put_incident(&self, incident: &Incident) -> Result<(), OncallStoreError> {
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => return crate::oncall_pg::put_incident(pg, incident),
        };
        let body = serde_json::to_string(incident).map_err(|e| OncallStoreError::Corrupt(e.to_string()))?;
        conn.execute(
            "INSERT INTO incidents (id, created_at, resolved_at, body) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO UPDATE SET resolved_at = excluded.resolved_at, body = excluded.body",
            params![incident.id.to_string(), incident.created_at.0, incident.resolved_at.map(|t| t.0), body],
        )?;
        Ok(())
    }

    /// Reads an incident, changes it with `f` and stores it, in one
    /// transaction (two people posting at once each get their own update).
    pub fn update_incident<R: Send + 'static>(
        &self,
        id: IncidentId,
        f: impl FnOnce(&mut Incident) -> R + Send + 'static,
    ) -> Result<Option<(Incident, R)>, OncallStoreError> {
        let mut conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => return crate::oncall_pg::update_incident(pg, id, f),
        };
        let tx = conn.transaction()?;
        let body: Option<String> = tx
            .query_row("SELECT body FROM incidents WHERE id = ?1", params![id.to_string()], |r| r.get(0))
            .optional()?;
        let Some(body) = body else { return Ok(None) };
        let mut incident: Incident =
            serde_json::from_str(&body).map_err(|e| OncallStoreError::Corrupt(e.to_string()))?;
        let r = f(&mut incident);
        let body = serde_json::to_string(&incident).map_err(|e| OncallStoreError::Corrupt(e.to_string()))?;
        tx.execute(
            "UPDATE incidents SET resolved_at = ?2, body = ?3 WHERE id = ?1",
            params![id.to_string(), incident.resolved_at.map(|t| t.0), body],
        )?;
        tx.commit()?;
        Ok(Some((incident, r)))
    }

    pub fn incident(&self, id: IncidentId) -> Result<Option<Incident>, OncallStoreError> {
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => return crate::oncall_pg::incident(pg, id),
        };
        let body: Option<String> = conn
            .query_row("SELECT body FROM incidents WHERE id = ?1", params![id.to_string()], |r| r.get(0))
            .optional()?;
        body.map(|b| serde_json::from_str(&b).map_err(|e| OncallStoreError::Corrupt(e.to_string()))).transpose()
    }

    /// Incidents still open, and those created since `since`, newest first,
    /// at most `limit`.
    pub fn incidents(&self, since: Timestamp, limit: usize) -> Result<Vec<Incident>, OncallStoreError> {
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => return crate::oncall_pg::incidents(pg, since, limit),
        };
        let mut stmt = conn.prepare(
            "SELECT body FROM incidents WHERE resolved_at IS NULL OR created_at >= ?1
             ORDER BY created_at DESC, id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![since.0, limit as i64], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for body in rows {
            out.push(serde_json::from_str(&body?).map_err(|e| OncallStoreError::Corrupt(e.to_string()))?);
        }
        Ok(out)
    }

    /// Counts one sample of each `(component, state)` into the day `day`.
    pub fn add_component_samples(
        &self,
        day: &str,
        samples: &[(String, ComponentState)],
    ) -> Result<(), OncallStoreError> {
        let mut conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => return crate::oncall_pg::add_component_samples(pg, day, samples),
        };
        let tx = conn.transaction()?;
        for (component, state) in samples {
            let (d, p, m) = match state {
                ComponentState::Operational => (0, 0, 0),
                ComponentState::DegradedPerformance => (1, 0, 0),
                ComponentState::PartialOutage => (0, 1, 0),
                ComponentState::MajorOutage => (0, 0, 1),
            };
            tx.execute(
                "INSERT INTO component_days (component, day, samples, degraded, partial, major)
                 VALUES (?1, ?2, 1, ?3, ?4, ?5)
                 ON CONFLICT (component, day) DO UPDATE SET samples = samples + 1,
                    degraded = degraded + excluded.degraded, partial = partial + excluded.partial,
                    major = major + excluded.major",
                params![component, day, d, p, m],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The days of `component` from `first_day` (`YYYY-MM-DD`) on, oldest first.
    pub fn component_days(&self, component: &str, first_day: &str) -> Result<Vec<UptimeDay>, OncallStoreError> {
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => return crate::oncall_pg::component_days(pg, component, first_day),
        };
        let mut stmt = conn.prepare(
            "SELECT day, samples, degraded, partial, major FROM component_days
             WHERE component = ?1 AND day >= ?2 ORDER BY day",
        )?;
        let rows = stmt.query_map(params![component, first_day], |r| {
            Ok(UptimeDay {
                day: r.get(0)?,
                samples: r.get::<_, i64>(1)? as u64,
                degraded: r.get::<_, i64>(2)? as u64,
                partial: r.get::<_, i64>(3)? as u64,
                major: r.get::<_, i64>(4)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl OncallStore {
    /// Stores a component of the lifecycle board (new or changed).
    pub fn put_component(&self, c: &Component) -> Result<(), OncallStoreError> {
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => return crate::oncall_pg::put_component(pg, c),
        };
        let body = serde_json::to_string(c).map_err(|e| OncallStoreError::Corrupt(e.to_string()))?;
        conn.execute(
            "INSERT INTO components (name, body) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET body = excluded.body",
            params![c.name, body],
        )?;
        Ok(())
    }

    pub fn component(&self, name: &str) -> Result<Option<Component>, OncallStoreError> {
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => return crate::oncall_pg::component(pg, name),
        };
        let body: Option<String> =
            conn.query_row("SELECT body FROM components WHERE name = ?1", params![name], |r| r.get(0)).optional()?;
        body.map(|b| serde_json::from_str(&b).map_err(|e| OncallStoreError::Corrupt(e.to_string()))).transpose()
    }

    /// Every component, by name.
    pub fn components(&self) -> Result<Vec<Component>, OncallStoreError> {
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => return crate::oncall_pg::components(pg),
        };
        let mut stmt = conn.prepare("SELECT body FROM components ORDER BY name")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for body in rows {
            out.push(serde_json::from_str(&body?).map_err(|e| OncallStoreError::Corrupt(e.to_string()))?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_oncall::status::{IncidentSeverity, IncidentStatus};

    #[test]
    fn incidents_and_component_days_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = OncallStore::open(&dir.path().join("oncall.db")).unwrap();
        let now = Timestamp(1_800_000_000_000_000);
        let i = Incident::declare(
            IncidentId::new_at(now.0, 7),
            "Slow writes".into(),
            IncidentSeverity::Minor,
            vec!["PostgreSQL".into()],
            None,
            "alice".into(),
            None,
            None,
            now,
        );
        store.put_incident(&i).unwrap();
        let (after, seq) = store
            .update_incident(i.id, move |x| {
                x.update(IncidentStatus::Resolved, "Fixed.".into(), "bob".into(), Timestamp(now.0 + 10)).map(|u| u.seq)
            })
            .unwrap()
            .unwrap();
        assert_eq!(seq, Ok(2));
        assert_eq!(store.incident(i.id).unwrap().unwrap(), after);
        assert_eq!(after.resolved_at, Some(Timestamp(now.0 + 10)));
        // Resolved and older than `since`: no longer listed.
        assert_eq!(store.incidents(Timestamp(now.0 + 1), 10).unwrap().len(), 0);
        assert_eq!(store.incidents(now, 10).unwrap().len(), 1);
        assert!(store.update_incident(IncidentId::new_at(now.0, 8), |_| ()).unwrap().is_none());

        let samples = [
            ("PostgreSQL".to_string(), ComponentState::Operational),
            ("Redis".to_string(), ComponentState::MajorOutage),
        ];
        store.add_component_samples("2026-12-01", &samples).unwrap();
        store.add_component_samples("2026-12-01", &samples[1..]).unwrap();
        store.add_component_samples("2026-12-02", &samples[..1]).unwrap();
        let redis = store.component_days("Redis", "2026-11-01").unwrap();
        assert_eq!(redis, vec![UptimeDay { day: "2026-12-01".into(), samples: 2, degraded: 0, partial: 0, major: 2 }]);
        let pg = store.component_days("PostgreSQL", "2026-12-02").unwrap();
        assert_eq!(pg.len(), 1);
        assert_eq!(pg[0].uptime(), Some(1.0));
    }
}
