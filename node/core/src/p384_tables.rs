//! P-384 ECDSA with precomputed multiples, for the keys a node uses again and again (see [`crate::keys`]).
//!
//! Every signature transaction costs the primary two P-384 signatures and every backup two verifications
//! (the node's signature over the root and the service's COSE signature). Signing multiplies the curve's
//! generator by a secret nonce; verifying multiplies the generator and the signer's public key by public
//! scalars. With the multiples of every window of a point precomputed in affine coordinates, a multiplication is
//! one cheaper "mixed" addition per window instead of ~384 doublings and ~96 additions: 4-bit windows (96 rows of
//! 15 points, 138 KB, built in ~3 ms) for the generator when signing and for public keys seen more than once,
//! 8-bit windows (48 rows of 255 points, 1.2 MB, built once in ~20 ms) for the generator when verifying. The
//! inversions, 30 % of the time with the crate's constant-time divsteps, are a binary extended Euclid in variable
//! time: on public values when verifying (and there the x-coordinate check needs no inversion at all), on values
//! multiplied by a fresh random factor when signing. Here a signature takes 0.14 ms instead of 0.63 (the `p384`
//! crate) and a verification 0.14 ms instead of 1.12 (the crate) or 0.74 (ring). The signatures are the ones the
//! `p384` crate makes (RFC 6979 nonces: checked byte for byte in the tests), and the secret nonce's table lookups
//! are constant-time (every entry of a row is read, none is chosen by a branch).
//!
//! The point formulas are Renes–Costello–Batina 2015's complete ones for `a = −3` (algorithms 4 and 5), as the
//! `primeorder` crate writes them; the tests compare every operation with the `p384` crate's.

use std::sync::{Arc, Mutex, OnceLock};

use p384::elliptic_curve::bigint::U384;
use p384::elliptic_curve::ops::Reduce;
use p384::elliptic_curve::sec1::{Coordinates, ToEncodedPoint as _};
use p384::elliptic_curve::subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use p384::elliptic_curve::{Curve as _, FieldBytesEncoding, PrimeField};
use p384::{FieldBytes, FieldElement as Fe, NistP384, Scalar};

/// The curve's `b` (its `a` is −3).
const B: &str =
    "b3312fa7e23ee7e4988e056be3f82d19181d9c6efe8141120314088f5013875ac656398d8a2ed19d2a85c8edd3ec2aef";

fn curve_b() -> Fe {
    static CELL: OnceLock<Fe> = OnceLock::new();
    *CELL.get_or_init(|| Fe::from_uint(U384::from_be_hex(B)).expect("b is below p"))
}

/// A point in homogeneous projective coordinates, `(X/Z, Y/Z)`; the identity is `(0 : 1 : 0)`.
#[derive(Clone, Copy)]
struct Point {
    x: Fe,
    y: Fe,
    z: Fe,
}

/// A point other than the identity, `Z = 1`: a table entry, added with the cheaper mixed formula.
#[derive(Clone, Copy, Default)]
struct Affine {
    x: Fe,
    y: Fe,
}

impl ConditionallySelectable for Affine {
    fn conditional_select(a: &Self, b: &Self, choice: Choice) -> Self {
        Affine {
            x: Fe::conditional_select(&a.x, &b.x, choice),
            y: Fe::conditional_select(&a.y, &b.y, choice),
        }
    }
}

impl ConditionallySelectable for Point {
    fn conditional_select(a: &Self, b: &Self, choice: Choice) -> Self {
        Point {
            x: Fe::conditional_select(&a.x, &b.x, choice),
            y: Fe::conditional_select(&a.y, &b.y, choice),
            z: Fe::conditional_select(&a.z, &b.z, choice),
        }
    }
}

impl Point {
    const IDENTITY: Point = Point {
        x: Fe::ZERO,
        y: Fe::ONE,
        z: Fe::ZERO,
    };

    fn from_affine(a: &Affine) -> Point {
        Point {
            x: a.x,
            y: a.y,
            z: Fe::ONE,
        }
    }

