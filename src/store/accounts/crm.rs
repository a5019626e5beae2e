//! [`CrmStore`] on Postgres: HubSpot contact events stored once in `account_event` and applied
//! to the customers linked to the contact (`metadata.hubspot_contact_id`), and the
//! `crm_link_queue` of contacts no customer is linked to yet, each linked by phone (else email)
//! once the CRM reports it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use iace_actors::accounts::{
    CrmChange, CrmContactFacts, CrmEvent, CrmField, CrmLink, CrmLinkJob, EventsStored,
};
use iace_actors::machine::{OrganizationId, PhoneNumber};
use iace_actors::ports::accounts::CrmStore;
use iace_actors::ports::StoreResult;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use super::events::{insert_event, set_outcome, APPLIED, NOT_ACTED_ON, NO_MATCH};
use crate::store::{is_unique_violation, unavailable, PgStore};

/// A contact event in a linked portal whose contact no customer is linked to (yet).
const UNLINKED: &str = "unlinked_contact";
/// Outcome of an unlinked contact's events once the contact is linked through the CRM.
const LINKED: &str = "applied: linked through the CRM";
const INVALID_EMAIL: &str = "ignored: invalid email";
const INVALID_PHONE: &str = "ignored: invalid phone";
const PHONE_TAKEN: &str = "ignored: phone taken";
const PHONE_REQUIRED: &str = "ignored: a customer needs a phone";

/// A HubSpot email value as stored: trimmed, lower-case, `None` when cleared; `Err` when it is
/// not an address.
fn crm_email(value: &str) -> Result<Option<String>, ()> {
    let email = value.trim().to_lowercase();
    if email.is_empty() {
        return Ok(None);
    }
    let ok = email.chars().count() <= 254
        && email.matches('@').count() == 1
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty());
    if ok {
        Ok(Some(email))
    } else {
        Err(())
    }
}

/// Applies a HubSpot event's change; the organization it concerned and the outcome.
async fn apply_crm(
    conn: &mut PgConnection,
    event: &CrmEvent,
    now: DateTime<Utc>,
) -> StoreResult<(Option<OrganizationId>, &'static str)> {
    let org: Option<OrganizationId> =
        sqlx::query_scalar("SELECT id FROM organization WHERE hubspot_portal_id = $1")
            .bind(event.portal_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(unavailable)?;
    let Some(change) = &event.change else {
        return Ok((org, NOT_ACTED_ON));
    };
    let Some(org) = org else {
        return Ok((None, NO_MATCH));
    };
    let contact = match change {
        CrmChange::Property { contact_id, .. } | CrmChange::Deleted { contact_id } => contact_id,
    };
    // `@>` so that the GIN index on metadata finds the customer.
    let customers: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM customer WHERE organization_id = $1 \
           AND metadata @> jsonb_build_object('hubspot_contact_id', $2::text) \
         ORDER BY id FOR UPDATE",
    )
    .bind(org)
    .bind(contact)
    .fetch_all(&mut *conn)
    .await
    .map_err(unavailable)?;
    if customers.is_empty() {
        return Ok((Some(org), UNLINKED));
    }
    let outcome = match change {
        CrmChange::Deleted { .. } => {
            sqlx::query(
                "UPDATE customer SET metadata = metadata - 'hubspot_contact_id', updated_at = $2 \
                 WHERE id = ANY($1)",
            )
            .bind(&customers)
            .bind(now)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
            APPLIED
        }
        CrmChange::Property {
            field: CrmField::Email,
            value,
            ..
        } => match crm_email(value) {
            Err(()) => INVALID_EMAIL,
            Ok(email) => {
                sqlx::query("UPDATE customer SET email = $2, updated_at = $3 WHERE id = ANY($1)")
                    .bind(&customers)
                    .bind(email)
                    .bind(now)
                    .execute(&mut *conn)
                    .await
                    .map_err(unavailable)?;
                APPLIED
            }
        },
        CrmChange::Property {
            field: CrmField::Phone,
            value,
            ..
        } => {
            let value = value.trim();
            if value.is_empty() {
                PHONE_REQUIRED
            } else if let Ok(phone) = PhoneNumber::parse(value) {
                // A savepoint: a phone another customer has must not abort the batch.
                let mut sp = conn.begin().await.map_err(unavailable)?;
                let set = sqlx::query(
                    "UPDATE customer SET phone = $2, updated_at = $3 WHERE id = ANY($1)",
                )
                .bind(&customers)
                .bind(phone.as_str())
                .bind(now)
                .execute(&mut *sp)
                .await;
                match set {
                    Ok(_) => {
                        sp.commit().await.map_err(unavailable)?;
                        APPLIED
                    }
                    Err(e) if is_unique_violation(&e) => {
                        sp.rollback().await.map_err(unavailable)?;
                        PHONE_TAKEN
                    }
                    Err(e) => return Err(unavailable(e)),
                }
            } else {
                INVALID_PHONE
            }
        }
        CrmChange::Property {
            field: field @ (CrmField::FirstName | CrmField::LastName),
            value,
            ..
        } => {
            let value = value.trim();
            let first = *field == CrmField::FirstName;
            let key = if first {
                "hubspot_firstname"
            } else {
                "hubspot_lastname"
            };
            // The name is "first last" of the stored parts, with this one replaced.
            sqlx::query(
                "UPDATE customer SET \
                   metadata = CASE WHEN $3::text = '' THEN metadata - $2::text \
                              ELSE metadata || jsonb_build_object($2::text, $3::text) END, \
                   name = NULLIF(btrim(concat_ws(' ', \
                            COALESCE($4::text, metadata->>'hubspot_firstname'), \
                            COALESCE($5::text, metadata->>'hubspot_lastname'))), ''), \
                   updated_at = $6 \
                 WHERE id = ANY($1)",
            )
            .bind(&customers)
            .bind(key)
            .bind(value)
            .bind(first.then_some(value))
            .bind((!first).then_some(value))
            .bind(now)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
            APPLIED
        }
    };
    Ok((Some(org), outcome))
}

