//! Runs the fuzz targets' entry points over the kept regression inputs
//! (`fuzz/regressions/`), so that CI checks them on a stable toolchain.
//! The coverage-guided runs themselves: `docs/reliability.md`.

use std::path::Path;

fn each(dir: &str, f: impl Fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(dir);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("regressions dir") {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).expect("read");
        println!("{}", path.display());
        f(&data);
        n += 1;
    }
    n
}

#[test]
fn config_loader_regressions() {
    let n = each("config", |d| {
        if let Ok(text) = std::str::from_utf8(d) {
            mqfn::config::Config::fuzz_load(text);
        }
    });
    assert!(n >= 5, "regression inputs are present");
}

#[test]
fn frame_decoder_regressions() {
    let n = each("frame", mqfn::handler::process::fuzz_decode);
    assert!(n >= 5, "regression inputs are present");
}
