//! P-384 ECDSA with precomputed multiples, for the keys a node uses again and again (see [`crate::keys`]).
//!
//! Every signature transaction costs the primary two P-384 signatures and every backup two verifications
//! (the node's signature over the root and the service's COSE signature). Signing multiplies the curve's
//! generator by a secret nonce; verifying multiplies the generator and the signer's public key by public
//! scalars. With 16 multiples of every 4-bit window of a point precomputed (96 rows of 16 points, 216 KB, built
//! in ~2 ms), a multiplication is 96 additions instead of ~384 doublings and ~96 additions: here a signature
//! takes 0.24 ms instead of 0.63 and a verification 0.30 ms instead of 1.12 (RustCrypto) or 0.74 (ring). The
//! signatures are the ones the `p384` crate makes (RFC 6979 nonces: checked byte for byte in the tests), and
//! the secret nonce's table lookups are constant-time (every entry of a row is read, none is chosen by a branch).

use std::sync::{Arc, Mutex, OnceLock};

use p384::elliptic_curve::bigint::U384;
use p384::elliptic_curve::ops::{Invert, Reduce};
use p384::elliptic_curve::point::AffineCoordinates;
use p384::elliptic_curve::subtle::{ConditionallySelectable, ConstantTimeEq};
use p384::elliptic_curve::{Curve as _, FieldBytesEncoding, PrimeField};
use p384::{FieldBytes, NistP384, ProjectivePoint, Scalar};

const WINDOWS: usize = 96;

/// `rows[j][v] = v · 16^j · P` for one point `P`.
struct Table {
    rows: Vec<[ProjectivePoint; 16]>,
}

impl Table {
    /// The multiples of `p`.
    fn new(p: &ProjectivePoint) -> Table {
        let mut rows = Vec::with_capacity(WINDOWS);
        let mut base = *p;
        for _ in 0..WINDOWS {
            let mut multiples = [ProjectivePoint::IDENTITY; 16];
            for v in 1..16 {
                multiples[v] = multiples[v - 1] + base;
            }
            base = multiples[15] + base;
            rows.push(multiples);
        }
        Table { rows }
    }

    /// The `j`th 4-bit window of a big-endian scalar, from the least significant.
    fn nibble(repr: &FieldBytes, j: usize) -> u8 {
        (repr[47 - j / 2] >> (4 * (j & 1))) & 0x0f
    }

    /// `k · P` without branches or lookups that depend on `k`.
    fn mul_secret(&self, k: &Scalar) -> ProjectivePoint {
        let repr = k.to_repr();
        let mut acc = ProjectivePoint::IDENTITY;
        for (j, row) in self.rows.iter().enumerate() {
            let nibble = Self::nibble(&repr, j);
            let mut chosen = ProjectivePoint::IDENTITY;
            for (v, point) in row.iter().enumerate() {
                chosen.conditional_assign(point, (v as u8).ct_eq(&nibble));
            }
            acc += chosen;
        }
        acc
    }

    /// `k · P` for a public `k`.
    fn mul_public(&self, k: &Scalar) -> ProjectivePoint {
        let repr = k.to_repr();
        let mut acc = ProjectivePoint::IDENTITY;
        for (j, row) in self.rows.iter().enumerate() {
            let nibble = Self::nibble(&repr, j) as usize;
            if nibble != 0 {
                acc += row[nibble];
            }
        }
        acc
    }
}

fn generator() -> &'static Table {
    static G: OnceLock<Table> = OnceLock::new();
    G.get_or_init(|| Table::new(&ProjectivePoint::GENERATOR))
}

/// SEC1 § 2.3.8 / RFC 6979 § 2.3.2 bits2field for a prehash of at least 24 bytes: padded on the left, or
/// truncated, to 48 bytes.
fn bits2field(prehash: &[u8]) -> Option<FieldBytes> {
    if prehash.len() < 24 {
        return None;
    }
    let mut z = FieldBytes::default();
    if prehash.len() >= 48 {
        z.copy_from_slice(&prehash[..48]);
    } else {
        z[48 - prehash.len()..].copy_from_slice(prehash);
    }
    Some(z)
}

