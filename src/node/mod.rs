//! The node side of tortie: what runs on every node beside BIRD, as opposed to the operator's
//! controllers. It holds the published-object contract ([`published`]: the names and annotations
//! the BGP controller writes and the agent reads), the agent's BIRD loop ([`agent`]), BIRD supervision ([`bird`]: install a
//! configuration, reload, talk to the control socket), and the BGP session status ([`status`]:
//! pure parsing and decisions; [`report`]: the CalicoNodeStatus writer), and a cluster's own BIRD
//! templates ([`template`]: vetted with `bird -p` before use). Nothing here imports
//! `crate::controllers`: the operator and the agent meet only in the objects they exchange (the
//! controller imports the contract from here, never the reverse).

pub mod agent;
pub mod bird;
pub mod outcome;
pub mod published;
pub mod report;
pub mod status;
pub mod template;

#[cfg(test)]
mod tests {
    /// The node side, and the agent command built on it, never reach into the operator.
    #[test]
    fn the_node_side_imports_no_controller() {
        for (file, src) in [
            ("node/agent.rs", include_str!("agent.rs")),
            ("node/bird.rs", include_str!("bird.rs")),
            ("node/outcome.rs", include_str!("outcome.rs")),
            ("node/published.rs", include_str!("published.rs")),
            ("node/report.rs", include_str!("report.rs")),
            ("node/status.rs", include_str!("status.rs")),
            ("node/template.rs", include_str!("template.rs")),
            ("cli/agent.rs", include_str!("../cli/agent.rs")),
            ("cli/node.rs", include_str!("../cli/node.rs")),
        ] {
            assert!(
                !src.contains("controllers::"),
                "{file} imports a controller module"
            );
        }
    }
}
