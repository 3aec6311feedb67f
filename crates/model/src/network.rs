//! Network policy: what a sandbox may reach. Enforced by the daemon (netns,
//! nftables, its own resolver and egress proxy), never by the guest.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// `none`: loopback only (every packet out is refused at once).
/// `allow`: only the listed domains and CIDRs. `open`: everything except
/// the forbidden set. The forbidden set (the host, other sandboxes,
/// link-local/metadata, the host's private networks unless listed as a
/// CIDR) applies in every mode.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    #[default]
    None,
    Allow,
    Open,
}

impl NetMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NetMode::None => "none",
            NetMode::Allow => "allow",
            NetMode::Open => "open",
        }
    }
}

/// An IPv4 network (`10.1.2.0/24`; a bare address is a /32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, p.parse::<u8>().ok()?),
            None => (s, 32),
        };
        let addr: Ipv4Addr = a.parse().ok()?;
        if p > 32 {
            return None;
        }
        let c = Cidr { addr, prefix: p };
        // Host bits must be zero: "10.1.2.3/24" is almost always a typo.
        (c.network() == addr).then_some(c)
    }
    pub fn mask(self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }
    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A sandbox's network policy.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicy {
    #[serde(default)]
    pub mode: NetMode,
    /// Domains (`pypi.org`, `*.pythonhosted.org`: the name and every
    /// subdomain) and IPv4 CIDRs. Domains matter in `allow` mode; CIDRs open
    /// their range in `allow` and `open` mode, and are the only way to reach
    /// the host's private networks.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Static names the sandbox's resolver answers (like `--add-host`).
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, String>)]
    pub hosts: BTreeMap<String, Ipv4Addr>,
}

/// One domain rule: `exact` matches the name only, otherwise the name and
/// every subdomain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainRule {
    pub name: String,
    pub subdomains: bool,
}

impl DomainRule {
    /// `example.com` (that name) or `*.example.com` (it and every name
    /// under it), normalized.
    pub fn parse(entry: &str) -> DomainRule {
        match entry.strip_prefix("*.") {
            Some(rest) => DomainRule { name: normalize_domain(rest), subdomains: true },
            None => DomainRule { name: normalize_domain(entry), subdomains: false },
        }
    }
}

/// Lower-case a DNS name and drop one trailing dot.
pub fn normalize_domain(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn valid_domain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

impl NetworkPolicy {
    pub fn open() -> NetworkPolicy {
        NetworkPolicy { mode: NetMode::Open, ..Default::default() }
    }

    /// Checks every entry; the message names the bad one.
    pub fn validate(&self) -> Result<()> {
        if self.allow.len() > 256 {
            return Err(Error::InvalidArgument("network.allow: at most 256 entries".into()));
        }
        if self.hosts.len() > 256 {
            return Err(Error::InvalidArgument("network.hosts: at most 256 entries".into()));
        }
        for e in &self.allow {
            if e.is_empty() {
                return Err(Error::InvalidArgument("network.allow: empty entry".into()));
            }
            let looks_ip = e.bytes().next().is_some_and(|b| b.is_ascii_digit())
                && e.bytes().all(|b| b.is_ascii_digit() || b == b'.' || b == b'/');
            if looks_ip || e.contains('/') || e.contains(':') {
                if Cidr::parse(e).is_none() {
                    return Err(Error::InvalidArgument(format!(
                        "network.allow: {e:?} is not an IPv4 address or CIDR with zero host bits (like 10.1.2.0/24)"
                    )));
                }
                continue;
            }
            let name = e.strip_prefix("*.").unwrap_or(e);
            if !valid_domain(&normalize_domain(name)) || name.contains('*') {
                return Err(Error::InvalidArgument(format!(
                    "network.allow: {e:?} is neither a domain (example.com, *.example.com) nor an IPv4 CIDR"
                )));
            }
        }
        for name in self.hosts.keys() {
            if !valid_domain(&normalize_domain(name)) {
                return Err(Error::InvalidArgument(format!("network.hosts: {name:?} is not a host name")));
            }
        }
        Ok(())
    }

    pub fn cidrs(&self) -> Vec<Cidr> {
        self.allow.iter().filter_map(|e| Cidr::parse(e)).collect()
    }

    pub fn domains(&self) -> Vec<DomainRule> {
        self.allow.iter().filter(|e| Cidr::parse(e).is_none()).map(|e| DomainRule::parse(e)).collect()
    }

    /// Whether `name` is an allowed domain in `allow` mode (`open` allows
    /// every name, `none` none).
    pub fn allows_domain(&self, name: &str) -> bool {
        match self.mode {
            NetMode::None => false,
            NetMode::Open => true,
            NetMode::Allow => domain_matches(&self.domains(), name),
        }
    }

    pub fn allows_ip_explicitly(&self, ip: Ipv4Addr) -> bool {
        self.mode != NetMode::None && self.cidrs().iter().any(|c| c.contains(ip))
    }

    /// The static address for `name`, if the policy lists one.
    pub fn static_host(&self, name: &str) -> Option<Ipv4Addr> {
        let n = normalize_domain(name);
        self.hosts.iter().find(|(k, _)| normalize_domain(k) == n).map(|(_, v)| *v)
    }
}

/// Whether `name` matches one of `rules` (case-insensitive, trailing dot
/// ignored; `*.x` matches `x` and every name under it).
pub fn domain_matches(rules: &[DomainRule], name: &str) -> bool {
    let n = normalize_domain(name);
    rules.iter().any(|r| n == r.name || (r.subdomains && n.ends_with(&format!(".{}", r.name))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches() {
        let p = NetworkPolicy {
            mode: NetMode::Allow,
            allow: vec!["pypi.org".into(), "*.pythonhosted.org".into(), "10.251.0.0/24".into(), "1.2.3.4".into()],
            hosts: BTreeMap::new(),
        };
        p.validate().unwrap();
        assert!(p.allows_domain("PyPI.org."));
        assert!(!p.allows_domain("evil.pypi.org"));
        assert!(p.allows_domain("files.pythonhosted.org"));
        assert!(p.allows_domain("pythonhosted.org"));
        assert!(!p.allows_domain("notpythonhosted.org"));
        assert!(p.allows_ip_explicitly("10.251.0.9".parse().unwrap()));
        assert!(p.allows_ip_explicitly("1.2.3.4".parse().unwrap()));
        assert!(!p.allows_ip_explicitly("1.2.3.5".parse().unwrap()));
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["", "10.1.2.3/24", "10.0.0.0/33", "300.1.1.1", "a..b", "*.*.x", "fd00::1", "-a.com", "a b"] {
            let p = NetworkPolicy { mode: NetMode::Allow, allow: vec![bad.into()], hosts: BTreeMap::new() };
            assert!(p.validate().is_err(), "{bad:?} accepted");
        }
        let j: std::result::Result<NetworkPolicy, _> = serde_json::from_str(r#"{"mode":"sometimes"}"#);
        assert!(j.is_err());
    }
}
