//! Selection: which listed keys go into the package, with the gitignore-like glob rules users
//! already know, and how a selected key becomes a logical key.
//!
//! Rules (keys are matched relative to the source prefix):
//! * a pattern without `/` matches a name at any depth: `*.csv` selects `a.csv` and `x/y/a.csv`;
//!   `tmp` matches a file or folder named `tmp` anywhere (a folder match covers its contents);
//! * a pattern with `/` matches the relative path from the top (a leading `/` is allowed and
//!   ignored); it also matches a folder, covering its contents: `raw/2024` selects `raw/2024/x`;
//! * a trailing `/` restricts a pattern to folders: `logs/` matches folders named `logs`;
//! * `*` and `?` never cross `/`; `**` does; `[abc]` and `{a,b}` work as in shells;
//! * no include pattern selects everything; an exclude always wins;
//! * keys are matched whatever characters they hold (`%`, `#`, `[`, `]`, `~`, `{` …): they are
//!   data, never parsed as patterns.

mod glob;

use glob::Glob;
use serde::{Deserialize, Serialize};

use crate::quilt::names::{LogicalKey, NameError};

/// A pattern that does not compile.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "{field}: pattern {} is not a valid glob ({reason}); use `*` within a folder, `**` across folders, `?`, `[abc]`, `{{a,b}}`",
    shown(pattern)
)]
pub struct SelectorError {
    field: &'static str,
    /// The pattern.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A pattern as an error shows it: quoted, and cut short when long (a pattern of thousands of
/// characters would bury the reason, and an agent's context with it).
fn shown(pattern: &str) -> String {
    const SHOWN_CHARS: usize = 80;
    let length = pattern.chars().count();
    if length <= SHOWN_CHARS {
        format!("{pattern:?}")
    } else {
        let start: String = pattern.chars().take(SHOWN_CHARS).collect();
        format!("{start:?}… ({length} characters)")
    }
}

impl SelectorError {
    /// The request field holding the pattern.
    pub fn field(&self) -> &'static str {
        self.field
    }
}

#[derive(Debug, Clone)]
struct Pattern {
    /// As the user wrote it.
    text: String,
    glob: Glob,
    /// No `/` inside: match single path parts at any depth.
    any_depth: bool,
    /// Trailing `/`: folders only.
    folders_only: bool,
}

impl Pattern {
    fn new(field: &'static str, text: &str) -> Result<Self, SelectorError> {
        let error = |reason: String| SelectorError {
            field,
            pattern: text.to_string(),
            reason,
        };
        let folders_only = text.ends_with('/');
        let body = text.trim_end_matches('/');
        let body = body.strip_prefix('/').map_or(body, |b| b);
        let anchored = text.trim_end_matches('/').starts_with('/');
        if body.is_empty() {
            return Err(error("it is empty".into()));
        }
        let glob = Glob::new(body).map_err(error)?;
        Ok(Pattern {
            text: text.to_string(),
            any_depth: !anchored && !glob.has_separator(),
            glob,
            folders_only,
        })
    }

    /// Whether the pattern matches `relative` or one of the folders that contain it.
    fn matches(&self, relative: &str) -> bool {
        let parts: Vec<&str> = relative.split('/').collect();
        let last = parts.len() - 1;
        if self.any_depth {
            parts.iter().enumerate().any(|(i, part)| {
                (i < last || !self.folders_only) && self.glob.matches_parts(&[part])
            })
        } else {
            // The whole path (unless folders only), or any folder prefix of it.
            (0..parts.len()).any(|end| {
                (end < last || !self.folders_only) && self.glob.matches_parts(&parts[..=end])
            })
        }
    }
}

/// Compiled include/exclude rules.
#[derive(Debug, Clone)]
pub struct Selector {
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
}

impl Selector {
    /// Compiles the patterns; an error names the field and the pattern.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, SelectorError> {
        Ok(Selector {
            include: include
                .iter()
                .map(|p| Pattern::new("include_patterns", p))
                .collect::<Result<_, _>>()?,
            exclude: exclude
                .iter()
                .map(|p| Pattern::new("exclude_patterns", p))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Whether a key (relative to the source prefix) is selected.
    pub fn is_selected(&self, relative: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| p.matches(relative)))
            && !self.exclude.iter().any(|p| p.matches(relative))
    }

    /// Whether any include pattern is set.
    pub fn has_includes(&self) -> bool {
        !self.include.is_empty()
    }

    /// A tally of matches per pattern, all zero.
    pub fn tally(&self) -> PatternTally {
        PatternTally {
            include: vec![0; self.include.len()],
            exclude: vec![0; self.exclude.len()],
        }
    }

