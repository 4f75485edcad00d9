//! The items the worker writes, in one place: attribute names, the statuses an item can carry, and the
//! builders of an order record and of a marker. The store writes them, `verify` reads them, the tests check
//! them; none of them spells an attribute name of its own.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

/// Orders table: the partition key.
pub const ORDER_ID: &str = "OrderID";
pub const GROUP_ID: &str = "MessageGroupId";
pub const POSITION: &str = "GroupPosition";
pub const STATUS: &str = "Status";
pub const REASON: &str = "Reason";
pub const TOTAL_CENTS: &str = "TotalCents";
pub const CURRENCY: &str = "Currency";
pub const ITEM_COUNT: &str = "ItemCount";
pub const PAYLOAD_SHA256: &str = "PayloadSha256";
pub const MESSAGE_ID: &str = "SqsMessageId";
pub const SEQUENCE_NUMBER: &str = "SqsSequenceNumber";
pub const RECEIVE_COUNT: &str = "ReceiveCount";
pub const PROCESSED_BY: &str = "ProcessedBy";
pub const PROCESSED_AT: &str = "ProcessedAt";
/// A marker: the OrderID whose record holds the order this message carried again.
pub const MARKER_OF: &str = "MarkerOf";

/// Groups table: the partition key.
pub const GROUP_KEY: &str = "MessageGroupId";
/// The last position handed out in the group.
pub const LAST_POSITION: &str = "LastPosition";
/// The SequenceNumbers (strings) of the last positions handed out, see [`crate::store::protocol`].
pub const CLAIMED: &str = "Claimed";
pub const UPDATED_AT: &str = "UpdatedAt";
/// Which store protocol wrote the row (N). See [`crate::store::protocol`], "The protocol fence".
pub const PROTOCOL: &str = "Protocol";
/// The store protocol this build speaks: claims by SequenceNumber (`LastPosition` and `Claimed`). Rows it
/// writes carry `Protocol: 2` and `LastPosition` as a string of digits (S), which no earlier build's
/// condition on a numeric `LastPosition` can match. Protocol 1, never written as such, is the transactional
/// design's row (`LastPosition` a number, no `Claimed`).
pub const STORE_PROTOCOL: u64 = 2;

/// Every attribute an accepted order's record carries (a rejected one has `Reason` instead of the total).
pub const ACCEPTED_ATTRIBUTES: &[&str] = &[
    ORDER_ID,
    GROUP_ID,
    POSITION,
    STATUS,
    TOTAL_CENTS,
    CURRENCY,
    ITEM_COUNT,
    PAYLOAD_SHA256,
    MESSAGE_ID,
    SEQUENCE_NUMBER,
    RECEIVE_COUNT,
    PROCESSED_BY,
    PROCESSED_AT,
];

/// What an item in the orders table is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// An order applied.
    Accepted,
    /// A message recorded as not an order (malformed, or refused by DynamoDB), with its reason.
    Rejected,
    /// A marker: this message carried an order (same payload) already recorded by an earlier message.
    Duplicate,
    /// A marker: this message carried another payload under an OrderID already recorded.
    Conflict,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Accepted => "ACCEPTED",
            Status::Rejected => "REJECTED",
            Status::Duplicate => "DUPLICATE",
            Status::Conflict => "CONFLICT",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        [
            Status::Accepted,
            Status::Rejected,
            Status::Duplicate,
            Status::Conflict,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }

    /// The `status` label of `order_worker_orders_total`.
    pub fn label(self) -> &'static str {
        match self {
            Status::Accepted => "accepted",
            Status::Rejected => "rejected",
            Status::Duplicate => "duplicate",
            Status::Conflict => "conflict",
        }
    }

    /// A marker fills a position without being an order.
    pub fn is_marker(self) -> bool {
        matches!(self, Status::Duplicate | Status::Conflict)
    }
}

/// One order record, ready to write except for its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub order_key: String,
    pub group_id: String,
    /// Accepted or Rejected.
    pub status: Status,
    pub reason: Option<String>,
    pub total_cents: Option<u64>,
    pub currency: Option<String>,
    pub item_count: u32,
    pub payload_sha256: String,
    pub sqs_message_id: String,
    pub sqs_sequence_number: Option<String>,
    pub receive_count: u32,
    pub processed_by: String,
    pub processed_at: String,
}

