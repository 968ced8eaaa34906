//! IPv4 ranges in CIDR form, as the pod network uses them: the cluster
//! CIDR split into one block per node (`spec.podCIDR`), and a node's block
//! split into its gateway and its pods' addresses.

use std::net::Ipv4Addr;

use crate::validation::Invalid;

/// An IPv4 range: a network address and a prefix length (host bits zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Cidr {
    base: Ipv4Addr,
    bits: u8,
}

impl Ipv4Cidr {
    /// The range of `bits` bits at `base` (host bits cleared).
    ///
    /// # Errors
    /// `bits` over 32.
    pub fn new(base: Ipv4Addr, bits: u8) -> Result<Self, Invalid> {
        if bits > 32 {
            return Err(format!("/{bits}: an IPv4 prefix is at most /32").into());
        }
        Ok(Self {
            base: Ipv4Addr::from(u32::from(base) & Self::mask_of(bits)),
            bits,
        })
    }

    fn mask_of(bits: u8) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0)
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.base
    }

    /// The prefix length.
    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// The netmask (`255.255.255.0` for a /24).
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(Self::mask_of(self.bits))
    }

    /// Whether `ip` lies in the range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask_of(self.bits) == u32::from(self.base)
    }

    /// Whether the two ranges share an address.
    pub fn overlaps(&self, other: &Self) -> bool {
        self.contains(other.base) || other.contains(self.base)
    }

    /// The `n`th address of the range (0 is the network address), if it
    /// lies in it.
    pub fn host(&self, n: u32) -> Option<Ipv4Addr> {
        let size = 1u64 << (32 - u32::from(self.bits));
        (u64::from(n) < size).then(|| Ipv4Addr::from(u32::from(self.base) + n))
    }

    /// How many blocks of prefix `bits` the range splits into (none when
    /// `bits` is shorter than the range's own prefix).
    pub fn subnet_count(&self, bits: u8) -> u32 {
        if bits < self.bits || bits > 32 {
            return 0;
        }
        u32::try_from(1u64 << (bits - self.bits)).unwrap_or(u32::MAX)
    }

    /// The `n`th block of prefix `bits` in the range.
    pub fn subnet(&self, bits: u8, n: u32) -> Option<Self> {
        (n < self.subnet_count(bits)).then(|| {
            let step = 1u64 << (32 - u32::from(bits));
            Self {
                base: Ipv4Addr::from(
                    (u64::from(u32::from(self.base)) + u64::from(n) * step) as u32,
                ),
                bits,
            }
        })
    }

    /// Which block of prefix `bits` of the range `block` is, when it is
    /// exactly one.
    pub fn subnet_index(&self, block: &Self) -> Option<u32> {
        if block.bits < self.bits || !self.contains(block.base) {
            return None;
        }
        let offset = u32::from(block.base) - u32::from(self.base);
        Some(offset >> (32 - u32::from(block.bits)))
    }
}

impl Ipv4Cidr {
    /// The range of `text` (`10.0.0.0/8`), its host bits cleared (as
    /// Kubernetes reads a NetworkPolicy's `ipBlock.cidr`).
    ///
    /// # Errors
    /// Not an IPv4 address with a prefix length.
    pub fn parse_loose(text: &str) -> Result<Self, Invalid> {
        let (ip, bits) = text
            .split_once('/')
            .ok_or_else(|| Invalid::from(format!("{text:?} is not a CIDR (like 10.0.0.0/8)")))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| Invalid(format!("{text:?} is not an IPv4 CIDR")))?;
        let bits: u8 = bits
            .parse()
            .map_err(|_| Invalid(format!("{text:?} has no valid prefix length")))?;
        Self::new(ip, bits)
    }

    /// The range without the parts `except` names, as the fewest ranges
    /// that cover exactly what is left.
    pub fn without(&self, except: &[Self]) -> Vec<Self> {
        if except
            .iter()
            .any(|e| e.bits <= self.bits && e.contains(self.base))
        {
            return Vec::new();
        }
        if !except.iter().any(|e| self.overlaps(e)) {
            return vec![*self];
        }
        let half = self.bits + 1;
        (0..2)
            .filter_map(|n| self.subnet(half, n))
            .flat_map(|part| part.without(except))
            .collect()
    }
}

