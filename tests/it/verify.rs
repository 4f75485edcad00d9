//! The oracle, live: each state the guarantees forbid is written by hand into the emulator's tables, with a
//! manifest naming every send's MessageId, and the real `order-worker verify` must say FAILED (exit 1); the
//! clean state, with a duplicate marker, a conflict marker and a rejected body, must say OK. The pure checks
//! and their planted states are in `src/verify.rs`; this shows the binary reads the table the way the audit
//! expects (every attribute it judges by).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use crate::common::*;
use aws_sdk_dynamodb::types::AttributeValue;

/// One item as the worker writes it (the attributes verify reads).
struct It {
    key: String,
    group: String,
    position: u64,
    status: &'static str,
    mid: String,
    seq: String,
    sha: String,
    marker_of: Option<String>,
}

fn rec(key: &str, group: &str, position: u64, mid: &str) -> It {
    It {
        key: key.into(),
        group: group.into(),
        position,
        status: "ACCEPTED",
        mid: mid.into(),
        seq: format!("{}", 1000 + position),
        sha: format!("sha-{key}"),
        marker_of: None,
    }
}

fn marker(kind: &str, mid: &str, of: &str, group: &str, position: u64) -> It {
    It {
        status: if kind == "duplicate" {
            "DUPLICATE"
        } else {
            "CONFLICT"
        },
        sha: if kind == "duplicate" {
            format!("sha-{of}")
        } else {
            "another payload".into()
        },
        marker_of: Some(of.into()),
        ..rec(&format!("{kind}:{mid}"), group, position, mid)
    }
}

/// A manifest line: (order id or None, group, MessageId).
type Line<'a> = (Option<&'a str>, &'a str, &'a str);

struct State<'a> {
    name: &'a str,
    manifest: Vec<Line<'a>>,
    items: Vec<It>,
    rows: Vec<(&'a str, u64)>,
    ok: bool,
}

