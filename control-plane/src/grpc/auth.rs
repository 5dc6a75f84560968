//! Bearer-token checks for gRPC services (operator and proxy tokens).

use tonic::{metadata::MetadataMap, service::Interceptor, Request, Status};

/// Checks `authorization: Bearer <token>` when a token is configured.
#[derive(Clone, Debug)]
pub struct BearerAuth {
    /// The token; `None` lets everything through.
    token: Option<std::sync::Arc<str>>,
    /// What the token guards (for the error message).
    what: &'static str,
}

impl BearerAuth {
    /// A check for `token` (none = open).
    pub fn new(token: Option<String>, what: &'static str) -> BearerAuth {
        BearerAuth {
            token: token.map(Into::into),
            what,
        }
    }

    /// Whether `header` (the value of `authorization`) carries the token.
    pub fn allows(&self, header: Option<&str>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let Some(given) = header.and_then(bearer_credentials) else {
            return false;
        };
        constant_time_eq(given.as_bytes(), token.as_bytes())
    }

    fn check(&self, md: &MetadataMap) -> Result<(), Status> {
        let header = md.get("authorization").and_then(|v| v.to_str().ok());
        if self.allows(header) {
            Ok(())
        } else {
            Err(Status::unauthenticated(format!(
                "missing or wrong {} (authorization: Bearer <token>)",
                self.what
            )))
        }
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(request.metadata())?;
        Ok(request)
    }
}

/// The credentials of an `authorization` value whose scheme is `Bearer`,
/// matched case-insensitively (RFC 7235 §2.1: `bearer x` and `BEARER x`
/// are the same as `Bearer x`), as the proxy matches client keys.
pub fn bearer_credentials(header: &str) -> Option<&str> {
    let (scheme, rest) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim_start_matches(' '))
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_only_when_configured() {
        let open = BearerAuth::new(None, "admin token");
        assert!(open.allows(None));
        let guarded = BearerAuth::new(Some("s3cret".into()), "admin token");
        assert!(guarded.allows(Some("Bearer s3cret")));
        // The scheme is case-insensitive (RFC 7235), the token is not.
        assert!(guarded.allows(Some("bearer s3cret")));
        assert!(guarded.allows(Some("BEARER s3cret")));
        assert!(!guarded.allows(Some("bearer S3CRET")));
        for bad in [
            None,
            Some("s3cret"),
            Some("Bearer s3cre"),
            Some("Bearer s3cret2"),
            Some("Basic s3cret"),
        ] {
            assert!(!guarded.allows(bad), "{bad:?}");
        }
    }
}
