//! Kubernetes-style resource quantities: memory in bytes, CPU in milli-cores.
//!
//! The grammar follows Kubernetes' `resource.Quantity`: a non-negative decimal
//! number (`64`, `1.5`, `.5`) followed by at most one of
//!
//! * a binary suffix `Ki Mi Gi Ti Pi Ei` (powers of 1024),
//! * a decimal suffix `k M G T P E` (powers of 1000),
//! * a decimal exponent `e6` / `E-3`,
//! * (CPU only) `m`, milli-cores.
//!
//! Arithmetic is exact (no floating point): `1.5Gi` is exactly 1610612736
//! bytes, and a memory amount that is not a whole number of bytes is rounded
//! up. CPU amounts must be whole milli-cores.

const MEMORY_HINT: &str = "expected e.g. 64Mi, 1Gi, 500M";
const CPU_HINT: &str = "expected e.g. 500m, 1, 0.5";

/// Binary units used by [`format_bytes`], largest first.
const BINARY_UNITS: [(&str, u32); 6] = [("Ei", 60), ("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)];

/// Longest mantissa accepted (in significant digits); 10^38 < u128::MAX.
const MAX_DIGITS: usize = 38;

/// An exact decimal: `mantissa * 10^exp10`.
#[derive(Debug, Clone, Copy)]
struct Decimal {
    mantissa: u128,
    exp10: i64,
}

/// Why the leading number of a quantity could not be read.
enum NumberError {
    /// Not a number at all.
    Syntax,
    /// A leading `-`.
    Negative,
    /// More significant digits than we can represent exactly.
    TooLong,
}

/// Splits `s` into a decimal number and the (unparsed) suffix after it.
fn split_number(s: &str) -> Result<(Decimal, &str), NumberError> {
    let body = match s.as_bytes().first() {
        Some(b'+') => &s[1..],
        Some(b'-') => return Err(NumberError::Negative),
        _ => s,
    };
    let int_len = body.bytes().take_while(u8::is_ascii_digit).count();
    let int_digits = &body[..int_len];
    let mut rest = &body[int_len..];
    let mut frac_digits = "";
    if let Some(after_dot) = rest.strip_prefix('.') {
        let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
        frac_digits = &after_dot[..frac_len];
        rest = &after_dot[frac_len..];
    }
    if int_digits.is_empty() && frac_digits.is_empty() {
        return Err(NumberError::Syntax);
    }
    let frac_digits = frac_digits.trim_end_matches('0');
    let digits = format!("{int_digits}{frac_digits}");
    let significant = digits.trim_start_matches('0');
    if significant.len() > MAX_DIGITS {
        return Err(NumberError::TooLong);
    }
    let mantissa =
        if significant.is_empty() { 0 } else { significant.parse::<u128>().map_err(|_| NumberError::TooLong)? };
    let exp10 = -i64::try_from(frac_digits.len()).map_err(|_| NumberError::TooLong)?;
    Ok((Decimal { mantissa, exp10 }, rest))
}

/// Parses a decimal exponent suffix such as `e6`, `E+3` or `e-2`.
fn parse_exponent(suffix: &str) -> Option<i64> {
    let digits = suffix.strip_prefix(['e', 'E'])?;
    let (negative, digits) = match digits.as_bytes().first() {
        Some(b'-') => (true, &digits[1..]),
        Some(b'+') => (false, &digits[1..]),
        _ => (false, digits),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Absurd exponents saturate; added to the fraction's own exponent they
    // still give the exact scale for any input that fits in memory.
    let value = digits.parse::<i64>().unwrap_or(i64::MAX);
    Some(if negative { -value } else { value })
}

/// `10^n`, or `None` when it does not fit in a u128.
fn pow10(n: u64) -> Option<u128> {
    10u128.checked_pow(u32::try_from(n).ok()?)
}

/// `ceil(num * 10^exp10)`, or `None` on overflow.
fn scale_ceil(num: u128, exp10: i64) -> Option<u128> {
    if num == 0 {
        return Some(0);
    }
    if exp10 >= 0 {
        return num.checked_mul(pow10(exp10.unsigned_abs())?);
    }
    match pow10(exp10.unsigned_abs()) {
        Some(divisor) => Some(num.div_ceil(divisor)),
        // 10^39 > u128::MAX >= num, so the quotient is in (0, 1).
        None => Some(1),
    }
}

/// `ceil(num * 2^shift * 10^exp10)` exactly, or `None` on overflow, for
/// `shift` up to 64: the product `num * 2^shift` may not fit in a u128, so a
/// fraction is divided out bit by bit first.
fn scale_binary_ceil(num: u128, shift: u32, exp10: i64) -> Option<u128> {
    if exp10 >= 0 || num == 0 {
        return scale_ceil(num.checked_mul(1u128 << shift)?, exp10);
    }
    let k = exp10.unsigned_abs();
    let first = k.min(38);
    let d = pow10(first).expect("10^38 fits in a u128");
    let (q, r) = (num / d, num % d);
    // ceil(r * 2^shift / d) by long division: the running remainder stays
    // below d <= 10^38, so doubling it never overflows.
    let (mut quotient, mut rem) = (0u128, r);
    for _ in 0..shift {
        rem *= 2;
        quotient = quotient.checked_mul(2)?;
        if rem >= d {
            rem -= d;
            quotient += 1;
        }
    }
    let low = quotient + u128::from(rem > 0);
    let scaled = q.checked_mul(1u128 << shift)?.checked_add(low)?;
    // The rest of the division, if any: ceil(ceil(x / a) / b) = ceil(x / ab).
    scale_ceil(scaled, -i64::try_from(k - first).ok()?)
}

/// Parses a Kubernetes memory quantity into bytes.
///
/// Accepts plain integers (`67108864`), binary suffixes (`64Mi`, `1Gi`),
/// decimal suffixes (`128M`, `1G`), decimal exponents (`1e6`) and fractions
/// (`1.5Gi`, rounded up to whole bytes). The error is a sentence naming the
/// offending text, e.g. `"64Q" is not a quantity (expected e.g. 64Mi, 1Gi, 500M)`.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let not_a_quantity = || format!("{s:?} is not a quantity ({MEMORY_HINT})");
    let (number, suffix) = split_number(s).map_err(|e| match e {
        NumberError::Syntax => not_a_quantity(),
        NumberError::Negative => format!("{s:?} must not be negative"),
        NumberError::TooLong => format!("{s:?} has too many digits"),
    })?;
    let mut exp10 = number.exp10;
    let mut shift: u32 = 0;
    match suffix {
        "" => {}
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => {
            shift = BINARY_UNITS.iter().find(|(unit, _)| *unit == suffix).map_or(0, |(_, shift)| *shift);
        }
        "m" | "u" | "n" => {
            let number_text = &s[..s.len() - 1];
            return Err(format!(
                "{s:?} is not a memory quantity: \"{suffix}\" is a fraction of a byte \
                 (did you mean \"{number_text}Mi\" or \"{number_text}M\"?)"
            ));
        }
        _ => match parse_exponent(suffix) {
            Some(e) => exp10 = exp10.saturating_add(e),
            None => return Err(not_a_quantity()),
        },
    }
    let too_large = || format!("{s:?} is too large");
    let bytes = scale_binary_ceil(number.mantissa, shift, exp10).ok_or_else(too_large)?;
    u64::try_from(bytes).map_err(|_| too_large())
}

/// Parses a Kubernetes CPU quantity into milli-cores.
///
/// Accepts milli-cores (`500m`), whole or decimal cores (`1`, `0.5`, `2`) and
/// decimal exponents (`1e-1`). Amounts that are not a whole number of
/// milli-cores (`0.0001`, `1.0005`) are errors.
pub fn parse_cpu(s: &str) -> Result<u32, String> {
    let not_a_quantity = || format!("{s:?} is not a CPU quantity ({CPU_HINT})");
    let (number, suffix) = split_number(s).map_err(|e| match e {
        NumberError::Syntax => not_a_quantity(),
        NumberError::Negative => format!("{s:?} must not be negative"),
        NumberError::TooLong => format!("{s:?} has too many digits"),
    })?;
    // Work in milli-cores: cores are 10^3 milli-cores.
    let exp10 = match suffix {
        "" => number.exp10 + 3,
        "m" => number.exp10,
        _ => match parse_exponent(suffix) {
            Some(e) => number.exp10.saturating_add(e).saturating_add(3),
            None => return Err(not_a_quantity()),
        },
    };
    let too_large = || format!("{s:?} is too large");
    let millis = if exp10 >= 0 || number.mantissa == 0 {
        scale_ceil(number.mantissa, exp10).ok_or_else(too_large)?
    } else {
        let exact = pow10(exp10.unsigned_abs())
            .filter(|divisor| number.mantissa.is_multiple_of(*divisor))
            .map(|divisor| number.mantissa / divisor);
        match exact {
            Some(millis) => millis,
            None if scale_ceil(number.mantissa, exp10) == Some(1) && number.mantissa > 0 => {
                // ceil == 1 and not exact means the amount is below 1m.
                return Err(format!("{s:?} is less than 1m (the smallest CPU amount is 1m = 0.001 cores)"));
            }
            None => {
                return Err(format!(
                    "{s:?} is not a whole number of milli-cores (the smallest CPU unit is 1m = 0.001 cores)"
                ));
            }
        }
    };
    u32::try_from(millis).map_err(|_| too_large())
}

/// Formats a byte count for messages and tables: the largest binary unit that
/// divides it exactly (`67108864` → `"64Mi"`, `1610612736` → `"1536Mi"`),
/// otherwise the plain number (`1000` → `"1000"`).
pub fn format_bytes(n: u64) -> String {
    BINARY_UNITS
        .iter()
        .find(|(_, shift)| n != 0 && n.is_multiple_of(1u64 << shift))
        .map_or_else(|| n.to_string(), |(unit, shift)| format!("{}{unit}", n >> shift))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KI: u64 = 1024;
    const MI: u64 = 1024 * KI;
    const GI: u64 = 1024 * MI;

    #[test]
    fn memory_table() {
        let cases: &[(&str, u64)] = &[
            ("64Mi", 64 * MI),
            ("1Gi", GI),
            ("128M", 128_000_000),
            ("1e6", 1_000_000),
            ("1E6", 1_000_000),
            ("1.5Gi", 3 * GI / 2),
            ("67108864", 67_108_864),
            ("0", 0),
            ("64Ki", 64 * KI),
            ("1k", 1000),
            ("2G", 2_000_000_000),
            ("1T", 1_000_000_000_000),
            ("1Ti", 1024 * GI),
            ("1Ei", 1 << 60),
            ("1E", 1_000_000_000_000_000_000),
            ("+1Ki", KI),
            (".5Ki", 512),
            ("1.", 1),
            ("0.5", 1),         // rounded up to a whole byte
            ("1.0001Ki", 1025), // 1024.1024 -> 1025
            ("12e-1", 2),
            ("1.50000000000000000000000000000000000000000Gi", 3 * GI / 2),
            ("0001Mi", MI),
        ];
        for (text, want) in cases {
            assert_eq!(parse_memory(text), Ok(*want), "parse_memory({text:?})");
        }
    }

    #[test]
    fn memory_errors() {
        let cases: &[(&str, &str)] = &[
            ("64Q", "\"64Q\" is not a quantity (expected e.g. 64Mi, 1Gi, 500M)"),
            ("", "is not a quantity"),
            ("Mi", "is not a quantity"),
            ("64 Mi", "is not a quantity"),
            ("64mi", "is not a quantity"),
            ("1e", "is not a quantity"),
            ("1e6Mi", "is not a quantity"),
            ("1.2.3", "is not a quantity"),
            ("0x10", "is not a quantity"),
            ("-1Gi", "\"-1Gi\" must not be negative"),
            ("128m", "did you mean \"128Mi\""),
            ("16Ei", "too large"),
            ("1e30", "too large"),
            ("1e999999999999", "too large"),
            ("18446744073709551616", "too large"),
        ];
        for (text, want) in cases {
            let err = parse_memory(text).expect_err(text);
            assert!(err.contains(want), "parse_memory({text:?}) = {err:?}");
        }
        assert_eq!(parse_memory("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(parse_memory("1e-50"), Ok(1));
    }

    #[test]
    fn cpu_table() {
        let cases: &[(&str, u32)] = &[
            ("500m", 500),
            ("0.5", 500),
            ("2", 2000),
            ("1", 1000),
            ("1.5", 1500),
            ("0.001", 1),
            ("1m", 1),
            ("100", 100_000),
            ("1e-1", 100),
            ("0", 0),
            ("0.0000", 0),
            ("+250m", 250),
        ];
        for (text, want) in cases {
            assert_eq!(parse_cpu(text), Ok(*want), "parse_cpu({text:?})");
        }
    }

    #[test]
    fn cpu_errors() {
        let cases: &[(&str, &str)] = &[
            ("0.0001", "\"0.0001\" is less than 1m"),
            ("0.5m", "less than 1m"),
            ("1.0005", "not a whole number of milli-cores"),
            ("1x", "\"1x\" is not a CPU quantity (expected e.g. 500m, 1, 0.5)"),
            ("1Gi", "is not a CPU quantity"),
            ("1e3m", "is not a CPU quantity"),
            ("", "is not a CPU quantity"),
            ("-1", "must not be negative"),
            ("5000000", "too large"),
        ];
        for (text, want) in cases {
            let err = parse_cpu(text).expect_err(text);
            assert!(err.contains(want), "parse_cpu({text:?}) = {err:?}");
        }
    }

    #[test]
    fn formats_bytes() {
        assert_eq!(format_bytes(64 * MI), "64Mi");
        assert_eq!(format_bytes(1000), "1000");
        assert_eq!(format_bytes(0), "0");
        assert_eq!(format_bytes(KI), "1Ki");
        assert_eq!(format_bytes(3 * GI / 2), "1536Mi");
        assert_eq!(format_bytes(4 * GI), "4Gi");
        assert_eq!(format_bytes(1 << 60), "1Ei");
        assert_eq!(format_bytes(1536), "1536");
        assert_eq!(format_bytes(u64::MAX), u64::MAX.to_string());
    }
}
