use super::*;

fn q(s: &str) -> Quantity {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn millicores_parse_to_their_milli_value() {
    assert_eq!(q("500m").milli_value(), 500);
    assert_eq!(q("500m").value(), 1);
    assert_eq!(q("1").milli_value(), 1000);
    assert_eq!(q("0.5").milli_value(), 500);
    assert_eq!(q("0.1").milli_value(), 100);
    assert_eq!(q("2").value(), 2);
}

#[test]
fn binary_suffixes_are_powers_of_1024() {
    assert_eq!(q("128Mi").value(), 134_217_728);
    assert_eq!(q("1Gi").value(), 1 << 30);
    assert_eq!(q("1.5Gi").value(), 1_610_612_736);
    assert_eq!(q("1Ki").value(), 1024);
    assert_eq!(q("2Pi").value(), 2 << 50);
    assert_eq!(q("0.1Ki").value(), 103);
    assert_eq!(q("0.1Ki").milli_value(), 102_400);
}

#[test]
fn decimal_suffixes_are_powers_of_1000() {
    assert_eq!(q("1G").value(), 1_000_000_000);
    assert_eq!(q("100k").value(), 100_000);
    assert_eq!(q("3M").value(), 3_000_000);
    assert_eq!(q("2T").value(), 2_000_000_000_000);
    assert_eq!(q("1P").value(), 1_000_000_000_000_000);
    assert_eq!(q("250u").milli_value(), 1);
}

#[test]
fn exponents_scale_by_powers_of_ten() {
    assert_eq!(q("1e3").value(), 1000);
    assert_eq!(q("1E3").value(), 1000);
    assert_eq!(q("1.5e3").value(), 1500);
    assert_eq!(q("5e-3").milli_value(), 5);
    assert_eq!(q("1e+3").value(), 1000);
}

#[test]
fn fractions_round_away_from_zero() {
    assert_eq!(q("100n").milli_value(), 1);
    assert_eq!(q("1500m").value(), 2);
    assert_eq!(q("1001m").value(), 2);
    assert_eq!(q("-100n").milli_value(), -1);
    assert_eq!(q("-1500m").value(), -2);
}

#[test]
fn amounts_below_one_nano_round_up_to_one_nano() {
    assert_eq!(q("1e-20").to_string(), "1e-9");
    assert_eq!(q("1e-20").milli_value(), 1);
    assert_eq!(q("0.0000000001").to_string(), "1n");
    assert_eq!(q("1.0000000001").to_string(), "1000000001n");
    assert_eq!(q("-1e-1000000").to_string(), "-1e-9");
    assert_eq!(q("-0.0000000001m").to_string(), "-1n");
}

#[test]
fn zero_in_any_spelling_is_zero() {
    for zero in [
        "0",
        "-0",
        "+0",
        "0.0",
        "0m",
        "0Ei",
        "0e999999999999999999999",
        ".0",
        "0.",
    ] {
        assert!(q(zero).is_zero(), "{zero}");
        assert_eq!(q(zero).to_string(), "0");
    }
}

#[test]
fn signs_and_bare_points_are_accepted_like_kubernetes() {
    assert_eq!(q("-1").value(), -1);
    assert_eq!(q("+2").value(), 2);
    assert_eq!(q(".5").milli_value(), 500);
    assert_eq!(q("1.").value(), 1);
    assert_eq!(q("1.G").value(), 1_000_000_000);
    assert_eq!(q("007").value(), 7);
}

#[test]
fn display_is_canonical_kubernetes_form() {
    let cases = [
        ("500m", "500m"),
        ("0.5", "500m"),
        ("1000m", "1"),
        ("1500m", "1500m"),
        ("1000", "1k"),
        ("1500", "1500"),
        ("100k", "100k"),
        ("1G", "1G"),
        ("100n", "100n"),
        ("128Mi", "128Mi"),
        ("1.5Gi", "1536Mi"),
        ("1024Mi", "1Gi"),
        ("0.5Ki", "512"),
        ("0.1Ki", "102400m"),
        ("1e3", "1e3"),
        ("1.5e3", "1500"),
        ("12e-3", "12e-3"),
        ("-1Ki", "-1Ki"),
        ("-500m", "-500m"),
    ];
    for (input, canonical) in cases {
        assert_eq!(q(input).to_string(), canonical, "{input}");
        assert_eq!(q(canonical), q(input), "{canonical} re-parses");
    }
}

#[test]
fn constructors_display_sensibly() {
    assert_eq!(Quantity::from_milli(500).to_string(), "500m");
    assert_eq!(Quantity::from_milli(2000).to_string(), "2");
    assert_eq!(Quantity::from_value(3).unwrap().to_string(), "3");
    let bytes = Quantity::from_value(2 << 30)
        .unwrap()
        .with_format(Format::BinarySi);
    assert_eq!(bytes.to_string(), "2Gi");
    assert_eq!(bytes.format(), Format::BinarySi);
    assert_eq!(
        Quantity::from_value(1000)
            .unwrap()
            .with_format(Format::BinarySi)
            .to_string(),
        "1k"
    );
}

#[test]
fn equality_and_order_compare_amounts_not_spelling() {
    assert_eq!(q("1Ki"), q("1024"));
    assert_eq!(q("1"), q("1000m"));
    assert!(q("999m") < q("1"));
    assert!(q("1Gi") > q("1G"));
    assert!(q("-1") < q("0"));
    let mut all = vec![q("2"), q("500m"), q("1Ki"), q("-1")];
    all.sort();
    assert_eq!(all, vec![q("-1"), q("500m"), q("2"), q("1Ki")]);
}

#[test]
fn checked_arithmetic_adds_and_reports_overflow() {
    assert_eq!(q("500m").checked_add(&q("1.5")), Some(q("2")));
    assert_eq!(q("1Gi").checked_sub(&q("512Mi")), Some(q("512Mi")));
    assert_eq!(
        q("1Gi").checked_add(&q("1")).map(|s| s.format()),
        Some(Format::BinarySi)
    );
    let max = Quantity::from_milli(i64::MAX);
    assert_eq!(max.checked_add(&q("1m")), None);
    assert_eq!(Quantity::from_milli(i64::MIN).checked_sub(&q("1n")), None);
    assert_eq!(max.checked_add(&q("0")), Some(max));
}

#[test]
fn extreme_constructors_stay_in_range() {
    assert_eq!(Quantity::from_milli(i64::MAX).milli_value(), i64::MAX);
    assert_eq!(Quantity::from_milli(i64::MIN).milli_value(), i64::MIN);
    assert_eq!(Quantity::from_milli(i64::MAX).value(), i64::MAX / 1000 + 1);
    assert!(matches!(
        Quantity::from_value(i64::MAX),
        Err(Error::OutOfRange { .. })
    ));
    assert_eq!(
        Quantity::from_value(9_223_372_036_854_775).unwrap().value(),
        9_223_372_036_854_775
    );
}

#[test]
fn largest_quantities_parse_and_larger_ones_are_rejected() {
    assert_eq!(q("9223372036854775807m").milli_value(), i64::MAX);
    assert_eq!(q("8Pi").value(), 8 << 50);
    for too_big in [
        "9223372036854775808m",
        "1Ei",
        "10P",
        "1E",
        "1e100",
        "99999999999999999999999999999999999999999999999",
    ] {
        assert_eq!(
            too_big.parse::<Quantity>(),
            Err(Error::OutOfRange {
                input: too_big.to_owned()
            }),
            "{too_big}"
        );
    }
}

#[test]
fn invalid_strings_are_rejected_with_precise_messages() {
    let message = |s: &str| s.parse::<Quantity>().unwrap_err().to_string();
    assert_eq!(
        message(""),
        "invalid quantity \"\": must not be empty; expected a number with an optional suffix, e.g. '500m', '2' or '128Mi'"
    );
    assert_eq!(
        message("1.2.3"),
        "invalid quantity \"1.2.3\": the number has more than one '.'"
    );
    assert_eq!(
        message("12Qi"),
        "invalid quantity \"12Qi\": unknown suffix \"Qi\"; valid suffixes are n, u, m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei or an exponent such as e3"
    );
    assert_eq!(
        message("Mi"),
        "invalid quantity \"Mi\": must start with a number after an optional sign, e.g. '500m', '2' or '-1.5Gi'"
    );
    assert!(message("--1").starts_with("invalid quantity \"--1\": must start with a number"));
    assert_eq!(
        message("1 Gi"),
        "invalid quantity \"1 Gi\": must not contain whitespace"
    );
    assert_eq!(
        message("1e3.5"),
        "invalid quantity \"1e3.5\": the exponent after 'e' must be an integer, e.g. '1e3' or '5e-3'"
    );
}

#[test]
fn malformed_inputs_never_parse() {
    for bad in [
        "-", "+", ".", "-.", "1K", "1ki", "1KI", "1mi", "1e", "1E+", "1e-", "1Ex", "1iB", " 1",
        "1\n", "1_000", "0x10", "1,5", "é", "1Mi2", "1..5", "NaN", "inf",
    ] {
        assert!(bad.parse::<Quantity>().is_err(), "{bad:?} parsed");
    }
}

/// The plain-arithmetic parse of common spellings gives what the digit
/// string gives, wherever it gives anything.
#[test]
fn the_quick_parse_agrees_with_the_digit_parse() {
    let numbers: [&[u8]; 8] = [
        b"",
        b"0",
        b"1",
        b"5",
        b"000250",
        b"999999999",
        b"123456789012345678",
        b"9223372036854775807",
    ];
    let mut agreed = 0;
    for int in numbers {
        for frac in numbers {
            for multiplier in [1, 1024, 1 << 20, 1 << 30, 1 << 40, 1 << 50, 1 << 60] {
                for exponent in [-12, -1, 0, 1, 3, 6, 8, 9, 12, 15, 18, 21, 27, 28, 40] {
                    let quick = super::small_magnitude(int, frac, multiplier, exponent);
                    if let Some(value) = quick {
                        agreed += 1;
                        assert_eq!(
                            Some(value),
                            super::digit_magnitude(int, frac, multiplier, exponent),
                            "{int:?}.{frac:?} × {multiplier} × 10^{exponent}"
                        );
                    }
                }
            }
        }
    }
    // The sweep reaches the quick path often, not only its refusals.
    assert!(agreed > 1_000, "{agreed}");
}
