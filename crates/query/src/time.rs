//! Prometheus' parameter formats for time and durations, and its number formatting.
//!
//! - time: unix seconds as a float (`1435781451.781`) or RFC 3339 (`2015-07-01T20:10:51.781Z`)
//! - duration: float seconds (`15`, `0.5`) or a PromQL duration (`5m`, `1h30m`, `100ms`)
//! - values print like Go's `strconv.FormatFloat(v, 'f', -1, 64)`, with `NaN`, `+Inf`, `-Inf`

/// Parses a time parameter into UTC milliseconds.
pub fn parse_time(s: &str) -> Option<i64> {
    if let Ok(secs) = s.parse::<f64>() {
        // Go's ParseFloat accepts the same decimal forms; reject NaN/Inf spellings Rust takes
        let ms = (secs * 1000.0).round();
        return (ms.is_finite() && ms.abs() < 9.0e15).then_some(ms as i64);
    }
    parse_rfc3339(s)
}

/// Parses RFC 3339 (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`) into UTC milliseconds; fractions
/// beyond milliseconds are truncated. One parser serves the whole server: [`model::event::parse_rfc3339`].
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    model::event::parse_rfc3339(s).map(|t| t.millis())
}

/// Parses a duration parameter into milliseconds: float seconds or a PromQL duration.
pub fn parse_duration(s: &str) -> Option<i64> {
    if let Ok(secs) = s.parse::<f64>() {
        let ms = (secs * 1000.0).round();
        return (ms.is_finite() && ms.abs() < 9.0e15).then_some(ms as i64);
    }
    parse_promql_duration(s)
}

/// Parses `1h30m`, `5m`, `100ms`, `2d`, `1w`, `1y` into milliseconds. Units must appear in
/// decreasing order, each at most once, as Prometheus requires.
pub fn parse_promql_duration(s: &str) -> Option<i64> {
    const UNITS: [(&str, i64); 7] = [
        ("y", 365 * 86_400_000),
        ("w", 7 * 86_400_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ];
    if s.is_empty() {
        return None;
    }
    let b = s.as_bytes();
    let mut i = 0;
    let mut total: i64 = 0;
    let mut last_unit = 0usize;
    while i < b.len() {
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let n: i64 = s.get(start..i)?.parse().ok()?;
        let ustart = i;
        while b.get(i).is_some_and(u8::is_ascii_alphabetic) {
            i += 1;
        }
        let unit = s.get(ustart..i)?;
        let pos = UNITS.iter().position(|(u, _)| *u == unit)?;
        if pos < last_unit || (total > 0 && pos == last_unit) {
            return None;
        }
        last_unit = pos;
        total = total.checked_add(n.checked_mul(UNITS.get(pos)?.1)?)?;
    }
    Some(total)
}

/// Formats a sample value as Prometheus does: Go's `FormatFloat(v, 'f', -1, 64)`.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        // Rust's Display is the shortest round-tripping decimal without exponent, as 'f', -1
        half_even(format!("{v}"), v)
    }
}

/// Go and Rust both print the shortest decimal that reads back as `v`, but when the exact
/// value lies halfway between two such decimals Go picks the even last digit and Rust the
/// upper one (`108024881458523.625` is `…523.62` in Go, `…523.63` in Rust). Moves Rust's
/// answer to Go's in that case; `text` is Rust's `{}` or `{:e}` of `v`.
fn half_even(text: String, v: f64) -> String {
    let mantissa_end = text.find('e').unwrap_or(text.len());
    let Some(mantissa) = text.get(..mantissa_end) else {
        return text;
    };
    // the last significant digit: the last non-zero one (an odd digit is never zero)
    let Some(pos) = mantissa.rfind(|c: char| c.is_ascii_digit() && c != '0') else {
        return text;
    };
    let Some(last) = mantissa[pos..].chars().next().and_then(|c| c.to_digit(10)) else {
        return text;
    };
    let significant = mantissa
        .trim_start_matches(['-', '0', '.'])
        .get(..)
        .map(|m| m.chars().filter(char::is_ascii_digit).count())
        .unwrap_or(0);
    // ties need (nearly) all 17 digits; and an even last digit is already Go's choice
    if last % 2 == 0 || significant < 15 {
        return text;
    }
    // exact expansion (a double has at most 767 significant digits): a tie is the digits
    // after the shortest ones being exactly "5"
    let exact = format!("{:.800e}", v.abs());
    let digits: String = exact
        .split('e')
        .next()
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let shortest_digits = mantissa.trim_start_matches(['-', '0', '.']);
    let n = shortest_digits[..shortest_digits.len() - (mantissa.len() - pos - 1)]
        .chars()
        .filter(char::is_ascii_digit)
        .count();
    let tail = digits.get(n..).unwrap_or_default();
    if !(tail.starts_with('5') && tail[1..].bytes().all(|b| b == b'0')) {
        return text;
    }
    let mut fixed = text.clone();
    fixed.replace_range(pos..=pos, &char::from(b'0' + last as u8 - 1).to_string());
    match fixed.parse::<f64>() {
        Ok(back) if back.to_bits() == v.to_bits() => fixed,
        _ => text,
    }
}

