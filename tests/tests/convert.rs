//! `vdrep convert` writes Azure-ready fixed VHDs that other tools read as such: qemu-img
//! compares them equal to the source, and libvhdi's `vhdiinfo` sees a fixed disk of the
//! rounded size.

use std::process::Command;

use vdrep_tests::{qemu_img_create, qemu_io_write, require_tool, run, vdrep, vdrep_ok};

fn vhdiinfo(path: &std::path::Path) -> String {
    require_tool("vhdiinfo", "apt-get install libvhdi-utils");
    let out = run(Command::new("vhdiinfo").arg(path));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Converts `src` (a `fmt` image of `size` bytes) and checks the output with qemu-img and
/// vhdiinfo.
fn convert_and_check(src: &std::path::Path, fmt: &str, expect_size: u64) {
    let out = src.with_extension("fixed.vhd");
    vdrep_ok(&["convert", src.to_str().unwrap(), out.to_str().unwrap()]);
    run(Command::new("qemu-img").args([
        "compare",
        "-f",
        fmt,
        "-F",
        "vpc",
        src.to_str().unwrap(),
        out.to_str().unwrap(),
    ]));
    let info = vhdiinfo(&out);
    assert!(info.contains("Disk type\t\t: Fixed"), "{info}");
    assert!(
        info.contains(&format!("({expect_size} bytes)")),
        "vhdiinfo should report {expect_size} bytes:\n{info}"
    );
    // The file is the data, rounded up to 1 MiB, and one footer.
    assert_eq!(std::fs::metadata(&out).unwrap().len(), expect_size + 512);
}

#[test]
fn converted_vhdx_and_vhd_images_are_fixed_vhds_that_qemu_and_libvhdi_read_alike() {
    let t = tempfile::tempdir().unwrap();
    // 100000000 bytes is not a multiple of 1 MiB: the output rounds up to 96 MiB.
    let x = t.path().join("a.vhdx");
    qemu_img_create(&x, "vhdx", "subformat=dynamic,block_size=8M", "100000000");
    qemu_io_write(&x, "vhdx", 0x3c, 8 * 1024 * 1024 - 4096, 12288);
    qemu_io_write(&x, "vhdx", 0x7e, 100000000 - 512, 512);
    convert_and_check(&x, "vhdx", 96 * 1024 * 1024);

    let v = t.path().join("b.vhd");
    qemu_img_create(&v, "vpc", "subformat=dynamic", "33M");
    qemu_io_write(&v, "vhd", 0x11, 2 * 1024 * 1024 - 512, 1024);
    let size = vdrep_tests::inspect_json(&v)["virtual_size"]
        .as_u64()
        .unwrap();
    convert_and_check(&v, "vpc", size.div_ceil(1 << 20) << 20);
}

#[test]
fn convert_replaces_an_existing_destination_and_leaves_nothing_behind_on_error() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("s.raw");
    std::fs::write(&src, vec![9u8; 1 << 20]).unwrap();
    let dst = t.path().join("d.vhd");
    std::fs::write(&dst, b"old contents").unwrap();
    vdrep_ok(&["convert", src.to_str().unwrap(), dst.to_str().unwrap()]);
    assert_eq!(std::fs::metadata(&dst).unwrap().len(), (1 << 20) + 512);
    // A source that does not exist: exit 1, the destination is untouched.
    let out = vdrep(&[
        "convert",
        t.path().join("missing.vhdx").to_str().unwrap(),
        dst.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::metadata(&dst).unwrap().len(), (1 << 20) + 512);
    let leftovers: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".vdrep-convert")
        })
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}