    /// `self + other`: Renes–Costello–Batina 2015, algorithm 4 (complete for `a = −3`, doubling included), as
    /// the `primeorder` crate writes it.
    fn add(&self, other: &Point) -> Point {
        let xx = self.x * other.x;
        let yy = self.y * other.y;
        let zz = self.z * other.z;
        let xy_pairs = ((self.x + self.y) * (other.x + other.y)) - (xx + yy);
        let yz_pairs = ((self.y + self.z) * (other.y + other.z)) - (yy + zz);
        let xz_pairs = ((self.x + self.z) * (other.x + other.z)) - (xx + zz);
        Self::combine(xx, yy, zz, xy_pairs, yz_pairs, xz_pairs)
    }

    /// `self + other` for an `other` that is not the identity: algorithm 5 of the same paper (complete for any
    /// `self`), three multiplications fewer since `other`'s Z is 1.
    fn add_affine(&self, other: &Affine) -> Point {
        let xx = self.x * other.x;
        let yy = self.y * other.y;
        let xy_pairs = ((self.x + self.y) * (other.x + other.y)) - (xx + yy);
        let yz_pairs = (other.y * self.z) + self.y;
        let xz_pairs = (other.x * self.z) + self.x;
        Self::combine(xx, yy, self.z, xy_pairs, yz_pairs, xz_pairs)
    }

    /// The steps both additions share, from the products of the coordinates (`zz` = Z₁·Z₂).
    fn combine(xx: Fe, yy: Fe, zz: Fe, xy_pairs: Fe, yz_pairs: Fe, xz_pairs: Fe) -> Point {
        let b = curve_b();
        let bzz_part = xz_pairs - (b * zz);
        let bzz3_part = bzz_part.double() + bzz_part;
        let yy_m_bzz3 = yy - bzz3_part;
        let yy_p_bzz3 = yy + bzz3_part;
        let zz3 = zz.double() + zz;
        let bxz_part = (b * xz_pairs) - (zz3 + xx);
        let bxz3_part = bxz_part.double() + bxz_part;
        let xx3_m_zz3 = xx.double() + xx - zz3;
        Point {
            x: (yy_p_bzz3 * xy_pairs) - (yz_pairs * bxz3_part),
            y: (yy_p_bzz3 * yy_m_bzz3) + (xx3_m_zz3 * bxz3_part),
            z: (yy_m_bzz3 * yz_pairs) + (xy_pairs * xx3_m_zz3),
        }
    }
}

/// `entries[j·(2^bits − 1) + v − 1] = v · 2^(bits·j) · P` for `v = 1 .. 2^bits − 1` and every `bits`-bit
/// window `j` of a 384-bit scalar, for one point `P`, in affine coordinates.
struct Table {
    bits: usize,
    entries: Vec<Affine>,
}

impl Table {
    /// The multiples of `p` for windows of `bits` (4 or 8) bits, made affine with one inversion for all of
    /// them (Montgomery's trick).
    fn new(p: &Affine, bits: usize) -> Table {
        debug_assert!(bits == 4 || bits == 8);
        let per_row = (1 << bits) - 1;
        let windows = 384 / bits;
        let mut projective = Vec::with_capacity(windows * per_row);
        let mut base = Point::from_affine(p);
        for _ in 0..windows {
            let mut multiple = base;
            for _ in 0..per_row {
                projective.push(multiple);
                multiple = multiple.add(&base);
            }
            base = multiple;
        }
        // prefix[i] = z_0 · … · z_i; none is zero: no multiple v · 2^(bits·j) of a point of prime order is the
        // identity.
        let mut prefix = Vec::with_capacity(projective.len());
        let mut running = Fe::ONE;
        for point in &projective {
            running *= point.z;
            prefix.push(running);
        }
        let mut inverse = invert_field_vartime(&running);
        let mut entries = vec![Affine::default(); projective.len()];
        for i in (0..projective.len()).rev() {
            let z_inv = if i == 0 { inverse } else { inverse * prefix[i - 1] };
            inverse *= projective[i].z;
            entries[i] = Affine {
                x: projective[i].x * z_inv,
                y: projective[i].y * z_inv,
            };
        }
        Table { bits, entries }
    }