pub type Item = HashMap<String, AttributeValue>;

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// The attributes every item of a message carries, record or marker.
fn common(r: &Record, key: &str, status: Status, position: u64) -> Item {
    let mut m = HashMap::from([
        (ORDER_ID.to_owned(), s(key)),
        (GROUP_ID.to_owned(), s(&r.group_id)),
        (POSITION.to_owned(), n(position)),
        (STATUS.to_owned(), s(status.as_str())),
        (PAYLOAD_SHA256.to_owned(), s(&r.payload_sha256)),
        (MESSAGE_ID.to_owned(), s(&r.sqs_message_id)),
        (RECEIVE_COUNT.to_owned(), n(r.receive_count)),
        (PROCESSED_BY.to_owned(), s(&r.processed_by)),
        (PROCESSED_AT.to_owned(), s(&r.processed_at)),
    ]);
    if let Some(seq) = &r.sqs_sequence_number {
        m.insert(SEQUENCE_NUMBER.to_owned(), s(seq));
    }
    m
}

/// The DynamoDB item of one record at one position.
pub fn record_item(r: &Record, position: u64) -> Item {
    let mut m = common(r, &r.order_key, r.status, position);
    m.insert(ITEM_COUNT.to_owned(), n(r.item_count));
    if let Some(reason) = &r.reason {
        m.insert(REASON.to_owned(), s(reason));
    }
    if let Some(total) = r.total_cents {
        m.insert(TOTAL_CENTS.to_owned(), n(total));
    }
    if let Some(currency) = &r.currency {
        m.insert(CURRENCY.to_owned(), s(currency));
    }
    m
}

/// The marker a message leaves at its position when its OrderID is already recorded by another message.
pub fn marker_item(r: &Record, key: &str, status: Status, position: u64) -> Item {
    debug_assert!(status.is_marker());
    let mut m = common(r, key, status, position);
    m.insert(MARKER_OF.to_owned(), s(&r.order_key));
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            order_key: "a".into(),
            group_id: "g".into(),
            status: Status::Accepted,
            reason: None,
            total_cents: Some(10),
            currency: Some("EUR".into()),
            item_count: 1,
            payload_sha256: "ab".into(),
            sqs_message_id: "m-a".into(),
            sqs_sequence_number: Some("1".into()),
            receive_count: 1,
            processed_by: "i-1".into(),
            processed_at: "2026-11-25T12:00:00.000Z".into(),
        }
    }

    #[test]
    fn a_record_has_every_attribute_and_a_rejected_one_its_reason() {
        let mut r = record();
        let m = record_item(&r, 3);
        for k in ACCEPTED_ATTRIBUTES {
            assert!(m.contains_key(*k), "{k}");
        }
        assert!(!m.contains_key(REASON));
        r.status = Status::Rejected;
        r.reason = Some("bad".into());
        r.total_cents = None;
        r.currency = None;
        let m = record_item(&r, 1);
        assert!(
            m.contains_key(REASON) && !m.contains_key(TOTAL_CENTS) && !m.contains_key(CURRENCY)
        );
    }

    #[test]
    fn a_marker_names_the_order_it_repeats_and_carries_no_total() {
        let m = marker_item(&record(), "duplicate:m-a", Status::Duplicate, 4);
        assert_eq!(m[ORDER_ID], AttributeValue::S("duplicate:m-a".into()));
        assert_eq!(m[MARKER_OF], AttributeValue::S("a".into()));
        assert_eq!(m[STATUS], AttributeValue::S("DUPLICATE".into()));
        assert!(!m.contains_key(TOTAL_CENTS));
    }

    #[test]
    fn statuses_round_trip() {
        for st in [
            Status::Accepted,
            Status::Rejected,
            Status::Duplicate,
            Status::Conflict,
        ] {
            assert_eq!(Status::parse(st.as_str()), Some(st));
        }
        assert_eq!(Status::parse("accepted"), None);
    }
}
