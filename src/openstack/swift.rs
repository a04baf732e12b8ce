//! Swift (Object Storage API v1): containers, objects with their MD5,
//! Static Large Object manifests, streamed GETs and listings.

use std::collections::BTreeMap;
use std::io::Read;

use bytes::Bytes;
use md5::{Digest, Md5};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};

use super::auth::Session;
use super::http::{self, BodyReader, Early, Error, Request};

/// Everything but RFC 3986 unreserved characters is percent-encoded in a
/// path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One path segment (an id, a container name), percent-encoded.
pub fn encode_segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// Object metadata: `X-Object-Meta-<key>: <value>`. Keys are sent as given
/// and come back lower-cased (HTTP header names are case-insensitive).
pub type Metadata = BTreeMap<String, String>;

const META_PREFIX: &str = "x-object-meta-";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerState {
    Existed,
    Created,
}

/// One segment of a Static Large Object manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SloSegment {
    /// `/container/object`, not encoded.
    pub path: String,
    /// The segment's MD5, hex.
    pub etag: String,
    pub size_bytes: u64,
}

/// What a HEAD (or GET) says about an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    /// Without quotes. For an SLO: the MD5 of its segments' MD5s.
    pub etag: String,
    pub static_large_object: bool,
    pub content_type: Option<String>,
    pub last_modified: Option<String>,
    pub metadata: Metadata,
}

impl ObjectInfo {
    fn from_headers(headers: &HeaderMap) -> ObjectInfo {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        ObjectInfo {
            size: text("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            etag: text("etag")
                .map(|e| e.trim_matches('"').to_string())
                .unwrap_or_default(),
            static_large_object: text("x-static-large-object")
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
            content_type: text("content-type"),
            last_modified: text("last-modified"),
            metadata: headers
                .iter()
                .filter_map(|(name, value)| {
                    let key = name.as_str().strip_prefix(META_PREFIX)?;
                    Some((key.to_string(), value.to_str().ok()?.to_string()))
                })
                .collect(),
        }
    }
}

/// One entry of a container listing.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ObjectEntry {
    pub name: String,
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub hash: String,
    #[serde(default)]
    pub last_modified: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
}

/// An object's body as it arrives; `info` is from the response headers.
pub struct ObjectReader {
    pub info: ObjectInfo,
    body: BodyReader,
    received: u64,
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.body.read(buf) {
            Ok(n) => {
                self.received += n as u64;
                Ok(n)
            }
            Err(e) => {
                // Swift has sent the headers of a large object before it
                // reads each segment: a segment that is missing or fails
                // its MD5 check can only end the body early.
                let why = if self.info.static_large_object {
                    "; Swift cuts a large object's download short when one of its segments \
                     is missing or fails its MD5 check"
                } else {
                    ""
                };
                Err(std::io::Error::new(
                    e.kind(),
                    format!(
                        "the download from Swift broke off after {} of {} bytes ({}){why}",
                        self.received,
                        self.info.size,
                        io_error_chain(&e)
                    ),
                ))
            }
        }
    }
}

/// An I/O error with the errors it wraps (reqwest's body errors say what
/// happened only in their sources).
fn io_error_chain(e: &std::io::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut next = e.get_ref().and_then(|inner| inner.source());
    while let Some(inner) = next {
        let text = inner.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = inner.source();
    }
    parts.join(": ")
}

/// The `ETag` of a PUT's answer: the MD5 of what Swift stored.
fn answered_etag(req: &Request, status: StatusCode, headers: &HeaderMap) -> Result<String, Error> {
    let etag = ObjectInfo::from_headers(headers).etag;
    if etag.is_empty() {
        return Err(Error::decode(
            req,
            status,
            "Swift answered the PUT without an ETag".to_string(),
            http::request_id(headers),
        ));
    }
    Ok(etag)
}

/// The MD5 of a buffer, hex, as Swift's `ETag`.
pub fn md5_hex(data: &[u8]) -> String {
    Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a Swift cluster says about its limits in `GET /info`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most entries one SLO manifest may list (`slo.max_manifest_segments`).
    pub max_manifest_segments: u32,
    /// The largest object, so the largest segment (`swift.max_file_size`).
    pub max_file_size: u64,
}

impl Default for Limits {
    /// Swift's own defaults, for a cluster that does not say.
    fn default() -> Limits {
        Limits {
            max_manifest_segments: 1000,
            max_file_size: 5 * (1 << 30) + 2,
        }
    }
}

