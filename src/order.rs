//! The order itself: parse, validate and total one message body. Pure functions, no I/O.
//!
//! A body either becomes an ACCEPTED order with a checked total, or a REJECTED one with a reason a person can
//! act on. Nothing in here can fail in a way that stops the worker: every input has a verdict.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Longest `order_id` we accept (characters of `[A-Za-z0-9_-]`).
pub const MAX_ORDER_ID_LEN: usize = 64;
/// Most line items in one order.
pub const MAX_ITEMS: usize = 100;
/// Largest quantity on one line.
pub const MAX_QTY: u64 = 10_000;
/// Largest unit price, in cents.
pub const MAX_UNIT_PRICE_CENTS: u64 = 1_000_000_000;
/// A rejection reason is stored in DynamoDB; keep it short enough that a hostile body cannot bloat the item.
pub const MAX_REASON_LEN: usize = 300;

/// One order as producers send it. Unknown fields are refused: a typo'd field name must not silently vanish.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Order {
    pub order_id: String,
    pub customer_id: String,
    pub items: Vec<LineItem>,
    pub currency: String,
    pub placed_at: String,
}

/// One line of an order.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LineItem {
    pub sku: String,
    pub qty: u64,
    pub unit_price_cents: u64,
}

/// What the worker decided about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accepted { total_cents: u64, currency: String },
    Rejected { reason: String },
}

/// The verdict plus what the record needs to identify the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluated {
    /// The `OrderID` the record is stored under: the order's own id, or `rejected:<MessageId>` when the body
    /// has no usable one (so a redelivery of the same message still lands on the same item).
    pub order_key: String,
    pub verdict: Verdict,
    /// Line items, when the body had an `items` array at all (0 otherwise).
    pub item_count: u32,
    /// SHA-256 of the raw body, hex: tells a redelivery (same hash) from a conflicting reuse of an id.
    pub payload_sha256: String,
}

/// Hex SHA-256 of a body.
pub fn sha256_hex(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let mut out = String::with_capacity(64);
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// True when `id` is 1-64 characters of `[A-Za-z0-9_-]`.
pub fn valid_order_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ORDER_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Decide what to record for one message of group `group_id` with SQS id `message_id`.
pub fn evaluate(body: &str, message_id: &str, group_id: &str) -> Evaluated {
    let payload_sha256 = sha256_hex(body.as_bytes());
    // First a loose parse, only to find an order id worth recording under and the item count; the strict
    // parse below decides acceptance.
    let loose: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let usable_id = loose
        .as_ref()
        .and_then(|v| v.get("order_id"))
        .and_then(|v| v.as_str())
        .filter(|id| valid_order_id(id))
        .map(str::to_owned);
    let item_count = loose
        .as_ref()
        .and_then(|v| v.get("items"))
        .and_then(|v| v.as_array())
        .map(|a| u32::try_from(a.len()).unwrap_or(u32::MAX))
        .unwrap_or(0);
    let order_key = usable_id
        .clone()
        .unwrap_or_else(|| format!("rejected:{message_id}"));

    let verdict = match check(body, group_id) {
        Ok((total_cents, currency)) => Verdict::Accepted {
            total_cents,
            currency,
        },
        Err(reason) => Verdict::Rejected {
            reason: truncate(&reason, MAX_REASON_LEN),
        },
    };
    Evaluated {
        order_key,
        verdict,
        item_count,
        payload_sha256,
    }
}

/// Any JSON value, read only to refuse an object that names one key twice (at any depth).
struct UniqueKeys;

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut s: A) -> Result<UniqueKeys, A::Error> {
        while s.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<UniqueKeys, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(k) = m.next_key::<String>()? {
            if !seen.insert(k.clone()) {
                return Err(serde::de::Error::custom(format!(
                    "the key {k:?} appears twice in one object"
                )));
            }
            m.next_value::<UniqueKeys>()?;
        }
        Ok(UniqueKeys)
    }
}