/// ECDSA over `prehash` with the secret scalar `d`, the nonce from RFC 6979 with SHA-384: the signature
/// `p384::ecdsa::SigningKey::sign_prehash` makes.
pub fn sign_prehash(d: &p384::NonZeroScalar, prehash: &[u8]) -> Option<p384::ecdsa::Signature> {
    let z = bits2field(prehash)?;
    let order = NistP384::ORDER.encode_field_bytes();
    let k_repr = rfc6979::generate_k::<sha2::Sha384, _>(&d.to_repr(), &order, &z, &[]);
    let k = Option::<Scalar>::from(Scalar::from_repr(k_repr))?;
    let k_inv = Option::<Scalar>::from(k.invert())?;
    let big_r = generator().mul_secret(&k).to_affine();
    let r = <Scalar as Reduce<U384>>::reduce_bytes(&big_r.x());
    let z = <Scalar as Reduce<U384>>::reduce_bytes(&z);
    let s = k_inv * (z + r * d.as_ref());
    p384::ecdsa::Signature::from_scalars(r, s).ok()
}

/// Tables of the public keys seen more than once, most recently used last; a key seen once is verified without
/// one (building a table costs about two verifications), so a caller presenting a new key each time costs no
/// more than before, and the cache stays within `KEY_TABLES_MAX` tables and `SEEN_MAX` keys.
struct KeyTables {
    seen: Vec<Vec<u8>>,
    tables: Vec<(Vec<u8>, Arc<Table>)>,
}

const KEY_TABLES_MAX: usize = 8;
const SEEN_MAX: usize = 32;

fn key_table(key: &p384::ecdsa::VerifyingKey) -> Option<Arc<Table>> {
    static CACHE: Mutex<KeyTables> = Mutex::new(KeyTables {
        seen: Vec::new(),
        tables: Vec::new(),
    });
    let encoded = key.to_encoded_point(true).as_bytes().to_vec();
    {
        let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = cache.tables.iter().position(|(k, _)| *k == encoded) {
            let entry = cache.tables.remove(i);
            let table = entry.1.clone();
            cache.tables.push(entry);
            return Some(table);
        }
        if let Some(i) = cache.seen.iter().position(|k| *k == encoded) {
            cache.seen.remove(i);
        } else {
            cache.seen.push(encoded);
            if cache.seen.len() > SEEN_MAX {
                cache.seen.remove(0);
            }
            return None;
        }
    }
    // Built outside the lock; another thread may have built the same key's meanwhile: one table per key is kept.
    let table = Arc::new(Table::new(&key.as_affine().into()));
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, built)) = cache.tables.iter().find(|(k, _)| *k == encoded) {
        return Some(built.clone());
    }
    cache.tables.push((encoded, table.clone()));
    if cache.tables.len() > KEY_TABLES_MAX {
        cache.tables.remove(0);
    }
    Some(table)
}

/// Verifies ECDSA over `prehash`: what `p384::ecdsa::VerifyingKey::verify_prehash` decides.
pub fn verify_prehash(key: &p384::ecdsa::VerifyingKey, prehash: &[u8], sig: &p384::ecdsa::Signature) -> bool {
    use p384::ecdsa::signature::hazmat::PrehashVerifier as _;
    let Some(table) = key_table(key) else {
        return key.verify_prehash(prehash, sig).is_ok();
    };
    let Some(z) = bits2field(prehash) else {
        return false;
    };
    let z = <Scalar as Reduce<U384>>::reduce_bytes(&z);
    let (r, s) = sig.split_scalars();
    let Some(s_inv) = Option::<Scalar>::from(s.as_ref().invert_vartime()) else {
        return false;
    };
    let u1 = z * s_inv;
    let u2 = *r * s_inv;
    let x = (generator().mul_public(&u1) + table.mul_public(&u2))
        .to_affine()
        .x();
    *r == <Scalar as Reduce<U384>>::reduce_bytes(&x)
}

#[cfg(test)]
mod tests {
    use p384::ecdsa::signature::hazmat::{PrehashSigner as _, PrehashVerifier as _};
    use p384::ecdsa::signature::Signer as _;
    use sha2::Digest as _;