impl Limits {
    /// From `/info`'s JSON; what it does not say keeps Swift's default.
    fn from_info(info: &serde_json::Value) -> Limits {
        let d = Limits::default();
        Limits {
            max_manifest_segments: info["slo"]["max_manifest_segments"]
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n >= 1)
                .unwrap_or(d.max_manifest_segments),
            max_file_size: info["swift"]["max_file_size"]
                .as_u64()
                .filter(|n| *n >= 1)
                .unwrap_or(d.max_file_size),
        }
    }
}

/// One entry of a stored SLO manifest (`GET ?multipart-manifest=get`).
#[derive(Clone, Debug, Deserialize)]
pub struct ManifestEntry {
    /// `/container/object`, not encoded.
    pub name: String,
    #[serde(default)]
    pub sub_slo: bool,
    /// The segment's MD5, or for a sub-manifest its SLO ETag; hex.
    #[serde(default)]
    pub hash: String,
    #[serde(default)]
    pub bytes: u64,
    /// Only part of the segment (`"first-last"`); volsnap writes none.
    #[serde(default)]
    pub range: Option<String>,
}

impl ManifestEntry {
    /// Its container and object, from `/container/object`.
    pub fn location(&self) -> Option<(&str, &str)> {
        self.name.trim_start_matches('/').split_once('/')
    }
}

#[derive(Clone, Debug)]
pub struct Swift {
    session: Session,
    endpoint: Url,
}

impl Swift {
    /// `endpoint` is the account URL, e.g. `http://host:8080/v1/AUTH_PROJECT_ID`.
    pub fn new(session: Session, endpoint: Url) -> Swift {
        Swift { session, endpoint }
    }

    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// The URL of a container, or of an object in it. Object names keep
    /// their `/` (each part encoded on its own); parts `.` and `..` cannot be
    /// expressed in a URL and are refused.
    fn url(&self, method: &Method, container: &str, object: Option<&str>) -> Result<Url, Error> {
        let mut url = self.endpoint.clone();
        let invalid = |message: String| {
            let req = Request::new(method.clone(), self.endpoint.clone());
            Error::invalid(&req, message)
        };
        if container.is_empty() || container.contains('/') {
            return Err(invalid(format!(
                "{container:?} is not a container name (1 or more characters, no '/')"
            )));
        }
        if let Some(name) = object {
            if name.is_empty() || name.split('/').any(|p| p == "." || p == "..") {
                return Err(invalid(format!(
                    "{name:?} is not an object name volsnap can address (empty, or a '.' or '..' part)"
                )));
            }
        }
        {
            let mut segments = url
                .path_segments_mut()
                .map_err(|()| invalid(format!("{} cannot be a base URL", self.endpoint)))?;
            segments.pop_if_empty().push(container);
            if let Some(name) = object {
                segments.extend(name.split('/'));
            }
        }
        Ok(url)
    }

    fn request(
        &self,
        method: Method,
        container: &str,
        object: Option<&str>,
    ) -> Result<Request, Error> {
        let url = self.url(&method, container, object)?;
        Ok(Request::new(method, url))
    }

    /// The cluster's limits from `GET /info` (beside `/v1` on the same
    /// proxy; no token needed). A cluster may hide it (`expose_info =
    /// false`): the caller then falls back on [`Limits::default`].
    pub fn limits(&self) -> Result<Limits, Error> {
        let mut url = self.endpoint.clone();
        let path = url.path().to_string();
        let base = match path
            .find("/v1/")
            .or_else(|| path.strip_suffix("/v1").map(str::len))
        {
            Some(at) => &path[..at],
            None => "",
        };
        url.set_path(&format!("{base}/info"));
        url.set_query(None);
        let req = Request::get(url).timeout(std::time::Duration::from_secs(10));
        let resp = self.session.http().send(&req, None)?;
        let info: serde_json::Value = http::read_json(&req, resp)?;
        Ok(Limits::from_info(&info))
    }

    /// HEAD the container; create it when missing and `create` allows.
    pub fn ensure_container(&self, container: &str, create: bool) -> Result<ContainerState, Error> {
        let head = self.request(Method::HEAD, container, None)?;
        match self.session.send(&head) {
            Ok(_) => Ok(ContainerState::Existed),
            Err(e) if e.is_not_found() && create => {
                let put = self.request(Method::PUT, container, None)?;
                self.session.send(&put)?;
                log::info!("created Swift container {container}");
                Ok(ContainerState::Created)
            }
            Err(e) => Err(e),
        }
    }

    pub fn delete_container(&self, container: &str) -> Result<(), Error> {
        let req = self.request(Method::DELETE, container, None)?;
        self.session.send(&req).map(drop)
    }

