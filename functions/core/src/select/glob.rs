//! Glob patterns matched character by character, never byte by byte.
//!
//! Why not `globset`: it compiles to a byte regex, so `?` matches one *byte* and a key part such
//! as `ü.csv` escapes `?.csv` (found by the reference-model property test). S3 keys are Unicode
//! text, and every character must count as one.
//!
//! Syntax: `*` (any run within a path part), `?` (one character), `[abc]`, `[a-z]`, `[!x]` /
//! `[^x]` (one character in / not in the class), `{a,b}` (alternatives, nestable, may contain
//! `/`), `\x` (a literal `x`), and `**` as a whole path part (any number of parts; a trailing
//! `/**` needs at least one). `*` and `?` never match `/`.

/// Most alternatives one pattern may expand to (`{a,b}{c,d}` is four).
const MAX_ALTERNATIVES: usize = 1024;
/// Deepest nesting of `{…}`: expansion recurses once per group, so an unbounded pattern (a
/// few thousand nested `{`) would overflow the stack and abort the process.
pub const MAX_BRACE_DEPTH: usize = 16;
/// Most `{…}` groups in one pattern, for the same reason.
pub const MAX_BRACE_GROUPS: usize = 64;
/// Longest pattern, in characters: S3 keys are at most 1024 bytes.
pub const MAX_PATTERN_CHARS: usize = 4096;

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Literal(char),
    Any,
    Star,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    /// `**`: any number of path parts.
    AnyParts,
    /// One path part.
    Part(Vec<Token>),
}

/// A compiled glob.
#[derive(Debug, Clone)]
pub struct Glob {
    alternatives: Vec<Vec<Segment>>,
}

