//! Writes the differencing test chains into a folder, with each level's model as `.model.raw`,
//! to inspect them by hand: `cargo run -p vdrep-tests --example write_fixtures -- DIR`.

use vdrep_tests::fixtures::scenarios::{vhd_chain, vhdx_chain};
use vdrep_tests::fixtures::write_raw;

fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("usage: write_fixtures DIR"));
    let specs = [
        ("vhd-depth3-512k", vhd_chain(3, 512 * 1024, 3)),
        ("vhd-depth4-2m", vhd_chain(4, 2 << 20, 4)),
        ("vhdx-depth3-1m", vhdx_chain(3, 1 << 20, 13)),
        ("vhdx-depth4-2m", vhdx_chain(4, 2 << 20, 14)),
    ];
    for (name, spec) in specs {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let chain = spec.build(&d);
        for l in &chain.levels {
            let mut m = l.path.clone().into_os_string();
            m.push(".model.raw");
            write_raw(std::path::Path::new(&m), &l.expected);
            println!("{}", l.path.display());
        }
    }
}
