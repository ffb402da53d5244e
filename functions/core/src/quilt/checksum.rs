//! Object hashes as quilt3 writes and verifies them, computed from streamed bytes or derived
//! from checksums S3 already computed (so an object is hashed without a local download).
//!
//! `sha2-256-chunked` is S3's composite SHA-256 of a multipart object whose parts are exactly
//! Quilt's chunks: SHA-256 each chunk, then SHA-256 the concatenated digests. That identity is
//! what lets a server-side copy with `ChecksumAlgorithm=SHA256` give the Quilt hash for free —
//! but only when the part layout is exactly the chunk layout, which [`hash_from_s3_parts`] checks.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};

/// Quilt's smallest chunk: 8 MiB.
pub const MIN_CHUNK_SIZE: u64 = 8 * 1024 * 1024;
/// quilt3 doubles the chunk size while an object would need more chunks than this.
pub const MAX_CHUNKS: u64 = 10_000;

/// The chunk size quilt3 uses for an object of `size` bytes (`get_checksum_chunksize`).
pub fn chunk_size(size: u64) -> u64 {
    let mut chunk = MIN_CHUNK_SIZE;
    while size.div_ceil(chunk) > MAX_CHUNKS {
        chunk *= 2;
    }
    chunk
}

/// How many chunks (S3 parts) an object of `size` bytes has under Quilt's chunk rule.
pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(chunk_size(size))
}

/// Whether quilt3 copies an object of `size` bytes with a multipart upload (8 MiB and more).
pub fn is_multipart(size: u64) -> bool {
    size >= MIN_CHUNK_SIZE
}

/// The hash algorithms a manifest entry can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum HashType {
    /// `sha2-256-chunked`: quilt3's default, base64 of the SHA-256 of chunk digests.
    #[serde(rename = "sha2-256-chunked")]
    Sha2_256Chunked,
    /// `CRC64NVME`: base64 of the full-object CRC-64/NVME, big-endian.
    #[serde(rename = "CRC64NVME")]
    Crc64Nvme,
    /// `SHA256`: legacy hex SHA-256 of the bytes; read, never written.
    #[serde(rename = "SHA256")]
    Sha256Legacy,
}

impl HashType {
    /// The name written in the manifest's `hash.type`.
    pub fn as_str(self) -> &'static str {
        match self {
            HashType::Sha2_256Chunked => "sha2-256-chunked",
            HashType::Crc64Nvme => "CRC64NVME",
            HashType::Sha256Legacy => "SHA256",
        }
    }

    /// Parses a manifest's `hash.type`.
    pub fn parse(name: &str) -> Option<HashType> {
        match name {
            "sha2-256-chunked" => Some(HashType::Sha2_256Chunked),
            "CRC64NVME" => Some(HashType::Crc64Nvme),
            "SHA256" => Some(HashType::Sha256Legacy),
            _ => None,
        }
    }
}

impl std::fmt::Display for HashType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An entry's hash: its algorithm and encoded value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct QuiltHash {
    /// The algorithm.
    #[serde(rename = "type")]
    pub kind: HashType,
    /// The value as the manifest stores it (base64, or hex for legacy SHA256).
    pub value: String,
}

impl QuiltHash {
    /// A `sha2-256-chunked` hash from its base64 value.
    pub fn chunked(value: impl Into<String>) -> Self {
        QuiltHash {
            kind: HashType::Sha2_256Chunked,
            value: value.into(),
        }
    }

    /// Checks `bytes` against this hash.
    pub fn verify(&self, bytes: &[u8]) -> bool {
        let mut hasher = ObjectHasher::new(self.kind, bytes.len() as u64);
        hasher.update(bytes);
        hasher.finish().value == self.value
    }
}

/// Streaming `sha2-256-chunked` hasher: feed the object's bytes in any slicing.
///
/// The object size must be known up front because it decides the chunk size.
#[derive(Clone)]
pub struct ChunkedSha256 {
    chunk_size: u64,
    in_chunk: u64,
    current: Sha256,
    digests: Sha256,
    chunks: u64,
}

