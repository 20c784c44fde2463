//! Which shard a record belongs to.
//!
//! The hash is FNV-1a (64 bit): stable across processes, versions and
//! machines, unlike the standard library's randomly keyed hasher, so every
//! node agrees where a client's traffic lives.

/// `hash(key) mod shards`; `shards` must be at least 1.
pub fn shard_of(key: &[u8], shards: u32) -> u32 {
    debug_assert!(shards > 0);
    (fnv1a(key) % u64::from(shards.max(1))) as u32
}

/// The shard of a client's traffic when no header names one: the hash of
/// its IP address as text (no port), formatted without allocating.
pub fn shard_of_client(ip: std::net::IpAddr, shards: u32) -> u32 {
    shard_of(super::text_in(ip, &mut [0; 64]).as_bytes(), shards)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn a_client_shards_by_its_address_as_text() {
        for ip in [
            "10.0.0.7",
            "::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            for shards in [1, 4, 1000] {
                assert_eq!(
                    shard_of_client(ip, shards),
                    shard_of(ip.to_string().as_bytes(), shards)
                );
            }
        }
    }

    #[test]
    fn spreads_addresses_over_shards() {
        let mut seen = [0usize; 4];
        for i in 0..256 {
            seen[shard_of(format!("10.0.0.{i}").as_bytes(), 4) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 30), "{seen:?}");
        assert_eq!(shard_of(b"anything", 1), 0);
    }
}
