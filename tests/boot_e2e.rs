//! End to end: QEMU VMs network-boot the test image through bootgate alone (its DHCP, TFTP
//! and HTTP; no dnsmasq, no other web server) and finish `provisioned`:
//! vm0 SeaBIOS + iPXE ROM, vm1 OVMF + iPXE ROM, vm2 OVMF's own PXE (TFTP ipxe.efi → iPXE).
//! QEMU runs under TCG; the three boot at once on the lab bridge.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::qemu::{self, Firmware, Vm};
use support::*;

fn events(site: &Site, host: &str) -> Vec<Value> {
    site.cli_json(&["events", "--host", host])
        .as_array()
        .unwrap()
        .clone()
}

fn first(evs: &[Value], kind: &str) -> usize {
    evs.iter()
        .position(|e| e["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} event in {evs:#?}"))
}

#[test]
fn vms_pxe_boot_through_bootgate_and_end_provisioned() {
    let missing = qemu::missing_host_files();
    require_peer!(
        "QEMU host files",
        format!("{missing:?}"),
        missing.is_empty()
    );
    let image = qemu::test_image();
    let lab = Lab::new();
    let site = Site::from_inventory("lab");
    let images = site.boot_images();
    std::fs::create_dir_all(images.join("test")).unwrap();
    std::fs::copy(&image.vmlinuz, images.join("test/vmlinuz")).unwrap();
    std::fs::copy(&image.initrd, images.join("test/initrd.gz")).unwrap();
    for f in [&image.undionly, &image.ipxe_efi, &image.snponly] {
        std::fs::copy(f, images.join(f.file_name().unwrap())).unwrap();
    }
    // iPXE waits ~13 s for IPv6 autoconf unless a router says "no IPv6 here".
    lab.gw.background(
        lab.gw
            .cmd("python3")
            .arg(repo().join("tests/support/ra.py"))
            .arg("gw0")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    let _daemon = Daemon::start(&lab, &site);
    let work = tempfile::tempdir().unwrap();

    let plan = [
        ("vm0", Firmware::Bios),
        ("vm1", Firmware::UefiIpxe),
        ("vm2", Firmware::UefiFirmwarePxe),
    ];
    let mut vms: Vec<Vm> = plan
        .iter()
        .map(|(name, fw)| Vm::start(&lab.rack.name, name, &qemu::mac_for(name), *fw, work.path()))
        .collect();
    for vm in &mut vms {
        assert!(
            vm.wait_serial(
                "BOOTGATE-MARKER: INSTALLED status=ok",
                Duration::from_secs(240)
            ),
            "{} did not finish:\n{}",
            vm.name,
            vm.diagnostics()
        );
        vm.wait_exit(Duration::from_secs(30));
    }

    for (name, fw) in plan {
        let host = site.cli_json(&["hosts", "show", name]);
        assert_eq!(host["state"], "provisioned", "{name}: {host}");
        // DHCP, (TFTP,) HTTP and phone-home, in that order.
        let evs = events(&site, name);
        let lease = first(&evs, "lease-committed");
        let script = first(&evs, "boot-script-served");
        let file = first(&evs, "boot-file-served");
        let phone = first(&evs, "phone-home");
        assert!(
            lease < script && script < file && file < phone,
            "{name}: {evs:#?}"
        );
        if fw == Firmware::UefiFirmwarePxe {
            let tftp = first(&evs, "tftp-transfer");
            assert!(lease < tftp && tftp < script, "{name}: {evs:#?}");
        }
        let booted = &evs[phone];
        assert_eq!(booted["detail"]["event"], "booted");
        assert!(
            booted["detail"]["ssh_host_keys"][0]
                .as_str()
                .unwrap()
                .starts_with("ssh-ed25519 "),
            "{booted}"
        );
    }
}
