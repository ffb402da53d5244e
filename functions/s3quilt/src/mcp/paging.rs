//! Pages small enough for an agent's context, and the continuation tokens that resume them.
//!
//! A listing tool's result sits in the agent's context twice (structured content and the same
//! JSON as text), so every page ends once its items pass [`PAGE_BYTES`] of JSON, whatever
//! `max_keys`/`max_items` asked for. Where it ended is in an opaque token: base64url of a small
//! JSON body naming the listing it belongs to (a digest of the tool and its arguments, so a token
//! passed to another listing is refused rather than misread) and where to resume.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ToolError;
use super::types::ObjectSummary;

/// Most JSON one page's items take (at least one item is always returned).
pub const PAGE_BYTES: usize = 40 * 1024;

/// How many of `items`, from the first, fit in `budget` bytes of JSON (at least one).
pub fn fitting<T: Serialize>(items: &[T], budget: usize) -> usize {
    let mut used = 0;
    for (i, item) in items.iter().enumerate() {
        // +1: the comma between array items.
        used += serde_json::to_vec(item).map_or(0, |b| b.len() + 1);
        if used > budget {
            return i.max(1);
        }
    }
    items.len()
}

/// One page cut from a longer sequence.
#[derive(Debug, PartialEq)]
pub struct Page<T> {
    /// The items served, in the sequence's order.
    pub items: Vec<T>,
    /// Items of the sequence are left after this page.
    pub more: bool,
    /// The page ended before `max` items to stay within the byte budget.
    pub cut_for_size: bool,
}

/// The first `max` of `items` (at least one when there are any), fewer when they pass
/// `budget` bytes of JSON.
pub fn page<T: Serialize>(mut items: Vec<T>, max: usize, budget: usize) -> Page<T> {
    let by_count = items.len().min(max);
    let served = fitting(&items[..by_count], budget);
    let more = items.len() > served;
    items.truncate(served);
    Page {
        items,
        more,
        cut_for_size: served < by_count,
    }
}

/// One item of a bucket listing: an object or a folder (common prefix).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Listed {
    Object(ObjectSummary),
    Folder(String),
}

impl Listed {
    /// What S3 orders the listing by: the key or the folder's prefix.
    pub fn name(&self) -> &str {
        match self {
            Listed::Object(o) => &o.key,
            Listed::Folder(f) => f,
        }
    }
}

/// A ListObjectsV2 page's objects and folders in S3's order: both lists come sorted by UTF-8
/// bytes, and S3 pages through them merged in that order.
pub fn merged(objects: Vec<ObjectSummary>, folders: Vec<String>) -> Vec<Listed> {
    let mut out = Vec::with_capacity(objects.len() + folders.len());
    let mut objects = objects.into_iter().peekable();
    let mut folders = folders.into_iter().peekable();
    loop {
        let object_first = match (objects.peek(), folders.peek()) {
            (Some(o), Some(f)) => o.key.as_str() < f.as_str(),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return out,
        };
        out.push(
            if object_first {
                objects.next().map(Listed::Object)
            } else {
                folders.next().map(Listed::Folder)
            }
            .expect("peeked"),
        );
    }
}

/// A page's objects and folders apart again (each list keeps its order).
pub fn split(items: Vec<Listed>) -> (Vec<ObjectSummary>, Vec<String>) {
    let mut objects = Vec::new();
    let mut folders = Vec::new();
    for item in items {
        match item {
            Listed::Object(o) => objects.push(o),
            Listed::Folder(f) => folders.push(f),
        }
    }
    (objects, folders)
}