/// Formats a sample value for the JSON API as Prometheus 2.x does (`jsonutil.MarshalValue`):
/// Go's `FormatFloat(v, 'e', -1, 64)` when `|v| < 1e-6` or `|v| >= 1e21` (so `1e+21`,
/// `1e-07`: a signed exponent of at least two digits), [`format_value`] otherwise.
pub fn format_json_value(v: f64) -> String {
    let abs = v.abs();
    if !v.is_finite() || abs == 0.0 || (1e-6..1e21).contains(&abs) {
        return format_value(v);
    }
    // Rust's `{:e}` is the shortest round-tripping mantissa, like Go's precision -1
    let text = half_even(format!("{v:e}"), v);
    let Some((mantissa, exp)) = text.split_once('e') else {
        return text;
    };
    let (sign, digits) = match exp.strip_prefix('-') {
        Some(d) => ('-', d),
        None => ('+', exp),
    };
    format!("{mantissa}e{sign}{digits:0>2}")
}

/// Appends `v` to `out` as a JSON string, exactly as `format_json_value(v)` would be quoted,
/// without allocating in the common cases: integers below 1e15 (counters, most gauges) go
/// straight through an integer formatter (`itoa`), as do decimals of up to four places
/// ([`write_short_decimal`]), other plain decimals through `zmij` (the
/// shortest round-tripping digits, as Go's and Rust's shortest formatting) laid out as Go's
/// `'f', -1`, with the half-to-even fix-up only for the long (15+ digit) texts where a tie is
/// possible. `format_json_value` stays the reference (std's formatter); tests compare the two.
pub fn write_json_value(out: &mut String, v: f64) {
    out.push('"');
    let abs = v.abs();
    // `as i64` truncates (NaN to 0), so the round trip holds only for integers; that is exact
    // below 1e15 < 2^53, where `{}` prints an integral f64 as its integer digits. (`f64::fract`
    // would be a libm call on baseline x86-64.) -0.0 round-trips too but prints as "-0".
    let int = v as i64;
    if abs < 1e15 && int as f64 == v && v.to_bits() != (-0.0f64).to_bits() {
        out.push_str(itoa::Buffer::new().format(int));
    } else if write_short_decimal(out, v) {
        // a gauge's usual value (`63.94`)
    } else if v.is_finite() && (1e-6..1e21).contains(&abs) {
        let start = out.len();
        let mut buf = zmij::Buffer::new();
        let text = buf.format_finite(v);
        // zmij writes 1e-5 ≤ |v| < 1e16 in Go's 'f' form already (`12.34`, `0.001234`), but
        // an integral value with a trailing `.0`; anything else with an exponent
        let long = if text.as_bytes().contains(&b'e') {
            write_plain_decimal(out, text) >= 15
        } else {
            let plain = text.strip_suffix(".0").unwrap_or(text);
            out.push_str(plain);
            plain.len() >= 15
        };
        // `half_even` changes nothing below 15 significant digits
        if long {
            let fixed = half_even(out[start..].to_string(), v);
            out.truncate(start);
            out.push_str(&fixed);
        }
    } else {
        out.push_str(&format_json_value(v));
    }
    out.push('"');
}

/// Writes `v` if it is a decimal with at most [`SHORT_DECIMAL_PLACES`] places and fewer than
/// 16 significant digits (`63.94`, `-0.0005`), as Go's `FormatFloat(v, 'f', -1, 64)` would, and
/// says whether it did. Such a decimal is the shortest text that reads back as `v`, and the
/// only one of its length: any two decimals of at most 15 significant digits are distinct
/// doubles (`DBL_DIG`), so neither a shorter text nor a tie exists. Integer arithmetic, so about
/// three times cheaper than the shortest-digits search, which matters for the 360 values of a
/// one-series answer.
fn write_short_decimal(out: &mut String, v: f64) -> bool {
    let x = v * SHORT_DECIMAL_SCALE;
    // NaN and the infinities fail here too
    if x.is_nan() || x.abs() >= 1e15 {
        return false;
    }
    // rounds half away from zero (`f64::round` is a libm call on baseline x86-64); a wrong
    // candidate only fails the check below
    let m = (x + if x < 0.0 { -0.5 } else { 0.5 }) as i64;
    // m == 0: zero (written above) or below the last place; -0.0 must print as "-0"
    if m == 0 || m as f64 / SHORT_DECIMAL_SCALE != v {
        return false;
    }
    if m < 0 {
        out.push('-');
    }
    let u = m.unsigned_abs();
    let scale = 10u64.pow(SHORT_DECIMAL_PLACES);
    out.push_str(itoa::Buffer::new().format(u / scale));
    let mut frac = u % scale;
    if frac != 0 {
        let mut places = SHORT_DECIMAL_PLACES as usize;
        while frac.is_multiple_of(10) {
            frac /= 10;
            places -= 1;
        }
        out.push('.');
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(frac);
        for _ in digits.len()..places {
            out.push('0');
        }
        out.push_str(digits);
    }
    true
}

