//! Physical keys: where an entry's bytes live, written as quilt3 writes them:
//! `s3://bucket/<quote('/' + key)>?versionId=<urlencoded id>`.

use std::fmt;
use std::str::FromStr;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// Python's `urllib.parse.quote(s, safe='/')`: everything but ASCII letters, digits, `_.-~`, `/`.
const QUOTE_PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'_')
    .remove(b'.')
    .remove(b'-')
    .remove(b'~')
    .remove(b'/');
/// Python's `urlencode` value quoting (`quote_plus`): as above but `/` is escaped too and space is `+`.
const QUOTE_QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'_')
    .remove(b'.')
    .remove(b'-')
    .remove(b'~');

/// Why a URL is not a physical key s3quilt can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhysicalKeyError {
    /// Not `s3://bucket/...`.
    #[error("physical key {url:?} is not an s3:// URL with a bucket: {reason}")]
    NotS3 {
        /// The URL given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A query parameter other than `versionId`.
    #[error("physical key {url:?} has query parameter {param:?}; only `versionId` is allowed")]
    UnknownQuery {
        /// The URL given.
        url: String,
        /// The offending parameter.
        param: String,
    },
    /// A percent escape that does not decode to UTF-8.
    #[error("physical key {url:?} does not percent-decode to UTF-8")]
    Encoding {
        /// The URL given.
        url: String,
    },
}

/// An S3 object location, optionally pinned to a version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct PhysicalKey {
    /// Bucket name.
    pub bucket: String,
    /// Object key (decoded).
    pub key: String,
    /// Version id, when the object is versioned.
    pub version_id: Option<String>,
}

impl PhysicalKey {
    /// A physical key for `bucket`/`key` at `version_id`.
    pub fn new(
        bucket: impl Into<String>,
        key: impl Into<String>,
        version_id: Option<String>,
    ) -> Self {
        PhysicalKey {
            bucket: bucket.into(),
            key: key.into(),
            version_id,
        }
    }
}

impl fmt::Display for PhysicalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = format!("/{}", self.key);
        write!(
            f,
            "s3://{}{}",
            self.bucket,
            utf8_percent_encode(&path, QUOTE_PATH)
        )?;
        if let Some(version) = &self.version_id {
            let encoded = utf8_percent_encode(version, QUOTE_QUERY)
                .to_string()
                .replace("%20", "+");
            write!(f, "?versionId={encoded}")?;
        }
        Ok(())
    }
}

fn decode(url: &str, text: &str, plus_is_space: bool) -> Result<String, PhysicalKeyError> {
    let text = if plus_is_space {
        text.replace('+', " ")
    } else {
        text.to_string()
    };
    percent_decode_str(&text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| PhysicalKeyError::Encoding {
            url: url.to_string(),
        })
}

impl FromStr for PhysicalKey {
    type Err = PhysicalKeyError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let not_s3 = |reason: &str| PhysicalKeyError::NotS3 {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| not_s3("it does not start with s3://"))?;
        // A `#` is always escaped in keys quilt3 writes; a raw one would start a fragment.
        let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
        let (location, query) = match rest.split_once('?') {
            Some((location, query)) => (location, Some(query)),
            None => (rest, None),
        };
        let (bucket, path) = match location.split_once('/') {
            Some((bucket, path)) => (bucket, path),
            None => (location, ""),
        };
        if bucket.is_empty() {
            return Err(not_s3("the bucket is empty"));
        }
        let key = decode(url, path, false)?;
        let mut version_id = None;
        if let Some(query) = query {
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                let name = decode(url, name, true)?;
                if name != "versionId" {
                    return Err(PhysicalKeyError::UnknownQuery {
                        url: url.to_string(),
                        param: name,
                    });
                }
                version_id = Some(decode(url, value, true)?);
            }
        }
        Ok(PhysicalKey {
            bucket: bucket.to_string(),
            key,
            version_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_quilt3_writes_parse_back_to_bucket_key_and_version() {
        let key = PhysicalKey::new("b", "a b/ü#1+2.csv", Some("v 1/+=".into()));
        let url = key.to_string();
        assert_eq!(
            url,
            "s3://b/a%20b/%C3%BC%231%2B2.csv?versionId=v+1%2F%2B%3D"
        );
        assert_eq!(url.parse::<PhysicalKey>().unwrap(), key);
        let bare: PhysicalKey = "s3://b".parse().unwrap();
        assert_eq!((bare.key.as_str(), bare.version_id), ("", None));
        let fragment: PhysicalKey = "s3://b/k#frag".parse().unwrap();
        assert_eq!(fragment.key, "k", "a raw `#` starts a fragment");
        let plus: PhysicalKey = "s3://b/a+b".parse().unwrap();
        assert_eq!(plus.key, "a+b", "`+` is a space only in the query");
    }

    #[test]
    fn malformed_urls_are_refused_with_the_reason() {
        let err = |url: &str| url.parse::<PhysicalKey>().unwrap_err();
        assert_eq!(
            err("https://b/k"),
            PhysicalKeyError::NotS3 {
                url: "https://b/k".into(),
                reason: "it does not start with s3://".into()
            }
        );
        assert!(
            matches!(err("s3:///k"), PhysicalKeyError::NotS3 { reason, .. } if reason == "the bucket is empty")
        );
        assert_eq!(
            err("s3://b/k?versionId=1&partNumber=2"),
            PhysicalKeyError::UnknownQuery {
                url: "s3://b/k?versionId=1&partNumber=2".into(),
                param: "partNumber".into()
            }
        );
        for url in ["s3://b/%FF", "s3://b/k?versionId=%C3", "s3://b/k?%FF=1"] {
            assert_eq!(
                err(url),
                PhysicalKeyError::Encoding { url: url.into() },
                "{url}"
            );
        }
        assert!(err("s3://b/%FF").to_string().contains("UTF-8"));
    }
}