    fn with_metadata(mut req: Request, metadata: &Metadata) -> Result<Request, Error> {
        for (key, value) in metadata {
            req = req.header(&format!("{META_PREFIX}{key}"), value)?;
        }
        Ok(req)
    }

    /// PUTs a whole object from a buffer with its MD5 as `ETag` (Swift
    /// refuses a body that does not match); returns the MD5. A retry
    /// re-sends the same buffer.
    pub fn put_object(
        &self,
        container: &str,
        name: &str,
        body: Bytes,
        metadata: &Metadata,
    ) -> Result<String, Error> {
        let md5 = md5_hex(&body);
        let req = self
            .request(Method::PUT, container, Some(name))?
            .header("etag", &md5)?;
        let req = Self::with_metadata(req, metadata)?.body(body);
        let resp = self.session.send(&req)?;
        let stored = ObjectInfo::from_headers(resp.headers()).etag;
        if !stored.is_empty() && stored != md5 {
            return Err(Error::decode(
                &req,
                resp.status(),
                format!("Swift stored MD5 {stored}, volsnap sent {md5}"),
                http::request_id(resp.headers()),
            ));
        }
        Ok(md5)
    }

    /// PUTs an object without an `ETag` and returns the one Swift answers
    /// (the MD5 of what it stored), for the caller to compare with its own
    /// MD5 of `body`, computed meanwhile. A retry re-sends the same buffer.
    pub fn put_object_for_etag(
        &self,
        container: &str,
        name: &str,
        body: Bytes,
    ) -> Result<String, Error> {
        let req = self.request(Method::PUT, container, Some(name))?.body(body);
        let resp = self.session.send(&req)?;
        answered_etag(&req, resp.status(), resp.headers())
    }

