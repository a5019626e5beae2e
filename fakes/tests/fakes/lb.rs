//! Tests of the load balancer (`iace_fakes::lb`) on real sockets and real time, in front of
//! small axum backends started here (and one raw TCP backend that drops requests). Every test
//! starts its own balancer and backends, so they run in parallel; conditions that depend on
//! health checks are waited for with a generous bound, never a fixed sleep.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ws::{Message as WsMessage, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use iace_fakes::lb::{LbError, LoadBalancer, LoadBalancerConfig};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::eventually;

/// Health checks flip a backend within a second or two when idle; the bound allows a busy box.
const HEALTH: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Backends

/// What a test backend shares with its handlers.
struct NodeState {
    name: String,
    /// Requests served, `/ready` not counted.
    hits: AtomicUsize,
    /// What `/ready` answers: 200 when set, 503 otherwise.
    ready: AtomicBool,
    /// Lets `/stream` send its second chunk.
    release: Notify,
}

/// A small axum server standing for an `iace serve` node.
struct Node {
    state: Arc<NodeState>,
    url: String,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
}

impl Node {
    async fn start(name: &str) -> Node {
        let state = Arc::new(NodeState {
            name: name.to_owned(),
            hits: AtomicUsize::new(0),
            ready: AtomicBool::new(true),
            release: Notify::new(),
        });
        let app = Router::new()
            .route("/ready", get(ready))
            .route("/whoami", get(whoami))
            .route("/echo", post(echo))
            .route("/stream", get(stream))
            .route("/ws", any(ws))
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .expect("backend serves");
        });
        Node {
            state,
            url,
            stop: Some(stop),
            server,
        }
    }

    fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    fn set_ready(&self, ready: bool) {
        self.state.ready.store(ready, Ordering::SeqCst);
    }

    /// Closes the listener and every connection (idle keep-alive ones at once), and waits
    /// until the server is gone: new connections are refused from then on.
    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(20), &mut self.server)
            .await
            .expect("backend stops within 20 s")
            .expect("backend task");
    }
}

async fn ready(State(s): State<Arc<NodeState>>) -> StatusCode {
    if s.ready.load(Ordering::SeqCst) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn whoami(State(s): State<Arc<NodeState>>) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    ([("x-backend", s.name.clone())], s.name.clone()).into_response()
}

/// Answers the body as received, with what it saw of the headers in `x-seen-*`.
async fn echo(State(s): State<Arc<NodeState>>, headers: HeaderMap, body: Bytes) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let seen = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    (
        [
            ("x-backend", s.name.clone()),
            ("x-seen-test", seen("x-test")),
            ("x-seen-xff", seen("x-forwarded-for")),
            ("x-seen-host", seen("host")),
            ("x-seen-hop", seen("x-hop")),
        ],
        body,
    )
        .into_response()
}

/// A chunked answer whose second chunk waits for the test: it proves the balancer streams.
async fn stream(State(s): State<Arc<NodeState>>) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let chunks = futures::stream::unfold(0u8, move |step| {
        let s = s.clone();
        async move {
            match step {
                0 => Some((Ok::<_, std::io::Error>(Bytes::from_static(b"first\n")), 1)),
                1 => {
                    s.release.notified().await;
                    Some((Ok(Bytes::from_static(b"second\n")), 2))
                }
                _ => None,
            }
        }
    });
    Body::from_stream(chunks).into_response()
}

async fn ws(State(s): State<Arc<NodeState>>, upgrade: WebSocketUpgrade) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let name = s.name.clone();
    upgrade.on_upgrade(move |mut socket| async move {
        if socket
            .send(WsMessage::Text(format!("hello from {name}").into()))
            .await
            .is_err()
        {
            return;
        }
        while let Some(Ok(msg)) = socket.recv().await {
            if matches!(msg, WsMessage::Close(_)) {
                return;
            }
            let data = matches!(msg, WsMessage::Text(_) | WsMessage::Binary(_));
            if data && socket.send(msg).await.is_err() {
                return;
            }
        }
    })
}

/// A backend that passes its health checks but drops every other request once it has read its
/// head: the request reached it, so the balancer must not send it anywhere else.
async fn dropping_backend() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let received = Arc::new(AtomicUsize::new(0));
    let count = received.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if head.starts_with(b"GET /ready ") {
                    let _ = tcp
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                } else {
                    count.fetch_add(1, Ordering::SeqCst);
                }
                // Dropped: the connection closes without an answer.
            });
        }
    });
    (url, received)
}

