//! Validated names: package names (`namespace/name`) and logical keys, so nothing downstream
//! ever handles a raw string that quilt3 would refuse.

use std::fmt;
use std::str::FromStr;

use unicode_general_category::{GeneralCategory, get_general_category};

/// Why a name or key is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// A package name that is not `namespace/name`.
    #[error(
        "invalid package name {name:?}: {reason}; a package name is `namespace/name`, each part one or more letters, digits, `_` or `-` (e.g. `team/dataset-v2`)"
    )]
    PackageName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A logical key quilt3 would refuse.
    #[error(
        "invalid logical key {key:?}: {reason}; a logical key is a `/`-separated path whose parts are non-empty and not `.` or `..` (no leading, trailing or doubled `/`)"
    )]
    LogicalKey {
        /// The key given.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A character of Python's `\w` (in str patterns): letters, numbers of every kind, `_`.
///
/// Python's `\w` is `str.isalnum() or '_'`: general categories L* plus characters with a numeric
/// value (N*). Rust's `char::is_alphanumeric` also admits marks with the Alphabetic property
/// (e.g. U+0345, U+0903), which Python refuses, so the categories are checked directly.
fn is_python_word_char(c: char) -> bool {
    use GeneralCategory::*;
    c == '_'
        || matches!(
            get_general_category(c),
            UppercaseLetter
                | LowercaseLetter
                | TitlecaseLetter
                | ModifierLetter
                | OtherLetter
                | DecimalNumber
                | LetterNumber
                | OtherNumber
        )
}

/// A package name, `namespace/name` (quilt3: `^[\w-]+/[\w-]+$`, without the trailing newline
/// Python's `$` would let through).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackageName {
    full: String,
    slash: usize,
}

impl PackageName {
    /// The namespace (before `/`).
    pub fn namespace(&self) -> &str {
        &self.full[..self.slash]
    }

    /// The name (after `/`).
    pub fn name(&self) -> &str {
        &self.full[self.slash + 1..]
    }

    /// The whole `namespace/name`.
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

impl FromStr for PackageName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason: &str| NameError::PackageName {
            name: s.to_string(),
            reason: reason.to_string(),
        };
        let Some((namespace, name)) = s.split_once('/') else {
            return Err(fail("it has no `/` between namespace and name"));
        };
        if name.contains('/') {
            return Err(fail("it has more than one `/`"));
        }
        for (part, label) in [(namespace, "namespace"), (name, "name")] {
            if part.is_empty() {
                return Err(fail(&format!("the {label} is empty")));
            }
            if let Some(bad) = part
                .chars()
                .find(|c| !(*c == '-' || is_python_word_char(*c)))
            {
                return Err(fail(&format!(
                    "the {label} contains {bad:?} (U+{:04X})",
                    bad as u32
                )));
            }
        }
        Ok(PackageName {
            full: s.to_string(),
            slash: namespace.len(),
        })
    }
}

impl fmt::Display for PackageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl serde::Serialize for PackageName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.full)
    }
}

impl<'de> serde::Deserialize<'de> for PackageName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A logical key: the path of an entry inside a package.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogicalKey(String);

impl LogicalKey {
    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path parts, split on `/`.
    pub fn parts(&self) -> std::str::Split<'_, char> {
        self.0.split('/')
    }

    /// The last part (the file name).
    pub fn base_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }
}

impl FromStr for LogicalKey {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason: &str| NameError::LogicalKey {
            key: s.to_string(),
            reason: reason.to_string(),
        };
        if s.is_empty() {
            return Err(fail("it is empty"));
        }
        for part in s.split('/') {
            match part {
                "" => {
                    return Err(fail(if s.starts_with('/') {
                        "it starts with `/`"
                    } else if s.ends_with('/') {
                        "it ends with `/`"
                    } else {
                        "it contains `//`"
                    }));
                }
                "." | ".." => return Err(fail(&format!("it has a `{part}` path part"))),
                _ => {}
            }
        }
        Ok(LogicalKey(s.to_string()))
    }
}

impl fmt::Display for LogicalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for LogicalKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for LogicalKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_what_is_wrong() {
        let err = "team/pkg.v2"
            .parse::<PackageName>()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("'.'") && err.contains("namespace/name"),
            "{err}"
        );
        let err = "a//b".parse::<LogicalKey>().unwrap_err().to_string();
        assert!(err.contains("`//`"), "{err}");
        let err = "a/../b".parse::<LogicalKey>().unwrap_err().to_string();
        assert!(err.contains("`..`"), "{err}");
    }

    #[test]
    fn logical_keys_split_into_parts_and_a_base_name() {
        let key: LogicalKey = "a/b c/d.csv".parse().unwrap();
        assert_eq!(key.parts().collect::<Vec<_>>(), ["a", "b c", "d.csv"]);
        assert_eq!(key.base_name(), "d.csv");
        let top: LogicalKey = "top.txt".parse().unwrap();
        assert_eq!(top.base_name(), "top.txt");
        assert_eq!(
            serde_json::to_value(&key).unwrap(),
            serde_json::json!("a/b c/d.csv")
        );
        assert!(serde_json::from_value::<LogicalKey>(serde_json::json!("/a")).is_err());
        for (bad, why) in [
            ("", "it is empty"),
            ("/a", "it starts with `/`"),
            ("a/", "it ends with `/`"),
            ("./a", "it has a `.` path part"),
        ] {
            let err = bad.parse::<LogicalKey>().unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn package_name_parts() {
        let n: PackageName = "tëam/pkg-2".parse().unwrap();
        assert_eq!((n.namespace(), n.name()), ("tëam", "pkg-2"));
    }
}