    /// What becomes of a key (relative to the source prefix), counting in `tally` every
    /// pattern that matches it (every pattern is tried, so each count is complete).
    pub fn select_counting(&self, relative: &str, tally: &mut PatternTally) -> Selection {
        let mut included = self.include.is_empty();
        for (pattern, count) in self.include.iter().zip(&mut tally.include) {
            if pattern.matches(relative) {
                *count += 1;
                included = true;
            }
        }
        let mut excluded = false;
        for (pattern, count) in self.exclude.iter().zip(&mut tally.exclude) {
            if pattern.matches(relative) {
                *count += 1;
                excluded = true;
            }
        }
        match (included, excluded) {
            (false, _) => Selection::NotIncluded,
            (true, true) => Selection::Excluded,
            (true, false) => Selection::Selected,
        }
    }

    /// Each pattern with the number of listed keys it matched, includes first, in the order
    /// given.
    pub fn pattern_matches(&self, tally: &PatternTally) -> Vec<PatternMatch> {
        let side = |field: &str, patterns: &[Pattern], counts: &[u64]| {
            patterns
                .iter()
                .zip(counts)
                .map(|(p, keys)| PatternMatch {
                    field: field.to_string(),
                    pattern: p.text.clone(),
                    keys: *keys,
                })
                .collect::<Vec<_>>()
        };
        let mut matches = side("include_patterns", &self.include, &tally.include);
        matches.extend(side("exclude_patterns", &self.exclude, &tally.exclude));
        matches
    }
}

/// What the selection makes of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// Goes into the package.
    Selected,
    /// No include pattern matches it.
    NotIncluded,
    /// An include pattern matches it (or there is none) and an exclude pattern too.
    Excluded,
}

/// Matches per pattern while a listing is selected (see [`Selector::select_counting`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatternTally {
    include: Vec<u64>,
    exclude: Vec<u64>,
}

/// How many listed keys one pattern matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatternMatch {
    /// `include_patterns` or `exclude_patterns`.
    pub field: String,
    /// The pattern as given.
    pub pattern: String,
    /// Listed keys under the prefix it matched (an exclude counts every key it matches,
    /// included or not).
    pub keys: u64,
}

impl PatternMatch {
    /// A warning for a pattern that matched no key: usually a typo, a pattern written
    /// against the full key instead of the path below the prefix, or `[ ]` meant literally.
    pub fn warning(&self, prefix: &str) -> Option<String> {
        if self.keys > 0 {
            return None;
        }
        let mut warning = format!(
            "{}: pattern {} matched no key under {}",
            self.field,
            shown(&self.pattern),
            if prefix.is_empty() {
                "the bucket".to_string()
            } else {
                format!("the prefix {prefix:?} (patterns match the path below it)")
            }
        );
        if self.pattern.contains('[') || self.pattern.contains(']') {
            warning.push_str(
                "; `[` and `]` are glob characters (a set, as in `[abc]`): to match them literally, escape them as `\\[` and `\\]` (e.g. `data\\[1\\].csv`)",
            );
        }
        Some(warning)
    }
}