impl Glob {
    /// Compiles `pattern`; the error says what is wrong with it.
    pub fn new(pattern: &str) -> Result<Glob, String> {
        check_size(pattern)?;
        let alternatives = expand_braces(pattern)?
            .iter()
            .map(|p| parse_segments(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Glob { alternatives })
    }

    /// Whether the pattern has more than one path part (contains a `/`) in any alternative.
    pub fn has_separator(&self) -> bool {
        self.alternatives.iter().any(|a| a.len() > 1)
    }

    /// Whether the path parts match the whole pattern.
    pub fn matches_parts(&self, parts: &[&str]) -> bool {
        let chars: Vec<Vec<char>> = parts.iter().map(|p| p.chars().collect()).collect();
        self.alternatives
            .iter()
            .any(|segments| match_segments(segments, &chars))
    }
}

/// Whether `segments` match all of `parts`, by dynamic programming from the last segment
/// back: `matched[j]` says whether the segments after the current one match `parts[j..]`.
/// Trying every split recursively instead would recurse once per `**` and take exponential
/// time on patterns such as `**/a/**/a/**/a/b`.
fn match_segments(segments: &[Segment], parts: &[Vec<char>]) -> bool {
    let n = parts.len();
    // No segments match no parts.
    let mut matched: Vec<bool> = (0..=n).map(|j| j == n).collect();
    for (i, segment) in segments.iter().enumerate().rev() {
        let is_last = i + 1 == segments.len();
        let mut current = vec![false; n + 1];
        match segment {
            // A trailing `**` needs at least one part.
            Segment::AnyParts if is_last => current[..n].fill(true),
            Segment::AnyParts => {
                let mut any_later = false;
                for j in (0..=n).rev() {
                    any_later |= matched[j];
                    current[j] = any_later;
                }
            }
            Segment::Part(tokens) => {
                for j in 0..n {
                    current[j] = matched[j + 1] && match_part(tokens, &parts[j]);
                }
            }
        }
        matched = current;
    }
    matched[0]
}

fn token_matches(token: &Token, c: char) -> bool {
    match token {
        Token::Literal(l) => *l == c,
        Token::Any => true,
        Token::Star => false,
        Token::Class { negated, ranges } => {
            ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated
        }
    }
}

/// Wildcard matching with one backtrack point: linear in practice, never exponential.
fn match_part(tokens: &[Token], text: &[char]) -> bool {
    let (mut t, mut s) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while s < text.len() {
        if t < tokens.len() {
            if tokens[t] == Token::Star {
                star = Some((t, s));
                t += 1;
                continue;
            }
            if token_matches(&tokens[t], text[s]) {
                t += 1;
                s += 1;
                continue;
            }
        }
        match star {
            Some((star_t, star_s)) => {
                t = star_t + 1;
                s = star_s + 1;
                star = Some((star_t, star_s + 1));
            }
            None => return false,
        }
    }
    tokens[t..].iter().all(|t| *t == Token::Star)
}

/// Refuses patterns longer than [`MAX_PATTERN_CHARS`] or with more `{…}` groups, or deeper
/// nested ones, than expansion may recurse through.
fn check_size(pattern: &str) -> Result<(), String> {
    let length = pattern.chars().count();
    if length > MAX_PATTERN_CHARS {
        return Err(format!(
            "it is {length} characters long; at most {MAX_PATTERN_CHARS} are allowed"
        ));
    }
    let (mut depth, mut deepest, mut groups) = (0usize, 0usize, 0usize);
    let (mut in_class, mut escaped) = (false, false);
    for c in pattern.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '[' if !in_class => in_class = true,
            ']' if in_class => in_class = false,
            '{' if !in_class => {
                depth += 1;
                groups += 1;
                deepest = deepest.max(depth);
            }
            '}' if !in_class => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if deepest > MAX_BRACE_DEPTH {
        return Err(format!(
            "its `{{…}}` groups nest {deepest} deep; at most {MAX_BRACE_DEPTH} levels are allowed"
        ));
    }
    if groups > MAX_BRACE_GROUPS {
        return Err(format!(
            "it has {groups} `{{…}}` groups; at most {MAX_BRACE_GROUPS} are allowed"
        ));
    }
    Ok(())
}

/// Expands `{a,b}` alternatives (outside classes, honouring escapes) into plain patterns.
fn expand_braces(pattern: &str) -> Result<Vec<String>, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    let mut in_class = false;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 1,
            '[' if !in_class => in_class = true,
            ']' if in_class => in_class = false,
            '{' if !in_class => {
                let (alternatives, end) = split_alternatives(&chars, i)?;
                let prefix: String = chars[..i].iter().collect();
                let suffix: String = chars[end + 1..].iter().collect();
                let mut out = Vec::new();
                for alternative in alternatives {
                    for tail in expand_braces(&format!("{alternative}{suffix}"))? {
                        out.push(format!("{prefix}{tail}"));
                        if out.len() > MAX_ALTERNATIVES {
                            return Err(format!(
                                "it expands to more than {MAX_ALTERNATIVES} alternatives"
                            ));
                        }
                    }
                }
                return Ok(out);
            }
            _ => {}
        }
        i += 1;
    }
    Ok(vec![pattern.to_string()])
}

/// The top-level alternatives of the `{…}` opening at `open`, and the index of its `}`.
fn split_alternatives(chars: &[char], open: usize) -> Result<(Vec<String>, usize), String> {
    let (mut depth, mut in_class) = (0usize, false);
    let mut current = String::new();
    let mut alternatives = Vec::new();
    let mut i = open + 1;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' if i + 1 < chars.len() => {
                current.push(c);
                current.push(chars[i + 1]);
                i += 2;
                continue;
            }
            '[' if !in_class => in_class = true,
            ']' if in_class => in_class = false,
            '{' if !in_class => depth += 1,
            '}' if !in_class && depth > 0 => depth -= 1,
            '}' if !in_class => {
                alternatives.push(current);
                return Ok((alternatives, i));
            }
            ',' if !in_class && depth == 0 => {
                alternatives.push(std::mem::take(&mut current));
                i += 1;
                continue;
            }
            _ => {}
        }
        current.push(c);
        i += 1;
    }
    Err("a `{` is not closed by `}`".into())
}

