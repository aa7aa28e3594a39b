#![no_main]
libfuzzer_sys::fuzz_target!(
    init: outbox::fuzzing::tolerate_contained_parser_panic(),
    |data: &[u8]| outbox::fuzzing::signature(data)
);
