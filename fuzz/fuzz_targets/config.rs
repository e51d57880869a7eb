//! Fuzzes the config loader: any text must give a config or a list of
//! errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        mqfn::config::Config::fuzz_load(text);
    }
});
