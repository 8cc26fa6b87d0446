//! The VM's disk set is one (issue 17, item 6): a sender that names fewer disks of a VM than
//! the store holds is refused when it opens any of them.
//!
//! Without this check a VM replicated once with `os` and `data`, then protected naming only
//! `os`, was accepted: `data` kept its old points while `os` moved on, and a failover of the
//! VM's latest point mixed a fresh disk with a stale one. The receiver checks at every
//! `OpenDisk` that carries the sender's disk set (protocol 5; older senders do not say, and
//! are not checked): every disk the store holds of the VM must be in it. The refusal is
//! [`ErrorClass::DiskSetChanged`], permanent: the sender stops with Critical health until an
//! operator unprotects the disks no longer named (`vdrep unprotect --disk`) or names them
//! again. A disk the sender names and the store does not hold yet is a disk being added (or
//! a first copy under way): it is copied, and joins the VM's points from then on.

use vdrep_proto::session::Refusal;
use vdrep_proto::wire::ErrorClass;

/// Refuses an open of VM `vm` when the store (described by `store`) holds disks the sender's
/// set `sender` does not name. `held` are the store's disk names of the VM.
pub(crate) fn check(
    vm: &str,
    store: &str,
    held: &[String],
    sender: &[String],
) -> Result<(), Refusal> {
    let extra: Vec<&str> = sorted(held)
        .into_iter()
        .filter(|h| !sender.iter().any(|s| s == h))
        .collect();
    if extra.is_empty() {
        return Ok(());
    }
    let disks = |v: &[&str]| {
        format!(
            "disk{} {}",
            if v.len() == 1 { "" } else { "s" },
            v.join(", ")
        )
    };
    let flags: Vec<String> = extra.iter().map(|d| format!("--disk PATH={d}")).collect();
    Err(Refusal::new(
        ErrorClass::DiskSetChanged,
        format!(
            "VM {vm}: {store} holds {} but the sender protects {}: a VM's disks are one set, \
             and {} would keep stale recovery points; unprotect what the sender no longer \
             names (`vdrep unprotect --vm {vm} {}` with this store's options; PATH is the \
             disk's image, whose change logs go too) or name {} again",
            disks(&sorted(held)),
            disks(&sorted(sender)),
            extra.join(", "),
            flags.join(" "),
            if extra.len() == 1 { "it" } else { "them" },
        ),
    ))
}

/// The names, sorted, as the message lists them.
fn sorted(v: &[String]) -> Vec<&str> {
    let mut v: Vec<&str> = v.iter().map(String::as_str).collect();
    v.sort_unstable();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn a_sender_naming_every_held_disk_or_more_passes() {
        let st = "local store /srv/vdrep";
        assert!(check("vm1", st, &v(&["data", "os"]), &v(&["os", "data"])).is_ok());
        // A first copy under way, or a disk added: not held yet.
        assert!(check("vm1", st, &v(&["os"]), &v(&["os", "data"])).is_ok());
        assert!(check("vm1", st, &v(&[]), &v(&["os"])).is_ok());
    }

    #[test]
    fn a_store_disk_the_sender_does_not_name_is_refused_with_the_fix() {
        let r = check(
            "vm1",
            "local store /srv/vdrep",
            &v(&["os", "data", "logs"]),
            &v(&["os"]),
        )
        .unwrap_err();
        assert_eq!(r.class, ErrorClass::DiskSetChanged);
        assert!(!r.class.recovery().is_transient(), "an operator's fix");
        let m = &r.message;
        assert!(m.starts_with("VM vm1: local store /srv/vdrep holds disks data, logs, os but the sender protects disk os"), "{m}");
        assert!(
            m.contains("`vdrep unprotect --vm vm1 --disk PATH=data --disk PATH=logs`"),
            "{m}"
        );
        assert!(!m.contains('\n'), "one line: {m}");
    }
}
