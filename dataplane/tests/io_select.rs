//! `VDREP_IO` decides the read backend of `vdrep::io::open`. One test in its own binary,
//! because environment variables are process-wide and tests of one binary run concurrently.

use std::io::ErrorKind;

use vdrep::io::{open, ReadAt, IO_ENV};

#[test]
fn vdrep_io_overrides_the_backend_and_rejects_unknown_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, vec![7u8; 10_000]).unwrap();
    let read = |f: &dyn ReadAt| {
        let mut b = [0u8; 3];
        f.read_exact_at(&mut b, 9_000).unwrap();
        b
    };

    std::env::remove_var(IO_ENV);
    let auto = open(&path).unwrap();
    assert_eq!(
        auto.backend(),
        "io_uring+O_DIRECT when cold",
        "io_uring is allowed on this host, so auto takes it, with O_DIRECT for cold ranges"
    );
    assert_eq!(read(&*auto), [7; 3]);

    for (value, backend) in [
        ("pread", "pread"),
        ("uring", "io_uring"),
        ("uring-direct", "io_uring+O_DIRECT"),
        ("uring-cold-direct", "io_uring+O_DIRECT when cold"),
        ("auto", "io_uring+O_DIRECT when cold"),
    ] {
        std::env::set_var(IO_ENV, value);
        let f = open(&path).unwrap();
        assert_eq!(f.backend(), backend, "{IO_ENV}={value}");
        assert_eq!(read(&*f), [7; 3], "{IO_ENV}={value}");
    }

    std::env::set_var(IO_ENV, "aio");
    let err = open(&path).err().expect("an unknown backend is refused");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("pread, uring"), "{err}");
    std::env::remove_var(IO_ENV);
}
