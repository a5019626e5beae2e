//! `/v1/webhook-endpoints` against the real server: secrets shown only when made, the SSRF
//! guard on URLs, patches (also racing ones), rotation windows, tenant scoping.

use crate::common;

use common::api::send;
use common::server::{create_org, Server};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const PATH: &str = "/v1/webhook-endpoints";

fn endpoint(url: &str) -> Value {
    json!({"url": url, "event_types": ["call.ended", "call.created"], "description": "CRM"})
}

#[tokio::test]
async fn endpoints_are_kept_per_organization_with_secrets_shown_once() {
    let db = common::db::fresh_database().await;
    let srv = Server::start(&db, &[]).await;
    let base = &srv.base;
    let (_, key) = create_org(&db, "A");
    let (_, other) = create_org(&db, "B");

    let made = send(
        base,
        Method::POST,
        PATH,
        Some(&key),
        Some(endpoint("https://hooks.example.com/iace")),
    )
    .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
    let id = made.body["id"].as_str().unwrap().to_owned();
    let secret = made.body["secret"].as_str().unwrap().to_owned();
    assert!(
        iace::outbound::signing::Secret::parse(&secret).is_ok(),
        "{secret}"
    );
    assert_eq!(
        made.body["event_types"],
        json!(["call.created", "call.ended"])
    );
    assert_eq!(made.body["enabled"], true);

    let one = send(base, Method::GET, &format!("{PATH}/{id}"), Some(&key), None).await;
    assert_eq!(one.status, StatusCode::OK);
    assert!(one.body.get("secret").is_none(), "{}", one.body);
    assert!(one.body.get("previous_secret").is_none(), "{}", one.body);
    let listed = send(base, Method::GET, PATH, Some(&key), None).await;
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 1);
    assert!(listed.body["data"][0].get("secret").is_none());

    // Another tenant sees nothing and changes nothing.
    let foreign = send(
        base,
        Method::GET,
        &format!("{PATH}/{id}"),
        Some(&other),
        None,
    )
    .await;
    assert_eq!(foreign.status, StatusCode::NOT_FOUND);
    let foreign = send(
        base,
        Method::DELETE,
        &format!("{PATH}/{id}"),
        Some(&other),
        None,
    )
    .await;
    assert_eq!(foreign.status, StatusCode::NOT_FOUND);
    let theirs = send(base, Method::GET, PATH, Some(&other), None).await;
    assert_eq!(theirs.body["data"], json!([]));

    // Bad input: a clear error, nothing stored.
    for (body, says) in [
        (endpoint("http://127.0.0.1:8080/hook"), "url"),
        (endpoint("http://169.254.169.254/latest/meta-data/"), "url"),
        (endpoint("http://[::1]/hook"), "url"),
        (endpoint("http://10.0.0.7/hook"), "url"),
        (endpoint("ftp://hooks.example.com/"), "url"),
        (
            json!({"url": "https://hooks.example.com/x", "event_types": ["call.exploded"]}),
            "event_types",
        ),
        (
            json!({"url": "https://hooks.example.com/x", "event_types": []}),
            "event_types",
        ),
        (
            json!({"url": "https://hooks.example.com/x", "event_types": ["call.ended"], "secret": "whsec_mine"}),
            "secret",
        ),
    ] {
        let refused = send(base, Method::POST, PATH, Some(&key), Some(body.clone())).await;
        assert_eq!(
            refused.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            refused.body
        );
        assert_eq!(
            refused.body["error"]["code"], "invalid_request",
            "{}",
            refused.body
        );
        assert!(
            refused.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(says),
            "{}",
            refused.body
        );
    }
    let listed = send(base, Method::GET, PATH, Some(&key), None).await;
    assert_eq!(
        listed.body["data"].as_array().unwrap().len(),
        1,
        "refusals stored nothing"
    );

    // Patches: a private URL is refused, the rest applies.
    let private = send(
        base,
        Method::PATCH,
        &format!("{PATH}/{id}"),
        Some(&key),
        Some(json!({"url": "http://192.168.1.10/"})),
    )
    .await;
    assert_eq!(private.status, StatusCode::BAD_REQUEST, "{}", private.body);
    let off = send(
        base,
        Method::PATCH,
        &format!("{PATH}/{id}"),
        Some(&key),
        Some(json!({"enabled": false, "event_types": ["call.analyzed"]})),
    )
    .await;
    assert_eq!(off.status, StatusCode::OK, "{}", off.body);
    assert_eq!(off.body["enabled"], false);
    assert_eq!(off.body["event_types"], json!(["call.analyzed"]));
    assert_eq!(off.body["url"], "https://hooks.example.com/iace");
    let empty = send(
        base,
        Method::PATCH,
        &format!("{PATH}/{id}"),
        Some(&key),
        Some(json!({})),
    )
    .await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);

    // Racing patches all land, one after another: more of them than a bounded number of
    // attempts would let through (a patch that lost the race to the others five times in a row
    // was answered 409).
    let racing: Vec<_> = (0..32)
        .map(|n| {
            let (base, key, id) = (base.clone(), key.clone(), id.clone());
            tokio::spawn(async move {
                send(
                    &base,
                    Method::PATCH,
                    &format!("{PATH}/{id}"),
                    Some(&key),
                    Some(json!({"description": format!("d{n}")})),
                )
                .await
            })
        })
        .collect();
    for r in racing {
        let answer = r.await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }

    // Rotation: a new secret, shown once; the old one signs for the window.
    let rotated = send(
        base,
        Method::POST,
        &format!("{PATH}/{id}/rotate-secret"),
        Some(&key),
        Some(json!({"window_secs": 3600})),
    )
    .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
    let new_secret = rotated.body["secret"].as_str().unwrap();
    assert_ne!(new_secret, secret);
    assert!(iace::outbound::signing::Secret::parse(new_secret).is_ok());
    let until: chrono::DateTime<chrono::Utc> = rotated.body["previous_secret_until"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let ahead = until - chrono::Utc::now();
    assert!(
        ahead > chrono::Duration::minutes(55) && ahead <= chrono::Duration::minutes(60),
        "{ahead}"
    );
    let at_once = send(
        base,
        Method::POST,
        &format!("{PATH}/{id}/rotate-secret"),
        Some(&key),
        Some(json!({"window_secs": 0})),
    )
    .await;
    assert_eq!(
        at_once.body["previous_secret_until"],
        Value::Null,
        "{}",
        at_once.body
    );
    let too_long = send(
        base,
        Method::POST,
        &format!("{PATH}/{id}/rotate-secret"),
        Some(&key),
        Some(json!({"window_secs": 8 * 24 * 3600})),
    )
    .await;
    assert_eq!(
        too_long.status,
        StatusCode::BAD_REQUEST,
        "{}",
        too_long.body
    );

    let gone = send(
        base,
        Method::DELETE,
        &format!("{PATH}/{id}"),
        Some(&key),
        None,
    )
    .await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT);
    let again = send(base, Method::GET, &format!("{PATH}/{id}"), Some(&key), None).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn private_urls_are_taken_only_when_allowed() {
    let db = common::db::fresh_database().await;
    let srv = Server::start(&db, &[("IACE_ALLOW_PRIVATE_URLS", "true")]).await;
    let (_, key) = create_org(&db, "A");
    let made = send(
        &srv.base,
        Method::POST,
        PATH,
        Some(&key),
        Some(endpoint("http://127.0.0.1:9/hook")),
    )
    .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
    // Credentials in the URL are refused even then.
    let creds = send(
        &srv.base,
        Method::POST,
        PATH,
        Some(&key),
        Some(endpoint("http://user:pw@127.0.0.1:9/hook")),
    )
    .await;
    assert_eq!(creds.status, StatusCode::BAD_REQUEST, "{}", creds.body);
}
