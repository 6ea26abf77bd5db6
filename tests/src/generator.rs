//! The deterministic weight recipe of the golden fixtures (`shared/golden/README.md` §2).
//!
//! `seed = FNV-1a-64(canonical key) ^ seed_xor`; element `i` is
//! `f32(center + amp * (2u - 1))` with `u` the top 53 bits of `splitmix64(seed + (i+1)·φ)`.

use rlip_model::weights::{RawTensor, StateDict};
use serde_json::Value;

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// FNV-1a 64-bit hash of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// `n` values of the recipe for `key` with `(center, amp)`.
pub fn splitmix_values(key: &str, seed_xor: u64, center: f64, amp: f64, n: usize) -> Vec<f32> {
    let seed = fnv1a64(key.as_bytes()) ^ seed_xor;
    (0..n as u64)
        .map(|i| {
            let mut z = seed.wrapping_add((i + 1).wrapping_mul(GOLDEN_GAMMA));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let u = (z >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
            (center + amp * (2.0 * u - 1.0)) as f32
        })
        .collect()
}

/// Swin's `relative_position_index` for a `w×w` window, as the official code builds it.
pub fn swin_relative_position_index(w: usize) -> Vec<i64> {
    let n = w * w;
    let mut out = Vec::with_capacity(n * n);
    for a in 0..n {
        let (ha, wa) = ((a / w) as i64, (a % w) as i64);
        for b in 0..n {
            let (hb, wb) = ((b / w) as i64, (b % w) as i64);
            let dh = ha - hb + w as i64 - 1;
            let dw = wa - wb + w as i64 - 1;
            out.push(dh * (2 * w as i64 - 1) + dw);
        }
    }
    out
}

fn parse_u64(v: &Value) -> u64 {
    match v {
        Value::String(s) => {
            let s = s.trim_start_matches("0x");
            u64::from_str_radix(s, 16).expect("seed_xor hex")
        }
        Value::Number(n) => n.as_u64().expect("seed_xor"),
        _ => 0,
    }
}

/// Rebuilds the state dict described by a fixture manifest (`weights.entries`), keeping only the
/// keys for which `keep` is true. Keys come out in state-dict order.
pub fn generate(manifest: &Value, keep: impl Fn(&str) -> bool) -> StateDict {
    let w = &manifest["weights"];
    let seed_xor = parse_u64(&w["seed_xor"]);
    let mut sd = StateDict::new();
    for e in w["entries"].as_array().expect("weights.entries") {
        let key = e["key"].as_str().expect("key");
        if !keep(key) {
            continue;
        }
        let shape: Vec<usize> = e["shape"]
            .as_array()
            .expect("shape")
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let n: usize = shape.iter().product();
        if e.get("natural").and_then(Value::as_bool) == Some(true) {
            let vals: Vec<i64> = if key.ends_with("position_ids") {
                (0..n as i64).collect()
            } else if key.ends_with("relative_position_index") {
                let w = (shape[0] as f64).sqrt() as usize;
                swin_relative_position_index(w)
            } else {
                panic!("unknown natural buffer {key}")
            };
            sd.insert(key, RawTensor::from_i64(shape, &vals));
            continue;
        }
        let canon = e.get("alias_of").and_then(Value::as_str).unwrap_or(key);
        let center = e["center"].as_f64().expect("center");
        let amp = e["amp"].as_f64().expect("amp");
        sd.insert(
            key,
            RawTensor::from_f32(shape, &splitmix_values(canon, seed_xor, center, amp, n)),
        );
    }
    sd
}