#[async_trait]
impl CrmStore for PgStore {
    async fn record_crm_events(
        &self,
        events: &[CrmEvent],
        queue_links: bool,
        now: DateTime<Utc>,
    ) -> StoreResult<EventsStored> {
        const VENDOR: &str = "hubspot";
        let mut stored = EventsStored::default();
        if events.is_empty() {
            return Ok(stored);
        }
        let mut tx = self.begin().await.map_err(unavailable)?;
        for event in events {
            if !insert_event(
                &mut tx,
                VENDOR,
                &event.event_id,
                &event.event_type,
                &event.payload,
                now,
            )
            .await?
            {
                stored.duplicates += 1;
                continue;
            }
            stored.new += 1;
            let (org, outcome) = apply_crm(&mut tx, event, now).await?;
            if outcome == UNLINKED {
                if let Some(
                    CrmChange::Property { contact_id, .. } | CrmChange::Deleted { contact_id },
                ) = &event.change
                {
                    let key = (event.portal_id, contact_id.clone());
                    if !stored.unlinked.contains(&key) {
                        stored.unlinked.push(key);
                    }
                }
            }
            set_outcome(&mut tx, VENDOR, &event.event_id, org, outcome).await?;
        }
        if queue_links {
            for (portal, contact) in &stored.unlinked {
                sqlx::query(
                    "INSERT INTO crm_link_queue (portal_id, contact_id, enqueued_at, next_attempt_at) \
                     VALUES ($1, $2, $3, $3) \
                     ON CONFLICT (portal_id, contact_id) DO UPDATE \
                       SET next_attempt_at = LEAST(crm_link_queue.next_attempt_at, $3)",
                )
                .bind(portal)
                .bind(contact)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            }
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(stored)
    }

    async fn claim_crm_links(
        &self,
        now: DateTime<Utc>,
        lease: std::time::Duration,
        limit: u32,
    ) -> StoreResult<Vec<CrmLinkJob>> {
        // The lease's end as stored is the claim's fencing token (see CrmLinkJob).
        let rows: Vec<(i64, String, i32, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
            "WITH due AS ( \
               SELECT portal_id, contact_id FROM crm_link_queue WHERE next_attempt_at <= $1 \
                ORDER BY next_attempt_at, portal_id, contact_id LIMIT $3 FOR UPDATE SKIP LOCKED) \
             UPDATE crm_link_queue q SET next_attempt_at = $1 + make_interval(secs => $2) \
               FROM due WHERE q.portal_id = due.portal_id AND q.contact_id = due.contact_id \
             RETURNING q.portal_id, q.contact_id, q.attempts, q.enqueued_at, q.next_attempt_at",
        )
        .bind(now)
        .bind(lease.as_secs_f64())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let mut jobs = rows;
        jobs.sort_by(|a, b| (a.3, a.0, &a.1).cmp(&(b.3, b.0, &b.1)));
        Ok(jobs
            .into_iter()
            .map(
                |(portal_id, contact_id, attempts, _, lease_until)| CrmLinkJob {
                    portal_id,
                    contact_id,
                    attempts: u32::try_from(attempts).unwrap_or(0),
                    lease_until,
                },
            )
            .collect())
    }

    async fn retry_crm_link(
        &self,
        job: &CrmLinkJob,
        at: DateTime<Utc>,
        error: &str,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE crm_link_queue SET attempts = attempts + 1, next_attempt_at = $3, \
               last_error = $4 \
             WHERE portal_id = $1 AND contact_id = $2 AND next_attempt_at = $5",
        )
        .bind(job.portal_id)
        .bind(&job.contact_id)
        .bind(at)
        .bind(error)
        .bind(job.lease_until)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn finish_crm_link(&self, job: &CrmLinkJob) -> StoreResult<()> {
        sqlx::query(
            "DELETE FROM crm_link_queue \
             WHERE portal_id = $1 AND contact_id = $2 AND next_attempt_at = $3",
        )
        .bind(job.portal_id)
        .bind(&job.contact_id)
        .bind(job.lease_until)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn link_crm_contact(
        &self,
        portal_id: i64,
        contact: &CrmContactFacts,
        now: DateTime<Utc>,
    ) -> StoreResult<CrmLink> {
        let mut tx = self.begin().await.map_err(unavailable)?;
        let org: Option<OrganizationId> =
            sqlx::query_scalar("SELECT id FROM organization WHERE hubspot_portal_id = $1")
                .bind(portal_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(unavailable)?;
        let Some(org) = org else {
            return Ok(CrmLink::NoOrganization);
        };
        let linked: Option<Uuid> = sqlx::query_scalar(
            "SELECT id FROM customer WHERE organization_id = $1 \
               AND metadata @> jsonb_build_object('hubspot_contact_id', $2::text) LIMIT 1",
        )
        .bind(org)
        .bind(&contact.contact_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?;
        if let Some(customer) = linked {
            return Ok(CrmLink::AlreadyLinked { customer });
        }
        let phone = contact
            .phone
            .as_deref()
            .and_then(|p| PhoneNumber::parse(p.trim()).ok());
        let email = contact
            .email
            .as_deref()
            .and_then(|e| crm_email(e).ok().flatten());
        let mut candidates: Vec<Uuid> = Vec::new();
        if let Some(phone) = &phone {
            candidates = sqlx::query_scalar(
                "SELECT id FROM customer WHERE organization_id = $1 AND phone = $2 \
                   AND NOT metadata ? 'hubspot_contact_id' ORDER BY id FOR UPDATE",
            )
            .bind(org)
            .bind(phone.as_str())
            .fetch_all(&mut *tx)
            .await
            .map_err(unavailable)?;
        }
        if candidates.is_empty() {
            if let Some(email) = &email {
                candidates = sqlx::query_scalar(
                    "SELECT id FROM customer WHERE organization_id = $1 AND lower(email) = $2 \
                       AND NOT metadata ? 'hubspot_contact_id' ORDER BY id FOR UPDATE",
                )
                .bind(org)
                .bind(email)
                .fetch_all(&mut *tx)
                .await
                .map_err(unavailable)?;
            }
        }
        let customer = match candidates.as_slice() {
            [] => return Ok(CrmLink::NoCustomer),
            [one] => *one,
            _ => return Ok(CrmLink::Ambiguous),
        };
        let clean = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let (first, last) = (clean(&contact.firstname), clean(&contact.lastname));
        let mut names = serde_json::Map::new();
        names.insert(
            "hubspot_contact_id".into(),
            serde_json::Value::String(contact.contact_id.clone()),
        );
        if let Some(f) = &first {
            names.insert("hubspot_firstname".into(), f.clone().into());
        }
        if let Some(l) = &last {
            names.insert("hubspot_lastname".into(), l.clone().into());
        }
        let name = [first, last]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        sqlx::query(
            "UPDATE customer SET metadata = metadata || $2, \
               email = COALESCE($3, email), name = COALESCE(NULLIF($4, ''), name), \
               updated_at = $5 WHERE id = $1",
        )
        .bind(customer)
        .bind(serde_json::Value::Object(names))
        .bind(email)
        .bind(name)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        sqlx::query(
            "UPDATE account_event SET outcome = $4 \
             WHERE vendor = 'hubspot' AND organization_id = $1 AND outcome = $2 \
               AND payload->>'objectId' = $3",
        )
        .bind(org)
        .bind(UNLINKED)
        .bind(&contact.contact_id)
        .bind(LINKED)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(CrmLink::Linked { customer })
    }
}

#[cfg(test)]
mod tests {
    use super::crm_email;

    #[test]
    fn crm_emails_are_trimmed_lowered_and_checked() {
        assert_eq!(
            crm_email("  Ana@Example.COM "),
            Ok(Some("ana@example.com".into()))
        );
        assert_eq!(crm_email("   "), Ok(None));
        assert_eq!(crm_email("a@b"), Ok(Some("a@b".into())));
        for bad in ["ana", "@example.com", "ana@", "a@b@c"] {
            assert_eq!(crm_email(bad), Err(()), "{bad}");
        }
        let long = format!("{}@example.com", "a".repeat(243));
        assert_eq!(long.len(), 255);
        assert_eq!(crm_email(&long), Err(()));
        assert!(crm_email(&long[1..]).unwrap().is_some());
    }
}