    /// The rows, one per window from the least significant.
    fn rows(&self) -> std::slice::ChunksExact<'_, Affine> {
        self.entries.chunks_exact((1 << self.bits) - 1)
    }

    /// The `j`th window of a big-endian scalar, from the least significant.
    fn window(&self, repr: &FieldBytes, j: usize) -> u8 {
        let bit = j * self.bits;
        (repr[47 - bit / 8] >> (bit % 8)) & (((1u16 << self.bits) - 1) as u8)
    }

    /// `k · P` without branches or lookups that depend on `k`: every entry of every row is read, and the
    /// addition is made for a zero window too, its result then dropped by a constant-time select.
    fn mul_secret(&self, k: &Scalar) -> Point {
        let repr = k.to_repr();
        let mut acc = Point::IDENTITY;
        for (j, row) in self.rows().enumerate() {
            let window = self.window(&repr, j);
            let mut chosen = row[0];
            for (v, point) in row.iter().enumerate().skip(1) {
                chosen.conditional_assign(point, (v as u8 + 1).ct_eq(&window));
            }
            let sum = acc.add_affine(&chosen);
            acc.conditional_assign(&sum, !window.ct_eq(&0));
        }
        acc
    }

    /// Adds `k · P` to `acc`, for a public `k`.
    fn add_mul_public(&self, acc: &mut Point, k: &Scalar) {
        let repr = k.to_repr();
        for (j, row) in self.rows().enumerate() {
            let window = self.window(&repr, j) as usize;
            if window != 0 {
                *acc = acc.add_affine(&row[window - 1]);
            }
        }
    }
}

/// `a⁻¹ mod m` for an odd `m` < 2³⁸⁴ and `0 < a < m` with gcd 1, by the binary extended Euclidean algorithm:
/// its time depends on `a`, so it is only given public values or values blinded by a random factor.
fn invert_vartime(a: &U384, m: &U384) -> U384 {
    let one = U384::ONE;
    // (x + m) / 2 for an odd x < m: the sum can carry out of 384 bits, shifted back in at the top.
    let halve = |x: &mut U384| {
        if x.as_words()[0] & 1 == 1 {
            let (sum, carry) = x.adc(m, p384::elliptic_curve::bigint::Limb::ZERO);
            let mut halved = sum.shr_vartime(1);
            if carry.0 != 0 {
                halved = halved.wrapping_add(&U384::ONE.shl_vartime(383));
            }
            *x = halved;
        } else {
            *x = x.shr_vartime(1);
        }
    };
    let sub_mod = |x: &U384, y: &U384| -> U384 {
        let (diff, borrow) = x.sbb(y, p384::elliptic_curve::bigint::Limb::ZERO);
        if borrow.0 != 0 {
            diff.wrapping_add(m)
        } else {
            diff
        }
    };
    let (mut u, mut v) = (*a, *m);
    let (mut x1, mut x2) = (one, U384::ZERO);
    while u != one && v != one {
        if u == U384::ZERO {
            // Only when gcd(a, m) ≠ 1: never for a prime m, kept so that no input loops for ever.
            return U384::ZERO;
        }
        while u.as_words()[0] & 1 == 0 {
            u = u.shr_vartime(1);
            halve(&mut x1);
        }
        while v.as_words()[0] & 1 == 0 {
            v = v.shr_vartime(1);
            halve(&mut x2);
        }
        if u >= v {
            u = u.wrapping_sub(&v);
            x1 = sub_mod(&x1, &x2);
        } else {
            v = v.wrapping_sub(&u);
            x2 = sub_mod(&x2, &x1);
        }
    }
    if u == one {
        x1
    } else {
        x2
    }
}

