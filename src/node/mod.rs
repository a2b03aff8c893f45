//! The node side of tortie: what runs on every node beside BIRD, as opposed to the operator's
//! controllers. It holds BIRD supervision ([`bird`]: install a configuration, reload, talk to the
//! control socket), the BGP session status ([`status`]: pure parsing and decisions; [`report`]:
//! the CalicoNodeStatus writer), and is where the rest of the agent and the published-object
//! contract move to. Nothing here imports `crate::controllers`: the operator and the agent meet
//! only in the objects they exchange.

pub mod bird;
pub mod report;
pub mod status;
