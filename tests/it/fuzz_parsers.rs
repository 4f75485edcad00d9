//! Seeded property and mutation tests of the parsers that see untrusted bytes: the order parser
//! (`order::evaluate`, every SQS message body) and the instance metadata parsers (`imds::parse_*`, every IMDS
//! answer). No fuzzing engine is needed: a seeded generator builds orders field by field (valid, almost valid
//! and hostile), mutates valid bodies byte by byte, and throws raw noise at every parser; each result is checked
//! against properties a person can read below. The seed and the number of cases are printed and written to
//! `target/test-logs/fuzz_parsers/cases.txt`; `FUZZ_SEED=<n>` replays a run, `FUZZ_SCALE=<k>` runs k times more.
//!
//! Properties of `evaluate(body, message_id, group)`:
//! - it never panics, and it is deterministic (same inputs, same `Evaluated`);
//! - `payload_sha256` is 64 lowercase hex digits and depends on the body only;
//! - `order_key` is the body's `order_id` when that is 1-64 of `[A-Za-z0-9_-]`, else `rejected:<message_id>`;
//! - `item_count` is the length of the body's `items` array (0 when there is none);
//! - ACCEPTED implies: the body is a JSON object with exactly the five fields, a valid id (= `order_key`),
//!   `customer_id` = the group, 1-100 items each with a 1-64 byte sku, qty 1-10000, price 0-1e9, a currency of
//!   three capital ASCII letters (= the verdict's), an RFC 3339 `placed_at`, and a total equal to the sum of
//!   qty * price computed independently in u128;
//! - for generated orders the verdict equals an independent model of the rules (acceptance both ways);
//! - a rejection reason is at most `MAX_REASON_LEN` bytes plus the ellipsis.
//!
//! Properties of the metadata parsers: never panic; `parse_instance_action` accepts exactly the three actions
//! with an RFC 3339 time and ignores extra fields; `parse_rebalance` needs `noticeTime` as RFC 3339;
//! `parse_lifecycle_state` returns `body.trim()` when, and only when, it is one of `LIFECYCLE_STATES`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use fastrand::Rng;
use order_worker::imds::{
    parse_instance_action, parse_lifecycle_state, parse_rebalance, SpotAction, LIFECYCLE_STATES,
};
use order_worker::order::{
    evaluate, valid_order_id, Evaluated, Verdict, MAX_ITEMS, MAX_ORDER_ID_LEN, MAX_QTY,
    MAX_REASON_LEN, MAX_UNIT_PRICE_CENTS,
};
use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const DEFAULT_SEED: u64 = 0x5eed_0007;

fn seed() -> u64 {
    std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED)
}