impl ChunkedSha256 {
    /// A hasher for an object of `size` bytes.
    pub fn new(size: u64) -> Self {
        ChunkedSha256 {
            chunk_size: chunk_size(size),
            in_chunk: 0,
            current: Sha256::new(),
            digests: Sha256::new(),
            chunks: 0,
        }
    }

    /// Feeds the next bytes of the object.
    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = (self.chunk_size - self.in_chunk) as usize;
            let take = room.min(bytes.len());
            self.current.update(&bytes[..take]);
            self.in_chunk += take as u64;
            bytes = &bytes[take..];
            if self.in_chunk == self.chunk_size {
                self.close_chunk();
            }
        }
    }

    fn close_chunk(&mut self) {
        let digest = std::mem::take(&mut self.current).finalize();
        self.digests.update(digest);
        self.chunks += 1;
        self.in_chunk = 0;
    }

    /// The base64 value; an empty object has no chunks and hashes to SHA-256 of nothing.
    pub fn finish(mut self) -> String {
        if self.in_chunk > 0 {
            self.close_chunk();
        }
        B64.encode(self.digests.finalize())
    }
}

const CRC64_NVME: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_NVME);

/// Any of the hashes quilt3 reads, computed from streamed bytes.
pub enum ObjectHasher {
    /// `sha2-256-chunked`.
    Chunked(ChunkedSha256),
    /// `CRC64NVME`.
    Crc64(crc::Digest<'static, u64>),
    /// Legacy `SHA256`.
    Sha256(Sha256),
}

impl ObjectHasher {
    /// A hasher of `kind` for an object of `size` bytes.
    pub fn new(kind: HashType, size: u64) -> Self {
        match kind {
            HashType::Sha2_256Chunked => ObjectHasher::Chunked(ChunkedSha256::new(size)),
            HashType::Crc64Nvme => ObjectHasher::Crc64(CRC64_NVME.digest()),
            HashType::Sha256Legacy => ObjectHasher::Sha256(Sha256::new()),
        }
    }

    /// Feeds the next bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            ObjectHasher::Chunked(h) => h.update(bytes),
            ObjectHasher::Crc64(h) => h.update(bytes),
            ObjectHasher::Sha256(h) => h.update(bytes),
        }
    }

    /// The finished hash.
    pub fn finish(self) -> QuiltHash {
        match self {
            ObjectHasher::Chunked(h) => QuiltHash::chunked(h.finish()),
            ObjectHasher::Crc64(h) => QuiltHash {
                kind: HashType::Crc64Nvme,
                value: B64.encode(h.finalize().to_be_bytes()),
            },
            ObjectHasher::Sha256(h) => QuiltHash {
                kind: HashType::Sha256Legacy,
                value: hex::encode(h.finalize()),
            },
        }
    }
}

/// Why S3's checksums cannot be turned into a Quilt hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChecksumError {
    /// A checksum is not base64 of the expected digest length.
    #[error("S3 checksum {value:?} is not a base64 {expected_len}-byte digest")]
    Malformed {
        /// The value S3 returned.
        value: String,
        /// The digest length expected.
        expected_len: usize,
    },
    /// The parts do not follow Quilt's chunk layout for this size.
    #[error(
        "part layout {parts:?} of a {size}-byte object is not Quilt's chunk layout (chunk size {chunk_size})"
    )]
    LayoutMismatch {
        /// Object size.
        size: u64,
        /// The part sizes seen.
        parts: Vec<u64>,
        /// The chunk size Quilt uses for this size.
        chunk_size: u64,
    },
    /// A full-object checksum describes a multi-chunk object, whose Quilt hash needs part digests.
    #[error(
        "a full-object SHA-256 gives the Quilt hash only for objects of one chunk; this one has {chunks} chunks"
    )]
    NotSingleChunk {
        /// Number of chunks.
        chunks: u64,
    },
}

