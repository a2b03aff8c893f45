//! Every Calico object tortie may read — the seeds' stored objects, Calico-shaped fixtures and every
//! example manifest — deserializes into tortie's types and serializes back to the same JSON, so a
//! read-modify-write by tortie loses nothing that Calico (or a user) wrote.

use std::path::Path;

use kube::core::{NotUsed, Object};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use tortie::api::{
    BGPConfigurationSpec, BGPPeerSpec, BlockAffinitySpec, IPAMBlockSpec, IPAMConfigSpec, IPAMHandleSpec,
    IPPoolSpec, IPPoolStatus, Installation,
};

fn roundtrip<T: DeserializeOwned + Serialize>(doc: &Value) -> Value {
    let typed: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("deserialize {doc}: {e}"));
    serde_json::to_value(&typed).unwrap()
}

/// Returns the kinds it checked.
fn check_file(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut kinds = vec![];
    for doc in docs.into_iter().filter(|d| !d.is_null()) {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let group = doc["apiVersion"].as_str().unwrap_or_default();
        let calico = group.starts_with("crd.projectcalico.org/") || group.starts_with("projectcalico.org/");
        let back = match kind.as_str() {
            "IPPool" if calico => roundtrip::<Object<IPPoolSpec, IPPoolStatus>>(&doc),
            "IPAMBlock" if calico => roundtrip::<Object<IPAMBlockSpec, NotUsed>>(&doc),
            "IPAMHandle" if calico => roundtrip::<Object<IPAMHandleSpec, NotUsed>>(&doc),
            "BlockAffinity" if calico => roundtrip::<Object<BlockAffinitySpec, NotUsed>>(&doc),
            "IPAMConfig" | "IPAMConfiguration" if calico => {
                roundtrip::<Object<IPAMConfigSpec, NotUsed>>(&doc)
            }
            "BGPConfiguration" if calico => roundtrip::<Object<BGPConfigurationSpec, NotUsed>>(&doc),
            "BGPPeer" if calico => roundtrip::<Object<BGPPeerSpec, NotUsed>>(&doc),
            "Installation" => roundtrip::<Installation>(&doc),
            _ => continue,
        };
        pretty_assertions::assert_eq!(back, doc, "{} ({kind}) changed in a round trip", path.display());
        kinds.push(kind);
    }
    kinds
}

fn yaml_files(dir: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn calico_stored_objects_roundtrip() {
    let mut kinds = vec![];
    for f in yaml_files("tests/fixtures/calico") {
        kinds.extend(check_file(&f));
    }
    for k in ["IPAMBlock", "IPAMHandle", "BlockAffinity", "IPPool", "IPAMConfig"] {
        assert!(kinds.iter().any(|x| x == k), "no {k} fixture checked");
    }
}

#[test]
fn examples_roundtrip() {
    for mode in ["examples/v1", "examples/v3"] {
        let mut kinds = vec![];
        for f in yaml_files(mode) {
            kinds.extend(check_file(&f));
        }
        for k in ["IPPool", "BGPConfiguration", "BGPPeer", "Installation"] {
            assert!(kinds.iter().any(|x| x == k), "{mode}: no {k} checked");
        }
    }
    let mut kinds = vec![];
    for f in yaml_files("examples/route-reflector") {
        kinds.extend(check_file(&f));
    }
    for k in ["BGPConfiguration", "BGPPeer"] {
        assert!(
            kinds.iter().any(|x| x == k),
            "examples/route-reflector: no {k} checked"
        );
    }
}

#[test]
fn sequence_numbers_stay_exact_and_unknown_fields_survive() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/calico/calico332-ipamblock.yaml"),
    )
    .unwrap();
    let block: Object<IPAMBlockSpec, NotUsed> = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(block.spec.sequence_number, Some(1_754_042_400_000_000_002));
    assert_eq!(
        block.spec.sequence_number_for_allocation.as_ref().unwrap()["1"],
        1_754_042_400_000_000_001
    );
    let json = serde_json::to_string(&block).unwrap();
    assert!(json.contains("\"sequenceNumber\":1754042400000000002"), "{json}");
    assert!(json.contains("\"futureField\":{\"nested\":[1,2,3]}"), "{json}");
    assert!(json.contains("\"futureAttr\":\"kept\""), "{json}");
    // Free addresses are explicit nulls, as Calico writes them.
    assert!(json.contains("\"allocations\":[0,1,null,null"), "{json}");
}

#[test]
fn affinity_deleted_keeps_its_wire_form() {
    let v1: BlockAffinitySpec = serde_json::from_value(
        serde_json::json!({"state":"confirmed","node":"a","cidr":"10.0.0.0/26","deleted":"false"}),
    )
    .unwrap();
    assert!(!v1.is_deleted());
    let mut marked = v1.clone();
    marked.deleted = marked.deleted.with(true);
    assert_eq!(serde_json::to_value(&marked).unwrap()["deleted"], "true");
    let v3: BlockAffinitySpec = serde_json::from_value(
        serde_json::json!({"state":"","node":"a","cidr":"10.0.0.0/26","deleted":true}),
    )
    .unwrap();
    assert!(v3.is_deleted() && v3.is_confirmed());
    assert_eq!(serde_json::to_value(&v3).unwrap()["deleted"], true);
}