async fn replay(fx: &Fixture, dir: &Path, st: &State<'_>) -> String {
    for it in &st.items {
        let mut item: HashMap<String, AttributeValue> = HashMap::from([
            ("OrderID".into(), AttributeValue::S(it.key.clone())),
            ("MessageGroupId".into(), AttributeValue::S(it.group.clone())),
            (
                "GroupPosition".into(),
                AttributeValue::N(it.position.to_string()),
            ),
            ("Status".into(), AttributeValue::S(it.status.into())),
            ("SqsMessageId".into(), AttributeValue::S(it.mid.clone())),
            (
                "SqsSequenceNumber".into(),
                AttributeValue::S(it.seq.clone()),
            ),
            ("PayloadSha256".into(), AttributeValue::S(it.sha.clone())),
            ("ProcessedBy".into(), AttributeValue::S("i-planted".into())),
        ]);
        if let Some(of) = &it.marker_of {
            item.insert("MarkerOf".into(), AttributeValue::S(of.clone()));
        }
        fx.ddb
            .put_item()
            .table_name(&fx.orders_table)
            .set_item(Some(item))
            .send()
            .await
            .expect("put item");
    }
    for (g, last) in &st.rows {
        fx.ddb
            .put_item()
            .table_name(&fx.groups_table)
            .item("MessageGroupId", AttributeValue::S(g.to_string()))
            .item("LastPosition", AttributeValue::N(last.to_string()))
            .send()
            .await
            .expect("put row");
    }
    let manifest = dir.join(format!("{}.jsonl", st.name));
    let lines: Vec<String> = st
        .manifest
        .iter()
        .map(|(id, g, mid)| {
            serde_json::json!({
                "order_id": id,
                "group": g,
                "expect": if id.is_some() { "accepted" } else { "rejected" },
                "message_id": mid,
            })
            .to_string()
        })
        .collect();
    std::fs::write(&manifest, lines.join("\n") + "\n").unwrap();
    let json = dir.join(format!("{}.json", st.name));
    let out = Command::new(env!("CARGO_BIN_EXE_order-worker"))
        .env_clear()
        .envs(fx.operator_env())
        .args(["verify", "--table", &fx.orders_table])
        .args(["--groups-table", &fx.groups_table])
        .arg("--manifest")
        .arg(&manifest)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run order-worker verify");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let verdict = if st.ok {
        "VERDICT: OK"
    } else {
        "VERDICT: FAILED"
    };
    assert!(
        text.contains(verdict) && out.status.success() == st.ok,
        "state {}: expected {verdict} (exit {}), got exit {:?}:\n{text}\n{}",
        st.name,
        if st.ok { 0 } else { 1 },
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["verdict_ok"], st.ok, "{}", st.name);
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_fails_every_planted_state_and_passes_clean_ones_with_markers() {
    let region = Region::start("verifyreplay", Engine::Ministack).await;
    let dir = log_dir(&region.test);
    // Each state in its own groups with its own ids (one table: verify audits only the manifest's groups and
    // any group holding one of its items), so each verdict is about its state alone.
    let states = vec![
        State {
            name: "clean",
            // m1 a, m2 b, m3 a again (a duplicate marker), m4 c, m5 c with another payload (a conflict marker),
            // m6 a malformed body (rejected:m6).
            manifest: vec![
                (Some("c1-a"), "c1", "c1-m1"),
                (Some("c1-b"), "c1", "c1-m2"),
                (Some("c1-a"), "c1", "c1-m3"),
                (Some("c1-c"), "c1", "c1-m4"),
                (Some("c1-c"), "c1", "c1-m5"),
                (None, "c1", "c1-m6"),
            ],
            items: vec![
                rec("c1-a", "c1", 1, "c1-m1"),
                rec("c1-b", "c1", 2, "c1-m2"),
                marker("duplicate", "c1-m3", "c1-a", "c1", 3),
                rec("c1-c", "c1", 4, "c1-m4"),
                marker("conflict", "c1-m5", "c1-c", "c1", 5),
                It {
                    status: "REJECTED",
                    ..rec("rejected:c1-m6", "c1", 6, "c1-m6")
                },
            ],
            rows: vec![("c1", 6)],
            ok: true,
        },
        State {
            name: "self-duplicate",
            manifest: vec![(Some("s-a"), "s", "s-m1"), (Some("s-b"), "s", "s-m2")],
            items: vec![
                rec("s-a", "s", 1, "s-m1"),
                marker("duplicate", "s-m1", "s-a", "s", 2),
                rec("s-b", "s", 3, "s-m2"),
            ],
            rows: vec![("s", 3)],
            ok: false,
        },
        State {
            name: "nobody-sent",
            manifest: vec![(Some("u-a"), "u", "u-m1")],
            items: vec![rec("u-a", "u", 1, "u-m1"), rec("u-x", "u", 2, "u-mx")],
            rows: vec![("u", 2)],
            ok: false,
        },
        State {
            name: "nobody-sent-rejected",
            manifest: vec![(Some("r-a"), "r", "r-m1")],
            items: vec![
                rec("r-a", "r", 1, "r-m1"),
                It {
                    status: "REJECTED",
                    ..rec("rejected:r-mx", "r", 2, "r-mx")
                },
            ],
            rows: vec![("r", 2)],
            ok: false,
        },
        State {
            name: "other-group",
            manifest: vec![(Some("o-a"), "o", "o-m1"), (Some("o-b"), "o", "o-m2")],
            items: vec![
                rec("o-a", "o", 1, "o-m1"),
                rec("o-b", "o-elsewhere", 1, "o-m2"),
            ],
            rows: vec![("o", 1), ("o-elsewhere", 1)],
            ok: false,
        },
        State {
            name: "marker-early",
            manifest: vec![
                (Some("e-a"), "e", "e-m1"),
                (Some("e-b"), "e", "e-m2"),
                (Some("e-a"), "e", "e-m3"),
            ],
            items: vec![
                rec("e-a", "e", 1, "e-m1"),
                marker("duplicate", "e-m3", "e-a", "e", 2),
                rec("e-b", "e", 3, "e-m2"),
            ],
            rows: vec![("e", 3)],
            ok: false,
        },
    ];
    for st in &states {
        let text = replay(&region.fixture().await, &dir, st).await;
        eprintln!("--- {}\n{text}", st.name);
    }
}