/// Decimal places [`write_short_decimal`] handles (values are checked at this scale, which
/// covers every smaller one).
const SHORT_DECIMAL_PLACES: u32 = 4;
/// `10^SHORT_DECIMAL_PLACES`.
const SHORT_DECIMAL_SCALE: f64 = 10_000.0;

/// Writes zmij's `text` of a finite value as Go's `FormatFloat(v, 'f', -1, 64)` before the
/// half-to-even fix-up (that is, as Rust's `{}` would) and returns the number of significant
/// digits written.
fn write_plain_decimal(out: &mut String, text: &str) -> usize {
    // zmij writes `12.34`, `0.001234`, `1234.0` or `1.234e+33`/`1.234e-7`: read it back as
    // sign, digits and the decimal point's position (value = 0.DIGITS × 10^point)
    let (neg, body) = match text.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, text),
    };
    let (mantissa, exp) = match body.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.trim_start_matches('+').parse::<i32>().unwrap_or(0)),
        None => (body, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut digits = [0u8; 40];
    let mut n = 0usize;
    let mut point = i32::try_from(int_part.len()).unwrap_or(0).saturating_add(exp);
    for b in int_part.bytes().chain(frac_part.bytes()) {
        if n == 0 && b == b'0' {
            point -= 1; // a leading zero
            continue;
        }
        if let Some(slot) = digits.get_mut(n) {
            *slot = b;
            n += 1;
        }
    }
    while n > 0 && digits.get(n - 1) == Some(&b'0') {
        n -= 1;
    }
    let digits = digits.get(..n).unwrap_or_default();
    if neg {
        out.push('-');
    }
    let push = |out: &mut String, d: &[u8]| {
        // ASCII digits only
        out.extend(d.iter().map(|&b| char::from(b)));
    };
    if digits.is_empty() {
        out.push('0');
    } else if point <= 0 {
        out.push_str("0.");
        for _ in 0..point.unsigned_abs() {
            out.push('0');
        }
        push(out, digits);
    } else {
        let p = usize::try_from(point).unwrap_or(usize::MAX);
        if p >= digits.len() {
            push(out, digits);
            for _ in digits.len()..p {
                out.push('0');
            }
        } else {
            let (a, b) = digits.split_at(p);
            push(out, a);
            out.push('.');
            push(out, b);
        }
    }
    digits.len()
}

