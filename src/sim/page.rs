//! Collection pages: `@odata.context`, `@odata.count`, `@odata.nextLink` and `value`,
//! around items that are already rendered (their bytes are placed verbatim).

use axum::http::{header, HeaderMap, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};

use super::json::{write_str, Escape};

/// The content type Graph answers collections with.
const ODATA_JSON: &str =
    "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8";

/// Where a request came in: the scheme and host the client used and the API version.
#[derive(Clone, Debug)]
pub(crate) struct Origin {
    /// `http://host:port`
    pub host_url: String,
    /// `v1.0` or `beta`
    pub version: &'static str,
}

impl Origin {
    pub(crate) fn new(uri: &Uri, headers: &HeaderMap) -> Origin {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| uri.authority().map(|a| a.as_str()))
            .unwrap_or("localhost");
        let version = if uri.path().starts_with("/beta/") {
            "beta"
        } else {
            "v1.0"
        };
        Origin {
            host_url: format!("http://{host}"),
            version,
        }
    }

    /// `http://host/v1.0`
    pub(crate) fn root(&self) -> String {
        format!("{}/{}", self.host_url, self.version)
    }

    /// `http://host/v1.0/$metadata#{fragment}`
    pub(crate) fn context(&self, fragment: &str) -> String {
        format!("{}/$metadata#{fragment}", self.root())
    }
}

/// Layout of a page around its items.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PageStyle {
    /// `None`: compact; else the indentation unit.
    pub indent: Option<&'static str>,
    pub escape: Escape,
}

impl PageStyle {
    pub(crate) const COMPACT: PageStyle = PageStyle {
        indent: None,
        escape: Escape {
            ascii: false,
            slash: false,
            upper_hex: false,
        },
    };

    /// One of a few layouts picked by `h`, like the seed's two examples and compact.
    pub(crate) fn varied(h: u64) -> PageStyle {
        let indent = match h % 3 {
            0 => None,
            1 => Some("\t"),
            _ => Some("  "),
        };
        PageStyle {
            indent,
            escape: Escape {
                slash: (h >> 8).is_multiple_of(4),
                ..Escape::default()
            },
        }
    }
}

/// A collection page in `style`; `items` are inserted verbatim.
pub(crate) fn render_page(
    context: &str,
    count: bool,
    next_link: Option<&str>,
    items: &[String],
    style: PageStyle,
) -> String {
    let size: usize = items.iter().map(|i| i.len() + 8).sum();
    let mut out = String::with_capacity(size + 512);
    let (nl, unit, colon) = match style.indent {
        Some(unit) => ("\n", unit, ": "),
        None => ("", "", ":"),
    };
    out.push('{');
    let member = |out: &mut String, first: bool, key: &str| {
        if !first {
            out.push(',');
        }
        out.push_str(nl);
        out.push_str(unit);
        write_str(out, key, style.escape);
        out.push_str(colon);
    };
    member(&mut out, true, "@odata.context");
    write_str(&mut out, context, style.escape);
    if count {
        member(&mut out, false, "@odata.count");
        out.push_str(&items.len().to_string());
    }
    if let Some(link) = next_link {
        member(&mut out, false, "@odata.nextLink");
        write_str(&mut out, link, style.escape);
    }
    member(&mut out, false, "value");
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(nl);
        out.push_str(unit);
        out.push_str(unit);
        out.push_str(item);
    }
    if !items.is_empty() {
        out.push_str(nl);
        out.push_str(unit);
    }
    out.push(']');
    out.push_str(nl);
    out.push('}');
    out
}

/// A 200 response carrying a page.
pub(crate) fn page_response(body: String) -> Response {
    let mut resp = body.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ODATA_JSON));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_parse_in_every_style() {
        let items = vec![
            "{\"a\":1}".to_owned(),
            "{\n\t\t\t\"b\": 2\n\t\t}".to_owned(),
        ];
        for h in 0..12 {
            let text = render_page(
                "http://x/v1.0/$metadata#c",
                true,
                Some("http://x/next?a=b"),
                &items,
                PageStyle::varied(h << 6 | h),
            );
            let v: serde_json::Value = serde_json::from_str(&text).expect("valid page");
            assert_eq!(v["@odata.count"], 2);
            assert_eq!(v["@odata.nextLink"], "http://x/next?a=b");
        }
        let empty = render_page("c", false, None, &[], PageStyle::COMPACT);
        assert_eq!(empty, "{\"@odata.context\":\"c\",\"value\":[]}");
    }
}
