//! Kubernetes resource quantities (`500m`, `1.5Gi`, `2e3`) parsed the way
//! `k8s.io/apimachinery/pkg/api/resource` reads them.
//!
//! A quantity is held as nano-units in an `i128`: that is the finest precision Kubernetes
//! keeps (anything finer is rounded up on parse), so sums of container requests come out
//! exactly as the Go code computes them before `MilliValue()` / `Value()` round up.

/// Nano-units in one unit.
const NANOS_PER_UNIT: i128 = 1_000_000_000;
/// Nano-units in one milli-unit.
const NANOS_PER_MILLI: i128 = 1_000_000;
/// Values are capped here so that any conversion to milli-units saturates at `i64::MAX`
/// instead of wrapping; Kubernetes caps absurd quantities the same way.
const MAX_NANOS: i128 = i64::MAX as i128 * NANOS_PER_UNIT;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(
        "quantity {0:?} is not a number with an optional suffix (n, u, m, k, M, G, T, P, E, Ki..Ei or an exponent)"
    )]
    Format(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Parses a quantity into nano-units, rounding anything finer than a nano-unit up.
pub fn parse_nanos(s: &str) -> Result<i128> {
    let bad = || Error::Format(s.to_owned());
    let bytes = s.as_bytes();
    let mut i = 0;
    let negative = match bytes.first() {
        Some(b'-') => {
            i = 1;
            true
        }
        Some(b'+') => {
            i = 1;
            false
        }
        _ => false,
    };
    let int_start = i;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        i += 1;
    }
    let int_digits = &s[int_start..i];
    let mut frac_digits = "";
    if i < bytes.len() && bytes[i] == b'.' {
        i += 1;
        let frac_start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        frac_digits = &s[frac_start..i];
    }
    if int_digits.is_empty() && frac_digits.is_empty() {
        return Err(bad());
    }
    let (exp10, exp2) = suffix(&s[i..]).ok_or_else(bad)?;

    // value = digits * 10^(exp10 - frac_len) * 2^exp2, in units; in nanos add 9 to exp10.
    let mut digits: Vec<u8> = int_digits.bytes().chain(frac_digits.bytes()).map(|b| b - b'0').collect();
    let leading_zeros = digits.iter().take_while(|&&d| d == 0).count();
    digits.drain(..leading_zeros);
    if digits.is_empty() {
        return Ok(0);
    }
    let exp = exp10 + 9 - frac_digits.len() as i64;
    let magnitude = scale(&digits, exp, exp2);
    Ok(if negative { -magnitude } else { magnitude })
}

/// Parses a quantity into milli-units, rounding up (Go's `MilliValue()`): used for cpu.
pub fn parse_milli(s: &str) -> Result<i64> {
    parse_nanos(s).map(to_milli)
}

/// Parses a quantity into whole units, rounding up (Go's `Value()`): bytes, counts.
pub fn parse_units(s: &str) -> Result<i64> {
    parse_nanos(s).map(to_units)
}

/// Nano-units to milli-units, rounding up.
pub fn to_milli(nanos: i128) -> i64 {
    saturate(ceil_div(nanos, NANOS_PER_MILLI))
}

/// Nano-units to whole units, rounding up.
pub fn to_units(nanos: i128) -> i64 {
    saturate(ceil_div(nanos, NANOS_PER_UNIT))
}

/// Whole units to nano-units (for built-in defaults such as the 200Mi scoring request).
pub(crate) fn from_units(units: i64) -> i128 {
    i128::from(units) * NANOS_PER_UNIT
}

/// Milli-units to nano-units.
pub(crate) fn from_milli(milli: i64) -> i128 {
    i128::from(milli) * NANOS_PER_MILLI
}

/// Adds two nano quantities, capping instead of overflowing.
pub(crate) fn add(a: i128, b: i128) -> i128 {
    a.saturating_add(b).clamp(-MAX_NANOS, MAX_NANOS)
}

fn ceil_div(n: i128, d: i128) -> i128 {
    -((-n).div_euclid(d))
}

