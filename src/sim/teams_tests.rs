//! End-to-end tests of the simulator's Teams endpoints over real HTTP.

use super::tests::{sha256_hex, small_cfg, Harness};
use super::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Digest;
use std::collections::{HashMap, HashSet};

const PREFER: (&str, &str) = ("Prefer", "include-unknown-enum-members");

fn teams_cfg() -> SimConfig {
    let mut cfg = small_cfg();
    cfg.users = 12;
    cfg.unlicensed_users = 0;
    cfg.interactions_per_user = 0;
    cfg.teams = TeamsSimConfig {
        chats: 30,
        messages_per_chat: 12,
        teams: 6,
        deleted_teams: 1,
        channels_per_team: 3,
        posts_per_channel: 5,
        max_replies: 2,
        meetings: 6,
        recording_bytes: 300_000,
        ..TeamsSimConfig::default()
    };
    cfg
}

impl Harness {
    async fn get_with(
        &self,
        url: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, reqwest::header::HeaderMap, bytes::Bytes) {
        let mut req = self.http.get(url).bearer_auth(&self.token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let h = resp.headers().clone();
        (status, h, resp.bytes().await.unwrap_or_default())
    }

    /// Every record of a collection, following nextLinks, with the Prefer header.
    async fn all_records(&self, first: &str, headers: &[(&str, &str)]) -> Vec<String> {
        let mut url = Some(first.to_owned());
        let mut out = Vec::new();
        while let Some(u) = url.take() {
            let (status, _, body) = self.get_with(&u, headers).await;
            let text = String::from_utf8_lossy(&body).into_owned();
            assert_eq!(status, StatusCode::OK, "{u}: {text}");
            let page: serde_json::Map<String, Value> = serde_json::from_str(&text).expect("page");
            #[derive(serde::Deserialize)]
            struct P<'a> {
                #[serde(borrow)]
                value: Vec<&'a serde_json::value::RawValue>,
            }
            let p: P<'_> = serde_json::from_str(&text).expect("page");
            out.extend(p.value.iter().map(|r| r.get().to_owned()));
            url = page
                .get("@odata.nextLink")
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
        out
    }

    async fn truth(&self, source: &str) -> Vec<Value> {
        let (status, v) = self
            .control(Method::GET, &format!("/ground-truth?source={source}"), None)
            .await;
        assert_eq!(status, StatusCode::OK);
        v["records"].as_array().cloned().unwrap_or_default()
    }

    async fn user_ids(&self) -> Vec<String> {
        let (_, v) = self.control(Method::GET, "/users", None).await;
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u["id"].as_str().map(str::to_owned))
            .collect()
    }
}

