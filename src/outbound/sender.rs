//! The HTTP client of outbound webhooks (and of the agents' HTTP tools): every request is
//! signed with the Standard Webhooks scheme, and sent under the safety rules customers' URLs
//! call for.
//!
//! - Names are resolved by the [`Guard`]: a name that resolves to any address the guard
//!   refuses is not connected to, and the connection goes to exactly the addresses checked
//!   (no second resolution a DNS rebinding could change). Address literals are checked
//!   before the request.
//! - Connect and total timeouts; redirects are not followed (a 3xx is a failed attempt).
//! - The answer's body is read only up to [`BODY_LIMIT`] (kept as the error's detail).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use iace_actors::machine::CallId;
use iace_actors::ports::outbox::{SendResult, WebhookSender};
use opentelemetry::context::FutureExt as _;
use opentelemetry::KeyValue;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::guard::Guard;
use super::signing::{signature_header, Secret};
use crate::telemetry::{call_context, ClientSpan};

/// Bytes of an answer's body read at most.
pub const BODY_LIMIT: usize = 1024;

/// Timeouts of outbound requests.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// To establish the connection (TCP and TLS).
    pub connect: Duration,
    /// For the whole request, answer included.
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            total: Duration::from_secs(15),
        }
    }
}

/// Resolves names through the guard.
struct GuardedResolver(Guard);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.0;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            guard.check_addresses(&host, &addrs)?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Builds the client outbound requests share.
pub fn client(guard: Guard, timeouts: Timeouts) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeouts.connect)
        .timeout(timeouts.total)
        .dns_resolver(Arc::new(GuardedResolver(guard)))
        .user_agent(concat!("IACE-Webhooks/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .expect("the outbound HTTP client builds")
}

/// The sender of webhook deliveries.
#[derive(Clone)]
pub struct HttpSender {
    client: reqwest::Client,
    guard: Guard,
}

impl HttpSender {
    /// A sender under `guard` with `timeouts`.
    pub fn new(guard: Guard, timeouts: Timeouts) -> HttpSender {
        HttpSender {
            client: client(guard, timeouts),
            guard,
        }
    }
}

/// An error with its causes, for the delivery's record.
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Reads at most [`BODY_LIMIT`] bytes of the answer.
async fn body_start(mut response: reqwest::Response) -> String {
    let mut kept: Vec<u8> = Vec::new();
    while kept.len() < BODY_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = BODY_LIMIT - kept.len();
                kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

#[async_trait]
impl WebhookSender for HttpSender {
    async fn send(
        &self,
        url: &str,
        webhook_id: &str,
        call_id: Option<CallId>,
        timestamp: i64,
        secrets: &[String],
        body: Vec<u8>,
    ) -> SendResult {
        let cx = call_id.map_or_else(opentelemetry::Context::current, call_context);
        self.post(url, webhook_id, timestamp, secrets, body)
            .with_context(cx)
            .await
    }
}

impl HttpSender {
    /// One signed POST: a client span in the trace in scope.
    async fn post(
        &self,
        url: &str,
        webhook_id: &str,
        timestamp: i64,
        secrets: &[String],
        body: Vec<u8>,
    ) -> SendResult {
        let mut span = ClientSpan::start("POST", "POST", url, "webhook");
        span.set(KeyValue::new("iace.webhook.id", webhook_id.to_owned()));
        let failed = |span: &mut ClientSpan, kind: &'static str, error: String| {
            span.fail(kind, error.clone());
            SendResult {
                status: None,
                error: Some(error),
            }
        };
        if let Err(refused) = self.guard.check_url(url) {
            return failed(&mut span, "refused", refused.to_string());
        }
        let secrets: Vec<Secret> = secrets
            .iter()
            .filter_map(|s| Secret::parse(s).ok())
            .collect();
        if secrets.is_empty() {
            return failed(
                &mut span,
                "refused",
                "the endpoint has no usable signing secret".into(),
            );
        }
        let refs: Vec<&Secret> = secrets.iter().collect();
        let signature = signature_header(&refs, webhook_id, timestamp, &body);
        let sent = span
            .apply(self.client.post(url))
            .header("content-type", "application/json")
            .header("webhook-id", webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(response) => {
                let status = response.status();
                span.status(status.as_u16());
                if status.is_success() {
                    // Not read: what a receiver says after its 2xx does not matter.
                    SendResult {
                        status: Some(status.as_u16()),
                        error: None,
                    }
                } else {
                    let detail = body_start(response).await;
                    SendResult {
                        status: Some(status.as_u16()),
                        error: Some(format!("answered {status}: {detail}").trim_end().into()),
                    }
                }
            }
            Err(e) if e.is_timeout() => {
                failed(&mut span, "timeout", format!("timed out: {}", chain(&e)))
            }
            Err(e) => failed(&mut span, "transport", chain(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A server that answers every request with `answer` (raw HTTP), counting requests.
    async fn raw_server(answer: Vec<u8>) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let _ = socket.read(&mut buf).await;
                    if answer.is_empty() {
                        // Never answers.
                        std::future::pending::<()>().await;
                    }
                    let _ = socket.write_all(&answer).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        (format!("http://127.0.0.1:{port}/hook"), hits)
    }

    fn sender(allow_private: bool, total: Duration) -> HttpSender {
        HttpSender::new(
            Guard { allow_private },
            Timeouts {
                connect: Duration::from_secs(5),
                total,
            },
        )
    }

    fn secrets() -> Vec<String> {
        vec![Secret::generate().expose()]
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let (target, target_hits) = raw_server(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()).await;
        let redirect = format!(
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: {target}\r\ncontent-length: 0\r\n\r\n"
        );
        let (url, hits) = raw_server(redirect.into_bytes()).await;
        let sent = sender(true, Duration::from_secs(10))
            .send(&url, "msg_1", None, 1, &secrets(), b"{}".to_vec())
            .await;
        assert_eq!(sent.status, Some(307));
        assert!(sent.error.unwrap().contains("307"));
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        assert_eq!(target_hits.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_large_answer_is_read_only_so_far() {
        let body = "x".repeat(1_000_000);
        let answer = format!(
            "HTTP/1.1 500 Internal Server Error\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let (url, _) = raw_server(answer.into_bytes()).await;
        let sent = sender(true, Duration::from_secs(10))
            .send(&url, "msg_1", None, 1, &secrets(), b"{}".to_vec())
            .await;
        assert_eq!(sent.status, Some(500));
        let error = sent.error.unwrap();
        assert!(error.len() < BODY_LIMIT + 100, "{} bytes", error.len());
    }

    #[tokio::test]
    async fn a_receiver_that_never_answers_times_out() {
        let (url, _) = raw_server(Vec::new()).await;
        let sent = sender(true, Duration::from_millis(300))
            .send(&url, "msg_1", None, 1, &secrets(), b"{}".to_vec())
            .await;
        assert_eq!(sent.status, None);
        assert!(sent.error.unwrap().starts_with("timed out"));
    }

    #[tokio::test]
    async fn names_and_literals_of_private_addresses_are_refused_with_the_guard_on() {
        let (url, hits) = raw_server(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()).await;
        let guarded = sender(false, Duration::from_secs(10));
        let by_name = url.replace("127.0.0.1", "localhost");
        for target in [url.as_str(), by_name.as_str()] {
            let sent = guarded
                .send(target, "msg_1", None, 1, &secrets(), b"{}".to_vec())
                .await;
            assert_eq!(sent.status, None);
            let error = sent.error.unwrap();
            assert!(error.contains("not a public address"), "{target}: {error}");
        }
        assert_eq!(hits.load(Ordering::SeqCst), 0);
        // Allowed, the same names go through.
        let open = sender(true, Duration::from_secs(10));
        let sent = open
            .send(&by_name, "msg_1", None, 1, &secrets(), b"{}".to_vec())
            .await;
        assert_eq!(sent.status, Some(204), "{:?}", sent.error);
    }
}