fn saturate(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

/// The suffix as (decimal exponent, binary exponent); `None` if it is not one Kubernetes knows.
fn suffix(s: &str) -> Option<(i64, u32)> {
    Some(match s {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        _ => {
            // "E" alone is exa; "e"/"E" followed by an integer is an exponent (`1e3`, `5E-1`).
            let rest = s.strip_prefix(['e', 'E'])?;
            let digits = rest.strip_prefix(['+', '-']).unwrap_or(rest);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            // Exponents beyond this range only saturate or round to one nano-unit anyway.
            let exp: i64 = rest.parse().unwrap_or(if rest.starts_with('-') { -1000 } else { 1000 });
            (exp.clamp(-1000, 1000), 0)
        }
    })
}

/// `digits * 10^exp * 2^exp2` rounded up to an integer and capped at `MAX_NANOS`; `digits`
/// has no leading zeros and is not empty.
fn scale(digits: &[u8], exp: i64, exp2: u32) -> i128 {
    let pow2 = 1u128 << exp2;
    if exp >= 0 {
        let Some(mantissa) = to_u128(digits) else { return MAX_NANOS };
        let value = u32::try_from(exp)
            .ok()
            .and_then(|e| 10u128.checked_pow(e))
            .and_then(|p| mantissa.checked_mul(p))
            .and_then(|v| v.checked_mul(pow2));
        return value.map_or(MAX_NANOS, |v| i128::try_from(v).unwrap_or(MAX_NANOS).min(MAX_NANOS));
    }
    // Negative exponent: split digits into the integer part and the dropped fraction.
    let dropped = usize::try_from(-exp).unwrap_or(usize::MAX);
    let keep = digits.len().saturating_sub(dropped);
    let (head, tail) = digits.split_at(keep);
    let Some(whole) = to_u128(head) else { return MAX_NANOS };
    let Some(whole) = whole.checked_mul(pow2) else { return MAX_NANOS };
    let fraction_up = if tail.iter().all(|&d| d == 0) {
        0
    } else if exp2 == 0 {
        1
    } else {
        // ceil(fraction * 2^exp2) where fraction = tail / 10^dropped (tail may be shorter
        // than `dropped` when the number is below one). Beyond 19 digits the fraction is
        // truncated and nudged up, which can only round a sub-nano remainder up.
        let tail_len = dropped.min(19);
        let leading_zeros = dropped - tail.len();
        let mut num: u128 = 0;
        let mut sticky = false;
        for pos in 0..dropped {
            let d = if pos < leading_zeros { 0 } else { tail[pos - leading_zeros] };
            if pos < tail_len {
                num = num * 10 + u128::from(d);
            } else if d != 0 {
                sticky = true;
            }
        }
        if sticky {
            num += 1;
        }
        let den = 10u128.pow(tail_len as u32);
        (num * pow2).div_ceil(den)
    };
    i128::try_from(whole.saturating_add(fraction_up)).unwrap_or(MAX_NANOS).min(MAX_NANOS)
}

fn to_u128(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |acc, &d| acc.checked_mul(10)?.checked_add(u128::from(d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_apimachinery() {
        // (input, milli-units, units)
        let table: &[(&str, i64, i64)] = &[
            ("0", 0, 0),
            ("1", 1000, 1),
            ("100m", 100, 1),
            ("1500m", 1500, 2),
            ("0.5", 500, 1),
            (".5", 500, 1),
            ("5.", 5000, 5),
            ("+2", 2000, 2),
            ("-2", -2000, -2),
            ("0.1m", 1, 1),
            ("1n", 1, 1),
            ("1u", 1, 1),
            ("1000u", 1, 1),
            ("1001u", 2, 1),
            ("2k", 2_000_000, 2000),
            ("1M", 1_000_000_000, 1_000_000),
            ("1G", 1_000_000_000_000, 1_000_000_000),
            ("1T", 1_000_000_000_000_000, 1_000_000_000_000),
            ("1P", 1_000_000_000_000_000_000, 1_000_000_000_000_000),
            ("1E", i64::MAX, 1_000_000_000_000_000_000),
            ("1Ki", 1_024_000, 1024),
            ("1Mi", 1_048_576_000, 1_048_576),
            ("1.5Gi", 1_610_612_736_000, 1_610_612_736),
            ("200Mi", 209_715_200_000, 209_715_200),
            ("1Ti", 1_099_511_627_776_000, 1_099_511_627_776),
            ("1Pi", 1_125_899_906_842_624_000, 1_125_899_906_842_624),
            ("1Ei", i64::MAX, 1_152_921_504_606_846_976),
            ("1e3", 1_000_000, 1000),
            ("1E3", 1_000_000, 1000),
            ("1e+3", 1_000_000, 1000),
            ("5e-1", 500, 1),
            ("1e-3", 1, 1),
            ("1e-12", 1, 1),
            ("12e-1", 1200, 2),
            ("0.000000000001", 1, 1),
            ("0.5Ki", 512_000, 512),
            ("0.0001Ki", 103, 1),
            ("1e100", i64::MAX, i64::MAX),
            ("99999999999999999999999999999999999999999", i64::MAX, i64::MAX),
            ("000123", 123_000, 123),
        ];
        for &(input, milli, units) in table {
            assert_eq!(parse_milli(input), Ok(milli), "milli of {input}");
            assert_eq!(parse_units(input), Ok(units), "units of {input}");
        }
    }

    #[test]
    fn nanos_are_exact() {
        assert_eq!(parse_nanos("1n"), Ok(1));
        assert_eq!(parse_nanos("0.1n"), Ok(1));
        assert_eq!(parse_nanos("1.5"), Ok(1_500_000_000));
        assert_eq!(parse_nanos("250m"), Ok(250_000_000));
        assert_eq!(parse_nanos("0.0001Ki"), Ok(102_400_000));
    }

    #[test]
    fn rejects_malformed() {
        for input in
            ["", "m", ".", "-", "1.2.3", "1K", "1mi", "1 Gi", " 1", "1e", "1e3.5", "1ki", "Gi", "1i", "0x10", "1e+"]
        {
            assert_eq!(parse_nanos(input), Err(Error::Format(input.to_owned())), "{input:?}");
        }
    }
}
