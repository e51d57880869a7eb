//! Fuzzes the process-handler frame decoder with arbitrary bytes, as a
//! broken or hostile handler process could write them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mqfn::handler::process::fuzz_decode(data);
});
