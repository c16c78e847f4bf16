//! Cluster membership: nodes that share a database form the cluster by
//! themselves, agree on its shard count, and are placed by the live
//! membership (`GET /v1/admin/cluster`).

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{Backend, TestApp, fresh_database, spawn_node, test_settings};

async fn a_lone_node_is_the_whole_cluster(app: TestApp) {
    let view = app.cluster().await;
    assert_eq!(view["shards"], 256);
    let nodes = view["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{view}");
    assert_eq!(nodes[0]["live"], true);
    assert_eq!(nodes[0]["this_node"], true);
    assert_eq!(nodes[0]["shards"], 256, "a lone node is placed every shard");
    assert_eq!(nodes[0]["shards_held"], 256, "and holds them");
    let address = nodes[0]["address"].as_str().unwrap();
    assert!(
        app.address.ends_with(address),
        "advertises where it listens: {address} vs {}",
        app.address
    );

    let stranger = app.user();
    let refused = app
        .as_user(&stranger, Method::GET, "/v1/admin/cluster")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
}

crate::on_both_backends!(a_lone_node_is_the_whole_cluster);

#[actix_web::test]
async fn nodes_sharing_a_database_share_the_shards() {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = fresh_database(Backend::Postgres, &dir).await else {
        return;
    };
    let a = spawn_node(&url, |_| {}).await;
    let b = spawn_node(&url, |_| {}).await;
    let view = a.wait_for_placement(2).await;
    let nodes = view["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{view}");
    assert!(nodes.iter().all(|n| n["live"] == true));
    let shares: Vec<u64> = nodes
        .iter()
        .map(|n| n["shards"].as_u64().unwrap())
        .collect();
    assert_eq!(shares.iter().sum::<u64>(), 256, "{shares:?}");
    assert!(shares.iter().all(|s| *s > 0), "{shares:?}");
    assert_eq!(nodes.iter().filter(|n| n["this_node"] == true).count(), 1);
    let from_b = b.cluster().await;
    let placed = |view: &Value| -> Vec<(String, u64)> {
        view["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["id"].as_str().unwrap().to_owned(),
                    n["shards"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(
        placed(&view),
        placed(&from_b),
        "both nodes compute the same placement"
    );
}

#[actix_web::test]
async fn a_node_configured_with_another_shard_count_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = fresh_database(Backend::Postgres, &dir).await else {
        return;
    };
    let _first = spawn_node(&url, |_| {}).await;
    let mut settings = test_settings(&url, &dir);
    settings.cluster.shards = 64;
    let error = turnout::app::Application::build(settings)
        .await
        .err()
        .expect("no start with another shard count");
    let message = format!("{error:#}");
    assert!(
        message.contains("256 shards") && message.contains("TURNOUT_CLUSTER__SHARDS=256"),
        "{message}"
    );
}
