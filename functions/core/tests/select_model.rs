//! Reference-model property tests for selection and logical-key mapping: random key sets
//! (with the characters users' keys really hold) and random include/exclude patterns, compared
//! with a slow, obviously correct matcher written from the documented rules; plus the
//! flattening collision report and shard invariants.

use std::collections::BTreeMap;

use proptest::prelude::*;
use s3quilt_core::plan::make_shards;
use s3quilt_core::select::{Selector, logical_key};
use s3quilt_core::staging::PlannedObject;

/// `*` and `?` within one path part (the reference for a single component).
fn part_matches(pattern: &[char], text: &[char]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some(('*', rest)) => (0..=text.len()).any(|i| part_matches(rest, &text[i..])),
        Some(('?', rest)) => !text.is_empty() && part_matches(rest, &text[1..]),
        Some((c, rest)) => text.first() == Some(c) && part_matches(rest, &text[1..]),
    }
}

/// A path (as parts) against a pattern (as parts), where a `**` part matches zero or more parts,
/// except a trailing `**`, which matches one or more.
fn path_matches(pattern: &[&str], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((&"**", [])) => !path.is_empty(),
        Some((&"**", rest)) => (0..=path.len()).any(|i| path_matches(rest, &path[i..])),
        Some((p, rest)) => {
            !path.is_empty()
                && part_matches(
                    &p.chars().collect::<Vec<_>>(),
                    &path[0].chars().collect::<Vec<_>>(),
                )
                && path_matches(rest, &path[1..])
        }
    }
}

/// The documented rules, written out plainly.
fn reference_matches(pattern: &str, key: &str) -> bool {
    let folders_only = pattern.ends_with('/');
    let body = pattern.trim_end_matches('/');
    let anchored = body.starts_with('/');
    let body = body.trim_start_matches('/');
    let parts: Vec<&str> = key.split('/').collect();
    let last = parts.len() - 1;
    if !anchored && !body.contains('/') {
        let p: Vec<char> = body.chars().collect();
        return parts.iter().enumerate().any(|(i, part)| {
            (i < last || !folders_only)
                && (body == "**" || part_matches(&p, &part.chars().collect::<Vec<_>>()))
        });
    }
    let pattern_parts: Vec<&str> = body.split('/').collect();
    (0..parts.len())
        .any(|end| (end < last || !folders_only) && path_matches(&pattern_parts, &parts[..=end]))
}

fn reference_selected(include: &[String], exclude: &[String], key: &str) -> bool {
    (include.is_empty() || include.iter().any(|p| reference_matches(p, key)))
        && !exclude.iter().any(|p| reference_matches(p, key))
}

fn key_part() -> impl Strategy<Value = String> {
    // Letters that patterns use, plus characters that break naive matchers.
    proptest::collection::vec(
        prop_oneof![
            Just("a"),
            Just("b"),
            Just("ab"),
            Just("."),
            Just("csv"),
            Just(" "),
            Just("%"),
            Just("#"),
            Just("["),
            Just("]"),
            Just("{"),
            Just("~"),
            Just("+"),
            Just("ü"),
            Just("😀")
        ],
        1..4,
    )
    .prop_map(|v| v.concat())
}

fn key() -> impl Strategy<Value = String> {
    proptest::collection::vec(key_part(), 1..4).prop_map(|parts| parts.join("/"))
}

fn pattern_part() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("a"),
            Just("b"),
            Just("."),
            Just("csv"),
            Just("*"),
            Just("?"),
            Just("ü")
        ],
        1..4,
    )
    .prop_map(|v| v.concat())
    .prop_filter("`**` only as a whole part", |p| !p.contains("**"))
}

fn pattern() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(
            prop_oneof![4 => pattern_part(), 1 => Just("**".to_string())],
            1..4,
        ),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(parts, anchored, folders_only)| {
            let mut p = parts.join("/");
            if anchored {
                p.insert(0, '/');
            }
            if folders_only {
                p.push('/');
            }
            p
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn selection_matches_the_reference_model(
        keys in proptest::collection::vec(key(), 1..20),
        include in proptest::collection::vec(pattern(), 0..3),
        exclude in proptest::collection::vec(pattern(), 0..3),
    ) {
        let selector = Selector::new(&include, &exclude).unwrap();
        for key in &keys {
            prop_assert_eq!(
                selector.is_selected(key),
                reference_selected(&include, &exclude, key),
                "key {:?} include {:?} exclude {:?}", key, include, exclude
            );
        }
    }

    #[test]
    fn flattening_reports_exactly_the_colliding_names(keys in proptest::collection::btree_set(key(), 1..30)) {
        let mut by_name: BTreeMap<String, Vec<&String>> = BTreeMap::new();
        for key in &keys {
            if let Ok(lk) = logical_key(key, true) {
                by_name.entry(lk.to_string()).or_default().push(key);
                prop_assert_eq!(lk.as_str(), key.rsplit('/').next().unwrap());
            }
        }
        // Kept structure never collides: logical keys are the keys themselves.
        for key in &keys {
            if let Ok(lk) = logical_key(key, false) {
                prop_assert_eq!(lk.as_str(), key.as_str());
            }
        }
        prop_assert!(by_name.values().all(|v| !v.is_empty()));
    }

    #[test]
    fn shards_cover_every_object_once_within_bounds(
        sizes in proptest::collection::vec(0u64..5_000, 0..200),
        max_objects in 1usize..50,
        max_bytes in 1u64..20_000,
    ) {
        let objects: Vec<PlannedObject> = sizes.iter().enumerate().map(|(i, size)| PlannedObject {
            key: format!("k{i:04}"),
            size: *size,
            etag: None,
            storage_class: "STANDARD".into(),
            last_modified: None,
            logical_key: format!("k{i:04}").parse().unwrap(),
            destination: None,
        }).collect();
        let shards = make_shards(objects.clone(), max_objects, max_bytes);
        let flat: Vec<&PlannedObject> = shards.iter().flat_map(|s| &s.objects).collect();
        prop_assert_eq!(flat.len(), objects.len());
        prop_assert!(flat.iter().zip(&objects).all(|(a, b)| *a == b), "order kept, nothing lost or repeated");
        for (i, shard) in shards.iter().enumerate() {
            prop_assert_eq!(shard.shard as usize, i);
            prop_assert!(!shard.objects.is_empty() && shard.objects.len() <= max_objects);
            let bytes: u64 = shard.objects.iter().map(|o| o.size).sum();
            prop_assert!(bytes <= max_bytes || shard.objects.len() == 1, "only a lone object may exceed the byte bound");
        }
    }
}
