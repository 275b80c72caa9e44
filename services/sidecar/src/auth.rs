//! Optional bearer-token authentication of the gRPC API (`--auth-token-file`).
//!
//! When a token is configured, every call to `voice.v1.VoiceSidecar` and to server reflection must
//! carry `authorization: Bearer <token>` metadata, else it ends with UNAUTHENTICATED before the
//! service sees it. gRPC health (`grpc.health.v1.Health`) stays open so probes and load balancers
//! work without the secret. Reflection requires the token: it only describes the API, but an
//! unauthenticated caller has no use for that, and leaving it open would confirm what listens here.
//!
//! The token is compared in constant time (only its length can leak) and is never logged, put in an
//! error or shown by `Debug`.

use anyhow::{bail, Context, Result};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tonic::{Request, Status};
use tracing::debug;

/// The shared secret hosts present. `Debug` prints no part of it.
#[derive(Clone)]
pub struct AuthToken(Arc<[u8]>);

impl AuthToken {
    /// Reads the token from `path` (e.g. a mounted secret); surrounding whitespace, such as the usual
    /// trailing newline, is trimmed. An unreadable or empty file, or a token that cannot travel in an
    /// HTTP/2 header value, is an error; the messages never quote the file's content.
    pub fn from_file(path: &Path) -> Result<Self> {
        let raw = std::fs::read(path)
            .with_context(|| format!("reading --auth-token-file {}", path.display()))?;
        let Ok(text) = std::str::from_utf8(&raw) else {
            bail!("--auth-token-file {} is not UTF-8 text", path.display());
        };
        let token = text.trim();
        if token.is_empty() {
            bail!("--auth-token-file {} is empty", path.display());
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            bail!(
                "--auth-token-file {}: the token must be printable ASCII without spaces (it is sent as `authorization: Bearer <token>`)",
                path.display()
            );
        }
        Ok(AuthToken(token.as_bytes().into()))
    }

    /// Constant-time for tokens of the configured length.
    fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_ref().ct_eq(presented).into()
    }
}

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

/// Interceptor for the authenticated services: passes every call when no token is configured.
#[derive(Clone, Debug)]
pub struct RequireToken(Option<AuthToken>);

impl RequireToken {
    pub fn new(token: Option<AuthToken>) -> Self {
        RequireToken(token)
    }

    fn authorized(&self, authorization: Option<&[u8]>) -> bool {
        let Some(token) = &self.0 else {
            return true;
        };
        // The scheme is case-insensitive (RFC 9110 section 11.1).
        let presented = authorization
            .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
            .map(|v| &v[7..]);
        presented.is_some_and(|p| token.matches(p))
    }
}

impl tonic::service::Interceptor for RequireToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let header = req
            .metadata()
            .get("authorization")
            .map(tonic::metadata::MetadataValue::as_bytes);
        if self.authorized(header) {
            Ok(req)
        } else {
            debug!(
                peer = ?req.remote_addr(),
                with_header = header.is_some(),
                "refused a call without a valid bearer token"
            );
            Err(Status::unauthenticated(
                "this sidecar requires `authorization: Bearer <token>` metadata (--auth-token-file)",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_file(content: &[u8]) -> tempfile_path::TempPath {
        tempfile_path::TempPath::with(content)
    }

    /// A temporary file removed on drop (no extra dependency for three tests).
    mod tempfile_path {
        use std::path::{Path, PathBuf};
        use std::sync::atomic::{AtomicU32, Ordering};

        pub struct TempPath(PathBuf);
        impl TempPath {
            pub fn with(content: &[u8]) -> Self {
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "voice-sidecar-auth-test-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&p, content).unwrap();
                TempPath(p)
            }
            pub fn path(&self) -> &Path {
                &self.0
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn token_file_is_trimmed_and_checked() {
        let f = token_file(b"  s3cret-Token_42\n");
        let t = AuthToken::from_file(f.path()).unwrap();
        assert!(t.matches(b"s3cret-Token_42"));
        assert!(!t.matches(b"s3cret-Token_4"));
        assert!(!t.matches(b"s3cret-Token_43"));
        assert_eq!(format!("{t:?}"), "AuthToken(<redacted>)");

        for bad in [&b""[..], b" \n\t", b"two words", b"\xff\xfe"] {
            let f = token_file(bad);
            let e = format!("{:#}", AuthToken::from_file(f.path()).unwrap_err());
            assert!(e.contains("--auth-token-file"), "{e}");
            assert!(!e.contains("words"), "error quotes the token: {e}");
        }
        let e = AuthToken::from_file(Path::new("/nonexistent/voice-token")).unwrap_err();
        assert!(format!("{e:#}").contains("reading --auth-token-file"));
    }

    #[test]
    fn bearer_header_is_required_when_configured() {
        let f = token_file(b"abc123\n");
        let need = RequireToken::new(Some(AuthToken::from_file(f.path()).unwrap()));
        assert!(need.authorized(Some(b"Bearer abc123")));
        assert!(need.authorized(Some(b"bearer abc123")));
        assert!(!need.authorized(None));
        assert!(!need.authorized(Some(b"abc123")));
        assert!(!need.authorized(Some(b"Bearer ")));
        assert!(!need.authorized(Some(b"Bearer abc1234")));
        assert!(!need.authorized(Some(b"Basic abc123")));
        assert!(!format!("{need:?}").contains("abc123"));
        let open = RequireToken::new(None);
        assert!(open.authorized(None));
    }
}