fn decode_digest(value: &str, expected_len: usize) -> Result<Vec<u8>, ChecksumError> {
    // A `-N` suffix marks a composite over N parts: never a full-object or part digest, so it
    // is refused rather than stripped (a composite is a different number).
    match B64.decode(value) {
        Ok(bytes) if bytes.len() == expected_len => Ok(bytes),
        _ => Err(ChecksumError::Malformed {
            value: value.to_string(),
            expected_len,
        }),
    }
}

/// The Quilt `sha2-256-chunked` value of a `size`-byte object from the SHA-256 checksums of its
/// parts, given as `(part_size, base64 digest)` in part order. The parts must be exactly Quilt's
/// chunks (every part `chunk_size(size)` bytes but the last); anything else is refused, because a
/// composite over a different layout is a different number.
pub fn hash_from_s3_parts(size: u64, parts: &[(u64, String)]) -> Result<String, ChecksumError> {
    let chunk = chunk_size(size);
    let expected = chunk_count(size);
    let sizes: Vec<u64> = parts.iter().map(|(s, _)| *s).collect();
    let layout_ok = parts.len() as u64 == expected
        && sizes.iter().sum::<u64>() == size
        && sizes.iter().enumerate().all(|(i, s)| {
            if (i as u64) + 1 < expected {
                *s == chunk
            } else {
                *s > 0 && *s <= chunk
            }
        });
    if !layout_ok {
        return Err(ChecksumError::LayoutMismatch {
            size,
            parts: sizes,
            chunk_size: chunk,
        });
    }
    let mut outer = Sha256::new();
    for (_, digest) in parts {
        outer.update(decode_digest(digest, 32)?);
    }
    Ok(B64.encode(outer.finalize()))
}

/// The Quilt `sha2-256-chunked` value from S3's full-object SHA-256 (base64) of an object of at
/// most one chunk: the Quilt value is then SHA-256 of that digest (an empty object's is the
/// digest itself, because it has no chunks).
pub fn hash_from_s3_full_object_sha256(
    size: u64,
    sha256_b64: &str,
) -> Result<String, ChecksumError> {
    let digest = decode_digest(sha256_b64, 32)?;
    match chunk_count(size) {
        0 => Ok(B64.encode(Sha256::digest(b""))),
        1 => Ok(B64.encode(Sha256::digest(&digest))),
        chunks => Err(ChecksumError::NotSingleChunk { chunks }),
    }
}

