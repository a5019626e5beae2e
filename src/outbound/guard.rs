//! The SSRF guard: customers give IACE URLs to call (webhook endpoints, tool endpoints), and a
//! URL must not turn the server into a way into its own network. By default a URL is refused
//! when its host is, or resolves to, an address that is not on the public internet: loopback,
//! private ranges, link-local (with the cloud metadata address 169.254.169.254), carrier-grade
//! NAT, unspecified, broadcast, multicast, documentation and benchmarking ranges, and their
//! IPv6 counterparts (IPv4-mapped addresses are judged as IPv4). `IACE_ALLOW_PRIVATE_URLS`
//! lifts the address rule (the dev world and the tests, whose receivers are on loopback).
//!
//! The addresses are checked at the moment of each request, after resolution, and the request
//! is made to exactly those addresses (see [`Guard::resolve`]), so a name that resolves to a
//! public address when checked and to a private one when connecting (DNS rebinding) gets
//! nowhere.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why a URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not an absolute http(s) URL with a host.
    #[error("the URL must be an absolute http or https URL with a host: {0}")]
    Malformed(String),
    /// User name or password in the URL.
    #[error("the URL must not carry credentials")]
    Credentials,
    /// The host resolves to an address that is not public.
    #[error("the URL's host {host} is or resolves to {address}, which is not a public address")]
    NotPublic {
        /// The URL's host.
        host: String,
        /// The first address that is not public.
        address: IpAddr,
    },
    /// The host does not resolve.
    #[error("the URL's host {0} does not resolve")]
    Unresolved(String),
}

/// The guard, with its one setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guard {
    /// Allow loopback, private and the other non-public addresses.
    pub allow_private: bool,
}

impl Guard {
    /// Checks the URL's form (at configuration time, before anything resolves): absolute,
    /// http or https, a host, no credentials; an address literal must be public unless
    /// private ones are allowed.
    pub fn check_url(&self, url: &str) -> Result<reqwest::Url, Refused> {
        let parsed = reqwest::Url::parse(url).map_err(|e| Refused::Malformed(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Refused::Malformed(format!(
                "scheme {} is not http or https",
                parsed.scheme()
            )));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(Refused::Credentials);
        }
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| Refused::Malformed("no host".into()))?;
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(address) = literal.parse::<IpAddr>() {
            self.judge(literal, address)?;
        }
        Ok(parsed)
    }

    /// Resolves the URL's host and checks every address; the request must then connect to
    /// the addresses returned (reqwest's `resolve_to_addrs`), never resolve again.
    pub async fn resolve(&self, url: &reqwest::Url) -> Result<Vec<SocketAddr>, Refused> {
        let host = url
            .host_str()
            .ok_or_else(|| Refused::Malformed("no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| Refused::Malformed("no port".into()))?;
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|_| Refused::Unresolved(host.clone()))?
            .collect();
        if addrs.is_empty() {
            return Err(Refused::Unresolved(host));
        }
        self.check_addresses(&host, &addrs)?;
        Ok(addrs)
    }

    /// Checks every address `host` resolved to: one refused address refuses the host.
    pub fn check_addresses(&self, host: &str, addrs: &[SocketAddr]) -> Result<(), Refused> {
        if addrs.is_empty() {
            return Err(Refused::Unresolved(host.to_owned()));
        }
        for addr in addrs {
            self.judge(host, addr.ip())?;
        }
        Ok(())
    }

    fn judge(&self, host: &str, address: IpAddr) -> Result<(), Refused> {
        if self.allow_private || is_public(address) {
            Ok(())
        } else {
            Err(Refused::NotPublic {
                host: host.to_owned(),
                address,
            })
        }
    }
}

/// Whether `ip` is an address of the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        // Carrier-grade NAT 100.64.0.0/10.
        || (a == 100 && (64..128).contains(&b))
        // IETF protocol assignments 192.0.0.0/24, benchmarking 198.18.0.0/15, reserved 240/4.
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // Unique local fc00::/7, link-local fe80::/10, site-local fec0::/10 (deprecated).
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first & 0xffc0) == 0xfec0
        // Documentation 2001:db8::/32; IPv4-compatible and NAT64 forms of any address.
        || (first == 0x2001 && ip.segments()[1] == 0x0db8)
        || (first == 0x0064 && ip.segments()[1] == 0xff9b)
        || ip.segments()[..6] == [0, 0, 0, 0, 0, 0])
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: Guard = Guard {
        allow_private: false,
    };
    const OPEN: Guard = Guard {
        allow_private: true,
    };

    #[test]
    fn addresses_that_are_not_public() {
        for text in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "192.0.0.8",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "2001:db8::1",
            "::127.0.0.1",
        ] {
            assert!(!is_public(text.parse().unwrap()), "{text}");
        }
        for text in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(text.parse().unwrap()), "{text}");
        }
    }

    #[test]
    fn urls_are_judged_by_form_and_by_address_literal() {
        assert!(STRICT.check_url("https://hooks.example.com/iace").is_ok());
        for (url, why) in [
            ("ftp://example.com/x", "scheme"),
            ("/relative", "relative"),
            ("https://user:pw@example.com/", "credentials"),
            ("https://127.0.0.1/hook", "loopback"),
            ("http://10.0.0.5:8080/", "private"),
            ("http://169.254.169.254/latest/meta-data/", "metadata"),
            ("http://[::1]:9000/", "ipv6 loopback"),
            ("http://[::ffff:a00:1]/", "mapped private"),
        ] {
            assert!(STRICT.check_url(url).is_err(), "{why}: {url}");
        }
        assert!(matches!(
            STRICT.check_url("https://127.0.0.1/hook"),
            Err(Refused::NotPublic { .. })
        ));
        assert!(OPEN.check_url("http://127.0.0.1:9000/hook").is_ok());
        assert_eq!(
            OPEN.check_url("https://u@example.com/"),
            Err(Refused::Credentials)
        );
    }

    #[tokio::test]
    async fn names_are_judged_by_what_they_resolve_to() {
        // `localhost` resolves to loopback on every machine (from /etc/hosts, no network).
        let url = STRICT.check_url("http://localhost:9/hook").unwrap();
        match STRICT.resolve(&url).await {
            Err(Refused::NotPublic { host, address }) => {
                assert_eq!(host, "localhost");
                assert!(address.is_loopback());
            }
            other => panic!("localhost must be refused: {other:?}"),
        }
        let addrs = OPEN.resolve(&url).await.unwrap();
        assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 9));
        let literal = OPEN.check_url("http://127.0.0.1:8080/").unwrap();
        assert_eq!(
            OPEN.resolve(&literal).await.unwrap(),
            ["127.0.0.1:8080".parse::<SocketAddr>().unwrap()]
        );
    }
}
