//! Kubernetes resource quantities ("100m", "1.5Gi", "2e3") with exact arithmetic and upstream's
//! canonical string form, for admission (LimitRange, ResourceQuota) and the quota controller.
//!
//! Values are kept as an integer count of nano-units (10⁻⁹), which holds every quantity up to
//! exa-scale exactly; upstream's `resource.Quantity` rounds to the same precision (`n` is its
//! smallest suffix).

use std::cmp::Ordering;
use std::fmt;

/// How a quantity is printed: upstream keeps the format of the value it was parsed from (a sum
/// keeps the format of its first operand).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    DecimalSi,
    BinarySi,
    DecimalExponent,
}

#[derive(Clone, Copy, Debug)]
pub struct Quantity {
    nanos: i128,
    pub format: Format,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
)]
pub struct ParseError;

const NANO: i128 = 1_000_000_000;

impl Quantity {
    pub fn zero() -> Quantity {
        Quantity {
            nanos: 0,
            format: Format::DecimalSi,
        }
    }

    /// A plain count (`pods: 2`), as upstream's `NewQuantity(n, DecimalSI)`.
    pub fn count(n: i64) -> Quantity {
        Quantity {
            nanos: n as i128 * NANO,
            format: Format::DecimalSi,
        }
    }

    pub fn from_milli(milli: i64, format: Format) -> Quantity {
        Quantity {
            nanos: milli as i128 * 1_000_000,
            format,
        }
    }

    pub fn parse(s: &str) -> Result<Quantity, ParseError> {
        let s = s.trim();
        let (negative, rest) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(number_len);
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(ParseError);
        }
        let mut mantissa: i128 = 0;
        for d in whole.bytes().chain(frac.bytes()) {
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|m| m.checked_add((d - b'0') as i128))
                .ok_or(ParseError)?;
        }
        // value = mantissa × 10^(exp10 - frac digits) × 1024^exp1024
        let (format, exp10, exp1024): (Format, i32, u32) = match suffix {
            "" => (Format::DecimalSi, 0, 0),
            "n" => (Format::DecimalSi, -9, 0),
            "u" => (Format::DecimalSi, -6, 0),
            "m" => (Format::DecimalSi, -3, 0),
            "k" => (Format::DecimalSi, 3, 0),
            "M" => (Format::DecimalSi, 6, 0),
            "G" => (Format::DecimalSi, 9, 0),
            "T" => (Format::DecimalSi, 12, 0),
            "P" => (Format::DecimalSi, 15, 0),
            "E" => (Format::DecimalSi, 18, 0),
            "Ki" => (Format::BinarySi, 0, 1),
            "Mi" => (Format::BinarySi, 0, 2),
            "Gi" => (Format::BinarySi, 0, 3),
            "Ti" => (Format::BinarySi, 0, 4),
            "Pi" => (Format::BinarySi, 0, 5),
            "Ei" => (Format::BinarySi, 0, 6),
            s if s.starts_with(['e', 'E']) => {
                let e: i32 = s[1..].parse().map_err(|_| ParseError)?;
                if !(-30..=30).contains(&e) {
                    return Err(ParseError);
                }
                (Format::DecimalExponent, e, 0)
            }
            _ => return Err(ParseError),
        };
        let mut value = mantissa
            .checked_mul(1024i128.pow(exp1024))
            .ok_or(ParseError)?;
        let scale = exp10 - frac.len() as i32 + 9; // to nano-units
        if scale >= 0 {
            value = value
                .checked_mul(10i128.checked_pow(scale as u32).ok_or(ParseError)?)
                .ok_or(ParseError)?;
        } else {
            // Below a nano-unit: round up, as upstream does.
            let div = 10i128.checked_pow((-scale) as u32).ok_or(ParseError)?;
            value = (value + div - 1) / div;
        }
        Ok(Quantity {
            nanos: if negative { -value } else { value },
            format,
        })
    }

    /// Parses a JSON value (a string, or a bare number some clients send).
    pub fn from_json(v: &serde_json::Value) -> Option<Quantity> {
        match v {
            serde_json::Value::String(s) => Quantity::parse(s).ok(),
            serde_json::Value::Number(n) => Quantity::parse(&n.to_string()).ok(),
            _ => None,
        }
    }

    /// Value in milli-units, rounded up (upstream's `MilliValue`).
    pub fn milli(&self) -> i128 {
        div_ceil(self.nanos, 1_000_000)
    }

    /// Value in units, rounded up (upstream's `Value`).
    pub fn value(&self) -> i128 {
        div_ceil(self.nanos, NANO)
    }

    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    pub fn add(&self, other: &Quantity) -> Quantity {
        Quantity {
            nanos: self.nanos.saturating_add(other.nanos),
            format: self.format,
        }
    }

    pub fn sub(&self, other: &Quantity) -> Quantity {
        Quantity {
            nanos: self.nanos.saturating_sub(other.nanos),
            format: self.format,
        }
    }

    /// Upstream's `Quantity.String()`: the canonical form.
    fn canonical(&self) -> String {
        if self.nanos == 0 {
            return "0".into();
        }
        let whole = self.nanos % NANO == 0;
        if self.format == Format::BinarySi && whole && self.nanos.abs() >= 1024 * NANO {
            let mut v = self.nanos / NANO;
            let mut power = 0;
            while power < 6 && v % 1024 == 0 {
                v /= 1024;
                power += 1;
            }
            let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][power];
            return format!("{v}{suffix}");
        }
        let (mut mantissa, mut exp) = (self.nanos, -9i32);
        while mantissa % 10 == 0 && exp < 18 {
            mantissa /= 10;
            exp += 1;
        }
        while exp.rem_euclid(3) != 0 {
            mantissa *= 10;
            exp -= 1;
        }
        if self.format == Format::DecimalExponent {
            return if exp == 0 {
                mantissa.to_string()
            } else {
                format!("{mantissa}e{exp}")
            };
        }
        let suffix = match exp {
            -9 => "n",
            -6 => "u",
            -3 => "m",
            3 => "k",
            6 => "M",
            9 => "G",
            12 => "T",
            15 => "P",
            18 => "E",
            _ => "",
        };
        format!("{mantissa}{suffix}")
    }
}

