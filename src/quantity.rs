//! Kubernetes resource quantities such as `500m`, `2`, `128Mi` or `1e3`.
//!
//! A [`Quantity`] is stored exactly in nano units (10⁻⁹), the finest
//! precision Kubernetes keeps: anything finer is rounded away from zero to
//! the next nano unit when parsing, as Kubernetes does, so a request for a
//! tiny amount never becomes zero. The magnitude is limited so that
//! [`Quantity::milli_value`] always fits in an `i64` (about ±8Pi); larger
//! inputs are rejected instead of wrapping.
//!
//! The suffix style (decimal SI, binary SI or decimal exponent) is kept for
//! display, as Kubernetes does, but equality and ordering compare amounts
//! only: `1Ki == 1024`.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use thiserror::Error;

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors produced when parsing or constructing a quantity.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// The input was empty.
    #[error(
        "invalid quantity \"\": must not be empty; expected a number with an optional suffix, e.g. '500m', '2' or '128Mi'"
    )]
    Empty,
    /// The input contains whitespace, which Kubernetes does not allow
    /// anywhere in a quantity.
    #[error("invalid quantity {input:?}: must not contain whitespace")]
    Whitespace {
        /// The rejected input.
        input: String,
    },
    /// The input does not start with a number (after an optional sign).
    #[error(
        "invalid quantity {input:?}: must start with a number after an optional sign, e.g. '500m', '2' or '-1.5Gi'"
    )]
    MissingNumber {
        /// The rejected input.
        input: String,
    },
    /// The number has more than one decimal point.
    #[error("invalid quantity {input:?}: the number has more than one '.'")]
    ExtraDecimalPoint {
        /// The rejected input.
        input: String,
    },
    /// The text after the number is not a known suffix.
    #[error(
        "invalid quantity {input:?}: unknown suffix {suffix:?}; valid suffixes are n, u, m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei or an exponent such as e3"
    )]
    UnknownSuffix {
        /// The rejected input.
        input: String,
        /// The unrecognised suffix.
        suffix: String,
    },
    /// An `e`/`E` exponent is not an integer.
    #[error(
        "invalid quantity {input:?}: the exponent after 'e' must be an integer, e.g. '1e3' or '5e-3'"
    )]
    InvalidExponent {
        /// The rejected input.
        input: String,
    },
    /// The amount is too large for its milli value to fit in an `i64`.
    #[error(
        "invalid quantity {input:?}: too large; quantities must lie between -9223372036854775808m and 9223372036854775807m (about ±8Pi)"
    )]
    OutOfRange {
        /// The rejected input or amount.
        input: String,
    },
}

/// How a quantity was written, which decides how it is displayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Format {
    /// Powers of 1000 with SI suffixes: `500m`, `2`, `1k`, `1G`.
    #[default]
    DecimalSi,
    /// Powers of 1024 with IEC suffixes: `128Mi`, `1Gi`.
    BinarySi,
    /// Powers of ten with an exponent: `1e3`.
    DecimalExponent,
}

const NANOS_PER_MILLI: i128 = 1_000_000;
const NANOS_PER_UNIT: i128 = 1_000_000_000;
// `as` widens losslessly here; `From` is not usable in constants.
const MIN_NANOS: i128 = i64::MIN as i128 * NANOS_PER_MILLI;
const MAX_NANOS: i128 = i64::MAX as i128 * NANOS_PER_MILLI;
/// More digits than this before the point cannot fit under `MAX_NANOS`, so
/// longer numbers are rejected before any arithmetic is attempted.
const MAX_INTEGER_DIGITS: usize = 39;
/// Exponents are clamped to this magnitude: beyond it every non-zero amount
/// is out of range (positive) or rounds to one nano unit (negative), so the
/// result is the same and huge exponents cannot cause huge loops.
const EXPONENT_CLAMP: i64 = 1_000;

/// A Kubernetes resource quantity.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quantity {
    nanos: i128,
    format: Format,
}

impl Quantity {
    /// Creates a quantity of `millis` thousandths, e.g. CPU millicores.
    pub fn from_milli(millis: i64) -> Self {
        Self {
            nanos: i128::from(millis) * NANOS_PER_MILLI,
            format: Format::DecimalSi,
        }
    }

