//! Collection pages split into records without re-serialising anything: each record is the
//! exact byte range of its object in Graph's response body (whitespace, key order, escapes
//! and unknown fields included), because the archive must hold what Graph sent.

use std::fmt;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use url::Url;

use super::error::PageError;

/// One page of a Graph collection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// The objects of `value`, in the order Graph sent them.
    pub records: Vec<Record>,
    /// The validated `@odata.nextLink` (same origin as the base URL), if there is another page.
    pub next_link: Option<Url>,
}

/// One object of a page's `value`, as the exact bytes of the response body.
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    /// A zero-copy slice of the response body.
    pub bytes: Bytes,
}

impl Record {
    /// Re-parses the bytes as a borrowed `RawValue` (cheap: validation only, no allocation
    /// per field), for sources that need to read ids and dates out of the record.
    pub fn raw(&self) -> Result<&RawValue, PageError> {
        serde_json::from_slice(&self.bytes).map_err(|e| PageError::from_json(&e))
    }
}

/// Archived records hold personal data: debug output shows only their size.
impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// The envelope `{"value":[...], "@odata.nextLink": "..."}`; other keys (`@odata.context`,
/// `@odata.count`, `@odata.deltaLink`, ...) are skipped by serde.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    value: Vec<&'a RawValue>,
    #[serde(rename = "@odata.nextLink", default)]
    next_link: Option<String>,
}

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Parses a Graph collection envelope without re-serialising: returns the exact bytes of each
/// object of `value` (zero-copy slices of `body`) and the raw `@odata.nextLink`, if any.
pub fn parse_collection(body: &Bytes) -> Result<(Vec<Bytes>, Option<String>), PageError> {
    // A BOM is not JSON but harmless; the offsets below stay relative to the whole body.
    let json = body.strip_prefix(UTF8_BOM).unwrap_or(body);
    let envelope: Envelope<'_> =
        serde_json::from_slice(json).map_err(|e| PageError::from_json(&e))?;
    let records = envelope
        .value
        .iter()
        .enumerate()
        .map(|(index, raw)| slice_of(body, raw, index))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((records, envelope.next_link))
}

