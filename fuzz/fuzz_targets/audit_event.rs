#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sharevault_fuzz::audit_event(data));
