//! The admin listings' query: `?limit=N` pages, `?after=<id>` continues after an item, and the
//! next page is named in a `Link: <…>; rel="next"` header, so the body stays the bare JSON array
//! the Go service's clients expect. Without `limit` a listing of the pool is the whole array,
//! streamed ([`super::stream`]): its memory does not grow with the pool and its first byte
//! leaves at once.
//!
//! Query parameters a listing does not know are ignored (as every route does, and as the Go
//! service did), and carried into the `Link` unchanged; a parameter given twice counts once, by
//! its first value.

use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use serde::Serialize;

use super::error::{ApiError, json_response};
use super::stream::{self, Out};
use crate::broker::Snapshot;

/// The most items one page holds; a larger `limit` reads as this.
pub const MAX_PAGE: usize = 1_000;

/// A listing request's path and query parameters.
pub struct Listing {
    path: String,
    params: Vec<(String, String)>,
}

impl Listing {
    pub fn new(uri: &Uri) -> Self {
        let params = uri
            .query()
            .map(|query| {
                form_urlencoded::parse(query.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default();
        Self {
            path: uri.path().to_owned(),
            params,
        }
    }

    /// The first value of parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(param, _)| param == name)
            .map(|(_, value)| value.as_str())
    }

    /// `?limit=N`: 1 or more; above [`MAX_PAGE`] reads as [`MAX_PAGE`]. `None` when absent.
    pub fn limit(&self) -> Result<Option<usize>, ApiError> {
        let Some(text) = self.param("limit") else {
            return Ok(None);
        };
        // Digits only; too many of them for a u64 is still "above 1000".
        let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
        digits
            .then(|| text.parse::<u64>().unwrap_or(u64::MAX))
            .filter(|n| *n >= 1)
            .map(|n| Some(n.min(MAX_PAGE as u64) as usize))
            .ok_or_else(|| ApiError::BadRequest("limit must be an integer from 1 to 1000".into()))
    }

    /// `?after=<id>`: the id the listing continues after.
    pub fn after(&self) -> Option<&str> {
        self.param("after")
    }

    /// A page of at most `limit` items, which `fill` pushes in order (it may stop as soon as a
    /// push answers `false`); when more follow, the `Link` to the next page.
    pub fn page(&self, limit: usize, fill: impl FnOnce(&mut Page)) -> Response {
        let mut page = Page {
            body: vec![b'['],
            limit,
            count: 0,
            last: String::new(),
            more: false,
        };
        fill(&mut page);
        page.body.push(b']');
        let mut response = json_response(StatusCode::OK, page.body);
        if page.more
            && let Ok(link) = HeaderValue::try_from(self.next(&page.last))
        {
            response.headers_mut().insert(header::LINK, link);
        }
        response
    }

    /// The `Link` to the page after item `last`: this request's path and parameters, `after`
    /// replaced, percent-encoded.
    fn next(&self, last: &str) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (name, value) in self.params.iter().filter(|(name, _)| name != "after") {
            query.append_pair(name, value);
        }
        query.append_pair("after", last);
        format!("<{}?{}>; rel=\"next\"", self.path, query.finish())
    }
}

/// Where a listing's items go, each with its id, in the listing's order.
pub trait Items {
    /// Adds `view`; `false` when the listing should stop (the page is full, or the client of a
    /// streamed listing is gone).
    fn push(&mut self, id: &str, view: &impl Serialize) -> bool;
}

/// A page being filled: its JSON array so far.
pub struct Page {
    body: Vec<u8>,
    limit: usize,
    count: usize,
    /// The id of the last item in the page.
    last: String,
    /// An item was offered past the limit: a next page exists.
    more: bool,
}

impl Items for Page {
    fn push(&mut self, id: &str, view: &impl Serialize) -> bool {
        if self.count == self.limit {
            self.more = true;
            return false;
        }
        write_item(&mut self.body, self.count, view);
        self.count += 1;
        self.last.clear();
        self.last.push_str(id);
        true
    }
}

/// A streamed listing's array.
struct Array<'a> {
    out: &'a mut Out,
    count: usize,
}

impl Items for Array<'_> {
    fn push(&mut self, _: &str, view: &impl Serialize) -> bool {
        write_item(self.out.buf(), self.count, view);
        self.count += 1;
        self.out.written();
        !self.out.is_cut()
    }
}

fn write_item(body: &mut Vec<u8>, index: usize, view: &impl Serialize) {
    if index > 0 {
        body.push(b',');
    }
    serde_json::to_writer(body, view).expect("admin views always serialize");
}

/// What a listing of the pool lists, read from a snapshot in a stable order by id.
pub trait Source: Send + 'static {
    /// Pushes the items after the one with id `after` (from the first when `None`), in order,
    /// until `items` says to stop.
    fn each(&self, snapshot: &Snapshot, after: Option<&str>, items: &mut impl Items);
}

/// The listing of `source` read from `snapshot`: a page with `?limit=`, else the whole array,
/// streamed from a blocking thread that holds the snapshot until the client has read it.
pub fn list(
    listing: &Listing,
    snapshot: Arc<Snapshot>,
    source: impl Source,
) -> Result<Response, ApiError> {
    let after = listing.after().map(str::to_owned);
    if let Some(limit) = listing.limit()? {
        return Ok(listing.page(limit, |page| {
            source.each(&snapshot, after.as_deref(), page);
        }));
    }
    let body = stream::spawn(move |out| {
        out.buf().push(b'[');
        source.each(&snapshot, after.as_deref(), &mut Array { out, count: 0 });
        out.buf().push(b']');
    });
    Ok(json_response(StatusCode::OK, body))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn listing(uri: &str) -> Listing {
        Listing::new(&uri.parse().unwrap())
    }

    #[test]
    fn the_next_link_keeps_the_other_parameters_encoded() {
        let listing = listing("/admin/keys?name_prefix=a%20b%26c&limit=2&after=old&x=%3E");
        assert_eq!(
            listing.next("id/1"),
            "</admin/keys?name_prefix=a+b%26c&limit=2&x=%3E&after=id%2F1>; rel=\"next\""
        );
    }

    #[test]
    fn limits_read_as_at_most_a_thousand() {
        assert_eq!(listing("/l").limit().unwrap(), None);
        assert_eq!(listing("/l?limit=1").limit().unwrap(), Some(1));
        assert_eq!(listing("/l?limit=1001").limit().unwrap(), Some(1_000));
        assert_eq!(
            listing("/l?limit=99999999999999999999").limit().unwrap(),
            Some(1_000)
        );
        for bad in ["0", "00", "-1", "+5", "x", "", "1.5", "1e3"] {
            assert!(
                listing(&format!("/l?limit={bad}")).limit().is_err(),
                "{bad}"
            );
        }
    }
}