/// The sub-slice of `body` that `raw` borrows. serde_json hands out `RawValue`s that point into
/// the input, so the offset is plain pointer arithmetic; it is still checked rather than
/// trusted, so a surprise becomes an error instead of a panic.
fn slice_of(body: &Bytes, raw: &RawValue, index: usize) -> Result<Bytes, PageError> {
    let text = raw.get();
    if !text.starts_with('{') {
        return Err(PageError::NotAnObject { index });
    }
    let start = (text.as_ptr() as usize)
        .checked_sub(body.as_ptr() as usize)
        .ok_or(PageError::OutsideBody)?;
    let end = start
        .checked_add(text.len())
        .filter(|end| *end <= body.len())
        .ok_or(PageError::OutsideBody)?;
    Ok(body.slice(start..end))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Odd spacing, tabs, CRLF, `\u00e9` escapes, raw UTF-8, nested objects, strings holding
    /// `}` `]` and `"`, unknown fields, and envelope keys before and after `value`.
    const BODY: &str = "{\r\n  \"@odata.context\" : \"https://graph.microsoft.com/v1.0/$metadata#x\",\r\n\t\"value\" :[ {\"id\":\"1\",  \"text\":\"caf\\u00e9 } ] \\\" {\" ,\"nested\":{\"a\":[1, {\"b\" : \"}\"}],\"z\":null}}\r\n ,\r\n\t{ \"id\" : \"2\", \"raw\":\"naïve — 日本語 😀\",\"unknownFutureField\" : {\"k\":\"\\\"}\\\\\"} }\r\n,{}],\r\n  \"@odata.nextLink\":\"https://graph.microsoft.com/v1.0/x?$skiptoken=a\\u0026b\" , \"@odata.count\": 3 }\r\n";

    #[test]
    fn records_are_exact_byte_slices() {
        let body = Bytes::from_static(BODY.as_bytes());
        let (records, next) = parse_collection(&body).expect("valid page");
        let expected = [
            "{\"id\":\"1\",  \"text\":\"caf\\u00e9 } ] \\\" {\" ,\"nested\":{\"a\":[1, {\"b\" : \"}\"}],\"z\":null}}",
            "{ \"id\" : \"2\", \"raw\":\"naïve — 日本語 😀\",\"unknownFutureField\" : {\"k\":\"\\\"}\\\\\"} }",
            "{}",
        ];
        assert_eq!(records.len(), expected.len());
        for (record, want) in records.iter().zip(expected) {
            assert_eq!(record.as_ref(), want.as_bytes());
            // Zero-copy: the record points into the body.
            let offset = record.as_ptr() as usize - body.as_ptr() as usize;
            assert_eq!(&body[offset..offset + record.len()], want.as_bytes());
        }
        // The link is unescaped (it is a URL, not archived bytes).
        assert_eq!(
            next.as_deref(),
            Some("https://graph.microsoft.com/v1.0/x?$skiptoken=a&b")
        );
        let record = Record {
            bytes: records[1].clone(),
        };
        assert_eq!(record.raw().expect("raw").get(), expected[1]);
    }

    #[test]
    fn seed_example_round_trips_exactly() {
        let body = Bytes::from_static(
            b"{\n\t\"@odata.count\": 2,\n\t\"value\": [\n\t\t{\n\t\t\t\"id\": \"1732148357313\",\n\t\t\t\"body\": {\"contentType\": \"html\", \"content\": \"<attachment id=\\\"4062\\\"></attachment>\"}\n\t\t}\n\t]\n}",
        );
        let (records, next) = parse_collection(&body).expect("valid page");
        assert!(next.is_none());
        assert_eq!(records.len(), 1);
        assert!(records[0].starts_with(b"{\n\t\t\t\"id\""));
        assert!(records[0].ends_with(b"\"}\n\t\t}"));
    }

    #[test]
    fn empty_value_and_bom() {
        let body = Bytes::from_static(b"\xEF\xBB\xBF{\"value\":[ {\"a\":1} ]}");
        let (records, _) = parse_collection(&body).expect("BOM tolerated");
        assert_eq!(records[0].as_ref(), b"{\"a\":1}");
        let (records, next) =
            parse_collection(&Bytes::from_static(b"{\"value\":[]}")).expect("empty page");
        assert!(records.is_empty() && next.is_none());
    }

    #[test]
    fn every_truncation_fails() {
        let end = BODY.rfind('}').expect("closing brace");
        for cut in 0..end {
            if !BODY.is_char_boundary(cut) {
                continue;
            }
            let body = Bytes::copy_from_slice(&BODY.as_bytes()[..cut]);
            assert!(
                parse_collection(&body).is_err(),
                "prefix of {cut} bytes parsed"
            );
        }
        let body = Bytes::copy_from_slice(&BODY.as_bytes()[..120]);
        assert!(matches!(
            parse_collection(&body),
            Err(PageError::Truncated { .. })
        ));
    }

    #[test]
    fn malformed_bodies_fail_with_positions_only() {
        let cases: [&[u8]; 9] = [
            b"",
            b"[]",
            b"{}",
            b"{\"value\":null}",
            b"{\"value\":5}",
            b"{\"value\":[1]}",
            b"{\"value\":[{\"a\":1}] garbage",
            b"<html>502 Bad Gateway</html>",
            b"{\"value\":[{\"secret-looking\":\"data\"}],\"value\":[]}",
        ];
        for case in cases {
            let err = parse_collection(&Bytes::from_static(case)).expect_err("must fail");
            let text = err.to_string();
            assert!(!text.contains("data") && !text.contains("html"), "{text}");
        }
        assert_eq!(
            parse_collection(&Bytes::from_static(b"{\"value\":[{},\"x\"]}")),
            Err(PageError::NotAnObject { index: 1 })
        );
    }
}