/// The logical key of a selected object: its path relative to the prefix, or its base name
/// when flattening.
pub fn logical_key(relative: &str, flatten: bool) -> Result<LogicalKey, NameError> {
    if flatten {
        relative.rsplit('/').next().unwrap_or(relative).parse()
    } else {
        relative.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(include: &[&str], exclude: &[&str]) -> Selector {
        let s = |v: &[&str]| v.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        Selector::new(&s(include), &s(exclude)).unwrap()
    }

    #[test]
    fn gitignore_like_rules() {
        let csv = sel(&["*.csv"], &[]);
        assert!(csv.is_selected("a.csv") && csv.is_selected("x/y/a.csv"));
        assert!(!csv.is_selected("a.csv.gz"));
        let anchored = sel(&["raw/*.csv"], &[]);
        assert!(anchored.is_selected("raw/a.csv"));
        assert!(
            !anchored.is_selected("raw/2024/a.csv"),
            "`*` never crosses `/`"
        );
        assert!(
            !anchored.is_selected("x/raw/a.csv"),
            "a pattern with `/` is anchored"
        );
        assert!(sel(&["raw/**/*.csv"], &[]).is_selected("raw/2024/01/a.csv"));
        assert!(sel(&["raw/**"], &[]).is_selected("raw/a/b"));
        let folder = sel(&[], &["tmp"]);
        assert!(!folder.is_selected("tmp/x.bin") && !folder.is_selected("a/tmp/b/x.bin"));
        assert!(folder.is_selected("tmpx/y"));
        let prefix_folder = sel(&["raw/2024"], &[]);
        assert!(
            prefix_folder.is_selected("raw/2024/x") && !prefix_folder.is_selected("raw/2025/x")
        );
        let folders_only = sel(&[], &["logs/"]);
        assert!(!folders_only.is_selected("logs/a") && folders_only.is_selected("x/logs"));
        let exclude_wins = sel(&["*.csv"], &["secret*"]);
        assert!(!exclude_wins.is_selected("secret.csv"));
        assert!(sel(&["/top.txt"], &[]).is_selected("top.txt"));
    }

    #[test]
    fn keys_with_pattern_characters_are_data() {
        let all = sel(&[], &[]);
        for key in ["100%/a#b.txt", "[x]/{y}.txt", "~user/a b+c.txt", "ü/😀"] {
            assert!(all.is_selected(key), "{key}");
        }
        assert!(sel(&["*.txt"], &[]).is_selected("[x]/{y}.txt"));
        assert!(sel(&["\\[x\\]/*"], &[]).is_selected("[x]/{y}.txt"));
    }

    #[test]
    fn bad_patterns_name_their_field() {
        let err = Selector::new(&[], &["[".to_string()]).unwrap_err();
        assert_eq!(err.field(), "exclude_patterns");
        assert!(err.to_string().contains("\"[\""));
        assert!(Selector::new(&["".to_string()], &[]).is_err());
        let empty = Selector::new(&["/".to_string()], &[]).unwrap_err();
        assert_eq!(empty.field(), "include_patterns");
        assert_eq!(empty.reason, "it is empty");
    }

    #[test]
    fn long_patterns_are_cut_short_in_errors() {
        let pattern = format!("{}a{}", "{".repeat(2000), "}".repeat(2000));
        let err = Selector::new(&[pattern], &[]).unwrap_err().to_string();
        assert!(err.starts_with("include_patterns: pattern \"{{{{"), "{err}");
        assert!(
            err.contains("… (4001 characters) is not a valid glob"),
            "{err}"
        );
        assert!(err.contains("nest 2000 deep; at most 16 levels"), "{err}");
        assert!(err.len() < 400, "{err}");
    }

    #[test]
    fn every_pattern_is_counted_and_unmatched_ones_warn() {
        let s = |v: &[&str]| v.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        let selector = Selector::new(
            &s(&["*.csv", "raw/**", "run[1].log"]),
            &s(&["tmp/", "*.bak"]),
        )
        .unwrap();
        let mut tally = selector.tally();
        let keys = ["a.csv", "raw/b.csv", "tmp/c.csv", "x.txt", "run[1].log"];
        let verdicts: Vec<Selection> = keys
            .iter()
            .map(|k| selector.select_counting(k, &mut tally))
            .collect();
        assert_eq!(
            verdicts,
            [
                Selection::Selected,
                Selection::Selected,
                Selection::Excluded,
                Selection::NotIncluded,
                Selection::NotIncluded,
            ]
        );
        for key in keys {
            assert_eq!(
                selector.is_selected(key),
                selector.select_counting(key, &mut selector.tally()) == Selection::Selected
            );
        }
        let matches = selector.pattern_matches(&tally);
        let counted: Vec<(&str, &str, u64)> = matches
            .iter()
            .map(|m| (m.field.as_str(), m.pattern.as_str(), m.keys))
            .collect();
        assert_eq!(
            counted,
            [
                ("include_patterns", "*.csv", 3),
                ("include_patterns", "raw/**", 1),
                ("include_patterns", "run[1].log", 0),
                ("exclude_patterns", "tmp/", 1),
                ("exclude_patterns", "*.bak", 0),
            ]
        );
        let warnings: Vec<String> = matches.iter().filter_map(|m| m.warning("in/")).collect();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].starts_with(
                "include_patterns: pattern \"run[1].log\" matched no key under the prefix \"in/\""
            ),
            "{warnings:?}"
        );
        assert!(warnings[0].contains("escape them as `\\[`"), "{warnings:?}");
        assert!(!warnings[1].contains("escape"), "{warnings:?}");
        assert!(matches[4].warning("").unwrap().contains("under the bucket"));
    }

    #[test]
    fn only_include_patterns_count_as_includes() {
        assert!(!sel(&[], &["*.tmp"]).has_includes());
        assert!(sel(&["*.csv"], &[]).has_includes());
    }

    #[test]
    fn logical_keys_keep_the_path_or_flatten_to_the_base_name() {
        assert_eq!(
            logical_key("a/b/c.csv", false).unwrap().as_str(),
            "a/b/c.csv"
        );
        assert_eq!(logical_key("a/b/c.csv", true).unwrap().as_str(), "c.csv");
        assert_eq!(logical_key("c.csv", true).unwrap().as_str(), "c.csv");
        assert!(logical_key("a//c.csv", false).is_err());
        assert!(
            logical_key("a/..", true).is_err(),
            "`..` is refused even flattened"
        );
    }
}