    /// As [`put_object_for_etag`](Self::put_object_for_etag), with a body
    /// sent as it yields its bytes (chunked transfer). One attempt, not
    /// retried: the caller falls back on a whole PUT, which is.
    pub fn put_object_streamed<B>(
        &self,
        container: &str,
        name: &str,
        body: B,
    ) -> Result<String, Error>
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let req = self.request(Method::PUT, container, Some(name))?;
        let (status, headers) =
            self.session
                .http()
                .send_streamed(&req, Some(&self.session.token()), body)?;
        answered_etag(&req, status, &headers)
    }

    /// PUTs a Static Large Object manifest over segments already uploaded;
    /// returns the manifest's ETag (the MD5 of the segment MD5s, as Swift says).
    /// `content_type` is the joined object's (what a GET serves), not the
    /// JSON body's: Swift gives the large object the PUT's Content-Type.
    pub fn put_slo(
        &self,
        container: &str,
        name: &str,
        segments: &[SloSegment],
        metadata: &Metadata,
        content_type: &str,
    ) -> Result<String, Error> {
        let mut req = self.request(Method::PUT, container, Some(name))?;
        req.url
            .query_pairs_mut()
            .append_pair("multipart-manifest", "put");
        let req = Self::with_metadata(req, metadata)?
            .json(&segments)
            .header("content-type", content_type)?;
        let resp = self.session.send(&req)?;
        Ok(ObjectInfo::from_headers(resp.headers()).etag)
    }

    pub fn head_object(&self, container: &str, name: &str) -> Result<ObjectInfo, Error> {
        let req = self.request(Method::HEAD, container, Some(name))?;
        let resp = self.session.send(&req)?;
        Ok(ObjectInfo::from_headers(resp.headers()))
    }

    /// GETs an object as a stream (an SLO comes back whole, its segments
    /// joined by Swift). Each read has the request timeout; nothing is
    /// retried once the body has started.
    pub fn get_object(&self, container: &str, name: &str) -> Result<ObjectReader, Error> {
        self.get_object_sent(container, name, None)
    }

    /// As [`get_object`](Self::get_object), its first attempt `early`
    /// (from [`get_object_early`](Self::get_object_early)) if given.
    pub fn get_object_sent(
        &self,
        container: &str,
        name: &str,
        early: Option<Early>,
    ) -> Result<ObjectReader, Error> {
        let req = self.request(Method::GET, container, Some(name))?;
        let (_, headers, body) = self.session.send_for_body(&req, early)?;
        Ok(ObjectReader {
            info: ObjectInfo::from_headers(&headers),
            body,
            received: 0,
        })
    }

    /// The rest of an object from byte `from` on, if it is still the
    /// object whose ETag is `etag` (`If-Match`: a 412 otherwise). The
    /// reader's `info.size` is the length of the rest.
    pub fn get_object_from(
        &self,
        container: &str,
        name: &str,
        from: u64,
        etag: &str,
    ) -> Result<ObjectReader, Error> {
        let req = self
            .request(Method::GET, container, Some(name))?
            .header("range", &format!("bytes={from}-"))?
            .header("if-match", &format!("\"{etag}\""))?;
        let (status, headers, body) = self.session.send_for_body(&req, None)?;
        let starts = headers
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes "))
            .and_then(|v| v.split('-').next())
            .and_then(|v| v.parse::<u64>().ok());
        if status != StatusCode::PARTIAL_CONTENT || starts != Some(from) {
            return Err(Error::decode(
                &req,
                status,
                format!(
                    "asked for the bytes from {from} on, Swift answered {status} with \
                     Content-Range {:?}",
                    headers.get("content-range")
                ),
                http::request_id(&headers),
            ));
        }
        Ok(ObjectReader {
            info: ObjectInfo::from_headers(&headers),
            body,
            received: 0,
        })
    }

    /// Sends the GET of an object now, so that its round trip passes while
    /// this thread reads another body; [`get_object_sent`](Self::get_object_sent)
    /// takes its answer.
    pub fn get_object_early(&self, container: &str, name: &str) -> Option<Early> {
        let req = self.request(Method::GET, container, Some(name)).ok()?;
        self.session.send_early(&req)
    }

    /// A stored SLO manifest's entries, as Swift keeps them.
    pub fn get_manifest(&self, container: &str, name: &str) -> Result<Vec<ManifestEntry>, Error> {
        let mut req = self.request(Method::GET, container, Some(name))?;
        req.url
            .query_pairs_mut()
            .append_pair("multipart-manifest", "get");
        let resp = self.session.send(&req)?;
        http::read_json(&req, resp)
    }

    /// Deletes one object (for an SLO: the manifest only).
    pub fn delete_object(&self, container: &str, name: &str) -> Result<(), Error> {
        let req = self.request(Method::DELETE, container, Some(name))?;
        self.session.send(&req).map(drop)
    }

    /// Deletes an SLO manifest and all its segments. Swift answers 200 with
    /// a report even when a segment could not be deleted: that is an error.
    pub fn delete_slo(&self, container: &str, name: &str) -> Result<(), Error> {
        let mut req = self
            .request(Method::DELETE, container, Some(name))?
            .header("accept", "application/json")?;
        req.url
            .query_pairs_mut()
            .append_pair("multipart-manifest", "delete");
        let resp = self.session.send(&req)?;
        let status = resp.status();
        let id = http::request_id(resp.headers());
        let report: BulkDeleteReport = http::read_json(&req, resp)?;
        let failed = !report.errors.is_empty()
            || !report.response_status.is_empty() && !report.response_status.starts_with('2');
        if failed || report.number_not_found > 0 && report.number_deleted == 0 {
            let status_code = report
                .response_status
                .split_whitespace()
                .next()
                .and_then(|c| c.parse::<u16>().ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(status);
            return Err(Error::decode(
                &req,
                status_code,
                format!(
                    "Swift's delete report: {} ({} deleted, {} not found, errors: {:?})",
                    report.response_status,
                    report.number_deleted,
                    report.number_not_found,
                    report.errors
                ),
                id,
            ));
        }
        Ok(())
    }

    /// Deletes a backup's manifest with everything under it, however many
    /// levels of manifests (see `stream::Tree`). Swift's own SLO delete
    /// holds a whole tree's entries at once and refuses one of more than
    /// ten times `max_manifest_segments`; so the levels are deleted bottom
    /// up, each manifest of segments with Swift's SLO delete.
    pub fn delete_tree(&self, container: &str, name: &str) -> Result<(), Error> {
        let entries = self.get_manifest(container, name)?;
        let subs: Vec<&ManifestEntry> = entries.iter().filter(|e| e.sub_slo).collect();
        if subs.is_empty() {
            return self.delete_slo(container, name);
        }
        for sub in subs {
            let (c, o) = sub
                .location()
                .unwrap_or((container, sub.name.trim_start_matches('/')));
            match self.delete_tree(c, o) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        self.delete_object(container, name)
    }

    /// The "directories" right under `prefix` (which ends in `/`): the
    /// distinct `prefix…/` each object name under it starts with, one entry
    /// however many objects share it, following `marker` pages.
    pub fn list_subdirs(&self, container: &str, prefix: &str) -> Result<Vec<String>, Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Entry {
            Subdir { subdir: String },
            Object { name: String },
        }
        let mut dirs = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let mut req = self.request(Method::GET, container, None)?;
            {
                let mut q = req.url.query_pairs_mut();
                q.append_pair("format", "json")
                    .append_pair("prefix", prefix)
                    .append_pair("delimiter", "/");
                if let Some(m) = &marker {
                    q.append_pair("marker", m);
                }
            }
            let resp = self.session.send(&req)?;
            let page: Vec<Entry> = http::read_json(&req, resp)?;
            let Some(last) = page.last() else {
                return Ok(dirs);
            };
            marker = Some(match last {
                Entry::Subdir { subdir } => subdir.clone(),
                Entry::Object { name } => name.clone(),
            });
            dirs.extend(page.into_iter().filter_map(|e| match e {
                Entry::Subdir { subdir } => Some(subdir),
                Entry::Object { .. } => None,
            }));
        }
    }

    /// Every object whose name starts with `prefix` (all if empty), in name
    /// order, following `marker` pages until an empty one.
    pub fn list_objects(&self, container: &str, prefix: &str) -> Result<Vec<ObjectEntry>, Error> {
        let mut all: Vec<ObjectEntry> = Vec::new();
        loop {
            let mut req = self.request(Method::GET, container, None)?;
            {
                let mut q = req.url.query_pairs_mut();
                q.append_pair("format", "json");
                if !prefix.is_empty() {
                    q.append_pair("prefix", prefix);
                }
                if let Some(last) = all.last() {
                    q.append_pair("marker", &last.name);
                }
            }
            let resp = self.session.send(&req)?;
            let page: Vec<ObjectEntry> = http::read_json(&req, resp)?;
            if page.is_empty() {
                return Ok(all);
            }
            all.extend(page);
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct BulkDeleteReport {
    #[serde(default, rename = "Response Status")]
    response_status: String,
    #[serde(default, rename = "Number Deleted")]
    number_deleted: u64,
    #[serde(default, rename = "Number Not Found")]
    number_not_found: u64,
    #[serde(default)]
    errors: Vec<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn swift(endpoint: &str) -> Swift {
        let http = super::http::Http::new(&Default::default()).unwrap();
        Swift::new(
            Session::with_token(http, crate::secret::Secret::new("t")),
            Url::parse(endpoint).unwrap(),
        )
    }

    #[test]
    fn object_names_are_encoded_part_by_part() {
        let s = swift("http://swift:8080/v1/AUTH_abc");
        let url = s
            .url(
                &Method::GET,
                "backups",
                Some("volsnap/db 1/2024-01-01T00:00:00Z?x#y%"),
            )
            .unwrap();
        assert_eq!(
            url.as_str(),
            "http://swift:8080/v1/AUTH_abc/backups/volsnap/db%201/2024-01-01T00:00:00Z%3Fx%23y%25"
        );
        let s = swift("http://swift:8080/v1/AUTH_abc/");
        assert_eq!(
            s.url(&Method::GET, "c", Some("ü/é")).unwrap().as_str(),
            "http://swift:8080/v1/AUTH_abc/c/%C3%BC/%C3%A9"
        );
        for bad in ["a/../b", ".", "", "a/./b"] {
            assert!(s.url(&Method::GET, "c", Some(bad)).is_err(), "{bad}");
        }
        assert!(s.url(&Method::GET, "a/b", None).is_err());
    }

    #[test]
    fn md5_of_known_strings() {
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn limits_from_info() {
        let info = serde_json::json!({
            "swift": {"max_file_size": 1073741824u64},
            "slo": {"max_manifest_segments": 250}
        });
        assert_eq!(
            Limits::from_info(&info),
            Limits {
                max_manifest_segments: 250,
                max_file_size: 1 << 30
            }
        );
        // No SLO section, or nonsense: Swift's defaults.
        let info = serde_json::json!({"swift": {"max_file_size": "big"}});
        assert_eq!(Limits::from_info(&info), Limits::default());
    }

    #[test]
    fn info_from_headers() {
        let mut h = HeaderMap::new();
        h.insert("content-length", "42".parse().unwrap());
        h.insert("etag", "\"abc\"".parse().unwrap());
        h.insert("x-static-large-object", "True".parse().unwrap());
        h.insert("x-object-meta-sha256", "ff".parse().unwrap());
        let info = ObjectInfo::from_headers(&h);
        assert_eq!(info.size, 42);
        assert_eq!(info.etag, "abc");
        assert!(info.static_large_object);
        assert_eq!(info.metadata["sha256"], "ff");
    }
}