// ---------------------------------------------------------------------------------------------
// Helpers

async fn nodes(names: &[&str]) -> Vec<Node> {
    let mut out = Vec::new();
    for n in names {
        out.push(Node::start(n).await);
    }
    out
}

async fn balancer(nodes: &[&Node], config: LoadBalancerConfig) -> LoadBalancer {
    LoadBalancer::start(LoadBalancerConfig {
        backends: nodes.iter().map(|n| n.url.clone()).collect(),
        ..config
    })
    .await
    .expect("balancer starts")
}

/// Checks that never mark a backend down after the first one: only redispatch can keep
/// requests away from a dead backend.
fn no_checks() -> LoadBalancerConfig {
    LoadBalancerConfig {
        check_interval: Duration::from_secs(3600),
        ..LoadBalancerConfig::default()
    }
}

/// `GET /whoami` through the balancer `n` times, one after the other: the names answering.
async fn whoami_n(client: &reqwest::Client, lb: &LoadBalancer, n: usize) -> Vec<String> {
    let mut names = Vec::with_capacity(n);
    for _ in 0..n {
        let resp = client
            .get(format!("{}/whoami", lb.base_url()))
            .send()
            .await
            .expect("request through the balancer");
        assert_eq!(resp.status(), 200, "every request is answered by a backend");
        names.push(resp.text().await.expect("body"));
    }
    names
}

fn tally(names: &[String]) -> BTreeMap<&str, usize> {
    let mut t = BTreeMap::new();
    for n in names {
        *t.entry(n.as_str()).or_insert(0) += 1;
    }
    t
}

