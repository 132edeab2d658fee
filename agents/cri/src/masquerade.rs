//! Pods' traffic to anywhere outside the pod network leaves with the node's address: one
//! MASQUERADE rule for the node's whole pod CIDR, as flannel's `--ip-masq` and k3s set it up,
//! instead of the bridge plugin's `ipMasq` (a chain and rules per pod). Those cost every
//! sandbox a round of iptables calls — 110 ms of a 260 ms sandbox on the 2-core test machine —
//! and stay behind whenever a pod goes without a CNI DEL (a killed node).

use tokio::process::Command;

/// The rule's comment names the bridge, so whoever tears a node's network down finds it.
pub fn comment(bridge: &str) -> String {
    format!("keel: pods of bridge {bridge}")
}

fn rule(pod_cidr: &str, bridge: &str) -> Vec<String> {
    [
        "POSTROUTING",
        "-s",
        pod_cidr,
        "!",
        "-d",
        pod_cidr,
        "-m",
        "comment",
        "--comment",
        &comment(bridge),
        "-j",
        "MASQUERADE",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

async fn iptables(action: &str, rule: &[String]) -> Result<bool, String> {
    let out = Command::new("iptables")
        .args(["-w", "-t", "nat", action])
        .args(rule)
        .output()
        .await
        .map_err(|e| format!("running iptables: {e}"))?;
    if out.status.success() {
        return Ok(true);
    }
    // `-C` answers 1 for a rule that is not there; anything else is a failure.
    if action == "-C" && out.status.code() == Some(1) {
        return Ok(false);
    }
    Err(format!("iptables -t nat {action} {}: {}", rule.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
}

/// Adds the rule unless it is there already (an agent restarted on the same node).
pub async fn ensure(pod_cidr: &str, bridge: &str) -> Result<(), String> {
    let rule = rule(pod_cidr, bridge);
    if !iptables("-C", &rule).await? {
        iptables("-A", &rule).await?;
    }
    Ok(())
}

/// Removes the rule of `bridge`'s pods, whatever their CIDR: for whoever tears a node's
/// network down (the rule outlives the agent, as the pods do). Blocking, for teardown paths.
pub fn remove(bridge: &str) {
    let quoted = format!("\"{}\"", comment(bridge));
    let Ok(rules) = std::process::Command::new("iptables").args(["-w", "-t", "nat", "-S", "POSTROUTING"]).output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&rules.stdout).lines().filter(|l| l.contains(&quoted)) {
        let Some(cidr) = line.split_whitespace().skip_while(|w| *w != "-s").nth(1) else { continue };
        let _ =
            std::process::Command::new("iptables").args(["-w", "-t", "nat", "-D"]).args(rule(cidr, bridge)).output();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_covers_the_cidr_and_names_the_bridge() {
        let rule = rule("10.42.0.0/24", "keel0").join(" ");
        assert_eq!(
            rule,
            "POSTROUTING -s 10.42.0.0/24 ! -d 10.42.0.0/24 -m comment --comment keel: pods of bridge keel0 -j MASQUERADE"
        );
    }
}
