#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| live_mutex::fuzzing::table_ops(data));
