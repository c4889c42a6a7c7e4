#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sharevault_fuzz::snapshot(data));
