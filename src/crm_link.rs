//! The CRM linker: works the durable queue of HubSpot contacts that events named but no
//! customer is linked to yet (`crm_link_queue`, written with the events in the webhook's
//! transaction). Each contact is looked up through CRM v3 and linked to the customer with its
//! phone, else its email. A failed lookup (HubSpot down, its breaker open, a token problem) is
//! retried with exponential backoff, so a contact is linked eventually even when HubSpot was
//! unreachable when its events arrived or the process stopped right after acknowledging them.
//!
//! Woken at once when a webhook queues a contact, and every `poll` for retries that fell due.
//! Claims carry a lease, so several nodes can run a linker on one database.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use iace_actors::accounts::{CrmContactFacts, CrmLinkJob};
use iace_actors::engine::Engine;
use prometheus::{IntCounterVec, Opts, Registry};
use tokio::sync::Notify;

use crate::clients::hubspot::crm::{CrmError, HubSpotCrm};

/// Timings of the linker.
#[derive(Debug, Clone)]
pub struct LinkerConfig {
    /// How often due retries are looked for (a webhook wakes the linker at once anyway).
    pub poll: Duration,
    /// First retry delay; doubles with every failed attempt up to `max_backoff`.
    pub base_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Failed lookups after which a contact leaves the queue (its events stay stored as
    /// `unlinked_contact`; the next event about it queues it again).
    pub max_attempts: u32,
    /// How long a claimed lookup is reserved for this node: past it, another node (or this
    /// one) may take it again. It must outlast one lookup (the HubSpot client's retry
    /// deadline, 20 s by default), as a claimed batch is looked up concurrently.
    pub lease: Duration,
    /// Lookups claimed, and worked concurrently, at a time.
    pub batch: u32,
}

impl Default for LinkerConfig {
    fn default() -> Self {
        LinkerConfig {
            poll: Duration::from_secs(30),
            base_backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(3600),
            max_attempts: 12,
            lease: Duration::from_secs(60),
            batch: 8,
        }
    }
}

impl LinkerConfig {
    /// The delay before retry number `attempts + 1`.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let factor = 1u32.checked_shl(attempts.min(20)).unwrap_or(u32::MAX);
        self.base_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// Starts the linker on the runtime; it runs until the process ends. `wake` is notified by the
/// HubSpot webhook when it queued a contact.
pub fn spawn(
    engine: Engine,
    crm: Arc<HubSpotCrm>,
    wake: Arc<Notify>,
    config: LinkerConfig,
    registry: &Registry,
) -> Result<(), prometheus::Error> {
    let outcomes = IntCounterVec::new(
        Opts::new(
            "iace_crm_links_total",
            "CRM lookups of unlinked HubSpot contacts by outcome (linked, already_linked, no_customer, ambiguous, no_organization, not_found, retry, given_up, rejected)",
        ),
        &["outcome"],
    )?;
    registry.register(Box::new(outcomes.clone()))?;
    let linker = Linker {
        engine,
        crm,
        config,
        outcomes,
    };
    tokio::spawn(async move {
        loop {
            linker.drain().await;
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(linker.config.poll) => {}
            }
        }
    });
    Ok(())
}

struct Linker {
    engine: Engine,
    crm: Arc<HubSpotCrm>,
    config: LinkerConfig,
    outcomes: IntCounterVec,
}

impl Linker {
    /// Works every due lookup.
    async fn drain(&self) {
        loop {
            let jobs = match self
                .engine
                .claim_crm_links(self.config.lease, self.config.batch)
                .await
            {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming CRM lookups failed; retrying later");
                    return;
                }
            };
            if jobs.is_empty() {
                return;
            }
            // Concurrently: one slow lookup neither holds up the batch nor lets the later
            // claims' leases run out while they wait their turn.
            futures::stream::iter(&jobs)
                .for_each_concurrent(None, |job| self.work(job))
                .await;
        }
    }

    async fn work(&self, job: &CrmLinkJob) {
        let (portal, contact) = (job.portal_id, job.contact_id.as_str());
        let outcome = match self.crm.contact(contact).await {
            Ok(Some(c)) => {
                let facts = CrmContactFacts {
                    contact_id: contact.to_owned(),
                    email: c.email,
                    phone: c.phone,
                    firstname: c.firstname,
                    lastname: c.lastname,
                };
                match self.engine.link_crm_contact(portal, facts).await {
                    Ok(link) => {
                        tracing::info!(portal, contact, outcome = ?link, "HubSpot contact link");
                        Ok(link_word(link))
                    }
                    Err(e) => Err(format!("linking failed: {e}")),
                }
            }
            Ok(None) => {
                tracing::info!(portal, contact, "HubSpot contact not found; not linked");
                Ok("not_found")
            }
            Err(e @ (CrmError::InvalidId(_) | CrmError::Rejected(_))) => {
                tracing::warn!(portal, contact, error = %e, "HubSpot refused the contact lookup; not linked");
                Ok("rejected")
            }
            Err(e) => Err(e.to_string()),
        };
        let done = match outcome {
            Ok(word) => {
                self.outcomes.with_label_values(&[word]).inc();
                self.engine.finish_crm_link(job).await
            }
            Err(error) if job.attempts + 1 >= self.config.max_attempts => {
                tracing::error!(portal, contact, attempts = job.attempts + 1, %error, "HubSpot contact lookup keeps failing; giving up until its next event");
                self.outcomes.with_label_values(&["given_up"]).inc();
                self.engine.finish_crm_link(job).await
            }
            Err(error) => {
                let wait = self.config.backoff(job.attempts);
                tracing::warn!(portal, contact, attempts = job.attempts + 1, retry_in_ms = wait.as_millis() as u64, %error, "HubSpot contact lookup failed; will retry");
                self.outcomes.with_label_values(&["retry"]).inc();
                self.engine.retry_crm_link(job, wait, error).await
            }
        };
        if let Err(e) = done {
            // The claim's lease runs out and the lookup is due again.
            tracing::warn!(portal, contact, error = %e, "recording a CRM lookup failed");
        }
    }
}

fn link_word(link: iace_actors::accounts::CrmLink) -> &'static str {
    use iace_actors::accounts::CrmLink;
    match link {
        CrmLink::Linked { .. } => "linked",
        CrmLink::AlreadyLinked { .. } => "already_linked",
        CrmLink::NoCustomer => "no_customer",
        CrmLink::Ambiguous => "ambiguous",
        CrmLink::NoOrganization => "no_organization",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let c = LinkerConfig::default();
        assert_eq!(c.backoff(0), Duration::from_secs(30));
        assert_eq!(c.backoff(1), Duration::from_secs(60));
        assert_eq!(c.backoff(6), Duration::from_secs(1920));
        assert_eq!(c.backoff(7), Duration::from_secs(3600));
        assert_eq!(c.backoff(u32::MAX), Duration::from_secs(3600));
    }

    #[test]
    fn a_claim_outlasts_the_lookups_it_covers() {
        // A batch is looked up concurrently, so the lease must cover one lookup (bounded by
        // the HubSpot client's retry deadline) with room for the database round trips.
        let lookup = crate::clients::hubspot::crm::CrmConfig::new("t")
            .retry
            .deadline;
        assert!(LinkerConfig::default().lease >= lookup * 2);
    }
}
