//! BGPFilter rules as BIRD functions, and the calls a peer's import and export filters make to
//! them, exactly as Calico's confd writes them (`spec/bgp.md` §8).
//!
//! Every BGPFilter with rules for a family becomes, in that family's `bird*.cfg`, one function
//! per direction (`'bgp_<name>_importFilterV4'()`), whether or not a peer uses it. A function
//! takes `bool is_same_as` when one of its rules is limited to iBGP or eBGP peers. Inputs are
//! assumed valid ([`super::validate::check_filter`] leaves out what is not); a value that still
//! cannot be written gives an error naming it instead of text BIRD would refuse.

use sha2::{Digest, Sha256};

use crate::api::BgpFilter;
use crate::api::bgpfilter::{BGPFilterCommunityMatch, BGPFilterOperation, BGPFilterRuleV4, BGPFilterRuleV6};

/// `2^31 - 1`: priorities (kernel metrics) and `bgp_local_pref` convert as `x = 2^31-1 - y`.
pub const BIRD_INT_MAX: i64 = 2147483647;
/// BIRD's longest symbol.
const MAX_SYMBOL: usize = 64;

/// Import (routes from the peer) or export (routes to it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Import,
    Export,
}

impl Direction {
    fn word(self) -> &'static str {
        match self {
            Direction::Import => "import",
            Direction::Export => "export",
        }
    }
}

/// A rule of either family, borrowed.
#[derive(Clone, Copy)]
pub enum Rule<'a> {
    V4(&'a BGPFilterRuleV4),
    V6(&'a BGPFilterRuleV6),
}

/// The fields both rule types share.
struct Fields<'a> {
    cidr: Option<&'a str>,
    prefix: Option<(Option<i32>, Option<i32>)>,
    source: Option<&'a str>,
    interface: Option<&'a str>,
    operator: Option<&'a str>,
    peer_type: Option<&'a str>,
    communities: Option<&'a BGPFilterCommunityMatch>,
    as_path: &'a [i64],
    priority: Option<i64>,
    action: &'a str,
    operations: &'a [BGPFilterOperation],
    max_len: u8,
}

macro_rules! fields {
    ($r:expr, $max:expr) => {
        Fields {
            cidr: $r.cidr.as_deref().filter(|s| !s.is_empty()),
            prefix: $r.prefix_length.as_ref().map(|p| (p.min, p.max)),
            source: $r.source.as_deref().filter(|s| !s.is_empty()),
            interface: $r.interface.as_deref().filter(|s| !s.is_empty()),
            operator: $r.match_operator.as_deref().filter(|s| !s.is_empty()),
            peer_type: $r.peer_type.as_deref().filter(|s| !s.is_empty()),
            communities: $r.communities.as_ref(),
            as_path: $r.as_path_prefix.as_deref().unwrap_or(&[]),
            priority: $r.priority,
            action: &$r.action,
            operations: $r.operations.as_deref().unwrap_or(&[]),
            max_len: $max,
        }
    };
}

impl<'a> Rule<'a> {
    fn fields(self) -> Fields<'a> {
        match self {
            Rule::V4(r) => fields!(r, 32),
            Rule::V6(r) => fields!(r, 128),
        }
    }

    /// The rule's CIDR, if any.
    pub fn cidr(self) -> Option<&'a str> {
        self.fields().cidr
    }

    /// Limited to iBGP or eBGP peers (the function then takes `is_same_as`).
    pub fn has_peer_type(self) -> bool {
        self.fields().peer_type.is_some()
    }
}

/// The rules of `f` for one direction and family, in order.
pub fn rules(f: &BgpFilter, dir: Direction, v6: bool) -> Vec<Rule<'_>> {
    let s = &f.spec;
    match (dir, v6) {
        (Direction::Import, false) => s.import_v4.iter().flatten().map(Rule::V4).collect(),
        (Direction::Export, false) => s.export_v4.iter().flatten().map(Rule::V4).collect(),
        (Direction::Import, true) => s.import_v6.iter().flatten().map(Rule::V6).collect(),
        (Direction::Export, true) => s.export_v6.iter().flatten().map(Rule::V6).collect(),
    }
}

/// Calico's `TruncateAndHashName`: names too long for a BIRD symbol keep their first characters
/// plus `_` and 16 upper-case hex digits of their SHA-256.
fn fit_name(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_string();
    }
    let hash: String = Sha256::digest(name.as_bytes())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    // Kubernetes names are ASCII, so any byte index is a character boundary.
    let keep = max - 17;
    format!("{}_{}", &name[..keep.min(name.len())], &hash[..16])
}

