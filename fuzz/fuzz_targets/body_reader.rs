#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| outbox::fuzzing::body_reader(data));
