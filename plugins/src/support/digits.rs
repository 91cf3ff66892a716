//! A number's decimal digits written on the stack, for header values set per request: with
//! [`RequestCall::copy_text`](ext_plugin_sdk::RequestCall::copy_text) they cost neither an
//! allocation nor the formatting machinery (a few hundred instructions per value).

/// The digits of `n`, as `Display` writes them, in `buf`.
pub fn digits(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[at..]).expect("digits are ASCII")
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
            assert_eq!(digits(n, &mut buf), n.to_string());
        }
        for n in 0..2000 {
            assert_eq!(digits(n, &mut buf), n.to_string());
        }
    }
}
