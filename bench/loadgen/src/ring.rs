//! Key placement, rebuilt exactly as `client/ring.py` does, so each request goes to its key's
//! primary replica (token-aware) with one hop.
//!
//! A key's position is the first 8 bytes (big-endian) of BLAKE2b(key, digest size 8); its
//! partition is `position * Q / 2^64`. Each partition ranks the nodes by the position of
//! `"{node_id}/{partition}"`, ties broken by node id, highest first; the first is the primary.

use blake2::digest::{Update, VariableOutput};
use blake2::Blake2bVar;

pub fn position(data: &[u8]) -> u64 {
    let mut hasher = Blake2bVar::new(8).expect("8 is a valid BLAKE2b output size");
    hasher.update(data);
    let mut out = [0u8; 8];
    hasher.finalize_variable(&mut out).expect("the output buffer is 8 bytes");
    u64::from_be_bytes(out)
}

/// The primary node (an index into `node_ids`) of every partition.
pub struct Ring {
    pub node_ids: Vec<String>,
    primaries: Vec<u16>,
}

impl Ring {
    pub fn new(node_ids: &[String], partitions: u16) -> Ring {
        let mut ids = node_ids.to_vec();
        ids.sort();
        ids.dedup();
        assert!(!ids.is_empty() && partitions > 0, "a ring needs a node and a partition");
        let primaries = (0..partitions)
            .map(|p| {
                let best = ids
                    .iter()
                    .enumerate()
                    .max_by(|(_, a), (_, b)| {
                        let rank_a = position(format!("{a}/{p}").as_bytes());
                        let rank_b = position(format!("{b}/{p}").as_bytes());
                        (rank_a, a.as_bytes()).cmp(&(rank_b, b.as_bytes()))
                    })
                    .map(|(index, _)| index)
                    .expect("the ring has nodes");
                best as u16
            })
            .collect();
        Ring { node_ids: ids, primaries }
    }

    pub fn partition(&self, key: &[u8]) -> usize {
        ((position(key) as u128 * self.primaries.len() as u128) >> 64) as usize
    }

    /// The index (into `node_ids`) of `key`'s primary replica.
    pub fn primary(&self, key: &[u8]) -> usize {
        if self.node_ids.len() == 1 {
            return 0; // one node owns every key: no need to hash it
        }
        self.primaries[self.partition(key)] as usize
    }

    #[cfg(test)]
    pub fn partition_primary(&self, partition: usize) -> usize {
        self.primaries[partition] as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values computed with the Python module: `from client.ring import Ring, position`.
    #[test]
    fn positions_match_python() {
        assert_eq!(position(b""), 0xe4a6a0577479b2b4);
        assert_eq!(position(b"foo"), 0x7403aea39baf52fb);
        assert_eq!(position(b"key:000000000000"), 0x067a0a95b1e3847b);
        assert_eq!(position(b"key:000000001234"), 0x049560b604b3b17e);
        assert_eq!(position(b"node1/0"), 0xe9b16f1d233d7889);
    }

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn partitions_and_primaries_match_python() {
        // Input order must not matter.
        let ring = Ring::new(&ids(&["node2", "node3", "node1"]), 4096);
        let cases: [(&[u8], usize, &str); 5] = [
            (b"key:000000000000", 103, "node3"),
            (b"key:000000000001", 3772, "node3"),
            (b"key:000000001234", 73, "node2"),
            (b"key:000000009999", 1906, "node2"),
            (b"foo", 1856, "node2"),
        ];
        for (key, partition, primary) in cases {
            assert_eq!(ring.partition(key), partition, "{}", String::from_utf8_lossy(key));
            assert_eq!(ring.node_ids[ring.primary(key)], primary);
        }
    }

    #[test]
    fn partition_primaries_match_python() {
        // Ring(["a", "b"], 16): [r.partition_owners(p)[0] for p in range(16)]
        let expected = "a a a b a b b b b a a b b a b b";
        let ring = Ring::new(&ids(&["b", "a"]), 16);
        let got: Vec<&str> = (0..16).map(|p| ring.node_ids[ring.partition_primary(p)].as_str()).collect();
        assert_eq!(got.join(" "), expected);
    }

    #[test]
    fn one_node_owns_everything() {
        let ring = Ring::new(&ids(&["solo"]), 8);
        assert_eq!(ring.primary(b"anything"), 0);
        assert!((0..8).all(|p| ring.partition_primary(p) == 0));
    }
}
