//! The client's real address when lb is not the first hop: taken from `X-Forwarded-For` or
//! `Forwarded`, but only when the peer is a trusted proxy (nginx's `real_ip` with
//! `real_ip_recursive on`, Envoy's trusted hops). The peer itself may already come from a PROXY
//! protocol header (`proxy_protocol.rs`).

use super::cidr::CidrList;
use http::HeaderMap;
use std::net::{IpAddr, SocketAddr};

/// Which header carries the chain of addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

/// `[client_address]`: whose forwarded headers are believed, and which header.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClientAddress {
    /// Peers whose header is believed; empty (the default): nobody's, the peer is the client.
    pub trusted_proxies: CidrList,
    /// The header read from them.
    pub header: ForwardedHeader,
}

impl ClientAddress {
    /// The client's address for a request from `peer`: the peer itself unless it is trusted; else the
    /// rightmost address in the chain that is not a trusted proxy (all trusted: the leftmost). An
    /// element that is not an address ends the walk at the last good one, so a client can never
    /// place a forged address behind garbage.
    pub fn resolve(&self, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
        if self.trusted_proxies.is_empty() || !self.trusted_proxies.contains(peer.ip()) {
            return peer;
        }
        let name = match self.header {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        };
        let mut client = peer.ip();
        // Fields repeated on several lines form one list, in order: walk it from the right.
        for value in headers.get_all(name).iter().rev() {
            let Ok(text) = value.to_str() else { return with_port(client, peer) };
            for element in text.rsplit(',') {
                let hop = match self.header {
                    ForwardedHeader::XForwardedFor => address(element),
                    ForwardedHeader::Forwarded => forwarded_for(element),
                };
                let Some(hop) = hop else { return with_port(client, peer) };
                client = hop;
                if !self.trusted_proxies.contains(hop) {
                    return with_port(client, peer);
                }
            }
        }
        with_port(client, peer)
    }
}

/// The port is the peer's when the client is the peer, else unknown (0): forwarded chains do not
/// carry ports reliably.
fn with_port(ip: IpAddr, peer: SocketAddr) -> SocketAddr {
    if ip == peer.ip() {
        peer
    } else {
        SocketAddr::new(ip.to_canonical(), 0)
    }
}

/// One `X-Forwarded-For` element: an address, possibly with a port (`1.2.3.4:5`, `[::1]:5`).
fn address(element: &str) -> Option<IpAddr> {
    let element = element.trim();
    element
        .parse::<IpAddr>()
        .ok()
        .or_else(|| element.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

/// The `for=` of one `Forwarded` element (`for=192.0.2.1;proto=https`, `for="[2001:db8::1]:80"`).
/// `unknown` and obfuscated identifiers are not addresses.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let value = element.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.trim().eq_ignore_ascii_case("for").then_some(value.trim())
    })?;
    let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
    if let Some(bracketed) = value.strip_prefix('[') {
        let (ip, _) = bracketed.split_once(']')?;
        return ip.parse::<std::net::Ipv6Addr>().ok().map(|a| IpAddr::V6(a).to_canonical());
    }
    address(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::cidr::Cidr;

    fn trusting(ranges: &[&str], header: ForwardedHeader) -> ClientAddress {
        ClientAddress {
            trusted_proxies: CidrList(ranges.iter().map(|r| Cidr::parse(r).unwrap()).collect()),
            header,
        }
    }

    fn headers(name: &str, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    fn peer(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        let c = trusting(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        let h = headers("x-forwarded-for", &["1.2.3.4"]);
        assert_eq!(c.resolve(peer("192.0.2.1:5000"), &h), peer("192.0.2.1:5000"));
        let nobody = ClientAddress::default();
        assert_eq!(nobody.resolve(peer("10.0.0.1:5000"), &h), peer("10.0.0.1:5000"));
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let c = trusting(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        // The client forged 6.6.6.6; the trusted proxy 10.0.0.2 appended the real 203.0.113.5.
        let h = headers("x-forwarded-for", &["6.6.6.6, 203.0.113.5", "10.0.0.2"]);
        assert_eq!(c.resolve(peer("10.0.0.1:80"), &h), peer("203.0.113.5:0"));
        let all_trusted = headers("x-forwarded-for", &["10.1.1.1, 10.0.0.2"]);
        assert_eq!(c.resolve(peer("10.0.0.1:80"), &all_trusted), peer("10.1.1.1:0"));
        let with_ports = headers("x-forwarded-for", &["[2001:db8::7]:443, 198.51.100.1:9"]);
        assert_eq!(c.resolve(peer("10.0.0.1:80"), &with_ports), peer("198.51.100.1:0"));
        let none = HeaderMap::new();
        assert_eq!(c.resolve(peer("10.0.0.1:80"), &none), peer("10.0.0.1:80"));
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_good_hop() {
        let c = trusting(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        let h = headers("x-forwarded-for", &["1.2.3.4, nonsense, 10.0.0.9"]);
        assert_eq!(c.resolve(peer("10.0.0.1:80"), &h), peer("10.0.0.9:0"));
    }

    #[test]
    fn forwarded_elements_give_their_for() {
        let c = trusting(&["10.0.0.0/8"], ForwardedHeader::Forwarded);
        let h = headers(
            "forwarded",
            &["for=6.6.6.6, for=\"[2001:db8:cafe::17]:4711\";proto=https", "For=10.0.0.3;by=10.0.0.1"],
        );
        assert_eq!(c.resolve(peer("10.0.0.1:80"), &h), peer("[2001:db8:cafe::17]:0"));
        let unknown = headers("forwarded", &["for=unknown, for=10.0.0.3"]);
        assert_eq!(c.resolve(peer("10.0.0.1:80"), &unknown), peer("10.0.0.3:0"));
    }
}
