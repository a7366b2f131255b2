//! RFC 3074 load balancing between the two gateways: the Pearson hash bucket of a client,
//! and this gateway's [`Share`] of the clients and of the pool (pure data for `decide`, set
//! by the heartbeat in `crate::ha`).

use serde::Serialize;

use crate::ipam::Lane;

/// RFC 3074 §6, "the loadb_mx_tbl": a permutation of 0..=255 for the Pearson hash.
const LOADB_MX_TBL: [u8; 256] = [
    251, 175, 119, 215, 81, 14, 79, 191, 103, 49, 181, 143, 186, 157, 0, 232, 31, 32, 55, 60, 152,
    58, 17, 237, 174, 70, 160, 144, 220, 90, 57, 223, 59, 3, 18, 140, 111, 166, 203, 196, 134, 243,
    124, 95, 222, 179, 197, 65, 180, 48, 36, 15, 107, 46, 233, 130, 165, 30, 123, 161, 209, 23, 97,
    16, 40, 91, 219, 61, 100, 10, 210, 109, 250, 127, 22, 138, 29, 108, 244, 67, 207, 9, 178, 204,
    74, 98, 126, 249, 167, 116, 34, 77, 193, 200, 121, 5, 20, 113, 71, 35, 128, 13, 182, 94, 25,
    226, 227, 199, 75, 27, 41, 245, 230, 224, 43, 225, 177, 26, 155, 150, 212, 142, 218, 115, 241,
    73, 88, 105, 39, 114, 62, 255, 192, 201, 145, 214, 168, 158, 221, 148, 154, 122, 12, 84, 82,
    163, 44, 139, 228, 236, 205, 242, 217, 11, 187, 146, 159, 64, 86, 239, 195, 42, 106, 198, 118,
    112, 184, 172, 87, 2, 173, 117, 176, 229, 247, 253, 137, 185, 99, 164, 102, 147, 45, 66, 231,
    52, 141, 211, 194, 206, 246, 238, 56, 110, 78, 248, 63, 240, 189, 93, 92, 51, 53, 183, 19, 171,
    72, 50, 33, 104, 101, 69, 8, 252, 83, 120, 76, 135, 85, 54, 202, 125, 188, 213, 96, 235, 136,
    208, 162, 129, 190, 132, 156, 38, 47, 1, 7, 254, 24, 4, 216, 131, 89, 21, 28, 133, 37, 153,
    149, 80, 170, 68, 6, 169, 234, 151,
];

/// RFC 3074 §6 `loadb_p_hash`: the hash starts at the key's length and takes the key's
/// bytes from the last to the first.
pub fn pearson_hash(key: &[u8]) -> u8 {
    key.iter()
        .rev()
        .fold(key.len() as u8, |h, b| LOADB_MX_TBL[usize::from(h ^ b)])
}

/// RFC 3074 §5: a client's hash bucket is the hash of its client identifier (option 61)
/// when it sent one, else of its hardware address (chaddr, `hlen` bytes).
pub fn bucket(client_id: Option<&[u8]>, chaddr: &[u8]) -> u8 {
    pearson_hash(client_id.filter(|c| !c.is_empty()).unwrap_or(chaddr))
}

/// This gateway's share of the work, as `decide` sees it (pure data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case", tag = "share")]
pub enum Share {
    /// Answer every client and take addresses from the whole pool: no peer configured, or
    /// its heartbeat is stale (it is down, or cut off from the store).
    #[default]
    All,
    /// The peer is alive: unknown clients in the other half of the hash buckets are the
    /// peer's (RFC 3074 §5 "hash bucket assignment"; the first gateway by name takes
    /// buckets 0..=127, as an ISC split of 128 does), and fresh addresses come from our lane
    /// of the pool first, so the two never pick the same free address.
    Half { first: bool },
}

impl Share {
    /// Whether an unknown client in `bucket` is ours to answer.
    pub fn answers(self, bucket: u8) -> bool {
        match self {
            Share::All => true,
            Share::Half { first } => (bucket < 128) == first,
        }
    }

    /// The pool positions to try first.
    pub fn lane(self) -> Lane {
        match self {
            Share::All => Lane::ALL,
            Share::Half { first } => Lane {
                index: u64::from(!first),
                of: 2,
            },
        }
    }
}

/// Where the DHCP path reads its current share (the heartbeat's peer watch in `crate::ha`;
/// a fixed share in tests).
pub trait ShareSource: Send + Sync {
    fn share(&self) -> Share;
}

impl ShareSource for Share {
    fn share(&self) -> Share {
        *self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3074_table_is_a_permutation() {
        let mut seen = [false; 256];
        for v in LOADB_MX_TBL {
            assert!(!seen[usize::from(v)], "{v} twice");
            seen[usize::from(v)] = true;
        }
    }

    /// RFC 3074 §6's hash by hand: len, then the key backwards through the table.
    #[test]
    fn rfc3074_6_pearson_hash() {
        assert_eq!(pearson_hash(&[]), 0);
        // One byte 0x00: h = T[1 ^ 0] = T[1] = 175.
        assert_eq!(pearson_hash(&[0]), 175);
        // [0x01, 0x02]: h0 = 2; h1 = T[2 ^ 0x02] = T[0] = 251; h2 = T[251 ^ 0x01] = T[250].
        assert_eq!(pearson_hash(&[1, 2]), LOADB_MX_TBL[250]);
        // The key's order matters (the last byte goes in first).
        assert_ne!(pearson_hash(&[1, 2]), pearson_hash(&[2, 1]));
    }

    #[test]
    fn rfc3074_5_bucket_uses_client_id_else_chaddr() {
        let chaddr = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        let cid = [0x01, 0x52, 0x54, 0x00, 0x12, 0x34, 0x57];
        assert_eq!(bucket(None, &chaddr), pearson_hash(&chaddr));
        assert_eq!(bucket(Some(&cid), &chaddr), pearson_hash(&cid));
        assert_eq!(bucket(Some(&[]), &chaddr), pearson_hash(&chaddr));
    }

    /// The two halves split the buckets exactly, and sequential MACs (perfdhcp's) spread
    /// over both about evenly.
    #[test]
    fn rfc3074_5_two_gateways_split_every_bucket_once() {
        let a = Share::Half { first: true };
        let b = Share::Half { first: false };
        for bucket in 0..=255u8 {
            assert!(a.answers(bucket) ^ b.answers(bucket), "bucket {bucket}");
            assert!(Share::All.answers(bucket));
        }
        let ours = (0..10_000u32)
            .filter(|n| {
                let m = n.to_be_bytes();
                a.answers(super::bucket(None, &[0x02, 0x00, m[0], m[1], m[2], m[3]]))
            })
            .count();
        assert!((4000..6000).contains(&ours), "{ours} of 10000");
        for p in 0..100 {
            assert!(a.lane().contains(p) ^ b.lane().contains(p));
            assert!(Share::All.lane().contains(p));
        }
    }
}
