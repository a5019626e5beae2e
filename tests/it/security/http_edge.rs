//! The HTTP edge of the real binary: header, body and idle timeouts, oversized requests
//! (413/414 with the error envelope), the connection cap and the probes' reserve, draining after
//! SIGTERM, and the open-file limit.

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::server;
use crate::common;
use crate::common::metrics::{series, wait_series};
use crate::common::server::{create_org, Server};
use crate::common::wait::wait_within;

/// How long any socket-level expectation below may take before it counts as not happening.
const EDGE_BOUND: std::time::Duration = std::time::Duration::from_secs(30);

/// `host:port` of a base URL.
fn addr_of(base: &str) -> String {
    base.trim_start_matches("http://").to_owned()
}

/// Whether the server closes `tcp` within [`EDGE_BOUND`] (reads and discards what it sends).
async fn closed_by_server(tcp: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    tokio::time::timeout(EDGE_BOUND, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Sends `request` on a fresh connection and returns everything the server answers until it
/// closes: (status, head, body).
async fn raw_exchange(addr: &str, request: &[u8]) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(EDGE_BOUND, async {
        let mut buf = [0u8; 8192];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "no complete answer within {EDGE_BOUND:?}: {}",
        String::from_utf8_lossy(&out)
    );
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    (status, head.to_owned(), body.to_owned())
}

/// The envelope's code, and a check that it carries a request id.
fn envelope_code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert!(
        v["error"]["request_id"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{v}"
    );
    assert!(v["error"]["message"].as_str().is_some(), "{v}");
    v["error"]["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn slow_headers_slow_bodies_and_idle_connections_are_closed_and_counted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = common::db::fresh_database().await;
    let srv = server(
        &db,
        &[
            ("IACE_HTTP_HEADER_TIMEOUT_SECS", "1"),
            ("IACE_HTTP_BODY_TIMEOUT_SECS", "1"),
            ("IACE_HTTP_IDLE_TIMEOUT_SECS", "2"),
        ],
    )
    .await;
    let addr = addr_of(&srv.base);

    // Headers trickled a byte at a time never finish: closed at the header timeout, however
    // steadily the bytes come.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let trickle = async {
        loop {
            if slow.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    let closed = tokio::time::timeout(EDGE_BOUND, trickle).await.is_ok();
    assert!(closed, "a slow-headers connection is closed");
    wait_series(
        &srv.metrics_base,
        "iace_http_connections_timed_out_total{phase=\"header\"}",
        1.0,
    )
    .await;

    // A body declared and never sent: closed at the body timeout.
    let mut body = tokio::net::TcpStream::connect(&addr).await.unwrap();
    body.write_all(
        b"POST /v1/webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"id\":",
    )
    .await
    .unwrap();
    assert!(closed_by_server(&mut body).await, "a slow body is closed");
    wait_series(
        &srv.metrics_base,
        "iace_http_connections_timed_out_total{phase=\"body\"}",
        1.0,
    )
    .await;

    // A keep-alive connection that served a request and then says nothing: closed at the
    // idle timeout.
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    assert!(
        closed_by_server(&mut idle).await,
        "an idle connection is closed"
    );
    wait_series(
        &srv.metrics_base,
        "iace_http_connections_timed_out_total{phase=\"idle\"}",
        1.0,
    )
    .await;
    // None of them is left open (the metrics listener's own connections are not counted).
    wait_within("no connection left open", EDGE_BOUND, async || {
        series(&srv.metrics_base, "iace_http_connections_open").await <= 0.0
    })
    .await;
}

#[tokio::test]
async fn oversized_requests_are_refused_at_once_with_the_envelope_on_every_route() {
    let db = common::db::fresh_database().await;
    let srv = server(&db, &[]).await;
    let (_, key) = create_org(&db, "Edge");
    let addr = addr_of(&srv.base);

    // A declared body over the limit is refused before any of it is sent: on an
    // authenticated route (with and without credentials) and on a public webhook.
    for (path, auth) in [
        ("/v1/calls", format!("Authorization: Bearer {key}\r\n")),
        ("/v1/calls", String::new()),
        ("/v1/webhooks/stripe", String::new()),
    ] {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n"
        );
        let (status, head, body) = raw_exchange(&addr, request.as_bytes()).await;
        assert_eq!(status, 413, "{path}: {head}\n{body}");
        assert_eq!(envelope_code(&body), "payload_too_large", "{path}");
        assert!(
            head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
    }

    // A chunked body that grows past the limit (nothing declared) gets the envelope too.
    let big = "x".repeat(300 * 1024);
    let chunked = format!(
        "POST /v1/webhooks/stripe HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    let (status, _, body) = raw_exchange(&addr, chunked.as_bytes()).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(envelope_code(&body), "payload_too_large");

    // A URI longer than the HTTP parser takes: 414 with the envelope.
    let long = format!(
        "GET /v1/calls?q={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let (status, head, body) = raw_exchange(&addr, long.as_bytes()).await;
    assert_eq!(status, 414, "{head}");
    assert_eq!(envelope_code(&body), "uri_too_long");

    // The Telnyx webhook (public, signature-checked) refuses it too.
    let public_key = base64::engine::general_purpose::STANDARD.encode(
        ed25519_dalek::SigningKey::from_bytes(&[7; 32])
            .verifying_key()
            .as_bytes(),
    );
    let telnyx = Server::start(
        &db,
        &[
            ("IACE_TELEPHONY", "telnyx"),
            ("TELNYX_API_KEY", "KEY-test"),
            ("TELNYX_CONNECTION_ID", "conn-test"),
            ("TELNYX_PUBLIC_KEY", &public_key),
            ("IACE_PUBLIC_URL", "http://127.0.0.1:9"),
        ],
    )
    .await;
    let request = "POST /v1/webhooks/telnyx HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n";
    let (status, head, body) = raw_exchange(&addr_of(&telnyx.base), request.as_bytes()).await;
    assert_eq!(status, 413, "{head}\n{body}");
    assert_eq!(envelope_code(&body), "payload_too_large");
}

#[tokio::test]
async fn beyond_the_connection_cap_connections_get_503_and_probes_keep_an_answer() {
    let db = common::db::fresh_database().await;
    let srv = server(&db, &[("IACE_MAX_CONNECTIONS", "4")]).await;
    let addr = addr_of(&srv.base);
    let open = "iace_http_connections_open";
    // Idle clients take every slot of the cap.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    wait_series(&srv.metrics_base, open, 4.0).await;

    // At the cap: the node says it is not ready, still alive, and refuses other work.
    let fresh = || {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    };
    let ready = fresh()
        .get(format!("{}/ready", srv.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let health = fresh()
        .get(format!("{}/health", srv.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let work = fresh()
        .get(format!("{}/v1/me", srv.base))
        .send()
        .await
        .unwrap();
    assert_eq!(work.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(work.headers()["retry-after"], "1");
    let body: Value = work.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    let detail: Value = reqwest::get(format!("{}/ready", srv.metrics_base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        detail["checks"]["http_edge"]
            .as_str()
            .unwrap()
            .contains("connection cap"),
        "{detail}"
    );

    // The probes' reserve taken too: a new connection is answered 503 and closed.
    for _ in 0..iace::edge::PROBE_RESERVE {
        held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    wait_series(
        &srv.metrics_base,
        open,
        (4 + iace::edge::PROBE_RESERVE) as f64,
    )
    .await;
    let (status, head, body) =
        raw_exchange(&addr, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 503, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    assert_eq!(envelope_code(&body), "overloaded");
    wait_series(
        &srv.metrics_base,
        "iace_http_connections_refused_total{reason=\"at_capacity\"}",
        1.0,
    )
    .await;

    // Slots come back when clients leave. Until the server has seen them go, a new
    // connection is still refused (answered 503 and closed, perhaps before the request is
    // even read, which the client sees as an error): both mean "not yet".
    drop(held);
    wait_within("a slot back (ready again)", EDGE_BOUND, async || {
        fresh()
            .get(format!("{}/ready", srv.base))
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
}

#[tokio::test]
async fn after_sigterm_the_node_drains_not_ready_but_alive() {
    let db = common::db::fresh_database().await;
    let srv = server(&db, &[("IACE_DRAIN_SECS", "120")]).await;
    let http = reqwest::Client::new();
    let ready = http
        .get(format!("{}/ready", srv.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    srv.sigterm();
    let deadline = std::time::Instant::now() + EDGE_BOUND;
    loop {
        let r = http
            .get(format!("{}/ready", srv.base))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
            let body: Value = r.json().await.unwrap();
            assert_eq!(body, json!({"status": "unavailable"}));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still ready after SIGTERM"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let health = http
        .get(format!("{}/health", srv.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK, "alive while draining");
    let detail: Value = http
        .get(format!("{}/ready", srv.metrics_base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        detail["checks"]["http_edge"]
            .as_str()
            .unwrap()
            .contains("draining"),
        "{detail}"
    );
}

#[tokio::test]
async fn the_server_raises_its_open_file_soft_limit_to_the_hard_limit() {
    let db = common::db::fresh_database().await;
    let mut srv = Server::start(&db, &[]).await;
    let limits = |pid: u32| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap()
            .to_owned();
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields[3].to_owned(), fields[4].to_owned())
    };
    let (_, hard) = limits(srv.pid());
    let Ok(hard_n) = hard.parse::<u64>() else {
        return; // unlimited: nothing to raise
    };
    if hard_n <= 256 {
        return; // no room to lower the soft limit below the hard one
    }
    // Started with a soft limit below the hard one, as on many hosts (1,024).
    srv.kill9();
    srv.nofile_soft = Some(256);
    srv.spawn().await;
    let (soft, hard_now) = limits(srv.pid());
    assert_eq!(hard_now, hard);
    assert_eq!(soft, hard, "soft raised to the hard limit");
}