/// `'bgp_<name>_importFilterV4'`, quoted (the name may hold `-` and `.`).
pub fn function_name(filter: &str, dir: Direction, v6: bool) -> String {
    let fam = if v6 { "6" } else { "4" };
    let overhead = "bgp__".len() + dir.word().len() + "FilterV".len() + fam.len();
    format!(
        "'bgp_{}_{}FilterV{fam}'",
        fit_name(filter, MAX_SYMBOL - overhead),
        dir.word()
    )
}

/// A value a rule holds that cannot be written as BIRD text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RuleError {
    pub field: String,
    pub message: String,
}

fn bad(field: &str, message: impl Into<String>) -> RuleError {
    RuleError {
        field: field.to_string(),
        message: message.into(),
    }
}

/// `(65000, 100)` or `(65000, 100, 200)` from `aa:nn` / `aa:nn:mm`, with which attribute holds it.
fn community(v: &str, field: &str) -> Result<(&'static str, String), RuleError> {
    if !super::snapshot::is_community_value(v) {
        return Err(bad(
            field,
            format!("{v:?} is not a community aa:nn (16-bit numbers) or aa:nn:mm (32-bit numbers)"),
        ));
    }
    let parts: Vec<&str> = v.split(':').collect();
    let attr = if parts.len() == 2 {
        "bgp_community"
    } else {
        "bgp_large_community"
    };
    Ok((attr, format!("({})", parts.join(", "))))
}

fn asn(v: i64, field: &str) -> Result<String, RuleError> {
    if !(0..=u32::MAX as i64).contains(&v) {
        return Err(bad(field, format!("{v} is not an AS number (0 to 4294967295)")));
    }
    Ok(v.to_string())
}

fn local_pref(priority: i64, field: &str) -> Result<i64, RuleError> {
    if !(1..=2147483646).contains(&priority) {
        return Err(bad(field, format!("{priority} is not in 1..=2147483646")));
    }
    Ok(BIRD_INT_MAX - priority)
}

/// The prefix of `(net ~ ...)`: the CIDR, or `[ cidr{min,max} ]` with a prefix-length range.
fn prefix_pattern(f: &Fields<'_>, cidr: &str) -> Result<String, RuleError> {
    let Some((min, max)) = f.prefix else {
        return Ok(cidr.to_string());
    };
    let net: ipnet::IpNet = cidr
        .parse()
        .map_err(|_| bad("cidr", format!("{cidr:?} is not a CIDR")))?;
    let lo = min.map_or(net.prefix_len() as i32, |m| m.max(net.prefix_len() as i32));
    let hi = max.map_or(f.max_len as i32, |m| m.min(f.max_len as i32));
    if lo > hi || lo < 0 {
        return Err(bad(
            "prefixLength",
            format!("the range {{{lo},{hi}}} of {cidr} is empty"),
        ));
    }
    Ok(format!("[ {cidr}{{{lo},{hi}}} ]"))
}

