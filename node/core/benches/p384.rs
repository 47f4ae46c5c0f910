//! P-384 signing and verification as a signature transaction uses them (`cargo bench -p synod-core --bench p384`):
//! prints the time per operation. A key signs (and is verified) thousands of times, so its tables, built on the
//! first uses, are in place when the timing starts.

use std::time::Instant;

use synod_core::keys::PrivateKey;

fn main() {
    let secret = p384::ecdsa::SigningKey::from_bytes(&[7u8; 48].into()).expect("a valid scalar");
    let key = PrivateKey::P384(secret);
    let public = key.public_key();
    let digests: Vec<[u8; 32]> = (0u8..64).map(|i| [i; 32]).collect();
    let signatures: Vec<Vec<u8>> = digests.iter().map(|d| key.sign_digest(d)).collect();
    // Past the use count that gives a key its 8-bit table, and time for the background build to finish.
    for _ in 0..5 {
        for (d, s) in digests.iter().zip(&signatures) {
            public.verify_digest(d, s).expect("verifies");
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let rounds = 40;
    let start = Instant::now();
    for _ in 0..rounds {
        for d in &digests {
            std::hint::black_box(key.sign_digest(d));
        }
    }
    let sign_us = start.elapsed().as_secs_f64() * 1e6 / (rounds * digests.len()) as f64;
    let start = Instant::now();
    for _ in 0..rounds {
        for (d, s) in digests.iter().zip(&signatures) {
            public.verify_digest(d, s).expect("verifies");
        }
    }
    let verify_us = start.elapsed().as_secs_f64() * 1e6 / (rounds * digests.len()) as f64;
    println!("p384 sign_digest:   {sign_us:8.1} us per signature");
    println!("p384 verify_digest: {verify_us:8.1} us per verification (a key verified often: 8-bit tables)");
}
