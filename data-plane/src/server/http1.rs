//! HTTP/1 message rules that hyper leaves to the server (RFC 9112):
//!
//! - §3.2: an HTTP/1.1 request without a `Host` header, or any request with
//!   more than one, or with one that is not a valid authority, gets 400;
//! - §6.1: a transfer coding the proxy does not implement (anything but
//!   `chunked`, e.g. `gzip, chunked`, whose gzip hyper would silently
//!   ignore) gets 501, and the connection is closed after the answer.

use http::{header, HeaderMap, Version};

use crate::error::ProxyError;

/// Checks the framing headers of an HTTP/1 request (`version` below 2).
pub fn check(version: Version, headers: &HeaderMap) -> Result<(), ProxyError> {
    if version >= Version::HTTP_2 {
        return Ok(());
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    let count = usize::from(host.is_some()) + hosts.count();
    let valid = host.is_none_or(|h| {
        h.is_empty()
            || h.to_str()
                .is_ok_and(|h| h.parse::<http::uri::Authority>().is_ok() && !h.contains('@'))
    });
    if count > 1 || (count == 0 && version == Version::HTTP_11) || !valid {
        return Err(ProxyError::HostHeaders(count));
    }
    for value in &headers.get_all(header::TRANSFER_ENCODING) {
        let text = String::from_utf8_lossy(value.as_bytes());
        let unsupported = text
            .split(',')
            .map(str::trim)
            .any(|coding| !coding.eq_ignore_ascii_case("chunked"));
        if unsupported {
            return Err(ProxyError::TransferEncoding(crate::error::clip(&text)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn host_rules() {
        let v11 = Version::HTTP_11;
        assert!(check(v11, &headers(&[("host", "a:1")])).is_ok());
        assert!(check(Version::HTTP_10, &headers(&[])).is_ok());
        assert!(check(Version::HTTP_2, &headers(&[])).is_ok());
        for bad in [
            headers(&[]),
            headers(&[("host", "a"), ("host", "b")]),
            headers(&[("host", "a b")]),
            headers(&[("host", "u@h")]),
        ] {
            let err = check(v11, &bad).unwrap_err();
            assert_eq!(err.status(), http::StatusCode::BAD_REQUEST, "{bad:?}");
        }
    }

    #[test]
    fn only_chunked_is_accepted() {
        let v11 = Version::HTTP_11;
        let ok = headers(&[("host", "h"), ("transfer-encoding", "Chunked")]);
        assert!(check(v11, &ok).is_ok());
        for coding in ["gzip, chunked", "identity, chunked", "gzip"] {
            let bad = headers(&[("host", "h"), ("transfer-encoding", coding)]);
            let err = check(v11, &bad).unwrap_err();
            assert_eq!(err.status(), http::StatusCode::NOT_IMPLEMENTED, "{coding}");
        }
    }
}
