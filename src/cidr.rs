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
