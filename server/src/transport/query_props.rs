//! Property tests of the query parser (`ConnectQuery::parse`,
//! `query_value`, `percent_decode`): whatever a client puts in a URL, the
//! parser never panics, and a well-formed query reads back exactly what
//! was written, in any order and among unknown parameters.
//!
//! CI runs proptest's default 256 cases per property; a longer run:
//! `PROPTEST_CASES=200000 cargo test --release -p holdfast-server query_props`.

use proptest::prelude::*;

use super::{ConnectQuery, percent_decode, query_value};

/// Percent-encodes everything but RFC 3986's unreserved characters;
/// spaces as `+` (both spellings must decode).
fn encode(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        match b {
            b' ' => out.push('+'),
            b if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => out.push(b as char),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Strings made of what queries are made of, to reach deep into the
/// parser more often than arbitrary text does.
fn query_like() -> impl Strategy<Value = String> {
    proptest::string::string_regex("([a-z]{0,5}(=[a-zA-Z0-9%+]{0,8})?&?){0,8}")
        .unwrap_or_else(|e| panic!("a valid regex: {e}"))
}

/// A parameter the parser does not know.
fn unknown_param() -> impl Strategy<Value = (String, String)> {
    ("[a-z_]{1,8}", any::<String>()).prop_filter("not a known name", |(name, _)| {
        !["v", "key", "last", "probe", "report"].contains(&name.as_str())
    })
}

proptest! {
    #[test]
    fn never_panics_on_any_text(query in any::<String>(), name in any::<String>()) {
        let _ = ConnectQuery::parse(Some(&query), Ok(None));
        let _ = query_value(&query, &name);
        let _ = percent_decode(&query);
    }

    #[test]
    fn never_panics_on_query_like_text(query in query_like()) {
        let _ = ConnectQuery::parse(Some(&query), Ok(None));
        for name in ["v", "key", "last", "probe", ""] {
            let _ = query_value(&query, name);
        }
        let _ = percent_decode(&query);
    }

    #[test]
    fn percent_decoding_inverts_encoding(value in any::<String>()) {
        prop_assert_eq!(percent_decode(&encode(&value)), Some(value));
    }

    #[test]
    fn a_valid_connect_query_reads_back(
        key in proptest::option::of(".{1,64}"),
        last in proptest::option::of(any::<u64>()),
        probe in any::<bool>(),
        version in any::<bool>(),
        extra in proptest::collection::vec(unknown_param(), 0..4),
        order in any::<proptest::sample::Index>(),
    ) {
        let mut pairs: Vec<String> = extra
            .iter()
            .map(|(name, value)| format!("{name}={}", encode(value)))
            .collect();
        if let Some(key) = &key {
            pairs.push(format!("key={}", encode(key)));
        }
        if let Some(last) = last {
            pairs.push(format!("last={last}"));
        }
        if probe {
            pairs.push("probe=1".into());
        }
        if version {
            pairs.push("v=1".into());
        }
        let len = pairs.len();
        let turn = order.index(len.max(1)).min(len);
        pairs.rotate_left(turn);
        let query = pairs.join("&");
        let parsed = ConnectQuery::parse(Some(&query), Ok(None));
        prop_assert_eq!(
            parsed.ok(),
            Some(ConnectQuery { key, last: last.unwrap_or(0), probe, report: None }),
            "query {:?}", query
        );
    }

    #[test]
    fn query_value_finds_what_was_written(
        name in ".{1,16}",
        value in any::<String>(),
        before in proptest::collection::vec(unknown_param(), 0..4),
    ) {
        let mut query: Vec<String> = before
            .iter()
            .filter(|(other, _)| *other != name)
            .map(|(other, v)| format!("{}={}", encode(other), encode(v)))
            .collect();
        query.push(format!("{}={}", encode(&name), encode(&value)));
        let query = query.join("&");
        prop_assert_eq!(query_value(&query, &name), Some(value), "query {:?}", query);
    }
}