/// Writes a timestamp as Prometheus' JSON does: seconds, then `.` and three millisecond
/// digits when the milliseconds are not zero (`1435781451.781`, `1435781451.050`, `5`).
pub fn write_timestamp(out: &mut String, t: i64) {
    if t < 0 {
        out.push('-');
    }
    let t = t.unsigned_abs();
    out.push_str(itoa::Buffer::new().format(t / 1000));
    let frac = t % 1000;
    if frac != 0 {
        let digit = |d: u64| char::from(b'0' + (d % 10) as u8);
        out.push('.');
        out.push(digit(frac / 100));
        out.push(digit(frac / 10));
        out.push(digit(frac));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        let cases: &[(&str, Option<i64>)] = &[
            ("1435781451.781", Some(1_435_781_451_781)),
            ("0", Some(0)),
            ("-1.5", Some(-1500)),
            ("2015-07-01T20:10:51.781Z", Some(1_435_781_451_781)),
            ("2015-07-01T22:10:51+02:00", Some(1_435_781_451_000)),
            ("1970-01-01T00:00:00Z", Some(0)),
            ("2024-02-29T00:00:00.5Z", Some(1_709_164_800_500)),
            ("yesterday", None),
            ("2015-07-01", None),
            ("", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_time(s), *want, "{s}");
        }
    }

    #[test]
    fn durations() {
        let cases: &[(&str, Option<i64>)] = &[
            ("15", Some(15_000)),
            ("0.5", Some(500)),
            ("5m", Some(300_000)),
            ("1h30m", Some(5_400_000)),
            ("100ms", Some(100)),
            ("1d", Some(86_400_000)),
            ("30m1h", None),
            ("5x", None),
            ("", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_duration(s), *want, "{s}");
        }
    }

    #[test]
    fn values_and_timestamps() {
        let cases: &[(f64, &str)] = &[
            (1.5, "1.5"),
            (1.0, "1"),
            (1e21, "1000000000000000000000"),
            (1e-7, "0.0000001"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (-0.0, "-0"),
            // halfway between two shortest decimals: Go takes the even digit
            (108_024_881_458_523.0 + 0.625, "108024881458523.62"),
            (-108_024_881_458_523.0 - 0.625, "-108024881458523.62"),
            (132_817_882_329_340.0 + 0.625, "132817882329340.62"),
            (108_024_881_458_523.64, "108024881458523.64"),
            (0.1, "0.1"),
            (123.456, "123.456"),
        ];
        for (v, want) in cases {
            assert_eq!(format_value(*v), *want);
        }
        // (value, as the JSON API writes it) — checked against Prometheus 2.42 by the
        // differential test
        let json: &[(f64, &str)] = &[
            (1.5, "1.5"),
            (1e20, "100000000000000000000"),
            (1e21, "1e+21"),
            (-1e21, "-1e+21"),
            (
                123_456_789_012_345_678_901_234_567_890.0,
                "1.2345678901234568e+29",
            ),
            (63.94, "63.94"),
            (-0.0005, "-0.0005"),
            (0.0001, "0.0001"),
            (0.00015, "0.00015"),
            (99_999_999_999.999_9, "99999999999.9999"),
            (100_000_000_000.5, "100000000000.5"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e-6, "0.000001"),
            (1e-7, "1e-07"),
            (9.99996372e-7, "9.99996372e-07"),
            (5e-324, "5e-324"),
            (1e300, "1e+300"),
            (0.0, "0"),
            (-0.0, "-0"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Inf"),
        ];
        for (v, want) in json {
            assert_eq!(format_json_value(*v), *want, "{v}");
        }
        for (v, want) in json {
            let mut s = String::new();
            write_json_value(&mut s, *v);
            assert_eq!(s, format!("\"{want}\""), "{v}");
        }
        let mut s = String::new();
        write_timestamp(&mut s, 1_435_781_451_050);
        s.push(' ');
        write_timestamp(&mut s, 5000);
        s.push(' ');
        write_timestamp(&mut s, -1500);
        assert_eq!(s, "1435781451.050 5 -1.500");
    }

    /// The zmij/itoa writer against std's formatter over many values of the shapes that
    /// matter (random bit patterns, cents, 15-17 digit decimals, exact ties, tiny and huge).
    #[test]
    fn json_value_writer_matches_std_on_many_values() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let mut s = String::new();
        for _ in 0..50_000 {
            let r = next();
            let int = (r >> 11) as i64 - (1 << 52);
            let small = (r >> 20) as i64 % 2_000_000_000_000_000 - 1_000_000_000_000_000;
            for v in [
                f64::from_bits(r),
                (r % 100_000_000) as f64 / 100.0,
                int as f64 / 1000.0,
                // decimals at 1 to 6 places around the short-decimal bounds (15 digits)
                small as f64 / 10.0,
                small as f64 / 10_000.0,
                (small % 1_000_000_000) as f64 / 10_000.0,
                (small % 100_000) as f64 / 1_000_000.0,
                (small % 100_000) as f64 * 1e-4,
                int as f64 * 64.0 + 0.625,
                (r % 1_000_000) as f64 * 1e-9,
                int as f64 * 1e5,
            ] {
                s.clear();
                write_json_value(&mut s, v);
                assert_eq!(
                    s,
                    format!("\"{}\"", format_json_value(v)),
                    "{v:e} bits {:x}",
                    v.to_bits()
                );
            }
        }
    }

    proptest::proptest! {
        /// The allocation-free writer is the quoted `format_json_value`, for any bit pattern
        /// and for the shapes it special-cases (integers, decimals, ties).
        #[test]
        fn json_value_writer_matches_the_formatter(bits in proptest::prelude::any::<u64>(),
                                                   int in -2_000_000_000_000_000i64..2_000_000_000_000_000,
                                                   cents in -100_000_000i64..100_000_000,
                                                   places in 1u32..7) {
            let decimal = int as f64 / 10f64.powi(places as i32);
            let short = (int % 1_000_000_000_000_000) as f64 / 10f64.powi(places as i32);
            for v in [f64::from_bits(bits), int as f64, cents as f64 / 100.0, int as f64 + 0.625,
                      decimal, short, -decimal] {
                let mut s = String::new();
                write_json_value(&mut s, v);
                proptest::prop_assert_eq!(s, format!("\"{}\"", format_json_value(v)), "{}", v);
            }
        }
    }
}