/// `1 / a` for a public, non-zero field element.
fn invert_field_vartime(a: &Fe) -> Fe {
    const P: U384 = U384::from_be_hex(<Fe as PrimeField>::MODULUS);
    Fe::from_uint(invert_vartime(&a.to_canonical(), &P)).expect("an inverse is below p")
}

/// `1 / a` for a public, non-zero scalar.
fn invert_scalar_vartime(a: &Scalar) -> Scalar {
    Scalar::from_uint(invert_vartime(&a.to_canonical(), &NistP384::ORDER)).expect("an inverse is below n")
}

/// A random non-zero field element or scalar, to blind a secret before a variable-time inversion.
fn random_nonzero<T: PrimeField<Repr = FieldBytes>>() -> Option<T> {
    for _ in 0..8 {
        let mut bytes = FieldBytes::default();
        getrandom::getrandom(&mut bytes).ok()?;
        if let Some(value) = Option::<T>::from(T::from_repr(bytes)) {
            if !bool::from(value.is_zero()) {
                return Some(value);
            }
        }
    }
    None
}

/// The generator's table for signing: 4-bit windows, whose 15 entries a constant-time lookup reads in full.
fn generator() -> &'static Table {
    static G: OnceLock<Table> = OnceLock::new();
    G.get_or_init(|| Table::new(&generator_affine(), 4))
}

/// The generator's table for verifying: 8-bit windows (48 additions instead of 96; 1.2 MB, built once in
/// ~20 ms), for public scalars only (a constant-time lookup would read 255 entries per window).
fn generator_wide() -> &'static Table {
    static G: OnceLock<Table> = OnceLock::new();
    G.get_or_init(|| Table::new(&generator_affine(), 8))
}

fn generator_affine() -> Affine {
    affine_of(&p384::AffinePoint::GENERATOR).expect("the generator is not the identity")
}

/// Our affine form of a `p384` point, `None` for the identity.
fn affine_of(point: &p384::AffinePoint) -> Option<Affine> {
    let encoded = point.to_encoded_point(false);
    match encoded.coordinates() {
        Coordinates::Uncompressed { x, y } => Some(Affine {
            x: Option::from(Fe::from_bytes(x))?,
            y: Option::from(Fe::from_bytes(y))?,
        }),
        _ => None,
    }
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
/// `p384::ecdsa::SigningKey::sign_prehash` makes. The two inversions of values derived from the nonce (`k` and
/// the `Z` of `k·G`) are made in variable time on the value times a fresh random factor, then multiplied by
/// that factor: the time they take says nothing about the nonce.
pub fn sign_prehash(d: &p384::NonZeroScalar, prehash: &[u8]) -> Option<p384::ecdsa::Signature> {
    let z = bits2field(prehash)?;
    let order = NistP384::ORDER.encode_field_bytes();
    let k_repr = rfc6979::generate_k::<sha2::Sha384, _>(&d.to_repr(), &order, &z, &[]);
    let k = Option::<Scalar>::from(Scalar::from_repr(k_repr))?;
    if bool::from(k.is_zero()) {
        return None;
    }
    let blind: Scalar = random_nonzero()?;
    let k_inv = invert_scalar_vartime(&(k * blind)) * blind;
    let big_r = generator().mul_secret(&k);
    let z_blind: Fe = random_nonzero()?;
    let z_inv = invert_field_vartime(&(big_r.z * z_blind)) * z_blind;
    let x = (big_r.x * z_inv).to_bytes();
    let r = <Scalar as Reduce<U384>>::reduce_bytes(&x);
    let z = <Scalar as Reduce<U384>>::reduce_bytes(&z);
    let s = k_inv * (z + r * d.as_ref());
    p384::ecdsa::Signature::from_scalars(r, s).ok()
}
/// Tables of the public keys seen more than once, most recently used last; a key seen once is verified without
/// one (building a table costs about two verifications), so a caller presenting a new key each time costs no
/// more than before, and the cache stays within `KEY_TABLES_MAX` tables and `SEEN_MAX` keys. A key verified
/// `WIDE_AFTER` times with its table (a primary's node and service keys, at every signature a backup checks) gets
/// 8-bit windows, as the generator has: a verification then costs 96 additions instead of 144, for 1.2 MB and
/// one build of ~20 ms per such key (on a thread of its own), at most `WIDE_TABLES_MAX` of them.
struct KeyTables {
    seen: Vec<Vec<u8>>,
    tables: Vec<KeyTable>,
}

struct KeyTable {
    key: Vec<u8>,
    table: Arc<Table>,
    uses: u32,
    /// Its 8-bit table is built or being built.
    wide: bool,
}

const KEY_TABLES_MAX: usize = 8;
const SEEN_MAX: usize = 32;
const WIDE_AFTER: u32 = 256;
const WIDE_TABLES_MAX: usize = 2;

/// The process's tables (tests use caches of their own: the limits are per cache).
static KEY_TABLES: Mutex<KeyTables> = Mutex::new(KeyTables::new());

impl KeyTables {
    const fn new() -> KeyTables {
        KeyTables {
            seen: Vec::new(),
            tables: Vec::new(),
        }
    }
}

fn lock(cache: &Mutex<KeyTables>) -> std::sync::MutexGuard<'_, KeyTables> {
    cache.lock().unwrap_or_else(|p| p.into_inner())
}