    /// Creates a quantity of `value` whole units, e.g. bytes or cores.
    ///
    /// # Errors
    ///
    /// Returns [`Error::OutOfRange`] when the milli value of `value` does not
    /// fit in an `i64` (beyond about ±8Pi).
    pub fn from_value(value: i64) -> Result<Self> {
        Self::from_nanos(i128::from(value) * NANOS_PER_UNIT, Format::DecimalSi).ok_or_else(|| {
            Error::OutOfRange {
                input: value.to_string(),
            }
        })
    }

    /// Returns the same amount displayed in `format`.
    pub fn with_format(self, format: Format) -> Self {
        Self { format, ..self }
    }

    /// Returns how the quantity is displayed.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Returns the amount in thousandths, rounded away from zero like
    /// Kubernetes' `MilliValue` (so `100n` is `1`).
    pub fn milli_value(&self) -> i64 {
        saturate(div_away_from_zero(self.nanos, NANOS_PER_MILLI))
    }

    /// Returns the amount in whole units, rounded away from zero like
    /// Kubernetes' `Value` (so `1500m` is `2`).
    pub fn value(&self) -> i64 {
        saturate(div_away_from_zero(self.nanos, NANOS_PER_UNIT))
    }

    /// Returns whether the amount is zero.
    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    /// Adds two quantities, keeping the format of `self`.
    ///
    /// Returns `None` when the sum is out of range.
    pub fn checked_add(&self, other: &Self) -> Option<Self> {
        Self::from_nanos(self.nanos.checked_add(other.nanos)?, self.format)
    }

    /// Subtracts `other`, keeping the format of `self`.
    ///
    /// Returns `None` when the difference is out of range.
    pub fn checked_sub(&self, other: &Self) -> Option<Self> {
        Self::from_nanos(self.nanos.checked_sub(other.nanos)?, self.format)
    }

    fn from_nanos(nanos: i128, format: Format) -> Option<Self> {
        (MIN_NANOS..=MAX_NANOS)
            .contains(&nanos)
            .then_some(Self { nanos, format })
    }
}

impl FromStr for Quantity {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self> {
        parse(input)
    }
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}

impl Eq for Quantity {}

impl Hash for Quantity {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.nanos.hash(state);
    }
}

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

/// Displays the canonical Kubernetes form: the largest suffix that keeps the
/// number an integer, e.g. `500m`, `1k`, `1500`, `128Mi`, `1536Mi`, `1e3`.
impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos == 0 {
            return f.write_str("0");
        }
        if self.format == Format::BinarySi
            && self.nanos.abs() >= 1024 * NANOS_PER_UNIT
            && self.nanos % NANOS_PER_UNIT == 0
        {
            let mut amount = self.nanos / NANOS_PER_UNIT;
            let mut power = 0;
            while power < BINARY_SUFFIXES.len() - 1 && amount % 1024 == 0 {
                amount /= 1024;
                power += 1;
            }
            return write!(f, "{amount}{}", BINARY_SUFFIXES[power]);
        }
        // Small or fractional binary amounts fall back to decimal, as in
        // Kubernetes, because "0.5Ki" is harder to read than "512".
        let mut mantissa = self.nanos;
        let mut exponent: i32 = -9;
        while mantissa % 10 == 0 {
            mantissa /= 10;
            exponent += 1;
        }
        while exponent.rem_euclid(3) != 0 {
            mantissa *= 10;
            exponent -= 1;
        }
        let suffix = match self.format {
            Format::DecimalExponent => None,
            Format::DecimalSi | Format::BinarySi => decimal_suffix(exponent),
        };
        match suffix {
            Some(suffix) => write!(f, "{mantissa}{suffix}"),
            None if exponent == 0 => write!(f, "{mantissa}"),
            None => write!(f, "{mantissa}e{exponent}"),
        }
    }
}

const BINARY_SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];

fn decimal_suffix(exponent: i32) -> Option<&'static str> {
    Some(match exponent {
        -9 => "n",
        -6 => "u",
        -3 => "m",
        0 => "",
        3 => "k",
        6 => "M",
        9 => "G",
        12 => "T",
        15 => "P",
        18 => "E",
        _ => return None,
    })
}

