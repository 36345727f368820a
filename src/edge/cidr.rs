//! Address ranges (`10.0.0.0/8`, `2001:db8::/32`, or one address) for access lists, trusted proxies
//! and PROXY protocol sources.

use std::fmt;
use std::net::IpAddr;

/// One address range. IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, as a dual-stack socket reports
/// an IPv4 peer) match IPv4 ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    len: u8,
}

impl Cidr {
    /// Parses `addr/len` or a bare address (the whole address). A range with bits set below its
    /// length (`10.0.0.1/8`) is refused: it usually means a typo, and nginx only warns about it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an address or range (e.g. \"10.0.0.0/8\")"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => match l.trim().parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{text:?}: the prefix length must be 0 to {max}")),
            },
        };
        let cidr = Self { network, len };
        if cidr.masked(network) != bits(network) {
            let fixed = Self::from_bits(cidr.masked(network), network.is_ipv4(), len);
            return Err(format!("{text:?} has bits set after /{len}; did you mean \"{fixed}\"?"));
        }
        Ok(cidr)
    }

    fn from_bits(value: u128, v4: bool, len: u8) -> Self {
        let network = if v4 {
            IpAddr::V4(std::net::Ipv4Addr::from(value as u32))
        } else {
            IpAddr::V6(std::net::Ipv6Addr::from(value))
        };
        Self { network, len }
    }

    fn masked(&self, ip: IpAddr) -> u128 {
        let width = if ip.is_ipv4() { 32 } else { 128 };
        let shift = width - u32::from(self.len);
        if shift >= 128 {
            0
        } else {
            (bits(ip) >> shift) << shift
        }
    }

    /// Whether `ip` is in this range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.network.is_ipv4() && self.masked(ip) == bits(self.network)
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.len)
    }
}

/// A list of ranges; an address matches if any range holds it. Lists are short (a handful of
/// networks), so a scan beats any index.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct CidrList(pub Vec<Cidr>);

impl CidrList {
    /// Whether any range holds `ip`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// No ranges at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for CidrList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{c}")?;
        }
        f.write_str("]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_hold_what_they_should() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.255.1.2")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.1.2.3")), "an IPv4-mapped address is the IPv4 address");
        assert!(!c.contains(ip("::1")));
        let one = Cidr::parse("192.0.2.7").unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")) && !v6.contains(ip("2001:db9::1")));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("203.0.113.9")) && !all.contains(ip("2001:db8::1")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("2001:db8::1")));
    }

    #[test]
    fn bad_ranges_say_why() {
        assert!(Cidr::parse("10.0.0.1/8").unwrap_err().contains("did you mean \"10.0.0.0/8\""));
        assert!(Cidr::parse("10.0.0.0/33").unwrap_err().contains("0 to 32"));
        assert!(Cidr::parse("example.com").unwrap_err().contains("not an address"));
        assert!(Cidr::parse("10.0.0.0/x").is_err());
    }
}