/// One call's page of an S3 page, and where the next call resumes. `items` are the S3 page's
/// objects and folders after what earlier calls returned; the page was listed with `s3_token`
/// (none: the first) and `listed_with` as max_keys, and S3 gave `s3_next` for the page after.
pub fn serve_s3_page(
    items: Vec<Listed>,
    s3_token: Option<String>,
    listed_with: u32,
    s3_next: Option<String>,
    max_keys: u32,
) -> (Page<Listed>, Option<Resume>) {
    let page = page(items, max_keys as usize, PAGE_BYTES);
    let next = match (page.more, page.items.last(), s3_next) {
        (true, Some(last), _) => Some(Resume::Objects {
            s3_token,
            served: Some(Served {
                max_keys: listed_with,
                after: last.name().to_string(),
            }),
        }),
        (_, _, Some(next)) => Some(Resume::Objects {
            s3_token: Some(next),
            served: None,
        }),
        _ => None,
    };
    (page, next)
}

/// Part of an S3 page already served: the page is listed again with the same size (so it
/// holds the same items) and what sorts up to `after` is skipped. Skipping by name rather than
/// by count keeps the next page right when objects are added or deleted meanwhile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Served {
    /// `max_keys` the S3 page was listed with.
    pub max_keys: u32,
    /// The last key or folder returned.
    pub after: String,
}

/// Where a listing resumes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Resume {
    /// `bucket_objects_list`: the S3 page to list (none: the first) and what of it was served.
    Objects {
        s3_token: Option<String>,
        served: Option<Served>,
    },
    /// `packages_list` names: the names after this one.
    Packages { after: String },
    /// `packages_list` versions: the versions with a timestamp after this one.
    Versions { after: u64 },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    /// Digest of the listing's identity (see [`listing`]).
    of: String,
    at: Resume,
}

/// A listing's identity: the tool and the arguments that select what it lists (not the page
/// size). Parts are joined with NUL, which no bucket, prefix or package name holds usefully.
pub fn listing(parts: &[&str]) -> String {
    let digest = Sha256::digest(parts.join("\0").as_bytes());
    hex::encode(&digest[..8])
}

/// The token that resumes `listing` at `at`.
pub fn encode(listing: &str, at: Resume) -> String {
    let body = Body {
        of: listing.to_string(),
        at,
    };
    B64.encode(serde_json::to_vec(&body).expect("a token body serializes"))
}

/// Where `token` resumes `listing`; a tool error naming `continuation_token` for anything but
/// a token this server gave for that listing. `what` names the tool for the message.
pub fn decode(token: &str, listing: &str, what: &str) -> Result<Resume, ToolError> {
    let body: Option<Body> = B64
        .decode(token.trim())
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    match body {
        Some(body) if body.of == listing => Ok(body.at),
        Some(_) => Err(ToolError(format!(
            "continuation_token: this token continues another listing; give the same arguments as the call that returned it (only {what}'s page size may change), or omit it for the first page"
        ))),
        None => Err(ToolError(format!(
            "continuation_token: {:?} is not a token from {what}; pass the previous page's next_continuation_token unchanged, or omit it for the first page",
            shortened(token)
        ))),
    }
}