/// The scale a suffix applies to the number.
enum Scale {
    /// Multiply by 10 to this power.
    Decimal(i64),
    /// Multiply by 1024 to this power.
    Binary(u32),
}

fn parse(input: &str) -> Result<Quantity> {
    if input.is_empty() {
        return Err(Error::Empty);
    }
    let owned = || input.to_owned();
    if input.chars().any(char::is_whitespace) {
        return Err(Error::Whitespace { input: owned() });
    }
    let bytes = input.as_bytes();
    let (negative, mut pos) = match bytes.first() {
        Some(b'-') => (true, 1),
        Some(b'+') => (false, 1),
        _ => (false, 0),
    };
    let int_start = pos;
    while bytes.get(pos).is_some_and(u8::is_ascii_digit) {
        pos += 1;
    }
    let int_digits = &bytes[int_start..pos];
    let mut frac_digits: &[u8] = &[];
    if bytes.get(pos) == Some(&b'.') {
        pos += 1;
        let frac_start = pos;
        while bytes.get(pos).is_some_and(u8::is_ascii_digit) {
            pos += 1;
        }
        frac_digits = &bytes[frac_start..pos];
    }
    if int_digits.is_empty() && frac_digits.is_empty() {
        return Err(Error::MissingNumber { input: owned() });
    }
    // Only ASCII was consumed, so `pos` is a char boundary.
    let suffix = &input[pos..];
    if suffix.starts_with('.') {
        return Err(Error::ExtraDecimalPoint { input: owned() });
    }
    let (scale, format) = interpret_suffix(input, suffix)?;

    let (decimal_exponent, multiplier) = match scale {
        Scale::Decimal(exponent) => (exponent, 1),
        Scale::Binary(power) => (0, 1024_u128.pow(power)),
    };
    // The value is digits × 10^(exponent − fraction length) × multiplier;
    // shifting by 9 turns it into nano units.
    let frac_len = i64::try_from(frac_digits.len()).unwrap_or(i64::MAX);
    let exponent = decimal_exponent.saturating_add(9).saturating_sub(frac_len);
    let out_of_range = || Error::OutOfRange { input: owned() };
    let magnitude = small_magnitude(int_digits, frac_digits, multiplier, exponent)
        .or_else(|| digit_magnitude(int_digits, frac_digits, multiplier, exponent))
        .ok_or_else(out_of_range)?;
    let nanos = if negative { -magnitude } else { magnitude };
    Quantity::from_nanos(nanos, format).ok_or_else(out_of_range)
}

/// The amount in nano units of the ASCII digits `int` and `frac` × `multiplier`
/// × 10^`exponent`, in plain arithmetic: for the common spellings (a few
/// digits, nothing below a nano unit, in range). None for anything else,
/// which [`digit_magnitude`] then works out. Every pod's create parses its
/// containers' quantities several times over.
fn small_magnitude(int: &[u8], frac: &[u8], multiplier: u128, exponent: i64) -> Option<i128> {
    if int.len() + frac.len() > 18 {
        return None;
    }
    let digits = int
        .iter()
        .chain(frac)
        .fold(0_u128, |acc, b| acc * 10 + u128::from(b - b'0'));
    let scale = 10_u128.checked_pow(u32::try_from(exponent).ok()?)?;
    let value = i128::try_from(digits.checked_mul(multiplier)?.checked_mul(scale)?).ok()?;
    (value <= MAX_NANOS).then_some(value)
}

/// [`small_magnitude`] for any number of digits and any exponent, on the
/// decimal digit string: rounded away from zero to a nano unit; None when
/// it cannot be in range.
fn digit_magnitude(int: &[u8], frac: &[u8], multiplier: u128, exponent: i64) -> Option<i128> {
    let digits: Vec<u8> = int
        .iter()
        .chain(frac)
        .map(|b| b - b'0')
        .skip_while(|&d| d == 0)
        .collect();
    if digits.is_empty() {
        return Some(0);
    }
    scaled_magnitude(&multiply(&digits, multiplier), exponent)
}

