//! Deterministic test data: client ids, Portal-shaped custodian shares and client cipherTexts.
//!
//! Every value is a pure function of the client index, method and curve, so a reader can
//! check an answer without any shared state.

use base64::Engine;

/// Portal's backup methods.
pub const METHODS: [&str; 4] = ["GDRIVE", "ICLOUD", "PASSWORD", "PASSKEY"];
/// The curves of a Portal wallet; each method holds one custodian share per curve.
pub const CURVES: [&str; 2] = ["SECP256K1", "ED25519"];
/// Custodian shares per client.
pub const SHARES_PER_CLIENT: usize = METHODS.len() * CURVES.len();
/// Raw bytes behind a client cipherText (its base64 form is about 1.4 KB).
const CIPHER_BYTES: usize = 1050;

/// A small xorshift64* generator: fast, seedable, and good enough to pick keys.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // Spread small seeds and keep the state non-zero.
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }

    fn hex(&mut self, chars: usize) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = Vec::with_capacity(chars + 16);
        while text.len() < chars {
            let x = self.next_u64();
            text.extend((0..16).map(|i| DIGITS[((x >> (4 * i)) & 15) as usize]));
        }
        text.truncate(chars);
        String::from_utf8(text).unwrap_or_default()
    }
}

pub fn client_id(client: u32) -> String {
    format!("bench-client-{client:07}")
}

/// The webhook's `METHOD-CURVE`.
pub fn custodian_method(method: usize, curve: usize) -> String {
    format!("{}-{}", METHODS[method], CURVES[curve])
}

pub fn pair_id(client: u32, method: usize, curve: usize) -> String {
    format!("bsp-{client:07}-{}-{}", method, curve)
}

/// A custodian share of `bytes` bytes (at least a few hundred), shaped like Portal's JSON.
pub fn share(client: u32, method: usize, curve: usize, bytes: usize) -> String {
    let mut rng = Rng::new((u64::from(client) << 8) | ((method as u64) << 4) | curve as u64);
    let mut hex64 = || rng.hex(64);
    let (ssid, chain_code, px, py, cx, cy) = (hex64(), hex64(), hex64(), hex64(), hex64(), hex64());
    let head = format!(
        r#"{{"backupSharePairId":"{pair}","clientId":"{client}","curve":"{curve}","ssid":"{ssid}","bip32ChainCode":"{chain_code}","pubkey":{{"X":"{px}","Y":"{py}"}},"partialPubkey":{{"X":"{cx}","Y":"{cy}"}},"share":""#,
        pair = pair_id(client, method, curve),
        client = client_id(client),
        curve = CURVES[curve],
    );
    let tail = r#""}"#;
    let filler = bytes.saturating_sub(head.len() + tail.len()).max(64);
    let mut share = head;
    share.push_str(&rng.hex(filler));
    share.push_str(tail);
    share
}

/// The client cipherText for a method: base64 of deterministic bytes.
pub fn cipher_text(client: u32, method: usize) -> String {
    let mut rng = Rng::new((u64::from(client) << 8) | 0x80 | method as u64);
    base64::engine::general_purpose::STANDARD.encode(rng.bytes(CIPHER_BYTES))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_deterministic_distinct_and_sized() {
        let a = share(7, 1, 0, 2048);
        assert_eq!(a, share(7, 1, 0, 2048));
        assert_eq!(a.len(), 2048);
        assert_ne!(a, share(7, 1, 1, 2048));
        assert_ne!(a, share(8, 1, 0, 2048));
        let json: serde_json::Value = serde_json::from_str(&a).unwrap_or_default();
        assert_eq!(json["backupSharePairId"], pair_id(7, 1, 0).as_str());
        let c = cipher_text(7, 2);
        assert_eq!(c, cipher_text(7, 2));
        assert_ne!(c, cipher_text(7, 3));
        assert_eq!(c.len(), 1400);
    }
}
