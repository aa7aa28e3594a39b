#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| outbox::fuzzing::header_from(data));