/// The Quilt `CRC64NVME` value from S3's full-object CRC-64/NVME checksum (already base64 of the
/// 8 big-endian bytes); validated so a malformed value never reaches a manifest.
pub fn hash_from_s3_crc64nvme(crc_b64: &str) -> Result<String, ChecksumError> {
    decode_digest(crc_b64, 8)?;
    Ok(crc_b64.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hasher_is_independent_of_slicing() {
        let data: Vec<u8> = (0..(MIN_CHUNK_SIZE as usize + 1000))
            .map(|i| (i % 251) as u8)
            .collect();
        let mut whole = ChunkedSha256::new(data.len() as u64);
        whole.update(&data);
        let whole = whole.finish();
        for step in [1usize << 20, 7_777_777, 4093] {
            let mut sliced = ChunkedSha256::new(data.len() as u64);
            for piece in data.chunks(step) {
                sliced.update(piece);
            }
            assert_eq!(sliced.finish(), whole);
        }
    }

    #[test]
    fn hash_type_names_round_trip_and_unknown_names_are_refused() {
        for kind in [
            HashType::Sha2_256Chunked,
            HashType::Crc64Nvme,
            HashType::Sha256Legacy,
        ] {
            assert_eq!(HashType::parse(kind.as_str()), Some(kind));
            assert_eq!(kind.to_string(), kind.as_str());
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::json!(kind.as_str())
            );
        }
        assert_eq!(HashType::Sha256Legacy.as_str(), "SHA256");
        for unknown in ["sha256", "MD5", "", "crc64nvme"] {
            assert_eq!(HashType::parse(unknown), None, "{unknown}");
        }
    }

    #[test]
    fn verify_checks_bytes_against_each_algorithm() {
        // Known values: SHA-256("hello"); the chunked hash of one chunk is SHA-256 of that
        // digest; CRC-64/NVME of "123456789" is the catalogue's check value 0xae8b14860a799888.
        let legacy = QuiltHash {
            kind: HashType::Sha256Legacy,
            value: "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824".into(),
        };
        assert!(legacy.verify(b"hello") && !legacy.verify(b"hellO"));
        let chunked = QuiltHash::chunked("lZXJ35AHUUjrBoYDZd8zWEt1v/eCpRDGzUiDpBmDPVA=");
        assert!(chunked.verify(b"hello") && !chunked.verify(b"hello "));
        let crc = QuiltHash {
            kind: HashType::Crc64Nvme,
            value: "rosUhgp5mIg=".into(),
        };
        assert!(crc.verify(b"123456789") && !crc.verify(b"12345678"));
        assert_eq!(
            hash_from_s3_crc64nvme("rosUhgp5mIg="),
            Ok(crc.value.clone())
        );
        assert!(matches!(
            hash_from_s3_crc64nvme("rosUhgp5mIg=-1"),
            Err(ChecksumError::Malformed {
                expected_len: 8,
                ..
            })
        ));
        // An empty object has no chunks: its chunked hash is SHA-256 of nothing.
        let empty = QuiltHash::chunked("47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
        assert!(empty.verify(b""));
    }

    #[test]
    fn full_object_sha256_gives_the_quilt_hash_for_one_chunk_only() {
        use sha2::Digest as _;
        let digest = B64.encode(Sha256::digest(b"hello"));
        assert_eq!(
            hash_from_s3_full_object_sha256(5, &digest),
            Ok("lZXJ35AHUUjrBoYDZd8zWEt1v/eCpRDGzUiDpBmDPVA=".to_string())
        );
        assert_eq!(
            hash_from_s3_full_object_sha256(0, &B64.encode(Sha256::digest(b""))),
            Ok("47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=".to_string())
        );
        assert_eq!(
            hash_from_s3_full_object_sha256(MIN_CHUNK_SIZE + 1, &digest),
            Err(ChecksumError::NotSingleChunk { chunks: 2 })
        );
        assert!(matches!(
            hash_from_s3_full_object_sha256(5, "not base64"),
            Err(ChecksumError::Malformed {
                expected_len: 32,
                ..
            })
        ));
    }

    #[test]
    fn chunk_size_doubles_past_ten_thousand_chunks() {
        assert_eq!(chunk_size(0), MIN_CHUNK_SIZE);
        assert_eq!(chunk_count(0), 0);
        assert_eq!(chunk_size(MIN_CHUNK_SIZE * MAX_CHUNKS), MIN_CHUNK_SIZE);
        assert_eq!(
            chunk_size(MIN_CHUNK_SIZE * MAX_CHUNKS + 1),
            2 * MIN_CHUNK_SIZE
        );
        assert_eq!(chunk_count(MIN_CHUNK_SIZE * MAX_CHUNKS + 1), 5001);
        assert!(!is_multipart(MIN_CHUNK_SIZE - 1) && is_multipart(MIN_CHUNK_SIZE));
    }

    #[test]
    fn part_layout_must_match_chunks() {
        let d = B64.encode([0u8; 32]);
        let size = MIN_CHUNK_SIZE + 5;
        assert!(hash_from_s3_parts(size, &[(MIN_CHUNK_SIZE, d.clone()), (5, d.clone())]).is_ok());
        assert!(matches!(
            hash_from_s3_parts(size, &[(5, d.clone()), (MIN_CHUNK_SIZE, d.clone())]),
            Err(ChecksumError::LayoutMismatch { .. })
        ));
        assert!(matches!(
            hash_from_s3_parts(size, &[(size, d.clone())]),
            Err(ChecksumError::LayoutMismatch { .. })
        ));
        assert!(matches!(
            hash_from_s3_parts(size, &[(MIN_CHUNK_SIZE, "bad".into()), (5, d)]),
            Err(ChecksumError::Malformed { .. })
        ));
    }
}
