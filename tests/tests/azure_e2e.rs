//! Initial replication over QUIC into Azurite: `vdrep receive --azure-url ... --azure-sas`,
//! then the committed snapshot is downloaded and compared with the source by qemu-img.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use vdrep::sink::azure::{AzureConfig, AzureStore};
use vdrep::sink::DiskKey;
use vdrep_tests::azurite::Azurite;
use vdrep_tests::{qemu_img_create, qemu_io_write, run, vdrep_command, vdrep_ok};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn initial_replication_over_quic_lands_in_azurite_as_a_fixed_vhd_equal_to_the_source() {
    let az = Azurite::start();
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk0.vhd");
    qemu_img_create(&disk, "vpc", "subformat=dynamic", "20M");
    qemu_io_write(&disk, "vpc", 0xab, 0, 3 << 20);
    qemu_io_write(&disk, "vpc", 0x5c, 9 << 20, 1 << 20);
    let tls = tmp.path().join("tls");
    vdrep_ok(&["certs", "init", tls.to_str().unwrap(), "--sender", "host1"]);
    let mut child = vdrep_command()
        .args(["receive", "--listen", "127.0.0.1:0", "--allow", "host1=vm1"])
        .arg("--tls")
        .arg(&tls)
        .args(["--azure-url", &az.url(), "--azure-container", "replicas"])
        .env("VDREP_AZURE_SAS", format!("?{}", az.sas()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let _guard = Kill(child);
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .expect(&line)
        .to_string();
    run(vdrep_command()
        .args([
            "send",
            "--to",
            &addr,
            "--identity",
            "host1",
            "--vm",
            "vm1",
            "--no-progress",
        ])
        .arg("--tls")
        .arg(&tls)
        .arg(&disk));
    let mut cfg = AzureConfig::new(&az.url(), "replicas");
    cfg.sas = Some(az.sas());
    let store = AzureStore::open(cfg).unwrap();
    let key = DiskKey::new("vm1", "disk0").unwrap();
    let pts = store.points_of(&key).unwrap();
    assert_eq!(pts.iter().map(|p| p.cycle).collect::<Vec<_>>(), vec![0]);
    let replica = tmp.path().join("failover.vhd");
    let got = store.download_point(&key, 0, &replica).unwrap();
    assert!(got >= 4 << 20, "downloaded only {got} bytes");
    run(Command::new("qemu-img")
        .args(["compare", "-f", "vpc", "-F", "vpc"])
        .arg(&replica)
        .arg(&disk));
}