/// A bad token as quoted back: long ones cut, so an error never floods the context.
fn shortened(token: &str) -> String {
    match token.char_indices().nth(80) {
        Some((at, _)) => format!("{}…", &token[..at]),
        None => token.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(key: &str) -> ObjectSummary {
        ObjectSummary {
            key: key.into(),
            uri: format!("s3://b/{key}"),
            size: 1,
            last_modified: None,
            storage_class: "STANDARD".into(),
            etag: None,
        }
    }

    #[test]
    fn pages_end_at_max_or_before_their_byte_budget_with_one_item_at_least() {
        // `n` distinct names of `len` bytes each.
        let names = |n: usize, len: usize| -> Vec<String> {
            (0..n)
                .map(|i| format!("{i:05}{}", "x".repeat(len - 5)))
                .collect()
        };
        let all = page(names(10, 5), 100, PAGE_BYTES);
        assert_eq!(
            (all.items.len(), all.more, all.cut_for_size),
            (10, false, false)
        );
        let by_count = page(names(10, 5), 4, PAGE_BYTES);
        assert_eq!(by_count.items, names(4, 5));
        assert_eq!((by_count.more, by_count.cut_for_size), (true, false));
        // 1,000 bytes each (+3: quotes and comma): 40 fit in 40 KiB.
        let by_size = page(names(100, 1000), 1000, PAGE_BYTES);
        assert_eq!(by_size.items.len(), 40);
        assert_eq!((by_size.more, by_size.cut_for_size), (true, true));
        let exact = page(names(40, 1000), 40, PAGE_BYTES);
        assert_eq!(
            (exact.items.len(), exact.more, exact.cut_for_size),
            (40, false, false)
        );
        let huge = page(names(3, 100_000), 10, PAGE_BYTES);
        assert_eq!(
            (huge.items.len(), huge.more, huge.cut_for_size),
            (1, true, true)
        );
        let none = page(Vec::<String>::new(), 10, PAGE_BYTES);
        assert_eq!(
            (none.items.len(), none.more, none.cut_for_size),
            (0, false, false)
        );
    }

    #[test]
    fn objects_and_folders_merge_in_byte_order_and_split_back() {
        // "a-" < "a/" < "a0" in bytes; "é" (0xC3…) after every ASCII name.
        let objects = vec![object("a-1"), object("a0"), object("é")];
        let folders = vec!["a/".to_string(), "b/".to_string()];
        let items = merged(objects.clone(), folders.clone());
        let names: Vec<&str> = items.iter().map(Listed::name).collect();
        assert_eq!(names, ["a-1", "a/", "a0", "b/", "é"]);
        assert_eq!(split(items), (objects, folders));
        assert_eq!(merged(Vec::new(), Vec::new()), Vec::new());
        assert_eq!(
            serde_json::to_value(Listed::Folder("a/".into())).unwrap(),
            json!("a/"),
            "sized as the folder itself"
        );
    }

    /// A ListObjectsV2 of `names` (sorted, objects only): the page of `max_keys` after the key
    /// its token holds (as S3's tokens do), and the token of the page after.
    fn s3_page(
        names: &[String],
        token: Option<&str>,
        max_keys: u32,
    ) -> (Vec<Listed>, Option<String>) {
        let start = token.map_or(0, |t| names.partition_point(|n| n.as_str() <= t));
        let end = (start + max_keys as usize).min(names.len());
        let items = names[start..end]
            .iter()
            .map(|n| Listed::Object(object(n)))
            .collect();
        (items, (end < names.len()).then(|| names[end - 1].clone()))
    }

    /// Every page of a listing of `names`, as the tool pages it (after `change` runs before
    /// each call but the first), with `max_keys` on each call.
    fn walk(
        names: &mut Vec<String>,
        max_keys: u32,
        change: impl Fn(&mut Vec<String>, usize),
    ) -> Vec<Vec<String>> {
        let mut pages = Vec::new();
        let mut resume = None;
        loop {
            if !pages.is_empty() {
                change(names, pages.len());
            }
            let (s3_token, served) = match resume {
                Some(Resume::Objects { s3_token, served }) => (s3_token, served),
                None => (None, None),
                Some(other) => panic!("{other:?}"),
            };
            let listed_with = served.as_ref().map_or(max_keys, |s: &Served| s.max_keys);
            let (mut items, s3_next) = s3_page(names, s3_token.as_deref(), listed_with);
            if let Some(done) = &served {
                items.retain(|i| i.name() > done.after.as_str());
            }
            let (page, next) = serve_s3_page(items, s3_token, listed_with, s3_next, max_keys);
            let served: Vec<String> = page.items.iter().map(|i| i.name().to_string()).collect();
            let bytes = serde_json::to_vec(&page.items).unwrap().len();
            assert!(bytes <= PAGE_BYTES + 1, "{bytes} bytes");
            pages.push(served);
            match next {
                Some(at) => resume = Some(at),
                None => return pages,
            }
        }
    }

    #[test]
    fn s3_pages_are_served_in_parts_each_item_once_in_order() {
        // 2,500 keys of about 450 bytes of JSON each: S3 pages of 1,000, served ~90 a call.
        let key = |i: usize| format!("data/{}{i:05}", "k".repeat(150));
        let mut names: Vec<String> = (0..2_500).map(key).collect();
        let all = names.clone();
        let pages = walk(&mut names, 1000, |_, _| {});
        assert!(
            pages.len() > 20 && pages.iter().all(|p| !p.is_empty()),
            "{}",
            pages.len()
        );
        assert_eq!(pages.concat(), all, "every key once, in order");
        // Small pages are served whole: one call an S3 page.
        let pages = walk(&mut names, 7, |_, _| {});
        assert_eq!(pages.len(), 2_500_usize.div_ceil(7));
        assert_eq!(pages.concat(), all);
        // Keys added before the resume point or deleted after it meanwhile: no key served
        // twice, none of those there throughout lost.
        let mut changing = all.clone();
        let pages = walk(&mut changing, 1000, |names, call| {
            names.push(format!("data/{call:05}-new-before-everything"));
            names.sort();
            if call % 3 == 0 && names.len() > 2_000 {
                names.remove(2_000);
            }
        });
        let served = pages.concat();
        let mut unique = served.clone();
        unique.dedup();
        assert_eq!(unique, served, "no key twice");
        assert!(served.windows(2).all(|w| w[0] < w[1]), "in order");
        let kept: Vec<&String> = all.iter().filter(|k| changing.contains(k)).collect();
        assert!(kept.iter().all(|k| served.contains(k)), "none lost");
    }

    #[test]
    fn tokens_round_trip_and_belong_to_one_listing() {
        let here = listing(&["objects", "b", "data/", "/"]);
        let resumes = [
            Resume::Objects {
                s3_token: None,
                served: Some(Served {
                    max_keys: 1000,
                    after: "data/\n odd \u{1}key%2F".into(),
                }),
            },
            Resume::Objects {
                s3_token: Some("1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=".into()),
                served: None,
            },
            Resume::Packages {
                after: "team/a".into(),
            },
            Resume::Versions {
                after: 1_700_000_000,
            },
        ];
        for resume in resumes {
            let token = encode(&here, resume.clone());
            assert!(
                token
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "{token}"
            );
            assert_eq!(
                decode(&token, &here, "bucket_objects_list").unwrap(),
                resume
            );
        }
        let token = encode(&here, Resume::Versions { after: 1 });
        for other in [
            listing(&["objects", "b", "data/", ""]),
            listing(&["objects", "b", "data", "/"]),
            listing(&["objects", "c", "data/", "/"]),
            listing(&["objects", "b\0data/", "", "/"]),
        ] {
            assert_ne!(other, here);
            let error = decode(&token, &other, "bucket_objects_list").unwrap_err().0;
            assert!(
                error.starts_with("continuation_token: this token continues another listing"),
                "{error}"
            );
        }
    }

    #[test]
    fn malformed_tokens_are_refused_naming_the_argument() {
        let here = listing(&["packages", "s3://reg", ""]);
        let not_json = B64.encode(b"not json");
        let unknown = B64.encode(br#"{"of":"x","at":{"elsewhere":{}}}"#);
        let long = "x".repeat(500);
        for bad in [
            "x",
            "!!!",
            not_json.as_str(),
            unknown.as_str(),
            "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=",
            long.as_str(),
        ] {
            let error = decode(bad, &here, "packages_list").unwrap_err().0;
            assert!(
                error.starts_with("continuation_token: ")
                    && error.contains("is not a token from packages_list")
                    && error.contains("next_continuation_token")
                    && error.len() < 400,
                "{error}"
            );
        }
    }
}