fn key_of(record: &str) -> (String, String, String) {
    let v: Value = serde_json::from_str(record).expect("record parses");
    let place = v["chatId"].as_str().map(str::to_owned).unwrap_or_else(|| {
        v["channelIdentity"]["channelId"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    });
    (
        place,
        v["id"].as_str().unwrap_or_default().to_owned(),
        v["etag"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn chat_messages_are_the_same_bytes_for_every_member_and_match_the_ground_truth() {
    let h = Harness::start(teams_cfg()).await;
    let mut served: HashMap<(String, String, String), String> = HashMap::new();
    let mut deliveries = 0;
    for user in h.user_ids().await {
        let url = format!(
            "{}/users/{user}/chats/getAllMessages?$top=7",
            h.sim.base_url()
        );
        for r in h.all_records(&url, &[PREFER]).await {
            deliveries += 1;
            let key = key_of(&r);
            if let Some(prev) = served.insert(key.clone(), r.clone()) {
                assert_eq!(prev, r, "{key:?}: members must get the same bytes");
            }
        }
    }
    assert!(
        deliveries > served.len(),
        "messages are exported once per member"
    );
    let truth = h.truth("chats").await;
    let exportable: Vec<&Value> = truth.iter().filter(|r| r["exportable"] == true).collect();
    assert_eq!(served.len(), exportable.len());
    for r in exportable {
        let key = (
            r["parts"][0].as_str().unwrap_or_default().to_owned(),
            r["parts"][1].as_str().unwrap_or_default().to_owned(),
            r["etag"].as_str().unwrap_or_default().to_owned(),
        );
        let bytes = served
            .get(&key)
            .unwrap_or_else(|| panic!("{key:?} not served"));
        assert_eq!(sha256_hex(bytes), r["sha256"], "{key:?}");
    }
    // Message ids repeat across chats: the chat id is part of the identity.
    let ids: HashSet<&String> = served.keys().map(|k| &k.1).collect();
    assert!(ids.len() < served.len());
    assert!(
        truth.iter().any(|r| r["exportable"] == false),
        "some deletions are older than 21 days"
    );
    h.sim.shutdown().await;
}

#[tokio::test]
async fn control_messages_need_the_prefer_header() {
    let h = Harness::start(teams_cfg()).await;
    let truth = h.truth("chats").await;
    let system = truth
        .iter()
        .find(|r| r["message_type"] == "systemEventMessage")
        .expect("a control message");
    let chat = system["parts"][0].as_str().unwrap_or_default();
    let (_, v) = h.control(Method::GET, "/users", None).await;
    let users: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| u["id"].as_str().map(str::to_owned))
        .collect();
    let mut found = (None, None);
    for user in &users {
        let url = format!("{}/users/{user}/chats/getAllMessages", h.sim.base_url());
        let with = h.all_records(&url, &[PREFER]).await;
        let without = h.all_records(&url, &[]).await;
        let pick = |records: &[String]| {
            records
                .iter()
                .find(|r| {
                    let v: Value = serde_json::from_str(r).expect("json");
                    v["chatId"] == chat && v["body"]["content"] == "<systemEventMessage/>"
                })
                .cloned()
        };
        if let (Some(a), Some(b)) = (pick(&with), pick(&without)) {
            found = (Some(a), Some(b));
            break;
        }
    }
    let (Some(with), Some(without)) = found else {
        panic!("no member of {chat} got its control message");
    };
    let type_of = |r: &str| serde_json::from_str::<Value>(r).expect("json")["messageType"].clone();
    assert_eq!(type_of(&with), "systemEventMessage");
    assert_eq!(type_of(&without), "unknownFutureValue");
    assert_eq!(
        sha256_hex(&with),
        system["sha256"],
        "the ground truth assumes the header"
    );
    h.sim.shutdown().await;
}

#[tokio::test]
async fn billing_model_is_required_when_configured() {
    let mut cfg = teams_cfg();
    cfg.teams.require_model = true;
    let h = Harness::start(cfg).await;
    let user = h.user_ids().await.remove(0);
    let base = format!("{}/users/{user}/chats/getAllMessages", h.sim.base_url());
    let (status, _, body) = h.get_with(&base, &[]).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    let v: Value = serde_json::from_slice(&body).expect("error envelope");
    assert_eq!(v["error"]["code"], "PaymentRequired");
    let (status, _, _) = h.get_with(&format!("{base}?model=C"), &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, body) = h.get_with(&format!("{base}?model=A&$top=2"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).expect("page");
    let next = v["@odata.nextLink"].as_str().expect("more pages");
    assert!(next.contains("model=A"), "{next}");
    h.sim.shutdown().await;
}

#[tokio::test]
async fn an_edit_is_a_new_version_and_the_old_one_is_superseded() {
    let h = Harness::start(teams_cfg()).await;
    let truth = h.truth("chats").await;
    let target = truth
        .iter()
        .find(|r| {
            r["message_type"] == "message"
                && r["exportable"] == true
                && r["superseded"] == false
                && r["modified"] == r["created"]
        })
        .expect("an unchanged message");
    let (chat, id) = (
        target["parts"][0].as_str().unwrap_or_default(),
        target["parts"][1].as_str().unwrap_or_default(),
    );
    let (status, changed) = h
        .control(
            Method::POST,
            "/messages",
            Some(json!({"conversation": chat, "message_id": id, "action": "edit"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_ne!(changed["etag"], target["etag"]);
    let after = h.truth("chats").await;
    let versions: Vec<&Value> = after
        .iter()
        .filter(|r| r["parts"][0] == chat && r["parts"][1] == id)
        .collect();
    assert_eq!(versions.len(), 2);
    assert!(versions.iter().any(|v| v["etag"] == target["etag"]
        && v["superseded"] == true
        && v["sha256"] == target["sha256"]));
    assert!(versions
        .iter()
        .any(|v| v["etag"] == changed["etag"] && v["superseded"] == false));
    let (status, _) = h
        .control(
            Method::POST,
            "/messages",
            Some(json!({"conversation": chat, "message_id": id, "action": "delete"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = h
        .control(
            Method::POST,
            "/messages",
            Some(json!({"conversation": chat, "message_id": id, "action": "react"})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a deleted message does not change"
    );
    let (status, report) = h
        .control(Method::POST, "/messages/churn", Some(json!({"count": 50})))
        .await;
    assert_eq!(status, StatusCode::OK);
    let total: u64 = ["posted", "edited", "reacted", "deleted"]
        .iter()
        .map(|k| report[k].as_u64().unwrap_or(0))
        .sum();
    assert!(total >= 45, "{report}");
    h.sim.shutdown().await;
}

#[tokio::test]
async fn channels_of_live_deleted_and_shared_teams() {
    let h = Harness::start(teams_cfg()).await;
    let root = h.sim.base_url();
    let live = h
        .all_records(&format!("{root}/teams?$select=id,displayName&$top=2"), &[])
        .await;
    let deleted = h
        .all_records(&format!("{root}/teamwork/deletedTeams"), &[])
        .await;
    assert_eq!((live.len(), deleted.len()), (5, 1));
    let id = |r: &String| {
        serde_json::from_str::<Value>(r).expect("json")["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let dead = id(&deleted[0]);
    let (status, _, _) = h
        .get_with(&format!("{root}/teams/{dead}/channels/getAllMessages"), &[])
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let mut served: HashMap<(String, String, String), (String, usize)> = HashMap::new();
    let mut urls: Vec<String> = live
        .iter()
        .map(|t| format!("{root}/teams/{}/channels/getAllMessages", id(t)))
        .collect();
    urls.push(format!(
        "{root}/teamwork/deletedTeams/{dead}/channels/getAllMessages"
    ));
    for url in urls {
        for r in h.all_records(&url, &[PREFER]).await {
            served.entry(key_of(&r)).or_insert((r, 0)).1 += 1;
        }
    }
    assert!(
        served.values().any(|(_, n)| *n > 1),
        "a shared channel's messages come with two teams"
    );
    let truth = h.truth("channels").await;
    let exportable: Vec<&Value> = truth.iter().filter(|r| r["exportable"] == true).collect();
    assert_eq!(exportable.len(), served.len());
    for r in exportable {
        let key = (
            r["parts"][1].as_str().unwrap_or_default().to_owned(),
            r["parts"][2].as_str().unwrap_or_default().to_owned(),
            r["etag"].as_str().unwrap_or_default().to_owned(),
        );
        let (bytes, _) = served
            .get(&key)
            .unwrap_or_else(|| panic!("{key:?} not served"));
        assert_eq!(sha256_hex(bytes), r["sha256"]);
    }
    h.sim.shutdown().await;
}

#[tokio::test]
async fn transcripts_and_recordings_with_ranged_content() {
    let h = Harness::start(teams_cfg()).await;
    let truth = h.truth("recordings").await;
    assert!(!truth.is_empty());
    let r = &truth[0];
    let organizer = r["parts"][0].as_str().unwrap_or_default();
    let root = h.sim.base_url();
    let (status, _, _) = h
        .get_with(
            &format!("{root}/users/{organizer}/onlineMeetings/getAllRecordings"),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the organizer is required");
    let list = format!(
        "{root}/users/{organizer}/onlineMeetings/getAllRecordings(meetingOrganizerUserId='{organizer}',startDateTime=2000-01-01T00:00:00Z,endDateTime=2100-01-01T00:00:00Z)?$top=1"
    );
    let records = h.all_records(&list, &[]).await;
    let mine: Vec<&Value> = truth
        .iter()
        .filter(|t| t["parts"][0] == organizer)
        .collect();
    assert_eq!(records.len(), mine.len());
    let shas: HashSet<String> = records.iter().map(|b| sha256_hex(b)).collect();
    assert!(mine
        .iter()
        .all(|t| shas.contains(t["sha256"].as_str().unwrap_or_default())));
    let meta: Value = serde_json::from_str(&records[0]).expect("json");
    let url = meta["recordingContentUrl"]
        .as_str()
        .expect("url")
        .trim()
        .to_owned();
    let (status, headers, whole) = h.get_with(&url, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "video/mp4");
    assert_eq!(&whole[4..8], b"ftyp");
    let t = mine
        .iter()
        .find(|t| t["id"] == meta["id"])
        .expect("its truth");
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&whole)),
        t["content"]["sha256"]
    );
    let etag = headers["etag"].to_str().expect("etag").to_owned();
    let (status, headers, tail) = h
        .get_with(&url, &[("Range", "bytes=1000-"), ("If-Range", &etag)])
        .await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        headers["content-range"].to_str().ok(),
        Some(format!("bytes 1000-{}/{}", whole.len() - 1, whole.len()).as_str())
    );
    assert_eq!(&tail[..], &whole[1000..]);
    let transcripts = h.truth("transcripts").await;
    assert!(transcripts
        .iter()
        .all(|t| t["content"]["extension"] == "vtt"));
    h.sim.shutdown().await;
}

#[tokio::test]
async fn a_reset_cuts_streamed_content_short_of_its_length() {
    let mut cfg = teams_cfg();
    cfg.faults.reset_rate = 1.0;
    let h = Harness::start(cfg).await;
    let truth = h.truth("recordings").await;
    let r = &truth[0];
    let url = format!(
        "{}/users/{}/onlineMeetings/{}/recordings/{}/content",
        h.sim.base_url(),
        r["parts"][0].as_str().unwrap_or_default(),
        r["parts"][1].as_str().unwrap_or_default(),
        r["parts"][2].as_str().unwrap_or_default()
    );
    let resp = h
        .http
        .get(&url)
        .bearer_auth(&h.token)
        .send()
        .await
        .expect("headers arrive");
    assert_eq!(resp.status(), StatusCode::OK);
    let len = resp.content_length().expect("length");
    let body = resp.bytes().await;
    assert!(
        body.is_err(),
        "a reset must not look like a complete body of {len} bytes"
    );
    h.sim.shutdown().await;
}