fn div_ceil(a: i128, b: i128) -> i128 {
    let q = a / b;
    if a % b > 0 {
        q + 1
    } else {
        q
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical())
    }
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}

impl Eq for Quantity {}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap()
    }

    #[test]
    fn parses_every_suffix() {
        assert_eq!(q("100m").milli(), 100);
        assert_eq!(q("1.5").milli(), 1500);
        assert_eq!(q("128Mi").value(), 128 * 1024 * 1024);
        assert_eq!(q("2G").value(), 2_000_000_000);
        assert_eq!(q("1e3").value(), 1000);
        assert_eq!(q("1E").value(), 1_000_000_000_000_000_000);
        assert_eq!(q("0.5Gi").value(), 512 * 1024 * 1024);
        assert_eq!(q("-1").value(), -1);
        assert_eq!(q("1n").milli(), 1, "rounded up");
        for bad in ["", "abc", "1Q", "1..2", "."] {
            assert!(Quantity::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prints_the_canonical_form_like_upstream() {
        for (input, canonical) in [
            ("1", "1"),
            ("1000", "1k"),
            ("1500", "1500"),
            ("0.5", "500m"),
            ("1.5", "1500m"),
            ("1024Mi", "1Gi"),
            ("1536Mi", "1536Mi"),
            ("1Gi", "1Gi"),
            ("100Mi", "100Mi"),
            ("512", "512"),
            ("1e3", "1e3"),
            ("0", "0"),
            ("2000m", "2"),
            ("1G", "1G"),
        ] {
            assert_eq!(q(input).to_string(), canonical, "{input}");
        }
    }

    #[test]
    fn arithmetic_is_exact_and_keeps_the_first_format() {
        let sum = q("100m").add(&q("0.2"));
        assert_eq!(sum.to_string(), "300m");
        assert_eq!(q("1Gi").add(&q("1Gi")).to_string(), "2Gi");
        assert_eq!(q("1").sub(&q("250m")).to_string(), "750m");
        assert!(q("1") > q("999m"));
        assert_eq!(q("1k"), q("1000"));
    }
}
