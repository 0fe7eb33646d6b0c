//! Byte sizes as people write them: `64K`, `500M`, `1.5G`, `4 GiB`, or a
//! plain number of bytes. The one parser behind `--max-file-size`,
//! `--reserve` and `--limit-rate`, and the one way sizes are written back
//! for people ([`Human`]), in the same powers of 1024.

/// Parses a size; K, M and G (with or without a trailing `B`, and `KiB`,
/// `MiB`, `GiB`) are powers of 1024, as in most file tools and rsync.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(text.trim())
        .map_err(|error| format!("{error} (try 500M or 4G)"))
}

/// A byte count for people, in powers of 1024 as [`parse_byte_size`]
/// reads them: `512 B`, `1.0 KiB`, `95.4 MiB`, `2.3 GiB`. At most ten
/// columns wide (`1023.9 MiB`), so that it can be padded to a fixed width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Human(pub u64);

impl std::fmt::Display for Human {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        if self.0 < 1024 {
            return f.pad(&format!("{} B", self.0));
        }
        let mut value = self.0 as f64 / 1024.0;
        let mut unit = 0;
        // Moved up a unit before one decimal would round it to 1024.0.
        while value >= 1023.95 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        f.pad(&format!("{value:.1} {}", UNITS[unit]))
    }
}

#[cfg(test)]
mod tests {
    use super::{Human, parse_byte_size};

    #[test]
    fn sizes_are_written_in_the_units_they_are_read_in() {
        for (bytes, shown) in [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (64 * 1024, "64.0 KiB"),
            (25_000_000, "23.8 MiB"),
            (1024 * 1024 * 1024 - 1, "1.0 GiB"),
            (3 * 1024 * 1024 * 1024 / 2, "1.5 GiB"),
            (u64::MAX, "16.0 EiB"),
        ] {
            assert_eq!(Human(bytes).to_string(), shown, "{bytes}");
        }
        assert_eq!(format!("{:>10}", Human(1024)), "   1.0 KiB");
        assert!(Human(1024 * 1024 - 52).to_string().len() <= 10);
    }

    #[test]
    fn units_are_binary() {
        assert_eq!(parse_byte_size("250000"), Ok(250_000));
        assert_eq!(parse_byte_size("64K"), Ok(64 * 1024));
        assert_eq!(parse_byte_size("64k"), Ok(64 * 1024));
        assert_eq!(parse_byte_size("500M"), Ok(500 * 1024 * 1024));
        assert_eq!(parse_byte_size("10MB"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_byte_size("10MiB"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_byte_size("1.5G"), Ok(1024 * 1024 * 1024 * 3 / 2));
        for bad in ["", "fast", "10X", "-5M", "1..5M"] {
            assert!(parse_byte_size(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