fn parse_segments(pattern: &str) -> Result<Vec<Segment>, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut segments = Vec::new();
    let mut tokens = Vec::new();
    let mut raw_part = String::new();
    let mut i = 0;
    let close_part = |tokens: &mut Vec<Token>, raw: &mut String, segments: &mut Vec<Segment>| {
        if raw == "**" {
            segments.push(Segment::AnyParts);
        } else {
            segments.push(Segment::Part(std::mem::take(tokens)));
        }
        tokens.clear();
        raw.clear();
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '/' => close_part(&mut tokens, &mut raw_part, &mut segments),
            '\\' => {
                let escaped = *chars.get(i + 1).ok_or("it ends with a lone `\\`")?;
                tokens.push(Token::Literal(escaped));
                raw_part.push('\\');
                raw_part.push(escaped);
                i += 1;
            }
            '*' => {
                if tokens.last() != Some(&Token::Star) {
                    tokens.push(Token::Star);
                }
                raw_part.push('*');
            }
            '?' => {
                tokens.push(Token::Any);
                raw_part.push('?');
            }
            '[' => {
                let (token, end) = parse_class(&chars, i)?;
                tokens.push(token);
                raw_part.push('[');
                i = end;
            }
            c => {
                tokens.push(Token::Literal(c));
                raw_part.push(c);
            }
        }
        i += 1;
    }
    close_part(&mut tokens, &mut raw_part, &mut segments);
    Ok(segments)
}

