#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| router::fuzzing::tunnel_msg(data));
