//! Byte sizes as people write them: `64K`, `500M`, `1.5G`, `4 GiB`, or a
//! plain number of bytes. The one parser behind `--max-file-size`,
//! `--reserve` and `--limit-rate`.

/// Parses a size; K, M and G (with or without a trailing `B`, and `KiB`,
/// `MiB`, `GiB`) are powers of 1024, as in most file tools and rsync.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(text.trim())
        .map_err(|error| format!("{error} (try 500M or 4G)"))
}

#[cfg(test)]
mod tests {
    use super::parse_byte_size;

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
