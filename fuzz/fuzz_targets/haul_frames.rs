//! Feeds arbitrary bytes to the haul protocol's decoder, frame after frame,
//! as the server would read them after the magic.
#![no_main]

use haul::protocol::haul::{Kind, decode_message, split_frame};
use haul::storage::RelPath;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let mut rest = bytes;
    while let Ok(Some((frame, used))) = split_frame(rest) {
        if !matches!(frame.header.kind, Kind::Data | Kind::DataZstd)
            && let Ok(haul::protocol::haul::Message::Offer(offer)) =
                decode_message(frame.header.kind, frame.payload)
        {
            let _ = RelPath::parse(offer.path);
        }
        rest = &rest[used..];
    }
});