fn interpret_suffix(input: &str, suffix: &str) -> Result<(Scale, Format)> {
    let decimal = |exponent| Ok((Scale::Decimal(exponent), Format::DecimalSi));
    let binary = |power| Ok((Scale::Binary(power), Format::BinarySi));
    match suffix {
        "n" => decimal(-9),
        "u" => decimal(-6),
        "m" => decimal(-3),
        "" => decimal(0),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        "Ki" => binary(1),
        "Mi" => binary(2),
        "Gi" => binary(3),
        "Ti" => binary(4),
        "Pi" => binary(5),
        "Ei" => binary(6),
        _ => {
            let exponent = suffix
                .strip_prefix('e')
                .or_else(|| suffix.strip_prefix('E'))
                // Only text that starts like a number is an attempted
                // exponent; "1Ex" is more likely a mistyped suffix.
                .filter(|rest| {
                    rest.starts_with(|c: char| c.is_ascii_digit() || c == '+' || c == '-')
                });
            match exponent {
                Some(exponent) => parse_exponent(exponent)
                    .map(|e| (Scale::Decimal(e), Format::DecimalExponent))
                    .ok_or_else(|| Error::InvalidExponent {
                        input: input.to_owned(),
                    }),
                None => Err(Error::UnknownSuffix {
                    input: input.to_owned(),
                    suffix: suffix.to_owned(),
                }),
            }
        }
    }
}

/// Parses `[+-]?[0-9]+`, clamping to ±`EXPONENT_CLAMP`.
fn parse_exponent(text: &str) -> Option<i64> {
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let magnitude = digits.bytes().fold(0_i64, |acc, b| {
        (acc * 10 + i64::from(b - b'0')).min(EXPONENT_CLAMP)
    });
    Some(if negative { -magnitude } else { magnitude })
}

/// Multiplies a big-endian decimal digit string by `factor`.
///
/// Working on digits keeps binary suffixes exact for numbers of any length.
fn multiply(digits: &[u8], factor: u128) -> Vec<u8> {
    if factor == 1 {
        return digits.to_vec();
    }
    let mut out = Vec::with_capacity(digits.len() + 20);
    let mut carry: u128 = 0;
    for &digit in digits.iter().rev() {
        let current = u128::from(digit) * factor + carry;
        out.push(last_digit(current));
        carry = current / 10;
    }
    while carry > 0 {
        out.push(last_digit(carry));
        carry /= 10;
    }
    out.reverse();
    out
}

fn last_digit(n: u128) -> u8 {
    // The remainder is below 10, so the conversion cannot fail.
    u8::try_from(n % 10).unwrap_or(0)
}

/// Returns `digits × 10^exponent`, rounded away from zero to an integer, or
/// `None` when it cannot be in range.
fn scaled_magnitude(digits: &[u8], exponent: i64) -> Option<i128> {
    let len = i64::try_from(digits.len()).ok()?;
    let integer_len = len.checked_add(exponent)?;
    if integer_len <= 0 {
        // Entirely below one nano unit but not zero: round up to one.
        return Some(1);
    }
    let integer_len = usize::try_from(integer_len).ok()?;
    if integer_len > MAX_INTEGER_DIGITS {
        return None;
    }
    let mut value: i128 = 0;
    for i in 0..integer_len {
        let digit = digits.get(i).copied().unwrap_or(0);
        value = value.checked_mul(10)?.checked_add(i128::from(digit))?;
    }
    let has_fraction = digits
        .get(integer_len..)
        .is_some_and(|rest| rest.iter().any(|&d| d != 0));
    if has_fraction {
        value = value.checked_add(1)?;
    }
    Some(value)
}

fn div_away_from_zero(numerator: i128, denominator: i128) -> i128 {
    let quotient = numerator / denominator;
    match (numerator % denominator).signum() {
        0 => quotient,
        1 => quotient + 1,
        _ => quotient - 1,
    }
}

fn saturate(value: i128) -> i64 {
    // The constructors keep values in range; saturating keeps this total.
    i64::try_from(value).unwrap_or(if value < 0 { i64::MIN } else { i64::MAX })
}

#[cfg(test)]
mod tests;
