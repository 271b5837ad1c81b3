//! An ordered JSON tree and a writer with many output styles.
//!
//! Graph's bytes are not canonical JSON, and the archiver must store the exact bytes it
//! received. Rendering every record the same way would let a client that re-serialises
//! records pass by luck, so records are written in varied styles: compact or pretty (tabs,
//! two or four spaces, CRLF), raw UTF-8 or `\u00e9`-style escapes, `\/`, shuffled keys.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::fmt::Write as _;

/// A JSON value whose objects keep their member order.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum J {
    Null,
    Bool(bool),
    /// A number written verbatim (lets records carry non-canonical forms like `1.50`).
    Num(String),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(&'static str, J)>),
}

impl J {
    pub(crate) fn str(s: impl Into<String>) -> J {
        J::Str(s.into())
    }

    pub(crate) fn int(n: i64) -> J {
        J::Num(n.to_string())
    }

    pub(crate) fn obj(members: Vec<(&'static str, J)>) -> J {
        J::Obj(members)
    }

    /// `Some(s)` as a string, `None` as null.
    pub(crate) fn opt_str(s: Option<String>) -> J {
        s.map_or(J::Null, J::Str)
    }
}

/// How strings are escaped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Escape {
    /// Escape every non-ASCII character as `\uXXXX` (surrogate pairs above U+FFFF).
    pub ascii: bool,
    /// Escape `/` as `\/`.
    pub slash: bool,
    /// Upper-case hex digits in `\u` escapes.
    pub upper_hex: bool,
}

/// Layout of a rendered value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Style {
    /// `None` for compact output, else the indentation unit.
    pub indent: Option<&'static str>,
    /// Line break of pretty output.
    pub newline: &'static str,
    /// Nesting depth the value is placed at (inner lines are indented from there).
    pub base_depth: usize,
    /// `"a": 1` instead of `"a":1` in compact output.
    pub colon_space: bool,
    /// `, ` instead of `,` in compact output.
    pub comma_space: bool,
    pub escape: Escape,
    /// Seed of a per-object key permutation; `None` keeps the tree's order.
    pub shuffle_keys: Option<u64>,
}

impl Style {
    pub(crate) const COMPACT: Style = Style {
        indent: None,
        newline: "\n",
        base_depth: 0,
        colon_space: false,
        comma_space: false,
        escape: Escape {
            ascii: false,
            slash: false,
            upper_hex: false,
        },
        shuffle_keys: None,
    };

    /// Pretty output with the given unit, placed at `base_depth`.
    pub(crate) fn pretty(unit: &'static str, base_depth: usize) -> Style {
        Style {
            indent: Some(unit),
            base_depth,
            colon_space: true,
            ..Style::COMPACT
        }
    }
}

/// Renders `value` in `style`.
pub(crate) fn render(value: &J, style: &Style) -> String {
    let mut writer = Writer {
        out: String::with_capacity(1024),
        style,
        rng: style.shuffle_keys.map(ChaCha8Rng::seed_from_u64),
    };
    writer.value(value, style.base_depth);
    writer.out
}

/// Appends `s` as a JSON string literal (quotes included) escaped per `escape`.
pub(crate) fn write_str(out: &mut String, s: &str, escape: Escape) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '/' if escape.slash => out.push_str("\\/"),
            c if (c as u32) < 0x20 || (escape.ascii && !c.is_ascii()) => {
                push_unicode_escape(out, c, escape.upper_hex);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn push_unicode_escape(out: &mut String, c: char, upper: bool) {
    let mut units = [0u16; 2];
    for unit in c.encode_utf16(&mut units) {
        // Writing to a String cannot fail.
        let _ = if upper {
            write!(out, "\\u{unit:04X}")
        } else {
            write!(out, "\\u{unit:04x}")
        };
    }
}

struct Writer<'a> {
    out: String,
    style: &'a Style,
    rng: Option<ChaCha8Rng>,
}

impl Writer<'_> {
    fn value(&mut self, value: &J, depth: usize) {
        match value {
            J::Null => self.out.push_str("null"),
            J::Bool(b) => self.out.push_str(if *b { "true" } else { "false" }),
            J::Num(n) => self.out.push_str(n),
            J::Str(s) => write_str(&mut self.out, s, self.style.escape),
            J::Arr(items) => self.array(items, depth),
            J::Obj(members) => self.object(members, depth),
        }
    }

    fn array(&mut self, items: &[J], depth: usize) {
        if items.is_empty() {
            self.out.push_str("[]");
            return;
        }
        self.out.push('[');
        for (i, item) in items.iter().enumerate() {
            self.separator(i, depth + 1);
            self.value(item, depth + 1);
        }
        self.close(']', depth);
    }

    fn object(&mut self, members: &[(&'static str, J)], depth: usize) {
        if members.is_empty() {
            self.out.push_str("{}");
            return;
        }
        let mut order: Vec<usize> = (0..members.len()).collect();
        if let Some(rng) = self.rng.as_mut() {
            order.shuffle(rng);
        }
        self.out.push('{');
        for (i, &m) in order.iter().enumerate() {
            let (key, value) = &members[m];
            self.separator(i, depth + 1);
            write_str(&mut self.out, key, self.style.escape);
            self.out.push(':');
            if self.style.colon_space {
                self.out.push(' ');
            }
            self.value(value, depth + 1);
        }
        self.close('}', depth);
    }

    /// Writes what precedes the `i`-th element of a container at `depth`.
    fn separator(&mut self, i: usize, depth: usize) {
        if i > 0 {
            self.out.push(',');
            if self.style.indent.is_none() && self.style.comma_space {
                self.out.push(' ');
            }
        }
        self.line(depth);
    }

    fn close(&mut self, bracket: char, depth: usize) {
        self.line(depth);
        self.out.push(bracket);
    }

    fn line(&mut self, depth: usize) {
        if let Some(unit) = self.style.indent {
            self.out.push_str(self.style.newline);
            for _ in 0..depth {
                self.out.push_str(unit);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> J {
        J::obj(vec![
            ("a", J::str("é/日本🙂\u{1}")),
            ("b", J::Arr(vec![J::int(1), J::Null, J::Bool(true)])),
            ("c", J::obj(vec![])),
            ("d", J::Num("1.50".to_owned())),
        ])
    }

    #[test]
    fn every_style_is_valid_json_with_the_same_value() {
        let expected: serde_json::Value =
            serde_json::from_str(&render(&sample(), &Style::COMPACT)).expect("compact parses");
        let mut styles = vec![
            Style::COMPACT,
            Style::pretty("\t", 2),
            Style::pretty("  ", 0),
        ];
        styles.push(Style {
            escape: Escape {
                ascii: true,
                slash: true,
                upper_hex: true,
            },
            shuffle_keys: Some(7),
            newline: "\r\n",
            ..Style::pretty("    ", 1)
        });
        for style in styles {
            let text = render(&sample(), &style);
            let value: serde_json::Value = serde_json::from_str(&text).expect("parses");
            assert_eq!(value, expected, "{text}");
        }
    }

    #[test]
    fn ascii_escapes_use_surrogate_pairs() {
        let mut out = String::new();
        let escape = Escape {
            ascii: true,
            slash: true,
            upper_hex: false,
        };
        write_str(&mut out, "é🙂/", escape);
        assert_eq!(out, "\"\\u00e9\\ud83d\\ude42\\/\"");
    }
}