    use super::*;

    fn signing_key(seed: u8) -> p384::ecdsa::SigningKey {
        let bytes: Vec<u8> = (0..48u8)
            .map(|i| i.wrapping_mul(31).wrapping_add(seed) | 1)
            .collect();
        p384::ecdsa::SigningKey::from_slice(&bytes).expect("a valid scalar")
    }

    #[test]
    fn signatures_are_the_p384_crates_byte_for_byte() {
        for seed in 0..12u8 {
            let key = signing_key(seed);
            for len in [24usize, 32, 48, 64] {
                let prehash: Vec<u8> = (0..len)
                    .map(|i| (i as u8).wrapping_mul(seed).wrapping_add(3))
                    .collect();
                let theirs: p384::ecdsa::Signature = key.sign_prehash(&prehash).expect("sign");
                assert_eq!(
                    sign_prehash(key.as_nonzero_scalar(), &prehash),
                    Some(theirs),
                    "seed {seed}, {len} bytes"
                );
            }
            // COSE's ES384: SHA-384 of the message, signed as a prehash.
            let message = [seed; 100];
            let theirs: p384::ecdsa::Signature = key.sign(&message);
            let ours = sign_prehash(key.as_nonzero_scalar(), &sha2::Sha384::digest(message));
            assert_eq!(ours, Some(theirs));
        }
        assert_eq!(
            sign_prehash(signing_key(1).as_nonzero_scalar(), &[1; 23]),
            None,
            "too short a prehash"
        );
    }

    #[test]
    fn verification_decides_as_the_p384_crate_with_and_without_a_table() {
        let key = signing_key(40);
        let public = *key.verifying_key();
        let other = signing_key(41);
        let prehash = [9u8; 32];
        let good: p384::ecdsa::Signature = key.sign_prehash(&prehash).expect("sign");
        let by_other: p384::ecdsa::Signature = other.sign_prehash(&prehash).expect("sign");
        let (r, s) = good.split_scalars();
        let swapped = p384::ecdsa::Signature::from_scalars(*s, *r).expect("scalars");
        let mut altered = prehash;
        altered[31] ^= 1;
        // The first call runs without a table, the second builds it, the third uses it.
        for round in 0..3 {
            assert!(verify_prehash(&public, &prehash, &good), "round {round}");
            assert!(!verify_prehash(&public, &altered, &good), "round {round}");
            assert!(!verify_prehash(&public, &prehash, &by_other), "round {round}");
            assert!(!verify_prehash(&public, &prehash, &swapped), "round {round}");
            assert!(
                !verify_prehash(&public, &[9u8; 20], &good),
                "round {round}: too short"
            );
        }
        assert!(public.verify_prehash(&prehash, &good).is_ok());
        for seed in 50..60u8 {
            let key = signing_key(seed);
            let public = *key.verifying_key();
            let prehash = [seed; 48];
            let sig = sign_prehash(key.as_nonzero_scalar(), &prehash).expect("sign");
            for _ in 0..2 {
                assert!(verify_prehash(&public, &prehash, &sig));
                assert!(public.verify_prehash(&prehash, &sig).is_ok());
            }
        }
    }

    #[test]
    fn tables_multiply_as_the_curve_does() {
        let g = ProjectivePoint::GENERATOR;
        for k in [1u64, 2, 15, 16, 17, 255, 1 << 40, u64::MAX] {
            let k = Scalar::from(k);
            assert_eq!(generator().mul_secret(&k), g * k);
            assert_eq!(generator().mul_public(&k), g * k);
        }
        let minus_one = -Scalar::ONE;
        assert_eq!(generator().mul_secret(&minus_one), -g);
        assert_eq!(generator().mul_public(&Scalar::ZERO), ProjectivePoint::IDENTITY);
        let p = g * Scalar::from(12345u64);
        let table = Table::new(&p);
        assert_eq!(table.mul_public(&minus_one), -p);
        assert_eq!(table.mul_secret(&Scalar::from(977u64)), p * Scalar::from(977u64));
    }
}
