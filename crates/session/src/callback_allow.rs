//! Which `ToolHost` addresses a `SessionStart` may send the sidecar to.
//!
//! Without a check any gRPC client could make the sidecar open connections to any `host:port`
//! through `tool_routing.callback_address` and read back whether the port answered (a port scanner
//! through the sidecar). Addresses are matched by name and port as written; no DNS lookup happens.

use std::net::IpAddr;

/// One allowed address pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// `*`: any address.
    Any,
    /// `loopback`: `localhost`, 127.0.0.0/8 and `::1`, any port.
    Loopback,
    /// `host` (any port) or `host:port`.
    Host { host: String, port: Option<u16> },
}

/// The configured allowlist (`--tool-host-allow`, plus `--tool-host`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackAllowlist {
    entries: Vec<Entry>,
}

impl Default for CallbackAllowlist {
    /// Loopback only.
    fn default() -> Self {
        CallbackAllowlist {
            entries: vec![Entry::Loopback],
        }
    }
}

/// The host (lower case, IPv6 without brackets) and port of an `http://` or `https://` address.
pub fn host_port(addr: &str) -> Result<(String, u16), String> {
    let (rest, default_port) = if let Some(r) = addr.strip_prefix("http://") {
        (r, 80)
    } else if let Some(r) = addr.strip_prefix("https://") {
        (r, 443)
    } else {
        return Err(format!("{addr:?} must be an http:// or https:// URL"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(format!("{addr:?} must not carry user information"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{addr:?}: unterminated IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("{addr:?}: bad port"))?,
            ),
        };
        (h, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{addr:?} names no host"));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("{addr:?}: bad port {p:?}"))?,
    };
    Ok((host.to_ascii_lowercase(), port))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl CallbackAllowlist {
    /// Parses `--tool-host-allow` entries; `tool_host` (the sidecar's own `--tool-host`) is always
    /// allowed.
    pub fn new(entries: &[String], tool_host: Option<&str>) -> Result<CallbackAllowlist, String> {
        let mut out = Vec::new();
        for raw in entries {
            let e = raw.trim();
            let entry = match e {
                "" => continue,
                "*" => Entry::Any,
                "loopback" => Entry::Loopback,
                e if e.contains("://") => {
                    let (host, port) = host_port(e)?;
                    Entry::Host {
                        host,
                        port: Some(port),
                    }
                }
                e => {
                    // `host`, `host:port`, `[v6]:port` or a bare IPv6 address.
                    let (host, port) = match host_port(&format!("http://{e}")) {
                        Ok((h, p)) if e.ends_with(&format!(":{p}")) => (h, Some(p)),
                        Ok((h, _)) => (h, None),
                        Err(_) if e.parse::<IpAddr>().is_ok() => (e.to_ascii_lowercase(), None),
                        Err(err) => return Err(err),
                    };
                    Entry::Host { host, port }
                }
            };
            out.push(entry);
        }
        if let Some(t) = tool_host {
            let (host, port) = host_port(t).map_err(|e| format!("--tool-host {e}"))?;
            out.push(Entry::Host {
                host,
                port: Some(port),
            });
        }
        Ok(CallbackAllowlist { entries: out })
    }

    /// Whether `addr` (an `http(s)://host[:port]` URL) may be called back.
    pub fn check(&self, addr: &str) -> Result<(), String> {
        let (host, port) = host_port(addr)?;
        let ok = self.entries.iter().any(|e| match e {
            Entry::Any => true,
            Entry::Loopback => is_loopback(&host),
            Entry::Host { host: h, port: p } => *h == host && p.is_none_or(|p| p == port),
        });
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{host}:{port} is not in the sidecar's callback allowlist (--tool-host-allow)"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(e: &[&str], tool_host: Option<&str>) -> CallbackAllowlist {
        let e: Vec<String> = e.iter().map(|s| (*s).to_string()).collect();
        CallbackAllowlist::new(&e, tool_host).unwrap()
    }

    #[test]
    fn the_default_allows_loopback_only() {
        let l = CallbackAllowlist::default();
        for ok in [
            "http://127.0.0.1:50061",
            "http://127.9.9.9:1",
            "http://localhost:80",
            "http://[::1]:7",
            "https://LOCALHOST",
        ] {
            assert!(l.check(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1:22",
            "http://169.254.169.254:80",
            "http://example.com:443",
            "http://127.0.0.1.evil.com:80",
            "http://user@127.0.0.1:80",
            "ftp://127.0.0.1",
            "http://:80",
            "http://127.0.0.1:99999",
        ] {
            assert!(l.check(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn entries_match_host_and_port() {
        let l = list(
            &["tools.internal:50061", "other.internal", "[fd00::1]:9"],
            Some("http://th.svc:7000"),
        );
        assert!(l.check("http://tools.internal:50061").is_ok());
        assert!(l.check("http://tools.internal:50062").is_err());
        assert!(l.check("http://other.internal:1").is_ok());
        assert!(l.check("http://th.svc:7000/x").is_ok());
        assert!(l.check("http://th.svc:7001").is_err());
        assert!(l.check("http://[fd00::1]:9").is_ok());
        assert!(
            l.check("http://127.0.0.1:1").is_err(),
            "loopback was not listed"
        );
        assert!(list(&["*"], None).check("http://anything:1").is_ok());
        assert!(CallbackAllowlist::new(&["http://x:bad".into()], None).is_err());
    }
}
