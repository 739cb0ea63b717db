//! A header list in two allocations: every name and value back to back in
//! one string, and where each ends. A list of `(String, String)` made two
//! allocations per field, each freed again once the exchange was printed:
//! under many small exchanges that was most of the decoder's allocator work.

use std::fmt;

/// Header fields (or trailer fields) in the order they came, names as
/// they were written (HTTP/1) or decoded (HTTP/2), values as text with
/// invalid UTF-8 replaced.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    /// Each field's name, then its value, field after field.
    text: String,
    /// Where each field's name and value end in `text`.
    ends: Vec<(usize, usize)>,
}

/// No fields, for a list that was never captured.
pub(crate) static NO_HEADERS: Headers = Headers::new();

impl Headers {
    pub const fn new() -> Self {
        Headers { text: String::new(), ends: Vec::new() }
    }

    /// Room for `fields` fields of `bytes` bytes of names and values.
    pub fn with_capacity(fields: usize, bytes: usize) -> Self {
        Headers { text: String::with_capacity(bytes), ends: Vec::with_capacity(fields) }
    }

    pub fn push(&mut self, name: &str, value: &str) {
        self.text.push_str(name);
        let name_end = self.text.len();
        self.text.push_str(value);
        self.ends.push((name_end, self.text.len()));
    }

    /// A field from bytes, each part that is not UTF-8 replaced by U+FFFD
    /// (as `String::from_utf8_lossy` does).
    pub(crate) fn push_lossy(&mut self, name: &[u8], value: &[u8]) {
        push_lossy(&mut self.text, name);
        self.push_lossy_value(value);
    }

    /// A field whose name is text already (HTTP/1 names are tokens), its
    /// value from bytes as `push_lossy` takes them.
    pub(crate) fn push_with_lossy_value(&mut self, name: &str, value: &[u8]) {
        self.text.push_str(name);
        self.push_lossy_value(value);
    }

    /// Ends the field whose name was just written.
    fn push_lossy_value(&mut self, value: &[u8]) {
        let name_end = self.text.len();
        push_lossy(&mut self.text, value);
        self.ends.push((name_end, self.text.len()));
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn iter(&self) -> Iter<'_> {
        Iter { headers: self, next: 0, end: self.ends.len() }
    }

    /// The first value of the field `name`, compared case-insensitively.
    pub fn get(&self, name: &str) -> Option<&str> {
        // Names compared as bytes: this runs several times per message,
        // and slicing the text as str checks char boundaries each time.
        let text = self.text.as_bytes();
        let mut start = 0;
        for (i, &(name_end, value_end)) in self.ends.iter().enumerate() {
            if text[start..name_end].eq_ignore_ascii_case(name.as_bytes()) {
                return Some(self.field(i).1);
            }
            start = value_end;
        }
        None
    }

    /// The size RFC 7541 (section 4.1) counts for the list: each name and
    /// value, and 32 bytes per field.
    pub fn list_size(&self) -> usize {
        self.text.len() + 32 * self.ends.len()
    }

    fn field(&self, i: usize) -> (&str, &str) {
        let start = if i == 0 { 0 } else { self.ends[i - 1].1 };
        let (name_end, value_end) = self.ends[i];
        (&self.text[start..name_end], &self.text[name_end..value_end])
    }
}

fn push_lossy(text: &mut String, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => text.push_str(s),
        Err(_) => text.push_str(&String::from_utf8_lossy(bytes)),
    }
}

/// The fields of a [`Headers`], as `(name, value)`.
#[derive(Clone)]
pub struct Iter<'a> {
    headers: &'a Headers,
    next: usize,
    end: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next == self.end {
            return None;
        }
        self.next += 1;
        Some(self.headers.field(self.next - 1))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.end - self.next;
        (left, Some(left))
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.next == self.end {
            return None;
        }
        self.end -= 1;
        Some(self.headers.field(self.end))
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a Headers {
    type Item = (&'a str, &'a str);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl<N: AsRef<str>, V: AsRef<str>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(fields: I) -> Self {
        let mut headers = Headers::new();
        headers.extend(fields);
        headers
    }
}

impl<N: AsRef<str>, V: AsRef<str>> Extend<(N, V)> for Headers {
    fn extend<I: IntoIterator<Item = (N, V)>>(&mut self, fields: I) {
        for (name, value) in fields {
            self.push(name.as_ref(), value.as_ref());
        }
    }
}

/// The same fields, in the same order, as a list of pairs.
impl PartialEq<Vec<(String, String)>> for Headers {
    fn eq(&self, pairs: &Vec<(String, String)>) -> bool {
        self.len() == pairs.len() && self.iter().zip(pairs).all(|((n, v), (pn, pv))| n == pn && v == pv)
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// As a list of `[name, value]` pairs, exactly as a `Vec<(String, String)>`
/// is (de)serialized: the JSON lines were written from one.
#[cfg(feature = "serde")]
impl serde::Serialize for Headers {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Headers {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let fields: Vec<(String, String)> = serde::Deserialize::deserialize(deserializer)?;
        Ok(fields.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_back_in_order_from_both_ends() {
        let fields = [("Host", "a"), ("", ""), ("x-empty", ""), ("", "value only"), ("Host", "b\u{e9}")];
        let headers: Headers = fields.into_iter().collect();
        assert_eq!(headers.len(), 5);
        assert_eq!(headers.iter().collect::<Vec<_>>(), fields);
        assert_eq!(
            headers.iter().rev().collect::<Vec<_>>(),
            fields.iter().rev().copied().collect::<Vec<_>>()
        );
        assert_eq!(headers.get("HOST"), Some("a"), "the first, case-insensitively");
        assert_eq!(headers.get("missing"), None);
        assert_eq!(headers.list_size(), fields.iter().map(|(n, v)| n.len() + v.len() + 32).sum::<usize>());
        assert!(NO_HEADERS.is_empty() && NO_HEADERS.iter().next().is_none());
    }

    #[test]
    fn bytes_that_are_not_utf8_are_replaced_as_from_utf8_lossy_does() {
        let mut headers = Headers::new();
        let (name, value) = (&b"x-\xff"[..], &b"a\xc3b\xe2\x82"[..]);
        headers.push_lossy(name, value);
        headers.push_lossy(b"plain", b"ascii");
        let want = [
            (String::from_utf8_lossy(name).into_owned(), String::from_utf8_lossy(value).into_owned()),
            ("plain".into(), "ascii".into()),
        ];
        let got: Vec<(String, String)> = headers.iter().map(|(n, v)| (n.into(), v.into())).collect();
        assert_eq!(got, want);
    }
}
