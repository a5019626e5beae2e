//! Three nodes split the 256 shards evenly; 300 calls created through the balancer all end
//! with gap-free journals and one carrier leg each; a hangup reaches the node that runs the
//! call whichever node takes the request.

use futures::StreamExt;
use reqwest::{Method, StatusCode};

use super::{
    is_terminal, kinds, owners, send_to, shard_counts, shard_of, Cluster, ANSWERS, RINGS_FOREVER,
    SHARDS,
};

const MEMBERS: [&str; 3] = ["node-1", "node-2", "node-3"];
const FORWARDED_OK: &str = "iace_forwarded_requests_total{outcome=\"ok\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_split_the_shards_and_every_call_ends_with_a_gap_free_journal() {
    let _one = super::one_at_a_time().await;
    let cluster = Cluster::start(3, &[]).await;
    let view = cluster.wait_settled(&MEMBERS).await;
    let counts = shard_counts(&view);
    println!("shards per node: {counts:?}");
    let fair = SHARDS as f64 / MEMBERS.len() as f64;
    for node in MEMBERS {
        let n = counts.get(node).copied().unwrap_or(0) as f64;
        assert!(
            (n - fair).abs() <= fair * 0.2,
            "{node} holds {n} shards, more than 20% off {fair:.1}: {counts:?}"
        );
    }
    assert_eq!(counts.values().sum::<usize>(), SHARDS);
    assert!(
        view["leases"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["epoch"].as_i64().unwrap_or(0) >= 1),
        "every held lease has an epoch"
    );

    // 300 calls, 16 requests at a time: 270 answer, talk and end by themselves; every tenth
    // rings until it is hung up.
    let planned: Vec<(String, &str)> = (0..300)
        .map(|i| {
            let to = if i % 10 == 0 { RINGS_FOREVER } else { ANSWERS };
            (format!("split-{i}"), to)
        })
        .collect();
    let c = &cluster;
    let created: Vec<_> = futures::stream::iter(planned.iter())
        .map(|(key, to)| async move { (key.clone(), *to, c.create_call(key, to).await) })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut ids = Vec::new();
    let mut answering = Vec::new();
    let mut ringing = Vec::new();
    for (key, to, r) in &created {
        assert_eq!(r.status, StatusCode::CREATED, "create {key}: {}", r.body);
        let id = r.body["id"].as_str().unwrap().to_owned();
        ids.push(id.clone());
        if *to == RINGS_FOREVER {
            ringing.push(id);
        } else {
            answering.push(id);
        }
    }
    let per_shard_owner = owners(&cluster.status().await);
    let mut per_node = std::collections::HashMap::<&str, usize>::new();
    for id in &ids {
        *per_node
            .entry(per_shard_owner[&shard_of(id)].as_str())
            .or_default() += 1;
    }
    println!("calls per node: {per_node:?}");
    assert_eq!(
        per_node.len(),
        3,
        "new calls are created on the node that takes the request: every node runs some"
    );

    // A replayed create answers the same call, whichever node the balancer picks this time.
    for (key, to) in planned.iter().take(12) {
        let first = &created.iter().find(|(k, _, _)| k == key).unwrap().2;
        let again = cluster.create_call(key, to).await;
        assert_eq!(
            again.status,
            StatusCode::OK,
            "replay of {key}: {}",
            again.body
        );
        assert_eq!(again.body["id"], first.body["id"], "replay of {key}");
    }

    // Hangups of the ringing calls: half through the balancer (any node), half straight to a
    // node that does not run the call, which must forward them to the one that does.
    for id in &ringing {
        cluster.wait_status(id, "ringing").await;
    }
    let owner = owners(&cluster.status().await);
    let forwarded_before = cluster.metric_sum(&MEMBERS, FORWARDED_OK).await;
    let mut direct = 0;
    for (i, id) in ringing.iter().enumerate() {
        let path = format!("/v1/calls/{id}/hangup");
        let r = if i % 2 == 0 {
            cluster
                .send(Method::POST, &path, Some(serde_json::json!({})), &[])
                .await
        } else {
            let runs = &owner[&shard_of(id)];
            let other = cluster
                .nodes
                .iter()
                .find(|n| &n.id != runs)
                .expect("another node");
            direct += 1;
            send_to(
                &cluster.http,
                &other.server.base,
                &cluster.key,
                Method::POST,
                &path,
                Some(serde_json::json!({})),
                &[],
            )
            .await
            .unwrap()
        };
        assert_eq!(r.status, StatusCode::OK, "hangup of {id}: {}", r.body);
        assert!(is_terminal(&r.body), "hangup of {id} answered {}", r.body);
    }
    let forwarded = cluster.metric_sum(&MEMBERS, FORWARDED_OK).await - forwarded_before;
    println!("hangups forwarded to the call's node: {forwarded} ({direct} sent to a non-owner)");
    assert!(
        forwarded >= f64::from(direct),
        "{direct} hangups went to a node that does not run the call, {forwarded} were forwarded"
    );

    let journals = cluster.check_calls(&ids).await;
    for id in &answering {
        let call = cluster.wait_ended(id).await;
        assert_eq!(call["status"], "completed", "{call}");
        assert_eq!(
            kinds(&journals[id]),
            ["created", "initiated", "ringing", "answered", "hangup"],
            "call {id}"
        );
    }
    for id in &ringing {
        let k = kinds(&journals[id]);
        assert!(
            k.contains(&"hangup_requested".to_owned()),
            "call {id} was hung up: {k:?}"
        );
    }
    cluster.cleanup().await;
}
