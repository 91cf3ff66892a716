//! A number's decimal digits written on the stack, for header values set per request: with
//! [`RequestCall::copy_text`](ext_plugin_sdk::RequestCall::copy_text) they cost neither an
//! allocation nor the formatting machinery (a few hundred instructions per value).

/// "00" to "99": two digits per division, as the standard library's `Display` does.
const PAIRS: [u8; 200] = {
    let mut table = [0; 200];
    let mut i = 0;
    while i < 100 {
        table[2 * i] = b'0' + (i / 10) as u8;
        table[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    table
};

/// The digits of `n`, as `Display` writes them, in `buf`; bytes, for a caller that joins
/// several numbers and checks the whole once as UTF-8.
pub fn digit_bytes(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        at -= 2;
        buf[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        at -= 2;
        buf[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        at -= 1;
        buf[at] = b'0' + n as u8;
    }
    &buf[at..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_displays() {
        let mut buf = [0; 20];
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            12_345,
            1 << 53,
            u64::MAX - 1,
            u64::MAX,
        ] {
            assert_eq!(digit_bytes(n, &mut buf), n.to_string().as_bytes());
        }
        for n in 0..2000 {
            assert_eq!(digit_bytes(n, &mut buf), n.to_string().as_bytes());
        }
    }
}