/// Parses `[...]` opening at `open`; returns the class and the index of its `]`.
fn parse_class(chars: &[char], open: usize) -> Result<(Token, usize), String> {
    let mut i = open + 1;
    let negated = matches!(chars.get(i), Some('!' | '^'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let mut c = *chars.get(i).ok_or("a `[` is not closed by `]`")?;
        if c == ']' && !first {
            return Ok((Token::Class { negated, ranges }, i));
        }
        first = false;
        if c == '\\' {
            i += 1;
            c = *chars.get(i).ok_or("a `[` is not closed by `]`")?;
        }
        if chars.get(i + 1) == Some(&'-') && chars.get(i + 2).is_some_and(|n| *n != ']') {
            let mut hi = chars[i + 2];
            let mut skip = 2;
            if hi == '\\' {
                hi = *chars.get(i + 3).ok_or("a `[` is not closed by `]`")?;
                skip = 3;
            }
            if hi < c {
                return Err(format!("the range `{c}-{hi}` is backwards"));
            }
            ranges.push((c, hi));
            i += skip + 1;
        } else {
            ranges.push((c, c));
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, path: &str) -> bool {
        Glob::new(pattern)
            .unwrap()
            .matches_parts(&path.split('/').collect::<Vec<_>>())
    }

    #[test]
    fn characters_not_bytes() {
        assert!(m("?.csv", "ü.csv"));
        assert!(m("?", "😀"));
        assert!(m("[ü]x", "üx"));
        assert!(m("[a-z]*", "zebra"));
        assert!(!m("[!a-z]*", "zebra"));
        assert!(m("[^a-z]*", "Zebra"));
    }

    #[test]
    fn stars_and_double_stars() {
        assert!(m("*.csv", "a.csv") && !m("*.csv", "x/a.csv"));
        assert!(m("**/a.csv", "a.csv") && m("**/a.csv", "x/y/a.csv"));
        assert!(m("raw/**", "raw/a") && m("raw/**", "raw/a/b") && !m("raw/**", "raw"));
        assert!(m("a/**/b", "a/b") && m("a/**/b", "a/x/y/b"));
        assert!(
            m("a**b", "axxb") && !m("a**b", "a/b"),
            "`**` inside a part is `*`"
        );
        assert!(m("*a*b*c*", "xxaxxbxxcxx") && !m("*a*b*c*", "xxaxxcxxbxx"));
    }

    #[test]
    fn braces_escapes_and_errors() {
        assert!(m("{raw,clean}/*.csv", "clean/a.csv") && !m("{raw,clean}/*.csv", "other/a.csv"));
        assert!(m("a.{csv,tsv,}", "a.") && m("a.{c{s,x}v}", "a.cxv"));
        assert!(m("\\[x\\]/\\*", "[x]/*") && !m("\\[x\\]/\\*", "[x]/a"));
        assert!(m("[]]", "]") && m("[!]]", "a"));
        for bad in ["[abc", "{a,b", "a\\", "[z-a]"] {
            assert!(Glob::new(bad).is_err(), "{bad}");
        }
        assert!(
            Glob::new(&"{a,b}".repeat(11)).is_err(),
            "2^11 alternatives are refused"
        );
    }

    #[test]
    fn escapes_and_classes_inside_braces_and_classes_are_literal() {
        // An escaped `,` or `}` inside braces does not split or close them.
        assert!(m("{a\\,b,c}", "a,b") && m("{a\\,b,c}", "c") && !m("{a\\,b,c}", "a"));
        assert!(m("{x\\}}", "x}"));
        // A class inside braces keeps its `,` and `}`.
        assert!(m("{[,}]x,y}", ",x") && m("{[,}]x,y}", "}x") && m("{[,}]x,y}", "y"));
        // Escapes inside a class, also as a range end.
        assert!(m("[\\]]", "]") && !m("[\\]]", "\\"));
        assert!(m("[a-\\z]", "m") && !m("[a-\\z]", "A"));
        assert!(m("[\\!a]", "!"), "an escaped `!` is not a negation");
        // A `-` first or last in a class is literal.
        assert!(m("[-a]", "-") && m("[a-]", "-") && !m("[a-]", "b"));
        for bad in ["[a-\\", "[\\", "{a,[b}"] {
            assert!(Glob::new(bad).is_err(), "{bad}");
        }
        let err = Glob::new("[z-a]").unwrap_err();
        assert_eq!(err, "the range `z-a` is backwards");
        assert_eq!(Glob::new("{a").unwrap_err(), "a `{` is not closed by `}`");
    }

    #[test]
    fn nesting_and_size_are_bounded() {
        let nested = |n: usize| format!("{}a{}", "{".repeat(n), "}".repeat(n));
        assert!(m(&nested(MAX_BRACE_DEPTH), "a"));
        for depth in [MAX_BRACE_DEPTH + 1, 2000] {
            let err = Glob::new(&nested(depth)).unwrap_err();
            assert_eq!(
                err,
                format!("its `{{…}}` groups nest {depth} deep; at most 16 levels are allowed")
            );
        }
        assert!(Glob::new(&"{a}".repeat(MAX_BRACE_GROUPS)).is_ok());
        let err = Glob::new(&"{a}".repeat(1000)).unwrap_err();
        assert!(err.contains("1000 `{…}` groups; at most 64"), "{err}");
        assert!(
            Glob::new("\\{".repeat(2000).as_str()).is_ok(),
            "escaped braces are literal"
        );
        let err = Glob::new(&"a".repeat(MAX_PATTERN_CHARS + 1)).unwrap_err();
        assert!(err.contains("at most 4096"), "{err}");
        // Many `**` neither recurse deeply nor take exponential time.
        let stars = format!("{}b", "**/a/".repeat(600));
        let key: Vec<&str> = std::iter::repeat_n("a", 500).collect();
        assert!(!Glob::new(&stars).unwrap().matches_parts(&key));
        let doubles = format!("{}x", "**/".repeat(1300));
        assert!(m(&doubles, "a/b/x") && !m(&doubles, "a/b/y"));
    }

    #[test]
    fn separators_are_seen_in_any_alternative() {
        assert!(!Glob::new("*.csv").unwrap().has_separator());
        assert!(Glob::new("{a,b/c}").unwrap().has_separator());
        assert!(Glob::new("a/*").unwrap().has_separator());
    }
}