/// One rule as one BIRD statement (Calico's `filterStatement`), with its peer-type guard.
pub fn statement(rule: Rule<'_>) -> Result<String, RuleError> {
    let f = rule.fields();
    let action = match f.action {
        "Accept" => "accept;",
        "Reject" => "reject;",
        other => return Err(bad("action", format!("{other:?} is not Accept or Reject"))),
    };
    let mut conds = Vec::new();
    if let Some(cidr) = f.cidr {
        let op = match f.operator {
            Some("Equal") => "=",
            Some("NotEqual") => "!=",
            Some("In") => "~",
            Some("NotIn") => "!~",
            None => return Err(bad("matchOperator", "is required with cidr")),
            Some(other) => {
                return Err(bad(
                    "matchOperator",
                    format!("{other:?} is not Equal, NotEqual, In or NotIn"),
                ));
            }
        };
        conds.push(format!("(net {op} {})", prefix_pattern(&f, cidr)?));
    }
    match f.source {
        None => {}
        Some("RemotePeers") => conds.push("((defined(source))&&(source ~ [ RTS_BGP ]))".into()),
        Some(other) => return Err(bad("source", format!("{other:?} is not RemotePeers"))),
    }
    if let Some(i) = f.interface {
        if !is_filter_interface(i) {
            return Err(bad(
                "interface",
                format!("{i:?} is not an interface pattern (1 to 15 letters, digits or _ . - *)"),
            ));
        }
        conds.push(format!("((defined(ifname))&&(ifname ~ \"{i}\"))"));
    }
    if let Some(c) = f.communities {
        let [v] = c.values.as_slice() else {
            return Err(bad("communities.values", "must hold exactly one value"));
        };
        let (attr, tuple) = community(v, "communities.values[0]")?;
        conds.push(format!("({tuple} ~ {attr})"));
    }
    if !f.as_path.is_empty() {
        let path = f
            .as_path
            .iter()
            .enumerate()
            .map(|(i, a)| asn(*a, &format!("asPathPrefix[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        conds.push(format!("(bgp_path ~ [= {} * =])", path.join(" ")));
    }
    if let Some(p) = f.priority {
        let pref = local_pref(p, "priority")?;
        conds.push(format!("(defined(bgp_local_pref)&&(bgp_local_pref = {pref}))"));
    }
    let mut body = Vec::new();
    for (i, op) in f.operations.iter().enumerate() {
        let field = format!("operations[{i}]");
        let set = [
            op.add_community.is_some(),
            op.prepend_as_path.is_some(),
            op.set_priority.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if set != 1 {
            return Err(bad(
                &field,
                "must set exactly one of addCommunity, prependASPath, setPriority",
            ));
        }
        if let Some(a) = &op.add_community {
            let (attr, tuple) = community(&a.value, &format!("{field}.addCommunity.value"))?;
            body.push(format!("{attr}.add({tuple});"));
        } else if let Some(p) = &op.prepend_as_path {
            if p.prefix.is_empty() {
                return Err(bad(&format!("{field}.prependASPath.prefix"), "is empty"));
            }
            // Each prepend goes in front: the last one written ends up first in the path.
            for (j, a) in p.prefix.iter().enumerate().rev() {
                let a = asn(*a, &format!("{field}.prependASPath.prefix[{j}]"))?;
                body.push(format!("bgp_path.prepend({a});"));
            }
        } else if let Some(s) = &op.set_priority {
            let pref = local_pref(s.value, &format!("{field}.setPriority.value"))?;
            body.push(format!("bgp_local_pref = {pref};"));
        }
    }
    if !body.is_empty() && action != "accept;" {
        return Err(bad("operations", "may only be used with action Accept"));
    }
    body.push(action.to_string());
    let body = body.join(" ");
    let stmt = if conds.is_empty() {
        body
    } else {
        format!("if ({}) then {{ {body} }}", conds.join("&&"))
    };
    Ok(match f.peer_type {
        None => stmt,
        Some("iBGP") => format!("if (is_same_as) then {{ {stmt} }}"),
        Some("eBGP") => format!("if (!is_same_as) then {{ {stmt} }}"),
        Some(other) => return Err(bad("peerType", format!("{other:?} is not iBGP or eBGP"))),
    })
}

/// Calico's filter interface pattern: also keeps BIRD's `"..."` intact.
pub fn is_filter_interface(v: &str) -> bool {
    (1..=15).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'*'))
}

/// The function definitions of every filter with rules for the family, in name order
/// (Calico's `bgpFilterBIRDFuncs`), or the "none configured" comment.
pub fn functions(filters: &[&BgpFilter], v6: bool) -> Result<Vec<String>, (String, RuleError)> {
    let fam = if v6 { "v6" } else { "v4" };
    let mut sorted: Vec<&&BgpFilter> = filters.iter().collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut lines = Vec::new();
    for f in sorted {
        let name = f.metadata.name.clone().unwrap_or_default();
        let dirs: Vec<(Direction, Vec<Rule<'_>>)> = [Direction::Import, Direction::Export]
            .into_iter()
            .map(|d| (d, rules(f, d, v6)))
            .filter(|(_, r)| !r.is_empty())
            .collect();
        if dirs.is_empty() {
            continue;
        }
        lines.push(format!("# {fam} BGPFilter {name}"));
        for (dir, rules) in dirs {
            let fname = function_name(&name, dir, v6);
            let arg = if rules.iter().any(|r| r.has_peer_type()) {
                "bool is_same_as"
            } else {
                ""
            };
            lines.push(format!("function {fname}({arg}) {{"));
            for (i, r) in rules.into_iter().enumerate() {
                let s = statement(r).map_err(|e| {
                    let list = match (dir, v6) {
                        (Direction::Import, false) => "importV4",
                        (Direction::Export, false) => "exportV4",
                        (Direction::Import, true) => "importV6",
                        (Direction::Export, true) => "exportV6",
                    };
                    (
                        name.clone(),
                        bad(&format!("spec.{list}[{i}].{}", e.field), e.message),
                    )
                })?;
                lines.push(format!("  {s}"));
            }
            lines.push("}".into());
        }
    }
    if lines.is_empty() {
        lines.push(format!("# No {fam} BGPFilters configured"));
    }
    Ok(lines)
}

/// The call a peer's filter makes to `filter` in `dir`, if the filter has rules for it:
/// `'bgp_f_importFilterV4'();`, or with `(true)`/`(false)` (same AS as the peer) when a rule is
/// limited to iBGP or eBGP peers.
pub fn call(filter: &BgpFilter, dir: Direction, v6: bool, same_as: bool) -> Option<String> {
    let rules = rules(filter, dir, v6);
    if rules.is_empty() {
        return None;
    }
    let name = function_name(filter.metadata.name.as_deref().unwrap_or(""), dir, v6);
    let arg = if rules.iter().any(|r| r.has_peer_type()) {
        same_as.to_string()
    } else {
        String::new()
    };
    Some(format!("{name}({arg});"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cut_as_calico_cuts_them() {
        // Calico's golden bgpfilter/filter_names.
        assert_eq!(
            function_name(
                "45characters.exactly.so.should.not.truncate-1",
                Direction::Import,
                false
            ),
            "'bgp_45characters.exactly.so.should.not.truncate-1_importFilterV4'"
        );
        assert_eq!(
            function_name(
                "46characters.exactly.so.should.truncate-123456",
                Direction::Export,
                false
            ),
            "'bgp_46characters.exactly.so.shou_9615CBDC00BAC628_exportFilterV4'"
        );
        assert_eq!(
            function_name(
                "greater-than-64-characters.so.this.should.definitely.truncate-1234567890",
                Direction::Import,
                true
            ),
            "'bgp_greater-than-64-characters.s_4C5DB3273E544641_importFilterV6'"
        );
    }

    fn rule(yaml: &str) -> BGPFilterRuleV4 {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn statements() {
        let s = |y: &str| statement(Rule::V4(&rule(y)));
        assert_eq!(s("action: Reject").unwrap(), "reject;");
        assert_eq!(
            s("{action: Accept, cidr: 10.0.0.0/8, matchOperator: NotIn}").unwrap(),
            "if ((net !~ 10.0.0.0/8)) then { accept; }"
        );
        assert_eq!(
            s("{action: Accept, cidr: 10.0.0.0/8, matchOperator: In, prefixLength: {min: 4, max: 24}}")
                .unwrap(),
            "if ((net ~ [ 10.0.0.0/8{8,24} ])) then { accept; }"
        );
        assert_eq!(
            s("{action: Accept, cidr: 10.0.0.0/8, matchOperator: In, prefixLength: {}}").unwrap(),
            "if ((net ~ [ 10.0.0.0/8{8,32} ])) then { accept; }"
        );
        assert_eq!(
            s("{action: Accept, peerType: eBGP, priority: 100, operations: [{prependASPath: {prefix: [1, 2]}}, {setPriority: {value: 50}}]}").unwrap(),
            "if (!is_same_as) then { if ((defined(bgp_local_pref)&&(bgp_local_pref = 2147483547))) then { bgp_path.prepend(2); bgp_path.prepend(1); bgp_local_pref = 2147483597; accept; } }"
        );
        for (y, field) in [
            ("{action: Accept, cidr: 10.0.0.0/8}", "matchOperator"),
            ("{action: Maybe}", "action"),
            (
                "{action: Accept, cidr: 10.0.0.0/8, matchOperator: Near}",
                "matchOperator",
            ),
            (
                "{action: Accept, cidr: 10.0.0.0/16, matchOperator: In, prefixLength: {max: 8}}",
                "prefixLength",
            ),
            ("{action: Accept, interface: 'eth\"0'}", "interface"),
            ("{action: Accept, source: Anywhere}", "source"),
            (
                "{action: Accept, communities: {values: ['65536:1']}}",
                "communities.values[0]",
            ),
            ("{action: Accept, asPathPrefix: [-1]}", "asPathPrefix[0]"),
            ("{action: Accept, priority: 0}", "priority"),
            (
                "{action: Reject, operations: [{setPriority: {value: 5}}]}",
                "operations",
            ),
            ("{action: Accept, operations: [{}]}", "operations[0]"),
            ("{action: Accept, peerType: xBGP}", "peerType"),
        ] {
            let e = s(y).unwrap_err();
            assert_eq!(e.field, field, "{y}: {e}");
        }
    }
}