fn is_up(lb: &LoadBalancer, url: &str) -> bool {
    lb.backend(url).expect("backend is balanced").up
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_requests_evenly() {
    let ns = nodes(&["a", "b", "c"]).await;
    let lb = balancer(
        &ns.iter().collect::<Vec<_>>(),
        LoadBalancerConfig::default(),
    )
    .await;
    let client = reqwest::Client::new();

    let names = whoami_n(&client, &lb, 30).await;

    for (i, name) in names.iter().enumerate() {
        assert_eq!(name, &names[i % 3], "strict rotation: {names:?}");
    }
    assert_eq!(
        tally(&names),
        BTreeMap::from([("a", 10), ("b", 10), ("c", 10)])
    );
    for n in &ns {
        assert_eq!(n.hits(), 10, "backend {} saw 10 requests", n.state.name);
    }
    let stats = lb.stats();
    assert_eq!(
        stats
            .backends
            .iter()
            .map(|b| b.requests)
            .collect::<Vec<_>>(),
        vec![10, 10, 10]
    );
    assert!(stats.backends.iter().all(|b| b.up));
    assert!(
        stats.backends.iter().all(|b| b.open_connections >= 1),
        "connections to the backends are kept alive for reuse: {stats:?}"
    );
    assert_eq!(stats.retries, 0);
    assert_eq!(stats.server_errors, 0);
    lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_are_added_and_removed_at_run_time() {
    let ns = nodes(&["a", "b"]).await;
    let lb = balancer(&[&ns[0]], LoadBalancerConfig::default()).await;
    let client = reqwest::Client::new();
    assert_eq!(
        tally(&whoami_n(&client, &lb, 4).await),
        BTreeMap::from([("a", 4)])
    );

    let added = lb.add_backend(&format!("{}/", ns[1].url)).expect("added");
    assert_eq!(added, ns[1].url, "the URL is normalised");
    assert_eq!(
        lb.add_backend(&ns[1].url),
        Err(LbError::DuplicateBackend(ns[1].url.clone()))
    );
    for bad in [
        "https://127.0.0.1:1",
        "http://127.0.0.1:1/api",
        "127.0.0.1:1",
        "http://u@h:1",
    ] {
        assert!(
            matches!(lb.add_backend(bad), Err(LbError::BadBackendUrl { .. })),
            "{bad} is refused"
        );
    }
    assert_eq!(lb.stats().backends.len(), 2);
    assert_eq!(
        tally(&whoami_n(&client, &lb, 10).await),
        BTreeMap::from([("a", 5), ("b", 5)])
    );

    assert!(lb.remove_backend(&ns[0].url));
    assert!(!lb.remove_backend(&ns[0].url), "already gone");
    assert!(lb.backend(&ns[0].url).is_none());
    let a_before = ns[0].hits();
    assert_eq!(
        tally(&whoami_n(&client, &lb, 6).await),
        BTreeMap::from([("b", 6)])
    );
    assert_eq!(ns[0].hits(), a_before, "a removed backend gets nothing");
    lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_whose_ready_fails_gets_no_requests_until_it_recovers() {
    let ns = nodes(&["a", "b", "c"]).await;
    let lb = balancer(
        &ns.iter().collect::<Vec<_>>(),
        LoadBalancerConfig::default(),
    )
    .await;
    let client = reqwest::Client::new();
    let b = &ns[1];

    b.set_ready(false);
    assert!(
        eventually(HEALTH, || !is_up(&lb, &b.url)).await,
        "b is marked down after its /ready failed"
    );
    let b_before = b.hits();
    let names = whoami_n(&client, &lb, 20).await;
    assert_eq!(b.hits(), b_before, "a down backend receives nothing");
    assert_eq!(
        tally(&names),
        BTreeMap::from([("a", 10), ("c", 10)]),
        "the others share b's part evenly"
    );
    assert!(is_up(&lb, &ns[0].url) && is_up(&lb, &ns[2].url));
    assert_eq!(
        lb.stats().retries,
        0,
        "down backends are skipped, not tried"
    );

    b.set_ready(true);
    assert!(
        eventually(HEALTH, || is_up(&lb, &b.url)).await,
        "b comes back once /ready passes again"
    );
    let names = whoami_n(&client, &lb, 6).await;
    assert_eq!(tally(&names).get("b"), Some(&2), "{names:?}");
    lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_backend_fails_no_request_thanks_to_redispatch() {
    let mut ns = nodes(&["a", "b", "c"]).await;
    let lb = balancer(&ns.iter().collect::<Vec<_>>(), no_checks()).await;
    let client = reqwest::Client::new();
    // Kept-alive connections to every backend first, so the pool's closed ones are met too.
    assert_eq!(whoami_n(&client, &lb, 9).await.len(), 9);
    let b_url = ns[1].url.clone();
    assert!(lb.backend(&b_url).expect("b").open_connections >= 1);
    let b_answered = lb.backend(&b_url).expect("b").requests;

    ns[1].stop().await;
    assert!(
        eventually(HEALTH, || lb.backend(&b_url).expect("b").open_connections
            == 0)
        .await,
        "the balancer saw b close its kept-alive connections"
    );
    let names = whoami_n(&client, &lb, 30).await;

    assert!(!names.iter().any(|n| n == "b"), "{names:?}");
    let stats = lb.stats();
    let b_stats = lb.backend(&b_url).expect("b");
    assert!(
        b_stats.up,
        "no check marked it down: the redispatch alone kept requests away"
    );
    assert_eq!(b_stats.requests, b_answered);
    assert!(
        stats.retries >= 1,
        "requests picked for b went elsewhere: {stats:?}"
    );
    assert_eq!(stats.server_errors, 0);
    lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_backend_up_the_answer_is_503_json() {
    let client = reqwest::Client::new();
    // No backend at all.
    let empty = LoadBalancer::start(LoadBalancerConfig::default())
        .await
        .expect("balancer starts");
    let resp = client
        .get(format!("{}/whoami", empty.base_url()))
        .send()
        .await
        .expect("answered");
    assert_eq!(resp.status(), 503);
    assert_eq!(
        resp.headers()["content-type"].to_str().expect("ascii"),
        "application/json"
    );
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "no_backend");
    assert!(body["error"]["message"].is_string());
    assert_eq!(empty.stats().server_errors, 1);
    empty.shutdown().await;

    // Every backend failing its checks.
    let ns = nodes(&["a", "b"]).await;
    let lb = balancer(
        &ns.iter().collect::<Vec<_>>(),
        LoadBalancerConfig::default(),
    )
    .await;
    for n in &ns {
        n.set_ready(false);
    }
    assert!(
        eventually(HEALTH, || lb.stats().backends.iter().all(|b| !b.up)).await,
        "both backends are marked down"
    );
    for _ in 0..3 {
        let resp = client
            .post(format!("{}/echo", lb.base_url()))
            .body("lost")
            .send()
            .await
            .expect("answered");
        assert_eq!(resp.status(), 503);
        let body: Value = resp.json().await.expect("JSON");
        assert_eq!(body["error"]["code"], "no_backend");
    }
    assert_eq!(ns[0].hits() + ns[1].hits(), 0);
    assert_eq!(lb.stats().server_errors, 3);
    lb.shutdown().await;

    // Every backend refusing connections before any check noticed.
    let mut ns = nodes(&["a", "b"]).await;
    let lb = balancer(&ns.iter().collect::<Vec<_>>(), no_checks()).await;
    for n in &mut ns {
        n.stop().await;
    }
    let resp = client
        .get(format!("{}/whoami", lb.base_url()))
        .send()
        .await
        .expect("answered");
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "backend_unreachable");
    let stats = lb.stats();
    assert_eq!(
        stats.retries, 1,
        "the second backend was tried, then none was left"
    );
    assert_eq!(stats.server_errors, 1);
    lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_and_headers_pass_through_and_stream() {
    let ns = nodes(&["a"]).await;
    let lb = balancer(&[&ns[0]], LoadBalancerConfig::default()).await;
    let client = reqwest::Client::new();

    // A 2 MiB request body, echoed.
    let payload: Vec<u8> = (0..2 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let resp = client
        .post(format!("{}/echo", lb.base_url()))
        .header("x-test", "kept")
        .header("x-forwarded-for", "10.1.2.3")
        .body(payload.clone())
        .send()
        .await
        .expect("answered");
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["x-backend"], "a", "answer headers pass through");
    assert_eq!(h["x-seen-test"], "kept", "request headers pass through");
    assert_eq!(
        h["x-seen-xff"], "10.1.2.3, 127.0.0.1",
        "the client is appended"
    );
    assert_eq!(
        h["x-seen-host"],
        lb.addr().to_string(),
        "Host is the client's"
    );
    assert_eq!(h["content-length"], payload.len().to_string());
    let body = resp.bytes().await.expect("body");
    assert!(
        body == payload,
        "the body came back intact ({} bytes)",
        body.len()
    );

    // Without a forwarded-for of its own, the client is the whole header.
    let resp = client
        .post(format!("{}/echo", lb.base_url()))
        .body("x")
        .send()
        .await
        .expect("answered");
    assert_eq!(resp.headers()["x-seen-xff"], "127.0.0.1");

    // A streamed answer: its first chunk arrives while the backend holds the second.
    let mut resp = client
        .get(format!("{}/stream", lb.base_url()))
        .send()
        .await
        .expect("answered");
    assert_eq!(resp.status(), 200);
    let first = tokio::time::timeout(Duration::from_secs(20), resp.chunk())
        .await
        .expect("the first chunk arrives before the answer is complete")
        .expect("chunk")
        .expect("a chunk");
    assert_eq!(&first[..], b"first\n");
    ns[0].state.release.notify_one();
    let rest = tokio::time::timeout(Duration::from_secs(20), resp.bytes())
        .await
        .expect("the rest arrives")
        .expect("body");
    assert_eq!(&rest[..], b"second\n");
    assert_eq!(lb.stats().server_errors, 0);
    lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_connection_carries_requests_to_every_backend() {
    let ns = nodes(&["a", "b", "c"]).await;
    let lb = balancer(
        &ns.iter().collect::<Vec<_>>(),
        LoadBalancerConfig::default(),
    )
    .await;
    let tcp = tokio::net::TcpStream::connect(lb.addr())
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("handshake");
    let conn = tokio::spawn(conn);

    let mut names = Vec::new();
    for _ in 0..6 {
        sender.ready().await.expect("the connection stays open");
        let req = hyper::Request::get("/whoami")
            .header("host", lb.addr().to_string())
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = sender.send_request(req).await.expect("answered");
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        names.push(String::from_utf8(body.to_vec()).expect("utf-8"));
    }
    assert_eq!(
        tally(&names),
        BTreeMap::from([("a", 2), ("b", 2), ("c", 2)]),
        "each request is balanced on its own"
    );

    // Hop-by-hop headers stay on the client's connection.
    sender.ready().await.expect("the connection stays open");
    let req = hyper::Request::post("/echo")
        .header("host", lb.addr().to_string())
        .header("connection", "x-hop")
        .header("x-hop", "secret")
        .header("x-test", "kept")
        .body(Full::new(Bytes::from_static(b"hop")))
        .expect("request");
    let resp = sender.send_request(req).await.expect("answered");
    assert_eq!(
        resp.headers()["x-seen-hop"],
        "-",
        "a header named by Connection is dropped"
    );
    assert_eq!(resp.headers()["x-seen-test"], "kept");
    assert!(!conn.is_finished(), "still one connection");
    drop(sender);
    lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_backend_received_is_never_sent_again() {
    let (dropping, received) = dropping_backend().await;
    let good = Node::start("good").await;
    let lb = LoadBalancer::start(LoadBalancerConfig {
        backends: vec![dropping.clone(), good.url.clone()],
        ..no_checks()
    })
    .await
    .expect("balancer starts");
    let client = reqwest::Client::new();

    let mut statuses = Vec::new();
    for _ in 0..4 {
        let resp = client
            .post(format!("{}/echo", lb.base_url()))
            .body("pay once")
            .send()
            .await
            .expect("answered");
        statuses.push(resp.status().as_u16());
        if resp.status() == 502 {
            let body: Value = resp.json().await.expect("JSON");
            assert_eq!(body["error"]["code"], "bad_gateway");
        }
    }
    statuses.sort_unstable();
    assert_eq!(statuses, vec![200, 200, 502, 502]);
    assert_eq!(
        received.load(Ordering::SeqCst),
        2,
        "the dropping backend got 2"
    );
    assert_eq!(
        good.hits(),
        2,
        "and none of them was sent on to the good one"
    );
    let stats = lb.stats();
    assert_eq!(stats.retries, 0);
    assert_eq!(stats.server_errors, 2);
    lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_are_tunnelled_to_a_backend() {
    let ns = nodes(&["a", "b"]).await;
    let lb = balancer(
        &ns.iter().collect::<Vec<_>>(),
        LoadBalancerConfig::default(),
    )
    .await;
    let url = format!("ws://{}/ws", lb.addr());

    let mut greeted = Vec::new();
    let mut sockets = Vec::new();
    for _ in 0..2 {
        let (mut socket, resp) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("upgraded through the balancer");
        assert_eq!(resp.status(), 101);
        let hello = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .expect("greeting in time")
            .expect("a message")
            .expect("not an error");
        greeted.push(hello.into_text().expect("text").to_string());
        sockets.push(socket);
    }
    greeted.sort();
    assert_eq!(
        greeted,
        vec!["hello from a", "hello from b"],
        "one tunnel per backend"
    );

    for socket in &mut sockets {
        for msg in [
            Message::Text("ping".into()),
            Message::Binary(vec![0u8, 1, 2, 255].into()),
        ] {
            socket.send(msg.clone()).await.expect("sent");
            let echo = tokio::time::timeout(Duration::from_secs(20), socket.next())
                .await
                .expect("echo in time")
                .expect("a message")
                .expect("not an error");
            assert_eq!(echo, msg);
        }
        socket.close(None).await.expect("closed");
    }
    assert_eq!(ns[0].hits() + ns[1].hits(), 2);
    assert_eq!(lb.stats().server_errors, 0);
    lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_new_clients_and_finishes_requests_in_flight() {
    let ns = nodes(&["a"]).await;
    let lb = balancer(
        &[&ns[0]],
        LoadBalancerConfig {
            drain_timeout: Duration::from_secs(30),
            ..LoadBalancerConfig::default()
        },
    )
    .await;
    let addr = lb.addr();
    let mut resp = reqwest::Client::new()
        .get(format!("{}/stream", lb.base_url()))
        .send()
        .await
        .expect("answered");
    let first = tokio::time::timeout(Duration::from_secs(20), resp.chunk())
        .await
        .expect("first chunk in time")
        .expect("chunk")
        .expect("a chunk");
    assert_eq!(&first[..], b"first\n");

    let shutdown = tokio::spawn(lb.shutdown());
    let refused = Arc::new(AtomicBool::new(false));
    let probe = {
        let refused = refused.clone();
        tokio::spawn(async move {
            while tokio::net::TcpStream::connect(addr).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            refused.store(true, Ordering::SeqCst);
        })
    };
    assert!(
        eventually(HEALTH, || refused.load(Ordering::SeqCst)).await,
        "new clients are refused once the balancer stops"
    );
    probe.await.expect("probe");
    assert!(!shutdown.is_finished(), "a request is still in flight");

    ns[0].state.release.notify_one();
    let rest = tokio::time::timeout(Duration::from_secs(20), resp.bytes())
        .await
        .expect("the rest arrives")
        .expect("body");
    assert_eq!(&rest[..], b"second\n", "the request in flight finished");
    tokio::time::timeout(Duration::from_secs(20), shutdown)
        .await
        .expect("shutdown ends once nothing is in flight")
        .expect("shutdown task");
}
