//! Delivery: Slack-compatible incoming webhooks, generic webhooks and
//! e-mail over SMTP. Each contact is tried `attempts` times with doubling
//! backoff; when it keeps failing the next contact is tried, and the feed
//! says so. When no contact works, the notification lands in the feed,
//! which everyone sees.
//!
//! Webhook URLs are secrets: notifications carry them sealed (see
//! `super::seal_contacts`), they are opened here just before a request, and
//! every log line, error and feed post names them by host only.

use drover_model::Timestamp;
use drover_oncall::config::{Delivery, Smtp};
use drover_oncall::{sign, ChannelKind, Contact, FeedPost, Notification, PageId};
use drover_store::oncall::OncallStore;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// A webhook or SMTP server that does not answer within this fails the attempt.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries in flight at once: a slow receiver must not hold up the rest,
/// nor may a burst of pages open thousands of connections.
const MAX_IN_FLIGHT: usize = 64;

#[derive(Clone)]
pub struct Deliverer {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    store: Arc<OncallStore>,
    delivery: Delivery,
    public_url: String,
    secret: Vec<u8>,
    key: drover_secrets::SecretKey,
    permits: Semaphore,
}

fn now() -> Timestamp {
    crate::actor::now()
}

impl Deliverer {
    pub fn new(
        store: Arc<OncallStore>,
        delivery: Delivery,
        public_url: String,
        secret: Vec<u8>,
        key: drover_secrets::SecretKey,
    ) -> anyhow::Result<Deliverer> {
        let http = drover_agent::tls::builder().timeout(SEND_TIMEOUT).build()?;
        Ok(Deliverer {
            inner: Arc::new(Inner {
                http,
                store,
                delivery,
                public_url: public_url.trim_end_matches('/').to_string(),
                secret,
                key,
                permits: Semaphore::new(MAX_IN_FLIGHT),
            }),
        })
    }

    /// A contact's address as the API shows it: a webhook URL (sealed or
    /// not) by scheme and host only, an e-mail address as it is.
    pub fn shown_address(&self, contact: &Contact) -> String {
        if !contact.is_secret() {
            return contact.address.clone();
        }
        let clear = match drover_secrets::is_sealed(&contact.address) {
            true => match self.inner.key.open_str(super::CONTACT_CONTEXT, &contact.address) {
                Ok(a) => a,
                Err(_) => return "(sealed under another key)".into(),
            },
            false => contact.address.clone(),
        };
        drover_oncall::config::redact_url(&clear)
    }

    pub fn link(&self, page: PageId, action: &str) -> String {
        link(&self.inner.public_url, &self.inner.secret, page, action)
    }

    pub fn notify(&self, n: Notification) {
        let this = self.clone();
        tokio::spawn(async move {
            let _permit = this.inner.permits.acquire().await;
            this.deliver_notification(n).await;
        });
    }

    pub fn post(&self, seq: i64, post: FeedPost) {
        let this = self.clone();
        tokio::spawn(async move {
            let _permit = this.inner.permits.acquire().await;
            this.deliver_feed(seq, post).await;
        });
    }

    /// Stores a feed post of our own (a delivery report) and sends it.
    async fn report(&self, post: FeedPost) {
        let store = self.inner.store.clone();
        let stored = post.clone();
        match tokio::task::spawn_blocking(move || store.add_feed(&stored)).await {
            Ok(Ok(seq)) => {
                let this = self.clone();
                // Boxed: deliver_feed never reports, so this does not recurse.
                Box::pin(this.deliver_feed(seq, post)).await;
            }
            Ok(Err(e)) => tracing::error!(error = %e, "cannot store a feed post"),
            Err(e) => tracing::error!(error = %e, "feed post task failed"),
        }
    }