fn scale() -> usize {
    std::env::var("FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// Append one line to the record of cases run (several tests write it, one line each).
fn record(line: &str) {
    eprintln!("fuzz_parsers: {line}");
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-logs/fuzz_parsers");
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("cases.txt"))
    {
        use std::io::Write;
        let _ = writeln!(
            f,
            "{} {line}",
            OffsetDateTime::now_utc().format(&Rfc3339).unwrap()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

fn pick<'a, T>(rng: &mut Rng, xs: &'a [T]) -> &'a T {
    &xs[rng.usize(..xs.len())]
}

/// A string from a mix of alphabets: the id charset, punctuation, JSON-significant bytes, non-ASCII.
fn any_string(rng: &mut Rng, max_len: usize) -> String {
    const ALPHABETS: &[&str] = &[
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-",
        "0123456789",
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        " \t\r\n\"\\/{}[]:,.+-eE",
    ];
    const ODD: &[&str] = &[
        "é", "€", "😀", "\u{0}", "\u{7f}", "\u{200b}", "Ａ", "ß", "\u{fffd}",
    ];
    let len = rng.usize(..=max_len);
    let alphabet = pick(rng, ALPHABETS).as_bytes();
    let mut s = String::with_capacity(len);
    for _ in 0..len {
        if rng.u8(..) < 8 {
            s.push_str(ODD[rng.usize(..ODD.len())]);
        } else {
            s.push(alphabet[rng.usize(..alphabet.len())] as char);
        }
    }
    s
}

fn id_like(rng: &mut Rng) -> String {
    match rng.u8(..10) {
        0 => String::new(),
        1 => "a".repeat(MAX_ORDER_ID_LEN),
        2 => "b".repeat(MAX_ORDER_ID_LEN + 1),
        3 => any_string(rng, 70),
        4 => format!("ord {}", rng.u32(..)),
        _ => format!("ord-{:06}", rng.u32(..1_000_000)),
    }
}

fn interesting_u64(rng: &mut Rng, max: u64) -> u64 {
    match rng.u8(..10) {
        0 => 0,
        1 => 1,
        2 => max,
        3 => max + 1,
        4 => u64::MAX,
        5 => u64::MAX / 2 + 1,
        6 => rng.u64(..),
        _ => rng.u64(1..=max),
    }
}

/// A JSON number that is not a u64: negative, fractional, exponent, beyond u64.
fn odd_number(rng: &mut Rng) -> Value {
    let text = *pick(
        rng,
        &[
            "-1",
            "2.5",
            "1e3",
            "1e40",
            "18446744073709551616",
            "99999999999999999999999",
            "-0",
            "0.0",
        ],
    );
    serde_json::from_str(text).unwrap_or(Value::Null)
}

fn placed_at(rng: &mut Rng) -> (Value, bool) {
    const GOOD: &[&str] = &[
        "2026-11-25T12:00:00Z",
        "2026-11-25T12:00:00.123+05:30",
        "1970-01-01T00:00:00Z",
        "2026-02-28T23:59:59-08:00",
        "2024-02-29T00:00:00.000000001Z",
    ];
    const BAD: &[&str] = &[
        "",
        "yesterday",
        "2026-11-25",
        "2026-11-25 12:00:00",
        "2026-13-25T12:00:00Z",
        "2026-02-30T12:00:00Z",
        "2026-11-25T25:00:00Z",
        "2026-11-25T12:00:00",
        "2025-02-29T00:00:00Z",
    ];
    match rng.u8(..10) {
        0..=6 => (json!(*pick(rng, GOOD)), true),
        7 | 8 => (json!(*pick(rng, BAD)), false),
        _ => (json!(rng.u32(..)), false),
    }
}

/// What a generated order should get, according to an independent model of the rules.
#[derive(Debug, PartialEq, Eq)]
enum Model {
    Accept { total: u128, currency: String },
    Reject,
}

/// Build an order body field by field, mostly valid, each field sometimes wrong, with the model's verdict.
/// `None` in the model means "no opinion" (the generator made something the model does not judge).
fn gen_order(rng: &mut Rng, group: &str) -> (String, Option<Model>) {
    let mut obj = Map::new();
    let mut ok = true;
    let mut judged = true;

    // order_id
    match rng.u8(..20) {
        0 => {
            ok = false; // missing
        }
        1 => {
            obj.insert("order_id".into(), json!(rng.u32(..)));
            ok = false;
        }
        _ => {
            let id = if rng.bool() {
                format!("ord-{:06}", rng.u32(..1_000_000))
            } else {
                id_like(rng)
            };
            ok &= valid_order_id(&id);
            obj.insert("order_id".into(), json!(id));
        }
    }
    // customer_id
    match rng.u8(..20) {
        0 => ok = false,
        1 => {
            obj.insert("customer_id".into(), json!(format!("{group}x")));
            ok = false;
        }
        2 => {
            obj.insert("customer_id".into(), json!(null));
            ok = false;
        }
        _ => {
            obj.insert("customer_id".into(), json!(group));
            ok &= !group.is_empty() && group.len() <= 128;
        }
    }
    // items
    let n_items = match rng.u8(..20) {
        0 => 0,
        1 => MAX_ITEMS,
        2 => MAX_ITEMS + 1,
        3..=5 => rng.usize(2..=20),
        _ => 1,
    };
    let mut total: u128 = 0;
    let mut items = Vec::with_capacity(n_items);
    if n_items == 0 || n_items > MAX_ITEMS {
        ok = false;
    }
    for _ in 0..n_items {
        let mut item = Map::new();
        let sku = match rng.u8(..20) {
            0 => String::new(),
            1 => "s".repeat(65),
            2 => any_string(rng, 70),
            _ => format!("SKU-{}", rng.u16(..)),
        };
        ok &= !sku.is_empty() && sku.len() <= 64;
        item.insert("sku".into(), json!(sku));
        if rng.u8(..40) == 0 {
            item.insert("qty".into(), odd_number(rng));
            judged = false; // e.g. "1e3": serde may or may not take it; the invariants still apply
        } else {
            let qty = if rng.u8(..4) == 0 {
                interesting_u64(rng, MAX_QTY)
            } else {
                rng.u64(1..=20)
            };
            ok &= (1..=MAX_QTY).contains(&qty);
            item.insert("qty".into(), json!(qty));
            let price = if rng.u8(..4) == 0 {
                interesting_u64(rng, MAX_UNIT_PRICE_CENTS)
            } else {
                rng.u64(0..=100_000)
            };
            ok &= price <= MAX_UNIT_PRICE_CENTS;
            item.insert("unit_price_cents".into(), json!(price));
            total = total.saturating_add(qty as u128 * price as u128);
        }
        if rng.u8(..60) == 0 {
            item.insert("discount".into(), json!(1));
            ok = false;
        }
        if rng.u8(..60) == 0 {
            item.remove("sku");
            ok = false;
        }
        items.push(Value::Object(item));
    }
    if rng.u8(..40) == 0 {
        obj.insert("items".into(), json!({"sku": "x"}));
        ok = false;
    } else {
        obj.insert("items".into(), Value::Array(items));
    }
    // currency
    let currency = match rng.u8(..12) {
        0 => "eur".to_string(),
        1 => "EURO".to_string(),
        2 => "EU".to_string(),
        3 => "ÉUR".to_string(),
        4 => any_string(rng, 4),
        _ => pick(rng, &["EUR", "USD", "GBP", "JPY", "CHF"]).to_string(),
    };
    ok &= currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase());
    obj.insert("currency".into(), json!(currency));
    // placed_at
    let (p, p_ok) = placed_at(rng);
    ok &= p_ok;
    obj.insert("placed_at".into(), p);
    // an unknown field
    if rng.u8(..30) == 0 {
        obj.insert("note".into(), json!("hi"));
        ok = false;
    }
    let body = Value::Object(obj).to_string();
    let model = if !judged {
        None
    } else if ok {
        Some(Model::Accept { total, currency })
    } else {
        Some(Model::Reject)
    };
    (body, model)
}

fn valid_body(rng: &mut Rng, group: &str) -> String {
    loop {
        if let (b, Some(Model::Accept { .. })) = gen_order(rng, group) {
            return b;
        }
    }
}

/// Byte-level mutations of `seed`, kept as valid UTF-8 (SQS bodies are Unicode text).
fn mutate(rng: &mut Rng, seed: &str, other: &str) -> String {
    let mut b = seed.as_bytes().to_vec();
    for _ in 0..rng.usize(1..=4) {
        if b.is_empty() {
            b.push(b'{');
        }
        let at = rng.usize(..b.len());
        match rng.u8(..10) {
            0 => b[at] ^= 1 << rng.u8(..8),
            1 => {
                b.remove(at);
            }
            2 => b.insert(at, *pick(rng, b"{}[]\":,0123456789-.eE \\nutfal")),
            3 => {
                let end = (at + rng.usize(..16)).min(b.len());
                let chunk = b[at..end].to_vec();
                b.splice(at..at, chunk);
            }
            4 => b.truncate(at),
            5 => {
                // splice with another body
                let o = other.as_bytes();
                let from = rng.usize(..o.len().max(1)).min(o.len());
                b.truncate(at);
                b.extend_from_slice(&o[from..]);
            }
            6 => {
                // replace a digit run with a huge or negative number
                if b[at].is_ascii_digit() {
                    let mut end = at;
                    while end < b.len() && b[end].is_ascii_digit() {
                        end += 1;
                    }
                    let n = *pick(
                        rng,
                        &[
                            "18446744073709551615",
                            "18446744073709551616",
                            "-5",
                            "1e400",
                            "0",
                        ],
                    );
                    b.splice(at..end, n.bytes());
                }
            }
            7 => {
                let s = *pick(rng, &["é", "\\u0000", "\\ud800", "😀", "\u{feff}"]);
                b.splice(at..at, s.bytes());
            }
            8 => {
                // duplicate a key
                let s = String::from_utf8_lossy(&b).into_owned();
                b = s
                    .replacen("\"currency\"", "\"currency\":\"USD\",\"currency\"", 1)
                    .into_bytes();
            }
            _ => {
                let end = (at + rng.usize(..8)).min(b.len());
                b.drain(at..end);
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

// ---------------------------------------------------------------------------------------------
// The order properties
// ---------------------------------------------------------------------------------------------

/// Run `evaluate` without letting a panic escape; the input is shown on failure.
fn eval_checked(body: &str, message_id: &str, group: &str) -> Evaluated {
    match catch_unwind(AssertUnwindSafe(|| evaluate(body, message_id, group))) {
        Ok(e) => e,
        Err(_) => {
            panic!("evaluate panicked on body {body:?} (group {group:?}, message {message_id:?})")
        }
    }
}

/// Every property that must hold for any input. Returns the verdict for the caller's tallies.
fn check_evaluate(body: &str, message_id: &str, group: &str) -> Evaluated {
    let e = eval_checked(body, message_id, group);
    // Evaluated again under another message and group: the hash must not move; and a sample of the cases
    // is evaluated twice with the same inputs (determinism). Fewer calls keep the debug build under 30 s.
    let other = eval_checked(body, "other-message", "other-group");
    assert_eq!(
        e.payload_sha256, other.payload_sha256,
        "hash depends on more than the body"
    );
    if e.payload_sha256.as_bytes()[0] < b'2' {
        assert_eq!(
            e,
            eval_checked(body, message_id, group),
            "not deterministic on {body:?}"
        );
    }
    assert_eq!(e.payload_sha256.len(), 64, "{body:?}");
    assert!(
        e.payload_sha256
            .bytes()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
        "hash not lowercase hex: {}",
        e.payload_sha256
    );

    let loose: Option<Value> = serde_json::from_str(body).ok();
    let loose_id = loose
        .as_ref()
        .and_then(|v| v.get("order_id"))
        .and_then(Value::as_str)
        .filter(|id| valid_order_id(id));
    match loose_id {
        Some(id) => assert_eq!(e.order_key, id, "{body:?}"),
        None => assert_eq!(e.order_key, format!("rejected:{message_id}"), "{body:?}"),
    }
    let items_len = loose
        .as_ref()
        .and_then(|v| v.get("items"))
        .and_then(Value::as_array)
        .map_or(0, |a| a.len() as u32);
    assert_eq!(e.item_count, items_len, "{body:?}");

    match &e.verdict {
        Verdict::Accepted {
            total_cents,
            currency,
        } => {
            let v = loose
                .as_ref()
                .unwrap_or_else(|| panic!("accepted a body that is not JSON: {body:?}"));
            let obj = v
                .as_object()
                .unwrap_or_else(|| panic!("accepted a non-object: {body:?}"));
            let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(
                keys,
                ["currency", "customer_id", "items", "order_id", "placed_at"],
                "accepted with other fields: {body:?}"
            );
            let id = obj["order_id"].as_str().unwrap();
            assert!(valid_order_id(id), "accepted an invalid id: {body:?}");
            assert_eq!(e.order_key, id);
            assert_eq!(
                obj["customer_id"].as_str(),
                Some(group),
                "accepted from another group: {body:?}"
            );
            let c = obj["currency"].as_str().unwrap();
            assert_eq!(c, currency, "{body:?}");
            assert!(
                c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()),
                "accepted currency {c:?}"
            );
            let p = obj["placed_at"].as_str().unwrap();
            assert!(
                OffsetDateTime::parse(p, &Rfc3339).is_ok(),
                "accepted placed_at {p:?}"
            );
            let items = obj["items"].as_array().unwrap();
            assert!((1..=MAX_ITEMS).contains(&items.len()), "{body:?}");
            let mut sum: u128 = 0;
            for it in items {
                let it = it.as_object().unwrap();
                assert_eq!(it.len(), 3, "accepted an item with other fields: {body:?}");
                let sku = it["sku"].as_str().unwrap();
                assert!(!sku.is_empty() && sku.len() <= 64, "accepted sku {sku:?}");
                let q = it["qty"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("accepted qty {:?}", it["qty"]));
                let p = it["unit_price_cents"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("accepted price {:?}", it["unit_price_cents"]));
                assert!((1..=MAX_QTY).contains(&q), "accepted qty {q}");
                assert!(p <= MAX_UNIT_PRICE_CENTS, "accepted price {p}");
                sum += q as u128 * p as u128;
            }
            assert_eq!(
                *total_cents as u128, sum,
                "total is not the sum of the lines: {body:?}"
            );
        }
        Verdict::Rejected { reason } => {
            assert!(!reason.is_empty(), "empty reason for {body:?}");
            assert!(
                reason.len() <= MAX_REASON_LEN + '…'.len_utf8(),
                "reason of {} bytes",
                reason.len()
            );
        }
    }
    e
}

#[derive(Default)]
struct Tally {
    cases: usize,
    accepted: usize,
    rejected: usize,
    model_checked: usize,
}

impl Tally {
    fn add(&mut self, e: &Evaluated) {
        self.cases += 1;
        match e.verdict {
            Verdict::Accepted { .. } => self.accepted += 1,
            Verdict::Rejected { .. } => self.rejected += 1,
        }
    }
}

fn group_for(rng: &mut Rng) -> String {
    match rng.u8(..30) {
        0 => String::new(),
        1 => "g".repeat(129),
        2 => any_string(rng, 20),
        _ => format!("cust-{}", rng.u16(..1000)),
    }
}

#[test]
fn order_parser_generated_orders_match_the_model() {
    let seed = seed();
    let mut rng = Rng::with_seed(seed);
    let n = 10_000 * scale();
    let start = Instant::now();
    let mut t = Tally::default();
    let mut mismatches = Vec::new();
    for i in 0..n {
        let group = group_for(&mut rng);
        let (body, model) = gen_order(&mut rng, &group);
        let mid = format!("m-{i}");
        let e = check_evaluate(&body, &mid, &group);
        t.add(&e);
        if let Some(m) = model {
            t.model_checked += 1;
            let got = match &e.verdict {
                Verdict::Accepted {
                    total_cents,
                    currency,
                } => Model::Accept {
                    total: *total_cents as u128,
                    currency: currency.clone(),
                },
                Verdict::Rejected { .. } => Model::Reject,
            };
            if got != m && mismatches.len() < 10 {
                mismatches.push(format!(
                    "model {m:?}, got {:?} for group {group:?} body {body}",
                    e.verdict
                ));
            }
        }
    }
    record(&format!(
        "order generated: {} cases (seed {seed:#x}), accepted {}, rejected {}, {} checked against the model, {:.1}s",
        t.cases,
        t.accepted,
        t.rejected,
        t.model_checked,
        start.elapsed().as_secs_f64()
    ));
    assert!(
        mismatches.is_empty(),
        "verdicts differ from the model:\n{}",
        mismatches.join("\n")
    );
    // The generator must reach both sides, or the test proves little.
    assert!(
        t.accepted > n / 20 && t.rejected > n / 20,
        "accepted {} rejected {}",
        t.accepted,
        t.rejected
    );
}

#[test]
fn order_parser_survives_mutated_and_random_bodies() {
    let seed = seed() ^ 0x9e37_79b9_7f4a_7c15;
    let mut rng = Rng::with_seed(seed);
    let n = 10_000 * scale();
    let start = Instant::now();
    let mut t = Tally::default();
    let group = "cust-7";
    let seeds: Vec<String> = (0..64).map(|_| valid_body(&mut rng, group)).collect();
    for i in 0..n {
        let body = match rng.u8(..10) {
            0 => any_string(&mut rng, 200),
            1 => {
                // random bytes, lossily made text
                let bytes: Vec<u8> = (0..rng.usize(..300)).map(|_| rng.u8(..)).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
            2 => {
                // deep nesting and huge values
                let depth = rng.usize(1..=2000);
                match rng.u8(..3) {
                    0 => format!("{}{}", "[".repeat(depth), "]".repeat(depth)),
                    1 => format!(
                        r#"{{"order_id":"o","items":{}1{}}}"#,
                        "[".repeat(depth),
                        "]".repeat(depth)
                    ),
                    _ => format!(r#"{{"order_id":"{}"}}"#, "x".repeat(depth * 50)),
                }
            }
            _ => {
                let a = pick(&mut rng, &seeds).clone();
                let b = pick(&mut rng, &seeds).clone();
                mutate(&mut rng, &a, &b)
            }
        };
        let e = check_evaluate(&body, &format!("m-{i}"), group);
        t.add(&e);
    }
    record(&format!(
        "order mutated/random: {} cases (seed {seed:#x}), accepted {}, rejected {}, {:.1}s",
        t.cases,
        t.accepted,
        t.rejected,
        start.elapsed().as_secs_f64()
    ));
    assert!(
        t.accepted > 0,
        "no mutation kept a valid order: the mutator is broken"
    );
}

// ---------------------------------------------------------------------------------------------
// The metadata parsers
// ---------------------------------------------------------------------------------------------

fn rfc3339(rng: &mut Rng) -> (String, bool) {
    match rng.u8(..10) {
        0..=6 => {
            let t = OffsetDateTime::from_unix_timestamp(rng.i64(0..4_102_444_800)).unwrap();
            (t.format(&Rfc3339).unwrap(), true)
        }
        7 => ("2026-11-25T08:22:00+01:00".into(), true),
        _ => {
            let (v, ok) = placed_at(rng);
            (
                v.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string()),
                ok && v.is_string(),
            )
        }
    }
}

/// Accepted documents that `serde_json::Value` refuses: serde skips unknown fields without validating all of
/// them (a number beyond f64 such as `1e400`, a lone surrogate escape such as `\ud800` in an ignored key), so the
/// typed parsers accept such a document when `action` / `time` / `noticeTime` are right. Counted and printed.
static LAX_ACCEPTS: AtomicUsize = AtomicUsize::new(0);

/// The body as a JSON value, or None (counted) when only the typed parse, which skips unknown fields, takes it.
fn json_of_accepted(body: &str) -> Option<Value> {
    match serde_json::from_str::<Value>(body) {
        Ok(v) => Some(v),
        Err(_) => {
            LAX_ACCEPTS.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

fn check_instance_action(body: &str) -> bool {
    let r = catch_unwind(AssertUnwindSafe(|| parse_instance_action(body)))
        .unwrap_or_else(|_| panic!("parse_instance_action panicked on {body:?}"));
    match r {
        Ok(a) => {
            let Some(v) = json_of_accepted(body) else {
                return true;
            };
            assert_eq!(v["action"].as_str(), Some(a.action.as_str()), "{body:?}");
            assert!(matches!(
                a.action,
                SpotAction::Terminate | SpotAction::Stop | SpotAction::Hibernate
            ));
            let t = OffsetDateTime::parse(v["time"].as_str().unwrap(), &Rfc3339).unwrap();
            assert_eq!(t, a.time, "{body:?}");
            true
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            false
        }
    }
}

fn check_rebalance(body: &str) -> bool {
    let r = catch_unwind(AssertUnwindSafe(|| parse_rebalance(body)))
        .unwrap_or_else(|_| panic!("parse_rebalance panicked on {body:?}"));
    match r {
        Ok(rb) => {
            let Some(v) = json_of_accepted(body) else {
                return true;
            };
            let t = OffsetDateTime::parse(v["noticeTime"].as_str().unwrap(), &Rfc3339).unwrap();
            assert_eq!(t, rb.notice_time, "{body:?}");
            true
        }
        Err(_) => false,
    }
}

fn check_lifecycle(body: &str) -> bool {
    let r = catch_unwind(AssertUnwindSafe(|| parse_lifecycle_state(body)))
        .unwrap_or_else(|_| panic!("parse_lifecycle_state panicked on {body:?}"));
    let known = LIFECYCLE_STATES.contains(&body.trim());
    match r {
        Ok(s) => {
            assert!(known, "accepted {body:?}");
            assert_eq!(s.as_str(), body.trim());
            true
        }
        Err(e) => {
            assert!(!known, "refused a known state {body:?}: {e}");
            // The lifecycle parser bounds what it echoes (64 characters of the body).
            assert!(
                e.to_string().chars().count() < 64 * 6 + 64,
                "unbounded error for {body:?}"
            );
            false
        }
    }
}

#[test]
fn imds_parsers_never_panic_and_accept_exactly_the_documents() {
    let seed = seed() ^ 0x1bd1_1bda_a9fc_1a22;
    let mut rng = Rng::with_seed(seed);
    let n = 10_000 * scale();
    let start = Instant::now();
    let (mut ia_ok, mut rb_ok, mut ls_ok) = (0usize, 0usize, 0usize);
    let mut longest_error = 0usize;
    for _ in 0..n {
        // instance-action: generated documents with a model verdict
        let action = *pick(
            &mut rng,
            &["terminate", "stop", "hibernate", "Terminate", "reboot", ""],
        );
        let action_ok = matches!(action, "terminate" | "stop" | "hibernate");
        let (time, time_ok) = rfc3339(&mut rng);
        let mut doc = Map::new();
        let mut expect = action_ok && time_ok;
        match rng.u8(..12) {
            0 => expect = false, // no action
            1 => {
                doc.insert("action".into(), json!(7));
                expect = false;
            }
            _ => {
                doc.insert("action".into(), json!(action));
            }
        }
        if rng.u8(..12) == 0 {
            expect = false; // no time
        } else {
            doc.insert("time".into(), json!(time));
        }
        if rng.u8(..4) == 0 {
            doc.insert("extra".into(), json!({"x": [1, 2]})); // AWS may add fields: ignored
        }
        let body = Value::Object(doc).to_string();
        let got = check_instance_action(&body);
        assert_eq!(got, expect, "instance-action {body:?}");
        ia_ok += got as usize;
        // and mutations / noise
        let m = mutate(&mut rng, &body, r#"{"noticeTime":"2026-11-25T08:17:00Z"}"#);
        check_instance_action(&m);
        check_instance_action(&any_string(&mut rng, 80));
        if let Err(e) = parse_instance_action(&format!(
            r#"{{"action":"{}","time":"2026-11-25T08:22:00Z"}}"#,
            "z".repeat(rng.usize(..2000))
        )) {
            longest_error = longest_error.max(e.to_string().len());
        }

        // rebalance
        let (t, t_ok) = rfc3339(&mut rng);
        let (body, expect) = match rng.u8(..10) {
            0 => (json!({"notice_time": t}).to_string(), false),
            1 => (json!({"noticeTime": 5}).to_string(), false),
            2 => (json!({"noticeTime": t, "other": true}).to_string(), t_ok),
            _ => (json!({ "noticeTime": t }).to_string(), t_ok),
        };
        let got = check_rebalance(&body);
        assert_eq!(got, expect, "rebalance {body:?}");
        rb_ok += got as usize;
        check_rebalance(&mutate(&mut rng, &body, "{}"));
        check_rebalance(&any_string(&mut rng, 80));

        // target lifecycle state
        let state = *pick(&mut rng, &LIFECYCLE_STATES);
        let body = match rng.u8(..8) {
            0 => format!("{state}\n"),
            1 => format!("  {state}\t"),
            2 => state.to_lowercase(),
            3 => format!("{state}x"),
            4 => any_string(&mut rng, 200),
            5 => mutate(&mut rng, state, "InService"),
            _ => state.to_string(),
        };
        ls_ok += check_lifecycle(&body) as usize;
    }
    let cases = n * 8;
    record(&format!(
        "imds parsers: {cases} cases (seed {seed:#x}): instance-action accepted {ia_ok}, rebalance accepted {rb_ok}, \
         lifecycle accepted {ls_ok}; {} accepted with content serde_json::Value refuses in an ignored field; \
         longest instance-action error {longest_error} bytes; {:.1}s",
        LAX_ACCEPTS.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64()
    ));
    assert!(
        ia_ok > n / 4 && rb_ok > n / 4 && ls_ok > n / 4,
        "generators reach too few valid documents"
    );
}
