//! Which connection protects each consistency group (issue 17 item 5): a group is
//! protected by one sender process, so its switches are one instant of all its members.
//! The sender claims each of its groups at the start of every connection
//! ([`vdrep_proto::wire::Control::ClaimGroup`]); the receiver keeps the claim for the life
//! of that connection and refuses another sender's claim meanwhile, so a group split
//! across two senders fails at the second sender's start with an error naming the first.
//!
//! The claim lives as long as the connection: the receiver holds nothing about groups
//! across its own restarts, and a group may move to another sender once the first one's
//! connection has ended (an operator moving VMs between hosts).

use std::collections::HashMap;

use vdrep_proto::session::Refusal;
use vdrep_proto::wire::ErrorClass;

/// The connection holding a group.
pub(crate) struct GroupHolder {
    pub(crate) sender: String,
    pub(crate) conn: quinn::Connection,
    pub(crate) vms: Vec<String>,
}

/// What the receiver knows of the group's current holder, for [`decide`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct HolderView<'a> {
    pub(crate) sender: &'a str,
    pub(crate) vms: &'a [String],
    /// The claim comes over the holder's own connection.
    pub(crate) same_connection: bool,
    /// The holder's connection is still open.
    pub(crate) alive: bool,
}

/// Whether `sender` may claim `group` for `vms` over its connection, given the holder.
/// A dead holder's claim is taken over; a sender that reconnects after a crash (same name,
/// same members) takes its own group over at once instead of waiting for the idle timeout
/// to close its old connection.
pub(crate) fn decide(
    group: &str,
    sender: &str,
    vms: &[String],
    holder: Option<HolderView<'_>>,
) -> Result<(), Refusal> {
    let Some(h) = holder else { return Ok(()) };
    if h.same_connection || !h.alive {
        return Ok(());
    }
    let mut mine = vms.to_vec();
    mine.sort();
    let mut theirs = h.vms.to_vec();
    theirs.sort();
    if h.sender == sender && mine == theirs {
        return Ok(());
    }
    let list = |v: &[String]| v.join(", ");
    if h.sender != sender {
        return Err(Refusal::new(
            ErrorClass::InvalidState,
            format!(
                "consistency group {group} is protected by sender {} (VMs {}); a group is protected by one sender, so sender {sender} cannot protect its VMs {} in it: list all the group's VMs in one sender's config, or name another group",
                h.sender,
                list(h.vms),
                list(vms)
            ),
        ));
    }
    // The same sender name on two live connections: a second process, or a restart whose
    // old connection has not timed out yet; retried, and granted once that one ends.
    Err(Refusal::new(
        ErrorClass::TargetBusy,
        format!(
            "consistency group {group} is held by another connection of sender {sender} with VMs {}; a group is protected by one sender process (if that process ended, its connection is released within the idle timeout)",
            list(h.vms)
        ),
    ))
}

/// The newest `group_cycle` of `group` among the VM points of `vms` in `store` (0: none).
/// A member the store holds nothing of yet has no points.
pub(crate) fn newest_group_cycle(
    store: &dyn crate::sink::ReplicaStore,
    group: &str,
    vms: &[String],
) -> Result<u64, crate::sink::SinkError> {
    let mut newest = 0;
    for vm in vms {
        if store.list_disks(Some(vm))?.is_empty() {
            continue;
        }
        let points = match crate::sink::vm_points::list(store, vm) {
            Ok(p) => p,
            // A store without VM points holds no group cycles: the sender's record numbers.
            Err(crate::sink::SinkError::NotSupported { .. }) => continue,
            Err(e) => return Err(e),
        };
        for p in points {
            if p.group.as_deref() == Some(group) {
                newest = newest.max(p.group_cycle.unwrap_or(0));
            }
        }
    }
    Ok(newest)
}

/// Claims `group` in `holders` for the connection `conn` of `sender`.
pub(crate) fn claim(
    holders: &std::sync::Mutex<HashMap<String, GroupHolder>>,
    group: &str,
    sender: &str,
    vms: &[String],
    conn: &quinn::Connection,
) -> Result<(), Refusal> {
    let mut h = holders
        .lock()
        .map_err(|_| Refusal::new(ErrorClass::Internal, "group holders lock poisoned"))?;
    let view = h.get(group).map(|g| HolderView {
        sender: &g.sender,
        vms: &g.vms,
        same_connection: g.conn.stable_id() == conn.stable_id(),
        alive: g.conn.close_reason().is_none(),
    });
    decide(group, sender, vms, view)?;
    h.insert(
        group.to_string(),
        GroupHolder {
            sender: sender.to_string(),
            conn: conn.clone(),
            vms: vms.to_vec(),
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn a_group_held_by_another_live_sender_is_refused_naming_it() {
        let theirs = v(&["db"]);
        let held = |sender, same_connection, alive| {
            Some(HolderView {
                sender,
                vms: &theirs,
                same_connection,
                alive,
            })
        };
        let e = decide("erp", "hv02", &v(&["app"]), held("hv01", false, true)).unwrap_err();
        assert_eq!(e.class, ErrorClass::InvalidState);
        assert!(
            e.message.contains("protected by sender hv01 (VMs db)") && e.message.contains("app"),
            "{}",
            e.message
        );
        // Nobody holds it, the holder's connection ended, or it is this connection.
        assert!(decide("erp", "hv02", &v(&["app"]), None).is_ok());
        assert!(decide("erp", "hv02", &v(&["app"]), held("hv01", false, false)).is_ok());
        assert!(decide("erp", "hv01", &v(&["db", "x"]), held("hv01", true, true)).is_ok());
        // The same sender reconnecting with the same members takes it over at once.
        assert!(decide("erp", "hv01", &v(&["db"]), held("hv01", false, true)).is_ok());
        // The same sender name with other members on a live connection: retried.
        let e = decide("erp", "hv01", &v(&["app"]), held("hv01", false, true)).unwrap_err();
        assert_eq!(e.class, ErrorClass::TargetBusy);
    }
}
