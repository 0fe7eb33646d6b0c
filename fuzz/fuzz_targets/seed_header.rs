//! Feeds arbitrary bytes to the seed header decoder and the name rules.
#![no_main]

use haul::protocol::seed::{Decoded, decode_header};
use haul::storage::SafeName;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(Decoded::Header(header)) = decode_header(bytes) {
        let _ = SafeName::parse(header.last_component());
    }
});