/// The strict parse and every rule of the order format. Returns the total and currency, or the reason.
fn check(body: &str, group_id: &str) -> Result<(u64, String), String> {
    if body.trim().is_empty() {
        return Err("empty body".into());
    }
    // serde fills a struct from a JSON array by position too: an array body (or an array item) would pass
    // as an order whose id the loose parse above cannot see, so a re-send is applied again under a new
    // `rejected:<MessageId>` key. Only objects are orders.
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("not a valid order: {e}"))?;
    // A JSON object that names a key twice means what its reader decides (serde keeps the last, other
    // readers the first): the worker could apply one order while another reader of the same body sees
    // another. Refused, at any depth.
    serde_json::from_str::<UniqueKeys>(body).map_err(|e| format!("not a valid order: {e}"))?;
    if !value.is_object() {
        return Err("not a valid order: the body must be a JSON object".into());
    }
    if let Some(items) = value.get("items").and_then(|v| v.as_array()) {
        if let Some(i) = items.iter().position(|item| !item.is_object()) {
            return Err(format!("items[{i}] must be a JSON object"));
        }
    }
    let order: Order =
        serde_json::from_value(value).map_err(|e| format!("not a valid order: {e}"))?;
    if !valid_order_id(&order.order_id) {
        return Err(format!(
            "order_id must be 1-{MAX_ORDER_ID_LEN} characters of [A-Za-z0-9_-]"
        ));
    }
    if order.customer_id.is_empty() || order.customer_id.len() > 128 {
        return Err("customer_id must be 1-128 characters".into());
    }
    // Producers use customer_id as the message group: a mismatch means the order was routed into the wrong
    // group, so its place in the sequence means nothing.
    if order.customer_id != group_id {
        return Err("customer_id does not match the message group".into());
    }
    if order.items.is_empty() || order.items.len() > MAX_ITEMS {
        return Err(format!("an order has 1-{MAX_ITEMS} items"));
    }
    if order.currency.len() != 3 || !order.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err("currency must be three capital letters".into());
    }
    if OffsetDateTime::parse(&order.placed_at, &Rfc3339).is_err() {
        return Err("placed_at must be an RFC 3339 timestamp".into());
    }
    let mut total: u64 = 0;
    for (i, item) in order.items.iter().enumerate() {
        if item.sku.is_empty() || item.sku.len() > 64 {
            return Err(format!("items[{i}].sku must be 1-64 characters"));
        }
        if item.qty == 0 || item.qty > MAX_QTY {
            return Err(format!("items[{i}].qty must be 1-{MAX_QTY}"));
        }
        if item.unit_price_cents > MAX_UNIT_PRICE_CENTS {
            return Err(format!(
                "items[{i}].unit_price_cents must be 0-{MAX_UNIT_PRICE_CENTS}"
            ));
        }
        let line = item
            .qty
            .checked_mul(item.unit_price_cents)
            .ok_or_else(|| format!("items[{i}] total overflows"))?;
        total = total
            .checked_add(line)
            .ok_or_else(|| "order total overflows".to_string())?;
    }
    Ok((total, order.currency))
}

