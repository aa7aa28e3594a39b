#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| outbox::fuzzing::sns_message(data));