    async fn deliver_feed(&self, seq: i64, post: FeedPost) {
        let contacts = self.inner.delivery.feed.clone();
        let state = if contacts.is_empty() {
            "stored"
        } else {
            let text = match post.page {
                Some(p) => format!(
                    "{}\n<{}|acknowledge> · <{}|resolve>",
                    post.text,
                    self.link(p, "ack"),
                    self.link(p, "resolve")
                ),
                None => post.text.clone(),
            };
            let mut ok = false;
            for c in &contacts {
                if self.try_contact(c, &text, &serde_json::json!({ "feed": post }), "Drover feed").await.0.is_ok() {
                    ok = true;
                    break;
                }
            }
            if ok {
                "delivered"
            } else {
                "failed"
            }
        };
        let store = self.inner.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.mark_feed(seq, state)).await;
    }

    async fn deliver_notification(&self, n: Notification) {
        let (text, body) = match n.page {
            Some(page) => {
                let ack = self.link(page, "ack");
                let resolve = self.link(page, "resolve");
                let text = format!("{}\nAcknowledge: {ack}\nResolve: {resolve}", n.text);
                let body =
                    serde_json::json!({ "notification": n, "text": text, "ack_url": ack, "resolve_url": resolve });
                (text, body)
            }
            // An announcement: nothing to acknowledge.
            None => (n.text.clone(), serde_json::json!({ "notification": n, "text": n.text })),
        };
        let subject = format!("[drover] {}", n.text.lines().next().unwrap_or("page"));
        let mut failures: Vec<String> = Vec::new();
        let mut attempts = 0;
        for contact in n.recipient.contacts() {
            let (result, tries) = self.try_contact(contact, &text, &body, &subject).await;
            attempts += tries;
            match result {
                Ok(()) => {
                    let store = self.inner.store.clone();
                    let (id, kind) = (n.id.to_string(), contact.kind.name());
                    let _ = tokio::task::spawn_blocking(move || {
                        store.mark_notification(&id, "delivered", attempts, Some(kind), None, now())
                    })
                    .await;
                    if !failures.is_empty() {
                        self.report(FeedPost {
                            at: now(),
                            page: n.page,
                            team: None,
                            text: format!(
                                "notification to {} fell back to {}: {}",
                                n.recipient.label(),
                                contact.kind.name(),
                                failures.join("; ")
                            ),
                        })
                        .await;
                    }
                    return;
                }
                Err(e) => failures.push(format!(
                    "{} {} failed after {tries} attempts: {e}",
                    contact.kind.name(),
                    contact.redacted()
                )),
            }
        }
        // Nothing worked (or no contact at all): the feed is the last resort.
        let why = if failures.is_empty() { "no contact configured".to_string() } else { failures.join("; ") };
        let store = self.inner.store.clone();
        let (id, err) = (n.id.to_string(), why.clone());
        let _ = tokio::task::spawn_blocking(move || {
            store.mark_notification(&id, "failed", attempts, Some("feed"), Some(&err), now())
        })
        .await;
        tracing::warn!(page = ?n.page, recipient = %n.recipient.label(), reason = %why, "notification not delivered; posted to the feed");
        self.report(FeedPost {
            at: now(),
            page: n.page,
            team: None,
            text: format!("could not reach {} ({why}); posting here instead: {}", n.recipient.label(), n.text),
        })
        .await;
    }

    /// Tries one contact with retries; returns the outcome and the attempts made.
    async fn try_contact(
        &self,
        contact: &Contact,
        text: &str,
        body: &serde_json::Value,
        subject: &str,
    ) -> (Result<(), String>, u32) {
        let attempts = self.inner.delivery.attempts.max(1);
        // Stored notifications carry webhook URLs sealed; open in memory only.
        let address = if drover_secrets::is_sealed(&contact.address) {
            match self.inner.key.open_str(super::CONTACT_CONTEXT, &contact.address) {
                Ok(a) => a,
                Err(e) => return (Err(e.to_string()), 0),
            }
        } else {
            contact.address.clone()
        };
        let mut backoff = self.inner.delivery.backoff;
        let mut last = String::new();
        for attempt in 1..=attempts {
            let result = match contact.kind {
                ChannelKind::Slack => self.post_json(&address, &serde_json::json!({ "text": text })).await,
                ChannelKind::Webhook => self.post_json(&address, body).await,
                ChannelKind::Email => self.email(&address, subject, text).await,
            };
            match result {
                Ok(()) => return (Ok(()), attempt),
                Err(e) => {
                    tracing::debug!(channel = contact.kind.name(), address = %contact.redacted(), attempt, error = %e, "delivery attempt failed");
                    last = e;
                }
            }
            if attempt < attempts {
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
            }
        }
        (Err(last), attempts)
    }

    async fn post_json(&self, url: &str, body: &serde_json::Value) -> Result<(), String> {
        // reqwest's errors name the URL, which is a secret here.
        let response = self.inner.http.post(url).json(body).send().await.map_err(|e| format!("{}", e.without_url()))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}", response.status().as_u16()))
        }
    }

    async fn email(&self, to: &str, subject: &str, text: &str) -> Result<(), String> {
        let Some(smtp) = &self.inner.delivery.smtp else {
            return Err("no [delivery.smtp] configured".into());
        };
        send_email(smtp, to, subject, text).await
    }
}

/// The signed URL for `action` on `page`.
pub fn link(base: &str, secret: &[u8], page: PageId, action: &str) -> String {
    format!("{base}/v1/pages/{page}/{action}?sig={}", sign::sign(secret, page, action))
}

async fn send_email(smtp: &Smtp, to: &str, subject: &str, text: &str) -> Result<(), String> {
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let message = Message::builder()
        .from(smtp.from.parse().map_err(|e| format!("from address {:?}: {e}", smtp.from))?)
        .to(to.parse().map_err(|e| format!("address {to:?}: {e}"))?)
        .subject(subject)
        .body(text.to_string())
        .map_err(|e| format!("cannot build the message: {e}"))?;
    // Plain SMTP to a relay (no TLS in this build): point it at a local MTA.
    let mut transport =
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host).port(smtp.port).timeout(Some(SEND_TIMEOUT));
    if let (Some(user), Some(password)) = (&smtp.username, &smtp.password) {
        transport = transport.credentials(lettre::transport::smtp::authentication::Credentials::new(
            user.clone(),
            password.expose().to_string(),
        ));
    }
    let transport = transport.build();
    transport.send(message).await.map(|_| ()).map_err(|e| format!("SMTP {}:{}: {e}", smtp.host, smtp.port))
}
