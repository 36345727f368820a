//! `[error_pages]`: the bodies of lb's own error answers, by status (HAProxy's `errorfile`, nginx's
//! `error_page` for the errors nginx itself makes). Each file is read with the config, so a reload
//! re-reads it, and a file that cannot be read is a config error naming its key.

use super::validate::Issues;
use super::Digest;
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use std::collections::BTreeMap;
use std::fmt;

/// Largest error page: an answer lb makes when something failed must stay cheap to send.
pub const MAX_PAGE_BYTES: usize = 64 * 1024;

/// The configured pages, by status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorPages(Vec<ErrorPage>);

/// One page: a file's content, served as the body of lb's own answers with its status.
#[derive(Clone)]
pub struct ErrorPage {
    /// The status it answers.
    pub status: StatusCode,
    /// The file, as configured.
    pub path: String,
    /// SHA-256 of the file as read: a change is a change to reload.
    pub digest: [u8; 32],
    /// `Content-Type`, from the file's extension.
    pub content_type: HeaderValue,
    /// The file's content.
    pub body: Bytes,
}

impl PartialEq for ErrorPage {
    fn eq(&self, other: &Self) -> bool {
        (self.status, &self.path, self.digest) == (other.status, &other.path, other.digest)
    }
}

impl Eq for ErrorPage {}

impl fmt::Debug for ErrorPage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErrorPage")
            .field("status", &self.status)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ErrorPages {
    /// The page for `status`, if one is configured.
    pub fn get(&self, status: StatusCode) -> Option<&ErrorPage> {
        self.0.iter().find(|p| p.status == status)
    }

    /// Every page, by status.
    pub fn iter(&self) -> impl Iterator<Item = &ErrorPage> {
        self.0.iter()
    }
}

/// Reads `[error_pages]`: keys are 4xx and 5xx statuses, values files ending in `.html`, `.json` or
/// `.txt`, at most [`MAX_PAGE_BYTES`] each.
pub(super) fn error_pages(raw: &BTreeMap<String, String>, out: &mut Issues<'_>) -> ErrorPages {
    let mut pages = Vec::new();
    for (key, path) in raw {
        let at = format!("error_pages.{key}");
        let status = match key.parse::<u16>().ok().and_then(|s| StatusCode::from_u16(s).ok()) {
            Some(s) if s.is_client_error() || s.is_server_error() => s,
            _ => {
                out.push(&at, format!("{key:?} is not a 4xx or 5xx status"));
                continue;
            }
        };
        let Some(content_type) = content_type(path) else {
            out.push(
                &at,
                format!("{path}: the name must end in .html, .json or .txt (it gives the Content-Type)"),
            );
            continue;
        };
        let body = match std::fs::read(path) {
            Ok(body) if body.len() > MAX_PAGE_BYTES => {
                out.push(&at, format!("{path}: {} bytes; at most {MAX_PAGE_BYTES}", body.len()));
                continue;
            }
            Ok(body) => body,
            Err(e) => {
                out.push(&at, format!("cannot read {path}: {e}"));
                continue;
            }
        };
        let digest = Digest::of(&[&body]).0;
        pages.push(ErrorPage { status, path: path.clone(), digest, content_type, body: body.into() });
    }
    ErrorPages(pages)
}

fn content_type(path: &str) -> Option<HeaderValue> {
    let extension = std::path::Path::new(path).extension()?.to_str()?.to_ascii_lowercase();
    let value = match extension.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        _ => return None,
    };
    Some(HeaderValue::from_static(value))
}