impl std::str::FromStr for Ipv4Cidr {
    type Err = Invalid;

    /// Parses `10.42.0.0/16`; host bits must be zero, as Kubernetes asks
    /// of `podCIDR` and `--cluster-cidr`.
    fn from_str(s: &str) -> Result<Self, Invalid> {
        let (ip, bits) = s
            .split_once('/')
            .ok_or_else(|| Invalid::from(format!("{s:?} is not a CIDR (like 10.42.0.0/16)")))?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| {
            Invalid(format!(
                "{s:?} is not a CIDR: {ip:?} is not an IPv4 address"
            ))
        })?;
        let bits: u8 = bits.parse().map_err(|_| {
            Invalid(format!(
                "{s:?} is not a CIDR: {bits:?} is not a prefix length"
            ))
        })?;
        let cidr = Self::new(ip, bits).map_err(|e| Invalid(format!("{s:?}: {e}")))?;
        if cidr.base != ip {
            return Err(format!("{s:?} has host bits set: the network is {cidr}").into());
        }
        Ok(cidr)
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_without_its_exceptions_covers_exactly_the_rest() {
        let c = |t: &str| t.parse::<Ipv4Cidr>().unwrap();
        let rest = c("172.17.0.0/16").without(&[c("172.17.1.0/24")]);
        let text: Vec<String> = rest.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "172.17.0.0/24",
                "172.17.2.0/23",
                "172.17.4.0/22",
                "172.17.8.0/21",
                "172.17.16.0/20",
                "172.17.32.0/19",
                "172.17.64.0/18",
                "172.17.128.0/17"
            ]
        );
        let covered = |ip: &str| rest.iter().any(|r| r.contains(ip.parse().unwrap()));
        assert!(covered("172.17.0.9") && covered("172.17.255.1"));
        assert!(!covered("172.17.1.7") && !covered("172.18.0.1"));
        assert_eq!(c("10.0.0.0/8").without(&[c("10.0.0.0/8")]), []);
        assert_eq!(
            c("10.0.0.0/8").without(&[c("192.168.0.0/16")]),
            [c("10.0.0.0/8")]
        );
        assert_eq!(
            Ipv4Cidr::parse_loose("10.1.2.3/16").unwrap().to_string(),
            "10.1.0.0/16"
        );
        assert!(Ipv4Cidr::parse_loose("fd00::/8").is_err());
    }

    #[test]
    fn parses_and_prints_a_network() {
        let c: Ipv4Cidr = "10.42.0.0/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.42.0.0/16");
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 0, 0));
        let err = "10.42.1.0/16".parse::<Ipv4Cidr>().unwrap_err();
        assert!(
            err.0.contains("host bits set: the network is 10.42.0.0/16"),
            "{err}"
        );
        assert!("10.42.0.0".parse::<Ipv4Cidr>().is_err());
        assert!("10.42.0.0/33".parse::<Ipv4Cidr>().is_err());
        assert!("fd00::/8".parse::<Ipv4Cidr>().is_err());
        assert_eq!(
            "0.0.0.0/0".parse::<Ipv4Cidr>().unwrap().netmask(),
            Ipv4Addr::UNSPECIFIED
        );
    }

    #[test]
    fn splits_into_node_blocks_and_finds_them_again() {
        let c: Ipv4Cidr = "10.42.0.0/16".parse().unwrap();
        assert_eq!(c.subnet_count(24), 256);
        assert_eq!(c.subnet_count(8), 0);
        let b = c.subnet(24, 3).unwrap();
        assert_eq!(b.to_string(), "10.42.3.0/24");
        assert_eq!(c.subnet(24, 256), None);
        assert_eq!(c.subnet_index(&b), Some(3));
        assert_eq!(c.subnet_index(&"10.43.0.0/24".parse().unwrap()), None);
        assert_eq!(b.host(1), Some(Ipv4Addr::new(10, 42, 3, 1)));
        assert_eq!(b.host(256), None);
        assert!(b.contains(Ipv4Addr::new(10, 42, 3, 255)));
        assert!(!b.contains(Ipv4Addr::new(10, 42, 4, 0)));
        assert!(c.overlaps(&b) && b.overlaps(&c));
        assert!(!b.overlaps(&"10.42.4.0/24".parse().unwrap()));
    }
}