/// Cut `s` to at most `max` bytes on a character boundary, the ellipsis that marks the cut included.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    const ELLIPSIS: &str = "…";
    let mut end = max.saturating_sub(ELLIPSIS.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(order_id: &str, extra: &str) -> String {
        format!(
            r#"{{"order_id":"{order_id}","customer_id":"cust-1","items":[{{"sku":"SKU-1","qty":2,"unit_price_cents":1299}},{{"sku":"SKU-2","qty":1,"unit_price_cents":1}}],"currency":"EUR","placed_at":"2026-11-25T12:00:00Z"{extra}}}"#
        )
    }

    fn reason(e: &Evaluated) -> &str {
        match &e.verdict {
            Verdict::Rejected { reason } => reason,
            Verdict::Accepted { .. } => panic!("expected a rejection, got {e:?}"),
        }
    }

    #[test]
    fn a_repeated_key_at_any_depth_is_rejected() {
        let ok = r#"{"order_id":"h-dupkey","customer_id":"c","items":[{"sku":"S","qty":1,"unit_price_cents":5}],"currency":"EUR","placed_at":"2026-11-25T12:00:00Z"}"#;
        assert!(matches!(
            evaluate(ok, "m", "c").verdict,
            Verdict::Accepted { .. }
        ));
        for body in [
            ok.replace(
                r#""order_id":"h-dupkey","#,
                r#""order_id":"h-dupkey","order_id":"h-dupkey","#,
            ),
            ok.replace(
                r#""order_id":"h-dupkey","#,
                r#""order_id":"h-dupkey","order_id":"other","#,
            ),
            ok.replace(r#""qty":1,"#, r#""qty":1,"qty":1000,"#),
            ok.replace(
                r#""currency":"EUR","#,
                r#""currency":"EUR","currency":"EUR","#,
            ),
        ] {
            match evaluate(&body, "m", "c").verdict {
                Verdict::Rejected { reason } => {
                    assert!(reason.contains("appears twice"), "{reason}")
                }
                v => panic!("{body}: {v:?}"),
            }
        }
    }

    #[test]
    fn accepts_and_totals_a_valid_order() {
        let e = evaluate(&body("ord-000001", ""), "m-1", "cust-1");
        assert_eq!(e.order_key, "ord-000001");
        assert_eq!(
            e.verdict,
            Verdict::Accepted {
                total_cents: 2599,
                currency: "EUR".into()
            }
        );
        assert_eq!(e.item_count, 2);
        assert_eq!(e.payload_sha256.len(), 64);
    }

    #[test]
    fn same_body_same_hash_different_body_different_hash() {
        let a = evaluate(&body("ord-1", ""), "m-1", "cust-1");
        let b = evaluate(&body("ord-1", ""), "m-2", "cust-1");
        let c = evaluate(&body("ord-1", r#","x":1"#), "m-3", "cust-1");
        assert_eq!(a.payload_sha256, b.payload_sha256);
        assert_ne!(a.payload_sha256, c.payload_sha256);
    }

    #[test]
    fn unusable_ids_are_keyed_by_message_id() {
        for bad in [
            "".to_string(),
            "not json".to_string(),
            "{}".to_string(),
            r#"{"order_id": 7}"#.to_string(),
            body("ordé-1", ""),
            body(&"a".repeat(65), ""),
            body("has space", ""),
        ] {
            let e = evaluate(&bad, "m-9", "cust-1");
            assert_eq!(e.order_key, "rejected:m-9", "{bad}");
            assert!(matches!(e.verdict, Verdict::Rejected { .. }), "{bad}");
        }
    }

    #[test]
    fn a_usable_id_with_a_bad_body_is_rejected_under_its_id() {
        let e = evaluate(&body("ord-2", r#","unknown":true"#), "m-1", "cust-1");
        assert_eq!(e.order_key, "ord-2");
        assert!(reason(&e).contains("unknown"), "{}", reason(&e));
    }

    #[test]
    fn field_rules() {
        let cases = [
            (r#""qty":2"#, r#""qty":0"#, "qty"),
            (r#""qty":2"#, r#""qty":10001"#, "qty"),
            (r#""qty":2"#, r#""qty":-1"#, "not a valid order"),
            (r#""qty":2"#, r#""qty":"2""#, "not a valid order"),
            (r#""qty":2"#, r#""qty":1e40"#, "not a valid order"),
            (r#""qty":2"#, r#""qty":2.5"#, "not a valid order"),
            (
                r#""unit_price_cents":1299"#,
                r#""unit_price_cents":1000000001"#,
                "unit_price_cents",
            ),
            (
                r#""unit_price_cents":1299"#,
                r#""unit_price_cents":99999999999999999999999"#,
                "not a valid order",
            ),
            (r#""currency":"EUR""#, r#""currency":"eur""#, "currency"),
            (r#""currency":"EUR""#, r#""currency":"EURO""#, "currency"),
            (
                r#""placed_at":"2026-11-25T12:00:00Z""#,
                r#""placed_at":"yesterday""#,
                "placed_at",
            ),
            (
                r#""customer_id":"cust-1""#,
                r#""customer_id":"cust-2""#,
                "group",
            ),
            (r#""sku":"SKU-1""#, r#""sku":"""#, "sku"),
        ];
        for (from, to, want) in cases {
            let b = body("ord-3", "").replacen(from, to, 1);
            assert_ne!(b, body("ord-3", ""), "case {to} did not apply");
            let e = evaluate(&b, "m-1", "cust-1");
            assert!(reason(&e).contains(want), "{to}: {}", reason(&e));
        }
    }

    #[test]
    fn placed_at_accepts_offsets() {
        let b = body("ord-4", "").replace("2026-11-25T12:00:00Z", "2026-11-25T12:00:00.123+05:30");
        assert!(matches!(
            evaluate(&b, "m", "cust-1").verdict,
            Verdict::Accepted { .. }
        ));
    }

    #[test]
    fn item_count_limits() {
        let item = r#"{"sku":"S","qty":1,"unit_price_cents":1}"#;
        let many = vec![item; 101].join(",");
        let b = format!(
            r#"{{"order_id":"o","customer_id":"c","items":[{many}],"currency":"EUR","placed_at":"2026-11-25T12:00:00Z"}}"#
        );
        let e = evaluate(&b, "m", "c");
        assert_eq!(e.item_count, 101);
        assert!(reason(&e).contains("1-100 items"));
        let none = r#"{"order_id":"o","customer_id":"c","items":[],"currency":"EUR","placed_at":"2026-11-25T12:00:00Z"}"#;
        assert!(reason(&evaluate(none, "m", "c")).contains("1-100 items"));
    }

    #[test]
    fn largest_valid_total_fits() {
        let item = r#"{"sku":"S","qty":10000,"unit_price_cents":1000000000}"#;
        let many = vec![item; 100].join(",");
        let b = format!(
            r#"{{"order_id":"o","customer_id":"c","items":[{many}],"currency":"EUR","placed_at":"2026-11-25T12:00:00Z"}}"#
        );
        assert_eq!(
            evaluate(&b, "m", "c").verdict,
            Verdict::Accepted {
                total_cents: 1_000_000_000_000_000,
                currency: "EUR".into()
            }
        );
    }

    #[test]
    fn huge_reasons_are_truncated() {
        let b = format!(r#"{{"order_id":"o","{}":1}}"#, "x".repeat(100_000));
        let r = reason(&evaluate(&b, "m", "c")).to_owned();
        // The stored Reason is at most MAX_REASON_LEN bytes, its ellipsis included (README: 300).
        assert!(r.len() <= MAX_REASON_LEN, "{}", r.len());
        assert!(r.ends_with('…'));
        assert_eq!(truncate("héllo", 5), "h…");
        assert_eq!(truncate("héllo", 6), "héllo");
        assert!(truncate(&"é".repeat(400), MAX_REASON_LEN).len() <= MAX_REASON_LEN);
    }

    #[test]
    fn only_a_json_object_is_an_order() {
        // serde would fill the struct from an array by position; such bodies must be rejected.
        let positional = r#"["o-1","c",[["SKU-1",2,1299]],"EUR","2026-11-25T12:00:00Z"]"#;
        let e = evaluate(positional, "m-1", "c");
        assert!(reason(&e).contains("JSON object"), "{}", reason(&e));
        assert_eq!(e.order_key, "rejected:m-1");
        let array_items = r#"{"order_id":"o-2","customer_id":"c","items":[["SKU-1",2,1299]],"currency":"EUR","placed_at":"2026-11-25T12:00:00Z"}"#;
        let e = evaluate(array_items, "m-2", "c");
        assert!(
            reason(&e).contains("items[0] must be a JSON object"),
            "{}",
            reason(&e)
        );
        assert_eq!(e.order_key, "o-2");
        for body in ["1", "\"o\"", "null", "true", "[]"] {
            assert!(
                matches!(evaluate(body, "m", "c").verdict, Verdict::Rejected { .. }),
                "{body}"
            );
        }
    }
}