fn key_table(key: &p384::ecdsa::VerifyingKey) -> Option<Arc<Table>> {
    key_table_in(&KEY_TABLES, key)
}

fn key_table_in(tables: &'static Mutex<KeyTables>, key: &p384::ecdsa::VerifyingKey) -> Option<Arc<Table>> {
    let encoded = key.to_encoded_point(true).as_bytes().to_vec();
    {
        let mut cache = lock(tables);
        if let Some(i) = cache.tables.iter().position(|t| t.key == encoded) {
            let mut entry = cache.tables.remove(i);
            entry.uses = entry.uses.saturating_add(1);
            let widen = entry.uses == WIDE_AFTER
                && !entry.wide
                && cache.tables.iter().filter(|t| t.wide).count() < WIDE_TABLES_MAX;
            entry.wide |= widen;
            let table = entry.table.clone();
            cache.tables.push(entry);
            if widen {
                widen_in_background(tables, key, encoded);
            }
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
    let table = Arc::new(Table::new(&affine_of(key.as_affine())?, 4));
    let mut cache = lock(tables);
    if let Some(entry) = cache.tables.iter().find(|t| t.key == encoded) {
        return Some(entry.table.clone());
    }
    cache.tables.push(KeyTable {
        key: encoded,
        table: table.clone(),
        uses: 0,
        wide: false,
    });
    if cache.tables.len() > KEY_TABLES_MAX {
        cache.tables.remove(0);
    }
    Some(table)
}

/// Builds `key`'s (`encoded`, as the cache knows it) 8-bit table on a thread of its own (~20 ms: on the caller's,
/// a backup's Raft thread, it held up a commit) and swaps it in if the key is still tabled; until then
/// verifications use the 4-bit one. Each key widens once at most: its use count passes `WIDE_AFTER` once.
fn widen_in_background(tables: &'static Mutex<KeyTables>, key: &p384::ecdsa::VerifyingKey, encoded: Vec<u8>) {
    let Some(point) = affine_of(key.as_affine()) else {
        return;
    };
    // No thread (the process is out of them): the key keeps its 4-bit table.
    let _ = std::thread::Builder::new()
        .name("p384-table".into())
        .spawn(move || {
            let table = Arc::new(Table::new(&point, 8));
            if let Some(entry) = lock(tables).tables.iter_mut().find(|t| t.key == encoded) {
                entry.table = table;
            }
        });
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
    let s_inv = invert_scalar_vartime(s.as_ref());
    let mut point = Point::IDENTITY;
    generator_wide().add_mul_public(&mut point, &(z * s_inv));
    table.add_mul_public(&mut point, &(*r.as_ref() * s_inv));
    x_matches(&point, r.as_ref())
}

/// Whether the affine x of `point` (not the identity), reduced mod n, is `r`: without inverting `Z`, whether
/// `X = r·Z` or, when `r + n` is still below p, `X = (r + n)·Z`.
fn x_matches(point: &Point, r: &Scalar) -> bool {
    if bool::from(point.z.is_zero()) {
        return false;
    }
    let r = r.to_canonical();
    let candidate = Fe::from_uint(r).expect("n is below p");
    if bool::from((candidate * point.z).ct_eq(&point.x)) {
        return true;
    }
    let (r_plus_n, carry) = r.adc(&NistP384::ORDER, p384::elliptic_curve::bigint::Limb::ZERO);
    if carry.0 != 0 {
        return false;
    }
    match Option::<Fe>::from(Fe::from_uint(r_plus_n)) {
        Some(candidate) => bool::from((candidate * point.z).ct_eq(&point.x)),
        None => false,
    }
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

    /// `p`, as the `p384` crate's point.
    fn theirs(p: &Point) -> p384::ProjectivePoint {
        use p384::elliptic_curve::sec1::FromEncodedPoint as _;
        if bool::from(p.z.is_zero()) {
            return p384::ProjectivePoint::IDENTITY;
        }
        let z_inv = p.z.invert().expect("z is not zero");
        let encoded = p384::EncodedPoint::from_affine_coordinates(
            &(p.x * z_inv).to_bytes(),
            &(p.y * z_inv).to_bytes(),
            false,
        );
        Option::<p384::AffinePoint>::from(p384::AffinePoint::from_encoded_point(&encoded))
            .expect("on the curve")
            .into()
    }

    fn mul_public(table: &Table, k: &Scalar) -> p384::ProjectivePoint {
        let mut acc = Point::IDENTITY;
        table.add_mul_public(&mut acc, k);
        theirs(&acc)
    }

    #[test]
    fn a_key_verified_often_gets_a_wide_table() {
        // A cache of its own: other tests verifying many signatures with one key would take the wide tables of
        // the process's cache (their number is bounded) in whatever order the tests run.
        let cache: &'static Mutex<KeyTables> = Box::leak(Box::new(Mutex::new(KeyTables::new())));
        let bits = |seed: u8| key_table_in(cache, signing_key(seed).verifying_key()).map(|t| t.bits);
        for seed in [77, 78, 79] {
            assert_eq!(bits(seed), None, "seen once: no table");
            assert_eq!(bits(seed), Some(4), "seen twice");
            for _ in 0..WIDE_AFTER {
                assert_eq!(
                    bits(seed),
                    Some(4),
                    "widened in the background, never by the caller"
                );
            }
        }
        // The wide tables are swapped in once built (a bounded wait: 6,000 × 10 ms), for the first two keys only.
        for _ in 0..6000 {
            if bits(77) == Some(8) && bits(78) == Some(8) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!((bits(77), bits(78), bits(79)), (Some(8), Some(8), Some(4)));
        assert_eq!(
            lock(cache).tables.iter().filter(|t| t.wide).count(),
            WIDE_TABLES_MAX
        );
    }

    #[test]
    fn tables_multiply_as_the_curve_does() {
        let g = p384::ProjectivePoint::GENERATOR;
        for k in [1u64, 2, 15, 16, 17, 255, 1 << 40, u64::MAX] {
            let k = Scalar::from(k);
            assert_eq!(theirs(&generator().mul_secret(&k)), g * k);
            assert_eq!(mul_public(generator(), &k), g * k);
            assert_eq!(mul_public(generator_wide(), &k), g * k);
        }
        let minus_one = -Scalar::ONE;
        assert_eq!(theirs(&generator().mul_secret(&minus_one)), -g);
        assert_eq!(
            theirs(&generator().mul_secret(&Scalar::ZERO)),
            p384::ProjectivePoint::IDENTITY
        );
        assert_eq!(
            mul_public(generator(), &Scalar::ZERO),
            p384::ProjectivePoint::IDENTITY
        );
        assert_eq!(mul_public(generator_wide(), &minus_one), -g);
        let p = g * Scalar::from(12345u64);
        let table = Table::new(&affine_of(&p.to_affine()).expect("not the identity"), 4);
        assert_eq!(mul_public(&table, &minus_one), -p);
        let wide = Table::new(&affine_of(&p.to_affine()).expect("not the identity"), 8);
        for k in [
            Scalar::from(255u64),
            minus_one,
            Scalar::from(u64::MAX) * Scalar::from(977u64),
        ] {
            assert_eq!(mul_public(&wide, &k), p * k);
        }
        assert_eq!(
            theirs(&table.mul_secret(&Scalar::from(977u64))),
            p * Scalar::from(977u64)
        );
        // Both tables into one sum, as a verification adds them.
        let (u1, u2) = (Scalar::from(31337u64), -Scalar::from(99u64));
        let mut acc = Point::IDENTITY;
        generator_wide().add_mul_public(&mut acc, &u1);
        table.add_mul_public(&mut acc, &u2);
        assert_eq!(theirs(&acc), g * u1 + p * u2);
        // The complete formulas: P + P, P + (−P), identity + P.
        let a = affine_of(&p.to_affine()).expect("not the identity");
        let pp = Point::from_affine(&a);
        assert_eq!(theirs(&pp.add(&pp)), p + p);
        assert_eq!(theirs(&pp.add_affine(&a)), p + p);
        let neg = affine_of(&(-p).to_affine()).expect("not the identity");
        assert_eq!(theirs(&pp.add_affine(&neg)), p384::ProjectivePoint::IDENTITY);
        assert_eq!(theirs(&Point::IDENTITY.add_affine(&a)), p);
    }

    #[test]
    fn variable_time_inversions_agree_with_the_constant_time_ones() {
        let mut values: Vec<[u8; 48]> = vec![[0; 48], [0xff; 48]];
        values[0][47] = 1;
        values.extend((0..200u32).map(|i| {
            let mut bytes = [0u8; 48];
            for (j, b) in bytes.iter_mut().enumerate() {
                *b = (i.wrapping_mul(2_654_435_761).rotate_left(j as u32) >> 3) as u8
                    ^ (j as u8).wrapping_mul(37);
            }
            bytes
        }));
        for bytes in &values {
            let fe = Option::<Fe>::from(Fe::from_bytes(&FieldBytes::from(*bytes)));
            if let Some(fe) = fe.filter(|fe| !bool::from(fe.is_zero())) {
                assert_eq!(invert_field_vartime(&fe), fe.invert().expect("non-zero"));
            }
            let s = <Scalar as Reduce<U384>>::reduce_bytes(&FieldBytes::from(*bytes));
            if !bool::from(s.is_zero()) {
                assert_eq!(invert_scalar_vartime(&s), s.invert().expect("non-zero"));
            }
        }
        assert_eq!(invert_field_vartime(&-Fe::ONE), -Fe::ONE);
        assert_eq!(invert_scalar_vartime(&-Scalar::ONE), -Scalar::ONE);
    }

    #[test]
    fn the_x_check_takes_r_plus_n_when_it_is_below_p() {
        // A point whose affine x is n + 1: r = 1 must match it (x mod n = 1), r = 2 must not.
        let x_big = Fe::from_uint(NistP384::ORDER.wrapping_add(&U384::ONE)).expect("n + 1 < p");
        let z = Fe::from_u64(7);
        let point = Point {
            x: x_big * z,
            y: Fe::ONE,
            z,
        };
        assert!(x_matches(&point, &Scalar::ONE));
        assert!(!x_matches(&point, &Scalar::from(2u64)));
        let small = Point {
            x: Fe::from_u64(5) * z,
            y: Fe::ONE,
            z,
        };
        assert!(x_matches(&small, &Scalar::from(5u64)));
        assert!(!x_matches(&Point::IDENTITY, &Scalar::ZERO));
    }
}
